//! A lean WebSocket client for load generation: one TCP socket, bound to a chosen loopback
//! source address before `connect`, the `firetower.json` upgrade, and frames through the
//! gateway's own pure codec (`firetower_client::ws`, client role).
//!
//! Why not a general client library: tens of thousands of these run in one process next to
//! the gateway on the same cores, so a connection holds one small read buffer and nothing
//! else, and the receive path decodes frames in place without copying or re-validating.
//! Interoperability with independent clients is covered by the gateway's own tests
//! (tokio-tungstenite); this client only has to be cheap.
//!
//! `wss://` URLs (a gateway with `[client_tls]`) need the CA to trust, given once per process
//! with `--ca FILE` ([`use_ca_file`]): every connection of a run trusts the same CA, so it is
//! one process-wide rustls configuration rather than a value threaded through every scenario.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use bytes::BytesMut;
// The codec moves to `firetower-client` (issue 10); this is the loadgen's only import of it,
// re-exported for `peer`, so the switch at merge is this one line.
use firetower_client::tls::Stream;
pub(super) use firetower_client::ws::Opcode;
use firetower_client::ws::{self, Role};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Initial capacity of a connection's read buffer: a few deliveries per `read`, small enough
/// for 10,000 subscribers in one process.
const READ_BUFFER: usize = 4 * 1024;
/// Largest HTTP response head accepted from the gateway.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;
/// Largest frame accepted from the gateway.
const MAX_FRAME: usize = 1024 * 1024;
/// Time for TCP connect plus the upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The CA `wss://` connections trust (set once by `--ca`).
static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// Trust the CA certificates in `path` for every `wss://` connection of this process.
pub(crate) fn use_ca_file(path: Option<&Path>) -> anyhow::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let config = firetower_client::tls::client_config_from_ca_file(path)?;
    // A second call (the same flag parsed twice) keeps the first: same file, same trust.
    let _ = TLS.set(config);
    Ok(())
}

/// A parsed `ws://IP:PORT/PATH` or `wss://IP:PORT/PATH` address (no DNS: the benchmarks run
/// on literal addresses; a `wss` certificate must name the IP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WsUrl {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Request path, starting with `/`.
    pub path: String,
    /// `wss://`: TLS with the CA of `--ca`.
    pub tls: bool,
}

impl WsUrl {
    /// Parse `ws://127.0.0.1:9090/ws` or `wss://...` (the path defaults to `/ws`).
    pub(super) fn parse(text: &str) -> anyhow::Result<WsUrl> {
        let trimmed = text.trim();
        let (rest, tls) = match trimmed.strip_prefix("wss://") {
            Some(rest) => (rest, true),
            None => (
                trimmed.strip_prefix("ws://").ok_or_else(|| {
                    anyhow!("{text:?}: expected ws://IP:PORT/PATH or wss://IP:PORT/PATH")
                })?,
                false,
            ),
        };
        if tls && TLS.get().is_none() {
            bail!(
                "{text:?}: wss:// needs --ca FILE (the CA that signed the gateway's certificate)"
            );
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/ws"),
        };
        let addr: SocketAddr = authority.parse().with_context(|| {
            format!("{text:?}: expected a literal IP:PORT, like 127.0.0.1:9090")
        })?;
        Ok(WsUrl {
            addr,
            path: path.to_string(),
            tls,
        })
    }

    /// Parse a comma-separated list, as given to repeatable `--url` flags.
    pub(super) fn parse_list(texts: &[String]) -> anyhow::Result<Vec<WsUrl>> {
        let urls: Vec<WsUrl> = texts
            .iter()
            .flat_map(|t| t.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(WsUrl::parse)
            .collect::<Result<_, _>>()?;
        if urls.is_empty() {
            bail!("--url: give at least one ws://IP:PORT/PATH or wss://IP:PORT/PATH");
        }
        Ok(urls)
    }
}

/// One data message or a sign that the connection ended.
#[derive(Debug)]
pub(super) enum Incoming<'a> {
    /// The payload of a text message.
    Text(&'a [u8]),
    /// The server closed the connection (close frame or EOF).
    Closed,
}

/// An upgraded WebSocket connection speaking `firetower.json`.
#[derive(Debug)]
pub(super) struct WsConn {
    stream: Stream,
    buf: BytesMut,
}

impl WsConn {
    /// Connect from `source` (port chosen by the kernel) and upgrade.
    pub(super) async fn connect(url: &WsUrl, source: Option<Ipv4Addr>) -> anyhow::Result<WsConn> {
        Self::connect_with(url, source, Some("firetower.json")).await
    }

