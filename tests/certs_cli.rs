//! `firetower certs revoke` and `certs list`, run as an operator would: the list grows with a
//! new CRL number at each revocation, re-revoking changes nothing, `list` shows what is
//! revoked, bad input changes nothing, and a process whose certificate is revoked is told so.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn firetower(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firetower"))
        .args(args)
        .output()
        .expect("run firetower")
}

/// Runs a process that should exit by itself; one still running after a minute is killed and
/// reported, so a regression fails the test instead of hanging it.
fn run_bounded(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_firetower"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run firetower");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} was still running after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Runs `args`, expecting success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = firetower(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `args`, expecting exit code 1; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = firetower(args);
    assert_eq!(out.status.code(), Some(1), "{args:?} did not fail cleanly");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn tls_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "firetower-certs-cli-{}-{nanos}",
        std::process::id()
    ));
    let d = dir.to_str().unwrap();
    ok(&["certs", "init", "--dir", d]);
    ok(&["certs", "issue", "--dir", d, "--gateway", "7"]);
    ok(&["certs", "issue", "--dir", d, "--gateway", "8"]);
    ok(&["certs", "issue", "--dir", d, "--manager", "1"]);
    dir
}

/// The `certs list` row of `file`, split into columns.
fn row(list: &str, file: &str) -> Vec<String> {
    list.lines()
        .find(|line| line.starts_with(&format!("{file} ")))
        .unwrap_or_else(|| panic!("no row for {file} in\n{list}"))
        .split("  ")
        .map(str::trim)
        .filter(|cell| !cell.is_empty())
        .map(str::to_owned)
        .collect()
}

fn crl_number(list: &str) -> u64 {
    let first = list.lines().next().unwrap();
    let (_, rest) = first
        .split_once("CRL number ")
        .unwrap_or_else(|| panic!("{first}"));
    rest.split(',').next().unwrap().parse().unwrap()
}

#[test]
fn revoke_and_list() {
    let dir = tls_dir();
    let d = dir.to_str().unwrap();
    let before = ok(&["certs", "list", "--dir", d]);
    assert!(before.starts_with("no crl.pem"), "{before}");
    for file in [
        "gateway-7.pem",
        "gateway-8.pem",
        "manager-1.pem",
        "operator-admin.pem",
    ] {
        assert_eq!(row(&before, file).last().unwrap(), "no", "{before}");
    }
    let gateway_7 = row(&before, "gateway-7.pem");
    assert_eq!(gateway_7[1], "gateway:7");
    let serial_8 = row(&before, "gateway-8.pem")[2].clone();

    let out = ok(&[
        "certs",
        "revoke",
        "--dir",
        d,
        "--gateway",
        "7",
        "--reason",
        "key-compromise",
    ]);
    assert!(
        out.contains("CRL number 1") && out.contains(&gateway_7[2]),
        "{out}"
    );
    let crl = fs::read(dir.join("crl.pem")).unwrap();
    let again = ok(&["certs", "revoke", "--dir", d, "--gateway", "7"]);
    assert!(again.contains("already revoked"), "{again}");
    assert_eq!(
        fs::read(dir.join("crl.pem")).unwrap(),
        crl,
        "re-revoking rewrote crl.pem"
    );

    // By serial, in the colon-separated upper-case form other tools print.
    let colons: Vec<String> = serial_8
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).to_uppercase())
        .collect();
    ok(&["certs", "revoke", "--dir", d, "--serial", &colons.join(":")]);

    let after = ok(&["certs", "list", "--dir", d]);
    assert_eq!(crl_number(&after), 2, "{after}");
    assert_eq!(
        row(&after, "gateway-7.pem").last().unwrap(),
        "yes (key-compromise)"
    );
    assert_eq!(row(&after, "gateway-8.pem").last().unwrap(), "yes");
    assert_eq!(row(&after, "manager-1.pem").last().unwrap(), "no");
    assert_eq!(row(&after, "ca.pem")[1], "ca");

    ok(&[
        "certs",
        "revoke",
        "--dir",
        d,
        "--operator",
        "admin",
        "--reason",
        "superseded",
    ]);
    assert_eq!(crl_number(&ok(&["certs", "list", "--dir", d])), 3);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn bad_revocations_change_nothing() {
    let dir = tls_dir();
    let d = dir.to_str().unwrap();
    ok(&["certs", "revoke", "--dir", d, "--manager", "1"]);
    let crl = fs::read(dir.join("crl.pem")).unwrap();
    let unchanged = |dir: &Path| assert_eq!(fs::read(dir.join("crl.pem")).unwrap(), crl);

    let err = fails(&["certs", "revoke", "--dir", d]);
    assert!(err.contains("--serial HEX"), "{err}");
    unchanged(&dir);
    let err = fails(&[
        "certs",
        "revoke",
        "--dir",
        d,
        "--gateway",
        "7",
        "--reason",
        "stolen",
    ]);
    assert!(err.contains("key-compromise"), "{err}");
    unchanged(&dir);
    let err = fails(&["certs", "revoke", "--dir", d, "--serial", "not-hex"]);
    assert!(err.contains("not a serial number"), "{err}");
    unchanged(&dir);
    let err = fails(&["certs", "revoke", "--dir", d, "--gateway", "99"]);
    assert!(
        err.contains("gateway-99.pem") && err.contains("--serial"),
        "{err}"
    );
    unchanged(&dir);

    // A damaged list is named, and neither command goes on with it.
    fs::write(dir.join("crl.pem"), "garbage").unwrap();
    let err = fails(&["certs", "revoke", "--dir", d, "--gateway", "7"]);
    assert!(
        err.contains("crl.pem") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(fs::read(dir.join("crl.pem")).unwrap(), b"garbage");
    let err = fails(&["certs", "list", "--dir", d]);
    assert!(err.contains("crl.pem"), "{err}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_manager_with_a_revoked_certificate_refuses_to_start() {
    let dir = tls_dir();
    let d = dir.to_str().unwrap();
    ok(&["certs", "revoke", "--dir", d, "--manager", "1"]);
    let data = dir.join("data");
    // Free loopback ports: the manager refuses port 0 (other managers store its addresses).
    let quic = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (quic, admin) = (quic.to_string(), admin.to_string());
    let out = run_bounded(&[
        "manager",
        "--id",
        "1",
        "--tls-dir",
        d,
        "--data-dir",
        data.to_str().unwrap(),
        "--quic",
        &quic,
        "--admin",
        &admin,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("manager-1.pem is revoked"), "{err}");
    let _ = fs::remove_dir_all(&dir);
}
