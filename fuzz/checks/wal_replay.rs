//! Write-ahead log recovery (`firetower_store::Wal::open`) on damaged and hostile segments.
//!
//! Three shapes of input (decoded with `arbitrary`):
//! - `Raw`: the bytes are the only segment file;
//! - `Framed`: payloads framed with a correct length and CRC (the format of `store/src/wal/
//!   codec.rs`: `len u32 LE | crc32(len, payload) u32 LE | payload`), then a tail of raw
//!   bytes, so the record decoder behind the checksum is reached;
//! - `Written`: operations through the public log store API (append, vote, committed,
//!   truncate, purge), then one damage to the files (cut, flip, garbage appended).
//!
//! What must hold, besides "never panics":
//! - open refuses only with `Corrupt`, and a refusal changes no file;
//! - open only ever cuts the last segment at a record boundary with no intact record after
//!   the cut (a torn tail), and otherwise leaves the bytes alone;
//! - every group's recovered log is consistent: entries above the purge point, last log id
//!   that of the last entry (or the purge point);
//! - recovery is idempotent: opening again changes no file and gives the same state;
//! - for `Written` with one segment: undamaged, the state is exactly what was written; cut,
//!   flipped or with garbage appended, it is the state after some prefix of the operations
//!   (what a valid segment could hold), never a mix.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use firetower_raft::TypeConfig;
use firetower_store::{Command, Wal, WalError, WalOptions};
use futures::executor::block_on;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

/// Groups the operations use and every check looks at.
const GROUPS: u32 = 3;

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Framed {
        payloads: Vec<Vec<u8>>,
        tail: Vec<u8>,
    },
    Written {
        small_segments: bool,
        ops: Vec<Op>,
        damage: Damage,
    },
}

#[derive(Arbitrary, Debug)]
enum Op {
    Append {
        group: u8,
        term: u8,
        first: u8,
        count: u8,
        subscribe: bool,
    },
    Vote {
        group: u8,
        term: u8,
        node: u8,
        committed: bool,
    },
    Committed {
        group: u8,
        at: Option<(u8, u8)>,
    },
    Truncate {
        group: u8,
        term: u8,
        since: u8,
    },
    Purge {
        group: u8,
        term: u8,
        upto: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum Damage {
    None,
    /// Cut this many bytes (modulo its length + 1) off the end of the last segment.
    Cut(u32),
    /// XOR one byte of one segment with a non-zero value.
    Flip {
        segment: u8,
        at: u32,
        xor: u8,
    },
    /// Append these bytes to the last segment.
    Garbage(Vec<u8>),
}

/// What the log stores show of every group, as text (openraft's types all print).
type State = BTreeMap<u32, String>;

/// The segment files by name, with their bytes.
type Files = BTreeMap<PathBuf, Vec<u8>>;

/// One input, as libFuzzer's typed targets read it: the [`Input`] the bytes decode to, or
/// nothing when they decode to none.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else {
        return;
    };
    check(input);
}

fn check(input: Input) {
    let dir = tempdir();
    let wal_dir = dir.path().join("wal");
    fs::create_dir_all(&wal_dir).expect("create the wal directory");
    match input {
        Input::Raw(bytes) => hostile(dir.path(), &bytes),
        Input::Framed { payloads, tail } => {
            let mut bytes = Vec::new();
            for p in payloads.iter().filter(|p| !p.is_empty()) {
                bytes.extend_from_slice(&frame(p));
            }
            bytes.extend_from_slice(&tail);
            hostile(dir.path(), &bytes);
        }
        Input::Written {
            small_segments,
            ops,
            damage,
        } => written(dir.path(), small_segments, &ops, damage),
    }
}

fn tempdir() -> tempfile::TempDir {
    // tmpfs when there is one: the target writes and syncs files on every run.
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temp dir")
}

