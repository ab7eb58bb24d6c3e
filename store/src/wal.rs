//! The write-ahead log: one per manager, shared by all its Raft groups.
//!
//! ```text
//!   <data-dir>/wal/00000001.log   [checkpoint][append g0][vote g1][append g1][purge g0]...
//!                  00000002.log   [checkpoint: vote/committed/purged of every group][...]
//!                  ...            the last segment is the one appended to
//! ```
//!
//! Every change to a group's log or vote is one CRC-checked record (see `codec`). A single
//! writer thread batches the records of all groups and syncs once per batch (see `writer`).
//! Reads never touch the disk: each group's entries, vote, committed and purge point live in
//! memory, rebuilt by replaying the segments on [`Wal::open`].
//!
//! Memory: entries stay in memory until openraft purges them, which it does after each
//! snapshot (keeping `max_in_snapshot_log_to_keep`). Memory per group is therefore bounded by
//! the snapshot policy (`snapshot_policy` + `max_in_snapshot_log_to_keep` entries), not by
//! uptime.
//!
//! Recovery: a damaged tail of the last segment with nothing valid after it is a write cut
//! short by a crash; it is cut off with a warning. Damage anywhere else means the disk lost
//! data that was acknowledged, and [`Wal::open`] refuses with [`WalError::Corrupt`].
//!
//! Failure: the first failed write or fdatasync (a full disk, an I/O error) stops the log for
//! good. Nothing is acknowledged from then on, and [`Wal::failed`] resolves with the error:
//! the process must stop, and its restart recovers as after a crash.

mod codec;
#[cfg(any(test, feature = "fault-injection"))]
pub(crate) mod faults;
mod segment;
mod writer;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use openraft::{LogId, Vote};
use tokio::sync::watch;

pub(crate) use codec::{encode, Record};
use codec::{FrameError, GroupPointers};
use segment::Segment;
use writer::Writer;
pub(crate) use writer::{Done, Effect, WriteRequest};

use crate::error::WalError;
use crate::types::ManagerId;
use crate::StoreTypeConfig;

/// Tuning of the write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// Sync (fdatasync) each batch before acknowledging it. Turning it off loses acknowledged
    /// entries on power loss and breaks Raft's guarantees: for tests and benchmarks only.
    pub fsync: bool,
    /// A segment is closed and a new one started once it reaches this size. Smaller segments
    /// free disk sooner after purges; larger ones mean fewer files.
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            fsync: true,
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Told how long each fdatasync of the log took, from the writer thread. The manager
/// registers one to feed its WAL fsync latency histogram; the store itself knows nothing of
/// metrics. Implementations must be quick: the writer thread waits for them.
pub trait FsyncObserver: Send + Sync + fmt::Debug + 'static {
    /// One sync of `bytes` bytes (the batch just written) took `took`.
    fn fsync_done(&self, took: Duration, bytes: u64);
}

/// The write-ahead log of one manager. Cheap to clone; all clones share one writer thread.
///
/// Dropping the last clone (and every [`crate::LogStore`] made from it) stops the writer thread
/// after it has finished the requests already sent.
pub struct Wal<C: StoreTypeConfig> {
    inner: Arc<WalInner<C>>,
}

