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
    #[error("TLS: {0}")]
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
