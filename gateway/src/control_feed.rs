//! The operator controls as they reach a gateway from its manager sessions, made into
//! [`ControlEvent`]s: bans assembled from chunks and kept at the newest version, kicks acted on
//! once, connection queries passed on; delivered on a bounded channel by a task of their own,
//! so that no session reader ever waits for the gateway to take them.
//!
//! ```text
//!   session (manager A) ─ Bans{version, offset, total, chunk} ─▶ BanChunks (per session) ─┐
//!   session (manager B) ─ Bans ...                           ─▶ BanChunks               ─┤
//!                       ─ Kick{seq}, ConnectionsQuery ──────────────────────────────────┐ │
//!                                                                                       ▼ ▼
//!     ControlFeed: bans kept only when newer than the version held (every manager counts the
//!     same versions, group 0's); kicks by seq, once; pending: the newest ban list (coalesced)
//!     and up to MAX_PENDING_EVENTS kicks and queries (the oldest dropped, counted)
//!                                      │ Notify
//!                                      ▼
//!     forwarder task ─▶ mpsc::Sender<ControlEvent> (bounded) ─▶ the gateway's connections
//! ```
//!
//! Everything here is network input: a chunk out of order, a total above [`MAX_BANS`], a ban
//! that does not parse, an empty or overlong user are dropped and counted, never a panic.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use firetower_proto::Ban;
use tokio::sync::{mpsc, Notify};

use crate::control::{ControlEvent, ControlReceiver};

/// The most bans a list may hold: what group 0 keeps at most (`firetower_store::MAX_BANS`;
/// the gateway does not link the store).
pub(crate) const MAX_BANS: usize = 100_000;
/// The longest user id in a kick or a query (a ban's user has the same limit).
const MAX_USER_BYTES: usize = 256;
/// Kicks and queries waiting for the gateway; beyond, the oldest is dropped.
const MAX_PENDING_EVENTS: usize = 1_024;
/// Kick seqs remembered to act on each once (every manager sends each kick).
const KICKS_REMEMBERED: usize = 4_096;
/// A kick whose `at_ms` is within this of the gateway's clock is live: it applies to every
/// connection open when it arrives, whatever the clocks say (a gateway clock ahead of the
/// manager's would otherwise spare connections opened just before the kick).
const LIVE_KICK_MS: u64 = 60_000;
/// Capacity of the channel to the gateway.
pub(crate) const CONTROL_CHANNEL: usize = 64;

/// Why a control frame from a manager was dropped (`firetower_gateway_link_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ControlRejected {
    /// A ban chunk that does not continue the list being assembled, or a total too large.
    BanChunk,
    /// A ban that is not the JSON of a valid ban.
    BanInvalid,
    /// A kick or query with an empty or overlong user.
    UserInvalid,
    /// A kick or query dropped because the gateway did not take events fast enough.
    Overflow,
}

impl ControlRejected {
    pub(crate) const ALL: [ControlRejected; 4] = [
        ControlRejected::BanChunk,
        ControlRejected::BanInvalid,
        ControlRejected::UserInvalid,
        ControlRejected::Overflow,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ControlRejected::BanChunk => "control_ban_chunk",
            ControlRejected::BanInvalid => "control_ban_invalid",
            ControlRejected::UserInvalid => "control_user_invalid",
            ControlRejected::Overflow => "control_overflow",
        }
    }
}

/// A ban list being received on one session, chunk by chunk.
#[derive(Debug, Default)]
pub(crate) struct BanChunks {
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    version: u64,
    total: usize,
    /// Bans received so far, valid or not (the next chunk's offset).
    received: usize,
    bans: Vec<Ban>,
}

/// What one chunk did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChunkOutcome {
    /// More chunks to come.
    Partial,
    /// The list of `version` is complete.
    Complete(u64, Vec<Ban>),
    /// The chunk was dropped (and any list being assembled with it).
    Rejected,
}

impl BanChunks {
    /// Take one chunk; `invalid` is called for each ban that does not parse.
    pub(crate) fn offer(
        &mut self,
        version: u64,
        offset: u32,
        total: u32,
        bans: Vec<String>,
        mut invalid: impl FnMut(),
    ) -> ChunkOutcome {
        let (offset, total) = (offset as usize, total as usize);
        if offset == 0 {
            if total > MAX_BANS {
                self.pending = None;
                return ChunkOutcome::Rejected;
            }
            self.pending = Some(Pending {
                version,
                total,
                received: 0,
                bans: Vec::new(),
            });
        }
        let Some(p) = self.pending.as_mut() else {
            return ChunkOutcome::Rejected;
        };
        if p.version != version
            || p.total != total
            || p.received != offset
            || bans.len() > total - p.received
        {
            self.pending = None;
            return ChunkOutcome::Rejected;
        }
        p.received += bans.len();
        for text in bans {
            match serde_json::from_str::<Ban>(&text) {
                Ok(ban) if ban.target.validate().is_ok() => p.bans.push(ban),
                _ => invalid(),
            }
        }
        if p.received < p.total {
            return ChunkOutcome::Partial;
        }
        let done = self.pending.take().map(|p| (p.version, p.bans));
        match done {
            Some((version, bans)) => ChunkOutcome::Complete(version, bans),
            None => ChunkOutcome::Rejected,
        }
    }
}

