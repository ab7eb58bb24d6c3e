//! openraft's log storage (storage v2) for one group, on top of the shared [`crate::Wal`].
//!
//! Every mutation updates the group's in-memory log and queues its record while holding the
//! group's lock, so the order of records in the file is the order openraft made the calls.
//! Reads are served from memory only.

use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use tokio::sync::oneshot;

use crate::error::WalError;
use crate::types::ManagerId;
use crate::wal::{lock, Done, Effect, GroupLog, Record, Wal, WalInner, WriteRequest};
use crate::StoreTypeConfig;

/// The Raft log and vote of one group: openraft's `RaftLogStorage` and `RaftLogReader`.
/// Cheap to clone; clones share state.
pub struct LogStore<C: StoreTypeConfig> {
    wal: Arc<WalInner<C>>,
    group: u32,
    log: Arc<Mutex<GroupLog<C>>>,
}

impl<C: StoreTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            wal: Arc::clone(&self.wal),
            group: self.group,
            log: Arc::clone(&self.log),
        }
    }
}

impl<C: StoreTypeConfig> fmt::Debug for LogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl<C: StoreTypeConfig> Wal<C> {
    /// The Raft log storage of `group`. Every call for the same group shares the same state.
    pub fn log_store(&self, group: u32) -> LogStore<C> {
        let (wal, log) = self.group_parts(group);
        LogStore { wal, group, log }
    }
}

impl<C: StoreTypeConfig> LogStore<C> {
    /// The group this log belongs to.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// Applies `change` to memory and queues `frame` under the group's lock (see module doc).
    fn submit(
        &self,
        frame: Vec<u8>,
        effect: Effect,
        done: Done<C>,
        change: impl FnOnce(&mut GroupLog<C>),
    ) -> Result<(), WalError> {
        let mut log = lock(&self.log);
        change(&mut log);
        self.wal.submit(WriteRequest {
            frame,
            effect,
            done,
        })
    }

    /// Like [`Self::submit`], and waits until the record is durable.
    async fn submit_and_wait(
        &self,
        frame: Vec<u8>,
        effect: Effect,
        change: impl FnOnce(&mut GroupLog<C>),
    ) -> Result<(), WalError> {
        let (tx, rx) = oneshot::channel();
        self.submit(frame, effect, Done::Reply(tx), change)?;
        rx.await
            .map_err(|_| WalError::Stopped("the writer thread has exited".to_string()))?
    }
}

fn encode<C: StoreTypeConfig>(
    record: &Record<'_, openraft::Entry<C>>,
) -> Result<Vec<u8>, WalError> {
    Ok(crate::wal::encode(record)?)
}

fn write_logs(e: WalError) -> StorageError<ManagerId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn write_vote(e: WalError) -> StorageError<ManagerId> {
    StorageIOError::write_vote(AnyError::new(&e)).into()
}

/// `range` as inclusive bounds, or `None` when it is empty (`BTreeMap::range` would panic on
/// some empty ranges, e.g. `5..3`).
fn inclusive_bounds(range: &impl RangeBounds<u64>) -> Option<(u64, u64)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e,
        Bound::Excluded(&e) => e.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (start <= end).then_some((start, end))
}

impl<C: StoreTypeConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<ManagerId>> {
        let Some((start, end)) = inclusive_bounds(&range) else {
            return Ok(Vec::new());
        };
        let log = lock(&self.log);
        Ok(log
            .entries
            .range(start..=end)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl<C: StoreTypeConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<ManagerId>> {
        let log = lock(&self.log);
        Ok(LogState {
            last_purged_log_id: log.purged,
            last_log_id: log.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<ManagerId>) -> Result<(), StorageError<ManagerId>> {
        let (group, vote) = (self.group, *vote);
        let frame = encode::<C>(&Record::Vote { group, vote }).map_err(write_vote)?;
        self.submit_and_wait(frame, Effect::Vote { group, vote }, |log| {
            log.vote = Some(vote)
        })
        .await
        .map_err(write_vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<ManagerId>>, StorageError<ManagerId>> {
        Ok(lock(&self.log).vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<ManagerId>>,
    ) -> Result<(), StorageError<ManagerId>> {
        // Not awaited: a lost committed pointer only means re-applying fewer entries at
        // startup; the next synced batch makes it durable.
        let group = self.group;
        let frame = encode::<C>(&Record::Committed {
            group,
            log_id: committed,
        })
        .map_err(write_logs)?;
        self.submit(
            frame,
            Effect::Committed {
                group,
                log_id: committed,
            },
            Done::Nothing,
            |log| log.committed = committed,
        )
        .map_err(write_logs)
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<ManagerId>>, StorageError<ManagerId>> {
        Ok(lock(&self.log).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<ManagerId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let group = self.group;
        let entries: Vec<openraft::Entry<C>> = entries.into_iter().collect();
        let Some(last_index) = entries.last().map(|e| e.log_id.index) else {
            // Nothing to write; still tell openraft only once everything before is durable.
            return self
                .submit(Vec::new(), Effect::None, Done::Flushed(callback), |_| {})
                .map_err(write_logs);
        };
        // Encoded here, not in the writer thread, to keep the shared writer lean.
        let frame = encode::<C>(&Record::Append {
            group,
            entries: entries.as_slice().into(),
        })
        .map_err(write_logs)?;
        self.submit(
            frame,
            Effect::Append { group, last_index },
            Done::Flushed(callback),
            |log| log.append(entries),
        )
        .map_err(write_logs)
    }

    async fn truncate(&mut self, log_id: LogId<ManagerId>) -> Result<(), StorageError<ManagerId>> {
        let (group, since_index) = (self.group, log_id.index);
        let frame = encode::<C>(&Record::Truncate { group, since_index }).map_err(write_logs)?;
        // Awaited although later appends would sync it anyway: truncation is rare, and this
        // way it is durable when openraft believes it done.
        self.submit_and_wait(frame, Effect::None, |log| log.truncate(since_index))
            .await
            .map_err(write_logs)
    }

    async fn purge(&mut self, upto: LogId<ManagerId>) -> Result<(), StorageError<ManagerId>> {
        // Not awaited: until it is durable, recovery simply keeps the entries (the writer
        // deletes segments only after the purge record is synced).
        let group = self.group;
        let frame = encode::<C>(&Record::Purge { group, upto }).map_err(write_logs)?;
        self.submit(frame, Effect::Purge { group, upto }, Done::Nothing, |log| {
            log.purge(upto)
        })
        .map_err(write_logs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_reversed_ranges_are_empty() {
        assert_eq!(
            inclusive_bounds(&(Bound::Included(5u64), Bound::Excluded(3u64))),
            None
        );
        assert_eq!(inclusive_bounds(&(5u64..5)), None);
        assert_eq!(inclusive_bounds(&(0u64..0)), None);
        assert_eq!(inclusive_bounds(&(3u64..=3)), Some((3, 3)));
        assert_eq!(inclusive_bounds(&(..)), Some((0, u64::MAX)));
        assert_eq!(inclusive_bounds(&(2u64..)), Some((2, u64::MAX)));
        let excluded = (Bound::Excluded(u64::MAX), Bound::Unbounded);
        assert_eq!(inclusive_bounds(&excluded), None);
    }
}
