//! The WebSocket load generator behind `firetower bench fanout|latency|idle`: drives a
//! running gateway the way clients do and measures what the design budgets (deliveries per
//! second, publish→deliver latency, resident memory per idle connection).
//!
//! ```text
//!   bench fanout   one topic, N subscribers, one publisher (pace: max or a deliveries/s rate)
//!   bench latency  the same at a steady deliveries/s rate, reporting percentiles
//!   bench topics   many topics, one subscriber connection each, a closed loop per topic
//!   bench idle     N idle connections over several gateways, from worker processes
//!                  (`bench idle --worker`, each under `ulimit -n`); RSS delta per connection
//! ```
//!
//! The same scenarios drive the systems users would otherwise run (`--system nats|redis|node-ws`,
//! see `peer` and scripts/bench/compare.sh), and `bench etcd-puts` measures etcd's puts next to
//! `bench commits` (module `etcd`).
//!
//! Modules: `client` (a lean WebSocket client using the gateway's pure codec), `peer` (the
//! per-system adapters: subscribe, publish, recognize a delivery), `etcd` (the puts benchmark
//! over gRPC with the etcd-client crate), `scenarios` (the runs), `topics` (the many-topics
//! run), `stats` (histograms, source-address and writer-count parsers, the gap tracker),
//! `procstat` (CPU and RSS from `/proc`). Results are measurements printed as a table or one JSON object (`--json`); no
//! test asserts on timing. Only literal IP addresses are used; source addresses must be
//! loopback.

mod client;
mod etcd;
mod peer;
mod procstat;
mod scenarios;
mod stats;
mod topics;

use std::time::Duration;

use anyhow::bail;

pub(crate) use etcd::{etcd_puts, EtcdPutsArgs};
use peer::System;
use scenarios::{FanoutPlan, FanoutReport, IdlePlan, IdleReport, Pace, WorkerArgs, WorkerPlan};
pub(crate) use stats::{parse_writers, GapTracker};

/// Resident set size of process `pid`, KiB.
pub(crate) fn proc_rss_kib(pid: u32) -> anyhow::Result<u64> {
    Ok(procstat::sample(pid)?.rss_kib)
}

/// Options shared by `fanout` and `latency`.
#[derive(clap::Args, Debug)]
pub(crate) struct FanoutCommon {
    /// The system driven: a Firetower gateway, or a peer (nats-server's WebSocket listener,
    /// redis-server over TCP, the Node.js `ws` broadcast server of scripts/bench/peers).
    #[arg(long, value_enum, default_value_t = System::Firetower)]
    system: System,
    /// Gateway WebSocket URL (literal IP); `redis://IP:PORT` for `--system redis`.
    #[arg(long, default_value = "ws://127.0.0.1:9090/ws")]
    url: String,
    /// Subscriber connections, all on one topic.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// Bytes of each published `data` JSON value (holds the send timestamp).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of publishing before the measurement starts.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Loopback source addresses for the subscribers, e.g. 127.0.0.2-127.0.0.9 (each
    /// address has its own ~28k ephemeral ports).
    #[arg(long)]
    source_ips: Option<String>,
    /// Server process ids to report CPU and RSS of (comma separated or repeated).
    #[arg(long)]
    server_pid: Vec<String>,
    /// Topic (default: a fresh random one per run).
    #[arg(long)]
    topic: Option<String>,
    /// Handshakes in flight while connecting the subscribers.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// CA certificate (PEM) that `wss://` URLs are checked against (a gateway with
    /// `[client_tls]`; its certificate must name the URL's IP).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// `firetower bench fanout`.
#[derive(clap::Args, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    common: FanoutCommon,
    /// `max` (as fast as deliveries come back) or a target in deliveries per second.
    #[arg(long, default_value = "max")]
    rate: String,
    /// With `--rate max`: publishes in flight end to end (not yet delivered everywhere).
    #[arg(long, default_value_t = 16)]
    window: usize,
}

