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
//!
//! The first routing table taken in is the cluster this gateway **joined**: its cluster id and
//! group count are pinned. A later table is checked whole before any of it is used, and
//! refused ([`RoutingRejected`], counted in [`RoutingRejections`]) when it comes from another
//! cluster, announces another group count (or more than [`MAX_GROUPS`]), lists more managers
//! than [`MAX_MANAGERS`] or more leaders than groups, or names an address no manager can
//! listen on; the last good routing stays. Why so strict: a member can be buggy too, and a
//! group count is used to hash every topic, so one wrong table would re-route every request.
//! Leaders are kept sparse (one entry per known leader), so nothing is ever allocated per
//! announced group.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use firetower_proto::group_of;

use crate::message::{MessageError, Routing};

/// Most groups a routing table may announce. The managers refuse more than 1024 at
/// `cluster init`; this bound is far above it so that raising theirs needs no gateway
/// release, and it costs nothing (leaders are stored sparsely): it only refuses a count no
/// cluster can have, like `u32::MAX`.
pub const MAX_GROUPS: u32 = 1 << 16;

/// Most managers a routing table may list. A cluster has a handful; a list of thousands is a
/// bug, and every listed manager gets a session task and a connection.
pub const MAX_MANAGERS: usize = 1024;

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

/// Why a routing table was refused (the cache kept the last good one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingRejected {
    /// The table is of another cluster than the one this gateway joined.
    #[error(
        "routing of cluster {got:?}, but this gateway joined cluster {joined:?}; \
         check that every manager address given to the gateway is of one cluster"
    )]
    ForeignCluster {
        /// The cluster id pinned at join.
        joined: String,
        /// The id the table carries.
        got: String,
    },
    /// The table announces another group count than the cluster joined.
    #[error("routing announces {got} groups, but the cluster this gateway joined has {joined}")]
    GroupCount {
        /// The group count pinned at join.
        joined: u32,
        /// The count the table announces.
        got: u32,
    },
    /// The table announces more groups than any cluster may have.
    #[error("routing announces {0} groups, more than the {MAX_GROUPS} a cluster may have")]
    TooManyGroups(u32),
    /// The table lists more managers than [`MAX_MANAGERS`].
    #[error("routing lists {0} managers, more than {MAX_MANAGERS}")]
    TooManyManagers(usize),
    /// The table lists more leaders than the cluster has groups.
    #[error("routing lists {got} leaders for {groups} groups")]
    TooManyLeaders {
        /// Leaders listed.
        got: usize,
        /// Groups of the cluster.
        groups: u32,
    },
    /// The table names the leader of a group the cluster does not have.
    #[error("routing names a leader of group {group}, outside the cluster's {groups} groups")]
    GroupOutOfRange {
        /// The group named.
        group: u32,
        /// Groups of the cluster.
        groups: u32,
    },
    /// The table names an address no manager can listen on (port 0, an unspecified,
    /// multicast or broadcast IP), or a leader that is not among the managers it lists.
    #[error("routing names {what} {addr}, which is not a manager's address")]
    AbsurdAddress {
        /// Which field.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
    },
    /// The table could not be converted at all (an unparsable address, zero groups).
    #[error("malformed routing: {0}")]
    Malformed(#[from] MessageError),
}

/// The kinds of [`RoutingRejected`], as counted (and as the label of the gateway's metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingRejectReason {
    /// [`RoutingRejected::ForeignCluster`].
    ForeignCluster,
    /// [`RoutingRejected::GroupCount`] and [`RoutingRejected::TooManyGroups`].
    GroupCount,
    /// [`RoutingRejected::TooManyManagers`] and [`RoutingRejected::TooManyLeaders`].
    TooLarge,
    /// [`RoutingRejected::GroupOutOfRange`].
    GroupOutOfRange,
    /// [`RoutingRejected::AbsurdAddress`].
    AbsurdAddress,
    /// [`RoutingRejected::Malformed`].
    Malformed,
}

impl RoutingRejectReason {
    /// Every reason, in the order [`RoutingRejections::iter`] reports them.
    pub const ALL: [RoutingRejectReason; 6] = [
        RoutingRejectReason::ForeignCluster,
        RoutingRejectReason::GroupCount,
        RoutingRejectReason::TooLarge,
        RoutingRejectReason::GroupOutOfRange,
        RoutingRejectReason::AbsurdAddress,
        RoutingRejectReason::Malformed,
    ];

