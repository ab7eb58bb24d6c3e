//! What the hooks count, as prometheus-client families registered into the gateway's registry
//! (so they share its `firetower_gateway_` prefix and its `/metrics`).
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `hook_calls_total` | `event` | calls made (for `disconnect`: batches POSTed) |
//! | `hook_denials_total` | `event` | answers `"allow":false` |
//! | `hook_failures_total` | `event`, `reason` | calls without a usable answer, by [`FailureReason`] |
//! | `hook_latency_seconds` | `event` | whole call, waiting for a slot included (histogram) |
//! | `hook_in_flight` | `event` | calls holding a slot now |
//! | `hook_disconnects_total` | `outcome` | disconnect events `sent`, dropped on a full queue (`queue_full`) or in a failed batch (`failed`) |
//!
//! A family without series is not rendered, so a gateway without hooks shows none of these;
//! [`HookMetrics::prepare`] creates the series of the configured events at zero so that
//! dashboards see them from the start.

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{FailureReason, HookEvent};

/// Upper bounds (seconds) of the latency buckets: a hook on the same host answers in about a
/// millisecond, one across a network in tens; the default timeout is 1 s.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The `event` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    event: HookEvent,
}

/// The `event` and `reason` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    event: HookEvent,
    reason: FailureReason,
}

/// What happened to a disconnect event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DisconnectOutcome {
    /// In a batch the hook answered with a 2xx.
    Sent,
    /// Dropped: the queue was full.
    QueueFull,
    /// Dropped: its batch got no 2xx answer.
    Failed,
}

impl EncodeLabelValue for DisconnectOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            DisconnectOutcome::Sent => "sent",
            DisconnectOutcome::QueueFull => "queue_full",
            DisconnectOutcome::Failed => "failed",
        })
    }
}

impl EncodeLabelValue for HookEvent {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for FailureReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// The `outcome` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: DisconnectOutcome,
}

type HistogramFamily = Family<EventLabels, Histogram, fn() -> Histogram>;

/// The hooks' metrics. Clones share the same series.
#[derive(Debug, Clone)]
pub(crate) struct HookMetrics {
    calls: Family<EventLabels, Counter>,
    denials: Family<EventLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    latency: HistogramFamily,
    in_flight: Family<EventLabels, Gauge>,
    disconnects: Family<OutcomeLabels, Counter>,
}

impl Default for HookMetrics {
    fn default() -> Self {
        fn histogram() -> Histogram {
            Histogram::new(LATENCY_BUCKETS)
        }
        HookMetrics {
            calls: Family::default(),
            denials: Family::default(),
            failures: Family::default(),
            latency: Family::new_with_constructor(histogram),
            in_flight: Family::default(),
            disconnects: Family::default(),
        }
    }
}

