//! Server side of Raft RPCs: serves one accepted QUIC connection whose ALPN is
//! [`ALPN_RAFT`](crate::ALPN_RAFT).
//!
//! ```text
//!   accept_bi (at most MAX_RPCS_IN_FLIGHT at once) ─▶ task per stream:
//!     read header (≤ 1 KiB, HEADER_TIMEOUT) ─▶ cluster id? ─▶ group hosted? ─▶ peer a member?
//!     read body length (≤ the kind's limit) ─▶ wait for that many bytes of the budget
//!     read body (REQUEST_TIMEOUT) ─▶ terms, log ids? ─▶ openraft ─▶ reply (REPLY_TIMEOUT)
//!     snapshot chunks: offset in order? ─▶ SnapshotReceipt ─(last chunk, data decodes)─▶ openraft
//! ```
//!
//! Each stream is one RPC, handled in its own task so that one group's slow snapshot chunk does
//! not hold up another group's heartbeat. At most [`MAX_RPCS_IN_FLIGHT`] run per connection:
//! past that the server stops accepting streams until one ends, so the peer's further streams
//! wait (QUIC's stream limit then stops the peer). QUIC's limit alone would not do: a task can
//! outlive its stream (a peer that resets a stream gets its credit back at once). The bodies
//! those RPCs hold are bounded together by [`MAX_BODY_BYTES_IN_FLIGHT`]: QUIC's flow control
//! does not bound them, since the server reads (and so credits) what it buffers.
//!
//! The cluster id comes through a [`watch::Receiver`] because a manager learns it only when it
//! joins a cluster, after its endpoint is already serving. An empty id means "not in a cluster
//! yet": every RPC is refused with [`Rejection::NotInCluster`]. A request for another cluster is
//! refused with [`Rejection::ClusterMismatch`] (which does not name this manager's cluster), a
//! group this manager does not host (yet) with [`Rejection::GroupNotHosted`], and an
//! authenticated peer outside the group's membership with [`Rejection::NotAMember`]; all of
//! these before the body is read. Values no correct peer sends (see the admission module) are
//! refused before openraft sees them. Input that is not a valid frame closes that stream with
//! an error code; it never affects other streams or panics.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use firetower_link::{ReadFrameError, HEADER_LEN};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{InstallSnapshotRequest, InstallSnapshotResponse};
use openraft::storage::Snapshot;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::admission::{self, authorize};
use crate::router::{GroupRouter, Hosted};
use crate::vouch::Vouching;
use crate::wire::{
    self, RaftReply, Rejection, ReplyBody, RequestBody, RequestHeader, WireError, MAX_FRAME_LEN,
    MAX_HEADER_LEN,
};
use crate::{ManagerId, TypeConfig};

/// Most RPCs served at once on one connection. Each group has about one RPC in flight per peer
/// (its replication stream, or a vote), so this leaves room for hundreds of groups while a peer
/// cannot pin more tasks (and their bodies, bounded per kind) than this.
pub const MAX_RPCS_IN_FLIGHT: usize = 256;

/// Most body bytes held at once per connection, across its RPCs in flight: four appends of the
/// largest size, or dozens of snapshot chunks. A body waits for its share (after its length
/// prefix, before its bytes), so a peer cannot make the server buffer more than this however
/// many streams it opens, while one body of any kind always fits.
pub const MAX_BODY_BYTES_IN_FLIGHT: usize = 4 * MAX_FRAME_LEN;

/// Longest wait for the request header once a stream is open; a peer that opens streams and
/// sends nothing would otherwise pin a task per stream.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a complete request (header and body) once a stream is open: a 3 MiB
/// snapshot chunk arrives well within it on any link managers run on.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the peer to take the reply; replies are small, so a peer that does not
/// read them is gone or hostile.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Stream error code: the request was not a valid frame.
const BAD_FRAME: VarInt = VarInt::from_u32(1);
/// Stream error code: no complete request within the deadlines.
const REQUEST_TIMED_OUT: VarInt = VarInt::from_u32(2);
/// Stream error code: the reply could not be encoded.
const REPLY_UNENCODABLE: VarInt = VarInt::from_u32(3);
/// Stream error code (stop sending): the request was refused, the rest of it is not wanted.
const REFUSED: VarInt = VarInt::from_u32(4);

