//! The reconnect-storm scenario, small, through the real `firetower chaos run` in network
//! namespaces: every client of the crashed gateway comes back, every post-storm message is
//! delivered, and the run leaves nothing behind, also when interrupted mid-storm. Needs root,
//! iproute2 and nftables (as CI has); fails, never skips, without them. The binary is
//! `$FIRETOWER_BIN` or `target/debug/firetower` (`cargo build` first).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use firetower_chaos::{namespaces_with_prefix, pids_in};
use serde_json::Value;

/// The tests share the machine's namespace list; one at a time keeps their checks exact.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

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

fn run_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ftc-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `firetower chaos run reconnect-storm ...` with its output in `dir`; its namespaces are
/// named `ftc-<its pid>-...`.
fn start_storm(dir: &Path, extra: &[&str]) -> (Child, String) {
    let out = std::fs::File::create(dir.join("stdout.txt")).unwrap();
    let err = std::fs::File::create(dir.join("stderr.txt")).unwrap();
    let child = Command::new(binary())
        .args(["chaos", "run", "reconnect-storm", "--out"])
        .arg(dir.join("run"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let prefix = format!("ftc-{}-", child.id());
    (child, prefix)
}

/// The network namespace inode behind `/run/netns/NAME`.
fn netns_inode(name: &str) -> Option<u64> {
    std::fs::metadata(format!("/run/netns/{name}"))
        .ok()
        .map(|m| m.ino())
}

/// Processes whose network namespace is one of `inodes`.
fn processes_in(inodes: &BTreeSet<u64>) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(link) = std::fs::read_link(entry.path().join("ns/net")) else {
            continue;
        };
        // "net:[4026532123]"
        let inode = link
            .to_string_lossy()
            .trim_start_matches("net:[")
            .trim_end_matches(']')
            .parse::<u64>()
            .ok();
        if inode.is_some_and(|i| inodes.contains(&i)) {
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!(
                "{name}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    found
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let out = Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle) && !l.contains("ps -eo"))
        .map(str::to_string)
        .collect()
}

/// Wait for `child` while noting the inodes of the run's namespaces as they appear (to find
/// processes left in them after the names are gone). `until` may end the wait early.
fn watch_run(
    child: &mut Child,
    prefix: &str,
    limit: Duration,
    mut until: impl FnMut(&[String]) -> bool,
) -> (Option<std::process::ExitStatus>, BTreeSet<u64>) {
    let deadline = Instant::now() + limit;
    let mut inodes = BTreeSet::new();
    loop {
        let names = namespaces_with_prefix(prefix);
        inodes.extend(names.iter().filter_map(|n| netns_inode(n)));
        if let Some(status) = child.try_wait().unwrap() {
            return (Some(status), inodes);
        }
        if until(&names) {
            return (None, inodes);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the scenario did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_nothing_left(prefix: &str, inodes: &BTreeSet<u64>, dir: &Path) {
    assert!(
        !inodes.is_empty(),
        "never saw the run's namespaces ({prefix}*)"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = namespaces_with_prefix(prefix);
        let procs = processes_in(inodes);
        if left.is_empty() && procs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: namespaces {left:?}, processes {procs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let by_name = processes_with(prefix);
    assert!(by_name.is_empty(), "{by_name:?}");
    let by_dir = processes_with(&dir.display().to_string());
    assert!(by_dir.is_empty(), "{by_dir:?}");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Run the scenario small (300 clients, 1 gateway crash) and return its report, exit status
/// and stdout; asserts what must hold whatever the post-storm check found: every client back,
/// the report complete, a miss never a silent pass, nothing left behind.
fn run_small_storm(name: &str) -> (Value, std::process::ExitStatus, String) {
    let dir = run_dir(name);
    let (mut child, prefix) = start_storm(
        &dir,
        &["--clients", "300", "--faults", "1", "--settle-ms", "1000"],
    );
    let (status, inodes) = watch_run(&mut child, &prefix, Duration::from_secs(600), |_| false);
    let status = status.unwrap();
    let stdout = read(&dir.join("stdout.txt"));
    let stderr = read(&dir.join("stderr.txt"));
    let context = format!("status {status}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let report: Value = serde_json::from_str(&read(&dir.join("run/report.json")))
        .unwrap_or_else(|e| panic!("no report.json ({e}); {context}"));
    let storm = &report["storm"];
    assert_eq!(report["scenario"], "reconnect-storm", "{context}");
    assert_eq!(storm["clients"], 300, "{context}");
    let faults = storm["faults"].as_array().expect("storm.faults");
    assert_eq!(faults.len(), 1, "{context}");
    let f = &faults[0];
    // Every client of the crashed gateway reconnected and resubscribed.
    assert_eq!(f["storm_clients"], 150, "{context}");
    assert_eq!(f["reconnected"], 150, "{context}");
    assert!(f["all_back_ms"].as_f64().is_some(), "{context}");
    assert!(
        f["reconnect_max_ms"].as_f64().unwrap_or(0.0) > 0.0,
        "{context}"
    );
    assert_eq!(f["collateral_lost"], 0, "{context}");
    // The post-storm check covered every client, and whatever it missed is an error that
    // fails the run.
    assert_eq!(f["expected"], 300, "{context}");
    let delivered = f["delivered"].as_u64().unwrap_or(0);
    let errors = storm["errors"].as_array().map_or(0, Vec::len);
    if delivered < 300 {
        assert!(
            f["missing"].as_array().is_some_and(|m| !m.is_empty()),
            "{context}"
        );
        assert!(stdout.contains("did not receive"), "{context}");
    }
    assert_eq!(errors == 0, delivered == 300, "{context}");
    assert_eq!(status.success(), errors == 0, "{context}");
    // The probe published through the other gateway during the storm.
    assert!(report["probe_ops"].as_u64().unwrap_or(0) > 0, "{context}");
    assert_eq!(report["publish"].as_array().map(Vec::len), Some(1));
    assert!(stdout.contains("reconnect_p50_ms"), "{context}");
    assert_nothing_left(&prefix, &inodes, &dir);
    let _ = std::fs::remove_dir_all(dir);
    (report, status, stdout)
}

#[test]
fn reconnect_storm_brings_every_client_back_and_leaves_nothing() {
    let _serial = serial();
    run_small_storm("storm");
}

#[test]
fn reconnect_storm_delivers_every_post_storm_message() {
    let _serial = serial();
    let (report, status, stdout) = run_small_storm("storm-delivery");
    let f = &report["storm"]["faults"][0];
    assert_eq!(f["publish_failed"], 0, "{stdout}");
    assert_eq!(f["delivered"], 300, "{stdout}");
    assert!(status.success(), "{stdout}");
}

#[test]
fn ctrl_c_during_the_storm_removes_every_namespace_and_process() {
    let _serial = serial();
    let dir = run_dir("storm-ctrl-c");
    let (mut child, prefix) = start_storm(&dir, &["--clients", "300", "--faults", "20"]);
    // Wait until the storm worker runs in the client namespace and its clients connect.
    let mut worker_since: Option<Instant> = None;
    let (status, inodes) = watch_run(&mut child, &prefix, Duration::from_secs(300), |names| {
        let Some(client_ns) = names.iter().find(|n| n.ends_with("-c1")) else {
            return false;
        };
        let worker = pids_in(client_ns).iter().any(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("storm"))
                .unwrap_or(false)
        });
        if worker && worker_since.is_none() {
            worker_since = Some(Instant::now());
        }
        worker_since.is_some_and(|t| t.elapsed() > Duration::from_secs(3))
    });
    assert!(
        status.is_none(),
        "the run ended before the storm: {status:?}\n{}",
        read(&dir.join("stderr.txt"))
    );
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "{}",
        read(&dir.join("stderr.txt"))
    );
    assert_nothing_left(&prefix, &inodes, &dir);
    let _ = std::fs::remove_dir_all(dir);
}
