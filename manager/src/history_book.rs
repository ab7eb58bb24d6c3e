//! The deliveries a leader queued for history messages as it applied them, waiting for the
//! publish that proposed each one to collect them (history.rs). Plain data: entries are taken
//! by `(group, topic, offset)`, and ones nobody took (the publisher gave up, or the entry was
//! applied without a publisher here) are dropped after [`UNCLAIMED_AFTER`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use firetower_proto::GatewayId;
use firetower_raft::GroupId;

use crate::session_table::{EnqueueError, SessionHandle};

/// How long queued deliveries wait for their publisher.
pub(crate) const UNCLAIMED_AFTER: Duration = Duration::from_secs(10);
/// Entries kept at most; beyond it the oldest half goes (a publisher that comes later sees
/// its deliveries as unconfirmed, never as confirmed).
const MAX_ENTRIES: usize = 100_000;

/// What the leader did with one applied history message.
#[derive(Debug)]
pub(crate) struct Queued {
    /// When it was applied.
    pub at: Instant,
    /// The sessions it went to, with their delivery numbers.
    pub waits: Vec<(SessionHandle, u64)>,
    /// The first gateway it could not be queued for, and why.
    pub undelivered: Option<(GatewayId, EnqueueError)>,
}

/// Queued history deliveries by `(group, topic, offset)`.
#[derive(Debug, Default)]
pub(crate) struct HistoryBook {
    entries: HashMap<(GroupId, String, u64), Queued>,
}

impl HistoryBook {
    /// Record what applying `(group, topic, offset)` queued.
    pub(crate) fn put(&mut self, group: GroupId, topic: String, offset: u64, queued: Queued) {
        if self.entries.len() >= MAX_ENTRIES {
            let now = queued.at;
            self.entries
                .retain(|_, q| now.saturating_duration_since(q.at) < UNCLAIMED_AFTER);
            if self.entries.len() >= MAX_ENTRIES {
                let mut ages: Vec<Instant> = self.entries.values().map(|q| q.at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                self.entries.retain(|_, q| q.at > cut);
            }
        }
        self.entries.insert((group, topic, offset), queued);
    }

    /// Take what applying `(group, topic, offset)` queued, if this manager queued it.
    pub(crate) fn take(&mut self, group: GroupId, topic: &str, offset: u64) -> Option<Queued> {
        self.entries.remove(&(group, topic.to_string(), offset))
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(at: Instant) -> Queued {
        Queued {
            at,
            waits: Vec::new(),
            undelivered: None,
        }
    }

    #[test]
    fn take_returns_what_was_put_once() {
        let mut book = HistoryBook::default();
        let now = Instant::now();
        book.put(GroupId(1), "t".into(), 7, queued(now));
        assert!(book.take(GroupId(1), "t", 6).is_none());
        assert!(book.take(GroupId(2), "t", 7).is_none());
        assert!(book.take(GroupId(1), "t", 7).is_some());
        assert!(book.take(GroupId(1), "t", 7).is_none());
        assert_eq!(book.len(), 0);
    }

    #[test]
    fn stays_bounded_when_nobody_takes() {
        let mut book = HistoryBook::default();
        let start = Instant::now();
        for i in 0..(MAX_ENTRIES as u64 + 10) {
            // A millisecond apart: none is unclaimed for long, so the oldest half goes.
            book.put(
                GroupId(0),
                "t".into(),
                i,
                queued(start + Duration::from_millis(i)),
            );
        }
        assert!(book.len() <= MAX_ENTRIES, "{} entries", book.len());
        // The newest are kept.
        assert!(book.take(GroupId(0), "t", MAX_ENTRIES as u64 + 9).is_some());
    }
}
