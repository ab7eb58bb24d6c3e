//! Operator bans and kicks in group 0's table: ids, the cap with lapsed bans dropped first,
//! the reserved meta keys, and the controls surviving a snapshot install and a reopen.

mod common;

use common::{command, Entry, TestConfig};
use firetower_proto::{Ban, BanTarget, Cidr};
use firetower_store::{Command, Controls, Response, StateStore, MAX_BANS};
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;

fn ban(target: BanTarget, created_ms: u64, expires_ms: Option<u64>) -> Command {
    Command::AddBan {
        ban: Ban {
            id: 0,
            target,
            reason: "test".into(),
            created_ms,
            expires_ms,
        },
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn bans_get_ids_and_survive_snapshots_and_reopen() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let want: Controls;
        {
            let store = StateStore::open(dir.path()).unwrap();
            let mut sm = store.state_machine::<TestConfig>(0).unwrap();
            let commands = vec![
                ban(BanTarget::User("u1".into()), 10, None),
                ban(
                    BanTarget::Ip(Cidr::parse("10.0.0.0/8").unwrap()),
                    11,
                    Some(5_000),
                ),
                ban(BanTarget::Topic("spam.*".into()), 12, None),
                Command::RemoveBan { id: 1 },
                Command::RemoveBan { id: 1 },
                Command::Kick {
                    user: "u2".into(),
                    at_ms: 13,
                },
                // The controls' keys are not for SetMeta.
                Command::SetMeta {
                    key: "ops/ban_next".into(),
                    value: vec![0; 8],
                },
            ];
            let entries: Vec<Entry> = commands
                .into_iter()
                .enumerate()
                .map(|(i, c)| command(1, i as u64 + 1, c))
                .collect();
            let responses = sm.apply(entries).await.unwrap();
            assert_eq!(responses[0], Response::BanAdded { id: 1 });
            assert_eq!(responses[1], Response::BanAdded { id: 2 });
            assert_eq!(responses[2], Response::BanAdded { id: 3 });
            assert_eq!(responses[3], Response::Applied { changed: true });
            assert!(
                matches!(&responses[4], Response::Refused { reason } if reason.contains("no ban 1"))
            );
            assert_eq!(responses[5], Response::Applied { changed: true });
            assert!(
                matches!(&responses[6], Response::Refused { reason } if reason.contains("ops/"))
            );

            let controls = sm.reader().controls().unwrap();
            assert_eq!(controls.bans_version, 4);
            assert_eq!(controls.last_kick, 1);
            assert_eq!(
                controls.bans.iter().map(|b| b.id).collect::<Vec<_>>(),
                vec![2, 3]
            );
            assert_eq!(controls.bans[0].expires_ms, Some(5_000));
            assert_eq!(sm.reader().kicks_after(0).unwrap()[0].user, "u2");
            assert!(sm.reader().kicks_after(1).unwrap().is_empty());

            // A snapshot installed into another store carries them.
            let snapshot = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            let other_dir = tempfile::tempdir().unwrap();
            let other = StateStore::open(other_dir.path()).unwrap();
            let mut fresh = other.state_machine::<TestConfig>(0).unwrap();
            fresh
                .install_snapshot(&snapshot.meta, snapshot.snapshot)
                .await
                .unwrap();
            assert_eq!(fresh.reader().controls().unwrap(), controls);
            // Ids keep counting from where the snapshot was.
            let r = fresh
                .apply(vec![command(
                    1,
                    8,
                    ban(BanTarget::User("u9".into()), 20, None),
                )])
                .await
                .unwrap();
            assert_eq!(r, vec![Response::BanAdded { id: 4 }]);
            want = controls;
            store.flush().unwrap();
        }
        // Reopened: the same controls, and the next id after the last.
        let store = StateStore::open(dir.path()).unwrap();
        let mut sm = store.state_machine::<TestConfig>(0).unwrap();
        assert_eq!(sm.reader().controls().unwrap(), want);
        let r = sm
            .apply(vec![command(
                1,
                8,
                ban(BanTarget::User("u3".into()), 20, None),
            )])
            .await
            .unwrap();
        assert_eq!(r, vec![Response::BanAdded { id: 4 }]);
    });
}

#[test]
fn a_full_ban_list_drops_lapsed_bans_before_refusing() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut sm = store.state_machine::<TestConfig>(0).unwrap();
        // All but one lapse at 1000.
        let mut entries: Vec<Entry> = (0..MAX_BANS as u64)
            .map(|i| {
                let expires = if i == 0 { None } else { Some(1_000) };
                command(1, i + 1, ban(BanTarget::User(format!("u{i}")), 1, expires))
            })
            .collect();
        let mut index = MAX_BANS as u64;
        // Full at 500: nothing has lapsed yet, so refused, and nothing changes.
        index += 1;
        entries.push(command(1, index, ban(BanTarget::User("late".into()), 500, None)));
        let responses = sm.apply(entries).await.unwrap();
        assert!(
            matches!(responses.last(), Some(Response::Refused { reason }) if reason.contains("100000 bans")),
            "{:?}",
            responses.last()
        );
        let version = sm.reader().control_versions().unwrap().0;
        assert_eq!(version, MAX_BANS as u64);
        // At 2000 the lapsed ones are dropped and the new ban fits.
        index += 1;
        let r = sm
            .apply(vec![command(
                1,
                index,
                ban(BanTarget::User("later".into()), 2_000, None),
            )])
            .await
            .unwrap();
        assert_eq!(
            r,
            vec![Response::BanAdded {
                id: MAX_BANS as u64 + 1
            }]
        );
        let controls = sm.reader().controls().unwrap();
        assert_eq!(
            controls.bans.iter().map(|b| b.id).collect::<Vec<_>>(),
            vec![1, MAX_BANS as u64 + 1]
        );
        assert!(controls.bans_version > version);
    });
}