impl HookMetrics {
    /// Register every family into `registry` (the gateway's, prefix `firetower_gateway`).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "hook_calls",
            "Hook calls made, by event (disconnect: batches)",
            self.calls.clone(),
        );
        registry.register(
            "hook_denials",
            "Hook answers that denied, by event",
            self.denials.clone(),
        );
        registry.register(
            "hook_failures",
            "Hook calls without a usable answer, by event and reason",
            self.failures.clone(),
        );
        registry.register(
            "hook_latency_seconds",
            "Hook call duration, waiting for a slot included, by event",
            self.latency.clone(),
        );
        registry.register(
            "hook_in_flight",
            "Hook calls holding a concurrency slot, by event",
            self.in_flight.clone(),
        );
        registry.register(
            "hook_disconnects",
            "Disconnect events sent or dropped, by outcome",
            self.disconnects.clone(),
        );
    }

    /// Create the series of `events` at zero.
    pub(crate) fn prepare(&self, events: &[HookEvent]) {
        for &event in events {
            let labels = EventLabels { event };
            drop(self.calls.get_or_create(&labels));
            drop(self.denials.get_or_create(&labels));
            drop(self.latency.get_or_create(&labels));
            drop(self.in_flight.get_or_create(&labels));
            for reason in FailureReason::ALL {
                drop(
                    self.failures
                        .get_or_create(&FailureLabels { event, reason }),
                );
            }
            if event == HookEvent::Disconnect {
                for outcome in [
                    DisconnectOutcome::Sent,
                    DisconnectOutcome::QueueFull,
                    DisconnectOutcome::Failed,
                ] {
                    drop(self.disconnects.get_or_create(&OutcomeLabels { outcome }));
                }
            }
        }
    }

    pub(crate) fn call(&self, event: HookEvent) {
        self.calls.get_or_create(&EventLabels { event }).inc();
    }

    pub(crate) fn denial(&self, event: HookEvent) {
        self.denials.get_or_create(&EventLabels { event }).inc();
    }

    pub(crate) fn failure(&self, event: HookEvent, reason: FailureReason) {
        self.failures
            .get_or_create(&FailureLabels { event, reason })
            .inc();
    }

    pub(crate) fn observe(&self, event: HookEvent, elapsed: Duration) {
        self.latency
            .get_or_create(&EventLabels { event })
            .observe(elapsed.as_secs_f64());
    }

    /// A guard that counts one call in flight until dropped.
    pub(crate) fn in_flight(&self, event: HookEvent) -> InFlight {
        let gauge = self.in_flight.get_or_create_owned(&EventLabels { event });
        gauge.inc();
        InFlight(gauge)
    }

    pub(crate) fn disconnects(&self, outcome: DisconnectOutcome, n: usize) {
        self.disconnects
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(n as u64);
    }

    /// Calls made for `event`.
    #[cfg(test)]
    pub(crate) fn calls(&self, event: HookEvent) -> u64 {
        self.calls.get_or_create(&EventLabels { event }).get()
    }

    /// Denials of `event`.
    #[cfg(test)]
    pub(crate) fn denials(&self, event: HookEvent) -> u64 {
        self.denials.get_or_create(&EventLabels { event }).get()
    }

    /// Failures of `event` for `reason`.
    #[cfg(test)]
    pub(crate) fn failures(&self, event: HookEvent, reason: FailureReason) -> u64 {
        self.failures
            .get_or_create(&FailureLabels { event, reason })
            .get()
    }

    /// Disconnect events with `outcome`.
    #[cfg(test)]
    pub(crate) fn disconnect_count(&self, outcome: DisconnectOutcome) -> u64 {
        self.disconnects
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }
}

/// One call in flight; the gauge goes down when it is dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nothing_until_prepared_then_every_series() {
        let metrics = HookMetrics::default();
        let mut registry = Registry::with_prefix("firetower_gateway");
        metrics.register(&mut registry);
        let render = |registry: &Registry| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
            text
        };
        assert!(!render(&registry).contains("hook"));

        metrics.prepare(&[HookEvent::Subscribe, HookEvent::Disconnect]);
        metrics.call(HookEvent::Subscribe);
        metrics.failure(HookEvent::Subscribe, FailureReason::Timeout);
        metrics.observe(HookEvent::Subscribe, Duration::from_millis(3));
        metrics.disconnects(DisconnectOutcome::QueueFull, 4);
        drop(metrics.in_flight(HookEvent::Subscribe));
        let text = render(&registry);
        for line in [
            "firetower_gateway_hook_calls_total{event=\"subscribe\"} 1\n",
            "firetower_gateway_hook_calls_total{event=\"disconnect\"} 0\n",
            "firetower_gateway_hook_failures_total{event=\"subscribe\",reason=\"timeout\"} 1\n",
            "firetower_gateway_hook_failures_total{event=\"subscribe\",reason=\"too_large\"} 0\n",
            "firetower_gateway_hook_latency_seconds_bucket{le=\"0.005\",event=\"subscribe\"} 1\n",
            "firetower_gateway_hook_in_flight{event=\"subscribe\"} 0\n",
            "firetower_gateway_hook_disconnects_total{outcome=\"queue_full\"} 4\n",
            "firetower_gateway_hook_denials_total{event=\"disconnect\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("event=\"connect\""));
    }
}
