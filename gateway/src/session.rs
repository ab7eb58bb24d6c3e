//! One client's session as a plain state machine: received bytes, timer firings, shutdown and
//! the send queue go in; frames to write, actions for the driver and the next deadline come
//! out. No socket, no runtime, no clock: every event carries its `now`, so the rules below are
//! tested in memory (`connection.rs` is the driver that does the I/O).
//!
//! ```text
//!   driver (connection.rs)                 ClientSession
//!   socket readable  ── receive_buffer(), on_received(now) ──▶ ws / tcp decode
//!   timer            ── on_timer(now) ──▶ idle ping, pong deadline, close deadline
//!   gateway shutdown ── on_shutdown(now) ──▶ close 1001
//!   queue notified   ── on_queued(now) ──▶ a close decided outside (slow consumer)
//!   socket writable  ◀── output(now), on_written(n), on_all_written() ── write list
//!   after each event ◀── poll_action(now): Subscribe | Unsubscribe | Publish
//!                                         | ShutdownWrite | Stop
//!                    ◀── take_counts(): what the metrics count
//!                    ◀── next_deadline(): when on_timer is due
//! ```
//!
//! Replies the session decides itself (pongs, errors) go through the connection's
//! [`SendQueue`], like the index's acks and the publish results, so they keep their order.
//! Actions come out one frame at a time: the driver performs each (the index, the upstream)
//! before the session decodes the next frame, so a reply to a later frame never overtakes the
//! ack of an earlier one.
//!
//! ```text
//!      ┌───────────── any input: the silence starts over ─────────────┐
//!      ▼                                                              │
//!    Open ───── idle_timeout of silence: a ping (WebSocket) ─────▶ Pinged
//!      │                                                              │
//!      │ violation, strikes, client close,       pong_timeout more silence: 1001
//!      │ shutdown, close asked by the queue      (TCP: no ping; idle + pong)
//!      ▼                                                              │
//!    Closing { deadline: now + close_timeout } ◀──────────────────────┘
//!      │ the queue is sealed: what it held, then the close frame (WebSocket), is the
//!      │ last written; all written: the peer closed first ─▶ Stop, else ShutdownWrite
//!      │ and read on (a clean close looks for the peer's close frame, a violation
//!      ▼ drains the input)
//!    Stop: the peer's close frame, EOF, or the deadline
//! ```
//!
//! Memory per idle session is the budget this is written around: the read buffer is
//! allocated when bytes arrive and released when every byte is consumed, the write list is
//! released when drained, and no allocation outlives a burst of input.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use firetower_client::tcp;
use firetower_client::ws::{self, close_code, Message, MessageAssembler, Opcode, Role, WsError};
use firetower_client::{ClientFrame, Payload, Position, ServerFrame};

use crate::config::ConnectionLimits;
use crate::queue::{CloseRequest, SendQueue};
use crate::wire::Wire;
use firetower_link::TokenBucket;

/// Smallest read: enough for a typical client frame in one `read`.
const READ_CHUNK: usize = 2 * 1024;
/// Close code of a missing, invalid or expired credential.
pub(crate) const CLOSE_UNAUTHORIZED: u16 = 4401;
/// Close code of a banned or kicked user.
pub(crate) const CLOSE_FORBIDDEN: u16 = 4403;
/// Close code of a connection the gateway cannot decide now (the connect hook failed): try
/// again later. (1013 says the same but is not accepted by every client.)
pub(crate) const CLOSE_HOOK_UNAVAILABLE: u16 = 4503;
/// Close code of a user past its connection limit on this gateway.
pub(crate) const CLOSE_TOO_MANY_CONNECTIONS: u16 = 4429;
/// What the gateway's idle ping carries.
const PING_PAYLOAD: &[u8] = b"firetower";

/// What the driver must do for the session, in the order handed out by
/// [`ClientSession::poll_action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Subscribe the connection in the index; the index acks or fails `id` (through the queue).
    Subscribe { id: u64, topics: Vec<Arc<str>> },
    /// Subscribe and recover history topics from the client's positions; the ack (with
    /// `recovered`) and the missed messages follow once the history is read.
    SubscribeRecover {
        id: u64,
        topics: Vec<Arc<str>>,
        recover: Vec<(Arc<str>, Position)>,
    },
    /// Read a history topic's newest kept messages and answer `id`.
    History {
        id: u64,
        topic: Arc<str>,
        limit: u32,
    },
    /// Unsubscribe the connection in the index, then ack `id`.
    Unsubscribe { id: u64, topics: Vec<Arc<str>> },
    /// Publish through the upstream; ack or fail `id` when it answers.
    Publish {
        id: u64,
        topic: Arc<str>,
        payload: Payload,
    },
    /// Verify the token and authenticate (or refresh) the connection; ack or close 4401.
    Auth { id: u64, token: String },
    /// Everything is written, the close frame last: shut the socket's write side (the peer
    /// sees the end of our stream and can answer) and keep reading.
    ShutdownWrite,
    /// The session is over: drop the socket. Handed out again on every later poll.
    Stop,
}

/// Events the gateway's metrics count, since the driver last took them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionCounts {
    /// Complete data messages (client frames) received.
    pub(crate) frames_in: u32,
    /// Frames refused as malformed, and WebSocket violations.
    pub(crate) protocol_errors: u32,
    /// Subscribe/unsubscribe requests refused by the rate limit.
    pub(crate) rate_limited: u32,
    /// Closes for silence.
    pub(crate) idle_disconnects: u32,
    /// Closes for credentials that lapsed (no `auth` frame in time, a token past `exp`).
    pub(crate) auth_expiries: u32,
}

#[derive(Debug, Clone, Copy)]
struct Closing {
    deadline: Instant,
    /// After a clean close we read on to find the peer's close frame; after a protocol
    /// violation the rest of the input is meaningless and only drained.
    parse_input: bool,
    /// Stop as soon as the close frame is written (the peer closed first).
    peer_closed: bool,
    write: WriteSide,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteSide {
    Open,
    /// Everything is written; [`Action::ShutdownWrite`] is due.
    ShutdownDue,
    Shut,
}

/// One client connection's protocol state: framing, limits, liveness and the close handshake.
#[derive(Debug)]
pub(crate) struct ClientSession {
    wire: Wire,
    max_frame: usize,
    idle_timeout: Duration,
    pong_timeout: Duration,
    close_timeout: Duration,
    rbuf: BytesMut,
    /// Bytes arrived that `poll_action` has not decoded yet.
    decoding: bool,
    assembler: MessageAssembler,
    /// Frames being written, in order; refilled from the queue when empty.
    writing: VecDeque<Bytes>,
    subscribe_bucket: TokenBucket,
    publish_bucket: TokenBucket,
    strikes: TokenBucket,
    /// When the connection's credentials lapse (the token's `exp`, or the time allowed to
    /// send a first `auth` frame), and the close reason then: closed with 4401.
    auth_deadline: Option<(Instant, &'static str)>,
    /// Why the session is closing (for the disconnect hook); the connection was lost when it
    /// never closed.
    close_reason: &'static str,
    last_heard: Instant,
    ping_sent: Option<Instant>,
    closing: Option<Closing>,
    stopped: bool,
    counts: SessionCounts,
}

impl ClientSession {
    /// A session starting at `now`. `buffered` holds bytes the client sent behind its HTTP
    /// upgrade request; they are decoded with the next bytes that arrive.
    pub(crate) fn new(
        wire: Wire,
        limits: &ConnectionLimits,
        now: Instant,
        buffered: BytesMut,
    ) -> ClientSession {
        ClientSession {
            wire,
            max_frame: limits.max_frame_bytes,
            idle_timeout: limits.idle_timeout,
            pong_timeout: limits.pong_timeout,
            close_timeout: limits.close_timeout,
            // Bytes that came in behind the upgrade request are decoded at once, not when the
            // client next sends something.
            decoding: !buffered.is_empty(),
            rbuf: buffered,
            assembler: MessageAssembler::new(limits.max_frame_bytes),
            writing: VecDeque::new(),
            subscribe_bucket: TokenBucket::new(limits.subscribe_rate, limits.subscribe_burst, now),
            publish_bucket: TokenBucket::new(limits.publish_rate, limits.publish_burst, now),
            auth_deadline: None,
            close_reason: "connection_lost",
            strikes: TokenBucket::new(1, limits.rate_limit_strikes, now),
            last_heard: now,
            ping_sent: None,
            closing: None,
            stopped: false,
            counts: SessionCounts::default(),
        }
    }

