//! Wire format of Raft RPCs between managers.
//!
//! One RPC is one bidirectional QUIC stream carrying a request (a header frame, then a body
//! frame) and one reply frame. Every frame is the link's: a 4-byte big-endian length, then a
//! postcard body.
//!
//! ```text
//!   client                                              server
//!     │── open_bi ──────────────────────────────────────▶ │
//!     │── [len][RequestHeader: cluster id, group, kind] ─▶ │  ≤ MAX_HEADER_LEN; check the cluster
//!     │                                                   │  id, the group, the peer's membership
//!     │── [len][the openraft request of that kind] ──────▶ │  ≤ the kind's limit, read only now
//!     │                                                   │  check terms, log ids, offsets;
//!     │                                                   │  call openraft
//!     │◀──────────────────── [len][RaftReply] ───────────│  ≤ MAX_REPLY_LEN
//! ```
//!
//! The header comes first so that a server refuses a request for another cluster, a group it
//! does not host or a peer that is not a member before it reads (or buffers) any of the body,
//! and so that the body's size limit depends on what the body is:
//!
//! | kind                          | body limit                                              |
//! |-------------------------------|---------------------------------------------------------|
//! | `Vote`                        | [`MAX_VOTE_LEN`] (4 KiB; a vote is a few dozen bytes)   |
//! | `AppendEntries { entries: n }`| `n` x [`MAX_ENTRY_LEN`] + [`APPEND_ENTRIES_SLACK`], at most [`MAX_FRAME_LEN`] |
//! | `InstallSnapshot`             | the group's `snapshot_max_chunk_size` + [`SNAPSHOT_CHUNK_SLACK`] |
//!
//! A refusal before the body is a reply like any other; the server then stops reading the
//! stream, so the client may see its write stopped: it reads the reply anyway.
//!
//! The group id in every request lets all groups share one connection per peer. The cluster
//! id in every request lets a manager refuse traffic meant for another cluster (a stale address
//! reused by a fresh deployment, say) instead of letting two clusters' logs mix; the refusal
//! does not say which cluster the manager is in.
//!
//! Encoding and decoding are pure functions; frames are read off a stream with
//! [`firetower_link::read_link_frame`] (the framing is the link's, the body is postcard), so
//! the whole format is tested without a socket. Nothing decoded from the network can panic:
//! bad input is a [`WireError`].

use firetower_link::{ReadFrameError, HEADER_LEN};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::limits::Implausible;
use crate::{GroupId, ManagerId, TypeConfig};

/// Largest body of any frame: the bound of an `AppendEntries` body however many entries it
/// announces. Appends are bounded by openraft's `max_payload_entries` and snapshot chunks by
/// `snapshot_max_chunk_size` (3 MiB by default); an append too large for this limit is split
/// by openraft (the client reports `PayloadTooLarge`).
pub const MAX_FRAME_LEN: usize = 64 * 1024 * 1024;

/// Largest request header: a cluster id (a few dozen bytes in practice), a group and a kind.
pub const MAX_HEADER_LEN: usize = 1024;

/// Largest `Vote` body: a vote and a log id take a few dozen bytes.
pub const MAX_VOTE_LEN: usize = 4 * 1024;

/// Largest log entry counted for an `AppendEntries` body. The manager batches at most 1024
/// commands per entry, each a topic of at most 256 bytes and a few integers (about 280 KiB);
/// membership entries are far smaller.
pub const MAX_ENTRY_LEN: usize = 1024 * 1024;

/// Bytes of an `AppendEntries` body besides its entries: the vote, two log ids, the length.
pub const APPEND_ENTRIES_SLACK: usize = 4 * 1024;

/// Bytes of an `InstallSnapshot` body besides its data: the vote, the snapshot id, and the
/// snapshot's membership (every manager's id and two addresses).
pub const SNAPSHOT_CHUNK_SLACK: usize = 256 * 1024;

/// Largest reply: openraft's answers are a vote and a log id, its errors a short text.
pub const MAX_REPLY_LEN: usize = 64 * 1024;

