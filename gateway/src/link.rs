//! The gateway's link to the topic managers.
//!
//! ```text
//!   subscribe("room.1") ─▶ group_of(topic, G) ─▶ LeaderCache[g] ─▶ QUIC stream to that manager
//!                                                   ▲        │
//!             NotLeader { leader } ─────────────────┘        ▼
//!             transport error: forget the leader, try the next manager after a backoff
//!             (exponential, full jitter), until the request's deadline
//! ```
//!
//! Every request is one bidirectional QUIC stream on a connection kept per manager.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use firetower_proto::link::{
    gateway_reply, gateway_request, GatewayReply, GatewayRequest, GetRouting, Publish, Routing,
    Subscribe, TopicGateways, Unsubscribe,
};
use firetower_proto::{decode_frame, encode_frame, group_of, validate_topic, MAX_LINK_FRAME_BYTES};
use rand::Rng;

/// Tuning of the link client.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Give up on one request after this long (across retries and leader changes).
    pub request_timeout: Duration,
    /// First retry delay; doubles per failed attempt up to `max_backoff` (full jitter).
    pub min_backoff: Duration,
    /// Largest retry delay.
    pub max_backoff: Duration,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(1_000),
        }
    }
}

/// Why a link request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// No manager answered before the deadline. A write may or may not have taken effect.
    #[error("no manager completed the request within {0:?}: {1}")]
    Timeout(Duration, String),
    /// The manager refused the request; `code` is snake_case (`invalid_topic`, `refused`, ...).
    #[error("{code}: {message}")]
    Refused {
        /// The error code.
        code: String,
        /// The manager's explanation.
        message: String,
    },
    /// The topic name is not valid; nothing was sent.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] firetower_proto::TopicError),
    /// The QUIC endpoint could not be created.
    #[error("QUIC endpoint: {0}")]
    Endpoint(String),
}

impl LinkError {
    /// True when a write might have been applied even though it failed (timeouts).
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, LinkError::Timeout(..))
            || matches!(self, LinkError::Refused { code, .. } if code == "timeout")
    }
}

/// A committed subscription change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// False when it was already in effect.
    pub changed: bool,
    /// Log index of the committed entry.
    pub index: u64,
}

/// The manager link of one gateway. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LinkClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    gateway: u64,
    endpoint: quinn::Endpoint,
    options: LinkOptions,
    seeds: Vec<SocketAddr>,
    connections: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    routing: RwLock<LeaderCache>,
    /// Bumped whenever a cached leader changes.
    routing_version: tokio::sync::watch::Sender<u64>,
    /// When a slow request last asked the other managers for the routing: one such poll per
    /// [`ROUTING_POLL_EVERY`] for the whole client, however many requests wait.
    last_routing_poll: Mutex<Option<std::time::Instant>>,
}

/// A request that has had no answer for this long starts asking the other managers who leads
/// (a dead leader is then noticed within an election, not a connection timeout).
const ROUTING_POLL_AFTER: Duration = Duration::from_millis(200);
/// While requests wait, the routing is asked for at most this often. It bounds how late a new
/// leader is noticed after its election (it was 500 ms, which showed as 0.5 s steps in the
/// unavailability measured by `chaos run leader-kill-loop`).
const ROUTING_POLL_EVERY: Duration = Duration::from_millis(100);

/// What the gateway knows of the cluster's routing.
#[derive(Debug, Default)]
struct LeaderCache {
    groups: u32,
    cluster_id: String,
    managers: Vec<SocketAddr>,
    leaders: Vec<Option<SocketAddr>>,
}

enum Attempt {
    Reply(GatewayReply),
    /// Failed before the request could reach the manager: safe to send again.
    Transport(String),
    /// Failed after the request may have reached the manager: a write may have taken effect.
    Indeterminate(String),
}