    /// True once the close has begun (the gateway's shutdown no longer concerns it).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// Something waits to be written: frames in the write list, or work in the queue.
    pub(crate) fn wants_to_write(&self, queue: &SendQueue) -> bool {
        !self.writing.is_empty() || queue.has_work()
    }

    /// When [`ClientSession::on_timer`] has something to do: the idle ping, the idle close or
    /// the end of the close handshake.
    pub(crate) fn next_deadline(&self) -> Instant {
        if let Some(c) = self.closing {
            return c.deadline;
        }
        let liveness = self.liveness_deadline();
        match self.auth_deadline {
            Some((at, _)) => at.min(liveness),
            None => liveness,
        }
    }

    fn liveness_deadline(&self) -> Instant {
        match self.ping_sent {
            Some(at) => at + self.pong_timeout,
            None if self.wire == Wire::Tcp => {
                self.last_heard + self.idle_timeout + self.pong_timeout
            }
            None => self.last_heard + self.idle_timeout,
        }
    }

    /// The read buffer, with room for the rest of the frame at its front (at least
    /// [`READ_CHUNK`]): the driver reads into it, then calls [`ClientSession::on_received`].
    pub(crate) fn receive_buffer(&mut self) -> &mut BytesMut {
        let missing = match self.wire {
            Wire::Tcp => tcp::missing_bytes(&self.rbuf, self.max_frame),
            _ => ws::missing_bytes(&self.rbuf, self.max_frame, Role::Server),
        };
        self.rbuf.reserve(missing.max(READ_CHUNK));
        &mut self.rbuf
    }

    /// Bytes arrived in the read buffer: the client is alive; `poll_action` decodes them.
    pub(crate) fn on_received(&mut self, now: Instant) {
        self.last_heard = now;
        self.ping_sent = None;
        self.decoding = true;
    }

    /// The timer fired. Before [`ClientSession::next_deadline`] it does nothing.
    pub(crate) fn on_timer(&mut self, now: Instant, queue: &SendQueue) {
        if now < self.next_deadline() {
            return;
        }
        if self.closing.is_some() {
            self.stopped = true;
            return;
        }
        if let Some((at, reason)) = self.auth_deadline {
            if now >= at {
                self.counts.auth_expiries += 1;
                self.begin_close(now, queue, CLOSE_UNAUTHORIZED, reason, false);
                return;
            }
        }
        if now < self.liveness_deadline() {
            return;
        }
        if self.ping_sent.is_none() && self.wire != Wire::Tcp {
            self.ping_sent = Some(now);
            self.writing
                .push_back(ws::encode_message(Opcode::Ping, PING_PAYLOAD));
            return;
        }
        self.counts.idle_disconnects += 1;
        self.begin_close(now, queue, close_code::GOING_AWAY, "idle timeout", false);
    }

    /// Close the connection with 4401 at `at` (`reason`: why, e.g. "token expired"); `None`
    /// lifts the deadline.
    pub(crate) fn set_auth_deadline(&mut self, deadline: Option<(Instant, &'static str)>) {
        self.auth_deadline = deadline;
    }

    /// Close now with `code` (4401, 4403, ...): what was queued is written first.
    pub(crate) fn close_with(
        &mut self,
        now: Instant,
        queue: &SendQueue,
        code: u16,
        reason: &'static str,
    ) {
        self.begin_close(now, queue, code, reason, false);
    }

    /// Why the session closed, for the application's disconnect hook: the close reason sent
    /// (`idle timeout`, `kicked`, `token expired`, ...), `client_closed`, or
    /// `connection_lost` when the socket ended without a close.
    pub(crate) fn close_reason(&self) -> &'static str {
        self.close_reason
    }

    /// The gateway shuts down: close with 1001, still reading for the client's close frame.
    pub(crate) fn on_shutdown(&mut self, now: Instant, queue: &SendQueue) {
        self.begin_close(
            now,
            queue,
            close_code::GOING_AWAY,
            "gateway shutting down",
            true,
        );
    }

    /// The queue notified the session: maybe a close decided outside (a slow consumer whose
    /// socket is not writable would otherwise never notice it).
    pub(crate) fn on_queued(&mut self, now: Instant, queue: &SendQueue) {
        if let Some(close) = queue.take_close() {
            self.close_from_outside(now, queue, close);
        }
    }

    /// The frames to write next, in order, refilled from the queue when the write list is
    /// empty. Empty: everything is written; call [`ClientSession::on_all_written`].
    pub(crate) fn output(&mut self, now: Instant, queue: &SendQueue) -> &VecDeque<Bytes> {
        while self.writing.is_empty() && self.closing.is_none() {
            match queue.take(&mut self.writing) {
                Some(close) => self.close_from_outside(now, queue, close),
                None => break,
            }
        }
        &self.writing
    }

