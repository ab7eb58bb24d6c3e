//! The seam between the client-facing gateway and the cluster.
//!
//! The gateway server knows the cluster only through [`Upstream`]: it asks for interest in a
//! topic when the first local subscriber arrives, drops it when the last one leaves, and hands
//! publishes to the topic's leader. Deliveries flow the other way, as [`Delivery`] values on
//! the `tokio::sync::mpsc::Receiver<Delivery>` given to [`crate::Gateway::start`].
//!
//! ```text
//!   clients ──▶ Gateway ──subscribe/unsubscribe/publish──▶ dyn Upstream (manager link | fake)
//!   clients ◀── Gateway ◀──────── mpsc::Receiver<Delivery> ◀──────────┘
//! ```
//!
//! Keeping this a trait lets every client-facing behaviour be tested against an in-memory
//! fake, with no QUIC and no Raft.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub(crate) use firetower_client::Payload;
pub(crate) use firetower_client::Position;

/// A boxed, sendable future: what [`Upstream`] methods return (same shape as
/// `futures::future::BoxFuture`, without the dependency).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message for local subscribers, as ordered by the topic's leader.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The topic the message was published to.
    pub topic: Arc<str>,
    /// What was published.
    pub payload: Payload,
    /// The leader's term when it ordered the message.
    pub term: u64,
    /// The message's sequence number within the topic (and term).
    pub seq: u64,
    /// History topics: the topic's epoch and the message's offset.
    pub position: Option<Position>,
}

/// The position a topic's leader gave a published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The leader's term.
    pub term: u64,
    /// The per-topic sequence number.
    pub seq: u64,
    /// History topics: where the message was stored.
    pub position: Option<Position>,
}

/// The users present on a topic over every gateway: `(user, connections)`, sorted by user.
pub type Presence = Vec<(String, u32)>;

/// A page of a history topic's kept messages, as the topic's leader read them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryPage {
    /// False when no history rule covers the topic.
    pub enabled: bool,
    /// The topic's epoch (empty when nothing is kept).
    pub epoch: Arc<str>,
    /// Oldest offset kept (`last + 1` when none).
    pub first: u64,
    /// Newest offset of the epoch (0 when none).
    pub last: u64,
    /// `(offset, term, payload)`, oldest first.
    pub messages: Vec<(u64, u64, Payload)>,
    /// More follow after the last one.
    pub truncated: bool,
}

/// Why the cluster could not do what the gateway asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No manager could take the request (no leader known, no connection). Retry later.
    #[error("the cluster is unavailable: {0}")]
    Unavailable(String),
    /// No answer in time: the request may or may not have taken effect.
    #[error("the cluster did not answer in time; the outcome is unknown")]
    Timeout,
    /// The cluster refused the request; `code` is snake_case and is shown to clients as is.
    #[error("{message}")]
    Refused {
        /// The snake_case error code.
        code: String,
        /// The cluster's explanation.
        message: String,
    },
    /// The gateway is shutting down and no longer forwards requests.
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

impl UpstreamError {
    /// The snake_case code clients see in error frames.
    pub fn code(&self) -> &str {
        match self {
            UpstreamError::Unavailable(_) => "unavailable",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Refused { code, .. } => code,
            UpstreamError::ShuttingDown => "shutting_down",
        }
    }

    /// True when the request may have taken effect although it failed.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, UpstreamError::Timeout)
    }
}

/// What the gateway needs from the cluster. Implemented by the manager link and by test fakes.
pub trait Upstream: Send + Sync + 'static {
    /// The first local subscriber of `topic` arrived: resolves once the cluster committed the
    /// gateway's interest.
    fn subscribe(&self, topic: &str) -> BoxFuture<'static, Result<(), UpstreamError>>;
    /// The last local subscriber left.
    fn unsubscribe(&self, topic: &str) -> BoxFuture<'static, Result<(), UpstreamError>>;
    /// Resolves when the topic's leader accepted and ordered the message (it will reach every
    /// gateway subscribed before).
    fn publish(
        &self,
        topic: &str,
        payload: Payload,
    ) -> BoxFuture<'static, Result<Stamp, UpstreamError>>;
    /// True when a leader is known for every group (feeds `/readyz`).
    fn ready(&self) -> bool;
    /// This gateway now holds `connections` connections of `user` subscribed to `topic`
    /// (presence). Ignored by default.
    fn presence_update(
        &self,
        _topic: &str,
        _user: &str,
        _connections: u32,
    ) -> BoxFuture<'static, Result<(), UpstreamError>> {
        Box::pin(async { Ok(()) })
    }
    /// The users present on a topic over every gateway, `(user, connections)`; `None` when no
    /// presence rule covers it (the default: a fake upstream tracks none).
    fn presence(
        &self,
        _topic: &str,
    ) -> BoxFuture<'static, Result<Option<Presence>, UpstreamError>> {
        Box::pin(async { Ok(None) })
    }
    /// The kept messages of a history topic above offset `after` (one page, at most `limit`;
    /// 0: as many as fit). Unavailable by default (a fake upstream keeps no history).
    fn fetch_history(
        &self,
        _topic: &str,
        _after: u64,
        _limit: u32,
    ) -> BoxFuture<'static, Result<HistoryPage, UpstreamError>> {
        Box::pin(async { Ok(HistoryPage::default()) })
    }
    /// What the gateway refused from the cluster so far, as `(reason, count)`: exported as
    /// `firetower_gateway_link_rejected_total{reason}`. None by default (a fake upstream).
    fn link_rejections(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// The cluster's operator controls (bans, kicks, connection queries). The gateway takes
    /// it once at start; `None` when the upstream has none (a fake) or it was taken.
    fn take_controls(&self) -> Option<crate::control::ControlReceiver> {
        None
    }
    /// The gateway's latest figures, called about once a second; the link sends them with its
    /// next heartbeats. Ignored by default.
    fn report_stats(&self, _stats: crate::control::GatewayStats) {}
}
