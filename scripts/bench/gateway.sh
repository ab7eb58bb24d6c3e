#!/usr/bin/env bash
# Gateway benchmarks (docs/bench-results/gateway.md), reproduced end to end on loopback:
# starts 3 managers and the gateways as separate processes, runs each scenario RUNS times
# with `firetower bench fanout|latency|idle --json`, keeps the raw JSON, prints the medians,
# and stops everything it started.
#
#   scripts/bench/gateway.sh                 # everything (about 20 minutes)
#   SCENARIOS="fanout latency" scripts/bench/gateway.sh
#   PERF=1 scripts/bench/gateway.sh          # also record a perf profile of the fan-out
#
# Needs: a release build (cargo build --release --bin firetower), jq, curl; PERF=1 needs perf.
# Every address is on loopback; ports 7100-7105 (managers) and 7200-7299 (gateways).
set -euo pipefail

cd "$(dirname "$0")/../.."
BIN=${FIRETOWER_BIN:-target/release/firetower}
OUT=${OUT:-docs/bench-results/raw}
RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-"fanout latency idle idle100k"}
SUBSCRIBERS=${SUBSCRIBERS:-10000}
LATENCY_SUBS=${LATENCY_SUBS:-"100 1000 10000"}
IDLE_ONE=${IDLE_ONE:-19000}
IDLE_MANY=${IDLE_MANY:-100000}
IDLE_GATEWAYS=${IDLE_GATEWAYS:-6}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.9}
ADMINS=127.0.0.1:7101,127.0.0.1:7103,127.0.0.1:7105

[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release --bin firetower" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq is required" >&2; exit 1; }
# Every connection is a file descriptor, in the gateways and in the load generator.
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d /tmp/firetower-bench.XXXXXX)
mkdir -p "$OUT"
MANAGER_PIDS=()
GATEWAY_PIDS=()

stop_gateways() {
    local p
    for p in "${GATEWAY_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${GATEWAY_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    GATEWAY_PIDS=()
}

cleanup() {
    local p
    stop_gateways
    for p in "${MANAGER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${MANAGER_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_ready() { # URL of /readyz
    local i
    for i in $(seq 1 100); do
        curl -fsS "$1" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "not ready: $1" >&2
    return 1
}

start_cluster() {
    local i
    # Secure like production: one CA, a certificate per manager and per gateway id.
    if [ ! -f "$WORK/tls/ca.pem" ]; then
        "$BIN" certs init --dir "$WORK/tls" >/dev/null
        for i in 1 2 3; do "$BIN" certs issue --dir "$WORK/tls" --manager "$i" >/dev/null; done
        for i in 1 2 3 4 5 6; do "$BIN" certs issue --dir "$WORK/tls" --gateway "$i" >/dev/null; done
    fi
    export FIRETOWER_TLS_DIR="$WORK/tls"
    for i in 1 2 3; do
        FIRETOWER_LOG=warn "$BIN" manager --id "$i" --quic "127.0.0.1:$((7098 + 2 * i))" \
            --admin "127.0.0.1:$((7099 + 2 * i))" --data-dir "$WORK/manager-$i" \
            >"$WORK/manager-$i.log" 2>&1 &
        MANAGER_PIDS+=($!)
    done
    sleep 1
    "$BIN" cluster init --admin 127.0.0.1:7101 --member 127.0.0.1:7103 --member 127.0.0.1:7105 >/dev/null
    for i in $(seq 1 100); do
        if "$BIN" cluster members --admin 127.0.0.1:7101 --json 2>/dev/null |
            jq -e '[.groups[].leader] | all(. > 0)' >/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "the cluster elected no leaders" >&2
    return 1
}

start_gateways() { # COUNT: gateways on ports 7200.. ; sets GATEWAY_PIDS, GATEWAY_URLS
    local n=$1 i port
    GATEWAY_URLS=()
    for i in $(seq 1 "$n"); do
        port=$((7199 + i))
        FIRETOWER_LOG=warn "$BIN" gateway --id "$i" --listen "127.0.0.1:$port" --managers "$ADMINS" --allow-anonymous \
            >"$WORK/gateway-$i.log" 2>&1 &
        GATEWAY_PIDS+=($!)
        GATEWAY_URLS+=("ws://127.0.0.1:$port/ws")
    done
    for i in $(seq 1 "$n"); do wait_ready "http://127.0.0.1:$((7199 + i))/readyz"; done
}

join() { local IFS=,; echo "$*"; }

median() { # FILE... then a jq path; prints the median of that number over the files
    local path=${*: -1} files=("${@:1:$#-1}")
    jq -s "[.[] | $path] | sort | .[(length / 2 | floor)]" "${files[@]}"
}

machine() {
    {
        echo "nproc: $(nproc)"
        grep -m1 'model name' /proc/cpuinfo || true
        free -m | sed -n 2p
        uname -srm
        echo "ulimit -Hn: $(ulimit -Hn)"
        git rev-parse --short HEAD 2>/dev/null || true
    } >"$OUT/machine.txt"
}

