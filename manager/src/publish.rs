//! The publish path on the leader of a topic's group.
//!
//! ```text
//!  Publish{topic,data} ─▶ leader of group(topic)?  no ─▶ NotLeader{leader}
//!                          │ yes, lease held, earlier terms applied
//!                          ▼
//!          stamp (term, seq) for the topic and queue one Delivery per subscribed gateway,
//!          both under the group's publish lock, so queue order = stamp order
//!                          ▼
//!          wait for every gateway's cumulative ack ─▶ Published{term, seq}
//! ```
//!
//! Messages are not replicated: the stamp sequence lives in the leader's memory and restarts
//! with every term (leadership.rs makes sure a term is never reused by a restarted leader), so
//! `(term, seq)` orders a topic's messages totally and a subscriber can see a gap or a
//! duplicate across a failover. Every gateway subscribed to the topic must have a live session
//! here; the ack to the publisher comes only after each of them confirmed the delivery, so an
//! acknowledged message has reached every interested gateway. When one of them cannot be
//! reached the publish fails and says so; it is never acknowledged.
//!
//! A publish to a topic that no gateway is subscribed to is acknowledged (the leader's lease
//! checked as for any publish) with `seq = 0` and `gateways = 0`: it reached nobody, so it
//! takes no number and leaves no counter in the stamp map (stamper.rs bounds that map).
//! A payload whose delivery frame would exceed the link's frame limit is refused
//! (`too_large`) before it is stamped.

use std::time::{Duration, Instant};

use bytes::Bytes;
use firetower_link::MAX_LINK_FRAME_BYTES;
use firetower_proto::link::{gateway_reply, GatewayReply, Published};
use firetower_proto::GatewayId;
use firetower_raft::{group_of, GroupId};

use crate::locks::lock;
use crate::metrics::PublishOutcome;
use crate::node::Node;
use crate::replies::{failure, not_leader};
use crate::session_table::{delivery_body_len, DeliveryOutcome, EnqueueError};
use crate::stamper::{NotServing, Stamp};

/// How long a publish waits for the gateways' acks.
pub(crate) const DELIVERY_ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// How old the subscriber lists of `--unsafe-stale-reads` may get.
const UNSAFE_STALE_COPY: Duration = Duration::from_secs(3);

/// How long a publish waits for a subscribed gateway without a live session here (one that
/// is reconnecting, typically after this manager restarted) before it fails.
pub(crate) const SESSION_WAIT: Duration = Duration::from_millis(1_500);

/// Publish `data` to `topic`, and count the outcome.
pub(crate) async fn publish(node: &Node, topic: String, data: Bytes, json: bool) -> GatewayReply {
    let reply = publish_once(node, topic, data, json).await;
    node.metrics().published(outcome_of(&reply));
    reply
}

pub(crate) fn outcome_of(reply: &GatewayReply) -> PublishOutcome {
    match &reply.result {
        Some(gateway_reply::Result::Published(_)) => PublishOutcome::published,
        Some(gateway_reply::Result::NotLeader(_)) => PublishOutcome::not_leader,
        Some(gateway_reply::Result::Failure(f)) if f.code == "unavailable" => {
            PublishOutcome::unavailable
        }
        Some(gateway_reply::Result::Failure(f)) if f.code == "timeout" => PublishOutcome::timeout,
        _ => PublishOutcome::failed,
    }
}

/// Refuses a payload whose delivery frame would exceed the link's frame limit.
pub(crate) fn check_size(topic: &str, len: usize) -> Result<(), GatewayReply> {
    let delivery_len = delivery_body_len(topic, len);
    if delivery_len > MAX_LINK_FRAME_BYTES {
        return Err(failure(
            "too_large",
            format!(
                "a delivery of this {len}-byte payload would be a {delivery_len}-byte frame, \
                 over the link's {MAX_LINK_FRAME_BYTES}-byte limit; not published"
            ),
        ));
    }
    Ok(())
}

/// The lease a leader's stamps rely on (see `stamper.rs`).
fn stamp_lease(node: &Node) -> Duration {
    Duration::from_millis(node.config().raft.election_timeout_min_ms)
}

