//! Errors of the chaos library: one enum, every variant says what failed and what to do.

use std::path::PathBuf;

/// Why a chaos operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// A helper program (`ip`, `nft`, `firetower`) could not be started at all.
    #[error("cannot run `{program}`: {source} (is it installed? `apt-get install -y iproute2 nftables`)")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// Network namespaces cannot be created here (not root, or a container without the
    /// capability). The chaos tests and runs need root and `ip netns`.
    #[error("network namespaces are not available: {0}. Run as root on a host (or a privileged container) with iproute2 and nftables installed")]
    NoNetns(String),
    /// `nft` is missing.
    #[error("nftables is not installed: `apt-get install -y nftables`")]
    NoNft,
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A node name that this run does not have.
    #[error("no node {0} in this run")]
    UnknownNode(String),
    /// A node is not in the state the operation needs (for example pausing a dead manager).
    #[error("node {node}: {message}")]
    NodeState {
        /// The node.
        node: String,
        /// What is wrong.
        message: String,
    },
    /// The cluster did not reach the expected state in time.
    #[error("timed out after {after:?}: {what}")]
    Timeout {
        /// How long it waited.
        after: std::time::Duration,
        /// What it waited for.
        what: String,
    },
    /// Output of `firetower` that is not what this library expects.
    #[error("unexpected output of `{command}`: {message}")]
    Parse {
        /// The command.
        command: String,
        /// What is wrong.
        message: String,
    },
    /// A write-ahead log could not be damaged as asked (nothing to damage).
    #[error("write-ahead log in {dir}: {message}")]
    Wal {
        /// The WAL directory.
        dir: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A partition spec names too few nodes or is otherwise impossible.
    #[error("invalid fault: {0}")]
    InvalidFault(String),
    /// A helper process of a scenario (the storm worker) failed or exited.
    #[error("{0}")]
    Worker(String),
    /// The storm worker (`firetower chaos storm`) could not start.
    #[error("storm worker: {0}")]
    StormWorker(#[from] crate::storm::StormWorkerError),
    /// The availability probe (`firetower chaos probe`) failed.
    #[error("probe: {0}")]
    Probe(#[from] crate::probe::ProbeError),
    /// A scenario ran to the end, but some of its checks failed (the report lists them).
    #[error("the scenario's checks failed: {0}")]
    CheckFailed(String),
}

impl ChaosError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ChaosError::Io {
            path: path.into(),
            source,
        }
    }
}
