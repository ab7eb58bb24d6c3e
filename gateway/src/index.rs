//! The gateway's local subscription index: topic → local connections, and the rule for when
//! the cluster must hear about it. Pure: methods take events and return [`Effect`]s; the
//! server runs them (calls the upstream, sends acks) and reports completions back.
//!
//! Per-topic state (at most one upstream request in flight per topic):
//!
//! ```text
//!            first subscriber: Effect::Subscribe
//!   (absent) ─────────────────────────────────▶ Pending ──subscribe_done(Ok)──▶ Active
//!      ▲                                        │  ▲   (acks every waiting request)  │
//!      │ unsubscribe_done,                      │  │                                 │ last
//!      │ nobody came back                       │  │ unsubscribe_done, someone       │ subscriber
//!      │                                        │  │ subscribed meanwhile:           │ left:
//!      │                                        │  │ Effect::Subscribe               │ Effect::
//!      └──────────────────────────────────── Leaving ◀───────────────────────────────┘ Unsubscribe
//!            subscribe_done with nobody left, or an indeterminate failure: Effect::Unsubscribe
//! ```
//!
//! A subscribe request naming several topics is acked once every topic is committed, or gets
//! one error frame naming the first failure (topics that did commit stay subscribed).
//! Subscribing to a topic already held acks at once (once the topic is committed).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::upstream::UpstreamError;

/// A local connection's id, unique for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What the runtime must do after an index event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Ask the cluster for the gateway's interest in the topic; report with
    /// [`SubscriptionIndex::subscribe_done`].
    Subscribe(Arc<str>),
    /// Withdraw the interest; report with [`SubscriptionIndex::unsubscribe_done`].
    Unsubscribe(Arc<str>),
    /// Ack the connection's subscribe request `id`.
    Ack {
        /// The connection.
        conn: ConnId,
        /// The request's correlation number.
        id: u64,
    },
    /// Fail the connection's subscribe request `id`.
    Fail {
        /// The connection.
        conn: ConnId,
        /// The request's correlation number.
        id: u64,
        /// The topic that failed.
        topic: Arc<str>,
        /// Why.
        error: UpstreamError,
    },
}

/// Why a subscribe request is refused outright.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The connection would hold more topics than allowed.
    #[error("a connection may hold {limit} topics; this request would make {would_hold}")]
    TooManyTopics {
        /// The per-connection limit.
        limit: usize,
        /// How many it would hold.
        would_hold: usize,
    },
}

/// The state of one topic, as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicState {
    /// Subscribe in flight.
    Pending,
    /// Committed in the cluster.
    Active,
    /// Unsubscribe in flight.
    Leaving,
}

#[derive(Debug)]
struct TopicEntry {
    state: TopicState,
    subscribers: HashSet<ConnId>,
    /// Requests waiting for this topic's commit.
    waiters: Vec<RequestToken>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RequestToken(u64);

#[derive(Debug)]
struct PendingRequest {
    conn: ConnId,
    id: u64,
    remaining: usize,
}

/// Topic → local connections, with the Pending/Active/Leaving life cycle of each topic.
#[derive(Debug)]
pub struct SubscriptionIndex {
    topics: HashMap<Arc<str>, TopicEntry>,
    conns: HashMap<ConnId, HashSet<Arc<str>>>,
    requests: HashMap<RequestToken, PendingRequest>,
    next_token: u64,
    max_topics_per_conn: usize,
    subscriptions: usize,
}

impl SubscriptionIndex {
    /// An empty index allowing `max_topics_per_conn` topics per connection.
    pub fn new(max_topics_per_conn: usize) -> SubscriptionIndex {
        SubscriptionIndex {
            topics: HashMap::new(),
            conns: HashMap::new(),
            requests: HashMap::new(),
            next_token: 0,
            max_topics_per_conn,
            subscriptions: 0,
        }
    }

