//! Manager configuration: command-line flags layered over an optional TOML file, checked once
//! at start so that a bad value stops the process with a message instead of a misbehaving node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use firetower_link::{Role, Security, TlsIdentity};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Default QUIC port: Raft between managers and the gateway link.
pub const DEFAULT_QUIC_PORT: u16 = 6666;
/// Default gRPC admin port.
pub const DEFAULT_ADMIN_PORT: u16 = 6667;
/// Default number of Raft groups a cluster is split into at `cluster init`.
pub const DEFAULT_GROUPS: u32 = 8;
/// The most groups a cluster may have: every group is a Raft instance on every manager.
pub const MAX_GROUPS: u32 = 1024;

/// Everything a manager needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerConfig {
    /// This manager's id, unique in the cluster, never reused for another data directory.
    pub id: u64,
    /// UDP address the QUIC endpoint binds (Raft RPCs and gateways).
    pub quic: SocketAddr,
    /// TCP address of the gRPC admin API.
    pub admin: SocketAddr,
    /// Where the write-ahead log, the sled state machine and snapshots live.
    pub data_dir: PathBuf,
    /// If set, the manager refuses to start on a data directory of another cluster.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// Raft timing and durability.
    #[serde(default)]
    pub raft: RaftTuning,
    /// If set, serve `GET /metrics` (Prometheus text) and `GET /healthz` over HTTP here.
    /// Off by default: the metrics name groups, gateways and terms, which is for operators.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// DELIBERATELY UNSAFE, for verifying the Jepsen harness only: answer topic reads from
    /// this manager's local state machine, leader or not, without a read index, and look a
    /// publish's subscribers up in a copy of the table up to 3 s old. Reads may then be stale
    /// and new subscribers miss messages, which the `subscriptions` and `delivery` workloads
    /// must detect.
    #[serde(default)]
    pub unsafe_stale_reads: bool,
    /// DELIBERATELY UNSAFE, for verifying the Jepsen harness only: stamp publishes on the word
    /// of the last Raft metrics (no lease clock, no new term after a restart, superseded
    /// deliveries ignored) and let a follower that receives a publish stamp it as if it led.
    /// Messages can then be acknowledged and dropped, which the `delivery` workload must
    /// detect.
    #[serde(default)]
    pub unsafe_stale_leadership: bool,
    /// Certificates (`[tls]`): mutual TLS on the QUIC and admin ports, or `insecure`.
    #[serde(default)]
    pub tls: TlsSettings,
    /// Serve the admin calls that disturb the cluster on purpose (`HoldHeartbeats`,
    /// `Campaign`), for the chaos and Jepsen harnesses. Off in production: without it those
    /// calls answer `UNIMPLEMENTED`.
    #[serde(default)]
    pub unsafe_test_hooks: bool,
}

/// `[tls]` of the config file: where this manager's certificates are, or plaintext.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The TLS directory (`--tls-dir`): `ca.pem`, `manager-<id>.pem`, `manager-<id>-key.pem`,
    /// made by `firetower certs init` and `firetower certs issue --manager <id>`.
    pub dir: Option<PathBuf>,
    /// `--insecure`: no certificates; the QUIC port trusts anyone who reaches it and the
    /// admin port is plaintext. For experiments only; logged as a warning at start.
    pub insecure: bool,
}

/// Raft timing and durability settings. The defaults give failover in about one second on a
/// LAN: a follower stands for election once the leader lease (the maximum election timeout,
/// 800 ms) and its own randomized timeout (400–800 ms) have passed without a heartbeat:
/// 1.2–1.6 s after a leader dies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTuning {
    /// Leader heartbeat period. Keep it well above the round trip between managers: each
    /// replication RPC gets one heartbeat interval to complete (openraft 0.9).
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries; the log before it is purged.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, so a briefly lagging follower catches up from
    /// the log rather than a snapshot.
    pub keep_behind_snapshot: u64,
    /// Most entries in one AppendEntries RPC.
    pub max_payload_entries: u64,
    /// fdatasync the write-ahead log before acknowledging. Turning this off loses acknowledged
    /// writes on power loss; only for throw-away test clusters.
    pub fsync: bool,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_every: 20_000,
            keep_behind_snapshot: 2_000,
            max_payload_entries: 4_096,
            fsync: true,
        }
    }
}

impl RaftTuning {
    /// The openraft configuration for one group.
    pub fn openraft_config(&self) -> Result<openraft::Config, ConfigError> {
        let config = openraft::Config {
            cluster_name: "firetower".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            max_payload_entries: self.max_payload_entries,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_behind_snapshot,
            // Joint consensus needs the new member to be close; a learner this far behind is
            // not promoted.
            replication_lag_threshold: 5_000,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("raft settings: {e}")))
    }

    /// How long a caller waits for one proposal before giving up.
    pub fn proposal_timeout(&self) -> Duration {
        Duration::from_millis(self.election_timeout_max_ms * 3 + 2_000)
    }
}

