//! The harness side of reconnect-storm: a cluster of 3 managers and 2 gateways, the worker
//! process in the client namespace, and the loop of gateway crashes with their checks.
//!
//! ```text
//!   run ── Cluster::start (m1..m3, g1, g2, c1)
//!     ├─ StormWorker::start: ip netns exec <c1> firetower chaos storm ... (events on stdout)
//!     ├─ warm up: every client up, one probe publish ok
//!     └─ per fault: kill -9 g1, start g1 ─▶ wait until all of g1's clients are back
//!                   ─▶ {"cmd":"verify"} ─▶ wait for `verified` ─▶ StormFault, errors
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::events::{
    percentile, storm_progress, StormCommand, StormEvent, Verification, MAX_CLIENTS, MAX_TOPICS,
};
use crate::cluster::{Cluster, ClusterSpec};
use crate::net::HostSpec;
use crate::probe::{median, unavailability, unix_ms, ProbeRecord};
use crate::report::{
    FaultRecord, Scenario, ScenarioOptions, ScenarioReport, StormFault, StormReport,
};
use crate::ChaosError;

/// Gateways of the scenario: g1 crashes, g2 carries the probe and the verifier.
const GATEWAYS: usize = 2;
/// The harness waits this long for the first connections, and for every client to be back.
const INITIAL_LIMIT: Duration = Duration::from_secs(120);
const ALL_BACK_LIMIT: Duration = Duration::from_secs(60);
/// ... and for the worker's answer to `verify` (its own budgets are 70 s).
const VERIFY_LIMIT: Duration = Duration::from_secs(120);

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
