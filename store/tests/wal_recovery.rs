//! The write-ahead log across restarts: what comes back, what is repaired (a torn tail), and
//! what is refused (damage before the end).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{blank, command, log_id, Entry, TestConfig};
use firetower_store::{Command, LogStore, Wal, WalError, WalOptions};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::Vote;

type TestWal = Wal<TestConfig>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn open(dir: &Path) -> TestWal {
    Wal::open(dir, WalOptions::default()).unwrap()
}

fn small_segments(dir: &Path) -> TestWal {
    Wal::open(
        dir,
        WalOptions {
            fsync: true,
            segment_bytes: 512,
        },
    )
    .unwrap()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn sub(term: u64, index: u64) -> Entry {
    command(
        term,
        index,
        Command::Subscribe {
            topic: format!("topic-{index}"),
            gateway: index % 7,
        },
    )
}

async fn entries(log: &mut LogStore<TestConfig>) -> Vec<Entry> {
    log.try_get_log_entries(..).await.unwrap()
}

async fn indexes(log: &mut LogStore<TestConfig>) -> Vec<u64> {
    entries(log).await.iter().map(|e| e.log_id.index).collect()
}

/// Appends entries `from..=to` of `term` one append call each.
async fn append_range(log: &mut LogStore<TestConfig>, term: u64, from: u64, to: u64) {
    for i in from..=to {
        log.blocking_append([sub(term, i)]).await.unwrap();
    }
}

#[test]
fn everything_comes_back_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let vote = Vote::new_committed(3, 2);
    let written: Vec<Entry> = rt.block_on(async {
        let wal = open(dir.path());
        let (mut g0, mut g1) = (wal.log_store(0), wal.log_store(1));
        let batch: Vec<Entry> = (1..=20).map(|i| sub(1, i)).collect();
        g0.blocking_append(batch.clone()).await.unwrap();
        g1.blocking_append([blank(1, 1), sub(1, 2)]).await.unwrap();
        g0.save_vote(&vote).await.unwrap();
        g0.save_committed(Some(log_id(1, 15))).await.unwrap();
        g1.save_vote(&Vote::new(4, 3)).await.unwrap();
        batch
    });
    rt.block_on(async {
        let wal = open(dir.path());
        let (mut g0, mut g1, mut g9) = (wal.log_store(0), wal.log_store(1), wal.log_store(9));
        assert_eq!(entries(&mut g0).await, written);
        assert_eq!(g0.read_vote().await.unwrap(), Some(vote));
        assert_eq!(g0.read_committed().await.unwrap(), Some(log_id(1, 15)));
        assert_eq!(indexes(&mut g1).await, vec![1, 2]);
        assert_eq!(g1.read_vote().await.unwrap(), Some(Vote::new(4, 3)));
        assert_eq!(g1.read_committed().await.unwrap(), None);
        let state = g9.get_log_state().await.unwrap();
        assert_eq!((state.last_log_id, state.last_purged_log_id), (None, None));
        assert_eq!(g9.read_vote().await.unwrap(), None);
    });
}

#[test]
fn vote_is_durable_when_save_vote_returns() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    for term in 1..=5u64 {
        rt.block_on(async {
            let wal = open(dir.path());
            let mut log = wal.log_store(4);
            assert_eq!(
                log.read_vote().await.unwrap(),
                (term > 1).then(|| Vote::new(term - 1, 1))
            );
            log.save_vote(&Vote::new(term, 1)).await.unwrap();
            // Dropped right away: no later write or sync helps the vote along.
        });
    }
}

#[test]
fn truncation_and_rewrite_replay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let wal = open(dir.path());
        let mut log = wal.log_store(0);
        append_range(&mut log, 1, 1, 10).await;
        log.truncate(log_id(1, 6)).await.unwrap();
        append_range(&mut log, 2, 6, 8).await;
    });
    rt.block_on(async {
        let wal = open(dir.path());
        let mut log = wal.log_store(0);
        let got: Vec<(u64, u64)> = entries(&mut log)
            .await
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect();
        let want: Vec<(u64, u64)> = (1..=5)
            .map(|i| (1, i))
            .chain((6..=8).map(|i| (2, i)))
            .collect();
        assert_eq!(got, want);
    });
}