impl ManagerConfig {
    /// Parse a TOML config file.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml_from_str(text)
    }

    /// Check the values that can be checked without touching the disk or the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::Invalid(
                "manager id must be at least 1 (0 means 'no manager' in the admin API)".into(),
            ));
        }
        if self.quic.ip().is_unspecified() || self.admin.ip().is_unspecified() {
            return Err(ConfigError::Invalid(format!(
                "the QUIC ({}) and admin ({}) addresses are also what other managers and \
                 gateways dial, so they must be concrete addresses, not 0.0.0.0 or [::]",
                self.quic, self.admin
            )));
        }
        if self.quic.port() == 0 || self.admin.port() == 0 {
            return Err(ConfigError::Invalid(
                "ports must be given explicitly (not 0): other managers store them".into(),
            ));
        }
        if let Some(id) = &self.cluster_id {
            if id.is_empty() {
                return Err(ConfigError::Invalid("cluster_id must not be empty".into()));
            }
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_ms * 2 {
            return Err(ConfigError::Invalid(format!(
                "election_timeout_min_ms ({}) must exceed twice heartbeat_ms ({})",
                r.election_timeout_min_ms, r.heartbeat_ms
            )));
        }
        r.openraft_config()?;
        if self.tls.insecure && self.tls.dir.is_some() {
            return Err(ConfigError::Invalid(
                "both a TLS directory and insecure are set: choose one (drop --insecure to \
                 use the certificates)"
                    .into(),
            ));
        }
        if !self.tls.insecure && self.tls.dir.is_none() {
            return Err(ConfigError::NoTls(self.id));
        }
        Ok(())
    }

    /// The manager's [`Security`]: its certificate from the TLS directory, or insecure.
    pub fn security(&self) -> Result<Security, ConfigError> {
        match (&self.tls.dir, self.tls.insecure) {
            (_, true) => Ok(Security::Insecure),
            (Some(dir), false) => TlsIdentity::load(dir, &Role::Manager(self.id))
                .map(|identity| Security::Mutual(Arc::new(identity)))
                .map_err(ConfigError::Tls),
            (None, false) => Err(ConfigError::NoTls(self.id)),
        }
    }
}

fn toml_from_str(text: &str) -> Result<ManagerConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Invalid(format!("config file: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ManagerConfig {
        ManagerConfig {
            id: 1,
            quic: "127.0.0.1:6666".parse().unwrap(),
            admin: "127.0.0.1:6667".parse().unwrap(),
            data_dir: "/tmp/x".into(),
            cluster_id: None,
            raft: RaftTuning::default(),
            metrics: None,
            unsafe_stale_reads: false,
            unsafe_stale_leadership: false,
            tls: TlsSettings {
                dir: None,
                insecure: true,
            },
            unsafe_test_hooks: false,
        }
    }

    #[test]
    fn without_certificates_or_insecure_the_manager_says_how_to_make_them() {
        let mut c = sample();
        c.tls.insecure = false;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("firetower certs init"), "{err}");
        assert!(err.contains("--insecure"), "{err}");
        c.tls.dir = Some("/nonexistent".into());
        c.validate().unwrap();
        let err = c.security().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        c.tls.insecure = true;
        assert!(c.validate().is_err());
    }

    #[test]
    fn default_config_is_valid() {
        sample().validate().unwrap();
    }

    #[test]
    fn rejects_zero_id_and_wildcard_addresses() {
        let mut c = sample();
        c.id = 0;
        assert!(c.validate().is_err());
        let mut c = sample();
        c.quic = "0.0.0.0:6666".parse().unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("0.0.0.0"), "{err}");
    }

    #[test]
    fn rejects_election_timeout_below_heartbeats() {
        let mut c = sample();
        c.raft.election_timeout_min_ms = 150;
        assert!(c.validate().is_err());
    }

    #[test]
    fn parses_toml_and_rejects_unknown_keys() {
        let c = ManagerConfig::from_toml(
            "id = 2\nquic = \"127.0.0.1:7000\"\nadmin = \"127.0.0.1:7001\"\ndata_dir = \"d\"\n\
             [raft]\nheartbeat_ms = 50\n[tls]\ndir = \"certs\"\n",
        )
        .unwrap();
        assert_eq!(c.id, 2);
        assert_eq!(c.raft.heartbeat_ms, 50);
        assert_eq!(c.raft.election_timeout_min_ms, 400);
        assert_eq!(c.metrics, None);
        assert_eq!(c.tls.dir, Some("certs".into()));
        let c = ManagerConfig::from_toml(
            "id = 2\nquic = \"127.0.0.1:7000\"\nadmin = \"127.0.0.1:7001\"\ndata_dir = \"d\"\n\
             metrics = \"127.0.0.1:7002\"\n",
        )
        .unwrap();
        assert_eq!(c.metrics, Some("127.0.0.1:7002".parse().unwrap()));
        let err = ManagerConfig::from_toml(
            "id = 2\nquic = \"127.0.0.1:7000\"\nadmin = \"127.0.0.1:7001\"\ndata_dir = \"d\"\nqiuc = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("qiuc"), "{err}");
    }
}
