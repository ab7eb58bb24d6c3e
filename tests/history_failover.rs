//! Acceptance of recovery across a gateway crash *and* the death of the topic's group leader
//! (issue 15, point 1, second half), against real processes: a subscriber's gateway is
//! killed with SIGKILL, the leader of the history topic's group is killed while 2,000 messages
//! are published through another gateway, and the subscriber, reconnecting there with its
//! position, gets every missed message once, in offset order (offsets continue across the
//! leader change, no hole), then live ones.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::ws::Client;
use common::*;
use serde_json::{json, Value};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn leader_of_topic(cluster: &Cluster, topic: &str) -> u64 {
    let info: Value = serde_json::from_str(&cli_ok(&[
        "cluster",
        "topic",
        "--admin",
        &cluster.any_admin(),
        topic,
        "--json",
    ]))
    .expect("topic info");
    let group = info["group"].as_u64().expect("group");
    let members = cluster.members().expect("members");
    leader_of(&members, group).expect("leader")
}

#[test]
fn recovery_spans_a_gateway_crash_and_a_leader_kill() {
    let mut cluster = Cluster::start_initialized(3);
    cluster.wait_formed();
    let admin = cluster.any_admin();
    cli_ok(&[
        "cluster", "history", "set", "chat.*", "--size", "5000", "--ttl", "10m", "--admin", &admin,
    ]);
    let topic = "chat.failover";
    let mut gw_a = cluster.gateway(1);
    let gw_b = cluster.gateway(2);
    let rt = runtime();
    let (position, mut publisher) = rt.block_on(async {
        let mut sub = Client::connect(&gw_a.listen).await;
        assert_eq!(sub.subscribe(&[topic.to_string()]).await["op"], "ack");
        let mut publisher = Client::connect(&gw_b.listen).await;
        let ack = publisher
            .publish(topic, json!({"n": -1}), Duration::from_secs(10))
            .await;
        assert_eq!(ack["op"], "ack", "{ack}");
        let got = sub.messages(1, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["offset"], ack["offset"]);
        (
            json!({"epoch": got[0]["epoch"], "offset": got[0]["offset"]}),
            publisher,
        )
    });
    gw_a.kill();
    let victim = leader_of_topic(&cluster, topic);
    let (acked, unknown) = rt.block_on(async {
        let mut acked = HashSet::new();
        let mut unknown = HashSet::new();
        for n in 0..2000i64 {
            if n == 700 {
                cluster.manager(victim).kill();
            }
            // Refused before being stored (no leader for a moment, the dead gateway still
            // subscribed): sent again. `timeout`: the outcome is unknown, not sent again.
            for attempt in 0.. {
                let ack = publisher
                    .publish(topic, json!({"n": n}), Duration::from_secs(10))
                    .await;
                if ack["op"] == "ack" {
                    acked.insert(n);
                    break;
                }
                if ack["code"] == "timeout" || ack["op"] == "timeout" {
                    unknown.insert(n);
                    break;
                }
                assert!(attempt < 400, "publish {n} never went through: {ack}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        (acked, unknown)
    });
    assert!(
        acked.len() > 1900,
        "only {} of 2,000 acknowledged ({} unknown)",
        acked.len(),
        unknown.len()
    );
    assert_ne!(
        leader_of_topic(&cluster, topic),
        victim,
        "the topic's group has a new leader"
    );
    rt.block_on(async {
        let mut back = Client::connect(&gw_b.listen).await;
        let ack = back
            .request(
                json!({"op": "subscribe", "topics": [topic], "recover": {topic: position}}),
                Duration::from_secs(30),
            )
            .await;
        assert_eq!(ack["recovered"], json!({topic: true}), "{ack}");
        let mut last = position["offset"].as_u64().expect("offset");
        let mut seen = Vec::new();
        loop {
            let want = if acked.iter().all(|n| seen.contains(n)) {
                Duration::from_secs(2)
            } else {
                Duration::from_secs(20)
            };
            let got = back.messages(1, want).await;
            if got.is_empty() {
                break;
            }
            for m in &got {
                assert_eq!(
                    m["offset"].as_u64(),
                    Some(last + 1),
                    "a hole or a repeat: {m}"
                );
                assert_eq!(m["epoch"], position["epoch"], "{m}");
                last += 1;
                seen.push(m["data"]["n"].as_i64().expect("n"));
            }
        }
        let distinct: HashSet<i64> = seen.iter().copied().collect();
        assert_eq!(distinct.len(), seen.len(), "a message came twice");
        assert!(
            acked.is_subset(&distinct),
            "an acknowledged message is missing"
        );
        assert!(
            distinct.is_subset(&acked.union(&unknown).copied().collect()),
            "a message nobody published"
        );
        // Then live ones, continuing the offsets.
        let ack = publisher
            .publish(topic, json!({"n": "live"}), Duration::from_secs(10))
            .await;
        assert_eq!(ack["op"], "ack", "{ack}");
        assert_eq!(ack["offset"].as_u64(), Some(last + 1));
        let got = back.messages(1, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["data"], json!({"n": "live"}));
    });
}
