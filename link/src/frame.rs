//! Length-prefixed frames, the framing of every cluster QUIC stream:
//!
//! ```text
//!   ┌───────────────────┬──────────────────────────────┐
//!   │ len: u32 BE (4 B) │ body (len bytes)             │
//!   └───────────────────┴──────────────────────────────┘
//! ```
//!
//! The body of a gateway <-> manager frame is a protobuf message ([`encode_frame`],
//! [`decode_frame`], [`decode_body`]); Raft RPCs between managers put a postcard message in the
//! same framing (`firetower-raft`'s wire). Both read frames off a stream with the one reader,
//! [`read_link_frame`], which returns `Ok(None)` on a clean end of stream (mini-redis's
//! `read_frame` contract) and never sizes a buffer from an untrusted prefix.
//!
//! Size limits are per message type and are checked before the body is read:
//!
//! ```text
//!   stream                         frame                          largest body accepted
//!   request stream (gateway→mgr)   GatewayRequest with Publish    MAX_LINK_FRAME_BYTES (1 MiB)
//!                                  any other GatewayRequest       MAX_SMALL_REQUEST_BYTES (4 KiB)
//!   session stream (gateway→mgr)   GatewayFrame (heartbeat, ack)  MAX_GATEWAY_FRAME_BYTES (4 KiB)
//!                                  GatewayFrame (connections)     MAX_CONNECTIONS_FRAME_BYTES (256 KiB)
//!   either direction, elsewhere    any                            MAX_LINK_FRAME_BYTES
//! ```
//!
//! The kind of a `GatewayRequest` is read from the first bytes of its body
//! ([`request_body_limit`]): prost writes `gateway = 1` and then the `op` field, so a frame of
//! an honest sender names its operation within [`KIND_PEEK_BYTES`]. A frame that does not (other
//! field order, unknown fields first) gets the small limit: only a publish may be large, and a
//! publish that wants the large limit must say so up front.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of the big-endian length prefix.
pub const HEADER_LEN: usize = 4;

/// The largest body either side of the gateway <-> manager link sends or accepts.
pub const MAX_LINK_FRAME_BYTES: usize = 1 << 20;

/// The largest body of a `GatewayRequest` other than a publish: a topic of at most
/// `MAX_TOPIC_BYTES` (256) and a few varints fit many times over.
pub const MAX_SMALL_REQUEST_BYTES: usize = 4 * 1024;

/// The largest `GatewayFrame` a gateway sends on its session stream: a heartbeat is empty, an
/// ack is `upto` plus the few deliveries it dropped as superseded.
pub const MAX_GATEWAY_FRAME_BYTES: usize = 4 * 1024;

/// The largest `Connections` answer (`cluster connections --user`) a gateway sends on its
/// session stream; every other `GatewayFrame` has [`MAX_GATEWAY_FRAME_BYTES`].
pub const MAX_CONNECTIONS_FRAME_BYTES: usize = 256 * 1024;

/// The largest body accepted for a `GatewayFrame` whose body starts with `prefix`:
/// [`MAX_CONNECTIONS_FRAME_BYTES`] for a `Connections` answer (field 3, length-delimited:
/// tag byte 0x1A), [`MAX_GATEWAY_FRAME_BYTES`] for anything else.
pub fn gateway_frame_limit(prefix: &[u8]) -> usize {
    match prefix.first() {
        Some(0x1A) => MAX_CONNECTIONS_FRAME_BYTES,
        _ => MAX_GATEWAY_FRAME_BYTES,
    }
}

/// How many leading body bytes [`read_link_frame_limited`] reads to decide the limit: one key,
/// a ten-byte varint and the next key fit.
pub const KIND_PEEK_BYTES: usize = 16;

/// Why bytes held in memory are not a frame of the expected message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("frame of {0} bytes has no length prefix")]
    NoPrefix(usize),
    /// The prefix exceeds [`MAX_LINK_FRAME_BYTES`].
    #[error("frame of {0} bytes exceeds the {MAX_LINK_FRAME_BYTES} byte limit")]
    TooLarge(usize),
    /// The prefix does not match what follows.
    #[error("length prefix says {said} bytes but {got} follow")]
    LengthMismatch {
        /// What the prefix said.
        said: usize,
        /// What followed.
        got: usize,
    },
    /// The body is not a valid message.
    #[error("undecodable frame: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Why a frame could not be read off a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The length prefix announces more than the caller's limit.
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced body length.
        len: usize,
        /// The caller's limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the frame announced (the header's size while reading the header).
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// Reading the stream failed (reset by the peer, connection lost, ...).
    #[error("stream read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Encode `message` with its length prefix.
