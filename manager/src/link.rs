//! The gateway link on the manager side: gateways subscribe and unsubscribe topics for
//! themselves, read a topic's gateway set, publish, and open their session stream, over QUIC
//! (ALPN `firetower-link/1`).
//!
//! One request per bidirectional stream: `len:u32 BE | GatewayRequest` from the gateway,
//! `len:u32 BE | GatewayReply` back. A manager that does not lead the topic's group answers
//! `NotLeader` with the leader it knows, so the gateway re-routes within one round trip.
//!
//! ```text
//!   GatewayRequest ─▶ Subscribe / Unsubscribe / TopicGateways ─▶ topics.rs
//!                  ─▶ Publish                                  ─▶ publish.rs
//!                  ─▶ OpenSession (keeps the stream)           ─▶ sessions.rs
//!                  ─▶ GetRouting                               ─▶ replies::routing
//! ```
//!
//! What a gateway connection may cost, whatever its certificate:
//! - **Streams**: at most [`MAX_STREAMS_PER_CONNECTION`] are served at once (session streams
//!   included); the accept loop takes the next stream only when one ends, so excess streams
//!   wait in QUIC (their opener sees back-pressure), never an unbounded set of tasks.
//! - **Sizes**: a request's size limit follows its operation and is checked before its body
//!   is read (`firetower_link::request_body_limit`: a publish up to 1 MiB, anything else 4 KiB);
//!   session frames are 4 KiB at most.
//! - **Time**: a request must arrive whole within [`REQUEST_READ_TIMEOUT`] of its stream
//!   opening, and its reply be taken within [`REPLY_WRITE_TIMEOUT`]; a session stream must
//!   carry a frame at least once per lease (sessions.rs). A stream that opens and sends
//!   nothing is closed.
//! - **Identity**: a `Subscribe` commits only for a gateway with a live session here, on the
//!   group's leader (topics.rs); error replies never carry the cluster id.

use std::sync::Arc;
use std::time::Duration;

use firetower_link::{
    decode_body, encode_frame, read_link_frame_limited, request_body_limit, FrameError,
    ReadFrameError, MAX_LINK_FRAME_BYTES,
};
use firetower_proto::link::{
    gateway_reply, gateway_request, GatewayReply, GatewayRequest, Gateways,
};
use firetower_proto::{Epoch, GatewayId};
use firetower_raft::{group_of, Command};
use tokio::sync::Semaphore;

use crate::node::Node;
use crate::replies::{failure, not_leader};
use crate::sessions::expire_session;
use crate::topics::{
    linearizable_gateways, session_for_subscribe, stale_session, write, ReadError,
};

/// Streams of one gateway connection served at once. A gateway keeps one session stream per
/// manager and one stream per request in flight; at most this many bodies (1 MiB each at
/// worst) are held per connection.
pub(crate) const MAX_STREAMS_PER_CONNECTION: usize = 256;

/// How long a request stream may take to deliver its whole request.
pub(crate) const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the gateway may take to accept a reply.
pub(crate) const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request could not be read off a gateway's stream (answered `bad_frame`).
#[derive(Debug, thiserror::Error)]
enum RequestError {
    /// The stream ended before a whole request arrived.
    #[error("stream closed before a request")]
    Closed,
    /// The stream failed or broke the framing.
    #[error(transparent)]
    Read(#[from] ReadFrameError),
    /// The frame is not a `GatewayRequest`.
    #[error(transparent)]
    Decode(#[from] FrameError),
    /// The request did not arrive within [`REQUEST_READ_TIMEOUT`].
    #[error("no whole request within {REQUEST_READ_TIMEOUT:?}")]
    Timeout,
}

/// Serve one gateway connection until it closes. `peer` is the gateway id of the peer's
/// certificate (mutual TLS); a request naming another gateway id is refused. `None` (insecure
/// mode) trusts the id each request names.
pub(crate) async fn serve_connection(conn: quinn::Connection, node: Node, peer: Option<GatewayId>) {
    let remote = conn.remote_address();
    let shutdown = node.shutdown_token();
    let slots = Arc::new(Semaphore::new(MAX_STREAMS_PER_CONNECTION));
    loop {
        // A free slot first: while every slot is busy, no stream is accepted.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = slots.clone().acquire_owned() => s,
        };
        // The semaphore is never closed.
        let Ok(slot) = slot else { break };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = conn.accept_bi() => s,
        };
        let (mut send, mut recv) = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "gateway link closed");
                break;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let request = match read_request(&mut recv).await {
                Ok(r) => r,
                Err(e) => {
                    reply(&mut send, &failure("bad_frame", e.to_string())).await;
                    return;
                }
            };
            if let Some(peer) = peer {
                if request.gateway != peer.get() {
                    tracing::warn!(
                        certificate = peer.get(),
                        claimed = request.gateway,
                        "gateway request refused: another gateway's id"
                    );
                    let message = format!(
                        "this connection's certificate is gateway {}'s; it may not act as \
                         gateway {}",
                        peer.get(),
                        request.gateway
                    );
                    reply(&mut send, &failure("permission_denied", message)).await;
                    return;
                }
            }
            if let Some(gateway_request::Op::OpenSession(open)) = request.op {
                let gateway = GatewayId(request.gateway);
                if gateway.get() == 0 {
                    reply(
                        &mut send,
                        &failure("invalid_request", "gateway id 0 is reserved"),
                    )
                    .await;
                    return;
                }
                crate::sessions::serve_session(node, gateway, open, send, recv).await;
                return;
            }
            let answer = handle(&node, request).await;
            reply(&mut send, &answer).await;
        });
    }
}

