//! The reconnect-storm scenario: crash a gateway under many WebSocket clients, and check that
//! they all come back, that publishing through the other gateway stays available, and that
//! every client gets what is published after the storm.
//!
//! ```text
//!   harness (host ns) ── kill -9 g1; start g1 ──▶ g1: every client socket dies with it
//!      │ stdin:  {"cmd":"verify","round":k}
//!      │ stdout: one JSON line per event (up, lost, publish, verified)
//!      ▼
//!   ip netns exec <c1> firetower chaos storm ...   (the worker)
//!      ├─ N clients: client i on gateway (i mod G)+1, topic storm.((i div G) mod T)
//!      │    connect ─ subscribe ─ ack ─ read ... lost ─ 0–200 ms jitter ─ reconnect ─ ...
//!      ├─ probe publisher on the last gateway: one publish every 20 ms, the topics in turn
//!      └─ verifier: on `verify k`, publish {"round":k} to every topic through the last
//!         gateway, then wait until every client has the message of its topic
//! ```
//!
//! The worker runs inside the client host's namespace (it reaches only the run's private
//! addresses); the harness reads its events and turns them into [`StormFault`]s with the pure
//! function [`storm_progress`]. Nothing here trusts the network: frames are parsed with the
//! gateway's own codec, never unwrapped, and every wait has a deadline.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firetower_client::{Flavour, Payload, ServerFrame};
use firetower_link::ReconnectPolicy;
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::{Cluster, ClusterSpec};
use crate::net::HostSpec;
use crate::probe::{median, unavailability, unix_ms, ProbeRecord};
use crate::scenario::{FaultRecord, Scenario, ScenarioOptions, ScenarioReport};
use crate::ChaosError;

/// Clients by default.
pub const DEFAULT_CLIENTS: usize = 2_000;
/// Topics by default.
pub const DEFAULT_TOPICS: usize = 50;
/// Gateway crashes by default.
pub const DEFAULT_FAULTS: usize = 3;
/// At most this many clients: the worker holds a socket per client, and a process here may
/// open 20,000 files (`ulimit -Hn` cannot be raised).
pub const MAX_CLIENTS: usize = 16_000;
/// At most this many topics (the verifier publishes to each after every storm).
pub const MAX_TOPICS: usize = 1_000;
/// Gateways of the scenario: g1 crashes, g2 carries the probe and the verifier.
const GATEWAYS: usize = 2;

/// A client that lost its connection waits up to this long before reconnecting.
const RECONNECT_JITTER_MS: u64 = 200;
/// The first connections are spread over this long (the start is not the storm).
const INITIAL_SPREAD_MS: u64 = 1_000;
/// Failed attempts back off from 100 ms, doubling, to at most this (plus the jitter).
const MAX_BACKOFF_MS: u64 = 1_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The probe's deadline per publish, connecting included (the link probe's is 1 s too).
const PROBE_DEADLINE: Duration = Duration::from_secs(1);
const VERIFY_PUBLISH_DEADLINE: Duration = Duration::from_secs(5);
const VERIFY_PUBLISH_ATTEMPTS: u32 = 3;
/// The verifier publishes for at most this long; topics left over count as failed.
const VERIFY_PUBLISH_BUDGET: Duration = Duration::from_secs(60);
/// After publishing, the verifier waits this long for the messages to reach every client.
const DELIVERY_WAIT: Duration = Duration::from_secs(10);
/// The harness waits this long for the first connections, and for every client to be back.
const INITIAL_LIMIT: Duration = Duration::from_secs(120);
const ALL_BACK_LIMIT: Duration = Duration::from_secs(60);
/// ... and for the worker's answer to `verify` (its own budgets are 70 s).
const VERIFY_LIMIT: Duration = Duration::from_secs(120);
/// Lists in events and reports (missing clients, failed publishes) keep this many entries.
const LIST_LIMIT: usize = 20;
/// Worker and harness clocks both derive from the wall clock; allow this much disagreement.
const CLOCK_SLACK_MS: f64 = 20.0;
/// Events queued for stdout at most (clients wait when the harness reads slowly).
const EVENT_QUEUE: usize = 8_192;

/// The gateway (0-based) of client `client`.
pub fn gateway_of(client: usize, gateways: usize) -> usize {
    client % gateways.max(1)
}

/// The topic (0-based) of client `client`: consecutive clients share a topic across the
/// gateways, so every topic has subscribers on each gateway.
pub fn topic_of(client: usize, gateways: usize, topics: usize) -> usize {
    (client / gateways.max(1)) % topics.max(1)
}

/// The name of topic `t`.
pub fn topic_name(t: usize) -> String {
    format!("storm.{t}")
}

/// What the worker prints, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum StormEvent {
    /// A client is connected and its subscribe is acked.
    Up {
        /// The client.
        client: usize,
        /// Its gateway (1-based, as the host `g1`).
        gateway: usize,
        /// When the ack arrived (ms since t0).
        ms: f64,
        /// When it had noticed the loss of its previous connection (none at the start).
        lost_ms: Option<f64>,
        /// Connection attempts it took (1: the first one worked).
        attempts: u32,
    },
    /// A client's connection ended.
    Lost {
        /// The client.
        client: usize,
        /// Its gateway (1-based).
        gateway: usize,
        /// When (ms since t0).
        ms: f64,
        /// Close code or error, shortened.
        why: String,
    },
    /// One probe publish.
    Publish(ProbeRecord),
    /// The answer to a `verify` command.
    Verified(Verification),
}

/// Commands the harness writes to the worker's stdin, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum StormCommand {
    /// Publish `{"round":round}` to every topic and report who received it.
    Verify {
        /// The round (the fault's number).
        round: u64,
    },
}

