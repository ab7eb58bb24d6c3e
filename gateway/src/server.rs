//! The gateway server: listeners, the fan-out of deliveries, and shutdown. The top layer: it
//! wires `shared.rs` (state every task shares) to `connection.rs` (one task per connection).
//!
//! ```text
//!   TcpListener :9090 ──accept──▶ task per connection: HTTP request ─▶ /ws session | response
//!   TcpListener tcp   ──accept──▶ task per connection: TCP session
//!                                    │ subscribe/unsubscribe           ▲ acks, messages
//!                                    ▼                                 │
//!                       Mutex<State { SubscriptionIndex, conns }> ─────┘
//!                                    │ Effect::Subscribe/Unsubscribe     ▲
//!                                    ▼                                   │
//!                           task per upstream request ──▶ dyn Upstream   │
//!   mpsc::Receiver<Delivery> ──▶ dispatcher: encode once per wire, push the same Bytes
//!                                into every subscriber's SendQueue (never waits on one)
//! ```
//!
//! With `[client_tls]` each accepted socket first goes through a TLS handshake (under the
//! handshake timeout; a failure is counted and the socket dropped), then the same session.
//!
//! Every task is spawned on one `TaskTracker`, so `shutdown()` can wait for connections to
//! close (1001) and for their unsubscribes to reach the cluster. Tasks are isolated: a panic
//! in one is caught, counted, and cleaned up by drop guards; the process keeps serving.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use firetower_client::ServerFrame;
use firetower_link::ReconnectPolicy;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, GatewayConfig};
use crate::connection::{serve_http, serve_tcp};
use crate::index::{ConnId, SubscriptionIndex};
use crate::locks::lock;
use crate::metrics::{inc, Metrics, MetricsSnapshot};
use crate::queue::PushOutcome;
use crate::shared::{apply, panic_text, spawn_guarded, Shared, State};
use crate::transport::{tls_handshake, ClientTls, ClientTlsError, Transport};
use crate::upstream::{Delivery, Upstream};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration cannot work.
    #[error("invalid gateway configuration: {0}")]
    Config(#[from] ConfigError),
    /// `[auth]` cannot be used (a key file unreadable or wrong).
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthConfigError),
    /// `[hooks]` cannot be used.
    #[error("{0}")]
    Hooks(String),
    /// `[api]` cannot be used.
    #[error("{0}")]
    Api(#[from] crate::api::ApiConfigError),
    /// The `[client_tls]` certificate or key cannot be used.
    #[error("invalid [client_tls]: {0}")]
    ClientTls(#[from] ClientTlsError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Time a shutdown gives the disconnect hook to take the last batches.
const HOOK_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Removes a connection from the index and the registry however its task ends.
struct ConnGuard {
    shared: Arc<Shared>,
    id: ConnId,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        if let Some(ctx) = state.conns.remove(&self.id) {
            if let Some(user) = ctx.user.get() {
                self.shared.remove_user_connection(&mut state, user);
            }
        }
        state.forget_conn(self.id);
        let effects = state.index.remove_conn(self.id);
        apply(&self.shared, &mut state, effects);
        drop(state);
        self.shared
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy)]
enum ListenerKind {
    Http,
    Tcp,
}

/// Entry point: [`Gateway::start`].
#[derive(Debug)]
pub struct Gateway;

impl Gateway {
    /// Bind the listeners and start serving.
    ///
    /// `deliveries` carries what the cluster pushes to this gateway: the manager link (or a
    /// test fake) holds the `mpsc::Sender<Delivery>`. The dispatcher never blocks on a client,
    /// so a bounded channel only fills when the whole gateway is out of CPU.
    pub async fn start(
        config: GatewayConfig,
        upstream: Arc<dyn Upstream>,
        deliveries: mpsc::Receiver<Delivery>,
    ) -> Result<GatewayHandle, GatewayError> {
        config.validate()?;
        let verifier = match &config.auth {
            Some(auth) => Some(crate::auth::Verifier::load(auth)?),
            None => None,
        };
        let api_keys = match &config.api {
            Some(api) => Some(crate::api::ApiKeys::load(api)?),
            None => None,
        };
        let tls = match &config.client_tls {
            Some(files) => Some(Arc::new(ClientTls::new(files.clone())?)),
            None => None,
        };
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| GatewayError::Bind { addr, source })
        };
        let http = bind(config.listen).await?;
        let tcp = match config.tcp_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let local_addr = http.local_addr().map_err(|source| GatewayError::Bind {
            addr: config.listen,
            source,
        })?;
        let tcp_local_addr = match &tcp {
            Some(l) => Some(l.local_addr().map_err(|source| GatewayError::Bind {
                addr: local_addr,
                source,
            })?),
            None => None,
        };
        let metrics = Metrics::new(upstream.clone());
        let hooks = match &config.hooks {
            Some(h) => Some(
                crate::hooks::Hooks::new(
                    h,
                    firetower_proto::GatewayId(config.id),
                    metrics.hooks.clone(),
                )
                .map_err(|e| GatewayError::Hooks(e.to_string()))?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                index: SubscriptionIndex::new(config.limits.max_topics),
                conns: HashMap::new(),
                users: HashMap::new(),
                recoveries: HashMap::new(),
                recovering: HashMap::new(),
                gaps: HashMap::new(),
            }),
            start_recovery: crate::recovery::start,
            config,
            upstream,
            metrics,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            verifier,
            api_keys,
            hooks,
            bans: Mutex::new(Arc::new(Vec::new())),
            user_buckets: Mutex::new(HashMap::new()),
        });
        if let Some(controls) = shared.upstream.take_controls() {
            tokio::spawn(crate::operators::control_loop(shared.clone(), controls));
        }
        tokio::spawn(crate::operators::stats_loop(shared.clone()));
        tokio::spawn(accept_loop(
            shared.clone(),
            http,
            ListenerKind::Http,
            tls.clone(),
        ));
        if let Some(tcp) = tcp {
            tokio::spawn(accept_loop(
                shared.clone(),
                tcp,
                ListenerKind::Tcp,
                tls.clone(),
            ));
        }
        tokio::spawn(dispatch(shared.clone(), deliveries));
        tracing::info!(
            %local_addr,
            ?tcp_local_addr,
            client_tls = tls.is_some(),
            "gateway listening"
        );
        Ok(GatewayHandle {
            shared,
            local_addr,
            tcp_local_addr,
            tls,
        })
    }
}

