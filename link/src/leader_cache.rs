//! [`LeaderCache`]: what a gateway knows of the cluster's routing, as plain data.
//!
//! ```text
//!              on_routing(Routing)                   on_reply(group, from, Observation)
//!   manager ─────────────────────────▶ LeaderCache ◀──────────────────────────── a request
//!   (reply or session push)             │  groups, managers, leader per group
//!                                       ▼
//!                       target(topic, rotation) ─▶ (group, leader or a manager to try)
//!
//!   leader of g:  unknown ──routing / NotLeader{hint}──▶ known(addr)
//!                 known(a) ──NotLeader{None} / Unavailable / Unreachable from a──▶ unknown
//! ```
//!
//! Events in, effects out, no locks and no I/O: the link client holds the cache behind a lock,
//! does the sending, and wakes the requests waiting on a group when an event reports that a
//! leader changed. Time is a parameter ([`LeaderCache::poll_due`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use firetower_proto::group_of;

use crate::message::Routing;

/// What one attempt of a request taught about the leader of its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// The manager answered; the cache learns nothing.
    Answered,
    /// The manager does not lead the group and names the leader it knows (`None`: an election).
    NotLeader {
        /// The leader's QUIC address.
        leader: Option<SocketAddr>,
    },
    /// The manager leads nothing for now (it answered `unavailable`).
    Unavailable,
    /// The manager could not be reached or did not answer.
    Unreachable,
}

/// Where to send a request about a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The topic's group.
    pub group: u32,
    /// Its cached leader, else the manager `rotation` picks; `None` when no manager is known.
    pub addr: Option<SocketAddr>,
}

/// The cluster's routing as this gateway knows it.
#[derive(Debug, Clone, Default)]
pub struct LeaderCache {
    groups: u32,
    cluster_id: String,
    managers: Vec<SocketAddr>,
    /// Index = group; `len() == groups`.
    leaders: Vec<Option<SocketAddr>>,
    /// When a slow request last asked the other managers for the routing.
    last_routing_poll: Option<Instant>,
}

impl LeaderCache {
    /// A cache that knows only the managers to ask first.
    pub fn new(seeds: Vec<SocketAddr>) -> Self {
        LeaderCache {
            managers: seeds,
            ..LeaderCache::default()
        }
    }

    /// Number of groups (0 until a routing table arrived).
    pub fn groups(&self) -> u32 {
        self.groups
    }

    /// The cluster id of the last routing table.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// QUIC addresses of the managers.
    pub fn managers(&self) -> &[SocketAddr] {
        &self.managers
    }

    /// The cached leader of `group`.
    pub fn leader(&self, group: u32) -> Option<SocketAddr> {
        self.leaders.get(group as usize).copied().flatten()
    }

    /// True when a leader is known for every group.
    pub fn all_leaders_known(&self) -> bool {
        self.groups > 0 && self.leaders.iter().all(|l| l.is_some())
    }

    /// Where a request about `topic` goes: the group's leader, else the `rotation`-th manager.
    pub fn target(&self, topic: &str, rotation: usize) -> Target {
        let group = group_of(topic, self.groups);
        let fallback = match self.managers.len() {
            0 => None,
            n => Some(self.managers[rotation % n]),
        };
        Target {
            group,
            addr: self.leader(group).or(fallback),
        }
    }

    /// Take in a routing table. Returns true when a group's leader changed.
    ///
    /// Leaders are merged: a manager that does not know a group's leader (an election it has
    /// not seen the end of) does not erase a leader this gateway learned from elsewhere.
    pub fn on_routing(&mut self, routing: &Routing) -> bool {
        let before = (self.groups, self.leaders.clone());
        self.groups = routing.groups;
        self.cluster_id.clone_from(&routing.cluster_id);
        if !routing.managers.is_empty() {
            self.managers.clone_from(&routing.managers);
        }
        self.leaders.resize(routing.groups as usize, None);
        for l in &routing.leaders {
            if let Some(slot) = self.leaders.get_mut(l.group as usize) {
                *slot = Some(l.leader);
            }
        }
        before != (self.groups, self.leaders.clone())
    }

    /// Take in what an attempt at `from` for `group` observed. Returns true when the group's
    /// leader changed.
    pub fn on_reply(&mut self, group: u32, from: SocketAddr, observation: Observation) -> bool {
        let Some(slot) = self.leaders.get_mut(group as usize) else {
            return false;
        };
        let next = match observation {
            Observation::Answered => *slot,
            Observation::NotLeader { leader } => leader,
            Observation::Unavailable => None,
            // Unless another leader was learned meanwhile.
            Observation::Unreachable if *slot == Some(from) => None,
            Observation::Unreachable => *slot,
        };
        let changed = *slot != next;
        *slot = next;
        changed
    }

