//! What a request must satisfy before openraft sees it, whoever sent it: a member with a valid
//! certificate can be buggy too, and openraft trusts its peers.
//!
//! ```text
//!   header ─▶ authorize(peer, membership) ─▶ body ─▶ check_* (terms, log ids) ─┬─▶ openraft
//!                                                                              │
//!              InstallSnapshot: SnapshotReceipt::admit (offset, size), take ───┘ complete and
//!                                                                 check_snapshot_data passes
//! ```
//!
//! Why each bound exists (all seen in openraft 0.9.25):
//! - **Terms.** A follower that adopts a vote of term `u64::MAX` computes `term + 1` at its next
//!   election and its Raft task panics, for good. No term above [`MAX_TERM`] (`u64::MAX / 2`) is
//!   accepted, nor one more than [`MAX_TERM_LEAP`] (2^32) past this manager's current term: a
//!   real cluster goes through one term per election, and 2^32 elections take centuries.
//! - **Log indexes.** A `prev_log_id` at index `u64::MAX` makes openraft compute `index + 1`
//!   and panic. No index above [`MAX_INDEX`] (`u64::MAX / 2`) is accepted; entries must follow
//!   `prev_log_id` one by one, with terms that never go back and never pass the sender's vote.
//! - **Snapshot offsets.** Openraft's chunked receiver seeks the snapshot cursor to any offset a
//!   chunk names; an in-memory cursor zero-fills up to it, and `1 << 40` aborts the process.
//!   The server assembles snapshots itself ([`SnapshotReceipt`]), one per group, in order:
//!   offset 0 starts (over) a snapshot, any other offset must be where the snapshot being
//!   received ends, and no snapshot grows past [`MAX_SNAPSHOT_LEN`].
//! - **Snapshot data.** Openraft takes a state machine that fails to install a snapshot as a
//!   storage failure and stops the group. A complete snapshot reaches openraft only if its data
//!   decodes (`firetower_store::check_snapshot_data`).
//!
//! These are plain functions on plain data; the server calls them.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{LogId, Membership, Vote};

use crate::limits::{term_limit, Field, Implausible, MAX_INDEX, MAX_SNAPSHOT_LEN};
use crate::wire::Rejection;
use crate::{GroupId, ManagerId, ManagerNode, TypeConfig};

fn check_term(field: Field, term: u64, local_term: u64) -> Result<(), Implausible> {
    let limit = term_limit(local_term);
    if term > limit {
        return Err(Implausible::Term { field, term, limit });
    }
    Ok(())
}

fn check_vote(vote: &Vote<ManagerId>, local_term: u64) -> Result<u64, Implausible> {
    let term = vote.leader_id().term;
    check_term(Field::Vote, term, local_term)?;
    Ok(term)
}

/// A log id within the bounds, and of no term after `vote_term` when that is given.
fn check_log_id(
    field: Field,
    log_id: Option<&LogId<ManagerId>>,
    local_term: u64,
    vote_term: Option<u64>,
) -> Result<(), Implausible> {
    let Some(log_id) = log_id else {
        return Ok(());
    };
    let term = log_id.leader_id.term;
    check_term(field, term, local_term)?;
    if log_id.index > MAX_INDEX {
        return Err(Implausible::Index {
            field,
            index: log_id.index,
        });
    }
    if let Some(vote) = vote_term.filter(|vote| term > *vote) {
        return Err(Implausible::AfterVote { field, term, vote });
    }
    Ok(())
}

/// Checks an `AppendEntries` for a manager whose current term is `local_term`.
pub fn check_append_entries(
    rpc: &AppendEntriesRequest<TypeConfig>,
    local_term: u64,
) -> Result<(), Implausible> {
    let vote = Some(check_vote(&rpc.vote, local_term)?);
    check_log_id(Field::PrevLogId, rpc.prev_log_id.as_ref(), local_term, vote)?;
    check_log_id(
        Field::LeaderCommit,
        rpc.leader_commit.as_ref(),
        local_term,
        vote,
    )?;
    // Indexes and terms of the entries continue prev_log_id; prev_log_id.index <= MAX_INDEX,
    // so the additions cannot overflow before the index check stops them.
    let mut expected = rpc.prev_log_id.map_or(0, |p| p.index + 1);
    let mut previous = rpc.prev_log_id.map_or(0, |p| p.leader_id.term);
    for entry in &rpc.entries {
        let log_id = &entry.log_id;
        check_log_id(Field::Entry, Some(log_id), local_term, vote)?;
        if log_id.index != expected {
            return Err(Implausible::NotConsecutive {
                expected,
                got: log_id.index,
            });
        }
        if log_id.leader_id.term < previous {
            return Err(Implausible::TermGoesBack {
                index: log_id.index,
                term: log_id.leader_id.term,
                previous,
            });
        }
        expected = log_id.index + 1;
        previous = log_id.leader_id.term;
    }
    Ok(())
}

