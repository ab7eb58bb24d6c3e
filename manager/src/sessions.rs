//! Gateway sessions on a manager: the long-lived stream each gateway keeps to each manager,
//! which carries deliveries (manager → gateway) and heartbeats and delivery acks back.
//!
//! ```text
//!  gateway ── OpenSession{epoch, lease} ──▶ manager: register SessionHandle, make sure every
//!          ◀── SessionOpened ───────────            group led here has the session in its
//!          ◀── Delivery{dseq} ...                   table (ExpireSession old epoch, then
//!          ── Heartbeat / DeliveryAck{upto} ──▶     OpenSession), Resync if it had none
//! ```
//!
//! The lease task of each group leader drops (ExpireSession) the subscriptions of a gateway
//! that has not been heard from for its lease, and registers sessions of connected gateways
//! in groups it started to lead. A gateway told to `Resync` re-sends the topics it holds.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use firetower_proto::link::{
    gateway_frame, session_frame, Delivery, GatewayFrame, OpenSession, Resync, SessionFrame,
    SessionOpened,
};
use firetower_proto::{decode_frame, encode_frame, MAX_LINK_FRAME_BYTES};
use firetower_raft::{Command, GroupId, Response};
use openraft::ServerState;
use tokio::sync::{mpsc, watch};

use crate::server::Manager;

/// Frames queued for one gateway's session stream before the session counts as stalled.
const SESSION_QUEUE_FRAMES: usize = 65_536;
/// Shortest lease a gateway may ask for.
const MIN_LEASE: Duration = Duration::from_millis(1_000);
/// Longest lease a gateway may ask for.
const MAX_LEASE: Duration = Duration::from_secs(300);
/// How often the lease task looks at every group this manager leads.
const LEASE_TICK: Duration = Duration::from_millis(250);

/// The live sessions of gateways connected to this manager.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<u64, SessionHandle>>,
    /// When each gateway was last heard from on a session stream, with that session's epoch
    /// (kept after the stream drops).
    heard: Mutex<HashMap<u64, (u64, Instant)>>,
    /// When the lease task first saw each (gateway, epoch) in a table without a live session.
    first_seen: Mutex<HashMap<(u64, u64), Instant>>,
    next_instance: AtomicU64,
}

/// One live session stream.
#[derive(Debug, Clone)]
pub(crate) struct SessionHandle {
    pub gateway: u64,
    pub epoch: u64,
    pub lease: Duration,
    instance: u64,
    queue: Arc<Mutex<SessionQueue>>,
    acked: watch::Receiver<u64>,
    /// Recent deliveries the gateway dropped as older than what it already passed on.
    superseded: Arc<Mutex<VecDeque<u64>>>,
}

/// How many superseded delivery numbers a session remembers for the publishes waiting on them.
const SUPERSEDED_KEPT: usize = 4_096;

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeliveryOutcome {
    /// The gateway passed it on to its subscribers.
    Delivered,
    /// The gateway dropped it: it had already passed on a newer stamp of the topic.
    Superseded,
    /// No confirmation in time, or the session ended first.
    Unconfirmed,
}

#[derive(Debug)]
struct SessionQueue {
    next_dseq: u64,
    tx: mpsc::Sender<Bytes>,
}

/// Why a delivery could not be queued.
#[derive(Debug)]
pub(crate) enum EnqueueError {
    /// The session stream is gone.
    Closed,
    /// The gateway does not keep up; its session is being dropped.
    Stalled,
}

impl SessionHandle {
    /// Queue a delivery; returns its dseq for [`SessionHandle::wait_acked`].
    pub fn enqueue_delivery(
        &self,
        topic: &str,
        data: &Bytes,
        json: bool,
        term: u64,
        seq: u64,
    ) -> Result<u64, EnqueueError> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let dseq = q.next_dseq + 1;
        let frame = SessionFrame {
            frame: Some(session_frame::Frame::Delivery(Delivery {
                topic: topic.to_string(),
                data: data.to_vec(),
                json,
                term,
                seq,
                dseq,
            })),
        };
        match q.tx.try_send(Bytes::from(encode_frame(&frame))) {
            Ok(()) => {
                q.next_dseq = dseq;
                Ok(dseq)
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(EnqueueError::Stalled),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(EnqueueError::Closed),
        }
    }

    fn send_control(&self, frame: session_frame::Frame) -> bool {
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = Bytes::from(encode_frame(&SessionFrame { frame: Some(frame) }));
        q.tx.try_send(bytes).is_ok()
    }

    /// Wait until the gateway acknowledged `dseq` and say what it did with it.
    pub async fn wait_acked(&self, dseq: u64, timeout: Duration) -> DeliveryOutcome {
        let mut acked = self.acked.clone();
        let reached = tokio::time::timeout(timeout, async {
            acked.wait_for(|v| *v >= dseq).await.is_ok()
        })
        .await;
        if !matches!(reached, Ok(true)) {
            return DeliveryOutcome::Unconfirmed;
        }
        let superseded = self.superseded.lock().unwrap_or_else(|e| e.into_inner());
        if superseded.contains(&dseq) {
            DeliveryOutcome::Superseded
        } else {
            DeliveryOutcome::Delivered
        }
    }