    /// Connection `conn` asks for `topics` with request `id`.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        id: u64,
        topics: &[Arc<str>],
    ) -> Result<Vec<Effect>, IndexError> {
        let held = self.conns.get(&conn);
        let new: HashSet<&Arc<str>> = topics
            .iter()
            .filter(|t| !held.is_some_and(|h| h.contains(*t)))
            .collect();
        let would_hold = held.map_or(0, HashSet::len) + new.len();
        if would_hold > self.max_topics_per_conn {
            return Err(IndexError::TooManyTopics {
                limit: self.max_topics_per_conn,
                would_hold,
            });
        }
        let mut effects = Vec::new();
        let token = RequestToken(self.next_token);
        self.next_token += 1;
        let mut remaining = 0;
        let unique: HashSet<&Arc<str>> = topics.iter().collect();
        for topic in unique {
            let entry = self.topics.entry(topic.clone()).or_insert_with(|| {
                effects.push(Effect::Subscribe(topic.clone()));
                TopicEntry {
                    state: TopicState::Pending,
                    subscribers: HashSet::new(),
                    waiters: Vec::new(),
                }
            });
            if entry.subscribers.insert(conn) {
                self.subscriptions += 1;
                self.conns.entry(conn).or_default().insert(topic.clone());
            }
            if entry.state != TopicState::Active {
                entry.waiters.push(token);
                remaining += 1;
            }
        }
        if remaining == 0 {
            effects.push(Effect::Ack { conn, id });
        } else {
            self.requests.insert(
                token,
                PendingRequest {
                    conn,
                    id,
                    remaining,
                },
            );
        }
        Ok(effects)
    }

    /// True when `conn` holds `topic` (in any state).
    pub fn holds(&self, conn: ConnId, topic: &str) -> bool {
        self.conns.get(&conn).is_some_and(|t| t.contains(topic))
    }

    /// The topics `conn` holds.
    pub fn held_topics(&self, conn: ConnId) -> Vec<Arc<str>> {
        self.conns
            .get(&conn)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Connection `conn` leaves `topics` (topics it does not hold are ignored). The caller acks
    /// at once: leaving needs no commit.
    pub fn unsubscribe(&mut self, conn: ConnId, topics: &[Arc<str>]) -> Vec<Effect> {
        let mut effects = Vec::new();
        for topic in topics {
            self.leave(conn, topic, &mut effects);
        }
        effects
    }

    /// Connection `conn` is gone: it leaves every topic, and its pending requests are
    /// forgotten (nobody is left to ack).
    pub fn remove_conn(&mut self, conn: ConnId) -> Vec<Effect> {
        let mut effects = Vec::new();
        let topics: Vec<Arc<str>> = self
            .conns
            .get(&conn)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        for topic in &topics {
            self.leave(conn, topic, &mut effects);
        }
        self.conns.remove(&conn);
        self.requests.retain(|_, r| r.conn != conn);
        effects
    }

    fn leave(&mut self, conn: ConnId, topic: &Arc<str>, effects: &mut Vec<Effect>) {
        let Some(entry) = self.topics.get_mut(topic) else {
            return;
        };
        if !entry.subscribers.remove(&conn) {
            return;
        }
        self.subscriptions -= 1;
        if let Some(held) = self.conns.get_mut(&conn) {
            held.remove(topic);
            if held.is_empty() {
                self.conns.remove(&conn);
            }
        }
        if entry.subscribers.is_empty() && entry.state == TopicState::Active {
            entry.state = TopicState::Leaving;
            effects.push(Effect::Unsubscribe(topic.clone()));
        }
        // Pending: decided when the subscribe completes. Leaving: cannot have subscribers.
    }

    /// The upstream subscribe of `topic` completed.
    pub fn subscribe_done(
        &mut self,
        topic: &str,
        result: Result<(), UpstreamError>,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(entry) = self.topics.get_mut(topic) else {
            return effects;
        };
        if entry.state != TopicState::Pending {
            return effects;
        }
        let waiters = std::mem::take(&mut entry.waiters);
        let topic_arc = self
            .topics
            .get_key_value(topic)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Arc::from(topic));
        match result {
            Ok(()) => {
                for token in waiters {
                    self.progress(token, None, &topic_arc, &mut effects);
                }
                if let Some(entry) = self.topics.get_mut(topic) {
                    if entry.subscribers.is_empty() {
                        entry.state = TopicState::Leaving;
                        effects.push(Effect::Unsubscribe(topic_arc.clone()));
                    } else {
                        entry.state = TopicState::Active;
                    }
                }
            }
            Err(error) => {
                for token in waiters {
                    self.progress(token, Some(&error), &topic_arc, &mut effects);
                }
                // Everyone holding a pending topic is waiting for it: all of them lose it.
                let subscribers = self
                    .topics
                    .get_mut(topic)
                    .map(|e| std::mem::take(&mut e.subscribers))
                    .unwrap_or_default();
                for conn in subscribers {
                    self.subscriptions -= 1;
                    if let Some(held) = self.conns.get_mut(&conn) {
                        held.remove(topic);
                        if held.is_empty() {
                            self.conns.remove(&conn);
                        }
                    }
                }
                if error.is_indeterminate() {
                    // The interest may have been committed: withdraw it rather than leak it.
                    if let Some(entry) = self.topics.get_mut(topic) {
                        entry.state = TopicState::Leaving;
                    }
                    effects.push(Effect::Unsubscribe(topic_arc));
                } else {
                    self.topics.remove(topic);
                }
            }
        }
        effects
    }

