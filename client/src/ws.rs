//! WebSocket (RFC 6455), both roles, as pure functions over byte buffers.
//!
//! Our own small codec instead of a library so that a connection costs only what it holds:
//! no read or write buffer lives between messages, and the fan-out can hand every subscriber
//! the same pre-encoded frame ([`encode_frame`] once, `Bytes` clones after).
//!
//! ```text
//!   server: HTTP/1.1 GET /ws ──negotiate()──▶ Upgrade { accept key, flavour } ──▶ 101 response
//!   client: upgrade_request() ──▶ GET /ws … 101 ──check_upgrade_response()──▶ Flavour
//!   socket bytes ──decode_frame()──▶ Frame ──MessageAssembler::push()──▶ Message
//!                    │ masking, RSV, opcode, control-frame and size rules
//!                    ▼ WsError ──close_code()──▶ 1002 / 1007 / 1009 close
//! ```
//!
//! Extensions (permessage-deflate) are not negotiated: compression would cost per-connection
//! memory, which is the budget this gateway is built around.

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};

use crate::frame::Flavour;
use crate::http::{RequestHead, ResponseHead};

/// The GUID of RFC 6455 section 1.3.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Longest payload of a control frame (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Close codes used by the gateway.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The gateway is going away (drain, idle peer).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A message of a type the subprotocol does not accept (binary on `firetower.json`).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text message that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: slow consumer, abuse of rate limits.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame or message larger than the limit.
    pub const TOO_BIG: u16 = 1009;
    /// The gateway failed internally.
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// Continues a fragmented message.
    Continuation,
    /// UTF-8 text.
    Text,
    /// Bytes.
    Binary,
    /// Close handshake.
    Close,
    /// Liveness probe.
    Ping,
    /// Answer to a ping.
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Close, ping and pong.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Which end of the connection decodes: servers require masked frames, clients refuse them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decoding what a client sent.
    Server,
    /// Decoding what a server sent.
    Client,
}

/// One decoded (and unmasked) frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Last frame of its message.
    pub fin: bool,
    /// What it carries.
    pub opcode: Opcode,
    /// Unmasked payload.
    pub payload: Bytes,
}

/// A complete message (data messages reassembled from their fragments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// UTF-8 text (validated).
    Text(Bytes),
    /// Bytes.
    Binary(Bytes),
    /// Ping with its application data.
    Ping(Bytes),
    /// Pong with its application data.
    Pong(Bytes),
    /// Close, with the peer's code and reason when it gave them.
    Close(Option<(u16, String)>),
}

/// A WebSocket protocol failure: the connection must be closed with [`WsError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// The peer broke a framing rule.
    #[error("WebSocket protocol violation: {0}")]
    Protocol(&'static str),
    /// A frame or message is larger than allowed.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced or accumulated length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A text message or close reason is not UTF-8.
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
}

impl WsError {
    /// The close code that reports this failure.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => close_code::PROTOCOL_ERROR,
            WsError::TooLarge { .. } => close_code::TOO_BIG,
            WsError::InvalidUtf8 => close_code::INVALID_PAYLOAD,
        }
    }
}