impl LinkClient {
    /// Connect to the cluster through any of `managers` (QUIC addresses) and load its routing.
    pub async fn connect(
        gateway: u64,
        managers: Vec<SocketAddr>,
        options: LinkOptions,
    ) -> Result<LinkClient, LinkError> {
        let bind: SocketAddr = match managers.first() {
            Some(a) if a.is_ipv6() => "[::]:0".parse().map_err(|_| unreachable_addr())?,
            _ => "0.0.0.0:0".parse().map_err(|_| unreachable_addr())?,
        };
        let endpoint =
            crate::quic::client_endpoint(bind).map_err(|e| LinkError::Endpoint(e.to_string()))?;
        let client = LinkClient {
            inner: Arc::new(Inner {
                gateway,
                endpoint,
                options,
                seeds: managers.clone(),
                connections: Mutex::new(HashMap::new()),
                routing: RwLock::new(LeaderCache {
                    managers,
                    ..LeaderCache::default()
                }),
                routing_version: tokio::sync::watch::channel(0).0,
                last_routing_poll: Mutex::new(None),
            }),
        };
        client.refresh_routing().await?;
        Ok(client)
    }

    /// The number of groups of the cluster.
    pub fn groups(&self) -> u32 {
        self.read_cache().groups
    }

    /// The cluster id reported by the managers.
    pub fn cluster_id(&self) -> String {
        self.read_cache().cluster_id.clone()
    }

    /// Subscribe this gateway to `topic`; returns once committed in the topic's group.
    pub async fn subscribe(&self, topic: &str) -> Result<Written, LinkError> {
        self.subscribe_in_session(topic, 0).await
    }

    /// Subscribe for the gateway session `epoch`: a group that still holds an older session
    /// of this gateway expires it first, in the same log entry, so the old session's expiry
    /// can never take this subscription with it.
    pub async fn subscribe_in_session(
        &self,
        topic: &str,
        epoch: u64,
    ) -> Result<Written, LinkError> {
        let op = gateway_request::Op::Subscribe(Subscribe {
            topic: topic.to_string(),
            epoch,
        });
        self.write(topic, op).await
    }

    /// Unsubscribe this gateway from `topic`; returns once committed.
    pub async fn unsubscribe(&self, topic: &str) -> Result<Written, LinkError> {
        let op = gateway_request::Op::Unsubscribe(Unsubscribe {
            topic: topic.to_string(),
        });
        self.write(topic, op).await
    }

    /// The gateways subscribed to `topic` (linearizable read at the group's leader).
    pub async fn topic_gateways(&self, topic: &str) -> Result<Vec<u64>, LinkError> {
        let op = gateway_request::Op::TopicGateways(TopicGateways {
            topic: topic.to_string(),
        });
        match self.request(topic, op).await? {
            gateway_reply::Result::Gateways(g) => Ok(g.gateways),
            other => Err(unexpected(&other)),
        }
    }

    /// Publish to `topic`; returns the `(term, seq)` its leader gave the message once every
    /// subscribed gateway has it.
    pub async fn publish(
        &self,
        topic: &str,
        data: Vec<u8>,
        json: bool,
    ) -> Result<(u64, u64), LinkError> {
        let op = gateway_request::Op::Publish(Publish {
            topic: topic.to_string(),
            data,
            json,
        });
        match self.request(topic, op).await? {
            gateway_reply::Result::Published(p) => Ok((p.term, p.seq)),
            other => Err(unexpected(&other)),
        }
    }

    /// This gateway's id.
    pub fn gateway(&self) -> u64 {
        self.inner.gateway
    }

    /// The QUIC addresses of every manager known from the routing table.
    pub fn managers(&self) -> Vec<SocketAddr> {
        self.read_cache().managers.clone()
    }

    /// True when a leader is known for every group.
    pub fn all_leaders_known(&self) -> bool {
        let cache = self.read_cache();
        cache.groups > 0 && cache.leaders.iter().all(|l| l.is_some())
    }

