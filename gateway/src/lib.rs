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
//! Pure parts (protocol, WebSocket codec, HTTP head parsing, TCP framing, index) have no
//! sockets and are property-tested; `connection` and `server` do the I/O. The manager side of
//! the link ([`LinkClient`]) keeps one QUIC connection per manager and follows leaders. This
//! crate does not terminate TLS (put a proxy in front) and does not compress WebSocket frames.

mod cluster;
mod config;
mod connection;
pub mod http;
mod index;
mod link;
mod metrics;
mod protocol;
mod quic;
mod server;
pub mod tcp;
mod upstream;
pub mod ws;

pub use cluster::{ClusterOptions, ClusterUpstream};
pub use config::{ConfigError, ConnectionLimits, GatewayConfig};
pub use connection::{PushOutcome, QueueLimits, SendQueue, Wire};
pub use index::{ConnId, Effect, IndexError, SubscriptionIndex, TopicState};
pub use link::{LinkClient, LinkError, LinkOptions, Written};
pub use metrics::MetricsSnapshot;
pub use protocol::{ClientFrame, Flavour, ParseError, ProtocolError, ServerFrame};
pub use quic::client_endpoint;
pub use server::{Gateway, GatewayError, GatewayHandle};
pub use upstream::{BoxFuture, Delivery, Payload, Stamp, Upstream, UpstreamError};
