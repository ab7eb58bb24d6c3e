//! The manager's Prometheus metrics (`prometheus-client`), every name prefixed
//! `firetower_manager_`. Served as text on `GET /metrics` by `metrics_http.rs`.
//!
//! ```text
//!   events, counted where they happen          state, sampled when scraped
//!   ─────────────────────────────────          ───────────────────────────
//!   proposer: proposals, commits, latency      Node::refresh_metrics: role, term,
//!   publish: publishes{outcome}, deliveries    commit and apply index, sessions,
//!   WAL writer thread: fsync latency           stamp map size
//!   (through firetower_store::FsyncObserver)
//! ```
//!
//! Rates (proposals and commits per second) are PromQL's job: `rate(..._total[1m])`.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use firetower_raft::GroupId;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Every metric name starts with this.
const PREFIX: &str = "firetower_manager";

/// The label of per-group metrics.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GroupLabel {
    /// The Raft group.
    pub group: u32,
}

/// A group's Raft role, as the `role` label of `firetower_manager_role`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum Role {
    leader,
    follower,
    candidate,
    learner,
}

impl Role {
    const ALL: [Role; 4] = [Role::leader, Role::follower, Role::candidate, Role::learner];
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    group: u32,
    role: Role,
}

/// How a publish ended, as the `outcome` label of `firetower_manager_publishes_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum PublishOutcome {
    /// Every subscribed gateway confirmed it.
    published,
    /// Another manager leads the topic's group.
    not_leader,
    /// Refused before anything was queued (no lease, no session, shutting down...).
    unavailable,
    /// Queued, but not confirmed by every gateway: outcome unknown.
    timeout,
    /// Refused for another reason (a bad request).
    failed,
}

impl PublishOutcome {
    const ALL: [PublishOutcome; 5] = [
        PublishOutcome::published,
        PublishOutcome::not_leader,
        PublishOutcome::unavailable,
        PublishOutcome::timeout,
        PublishOutcome::failed,
    ];
}

/// Which listening port refused a connection, as the `port` label of
/// `firetower_manager_handshakes_refused_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum Port {
    /// The QUIC port (Raft and the gateway link).
    quic,
    /// The admin gRPC port.
    admin,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabel {
    port: Port,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: PublishOutcome,
}

/// The metrics of one manager. Cheap to share (`Arc`); recording never blocks for long.
pub(crate) struct ManagerMetrics {
    registry: Registry,
    role: Family<RoleLabels, Gauge>,
    term: Family<GroupLabel, Gauge>,
    commit_index: Family<GroupLabel, Gauge>,
    apply_index: Family<GroupLabel, Gauge>,
    proposals: Family<GroupLabel, Counter>,
    commits: Family<GroupLabel, Counter>,
    commit_latency: Family<GroupLabel, Histogram>,
    stamp_topics: Family<GroupLabel, Gauge>,
    wal_fsync: Histogram,
    gateway_sessions: Gauge<i64, std::sync::atomic::AtomicI64>,
    session_queued_bytes: Gauge<i64, std::sync::atomic::AtomicI64>,
    sessions_closed_stalled: Counter<u64, AtomicU64>,
    publishes: Family<OutcomeLabel, Counter>,
    deliveries: Counter<u64, AtomicU64>,
    handshakes_refused: Family<PortLabel, Counter>,
}

impl fmt::Debug for ManagerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerMetrics").finish_non_exhaustive()
    }
}

/// Latency buckets from 100 µs to about 6.5 s, doubling: commits on a fast disk take well
/// under a millisecond, a failover stretches them to seconds.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_1, 2.0, 17)
}

