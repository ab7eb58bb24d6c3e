#!/usr/bin/env python3
"""Print the Markdown results table of every Jepsen run directory under DIR.

usage: scripts/jepsen/table.py jepsen-results/matrix > table.md

One row per run (config.json + verdict.json), ordered by unsafe, workload, nemesis, seed;
plus whether the run left anything behind (DIR/leftovers.txt, written by matrix.sh).
"""
import json
import os
import sys


def leftovers(root):
    found = {}
    path = os.path.join(root, "leftovers.txt")
    if os.path.exists(path):
        for line in open(path):
            parts = line.split()
            if not parts:
                continue
            counts = dict(p.split("=") for p in parts[1:])
            found[parts[0]] = all(v == "0" for v in counts.values())
    return found


def anomaly_summary(verdict):
    kinds = {}
    for a in verdict.get("anomalies", []):
        kind = a.get("kind") or a.get("type") or "anomaly"
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))


def unsafe_mode(config):
    for flag in ("unsafe_stale_reads", "unsafe_stale_leadership"):
        if config.get(flag):
            return "**" + flag.replace("_", "-") + "**"
    return ""


def detail(verdict):
    if "aborted" in verdict:
        return "run aborted: " + verdict["aborted"]
    s = verdict.get("stats", {})
    if verdict.get("workload") == "delivery":
        return (f"{s.get('delivered', 0):,} delivered, {s.get('lost_unexcused', 0)} lost "
                f"({s.get('lost', 0)} incl. excused), {s.get('duplicates', 0)} dup, "
                f"{s.get('reordered', 0)} reordered, {s.get('phantoms', 0)} phantom")
    if verdict.get("workload") == "membership":
        m = s.get("membership", {})
        sub = s.get("subscriptions", {})
        final = m.get("allowed_final_voters", [])
        return (f"{sub.get('linearizable', 0)}/{sub.get('topics', 0)} topics linearizable; "
                f"{m.get('changes_ok', 0)} changes ok, {m.get('changes_unknown', 0)} unknown, "
                f"final voters {final[0] if len(final) == 1 else final}")
    return (f"{s.get('linearizable', 0)}/{s.get('topics', 0)} topics linearizable, "
            f"{s.get('anomalies', 0)} anomalous, {s.get('unknown', 0)} unknown")


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "jepsen-results/matrix"
    clean = leftovers(root)
    rows = []
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        try:
            config = json.load(open(os.path.join(d, "config.json")))
        except (OSError, ValueError):
            continue
        try:
            verdict = json.load(open(os.path.join(d, "verdict.json")))
        except (OSError, ValueError):
            # The run ended without a verdict: say why, from the last error line of its log.
            reason = "no verdict"
            try:
                lines = [l for l in open(d + ".log", errors="replace") if l.startswith("error:")]
                if lines:
                    reason = lines[-1].strip()[:160].replace("|", "/")
            except OSError:
                pass
            verdict = {"valid": "aborted", "ops": {}, "stats": {}, "workload": config["workload"],
                       "aborted": reason}
        nemesis = ",".join(config.get("nemeses", []))
        if len(config.get("nemeses", [])) > 3:
            nemesis = "all mixed"
        ops = verdict.get("ops", {})
        valid = verdict.get("valid", "?")
        shown = f"**{valid}**" if valid != "valid" else valid
        anomalies = anomaly_summary(verdict)
        rows.append((
            unsafe_mode(config), config["workload"], nemesis,
            config["seed"],
            "| {unsafe} | {w} | {n} | {t} s | {seed} | {ok} / {fail} / {info} | {valid} | {detail}{anom} | {left} |".format(
                unsafe=unsafe_mode(config) or "safe",
                w=config["workload"], n=nemesis, t=config["time_limit_secs"],
                seed=config["seed"], ok=ops.get("ok", 0), fail=ops.get("fail", 0),
                info=ops.get("info", 0), valid=shown, detail=detail(verdict),
                anom=f"; {anomalies}" if anomalies else "",
                left={True: "none", False: "**yes**"}.get(clean.get(name), "not checked")),
        ))
    print("| mode | workload | nemesis | time | seed | ops ok / fail / info | verdict | details | left behind |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in sorted(rows, key=lambda r: r[:4]):
        print(row[4])


if __name__ == "__main__":
    main()
