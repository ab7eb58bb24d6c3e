//! The RFC 6455 decoder, the message assembler (both roles) and the upgrade handshake.
//!
//! Input: `[config][chunk][bytes...]`. Bit 7 of `config` picks the handshake (the bytes are an
//! HTTP request head) or the frame codec (the bytes are a socket stream); bit 0 the role, bits
//! 1..=3 the size limit; `chunk` the size of the pieces the stream arrives in.
//!
//! What must hold, besides "never panics":
//! - the stream decodes to the same frames and the same error whether it arrives whole or in
//!   pieces (the decoder keeps no state but the buffer);
//! - `missing_bytes` is exact: that many more bytes complete the frame, one fewer does not;
//! - every frame obeys the limits (payload <= limit, control frames <= 125 bytes and final);
//! - every frame re-encodes and decodes back to itself;
//! - assembled messages match a reference model of fragmentation, text is UTF-8 and no
//!   message exceeds the limit;
//! - an accepted request head re-parses the same from its own bytes, and an accepted upgrade
//!   answers with the accept key of its `Sec-WebSocket-Key`.

use bytes::{Bytes, BytesMut};
use firetower_client::http::{parse_request_head, MAX_REQUEST_HEAD};
use firetower_client::ws::{accept_key, decode_frame, encode_frame, missing_bytes, negotiate};
use firetower_client::ws::{upgrade_response, Frame, Message, MessageAssembler, Opcode, Role};
use firetower_client::ws::{WsError, MAX_CONTROL_PAYLOAD};

/// Limits the gateway could be configured with, including the edges of the length encodings.
const LIMITS: [usize; 8] = [0, 1, 125, 126, 1000, 65_535, 65_536, 1 << 20];

/// One input: whatever it is, the properties above hold.
pub fn run(data: &[u8]) {
    let [config, chunk, bytes @ ..] = data else {
        return;
    };
    if config & 0x80 != 0 {
        handshake(bytes);
        return;
    }
    let role = if config & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let max = LIMITS[usize::from((config >> 1) & 7)];
    let chunk = 1 + usize::from(*chunk % 64);
    codec(bytes, max, role, chunk);
}

/// Decodes `bytes` whole, then in pieces of `chunk` bytes, and checks both agree.
fn codec(bytes: &[u8], max: usize, role: Role, chunk: usize) {
    let (whole, whole_err) = decode_whole(bytes, max, role);
    let (pieces, pieces_err) = decode_in_pieces(bytes, max, role, chunk);
    assert_eq!(
        whole, pieces,
        "frames differ when the stream arrives in pieces"
    );
    assert_eq!(
        whole_err, pieces_err,
        "errors differ when the stream arrives in pieces"
    );

    for frame in &whole {
        assert!(frame.payload.len() <= max, "frame over the limit");
        if frame.opcode.is_control() {
            assert!(frame.fin, "fragmented control frame accepted");
            assert!(frame.payload.len() <= MAX_CONTROL_PAYLOAD);
        }
        round_trip(frame, max, role);
    }
    assemble(&whole, max);
}

fn decode_whole(bytes: &[u8], max: usize, role: Role) -> (Vec<Frame>, Option<WsError>) {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        let before = buf.len();
        let missing = missing_bytes(&buf, max, role);
        match decode_frame(&mut buf, max, role) {
            Ok(Some(frame)) => {
                assert_eq!(missing, 0, "missing_bytes > 0 for a complete frame");
                assert!(buf.len() < before, "a frame consumed no bytes");
                frames.push(frame);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete frame consumed bytes");
                check_missing(&buf, missing, max, role);
                return (frames, None);
            }
            Err(e) => return (frames, Some(e)),
        }
    }
}

/// `missing` more bytes (any bytes) complete the frame at the front of `buf`; one fewer does not.
fn check_missing(buf: &[u8], missing: usize, max: usize, role: Role) {
    if missing == 0 || missing > 1 << 21 {
        return;
    }
    let mut grown = BytesMut::from(buf);
    grown.resize(buf.len() + missing - 1, 0xA5);
    assert_eq!(
        decode_frame(&mut grown, max, role),
        Ok(None),
        "completed too early"
    );
    grown.extend_from_slice(&[0xA5]);
    assert!(
        matches!(decode_frame(&mut grown, max, role), Ok(Some(_))),
        "missing_bytes said {missing} but that many more bytes do not complete the frame"
    );
}

