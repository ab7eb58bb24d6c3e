//! Typed errors of the store: one enum for the write-ahead log, one for the state machine.

use std::path::PathBuf;

/// What the operator should do when the log is damaged where it matters.
const CORRUPT_ADVICE: &str =
    "the write-ahead log of this manager is damaged before its committed end; \
     do not delete it blindly: replace this manager (docs/operations.md, 'Replace a manager') \
     or restore the data directory";

/// Errors of the write-ahead log ([`crate::Wal`]).
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file or directory of the log could not be read, written or synced.
    #[error("write-ahead log I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A record before the end of the log is damaged: valid records follow it, or it sits in a
    /// segment that is not the last. Cutting the log there could drop committed entries, so
    /// the log refuses to open.
    #[error("{} is damaged at byte offset {offset}: {detail}; {CORRUPT_ADVICE}", .file.display())]
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// Byte offset of the damaged record in `file`.
        offset: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// A record could not be encoded (too large for the format).
    #[error("cannot encode a write-ahead log record: {0}")]
    Encode(#[from] postcard::Error),
    /// An earlier write or sync failed; the file's state is unknown, so the log accepts no
    /// further writes. Restart the manager: recovery cuts the log back to its last valid record.
    #[error("the write-ahead log stopped after an earlier I/O failure ({0}); restart the manager")]
    Stopped(String),
}

/// Errors of the state machine store ([`crate::StateStore`], [`crate::StateMachine`],
/// [`crate::TableReader`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O or a corrupt database).
    #[error("state machine database error: {0}")]
    Sled(#[from] sled::Error),
    /// A snapshot file or directory could not be read or written.
    #[error("snapshot I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A snapshot file is damaged. The state machine can be rebuilt: delete the file only if
    /// the Raft log still holds every entry (otherwise replace the manager).
    #[error("snapshot file {} is damaged: {detail}", .path.display())]
    CorruptSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Snapshot data received from a leader does not decode.
    #[error("snapshot data does not decode: {0}")]
    BadSnapshotData(postcard::Error),
    /// A value stored in sled does not decode: the database was written by something else.
    #[error("state machine value under {tree} does not decode: {detail}")]
    CorruptValue {
        /// The sled tree.
        tree: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A value could not be encoded.
    #[error("cannot encode a state machine value: {0}")]
    Encode(postcard::Error),
}