impl<C: StoreTypeConfig> Clone for Wal<C> {
    fn clone(&self) -> Self {
        Wal {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: StoreTypeConfig> fmt::Debug for Wal<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl<C: StoreTypeConfig> Wal<C> {
    /// Opens (or creates) the log in `dir/wal/`, replays it, and starts the writer thread.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<Wal<C>, WalError> {
        Self::open_observed(dir, opts, None)
    }

    /// Like [`Wal::open`], reporting every fsync of the writer thread to `observer`.
    pub fn open_observed(
        dir: &Path,
        opts: WalOptions,
        observer: Option<Arc<dyn FsyncObserver>>,
    ) -> Result<Wal<C>, WalError> {
        let dir = dir.join("wal");
        fs::create_dir_all(&dir).map_err(|source| WalError::Io {
            path: dir.clone(),
            source,
        })?;
        let Replayed {
            groups,
            mut segments,
        } = replay::<C>(&dir)?;

        let pointers: BTreeMap<u32, GroupPointers> = groups
            .iter()
            .map(|(g, log)| (*g, log.pointers(*g)))
            .collect();
        let (active, mut active_len, mut file) = match segments.pop() {
            Some((active, len)) => {
                let file =
                    OpenOptions::new()
                        .append(true)
                        .open(&active.path)
                        .map_err(|source| WalError::Io {
                            path: active.path.clone(),
                            source,
                        })?;
                (active, len, file)
            }
            None => {
                let active = Segment::new(&dir, 1);
                let file = writer::create_segment(&active.path)?;
                segment::sync_dir(&dir)?;
                (active, 0, file)
            }
        };
        if active_len == 0 {
            // Every segment but the very first must open with a checkpoint, or deleting the
            // segments before it would lose votes and purge points. An empty last segment
            // (new, or created just before a crash) gets its checkpoint now.
            let checkpoint: Record<'_, openraft::Entry<C>> = Record::Checkpoint {
                groups: pointers.values().cloned().collect(),
            };
            let frame = codec::encode(&checkpoint)?;
            let io = |source| WalError::Io {
                path: active.path.clone(),
                source,
            };
            file.write_all(&frame).map_err(io)?;
            file.sync_data().map_err(io)?;
            active_len = frame.len() as u64;
        }
        let (failure_tx, failure) = watch::channel(None);
        let writer = Writer {
            dir: dir.clone(),
            opts,
            file,
            active,
            active_len,
            closed: segments
                .into_iter()
                .map(|(s, _)| s)
                .collect::<VecDeque<_>>(),
            pointers,
            stopped: None,
            failure: failure_tx,
            observer,
        };

        let (tx, rx) = mpsc::channel::<WriteRequest<C>>();
        let thread = std::thread::Builder::new()
            .name("firetower-wal".to_string())
            .spawn(move || writer.run(rx))
            .map_err(|source| WalError::Io {
                path: dir.clone(),
                source,
            })?;

        let groups = groups
            .into_iter()
            .map(|(g, log)| (g, Arc::new(Mutex::new(log))))
            .collect();
        Ok(Wal {
            inner: Arc::new(WalInner {
                dir,
                groups: Mutex::new(groups),
                failure,
                tx: Some(tx),
                thread: Some(thread),
            }),
        })
    }

    /// The shared state a [`crate::LogStore`] of this log works on, and the in-memory log of
    /// `group` (created empty for a group the log has not seen).
    pub(crate) fn group_parts(&self, group: u32) -> (Arc<WalInner<C>>, Arc<Mutex<GroupLog<C>>>) {
        let log = {
            let mut groups = lock(&self.inner.groups);
            Arc::clone(
                groups
                    .entry(group)
                    .or_insert_with(|| Arc::new(Mutex::new(GroupLog::default()))),
            )
        };
        (Arc::clone(&self.inner), log)
    }

    /// The directory holding the segment files (`<dir>/wal`).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The failure that stopped the log for good, if it has stopped (see [`Wal::failed`]).
    pub fn failure(&self) -> Option<Arc<WalError>> {
        self.inner.failure.borrow().clone()
    }

    /// Resolves once the log stops for good: a write or fdatasync failed (the error names the
    /// file and the OS error), or the writer thread died. From then on every append, vote and
    /// truncation is refused, so the process should stop; a restart recovers as after a
    /// crash. Never resolves while the log works. The future does not keep the log open.
    pub fn failed(&self) -> impl Future<Output = Arc<WalError>> + Send + 'static {
        let mut failure = self.inner.failure.clone();
        async move {
            // `Err`: the writer is gone without a failure (the log was dropped): never.
            if let Ok(failure) = failure.wait_for(Option::is_some).await {
                if let Some(failure) = failure.as_ref() {
                    return failure.clone();
                }
            }
            std::future::pending().await
        }
    }
}

