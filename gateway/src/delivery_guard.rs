//! [`DeliveryGuard`]: which deliveries from the managers' session streams reach local
//! subscribers. Plain data, no I/O, no clock of its own (time is a parameter).
//!
//! ```text
//!   Delivery{topic, term, seq, json, data} from the session of manager `from`
//!     │ topic fails validate_topic ─────────────────────────────▶ Rejected(InvalidTopic)
//!     │ topic not held by this gateway ─────────────────────────▶ NotHeld (dropped, acked)
//!     │ term > highest term seen + MAX_TERM_JUMP ───────────────▶ Rejected(AbsurdStamp)
//!     │ from leads group(topic)?  cache says so, or `from` delivered this very term
//!     │   before as the group's leader ─ yes ─┐
//!     │   no, and term above the group's last leader term ──▶ Verify (ask `from` for its
//!     │        routing, take it in, check again)               │
//!     │   no ────────────────────────────────────────────────▶ Rejected(NotLeader)
//!     │ seq more than MAX_SEQ_JUMP past the topic's last seq of that term ─▶ AbsurdStamp
//!     │ json and not one valid JSON value (UTF-8, depth <= 128) ─▶ Rejected(InvalidJson)
//!     │ (term, seq) <= the topic's last passed-on stamp ───────▶ Superseded
//!     └──────────────────────────────────────────────────────▶ Pass
//! ```
//!
//! What "absurd" means, and why: Raft terms grow by one per election, so a cluster never gets
//! anywhere near [`MAX_TERM_JUMP`] (2^32) elections past the highest term this gateway has
//! seen; a stamp that far ahead (`(u64::MAX, u64::MAX)`, say) is a bug, and passing it on
//! would wedge its topic for good (every later stamp would look older). A seq counts one
//! topic's messages within a term: [`MAX_SEQ_JUMP`] (2^40, a million messages a second for
//! twelve days) past the topic's last seq of that term is as implausible. A stamp far ahead
//! within these bounds is ordered as usual. Should a manager that led the group still have
//! passed on a stamp ahead of its real sequence, the topic is not wedged forever: after
//! [`WEDGE_LIMIT`] deliveries in a row from the group's leader all below the topic's last
//! stamp (a leader never stamps below what it stamped before, and the managers do not
//! re-send deliveries), the topic's stamp is reset to the leader's (counted, logged).
//!
//! Who leads: the leader cache names a group's leader (routing, `NotLeader` hints). A new
//! leader may deliver before its routing push arrives (the managers look at leader changes
//! every 50 ms), so a delivery from a manager the cache does not name, at a term above the
//! group's last leader term, is checked by asking that manager for its routing: it passes
//! only when that manager says it leads. A deposed leader's late delivery (an older term) is
//! refused without asking. A verification that failed is not repeated for that manager
//! within [`VERIFY_BACKOFF`], so a manager cannot make the gateway ask on every delivery.
//!
//! Memory: one entry per held topic that had a delivery (removed when the topic is no longer
//! held), one per group with a delivery, one per manager that failed a verification.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A term more than this above the highest term seen from the cluster is absurd.
pub(crate) const MAX_TERM_JUMP: u64 = 1 << 32;
/// A seq more than this above the topic's last seq in the same term (or above this, with no
/// earlier stamp of that term) is absurd.
pub(crate) const MAX_SEQ_JUMP: u64 = 1 << 40;
/// Deliveries in a row from the group's leader below a topic's last stamp after which the
/// stamp is taken to be bogus and reset.
pub(crate) const WEDGE_LIMIT: u32 = 32;
/// A manager whose claim to lead was checked and found false is not asked again before this.
pub(crate) const VERIFY_BACKOFF: Duration = Duration::from_secs(1);

/// Why a delivery was dropped as unfit for clients (each a label of
/// `firetower_gateway_link_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeliveryRejected {
    /// The topic fails `firetower_proto::validate_topic`.
    InvalidTopic,
    /// The sender does not lead the topic's group.
    NotLeader,
    /// The stamp is implausibly far ahead (see the module doc).
    AbsurdStamp,
    /// `json = true` but the payload is not one valid JSON value.
    InvalidJson,
}

