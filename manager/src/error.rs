//! Errors of the manager server, split by who can act on them.

use std::path::PathBuf;

/// A configuration value is wrong. Fix the flag or file and start again.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is out of range or inconsistent; the message names it.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// Neither a TLS directory nor `--insecure`: the manager does not run open by accident.
    #[error(
        "no TLS material: give --tls-dir DIR (or [tls] dir in the config file) with this \
         manager's certificate, made by `firetower certs init --dir DIR` once per cluster and \
         `firetower certs issue --dir DIR --manager {0} --host <its address>`; or --insecure for a \
         plaintext experiment that trusts anyone who reaches its ports"
    )]
    NoTls(u64),
    /// The TLS directory holds no usable certificate for this manager.
    #[error(transparent)]
    Tls(#[from] firetower_link::TlsError),
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

/// A running manager cannot go on and must stop: it could no longer keep what it promised the
/// cluster. By the time [`crate::Manager::fatal`] reports it, gRPC health answers NOT_SERVING
/// and `/healthz` 503; the process should exit ([`FatalError::EXIT_CODE`]). A restart
/// recovers as after a crash, once the cause is fixed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FatalError {
    /// The write-ahead log stopped after a failed write or fdatasync (a full or failing
    /// disk): it acknowledges nothing more, so every Raft group of this manager is dead.
    #[error(
        "the write-ahead log failed and accepts no more writes: {0}; free space on the data \
         directory's disk (or replace the disk), then restart the manager: recovery cuts the \
         log back to its last valid record"
    )]
    Storage(std::sync::Arc<firetower_store::WalError>),
    /// A Raft group stopped on a fatal error of its own (its state machine storage failed, or
    /// its task panicked): the manager no longer serves that group.
    #[error("raft group {group} stopped: {detail}; restart the manager")]
    GroupStopped {
        /// The group.
        group: firetower_raft::GroupId,
        /// What openraft reported.
        detail: String,
    },
}

impl FatalError {
    /// The exit status of a `firetower manager` process that stopped on a fatal error
    /// (1 is a failed start, 2 a usage error).
    pub const EXIT_CODE: u8 = 3;
}
