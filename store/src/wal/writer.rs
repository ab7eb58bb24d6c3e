//! The writer thread: the only code that writes segment files.
//!
//! ```text
//!   LogStore (group 0) ─┐
//!   LogStore (group 1) ─┼─ WriteRequest{frame, effect, done} ─▶ channel ─▶ writer thread
//!   LogStore (group N) ─┘                                                  │
//!        ┌─────────────────────────────────────────────────────────────────┘
//!        ▼  recv one, drain everything pending (one batch, any groups)
//!        write the frames with one write(2), rotate segments between frames when full
//!        one fdatasync for the whole batch
//!        complete every callback of the batch, then delete fully purged segments
//! ```
//!
//! Frames are encoded by the callers, so the thread does no serialization: it copies,
//! writes, syncs, and wakes callers. One sync per batch is what lets many groups commit tens
//! of thousands of entries per second on one disk.
//!
//! Fail-stop: the first failed write, sync or segment rotation stops the writer for good.
//! Every request of that batch and every later one is answered with an error, and the failure
//! is published on the `Wal` ([`crate::Wal::failed`]) for the manager to stop on. A sync is
//! never retried: after a failed fdatasync the kernel may have dropped the dirty pages and
//! marked them clean, so a retry could succeed without the data being on disk ("fsyncgate").

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::LogFlushed;
use openraft::{LogId, Vote};
use tokio::sync::{oneshot, watch};

use super::codec::{self, GroupPointers, Record};
use super::segment::{self, Segment};
use super::{FsyncObserver, WalOptions};
use crate::error::WalError;
use crate::types::ManagerId;
use crate::StoreTypeConfig;

/// Upper bound of requests per batch, so that callers of a huge backlog see progress.
const MAX_BATCH: usize = 4096;

/// One frame to write, what it changes, and whom to tell when it is durable.
pub(crate) struct WriteRequest<C: StoreTypeConfig> {
    /// An encoded frame (empty for a pure "tell me when everything before is durable").
    pub frame: Vec<u8>,
    pub effect: Effect,
    pub done: Done<C>,
}

/// What a frame changes, as far as segment checkpoints and deletion care.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Effect {
    None,
    Append {
        group: u32,
        last_index: u64,
    },
    Vote {
        group: u32,
        vote: Vote<ManagerId>,
    },
    Committed {
        group: u32,
        log_id: Option<LogId<ManagerId>>,
    },
    Purge {
        group: u32,
        upto: LogId<ManagerId>,
    },
}

/// Who waits for a frame to be durable.
pub(crate) enum Done<C: StoreTypeConfig> {
    /// Nobody (purge, committed): a later synced batch makes it durable.
    Nothing,
    /// openraft's append callback.
    Flushed(LogFlushed<C>),
    /// A caller awaiting the result (vote, truncate).
    Reply(oneshot::Sender<Result<(), WalError>>),
}

impl<C: StoreTypeConfig> Done<C> {
    /// Tell the waiter how its batch ended. One failure answers every request of the batch,
    /// so it is shared.
    fn complete(self, result: &Result<(), Arc<WalError>>) {
        match (self, result) {
            (Done::Nothing, _) => {}
            (Done::Flushed(cb), Ok(())) => cb.log_io_completed(Ok(())),
            (Done::Flushed(cb), Err(e)) => cb.log_io_completed(Err(io::Error::other(e.clone()))),
            // A dropped receiver means the caller gave up waiting; nothing to tell.
            (Done::Reply(tx), Ok(())) => drop(tx.send(Ok(()))),
            (Done::Reply(tx), Err(e)) => {
                let reason = match &**e {
                    WalError::Stopped(reason) => reason.clone(),
                    first => first.to_string(),
                };
                drop(tx.send(Err(WalError::Stopped(reason))))
            }
        }
    }
}

