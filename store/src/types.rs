//! The replicated data: commands applied to the state machine, their responses, and the
//! node type stored in memberships.

use std::cell::Cell;
use std::fmt;

pub use firetower_proto::Ban;
use firetower_proto::{BanTarget, Cidr};
use serde::{Deserialize, Deserializer, Serialize};

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
    Subscribe {
        /// The topic.
        topic: String,
        /// The gateway that holds subscribers of it.
        gateway: GatewayId,
    },
    /// `gateway` no longer wants the messages of `topic`.
    Unsubscribe {
        /// The topic.
        topic: String,
        /// The gateway whose last subscriber of it left.
        gateway: GatewayId,
    },
    /// `gateway` opened a session with this epoch (a restart gets a higher epoch).
    /// `lease_ms` is how long the session lives without a heartbeat.
    OpenSession {
        /// The gateway.
        gateway: GatewayId,
        /// Its session epoch; higher than any it opened before.
        epoch: u64,
        /// How long, in milliseconds, the session lives without a heartbeat.
        lease_ms: u64,
    },
    /// The leader saw no heartbeat from `gateway` (session `epoch`) within its lease: the session
    /// and every subscription of that gateway in this group are removed. A stale epoch is a no-op.
    ExpireSession {
        /// The gateway.
        gateway: GatewayId,
        /// The epoch of the session that expired; a newer session is left alone.
        epoch: u64,
    },
    /// Refuse everything from this gateway until unblocked.
    Blacklist {
        /// The gateway.
        gateway: GatewayId,
        /// True to refuse it, false to accept it again.
        blocked: bool,
    },
    /// Set a cluster metadata key (group 0 only by convention). Empty `value` deletes.
    SetMeta {
        /// The metadata key.
        key: String,
        /// Its new value; empty deletes the key.
        value: Vec<u8>,
    },
    /// Several commands applied in order as one log entry: the manager packs the concurrent
    /// proposals of a group into one entry, so one Raft round trip and one fsync serve many.
    /// The response is [`Response::Batch`], one response per command.
    ///
    /// Decoding refuses batches nested deeper than [`MAX_BATCH_DEPTH`].
    Batch(#[serde(deserialize_with = "batch_within_depth")] Vec<Command>),
    // New variants go last: a variant's index is its encoding in logs already on disk.
    /// Add an operator ban (group 0). The state machine gives it the next ban id (the `id` in
    /// `ban` is ignored) and answers [`Response::BanAdded`]; at [`MAX_BANS`] bans (counting
    /// only those not lapsed at `ban.created_ms`) it refuses. Bans that lapsed before
    /// `ban.created_ms` are dropped first when the table is full, so lapsed bans never keep a
    /// new one out.
    AddBan {
        /// The ban; `created_ms` and `expires_ms` come from the proposing manager's clock.
        #[serde(with = "ban_record")]
        ban: Ban,
    },
    /// Remove the ban with this id (group 0); refused when there is none.
    RemoveBan {
        /// The id [`Command::AddBan`] assigned.
        id: u64,
    },
    /// An operator kick (group 0): every gateway closes the connections of `user` opened
    /// before `at_ms`. Kept in a ring of the last [`KICKS_KEPT`] kicks so that every manager
    /// (and a gateway that reconnects soon after) learns it from the table.
    Kick {
        /// The user id.
        user: String,
        /// When the operator asked, Unix milliseconds (the proposing manager's clock).
        at_ms: u64,
    },
    /// Keep history for the topics matching `pattern` (group 0): the last `size` messages,
    /// each for at most `ttl_ms`. Replaces the rule of the same pattern.
    SetHistory {
        /// A topic or a prefix ending in `*` (`firetower_proto::validate_pattern`).
        pattern: String,
        /// Messages kept per topic, at most [`MAX_HISTORY_SIZE`].
        size: u32,
        /// How long a message is kept, milliseconds.
        ttl_ms: u64,
    },
    /// Drop the history rule of `pattern` (group 0). Messages already kept stay until their
    /// size or TTL window passes them.
    RemoveHistory {
        /// The rule's pattern.
        pattern: String,
    },
    /// Turn presence on or off for the topics matching `pattern` (group 0).
    SetPresence {
        /// A topic or a prefix ending in `*`.
        pattern: String,
        /// True to track presence, false to stop.
        enabled: bool,
    },
    /// A message of a topic with history (the topic's group): it gets the topic's next
    /// offset and is kept within `size` messages and `ttl_ms`; answered with
    /// [`Response::HistoryAppended`], which names the gateways subscribed at that point of
    /// the log (the ones it must be delivered to).
    HistoryAppend {
        /// The topic.
        topic: String,
        /// The payload.
        data: Vec<u8>,
        /// True when `data` is JSON text.
        json: bool,
        /// When the leader proposed it, Unix milliseconds (the TTL counts from here).
        at_ms: u64,
        /// The rule's size when it was proposed.
        size: u32,
        /// The rule's TTL when it was proposed, milliseconds.
        ttl_ms: u64,
    },
    /// Presence change of a user on a gateway for a topic (the topic's group): the gateway
    /// now holds `connections` connections of `user` subscribed to `topic` (0 removes it).
    /// Answered [`Response::Presence`] with whether the user joined or left the topic as a
    /// whole (counting every gateway).
    SetPresenceCount {
        /// The topic.
        topic: String,
        /// The user id.
        user: String,
        /// The gateway whose count this is.
        gateway: GatewayId,
        /// Its connections of `user` subscribed to `topic`.
        connections: u32,
    },
}

