#!/usr/bin/env bash
# Firetower side by side with the systems users would otherwise run, on this machine, in one
# run (docs/bench-results/compare.md). Installs the peers from Debian's packages if missing,
# starts every system on loopback with its data in a temporary directory, runs each scenario
# RUNS times against each, keeps the raw JSON under docs/bench-results/raw/compare-<date>/,
# rewrites docs/bench-results/compare.md (medians, Firetower/peer ratios, machine, commands),
# and stops everything it started.
#
#   scripts/bench/compare.sh                      # everything, 3 runs (about 30 minutes)
#   RUNS=1 SCENARIOS="fanout idle" SYSTEMS="firetower nats" scripts/bench/compare.sh
#   LABEL=smoke SUBSCRIBERS=500 DURATION=5 ... scripts/bench/compare.sh   (see SMOKE=1)
#   SMOKE=1 scripts/bench/compare.sh              # small, quick settings to prove every path
#
# Scenarios (SCENARIOS, default all):
#   fanout    one topic, SUBSCRIBERS (10,000) subscribers, PAYLOAD (100 B), max sustainable
#             deliveries/s (closed loop, window 16), server CPU and RSS          [every system]
#   topics    many small topics: TOPICS (18,000) subscriber connections with one topic each,
#             PUBLISHERS (16) publisher connections, a closed loop per topic (next message
#             when the previous was delivered); deliveries/s, server CPU and RSS  [every system]
#             (the design's 50,000 would need more than one server process per system here)
#   idle      IDLE_CONNECTIONS (19,000: what one process may hold under ulimit -Hn 20,000)
#             idle connections to one fresh server process; RSS per connection   [every system]
#   control   3 voters, fsync on: Firetower subscription commits (`bench commits`) vs etcd
#             puts over gRPC (`bench etcd-puts`) at WRITERS (1,16,256) concurrent writers;
#             the two interleaved run by run, a fresh cluster each time
#   failover  FAILOVER_WRITERS (16) writers for FAILOVER_DURATION (20 s); kill -9 of the
#             leader at FAILOVER_KILL_AT (5 s); how long writing stopped (Firetower: the
#             manager leading most groups; etcd: the leader)
# Systems (SYSTEMS, default all): firetower nats redis node-ws (fanout, idle); the control
# and failover scenarios always compare Firetower with etcd.
#
# Builds nothing: needs target/release/firetower (cargo build --release --bin firetower).
# Needs jq, curl, python3; root (or sudo) only if peers must be installed (INSTALL=0 skips).
# Every address is on 127.0.0.0/8.
set -euo pipefail

cd "$(dirname "$0")/../.."
export FIRETOWER_BIN=${FIRETOWER_BIN:-target/release/firetower}
if [ "${SMOKE:-0}" = 1 ]; then
    : "${RUNS:=1}" "${SUBSCRIBERS:=500}" "${DURATION:=5}" "${WARMUP:=1}" "${IDLE_CONNECTIONS:=2000}"
    : "${IDLE_HOLD:=3}" "${WRITERS:=1,16}" "${CONTROL_DURATION:=5}" "${FAILOVER_DURATION:=12}"
    : "${FAILOVER_KILL_AT:=4}" "${TOPICS:=500}" "${PUBLISHERS:=4}" "${LABEL:=smoke}"
fi
RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-"fanout topics idle control failover"}
SYSTEMS=${SYSTEMS:-"firetower nats redis node-ws"}
SUBSCRIBERS=${SUBSCRIBERS:-10000}
PAYLOAD=${PAYLOAD:-100}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
TOPICS=${TOPICS:-18000}
PUBLISHERS=${PUBLISHERS:-16}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-19000}
IDLE_HOLD=${IDLE_HOLD:-10}
WRITERS=${WRITERS:-1,16,256}
CONTROL_DURATION=${CONTROL_DURATION:-10}
FAILOVER_WRITERS=${FAILOVER_WRITERS:-16}
FAILOVER_DURATION=${FAILOVER_DURATION:-20}
FAILOVER_KILL_AT=${FAILOVER_KILL_AT:-5}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.9}
LABEL=${LABEL:-results}
STAMP=${STAMP:-$(date -u +%Y%m%dT%H%M%SZ)}
OUT=${OUT:-docs/bench-results/raw/compare-$STAMP}
REPORT=${REPORT:-docs/bench-results/compare.md}

