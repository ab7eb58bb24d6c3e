//! History topics and presence on the leader of a topic's group.
//!
//! ```text
//!  Publish{topic} with a history rule ─▶ leader of group(topic)
//!      │ propose HistoryAppend (batched with the group's other proposals)
//!      ▼
//!  every replica applies it in log order: offset = last + 1, kept within size/TTL
//!      │ on the leader, the apply observer (below) queues one Delivery per gateway
//!      │ subscribed at that point of the log, with (term of the entry, offset, epoch),
//!      │ in log order, and books the delivery numbers under (group, topic, offset)
//!      ▼
//!  the publisher takes its booking, waits for every gateway's ack ─▶ Published{offset, epoch}
//! ```
//!
//! Why deliveries are queued at apply and not by the publisher: the apply path runs once per
//! entry and in log order, so a gateway receives a topic's messages in offset order whatever
//! order the publishers' tasks wake up in. The order key the gateway checks, `(term, seq)`,
//! is `(term of the entry, offset)`: offsets grow along the log and terms never go back, so it
//! grows too, across leaders. A deposed leader that applies late may send a message the new
//! leader sends again: same entry, same `(term, offset)`, so the gateway drops the second.
//!
//! The acknowledgement keeps the contract of every publish (acked once every subscribed
//! gateway has it) and adds one: acked only once a quorum stored it. A message committed but
//! not confirmed by a gateway fails with `timeout` (outcome unknown for live subscribers);
//! it is in the history all the same, so a client that recovers gets it.
//!
//! Presence: gateways report per `(topic, user)` how many of that user's connections there
//! are subscribed (`PresenceUpdate`, committed as `SetPresenceCount`); the state machine
//! answers whether the user joined or left the topic counting every gateway, and the leader
//! pushes `PresenceEvent` to the topic's gateways at apply. A gateway whose session expires
//! takes its users with it in the same entry (`ExpireSession`), so each of them leaves once.

use std::time::Duration;

use bytes::Bytes;
use firetower_proto::link::{
    gateway_reply, session_frame, Done, GatewayReply, History, HistoryMessage, PresenceEvent,
    PresenceList, PresenceUser, Published,
};
use firetower_proto::{pattern_matches, GatewayId};
use firetower_raft::{group_of, Command, GroupId, Response};
use firetower_store::{Appended, ApplyEvent, ApplyObserver, HistoryRule, PresenceChange};
use openraft::ServerState;

use crate::history_book::Queued;
use crate::node::{Node, WeakNode};
use crate::proposer::ProposeError;
use crate::publish::{check_size, outcome_of, DELIVERY_ACK_TIMEOUT, SESSION_WAIT};
use crate::replies::{failure, not_leader};
use crate::session_table::{DeliveryOutcome, EnqueueError};
use crate::topics::{confirmed_reader, ReadError};

/// Messages one `FetchHistory` reply carries at most.
const FETCH_LIMIT: usize = 1_000;
/// Payload bytes one `FetchHistory` reply carries at most (the link's frame is 1 MiB).
const FETCH_BYTES: usize = 512 * 1024;

/// The history rule covering `topic`: the longest matching pattern's.
pub(crate) fn rule_for(node: &Node, topic: &str) -> Option<HistoryRule> {
    let rules = node.rules();
    rules
        .history
        .iter()
        .filter(|(p, _)| pattern_matches(p, topic))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, r)| *r)
}

/// True when a presence rule covers `topic`.
pub(crate) fn presence_enabled(node: &Node, topic: &str) -> bool {
    node.rules()
        .presence
        .iter()
        .any(|p| pattern_matches(p, topic))
}

/// The apply observer of every group hosted here (see the module doc).
pub(crate) struct Deliverer {
    node: WeakNode,
}

impl Deliverer {
    pub(crate) fn new(node: &Node) -> Deliverer {
        Deliverer {
            node: node.downgrade(),
        }
    }
}

impl ApplyObserver for Deliverer {
    fn applied(&self, group: u32, events: Vec<ApplyEvent>) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let group = GroupId(group);
        let Some(raft) = node.raft(group) else {
            return;
        };
        let leading = {
            let m = raft.metrics();
            let m = m.borrow();
            m.state == ServerState::Leader && m.current_leader == Some(node.id())
        };
        if !leading {
            return;
        }
        for event in events {
            match event {
                ApplyEvent::Appended(a) => deliver(&node, group, a),
                ApplyEvent::Presence(p) => announce(&node, p),
            }
        }
    }
}

