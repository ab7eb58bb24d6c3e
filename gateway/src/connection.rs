//! One client connection: its send queue, its limits, and the task that moves bytes.
//!
//! ```text
//!   fan-out, acks ──push──▶ SendQueue (bounded: messages + bytes; shared Bytes frames)
//!                               │ take() swaps the whole queue out, O(1)
//!                               ▼
//!   one task per connection: select { socket writable, socket readable, queue notified,
//!                                     timer (idle ping / pong deadline / close deadline),
//!                                     gateway shutdown }
//!        readable ─▶ decode (ws.rs / tcp.rs) ─▶ ClientFrame ─▶ index / upstream / reply
//! ```
//!
//! Memory per idle connection is the budget this file is written around: the read buffer is
//! allocated when bytes arrive and released when every byte is consumed, the queue's
//! `VecDeque` is released when drained, the socket is polled through readiness (`readable()`,
//! `try_read`) so no read future holds a buffer while the client is silent, and replies go
//! through the same queue as messages (no per-connection channel).
//!
//! Slow consumers: a message that does not fit the queue is dropped for that connection
//! (counted). After `slow_consumer_drops` consecutive drops, or a queue full for
//! `slow_consumer_grace`, the connection is closed with 1008 (see `docs/gateway.md`).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use firetower_client::http::{parse_request_head, MAX_REQUEST_HEAD};
use firetower_client::tcp;
use firetower_client::ws::{self, close_code, Message, MessageAssembler, Opcode, Role, WsError};
use firetower_client::{ClientFrame, Flavour, ParseError, ServerFrame};

use crate::config::ConnectionLimits;
use crate::http;
use crate::index::{ConnId, IndexError};
use crate::metrics::inc;
use crate::server::{apply, lock, spawn_guarded, Shared};
use crate::upstream::UpstreamError;

/// Smallest read: enough for a typical client frame in one `read`.
const READ_CHUNK: usize = 2 * 1024;
/// Growth step of the buffer that receives an HTTP request head. A WebSocket upgrade request
/// is a few hundred bytes; small steps keep the memory an idle connection leaves behind in
/// the allocator (freed, but not returned to the system) small.
const HEAD_CHUNK: usize = 512;
/// Most frames handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// How frames reach a client: the encoding (flavour) and the framing (WebSocket or TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// WebSocket text messages holding JSON (`firetower.json`).
    WsJson,
    /// WebSocket binary messages holding protobuf (`firetower.proto`).
    WsProto,
    /// Raw TCP: 4-byte length + protobuf.
    Tcp,
}

impl Wire {
    /// Every wire, for per-wire caches indexed by [`Wire::index`].
    pub const ALL: [Wire; 3] = [Wire::WsJson, Wire::WsProto, Wire::Tcp];

    /// A dense index (0..3).
    pub fn index(self) -> usize {
        match self {
            Wire::WsJson => 0,
            Wire::WsProto => 1,
            Wire::Tcp => 2,
        }
    }

    /// The WebSocket wire of a flavour.
    pub fn websocket(flavour: Flavour) -> Wire {
        match flavour {
            Flavour::Json => Wire::WsJson,
            Flavour::Proto => Wire::WsProto,
        }
    }

    /// The encoding spoken on this wire.
    pub fn flavour(self) -> Flavour {
        match self {
            Wire::WsJson => Flavour::Json,
            Wire::WsProto | Wire::Tcp => Flavour::Proto,
        }
    }

    /// Encode a server frame into the exact bytes written to the socket.
    pub fn encode(self, frame: &ServerFrame) -> Bytes {
        match self {
            Wire::WsJson => ws::encode_message(Opcode::Text, &frame.encode_json()),
            Wire::WsProto => ws::encode_message(Opcode::Binary, &frame.encode_proto()),
            Wire::Tcp => tcp::encode_frame(&frame.encode_proto()),
        }
    }

    fn parse(self, payload: &[u8]) -> Result<ClientFrame, ParseError> {
        match self.flavour() {
            Flavour::Json => ClientFrame::parse_json(payload),
            Flavour::Proto => ClientFrame::parse_proto(payload),
        }
    }
}

/// Bounds of one connection's send queue and the slow-consumer policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Messages queued at most.
    pub messages: usize,
    /// Bytes queued at most.
    pub bytes: usize,
    /// Consecutive drops that make the connection a slow consumer.
    pub drops_before_disconnect: u32,
    /// Time with a full queue that makes the connection a slow consumer.
    pub grace: Duration,
}

