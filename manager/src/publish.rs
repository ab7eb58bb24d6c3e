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
//! with every term, so `(term, seq)` orders a topic's messages totally and a subscriber can see
//! a gap or a duplicate. The ack to the publisher comes only after every gateway subscribed to
//! the topic (with a live session here) confirmed the delivery, so an acknowledged message
//! has reached every interested gateway.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use firetower_proto::link::{gateway_reply, GatewayReply, Published};
use firetower_raft::{group_of, GroupId};

use crate::link::{failure, not_leader};
use crate::server::Manager;
use crate::sessions::EnqueueError;

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
}

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

/// Publish `data` to `topic`.
pub(crate) async fn publish(
    manager: &Manager,
    topic: String,
    data: Bytes,
    json: bool,
) -> GatewayReply {
    let group = group_of(&topic, manager.group_count());
    let Some(raft) = manager.raft(group) else {
        return failure("unavailable", format!("group {group} is not running here"));
    };
    let (term, quorum_age) = {
        let m = raft.metrics();
        let m = m.borrow();
        if m.current_leader != Some(manager.id()) {
            drop(m);
            return not_leader(group, manager.leader_of(group));
        }
        (m.current_term, m.millis_since_quorum_ack)
    };
    if !crate::sessions::is_ready_leader(&raft, manager.id()) {
        return failure(
            "unavailable",
            format!("group {group}: the new leader is still applying earlier entries; retry"),
        );
    }
    // Followers refuse to elect another leader for the maximum election timeout after they
    // last heard from this one. Serving only while a quorum answered well within that window
    // means no other leader can exist, so no message is stamped by a deposed leader.
    let safe_ms = manager.config().raft.election_timeout_min_ms;
    if quorum_age.is_none_or(|age| age > safe_ms) {
        return failure(
            "unavailable",
            format!("group {group}: leader has not heard from a quorum recently; retry"),
        );
    }
    let Some(reader) = manager.reader(group) else {
        return failure("unavailable", format!("group {group} is not running here"));
    };
    let gateways = match reader.gateways(&topic) {
        Ok(g) => g,
        Err(e) => return failure("unavailable", format!("reading group {group}: {e}")),
    };
    let sessions = manager.sessions();
    let state = manager.stamps().group(group);
    let mut waits = Vec::with_capacity(gateways.len());
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
            let Some(session) = sessions.get(*gateway) else {
                // No live session here: the gateway is down or reconnecting; its lease
                // decides whether it keeps the topic.
                continue;
            };
            match session.enqueue_delivery(&topic, &data, json, term, seq) {
                Ok(dseq) => waits.push((session, dseq)),
                Err(EnqueueError::Closed) => {}
                Err(EnqueueError::Stalled) => {
                    tracing::warn!(gateway, "gateway does not keep up with deliveries");
                }
            }
        }
        seq
    };
    let delivered = waits.len() as u32;
    let acks = futures::future::join_all(
        waits
            .iter()
            .map(|(s, dseq)| s.wait_acked(*dseq, DELIVERY_ACK_TIMEOUT)),
    )
    .await;
    if let Some(i) = acks.iter().position(|ok| !ok) {
        return failure(
            "timeout",
            format!(
                "gateway {} did not confirm the delivery of {topic} ({term}, {seq}) in time; it \
                 may or may not have received it",
                waits[i].0.gateway
            ),
        );
    }
    GatewayReply {
        result: Some(gateway_reply::Result::Published(Published {
            term,
            seq,
            gateways: delivered,
        })),
    }
}
