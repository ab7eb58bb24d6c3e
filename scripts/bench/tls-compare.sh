#!/usr/bin/env bash
# Mutual TLS on and off, in one sitting: RUNS rounds, each scenario once with TLS on and once
# with --insecure, on a fresh cluster each time, then the medians and their ratio.
#
#   scripts/bench/tls-compare.sh [RUNS] [SECONDS]
#   SCENARIOS="commits topics" scripts/bench/tls-compare.sh 3 10
#
# Scenarios (SCENARIOS, default all):
#   commits  subscription commits of a 3-manager cluster at 1, 16 and 256 writers
#            (scripts/bench/commits.sh; TLS=off for the insecure half)
#   fanout   one topic, SUBSCRIBERS (10,000) WebSocket subscribers on one gateway of a
#            3-manager cluster, max sustainable deliveries/s (`bench fanout --rate max`)
#   topics   TOPICS (18,000) topics with one subscriber each and PUBLISHERS (16) publishers
#            on that gateway, a closed loop per topic: every message crosses the gateway-
#            manager link twice (`bench topics`)
# Raw output stays in OUT (default a temporary directory, printed at the end).
# Needs target/release/firetower, jq, curl, python3. Every address is on 127.0.0.0/8.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
seconds=${2:-10}
SCENARIOS=${SCENARIOS:-"commits fanout topics"}
SUBSCRIBERS=${SUBSCRIBERS:-10000}
TOPICS=${TOPICS:-18000}
PUBLISHERS=${PUBLISHERS:-16}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.9}
export FIRETOWER_BIN=${FIRETOWER_BIN:-target/release/firetower}
[ -x "$FIRETOWER_BIN" ] || { echo "no $FIRETOWER_BIN: cargo build --release --bin firetower" >&2; exit 1; }
OUT=${OUT:-$(mktemp -d /tmp/firetower-tls-compare.XXXXXX)}
mkdir -p "$OUT"
export PEER_WORK=${PEER_WORK:-$OUT/peers}
# shellcheck source=peers/lib.sh
. scripts/bench/peers/lib.sh
ulimit -n "$(ulimit -Hn)"
trap 'peer_stop firetower 2>/dev/null || true' EXIT

for r in $(seq 1 "$runs"); do
  for mode in on off; do
    for scenario in $SCENARIOS; do
      echo "run $r/$runs, TLS $mode: $scenario" >&2
      case $scenario in
      commits)
        env -u FIRETOWER_TLS_DIR TLS=$mode scripts/bench/commits.sh 1 "$seconds" >"$OUT/commits-$mode-$r.jsonl"
        ;;
      fanout | topics)
        FIRETOWER_TLS=$mode peer_start firetower
        if [ "$scenario" = fanout ]; then
          "$FIRETOWER_BIN" bench fanout --url "$PEER_URL" --subscribers "$SUBSCRIBERS" --payload 100 \
            --duration "$seconds" --rate max --source-ips "$SOURCE_IPS" --server-pid "$PEER_PIDS" \
            --json >"$OUT/fanout-$mode-$r.json"
        else
          "$FIRETOWER_BIN" bench topics --url "$PEER_URL" --topics "$TOPICS" --publishers "$PUBLISHERS" \
            --payload 100 --duration "$seconds" --source-ips "$SOURCE_IPS" --server-pid "$PEER_PIDS" \
            --json >"$OUT/topics-$mode-$r.json"
        fi
        jq -c '{deliveries_per_sec, p50: .latency.p50_ms, p99: .latency.p99_ms, missing,
          cpu: ([.servers[].cpu_percent] | add)}' "$OUT/$scenario-$mode-$r.json" >&2
        peer_stop firetower
        ;;
      *) echo "unknown scenario $scenario (commits fanout topics)" >&2; exit 2 ;;
      esac
    done
  done
done

python3 - "$OUT" "$runs" "$SCENARIOS" <<'PY'
import json, statistics, sys, pathlib
out, runs, scenarios = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split()
def med(xs):
    return statistics.median(xs) if xs else float("nan")
print("| scenario | measure | TLS on (median) | TLS off (median) | on/off |")
print("| --- | --- | --- | --- | --- |")
for scenario in scenarios:
    if scenario == "commits":
        rates = {}
        for mode in ("on", "off"):
            for r in range(1, runs + 1):
                for line in (out / f"commits-{mode}-{r}.jsonl").read_text().splitlines():
                    if not line.strip().startswith("{"):
                        continue
                    row = json.loads(line)
                    rates.setdefault((mode, row["writers"], "commits/s"), []).append(row["commits_per_sec"])
                    rates.setdefault((mode, row["writers"], "p50 ms"), []).append(row["p50_ms"])
        for w in sorted({k[1] for k in rates}):
            for measure in ("commits/s", "p50 ms"):
                on, off = med(rates.get(("on", w, measure), [])), med(rates.get(("off", w, measure), []))
                print(f"| commits, {w} writers | {measure} | {on:,.2f} | {off:,.2f} | {on / off:.2f} |")
        continue
    for measure, key in (("deliveries/s", ("deliveries_per_sec",)), ("p50 ms", ("latency", "p50_ms")),
                         ("p99 ms", ("latency", "p99_ms"))):
        vals = {}
        for mode in ("on", "off"):
            for r in range(1, runs + 1):
                row = json.loads((out / f"{scenario}-{mode}-{r}.json").read_text())
                v = row
                for k in key:
                    v = v[k]
                vals.setdefault(mode, []).append(v)
        on, off = med(vals["on"]), med(vals["off"])
        print(f"| {scenario} | {measure} | {on:,.2f} | {off:,.2f} | {on / off:.2f} |")
PY
echo "raw output: $OUT" >&2