/// What every stream of a connection needs.
struct Context {
    router: GroupRouter,
    cluster_id: watch::Receiver<String>,
    peer: Option<AuthenticatedPeer>,
    /// [`MAX_BODY_BYTES_IN_FLIGHT`], one permit per byte.
    body_bytes: Semaphore,
}

/// A peer that authenticated as a manager, and how to check that it is a member of a group.
#[derive(Debug, Clone)]
pub struct AuthenticatedPeer {
    /// The manager id of the peer's certificate.
    pub id: ManagerId,
    /// This manager's verdicts on peers it does not know as members (shared by all
    /// connections).
    pub vouching: Arc<Vouching>,
}

/// Serves Raft RPCs arriving on `conn` until the connection closes.
///
/// `cluster_id` is this manager's cluster id, read at every request; empty means not in a
/// cluster. `peer` is the manager the peer authenticated as (from its certificate): an RPC
/// for a group is then served only if that id is in the group's membership as this manager
/// knows it, or a member it knows vouches for it (see the vouch module), or this manager knows
/// no membership of the group yet. `None` (an unauthenticated peer, insecure mode) skips that
/// check. Returning (or dropping this future) aborts the RPCs still in progress.
pub async fn serve_raft_connection(
    conn: Connection,
    router: GroupRouter,
    cluster_id: watch::Receiver<String>,
    peer: Option<AuthenticatedPeer>,
) {
    let remote = conn.remote_address();
    let context = Arc::new(Context {
        router,
        cluster_id,
        peer,
        body_bytes: Semaphore::new(MAX_BODY_BYTES_IN_FLIGHT),
    });
    let mut rpcs = JoinSet::new();
    loop {
        if rpcs.len() >= MAX_RPCS_IN_FLIGHT {
            // Accept nothing more until an RPC ends; the peer's new streams wait in QUIC.
            tokio::select! {
                Some(done) = rpcs.join_next() => report(remote, done),
                _ = conn.closed() => return,
            }
            continue;
        }
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    rpcs.spawn(serve_stream(send, recv, Arc::clone(&context)));
                }
                Err(error) => {
                    tracing::debug!(%remote, %error, "raft connection closed");
                    return;
                }
            },
            Some(done) = rpcs.join_next() => report(remote, done),
        }
    }
}

fn report(remote: std::net::SocketAddr, done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        tracing::error!(%remote, %error, "raft RPC task failed");
    }
}

/// What became of a request stream.
enum Outcome {
    /// Answer this (boxed: openraft's replies are large next to the other variants).
    Reply(Box<RaftReply>),
    /// The stream ended before a request: nothing to answer.
    Silent,
    /// Reset the stream with this code.
    Abort(VarInt),
}

impl Outcome {
    fn reject(rejection: Rejection) -> Outcome {
        Outcome::Reply(Box::new(Err(rejection)))
    }
}

async fn serve_stream(mut send: SendStream, mut recv: RecvStream, context: Arc<Context>) {
    let reply = match receive(&mut recv, &context).await {
        Outcome::Reply(reply) => *reply,
        Outcome::Silent => return,
        Outcome::Abort(code) => {
            abort_stream(&mut send, &mut recv, code);
            return;
        }
    };
    if let Err(rejection) = &reply {
        let peer = context.peer.as_ref().map(|p| p.id);
        tracing::debug!(?peer, %rejection, "raft request refused");
        // The rest of the request, if any, is not wanted. Fails only if that half is closed.
        let _ = recv.stop(REFUSED);
    }
    let frame = match wire::encode(&reply) {
        Ok(frame) => frame,
        Err(error) => {
            tracing::error!(%error, "cannot encode raft reply");
            abort_stream(&mut send, &mut recv, REPLY_UNENCODABLE);
            return;
        }
    };
    match tokio::time::timeout(REPLY_TIMEOUT, send.write_all(&frame)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::debug!(%error, "cannot send raft reply");
            return;
        }
        Err(_) => {
            tracing::debug!("raft reply not taken in time");
            abort_stream(&mut send, &mut recv, REQUEST_TIMED_OUT);
            return;
        }
    }
    // Fails only if the stream is already closed, in which case the peer is gone anyway.
    let _ = send.finish();
}