    fn progress(
        &mut self,
        token: RequestToken,
        error: Option<&UpstreamError>,
        topic: &Arc<str>,
        effects: &mut Vec<Effect>,
    ) {
        let Some(request) = self.requests.get_mut(&token) else {
            return; // connection gone, or request already failed
        };
        if let Some(error) = error {
            effects.push(Effect::Fail {
                conn: request.conn,
                id: request.id,
                topic: topic.clone(),
                error: error.clone(),
            });
            self.requests.remove(&token);
            return;
        }
        request.remaining -= 1;
        if request.remaining == 0 {
            effects.push(Effect::Ack {
                conn: request.conn,
                id: request.id,
            });
            self.requests.remove(&token);
        }
    }

    /// The upstream unsubscribe of `topic` completed (successfully or not: either way the
    /// gateway no longer counts on the interest).
    pub fn unsubscribe_done(
        &mut self,
        topic: &str,
        _result: Result<(), UpstreamError>,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(entry) = self.topics.get_mut(topic) else {
            return effects;
        };
        if entry.state != TopicState::Leaving {
            return effects;
        }
        if entry.subscribers.is_empty() {
            // Someone subscribed while the topic was leaving and left again before the
            // re-subscribe: their request is answered (it completed, then they withdrew).
            let waiters = std::mem::take(&mut entry.waiters);
            if let Some((topic_arc, _)) = self.topics.remove_entry(topic) {
                for token in waiters {
                    self.progress(token, None, &topic_arc, &mut effects);
                }
            }
        } else {
            entry.state = TopicState::Pending;
            if let Some((k, _)) = self.topics.get_key_value(topic) {
                effects.push(Effect::Subscribe(k.clone()));
            }
        }
        effects
    }

