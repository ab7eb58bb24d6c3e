//! A small in-test gateway on the crate's own codec (server role), for the client's tests.
//!
//! Per connection: `subscribe` is acked after a WebSocket ping and a message on topic
//! `early` (frames the client must keep while it waits); topics starting with `forbidden`
//! are refused with code `forbidden`; `publish` to a subscribed topic sends the message
//! first, then the ack; `ping` gets a pong; a WebSocket pong from the client is reported back
//! as a message on topic `pong.seen`; pings are answered; a close is echoed.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use firetower_client::http::parse_request_head;
use firetower_client::ws::{self, Message, MessageAssembler, Opcode, Role};
use firetower_client::{tcp, ClientFrame, Flavour, Payload, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX: usize = 1 << 20;

/// Which framing the fake speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    WebSocket,
    Tcp,
}

/// Start the fake on an ephemeral loopback port.
pub async fn start(listen: Listen) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = match listen {
                    Listen::WebSocket => serve_ws(stream).await,
                    Listen::Tcp => serve_tcp(stream).await,
                };
            });
        }
    });
    addr
}

#[derive(Default)]
struct Session {
    topics: HashSet<String>,
    seq: u64,
}

impl Session {
    /// The frames that answer one request, in the order they are sent.
    fn answer(&mut self, frame: ClientFrame) -> Vec<ServerFrame> {
        match frame {
            ClientFrame::Subscribe { id, topics, .. } => {
                if topics.iter().any(|t| t.starts_with("forbidden")) {
                    return vec![ServerFrame::error(Some(id), "forbidden", "not for you")];
                }
                self.topics.extend(topics.iter().map(|t| t.to_string()));
                vec![self.message("early", b"1"), ServerFrame::Ack { id }]
            }
            ClientFrame::Unsubscribe { id, topics } => {
                for t in topics {
                    self.topics.remove(&*t);
                }
                vec![ServerFrame::Ack { id }]
            }
            ClientFrame::Publish { id, topic, payload } => {
                let mut out = Vec::new();
                if self.topics.contains(&*topic) {
                    self.seq += 1;
                    out.push(ServerFrame::Message {
                        topic,
                        payload,
                        term: 7,
                        seq: self.seq,
                        position: None,
                    });
                }
                out.push(ServerFrame::Ack { id });
                out
            }
            ClientFrame::Ping { id } => vec![ServerFrame::Pong { id }],
            ClientFrame::Auth { id, .. } => vec![ServerFrame::Authenticated {
                id,
                user: "u1".into(),
            }],
            ClientFrame::History { id, .. } | ClientFrame::Presence { id, .. } => {
                vec![ServerFrame::error(Some(id), "no_history", "not kept here")]
            }
        }
    }

    fn message(&mut self, topic: &str, json: &'static [u8]) -> ServerFrame {
        self.seq += 1;
        ServerFrame::Message {
            topic: Arc::from(topic),
            payload: Payload::Json(Bytes::from_static(json)),
            term: 7,
            seq: self.seq,
            position: None,
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> bool {
    buf.reserve(4096);
    stream.read_buf(buf).await.unwrap_or(0) > 0
}

async fn serve_ws(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    let head = loop {
        if let Some((head, len)) = parse_request_head(&buf).unwrap() {
            let _ = buf.split_to(len);
            break head;
        }
        if !read_more(&mut stream, &mut buf).await {
            return Ok(());
        }
    };
    let upgrade = ws::negotiate(&head).unwrap();
    let flavour = upgrade.flavour;
    stream.write_all(&ws::upgrade_response(&upgrade)).await?;
    let mut assembler = MessageAssembler::new(MAX);
    let mut session = Session::default();
    loop {
        let Some(frame) = ws::decode_frame(&mut buf, MAX, Role::Server).unwrap() else {
            if !read_more(&mut stream, &mut buf).await {
                return Ok(());
            }
            continue;
        };
        let request = match assembler.push(frame).unwrap() {
            None => continue,
            Some(Message::Ping(p)) => {
                stream
                    .write_all(&ws::encode_message(Opcode::Pong, &p))
                    .await?;
                continue;
            }
            Some(Message::Pong(p)) => {
                assert_eq!(&p[..], b"are you there");
                let seen = session.message("pong.seen", b"true");
                send_ws(&mut stream, flavour, &seen).await?;
                continue;
            }
            Some(Message::Close(_)) => {
                stream.write_all(&ws::encode_close(1000, "bye")).await?;
                return stream.shutdown().await;
            }
            Some(Message::Text(t)) => ClientFrame::parse_json(&t),
            Some(Message::Binary(b)) => ClientFrame::parse_proto(&b),
        };
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                send_ws(&mut stream, flavour, &e.to_frame()).await?;
                continue;
            }
        };
        if matches!(request, ClientFrame::Subscribe { .. }) {
            stream
                .write_all(&ws::encode_message(Opcode::Ping, b"are you there"))
                .await?;
        }
        for answer in session.answer(request) {
            send_ws(&mut stream, flavour, &answer).await?;
        }
    }
}

async fn send_ws(
    stream: &mut TcpStream,
    flavour: Flavour,
    frame: &ServerFrame,
) -> std::io::Result<()> {
    let bytes = match flavour {
        Flavour::Json => ws::encode_message(Opcode::Text, &frame.encode_json()),
        Flavour::Proto => ws::encode_message(Opcode::Binary, &frame.encode_proto()),
    };
    stream.write_all(&bytes).await
}

async fn serve_tcp(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    let mut session = Session::default();
    loop {
        let Some(bytes) = tcp::decode_frame(&mut buf, MAX).unwrap() else {
            if !read_more(&mut stream, &mut buf).await {
                return Ok(());
            }
            continue;
        };
        let answers = match ClientFrame::parse_proto(&bytes) {
            Ok(request) => session.answer(request),
            Err(e) => vec![e.to_frame()],
        };
        for answer in answers {
            stream
                .write_all(&tcp::encode_frame(&answer.encode_proto()))
                .await?;
        }
    }
}
