//! [`LinkClient`]: a gateway's link to the topic managers.
//!
//! ```text
//!   subscribe("room.1") ─▶ group_of(topic, G) ─▶ LeaderCache[g] ─▶ QUIC stream to that manager
//!                                                   ▲        │
//!             NotLeader { leader } ─────────────────┘        ▼
//!             transport error: forget the leader, try the next manager after a backoff
//!             (ReconnectPolicy: exponential, full jitter), until the request's deadline
//! ```
//!
//! Every request is one bidirectional QUIC stream on a connection kept per manager. The
//! decisions about leaders are [`LeaderCache`]'s (pure); this module does the sending, the
//! waiting and the retrying.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use firetower_proto::link::GatewayReply;
use firetower_proto::{validate_topic, Epoch, GatewayId, TopicError};

use crate::endpoint::client_endpoint;
use crate::frame::{decode_frame, write_link_frame, MAX_LINK_FRAME_BYTES};
use crate::leader_cache::{
    LeaderCache, Observation, RoutingRejectReason, RoutingRejected, RoutingRejections, Target,
};
use crate::message::{
    HistoryPage, LinkReply, LinkRequest, MessageError, Published, Routing, Written,
};
use crate::reconnect::ReconnectPolicy;
use crate::tls::Security;
use crate::tls::SERVER_NAME;

/// A QUIC handshake with a manager that takes longer than this counts as a failed attempt.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// A request that has had no answer for this long starts asking the other managers who leads
/// (a dead leader is then noticed within an election, not a connection timeout).
const ROUTING_POLL_AFTER: Duration = Duration::from_millis(200);
/// While requests wait, the routing is asked for at most this often. It bounds how late a new
/// leader is noticed after its election (it was 500 ms, which showed as 0.5 s steps in the
/// unavailability measured by `chaos run leader-kill-loop`).
const ROUTING_POLL_EVERY: Duration = Duration::from_millis(100);
/// How long one routing poll waits for a manager's answer.
const ROUTING_POLL_TIMEOUT: Duration = Duration::from_millis(400);

/// Tuning of the link client.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Give up on one request after this long (across retries and leader changes).
    pub request_timeout: Duration,
    /// First retry delay; doubles per failed attempt up to `max_backoff` (full jitter).
    pub min_backoff: Duration,
    /// Largest retry delay.
    pub max_backoff: Duration,
    /// How [`LinkClient::connect`] secures its endpoint: the gateway's certificate, or
    /// `--insecure`. (The default is insecure, for tests; the binary always sets it.)
    pub security: Security,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(1_000),
            security: Security::Insecure,
        }
    }
}

impl LinkOptions {
    /// The retry policy these options describe.
    pub fn reconnect_policy(&self) -> ReconnectPolicy {
        ReconnectPolicy {
            base: self.min_backoff,
            cap: self.max_backoff,
            connect_timeout: HANDSHAKE_TIMEOUT,
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
    InvalidTopic(#[from] TopicError),
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

/// Why a stream to a manager could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamError {
    /// The connection could not be started (bad address, endpoint closed).
    #[error("{0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake did not finish within its timeout.
    #[error("QUIC handshake timed out")]
    HandshakeTimeout,
    /// The connection failed or was lost.
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
}

/// The manager link of one gateway. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LinkClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    gateway: GatewayId,
    endpoint: quinn::Endpoint,
    options: LinkOptions,
    policy: ReconnectPolicy,
    seeds: Vec<SocketAddr>,
    connections: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    routing: RwLock<LeaderCache>,
    /// Bumped whenever a cached leader changes.
    routing_version: tokio::sync::watch::Sender<u64>,
}

enum Attempt {
    Reply(LinkReply),
    /// A frame arrived but is not a valid reply (nothing learned, the connection is fine).
    Malformed(MessageError),
    /// Failed before the request could reach the manager: safe to send again.
    Transport(String),
    /// Failed after the request may have reached the manager: a write may have taken effect.
    Indeterminate(String),
}

impl LinkClient {
    /// Connect to the cluster through any of `managers` (QUIC addresses) and load its routing.
    /// `gateway` is the id this gateway was started with (`--id`, `--gateway`).
    pub async fn connect(
        gateway: u64,
        managers: Vec<SocketAddr>,
        options: LinkOptions,
    ) -> Result<LinkClient, LinkError> {
        let bind = match managers.first() {
            Some(a) if a.is_ipv6() => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
            _ => SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)),
        };
        let endpoint = client_endpoint(bind, &options.security)
            .map_err(|e| LinkError::Endpoint(e.to_string()))?;
        Self::connect_with_endpoint(endpoint, gateway, managers, options).await
    }