/// State owned by the writer thread.
pub(crate) struct Writer {
    pub dir: PathBuf,
    pub opts: WalOptions,
    /// The segment being appended to, open for appending.
    pub file: File,
    pub active: Segment,
    pub active_len: u64,
    /// Older segments, oldest first.
    pub closed: VecDeque<Segment>,
    /// Every group's pointers as of the last frame written: the next checkpoint.
    pub pointers: BTreeMap<u32, GroupPointers>,
    /// Set after a failed write or sync: the file's state is unknown from then on.
    pub stopped: Option<Arc<WalError>>,
    /// Where the failure that stopped the writer is published (see [`crate::Wal::failed`]).
    pub failure: watch::Sender<Option<Arc<WalError>>>,
    /// Told the duration of every fdatasync (the manager's fsync latency histogram).
    pub observer: Option<Arc<dyn FsyncObserver>>,
}

impl Writer {
    /// Serves requests until every sender is gone (the `Wal` was dropped).
    pub(super) fn run<C: StoreTypeConfig>(mut self, rx: Receiver<WriteRequest<C>>) {
        let _panic_guard = PanicGuard(self.failure.clone());
        self.delete_purged_segments();
        let mut batch: Vec<WriteRequest<C>> = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(req) => batch.push(req),
                    Err(_) => break,
                }
            }
            let purged = batch
                .iter()
                .any(|r| matches!(r.effect, Effect::Purge { .. }));
            let result = self.write_batch(&batch, &mut buf).map_err(|e| self.stop(e));
            for req in batch.drain(..) {
                req.done.complete(&result);
            }
            // After the sync: a purge must be durable before the entries it covers vanish.
            if purged && result.is_ok() {
                self.delete_purged_segments();
            }
        }
    }

    /// Stops the writer for good after `error` and publishes it; returns the error to answer
    /// the batch with. Once stopped, later batches get [`WalError::Stopped`] and the first
    /// failure stays the published one.
    fn stop(&mut self, error: WalError) -> Arc<WalError> {
        if self.stopped.is_some() {
            return Arc::new(error);
        }
        match &error {
            WalError::Io { path, source } => tracing::error!(
                event = "wal_failed",
                file = %path.display(),
                os_error = %source,
                "write-ahead log I/O failed; it accepts no further writes and acknowledges nothing more"
            ),
            other => tracing::error!(
                event = "wal_failed",
                error = %other,
                "write-ahead log failed; it accepts no further writes and acknowledges nothing more"
            ),
        }
        let error = Arc::new(error);
        self.stopped = Some(error.clone());
        self.failure.send_replace(Some(error.clone()));
        error
    }

    fn write_batch<C: StoreTypeConfig>(
        &mut self,
        batch: &[WriteRequest<C>],
        buf: &mut Vec<u8>,
    ) -> Result<(), WalError> {
        if let Some(first) = &self.stopped {
            return Err(WalError::Stopped(first.to_string()));
        }
        buf.clear();
        for req in batch {
            if !req.frame.is_empty()
                && self.active_len + buf.len() as u64 >= self.opts.segment_bytes
            {
                self.rotate::<C>(buf)?;
            }
            buf.extend_from_slice(&req.frame);
            self.note(req.effect);
        }
        let bytes = buf.len() as u64;
        self.write_out(buf)?;
        if self.opts.fsync {
            self.sync_active(bytes)?;
        }
        Ok(())
    }

    /// fdatasyncs the active segment and reports how long it took to the observer.
    fn sync_active(&mut self, bytes: u64) -> Result<(), WalError> {
        let started = Instant::now();
        #[cfg(any(test, feature = "fault-injection"))]
        if let Some(source) = super::faults::take(&self.dir, super::faults::Stage::Sync) {
            return Err(self.io_error(source));
        }
        self.file
            .sync_data()
            .map_err(|source| self.io_error(source))?;
        if let Some(observer) = &self.observer {
            observer.fsync_done(started.elapsed(), bytes);
        }
        Ok(())
    }

    /// Writes `buf` to the active segment and clears it.
    fn write_out(&mut self, buf: &mut Vec<u8>) -> Result<(), WalError> {
        if buf.is_empty() {
            return Ok(());
        }
        #[cfg(any(test, feature = "fault-injection"))]
        if let Some(source) = super::faults::take(&self.dir, super::faults::Stage::Write) {
            // A disk that fills mid-write: part of the batch reaches the file, torn.
            let half = buf.len() / 2;
            let _ = self.file.write_all(&buf[..half]);
            return Err(self.io_error(source));
        }
        self.file
            .write_all(buf)
            .map_err(|source| self.io_error(source))?;
        self.active_len += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    /// Closes the active segment (durably) and starts the next one with a checkpoint of every
    /// group's pointers as of the frames written so far.
    fn rotate<C: StoreTypeConfig>(&mut self, buf: &mut Vec<u8>) -> Result<(), WalError> {
        self.write_out(buf)?;
        // Always synced, even with fsync off: recovery treats damage in a non-last segment as
        // corruption, so a closed segment must be complete.
        self.sync_active(0)?;
        let next = Segment::new(&self.dir, self.active.id + 1);
        let file = create_segment(&next.path)?;
        segment::sync_dir(&self.dir)?;
        let closed = std::mem::replace(&mut self.active, next);
        self.closed.push_back(closed);
        self.file = file;
        self.active_len = 0;
        let checkpoint: Record<'_, openraft::Entry<C>> = Record::Checkpoint {
            groups: self.pointers.values().cloned().collect(),
        };
        buf.extend_from_slice(&codec::encode(&checkpoint)?);
        tracing::debug!(segment = %self.active.path.display(), "write-ahead log segment started");
        Ok(())
    }

    fn note(&mut self, effect: Effect) {
        match effect {
            Effect::None => {}
            Effect::Append { group, last_index } => self.active.note_append(group, last_index),
            Effect::Vote { group, vote } => self.group(group).vote = Some(vote),
            Effect::Committed { group, log_id } => self.group(group).committed = log_id,
            Effect::Purge { group, upto } => {
                let p = self.group(group);
                if p.purged.is_none_or(|old| old.index < upto.index) {
                    p.purged = Some(upto);
                }
            }
        }
    }

    fn group(&mut self, group: u32) -> &mut GroupPointers {
        self.pointers.entry(group).or_insert_with(|| GroupPointers {
            group,
            ..GroupPointers::default()
        })
    }

    /// Deletes the oldest segments while all their entries are purged. Only a prefix of the
    /// log is ever deleted: a later segment may hold a truncation of entries in an earlier
    /// one, and replaying the earlier one without it would resurrect those entries.
    fn delete_purged_segments(&mut self) {
        let mut deleted = false;
        while let Some(oldest) = self.closed.front() {
            let pointers = &self.pointers;
            if !oldest.is_purged(|g| pointers.get(&g).and_then(|p| p.purged).map(|p| p.index)) {
                break;
            }
            if let Err(e) = fs::remove_file(&oldest.path) {
                // Harmless: retried after the next purge.
                tracing::warn!(segment = %oldest.path.display(), error = %e, "cannot delete purged write-ahead log segment");
                break;
            }
            tracing::debug!(segment = %oldest.path.display(), "deleted purged write-ahead log segment");
            self.closed.pop_front();
            deleted = true;
        }
        if deleted {
            if let Err(e) = segment::sync_dir(&self.dir) {
                tracing::warn!(error = %e, "cannot sync the write-ahead log directory after deleting segments");
            }
        }
    }

    fn io_error(&self, source: io::Error) -> WalError {
        WalError::Io {
            path: self.active.path.clone(),
            source,
        }
    }
}

/// Publishes a failure if the writer thread unwinds, so that the manager stops instead of
/// waiting on a log nobody writes.
struct PanicGuard(watch::Sender<Option<Arc<WalError>>>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                event = "wal_failed",
                "the write-ahead log writer thread panicked"
            );
            self.0.send_if_modified(|failure| {
                failure.get_or_insert_with(|| {
                    Arc::new(WalError::Stopped("the writer thread panicked".to_string()))
                });
                true
            });
        }
    }
}

/// Creates a new, empty segment file (never overwrites one).
pub(crate) fn create_segment(path: &std::path::Path) -> Result<File, WalError> {
    OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(path)
        .map_err(|source| WalError::Io {
            path: path.to_path_buf(),
            source,
        })
}