/// The controls the gateway has not taken yet.
#[derive(Debug, Default)]
struct FeedState {
    /// Version of the newest ban list accepted, once one was.
    bans_version: Option<u64>,
    /// The newest list, until the forwarder passes it on (a newer one replaces it).
    bans_pending: Option<Arc<Vec<Ban>>>,
    events: VecDeque<ControlEvent>,
    kicks_seen: HashSet<u64>,
    kicks_order: VecDeque<u64>,
}

/// The gateway's side of the operator controls, shared by its sessions. See the module doc.
#[derive(Debug)]
pub(crate) struct ControlFeed {
    state: Mutex<FeedState>,
    /// Wakes the forwarder (shared with it, so it waits without keeping the feed alive).
    notify: Arc<Notify>,
    receiver: Mutex<Option<ControlReceiver>>,
    rejected: [AtomicU64; 4],
}

impl ControlFeed {
    /// A feed and its forwarder task (which ends when the gateway drops the receiver).
    pub(crate) fn start() -> Arc<ControlFeed> {
        let (tx, rx) = mpsc::channel(CONTROL_CHANNEL);
        let feed = Arc::new(ControlFeed {
            state: Mutex::new(FeedState::default()),
            notify: Arc::new(Notify::new()),
            receiver: Mutex::new(Some(rx)),
            rejected: Default::default(),
        });
        let weak = Arc::downgrade(&feed);
        tokio::spawn(async move {
            loop {
                let next = {
                    let Some(feed) = weak.upgrade() else { return };
                    let next = feed.next_event();
                    match next {
                        Some(event) => event,
                        None => {
                            let notify = Arc::clone(&feed.notify);
                            drop(feed);
                            // A notice sent meanwhile is kept as a permit: nothing is missed.
                            notify.notified().await;
                            continue;
                        }
                    }
                };
                if tx.send(next).await.is_err() {
                    return;
                }
            }
        });
        feed
    }

    /// The receiver, once.
    pub(crate) fn take_receiver(&self) -> Option<ControlReceiver> {
        self.receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_event(&self) -> Option<ControlEvent> {
        let mut state = self.state();
        if let Some(bans) = state.bans_pending.take() {
            return Some(ControlEvent::Bans(bans));
        }
        state.events.pop_front()
    }

    /// Count a refusal.
    pub(crate) fn reject(&self, why: ControlRejected) {
        let i = ControlRejected::ALL
            .iter()
            .position(|r| *r == why)
            .unwrap_or(0);
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals so far, by reason.
    pub(crate) fn rejections(&self) -> Vec<(&'static str, u64)> {
        ControlRejected::ALL
            .iter()
            .zip(&self.rejected)
            .map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed)))
            .collect()
    }

    /// The version of the newest ban list taken in, if any.
    pub(crate) fn bans_version(&self) -> Option<u64> {
        self.state().bans_version
    }

    /// A complete ban list of `version`: kept and passed on when newer than the one held.
    pub(crate) fn offer_bans(&self, version: u64, bans: Vec<Ban>) -> bool {
        {
            let mut state = self.state();
            if state.bans_version.is_some_and(|held| version <= held) {
                return false;
            }
            state.bans_version = Some(version);
            state.bans_pending = Some(Arc::new(bans));
        }
        self.notify.notify_one();
        true
    }

    /// A kick: passed on the first time its `seq` is seen. `now_ms` is the gateway's clock.
    pub(crate) fn offer_kick(&self, seq: u64, user: String, at_ms: u64, now_ms: u64) -> bool {
        if !valid_user(&user) {
            self.reject(ControlRejected::UserInvalid);
            return false;
        }
        let at_ms = if at_ms.abs_diff(now_ms) <= LIVE_KICK_MS {
            at_ms.max(now_ms)
        } else {
            at_ms
        };
        {
            let mut state = self.state();
            if !state.kicks_seen.insert(seq) {
                return false;
            }
            state.kicks_order.push_back(seq);
            if state.kicks_order.len() > KICKS_REMEMBERED {
                if let Some(old) = state.kicks_order.pop_front() {
                    state.kicks_seen.remove(&old);
                }
            }
            self.push_event(&mut state, ControlEvent::Kick { user, at_ms });
        }
        self.notify.notify_one();
        true
    }

    /// A join or leave of `topic` (from a trusted session). False when refused.
    pub(crate) fn offer_presence(&self, topic: String, user: String, joined: bool) -> bool {
        if !valid_user(&user) || firetower_proto::validate_topic(&topic).is_err() {
            self.reject(ControlRejected::UserInvalid);
            return false;
        }
        {
            let mut state = self.state();
            self.push_event(
                &mut state,
                ControlEvent::Presence {
                    topic: Arc::from(topic),
                    user,
                    joined,
                },
            );
        }
        self.notify.notify_one();
        true
    }

    /// A connections query; the answer comes on `reply`. False when refused (bad user).
    pub(crate) fn offer_query(
        &self,
        user: String,
        reply: tokio::sync::oneshot::Sender<Vec<crate::control::ConnectionInfo>>,
    ) -> bool {
        if !valid_user(&user) {
            self.reject(ControlRejected::UserInvalid);
            return false;
        }
        {
            let mut state = self.state();
            self.push_event(&mut state, ControlEvent::Connections { user, reply });
        }
        self.notify.notify_one();
        true
    }

    fn push_event(&self, state: &mut FeedState, event: ControlEvent) {
        if state.events.len() >= MAX_PENDING_EVENTS {
            state.events.pop_front();
            self.reject(ControlRejected::Overflow);
        }
        state.events.push_back(event);
    }
}

