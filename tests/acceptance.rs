//! The acceptance suite in `tests/acceptance/` (pytest), run against this build's binary with
//! the standard clients users reach for: python `websockets`, `PyJWT`, `cryptography`, `curl`.
//! Needs `pip install -r tests/acceptance/requirements.txt` (CI installs it); without those
//! modules this test fails and says so, it is never skipped.

use std::process::Command;

#[test]
fn acceptance_suite_with_standard_clients() {
    let root = env!("CARGO_MANIFEST_DIR");
    let probe = Command::new("python3")
        .args(["-c", "import websockets, jwt, cryptography, pytest"])
        .status()
        .expect("python3 is needed for the acceptance suite");
    assert!(
        probe.success(),
        "the acceptance suite needs its Python packages: \
         pip install -r tests/acceptance/requirements.txt"
    );
    let out = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/acceptance",
        ])
        .env("FIRETOWER_BIN", env!("CARGO_BIN_EXE_firetower"))
        .current_dir(root)
        .output()
        .expect("run pytest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "acceptance suite failed:\n{text}");
    assert!(
        text.contains(" passed"),
        "the acceptance suite ran no test:\n{text}"
    );
}
