//! Test seam: make the next write or sync of one log fail the way a full or failing disk does,
//! without a full or failing disk.
//!
//! ```text
//!   test ── inject_fault(data_dir, Fault::Sync { errno: EIO }) ──▶ armed faults (per log dir)
//!                                                                   │ taken once, by
//!   writer thread: write_out ── write(2) ◀── Fault::Write ──────────┤
//!                  sync_active ─ fdatasync ◀── Fault::Sync ─────────┘
//! ```
//!
//! Only in the crate's own tests and with the `fault-injection` feature (the manager's tests
//! turn it on); normal builds have none of it. With the feature on, a batch costs one atomic
//! load more while no fault is armed.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::lock;

/// Linux's "No space left on device".
pub const ENOSPC: i32 = 28;
/// Linux's "Input/output error".
pub const EIO: i32 = 5;

/// What fails next, and with which OS error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next write of a batch puts half its bytes in the segment, then fails with `errno`
    /// ([`ENOSPC`]: a disk that fills in the middle of a write).
    Write {
        /// The OS error the write fails with.
        errno: i32,
    },
    /// The next fdatasync fails with `errno` ([`EIO`]) after the write went through: the
    /// kernel may already have dropped the batch's pages, so none of it may be acknowledged.
    Sync {
        /// The OS error the sync fails with.
        errno: i32,
    },
}

/// Where in the writer a fault can fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    Write,
    Sync,
}

/// True while any fault is armed: the writer's only cost otherwise.
static ARMED: AtomicBool = AtomicBool::new(false);
/// Armed faults: the log directory (`<data-dir>/wal`) and the fault, fired in order.
static FAULTS: Mutex<Vec<(PathBuf, Fault)>> = Mutex::new(Vec::new());

/// Arms `fault` for the log of `data_dir` (the directory given to [`crate::Wal::open`]). It
/// fires once, at that log's next write or fdatasync (whichever `fault` names).
pub fn inject_fault(data_dir: &Path, fault: Fault) {
    lock(&FAULTS).push((data_dir.join("wal"), fault));
    ARMED.store(true, Ordering::Release);
}

/// The error an armed fault makes the writer of `wal_dir` fail with at `stage`, taking the
/// fault; `None` when none is armed there.
pub(super) fn take(wal_dir: &Path, stage: Stage) -> Option<io::Error> {
    if !ARMED.load(Ordering::Acquire) {
        return None;
    }
    let mut faults = lock(&FAULTS);
    let at = faults.iter().position(|(dir, fault)| {
        dir == wal_dir
            && match fault {
                Fault::Write { .. } => stage == Stage::Write,
                Fault::Sync { .. } => stage == Stage::Sync,
            }
    })?;
    let (_, fault) = faults.remove(at);
    if faults.is_empty() {
        ARMED.store(false, Ordering::Release);
    }
    let (Fault::Write { errno } | Fault::Sync { errno }) = fault;
    Some(io::Error::from_raw_os_error(errno))
}

#[cfg(test)]
mod tests {
    //! Fail-stop: after a failed write or sync nothing more is acknowledged, the failure is
    //! published, and what was acknowledged before it is all there after a reopen.

    use std::sync::Arc;
    use std::time::Duration;

    use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
    use openraft::{CommittedLeaderId, LogId, Vote};

    use super::*;
    use crate::{Command, LogStore, Wal, WalError, WalOptions};

    openraft::declare_raft_types!(
        TestConfig:
            D = Command,
            R = crate::Response,
            NodeId = crate::ManagerId,
            Node = crate::ManagerNode,
            Entry = openraft::Entry<TestConfig>,
            SnapshotData = std::io::Cursor<Vec<u8>>,
            AsyncRuntime = openraft::TokioRuntime,
    );

