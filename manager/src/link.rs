//! The gateway link on the manager side: gateways subscribe and unsubscribe topics for
//! themselves and read a topic's gateway set, over QUIC (ALPN `firetower-link/1`).
//!
//! One request per bidirectional stream: `len:u32 BE | GatewayRequest` from the gateway,
//! `len:u32 BE | GatewayReply` back. A manager that does not lead the topic's group answers
//! `NotLeader` with the leader it knows, so the gateway re-routes within one round trip.

use std::time::Duration;

use firetower_proto::link::{
    gateway_reply, gateway_request, Done, Failure, GatewayReply, GatewayRequest, Gateways,
    GroupLeader, ManagerAddr, NotLeader, Routing,
};
use firetower_proto::{decode_frame, encode_frame};
use firetower_raft::{group_of, Command, GroupId, ManagerNode, Response};
use openraft::error::{CheckIsLeaderError, RaftError};

use crate::proposer::ProposeError;

use crate::server::Manager;

/// Why a linearizable read could not be served here.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Another manager leads the group (or none is known).
    NotLeader { leader: Option<(u64, ManagerNode)> },
    /// No quorum, a timeout, or a stopped group.
    Unavailable(String),
}

/// Serve one gateway connection until it closes.
pub(crate) async fn serve_connection(conn: quinn::Connection, manager: Manager) {
    let remote = conn.remote_address();
    let shutdown = manager.shutdown_token();
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
        let manager = manager.clone();
        tokio::spawn(async move {
            let request = match read_request(&mut recv).await {
                Ok(r) => r,
                Err(message) => {
                    reply(&mut send, &failure("bad_frame", message)).await;
                    return;
                }
            };
            if let Some(gateway_request::Op::OpenSession(open)) = request.op {
                if request.gateway == 0 {
                    reply(
                        &mut send,
                        &failure("invalid_request", "gateway id 0 is reserved"),
                    )
                    .await;
                    return;
                }
                crate::sessions::serve_session(manager, request.gateway, open, send, recv).await;
                return;
            }
            let answer = handle(&manager, request).await;
            reply(&mut send, &answer).await;
        });
    }
}

async fn reply(send: &mut quinn::SendStream, answer: &GatewayReply) {
    if send.write_all(&encode_frame(answer)).await.is_ok() {
        let _ = send.finish();
    }
}

async fn read_request(recv: &mut quinn::RecvStream) -> Result<GatewayRequest, String> {
    match crate::sessions::read_frame_bytes(recv).await? {
        None => Err("stream closed before a request".into()),
        Some(bytes) => decode_frame(&bytes).map_err(|e| e.to_string()),
    }
}

pub(crate) fn failure(code: &str, message: impl Into<String>) -> GatewayReply {
    GatewayReply {
        result: Some(gateway_reply::Result::Failure(Failure {
            code: code.to_string(),
            message: message.into(),
        })),
    }
}

pub(crate) fn not_leader(group: GroupId, leader: Option<(u64, ManagerNode)>) -> GatewayReply {
    let (leader_id, leader_quic) = leader.map(|(id, n)| (id, n.quic)).unwrap_or_default();
    GatewayReply {
        result: Some(gateway_reply::Result::NotLeader(NotLeader {
            group,
            leader_id,
            leader_quic,
        })),
    }
}

