//! A small tokio client on the crate's own codecs: one connection, requests that wait for
//! their answer, messages in arrival order.
//!
//! ```text
//!   subscribe / unsubscribe / publish / ping ──▶ ClientFrame (next id) ──▶ socket
//!                                               reply_to(id): read until ack | error | pong
//!   socket ──▶ frames ──▶ messages ──▶ ServerFrame ─┬─ the awaited answer ──▶ returned
//!      │ pings answered, close echoed               └─ anything else ──▶ pending (in order)
//!      ▼                                                              next_message() reads it
//!   next_frame() / next_event(): the same stream, lower down, for tests of hostile input
//! ```
//!
//! Every call is cancel-safe at its reads: wrap it in `tokio::time::timeout` and a call that
//! times out loses no byte (partial frames stay in the read buffer, partial messages in the
//! assembler). There is no hidden time-out and no reconnection: both are the caller's.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::frame::{ClientFrame, Flavour, ParseError, ServerFrame};
use crate::http::{self, HttpError};
use crate::payload::Payload;
use crate::tcp::{self, TcpFrameError};
use crate::tls::{server_name, Stream};
use crate::ws::{self, close_code, Frame, Message, MessageAssembler, Opcode, Role, WsError};

/// Largest frame or message accepted from a server. Far above the gateway's limits, low
/// enough that a broken server cannot make a client buffer without bound.
pub(crate) const MAX_INCOMING: usize = 16 << 20;

/// The gateway's WebSocket path, used when a target names none.
const DEFAULT_PATH: &str = "/ws";

/// Bytes read at a time when the next frame's size is not known yet.
const READ_CHUNK: usize = 4096;

