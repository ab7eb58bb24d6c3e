//! Errors of the manager server, split by who can act on them.

use std::path::PathBuf;

/// A configuration value is wrong. Fix the flag or file and start again.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is out of range or inconsistent; the message names it.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The manager could not start. Nothing was changed in the cluster.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// See [`ConfigError`].
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory belongs to another manager or another cluster.
    #[error("{0}")]
    WrongDataDir(String),
    /// The data directory cannot be read or written.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// The write-ahead log cannot be opened (it says which file and what to do).
    #[error(transparent)]
    Wal(#[from] firetower_store::WalError),
    /// The state machine store cannot be opened.
    #[error("state machine store: {0}")]
    Store(#[from] firetower_store::StoreError),
    /// A port is taken or an address cannot be bound.
    #[error("cannot listen on {addr}: {detail} (is another manager running with the same port?)")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        detail: String,
    },
    /// A Raft group could not be created.
    #[error("raft group {group}: {detail}")]
    Raft {
        /// The group.
        group: firetower_raft::GroupId,
        /// What openraft said.
        detail: String,
    },
}
