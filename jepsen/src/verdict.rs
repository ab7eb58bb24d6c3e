//! The checker's verdict: valid, invalid (with every anomaly explained and its smallest
//! failing sub-history) or unknown; written as `verdict.json` and `verdict.txt`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::history::{Op, OpType};

/// Is the history valid?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    /// No anomaly.
    Valid,
    /// At least one anomaly.
    Invalid,
    /// No anomaly found, but the checker could not decide everything (search budget).
    Unknown,
}

/// One thing that went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// `nonlinearizable`, `duplicate`, `reordered`, `phantom`, `lost`.
    pub kind: String,
    /// The key (topic).
    pub key: Option<String>,
    /// What happened, in words.
    pub explanation: String,
    /// The smallest sub-history that shows it (history lines).
    pub sub_history: Vec<Op>,
}

/// Counts of client operations by outcome and function.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpCounts {
    /// Invocations.
    pub invoked: u64,
    /// `ok` completions.
    pub ok: u64,
    /// `fail` completions.
    pub fail: u64,
    /// `info` completions (or none before the end).
    pub info: u64,
    /// `ok` completions per function.
    pub ok_by_f: BTreeMap<String, u64>,
}

impl OpCounts {
    /// Count the client operations of a history.
    pub fn of(history: &[Op]) -> OpCounts {
        let mut c = OpCounts::default();
        for op in history.iter().filter(|o| o.is_client()) {
            match op.kind {
                OpType::Invoke => c.invoked += 1,
                OpType::Ok => {
                    c.ok += 1;
                    *c.ok_by_f.entry(op.f.clone()).or_default() += 1;
                }
                OpType::Fail => c.fail += 1,
                OpType::Info => c.info += 1,
            }
        }
        c.info += c.invoked.saturating_sub(c.ok + c.fail + c.info);
        c
    }
}

/// The verdict of one checker on one history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The workload checked.
    pub workload: String,
    /// The answer.
    pub valid: Validity,
    /// Operation counts.
    pub ops: OpCounts,
    /// Checker-specific statistics.
    pub stats: serde_json::Value,
    /// Every anomaly found.
    pub anomalies: Vec<Anomaly>,
}

impl Verdict {
    /// Assemble a verdict.
    pub fn new(
        workload: &str,
        valid: Validity,
        history: &[Op],
        stats: serde_json::Value,
        anomalies: Vec<Anomaly>,
    ) -> Verdict {
        Verdict {
            workload: workload.to_string(),
            valid,
            ops: OpCounts::of(history),
            stats,
            anomalies,
        }
    }

    /// The human-readable form (`verdict.txt`).
    pub fn text(&self) -> String {
        let mut s = format!(
            "workload: {}\nvalid: {:?}\noperations: {} invoked, {} ok, {} fail, {} info\nstats: {}\n",
            self.workload,
            self.valid,
            self.ops.invoked,
            self.ops.ok,
            self.ops.fail,
            self.ops.info,
            self.stats
        );
        if self.anomalies.is_empty() {
            s.push_str("anomalies: none\n");
        }
        for (i, a) in self.anomalies.iter().enumerate().take(20) {
            s.push_str(&format!(
                "\nanomaly {} ({}): {}\n",
                i + 1,
                a.kind,
                a.explanation
            ));
            for op in &a.sub_history {
                s.push_str(&format!(
                    "  #{:<7} t={:>10.3}ms p={:<8} {:<6} {:<11} {} {}\n",
                    op.index,
                    op.time_ns as f64 / 1e6,
                    match &op.process {
                        crate::history::Process::Client(p) => p.to_string(),
                        crate::history::Process::Named(n) => n.clone(),
                    },
                    format!("{:?}", op.kind).to_lowercase(),
                    op.f,
                    op.key.as_deref().unwrap_or("-"),
                    op.value
                ));
            }
        }
        if self.anomalies.len() > 20 {
            s.push_str(&format!(
                "\n... and {} more anomalies in verdict.json\n",
                self.anomalies.len() - 20
            ));
        }
        s
    }
}