async fn reply(send: &mut quinn::SendStream, answer: &GatewayReply) {
    let frame = encode_frame(answer);
    match tokio::time::timeout(REPLY_WRITE_TIMEOUT, send.write_all(&frame)).await {
        Ok(Ok(())) => {
            let _ = send.finish();
        }
        _ => {
            let _ = send.reset(quinn::VarInt::from_u32(0));
        }
    }
}

async fn read_request(recv: &mut quinn::RecvStream) -> Result<GatewayRequest, RequestError> {
    let read = read_link_frame_limited(recv, MAX_LINK_FRAME_BYTES, request_body_limit);
    match tokio::time::timeout(REQUEST_READ_TIMEOUT, read).await {
        Err(_) => Err(RequestError::Timeout),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(None)) => Err(RequestError::Closed),
        Ok(Ok(Some(body))) => Ok(decode_body(&body)?),
    }
}

/// Answer one gateway request.
pub(crate) async fn handle(node: &Node, request: GatewayRequest) -> GatewayReply {
    if node.cluster_id().is_empty() {
        return failure("not_initialized", "this manager is not in a cluster yet");
    }
    let gateway = GatewayId(request.gateway);
    if gateway.get() == 0 {
        return failure("invalid_request", "gateway id 0 is reserved");
    }
    let (topic, command) = match request.op {
        None => return failure("invalid_request", "request without an operation"),
        Some(gateway_request::Op::Subscribe(s)) => {
            if let Err(e) = firetower_proto::validate_topic(&s.topic) {
                return failure(e.code(), e.to_string());
            }
            let group = group_of(&s.topic, node.group_count());
            if let Err(refused) = session_for_subscribe(node, gateway, Epoch(s.epoch), group).await
            {
                return refused;
            }
            let subscribe = Command::Subscribe {
                topic: s.topic.clone(),
                gateway: gateway.get(),
            };
            let command = match stale_session(node, gateway, Epoch(s.epoch), &s.topic) {
                // The gateway restarted and this group still holds its previous session:
                // expire that first, in the same entry. Expired later (by the lease task),
                // it would take this subscription with it while the client was told it is
                // subscribed.
                Some(old) => Command::Batch(vec![expire_session(gateway, old), subscribe]),
                None => subscribe,
            };
            (s.topic, Some(command))
        }
        Some(gateway_request::Op::Unsubscribe(u)) => (
            u.topic.clone(),
            Some(Command::Unsubscribe {
                topic: u.topic,
                gateway: gateway.get(),
            }),
        ),
        Some(gateway_request::Op::TopicGateways(t)) => (t.topic, None),
        Some(gateway_request::Op::GetRouting(_)) => {
            return GatewayReply {
                result: Some(gateway_reply::Result::Routing(crate::replies::routing(
                    node,
                ))),
            }
        }
        Some(gateway_request::Op::Publish(p)) => {
            if let Err(e) = firetower_proto::validate_topic(&p.topic) {
                return failure(e.code(), e.to_string());
            }
            if let Some(rule) = crate::history::rule_for(node, &p.topic) {
                return crate::history::publish(node, p.topic, p.data.into(), p.json, rule).await;
            }
            return crate::publish::publish(node, p.topic, p.data.into(), p.json).await;
        }
        Some(gateway_request::Op::FetchHistory(f)) => {
            if let Err(e) = firetower_proto::validate_topic(&f.topic) {
                return failure(e.code(), e.to_string());
            }
            return crate::history::fetch(node, f.topic, f.after, f.limit).await;
        }
        Some(gateway_request::Op::Presence(p)) => {
            if let Err(e) = firetower_proto::validate_topic(&p.topic) {
                return failure(e.code(), e.to_string());
            }
            return crate::history::presence(node, p.topic).await;
        }
        Some(gateway_request::Op::PresenceUpdate(p)) => {
            if let Err(e) = firetower_proto::validate_topic(&p.topic) {
                return failure(e.code(), e.to_string());
            }
            return crate::history::presence_update(node, gateway, p.topic, p.user, p.connections)
                .await;
        }
        Some(gateway_request::Op::OpenSession(_)) => {
            return failure(
                "invalid_request",
                "OpenSession opens a session stream of its own",
            )
        }
    };
    if let Err(e) = firetower_proto::validate_topic(&topic) {
        return failure(e.code(), e.to_string());
    }
    let group = group_of(&topic, node.group_count());
    match command {
        Some(command) => write(node, group, command).await,
        None => match linearizable_gateways(node, group, &topic).await {
            Ok(gateways) => GatewayReply {
                result: Some(gateway_reply::Result::Gateways(Gateways {
                    gateways,
                    group: group.get(),
                })),
            },
            Err(ReadError::NotLeader { leader }) => not_leader(group, leader),
            Err(ReadError::Unavailable(m)) => failure("unavailable", m),
        },
    }
}
