//! Peers this manager does not know as members of a group, vouched for by members it does know.
//!
//! The server serves Raft RPCs for a group only from managers in the group's membership as this
//! manager knows it. That view can be stale: a manager that was down while the group gained a
//! member has never heard of that member, and would refuse it as leader for as long as it leads,
//! so it would never hear of it. Before refusing, the server asks the members it does know
//! (through the [`Vouch`] the manager provides; the manager asks over the admin API) whether the
//! peer is a member in their view. One yes from a member this manager already trusts is enough:
//! that member learned the membership from the group's log.
//!
//! ```text
//!   RPC from P for group g ─▶ P in g's membership here? ─yes─▶ serve
//!                                   │ no
//!                                   ▼
//!              verdict for (g, P) cached? ─▶ else ask every other known member at once
//!                                   │         (first yes wins, VOUCH_TIMEOUT in all)
//!                                   ▼
//!                    yes: serve (cached VOUCHED_TTL) · no: NotAMember (cached REFUSED_TTL)
//! ```
//!
//! Verdicts are cached so that a non-member's stream of RPCs costs one round of questions per
//! [`REFUSED_TTL`], and so that a vouched-for leader keeps being served while the entries that
//! add it to this manager's view arrive. Concurrent RPCs for the same (group, peer) share one
//! round. The cache holds at most [`MAX_VERDICTS`] entries; past that, unknown peers are refused
//! without asking until entries expire.
//!
//! What no member can vouch for is refused: a manager whose every other known member of the
//! group is gone (removed, or down at once) cannot be vouched for, and needs the operator to
//! remove and add it again (docs/security.md).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::{GroupId, ManagerId, ManagerNode};

/// How long a yes stands: long enough for the vouched-for leader's entries to bring its
/// membership here, after which the local check passes by itself.
pub const VOUCHED_TTL: Duration = Duration::from_secs(60);
/// How long a no stands before the members are asked again.
pub const REFUSED_TTL: Duration = Duration::from_secs(2);
/// Longest wait for the members' answers; past it, what has not answered counts as no.
pub const VOUCH_TIMEOUT: Duration = Duration::from_millis(1500);
/// Most (group, peer) verdicts held at once.
pub const MAX_VERDICTS: usize = 4096;

/// A future the [`Vouch`] returns.
pub type VouchFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Asks members of a group whether another manager is a member in their view.
pub trait Vouch: Send + Sync + 'static {
    /// Whether any of `members` (the group's members as this manager knows them, itself and
    /// `peer` left out) counts `peer` as a voter or learner of `group`. The caller bounds the
    /// wait by [`VOUCH_TIMEOUT`].
    fn vouch(
        &self,
        group: GroupId,
        peer: ManagerId,
        members: Vec<(ManagerId, ManagerNode)>,
    ) -> VouchFuture;
}

/// One verdict: whether the peer was vouched for, and when that was decided.
type Verdict = Arc<OnceCell<(bool, Instant)>>;

/// The verdicts of one manager, shared by all its Raft connections.
pub struct Vouching {
    vouch: Arc<dyn Vouch>,
    timing: Timing,
    verdicts: Mutex<HashMap<(GroupId, ManagerId), Verdict>>,
}

impl std::fmt::Debug for Vouching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vouching").finish_non_exhaustive()
    }
}

/// How long verdicts stand and answers are waited for.
#[derive(Debug, Clone, Copy)]
struct Timing {
    vouched: Duration,
    refused: Duration,
    timeout: Duration,
}

impl Vouching {
    /// Verdicts asked of `vouch`.
    pub fn new(vouch: Arc<dyn Vouch>) -> Self {
        Self::with_timing(
            vouch,
            Timing {
                vouched: VOUCHED_TTL,
                refused: REFUSED_TTL,
                timeout: VOUCH_TIMEOUT,
            },
        )
    }