/// The post-storm check: one message per topic, and who got the message of their topic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// The round.
    pub round: u64,
    /// When publishing began (ms since t0).
    pub start_ms: f64,
    /// When every topic was published (or given up), ms since t0.
    pub published_ms: f64,
    /// Clients (all of them, on every gateway).
    pub expected: usize,
    /// Clients that received the round's message of their topic.
    pub delivered: usize,
    /// Topics whose publish failed after every attempt.
    pub publish_failed: usize,
    /// The first failed publishes: `topic: error`.
    pub publish_failures: Vec<String>,
    /// The first clients that did not receive it.
    pub missing: Vec<MissingClient>,
}

/// A client that did not receive the post-storm message of its topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MissingClient {
    /// The client.
    pub client: usize,
    /// Its gateway (1-based).
    pub gateway: usize,
    /// Its topic.
    pub topic: String,
    /// Whether it was connected (subscribe acked) when the check ended.
    pub connected: bool,
}

/// Where the clients of a crashed gateway stand after a fault, from the worker's events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StormProgress {
    /// Clients of the crashed gateway.
    pub storm_clients: usize,
    /// Of them, connected and subscribed again (their latest event since the fault is `up`).
    pub back: usize,
    /// Of them, with no event at all since the fault (the crash did not reach them yet).
    pub untouched: usize,
    /// Per reconnection since the fault: from noticing the loss to the subscribe ack, ms.
    pub reconnect_ms: Vec<f64>,
    /// Most connection attempts one reconnection took.
    pub max_attempts: u32,
    /// From the fault until the last of them was back, once all are.
    pub all_back_ms: Option<f64>,
    /// Connections to the other gateways that ended since the fault.
    pub collateral_lost: usize,
}

/// Read the events since `fault_ms` for the clients of gateway `crashed` (1-based).
pub fn storm_progress(
    events: &[StormEvent],
    clients: usize,
    gateways: usize,
    crashed: usize,
    fault_ms: f64,
) -> StormProgress {
    let is_storm = |c: usize| c < clients && gateway_of(c, gateways) + 1 == crashed;
    // Per client of the crashed gateway: its latest event since the fault (up?, when).
    let mut latest: Vec<Option<(bool, f64)>> = vec![None; clients];
    let mut p = StormProgress {
        storm_clients: (0..clients).filter(|&c| is_storm(c)).count(),
        ..StormProgress::default()
    };
    let since = fault_ms - CLOCK_SLACK_MS;
    for ev in events {
        match *ev {
            StormEvent::Up {
                client,
                ms,
                lost_ms,
                attempts,
                ..
            } if ms >= since && is_storm(client) => {
                latest[client] = Some((true, ms));
                if let Some(lost) = lost_ms.filter(|&l| l >= since) {
                    p.reconnect_ms.push(ms - lost);
                    p.max_attempts = p.max_attempts.max(attempts);
                }
            }
            StormEvent::Lost { client, ms, .. } if ms >= since => {
                if is_storm(client) {
                    latest[client] = Some((false, ms));
                } else if client < clients {
                    p.collateral_lost += 1;
                }
            }
            _ => {}
        }
    }
    let mut last_up = f64::MIN;
    for c in (0..clients).filter(|&c| is_storm(c)) {
        match latest[c] {
            Some((true, ms)) => {
                p.back += 1;
                last_up = last_up.max(ms);
            }
            Some((false, _)) => {}
            None => p.untouched += 1,
        }
    }
    if p.storm_clients > 0 && p.back == p.storm_clients {
        p.all_back_ms = Some((last_up - fault_ms).max(0.0));
    }
    p
}

/// The `p`-th percentile (nearest rank) of `values`; 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// One gateway crash and what the clients saw.
#[derive(Debug, Clone, Serialize)]
pub struct StormFault {
    /// The crashed gateway's host.
    pub node: String,
    /// When it was killed (ms since t0).
    pub fault_ms: f64,
    /// Its clients.
    pub storm_clients: usize,
    /// Of them, connected and subscribed again when the harness stopped waiting.
    pub reconnected: usize,
    /// Reconnection time (loss noticed → subscribe acked, jitter and retries included), ms.
    pub reconnect_p50_ms: f64,
    /// 99th percentile of the same.
    pub reconnect_p99_ms: f64,
    /// Longest of the same.
    pub reconnect_max_ms: f64,
    /// From the kill until every one of them was back, ms (none: not all came back).
    pub all_back_ms: Option<f64>,
    /// Most connection attempts one client needed.
    pub max_attempts: u32,
    /// Connections to other gateways that ended meanwhile (should be 0).
    pub collateral_lost: usize,
    /// Clients that received the post-storm message of their topic.
    pub delivered: usize,
    /// Clients checked (all of them).
    pub expected: usize,
    /// Topics whose post-storm publish failed.
    pub publish_failed: usize,
    /// The first failed publishes.
    pub publish_failures: Vec<String>,
    /// The first clients without their message.
    pub missing: Vec<MissingClient>,
}

/// The reconnect-storm part of a [`ScenarioReport`].
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    /// WebSocket clients.
    pub clients: usize,
    /// Topics.
    pub topics: usize,
    /// Gateways (the first crashes; the probe and the check publish through the last).
    pub gateways: usize,
    /// The workers' random seed (jitter).
    pub seed: u64,
    /// Per fault.
    pub faults: Vec<StormFault>,
    /// Medians over the faults, ms.
    pub median_reconnect_p50_ms: f64,
    /// Median of the per-fault 99th percentiles.
    pub median_reconnect_p99_ms: f64,
    /// Median of the per-fault maxima.
    pub median_reconnect_max_ms: f64,
    /// Median time until all were back (faults where all came back).
    pub median_all_back_ms: f64,
    /// Post-storm messages received, over all faults.
    pub delivered: usize,
    /// Post-storm messages expected, over all faults.
    pub expected: usize,
    /// Every check that failed; empty when the scenario passed.
    pub errors: Vec<String>,
}

