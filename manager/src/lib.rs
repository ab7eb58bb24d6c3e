//! The Firetower topic-manager server.
//!
//! Entry point: [`Manager::start`] with a [`ManagerConfig`] ([`Manager::start_on`] puts the QUIC
//! endpoint on a given socket instead, such as one of `firetower_link::MemNet`, the in-memory
//! network that `tests/partition.rs` cuts and heals). A manager hosts one Raft instance per
//! group of its cluster (openraft, via `firetower-raft`) on durable storage
//! (`firetower-store`), serves gateways over QUIC (the link, ALPN `firetower-link/1`),
//! operators over gRPC (the admin API, with health checking and reflection) and, with
//! `metrics` set, Prometheus scrapes over HTTP.
//!
//! It does not talk to clients and does not fan out messages itself; gateways do.
//!
//! Modules depend in one direction only, top to bottom:
//!
//! ```text
//!   wiring     server ─ Manager::start/shutdown, QUIC accept loop, admin and metrics listeners
//!                 │
//!   services   admin (gRPC, thin) ─▶ membership, operators   metrics_http
//!              link ─▶ sessions, publish, topics ─▶ replies
//!                 │
//!   context    node ─ Node: config, meta, groups (Raft, readers, proposers, stampers),
//!                 │         session table, metrics, shutdown
//!   parts      proposer  leadership  session_table  controls  metrics  meta  config  error
//!              locks
//!                 │
//!   sans-I/O   stamper (term, seq) and lease rules      leases (session expiry)
//! ```

#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod admin;
mod admin_tls;
mod config;
mod controls;
mod error;
mod history;
mod history_book;
mod leadership;
mod leases;
mod link;
mod locks;
mod membership;
mod meta;
mod metrics;
mod metrics_http;
mod node;
mod operators;
mod proposer;
mod publish;
mod replies;
mod server;
mod session_table;
mod sessions;
mod stamper;
mod topics;
mod vouch;

pub use admin::AdminService;
pub use config::{
    ManagerConfig, RaftTuning, TlsSettings, DEFAULT_ADMIN_PORT, DEFAULT_GROUPS, DEFAULT_QUIC_PORT,
    MAX_GROUPS,
};
pub use error::FatalError;
pub use error::{ConfigError, StartError};
pub use membership::{connect as connect_admin, MembershipError};
pub use meta::NodeMeta;
pub use node::state_name;
pub use server::Manager;
