//! One connection's bounded send queue and the slow-consumer policy: plain data behind a
//! mutex, shared by the fan-out and the publish tasks (producers) and the connection task
//! (consumer). Frames are final socket bytes, usually shared with every other subscriber.
//!
//! ```text
//!   fan-out ──push_message──▶ ┌──────────────────────────────┐ ──take()──▶ session write list
//!   acks, errors ─push_reply─▶│ frames (messages + bytes     │   (swaps the whole deque, O(1))
//!                             │ bounded), close request      │ ──take_close()──▶ 1008 close
//!                             └──────────────────────────────┘ ◀──seal()── session closing
//! ```
//!
//! Slow consumers: a message that does not fit is dropped for that connection (counted by the
//! caller). After `drops_before_disconnect` consecutive drops, or a queue full for `grace`, the
//! queue asks the connection to close with 1008 (see `docs/gateway.md`). Replies are never
//! dropped, but a client that lets them pile up past twice the limits is not reading and is
//! closed the same way. The queue's `VecDeque` is released when drained: an idle connection
//! holds no queue memory.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use firetower_client::ws::close_code;

use crate::config::ConnectionLimits;
use crate::locks::lock;

/// Bounds of one connection's send queue and the slow-consumer policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Messages queued at most.
    pub messages: usize,
    /// Bytes queued at most.
    pub bytes: usize,
    /// Consecutive drops that make the connection a slow consumer.
    pub drops_before_disconnect: u32,
    /// Time with a full queue that makes the connection a slow consumer.
    pub grace: Duration,
}

impl QueueLimits {
    /// The queue limits within connection limits.
    pub fn from_limits(l: &ConnectionLimits) -> QueueLimits {
        QueueLimits {
            messages: l.send_queue_messages,
            bytes: l.send_queue_bytes,
            drops_before_disconnect: l.slow_consumer_drops,
            grace: l.slow_consumer_grace,
        }
    }
}

/// What happened to a message offered to a [`SendQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued for sending.
    Queued,
    /// Dropped: the queue is full (or the connection is closing).
    Dropped,
    /// Dropped, and this drop made the connection a slow consumer: it is being closed.
    Disconnect,
}

/// Why the connection must close, decided outside its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloseRequest {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

#[derive(Debug, Default)]
struct QueueState {
    frames: VecDeque<Bytes>,
    bytes: usize,
    consecutive_drops: u32,
    full_since: Option<Instant>,
    close: Option<CloseRequest>,
    closed: bool,
}

/// One connection's bounded send queue, shared by the fan-out (producers) and the connection
/// task (consumer). Frames are final socket bytes, usually shared with every other subscriber.
#[derive(Debug)]
pub struct SendQueue {
    state: Mutex<QueueState>,
    notify: Notify,
    limits: QueueLimits,
}

impl SendQueue {
    /// An empty queue; allocates nothing until the first push.
    pub fn new(limits: QueueLimits) -> SendQueue {
        SendQueue {
            state: Mutex::new(QueueState::default()),
            notify: Notify::new(),
            limits,
        }
    }

    /// Messages that fit before the queue is full (by count; bytes may run out first).
    pub(crate) fn free_messages(&self) -> usize {
        let s = lock(&self.state);
        if s.closed || s.close.is_some() {
            return 0;
        }
        self.limits.messages.saturating_sub(s.frames.len())
    }

    /// True once the connection is closing or closed: nothing more will be sent.
    pub(crate) fn is_closed(&self) -> bool {
        let s = lock(&self.state);
        s.closed || s.close.is_some()
    }

    /// Offer a message (droppable under the slow-consumer policy).
    pub fn push_message(&self, frame: Bytes, now: Instant) -> PushOutcome {
        let mut s = lock(&self.state);
        if s.closed || s.close.is_some() {
            return PushOutcome::Dropped;
        }
        let fits =
            s.frames.len() < self.limits.messages && s.bytes + frame.len() <= self.limits.bytes;
        if fits {
            s.consecutive_drops = 0;
            s.full_since = None;
            s.bytes += frame.len();
            s.frames.push_back(frame);
            let first = s.frames.len() == 1;
            drop(s);
            if first {
                self.notify.notify_one();
            }
            return PushOutcome::Queued;
        }
        s.consecutive_drops += 1;
        let full_since = *s.full_since.get_or_insert(now);
        if s.consecutive_drops >= self.limits.drops_before_disconnect
            || now.duration_since(full_since) >= self.limits.grace
        {
            s.close = Some(CloseRequest {
                code: close_code::POLICY_VIOLATION,
                reason: "slow consumer",
            });
            drop(s);
            self.notify.notify_one();
            return PushOutcome::Disconnect;
        }
        PushOutcome::Dropped
    }

    /// Queue a reply (ack, error, pong): never dropped, but a client that lets replies pile up
    /// past twice the queue's limits is not reading and gets closed. Returns false then.
    pub(crate) fn push_reply(&self, frame: Bytes) -> bool {
        let mut s = lock(&self.state);
        if s.closed || s.close.is_some() {
            return false;
        }
        if s.frames.len() >= 2 * self.limits.messages
            || s.bytes + frame.len() > 2 * self.limits.bytes
        {
            s.close = Some(CloseRequest {
                code: close_code::POLICY_VIOLATION,
                reason: "replies not read",
            });
            drop(s);
            self.notify.notify_one();
            return false;
        }
        s.bytes += frame.len();
        s.frames.push_back(frame);
        drop(s);
        self.notify.notify_one();
        true
    }