if [ ! -x "$FIRETOWER_BIN" ]; then
    echo "no $FIRETOWER_BIN: build it first with  cargo build --release --bin firetower" >&2
    echo "(compare.sh builds nothing; FIRETOWER_BIN=path overrides the binary)" >&2
    exit 1
fi
if ! "$FIRETOWER_BIN" bench etcd-puts --help >/dev/null 2>&1; then
    echo "$FIRETOWER_BIN has no 'bench etcd-puts': it is older than this script; rebuild it" >&2
    exit 1
fi
for tool in jq curl python3; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done

if [ "${INSTALL:-1}" = 1 ]; then
    scripts/bench/peers/install.sh
fi

# Every connection is a file descriptor, in the servers and in the load generator.
ulimit -n "$(ulimit -Hn)"

export PEER_WORK
PEER_WORK=$(mktemp -d /tmp/firetower-compare.XXXXXX)
. scripts/bench/peers/lib.sh
mkdir -p "$OUT"
STARTED=()

start() { # SYSTEM
    STARTED+=("$1")
    peer_start "$1"
}
stop() { # SYSTEM
    peer_stop "$1"
    local s keep=()
    for s in "${STARTED[@]}"; do [ "$s" = "$1" ] || keep+=("$s"); done
    STARTED=("${keep[@]+"${keep[@]}"}")
}
cleanup() {
    local s
    for s in "${STARTED[@]+"${STARTED[@]}"}"; do peer_stop "$s" || true; done
    rm -rf "$PEER_WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[compare $(date -u +%H:%M:%S)] $*" >&2; }

version_of() {
    case $1 in
    firetower) git rev-parse --short HEAD 2>/dev/null || echo unknown ;;
    nats) nats-server --version 2>/dev/null | awk '{print $2}' ;;
    redis) redis-server --version 2>/dev/null | awk '{print $3}' | sed 's/v=//' ;;
    node-ws) echo "node $(node --version 2>/dev/null), ws $(jq -r .version /usr/share/nodejs/ws/package.json 2>/dev/null)" ;;
    etcd) etcd --version 2>/dev/null | awk '/etcd Version/ {print $3}' ;;
    esac
}

machine() {
    jq -n \
        --arg lbl "$LABEL" \
        --arg stamp "$STAMP" \
        --arg cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
        --arg nproc "$(nproc)" \
        --arg mem "$(free -m | awk '/^Mem:/ {print $2}')" \
        --arg kernel "$(uname -srm)" \
        --arg nofile "$(ulimit -Hn)" \
        --arg load_start "$(cut -d' ' -f1-3 /proc/loadavg)" \
        --arg commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        --arg dirty "$(git status --porcelain 2>/dev/null | grep -c . || true)" \
        --arg v_nats "$(version_of nats)" --arg v_redis "$(version_of redis)" \
        --arg v_node "$(version_of node-ws)" --arg v_etcd "$(version_of etcd)" \
        --arg runs "$RUNS" --arg scenarios "$SCENARIOS" --arg systems "$SYSTEMS" \
        --arg subscribers "$SUBSCRIBERS" --arg payload "$PAYLOAD" --arg duration "$DURATION" \
        --arg warmup "$WARMUP" --arg topics "$TOPICS" --arg publishers "$PUBLISHERS" --arg idle "$IDLE_CONNECTIONS" --arg idle_hold "$IDLE_HOLD" \
        --arg writers "$WRITERS" --arg control_duration "$CONTROL_DURATION" \
        --arg fo_writers "$FAILOVER_WRITERS" --arg fo_duration "$FAILOVER_DURATION" \
        --arg fo_kill "$FAILOVER_KILL_AT" --arg source_ips "$SOURCE_IPS" \
        '{"label": $lbl, stamp: $stamp, cpu: $cpu, nproc: $nproc, mem_mib: $mem, kernel: $kernel,
          nofile_hard: $nofile, load_start: $load_start, commit: $commit,
          uncommitted_files: $dirty,
          versions: {nats: $v_nats, redis: $v_redis, "node-ws": $v_node, etcd: $v_etcd},
          settings: {runs: $runs, scenarios: $scenarios, systems: $systems,
            subscribers: $subscribers, payload: $payload, duration: $duration, warmup: $warmup,
            topics: $topics, publishers: $publishers,
            idle_connections: $idle, idle_hold: $idle_hold, writers: $writers,
            control_duration: $control_duration, failover_writers: $fo_writers,
            failover_duration: $fo_duration, failover_kill_at: $fo_kill,
            source_ips: $source_ips}}' >"$OUT/machine.json"
}

