//! The fsync observer hook: every durable write of the log is reported with its duration, so
//! that the manager can export a WAL fsync latency histogram without the store knowing about
//! metrics.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TestConfig;
use firetower_store::{FsyncObserver, Wal, WalOptions};
use openraft::storage::RaftLogStorage;
use openraft::Vote;

#[derive(Debug, Default)]
struct Counting {
    syncs: AtomicU64,
    bytes: AtomicU64,
}

impl FsyncObserver for Counting {
    fn fsync_done(&self, took: Duration, bytes: u64) {
        assert!(
            took < Duration::from_secs(60),
            "an fsync of {took:?} is not plausible"
        );
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

fn observed(dir: &std::path::Path, fsync: bool, observer: Arc<Counting>) -> Wal<TestConfig> {
    let opts = WalOptions {
        fsync,
        ..WalOptions::default()
    };
    Wal::open_observed(dir, opts, Some(observer)).unwrap()
}

#[tokio::test]
async fn every_synced_vote_is_reported_with_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let observer = Arc::new(Counting::default());
    let wal = observed(dir.path(), true, observer.clone());
    let mut log = wal.log_store(0);
    log.save_vote(&Vote::new(1, 1)).await.unwrap();
    log.save_vote(&Vote::new(2, 1)).await.unwrap();
    assert!(observer.syncs.load(Ordering::Relaxed) >= 2);
    assert!(observer.bytes.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn nothing_is_reported_when_fsync_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let observer = Arc::new(Counting::default());
    let wal = observed(dir.path(), false, observer.clone());
    let mut log = wal.log_store(0);
    log.save_vote(&Vote::new(1, 1)).await.unwrap();
    assert_eq!(observer.syncs.load(Ordering::Relaxed), 0);
}
