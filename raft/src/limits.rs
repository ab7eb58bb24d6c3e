//! The bounds a Raft request's values must stay within, and the error naming the value that
//! does not ([`Implausible`]). Shared by [`crate::admission`], which checks them, and
//! [`crate::wire`], whose `Rejection` carries the verdict to the peer.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Highest term accepted from a peer. Half the range: openraft adds 1 per election, and the
/// other half would take 2^63 elections to use up.
pub const MAX_TERM: u64 = u64::MAX / 2;

/// Most a peer's term may be ahead of this manager's current term. Real terms grow by one per
/// election; this leaves room for any partition and refuses a jump that would burn the range.
pub const MAX_TERM_LEAP: u64 = 1 << 32;

/// Highest log index accepted from a peer: 2^63 entries is beyond any log, and openraft adds 1
/// to indexes.
pub const MAX_INDEX: u64 = u64::MAX / 2;

/// Largest snapshot a group receives. Snapshot data is held in memory while it arrives (the
/// snapshot type is a `Cursor<Vec<u8>>`), and one group's table (topics, gateways, sessions) is
/// orders of magnitude smaller than this in any deployment we size for.
pub const MAX_SNAPSHOT_LEN: u64 = 1 << 30;

/// Which part of a request holds an implausible value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    /// The sender's vote (leader or candidate).
    Vote,
    /// `AppendEntries::prev_log_id`.
    PrevLogId,
    /// `AppendEntries::leader_commit`.
    LeaderCommit,
    /// The log id of an entry.
    Entry,
    /// `Vote::last_log_id`.
    LastLogId,
    /// The last log id of a snapshot.
    SnapshotLastLogId,
    /// The log id of a snapshot's membership.
    SnapshotMembership,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Vote => "the vote",
            Field::PrevLogId => "prev_log_id",
            Field::LeaderCommit => "leader_commit",
            Field::Entry => "an entry's log id",
            Field::LastLogId => "last_log_id",
            Field::SnapshotLastLogId => "the snapshot's last log id",
            Field::SnapshotMembership => "the snapshot's membership log id",
        })
    }
}

/// A value no correct peer sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Implausible {
    /// A term beyond [`MAX_TERM`] or [`MAX_TERM_LEAP`] past the receiver's term.
    #[error(
        "{field} has term {term}, above the limit of {limit} (no term above u64::MAX / 2 or more \
         than 2^32 past this manager's current term)"
    )]
    Term {
        /// Where the term is.
        field: Field,
        /// The term.
        term: u64,
        /// The receiver's limit.
        limit: u64,
    },
    /// A log index beyond [`MAX_INDEX`].
    #[error("{field} has index {index}, above the limit of {MAX_INDEX}")]
    Index {
        /// Where the index is.
        field: Field,
        /// The index.
        index: u64,
    },
    /// An entry whose index does not follow the previous one (or `prev_log_id`).
    #[error("entry at index {got} where index {expected} must come next")]
    NotConsecutive {
        /// The index that would follow.
        expected: u64,
        /// The entry's index.
        got: u64,
    },
    /// An entry whose term is below the term of the entry (or `prev_log_id`) before it.
    #[error("entry at index {index} has term {term}, below the term {previous} before it")]
    TermGoesBack {
        /// The entry's index.
        index: u64,
        /// The entry's term.
        term: u64,
        /// The term before it.
        previous: u64,
    },
    /// A log id of a term after the sender's own vote: no leader holds entries of a later term.
    #[error("{field} has term {term}, after the sender's vote of term {vote}")]
    AfterVote {
        /// Where the log id is.
        field: Field,
        /// Its term.
        term: u64,
        /// The sender's vote term.
        vote: u64,
    },
}

/// The highest term accepted by a manager whose current term is `local_term`.
pub fn term_limit(local_term: u64) -> u64 {
    local_term.saturating_add(MAX_TERM_LEAP).min(MAX_TERM)
}
