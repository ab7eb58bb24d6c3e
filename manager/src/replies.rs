//! The gateway link's replies that several services give: a failure with its code, a
//! `NotLeader` redirect, and the routing table as this manager knows it.

use firetower_proto::link::{
    gateway_reply, Failure, GatewayReply, GroupLeader, ManagerAddr, NotLeader, Routing,
};
use firetower_raft::{GroupId, ManagerNode};

use crate::node::Node;

/// A `Failure` reply with a stable `code` the gateway acts on and a message for people.
pub(crate) fn failure(code: &str, message: impl Into<String>) -> GatewayReply {
    GatewayReply {
        result: Some(gateway_reply::Result::Failure(Failure {
            code: code.to_string(),
            message: message.into(),
        })),
    }
}

/// Another manager (or none known) leads `group`.
pub(crate) fn not_leader(group: GroupId, leader: Option<(u64, ManagerNode)>) -> GatewayReply {
    let (leader_id, leader_quic) = leader.map(|(id, n)| (id, n.quic)).unwrap_or_default();
    GatewayReply {
        result: Some(gateway_reply::Result::NotLeader(NotLeader {
            group: group.get(),
            leader_id,
            leader_quic,
        })),
    }
}

/// The routing table as this manager knows it.
pub(crate) fn routing(node: &Node) -> Routing {
    let managers = node
        .known_managers()
        .into_iter()
        .map(|(id, n)| ManagerAddr { id, quic: n.quic })
        .collect();
    let leaders = node
        .group_ids()
        .map(|group| {
            let (leader_id, leader_quic) = node
                .leader_of(group)
                .map(|(id, n)| (id, n.quic))
                .unwrap_or_default();
            GroupLeader {
                group: group.get(),
                leader_id,
                leader_quic,
            }
        })
        .collect();
    Routing {
        cluster_id: node.cluster_id(),
        groups: node.group_count(),
        managers,
        leaders,
    }
}
