//! Raft for Firetower managers: the openraft type configuration, the topic -> group function,
//! the registry of hosted groups, and Raft RPCs between managers over QUIC.
//!
//! ```text
//!   manager A                                                   manager B
//!   ┌──────────────────────────────┐                           ┌──────────────────────────────┐
//!   │ Raft (group g)               │                           │ serve_raft_connection        │
//!   │   └ QuicNetworkFactory(g) ─┐ │   one QUIC connection,    │   header: cluster id, group, │
//!   │ Raft (group h)             │ │   one stream per RPC,     │   peer in the membership?    │
//!   │   └ QuicNetworkFactory(h) ─┼─┼── ALPN firetower-raft/1 ─▶│   body: within its kind's    │
//!   │              PeerConnections │   request = header frame  │   limit; admission checks ─┐ │
//!   └──────────────────────────────┘   + body frame            │   Raft (group g / h) ◀─────┘ │
//!                                                              └──────────────────────────────┘
//! ```
//!
//! Entry points: [`make_endpoint`] for the manager's QUIC endpoint; per group,
//! [`QuicNetworkFactory::new`] (sharing one [`PeerConnections`]) as openraft's network; register
//! each group in a [`GroupRouter`] and hand every accepted [`ALPN_RAFT`] connection to
//! [`serve_raft_connection`], with the peer's manager id once peers are authenticated.
//! [`group_of`] says which group owns a topic.
//!
//! The server trusts no peer, authenticated or not: the [`wire`] module says what is read in
//! which order and how much of it, and the [`admission`] module which values are refused
//! before openraft sees them (terms and log ids near `u64::MAX`, snapshot chunks out of order
//! or past [`MAX_SNAPSHOT_LEN`]). Every read on a stream has a deadline, and at most
//! [`MAX_RPCS_IN_FLIGHT`] RPCs run per connection.
//!
//! This crate does not store anything (that is `firetower-store`), does not decide which groups
//! exist or who is a member (that is the manager), does not authenticate peers (the caller
//! passes the manager id it learned from the peer's certificate), and does not set up QUIC
//! itself: endpoints, ALPN names, TLS, the frame reader and the reconnect policy come from
//! `firetower-link` and are re-exported here for the manager.

#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

use std::io::Cursor;

pub mod admission;
pub mod limits;
mod network;
mod router;
mod server;
pub mod vouch;
pub mod wire;

pub use firetower_link::{
    client_config, install_crypto_provider, make_endpoint, make_endpoint_with_reset_secret,
    ReconnectPolicy, TransportError, ALPN_LINK, ALPN_RAFT,
};
pub use firetower_proto::jump_consistent_hash;
pub use firetower_store::{Command, ManagerId, ManagerNode, Response};
pub use limits::{Implausible, MAX_INDEX, MAX_SNAPSHOT_LEN, MAX_TERM, MAX_TERM_LEAP};
pub use network::{PeerConnections, QuicNetwork, QuicNetworkFactory};
pub use router::GroupRouter;
pub use server::{
    serve_raft_connection, AuthenticatedPeer, MAX_BODY_BYTES_IN_FLIGHT, MAX_RPCS_IN_FLIGHT,
};
pub use wire::{Rejection, MAX_FRAME_LEN};

/// A Raft group (shard of the topic space). Groups are numbered `0..G`; `G` is fixed at init.
pub use firetower_proto::GroupId;

/// The group that owns `topic` among `groups` groups: [`firetower_proto::group_of`] as a
/// [`GroupId`].
pub fn group_of(topic: &str, groups: u32) -> GroupId {
    GroupId(firetower_proto::group_of(topic, groups))
}

openraft::declare_raft_types!(
    /// Openraft type configuration of every Firetower group.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = ManagerId,
        Node = ManagerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft group instance on this manager.
pub type Raft = openraft::Raft<TypeConfig>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_of_is_the_placement_function_as_a_group_id() {
        for groups in [1, 8, 1024] {
            for topic in ["", "room.1", "chat.general", "x"] {
                assert_eq!(
                    group_of(topic, groups).get(),
                    firetower_proto::group_of(topic, groups)
                );
            }
        }
        assert_eq!(group_of("anything", 0), GroupId(0));
    }
}