    /// Like [`WsConn::connect`], asking for `protocol` (`Sec-WebSocket-Protocol`) or none.
    pub(super) async fn connect_with(
        url: &WsUrl,
        source: Option<Ipv4Addr>,
        protocol: Option<&str>,
    ) -> anyhow::Result<WsConn> {
        tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            Self::connect_inner(url, source, protocol),
        )
        .await
        .map_err(|_| anyhow!("connect to {} timed out", url.addr))?
    }

    async fn connect_inner(
        url: &WsUrl,
        source: Option<Ipv4Addr>,
        protocol: Option<&str>,
    ) -> anyhow::Result<WsConn> {
        let tcp = tcp_connect(url.addr, source).await?;
        let mut stream = match (url.tls, TLS.get()) {
            (false, _) => Stream::Plain(tcp),
            (true, Some(config)) => Stream::tls(tcp, url.addr.ip().into(), config.clone())
                .await
                .with_context(|| format!("TLS handshake with {}", url.addr))?,
            (true, None) => bail!("wss:// needs --ca FILE"),
        };
        let key_bytes: [u8; 16] = rand::random();
        let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
        let protocol = protocol
            .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n",
            url.path, url.addr
        );
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        let head_len = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_RESPONSE_HEAD {
                bail!("upgrade response head larger than {MAX_RESPONSE_HEAD} bytes");
            }
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("gateway closed the connection during the upgrade");
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let status = head.lines().next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused: {status:?}");
        }
        let expected = ws::accept_key(&key);
        let accepted = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(name, value)| {
                name.eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == expected
            })
        });
        if !accepted {
            bail!("upgrade response lacks the right Sec-WebSocket-Accept");
        }
        let _ = buf.split_to(head_len);
        Ok(WsConn { stream, buf })
    }

    /// Send one text or binary message (masked, as a client must).
    pub(super) async fn send_message(
        &mut self,
        opcode: Opcode,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        let frame = ws::encode_frame(true, opcode, payload, Some(rand::random()));
        self.stream.write_all(&frame).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Read at least one frame and hand every complete text message buffered to `on_message`;
    /// `Incoming::Closed` is handed over once when the server goes away. Pings are answered.
    /// Returns false once closed.
    pub(super) async fn read_batch(
        &mut self,
        mut on_message: impl FnMut(Incoming<'_>),
    ) -> anyhow::Result<bool> {
        loop {
            let mut got_any = false;
            let mut pongs = Vec::new();
            while let Some(frame) = ws::decode_frame(&mut self.buf, MAX_FRAME, Role::Client)
                .map_err(|e| anyhow!("bad frame from the gateway: {e}"))?
            {
                got_any = true;
                match frame.opcode {
                    Opcode::Text | Opcode::Binary => on_message(Incoming::Text(&frame.payload)),
                    Opcode::Ping => pongs.push(frame.payload),
                    Opcode::Close => {
                        on_message(Incoming::Closed);
                        return Ok(false);
                    }
                    Opcode::Pong | Opcode::Continuation => {}
                }
            }
            for p in pongs {
                let frame = ws::encode_frame(true, Opcode::Pong, &p, Some(rand::random()));
                self.stream.write_all(&frame).await?;
                self.stream.flush().await?;
            }
            if got_any {
                return Ok(true);
            }
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(READ_BUFFER);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                on_message(Incoming::Closed);
                return Ok(false);
            }
        }
    }

    /// Give back the read buffer while nothing is buffered: an idle connection then holds
    /// no buffer at all (the next read allocates one).
    pub(super) fn release_buffer(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Split into a reader and a writer that run in separate tasks (the publisher).
    pub(super) fn into_split(self) -> (WsReader, WsWriter) {
        let (read, write): (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
        ) = match self.stream {
            Stream::Plain(tcp) => {
                let (r, w) = tcp.into_split();
                (Box::new(r), Box::new(w))
            }
            tls @ Stream::Tls(_) => {
                let (r, w) = tokio::io::split(tls);
                (Box::new(r), Box::new(w))
            }
        };
        (
            WsReader {
                read,
                buf: self.buf,
            },
            WsWriter { write },
        )
    }
}

/// The receiving half of a split [`WsConn`]. Pings are ignored (the publisher is never idle).
pub(super) struct WsReader {
    read: Box<dyn AsyncRead + Send + Unpin>,
    buf: BytesMut,
}

impl std::fmt::Debug for WsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsReader").finish_non_exhaustive()
    }
}