/// Most messages a history rule keeps per topic.
pub const MAX_HISTORY_SIZE: u32 = 100_000;
/// Longest TTL of a history rule: 30 days.
pub const MAX_HISTORY_TTL_MS: u64 = 30 * 24 * 3_600_000;

/// Most bans group 0 holds; [`Command::AddBan`] beyond it is refused.
pub const MAX_BANS: usize = 100_000;

/// Kicks kept in group 0's table (the newest); older ones are dropped as new ones commit.
pub const KICKS_KEPT: u64 = 256;

/// Deepest nesting of [`Command::Batch`] a decoded command may have. The manager nests two
/// levels at most (a proposal that is itself a batch, packed into a batch); the limit keeps a
/// hostile Raft frame or a damaged log record from recursing until the stack overflows.
pub const MAX_BATCH_DEPTH: usize = 16;

thread_local! {
    /// Batches being decoded on this thread, around the current one (serde gives a
    /// `Deserialize` impl no context to carry the depth in).
    static BATCH_DEPTH: Cell<usize> = const { Cell::new(0) };
}

fn batch_within_depth<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Command>, D::Error> {
    let depth = BATCH_DEPTH.with(Cell::get);
    if depth >= MAX_BATCH_DEPTH {
        return Err(serde::de::Error::custom(format!(
            "command batches nested deeper than {MAX_BATCH_DEPTH} levels"
        )));
    }
    BATCH_DEPTH.with(|c| c.set(depth + 1));
    let commands = Vec::<Command>::deserialize(d);
    BATCH_DEPTH.with(|c| c.set(depth));
    commands
}

/// The outcome of applying one log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Blank entries and membership changes.
    #[default]
    None,
    /// The command was applied; `changed` is false when it was already in effect.
    Applied {
        /// False when the command was already in effect (a repeated subscribe, say).
        changed: bool,
    },
    /// The command was refused (for example a blacklisted gateway); the state did not change.
    Refused {
        /// Why, for the operator.
        reason: String,
    },
    /// The responses of a [`Command::Batch`], in order.
    Batch(Vec<Response>),
    /// A [`Command::AddBan`] committed under this id.
    BanAdded {
        /// The id `ban remove` names.
        id: u64,
    },
    /// A [`Command::HistoryAppend`] committed.
    HistoryAppended {
        /// The message's offset in its topic (1, 2, 3, ...).
        offset: u64,
        /// The topic's history epoch.
        epoch: String,
        /// The term of the entry that carried it.
        term: u64,
        /// The gateways subscribed to the topic at this point of the log.
        gateways: Vec<GatewayId>,
    },
    /// A [`Command::SetPresenceCount`] committed: `Some(true)` when the user joined the topic
    /// (its first connection anywhere), `Some(false)` when it left (its last), `None` otherwise.
    Presence {
        /// The change for the topic as a whole.
        change: Option<bool>,
    },
}

/// A gateway's session as stored in the table: the epoch it opened with and its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The session epoch (grows with each restart of the gateway).
    pub epoch: u64,
    /// How long the session lives without a heartbeat, in milliseconds.
    pub lease_ms: u64,
}

/// A ban as the log and the table store it. [`Ban`]'s own serde form is made for JSON (its
/// target is an adjacently tagged enum), which postcard, not self-describing, cannot read
/// back; this mirror is plain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BanRecord {
    id: u64,
    target: TargetRecord,
    reason: String,
    created_ms: u64,
    expires_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum TargetRecord {
    User(String),
    Ip(String),
    Topic(String),
}