impl ManagerMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let role = Family::<RoleLabels, Gauge>::default();
        registry.register(
            "role",
            "Raft role of this manager in each group: 1 for the current role, 0 otherwise",
            role.clone(),
        );
        let term = Family::<GroupLabel, Gauge>::default();
        registry.register("term", "Current Raft term of each group", term.clone());
        let commit_index = Family::<GroupLabel, Gauge>::default();
        registry.register(
            "commit_index",
            "Highest log index known committed in each group",
            commit_index.clone(),
        );
        let apply_index = Family::<GroupLabel, Gauge>::default();
        registry.register(
            "apply_index",
            "Highest log index applied to the state machine in each group",
            apply_index.clone(),
        );
        let proposals = Family::<GroupLabel, Counter>::default();
        registry.register(
            "proposals",
            "Commands proposed by this manager as a group's leader",
            proposals.clone(),
        );
        let commits = Family::<GroupLabel, Counter>::default();
        registry.register(
            "commits",
            "Commands proposed here that committed and were applied",
            commits.clone(),
        );
        let commit_latency = Family::<GroupLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "commit_latency_seconds",
            "Time from proposing a command to its being applied",
            commit_latency.clone(),
        );
        let stamp_topics = Family::<GroupLabel, Gauge>::default();
        registry.register(
            "stamp_map_topics",
            "Topics with a stamp counter in the current term of each group (memory of the \
             publish path)",
            stamp_topics.clone(),
        );
        let wal_fsync = Histogram::new(latency_buckets());
        registry.register(
            "wal_fsync_seconds",
            "Duration of each fdatasync of the write-ahead log",
            wal_fsync.clone(),
        );
        let gateway_sessions = Gauge::default();
        registry.register(
            "gateway_sessions",
            "Gateways with a live session stream to this manager",
            gateway_sessions.clone(),
        );
        let session_queued_bytes = Gauge::default();
        registry.register(
            "session_queued_bytes",
            "Bytes queued for gateway session streams and not yet handed to QUIC, all sessions",
            session_queued_bytes.clone(),
        );
        let sessions_closed_stalled = Counter::default();
        registry.register(
            "sessions_closed_stalled",
            "Gateway sessions closed because their delivery queue was full (not reading)",
            sessions_closed_stalled.clone(),
        );
        let publishes = Family::<OutcomeLabel, Counter>::default();
        for outcome in PublishOutcome::ALL {
            drop(publishes.get_or_create(&OutcomeLabel { outcome }));
        }
        registry.register(
            "publishes",
            "Publish requests handled here, by outcome",
            publishes.clone(),
        );
        let deliveries = Counter::default();
        registry.register(
            "deliveries",
            "Deliveries queued to gateway sessions (one per subscribed gateway per message)",
            deliveries.clone(),
        );
        let handshakes_refused = Family::<PortLabel, Counter>::default();
        for port in [Port::quic, Port::admin] {
            drop(handshakes_refused.get_or_create(&PortLabel { port }));
        }
        registry.register(
            "handshakes_refused",
            "Connections refused before their handshake: the source address started more \
             handshakes than its rate limit allows",
            handshakes_refused.clone(),
        );
        ManagerMetrics {
            registry,
            role,
            term,
            commit_index,
            apply_index,
            proposals,
            commits,
            commit_latency,
            stamp_topics,
            wal_fsync,
            gateway_sessions,
            session_queued_bytes,
            sessions_closed_stalled,
            publishes,
            deliveries,
            handshakes_refused,
        }
    }

    /// Create the series of a group that started here, at zero, so that dashboards and
    /// `rate()` see them from the start rather than from the first event.
    pub(crate) fn add_group(&self, group: GroupId) {
        let label = GroupLabel { group: group.get() };
        drop(self.proposals.get_or_create(&label));
        drop(self.commits.get_or_create(&label));
        drop(self.commit_latency.get_or_create(&label));
    }

    /// The text exposition of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// A group's Raft state as last sampled.
    pub(crate) fn set_group(&self, group: GroupId, sample: GroupSample) {
        let label = GroupLabel { group: group.get() };
        for role in Role::ALL {
            let value = i64::from(sample.role == Some(role));
            self.role
                .get_or_create(&RoleLabels {
                    group: group.get(),
                    role,
                })
                .set(value);
        }
        self.term
            .get_or_create(&label)
            .set(saturating_i64(sample.term));
        self.commit_index
            .get_or_create(&label)
            .set(saturating_i64(sample.committed));
        self.apply_index
            .get_or_create(&label)
            .set(saturating_i64(sample.applied));
        self.stamp_topics
            .get_or_create(&label)
            .set(saturating_i64(sample.stamp_topics as u64));
    }

    /// `commands` were proposed in `group`.
    pub(crate) fn proposed(&self, group: GroupId, commands: u64) {
        self.proposals
            .get_or_create(&GroupLabel { group: group.get() })
            .inc_by(commands);
    }

    /// `commands` proposed in `group` committed and were applied `took` after proposal.
    pub(crate) fn committed(&self, group: GroupId, commands: u64, took: Duration) {
        let label = GroupLabel { group: group.get() };
        self.commits.get_or_create(&label).inc_by(commands);
        self.commit_latency
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    /// A publish ended with `outcome`.
    pub(crate) fn published(&self, outcome: PublishOutcome) {
        self.publishes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// `n` deliveries were queued to gateway sessions.
    pub(crate) fn delivered(&self, n: u64) {
        self.deliveries.inc_by(n);
    }

    /// The number of live gateway sessions.
    pub(crate) fn set_gateway_sessions(&self, n: usize) {
        self.gateway_sessions.set(saturating_i64(n as u64));
    }

    /// The bytes queued for every live session.
    pub(crate) fn set_session_queued_bytes(&self, n: usize) {
        self.session_queued_bytes.set(saturating_i64(n as u64));
    }

    /// A session was closed for not reading its deliveries.
    pub(crate) fn session_closed_stalled(&self) {
        self.sessions_closed_stalled.inc();
    }

    /// A connection to `port` was refused by the handshake rate limit.
    pub(crate) fn handshake_refused(&self, port: Port) {
        self.handshakes_refused
            .get_or_create(&PortLabel { port })
            .inc();
    }
}

impl firetower_store::FsyncObserver for ManagerMetrics {
    fn fsync_done(&self, took: Duration, _bytes: u64) {
        self.wal_fsync.observe(took.as_secs_f64());
    }
}

/// One group's Raft state at a scrape.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GroupSample {
    /// `None` while the group shuts down.
    pub role: Option<Role>,
    pub term: u64,
    pub committed: u64,
    pub applied: u64,
    pub stamp_topics: usize,
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_group_has_its_series_at_zero() {
        let m = ManagerMetrics::new();
        m.add_group(GroupId(4));
        let text = m.encode();
        for want in [
            "firetower_manager_proposals_total{group=\"4\"} 0",
            "firetower_manager_commits_total{group=\"4\"} 0",
            "firetower_manager_commit_latency_seconds_count{group=\"4\"} 0",
            "firetower_manager_publishes_total{outcome=\"timeout\"} 0",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn every_metric_is_named_with_the_prefix() {
        let m = ManagerMetrics::new();
        m.set_group(
            GroupId(0),
            GroupSample {
                role: Some(Role::leader),
                term: 3,
                committed: 7,
                applied: 6,
                stamp_topics: 2,
            },
        );
        m.proposed(GroupId(0), 2);
        m.committed(GroupId(0), 2, Duration::from_millis(3));
        m.published(PublishOutcome::published);
        m.delivered(4);
        m.set_gateway_sessions(1);
        firetower_store::FsyncObserver::fsync_done(&m, Duration::from_micros(300), 10);
        let text = m.encode();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.starts_with("firetower_manager_"), "{line}");
        }
        for want in [
            "firetower_manager_role{group=\"0\",role=\"leader\"} 1",
            "firetower_manager_role{group=\"0\",role=\"follower\"} 0",
            "firetower_manager_term{group=\"0\"} 3",
            "firetower_manager_commit_index{group=\"0\"} 7",
            "firetower_manager_apply_index{group=\"0\"} 6",
            "firetower_manager_proposals_total{group=\"0\"} 2",
            "firetower_manager_commits_total{group=\"0\"} 2",
            "firetower_manager_commit_latency_seconds_count{group=\"0\"} 1",
            "firetower_manager_wal_fsync_seconds_count 1",
            "firetower_manager_gateway_sessions 1",
            "firetower_manager_publishes_total{outcome=\"published\"} 1",
            "firetower_manager_deliveries_total 4",
            "firetower_manager_stamp_map_topics{group=\"0\"} 2",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
