//! The I/O of one client connection: the HTTP request on the client port (answered, or
//! upgraded to a WebSocket), raw TCP connections, and the task that moves bytes between the
//! socket and the connection's [`ClientSession`] (the protocol itself lives there).
//!
//! ```text
//!   one task per connection: select { gateway shutdown, socket writable, queue notified,
//!                                     socket readable, timer (session.next_deadline()) }
//!        │ the event goes into the ClientSession, then its actions come out:
//!        │   Subscribe / Unsubscribe ─▶ index (acks through the queue)
//!        │   Publish ─▶ upstream task ─▶ ack or error through the queue
//!        │   ShutdownWrite ─▶ half-close     Stop ─▶ drop the socket
//!        └ writable ─▶ vectored write of session.output() ─▶ session.on_written(n)
//! ```
//!
//! Memory per idle connection: the socket is polled through readiness (`readable()`,
//! `try_read`) so no read future holds a buffer while the client is silent, the session
//! releases its buffers when they drain, and replies go through the same queue as messages
//! (no per-connection channel). The socket is a [`Transport`]: plain TCP, or TLS once
//! `server.rs` has done the handshake (`transport.rs`), behind the same readiness calls.

use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};

use firetower_client::http::{parse_request_head, MAX_REQUEST_HEAD};
use firetower_client::ws;
use firetower_client::{Payload, ServerFrame};

use crate::config::ConnectionLimits;
use crate::http;
use crate::index::{ConnId, IndexError};
use crate::locks::lock;
use crate::metrics::inc;
use crate::queue::{QueueLimits, SendQueue};
use crate::session::{Action, ClientSession, SessionCounts};
use crate::shared::{apply, spawn_guarded, ConnCtx, Shared};
use crate::transport::Transport;
use crate::upstream::UpstreamError;
use crate::wire::Wire;

