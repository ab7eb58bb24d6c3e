//! The Firetower gateway.
//!
//! So far this crate holds the gateway's side of the manager link ([`LinkClient`]): one QUIC
//! connection per manager, a leader cache per group fed by `NotLeader` replies and the
//! routing table, retries across leader changes with exponential backoff and full jitter.
//! It never links the managers' Raft code: the wire contract comes from `firetower-proto`.

mod link;
mod quic;

pub use link::{LinkClient, LinkError, LinkOptions, Written};
pub use quic::client_endpoint;