/// Queue an applied history message to every gateway subscribed at that point of the log.
fn deliver(node: &Node, group: GroupId, a: Appended) {
    let sessions = node.sessions();
    let mut queued = Queued {
        at: std::time::Instant::now(),
        waits: Vec::with_capacity(a.gateways.len()),
        undelivered: None,
    };
    for gateway in &a.gateways {
        let gateway = GatewayId(*gateway);
        let result = match sessions.get(gateway) {
            Some(s) => s
                .enqueue_history(&a.topic, &a.data, a.json, a.term, a.offset, &a.epoch)
                .map(|dseq| (s, dseq)),
            None => Err(EnqueueError::Closed),
        };
        match result {
            Ok(wait) => queued.waits.push(wait),
            Err(e) => {
                if matches!(e, EnqueueError::Stalled) {
                    node.metrics().session_closed_stalled();
                }
                queued.undelivered.get_or_insert((gateway, e));
            }
        }
    }
    node.metrics().delivered(queued.waits.len() as u64);
    node.history_book().put(group, a.topic, a.offset, queued);
}

/// Push a join or leave to the topic's gateways.
fn announce(node: &Node, p: PresenceChange) {
    let sessions = node.sessions();
    for gateway in &p.gateways {
        if let Some(s) = sessions.get(GatewayId(*gateway)) {
            s.send_control(session_frame::Frame::Presence(PresenceEvent {
                topic: p.topic.clone(),
                user: p.user.clone(),
                joined: p.joined,
            }));
        }
    }
}

/// Publish to a topic with history (see the module doc), and count the outcome.
pub(crate) async fn publish(
    node: &Node,
    topic: String,
    data: Bytes,
    json: bool,
    rule: HistoryRule,
) -> GatewayReply {
    let reply = publish_once(node, topic, data, json, rule).await;
    node.metrics().published(outcome_of(&reply));
    reply
}

