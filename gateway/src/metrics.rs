//! Counters the gateway keeps for operators, rendered on `/metrics` by prometheus-client's
//! Prometheus text encoder (version 0.0.4) and readable in tests through [`MetricsSnapshot`].
//!
//! ```text
//!   events, counted where they happen            state, set where it changes
//!   ─────────────────────────────────            ───────────────────────────
//!   server: connections, panics, fan-out         server: topics, subscriptions,
//!   connection: frames, publishes, errors        connections open
//!   publish round trip: latency histogram        scrape: ready (from the upstream)
//! ```
//!
//! `link_rejected_total{reason}` counts what the gateway refused from the managers (routing
//! tables, deliveries, session frames); the upstream keeps those counts and a collector reads
//! them at scrape time ([`crate::Upstream::link_rejections`]).
//!
//! Every other metric is a prometheus-client metric registered once; the code that counts reaches
//! its `AtomicU64` directly ([`inc`], `fetch_add`, `store`), relaxed: every counter is
//! independent, and a scrape that sees one a little ahead of another is fine. Names are the
//! ones the gateway always exported: prometheus-client appends `_total` to a counter, so a
//! counter is registered without it.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::hooks::HookMetrics;
use crate::upstream::Upstream;

/// Every metric name starts with this.
const PREFIX: &str = "firetower_gateway";

/// Upper bounds (seconds) of the publish latency histogram buckets: a publish on loopback
/// takes well under a millisecond, one that waits for a failover seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A prometheus-client counter that the gateway bumps through its atomic ([`inc`],
/// `fetch_add`), so counting stays one relaxed add.
#[derive(Debug, Clone, Default)]
pub(crate) struct AtomicCounter(Counter<u64, AtomicU64>);

impl Deref for AtomicCounter {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        self.0.inner()
    }
}

/// A prometheus-client gauge that the gateway sets through its atomic (`store`, [`inc`],
/// `fetch_sub`).
#[derive(Debug, Clone, Default)]
pub(crate) struct AtomicGauge(Gauge<u64, AtomicU64>);

impl Deref for AtomicGauge {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        self.0.inner()
    }
}

/// The gateway's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    ready: Gauge<u64, AtomicU64>,
    pub(crate) connections_open: AtomicGauge,
    pub(crate) connections_total: AtomicCounter,
    pub(crate) connections_refused: AtomicCounter,
    pub(crate) handshake_failures: AtomicCounter,
    pub(crate) tls_handshake_failures: AtomicCounter,
    pub(crate) frames_in: AtomicCounter,
    pub(crate) publishes_in: AtomicCounter,
    pub(crate) publish_failures: AtomicCounter,
    pub(crate) deliveries_in: AtomicCounter,
    pub(crate) messages_out: AtomicCounter,
    pub(crate) messages_dropped: AtomicCounter,
    pub(crate) slow_consumer_disconnects: AtomicCounter,
    pub(crate) rate_limited: AtomicCounter,
    pub(crate) protocol_errors: AtomicCounter,
    pub(crate) idle_disconnects: AtomicCounter,
    pub(crate) panics: AtomicCounter,
    pub(crate) auth_failures: AtomicCounter,
    pub(crate) forbidden: AtomicCounter,
    pub(crate) operator_closes: AtomicCounter,
    pub(crate) api_requests: AtomicCounter,
    pub(crate) topics: AtomicGauge,
    pub(crate) subscriptions: AtomicGauge,
    publish_latency: Histogram,
    /// The histogram's count, kept apart because prometheus-client reads it back only in its
    /// own tests; [`MetricsSnapshot`] needs it.
    publish_latency_count: AtomicU64,
    /// The lifecycle hooks' counters (rendered only once hooks are configured), for
    /// `hooks::Hooks::new`.
    pub(crate) hooks: HookMetrics,
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
    /// Connections whose TLS handshake failed (timeout, garbage, plaintext on a TLS port,
    /// no shared protocol version or cipher suite); not counted in `handshake_failures`.
    pub tls_handshake_failures: u64,
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
    /// Connections closed for a missing, invalid or expired credential.
    pub auth_failures: u64,
    /// Subscribes and publishes refused by permissions or topic bans.
    pub forbidden: u64,
    /// Connections closed by a kick, a ban or the per-user connection limit.
    pub operator_closes: u64,
    /// Backend API requests answered.
    pub api_requests: u64,

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

