//! Writes the seed corpora under `fuzz/corpus/<target>/`: a few valid inputs per target, made
//! with the crates' own encoders so they follow the formats as they are today.
//!
//! Not a fuzz target. Run from the `fuzz/` directory after `cargo +nightly fuzz build`:
//! `target/x86_64-unknown-linux-gnu/release/seeds` (see docs/fuzzing.md).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use firetower_client::ws::{encode_close, encode_frame, Opcode};
use firetower_client::{ClientFrame, Payload, ServerFrame};
use firetower_proto::link::{self, gateway_reply, gateway_request, session_frame};
use firetower_raft::wire::{encode, RaftReply, RaftRequest, ReplyBody, RequestBody};
use firetower_raft::{Command, GroupId, ManagerNode, TypeConfig};
use firetower_store::{Wal, WalOptions};
use futures::executor::block_on;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Vote};

fn main() {
    let root = Path::new("corpus");
    write(root, "ws_codec", ws_codec());
    write(root, "client_json", client_json());
    write(root, "client_proto", client_proto());
    write(root, "link_frame", link_frame());
    write(root, "raft_wire", raft_wire());
    write(root, "wal_replay", wal_replay());
}

fn write(root: &Path, target: &str, seeds: Vec<Vec<u8>>) {
    let dir = root.join(target);
    fs::create_dir_all(&dir).expect("create the corpus directory");
    for (i, seed) in seeds.iter().enumerate() {
        fs::write(dir.join(format!("seed-{i:02}")), seed).expect("write a seed");
    }
    println!("{target}: {} seeds", seeds.len());
}

fn with(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    out.extend_from_slice(body);
    out
}

