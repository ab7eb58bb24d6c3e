//! A Firetower cluster on test hosts: managers (and gateways) started from the built
//! `firetower` binary, operated through its CLI from a client host, and the faults the
//! harness injects into it.
//!
//! ```text
//!   Cluster ── TestNet (namespaces, bridge)
//!          ├── ManagerNode m1..mN: NodeProcess `firetower manager` + data dir + id
//!          ├── gateways g1..: NodeProcess `firetower gateway`
//!          └── admin calls: `ip netns exec <c1> firetower cluster ... --json`
//!                (`cluster members --json` read as firetower_proto::MembersView)
//! ```
//!
//! Gateways log JSON lines (`FIRETOWER_LOG_FORMAT=json`), their session changes included:
//! harnesses read the `event` field of those lines (see `Cluster::gateway_log`), never a
//! human sentence.
//!
//! The manager on a host keeps the host's address for its life; replacing it (dead disk)
//! gives it a new id and an empty data directory, following docs/operations.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firetower_proto::{GroupId, GroupView, ManagerId, MembersView};

use firetower_link::Role as TlsRole;

use crate::cmd::run;
use crate::net::{Host, HostSpec, Role, TestNet};
use crate::partition::{self, Partition};
use crate::process::{NodeProcess, ProcessState};
use crate::wal::{damage_wal, WalDamage};
use crate::ChaosError;

/// QUIC port of every manager (on its own address).
pub const QUIC_PORT: u16 = 6666;
/// Manager ids a secure run has certificates for (spares and replacements take new ids).
const TLS_MANAGER_IDS: u64 = 32;
/// Gateway ids a secure run has certificates for (gateway hosts, Jepsen workers).
const TLS_GATEWAY_IDS: u64 = 16;
/// Gateway ids of the availability probes.
const PROBE_GATEWAY_IDS: std::ops::RangeInclusive<u64> = 900..=931;
/// Admin (gRPC) port of every manager.
pub const ADMIN_PORT: u16 = 6667;
/// WebSocket port of every gateway.
pub const GATEWAY_PORT: u16 = 9090;

/// What to build.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `firetower` binary to run.
    pub binary: PathBuf,
    /// Data directories and logs go here.
    pub run_dir: PathBuf,
    /// Namespace name tag (`ftc`, `ftj`).
    pub tag: String,
    /// Hosts; manager hosts beyond `initial_managers` are spares for membership changes.
    pub hosts: HostSpec,
    /// Managers started and joined by `cluster init`.
    pub initial_managers: usize,
    /// Raft groups.
    pub groups: u32,
    /// Extra flags for every `firetower manager` (for example `--unsafe-stale-reads`).
    pub manager_flags: Vec<String>,
    /// Start a gateway on each gateway host.
    pub start_gateways: bool,
    /// Mutual TLS (a CA and certificates under `run_dir/tls`), as in production; `false` runs
    /// every process with `--insecure`.
    pub secure: bool,
}

impl ClusterSpec {
    /// Three managers, one client host, 8 groups.
    pub fn new(binary: PathBuf, run_dir: PathBuf) -> ClusterSpec {
        ClusterSpec {
            binary,
            run_dir,
            tag: "ftc".into(),
            hosts: HostSpec::default(),
            initial_managers: 3,
            groups: 8,
            manager_flags: Vec::new(),
            start_gateways: false,
            secure: true,
        }
    }
}

/// A manager on its host.
#[derive(Debug)]
pub struct ManagerNode {
    /// Its current id (a replacement gets a new one).
    pub id: u64,
    /// True while it is a member of the cluster (as far as this harness changed it).
    pub member: bool,
    /// Its current data directory.
    pub data_dir: PathBuf,
    process: NodeProcess,
}

impl ManagerNode {
    /// The host it runs on.
    pub fn host(&self) -> &Host {
        self.process.host()
    }

    /// Its QUIC address.
    pub fn quic(&self) -> SocketAddr {
        SocketAddr::from((self.host().ip, QUIC_PORT))
    }

