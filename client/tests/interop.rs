//! The codec against an independent implementation, tokio-tungstenite, both ways: our client
//! against a tungstenite server, and a tungstenite client against our echo example.

#[path = "../examples/echo.rs"]
#[allow(dead_code)]
mod echo;

use std::sync::Arc;
use std::time::Duration;

use firetower_client::{Client, ClientFrame, Flavour, Payload, ServerFrame};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// A tungstenite server speaking the JSON flavour: acks requests; before a subscribe's ack it
/// sends a ping and a large message (a 64-bit length frame), which the client must keep.
async fn tungstenite_gateway() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // The error type is tungstenite's `ErrorResponse`, fixed by `accept_hdr_async`.
        #[allow(clippy::result_large_err)]
        let pick = |req: &Request, mut resp: Response| {
            let offered = req.headers().get("sec-websocket-protocol").cloned();
            assert_eq!(offered, Some(HeaderValue::from_static("firetower.json")));
            resp.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static("firetower.json"),
            );
            Ok(resp)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(stream, pick)
            .await
            .unwrap();
        let mut pongs = 0;
        while let Some(msg) = ws.next().await {
            // tungstenite refuses unmasked client frames: every frame we get was masked.
            let text = match msg.unwrap() {
                Message::Text(t) => t,
                Message::Pong(p) => {
                    assert_eq!(&p[..], b"tung");
                    pongs += 1;
                    continue;
                }
                Message::Close(frame) => {
                    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1000));
                    assert_eq!(pongs, 1, "the client answered the ping once");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            };
            let answer = match ClientFrame::parse_json(text.as_bytes()).unwrap() {
                ClientFrame::Subscribe { id, topics, .. } => {
                    ws.send(Message::Ping(bytes::Bytes::from_static(b"tung")))
                        .await
                        .unwrap();
                    let big = ServerFrame::Message {
                        topic: topics[0].clone(),
                        payload: Payload::from(json!("x".repeat(70_000))),
                        term: 2,
                        seq: 1,
                        position: None,
                    };
                    let text = String::from_utf8(big.encode_json()).unwrap();
                    ws.send(Message::text(text)).await.unwrap();
                    ServerFrame::Ack { id }
                }
                ClientFrame::Ping { id } => ServerFrame::Pong { id },
                other => ServerFrame::Ack { id: other.id() },
            };
            let text = String::from_utf8(answer.encode_json()).unwrap();
            ws.send(Message::text(text)).await.unwrap();
        }
    });
    addr
}

#[tokio::test]
async fn our_client_against_a_tungstenite_server() {
    let addr = tungstenite_gateway().await;
    let mut c = timeout(
        WAIT,
        Client::connect(&format!("ws://{addr}/ws"), Flavour::Json),
    )
    .await
    .unwrap()
    .unwrap();
    timeout(WAIT, c.subscribe(&["big"])).await.unwrap().unwrap();
    timeout(WAIT, c.ping()).await.unwrap().unwrap();
    let m = timeout(WAIT, c.next_message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&*m.topic, "big");
    assert_eq!(m.data, Payload::from(json!("x".repeat(70_000))));
    assert_eq!((m.term, m.seq), (2, 1));
    timeout(WAIT, c.close()).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_tungstenite_client_against_our_echo_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(echo::serve(listener));
    let (mut ws, _) = timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/")),
    )
    .await
    .unwrap()
    .unwrap();
    let big = Arc::new(vec![7u8; 200_000]);
    let sent = vec![
        Message::text("héllo"),
        Message::binary(big.to_vec()),
        Message::text(""),
        Message::Ping(bytes::Bytes::from_static(b"ping!")),
    ];
    for m in &sent {
        ws.send(m.clone()).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        got.push(timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap());
    }
    assert_eq!(
        got,
        vec![
            Message::text("héllo"),
            Message::binary(big.to_vec()),
            Message::text(""),
            Message::Pong(bytes::Bytes::from_static(b"ping!")),
        ]
    );
    ws.close(Some(CloseFrame {
        code: CloseCode::Library(4000),
        reason: "done".into(),
    }))
    .await
    .unwrap();
    // The echo server answers a close with the same code, then ends the stream.
    let reply = timeout(WAIT, ws.next()).await.unwrap();
    match reply {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4000),
        other => panic!("expected the close echoed, got {other:?}"),
    }
}
