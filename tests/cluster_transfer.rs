//! `cluster transfer-leader` moves a group's leadership to the named voter.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn transfer_leader_moves_a_group() {
    let cluster = Cluster::start_initialized(3);
    cluster.wait_formed();
    let admin = cluster.any_admin();
    let members = cluster.members().expect("members");
    let current = leader_of(&members, 5).expect("group 5 led");
    let target = (1..=3).find(|id| *id != current).expect("another voter");
    let out = cli_ok(&[
        "cluster",
        "transfer-leader",
        "--admin",
        &admin,
        "--group",
        "5",
        "--to",
        &target.to_string(),
    ]);
    assert!(out.contains(&format!("led by manager {target}")), "{out}");
    wait_until(Duration::from_secs(5), || {
        cluster
            .members()
            .is_some_and(|m| leader_of(&m, 5) == Some(target))
    })
    .unwrap_or_else(|_| panic!("group 5 not led by {target}: {:#?}", cluster.members()));
    // Transferring to the current leader is a no-op that succeeds.
    cli_ok(&[
        "cluster",
        "transfer-leader",
        "--admin",
        &admin,
        "--group",
        "5",
        "--to",
        &target.to_string(),
    ]);
    // A manager that is not a member is refused.
    let out = cli(&[
        "cluster",
        "transfer-leader",
        "--admin",
        &admin,
        "--group",
        "5",
        "--to",
        "9",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a member"));
}
