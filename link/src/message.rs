//! Domain types of the gateway <-> manager link, converted from the generated prost types at
//! the edge (raft-rs style): callers match on [`LinkRequest`] and [`LinkReply`], never on
//! `gateway_request::Op` or `gateway_reply::Result`.
//!
//! ```text
//!   LinkRequest ──From──▶ GatewayRequest ══ frame ══▶ manager
//!   LinkReply ◀─TryFrom── GatewayReply   ◀═ frame ═══ manager   (bad input: MessageError)
//!   Routing   ◀─TryFrom── link::Routing  (reply or session push)
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use firetower_proto::link::{self as pb, gateway_reply, gateway_request};
use firetower_proto::{Epoch, GatewayId};

/// Why a frame from the network is not a valid link message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A request or reply without its `oneof` (an empty or unknown message).
    #[error("the {0} carries no operation")]
    Empty(&'static str),
    /// A routing table with zero groups: the cluster is not initialised yet.
    #[error("the routing table has no groups (is the cluster initialised?)")]
    NoGroups,
    /// An address that must be a socket address is not one.
    #[error("{what} {value:?} is not a socket address")]
    BadAddress {
        /// Which field.
        what: &'static str,
        /// What it held.
        value: String,
    },
}

/// What a gateway asks a manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRequest {
    /// Add the gateway to the topic's subscribers (in session `epoch`, 0 for none).
    Subscribe {
        /// The topic.
        topic: String,
        /// The gateway's session epoch.
        epoch: Epoch,
    },
    /// Remove the gateway from the topic's subscribers.
    Unsubscribe {
        /// The topic.
        topic: String,
    },
    /// Read the topic's gateways at the leader (linearizable).
    TopicGateways {
        /// The topic.
        topic: String,
    },
    /// Publish to a topic.
    Publish {
        /// The topic.
        topic: String,
        /// The payload.
        data: Vec<u8>,
        /// True when `data` is JSON text.
        json: bool,
    },
    /// Read a history topic's kept messages with offsets above `after`.
    FetchHistory {
        /// The topic.
        topic: String,
        /// Offsets above this one (0: from the oldest kept).
        after: u64,
        /// At most this many (0: as many as fit one reply).
        limit: u32,
    },
    /// Who is present on a topic, over every gateway.
    Presence {
        /// The topic.
        topic: String,
    },
    /// The gateway now holds `connections` connections of `user` subscribed to `topic`.
    PresenceUpdate {
        /// The topic.
        topic: String,
        /// The user.
        user: String,
        /// Its connections here subscribed to the topic (0: none).
        connections: u32,
    },
    /// Ask for the routing table.
    GetRouting,
    /// Open this gateway's session (on a long-lived stream).
    OpenSession {
        /// Grows with every start of the gateway.
        epoch: Epoch,
        /// Managers drop the gateway's subscriptions after this long without a heartbeat.
        lease: Duration,
    },
}

impl LinkRequest {
    /// The topic the request is about, if any (it decides the group).
    pub fn topic(&self) -> Option<&str> {
        match self {
            LinkRequest::Subscribe { topic, .. }
            | LinkRequest::Unsubscribe { topic }
            | LinkRequest::TopicGateways { topic }
            | LinkRequest::Publish { topic, .. }
            | LinkRequest::FetchHistory { topic, .. }
            | LinkRequest::Presence { topic }
            | LinkRequest::PresenceUpdate { topic, .. } => Some(topic),
            LinkRequest::GetRouting | LinkRequest::OpenSession { .. } => None,
        }
    }

    /// True when sending the request twice has the effect of sending it once. A publish
    /// repeated after it may have reached a leader could be delivered twice.
    pub fn is_idempotent(&self) -> bool {
        !matches!(self, LinkRequest::Publish { .. })
    }

    /// The wire frame of this request made on behalf of `gateway`.
    pub fn to_frame(&self, gateway: GatewayId) -> pb::GatewayRequest {
        pb::GatewayRequest {
            gateway: gateway.get(),
            op: Some(self.clone().into()),
        }
    }

    /// The gateway and the request of a frame received by a manager.
    pub fn from_frame(frame: pb::GatewayRequest) -> Result<(GatewayId, LinkRequest), MessageError> {
        let op = frame.op.ok_or(MessageError::Empty("request"))?;
        Ok((GatewayId(frame.gateway), op.into()))
    }
}

