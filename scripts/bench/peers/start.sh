#!/usr/bin/env bash
# Start peer systems on loopback for manual runs of `firetower bench ... --system ...`
# (scripts/bench/compare.sh starts and stops them itself). Data and pid files go to
# $PEER_WORK (default /tmp/firetower-peers); stop them with stop.sh.
#
#   scripts/bench/peers/start.sh nats redis node-ws etcd    # or: firetower, firetower-cluster
set -euo pipefail
cd "$(dirname "$0")/../../.."
. scripts/bench/peers/lib.sh
[ $# -gt 0 ] || { echo "usage: $0 SYSTEM... (firetower firetower-cluster nats redis node-ws etcd)" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)"
for sys in "$@"; do
    peer_start "$sys"
    # The servers outlive this script; stop.sh finds them by their pid files.
    echo "$sys url=${PEER_URL:-} pids=$PEER_PIDS endpoints=${PEER_ENDPOINTS:-}"
done
disown -a
