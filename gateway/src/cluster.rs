//! [`ClusterUpstream`]: the gateway's [`Upstream`] backed by the topic managers.
//!
//! ```text
//!   Gateway ──subscribe/unsubscribe/publish──▶ LinkClient (one stream per request, leader cache)
//!   Gateway ◀── mpsc<Delivery> ◀── order filter ◀── session stream per manager
//!                                                     ├─ OpenSession{epoch, lease}, heartbeats
//!                                                     ├─ Delivery{dseq} ─▶ DeliveryAck{dseq}
//!                                                     ├─ Resync{groups} ─▶ re-subscribe held topics
//!                                                     ├─ Routing ─▶ leader cache
//!                                                     └─ Bans, Kick, ConnectionsQuery ─▶
//!                                                        ControlFeed ─▶ ControlEvent (mpsc)
//! ```
//!
//! Operator controls (`control_feed.rs`): every manager pushes group 0's ban list (in chunks,
//! with its version) and its kicks on each session; the feed keeps the newest list, acts on
//! each kick once and hands [`crate::ControlEvent`]s to the gateway on a bounded channel of its
//! own, so a slow gateway never stalls a session reader. A `ConnectionsQuery` is answered on
//! the session's send side with what the gateway replies (at most [`QUERIES_IN_FLIGHT`] at
//! once, each within [`QUERY_ANSWER_TIMEOUT`]). The gateway's figures
//! ([`Upstream::report_stats`]) ride on every heartbeat.
//!
//! The session epoch is the gateway's start time in microseconds, so a restarted gateway
//! always comes back with a higher epoch and the managers drop what its previous life held.
//! Deliveries of a topic are passed on in `(term, seq)` order; anything at or below the last
//! passed-on stamp (a late message from a deposed leader, a duplicate) is dropped and counted.
//!
//! Nothing a manager sends is trusted to be sane, certificate or not (a member can be buggy):
//! - every session frame's size is checked against a limit for its type (read from the
//!   frame's first body byte, the protobuf tag) before its body is read;
//! - a manager must answer `OpenSession` within the lease; after that, a manager that stops
//!   sending anything at all (a paused or cut-off process: no acks for the heartbeats) ends
//!   the session within the link's QUIC idle timeout, which is shorter than the lease;
//! - routing tables go through the leader cache, which pins the cluster id and group count
//!   joined; a session whose manager pushes another cluster's routing is closed;
//! - deliveries go through [`DeliveryGuard`] (leader check, absurd stamps, topic and JSON
//!   validation; see `delivery_guard.rs`), once per message, before any client sees them;
//! - `Resync` requests are merged into one re-subscribe task at a time.
//!
//! Each refusal is counted under a `reason` of `firetower_gateway_link_rejected_total`
//! ([`Upstream::link_rejections`]).
//!
//! [`ClusterUpstream::connect`] makes its own QUIC endpoint;
//! [`ClusterUpstream::connect_with_endpoint`] runs the same code over one the caller made,
//! which is how the manager's in-memory partition suite (`manager/tests/partition.rs`) drives
//! this type over a `MemNet`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use firetower_link::{
    decode_body, write_link_frame, FrameError, LinkClient, LinkError, LinkOptions, LinkReply,
    LinkRequest, ReadFrameError, Routing, RoutingRejected, StreamError, HEADER_LEN,
    MAX_CONNECTIONS_FRAME_BYTES, MAX_GROUPS, MAX_LINK_FRAME_BYTES,
};
use firetower_proto::link::{
    gateway_frame, session_frame, ConnectionEntry, Connections, ConnectionsQuery, DeliveryAck,
    GatewayFrame, GatewayStats as PbGatewayStats, Heartbeat, SessionFrame,
};
use firetower_proto::{group_of, Epoch};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::control::{ConnectionInfo, ControlReceiver, GatewayStats};
use crate::control_feed::{BanChunks, ChunkOutcome, ControlFeed, ControlRejected};
use crate::delivery_guard::{Context, DeliveryGuard, DeliveryRejected, Incoming, Verdict};
use crate::upstream::{
    BoxFuture, Delivery, HistoryPage, Payload, Position, Stamp, Upstream, UpstreamError,
};

/// How long a manager has to answer a routing request that checks its claim to lead a group
/// (the session's reads wait for it, so that deliveries stay in order).
const VERIFY_TIMEOUT: Duration = Duration::from_millis(500);
/// The shortest wait for `SessionOpened` (the lease is used when longer).
const MIN_OPEN_TIMEOUT: Duration = Duration::from_secs(1);
/// Connection queries being answered at once, over all sessions; more are dropped (the
/// manager names this gateway as not answering).
const QUERIES_IN_FLIGHT: usize = 16;
/// How long the gateway has to list a user's connections: the manager waits about a second
/// for every gateway.
const QUERY_ANSWER_TIMEOUT: Duration = Duration::from_millis(800);

/// The kinds of session frame, by the protobuf tag that starts the body, with the largest
/// body each may have. A delivery carries a payload (up to the link's frame limit); the
/// others are small, and a routing table lists a handful of managers and one leader per
/// group (at most 1024 groups at the managers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionFrameKind {
    Opened,
    Delivery,
    Resync,
    Routing,
    Failure,
    Bans,
    Kick,
    ConnectionsQuery,
    Unknown,
}