impl From<LinkRequest> for gateway_request::Op {
    fn from(request: LinkRequest) -> Self {
        use gateway_request::Op;
        match request {
            LinkRequest::Subscribe { topic, epoch } => Op::Subscribe(pb::Subscribe {
                topic,
                epoch: epoch.get(),
            }),
            LinkRequest::Unsubscribe { topic } => Op::Unsubscribe(pb::Unsubscribe { topic }),
            LinkRequest::TopicGateways { topic } => Op::TopicGateways(pb::TopicGateways { topic }),
            LinkRequest::Publish { topic, data, json } => {
                Op::Publish(pb::Publish { topic, data, json })
            }
            LinkRequest::FetchHistory {
                topic,
                after,
                limit,
            } => Op::FetchHistory(pb::FetchHistory {
                topic,
                after,
                limit,
            }),
            LinkRequest::Presence { topic } => Op::Presence(pb::PresenceQuery { topic }),
            LinkRequest::PresenceUpdate {
                topic,
                user,
                connections,
            } => Op::PresenceUpdate(pb::PresenceUpdate {
                topic,
                user,
                connections,
            }),
            LinkRequest::GetRouting => Op::GetRouting(pb::GetRouting {}),
            LinkRequest::OpenSession { epoch, lease } => Op::OpenSession(pb::OpenSession {
                epoch: epoch.get(),
                lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }
}

impl From<gateway_request::Op> for LinkRequest {
    fn from(op: gateway_request::Op) -> Self {
        use gateway_request::Op;
        match op {
            Op::Subscribe(s) => LinkRequest::Subscribe {
                topic: s.topic,
                epoch: Epoch(s.epoch),
            },
            Op::Unsubscribe(u) => LinkRequest::Unsubscribe { topic: u.topic },
            Op::TopicGateways(t) => LinkRequest::TopicGateways { topic: t.topic },
            Op::Publish(p) => LinkRequest::Publish {
                topic: p.topic,
                data: p.data,
                json: p.json,
            },
            Op::FetchHistory(f) => LinkRequest::FetchHistory {
                topic: f.topic,
                after: f.after,
                limit: f.limit,
            },
            Op::Presence(p) => LinkRequest::Presence { topic: p.topic },
            Op::PresenceUpdate(p) => LinkRequest::PresenceUpdate {
                topic: p.topic,
                user: p.user,
                connections: p.connections,
            },
            Op::GetRouting(_) => LinkRequest::GetRouting,
            Op::OpenSession(o) => LinkRequest::OpenSession {
                epoch: Epoch(o.epoch),
                lease: Duration::from_millis(o.lease_ms),
            },
        }
    }
}

/// A committed subscription change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// False when it was already in effect.
    pub changed: bool,
    /// Log index of the committed entry.
    pub index: u64,
}

/// Where a publish was ordered and how far it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The leader's term.
    pub term: u64,
    /// The message's sequence number in the topic's group, within `term`.
    pub seq: u64,
    /// Gateways the message was delivered to.
    pub gateways: u32,
    /// History topics: the message's offset (0 otherwise).
    pub offset: u64,
    /// History topics: the topic's epoch (empty otherwise).
    pub epoch: String,
}

/// A page of a history topic's kept messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryPage {
    /// False when no history rule covers the topic.
    pub enabled: bool,
    /// The topic's epoch; empty when it keeps nothing.
    pub epoch: String,
    /// Oldest offset kept (`last + 1` when none).
    pub first: u64,
    /// Newest offset of the epoch (0 when none).
    pub last: u64,
    /// The messages, oldest first.
    pub messages: Vec<pb::HistoryMessage>,
    /// More follow after the last message's offset.
    pub truncated: bool,
}