/// `firetower bench latency`.
#[derive(clap::Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    common: FanoutCommon,
    /// Deliveries per second across all subscribers (publishes/s = rate / subscribers).
    #[arg(long, default_value_t = 50_000.0)]
    rate: f64,
}

/// `firetower bench topics`.
#[derive(clap::Args, Debug)]
pub struct TopicsArgs {
    /// The system driven (see `bench fanout --help`).
    #[arg(long, value_enum, default_value_t = System::Firetower)]
    system: System,
    /// Server URLs (comma separated or repeated); connections are spread over them.
    /// `redis://IP:PORT` for `--system redis`.
    #[arg(long, default_value = "ws://127.0.0.1:9090/ws")]
    url: Vec<String>,
    /// Topics, each with one subscriber connection of its own.
    #[arg(long, default_value_t = 1_000)]
    topics: usize,
    /// Publisher connections; each publishes to its share of the topics.
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// Bytes of each published value (holds the send timestamp).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of publishing before the measurement starts.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Loopback source addresses for the subscribers, e.g. 127.0.0.2-127.0.0.9.
    #[arg(long)]
    source_ips: Option<String>,
    /// Server process ids to report CPU and RSS of (comma separated or repeated).
    #[arg(long)]
    server_pid: Vec<String>,
    /// Topic name prefix (default: a fresh random one per run); topic g is PREFIX.g.
    #[arg(long)]
    prefix: Option<String>,
    /// Handshakes in flight while connecting the subscribers.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// CA certificate (PEM) that `wss://` URLs are checked against (a gateway with
    /// `[client_tls]`; its certificate must name the URL's IP).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// `firetower bench idle`.
#[derive(clap::Args, Debug)]
pub struct IdleArgs {
    /// The system driven (see `bench fanout --help`).
    #[arg(long, value_enum, default_value_t = System::Firetower)]
    system: System,
    /// Gateway WebSocket URLs (comma separated or repeated); connections are spread over them.
    /// `redis://IP:PORT` for `--system redis`.
    #[arg(long, default_value = "ws://127.0.0.1:9090/ws")]
    url: Vec<String>,
    /// Connections in total.
    #[arg(long, default_value_t = 1_000)]
    connections: usize,
    /// Loopback source addresses, e.g. 127.0.0.2-127.0.0.9.
    #[arg(long)]
    source_ips: Option<String>,
    /// Gateway process ids, in the order of the URLs for per-gateway numbers.
    #[arg(long)]
    server_pid: Vec<String>,
    /// Seconds to hold the connections once all are open.
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// Subscribe every connection to one topic (`--topic`, default `bench.idle`).
    #[arg(long)]
    subscribe: bool,
    /// The topic for `--subscribe`.
    #[arg(long, default_value = "bench.idle")]
    topic: String,
    /// Connections per worker process (default: as many as `ulimit -n` allows).
    #[arg(long, default_value_t = 0)]
    per_worker: usize,
    /// Handshakes in flight per worker.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// CA certificate (PEM) that `wss://` URLs are checked against (a gateway with
    /// `[client_tls]`; its certificate must name the URL's IP).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Internal: run as a worker of a coordinating `bench idle`.
    #[arg(long, hide = true)]
    worker: bool,
    /// Internal (worker): global number of the first connection.
    #[arg(long, hide = true, default_value_t = 0)]
    offset: usize,
    /// Internal (worker): exit after this many seconds even if not told to.
    #[arg(long, hide = true, default_value_t = 3_600)]
    max_lifetime: u64,
}

/// `firetower bench fanout`.
pub(crate) async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    let pace = if args.rate.trim().eq_ignore_ascii_case("max") {
        if args.window == 0 {
            bail!("--window must be at least 1");
        }
        Pace::Max {
            window: args.window,
        }
    } else {
        Pace::Rate {
            deliveries_per_sec: parse_rate(&args.rate)?,
        }
    };
    run_fanout("fanout", args.common, pace).await
}

