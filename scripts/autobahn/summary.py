"""Summarise an Autobahn fuzzingclient report: counts per behavior, and every case that is
not OK (or INFORMATIONAL / UNIMPLEMENTED). Exit status 1 when any case failed."""
import collections
import json
import sys

index = json.load(open(sys.argv[1]))
failed = False
for agent, cases in index.items():
    counts = collections.Counter()
    for case, result in sorted(cases.items(), key=lambda kv: [int(p) for p in kv[0].split(".")]):
        behavior, close = result["behavior"], result["behaviorClose"]
        counts[behavior] += 1
        if behavior not in ("OK", "INFORMATIONAL", "UNIMPLEMENTED", "NON-STRICT") or close not in (
            "OK",
            "INFORMATIONAL",
        ):
            failed = failed or behavior == "FAILED" or close == "FAILED"
            print(f"{agent} {case}: {behavior} (close {close})")
    print(f"{agent}: {sum(counts.values())} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
sys.exit(1 if failed else 0)