pub fn encode_frame<M: Message>(message: &M) -> Vec<u8> {
    let len = message.encoded_len();
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    // Link messages are bounded far below 4 GiB (the peer refuses more than
    // MAX_LINK_FRAME_BYTES), so the length fits the u32 prefix.
    out.extend_from_slice(&(len as u32).to_be_bytes());
    // Encoding into a Vec cannot run out of space: a Vec grows.
    let _ = message.encode(&mut out);
    out
}

/// Decode one frame that fills `bytes` exactly.
pub fn decode_frame<M: Message + Default>(bytes: &[u8]) -> Result<M, FrameError> {
    let Some((head, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::NoPrefix(bytes.len()));
    };
    let len = u32::from_be_bytes(*head) as usize;
    if len > MAX_LINK_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    if len != body.len() {
        return Err(FrameError::LengthMismatch {
            said: len,
            got: body.len(),
        });
    }
    decode_body(body)
}

/// Decode a frame body returned by [`read_link_frame`].
pub fn decode_body<M: Message + Default>(body: &[u8]) -> Result<M, FrameError> {
    Ok(M::decode(body)?)
}

/// Read one frame body of at most `max_body` bytes from `stream`.
///
/// Returns `Ok(None)` when the stream ends cleanly before the first byte of a frame. The body
/// buffer grows as bytes arrive rather than being sized from the (untrusted) length prefix.
pub async fn read_link_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    max_body: usize,
) -> Result<Option<Vec<u8>>, ReadFrameError> {
    read_link_frame_limited(stream, max_body, |_| max_body).await
}

/// Read one frame body like [`read_link_frame`], with a limit that depends on what the body
/// says it is: `limit` sees the first [`KIND_PEEK_BYTES`] bytes of the body (fewer when the body
/// is shorter) and returns the largest body it accepts, which is checked before the rest is
/// read. `max_body` bounds every frame, before anything of the body is read.
pub async fn read_link_frame_limited<R: AsyncRead + Unpin>(
    stream: &mut R,
    max_body: usize,
    limit: impl FnOnce(&[u8]) -> usize,
) -> Result<Option<Vec<u8>>, ReadFrameError> {
    let Some(len) = read_header(stream).await? else {
        return Ok(None);
    };
    if len > max_body {
        return Err(ReadFrameError::TooLarge { len, max: max_body });
    }
    let peek = len.min(KIND_PEEK_BYTES);
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    read_exactly(stream, &mut body, peek, len).await?;
    let max = limit(&body).min(max_body);
    if len > max {
        return Err(ReadFrameError::TooLarge { len, max });
    }
    read_exactly(stream, &mut body, len - peek, len).await?;
    Ok(Some(body))
}

/// The largest body accepted for a `GatewayRequest` whose body starts with `prefix` (see the
/// module doc): [`MAX_LINK_FRAME_BYTES`] for a publish, [`MAX_SMALL_REQUEST_BYTES`] for
/// anything else, including a prefix that names no operation.
pub fn request_body_limit(prefix: &[u8]) -> usize {
    match request_op_field(prefix) {
        Some(PUBLISH_FIELD) => MAX_LINK_FRAME_BYTES,
        _ => MAX_SMALL_REQUEST_BYTES,
    }
}

/// `GatewayRequest.op`'s `publish` field number (link.proto).
const PUBLISH_FIELD: u64 = 6;

/// The field number of the `op` of a `GatewayRequest` whose body starts with `prefix`, if the
/// prefix shows it: an optional `gateway = 1` varint, then a length-delimited field 2..=7.
fn request_op_field(mut prefix: &[u8]) -> Option<u64> {
    const VARINT: u64 = 0;
    const LENGTH_DELIMITED: u64 = 2;
    loop {
        let key = prost::encoding::decode_varint(&mut prefix).ok()?;
        let (field, wire_type) = (key >> 3, key & 7);
        match (field, wire_type) {
            (1, VARINT) => {
                prost::encoding::decode_varint(&mut prefix).ok()?;
            }
            (2..=7, LENGTH_DELIMITED) => return Some(field),
            _ => return None,
        }
    }
}

/// The length announced by the next frame header; `None` on a clean end of stream.
async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Option<usize>, ReadFrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = stream.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(ReadFrameError::Truncated {
                expected: HEADER_LEN,
                got,
            });
        }
        got += n;
    }
    Ok(Some(u32::from_be_bytes(header) as usize))
}