/// A Raft RPC from one manager to a peer, as held in memory; on the wire it is a
/// [`RequestHeader`] frame followed by a body frame (see [`encode_request`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct RaftRequest {
    /// Cluster the sender belongs to; the receiver refuses requests for another cluster.
    pub cluster_id: String,
    /// Raft group the RPC is for.
    pub group: GroupId,
    /// The openraft request.
    pub body: RequestBody,
}

/// The first frame of a request: what the server needs to refuse it, or to size its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHeader {
    /// Cluster the sender belongs to.
    pub cluster_id: String,
    /// Raft group the RPC is for.
    pub group: GroupId,
    /// What the body frame holds.
    pub kind: RequestKind,
}

/// What the body frame of a request holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestKind {
    /// An `AppendEntriesRequest` with exactly `entries` entries.
    AppendEntries {
        /// Number of entries in the body; the body is refused if it holds another number.
        entries: u32,
    },
    /// A `VoteRequest`.
    Vote,
    /// An `InstallSnapshotRequest` (one chunk).
    InstallSnapshot,
}

/// The openraft request carried by a [`RaftRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RequestBody {
    /// Log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Leader election.
    Vote(VoteRequest<ManagerId>),
    /// One chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

/// What the server answers: openraft's own result, or a refusal before openraft saw the request.
pub type RaftReply = Result<ReplyBody, Rejection>;

/// Openraft's answer to a [`RequestBody`] of the same kind.
#[derive(Debug, Serialize, Deserialize)]
pub enum ReplyBody {
    /// Answer to [`RequestBody::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<ManagerId>, RaftError<ManagerId>>),
    /// Answer to [`RequestBody::Vote`].
    Vote(Result<VoteResponse<ManagerId>, RaftError<ManagerId>>),
    /// Answer to [`RequestBody::InstallSnapshot`].
    InstallSnapshot(
        Result<InstallSnapshotResponse<ManagerId>, RaftError<ManagerId, InstallSnapshotError>>,
    ),
}

/// Why a server refused a request without handing it to openraft.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Rejection {
    /// The receiving manager has not joined a cluster yet.
    #[error("the peer has not joined a cluster yet and refuses Raft RPCs until it does")]
    NotInCluster,
    /// The receiving manager belongs to another cluster (which one is not said: the cluster id
    /// is not handed to whoever asks).
    #[error(
        "this manager belongs to another cluster; the address probably belongs to a manager of \
         another deployment"
    )]
    ClusterMismatch,
    /// The receiving manager does not host this group (yet: groups start after joining).
    #[error("group {0} is not hosted by the peer")]
    GroupNotHosted(GroupId),
    /// The request frame could not be decoded.
    #[error("the peer could not decode the request: {0}")]
    BadRequest(String),
    /// The authenticated sender is not in the group's membership as the receiver knows it.
    #[error(
        "manager {peer} is not a member of group {group} as this manager knows it; Raft RPCs of a \
         group come only from its voters and learners"
    )]
    NotAMember {
        /// The sender's manager id, from its certificate.
        peer: ManagerId,
        /// The group of the request.
        group: GroupId,
    },
    /// The header frame announces more than [`MAX_HEADER_LEN`] bytes.
    #[error("request header of {len} bytes exceeds the limit of {MAX_HEADER_LEN} bytes")]
    HeaderTooLarge {
        /// Announced length.
        len: u64,
    },
    /// The body frame announces more than its kind allows (see [`RequestKind::body_limit`]).
    #[error("{kind:?} body of {len} bytes exceeds the limit of {limit} bytes for its kind")]
    BodyTooLarge {
        /// Kind from the header.
        kind: RequestKind,
        /// Announced length.
        len: u64,
        /// The limit of that kind on the receiver.
        limit: u64,
    },
    /// A value in the request cannot come from a correct peer (see the admission module).
    #[error("implausible request: {0}")]
    Implausible(Implausible),
    /// A snapshot chunk does not continue the snapshot being received.
    #[error(
        "snapshot chunk of {snapshot_id:?} at offset {got} does not continue what was received \
         (next expected offset {expected}); a snapshot is sent in order from offset 0"
    )]
    SnapshotOutOfOrder {
        /// Snapshot id of the chunk.
        snapshot_id: String,
        /// The offset that would continue the snapshot being received (0 if another or none).
        expected: u64,
        /// Offset of the chunk.
        got: u64,
    },
    /// A complete snapshot's data is not something this manager's state machine can install;
    /// it was dropped, and the group goes on as before.
    #[error("the snapshot received does not decode ({0}); it was not installed")]
    BadSnapshot(String),
    /// A snapshot chunk would take the snapshot past the receiver's size limit.
    #[error("snapshot would grow to {size} bytes, beyond the limit of {limit} bytes")]
    SnapshotTooLarge {
        /// Offset plus length of the chunk.
        size: u64,
        /// The receiver's limit.
        limit: u64,
    },
}

