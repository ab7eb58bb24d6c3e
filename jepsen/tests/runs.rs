//! End-to-end Jepsen runs against the real binary in network namespaces (root, nftables).
//! The binary is `$FIRETOWER_BIN` or `target/debug/firetower` (`cargo build` first).
//!
//! `stress_` because each takes about half a minute.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::new(());

fn binary() -> PathBuf {
    let path = std::env::var_os("FIRETOWER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/firetower")
        });
    assert!(
        path.exists(),
        "{} is missing: run `cargo build` (or set FIRETOWER_BIN) before these tests",
        path.display()
    );
    path
}

/// A finished `jepsen run`: its output and its process id (which names its namespaces).
struct Run {
    output: std::process::Output,
    pid: u32,
}

fn jepsen(out: &PathBuf, extra: &[&str]) -> Run {
    jepsen_workload("subscriptions", out, extra)
}

fn jepsen_workload(workload: &str, out: &PathBuf, extra: &[&str]) -> Run {
    let _ = std::fs::remove_dir_all(out);
    let child = Command::new(binary())
        .args([
            "jepsen",
            "run",
            "--workload",
            workload,
            "--time-limit",
            "25",
        ])
        .args(["--quiet", "2", "--fault", "5", "--recovery", "4", "--out"])
        .arg(out)
        .args(extra)
        .env("FIRETOWER_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    Run {
        output: child.wait_with_output().unwrap(),
        pid,
    }
}

/// Nothing of the run `pid` that wrote `out` is left: namespaces (named `ftj-<pid>-...`),
/// processes holding its log files, nftables tables in this namespace, data directories.
fn assert_nothing_left(out: &std::path::Path, pid: u32) {
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let ns = String::from_utf8_lossy(&ns.stdout);
    let mine = format!("ftj-{pid}-");
    assert!(
        !ns.lines().any(|l| l.starts_with(&mine)),
        "namespaces left: {ns}"
    );
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    let dir = out.display().to_string();
    assert!(
        !ps.lines()
            .any(|l| l.contains(&dir) && l.contains("firetower manager")),
        "managers of the run are still running"
    );
    // No process (manager, gateway, worker) still holds one of the run's log files open.
    let logs = out.join("logs");
    let holders: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| p.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|p| {
            std::fs::read_dir(p.path().join("fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(&logs))
                })
            })
        })
        .map(|p| p.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        holders.is_empty(),
        "processes of the run are still running: {holders:?}"
    );
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("firetower_chaos"));
    assert!(!out.join("data").exists(), "data directories are removed");
}