/// Growth step of the buffer that receives an HTTP request head. A WebSocket upgrade request
/// is a few hundred bytes; small steps keep the memory an idle connection leaves behind in
/// the allocator (freed, but not returned to the system) small.
const HEAD_CHUNK: usize = 512;
/// Most frames handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// Serve one connection on the HTTP port: read one request, answer it or upgrade it.
pub(crate) async fn serve_http(shared: Arc<Shared>, mut stream: Transport, id: ConnId) {
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
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
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

async fn respond(stream: &mut Transport, response: Vec<u8>, limits: &ConnectionLimits) {
    let _ = tokio::time::timeout(limits.close_timeout, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}

/// Serve one raw TCP (device) connection.
pub(crate) async fn serve_tcp(shared: Arc<Shared>, stream: Transport, id: ConnId) {
    run_session(shared, stream, id, Wire::Tcp, BytesMut::new()).await;
}

async fn run_session(
    shared: Arc<Shared>,
    stream: Transport,
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
    let session = ClientSession::new(wire, limits, Instant::now(), buffered);
    let mut driver = Driver {
        shared,
        ctx,
        stream,
        session,
    };
    driver.run().await;
}

/// Whether the connection goes on.
enum Flow {
    Continue,
    Stop,
}

/// The task of one connection: its socket, its session, and what it shares with the server.
struct Driver {
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    stream: Transport,
    session: ClientSession,
}

enum Event {
    Shutdown,
    Writable(io::Result<()>),
    Queued,
    Readable(io::Result<()>),
    Timer,
}

impl Driver {
    async fn run(&mut self) {
        // Input that arrived with the handshake is served before waiting for more.
        if let Flow::Stop = self.perform_actions(Instant::now()).await {
            return;
        }
        loop {
            let closing = self.session.is_closing();
            let has_output =
                self.session.wants_to_write(&self.ctx.queue) || self.stream.wants_write();
            let can_read = self.ctx.in_flight.load(Ordering::Acquire)
                < self.shared.config.limits.max_in_flight
                || closing;
            let deadline = tokio::time::Instant::from_std(self.session.next_deadline());
            let event = tokio::select! {
                biased;
                _ = self.shared.cancel.cancelled(), if !closing => Event::Shutdown,
                r = self.stream.writable(), if has_output => Event::Writable(r),
                _ = self.ctx.queue.notified() => Event::Queued,
                r = self.stream.readable(), if can_read => Event::Readable(r),
                _ = tokio::time::sleep_until(deadline) => Event::Timer,
            };
            let now = Instant::now();
            let queue = &self.ctx.queue;
            let flow = match event {
                Event::Shutdown => {
                    self.session.on_shutdown(now, queue);
                    Flow::Continue
                }
                Event::Writable(Ok(())) => self.write(now),
                Event::Queued => {
                    self.session.on_queued(now, queue);
                    Flow::Continue
                }
                Event::Readable(Ok(())) => self.read(now),
                Event::Writable(Err(_)) | Event::Readable(Err(_)) => Flow::Stop,
                Event::Timer => {
                    self.session.on_timer(now, queue);
                    Flow::Continue
                }
            };
            if let Flow::Stop = flow {
                return;
            }
            if let Flow::Stop = self.perform_actions(now).await {
                return;
            }
        }
    }

    /// Read what the socket has into the session's buffer.
    fn read(&mut self, now: Instant) -> Flow {
        match self.stream.try_read_buf(self.session.receive_buffer()) {
            Ok(0) => Flow::Stop,
            Ok(_) => {
                self.session.on_received(now);
                Flow::Continue
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }

    /// Write as much as the socket takes.
    fn write(&mut self, now: Instant) -> Flow {
        loop {
            let frames = self.session.output(now, &self.ctx.queue);
            if frames.is_empty() {
                // TLS: the last records must reach the socket before the session learns
                // that all is written (a close then shuts the socket down).
                return match self.stream.try_flush() {
                    Ok(()) => {
                        self.session.on_all_written();
                        Flow::Continue
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Flow::Continue,
                    Err(_) => Flow::Stop,
                };
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, frame) in slices.iter_mut().zip(frames.iter()) {
                *slot = IoSlice::new(frame);
                count += 1;
            }
            match self.stream.try_write_vectored(&slices[..count]) {
                // A socket that takes nothing is gone (WriteZero).
                Ok(0) => return Flow::Stop,
                Ok(written) => self.session.on_written(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flow::Continue,
                Err(_) => return Flow::Stop,
            }
        }
    }

    /// Do what the session asks until it has nothing more, counting its events as they come.
    async fn perform_actions(&mut self, now: Instant) -> Flow {
        loop {
            let action = self.session.poll_action(now, &self.ctx.queue);
            let counts = self.session.take_counts();
            self.count(counts);
            let Some(action) = action else {
                return Flow::Continue;
            };
            match action {
                Action::Subscribe { id, topics } => self.subscribe(id, &topics),
                Action::Unsubscribe { id, topics } => self.unsubscribe(id, &topics),
                Action::Publish { id, topic, payload } => self.publish(id, topic, payload),
                Action::ShutdownWrite => {
                    // Half-close: the peer sees the end of our stream after the close frame
                    // and can answer; we keep reading until its close frame, EOF or the
                    // deadline.
                    let _ = self.stream.shutdown().await;
                }
                Action::Stop => return Flow::Stop,
            }
        }
    }

    fn count(&self, counts: SessionCounts) {
        let m = &self.shared.metrics;
        for (counter, n) in [
            (&m.frames_in, counts.frames_in),
            (&m.protocol_errors, counts.protocol_errors),
            (&m.rate_limited, counts.rate_limited),
            (&m.idle_disconnects, counts.idle_disconnects),
        ] {
            for _ in 0..n {
                inc(counter);
            }
        }
    }

    fn subscribe(&self, id: u64, topics: &[Arc<str>]) {
        let mut state = lock(&self.shared.state);
        match state.index.subscribe(self.ctx.id, id, topics) {
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

    fn unsubscribe(&self, id: u64, topics: &[Arc<str>]) {
        let mut state = lock(&self.shared.state);
        let effects = state.index.unsubscribe(self.ctx.id, topics);
        apply(&self.shared, &mut state, effects);
        drop(state);
        self.ctx.reply(&ServerFrame::Ack { id });
    }

    fn publish(&self, id: u64, topic: Arc<str>, payload: Payload) {
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
    ctx.queue.wake();
}
