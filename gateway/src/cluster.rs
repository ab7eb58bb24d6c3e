//! [`ClusterUpstream`]: the gateway's [`Upstream`] backed by the topic managers.
//!
//! ```text
//!   Gateway ──subscribe/unsubscribe/publish──▶ LinkClient (one stream per request, leader cache)
//!   Gateway ◀── mpsc<Delivery> ◀── order filter ◀── session stream per manager
//!                                                     ├─ OpenSession{epoch, lease}, heartbeats
//!                                                     ├─ Delivery{dseq} ─▶ DeliveryAck{dseq}
//!                                                     ├─ Resync{groups} ─▶ re-subscribe held topics
//!                                                     └─ Routing ─▶ leader cache
//! ```
//!
//! The session epoch is the gateway's start time in microseconds, so a restarted gateway
//! always comes back with a higher epoch and the managers drop what its previous life held.
//! Deliveries of a topic are passed on in `(term, seq)` order; anything at or below the last
//! passed-on stamp (a late message from a deposed leader, a duplicate) is dropped and counted.
//!
//! [`ClusterUpstream::connect`] makes its own QUIC endpoint;
//! [`ClusterUpstream::connect_with_endpoint`] runs the same code over one the caller made,
//! which is how the manager's in-memory partition suite (`manager/tests/partition.rs`) drives
//! this type over a `MemNet`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use firetower_link::{
    decode_body, read_link_frame, write_link_frame, FrameError, LinkClient, LinkError, LinkOptions,
    LinkRequest, ReadFrameError, Routing, StreamError, MAX_LINK_FRAME_BYTES,
};
use firetower_proto::link::{
    gateway_frame, session_frame, DeliveryAck, GatewayFrame, Heartbeat, SessionFrame,
};
use firetower_proto::{group_of, Epoch};
use tokio::sync::mpsc;

use crate::upstream::{BoxFuture, Delivery, Payload, Stamp, Upstream, UpstreamError};

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
    /// Last `(term, seq)` passed on per topic.
    last_stamp: Mutex<HashMap<Arc<str>, (u64, u64)>>,
    deliveries: mpsc::Sender<Delivery>,
    /// Managers with an open session stream.
    open_sessions: Mutex<HashSet<SocketAddr>>,
    /// Managers a session task runs for.
    session_tasks: Mutex<HashSet<SocketAddr>>,
    dropped_out_of_order: AtomicU64,
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
                last_stamp: Mutex::new(HashMap::new()),
                deliveries: tx,
                open_sessions: Mutex::new(HashSet::new()),
                session_tasks: Mutex::new(HashSet::new()),
                dropped_out_of_order: AtomicU64::new(0),
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
        self.inner.dropped_out_of_order.load(Ordering::Relaxed)
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
        // Writer: heartbeats and acks share the send side.
        let writer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat_every);
            loop {
                let frame = tokio::select! {
                    _ = tick.tick() => GatewayFrame { frame: Some(gateway_frame::Frame::Heartbeat(Heartbeat {})) },
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
        loop {
            let Some(bytes) = read_link_frame(recv, MAX_LINK_FRAME_BYTES).await? else {
                return Ok(());
            };
            let frame: SessionFrame = decode_body(&bytes)?;
            match frame.frame {
                Some(session_frame::Frame::Opened(_)) => {
                    tracing::info!(event = "session_up", %addr, "session with manager open");
                    self.inner
                        .open_sessions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(addr);
                }
                Some(session_frame::Frame::Delivery(d)) => {
                    let dseq = d.dseq;
                    let superseded = if self.pass_on(d).await {
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
                    let this = self.clone();
                    tokio::spawn(async move { this.resync(r.groups).await });
                }
                Some(session_frame::Frame::Routing(r)) => {
                    match Routing::try_from(r) {
                        Ok(routing) => self.inner.link.apply_routing(&routing),
                        Err(e) => tracing::debug!(%addr, error = %e, "ignoring pushed routing"),
                    }
                    self.spawn_missing_sessions();
                }
                Some(session_frame::Frame::Failure(f)) => {
                    return Err(SessionError::Refused {
                        code: f.code,
                        message: f.message,
                    });
                }
                None => {}
            }
        }
    }

    /// Pass a delivery on to the gateway if it is newer than the last one of its topic;
    /// false when it was dropped as older.
    async fn pass_on(&self, d: firetower_proto::link::Delivery) -> bool {
        let stamp = (d.term, d.seq);
        let topic: Arc<str> = Arc::from(d.topic.as_str());
        {
            let mut last = self
                .inner
                .last_stamp
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match last.get_mut(&topic) {
                Some(prev) if *prev >= stamp => {
                    self.inner
                        .dropped_out_of_order
                        .fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                Some(prev) => *prev = stamp,
                None => {
                    last.insert(topic.clone(), stamp);
                }
            }
        }
        let data = Bytes::from(d.data);
        let payload = if d.json {
            Payload::Json(data)
        } else {
            Payload::Binary(data)
        };
        let delivery = Delivery {
            topic,
            payload,
            term: d.term,
            seq: d.seq,
        };
        // Back-pressure: a full fan-out buffer slows this stream, and so the manager.
        let _ = self.inner.deliveries.send(delivery).await;
        true
    }

    /// Re-send every held topic of these groups (the manager registered this session anew).
    async fn resync(&self, groups: Vec<u32>) {
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
            this.inner
                .last_stamp
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(topic.as_str());
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
                .publish(&topic, data, json)
                .await
                .map(|(term, seq)| Stamp { term, seq })
                .map_err(upstream_error)
        })
    }

    fn ready(&self) -> bool {
        let managers = self.inner.link.managers().len();
        self.inner.link.all_leaders_known() && self.open_sessions() >= managers.div_ceil(2).max(1)
    }
}
