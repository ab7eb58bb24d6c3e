//! The live gateway sessions of a manager: one [`SessionHandle`] per gateway with a session
//! stream here (its delivery queue and its acks), and the [`Leases`] clock that says which
//! sessions recorded in a group's table have gone unheard for too long.
//!
//! ```text
//!   session stream (sessions.rs) ──open (admission rule) / close, heartbeat──▶ SessionTable
//!   publish.rs ──get(gateway).enqueue_delivery / wait_acked──▶ SessionHandle
//!   lease task (sessions.rs) ──due(...) / expired(...)──▶ Leases (sans-I/O, leases.rs)
//! ```
//!
//! **Delivery queues are bounded in bytes.** Each session's queue holds at most
//! [`SESSION_QUEUE_BYTES`] (payloads, headers and a per-frame overhead counted), released as the
//! writer hands frames to QUIC. The payload of a publish is one [`Bytes`] shared by the queues
//! of every gateway it goes to: a queued delivery is its small encoded header plus that
//! shared payload, never a copy (the size counted per session is what the session pins, so the
//! bound holds however the payloads are shared).
//!
//! **A session that stops reading is closed.** A frame that does not fit is refused (the
//! publish that brought it fails for that gateway, as for any undelivered message) and the
//! queue counts as full from then on, until the writer hands a frame to QUIC again. A queue
//! full for longer than [`STALLED_AFTER`] without such progress closes the session at the next
//! frame that does not fit: its stream is reset, its queue freed, and the gateway recovers
//! the usual way (it reopens its session; its lease and `Resync` cover the rest). Why not at
//! once when full: a healthy gateway hit by one burst larger than its queue drains it within
//! moments and should only lose the burst's excess, not its session.
//!
//! **One live session per gateway id; the newest epoch wins** (see [`admit_session`]): a
//! session of a higher epoch (the gateway restarted) or of the same epoch (the same run
//! reconnecting, its old stream not yet known dead) replaces the live one, which is closed;
//! an older epoch than the live one, or than the last one heard from that gateway here, is
//! refused. Epoch 0 is refused (it means "no session" in `Subscribe`), and so is an epoch more
//! than [`MAX_EPOCH_AHEAD`] ahead of this manager's clock: epochs are the gateway's start time
//! in microseconds, and one near `u64::MAX` would lock every later run of the gateway out.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use firetower_link::encode_frame;
use firetower_proto::link::{session_frame, Delivery, SessionFrame};
use firetower_proto::{Epoch, GatewayId, GroupId};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::leases::{HeldSession, Leases};
use crate::locks::lock;

/// Bytes queued for one gateway's session stream before the session counts as stalled and is
/// closed: eight of the largest frames, or tens of thousands of small deliveries.
pub(crate) const SESSION_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// How long a session's queue may stay full without its writer making progress before the
/// session is closed: a gateway that reads at all drains a frame far sooner.
pub(crate) const STALLED_AFTER: Duration = Duration::from_secs(2);

/// What one queued frame costs besides its bytes (the queue slot, the `Bytes` handles), so
/// that a flood of tiny frames is bounded too.
const QUEUED_FRAME_OVERHEAD: usize = 64;

/// How far ahead of this manager's clock a session epoch may be: clocks of gateways and
/// managers differ by far less than a day.
pub(crate) const MAX_EPOCH_AHEAD: Duration = Duration::from_secs(24 * 3600);

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
    /// How full the queue is (see [`SESSION_QUEUE_BYTES`]).
    level: Arc<QueueLevel>,
    /// Cancelled when the session must end: replaced by a newer one, or stalled.
    closed: CancellationToken,
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
    tx: mpsc::UnboundedSender<Outgoing>,
}

/// One frame queued for a session stream: its encoded head and, for a delivery, the payload
/// shared with every other session it goes to. Written as `head` then `payload`.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The length prefix and everything of the frame before the payload (or the whole frame).
    pub head: Bytes,
    /// The payload bytes that end the frame (empty for control frames).
    pub payload: Bytes,
    /// What it counts against [`SESSION_QUEUE_BYTES`].
    cost: usize,
}