/// `firetower bench latency`.
pub(crate) async fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    let rate = parse_rate(&args.rate.to_string())?;
    run_fanout(
        "latency",
        args.common,
        Pace::Rate {
            deliveries_per_sec: rate,
        },
    )
    .await
}

/// `firetower bench idle` (and its hidden `--worker` mode).
pub(crate) async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    client::use_ca_file(args.ca.as_deref())?;
    let urls = args.system.parse_urls(&args.url)?;
    if args.subscribe && args.system != System::Firetower {
        peer::check_topic(&args.topic)?;
    }
    let source_ips = match &args.source_ips {
        Some(s) => stats::parse_source_ips(s)?,
        None => Vec::new(),
    };
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let topic = args.subscribe.then(|| args.topic.clone());
    if args.worker {
        return scenarios::idle_worker(WorkerPlan {
            system: args.system,
            urls,
            connections: args.connections,
            offset: args.offset,
            source_ips,
            topic,
            connect_concurrency: args.connect_concurrency,
            max_lifetime: Duration::from_secs(args.max_lifetime),
        })
        .await;
    }
    // Parsed above only to refuse a bad list before starting workers; they parse it again.
    drop(source_ips);
    let worker_args = WorkerArgs {
        urls: args.url.join(","),
        source_ips: args.source_ips.clone(),
        ca: args.ca.clone(),
    };
    let report = scenarios::idle(
        IdlePlan {
            system: args.system,
            urls,
            connections: args.connections,
            server_pids: procstat::parse_pids(&args.server_pid)?,
            hold: Duration::from_secs(args.hold),
            topic,
            per_worker: args.per_worker,
            connect_concurrency: args.connect_concurrency,
        },
        worker_args,
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_idle(&report);
    }
    Ok(())
}

/// `firetower bench topics`.
pub(crate) async fn topics(args: TopicsArgs) -> anyhow::Result<()> {
    client::use_ca_file(args.ca.as_deref())?;
    if args.topics == 0 || args.publishers == 0 {
        bail!("--topics and --publishers must be at least 1");
    }
    if args.duration == 0 {
        bail!("--duration must be at least 1 second");
    }
    let prefix = args
        .prefix
        .unwrap_or_else(|| format!("bench.topics.{:08x}", rand::random::<u32>()));
    peer::check_topic(&format!("{prefix}.0"))?;
    let plan = topics::TopicsPlan {
        system: args.system,
        urls: args.system.parse_urls(&args.url)?,
        topics: args.topics,
        publishers: args.publishers,
        payload: args.payload,
        warmup: Duration::from_secs(args.warmup),
        duration: Duration::from_secs(args.duration),
        source_ips: match &args.source_ips {
            Some(s) => stats::parse_source_ips(s)?,
            None => Vec::new(),
        },
        server_pids: procstat::parse_pids(&args.server_pid)?,
        connect_concurrency: args.connect_concurrency,
        prefix,
    };
    let r = topics::topics(plan).await?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "topics {} | {} topics ({} failed), 1 subscriber each | {} publishers | {} B payload",
        r.system.name(),
        r.topics,
        r.connect_errors,
        r.publishers,
        r.payload_bytes
    );
    println!(
        "{:>14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "deliveries/s", "p50 ms", "p99 ms", "max ms", "missing", "stalled", "closed"
    );
    println!(
        "{:>14.0} {:>9.2} {:>9.2} {:>9.2} {:>9} {:>9} {:>8}",
        r.deliveries_per_sec,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.max_ms,
        r.missing,
        r.stalled_topics,
        r.closed_by_server
    );
    for s in &r.servers {
        println!(
            "server pid {:>7}: cpu {:>6.1}%  rss {} KiB",
            s.pid, s.cpu_percent, s.rss_end_kib
        );
    }
    if let Some(e) = &r.first_connect_error {
        println!("first connect error: {e}");
    }
    Ok(())
}

