//! Topic subscriptions in the replicated table: writes (subscribe, unsubscribe) through the
//! group's proposer, and linearizable reads of a topic's gateways (read index).
//!
//! ```text
//!   Subscribe{topic, epoch} ─▶ older session of this gateway in the group? ─▶ Batch[Expire, Sub]
//!                           ─▶ proposer of group(topic) ─▶ Done{changed, index} | NotLeader
//!   TopicGateways{topic}    ─▶ ensure_linearizable (quorum) ─▶ the table's gateways
//! ```
//!
//! **A subscription needs a live session on the group's leader** ([`session_for_subscribe`]):
//! a `Subscribe` is committed only when the gateway has a session stream with this manager
//! and the request belongs to it (its epoch, or 0 for none). Otherwise the request waits up
//! to [`SUBSCRIBE_SESSION_WAIT`] for the session (a gateway that just started or reconnected
//! may subscribe a moment before its session stream is registered here) and is then refused
//! with `no_session` (or `NotLeader` when another manager leads the group); one from an
//! earlier run than the live session is refused with `stale_session`. Why: deliveries go only
//! over session streams, so a subscription without one can never be served, and every
//! publish to its topic would wait for a gateway that does not exist. Subscriptions left
//! without a session anyway (committed before this rule, or under an earlier leader) are
//! swept by the lease task (sessions.rs, leases.rs).

use std::time::Duration;

use firetower_proto::link::{gateway_reply, Done, GatewayReply};
use firetower_proto::{Epoch, GatewayId};
use firetower_raft::{group_of, Command, GroupId, ManagerNode, Response};
use openraft::error::{CheckIsLeaderError, RaftError};

use crate::node::Node;
use crate::proposer::ProposeError;
use crate::replies::{failure, not_leader};
use crate::session_table::{admit_subscribe, SubscribeAdmission};

/// Why a linearizable read could not be served here.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Another manager leads the group (or none is known).
    NotLeader { leader: Option<(u64, ManagerNode)> },
    /// No quorum, a timeout, or a stopped group.
    Unavailable(String),
}

/// How long a `Subscribe` waits for the gateway's session stream to be registered here.
pub(crate) const SUBSCRIBE_SESSION_WAIT: Duration = Duration::from_millis(1_500);

/// Ok when `gateway` may subscribe in session `epoch` in `group` through this manager (the
/// rule in the module doc); otherwise the reply that refuses it.
pub(crate) async fn session_for_subscribe(
    node: &Node,
    gateway: GatewayId,
    epoch: Epoch,
    group: GroupId,
) -> Result<(), GatewayReply> {
    let deadline = tokio::time::Instant::now() + SUBSCRIBE_SESSION_WAIT;
    loop {
        let live = node.sessions().get(gateway).map(|h| h.epoch);
        match admit_subscribe(epoch, live) {
            SubscribeAdmission::Admitted => return Ok(()),
            SubscribeAdmission::Stale { live } => {
                return Err(failure(
                    "stale_session",
                    format!(
                        "gateway {gateway} subscribes in session {epoch}, older than its live \
                         session {live}; nothing was committed"
                    ),
                ))
            }
            SubscribeAdmission::NoSession => {}
        }
        if !node.led_groups().contains(&group) {
            // The leader applies the same rule with its own sessions.
            return Err(not_leader(group, node.leader_of(group)));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(failure(
                "no_session",
                format!(
                    "gateway {gateway} has no session with this manager, which leads group \
                     {group}: a gateway subscribes only while its session stream \
                     (OpenSession) is open here; nothing was committed"
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The epoch of an older session of `gateway` still held by the group of `topic` (as this
/// manager applied it), when the request comes from a newer session `epoch`.
pub(crate) fn stale_session(
    node: &Node,
    gateway: GatewayId,
    epoch: Epoch,
    topic: &str,
) -> Option<Epoch> {
    if epoch.get() == 0 || firetower_proto::validate_topic(topic).is_err() {
        return None;
    }
    let group = group_of(topic, node.group_count());
    let stored = Epoch(node.reader(group)?.session(gateway.get()).ok()??.epoch);
    (stored < epoch).then_some(stored)
}

pub(crate) async fn write(node: &Node, group: GroupId, command: Command) -> GatewayReply {
    let Some(proposer) = node.proposer(group) else {
        return failure("unavailable", format!("group {group} is not running here"));
    };
    let proposed = proposer.propose(command).await.map(|(response, index)| {
        // A batch of our own (expire a stale session, then subscribe) answers for its last
        // command.
        match response {
            Response::Batch(mut responses) => (responses.pop().unwrap_or_default(), index),
            other => (other, index),
        }
    });
    match proposed {
        Ok((Response::Applied { changed }, index)) => GatewayReply {
            result: Some(gateway_reply::Result::Done(Done { changed, index })),
        },
        Ok((Response::Refused { reason }, _)) => failure("refused", reason),
        Ok((other, _)) => failure("internal", format!("unexpected response {other:?}")),
        Err(ProposeError::NotLeader(leader)) => not_leader(group, leader),
        Err(ProposeError::Timeout) => failure(
            "timeout",
            format!(
                "group {group} did not commit in time; the write may or may not take effect: \
                 retry (subscribe and unsubscribe are idempotent)"
            ),
        ),
        Err(ProposeError::Unavailable(m)) => failure("unavailable", format!("group {group}: {m}")),
    }
}

/// The gateways of a topic, read after confirming leadership with a quorum (read index), so
/// the answer reflects every write acknowledged before the read began.
pub(crate) async fn linearizable_gateways(
    node: &Node,
    group: GroupId,
    topic: &str,
) -> Result<Vec<u64>, ReadError> {
    confirmed_reader(node, group)
        .await?
        .gateways(topic)
        .map_err(|e| ReadError::Unavailable(format!("reading group {group}: {e}")))
}

/// The group's table once this manager confirmed with a quorum that it leads (read index) and
/// applied everything committed before: what it then reads reflects every write acknowledged
/// before the call.
pub(crate) async fn confirmed_reader(
    node: &Node,
    group: GroupId,
) -> Result<firetower_store::TableReader, ReadError> {
    let raft = node
        .raft(group)
        .ok_or_else(|| ReadError::Unavailable(format!("group {group} is not running here")))?;
    let reader = node
        .reader(group)
        .ok_or_else(|| ReadError::Unavailable(format!("group {group} is not running here")))?;
    if node.config().unsafe_stale_reads {
        // The deliberately broken mode the Jepsen harness must catch: no leadership check.
        return Ok(reader);
    }
    let timeout = Duration::from_millis(node.config().raft.election_timeout_max_ms * 2);
    match tokio::time::timeout(timeout, raft.ensure_linearizable()).await {
        Err(_) => Err(ReadError::Unavailable(format!(
            "group {group}: leadership not confirmed within {timeout:?}"
        ))),
        Ok(Ok(_)) => Ok(reader),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            Err(ReadError::NotLeader {
                leader: f.leader_id.zip(f.leader_node),
            })
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => Err(
            ReadError::Unavailable(format!("group {group}: no quorum: {e}")),
        ),
        Ok(Err(RaftError::Fatal(e))) => Err(ReadError::Unavailable(format!("group {group}: {e}"))),
    }
}
