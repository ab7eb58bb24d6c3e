//! The live gateway sessions of a manager: one [`SessionHandle`] per gateway with a session
//! stream here (its delivery queue and its acks), and the [`Leases`] clock that says which
//! sessions recorded in a group's table have gone unheard for too long.
//!
//! ```text
//!   session stream (sessions.rs) ──register/unregister, heartbeat──▶ SessionTable
//!   publish.rs ──get(gateway).enqueue_delivery / wait_acked──▶ SessionHandle
//!   lease task (sessions.rs) ──due(...) / expired(...)──▶ Leases (sans-I/O, leases.rs)
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use firetower_link::encode_frame;
use firetower_proto::link::{session_frame, Delivery, SessionFrame};
use firetower_proto::{Epoch, GatewayId};
use tokio::sync::{mpsc, watch};

use crate::leases::{HeldSession, Leases};
use crate::locks::lock;

/// Frames queued for one gateway's session stream before the session counts as stalled.
pub(crate) const SESSION_QUEUE_FRAMES: usize = 65_536;

/// The live sessions of gateways connected to this manager.
#[derive(Debug, Default)]
pub(crate) struct SessionTable {
    live: Mutex<HashMap<GatewayId, SessionHandle>>,
    /// When each session was last heard from and first seen unconnected (sans-I/O).
    leases: Mutex<Leases>,
    next_instance: AtomicU64,
}

/// One live session stream.
#[derive(Debug, Clone)]
pub(crate) struct SessionHandle {
    pub gateway: GatewayId,
    pub epoch: Epoch,
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
    pub(crate) fn enqueue_delivery(
        &self,
        topic: &str,
        data: &Bytes,
        json: bool,
        term: u64,
        seq: u64,
    ) -> Result<u64, EnqueueError> {
        let mut q = lock(&self.queue);
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

    pub(crate) fn send_control(&self, frame: session_frame::Frame) -> bool {
        let q = lock(&self.queue);
        let bytes = Bytes::from(encode_frame(&SessionFrame { frame: Some(frame) }));
        q.tx.try_send(bytes).is_ok()
    }

    /// Wait until the gateway acknowledged `dseq` and say what it did with it.
    pub(crate) async fn wait_acked(&self, dseq: u64, timeout: Duration) -> DeliveryOutcome {
        let mut acked = self.acked.clone();
        let reached = tokio::time::timeout(timeout, async {
            acked.wait_for(|v| *v >= dseq).await.is_ok()
        })
        .await;
        if !matches!(reached, Ok(true)) {
            return DeliveryOutcome::Unconfirmed;
        }
        let superseded = lock(&self.superseded);
        if superseded.contains(&dseq) {
            DeliveryOutcome::Superseded
        } else {
            DeliveryOutcome::Delivered
        }
    }

    pub(crate) fn record_superseded(&self, dseqs: &[u64]) {
        let mut superseded = lock(&self.superseded);
        for d in dseqs {
            if superseded.len() == SUPERSEDED_KEPT {
                superseded.pop_front();
            }
            superseded.push_back(*d);
        }
    }
}

impl SessionTable {
    /// The live session of a gateway, if it has one here.
    pub(crate) fn get(&self, gateway: GatewayId) -> Option<SessionHandle> {
        lock(&self.live).get(&gateway).cloned()
    }

    /// Every live session.
    pub(crate) fn live(&self) -> Vec<SessionHandle> {
        lock(&self.live).values().cloned().collect()
    }

    /// How many gateways have a live session here.
    pub(crate) fn live_count(&self) -> usize {
        lock(&self.live).len()
    }

    /// A frame arrived on `gateway`'s session stream of `epoch`.
    pub(crate) fn touch(&self, gateway: GatewayId, epoch: Epoch) {
        lock(&self.leases).heartbeat(gateway, epoch, Instant::now());
    }

    /// The sessions of a group's table whose lease ran out at `now` (see `leases.rs`).
    pub(crate) fn due(
        &self,
        led_since: Instant,
        table: &[HeldSession],
        now: Instant,
    ) -> Vec<HeldSession> {
        let live: HashMap<GatewayId, Epoch> = lock(&self.live)
            .values()
            .map(|h| (h.gateway, h.epoch))
            .collect();
        lock(&self.leases).due(led_since, table, |g| live.get(&g).copied(), now)
    }

    /// The expiry of `gateway`'s session `epoch` committed.
    pub(crate) fn expired(&self, gateway: GatewayId, epoch: Epoch) {
        lock(&self.leases).expired(gateway, epoch);
    }

    /// A new session stream of `gateway` with `epoch` and `lease`, with its delivery queue.
    pub(crate) fn open(
        &self,
        gateway: GatewayId,
        epoch: Epoch,
        lease: Duration,
        acked: watch::Receiver<u64>,
    ) -> (SessionHandle, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel::<Bytes>(SESSION_QUEUE_FRAMES);
        let handle = SessionHandle {
            gateway,
            epoch,
            lease,
            instance: self.next_instance.fetch_add(1, Ordering::Relaxed),
            queue: Arc::new(Mutex::new(SessionQueue { next_dseq: 0, tx })),
            acked,
            superseded: Default::default(),
        };
        self.touch(gateway, epoch);
        lock(&self.live).insert(gateway, handle.clone());
        (handle, rx)
    }

    /// The session stream `handle` ended.
    pub(crate) fn close(&self, handle: &SessionHandle) {
        let mut live = lock(&self.live);
        if live
            .get(&handle.gateway)
            .is_some_and(|h| h.instance == handle.instance)
        {
            live.remove(&handle.gateway);
        }
    }
}