/// Why a stamp was refused, as the link reply.
fn not_serving(group: GroupId, why: NotServing) -> GatewayReply {
    match why {
        NotServing::LeaseExpired => failure(
            "unavailable",
            format!("group {group}: leader has not heard from a quorum recently; retry"),
        ),
        NotServing::TermOfEarlierRun { term } => failure(
            "unavailable",
            format!(
                "group {group}: this manager restarted while leading term {term}; waiting \
                 for a leader in a new term; retry"
            ),
        ),
        NotServing::StaleTerm { term, current } => failure(
            "unavailable",
            format!("group {group}: term {term} is older than the stamps of term {current}; retry"),
        ),
    }
}

/// Publish `data` to `topic`.
async fn publish_once(node: &Node, topic: String, data: Bytes, json: bool) -> GatewayReply {
    if let Err(refused) = check_size(&topic, data.len()) {
        return refused;
    }
    let group = group_of(&topic, node.group_count());
    let sessions = node.sessions();
    let session_deadline = tokio::time::Instant::now() + SESSION_WAIT;
    // Every gateway subscribed to the topic needs a live session here: a message stamped
    // while one of them is reconnecting would never reach its subscribers, so the publish
    // waits a little for the session and otherwise fails rather than be acknowledged.
    let (term, gateways) = loop {
        let (term, gateways) = match serving_term(node, group, &topic) {
            Ok(v) => v,
            Err(reply) => return reply,
        };
        let Some(missing) = gateways.iter().find(|g| sessions.get(**g).is_none()) else {
            break (term, gateways);
        };
        if tokio::time::Instant::now() >= session_deadline {
            return failure(
                "unavailable",
                format!(
                    "gateway {missing} has subscribers of {topic} but no session with this \
                     leader (reconnecting, or down until its lease ends); not published"
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if gateways.is_empty() {
        // Reached nobody: no number, no counter (module doc). The lease was checked above.
        return GatewayReply {
            result: Some(gateway_reply::Result::Published(Published {
                term,
                seq: 0,
                gateways: 0,
                offset: 0,
                epoch: String::new(),
            })),
        };
    }
    let Some(stamper) = node.stamper(group) else {
        return failure("unavailable", format!("group {group} is not running here"));
    };
    let mut waits = Vec::with_capacity(gateways.len());
    let mut undelivered = None;
    let seq = {
        // Stamping and queueing happen under the stamper's lock, so queue order = stamp order.
        let mut stamper = lock(&stamper);
        let stamped = if node.config().unsafe_stale_leadership {
            // DELIBERATELY UNSAFE (Jepsen self-test): no lease, no term rule.
            Ok(stamper.stamp_unchecked(&topic, term))
        } else {
            stamper.stamp(&topic, term, stamp_lease(node), Instant::now())
        };
        let seq = match stamped {
            Ok(Stamp { seq, .. }) => seq,
            Err(why) => return not_serving(group, why),
        };
        for gateway in &gateways {
            let queued = match sessions.get(*gateway) {
                Some(session) => session
                    .enqueue_delivery(&topic, &data, json, term, seq)
                    .map(|dseq| (session, dseq)),
                None => Err(EnqueueError::Closed),
            };
            match queued {
                Ok(wait) => waits.push(wait),
                Err(e) => {
                    if matches!(e, EnqueueError::Stalled) {
                        node.metrics().session_closed_stalled();
                        tracing::warn!(
                            gateway = gateway.get(),
                            event = "session_stalled",
                            "gateway stopped reading its deliveries; closing its session"
                        );
                    }
                    undelivered.get_or_insert((*gateway, e));
                }
            }
        }
        seq
    };
    node.metrics().delivered(waits.len() as u64);
    if let Some((gateway, e)) = undelivered {
        let why = match e {
            EnqueueError::Closed => "lost its session",
            EnqueueError::Full => "does not keep up with deliveries (its queue is full)",
            EnqueueError::Stalled => "stopped reading its deliveries (its session is closed)",
        };
        // Nothing queued anywhere: nothing was delivered, and the link may retry it
        // ("unavailable"). Queued for some gateways: the outcome is partial, which the link
        // must not retry (a retry would deliver it twice there): "timeout", outcome unknown.
        let code = if waits.is_empty() {
            "unavailable"
        } else {
            "timeout"
        };
        return failure(
            code,
            format!(
                "gateway {gateway} {why}; ({term}, {seq}) of {topic} may have reached only some \
                 subscribers"
            ),
        );
    }
    let delivered = waits.len() as u32;
    let acks = futures::future::join_all(
        waits
            .iter()
            .map(|(s, dseq)| s.wait_acked(*dseq, DELIVERY_ACK_TIMEOUT)),
    )
    .await;
    for ((session, _), outcome) in waits.iter().zip(&acks) {
        match outcome {
            DeliveryOutcome::Delivered => {}
            DeliveryOutcome::Superseded if node.config().unsafe_stale_leadership => {}
            DeliveryOutcome::Superseded => {
                // Other gateways may have passed it on: outcome unknown, never retried.
                return failure(
                    "timeout",
                    format!(
                        "gateway {} had already passed on a newer message of {topic} and \
                         dropped ({term}, {seq}); not published (leadership moved meanwhile)",
                        session.gateway
                    ),
                );
            }
            DeliveryOutcome::Unconfirmed => {
                return failure(
                    "timeout",
                    format!(
                        "gateway {} did not confirm the delivery of {topic} ({term}, {seq}) in \
                         time; it may or may not have received it",
                        session.gateway
                    ),
                );
            }
        }
    }
    GatewayReply {
        result: Some(gateway_reply::Result::Published(Published {
            term,
            seq,
            gateways: delivered,
            offset: 0,
            epoch: String::new(),
        })),
    }
}

/// The term in which this manager may stamp a message of `group` now, and the gateways
/// subscribed to `topic`; otherwise the reply that says why not.
fn serving_term(
    node: &Node,
    group: GroupId,
    topic: &str,
) -> Result<(u64, Vec<GatewayId>), GatewayReply> {
    if node.shutdown_token().is_cancelled() {
        return Err(failure("unavailable", "manager is shutting down; retry"));
    }
    let Some(raft) = node.raft(group) else {
        return Err(failure(
            "unavailable",
            format!("group {group} is not running here"),
        ));
    };
    let (term, leading) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.current_term, m.current_leader == Some(node.id()))
    };
    if !leading {
        if node.config().unsafe_stale_leadership {
            // DELIBERATELY UNSAFE (Jepsen self-test): a follower stamps the message itself,
            // from its own copy of the table and its own counter, as if it led the group.
            return Ok((term, local_gateways(node, group, topic)?));
        }
        return Err(not_leader(group, node.leader_of(group)));
    }
    if !crate::leadership::is_ready_leader(&raft, node.id()) {
        return Err(failure(
            "unavailable",
            format!("group {group}: the new leader is still applying earlier entries; retry"),
        ));
    }
    // See stamper.rs: stamp only in a term of this run, and only while a quorum
    // acknowledged this leader within the minimum election timeout, so that no other leader
    // can exist. Checked here to fail before waiting for sessions, and again when stamping.
    let Some(stamper) = node.stamper(group) else {
        return Err(failure(
            "unavailable",
            format!("group {group} is not running here"),
        ));
    };
    if node.config().unsafe_stale_leadership {
        // DELIBERATELY UNSAFE (Jepsen self-test): the Raft metrics' word is taken for it.
        return Ok((term, local_gateways(node, group, topic)?));
    }
    let checked = lock(&stamper).check(term, stamp_lease(node), Instant::now());
    if let Err(why) = checked {
        return Err(not_serving(group, why));
    }
    if node.config().unsafe_stale_reads {
        // DELIBERATELY UNSAFE (Jepsen self-test): look the subscribers up in a copy of the
        // table up to a few seconds old, as a cache would; a subscription acknowledged since
        // is missed.
        let mut copies = lock(node.stale_copies());
        if let Some((taken, gateways)) = copies.get(topic) {
            if taken.elapsed() < UNSAFE_STALE_COPY {
                return Ok((term, gateways.clone()));
            }
        }
        let gateways = local_gateways(node, group, topic)?;
        copies.insert(topic.to_string(), (Instant::now(), gateways.clone()));
        return Ok((term, gateways));
    }
    Ok((term, local_gateways(node, group, topic)?))
}

/// The gateways subscribed to `topic` in this manager's copy of the table.
fn local_gateways(
    node: &Node,
    group: GroupId,
    topic: &str,
) -> Result<Vec<GatewayId>, GatewayReply> {
    let Some(reader) = node.reader(group) else {
        return Err(failure(
            "unavailable",
            format!("group {group} is not running here"),
        ));
    };
    reader
        .gateways(topic)
        .map(|gateways| gateways.into_iter().map(GatewayId).collect())
        .map_err(|e| failure("unavailable", format!("reading group {group}: {e}")))
}