    /// Its admin address.
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.host().ip, ADMIN_PORT))
    }

    /// Running, paused or down.
    pub fn state(&mut self) -> ProcessState {
        self.process.state()
    }
}

/// A cluster on test hosts. Dropping it kills everything and removes the namespaces.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    managers: BTreeMap<String, ManagerNode>,
    gateways: BTreeMap<String, NodeProcess>,
    next_id: u64,
    // Last: dropped after the processes, so that they are reaped before the namespaces go.
    net: TestNet,
}

impl Cluster {
    /// Create the hosts, start the initial managers, `cluster init` them and wait until every
    /// group has a leader; then start the gateways if asked.
    pub fn start(spec: ClusterSpec) -> Result<Cluster, ChaosError> {
        if spec.hosts.clients == 0 {
            return Err(ChaosError::InvalidFault(
                "a cluster needs a client host for admin commands".into(),
            ));
        }
        if spec.initial_managers == 0 || spec.initial_managers > spec.hosts.managers {
            return Err(ChaosError::InvalidFault(format!(
                "{} initial managers on {} manager hosts",
                spec.initial_managers, spec.hosts.managers
            )));
        }
        if !spec.binary.exists() {
            return Err(ChaosError::io(
                &spec.binary,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the firetower binary is missing; build it with `cargo build`",
                ),
            ));
        }
        partition::ensure_nft()?;
        if spec.secure {
            // One CA per run and a certificate for every id a run may use: managers (spares
            // and replacements get new ids), gateways, and the probes' gateway ids.
            let dir = spec.run_dir.join("tls");
            let mut roles: Vec<TlsRole> = (1..=TLS_MANAGER_IDS).map(TlsRole::Manager).collect();
            roles.extend((1..=TLS_GATEWAY_IDS).map(TlsRole::Gateway));
            roles.extend(PROBE_GATEWAY_IDS.map(TlsRole::Gateway));
            firetower_link::certs::ensure(&dir, &spec.tag, &roles)
                .map_err(|e| ChaosError::io(&dir, std::io::Error::other(e.to_string())))?;
        }
        for sub in ["data", "logs"] {
            let dir = spec.run_dir.join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| ChaosError::io(&dir, e))?;
        }
        let net = TestNet::create(&spec.tag, spec.hosts)?;
        let mut cluster = Cluster {
            managers: BTreeMap::new(),
            gateways: BTreeMap::new(),
            next_id: 1,
            net,
            spec,
        };
        let manager_hosts: Vec<Host> = cluster
            .net
            .hosts_of(Role::Manager)
            .into_iter()
            .cloned()
            .collect();
        for host in manager_hosts {
            let id = cluster.next_id;
            cluster.next_id += 1;
            let data_dir = cluster
                .spec
                .run_dir
                .join("data")
                .join(format!("{}-id{id}", host.name));
            let log = cluster
                .spec
                .run_dir
                .join("logs")
                .join(format!("{}.log", host.name));
            let args = cluster.manager_args(&host, id, &data_dir);
            let process = NodeProcess::new(host.clone(), &cluster.spec.binary, args, log);
            cluster.managers.insert(
                host.name.clone(),
                ManagerNode {
                    id,
                    member: false,
                    data_dir,
                    process,
                },
            );
        }
        let initial: Vec<String> = cluster
            .managers
            .keys()
            .take(cluster.spec.initial_managers)
            .cloned()
            .collect();
        for name in &initial {
            cluster.manager_mut(name)?.process.start()?;
        }
        let admins: Vec<String> = initial
            .iter()
            .filter_map(|n| cluster.managers.get(n).map(|m| m.admin().to_string()))
            .collect();
        cluster.wait_admin_up(&admins, Duration::from_secs(20))?;
        let mut init = vec![
            "cluster".to_string(),
            "init".into(),
            "--admin".into(),
            admins[0].clone(),
            "--groups".into(),
            cluster.spec.groups.to_string(),
        ];
        for a in &admins[1..] {
            init.push("--member".into());
            init.push(a.clone());
        }
        cluster.firetower(&init, Duration::from_secs(60))?;
        for name in &initial {
            cluster.manager_mut(name)?.member = true;
        }
        cluster.wait_for_leaders(Duration::from_secs(30))?;
        if cluster.spec.start_gateways {
            let gateway_hosts: Vec<Host> = cluster
                .net
                .hosts_of(Role::Gateway)
                .into_iter()
                .cloned()
                .collect();
            for (i, host) in gateway_hosts.into_iter().enumerate() {
                let mut args = vec![
                    "gateway".to_string(),
                    "--id".into(),
                    (i + 1).to_string(),
                    "--listen".into(),
                    SocketAddr::from((host.ip, GATEWAY_PORT)).to_string(),
                    "--managers".into(),
                    admins.join(","),
                    // The test clients bring no credentials.
                    "--allow-anonymous".into(),
                ];
                args.extend(cluster.tls_args());
                let log = cluster
                    .spec
                    .run_dir
                    .join("logs")
                    .join(format!("{}.log", host.name));
                let mut p = NodeProcess::new(host.clone(), &cluster.spec.binary, args, log);
                // Session changes are logged at debug level, as JSON events with a stable
                // `event` field (`session_up` / `session_down`); the Jepsen delivery checker
                // reads them from the gateway logs to know when a gateway had no session.
                let base = std::env::var("FIRETOWER_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn".to_string());
                p.set_env(
                    "FIRETOWER_LOG",
                    &format!("{base},firetower_gateway::cluster=debug"),
                );
                p.set_env("FIRETOWER_LOG_FORMAT", "json");
                p.set_env("NO_COLOR", "1");
                p.start()?;
                cluster.gateways.insert(host.name.clone(), p);
            }
        }
        Ok(cluster)
    }

    fn manager_args(&self, host: &Host, id: u64, data_dir: &Path) -> Vec<String> {
        let mut args = vec![
            "manager".to_string(),
            "--id".into(),
            id.to_string(),
            "--quic".into(),
            SocketAddr::from((host.ip, QUIC_PORT)).to_string(),
            "--admin".into(),
            SocketAddr::from((host.ip, ADMIN_PORT)).to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        // The test hooks its nemeses may use.
        args.extend(self.tls_args());
        args.push("--unsafe-test-hooks".into());
        args.extend(self.spec.manager_flags.iter().cloned());
        args
    }

    /// The test hosts.
    pub fn net(&self) -> &TestNet {
        &self.net
    }

    /// The run's TLS directory, `None` for an `--insecure` cluster.
    pub fn tls_dir(&self) -> Option<PathBuf> {
        self.spec.secure.then(|| self.spec.run_dir.join("tls"))
    }

    /// The flags every process of this cluster takes: `--tls-dir DIR` or `--insecure`.
    pub fn tls_args(&self) -> Vec<String> {
        match self.tls_dir() {
            Some(dir) => vec!["--tls-dir".into(), dir.display().to_string()],
            None => vec!["--insecure".into()],
        }
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The client host that runs admin commands and workers.
    pub fn client_host(&self) -> Result<&Host, ChaosError> {
        self.net.host("c1")
    }

    /// Manager host names, in order (`m1`, `m2`, ...), members or not.
    pub fn manager_names(&self) -> Vec<String> {
        self.managers.keys().cloned().collect()
    }

    /// Host names of the current members.
    pub fn member_names(&self) -> Vec<String> {
        self.managers
            .iter()
            .filter(|(_, m)| m.member)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Host names of spare manager hosts (not members).
    pub fn spare_names(&self) -> Vec<String> {
        self.managers
            .iter()
            .filter(|(_, m)| !m.member)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The manager on host `name`.
    pub fn manager(&self, name: &str) -> Result<&ManagerNode, ChaosError> {
        self.managers
            .get(name)
            .ok_or_else(|| ChaosError::UnknownNode(name.to_string()))
    }

    fn manager_mut(&mut self, name: &str) -> Result<&mut ManagerNode, ChaosError> {
        self.managers
            .get_mut(name)
            .ok_or_else(|| ChaosError::UnknownNode(name.to_string()))
    }

    /// The host running the manager with this id.
    pub fn name_of_id(&self, id: u64) -> Option<String> {
        self.managers
            .iter()
            .find(|(_, m)| m.id == id)
            .map(|(n, _)| n.clone())
    }

    /// QUIC addresses of the member managers.
    pub fn quic_addrs(&self) -> Vec<SocketAddr> {
        self.managers
            .values()
            .filter(|m| m.member)
            .map(|m| m.quic())
            .collect()
    }

    /// QUIC addresses of every manager host, members or spares.
    pub fn all_quic_addrs(&self) -> Vec<SocketAddr> {
        self.managers.values().map(|m| m.quic()).collect()
    }

    /// Admin addresses of the member managers.
    pub fn admin_addrs(&self) -> Vec<SocketAddr> {
        self.managers
            .values()
            .filter(|m| m.member)
            .map(|m| m.admin())
            .collect()
    }

    /// WebSocket addresses of the gateways.
    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.gateways
            .values()
            .map(|g| SocketAddr::from((g.host().ip, GATEWAY_PORT)))
            .collect()
    }

    /// Run `firetower ARGS` on the client host, killed after `limit`.
    pub fn firetower(&self, args: &[String], limit: Duration) -> Result<String, ChaosError> {
        let client = self.client_host()?;
        let secs = format!("{}", limit.as_secs().max(1));
        let binary = self.spec.binary.display().to_string();
        let mut full: Vec<&str> = vec![
            "-s", "KILL", &secs, "ip", "netns", "exec", &client.ns, &binary,
        ];
        full.extend(args.iter().map(String::as_str));
        let tls = self.tls_args();
        if matches!(args.first().map(String::as_str), Some("cluster" | "link")) {
            full.extend(tls.iter().map(String::as_str));
        }
        run("timeout", &full)
    }

    fn wait_admin_up(&self, admins: &[String], limit: Duration) -> Result<(), ChaosError> {
        let deadline = Instant::now() + limit;
        for admin in admins {
            loop {
                let args = ["cluster", "members", "--admin", admin, "--json"].map(String::from);
                match self.firetower(&args, Duration::from_secs(5)) {
                    Ok(_) => break,
                    // Before init, `members` may refuse but the admin port answers.
                    Err(ChaosError::Command { stderr, .. })
                        if !stderr.contains("transport") && !stderr.contains("connect") =>
                    {
                        break
                    }
                    Err(e) if Instant::now() >= deadline => {
                        return Err(ChaosError::Timeout {
                            after: limit,
                            what: format!("manager admin {admin} to answer: {e}"),
                        })
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        }
        Ok(())
    }

    /// `cluster members --json` through the first member that answers.
    pub fn members(&self) -> Result<MembersView, ChaosError> {
        let mut last = None;
        for name in self.member_names() {
            let m = self.manager(&name)?;
            let args = [
                "cluster".to_string(),
                "members".into(),
                "--admin".into(),
                m.admin().to_string(),
                "--json".into(),
            ];
            match self.firetower(&args, Duration::from_secs(8)) {
                Ok(out) => {
                    return serde_json::from_str(out.trim()).map_err(|e| ChaosError::Parse {
                        command: "cluster members --json".into(),
                        message: e.to_string(),
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ChaosError::InvalidFault("the cluster has no members".into())))
    }

    /// Each group: its leader, term and voters.
    pub fn groups(&self) -> Result<Vec<GroupView>, ChaosError> {
        Ok(self.members()?.groups)
    }

    /// The leader id of `group`, if there is one now.
    pub fn leader_of(&self, group: u32) -> Result<Option<u64>, ChaosError> {
        Ok(self
            .members()?
            .group(GroupId(group))
            .and_then(|g| g.leader)
            .map(ManagerId::get))
    }

    /// The member host that leads the most groups (ties: lowest name). A leader that is no
    /// longer a member (the view can lag a removal by a moment) is not counted.
    pub fn busiest_leader(&self) -> Result<Option<String>, ChaosError> {
        let mut count: BTreeMap<u64, usize> = BTreeMap::new();
        for g in self.groups()? {
            if let Some(l) = g.leader {
                *count.entry(l.get()).or_default() += 1;
            }
        }
        let is_member = |id: &u64| {
            self.name_of_id(*id)
                .and_then(|n| self.managers.get(&n))
                .is_some_and(|m| m.member)
        };
        let best = count
            .into_iter()
            .filter(|(id, _)| is_member(id))
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(id, _)| id);
        Ok(best.and_then(|id| self.name_of_id(id)))
    }

    /// Wait until every group has a leader whose view lists only running members as
    /// leaders; returns the groups.
    pub fn wait_for_leaders(&self, limit: Duration) -> Result<Vec<GroupView>, ChaosError> {
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.groups() {
                Ok(groups)
                    if !groups.is_empty()
                        && groups.iter().all(|g| {
                            g.leader.is_some_and(|l| {
                                self.name_of_id(l.get())
                                    .and_then(|n| self.managers.get(&n))
                                    .is_some_and(|m| m.member)
                            })
                        }) =>
                {
                    return Ok(groups)
                }
                Ok(groups) => format!("groups without a leader: {groups:?}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(ChaosError::Timeout {
                    after: limit,
                    what: format!("every group to elect a leader ({last})"),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `kill -9` the manager on `name`.
    pub fn kill(&mut self, name: &str) -> Result<(), ChaosError> {
        self.manager_mut(name)?.process.kill();
        Ok(())
    }

    /// SIGSTOP the manager on `name`.
    pub fn pause(&mut self, name: &str) -> Result<(), ChaosError> {
        self.manager_mut(name)?.process.pause()
    }

    /// SIGCONT the manager on `name`.
    pub fn resume(&mut self, name: &str) -> Result<(), ChaosError> {
        self.manager_mut(name)?.process.resume()
    }

    /// Start the manager on `name` again on its data directory (no-op when running).
    pub fn start_manager(&mut self, name: &str) -> Result<(), ChaosError> {
        let m = self.manager_mut(name)?;
        if m.process.state() == ProcessState::Paused {
            return m.process.resume();
        }
        m.process.start()
    }

    /// SIGTERM (graceful) and start again.
    pub fn restart(&mut self, name: &str) -> Result<(), ChaosError> {
        let m = self.manager_mut(name)?;
        m.process.terminate(Duration::from_secs(10));
        m.process.start()
    }

    /// Is the manager on `name` running, paused or down?
    pub fn manager_state(&mut self, name: &str) -> Result<ProcessState, ChaosError> {
        Ok(self.manager_mut(name)?.process.state())
    }

    /// Resume every paused manager and start every member that is down.
    pub fn revive_all(&mut self) -> Result<(), ChaosError> {
        for name in self.member_names() {
            self.start_manager(&name)?;
        }
        Ok(())
    }

    /// Damage the write-ahead log of the (stopped) manager on `name`.
    pub fn damage_wal(&mut self, name: &str, damage: WalDamage) -> Result<String, ChaosError> {
        let m = self.manager_mut(name)?;
        if m.process.state() != ProcessState::Down {
            return Err(ChaosError::NodeState {
                node: name.to_string(),
                message: "the manager must be stopped before its log is damaged".into(),
            });
        }
        damage_wal(&m.data_dir, damage)
    }

    /// The documented replace procedure for a dead disk: kill the manager, `cluster remove`
    /// its id, start a manager with a new id on an empty data directory on the same host,
    /// `cluster add` it. Returns the new id.
    pub fn replace_with_wiped(&mut self, name: &str) -> Result<u64, ChaosError> {
        let old_id = self.manager(name)?.id;
        self.kill(name)?;
        self.remove_member(name, old_id)?;
        let new_id = self.next_id;
        self.next_id += 1;
        let host = self.manager(name)?.host().clone();
        let data_dir = self
            .spec
            .run_dir
            .join("data")
            .join(format!("{name}-id{new_id}"));
        let args = self.manager_args(&host, new_id, &data_dir);
        let old_dir = {
            let m = self.manager_mut(name)?;
            let old = std::mem::replace(&mut m.data_dir, data_dir);
            m.id = new_id;
            m.process.set_args(args);
            old
        };
        // The dead disk: its contents are gone.
        let _ = std::fs::remove_dir_all(&old_dir);
        self.add_member(name)?;
        Ok(new_id)
    }

    /// Start the manager on the spare host `name` and `cluster add` it (waits until it is a
    /// voter in every group).
    pub fn add_member(&mut self, name: &str) -> Result<(), ChaosError> {
        self.manager_mut(name)?.process.start()?;
        let new_admin = self.manager(name)?.admin().to_string();
        self.wait_admin_up(std::slice::from_ref(&new_admin), Duration::from_secs(20))?;
        let via = self.any_member_admin(Some(name))?;
        self.firetower(
            &[
                "cluster".into(),
                "add".into(),
                "--admin".into(),
                via,
                "--new".into(),
                new_admin,
            ],
            Duration::from_secs(120),
        )?;
        self.manager_mut(name)?.member = true;
        Ok(())
    }

    /// `cluster remove` the manager `id` (on host `name`), then stop its process. Retries
    /// for up to a minute: right after a manager dies, groups it led have no leader until
    /// the survivors elect one, and the change needs a leader.
    pub fn remove_member(&mut self, name: &str, id: u64) -> Result<(), ChaosError> {
        let limit = Duration::from_secs(60);
        let deadline = Instant::now() + limit;
        loop {
            let via = self.any_member_admin(Some(name))?;
            let result = self.firetower(
                &[
                    "cluster".into(),
                    "remove".into(),
                    "--admin".into(),
                    via,
                    "--id".into(),
                    id.to_string(),
                ],
                Duration::from_secs(120),
            );
            match result {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    tracing::info!(error = %e, "cluster remove failed; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        let m = self.manager_mut(name)?;
        m.member = false;
        m.process.terminate(Duration::from_secs(5));
        Ok(())
    }

    fn any_member_admin(&mut self, except: Option<&str>) -> Result<String, ChaosError> {
        let names = self.member_names();
        for n in names {
            if Some(n.as_str()) == except {
                continue;
            }
            let m = self.manager_mut(&n)?;
            if m.process.state() == ProcessState::Running {
                return Ok(m.admin().to_string());
            }
        }
        Err(ChaosError::InvalidFault(
            "no running member manager to send the admin call to".into(),
        ))
    }

    /// Apply a partition among the run's hosts (replacing any earlier one).
    pub fn partition(&self, p: &Partition) -> Result<(), ChaosError> {
        partition::apply(p, self.net.hosts())
    }

    /// Remove every partition.
    pub fn heal(&self) -> Result<(), ChaosError> {
        partition::heal(self.net.hosts())
    }

    /// Gateway host names, in order (`g1`, `g2`, ...).
    pub fn gateway_names(&self) -> Vec<String> {
        self.gateways.keys().cloned().collect()
    }

    /// The log file of the gateway on `name`: JSON lines, one `tracing` event each.
    pub fn gateway_log(&self, name: &str) -> Result<PathBuf, ChaosError> {
        self.gateways
            .get(name)
            .map(|g| g.log_path().to_path_buf())
            .ok_or_else(|| ChaosError::UnknownNode(name.to_string()))
    }

    /// Kill the gateway on `name`.
    pub fn kill_gateway(&mut self, name: &str) -> Result<(), ChaosError> {
        self.gateways
            .get_mut(name)
            .ok_or_else(|| ChaosError::UnknownNode(name.to_string()))?
            .kill();
        Ok(())
    }

    /// Start the gateway on `name` again.
    pub fn start_gateway(&mut self, name: &str) -> Result<(), ChaosError> {
        self.gateways
            .get_mut(name)
            .ok_or_else(|| ChaosError::UnknownNode(name.to_string()))?
            .start()
    }

    /// Kill everything and remove the hosts (also done on drop).
    pub fn teardown(&mut self) {
        for g in self.gateways.values_mut() {
            g.kill();
        }
        for m in self.managers.values_mut() {
            m.process.kill();
        }
        self.net.teardown();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}
