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
