#!/usr/bin/env bash
# Client TLS ([client_tls]: wss:// to the gateway) on and off, in one sitting: RUNS rounds, each
# scenario once against a gateway with a client certificate and once without, alternating, on a
# fresh cluster each time, then the medians and their ratio. The cluster itself (managers and
# the gateway-manager link) runs with mutual TLS in both halves: only the client side differs.
#
#   scripts/bench/client-tls-compare.sh [RUNS] [SECONDS]
#   SCENARIOS="fanout" SUBSCRIBERS=2000 scripts/bench/client-tls-compare.sh 1 3   # a smoke run
#
# Scenarios (SCENARIOS, default "fanout topics"):
#   fanout   one topic, SUBSCRIBERS (10,000) WebSocket subscribers on the gateway, max
#            sustainable deliveries/s (`bench fanout --rate max`)
#   topics   TOPICS (18,000) topics with one subscriber each and PUBLISHERS (16) publishers,
#            a closed loop per topic (`bench topics`)
#   idle     IDLE (10,000) idle WebSocket connections held HOLD (10) s: the gateway's resident
#            memory per connection (`bench idle`); not timed, add it to SCENARIOS to run it
# Raw output stays in OUT (default a temporary directory, printed at the end).
# Needs target/release/firetower, jq, curl, python3. Every address is on 127.0.0.0/8.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
seconds=${2:-10}
SCENARIOS=${SCENARIOS:-"fanout topics"}
SUBSCRIBERS=${SUBSCRIBERS:-10000}
TOPICS=${TOPICS:-18000}
PUBLISHERS=${PUBLISHERS:-16}
IDLE=${IDLE:-10000}
HOLD=${HOLD:-10}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.9}
export FIRETOWER_BIN=${FIRETOWER_BIN:-target/release/firetower}
[ -x "$FIRETOWER_BIN" ] || { echo "no $FIRETOWER_BIN: cargo build --release --bin firetower" >&2; exit 1; }
OUT=${OUT:-$(mktemp -d /tmp/firetower-client-tls-compare.XXXXXX)}
mkdir -p "$OUT"
export PEER_WORK=${PEER_WORK:-$OUT/peers}
# shellcheck source=peers/lib.sh
. scripts/bench/peers/lib.sh
ulimit -n "$(ulimit -Hn)"
trap 'peer_stop firetower 2>/dev/null || true' EXIT

for r in $(seq 1 "$runs"); do
  # Alternate which half goes first, so a drift over the sitting does not favour one side.
  if [ $((r % 2)) = 1 ]; then modes="on off"; else modes="off on"; fi
  for mode in $modes; do
    for scenario in $SCENARIOS; do
      echo "run $r/$runs, client TLS $mode: $scenario" >&2
      FIRETOWER_CLIENT_TLS=$mode peer_start firetower
      ca=()
      [ "$mode" = on ] && ca=(--ca "$PEER_CA")
      case $scenario in
      fanout)
        "$FIRETOWER_BIN" bench fanout --url "$PEER_URL" "${ca[@]}" --subscribers "$SUBSCRIBERS" \
          --payload 100 --duration "$seconds" --rate max --source-ips "$SOURCE_IPS" \
          --server-pid "$PEER_PIDS" --json >"$OUT/fanout-$mode-$r.json"
        ;;
      topics)
        "$FIRETOWER_BIN" bench topics --url "$PEER_URL" "${ca[@]}" --topics "$TOPICS" \
          --publishers "$PUBLISHERS" --payload 100 --duration "$seconds" --source-ips "$SOURCE_IPS" \
          --server-pid "$PEER_PIDS" --json >"$OUT/topics-$mode-$r.json"
        ;;
      idle)
        # Only the gateway's pid: its RSS is what a connection costs.
        "$FIRETOWER_BIN" bench idle --url "$PEER_URL" "${ca[@]}" --connections "$IDLE" \
          --hold "$HOLD" --source-ips "$SOURCE_IPS" --server-pid "${PEER_PIDS%%,*}" \
          --json >"$OUT/idle-$mode-$r.json"
        ;;
      *) echo "unknown scenario $scenario (fanout topics idle)" >&2; peer_stop firetower; exit 2 ;;
      esac
      if [ "$scenario" = idle ]; then
        jq -c '{connections, failed, bytes_per_connection}' "$OUT/$scenario-$mode-$r.json" >&2
      else
        jq -c '{deliveries_per_sec, p50: .latency.p50_ms, p99: .latency.p99_ms, missing,
          cpu: ([.servers[].cpu_percent] | add)}' "$OUT/$scenario-$mode-$r.json" >&2
      fi
      peer_stop firetower
    done
  done
done

python3 - "$OUT" "$runs" "$SCENARIOS" <<'PY'
import json, statistics, sys, pathlib
out, runs, scenarios = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split()
def med(xs):
    return statistics.median(xs) if xs else float("nan")
def ratio(on, off):
    return on / off if off else float("nan")
print("| scenario | measure | client TLS on (median) | off (median) | on/off |")
print("| --- | --- | --- | --- | --- |")
for scenario in scenarios:
    if scenario == "idle":
        measures = (("bytes/connection", ("bytes_per_connection",)),)
    else:
        measures = (("deliveries/s", ("deliveries_per_sec",)), ("p50 ms", ("latency", "p50_ms")),
                    ("p99 ms", ("latency", "p99_ms")), ("gateway+managers CPU %", None))
    for measure, key in measures:
        vals = {}
        for mode in ("on", "off"):
            for r in range(1, runs + 1):
                row = json.loads((out / f"{scenario}-{mode}-{r}.json").read_text())
                if key is None:
                    v = sum(s["cpu_percent"] for s in row["servers"])
                else:
                    v = row
                    for k in key:
                        v = v[k]
                vals.setdefault(mode, []).append(v)
        on, off = med(vals["on"]), med(vals["off"])
        print(f"| {scenario} | {measure} | {on:,.2f} | {off:,.2f} | {ratio(on, off):.2f} |")
PY
echo "raw output: $OUT" >&2
