//! `--tls-dir` and `--insecure`, shared by every command that talks to the cluster.

use std::path::PathBuf;

use anyhow::Context;
use firetower_link::{Role, Security};

/// How a command authenticates to the cluster.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsFlags {
    /// TLS directory made by `firetower certs init` / `certs issue`: `ca.pem` and this
    /// process's certificate (`<role>-<id>.pem`, `<role>-<id>-key.pem`).
    #[arg(long, global = true, env = "FIRETOWER_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// No certificates: plaintext admin API, unauthenticated QUIC. Only for experiments, and
    /// only against managers started with --insecure.
    #[arg(long, global = true)]
    pub insecure: bool,
}

impl TlsFlags {
    /// The [`Security`] of a process acting as `role`.
    pub fn security(&self, role: &Role) -> anyhow::Result<Security> {
        Security::from_flags(self.tls_dir.as_deref(), self.insecure, role)
            .with_context(|| format!("TLS for {role}"))
    }
}
