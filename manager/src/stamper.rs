//! The stamper of one group: which `(term, seq)` a leader gives the next message of a topic,
//! and whether it may stamp at all. Plain data, no locks, no clock of its own: the time of
//! every event is passed in (`now`), so the rules below are tested without a runtime.
//!
//! ```text
//!   observe_quorum_ack(Some((term, at)))        observe_quorum_ack(None)
//!   (openraft metrics: a quorum acked us)       (not leader, core stopped)
//!                  │                                      │
//!                  ▼                                      ▼
//!            ┌──────────┐  now - at >= lease, or   ┌──────────────┐
//!            │ Serving  │ ───────────────────────▶ │ Not serving  │
//!            │ in term  │  the ack is of another   │ LeaseExpired │
//!            └──────────┘  term                    └──────────────┘
//!                  │ stamp(topic, term, lease, now)
//!                  ▼
//!       term > startup_term?  no ─▶ TermOfEarlierRun (never stamps a term an earlier run
//!                  │ yes                               of this process may have used)
//!       a new term? ─▶ every topic's seq restarts at 0, the floor at 0
//!                  ▼
//!       seq(topic) += 1 (a topic without a counter starts from the floor) ─▶ Stamp { term, seq }
//! ```
//!
//! Why these rules: messages are not replicated, so `(term, seq)` must order a topic's
//! messages across leaders. A term belongs to one stamper only if no restarted process
//! reuses it (`startup_term`, see `leadership.rs`) and no deposed leader stamps after its
//! successor was elected (the lease: followers refuse other candidates for
//! `election_timeout_max` after they last heard from the leader, so while a quorum acked the
//! leader less than `election_timeout_min` ago no other leader exists).
//!
//! **The counter map is bounded** ([`STAMP_MAP_CAP`] topics per group). Only topics with a
//! subscribed gateway are stamped at all (publish.rs answers a publish that reaches no gateway
//! with seq 0 and uses no number). Counters live in two generations: a topic stamped goes to
//! (or stays in) the young one; when the young one holds half the cap, the old one is dropped
//! and the young one becomes old. So an entry idle for a whole generation is evicted, and at
//! most `cap` counters exist. Evicting must not let a topic's `(term, seq)` go back or repeat:
//!
//! ```text
//!   floor = the largest seq of any counter evicted in this term (0 at a new term)
//!   a topic with a counter c:        next seq = c + 1
//!   a topic without one:             next seq = floor + 1
//! ```
//!
//! Why that is enough: within a term, a topic either has a counter, which is its last seq,
//! or has none, and then every seq it was given in this term belonged to a counter that was
//! evicted, so is at most `floor`; the floor only grows within a term. Either way its next
//! seq is above all its earlier ones. Across terms, the term grows (`StaleTerm` refuses an
//! older one), which orders the stamps whatever the seq. The price is a gap in a resumed
//! topic's numbers, which subscribers already handle (the contract allows gaps).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Topics with a counter kept per group, at most: about 10 MiB of counters for topics
/// of a few dozen bytes.
pub(crate) const STAMP_MAP_CAP: usize = 100_000;

/// A message's place in its topic's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp {
    /// The Raft term of the leader that stamped it.
    pub term: u64,
    /// Its number within the term, from 1, per topic.
    pub seq: u64,
}

/// Why this manager may not stamp a message of a group right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotServing {
    /// The term is one an earlier run of this process may have stamped in.
    TermOfEarlierRun { term: u64 },
    /// No quorum acknowledged this leader recently enough.
    LeaseExpired,
    /// This stamper already stamped in the later term `current` (Raft terms never go back,
    /// so this is a metrics view older than the stamps; refusing keeps stamps unique).
    StaleTerm { term: u64, current: u64 },
}

/// The stamping state of one group hosted here.
#[derive(Debug)]
pub(crate) struct Stamper {
    /// The term of the vote found on disk when the group started.
    startup_term: u64,
    /// `(term, instant)` of the latest quorum acknowledgement seen while leading.
    quorum_ack: Option<(u64, Instant)>,
    /// The term the counters below belong to.
    term: u64,
    /// The last seq given in `term` to each topic stamped in this generation...
    young: HashMap<String, u64>,
    /// ...and to each topic stamped in the previous generation but not since.
    old: HashMap<String, u64>,
    /// At least every seq given in `term` to a topic that has no counter any more.
    floor: u64,
    /// At most this many counters (young + old).
    cap: usize,
}

