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

use firetower_link::{decode_body, encode_frame, FrameError, ReadFrameError};
use firetower_proto::link::{
    gateway_reply, gateway_request, GatewayReply, GatewayRequest, Gateways,
};
use firetower_proto::{Epoch, GatewayId};
use firetower_raft::{group_of, Command};

use crate::node::Node;
use crate::replies::{failure, not_leader};
use crate::sessions::expire_session;
use crate::topics::{linearizable_gateways, stale_session, write, ReadError};

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
}

/// Serve one gateway connection until it closes. `peer` is the gateway id of the peer's
/// certificate (mutual TLS); a request naming another gateway id is refused. `None` (insecure
/// mode) trusts the id each request names.
pub(crate) async fn serve_connection(conn: quinn::Connection, node: Node, peer: Option<GatewayId>) {
    let remote = conn.remote_address();
    let shutdown = node.shutdown_token();
    loop {
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
    if send.write_all(&encode_frame(answer)).await.is_ok() {
        let _ = send.finish();
    }
}

async fn read_request(recv: &mut quinn::RecvStream) -> Result<GatewayRequest, RequestError> {
    match crate::sessions::read_frame_body(recv).await? {
        None => Err(RequestError::Closed),
        Some(body) => Ok(decode_body(&body)?),
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
            return crate::publish::publish(node, p.topic, p.data.into(), p.json).await;
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