    /// Close the connection from outside (a kick, a ban, an expired token seen elsewhere):
    /// what is queued is dropped and the close frame is written next. A close already
    /// requested, or a queue already sealed, stays as it is.
    pub(crate) fn request_close(&self, code: u16, reason: &'static str) {
        let mut s = lock(&self.state);
        if s.closed || s.close.is_some() {
            return;
        }
        s.close = Some(CloseRequest { code, reason });
        drop(s);
        self.notify.notify_one();
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        lock(&self.state).frames.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frames or a close request wait for the connection task.
    pub(crate) fn has_work(&self) -> bool {
        let s = lock(&self.state);
        !s.frames.is_empty() || s.close.is_some()
    }

    /// Resolves once something was queued (or a waiter was woken) since the last time.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// Wake the connection task even though nothing was queued (it may wait for a slot).
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }

    /// A close decided outside the connection task, if any: the queue is sealed and emptied.
    pub(crate) fn take_close(&self) -> Option<CloseRequest> {
        let mut s = lock(&self.state);
        let close = s.close.take()?;
        s.closed = true;
        s.frames = VecDeque::new();
        s.bytes = 0;
        Some(close)
    }

    /// Take every queued frame (swapping the deque out), or the close request if any.
    pub(crate) fn take(&self, into: &mut VecDeque<Bytes>) -> Option<CloseRequest> {
        let mut s = lock(&self.state);
        if s.close.is_some() {
            drop(s);
            return self.take_close();
        }
        if into.is_empty() {
            std::mem::swap(into, &mut s.frames);
        } else {
            into.extend(s.frames.drain(..));
            if s.frames.capacity() > 16 {
                s.frames = VecDeque::new();
            }
        }
        s.bytes = 0;
        None
    }

    /// Stop accepting frames; return what was still queued. A close request not taken yet is
    /// void: the connection is closing already (left in place it would keep `has_work` true
    /// for the rest of the close, and a later `take_close` would cut the close frame off).
    pub(crate) fn seal(&self, into: &mut VecDeque<Bytes>) {
        let mut s = lock(&self.state);
        s.closed = true;
        s.close = None;
        into.extend(s.frames.drain(..));
        s.frames = VecDeque::new();
        s.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(messages: usize, bytes: usize, drops: u32, grace: Duration) -> QueueLimits {
        QueueLimits {
            messages,
            bytes,
            drops_before_disconnect: drops,
            grace,
        }
    }

    #[test]
    fn queue_drops_then_disconnects_after_consecutive_drops() {
        let q = SendQueue::new(limits(2, 1000, 3, Duration::from_secs(60)));
        let now = Instant::now();
        let f = Bytes::from_static(b"abc");
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Queued);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Queued);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Dropped);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Dropped);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Disconnect);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Dropped);
        let mut out = VecDeque::new();
        assert_eq!(
            q.take(&mut out).map(|c| c.code),
            Some(close_code::POLICY_VIOLATION)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn queue_full_for_the_grace_period_disconnects() {
        let q = SendQueue::new(limits(1, 1000, 1000, Duration::from_secs(5)));
        let t0 = Instant::now();
        let f = Bytes::from_static(b"abc");
        assert_eq!(q.push_message(f.clone(), t0), PushOutcome::Queued);
        assert_eq!(q.push_message(f.clone(), t0), PushOutcome::Dropped);
        assert_eq!(
            q.push_message(f.clone(), t0 + Duration::from_secs(4)),
            PushOutcome::Dropped
        );
        assert_eq!(
            q.push_message(f, t0 + Duration::from_secs(5)),
            PushOutcome::Disconnect
        );
    }

    #[test]
    fn draining_resets_the_drop_count_and_releases_memory() {
        let q = SendQueue::new(limits(2, 6, 2, Duration::from_secs(60)));
        let now = Instant::now();
        let f = Bytes::from_static(b"abc");
        q.push_message(f.clone(), now);
        q.push_message(f.clone(), now);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Dropped);
        let mut out = VecDeque::new();
        assert_eq!(q.take(&mut out), None);
        assert_eq!(out.len(), 2);
        assert_eq!(lock(&q.state).frames.capacity(), 0);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Queued);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Queued);
        assert_eq!(q.push_message(f, now), PushOutcome::Dropped);
    }

    #[test]
    fn sealing_voids_a_close_request_not_taken_yet() {
        let q = SendQueue::new(limits(1, 1000, 1, Duration::from_secs(60)));
        let now = Instant::now();
        let f = Bytes::from_static(b"abc");
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Queued);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Disconnect);
        let mut out = VecDeque::new();
        q.seal(&mut out);
        assert_eq!(out.len(), 1);
        assert!(!q.has_work());
        assert_eq!(q.take_close(), None);
        assert_eq!(q.push_message(f.clone(), now), PushOutcome::Dropped);
        assert!(!q.push_reply(f));
    }
}
