//! Gateway session leases on a manager: which sessions recorded in a group's table have run
//! out of their lease at `now`. Plain data, no locks, no clock of its own: heartbeats and
//! rounds carry their time, so expiry is tested without a runtime.
//!
//! ```text
//!   heartbeat(gw, epoch, now)          a frame arrived on the session stream of `epoch`
//!        │ (an epoch older than the one last heard from `gw` is stale: ignored)
//!        ▼
//!   heard[gw] = (epoch, now)
//!
//!   due(led_since, table, live, now)   one lease round of a group this manager leads
//!        │ for each session (gw, epoch, lease) recorded in the table:
//!        │   live here with that epoch?                 ─▶ not due
//!        │   start = max(led_since, heard[gw] if same epoch, first round that saw it)
//!        │   now - start > lease?                        ─▶ due: propose ExpireSession
//!        ▼
//!   expired(gw, epoch)                 the ExpireSession committed: forget the epoch
//! ```
//!
//! Why the lease starts at the latest of the three: a manager that just became leader cannot
//! know when the session was last heard from elsewhere, and a session registered through
//! another manager gets a whole lease to connect here.
//!
//! ```text
//!   orphans_due(group, led_since, orphans, lease, now)
//!        │ orphans: gateways with subscriptions in the group's table but no session there
//!        │ and no live stream here (a subscription that predates the session rule, or one
//!        │ committed under an earlier leader)
//!        │   start = max(led_since, first round of this group that saw it orphaned)
//!        │   now - start > lease?                        ─▶ due: drop its subscriptions
//!        ▼
//! ```
//!
//! An orphan gets the same whole lease from first sight as a session would, so a gateway that
//! is registering its session right now (live elsewhere, its `OpenSession` on its way) is not
//! swept; one that stops being an orphan is forgotten at the next round.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use firetower_proto::{Epoch, GatewayId};

/// A session as one group's table records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeldSession {
    /// Whose session.
    pub gateway: GatewayId,
    /// Which run of the gateway.
    pub epoch: Epoch,
    /// How long it may go unheard.
    pub lease: Duration,
}

/// When each gateway session was last heard from, manager-wide.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    /// The epoch last heard from each gateway, and when (kept after its stream drops).
    heard: HashMap<GatewayId, (Epoch, Instant)>,
    /// When a round first saw each (gateway, epoch) in a table without a live session.
    first_seen: HashMap<(GatewayId, Epoch), Instant>,
    /// When a round of each group first saw each gateway orphaned (see the module doc).
    orphans_seen: HashMap<(u32, GatewayId), Instant>,
}

impl Leases {
    /// A frame arrived from `gateway`'s session `epoch` at `now`. A frame of an epoch older
    /// than the one last heard is a leftover of the gateway's previous run: ignored.
    pub(crate) fn heartbeat(&mut self, gateway: GatewayId, epoch: Epoch, now: Instant) {
        match self.heard.get(&gateway) {
            Some((known, _)) if *known > epoch => {}
            _ => {
                self.heard.insert(gateway, (epoch, now));
            }
        }
    }

    /// When `gateway`'s session `epoch` was last heard from, if it is the latest heard.
    pub(crate) fn last_heard(&self, gateway: GatewayId, epoch: Epoch) -> Option<Instant> {
        self.heard
            .get(&gateway)
            .filter(|(e, _)| *e == epoch)
            .map(|(_, at)| *at)
    }

    /// The newest epoch heard from `gateway` (kept after its stream drops, until it expires).
    pub(crate) fn latest_epoch(&self, gateway: GatewayId) -> Option<Epoch> {
        self.heard.get(&gateway).map(|(e, _)| *e)
    }

    /// The sessions of a group's `table` whose lease ran out at `now`, for a manager that has
    /// led the group since `led_since`. `live` gives the epoch of a gateway's live session
    /// stream here, if any: a live session is never due.
    pub(crate) fn due(
        &mut self,
        led_since: Instant,
        table: &[HeldSession],
        live: impl Fn(GatewayId) -> Option<Epoch>,
        now: Instant,
    ) -> Vec<HeldSession> {
        let mut due = Vec::new();
        for session in table {
            if live(session.gateway) == Some(session.epoch) {
                continue;
            }
            let heard = self.last_heard(session.gateway, session.epoch);
            let seen = *self
                .first_seen
                .entry((session.gateway, session.epoch))
                .or_insert(now);
            let start = [led_since, seen]
                .into_iter()
                .chain(heard)
                .max()
                .unwrap_or(led_since);
            if now.saturating_duration_since(start) > session.lease {
                due.push(*session);
            }
        }
        due
    }

    /// The orphans of `group` (module doc) whose lease ran out at `now`, for a manager that has
    /// led the group since `led_since`. Gateways of the group no longer in `orphans` are
    /// forgotten.
    pub(crate) fn orphans_due(
        &mut self,
        group: u32,
        led_since: Instant,
        orphans: &[GatewayId],
        lease: Duration,
        now: Instant,
    ) -> Vec<GatewayId> {
        self.orphans_seen
            .retain(|(g, gateway), _| *g != group || orphans.contains(gateway));
        let mut due = Vec::new();
        for gateway in orphans {
            let seen = *self.orphans_seen.entry((group, *gateway)).or_insert(now);
            if now.saturating_duration_since(seen.max(led_since)) > lease {
                due.push(*gateway);
            }
        }
        due
    }