/// Checks a `Vote` request for a manager whose current term is `local_term`.
pub fn check_vote_request(
    rpc: &VoteRequest<ManagerId>,
    local_term: u64,
) -> Result<(), Implausible> {
    let vote = check_vote(&rpc.vote, local_term)?;
    check_log_id(
        Field::LastLogId,
        rpc.last_log_id.as_ref(),
        local_term,
        Some(vote),
    )
}

/// Checks the values of an `InstallSnapshot` chunk (not its offset: see [`SnapshotReceipt`])
/// for a manager whose current term is `local_term`.
pub fn check_install_snapshot(
    rpc: &InstallSnapshotRequest<TypeConfig>,
    local_term: u64,
) -> Result<(), Implausible> {
    let vote = Some(check_vote(&rpc.vote, local_term)?);
    check_log_id(
        Field::SnapshotLastLogId,
        rpc.meta.last_log_id.as_ref(),
        local_term,
        vote,
    )?;
    check_log_id(
        Field::SnapshotMembership,
        rpc.meta.last_membership.log_id().as_ref(),
        local_term,
        vote,
    )
}

/// Whether `peer` may send Raft RPCs for `group`, whose membership this manager knows as
/// `membership`.
///
/// `None` is an unauthenticated peer (insecure mode): no check. An authenticated peer must be a
/// voter or a learner of the group, unless this manager knows no membership of the group yet:
/// a learner being added hears of the group first from its leader.
pub fn authorize(
    peer: Option<ManagerId>,
    group: GroupId,
    membership: &Membership<ManagerId, ManagerNode>,
) -> Result<(), Rejection> {
    let Some(peer) = peer else {
        return Ok(());
    };
    let mut nodes = membership.nodes().peekable();
    if nodes.peek().is_none() || nodes.any(|(id, _)| *id == peer) {
        return Ok(());
    }
    Err(Rejection::NotAMember { peer, group })
}

/// The snapshot a group is receiving: its id and the bytes received so far, in order.
///
/// The server assembles snapshots here rather than through openraft's chunked
/// `install_snapshot`, whose cursor seeks wherever a chunk says: bytes are only ever appended,
/// so a snapshot has no holes and never grows past [`MAX_SNAPSHOT_LEN`], and a complete
/// snapshot can be checked before openraft installs it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SnapshotReceipt {
    receiving: Option<(String, Vec<u8>)>,
}

impl SnapshotReceipt {
    /// Whether a chunk of `len` bytes at `offset` of snapshot `id` may be taken: offset 0
    /// starts (over) a snapshot, any other offset must be where the snapshot `id` being
    /// received ends, and the snapshot stays within [`MAX_SNAPSHOT_LEN`].
    pub fn admit(&self, id: &str, offset: u64, len: usize) -> Result<(), Rejection> {
        let expected = match &self.receiving {
            Some((receiving, data)) if receiving == id => data.len() as u64,
            _ => 0,
        };
        if offset != 0 && offset != expected {
            return Err(Rejection::SnapshotOutOfOrder {
                snapshot_id: id.to_owned(),
                expected,
                got: offset,
            });
        }
        let size = offset.saturating_add(len as u64);
        if size > MAX_SNAPSHOT_LEN {
            return Err(Rejection::SnapshotTooLarge {
                size,
                limit: MAX_SNAPSHOT_LEN,
            });
        }
        Ok(())
    }

