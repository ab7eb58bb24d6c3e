//! Per-system client adapters, so one set of scenarios drives Firetower and the systems users
//! would otherwise run (`--system firetower|nats|redis|node-ws`):
//!
//! ```text
//!   system     transport            subscribe (waits for)        publish (ack)          delivery
//!   firetower  WebSocket, JSON      {"op":"subscribe"} (ack)     {"op":"publish"} (ack) {"op":"message",..}
//!   node-ws    WebSocket, JSON      the same: scripts/bench/peers/ws-broadcast.js speaks Firetower's protocol
//!   nats       WebSocket, NATS text SUB s 1 + PING (PONG)        PUB s n (+OK, verbose) MSG s 1 n
//!   redis      TCP, RESP            SUBSCRIBE s (confirmation)   PUBLISH s d (:count)   ["message",s,d]
//! ```
//!
//! A connection turns what it reads into [`Event`]s: a delivery (with the bytes that hold the
//! scenario's `ft_ts`), an ack, a pong, an error, or the end. Firetower and node-ws messages are
//! whole WebSocket messages and are classified in place (the Firetower path costs what it did
//! before the adapters); NATS and RESP are byte streams, parsed from a per-connection buffer
//! that is released while empty. Every length read from the network is bounded; bad input is
//! an error for that connection, never a panic.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Buf, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::client::{find, tcp_connect, Incoming, Opcode, WsConn, WsReader, WsUrl, WsWriter};

/// Time for the connect handshake or a subscribe to be answered.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest NATS protocol line (the `MSG` head, `INFO`, `-ERR`).
const MAX_LINE: usize = 8 * 1024;
/// Largest message payload or bulk string accepted from a server.
const MAX_PAYLOAD: usize = 1024 * 1024;
/// Largest RESP array accepted (pub/sub replies have 3 elements).
const MAX_ARRAY: i64 = 16;
/// Read buffer growth step of the stream protocols.
const READ_CHUNK: usize = 4 * 1024;

/// The system a scenario drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum System {
    /// A Firetower gateway (`ws://IP:PORT/ws`, `firetower.json`).
    Firetower,
    /// nats-server's WebSocket listener (`ws://IP:PORT`), NATS text protocol.
    Nats,
    /// redis-server pub/sub over plain TCP (`redis://IP:PORT`).
    Redis,
    /// The Node.js `ws` broadcast server of scripts/bench/peers (Firetower's JSON protocol).
    NodeWs,
}

