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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use firetower_proto::link::{gateway_reply, GatewayReply, Published};
use firetower_raft::{group_of, GroupId};

use crate::leadership::NotServing;
use crate::link::{failure, not_leader};
use crate::server::Manager;
use crate::sessions::{DeliveryOutcome, EnqueueError};

/// How long a publish waits for the gateways' acks.
const DELIVERY_ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// Per-group stamping state of the current term.
#[derive(Debug, Default)]
pub(crate) struct PublishState {
    term: u64,
    seqs: HashMap<String, u64>,
}

/// The stamping state of every group, one lock each.
#[derive(Debug, Default)]
pub(crate) struct Stamps {
    groups: Mutex<HashMap<GroupId, std::sync::Arc<Mutex<PublishState>>>>,
    /// `--unsafe-stale-reads` only: a topic's subscribers as read up to
    /// [`UNSAFE_STALE_COPY`] ago.
    stale_copies: Mutex<HashMap<String, (std::time::Instant, Vec<u64>)>>,
}

/// How old the subscriber lists of `--unsafe-stale-reads` may get.
const UNSAFE_STALE_COPY: Duration = Duration::from_secs(3);

impl Stamps {
    fn group(&self, group: GroupId) -> std::sync::Arc<Mutex<PublishState>> {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(group)
            .or_default()
            .clone()
    }
}

/// How long a publish waits for a subscribed gateway without a live session here (one that
/// is reconnecting, typically after this manager restarted) before it fails.
const SESSION_WAIT: Duration = Duration::from_millis(1_500);

/// Publish `data` to `topic`.
pub(crate) async fn publish(
    manager: &Manager,
    topic: String,
    data: Bytes,
    json: bool,
) -> GatewayReply {
    let group = group_of(&topic, manager.group_count());
    let sessions = manager.sessions();
    let session_deadline = tokio::time::Instant::now() + SESSION_WAIT;
    // Every gateway subscribed to the topic needs a live session here: a message stamped
    // while one of them is reconnecting would never reach its subscribers, so the publish
    // waits a little for the session and otherwise fails rather than be acknowledged.
    let (term, gateways) = loop {
        let (term, gateways) = match serving_term(manager, group, &topic) {
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
    let state = manager.stamps().group(group);
    let mut waits = Vec::with_capacity(gateways.len());
    let mut undelivered = None;
    let seq = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        if st.term != term {
            st.term = term;
            st.seqs.clear();
        }
        let seq = {
            let s = st.seqs.entry(topic.clone()).or_insert(0);
            *s += 1;
            *s
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
                        tracing::warn!(gateway, "gateway does not keep up with deliveries");
                    }
                    undelivered.get_or_insert((*gateway, e));
                }
            }
        }
        seq
    };
    if let Some((gateway, e)) = undelivered {
        let why = match e {
            EnqueueError::Closed => "lost its session",
            EnqueueError::Stalled => "does not keep up with deliveries",
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
            DeliveryOutcome::Superseded if manager.config().unsafe_stale_leadership => {}
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
        })),
    }
}

/// The term in which this manager may stamp a message of `group` now, and the gateways
/// subscribed to `topic`; otherwise the reply that says why not.
fn serving_term(
    manager: &Manager,
    group: GroupId,
    topic: &str,
) -> Result<(u64, Vec<u64>), GatewayReply> {
    if manager.shutdown_token().is_cancelled() {
        return Err(failure("unavailable", "manager is shutting down; retry"));
    }
    let Some(raft) = manager.raft(group) else {
        return Err(failure(
            "unavailable",
            format!("group {group} is not running here"),
        ));
    };
    let (term, leading) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.current_term, m.current_leader == Some(manager.id()))
    };
    if !leading {
        if manager.config().unsafe_stale_leadership {
            // DELIBERATELY UNSAFE (Jepsen self-test): a follower stamps the message itself,
            // from its own copy of the table and its own counter, as if it led the group.
            return Ok((term, local_gateways(manager, group, topic)?));
        }
        return Err(not_leader(group, manager.leader_of(group)));
    }
    if !crate::sessions::is_ready_leader(&raft, manager.id()) {
        return Err(failure(
            "unavailable",
            format!("group {group}: the new leader is still applying earlier entries; retry"),
        ));
    }
    // See leadership.rs: stamp only in a term of this run, and only while a quorum
    // acknowledged this leader within the minimum election timeout, so that no other leader
    // can exist.
    let lease = Duration::from_millis(manager.config().raft.election_timeout_min_ms);
    let Some(leadership) = manager.leadership().group(group) else {
        return Err(failure(
            "unavailable",
            format!("group {group} is not running here"),
        ));
    };
    if manager.config().unsafe_stale_leadership {
        // DELIBERATELY UNSAFE (Jepsen self-test): the Raft metrics' word is taken for it.
        return Ok((term, local_gateways(manager, group, topic)?));
    }
    match leadership.check(term, lease) {
        Ok(()) => {}
        Err(NotServing::LeaseExpired) => {
            return Err(failure(
                "unavailable",
                format!("group {group}: leader has not heard from a quorum recently; retry"),
            ));
        }
        Err(NotServing::TermOfEarlierRun { term }) => {
            return Err(failure(
                "unavailable",
                format!(
                    "group {group}: this manager restarted while leading term {term}; waiting \
                     for a leader in a new term; retry"
                ),
            ));
        }
    }
    if manager.config().unsafe_stale_reads {
        // DELIBERATELY UNSAFE (Jepsen self-test): look the subscribers up in a copy of the
        // table up to a few seconds old, as a cache would; a subscription acknowledged since
        // is missed.
        let mut copies = manager
            .stamps()
            .stale_copies
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((taken, gateways)) = copies.get(topic) {
            if taken.elapsed() < UNSAFE_STALE_COPY {
                return Ok((term, gateways.clone()));
            }
        }
        let gateways = local_gateways(manager, group, topic)?;
        copies.insert(
            topic.to_string(),
            (std::time::Instant::now(), gateways.clone()),
        );
        return Ok((term, gateways));
    }
    Ok((term, local_gateways(manager, group, topic)?))
}

/// The gateways subscribed to `topic` in this manager's copy of the table.
fn local_gateways(
    manager: &Manager,
    group: GroupId,
    topic: &str,
) -> Result<Vec<u64>, GatewayReply> {
    let Some(reader) = manager.reader(group) else {
        return Err(failure(
            "unavailable",
            format!("group {group} is not running here"),
        ));
    };
    reader
        .gateways(topic)
        .map_err(|e| failure("unavailable", format!("reading group {group}: {e}")))
}