impl QueueLimits {
    /// The queue limits within connection limits.
    pub fn from_limits(l: &ConnectionLimits) -> QueueLimits {
        QueueLimits {
            messages: l.send_queue_messages,
            bytes: l.send_queue_bytes,
            drops_before_disconnect: l.slow_consumer_drops,
            grace: l.slow_consumer_grace,
        }
    }
}

/// What happened to a message offered to a [`SendQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued for sending.
    Queued,
    /// Dropped: the queue is full (or the connection is closing).
    Dropped,
    /// Dropped, and this drop made the connection a slow consumer: it is being closed.
    Disconnect,
}

/// Why the connection task must close, decided outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CloseRequest {
    code: u16,
    reason: &'static str,
}

#[derive(Debug, Default)]
struct QueueState {
    frames: VecDeque<Bytes>,
    bytes: usize,
    consecutive_drops: u32,
    full_since: Option<Instant>,
    close: Option<CloseRequest>,
    closed: bool,
}

/// One connection's bounded send queue, shared by the fan-out (producers) and the connection
/// task (consumer). Frames are final socket bytes, usually shared with every other subscriber.
#[derive(Debug)]
pub struct SendQueue {
    state: Mutex<QueueState>,
    notify: Notify,
    limits: QueueLimits,
}

impl SendQueue {
    /// An empty queue; allocates nothing until the first push.
    pub fn new(limits: QueueLimits) -> SendQueue {
        SendQueue {
            state: Mutex::new(QueueState::default()),
            notify: Notify::new(),
            limits,
        }
    }

    /// Offer a message (droppable under the slow-consumer policy).
    pub fn push_message(&self, frame: Bytes, now: Instant) -> PushOutcome {
        let mut s = lock(&self.state);
        if s.closed || s.close.is_some() {
            return PushOutcome::Dropped;
        }
        let fits =
            s.frames.len() < self.limits.messages && s.bytes + frame.len() <= self.limits.bytes;
        if fits {
            s.consecutive_drops = 0;
            s.full_since = None;
            s.bytes += frame.len();
            s.frames.push_back(frame);
            let first = s.frames.len() == 1;
            drop(s);
            if first {
                self.notify.notify_one();
            }
            return PushOutcome::Queued;
        }
        s.consecutive_drops += 1;
        let full_since = *s.full_since.get_or_insert(now);
        if s.consecutive_drops >= self.limits.drops_before_disconnect
            || now.duration_since(full_since) >= self.limits.grace
        {
            s.close = Some(CloseRequest {
                code: close_code::POLICY_VIOLATION,
                reason: "slow consumer",
            });
            drop(s);
            self.notify.notify_one();
            return PushOutcome::Disconnect;
        }
        PushOutcome::Dropped
    }

    /// Queue a reply (ack, error, pong): never dropped, but a client that lets replies pile up
    /// past twice the queue's limits is not reading and gets closed. Returns false then.
    pub(crate) fn push_reply(&self, frame: Bytes) -> bool {
        let mut s = lock(&self.state);
        if s.closed || s.close.is_some() {
            return false;
        }
        if s.frames.len() >= 2 * self.limits.messages
            || s.bytes + frame.len() > 2 * self.limits.bytes
        {
            s.close = Some(CloseRequest {
                code: close_code::POLICY_VIOLATION,
                reason: "replies not read",
            });
            drop(s);
            self.notify.notify_one();
            return false;
        }
        s.bytes += frame.len();
        s.frames.push_back(frame);
        drop(s);
        self.notify.notify_one();
        true
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        lock(&self.state).frames.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn has_work(&self) -> bool {
        let s = lock(&self.state);
        !s.frames.is_empty() || s.close.is_some()
    }

    /// A close decided outside the connection task, if any: the queue is sealed and emptied.
    fn take_close(&self) -> Option<CloseRequest> {
        let mut s = lock(&self.state);
        let close = s.close.take()?;
        s.closed = true;
        s.frames = VecDeque::new();
        s.bytes = 0;
        Some(close)
    }

    /// Take every queued frame (swapping the deque out), or the close request if any.
    fn take(&self, into: &mut VecDeque<Bytes>) -> Option<CloseRequest> {
        let mut s = lock(&self.state);
        if s.close.is_some() {
            drop(s);
            return self.take_close();
        }
        if into.is_empty() {
            std::mem::swap(into, &mut s.frames);
        } else {
            into.extend(s.frames.drain(..));
            if s.frames.capacity() > 16 {
                s.frames = VecDeque::new();
            }
        }
        s.bytes = 0;
        None
    }

    /// Stop accepting frames; return what was still queued.
    fn seal(&self, into: &mut VecDeque<Bytes>) {
        let mut s = lock(&self.state);
        s.closed = true;
        into.extend(s.frames.drain(..));
        s.frames = VecDeque::new();
        s.bytes = 0;
    }
}

/// A token bucket: `rate` tokens per second, at most `burst`.
#[derive(Debug, Clone)]
struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the server knows of a live connection (registered while its session runs).
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) id: ConnId,
    pub(crate) wire: Wire,
    pub(crate) queue: SendQueue,
    in_flight: AtomicUsize,
}