    /// The expiry of `gateway`'s session `epoch` committed: forget what was kept about it,
    /// and about its older epochs (replaced in the table, they can only come back as a new
    /// registration, whose lease must start afresh).
    pub(crate) fn expired(&mut self, gateway: GatewayId, epoch: Epoch) {
        if self.heard.get(&gateway).is_some_and(|(e, _)| *e == epoch) {
            self.heard.remove(&gateway);
        }
        self.first_seen
            .retain(|(g, e), _| *g != gateway || *e > epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashSet};

    const LEASE: Duration = Duration::from_millis(1_000);

    fn held(gateway: u64, epoch: u64) -> HeldSession {
        HeldSession {
            gateway: GatewayId(gateway),
            epoch: Epoch(epoch),
            lease: LEASE,
        }
    }

    #[test]
    fn a_session_expires_only_after_a_whole_lease_unheard() {
        let t0 = Instant::now();
        let mut leases = Leases::default();
        let table = [held(1, 1)];
        leases.heartbeat(GatewayId(1), Epoch(1), t0);
        let none = |_| None;
        assert!(leases.due(t0, &table, none, t0 + LEASE).is_empty());
        leases.heartbeat(GatewayId(1), Epoch(1), t0 + LEASE);
        assert!(leases
            .due(t0, &table, none, t0 + LEASE * 2 - Duration::from_millis(1))
            .is_empty());
        assert_eq!(
            leases.due(t0, &table, none, t0 + LEASE * 2 + Duration::from_millis(1)),
            vec![held(1, 1)]
        );
    }

    #[test]
    fn a_live_session_never_expires() {
        let t0 = Instant::now();
        let mut leases = Leases::default();
        let table = [held(1, 1)];
        let live = |g: GatewayId| (g == GatewayId(1)).then_some(Epoch(1));
        assert!(leases.due(t0, &table, live, t0 + LEASE * 10).is_empty());
    }

    #[test]
    fn the_lease_counts_from_leadership_and_first_sight() {
        let t0 = Instant::now();
        let mut leases = Leases::default();
        let table = [held(1, 1)];
        let none = |_| None;
        // First seen at t0 + 5 lease: nothing due until a lease later, though the manager
        // led the group since t0.
        assert!(leases.due(t0, &table, none, t0 + LEASE * 5).is_empty());
        assert!(leases.due(t0, &table, none, t0 + LEASE * 6).is_empty());
        assert_eq!(
            leases.due(t0, &table, none, t0 + LEASE * 6 + Duration::from_millis(1)),
            vec![held(1, 1)]
        );
    }

    #[test]
    fn heartbeats_of_an_older_epoch_are_ignored() {
        let t0 = Instant::now();
        let mut leases = Leases::default();
        leases.heartbeat(GatewayId(1), Epoch(2), t0);
        leases.heartbeat(GatewayId(1), Epoch(1), t0 + LEASE);
        assert_eq!(leases.last_heard(GatewayId(1), Epoch(2)), Some(t0));
        assert_eq!(leases.last_heard(GatewayId(1), Epoch(1)), None);
        leases.heartbeat(GatewayId(1), Epoch(3), t0 + LEASE);
        assert_eq!(leases.last_heard(GatewayId(1), Epoch(3)), Some(t0 + LEASE));
    }

    #[test]
    fn an_orphan_is_due_a_lease_after_first_sight_and_forgotten_once_adopted() {
        let t0 = Instant::now();
        let mut leases = Leases::default();
        let orphan = [GatewayId(9)];
        assert!(leases.orphans_due(0, t0, &orphan, LEASE, t0).is_empty());
        assert!(leases
            .orphans_due(0, t0, &orphan, LEASE, t0 + LEASE)
            .is_empty());
        // Another group sees it later: its own lease.
        assert!(leases
            .orphans_due(1, t0, &orphan, LEASE, t0 + LEASE)
            .is_empty());
        let later = t0 + LEASE + Duration::from_millis(1);
        assert_eq!(
            leases.orphans_due(0, t0, &orphan, LEASE, later),
            vec![GatewayId(9)]
        );
        assert!(leases.orphans_due(1, t0, &orphan, LEASE, later).is_empty());
        // It opened a session: no longer an orphan, forgotten; orphaned again, a new lease.
        assert!(leases.orphans_due(0, t0, &[], LEASE, later).is_empty());
        assert!(leases
            .orphans_due(0, t0, &orphan, LEASE, later + LEASE)
            .is_empty());
        // A new leader gives a whole lease from when it started to lead.
        let mut fresh = Leases::default();
        let led = t0 + LEASE * 3;
        assert!(fresh
            .orphans_due(0, led, &orphan, LEASE, t0 + LEASE * 2)
            .is_empty());
        assert!(fresh
            .orphans_due(0, led, &orphan, LEASE, led + LEASE)
            .is_empty());
        assert_eq!(
            fresh.orphans_due(0, led, &orphan, LEASE, led + LEASE * 2),
            vec![GatewayId(9)]
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Time passes (ms).
        Advance(u64),
        /// A frame from gateway `g`'s session of epoch `e`.
        Heartbeat { g: u64, e: u64 },
        /// Gateway `g` opens a session stream here with epoch `e` (recorded in the table).
        Connect { g: u64, e: u64 },
        /// Gateway `g`'s stream drops.
        Disconnect { g: u64 },
        /// A lease round; due sessions are expired (their ExpireSession commits).
        Round,
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..700).prop_map(Op::Advance),
            (0u64..3, 1u64..4).prop_map(|(g, e)| Op::Heartbeat { g, e }),
            (0u64..3, 1u64..4).prop_map(|(g, e)| Op::Connect { g, e }),
            (0u64..3).prop_map(|g| Op::Disconnect { g }),
            Just(Op::Round),
            Just(Op::Round),
        ]
    }