/// Reads the request off `recv`, checking what can be checked before each part, and hands it
/// to openraft.
async fn receive(recv: &mut RecvStream, context: &Context) -> Outcome {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let header = wire::read_frame(recv, MAX_HEADER_LEN);
    let header = match tokio::time::timeout(HEADER_TIMEOUT, header).await {
        Ok(Ok(Some(header))) => header,
        Ok(Ok(None)) => return Outcome::Silent,
        Ok(Err(WireError::Read(ReadFrameError::TooLarge { len, .. }))) => {
            return Outcome::reject(Rejection::HeaderTooLarge { len: len as u64 })
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "unreadable raft request header");
            return Outcome::Abort(BAD_FRAME);
        }
        Err(_) => {
            tracing::debug!("raft request header not received in time");
            return Outcome::Abort(REQUEST_TIMED_OUT);
        }
    };
    let header = match wire::decode_header(&header) {
        Ok(header) => header,
        Err(error) => return Outcome::reject(Rejection::BadRequest(error.to_string())),
    };
    let hosted = match admit(&header, context).await {
        Ok(hosted) => hosted,
        Err(rejection) => return Outcome::reject(rejection),
    };
    // Openraft's config is validated, and a chunk size that does not fit a usize is no limit.
    let chunk = usize::try_from(hosted.raft.config().snapshot_max_chunk_size).unwrap_or(usize::MAX);
    let limit = header.kind.body_limit(chunk);
    // The body's length first, to wait for its share of the connection's byte budget before
    // reading it.
    let mut prefix = [0u8; HEADER_LEN];
    match tokio::time::timeout_at(deadline, recv.read_exact(&mut prefix)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::debug!(%error, "raft request without a body");
            return Outcome::Abort(BAD_FRAME);
        }
        Err(_) => return Outcome::Abort(REQUEST_TIMED_OUT),
    }
    let len = u32::from_be_bytes(prefix);
    if len as usize > limit {
        return Outcome::reject(Rejection::BodyTooLarge {
            kind: header.kind,
            len: len.into(),
            limit: limit as u64,
        });
    }
    // len <= limit <= MAX_FRAME_LEN < MAX_BODY_BYTES_IN_FLIGHT: the wait always ends. The
    // semaphore is never closed, so acquiring fails only by the deadline.
    let share = context.body_bytes.acquire_many(len);
    let Ok(Ok(_share)) = tokio::time::timeout_at(deadline, share).await else {
        tracing::debug!("raft request body not received in time");
        return Outcome::Abort(REQUEST_TIMED_OUT);
    };
    let mut framed = (&prefix[..]).chain(&mut *recv);
    let body = match tokio::time::timeout_at(deadline, wire::read_frame(&mut framed, limit)).await {
        Ok(Ok(Some(body))) => body,
        // The prefix was read: the frame reader sees at least that.
        Ok(Ok(None)) => return Outcome::Abort(BAD_FRAME),
        Ok(Err(error)) => {
            tracing::debug!(%error, "unreadable raft request body");
            return Outcome::Abort(BAD_FRAME);
        }
        Err(_) => {
            tracing::debug!("raft request body not received in time");
            return Outcome::Abort(REQUEST_TIMED_OUT);
        }
    };
    let decoded = wire::decode_request_body(header.kind, &body);
    // The decoded request is what openraft gets; the bytes need not stay for as long.
    drop(body);
    let reply = match decoded {
        Ok(body) => handle(body, &hosted, context).await,
        Err(error) => {
            tracing::debug!(%error, "undecodable raft request");
            Err(Rejection::BadRequest(error.to_string()))
        }
    };
    Outcome::Reply(Box::new(reply))
}

/// Whether this manager serves a request with `header` from the peer: same cluster, a hosted
/// group, and a peer in the group's membership (or vouched for by a member).
async fn admit(header: &RequestHeader, context: &Context) -> Result<Hosted, Rejection> {
    check_cluster(&context.cluster_id.borrow(), &header.cluster_id)?;
    let hosted = context
        .router
        .hosted(header.group)
        .ok_or(Rejection::GroupNotHosted(header.group))?;
    let Some(peer) = &context.peer else {
        return Ok(hosted);
    };
    // The other members as this manager knows them, to ask if the peer is not among them.
    let members = {
        let metrics = hosted.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        match authorize(Some(peer.id), header.group, membership) {
            Ok(()) => return Ok(hosted),
            Err(_) => membership
                .nodes()
                .filter(|(id, _)| **id != metrics.id)
                .map(|(id, node)| (*id, node.clone()))
                .collect::<Vec<_>>(),
        }
    };
    if peer.vouching.admits(header.group, peer.id, members).await {
        return Ok(hosted);
    }
    Err(Rejection::NotAMember {
        peer: peer.id,
        group: header.group,
    })
}