/// Decode one frame from the front of `buf`, removing it. `Ok(None)`: more bytes are needed.
///
/// A frame announcing more than `max_payload` bytes is refused from its header alone, so an
/// oversized frame is never buffered.
pub fn decode_frame(
    buf: &mut BytesMut,
    max_payload: usize,
    role: Role,
) -> Result<Option<Frame>, WsError> {
    let Some(header) = parse_header(buf, max_payload, role)? else {
        return Ok(None);
    };
    let total = header.header_len + header.payload_len;
    if buf.len() < total {
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    let mut payload = frame.split_off(header.header_len);
    if let Some(mask) = header.mask {
        apply_mask(&mut payload, mask);
    }
    Ok(Some(Frame {
        fin: header.fin,
        opcode: header.opcode,
        payload: payload.freeze(),
    }))
}

/// Bytes still missing before the frame at the front of `buf` is complete (0 when complete or
/// when the header itself is incomplete). Lets the reader grow its buffer exactly once.
pub fn missing_bytes(buf: &[u8], max_payload: usize, role: Role) -> usize {
    match parse_header(buf, max_payload, role) {
        Ok(Some(h)) => (h.header_len + h.payload_len).saturating_sub(buf.len()),
        _ => 0,
    }
}

struct Header {
    fin: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    header_len: usize,
    payload_len: usize,
}

fn parse_header(buf: &[u8], max_payload: usize, role: Role) -> Result<Option<Header>, WsError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol(
            "reserved bits set without a negotiated extension",
        ));
    }
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(WsError::Protocol("unknown opcode"))?;
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(WsError::Protocol("client frames must be masked")),
        (Role::Client, true) => return Err(WsError::Protocol("server frames must not be masked")),
        _ => {}
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                let n = u64::from_be_bytes(n);
                if n >> 63 != 0 {
                    return Err(WsError::Protocol("64-bit length with the high bit set"));
                }
                (n, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode.is_control() {
        if !fin {
            return Err(WsError::Protocol("fragmented control frame"));
        }
        if len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(WsError::Protocol("control frame payload over 125 bytes"));
        }
    }
    if len > max_payload as u64 {
        return Err(WsError::TooLarge {
            len,
            max: max_payload,
        });
    }
    let mask = if masked {
        let Some(m) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        header_len: at,
        // len <= max_payload, which is a usize.
        payload_len: len as usize,
    }))
}

/// XOR `data` with the 4-byte masking key (masking and unmasking are the same operation).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Encode one frame; `mask` is `Some` for client frames, `None` for server frames.
pub fn encode_frame(fin: bool, opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 14);
    out.put_u8(if fin { 0x80 } else { 0 } | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.put_u8(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(mask_bit | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(mask_bit | 127);
            out.put_u64(n as u64);
        }
    }
    let start = match mask {
        Some(m) => {
            out.put_slice(&m);
            out.len()
        }
        None => out.len(),
    };
    out.put_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m);
    }
    out.freeze()
}

/// A server frame carrying one whole message.
pub fn encode_message(opcode: Opcode, payload: &[u8]) -> Bytes {
    encode_frame(true, opcode, payload, None)
}

/// A server close frame. The reason is cut to fit a control frame.
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    encode_close_frame(code, reason, None)
}

/// A close frame, masked when `mask` is `Some` (client role). The reason is cut to fit a
/// control frame, on a character boundary.
pub fn encode_close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len().min(123));
    payload.extend_from_slice(&code.to_be_bytes());
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode_frame(true, Opcode::Close, &payload, mask)
}

/// Close codes a peer may send (RFC 6455 section 7.4).
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(WsError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some((code, reason.to_string())))
        }
    }
}

/// Reassembles fragmented data messages; control frames pass straight through.
///
/// Holds no allocation between messages.
#[derive(Debug)]
pub struct MessageAssembler {
    kind: Option<Opcode>,
    parts: Vec<u8>,
    max_message: usize,
}

impl MessageAssembler {
    /// An assembler refusing messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> MessageAssembler {
        MessageAssembler {
            kind: None,
            parts: Vec::new(),
            max_message,
        }
    }

    /// Feed one frame; returns a message when one is complete.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Message>, WsError> {
        match frame.opcode {
            Opcode::Ping => Ok(Some(Message::Ping(frame.payload))),
            Opcode::Pong => Ok(Some(Message::Pong(frame.payload))),
            Opcode::Close => parse_close(&frame.payload).map(|c| Some(Message::Close(c))),
            Opcode::Text | Opcode::Binary => {
                if self.kind.is_some() {
                    return Err(WsError::Protocol(
                        "new message before the previous one ended",
                    ));
                }
                if frame.fin {
                    return finish(frame.opcode, frame.payload).map(Some);
                }
                self.check_len(frame.payload.len())?;
                self.kind = Some(frame.opcode);
                self.parts.extend_from_slice(&frame.payload);
                Ok(None)
            }
            Opcode::Continuation => {
                let Some(kind) = self.kind else {
                    return Err(WsError::Protocol("continuation frame outside a message"));
                };
                self.check_len(self.parts.len() + frame.payload.len())?;
                self.parts.extend_from_slice(&frame.payload);
                if !frame.fin {
                    return Ok(None);
                }
                self.kind = None;
                let whole = Bytes::from(std::mem::take(&mut self.parts));
                finish(kind, whole).map(Some)
            }
        }
    }

    fn check_len(&self, len: usize) -> Result<(), WsError> {
        if len > self.max_message {
            return Err(WsError::TooLarge {
                len: len as u64,
                max: self.max_message,
            });
        }
        Ok(())
    }
}