/// Reads the upstream's refusal counts at every scrape.
struct LinkRejected(Arc<dyn Upstream>);

impl std::fmt::Debug for LinkRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkRejected")
    }
}

impl Collector for LinkRejected {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rejections = self.0.link_rejections();
        if rejections.is_empty() {
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(
            "link_rejected",
            "Routing tables, deliveries and session frames refused from the managers, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in rejections {
            metric
                .encode_family(&[("reason", reason)])?
                .encode_counter::<NoLabelSet, u64, u64>(&count, None)?;
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::build(None)
    }
}

impl Metrics {
    /// The gateway's metrics, with `upstream`'s refusal counts exported.
    pub(crate) fn new(upstream: Arc<dyn Upstream>) -> Self {
        Metrics::build(Some(upstream))
    }

    fn build(upstream: Option<Arc<dyn Upstream>>) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        // The registry appends the final "." to every help text. Registration order is the
        // order of `/metrics`.
        let ready = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "ready",
            "1 when a leader is known for every group",
            ready.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = AtomicGauge::default();
            registry.register(name, help, gauge.0.clone());
            gauge
        };
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let counter = AtomicCounter::default();
            registry.register(name, help, counter.0.clone());
            counter
        };
        let connections_open = gauge(&mut registry, "connections", "Client connections open");
        let connections_total =
            counter(&mut registry, "connections", "Client connections accepted");
        let connections_refused = counter(
            &mut registry,
            "connections_refused",
            "Connections refused at the connection limit",
        );
        let handshake_failures = counter(
            &mut registry,
            "handshake_failures",
            "Connections that never completed their handshake",
        );
        let tls_handshake_failures = counter(
            &mut registry,
            "tls_handshake_failures",
            "Connections whose TLS handshake failed (client TLS)",
        );
        let topics = gauge(
            &mut registry,
            "topics",
            "Topics with local subscribers (or in transition)",
        );
        let subscriptions = gauge(
            &mut registry,
            "subscriptions",
            "Connection-topic subscriptions",
        );
        let frames_in = counter(&mut registry, "frames_in", "Client frames received");
        let publishes_in = counter(&mut registry, "publishes_in", "Client publishes received");
        let publish_failures = counter(
            &mut registry,
            "publish_failures",
            "Client publishes the cluster did not accept",
        );
        let deliveries_in = counter(
            &mut registry,
            "deliveries_in",
            "Deliveries received from the cluster",
        );
        let messages_out = counter(
            &mut registry,
            "messages_out",
            "Messages queued to local subscribers",
        );
        let messages_dropped = counter(
            &mut registry,
            "messages_dropped",
            "Messages dropped for slow subscribers",
        );
        let slow_consumer_disconnects = counter(
            &mut registry,
            "slow_consumer_disconnects",
            "Connections closed as slow consumers",
        );
        let rate_limited = counter(
            &mut registry,
            "rate_limited",
            "Requests refused by a rate limit",
        );
        let protocol_errors = counter(&mut registry, "protocol_errors", "Malformed client frames");
        let idle_disconnects = counter(
            &mut registry,
            "idle_disconnects",
            "Connections closed for silence",
        );
        let panics = counter(
            &mut registry,
            "panics",
            "Panics caught in connection tasks or the fan-out",
        );
        let auth_failures = counter(
            &mut registry,
            "auth_failures",
            "Connections closed for a missing, invalid or expired credential",
        );
        let forbidden = counter(
            &mut registry,
            "forbidden",
            "Subscribes and publishes refused by permissions or topic bans",
        );
        let operator_closes = counter(
            &mut registry,
            "operator_closes",
            "Connections closed by a kick, a ban or the per-user connection limit",
        );
        let api_requests = counter(
            &mut registry,
            "api_requests",
            "Backend API requests answered",
        );
        let publish_latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "publish_latency_seconds",
            "Client publish to leader ack",
            publish_latency.clone(),
        );
        let hooks = HookMetrics::default();
        hooks.register(&mut registry);
        if let Some(upstream) = upstream {
            registry.register_collector(Box::new(LinkRejected(upstream)));
        }
        Metrics {
            registry,
            ready,
            connections_open,
            connections_total,
            connections_refused,
            handshake_failures,
            tls_handshake_failures,
            frames_in,
            publishes_in,
            publish_failures,
            deliveries_in,
            messages_out,
            messages_dropped,
            slow_consumer_disconnects,
            rate_limited,
            protocol_errors,
            idle_disconnects,
            panics,
            auth_failures,
            forbidden,
            operator_closes,
            api_requests,
            topics,
            subscriptions,
            publish_latency,
            publish_latency_count: AtomicU64::new(0),
            hooks,
        }
    }

    /// Record one publish round trip.
    pub(crate) fn observe_publish(&self, elapsed: Duration) {
        self.publish_latency.observe(elapsed.as_secs_f64());
        self.publish_latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Copy the counters.
    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            connections_open: g(&self.connections_open),
            connections_total: g(&self.connections_total),
            connections_refused: g(&self.connections_refused),
            handshake_failures: g(&self.handshake_failures),
            tls_handshake_failures: g(&self.tls_handshake_failures),
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
            auth_failures: g(&self.auth_failures),
            forbidden: g(&self.forbidden),
            operator_closes: g(&self.operator_closes),
            api_requests: g(&self.api_requests),

            topics: g(&self.topics),
            subscriptions: g(&self.subscriptions),
            publish_latency_count: g(&self.publish_latency_count),
        }
    }

    /// Prometheus text exposition format (version 0.0.4); `ready` is sampled by the caller
    /// at scrape time.
    pub(crate) fn render(&self, ready: bool) -> String {
        self.ready.set(u64::from(ready));
        let mut text = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
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

    /// What the gateway exported while its text was written by hand, in that order: names,
    /// types and help that dashboards and alerts rely on.
    const EXPORTED: [(&str, &str, &str); 24] = [
        (
            "ready",
            "gauge",
            "1 when a leader is known for every group.",
        ),
        ("connections", "gauge", "Client connections open."),
        (
            "connections_total",
            "counter",
            "Client connections accepted.",
        ),
        (
            "connections_refused_total",
            "counter",
            "Connections refused at the connection limit.",
        ),
        (
            "handshake_failures_total",
            "counter",
            "Connections that never completed their handshake.",
        ),
        (
            "tls_handshake_failures_total",
            "counter",
            "Connections whose TLS handshake failed (client TLS).",
        ),
        (
            "topics",
            "gauge",
            "Topics with local subscribers (or in transition).",
        ),
        ("subscriptions", "gauge", "Connection-topic subscriptions."),
        ("frames_in_total", "counter", "Client frames received."),
        (
            "publishes_in_total",
            "counter",
            "Client publishes received.",
        ),
        (
            "publish_failures_total",
            "counter",
            "Client publishes the cluster did not accept.",
        ),
        (
            "deliveries_in_total",
            "counter",
            "Deliveries received from the cluster.",
        ),
        (
            "messages_out_total",
            "counter",
            "Messages queued to local subscribers.",
        ),
        (
            "messages_dropped_total",
            "counter",
            "Messages dropped for slow subscribers.",
        ),
        (
            "slow_consumer_disconnects_total",
            "counter",
            "Connections closed as slow consumers.",
        ),
        (
            "rate_limited_total",
            "counter",
            "Requests refused by a rate limit.",
        ),
        (
            "protocol_errors_total",
            "counter",
            "Malformed client frames.",
        ),
        (
            "idle_disconnects_total",
            "counter",
            "Connections closed for silence.",
        ),
        (
            "panics_total",
            "counter",
            "Panics caught in connection tasks or the fan-out.",
        ),
        (
            "auth_failures_total",
            "counter",
            "Connections closed for a missing, invalid or expired credential.",
        ),
        (
            "forbidden_total",
            "counter",
            "Subscribes and publishes refused by permissions or topic bans.",
        ),
        (
            "operator_closes_total",
            "counter",
            "Connections closed by a kick, a ban or the per-user connection limit.",
        ),
        (
            "api_requests_total",
            "counter",
            "Backend API requests answered.",
        ),
        (
            "publish_latency_seconds",
            "histogram",
            "Client publish to leader ack.",
        ),
    ];

    #[test]
    fn exports_the_names_types_and_help_the_gateway_always_had() {
        let text = Metrics::default().render(false);
        let described: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
        let expected: Vec<String> = EXPORTED
            .iter()
            .flat_map(|(name, kind, help)| {
                [
                    format!("# HELP firetower_gateway_{name} {help}"),
                    format!("# TYPE firetower_gateway_{name} {kind}"),
                ]
            })
            .collect();
        assert_eq!(described, expected);

        // Every series, in order: one per gauge and counter, the histogram's buckets (bounds
        // written as before: `1`, not `1.0`), sum and count.
        let series: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let histogram = "firetower_gateway_publish_latency_seconds";
        let mut expected: Vec<String> = EXPORTED
            .iter()
            .filter(|(_, kind, _)| *kind != "histogram")
            .map(|(name, _, _)| format!("firetower_gateway_{name}"))
            .collect();
        for bound in [
            "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
            "1", "5", "+Inf",
        ] {
            expected.push(format!("{histogram}_bucket{{le=\"{bound}\"}}"));
        }
        expected.push(format!("{histogram}_sum"));
        expected.push(format!("{histogram}_count"));
        assert_eq!(series, expected);
        assert!(text.contains("firetower_gateway_ready 0\n"));
    }

    /// An upstream that only reports refusals.
    struct Refusing;

    impl Upstream for Refusing {
        fn subscribe(
            &self,
            _: &str,
        ) -> crate::upstream::BoxFuture<'static, Result<(), crate::UpstreamError>> {
            Box::pin(async { Ok(()) })
        }
        fn unsubscribe(
            &self,
            _: &str,
        ) -> crate::upstream::BoxFuture<'static, Result<(), crate::UpstreamError>> {
            Box::pin(async { Ok(()) })
        }
        fn publish(
            &self,
            _: &str,
            _: crate::Payload,
        ) -> crate::upstream::BoxFuture<'static, Result<crate::Stamp, crate::UpstreamError>>
        {
            Box::pin(async { Err(crate::UpstreamError::ShuttingDown) })
        }
        fn ready(&self) -> bool {
            true
        }
        fn link_rejections(&self) -> Vec<(&'static str, u64)> {
            vec![("delivery_invalid_json", 3), ("routing_foreign_cluster", 0)]
        }
    }

    #[test]
    fn link_rejections_are_read_at_every_scrape() {
        let text = Metrics::new(Arc::new(Refusing)).render(true);
        assert!(
            text.contains(
                "# TYPE firetower_gateway_link_rejected_total counter\n\
                 firetower_gateway_link_rejected_total{reason=\"delivery_invalid_json\"} 3\n\
                 firetower_gateway_link_rejected_total{reason=\"routing_foreign_cluster\"} 0\n"
            ),
            "{text}"
        );
        // After every metric the gateway always had.
        assert!(text.find("publish_latency_seconds_count") < text.find("link_rejected"));
    }

    #[test]
    fn the_atomics_the_gateway_updates_are_the_exported_values() {
        let m = Metrics::default();
        inc(&m.connections_total);
        inc(&m.connections_total);
        m.messages_out.fetch_add(5, Ordering::Relaxed);
        m.topics.store(3, Ordering::Relaxed);
        inc(&m.connections_open);
        m.connections_open.fetch_sub(1, Ordering::Relaxed);
        let text = m.render(true);
        assert!(
            text.contains("firetower_gateway_connections_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("firetower_gateway_messages_out_total 5\n"),
            "{text}"
        );
        assert!(text.contains("firetower_gateway_topics 3\n"), "{text}");
        assert!(text.contains("firetower_gateway_connections 0\n"), "{text}");
        let snapshot = m.snapshot();
        assert_eq!(snapshot.connections_total, 2);
        assert_eq!(snapshot.messages_out, 5);
        assert_eq!(snapshot.topics, 3);
        assert_eq!(snapshot.connections_open, 0);
    }
}
