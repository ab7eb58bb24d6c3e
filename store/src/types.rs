//! The replicated data: commands applied to the state machine, their responses, and the
//! node type stored in memberships.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies a gateway process across restarts (given with `firetower gateway --id`).
pub type GatewayId = u64;

/// Identifies a manager (given with `firetower manager --id`). Openraft's `NodeId`.
pub type ManagerId = u64;

/// What a membership records about a manager: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerNode {
    /// QUIC address (`host:port`) for Raft RPCs and gateways.
    pub quic: String,
    /// gRPC admin address (`host:port`).
    pub admin: String,
}

impl fmt::Display for ManagerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "quic={} admin={}", self.quic, self.admin)
    }
}

/// A change to one group's replicated state. Applied in log order by every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `gateway` wants the messages of `topic`.
    Subscribe { topic: String, gateway: GatewayId },
    /// `gateway` no longer wants the messages of `topic`.
    Unsubscribe { topic: String, gateway: GatewayId },
    /// `gateway` opened a session with this epoch (a restart gets a higher epoch).
    /// `lease_ms` is how long the session lives without a heartbeat.
    OpenSession {
        gateway: GatewayId,
        epoch: u64,
        lease_ms: u64,
    },
    /// The leader saw no heartbeat from `gateway` (session `epoch`) within its lease: the session
    /// and every subscription of that gateway in this group are removed. A stale epoch is a no-op.
    ExpireSession { gateway: GatewayId, epoch: u64 },
    /// Refuse everything from this gateway until unblocked.
    Blacklist { gateway: GatewayId, blocked: bool },
    /// Set a cluster metadata key (group 0 only by convention). Empty `value` deletes.
    SetMeta { key: String, value: Vec<u8> },
    /// Several commands applied in order as one log entry: the manager packs the concurrent
    /// proposals of a group into one entry, so one Raft round trip and one fsync serve many.
    /// The response is [`Response::Batch`], one response per command.
    Batch(Vec<Command>),
}

/// The outcome of applying one log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Blank entries and membership changes.
    #[default]
    None,
    /// The command was applied; `changed` is false when it was already in effect.
    Applied { changed: bool },
    /// The command was refused (for example a blacklisted gateway); the state did not change.
    Refused { reason: String },
    /// The responses of a [`Command::Batch`], in order.
    Batch(Vec<Response>),
}

/// A gateway's session as stored in the table: the epoch it opened with and its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The session epoch (grows with each restart of the gateway).
    pub epoch: u64,
    /// How long the session lives without a heartbeat, in milliseconds.
    pub lease_ms: u64,
}