impl SessionFrameKind {
    /// From the first body byte: field number << 3 | wire type 2 (length-delimited).
    fn from_tag(tag: u8) -> Self {
        match tag {
            0x0A => SessionFrameKind::Opened,
            0x12 => SessionFrameKind::Delivery,
            0x1A => SessionFrameKind::Resync,
            0x22 => SessionFrameKind::Routing,
            0x2A => SessionFrameKind::Failure,
            0x32 => SessionFrameKind::Bans,
            0x3A => SessionFrameKind::Kick,
            0x42 => SessionFrameKind::ConnectionsQuery,
            _ => SessionFrameKind::Unknown,
        }
    }

    fn max_body(self) -> usize {
        match self {
            SessionFrameKind::Opened => 64,
            SessionFrameKind::Delivery => MAX_LINK_FRAME_BYTES,
            // Tag, length and a packed varint (at most 5 bytes) per group.
            SessionFrameKind::Resync => 16 + 5 * MAX_GROUPS as usize,
            SessionFrameKind::Routing => 256 * 1024,
            SessionFrameKind::Failure => 8 * 1024,
            // A chunk of the ban list: managers fill frames up to the link's limit.
            SessionFrameKind::Bans => MAX_LINK_FRAME_BYTES,
            // A seq, a time and a user id of at most 256 bytes.
            SessionFrameKind::Kick | SessionFrameKind::ConnectionsQuery => 1024,
            // A frame type of a newer manager: skipped when decoded, so kept small.
            SessionFrameKind::Unknown => 4 * 1024,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SessionFrameKind::Opened => "opened",
            SessionFrameKind::Delivery => "delivery",
            SessionFrameKind::Resync => "resync",
            SessionFrameKind::Routing => "routing",
            SessionFrameKind::Failure => "failure",
            SessionFrameKind::Bans => "bans",
            SessionFrameKind::Kick => "kick",
            SessionFrameKind::ConnectionsQuery => "connections_query",
            SessionFrameKind::Unknown => "unknown",
        }
    }
}

/// Tuning of the cluster connection.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Managers drop this gateway's subscriptions after this long without hearing from it.
    pub lease: Duration,
    /// Deliveries buffered between the session streams and the gateway's fan-out.
    pub delivery_buffer: usize,
    /// Request tuning of the link.
    pub link: LinkOptions,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(5),
            delivery_buffer: 65_536,
            link: LinkOptions::default(),
        }
    }
}

/// Kicks kept from a manager whose routing was not checked yet (it sends the last minute's
/// on open; more than this many in a minute are not plausible).
const UNTRUSTED_KICKS_KEPT: usize = 256;

/// Controls received on a session before the manager's routing was checked.
#[derive(Debug, Default)]
struct UntrustedControls {
    bans: Option<(u64, Vec<firetower_proto::Ban>)>,
    kicks: Vec<firetower_proto::link::Kick>,
}

