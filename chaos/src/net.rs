//! Test hosts: one network namespace per node, joined by veth pairs to a bridge that lives in
//! a namespace of its own.
//!
//! ```text
//!   ns <run>br:       br0 ─┬─ v-m1 ════ eth0 10.77.0.11/24   ns <run>m1  (manager)
//!                          ├─ v-m2 ════ eth0 10.77.0.12/24   ns <run>m2
//!                          ├─ v-g1 ════ eth0 10.77.0.31/24   ns <run>g1  (gateway)
//!                          └─ v-c1 ════ eth0 10.77.0.51/24   ns <run>c1  (clients, admin CLI)
//! ```
//!
//! Every interface is created inside the run's namespaces (`ip -n BR link add ... peer ...
//! netns NODE`), so nothing ever appears in, or is routed to, the host's own namespace. The
//! 10.77.0.0/24 addresses exist only on this private bridge; two runs at once each have their
//! own bridge and do not see each other.
//!
//! Names carry the run: `<tag>-<pid>-<seq>-<node>` (`ftc-4242-0-m1`). [`TestNet`] removes its
//! namespaces (after killing every process inside them) when dropped, also while unwinding
//! from a panic; [`cleanup_active_runs`] does the same from a signal handler; and
//! [`remove_leftovers`] deletes what a crashed run (a dead pid) left behind.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use crate::cmd::run;
use crate::ChaosError;

/// Tags this library uses in namespace names; leftovers of any of them are cleaned up.
pub const KNOWN_TAGS: &[&str] = &["ftc", "ftj"];

/// The first three octets of every test address.
const SUBNET: [u8; 3] = [10, 77, 0];

static NEXT_SEQ: AtomicU32 = AtomicU32::new(0);

/// Prefixes of the runs of this process that are still set up (for signal handlers).
static ACTIVE_RUNS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// What a test host is for; decides its address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs a topic manager (`m1`, `m2`, ...: 10.77.0.11 and up).
    Manager,
    /// Runs a gateway (`g1`, ...: 10.77.0.31 and up).
    Gateway,
    /// Runs clients and operator commands (`c1`, ...: 10.77.0.51 and up).
    Client,
}

impl Role {
    fn letter(self) -> char {
        match self {
            Role::Manager => 'm',
            Role::Gateway => 'g',
            Role::Client => 'c',
        }
    }

    fn first_octet(self) -> u8 {
        match self {
            Role::Manager => 11,
            Role::Gateway => 31,
            Role::Client => 51,
        }
    }

    /// Hosts of one role per run (the address block is 20 wide).
    pub const MAX_PER_ROLE: usize = 20;
}

/// How many hosts of each role a run has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSpec {
    /// Manager hosts (spares for membership changes included).
    pub managers: usize,
    /// Gateway hosts.
    pub gateways: usize,
    /// Client hosts.
    pub clients: usize,
}

impl Default for HostSpec {
    fn default() -> Self {
        Self {
            managers: 3,
            gateways: 0,
            clients: 1,
        }
    }
}

/// One test host: a network namespace with one address on the run's bridge.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Host {
    /// Short name inside the run: `m1`, `g1`, `c1`.
    pub name: String,
    /// What it is for.
    pub role: Role,
    /// The network namespace (`ip netns` name).
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
}

/// A run's identity: `<tag>-<pid>-<seq>-`, the prefix of every name it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunId {
    prefix: String,
}

impl RunId {
    /// A fresh id for this process (`tag` is `ftc` for chaos, `ftj` for Jepsen runs).
    pub fn new(tag: &str) -> RunId {
        let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
        RunId {
            prefix: format!("{tag}-{}-{seq}-", std::process::id()),
        }
    }

    /// The name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// The hosts of one run. Dropping it kills every process in its namespaces and deletes them.
#[derive(Debug)]
pub struct TestNet {
    run: RunId,
    bridge_ns: String,
    hosts: Vec<Host>,
    torn_down: bool,
}

impl TestNet {
    /// Create the bridge namespace and one namespace per host. Removes leftovers of crashed
    /// runs first. Fails with [`ChaosError::NoNetns`] where namespaces are not permitted.
    pub fn create(tag: &str, spec: HostSpec) -> Result<TestNet, ChaosError> {
        for (n, what) in [
            (spec.managers, "managers"),
            (spec.gateways, "gateways"),
            (spec.clients, "clients"),
        ] {
            if n > Role::MAX_PER_ROLE {
                return Err(ChaosError::InvalidFault(format!(
                    "at most {} {what} per run, {n} asked",
                    Role::MAX_PER_ROLE
                )));
            }
        }
        remove_leftovers();
        let run = RunId::new(tag);
        register(run.prefix());
        let mut net = TestNet {
            bridge_ns: format!("{}br", run.prefix()),
            run,
            hosts: Vec::new(),
            torn_down: false,
        };
        // On error, `net` is dropped here and removes whatever was made.
        net.build(spec)?;
        Ok(net)
    }