    type Entry = openraft::Entry<TestConfig>;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(Command::Subscribe {
                topic: format!("topic-{index}"),
                gateway: 1,
            }),
        }
    }

    fn open(dir: &Path) -> Wal<TestConfig> {
        Wal::open(dir, WalOptions::default()).unwrap()
    }

    async fn indexes(log: &mut LogStore<TestConfig>) -> Vec<u64> {
        let entries = log.try_get_log_entries(..).await.unwrap();
        entries.iter().map(|e| e.log_id.index).collect()
    }

    /// Appends `from..=to` one call each, every one acknowledged.
    async fn append_ok(log: &mut LogStore<TestConfig>, from: u64, to: u64) {
        for i in from..=to {
            log.blocking_append([entry(i)]).await.unwrap();
        }
    }

    /// The published failure, within a few seconds.
    async fn published(wal: &Wal<TestConfig>) -> Arc<WalError> {
        tokio::time::timeout(Duration::from_secs(5), wal.failed())
            .await
            .expect("the failure is published")
    }

    fn os_error(e: &WalError) -> Option<i32> {
        match e {
            WalError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    #[tokio::test]
    async fn after_a_failed_sync_nothing_is_acknowledged_and_the_failure_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        let mut log = wal.log_store(0);
        append_ok(&mut log, 1, 3).await;
        assert!(wal.failure().is_none());

        inject_fault(dir.path(), Fault::Sync { errno: EIO });
        // Many appends at once, in several groups and whichever batches they land in: the
        // first batch's sync fails, and no later batch is written at all.
        let mut tasks = Vec::new();
        for group in 0..4u32 {
            for i in 0..8u64 {
                let mut log = wal.log_store(group);
                let index = 4 + i + u64::from(group) * 100;
                tasks.push(tokio::spawn(async move {
                    log.blocking_append([entry(index)]).await
                }));
            }
        }
        for task in tasks {
            assert!(
                task.await.unwrap().is_err(),
                "an append after the failed sync was acknowledged"
            );
        }
        let failure = published(&wal).await;
        assert_eq!(os_error(&failure), Some(EIO), "{failure}");
        let text = failure.to_string();
        assert!(text.contains("00000001.log"), "names the file: {text}");
        assert!(text.contains("os error 5"), "names the OS error: {text}");
        assert!(wal.failure().is_some());

        // For good: votes and appends later are refused too, with the first failure as reason.
        let err = log.save_vote(&Vote::new(2, 1)).await.unwrap_err();
        assert!(err.to_string().contains("os error 5"), "{err}");
        assert!(log.blocking_append([entry(40)]).await.is_err());
        assert_eq!(os_error(&*published(&wal).await), Some(EIO));

        drop((log, wal));
        let wal = open(dir.path());
        let mut log = wal.log_store(0);
        let after = indexes(&mut log).await;
        assert_eq!(
            after[..3],
            [1, 2, 3],
            "acknowledged entries survive: {after:?}"
        );
        assert!(wal.failure().is_none(), "a reopened log starts healthy");
    }

    #[tokio::test]
    async fn a_write_that_fails_half_way_stops_the_log_and_is_cut_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        let mut log = wal.log_store(0);
        append_ok(&mut log, 1, 5).await;

        inject_fault(dir.path(), Fault::Write { errno: ENOSPC });
        let err = log.blocking_append([entry(6)]).await.unwrap_err();
        assert!(err.to_string().contains("os error 28"), "{err}");
        assert!(log.blocking_append([entry(7)]).await.is_err());
        assert!(log.save_vote(&Vote::new(2, 1)).await.is_err());
        let failure = published(&wal).await;
        assert_eq!(os_error(&failure), Some(ENOSPC), "{failure}");

        drop((log, wal));
        // The torn half record is the log's tail: cut off, everything acknowledged kept.
        let wal = open(dir.path());
        let mut log = wal.log_store(0);
        assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5]);
        assert_eq!(log.read_vote().await.unwrap(), None);
        append_ok(&mut log, 6, 7).await;
        assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5, 6, 7]);
    }

    #[tokio::test]
    async fn a_fault_fires_only_on_its_own_log() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (wal_a, wal_b) = (open(a.path()), open(b.path()));
        inject_fault(a.path(), Fault::Sync { errno: EIO });
        let mut log_b = wal_b.log_store(0);
        append_ok(&mut log_b, 1, 3).await;
        assert!(wal_b.failure().is_none());
        assert!(wal_a
            .log_store(0)
            .blocking_append([entry(1)])
            .await
            .is_err());
        assert!(wal_a.failure().is_some());
    }
}
