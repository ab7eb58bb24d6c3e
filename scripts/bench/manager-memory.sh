#!/usr/bin/env bash
# The managers' resident memory under hostile load over the link (docs/security.md, "Memory
# bounds"): a 3-manager loopback cluster with mutual TLS, then `firetower bench link-flood`:
#   1. one publish to each of TOPICS (2,000,000) distinct topics nobody subscribed to;
#   2. SUBSCRIBED (300,000) topics the publishing gateway subscribes to, then publishes to once
#      each, on a cluster of GROUP_COUNT (1) group so the group's stamp map (100,000 topics) overflows;
#   3. STALLED (200) gateway sessions that stop reading while STALL_SECS (30) seconds of
#      512 KiB publishes go to their topics.
# Each phase runs on a fresh cluster. Raw JSON goes to OUT (default
# docs/bench-results/raw/manager-memory-<date>/); a summary is printed.
#
#   scripts/bench/manager-memory.sh
#   TOPICS=100000 SUBSCRIBED=20000 STALLED=20 STALL_SECS=10 scripts/bench/manager-memory.sh
#
# Needs target/release/firetower and jq. Every address is on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${FIRETOWER_BIN:-target/release/firetower}
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release --bin firetower" >&2; exit 1; }
TOPICS=${TOPICS:-2000000}
SUBSCRIBED=${SUBSCRIBED:-300000}
GROUP_COUNT=${GROUP_COUNT:-1}
STALLED=${STALLED:-200}
STALL_SECS=${STALL_SECS:-30}
CONCURRENCY=${CONCURRENCY:-256}
OUT=${OUT:-docs/bench-results/raw/manager-memory-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
work=$(mktemp -d /tmp/firetower-memory.XXXXXX)
pids=()
stop_cluster() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_cluster; rm -rf "$work"' EXIT
ulimit -n "$(ulimit -Hn)"

"$BIN" certs init --dir "$work/tls" >/dev/null
for i in 1 2 3; do "$BIN" certs issue --dir "$work/tls" --manager "$i" >/dev/null; done
"$BIN" certs issue --dir "$work/tls" --gateway 1 >/dev/null
for i in $(seq 100 $((100 + STALLED - 1))); do "$BIN" certs issue --dir "$work/tls" --gateway "$i" >/dev/null; done
export FIRETOWER_TLS_DIR="$work/tls"

start_cluster() { # GROUPS
  local i
  rm -rf "$work"/m[123]
  for i in 1 2 3; do
    FIRETOWER_LOG=warn "$BIN" manager --id "$i" --quic "127.0.0.1:1780$i" --admin "127.0.0.1:1790$i" \
      --data-dir "$work/m$i" 2>>"$work/m$i.log" &
    pids+=($!)
  done
  sleep 1
  "$BIN" cluster init --admin 127.0.0.1:17901 --member 127.0.0.1:17902 --member 127.0.0.1:17903 \
    --groups "$1" >/dev/null
  for i in $(seq 1 100); do
    "$BIN" cluster members --admin 127.0.0.1:17901 --json 2>/dev/null |
      jq -e '[.groups[].leader] | all(. != null and . > 0)' >/dev/null && return 0
    sleep 0.2
  done
  echo "the cluster elected no leaders" >&2
  return 1
}

flood() { # NAME ARGS...
  local name=$1
  shift
  "$BIN" bench link-flood --managers 127.0.0.1:17801,127.0.0.1:17802,127.0.0.1:17803 \
    --concurrency "$CONCURRENCY" --server-pid "$(IFS=,; echo "${pids[*]}")" --json "$@" \
    | tee "$OUT/$name.json"
}

start_cluster 8
flood unsubscribed --topics "$TOPICS"
stop_cluster

start_cluster "$GROUP_COUNT"
flood subscribed --topics "$SUBSCRIBED" --subscribed
stop_cluster

start_cluster 8
flood stalled --topics 0 --stalled "$STALLED" --stall-secs "$STALL_SECS"
stop_cluster

{
  echo "nproc: $(nproc)"
  free -m | sed -n 2p
  git rev-parse --short HEAD 2>/dev/null || true
} >"$OUT/machine.txt"
echo
echo "phase        requests     ok   per_s   RSS MiB per manager (start / peak / end)"
for f in "$OUT"/unsubscribed.json "$OUT"/subscribed.json "$OUT"/stalled.json; do
  jq -r --arg n "$(basename "$f" .json)" '"\($n) \(.requests) \(.ok) \(.per_sec|floor) " +
    ([.rss[] | "\(.start_kib/1024|floor)/\(.peak_kib/1024|floor)/\(.end_kib/1024|floor)"] | join("  "))' "$f"
done