/// Why a session stream with one manager ended (the session loop backs off and reopens it).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// No stream could be opened to the manager.
    #[error(transparent)]
    Open(#[from] StreamError),
    /// Writing `OpenSession` failed.
    #[error(transparent)]
    Write(#[from] std::io::Error),
    /// The stream failed or broke the framing.
    #[error(transparent)]
    Read(#[from] ReadFrameError),
    /// A frame is not a `SessionFrame`.
    #[error(transparent)]
    Decode(#[from] FrameError),
    /// The task writing acks and heartbeats stopped (its stream failed).
    #[error("session writer stopped")]
    WriterStopped,
    /// A frame is larger than its type allows (checked before its body is read).
    #[error("{kind} frame of {len} bytes exceeds the {max} byte limit of its type")]
    FrameTooLarge {
        /// The frame's type.
        kind: &'static str,
        /// Its announced body length.
        len: usize,
        /// The limit of its type.
        max: usize,
    },
    /// The manager did not answer `OpenSession` in time.
    #[error("no SessionOpened within {0:?}")]
    OpenTimeout(Duration),
    /// The manager pushed a routing table that is not of the cluster joined.
    #[error(transparent)]
    Routing(#[from] RoutingRejected),
    /// The manager refused or closed the session.
    #[error("{code}: {message}")]
    Refused {
        /// The manager's snake_case code.
        code: String,
        /// The manager's explanation.
        message: String,
    },
}

/// The gateway's view of the cluster. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ClusterUpstream {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    link: LinkClient,
    epoch: Epoch,
    lease: Duration,
    /// Topics this gateway holds at the cluster (or is about to): re-sent on `Resync`.
    held: Mutex<HashSet<String>>,
    /// What reaches local subscribers: order per topic, who leads, what is absurd.
    guard: Mutex<DeliveryGuard>,
    deliveries: mpsc::Sender<Delivery>,
    /// Managers with an open session stream.
    open_sessions: Mutex<HashSet<SocketAddr>>,
    /// Managers a session task runs for.
    session_tasks: Mutex<HashSet<SocketAddr>>,
    /// Groups asked for by `Resync` frames and not yet re-sent.
    resync_pending: Mutex<HashSet<u32>>,
    /// True while a task re-sends held topics for `resync_pending`.
    resync_running: AtomicBool,
    /// Session frames refused for their size.
    frames_too_large: AtomicU64,
    /// Sessions a manager did not open in time.
    open_timeouts: AtomicU64,
    /// Bans, kicks and connection queries on their way to the gateway.
    controls: Arc<ControlFeed>,
    /// The gateway's latest figures and when they were reported (ms after `started`), sent
    /// with every heartbeat.
    stats: Mutex<Option<(GatewayStats, u64)>>,
    /// When this upstream started: heartbeats date their figures from it.
    started: Instant,
    /// Connection queries being answered.
    queries: Arc<AtomicUsize>,
    /// `Resync` frames received, from any manager.
    resyncs: AtomicU64,
    /// Re-subscribes sent for a `Resync` that failed.
    resync_failures: AtomicU64,
    closed: AtomicBool,
}

impl ClusterUpstream {
    /// Connect to the cluster through any of `managers` and open a session with every manager.
    /// `gateway` is this gateway's id as given on the command line (`--id`).
    /// Returns the upstream and the deliveries for [`crate::Gateway::start`].
    pub async fn connect(
        gateway: u64,
        managers: Vec<SocketAddr>,
        options: ClusterOptions,
    ) -> Result<(ClusterUpstream, mpsc::Receiver<Delivery>), LinkError> {
        let link = LinkClient::connect(gateway, managers, options.link.clone()).await?;
        Ok(Self::start(link, options))
    }

    /// Like [`ClusterUpstream::connect`], over a QUIC endpoint the caller made, as
    /// [`LinkClient::connect_with_endpoint`]: one of a [`firetower_link::MemNet`], say, so
    /// that a test can cut, delay and heal this gateway's links. Requests and sessions both go
    /// through it. The endpoint's default client config must speak
    /// [`firetower_link::ALPN_LINK`], as [`crate::client_endpoint`]'s does.
    pub async fn connect_with_endpoint(
        endpoint: quinn::Endpoint,
        gateway: u64,
        managers: Vec<SocketAddr>,
        options: ClusterOptions,
    ) -> Result<(ClusterUpstream, mpsc::Receiver<Delivery>), LinkError> {
        let link =
            LinkClient::connect_with_endpoint(endpoint, gateway, managers, options.link.clone())
                .await?;
        Ok(Self::start(link, options))
    }

    /// Start the sessions over a connected `link`: what both constructors share.
    fn start(
        link: LinkClient,
        options: ClusterOptions,
    ) -> (ClusterUpstream, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(options.delivery_buffer.max(1));
        let epoch = Epoch(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(1),
        );
        let upstream = ClusterUpstream {
            inner: Arc::new(Inner {
                link,
                epoch,
                lease: options.lease,
                held: Mutex::new(HashSet::new()),
                guard: Mutex::new(DeliveryGuard::default()),
                deliveries: tx,
                open_sessions: Mutex::new(HashSet::new()),
                session_tasks: Mutex::new(HashSet::new()),
                resync_pending: Mutex::new(HashSet::new()),
                resync_running: AtomicBool::new(false),
                frames_too_large: AtomicU64::new(0),
                open_timeouts: AtomicU64::new(0),
                controls: ControlFeed::start(),
                stats: Mutex::new(None),
                started: Instant::now(),
                queries: Arc::new(AtomicUsize::new(0)),
                resyncs: AtomicU64::new(0),
                resync_failures: AtomicU64::new(0),
                closed: AtomicBool::new(false),
            }),
        };
        upstream.spawn_missing_sessions();
        (upstream, rx)
    }

    /// The link used for requests.
    pub fn link(&self) -> &LinkClient {
        &self.inner.link
    }

    /// This gateway's session epoch.
    pub fn epoch(&self) -> Epoch {
        self.inner.epoch
    }

    /// Deliveries dropped because an equal or newer stamp of their topic was already passed on.
    pub fn dropped_out_of_order(&self) -> u64 {
        self.guard().superseded()
    }

    /// Deliveries dropped because no local subscriber held their topic (any more).
    pub fn dropped_not_held(&self) -> u64 {
        self.guard().not_held()
    }

    /// Topic stamps reset because the group's leader kept stamping below them (see
    /// `delivery_guard.rs`: a stamp passed on earlier was bogus).
    pub fn stamp_resets(&self) -> u64 {
        self.guard().resets()
    }

    /// Topics whose last stamp is kept (never more than the topics held).
    pub fn tracked_topics(&self) -> usize {
        self.guard().tracked_topics()
    }

    /// Everything refused from the managers so far, per `reason` label (zeros included):
    /// what `firetower_gateway_link_rejected_total` exports.
    pub fn rejections(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = self
            .inner
            .link
            .routing_rejections()
            .iter()
            .map(|(reason, n)| (reason.as_str(), n))
            .collect();
        let guard = self.guard();
        out.extend(
            DeliveryRejected::ALL
                .iter()
                .map(|&r| (r.as_str(), guard.rejected(r))),
        );
        drop(guard);
        out.push((
            "session_frame_too_large",
            self.inner.frames_too_large.load(Ordering::Relaxed),
        ));
        out.push((
            "session_open_timeout",
            self.inner.open_timeouts.load(Ordering::Relaxed),
        ));
        out.extend(self.inner.controls.rejections());
        out
    }

    /// Refusals counted under `reason` (a label of [`ClusterUpstream::rejections`]).
    pub fn rejected(&self, reason: &str) -> u64 {
        self.rejections()
            .into_iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| n)
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, DeliveryGuard> {
        self.inner.guard.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn holds(&self, topic: &str) -> bool {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(topic)
    }

    /// `Resync` frames received so far, from any manager: each one is a group leader that
    /// registered this session anew (after its lease expired there, say) and asked for the
    /// topics held in its groups.
    pub fn resyncs(&self) -> u64 {
        self.inner.resyncs.load(Ordering::Relaxed)
    }

    /// Re-subscribes sent in answer to a `Resync` that failed (the next `Resync` of the
    /// group retries them).
    pub fn resync_failures(&self) -> u64 {
        self.inner.resync_failures.load(Ordering::Relaxed)
    }

    /// The version of the newest operator ban list taken in from the managers (group 0's
    /// count of ban changes), if one arrived yet.
    pub fn bans_version(&self) -> Option<u64> {
        self.inner.controls.bans_version()
    }

    /// Number of managers with an open session.
    pub fn open_sessions(&self) -> usize {
        self.inner
            .open_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Stop the session tasks (they end at their next wake-up).
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
    }

    fn spawn_missing_sessions(&self) {
        for addr in self.inner.link.managers() {
            let new = self
                .inner
                .session_tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(addr);
            if new {
                let this = self.clone();
                tokio::spawn(async move { this.session_loop(addr).await });
            }
        }
    }

    async fn session_loop(self, addr: SocketAddr) {
        let mut attempt = 0u32;
        while !self.inner.closed.load(Ordering::Relaxed) {
            let result = self.run_session(addr).await;
            let was_open = self
                .inner
                .open_sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&addr);
            if let Err(e) = &result {
                // `event` is a stable field: the Jepsen delivery checker reads these from JSON logs.
                tracing::debug!(event = "session_down", %addr, error = %e, "session with manager ended");
            }
            // A session that opened ends the run of failures: the next attempt starts with
            // the shortest backoff, however the session ended.
            if was_open || result.is_ok() {
                attempt = 0;
            }
            if self.inner.closed.load(Ordering::Relaxed) {
                break;
            }
            if let Err(SessionError::FrameTooLarge { .. }) = &result {
                self.inner.frames_too_large.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(SessionError::OpenTimeout(_)) = &result {
                self.inner.open_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            // A manager the routing no longer lists gets no more sessions (routing tables may
            // name many addresses over time: one task each would pile up).
            if !self.inner.link.managers().contains(&addr) {
                self.inner
                    .session_tasks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&addr);
                break;
            }
            self.inner.link.backoff(attempt).await;
            attempt = attempt.saturating_add(1);
        }
    }

    async fn run_session(&self, addr: SocketAddr) -> Result<(), SessionError> {
        let (mut send, mut recv) = self.inner.link.open_stream(addr).await?;
        let open = LinkRequest::OpenSession {
            epoch: self.inner.epoch,
            lease: self.inner.lease,
        }
        .to_frame(self.inner.link.gateway());
        write_link_frame(&mut send, &open).await?;
        let (ack_tx, mut ack_rx) = mpsc::channel::<GatewayFrame>(1024);
        let heartbeat_every = (self.inner.lease / 5).max(Duration::from_millis(100));
        // Writer: heartbeats (with the latest figures), acks and query answers share the send
        // side.
        let this = self.clone();
        let writer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat_every);
            loop {
                let frame = tokio::select! {
                    _ = tick.tick() => this.heartbeat(),
                    f = ack_rx.recv() => match f {
                        Some(f) => f,
                        None => break,
                    },
                };
                if write_link_frame(&mut send, &frame).await.is_err() {
                    break;
                }
            }
        });
        let result = self.read_session(addr, &mut recv, &ack_tx).await;
        writer.abort();
        result
    }

    async fn read_session(
        &self,
        addr: SocketAddr,
        recv: &mut quinn::RecvStream,
        acks: &mpsc::Sender<GatewayFrame>,
    ) -> Result<(), SessionError> {
        let open_timeout = self.inner.lease.max(MIN_OPEN_TIMEOUT);
        let open_deadline = tokio::time::Instant::now() + open_timeout;
        // `Opened` and `Resync` are acted on once this manager's routing shows it is of the
        // cluster joined (the manager pushes its routing right after them).
        let mut opened = false;
        let mut trusted = false;
        let mut pending_resync: Vec<u32> = Vec::new();
        let mut ban_chunks = BanChunks::default();
        // Controls that arrived before this manager's routing showed it is of the cluster
        // joined: taken in once it does (a manager sends them right after its routing).
        let mut untrusted = UntrustedControls::default();
        loop {
            let read = read_session_frame(recv);
            let frame = if opened {
                read.await?
            } else {
                tokio::time::timeout_at(open_deadline, read)
                    .await
                    .map_err(|_| SessionError::OpenTimeout(open_timeout))??
            };
            let Some(frame) = frame else {
                return Ok(());
            };
            match frame.frame {
                Some(session_frame::Frame::Opened(_)) => {
                    opened = true;
                    if trusted {
                        self.mark_open(addr);
                    }
                }
                Some(session_frame::Frame::Delivery(d)) => {
                    let dseq = d.dseq;
                    let superseded = if self.pass_on(addr, d).await {
                        Vec::new()
                    } else {
                        vec![dseq]
                    };
                    let ack = GatewayFrame {
                        frame: Some(gateway_frame::Frame::Ack(DeliveryAck {
                            upto: dseq,
                            superseded,
                        })),
                    };
                    if acks.send(ack).await.is_err() {
                        return Err(SessionError::WriterStopped);
                    }
                }
                Some(session_frame::Frame::Resync(r)) => {
                    self.inner.resyncs.fetch_add(1, Ordering::Relaxed);
                    if trusted {
                        self.resync(r.groups);
                    } else {
                        pending_resync.extend(r.groups);
                        pending_resync.truncate(MAX_GROUPS as usize);
                    }
                }
                Some(session_frame::Frame::Routing(r)) => {
                    let applied = match Routing::try_from(r) {
                        Ok(routing) => self.inner.link.apply_routing(addr, &routing),
                        Err(e) => Err(self.inner.link.malformed_routing(addr, e)),
                    };
                    match applied {
                        Ok(()) => {
                            if !trusted {
                                trusted = true;
                                if opened {
                                    self.mark_open(addr);
                                }
                                self.resync(std::mem::take(&mut pending_resync));
                                self.take_in_controls(addr, std::mem::take(&mut untrusted));
                            }
                        }
                        // Another cluster's manager: no session with it.
                        Err(e @ RoutingRejected::ForeignCluster { .. }) => return Err(e.into()),
                        // A bad table from a member of this cluster: the last good one stays.
                        Err(_) => {}
                    }
                    self.spawn_missing_sessions();
                }
                Some(session_frame::Frame::Failure(f)) => {
                    return Err(SessionError::Refused {
                        code: f.code,
                        message: f.message,
                    });
                }
                // Controls count only from a manager of the cluster joined.
                Some(session_frame::Frame::Bans(b)) => {
                    let controls = &self.inner.controls;
                    match ban_chunks.offer(b.version, b.offset, b.total, b.bans, || {
                        controls.reject(ControlRejected::BanInvalid)
                    }) {
                        ChunkOutcome::Partial => {}
                        ChunkOutcome::Complete(version, bans) if trusted => {
                            self.take_in_bans(addr, version, bans)
                        }
                        ChunkOutcome::Complete(version, bans) => {
                            untrusted.bans = Some((version, bans))
                        }
                        ChunkOutcome::Rejected => controls.reject(ControlRejected::BanChunk),
                    }
                }
                Some(session_frame::Frame::Kick(k)) if trusted => {
                    self.inner
                        .controls
                        .offer_kick(k.seq, k.user, k.at_ms, unix_ms());
                }
                Some(session_frame::Frame::Kick(k))
                    if untrusted.kicks.len() < UNTRUSTED_KICKS_KEPT =>
                {
                    untrusted.kicks.push(k);
                }
                // More kicks before the routing than a minute plausibly holds: dropped.
                Some(session_frame::Frame::Kick(_)) => {}
                Some(session_frame::Frame::ConnectionsQuery(q)) if trusted => {
                    self.answer_query(q, acks.clone());
                }
                // A query before the routing: this manager's own session is not open yet.
                Some(session_frame::Frame::ConnectionsQuery(_)) => {}
                Some(session_frame::Frame::Presence(p)) if trusted => {
                    self.inner
                        .controls
                        .offer_presence(p.topic, p.user, p.joined);
                }
                // Before the routing: the session is not this gateway's yet.
                Some(session_frame::Frame::Presence(_)) => {}
                None => {}
            }
        }
    }

    fn take_in_bans(&self, addr: SocketAddr, version: u64, bans: Vec<firetower_proto::Ban>) {
        let count = bans.len();
        if self.inner.controls.offer_bans(version, bans) {
            tracing::debug!(event = "bans_received", %addr, version, count, "ban list taken in");
        }
    }

    /// What a manager sent before its routing was checked, now that it was.
    fn take_in_controls(&self, addr: SocketAddr, untrusted: UntrustedControls) {
        if let Some((version, bans)) = untrusted.bans {
            self.take_in_bans(addr, version, bans);
        }
        for k in untrusted.kicks {
            self.inner
                .controls
                .offer_kick(k.seq, k.user, k.at_ms, unix_ms());
        }
    }

    /// A heartbeat with the latest figures, if the gateway reported any.
    fn heartbeat(&self) -> GatewayFrame {
        let stats = *self.inner.stats.lock().unwrap_or_else(|e| e.into_inner());
        let stats = stats.map(|(s, uptime_ms)| PbGatewayStats {
            connections: s.connections,
            subscriptions: s.subscriptions,
            topics: s.topics,
            messages_in_total: s.messages_in_total,
            messages_out_total: s.messages_out_total,
            dropped_total: s.dropped_total,
            uptime_ms,
        });
        GatewayFrame {
            frame: Some(gateway_frame::Frame::Heartbeat(Heartbeat { stats })),
        }
    }

    /// Ask the gateway where `query.user` is connected and answer on the session stream.
    fn answer_query(&self, query: ConnectionsQuery, answers: mpsc::Sender<GatewayFrame>) {
        let queries = Arc::clone(&self.inner.queries);
        if queries.fetch_add(1, Ordering::AcqRel) >= QUERIES_IN_FLIGHT {
            queries.fetch_sub(1, Ordering::AcqRel);
            self.inner.controls.reject(ControlRejected::Overflow);
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !self.inner.controls.offer_query(query.user, tx) {
            queries.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        tokio::spawn(async move {
            let found = tokio::time::timeout(QUERY_ANSWER_TIMEOUT, rx).await;
            queries.fetch_sub(1, Ordering::AcqRel);
            // No answer (the gateway takes no controls, or was too slow): none sent, and the
            // manager names this gateway as not answering.
            let Ok(Ok(found)) = found else { return };
            let _ = answers.send(connections_frame(query.query, found)).await;
        });
    }

    fn mark_open(&self, addr: SocketAddr) {
        tracing::info!(event = "session_up", %addr, "session with manager open");
        self.inner
            .open_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr);
    }

    /// Pass a delivery from the manager at `from` on to the gateway when [`DeliveryGuard`]
    /// lets it through; false when it was dropped (the manager is told it was superseded:
    /// the publish fails rather than counting this gateway as served).
    async fn pass_on(&self, from: SocketAddr, d: firetower_proto::link::Delivery) -> bool {
        let incoming = Incoming {
            from,
            topic: &d.topic,
            term: d.term,
            seq: d.seq,
            json: d.json,
            data: &d.data,
        };
        let mut verified = false;
        let verdict = loop {
            let cx = Context {
                group: group_of(&d.topic, self.inner.link.groups()),
                leader: None,
                held: self.holds(&d.topic),
                verified,
                now: Instant::now(),
            };
            let cx = Context {
                leader: self.inner.link.leader(cx.group),
                ..cx
            };
            let verdict = self.guard().check(&incoming, cx);
            if verdict != Verdict::Verify {
                break verdict;
            }
            self.verify_leader(from).await;
            verified = true;
        };
        match verdict {
            Verdict::Pass => {}
            // Not for any client here: no one to fail.
            Verdict::NotHeld => return true,
            Verdict::Superseded => return false,
            Verdict::Rejected(reason) => {
                tracing::debug!(
                    event = "link_rejected",
                    reason = reason.as_str(),
                    %from,
                    topic = %d.topic.escape_debug(),
                    term = d.term,
                    seq = d.seq,
                    "dropped a delivery"
                );
                return false;
            }
            Verdict::Verify => return false,
        }
        let topic: Arc<str> = Arc::from(d.topic.as_str());
        let data = Bytes::from(d.data);
        let payload = if d.json {
            Payload::Json(data)
        } else {
            Payload::Binary(data)
        };
        let position = (d.offset > 0).then(|| Position {
            epoch: Arc::from(d.epoch.as_str()),
            offset: d.offset,
        });
        let delivery = Delivery {
            topic,
            payload,
            term: d.term,
            seq: d.seq,
            position,
        };
        // Back-pressure: a full fan-out buffer slows this stream, and so the manager.
        let _ = self.inner.deliveries.send(delivery).await;
        true
    }

    /// Ask the manager at `from` for its routing and take it in: a manager that just became a
    /// group's leader says so there before its routing push reaches this gateway.
    async fn verify_leader(&self, from: SocketAddr) {
        let reply = self
            .inner
            .link
            .request_at(from, &LinkRequest::GetRouting, VERIFY_TIMEOUT)
            .await;
        match reply {
            Ok(LinkReply::Routing(r)) => {
                let _ = self.inner.link.apply_routing(from, &r);
            }
            Ok(other) => {
                tracing::debug!(%from, reply = ?other, "routing check got another reply")
            }
            Err(e) => tracing::debug!(%from, error = %e, "routing check failed"),
        }
    }

    /// Queue the held topics of `groups` for re-sending; one task at a time does it, so a
    /// manager sending many `Resync` frames costs one pass over the held topics, not many.
    fn resync(&self, groups: Vec<u32>) {
        let count = self.inner.link.groups();
        {
            let mut pending = self
                .inner
                .resync_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            pending.extend(groups.into_iter().filter(|&g| g < count));
            if pending.is_empty() {
                return;
            }
        }
        if !self.inner.resync_running.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move { this.run_resyncs().await });
        }
    }

    async fn run_resyncs(&self) {
        loop {
            let groups: HashSet<u32> = std::mem::take(
                &mut *self
                    .inner
                    .resync_pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            );
            if groups.is_empty() {
                self.inner.resync_running.store(false, Ordering::Release);
                // A Resync queued between the take and the store would otherwise wait.
                let more = !self
                    .inner
                    .resync_pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty();
                if more && !self.inner.resync_running.swap(true, Ordering::AcqRel) {
                    continue;
                }
                return;
            }
            self.resync_groups(&groups).await;
        }
    }

    /// Re-send every held topic of these groups (the manager registered this session anew).
    async fn resync_groups(&self, groups: &HashSet<u32>) {
        let count = self.inner.link.groups();
        let topics: Vec<String> = self
            .inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|t| groups.contains(&group_of(t, count)))
            .cloned()
            .collect();
        if !topics.is_empty() {
            tracing::info!(topics = topics.len(), ?groups, "re-sending held topics");
        }
        for topic in topics {
            let still_held = self
                .inner
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&topic);
            if !still_held {
                continue;
            }
            if let Err(e) = self
                .inner
                .link
                .subscribe_in_session(&topic, self.inner.epoch)
                .await
            {
                self.inner.resync_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic, error = %e, "re-subscribe failed; the next resync retries");
            }
        }
    }
}

