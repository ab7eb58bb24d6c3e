#!/usr/bin/env bash
# Subscription commit throughput and latency of a 3-manager loopback cluster (fsync on).
# Starts the managers, runs `firetower bench commits` RUNS times for 1, 16 and 256 writers,
# keeps the raw JSON under docs/bench-results/raw/, and stops everything it started.
#
#   scripts/bench/commits.sh [RUNS] [SECONDS]
#   TLS=off scripts/bench/commits.sh ...   the same cluster with --insecure (for the TLS ratio)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
seconds=${2:-10}
bin=target/release/firetower
[ -x "$bin" ] || cargo build --release --locked --bin firetower
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mode=${TLS:-on}
insecure=()
if [ "$mode" = off ]; then
  insecure=(--insecure)
else
  # Secure like production: one CA, a certificate per manager and one for the bench's gateway.
  "$bin" certs init --dir "$work/tls" >/dev/null
  for i in 1 2 3; do "$bin" certs issue --dir "$work/tls" --manager "$i" >/dev/null; done
  "$bin" certs issue --dir "$work/tls" --gateway 1 >/dev/null
  export FIRETOWER_TLS_DIR="$work/tls"
fi
for i in 1 2 3; do
  "$bin" manager --id "$i" --quic "127.0.0.1:1750$i" --admin "127.0.0.1:1760$i" \
    --data-dir "$work/m$i" "${insecure[@]}" 2>"$work/m$i.log" &
  pids+=($!)
done
sleep 1
"$bin" cluster init --admin 127.0.0.1:17601 --member 127.0.0.1:17602 --member 127.0.0.1:17603 "${insecure[@]}" >/dev/null
sleep 2
mkdir -p docs/bench-results/raw
stamp=$(date -u +%Y%m%dT%H%M%SZ)
for r in $(seq 1 "$runs"); do
  "$bin" bench commits --managers 127.0.0.1:17501,127.0.0.1:17502,127.0.0.1:17503 \
    --writers 1,16,256 --duration "$seconds" --json "${insecure[@]}" \
    | tee "docs/bench-results/raw/commits-tls-$mode-$stamp-run$r.jsonl"
done