async fn publish_once(
    node: &Node,
    topic: String,
    data: Bytes,
    json: bool,
    rule: HistoryRule,
) -> GatewayReply {
    if let Err(refused) = check_size(&topic, data.len()) {
        return refused;
    }
    if node.shutdown_token().is_cancelled() {
        return failure("unavailable", "manager is shutting down; retry");
    }
    let group = group_of(&topic, node.group_count());
    let (Some(raft), Some(reader), Some(proposer)) =
        (node.raft(group), node.reader(group), node.proposer(group))
    else {
        return failure("unavailable", format!("group {group} is not running here"));
    };
    if !crate::leadership::is_ready_leader(&raft, node.id()) {
        return not_leader(group, node.leader_of(group));
    }
    // As for every publish: a subscribed gateway reconnecting its session gets a moment.
    let deadline = tokio::time::Instant::now() + SESSION_WAIT;
    loop {
        let gateways = reader.gateways(&topic).unwrap_or_default();
        let Some(missing) = gateways
            .iter()
            .find(|g| node.sessions().get(GatewayId(**g)).is_none())
        else {
            break;
        };
        if tokio::time::Instant::now() >= deadline {
            return failure(
                "unavailable",
                format!(
                    "gateway {missing} has subscribers of {topic} but no session with this \
                     leader (reconnecting, or down until its lease ends); not published"
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let command = Command::HistoryAppend {
        topic: topic.clone(),
        data: data.to_vec(),
        json,
        at_ms: crate::operators::unix_ms(),
        size: rule.size,
        ttl_ms: rule.ttl_ms,
    };
    let (offset, epoch, term, gateways) = match proposer.propose(command).await {
        Ok((
            Response::HistoryAppended {
                offset,
                epoch,
                term,
                gateways,
            },
            _,
        )) => (offset, epoch, term, gateways),
        Ok((Response::Refused { reason }, _)) => return failure("refused", reason),
        Ok((other, _)) => return failure("internal", format!("unexpected response {other:?}")),
        Err(ProposeError::NotLeader(leader)) => return not_leader(group, leader),
        Err(ProposeError::Timeout) => {
            return failure(
                "timeout",
                format!(
                    "group {group} did not commit the message in time; it may or may not be \
                     in {topic}'s history"
                ),
            )
        }
        Err(ProposeError::Unavailable(m)) => {
            return failure("unavailable", format!("group {group}: {m}"))
        }
    };
    let published = |gateways: u32| GatewayReply {
        result: Some(gateway_reply::Result::Published(Published {
            term,
            seq: offset,
            gateways,
            offset,
            epoch: epoch.clone(),
        })),
    };
    let queued = node.history_book().take(group, &topic, offset);
    let Some(queued) = queued else {
        if gateways.is_empty() {
            return published(0);
        }
        return failure(
            "timeout",
            format!(
                "{topic} offset {offset} (epoch {epoch}) is stored, but this manager stopped \
                 leading before it was delivered live; subscribers that recover get it"
            ),
        );
    };
    if let Some((gateway, _)) = queued.undelivered {
        return failure(
            "timeout",
            format!(
                "{topic} offset {offset} (epoch {epoch}) is stored, but gateway {gateway} \
                 could not be sent it live (no session or a full queue); subscribers that \
                 recover get it"
            ),
        );
    }
    let count = queued.waits.len() as u32;
    let acks = futures::future::join_all(
        queued
            .waits
            .iter()
            .map(|(s, dseq)| s.wait_acked(*dseq, DELIVERY_ACK_TIMEOUT)),
    )
    .await;
    for ((session, _), outcome) in queued.waits.iter().zip(&acks) {
        match outcome {
            // Superseded: the gateway already passed this very entry on (a late copy from a
            // deposed leader, or a hole filled): it has it.
            DeliveryOutcome::Delivered | DeliveryOutcome::Superseded => {}
            DeliveryOutcome::Unconfirmed => {
                return failure(
                    "timeout",
                    format!(
                        "gateway {} did not confirm {topic} offset {offset} in time; it is \
                         stored, subscribers that recover get it",
                        session.gateway
                    ),
                )
            }
        }
    }
    published(count)
}

/// `FetchHistory`: kept messages above `after`, read through the leader's read index.
pub(crate) async fn fetch(node: &Node, topic: String, after: u64, limit: u32) -> GatewayReply {
    let group = group_of(&topic, node.group_count());
    let enabled = rule_for(node, &topic).is_some();
    let reader = match confirmed_reader(node, group).await {
        Ok(r) => r,
        Err(ReadError::NotLeader { leader }) => return not_leader(group, leader),
        Err(ReadError::Unavailable(m)) => return failure("unavailable", m),
    };
    let limit = match limit {
        0 => FETCH_LIMIT,
        n => (n as usize).min(FETCH_LIMIT),
    };
    let read = match reader.history(
        &topic,
        after,
        limit,
        FETCH_BYTES,
        crate::operators::unix_ms(),
    ) {
        Ok(r) => r,
        Err(e) => return failure("unavailable", format!("reading group {group}: {e}")),
    };
    GatewayReply {
        result: Some(gateway_reply::Result::History(History {
            epoch: read.epoch,
            first: read.first,
            last: read.last,
            messages: read
                .messages
                .into_iter()
                .map(|(offset, term, json, data)| HistoryMessage {
                    offset,
                    term,
                    json,
                    data,
                })
                .collect(),
            enabled,
            truncated: read.truncated,
        })),
    }
}

/// `PresenceQuery`: the users present on the topic, read through the leader's read index.
pub(crate) async fn presence(node: &Node, topic: String) -> GatewayReply {
    let group = group_of(&topic, node.group_count());
    if !presence_enabled(node, &topic) {
        return GatewayReply {
            result: Some(gateway_reply::Result::Presence(PresenceList {
                users: Vec::new(),
                enabled: false,
            })),
        };
    }
    let reader = match confirmed_reader(node, group).await {
        Ok(r) => r,
        Err(ReadError::NotLeader { leader }) => return not_leader(group, leader),
        Err(ReadError::Unavailable(m)) => return failure("unavailable", m),
    };
    GatewayReply {
        result: Some(gateway_reply::Result::Presence(PresenceList {
            users: reader
                .presence(&topic)
                .into_iter()
                .map(|(user, connections)| PresenceUser { user, connections })
                .collect(),
            enabled: true,
        })),
    }
}

/// `PresenceUpdate`: commit the gateway's count of a user's connections on a topic.
pub(crate) async fn presence_update(
    node: &Node,
    gateway: GatewayId,
    topic: String,
    user: String,
    connections: u32,
) -> GatewayReply {
    let group = group_of(&topic, node.group_count());
    if user.is_empty() || user.len() > 256 {
        return failure("invalid_request", "a presence user is 1 to 256 bytes");
    }
    if connections > 0 && !presence_enabled(node, &topic) {
        return GatewayReply {
            result: Some(gateway_reply::Result::Done(Done {
                changed: false,
                index: 0,
            })),
        };
    }
    let Some(proposer) = node.proposer(group) else {
        return failure("unavailable", format!("group {group} is not running here"));
    };
    let command = Command::SetPresenceCount {
        topic,
        user,
        gateway: gateway.get(),
        connections,
    };
    match proposer.propose(command).await {
        Ok((Response::Presence { change, .. }, index)) => GatewayReply {
            result: Some(gateway_reply::Result::Done(Done {
                changed: change.is_some(),
                index,
            })),
        },
        Ok((Response::Refused { reason }, _)) => failure("refused", reason),
        Ok((other, _)) => failure("internal", format!("unexpected response {other:?}")),
        Err(ProposeError::NotLeader(leader)) => not_leader(group, leader),
        Err(ProposeError::Timeout) => failure(
            "timeout",
            format!("group {group} did not commit in time; retry (idempotent)"),
        ),
        Err(ProposeError::Unavailable(m)) => failure("unavailable", format!("group {group}: {m}")),
    }
}