impl Drop for ControlFeed {
    fn drop(&mut self) {
        // The forwarder wakes, finds the feed gone and ends.
        self.notify.notify_one();
    }
}

fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= MAX_USER_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use firetower_proto::BanTarget;

    fn ban(id: u64) -> Ban {
        Ban {
            id,
            target: BanTarget::User(format!("u{id}")),
            reason: String::new(),
            created_ms: 1,
            expires_ms: None,
        }
    }

    fn json(id: u64) -> String {
        serde_json::to_string(&ban(id)).unwrap()
    }

    #[test]
    fn chunks_assemble_in_order_and_anything_else_is_refused() {
        let mut chunks = BanChunks::default();
        let mut bad = 0;
        assert_eq!(
            chunks.offer(3, 0, 3, vec![json(1), json(2)], || bad += 1),
            ChunkOutcome::Partial
        );
        assert_eq!(
            chunks.offer(3, 2, 3, vec!["{nope".into()], || bad += 1),
            ChunkOutcome::Complete(3, vec![ban(1), ban(2)])
        );
        assert_eq!(bad, 1);
        // A chunk with no start, a wrong offset, a total above the cap, too many bans.
        assert_eq!(
            chunks.offer(4, 1, 2, vec![json(1)], || ()),
            ChunkOutcome::Rejected
        );
        chunks.offer(4, 0, 2, vec![json(1)], || ());
        assert_eq!(
            chunks.offer(4, 2, 2, vec![json(2)], || ()),
            ChunkOutcome::Rejected
        );
        assert_eq!(
            chunks.offer(5, 0, MAX_BANS as u32 + 1, vec![], || ()),
            ChunkOutcome::Rejected
        );
        assert_eq!(
            chunks.offer(6, 0, 1, vec![json(1), json(2)], || ()),
            ChunkOutcome::Rejected
        );
        assert_eq!(
            chunks.offer(7, 0, 0, vec![], || ()),
            ChunkOutcome::Complete(7, vec![])
        );
    }

    #[tokio::test]
    async fn newest_bans_win_kicks_pass_once_and_the_feed_never_blocks() {
        let feed = ControlFeed::start();
        let mut rx = feed.take_receiver().unwrap();
        assert!(feed.take_receiver().is_none());
        assert!(feed.offer_bans(2, vec![ban(1)]));
        assert!(!feed.offer_bans(1, vec![]), "older than the one held");
        assert!(!feed.offer_bans(2, vec![]), "the same version again");
        match rx.recv().await {
            Some(ControlEvent::Bans(b)) => assert_eq!(*b, vec![ban(1)]),
            other => panic!("{other:?}"),
        }
        let now = 1_000_000_000;
        assert!(feed.offer_kick(1, "u1".into(), now - 10, now));
        assert!(!feed.offer_kick(1, "u1".into(), now - 10, now), "seen");
        assert!(!feed.offer_kick(2, String::new(), now, now));
        // A replay of an old kick keeps its time; a live one takes the later clock.
        assert!(feed.offer_kick(3, "u3".into(), now - 3_600_000, now));
        match rx.recv().await {
            Some(ControlEvent::Kick { user, at_ms }) => {
                assert_eq!((user.as_str(), at_ms), ("u1", now))
            }
            other => panic!("{other:?}"),
        }
        match rx.recv().await {
            Some(ControlEvent::Kick { at_ms, .. }) => assert_eq!(at_ms, now - 3_600_000),
            other => panic!("{other:?}"),
        }
        // Nobody reads: offers still return at once, pending events stay bounded.
        for seq in 10..(10 + 3 * MAX_PENDING_EVENTS as u64) {
            feed.offer_kick(seq, "u".into(), now, now);
        }
        for v in 3..200 {
            feed.offer_bans(v, vec![ban(v)]);
        }
        assert!(feed.state().events.len() <= MAX_PENDING_EVENTS);
        assert!(feed
            .rejections()
            .iter()
            .any(|(r, n)| *r == "control_overflow" && *n > 0));
        // Ban lists are coalesced: the last one passed on is the newest.
        let mut last_bans = None;
        let mut lists = 0;
        while let Ok(Some(event)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), rx.recv()).await
        {
            if let ControlEvent::Bans(b) = event {
                last_bans = Some(b);
                lists += 1;
            }
        }
        assert_eq!(last_bans.map(|b| b[0].id), Some(199));
        assert!(lists < 197, "{lists} lists passed on: not coalesced");
        assert_eq!(feed.bans_version(), Some(199));
    }
}