fn options(small_segments: bool) -> WalOptions {
    WalOptions {
        fsync: false,
        segment_bytes: if small_segments {
            256
        } else {
            64 * 1024 * 1024
        },
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(payload);
    let mut out = len.to_vec();
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Whether an intact frame (plausible length, matching CRC) starts at `at`: written here from
/// the format description, independently of the store's own scanner.
fn intact_at(data: &[u8], at: usize) -> bool {
    let Some(header) = data.get(at..at + 8) else {
        return false;
    };
    let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
    let stored = u32::from_le_bytes(header[4..].try_into().unwrap());
    if len == 0 {
        return false;
    }
    let Some(payload) = data.get(at + 8..at + 8 + len) else {
        return false;
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[..4]);
    crc.update(payload);
    crc.finalize() == stored
}

fn intact_anywhere(data: &[u8], from: usize) -> bool {
    (from..data.len()).any(|at| intact_at(data, at))
}

fn files(dir: &Path) -> Files {
    let mut out = Files::new();
    for item in fs::read_dir(dir.join("wal")).expect("list the wal directory") {
        let path = item.expect("a directory entry").path();
        let bytes = fs::read(&path).expect("read a segment");
        out.insert(path, bytes);
    }
    out
}

/// One segment of hostile bytes.
fn hostile(dir: &Path, bytes: &[u8]) {
    let segment = dir.join("wal").join("00000001.log");
    fs::write(&segment, bytes).expect("write the segment");
    match Wal::<TypeConfig>::open(dir, options(false)) {
        Err(e) => {
            assert!(
                matches!(e, WalError::Corrupt { .. }),
                "open failed with {e}"
            );
            assert_eq!(
                fs::read(&segment).expect("read back"),
                bytes,
                "a refusal changed the file"
            );
        }
        Ok(wal) => {
            let state = state(&wal);
            drop(wal);
            let after = fs::read(&segment).expect("read back");
            let kept = if bytes.starts_with(&after) {
                after.len()
            } else {
                // Cut to nothing, then a fresh checkpoint was written.
                assert!(
                    intact_at(&after, 0),
                    "the segment is neither a prefix nor a checkpoint"
                );
                0
            };
            if kept < bytes.len() {
                assert!(!intact_at(bytes, kept), "cut an intact record at {kept}");
                assert!(
                    !intact_anywhere(bytes, kept + 1),
                    "cut a log with intact records after the cut"
                );
            }
            reopen_is_idempotent(dir, false, &state);
        }
    }
}

fn written(dir: &Path, small_segments: bool, ops: &[Op], damage: Damage) {
    let mut states = Vec::with_capacity(ops.len() + 1);
    {
        let wal = Wal::<TypeConfig>::open(dir, options(small_segments)).expect("open a new log");
        states.push(state(&wal));
        for op in ops.iter().take(64) {
            apply(&wal, op);
            states.push(state(&wal));
        }
    }
    let written = states.last().cloned().expect("at least the empty state");
    let before = files(dir);
    let last = before
        .keys()
        .next_back()
        .cloned()
        .expect("at least one segment");
    // Whether the damage leaves "some prefix of what was written" as the only valid outcome.
    // Once segments have rotated (small segments), a cut or flip can lose a checkpoint or a
    // purge record whose purged segments are already deleted, even when one segment is left:
    // a real torn tail never loses a record that was synced, so that case is only checked
    // for consistency.
    let mut prefix_only = !small_segments && before.len() == 1;
    let mut must_open = true;
    // Whether the log must come back exactly as written (undamaged, or only garbage after it).
    let mut exact = true;
    match damage {
        Damage::None => {}
        Damage::Cut(n) => {
            let bytes = &before[&last];
            let keep = bytes.len() - (n as usize % (bytes.len() + 1));
            fs::write(&last, &bytes[..keep]).expect("cut");
            exact = keep == bytes.len();
        }
        Damage::Flip { segment, at, xor } => {
            let (path, bytes) = before
                .iter()
                .nth(usize::from(segment) % before.len())
                .unwrap();
            if bytes.is_empty() || xor == 0 {
                return;
            }
            let mut bytes = bytes.clone();
            let at = at as usize % bytes.len();
            bytes[at] ^= xor;
            fs::write(path, &bytes).expect("flip");
            must_open = false;
            exact = false;
        }
        Damage::Garbage(tail) => {
            let mut bytes = before[&last].clone();
            let from = bytes.len();
            bytes.extend_from_slice(&tail);
            // Garbage that happens to hold an intact record is a record: no claim about it.
            if intact_anywhere(&bytes, from) {
                prefix_only = false;
                must_open = false;
                exact = false;
            }
            fs::write(&last, &bytes).expect("append garbage");
        }
    }
    let damaged = files(dir);
    let wal = match Wal::<TypeConfig>::open(dir, options(small_segments)) {
        Ok(wal) => wal,
        Err(e) => {
            assert!(!must_open, "a torn tail or an intact log refused: {e}");
            assert!(
                matches!(e, WalError::Corrupt { .. }),
                "open failed with {e}"
            );
            assert_eq!(files(dir), damaged, "a refusal changed the files");
            return;
        }
    };
    let recovered = state(&wal);
    drop(wal);
    if exact {
        assert_eq!(recovered, written, "an undamaged log came back different");
    }
    if prefix_only {
        assert!(
            states.contains(&recovered),
            "recovered a state no prefix of the operations produced: {recovered:#?}"
        );
    }
    reopen_is_idempotent(dir, small_segments, &recovered);
}

fn log_id(term: u8, index: impl Into<u64>) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(u64::from(term % 4), 1), index.into())
}

