//! Length-prefixed protobuf frames: `len:u32 BE | message`, as used on the manager link.

use prost::Message;

/// The largest frame either side of the manager link sends or accepts.
pub const MAX_LINK_FRAME_BYTES: usize = 1 << 20;

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer than 4 bytes.
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
    Decode(String),
}

/// Encode `message` with its length prefix.
pub fn encode_frame<M: Message>(message: &M) -> Vec<u8> {
    let len = message.encoded_len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    // Encoding into a Vec cannot run out of space: a Vec grows.
    let _ = message.encode(&mut out);
    out
}

/// Decode one frame that fills `bytes` exactly.
pub fn decode_frame<M: Message + Default>(bytes: &[u8]) -> Result<M, FrameError> {
    let Some((head, body)) = bytes.split_first_chunk::<4>() else {
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
    M::decode(body).map_err(|e| FrameError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{gateway_request, GatewayRequest, Subscribe};

    #[test]
    fn round_trip() {
        let request = GatewayRequest {
            gateway: 7,
            op: Some(gateway_request::Op::Subscribe(Subscribe {
                topic: "room.1".into(),
                epoch: 1_795_692_954_333_266,
            })),
        };
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

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = decode_frame::<GatewayRequest>(&bytes);
        }
    }
}