impl Stamper {
    /// A group that started with a vote of `startup_term` on disk (0 if none).
    pub(crate) fn new(startup_term: u64) -> Self {
        Stamper::with_cap(startup_term, STAMP_MAP_CAP)
    }

    /// Like [`Stamper::new`], keeping at most `cap` counters (at least 2).
    pub(crate) fn with_cap(startup_term: u64, cap: usize) -> Self {
        Stamper {
            startup_term,
            quorum_ack: None,
            term: 0,
            young: HashMap::new(),
            old: HashMap::new(),
            floor: 0,
            cap: cap.max(2),
        }
    }

    /// The latest quorum acknowledgement while this manager leads (`None` when it does not
    /// lead, or the Raft core stopped).
    pub(crate) fn observe_quorum_ack(&mut self, value: Option<(u64, Instant)>) {
        self.quorum_ack = value;
    }

    /// Ok when this manager, leading in `term`, holds an exclusive lease on the group at
    /// `now`: a quorum acknowledged it less than `lease` ago and the term is one of this run.
    pub(crate) fn check(&self, term: u64, lease: Duration, now: Instant) -> Result<(), NotServing> {
        if term <= self.startup_term {
            return Err(NotServing::TermOfEarlierRun { term });
        }
        match self.quorum_ack {
            Some((t, at)) if t == term && now.saturating_duration_since(at) < lease => Ok(()),
            _ => Err(NotServing::LeaseExpired),
        }
    }

    /// The stamp of the next message of `topic`, if this manager may stamp in `term` at `now`.
    pub(crate) fn stamp(
        &mut self,
        topic: &str,
        term: u64,
        lease: Duration,
        now: Instant,
    ) -> Result<Stamp, NotServing> {
        self.check(term, lease, now)?;
        if term < self.term {
            return Err(NotServing::StaleTerm {
                term,
                current: self.term,
            });
        }
        Ok(self.next(topic, term))
    }

    /// The next stamp of `topic` in `term` without the lease and term checks: only for the
    /// deliberately unsafe Jepsen mode (`unsafe_stale_leadership`), which must be caught.
    pub(crate) fn stamp_unchecked(&mut self, topic: &str, term: u64) -> Stamp {
        self.next(topic, term)
    }

    fn next(&mut self, topic: &str, term: u64) -> Stamp {
        if self.term != term {
            self.term = term;
            self.young.clear();
            self.old.clear();
            self.floor = 0;
        }
        // A seq grows by one per message: u64 does not run out.
        let seq = if let Some(seq) = self.young.get_mut(topic) {
            *seq += 1;
            *seq
        } else {
            let seq = self.old.remove(topic).unwrap_or(self.floor) + 1;
            self.young.insert(topic.to_string(), seq);
            if self.young.len() >= self.cap / 2 {
                self.turn_over();
            }
            seq
        };
        Stamp { term, seq }
    }

    /// Drop the old generation (raising the floor above its counters); the young one ages.
    fn turn_over(&mut self) {
        let evicted = std::mem::replace(&mut self.old, std::mem::take(&mut self.young));
        if let Some(top) = evicted.into_values().max() {
            self.floor = self.floor.max(top);
        }
    }