fn upstream_error(e: LinkError) -> UpstreamError {
    match e {
        LinkError::Timeout(..) => UpstreamError::Timeout,
        LinkError::Refused { code, .. } if code == "timeout" => UpstreamError::Timeout,
        LinkError::Refused { code, message } => UpstreamError::Refused { code, message },
        LinkError::InvalidTopic(t) => UpstreamError::Refused {
            code: t.code().to_string(),
            message: t.to_string(),
        },
        LinkError::Endpoint(m) => UpstreamError::Unavailable(m),
    }
}

impl Upstream for ClusterUpstream {
    fn subscribe(&self, topic: &str) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let this = self.clone();
        let topic = topic.to_string();
        Box::pin(async move {
            // Held before it is sent: a Resync racing with this subscribe re-sends it.
            this.inner
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(topic.clone());
            match this
                .inner
                .link
                .subscribe_in_session(&topic, this.inner.epoch)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => {
                    let e = upstream_error(e);
                    if !e.is_indeterminate() {
                        this.inner
                            .held
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&topic);
                    }
                    Err(e)
                }
            }
        })
    }

    fn unsubscribe(&self, topic: &str) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let this = self.clone();
        let topic = topic.to_string();
        Box::pin(async move {
            this.inner
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&topic);
            this.guard().forget(&topic);
            this.inner
                .link
                .unsubscribe(&topic)
                .await
                .map(|_| ())
                .map_err(upstream_error)
        })
    }

    fn publish(
        &self,
        topic: &str,
        payload: Payload,
    ) -> BoxFuture<'static, Result<Stamp, UpstreamError>> {
        let this = self.clone();
        let topic = topic.to_string();
        Box::pin(async move {
            let (data, json) = match payload {
                Payload::Json(b) => (b.to_vec(), true),
                Payload::Binary(b) => (b.to_vec(), false),
            };
            this.inner
                .link
                .publish_ordered(&topic, data, json)
                .await
                .map(|p| Stamp {
                    term: p.term,
                    seq: p.seq,
                    position: (p.offset > 0).then(|| Position {
                        epoch: Arc::from(p.epoch),
                        offset: p.offset,
                    }),
                })
                .map_err(upstream_error)
        })
    }

    fn presence_update(
        &self,
        topic: &str,
        user: &str,
        connections: u32,
    ) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let this = self.clone();
        let (topic, user) = (topic.to_string(), user.to_string());
        Box::pin(async move {
            this.inner
                .link
                .presence_update(&topic, &user, connections)
                .await
                .map(|_| ())
                .map_err(upstream_error)
        })
    }

    fn presence(
        &self,
        topic: &str,
    ) -> BoxFuture<'static, Result<Option<crate::upstream::Presence>, UpstreamError>> {
        let this = self.clone();
        let topic = topic.to_string();
        Box::pin(async move {
            this.inner
                .link
                .presence(&topic)
                .await
                .map_err(upstream_error)
        })
    }

    fn fetch_history(
        &self,
        topic: &str,
        after: u64,
        limit: u32,
    ) -> BoxFuture<'static, Result<HistoryPage, UpstreamError>> {
        let this = self.clone();
        let topic = topic.to_string();
        Box::pin(async move {
            let page = this
                .inner
                .link
                .fetch_history(&topic, after, limit)
                .await
                .map_err(upstream_error)?;
            Ok(HistoryPage {
                enabled: page.enabled,
                epoch: Arc::from(page.epoch),
                first: page.first,
                last: page.last,
                messages: page
                    .messages
                    .into_iter()
                    .map(|m| {
                        // JSON text goes to clients as it is: a manager's is checked as a
                        // live delivery's is (else it is passed on as bytes).
                        let valid = m.json
                            && serde_json::from_slice::<&serde_json::value::RawValue>(&m.data)
                                .is_ok();
                        let data = Bytes::from(m.data);
                        let payload = if valid {
                            Payload::Json(data)
                        } else {
                            Payload::Binary(data)
                        };
                        (m.offset, m.term, payload)
                    })
                    .collect(),
                truncated: page.truncated,
            })
        })
    }

    fn link_rejections(&self) -> Vec<(&'static str, u64)> {
        self.rejections()
    }

    fn take_controls(&self) -> Option<ControlReceiver> {
        self.inner.controls.take_receiver()
    }

    fn report_stats(&self, stats: GatewayStats) {
        let uptime_ms = u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        *self.inner.stats.lock().unwrap_or_else(|e| e.into_inner()) = Some((stats, uptime_ms));
    }

    fn ready(&self) -> bool {
        let managers = self.inner.link.managers().len();
        self.inner.link.all_leaders_known() && self.open_sessions() >= managers.div_ceil(2).max(1)
    }
}

