//! The protobuf flavour of the client protocol: `ClientFrame::parse_proto` (what the gateway
//! reads from a binary message or a TCP frame) and `ServerFrame::parse_proto` (what a protobuf
//! client reads).
//!
//! What must hold, besides "never panics":
//! - a parsed client frame names only valid topics (at least one for (un)subscribe), and a
//!   JSON payload is JSON text;
//! - it encodes back to protobuf that parses to the same frame;
//! - it encodes to JSON that parses to the same frame, up to what the JSON flavour cannot say:
//!   whitespace around a JSON payload is not kept, and a binary payload becomes its base64 in
//!   a JSON string;
//! - a parsed server frame round trips through protobuf, and through JSON when its payload is
//!   binary or JSON text.

use base64::Engine as _;
use bytes::Bytes;
use firetower_client::Payload;
use firetower_client::{ClientFrame, ServerFrame};
use firetower_proto::validate_topic;

/// One input: whatever it is, the properties above hold.
pub fn run(data: &[u8]) {
    match ClientFrame::parse_proto(data) {
        Ok(frame) => accepted(&frame),
        Err(refusal) => {
            let code = refusal.error.code();
            assert!(
                matches!(
                    code,
                    "invalid_protobuf" | "missing_field" | "invalid_field" | "invalid_topic"
                ),
                "unexpected code {code}"
            );
        }
    }
    if let Ok(frame) = ServerFrame::parse_proto(data) {
        let proto = frame.encode_proto();
        assert_eq!(
            ServerFrame::parse_proto(&proto).as_ref(),
            Ok(&frame),
            "server proto round trip"
        );
        let expected = match &frame {
            ServerFrame::Message {
                payload: Payload::Json(text),
                ..
            } => as_json_text(text).map(|trimmed| with_payload(&frame, Payload::Json(trimmed))),
            _ => Some(frame.clone()),
        };
        if let Some(expected) = expected {
            let json = frame.encode_json();
            assert_eq!(
                ServerFrame::parse_json(&json),
                Ok(expected),
                "server proto -> JSON"
            );
        }
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
        ClientFrame::Publish { topic, payload, .. } => {
            assert_eq!(validate_topic(topic), Ok(()), "accepted topic {topic:?}");
            if let Payload::Json(text) = payload {
                assert!(
                    as_json_text(text).is_some(),
                    "accepted a JSON payload that is not JSON"
                );
            }
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
    let proto = frame.encode_proto();
    assert_eq!(
        ClientFrame::parse_proto(&proto).as_ref(),
        Ok(frame),
        "proto round trip"
    );

    let expected = match frame {
        ClientFrame::Publish { id, topic, payload } => ClientFrame::Publish {
            id: *id,
            topic: topic.clone(),
            payload: Payload::Json(match payload {
                Payload::Json(text) => as_json_text(text).expect("checked above"),
                Payload::Binary(bytes) => Bytes::from(format!(
                    "\"{}\"",
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                )),
            }),
        },
        other => other.clone(),
    };
    let json = frame.encode_json();
    assert_eq!(
        ClientFrame::parse_json(&json),
        Ok(expected),
        "proto -> JSON"
    );
}

/// The JSON text without the whitespace around it, when `bytes` is one JSON value.
fn as_json_text(bytes: &[u8]) -> Option<Bytes> {
    // UTF-8 first: serde_json skips the bytes of strings it ignores without checking them.
    // IgnoredAny, not Value: a number like 1e400 is JSON even if it is no f64.
    let text = std::str::from_utf8(bytes).ok()?;
    serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
    let start = bytes.iter().position(|b| !b" \t\r\n".contains(b))?;
    let end = bytes.iter().rposition(|b| !b" \t\r\n".contains(b))?;
    Some(Bytes::copy_from_slice(&bytes[start..=end]))
}

fn with_payload(frame: &ServerFrame, payload: Payload) -> ServerFrame {
    let ServerFrame::Message {
        topic,
        term,
        seq,
        position,
        ..
    } = frame
    else {
        return frame.clone();
    };
    ServerFrame::Message {
        topic: topic.clone(),
        payload,
        term: *term,
        seq: *seq,
        position: position.clone(),
    }
}
