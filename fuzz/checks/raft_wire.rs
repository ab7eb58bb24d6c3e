//! The Raft RPC wire between managers (`firetower_raft::wire`): the frame reader a server
//! and a client run on a peer's stream, and the postcard decoding of requests and replies.
//!
//! Input: `[selector][bytes...]`. Selector 0: the bytes are a stream read with `read_frame`
//! until it ends (each body then decoded as a request); 1: the bytes are one request body;
//! 2: one reply body.
//!
//! What must hold, besides "never panics" (openraft's `Debug` of what decoded included):
//! - `read_frame` returns exactly the announced bodies, refuses a prefix over `MAX_FRAME_LEN`
//!   without allocating for it, and reports truncation with the right counts;
//! - a decoded request or reply encodes to a frame that reads and decodes to the same value.

use firetower_link::ReadFrameError;
use firetower_raft::wire::WireError;
use firetower_raft::wire::{decode_body, encode, read_body, RaftReply, RaftRequest};
use firetower_raft::MAX_FRAME_LEN;
use futures::executor::block_on;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// One input: whatever it is, the properties above hold.
pub fn run(data: &[u8]) {
    let [selector, bytes @ ..] = data else {
        return;
    };
    match selector % 3 {
        0 => stream(bytes),
        1 => body::<RaftRequest>(bytes),
        _ => body::<RaftReply>(bytes),
    }
}

fn stream(bytes: &[u8]) {
    let mut rest = bytes;
    loop {
        let at = bytes.len() - rest.len();
        let result = block_on(read_body(&mut rest));
        let left = &bytes[at..];
        match result {
            Ok(None) => {
                assert!(left.is_empty(), "stream ended early");
                return;
            }
            Ok(Some(frame)) => {
                let header: [u8; 4] = left[..4].try_into().expect("a frame has a header");
                let len = u32::from_be_bytes(header) as usize;
                assert!(len <= MAX_FRAME_LEN, "read a frame over the limit");
                assert_eq!(frame.len(), len);
                assert_eq!(&frame[..], &left[4..4 + len]);
                assert_eq!(rest.len(), left.len() - 4 - len, "read past the frame");
                body::<RaftRequest>(&frame);
            }
            Err(WireError::Read(ReadFrameError::Truncated { expected, got })) => {
                if left.len() < 4 {
                    assert_eq!((expected, got), (4, left.len()));
                } else {
                    let len = u32::from_be_bytes(left[..4].try_into().unwrap()) as usize;
                    assert_eq!((expected, got), (len, left.len() - 4));
                    assert!(got < expected);
                }
                return;
            }
            Err(WireError::Read(ReadFrameError::TooLarge { len, .. })) => {
                assert!(left.len() >= 4 && len > MAX_FRAME_LEN);
                assert_eq!(
                    len,
                    u32::from_be_bytes(left[..4].try_into().unwrap()) as usize
                );
                return;
            }
            Err(e) => panic!("reading a byte slice failed with {e}"),
        }
    }
}

fn body<T: Serialize + DeserializeOwned + std::fmt::Debug>(bytes: &[u8]) {
    let Ok(message) = decode_body::<T>(bytes) else {
        return;
    };
    let shown = format!("{message:?}");
    let frame = encode(&message).expect("a decoded message encodes");
    let mut reader = &frame[..];
    let body = block_on(read_body(&mut reader))
        .expect("an encoded frame reads")
        .expect("an encoded frame is not empty");
    assert!(reader.is_empty(), "an encoded frame left bytes over");
    let back: T = decode_body(&body).expect("an encoded frame decodes");
    assert_eq!(format!("{back:?}"), shown, "round trip changed the message");
}