impl ConnCtx {
    pub(crate) fn reply(&self, frame: &ServerFrame) {
        self.queue.push_reply(self.wire.encode(frame));
    }
}

/// Serve one connection on the HTTP port: read one request, answer it or upgrade it.
pub(crate) async fn serve_http(shared: Arc<Shared>, mut stream: TcpStream, id: ConnId) {
    let limits = &shared.config.limits;
    let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    let mut buf = BytesMut::new();
    let (head, head_len) = loop {
        match parse_request_head(&buf) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) => {}
            Err(e) => {
                inc(&shared.metrics.handshake_failures);
                respond(
                    &mut stream,
                    http::text_response(e.status(), &format!("{e}\n")),
                    limits,
                )
                .await;
                return;
            }
        }
        buf.reserve(
            HEAD_CHUNK
                .min(MAX_REQUEST_HEAD - buf.len().min(MAX_REQUEST_HEAD))
                .max(1),
        );
        match tokio::time::timeout_at(
            deadline,
            tokio::io::AsyncReadExt::read_buf(&mut stream, &mut buf),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => {}
            _ => {
                // Silence, a half-sent request, EOF or a socket error: nothing to answer.
                inc(&shared.metrics.handshake_failures);
                return;
            }
        }
    };
    let upgrade = if head.path == "/ws" {
        Some(ws::negotiate(&head))
    } else {
        None
    };
    if let Some(Ok(upgrade)) = upgrade {
        if tokio::time::timeout(
            limits.close_timeout,
            stream.write_all(&ws::upgrade_response(&upgrade)),
        )
        .await
        .is_err()
        {
            return;
        }
        let wire = Wire::websocket(upgrade.flavour);
        // An idle connection must hold no request memory: drop the parsed request, and the
        // read buffer too unless the client already sent frames behind its request.
        drop(upgrade);
        drop(head);
        buf.advance(head_len);
        let buf = if buf.is_empty() { BytesMut::new() } else { buf };
        run_session(shared, stream, id, wire, buf).await;
        return;
    }
    let response = match head.path.as_str() {
        "/ws" => match upgrade {
            Some(Err(e)) => {
                inc(&shared.metrics.handshake_failures);
                http::text_response(e.status(), &format!("{e}\n"))
            }
            // The successful upgrade returned above.
            _ => http::text_response(500, "internal error\n"),
        },
        _ if head.method != "GET" && head.method != "HEAD" => {
            http::text_response(405, "method not allowed\n")
        }
        "/healthz" => http::text_response(200, "ok\n"),
        "/readyz" => {
            if shared.upstream.ready() && !shared.cancel.is_cancelled() {
                http::text_response(200, "ready\n")
            } else {
                http::text_response(503, "not ready: no leader known for some group\n")
            }
        }
        "/metrics" => http::response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &shared.metrics.render(shared.upstream.ready()),
        ),
        _ => http::text_response(404, "not found; try /ws, /healthz, /readyz or /metrics\n"),
    };
    respond(&mut stream, response, limits).await;
}

