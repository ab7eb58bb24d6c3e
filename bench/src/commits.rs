//! `firetower bench commits`: subscription commits through the manager link, the way a gateway
//! makes them (QUIC, the leader of each topic's group, fsync on). Each writer waits for its
//! commit before the next, like `bench etcd-puts` on the etcd side. Numbers from here go to
//! docs/benchmarks.md; they are measurements, never test assertions.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use firetower_link::{LinkClient, LinkOptions, Role, Security};
use hdrhistogram::Histogram;

use crate::loadgen::{parse_writers, GapTracker};

/// `firetower bench commits`.
#[derive(clap::Args, Debug)]
pub struct CommitsArgs {
    /// QUIC addresses of the managers, comma separated.
    #[arg(long)]
    managers: String,
    /// Concurrent writer counts to measure, comma separated.
    #[arg(long, default_value = "1,16,256")]
    writers: String,
    /// Seconds of measurement per writer count.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Gateway id the writes are made for.
    #[arg(long, default_value_t = 1)]
    gateway: u64,
    /// Append every acknowledged topic to this file (for `link verify`).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Print one JSON object per writer count instead of a table.
    #[arg(long)]
    json: bool,
    /// TLS directory with ca.pem and gateway-<id>.pem for the `--gateway` the writes are made
    /// for (made by `firetower certs`).
    #[arg(long, env = "FIRETOWER_TLS_DIR", value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Against a cluster started with --insecure.
    #[arg(long)]
    insecure: bool,
    /// Lease of the gateway session the writes are made in: managers keep the subscriptions
    /// this long after the bench ends (for `link verify`).
    #[arg(long, default_value_t = 60_000)]
    lease_ms: u64,
}

/// Run `bench commits`.
pub(crate) async fn commits(args: CommitsArgs) -> anyhow::Result<()> {
    let CommitsArgs {
        managers,
        writers,
        duration,
        gateway,
        record,
        json,
        tls_dir,
        insecure,
        lease_ms,
    } = args;
    let managers = parse_addr_list(&managers)?;
    let writer_counts = parse_writers(&writers)?;
    let security = Security::from_flags(tls_dir.as_deref(), insecure, &Role::Gateway(gateway))?;
    let options = LinkOptions {
        security,
        ..LinkOptions::default()
    };
    let link = LinkClient::connect(gateway, managers, options)
        .await
        .context("cannot reach the cluster")?;
    // Managers commit subscriptions only for a gateway with a live session.
    let _sessions = link
        .hold_sessions(Duration::from_millis(lease_ms), Duration::from_secs(15))
        .await
        .context("cannot open the gateway session")?;
    let recorder = match record {
        Some(path) => Some(Arc::new(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        ))),
        None => None,
    };
    let run_id: u32 = rand::random();
    if !json {
        println!(
            "{:>8} {:>12} {:>10} {:>10} {:>10} {:>8}",
            "writers", "commits/s", "p50 ms", "p99 ms", "max ms", "errors"
        );
    }
    for n in writer_counts {
        let r = commits_round(
            &link,
            n,
            Duration::from_secs(duration),
            run_id,
            recorder.clone(),
        )
        .await?;
        if json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{:>8} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>8}",
                r.writers, r.commits_per_sec, r.p50_ms, r.p99_ms, r.max_ms, r.errors
            );
        }
    }
    Ok(())
}

/// Parse `127.0.0.1:7100,127.0.0.1:7102` (literal addresses, as `cluster` commands take them).
pub(crate) fn parse_addr_list(list: &str) -> anyhow::Result<Vec<SocketAddr>> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("{s:?} is not an address like 127.0.0.1:6666"))
        })
        .collect()
}

#[derive(Debug, serde::Serialize)]
struct RoundResult {
    writers: usize,
    seconds: f64,
    commits: u64,
    commits_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: u64,
    /// Longest time no commit succeeded anywhere, ms (failover: how long writing stopped).
    max_gap_ms: f64,
    /// Longest time one writer went without a commit, ms.
    max_writer_gap_ms: f64,
}

type Recorder = Arc<std::sync::Mutex<std::fs::File>>;

async fn commits_round(
    link: &LinkClient,
    writers: usize,
    duration: Duration,
    run_id: u32,
    recorder: Option<Recorder>,
) -> anyhow::Result<RoundResult> {
    let errors = Arc::new(AtomicU64::new(0));
    let gaps = Arc::new(GapTracker::default());
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let link = link.clone();
        let errors = errors.clone();
        let gaps = gaps.clone();
        let recorder = recorder.clone();
        tasks.push(tokio::spawn(async move {
            // Latencies in microseconds, up to 60 s, 3 significant figures.
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .map_err(|e| anyhow!("histogram: {e}"))?;
            let mut n = 0u64;
            let mut last_us = 0u64;
            while Instant::now() < deadline {
                let topic = format!("bench.{run_id:08x}.{writers}.{w}.{n}");
                n += 1;
                let t0 = Instant::now();
                match link.subscribe(&topic).await {
                    Ok(_) => {
                        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                        gaps.success(start.elapsed().as_micros() as u64, &mut last_us);
                        if let Some(r) = &recorder {
                            let mut f = r.lock().unwrap_or_else(|e| e.into_inner());
                            writeln!(f, "{topic}")?;
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let end_us = duration.as_micros() as u64;
            gaps.writer_done(end_us, last_us.min(end_us));
            anyhow::Ok(hist)
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| anyhow!("histogram: {e}"))?;
    for t in tasks {
        let h = t.await.map_err(|e| anyhow!("writer task: {e}"))??;
        total.add(&h).map_err(|e| anyhow!("histogram: {e}"))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let (max_gap_ms, max_writer_gap_ms) = gaps.finish(duration.as_micros() as u64);
    Ok(RoundResult {
        writers,
        seconds,
        commits: total.len(),
        commits_per_sec: total.len() as f64 / seconds,
        p50_ms: total.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: total.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: total.max() as f64 / 1000.0,
        errors: errors.load(Ordering::Relaxed),
        max_gap_ms,
        max_writer_gap_ms,
    })
}
