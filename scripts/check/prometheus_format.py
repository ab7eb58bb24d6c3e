#!/usr/bin/env python3
"""Scrape /metrics endpoints and parse them with the Prometheus project's own Python parsers.

    python3 scripts/check/prometheus_format.py http://127.0.0.1:9090/metrics \
        http://127.0.0.1:6672/metrics ...          (pip install prometheus-client)

The parser follows the response's content type, as a Prometheus server does: OpenMetrics for
`application/openmetrics-text` (the managers), the classic text format 0.0.4 otherwise (the
gateway). Fails when a page does not parse or when a family comes out untyped (samples whose
names do not match their TYPE line: Prometheus would store them without their type).
"""
import sys
import urllib.request

try:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
    from prometheus_client.parser import text_string_to_metric_families as classic
except ImportError:
    sys.exit("needs the Prometheus Python client: pip install prometheus-client")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    failed = False
    for url in sys.argv[1:]:
        with urllib.request.urlopen(url, timeout=10) as response:
            ctype = response.headers.get("content-type", "")
            body = response.read().decode()
        parse = openmetrics if ctype.startswith("application/openmetrics-text") else classic
        try:
            families = list(parse(body))
        except Exception as e:  # the parsers raise ValueError and friends
            print(f"{url}: does not parse as {ctype}: {e}", file=sys.stderr)
            failed = True
            continue
        untyped = sorted({f.name for f in families if f.type == "unknown"})
        samples = sum(len(f.samples) for f in families)
        print(f"{url}: {ctype}: {len(families)} families, {samples} samples")
        if untyped:
            print(f"{url}: untyped families {untyped}", file=sys.stderr)
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