/// A running gateway. Dropping it stops accepting and closes connections abruptly; call
/// [`GatewayHandle::shutdown`] for a graceful drain.
#[derive(Debug)]
pub struct GatewayHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    tcp_local_addr: Option<SocketAddr>,
    tls: Option<Arc<ClientTls>>,
}

impl GatewayHandle {
    /// The address of the WebSocket/HTTP listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the raw TCP listener, when enabled.
    pub fn tcp_local_addr(&self) -> Option<SocketAddr> {
        self.tcp_local_addr
    }

    /// Whether the client port serves TLS (`[client_tls]`).
    pub fn serves_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Read the `[client_tls]` certificate and key files again. New handshakes present the
    /// new certificate; open connections keep theirs. On error (a file unreadable, no
    /// certificate, a key that does not match) the gateway keeps the certificate it has.
    pub fn reload_tls(&self) -> Result<(), ClientTlsError> {
        match &self.tls {
            Some(tls) => tls.reload(),
            None => Err(ClientTlsError::NotConfigured),
        }
    }

    /// The gateway's counters now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// The same counters as `/metrics` (Prometheus text).
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render(self.shared.upstream.ready())
    }

    /// Graceful drain: stop accepting, close every WebSocket with 1001, let the cluster know
    /// the gateway no longer wants its topics, and wait for all of it (at most
    /// `drain_timeout`). Returns true when everything finished in time.
    pub async fn shutdown(&self) -> bool {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        let drained =
            tokio::time::timeout(self.shared.config.drain_timeout, self.shared.tracker.wait())
                .await
                .is_ok();
        // The disconnect events of the connections just closed reach the application.
        if let Some(hooks) = &self.shared.hooks {
            let _ = tokio::time::timeout(HOOK_FLUSH_TIMEOUT, hooks.flush()).await;
        }
        drained
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    kind: ListenerKind,
    tls: Option<Arc<ClientTls>>,
) {
    // 5 ms doubling to 1 s, without jitter: one listener has no herd to spread.
    let policy = ReconnectPolicy {
        base: Duration::from_millis(5),
        cap: Duration::from_secs(1),
        ..ReconnectPolicy::default()
    };
    let mut failures = 0u32;
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                failures = 0;
                spawn_connection(&shared, stream, peer, kind, tls.as_deref());
            }
            Err(e) => {
                // EMFILE and friends: wait for connections to go away instead of spinning.
                failures = failures.saturating_add(1);
                let backoff = policy.ceiling(failures);
                tracing::warn!(error = %e, ?backoff, "accept failed");
                tokio::select! {
                    _ = shared.cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

fn spawn_connection(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    tls: Option<&ClientTls>,
) {
    let open = shared.metrics.connections_open.load(Ordering::Relaxed);
    if open >= shared.config.max_connections as u64 {
        inc(&shared.metrics.connections_refused);
        return; // dropping the stream closes it
    }
    let _ = stream.set_nodelay(true);
    inc(&shared.metrics.connections_open);
    inc(&shared.metrics.connections_total);
    let id = ConnId(shared.next_conn.fetch_add(1, Ordering::Relaxed));
    let guard = ConnGuard {
        shared: shared.clone(),
        id,
    };
    let s = shared.clone();
    let tls = tls.map(|tls| match kind {
        ListenerKind::Http => tls.http_config(),
        ListenerKind::Tcp => tls.tcp_config(),
    });
    // The guard lives outside the session future so it runs even when that future panics.
    spawn_guarded(
        shared,
        async move {
            let _guard = guard;
            let stream = match tls {
                None => Transport::Plain(stream),
                Some(config) => {
                    let deadline = tokio::time::Instant::now() + s.config.limits.handshake_timeout;
                    // Boxed: a plaintext connection's task does not grow by the handshake's
                    // state (the task is the size of its largest await).
                    match Box::pin(tls_handshake(stream, config, deadline)).await {
                        Ok(transport) => transport,
                        Err(e) => {
                            inc(&s.metrics.tls_handshake_failures);
                            tracing::debug!(error = %e, "client TLS handshake failed");
                            return;
                        }
                    }
                }
            };
            match kind {
                ListenerKind::Http => Box::pin(serve_http(s, stream, id, peer)).await,
                ListenerKind::Tcp => Box::pin(serve_tcp(s, stream, id, peer)).await,
            }
        },
        || {},
    );
}

async fn dispatch(shared: Arc<Shared>, mut deliveries: mpsc::Receiver<Delivery>) {
    loop {
        let delivery = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            d = deliveries.recv() => match d {
                Some(d) => d,
                None => return,
            },
        };
        if let Err(panic) =
            std::panic::catch_unwind(AssertUnwindSafe(|| fan_out(&shared, delivery)))
        {
            inc(&shared.metrics.panics);
            tracing::error!(
                panic = panic_text(&*panic),
                "fan-out panicked; delivery skipped"
            );
        }
    }
}

/// Push one delivery to every local subscriber: encoded once per wire, shared by all.
fn fan_out(shared: &Shared, delivery: Delivery) {
    inc(&shared.metrics.deliveries_in);
    let frame = ServerFrame::Message {
        topic: delivery.topic,
        payload: delivery.payload,
        term: delivery.term,
        seq: delivery.seq,
        position: delivery.position,
    };
    let topic = match &frame {
        ServerFrame::Message { topic, .. } => topic.clone(),
        _ => return,
    };
    let mut encoded: [Option<Bytes>; 3] = [None, None, None];
    let now = Instant::now();
    let (mut queued, mut dropped) = (0u64, 0u64);
    let offset = match &frame {
        ServerFrame::Message {
            position: Some(p), ..
        } => p.offset,
        _ => 0,
    };
    let mut state = lock(&shared.state);
    let State {
        index,
        conns,
        recovering,
        gaps,
        ..
    } = &mut *state;
    for conn in index.subscribers(&topic) {
        let Some(ctx) = conns.get(&conn) else {
            continue;
        };
        let bytes = encoded[ctx.wire.index()]
            .get_or_insert_with(|| ctx.wire.encode(&frame))
            .clone();
        if !recovering.is_empty() {
            if let Some(buffer) = recovering.get_mut(&(conn, topic.clone())) {
                // Held until the connection's missed messages are out (recovery.rs).
                buffer.push(offset, bytes);
                continue;
            }
        }
        if !gaps.is_empty() && ctx.queue.free_messages() > 1 {
            // Room again: tell the connection what it missed first.
            if let Some(missed) = gaps.remove(&conn) {
                for (t, n) in missed {
                    ctx.reply(&ServerFrame::Gap {
                        topic: t,
                        dropped: n,
                    });
                }
            }
        }
        match ctx.queue.push_message(bytes, now) {
            PushOutcome::Queued => queued += 1,
            PushOutcome::Dropped => {
                dropped += 1;
                *gaps
                    .entry(conn)
                    .or_default()
                    .entry(topic.clone())
                    .or_default() += 1;
            }
            PushOutcome::Disconnect => {
                dropped += 1;
                inc(&shared.metrics.slow_consumer_disconnects);
            }
        }
    }
    drop(state);
    shared
        .metrics
        .messages_out
        .fetch_add(queued, Ordering::Relaxed);
    shared
        .metrics
        .messages_dropped
        .fetch_add(dropped, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::ConnCtx;
    use crate::upstream::{BoxFuture, Payload, Stamp, UpstreamError};

    struct Null;

    impl Upstream for Null {
        fn subscribe(&self, _: &str) -> BoxFuture<'static, Result<(), UpstreamError>> {
            Box::pin(async { Ok(()) })
        }
        fn unsubscribe(&self, _: &str) -> BoxFuture<'static, Result<(), UpstreamError>> {
            Box::pin(async { Ok(()) })
        }
        fn publish(&self, _: &str, _: Payload) -> BoxFuture<'static, Result<Stamp, UpstreamError>> {
            Box::pin(async {
                Ok(Stamp {
                    term: 1,
                    seq: 1,
                    position: None,
                })
            })
        }
        fn ready(&self) -> bool {
            true
        }
    }

    /// The per-connection state that lives while a client is idle: the connection task's
    /// future (the session, parked in its select), the registry entry and the send queue.
    /// Heap buffers are zero while idle (see `session.rs`); this bounds the rest.
    #[tokio::test]
    async fn idle_connection_state_fits_the_budget() {
        let config = GatewayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..GatewayConfig::default()
        };
        let (_tx, rx) = mpsc::channel(1);
        let gw = Gateway::start(config, Arc::new(Null), rx).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        let peer = server_side.peer_addr().unwrap();
        let future = serve_http(
            gw.shared.clone(),
            Transport::Plain(server_side),
            ConnId(1),
            peer,
        );
        let task = std::mem::size_of_val(&future);
        let ctx = std::mem::size_of::<ConnCtx>();
        let stream = std::mem::size_of::<TcpStream>();
        eprintln!("connection future {task} B, ConnCtx {ctx} B, TcpStream {stream} B");
        // 3.5 KiB in a debug build: the session, the driver with who the client is (user,
        // address, token deadline, publish budget) and the registry entry.
        assert!(task + ctx < 3 * 1024 + 512, "{task} + {ctx}");
    }
}
