//! Errors of the Jepsen harness.

use std::path::PathBuf;

/// Why a Jepsen run or check failed. `Invalid` is the one that means "the system is wrong".
#[derive(Debug, thiserror::Error)]
pub enum JepsenError {
    /// The checker found anomalies: the history is not valid.
    #[error("the history is NOT valid: {anomalies} anomal(y/ies); see {}", dir.join("verdict.txt").display())]
    Invalid {
        /// The run directory.
        dir: PathBuf,
        /// How many anomalies.
        anomalies: usize,
    },
    /// The checker could not decide (search budget exhausted) and found no anomaly.
    #[error("the checker could not decide; see {}", dir.join("verdict.txt").display())]
    Unknown {
        /// The run directory.
        dir: PathBuf,
    },
    /// Setting up or faulting the cluster failed.
    #[error(transparent)]
    Chaos(#[from] firetower_chaos::ChaosError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A history line is malformed or inconsistent.
    #[error("bad history: {0}")]
    BadHistory(String),
    /// The worker process failed.
    #[error("worker: {0}")]
    Worker(String),
    /// The worker's link to the managers could not be set up.
    #[error("worker: {0}")]
    Link(#[from] crate::rawlink::RawLinkError),
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
}

impl JepsenError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        JepsenError::Io {
            path: path.into(),
            source,
        }
    }
}
