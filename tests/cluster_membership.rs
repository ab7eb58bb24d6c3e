//! Acceptance: a 4th manager is added (learner, then voter) and one is removed while
//! subscription writes keep coming; no acknowledged write is lost.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn add_and_remove_under_writes_loses_nothing() {
    let mut cluster = Cluster::start_formed(3);
    let admin1 = cluster.managers[0].admin.clone();
    let new_admin = cluster.spawn_extra(4).admin.clone();
    let quic = cluster.quic_list();
    let record = cluster.dir.path().join("acked.txt");
    let record_s = record.to_str().expect("utf-8").to_string();

    // A steady stream of writes in the background for the whole change.
    let mut writer = common::command()
        .args([
            "bench",
            "commits",
            "--managers",
            &quic,
            "--writers",
            "16",
            "--duration",
            "12",
            "--gateway",
            "9",
            "--record",
            &record_s,
        ])
        .env("FIRETOWER_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn writer");
    std::thread::sleep(Duration::from_secs(1));

    cli_ok(&["cluster", "add", "--admin", &admin1, "--new", &new_admin]);
    let m = cluster.members().expect("members");
    assert!(
        all_groups_led(&m, &[1, 2, 3, 4], &[1, 2, 3, 4]),
        "after add: {m:#?}"
    );

    cli_ok(&["cluster", "remove", "--admin", &admin1, "--id", "2"]);
    let status = writer.wait().expect("writer finished");
    assert!(status.success(), "writer failed");
    cluster.manager(2).kill();

    let mut last = None;
    wait_until(Duration::from_secs(10), || {
        last = cluster.members();
        last.as_ref()
            .is_some_and(|m| all_groups_led(m, &[1, 3, 4], &[1, 3, 4]))
    })
    .unwrap_or_else(|_| panic!("membership not [1,3,4]: {last:#?}\n{}", cluster.dump_logs()));
    let m = last.expect("members");
    let ids: Vec<u64> = m.managers.iter().map(|x| x.id.get()).collect();
    assert_eq!(ids, vec![1, 3, 4]);

    let survivors: String = cluster
        .managers
        .iter()
        .filter(|m| m.id != 2)
        .map(|m| m.quic.clone())
        .collect::<Vec<_>>()
        .join(",");
    let acked = std::fs::read_to_string(&record).expect("record");
    assert!(
        acked.lines().count() > 100,
        "too few writes: {}",
        acked.lines().count()
    );
    let out = cli_ok(&[
        "link",
        "verify",
        "--managers",
        &survivors,
        "--gateway",
        "9",
        "--file",
        &record_s,
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["missing"].as_u64(), Some(0), "{report}");
    assert_eq!(
        report["checked"].as_u64(),
        Some(acked.lines().count() as u64)
    );
}

/// A manager that was down while a 4th manager joined and took the lead of every group has
/// never heard of manager 4: its own view of each group says 4 is no member. It follows 4
/// anyway once back, because the members it does know vouch for 4 (`raft/src/vouch.rs`), and
/// catches up on what was committed without it.
#[test]
fn a_manager_that_missed_a_join_follows_the_new_member_as_leader() {
    let mut cluster = Cluster::start_formed(3);
    let admin1 = cluster.managers[0].admin.clone();
    cluster.manager(3).kill();
    let new_admin = cluster.spawn_extra(4).admin.clone();
    cli_ok(&["cluster", "add", "--admin", &admin1, "--new", &new_admin]);
    let groups = cluster.members().expect("members").groups.len() as u64;
    assert!(groups > 0);
    for group in 0..groups {
        cli_ok(&[
            "cluster",
            "transfer-leader",
            "--admin",
            &admin1,
            "--group",
            &group.to_string(),
            "--to",
            "4",
        ]);
    }
    let m = cluster.members().expect("members");
    assert!(
        m.groups
            .iter()
            .all(|g| leader_of(&m, g.id.get().into()) == Some(4)),
        "manager 4 leads every group: {m:#?}"
    );

    cluster.manager(3).start();
    let quic = cluster.quic_list();
    let writes = cli(&[
        "bench",
        "commits",
        "--managers",
        &quic,
        "--writers",
        "4",
        "--duration",
        "2",
        "--gateway",
        "9",
    ]);
    assert!(writes.status.success(), "{writes:?}");
    let committed: Vec<(u64, u64)> = cluster
        .members()
        .expect("members")
        .groups
        .iter()
        .map(|g| (g.id.get().into(), g.committed))
        .collect();

    // Manager 3 applies everything committed in every group, following manager 4.
    let mut last = None;
    wait_until(Duration::from_secs(20), || {
        last = cluster.members();
        last.as_ref().is_some_and(|m| {
            committed.iter().all(|(group, committed)| {
                m.groups.iter().any(|g| {
                    u64::from(g.id.get()) == *group
                        && g.leader.map(|l| l.get()) == Some(4)
                        && g.replicas
                            .iter()
                            .any(|r| r.id.get() == 3 && r.applied >= *committed)
                })
            })
        })
    })
    .unwrap_or_else(|_| {
        panic!(
            "manager 3 did not catch up under manager 4 (committed {committed:?}): {last:#?}\n{}",
            cluster.dump_logs()
        )
    });
    assert!(
        cluster.manager(3).log_text().contains("vouches for"),
        "manager 3 learned of manager 4 from a member's vouch:\n{}",
        cluster.manager(3).log_text()
    );
}
