//! A gateway session held by a tool that acts as a gateway (`firetower link`, `bench commits`,
//! the chaos probe, the Jepsen raw link).
//!
//! Managers commit a subscription only for a gateway with a live session on the group's
//! leader, and drop the subscriptions of a gateway whose session lapsed for its lease
//! (`manager/src/topics.rs`). A real gateway keeps its sessions in `firetower-gateway`; a tool
//! keeps them with [`LinkClient::hold_sessions`]: one session stream per manager of the
//! routing table, heartbeats every fifth of the lease, every delivery acknowledged (a tool
//! does not consume them), re-opened with backoff when a stream ends.
//!
//! ```text
//!   hold_sessions ─▶ per manager: OpenSession{epoch, lease} ─▶ Opened ─▶ [Delivery ─▶ Ack]*
//!                                 heartbeat every lease/5 ──▶
//! ```
//!
//! The epoch is the wall clock in microseconds at the call, as a gateway's: every run of a tool is a newer
//! session than the last, and replaces it. When the holder is dropped the streams close; the
//! managers then keep the gateway's subscriptions for one more lease.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use firetower_proto::link::{gateway_frame, session_frame, DeliveryAck, GatewayFrame, Heartbeat};
use firetower_proto::Epoch;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::client::{LinkClient, LinkError};
use crate::frame::{decode_body, read_link_frame, write_link_frame, MAX_LINK_FRAME_BYTES};
use crate::message::LinkRequest;

/// Sessions of one gateway id with every manager, held until dropped.
#[derive(Debug)]
pub struct HeldSessions {
    epoch: Epoch,
    link: LinkClient,
    /// Managers that opened the session at least once.
    opened: watch::Receiver<BTreeSet<SocketAddr>>,
    _tasks: JoinSet<()>,
}

impl HeldSessions {
    /// The epoch of these sessions (subscriptions may name it, or 0).
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Wait until the session is open on the leader of every group (a subscription needs it
    /// there; a manager that is down and leads nothing does not hold the wait up).
    pub async fn wait_open(&mut self, timeout: Duration) -> Result<(), LinkError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let leaders: BTreeSet<SocketAddr> = (0..self.link.groups())
                .filter_map(|g| self.link.leader(g))
                .collect();
            let opened = self.opened.borrow().clone();
            let missing: Vec<SocketAddr> = if leaders.is_empty() {
                self.link
                    .managers()
                    .into_iter()
                    .filter(|m| !opened.contains(m))
                    .collect()
            } else {
                leaders.difference(&opened).copied().collect()
            };
            if missing.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LinkError::Timeout(
                    timeout,
                    format!("no session opened on the group leaders {missing:?}"),
                ));
            }
            // Leaders move: look again, at the routing too.
            let _ = tokio::time::timeout(Duration::from_millis(200), self.opened.changed()).await;
            if self.link.refresh_routing().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl LinkClient {
    /// Open and keep this gateway id's session with every manager of the routing table, with
    /// lease `lease`; returns once every manager opened it (or `timeout` passed: an error).
    pub async fn hold_sessions(
        &self,
        lease: Duration,
        timeout: Duration,
    ) -> Result<HeldSessions, LinkError> {
        self.hold(lease, timeout, Reading::Acknowledge).await
    }

    /// Like [`LinkClient::hold_sessions`], but once a session is open its deliveries are never
    /// read (heartbeats go on): a gateway that stopped reading, for load tests of a manager's
    /// bounds (`bench link-flood`). A session the manager closes is opened again after backoff,
    /// and stalls again.
    pub async fn hold_stalled_sessions(
        &self,
        lease: Duration,
        timeout: Duration,
    ) -> Result<HeldSessions, LinkError> {
        self.hold(lease, timeout, Reading::Never).await
    }

    async fn hold(
        &self,
        lease: Duration,
        timeout: Duration,
        reading: Reading,
    ) -> Result<HeldSessions, LinkError> {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(1)
            .max(1);
        let epoch = Epoch(micros);
        let managers = self.managers();
        let (opened_tx, opened) = watch::channel(BTreeSet::new());
        let mut tasks = JoinSet::new();
        for addr in &managers {
            let link = self.clone();
            let opened_tx = opened_tx.clone();
            let addr = *addr;
            tasks.spawn(async move { keep(link, addr, epoch, lease, reading, opened_tx).await });
        }
        let mut held = HeldSessions {
            epoch,
            link: self.clone(),
            opened,
            _tasks: tasks,
        };
        held.wait_open(timeout).await?;
        Ok(held)
    }
}

