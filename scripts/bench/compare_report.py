#!/usr/bin/env python3
"""Write docs/bench-results/compare.md from the raw JSON of one scripts/bench/compare.sh run.

    python3 scripts/bench/compare_report.py docs/bench-results/raw/compare-<stamp> docs/bench-results/compare.md

Medians over the runs, the runs themselves, and the ratio Firetower / peer for every row;
bar charts as hand-written SVG next to the raw files. Standard library only.
"""

import glob
import json
import os
import statistics
import sys

SYSTEMS = ["firetower", "nats", "redis", "node-ws"]
NAMES = {
    "firetower": "Firetower (1 gateway + 3 managers)",
    "nats": "NATS (nats-server, WebSocket)",
    "redis": "Redis pub/sub (TCP, RESP)",
    "node-ws": "Node.js `ws` broadcast",
    "etcd": "etcd (3 members)",
}


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_jsonl(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return out


def runs(out, pattern):
    files = sorted(glob.glob(os.path.join(out, pattern)), key=run_number)
    return [d for d in (load_json(f) for f in files) if d is not None]


def run_number(path):
    stem = os.path.basename(path).rsplit(".", 1)[0]
    try:
        return int(stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    if v is None:
        return "—"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def fmt_runs(values, digits=0):
    return ", ".join(fmt(v, digits) for v in values)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def fanout_rows(out, kind="fanout"):
    rows = []
    for sys_ in SYSTEMS:
        rs = runs(out, f"{kind}-{sys_}-*.json")
        if not rs:
            continue
        dps = [r.get("deliveries_per_sec") for r in rs]
        cpu = [sum(s.get("cpu_percent", 0) for s in r.get("servers", [])) for r in rs]
        per_core = [d / (c / 100) if c else None for d, c in zip(dps, cpu)]
        rss = [sum(s.get("rss_end_kib", 0) for s in r.get("servers", [])) / 1024 for r in rs]
        rows.append(
            {
                "system": sys_,
                "runs": dps,
                "dps": median(dps),
                "cpu": median(cpu),
                "per_core": median(per_core),
                "rss": median(rss),
                "p99": median([r.get("latency", {}).get("p99_ms") for r in rs]),
                "missing": sum(r.get("missing", 0) for r in rs),
                "stalled": sum(r.get("stalled_topics", 0) for r in rs),
                "publish_errors": sum(r.get("publish_errors", 0) for r in rs),
                "first_publish_error": next(
                    (r.get("first_publish_error") for r in rs if r.get("first_publish_error")), None
                ),
                "p50": median([r.get("latency", {}).get("p50_ms") for r in rs]),
                "gaps": sum(r.get("seq_gaps", 0) + r.get("out_of_order", 0) for r in rs),
                "closed": sum(r.get("closed_by_server", 0) for r in rs),
                "subscribers": min(r.get("subscribers", r.get("topics", 0)) for r in rs),
                "requested": max(r.get("subscribers_requested", r.get("topics_requested", 0)) for r in rs),
                "loadgen_cpu": median([(r.get("loadgen") or {}).get("cpu_percent") for r in rs]),
                "load": median([r.get("load_average") for r in rs]),
            }
        )
    return rows


def idle_rows(out):
    rows = []
    for sys_ in SYSTEMS:
        rs = runs(out, f"idle-{sys_}-*.json")
        if not rs:
            continue
        bpc = [r.get("bytes_per_connection") if r.get("connections") else None for r in rs]
        rows.append(
            {
                "system": sys_,
                "runs": bpc,
                "bpc": median(bpc),
                "held": min(r.get("connections", 0) for r in rs),
                "requested": max(r.get("connections_requested", 0) for r in rs),
                "failed": sum(r.get("failed", 0) for r in rs),
                "error": next((r.get("first_error") for r in rs if r.get("first_error")), None),
                "load": median([r.get("load_average") for r in rs]),
            }
        )
    return rows


def control_rows(out):
    by = {}
    for name, rate_key in (("firetower", "commits_per_sec"), ("etcd", "puts_per_sec")):
        files = sorted(glob.glob(os.path.join(out, f"control-{name}-*.jsonl")), key=run_number)
        for f in files:
            for line in load_jsonl(f):
                w = line.get("writers")
                d = by.setdefault(w, {}).setdefault(name, {"rate": [], "p50": [], "p99": [], "errors": 0})
                d["rate"].append(line.get(rate_key))
                d["p50"].append(line.get("p50_ms"))
                d["p99"].append(line.get("p99_ms"))
                d["errors"] += line.get("errors", 0)
    return [(w, by[w]) for w in sorted(by)]


def failover_rows(out):
    rows = {}
    for name in ("firetower", "etcd"):
        rs = runs(out, f"failover-{name}-*.json")
        if not rs:
            continue
        rows[name] = {
            "gap": [r.get("max_gap_ms") for r in rs],
            "writer_gap": [r.get("max_writer_gap_ms") for r in rs],
            "max": [r.get("max_ms") for r in rs],
            "errors": sum(r.get("errors", 0) for r in rs),
            "killed": [r.get("killed_pid") for r in rs],
        }
    return rows


def bar_svg(path, title, unit, items, digits=0):
    """A horizontal bar chart: items = [(label, value)]."""
    items = [(label, v) for label, v in items if v is not None]
    if not items:
        return False
    width, left, bar_h, gap, top = 720, 260, 26, 10, 44
    height = top + len(items) * (bar_h + gap) + 20
    peak = max(v for _, v in items) or 1
    span = width - left - 140
    esc = lambda s: s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="12" y="24" font-size="15" font-weight="bold">{esc(title)}</text>',
    ]
    for i, (label, v) in enumerate(items):
        y = top + i * (bar_h + gap)
        w = max(1, int(span * v / peak))
        color = "#d9480f" if label.lower().startswith("firetower") else "#4a6fa5"
        parts.append(f'<text x="{left - 8}" y="{y + bar_h * 0.7:.0f}" text-anchor="end">{esc(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w}" height="{bar_h}" fill="{color}"/>')
        parts.append(
            f'<text x="{left + w + 6}" y="{y + bar_h * 0.7:.0f}">{esc(fmt(v, digits))} {esc(unit)}</text>'
        )
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")
    return True


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: compare_report.py RAW_DIR REPORT.md")
    out, report = sys.argv[1], sys.argv[2]
    m = load_json(os.path.join(out, "machine.json")) or {}
    s = m.get("settings", {})
    label = m.get("label", "results")
    rel = os.path.relpath(os.path.abspath(out), os.path.dirname(os.path.abspath(report)))
    smoke = label != "results"
    L = []
    L.append("# Firetower next to NATS, Redis, a Node.js `ws` server and etcd")
    L.append("")
    L.append(
        "Generated by `scripts/bench/compare.sh` from the raw JSON in "
        f"[`{rel}/`]({rel}/) — do not edit by hand; rerun the script."
    )
    L.append("")
    if smoke:
        L.append(
            f"> **{label.upper()} RUN, NOT RESULTS.** These numbers come from a deliberately small run "
            "made to prove that every path works, on a **shared, loaded 2-core machine** "
            f"(load average over 1/5/15 min {m.get('load_start', '?')} at the start, {m.get('load_end', '?')} "
            "at the end, on 2 cores, while a Jepsen job and other work ran), with settings far below the "
            "scenarios' real sizes (see *Settings*). They say nothing about how the systems compare. "
            "The real run is `scripts/bench/compare.sh` on a quiet machine."
        )
        L.append("")
    L.append(f"Every figure is the median of {s.get('runs', '?')} run(s) (the runs in parentheses); ratios are Firetower ÷ peer.")
    L.append("")

    fan = fanout_rows(out)
    if fan:
        ft = next((r for r in fan if r["system"] == "firetower"), None)
        L.append("## Fan-out: one topic, many subscribers")
        L.append("")
        L.append(
            f"One topic, {s.get('subscribers', '?')} subscriber connections, one publisher, "
            f"{s.get('payload', '?')}-byte payloads (`{{\"ft_ts\":…}}` JSON, the same bytes for every system), "
            "closed loop at the highest sustainable rate (at most 16 publishes not yet delivered to "
            f"every subscriber), {s.get('duration', '?')} s measured after {s.get('warmup', '?')} s of warm-up. "
            "Server CPU is summed over the server's processes (Firetower: gateway + 3 managers) in % of "
            "one core; deliveries/s per core = deliveries/s ÷ that CPU. RSS at the end of the window."
        )
        L.append("")
        L.append(
            "| system | deliveries/s (runs) | server CPU % | deliveries/s per core | server RSS MiB | "
            "missing / gaps / closed | Firetower ÷ this, deliveries/s | Firetower ÷ this, per core |"
        )
        L.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in fan:
            subs = "" if r["subscribers"] >= r["requested"] else f" ({r['subscribers']} of {r['requested']} connected)"
            L.append(
                f"| {NAMES[r['system']]}{subs} | **{fmt(r['dps'])}** ({fmt_runs(r['runs'])}) | {fmt(r['cpu'])} | "
                f"{fmt(r['per_core'])} | {fmt(r['rss'], 1)} | {r['missing']} / {r['gaps']} / {r['closed']} | "
                f"{ratio(ft and ft['dps'], r['dps'])} | {ratio(ft and ft['per_core'], r['per_core'])} |"
            )
        L.append("")
        lg = [f"{r['system']} {fmt(r['loadgen_cpu'])}%" for r in fan]
        L.append(
            "The load generator (`firetower bench fanout --system …`) ran on the same cores: its CPU was "
            + ", ".join(lg)
            + ". Latency under this closed-loop pace is queueing by construction and is left in the raw files."
        )
        L.append("")
        if bar_svg(
            os.path.join(out, "fanout.svg"),
            "Fan-out: deliveries/s (median)",
            "/s",
            [(r["system"], r["dps"]) for r in fan],
        ):
            L.append(f"![fan-out deliveries per second]({rel}/fanout.svg)")
            L.append("")

    top = fanout_rows(out, "topics")
    if top:
        ft = next((r for r in top if r["system"] == "firetower"), None)
        L.append("## Many small topics: one subscriber per topic")
        L.append("")
        L.append(
            f"{s.get('topics', '?')} topics with one subscriber connection each (all to one server "
            f"process), {s.get('publishers', '?')} publisher connections, each publishing to its share of "
            "the topics; a closed loop per topic: a topic's next message is published when the "
            "previous one was delivered, and at most 64 publishes per publisher connection wait "
            f"for their acknowledgement. {s.get('payload', '?')}-byte payloads, {s.get('duration', '?')} s "
            "measured. This is routing cost per message rather than fan-out. The design's 50,000 "
            "connections need more descriptors than one process may open here (each system would "
            "need several server processes), so the run stays within one process."
        )
        L.append("")
        L.append(
            "| system | deliveries/s (runs) | server CPU % | deliveries/s per core | server RSS MiB | "
            "p50 / p99 ms | missing / stalled topics / gaps / closed | Firetower ÷ this, deliveries/s | "
            "Firetower ÷ this, per core |"
        )
        L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in top:
            subs = "" if r["subscribers"] >= r["requested"] else f" ({r['subscribers']} of {r['requested']} subscribed)"
            L.append(
                f"| {NAMES[r['system']]}{subs} | **{fmt(r['dps'])}** ({fmt_runs(r['runs'])}) | {fmt(r['cpu'])} | "
                f"{fmt(r['per_core'])} | {fmt(r['rss'], 1)} | {fmt(r['p50'], 2)} / {fmt(r['p99'], 2)} | "
                f"{r['missing']} / {r['stalled']} / {r['gaps']} / {r['closed']} | "
                f"{ratio(ft and ft['dps'], r['dps'])} | {ratio(ft and ft['per_core'], r['per_core'])} |"
            )
        L.append("")
        for r in top:
            if r["publish_errors"]:
                L.append(
                    f"{NAMES[r['system']]}: {r['publish_errors']} publishes refused or unanswered over "
                    f"the runs (each stalls its topic's loop); first: `{str(r['first_publish_error'])[:200]}`"
                )
                L.append("")
        if bar_svg(
            os.path.join(out, "topics.svg"),
            "Many small topics: deliveries/s (median)",
            "/s",
            [(r["system"], r["dps"]) for r in top],
        ):
            L.append(f"![many topics deliveries per second]({rel}/topics.svg)")
            L.append("")

    idle = idle_rows(out)
    if idle:
        ft = next((r for r in idle if r["system"] == "firetower"), None)
        L.append("## Idle connections: memory per connection")
        L.append("")
        L.append(
            f"{s.get('idle_connections', '?')} idle connections to one freshly started server process "
            "(the most one process may hold here: `ulimit -Hn` is "
            f"{m.get('nofile_hard', '?')} and cannot be raised), held {s.get('idle_hold', '?')} s; "
            "RSS after minus RSS before, divided by the connections. A connection is what a real client "
            "holds: Firetower and Node.js a WebSocket after the upgrade; NATS a WebSocket after CONNECT "
            "(PING/PONG answered); Redis a TCP connection after one PING. Kernel socket memory is not "
            "in RSS. Lower is better; a ratio below 1 means Firetower uses less."
        )
        L.append("")
        L.append("| system | connections held | bytes per connection (runs) | Firetower ÷ this |")
        L.append("| --- | --- | --- | --- |")
        for r in idle:
            held = f"{r['held']:,} of {r['requested']:,}"
            if r["failed"]:
                held += f" ({r['failed']} failed: {str(r['error'])[:80]})"
            name = "Firetower (the gateway)" if r["system"] == "firetower" else NAMES[r["system"]]
            L.append(
                f"| {name} | {held} | **{fmt(r['bpc'])}** ({fmt_runs(r['runs'])}) | "
                f"{ratio(ft and ft['bpc'], r['bpc'])} |"
            )
        L.append("")
        if bar_svg(
            os.path.join(out, "idle.svg"),
            "Idle connections: bytes of server RSS per connection (median)",
            "B",
            [(r["system"], r["bpc"]) for r in idle],
        ):
            L.append(f"![memory per idle connection]({rel}/idle.svg)")
            L.append("")

    ctl = control_rows(out)
    if ctl:
        L.append("## Control plane: Firetower subscription commits vs etcd puts")
        L.append("")
        L.append(
            "3 voters on loopback, fsync on in both (Firetower: `fdatasync` of the write-ahead log "
            "before every acknowledgement; etcd: its default, no `--unsafe-no-fsync`). Each writer "
            "writes a fresh key and waits for the acknowledgement before the next: Firetower "
            "subscribes a fresh topic through the manager link (`firetower bench commits`, QUIC, 8 "
            "Raft groups); etcd puts a fresh key with a 16-byte value over gRPC with the etcd-client "
            "crate (`firetower bench etcd-puts`, one HTTP/2 connection per member, writers spread "
            "over the 3 members). The two run interleaved, a fresh cluster per run. "
            f"{s.get('control_duration', '?')} s per writer count."
        )
        L.append("")
        L.append(
            "| writers | Firetower commits/s (runs) | p50 / p99 ms | etcd puts/s (runs) | p50 / p99 ms | "
            "Firetower ÷ etcd, rate | errors (Firetower / etcd) |"
        )
        L.append("| --- | --- | --- | --- | --- | --- | --- |")
        for w, d in ctl:
            f_, e_ = d.get("firetower"), d.get("etcd")

            def cell(x):
                if not x:
                    return "—", "—"
                return (
                    f"**{fmt(median(x['rate']))}** ({fmt_runs(x['rate'])})",
                    f"{fmt(median(x['p50']), 2)} / {fmt(median(x['p99']), 2)}",
                )

            fr, fl = cell(f_)
            er, el = cell(e_)
            L.append(
                f"| {w} | {fr} | {fl} | {er} | {el} | "
                f"{ratio(f_ and median(f_['rate']), e_ and median(e_['rate']))} | "
                f"{f_['errors'] if f_ else '—'} / {e_['errors'] if e_ else '—'} |"
            )
        L.append("")

    fo = failover_rows(out)
    if fo:
        L.append("## Failover: how long writing stops after `kill -9` of the leader")
        L.append("")
        L.append(
            f"{s.get('failover_writers', '?')} writers as in the control-plane scenario for "
            f"{s.get('failover_duration', '?')} s; at {s.get('failover_kill_at', '?')} s the leader is killed with "
            "`kill -9` (a fresh cluster per run). Firetower: the manager that leads the most of the 8 "
            "groups (the others keep their leaders, but each writer waits for its own write, so once "
            "every writer has drawn a topic of a leaderless group nothing succeeds anywhere); etcd: the leader "
            "of its single group. *No write anywhere* is the longest interval in which no write "
            "succeeded at all; *longest stall of one writer* is the longest a single writer went "
            "without a success (its write retried until it succeeded: Firetower's link retries "
            "internally; the etcd client gives each attempt 0.5 s, then retries the same put on the "
            "next member, so its stall includes up to 0.5 s of client timeout)."
        )
        L.append("")
        L.append("| system | no write anywhere, ms (runs) | longest stall of one writer, ms (runs) | failed attempts |")
        L.append("| --- | --- | --- | --- |")
        for name in ("firetower", "etcd"):
            r = fo.get(name)
            if not r:
                continue
            L.append(
                f"| {NAMES[name] if name != 'firetower' else 'Firetower (3 managers)'} | "
                f"**{fmt(median(r['gap']))}** ({fmt_runs(r['gap'])}) | "
                f"**{fmt(median(r['writer_gap']))}** ({fmt_runs(r['writer_gap'])}) | {r['errors']} |"
            )
        if "firetower" in fo and "etcd" in fo:
            L.append(
                f"| Firetower ÷ etcd | {ratio(median(fo['firetower']['gap']), median(fo['etcd']['gap']))} | "
                f"{ratio(median(fo['firetower']['writer_gap']), median(fo['etcd']['writer_gap']))} | |"
            )
        L.append("")
        L.append(
            "For *publish* unavailability per leader kill, see the chaos scenario "
            "`firetower chaos run leader-kill-loop` and its measurements in docs/chaos.md."
        )
        L.append("")

    L.append("## Method notes and limits")
    L.append("")
    for note in [
        "One load generator for every system: `firetower bench fanout|topics|idle --system …` "
        "(Rust, tokio) with a small adapter per system (`bench/src/loadgen/peer.rs`): the same "
        "scenario code, payload bytes, pacing and counting; only subscribe, publish and "
        "recognising a delivery differ. NATS is spoken over its WebSocket listener (the "
        "browser-facing path, like Firetower's), Redis over plain TCP (it has no WebSocket), "
        "the Node.js server speaks Firetower's own JSON protocol.",
        "What an acknowledgement means differs: Firetower acks a publish once the topic's "
        "leader ordered it (one QUIC round trip to a manager); NATS (`verbose` mode, publisher "
        "only) and Redis (PUBLISH's reply) ack once the server took the message; the Node.js "
        "server acks after handing the message to its sockets. None of the peers replicates "
        "anything; the Firetower numbers include its 3 managers' CPU.",
        "Order is checked per subscriber (Firetower's `term`/`seq`; for the peers a sequence "
        "number the publisher puts in the payload); `missing` counts acknowledged publishes "
        "that never arrived.",
        "The load generator shares the 2 cores with the servers, so a server that is cheaper "
        "per delivery can be limited by the load generator's share: compare deliveries/s per "
        "core as well as deliveries/s, and read the load generator's CPU.",
        "RSS includes whatever each runtime's allocator or garbage collector keeps (Rust with "
        "glibc malloc, Go, V8, Redis's jemalloc): it is what the machine pays, the same measure "
        "as Firetower's own per-connection budget.",
        "One server process per system, as packaged: nats-server (Go) and the Firetower gateway "
        "(tokio) are multi-threaded; Redis and the Node.js server serve from one thread.",
        "etcd is driven over gRPC (the etcd-client crate, etcd's own KV API); Firetower's writes "
        "go over its own QUIC link. Both wait for a quorum with fsync. (Runs before issue 10 "
        "drove etcd through its JSON gateway, a translation hop that costs etcd CPU; those "
        "ratios are withdrawn.)",
        "Failover of Firetower is measured with subscription commits (the control plane). "
        "Publishes use the same group leaders; `firetower chaos run leader-kill-loop` measures them.",
    ]:
        L.append(f"- {note}")
    L.append("")
    L.append("## Machine")
    L.append("")
    L.append("| | |")
    L.append("| --- | --- |")
    L.append(f"| CPU | {m.get('nproc', '?')} × {m.get('cpu', '?')} |")
    L.append(f"| memory | {m.get('mem_mib', '?')} MiB |")
    L.append(f"| kernel | {m.get('kernel', '?')} |")
    L.append(f"| file descriptors | `ulimit -Hn` = {m.get('nofile_hard', '?')} per process |")
    L.append(
        f"| load average (1, 5, 15 min) | {m.get('load_start', '?')} at the start, {m.get('load_end', '?')} at the end |"
    )
    dirty = m.get("uncommitted_files", "0")
    L.append(
        f"| Firetower | commit {m.get('commit', '?')}"
        + (f" ({dirty} uncommitted files in the tree)" if dirty not in ("0", "") else "")
        + ", release build |"
    )
    v = m.get("versions", {})
    L.append(f"| peers (Debian bookworm packages) | nats-server {v.get('nats', '?')}, redis-server {v.get('redis', '?')}, etcd {v.get('etcd', '?')}, {v.get('node-ws', '?')} |")
    L.append(f"| run | {m.get('stamp', '?')}, label `{label}` |")
    L.append("")
    L.append(
        "Every process on 127.0.0.0/8 loopback; the load generator on the same cores as the servers. "
        "Every server is one process as packaged, with its defaults except: nats-server with a "
        "WebSocket listener (`no_tls`, no compression); redis-server with `--save '' --appendonly no` "
        "and `maxclients` raised to the descriptor limit; etcd 3 members with fsync (defaults); "
        "Node.js `ws` without permessage-deflate."
    )
    L.append("")
    L.append("## Settings of this run")
    L.append("")
    L.append("```")
    for k in sorted(s):
        L.append(f"{k.upper()}={s[k]}")
    L.append("```")
    L.append("")
    L.append("## Reproduce")
    L.append("")
    L.append("```sh")
    L.append("cargo build --release --bin firetower")
    L.append("scripts/bench/compare.sh            # installs the peers (apt) if missing; RUNS=3 by default")
    L.append("SMOKE=1 scripts/bench/compare.sh    # small and quick: proves every path, measures nothing")
    L.append("```")
    L.append("")
    L.append(
        "What it runs, per system (`scripts/bench/peers/lib.sh` starts and stops the servers; "
        "`scripts/bench/peers/start.sh` / `stop.sh` do the same by hand):"
    )
    L.append("")
    L.append("```sh")
    L.append("firetower bench fanout --system firetower|nats|redis|node-ws --url URL --subscribers N --payload 100 \\")
    L.append("    --duration 10 --warmup 2 --rate max --source-ips 127.0.0.2-127.0.0.9 --server-pid PIDS --json")
    L.append("firetower bench topics --system SYSTEM --url URL --topics 18000 --publishers 16 --payload 100 \\")
    L.append("    --duration 10 --warmup 2 --source-ips 127.0.0.2-127.0.0.9 --server-pid PIDS --json")
    L.append("firetower bench idle --system SYSTEM --url URL --connections 19000 --source-ips 127.0.0.2-127.0.0.9 \\")
    L.append("    --server-pid PID --hold 10 --json")
    L.append("firetower bench commits --managers 127.0.0.1:7100,127.0.0.1:7102,127.0.0.1:7104 --writers 1,16,256 --duration 10 --json")
    L.append("firetower bench etcd-puts --endpoints http://127.0.0.1:7331,http://127.0.0.1:7332,http://127.0.0.1:7333 \\")
    L.append("    --writers 1,16,256 --duration 10 --json")
    L.append("# URLs: firetower ws://127.0.0.1:7200/ws, nats ws://127.0.0.1:7301/, redis redis://127.0.0.1:7310,")
    L.append("#       node-ws ws://127.0.0.1:7320/ws (scripts/bench/peers/ws-broadcast.js)")
    L.append("```")
    L.append("")
    with open(report, "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    main()