impl StormReport {
    /// The table `firetower chaos run reconnect-storm` prints.
    pub fn table(&self, report: &ScenarioReport) -> String {
        let mut s = format!(
            "scenario {:?}: {} faults, {} clients on {} gateways, {} topics, {} probe operations\n",
            report.scenario,
            self.faults.len(),
            self.clients,
            self.gateways,
            self.topics,
            report.probe_ops
        );
        s.push_str(
            "fault  node     back  reconnect_p50_ms  p99_ms  max_ms  all_back_ms  publish_ms  delivered/expected\n",
        );
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"));
        for (i, f) in self.faults.iter().enumerate() {
            let publ = report.publish.get(i).map_or(0.0, |u| u.unavailable_ms);
            s.push_str(&format!(
                "{:<6} {:<6} {:>6} {:>17.0} {:>7.0} {:>7.0} {:>12} {:>11.0} {:>19}\n",
                i + 1,
                f.node,
                format!("{}/{}", f.reconnected, f.storm_clients),
                f.reconnect_p50_ms,
                f.reconnect_p99_ms,
                f.reconnect_max_ms,
                ms(f.all_back_ms),
                publ,
                format!("{}/{}", f.delivered, f.expected),
            ));
        }
        s.push_str(&format!(
            "median               {:>17.0} {:>7.0} {:>7.0} {:>12.0} {:>11.0} {:>19}\n",
            self.median_reconnect_p50_ms,
            self.median_reconnect_p99_ms,
            self.median_reconnect_max_ms,
            self.median_all_back_ms,
            report.median_publish_ms,
            format!("{}/{}", self.delivered, self.expected),
        ));
        if self.errors.is_empty() {
            s.push_str("errors: none\n");
        } else {
            s.push_str(&format!("errors ({}):\n", self.errors.len()));
            for e in &self.errors {
                s.push_str(&format!("  {e}\n"));
            }
        }
        s
    }
}

// ---------------------------------------------------------------------------------------
// The harness side.
// ---------------------------------------------------------------------------------------