/// Shared by a [`Wal`] and its [`crate::LogStore`]s.
pub(crate) struct WalInner<C: StoreTypeConfig> {
    dir: PathBuf,
    groups: Mutex<HashMap<u32, Arc<Mutex<GroupLog<C>>>>>,
    /// Set by the writer when it stops for good.
    failure: watch::Receiver<Option<Arc<WalError>>>,
    /// `Some` until drop, which closes the channel to stop the writer.
    tx: Option<Sender<WriteRequest<C>>>,
    thread: Option<JoinHandle<()>>,
}

impl<C: StoreTypeConfig> WalInner<C> {
    /// Queues a request for the writer thread.
    pub(crate) fn submit(&self, req: WriteRequest<C>) -> Result<(), WalError> {
        let stopped = || WalError::Stopped("the writer thread has exited".to_string());
        self.tx
            .as_ref()
            .ok_or_else(stopped)?
            .send(req)
            .map_err(|_| stopped())
    }
}

impl<C: StoreTypeConfig> Drop for WalInner<C> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            // The writer only finishes requests already queued; joining makes a reopen of the
            // same directory safe right after the drop.
            if thread.join().is_err() {
                tracing::error!("the write-ahead log writer thread panicked");
            }
        }
    }
}

/// The in-memory state of one group's log: what reads are served from.
#[derive(Debug)]
pub(crate) struct GroupLog<C: StoreTypeConfig> {
    pub entries: BTreeMap<u64, openraft::Entry<C>>,
    pub vote: Option<Vote<ManagerId>>,
    pub committed: Option<LogId<ManagerId>>,
    pub purged: Option<LogId<ManagerId>>,
}

impl<C: StoreTypeConfig> Default for GroupLog<C> {
    fn default() -> Self {
        GroupLog {
            entries: BTreeMap::new(),
            vote: None,
            committed: None,
            purged: None,
        }
    }
}

impl<C: StoreTypeConfig> GroupLog<C> {
    /// Appends entries; an entry replaces any entry at or after its index, so the log never
    /// keeps a stale suffix. Entries already purged are ignored.
    pub(crate) fn append(&mut self, entries: impl IntoIterator<Item = openraft::Entry<C>>) {
        for entry in entries {
            let index = entry.log_id.index;
            if self.purged.is_some_and(|p| index <= p.index) {
                continue;
            }
            drop(self.entries.split_off(&index));
            self.entries.insert(index, entry);
        }
    }

    pub(crate) fn truncate(&mut self, since_index: u64) {
        drop(self.entries.split_off(&since_index));
    }

    pub(crate) fn purge(&mut self, upto: LogId<ManagerId>) {
        if self.purged.is_some_and(|p| p.index >= upto.index) {
            return;
        }
        self.purged = Some(upto);
        self.entries = self.entries.split_off(&(upto.index.saturating_add(1)));
        if upto.index == u64::MAX {
            self.entries.clear();
        }
    }

    /// The last log id: the last entry's, or the purge point when everything is purged.
    pub(crate) fn last_log_id(&self) -> Option<LogId<ManagerId>> {
        self.entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(self.purged)
    }

    fn pointers(&self, group: u32) -> GroupPointers {
        GroupPointers {
            group,
            vote: self.vote,
            committed: self.committed,
            purged: self.purged,
        }
    }

    fn apply(&mut self, record: Record<'static, openraft::Entry<C>>) {
        match record {
            Record::Append { entries, .. } => self.append(entries.into_owned()),
            Record::Truncate { since_index, .. } => self.truncate(since_index),
            Record::Purge { upto, .. } => self.purge(upto),
            Record::Vote { vote, .. } => self.vote = Some(vote),
            Record::Committed { log_id, .. } => self.committed = log_id,
            Record::Checkpoint { .. } => {}
        }
    }