    /// The socket took `written` bytes of [`ClientSession::output`].
    pub(crate) fn on_written(&mut self, mut written: usize) {
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

    /// [`ClientSession::output`] came back empty: while closing, that is the end of our side.
    pub(crate) fn on_all_written(&mut self) {
        let Some(closing) = self.closing.as_mut() else {
            return;
        };
        if closing.peer_closed {
            self.stopped = true;
        } else if closing.write == WriteSide::Open {
            closing.write = WriteSide::ShutdownDue;
        }
    }

    /// The next thing the driver must do, decoding received bytes as far as needed. Call after
    /// every event until it returns `None`.
    pub(crate) fn poll_action(&mut self, now: Instant, queue: &SendQueue) -> Option<Action> {
        if self.stopped {
            return Some(Action::Stop);
        }
        if let Some(closing) = self.closing.as_mut() {
            if closing.write == WriteSide::ShutdownDue {
                closing.write = WriteSide::Shut;
                return Some(Action::ShutdownWrite);
            }
        }
        while self.decoding {
            if let Some(action) = self.decode_next(now, queue) {
                return Some(action);
            }
        }
        None
    }

    /// What the metrics count since the last call.
    pub(crate) fn take_counts(&mut self) -> SessionCounts {
        std::mem::take(&mut self.counts)
    }

    /// Stop decoding until more bytes arrive, releasing the read buffer if it is empty: an
    /// idle connection holds no read memory.
    fn pause_decoding(&mut self) {
        self.decoding = false;
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
    }

    /// Drop every byte received: after a violation the input is meaningless.
    fn drain_input(&mut self) {
        self.rbuf.clear();
        self.pause_decoding();
    }

    fn decode_next(&mut self, now: Instant, queue: &SendQueue) -> Option<Action> {
        if self.closing.is_some_and(|c| !c.parse_input) {
            self.drain_input();
            return None;
        }
        match self.wire {
            Wire::Tcp => self.decode_tcp(now, queue),
            Wire::WsJson | Wire::WsProto => self.decode_ws(now, queue),
        }
    }

    fn decode_tcp(&mut self, now: Instant, queue: &SendQueue) -> Option<Action> {
        match tcp::decode_frame(&mut self.rbuf, self.max_frame) {
            Ok(None) => {
                self.pause_decoding();
                None
            }
            Ok(Some(payload)) => self.on_data(now, queue, &payload),
            Err(e) => {
                self.reply(
                    queue,
                    &ServerFrame::error(None, "frame_too_large", e.to_string()),
                );
                self.begin_close(now, queue, close_code::TOO_BIG, "frame too large", false);
                self.drain_input();
                None
            }
        }
    }

    fn decode_ws(&mut self, now: Instant, queue: &SendQueue) -> Option<Action> {
        let frame = match ws::decode_frame(&mut self.rbuf, self.max_frame, Role::Server) {
            Ok(None) => {
                self.pause_decoding();
                return None;
            }
            Ok(Some(frame)) => frame,
            Err(e) => {
                self.ws_violation(now, queue, e);
                return None;
            }
        };
        let message = match self.assembler.push(frame) {
            Ok(None) => return None,
            Ok(Some(m)) => m,
            Err(e) => {
                self.ws_violation(now, queue, e);
                return None;
            }
        };
        if self.closing.is_some() {
            if let Message::Close(_) = message {
                // The close handshake is complete.
                self.stopped = true;
                self.decoding = false;
                return Some(Action::Stop);
            }
            return None;
        }
        match message {
            Message::Text(payload) if self.wire == Wire::WsJson => {
                self.on_data(now, queue, &payload)
            }
            Message::Binary(payload) if self.wire == Wire::WsProto => {
                self.on_data(now, queue, &payload)
            }
            Message::Binary(_) => {
                self.counts.protocol_errors += 1;
                self.reply(
                    queue,
                    &ServerFrame::error(
                        None,
                        "binary_on_json",
                        "binary message on the firetower.json subprotocol; send JSON text or connect with firetower.proto",
                    ),
                );
                self.begin_close(
                    now,
                    queue,
                    close_code::UNSUPPORTED_DATA,
                    "binary message on firetower.json",
                    false,
                );
                None
            }
            Message::Text(_) => {
                self.counts.protocol_errors += 1;
                self.reply(
                    queue,
                    &ServerFrame::error(
                        None,
                        "text_on_proto",
                        "text message on the firetower.proto subprotocol; send binary protobuf frames",
                    ),
                );
                self.begin_close(
                    now,
                    queue,
                    close_code::UNSUPPORTED_DATA,
                    "text message on firetower.proto",
                    false,
                );
                None
            }
            Message::Ping(data) => {
                queue.push_reply(ws::encode_message(Opcode::Pong, &data));
                None
            }
            Message::Pong(_) => None,
            Message::Close(code) => {
                let code = match code {
                    Some((c, _)) => c,
                    None => close_code::NORMAL,
                };
                self.begin_close(now, queue, code, "", true);
                if let Some(c) = self.closing.as_mut() {
                    c.peer_closed = true;
                }
                None
            }
        }
    }

    /// The WebSocket stream broke a rule: close, and treat the rest of the input as noise
    /// (even during a clean close: the frame it would look for cannot be found any more).
    fn ws_violation(&mut self, now: Instant, queue: &SendQueue, e: WsError) {
        self.counts.protocol_errors += 1;
        if let WsError::TooLarge { .. } = e {
            self.reply(
                queue,
                &ServerFrame::error(None, "frame_too_large", e.to_string()),
            );
        }
        let reason = match e {
            WsError::Protocol(r) => r,
            WsError::TooLarge { .. } => "frame too large",
            WsError::InvalidUtf8 => "invalid UTF-8",
        };
        self.begin_close(now, queue, e.close_code(), reason, false);
        if let Some(c) = self.closing.as_mut() {
            c.parse_input = false;
        }
        self.drain_input();
    }

    /// A complete client frame in this connection's flavour.
    fn on_data(&mut self, now: Instant, queue: &SendQueue, payload: &[u8]) -> Option<Action> {
        self.counts.frames_in += 1;
        let frame = match self.wire.parse(payload) {
            Ok(f) => f,
            Err(e) => {
                self.counts.protocol_errors += 1;
                self.reply(queue, &e.to_frame());
                self.strike(now, queue);
                return None;
            }
        };
        match frame {
            ClientFrame::Ping { id } => {
                self.reply(queue, &ServerFrame::Pong { id });
                None
            }
            ClientFrame::Subscribe {
                id,
                topics,
                recover,
                join_leave: _,
            } => {
                if !self.subscribe_bucket.take(now) {
                    self.rate_limited(now, queue, id);
                    return None;
                }
                if recover.is_empty() {
                    return Some(Action::Subscribe { id, topics });
                }
                // Only topics of this request can be recovered.
                let recover: Vec<(Arc<str>, Position)> = recover
                    .into_iter()
                    .filter(|(t, _)| topics.contains(t))
                    .collect();
                Some(Action::SubscribeRecover {
                    id,
                    topics,
                    recover,
                })
            }
            ClientFrame::History { id, topic, limit } => {
                if !self.subscribe_bucket.take(now) {
                    self.rate_limited(now, queue, id);
                    return None;
                }
                Some(Action::History { id, topic, limit })
            }
            ClientFrame::Presence { id, .. } => {
                self.reply(
                    queue,
                    &ServerFrame::error(
                        Some(id),
                        "presence_disabled",
                        "this gateway does not serve presence yet",
                    ),
                );
                None
            }
            ClientFrame::Unsubscribe { id, topics } => {
                if !self.subscribe_bucket.take(now) {
                    self.rate_limited(now, queue, id);
                    return None;
                }
                Some(Action::Unsubscribe { id, topics })
            }
            ClientFrame::Publish { id, topic, payload } => {
                if !self.publish_bucket.take(now) {
                    self.counts.rate_limited += 1;
                    self.reply(
                        queue,
                        &ServerFrame::error(
                            Some(id),
                            "rate_limited",
                            "too many publishes on this connection; slow down and retry",
                        ),
                    );
                    self.strike(now, queue);
                    return None;
                }
                Some(Action::Publish { id, topic, payload })
            }
            ClientFrame::Auth { id, token } => Some(Action::Auth { id, token }),
        }
    }

    fn rate_limited(&mut self, now: Instant, queue: &SendQueue, id: u64) {
        self.counts.rate_limited += 1;
        self.reply(
            queue,
            &ServerFrame::error(
                Some(id),
                "rate_limited",
                "too many subscribe/unsubscribe requests; slow down and retry",
            ),
        );
        self.strike(now, queue);
    }

    /// One more misbehaviour; too many in a short time closes the connection.
    fn strike(&mut self, now: Instant, queue: &SendQueue) {
        if self.strikes.take(now) {
            return;
        }
        self.begin_close(
            now,
            queue,
            close_code::POLICY_VIOLATION,
            "too many refused requests",
            false,
        );
    }

    fn reply(&self, queue: &SendQueue, frame: &ServerFrame) {
        queue.push_reply(self.wire.encode(frame));
    }

    fn close_from_outside(&mut self, now: Instant, queue: &SendQueue, close: CloseRequest) {
        // Keep the frame at the front (it may be half written: cutting it would corrupt the
        // stream), drop the rest, then close.
        self.writing.truncate(1);
        self.begin_close(now, queue, close.code, close.reason, false);
    }

    /// Start closing: take (or, for TCP, just flush) what was queued, then the close frame.
    fn begin_close(
        &mut self,
        now: Instant,
        queue: &SendQueue,
        code: u16,
        reason: &'static str,
        parse_input: bool,
    ) {
        if self.closing.is_some() {
            return;
        }
        self.close_reason = if reason.is_empty() {
            "client_closed"
        } else {
            reason
        };
        queue.seal(&mut self.writing);
        if self.wire != Wire::Tcp {
            self.writing.push_back(ws::encode_close(code, reason));
        }
        self.closing = Some(Closing {
            deadline: now + self.close_timeout,
            parse_input: parse_input && self.wire != Wire::Tcp,
            peer_closed: false,
            write: WriteSide::Open,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firetower_client::Flavour;
    use proptest::prelude::*;
    use proptest::sample::Index;

    use crate::queue::{PushOutcome, QueueLimits};

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const MAX_FRAME: usize = 256;
    /// A payload past `MAX_FRAME`.
    const OVERSIZED: usize = 300;
    /// The frame count handed to one vectored write by the driver.
    const MAX_IOVECS: usize = 64;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn test_limits() -> ConnectionLimits {
        ConnectionLimits {
            max_frame_bytes: MAX_FRAME,
            subscribe_rate: 10,
            subscribe_burst: 3,
            rate_limit_strikes: 2,
            idle_timeout: ms(1000),
            pong_timeout: ms(500),
            close_timeout: ms(200),
            ..ConnectionLimits::default()
        }
    }

    /// What a client sends, before encoding for a wire.
    #[derive(Debug, Clone)]
    enum Msg {
        /// A well-formed request.
        Request(ClientFrame),
        /// A data message that does not parse as a request.
        Garbage,
        /// A WebSocket ping with its data.
        WsPing(Vec<u8>),
        WsPong,
        /// A WebSocket close, with or without a code.
        Close(Option<u16>),
        /// Binary on `firetower.json`, text on `firetower.proto`.
        WrongKind,
        /// A frame announcing more than `MAX_FRAME` bytes.
        Oversized,
        /// A request in two fragments with a ping between them.
        Fragmented(ClientFrame),
        /// A client frame without a mask (a WebSocket violation).
        Unmasked,
    }

    impl Msg {
        fn fits(&self, wire: Wire) -> bool {
            wire != Wire::Tcp || matches!(self, Msg::Request(_) | Msg::Garbage | Msg::Oversized)
        }
    }

    fn topic(n: u8) -> Arc<str> {
        Arc::from(format!("t{n}"))
    }

    /// A delivery of the cluster, as the fan-out hands it to the queue.
    fn message(seq: u64) -> ServerFrame {
        ServerFrame::Message {
            topic: topic(0),
            payload: Payload::Json(Bytes::from_static(b"1")),
            term: 1,
            seq,
            position: None,
        }
    }

    fn arb_request() -> impl Strategy<Value = ClientFrame> {
        let topics = prop::collection::vec((0u8..4).prop_map(topic), 1..3);
        prop_oneof![
            (0u64..1000, topics.clone())
                .prop_map(|(id, topics)| ClientFrame::subscribe(id, topics)),
            (0u64..1000, topics).prop_map(|(id, topics)| ClientFrame::Unsubscribe { id, topics }),
            (0u64..1000, 0u8..4).prop_map(|(id, t)| ClientFrame::Publish {
                id,
                topic: topic(t),
                payload: Payload::Json(Bytes::from_static(b"1")),
            }),
            (0u64..1000).prop_map(|id| ClientFrame::Ping { id }),
        ]
    }

    fn arb_msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            12 => arb_request().prop_map(Msg::Request),
            2 => Just(Msg::Garbage),
            2 => prop::collection::vec(any::<u8>(), 0..8).prop_map(Msg::WsPing),
            1 => Just(Msg::WsPong),
            1 => prop::option::of(prop::sample::select(vec![1000u16, 1001, 3000, 4999]))
                .prop_map(Msg::Close),
            1 => Just(Msg::WrongKind),
            1 => Just(Msg::Oversized),
            2 => arb_request().prop_map(Msg::Fragmented),
            1 => Just(Msg::Unmasked),
        ]
    }

    fn arb_wire() -> impl Strategy<Value = Wire> {
        prop::sample::select(Wire::ALL.to_vec())
    }

    /// A request's payload in the wire's encoding.
    fn request_bytes(wire: Wire, frame: &ClientFrame) -> Vec<u8> {
        match wire.flavour() {
            Flavour::Json => frame.encode_json(),
            Flavour::Proto => frame.encode_proto(),
        }
    }

    /// A reply's payload in the wire's encoding (what [`Out::Data`] holds).
    fn reply_bytes(wire: Wire, frame: &ServerFrame) -> Vec<u8> {
        match wire.flavour() {
            Flavour::Json => frame.encode_json(),
            Flavour::Proto => frame.encode_proto(),
        }
    }

    fn garbage(wire: Wire) -> &'static [u8] {
        match wire.flavour() {
            Flavour::Json => b"not json",
            // Decodes as a frame without an op.
            Flavour::Proto => b"",
        }
    }

    /// The bytes a client puts on the wire for `msg`.
    fn encode(wire: Wire, msg: &Msg) -> Vec<u8> {
        let data = if wire == Wire::WsJson {
            Opcode::Text
        } else {
            Opcode::Binary
        };
        let masked =
            |fin, opcode, payload: &[u8]| ws::encode_frame(fin, opcode, payload, Some(MASK));
        let out: Bytes = match (wire, msg) {
            (Wire::Tcp, Msg::Request(f)) => tcp::encode_frame(&request_bytes(wire, f)),
            (Wire::Tcp, Msg::Garbage) => tcp::encode_frame(garbage(wire)),
            (Wire::Tcp, Msg::Oversized) => tcp::encode_frame(&[0; OVERSIZED]),
            (Wire::Tcp, _) => unreachable!("{msg:?} does not fit TCP"),
            (_, Msg::Request(f)) => masked(true, data, &request_bytes(wire, f)),
            (_, Msg::Garbage) => masked(true, data, garbage(wire)),
            (_, Msg::WsPing(d)) => masked(true, Opcode::Ping, d),
            (_, Msg::WsPong) => masked(true, Opcode::Pong, b""),
            (_, Msg::Close(None)) => masked(true, Opcode::Close, b""),
            (_, Msg::Close(Some(code))) => ws::encode_close_frame(*code, "bye", Some(MASK)),
            (Wire::WsJson, Msg::WrongKind) => masked(true, Opcode::Binary, &[1, 2, 3]),
            (_, Msg::WrongKind) => masked(true, Opcode::Text, b"{}"),
            (_, Msg::Oversized) => masked(true, data, &[b' '; OVERSIZED]),
            (_, Msg::Fragmented(f)) => {
                let payload = request_bytes(wire, f);
                let (a, b) = payload.split_at(payload.len() / 2);
                let mut out = masked(false, data, a).to_vec();
                out.extend_from_slice(&masked(true, Opcode::Ping, b"mid"));
                out.extend_from_slice(&masked(true, Opcode::Continuation, b));
                Bytes::from(out)
            }
            (_, Msg::Unmasked) => ws::encode_frame(true, data, b"{}", None),
        };
        out.to_vec()
    }

    /// One frame the session wrote, as the client decodes it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Out {
        /// A data message (WebSocket) or frame (TCP): the encoded `ServerFrame`.
        Data(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(u16),
    }

    /// The complete frames in `bytes`, and how many bytes follow the last of them.
    fn decode_output(wire: Wire, bytes: &[u8]) -> (Vec<Out>, usize) {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            if wire == Wire::Tcp {
                match tcp::decode_frame(&mut buf, usize::MAX) {
                    Ok(Some(payload)) => out.push(Out::Data(payload.to_vec())),
                    Ok(None) => break,
                    Err(e) => panic!("the gateway wrote a bad TCP frame: {e}"),
                }
                continue;
            }
            let frame = match ws::decode_frame(&mut buf, usize::MAX, Role::Client) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => panic!("the gateway wrote a bad WebSocket frame: {e}"),
            };
            assert!(frame.fin, "the gateway writes whole messages");
            let payload = frame.payload.to_vec();
            out.push(match frame.opcode {
                Opcode::Text | Opcode::Binary => Out::Data(payload),
                Opcode::Ping => Out::Ping(payload),
                Opcode::Pong => Out::Pong(payload),
                Opcode::Close => Out::Close(u16::from_be_bytes([payload[0], payload[1]])),
                Opcode::Continuation => panic!("the gateway writes no fragments"),
            });
        }
        (out, buf.len())
    }

