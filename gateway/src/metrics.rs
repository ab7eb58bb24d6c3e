//! Counters the gateway keeps for operators, rendered as Prometheus text on `/metrics` and
//! readable in tests through [`MetricsSnapshot`].
//!
//! Plain atomics (relaxed): every counter is independent, and a scrape that sees one a little
//! ahead of another is fine. No metrics crate: the set is small and fixed.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the publish latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The gateway's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) connections_open: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) frames_in: AtomicU64,
    pub(crate) publishes_in: AtomicU64,
    pub(crate) publish_failures: AtomicU64,
    pub(crate) deliveries_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) messages_dropped: AtomicU64,
    pub(crate) slow_consumer_disconnects: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) idle_disconnects: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) topics: AtomicU64,
    pub(crate) subscriptions: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

/// A point-in-time copy of the gateway's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Client connections open now (WebSocket and TCP).
    pub connections_open: u64,
    /// Client connections accepted since start.
    pub connections_total: u64,
    /// Connections refused because the connection limit was reached.
    pub connections_refused: u64,
    /// Connections closed before completing the HTTP/WebSocket handshake.
    pub handshake_failures: u64,
    /// Client frames received.
    pub frames_in: u64,
    /// Client publishes received.
    pub publishes_in: u64,
    /// Client publishes the cluster did not accept.
    pub publish_failures: u64,
    /// Deliveries received from the cluster.
    pub deliveries_in: u64,
    /// Messages queued to local subscribers.
    pub messages_out: u64,
    /// Messages dropped for a slow subscriber.
    pub messages_dropped: u64,
    /// Connections closed for being slow consumers.
    pub slow_consumer_disconnects: u64,
    /// Requests refused by a rate limit.
    pub rate_limited: u64,
    /// Client frames refused as malformed.
    pub protocol_errors: u64,
    /// Connections closed for silence.
    pub idle_disconnects: u64,
    /// Panics caught in connection tasks or the fan-out.
    pub panics: u64,
    /// Topics in the local index.
    pub topics: u64,
    /// (connection, topic) subscriptions.
    pub subscriptions: u64,
    /// Publishes timed (acked or failed).
    pub publish_latency_count: u64,
}

pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// Record one publish round trip.
    pub(crate) fn observe_publish(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Copy the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            connections_open: g(&self.connections_open),
            connections_total: g(&self.connections_total),
            connections_refused: g(&self.connections_refused),
            handshake_failures: g(&self.handshake_failures),
            frames_in: g(&self.frames_in),
            publishes_in: g(&self.publishes_in),
            publish_failures: g(&self.publish_failures),
            deliveries_in: g(&self.deliveries_in),
            messages_out: g(&self.messages_out),
            messages_dropped: g(&self.messages_dropped),
            slow_consumer_disconnects: g(&self.slow_consumer_disconnects),
            rate_limited: g(&self.rate_limited),
            protocol_errors: g(&self.protocol_errors),
            idle_disconnects: g(&self.idle_disconnects),
            panics: g(&self.panics),
            topics: g(&self.topics),
            subscriptions: g(&self.subscriptions),
            publish_latency_count: g(&self.latency_count),
        }
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, ready: bool) -> String {
        let s = self.snapshot();
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP firetower_gateway_{name} {help}");
            let _ = writeln!(out, "# TYPE firetower_gateway_{name} {kind}");
            let _ = writeln!(out, "firetower_gateway_{name} {value}");
        };
        metric(
            "ready",
            "gauge",
            "1 when a leader is known for every group.",
            u64::from(ready),
        );
        metric(
            "connections",
            "gauge",
            "Client connections open.",
            s.connections_open,
        );
        metric(
            "connections_total",
            "counter",
            "Client connections accepted.",
            s.connections_total,
        );
        metric(
            "connections_refused_total",
            "counter",
            "Connections refused at the connection limit.",
            s.connections_refused,
        );
        metric(
            "handshake_failures_total",
            "counter",
            "Connections that never completed their handshake.",
            s.handshake_failures,
        );
        metric(
            "topics",
            "gauge",
            "Topics with local subscribers (or in transition).",
            s.topics,
        );
        metric(
            "subscriptions",
            "gauge",
            "Connection-topic subscriptions.",
            s.subscriptions,
        );
        metric(
            "frames_in_total",
            "counter",
            "Client frames received.",
            s.frames_in,
        );
        metric(
            "publishes_in_total",
            "counter",
            "Client publishes received.",
            s.publishes_in,
        );
        metric(
            "publish_failures_total",
            "counter",
            "Client publishes the cluster did not accept.",
            s.publish_failures,
        );
        metric(
            "deliveries_in_total",
            "counter",
            "Deliveries received from the cluster.",
            s.deliveries_in,
        );
        metric(
            "messages_out_total",
            "counter",
            "Messages queued to local subscribers.",
            s.messages_out,
        );
        metric(
            "messages_dropped_total",
            "counter",
            "Messages dropped for slow subscribers.",
            s.messages_dropped,
        );
        metric(
            "slow_consumer_disconnects_total",
            "counter",
            "Connections closed as slow consumers.",
            s.slow_consumer_disconnects,
        );
        metric(
            "rate_limited_total",
            "counter",
            "Requests refused by a rate limit.",
            s.rate_limited,
        );
        metric(
            "protocol_errors_total",
            "counter",
            "Malformed client frames.",
            s.protocol_errors,
        );
        metric(
            "idle_disconnects_total",
            "counter",
            "Connections closed for silence.",
            s.idle_disconnects,
        );
        metric(
            "panics_total",
            "counter",
            "Panics caught in connection tasks or the fan-out.",
            s.panics,
        );
        let name = "firetower_gateway_publish_latency_seconds";
        let _ = writeln!(out, "# HELP {name} Client publish to leader ack.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}",
            s.publish_latency_count
        );
        let sum = self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", s.publish_latency_count);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        inc(&m.connections_open);
        m.observe_publish(Duration::from_millis(3));
        m.observe_publish(Duration::from_secs(10));
        let text = m.render(true);
        assert!(text.contains("firetower_gateway_connections 1\n"));
        assert!(text.contains("firetower_gateway_ready 1\n"));
        assert!(
            text.contains("firetower_gateway_publish_latency_seconds_bucket{le=\"0.0025\"} 0\n")
        );
        assert!(text.contains("firetower_gateway_publish_latency_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("firetower_gateway_publish_latency_seconds_bucket{le=\"5\"} 1\n"));
        assert!(text.contains("firetower_gateway_publish_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("firetower_gateway_publish_latency_seconds_count 2\n"));
    }
}