/// Run reconnect-storm on a fresh cluster of 3 managers and 2 gateways; the cluster is
/// removed afterwards (also on error: dropping it tears the hosts down).
pub(crate) fn run(options: &ScenarioOptions) -> Result<ScenarioReport, ChaosError> {
    let clients = options.clients;
    let topics = options.topics;
    if !(GATEWAYS..=MAX_CLIENTS).contains(&clients) {
        return Err(ChaosError::InvalidFault(format!(
            "--clients {clients}: reconnect-storm needs {GATEWAYS} to {MAX_CLIENTS} clients \
             (one socket each; a process here may open 20,000 files)"
        )));
    }
    if !(1..=MAX_TOPICS).contains(&topics) {
        return Err(ChaosError::InvalidFault(format!(
            "--topics {topics}: reconnect-storm needs 1 to {MAX_TOPICS} topics"
        )));
    }
    if options.cycles == 0 {
        return Err(ChaosError::InvalidFault(
            "--faults 0: reconnect-storm needs at least one gateway crash".into(),
        ));
    }
    let mut spec = ClusterSpec::new(options.binary.clone(), options.run_dir.clone());
    spec.tag = "ftc".into();
    spec.hosts = HostSpec {
        managers: 3,
        gateways: GATEWAYS,
        clients: 1,
    };
    spec.start_gateways = true;
    let mut cluster = Cluster::start(spec)?;
    let names = cluster.gateway_names();
    let crashed = names
        .first()
        .cloned()
        .ok_or_else(|| ChaosError::UnknownNode("g1".into()))?;
    let t0 = Instant::now();
    let t0_unix = unix_ms();
    let now_ms = || t0.elapsed().as_secs_f64() * 1e3;
    let seed = t0_unix as u64;
    let mut worker = StormWorker::start(&cluster, clients, topics, t0_unix, seed)?;

    // Warm up: every client subscribed, and the probe has published once.
    let ready = worker.wait_until(INITIAL_LIMIT, |events| {
        connected_clients(events, clients) == clients
            && events
                .iter()
                .any(|e| matches!(e, StormEvent::Publish(r) if r.ok))
    })?;
    if !ready {
        let (up, probe_ok) = worker.with_events(|events| {
            (
                connected_clients(events, clients),
                events
                    .iter()
                    .any(|e| matches!(e, StormEvent::Publish(r) if r.ok)),
            )
        });
        return Err(ChaosError::Timeout {
            after: INITIAL_LIMIT,
            what: format!(
                "{clients} clients to connect and subscribe ({up} did; probe publish ok: \
                 {probe_ok}); see {} and the gateway logs",
                worker.log.display()
            ),
        });
    }
    std::thread::sleep(options.settle);

    let mut faults = Vec::new();
    let mut storm_faults = Vec::new();
    let mut errors = Vec::new();
    for round in 1..=options.cycles as u64 {
        let start = now_ms();
        cluster.kill_gateway(&crashed)?;
        cluster.start_gateway(&crashed)?;
        worker.wait_until(ALL_BACK_LIMIT, |events| {
            storm_progress(events, clients, GATEWAYS, 1, start)
                .all_back_ms
                .is_some()
        })?;
        let progress =
            worker.with_events(|events| storm_progress(events, clients, GATEWAYS, 1, start));
        let fault_name = format!("fault {round} (kill -9 {crashed})");
        if progress.all_back_ms.is_none() {
            errors.push(format!(
                "{fault_name}: {} of {} clients of {crashed} not connected and subscribed \
                 again after {ALL_BACK_LIMIT:?} ({} never saw their connection end)",
                progress.storm_clients - progress.back,
                progress.storm_clients,
                progress.untouched
            ));
        }
        if progress.collateral_lost > 0 {
            errors.push(format!(
                "{fault_name}: {} connections to other gateways ended",
                progress.collateral_lost
            ));
        }
        worker.send(&StormCommand::Verify { round })?;
        let mut verification = None;
        worker.wait_until(VERIFY_LIMIT, |events| {
            verification = events.iter().rev().find_map(|e| match e {
                StormEvent::Verified(v) if v.round == round => Some(v.clone()),
                _ => None,
            });
            verification.is_some()
        })?;
        let v = verification.unwrap_or_else(|| {
            errors.push(format!(
                "{fault_name}: the worker did not report the post-storm check within \
                 {VERIFY_LIMIT:?}"
            ));
            Verification {
                round,
                expected: clients,
                ..Verification::default()
            }
        });
        if v.publish_failed > 0 {
            errors.push(format!(
                "{fault_name}: the post-storm publish failed on {} of {topics} topics: {}",
                v.publish_failed,
                v.publish_failures.join("; ")
            ));
        }
        if v.delivered < v.expected {
            let first: Vec<String> = v
                .missing
                .iter()
                .map(|m| {
                    format!(
                        "client {} on g{} ({}{})",
                        m.client,
                        m.gateway,
                        m.topic,
                        if m.connected { "" } else { ", not connected" }
                    )
                })
                .collect();
            errors.push(format!(
                "{fault_name}: {} of {} clients did not receive the post-storm message of \
                 their topic; first: {}",
                v.expected - v.delivered,
                v.expected,
                first.join(", ")
            ));
        }
        std::thread::sleep(options.settle);
        faults.push(FaultRecord {
            kind: "kill -9 gateway, restart".into(),
            node: crashed.clone(),
            start_ms: start,
            end_ms: now_ms(),
            new_leader_ms: None,
        });
        storm_faults.push(StormFault {
            node: crashed.clone(),
            fault_ms: start,
            storm_clients: progress.storm_clients,
            reconnected: progress.back,
            reconnect_p50_ms: percentile(&progress.reconnect_ms, 50.0),
            reconnect_p99_ms: percentile(&progress.reconnect_ms, 99.0),
            reconnect_max_ms: percentile(&progress.reconnect_ms, 100.0),
            all_back_ms: progress.all_back_ms,
            max_attempts: progress.max_attempts,
            collateral_lost: progress.collateral_lost,
            delivered: v.delivered,
            expected: v.expected,
            publish_failed: v.publish_failed,
            publish_failures: v.publish_failures,
            missing: v.missing,
        });
    }
    let records = worker.stop();
    cluster.teardown();

    let windows: Vec<(f64, f64)> = faults.iter().map(|f| (f.start_ms, f.end_ms)).collect();
    let publish = unavailability(&records, "publish", &windows);
    let pub_ms: Vec<f64> = publish.iter().map(|u| u.unavailable_ms).collect();
    let of = |f: fn(&StormFault) -> f64| storm_faults.iter().map(f).collect::<Vec<f64>>();
    let all_back: Vec<f64> = storm_faults.iter().filter_map(|f| f.all_back_ms).collect();
    let storm = StormReport {
        clients,
        topics,
        gateways: GATEWAYS,
        seed,
        median_reconnect_p50_ms: median(&of(|f| f.reconnect_p50_ms)),
        median_reconnect_p99_ms: median(&of(|f| f.reconnect_p99_ms)),
        median_reconnect_max_ms: median(&of(|f| f.reconnect_max_ms)),
        median_all_back_ms: median(&all_back),
        delivered: storm_faults.iter().map(|f| f.delivered).sum(),
        expected: storm_faults.iter().map(|f| f.expected).sum(),
        faults: storm_faults,
        errors,
    };
    Ok(ScenarioReport {
        scenario: Scenario::ReconnectStorm,
        faults,
        subscribe: Vec::new(),
        median_subscribe_ms: 0.0,
        median_publish_ms: median(&pub_ms),
        max_ms: pub_ms.iter().copied().fold(0.0, f64::max),
        publish,
        probe_ops: records.len(),
        storm: Some(storm),
    })
}

/// Distinct clients that have been connected and subscribed at least once.
fn connected_clients(events: &[StormEvent], clients: usize) -> usize {
    let mut seen = vec![false; clients];
    for e in events {
        if let StormEvent::Up { client, .. } = *e {
            if let Some(s) = seen.get_mut(client) {
                *s = true;
            }
        }
    }
    seen.iter().filter(|&&s| s).count()
}

/// The worker process in the client namespace, and the events it printed so far.
#[derive(Debug)]
struct StormWorker {
    child: Child,
    stdin: Option<ChildStdin>,
    events: Arc<Mutex<Vec<StormEvent>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
}