/// Checks the request's values and hands it to the group's openraft.
async fn handle(body: RequestBody, hosted: &Hosted, context: &Context) -> RaftReply {
    let raft = &hosted.raft;
    let local_term = raft.metrics().borrow().current_term;
    Ok(match body {
        RequestBody::AppendEntries(rpc) => {
            admission::check_append_entries(&rpc, local_term).map_err(Rejection::Implausible)?;
            ReplyBody::AppendEntries(raft.append_entries(rpc).await)
        }
        RequestBody::Vote(rpc) => {
            admission::check_vote_request(&rpc, local_term).map_err(Rejection::Implausible)?;
            if let Some(until) = context.router.votes_held_until() {
                tokio::time::sleep_until(until.into()).await;
            }
            ReplyBody::Vote(raft.vote(rpc).await)
        }
        RequestBody::InstallSnapshot(rpc) => {
            admission::check_install_snapshot(&rpc, local_term).map_err(Rejection::Implausible)?;
            ReplyBody::InstallSnapshot(install_snapshot(rpc, hosted).await?)
        }
    })
}

/// Openraft's answer to one snapshot chunk.
type SnapshotReply =
    Result<InstallSnapshotResponse<ManagerId>, RaftError<ManagerId, InstallSnapshotError>>;

/// Takes one snapshot chunk into the group's receipt and, with the last one, installs the
/// snapshot: what openraft's chunked `install_snapshot` does, except that bytes are only ever
/// appended in order and a complete snapshot is checked before openraft installs it (a failed
/// install stops the group for good).
async fn install_snapshot(
    rpc: InstallSnapshotRequest<TypeConfig>,
    hosted: &Hosted,
) -> Result<SnapshotReply, Rejection> {
    let raft = &hosted.raft;
    let InstallSnapshotRequest {
        vote,
        meta,
        offset,
        data,
        done,
    } = rpc;
    // One chunk of a group at a time, as in openraft.
    let mut receipt = hosted.snapshot.lock().await;
    receipt.admit(&meta.snapshot_id, offset, data.len())?;
    let current = match raft.with_raft_state(|state| *state.vote_ref()).await {
        Ok(current) => current,
        Err(fatal) => return Ok(Err(RaftError::Fatal(fatal))),
    };
    // As in openraft: a chunk from a vote below this manager's is answered with its vote and
    // dropped; the sender learns it is not the leader.
    let from_leader = vote >= current;
    let response = InstallSnapshotResponse { vote: current };
    if !from_leader {
        return Ok(Ok(response));
    }
    let Some(whole) = receipt.take(&meta.snapshot_id, offset, &data, done) else {
        return Ok(Ok(response));
    };
    firetower_store::check_snapshot_data(&whole)
        .map_err(|error| Rejection::BadSnapshot(error.to_string()))?;
    let snapshot = Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(whole)),
    };
    Ok(raft
        .install_full_snapshot(vote, snapshot)
        .await
        .map(Into::into)
        .map_err(RaftError::Fatal))
}

/// Whether a request stamped with cluster id `theirs` may be served by a manager in `ours`.
fn check_cluster(ours: &str, theirs: &str) -> Result<(), Rejection> {
    if ours.is_empty() {
        return Err(Rejection::NotInCluster);
    }
    if ours != theirs {
        return Err(Rejection::ClusterMismatch);
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
        assert_eq!(check_cluster("a", "b"), Err(Rejection::ClusterMismatch));
        assert_eq!(check_cluster("a", "a"), Ok(()));
    }

    #[test]
    fn cluster_mismatch_does_not_name_the_cluster() {
        let shown = check_cluster("secret-cluster", "other")
            .unwrap_err()
            .to_string();
        assert!(!shown.contains("secret-cluster"), "{shown}");
        assert!(shown.contains("another cluster"), "{shown}");
    }
}
