//! Test hosts, faults and cleanup, against the real `firetower` binary in network
//! namespaces. Needs root, iproute2 and nftables (as CI has); fails, never skips, without
//! them. The binary is `$FIRETOWER_BIN` or `target/debug/firetower` (`cargo build` first).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use firetower_chaos::{
    namespaces_with_prefix, pids_in, remove_leftovers, tables_in, Cluster, ClusterSpec, HostSpec,
    Partition, ProcessState, Role, TestNet, WalDamage, ADMIN_PORT,
};
use firetower_proto::ManagerId;

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
    dir
}

/// Can `from` open a TCP connection to `to`'s admin port? (bash's /dev/tcp, 2 s limit)
fn tcp_reaches(net: &TestNet, from: &str, to: &str) -> bool {
    let from = net.host(from).unwrap();
    let to = net.host(to).unwrap();
    let script = format!("exec 3<>/dev/tcp/{}/{ADMIN_PORT}", to.ip);
    Command::new("timeout")
        .args(["2", "ip", "netns", "exec", &from.ns, "bash", "-c", &script])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn root_links() -> String {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_string()))
        .collect();
    names.sort();
    names.join(",")
}

fn root_has_test_addresses() -> bool {
    let addrs = Command::new("ip").args(["-o", "addr"]).output().unwrap();
    let routes = Command::new("ip").args(["route"]).output().unwrap();
    String::from_utf8_lossy(&addrs.stdout).contains("10.77.0.")
        || String::from_utf8_lossy(&routes.stdout).contains("10.77.0.")
}

fn assert_run_gone(prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = namespaces_with_prefix(prefix);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "namespaces left behind: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let tables = tables_in_root();
    assert!(
        !tables.contains("firetower_chaos"),
        "an nftables table leaked into the host namespace: {tables}"
    );
}