    fn with_timing(vouch: Arc<dyn Vouch>, timing: Timing) -> Self {
        Self {
            vouch,
            timing,
            verdicts: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a member of `members` vouches for `peer` in `group`, from the cache or by asking.
    pub async fn admits(
        &self,
        group: GroupId,
        peer: ManagerId,
        members: Vec<(ManagerId, ManagerNode)>,
    ) -> bool {
        let Some(verdict) = self.verdict(group, peer) else {
            tracing::warn!(%group, peer, "too many unknown Raft peers at once; refused unasked");
            return false;
        };
        let (yes, _) = *verdict
            .get_or_init(|| async {
                let members: Vec<_> = members
                    .into_iter()
                    .filter(|(id, _)| *id != peer)
                    .collect();
                let asked = members.len();
                let yes = !members.is_empty()
                    && tokio::time::timeout(self.timing.timeout, self.vouch.vouch(group, peer, members))
                        .await
                        .unwrap_or(false);
                if yes {
                    tracing::info!(%group, peer, "a member vouches for a manager not yet in this manager's view of the group");
                } else {
                    tracing::warn!(%group, peer, asked,
                        "manager is not a member of the group as this manager knows it, and no member it knows vouches for it; its Raft RPCs are refused");
                }
                (yes, Instant::now())
            })
            .await;
        yes
    }

    /// The verdict slot for (group, peer): the standing one, or a new empty one in its place.
    /// `None` when the cache is full of verdicts that still stand.
    fn verdict(&self, group: GroupId, peer: ManagerId) -> Option<Verdict> {
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(verdict) = verdicts.get(&(group, peer)) {
            if stands(verdict, now, self.timing) {
                return Some(Arc::clone(verdict));
            }
        }
        if verdicts.len() >= MAX_VERDICTS {
            verdicts.retain(|_, v| stands(v, now, self.timing));
            if verdicts.len() >= MAX_VERDICTS {
                return None;
            }
        }
        let verdict = Verdict::default();
        verdicts.insert((group, peer), Arc::clone(&verdict));
        Some(verdict)
    }
}

/// Whether a verdict is still being decided or decided recently enough to stand.
fn stands(verdict: &Verdict, now: Instant, timing: Timing) -> bool {
    match verdict.get() {
        None => true,
        Some((yes, at)) => {
            let ttl = if *yes { timing.vouched } else { timing.refused };
            now.duration_since(*at) < ttl
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Vouches for the peers in `members`' view, counting the rounds it was asked.
    struct Fake {
        view: Vec<ManagerId>,
        asked: AtomicUsize,
        delay: Duration,
    }

    impl Vouch for Fake {
        fn vouch(
            &self,
            _group: GroupId,
            peer: ManagerId,
            members: Vec<(ManagerId, ManagerNode)>,
        ) -> VouchFuture {
            self.asked.fetch_add(1, Ordering::SeqCst);
            assert!(
                members.iter().all(|(id, _)| *id != peer),
                "peer asked of itself"
            );
            let yes = !members.is_empty() && self.view.contains(&peer);
            let delay = self.delay;
            Box::pin(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                yes
            })
        }
    }

    fn fake(view: &[ManagerId], delay: Duration) -> Arc<Fake> {
        Arc::new(Fake {
            view: view.to_vec(),
            asked: AtomicUsize::new(0),
            delay,
        })
    }

    /// Short enough that the tests wait little, long enough that a verdict stands between two
    /// calls in a row.
    const TIMING: Timing = Timing {
        vouched: Duration::from_millis(400),
        refused: Duration::from_millis(200),
        timeout: Duration::from_millis(100),
    };

    fn vouching(fake: &Arc<Fake>) -> Vouching {
        Vouching::with_timing(fake.clone(), TIMING)
    }

    async fn lapse(ttl: Duration) {
        tokio::time::sleep(ttl + Duration::from_millis(20)).await;
    }

    fn members(ids: &[ManagerId]) -> Vec<(ManagerId, ManagerNode)> {
        ids.iter().map(|id| (*id, ManagerNode::default())).collect()
    }

    #[tokio::test]
    async fn a_member_vouches_and_the_yes_is_cached() {
        let fake = fake(&[4], Duration::from_millis(1));
        let vouching = vouching(&fake);
        assert!(vouching.admits(GroupId(1), 4, members(&[1, 2])).await);
        assert!(vouching.admits(GroupId(1), 4, members(&[1, 2])).await);
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
        lapse(TIMING.vouched).await;
        assert!(vouching.admits(GroupId(1), 4, members(&[1, 2])).await);
        assert_eq!(
            fake.asked.load(Ordering::SeqCst),
            2,
            "asked again once the yes lapsed"
        );
    }

    #[tokio::test]
    async fn a_stranger_is_refused_and_asked_about_once_per_ttl() {
        let fake = fake(&[4], Duration::from_millis(1));
        let vouching = vouching(&fake);
        for _ in 0..100 {
            assert!(!vouching.admits(GroupId(1), 7, members(&[1, 2])).await);
        }
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
        lapse(TIMING.refused).await;
        assert!(!vouching.admits(GroupId(1), 7, members(&[1, 2])).await);
        assert_eq!(fake.asked.load(Ordering::SeqCst), 2);
        // Verdicts are per group.
        assert!(vouching.admits(GroupId(2), 4, members(&[1, 2])).await);
    }

    #[tokio::test]
    async fn no_other_member_means_no_one_to_vouch() {
        let fake = fake(&[4], Duration::ZERO);
        let vouching = vouching(&fake);
        assert!(!vouching.admits(GroupId(1), 4, members(&[4])).await);
        assert!(!vouching.admits(GroupId(2), 4, members(&[])).await);
        assert_eq!(fake.asked.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn members_that_do_not_answer_in_time_count_as_no() {
        let fake = fake(&[4], Duration::from_secs(3600));
        let vouching = vouching(&fake);
        assert!(!vouching.admits(GroupId(1), 4, members(&[1])).await);
    }

    #[tokio::test]
    async fn concurrent_rpcs_share_one_round() {
        let fake = fake(&[4], Duration::from_millis(50));
        let vouching = Arc::new(vouching(&fake));
        let rounds: Vec<_> = (0..32)
            .map(|_| {
                let vouching = Arc::clone(&vouching);
                tokio::spawn(async move { vouching.admits(GroupId(3), 4, members(&[1, 2])).await })
            })
            .collect();
        for round in rounds {
            assert!(round.await.unwrap());
        }
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let fake = fake(&[], Duration::ZERO);
        // Long enough that no verdict lapses while the cache fills.
        let timing = Timing {
            refused: Duration::from_secs(1),
            ..TIMING
        };
        let vouching = Vouching::with_timing(fake.clone(), timing);
        for peer in 0..MAX_VERDICTS as u64 {
            assert!(!vouching.admits(GroupId(0), peer + 100, members(&[1])).await);
        }
        let asked = fake.asked.load(Ordering::SeqCst);
        // Full of standing verdicts: one more unknown peer is refused unasked.
        assert!(!vouching.admits(GroupId(0), 1, members(&[2])).await);
        assert_eq!(fake.asked.load(Ordering::SeqCst), asked);
        assert_eq!(vouching.verdicts.lock().unwrap().len(), MAX_VERDICTS);
        // Once they lapse, room is made.
        lapse(timing.refused).await;
        assert!(!vouching.admits(GroupId(0), 1, members(&[2])).await);
        assert_eq!(fake.asked.load(Ordering::SeqCst), asked + 1);
        assert_eq!(vouching.verdicts.lock().unwrap().len(), 1);
    }
}