/// How full one session's queue is, shared by its handle and its writer.
#[derive(Debug)]
struct QueueLevel {
    /// Bytes queued and not yet handed to QUIC.
    queued: AtomicUsize,
    /// Microseconds after `created` (plus one) when a frame first did not fit since the
    /// writer last made progress; 0 while the queue is not full.
    full_since: AtomicU64,
    created: Instant,
}

impl QueueLevel {
    fn micros_at(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.created).as_micros())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }
}

/// The receiving end of a session's queue, for the stream's writer.
#[derive(Debug)]
pub(crate) struct SessionQueueRx {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    level: Arc<QueueLevel>,
}

impl SessionQueueRx {
    /// The next frame to write; `None` once the session is gone.
    pub(crate) async fn recv(&mut self) -> Option<Outgoing> {
        self.rx.recv().await
    }

    /// The writer handed something else to QUIC (a chunk of the ban list, which does not go
    /// through the queue): the session is reading, whatever the queue holds.
    pub(crate) fn progress(&self) {
        self.level.full_since.store(0, Ordering::Relaxed);
    }

    /// `frame` was handed to QUIC: its bytes no longer count against the queue.
    pub(crate) fn written(&self, frame: &Outgoing) {
        self.level.queued.fetch_sub(frame.cost, Ordering::Relaxed);
        self.level.full_since.store(0, Ordering::Relaxed);
    }
}

/// Why a delivery could not be queued.
#[derive(Debug)]
pub(crate) enum EnqueueError {
    /// The session stream is gone.
    Closed,
    /// The queue is full; the session stays (the gateway may be catching up).
    Full,
    /// The queue stayed full too long; the session is being closed.
    Stalled,
}

/// Why a gateway may not open a session here (answered on its stream with this code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OpenRefusal {
    /// Epoch 0 means "no session".
    #[error("session epoch 0 is reserved; a gateway's epoch is its start time in microseconds")]
    ZeroEpoch,
    /// The epoch lies implausibly far in the future.
    #[error(
        "session epoch {epoch} is more than a day ahead of this manager's clock (at most \
         {limit}); check the clocks of the gateway and the manager"
    )]
    FromTheFuture {
        /// The epoch asked for.
        epoch: Epoch,
        /// The largest accepted now.
        limit: Epoch,
    },
    /// A newer run of the gateway has (or had) a session here.
    #[error(
        "session epoch {epoch} is older than epoch {newer} of the same gateway known here; \
         an earlier run of the gateway may not take over a later one's session"
    )]
    Superseded {
        /// The epoch asked for.
        epoch: Epoch,
        /// The newer one known.
        newer: Epoch,
    },
}

impl OpenRefusal {
    /// The failure code the gateway sees.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            OpenRefusal::ZeroEpoch | OpenRefusal::FromTheFuture { .. } => "invalid_epoch",
            OpenRefusal::Superseded { .. } => "stale_epoch",
        }
    }
}

/// Whether a gateway may open a session of `epoch` here (the rule in the module doc), given
/// the epoch of its live session here, the newest epoch heard from it here (and recorded in
/// the tables of groups led here), and the wall clock in microseconds since the Unix epoch.
pub(crate) fn admit_session(
    epoch: Epoch,
    newest_known: Option<Epoch>,
    now_micros: u64,
) -> Result<(), OpenRefusal> {
    if epoch.get() == 0 {
        return Err(OpenRefusal::ZeroEpoch);
    }
    let limit = Epoch(now_micros.saturating_add(MAX_EPOCH_AHEAD.as_micros() as u64));
    if epoch > limit {
        return Err(OpenRefusal::FromTheFuture { epoch, limit });
    }
    match newest_known {
        Some(newer) if newer > epoch => Err(OpenRefusal::Superseded { epoch, newer }),
        _ => Ok(()),
    }
}

/// Whether a `Subscribe` of session `requested` (0: the request names no session) may commit,
/// given the epoch of the gateway's live session here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscribeAdmission {
    /// The gateway has a live session here that the request belongs to.
    Admitted,
    /// The request comes from an earlier run than the live session: refused (`stale_session`).
    Stale {
        /// The live session's epoch.
        live: Epoch,
    },
    /// No session here (yet): the request may wait for one, then is refused (`no_session`).
    NoSession,
}

