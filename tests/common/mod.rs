//! Shared fixture of the binary-level tests: real `firetower manager` processes on loopback,
//! each with its own ports and data directory, driven with the CLI as an operator would.

#![allow(dead_code)]

pub mod ws;

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use firetower_proto::{GroupId, MembersView};
use serde_json::Value;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_firetower")
}

/// Highest manager id and gateway id the shared TLS directory has certificates for.
pub const TLS_IDS: u64 = 9;

/// The TLS directory every process of this test binary uses (`FIRETOWER_TLS_DIR`), made
/// once with the CLI as an operator would: `certs init`, then a certificate for managers and
/// gateways 1..=[`TLS_IDS`]. The clusters of these tests run secure, as in production.
pub fn tls_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("firetower-tests-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dir_str = dir.to_str().expect("utf-8 temp path").to_owned();
        let run = |args: &[&str]| {
            let out = Command::new(bin())
                .args(args)
                .output()
                .expect("firetower runs");
            assert!(
                out.status.success(),
                "firetower {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["certs", "init", "--dir", &dir_str]);
        for id in 1..=TLS_IDS {
            let id = id.to_string();
            run(&[
                "certs",
                "issue",
                "--dir",
                &dir_str,
                "--manager",
                &id,
                "--host",
                "127.0.0.1",
            ]);
            run(&["certs", "issue", "--dir", &dir_str, "--gateway", &id]);
        }
        dir
    })
}

/// A command for the binary under test, with the shared TLS directory in its environment.
pub fn command() -> Command {
    let mut command = Command::new(bin());
    command.env("FIRETOWER_TLS_DIR", tls_dir());
    command
}

/// Run the CLI to completion.
pub fn cli(args: &[&str]) -> Output {
    command()
        .args(args)
        .env("FIRETOWER_LOG", "warn")
        .output()
        .expect("the firetower binary runs")
}

/// Run the CLI and return stdout, panicking with stderr when it fails.
pub fn cli_ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "firetower {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free loopback TCP port.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// A free loopback UDP port.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// One manager process.
pub struct ManagerProc {
    pub id: u64,
    pub quic: String,
    pub admin: String,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl ManagerProc {
    pub fn new(id: u64, root: &Path) -> Self {
        let data_dir = root.join(format!("m{id}"));
        ManagerProc {
            id,
            quic: format!("127.0.0.1:{}", free_udp_port()),
            admin: format!("127.0.0.1:{}", free_tcp_port()),
            log: root.join(format!("m{id}.log")),
            data_dir,
            child: None,
        }
    }

    /// Start the process (again); waits until its admin port answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "manager {} already running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log file");
        let child = command()
            .args([
                "manager",
                "--id",
                &self.id.to_string(),
                "--quic",
                &self.quic,
                "--admin",
                &self.admin,
                "--data-dir",
                self.data_dir.to_str().expect("utf-8 path"),
            ])
            .env("FIRETOWER_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn manager");
        self.child = Some(child);
        wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(&self.admin).is_ok()
        })
        .unwrap_or_else(|_| {
            panic!(
                "manager {} admin port never opened; log:\n{}",
                self.id,
                self.log_text()
            )
        });
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit (a graceful shutdown).
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -TERM failed");
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ManagerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A set of managers under one temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub managers: Vec<ManagerProc>,
}

impl Cluster {
    /// Start `n` managers (ids 1..=n); not yet initialized.
    pub fn start(n: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut managers: Vec<ManagerProc> =
            (1..=n).map(|id| ManagerProc::new(id, dir.path())).collect();
        for m in &mut managers {
            m.start();
        }
        Cluster { dir, managers }
    }

    /// Start `n` managers and `cluster init` them.
    pub fn start_initialized(n: u64) -> Self {
        let c = Cluster::start(n);
        c.init();
        c
    }

    /// Start `n` managers, `cluster init` them, and wait (10 s at most) until every group has
    /// a leader and all `n` managers as voters.
    pub fn start_formed(n: u64) -> Self {
        let c = Cluster::start_initialized(n);
        let ids: Vec<u64> = (1..=n).collect();
        wait_until(Duration::from_secs(10), || {
            c.members().is_some_and(|m| all_groups_led(&m, &ids, &ids))
        })
        .unwrap_or_else(|_| panic!("not formed\n{}", c.dump_logs()));
        c
    }

    pub fn init(&self) {
        let mut args = vec!["cluster", "init", "--admin", &self.managers[0].admin];
        for m in &self.managers[1..] {
            args.push("--member");
            args.push(&m.admin);
        }
        cli_ok(&args);
    }

