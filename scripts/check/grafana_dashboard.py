#!/usr/bin/env python3
"""Check a Grafana dashboard JSON against Grafana's own schema and against live metrics.

    python3 scripts/check/grafana_dashboard.py docs/grafana/firetower-manager.json \
        [--metrics http://127.0.0.1:9100/metrics ...]

1. Grafana's format: the dashboard is decoded with the Grafana Foundation SDK (the schema
   types Grafana publishes, `pip install grafana-foundation-sdk`), encoded again, and every
   key and value of the file must survive the round trip: a key the schema does not know
   (a typo, a field of another panel type, a wrong nesting) is dropped by the decoder and
   reported here. Only `__inputs` / `__requires` (import-time keys, not part of the model)
   are exempt.
2. Every metric a panel or variable queries is exported: each `firetower_*` name in an
   expression must appear in at least one of the scraped `/metrics` pages (histogram
   queries may use the `_bucket`, `_sum` and `_count` series).
Exits non-zero with the list of problems.
"""
import argparse
import json
import re
import sys
import urllib.request

IMPORT_KEYS = {"__inputs", "__requires"}


def lost(original, decoded, path="$"):
    """Paths present in `original` that are missing or different in `decoded`."""
    problems = []
    if isinstance(original, dict):
        if not isinstance(decoded, dict):
            return [f"{path}: became {type(decoded).__name__}"]
        for key, value in original.items():
            if path == "$" and key in IMPORT_KEYS:
                continue
            if key not in decoded:
                if value is None:
                    continue  # an explicit null is the same as absent (exports write "id": null)
                problems.append(f"{path}.{key}: not in Grafana's schema (dropped on decode)")
            else:
                problems.extend(lost(value, decoded[key], f"{path}.{key}"))
    elif isinstance(original, list):
        if not isinstance(decoded, list) or len(decoded) != len(original):
            return [f"{path}: list changed on decode"]
        for i, (a, b) in enumerate(zip(original, decoded)):
            problems.extend(lost(a, b, f"{path}[{i}]"))
    elif original != decoded and not (
        isinstance(original, (int, float)) and isinstance(decoded, (int, float)) and original == decoded
    ):
        problems.append(f"{path}: {original!r} decoded as {decoded!r}")
    return problems


def queried_metrics(dashboard):
    names = set()
    text = json.dumps(dashboard.get("panels", [])) + json.dumps(dashboard.get("templating", {}))
    for name in re.findall(r"\bfiretower_[a-z0-9_]+", text):
        names.add(name)
    return names


def exported_metrics(urls):
    names = set()
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        for line in body.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dashboard")
    parser.add_argument("--metrics", action="append", default=[], help="a /metrics URL to scrape")
    args = parser.parse_args()
    try:
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.cog.plugins import register_default_plugins
        from grafana_foundation_sdk.models.dashboard import Dashboard
    except ImportError:
        sys.exit("needs the Grafana Foundation SDK: pip install grafana-foundation-sdk")
    register_default_plugins()

    with open(args.dashboard) as f:
        original = json.load(f)
    decoded = json.loads(json.dumps(Dashboard.from_json(original), cls=JSONEncoder))
    problems = lost(original, decoded)
    panels = original.get("panels", [])
    print(f"{args.dashboard}: {len(panels)} panels, schemaVersion {original.get('schemaVersion')}")

    if args.metrics:
        exported = exported_metrics(args.metrics)
        for name in sorted(queried_metrics(original)):
            series = {name, name + "_bucket", name + "_sum", name + "_count"}
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if not (series | {base + "_bucket", base + "_sum", base + "_count"}) & exported:
                problems.append(f"queried metric {name} is not exported by {', '.join(args.metrics)}")
        print(f"{len(queried_metrics(original))} metric names queried, all checked against {len(exported)} exported series names")

    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print("ok: the dashboard round-trips through Grafana's schema without losing anything")


if __name__ == "__main__":
    main()
