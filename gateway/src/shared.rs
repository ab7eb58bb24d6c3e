//! What every task of one gateway shares: the configuration, the upstream, the metrics, and
//! under one lock the subscription index with the registry of live connections. The bottom
//! layer: the connection driver and the server both build on it, it knows neither.
//!
//! ```text
//!   server (accept, fan-out) ──▶ connection (driver) ──▶ session, queue, wire
//!              │                        │
//!              └──────────┬─────────────┘
//!                         ▼
//!   shared: Shared { config, upstream, metrics, Mutex<State { index, conns }>, tasks }
//!           apply(effects): replies through the connections' queues, upstream requests in
//!           guarded tasks whose completions go back into the index
//! ```

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use firetower_client::{Position, ServerFrame};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use firetower_link::TokenBucket;
use firetower_proto::Ban;

use crate::api::ApiKeys;
use crate::auth::Verifier;
use crate::config::GatewayConfig;
use crate::index::{ConnId, Effect, SubscriptionIndex};
use crate::locks::lock;
use crate::metrics::{inc, Metrics};
use crate::queue::SendQueue;
use crate::upstream::{Upstream, UpstreamError};
use crate::wire::Wire;

/// What the server knows of a live connection (registered while its session runs).
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) id: ConnId,
    pub(crate) wire: Wire,
    pub(crate) queue: SendQueue,
    /// The connection's requests waiting for the cluster.
    pub(crate) in_flight: AtomicUsize,
    /// The client's address.
    pub(crate) remote: SocketAddr,
    /// When it connected, Unix milliseconds.
    pub(crate) since_ms: u64,
    /// The user it authenticated as (set once: a refresh must name the same user).
    pub(crate) user: OnceLock<Arc<str>>,
}

impl ConnCtx {
    pub(crate) fn reply(&self, frame: &ServerFrame) {
        self.queue.push_reply(self.wire.encode(frame));
    }
}

/// The index and the live connections, under one lock so that fan-out sees a consistent pair.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) index: SubscriptionIndex,
    pub(crate) conns: HashMap<ConnId, Arc<ConnCtx>>,
    /// Open connections per authenticated user, for the per-user limit.
    pub(crate) users: HashMap<Arc<str>, u32>,
    /// Subscribe requests with `recover`, until the index acks them (recovery.rs).
    pub(crate) recoveries: HashMap<(ConnId, u64), Recover>,
    /// Topics being recovered per connection: fan-out holds their live messages here.
    pub(crate) recovering: HashMap<(ConnId, Arc<str>), RecoveryBuffer>,
    /// Messages dropped per connection and topic, not yet reported (`gap` frames).
    pub(crate) gaps: HashMap<ConnId, HashMap<Arc<str>, u64>>,
    /// Connections that asked for the join and leave events of a topic.
    pub(crate) join_leave: std::collections::HashSet<(ConnId, Arc<str>)>,
    /// Per `(topic, user)`: this gateway's connections of the user holding the topic, and
    /// whether the count is being sent to the topic's leader.
    pub(crate) presence: HashMap<(Arc<str>, Arc<str>), PresenceSlot>,
}

/// This gateway's count of one user's connections on one topic, as the cluster must learn it.
#[derive(Debug, Default)]
pub(crate) struct PresenceSlot {
    pub(crate) count: u32,
    /// A task is sending the count (it sends again if the count moved meanwhile).
    pub(crate) sending: bool,
}

impl State {
    /// Count a message of `topic` dropped for `conn`; reported once the connection has room.
    pub(crate) fn note_gap(&mut self, conn: ConnId, topic: &Arc<str>) {
        *self
            .gaps
            .entry(conn)
            .or_default()
            .entry(topic.clone())
            .or_default() += 1;
    }

    /// Everything kept for a connection that is gone.
    pub(crate) fn forget_conn(&mut self, conn: ConnId) {
        self.gaps.remove(&conn);
        if !self.join_leave.is_empty() {
            self.join_leave.retain(|(c, _)| *c != conn);
        }
        if !self.recovering.is_empty() {
            self.recovering.retain(|(c, _), _| *c != conn);
        }
        if !self.recoveries.is_empty() {
            self.recoveries.retain(|(c, _), _| *c != conn);
        }
    }
}