/// Unix milliseconds on this gateway's clock (0 before 1970).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The answer to query `query`: as many of the connections as fit a frame the manager
/// accepts ([`MAX_CONNECTIONS_FRAME_BYTES`]), `truncated` when some were left out.
fn connections_frame(query: u64, found: Vec<ConnectionInfo>) -> GatewayFrame {
    use prost::Message;
    // Room for the frame's own fields and the tags around each entry.
    let budget = MAX_CONNECTIONS_FRAME_BYTES - 64;
    let mut used = 0usize;
    let mut answer = Connections {
        query,
        connections: Vec::new(),
        truncated: false,
    };
    for c in found {
        let entry = ConnectionEntry {
            conn: c.conn,
            remote: c.remote,
            since_ms: c.since_ms,
            topics: c.topics,
        };
        let len = entry.encoded_len() + 8;
        if used + len > budget {
            answer.truncated = true;
            break;
        }
        used += len;
        answer.connections.push(entry);
    }
    GatewayFrame {
        frame: Some(gateway_frame::Frame::Connections(answer)),
    }
}

/// Read one session frame: its length prefix, then the first body byte (the protobuf tag,
/// which names the frame type), and only then the rest of the body, once its length fits the
/// limit of that type. `Ok(None)` on a clean end of stream before a frame.
async fn read_session_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Option<SessionFrame>, SessionError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = stream
            .read(&mut header[got..])
            .await
            .map_err(ReadFrameError::Io)?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(ReadFrameError::Truncated {
                expected: HEADER_LEN,
                got,
            }
            .into());
        }
        got += n;
    }
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Ok(Some(SessionFrame::default()));
    }
    if len > MAX_LINK_FRAME_BYTES {
        return Err(ReadFrameError::TooLarge {
            len,
            max: MAX_LINK_FRAME_BYTES,
        }
        .into());
    }
    let mut tag = [0u8; 1];
    if stream.read(&mut tag).await.map_err(ReadFrameError::Io)? == 0 {
        return Err(ReadFrameError::Truncated {
            expected: len,
            got: 0,
        }
        .into());
    }
    let kind = SessionFrameKind::from_tag(tag[0]);
    if len > kind.max_body() {
        return Err(SessionError::FrameTooLarge {
            kind: kind.name(),
            len,
            max: kind.max_body(),
        });
    }
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    body.push(tag[0]);
    (&mut *stream)
        .take(len as u64 - 1)
        .read_to_end(&mut body)
        .await
        .map_err(ReadFrameError::Io)?;
    if body.len() < len {
        return Err(ReadFrameError::Truncated {
            expected: len,
            got: body.len(),
        }
        .into());
    }
    Ok(Some(decode_body(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use firetower_link::encode_frame;
    use firetower_proto::link::{Delivery as PbDelivery, SessionOpened};

    fn frame(f: session_frame::Frame) -> Vec<u8> {
        encode_frame(&SessionFrame { frame: Some(f) })
    }

    #[tokio::test]
    async fn session_frames_read_back_with_their_type_limits() {
        let mut bytes = frame(session_frame::Frame::Opened(SessionOpened { epoch: 7 }));
        bytes.extend(frame(session_frame::Frame::Delivery(PbDelivery {
            topic: "room.1".into(),
            data: vec![b'1'; 100_000],
            json: true,
            term: 1,
            seq: 1,
            dseq: 1,
            offset: 0,
            epoch: String::new(),
        })));
        bytes.extend(encode_frame(&SessionFrame::default()));
        let mut stream = &bytes[..];
        let opened = read_session_frame(&mut stream).await.unwrap().unwrap();
        assert!(matches!(
            opened.frame,
            Some(session_frame::Frame::Opened(_))
        ));
        let delivery = read_session_frame(&mut stream).await.unwrap().unwrap();
        assert!(matches!(
            delivery.frame,
            Some(session_frame::Frame::Delivery(d)) if d.data.len() == 100_000
        ));
        let empty = read_session_frame(&mut stream).await.unwrap().unwrap();
        assert_eq!(empty.frame, None);
        assert!(read_session_frame(&mut stream).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_before_its_body() {
        // An `Opened` frame announcing 1000 bytes, of which only the tag arrives: refused on
        // the announced size, without waiting for (or allocating) the body.
        let mut bytes = 1000u32.to_be_bytes().to_vec();
        bytes.push(0x0A);
        let mut stream = &bytes[..];
        let e = read_session_frame(&mut stream).await.unwrap_err();
        assert!(
            matches!(
                e,
                SessionError::FrameTooLarge {
                    kind: "opened",
                    len: 1000,
                    max: 64
                }
            ),
            "{e}"
        );
        let mut huge = (MAX_LINK_FRAME_BYTES as u32 + 1).to_be_bytes().to_vec();
        huge.push(0x12);
        let e = read_session_frame(&mut &huge[..]).await.unwrap_err();
        assert!(
            matches!(e, SessionError::Read(ReadFrameError::TooLarge { .. })),
            "{e}"
        );
        let mut routing = (300_000u32).to_be_bytes().to_vec();
        routing.push(0x22);
        let e = read_session_frame(&mut &routing[..]).await.unwrap_err();
        assert!(
            matches!(
                e,
                SessionError::FrameTooLarge {
                    kind: "routing",
                    ..
                }
            ),
            "{e}"
        );
        let cut = &frame(session_frame::Frame::Opened(SessionOpened { epoch: 7 }))[..5];
        let e = read_session_frame(&mut &cut[..]).await.unwrap_err();
        assert!(
            matches!(e, SessionError::Read(ReadFrameError::Truncated { .. })),
            "{e}"
        );
    }

    #[tokio::test]
    async fn control_frames_have_limits_of_their_own() {
        use firetower_proto::link::{Bans, Kick};
        // A kick announcing 2 KiB: refused on its size (a kick is a seq, a time, a user).
        let mut kick = 2048u32.to_be_bytes().to_vec();
        kick.push(0x3A);
        let e = read_session_frame(&mut &kick[..]).await.unwrap_err();
        assert!(
            matches!(e, SessionError::FrameTooLarge { kind: "kick", .. }),
            "{e}"
        );
        let mut query = 2048u32.to_be_bytes().to_vec();
        query.push(0x42);
        let e = read_session_frame(&mut &query[..]).await.unwrap_err();
        assert!(
            matches!(
                e,
                SessionError::FrameTooLarge {
                    kind: "connections_query",
                    ..
                }
            ),
            "{e}"
        );
        // A ban chunk of 900 KB is fine; kicks and chunks read back whole.
        let mut bytes = frame(session_frame::Frame::Bans(Bans {
            version: 3,
            offset: 0,
            total: 1,
            bans: vec!["x".repeat(900_000)],
        }));
        bytes.extend(frame(session_frame::Frame::Kick(Kick {
            seq: 1,
            user: "u".repeat(256),
            at_ms: u64::MAX,
        })));
        let mut stream = &bytes[..];
        let bans = read_session_frame(&mut stream).await.unwrap().unwrap();
        assert!(
            matches!(bans.frame, Some(session_frame::Frame::Bans(b)) if b.bans[0].len() == 900_000)
        );
        let kick = read_session_frame(&mut stream).await.unwrap().unwrap();
        assert!(matches!(kick.frame, Some(session_frame::Frame::Kick(k)) if k.user.len() == 256));
    }

    #[test]
    fn a_connections_answer_fits_what_the_manager_accepts() {
        use prost::Message;
        let many: Vec<ConnectionInfo> = (0..5_000)
            .map(|i| ConnectionInfo {
                conn: format!("c{i}"),
                remote: "203.0.113.1:40000".into(),
                since_ms: i,
                topics: vec!["room.some-long-topic-name".into(); 4],
            })
            .collect();
        let answer = connections_frame(9, many);
        assert!(answer.encoded_len() <= MAX_CONNECTIONS_FRAME_BYTES);
        let Some(gateway_frame::Frame::Connections(c)) = answer.frame else {
            panic!("not an answer")
        };
        assert!(c.truncated);
        assert!(c.connections.len() > 1_000);
        let few = connections_frame(1, vec![]);
        assert!(matches!(few.frame, Some(gateway_frame::Frame::Connections(c)) if !c.truncated));
    }
}