impl WsReader {
    /// Like [`WsConn::read_batch`].
    pub(super) async fn read_batch(
        &mut self,
        mut on_message: impl FnMut(Incoming<'_>),
    ) -> anyhow::Result<bool> {
        loop {
            let mut got_any = false;
            while let Some(frame) = ws::decode_frame(&mut self.buf, MAX_FRAME, Role::Client)
                .map_err(|e| anyhow!("bad frame from the gateway: {e}"))?
            {
                got_any = true;
                match frame.opcode {
                    Opcode::Text | Opcode::Binary => on_message(Incoming::Text(&frame.payload)),
                    Opcode::Close => {
                        on_message(Incoming::Closed);
                        return Ok(false);
                    }
                    _ => {}
                }
            }
            if got_any {
                return Ok(true);
            }
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(READ_BUFFER);
            }
            if self.read.read_buf(&mut self.buf).await? == 0 {
                on_message(Incoming::Closed);
                return Ok(false);
            }
        }
    }
}

/// The sending half of a split [`WsConn`].
pub(super) struct WsWriter {
    write: Box<dyn AsyncWrite + Send + Unpin>,
}

impl std::fmt::Debug for WsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsWriter").finish_non_exhaustive()
    }
}

impl WsWriter {
    /// Send one text or binary message.
    pub(super) async fn send_message(
        &mut self,
        opcode: Opcode,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        let frame = ws::encode_frame(true, opcode, payload, Some(rand::random()));
        self.write.write_all(&frame).await?;
        self.write.flush().await?;
        Ok(())
    }
}

/// A TCP connection to `addr` from `source` (port chosen by the kernel), Nagle off.
pub(super) async fn tcp_connect(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
) -> anyhow::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        // Binding first is what lets more than one source address share a destination:
        // each source IP has its own ephemeral port range.
        socket
            .bind(SocketAddr::new(IpAddr::V4(ip), 0))
            .with_context(|| format!("cannot bind source address {ip}"))?;
    }
    socket.set_nodelay(true)?;
    socket
        .connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// Position of `needle` in `haystack`.
pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The unsigned integer that follows `key` (for example `"seq":`) in a JSON text.
pub(super) fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let start = find(text, key)? + key.len();
    let digits = text[start..].iter().take_while(|b| b.is_ascii_digit());
    let mut n: u64 = 0;
    let mut any = false;
    for d in digits {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = WsUrl::parse("ws://127.0.0.1:9090/ws").unwrap();
        assert_eq!(u.addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(u.path, "/ws");
        assert_eq!(WsUrl::parse("ws://127.0.0.2:1").unwrap().path, "/ws");
        // wss:// without --ca.
        assert!(WsUrl::parse("wss://127.0.0.1:9090/ws").is_err());
        assert!(WsUrl::parse("ws://localhost:9090/ws").is_err());
        let list = WsUrl::parse_list(&[
            "ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws".into(),
            "ws://127.0.0.1:3".into(),
        ])
        .unwrap();
        assert_eq!(list.len(), 3);
    }

    #[test]
    fn finds_numbers_after_keys() {
        let m = br#"{"op":"message","topic":"t","data":{"ft_ts":123,"pad":"x"},"term":2,"seq":42}"#;
        assert_eq!(number_after(m, b"\"ft_ts\":"), Some(123));
        assert_eq!(number_after(m, b"\"seq\":"), Some(42));
        assert_eq!(number_after(m, b"\"term\":"), Some(2));
        assert_eq!(number_after(m, b"\"nope\":"), None);
    }
}