    /// A driver in memory: performs actions like `connection.rs` (the index acks every
    /// subscribe at once) and plays the socket.
    struct Harness {
        wire: Wire,
        session: ClientSession,
        queue: SendQueue,
        now: Instant,
        /// Bytes the socket took.
        written: Vec<u8>,
        actions: Vec<Action>,
        counts: SessionCounts,
        stopped: bool,
        write_shut: bool,
        /// Ack publishes as soon as they are asked for; otherwise they wait in `publishes`.
        instant_publish: bool,
        publishes: VecDeque<u64>,
    }

    impl Harness {
        fn new(wire: Wire, limits: &ConnectionLimits, now: Instant) -> Harness {
            Harness {
                wire,
                session: ClientSession::new(wire, limits, now, BytesMut::new()),
                queue: SendQueue::new(QueueLimits::from_limits(limits)),
                now,
                written: Vec::new(),
                actions: Vec::new(),
                counts: SessionCounts::default(),
                stopped: false,
                write_shut: false,
                instant_publish: true,
                publishes: VecDeque::new(),
            }
        }

        fn reply(&self, frame: &ServerFrame) {
            self.queue.push_reply(self.wire.encode(frame));
        }

        fn input(&mut self, bytes: &[u8]) -> Result<(), TestCaseError> {
            self.session.receive_buffer().extend_from_slice(bytes);
            self.session.on_received(self.now);
            self.drain()
        }

