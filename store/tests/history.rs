//! History and presence in the state machine against a plain model: random appends to a few
//! topics with random windows and clocks keep exactly the messages the model keeps, under
//! contiguous offsets and a stable epoch; a snapshot carries them; presence counts users over
//! gateways and a session's expiry makes its users leave once.

mod common;

use std::collections::{BTreeMap, VecDeque};

use common::{command, TestConfig};
use firetower_store::{Command, Response, StateStore};
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use proptest::prelude::*;

const TOPICS: [&str; 3] = ["chat.1", "chat.2", "chat.10"];

#[derive(Debug, Clone)]
struct Append {
    topic: usize,
    len: usize,
    size: u32,
    ttl_ms: u64,
    step_ms: u64,
}

fn arb_append() -> impl Strategy<Value = Append> {
    (0usize..3, 0usize..40, 1u32..6, 1u64..50, 0u64..20).prop_map(
        |(topic, len, size, ttl_ms, step_ms)| Append {
            topic,
            len,
            size,
            ttl_ms,
            step_ms,
        },
    )
}

/// One kept message in the model: (offset, at_ms, ttl_ms, data).
type Kept = (u64, u64, u64, Vec<u8>);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn keeps_what_the_model_keeps(appends in proptest::collection::vec(arb_append(), 1..60)) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = StateStore::open(dir.path()).unwrap();
            let mut sm = store.state_machine::<TestConfig>(1).unwrap();
            let mut model: BTreeMap<usize, (u64, VecDeque<Kept>)> = BTreeMap::new();
            let mut epochs: BTreeMap<usize, String> = BTreeMap::new();
            let mut now = 1_000u64;
            for (i, a) in appends.iter().enumerate() {
                now += a.step_ms;
                let data = vec![b'x'; a.len];
                let c = Command::HistoryAppend {
                    topic: TOPICS[a.topic].into(),
                    data: data.clone(),
                    json: false,
                    at_ms: now,
                    size: a.size,
                    ttl_ms: a.ttl_ms,
                };
                let responses = sm.apply([command(2, i as u64 + 1, c)]).await.unwrap();
                let Response::HistoryAppended { offset, epoch, term, .. } = &responses[0] else {
                    panic!("unexpected {:?}", responses[0]);
                };
                assert_eq!(*term, 2);
                // Model: the topic's window as of this append (size, then TTL), then the
                // group-wide expiry of every topic (all tiny here: no byte pressure).
                let entry = model.entry(a.topic).or_insert((0, VecDeque::new()));
                if epochs.get(&a.topic).is_some_and(|e| e != epoch) {
                    // A new epoch only when everything the topic kept had expired (the
                    // group-wide trim dropped it all), and offsets start again.
                    assert!(
                        entry.1.iter().all(|k| k.1 + k.2 <= now),
                        "epoch changed while messages were kept"
                    );
                    *entry = (0, VecDeque::new());
                }
                let want = entry.0 + 1;
                assert_eq!(*offset, want, "offsets are contiguous within an epoch");
                if want > 1 {
                    assert_eq!(epochs.get(&a.topic), Some(epoch), "epoch kept while history lasts");
                }
                epochs.insert(a.topic, epoch.clone());
                entry.0 = want;
                entry.1.push_back((want, now, a.ttl_ms, data));
                while entry.1.len() > a.size as usize {
                    entry.1.pop_front();
                }
                while entry.1.front().is_some_and(|k| k.1 + k.2 <= now) {
                    entry.1.pop_front();
                }
                let reader = sm.reader();
                for (t, (_, kept)) in &model {
                    let read = reader.history(TOPICS[*t], 0, 10_000, usize::MAX, now).unwrap();
                    let got: Vec<u64> = read.messages.iter().map(|m| m.0).collect();
                    // Expired messages leave from the front only (the window stays whole).
                    let want: Vec<u64> = kept
                        .iter()
                        .skip_while(|k| k.1 + k.2 <= now)
                        .map(|k| k.0)
                        .collect();
                    assert_eq!(got, want, "kept offsets of {}", TOPICS[*t]);
                    for w in got.windows(2) {
                        assert_eq!(w[1], w[0] + 1, "no hole inside the window");
                    }
                    if let Some(first) = want.first() {
                        assert_eq!(read.first, *first);
                    }
                }
            }
            // A snapshot installed elsewhere reads the same.
            let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            let other_dir = tempfile::tempdir().unwrap();
            let other = StateStore::open(other_dir.path()).unwrap();
            let mut fresh = other.state_machine::<TestConfig>(1).unwrap();
            let mut data = fresh.begin_receiving_snapshot().await.unwrap();
            *data = *snapshot.snapshot;
            fresh.install_snapshot(&snapshot.meta, data).await.unwrap();
            for t in TOPICS {
                assert_eq!(
                    fresh.reader().history(t, 0, 10_000, usize::MAX, now).unwrap(),
                    sm.reader().history(t, 0, 10_000, usize::MAX, now).unwrap()
                );
            }
        });
    }
}