    /// Like [`LinkClient::connect`], over an endpoint the caller made (one of
    /// [`crate::memnet`], say). The endpoint's default client config must speak
    /// [`crate::ALPN_LINK`], as [`crate::client_endpoint`]'s does.
    pub async fn connect_with_endpoint(
        endpoint: quinn::Endpoint,
        gateway: u64,
        managers: Vec<SocketAddr>,
        options: LinkOptions,
    ) -> Result<LinkClient, LinkError> {
        let client = LinkClient {
            inner: Arc::new(Inner {
                gateway: GatewayId(gateway),
                endpoint,
                policy: options.reconnect_policy(),
                options,
                seeds: managers.clone(),
                connections: Mutex::new(HashMap::new()),
                routing: RwLock::new(LeaderCache::new(managers)),
                routing_version: tokio::sync::watch::channel(0).0,
            }),
        };
        client.refresh_routing().await?;
        Ok(client)
    }

    /// The number of groups of the cluster.
    pub fn groups(&self) -> u32 {
        self.read_cache().groups()
    }

    /// The cluster id reported by the managers.
    pub fn cluster_id(&self) -> String {
        self.read_cache().cluster_id().to_string()
    }

    /// Subscribe this gateway to `topic`; returns once committed in the topic's group.
    pub async fn subscribe(&self, topic: &str) -> Result<Written, LinkError> {
        self.subscribe_in_session(topic, Epoch(0)).await
    }

    /// Subscribe for the gateway session `epoch`: a group that still holds an older session
    /// of this gateway expires it first, in the same log entry, so the old session's expiry
    /// can never take this subscription with it.
    pub async fn subscribe_in_session(
        &self,
        topic: &str,
        epoch: Epoch,
    ) -> Result<Written, LinkError> {
        self.write(LinkRequest::Subscribe {
            topic: topic.to_string(),
            epoch,
        })
        .await
    }

    /// Unsubscribe this gateway from `topic`; returns once committed.
    pub async fn unsubscribe(&self, topic: &str) -> Result<Written, LinkError> {
        self.write(LinkRequest::Unsubscribe {
            topic: topic.to_string(),
        })
        .await
    }