/// A frame that cannot be encoded, read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The length prefix (or an encoded message) exceeds the limit.
    #[error("frame body of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Announced or encoded body length.
        len: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// A frame held in memory ends early (reading a stream reports
    /// [`ReadFrameError::Truncated`] instead).
    #[error("stream ended inside a frame: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the frame announced (including the header while reading it).
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// The body decoded but left bytes over: not a message of the expected type.
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    /// An `AppendEntries` body holds another number of entries than its header announced.
    #[error("the header announced {announced} entries but the body holds {got}")]
    EntryCount {
        /// Entries announced by the header.
        announced: u32,
        /// Entries in the body.
        got: usize,
    },
    /// The message could not be serialized.
    #[error("cannot encode message: {0}")]
    Encode(#[source] postcard::Error),
    /// The body is not a valid message of the expected type.
    #[error("cannot decode message: {0}")]
    Decode(#[source] postcard::Error),
    /// The frame could not be read off the stream (reset, lost, truncated or oversized).
    #[error(transparent)]
    Read(#[from] ReadFrameError),
}

impl RequestKind {
    /// Largest body of this kind a server reads, given the group's `snapshot_max_chunk_size`.
    pub fn body_limit(self, snapshot_chunk_size: usize) -> usize {
        match self {
            RequestKind::AppendEntries { entries } => (entries as usize)
                .saturating_mul(MAX_ENTRY_LEN)
                .saturating_add(APPEND_ENTRIES_SLACK)
                .min(MAX_FRAME_LEN),
            RequestKind::Vote => MAX_VOTE_LEN,
            RequestKind::InstallSnapshot => snapshot_chunk_size
                .saturating_add(SNAPSHOT_CHUNK_SLACK)
                .min(MAX_FRAME_LEN),
        }
    }
}

impl RequestBody {
    /// The kind the header announces for this body. An append of more than `u32::MAX` entries
    /// (which no frame could carry) announces `u32::MAX` and fails the server's count check.
    pub fn kind(&self) -> RequestKind {
        match self {
            RequestBody::AppendEntries(rpc) => RequestKind::AppendEntries {
                entries: u32::try_from(rpc.entries.len()).unwrap_or(u32::MAX),
            },
            RequestBody::Vote(_) => RequestKind::Vote,
            RequestBody::InstallSnapshot(_) => RequestKind::InstallSnapshot,
        }
    }

    /// The body limit a sender checks before sending: the receiver's own for appends and votes;
    /// for a snapshot chunk, its data plus [`SNAPSHOT_CHUNK_SLACK`] (the sender's chunk size is
    /// the receiver's: managers run the same Raft tuning).
    fn sending_limit(&self) -> usize {
        let chunk = match self {
            RequestBody::InstallSnapshot(rpc) => rpc.data.len(),
            _ => 0,
        };
        self.kind().body_limit(chunk)
    }
}

impl RaftRequest {
    /// The header frame's content.
    pub fn header(&self) -> RequestHeader {
        RequestHeader {
            cluster_id: self.cluster_id.clone(),
            group: self.group,
            kind: self.body.kind(),
        }
    }
}

/// Encodes `request` as it goes on the stream: the header frame, then the body frame.
/// A header over [`MAX_HEADER_LEN`] or a body over its kind's limit is [`WireError::TooLarge`].
pub fn encode_request(request: &RaftRequest) -> Result<Vec<u8>, WireError> {
    let mut frames = encode_limited(&request.header(), Vec::new(), MAX_HEADER_LEN)?;
    let limit = request.body.sending_limit();
    frames = match &request.body {
        RequestBody::AppendEntries(rpc) => encode_limited(rpc, frames, limit)?,
        RequestBody::Vote(rpc) => encode_limited(rpc, frames, limit)?,
        RequestBody::InstallSnapshot(rpc) => encode_limited(rpc, frames, limit)?,
    };
    Ok(frames)
}

/// Decodes a header frame's body.
pub fn decode_header(body: &[u8]) -> Result<RequestHeader, WireError> {
    decode_body(body)
}

/// Decodes a body frame of the `kind` its header announced.
pub fn decode_request_body(kind: RequestKind, body: &[u8]) -> Result<RequestBody, WireError> {
    Ok(match kind {
        RequestKind::AppendEntries { entries } => {
            let rpc: AppendEntriesRequest<TypeConfig> = decode_body(body)?;
            if rpc.entries.len() != entries as usize {
                return Err(WireError::EntryCount {
                    announced: entries,
                    got: rpc.entries.len(),
                });
            }
            RequestBody::AppendEntries(rpc)
        }
        RequestKind::Vote => RequestBody::Vote(decode_body(body)?),
        RequestKind::InstallSnapshot => RequestBody::InstallSnapshot(decode_body(body)?),
    })
}

/// Reads one frame body of at most `limit` bytes from `stream` (`None`: the stream ended
/// cleanly before a frame); the link's one frame reader.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
    limit: usize,
) -> Result<Option<Vec<u8>>, WireError> {
    Ok(firetower_link::read_link_frame(stream, limit).await?)
}

/// Reads one frame body of at most [`MAX_FRAME_LEN`] bytes from `stream` (`None`: the stream
/// ended cleanly before a frame).
pub async fn read_body<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Option<Vec<u8>>, WireError> {
    read_frame(stream, MAX_FRAME_LEN).await
}

/// Encodes `msg` as one frame of at most [`MAX_FRAME_LEN`] bytes: 4-byte big-endian body
/// length, then the postcard body.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    encode_limited(msg, Vec::new(), MAX_FRAME_LEN)
}