fn parse_rate(text: &str) -> anyhow::Result<f64> {
    match text.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => bail!("--rate {text:?}: expected `max` or deliveries per second above 0"),
    }
}

async fn run_fanout(scenario: &'static str, args: FanoutCommon, pace: Pace) -> anyhow::Result<()> {
    client::use_ca_file(args.ca.as_deref())?;
    if args.subscribers == 0 {
        bail!("--subscribers must be at least 1");
    }
    if args.duration == 0 {
        bail!("--duration must be at least 1 second");
    }
    let topic = args
        .topic
        .unwrap_or_else(|| format!("bench.{scenario}.{:08x}", rand::random::<u32>()));
    if args.system != System::Firetower {
        // Used verbatim in NATS subjects, Redis channels and JSON text.
        peer::check_topic(&topic)?;
    }
    let plan = FanoutPlan {
        scenario,
        system: args.system,
        url: args.system.parse_url(&args.url)?,
        subscribers: args.subscribers,
        payload: args.payload,
        warmup: Duration::from_secs(args.warmup),
        duration: Duration::from_secs(args.duration),
        pace,
        source_ips: match &args.source_ips {
            Some(s) => stats::parse_source_ips(s)?,
            None => Vec::new(),
        },
        server_pids: procstat::parse_pids(&args.server_pid)?,
        connect_concurrency: args.connect_concurrency,
        topic,
    };
    let report = scenarios::fanout(plan).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_fanout(&report);
    }
    Ok(())
}

fn print_fanout(r: &FanoutReport) {
    let pace = match (r.target_deliveries_per_sec, r.window) {
        (Some(t), _) => format!("rate {t:.0} deliveries/s"),
        (None, Some(w)) => format!("max (window {w})"),
        (None, None) => r.pace.to_string(),
    };
    println!(
        "{} {} {} | {} subscribers ({} failed) | {} B payload | {pace}",
        r.scenario,
        r.system.name(),
        r.url,
        r.subscribers,
        r.connect_errors,
        r.payload_bytes
    );
    println!(
        "{:>14} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "deliveries/s", "publishes/s", "p50 ms", "p99 ms", "p999 ms", "max ms", "missing", "closed"
    );
    println!(
        "{:>14.0} {:>12.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9} {:>8}",
        r.deliveries_per_sec,
        r.publishes_per_sec,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.p999_ms,
        r.latency.max_ms,
        r.missing,
        r.closed_by_server
    );
    for s in &r.servers {
        println!(
            "server pid {:>7}: cpu {:>6.1}%  rss {} KiB",
            s.pid, s.cpu_percent, s.rss_end_kib
        );
    }
    if let Some(s) = &r.loadgen {
        println!(
            "load generator:    cpu {:>6.1}%  rss {} KiB",
            s.cpu_percent, s.rss_end_kib
        );
    }
    if let Some(e) = &r.first_connect_error {
        println!("first connect error: {e}");
    }
}

fn print_idle(r: &IdleReport) {
    println!(
        "idle {} | {} connections open ({} failed, {} closed by server) | {} workers | held {:.0} s",
        r.system.name(),
        r.connections,
        r.failed,
        r.closed_by_server,
        r.workers,
        r.hold_seconds
    );
    println!(
        "{:>8} {:>10} {:>12} {:>12} {:>10}",
        "pid", "conns", "rss before", "rss after", "B/conn"
    );
    for s in &r.servers {
        println!(
            "{:>8} {:>10} {:>10}Ki {:>10}Ki {:>10}",
            s.pid,
            s.connections.map_or("-".into(), |c| c.to_string()),
            s.rss_before_kib,
            s.rss_after_kib,
            s.bytes_per_connection
                .map_or("-".into(), |b| format!("{b:.0}"))
        );
    }
    println!(
        "total rss delta {} KiB, {:.0} bytes per connection",
        r.rss_delta_kib, r.bytes_per_connection
    );
    if let Some(e) = &r.first_error {
        println!("first error: {e}");
    }
}