/// A manager's answer to a [`LinkRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkReply {
    /// A subscription change committed.
    Done(Written),
    /// The manager does not lead the topic's group.
    NotLeader {
        /// The group.
        group: u32,
        /// Its leader as the manager knows it; `None` during an election.
        leader: Option<SocketAddr>,
    },
    /// The manager refused or failed the request.
    Failure {
        /// snake_case code: `invalid_topic`, `unavailable`, `timeout`, `blacklisted`, ...
        code: String,
        /// The manager's explanation.
        message: String,
    },
    /// The gateways subscribed to a topic.
    Gateways(Vec<u64>),
    /// The routing table.
    Routing(Routing),
    /// A publish reached every subscribed gateway.
    Published(Published),
    /// Kept messages of a history topic.
    History(HistoryPage),
    /// The users present on a topic: `(user, connections)`; `None` when no presence rule
    /// covers it.
    Presence(Option<Vec<(String, u32)>>),
}

impl TryFrom<pb::GatewayReply> for LinkReply {
    type Error = MessageError;

    fn try_from(reply: pb::GatewayReply) -> Result<Self, MessageError> {
        use gateway_reply::Result as R;
        Ok(match reply.result.ok_or(MessageError::Empty("reply"))? {
            R::Done(d) => LinkReply::Done(Written {
                changed: d.changed,
                index: d.index,
            }),
            R::NotLeader(n) => LinkReply::NotLeader {
                group: n.group,
                leader: optional_addr("leader address", &n.leader_quic)?,
            },
            R::Failure(f) => LinkReply::Failure {
                code: f.code,
                message: f.message,
            },
            R::Gateways(g) => LinkReply::Gateways(g.gateways),
            R::Routing(r) => LinkReply::Routing(r.try_into()?),
            R::Published(p) => LinkReply::Published(Published {
                term: p.term,
                seq: p.seq,
                gateways: p.gateways,
                offset: p.offset,
                epoch: p.epoch,
            }),
            R::History(h) => LinkReply::History(HistoryPage {
                enabled: h.enabled,
                epoch: h.epoch,
                first: h.first,
                last: h.last,
                messages: h.messages,
                truncated: h.truncated,
            }),
            R::Presence(p) => LinkReply::Presence(p.enabled.then(|| {
                p.users
                    .into_iter()
                    .map(|u| (u.user, u.connections))
                    .collect()
            })),
        })
    }
}

/// The cluster's routing table as one manager knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// The cluster's id.
    pub cluster_id: String,
    /// Number of groups, at least 1.
    pub groups: u32,
    /// QUIC addresses of the managers.
    pub managers: Vec<SocketAddr>,
    /// Known leaders (groups whose leader the manager does not know are left out).
    pub leaders: Vec<GroupLeader>,
}

/// The leader of one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLeader {
    /// The group.
    pub group: u32,
    /// The leader's QUIC address.
    pub leader: SocketAddr,
}

impl TryFrom<pb::Routing> for Routing {
    type Error = MessageError;

    fn try_from(r: pb::Routing) -> Result<Self, MessageError> {
        if r.groups == 0 {
            return Err(MessageError::NoGroups);
        }
        let managers = r
            .managers
            .iter()
            .map(|m| addr("manager address", &m.quic))
            .collect::<Result<_, _>>()?;
        let mut leaders = Vec::new();
        for l in &r.leaders {
            if let Some(leader) = optional_addr("leader address", &l.leader_quic)? {
                leaders.push(GroupLeader {
                    group: l.group,
                    leader,
                });
            }
        }
        Ok(Routing {
            cluster_id: r.cluster_id,
            groups: r.groups,
            managers,
            leaders,
        })
    }
}

fn addr(what: &'static str, value: &str) -> Result<SocketAddr, MessageError> {
    value.parse().map_err(|_| MessageError::BadAddress {
        what,
        value: value.to_string(),
    })
}

