//! Fault injection for Firetower: test hosts in network namespaces, and the faults the
//! design must survive, driven from outside the built `firetower` binary.
//!
//! Entry points: [`Cluster::start`] builds a cluster on test hosts ([`TestNet`]) and offers
//! every fault: `kill -9`, SIGSTOP/SIGCONT, restart, the wiped-disk replace procedure,
//! write-ahead-log damage, membership changes and nftables [`Partition`]s. [`run_scenario`]
//! measures availability under repeated faults (`firetower chaos run`), including the
//! reconnect storm after a gateway crash (`firetower_client` WebSocket clients in the client
//! namespace). Gateways log JSON lines (`FIRETOWER_LOG_FORMAT=json`), so that harnesses read
//! their session events (`event: "session_up"` / `"session_down"`) as data.
//! [`cli`] is the subcommand.
//!
//! ```text
//!   harness (host namespace) ──ip netns exec──▶ <run>m1..mN  firetower manager
//!                                             ▶ <run>g1..    firetower gateway
//!                                             ▶ <run>c1      clients, probe, admin CLI
//!   all joined by veth pairs to br0 in <run>br; 10.77.0.0/24 exists only there
//! ```
//!
//! Cleanup: dropping a [`TestNet`] (also while a panic unwinds) kills every process inside
//! its namespaces and deletes them; [`cli::spawn_signal_cleanup`] does the same on Ctrl-C
//! and SIGTERM; every new run first removes leftovers of runs whose pid is dead.
//!
//! This crate never reaches into server internals: it runs the binary, talks to it through
//! its CLI (`cluster members --json` read as [`firetower_proto::MembersView`]), the public
//! link client and the client library, and damages files only of stopped managers. It needs
//! root, `ip` (iproute2) and `nft` (nftables).

#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod cli;
mod cluster;
mod cmd;
mod error;
mod net;
mod partition;
mod probe;
mod process;
mod report;
mod scenario;
mod storm;
mod wal;

pub use cluster::{Cluster, ClusterSpec, ManagerNode, ADMIN_PORT, GATEWAY_PORT, QUIC_PORT};
pub use error::ChaosError;
pub use net::{
    cleanup_active_runs, list_namespaces, namespaces_with_prefix, parse_run_prefix, pids_in,
    process_alive, remove_leftovers, remove_run, Host, HostSpec, Role, RunId, TestNet, KNOWN_TAGS,
};
pub use partition::{ensure_nft, nft_script, tables_in, Partition, NFT_TABLE};
pub use probe::{median, unavailability, unix_ms, ProbeError, ProbeRecord, Unavailability};
pub use process::{NodeProcess, ProcessState};
pub use report::{FaultRecord, Scenario, ScenarioOptions, ScenarioReport, StormFault, StormReport};
pub use scenario::{run_scenario, topic_in_group, ProbeProcess};
pub use storm::{
    gateway_of, percentile, run_worker, storm_progress, topic_name, topic_of, MissingClient,
    StormCommand, StormConfig, StormEvent, StormProgress, StormWorkerError, Verification,
    DEFAULT_CLIENTS, DEFAULT_FAULTS, DEFAULT_TOPICS, MAX_CLIENTS, MAX_TOPICS,
};
pub use wal::{damage_wal, last_segment, WalDamage};