    /// snake_case name, stable (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingRejectReason::ForeignCluster => "routing_foreign_cluster",
            RoutingRejectReason::GroupCount => "routing_group_count",
            RoutingRejectReason::TooLarge => "routing_too_large",
            RoutingRejectReason::GroupOutOfRange => "routing_group_out_of_range",
            RoutingRejectReason::AbsurdAddress => "routing_absurd_address",
            RoutingRejectReason::Malformed => "routing_malformed",
        }
    }
}

impl RoutingRejected {
    /// The kind, as counted.
    pub fn reason(&self) -> RoutingRejectReason {
        match self {
            RoutingRejected::ForeignCluster { .. } => RoutingRejectReason::ForeignCluster,
            RoutingRejected::GroupCount { .. } | RoutingRejected::TooManyGroups(_) => {
                RoutingRejectReason::GroupCount
            }
            RoutingRejected::TooManyManagers(_) | RoutingRejected::TooManyLeaders { .. } => {
                RoutingRejectReason::TooLarge
            }
            RoutingRejected::GroupOutOfRange { .. } => RoutingRejectReason::GroupOutOfRange,
            RoutingRejected::AbsurdAddress { .. } => RoutingRejectReason::AbsurdAddress,
            RoutingRejected::Malformed(_) => RoutingRejectReason::Malformed,
        }
    }
}

/// How many routing tables were refused, per [`RoutingRejectReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoutingRejections {
    counts: [u64; RoutingRejectReason::ALL.len()],
}

impl RoutingRejections {
    /// Refusals of this kind.
    pub fn get(&self, reason: RoutingRejectReason) -> u64 {
        self.counts[reason as usize]
    }

    /// Refusals of every kind.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(reason, count)` for every reason, zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (RoutingRejectReason, u64)> + '_ {
        RoutingRejectReason::ALL
            .iter()
            .map(|&reason| (reason, self.get(reason)))
    }

    fn record(&mut self, reason: RoutingRejectReason) {
        let slot = &mut self.counts[reason as usize];
        *slot = slot.saturating_add(1);
    }
}

/// The cluster's routing as this gateway knows it.
#[derive(Debug, Clone, Default)]
pub struct LeaderCache {
    /// 0 until the first routing table (the join) pins it.
    groups: u32,
    cluster_id: String,
    managers: Vec<SocketAddr>,
    /// Known leaders only; every key is below `groups`.
    leaders: BTreeMap<u32, SocketAddr>,
    rejections: RoutingRejections,
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

    /// The cluster id this gateway joined (empty until a routing table arrived).
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// QUIC addresses of the managers.
    pub fn managers(&self) -> &[SocketAddr] {
        &self.managers
    }

    /// The cached leader of `group`.
    pub fn leader(&self, group: u32) -> Option<SocketAddr> {
        self.leaders.get(&group).copied()
    }

    /// True when a leader is known for every group.
    pub fn all_leaders_known(&self) -> bool {
        // Every key is below `groups`, so as many leaders as groups is one for each.
        self.groups > 0 && self.leaders.len() == self.groups as usize
    }