/// The subscribe rule: a subscription is committed only for a gateway with a live session
/// on the group's leader, and only in that session (or naming none).
pub(crate) fn admit_subscribe(requested: Epoch, live: Option<Epoch>) -> SubscribeAdmission {
    match live {
        Some(live) if requested.get() == 0 || requested == live => SubscribeAdmission::Admitted,
        Some(live) if requested < live => SubscribeAdmission::Stale { live },
        // Newer than the live one: the gateway restarted and its new session is on its way.
        Some(_) | None => SubscribeAdmission::NoSession,
    }
}

/// Microseconds since the Unix epoch on this manager's clock (0 if it is set before 1970).
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The frame of one delivery, as its head and the shared payload: the same bytes as
/// `encode_frame(&SessionFrame { Delivery { data: payload, .. } })` up to field order (the
/// payload field is written last so that it can be the shared buffer itself).
pub(crate) fn delivery_frame(
    topic: &str,
    payload: &Bytes,
    json: bool,
    term: u64,
    seq: u64,
    dseq: u64,
) -> (Bytes, Bytes) {
    history_delivery_frame(topic, payload, json, term, seq, dseq, 0, "")
}

/// [`delivery_frame`] of a history topic's message: with its offset and the topic's epoch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn history_delivery_frame(
    topic: &str,
    payload: &Bytes,
    json: bool,
    term: u64,
    seq: u64,
    dseq: u64,
    offset: u64,
    epoch: &str,
) -> (Bytes, Bytes) {
    use prost::encoding::encode_varint;
    /// `SessionFrame.delivery` and `Delivery.data`: field 2, length-delimited.
    const FIELD_2_BYTES: u8 = (2 << 3) | 2;
    let without_data = Delivery {
        topic: topic.to_string(),
        data: Vec::new(),
        json,
        term,
        seq,
        dseq,
        offset,
        epoch: epoch.to_string(),
    };
    let data_len = payload.len() as u64;
    let (inner, body) = delivery_lens(&without_data, payload.len());
    let mut head = BytesMut::with_capacity(4 + body - payload.len());
    // The body fits the u32 prefix: publishes are refused before they make a delivery over
    // MAX_LINK_FRAME_BYTES (publish.rs).
    head.put_u32(body as u32);
    head.put_u8(FIELD_2_BYTES);
    encode_varint(inner as u64, &mut head);
    // Encoding into a BytesMut cannot run out of space: it grows.
    let _ = without_data.encode(&mut head);
    head.put_u8(FIELD_2_BYTES);
    encode_varint(data_len, &mut head);
    (head.freeze(), payload.clone())
}

/// The lengths of a delivery's message and of its frame body, for a `payload_len`-byte
/// payload and the other fields of `without_data`.
fn delivery_lens(without_data: &Delivery, payload_len: usize) -> (usize, usize) {
    use prost::encoding::encoded_len_varint;
    let inner =
        without_data.encoded_len() + 1 + encoded_len_varint(payload_len as u64) + payload_len;
    (inner, 1 + encoded_len_varint(inner as u64) + inner)
}

/// The largest body length of a delivery frame of a `payload_len`-byte payload to `topic`
/// (stamps and dseq at their longest), for limits.
pub(crate) fn delivery_body_len(topic: &str, payload_len: usize) -> usize {
    let longest = Delivery {
        topic: topic.to_string(),
        data: Vec::new(),
        json: true,
        term: u64::MAX,
        seq: u64::MAX,
        dseq: u64::MAX,
        offset: u64::MAX,
        // Epochs are `{term}-{index}`: at most 41 characters.
        epoch: "0".repeat(41),
    };
    delivery_lens(&longest, payload_len).1
}

