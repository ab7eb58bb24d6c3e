//! What a scenario run is asked and what it reports: the scenario and its knobs, every fault
//! injected, and the unavailability (and, for reconnect-storm, the reconnection and delivery
//! figures) it caused, with the tables `firetower chaos run` prints.
//!
//! ```text
//!   ScenarioOptions ──▶ run_scenario ──▶ ScenarioReport ── faults: FaultRecord per fault
//!                                                        ├─ subscribe / publish: Unavailability
//!                                                        └─ storm: StormReport (reconnect-storm)
//!                                                              └─ faults: StormFault per crash
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::probe::Unavailability;
use crate::storm::events::{MissingClient, DEFAULT_FAULTS};

/// The scenarios `firetower chaos run` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// kill -9 the leader of one group, repeatedly.
    LeaderKillLoop,
    /// Restart every manager in turn.
    RollingRestart,
    /// kill -9 a gateway under many WebSocket clients and start it again, repeatedly.
    ReconnectStorm,
}

impl Scenario {
    /// Faults (or rounds) when `--cycles`/`--faults` is not given.
    pub fn default_cycles(self) -> usize {
        match self {
            Scenario::LeaderKillLoop | Scenario::RollingRestart => 5,
            Scenario::ReconnectStorm => DEFAULT_FAULTS,
        }
    }
}

/// Knobs of a scenario run.
#[derive(Debug, Clone)]
pub struct ScenarioOptions {
    /// The `firetower` binary.
    pub binary: PathBuf,
    /// Where data, logs and the report go.
    pub run_dir: PathBuf,
    /// Faults to inject (leader-kill-loop, reconnect-storm); rolling-restart restarts each
    /// manager once per cycle.
    pub cycles: usize,
    /// Quiet time after each fault has healed, before the next.
    pub settle: Duration,
    /// WebSocket clients (reconnect-storm).
    pub clients: usize,
    /// Topics the clients subscribe to, one each (reconnect-storm).
    pub topics: usize,
    /// Run every process with `--insecure` instead of mutual TLS (for the TLS on/off
    /// comparison of failover times).
    pub insecure: bool,
}

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// What was done.
    pub kind: String,
    /// To which host.
    pub node: String,
    /// When it began (ms since t0).
    pub start_ms: f64,
    /// When the harness considered it healed and settled (ms since t0).
    pub end_ms: f64,
    /// From the fault until `cluster members` showed a new leader of the probe's group (ms;
    /// polled every 100 ms), when the fault removed a leader.
    pub new_leader_ms: Option<f64>,
}

/// The outcome of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Which scenario.
    pub scenario: Scenario,
    /// The faults, in order.
    pub faults: Vec<FaultRecord>,
    /// Per fault, subscribing (empty for reconnect-storm: its clients' resubscribes are in
    /// `storm`).
    pub subscribe: Vec<Unavailability>,
    /// Per fault, publishing.
    pub publish: Vec<Unavailability>,
    /// Median unavailability of subscribing over the faults, ms (0 without a subscribe
    /// probe).
    pub median_subscribe_ms: f64,
    /// Median unavailability of publishing over the faults, ms.
    pub median_publish_ms: f64,
    /// Worst unavailability of either, ms.
    pub max_ms: f64,
    /// Probe operations recorded.
    pub probe_ops: usize,
    /// reconnect-storm: reconnection times and the post-storm delivery check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormReport>,
}

impl ScenarioReport {
    /// A human-readable table.
    pub fn table(&self) -> String {
        if let Some(storm) = &self.storm {
            return storm.table(self);
        }
        let mut s = format!(
            "scenario {:?}: {} faults, {} probe operations\n",
            self.scenario,
            self.faults.len(),
            self.probe_ops
        );
        s.push_str("fault                     node   subscribe_ms  publish_ms  new_leader_ms\n");
        for (i, f) in self.faults.iter().enumerate() {
            let sub = self.subscribe.get(i).map_or(0.0, |u| u.unavailable_ms);
            let publ = self.publish.get(i).map_or(0.0, |u| u.unavailable_ms);
            let leader = f
                .new_leader_ms
                .map_or_else(|| "-".to_string(), |ms| format!("{ms:.0}"));
            s.push_str(&format!(
                "{:<25} {:<6} {:>12.0} {:>11.0} {:>14}\n",
                f.kind, f.node, sub, publ, leader
            ));
        }
        s.push_str(&format!(
            "median                           {:>12.0} {:>11.0}\nmax (either): {:.0} ms\n",
            self.median_subscribe_ms, self.median_publish_ms, self.max_ms
        ));
        s
    }
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