/// Appends `msg` as one frame of at most `limit` body bytes to `out`.
fn encode_limited<T: Serialize>(
    msg: &T,
    mut out: Vec<u8>,
    limit: usize,
) -> Result<Vec<u8>, WireError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let mut frame = postcard::to_extend(msg, out).map_err(WireError::Encode)?;
    let len = frame.len() - start - HEADER_LEN;
    if len > limit.min(MAX_FRAME_LEN) {
        return Err(WireError::TooLarge { len, limit });
    }
    // len <= MAX_FRAME_LEN < u32::MAX, so the cast is lossless.
    frame[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// Body length announced by a frame header, checked against [`MAX_FRAME_LEN`].
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge {
            len,
            limit: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Decodes a frame body; the whole body must be one message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    let (msg, rest) = postcard::take_from_bytes(body).map_err(WireError::Decode)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Splits the first complete frame off `bytes`: its body and what follows.
pub fn split_frame(bytes: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(WireError::Truncated {
            expected: HEADER_LEN,
            got: bytes.len(),
        });
    };
    let len = body_len(*header)?;
    if rest.len() < len {
        return Err(WireError::Truncated {
            expected: len,
            got: rest.len(),
        });
    }
    Ok(rest.split_at(len))
}

/// Decodes a complete frame (header and body) held in memory.
pub fn decode_frame<T: DeserializeOwned>(frame: &[u8]) -> Result<T, WireError> {
    let (body, rest) = split_frame(frame)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    decode_body(body)
}

/// Decodes a complete request (header frame and body frame) held in memory.
pub fn decode_request(bytes: &[u8]) -> Result<RaftRequest, WireError> {
    let (header, rest) = split_frame(bytes)?;
    let header = decode_header(header)?;
    let (body, rest) = split_frame(rest)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(RaftRequest {
        cluster_id: header.cluster_id,
        group: header.group,
        body: decode_request_body(header.kind, body)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, ManagerNode};
    use openraft::error::{Fatal, Infallible};
    use openraft::{
        CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership,
        Vote,
    };
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn log_id(term: u64, index: u64) -> LogId<ManagerId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn membership() -> Membership<ManagerId, ManagerNode> {
        let nodes: BTreeMap<ManagerId, ManagerNode> = (1..=3)
            .map(|i| {
                (
                    i,
                    ManagerNode {
                        quic: format!("127.0.0.1:{}", 6665 + i),
                        admin: format!("127.0.0.1:{}", 7665 + i),
                    },
                )
            })
            .collect();
        Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
    }

    fn append(entries: Vec<Entry<TypeConfig>>) -> RaftRequest {
        RaftRequest {
            cluster_id: "c-1".into(),
            group: GroupId(5),
            body: RequestBody::AppendEntries(AppendEntriesRequest {
                vote: Vote::new_committed(3, 1),
                prev_log_id: Some(log_id(2, 9)),
                entries,
                leader_commit: Some(log_id(2, 8)),
            }),
        }
    }

    fn entries() -> Vec<Entry<TypeConfig>> {
        vec![
            Entry {
                log_id: log_id(3, 10),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(3, 11),
                payload: EntryPayload::Normal(Command::Subscribe {
                    topic: "room.1".into(),
                    gateway: 7,
                }),
            },
            Entry {
                log_id: log_id(3, 12),
                payload: EntryPayload::Membership(membership()),
            },
        ]
    }

    /// Debug output is the cheapest structural equality the openraft types all offer.
    fn round_trip<T: Serialize + DeserializeOwned + std::fmt::Debug>(msg: &T) {
        let frame = encode(msg).unwrap();
        let back: T = decode_frame(&frame).unwrap();
        assert_eq!(format!("{msg:?}"), format!("{back:?}"));
    }

    #[test]
    fn requests_round_trip() {
        round_trip(&append(entries()));
        round_trip(&append(vec![]));
        round_trip(&RaftRequest {
            cluster_id: String::new(),
            group: GroupId(u32::MAX),
            body: RequestBody::Vote(VoteRequest::new(Vote::new(4, 2), Some(log_id(3, 12)))),
        });
        round_trip(&RaftRequest {
            cluster_id: "c-1".into(),
            group: GroupId(0),
            body: RequestBody::InstallSnapshot(InstallSnapshotRequest {
                vote: Vote::new_committed(3, 1),
                meta: SnapshotMeta {
                    last_log_id: Some(log_id(3, 12)),
                    last_membership: StoredMembership::new(Some(log_id(3, 12)), membership()),
                    snapshot_id: "3-12-1".into(),
                },
                offset: 1024,
                data: vec![0xAB; 4096],
                done: true,
            }),
        });
    }

    #[test]
    fn replies_round_trip() {
        let ok: RaftReply = Ok(ReplyBody::AppendEntries(Ok(AppendEntriesResponse::Success)));
        round_trip(&ok);
        let partial: RaftReply = Ok(ReplyBody::AppendEntries(Ok(
            AppendEntriesResponse::PartialSuccess(Some(log_id(3, 11))),
        )));
        round_trip(&partial);
        let higher: RaftReply = Ok(ReplyBody::AppendEntries(Ok(
            AppendEntriesResponse::HigherVote(Vote::new(9, 3)),
        )));
        round_trip(&higher);
        let vote: RaftReply = Ok(ReplyBody::Vote(Ok(VoteResponse::new(
            Vote::new(4, 2),
            Some(log_id(3, 12)),
            true,
        ))));
        round_trip(&vote);
        let fatal: RaftReply = Ok(ReplyBody::Vote(Err(RaftError::Fatal(Fatal::Stopped))));
        round_trip(&fatal);
        let snap: RaftReply = Ok(ReplyBody::InstallSnapshot(Ok(InstallSnapshotResponse {
            vote: Vote::new_committed(3, 1),
        })));
        round_trip(&snap);
        let api: Result<(), RaftError<ManagerId, Infallible>> =
            Err(RaftError::Fatal(Fatal::Panicked));
        round_trip(&api);
        for rejection in [
            Rejection::NotInCluster,
            Rejection::ClusterMismatch,
            Rejection::GroupNotHosted(GroupId(3)),
            Rejection::BadRequest("boom".into()),
            Rejection::NotAMember {
                peer: 4,
                group: GroupId(2),
            },
            Rejection::HeaderTooLarge { len: 5000 },
            Rejection::BodyTooLarge {
                kind: RequestKind::AppendEntries { entries: 3 },
                len: 1 << 30,
                limit: 1 << 20,
            },
            Rejection::Implausible(Implausible::Term {
                field: crate::limits::Field::Vote,
                term: u64::MAX,
                limit: 1 << 32,
            }),
            Rejection::SnapshotOutOfOrder {
                snapshot_id: "s".into(),
                expected: 10,
                got: 1 << 40,
            },
            Rejection::SnapshotTooLarge {
                size: 1 << 31,
                limit: 1 << 30,
            },
            Rejection::BadSnapshot("no".into()),
        ] {
            let reply: RaftReply = Err(rejection.clone());
            let back: RaftReply = decode_frame(&encode(&reply).unwrap()).unwrap();
            assert_eq!(back.unwrap_err(), rejection);
        }
    }

    #[test]
    fn header_is_big_endian_body_length() {
        let frame = encode(&Rejection::GroupNotHosted(GroupId(1))).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
    }

    #[test]
    fn group_id_encodes_as_the_bare_number() {
        // The newtype is `serde(transparent)`: the bytes on the wire are those of the `u32`
        // that was sent before it, so managers of both versions understand each other.
        for group in [0, 1, 127, 128, 300, u32::MAX] {
            assert_eq!(
                postcard::to_allocvec(&GroupId(group)).unwrap(),
                postcard::to_allocvec(&group).unwrap()
            );
            assert_eq!(
                encode(&Rejection::GroupNotHosted(GroupId(group))).unwrap(),
                encode(&GroupNotHostedAsNumber::GroupNotHosted(group)).unwrap()
            );
        }
    }

    /// [`Rejection`] as it was when the group was a bare `u32` (same variant index).
    #[derive(Serialize)]
    enum GroupNotHostedAsNumber {
        #[allow(dead_code)]
        NotInCluster,
        #[allow(dead_code)]
        ClusterMismatch,
        GroupNotHosted(u32),
    }

    /// A request as it goes on the stream: its two frames, decoded back.
    fn request_round_trip(request: &RaftRequest) -> RaftRequest {
        let bytes = encode_request(request).unwrap();
        let (header, rest) = split_frame(&bytes).unwrap();
        assert_eq!(decode_header(header).unwrap(), request.header());
        let (body, rest) = split_frame(rest).unwrap();
        assert!(rest.is_empty());
        assert!(body.len() <= request.body.kind().body_limit(3 * 1024 * 1024));
        decode_request(&bytes).unwrap()
    }

    #[test]
    fn requests_go_as_a_header_then_a_body() {
        for request in [
            append(entries()),
            append(vec![]),
            RaftRequest {
                cluster_id: "c-1".into(),
                group: GroupId(9),
                body: RequestBody::Vote(VoteRequest::new(Vote::new(4, 2), Some(log_id(3, 12)))),
            },
        ] {
            let back = request_round_trip(&request);
            assert_eq!(format!("{request:?}"), format!("{back:?}"));
        }
        let header = append(entries()).header();
        assert_eq!(header.kind, RequestKind::AppendEntries { entries: 3 });
        assert_eq!(
            (header.cluster_id.as_str(), header.group),
            ("c-1", GroupId(5))
        );
    }

    #[test]
    fn body_limits_depend_on_the_kind() {
        let chunk = 3 * 1024 * 1024;
        assert_eq!(RequestKind::Vote.body_limit(chunk), MAX_VOTE_LEN);
        assert_eq!(
            RequestKind::AppendEntries { entries: 0 }.body_limit(chunk),
            APPEND_ENTRIES_SLACK
        );
        assert_eq!(
            RequestKind::AppendEntries { entries: 3 }.body_limit(chunk),
            3 * MAX_ENTRY_LEN + APPEND_ENTRIES_SLACK
        );
        assert_eq!(
            RequestKind::AppendEntries { entries: u32::MAX }.body_limit(chunk),
            MAX_FRAME_LEN
        );
        assert_eq!(
            RequestKind::InstallSnapshot.body_limit(chunk),
            chunk + SNAPSHOT_CHUNK_SLACK
        );
        assert_eq!(
            RequestKind::InstallSnapshot.body_limit(usize::MAX),
            MAX_FRAME_LEN
        );
    }

    #[test]
    fn a_body_over_its_kind_limit_is_not_encoded() {
        // One entry of more than MAX_ENTRY_LEN plus the slack.
        let mut request = append(vec![Entry {
            log_id: log_id(3, 10),
            payload: EntryPayload::Normal(Command::SetMeta {
                key: "k".into(),
                value: vec![0; MAX_ENTRY_LEN + APPEND_ENTRIES_SLACK],
            }),
        }]);
        assert!(matches!(
            encode_request(&request),
            Err(WireError::TooLarge { .. })
        ));
        request.cluster_id = "x".repeat(MAX_HEADER_LEN);
        request.body = RequestBody::Vote(VoteRequest::new(Vote::new(1, 1), None));
        assert!(matches!(
            encode_request(&request),
            Err(WireError::TooLarge {
                limit: MAX_HEADER_LEN,
                ..
            })
        ));
    }

    #[test]
    fn a_body_with_another_entry_count_than_announced_is_refused() {
        let mut bytes = encode(&RequestHeader {
            cluster_id: "c".into(),
            group: GroupId(0),
            kind: RequestKind::AppendEntries { entries: 1 },
        })
        .unwrap();
        let RequestBody::AppendEntries(rpc) = append(entries()).body else {
            unreachable!("append() builds an AppendEntries")
        };
        bytes.extend(encode(&rpc).unwrap());
        assert!(matches!(
            decode_request(&bytes),
            Err(WireError::EntryCount {
                announced: 1,
                got: 3
            })
        ));
        // A body of another kind than announced does not decode either.
        let mut vote = encode(&RequestHeader {
            cluster_id: "c".into(),
            group: GroupId(0),
            kind: RequestKind::InstallSnapshot,
        })
        .unwrap();
        vote.extend(encode(&VoteRequest::new(Vote::new(1, 1), None)).unwrap());
        assert!(decode_request(&vote).is_err());
    }

    #[test]
    fn oversized_length_prefix_is_refused() {
        let header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(body_len(header), Err(WireError::TooLarge { .. })));
        assert!(matches!(
            body_len(u32::MAX.to_be_bytes()),
            Err(WireError::TooLarge { .. })
        ));
        assert_eq!(
            body_len((MAX_FRAME_LEN as u32).to_be_bytes()).unwrap(),
            MAX_FRAME_LEN
        );
    }

    #[test]
    fn truncated_and_padded_frames_are_errors() {
        let frame = encode(&append(entries())).unwrap();
        for cut in [0, 1, 3, 4, frame.len() / 2, frame.len() - 1] {
            assert!(
                decode_frame::<RaftRequest>(&frame[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut padded = frame.clone();
        padded.push(0);
        assert!(matches!(
            decode_frame::<RaftRequest>(&padded),
            Err(WireError::TrailingBytes(1))
        ));
    }

    #[tokio::test]
    async fn read_body_reads_back_to_back_frames() {
        let mut bytes = encode(&append(entries())).unwrap();
        bytes.extend(encode(&append(vec![])).unwrap());
        let mut stream = &bytes[..];
        let first = read_body(&mut stream).await.unwrap().unwrap();
        let second = read_body(&mut stream).await.unwrap().unwrap();
        assert!(read_body(&mut stream).await.unwrap().is_none());
        let first: RaftRequest = decode_body(&first).unwrap();
        let second: RaftRequest = decode_body(&second).unwrap();
        assert_eq!(format!("{:?}", first), format!("{:?}", append(entries())));
        assert_eq!(format!("{:?}", second), format!("{:?}", append(vec![])));
    }

    #[tokio::test]
    async fn read_body_reports_truncation_and_oversize() {
        let frame = encode(&append(entries())).unwrap();
        let mut cut = &frame[..frame.len() - 1];
        assert!(matches!(
            read_body(&mut cut).await,
            Err(WireError::Read(ReadFrameError::Truncated { .. }))
        ));
        let mut half_header = &frame[..2];
        assert!(matches!(
            read_body(&mut half_header).await,
            Err(WireError::Read(ReadFrameError::Truncated {
                expected: 4,
                got: 2
            }))
        ));
        let huge = u32::MAX.to_be_bytes();
        let mut huge = &huge[..];
        assert!(matches!(
            read_body(&mut huge).await,
            Err(WireError::Read(ReadFrameError::TooLarge { .. }))
        ));
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (".{0,32}", any::<u64>())
                .prop_map(|(topic, gateway)| Command::Subscribe { topic, gateway }),
            (".{0,32}", any::<u64>())
                .prop_map(|(topic, gateway)| Command::Unsubscribe { topic, gateway }),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(gateway, epoch, lease_ms)| {
                Command::OpenSession {
                    gateway,
                    epoch,
                    lease_ms,
                }
            }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(gateway, epoch)| Command::ExpireSession { gateway, epoch }),
            (any::<u64>(), any::<bool>())
                .prop_map(|(gateway, blocked)| Command::Blacklist { gateway, blocked }),
            (".{0,16}", proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(key, value)| Command::SetMeta { key, value }),
        ]
    }

    proptest! {
        #[test]
        fn append_entries_round_trip(
            cluster_id in ".{0,40}",
            group: u32,
            term in 0u64..1000,
            commands in proptest::collection::vec(arb_command(), 0..20),
        ) {
            let entries = commands
                .into_iter()
                .enumerate()
                .map(|(i, c)| Entry {
                    log_id: log_id(term, i as u64 + 1),
                    payload: EntryPayload::Normal(c),
                })
                .collect();
            let mut req = append(entries);
            req.cluster_id = cluster_id;
            req.group = GroupId(group);
            let frame = encode(&req).unwrap();
            let back: RaftRequest = decode_frame(&frame).unwrap();
            prop_assert_eq!(format!("{req:?}"), format!("{back:?}"));
        }

        #[test]
        fn requests_with_any_entries_round_trip(
            cluster_id in ".{0,40}",
            group: u32,
            term in 0u64..1000,
            commands in proptest::collection::vec(arb_command(), 0..20),
        ) {
            let entries = commands
                .into_iter()
                .enumerate()
                .map(|(i, c)| Entry {
                    log_id: log_id(term, i as u64 + 1),
                    payload: EntryPayload::Normal(c),
                })
                .collect();
            let mut req = append(entries);
            req.cluster_id = cluster_id;
            req.group = GroupId(group);
            let back = request_round_trip(&req);
            prop_assert_eq!(format!("{req:?}"), format!("{back:?}"));
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request(&bytes);
            let _ = decode_header(&bytes);
            for kind in [RequestKind::Vote, RequestKind::InstallSnapshot, RequestKind::AppendEntries { entries: 2 }] {
                let _ = decode_request_body(kind, &bytes);
            }
            let _ = decode_body::<RaftRequest>(&bytes);
            let _ = decode_body::<RaftReply>(&bytes);
            let _ = decode_frame::<RaftRequest>(&bytes);
            let _ = decode_frame::<RaftReply>(&bytes);
        }

        #[test]
        fn decoding_mutated_frames_never_panics(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut frame = encode(&append(entries())).unwrap();
            let mut request = encode_request(&append(entries())).unwrap();
            for (at, byte) in flips {
                let i = at.index(frame.len());
                frame[i] = byte;
                let i = at.index(request.len());
                request[i] = byte;
            }
            let _ = decode_frame::<RaftRequest>(&frame);
            let _ = decode_request(&request);
        }
    }
}
