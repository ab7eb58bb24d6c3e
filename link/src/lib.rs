//! What both ends of Firetower's cluster QUIC share: the length-prefixed framing, endpoint and
//! transport set-up, ALPN names, TLS (one certificate verifier), the reconnect policy, the
//! link's domain messages, and the gateway's [`LinkClient`] with its pure [`LeaderCache`].
//!
//! ```text
//!   gateway                                                      manager
//!   ┌──────────────────────────────────┐                        ┌──────────────────────────┐
//!   │ LinkClient ── LeaderCache (pure) │                        │ make_endpoint            │
//!   │   │ LinkRequest ─▶ GatewayRequest│  ALPN_LINK, one stream │   ALPN_LINK ─▶ manager   │
//!   │   │ LinkReply ◀─TryFrom─ Reply   │◀══ per request ═══════▶│   ALPN_RAFT ─▶ raft      │
//!   │   └ ReconnectPolicy (backoff)    │  [len u32 BE][body]    │ read_link_frame          │
//!   │ client_endpoint ── tls           │  (frame)               │ ReconnectPolicy (peers)  │
//!   └──────────────────────────────────┘                        └──────────────────────────┘
//!                     memnet: the same endpoints over an in-memory switch, for tests
//! ```
//!
//! Entry points: [`LinkClient::connect`] for a gateway; [`make_endpoint`] (or
//! [`make_endpoint_with_reset_secret`]) and [`client_config`] for a manager; [`read_link_frame`]
//! and [`encode_frame`] for anyone reading or writing a cluster stream; [`MemNet`] for tests
//! that partition endpoints without root.
//!
//! Trust: [`certs`] makes the cluster CA and the certificates `firetower certs` issues,
//! [`identity`] reads the [`Role`] a certificate carries, and [`tls`] builds the mutual-TLS
//! configurations of every endpoint from a process's [`Security`].
//!
//! This crate does not serve requests (that is the manager) and does not speak Raft (that is
//! `firetower-raft`, which puts its own messages in this framing); it says who a peer is, and
//! the servers decide what that peer may do.

#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod certs;
mod client;
mod endpoint;
mod frame;
pub mod handshake_limit;
mod held_session;
pub mod identity;
mod leader_cache;
pub mod memnet;
mod message;
mod reconnect;
pub mod tls;
mod token_bucket;

pub use client::{LinkClient, LinkError, LinkOptions, StreamError};
pub use endpoint::{
    client_config, client_endpoint, client_endpoint_on, make_endpoint, make_endpoint_on,
    make_endpoint_with_reset_secret, TransportError, ALPN_LINK, ALPN_RAFT,
};
pub use frame::{
    decode_body, decode_frame, encode_frame, gateway_frame_limit, read_link_frame,
    read_link_frame_limited, request_body_limit, write_link_frame, FrameError, ReadFrameError,
    HEADER_LEN, KIND_PEEK_BYTES, MAX_CONNECTIONS_FRAME_BYTES, MAX_GATEWAY_FRAME_BYTES,
    MAX_LINK_FRAME_BYTES, MAX_SMALL_REQUEST_BYTES,
};
pub use handshake_limit::HandshakeLimiter;
pub use held_session::HeldSessions;
pub use identity::{IdentityError, Role};
pub use leader_cache::{
    plausible_manager_addr, LeaderCache, Observation, RoutingRejectReason, RoutingRejected,
    RoutingRejections, Target, MAX_GROUPS, MAX_MANAGERS,
};
pub use memnet::{MemNet, MemSocket};
pub use message::{
    GroupLeader, HistoryPage, LinkReply, LinkRequest, MessageError, Published, Routing, Written,
};
pub use reconnect::ReconnectPolicy;
pub use tls::{
    install_crypto_provider, peer_role, ClientAuth, Security, TlsError, TlsIdentity, SERVER_NAME,
};
pub use token_bucket::TokenBucket;