#[test]
fn torn_tail_is_cut_back_to_the_last_good_record() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let wal = open(dir.path());
        let mut log = wal.log_store(0);
        append_range(&mut log, 1, 1, 10).await;
    });
    let segment = segments(dir.path()).pop().unwrap();
    let len = fs::metadata(&segment).unwrap().len();
    // Cut the last record (entry 10) in the middle, as a crash during the write would.
    let f = fs::OpenOptions::new().write(true).open(&segment).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    rt.block_on(async {
        let wal = open(dir.path());
        let mut log = wal.log_store(0);
        assert_eq!(indexes(&mut log).await, (1..=9).collect::<Vec<_>>());
        // The log goes on from there, and the repair itself survives another restart.
        append_range(&mut log, 1, 10, 11).await;
    });
    rt.block_on(async {
        let wal = open(dir.path());
        assert_eq!(
            indexes(&mut wal.log_store(0)).await,
            (1..=11).collect::<Vec<_>>()
        );
    });
}

#[test]
fn garbage_after_the_last_record_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let wal = open(dir.path());
        append_range(&mut wal.log_store(0), 1, 1, 10).await;
    });
    let segment = segments(dir.path()).pop().unwrap();
    let good_len = fs::metadata(&segment).unwrap().len();
    let mut bytes = fs::read(&segment).unwrap();
    bytes.extend((0..300u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    bytes.extend([0u8; 100]);
    fs::write(&segment, bytes).unwrap();
    rt.block_on(async {
        let wal = open(dir.path());
        assert_eq!(
            indexes(&mut wal.log_store(0)).await,
            (1..=10).collect::<Vec<_>>()
        );
    });
    assert_eq!(
        fs::metadata(&segment).unwrap().len(),
        good_len,
        "the garbage was not cut off"
    );
}

/// Flips one bit inside record `n` (counting from 0) of `segment`.
fn flip_bit_in_record(segment: &Path, n: usize) -> u64 {
    let mut bytes = fs::read(segment).unwrap();
    let mut offset = 0usize;
    for _ in 0..n {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        offset += 8 + len;
    }
    bytes[offset + 10] ^= 0x04;
    fs::write(segment, bytes).unwrap();
    offset as u64
}

#[test]
fn damage_followed_by_valid_records_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let wal = open(dir.path());
        append_range(&mut wal.log_store(0), 1, 1, 10).await;
    });
    let segment = segments(dir.path()).pop().unwrap();
    // Record 0 is the checkpoint; record 4 holds entry 4, with six valid records after it.
    let offset = flip_bit_in_record(&segment, 4);
    let err = Wal::<TestConfig>::open(dir.path(), WalOptions::default()).unwrap_err();
    match &err {
        WalError::Corrupt {
            file, offset: at, ..
        } => {
            assert_eq!(file, &segment);
            assert_eq!(*at, offset);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&segment.display().to_string()),
        "{message}"
    );
    assert!(message.contains(&format!("offset {offset}")), "{message}");
    assert!(message.contains("Replace a manager"), "{message}");
    // Refusing must not have modified the file: opening again still refuses.
    assert!(matches!(
        Wal::<TestConfig>::open(dir.path(), WalOptions::default()),
        Err(WalError::Corrupt { .. })
    ));
}

#[test]
fn damage_at_the_end_of_an_older_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let wal = small_segments(dir.path());
        append_range(&mut wal.log_store(0), 1, 1, 100).await;
    });
    let all = segments(dir.path());
    assert!(all.len() >= 3, "expected rotation, got {all:?}");
    let first = &all[0];
    let len = fs::metadata(first).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(first)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let err = Wal::<TestConfig>::open(dir.path(), WalOptions::default()).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { file, .. } if file == first),
        "{err:?}"
    );
}

#[test]
fn rotation_and_purge_delete_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let wal = small_segments(dir.path());
        let (mut g0, mut g1) = (wal.log_store(0), wal.log_store(1));
        g0.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        for i in 1..=200 {
            g0.blocking_append([sub(1, i)]).await.unwrap();
            if i % 4 == 0 {
                g1.blocking_append([sub(1, i / 4)]).await.unwrap();
            }
        }
        g0.save_committed(Some(log_id(1, 190))).await.unwrap();
        let before = segments(dir.path()).len();
        assert!(before >= 10, "expected many segments, got {before}");

        // Group 1 still needs everything: purging group 0 alone frees nothing.
        g0.purge(log_id(1, 150)).await.unwrap();
        g0.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(segments(dir.path()).len(), before);

        g1.purge(log_id(1, 40)).await.unwrap();
        g1.save_vote(&Vote::new(2, 1)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while segments(dir.path()).len() >= before - 3 {
            assert!(
                Instant::now() < deadline,
                "no segment deleted after purging both groups"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(indexes(&mut g0).await, (151..=200).collect::<Vec<_>>());
    });
    rt.block_on(async {
        let wal = small_segments(dir.path());
        let (mut g0, mut g1) = (wal.log_store(0), wal.log_store(1));
        assert_eq!(indexes(&mut g0).await, (151..=200).collect::<Vec<_>>());
        assert_eq!(indexes(&mut g1).await, (41..=50).collect::<Vec<_>>());
        let state = g0.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 150)));
        assert_eq!(state.last_log_id, Some(log_id(1, 200)));
        assert_eq!(
            g0.read_vote().await.unwrap(),
            Some(Vote::new_committed(1, 1))
        );
        assert_eq!(g0.read_committed().await.unwrap(), Some(log_id(1, 190)));
        assert_eq!(g1.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        assert_eq!(
            g1.get_log_state().await.unwrap().last_purged_log_id,
            Some(log_id(1, 40))
        );
        // And it keeps working after the restart.
        g0.blocking_append([sub(1, 201)]).await.unwrap();
    });
}