async fn respond(stream: &mut TcpStream, response: Vec<u8>, limits: &ConnectionLimits) {
    let _ = tokio::time::timeout(limits.close_timeout, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}

/// Serve one raw TCP (device) connection.
pub(crate) async fn serve_tcp(shared: Arc<Shared>, stream: TcpStream, id: ConnId) {
    run_session(shared, stream, id, Wire::Tcp, BytesMut::new()).await;
}

async fn run_session(
    shared: Arc<Shared>,
    stream: TcpStream,
    id: ConnId,
    wire: Wire,
    buffered: BytesMut,
) {
    let limits = &shared.config.limits;
    let ctx = Arc::new(ConnCtx {
        id,
        wire,
        queue: SendQueue::new(QueueLimits::from_limits(limits)),
        in_flight: AtomicUsize::new(0),
    });
    lock(&shared.state).conns.insert(id, ctx.clone());
    let now = Instant::now();
    let mut session = Session {
        assembler: MessageAssembler::new(limits.max_frame_bytes),
        subscribe_bucket: TokenBucket::new(limits.subscribe_rate, limits.subscribe_burst, now),
        strikes: TokenBucket::new(1, limits.rate_limit_strikes, now),
        ctx,
        stream,
        rbuf: buffered,
        writing: VecDeque::new(),
        last_heard: now,
        ping_sent: None,
        closing: None,
        shared,
    };
    session.run().await;
}

/// Whether the session goes on.
enum Flow {
    Continue,
    Stop,
}

#[derive(Debug, Clone, Copy)]
struct Closing {
    deadline: Instant,
    /// After a clean close we read on to find the peer's close frame; after a protocol
    /// violation the rest of the input is meaningless and only drained.
    parse_input: bool,
    /// Stop as soon as the close frame is written (the peer closed first).
    peer_closed: bool,
    write_shut: bool,
}

struct Session {
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    stream: TcpStream,
    rbuf: BytesMut,
    assembler: MessageAssembler,
    writing: VecDeque<Bytes>,
    subscribe_bucket: TokenBucket,
    strikes: TokenBucket,
    last_heard: Instant,
    ping_sent: Option<Instant>,
    closing: Option<Closing>,
}

enum Event {
    Shutdown,
    Writable(io::Result<()>),
    Queued,
    Readable(io::Result<()>),
    Timer,
}

impl Session {
    async fn run(&mut self) {
        loop {
            let has_output = !self.writing.is_empty() || self.ctx.queue.has_work();
            let can_read = self.ctx.in_flight.load(Ordering::Acquire)
                < self.shared.config.limits.max_in_flight
                || self.closing.is_some();
            let deadline = tokio::time::Instant::from_std(self.deadline());
            let event = tokio::select! {
                biased;
                _ = self.shared.cancel.cancelled(), if self.closing.is_none() => Event::Shutdown,
                r = self.stream.writable(), if has_output => Event::Writable(r),
                _ = self.ctx.queue.notify.notified() => Event::Queued,
                r = self.stream.readable(), if can_read => Event::Readable(r),
                _ = tokio::time::sleep_until(deadline) => Event::Timer,
            };
            let flow = match event {
                Event::Shutdown => {
                    self.begin_close(close_code::GOING_AWAY, "gateway shutting down", true)
                }
                Event::Writable(Ok(())) => self.on_writable().await,
                Event::Queued => self.on_queued(),
                Event::Readable(Ok(())) => self.on_readable(),
                Event::Writable(Err(_)) | Event::Readable(Err(_)) => Flow::Stop,
                Event::Timer => self.on_timer(),
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    fn deadline(&self) -> Instant {
        let limits = &self.shared.config.limits;
        if let Some(c) = self.closing {
            return c.deadline;
        }
        match self.ping_sent {
            Some(at) => at + limits.pong_timeout,
            None if self.ctx.wire == Wire::Tcp => {
                self.last_heard + limits.idle_timeout + limits.pong_timeout
            }
            None => self.last_heard + limits.idle_timeout,
        }
    }

    fn on_timer(&mut self) -> Flow {
        let now = Instant::now();
        if now < self.deadline() {
            return Flow::Continue;
        }
        if self.closing.is_some() {
            return Flow::Stop;
        }
        if self.ping_sent.is_none() && self.ctx.wire != Wire::Tcp {
            self.ping_sent = Some(now);
            self.writing
                .push_back(ws::encode_message(Opcode::Ping, b"firetower"));
            return Flow::Continue;
        }
        inc(&self.shared.metrics.idle_disconnects);
        self.begin_close(close_code::GOING_AWAY, "idle timeout", false)
    }

    /// Something was queued: maybe a close decided outside (a slow consumer whose socket is
    /// not writable would otherwise never notice it).
    fn on_queued(&mut self) -> Flow {
        match self.ctx.queue.take_close() {
            Some(close) => self.close_from_outside(close),
            None => Flow::Continue,
        }
    }

    fn close_from_outside(&mut self, close: CloseRequest) -> Flow {
        // Keep the frame at the front (it may be half written: cutting it would corrupt the
        // stream), drop the rest, then close.
        self.writing.truncate(1);
        self.begin_close(close.code, close.reason, false)
    }

    async fn on_writable(&mut self) -> Flow {
        match self.flush() {
            Err(_) => return Flow::Stop,
            Ok(false) => return Flow::Continue,
            Ok(true) => {}
        }
        // Everything is written.
        let Some(mut closing) = self.closing else {
            return Flow::Continue;
        };
        if closing.peer_closed {
            return Flow::Stop;
        }
        if !closing.write_shut {
            closing.write_shut = true;
            self.closing = Some(closing);
            // Half-close: the peer sees the end of our stream after the close frame and can
            // answer; we keep reading until its close frame, EOF or the deadline.
            let _ = self.stream.shutdown().await;
        }
        Flow::Continue
    }

    /// Write as much as the socket takes. Ok(true): nothing left to write.
    fn flush(&mut self) -> io::Result<bool> {
        loop {
            if self.writing.is_empty() {
                if self.closing.is_some() {
                    return Ok(true);
                }
                if let Some(close) = self.ctx.queue.take(&mut self.writing) {
                    let _ = self.close_from_outside(close);
                    continue;
                }
                if self.writing.is_empty() {
                    return Ok(true);
                }
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, frame) in slices.iter_mut().zip(self.writing.iter()) {
                *slot = IoSlice::new(frame);
                count += 1;
            }
            match self.stream.try_write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut written) => {
                    while written > 0 {
                        let Some(front) = self.writing.front_mut() else {
                            break;
                        };
                        if written >= front.len() {
                            written -= front.len();
                            self.writing.pop_front();
                        } else {
                            front.advance(written);
                            written = 0;
                        }
                    }
                    if self.writing.is_empty() && self.writing.capacity() > 16 {
                        self.writing = VecDeque::new();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    fn on_readable(&mut self) -> Flow {
        let max = self.shared.config.limits.max_frame_bytes;
        let missing = match self.ctx.wire {
            Wire::Tcp => tcp::missing_bytes(&self.rbuf, max),
            _ => ws::missing_bytes(&self.rbuf, max, Role::Server),
        };
        self.rbuf.reserve(missing.max(READ_CHUNK));
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => return Flow::Stop,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flow::Continue,
            Err(_) => return Flow::Stop,
        }
        self.last_heard = Instant::now();
        self.ping_sent = None;
        let flow = match self.closing {
            Some(c) if !c.parse_input => {
                self.rbuf.clear();
                Flow::Continue
            }
            _ => self.process_input(),
        };
        if self.rbuf.is_empty() {
            // Release the buffer: an idle connection holds no read memory.
            self.rbuf = BytesMut::new();
        }
        flow
    }

    fn process_input(&mut self) -> Flow {
        let max = self.shared.config.limits.max_frame_bytes;
        loop {
            if self.ctx.wire == Wire::Tcp {
                match tcp::decode_frame(&mut self.rbuf, max) {
                    Ok(None) => return Flow::Continue,
                    Ok(Some(payload)) => {
                        if self.closing.is_some() {
                            continue;
                        }
                        if let Flow::Stop = self.on_data(&payload) {
                            return Flow::Stop;
                        }
                    }
                    Err(e) => {
                        self.ctx
                            .reply(&ServerFrame::error(None, "frame_too_large", e.to_string()));
                        return self.begin_close(close_code::TOO_BIG, "frame too large", false);
                    }
                }
                continue;
            }
            let frame = match ws::decode_frame(&mut self.rbuf, max, Role::Server) {
                Ok(None) => return Flow::Continue,
                Ok(Some(frame)) => frame,
                Err(e) => return self.ws_violation(e),
            };
            let message = match self.assembler.push(frame) {
                Ok(None) => continue,
                Ok(Some(m)) => m,
                Err(e) => return self.ws_violation(e),
            };
            if self.closing.is_some() {
                if let Message::Close(_) = message {
                    // The close handshake is complete.
                    return Flow::Stop;
                }
                continue;
            }
            let flow = match message {
                Message::Text(payload) if self.ctx.wire == Wire::WsJson => self.on_data(&payload),
                Message::Binary(payload) if self.ctx.wire == Wire::WsProto => {
                    self.on_data(&payload)
                }
                Message::Binary(_) => {
                    inc(&self.shared.metrics.protocol_errors);
                    self.ctx.reply(&ServerFrame::error(
                        None,
                        "binary_on_json",
                        "binary message on the firetower.json subprotocol; send JSON text or connect with firetower.proto",
                    ));
                    self.begin_close(
                        close_code::UNSUPPORTED_DATA,
                        "binary message on firetower.json",
                        false,
                    )
                }
                Message::Text(_) => {
                    inc(&self.shared.metrics.protocol_errors);
                    self.ctx.reply(&ServerFrame::error(
                        None,
                        "text_on_proto",
                        "text message on the firetower.proto subprotocol; send binary protobuf frames",
                    ));
                    self.begin_close(
                        close_code::UNSUPPORTED_DATA,
                        "text message on firetower.proto",
                        false,
                    )
                }
                Message::Ping(data) => {
                    self.ctx
                        .queue
                        .push_reply(ws::encode_message(Opcode::Pong, &data));
                    Flow::Continue
                }
                Message::Pong(_) => Flow::Continue,
                Message::Close(code) => {
                    let code = match code {
                        Some((c, _)) => c,
                        None => close_code::NORMAL,
                    };
                    let flow = self.begin_close(code, "", true);
                    if let Some(c) = self.closing.as_mut() {
                        c.peer_closed = true;
                    }
                    flow
                }
            };
            if let Flow::Stop = flow {
                return Flow::Stop;
            }
        }
    }

    fn ws_violation(&mut self, e: WsError) -> Flow {
        inc(&self.shared.metrics.protocol_errors);
        if let WsError::TooLarge { .. } = e {
            self.ctx
                .reply(&ServerFrame::error(None, "frame_too_large", e.to_string()));
        }
        let reason = match e {
            WsError::Protocol(r) => r,
            WsError::TooLarge { .. } => "frame too large",
            WsError::InvalidUtf8 => "invalid UTF-8",
        };
        self.begin_close(e.close_code(), reason, false)
    }

    /// Start closing: queue (or, for TCP, just flush) what was pending, then the close frame.
    fn begin_close(&mut self, code: u16, reason: &'static str, parse_input: bool) -> Flow {
        if self.closing.is_some() {
            return Flow::Continue;
        }
        self.ctx.queue.seal(&mut self.writing);
        if self.ctx.wire != Wire::Tcp {
            self.writing.push_back(ws::encode_close(code, reason));
        }
        self.closing = Some(Closing {
            deadline: Instant::now() + self.shared.config.limits.close_timeout,
            parse_input: parse_input && self.ctx.wire != Wire::Tcp,
            peer_closed: false,
            write_shut: false,
        });
        Flow::Continue
    }

    /// A complete client frame in this connection's flavour.
    fn on_data(&mut self, payload: &[u8]) -> Flow {
        inc(&self.shared.metrics.frames_in);
        let frame = match self.ctx.wire.parse(payload) {
            Ok(f) => f,
            Err(e) => {
                inc(&self.shared.metrics.protocol_errors);
                self.ctx.reply(&e.to_frame());
                return self.strike();
            }
        };
        match frame {
            ClientFrame::Ping { id } => self.ctx.reply(&ServerFrame::Pong { id }),
            ClientFrame::Subscribe { id, topics } => {
                if !self.subscribe_bucket.take(Instant::now()) {
                    return self.rate_limited(id);
                }
                let mut state = lock(&self.shared.state);
                match state.index.subscribe(self.ctx.id, id, &topics) {
                    Ok(effects) => apply(&self.shared, &mut state, effects),
                    Err(e @ IndexError::TooManyTopics { .. }) => {
                        drop(state);
                        self.ctx.reply(&ServerFrame::error(
                            Some(id),
                            "too_many_topics",
                            e.to_string(),
                        ));
                    }
                }
            }
            ClientFrame::Unsubscribe { id, topics } => {
                if !self.subscribe_bucket.take(Instant::now()) {
                    return self.rate_limited(id);
                }
                let mut state = lock(&self.shared.state);
                let effects = state.index.unsubscribe(self.ctx.id, &topics);
                apply(&self.shared, &mut state, effects);
                drop(state);
                self.ctx.reply(&ServerFrame::Ack { id });
            }
            ClientFrame::Publish { id, topic, payload } => {
                inc(&self.shared.metrics.publishes_in);
                self.ctx.in_flight.fetch_add(1, Ordering::AcqRel);
                let shared = self.shared.clone();
                let ctx = self.ctx.clone();
                let started = Instant::now();
                spawn_guarded(
                    &self.shared,
                    async move {
                        let result = match tokio::time::timeout(
                            shared.config.request_timeout,
                            shared.upstream.publish(&topic, payload),
                        )
                        .await
                        {
                            Ok(r) => r,
                            Err(_) => Err(UpstreamError::Timeout),
                        };
                        finish_publish(&shared, &ctx, id, started, result.map(|_| ()));
                    },
                    {
                        let shared = self.shared.clone();
                        let ctx = self.ctx.clone();
                        move || {
                            let err = Err(UpstreamError::Refused {
                                code: "internal_error".into(),
                                message: "the gateway failed while publishing; retry".into(),
                            });
                            finish_publish(&shared, &ctx, id, started, err);
                        }
                    },
                );
            }
        }
        Flow::Continue
    }

    fn rate_limited(&mut self, id: u64) -> Flow {
        inc(&self.shared.metrics.rate_limited);
        self.ctx.reply(&ServerFrame::error(
            Some(id),
            "rate_limited",
            "too many subscribe/unsubscribe requests; slow down and retry",
        ));
        self.strike()
    }

    /// One more misbehaviour; too many in a short time closes the connection.
    fn strike(&mut self) -> Flow {
        if self.strikes.take(Instant::now()) {
            return Flow::Continue;
        }
        self.begin_close(
            close_code::POLICY_VIOLATION,
            "too many refused requests",
            false,
        )
    }
}

fn finish_publish(
    shared: &Shared,
    ctx: &ConnCtx,
    id: u64,
    started: Instant,
    result: Result<(), UpstreamError>,
) {
    shared.metrics.observe_publish(started.elapsed());
    ctx.in_flight.fetch_sub(1, Ordering::AcqRel);
    match result {
        Ok(()) => ctx.reply(&ServerFrame::Ack { id }),
        Err(e) => {
            inc(&shared.metrics.publish_failures);
            ctx.reply(&ServerFrame::error(
                Some(id),
                e.code(),
                format!("publish failed: {e}"),
            ));
        }
    }
    // Wake the session even if the reply could not be queued: it may be waiting for a slot.
    ctx.queue.notify.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(messages: usize, bytes: usize, drops: u32, grace: Duration) -> QueueLimits {
        QueueLimits {
            messages,
            bytes,
            drops_before_disconnect: drops,
            grace,
        }
    }

    #[test]
    fn queue_drops_then_disconnects_after_consecutive_drops() {
        let q = SendQueue::new(limits(2, 1000, 3, Duration::from_secs(60)));
        let now = Instant::now();
        let f = Bytes::from_static(b"abc");
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Queued);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Queued);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Dropped);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Dropped);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Disconnect);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Dropped);
        let mut out = VecDeque::new();
        assert_eq!(
            q.take(&mut out).map(|c| c.code),
            Some(close_code::POLICY_VIOLATION)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn queue_full_for_the_grace_period_disconnects() {
        let q = SendQueue::new(limits(1, 1000, 1000, Duration::from_secs(5)));
        let t0 = Instant::now();
        let f = Bytes::from_static(b"abc");
        assert_eq!(q.push_message(f.clone(), t0), PushOutcome::Queued);
        assert_eq!(q.push_message(f.clone(), t0), PushOutcome::Dropped);
        assert_eq!(
            q.push_message(f.clone(), t0 + Duration::from_secs(4)),
            PushOutcome::Dropped
        );
        assert_eq!(
            q.push_message(f, t0 + Duration::from_secs(5)),
            PushOutcome::Disconnect
        );
    }

    #[test]
    fn draining_resets_the_drop_count_and_releases_memory() {
        let q = SendQueue::new(limits(2, 6, 2, Duration::from_secs(60)));
        let now = Instant::now();
        let f = Bytes::from_static(b"abc");
        q.push_message(f.clone(), now);
        q.push_message(f.clone(), now);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Dropped);
        let mut out = VecDeque::new();
        assert_eq!(q.take(&mut out), None);
        assert_eq!(out.len(), 2);
        assert_eq!(lock(&q.state).frames.capacity(), 0);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Queued);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Queued);
        assert_eq!(q.push_message(f, now), PushOutcome::Dropped);
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 20, t0);
        assert_eq!((0..25).filter(|_| b.take(t0)).count(), 20);
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
    }
}