impl DeliveryRejected {
    pub(crate) const ALL: [DeliveryRejected; 4] = [
        DeliveryRejected::InvalidTopic,
        DeliveryRejected::NotLeader,
        DeliveryRejected::AbsurdStamp,
        DeliveryRejected::InvalidJson,
    ];

    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeliveryRejected::InvalidTopic => "delivery_invalid_topic",
            DeliveryRejected::NotLeader => "delivery_not_leader",
            DeliveryRejected::AbsurdStamp => "delivery_absurd_stamp",
            DeliveryRejected::InvalidJson => "delivery_invalid_json",
        }
    }
}

/// What to do with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand it to the local subscribers.
    Pass,
    /// Drop it: the topic already had an equal or newer stamp (a deposed leader's message, a
    /// duplicate). The manager is told it was superseded.
    Superseded,
    /// Drop it: no local subscriber asked for the topic (it was just unsubscribed, say).
    NotHeld,
    /// Drop it and count it; the manager is told it was superseded.
    Rejected(DeliveryRejected),
    /// Ask the sender for its routing, take it in, and check again with `verified`.
    Verify,
}

/// One delivery, as the guard sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incoming<'a> {
    /// The manager whose session stream carried it.
    pub(crate) from: SocketAddr,
    pub(crate) topic: &'a str,
    pub(crate) term: u64,
    pub(crate) seq: u64,
    pub(crate) json: bool,
    pub(crate) data: &'a [u8],
}

/// What the caller knows around one delivery.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    /// `group_of(topic)` in the cluster joined.
    pub(crate) group: u32,
    /// The leader cache's leader of that group.
    pub(crate) leader: Option<SocketAddr>,
    /// True when this gateway holds the topic (has or is getting local subscribers).
    pub(crate) held: bool,
    /// True when the sender was just asked for its routing ([`Verdict::Verify`]).
    pub(crate) verified: bool,
    pub(crate) now: Instant,
}

#[derive(Debug, Clone, Copy)]
struct TopicOrder {
    last: (u64, u64),
    /// Deliveries in a row from the group's leader below `last`.
    below: u32,
}

/// The ordering and trust state of the deliveries of one gateway.
#[derive(Debug, Default)]
pub(crate) struct DeliveryGuard {
    topics: HashMap<Arc<str>, TopicOrder>,
    /// Per group: the manager and term of the last delivery passed on.
    group_leader: HashMap<u32, (SocketAddr, u64)>,
    /// Highest term passed on, from any group.
    max_term: u64,
    /// Managers whose claim to lead was found false, and when.
    failed_verify: HashMap<SocketAddr, Instant>,
    rejected: [u64; DeliveryRejected::ALL.len()],
    superseded: u64,
    not_held: u64,
    resets: u64,
}

impl DeliveryGuard {
    /// Decide about `d` (see the module doc); records what a passed delivery changes.
    pub(crate) fn check(&mut self, d: &Incoming<'_>, cx: Context) -> Verdict {
        let verdict = self.decide(d, cx);
        match verdict {
            Verdict::Rejected(r) => {
                let slot = &mut self.rejected[r as usize];
                *slot = slot.saturating_add(1);
            }
            Verdict::Superseded => self.superseded = self.superseded.saturating_add(1),
            Verdict::NotHeld => self.not_held = self.not_held.saturating_add(1),
            Verdict::Pass | Verdict::Verify => {}
        }
        verdict
    }