    /// How many topics have a counter in the current term (the stamp map size).
    pub(crate) fn topics(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn never_serves_in_the_term_of_an_earlier_run() {
        let mut g = Stamper::new(3);
        let now = Instant::now();
        g.observe_quorum_ack(Some((3, now)));
        assert_eq!(
            g.check(3, Duration::from_secs(1), now),
            Err(NotServing::TermOfEarlierRun { term: 3 })
        );
        g.observe_quorum_ack(Some((4, now)));
        assert_eq!(g.check(4, Duration::from_secs(1), now), Ok(()));
    }

    #[test]
    fn lease_runs_out_when_metrics_stop() {
        let mut g = Stamper::new(0);
        let now = Instant::now();
        let long_ago = now.checked_sub(Duration::from_millis(500)).expect("clock");
        g.observe_quorum_ack(Some((1, long_ago)));
        assert_eq!(
            g.check(1, Duration::from_millis(400), now),
            Err(NotServing::LeaseExpired)
        );
        assert_eq!(g.check(1, Duration::from_millis(600), now), Ok(()));
    }

    #[test]
    fn a_quorum_ack_of_another_term_does_not_count() {
        let mut g = Stamper::new(0);
        let now = Instant::now();
        g.observe_quorum_ack(Some((1, now)));
        assert_eq!(
            g.check(2, Duration::from_secs(1), now),
            Err(NotServing::LeaseExpired)
        );
        g.observe_quorum_ack(None);
        assert_eq!(
            g.check(1, Duration::from_secs(1), now),
            Err(NotServing::LeaseExpired)
        );
    }

    #[test]
    fn a_new_term_restarts_every_topic_at_one() {
        let mut g = Stamper::new(0);
        let now = Instant::now();
        let lease = Duration::from_secs(1);
        g.observe_quorum_ack(Some((1, now)));
        assert_eq!(g.stamp("a", 1, lease, now), Ok(Stamp { term: 1, seq: 1 }));
        assert_eq!(g.stamp("a", 1, lease, now), Ok(Stamp { term: 1, seq: 2 }));
        assert_eq!(g.stamp("b", 1, lease, now), Ok(Stamp { term: 1, seq: 1 }));
        assert_eq!(g.topics(), 2);
        g.observe_quorum_ack(Some((2, now)));
        assert_eq!(g.stamp("a", 2, lease, now), Ok(Stamp { term: 2, seq: 1 }));
        assert_eq!(g.topics(), 1);
    }

    #[test]
    fn a_refused_stamp_uses_no_number() {
        let mut g = Stamper::new(0);
        let now = Instant::now();
        let lease = Duration::from_millis(100);
        g.observe_quorum_ack(Some((1, now)));
        assert_eq!(g.stamp("a", 1, lease, now).map(|s| s.seq), Ok(1));
        let later = now + Duration::from_millis(150);
        assert_eq!(g.stamp("a", 1, lease, later), Err(NotServing::LeaseExpired));
        g.observe_quorum_ack(Some((1, later)));
        assert_eq!(g.stamp("a", 1, lease, later).map(|s| s.seq), Ok(2));
    }

    #[test]
    fn a_million_topics_keep_the_map_at_its_cap() {
        let mut g = Stamper::new(0);
        let now = Instant::now();
        let lease = Duration::from_secs(3600);
        g.observe_quorum_ack(Some((1, now)));
        let mut largest = 0;
        for i in 0..1_000_000u32 {
            let stamp = g
                .stamp(&format!("room.{i}"), 1, lease, now)
                .expect("serving");
            assert!(stamp.seq >= 1);
            largest = largest.max(g.topics());
        }
        assert!(
            largest <= STAMP_MAP_CAP,
            "{largest} counters for a cap of {STAMP_MAP_CAP}"
        );
        // What the report quotes: the map peaks at its cap, whatever the topic count.
        println!("stamp map after 1,000,000 distinct topics: peak {largest} entries, cap {STAMP_MAP_CAP}");
    }

    #[test]
    fn an_evicted_topic_resumes_above_its_last_seq() {
        let mut g = Stamper::with_cap(0, 4);
        let now = Instant::now();
        let lease = Duration::from_secs(60);
        g.observe_quorum_ack(Some((1, now)));
        for want in 1..=5 {
            assert_eq!(g.stamp("hot", 1, lease, now).map(|s| s.seq), Ok(want));
        }
        // Four other topics: two turnovers, "hot" is evicted.
        for t in ["a", "b", "c", "d"] {
            g.stamp(t, 1, lease, now).expect("serving");
        }
        assert!(g.topics() <= 4);
        let resumed = g.stamp("hot", 1, lease, now).expect("serving").seq;
        assert!(resumed > 5, "resumed at {resumed}");
    }

    proptest! {
        #[test]
        fn evictions_never_repeat_or_reverse_a_stamp(
            cap in 2usize..8,
            ops in proptest::collection::vec((0u8..12, 0u8..20), 1..400),
        ) {
            let mut g = Stamper::with_cap(0, cap);
            let now = Instant::now();
            let lease = Duration::from_secs(60);
            let mut term = 1;
            let mut last: HashMap<u8, Stamp> = HashMap::new();
            let mut given = std::collections::HashSet::new();
            for (topic, action) in ops {
                // One op in twenty starts a new term.
                if action == 0 {
                    term += 1;
                }
                g.observe_quorum_ack(Some((term, now)));
                let stamp = g.stamp(&format!("t{topic}"), term, lease, now).expect("serving");
                prop_assert!(g.topics() <= cap);
                prop_assert!(given.insert((topic, stamp.term, stamp.seq)), "{:?} given twice", stamp);
                if let Some(prev) = last.get(&topic) {
                    prop_assert!(stamp > *prev, "{:?} after {:?}", stamp, prev);
                }
                last.insert(topic, stamp);
            }
        }
    }

    /// One event the runtime can feed the stamper.
    #[derive(Debug, Clone)]
    enum Op {
        /// Time passes.
        Advance(u64),
        /// Metrics report a quorum ack in `term`, `age` ms before now.
        Ack { term: u64, age: u64 },
        /// Metrics report no leadership.
        Lost,
        /// A publish in `term` of topic number `topic`.
        Stamp { topic: u8, term: u64 },
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..300).prop_map(Op::Advance),
            (0u64..6, 0u64..300).prop_map(|(term, age)| Op::Ack { term, age }),
            Just(Op::Lost),
            (0u8..4, 0u64..6).prop_map(|(topic, term)| Op::Stamp { topic, term }),
            (0u8..4, 0u64..6).prop_map(|(topic, term)| Op::Stamp { topic, term }),
        ]
    }

    /// The rules written as simply as possible: a list of every stamp given so far.
    #[derive(Debug, Default)]
    struct Model {
        /// Milliseconds since the start.
        now: u64,
        /// (term, ms) of the last ack.
        ack: Option<(u64, u64)>,
        /// Every stamp given: (topic, term, seq).
        given: Vec<(u8, u64, u64)>,
        /// The term of the last stamp given.
        last_term: Option<u64>,
    }

    impl Model {
        fn stamp(&mut self, topic: u8, term: u64, startup: u64, lease: u64) -> Option<Stamp> {
            if term <= startup {
                return None;
            }
            let (t, at) = self.ack?;
            if t != term || self.now.saturating_sub(at) >= lease {
                return None;
            }
            if self.last_term.is_some_and(|last| term < last) {
                return None;
            }
            // Stamps of earlier terms are forgotten when the term changes.
            if self.last_term != Some(term) {
                self.given.clear();
                self.last_term = Some(term);
            }
            let seq = self.given.iter().filter(|(to, _, _)| *to == topic).count() as u64 + 1;
            self.given.push((topic, term, seq));
            Some(Stamp { term, seq })
        }
    }

    proptest! {
        #[test]
        fn stamper_matches_the_model(
            startup in 0u64..3,
            lease in 50u64..250,
            ops in proptest::collection::vec(arb_op(), 1..200),
        ) {
            let start = Instant::now() + Duration::from_secs(10);
            let lease_d = Duration::from_millis(lease);
            let mut stamper = Stamper::new(startup);
            let mut model = Model::default();
            // Per topic: the last stamp given, to check the order invariant.
            let mut last: HashMap<u8, Stamp> = HashMap::new();
            for op in ops {
                let now = start + Duration::from_millis(model.now);
                match op {
                    Op::Advance(ms) => model.now += ms,
                    Op::Ack { term, age } => {
                        let age = age.min(model.now);
                        model.ack = Some((term, model.now - age));
                        stamper.observe_quorum_ack(Some((term, now - Duration::from_millis(age))));
                    }
                    Op::Lost => {
                        model.ack = None;
                        stamper.observe_quorum_ack(None);
                    }
                    Op::Stamp { topic, term } => {
                        let name = format!("topic-{topic}");
                        let got = stamper.stamp(&name, term, lease_d, now).ok();
                        let want = model.stamp(topic, term, startup, lease);
                        prop_assert_eq!(got, want);
                        if let Some(stamp) = got {
                            // Never a stamp in a forbidden term.
                            prop_assert!(stamp.term > startup);
                            // Within a term, seq strictly increases per topic; across the
                            // terms this stamper served, stamps only move forward, so no
                            // stamp is ever given twice.
                            if let Some(prev) = last.get(&topic) {
                                if prev.term == stamp.term {
                                    prop_assert!(stamp.seq > prev.seq);
                                }
                                prop_assert!(stamp > *prev);
                            }
                            last.insert(topic, stamp);
                        }
                        prop_assert_eq!(
                            stamper.topics(),
                            model
                                .given
                                .iter()
                                .map(|(t, _, _)| *t)
                                .collect::<std::collections::HashSet<_>>()
                                .len()
                        );
                    }
                }
            }
        }
    }
}