    /// True when a routing poll is due at `now` (at most one per `every` for the whole cache,
    /// however many requests wait); a due poll is recorded as taken.
    pub fn poll_due(&mut self, now: Instant, every: Duration) -> bool {
        let due = self
            .last_routing_poll
            .is_none_or(|t| now.saturating_duration_since(t) >= every);
        if due {
            self.last_routing_poll = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::GroupLeader;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], 6666))
    }

    fn routing(groups: u32, leaders: &[(u32, u8)]) -> Routing {
        Routing {
            cluster_id: "c".into(),
            groups,
            managers: vec![addr(1), addr(2), addr(3)],
            leaders: leaders
                .iter()
                .map(|&(group, i)| GroupLeader {
                    group,
                    leader: addr(i),
                })
                .collect(),
        }
    }

    #[test]
    fn routing_merges_leaders_instead_of_erasing_them() {
        let mut cache = LeaderCache::new(vec![addr(9)]);
        assert_eq!(cache.target("t", 0).addr, Some(addr(9)));
        assert!(cache.on_routing(&routing(2, &[(0, 1), (1, 2)])));
        assert!(cache.all_leaders_known());
        assert_eq!(cache.managers(), &[addr(1), addr(2), addr(3)]);
        // A manager that knows only group 0's leader keeps group 1's.
        assert!(!cache.on_routing(&routing(2, &[(0, 1)])));
        assert_eq!(cache.leader(1), Some(addr(2)));
    }

    #[test]
    fn replies_move_and_forget_leaders() {
        let mut cache = LeaderCache::new(vec![]);
        cache.on_routing(&routing(1, &[(0, 1)]));
        // A failure at a manager that is no longer the cached leader changes nothing.
        assert!(!cache.on_reply(0, addr(2), Observation::Unreachable));
        assert!(cache.on_reply(
            0,
            addr(1),
            Observation::NotLeader {
                leader: Some(addr(3))
            }
        ));
        assert_eq!(cache.target("t", 0).addr, Some(addr(3)));
        assert!(cache.on_reply(0, addr(3), Observation::Unreachable));
        assert_eq!(cache.leader(0), None);
        // No leader: rotate over the managers.
        assert_eq!(cache.target("t", 4).addr, Some(addr(2)));
        assert!(!cache.on_reply(7, addr(3), Observation::Unavailable));
    }

    #[test]
    fn routing_polls_are_spaced() {
        let mut cache = LeaderCache::new(vec![]);
        let t0 = Instant::now();
        let every = Duration::from_millis(100);
        assert!(cache.poll_due(t0, every));
        assert!(!cache.poll_due(t0 + Duration::from_millis(99), every));
        assert!(cache.poll_due(t0 + every, every));
        assert!(!cache.poll_due(t0 + every, every));
    }

    /// The model: leaders as a map, groups and managers as given.
    #[derive(Debug, Default)]
    struct Model {
        groups: u32,
        managers: Vec<SocketAddr>,
        leaders: BTreeMap<u32, SocketAddr>,
    }

    impl Model {
        fn apply(&mut self, event: &Event) -> bool {
            let before = (self.groups, self.leaders.clone());
            match event {
                Event::Routing(r) => {
                    self.groups = r.groups;
                    if !r.managers.is_empty() {
                        self.managers = r.managers.clone();
                    }
                    let groups = self.groups;
                    self.leaders.retain(|g, _| *g < groups);
                    for l in &r.leaders {
                        if l.group < groups {
                            self.leaders.insert(l.group, l.leader);
                        }
                    }
                }
                Event::Reply(group, from, observation) if *group < self.groups => match observation
                {
                    Observation::Answered => {}
                    Observation::NotLeader { leader: Some(l) } => {
                        self.leaders.insert(*group, *l);
                    }
                    Observation::NotLeader { leader: None } | Observation::Unavailable => {
                        self.leaders.remove(group);
                    }
                    Observation::Unreachable => {
                        if self.leaders.get(group) == Some(from) {
                            self.leaders.remove(group);
                        }
                    }
                },
                Event::Reply(..) => {}
            }
            before != (self.groups, self.leaders.clone())
        }
    }

    #[derive(Debug, Clone)]
    enum Event {
        Routing(Routing),
        Reply(u32, SocketAddr, Observation),
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        (1u8..5).prop_map(addr)
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        let routing = (
            1u32..5,
            proptest::collection::vec(arb_addr(), 0..3),
            proptest::collection::vec((0u32..6, arb_addr()), 0..6),
        )
            .prop_map(|(groups, managers, leaders)| {
                Event::Routing(Routing {
                    cluster_id: "c".into(),
                    groups,
                    managers,
                    leaders: leaders
                        .into_iter()
                        .map(|(group, leader)| GroupLeader { group, leader })
                        .collect(),
                })
            });
        let observation = prop_oneof![
            Just(Observation::Answered),
            proptest::option::of(arb_addr()).prop_map(|leader| Observation::NotLeader { leader }),
            Just(Observation::Unavailable),
            Just(Observation::Unreachable),
        ];
        let reply = (0u32..6, arb_addr(), observation)
            .prop_map(|(group, from, observation)| Event::Reply(group, from, observation));
        prop_oneof![routing, reply]
    }

    proptest! {
        #[test]
        fn cache_matches_the_model(
            seeds in proptest::collection::vec(arb_addr(), 0..3),
            events in proptest::collection::vec(arb_event(), 1..40),
        ) {
            let mut cache = LeaderCache::new(seeds.clone());
            let mut model = Model { managers: seeds, ..Model::default() };
            for event in &events {
                let changed = match event {
                    Event::Routing(r) => cache.on_routing(r),
                    Event::Reply(group, from, observation) => {
                        cache.on_reply(*group, *from, *observation)
                    }
                };
                prop_assert_eq!(changed, model.apply(event), "{:?}", event);
                prop_assert_eq!(cache.groups(), model.groups);
                prop_assert_eq!(cache.managers(), &model.managers[..]);
                for group in 0..6 {
                    prop_assert_eq!(cache.leader(group), model.leaders.get(&group).copied());
                }
                let all_known = model.groups > 0
                    && (0..model.groups).all(|g| model.leaders.contains_key(&g));
                prop_assert_eq!(cache.all_leaders_known(), all_known);
                for rotation in 0..3 {
                    let target = cache.target("room.1", rotation);
                    let group = group_of("room.1", model.groups);
                    prop_assert_eq!(target.group, group);
                    let fallback = (!model.managers.is_empty())
                        .then(|| model.managers[rotation % model.managers.len()]);
                    prop_assert_eq!(
                        target.addr,
                        model.leaders.get(&group).copied().or(fallback)
                    );
                }
            }
        }
    }
}
