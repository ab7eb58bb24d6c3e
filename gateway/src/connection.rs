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
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use bytes::{Buf, BytesMut};

use firetower_client::http::{parse_request_head, RequestHead, MAX_REQUEST_HEAD};
use firetower_client::ws;
use firetower_client::{Payload, ServerFrame};

use crate::api::{self, ApiRequest, ApiResponse};
use crate::auth::{AuthError, Op, Principal};
use crate::config::{ConnectionLimits, GatewayConfig};
use crate::hooks::{Caller, Denial, HookEvent, HookOutcome};
use crate::http;
use crate::index::{ConnId, IndexError};
use crate::locks::lock;
use crate::metrics::inc;
use crate::queue::{QueueLimits, SendQueue};
use crate::session::{
    Action, ClientSession, SessionCounts, CLOSE_FORBIDDEN, CLOSE_HOOK_UNAVAILABLE,
    CLOSE_TOO_MANY_CONNECTIONS, CLOSE_UNAUTHORIZED,
};
use crate::shared::{apply, spawn_guarded, unix_ms, ConnCtx, Shared};
use crate::transport::Transport;
use crate::upstream::{Stamp, UpstreamError};
use crate::wire::Wire;

/// Growth step of the buffer that receives an HTTP request head. A WebSocket upgrade request
/// is a few hundred bytes; small steps keep the memory an idle connection leaves behind in
/// the allocator (freed, but not returned to the system) small.
const HEAD_CHUNK: usize = 512;
/// Most frames handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// Serve one connection on the HTTP port: read one request, answer it or upgrade it.
pub(crate) async fn serve_http(
    shared: Arc<Shared>,
    mut stream: Transport,
    id: ConnId,
    peer: SocketAddr,
) {
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
    if head.path.starts_with("/api/") {
        Box::pin(serve_api(&shared, &mut stream, &head, head_len, buf)).await;
        return;
    }
    let upgrade = if head.path == "/ws" {
        Some(ws::negotiate(&head))
    } else {
        None
    };
    if let Some(Ok(upgrade)) = upgrade {
        if let Some(origin) = head.header("origin") {
            if !origin_allowed(&shared.config, origin) {
                inc(&shared.metrics.handshake_failures);
                let body = format!(
                    "origin {:?} may not open WebSockets here (allowed_origins)\n",
                    origin.chars().take(128).collect::<String>()
                );
                respond(&mut stream, http::text_response(403, &body), limits).await;
                return;
            }
        }
        // Boxed: the hook call's state must not sit in every idle connection's future.
        let admission = Box::pin(admit(&shared, Some(&head), peer, id)).await;
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
        run_session(shared, stream, id, wire, buf, peer, admission).await;
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
        _ => http::text_response(
            404,
            "not found; try /ws, /healthz, /readyz, /metrics or POST /api/publish\n",
        ),
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

/// True when a browser page from `origin` may open a WebSocket here.
fn origin_allowed(config: &GatewayConfig, origin: &str) -> bool {
    config.allowed_origins.is_empty()
        || config
            .allowed_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
}

/// Serve one request of the backend API and close.
async fn serve_api(
    shared: &Arc<Shared>,
    stream: &mut Transport,
    head: &RequestHead,
    head_len: usize,
    mut buf: BytesMut,
) {
    let limits = &shared.config.limits;
    let response = match api_response(shared, stream, head, head_len, &mut buf).await {
        Ok(r) | Err(r) => r,
    };
    inc(&shared.metrics.api_requests);
    respond(
        stream,
        http::response(response.status, "application/json", &response.body),
        limits,
    )
    .await;
}

async fn api_response(
    shared: &Arc<Shared>,
    stream: &mut Transport,
    head: &RequestHead,
    head_len: usize,
    buf: &mut BytesMut,
) -> Result<ApiResponse, ApiResponse> {
    let Some(keys) = &shared.api_keys else {
        return Err(ApiResponse::error(
            404,
            "not_found",
            "the backend API is off on this gateway ([api] in the config)",
        ));
    };
    if head.path != "/api/publish" && head.path != "/api/broadcast" {
        return Err(ApiResponse::error(
            404,
            "not_found",
            "the API has POST /api/publish and POST /api/broadcast",
        ));
    }
    if head.method != "POST" {
        return Err(ApiResponse::error(
            405,
            "method_not_allowed",
            "use POST with a JSON body",
        ));
    }
    if !keys.authorizes(head) {
        return Err(ApiResponse::error(
            401,
            "unauthorized",
            "missing or unknown API key: send `Authorization: apikey <key>`",
        ));
    }
    let limits = &shared.config.limits;
    let len = api::content_length(head, limits.max_frame_bytes)?;
    let mut body = api::body_so_far(buf, head_len);
    let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    while body.len() < len {
        body.reserve(len - body.len());
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut body)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => {
                return Err(ApiResponse::error(
                    400,
                    "bad_request",
                    "the body ended before Content-Length bytes arrived",
                ))
            }
        }
    }
    body.truncate(len);
    let request = api::parse(&head.path, &body)?;
    let publish = |topic: Arc<str>, data: firetower_client::Payload| {
        let shared = shared.clone();
        async move {
            if let Some(ban) = shared.topic_ban(&topic) {
                inc(&shared.metrics.forbidden);
                return Err(UpstreamError::Refused {
                    code: "forbidden".into(),
                    message: format!("topic {topic:?} is banned ({})", ban.reason),
                });
            }
            inc(&shared.metrics.publishes_in);
            let started = Instant::now();
            let result = match tokio::time::timeout(
                shared.config.request_timeout,
                shared.upstream.publish(&topic, data),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(UpstreamError::Timeout),
            };
            shared.metrics.observe_publish(started.elapsed());
            if result.is_err() {
                inc(&shared.metrics.publish_failures);
            }
            result
        }
    };
    match request {
        ApiRequest::Publish { topic, data } => {
            Ok(api::publish_response(publish(topic, data).await))
        }
        ApiRequest::Broadcast { topics, data } => {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, topic) in topics.iter().enumerate() {
                let fut = publish(topic.clone(), data.clone());
                tasks.spawn(async move { (i, fut.await) });
            }
            let mut results: Vec<Option<Result<Stamp, UpstreamError>>> =
                (0..topics.len()).map(|_| None).collect();
            while let Some(done) = tasks.join_next().await {
                if let Ok((i, r)) = done {
                    if let Some(slot) = results.get_mut(i) {
                        *slot = Some(r);
                    }
                }
            }
            let results = topics
                .into_iter()
                .zip(results)
                .map(|(t, r)| {
                    let r = r.unwrap_or_else(|| {
                        Err(UpstreamError::Refused {
                            code: "internal_error".into(),
                            message: "the gateway failed while publishing; retry".into(),
                        })
                    });
                    (t, r)
                })
                .collect();
            Ok(api::broadcast_response(results))
        }
    }
}

