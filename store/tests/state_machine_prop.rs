//! The state machine against a plain in-memory model: random command sequences, applied in
//! random batches, must give the same responses and the same table; so must a snapshot
//! installed into a fresh state machine, and the database reopened.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{command, Entry, TestConfig};
use firetower_proto::{Ban, BanTarget};
use firetower_store::{
    Command, GatewayId, KickRecord, Response, Session, StateStore, TableReader, KICKS_KEPT,
};
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use proptest::prelude::*;

const TOPICS: [&str; 5] = ["a", "b", "a\0b", "", "room.1"];
const GATEWAYS: std::ops::Range<GatewayId> = 0..4;
const KEYS: [&str; 2] = ["hot.k", "registry"];

/// What the table should be: plain maps and sets.
#[derive(Debug, Default)]
struct Model {
    subs: BTreeMap<String, BTreeSet<GatewayId>>,
    sessions: BTreeMap<GatewayId, Session>,
    blacklist: BTreeSet<GatewayId>,
    meta: BTreeMap<String, Vec<u8>>,
    bans: BTreeMap<u64, Ban>,
    next_ban: u64,
    bans_version: u64,
    kicks: Vec<KickRecord>,
}

fn refused() -> Response {
    Response::Refused {
        reason: String::new(),
    }
}

impl Model {
    fn apply(&mut self, command: &Command) -> Response {
        let applied = |changed| Response::Applied { changed };
        match command {
            Command::Batch(commands) => {
                Response::Batch(commands.iter().map(|c| self.apply(c)).collect())
            }
            Command::Subscribe { topic, gateway } => {
                if self.blacklist.contains(gateway) {
                    return refused();
                }
                applied(self.subs.entry(topic.clone()).or_default().insert(*gateway))
            }
            Command::Unsubscribe { topic, gateway } => {
                if self.blacklist.contains(gateway) {
                    return refused();
                }
                applied(self.unsubscribe(topic, *gateway))
            }
            Command::OpenSession {
                gateway,
                epoch,
                lease_ms,
            } => {
                if self.blacklist.contains(gateway) {
                    return refused();
                }
                let new = Session {
                    epoch: *epoch,
                    lease_ms: *lease_ms,
                };
                match self.sessions.get(gateway) {
                    Some(s) if s.epoch > *epoch => refused(),
                    old => {
                        let changed = old != Some(&new);
                        self.sessions.insert(*gateway, new);
                        applied(changed)
                    }
                }
            }
            Command::ExpireSession { gateway, epoch } => {
                if self.sessions.get(gateway).map(|s| s.epoch) != Some(*epoch) {
                    return applied(false);
                }
                self.sessions.remove(gateway);
                let topics: Vec<String> = self.subs.keys().cloned().collect();
                for topic in topics {
                    self.unsubscribe(&topic, *gateway);
                }
                applied(true)
            }
            Command::Blacklist { gateway, blocked } => {
                let changed = if *blocked {
                    self.blacklist.insert(*gateway)
                } else {
                    self.blacklist.remove(gateway)
                };
                applied(changed)
            }
            Command::AddBan { ban } => {
                self.next_ban = self.next_ban.max(1);
                let id = self.next_ban;
                self.next_ban += 1;
                self.bans.insert(id, Ban { id, ..ban.clone() });
                self.bans_version += 1;
                Response::BanAdded { id }
            }
            Command::RemoveBan { id } => {
                if self.bans.remove(id).is_none() {
                    return refused();
                }
                self.bans_version += 1;
                applied(true)
            }
            Command::Kick { user, at_ms } => {
                let seq = self.kicks.last().map_or(0, |k| k.seq) + 1;
                self.kicks.push(KickRecord {
                    seq,
                    user: user.clone(),
                    at_ms: *at_ms,
                });
                if self.kicks.len() as u64 > KICKS_KEPT {
                    self.kicks.remove(0);
                }
                applied(true)
            }
            // History and presence have their own tests (store/tests/history.rs); the
            // generator below does not make these commands.
            Command::SetHistory { .. }
            | Command::RemoveHistory { .. }
            | Command::SetPresence { .. }
            | Command::HistoryAppend { .. }
            | Command::SetPresenceCount { .. } => unreachable!("not generated: {command:?}"),
            Command::SetMeta { key, value } => {
                let changed = if value.is_empty() {
                    self.meta.remove(key).is_some()
                } else {
                    self.meta.insert(key.clone(), value.clone()).as_ref() != Some(value)
                };
                applied(changed)
            }
        }
    }

