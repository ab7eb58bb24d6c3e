#!/usr/bin/env bash
# Run the Autobahn TestSuite's fuzzingclient against the echo example of firetower-client
# (docs/conformance.md). Needs Python 2.7 with `pip install autobahntestsuite==0.8.2`
# (wstest); set WSTEST to its path if it is not on PATH. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
WSTEST=${WSTEST:-wstest}
cargo build --release --locked -p firetower-client --example echo
./target/release/examples/echo 127.0.0.1:9001 &
ECHO_PID=$!
trap 'kill "$ECHO_PID"' EXIT
sleep 1
mkdir -p target/autobahn
"$WSTEST" -m fuzzingclient -s scripts/autobahn/fuzzingclient.json
python3 scripts/autobahn/summary.py target/autobahn/reports/index.json
