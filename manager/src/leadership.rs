//! When a leader may stamp messages.
//!
//! Messages are not replicated: a leader stamps `(term, seq)` from a counter in its memory and
//! gateways pass a topic's messages on in stamp order, dropping anything at or below the last
//! stamp they passed on. That is only correct if no two stampers ever share a term and no
//! deposed leader stamps after its successor. Two rules give that:
//!
//! 1. **A fresh term for every run of the process.** openraft restores a leader that restarts
//!    within its own term as leader of that same term, with a counter that starts again at 1:
//!    every stamp it makes would sort below the ones its earlier run made, and gateways would
//!    drop the messages after their publishers were told they were delivered. So at start a
//!    manager that finds a committed vote for itself on disk records it as uncommitted before
//!    the group starts: it comes up as a follower, and the group's next leader — possibly
//!    this manager again — is elected in a new term. On top of that, a manager never stamps
//!    in a term at or below the one it found on disk.
//! 2. **A lease measured on a live clock.** Followers refuse to vote for anyone else for
//!    `election_timeout_max` after they last heard from the leader, so while a quorum
//!    acknowledged the leader less than `election_timeout_min` ago no other leader exists.
//!    The acknowledgement time is taken from openraft's metrics as they are published, and
//!    the age is computed when a publish is stamped, so a Raft core that stopped (shutdown,
//!    stuck disk) lets the lease run out instead of freezing it.
//!
//! The sans-I/O `stamper.rs` applies both rules to every stamp; this module feeds it the
//! quorum acknowledgements and does what a restart needs on disk and in the Raft core.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firetower_raft::{ManagerId, Raft, TypeConfig};
use openraft::storage::RaftLogStorage;
use openraft::{ServerState, Vote};
use tokio_util::sync::CancellationToken;

use crate::stamper::Stamper;

/// Follow a group's Raft metrics until `shutdown` and tell its stamper every quorum
/// acknowledgement while this manager (`id`) leads (rule 2 above); the stamper decides.
pub(crate) fn watch(
    id: ManagerId,
    raft: &Raft,
    stamper: Arc<Mutex<Stamper>>,
    shutdown: CancellationToken,
) {
    let mut metrics = raft.metrics();
    let observe = move |value| {
        stamper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe_quorum_ack(value)
    };
    tokio::spawn(async move {
        loop {
            let value = {
                let observed = Instant::now();
                let m = metrics.borrow_and_update();
                match (m.state, m.current_leader, m.millis_since_quorum_ack) {
                    (ServerState::Leader, Some(leader), Some(age)) if leader == id => observed
                        .checked_sub(Duration::from_millis(age))
                        .map(|at| (m.current_term, at)),
                    _ => None,
                }
            };
            observe(value);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = metrics.changed() => if changed.is_err() { break },
            }
        }
        // The Raft core is gone or the manager is stopping: no lease any more.
        observe(None);
    });
}

/// Step down from a leadership restored from disk: if the stored vote is a committed vote
/// for `id`, store it again as uncommitted, so that the group starts as a follower and its
/// next leader is elected in a new term. Returns the term of the stored vote (0 if none).
///
/// This only lowers the vote from "committed" to "granted": the node still will not vote for
/// anyone else in that term, and no other node can lead that term, so no Raft guarantee
/// changes.
pub(crate) async fn step_down_on_restart<S>(
    log_store: &mut S,
    id: ManagerId,
) -> Result<u64, openraft::StorageError<ManagerId>>
where
    S: RaftLogStorage<TypeConfig>,
{
    let Some(vote) = log_store.read_vote().await? else {
        return Ok(0);
    };
    let term = vote.leader_id().get_term();
    if vote.is_committed() && vote.leader_id().voted_for() == Some(id) {
        tracing::info!(
            term,
            "was leader in term {term} before this start; stepping down so the next leader \
             gets a new term"
        );
        log_store.save_vote(&Vote::new(term, id)).await?;
    }
    Ok(term)
}

/// After a restart, do not stand for election in `group` until a leader has been heard from
/// or `hold` has passed.
///
/// Why: the restarted manager's peers may take a while to reach it again (their connection
/// attempts to it back off while it is down, up to the reconnect cap, and a handshake begun
/// then completes only at its next retransmission). Meanwhile its own election timer runs
/// out, and it stands for election in the term the cluster's current leader holds. openraft
/// orders votes of one term by node id, so if the restarted manager's id is higher, the
/// leader that hears of that vote steps down and the group needs a second election: about
/// 1.5 s of unavailability more, for half of the leader kills in `chaos run
/// leader-kill-loop` (the 3 s mode of its bimodal distribution). Holding the campaign until
/// the leader's first heartbeat arrives (which also makes the vote committed, so the leader
/// lease then guards against early campaigns) removes that second election. A group with a
/// single voter, or a manager that never ran in a cluster, does not hold.
pub(crate) fn hold_elections_after_restart(raft: &Raft, id: ManagerId, hold: Duration) {
    let metrics = raft.metrics();
    if metrics.borrow().membership_config.voter_ids().count() <= 1 {
        return;
    }
    raft.runtime_config().elect(false);
    // A leader restored from disk proves nothing (its heartbeats may not reach us yet); only
    // a vote that changed since the start, to a committed one for another manager, does.
    let restored = metrics.borrow().vote;
    let raft = raft.clone();
    tokio::spawn(async move {
        let mut metrics = metrics;
        let heard = tokio::time::timeout(hold, async {
            loop {
                let heard = {
                    let m = metrics.borrow();
                    m.vote != restored
                        && m.vote.is_committed()
                        && m.current_leader.is_some_and(|leader| leader != id)
                };
                if heard {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        tracing::debug!(
            leader_heard = heard.is_ok(),
            "standing for election again after the restart hold"
        );
        raft.runtime_config().elect(true);
    });
}
/// True when this manager leads `group` and has applied everything of earlier terms.
pub(crate) fn is_ready_leader(raft: &Raft, id: ManagerId) -> bool {
    let m = raft.metrics();
    let m = m.borrow();
    m.state == ServerState::Leader
        && m.current_leader == Some(id)
        && m.last_applied
            .is_some_and(|l| l.leader_id.term == m.current_term)
}