/// Answer one gateway request.
pub(crate) async fn handle(manager: &Manager, request: GatewayRequest) -> GatewayReply {
    if manager.cluster_id().is_empty() {
        return failure("not_initialized", "this manager is not in a cluster yet");
    }
    let gateway = request.gateway;
    if gateway == 0 {
        return failure("invalid_request", "gateway id 0 is reserved");
    }
    let (topic, command) = match request.op {
        None => return failure("invalid_request", "request without an operation"),
        Some(gateway_request::Op::Subscribe(s)) => {
            let subscribe = Command::Subscribe {
                topic: s.topic.clone(),
                gateway,
            };
            let command = match stale_session(manager, gateway, s.epoch, &s.topic) {
                // The gateway restarted and this group still holds its previous session:
                // expire that first, in the same entry. Expired later (by the lease task),
                // it would take this subscription with it while the client was told it is
                // subscribed.
                Some(old) => Command::Batch(vec![
                    Command::ExpireSession {
                        gateway,
                        epoch: old,
                    },
                    subscribe,
                ]),
                None => subscribe,
            };
            (s.topic, Some(command))
        }
        Some(gateway_request::Op::Unsubscribe(u)) => (
            u.topic.clone(),
            Some(Command::Unsubscribe {
                topic: u.topic,
                gateway,
            }),
        ),
        Some(gateway_request::Op::TopicGateways(t)) => (t.topic, None),
        Some(gateway_request::Op::GetRouting(_)) => return routing(manager),
        Some(gateway_request::Op::Publish(p)) => {
            if let Err(e) = firetower_proto::validate_topic(&p.topic) {
                return failure(e.code(), e.to_string());
            }
            return crate::publish::publish(manager, p.topic, p.data.into(), p.json).await;
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
    let group = group_of(&topic, manager.group_count());
    match command {
        Some(command) => write(manager, group, command).await,
        None => match linearizable_gateways(manager, group, &topic).await {
            Ok(gateways) => GatewayReply {
                result: Some(gateway_reply::Result::Gateways(Gateways {
                    gateways,
                    group,
                })),
            },
            Err(ReadError::NotLeader { leader }) => not_leader(group, leader),
            Err(ReadError::Unavailable(m)) => failure("unavailable", m),
        },
    }
}

/// The routing table as this manager knows it.
pub(crate) fn routing(manager: &Manager) -> GatewayReply {
    let managers = manager
        .known_managers()
        .into_iter()
        .map(|(id, n)| ManagerAddr { id, quic: n.quic })
        .collect();
    let leaders = (0..manager.group_count())
        .map(|group| {
            let (leader_id, leader_quic) = manager
                .leader_of(group)
                .map(|(id, n)| (id, n.quic))
                .unwrap_or_default();
            GroupLeader {
                group,
                leader_id,
                leader_quic,
            }
        })
        .collect();
    GatewayReply {
        result: Some(gateway_reply::Result::Routing(Routing {
            cluster_id: manager.cluster_id(),
            groups: manager.group_count(),
            managers,
            leaders,
        })),
    }
}

/// The epoch of an older session of `gateway` still held by the group of `topic` (as this
/// manager applied it), when the request comes from a newer session `epoch`.
fn stale_session(manager: &Manager, gateway: u64, epoch: u64, topic: &str) -> Option<u64> {
    if epoch == 0 || firetower_proto::validate_topic(topic).is_err() {
        return None;
    }
    let group = group_of(topic, manager.group_count());
    let stored = manager.reader(group)?.session(gateway).ok()??;
    (stored.epoch < epoch).then_some(stored.epoch)
}

async fn write(manager: &Manager, group: GroupId, command: Command) -> GatewayReply {
    let Some(proposer) = manager.proposer(group) else {
        return failure("unavailable", format!("group {group} is not running here"));
    };
    let proposed = proposer.propose(command).await.map(|(response, index)| {
        // A batch of our own (expire a stale session, then subscribe) answers for its last
        // command.
        match response {
            Response::Batch(mut responses) => (responses.pop().unwrap_or_default(), index),
            other => (other, index),
        }
    });
    match proposed {
        Ok((Response::Applied { changed }, index)) => GatewayReply {
            result: Some(gateway_reply::Result::Done(Done { changed, index })),
        },
        Ok((Response::Refused { reason }, _)) => failure("refused", reason),
        Ok((other, _)) => failure("internal", format!("unexpected response {other:?}")),
        Err(ProposeError::NotLeader(leader)) => not_leader(group, leader),
        Err(ProposeError::Timeout) => failure(
            "timeout",
            format!(
                "group {group} did not commit in time; the write may or may not take effect: \
                 retry (subscribe and unsubscribe are idempotent)"
            ),
        ),
        Err(ProposeError::Unavailable(m)) => failure("unavailable", format!("group {group}: {m}")),
    }
}

/// The gateways of a topic, read after confirming leadership with a quorum (read index), so
/// the answer reflects every write acknowledged before the read began.
pub(crate) async fn linearizable_gateways(
    manager: &Manager,
    group: GroupId,
    topic: &str,
) -> Result<Vec<u64>, ReadError> {
    let raft = manager
        .raft(group)
        .ok_or_else(|| ReadError::Unavailable(format!("group {group} is not running here")))?;
    let reader = manager
        .reader(group)
        .ok_or_else(|| ReadError::Unavailable(format!("group {group} is not running here")))?;
    if manager.config().unsafe_stale_reads {
        // The deliberately broken mode the Jepsen harness must catch: no leadership check.
        return reader
            .gateways(topic)
            .map_err(|e| ReadError::Unavailable(format!("reading group {group}: {e}")));
    }
    let timeout = Duration::from_millis(manager.config().raft.election_timeout_max_ms * 2);
    match tokio::time::timeout(timeout, raft.ensure_linearizable()).await {
        Err(_) => Err(ReadError::Unavailable(format!(
            "group {group}: leadership not confirmed within {timeout:?}"
        ))),
        Ok(Ok(_)) => reader
            .gateways(topic)
            .map_err(|e| ReadError::Unavailable(format!("reading group {group}: {e}"))),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            Err(ReadError::NotLeader {
                leader: f.leader_id.zip(f.leader_node),
            })
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => Err(
            ReadError::Unavailable(format!("group {group}: no quorum: {e}")),
        ),
        Ok(Err(RaftError::Fatal(e))) => Err(ReadError::Unavailable(format!("group {group}: {e}"))),
    }
}
