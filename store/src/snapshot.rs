//! Snapshots of one group's table: the data format and the snapshot file.
//!
//! ```text
//!   <data-dir>/snapshots/g{N}/snapshot.bin   the latest snapshot, nothing else kept
//!     "FTSNAP01" | crc32 (u32 LE) of the rest | postcard(SnapshotFile { meta, data })
//!   data = postcard(TableSnapshot): what a leader sends to a follower (openraft's
//!          SnapshotData), independent of the sled key layout
//! ```
//!
//! A new file is written to a temporary name, synced, renamed over the old one, and the
//! directory synced: a crash leaves either the old or the new snapshot, never a mix.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::types::{GatewayId, ManagerId, ManagerNode, Session};
use crate::wal::lock;

const MAGIC: &[u8; 8] = b"FTSNAP01";
const FILE_NAME: &str = "snapshot.bin";

/// Snapshot metadata as openraft knows it.
pub(crate) type Meta = SnapshotMeta<ManagerId, ManagerNode>;

/// A snapshot as stored: its metadata and its data (a postcard [`TableSnapshot`]).
pub(crate) type StoredSnapshot = (Meta, Vec<u8>);

/// Everything a group's table holds, in a form independent of the sled key layout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TableSnapshot {
    /// Topic -> its gateways (sorted), topics sorted.
    pub subscriptions: Vec<(String, Vec<GatewayId>)>,
    pub sessions: Vec<(GatewayId, Session)>,
    pub blacklist: Vec<GatewayId>,
    pub meta: Vec<(String, Vec<u8>)>,
}

impl TableSnapshot {
    pub(crate) fn encode(&self) -> Result<Vec<u8>, StoreError> {
        postcard::to_allocvec(self).map_err(StoreError::Encode)
    }

    pub(crate) fn decode(data: &[u8]) -> Result<TableSnapshot, StoreError> {
        postcard::from_bytes(data).map_err(StoreError::BadSnapshotData)
    }
}

/// Checks that `data` (openraft's `SnapshotData` as a leader sends it) is a table snapshot a
/// state machine can install. The Raft server calls this on a received snapshot before openraft
/// installs it: openraft takes a failed install as a storage failure and stops the group for
/// good, so bytes from a buggy peer must never get that far.
pub fn check_snapshot_data(data: &[u8]) -> Result<(), StoreError> {
    TableSnapshot::decode(data).map(|_| ())
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: Meta,
    data: Vec<u8>,
}

/// The snapshot directory of one group and the metadata of its current snapshot. Shared by a
/// state machine and its snapshot builders, so that writes are serialized and an older
/// snapshot (a build that raced with an install) never replaces a newer one.
#[derive(Debug)]
pub(crate) struct SnapshotSlot {
    dir: PathBuf,
    current: Mutex<Option<Meta>>,
}

impl SnapshotSlot {
    /// Opens the slot in `dir` and reads the current snapshot's metadata, if any.
    pub(crate) fn open(dir: PathBuf) -> Result<(SnapshotSlot, Option<StoredSnapshot>), StoreError> {
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let current = read_file(&dir.join(FILE_NAME))?;
        let slot = SnapshotSlot {
            dir,
            current: Mutex::new(current.as_ref().map(|(m, _)| m.clone())),
        };
        Ok((slot, current))
    }

    /// The metadata of the current snapshot.
    #[cfg(test)]
    pub(crate) fn current_meta(&self) -> Option<Meta> {
        lock(&self.current).clone()
    }

    /// The current snapshot, read from disk.
    pub(crate) fn read(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        // Held so that a concurrent replace cannot be observed half-way.
        let _current = lock(&self.current);
        read_file(&self.dir.join(FILE_NAME))
    }