fn apply(wal: &Wal<TypeConfig>, op: &Op) {
    let group = |g: &u8| u32::from(*g) % GROUPS;
    block_on(async {
        match op {
            Op::Append {
                group: g,
                term,
                first,
                count,
                subscribe,
            } => {
                let entries: Vec<Entry<TypeConfig>> = (0..count % 4)
                    .map(|i| Entry {
                        // Consecutive and ascending, as openraft appends (the WAL relies on it: a
                        // segment's newest entry of a group is the last one appended).
                        log_id: log_id(*term, u64::from(*first) + u64::from(i)),
                        payload: if *subscribe {
                            EntryPayload::Normal(Command::Subscribe {
                                topic: format!("t{i}"),
                                gateway: u64::from(i),
                            })
                        } else {
                            EntryPayload::Blank
                        },
                    })
                    .collect();
                wal.log_store(group(g))
                    .blocking_append(entries)
                    .await
                    .expect("append");
            }
            Op::Vote {
                group: g,
                term,
                node,
                committed,
            } => {
                let mut vote = Vote::new(u64::from(*term), u64::from(*node % 4));
                if *committed {
                    vote.commit();
                }
                wal.log_store(group(g))
                    .save_vote(&vote)
                    .await
                    .expect("save vote");
            }
            Op::Committed { group: g, at } => {
                let at = at.map(|(t, i)| log_id(t, i));
                wal.log_store(group(g))
                    .save_committed(at)
                    .await
                    .expect("save committed");
            }
            Op::Truncate {
                group: g,
                term,
                since,
            } => {
                wal.log_store(group(g))
                    .truncate(log_id(*term, *since))
                    .await
                    .expect("truncate");
            }
            Op::Purge {
                group: g,
                term,
                upto,
            } => {
                wal.log_store(group(g))
                    .purge(log_id(*term, *upto))
                    .await
                    .expect("purge");
            }
        }
    });
}

/// Every group's state, checking it is consistent on the way.
fn state(wal: &Wal<TypeConfig>) -> State {
    (0..GROUPS)
        .map(|g| {
            let mut log = wal.log_store(g);
            let shown = block_on(async {
                let s = log.get_log_state().await.expect("log state");
                let entries = log.try_get_log_entries(..).await.expect("entries");
                let vote = log.read_vote().await.expect("vote");
                let committed = log.read_committed().await.expect("committed");
                let purged = s.last_purged_log_id;
                for pair in entries.windows(2) {
                    assert!(
                        pair[0].log_id.index < pair[1].log_id.index,
                        "entries out of order"
                    );
                }
                if let (Some(p), Some(first)) = (purged, entries.first()) {
                    assert!(
                        first.log_id.index > p.index,
                        "an entry at or below the purge point"
                    );
                }
                let last = entries.last().map(|e| e.log_id).or(purged);
                assert_eq!(s.last_log_id, last, "last log id is not the last entry's");
                format!("{vote:?} {committed:?} {purged:?} {entries:?}")
            });
            (g, shown)
        })
        .collect()
}

/// Opening a recovered log again changes no file and gives the same state.
fn reopen_is_idempotent(dir: &Path, small_segments: bool, state_before: &State) {
    let before = files(dir);
    let wal =
        Wal::<TypeConfig>::open(dir, options(small_segments)).expect("reopen a recovered log");
    assert_eq!(
        &state(&wal),
        state_before,
        "a second open recovered something else"
    );
    drop(wal);
    assert_eq!(files(dir), before, "a second open changed the files");
}