/// Append exactly `n` more bytes of a frame of `len` to `body`.
async fn read_exactly<R: AsyncRead + Unpin>(
    stream: &mut R,
    body: &mut Vec<u8>,
    n: usize,
    len: usize,
) -> Result<(), ReadFrameError> {
    let before = body.len();
    let got = (&mut *stream).take(n as u64).read_to_end(body).await?;
    if got < n {
        return Err(ReadFrameError::Truncated {
            expected: len,
            got: before + got,
        });
    }
    Ok(())
}

/// Write `message` as one frame to `stream`.
pub async fn write_link_frame<W: AsyncWrite + Unpin, M: Message>(
    stream: &mut W,
    message: &M,
) -> std::io::Result<()> {
    stream.write_all(&encode_frame(message)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use firetower_proto::link::{gateway_request, GatewayRequest, Publish, Subscribe};
    use proptest::prelude::*;

    fn request() -> GatewayRequest {
        GatewayRequest {
            gateway: 7,
            op: Some(gateway_request::Op::Subscribe(Subscribe {
                topic: "room.1".into(),
                epoch: 1_795_692_954_333_266,
            })),
        }
    }

    #[test]
    fn round_trip() {
        let request = request();
        let bytes = encode_frame(&request);
        assert_eq!(decode_frame::<GatewayRequest>(&bytes).unwrap(), request);
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        assert_eq!(
            decode_frame::<GatewayRequest>(&[]),
            Err(FrameError::NoPrefix(0))
        );
        assert!(decode_frame::<GatewayRequest>(&[0, 0, 0, 5, 1]).is_err());
        assert!(decode_frame::<GatewayRequest>(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_frame::<GatewayRequest>(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).is_err());
    }

    #[tokio::test]
    async fn reader_reads_back_to_back_frames_then_a_clean_end() {
        let mut bytes = Vec::new();
        write_link_frame(&mut bytes, &request()).await.unwrap();
        write_link_frame(&mut bytes, &GatewayRequest::default())
            .await
            .unwrap();
        let mut stream = &bytes[..];
        let first = read_link_frame(&mut stream, MAX_LINK_FRAME_BYTES)
            .await
            .unwrap()
            .unwrap();
        let second = read_link_frame(&mut stream, MAX_LINK_FRAME_BYTES)
            .await
            .unwrap()
            .unwrap();
        assert!(read_link_frame(&mut stream, MAX_LINK_FRAME_BYTES)
            .await
            .unwrap()
            .is_none());
        assert_eq!(decode_body::<GatewayRequest>(&first).unwrap(), request());
        assert_eq!(
            decode_body::<GatewayRequest>(&second).unwrap(),
            GatewayRequest::default()
        );
    }

    #[tokio::test]
    async fn reader_reports_truncation_and_oversize() {
        let frame = encode_frame(&request());
        let mut cut = &frame[..frame.len() - 1];
        assert!(matches!(
            read_link_frame(&mut cut, MAX_LINK_FRAME_BYTES).await,
            Err(ReadFrameError::Truncated { .. })
        ));
        let mut half_header = &frame[..2];
        assert!(matches!(
            read_link_frame(&mut half_header, MAX_LINK_FRAME_BYTES).await,
            Err(ReadFrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        let mut huge = &frame[..];
        assert!(matches!(
            read_link_frame(&mut huge, 3).await,
            Err(ReadFrameError::TooLarge { max: 3, .. })
        ));
    }

    fn publish(data: usize) -> GatewayRequest {
        GatewayRequest {
            gateway: u64::MAX,
            op: Some(gateway_request::Op::Publish(Publish {
                topic: "room.1".into(),
                data: vec![7; data],
                json: false,
            })),
        }
    }

    async fn read_request(bytes: &[u8]) -> Result<Option<Vec<u8>>, ReadFrameError> {
        let mut stream = bytes;
        read_link_frame_limited(&mut stream, MAX_LINK_FRAME_BYTES, request_body_limit).await
    }

    #[test]
    fn the_limit_follows_the_operation_named_up_front() {
        let body = |r: &GatewayRequest| encode_frame(r)[HEADER_LEN..].to_vec();
        assert_eq!(
            request_body_limit(&body(&publish(10))),
            MAX_LINK_FRAME_BYTES
        );
        assert_eq!(
            request_body_limit(&body(&request())),
            MAX_SMALL_REQUEST_BYTES
        );
        // A gateway id of 0 is not encoded at all: the op comes first.
        let mut anonymous = publish(10);
        anonymous.gateway = 0;
        assert_eq!(request_body_limit(&body(&anonymous)), MAX_LINK_FRAME_BYTES);
        // Nothing recognisable: the small limit.
        assert_eq!(request_body_limit(&[]), MAX_SMALL_REQUEST_BYTES);
        assert_eq!(request_body_limit(&[0xff; 16]), MAX_SMALL_REQUEST_BYTES);
        // The op after an unknown field does not count.
        let mut reordered = vec![0x48, 0x01]; // field 9, varint 1
        reordered.extend(body(&publish(10)));
        assert_eq!(request_body_limit(&reordered), MAX_SMALL_REQUEST_BYTES);
    }

    #[tokio::test]
    async fn a_large_publish_passes_and_a_large_anything_else_is_refused_before_its_body() {
        let big = publish(MAX_LINK_FRAME_BYTES - 64);
        let body = read_request(&encode_frame(&big)).await.unwrap().unwrap();
        assert_eq!(decode_body::<GatewayRequest>(&body).unwrap(), big);

        // A subscribe of 100 KiB (an absurd topic): refused from its first 16 bytes; the
        // rest need not even be there.
        let fat = GatewayRequest {
            gateway: 7,
            op: Some(gateway_request::Op::Subscribe(Subscribe {
                topic: "x".repeat(100 * 1024),
                epoch: 1,
            })),
        };
        let frame = encode_frame(&fat);
        let announced = frame.len() - HEADER_LEN;
        assert!(matches!(
            read_request(&frame[..HEADER_LEN + KIND_PEEK_BYTES]).await,
            Err(ReadFrameError::TooLarge { len, max: MAX_SMALL_REQUEST_BYTES }) if len == announced
        ));
        // Over the frame limit: refused from the header alone.
        let mut huge = (u32::MAX).to_be_bytes().to_vec();
        huge.extend_from_slice(&[0x32, 0x00]);
        assert!(matches!(
            read_request(&huge).await,
            Err(ReadFrameError::TooLarge {
                max: MAX_LINK_FRAME_BYTES,
                ..
            })
        ));
        // A small frame shorter than the peek is read whole.
        let tiny = GatewayRequest::default();
        let body = read_request(&encode_frame(&tiny)).await.unwrap().unwrap();
        assert!(body.is_empty());
    }

    proptest! {
        #[test]
        fn limited_reads_never_panic_and_respect_the_limit(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            if let Ok(Some(body)) = rt.block_on(read_request(&bytes)) {
                prop_assert!(body.len() <= request_body_limit(&body));
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_frame::<GatewayRequest>(&bytes);
        }

        #[test]
        fn frames_round_trip(gateway: u64, topic in ".{0,40}", epoch: u64) {
            let request = GatewayRequest {
                gateway,
                op: Some(gateway_request::Op::Subscribe(Subscribe { topic, epoch })),
            };
            let bytes = encode_frame(&request);
            prop_assert_eq!(decode_frame::<GatewayRequest>(&bytes).unwrap(), request.clone());
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let body = rt
                .block_on(read_link_frame(&mut &bytes[..], MAX_LINK_FRAME_BYTES))
                .unwrap()
                .unwrap();
            prop_assert_eq!(decode_body::<GatewayRequest>(&body).unwrap(), request);
        }
    }

    #[test]
    fn only_a_connections_answer_may_be_large_on_a_session_stream() {
        use firetower_proto::link::{gateway_frame, Connections, GatewayFrame, Heartbeat};
        let answer = encode_frame(&GatewayFrame {
            frame: Some(gateway_frame::Frame::Connections(Connections::default())),
        });
        let heartbeat = encode_frame(&GatewayFrame {
            frame: Some(gateway_frame::Frame::Heartbeat(Heartbeat::default())),
        });
        assert_eq!(
            gateway_frame_limit(&answer[HEADER_LEN..]),
            MAX_CONNECTIONS_FRAME_BYTES
        );
        assert_eq!(
            gateway_frame_limit(&heartbeat[HEADER_LEN..]),
            MAX_GATEWAY_FRAME_BYTES
        );
        assert_eq!(gateway_frame_limit(&[]), MAX_GATEWAY_FRAME_BYTES);
        assert_eq!(gateway_frame_limit(&[0x12, 0x00]), MAX_GATEWAY_FRAME_BYTES);
    }
}