    /// Open a long-lived bidirectional stream to a manager (for the session).
    pub(crate) async fn open_stream(
        &self,
        addr: SocketAddr,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
        let conn = self.connection(addr).await?;
        match conn.open_bi().await {
            Ok(s) => Ok(s),
            Err(e) => {
                self.inner
                    .connections
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&addr);
                Err(e.to_string())
            }
        }
    }

    /// Reload the routing table from any manager that answers.
    pub async fn refresh_routing(&self) -> Result<(), LinkError> {
        let deadline = tokio::time::Instant::now() + self.inner.options.request_timeout;
        let mut attempt = 0u32;
        let mut last_error = String::from("no manager address given");
        loop {
            let candidates = {
                let cache = self.read_cache();
                let mut c = cache.managers.clone();
                for s in &self.inner.seeds {
                    if !c.contains(s) {
                        c.push(*s);
                    }
                }
                c
            };
            for addr in candidates {
                let request = GatewayRequest {
                    gateway: self.inner.gateway,
                    op: Some(gateway_request::Op::GetRouting(GetRouting {})),
                };
                match self.send(addr, &request, deadline).await {
                    Attempt::Reply(GatewayReply {
                        result: Some(gateway_reply::Result::Routing(r)),
                    }) if r.groups > 0 => {
                        self.apply_routing(r);
                        return Ok(());
                    }
                    Attempt::Reply(r) => last_error = format!("{addr}: {:?}", r.result),
                    Attempt::Transport(e) | Attempt::Indeterminate(e) => {
                        last_error = format!("{addr}: {e}")
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LinkError::Timeout(
                    self.inner.options.request_timeout,
                    last_error,
                ));
            }
            self.backoff(attempt).await;
            attempt += 1;
        }
    }

    /// Replace the routing table with one pushed by a manager.
    pub(crate) fn apply_routing(&self, r: Routing) {
        if r.groups == 0 {
            return;
        }
        let mut cache = self
            .inner
            .routing
            .write()
            .unwrap_or_else(|e| e.into_inner());
        cache.groups = r.groups;
        cache.cluster_id = r.cluster_id;
        let managers: Vec<SocketAddr> = r
            .managers
            .iter()
            .filter_map(|m| m.quic.parse().ok())
            .collect();
        if !managers.is_empty() {
            cache.managers = managers;
        }
        // Merge: a manager that does not know a group's leader (an election it has not seen
        // the end of) must not erase a leader this gateway learned from elsewhere.
        cache.leaders.resize(r.groups as usize, None);
        for l in r.leaders {
            if let (Some(slot), Ok(addr)) = (
                cache.leaders.get_mut(l.group as usize),
                l.leader_quic.parse::<SocketAddr>(),
            ) {
                *slot = Some(addr);
            }
        }
        drop(cache);
        self.inner.routing_version.send_modify(|v| *v += 1);
    }

    async fn write(&self, topic: &str, op: gateway_request::Op) -> Result<Written, LinkError> {
        match self.request(topic, op).await? {
            gateway_reply::Result::Done(d) => Ok(Written {
                changed: d.changed,
                index: d.index,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Send a request about `topic` to its group's leader, following `NotLeader` hints and
    /// retrying transport failures until the deadline.
    async fn request(
        &self,
        topic: &str,
        op: gateway_request::Op,
    ) -> Result<gateway_reply::Result, LinkError> {
        validate_topic(topic)?;
        // Subscribe, unsubscribe and reads may be repeated; a publish repeated after it may
        // have reached a leader could be delivered twice, so it is never sent again once sent.
        let idempotent = !matches!(op, gateway_request::Op::Publish(_));
        let request = GatewayRequest {
            gateway: self.inner.gateway,
            op: Some(op),
        };
        let deadline = tokio::time::Instant::now() + self.inner.options.request_timeout;
        let mut attempt = 0u32;
        let mut rotation = 0usize;
        let mut last_error;
        loop {
            let (group, target) = {
                let cache = self.read_cache();
                let group = group_of(topic, cache.groups);
                let leader = cache.leaders.get(group as usize).copied().flatten();
                let fallback = if cache.managers.is_empty() {
                    None
                } else {
                    Some(cache.managers[rotation % cache.managers.len()])
                };
                (group, leader.or(fallback))
            };
            let Some(target) = target else {
                return Err(LinkError::Timeout(
                    Duration::ZERO,
                    "no managers known".into(),
                ));
            };
            let attempt_result = tokio::select! {
                a = self.send(target, &request, deadline) => a,
                // The group elected another leader while this request waited on the old one
                // (which may be dead): stop waiting for it.
                _ = self.leader_moved(group, target) => {
                    Attempt::Indeterminate(format!("group {group} moved away from {target}"))
                }
                // Without a session stream pushing routing (plain link users), ask the other
                // managers who leads while a request is slow, so a dead leader is noticed
                // within an election rather than a connection timeout.
                _ = self.poll_routing_while_waiting(target) => unreachable_attempt(),
            };
            match attempt_result {
                Attempt::Reply(reply) => match reply.result {
                    Some(gateway_reply::Result::NotLeader(n)) => {
                        let hint = n.leader_quic.parse::<SocketAddr>().ok();
                        self.set_leader(group, hint);
                        last_error = format!("{target} does not lead group {group}");
                        if hint.is_none() || hint == Some(target) {
                            // Election under way: wait a little before asking again.
                            rotation += 1;
                            if tokio::time::Instant::now() >= deadline {
                                break;
                            }
                            self.backoff(attempt).await;
                            attempt += 1;
                        }
                        continue;
                    }
                    Some(gateway_reply::Result::Failure(f)) if f.code == "unavailable" => {
                        last_error = format!("{target}: {}", f.message);
                        self.set_leader(group, None);
                        rotation += 1;
                    }
                    Some(gateway_reply::Result::Failure(f)) => {
                        return Err(LinkError::Refused {
                            code: f.code,
                            message: f.message,
                        })
                    }
                    Some(result) => return Ok(result),
                    None => last_error = format!("{target}: empty reply"),
                },
                Attempt::Indeterminate(e) if !idempotent => {
                    self.forget_leader(group, target);
                    return Err(LinkError::Timeout(
                        self.inner.options.request_timeout,
                        format!("{target}: {e}; the publish may or may not have been delivered"),
                    ));
                }
                Attempt::Transport(e) | Attempt::Indeterminate(e) => {
                    last_error = format!("{target}: {e}");
                    self.forget_leader(group, target);
                    rotation += 1;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            self.backoff(attempt).await;
            attempt += 1;
        }
        Err(LinkError::Timeout(
            self.inner.options.request_timeout,
            last_error,
        ))
    }

    fn set_leader(&self, group: u32, leader: Option<SocketAddr>) {
        let mut cache = self
            .inner
            .routing
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = cache.leaders.get_mut(group as usize) {
            if *slot != leader {
                *slot = leader;
                self.inner.routing_version.send_modify(|v| *v += 1);
            }
        }
    }

    /// Forget `failed` as the leader of `group`, unless another leader was learned meanwhile.
    fn forget_leader(&self, group: u32, failed: SocketAddr) {
        let current = self
            .read_cache()
            .leaders
            .get(group as usize)
            .copied()
            .flatten();
        if current == Some(failed) {
            self.set_leader(group, None);
        }
    }

    /// Every 500 ms, ask a manager other than `busy` for the routing table. Never resolves.
    async fn poll_routing_while_waiting(&self, busy: SocketAddr) {
        tokio::time::sleep(ROUTING_POLL_AFTER).await;
        let mut tick = tokio::time::interval(ROUTING_POLL_EVERY);
        loop {
            tick.tick().await;
            let due = {
                let mut last = self
                    .inner
                    .last_routing_poll
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let due = last.is_none_or(|t| t.elapsed() >= ROUTING_POLL_EVERY);
                if due {
                    *last = Some(std::time::Instant::now());
                }
                due
            };
            if !due {
                continue;
            }
            let others: Vec<SocketAddr> =
                self.managers().into_iter().filter(|m| *m != busy).collect();
            for addr in others {
                let request = GatewayRequest {
                    gateway: self.inner.gateway,
                    op: Some(gateway_request::Op::GetRouting(GetRouting {})),
                };
                let answer = self
                    .send(
                        addr,
                        &request,
                        tokio::time::Instant::now() + Duration::from_millis(400),
                    )
                    .await;
                if let Attempt::Reply(GatewayReply {
                    result: Some(gateway_reply::Result::Routing(r)),
                }) = answer
                {
                    self.apply_routing(r);
                    break;
                }
            }
        }
    }

    /// Resolves once the cache names a leader of `group` other than `from`.
    async fn leader_moved(&self, group: u32, from: SocketAddr) {
        let mut version = self.inner.routing_version.subscribe();
        loop {
            let leader = self
                .read_cache()
                .leaders
                .get(group as usize)
                .copied()
                .flatten();
            if leader.is_some_and(|l| l != from) {
                return;
            }
            if version.changed().await.is_err() {
                // The client is being dropped; nothing will move any more.
                std::future::pending::<()>().await;
            }
        }
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, LeaderCache> {
        self.inner.routing.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Full jitter: sleep a uniform time in `[0, min(max, min_backoff * 2^attempt)]`.
    pub(crate) async fn backoff(&self, attempt: u32) {
        let o = &self.inner.options;
        let cap = o
            .min_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(o.max_backoff);
        let millis = rand::rng().random_range(0..=cap.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, String> {
        if let Some(c) = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
        {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let connecting = self
            .inner
            .endpoint
            .connect(addr, "firetower")
            .map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(Duration::from_secs(2), connecting)
            .await
            .map_err(|_| "QUIC handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, conn.clone());
        Ok(conn)
    }

    /// One attempt, bounded by the request's `deadline` in every phase: connecting and
    /// opening a stream (which waits for stream credit when the manager has many requests of
    /// this gateway in flight) count as not sent; once the request is written, no answer by
    /// the deadline is an unknown outcome.
    async fn send(
        &self,
        addr: SocketAddr,
        request: &GatewayRequest,
        deadline: tokio::time::Instant,
    ) -> Attempt {
        let opened = tokio::time::timeout_at(deadline, async {
            let conn = self.connection(addr).await?;
            conn.open_bi().await.map_err(|e| {
                self.drop_connection(addr);
                e.to_string()
            })
        })
        .await;
        let (mut send, mut recv) = match opened {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Attempt::Transport(e),
            Err(_) => {
                return Attempt::Transport(format!("no stream to {addr} before the deadline"))
            }
        };
        let result = async {
            send.write_all(&encode_frame(request))
                .await
                .map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            let bytes = recv
                .read_to_end(MAX_LINK_FRAME_BYTES + 4)
                .await
                .map_err(|e| e.to_string())?;
            decode_frame::<GatewayReply>(&bytes).map_err(|e| e.to_string())
        };
        // The manager answers a write after it commits; its own proposal timeout is shorter.
        match tokio::time::timeout_at(deadline, result).await {
            Ok(Ok(reply)) => Attempt::Reply(reply),
            Ok(Err(e)) => {
                self.drop_connection(addr);
                Attempt::Indeterminate(e)
            }
            Err(_) => Attempt::Indeterminate("no reply in time".into()),
        }
    }

    fn drop_connection(&self, addr: SocketAddr) {
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr);
    }
}

/// The result of a branch that never completes (its future loops forever).
fn unreachable_attempt() -> Attempt {
    Attempt::Transport("routing poll ended".into())
}

fn unexpected(result: &gateway_reply::Result) -> LinkError {
    LinkError::Refused {
        code: "internal".into(),
        message: format!("unexpected reply {result:?}"),
    }
}

fn unreachable_addr() -> LinkError {
    LinkError::Endpoint("cannot form the wildcard bind address".into())
}