    fn restore(&mut self, p: GroupPointers) {
        self.vote = p.vote;
        self.committed = p.committed;
        if let Some(purged) = p.purged {
            self.purge(purged);
        }
    }
}

/// The state rebuilt from the segment files.
struct Replayed<C: StoreTypeConfig> {
    groups: HashMap<u32, GroupLog<C>>,
    /// Every segment with its valid length, oldest first.
    segments: Vec<(Segment, u64)>,
}

fn replay<C: StoreTypeConfig>(dir: &Path) -> Result<Replayed<C>, WalError> {
    let files = segment::list(dir)?;
    let mut groups: HashMap<u32, GroupLog<C>> = HashMap::new();
    let mut segments = Vec::with_capacity(files.len());
    let last = files.len().saturating_sub(1);
    for (i, (id, path)) in files.into_iter().enumerate() {
        let data = fs::read(&path).map_err(|source| WalError::Io {
            path: path.clone(),
            source,
        })?;
        let mut seg = Segment {
            id,
            path,
            max_index: HashMap::new(),
        };
        let mut offset = 0usize;
        while offset < data.len() {
            match codec::decode::<openraft::Entry<C>>(&data[offset..]) {
                Ok((record, len)) => {
                    apply_record(&mut groups, &mut seg, record);
                    offset += len;
                }
                Err(err) => {
                    let valid_after = valid_frame_after(&data, offset + 1);
                    if i == last && valid_after.is_none() && !matches!(err, FrameError::Decode(_)) {
                        cut_tail(&seg.path, offset as u64, (data.len() - offset) as u64, &err)?;
                        break;
                    }
                    let detail = match valid_after {
                        Some(next) => format!("{err}; a valid record follows at offset {next}"),
                        None if i != last => format!("{err}; later segments follow this one"),
                        None => err.to_string(),
                    };
                    return Err(WalError::Corrupt {
                        file: seg.path,
                        offset: offset as u64,
                        detail,
                    });
                }
            }
        }
        segments.push((seg, offset as u64));
    }
    Ok(Replayed { groups, segments })
}

fn apply_record<C: StoreTypeConfig>(
    groups: &mut HashMap<u32, GroupLog<C>>,
    seg: &mut Segment,
    record: Record<'static, openraft::Entry<C>>,
) {
    match record {
        Record::Checkpoint { groups: pointers } => {
            for p in pointers {
                groups.entry(p.group).or_default().restore(p);
            }
        }
        Record::Append { group, ref entries } => {
            if let Some(last) = entries.last() {
                seg.note_append(group, last.log_id.index);
            }
            groups.entry(group).or_default().apply(record);
        }
        Record::Truncate { group, .. }
        | Record::Purge { group, .. }
        | Record::Vote { group, .. }
        | Record::Committed { group, .. } => groups.entry(group).or_default().apply(record),
    }
}

/// The offset of the first intact frame at or after `from`, if any. Used to tell a torn
/// tail (nothing valid after the damage) from damage in the middle of the log.
fn valid_frame_after(data: &[u8], from: usize) -> Option<usize> {
    (from..data.len()).find(|&at| codec::check_frame(&data[at..]).is_ok())
}

/// Cuts a torn tail off the last segment.
fn cut_tail(path: &Path, offset: u64, bytes: u64, err: &FrameError) -> Result<(), WalError> {
    tracing::warn!(
        segment = %path.display(),
        offset,
        bytes,
        reason = %err,
        "cutting a torn tail off the write-ahead log (a write interrupted by a crash)"
    );
    let io = |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new().write(true).open(path).map_err(io)?;
    file.set_len(offset).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Locks a mutex whose critical sections never panic (plain map and field updates), so a
/// poisoned lock still holds consistent data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
