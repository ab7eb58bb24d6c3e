#!/usr/bin/env bash
# Subscription commits with mutual TLS on and off, in one sitting: RUNS rounds, each a fresh
# secure cluster then a fresh --insecure one (scripts/bench/commits.sh), then the medians per
# writer count and their ratio.
#
#   scripts/bench/tls-compare.sh [RUNS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
seconds=${2:-10}
out=$(mktemp -d)
for r in $(seq 1 "$runs"); do
  for mode in on off; do
    TLS=$mode scripts/bench/commits.sh 1 "$seconds" >"$out/$mode-$r.jsonl"
  done
done
python3 - "$out" "$runs" <<'PY'
import json, statistics, sys, pathlib
out, runs = pathlib.Path(sys.argv[1]), int(sys.argv[2])
rates = {}
for mode in ("on", "off"):
    for r in range(1, runs + 1):
        for line in (out / f"{mode}-{r}.jsonl").read_text().splitlines():
            if not line.strip().startswith("{"):
                continue
            row = json.loads(line)
            rates.setdefault((mode, row["writers"]), []).append(row["commits_per_sec"])
print("| writers | TLS on (commits/s, median) | TLS off | on/off |")
print("| --- | --- | --- | --- |")
for w in sorted({w for (_, w) in rates}):
    on = statistics.median(rates[("on", w)])
    off = statistics.median(rates[("off", w)])
    print(f"| {w} | {on:,.0f} | {off:,.0f} | {on / off:.2f} |")
PY