    /// Makes `meta`/`data` the current snapshot, durably, unless the current one is newer.
    /// Returns whether it was written. Blocking.
    pub(crate) fn replace(&self, meta: &Meta, data: &[u8]) -> Result<bool, StoreError> {
        let mut current = lock(&self.current);
        if current
            .as_ref()
            .is_some_and(|c| c.last_log_id > meta.last_log_id)
        {
            return Ok(false);
        }
        let file = SnapshotFile {
            meta: meta.clone(),
            data: data.to_vec(),
        };
        let body = postcard::to_allocvec(&file).map_err(StoreError::Encode)?;
        let mut bytes = Vec::with_capacity(12 + body.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bytes.extend_from_slice(&body);

        let tmp = self.dir.join(format!("snapshot.{}.tmp", next_tmp_id()));
        let path = self.dir.join(FILE_NAME);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_all()
        });
        if let Err(e) = written {
            drop(fs::remove_file(&tmp));
            return Err(io(&tmp)(e));
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        *current = Some(meta.clone());
        Ok(true)
    }
}

/// A process-wide counter for temporary file names, so concurrent writers never share one.
fn next_tmp_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn read_file(path: &Path) -> Result<Option<StoredSnapshot>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let corrupt = |detail: String| StoreError::CorruptSnapshot {
        path: path.to_path_buf(),
        detail,
    };
    let Some((magic, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(corrupt("shorter than its header".to_string()));
    };
    if magic != MAGIC {
        return Err(corrupt(
            "not a Firetower snapshot file (bad magic)".to_string(),
        ));
    }
    let Some((crc, body)) = rest.split_first_chunk::<4>() else {
        return Err(corrupt("shorter than its header".to_string()));
    };
    if u32::from_le_bytes(*crc) != crc32fast::hash(body) {
        return Err(corrupt("checksum mismatch".to_string()));
    }
    let file: SnapshotFile =
        postcard::from_bytes(body).map_err(|e| corrupt(format!("does not decode: {e}")))?;
    Ok(Some((file.meta, file.data)))
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, StoredMembership};

    use super::*;

    fn meta(index: u64) -> Meta {
        Meta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("s{index}"),
        }
    }

    #[test]
    fn replace_keeps_newest_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (slot, none) = SnapshotSlot::open(dir.path().join("g0")).unwrap();
        assert!(none.is_none());
        assert!(slot.replace(&meta(5), b"five").unwrap());
        assert!(
            !slot.replace(&meta(3), b"three").unwrap(),
            "older snapshot replaced a newer one"
        );
        assert!(slot.replace(&meta(7), b"seven").unwrap());
        let (slot2, current) = SnapshotSlot::open(dir.path().join("g0")).unwrap();
        assert_eq!(current, Some((meta(7), b"seven".to_vec())));
        assert_eq!(slot2.current_meta(), Some(meta(7)));
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("g0")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "only the latest snapshot file is kept");
    }

    #[test]
    fn damaged_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (slot, _) = SnapshotSlot::open(dir.path().to_path_buf()).unwrap();
        slot.replace(&meta(5), b"five").unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&path, bytes).unwrap();
        let err = SnapshotSlot::open(dir.path().to_path_buf()).unwrap_err();
        assert!(err.to_string().contains("snapshot.bin"), "{err}");
    }

    #[test]
    fn snapshot_data_is_checked_before_install() {
        let table = TableSnapshot {
            subscriptions: vec![("room.1".into(), vec![7])],
            ..TableSnapshot::default()
        };
        assert!(check_snapshot_data(&table.encode().unwrap()).is_ok());
        assert!(check_snapshot_data(&TableSnapshot::default().encode().unwrap()).is_ok());
        assert!(matches!(
            check_snapshot_data(&[0xFF; 64]),
            Err(StoreError::BadSnapshotData(_))
        ));
        let mut padded = table.encode().unwrap();
        padded.truncate(padded.len() - 1);
        assert!(check_snapshot_data(&padded).is_err());
    }

    #[test]
    fn table_snapshot_round_trip() {
        let t = TableSnapshot {
            subscriptions: vec![("a".into(), vec![1, 2]), ("b".into(), vec![3])],
            sessions: vec![(
                1,
                Session {
                    epoch: 2,
                    lease_ms: 3,
                },
            )],
            blacklist: vec![9],
            meta: vec![("k".into(), vec![1])],
        };
        assert_eq!(TableSnapshot::decode(&t.encode().unwrap()).unwrap(), t);
        assert!(TableSnapshot::decode(&[0xff; 3]).is_err());
    }
}
