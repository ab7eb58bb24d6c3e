//! The Firetower client protocol as a library: what a client and a gateway say to each other,
//! and a small tokio client that says it.
//!
//! Entry point for applications and tests: [`Client::connect`] (WebSocket, `firetower.json` or
//! `firetower.proto`), [`Client::connect_tls`] (`wss://`) or [`Client::connect_tcp`] (raw TCP
//! framing), then
//! [`Client::subscribe`], [`Client::publish`] and [`Client::next_message`].
//!
//! ```text
//!   Client (tokio, the only I/O here)
//!     │ ClientFrame::encode_*            ServerFrame::parse_*        frame   (JSON | protobuf)
//!     │ ws::encode_frame (masked)        ws::decode_frame + Assembler ws     (RFC 6455)
//!     │ tcp::encode_frame                tcp::decode_frame            tcp    (u32 length)
//!     │ ws::upgrade_request              http::parse_response_head    http   (handshake)
//!     ▼
//!   socket ──────────────▶ gateway (the same modules, server role)
//! ```
//!
//! Everything but [`Client`] is sans-I/O: pure functions over byte buffers, property-tested,
//! shared with the gateway (which encodes each published message once and hands the same
//! bytes to every subscriber). [`Client::connect_tls`] speaks `wss://` (rustls, a CA
//! given by the caller: [`tls`]). Not here: WebSocket compression
//! (permessage-deflate), reconnection and resubscription (an SDK's job, above this crate),
//! and hidden time-outs: wrap any call in `tokio::time::timeout`.

#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod client;
pub mod frame;
pub mod http;
mod payload;
pub mod tcp;
pub mod tls;
pub mod ws;

pub use client::{Client, ClientError, Event, TopicMessage};
pub use frame::{
    ClientFrame, Flavour, HistoryItem, ParseError, Position, ProtocolError, ServerFrame,
    MAX_RECOVER_TOPICS, MAX_TOKEN_BYTES,
};
pub use payload::Payload;