/// What a held session does with its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Read and acknowledge each.
    Acknowledge,
    /// Never read them once the session is open.
    Never,
}

/// Keep the session with `addr` open until the task is aborted.
async fn keep(
    link: LinkClient,
    addr: SocketAddr,
    epoch: Epoch,
    lease: Duration,
    reading: Reading,
    opened: watch::Sender<BTreeSet<SocketAddr>>,
) {
    let mut attempt = 0u32;
    loop {
        match run(&link, addr, epoch, lease, reading, &opened).await {
            Ok(()) => tracing::debug!(%addr, "held session ended"),
            Err(e) => tracing::debug!(%addr, error = %e, "held session failed"),
        }
        link.backoff(attempt).await;
        attempt = attempt.saturating_add(1).min(16);
    }
}

/// Why one session stream ended.
#[derive(Debug, thiserror::Error)]
enum HeldError {
    #[error("cannot open the session stream: {0}")]
    Open(String),
    #[error("session stream: {0}")]
    Stream(String),
    #[error("the manager refused the session: {0}")]
    Refused(String),
}

async fn run(
    link: &LinkClient,
    addr: SocketAddr,
    epoch: Epoch,
    lease: Duration,
    reading: Reading,
    opened: &watch::Sender<BTreeSet<SocketAddr>>,
) -> Result<(), HeldError> {
    let (mut send, mut recv) = link
        .open_stream(addr)
        .await
        .map_err(|e| HeldError::Open(e.to_string()))?;
    let open = LinkRequest::OpenSession { epoch, lease }.to_frame(link.gateway());
    write_link_frame(&mut send, &open)
        .await
        .map_err(|e| HeldError::Stream(e.to_string()))?;
    let (acks, mut ack_rx) = mpsc::channel::<GatewayFrame>(256);
    let every = (lease / 5).max(Duration::from_millis(100));
    let mut writer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            let frame = tokio::select! {
                _ = tick.tick() => GatewayFrame {
                    frame: Some(gateway_frame::Frame::Heartbeat(Heartbeat::default())),
                },
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
    let result = async {
        loop {
            let body = read_link_frame(&mut recv, MAX_LINK_FRAME_BYTES + 4096)
                .await
                .map_err(|e| HeldError::Stream(e.to_string()))?;
            let Some(body) = body else {
                return Ok(());
            };
            let frame: firetower_proto::link::SessionFrame =
                decode_body(&body).map_err(|e| HeldError::Stream(e.to_string()))?;
            match frame.frame {
                Some(session_frame::Frame::Opened(_)) => {
                    opened.send_if_modified(|set| set.insert(addr));
                    if reading == Reading::Never {
                        // Heartbeats only, until the manager ends the stream (their write
                        // fails).
                        let _ = (&mut writer).await;
                        return Ok(());
                    }
                }
                Some(session_frame::Frame::Delivery(d)) => {
                    let ack = GatewayFrame {
                        frame: Some(gateway_frame::Frame::Ack(DeliveryAck {
                            upto: d.dseq,
                            superseded: Vec::new(),
                        })),
                    };
                    if acks.send(ack).await.is_err() {
                        return Ok(());
                    }
                }
                Some(session_frame::Frame::Failure(f)) => {
                    return Err(HeldError::Refused(format!("{}: {}", f.code, f.message)));
                }
                // Resync asks for the topics held; a tool re-subscribes on its own terms. It has
                // no clients, so operator controls (bans, kicks, connection queries) do not
                // concern it: a query it does not answer is reported as unanswered.
                Some(session_frame::Frame::Resync(_))
                | Some(session_frame::Frame::Routing(_))
                | Some(session_frame::Frame::Bans(_))
                | Some(session_frame::Frame::Kick(_))
                | Some(session_frame::Frame::ConnectionsQuery(_))
                | Some(session_frame::Frame::Presence(_))
                | None => {}
            }
        }
    }
    .await;
    writer.abort();
    result
}