    /// Takes a chunk [`SnapshotReceipt::admit`] allowed. When it is the last (`done`), returns
    /// the whole snapshot and forgets it.
    pub fn take(&mut self, id: &str, offset: u64, chunk: &[u8], done: bool) -> Option<Vec<u8>> {
        let continues = offset != 0
            && self
                .receiving
                .as_ref()
                .is_some_and(|(receiving, data)| receiving == id && data.len() as u64 == offset);
        let (_, data) = match &mut self.receiving {
            Some(receiving) if continues => receiving,
            receiving => receiving.insert((id.to_owned(), Vec::new())),
        };
        data.extend_from_slice(chunk);
        if done {
            return self.receiving.take().map(|(_, data)| data);
        }
        None
    }

    /// Forgets the snapshot being received: the next chunk must start at 0.
    pub fn reset(&mut self) {
        self.receiving = None;
    }

    /// The snapshot being received and the offset its next chunk must have.
    pub fn receiving(&self) -> Option<(&str, u64)> {
        self.receiving
            .as_ref()
            .map(|(id, data)| (id.as_str(), data.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{MAX_TERM, MAX_TERM_LEAP};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, SnapshotMeta, StoredMembership};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn log_id(term: u64, index: u64) -> LogId<ManagerId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Blank,
        }
    }