    fn decide(&mut self, d: &Incoming<'_>, cx: Context) -> Verdict {
        if firetower_proto::validate_topic(d.topic).is_err() {
            return Verdict::Rejected(DeliveryRejected::InvalidTopic);
        }
        if !cx.held {
            return Verdict::NotHeld;
        }
        if d.term > self.max_term.saturating_add(MAX_TERM_JUMP) {
            return Verdict::Rejected(DeliveryRejected::AbsurdStamp);
        }
        let last_leader = self.group_leader.get(&cx.group).copied();
        let leads = cx.leader == Some(d.from) || last_leader == Some((d.from, d.term));
        if !leads {
            let newer_term = last_leader.is_none_or(|(_, term)| d.term > term);
            if cx.verified {
                self.failed_verify.insert(d.from, cx.now);
                return Verdict::Rejected(DeliveryRejected::NotLeader);
            }
            let may_ask = self
                .failed_verify
                .get(&d.from)
                .is_none_or(|&at| cx.now.saturating_duration_since(at) >= VERIFY_BACKOFF);
            if newer_term && may_ask {
                return Verdict::Verify;
            }
            return Verdict::Rejected(DeliveryRejected::NotLeader);
        }
        self.failed_verify.remove(&d.from);
        let order = self.topics.get(d.topic).copied();
        let base_seq = match order {
            Some(o) if o.last.0 == d.term => o.last.1,
            _ => 0,
        };
        if d.seq > base_seq.saturating_add(MAX_SEQ_JUMP) {
            return Verdict::Rejected(DeliveryRejected::AbsurdStamp);
        }
        if d.json && !is_one_json_value(d.data) {
            return Verdict::Rejected(DeliveryRejected::InvalidJson);
        }
        let stamp = (d.term, d.seq);
        if let Some(o) = order {
            if o.last >= stamp {
                let below = if o.last > stamp { o.below + 1 } else { o.below };
                if below < WEDGE_LIMIT {
                    if let Some(entry) = self.topics.get_mut(d.topic) {
                        entry.below = below;
                    }
                    return Verdict::Superseded;
                }
                self.resets = self.resets.saturating_add(1);
                tracing::error!(
                    event = "stamp_reset",
                    topic = d.topic,
                    held = ?o.last,
                    leader = %d.from,
                    stamp = ?stamp,
                    "the group's leader keeps stamping below this topic's last stamp; \
                     resetting it to the leader's"
                );
            }
        }
        self.topics.insert(
            Arc::from(d.topic),
            TopicOrder {
                last: stamp,
                below: 0,
            },
        );
        self.max_term = self.max_term.max(d.term);
        let newest = last_leader.is_none_or(|(_, term)| d.term >= term);
        if newest {
            self.group_leader.insert(cx.group, (d.from, d.term));
        }
        Verdict::Pass
    }

    /// The topic is no longer held: forget its stamp.
    pub(crate) fn forget(&mut self, topic: &str) {
        self.topics.remove(topic);
    }

    /// Deliveries dropped for this reason so far.
    pub(crate) fn rejected(&self, reason: DeliveryRejected) -> u64 {
        self.rejected[reason as usize]
    }

    /// Deliveries dropped as older than their topic's last stamp.
    pub(crate) fn superseded(&self) -> u64 {
        self.superseded
    }

    /// Deliveries dropped because the topic was not held.
    pub(crate) fn not_held(&self) -> u64 {
        self.not_held
    }

    /// Topic stamps reset after [`WEDGE_LIMIT`] deliveries below them.
    pub(crate) fn resets(&self) -> u64 {
        self.resets
    }

    /// Topics with a stamp (at most the topics held).
    pub(crate) fn tracked_topics(&self) -> usize {
        self.topics.len()
    }
}

