//! `firetower bench link-flood`: hostile load on the managers over the link, with their
//! resident memory sampled throughout. Two phases, each optional:
//!
//! - **topics**: one publish to each of `--topics` distinct topics (`--subscribed`: the
//!   publishing gateway subscribes to each first, so every publish is stamped and delivered,
//!   which is what fills a stamp map);
//! - **stalled**: `--stalled` gateways open their sessions, subscribe each to a topic of its
//!   own, and stop reading; the publishing gateway publishes `--stall-payload` bytes to those
//!   topics for `--stall-secs`, so every stalled session's queue fills.
//!
//! The numbers go to docs/security.md (the managers' memory bounds); they are measurements,
//! never test assertions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use firetower_link::{LinkClient, LinkError, LinkOptions, Role, Security};
use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::commits::parse_addr_list;
use crate::loadgen::proc_rss_kib;

/// How often the managers' resident memory is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Distinct error texts kept per phase (the rest are counted under "other").
const MAX_ERROR_KINDS: usize = 16;

/// `firetower bench link-flood`.
#[derive(clap::Args, Debug)]
pub struct LinkFloodArgs {
    /// QUIC addresses of the managers, comma separated.
    #[arg(long)]
    managers: String,
    /// Distinct topics to publish to, once each (0: no topics phase).
    #[arg(long, default_value_t = 1_000_000)]
    topics: u64,
    /// Subscribe the publishing gateway to each topic before publishing to it.
    #[arg(long)]
    subscribed: bool,
    /// With `--subscribed`: subscribe only, publish nothing (what the subscriptions alone cost).
    #[arg(long)]
    subscribe_only: bool,
    /// Publishes (and subscriptions) in flight at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Gateway sessions that stop reading (0: no stalled phase). Their gateway ids are
    /// `--stalled-first` and up; each needs its certificate in the TLS directory.
    #[arg(long, default_value_t = 0)]
    stalled: u64,
    /// The first stalled gateway id.
    #[arg(long, default_value_t = 100)]
    stalled_first: u64,
    /// Seconds of publishing to the stalled sessions' topics.
    #[arg(long, default_value_t = 30)]
    stall_secs: u64,
    /// Bytes of each publish to a stalled session's topic.
    #[arg(long, default_value_t = 512 * 1024)]
    stall_payload: usize,
    /// The publishing gateway id.
    #[arg(long, default_value_t = 1)]
    gateway: u64,
    /// Manager process ids whose resident memory is sampled (comma separated).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// TLS directory with ca.pem and the gateways' certificates (made by `firetower certs`).
    #[arg(long, env = "FIRETOWER_TLS_DIR", value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Against a cluster started with --insecure.
    #[arg(long)]
    insecure: bool,
    /// Print one JSON object per phase instead of text.
    #[arg(long)]
    json: bool,
}

/// What one phase did and what the managers' memory did meanwhile.
#[derive(Debug, Serialize)]
struct PhaseReport {
    phase: &'static str,
    requests: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    seconds: f64,
    per_sec: f64,
    rss: Vec<RssReport>,
}

/// Resident memory of one manager over a phase, KiB.
#[derive(Debug, Clone, Serialize)]
struct RssReport {
    pid: u32,
    start_kib: u64,
    peak_kib: u64,
    end_kib: u64,
}

