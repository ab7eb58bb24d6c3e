//! Fail-stop on a full disk, with the real binary: a manager whose data directory is a 2 MiB
//! tmpfs is driven with subscription commits (`bench commits`) until its write-ahead log gets
//! ENOSPC. It must answer `/healthz` with 503 and the reason during its grace period, log the
//! `manager_fatal` event with the file and the OS error, and exit with status 3 and a message
//! saying what happened and what to do, instead of staying up with its groups dead.
//!
//! Needs root to mount the tmpfs (CI runs as root); fails, never skips, without it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{cli_ok, free_tcp_port, free_udp_port, wait_until};
use serde_json::Value;

/// Small enough to fill within seconds, large enough for the manager to start and form.
const TMPFS_SIZE: &str = "2m";
/// The manager must stop within this long of the first commits (it fills in a few seconds).
const FILL_DEADLINE: Duration = Duration::from_secs(90);

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path) -> Tmpfs {
        assert!(
            is_root(),
            "this test mounts a tmpfs as the manager's data directory and needs root \
             (CI runs as root); run it as root"
        );
        std::fs::create_dir_all(path).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_SIZE}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs on {} (this test needs root with mount rights): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file open: detach it now, freed when released.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET /healthz`: the status code and the body, or `None` if nothing answered.
fn healthz(addr: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The JSON log events of the manager's stderr with the given `event` field.
fn events(log: &str, event: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["event"] == event)
        .collect()
}

#[test]
fn a_manager_on_a_full_disk_reports_unhealthy_and_exits_3() {
    let work = tempfile::tempdir().expect("temp dir");
    let mount = Tmpfs::mount(&work.path().join("disk"));
    let data_dir = mount.path.join("m1");
    let log_path = work.path().join("m1.log");
    let quic = format!("127.0.0.1:{}", free_udp_port());
    let admin = format!("127.0.0.1:{}", free_tcp_port());
    let metrics = format!("127.0.0.1:{}", free_tcp_port());

    let log = std::fs::File::create(&log_path).expect("create the log file");
    let mut manager = Proc(
        common::command()
            .args(["manager", "--id", "1", "--quic", &quic, "--admin", &admin])
            .args(["--metrics", &metrics, "--data-dir"])
            .arg(&data_dir)
            .env("FIRETOWER_LOG", "info,openraft=off")
            .env("FIRETOWER_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the manager"),
    );
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until(Duration::from_secs(20), || {
        TcpStream::connect(&admin).is_ok()
    })
    .unwrap_or_else(|_| panic!("the admin port never opened; log:\n{}", read_log()));
    cli_ok(&["cluster", "init", "--admin", &admin, "--groups", "1"]);
    assert_eq!(healthz(&metrics).map(|(code, _)| code), Some(200));

    let _bench = Proc(
        common::command()
            .args(["bench", "commits", "--managers", &quic, "--writers", "64"])
            .args(["--duration", "120", "--json"])
            .env("FIRETOWER_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn bench commits"),
    );

    let started = Instant::now();
    let mut unhealthy: Option<String> = None;
    let status = loop {
        if let Some(status) = manager.0.try_wait().expect("wait for the manager") {
            break status;
        }
        if unhealthy.is_none() {
            if let Some((503, body)) = healthz(&metrics) {
                unhealthy = Some(body);
            }
        }
        assert!(
            started.elapsed() < FILL_DEADLINE,
            "the manager kept running on a full disk; log:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = read_log();

    assert_eq!(status.code(), Some(3), "exit status; log:\n{log}");
    let body = unhealthy.unwrap_or_else(|| panic!("/healthz never answered 503; log:\n{log}"));
    assert!(body.contains("No space left on device"), "/healthz: {body}");

    let fatal = events(&log, "manager_fatal");
    assert_eq!(fatal.len(), 1, "one manager_fatal event; log:\n{log}");
    let fields = &fatal[0]["fields"];
    assert_eq!(fatal[0]["level"], "ERROR");
    let file = fields["file"].as_str().unwrap_or_default();
    assert!(
        file.starts_with(data_dir.join("wal").to_str().expect("utf-8 path")),
        "names the log file: {fields}"
    );
    let os_error = fields["os_error"].as_str().unwrap_or_default();
    assert!(os_error.contains("os error 28"), "names ENOSPC: {fields}");

    let message = log
        .lines()
        .rev()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error message on stderr; log:\n{log}"));
    assert!(
        message.contains("write-ahead log failed")
            && message.contains(file)
            && message.contains("No space left on device")
            && message.contains("restart the manager"),
        "the message says what failed and what to do: {message}"
    );
}