    /// The lease rule written plainly: per recorded session, the instant its lease started
    /// to run, which heartbeats of its epoch push forward.
    #[derive(Debug, Default)]
    struct Model {
        now: u64,
        /// gateway -> (epoch, lease start in ms), the group's table.
        table: BTreeMap<u64, (u64, Option<u64>)>,
        /// gateway -> latest epoch heard and when.
        heard: BTreeMap<u64, (u64, u64)>,
        /// gateway -> epoch of its live stream.
        live: BTreeMap<u64, u64>,
        /// Every (gateway, epoch) expired so far.
        expired: HashSet<(u64, u64)>,
    }

    proptest! {
        #[test]
        fn leases_match_the_model(ops in proptest::collection::vec(arb_op(), 1..250)) {
            let t0 = Instant::now();
            let lease_ms = LEASE.as_millis() as u64;
            let mut leases = Leases::default();
            let mut m = Model::default();
            for op in ops {
                let now = t0 + Duration::from_millis(m.now);
                match op {
                    Op::Advance(ms) => m.now += ms,
                    Op::Heartbeat { g, e } => {
                        leases.heartbeat(GatewayId(g), Epoch(e), now);
                        if m.heard.get(&g).is_none_or(|(known, _)| *known <= e) {
                            m.heard.insert(g, (e, m.now));
                        }
                    }
                    Op::Connect { g, e } => {
                        // The table only takes a newer epoch (ExpireSession of the old one,
                        // then OpenSession), as `ensure_session` does.
                        if m.table.get(&g).is_none_or(|(old, _)| *old < e) {
                            m.table.insert(g, (e, None));
                            // A new registration: it may expire once more.
                            m.expired.remove(&(g, e));
                        }
                        let recorded = m.table[&g].0;
                        m.live.insert(g, recorded);
                        leases.heartbeat(GatewayId(g), Epoch(recorded), now);
                        if m.heard.get(&g).is_none_or(|(known, _)| *known <= recorded) {
                            m.heard.insert(g, (recorded, m.now));
                        }
                    }
                    Op::Disconnect { g } => {
                        m.live.remove(&g);
                    }
                    Op::Round => {
                        let table: Vec<HeldSession> = m
                            .table
                            .iter()
                            .map(|(g, (e, _))| held(*g, *e))
                            .collect();
                        let live = m.live.clone();
                        let got = leases.due(
                            t0,
                            &table,
                            |g| live.get(&g.0).map(|e| Epoch(*e)),
                            now,
                        );
                        // The model: a session not live here is due iff neither its first
                        // sighting by a round nor its epoch's last heartbeat is within the
                        // lease.
                        let mut want = Vec::new();
                        for (g, (e, seen)) in m.table.iter_mut() {
                            if m.live.get(g) == Some(e) {
                                continue;
                            }
                            let seen = *seen.get_or_insert(m.now);
                            let heard = m
                                .heard
                                .get(g)
                                .filter(|(he, _)| he == e)
                                .map(|(_, at)| *at)
                                .unwrap_or(0);
                            if m.now - seen.max(heard) > lease_ms {
                                want.push(held(*g, *e));
                            }
                        }
                        prop_assert_eq!(&got, &want);
                        for s in got {
                            // Exactly once per epoch.
                            prop_assert!(m.expired.insert((s.gateway.0, s.epoch.0)));
                            // Never a session heard from within its lease.
                            if let Some((he, at)) = m.heard.get(&s.gateway.0) {
                                if *he == s.epoch.0 {
                                    prop_assert!(m.now - at > lease_ms);
                                }
                            }
                            leases.expired(s.gateway, s.epoch);
                            m.table.remove(&s.gateway.0);
                            if m.heard.get(&s.gateway.0).is_some_and(|(he, _)| *he == s.epoch.0) {
                                m.heard.remove(&s.gateway.0);
                            }
                        }
                    }
                }
            }
        }
    }
}