    /// The local connections subscribed to `topic` (Pending topics included: a message that
    /// arrives before the commit is still one the client asked for).
    pub fn subscribers(&self, topic: &str) -> impl Iterator<Item = ConnId> + '_ {
        self.topics
            .get(topic)
            .into_iter()
            .flat_map(|e| e.subscribers.iter().copied())
    }

    /// The state of a topic, `None` when the index holds nothing of it.
    pub fn topic_state(&self, topic: &str) -> Option<TopicState> {
        self.topics.get(topic).map(|e| e.state)
    }

    /// Topics known (any state).
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// (connection, topic) pairs.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    /// Topics held by a connection.
    pub fn topics_of(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, HashSet::len)
    }

    /// The topics a connection holds, in no particular order.
    pub fn topic_names_of(&self, conn: ConnId) -> Vec<Arc<str>> {
        self.conns
            .get(&conn)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Subscribe requests still waiting for a commit.
    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet, VecDeque};

    fn t(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn first_subscriber_waits_later_ones_do_not() {
        let mut ix = SubscriptionIndex::new(10);
        let (a, b, c) = (ConnId(1), ConnId(2), ConnId(3));
        assert_eq!(
            ix.subscribe(a, 1, &[t("x")]).unwrap(),
            vec![Effect::Subscribe(t("x"))]
        );
        assert_eq!(ix.subscribe(b, 7, &[t("x")]).unwrap(), vec![]);
        assert_eq!(
            ix.subscribe_done("x", Ok(())),
            vec![
                Effect::Ack { conn: a, id: 1 },
                Effect::Ack { conn: b, id: 7 }
            ]
        );
        assert_eq!(
            ix.subscribe(c, 9, &[t("x")]).unwrap(),
            vec![Effect::Ack { conn: c, id: 9 }]
        );
        assert_eq!(ix.subscribers("x").count(), 3);
        assert_eq!(ix.unsubscribe(a, &[t("x")]), vec![]);
        assert_eq!(ix.remove_conn(b), vec![]);
        assert_eq!(
            ix.unsubscribe(c, &[t("x")]),
            vec![Effect::Unsubscribe(t("x"))]
        );
        assert_eq!(ix.topic_state("x"), Some(TopicState::Leaving));
        assert_eq!(ix.unsubscribe_done("x", Ok(())), vec![]);
        assert_eq!(ix.topic_count(), 0);
        assert_eq!(ix.subscription_count(), 0);
    }

    #[test]
    fn resubscribe_while_leaving_subscribes_again_after_the_unsubscribe() {
        let mut ix = SubscriptionIndex::new(10);
        let a = ConnId(1);
        ix.subscribe(a, 1, &[t("x")]).unwrap();
        ix.subscribe_done("x", Ok(()));
        assert_eq!(
            ix.unsubscribe(a, &[t("x")]),
            vec![Effect::Unsubscribe(t("x"))]
        );
        assert_eq!(ix.subscribe(a, 2, &[t("x")]).unwrap(), vec![]);
        assert_eq!(
            ix.unsubscribe_done("x", Ok(())),
            vec![Effect::Subscribe(t("x"))]
        );
        assert_eq!(
            ix.subscribe_done("x", Ok(())),
            vec![Effect::Ack { conn: a, id: 2 }]
        );
        assert_eq!(ix.topic_state("x"), Some(TopicState::Active));
    }

    #[test]
    fn multi_topic_request_acks_once_and_fails_once() {
        let mut ix = SubscriptionIndex::new(10);
        let a = ConnId(1);
        let e = ix.subscribe(a, 5, &[t("x"), t("y"), t("x")]).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(ix.subscribe_done("x", Ok(())), vec![]);
        assert_eq!(
            ix.subscribe_done("y", Ok(())),
            vec![Effect::Ack { conn: a, id: 5 }]
        );
        ix.subscribe(a, 6, &[t("p"), t("q")]).unwrap();
        let err = UpstreamError::Unavailable("down".into());
        assert_eq!(
            ix.subscribe_done("p", Err(err.clone())),
            vec![Effect::Fail {
                conn: a,
                id: 6,
                topic: t("p"),
                error: err
            }]
        );
        assert_eq!(ix.subscribe_done("q", Ok(())), vec![]);
        assert_eq!(ix.topics_of(a), 3);
        assert_eq!(ix.topic_state("p"), None);
    }

    #[test]
    fn timeouts_withdraw_the_interest() {
        let mut ix = SubscriptionIndex::new(10);
        ix.subscribe(ConnId(1), 1, &[t("x")]).unwrap();
        let effects = ix.subscribe_done("x", Err(UpstreamError::Timeout));
        assert!(effects.contains(&Effect::Unsubscribe(t("x"))));
        assert_eq!(ix.topics_of(ConnId(1)), 0);
    }

    #[test]
    fn topic_limit_counts_distinct_new_topics() {
        let mut ix = SubscriptionIndex::new(2);
        let a = ConnId(1);
        ix.subscribe(a, 1, &[t("x"), t("x")]).unwrap();
        ix.subscribe(a, 2, &[t("x"), t("y")]).unwrap();
        assert_eq!(
            ix.subscribe(a, 3, &[t("z")]),
            Err(IndexError::TooManyTopics {
                limit: 2,
                would_hold: 3
            })
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Sub(u8, Vec<u8>),
        Unsub(u8, Vec<u8>),
        Remove(u8),
        /// Complete the oldest in-flight upstream request, successfully or not.
        Complete(bool, bool),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        let topics = prop::collection::vec(0u8..4, 1..3);
        prop_oneof![
            3 => (0u8..4, topics.clone()).prop_map(|(c, t)| Op::Sub(c, t)),
            2 => (0u8..4, topics).prop_map(|(c, t)| Op::Unsub(c, t)),
            1 => (0u8..4).prop_map(Op::Remove),
            4 => (any::<bool>(), any::<bool>()).prop_map(|(ok, timeout)| Op::Complete(ok, timeout)),
        ]
    }

    /// A model cluster: applies upstream requests in completion order and checks that the
    /// gateway never has two requests in flight for one topic.
    #[derive(Default)]
    struct Harness {
        inflight: VecDeque<Effect>,
        cluster: BTreeSet<Arc<str>>,
        answered: BTreeMap<(u64, u64), usize>,
        asked: BTreeSet<(u64, u64)>,
        alive: BTreeSet<u64>,
    }

    impl Harness {
        fn absorb(&mut self, effects: Vec<Effect>) -> Result<(), TestCaseError> {
            for e in effects {
                match e {
                    Effect::Subscribe(ref topic) | Effect::Unsubscribe(ref topic) => {
                        let busy = self.inflight.iter().any(|f| {
                            matches!(f,
                            Effect::Subscribe(x) | Effect::Unsubscribe(x) if x == topic)
                        });
                        prop_assert!(!busy, "two upstream requests in flight for {}", topic);
                        self.inflight.push_back(e.clone());
                    }
                    Effect::Ack { conn, id } | Effect::Fail { conn, id, .. } => {
                        *self.answered.entry((conn.0, id)).or_default() += 1;
                    }
                }
            }
            Ok(())
        }
    }

    proptest! {
        #[test]
        fn index_agrees_with_the_model(ops in prop::collection::vec(arb_op(), 0..60)) {
            let mut ix = SubscriptionIndex::new(3);
            let mut h = Harness::default();
            // The model of local subscriptions: conn -> topics it holds.
            let mut model: BTreeMap<u64, BTreeSet<u8>> = BTreeMap::new();
            let mut next_id = 0u64;
            let name = |n: u8| -> Arc<str> { Arc::from(format!("t{n}")) };
            for op in ops.into_iter().chain((0..100).map(|_| Op::Complete(true, false))) {
                match op {
                    Op::Sub(c, topics) => {
                        next_id += 1;
                        let list: Vec<Arc<str>> = topics.iter().map(|&n| name(n)).collect();
                        match ix.subscribe(ConnId(c.into()), next_id, &list) {
                            Ok(effects) => {
                                h.asked.insert((c.into(), next_id));
                                h.alive.insert(c.into());
                                model.entry(c.into()).or_default().extend(topics.iter().copied());
                                h.absorb(effects)?;
                            }
                            Err(IndexError::TooManyTopics { would_hold, .. }) => {
                                let mut held = model.get(&c.into()).cloned().unwrap_or_default();
                                held.extend(topics.iter().copied());
                                prop_assert_eq!(held.len(), would_hold);
                                prop_assert!(would_hold > 3);
                            }
                        }
                    }
                    Op::Unsub(c, topics) => {
                        let list: Vec<Arc<str>> = topics.iter().map(|&n| name(n)).collect();
                        h.absorb(ix.unsubscribe(ConnId(c.into()), &list))?;
                        if let Some(held) = model.get_mut(&c.into()) {
                            for n in &topics { held.remove(n); }
                        }
                    }
                    Op::Remove(c) => {
                        h.absorb(ix.remove_conn(ConnId(c.into())))?;
                        model.remove(&c.into());
                        h.alive.remove(&c.into());
                        h.asked.retain(|(conn, _)| *conn != u64::from(c));
                    }
                    Op::Complete(ok, timeout) => {
                        let Some(e) = h.inflight.pop_front() else { continue };
                        let result = if ok { Ok(()) } else if timeout {
                            Err(UpstreamError::Timeout)
                        } else {
                            Err(UpstreamError::Unavailable("x".into()))
                        };
                        let effects = match &e {
                            Effect::Subscribe(topic) => {
                                if ok || timeout { h.cluster.insert(topic.clone()); }
                                let effects = ix.subscribe_done(topic, result);
                                if !ok {
                                    // Failed topics are lost by everyone who held them.
                                    for held in model.values_mut() {
                                        held.retain(|n| *name(*n) != **topic);
                                    }
                                }
                                effects
                            }
                            Effect::Unsubscribe(topic) => {
                                h.cluster.remove(topic);
                                ix.unsubscribe_done(topic, result)
                            }
                            _ => unreachable!(),
                        };
                        h.absorb(effects)?;
                    }
                }
                // Local subscriptions always match the model.
                for c in 0u8..4 {
                    let expected = model.get(&c.into()).map_or(0, BTreeSet::len);
                    prop_assert_eq!(ix.topics_of(ConnId(c.into())), expected);
                    for n in 0u8..4 {
                        let has = ix.subscribers(&name(n)).any(|x| x == ConnId(c.into()));
                        prop_assert_eq!(has, model.get(&c.into()).is_some_and(|s| s.contains(&n)));
                    }
                }
                let pairs: usize = model.values().map(BTreeSet::len).sum();
                prop_assert_eq!(ix.subscription_count(), pairs);
            }
            // Quiescent: nothing in flight, every live request answered exactly once, and the
            // cluster holds exactly the topics with local subscribers.
            prop_assert!(h.inflight.is_empty());
            prop_assert_eq!(ix.pending_requests(), 0);
            for key in &h.asked {
                prop_assert_eq!(h.answered.get(key).copied(), Some(1), "request {:?}", key);
            }
            for n in h.answered.values() { prop_assert_eq!(*n, 1); }
            let local: BTreeSet<Arc<str>> = model.values().flatten().map(|&n| name(n)).collect();
            prop_assert_eq!(&h.cluster, &local);
            for topic in &local {
                prop_assert_eq!(ix.topic_state(topic), Some(TopicState::Active));
            }
            prop_assert_eq!(ix.topic_count(), local.len());
        }
    }
}