    fn unsubscribe(&mut self, topic: &str, gateway: GatewayId) -> bool {
        let Some(gateways) = self.subs.get_mut(topic) else {
            return false;
        };
        let removed = gateways.remove(&gateway);
        if gateways.is_empty() {
            self.subs.remove(topic);
        }
        removed
    }

    /// Asserts that `reader` shows exactly this model.
    fn check(&self, reader: &TableReader) {
        for topic in TOPICS {
            let want: Vec<GatewayId> = self
                .subs
                .get(topic)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            assert_eq!(
                reader.gateways(topic).unwrap(),
                want,
                "gateways of {topic:?}"
            );
        }
        for gateway in GATEWAYS {
            let want: Vec<String> = self
                .subs
                .iter()
                .filter(|(_, g)| g.contains(&gateway))
                .map(|(t, _)| t.clone())
                .collect();
            assert_eq!(
                reader.topics_of(gateway).unwrap(),
                want,
                "topics of {gateway}"
            );
            assert_eq!(
                reader.session(gateway).unwrap(),
                self.sessions.get(&gateway).copied()
            );
            assert_eq!(
                reader.is_blacklisted(gateway).unwrap(),
                self.blacklist.contains(&gateway)
            );
        }
        let sessions: Vec<(GatewayId, Session)> =
            self.sessions.iter().map(|(g, s)| (*g, *s)).collect();
        assert_eq!(reader.sessions().unwrap(), sessions);
        for key in KEYS {
            assert_eq!(
                reader.meta(key).unwrap(),
                self.meta.get(key).cloned(),
                "meta {key}"
            );
        }
        assert_eq!(reader.topic_count().unwrap(), self.subs.len() as u64);
        let controls = reader.controls().unwrap();
        assert_eq!(
            controls.bans,
            self.bans.values().cloned().collect::<Vec<_>>()
        );
        assert_eq!(controls.bans_version, self.bans_version);
        assert_eq!(controls.last_kick, self.kicks.last().map_or(0, |k| k.seq));
        assert_eq!(
            reader.control_versions().unwrap(),
            (controls.bans_version, controls.last_kick)
        );
        assert_eq!(reader.kicks_after(0).unwrap(), self.kicks);
    }
}

/// Responses compared with the reason text of refusals ignored.
fn shape(r: &Response) -> Response {
    match r {
        Response::Refused { .. } => refused(),
        Response::Batch(rs) => Response::Batch(rs.iter().map(shape).collect()),
        other => other.clone(),
    }
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        8 => arb_single(),
        1 => proptest::collection::vec(arb_single(), 0..6).prop_map(Command::Batch),
    ]
}

