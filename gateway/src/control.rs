//! Operator controls that reach a gateway from the cluster, and what the gateway reports back:
//! the seam between the manager link ([`crate::ClusterUpstream`]) and the connections.
//!
//! ```text
//!   cluster ban/kick/connections ─▶ managers ─▶ session stream ─▶ ClusterUpstream
//!        ─▶ ControlEvent (mpsc) ─▶ gateway: refuse/close (4403), answer queries
//!   gateway ─▶ GatewayStats every second ─▶ Upstream::report_stats ─▶ heartbeats ─▶ managers
//! ```

use std::sync::Arc;

use firetower_proto::Ban;
use tokio::sync::oneshot;

/// Something the cluster tells the gateway to do.
#[derive(Debug)]
pub enum ControlEvent {
    /// The whole ban list as committed in group 0 (lapsed bans may still be in it: check
    /// [`Ban::is_active`]); it replaces the previous one. Sent when a session opens and after
    /// every change.
    Bans(Arc<Vec<Ban>>),
    /// Close every connection of `user` that opened before `at_ms` (Unix milliseconds) with
    /// 4403.
    Kick {
        /// The user id.
        user: String,
        /// When the operator asked, Unix milliseconds.
        at_ms: u64,
    },
    /// A user joined (its first connection anywhere subscribed) or left `topic`: told to
    /// the connections that subscribed with `join_leave`.
    Presence {
        /// The topic.
        topic: Arc<str>,
        /// The user.
        user: String,
        /// True for a join.
        joined: bool,
    },
    /// Where is `user` connected on this gateway.
    Connections {
        /// The user id.
        user: String,
        /// Where the answer goes.
        reply: oneshot::Sender<Vec<ConnectionInfo>>,
    },
}

/// One connection of a user, for `cluster connections --user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The gateway's id for the connection.
    pub conn: String,
    /// The client's address, `ip:port`.
    pub remote: String,
    /// When it connected, Unix milliseconds.
    pub since_ms: u64,
    /// Topics it holds.
    pub topics: Vec<String>,
}

/// What a gateway reports with its heartbeats, for `cluster stats`. Counters are totals since
/// the gateway started; managers derive rates from successive reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Open client connections.
    pub connections: u64,
    /// (connection, topic) pairs held.
    pub subscriptions: u64,
    /// Distinct topics held.
    pub topics: u64,
    /// Publishes received (client frames and the backend API).
    pub messages_in_total: u64,
    /// Messages delivered to clients.
    pub messages_out_total: u64,
    /// Messages dropped for slow clients.
    pub dropped_total: u64,
}

/// The receiving end of the cluster's control events, taken once by the gateway.
pub type ControlReceiver = tokio::sync::mpsc::Receiver<ControlEvent>;
