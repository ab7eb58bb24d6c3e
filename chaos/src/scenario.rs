//! Named availability scenarios: inject one kind of fault again and again while the probe
//! runs, and report how long each fault made subscribing (a committed write) and publishing
//! unavailable.
//!
//! ```text
//!   leader-kill-loop   kill -9 the leader of the probe's group, wait for a new leader,
//!                      restart the old one, let it catch up; repeat
//!   rolling-restart    restart every manager in turn (SIGTERM, start on the same data)
//!   reconnect-storm    kill -9 a gateway under N WebSocket clients and start it again: its
//!                      clients all reconnect at once; check they come back and get every
//!                      message published after the storm (see crate::storm)
//! ```

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, ClusterSpec};
use crate::probe::{median, unavailability, unix_ms, ProbeRecord};
use crate::report::{FaultRecord, Scenario, ScenarioOptions, ScenarioReport};
use crate::ChaosError;

/// A running probe process in the client namespace and the records it printed so far.
#[derive(Debug)]
pub struct ProbeProcess {
    child: Child,
    records: Arc<Mutex<Vec<ProbeRecord>>>,
}

impl ProbeProcess {
    /// Start `firetower chaos probe` on the cluster's client host.
    pub fn start(
        cluster: &Cluster,
        topic: &str,
        t0_unix_ms: f64,
    ) -> Result<ProbeProcess, ChaosError> {
        let client = cluster.client_host()?;
        let managers: Vec<String> = cluster
            .quic_addrs()
            .iter()
            .map(SocketAddr::to_string)
            .collect();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &client.ns])
            .arg(&cluster.spec().binary)
            .args([
                "chaos",
                "probe",
                "--managers",
                &managers.join(","),
                "--topic",
                topic,
                "--t0-unix-ms",
                &format!("{t0_unix_ms:.3}"),
            ])
            .args(cluster.tls_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| ChaosError::Spawn {
                program: "firetower chaos probe".into(),
                source,
            })?;
        let records = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let sink = records.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(r) = serde_json::from_str::<ProbeRecord>(&line) {
                        sink.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                    }
                }
            });
        }
        Ok(ProbeProcess { child, records })
    }

    /// Records so far.
    pub fn records(&self) -> Vec<ProbeRecord> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stop the probe and return everything it recorded.
    pub fn stop(mut self) -> Vec<ProbeRecord> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        self.records()
    }
}

impl Drop for ProbeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A topic name whose group is `group` (of `groups`).
pub fn topic_in_group(prefix: &str, group: u32, groups: u32) -> String {
    (0u64..)
        .map(|i| format!("{prefix}.{i}"))
        .find(|t| firetower_proto::group_of(t, groups) == group)
        .unwrap_or_else(|| format!("{prefix}.0"))
}

/// Run `scenario` on a fresh 3-manager cluster (with 2 gateways for reconnect-storm); the
/// cluster is removed afterwards.
pub fn run_scenario(
    scenario: Scenario,
    options: &ScenarioOptions,
) -> Result<ScenarioReport, ChaosError> {
    if scenario == Scenario::ReconnectStorm {
        return crate::storm::harness::run(options);
    }
    let mut spec = ClusterSpec::new(options.binary.clone(), options.run_dir.clone());
    spec.tag = "ftc".into();
    spec.secure = !options.insecure;
    let mut cluster = Cluster::start(spec)?;
    let groups = cluster.spec().groups;
    let group = 0;
    let topic = topic_in_group("chaos.probe", group, groups);
    let t0 = Instant::now();
    let t0_unix = unix_ms();
    let now_ms = || t0.elapsed().as_secs_f64() * 1e3;
    let probe = ProbeProcess::start(&cluster, &topic, t0_unix)?;
    // Warm up: the probe connects and succeeds before the first fault.
    let warm = Instant::now();
    while !probe.records().iter().any(|r| r.ok) {
        if warm.elapsed() > Duration::from_secs(20) {
            return Err(ChaosError::Timeout {
                after: Duration::from_secs(20),
                what: "the probe's first successful operation".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(options.settle);
    let mut faults = Vec::new();
    match scenario {
        Scenario::LeaderKillLoop => {
            for _ in 0..options.cycles {
                let leader_id = wait_leader(&cluster, group, None)?;
                let node = cluster
                    .name_of_id(leader_id)
                    .ok_or_else(|| ChaosError::UnknownNode(format!("id {leader_id}")))?;
                let start = now_ms();
                cluster.kill(&node)?;
                wait_leader(&cluster, group, Some(leader_id))?;
                let new_leader_ms = Some(now_ms() - start);
                std::thread::sleep(Duration::from_millis(500));
                cluster.start_manager(&node)?;
                cluster.wait_for_leaders(Duration::from_secs(30))?;
                std::thread::sleep(options.settle);
                faults.push(FaultRecord {
                    kind: "kill -9 leader".into(),
                    node,
                    start_ms: start,
                    end_ms: now_ms(),
                    new_leader_ms,
                });
            }
        }
        Scenario::RollingRestart => {
            for _ in 0..options.cycles.max(1) {
                for node in cluster.member_names() {
                    let start = now_ms();
                    cluster.restart(&node)?;
                    cluster.wait_for_leaders(Duration::from_secs(30))?;
                    std::thread::sleep(options.settle);
                    faults.push(FaultRecord {
                        kind: "restart".into(),
                        node,
                        start_ms: start,
                        end_ms: now_ms(),
                        new_leader_ms: None,
                    });
                }
            }
        }
        // Dispatched to crate::storm at the top; it needs gateways and no link probe.
        Scenario::ReconnectStorm => {
            return Err(ChaosError::InvalidFault(
                "reconnect-storm runs in crate::storm".into(),
            ))
        }
    }
    let records = probe.stop();
    cluster.teardown();
    let windows: Vec<(f64, f64)> = faults.iter().map(|f| (f.start_ms, f.end_ms)).collect();
    let subscribe = unavailability(&records, "subscribe", &windows);
    let publish = unavailability(&records, "publish", &windows);
    let sub_ms: Vec<f64> = subscribe.iter().map(|u| u.unavailable_ms).collect();
    let pub_ms: Vec<f64> = publish.iter().map(|u| u.unavailable_ms).collect();
    let max_ms = sub_ms.iter().chain(&pub_ms).copied().fold(0.0, f64::max);
    Ok(ScenarioReport {
        scenario,
        faults,
        median_subscribe_ms: median(&sub_ms),
        median_publish_ms: median(&pub_ms),
        subscribe,
        publish,
        max_ms,
        probe_ops: records.len(),
        storm: None,
    })
}

/// Wait until `group` has a leader other than `not`; returns its id.
fn wait_leader(cluster: &Cluster, group: u32, not: Option<u64>) -> Result<u64, ChaosError> {
    let limit = Duration::from_secs(30);
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(l)) = cluster.leader_of(group) {
            if Some(l) != not {
                return Ok(l);
            }
        }
        if Instant::now() >= deadline {
            return Err(ChaosError::Timeout {
                after: limit,
                what: format!("group {group} to elect a new leader"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