fn decode_in_pieces(
    bytes: &[u8],
    max: usize,
    role: Role,
    chunk: usize,
) -> (Vec<Frame>, Option<WsError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decode_frame(&mut buf, max, role) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

/// Encoding a decoded frame again (masked when a server decodes) gives the same frame back.
fn round_trip(frame: &Frame, max: usize, role: Role) {
    let mask = match role {
        Role::Server => Some([0x12, 0x34, 0x56, 0x78]),
        Role::Client => None,
    };
    let wire = encode_frame(frame.fin, frame.opcode, &frame.payload, mask);
    let mut buf = BytesMut::from(&wire[..]);
    let back = decode_frame(&mut buf, max, role).expect("a re-encoded frame is valid");
    assert_eq!(
        back.as_ref(),
        Some(frame),
        "re-encoded frame decodes differently"
    );
    assert!(buf.is_empty(), "a re-encoded frame left bytes over");
}

/// Reference model of RFC 6455 section 5.4 fragmentation, run next to the assembler.
fn assemble(frames: &[Frame], max: usize) {
    let mut assembler = MessageAssembler::new(max);
    let mut open: Option<(Opcode, Vec<u8>)> = None;
    for frame in frames {
        let result = assembler.push(frame.clone());
        let Ok(got) = result else {
            // A refused frame ends the connection; the model must agree it was wrong.
            let expected_ok = !matches!(
                (frame.opcode, &open),
                (Opcode::Text | Opcode::Binary, Some(_)) | (Opcode::Continuation, None)
            );
            if expected_ok {
                check_refusal(frame, &open, max, result.unwrap_err());
            }
            return;
        };
        let expected = match frame.opcode {
            Opcode::Ping => Some(Message::Ping(frame.payload.clone())),
            Opcode::Pong => Some(Message::Pong(frame.payload.clone())),
            Opcode::Close => {
                let Some(Message::Close(close)) = &got else {
                    panic!("close frame gave {got:?}");
                };
                if let Some((code, reason)) = close {
                    assert!(frame.payload.len() >= 2);
                    assert_eq!(
                        u16::from_be_bytes([frame.payload[0], frame.payload[1]]),
                        *code
                    );
                    assert_eq!(reason.as_bytes(), &frame.payload[2..]);
                    assert!(matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999));
                } else {
                    assert!(frame.payload.is_empty());
                }
                got.clone()
            }
            Opcode::Text | Opcode::Binary => {
                assert!(open.is_none(), "new message accepted inside a message");
                if frame.fin {
                    Some(data_message(frame.opcode, frame.payload.to_vec()))
                } else {
                    open = Some((frame.opcode, frame.payload.to_vec()));
                    None
                }
            }
            Opcode::Continuation => {
                let (kind, mut parts) = open
                    .take()
                    .expect("continuation accepted outside a message");
                parts.extend_from_slice(&frame.payload);
                if frame.fin {
                    Some(data_message(kind, parts))
                } else {
                    open = Some((kind, parts));
                    None
                }
            }
        };
        assert_eq!(got, expected, "assembler and model disagree");
        if let Some(Message::Text(text) | Message::Binary(text)) = &got {
            assert!(text.len() <= max, "message over the limit");
        }
        if let Some(Message::Text(text)) = &got {
            assert!(
                std::str::from_utf8(text).is_ok(),
                "text message is not UTF-8"
            );
        }
    }
}

fn data_message(kind: Opcode, payload: Vec<u8>) -> Message {
    match kind {
        Opcode::Text => Message::Text(Bytes::from(payload)),
        _ => Message::Binary(Bytes::from(payload)),
    }
}

/// A frame the model accepts structurally was refused: only for size, UTF-8 or close rules.
fn check_refusal(frame: &Frame, open: &Option<(Opcode, Vec<u8>)>, max: usize, err: WsError) {
    match err {
        WsError::TooLarge { len, .. } => {
            let so_far = open.as_ref().map_or(0, |(_, p)| p.len());
            assert_eq!(len as usize, so_far + frame.payload.len());
            assert!(
                len as usize > max,
                "refused as too large but within the limit"
            );
        }
        WsError::InvalidUtf8 => {
            let text = match (frame.opcode, open) {
                (Opcode::Close, _) => frame.payload.get(2..).unwrap_or_default().to_vec(),
                (Opcode::Continuation, Some((Opcode::Text, parts))) => {
                    let mut all = parts.clone();
                    all.extend_from_slice(&frame.payload);
                    all
                }
                (Opcode::Text, None) => frame.payload.to_vec(),
                other => panic!("InvalidUtf8 for {other:?}"),
            };
            assert!(std::str::from_utf8(&text).is_err(), "valid UTF-8 refused");
        }
        WsError::Protocol(_) => assert_eq!(frame.opcode, Opcode::Close, "{err} for {frame:?}"),
    }
}

/// The upgrade request head: parse, re-parse, negotiate.
fn handshake(bytes: &[u8]) {
    let parsed = parse_request_head(bytes);
    let Ok(Some((head, len))) = parsed else {
        if let Err(e) = &parsed {
            assert!(matches!(e.status(), 400 | 431));
        }
        return;
    };
    assert!(
        len <= bytes.len() && len <= MAX_REQUEST_HEAD,
        "head length {len} out of bounds"
    );
    // The head is exactly its own bytes: parsing only them gives the same head, and one byte
    // fewer is not a complete head.
    assert_eq!(
        parse_request_head(&bytes[..len]),
        Ok(Some((head.clone(), len)))
    );
    assert!(!matches!(
        parse_request_head(&bytes[..len - 1]),
        Ok(Some(_))
    ));
    assert!(!head.path.contains('?'), "query string left in the path");

    let Ok(upgrade) = negotiate(&head) else {
        return;
    };
    assert_eq!(head.method, "GET");
    let key = head
        .header("sec-websocket-key")
        .expect("accepted without a key");
    assert_eq!(upgrade.accept, accept_key(key));
    assert_eq!(
        upgrade.accept.len(),
        28,
        "accept key is not base64 of a SHA-1"
    );
    let response = String::from_utf8(upgrade_response(&upgrade)).expect("response is ASCII");
    assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert_eq!(
        response.find("\r\n\r\n"),
        Some(response.len() - 4),
        "header injection"
    );
    assert!(response.contains(&format!("Sec-WebSocket-Accept: {}\r\n", upgrade.accept)));
}
