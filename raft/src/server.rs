//! Server side of Raft RPCs: serves one accepted QUIC connection whose ALPN is
//! [`ALPN_RAFT`](crate::ALPN_RAFT).
//!
//! ```text
//!   accept_bi ─▶ task per stream: read frame ─▶ decode ─▶ cluster id? ─▶ router.get(group)?
//!                                                                          └─▶ openraft ─▶ reply
//! ```
//!
//! Each stream is one RPC, handled in its own task so that one group's slow snapshot chunk does
//! not hold up another group's heartbeat. The number of streams in flight per connection is
//! bounded by QUIC's stream limit (see the quic module).
//!
//! The cluster id comes through a [`watch::Receiver`] because a manager learns it only when it
//! joins a cluster, after its endpoint is already serving. An empty id means "not in a cluster
//! yet": every RPC is refused with [`Rejection::NotInCluster`]. A request for another cluster is
//! refused with [`Rejection::ClusterMismatch`], naming both ids, and a group this manager does
//! not host (yet) with [`Rejection::GroupNotHosted`]. Input that is not a valid frame closes that
//! stream with an error code; it never affects other streams or panics.

use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::router::GroupRouter;
use crate::wire::{self, RaftReply, RaftRequest, Rejection, ReplyBody, RequestBody};

/// Longest wait for a complete request once a stream is open; a peer that opens streams and
/// sends nothing would otherwise pin a task per stream for the life of the connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Stream error code: the request was not a valid frame.
const BAD_FRAME: VarInt = VarInt::from_u32(1);
/// Stream error code: no complete request within [`REQUEST_TIMEOUT`].
const REQUEST_TIMED_OUT: VarInt = VarInt::from_u32(2);
/// Stream error code: the reply could not be encoded.
const REPLY_UNENCODABLE: VarInt = VarInt::from_u32(3);

/// Serves Raft RPCs arriving on `conn` until the connection closes.
///
/// `cluster_id` is this manager's cluster id, read at every request; empty means not in a
/// cluster. Returning (or dropping this future) aborts the RPCs still in progress.
pub async fn serve_raft_connection(
    conn: Connection,
    router: GroupRouter,
    cluster_id: watch::Receiver<String>,
    peer: Option<u64>,
) {
    // Membership checks of `peer` are added by the Raft hardening work.
    let _ = peer;
    let remote = conn.remote_address();
    let mut rpcs = JoinSet::new();
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    rpcs.spawn(serve_stream(send, recv, router.clone(), cluster_id.clone()));
                }
                Err(error) => {
                    tracing::debug!(%remote, %error, "raft connection closed");
                    return;
                }
            },
            Some(done) = rpcs.join_next() => {
                if let Err(error) = done {
                    tracing::error!(%remote, %error, "raft RPC task failed");
                }
            }
        }
    }
}

async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    router: GroupRouter,
    cluster_id: watch::Receiver<String>,
) {
    let frame = match tokio::time::timeout(REQUEST_TIMEOUT, wire::read_body(&mut recv)).await {
        Ok(Ok(Some(frame))) => frame,
        // The peer opened a stream and closed it without a request: nothing to answer.
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            tracing::debug!(%error, "unreadable raft request");
            abort_stream(&mut send, &mut recv, BAD_FRAME);
            return;
        }
        Err(_) => {
            tracing::debug!("raft request not received in time");
            abort_stream(&mut send, &mut recv, REQUEST_TIMED_OUT);
            return;
        }
    };
    let reply = match wire::decode_body::<RaftRequest>(&frame) {
        Ok(request) => handle(request, &router, &cluster_id).await,
        Err(error) => {
            tracing::debug!(%error, "undecodable raft request");
            Err(Rejection::BadRequest(error.to_string()))
        }
    };
    let frame = match wire::encode(&reply) {
        Ok(frame) => frame,
        Err(error) => {
            tracing::error!(%error, "cannot encode raft reply");
            abort_stream(&mut send, &mut recv, REPLY_UNENCODABLE);
            return;
        }
    };
    if let Err(error) = send.write_all(&frame).await {
        tracing::debug!(%error, "cannot send raft reply");
        return;
    }
    // Fails only if the stream is already closed, in which case the peer is gone anyway.
    let _ = send.finish();
}

/// Checks the request against this manager's state and hands it to the group's openraft.
async fn handle(
    request: RaftRequest,
    router: &GroupRouter,
    cluster_id: &watch::Receiver<String>,
) -> RaftReply {
    check_cluster(&cluster_id.borrow(), &request.cluster_id)?;
    let raft = router
        .get(request.group)
        .ok_or(Rejection::GroupNotHosted(request.group))?;
    Ok(match request.body {
        RequestBody::AppendEntries(rpc) => ReplyBody::AppendEntries(raft.append_entries(rpc).await),
        RequestBody::Vote(rpc) => {
            if let Some(until) = router.votes_held_until() {
                tokio::time::sleep_until(until.into()).await;
            }
            ReplyBody::Vote(raft.vote(rpc).await)
        }
        RequestBody::InstallSnapshot(rpc) => {
            ReplyBody::InstallSnapshot(raft.install_snapshot(rpc).await)
        }
    })
}

/// Whether a request stamped with cluster id `theirs` may be served by a manager in `ours`.
fn check_cluster(ours: &str, theirs: &str) -> Result<(), Rejection> {
    if ours.is_empty() {
        return Err(Rejection::NotInCluster);
    }
    if ours != theirs {
        return Err(Rejection::ClusterMismatch {
            server: ours.to_owned(),
            client: theirs.to_owned(),
        });
    }
    Ok(())
}

fn abort_stream(send: &mut SendStream, recv: &mut RecvStream, code: VarInt) {
    // Both fail only if that half is already closed, which is the goal anyway.
    let _ = send.reset(code);
    let _ = recv.stop(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_check() {
        assert_eq!(check_cluster("", "c"), Err(Rejection::NotInCluster));
        assert_eq!(check_cluster("", ""), Err(Rejection::NotInCluster));
        assert_eq!(
            check_cluster("a", "b"),
            Err(Rejection::ClusterMismatch {
                server: "a".into(),
                client: "b".into()
            })
        );
        assert_eq!(check_cluster("a", "a"), Ok(()));
    }
}