/// Counts the WAL's syncs and the appended bytes they covered.
#[derive(Debug, Default)]
struct SyncCounter {
    syncs: std::sync::atomic::AtomicU64,
}

impl firetower_store::FsyncObserver for SyncCounter {
    fn fsync_done(&self, _took: Duration, _bytes: u64) {
        self.syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Many groups appending concurrently, one entry per append, fsync on: the group commit turns
/// them into far fewer syncs than appends, and every append is durable when it returns (a
/// reopen finds them all). How fast that is on a given disk is a benchmark's business
/// (`firetower bench commits`); this counts syncs, which does not depend on the machine.
#[test]
fn group_commit_serves_concurrent_appends_with_fewer_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let groups = 64u32;
    let per_group = 50u64;
    let counter = Arc::new(SyncCounter::default());
    rt.block_on(async {
        let wal: TestWal = Wal::open_observed(
            dir.path(),
            WalOptions::default(),
            Some(counter.clone() as Arc<dyn firetower_store::FsyncObserver>),
        )
        .unwrap();
        let tasks: Vec<_> = (0..groups)
            .map(|g| {
                let mut log = wal.log_store(g);
                tokio::spawn(async move {
                    for i in 1..=per_group {
                        log.blocking_append([sub(1, i)]).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let appends = u64::from(groups) * per_group;
    let syncs = counter.syncs.load(std::sync::atomic::Ordering::Relaxed);
    assert!(syncs > 0, "fsync is on: the appends were synced");
    assert!(
        syncs * 2 < appends,
        "group commit: {syncs} syncs for {appends} concurrent appends"
    );
    rt.block_on(async {
        let wal = open(dir.path());
        for g in 0..groups {
            let mut log = wal.log_store(g);
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_log_id, Some(log_id(1, per_group)), "group {g}");
        }
    });
}

/// A crash right after a new segment file was created leaves it empty. The log must still
/// give it a checkpoint, or deleting the segments before it would lose the vote.
#[test]
fn empty_last_segment_gets_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let vote = Vote::new_committed(7, 2);
    rt.block_on(async {
        let wal = small_segments(dir.path());
        let mut log = wal.log_store(0);
        log.save_vote(&vote).await.unwrap();
        append_range(&mut log, 1, 1, 50).await;
    });
    let last = segments(dir.path()).pop().unwrap();
    let name = last.file_name().unwrap().to_str().unwrap();
    let next: u64 = name.trim_end_matches(".log").parse::<u64>().unwrap() + 1;
    let empty = dir.path().join("wal").join(format!("{next:08}.log"));
    fs::write(&empty, b"").unwrap();
    rt.block_on(async {
        let wal = small_segments(dir.path());
        let mut log = wal.log_store(0);
        // Few enough to stay in that segment: no later checkpoint comes to the rescue.
        append_range(&mut log, 1, 51, 55).await;
        log.purge(log_id(1, 50)).await.unwrap();
        // Waits for a sync after the purge (not a vote: that would re-record the vote).
        log.blocking_append([sub(1, 56)]).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while segments(dir.path())[0] != empty {
            assert!(
                Instant::now() < deadline,
                "segments before {empty:?} were not deleted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    rt.block_on(async {
        let wal = small_segments(dir.path());
        let mut log = wal.log_store(0);
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(
            log.get_log_state().await.unwrap().last_purged_log_id,
            Some(log_id(1, 50))
        );
        assert_eq!(indexes(&mut log).await, (51..=56).collect::<Vec<_>>());
        assert_eq!(segments(dir.path()), vec![empty.clone()]);
    });
}