/// Run `bench link-flood`.
pub(crate) async fn link_flood(args: LinkFloodArgs) -> anyhow::Result<()> {
    let managers = parse_addr_list(&args.managers)?;
    let security = |id: u64| {
        Security::from_flags(args.tls_dir.as_deref(), args.insecure, &Role::Gateway(id))
            .with_context(|| format!("no TLS material for gateway {id}"))
    };
    let connect = |id: u64| {
        let managers = managers.clone();
        let security = security(id);
        async move {
            let options = LinkOptions {
                security: security?,
                ..LinkOptions::default()
            };
            LinkClient::connect(id, managers, options)
                .await
                .with_context(|| format!("gateway {id} cannot reach the cluster"))
        }
    };
    let publisher = connect(args.gateway).await?;
    let sessions = publisher
        .hold_sessions(Duration::from_secs(30), Duration::from_secs(15))
        .await
        .context("cannot open the publishing gateway's session")?;
    let run: u32 = rand::random();

    if args.topics > 0 {
        let sampler = Sampler::start(&args.server_pid)?;
        let started = Instant::now();
        let counts = Counts::default();
        let epoch = sessions.epoch();
        stream::iter(0..args.topics)
            .for_each_concurrent(args.concurrency.max(1), |i| {
                let publisher = &publisher;
                let counts = &counts;
                async move {
                    let topic = format!("flood.{run:08x}.{i}");
                    if args.subscribed {
                        if let Err(e) = publisher.subscribe_in_session(&topic, epoch).await {
                            counts.error("subscribe", &e);
                            return;
                        }
                    }
                    if args.subscribe_only {
                        counts.ok();
                        return;
                    }
                    match publisher.publish(&topic, b"{}".to_vec(), true).await {
                        Ok(_) => counts.ok(),
                        Err(e) => counts.error("publish", &e),
                    }
                }
            })
            .await;
        report(
            args.json,
            counts.report("topics", started, sampler.finish().await),
        )?;
    }

    if args.stalled > 0 {
        let ids = args.stalled_first..args.stalled_first + args.stalled;
        let mut stalled = Vec::new();
        for id in ids.clone() {
            let link = connect(id).await?;
            let held = link
                .hold_stalled_sessions(Duration::from_secs(10), Duration::from_secs(15))
                .await
                .with_context(|| format!("gateway {id} cannot open its session"))?;
            let topic = format!("stall.{run:08x}.{id}");
            link.subscribe_in_session(&topic, held.epoch())
                .await
                .with_context(|| format!("gateway {id} cannot subscribe to {topic}"))?;
            stalled.push((link, held, topic));
        }
        let topics: Vec<String> = stalled.iter().map(|(_, _, t)| t.clone()).collect();
        let payload = stall_payload(args.stall_payload);
        let sampler = Sampler::start(&args.server_pid)?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(args.stall_secs);
        let counts = Counts::default();
        stream::iter(0..args.concurrency.max(1))
            .for_each_concurrent(None, |worker| {
                let publisher = &publisher;
                let counts = &counts;
                let topics = &topics;
                let payload = &payload;
                async move {
                    let mut n = worker;
                    while Instant::now() < deadline {
                        let topic = &topics[n % topics.len()];
                        n += args.concurrency.max(1);
                        match publisher.publish(topic, payload.clone(), true).await {
                            Ok(_) => counts.ok(),
                            Err(e) => counts.error("publish", &e),
                        }
                    }
                }
            })
            .await;
        report(
            args.json,
            counts.report("stalled", started, sampler.finish().await),
        )?;
        drop(stalled);
    }
    drop(sessions);
    Ok(())
}

/// A JSON string of `len` bytes (at least 2).
fn stall_payload(len: usize) -> Vec<u8> {
    let mut payload = vec![b'x'; len.max(2)];
    payload[0] = b'"';
    let last = payload.len() - 1;
    payload[last] = b'"';
    payload
}

fn report(json: bool, r: PhaseReport) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "{}: {} requests, {} ok, {:.0}/s over {:.1} s; errors {:?}",
        r.phase, r.requests, r.ok, r.per_sec, r.seconds, r.errors
    );
    for m in &r.rss {
        println!(
            "  pid {}: RSS {} MiB at the start, {} MiB at the peak, {} MiB at the end",
            m.pid,
            m.start_kib / 1024,
            m.peak_kib / 1024,
            m.end_kib / 1024
        );
    }
    Ok(())
}

/// Outcomes of a phase's requests.
#[derive(Default)]
struct Counts {
    inner: Mutex<(u64, u64, BTreeMap<String, u64>)>,
}

impl Counts {
    fn ok(&self) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.0 += 1;
        c.1 += 1;
    }

    fn error(&self, what: &str, e: &LinkError) {
        let kind = match e {
            LinkError::Refused { code, .. } => format!("{what}: {code}"),
            LinkError::Timeout(..) => format!("{what}: no answer in time"),
            other => format!("{what}: {other}"),
        };
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.0 += 1;
        let kind = if c.2.len() < MAX_ERROR_KINDS || c.2.contains_key(&kind) {
            kind
        } else {
            format!("{what}: other")
        };
        *c.2.entry(kind).or_default() += 1;
    }

    fn report(&self, phase: &'static str, started: Instant, rss: Vec<RssReport>) -> PhaseReport {
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let seconds = started.elapsed().as_secs_f64();
        PhaseReport {
            phase,
            requests: c.0,
            ok: c.1,
            errors: c.2.clone(),
            seconds,
            per_sec: c.0 as f64 / seconds.max(f64::EPSILON),
            rss,
        }
    }
}

/// Samples the resident memory of processes until finished.
struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<RssReport>>,
}

impl Sampler {
    fn start(pids: &[u32]) -> anyhow::Result<Sampler> {
        let mut reports: Vec<RssReport> = pids
            .iter()
            .map(|&pid| {
                let kib = proc_rss_kib(pid)?;
                Ok(RssReport {
                    pid,
                    start_kib: kib,
                    peak_kib: kib,
                    end_kib: kib,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    _ = &mut stopped => true,
                };
                for r in &mut reports {
                    // A process that exited keeps its last reading.
                    if let Ok(kib) = proc_rss_kib(r.pid) {
                        r.peak_kib = r.peak_kib.max(kib);
                        r.end_kib = kib;
                    }
                }
                if last {
                    return reports;
                }
            }
        });
        Ok(Sampler { stop, task })
    }

    async fn finish(self) -> Vec<RssReport> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}
