//! The gateway server: listeners, the shared state, the fan-out of deliveries, and shutdown.
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
//! Every task is spawned on one `TaskTracker`, so `shutdown()` can wait for connections to
//! close (1001) and for their unsubscribes to reach the cluster. Tasks are isolated: a panic
//! in one is caught, counted, and cleaned up by drop guards; the process keeps serving.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use firetower_client::ServerFrame;
use firetower_link::ReconnectPolicy;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, GatewayConfig};
use crate::connection::{serve_http, serve_tcp, ConnCtx, PushOutcome};
use crate::index::{ConnId, Effect, SubscriptionIndex};
use crate::metrics::{inc, Metrics, MetricsSnapshot};
use crate::upstream::{Delivery, Upstream, UpstreamError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration cannot work.
    #[error("invalid gateway configuration: {0}")]
    Config(#[from] ConfigError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Lock a mutex, ignoring poisoning: every critical section leaves its data consistent
/// before calling anything that can panic, and a panicking connection must not wedge the rest.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The index and the live connections, under one lock so that fan-out sees a consistent pair.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) index: SubscriptionIndex,
    pub(crate) conns: HashMap<ConnId, Arc<ConnCtx>>,
}

/// What every task of one gateway shares.
pub(crate) struct Shared {
    pub(crate) config: GatewayConfig,
    pub(crate) upstream: Arc<dyn Upstream>,
    pub(crate) metrics: Metrics,
    pub(crate) state: Mutex<State>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
    next_conn: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Run index effects: replies now (under the lock, cheap), upstream requests in tasks.
pub(crate) fn apply(shared: &Arc<Shared>, state: &mut State, effects: Vec<Effect>) {
    for effect in effects {
        match effect {
            Effect::Subscribe(topic) => spawn_upstream(shared, topic, true),
            Effect::Unsubscribe(topic) => spawn_upstream(shared, topic, false),
            Effect::Ack { conn, id } => {
                if let Some(c) = state.conns.get(&conn) {
                    c.reply(&ServerFrame::Ack { id });
                }
            }
            Effect::Fail {
                conn,
                id,
                topic,
                error,
            } => {
                if let Some(c) = state.conns.get(&conn) {
                    c.reply(&ServerFrame::error(
                        Some(id),
                        error.code(),
                        format!("subscribe to {topic:?} failed: {error}"),
                    ));
                }
            }
        }
    }
    shared
        .metrics
        .topics
        .store(state.index.topic_count() as u64, Ordering::Relaxed);
    shared
        .metrics
        .subscriptions
        .store(state.index.subscription_count() as u64, Ordering::Relaxed);
}

fn spawn_upstream(shared: &Arc<Shared>, topic: Arc<str>, subscribe: bool) {
    let s = shared.clone();
    let t = topic.clone();
    let on_panic = {
        let s = shared.clone();
        move || {
            let err = Err(UpstreamError::Unavailable(
                "the gateway failed internally".into(),
            ));
            upstream_done(&s, &topic, subscribe, err);
        }
    };
    spawn_guarded(
        shared,
        async move {
            let request = if subscribe {
                s.upstream.subscribe(&t)
            } else {
                s.upstream.unsubscribe(&t)
            };
            let result = match tokio::time::timeout(s.config.request_timeout, request).await {
                Ok(r) => r,
                Err(_) => Err(UpstreamError::Timeout),
            };
            upstream_done(&s, &t, subscribe, result);
        },
        on_panic,
    );
}

fn upstream_done(
    shared: &Arc<Shared>,
    topic: &str,
    subscribe: bool,
    result: Result<(), UpstreamError>,
) {
    if let Err(e) = &result {
        tracing::warn!(topic, subscribe, error = %e, "upstream request failed");
    }
    let mut state = lock(&shared.state);
    let effects = if subscribe {
        state.index.subscribe_done(topic, result)
    } else {
        state.index.unsubscribe_done(topic, result)
    };
    apply(shared, &mut state, effects);
}

/// A future that turns a panic into `Err` instead of unwinding into the runtime.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic")
}

/// Spawn a tracked task; if it panics, count it, log it and run `on_panic`.
pub(crate) fn spawn_guarded<F, P>(shared: &Arc<Shared>, fut: F, on_panic: P)
where
    F: Future<Output = ()> + Send + 'static,
    P: FnOnce() + Send + 'static,
{
    let s = shared.clone();
    shared.tracker.spawn(async move {
        if let Err(panic) = CatchUnwind(Box::pin(fut)).await {
            inc(&s.metrics.panics);
            tracing::error!(panic = panic_text(&*panic), "task panicked; isolated");
            on_panic();
        }
    });
}

/// Removes a connection from the index and the registry however its task ends.
struct ConnGuard {
    shared: Arc<Shared>,
    id: ConnId,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        state.conns.remove(&self.id);
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
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                index: SubscriptionIndex::new(config.limits.max_topics),
                conns: HashMap::new(),
            }),
            config,
            upstream,
            metrics: Metrics::default(),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
        });
        tokio::spawn(accept_loop(shared.clone(), http, ListenerKind::Http));
        if let Some(tcp) = tcp {
            tokio::spawn(accept_loop(shared.clone(), tcp, ListenerKind::Tcp));
        }
        tokio::spawn(dispatch(shared.clone(), deliveries));
        tracing::info!(%local_addr, ?tcp_local_addr, "gateway listening");
        Ok(GatewayHandle {
            shared,
            local_addr,
            tcp_local_addr,
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
        tokio::time::timeout(self.shared.config.drain_timeout, self.shared.tracker.wait())
            .await
            .is_ok()
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, kind: ListenerKind) {
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
            Ok((stream, _peer)) => {
                failures = 0;
                spawn_connection(&shared, stream, kind);
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

fn spawn_connection(shared: &Arc<Shared>, stream: TcpStream, kind: ListenerKind) {
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
    // The guard lives outside the session future so it runs even when that future panics.
    spawn_guarded(
        shared,
        async move {
            let _guard = guard;
            match kind {
                ListenerKind::Http => Box::pin(serve_http(s, stream, id)).await,
                ListenerKind::Tcp => Box::pin(serve_tcp(s, stream, id)).await,
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
    };
    let topic = match &frame {
        ServerFrame::Message { topic, .. } => topic.clone(),
        _ => return,
    };
    let mut encoded: [Option<Bytes>; 3] = [None, None, None];
    let now = Instant::now();
    let (mut queued, mut dropped) = (0u64, 0u64);
    let state = lock(&shared.state);
    for conn in state.index.subscribers(&topic) {
        let Some(ctx) = state.conns.get(&conn) else {
            continue;
        };
        let bytes = encoded[ctx.wire.index()]
            .get_or_insert_with(|| ctx.wire.encode(&frame))
            .clone();
        match ctx.queue.push_message(bytes, now) {
            PushOutcome::Queued => queued += 1,
            PushOutcome::Dropped => dropped += 1,
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
    use crate::upstream::{BoxFuture, Payload, Stamp};

    struct Null;

    impl Upstream for Null {
        fn subscribe(&self, _: &str) -> BoxFuture<'static, Result<(), UpstreamError>> {
            Box::pin(async { Ok(()) })
        }
        fn unsubscribe(&self, _: &str) -> BoxFuture<'static, Result<(), UpstreamError>> {
            Box::pin(async { Ok(()) })
        }
        fn publish(&self, _: &str, _: Payload) -> BoxFuture<'static, Result<Stamp, UpstreamError>> {
            Box::pin(async { Ok(Stamp { term: 1, seq: 1 }) })
        }
        fn ready(&self) -> bool {
            true
        }
    }

    /// The per-connection state that lives while a client is idle: the connection task's
    /// future (the session, parked in its select), the registry entry and the send queue.
    /// Heap buffers are zero while idle (see `connection.rs`); this bounds the rest.
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
        let future = serve_http(gw.shared.clone(), server_side, ConnId(1));
        let task = std::mem::size_of_val(&future);
        let ctx = std::mem::size_of::<ConnCtx>();
        let stream = std::mem::size_of::<TcpStream>();
        eprintln!("connection future {task} B, ConnCtx {ctx} B, TcpStream {stream} B");
        assert!(task + ctx < 3 * 1024, "{task} + {ctx}");
    }
}
