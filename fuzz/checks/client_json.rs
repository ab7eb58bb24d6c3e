//! The JSON flavour of the client protocol: `ClientFrame::parse_json` (what the gateway reads
//! from a text message) and `ServerFrame::parse_json` (what a JSON client reads).
//!
//! What must hold, besides "never panics":
//! - a parsed client frame names only valid topics (at least one for (un)subscribe);
//! - it encodes back to JSON that parses to the same frame, and to protobuf that parses to the
//!   same frame (the JSON `data` text is carried unchanged through both);
//! - what it accepts, serde's derive reads as an object with the same `op` and `id`;
//! - a refusal becomes an error frame with a documented code that encodes and parses back
//!   unchanged;
//! - a parsed server frame round trips through JSON and through protobuf.

use firetower_client::{ClientFrame, ServerFrame};
use firetower_proto::validate_topic;

/// Error codes a client may see for a refused JSON frame.
const CODES: [&str; 5] = [
    "invalid_json",
    "unknown_op",
    "missing_field",
    "invalid_field",
    "invalid_topic",
];

/// One input: whatever it is, the properties above hold.
pub fn run(data: &[u8]) {
    match ClientFrame::parse_json(data) {
        Ok(frame) => {
            same_as_serde_json(data, &frame);
            accepted(&frame);
        }
        Err(refusal) => {
            let error = refusal.to_frame();
            let firetower_client::ServerFrame::Error { id, code, .. } = &error else {
                panic!("to_frame gave {error:?}");
            };
            assert_eq!(*id, refusal.id);
            assert!(CODES.contains(&code.as_str()), "unknown error code {code}");
            server_round_trip(&error);
        }
    }
    if let Ok(frame) = ServerFrame::parse_json(data) {
        server_round_trip(&frame);
    }
}

fn accepted(frame: &ClientFrame) {
    match frame {
        ClientFrame::Subscribe { topics, .. } | ClientFrame::Unsubscribe { topics, .. } => {
            assert!(!topics.is_empty(), "accepted an empty topic list");
            for t in topics {
                assert_eq!(validate_topic(t), Ok(()), "accepted topic {t:?}");
            }
        }
        ClientFrame::Publish { topic, .. } => {
            assert_eq!(validate_topic(topic), Ok(()), "accepted topic {topic:?}");
        }
        ClientFrame::History { topic, .. } | ClientFrame::Presence { topic, .. } => {
            assert_eq!(validate_topic(topic), Ok(()), "accepted topic {topic:?}");
        }
        ClientFrame::Ping { .. } => {}
        ClientFrame::Auth { token, .. } => {
            assert!(
                !token.is_empty() && token.len() <= firetower_client::MAX_TOKEN_BYTES,
                "accepted a token of {} bytes",
                token.len()
            );
        }
    }
    let json = frame.encode_json();
    assert_eq!(
        ClientFrame::parse_json(&json).as_ref(),
        Ok(frame),
        "JSON round trip"
    );
    let proto = frame.encode_proto();
    assert_eq!(
        ClientFrame::parse_proto(&proto).as_ref(),
        Ok(frame),
        "JSON -> protobuf"
    );
}

/// What serde's derive reads from the same text (unknown fields skipped, duplicates refused).
#[derive(serde::Deserialize)]
struct Probe {
    op: String,
    id: Option<u64>,
}

/// An independent reading agrees on the object, its `op` and its `id` (absent means 0).
fn same_as_serde_json(data: &[u8], frame: &ClientFrame) {
    assert_eq!(
        data.iter().find(|b| !b.is_ascii_whitespace()),
        Some(&b'{'),
        "not an object"
    );
    let probe: Probe = serde_json::from_slice(data).expect("accepted what serde refuses");
    let op = match frame {
        ClientFrame::Subscribe { .. } => "subscribe",
        ClientFrame::Unsubscribe { .. } => "unsubscribe",
        ClientFrame::Publish { .. } => "publish",
        ClientFrame::Ping { .. } => "ping",
        ClientFrame::Auth { .. } => "auth",
        ClientFrame::History { .. } => "history",
        ClientFrame::Presence { .. } => "presence",
    };
    assert_eq!(probe.op, op);
    assert_eq!(probe.id.unwrap_or(0), frame.id());
}

fn server_round_trip(frame: &ServerFrame) {
    let json = frame.encode_json();
    assert_eq!(
        ServerFrame::parse_json(&json).as_ref(),
        Ok(frame),
        "server JSON round trip"
    );
    let proto = frame.encode_proto();
    assert_eq!(
        ServerFrame::parse_proto(&proto).as_ref(),
        Ok(frame),
        "server JSON -> protobuf"
    );
}