        /// Perform actions until the session has none, like the driver after every event.
        fn drain(&mut self) -> Result<(), TestCaseError> {
            loop {
                let action = self.session.poll_action(self.now, &self.queue);
                let c = self.session.take_counts();
                self.counts.frames_in += c.frames_in;
                self.counts.protocol_errors += c.protocol_errors;
                self.counts.rate_limited += c.rate_limited;
                self.counts.idle_disconnects += c.idle_disconnects;
                let Some(action) = action else {
                    return Ok(());
                };
                if action == Action::Stop {
                    self.stopped = true;
                    self.actions.push(action);
                    return Ok(());
                }
                match &action {
                    Action::Subscribe { id, .. }
                    | Action::Unsubscribe { id, .. }
                    | Action::SubscribeRecover { id, .. }
                    | Action::History { id, .. } => {
                        prop_assert!(!self.session.is_closing(), "{:?} while closing", action);
                        self.reply(&ServerFrame::Ack { id: *id });
                    }
                    Action::Publish { id, .. } => {
                        prop_assert!(!self.session.is_closing(), "{:?} while closing", action);
                        if self.instant_publish {
                            self.reply(&ServerFrame::Ack { id: *id });
                        } else {
                            self.publishes.push_back(*id);
                        }
                    }
                    Action::ShutdownWrite => {
                        prop_assert!(!self.write_shut, "shut down twice");
                        prop_assert!(self.session.is_closing());
                        self.write_shut = true;
                    }
                    Action::Auth { id, .. } => {
                        prop_assert!(!self.session.is_closing(), "{:?} while closing", action);
                        self.reply(&ServerFrame::Ack { id: *id });
                    }
                    Action::Stop => unreachable!("handled above"),
                }
                self.actions.push(action);
            }
        }

        /// The socket takes up to `room` bytes (0: it would block).
        fn write(&mut self, mut room: usize) -> Result<(), TestCaseError> {
            loop {
                let frames = self.session.output(self.now, &self.queue);
                if frames.is_empty() {
                    // Nothing left: the driver must stop waiting for writability (no spin).
                    prop_assert!(!self.session.wants_to_write(&self.queue));
                    self.session.on_all_written();
                    break;
                }
                if room == 0 {
                    break;
                }
                let mut n = 0;
                for frame in frames.iter().take(MAX_IOVECS) {
                    let take = frame.len().min(room - n);
                    self.written.extend_from_slice(&frame[..take]);
                    n += take;
                    if n == room {
                        break;
                    }
                }
                prop_assert!(!self.write_shut, "written after the write side was shut");
                self.session.on_written(n);
                room -= n;
            }
            self.drain()
        }

        /// Everything the session means to write, even once stopped.
        fn write_everything(&mut self) -> Result<(), TestCaseError> {
            if !self.stopped {
                return self.write(usize::MAX);
            }
            loop {
                let frames = self.session.output(self.now, &self.queue);
                if frames.is_empty() {
                    return Ok(());
                }
                let n: usize = frames.iter().map(Bytes::len).sum();
                for frame in frames {
                    self.written.extend_from_slice(frame);
                }
                self.session.on_written(n);
            }
        }
    }

    /// What a run shows from outside.
    #[derive(Debug, PartialEq, Eq)]
    struct Observed {
        actions: Vec<Action>,
        counts: SessionCounts,
        output: Vec<Out>,
    }