fn arb_single() -> impl Strategy<Value = Command> {
    let topic = proptest::sample::select(TOPICS.to_vec()).prop_map(String::from);
    let gateway = GATEWAYS;
    prop_oneof![
        4 => (topic.clone(), gateway.clone()).prop_map(|(topic, gateway)| Command::Subscribe { topic, gateway }),
        2 => (topic, gateway.clone()).prop_map(|(topic, gateway)| Command::Unsubscribe { topic, gateway }),
        2 => (gateway.clone(), 0u64..4, 0u64..3)
            .prop_map(|(gateway, epoch, lease_ms)| Command::OpenSession { gateway, epoch, lease_ms }),
        2 => (gateway.clone(), 0u64..4).prop_map(|(gateway, epoch)| Command::ExpireSession { gateway, epoch }),
        1 => (gateway, any::<bool>()).prop_map(|(gateway, blocked)| Command::Blacklist { gateway, blocked }),
        1 => (proptest::sample::select(KEYS.to_vec()), proptest::collection::vec(0u8..3, 0..3))
            .prop_map(|(key, value)| Command::SetMeta { key: key.to_string(), value }),
        1 => (0u8..3, 0u64..10, proptest::option::of(0u64..20)).prop_map(|(u, created_ms, expires_ms)| {
            Command::AddBan {
                ban: Ban {
                    id: 0,
                    target: BanTarget::User(format!("u{u}")),
                    reason: "r".into(),
                    created_ms,
                    expires_ms,
                },
            }
        }),
        1 => (0u64..6).prop_map(|id| Command::RemoveBan { id }),
        1 => (0u8..3, 0u64..100).prop_map(|(u, at_ms)| Command::Kick { user: format!("u{u}"), at_ms }),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn matches_model(commands in proptest::collection::vec(arb_command(), 0..80), cuts in proptest::collection::vec(1usize..8, 1..20)) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut model = Model::default();
            {
                let store = StateStore::open(dir.path()).unwrap();
                let mut sm = store.state_machine::<TestConfig>(1).unwrap();
                // An unrelated group in the same database must not interfere.
                let mut other = store.state_machine::<TestConfig>(2).unwrap();
                other.apply([command(1, 1, Command::Subscribe { topic: "a".into(), gateway: 3 })]).await.unwrap();

                let entries: Vec<Entry> = commands.iter().enumerate().map(|(i, c)| command(1, i as u64 + 1, c.clone())).collect();
                let mut rest = entries.as_slice();
                let mut cut = cuts.iter().cycle();
                while !rest.is_empty() {
                    let n = (*cut.next().unwrap()).min(rest.len());
                    let (batch, tail) = rest.split_at(n);
                    rest = tail;
                    let responses = sm.apply(batch.to_vec()).await.unwrap();
                    for (entry, response) in batch.iter().zip(&responses) {
                        let openraft::EntryPayload::Normal(c) = &entry.payload else { unreachable!() };
                        assert_eq!(shape(response), model.apply(c), "response to {c:?}");
                    }
                }
                model.check(&sm.reader());
                let (applied, _) = sm.applied_state().await.unwrap();
                assert_eq!(applied.map(|l| l.index), entries.last().map(|e| e.log_id.index));

                // Snapshot, installed into a fresh state machine elsewhere.
                let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
                let other_dir = tempfile::tempdir().unwrap();
                let other_store = StateStore::open(other_dir.path()).unwrap();
                let mut fresh = other_store.state_machine::<TestConfig>(1).unwrap();
                // Stale data in the follower is replaced, not merged.
                fresh.apply([command(1, 1, Command::Subscribe { topic: "b".into(), gateway: 3 })]).await.unwrap();
                let mut data = fresh.begin_receiving_snapshot().await.unwrap();
                *data = *snapshot.snapshot;
                fresh.install_snapshot(&snapshot.meta, data).await.unwrap();
                model.check(&fresh.reader());
                assert_eq!(fresh.applied_state().await.unwrap().0, snapshot.meta.last_log_id);
            }
            // Reopened: everything applied is still there.
            let store = StateStore::open(dir.path()).unwrap();
            let sm = store.state_machine::<TestConfig>(1).unwrap();
            model.check(&sm.reader());
        });
    }
}