fn tables_in_root() -> String {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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

#[test]
fn hosts_live_only_in_their_namespaces_and_are_removed() {
    let _serial = serial();
    let links_before = root_links();
    let spec = HostSpec {
        managers: 3,
        gateways: 1,
        clients: 1,
    };
    let mut net = TestNet::create("ftc", spec).expect(
        "cannot create network namespaces: these tests need root with `ip netns` and nftables",
    );
    let prefix = net.run_id().prefix().to_string();
    assert_eq!(
        namespaces_with_prefix(&prefix).len(),
        6,
        "5 hosts + the bridge"
    );
    assert_eq!(net.hosts_of(Role::Manager).len(), 3);
    assert_eq!(net.host("g1").unwrap().ip.to_string(), "10.77.0.31");
    assert_eq!(net.host("c1").unwrap().ip.to_string(), "10.77.0.51");
    // Nothing of the run in the host's own namespace.
    assert_eq!(root_links(), links_before);
    assert!(!root_has_test_addresses());
    // A process in a host namespace is killed on teardown.
    let ns = net.host("m1").unwrap().ns.clone();
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &ns, "sleep", "600"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(pids_in(&ns).len(), 1);
    net.teardown();
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the sleeper was killed");
    assert_run_gone(&prefix);
    assert_eq!(root_links(), links_before);
}

#[test]
fn partitions_block_exactly_the_chosen_links_and_heal() {
    let _serial = serial();
    let dir = run_dir("partition");
    let cluster = Cluster::start(ClusterSpec::new(binary(), dir.clone())).unwrap();
    let prefix = cluster.net().run_id().prefix().to_string();
    let net = cluster.net();
    let nodes = cluster.member_names();
    for a in &nodes {
        for b in &nodes {
            if a != b {
                assert!(tcp_reaches(net, a, b), "{a} -> {b} before any fault");
            }
        }
    }
    // m1 isolated; clients still reach everyone.
    cluster
        .partition(&Partition::isolate("m1", &nodes).unwrap())
        .unwrap();
    assert!(!tcp_reaches(net, "m2", "m1"));
    assert!(!tcp_reaches(net, "m1", "m3"));
    assert!(tcp_reaches(net, "m2", "m3"));
    assert!(tcp_reaches(net, "c1", "m1"));
    let tables = tables_in(&net.host("m1").unwrap().ns).unwrap();
    assert!(
        tables.iter().any(|t| t.contains("firetower_chaos")),
        "{tables:?}"
    );
    assert!(!tables_in_root().contains("firetower_chaos"));
    // Bridge: m2 hears both sides, m1 and m3 do not hear each other.
    let bridge = Partition::components(&[vec!["m1".into()], vec!["m3".into()]]);
    cluster.partition(&bridge).unwrap();
    assert!(!tcp_reaches(net, "m1", "m3"));
    assert!(!tcp_reaches(net, "m3", "m1"));
    assert!(tcp_reaches(net, "m1", "m2") && tcp_reaches(net, "m3", "m2"));
    assert!(tcp_reaches(net, "m2", "m1") && tcp_reaches(net, "m2", "m3"));
    // One-way: m2 and m3 drop what m1 sends (a TCP handshake needs both ways, so m1 cannot
    // connect to them, and they cannot connect to m1 either: the SYN-ACK is dropped).
    cluster
        .partition(&Partition::one_way("m1", &["m2".into(), "m3".into()]))
        .unwrap();
    assert!(!tcp_reaches(net, "m1", "m2"));
    assert!(tcp_reaches(net, "m2", "m3"));
    // Heal.
    cluster.heal().unwrap();
    for a in &nodes {
        for b in &nodes {
            if a != b {
                assert!(tcp_reaches(net, a, b), "{a} -> {b} after heal");
            }
        }
    }
    drop(cluster);
    assert_run_gone(&prefix);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn process_faults_kill_pause_restart_damage_and_replace() {
    let _serial = serial();
    let dir = run_dir("process");
    let mut spec = ClusterSpec::new(binary(), dir.clone());
    spec.hosts.managers = 4;
    spec.initial_managers = 3;
    let mut cluster = Cluster::start(spec).unwrap();
    let prefix = cluster.net().run_id().prefix().to_string();

    // kill -9 the leader of group 0: another manager takes over.
    let leader = cluster.leader_of(0).unwrap().unwrap();
    let leader_name = cluster.name_of_id(leader).unwrap();
    cluster.kill(&leader_name).unwrap();
    assert_eq!(
        cluster.manager_state(&leader_name).unwrap(),
        ProcessState::Down
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if matches!(cluster.leader_of(0), Ok(Some(l)) if l != leader) {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader after kill -9");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Torn tail on the stopped manager's log: it must come back (the tail is cut).
    cluster
        .damage_wal(&leader_name, WalDamage::TornTail { bytes: 3 })
        .unwrap();
    cluster.start_manager(&leader_name).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        cluster.manager_state(&leader_name).unwrap(),
        ProcessState::Running,
        "a manager with a torn log tail must start; see {}",
        dir.join("logs").display()
    );
    cluster.wait_for_leaders(Duration::from_secs(30)).unwrap();

    // SIGSTOP / SIGCONT.
    let other = cluster
        .member_names()
        .into_iter()
        .find(|n| *n != leader_name)
        .unwrap();
    cluster.pause(&other).unwrap();
    assert_eq!(cluster.manager_state(&other).unwrap(), ProcessState::Paused);
    cluster.resume(&other).unwrap();
    assert_eq!(
        cluster.manager_state(&other).unwrap(),
        ProcessState::Running
    );

    // Graceful restart.
    cluster.restart(&other).unwrap();
    cluster.wait_for_leaders(Duration::from_secs(30)).unwrap();

    // Membership: add the spare, remove it again.
    cluster.add_member("m4").unwrap();
    let voters = &cluster.groups().unwrap()[0].voters;
    assert_eq!(voters.len(), 4, "{voters:?}");
    let m4 = cluster.manager("m4").unwrap().id;
    cluster.remove_member("m4", m4).unwrap();
    cluster.wait_for_leaders(Duration::from_secs(30)).unwrap();

    // Dead disk: the documented replace procedure gives the host a new id.
    let old = cluster.manager("m2").unwrap().id;
    let new = cluster.replace_with_wiped("m2").unwrap();
    assert_ne!(old, new);
    let groups = cluster.wait_for_leaders(Duration::from_secs(30)).unwrap();
    assert!(groups
        .iter()
        .all(|g| g.voters.contains(&ManagerId(new)) && !g.voters.contains(&ManagerId(old))));

    drop(cluster);
    assert_run_gone(&prefix);
    let _ = std::fs::remove_dir_all(dir);
}

/// Start `firetower chaos up`, wait for "ready", return the child and the run prefix.
fn chaos_up() -> (std::process::Child, String) {
    let out = run_dir("up");
    let mut child = Command::new(binary())
        .args(["chaos", "up", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut prefix = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(p) = line.strip_prefix("prefix ") {
            prefix = p.to_string();
        }
        if line == "ready" {
            break;
        }
    }
    assert!(!prefix.is_empty(), "chaos up printed no prefix");
    assert_eq!(namespaces_with_prefix(&prefix).len(), 5);
    (child, prefix)
}

#[test]
fn ctrl_c_removes_every_namespace_and_process() {
    let _serial = serial();
    let (mut child, prefix) = chaos_up();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_run_gone(&prefix);
    let left = processes_with(&prefix);
    assert!(left.is_empty(), "{left:?}");
    let managers = processes_with("firetower manager");
    assert!(
        managers
            .iter()
            .all(|m| !m.contains(&format!("ftc-test-{}", std::process::id()))),
        "{managers:?}"
    );
}

#[test]
fn leftovers_of_a_crashed_run_are_removed_at_start() {
    let _serial = serial();
    let (mut child, prefix) = chaos_up();
    let ns = format!("{prefix}m1");
    child.kill().unwrap();
    child.wait().unwrap();
    // The run died without cleaning up: its managers still run in its namespaces.
    assert_eq!(namespaces_with_prefix(&prefix).len(), 5);
    assert!(
        !pids_in(&ns).is_empty(),
        "the crashed run's manager is still running"
    );
    let removed = remove_leftovers();
    assert!(removed.contains(&prefix), "{removed:?}");
    assert_run_gone(&prefix);
}