    /// Routing tables refused so far, per reason.
    pub fn rejections(&self) -> RoutingRejections {
        self.rejections
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

    /// Take in a routing table. Returns true when a group's leader changed; refuses a table
    /// that does not fit the cluster joined (see the module doc), changing nothing.
    ///
    /// Leaders are merged: a manager that does not know a group's leader (an election it has
    /// not seen the end of) does not erase a leader this gateway learned from elsewhere.
    pub fn on_routing(&mut self, routing: &Routing) -> Result<bool, RoutingRejected> {
        if let Err(e) = self.check(routing) {
            self.rejections.record(e.reason());
            return Err(e);
        }
        let before = (self.groups, self.leaders.clone());
        if self.groups == 0 {
            // The join: pinned from now on.
            self.groups = routing.groups;
            self.cluster_id.clone_from(&routing.cluster_id);
        }
        if !routing.managers.is_empty() {
            self.managers.clone_from(&routing.managers);
        }
        for l in &routing.leaders {
            self.leaders.insert(l.group, l.leader);
        }
        Ok(before != (self.groups, self.leaders.clone()))
    }

    /// Count a routing table that could not even be converted (its [`MessageError`]).
    pub fn on_malformed_routing(&mut self, error: MessageError) -> RoutingRejected {
        let rejected = RoutingRejected::Malformed(error);
        self.rejections.record(rejected.reason());
        rejected
    }

    /// Every check of a routing table, before any of it is taken in.
    fn check(&self, routing: &Routing) -> Result<(), RoutingRejected> {
        if self.groups != 0 {
            if routing.cluster_id != self.cluster_id {
                return Err(RoutingRejected::ForeignCluster {
                    joined: self.cluster_id.clone(),
                    got: routing.cluster_id.clone(),
                });
            }
            if routing.groups != self.groups {
                return Err(RoutingRejected::GroupCount {
                    joined: self.groups,
                    got: routing.groups,
                });
            }
        }
        if routing.groups == 0 {
            return Err(RoutingRejected::Malformed(MessageError::NoGroups));
        }
        if routing.groups > MAX_GROUPS {
            return Err(RoutingRejected::TooManyGroups(routing.groups));
        }
        if routing.managers.len() > MAX_MANAGERS {
            return Err(RoutingRejected::TooManyManagers(routing.managers.len()));
        }
        if routing.leaders.len() > routing.groups as usize {
            return Err(RoutingRejected::TooManyLeaders {
                got: routing.leaders.len(),
                groups: routing.groups,
            });
        }
        for &m in &routing.managers {
            if !plausible_manager_addr(m) {
                return Err(RoutingRejected::AbsurdAddress {
                    what: "manager",
                    addr: m,
                });
            }
        }
        for l in &routing.leaders {
            if l.group >= routing.groups {
                return Err(RoutingRejected::GroupOutOfRange {
                    group: l.group,
                    groups: routing.groups,
                });
            }
            // A manager lists every member it knows, leaders included: a leader outside the
            // list is not one of them.
            let listed = routing.managers.is_empty() || routing.managers.contains(&l.leader);
            if !plausible_manager_addr(l.leader) || !listed {
                return Err(RoutingRejected::AbsurdAddress {
                    what: "leader",
                    addr: l.leader,
                });
            }
        }
        Ok(())
    }

    /// Take in what an attempt at `from` for `group` observed. Returns true when the group's
    /// leader changed. A hint naming an address no manager can listen on counts as no hint
    /// (an election), so the request tries the other managers instead.
    pub fn on_reply(&mut self, group: u32, from: SocketAddr, observation: Observation) -> bool {
        if group >= self.groups {
            return false;
        }
        let current = self.leader(group);
        let next = match observation {
            Observation::Answered => current,
            Observation::NotLeader { leader } => leader.filter(|&l| plausible_manager_addr(l)),
            Observation::Unavailable => None,
            // Unless another leader was learned meanwhile.
            Observation::Unreachable if current == Some(from) => None,
            Observation::Unreachable => current,
        };
        match next {
            Some(l) => self.leaders.insert(group, l),
            None => self.leaders.remove(&group),
        };
        current != next
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

/// False for an address no manager can be reached at: port 0, or an unspecified,
/// multicast or broadcast IP.
pub fn plausible_manager_addr(addr: SocketAddr) -> bool {
    let ip_ok = match addr.ip() {
        IpAddr::V4(ip) => !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast()),
        IpAddr::V6(ip) => !(ip.is_unspecified() || ip.is_multicast()),
    };
    ip_ok && addr.port() != 0
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
        assert_eq!(cache.on_routing(&routing(2, &[(0, 1), (1, 2)])), Ok(true));
        assert!(cache.all_leaders_known());
        assert_eq!(cache.managers(), &[addr(1), addr(2), addr(3)]);
        // A manager that knows only group 0's leader keeps group 1's.
        assert_eq!(cache.on_routing(&routing(2, &[(0, 1)])), Ok(false));
        assert_eq!(cache.leader(1), Some(addr(2)));
    }

    #[test]
    fn replies_move_and_forget_leaders() {
        let mut cache = LeaderCache::new(vec![]);
        cache.on_routing(&routing(1, &[(0, 1)])).unwrap();
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
        // A hint no manager can listen on is no hint.
        cache.on_reply(
            0,
            addr(1),
            Observation::NotLeader {
                leader: Some(addr(2)),
            },
        );
        let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
        assert!(cache.on_reply(
            0,
            addr(2),
            Observation::NotLeader {
                leader: Some(nowhere)
            }
        ));
        assert_eq!(cache.leader(0), None);
    }

    /// Issue 11: a routing table with absurd values is refused whole; the last good one stays,
    /// and nothing is allocated per announced group (`u32::MAX` groups used to resize the
    /// leader table to 4 billion entries and abort the process).
    #[test]
    fn absurd_routing_is_refused_and_the_last_good_one_stays() {
        let mut cache = LeaderCache::new(vec![addr(9)]);
        assert_eq!(
            cache.on_routing(&routing(u32::MAX, &[(0, 1)])),
            Err(RoutingRejected::TooManyGroups(u32::MAX))
        );
        assert_eq!(cache.groups(), 0, "a refused table is not a join");
        cache.on_routing(&routing(2, &[(0, 1), (1, 2)])).unwrap();
        let good = (cache.groups(), cache.leader(0), cache.leader(1));

        let mut other = routing(2, &[(0, 3)]);
        other.cluster_id = "other".into();
        let refusals = [
            (other, RoutingRejectReason::ForeignCluster),
            (
                routing(u32::MAX, &[(0, 3)]),
                RoutingRejectReason::GroupCount,
            ),
            (routing(3, &[(0, 3)]), RoutingRejectReason::GroupCount),
            (routing(0, &[]), RoutingRejectReason::GroupCount),
            (routing(2, &[(2, 3)]), RoutingRejectReason::GroupOutOfRange),
            (
                routing(2, &[(0, 3), (1, 3), (0, 2)]),
                RoutingRejectReason::TooLarge,
            ),
            (
                Routing {
                    managers: vec![addr(1); MAX_MANAGERS + 1],
                    ..routing(2, &[])
                },
                RoutingRejectReason::TooLarge,
            ),
            (
                Routing {
                    leaders: vec![GroupLeader {
                        group: 0,
                        leader: SocketAddr::from(([0, 0, 0, 0], 6666)),
                    }],
                    ..routing(2, &[])
                },
                RoutingRejectReason::AbsurdAddress,
            ),
            (
                Routing {
                    leaders: vec![GroupLeader {
                        group: 0,
                        leader: SocketAddr::from(([224, 0, 0, 1], 6666)),
                    }],
                    ..routing(2, &[])
                },
                RoutingRejectReason::AbsurdAddress,
            ),
            (
                Routing {
                    managers: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
                    ..routing(2, &[])
                },
                RoutingRejectReason::AbsurdAddress,
            ),
            // A leader that is not among the managers the same table lists.
            (routing(2, &[(0, 7)]), RoutingRejectReason::AbsurdAddress),
        ];
        for (i, (table, reason)) in refusals.iter().enumerate() {
            let refused = cache.on_routing(table).expect_err("refused");
            assert_eq!(refused.reason(), *reason, "{refused}");
            assert_eq!((cache.groups(), cache.leader(0), cache.leader(1)), good);
            assert_eq!(cache.managers(), &[addr(1), addr(2), addr(3)]);
            assert_eq!(cache.rejections().total(), i as u64 + 2);
        }
        assert_eq!(
            cache.rejections().get(RoutingRejectReason::AbsurdAddress),
            4
        );
        assert_eq!(cache.cluster_id(), "c");
        assert!(cache.all_leaders_known());
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

    /// The model: leaders as a map, groups and cluster id pinned by the first table taken in.
    #[derive(Debug, Default)]
    struct Model {
        groups: u32,
        cluster_id: String,
        managers: Vec<SocketAddr>,
        leaders: BTreeMap<u32, SocketAddr>,
        rejected: u64,
    }

    impl Model {
        fn accepts(&self, r: &Routing) -> bool {
            let pinned =
                self.groups == 0 || (r.cluster_id == self.cluster_id && r.groups == self.groups);
            pinned
                && (1..=MAX_GROUPS).contains(&r.groups)
                && r.leaders.len() <= r.groups as usize
                && r.leaders.iter().all(|l| {
                    l.group < r.groups && (r.managers.is_empty() || r.managers.contains(&l.leader))
                })
        }

        fn apply(&mut self, event: &Event) -> bool {
            let before = (self.groups, self.leaders.clone());
            match event {
                Event::Routing(r) if !self.accepts(r) => self.rejected += 1,
                Event::Routing(r) => {
                    if self.groups == 0 {
                        self.groups = r.groups;
                        self.cluster_id = r.cluster_id.clone();
                    }
                    if !r.managers.is_empty() {
                        self.managers = r.managers.clone();
                    }
                    for l in &r.leaders {
                        self.leaders.insert(l.group, l.leader);
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
            prop_oneof![4 => Just("c"), 1 => Just("other")],
            prop_oneof![4 => 1u32..3, 1 => Just(u32::MAX)],
            proptest::collection::vec(arb_addr(), 0..4),
            proptest::collection::vec((0u32..3, arb_addr()), 0..4),
        )
            .prop_map(|(cluster_id, groups, managers, leaders)| {
                Event::Routing(Routing {
                    cluster_id: cluster_id.into(),
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
                    Event::Routing(r) => cache.on_routing(r).unwrap_or(false),
                    Event::Reply(group, from, observation) => {
                        cache.on_reply(*group, *from, *observation)
                    }
                };
                prop_assert_eq!(changed, model.apply(event), "{:?}", event);
                prop_assert_eq!(cache.groups(), model.groups);
                prop_assert_eq!(cache.cluster_id(), &model.cluster_id[..]);
                prop_assert_eq!(cache.rejections().total(), model.rejected);
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
