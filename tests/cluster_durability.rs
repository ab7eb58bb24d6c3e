//! Acceptance: subscriptions acknowledged before all three managers are killed with
//! `kill -9` are all there after they restart.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn acknowledged_subscriptions_survive_kill_of_every_manager() {
    let mut cluster = Cluster::start_formed(3);
    let quic = cluster.quic_list();
    let record = cluster.dir.path().join("acked.txt");
    let record_s = record.to_str().expect("utf-8").to_string();
    cli_ok(&[
        "bench",
        "commits",
        "--managers",
        &quic,
        "--writers",
        "32",
        "--duration",
        "2",
        "--gateway",
        "7",
        "--record",
        &record_s,
    ]);
    let acked = std::fs::read_to_string(&record).expect("record file");
    let topics: Vec<&str> = acked.lines().collect();
    assert!(
        topics.len() > 100,
        "too few writes acknowledged: {}",
        topics.len()
    );

    for m in &mut cluster.managers {
        m.kill();
    }
    for m in &mut cluster.managers {
        m.start();
    }
    wait_until(Duration::from_secs(15), || {
        cluster
            .members()
            .is_some_and(|m| all_groups_led(&m, &[1, 2, 3], &[1, 2, 3]))
    })
    .unwrap_or_else(|_| panic!("no leaders after restart\n{}", cluster.dump_logs()));

    // Every acknowledged subscription, read linearizably through the link.
    let verify = cli(&[
        "link",
        "verify",
        "--managers",
        &quic,
        "--gateway",
        "7",
        "--file",
        &record_s,
    ]);
    assert!(
        verify.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).expect("json");
    assert_eq!(report["checked"].as_u64(), Some(topics.len() as u64));
    assert_eq!(report["missing"].as_u64(), Some(0));

    // And a sample through the admin API's topic info (gRPC).
    let admin = cluster.any_admin();
    for topic in topics.iter().step_by(topics.len() / 10 + 1) {
        let out = cli_ok(&["cluster", "topic", "--admin", &admin, topic, "--json"]);
        let info: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert!(
            info["gateways"]
                .as_array()
                .is_some_and(|g| g.contains(&serde_json::json!(7))),
            "{topic}: {info}"
        );
    }
}