/// The topics of a subscribe to recover, each from the client's position.
pub(crate) type Recover = Vec<(Arc<str>, Position)>;

/// Live messages one recovering `(connection, topic)` holds at most.
pub(crate) const RECOVERY_BUFFER_MESSAGES: usize = 4_096;

/// A recovering topic's live messages, held until its missed ones are delivered.
#[derive(Debug, Default)]
pub(crate) struct RecoveryBuffer {
    /// `(offset, frame)`: the message's offset (0 without history) and its encoded frame.
    pub(crate) frames: std::collections::VecDeque<(u64, bytes::Bytes)>,
    /// Messages dropped (oldest first) since the recovery task last looked.
    pub(crate) overflowed: u64,
}

impl RecoveryBuffer {
    /// Hold one live message.
    pub(crate) fn push(&mut self, offset: u64, frame: bytes::Bytes) {
        if self.frames.len() >= RECOVERY_BUFFER_MESSAGES {
            self.frames.pop_front();
            self.overflowed += 1;
        }
        self.frames.push_back((offset, frame));
    }
}

/// Starts the recovery of a subscribe request whose topics committed (recovery.rs; a
/// function so that this bottom layer does not import the recovery).
pub(crate) type StartRecovery = fn(&Arc<Shared>, &mut State, ConnId, u64, Recover);

/// What every task of one gateway shares.
pub(crate) struct Shared {
    pub(crate) config: GatewayConfig,
    pub(crate) upstream: Arc<dyn Upstream>,
    pub(crate) metrics: Metrics,
    pub(crate) state: Mutex<State>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) next_conn: AtomicU64,
    /// Token verification (`[auth]`).
    pub(crate) verifier: Option<Verifier>,
    /// Backend API keys (`[api]`).
    pub(crate) api_keys: Option<ApiKeys>,
    /// The application's lifecycle hooks (`[hooks]`).
    pub(crate) hooks: Option<crate::hooks::Hooks>,
    /// The demo page's token signer (`[demo] tokens`).
    pub(crate) demo: Option<crate::demo::DemoTokens>,
    /// The operator bans as last pushed by the cluster.
    pub(crate) bans: Mutex<Arc<Vec<Ban>>>,
    /// Runs a recovery (recovery::start).
    pub(crate) start_recovery: StartRecovery,
    /// Publish rate per user, when `limits.user_publish_rate` is set; an entry lives while the
    /// user has a connection here.
    pub(crate) user_buckets: Mutex<HashMap<Arc<str>, TokenBucket>>,
}