machine
start_cluster
MANAGERS_CSV=$(join "${MANAGER_PIDS[@]}")

for scenario in $SCENARIOS; do
    case $scenario in
    fanout)
        start_gateways 1
        pids="${GATEWAY_PIDS[0]},$MANAGERS_CSV"
        for r in $(seq 1 "$RUNS"); do
            "$BIN" bench fanout --url "${GATEWAY_URLS[0]}" --subscribers "$SUBSCRIBERS" --payload 100 \
                --duration 10 --rate max --server-pid "$pids" --json >"$OUT/fanout-$r.json"
            jq -c '{deliveries_per_sec, p99: .latency.p99_ms, missing, servers}' "$OUT/fanout-$r.json"
        done
        if [ "${PERF:-0}" = 1 ]; then
            "$BIN" bench fanout --url "${GATEWAY_URLS[0]}" --subscribers "$SUBSCRIBERS" --duration 12 \
                --json >"$OUT/fanout-perf.json" &
            bench=$!
            sleep 8 # connected and past the warmup
            perf record -F 499 -g -o "$WORK/perf.data" -p "${GATEWAY_PIDS[0]}" -- sleep 5 2>/dev/null
            wait "$bench"
            {
                echo "## self time (flat)"
                perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null |
                    grep -E '^ +[0-9.]+%' | sed -n 1,40p
                echo "## including callees"
                perf report -i "$WORK/perf.data" --children --sort symbol --stdio -g none 2>/dev/null |
                    grep -E '^ +[0-9.]+%' | sed -n 1,40p
            } >"$OUT/fanout-perf.txt" || true
        fi
        stop_gateways
        ;;
    latency)
        start_gateways 1
        pids="${GATEWAY_PIDS[0]},$MANAGERS_CSV"
        for subs in $LATENCY_SUBS; do
            for r in $(seq 1 "$RUNS"); do
                "$BIN" bench latency --url "${GATEWAY_URLS[0]}" --subscribers "$subs" --rate 50000 \
                    --payload 100 --duration 10 --server-pid "$pids" --json >"$OUT/latency-$subs-$r.json"
                jq -c '{deliveries_per_sec, latency, missing}' "$OUT/latency-$subs-$r.json"
            done
        done
        stop_gateways
        ;;
    idle)
        # One gateway at the most connections its process may open here (ulimit -n).
        for r in $(seq 1 "$RUNS"); do
            start_gateways 1
            "$BIN" bench idle --url "${GATEWAY_URLS[0]}" --connections "$IDLE_ONE" \
                --source-ips "$SOURCE_IPS" --server-pid "${GATEWAY_PIDS[0]}" --hold 10 --json \
                >"$OUT/idle-$IDLE_ONE-$r.json"
            jq -c '{connections, failed, bytes_per_connection}' "$OUT/idle-$IDLE_ONE-$r.json"
            stop_gateways
        done
        ;;
    idle100k)
        for r in $(seq 1 "$RUNS"); do
            start_gateways "$IDLE_GATEWAYS"
            "$BIN" bench idle --url "$(join "${GATEWAY_URLS[@]}")" --connections "$IDLE_MANY" \
                --source-ips "$SOURCE_IPS" --server-pid "$(join "${GATEWAY_PIDS[@]}")" --hold 10 \
                --connect-concurrency 64 --json \
                >"$OUT/idle-$IDLE_MANY-$r.json"
            jq -c '{connections, failed, closed_by_server, bytes_per_connection}' "$OUT/idle-$IDLE_MANY-$r.json"
            stop_gateways
        done
        ;;
    *)
        echo "unknown scenario $scenario" >&2
        exit 2
        ;;
    esac
done

echo
echo "medians over $RUNS runs (raw JSON in $OUT):"
shopt -s nullglob
f=("$OUT"/fanout-[0-9]*.json)
[ ${#f[@]} -gt 0 ] && echo "fanout deliveries/s:        $(median "${f[@]}" .deliveries_per_sec)   (target >= 500000)"
for subs in $LATENCY_SUBS; do
    f=("$OUT"/latency-"$subs"-[0-9]*.json)
    [ ${#f[@]} -gt 0 ] && echo "latency $subs subs p50/p99 ms: $(median "${f[@]}" .latency.p50_ms) / $(median "${f[@]}" .latency.p99_ms)   (target p99 < 10)"
done
f=("$OUT"/idle-"$IDLE_ONE"-[0-9]*.json)
[ ${#f[@]} -gt 0 ] && echo "idle $IDLE_ONE on 1 gateway, B/conn: $(median "${f[@]}" .bytes_per_connection)   (target < 4096)"
f=("$OUT"/idle-"$IDLE_MANY"-[0-9]*.json)
[ ${#f[@]} -gt 0 ] && echo "idle $IDLE_MANY on $IDLE_GATEWAYS gateways: open $(median "${f[@]}" .connections), B/conn $(median "${f[@]}" .bytes_per_connection)"
exit 0