impl StormWorker {
    fn start(
        cluster: &Cluster,
        clients: usize,
        topics: usize,
        t0_unix_ms: f64,
        seed: u64,
    ) -> Result<StormWorker, ChaosError> {
        let client = cluster.client_host()?;
        let gateways: Vec<String> = cluster
            .gateway_addrs()
            .iter()
            .map(SocketAddr::to_string)
            .collect();
        let logs = cluster.spec().run_dir.join("logs");
        let log = logs.join("storm.log");
        let stderr = std::fs::File::create(&log).map_err(|e| ChaosError::io(&log, e))?;
        // Every event line, as printed, for a look after the run.
        let copy_path = logs.join("storm-events.jsonl");
        let copy = std::fs::File::create(&copy_path).map_err(|e| ChaosError::io(&copy_path, e))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &client.ns])
            .arg(&cluster.spec().binary)
            .args([
                "chaos",
                "storm",
                "--gateways",
                &gateways.join(","),
                "--clients",
                &clients.to_string(),
                "--topics",
                &topics.to_string(),
                "--seed",
                &seed.to_string(),
                "--t0-unix-ms",
                &format!("{t0_unix_ms:.3}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // Like the servers: a Ctrl-C at the terminal reaches only the harness, which
            // removes the run (this process included, as it lives in the client namespace).
            .process_group(0)
            .spawn()
            .map_err(|source| ChaosError::Spawn {
                program: "firetower chaos storm".into(),
                source,
            })?;
        let stdin = child.stdin.take();
        let events = Arc::new(Mutex::new(Vec::new()));
        let reader = child.stdout.take().map(|out| {
            let sink = events.clone();
            std::thread::spawn(move || {
                let mut copy = std::io::BufWriter::new(copy);
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(copy, "{line}");
                    if let Ok(e) = serde_json::from_str::<StormEvent>(&line) {
                        sink.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                    }
                }
                let _ = copy.flush();
            })
        });
        Ok(StormWorker {
            child,
            stdin,
            events,
            reader,
            log,
        })
    }

    fn with_events<T>(&self, f: impl FnOnce(&[StormEvent]) -> T) -> T {
        f(&self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Poll the events until `done` says so (true) or `limit` passes (false). Fails when
    /// the worker has exited.
    fn wait_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&[StormEvent]) -> bool,
    ) -> Result<bool, ChaosError> {
        let deadline = Instant::now() + limit;
        loop {
            if self.with_events(&mut done) {
                return Ok(true);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ChaosError::Worker(format!(
                    "the storm worker exited ({status}); see {}",
                    self.log.display()
                )));
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn send(&mut self, command: &StormCommand) -> Result<(), ChaosError> {
        let mut line = serde_json::to_string(command).unwrap_or_default();
        line.push('\n');
        let written = self
            .stdin
            .as_mut()
            .map(|s| s.write_all(line.as_bytes()).and_then(|()| s.flush()));
        match written {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(ChaosError::Worker(format!(
                "cannot send {command:?} to the storm worker: {e}; see {}",
                self.log.display()
            ))),
            None => Err(ChaosError::Worker("the storm worker has no stdin".into())),
        }
    }

    /// Stop the worker and return the probe's records.
    fn stop(mut self) -> Vec<ProbeRecord> {
        // Closing stdin ends the worker; the kill is for one that does not listen.
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The worker was the only writer of its stdout (`ip netns exec` execs), so the
        // reader sees the end now.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.with_events(|events| {
            events
                .iter()
                .filter_map(|e| match e {
                    StormEvent::Publish(r) => Some(r.clone()),
                    _ => None,
                })
                .collect()
        })
    }
}

impl Drop for StormWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The worker: `firetower chaos storm`, inside the client namespace.
// ---------------------------------------------------------------------------------------

/// What `firetower chaos storm` was asked to do.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// WebSocket addresses of the gateways (host:port); the last one carries the probe and
    /// the post-storm check.
    pub gateways: Vec<SocketAddr>,
    /// Clients.
    pub clients: usize,
    /// Topics.
    pub topics: usize,
    /// Pause between probe publishes.
    pub interval: Duration,
    /// The harness's t0 (ms since the Unix epoch), so times line up.
    pub t0_unix_ms: f64,
    /// Seed of the jitter.
    pub seed: u64,
}

/// Milliseconds since the harness's t0.
#[derive(Debug, Clone, Copy)]
struct Clock {
    offset_ms: f64,
    origin: Instant,
}

impl Clock {
    fn new(t0_unix_ms: f64) -> Clock {
        Clock {
            offset_ms: unix_ms() - t0_unix_ms,
            origin: Instant::now(),
        }
    }

    fn now(&self) -> f64 {
        self.offset_ms + self.origin.elapsed().as_secs_f64() * 1e3
    }
}

#[derive(Debug, Default)]
struct ClientState {
    /// Connected with its subscribe acked.
    up: AtomicBool,
    /// The highest verify round received on its topic.
    round: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    clock: Clock,
    gateways: Vec<SocketAddr>,
    topics: Vec<String>,
    clients: Vec<ClientState>,
    out: mpsc::Sender<StormEvent>,
}

impl Shared {
    /// Queue an event for stdout; false once the writer is gone (the worker is ending).
    async fn emit(&self, event: StormEvent) -> bool {
        self.out.send(event).await.is_ok()
    }