#[test]
fn reads_from_an_offset_and_within_limits() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut sm = store.state_machine::<TestConfig>(1).unwrap();
        for i in 1..=10u64 {
            let c = Command::HistoryAppend {
                topic: "chat.1".into(),
                data: format!("{i}").into_bytes(),
                json: true,
                at_ms: 1_000 + i,
                size: 100,
                ttl_ms: 60_000,
            };
            sm.apply([command(1, i, c)]).await.unwrap();
        }
        let r = sm.reader();
        let page = r.history("chat.1", 4, 3, usize::MAX, 2_000).unwrap();
        assert_eq!(
            page.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        assert!(page.truncated);
        assert_eq!((page.first, page.last), (1, 10));
        assert_eq!(page.epoch, "1-1");
        let rest = r.history("chat.1", 7, 100, usize::MAX, 2_000).unwrap();
        assert_eq!(
            rest.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert!(!rest.truncated);
        // All expired by the reader's clock: nothing read, the window starts after the last.
        let late = r.history("chat.1", 0, 100, usize::MAX, 100_000).unwrap();
        assert!(late.messages.is_empty());
        assert_eq!(late.first, 11);
        // A topic never appended to.
        assert_eq!(
            r.history("chat.2", 0, 100, usize::MAX, 2_000)
                .unwrap()
                .epoch,
            ""
        );
    });
}

#[test]
fn presence_counts_users_over_gateways_and_expiry_makes_them_leave_once() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut sm = store.state_machine::<TestConfig>(1).unwrap();
        let mut index = 0;
        let mut apply = |c: Command| {
            index += 1;
            command(1, index, c)
        };
        let count = |user: &str, gateway: u64, connections: u32| Command::SetPresenceCount {
            topic: "room.1".into(),
            user: user.into(),
            gateway,
            connections,
        };
        let change = |r: &Response| match r {
            Response::Presence { change, .. } => *change,
            other => panic!("unexpected {other:?}"),
        };
        let open = |gateway: u64| Command::OpenSession {
            gateway,
            epoch: 1,
            lease_ms: 5_000,
        };
        sm.apply([apply(open(1)), apply(open(2))]).await.unwrap();
        let r = sm.apply([apply(count("u1", 1, 1))]).await.unwrap();
        assert_eq!(change(&r[0]), Some(true), "first connection anywhere: join");
        let r = sm.apply([apply(count("u1", 2, 2))]).await.unwrap();
        assert_eq!(change(&r[0]), None, "second gateway: no join");
        let r = sm.apply([apply(count("u2", 2, 1))]).await.unwrap();
        assert_eq!(change(&r[0]), Some(true));
        assert_eq!(
            sm.reader().presence("room.1"),
            vec![("u1".to_string(), 3), ("u2".to_string(), 1)]
        );
        // Gateway 2's session expires: u2 leaves, u1 stays (gateway 1 still holds it).
        let r = sm
            .apply([apply(Command::ExpireSession {
                gateway: 2,
                epoch: 1,
            })])
            .await
            .unwrap();
        assert_eq!(r[0], Response::Applied { changed: true });
        assert_eq!(sm.reader().presence("room.1"), vec![("u1".to_string(), 1)]);
        // Expiring again changes nothing (no second leave).
        let r = sm
            .apply([apply(Command::ExpireSession {
                gateway: 2,
                epoch: 1,
            })])
            .await
            .unwrap();
        assert_eq!(r[0], Response::Applied { changed: false });
        let r = sm.apply([apply(count("u1", 1, 0))]).await.unwrap();
        assert_eq!(change(&r[0]), Some(false), "last connection: leave");
        assert!(sm.reader().presence("room.1").is_empty());
    });
}