#[test]
fn stress_subscriptions_under_partition_and_kill_are_linearizable() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = std::env::temp_dir().join(format!("ftj-test-{}-safe", std::process::id()));
    let Run { output, pid } = jepsen(&out, &["--nemesis", "partition,kill", "--seed", "3"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "valid run expected:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("valid: Valid"), "{stdout}");
    for f in [
        "history.jsonl",
        "verdict.json",
        "verdict.txt",
        "latency.svg",
        "throughput.svg",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let history = std::fs::read_to_string(out.join("history.jsonl")).unwrap();
    assert!(history.contains(r#""process":"nemesis""#));
    assert!(history.contains(r#""type":"ok""#));
    assert_nothing_left(&out, pid);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn stress_stale_follower_reads_are_caught() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let help = Command::new(binary())
        .args(["manager", "--help"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("--unsafe-stale-reads"),
        "the manager has no --unsafe-stale-reads flag; the harness cannot test itself"
    );
    let out = std::env::temp_dir().join(format!("ftj-test-{}-unsafe", std::process::id()));
    let Run { output, pid } = jepsen(
        &out,
        &[
            "--nemesis",
            "partition",
            "--seed",
            "2",
            "--unsafe-stale-reads",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "an unsafe cluster must fail:\n{stdout}"
    );
    assert!(stdout.contains("valid: Invalid"), "{stdout}");
    let verdict: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("verdict.json")).unwrap()).unwrap();
    let anomalies = verdict["anomalies"].as_array().unwrap();
    assert!(!anomalies.is_empty());
    // Each anomaly comes with a small failing sub-history.
    assert!(anomalies
        .iter()
        .all(|a| !a["sub_history"].as_array().unwrap().is_empty()));
    assert_nothing_left(&out, pid);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn stress_delivery_under_partition_and_kill_is_exactly_once_and_ordered() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = std::env::temp_dir().join(format!("ftj-test-{}-delivery", std::process::id()));
    let Run { output, pid } = jepsen_workload(
        "delivery",
        &out,
        &["--nemesis", "partition,kill", "--seed", "4"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "valid run expected:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("valid: Valid"), "{stdout}");
    let verdict: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("verdict.json")).unwrap()).unwrap();
    let stats = &verdict["stats"];
    assert!(stats["publishes_ok"].as_u64().unwrap() > 100, "{stats}");
    assert!(stats["obligations"].as_u64().unwrap() > 100, "{stats}");
    assert!(stats["connections"].as_u64().unwrap() >= 4, "{stats}");
    assert!(stats["fault_windows"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["lost_unexcused"], 0);
    for f in [
        "history.jsonl",
        "latency.svg",
        "throughput.svg",
        "logs/g1.log",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let history = std::fs::read_to_string(out.join("history.jsonl")).unwrap();
    assert!(history.contains(r#""f":"message""#));
    // The churn subscribers came and went (and their topics were published to).
    assert!(
        history.contains(r#""type":"ok","f":"unsubscribe""#),
        "no acknowledged unsubscribe in the history"
    );
    assert!(history.contains(r#""f":"message","key":"jd4.c"#));
    assert_nothing_left(&out, pid);
    let _ = std::fs::remove_dir_all(&out);
}

/// A delivery run against a deliberately unsafe server mode (`extra` names it, the nemesis
/// and the seed): it must end invalid, with the violation the mode causes (`kinds`: acknowledged
/// publishes `lost`, or messages `reordered`) counted and shown as anomalies, and leave nothing
/// behind.
fn unsafe_delivery_run_is_caught(name: &str, extra: &[&str], kinds: &[&str]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = std::env::temp_dir().join(format!("ftj-test-{}-{name}", std::process::id()));
    let Run { output, pid } = jepsen_workload("delivery", &out, extra);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "an unsafe cluster must fail:\n{stdout}"
    );
    assert!(stdout.contains("valid: Invalid"), "{stdout}");
    let verdict: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("verdict.json")).unwrap()).unwrap();
    let counted = |kind: &str| {
        let stat = if kind == "lost" {
            "lost_unexcused"
        } else {
            kind
        };
        verdict["stats"][stat].as_u64().unwrap_or(0)
    };
    assert!(
        kinds.iter().any(|k| counted(k) > 0),
        "none of {kinds:?} counted: {}",
        verdict["stats"]
    );
    assert!(
        verdict["anomalies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| kinds.iter().any(|k| a["kind"] == *k)),
        "no anomaly of {kinds:?}"
    );
    assert_nothing_left(&out, pid);
    let _ = std::fs::remove_dir_all(&out);
}

/// Publishes routed by a subscriber list up to 3 s old miss gateways that subscribed since;
/// the churn topics make that happen all run long, so the run must be invalid.
#[test]
fn stress_stale_subscriber_lists_lose_acknowledged_publishes_and_are_caught() {
    unsafe_delivery_run_is_caught(
        "stale-delivery",
        &[
            "--nemesis",
            "partition",
            "--seed",
            "2",
            "--unsafe-stale-reads",
        ],
        &["lost"],
    );
}

/// Followers that stamp as if they led give a topic two interleaved `(term, seq)` streams.
/// Since the gateways pass on only the group leader's deliveries and drop stamps below the
/// last one (failing those publishes instead of acknowledging them), this shows as messages
/// out of order rather than as acknowledged ones lost: either is a caught violation.
#[test]
fn stress_stale_leadership_loses_acknowledged_publishes_and_is_caught() {
    unsafe_delivery_run_is_caught(
        "unsafe-delivery",
        &[
            "--nemesis",
            "restart",
            "--seed",
            "1",
            "--unsafe-stale-leadership",
        ],
        &["lost", "reordered"],
    );
}

#[test]
fn stress_membership_changes_while_subscriptions_run_are_checked() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = std::env::temp_dir().join(format!("ftj-test-{}-membership", std::process::id()));
    let Run { output, pid } =
        jepsen_workload("membership", &out, &["--nemesis", "kill", "--seed", "5"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "valid run expected:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let verdict: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("verdict.json")).unwrap()).unwrap();
    let m = &verdict["stats"]["membership"];
    assert!(m["changes_ok"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(m["final_read"], true, "{m}");
    let history = std::fs::read_to_string(out.join("history.jsonl")).unwrap();
    assert!(history.contains(r#""process":"membership""#));
    assert_nothing_left(&out, pid);
    let _ = std::fs::remove_dir_all(&out);
}