    fn topic_of(&self, client: usize) -> &str {
        let t = topic_of(client, self.gateways.len(), self.topics.len());
        self.topics.get(t).map_or("", String::as_str)
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Run the worker until its stdin closes (or stdout breaks). Prints [`StormEvent`] lines and
/// answers [`StormCommand`]s.
pub async fn run_worker(config: StormConfig) -> Result<(), String> {
    if config.gateways.is_empty() || config.clients == 0 || config.topics == 0 {
        return Err("the storm worker needs gateways, clients and topics".into());
    }
    let need = config.clients as u64 + 64;
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    if let Some(limit) = limit.filter(|&l| l < need) {
        return Err(format!(
            "{} clients need about {need} open files, but this process may open {limit} \
             (ulimit -n); use fewer --clients",
            config.clients
        ));
    }
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let shared = Arc::new(Shared {
        clock: Clock::new(config.t0_unix_ms),
        gateways: config.gateways.clone(),
        topics: (0..config.topics).map(topic_name).collect(),
        clients: (0..config.clients)
            .map(|_| ClientState::default())
            .collect(),
        out: tx,
    });
    let writer = tokio::spawn(write_events(rx));
    for i in 0..config.clients {
        let seed = config.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        tokio::spawn(run_client(shared.clone(), i, seed));
    }
    tokio::spawn(run_probe(shared.clone(), config.interval));
    tokio::select! {
        _ = read_commands(shared) => {}
        _ = writer => {}
    }
    Ok(())
}

async fn write_events(mut rx: mpsc::Receiver<StormEvent>) {
    let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
    while let Some(first) = rx.recv().await {
        // Write what is queued (up to a batch), then flush once.
        let mut next = Some(first);
        let mut written = 0;
        while let Some(event) = next {
            if let Ok(mut line) = serde_json::to_string(&event) {
                line.push('\n');
                if out.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
            written += 1;
            next = if written < 1_024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if out.flush().await.is_err() {
            // The harness went away.
            return;
        }
    }
}

async fn read_commands(shared: Arc<Shared>) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<StormCommand>(&line) {
            Ok(StormCommand::Verify { round }) => {
                let v = verify(&shared, round).await;
                if !shared.emit(StormEvent::Verified(v)).await {
                    return;
                }
            }
            Err(e) => eprintln!("storm worker: ignoring command {line:?}: {e}"),
        }
    }
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: thousands of connections in one process. Messages here are tiny.
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

/// Open a `firetower.json` WebSocket to `addr`.
async fn open(addr: SocketAddr) -> Result<Ws, String> {
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .map_err(|e| short(&e.to_string()))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(Flavour::Json.subprotocol()),
    );
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true);
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(short(&e.to_string())),
        Err(_) => Err(format!("connect: no answer in {CONNECT_TIMEOUT:?}")),
    }
}

/// Why a request got no ack.
#[derive(Debug)]
enum ReplyError {
    /// The gateway answered with an error code; the connection is fine.
    Refused(String),
    /// The connection failed or ended.
    Connection(String),
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyError::Refused(code) => write!(f, "{code}"),
            ReplyError::Connection(e) => write!(f, "connection: {e}"),
        }
    }
}

/// Send `frame` and read until the reply to request `id`; messages on the way go to
/// `on_message`.
async fn request(
    ws: &mut Ws,
    frame: String,
    id: u64,
    mut on_message: impl FnMut(&ServerFrame),
) -> Result<(), ReplyError> {
    ws.send(Message::text(frame))
        .await
        .map_err(|e| ReplyError::Connection(short(&e.to_string())))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match ServerFrame::parse_json(text.as_bytes()) {
                Ok(ServerFrame::Ack { id: got }) if got == id => return Ok(()),
                Ok(ServerFrame::Error {
                    id: Some(got),
                    code,
                    ..
                }) if got == id => return Err(ReplyError::Refused(short(&code))),
                Ok(frame @ ServerFrame::Message { .. }) => on_message(&frame),
                // Replies to earlier requests, pongs, connection-level errors.
                _ => {}
            },
            Some(Ok(Message::Close(frame))) => {
                return Err(ReplyError::Connection(close_reason(frame)))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ReplyError::Connection(short(&e.to_string()))),
            None => return Err(ReplyError::Connection("end of stream".into())),
        }
    }
}

fn close_reason(frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) => short(&format!(
            "closed by the gateway: {} {}",
            u16::from(f.code),
            f.reason
        )),
        None => "closed by the gateway".into(),
    }
}

/// At most 160 characters of an error text.
fn short(text: &str) -> String {
    text.chars().take(160).collect()
}

/// The round number of a post-storm message on `topic`.
fn round_of(frame: &ServerFrame, topic: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Data {
        round: Option<u64>,
    }
    match frame {
        ServerFrame::Message {
            topic: t,
            payload: Payload::Json(data),
            ..
        } if &**t == topic => serde_json::from_slice::<Data>(data).ok()?.round,
        _ => None,
    }
}

fn note_round(state: &ClientState, frame: &ServerFrame, topic: &str) {
    if let Some(r) = round_of(frame, topic) {
        state.round.fetch_max(r, Ordering::SeqCst);
    }
}

/// Connect, subscribe to `topic` and wait for the ack.
async fn connect_and_subscribe(
    addr: SocketAddr,
    topic: &str,
    id: u64,
    state: &ClientState,
) -> Result<Ws, String> {
    let mut ws = open(addr).await?;
    let frame = serde_json::json!({"op": "subscribe", "topics": [topic], "id": id}).to_string();
    let acked = tokio::time::timeout(
        SUBSCRIBE_TIMEOUT,
        request(&mut ws, frame, id, |f| note_round(state, f, topic)),
    )
    .await;
    match acked {
        Ok(Ok(())) => Ok(ws),
        Ok(Err(e)) => Err(format!("subscribe: {e}")),
        Err(_) => Err(format!("subscribe: no ack in {SUBSCRIBE_TIMEOUT:?}")),
    }
}

/// Read until the connection ends; returns why it ended.
async fn serve(ws: &mut Ws, topic: &str, state: &ClientState) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if let Ok(frame) = ServerFrame::parse_json(text.as_bytes()) {
                    note_round(state, &frame, topic);
                }
            }
            Some(Ok(Message::Close(frame))) => return close_reason(frame),
            Some(Ok(_)) => {}
            Some(Err(e)) => return short(&e.to_string()),
            None => return "end of stream".into(),
        }
    }
}