/// How a connection starts, decided before its session runs.
pub(crate) enum Admission {
    /// Authenticated (or anonymous): serve it.
    Admitted(Principal),
    /// No credential yet: the first frame must be `auth`, within the handshake timeout.
    Pending,
    /// Refused: the session opens only to close with `code`, after an error frame.
    Refused {
        code: u16,
        reason: &'static str,
        error: &'static str,
        message: String,
    },
}

impl Admission {
    fn unauthorized(e: &AuthError) -> Admission {
        Admission::Refused {
            code: CLOSE_UNAUTHORIZED,
            reason: e.close_reason(),
            error: "unauthorized",
            message: e.to_string(),
        }
    }

    /// A connect hook said no (or failed, under `on_failure = "deny"`): 4401, or 4503 (try
    /// again later) when the hook itself failed.
    fn hook_denied(denial: Denial) -> Admission {
        let failed = denial.code == crate::hooks::HOOK_UNAVAILABLE;
        Admission::Refused {
            code: if failed {
                CLOSE_HOOK_UNAVAILABLE
            } else {
                CLOSE_UNAUTHORIZED
            },
            reason: if failed {
                "connect hook unavailable"
            } else {
                "refused by the application"
            },
            error: if failed {
                "hook_unavailable"
            } else {
                "unauthorized"
            },
            message: denial.message,
        }
    }

