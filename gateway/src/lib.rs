//! The Firetower gateway: the client-facing, stateless side of Firetower.
//!
//! Entry point: [`Gateway::start`] with a [`GatewayConfig`], an [`Upstream`] (the cluster) and
//! the receiver of [`Delivery`] values the cluster pushes; it returns a [`GatewayHandle`].
//!
//! ```text
//!   WebSocket /ws (firetower.json | firetower.proto)   raw TCP (length + protobuf)
//!                         \                             /
//!                 connection tasks (limits, send queues, slow-consumer policy)
//!                                      │
//!                   SubscriptionIndex (topic -> local connections)
//!                                      │ first subscriber / last leaver / publish
//!                                dyn Upstream ──▶ the topic managers (LinkClient over QUIC)
//! ```
//!
//! The client protocol itself (frames, the WebSocket codec and handshake, HTTP head parsing,
//! TCP framing) lives in `firetower-client` and is re-exported here; the index is pure and
//! property-tested, and so is each client's `session` (a sans-I/O state machine);
//! `connection` and `server` do the I/O. The manager side of
//! the link ([`LinkClient`]) keeps one QUIC connection per manager and follows leaders.
//! With [`ClientTlsConfig`] (`[client_tls]`) the client port serves `wss://`/`https://` and
//! the TCP port TLS (rustls, ring; `transport`), reloadable through
//! [`GatewayHandle::reload_tls`]. This crate does not compress WebSocket frames.

#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod api;
mod auth;
mod cluster;
mod config;
mod connection;
mod control;
mod control_feed;
mod delivery_guard;
mod demo;
mod hooks;
mod http;
mod index;
mod locks;
mod metrics;
mod operators;
mod queue;
mod recovery;
mod server;
mod session;
mod shared;
mod transport;
mod upstream;
mod wire;

pub use api::{ApiConfig, ApiConfigError};
pub use auth::{AuthConfig, AuthConfigError};
pub use cluster::{ClusterOptions, ClusterUpstream};
pub use config::{
    ClusterTlsFile, ConfigError, ConnectionLimits, DemoFile, FileError, GatewayConfig, GatewayFile,
    LimitsFile,
};
pub use control::{ConnectionInfo, ControlEvent, ControlReceiver, GatewayStats};
/// The link to the managers lives in `firetower-link`; re-exported for existing users.
pub use firetower_link::{client_endpoint, LinkClient, LinkError, LinkOptions, Written};
pub use hooks::{HookEvent, HooksConfig, HooksConfigError, OnFailure};
pub use index::{ConnId, Effect, IndexError, SubscriptionIndex, TopicState};
pub use metrics::MetricsSnapshot;
pub use queue::{PushOutcome, QueueLimits, SendQueue};
pub use server::{Gateway, GatewayError, GatewayHandle};
pub use transport::{ClientTls, ClientTlsConfig, ClientTlsError};
pub use upstream::{BoxFuture, Delivery, HistoryPage, Presence, Stamp, Upstream, UpstreamError};
pub use wire::Wire;

// The client protocol, from the crate that owns it, under the names other crates know.
pub use firetower_client::{
    ws, ClientFrame, Flavour, ParseError, Payload, ProtocolError, ServerFrame,
};
