//! What the delivery checker reports: the counts ([`DeliveryStats`], `verdict.json` →
//! `stats`), the anomalies found (at most [`MAX_ANOMALIES_PER_KIND`] of each kind written out,
//! every one counted), and the verdict they make.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::history::Op;
use crate::verdict::{Anomaly, Validity, Verdict};

/// At most this many anomalies of one kind are written out (all are counted).
pub(super) const MAX_ANOMALIES_PER_KIND: usize = 50;

/// Counts of the delivery checker (`verdict.json` → `stats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeliveryStats {
    /// Topics published to.
    pub topics: usize,
    /// Subscriber connections.
    pub connections: usize,
    /// Subscriber connections the gateway (or the network) ended before the drain.
    pub connections_closed_by_gateway: usize,
    /// Publishes by outcome.
    pub publishes_ok: u64,
    /// Publishes that certainly failed.
    pub publishes_fail: u64,
    /// Publishes of unknown outcome.
    pub publishes_info: u64,
    /// Acknowledged subscriptions (connection, topic).
    pub subscriptions: u64,
    /// Messages received, over all connections.
    pub messages_received: u64,
    /// (subscriber, acknowledged publish) pairs that had to be delivered exactly once.
    pub obligations: u64,
    /// Of those, delivered.
    pub delivered: u64,
    /// Of those, never received.
    pub lost: u64,
    /// Lost, but the publish overlapped a fault window.
    pub lost_excused_fault: u64,
    /// Unexcused losses that fell in a session gap of the subscriber's gateway (counted for
    /// the explanation; still anomalies).
    pub lost_in_session_gap: u64,
    /// Lost, acknowledged just before the gateway closed the subscriber's connection.
    pub lost_excused_closing: u64,
    /// Lost with no excuse (each is an anomaly).
    pub lost_unexcused: u64,
    /// Messages received twice on one connection.
    pub duplicates: u64,
    /// Messages out of (term, seq) order or out of acknowledgement order.
    pub reordered: u64,
    /// Messages never published (or published to another topic).
    pub phantoms: u64,
    /// One publish received with different (term, seq) stamps.
    pub restamped: u64,
    /// Messages of publishes that failed (the gateway said the publish was not done).
    pub delivered_after_fail: u64,
    /// Messages of publishes of unknown outcome.
    pub delivered_info: u64,
    /// Messages of publishes invoked after the connection's unsubscribe from the topic was
    /// acknowledged (each is an anomaly).
    pub delivered_after_unsubscribe: u64,
    /// Fault windows (nemesis) and gateway session gaps used for excuses.
    pub fault_windows: usize,
    /// Session gaps read from the gateway logs.
    pub session_gaps: usize,
    /// Publish invoke → receive, ms: median, 99th percentile, max (acknowledged publishes).
    pub delivery_ms_p50: f64,
    /// 99th percentile.
    pub delivery_ms_p99: f64,
    /// Max.
    pub delivery_ms_max: f64,
}

impl DeliveryStats {
    /// Delivery latencies (publish invoke → receive, ms): p50, p99 and max.
    pub(super) fn set_latencies(&mut self, mut latencies: Vec<f64>) {
        latencies.sort_by(f64::total_cmp);
        self.delivery_ms_p50 = percentile(&latencies, 0.5);
        self.delivery_ms_p99 = percentile(&latencies, 0.99);
        self.delivery_ms_max = latencies.last().copied().unwrap_or(0.0);
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The anomalies found so far, by kind (kinds in name order in the verdict).
#[derive(Default)]
pub(super) struct Anomalies {
    by_kind: BTreeMap<&'static str, Vec<Anomaly>>,
}

impl Anomalies {
    /// Note an anomaly of `kind` with its explanation and the operations that show it (kept
    /// in time order as its sub-history).
    pub(super) fn report(
        &mut self,
        kind: &'static str,
        key: Option<String>,
        explanation: String,
        ops: Vec<Op>,
    ) {
        let list = self.by_kind.entry(kind).or_default();
        if list.len() < MAX_ANOMALIES_PER_KIND {
            let mut sub_history = ops;
            sub_history.sort_by_key(|o| (o.time_ns, o.index));
            list.push(Anomaly {
                kind: kind.into(),
                key,
                explanation,
                sub_history,
            });
        }
    }

    /// The verdict on `history`: valid when nothing was found.
    pub(super) fn verdict(self, history: &[Op], stats: &DeliveryStats) -> Verdict {
        let anomalies: Vec<Anomaly> = self.by_kind.into_values().flatten().collect();
        let valid = if anomalies.is_empty() {
            Validity::Valid
        } else {
            Validity::Invalid
        };
        Verdict::new(
            "delivery",
            valid,
            history,
            serde_json::to_value(stats).unwrap_or(Value::Null),
            anomalies,
        )
    }
}
