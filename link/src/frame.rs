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

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of the big-endian length prefix.
pub const HEADER_LEN: usize = 4;

/// The largest body either side of the gateway <-> manager link sends or accepts.
pub const MAX_LINK_FRAME_BYTES: usize = 1 << 20;

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
    let len = u32::from_be_bytes(header) as usize;
    if len > max_body {
        return Err(ReadFrameError::TooLarge { len, max: max_body });
    }
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    let n = (&mut *stream)
        .take(len as u64)
        .read_to_end(&mut body)
        .await?;
    if n < len {
        return Err(ReadFrameError::Truncated {
            expected: len,
            got: n,
        });
    }
    Ok(Some(body))
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
    use firetower_proto::link::{gateway_request, GatewayRequest, Subscribe};
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

    proptest! {
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
}
