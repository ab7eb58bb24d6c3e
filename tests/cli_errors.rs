//! Acceptance: bad operator input gets a clear error and a non-zero exit, and changes
//! nothing in the cluster.

mod common;

use common::*;

fn stderr_of(args: &[&str]) -> (i32, String) {
    let out = cli(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_operator_input_is_refused_clearly() {
    let mut cluster = Cluster::start_formed(3);
    let before = cluster.members().expect("members");
    let admin = cluster.managers[0].admin.clone();
    let admin2 = cluster.managers[1].admin.clone();

    // A second init, on the same manager and on another member.
    let (code, err) = stderr_of(&["cluster", "init", "--admin", &admin]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already belongs to cluster"), "{err}");
    let (code, err) = stderr_of(&["cluster", "init", "--admin", &admin2, "--member", &admin]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already belongs to cluster"), "{err}");

    // A fresh manager may not init a cluster that includes a member of another one.
    let fresh = cluster.spawn_extra(5).admin.clone();
    let (code, err) = stderr_of(&["cluster", "init", "--admin", &fresh, "--member", &admin]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("already belongs to cluster") && err.contains("nothing was changed"),
        "{err}"
    );
    let d = cli_ok(&["cluster", "members", "--admin", &admin, "--json"]);
    assert!(
        !d.contains(&fresh),
        "the fresh manager must not have joined: {d}"
    );

    // `members` against a dead address.
    let dead = format!("127.0.0.1:{}", free_tcp_port());
    let (code, err) = stderr_of(&["cluster", "members", "--admin", &dead]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the manager"), "{err}");

    // A flag typo is a usage error (exit 2) that names the flag.
    let (code, err) = stderr_of(&["cluster", "members", "--admni", &admin]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--admni"), "{err}");
    let (code, err) = stderr_of(&["manager", "--id", "1", "--quic", "127.0.0.1:1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--admin is required"), "{err}");

    // An unknown group id.
    let (code, err) = stderr_of(&[
        "cluster",
        "transfer-leader",
        "--admin",
        &admin,
        "--group",
        "99",
        "--to",
        "1",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("group 99 does not exist"), "{err}");
    // An unknown manager id.
    let (code, err) = stderr_of(&["cluster", "remove", "--admin", &admin, "--id", "42"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a member"), "{err}");

    // A manager pointed at the data directory of another manager.
    let other_dir = cluster.managers[2].data_dir.clone();
    let out = cli(&[
        "manager",
        "--id",
        "6",
        "--quic",
        &format!("127.0.0.1:{}", free_udp_port()),
        "--admin",
        &format!("127.0.0.1:{}", free_tcp_port()),
        "--data-dir",
        other_dir.to_str().expect("utf-8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("belongs to manager 3"), "{err}");
    // ... or at a data directory of another cluster, when the cluster id is pinned.
    let out = cli(&[
        "manager",
        "--id",
        "3",
        "--quic",
        &format!("127.0.0.1:{}", free_udp_port()),
        "--admin",
        &format!("127.0.0.1:{}", free_tcp_port()),
        "--data-dir",
        other_dir.to_str().expect("utf-8"),
        "--cluster-id",
        "0123456789abcdef0123456789abcdef",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("belongs to cluster"), "{err}");

    // A second process on a running manager's own directory.
    let own_dir = cluster.managers[0].data_dir.clone();
    let out = cli(&[
        "manager",
        "--id",
        "1",
        "--quic",
        &format!("127.0.0.1:{}", free_udp_port()),
        "--admin",
        &format!("127.0.0.1:{}", free_tcp_port()),
        "--data-dir",
        own_dir.to_str().expect("utf-8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("in use by another running manager"), "{err}");

    // Adding a manager of another cluster is refused.
    let mut other = Cluster::start_initialized(1);
    let foreign = other.managers[0].admin.clone();
    let (code, err) = stderr_of(&["cluster", "add", "--admin", &admin, "--new", &foreign]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("belongs to another cluster"), "{err}");
    other.manager(1).kill();

    // Nothing changed: same managers, same voters, same leaders' terms at most moved on.
    let after = cluster.members().expect("members");
    assert_eq!(before.managers, after.managers);
    assert_eq!(before.cluster_id, after.cluster_id);
    assert_eq!(before.groups.len(), after.groups.len());
    for (b, a) in before.groups.iter().zip(&after.groups) {
        assert_eq!(b.voters, a.voters);
        assert_eq!(b.learners, a.learners);
    }
}

/// The operator controls check their arguments before they reach any manager: each mistake
/// is named, with a non-zero exit (2 for usage errors, 1 for a bad value).
#[test]
fn operator_control_arguments_are_checked_before_any_call() {
    // No manager listens here: every refusal below happens in the CLI.
    let admin = format!("127.0.0.1:{}", free_tcp_port());
    let usage = [
        (
            vec!["cluster", "ban", "add", "--admin", &admin],
            "--user <USER>|--ip <IP>|--topic <TOPIC>",
        ),
        (
            vec![
                "cluster", "ban", "add", "--admin", &admin, "--user", "u", "--ip", "10.0.0.1",
            ],
            "cannot be used with",
        ),
        (
            vec![
                "cluster", "ban", "add", "--admin", &admin, "--user", "u", "--ttl", "30",
            ],
            "has no unit",
        ),
        (
            vec![
                "cluster", "ban", "add", "--admin", &admin, "--user", "u", "--ttl", "0s",
            ],
            "above zero",
        ),
        (
            vec![
                "cluster", "ban", "add", "--admin", &admin, "--user", "u", "--ttl", "3w",
            ],
            "unknown unit",
        ),
        (vec!["cluster", "kick", "--admin", &admin], "--user <USER>"),
        (
            vec!["cluster", "ban", "remove", "--admin", &admin, "x"],
            "invalid value",
        ),
        (
            vec!["cluster", "connections", "--admin", &admin],
            "--user <USER>",
        ),
    ];
    for (args, says) in usage {
        let (code, err) = stderr_of(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let long_user = "u".repeat(300);
    let values = [
        (
            vec![
                "cluster",
                "ban",
                "add",
                "--admin",
                &admin,
                "--ip",
                "10.0.0.0/33",
            ],
            "prefix /33 is longer than the address",
        ),
        (
            vec!["cluster", "ban", "add", "--admin", &admin, "--ip", "banana"],
            "is not an IP address range",
        ),
        (
            vec!["cluster", "ban", "add", "--admin", &admin, "--topic", ""],
            "--topic",
        ),
        (
            vec!["cluster", "ban", "add", "--admin", &admin, "--user", ""],
            "the user id is empty",
        ),
        (
            vec!["cluster", "kick", "--admin", &admin, "--user", &long_user],
            "the limit is 256",
        ),
    ];
    for (args, says) in values {
        let (code, err) = stderr_of(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