impl System {
    /// The name used on the command line and in reports.
    pub(super) fn name(self) -> &'static str {
        match self {
            System::Firetower => "firetower",
            System::Nats => "nats",
            System::Redis => "redis",
            System::NodeWs => "node-ws",
        }
    }

    /// Whether the system speaks Firetower's JSON client protocol.
    fn firetower_json(self) -> bool {
        matches!(self, System::Firetower | System::NodeWs)
    }

    /// Parse an address for this system: `ws://IP:PORT/PATH`, or `redis://IP:PORT` for Redis.
    pub(super) fn parse_url(self, text: &str) -> anyhow::Result<WsUrl> {
        if self != System::Redis {
            return WsUrl::parse(text);
        }
        let t = text.trim();
        let rest = t
            .strip_prefix("redis://")
            .or_else(|| t.strip_prefix("tcp://"))
            .ok_or_else(|| anyhow!("{text:?}: expected redis://IP:PORT for --system redis"))?;
        let authority = rest.trim_end_matches('/');
        let addr: SocketAddr = authority.parse().with_context(|| {
            format!("{text:?}: expected a literal IP:PORT, like redis://127.0.0.1:6379")
        })?;
        Ok(WsUrl {
            addr,
            path: String::new(),
            tls: false,
        })
    }

    /// Parse a comma-separated list of addresses (repeatable flags).
    pub(super) fn parse_urls(self, texts: &[String]) -> anyhow::Result<Vec<WsUrl>> {
        if self != System::Redis {
            return WsUrl::parse_list(texts);
        }
        let urls: Vec<WsUrl> = texts
            .iter()
            .flat_map(|t| t.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| self.parse_url(t))
            .collect::<Result<_, _>>()?;
        if urls.is_empty() {
            bail!("--url: give at least one address");
        }
        Ok(urls)
    }

    /// The address in the form it was given (for reports).
    pub(super) fn show_url(self, url: &WsUrl) -> String {
        match self {
            System::Redis => format!("redis://{}", url.addr),
            _ => format!("ws://{}{}", url.addr, url.path),
        }
    }

    /// Write into `out` the bytes that publish `data` (a JSON value) to `topic`; `id` is the
    /// publish's number (used by Firetower's JSON protocol for the ack).
    pub(super) fn publish_frame(self, out: &mut Vec<u8>, topic: &str, data: &[u8], id: u64) {
        use std::io::Write;
        out.clear();
        // Writing to a Vec cannot fail.
        match self {
            System::Firetower | System::NodeWs => {
                let _ = write!(out, "{{\"op\":\"publish\",\"topic\":\"{topic}\",\"data\":");
                out.extend_from_slice(data);
                let _ = write!(out, ",\"id\":{id}}}");
            }
            System::Nats => {
                let _ = write!(out, "PUB {topic} {}\r\n", data.len());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
            System::Redis => {
                let _ = write!(
                    out,
                    "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{topic}\r\n${}\r\n",
                    topic.len(),
                    data.len()
                );
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// Whether a topic name can be used unchanged by every system (no spaces, no wildcards, no
/// JSON escapes): letters, digits, `.`, `-`, `_`, at most 256 bytes.
pub(super) fn check_topic(topic: &str) -> anyhow::Result<()> {
    let ok = !topic.is_empty()
        && topic.len() <= 256
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        && !topic.starts_with('.')
        && !topic.ends_with('.')
        && !topic.contains("..");
    if !ok {
        bail!(
            "topic {topic:?}: use letters, digits, '.', '-', '_' (dot-separated, no empty parts)"
        );
    }
    Ok(())
}

/// What a connection read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event<'a> {
    /// A message delivered to a subscription: Firetower's whole `{"op":"message",...}` text, or
    /// the published payload for NATS and Redis.
    Delivery(&'a [u8]),
    /// A request was acknowledged (subscribe or publish).
    Ack,
    /// A PONG (NATS, Redis): everything sent before the PING was processed.
    Pong,
    /// The server refused a request.
    Error(&'a [u8]),
    /// The server closed the connection.
    Closed,
}

/// The transport of a connection.
#[derive(Debug)]
enum Io {
    Ws(WsConn),
    Tcp(TcpStream),
}

/// A connection to one of the systems, connected (and, for NATS and Redis, greeted).
#[derive(Debug)]
pub(super) struct PeerConn {
    system: System,
    io: Io,
    /// Bytes of the stream protocols not parsed yet (NATS over WebSocket messages, RESP).
    pending: BytesMut,
}

impl PeerConn {
    /// Connect from `source`. A `publisher` connection to NATS asks for `verbose` mode so
    /// every PUB is answered with `+OK`, which the publisher counts as its ack.
    pub(super) async fn connect(
        system: System,
        url: &WsUrl,
        source: Option<Ipv4Addr>,
        publisher: bool,
    ) -> anyhow::Result<PeerConn> {
        let io = match system {
            System::Firetower | System::NodeWs => Io::Ws(WsConn::connect(url, source).await?),
            System::Nats => Io::Ws(WsConn::connect_with(url, source, None).await?),
            System::Redis => Io::Tcp(
                tokio::time::timeout(REPLY_TIMEOUT, tcp_connect(url.addr, source))
                    .await
                    .map_err(|_| anyhow!("connect to {} timed out", url.addr))??,
            ),
        };
        let mut conn = PeerConn {
            system,
            io,
            pending: BytesMut::new(),
        };
        match system {
            System::Firetower | System::NodeWs => {}
            System::Nats => {
                // The server's INFO comes first and is skipped by the parser; CONNECT may be
                // sent before reading it. The PONG proves the CONNECT was accepted.
                let connect = format!(
                    "CONNECT {{\"verbose\":{publisher},\"pedantic\":false,\"lang\":\"rust\",\
                     \"version\":\"0.1.0\",\"protocol\":1,\"name\":\"firetower-bench\"}}\r\nPING\r\n"
                );
                conn.send(connect.as_bytes()).await?;
                conn.expect(Event::Pong, "the NATS CONNECT").await?;
            }
            System::Redis => {
                conn.send(b"*1\r\n$4\r\nPING\r\n").await?;
                conn.expect(Event::Pong, "the Redis PING").await?;
            }
        }
        conn.release_buffer();
        Ok(conn)
    }

    /// Subscribe to `topic` and wait until the server confirms it.
    pub(super) async fn subscribe(&mut self, topic: &str) -> anyhow::Result<()> {
        match self.system {
            System::Firetower | System::NodeWs => {
                let request = format!("{{\"op\":\"subscribe\",\"topics\":[\"{topic}\"],\"id\":1}}");
                self.send(request.as_bytes()).await?;
                self.expect(Event::Ack, "subscribe").await?;
            }
            System::Nats => {
                // SUB is never answered with verbose off; the PONG after it proves it was
                // processed (the server handles a connection's input in order).
                self.send(format!("SUB {topic} 1\r\nPING\r\n").as_bytes())
                    .await?;
                self.expect(Event::Pong, "SUB").await?;
            }
            System::Redis => {
                let request = format!("*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{topic}\r\n", topic.len());
                self.send(request.as_bytes()).await?;
                self.expect(Event::Ack, "SUBSCRIBE").await?;
            }
        }
        self.release_buffer();
        Ok(())
    }

    /// Send bytes as one message (WebSocket) or as they are (TCP).
    pub(super) async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match &mut self.io {
            Io::Ws(ws) => ws.send_message(ws_opcode(self.system), bytes).await,
            Io::Tcp(s) => Ok(s.write_all(bytes).await?),
        }
    }

    /// Read until `want` arrives (or fail on an error, the end, or the timeout).
    async fn expect(&mut self, want: Event<'static>, what: &str) -> anyhow::Result<()> {
        let wait = async {
            loop {
                let mut outcome: Option<anyhow::Result<()>> = None;
                let open = self
                    .read_batch(|e| {
                        if outcome.is_some() {
                            return;
                        }
                        match e {
                            Event::Error(t) => {
                                outcome = Some(Err(anyhow!(
                                    "{what} refused: {}",
                                    String::from_utf8_lossy(&t[..t.len().min(200)])
                                )))
                            }
                            Event::Closed => {
                                outcome = Some(Err(anyhow!(
                                    "connection closed before {what} was answered"
                                )))
                            }
                            e if e == want => outcome = Some(Ok(())),
                            _ => {}
                        }
                    })
                    .await?;
                if let Some(o) = outcome {
                    return o;
                }
                if !open {
                    bail!("connection closed before {what} was answered");
                }
            }
        };
        tokio::time::timeout(REPLY_TIMEOUT, wait)
            .await
            .map_err(|_| anyhow!("no answer to {what} within {REPLY_TIMEOUT:?}"))?
    }

    /// Read at least once and hand every complete event to `on_event`; `Event::Closed` once
    /// when the server goes away. WebSocket pings and NATS PINGs are answered. Returns false
    /// once closed.
    pub(super) async fn read_batch(
        &mut self,
        mut on_event: impl FnMut(Event<'_>),
    ) -> anyhow::Result<bool> {
        let system = self.system;
        match &mut self.io {
            Io::Ws(ws) if system.firetower_json() => {
                ws.read_batch(|m| match m {
                    Incoming::Text(t) => {
                        if let Some(e) = json_event(t) {
                            on_event(e);
                        }
                    }
                    Incoming::Closed => on_event(Event::Closed),
                })
                .await
            }
            Io::Ws(ws) => {
                let pending = &mut self.pending;
                let mut closed = false;
                let open = ws
                    .read_batch(|m| match m {
                        Incoming::Text(t) => pending.extend_from_slice(t),
                        Incoming::Closed => closed = true,
                    })
                    .await?;
                let pings = nats_events(pending, &mut on_event)?;
                for _ in 0..pings.min(4) {
                    ws.send_message(Opcode::Binary, b"PONG\r\n").await?;
                }
                if closed {
                    on_event(Event::Closed);
                }
                Ok(open)
            }
            Io::Tcp(stream) => {
                let pending = &mut self.pending;
                loop {
                    if resp_events(pending, &mut on_event)? {
                        return Ok(true);
                    }
                    reserve(pending)?;
                    if stream.read_buf(pending).await? == 0 {
                        on_event(Event::Closed);
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Give back buffers while nothing is buffered (an idle connection holds none).
    pub(super) fn release_buffer(&mut self) {
        if self.pending.is_empty() {
            self.pending = BytesMut::new();
        }
        if let Io::Ws(ws) = &mut self.io {
            ws.release_buffer();
        }
    }

    /// Split into a reader and a writer for separate tasks (the publisher).
    pub(super) fn into_split(self) -> (PeerReader, PeerWriter) {
        let system = self.system;
        match self.io {
            Io::Ws(ws) => {
                let (r, w) = ws.into_split();
                (
                    PeerReader {
                        system,
                        io: ReadIo::Ws(r),
                        pending: self.pending,
                    },
                    PeerWriter {
                        system,
                        io: WriteIo::Ws(w),
                    },
                )
            }
            Io::Tcp(s) => {
                let (r, w) = s.into_split();
                (
                    PeerReader {
                        system,
                        io: ReadIo::Tcp(r),
                        pending: self.pending,
                    },
                    PeerWriter {
                        system,
                        io: WriteIo::Tcp(w),
                    },
                )
            }
        }
    }
}

#[derive(Debug)]
enum ReadIo {
    Ws(WsReader),
    Tcp(OwnedReadHalf),
}

/// The receiving half of a split [`PeerConn`]; pings are not answered (the publisher is never
/// idle for long).
#[derive(Debug)]
pub(super) struct PeerReader {
    system: System,
    io: ReadIo,
    pending: BytesMut,
}

impl PeerReader {
    /// Like [`PeerConn::read_batch`].
    pub(super) async fn read_batch(
        &mut self,
        mut on_event: impl FnMut(Event<'_>),
    ) -> anyhow::Result<bool> {
        let system = self.system;
        match &mut self.io {
            ReadIo::Ws(ws) if system.firetower_json() => {
                ws.read_batch(|m| match m {
                    Incoming::Text(t) => {
                        if let Some(e) = json_event(t) {
                            on_event(e);
                        }
                    }
                    Incoming::Closed => on_event(Event::Closed),
                })
                .await
            }
            ReadIo::Ws(ws) => {
                let pending = &mut self.pending;
                let mut closed = false;
                let open = ws
                    .read_batch(|m| match m {
                        Incoming::Text(t) => pending.extend_from_slice(t),
                        Incoming::Closed => closed = true,
                    })
                    .await?;
                nats_events(pending, &mut on_event)?;
                if closed {
                    on_event(Event::Closed);
                }
                Ok(open)
            }
            ReadIo::Tcp(read) => {
                let pending = &mut self.pending;
                loop {
                    if resp_events(pending, &mut on_event)? {
                        return Ok(true);
                    }
                    reserve(pending)?;
                    if read.read_buf(pending).await? == 0 {
                        on_event(Event::Closed);
                        return Ok(false);
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
enum WriteIo {
    Ws(WsWriter),
    Tcp(OwnedWriteHalf),
}

/// The sending half of a split [`PeerConn`].
#[derive(Debug)]
pub(super) struct PeerWriter {
    system: System,
    io: WriteIo,
}

impl PeerWriter {
    /// Send bytes as one message (WebSocket) or as they are (TCP).
    pub(super) async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match &mut self.io {
            WriteIo::Ws(w) => w.send_message(ws_opcode(self.system), bytes).await,
            WriteIo::Tcp(w) => Ok(w.write_all(bytes).await?),
        }
    }
}

fn ws_opcode(system: System) -> Opcode {
    if system.firetower_json() {
        Opcode::Text
    } else {
        Opcode::Binary
    }
}

/// Make room to read into a stream buffer, refusing to grow past what one unit may need.
fn reserve(buf: &mut BytesMut) -> anyhow::Result<()> {
    if buf.len() > MAX_PAYLOAD + MAX_LINE {
        bail!("the server sent a unit larger than {MAX_PAYLOAD} bytes");
    }
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(READ_CHUNK);
    }
    Ok(())
}

/// Classify one Firetower JSON message by its prefix (the gateway writes `op` first); other
/// messages are nothing the scenarios wait for.
fn json_event(text: &[u8]) -> Option<Event<'_>> {
    if text.starts_with(b"{\"op\":\"message\"") {
        Some(Event::Delivery(text))
    } else if text.starts_with(b"{\"op\":\"ack\"") {
        Some(Event::Ack)
    } else if text.starts_with(b"{\"op\":\"pong\"") {
        Some(Event::Pong)
    } else if text.starts_with(b"{\"op\":\"error\"") {
        Some(Event::Error(text))
    } else {
        None
    }
}

/// Parse complete NATS protocol units from `buf`, hand them over, and consume them. Returns
/// the number of PINGs seen (each needs a PONG).
fn nats_events(buf: &mut BytesMut, on_event: &mut impl FnMut(Event<'_>)) -> anyhow::Result<usize> {
    let mut pings = 0;
    loop {
        let Some(eol) = find(&buf[..buf.len().min(MAX_LINE + 2)], b"\r\n") else {
            if buf.len() > MAX_LINE {
                bail!("NATS protocol line longer than {MAX_LINE} bytes");
            }
            return Ok(pings);
        };
        let line = &buf[..eol];
        if line.starts_with(b"MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let size = line
                .rsplit(|b| *b == b' ')
                .next()
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n <= MAX_PAYLOAD)
                .ok_or_else(|| anyhow!("bad NATS MSG line {:?}", lossy(line)))?;
            let total = eol + 2 + size + 2;
            if buf.len() < total {
                return Ok(pings);
            }
            if &buf[total - 2..total] != b"\r\n" {
                bail!("NATS MSG payload not followed by CRLF");
            }
            on_event(Event::Delivery(&buf[eol + 2..eol + 2 + size]));
            buf.advance(total);
            continue;
        }
        if line == b"PING" {
            pings += 1;
        } else if line == b"PONG" {
            on_event(Event::Pong);
        } else if line == b"+OK" {
            on_event(Event::Ack);
        } else if line.starts_with(b"-ERR") {
            on_event(Event::Error(line));
        }
        // INFO and anything else: nothing the scenarios wait for.
        buf.advance(eol + 2);
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()
}

/// One RESP element the pub/sub replies are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int,
    Bulk(Option<&'a [u8]>),
    Array(i64),
}

/// Parse one element at `pos`: `Ok(None)` while incomplete. Arrays are returned as their
/// length (their elements follow).
fn resp_elem(buf: &[u8], pos: usize) -> anyhow::Result<Option<(Elem<'_>, usize)>> {
    let rest = &buf[pos..];
    let Some(eol) = find(&rest[..rest.len().min(MAX_LINE + 2)], b"\r\n") else {
        if rest.len() > MAX_LINE {
            bail!("RESP line longer than {MAX_LINE} bytes");
        }
        return Ok(None);
    };
    let Some((&kind, body)) = rest[..eol].split_first() else {
        bail!("empty RESP line");
    };
    let number = || -> anyhow::Result<i64> {
        std::str::from_utf8(body)
            .ok()
            .and_then(|n| n.parse::<i64>().ok())
            .ok_or_else(|| anyhow!("bad RESP number {:?}", lossy(body)))
    };
    let after = pos + eol + 2;
    let elem = match kind {
        b'+' => Elem::Simple(body),
        b'-' => Elem::Error(body),
        b':' => {
            number()?;
            Elem::Int
        }
        b'$' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Elem::Bulk(None), after)));
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_PAYLOAD)
                .ok_or_else(|| anyhow!("RESP bulk string too large"))?;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            if &buf[after + n..after + n + 2] != b"\r\n" {
                bail!("RESP bulk string not followed by CRLF");
            }
            return Ok(Some((
                Elem::Bulk(Some(&buf[after..after + n])),
                after + n + 2,
            )));
        }
        b'*' => {
            let n = number()?;
            if n > MAX_ARRAY {
                bail!("RESP array of {n} elements (at most {MAX_ARRAY} expected)");
            }
            Elem::Array(n)
        }
        other => bail!("unexpected RESP type byte {other:#04x}"),
    };
    Ok(Some((elem, after)))
}

/// Parse complete RESP replies from `buf`, hand them over, and consume them. Returns whether
/// any was complete.
fn resp_events(buf: &mut BytesMut, on_event: &mut impl FnMut(Event<'_>)) -> anyhow::Result<bool> {
    let mut any = false;
    loop {
        let Some((top, mut pos)) = resp_elem(buf, 0)? else {
            return Ok(any);
        };
        match top {
            Elem::Simple(s) if s.eq_ignore_ascii_case(b"PONG") => on_event(Event::Pong),
            Elem::Simple(_) | Elem::Int => on_event(Event::Ack),
            Elem::Error(e) => on_event(Event::Error(e)),
            Elem::Bulk(_) => {}
            Elem::Array(n) => {
                // Pub/sub pushes: ["message", channel, payload], ["subscribe", channel, count],
                // ["pong", ""] (PING while subscribed). Keep the first three elements.
                let mut first: [Option<Elem<'_>>; 3] = [None; 3];
                let mut complete = true;
                for i in 0..n.max(0) as usize {
                    match resp_elem(buf, pos)? {
                        Some((Elem::Array(_), _)) => bail!("nested RESP arrays are not expected"),
                        Some((e, next)) => {
                            if let Some(slot) = first.get_mut(i) {
                                *slot = Some(e);
                            }
                            pos = next;
                        }
                        None => {
                            complete = false;
                            break;
                        }
                    }
                }
                if !complete {
                    return Ok(any);
                }
                let kind = match first[0] {
                    Some(Elem::Bulk(Some(k))) => k,
                    _ => b"",
                };
                if kind == b"message" {
                    if let Some(Elem::Bulk(Some(payload))) = first[2] {
                        on_event(Event::Delivery(payload));
                    }
                } else if kind == b"subscribe" {
                    on_event(Event::Ack);
                } else if kind == b"pong" {
                    on_event(Event::Pong);
                }
            }
        }
        any = true;
        buf.advance(pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect_nats(input: &[u8]) -> (Vec<String>, usize, usize) {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        let pings = nats_events(&mut buf, &mut |e| out.push(format!("{e:?}"))).unwrap();
        (out, pings, buf.len())
    }

    #[test]
    fn nats_units_and_partial_input() {
        let (ev, pings, left) = collect_nats(
            b"INFO {\"server_id\":\"x\"}\r\n+OK\r\nPONG\r\nPING\r\nMSG a.b 1 5\r\nhello\r\nMSG a.b 1 r 2\r\nhi\r\nMSG a 1 10\r\nabc",
        );
        assert_eq!(pings, 1);
        assert_eq!(
            ev,
            vec![
                "Ack",
                "Pong",
                "Delivery([104, 101, 108, 108, 111])",
                "Delivery([104, 105])"
            ]
        );
        assert_eq!(left, b"MSG a 1 10\r\nabc".len());
        let (ev, _, _) = collect_nats(b"-ERR 'Unknown Protocol Operation'\r\n");
        assert!(ev[0].starts_with("Error"));
        // Bad input is an error, not a panic.
        let mut buf = BytesMut::from(&b"MSG a 1 zz\r\n"[..]);
        assert!(nats_events(&mut buf, &mut |_| {}).is_err());
        let mut buf = BytesMut::from(&b"MSG a 1 99999999999\r\n"[..]);
        assert!(nats_events(&mut buf, &mut |_| {}).is_err());
        let mut buf = BytesMut::from(&b"MSG a 1 2\r\nhiXX"[..]);
        assert!(nats_events(&mut buf, &mut |_| {}).is_err());
        let mut buf = BytesMut::from(&vec![b'x'; MAX_LINE + 10][..]);
        assert!(nats_events(&mut buf, &mut |_| {}).is_err());
    }

    #[test]
    fn resp_pubsub_replies() {
        let mut buf = BytesMut::from(
            &b"+PONG\r\n*3\r\n$9\r\nsubscribe\r\n$3\r\nt.1\r\n:1\r\n:10000\r\n*3\r\n$7\r\nmessage\r\n$3\r\nt.1\r\n$4\r\n{\"a\"\r\n-ERR wrong\r\n*3\r\n$7\r\nmessage\r\n$3\r\nt.1\r\n$10\r\n12"[..],
        );
        let mut out = Vec::new();
        assert!(resp_events(&mut buf, &mut |e| out.push(format!("{e:?}"))).unwrap());
        assert_eq!(out.len(), 5, "{out:?}");
        assert_eq!(out[0], "Pong");
        assert_eq!(out[1], "Ack");
        assert_eq!(out[2], "Ack");
        assert_eq!(out[3], format!("{:?}", Event::Delivery(b"{\"a\"")));
        assert!(out[4].starts_with("Error"));
        // The incomplete message stays buffered whole.
        assert!(buf.starts_with(b"*3\r\n$7\r\nmessage"));
        for bad in [
            &b"?x\r\n"[..],
            b"$99999999999\r\n",
            b"*100\r\n",
            b"*1\r\n*1\r\n:1\r\n",
            b":x\r\n",
            b"$2\r\nabcd\r\n",
            b"\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(resp_events(&mut buf, &mut |_| {}).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn publish_frames() {
        let mut out = Vec::new();
        System::Nats.publish_frame(&mut out, "a.b", b"{\"x\":1}", 3);
        assert_eq!(out, b"PUB a.b 7\r\n{\"x\":1}\r\n");
        System::Redis.publish_frame(&mut out, "a.b", b"{}", 3);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$3\r\na.b\r\n$2\r\n{}\r\n");
        System::NodeWs.publish_frame(&mut out, "a.b", b"{}", 3);
        assert_eq!(out, br#"{"op":"publish","topic":"a.b","data":{},"id":3}"#);
    }

    #[test]
    fn urls_and_topics() {
        assert_eq!(
            System::Redis
                .parse_url("redis://127.0.0.1:6379")
                .unwrap()
                .addr,
            "127.0.0.1:6379".parse().unwrap()
        );
        assert!(System::Redis.parse_url("ws://127.0.0.1:1/ws").is_err());
        assert!(System::Redis.parse_url("redis://localhost:6379").is_err());
        assert!(System::Nats.parse_url("redis://127.0.0.1:1").is_err());
        assert_eq!(
            System::Nats
                .parse_urls(&["ws://127.0.0.1:1,ws://127.0.0.1:2".into()])
                .unwrap()
                .len(),
            2
        );
        assert!(check_topic("bench.fanout.0a1b").is_ok());
        for bad in ["", "a b", "a.*", "a..b", ".a", "a\"b", "a>"] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
        assert_eq!(json_event(br#"{"op":"ack","id":1}"#), Some(Event::Ack));
        assert!(matches!(
            json_event(br#"{"op":"message","topic":"t"}"#),
            Some(Event::Delivery(_))
        ));
        assert_eq!(json_event(br#"{"op":"other"}"#), None);
    }
}
