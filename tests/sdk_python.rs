//! The Python client SDK's suite (`clients/python/tests`, pytest) against this build's binary:
//! unit tests, a real cluster (connect, typed errors, token refresh, reconnect after a killed
//! gateway, resubscribe, recovery, history, presence) and the sdist/wheel install check.
//! Needs `pip install -r clients/python/requirements-test.txt` (CI installs it); without those
//! modules this test fails and says so, it is never skipped.

use std::process::Command;

#[test]
fn python_sdk_suite_against_a_real_cluster() {
    let root = env!("CARGO_MANIFEST_DIR");
    let probe = Command::new("python3")
        .args([
            "-c",
            "import websockets, jwt, pytest, pytest_asyncio, build, venv",
        ])
        .status()
        .expect("python3 is needed for the Python SDK's suite");
    assert!(
        probe.success(),
        "the Python SDK's suite needs its packages: \
         pip install -r clients/python/requirements-test.txt"
    );
    let out = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "clients/python/tests",
        ])
        .env("FIRETOWER_BIN", env!("CARGO_BIN_EXE_firetower"))
        // The package under test is this checkout's (the suite also puts it first on sys.path).
        .env("PYTHONPATH", format!("{root}/clients/python/src"))
        .current_dir(root)
        .output()
        .expect("run pytest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "the Python SDK's suite failed:\n{text}"
    );
    assert!(
        text.contains(" passed") && !text.contains(" skipped"),
        "the Python SDK's suite ran no test, or skipped some:\n{text}"
    );
}