/// sled lost its recent writes (here: a group's trees wiped) while the snapshot survived:
/// opening the state machine restores the snapshot.
#[test]
fn restores_from_snapshot_when_sled_is_behind() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Model::default();
        {
            let store = StateStore::open(dir.path()).unwrap();
            let mut sm = store.state_machine::<TestConfig>(0).unwrap();
            let cmds = [
                Command::OpenSession {
                    gateway: 1,
                    epoch: 1,
                    lease_ms: 500,
                },
                Command::Subscribe {
                    topic: "room.1".into(),
                    gateway: 1,
                },
                Command::Subscribe {
                    topic: "b".into(),
                    gateway: 2,
                },
                Command::SetMeta {
                    key: "registry".into(),
                    value: vec![1],
                },
            ];
            let entries: Vec<Entry> = cmds
                .iter()
                .enumerate()
                .map(|(i, c)| command(2, i as u64 + 1, c.clone()))
                .collect();
            for c in &cmds {
                model.apply(c);
            }
            sm.apply(entries).await.unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
        }
        {
            let db = sled::open(dir.path().join("sled")).unwrap();
            // Group 0's tables live in the sled tree "g0"; losing it must be repaired.
            assert!(db.tree_names().iter().any(|n| n.as_ref() == b"g0"));
            let tree = db.open_tree("g0").unwrap();
            assert!(!tree.is_empty());
            tree.clear().unwrap();
            db.flush().unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        let mut sm = store.state_machine::<TestConfig>(0).unwrap();
        model.check(&sm.reader());
        assert_eq!(
            sm.applied_state().await.unwrap().0.map(|l| l.index),
            Some(4)
        );
    });
}

/// A crash in the middle of a round that sled got in several batches: the tree holds some of
/// the round's keys but no `last_applied`. Without a snapshot, opening the state machine starts
/// the group from an empty table (openraft re-applies the whole log, which was never purged),
/// so re-applying the entries cannot count a subscription twice. A large round written whole
/// keeps every key.
#[test]
fn a_partial_round_in_sled_is_dropped_and_the_log_reapplied() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cmds: Vec<Command> = std::iter::once(Command::OpenSession {
            gateway: 1,
            epoch: 1,
            lease_ms: 500,
        })
        .chain((0..2_000).map(|i| Command::Subscribe {
            topic: format!("room.{i}"),
            gateway: 1,
        }))
        .collect();
        let entries = || -> Vec<Entry> {
            cmds.iter()
                .enumerate()
                .map(|(i, c)| command(2, i as u64 + 1, c.clone()))
                .collect()
        };
        let mut model = Model::default();
        for c in &cmds {
            model.apply(c);
        }
        {
            let store = StateStore::open(dir.path()).unwrap();
            let mut sm = store.state_machine::<TestConfig>(0).unwrap();
            sm.apply(entries()).await.unwrap();
            store.flush().unwrap();
        }
        // Written whole (in many batches: 6,000 keys): everything is back on open.
        {
            let store = StateStore::open(dir.path()).unwrap();
            let mut sm = store.state_machine::<TestConfig>(0).unwrap();
            model.check(&sm.reader());
            assert_eq!(
                sm.applied_state().await.unwrap().0.map(|l| l.index),
                Some(2_001)
            );
        }
        // What a crash after the first batches of that round leaves: keys, no marker.
        {
            let db = sled::open(dir.path().join("sled")).unwrap();
            let tree = db.open_tree("g0").unwrap();
            let marker: Vec<u8> = tree
                .iter()
                .keys()
                .map(|k| k.unwrap().to_vec())
                .find(|k| k.ends_with(b"last_applied"))
                .expect("the marker is in the tree");
            tree.remove(&marker).unwrap();
            db.flush().unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        let mut sm = store.state_machine::<TestConfig>(0).unwrap();
        assert_eq!(sm.applied_state().await.unwrap().0, None);
        assert_eq!(
            sm.reader().topic_count().unwrap(),
            0,
            "the partial table was dropped"
        );
        assert!(sm.reader().topics_of(1).unwrap().is_empty());
        // openraft re-applies the log from the start: the same table as before.
        sm.apply(entries()).await.unwrap();
        model.check(&sm.reader());
    });
}
