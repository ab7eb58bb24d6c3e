#!/usr/bin/env bash
# Stop peer systems started by start.sh (by the pids it recorded) and remove their data.
#
#   scripts/bench/peers/stop.sh nats redis     # or: all
set -euo pipefail
cd "$(dirname "$0")/../../.."
. scripts/bench/peers/lib.sh
[ $# -gt 0 ] || { echo "usage: $0 SYSTEM...|all" >&2; exit 2; }
if [ "$1" = all ]; then
    set -- $(ls "$PEER_WORK/pids" 2>/dev/null || true)
fi
for sys in "$@"; do
    peer_stop "$sys"
    echo "$sys stopped"
done