impl From<&Ban> for BanRecord {
    fn from(ban: &Ban) -> Self {
        let target = match &ban.target {
            BanTarget::User(u) => TargetRecord::User(u.clone()),
            BanTarget::Ip(c) => TargetRecord::Ip(c.to_string()),
            BanTarget::Topic(p) => TargetRecord::Topic(p.clone()),
        };
        BanRecord {
            id: ban.id,
            target,
            reason: ban.reason.clone(),
            created_ms: ban.created_ms,
            expires_ms: ban.expires_ms,
        }
    }
}

impl TryFrom<BanRecord> for Ban {
    type Error = firetower_proto::BanError;

    fn try_from(r: BanRecord) -> Result<Self, Self::Error> {
        let target = match r.target {
            TargetRecord::User(u) => BanTarget::User(u),
            TargetRecord::Ip(c) => BanTarget::Ip(Cidr::parse(&c)?),
            TargetRecord::Topic(p) => BanTarget::Topic(p),
        };
        Ok(Ban {
            id: r.id,
            target,
            reason: r.reason,
            created_ms: r.created_ms,
            expires_ms: r.expires_ms,
        })
    }
}

/// `#[serde(with)]` for a [`Ban`] inside a [`Command`]: written as a [`BanRecord`].
mod ban_record {
    use super::{Ban, BanRecord};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(ban: &Ban, s: S) -> Result<S::Ok, S::Error> {
        BanRecord::from(ban).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ban, D::Error> {
        Ban::try_from(BanRecord::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A kick as kept in group 0's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KickRecord {
    /// Position among all kicks ever committed in the group, from 1.
    pub seq: u64,
    /// The user id.
    pub user: String,
    /// When the operator asked, Unix milliseconds.
    pub at_ms: u64,
}

/// The operator controls of group 0 as of one applied index: what managers push to gateways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Controls {
    /// Grows by one with every ban added or removed; 0 before the first.
    pub bans_version: u64,
    /// Every ban held, lapsed or not, by id.
    pub bans: Vec<Ban>,
    /// The `seq` of the newest kick, 0 before the first.
    pub last_kick: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> Command {
        let mut command = Command::Blacklist {
            gateway: 1,
            blocked: true,
        };
        for _ in 0..depth {
            command = Command::Batch(vec![command]);
        }
        command
    }

    #[test]
    fn ban_commands_round_trip_through_postcard() {
        for target in [
            BanTarget::User("u1".into()),
            BanTarget::Ip(Cidr::parse("2001:db8::/32").unwrap()),
            BanTarget::Topic("spam.*".into()),
        ] {
            let command = Command::AddBan {
                ban: Ban {
                    id: 0,
                    target,
                    reason: "why".into(),
                    created_ms: 5,
                    expires_ms: Some(9),
                },
            };
            let bytes = postcard::to_allocvec(&command).unwrap();
            assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), command);
        }
        // A range that is not one (a damaged or hostile entry) is a decode error, not a panic.
        let bad = postcard::to_allocvec(&BanRecord {
            id: 1,
            target: TargetRecord::Ip("10.0.0.0/99".into()),
            reason: String::new(),
            created_ms: 0,
            expires_ms: None,
        })
        .unwrap();
        let mut entry = vec![7u8]; // Command::AddBan's variant index
        entry.extend(bad);
        assert!(postcard::from_bytes::<Command>(&entry).is_err());
    }

    #[test]
    fn batches_up_to_the_depth_limit_decode() {
        for depth in [0, 1, 2, MAX_BATCH_DEPTH] {
            let bytes = postcard::to_allocvec(&nested(depth)).unwrap();
            assert_eq!(
                postcard::from_bytes::<Command>(&bytes).unwrap(),
                nested(depth)
            );
        }
    }

    /// Found by the `raft_wire` fuzz target: 30,000 nested batches in one Raft frame (60 KB)
    /// overflowed the stack of the decoding thread and aborted the manager.
    #[test]
    fn deeply_nested_batches_are_refused_not_a_stack_overflow() {
        let too_deep = postcard::to_allocvec(&nested(MAX_BATCH_DEPTH + 1)).unwrap();
        assert!(postcard::from_bytes::<Command>(&too_deep).is_err());
        // Hand-made, since building the value itself would recurse as deep: Batch (variant
        // 6) of one element, 100,000 times, around a Blacklist (variant 4).
        let mut hostile = [6u8, 1].repeat(100_000);
        hostile.extend_from_slice(&[4, 0, 0]);
        assert!(postcard::from_bytes::<Command>(&hostile).is_err());
        // The depth count is back to zero after a refusal: a normal batch still decodes.
        let ok = postcard::to_allocvec(&nested(2)).unwrap();
        assert_eq!(postcard::from_bytes::<Command>(&ok).unwrap(), nested(2));
    }
}