    fn append(
        term: u64,
        prev: Option<(u64, u64)>,
        entries: &[(u64, u64)],
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, 1),
            prev_log_id: prev.map(|(t, i)| log_id(t, i)),
            entries: entries.iter().map(|(t, i)| blank(*t, *i)).collect(),
            leader_commit: prev.map(|(t, i)| log_id(t, i)),
        }
    }

    #[test]
    fn term_limit_is_the_tighter_of_the_two_bounds() {
        assert_eq!(term_limit(0), MAX_TERM_LEAP);
        assert_eq!(term_limit(7), 7 + MAX_TERM_LEAP);
        assert_eq!(term_limit(MAX_TERM), MAX_TERM);
        assert_eq!(term_limit(u64::MAX), MAX_TERM);
    }

    #[test]
    fn plausible_appends_pass() {
        assert_eq!(check_append_entries(&append(1, None, &[]), 0), Ok(()));
        assert_eq!(
            check_append_entries(&append(3, None, &[(1, 0), (1, 1), (3, 2)]), 3),
            Ok(())
        );
        assert_eq!(
            check_append_entries(&append(5, Some((2, 9)), &[(4, 10), (5, 11)]), 2),
            Ok(())
        );
    }

    #[test]
    fn absurd_terms_are_refused() {
        for (term, local) in [
            (u64::MAX, 0),
            (u64::MAX, u64::MAX),
            (MAX_TERM + 1, MAX_TERM),
        ] {
            assert!(matches!(
                check_append_entries(&append(term, None, &[]), local),
                Err(Implausible::Term {
                    field: Field::Vote,
                    ..
                })
            ));
        }
        assert!(check_append_entries(&append(MAX_TERM_LEAP + 1, None, &[]), 0).is_err());
        assert!(check_append_entries(&append(MAX_TERM_LEAP, None, &[]), 0).is_ok());
        let vote = VoteRequest::new(Vote::new(u64::MAX, 2), None);
        assert!(check_vote_request(&vote, 4).is_err());
    }

    #[test]
    fn absurd_log_ids_are_refused() {
        let cases = [
            (append(5, Some((1, u64::MAX)), &[]), Field::PrevLogId),
            (append(5, Some((u64::MAX, 1)), &[]), Field::PrevLogId),
            (append(5, Some((6, 1)), &[]), Field::PrevLogId),
            (append(5, None, &[(1, u64::MAX)]), Field::Entry),
        ];
        for (rpc, field) in cases {
            let error = check_append_entries(&rpc, 5).unwrap_err();
            let found = match error {
                Implausible::Term { field, .. }
                | Implausible::Index { field, .. }
                | Implausible::AfterVote { field, .. } => Some(field),
                _ => None,
            };
            assert_eq!(found, Some(field), "{error}");
        }
        let mut commit = append(5, None, &[]);
        commit.leader_commit = Some(log_id(1, u64::MAX));
        assert!(matches!(
            check_append_entries(&commit, 5),
            Err(Implausible::Index {
                field: Field::LeaderCommit,
                ..
            })
        ));
        let vote = VoteRequest::new(Vote::new(4, 2), Some(log_id(5, 1)));
        assert!(matches!(
            check_vote_request(&vote, 4),
            Err(Implausible::AfterVote {
                field: Field::LastLogId,
                ..
            })
        ));
    }

    #[test]
    fn entries_must_follow_prev_log_id_in_order() {
        assert_eq!(
            check_append_entries(&append(5, Some((5, 0)), &[(5, 1), (5, 3)]), 5),
            Err(Implausible::NotConsecutive {
                expected: 2,
                got: 3
            })
        );
        assert_eq!(
            check_append_entries(&append(5, None, &[(5, 1)]), 5),
            Err(Implausible::NotConsecutive {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(
            check_append_entries(&append(5, Some((4, 0)), &[(3, 1)]), 5),
            Err(Implausible::TermGoesBack {
                index: 1,
                term: 3,
                previous: 4
            })
        );
        assert!(matches!(
            check_append_entries(&append(5, Some((5, 0)), &[(6, 1)]), 5),
            Err(Implausible::AfterVote { .. })
        ));
    }

    #[test]
    fn snapshot_meta_is_checked() {
        let membership = Membership::new(
            vec![BTreeSet::from([1])],
            BTreeMap::from([(1, ManagerNode::default())]),
        );
        let chunk = |last: LogId<ManagerId>, member: LogId<ManagerId>| InstallSnapshotRequest {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta {
                last_log_id: Some(last),
                last_membership: StoredMembership::new(Some(member), membership.clone()),
                snapshot_id: "s".into(),
            },
            offset: 0,
            data: vec![],
            done: false,
        };
        assert_eq!(
            check_install_snapshot(&chunk(log_id(3, 9), log_id(1, 1)), 3),
            Ok(())
        );
        assert!(check_install_snapshot(&chunk(log_id(3, u64::MAX), log_id(1, 1)), 3).is_err());
        assert!(check_install_snapshot(&chunk(log_id(3, 9), log_id(u64::MAX, 1)), 3).is_err());
    }

    fn members(ids: &[ManagerId], learners: &[ManagerId]) -> Membership<ManagerId, ManagerNode> {
        let voters: BTreeSet<ManagerId> = ids.iter().copied().collect();
        let nodes: BTreeMap<ManagerId, ManagerNode> = ids
            .iter()
            .chain(learners)
            .map(|id| (*id, ManagerNode::default()))
            .collect();
        Membership::new(vec![voters], nodes)
    }

    #[test]
    fn only_members_are_authorized() {
        let group = GroupId(3);
        let membership = members(&[1, 2, 3], &[4]);
        for peer in [None, Some(1), Some(3), Some(4)] {
            assert_eq!(authorize(peer, group, &membership), Ok(()), "{peer:?}");
        }
        assert_eq!(
            authorize(Some(5), group, &membership),
            Err(Rejection::NotAMember { peer: 5, group })
        );
        // No membership yet: a learner being added hears from the leader first.
        assert_eq!(authorize(Some(5), group, &Membership::default()), Ok(()));
    }

    #[test]
    fn snapshot_chunks_come_in_order() {
        let mut receipt = SnapshotReceipt::default();
        assert_eq!(receipt.admit("a", 0, 10), Ok(()));
        assert!(matches!(
            receipt.admit("a", 10, 10),
            Err(Rejection::SnapshotOutOfOrder {
                expected: 0,
                got: 10,
                ..
            })
        ));
        assert_eq!(receipt.take("a", 0, &[1; 10], false), None);
        assert_eq!(receipt.receiving(), Some(("a", 10)));
        assert_eq!(receipt.admit("a", 10, 10), Ok(()));
        assert!(matches!(
            receipt.admit("a", 1 << 40, 10),
            Err(Rejection::SnapshotOutOfOrder { expected: 10, .. })
        ));
        // A rewind within what was received is refused too: the sender starts over at 0.
        assert!(receipt.admit("a", 5, 10).is_err());
        // Another snapshot must start at 0, and may.
        assert!(receipt.admit("b", 10, 10).is_err());
        assert_eq!(receipt.admit("b", 0, 10), Ok(()));
        // The last chunk hands over the whole snapshot, in order.
        assert_eq!(
            receipt.take("a", 10, &[2; 5], true),
            Some([[1; 10].as_slice(), &[2; 5]].concat())
        );
        assert_eq!(receipt.receiving(), None);
        // Offset 0 starts over, even within the same snapshot.
        receipt.take("a", 0, &[1; 10], false);
        receipt.take("a", 0, &[3; 4], false);
        assert_eq!(receipt.receiving(), Some(("a", 4)));
        receipt.reset();
        assert!(receipt.admit("a", 4, 10).is_err());
    }

    #[test]
    fn snapshot_size_is_capped() {
        let receipt = SnapshotReceipt {
            receiving: Some(("a".into(), vec![0; (MAX_SNAPSHOT_LEN - 10) as usize])),
        };
        assert_eq!(receipt.admit("a", MAX_SNAPSHOT_LEN - 10, 10), Ok(()));
        assert_eq!(
            receipt.admit("a", MAX_SNAPSHOT_LEN - 10, 11),
            Err(Rejection::SnapshotTooLarge {
                size: MAX_SNAPSHOT_LEN + 1,
                limit: MAX_SNAPSHOT_LEN
            })
        );
        assert!(receipt.admit("a", u64::MAX, 1).is_err());
    }

    proptest! {
        /// Whatever chunks arrive, taking only what `admit` allows assembles exactly the
        /// bytes sent at their offsets: no hole, nothing past the cap, each chunk where it
        /// said it goes.
        #[test]
        fn admitted_chunks_never_leave_a_hole(
            chunks in proptest::collection::vec(
                (0u8..3, prop_oneof![Just(0u64), 0u64..64, any::<u64>()], 0usize..32, any::<bool>()),
                0..64,
            ),
        ) {
            let mut receipt = SnapshotReceipt::default();
            // The model: the snapshot being received and its bytes, laid out by offset.
            let mut model: Option<(String, Vec<u8>)> = None;
            for (n, (id, offset, len, done)) in chunks.into_iter().enumerate() {
                let id = format!("s{id}");
                let chunk = vec![n as u8; len];
                if receipt.admit(&id, offset, len).is_err() {
                    continue;
                }
                let continues = model
                    .as_ref()
                    .is_some_and(|(m, data)| *m == id && data.len() as u64 == offset);
                prop_assert!(offset == 0 || continues, "hole at {offset} in {id}");
                prop_assert!(offset + len as u64 <= MAX_SNAPSHOT_LEN);
                let mut data = if continues { model.take().map(|(_, d)| d).unwrap_or_default() } else { Vec::new() };
                data.extend_from_slice(&chunk);
                let whole = receipt.take(&id, offset, &chunk, done);
                if done {
                    prop_assert_eq!(whole, Some(data));
                    model = None;
                } else {
                    prop_assert_eq!(whole, None);
                    model = Some((id, data));
                }
                prop_assert_eq!(
                    receipt.receiving(),
                    model.as_ref().map(|(id, data)| (id.as_str(), data.len() as u64))
                );
            }
        }

        #[test]
        fn appends_within_the_bounds_pass(
            local in 0u64..1000,
            leap in 0u64..=MAX_TERM_LEAP,
            prev_index in 0u64..MAX_INDEX - 100,
            steps in proptest::collection::vec(0u64..3, 0..20),
        ) {
            let term = local + leap;
            let mut entries = Vec::new();
            let mut entry_term = 0;
            for (i, step) in steps.iter().enumerate() {
                entry_term = (entry_term + step).min(term);
                entries.push((entry_term, prev_index + 1 + i as u64));
            }
            let rpc = append(term, Some((0, prev_index)), &entries);
            prop_assert_eq!(check_append_entries(&rpc, local), Ok(()));
        }

        #[test]
        fn checks_never_panic(
            vote_term: u64, local: u64,
            prev in proptest::option::of((any::<u64>(), any::<u64>())),
            entries in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..8),
        ) {
            let _ = check_append_entries(&append(vote_term, prev, &entries), local);
            let last = prev.map(|(t, i)| log_id(t, i));
            let _ = check_vote_request(&VoteRequest::new(Vote::new(vote_term, 1), last), local);
        }
    }
}