/// Pause after the `attempt`-th failed attempt: 100 ms doubling to 1 s, plus jitter.
fn backoff(attempt: u32, rng: &mut StdRng) -> Duration {
    let policy = ReconnectPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_millis(MAX_BACKOFF_MS),
        ..ReconnectPolicy::default()
    };
    policy.delay_above_ceiling(attempt, Duration::from_millis(RECONNECT_JITTER_MS), rng)
}

/// One client: connect, subscribe, read; when the connection ends, reconnect after a jitter
/// like a real client, forever.
async fn run_client(shared: Arc<Shared>, i: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let g = gateway_of(i, shared.gateways.len());
    let Some(&addr) = shared.gateways.get(g) else {
        return;
    };
    let Some(state) = shared.clients.get(i) else {
        return;
    };
    let topic = shared.topic_of(i).to_string();
    tokio::time::sleep(Duration::from_millis(
        rng.random_range(0..=INITIAL_SPREAD_MS),
    ))
    .await;
    let mut lost_ms = None;
    let mut id = 0u64;
    loop {
        let mut attempts = 0u32;
        let mut ws = loop {
            attempts = attempts.saturating_add(1);
            id += 1;
            match connect_and_subscribe(addr, &topic, id, state).await {
                Ok(ws) => break ws,
                Err(_) => tokio::time::sleep(backoff(attempts, &mut rng)).await,
            }
        };
        state.up.store(true, Ordering::SeqCst);
        let up = StormEvent::Up {
            client: i,
            gateway: g + 1,
            ms: shared.clock.now(),
            lost_ms,
            attempts,
        };
        if !shared.emit(up).await {
            return;
        }
        let why = serve(&mut ws, &topic, state).await;
        drop(ws);
        state.up.store(false, Ordering::SeqCst);
        let ms = shared.clock.now();
        lost_ms = Some(ms);
        let lost = StormEvent::Lost {
            client: i,
            gateway: g + 1,
            ms,
            why,
        };
        if !shared.emit(lost).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(
            rng.random_range(0..=RECONNECT_JITTER_MS),
        ))
        .await;
    }
}

/// Publish `data` to `topic` as request `id` on `ws` (connecting first when there is no
/// connection); a failed connection is dropped so that the next call opens a new one.
async fn publish(
    ws: &mut Option<Ws>,
    addr: SocketAddr,
    topic: &str,
    data: &serde_json::Value,
    id: u64,
) -> Result<(), ReplyError> {
    let conn = match ws {
        Some(conn) => conn,
        None => ws.insert(open(addr).await.map_err(ReplyError::Connection)?),
    };
    let frame =
        serde_json::json!({"op": "publish", "topic": topic, "data": data, "id": id}).to_string();
    let result = request(conn, frame, id, |_| {}).await;
    if matches!(result, Err(ReplyError::Connection(_))) {
        *ws = None;
    }
    result
}