    fn record_superseded(&self, dseqs: &[u64]) {
        let mut superseded = self.superseded.lock().unwrap_or_else(|e| e.into_inner());
        for d in dseqs {
            if superseded.len() == SUPERSEDED_KEPT {
                superseded.pop_front();
            }
            superseded.push_back(*d);
        }
    }
}

impl Sessions {
    /// The live session of a gateway, if it has one here.
    pub fn get(&self, gateway: u64) -> Option<SessionHandle> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&gateway)
            .cloned()
    }

    fn live(&self) -> Vec<SessionHandle> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn touch(&self, gateway: u64, epoch: u64) {
        self.heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(gateway, (epoch, Instant::now()));
    }

    fn last_heard_epoch(&self, gateway: u64, epoch: u64) -> Option<Instant> {
        self.heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&gateway)
            .filter(|(e, _)| *e == epoch)
            .map(|(_, at)| *at)
    }

    fn first_seen(&self, gateway: u64, epoch: u64) -> Instant {
        *self
            .first_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((gateway, epoch))
            .or_insert_with(Instant::now)
    }

    fn forget(&self, gateway: u64, epoch: u64) {
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        if heard.get(&gateway).is_some_and(|(e, _)| *e == epoch) {
            heard.remove(&gateway);
        }
        drop(heard);
        self.first_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(gateway, epoch));
    }

    fn register(&self, handle: SessionHandle) {
        self.touch(handle.gateway, handle.epoch);
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(handle.gateway, handle);
    }

    fn unregister(&self, gateway: u64, instance: u64) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.get(&gateway).is_some_and(|h| h.instance == instance) {
            live.remove(&gateway);
        }
    }
}

/// Serve one session stream until it closes.
pub(crate) async fn serve_session(
    manager: Manager,
    gateway: u64,
    open: OpenSession,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let lease = Duration::from_millis(open.lease_ms).clamp(MIN_LEASE, MAX_LEASE);
    let sessions = manager.sessions();
    let (tx, mut rx) = mpsc::channel::<Bytes>(SESSION_QUEUE_FRAMES);
    let (acked_tx, acked_rx) = watch::channel(0u64);
    let instance = sessions.next_instance.fetch_add(1, Ordering::Relaxed);
    let handle = SessionHandle {
        gateway,
        epoch: open.epoch,
        lease,
        instance,
        queue: Arc::new(Mutex::new(SessionQueue { next_dseq: 0, tx })),
        acked: acked_rx,
        superseded: Default::default(),
    };
    sessions.register(handle.clone());
    tracing::info!(
        gateway,
        epoch = open.epoch,
        ?lease,
        "gateway session opened"
    );

    // Register the session in every group led here before saying it is open, so the gateway
    // never subscribes in a group whose table would later expire an older epoch under it.
    let mut fresh = Vec::new();
    for group in manager.led_groups() {
        if let Ok(true) = ensure_session(&manager, group, &handle).await {
            fresh.push(group);
        }
    }
    handle.send_control(session_frame::Frame::Opened(SessionOpened {
        epoch: open.epoch,
    }));
    if !fresh.is_empty() {
        handle.send_control(session_frame::Frame::Resync(Resync { groups: fresh }));
    }
    handle.send_control(routing_frame(&manager));

    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if send.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    });
    let mut routing_version = manager.routing_version();
    let reader_sessions = manager.clone();
    let routing_handle = handle.clone();
    let routing_manager = manager.clone();
    let routing_task = tokio::spawn(async move {
        while routing_version.changed().await.is_ok() {
            if !routing_handle.send_control(routing_frame(&routing_manager)) {
                break;
            }
        }
    });
    loop {
        match read_gateway_frame(&mut recv).await {
            Ok(Some(frame)) => {
                reader_sessions.sessions().touch(gateway, open.epoch);
                if let Some(gateway_frame::Frame::Ack(ack)) = frame.frame {
                    // Recorded before the ack is published, so a waiter that sees the ack
                    // also sees whether its delivery was superseded.
                    if !ack.superseded.is_empty() {
                        handle.record_superseded(&ack.superseded);
                    }
                    acked_tx.send_if_modified(|v| {
                        if ack.upto > *v {
                            *v = ack.upto;
                            true
                        } else {
                            false
                        }
                    });
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(gateway, error = %e, "gateway session stream failed");
                break;
            }
        }
    }
    sessions.unregister(gateway, instance);
    routing_task.abort();
    writer.abort();
    tracing::info!(gateway, "gateway session closed");
}

fn routing_frame(manager: &Manager) -> session_frame::Frame {
    match crate::link::routing(manager).result {
        Some(firetower_proto::link::gateway_reply::Result::Routing(r)) => {
            session_frame::Frame::Routing(r)
        }
        _ => session_frame::Frame::Routing(Default::default()),
    }
}

