//! A WebSocket echo server on the `firetower-client` codec: the target of the Autobahn
//! TestSuite's `fuzzingclient` (see `docs/conformance.md`) and of the interop tests.
//!
//! ```text
//!   cargo run -p firetower-client --example echo -- 127.0.0.1:9001
//! ```
//!
//! It echoes text and binary messages (reassembled from their fragments), answers pings,
//! ignores pongs, and closes per RFC 6455: it echoes a peer's close, and closes with the codec's
//! code for a broken rule (1002 protocol, 1007 invalid UTF-8, 1009 too big). No subprotocol is
//! required (`negotiate` picks `firetower.json` when none is offered; it means nothing here).

use bytes::BytesMut;
use firetower_client::http::{parse_request_head, MAX_REQUEST_HEAD};
use firetower_client::ws::{self, close_code, Message, MessageAssembler, Opcode, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest frame and message echoed: Autobahn's case 9 sends messages up to 16 MiB.
pub const MAX_MESSAGE: usize = 32 << 20;

/// Bytes read at a time when the next frame's size is unknown.
const READ_CHUNK: usize = 16 * 1024;

#[allow(dead_code)] // The tests include this file for `serve` and do not call `main`.
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_string());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("echo server on ws://{}", listener.local_addr()?);
    serve(listener).await
}

/// Accept connections forever, one task each.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            // A peer that breaks the connection is its own problem; the server carries on.
            let _ = echo(stream).await;
        });
    }
}

/// One connection: the upgrade, then echo until a close.
async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let head = loop {
        match parse_request_head(&buf) {
            Ok(Some((head, len))) => {
                let _ = buf.split_to(len);
                break head;
            }
            Ok(None) if buf.len() < MAX_REQUEST_HEAD => {}
            _ => return Ok(()),
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    };
    let upgrade = match ws::negotiate(&head) {
        Ok(u) => u,
        Err(e) => {
            let body = format!("{e}\n");
            let response = format!(
                "HTTP/1.1 {} Refused\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                e.status(),
                body.len()
            );
            return stream.write_all(response.as_bytes()).await;
        }
    };
    stream.write_all(&ws::upgrade_response(&upgrade)).await?;

    let mut assembler = MessageAssembler::new(MAX_MESSAGE);
    loop {
        let frame = match ws::decode_frame(&mut buf, MAX_MESSAGE, Role::Server) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                let missing = ws::missing_bytes(&buf, MAX_MESSAGE, Role::Server);
                buf.reserve(missing.max(READ_CHUNK));
                if stream.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return close(&mut stream, e.close_code()).await,
        };
        let reply = match assembler.push(frame) {
            Ok(None) | Ok(Some(Message::Pong(_))) => continue,
            Ok(Some(Message::Text(t))) => ws::encode_message(Opcode::Text, &t),
            Ok(Some(Message::Binary(b))) => ws::encode_message(Opcode::Binary, &b),
            Ok(Some(Message::Ping(p))) => ws::encode_message(Opcode::Pong, &p),
            Ok(Some(Message::Close(reason))) => {
                let code = reason.map_or(close_code::NORMAL, |(code, _)| code);
                return close(&mut stream, code).await;
            }
            Err(e) => return close(&mut stream, e.close_code()).await,
        };
        stream.write_all(&reply).await?;
    }
}

/// Send a close frame and end the connection: the server closes the TCP connection first
/// (RFC 6455 section 7.1.1), after a short grace for the peer's own close frame.
async fn close(stream: &mut TcpStream, code: u16) -> std::io::Result<()> {
    stream.write_all(&ws::encode_close(code, "")).await?;
    stream.shutdown().await?;
    let mut rest = [0u8; 1024];
    let drain = async { while stream.read(&mut rest).await.unwrap_or(0) > 0 {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
    Ok(())
}
