//! Acceptance: three managers and `cluster init` form a cluster whose groups all have a
//! leader, with leaders spread over the managers.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

#[test]
fn init_forms_a_cluster_with_spread_leaders() {
    let cluster = Cluster::start_initialized(3);
    let mut last = None;
    let took = wait_until(Duration::from_secs(5), || {
        let m = cluster.members();
        let ok = m.as_ref().is_some_and(|m| {
            all_groups_led(m, &[1, 2, 3], &[1, 2, 3])
                && (1..=3).all(|id| reachable(m, id) == Some(true))
                && m.groups.len() == 8
        });
        last = m;
        ok
    });
    assert!(
        took.is_ok(),
        "cluster not formed within 5 s: {last:#?}\n{}",
        cluster.dump_logs()
    );
    last.expect("members answered");
    // The JSON contract of `cluster members --json`.
    let m = cluster.members_json().expect("members answered");
    for field in ["id", "quic", "admin", "reachable"] {
        assert!(
            m["managers"][0].get(field).is_some(),
            "managers[].{field} missing"
        );
    }
    for field in [
        "id",
        "leader",
        "term",
        "voters",
        "learners",
        "committed",
        "applied",
    ] {
        assert!(
            m["groups"][0].get(field).is_some(),
            "groups[].{field} missing"
        );
    }
    let leaders: BTreeSet<u64> = m["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["leader"].as_u64())
        .collect();
    assert!(leaders.len() >= 2, "leaders not spread: {leaders:?}");
}

#[test]
fn members_text_output_and_custom_group_count() {
    let cluster = Cluster::start(3);
    let admin = cluster.managers[0].admin.clone();
    let out = cli_ok(&[
        "cluster",
        "init",
        "--admin",
        &admin,
        "--member",
        &cluster.managers[1].admin,
        "--member",
        &cluster.managers[2].admin,
        "--groups",
        "3",
        "--json",
    ]);
    let init: serde_json::Value = serde_json::from_str(&out).expect("init --json is JSON");
    assert_eq!(init["groups"], 3);
    assert_eq!(init["managers"].as_array().map(|a| a.len()), Some(3));
    wait_until(Duration::from_secs(5), || {
        cluster
            .members()
            .is_some_and(|m| all_groups_led(&m, &[1, 2, 3], &[1, 2, 3]))
    })
    .expect("groups led");
    let text = cli_ok(&["cluster", "members", "--admin", &admin]);
    assert!(text.contains("cluster "), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .count(),
        3 + 3,
        "3 manager rows and 3 group rows expected:\n{text}"
    );
}