impl SessionHandle {
    /// Queue a delivery; returns its dseq for [`SessionHandle::wait_acked`]. A delivery that
    /// does not fit is refused, and closes a session whose queue stayed full too long (see the
    /// module doc).
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
        let (head, payload) = delivery_frame(topic, data, json, term, seq, dseq);
        self.push(&q, head, payload)?;
        q.next_dseq = dseq;
        Ok(dseq)
    }

    /// [`SessionHandle::enqueue_delivery`] of a history topic's message.
    pub(crate) fn enqueue_history(
        &self,
        topic: &str,
        data: &Bytes,
        json: bool,
        term: u64,
        offset: u64,
        epoch: &str,
    ) -> Result<u64, EnqueueError> {
        let mut q = lock(&self.queue);
        let dseq = q.next_dseq + 1;
        let (head, payload) =
            history_delivery_frame(topic, data, json, term, offset, dseq, offset, epoch);
        self.push(&q, head, payload)?;
        q.next_dseq = dseq;
        Ok(dseq)
    }

    /// Queue a control frame; false when the session is gone or was closed for not reading.
    pub(crate) fn send_control(&self, frame: session_frame::Frame) -> bool {
        let q = lock(&self.queue);
        let head = Bytes::from(encode_frame(&SessionFrame { frame: Some(frame) }));
        self.push(&q, head, Bytes::new()).is_ok()
    }

    fn push(&self, q: &SessionQueue, head: Bytes, payload: Bytes) -> Result<(), EnqueueError> {
        if self.closed.is_cancelled() {
            return Err(EnqueueError::Closed);
        }
        let cost = head.len() + payload.len() + QUEUED_FRAME_OVERHEAD;
        let level = &self.level;
        let fits = level
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                let after = queued.checked_add(cost)?;
                (after <= SESSION_QUEUE_BYTES).then_some(after)
            })
            .is_ok();
        if !fits {
            let now = level.micros_at(Instant::now());
            let since = match level.full_since.load(Ordering::Relaxed) {
                0 => {
                    level.full_since.store(now, Ordering::Relaxed);
                    now
                }
                since => since,
            };
            if now.saturating_sub(since) > STALLED_AFTER.as_micros() as u64 {
                self.closed.cancel();
                return Err(EnqueueError::Stalled);
            }
            return Err(EnqueueError::Full);
        }
        if q.tx
            .send(Outgoing {
                head,
                payload,
                cost,
            })
            .is_err()
        {
            level.queued.fetch_sub(cost, Ordering::Relaxed);
            return Err(EnqueueError::Closed);
        }
        Ok(())
    }

    /// Bytes queued and not yet handed to QUIC.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.level.queued.load(Ordering::Relaxed)
    }

    /// Resolves when the session must end (replaced, or stalled).
    pub(crate) async fn closing(&self) {
        self.closed.cancelled().await
    }

    /// Wait until the gateway acknowledged `dseq` and say what it did with it.
    pub(crate) async fn wait_acked(&self, dseq: u64, timeout: Duration) -> DeliveryOutcome {
        let mut acked = self.acked.clone();
        let closed = self.closed.clone();
        let reached = tokio::time::timeout(timeout, async {
            tokio::select! {
                r = acked.wait_for(|v| *v >= dseq) => r.is_ok(),
                _ = closed.cancelled() => false,
            }
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

    /// The orphans of `group` due at `now` (see `leases.rs`).
    pub(crate) fn orphans_due(
        &self,
        group: GroupId,
        led_since: Instant,
        orphans: &[GatewayId],
        lease: Duration,
        now: Instant,
    ) -> Vec<GatewayId> {
        lock(&self.leases).orphans_due(group.get(), led_since, orphans, lease, now)
    }

    /// The expiry of `gateway`'s session `epoch` committed.
    pub(crate) fn expired(&self, gateway: GatewayId, epoch: Epoch) {
        lock(&self.leases).expired(gateway, epoch);
    }

    /// A new session stream of `gateway` with `epoch` and `lease`, with its delivery queue,
    /// if the admission rule (module doc) lets it in; `recorded` is the newest epoch of the
    /// gateway recorded in the tables of groups led here. A live session it replaces is told
    /// to close.
    pub(crate) fn open(
        &self,
        gateway: GatewayId,
        epoch: Epoch,
        lease: Duration,
        recorded: Option<Epoch>,
        acked: watch::Receiver<u64>,
    ) -> Result<(SessionHandle, SessionQueueRx), OpenRefusal> {
        let mut live = lock(&self.live);
        let heard = lock(&self.leases).latest_epoch(gateway);
        let newest_known = [live.get(&gateway).map(|h| h.epoch), heard, recorded]
            .into_iter()
            .flatten()
            .max();
        admit_session(epoch, newest_known, now_micros())?;
        let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
        let level = Arc::new(QueueLevel {
            queued: AtomicUsize::new(0),
            full_since: AtomicU64::new(0),
            created: Instant::now(),
        });
        let handle = SessionHandle {
            gateway,
            epoch,
            lease,
            instance: self.next_instance.fetch_add(1, Ordering::Relaxed),
            queue: Arc::new(Mutex::new(SessionQueue { next_dseq: 0, tx })),
            level: level.clone(),
            closed: CancellationToken::new(),
            acked,
            superseded: Default::default(),
        };
        self.touch(gateway, epoch);
        if let Some(replaced) = live.insert(gateway, handle.clone()) {
            replaced.closed.cancel();
        }
        Ok((handle, SessionQueueRx { rx, level }))
    }

    /// Bytes queued for every live session, not yet handed to QUIC.
    pub(crate) fn queued_bytes(&self) -> usize {
        lock(&self.live)
            .values()
            .map(SessionHandle::queued_bytes)
            .sum()
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
        handle.closed.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firetower_link::decode_frame;
    use proptest::prelude::*;

    fn joined(head: &Bytes, payload: &Bytes) -> Vec<u8> {
        let mut frame = head.to_vec();
        frame.extend_from_slice(payload);
        frame
    }

    proptest! {
        #[test]
        fn a_delivery_frame_decodes_as_the_delivery(
            topic in ".{0,40}",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            json: bool,
            term: u64,
            seq: u64,
            dseq: u64,
        ) {
            let payload = Bytes::from(payload);
            let (head, shared) = delivery_frame(&topic, &payload, json, term, seq, dseq);
            // The payload is the caller's buffer, not a copy.
            prop_assert_eq!(shared.as_ptr(), payload.as_ptr());
            let frame = joined(&head, &shared);
            let decoded: SessionFrame = decode_frame(&frame).unwrap();
            let want = SessionFrame {
                frame: Some(session_frame::Frame::Delivery(Delivery {
                    topic: topic.clone(),
                    data: payload.to_vec(),
                    json,
                    term,
                    seq,
                    dseq,
                    offset: 0,
                    epoch: String::new(),
                })),
            };
            prop_assert_eq!(decoded, want);
            prop_assert!(frame.len() - 4 <= delivery_body_len(&topic, payload.len()));
        }
    }

    #[test]
    fn session_admission_follows_the_newest_epoch() {
        let now = 1_800_000_000_000_000;
        assert_eq!(
            admit_session(Epoch(0), None, now),
            Err(OpenRefusal::ZeroEpoch)
        );
        assert!(matches!(
            admit_session(Epoch(u64::MAX), None, now),
            Err(OpenRefusal::FromTheFuture { .. })
        ));
        assert!(matches!(
            admit_session(Epoch(u64::MAX), None, u64::MAX),
            Ok(())
        ));
        assert_eq!(admit_session(Epoch(5), None, now), Ok(()));
        assert_eq!(admit_session(Epoch(5), Some(Epoch(5)), now), Ok(()));
        assert_eq!(admit_session(Epoch(6), Some(Epoch(5)), now), Ok(()));
        assert_eq!(
            admit_session(Epoch(4), Some(Epoch(5)), now),
            Err(OpenRefusal::Superseded {
                epoch: Epoch(4),
                newer: Epoch(5)
            })
        );
    }

    #[test]
    fn subscribe_admission_needs_the_live_session() {
        use SubscribeAdmission::*;
        assert_eq!(admit_subscribe(Epoch(3), None), NoSession);
        assert_eq!(admit_subscribe(Epoch(0), None), NoSession);
        assert_eq!(admit_subscribe(Epoch(0), Some(Epoch(3))), Admitted);
        assert_eq!(admit_subscribe(Epoch(3), Some(Epoch(3))), Admitted);
        assert_eq!(
            admit_subscribe(Epoch(2), Some(Epoch(3))),
            Stale { live: Epoch(3) }
        );
        assert_eq!(admit_subscribe(Epoch(4), Some(Epoch(3))), NoSession);
    }

    fn open(
        table: &SessionTable,
        gateway: u64,
        epoch: u64,
    ) -> Result<(SessionHandle, SessionQueueRx), OpenRefusal> {
        let (_tx, rx) = watch::channel(0);
        table.open(
            GatewayId(gateway),
            Epoch(epoch),
            Duration::from_secs(5),
            None,
            rx,
        )
    }

    #[test]
    fn a_newer_or_equal_epoch_replaces_the_live_session_and_an_older_one_is_refused() {
        let table = SessionTable::default();
        let (first, _rx1) = open(&table, 7, 10).unwrap();
        // The same run reconnecting: the old stream is told to close.
        let (second, _rx2) = open(&table, 7, 10).unwrap();
        assert!(first.closed.is_cancelled());
        assert!(!second.closed.is_cancelled());
        // An earlier run (or a stranger with a small epoch): refused, the live one stays.
        assert!(matches!(
            open(&table, 7, 9),
            Err(OpenRefusal::Superseded { .. })
        ));
        assert_eq!(
            table.get(GatewayId(7)).map(|h| h.instance),
            Some(second.instance)
        );
        // A restart.
        let (third, _rx3) = open(&table, 7, 11).unwrap();
        assert!(second.closed.is_cancelled());
        assert_eq!(table.get(GatewayId(7)).map(|h| h.epoch), Some(third.epoch));
        // The old stream ending does not remove the new session.
        table.close(&second);
        assert!(table.get(GatewayId(7)).is_some());
        // Even once it is gone, the epoch heard last keeps older runs out.
        table.close(&third);
        assert!(table.get(GatewayId(7)).is_none());
        assert!(open(&table, 7, 10).is_err());
    }

    #[tokio::test]
    async fn a_session_that_does_not_read_is_closed_with_its_queue_bounded() {
        let table = SessionTable::default();
        let (stalled, _never_read) = open(&table, 1, 1).unwrap();
        let (healthy, mut reader) = open(&table, 2, 1).unwrap();
        let payload = Bytes::from(vec![0u8; 64 * 1024]);
        let mut queued_max = 0;
        let mut delivered = 0;
        let mut refused = 0;
        let started = Instant::now();
        let outcome = loop {
            match stalled.enqueue_delivery("t", &payload, false, 1, delivered + 1) {
                Ok(_) => delivered += 1,
                Err(EnqueueError::Full) => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => break e,
            }
            queued_max = queued_max.max(table.queued_bytes());
            // The healthy session gets the same message and drains it.
            healthy
                .enqueue_delivery("t", &payload, false, 1, delivered)
                .expect("a session that reads keeps receiving");
            let frame = reader.recv().await.expect("queued");
            reader.written(&frame);
            assert!(started.elapsed() < STALLED_AFTER * 3, "never closed");
        };
        assert!(matches!(outcome, EnqueueError::Stalled));
        assert!(refused >= 1, "closed before it was full");
        assert!(started.elapsed() >= STALLED_AFTER);
        assert!(stalled.queued_bytes() <= SESSION_QUEUE_BYTES);
        assert!(queued_max <= SESSION_QUEUE_BYTES + 64 * 1024 + 1024);
        // Closed: nothing more is queued, and its stream is told to end.
        assert!(stalled.closed.is_cancelled());
        assert!(matches!(
            stalled.enqueue_delivery("t", &payload, false, 1, 999),
            Err(EnqueueError::Closed)
        ));
        tokio::time::timeout(Duration::from_secs(1), stalled.closing())
            .await
            .expect("closing resolves");
        // The other session is untouched.
        assert!(healthy
            .enqueue_delivery("t", &payload, false, 1, 1000)
            .is_ok());
        println!(
            "stalled session: {delivered} deliveries of 64 KiB queued, {} bytes at most \
             (bound {SESSION_QUEUE_BYTES}), {refused} refused while full, then closed",
            stalled.queued_bytes()
        );
    }

    #[test]
    fn a_full_queue_that_drains_keeps_its_session() {
        let table = SessionTable::default();
        let (session, mut rx) = open(&table, 3, 1).unwrap();
        let payload = Bytes::from(vec![0u8; 1024 * 1024]);
        while session.enqueue_delivery("t", &payload, false, 1, 1).is_ok() {}
        // Refused while full...
        assert!(matches!(
            session.enqueue_delivery("t", &payload, false, 1, 1),
            Err(EnqueueError::Full)
        ));
        // ...and accepted again once the writer made progress.
        let frame = rx.rx.try_recv().expect("queued");
        rx.written(&frame);
        assert!(session.enqueue_delivery("t", &payload, false, 1, 1).is_ok());
        assert!(!session.closed.is_cancelled());
    }
}
