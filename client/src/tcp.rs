//! Raw TCP framing for devices that do not want HTTP or WebSocket: every frame is a 4-byte
//! big-endian length followed by that many bytes of protobuf (`ClientFrame` up,
//! `ServerFrame` down, package `firetower.client.v1`).
//!
//! ```text
//!   ┌──────────────┬────────────────────────────┐
//!   │ len: u32 BE  │ len bytes of protobuf      │   len <= max_frame_bytes
//!   └──────────────┴────────────────────────────┘
//! ```
//!
//! There is no transport-level ping: a device shows it is alive by sending frames (a `ping`
//! op at least once per idle timeout). Pure functions; the connection loop lives in
//! `connection.rs`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Why a TCP frame is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TcpFrameError {
    /// The announced length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: u32,
        /// The limit.
        max: usize,
    },
}

/// Decode one frame from the front of `buf`, removing it; `Ok(None)`: more bytes needed. An
/// oversized frame is refused from its prefix alone.
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, TcpFrameError> {
    let Some(len) = announced_len(buf) else {
        return Ok(None);
    };
    if len as usize > max {
        return Err(TcpFrameError::TooLarge { len, max });
    }
    if buf.len() < LENGTH_PREFIX + len as usize {
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX);
    Ok(Some(buf.split_to(len as usize).freeze()))
}

/// Bytes still missing before the frame at the front of `buf` is complete.
pub fn missing_bytes(buf: &[u8], max: usize) -> usize {
    match announced_len(buf) {
        Some(len) if len as usize <= max => {
            (LENGTH_PREFIX + len as usize).saturating_sub(buf.len())
        }
        _ => 0,
    }
}

fn announced_len(buf: &[u8]) -> Option<u32> {
    let prefix = buf.get(..LENGTH_PREFIX)?;
    Some(u32::from_be_bytes([
        prefix[0], prefix[1], prefix[2], prefix[3],
    ]))
}

/// Encode one frame.
pub fn encode_frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(LENGTH_PREFIX + payload.len());
    // Frames are bounded by max_frame_bytes (far below 4 GiB) on both sides; saturating keeps
    // a caller's mistake from wrapping into a valid-looking short length.
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_oversized_frames_from_the_prefix() {
        let mut buf = BytesMut::from(&[0u8, 0x10, 0, 0][..]);
        assert_eq!(
            decode_frame(&mut buf, 64 * 1024),
            Err(TcpFrameError::TooLarge {
                len: 1 << 20,
                max: 64 * 1024
            })
        );
    }

    proptest! {
        #[test]
        fn round_trips_in_pieces(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 0..5),
            cut in any::<prop::sample::Index>(),
        ) {
            let wire: Vec<u8> = payloads.iter().flat_map(|p| encode_frame(p).to_vec()).collect();
            let cut = cut.index(wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = decode_frame(&mut buf, 100).unwrap() { got.push(f.to_vec()); }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = decode_frame(&mut buf, 100).unwrap() { got.push(f.to_vec()); }
            prop_assert_eq!(got, payloads);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64), max in 0usize..32) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode_frame(&mut buf, max) {}
            let _ = missing_bytes(&bytes, max);
        }
    }
}