    /// Feed `chunks` one read each (all at one instant), then write everything.
    fn run_reads(
        wire: Wire,
        limits: &ConnectionLimits,
        chunks: &[&[u8]],
    ) -> Result<Observed, TestCaseError> {
        let mut h = Harness::new(wire, limits, Instant::now());
        for chunk in chunks {
            if h.stopped {
                break;
            }
            h.input(chunk)?;
        }
        h.write_everything()?;
        let (output, rest) = decode_output(wire, &h.written);
        prop_assert_eq!(rest, 0);
        Ok(Observed {
            actions: h.actions,
            counts: h.counts,
            output,
        })
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum ModelState {
        Open,
        Closing {
            parse_input: bool,
            peer_closed: bool,
        },
        Stopped,
    }

    /// What the session must do with `msgs` arriving at one instant (no token refills), written
    /// out in full afterwards, by the rules of the protocol (docs/protocol.md) rather than by
    /// the code's structure.
    fn model(wire: Wire, limits: &ConnectionLimits, msgs: &[Msg]) -> Observed {
        let mut tokens = limits.subscribe_burst;
        let mut strikes = limits.rate_limit_strikes;
        let mut actions = Vec::new();
        let mut counts = SessionCounts::default();
        let mut output = Vec::new();
        let mut state = ModelState::Open;
        let data = |frame: ServerFrame| Out::Data(reply_bytes(wire, &frame));
        let close = |output: &mut Vec<Out>, code, parse_input, peer_closed| {
            if wire != Wire::Tcp {
                output.push(Out::Close(code));
            }
            ModelState::Closing {
                parse_input: parse_input && wire != Wire::Tcp,
                peer_closed,
            }
        };
        for msg in msgs {
            match state {
                ModelState::Stopped
                | ModelState::Closing {
                    parse_input: false, ..
                } => break,
                ModelState::Closing { .. } => {
                    // Only the peer's close frame matters now; a violation ends the parsing.
                    match msg {
                        Msg::Close(_) => {
                            actions.push(Action::Stop);
                            state = ModelState::Stopped;
                        }
                        Msg::Oversized | Msg::Unmasked => {
                            counts.protocol_errors += 1;
                            break;
                        }
                        _ => {}
                    }
                    continue;
                }
                ModelState::Open => {}
            }
            let mut strike = |output: &mut Vec<Out>| {
                if strikes == 0 {
                    return close(output, close_code::POLICY_VIOLATION, false, false);
                }
                strikes -= 1;
                ModelState::Open
            };
            let request = match msg {
                Msg::Request(f) => f,
                Msg::Fragmented(f) => {
                    output.push(Out::Pong(b"mid".to_vec()));
                    f
                }
                Msg::Garbage => {
                    counts.frames_in += 1;
                    counts.protocol_errors += 1;
                    let e = wire
                        .parse(garbage(wire))
                        .expect_err("garbage does not parse");
                    output.push(data(e.to_frame()));
                    state = strike(&mut output);
                    continue;
                }
                Msg::WsPing(d) => {
                    output.push(Out::Pong(d.clone()));
                    continue;
                }
                Msg::WsPong => continue,
                Msg::Close(code) => {
                    state = close(&mut output, code.unwrap_or(close_code::NORMAL), true, true);
                    continue;
                }
                Msg::WrongKind => {
                    counts.protocol_errors += 1;
                    let code = if wire == Wire::WsJson {
                        "binary_on_json"
                    } else {
                        "text_on_proto"
                    };
                    let text = if wire == Wire::WsJson {
                        "binary message on the firetower.json subprotocol; send JSON text or connect with firetower.proto"
                    } else {
                        "text message on the firetower.proto subprotocol; send binary protobuf frames"
                    };
                    output.push(data(ServerFrame::error(None, code, text)));
                    state = close(&mut output, close_code::UNSUPPORTED_DATA, false, false);
                    continue;
                }
                Msg::Oversized => {
                    let text = if wire == Wire::Tcp {
                        tcp::TcpFrameError::TooLarge {
                            len: OVERSIZED as u32,
                            max: MAX_FRAME,
                        }
                        .to_string()
                    } else {
                        counts.protocol_errors += 1;
                        WsError::TooLarge {
                            len: OVERSIZED as u64,
                            max: MAX_FRAME,
                        }
                        .to_string()
                    };
                    output.push(data(ServerFrame::error(None, "frame_too_large", text)));
                    state = close(&mut output, close_code::TOO_BIG, false, false);
                    continue;
                }
                Msg::Unmasked => {
                    counts.protocol_errors += 1;
                    state = close(&mut output, close_code::PROTOCOL_ERROR, false, false);
                    continue;
                }
            };
            counts.frames_in += 1;
            match request.clone() {
                ClientFrame::Ping { id } => output.push(data(ServerFrame::Pong { id })),
                ClientFrame::Subscribe { id, .. } | ClientFrame::Unsubscribe { id, .. }
                    if tokens == 0 =>
                {
                    counts.rate_limited += 1;
                    output.push(data(ServerFrame::error(
                        Some(id),
                        "rate_limited",
                        "too many subscribe/unsubscribe requests; slow down and retry",
                    )));
                    state = strike(&mut output);
                }
                ClientFrame::Subscribe { id, topics, .. } => {
                    tokens -= 1;
                    actions.push(Action::Subscribe { id, topics });
                    output.push(data(ServerFrame::Ack { id }));
                }
                ClientFrame::Unsubscribe { id, topics } => {
                    tokens -= 1;
                    actions.push(Action::Unsubscribe { id, topics });
                    output.push(data(ServerFrame::Ack { id }));
                }
                ClientFrame::Publish { id, topic, payload } => {
                    actions.push(Action::Publish { id, topic, payload });
                    output.push(data(ServerFrame::Ack { id }));
                }
                ClientFrame::Auth { id, token } => {
                    actions.push(Action::Auth { id, token });
                    output.push(data(ServerFrame::Ack { id }));
                }
                // Not generated by the model's frames.
                ClientFrame::History { .. } | ClientFrame::Presence { .. } => {}
            }
        }
        // Everything written: a peer that closed first is done; otherwise half-close.
        match state {
            ModelState::Closing {
                peer_closed: true, ..
            } => actions.push(Action::Stop),
            ModelState::Closing { .. } => actions.push(Action::ShutdownWrite),
            ModelState::Open | ModelState::Stopped => {}
        }
        Observed {
            actions,
            counts,
            output,
        }
    }

    /// Cut `bytes` at the given points (sorted, deduplicated).
    fn cut<'a>(bytes: &'a [u8], points: &[Index]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = points.iter().map(|i| i.index(bytes.len() + 1)).collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        at.dedup();
        at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
    }

    proptest! {
        #[test]
        fn decoding_follows_the_model_however_the_bytes_are_cut(
            wire in arb_wire(),
            burst in 1u32..5,
            strikes in 0u32..3,
            msgs in prop::collection::vec(arb_msg(), 0..24),
            points in prop::collection::vec(any::<Index>(), 0..12),
        ) {
            let limits = ConnectionLimits {
                subscribe_burst: burst,
                rate_limit_strikes: strikes,
                ..test_limits()
            };
            let msgs: Vec<Msg> = msgs.into_iter().filter(|m| m.fits(wire)).collect();
            let bytes: Vec<u8> = msgs.iter().flat_map(|m| encode(wire, m)).collect();
            let whole = run_reads(wire, &limits, &[bytes.as_slice()])?;
            let pieces = run_reads(wire, &limits, &cut(&bytes, &points))?;
            let byte_by_byte: Vec<&[u8]> = bytes.chunks(1).collect();
            prop_assert_eq!(&pieces, &whole, "cut at {:?}", points);
            prop_assert_eq!(&run_reads(wire, &limits, &byte_by_byte)?, &whole);
            prop_assert_eq!(&whole, &model(wire, &limits, &msgs));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Client bytes, cut into reads.
        Send(Vec<Msg>, Vec<Index>),
        /// Time passes.
        Wait(u64),
        /// The timer fires now, due or not.
        Timer,
        /// Time runs to the deadline and the timer fires (the driver's sleep).
        TimerAtDeadline,
        /// The gateway shuts down.
        Shutdown,
        /// Deliveries offered to the queue (maybe too many: a slow consumer).
        Fanout(u8),
        /// The queue's notification reaches the session.
        Queued,
        /// The oldest publish is answered (through the queue).
        PublishDone,
        /// The socket takes up to this many bytes.
        Write(u16),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (prop::collection::vec(arb_msg(), 1..4), prop::collection::vec(any::<Index>(), 0..3))
                .prop_map(|(m, p)| Op::Send(m, p)),
            3 => (0u64..1500).prop_map(Op::Wait),
            2 => Just(Op::Timer),
            2 => Just(Op::TimerAtDeadline),
            1 => Just(Op::Shutdown),
            2 => (1u8..4).prop_map(Op::Fanout),
            2 => Just(Op::Queued),
            1 => Just(Op::PublishDone),
            3 => (0u16..200).prop_map(Op::Write),
        ]
    }