# The process whose memory counts for idle connections: Firetower's gateway (listed first).
first_pid() { echo "${1%%,*}"; }

run_fanout() {
    local sys
    for sys in $SYSTEMS; do
        start "$sys"
        for r in $(seq 1 "$RUNS"); do
            log "fanout $sys run $r/$RUNS: $SUBSCRIBERS subscribers"
            "$FIRETOWER_BIN" bench fanout --system "$sys" --url "$PEER_URL" \
                --subscribers "$SUBSCRIBERS" --payload "$PAYLOAD" --duration "$DURATION" \
                --warmup "$WARMUP" --rate max --source-ips "$SOURCE_IPS" \
                --server-pid "$PEER_PIDS" --json >"$OUT/fanout-$sys-$r.json" ||
                log "fanout $sys run $r failed (see above)"
            jq -c '{system, deliveries_per_sec, cpu: ([.servers[].cpu_percent] | add),
                missing, seq_gaps, closed_by_server, connect_errors}' "$OUT/fanout-$sys-$r.json" >&2 || true
        done
        stop "$sys"
    done
}

run_topics() {
    local sys
    for sys in $SYSTEMS; do
        start "$sys"
        for r in $(seq 1 "$RUNS"); do
            log "topics $sys run $r/$RUNS: $TOPICS topics, $PUBLISHERS publishers"
            "$FIRETOWER_BIN" bench topics --system "$sys" --url "$PEER_URL" --topics "$TOPICS" \
                --publishers "$PUBLISHERS" --payload "$PAYLOAD" --duration "$DURATION" \
                --warmup "$WARMUP" --source-ips "$SOURCE_IPS" --server-pid "$PEER_PIDS" --json \
                >"$OUT/topics-$sys-$r.json" || log "topics $sys run $r failed (see above)"
            jq -c '{system, deliveries_per_sec, cpu: ([.servers[].cpu_percent] | add), missing,
                stalled_topics, seq_gaps, closed_by_server, connect_errors}' "$OUT/topics-$sys-$r.json" >&2 || true
        done
        stop "$sys"
    done
}

run_idle() {
    local sys
    for sys in $SYSTEMS; do
        for r in $(seq 1 "$RUNS"); do
            # A fresh server per run: the allocator must not reuse memory of the previous one.
            start "$sys"
            log "idle $sys run $r/$RUNS: $IDLE_CONNECTIONS connections"
            "$FIRETOWER_BIN" bench idle --system "$sys" --url "$PEER_URL" \
                --connections "$IDLE_CONNECTIONS" --source-ips "$SOURCE_IPS" \
                --server-pid "$(first_pid "$PEER_PIDS")" --hold "$IDLE_HOLD" --json \
                >"$OUT/idle-$sys-$r.json" || log "idle $sys run $r failed (see above)"
            jq -c '{system, connections, failed, closed_by_server, bytes_per_connection}' \
                "$OUT/idle-$sys-$r.json" >&2 || true
            stop "$sys"
        done
    done
}

