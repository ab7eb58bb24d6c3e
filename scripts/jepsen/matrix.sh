#!/usr/bin/env bash
# Run the Jepsen result matrix of docs/jepsen.md, one run after another, and rewrite the
# results table (scripts/jepsen/table.py). Needs root, iproute2 and nftables.
#
#   scripts/jepsen/matrix.sh single          every workload x single nemesis, 60 s, seeds 1 2
#                                            (WORKLOADS="subscriptions delivery membership")
#   scripts/jepsen/matrix.sh mixed           every workload, all nemeses mixed, 300 s, seeds 1 2 3
#   scripts/jepsen/matrix.sh unsafe-single   the single runs against the unsafe server modes
#   scripts/jepsen/matrix.sh unsafe-mixed    the mixed runs against the unsafe server modes
#
# Unsafe mode: --unsafe-stale-reads (followers answer reads from their own copy; publishes
# look their subscribers up in a copy of the table up to 3 s old). Every unsafe run must end
# invalid. UNSAFE_LEADERSHIP=1 runs the delivery runs with --unsafe-stale-leadership instead
# (publishes stamped on the word of stale Raft metrics), named unsafe-leadership-delivery-*.
#   scripts/jepsen/matrix.sh all             all of the above
#
# SEEDS (default "1 2") and MIXED_SEEDS (default "1 2 3") pick the seeds of the single and
# mixed runs, for a shorter pass over every row.
#
# A run whose directory already holds a verdict is skipped (RERUN=1 runs it again), so an
# interrupted matrix continues where it stopped. After every run the script checks that the
# run left no namespace, nftables table or process behind and records it in leftovers.txt.
set -u
cd "$(dirname "$0")/../.."
BIN=${FIRETOWER_BIN:-target/debug/firetower}
OUT=${OUT:-jepsen-results/matrix}
WORKLOADS=${WORKLOADS:-"subscriptions delivery membership"}
NEMESES=${NEMESES:-"partition partition-leader bridge kill pause restart membership"}
SEEDS=${SEEDS:-"1 2"}
MIXED_SEEDS=${MIXED_SEEDS:-"1 2 3"}
MIXED="partition,partition-leader,bridge,one-way,kill,pause,restart,wipe,wal-corrupt,membership"
mkdir -p "$OUT"

# What run $1 (pid $2) left behind: its namespaces (named ftj-<pid>-...), the harness's
# nftables table in the host namespace (rules live inside the run's namespaces and must never
# reach this one), and processes still holding its log files.
leftovers() {
    local name=$1 pid=$2 ns nft procs abs
    abs=$(cd "$OUT/$name" 2>/dev/null && pwd)
    ns=$(ip netns list 2>/dev/null | grep -c "^ftj-$pid-" || true)
    nft=$(nft list tables 2>/dev/null | grep -c "firetower_chaos" || true)
    procs=0
    if [ -n "$abs" ]; then
        procs=$(find /proc/[0-9]*/fd -lname "$abs/*" 2>/dev/null | cut -d/ -f3 | sort -u | wc -l)
    fi
    echo "$name namespaces=$ns nft_tables=$nft processes=$procs" >> "$OUT/leftovers.txt"
}

run() {
    local name=$1
    shift
    if [ -f "$OUT/$name/verdict.json" ] && [ -z "${RERUN:-}" ]; then
        echo "skip $name (done)"
        return
    fi
    local start=$(date +%s)
    "$BIN" jepsen run "$@" --out "$OUT/$name" > "$OUT/$name.log" 2>&1 < /dev/null &
    local pid=$!
    wait "$pid"
    local rc=$?
    echo "$name exit=$rc wall=$(( $(date +%s) - start ))s"
    leftovers "$name" "$pid"
}

unsafe_flag() {
    case "$1" in
        subscriptions | membership | delivery) echo "--unsafe-stale-reads" ;;
        delivery-leadership) echo "--unsafe-stale-leadership" ;;
    esac
}

single() {
    local unsafe=$1 flag prefix=""
    if [ "$unsafe" = 1 ]; then prefix="unsafe-"; fi
    for seed in $SEEDS; do
        for w in $WORKLOADS; do
            flag="" name="${prefix}$w"
            if [ "$unsafe" = 1 ]; then flag=$(unsafe_flag "$w"); fi
            if [ "$unsafe" = 1 ] && [ "$w" = delivery ] && [ -n "${UNSAFE_LEADERSHIP:-}" ]; then
                flag=$(unsafe_flag delivery-leadership) name="unsafe-leadership-$w"
            fi
            for n in $NEMESES; do
                run "$name-$n-s$seed" --workload "$w" --nemesis "$n" \
                    --time-limit 60 --seed "$seed" $flag
            done
        done
    done
}

mixed() {
    local unsafe=$1 flag prefix=""
    if [ "$unsafe" = 1 ]; then prefix="unsafe-"; fi
    for seed in $MIXED_SEEDS; do
        for w in $WORKLOADS; do
            flag="" name="${prefix}$w"
            if [ "$unsafe" = 1 ]; then flag=$(unsafe_flag "$w"); fi
            if [ "$unsafe" = 1 ] && [ "$w" = delivery ] && [ -n "${UNSAFE_LEADERSHIP:-}" ]; then
                flag=$(unsafe_flag delivery-leadership) name="unsafe-leadership-$w"
            fi
            run "$name-mixed-s$seed" --workload "$w" --nemesis "$MIXED" \
                --time-limit 300 --seed "$seed" $flag
        done
    done
}

for what in "${@:-single}"; do
    case "$what" in
        single) single 0 ;;
        mixed) mixed 0 ;;
        unsafe-single) single 1 ;;
        unsafe-mixed) mixed 1 ;;
        all) single 0; mixed 0; single 1; mixed 1 ;;
        *) echo "unknown part: $what (single|mixed|unsafe-single|unsafe-mixed|all)" >&2; exit 2 ;;
    esac
done
python3 scripts/jepsen/table.py "$OUT" > "$OUT/table.md" && echo "table: $OUT/table.md"