fn finish(kind: Opcode, payload: Bytes) -> Result<Message, WsError> {
    if kind == Opcode::Text {
        std::str::from_utf8(&payload).map_err(|_| WsError::InvalidUtf8)?;
        Ok(Message::Text(payload))
    } else {
        Ok(Message::Binary(payload))
    }
}

/// Why an HTTP request is not an acceptable WebSocket upgrade; each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not a GET.
    #[error("a WebSocket upgrade must be a GET request")]
    NotGet,
    /// No `Upgrade: websocket` / `Connection: upgrade`.
    #[error("missing `Upgrade: websocket` and `Connection: Upgrade` headers")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` is not 13.
    #[error("unsupported WebSocket version; this gateway speaks version 13")]
    BadVersion,
    /// `Sec-WebSocket-Key` absent or not 16 bytes of base64.
    #[error("missing or malformed Sec-WebSocket-Key")]
    BadKey,
    /// The client offered subprotocols, none of them ours.
    #[error("no supported subprotocol offered; use firetower.json or firetower.proto")]
    NoSubprotocol,
}

impl HandshakeError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::NotGet => 405,
            HandshakeError::NotUpgrade | HandshakeError::BadVersion => 426,
            HandshakeError::BadKey | HandshakeError::NoSubprotocol => 400,
        }
    }
}

/// An accepted upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// The negotiated flavour.
    pub flavour: Flavour,
    /// Whether the client named a subprotocol (then the response names the chosen one).
    pub echo_protocol: bool,
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Check an upgrade request and pick the subprotocol: the first one the client lists that we
/// speak; `firetower.json` when it lists none.
pub fn negotiate(head: &RequestHead) -> Result<Upgrade, HandshakeError> {
    if head.method != "GET" {
        return Err(HandshakeError::NotGet);
    }
    if !has_token(head.header("upgrade"), "websocket")
        || !has_token(head.header("connection"), "upgrade")
    {
        return Err(HandshakeError::NotUpgrade);
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(HandshakeError::BadVersion);
    }
    let key = head
        .header("sec-websocket-key")
        .ok_or(HandshakeError::BadKey)?;
    match base64::engine::general_purpose::STANDARD.decode(key.trim()) {
        Ok(k) if k.len() == 16 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    let (flavour, echo_protocol) = match head.header("sec-websocket-protocol") {
        None => (Flavour::Json, false),
        Some(list) => (
            list.split(',')
                .find_map(|p| Flavour::from_subprotocol(p.trim()))
                .ok_or(HandshakeError::NoSubprotocol)?,
            true,
        ),
    };
    Ok(Upgrade {
        accept: accept_key(key),
        flavour,
        echo_protocol,
    })
}

/// The `101 Switching Protocols` response for an accepted upgrade.
pub fn upgrade_response(upgrade: &Upgrade) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        upgrade.accept
    );
    if upgrade.echo_protocol {
        r.push_str("Sec-WebSocket-Protocol: ");
        r.push_str(upgrade.flavour.subprotocol());
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Why a server's answer to an upgrade request is not an accepted WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeRefused {
    /// The server answered with another status than 101.
    #[error("the server answered HTTP {0} instead of 101 Switching Protocols")]
    Status(u16),
    /// No `Upgrade: websocket` / `Connection: upgrade` in the 101 response.
    #[error("the 101 response lacks `Upgrade: websocket` and `Connection: Upgrade`")]
    NotUpgrade,
    /// `Sec-WebSocket-Accept` does not match the key sent.
    #[error("Sec-WebSocket-Accept does not match the key sent; not a WebSocket server")]
    BadAccept,
    /// The server chose another subprotocol than the one asked for (or none).
    #[error("the server chose subprotocol {got:?}, not {wanted:?}")]
    Subprotocol {
        /// What the client asked for.
        wanted: &'static str,
        /// What the server answered, if anything.
        got: Option<String>,
    },
}