    pub fn manager(&mut self, id: u64) -> &mut ManagerProc {
        self.managers
            .iter_mut()
            .find(|m| m.id == id)
            .expect("manager id exists")
    }

    /// Add a manager process (started, not joined).
    pub fn spawn_extra(&mut self, id: u64) -> &mut ManagerProc {
        let mut m = ManagerProc::new(id, self.dir.path());
        m.start();
        self.managers.push(m);
        self.managers.last_mut().expect("just pushed")
    }

    /// Admin address of a running manager.
    pub fn any_admin(&self) -> String {
        self.managers
            .iter()
            .find(|m| m.child.is_some())
            .expect("a running manager")
            .admin
            .clone()
    }

    /// QUIC addresses of every manager, comma separated.
    pub fn quic_list(&self) -> String {
        self.managers
            .iter()
            .map(|m| m.quic.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `cluster members --json` through a running manager, or None if the call failed.
    /// `cluster members --json`, read into the CLI's own view type.
    pub fn members(&self) -> Option<MembersView> {
        serde_json::from_value(self.members_json()?).ok()
    }

    /// `cluster members --json` as untyped JSON, for tests of the output's shape itself.
    pub fn members_json(&self) -> Option<Value> {
        let out = cli(&["cluster", "members", "--admin", &self.any_admin(), "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn dump_logs(&self) -> String {
        self.managers
            .iter()
            .map(|m| format!("---- manager {} ----\n{}", m.id, tail(&m.log_text(), 60)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Poll `f` until it is true or the timeout passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Result<Duration, ()> {
    let start = Instant::now();
    loop {
        if f() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every group has a leader among `allowed`, and voters equal `voters`.
pub fn all_groups_led(members: &MembersView, allowed: &[u64], voters: &[u64]) -> bool {
    !members.groups.is_empty()
        && members.groups.iter().all(|g| {
            let v: Vec<u64> = g.voters.iter().map(|id| id.get()).collect();
            g.leader.is_some_and(|l| allowed.contains(&l.get())) && v == voters
        })
}

/// The leader of a group in a members view.
pub fn leader_of(members: &MembersView, group: u64) -> Option<u64> {
    let group = GroupId(u32::try_from(group).ok()?);
    Some(members.group(group)?.leader?.get())
}

/// Reachability of a manager in a members view.
pub fn reachable(members: &MembersView, id: u64) -> Option<bool> {
    members
        .managers
        .iter()
        .find(|m| m.id.get() == id)
        .map(|m| m.reachable)
}

/// One gateway process connected to a cluster.
pub struct GatewayProc {
    pub id: u64,
    pub listen: String,
    pub managers: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl GatewayProc {
    pub fn new(id: u64, root: &Path, managers_admin: String) -> Self {
        GatewayProc {
            id,
            listen: format!("127.0.0.1:{}", free_tcp_port()),
            managers: managers_admin,
            child: None,
            log: root.join(format!("g{id}.log")),
        }
    }

    /// Start (again) and wait until `/readyz` answers 200.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "gateway {} already running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log file");
        let child = command()
            .args([
                "gateway",
                "--id",
                &self.id.to_string(),
                "--listen",
                &self.listen,
                "--managers",
                &self.managers,
                "--lease-ms",
                "3000",
                "--allow-anonymous",
            ])
            .env("FIRETOWER_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gateway");
        self.child = Some(child);
        let listen = self.listen.clone();
        wait_until(Duration::from_secs(20), || {
            http_status(&listen, "/readyz") == Some(200)
        })
        .unwrap_or_else(|_| {
            panic!(
                "gateway {} never became ready; log:\n{}",
                self.id,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        });
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Cluster {
    /// Admin addresses of every manager, comma separated.
    pub fn admin_list(&self) -> String {
        self.managers
            .iter()
            .map(|m| m.admin.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Start a gateway connected to this cluster.
    pub fn gateway(&self, id: u64) -> GatewayProc {
        let mut g = GatewayProc::new(id, self.dir.path(), self.admin_list());
        g.start();
        g
    }

    /// Wait until every group has a leader.
    pub fn wait_formed(&self) {
        let ids: Vec<u64> = self.managers.iter().map(|m| m.id).collect();
        wait_until(Duration::from_secs(10), || {
            self.members()
                .is_some_and(|m| all_groups_led(&m, &ids, &ids))
        })
        .unwrap_or_else(|_| panic!("cluster not formed\n{}", self.dump_logs()));
    }
}

/// Status code of a plain HTTP GET, or None when nothing answers.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}