    /// What holds after every event, whatever the schedule.
    fn check(h: &Harness, limits: &ConnectionLimits, t0: Instant) -> Result<(), TestCaseError> {
        let (out, rest) = decode_output(h.wire, &h.written);
        // One close frame at most, the last thing written; none on TCP.
        if let Some(i) = out.iter().position(|o| matches!(o, Out::Close(_))) {
            prop_assert!(h.wire != Wire::Tcp);
            prop_assert_eq!(i, out.len() - 1, "written after the close frame: {:?}", out);
            prop_assert_eq!(rest, 0);
            prop_assert!(h.session.is_closing());
        }
        // The rate limits hold: requests within burst + rate * time, refusals within the
        // strikes (refilled at one per second) plus the one that closes.
        let elapsed = (h.now - t0).as_secs_f64();
        let requests = h
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Subscribe { .. } | Action::Unsubscribe { .. }))
            .count() as f64;
        let allowed =
            f64::from(limits.subscribe_burst) + f64::from(limits.subscribe_rate) * elapsed;
        prop_assert!(
            requests <= allowed + 1e-6,
            "{} requests in {}s",
            requests,
            elapsed
        );
        let refusals = f64::from(h.counts.rate_limited);
        prop_assert!(refusals <= f64::from(limits.rate_limit_strikes) + elapsed + 1.0 + 1e-6);
        // An idle session holds no buffers; replies cannot pile up past twice the limits.
        if h.session.rbuf.is_empty() {
            prop_assert_eq!(h.session.rbuf.capacity(), 0);
        }
        if h.session.writing.is_empty() {
            prop_assert!(h.session.writing.capacity() <= 16);
        }
        prop_assert!(h.queue.len() <= 2 * limits.send_queue_messages);
        Ok(())
    }

    proptest! {
        #[test]
        fn the_session_keeps_its_rules_under_any_schedule(
            wire in arb_wire(),
            (idle, pong, close) in (100u64..2000, 50u64..1000, 50u64..1000),
            (rate, burst, strikes) in (1u32..10, 1u32..5, 0u32..3),
            (queue_messages, drops, grace) in (1usize..6, 1u32..4, 100u64..1000),
            ops in prop::collection::vec(arb_op(), 0..40),
        ) {
            let limits = ConnectionLimits {
                max_frame_bytes: MAX_FRAME,
                subscribe_rate: rate,
                subscribe_burst: burst,
                rate_limit_strikes: strikes,
                send_queue_messages: queue_messages,
                send_queue_bytes: 4096,
                slow_consumer_drops: drops,
                slow_consumer_grace: ms(grace),
                idle_timeout: ms(idle),
                pong_timeout: ms(pong),
                close_timeout: ms(close),
                ..ConnectionLimits::default()
            };
            let t0 = Instant::now();
            let mut h = Harness::new(wire, &limits, t0);
            h.instant_publish = false;
            let mut last_input = t0;
            let mut seq = 0u64;
            // The queue asked for a close the session has not taken yet.
            let mut close_asked = false;
            for op in ops {
                let at_deadline = matches!(op, Op::TimerAtDeadline);
                match op {
                    Op::Send(msgs, points) => {
                        let bytes: Vec<u8> = msgs
                            .iter()
                            .filter(|m| m.fits(wire))
                            .flat_map(|m| encode(wire, m))
                            .collect();
                        for chunk in cut(&bytes, &points) {
                            if h.stopped {
                                break;
                            }
                            h.input(chunk)?;
                            last_input = h.now;
                            // Input moves the deadline into the future (unless closing).
                            prop_assert!(
                                h.stopped || h.session.is_closing() || h.session.next_deadline() > h.now
                            );
                        }
                    }
                    Op::Wait(n) => h.now += ms(n),
                    Op::Timer | Op::TimerAtDeadline => {
                        if at_deadline {
                            h.now = h.now.max(h.session.next_deadline());
                        }
                        let deadline = h.session.next_deadline();
                        let was_closing = h.session.is_closing();
                        let pinged = h.session.ping_sent;
                        let (actions, writing) = (h.actions.len(), h.session.writing.len());
                        let idle_closes = h.counts.idle_disconnects;
                        h.session.on_timer(h.now, &h.queue);
                        h.drain()?;
                        if h.now < deadline {
                            // Early: nothing happens.
                            prop_assert_eq!(h.session.next_deadline(), deadline);
                            prop_assert_eq!(h.actions.len(), actions);
                            prop_assert_eq!(h.session.writing.len(), writing);
                            prop_assert_eq!(h.session.is_closing(), was_closing);
                            prop_assert_eq!(h.counts.idle_disconnects, idle_closes);
                        } else {
                            // Due: it acts, and the next deadline is in the future.
                            prop_assert!(h.stopped || h.session.next_deadline() > h.now);
                            if was_closing {
                                prop_assert!(h.stopped, "the close deadline passed");
                            } else if pinged.is_none() && wire != Wire::Tcp {
                                prop_assert!(h.now - last_input >= limits.idle_timeout);
                                prop_assert_eq!(h.session.ping_sent, Some(h.now));
                                prop_assert!(!h.session.is_closing());
                            } else {
                                let silent = match pinged {
                                    Some(at) => h.now - at >= limits.pong_timeout,
                                    None => {
                                        h.now - last_input >= limits.idle_timeout + limits.pong_timeout
                                    }
                                };
                                prop_assert!(silent);
                                prop_assert_eq!(h.counts.idle_disconnects, idle_closes + 1);
                                prop_assert!(h.session.is_closing());
                            }
                        }
                    }
                    Op::Shutdown => {
                        // The driver stops listening for the shutdown once closing.
                        if !h.session.is_closing() {
                            h.session.on_shutdown(h.now, &h.queue);
                            h.drain()?;
                            prop_assert!(h.session.is_closing());
                        }
                    }
                    Op::Fanout(n) => {
                        for _ in 0..n {
                            seq += 1;
                            let frame = message(seq);
                            let outcome = h.queue.push_message(h.wire.encode(&frame), h.now);
                            if outcome == PushOutcome::Disconnect {
                                prop_assert!(!h.session.is_closing());
                                close_asked = true;
                            }
                        }
                    }
                    Op::Queued => {
                        h.session.on_queued(h.now, &h.queue);
                        h.drain()?;
                        prop_assert!(!close_asked || h.session.is_closing());
                    }
                    Op::PublishDone => {
                        if let Some(id) = h.publishes.pop_front() {
                            h.reply(&ServerFrame::Ack { id });
                            h.queue.wake();
                        }
                    }
                    Op::Write(room) => h.write(room.into())?,
                }
                if h.session.is_closing() {
                    close_asked = false;
                }
                if h.stopped {
                    break;
                }
                check(&h, &limits, t0)?;
            }
            // Whatever remains gets written: a WebSocket close ends with its close frame.
            if !h.stopped {
                h.write(usize::MAX)?;
                if h.session.is_closing() && wire != Wire::Tcp {
                    let (out, rest) = decode_output(wire, &h.written);
                    prop_assert_eq!(rest, 0);
                    prop_assert!(matches!(out.last(), Some(Out::Close(_))), "{:?}", out);
                }
            }
        }
    }

    fn ws_harness() -> Harness {
        Harness::new(Wire::WsJson, &test_limits(), Instant::now())
    }

    fn written(h: &Harness) -> Vec<Out> {
        let (out, rest) = decode_output(h.wire, &h.written);
        assert_eq!(rest, 0);
        out
    }

    fn json(frame: &ServerFrame) -> Out {
        Out::Data(frame.encode_json())
    }

    #[test]
    fn requests_become_actions_in_order_and_pings_are_answered_at_once() -> Result<(), TestCaseError>
    {
        let mut h = ws_harness();
        h.instant_publish = false;
        let sub = ClientFrame::subscribe(1, vec![topic(1)]);
        let publish = ClientFrame::Publish {
            id: 2,
            topic: topic(1),
            payload: Payload::Json(Bytes::from_static(b"1")),
        };
        let mut bytes = encode(Wire::WsJson, &Msg::Request(sub));
        bytes.extend(encode(
            Wire::WsJson,
            &Msg::Request(ClientFrame::Ping { id: 3 }),
        ));
        bytes.extend(encode(Wire::WsJson, &Msg::Request(publish)));
        h.input(&bytes)?;
        assert_eq!(
            h.actions,
            vec![
                Action::Subscribe {
                    id: 1,
                    topics: vec![topic(1)]
                },
                Action::Publish {
                    id: 2,
                    topic: topic(1),
                    payload: Payload::Json(Bytes::from_static(b"1")),
                },
            ]
        );
        assert_eq!(h.counts.frames_in, 3);
        h.write(usize::MAX)?;
        // The subscribe's ack (from the index) comes before the pong of the later ping.
        assert_eq!(
            written(&h),
            vec![
                json(&ServerFrame::Ack { id: 1 }),
                json(&ServerFrame::Pong { id: 3 })
            ]
        );
        assert_eq!(h.session.rbuf.capacity(), 0, "the read buffer is released");
        Ok(())
    }

    #[test]
    fn silence_gets_a_ping_then_a_1001_close() -> Result<(), TestCaseError> {
        let mut h = ws_harness();
        let t0 = h.now;
        assert_eq!(h.session.next_deadline(), t0 + ms(1000));
        h.now = t0 + ms(999);
        h.session.on_timer(h.now, &h.queue);
        h.write(usize::MAX)?;
        assert!(h.written.is_empty(), "not due yet");
        h.now = t0 + ms(1000);
        h.session.on_timer(h.now, &h.queue);
        h.write(usize::MAX)?;
        assert_eq!(written(&h), vec![Out::Ping(PING_PAYLOAD.to_vec())]);
        assert_eq!(h.session.next_deadline(), t0 + ms(1500));
        h.now = t0 + ms(1500);
        h.session.on_timer(h.now, &h.queue);
        h.drain()?;
        h.write(usize::MAX)?;
        assert_eq!(
            written(&h),
            vec![Out::Ping(PING_PAYLOAD.to_vec()), Out::Close(1001)]
        );
        assert_eq!(h.counts.idle_disconnects, 1);
        assert_eq!(h.actions, vec![Action::ShutdownWrite]);
        // The peer does not answer: the close deadline ends the session.
        assert_eq!(h.session.next_deadline(), t0 + ms(1700));
        h.now = t0 + ms(1700);
        h.session.on_timer(h.now, &h.queue);
        h.drain()?;
        assert!(h.stopped);
        Ok(())
    }

    #[test]
    fn any_input_resets_the_silence() -> Result<(), TestCaseError> {
        let mut h = ws_harness();
        let t0 = h.now;
        h.now = t0 + ms(1000);
        h.session.on_timer(h.now, &h.queue);
        h.now = t0 + ms(1200);
        h.input(&encode(Wire::WsJson, &Msg::WsPong))?;
        assert_eq!(h.session.next_deadline(), t0 + ms(2200));
        assert_eq!(h.session.ping_sent, None);
        Ok(())
    }

    #[test]
    fn a_silent_device_is_closed_without_a_ping() -> Result<(), TestCaseError> {
        let mut h = Harness::new(Wire::Tcp, &test_limits(), Instant::now());
        let t0 = h.now;
        assert_eq!(h.session.next_deadline(), t0 + ms(1500));
        h.now = t0 + ms(1500);
        h.session.on_timer(h.now, &h.queue);
        h.write(usize::MAX)?;
        assert!(h.written.is_empty(), "no ping and no close frame on TCP");
        assert!(h.session.is_closing());
        assert_eq!(h.counts.idle_disconnects, 1);
        assert_eq!(h.actions, vec![Action::ShutdownWrite]);
        Ok(())
    }

    #[test]
    fn the_peer_closing_first_ends_the_session_once_our_close_is_written(
    ) -> Result<(), TestCaseError> {
        let mut h = ws_harness();
        let mut bytes = encode(Wire::WsJson, &Msg::Request(ClientFrame::Ping { id: 1 }));
        bytes.extend(encode(Wire::WsJson, &Msg::Close(Some(4000))));
        bytes.extend(encode(
            Wire::WsJson,
            &Msg::Request(ClientFrame::Ping { id: 2 }),
        ));
        h.input(&bytes)?;
        assert!(h.session.is_closing());
        assert!(!h.stopped);
        h.write(5)?;
        assert!(!h.stopped, "the close frame is not written yet");
        h.write(usize::MAX)?;
        assert!(h.stopped);
        assert_eq!(
            written(&h),
            vec![json(&ServerFrame::Pong { id: 1 }), Out::Close(4000)]
        );
        Ok(())
    }

    #[test]
    fn on_shutdown_the_client_close_frame_completes_the_handshake() -> Result<(), TestCaseError> {
        let mut h = ws_harness();
        h.session.on_shutdown(h.now, &h.queue);
        h.write(usize::MAX)?;
        assert_eq!(written(&h), vec![Out::Close(1001)]);
        assert_eq!(h.actions, vec![Action::ShutdownWrite]);
        // Data after our close is ignored; the client's close frame ends the session.
        let mut bytes = encode(Wire::WsJson, &Msg::Request(ClientFrame::Ping { id: 1 }));
        bytes.extend(encode(Wire::WsJson, &Msg::Close(None)));
        h.input(&bytes)?;
        assert!(h.stopped);
        assert_eq!(h.counts.frames_in, 0);
        Ok(())
    }

    #[test]
    fn a_close_from_the_queue_keeps_the_half_written_frame() -> Result<(), TestCaseError> {
        let limits = ConnectionLimits {
            send_queue_messages: 2,
            slow_consumer_drops: 1,
            ..test_limits()
        };
        let mut h = Harness::new(Wire::WsJson, &limits, Instant::now());
        for seq in 1..=2 {
            let outcome = h.queue.push_message(h.wire.encode(&message(seq)), h.now);
            assert_eq!(outcome, PushOutcome::Queued);
        }
        h.write(3)?;
        assert_eq!(
            h.session.writing.len(),
            2,
            "the first message is half written"
        );
        for seq in 3..=4 {
            h.queue.push_message(h.wire.encode(&message(seq)), h.now);
        }
        assert_eq!(
            h.queue.push_message(h.wire.encode(&message(5)), h.now),
            PushOutcome::Disconnect
        );
        h.session.on_queued(h.now, &h.queue);
        h.write(usize::MAX)?;
        // The half-written message is finished, the rest dropped, then 1008.
        assert_eq!(written(&h), vec![json(&message(1)), Out::Close(1008)]);
        Ok(())
    }

    #[test]
    fn a_violation_before_the_slow_consumer_close_is_seen_keeps_one_close_frame_last(
    ) -> Result<(), TestCaseError> {
        let limits = ConnectionLimits {
            send_queue_messages: 1,
            slow_consumer_drops: 1,
            ..test_limits()
        };
        let mut h = Harness::new(Wire::WsJson, &limits, Instant::now());
        let frame = message(1);
        h.queue.push_message(h.wire.encode(&frame), h.now);
        assert_eq!(
            h.queue.push_message(h.wire.encode(&frame), h.now),
            PushOutcome::Disconnect
        );
        // The client breaks the protocol before the session saw the queue's request.
        h.input(&encode(Wire::WsJson, &Msg::Unmasked))?;
        h.session.on_queued(h.now, &h.queue);
        h.write(usize::MAX)?;
        assert_eq!(written(&h), vec![json(&frame), Out::Close(1002)]);
        assert!(!h.session.wants_to_write(&h.queue), "nothing left to write");
        Ok(())
    }
}