    fn build(&mut self, spec: HostSpec) -> Result<(), ChaosError> {
        let br = self.bridge_ns.clone();
        run("ip", &["netns", "add", &br]).map_err(|e| ChaosError::NoNetns(e.to_string()))?;
        run("ip", &["-n", &br, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &br, "link", "set", "br0", "up"])?;
        for (role, count) in [
            (Role::Manager, spec.managers),
            (Role::Gateway, spec.gateways),
            (Role::Client, spec.clients),
        ] {
            for i in 0..count {
                let name = format!("{}{}", role.letter(), i + 1);
                let ns = format!("{}{name}", self.run.prefix());
                // `i` < MAX_PER_ROLE (checked in create), so the octet stays below 71.
                let ip = Ipv4Addr::new(
                    SUBNET[0],
                    SUBNET[1],
                    SUBNET[2],
                    role.first_octet() + i as u8,
                );
                run("ip", &["netns", "add", &ns])?;
                self.hosts.push(Host {
                    name: name.clone(),
                    role,
                    ns: ns.clone(),
                    ip,
                });
                let veth = format!("v-{name}");
                run(
                    "ip",
                    &[
                        "-n", &br, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                        "netns", &ns,
                    ],
                )?;
                run(
                    "ip",
                    &["-n", &br, "link", "set", &veth, "master", "br0", "up"],
                )?;
                run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
                let cidr = format!("{ip}/24");
                run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
                run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            }
        }
        Ok(())
    }

    /// This run's id.
    pub fn run_id(&self) -> &RunId {
        &self.run
    }

    /// Every host, managers first.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The hosts of one role.
    pub fn hosts_of(&self, role: Role) -> Vec<&Host> {
        self.hosts.iter().filter(|h| h.role == role).collect()
    }

    /// The host called `name` (`m1`, `c1`, ...).
    pub fn host(&self, name: &str) -> Result<&Host, ChaosError> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| ChaosError::UnknownNode(name.to_string()))
    }

    /// The namespace holding the bridge.
    pub fn bridge_ns(&self) -> &str {
        &self.bridge_ns
    }

    /// Kill every process in the run's namespaces and delete them. Idempotent; also done on
    /// drop.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        remove_run(self.run.prefix());
        unregister(self.run.prefix());
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn register(prefix: &str) {
    ACTIVE_RUNS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(prefix.to_string());
}

fn unregister(prefix: &str) {
    ACTIVE_RUNS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| p != prefix);
}

/// Tear down every run of this process that is still set up: for signal handlers, which
/// then exit without unwinding.
pub fn cleanup_active_runs() {
    let prefixes: Vec<String> = ACTIVE_RUNS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
        .collect();
    for p in prefixes {
        remove_run(&p);
    }
}

/// Every network namespace on this machine.
pub fn list_namespaces() -> Vec<String> {
    run("ip", &["netns", "list"])
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The namespaces whose name starts with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// The pids of the processes in namespace `ns`.
pub fn pids_in(ns: &str) -> Vec<i32> {
    run("ip", &["netns", "pids", ns])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kill every process in the namespaces of `prefix`, then delete the namespaces (which
/// removes their veth ends, addresses and nftables tables with them).
pub fn remove_run(prefix: &str) {
    let namespaces = namespaces_with_prefix(prefix);
    let mut victims = BTreeSet::new();
    for ns in &namespaces {
        victims.extend(pids_in(ns));
    }
    let me = std::process::id() as i32;
    for &pid in &victims {
        if pid == me {
            continue;
        }
        if let Some(pid) = Pid::from_raw(pid) {
            // SIGKILL also ends a SIGSTOPped process. ESRCH: already gone.
            let _ = kill_process(pid, Signal::KILL);
        }
    }
    // Give the kernel a moment to reap them so that nothing of the run lingers.
    let deadline = Instant::now() + Duration::from_secs(5);
    while victims
        .iter()
        .any(|&p| p != me && process_alive(p) && !is_zombie(p))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    for ns in &namespaces {
        if let Err(e) = run("ip", &["netns", "delete", ns]) {
            tracing::warn!(ns, error = %e, "cannot delete a namespace of the run");
        }
    }
}

/// Remove the namespaces (and their processes) of earlier runs whose process is dead.
/// Returns the prefixes removed.
pub fn remove_leftovers() -> Vec<String> {
    let mut dead = BTreeSet::new();
    for ns in list_namespaces() {
        if let Some((prefix, pid)) = parse_run_prefix(&ns) {
            if !process_alive(pid) || is_zombie(pid) {
                dead.insert(prefix);
            }
        }
    }
    for prefix in &dead {
        tracing::info!(prefix, "removing leftovers of a crashed run");
        remove_run(prefix);
    }
    dead.into_iter().collect()
}

/// `ftc-4242-0-m1` -> (`ftc-4242-0-`, 4242), for names this library makes.
pub fn parse_run_prefix(name: &str) -> Option<(String, i32)> {
    let mut parts = name.splitn(4, '-');
    let tag = parts.next()?;
    let pid = parts.next()?;
    let seq = parts.next()?;
    parts.next()?;
    if !KNOWN_TAGS.contains(&tag) || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pid: i32 = pid.parse().ok()?;
    Some((format!("{tag}-{pid}-{seq}-"), pid))
}

/// True when a process with this pid exists.
pub fn process_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_prefixes_parse() {
        assert_eq!(
            parse_run_prefix("ftc-4242-0-m1"),
            Some(("ftc-4242-0-".to_string(), 4242))
        );
        assert_eq!(
            parse_run_prefix("ftj-7-12-br"),
            Some(("ftj-7-12-".to_string(), 7))
        );
        assert_eq!(parse_run_prefix("ftc-4242-0"), None);
        assert_eq!(parse_run_prefix("other-1-0-m1"), None);
        assert_eq!(parse_run_prefix("ftc-x-0-m1"), None);
        assert_eq!(parse_run_prefix("ftc-1-a-m1"), None);
    }

    #[test]
    fn run_ids_are_unique_in_a_process() {
        assert_ne!(RunId::new("ftc"), RunId::new("ftc"));
    }
}
