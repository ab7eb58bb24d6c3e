//! Length-prefixed frames: the manager link's `firetower_link::decode_frame` for every link
//! message that crosses a stream, and the gateway's raw TCP client framing.
//!
//! Input: `[selector][bytes...]`. The selector picks the link message type or the TCP framing
//! (and its limit and the size of the pieces the stream arrives in).
//!
//! What must hold, besides "never panics":
//! - link: a frame is refused exactly when its prefix is over the limit or disagrees with the
//!   body's length, and what decodes encodes to a frame that decodes to the same message;
//! - TCP: the stream gives the same frames and error whole or in pieces, `missing_bytes` is
//!   exact, no frame exceeds the limit, frames round trip through `encode_frame`, and each
//!   frame's body goes through the client frame parser.

use bytes::BytesMut;
use firetower_client::tcp::{decode_frame as tcp_decode, encode_frame as tcp_encode};
use firetower_client::tcp::{missing_bytes as tcp_missing, TcpFrameError};
use firetower_client::ClientFrame;
use firetower_link::{decode_frame, encode_frame, FrameError, MAX_LINK_FRAME_BYTES};
use firetower_proto::link::{GatewayFrame, GatewayReply, GatewayRequest, SessionFrame};
use prost::Message;

/// TCP frame limits: none, tiny, and the gateway's default of 64 KiB.
const TCP_LIMITS: [usize; 4] = [0, 3, 255, 64 * 1024];

/// One input: whatever it is, the properties above hold.
pub fn run(data: &[u8]) {
    let [selector, bytes @ ..] = data else {
        return;
    };
    match selector % 8 {
        0 => link::<GatewayRequest>(bytes),
        1 => link::<GatewayReply>(bytes),
        2 => link::<SessionFrame>(bytes),
        3 => link::<GatewayFrame>(bytes),
        _ => {
            let max = TCP_LIMITS[usize::from(selector % 4)];
            let chunk = 1 + usize::from(selector >> 3);
            tcp(bytes, max, chunk);
        }
    }
}

fn link<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    let decoded = decode_frame::<M>(bytes);
    let Some((head, body)) = bytes.split_first_chunk::<4>() else {
        assert_eq!(decoded, Err(FrameError::NoPrefix(bytes.len())));
        return;
    };
    let said = u32::from_be_bytes(*head) as usize;
    match decoded {
        Err(FrameError::NoPrefix(_)) => panic!("NoPrefix with a prefix"),
        Err(FrameError::TooLarge(len)) => assert!(len == said && said > MAX_LINK_FRAME_BYTES),
        Err(FrameError::LengthMismatch { said: s, got }) => {
            assert!(s == said && got == body.len() && s != got && said <= MAX_LINK_FRAME_BYTES)
        }
        Err(FrameError::Decode(_)) => assert_eq!(said, body.len()),
        Ok(message) => {
            assert_eq!(said, body.len());
            assert!(said <= MAX_LINK_FRAME_BYTES);
            let again = encode_frame(&message);
            assert_eq!(
                decode_frame::<M>(&again).as_ref(),
                Ok(&message),
                "link round trip"
            );
        }
    }
}

fn tcp(bytes: &[u8], max: usize, chunk: usize) {
    let (whole, whole_err) = tcp_whole(bytes, max);
    let (pieces, pieces_err) = tcp_pieces(bytes, max, chunk);
    assert_eq!(
        whole, pieces,
        "frames differ when the stream arrives in pieces"
    );
    assert_eq!(
        whole_err, pieces_err,
        "errors differ when the stream arrives in pieces"
    );
    if let Some(TcpFrameError::TooLarge { len, max: m }) = whole_err {
        assert!(len as usize > max && m == max);
    }
    for frame in &whole {
        assert!(frame.len() <= max, "frame over the limit");
        let mut wire = BytesMut::from(&tcp_encode(frame)[..]);
        assert_eq!(
            tcp_decode(&mut wire, max),
            Ok(Some(frame.clone())),
            "TCP round trip"
        );
        assert!(wire.is_empty());
        let _ = ClientFrame::parse_proto(frame);
    }
}

fn tcp_whole(bytes: &[u8], max: usize) -> (Vec<bytes::Bytes>, Option<TcpFrameError>) {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        let missing = tcp_missing(&buf, max);
        let before = buf.len();
        match tcp_decode(&mut buf, max) {
            Ok(Some(frame)) => {
                assert_eq!(missing, 0, "missing_bytes > 0 for a complete frame");
                assert_eq!(buf.len() + 4 + frame.len(), before);
                frames.push(frame);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before);
                if missing > 0 {
                    let mut grown = buf.clone();
                    grown.resize(before + missing - 1, 0);
                    assert_eq!(tcp_decode(&mut grown, max), Ok(None), "completed too early");
                    grown.extend_from_slice(&[0]);
                    assert!(
                        matches!(tcp_decode(&mut grown, max), Ok(Some(_))),
                        "missing_bytes wrong"
                    );
                } else {
                    assert!(buf.len() < 4, "incomplete frame with nothing missing");
                }
                return (frames, None);
            }
            Err(e) => return (frames, Some(e)),
        }
    }
}

fn tcp_pieces(
    bytes: &[u8],
    max: usize,
    chunk: usize,
) -> (Vec<bytes::Bytes>, Option<TcpFrameError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match tcp_decode(&mut buf, max) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}