/// The probe: publish through the last gateway to the topics in turn, one at a time, every
/// `interval`, printing a [`ProbeRecord`] per publish (deadline 1 s, connecting included).
async fn run_probe(shared: Arc<Shared>, interval: Duration) {
    let Some(&addr) = shared.gateways.last() else {
        return;
    };
    let mut ws = None;
    let mut n = 0u64;
    loop {
        let Some(topic) = shared.topics.get(n as usize % shared.topics.len().max(1)) else {
            return;
        };
        n += 1;
        let start = shared.clock.now();
        let data = serde_json::json!({ "probe": n });
        let ok = match tokio::time::timeout(PROBE_DEADLINE, publish(&mut ws, addr, topic, &data, n))
            .await
        {
            Ok(r) => r.is_ok(),
            Err(_) => {
                // Start over on a fresh connection rather than behind a stuck request.
                ws = None;
                false
            }
        };
        let record = ProbeRecord {
            op: "publish".into(),
            start_ms: start,
            end_ms: shared.clock.now(),
            ok,
        };
        if !shared.emit(StormEvent::Publish(record)).await {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// The post-storm check: publish `{"round":round}` to every topic through the last gateway
/// (up to 3 attempts each), then wait until every client has it or the wait is over.
async fn verify(shared: &Shared, round: u64) -> Verification {
    let mut v = Verification {
        round,
        start_ms: shared.clock.now(),
        expected: shared.clients.len(),
        ..Verification::default()
    };
    let Some(&addr) = shared.gateways.last() else {
        return v;
    };
    let budget = Instant::now() + VERIFY_PUBLISH_BUDGET;
    let data = serde_json::json!({ "round": round });
    let mut ws = None;
    let mut id = 0u64;
    for topic in &shared.topics {
        let mut last = None;
        for attempt in 0..VERIFY_PUBLISH_ATTEMPTS {
            if Instant::now() >= budget {
                last = Some(format!("not published within {VERIFY_PUBLISH_BUDGET:?}"));
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            id += 1;
            match tokio::time::timeout(
                VERIFY_PUBLISH_DEADLINE,
                publish(&mut ws, addr, topic, &data, id),
            )
            .await
            {
                Ok(Ok(())) => {
                    last = None;
                    break;
                }
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => {
                    ws = None;
                    last = Some(format!("no ack in {VERIFY_PUBLISH_DEADLINE:?}"));
                }
            }
        }
        if let Some(e) = last {
            v.publish_failed += 1;
            if v.publish_failures.len() < LIST_LIMIT {
                v.publish_failures.push(format!("{topic}: {e}"));
            }
        }
    }
    if let Some(mut conn) = ws {
        let _ = conn.close(None).await;
    }
    v.published_ms = shared.clock.now();
    let has = |c: &ClientState| c.round.load(Ordering::SeqCst) >= round;
    let deadline = Instant::now() + DELIVERY_WAIT;
    while !shared.clients.iter().all(has) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    v.delivered = shared.clients.iter().filter(|c| has(c)).count();
    v.missing = shared
        .clients
        .iter()
        .enumerate()
        .filter(|(_, c)| !has(c))
        .take(LIST_LIMIT)
        .map(|(i, c)| MissingClient {
            client: i,
            gateway: gateway_of(i, shared.gateways.len()) + 1,
            topic: shared.topic_of(i).to_string(),
            connected: c.up.load(Ordering::SeqCst),
        })
        .collect();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(client: usize, ms: f64, lost_ms: Option<f64>) -> StormEvent {
        StormEvent::Up {
            client,
            gateway: gateway_of(client, 2) + 1,
            ms,
            lost_ms,
            attempts: 1,
        }
    }

    fn lost(client: usize, ms: f64) -> StormEvent {
        StormEvent::Lost {
            client,
            gateway: gateway_of(client, 2) + 1,
            ms,
            why: "end of stream".into(),
        }
    }

    #[test]
    fn every_topic_has_clients_on_every_gateway() {
        let (clients, gateways, topics) = (300, 2, 50);
        for t in 0..topics {
            for g in 0..gateways {
                assert!((0..clients)
                    .any(|c| topic_of(c, gateways, topics) == t && gateway_of(c, gateways) == g));
            }
        }
    }

    #[test]
    fn progress_counts_the_crashed_gateways_clients() {
        // Clients 0 and 2 are on g1, 1 and 3 on g2; the fault is at 1000.
        let mut events: Vec<StormEvent> = (0..4).map(|c| up(c, 10.0, None)).collect();
        events.push(lost(0, 1005.0));
        events.push(lost(2, 1006.0));
        events.push(up(0, 1300.0, Some(1005.0)));
        let p = storm_progress(&events, 4, 2, 1, 1000.0);
        assert_eq!(p.storm_clients, 2);
        assert_eq!(p.back, 1);
        assert_eq!(p.all_back_ms, None);
        events.push(up(2, 1500.0, Some(1006.0)));
        // A client that drops again is not back until its next ack.
        events.push(lost(0, 1600.0));
        let p = storm_progress(&events, 4, 2, 1, 1000.0);
        assert_eq!(p.back, 1);
        events.push(up(0, 1900.0, Some(1600.0)));
        events.push(lost(1, 1700.0));
        let p = storm_progress(&events, 4, 2, 1, 1000.0);
        assert_eq!(p.back, 2);
        assert_eq!(p.all_back_ms, Some(900.0));
        assert_eq!(p.reconnect_ms, vec![295.0, 494.0, 300.0]);
        assert_eq!(p.collateral_lost, 1);
        assert_eq!(p.untouched, 0);
    }

    #[test]
    fn progress_ignores_events_before_the_fault_and_out_of_range_clients() {
        let events = vec![
            up(0, 10.0, None),
            lost(0, 50.0),
            up(0, 80.0, Some(50.0)),
            up(99, 1200.0, Some(1100.0)),
        ];
        let p = storm_progress(&events, 2, 2, 1, 1000.0);
        assert_eq!(p.storm_clients, 1);
        assert_eq!(p.back, 0);
        assert_eq!(p.untouched, 1);
        assert!(p.reconnect_ms.is_empty());
        assert_eq!(p.all_back_ms, None);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn events_and_commands_round_trip() {
        let events = vec![
            up(3, 1.5, Some(0.5)),
            lost(3, 2.0),
            StormEvent::Publish(ProbeRecord {
                op: "publish".into(),
                start_ms: 1.0,
                end_ms: 2.0,
                ok: true,
            }),
            StormEvent::Verified(Verification {
                round: 2,
                expected: 4,
                delivered: 3,
                missing: vec![MissingClient {
                    client: 1,
                    gateway: 2,
                    topic: "storm.0".into(),
                    connected: true,
                }],
                ..Verification::default()
            }),
        ];
        for e in events {
            let line = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<StormEvent>(&line).unwrap(), e);
        }
        let c = StormCommand::Verify { round: 7 };
        let line = serde_json::to_string(&c).unwrap();
        assert_eq!(line, r#"{"cmd":"verify","round":7}"#);
        assert_eq!(serde_json::from_str::<StormCommand>(&line).unwrap(), c);
    }

    #[test]
    fn rounds_are_read_only_from_the_clients_topic() {
        let msg = |topic: &str, data: &str| {
            ServerFrame::parse_json(
                format!(r#"{{"op":"message","topic":"{topic}","data":{data},"term":1,"seq":1}}"#)
                    .as_bytes(),
            )
            .unwrap()
        };
        assert_eq!(
            round_of(&msg("storm.1", r#"{"round":4}"#), "storm.1"),
            Some(4)
        );
        assert_eq!(round_of(&msg("storm.2", r#"{"round":4}"#), "storm.1"), None);
        assert_eq!(round_of(&msg("storm.1", r#"{"probe":4}"#), "storm.1"), None);
        assert_eq!(round_of(&msg("storm.1", r#""text""#), "storm.1"), None);
        assert_eq!(
            round_of(&msg("storm.1", r#"{"round":-1}"#), "storm.1"),
            None
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut rng = StdRng::seed_from_u64(1);
        for attempt in 1..20 {
            let d = backoff(attempt, &mut rng).as_millis() as u64;
            let base = (100u64 << (attempt - 1).min(4)).min(MAX_BACKOFF_MS);
            assert!(
                (base..=base + RECONNECT_JITTER_MS).contains(&d),
                "{attempt}: {d}"
            );
        }
    }
}