/// An address where the empty string means "none known".
fn optional_addr(what: &'static str, value: &str) -> Result<Option<SocketAddr>, MessageError> {
    if value.is_empty() {
        return Ok(None);
    }
    addr(what, value).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pb_routing() -> pb::Routing {
        pb::Routing {
            cluster_id: "c-1".into(),
            groups: 2,
            managers: vec![pb::ManagerAddr {
                id: 1,
                quic: "127.0.0.1:6666".into(),
            }],
            leaders: vec![
                pb::GroupLeader {
                    group: 0,
                    leader_id: 1,
                    leader_quic: "127.0.0.1:6666".into(),
                },
                pb::GroupLeader {
                    group: 1,
                    leader_id: 0,
                    leader_quic: String::new(),
                },
            ],
        }
    }

    #[test]
    fn routing_converts_and_leaves_unknown_leaders_out() {
        let r = Routing::try_from(pb_routing()).unwrap();
        let addr: SocketAddr = "127.0.0.1:6666".parse().unwrap();
        assert_eq!(r.groups, 2);
        assert_eq!(r.managers, vec![addr]);
        assert_eq!(
            r.leaders,
            vec![GroupLeader {
                group: 0,
                leader: addr
            }]
        );
    }

    #[test]
    fn bad_routing_is_a_typed_error() {
        let mut none = pb_routing();
        none.groups = 0;
        assert_eq!(Routing::try_from(none), Err(MessageError::NoGroups));
        let mut bad = pb_routing();
        bad.managers[0].quic = "nowhere".into();
        assert!(matches!(
            Routing::try_from(bad),
            Err(MessageError::BadAddress { .. })
        ));
    }

    #[test]
    fn replies_convert() {
        let empty = pb::GatewayReply { result: None };
        assert_eq!(
            LinkReply::try_from(empty),
            Err(MessageError::Empty("reply"))
        );
        let not_leader = pb::GatewayReply {
            result: Some(gateway_reply::Result::NotLeader(pb::NotLeader {
                group: 3,
                leader_id: 0,
                leader_quic: String::new(),
            })),
        };
        assert_eq!(
            LinkReply::try_from(not_leader),
            Ok(LinkReply::NotLeader {
                group: 3,
                leader: None
            })
        );
        let done = pb::GatewayReply {
            result: Some(gateway_reply::Result::Done(pb::Done {
                changed: true,
                index: 9,
            })),
        };
        assert_eq!(
            LinkReply::try_from(done),
            Ok(LinkReply::Done(Written {
                changed: true,
                index: 9
            }))
        );
    }

    #[test]
    fn only_publish_is_not_idempotent() {
        let publish = LinkRequest::Publish {
            topic: "t".into(),
            data: vec![],
            json: true,
        };
        assert!(!publish.is_idempotent());
        assert!(LinkRequest::Unsubscribe { topic: "t".into() }.is_idempotent());
        assert_eq!(publish.topic(), Some("t"));
        assert_eq!(LinkRequest::GetRouting.topic(), None);
    }

    fn arb_request() -> impl Strategy<Value = LinkRequest> {
        prop_oneof![
            (".{0,16}", any::<u64>()).prop_map(|(topic, epoch)| LinkRequest::Subscribe {
                topic,
                epoch: Epoch(epoch)
            }),
            ".{0,16}".prop_map(|topic| LinkRequest::Unsubscribe { topic }),
            ".{0,16}".prop_map(|topic| LinkRequest::TopicGateways { topic }),
            (
                ".{0,16}",
                proptest::collection::vec(any::<u8>(), 0..16),
                any::<bool>()
            )
                .prop_map(|(topic, data, json)| LinkRequest::Publish {
                    topic,
                    data,
                    json
                }),
            Just(LinkRequest::GetRouting),
            (any::<u64>(), 0u64..1_000_000).prop_map(|(epoch, ms)| LinkRequest::OpenSession {
                epoch: Epoch(epoch),
                lease: Duration::from_millis(ms)
            }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip_through_the_wire_types(gateway: u64, request in arb_request()) {
            let frame = request.to_frame(GatewayId(gateway));
            prop_assert_eq!(LinkRequest::from_frame(frame), Ok((GatewayId(gateway), request)));
        }

        #[test]
        fn converting_any_reply_never_panics(
            code in ".{0,8}",
            quic in ".{0,24}",
            groups: u32,
        ) {
            let replies = [
                gateway_reply::Result::NotLeader(pb::NotLeader {
                    group: 1,
                    leader_id: 1,
                    leader_quic: quic.clone(),
                }),
                gateway_reply::Result::Failure(pb::Failure { code, message: String::new() }),
                gateway_reply::Result::Routing(pb::Routing {
                    cluster_id: String::new(),
                    groups,
                    managers: vec![pb::ManagerAddr { id: 1, quic: quic.clone() }],
                    leaders: vec![pb::GroupLeader { group: 0, leader_id: 1, leader_quic: quic }],
                }),
            ];
            for r in replies {
                let _ = LinkReply::try_from(pb::GatewayReply { result: Some(r) });
            }
        }
    }
}