/// True when `data` is exactly one JSON value: valid UTF-8, nothing but whitespace after the
/// value, nested at most 128 deep (serde_json's recursion limit, so a hostile payload cannot
/// exhaust the stack). Done once per message per gateway, before the payload is spliced into
/// every local subscriber's frame.
pub(crate) fn is_one_json_value(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], 6666))
    }

    fn delivery(from: u8, term: u64, seq: u64) -> Incoming<'static> {
        Incoming {
            from: addr(from),
            topic: "room.1",
            term,
            seq,
            json: true,
            data: b"{\"a\":1}",
        }
    }

    fn cx(leader: u8, now: Instant) -> Context {
        Context {
            group: 0,
            leader: Some(addr(leader)),
            held: true,
            verified: false,
            now,
        }
    }

    #[test]
    fn passes_in_order_and_supersedes_older() {
        let mut g = DeliveryGuard::default();
        let now = Instant::now();
        assert_eq!(g.check(&delivery(1, 1, 1), cx(1, now)), Verdict::Pass);
        assert_eq!(g.check(&delivery(1, 1, 2), cx(1, now)), Verdict::Pass);
        assert_eq!(g.check(&delivery(1, 1, 2), cx(1, now)), Verdict::Superseded);
        assert_eq!(g.check(&delivery(1, 1, 1), cx(1, now)), Verdict::Superseded);
        // A stamp far ahead, within bounds, is ordered as usual.
        assert_eq!(g.check(&delivery(1, 1_000, 7), cx(1, now)), Verdict::Pass);
        assert_eq!(
            g.check(&delivery(1, 999, 8), cx(1, now)),
            Verdict::Superseded
        );
        assert_eq!(g.superseded(), 3);
    }

    /// Issue 11: `(u64::MAX, u64::MAX)` used to be passed on and wedge the topic for good.
    #[test]
    fn absurd_stamps_are_refused_and_do_not_wedge_the_topic() {
        let mut g = DeliveryGuard::default();
        let now = Instant::now();
        for (term, seq) in [
            (u64::MAX, u64::MAX),
            (MAX_TERM_JUMP + 1, 1),
            (1, u64::MAX),
            (1, MAX_SEQ_JUMP + 1),
        ] {
            assert_eq!(
                g.check(&delivery(1, term, seq), cx(1, now)),
                Verdict::Rejected(DeliveryRejected::AbsurdStamp),
                "({term}, {seq})"
            );
        }
        assert_eq!(g.check(&delivery(1, 3, 1), cx(1, now)), Verdict::Pass);
        assert_eq!(g.check(&delivery(1, 3, 2), cx(1, now)), Verdict::Pass);
        // Relative to the topic's last seq of that term.
        assert_eq!(
            g.check(&delivery(1, 3, 2 + MAX_SEQ_JUMP), cx(1, now)),
            Verdict::Pass
        );
        assert_eq!(g.rejected(DeliveryRejected::AbsurdStamp), 4);
    }

    #[test]
    fn a_bogus_stamp_within_bounds_is_reset_after_the_wedge_limit() {
        let mut g = DeliveryGuard::default();
        let now = Instant::now();
        assert_eq!(
            g.check(&delivery(1, 5, 1_000_000), cx(1, now)),
            Verdict::Pass
        );
        for seq in 1..WEDGE_LIMIT as u64 {
            assert_eq!(
                g.check(&delivery(1, 5, seq), cx(1, now)),
                Verdict::Superseded
            );
        }
        assert_eq!(
            g.check(&delivery(1, 5, WEDGE_LIMIT as u64), cx(1, now)),
            Verdict::Pass
        );
        assert_eq!(g.resets(), 1);
        assert_eq!(
            g.check(&delivery(1, 5, WEDGE_LIMIT as u64 + 1), cx(1, now)),
            Verdict::Pass
        );
    }

    #[test]
    fn only_the_leader_delivers() {
        let mut g = DeliveryGuard::default();
        let now = Instant::now();
        assert_eq!(g.check(&delivery(1, 4, 1), cx(1, now)), Verdict::Pass);
        // A manager the cache does not name, at an older or the same term: refused outright.
        for term in [3, 4] {
            assert_eq!(
                g.check(&delivery(2, term, 9), cx(1, now)),
                Verdict::Rejected(DeliveryRejected::NotLeader)
            );
        }
        // At a newer term it may be a new leader whose routing has not arrived: ask it.
        assert_eq!(g.check(&delivery(2, 5, 1), cx(1, now)), Verdict::Verify);
        let verified = Context {
            verified: true,
            ..cx(1, now)
        };
        assert_eq!(
            g.check(&delivery(2, 5, 1), verified),
            Verdict::Rejected(DeliveryRejected::NotLeader)
        );
        // Found false: not asked again for a while.
        assert_eq!(
            g.check(&delivery(2, 6, 1), cx(1, now)),
            Verdict::Rejected(DeliveryRejected::NotLeader)
        );
        assert_eq!(
            g.check(&delivery(2, 6, 1), cx(1, now + VERIFY_BACKOFF)),
            Verdict::Verify
        );
        // Its routing said it leads: the cache names it now.
        assert_eq!(
            g.check(&delivery(2, 6, 1), cx(2, now + VERIFY_BACKOFF)),
            Verdict::Pass
        );
        // The deposed leader's late message of its own term: refused, not asked.
        assert_eq!(
            g.check(&delivery(1, 4, 2), cx(2, now)),
            Verdict::Rejected(DeliveryRejected::NotLeader)
        );
        // The leader of a term keeps delivering while the cache has lost track of it (a
        // request timed out there, say).
        let unknown = Context {
            leader: None,
            ..cx(2, now)
        };
        assert_eq!(g.check(&delivery(2, 6, 2), unknown), Verdict::Pass);
        assert_eq!(g.rejected(DeliveryRejected::NotLeader), 5);
    }

    #[test]
    fn invalid_topics_json_and_unheld_topics_are_dropped() {
        let mut g = DeliveryGuard::default();
        let now = Instant::now();
        let bad_topic = Incoming {
            topic: "",
            ..delivery(1, 1, 1)
        };
        assert_eq!(
            g.check(&bad_topic, cx(1, now)),
            Verdict::Rejected(DeliveryRejected::InvalidTopic)
        );
        for data in [
            &b"1,\"topic\":\"other\""[..],
            b"\"\xff\"",
            b"",
            b"{\"a\":1}}",
            b"nul",
        ] {
            let d = Incoming {
                data,
                ..delivery(1, 1, 1)
            };
            assert_eq!(
                g.check(&d, cx(1, now)),
                Verdict::Rejected(DeliveryRejected::InvalidJson),
                "{data:?}"
            );
        }
        // Not JSON: any bytes.
        let binary = Incoming {
            json: false,
            data: b"\xff\xfe",
            ..delivery(1, 1, 1)
        };
        assert_eq!(g.check(&binary, cx(1, now)), Verdict::Pass);
        let unheld = Context {
            held: false,
            ..cx(1, now)
        };
        assert_eq!(g.check(&delivery(1, 1, 2), unheld), Verdict::NotHeld);
        assert_eq!(g.not_held(), 1);
        g.forget("room.1");
        assert_eq!(g.tracked_topics(), 0);
    }

    #[test]
    fn json_depth_is_limited() {
        let deep = "[".repeat(100_000);
        assert!(!is_one_json_value(deep.as_bytes()));
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(is_one_json_value(ok.as_bytes()));
        assert!(is_one_json_value(b" {\"a\":[1,2,{\"b\":null}]} \n"));
    }

    proptest! {
        /// Whatever stamps a leader sends, what passes is strictly increasing per topic
        /// (until a reset, which needs WEDGE_LIMIT drops in a row), and nothing panics.
        #[test]
        fn passed_stamps_increase(
            stamps in proptest::collection::vec((any::<u64>(), any::<u64>()), 1..200),
        ) {
            let mut g = DeliveryGuard::default();
            let now = Instant::now();
            let mut last: Option<(u64, u64)> = None;
            for (term, seq) in stamps {
                if g.check(&delivery(1, term, seq), cx(1, now)) == Verdict::Pass {
                    if g.resets() == 0 {
                        prop_assert!(last.is_none_or(|l| l < (term, seq)));
                    }
                    prop_assert!(term <= MAX_TERM_JUMP.saturating_mul(200));
                    last = Some((term, seq));
                }
            }
            prop_assert!(g.tracked_topics() <= 1);
        }
    }
}