run_control() {
    # Interleaved in one sitting, a fresh cluster per run, the order swapped every run
    # (Firetower first in odd runs, etcd first in even ones) so drift in the machine's load
    # falls on both systems alike.
    local r sys order
    for r in $(seq 1 "$RUNS"); do
        if [ $((r % 2)) = 1 ]; then order="firetower-cluster etcd"; else order="etcd firetower-cluster"; fi
        for sys in $order; do
            start "$sys"
            sleep 2 # as scripts/bench/commits.sh: let the fresh cluster settle before measuring
            if [ "$sys" = etcd ]; then
                log "control etcd run $r/$RUNS: writers $WRITERS (gRPC)"
                "$FIRETOWER_BIN" bench etcd-puts --endpoints "$PEER_ENDPOINTS" --writers "$WRITERS" \
                    --duration "$CONTROL_DURATION" --json >"$OUT/control-etcd-$r.jsonl" ||
                    log "control etcd run $r failed"
                cat "$OUT/control-etcd-$r.jsonl" >&2 || true
            else
                log "control firetower run $r/$RUNS: writers $WRITERS"
                "$FIRETOWER_BIN" bench commits --managers "$PEER_ENDPOINTS" --writers "$WRITERS" \
                    --duration "$CONTROL_DURATION" --json >"$OUT/control-firetower-$r.jsonl" ||
                    log "control firetower run $r failed"
                cat "$OUT/control-firetower-$r.jsonl" >&2 || true
            fi
            stop "$sys"
        done
    done
}

run_failover() {
    local sys r bench killed
    for sys in firetower-cluster etcd; do
        local name=${sys%-cluster}
        for r in $(seq 1 "$RUNS"); do
            start "$sys"
            log "failover $name run $r/$RUNS: kill -9 of the leader at ${FAILOVER_KILL_AT}s"
            if [ "$sys" = etcd ]; then
                # A client that gives an attempt 0.5 s before retrying on another member; the
                # gap includes up to that much.
                "$FIRETOWER_BIN" bench etcd-puts --endpoints "$PEER_ENDPOINTS" \
                    --writers "$FAILOVER_WRITERS" --duration "$FAILOVER_DURATION" \
                    --request-timeout-ms 500 --json >"$OUT/failover-$name-$r.json" &
            else
                "$FIRETOWER_BIN" bench commits --managers "$PEER_ENDPOINTS" \
                    --writers "$FAILOVER_WRITERS" --duration "$FAILOVER_DURATION" --json \
                    >"$OUT/failover-$name-$r.json" &
            fi
            bench=$!
            sleep "$FAILOVER_KILL_AT"
            killed=$(peer_kill_leader "$sys" || true)
            wait "$bench" || log "failover $name run $r: the load generator failed"
            # Record which process was killed next to the result.
            if [ -s "$OUT/failover-$name-$r.json" ]; then
                jq -c --arg killed "${killed:-none}" --arg at "$FAILOVER_KILL_AT" \
                    '. + {killed_pid: $killed, kill_at_seconds: ($at | tonumber)}' \
                    "$OUT/failover-$name-$r.json" >"$OUT/failover-$name-$r.tmp" &&
                    mv "$OUT/failover-$name-$r.tmp" "$OUT/failover-$name-$r.json"
                jq -c '{writers, max_gap_ms, max_writer_gap_ms, max_ms, errors, killed_pid}' \
                    "$OUT/failover-$name-$r.json" >&2 || true
            fi
            stop "$sys"
        done
    done
}

machine
log "output: $OUT (label: $LABEL)"
for scenario in $SCENARIOS; do
    case $scenario in
    fanout) run_fanout ;;
    topics) run_topics ;;
    idle) run_idle ;;
    control) run_control ;;
    failover) run_failover ;;
    *)
        echo "unknown scenario $scenario (fanout topics idle control failover)" >&2
        exit 2
        ;;
    esac
done
jq --arg load_end "$(cut -d' ' -f1-3 /proc/loadavg)" '. + {load_end: $load_end}' \
    "$OUT/machine.json" >"$OUT/machine.tmp" && mv "$OUT/machine.tmp" "$OUT/machine.json"

python3 scripts/bench/compare_report.py "$OUT" "$REPORT"
log "wrote $REPORT (raw: $OUT)"