/// Read one length-prefixed frame; `None` on a clean end of stream.
pub(crate) async fn read_frame_bytes(
    recv: &mut quinn::RecvStream,
) -> Result<Option<Vec<u8>>, String> {
    let mut head = [0u8; 4];
    match recv.read_exact(&mut head).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_LINK_FRAME_BYTES {
        return Err(format!("frame of {len} bytes exceeds the limit"));
    }
    let mut frame = vec![0u8; 4 + len];
    frame[..4].copy_from_slice(&head);
    recv.read_exact(&mut frame[4..])
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(frame))
}

async fn read_gateway_frame(recv: &mut quinn::RecvStream) -> Result<Option<GatewayFrame>, String> {
    match read_frame_bytes(recv).await? {
        None => Ok(None),
        Some(bytes) => decode_frame(&bytes).map(Some).map_err(|e| e.to_string()),
    }
}

/// Make sure group `group` (led here) records this session's epoch. Returns true when it had
/// to register it (the gateway had no session with this epoch there: its subscriptions in the
/// group, if any, were dropped with the old epoch and must be re-sent).
async fn ensure_session(
    manager: &Manager,
    group: GroupId,
    handle: &SessionHandle,
) -> Result<bool, String> {
    let reader = manager.reader(group).ok_or("group not running")?;
    let raft = manager.raft(group).ok_or("group not running")?;
    let stored = reader.session(handle.gateway).map_err(|e| e.to_string())?;
    if stored.as_ref().is_some_and(|s| s.epoch == handle.epoch) {
        return Ok(false);
    }
    if let Some(old) = stored {
        if old.epoch > handle.epoch {
            return Err(format!(
                "gateway {} came back with epoch {} below the recorded {}",
                handle.gateway, handle.epoch, old.epoch
            ));
        }
        propose(
            &raft,
            Command::ExpireSession {
                gateway: handle.gateway,
                epoch: old.epoch,
            },
        )
        .await?;
    }
    propose(
        &raft,
        Command::OpenSession {
            gateway: handle.gateway,
            epoch: handle.epoch,
            lease_ms: handle.lease.as_millis() as u64,
        },
    )
    .await?;
    Ok(true)
}

async fn propose(raft: &firetower_raft::Raft, command: Command) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(5), raft.client_write(command)).await {
        Ok(Ok(r)) => match r.data {
            Response::Refused { reason } => Err(reason),
            _ => Ok(()),
        },
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("proposal timed out".into()),
    }
}

/// The lease task: runs for the life of the manager.
pub(crate) fn spawn_lease_task(manager: Manager) {
    tokio::spawn(async move {
        let shutdown = manager.shutdown_token();
        let mut leader_since: HashMap<GroupId, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(LEASE_TICK);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let led = manager.led_groups();
            leader_since.retain(|g, _| led.contains(g));
            for group in led {
                let since = *leader_since.entry(group).or_insert_with(Instant::now);
                if let Err(e) = lease_round(&manager, group, since).await {
                    tracing::debug!(group, error = %e, "lease round");
                }
            }
        }
    });
}

async fn lease_round(manager: &Manager, group: GroupId, since: Instant) -> Result<(), String> {
    let reader = manager.reader(group).ok_or("group not running")?;
    let raft = manager.raft(group).ok_or("group not running")?;
    let sessions = manager.sessions();
    let now = Instant::now();
    // Expire sessions not heard from within their lease (counted from when this manager
    // started to lead the group, for gateways it never heard from).
    for (gateway, session) in reader.sessions().map_err(|e| e.to_string())? {
        let live = sessions
            .get(gateway)
            .is_some_and(|h| h.epoch == session.epoch);
        if live {
            continue;
        }
        // The lease runs from the latest of: this manager started to lead the group, it last
        // heard from this session's epoch, or it first saw this epoch in the table (a session
        // registered through another manager gets a whole lease to connect here).
        let heard = sessions.last_heard_epoch(gateway, session.epoch);
        let seen = sessions.first_seen(gateway, session.epoch);
        let base = [Some(since), heard, Some(seen)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(since);
        if now.duration_since(base) > Duration::from_millis(session.lease_ms) {
            tracing::info!(
                group,
                gateway,
                epoch = session.epoch,
                "gateway lease expired"
            );
            propose(
                &raft,
                Command::ExpireSession {
                    gateway,
                    epoch: session.epoch,
                },
            )
            .await?;
            sessions.forget(gateway, session.epoch);
        }
    }
    // Register connected gateways that this group does not know with their epoch.
    for handle in sessions.live() {
        if ensure_session(manager, group, &handle).await? {
            handle.send_control(session_frame::Frame::Resync(Resync {
                groups: vec![group],
            }));
        }
    }
    Ok(())
}

/// True when this manager leads `group` and has applied everything of earlier terms.
pub(crate) fn is_ready_leader(raft: &firetower_raft::Raft, id: u64) -> bool {
    let m = raft.metrics();
    let m = m.borrow();
    m.state == ServerState::Leader
        && m.current_leader == Some(id)
        && m.last_applied
            .is_some_and(|l| l.leader_id.term == m.current_term)
}