    fn banned(ban: &firetower_proto::Ban) -> Admission {
        Admission::Refused {
            code: CLOSE_FORBIDDEN,
            reason: "banned",
            error: "banned",
            message: if ban.reason.is_empty() {
                "banned by an operator".into()
            } else {
                format!("banned by an operator: {}", ban.reason)
            },
        }
    }
}

/// The credential a request carries: `?token=` or `Authorization: Bearer`.
fn request_token(head: &RequestHead) -> Option<String> {
    if let Some(t) = head.query_param("token") {
        return Some(t);
    }
    let value = head.header("authorization")?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Decide how a new connection starts: bans on its address, its token if it brought one.
pub(crate) async fn admit(
    shared: &Arc<Shared>,
    head: Option<&RequestHead>,
    peer: SocketAddr,
    id: ConnId,
) -> Admission {
    if let Some(ban) = shared.connection_ban(None, peer) {
        return Admission::banned(&ban);
    }
    let token = head.and_then(request_token);
    let mut principal = match (token, &shared.verifier) {
        (Some(token), Some(verifier)) => match verifier.verify(&token, SystemTime::now()) {
            Ok(p) => Some(p),
            Err(e) => return Admission::unauthorized(&e),
        },
        _ => None,
    };
    if let Some(hooks) = shared
        .hooks
        .as_ref()
        .filter(|h| h.wants(HookEvent::Connect))
    {
        let conn = id.0.to_string();
        let user = principal.as_ref().and_then(|p| p.user.clone());
        let who = Caller {
            conn: &conn,
            remote: peer,
            user: user.as_deref(),
        };
        let headers = head.map(RequestHead::headers).unwrap_or_default();
        let grant = match hooks.connect(who, headers).await {
            HookOutcome::Allow(grant) => grant,
            HookOutcome::Deny(denial) => return Admission::hook_denied(denial),
        };
        let granted = match (principal.take(), grant.user) {
            (Some(p), Some(u)) if p.user.as_deref() != Some(u.as_str()) => {
                Err("the connect hook named another user than the token".to_string())
            }
            (Some(p), _) => p.with_patterns(grant.subscribe, grant.publish),
            (None, Some(u)) => Principal::new(&u, grant.subscribe, grant.publish, None),
            // The hook let the connection in but named nobody: anonymous where that is
            // allowed, else a token may still come in the first frame.
            (None, None) if shared.config.allow_anonymous => Ok(Principal::anonymous()),
            (None, None) if shared.verifier.is_some() => return Admission::Pending,
            (None, None) => Principal::unnamed(grant.subscribe, grant.publish),
        };
        match granted {
            Ok(p) => principal = Some(p),
            Err(message) => {
                return Admission::Refused {
                    code: CLOSE_UNAUTHORIZED,
                    reason: "refused by the application",
                    error: "unauthorized",
                    message,
                }
            }
        }
    }
    match principal {
        Some(p) => {
            if let Some(ban) = shared.connection_ban(p.user.as_deref(), peer) {
                return Admission::banned(&ban);
            }
            Admission::Admitted(p)
        }
        None if shared.config.anonymous_allowed() => Admission::Admitted(Principal::anonymous()),
        None => Admission::Pending,
    }
}

/// Serve one raw TCP (device) connection.
pub(crate) async fn serve_tcp(
    shared: Arc<Shared>,
    stream: Transport,
    id: ConnId,
    peer: SocketAddr,
) {
    let admission = Box::pin(admit(&shared, None, peer, id)).await;
    run_session(
        shared,
        stream,
        id,
        Wire::Tcp,
        BytesMut::new(),
        peer,
        admission,
    )
    .await;
}

async fn run_session(
    shared: Arc<Shared>,
    stream: Transport,
    id: ConnId,
    wire: Wire,
    buffered: BytesMut,
    peer: SocketAddr,
    admission: Admission,
) {
    let limits = &shared.config.limits;
    let ctx = Arc::new(ConnCtx {
        id,
        wire,
        queue: SendQueue::new(QueueLimits::from_limits(limits)),
        in_flight: AtomicUsize::new(0),
        remote: peer,
        since_ms: unix_ms(),
        user: OnceLock::new(),
    });
    lock(&shared.state).conns.insert(id, ctx.clone());
    let now = Instant::now();
    let session = ClientSession::new(wire, limits, now, buffered);
    let mut driver = Driver {
        shared,
        ctx,
        stream,
        session,
        principal: None,
    };
    match admission {
        Admission::Admitted(p) => driver.authenticated(now, p, None),
        Admission::Pending => {
            let deadline = now + driver.shared.config.limits.handshake_timeout;
            driver
                .session
                .set_auth_deadline(Some((deadline, "authentication required")));
        }
        Admission::Refused {
            code,
            reason,
            error,
            message,
        } => driver.refuse(now, code, reason, error, message),
    }
    driver.run().await;
    if let Some(hooks) = &driver.shared.hooks {
        let conn = id.0.to_string();
        let user = driver.ctx.user.get().cloned();
        hooks.disconnect(
            Caller {
                conn: &conn,
                remote: peer,
                user: user.as_deref(),
            },
            driver.session.close_reason(),
        );
    }
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
    /// Who the connection acts as; `None` until it authenticates.
    principal: Option<Box<Principal>>,
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
            if !matches!(
                action,
                Action::Auth { .. } | Action::ShutdownWrite | Action::Stop
            ) && self.principal.is_none()
            {
                self.refuse(
                    now,
                    CLOSE_UNAUTHORIZED,
                    "authentication required",
                    "unauthorized",
                    AuthError::Missing.to_string(),
                );
                continue;
            }
            match action {
                Action::Subscribe { id, topics } => {
                    if self.permitted(now, id, Op::Subscribe, &topics)
                        && self.subscribe_hook(id, &topics).await
                    {
                        self.subscribe(id, &topics);
                    }
                }
                Action::SubscribeRecover {
                    id,
                    topics,
                    recover,
                } => {
                    if self.permitted(now, id, Op::Subscribe, &topics)
                        && self.subscribe_hook(id, &topics).await
                    {
                        self.subscribe_recovering(id, &topics, recover);
                    }
                }
                Action::History { id, topic, limit } => {
                    // Reading a topic's history is reading the topic: the subscribe right.
                    if self.permitted(now, id, Op::Subscribe, std::slice::from_ref(&topic)) {
                        crate::recovery::answer_history(
                            &self.shared,
                            self.ctx.clone(),
                            id,
                            topic,
                            limit,
                        );
                    }
                }
                Action::Unsubscribe { id, topics } => self.unsubscribe(id, &topics),
                Action::Publish { id, topic, payload } => {
                    if self.permitted(now, id, Op::Publish, std::slice::from_ref(&topic)) {
                        if let Some(payload) = self.publish_hook(id, &topic, payload).await {
                            self.publish(id, topic, payload);
                        }
                    }
                }
                Action::Auth { id, token } => self.auth(now, id, &token),
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

    /// Refuse the connection: an error frame (TCP clients have no close code), then the close.
    fn refuse(
        &mut self,
        now: Instant,
        code: u16,
        reason: &'static str,
        error: &'static str,
        message: String,
    ) {
        let m = &self.shared.metrics;
        match code {
            CLOSE_UNAUTHORIZED => inc(&m.auth_failures),
            _ => inc(&m.operator_closes),
        }
        self.ctx.reply(&ServerFrame::error(None, error, message));
        self.session.close_with(now, &self.ctx.queue, code, reason);
    }

    /// The connection is `principal` from now on (`id`: the auth frame to ack, if any).
    fn authenticated(&mut self, now: Instant, principal: Principal, id: Option<u64>) {
        if let Some(user) = &principal.user {
            match self.ctx.user.get() {
                Some(current) if current != user => {
                    let e = AuthError::OtherUser;
                    self.refuse(
                        now,
                        CLOSE_UNAUTHORIZED,
                        e.close_reason(),
                        "unauthorized",
                        e.to_string(),
                    );
                    return;
                }
                Some(_) => {}
                None => {
                    let mut state = lock(&self.shared.state);
                    if !self.shared.add_user_connection(&mut state, user) {
                        drop(state);
                        let max = self.shared.config.limits.max_connections_per_user;
                        self.refuse(
                            now,
                            CLOSE_TOO_MANY_CONNECTIONS,
                            "too many connections",
                            "too_many_connections",
                            format!("this user already holds {max} connections on this gateway"),
                        );
                        return;
                    }
                    let _ = self.ctx.user.set(user.clone());
                }
            }
        }
        let deadline = principal.expires.map(|exp| {
            let left = exp.duration_since(SystemTime::now()).unwrap_or_default();
            (now + left, "token expired")
        });
        self.session.set_auth_deadline(deadline);
        if let (Some(id), Some(user)) = (id, &principal.user) {
            self.ctx.reply(&ServerFrame::Authenticated {
                id,
                user: user.to_string(),
            });
        }
        self.principal = Some(Box::new(principal));
    }

    /// An `auth` frame: authenticate, or refresh the token of the same user.
    fn auth(&mut self, now: Instant, id: u64, token: &str) {
        let Some(verifier) = &self.shared.verifier else {
            self.ctx.reply(&ServerFrame::error(
                Some(id),
                "not_configured",
                "this gateway verifies no tokens ([auth] is not configured)",
            ));
            return;
        };
        match verifier.verify(token, SystemTime::now()) {
            Ok(p) => {
                if let Some(ban) = self
                    .shared
                    .connection_ban(p.user.as_deref(), self.ctx.remote)
                {
                    if let Admission::Refused {
                        code,
                        reason,
                        error,
                        message,
                    } = Admission::banned(&ban)
                    {
                        self.refuse(now, code, reason, error, message);
                    }
                    return;
                }
                self.authenticated(now, p, Some(id));
            }
            Err(e) => self.refuse(
                now,
                CLOSE_UNAUTHORIZED,
                e.close_reason(),
                "unauthorized",
                e.to_string(),
            ),
        }
    }

    /// The hook asked about a request, when one is configured for its event: `conn` and who.
    fn caller_parts(&self) -> (String, Option<Arc<str>>) {
        (self.ctx.id.0.to_string(), self.ctx.user.get().cloned())
    }

    /// Ask the subscribe hook (when configured); refuse `id` with its answer when it says no.
    /// Awaited in the connection's own task, so replies keep their order.
    async fn subscribe_hook(&self, id: u64, topics: &[Arc<str>]) -> bool {
        let Some(hooks) = self
            .shared
            .hooks
            .as_ref()
            .filter(|h| h.wants(HookEvent::Subscribe))
        else {
            return true;
        };
        let (conn, user) = self.caller_parts();
        let who = Caller {
            conn: &conn,
            remote: self.ctx.remote,
            user: user.as_deref(),
        };
        match hooks.subscribe(who, topics).await {
            HookOutcome::Allow(()) => true,
            HookOutcome::Deny(d) => {
                inc(&self.shared.metrics.forbidden);
                self.ctx
                    .reply(&ServerFrame::error(Some(id), &d.code, d.message));
                false
            }
        }
    }

    /// Ask the publish hook (when configured): the payload to publish (the hook's replacement,
    /// if it gave one), or `None` after refusing `id`.
    async fn publish_hook(&self, id: u64, topic: &str, payload: Payload) -> Option<Payload> {
        let Some(hooks) = self
            .shared
            .hooks
            .as_ref()
            .filter(|h| h.wants(HookEvent::Publish))
        else {
            return Some(payload);
        };
        let (conn, user) = self.caller_parts();
        let who = Caller {
            conn: &conn,
            remote: self.ctx.remote,
            user: user.as_deref(),
        };
        match hooks.publish(who, topic, &payload).await {
            HookOutcome::Allow(None) => Some(payload),
            HookOutcome::Allow(Some(replaced)) => {
                if replaced.len() > self.shared.config.limits.max_frame_bytes {
                    self.ctx.reply(&ServerFrame::error(
                        Some(id),
                        "frame_too_large",
                        "the publish hook's replacement data is larger than max_frame_bytes",
                    ));
                    return None;
                }
                Some(replaced)
            }
            HookOutcome::Deny(d) => {
                inc(&self.shared.metrics.forbidden);
                self.ctx
                    .reply(&ServerFrame::error(Some(id), &d.code, d.message));
                None
            }
        }
    }

    /// Check permissions, topic bans and the per-user publish budget for a request; refuse it
    /// with an error frame when one says no.
    fn permitted(&mut self, now: Instant, id: u64, op: Op, topics: &[Arc<str>]) -> bool {
        let Some(principal) = &self.principal else {
            return false;
        };
        let event = match op {
            Op::Subscribe => HookEvent::Subscribe,
            Op::Publish => HookEvent::Publish,
        };
        let hook_decides = self.shared.hooks.as_ref().is_some_and(|h| h.wants(event));
        for topic in topics {
            if !principal.may(op, topic, hook_decides) {
                inc(&self.shared.metrics.forbidden);
                let what = match op {
                    Op::Subscribe => "subscribe to",
                    Op::Publish => "publish to",
                };
                self.ctx.reply(&ServerFrame::error(
                    Some(id),
                    "forbidden",
                    format!("you may not {what} {topic:?}"),
                ));
                return false;
            }
            if let Some(ban) = self.shared.topic_ban(topic) {
                inc(&self.shared.metrics.forbidden);
                let why = if ban.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", ban.reason)
                };
                self.ctx.reply(&ServerFrame::error(
                    Some(id),
                    "forbidden",
                    format!("topic {topic:?} is banned by an operator{why}"),
                ));
                return false;
            }
        }
        if op == Op::Publish {
            if let Some(user) = &principal.user {
                if !self.shared.take_user_publish(user, now) {
                    inc(&self.shared.metrics.rate_limited);
                    self.ctx.reply(&ServerFrame::error(
                        Some(id),
                        "rate_limited",
                        "too many publishes from this user; slow down and retry",
                    ));
                    return false;
                }
            }
        }
        true
    }

    fn count(&self, counts: SessionCounts) {
        let m = &self.shared.metrics;
        for (counter, n) in [
            (&m.frames_in, counts.frames_in),
            (&m.protocol_errors, counts.protocol_errors),
            (&m.rate_limited, counts.rate_limited),
            (&m.idle_disconnects, counts.idle_disconnects),
            (&m.auth_failures, counts.auth_expiries),
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

    /// [`Self::subscribe`], then recover `recover` once the topics are committed (the index's
    /// ack starts the recovery, recovery.rs).
    fn subscribe_recovering(
        &self,
        id: u64,
        topics: &[Arc<str>],
        recover: Vec<(Arc<str>, firetower_client::Position)>,
    ) {
        let mut state = lock(&self.shared.state);
        state.recoveries.insert((self.ctx.id, id), recover);
        match state.index.subscribe(self.ctx.id, id, topics) {
            Ok(effects) => apply(&self.shared, &mut state, effects),
            Err(e @ IndexError::TooManyTopics { .. }) => {
                state.recoveries.remove(&(self.ctx.id, id));
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
                finish_publish(&shared, &ctx, id, started, result);
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
    result: Result<Stamp, UpstreamError>,
) {
    shared.metrics.observe_publish(started.elapsed());
    ctx.in_flight.fetch_sub(1, Ordering::AcqRel);
    match result {
        // A history topic's ack says where the message was stored (the client keeps it as
        // its position); a plain topic's ack stays as it always was.
        Ok(Stamp {
            term,
            seq,
            position: Some(position),
        }) => ctx.reply(&ServerFrame::Published {
            id,
            term,
            seq,
            position: Some(position),
        }),
        Ok(_) => ctx.reply(&ServerFrame::Ack { id }),
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