    /// The gateways subscribed to `topic` (linearizable read at the group's leader).
    pub async fn topic_gateways(&self, topic: &str) -> Result<Vec<u64>, LinkError> {
        let request = LinkRequest::TopicGateways {
            topic: topic.to_string(),
        };
        match self.request(topic, request).await? {
            LinkReply::Gateways(g) => Ok(g),
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
        let request = LinkRequest::Publish {
            topic: topic.to_string(),
            data,
            json,
        };
        match self.request(topic, request).await? {
            LinkReply::Published(p) => Ok((p.term, p.seq)),
            other => Err(unexpected(&other)),
        }
    }

    /// Publish to `topic`; returns where its leader ordered it (with the offset and epoch of
    /// a history topic) once every subscribed gateway has it.
    pub async fn publish_ordered(
        &self,
        topic: &str,
        data: Vec<u8>,
        json: bool,
    ) -> Result<Published, LinkError> {
        let request = LinkRequest::Publish {
            topic: topic.to_string(),
            data,
            json,
        };
        match self.request(topic, request).await? {
            LinkReply::Published(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }

    /// The kept messages of history topic `topic` above offset `after` (one page; ask again
    /// after its last offset while `truncated`), read at the group's leader.
    pub async fn fetch_history(
        &self,
        topic: &str,
        after: u64,
        limit: u32,
    ) -> Result<HistoryPage, LinkError> {
        let request = LinkRequest::FetchHistory {
            topic: topic.to_string(),
            after,
            limit,
        };
        match self.request(topic, request).await? {
            LinkReply::History(h) => Ok(h),
            other => Err(unexpected(&other)),
        }
    }

    /// The users present on `topic` with their connections; `None` without a presence rule.
    pub async fn presence(&self, topic: &str) -> Result<Option<Vec<(String, u32)>>, LinkError> {
        let request = LinkRequest::Presence {
            topic: topic.to_string(),
        };
        match self.request(topic, request).await? {
            LinkReply::Presence(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }

    /// This gateway's id.
    pub fn gateway(&self) -> GatewayId {
        self.inner.gateway
    }

    /// The QUIC addresses of every manager known from the routing table.
    pub fn managers(&self) -> Vec<SocketAddr> {
        self.read_cache().managers().to_vec()
    }

    /// True when a leader is known for every group.
    pub fn all_leaders_known(&self) -> bool {
        self.read_cache().all_leaders_known()
    }

    /// The cached leader of `group`.
    pub fn leader(&self, group: u32) -> Option<SocketAddr> {
        self.read_cache().leader(group)
    }

    /// Open a long-lived bidirectional stream to a manager (for the gateway's session).
    pub async fn open_stream(
        &self,
        addr: SocketAddr,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), StreamError> {
        let conn = self.connection(addr).await?;
        match conn.open_bi().await {
            Ok(s) => Ok(s),
            Err(e) => {
                self.drop_connection(addr);
                Err(e.into())
            }
        }
    }

    /// Reload the routing table from any manager that answers.
    pub async fn refresh_routing(&self) -> Result<(), LinkError> {
        let deadline = tokio::time::Instant::now() + self.inner.options.request_timeout;
        let mut attempt = 0u32;
        // Distinct reasons, oldest first: the attempt the deadline cuts short would otherwise
        // hide the real one (a certificate refused, `permission_denied`).
        let mut errors = Errors::default();
        loop {
            let candidates = {
                let mut c = self.managers();
                for s in &self.inner.seeds {
                    if !c.contains(s) {
                        c.push(*s);
                    }
                }
                c
            };
            for addr in candidates {
                match self.send(addr, &LinkRequest::GetRouting, deadline).await {
                    Attempt::Reply(LinkReply::Routing(r)) => match self.apply_routing(addr, &r) {
                        Ok(()) => return Ok(()),
                        Err(e) => errors.push(format!("{addr}: {e}")),
                    },
                    Attempt::Reply(r) => errors.push(format!("{addr}: {r:?}")),
                    Attempt::Malformed(e) => {
                        errors.push(format!("{addr}: {}", self.malformed_routing(addr, e)))
                    }
                    Attempt::Transport(e) | Attempt::Indeterminate(e) => {
                        errors.push(format!("{addr}: {e}"))
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LinkError::Timeout(
                    self.inner.options.request_timeout,
                    errors.into_message(),
                ));
            }
            self.backoff(attempt).await;
            attempt += 1;
        }
    }

    /// Take in a routing table from the manager at `from` (a reply, or pushed on a session
    /// stream). A table that does not fit the cluster this gateway joined is refused, logged
    /// (at `warn` the first time for each reason, then at `debug`) and counted in
    /// [`LinkClient::routing_rejections`]; the last good routing stays.
    pub fn apply_routing(
        &self,
        from: SocketAddr,
        routing: &Routing,
    ) -> Result<(), RoutingRejected> {
        let result = self.write_cache().on_routing(routing);
        match result {
            Ok(true) => {
                self.inner.routing_version.send_modify(|v| *v += 1);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => {
                self.log_rejected(from, &e);
                Err(e)
            }
        }
    }

    /// Count and log a routing table from `from` that could not be converted at all.
    pub fn malformed_routing(&self, from: SocketAddr, error: MessageError) -> RoutingRejected {
        let rejected = self.write_cache().on_malformed_routing(error);
        self.log_rejected(from, &rejected);
        rejected
    }

    /// Routing tables refused so far, per reason.
    pub fn routing_rejections(&self) -> RoutingRejections {
        self.read_cache().rejections()
    }

    fn log_rejected(&self, from: SocketAddr, rejected: &RoutingRejected) {
        let reason: RoutingRejectReason = rejected.reason();
        // Logged once per reason (a buggy manager repeats its table on every change); the
        // count is in `routing_rejections`.
        if self.routing_rejections().get(reason) <= 1 {
            tracing::warn!(
                event = "link_rejected",
                reason = reason.as_str(),
                %from,
                error = %rejected,
                "refused a routing table; keeping the last good one"
            );
        } else {
            tracing::debug!(
                event = "link_rejected",
                reason = reason.as_str(),
                %from,
                error = %rejected,
                "refused a routing table"
            );
        }
    }

    /// Sleep before retry number `attempt + 1` (0 after the first failure): the options'
    /// [`ReconnectPolicy`], full jitter.
    pub async fn backoff(&self, attempt: u32) {
        let delay = self
            .inner
            .policy
            .delay(attempt.saturating_add(1), &mut rand::rng());
        tokio::time::sleep(delay).await;
    }

    async fn write(&self, request: LinkRequest) -> Result<Written, LinkError> {
        let topic = request.topic().unwrap_or_default().to_string();
        match self.request(&topic, request).await? {
            LinkReply::Done(w) => Ok(w),
            other => Err(unexpected(&other)),
        }
    }

    /// Send a request about `topic` to its group's leader, following `NotLeader` hints and
    /// retrying transport failures until the deadline.
    async fn request(&self, topic: &str, request: LinkRequest) -> Result<LinkReply, LinkError> {
        validate_topic(topic)?;
        let idempotent = request.is_idempotent();
        let deadline = tokio::time::Instant::now() + self.inner.options.request_timeout;
        let mut attempt = 0u32;
        let mut rotation = 0usize;
        let mut last_error;
        loop {
            let Target { group, addr } = self.read_cache().target(topic, rotation);
            let Some(target) = addr else {
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
                Attempt::Reply(LinkReply::NotLeader { leader: hint, .. }) => {
                    self.observe(group, target, Observation::NotLeader { leader: hint });
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
                Attempt::Reply(LinkReply::Failure { code, message }) if code == "unavailable" => {
                    last_error = format!("{target}: {message}");
                    self.observe(group, target, Observation::Unavailable);
                    rotation += 1;
                }
                Attempt::Reply(LinkReply::Failure { code, message }) => {
                    return Err(LinkError::Refused { code, message })
                }
                Attempt::Reply(reply) => return Ok(reply),
                Attempt::Malformed(e) => last_error = format!("{target}: {e}"),
                Attempt::Indeterminate(e) if !idempotent => {
                    self.observe(group, target, Observation::Unreachable);
                    return Err(LinkError::Timeout(
                        self.inner.options.request_timeout,
                        format!("{target}: {e}; the publish may or may not have been delivered"),
                    ));
                }
                Attempt::Transport(e) | Attempt::Indeterminate(e) => {
                    last_error = format!("{target}: {e}");
                    self.observe(group, target, Observation::Unreachable);
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

    fn observe(&self, group: u32, from: SocketAddr, observation: Observation) {
        let changed = self.write_cache().on_reply(group, from, observation);
        if changed {
            self.inner.routing_version.send_modify(|v| *v += 1);
        }
    }

    /// Every [`ROUTING_POLL_EVERY`], ask a manager other than `busy` for the routing table.
    /// Never resolves.
    async fn poll_routing_while_waiting(&self, busy: SocketAddr) {
        tokio::time::sleep(ROUTING_POLL_AFTER).await;
        let mut tick = tokio::time::interval(ROUTING_POLL_EVERY);
        loop {
            tick.tick().await;
            let due = self
                .write_cache()
                .poll_due(std::time::Instant::now(), ROUTING_POLL_EVERY);
            if !due {
                continue;
            }
            let others: Vec<SocketAddr> =
                self.managers().into_iter().filter(|m| *m != busy).collect();
            for addr in others {
                let deadline = tokio::time::Instant::now() + ROUTING_POLL_TIMEOUT;
                match self.send(addr, &LinkRequest::GetRouting, deadline).await {
                    Attempt::Reply(LinkReply::Routing(r))
                        if self.apply_routing(addr, &r).is_ok() =>
                    {
                        break;
                    }
                    Attempt::Malformed(e) => {
                        self.malformed_routing(addr, e);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Resolves once the cache names a leader of `group` other than `from`.
    async fn leader_moved(&self, group: u32, from: SocketAddr) {
        let mut version = self.inner.routing_version.subscribe();
        loop {
            let leader = self.read_cache().leader(group);
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

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, LeaderCache> {
        self.inner
            .routing
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, StreamError> {
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
        let connecting = self.inner.endpoint.connect(addr, SERVER_NAME)?;
        let conn = tokio::time::timeout(self.inner.policy.connect_timeout, connecting)
            .await
            .map_err(|_| StreamError::HandshakeTimeout)??;
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
        request: &LinkRequest,
        deadline: tokio::time::Instant,
    ) -> Attempt {
        let opened = tokio::time::timeout_at(deadline, self.open_stream(addr)).await;
        let (mut send, mut recv) = match opened {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Attempt::Transport(e.to_string()),
            Err(_) => {
                return Attempt::Transport(format!("no stream to {addr} before the deadline"))
            }
        };
        let frame = request.to_frame(self.inner.gateway);
        let result = async {
            write_link_frame(&mut send, &frame)
                .await
                .map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            let bytes = recv
                .read_to_end(MAX_LINK_FRAME_BYTES + 4)
                .await
                .map_err(|e| match &e {
                    // Keep why the connection went: with TLS 1.3 a refused client certificate
                    // shows up here, after the client's side of the handshake completed.
                    quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(lost)) => {
                        format!("read error: connection lost: {lost}")
                    }
                    _ => e.to_string(),
                })?;
            decode_frame::<GatewayReply>(&bytes).map_err(|e| e.to_string())
        };
        // The manager answers a write after it commits; its own proposal timeout is shorter.
        match tokio::time::timeout_at(deadline, result).await {
            Ok(Ok(reply)) => match LinkReply::try_from(reply) {
                Ok(reply) => Attempt::Reply(reply),
                Err(e) => Attempt::Malformed(e),
            },
            Ok(Err(e)) => {
                self.drop_connection(addr);
                Attempt::Indeterminate(e)
            }
            Err(_) => Attempt::Indeterminate("no reply in time".into()),
        }
    }

    /// Send `request` to the manager at `addr` once, with no routing and no retry: for tools
    /// and tests that must reach one particular manager (a stale leader, say). Any failure of
    /// that one attempt is a [`LinkError::Timeout`]: the manager did not complete it, and a
    /// write may or may not have taken effect.
    pub async fn request_at(
        &self,
        addr: SocketAddr,
        request: &LinkRequest,
        timeout: Duration,
    ) -> Result<LinkReply, LinkError> {
        let deadline = tokio::time::Instant::now() + timeout;
        match self.send(addr, request, deadline).await {
            Attempt::Reply(reply) => Ok(reply),
            Attempt::Malformed(e) => Err(LinkError::Timeout(timeout, format!("{addr}: {e}"))),
            Attempt::Transport(e) | Attempt::Indeterminate(e) => {
                Err(LinkError::Timeout(timeout, format!("{addr}: {e}")))
            }
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

fn unexpected(reply: &LinkReply) -> LinkError {
    LinkError::Refused {
        code: "internal".into(),
        message: format!("unexpected reply {reply:?}"),
    }
}

/// The distinct reasons a request failed, the first few kept.
#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    /// Most reasons kept: enough for one per manager of a small cluster.
    const KEEP: usize = 4;

    fn push(&mut self, reason: String) {
        if self.0.len() < Self::KEEP && !self.0.contains(&reason) {
            self.0.push(reason);
        }
    }

    fn into_message(self) -> String {
        if self.0.is_empty() {
            return "no manager address given".into();
        }
        self.0.join("; ")
    }
}
