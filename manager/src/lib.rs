//! The Firetower topic-manager server.
//!
//! Entry point: [`Manager::start`] with a [`ManagerConfig`]. A manager hosts one Raft
//! instance per group of its cluster (openraft, via `firetower-raft`) on durable storage
//! (`firetower-store`), serves gateways over QUIC (the link, ALPN `firetower-link/1`) and
//! operators over gRPC (the admin API, with health checking and reflection).
//!
//! It does not talk to clients and does not fan out messages itself; gateways do.

mod admin;
mod config;
mod error;
mod leadership;
mod link;
mod meta;
mod proposer;
mod publish;
mod server;
mod sessions;

pub use admin::{connect as connect_admin, AdminService};
pub use config::{
    ManagerConfig, RaftTuning, DEFAULT_ADMIN_PORT, DEFAULT_GROUPS, DEFAULT_QUIC_PORT, MAX_GROUPS,
};
pub use error::{ConfigError, StartError};
pub use meta::NodeMeta;
pub use server::{state_name, Manager};
