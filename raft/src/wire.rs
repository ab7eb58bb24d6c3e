//! Wire format of Raft RPCs between managers.
//!
//! One RPC is one bidirectional QUIC stream carrying one request frame and one reply frame:
//!
//! ```text
//!   client                                         server
//!     │── open_bi ─────────────────────────────────▶ │
//!     │── [len: u32 BE][postcard(RaftRequest)] ─────▶ │  check cluster id, route by group,
//!     │                                              │  call openraft
//!     │◀──── [len: u32 BE][postcard(RaftReply)] ─────│
//! ```
//!
//! The group id in every request lets all groups share one connection per peer. The cluster
//! id in every request lets a manager refuse traffic meant for another cluster (a stale address
//! reused by a fresh deployment, say) instead of letting two clusters' logs mix.
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

use crate::{GroupId, ManagerId, TypeConfig};

/// Largest body of a frame. Appends are bounded by openraft's `max_payload_entries` and
/// snapshot chunks by `snapshot_max_chunk_size` (3 MiB by default), far below this; the limit
/// only keeps a corrupt or hostile length prefix from costing unbounded memory.
pub const MAX_FRAME_LEN: usize = 64 * 1024 * 1024;

/// A Raft RPC from one manager to a peer.
#[derive(Debug, Serialize, Deserialize)]
pub struct RaftRequest {
    /// Cluster the sender belongs to; the receiver refuses requests for another cluster.
    pub cluster_id: String,
    /// Raft group the RPC is for.
    pub group: GroupId,
    /// The openraft request.
    pub body: RequestBody,
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
    /// The receiving manager belongs to another cluster.
    #[error(
        "cluster id mismatch: the peer is in cluster {server:?} but the request is for cluster \
         {client:?}; the address probably belongs to a manager of another deployment"
    )]
    ClusterMismatch {
        /// The receiver's cluster id.
        server: String,
        /// The cluster id in the request.
        client: String,
    },
    /// The receiving manager does not host this group (yet: groups start after joining).
    #[error("group {0} is not hosted by the peer")]
    GroupNotHosted(GroupId),
    /// The request frame could not be decoded.
    #[error("the peer could not decode the request: {0}")]
    BadRequest(String),
}

/// A frame that cannot be encoded, read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The length prefix (or an encoded message) exceeds [`MAX_FRAME_LEN`].
    #[error("frame body of {len} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLarge {
        /// Announced or encoded body length.
        len: usize,
    },
    /// A frame held in memory ends early (reading a stream reports
    /// [`ReadFrameError::Truncated`] instead).
    #[cfg(test)]
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

/// Reads one frame body of at most [`MAX_FRAME_LEN`] bytes from `stream` (`None`: the stream
/// ended cleanly before a frame); the link's one frame reader with Raft's size limit.
pub async fn read_body<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Option<Vec<u8>>, WireError> {
    Ok(firetower_link::read_link_frame(stream, MAX_FRAME_LEN).await?)
}

/// Encodes `msg` as one frame: 4-byte big-endian body length, then the postcard body.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    let mut frame = postcard::to_extend(msg, vec![0u8; HEADER_LEN]).map_err(WireError::Encode)?;
    let len = frame.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge { len });
    }
    // len <= MAX_FRAME_LEN < u32::MAX, so the cast is lossless.
    frame[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// Body length announced by a frame header, checked against [`MAX_FRAME_LEN`].
#[cfg(test)]
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge { len });
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

/// Decodes a complete frame (header and body) held in memory.
#[cfg(test)]
pub fn decode_frame<T: DeserializeOwned>(frame: &[u8]) -> Result<T, WireError> {
    let Some((header, body)) = frame.split_first_chunk::<HEADER_LEN>() else {
        return Err(WireError::Truncated {
            expected: HEADER_LEN,
            got: frame.len(),
        });
    };
    let len = body_len(*header)?;
    match body.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(WireError::Truncated {
            expected: len,
            got: body.len(),
        }),
        std::cmp::Ordering::Greater => Err(WireError::TrailingBytes(body.len() - len)),
        std::cmp::Ordering::Equal => decode_body(body),
    }
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
            Rejection::ClusterMismatch {
                server: "a".into(),
                client: "b".into(),
            },
            Rejection::GroupNotHosted(GroupId(3)),
            Rejection::BadRequest("boom".into()),
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
        ClusterMismatch {
            server: String,
            client: String,
        },
        GroupNotHosted(u32),
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
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
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
            for (at, byte) in flips {
                let i = at.index(frame.len());
                frame[i] = byte;
            }
            let _ = decode_frame::<RaftRequest>(&frame);
        }
    }
}