/// The upgrade request a client sends: `GET path` on `host`, asking for `flavour`'s
/// subprotocol. `key` is the base64 of 16 random bytes ([`client_key`]); the caller draws
/// them so that this stays pure.
pub fn upgrade_request(host: &str, path: &str, key: &str, flavour: Flavour) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {}\r\n\r\n",
        flavour.subprotocol()
    )
    .into_bytes()
}

/// A `Sec-WebSocket-Key` from 16 bytes the caller drew at random.
pub fn client_key(nonce: [u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(nonce)
}

/// Check the server's answer to [`upgrade_request`]: a 101 with the matching accept key and
/// the subprotocol asked for.
pub fn check_upgrade_response(
    head: &ResponseHead,
    key: &str,
    flavour: Flavour,
) -> Result<(), UpgradeRefused> {
    if head.status != 101 {
        return Err(UpgradeRefused::Status(head.status));
    }
    if !has_token(head.header("upgrade"), "websocket")
        || !has_token(head.header("connection"), "upgrade")
    {
        return Err(UpgradeRefused::NotUpgrade);
    }
    if head.header("sec-websocket-accept").map(str::trim) != Some(accept_key(key).as_str()) {
        return Err(UpgradeRefused::BadAccept);
    }
    let got = head.header("sec-websocket-protocol").map(str::trim);
    if got != Some(flavour.subprotocol()) {
        return Err(UpgradeRefused::Subprotocol {
            wanted: flavour.subprotocol(),
            got: got.map(str::to_string),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 64 * 1024;

    fn decode_all(bytes: &[u8], role: Role) -> Result<Vec<Frame>, WsError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = decode_frame(&mut buf, MAX, role)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn rfc_accept_key_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn rfc_masked_hello_example() {
        // RFC 6455 section 5.7: a masked "Hello" from a client.
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let frames = decode_all(&bytes, Role::Server).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(&frames[0].payload[..], b"Hello");
        assert!(frames[0].fin);
        assert_eq!(frames[0].opcode, Opcode::Text);
        // The same frame unmasked is what a server sends.
        assert_eq!(
            &encode_message(Opcode::Text, b"Hello")[..],
            &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
    }

    #[test]
    fn masking_rules_follow_the_role() {
        let unmasked = encode_message(Opcode::Text, b"hi");
        assert!(matches!(
            decode_all(&unmasked, Role::Server),
            Err(WsError::Protocol(_))
        ));
        let masked = encode_frame(true, Opcode::Text, b"hi", Some([1, 2, 3, 4]));
        assert!(matches!(
            decode_all(&masked, Role::Client),
            Err(WsError::Protocol(_))
        ));
        assert_eq!(
            &decode_all(&masked, Role::Server).unwrap()[0].payload[..],
            b"hi"
        );
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header() {
        // A 1 MiB frame header alone (no payload) is enough to refuse it with 1009.
        let frame = encode_frame(true, Opcode::Text, &vec![b'a'; 1 << 20], Some([9, 9, 9, 9]));
        let mut head = BytesMut::from(&frame[..14]);
        let err = decode_frame(&mut head, MAX, Role::Server).unwrap_err();
        assert_eq!(err.close_code(), close_code::TOO_BIG);
    }

    #[test]
    fn control_frame_rules() {
        let long_ping = encode_frame(true, Opcode::Ping, &[0; 126], Some([0; 4]));
        assert!(matches!(
            decode_all(&long_ping, Role::Server),
            Err(WsError::Protocol(_))
        ));
        let fragmented_ping = encode_frame(false, Opcode::Ping, b"x", Some([0; 4]));
        assert!(matches!(
            decode_all(&fragmented_ping, Role::Server),
            Err(WsError::Protocol(_))
        ));
        let mut rsv = encode_frame(true, Opcode::Text, b"x", Some([0; 4])).to_vec();
        rsv[0] |= 0x40;
        assert!(matches!(
            decode_all(&rsv, Role::Server),
            Err(WsError::Protocol(_))
        ));
        let bad_opcode = [0x83u8, 0x80, 0, 0, 0, 0];
        assert!(matches!(
            decode_all(&bad_opcode, Role::Server),
            Err(WsError::Protocol(_))
        ));
    }

    #[test]
    fn close_payloads() {
        let mut a = MessageAssembler::new(MAX);
        let frame = |p: &[u8]| Frame {
            fin: true,
            opcode: Opcode::Close,
            payload: Bytes::copy_from_slice(p),
        };
        assert_eq!(a.push(frame(b"")).unwrap(), Some(Message::Close(None)));
        assert_eq!(
            a.push(frame(b"\x03\xe8bye")).unwrap(),
            Some(Message::Close(Some((1000, "bye".into()))))
        );
        assert!(matches!(a.push(frame(b"\x03")), Err(WsError::Protocol(_))));
        assert!(matches!(
            a.push(frame(b"\x03\xed")),
            Err(WsError::Protocol(_))
        )); // 1005
        assert_eq!(a.push(frame(b"\x03\xe8\xff")), Err(WsError::InvalidUtf8));
    }

    #[test]
    fn fragmentation_with_interleaved_ping() {
        let mut a = MessageAssembler::new(10);
        let f = |fin, opcode, p: &'static [u8]| Frame {
            fin,
            opcode,
            payload: Bytes::from_static(p),
        };
        assert_eq!(a.push(f(false, Opcode::Text, b"hel")).unwrap(), None);
        assert_eq!(
            a.push(f(true, Opcode::Ping, b"p")).unwrap(),
            Some(Message::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(
            a.push(f(false, Opcode::Continuation, b"lo ")).unwrap(),
            None
        );
        assert_eq!(
            a.push(f(true, Opcode::Continuation, b"you")).unwrap(),
            Some(Message::Text(Bytes::from_static(b"hello you")))
        );
        assert!(matches!(
            a.push(f(true, Opcode::Continuation, b"x")),
            Err(WsError::Protocol(_))
        ));
        assert_eq!(a.push(f(false, Opcode::Binary, b"123456")).unwrap(), None);
        assert!(matches!(
            a.push(f(false, Opcode::Text, b"x")),
            Err(WsError::Protocol(_))
        ));
        assert!(matches!(
            a.push(f(true, Opcode::Continuation, b"78901")),
            Err(WsError::TooLarge { .. })
        ));
        let mut a = MessageAssembler::new(10);
        assert_eq!(
            a.push(f(true, Opcode::Text, b"\xff")),
            Err(WsError::InvalidUtf8)
        );
    }

    fn head(lines: &[(&str, &str)]) -> RequestHead {
        let mut raw = String::from("GET /ws HTTP/1.1\r\nHost: x\r\n");
        for (k, v) in lines {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        crate::http::parse_request_head(raw.as_bytes())
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn negotiation() {
        let base = [
            ("Upgrade", "websocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let up = negotiate(&head(&base)).unwrap();
        assert_eq!(up.flavour, Flavour::Json);
        assert!(!up.echo_protocol);
        let mut with = base.to_vec();
        with.push((
            "Sec-WebSocket-Protocol",
            "chat, firetower.proto, firetower.json",
        ));
        let up = negotiate(&head(&with)).unwrap();
        assert_eq!(up.flavour, Flavour::Proto);
        let text = String::from_utf8(upgrade_response(&up)).unwrap();
        assert!(text.contains("Sec-WebSocket-Protocol: firetower.proto\r\n"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        with.pop();
        with.push(("Sec-WebSocket-Protocol", "chat"));
        assert_eq!(negotiate(&head(&with)), Err(HandshakeError::NoSubprotocol));
        assert_eq!(
            negotiate(&head(&base[1..])),
            Err(HandshakeError::NotUpgrade)
        );
        assert_eq!(negotiate(&head(&base[..3])), Err(HandshakeError::BadKey));
        let mut v = base.to_vec();
        v[2].1 = "8";
        assert_eq!(negotiate(&head(&v)), Err(HandshakeError::BadVersion));
    }

    #[test]
    fn client_handshake_against_negotiate() {
        let key = client_key([7; 16]);
        let request = upgrade_request("example:80", "/ws", &key, Flavour::Proto);
        let (head, len) = crate::http::parse_request_head(&request).unwrap().unwrap();
        assert_eq!(len, request.len());
        let up = negotiate(&head).unwrap();
        assert_eq!(up.flavour, Flavour::Proto);
        let response = upgrade_response(&up);
        let (resp, _) = crate::http::parse_response_head(&response)
            .unwrap()
            .unwrap();
        assert_eq!(check_upgrade_response(&resp, &key, Flavour::Proto), Ok(()));
        assert_eq!(
            check_upgrade_response(&resp, &client_key([8; 16]), Flavour::Proto),
            Err(UpgradeRefused::BadAccept)
        );
        assert!(matches!(
            check_upgrade_response(&resp, &key, Flavour::Json),
            Err(UpgradeRefused::Subprotocol { .. })
        ));
        let (not_found, _) = crate::http::parse_response_head(b"HTTP/1.1 404 Not Found\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            check_upgrade_response(&not_found, &key, Flavour::Json),
            Err(UpgradeRefused::Status(404))
        );
    }

    #[test]
    fn client_close_frames_are_masked_and_cut() {
        let reason = "é".repeat(100);
        let frame = encode_close_frame(1000, &reason, Some([1, 2, 3, 4]));
        let mut buf = BytesMut::from(&frame[..]);
        let f = decode_frame(&mut buf, MAX, Role::Server).unwrap().unwrap();
        assert_eq!(f.opcode, Opcode::Close);
        assert!(f.payload.len() <= MAX_CONTROL_PAYLOAD);
        let msg = MessageAssembler::new(MAX).push(f).unwrap();
        assert!(
            matches!(msg, Some(Message::Close(Some((1000, r)))) if r.chars().all(|c| c == 'é'))
        );
    }

    fn arb_opcode() -> impl Strategy<Value = Opcode> {
        prop_oneof![
            Just(Opcode::Continuation),
            Just(Opcode::Text),
            Just(Opcode::Binary),
            Just(Opcode::Close),
            Just(Opcode::Ping),
            Just(Opcode::Pong)
        ]
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), max in 0usize..200) {
            for role in [Role::Server, Role::Client] {
                let mut buf = BytesMut::from(&bytes[..]);
                let mut a = MessageAssembler::new(max);
                while let Ok(Some(f)) = decode_frame(&mut buf, max, role) {
                    let _ = a.push(f);
                }
                let _ = missing_bytes(&bytes, max, role);
            }
        }

        #[test]
        fn frames_round_trip(
            fin in any::<bool>(),
            opcode in arb_opcode(),
            payload in prop::collection::vec(any::<u8>(), 0..70_000),
            mask in any::<Option<[u8; 4]>>(),
            split in any::<prop::sample::Index>(),
        ) {
            let payload = if opcode.is_control() { &payload[..payload.len().min(125)] } else { &payload[..] };
            let fin = fin || opcode.is_control();
            let bytes = encode_frame(fin, opcode, payload, mask);
            let role = if mask.is_some() { Role::Server } else { Role::Client };
            // Delivered in two pieces: the first never yields a frame, the whole does.
            let cut = split.index(bytes.len());
            let mut buf = BytesMut::from(&bytes[..cut]);
            prop_assert_eq!(decode_frame(&mut buf, 1 << 20, role).unwrap(), None);
            buf.extend_from_slice(&bytes[cut..]);
            let frame = decode_frame(&mut buf, 1 << 20, role).unwrap().unwrap();
            prop_assert!(buf.is_empty());
            prop_assert_eq!(frame, Frame { fin, opcode, payload: Bytes::copy_from_slice(payload) });
        }

        #[test]
        fn fragmented_messages_reassemble(
            text in ".{0,200}",
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
        ) {
            let bytes = text.as_bytes();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            points.push(0);
            points.push(bytes.len());
            points.sort_unstable();
            points.dedup();
            let mut wire = BytesMut::new();
            let pieces: Vec<_> = points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
            let pieces = if pieces.is_empty() { vec![&bytes[..0]] } else { pieces };
            for (i, p) in pieces.iter().enumerate() {
                let opcode = if i == 0 { Opcode::Text } else { Opcode::Continuation };
                wire.extend_from_slice(&encode_frame(i + 1 == pieces.len(), opcode, p, Some([7, 1, 2, 3])));
            }
            let mut a = MessageAssembler::new(1000);
            let mut got = None;
            while let Some(f) = decode_frame(&mut wire, 1000, Role::Server).unwrap() {
                if let Some(m) = a.push(f).unwrap() {
                    got = Some(m);
                }
            }
            prop_assert_eq!(got, Some(Message::Text(Bytes::copy_from_slice(bytes))));
        }
    }
}