fn ws_codec() -> Vec<Vec<u8>> {
    // config: bit 0 role (0 server, 1 client), bits 1..=3 limit index (4: 1000 bytes).
    let (server, client) = (4 << 1, (4 << 1) | 1);
    let mask = Some([0x37, 0xfa, 0x21, 0x3d]);
    let mut fragmented = Vec::new();
    fragmented.extend_from_slice(&encode_frame(false, Opcode::Text, b"hel", mask));
    fragmented.extend_from_slice(&encode_frame(true, Opcode::Ping, b"p", mask));
    fragmented.extend_from_slice(&encode_frame(true, Opcode::Continuation, b"lo", mask));
    let mut closing = encode_frame(true, Opcode::Binary, &[7u8; 200], mask).to_vec();
    closing.extend_from_slice(&encode_frame(true, Opcode::Close, b"\x03\xe8bye", mask));
    let mut to_client = encode_frame(true, Opcode::Text, br#"{"op":"ack","id":1}"#, None).to_vec();
    to_client.extend_from_slice(&encode_close(1001, "going away"));
    let upgrade = "GET /ws?x=1 HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n\
                   Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Protocol: chat, firetower.proto\r\n\r\n";
    vec![
        with(
            &[server, 1],
            &encode_frame(true, Opcode::Text, b"Hello", mask),
        ),
        with(&[server, 3], &fragmented),
        with(&[server, 64], &closing),
        with(&[client, 5], &to_client),
        with(&[0x80, 0], upgrade.as_bytes()),
        with(&[0x80, 0], b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n"),
    ]
}

fn client_frames() -> Vec<ClientFrame> {
    let topics = vec![Arc::from("room.1"), Arc::from("room.2")];
    vec![
        ClientFrame::subscribe(1, topics.clone()),
        ClientFrame::Unsubscribe { id: 2, topics },
        ClientFrame::Publish {
            id: 3,
            topic: Arc::from("room.1"),
            payload: Payload::Json(Bytes::from_static(br#"{"text":"hi","n":[1,2.5,null]}"#)),
        },
        ClientFrame::Publish {
            id: 4,
            topic: Arc::from("bin"),
            payload: Payload::Binary(Bytes::from_static(&[0, 159, 146, 150])),
        },
        ClientFrame::Ping { id: u64::MAX },
    ]
}

fn server_frames() -> Vec<ServerFrame> {
    vec![
        ServerFrame::Ack { id: 1 },
        ServerFrame::Pong { id: 2 },
        ServerFrame::error(Some(3), "invalid_topic", "invalid topic \"\": empty"),
        ServerFrame::Message {
            topic: Arc::from("room.1"),
            payload: Payload::Json(Bytes::from_static(b"\"hi\"")),
            term: 3,
            seq: 17,
 position: None,
},
        ServerFrame::Message {
            topic: Arc::from("bin"),
            payload: Payload::Binary(Bytes::from_static(b"\x00\x01")),
            term: 1,
            seq: 1,
 position: None,
},
    ]
}

fn client_json() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = client_frames()
        .iter()
        .map(ClientFrame::encode_json)
        .collect();
    seeds.extend(server_frames().iter().map(ServerFrame::encode_json));
    seeds.push(br#" {"op":"subscribe","topics":["a b"],"id":9} "#.to_vec());
    seeds
}

fn client_proto() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = client_frames()
        .iter()
        .map(ClientFrame::encode_proto)
        .collect();
    seeds.extend(server_frames().iter().map(ServerFrame::encode_proto));
    seeds
}

fn link_frame() -> Vec<Vec<u8>> {
    use firetower_link::encode_frame;
    let request = link::GatewayRequest {
        gateway: 7,
        op: Some(gateway_request::Op::Subscribe(link::Subscribe {
            topic: "room.1".into(),
            epoch: 1_795_692_954_333_266,
        })),
    };
    let publish = link::GatewayRequest {
        gateway: 7,
        op: Some(gateway_request::Op::Publish(link::Publish {
            topic: "room.1".into(),
            data: b"{}".to_vec(),
            json: true,
        })),
    };
    let reply = link::GatewayReply {
        result: Some(gateway_reply::Result::NotLeader(link::NotLeader {
            group: 3,
            leader_id: 2,
            leader_quic: "127.0.0.1:6667".into(),
        })),
    };
    let session = link::SessionFrame {
        frame: Some(session_frame::Frame::Delivery(link::Delivery {
            topic: "room.1".into(),
            data: b"hi".to_vec(),
            json: false,
            term: 2,
            seq: 9,
            dseq: 40,
        })),
    };
    let resync = link::SessionFrame {
        frame: Some(session_frame::Frame::Resync(link::Resync {
            groups: vec![0, 3, 7],
        })),
    };
    let ack = link::GatewayFrame {
        frame: Some(link::gateway_frame::Frame::Ack(link::DeliveryAck {
            upto: 40,
            superseded: vec![38, 39],
        })),
    };
    let tcp: Vec<u8> = client_frames()
        .iter()
        .flat_map(|f| firetower_client::tcp::encode_frame(&f.encode_proto()).to_vec())
        .collect();
    vec![
        with(&[0], &encode_frame(&request)),
        with(&[0], &encode_frame(&publish)),
        with(&[1], &encode_frame(&reply)),
        with(&[2], &encode_frame(&session)),
        with(&[2], &encode_frame(&resync)),
        with(&[3], &encode_frame(&ack)),
        // Selector 7: TCP framing, 64 KiB limit, 1-byte pieces; 7 + 8 * 9: 10-byte pieces.
        with(&[7], &tcp),
        with(&[7 + 8 * 9], &tcp),
    ]
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entries() -> Vec<Entry<TypeConfig>> {
    let nodes: BTreeMap<u64, ManagerNode> = (1..=3)
        .map(|i| {
            let node = ManagerNode {
                quic: format!("127.0.0.1:{}", 6665 + i),
                admin: format!("127.0.0.1:{}", 7665 + i),
            };
            (i, node)
        })
        .collect();
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
            payload: EntryPayload::Normal(Command::Batch(vec![
                Command::OpenSession {
                    gateway: 7,
                    epoch: 2,
                    lease_ms: 10_000,
                },
                Command::SetMeta {
                    key: "k".into(),
                    value: vec![1, 2],
                },
            ])),
        },
        Entry {
            log_id: log_id(3, 13),
            payload: EntryPayload::Membership(Membership::new(
                vec![BTreeSet::from([1, 2, 3])],
                nodes,
            )),
        },
    ]
}

fn raft_wire() -> Vec<Vec<u8>> {
    let append = RaftRequest {
        cluster_id: "c-1".into(),
        group: GroupId(5),
        body: RequestBody::AppendEntries(AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(2, 9)),
            entries: entries(),
            leader_commit: Some(log_id(2, 8)),
        }),
    };
    let vote = RaftRequest {
        cluster_id: "c-1".into(),
        group: GroupId(0),
        body: RequestBody::Vote(VoteRequest::new(Vote::new(4, 2), Some(log_id(3, 12)))),
    };
    let ok: RaftReply = Ok(ReplyBody::AppendEntries(Ok(
        AppendEntriesResponse::PartialSuccess(Some(log_id(3, 11))),
    )));
    let refused: RaftReply = Err(firetower_raft::Rejection::GroupNotHosted(GroupId(3)));
    let append = encode(&append).expect("encode");
    let vote = encode(&vote).expect("encode");
    let mut stream = append.clone();
    stream.extend_from_slice(&vote);
    // An append whose one entry nests command batches one level deeper than decoding accepts
    // (a deeper one overflowed the stack before `MAX_BATCH_DEPTH`): cluster id "", group 0,
    // AppendEntries, vote (1, 1) uncommitted, no prev_log_id, one entry at (1, 1) index 1,
    // Normal, then Batch-of-one (variant 6, length 1) again and again around a Blacklist.
    let mut nested = vec![0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1];
    nested.extend([6, 1].repeat(firetower_store::MAX_BATCH_DEPTH + 1));
    nested.extend([4, 0, 0, 0]);
    vec![
        with(&[0], &stream),
        with(&[1], &append[4..]),
        with(&[1], &vote[4..]),
        with(&[2], &encode(&ok).expect("encode")[4..]),
        with(&[2], &encode(&refused).expect("encode")[4..]),
        with(&[1], &nested),
    ]
}

/// Segments written through the log store API, as `Input::Raw` (enum tag 0 in `arbitrary`'s
/// encoding: four zero bytes, then the rest of the input is the segment).
fn wal_replay() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let opts = WalOptions {
        fsync: false,
        ..WalOptions::default()
    };
    {
        let wal = Wal::<TypeConfig>::open(dir.path(), opts).expect("open");
        block_on(async {
            let (mut g0, mut g1) = (wal.log_store(0), wal.log_store(1));
            g0.save_vote(&Vote::new_committed(3, 1))
                .await
                .expect("vote");
            g0.blocking_append(entries()).await.expect("append");
            g1.blocking_append(entries().into_iter().take(2))
                .await
                .expect("append");
            g0.save_committed(Some(log_id(3, 11)))
                .await
                .expect("committed");
            g0.truncate(log_id(3, 13)).await.expect("truncate");
            g0.purge(log_id(3, 10)).await.expect("purge");
        });
    }
    let segment = fs::read(dir.path().join("wal").join("00000001.log")).expect("read the segment");
    let torn = &segment[..segment.len() - 3];
    vec![with(&[0, 0, 0, 0], &segment), with(&[0, 0, 0, 0], torn)]
}