/// Unix milliseconds now.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shared {
    /// The active ban refusing `topic`, if any.
    pub(crate) fn topic_ban(&self, topic: &str) -> Option<Ban> {
        let bans = lock(&self.bans).clone();
        let now = unix_ms();
        bans.iter()
            .find(|b| b.is_active(now) && b.bans_topic(topic))
            .cloned()
    }

    /// The active ban refusing this user or address, if any.
    pub(crate) fn connection_ban(&self, user: Option<&str>, remote: SocketAddr) -> Option<Ban> {
        let bans = lock(&self.bans).clone();
        let now = unix_ms();
        bans.iter()
            .find(|b| {
                b.is_active(now) && (b.bans_ip(remote.ip()) || user.is_some_and(|u| b.bans_user(u)))
            })
            .cloned()
    }

    /// Take one publish from `user`'s shared budget; true when allowed (always, without a
    /// per-user limit).
    pub(crate) fn take_user_publish(&self, user: &Arc<str>, now: Instant) -> bool {
        let l = &self.config.limits;
        if l.user_publish_rate == 0 {
            return true;
        }
        let mut buckets = lock(&self.user_buckets);
        buckets
            .entry(user.clone())
            .or_insert_with(|| TokenBucket::new(l.user_publish_rate, l.user_publish_burst, now))
            .take(now)
    }

    /// Count a new connection of `user`; false when that is past the per-user limit (the
    /// connection is not counted then).
    pub(crate) fn add_user_connection(&self, state: &mut State, user: &Arc<str>) -> bool {
        let max = self.config.limits.max_connections_per_user;
        let n = state.users.entry(user.clone()).or_insert(0);
        if max > 0 && *n >= max {
            if *n == 0 {
                state.users.remove(user);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// A connection of `user` ended.
    pub(crate) fn remove_user_connection(&self, state: &mut State, user: &Arc<str>) {
        if let Some(n) = state.users.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.users.remove(user);
                lock(&self.user_buckets).remove(user);
            }
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// `user`'s connections here on `topic` grew or shrank by one: the cluster learns the new
/// count (one task per `(topic, user)` at a time, always sending the latest count).
pub(crate) fn presence_change(
    shared: &Arc<Shared>,
    state: &mut State,
    topic: &Arc<str>,
    user: &Arc<str>,
    joined: bool,
) {
    let key = (topic.clone(), user.clone());
    let slot = state.presence.entry(key.clone()).or_default();
    slot.count = if joined {
        slot.count.saturating_add(1)
    } else {
        slot.count.saturating_sub(1)
    };
    if slot.sending {
        return;
    }
    slot.sending = true;
    let s = shared.clone();
    let on_panic = {
        let s = shared.clone();
        let key = key.clone();
        move || {
            if let Some(slot) = lock(&s.state).presence.get_mut(&key) {
                slot.sending = false;
            }
        }
    };
    spawn_guarded(
        shared,
        async move {
            loop {
                let Some(count) = lock(&s.state).presence.get(&key).map(|p| p.count) else {
                    return;
                };
                let sent = tokio::time::timeout(
                    s.config.request_timeout,
                    s.upstream.presence_update(&key.0, &key.1, count),
                )
                .await;
                let ok = matches!(sent, Ok(Ok(())));
                if !ok {
                    if s.cancel.is_cancelled() {
                        return;
                    }
                    tracing::debug!(topic = %key.0, user = %key.1, "presence update failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
                let mut state = lock(&s.state);
                let Some(slot) = state.presence.get_mut(&key) else {
                    return;
                };
                if slot.count == count {
                    slot.sending = false;
                    if count == 0 {
                        state.presence.remove(&key);
                    }
                    return;
                }
            }
        },
        on_panic,
    );
}

/// A join or leave from the cluster: told to every connection here that subscribed to `topic`
/// with `join_leave`.
pub(crate) fn presence_event(shared: &Shared, topic: &Arc<str>, user: String, joined: bool) {
    let state = lock(&shared.state);
    if state.join_leave.is_empty() {
        return;
    }
    let frame = ServerFrame::PresenceEvent {
        topic: topic.clone(),
        user,
        joined,
    };
    for conn in state.index.subscribers(topic) {
        if !state.join_leave.contains(&(conn, topic.clone())) {
            continue;
        }
        if let Some(ctx) = state.conns.get(&conn) {
            ctx.reply(&frame);
        }
    }
}

/// Run index effects: replies now (under the lock, cheap), upstream requests in tasks.
pub(crate) fn apply(shared: &Arc<Shared>, state: &mut State, effects: Vec<Effect>) {
    for effect in effects {
        match effect {
            Effect::Subscribe(topic) => spawn_upstream(shared, topic, true),
            Effect::Unsubscribe(topic) => spawn_upstream(shared, topic, false),
            Effect::Ack { conn, id } => {
                if let Some(recover) = state.recoveries.remove(&(conn, id)) {
                    (shared.start_recovery)(shared, state, conn, id, recover);
                } else if let Some(c) = state.conns.get(&conn) {
                    c.reply(&ServerFrame::Ack { id });
                }
            }
            Effect::Fail {
                conn,
                id,
                topic,
                error,
            } => {
                state.recoveries.remove(&(conn, id));
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

/// The text of a caught panic, for the log.
pub(crate) fn panic_text(panic: &(dyn Any + Send)) -> &str {
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