/// A request the server refused, or a connection that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address or URL cannot be used.
    #[error("cannot connect to {target:?}: {reason}")]
    Address {
        /// What the caller passed.
        target: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The socket failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The answer to the upgrade request is not HTTP.
    #[error("malformed HTTP answer to the WebSocket upgrade: {0}")]
    Http(#[from] HttpError),
    /// The server answered the upgrade request but did not accept it.
    #[error("WebSocket upgrade refused: {0}")]
    Upgrade(#[from] ws::UpgradeRefused),
    /// The server broke the WebSocket protocol.
    #[error(transparent)]
    WebSocket(#[from] WsError),
    /// The server sent a TCP frame over the limit.
    #[error(transparent)]
    TcpFrame(#[from] TcpFrameError),
    /// The server sent a message that is not a server frame of the protocol.
    #[error("the server sent a frame this client cannot read: {0}")]
    BadFrame(#[from] ParseError),
    /// The server answered a request with an error frame.
    #[error("the server refused request {id}: {code}: {message}")]
    Refused {
        /// The request's correlation number.
        id: u64,
        /// The server's snake_case code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The connection closed before the awaited answer came.
    #[error("the connection closed before the answer came (close frame: {0:?})")]
    Closed(Option<(u16, String)>),
    /// The connection ended in the middle of a frame or of the upgrade response.
    #[error("the connection ended in the middle of a frame")]
    Truncated,
}

impl ClientError {
    /// The server's error code, when the server refused a request.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A message published to a subscribed topic, as the server delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMessage {
    /// The topic.
    pub topic: Arc<str>,
    /// What was published.
    pub data: Payload,
    /// The term of the leader that ordered it.
    pub term: u64,
    /// Its sequence number within the topic.
    pub seq: u64,
}

/// A whole message from the server, below the client protocol (pings already answered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A text message (UTF-8 checked).
    Text(Bytes),
    /// A binary message (every TCP frame is one).
    Binary(Bytes),
    /// A pong, the answer to [`Client::send_ping`].
    Pong(Bytes),
    /// The server's close frame, with its code and reason when it gave them. The client has
    /// already answered it.
    Close(Option<(u16, String)>),
}

/// How bytes are framed on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    WebSocket,
    Tcp,
}

/// One client connection to a gateway. See the module documentation.
#[derive(Debug)]
pub struct Client {
    stream: Stream,
    wire: Wire,
    flavour: Flavour,
    read_buf: BytesMut,
    assembler: MessageAssembler,
    next_id: u64,
    /// Server frames read while waiting for an answer, in arrival order.
    pending: VecDeque<ServerFrame>,
    /// The server's close frame, once it came.
    closed: Option<Option<(u16, String)>>,
    /// Whether this end sent its close frame.
    close_sent: bool,
}

impl Client {
    /// Open a WebSocket connection speaking `flavour`. `target` is `host:port` (path `/ws`),
    /// `host:port/path` or a `ws://` URL; a `wss://` URL needs [`Client::connect_tls`].
    pub async fn connect(target: &str, flavour: Flavour) -> Result<Client, ClientError> {
        let (authority, path, secure) = split_target(target)?;
        if secure {
            return Err(ClientError::Address {
                target: target.to_string(),
                reason: "wss:// needs a TLS configuration: use Client::connect_tls",
            });
        }
        let stream = TcpStream::connect(&authority).await?;
        stream.set_nodelay(true)?;
        Self::upgrade(Stream::Plain(stream), &authority, &path, flavour).await
    }

    /// Open a WebSocket connection over TLS (`wss://`), checking the server's certificate
    /// with `tls` (see [`crate::tls::client_config_from_ca_file`]) against the target's host.
    /// `target` is a `wss://` URL or, as for [`Client::connect`], `host:port[/path]`.
    pub async fn connect_tls(
        target: &str,
        flavour: Flavour,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Client, ClientError> {
        let (authority, path, _) = split_target(target)?;
        let stream = Self::tls_stream(target, &authority, tls).await?;
        Self::upgrade(stream, &authority, &path, flavour).await
    }

    /// Open a raw TCP connection over TLS to `addr` (`host:port`; the host is the name the
    /// certificate is checked against).
    pub async fn connect_tcp_tls(
        addr: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Client, ClientError> {
        let stream = Self::tls_stream(addr, addr, tls).await?;
        Ok(Client::new(stream, Wire::Tcp, Flavour::Proto))
    }

    async fn tls_stream(
        target: &str,
        authority: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Stream, ClientError> {
        let name = server_name(authority).map_err(|reason| ClientError::Address {
            target: target.to_string(),
            reason,
        })?;
        let tcp = TcpStream::connect(authority).await?;
        tcp.set_nodelay(true)?;
        Ok(Stream::tls(tcp, name, tls).await?)
    }

    async fn upgrade(
        stream: Stream,
        authority: &str,
        path: &str,
        flavour: Flavour,
    ) -> Result<Client, ClientError> {
        let mut client = Client::new(stream, Wire::WebSocket, flavour);
        let key = ws::client_key(rand::random());
        let request = ws::upgrade_request(authority, path, &key, flavour);
        client.stream.write_all(&request).await?;
        client.stream.flush().await?;
        let head = loop {
            if let Some((head, len)) = http::parse_response_head(&client.read_buf)? {
                // What follows the head may already be frames: it stays in the buffer.
                let _ = client.read_buf.split_to(len);
                break head;
            }
            client.read_buf.reserve(READ_CHUNK);
            if client.stream.read_buf(&mut client.read_buf).await? == 0 {
                return Err(ClientError::Truncated);
            }
        };
        ws::check_upgrade_response(&head, &key, flavour)?;
        Ok(client)
    }

    /// Open a raw TCP connection (length-prefixed protobuf frames, always [`Flavour::Proto`]).
    pub async fn connect_tcp(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client::new(
            Stream::Plain(stream),
            Wire::Tcp,
            Flavour::Proto,
        ))
    }

    fn new(stream: Stream, wire: Wire, flavour: Flavour) -> Client {
        Client {
            stream,
            wire,
            flavour,
            read_buf: BytesMut::new(),
            assembler: MessageAssembler::new(MAX_INCOMING),
            next_id: 1,
            pending: VecDeque::new(),
            closed: None,
            close_sent: false,
        }
    }

    /// The encoding this connection speaks.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.stream.tcp().local_addr()
    }

    /// A fresh correlation number for a request built by hand (see [`Client::reply_to`]).
    pub fn next_request_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Subscribe to `topics`; returns once the server acked (the subscription is committed).
    pub async fn subscribe<T: AsRef<str>>(&mut self, topics: &[T]) -> Result<(), ClientError> {
        let id = self.next_request_id();
        let topics = topics.iter().map(|t| Arc::from(t.as_ref())).collect();
        self.request(ClientFrame::subscribe(id, topics)).await
    }

    /// Unsubscribe from `topics`; returns once the server acked.
    pub async fn unsubscribe<T: AsRef<str>>(&mut self, topics: &[T]) -> Result<(), ClientError> {
        let id = self.next_request_id();
        let topics = topics.iter().map(|t| Arc::from(t.as_ref())).collect();
        self.request(ClientFrame::Unsubscribe { id, topics }).await
    }

    /// Publish `data` to `topic`; returns once the topic's leader ordered it.
    pub async fn publish(
        &mut self,
        topic: &str,
        data: impl Into<Payload>,
    ) -> Result<(), ClientError> {
        let id = self.next_request_id();
        let frame = ClientFrame::Publish {
            id,
            topic: Arc::from(topic),
            payload: data.into(),
        };
        self.request(frame).await
    }

    /// A protocol-level ping; returns on its pong.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        let id = self.next_request_id();
        self.request(ClientFrame::Ping { id }).await
    }

    /// Send `frame` in this connection's flavour and wait for its answer.
    async fn request(&mut self, frame: ClientFrame) -> Result<(), ClientError> {
        let id = frame.id();
        self.send_client_frame(&frame).await?;
        self.reply_to(id).await
    }

    /// Send one client frame, encoded in this connection's flavour, without waiting.
    pub async fn send_client_frame(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        match self.flavour {
            // The JSON text exactly as encoded (no lossy round trip through `str`).
            Flavour::Json => {
                self.send_frame(true, Opcode::Text, &frame.encode_json())
                    .await
            }
            Flavour::Proto => self.send_binary(&frame.encode_proto()).await,
        }
    }

    /// Wait for the answer to request `id`: `Ok` on its ack or pong, [`ClientError::Refused`]
    /// on its error frame. Every other frame read meanwhile is kept for
    /// [`Client::next_message`] and [`Client::next_server_frame`], in order.
    pub async fn reply_to(&mut self, id: u64) -> Result<(), ClientError> {
        loop {
            let Some(frame) = self.read_server_frame().await? else {
                return Err(ClientError::Closed(self.closed.clone().flatten()));
            };
            match frame {
                ServerFrame::Ack { id: got }
                | ServerFrame::Pong { id: got }
                | ServerFrame::Published { id: got, .. }
                | ServerFrame::Subscribed { id: got, .. }
                    if got == id =>
                {
                    return Ok(())
                }
                ServerFrame::Error {
                    id: Some(got),
                    code,
                    message,
                } if got == id => return Err(ClientError::Refused { id, code, message }),
                other => self.pending.push_back(other),
            }
        }
    }

    /// The next message published to a subscribed topic; `None` once the connection closed.
    /// Other server frames (stray acks, errors not tied to a waiting request) are skipped:
    /// read them with [`Client::next_server_frame`].
    pub async fn next_message(&mut self) -> Result<Option<TopicMessage>, ClientError> {
        loop {
            match self.next_server_frame().await? {
                None => return Ok(None),
                Some(ServerFrame::Message {
                    topic,
                    payload,
                    term,
                    seq,
                    ..
                }) => {
                    return Ok(Some(TopicMessage {
                        topic,
                        data: payload,
                        term,
                        seq,
                    }))
                }
                Some(_) => continue,
            }
        }
    }

    /// The next server frame, the ones kept while waiting for answers first; `None` once the
    /// connection closed.
    pub async fn next_server_frame(&mut self) -> Result<Option<ServerFrame>, ClientError> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(Some(frame));
        }
        self.read_server_frame().await
    }

    /// Read the next server frame from the socket (JSON in text messages, protobuf in binary
    /// ones), skipping pongs.
    async fn read_server_frame(&mut self) -> Result<Option<ServerFrame>, ClientError> {
        loop {
            match self.next_event().await? {
                None | Some(Event::Close(_)) => return Ok(None),
                Some(Event::Text(text)) => return Ok(Some(ServerFrame::parse_json(&text)?)),
                Some(Event::Binary(bytes)) => return Ok(Some(ServerFrame::parse_proto(&bytes)?)),
                Some(Event::Pong(_)) => continue,
            }
        }
    }

    /// The next whole message from the socket, reassembled from its fragments, pings answered
    /// and the server's close echoed; `None` on end of stream. Frames kept by
    /// [`Client::reply_to`] are not seen here.
    pub async fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        loop {
            let Some(frame) = self.next_frame().await? else {
                return Ok(None);
            };
            if self.wire == Wire::Tcp {
                return Ok(Some(Event::Binary(frame.payload)));
            }
            match self.assembler.push(frame)? {
                None => continue,
                Some(Message::Text(text)) => return Ok(Some(Event::Text(text))),
                Some(Message::Binary(bytes)) => return Ok(Some(Event::Binary(bytes))),
                Some(Message::Pong(p)) => return Ok(Some(Event::Pong(p))),
                Some(Message::Ping(p)) => {
                    // The server may already be gone; the next read reports it.
                    let _ = self.send_frame(true, Opcode::Pong, &p).await;
                }
                Some(Message::Close(reason)) => {
                    if !self.close_sent {
                        let code = reason.as_ref().map_or(close_code::NORMAL, |(c, _)| *c);
                        let _ = self.send_close(code, "").await;
                    }
                    self.closed = Some(reason.clone());
                    return Ok(Some(Event::Close(reason)));
                }
            }
        }
    }

    /// The next frame exactly as it came (unmasked, not reassembled, pings not answered); a
    /// TCP frame comes as one final binary frame. `None` on end of stream.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        loop {
            let (frame, missing) = match self.wire {
                Wire::WebSocket => (
                    ws::decode_frame(&mut self.read_buf, MAX_INCOMING, Role::Client)?,
                    ws::missing_bytes(&self.read_buf, MAX_INCOMING, Role::Client),
                ),
                Wire::Tcp => (
                    tcp::decode_frame(&mut self.read_buf, MAX_INCOMING)?.map(|payload| Frame {
                        fin: true,
                        opcode: Opcode::Binary,
                        payload,
                    }),
                    tcp::missing_bytes(&self.read_buf, MAX_INCOMING),
                ),
            };
            if frame.is_some() {
                return Ok(frame);
            }
            self.read_buf.reserve(missing.max(READ_CHUNK));
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                if self.read_buf.is_empty() {
                    return Ok(None);
                }
                return Err(ClientError::Truncated);
            }
        }
    }

    /// Send one text message (a masked WebSocket text frame; on TCP, one frame of its bytes).
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.send_frame(true, Opcode::Text, text.as_bytes()).await
    }

    /// Send one binary message (a masked WebSocket binary frame; on TCP, one frame).
    pub async fn send_binary(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send_frame(true, Opcode::Binary, bytes).await
    }

    /// Send a WebSocket ping; its pong comes as [`Event::Pong`].
    pub async fn send_ping(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        self.send_frame(true, Opcode::Ping, payload).await
    }

    /// Send one frame, masked with a fresh key, exactly as given (any fragmentation, any
    /// opcode). On TCP the payload goes as one length-prefixed frame, whatever the opcode.
    pub async fn send_frame(
        &mut self,
        fin: bool,
        opcode: Opcode,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        let bytes = match self.wire {
            Wire::WebSocket => ws::encode_frame(fin, opcode, payload, Some(rand::random())),
            Wire::Tcp => tcp::encode_frame(payload),
        };
        self.send_raw(&bytes).await
    }

    /// Write bytes to the socket as they are: for hostile input (unmasked frames, garbage).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).await?;
        // TLS buffers what it encrypts; plain TCP's flush is a no-op.
        self.stream.flush().await?;
        Ok(())
    }

    /// Send a close frame (`code`, `reason`) without waiting for the server's: keep reading
    /// with [`Client::next_event`] until its [`Event::Close`] (which is then not answered
    /// again) and the end of the stream. [`Client::close`] does both and drops what arrives.
    pub async fn send_close(&mut self, code: u16, reason: &str) -> Result<(), ClientError> {
        self.close_sent = true;
        let frame = ws::encode_close_frame(code, reason, Some(rand::random()));
        self.send_raw(&frame).await
    }

    /// Close cleanly: a 1000 close frame, then read until the server's close and the end of
    /// the stream (a TCP connection just shuts down its sending half and reads to the end).
    /// Frames still arriving are dropped.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self.wire == Wire::WebSocket && !self.close_sent {
            self.send_close(close_code::NORMAL, "").await?;
        }
        if self.wire == Wire::Tcp {
            self.stream.shutdown().await?;
        }
        while self.closed.is_none() {
            if self.next_event().await?.is_none() {
                break;
            }
        }
        // The server closes the TCP connection first (RFC 6455 section 7.1.1); wait for it.
        let mut rest = [0u8; 256];
        loop {
            match self.stream.read(&mut rest).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                // A TLS server that closes without close_notify: the WebSocket close
                // handshake already ended the conversation, nothing is lost.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// `(host:port, path, wss)` of a connect target.
fn split_target(target: &str) -> Result<(String, String, bool), ClientError> {
    let refuse = |reason| ClientError::Address {
        target: target.to_string(),
        reason,
    };
    let (rest, secure) = match target.split_once("://") {
        None => (target, false),
        Some(("ws", rest)) => (rest, false),
        Some(("wss", rest)) => (rest, true),
        Some(_) => {
            return Err(refuse(
                "only ws:// and wss:// URLs and host:port addresses are supported",
            ))
        }
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("{DEFAULT_PATH}{}", &rest[i..])),
        None => (rest, DEFAULT_PATH.to_string()),
    };
    if authority.is_empty() {
        return Err(refuse("no host"));
    }
    // A port after the last colon, outside an IPv6 literal's brackets.
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.contains(']'));
    let authority = match (has_port, secure) {
        (true, _) => authority.to_string(),
        (false, false) => format!("{authority}:80"),
        (false, true) => format!("{authority}:443"),
    };
    Ok((authority, path, secure))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(t: &str) -> (String, String) {
        let (authority, path, _) = split_target(t).unwrap();
        (authority, path)
    }

    #[test]
    fn targets() {
        let pair = |a: &str, p: &str| (a.to_string(), p.to_string());
        assert_eq!(split("127.0.0.1:9090"), pair("127.0.0.1:9090", "/ws"));
        assert_eq!(split("ws://127.0.0.1:9090"), pair("127.0.0.1:9090", "/ws"));
        assert_eq!(
            split("ws://localhost:1/ws?token=x"),
            pair("localhost:1", "/ws?token=x")
        );
        assert_eq!(
            split("localhost:1?token=x"),
            pair("localhost:1", "/ws?token=x")
        );
        assert_eq!(split("ws://[::1]:7/x"), pair("[::1]:7", "/x"));
        assert_eq!(split("ws://[::1]/x"), pair("[::1]:80", "/x"));
        assert_eq!(split("ws://example/"), pair("example:80", "/"));
        assert_eq!(split("wss://example/"), pair("example:443", "/"));
        assert!(split_target("wss://x:1").unwrap().2);
        for bad in ["http://x:1", "ws:///ws", "wss:///ws", ""] {
            assert!(
                matches!(split_target(bad), Err(ClientError::Address { .. })),
                "{bad}"
            );
        }
    }
}
