//! The TypeScript client's suites (`clients/typescript`: `test/*.test.mjs` and the browser test
//! `e2e/*.test.mjs`), run with Node's test runner against this build's binary: unit tests, a
//! scripted gateway, a real cluster (`firetower dev` plus gateways of their own), `npm pack`,
//! the demo page's embedded copy of the client, and the demo page in headless Chromium.
//!
//! Needs Node 18+, the package's dev dependencies (`npm ci` in `clients/typescript`) and
//! Chromium at `/usr/bin/chromium` (`.ci/run` installs all three). Without them this test
//! fails and says what is missing; it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/typescript")
}

/// The `*.test.mjs` files of `dir`, sorted.
fn test_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    files
}

#[test]
fn typescript_client_suites_against_this_build() {
    let pkg = package_dir();
    let node = Command::new("node")
        .arg("--version")
        .output()
        .expect("node (18 or newer) is needed for the TypeScript client's tests");
    let version = String::from_utf8_lossy(&node.stdout).trim().to_string();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 18,
        "node {version} is too old: the client needs 18+"
    );
    for module in ["typescript", "ws", "playwright-core"] {
        assert!(
            pkg.join("node_modules").join(module).is_dir(),
            "the TypeScript client's dev dependencies are missing ({module}): run `npm ci` in \
             clients/typescript"
        );
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "the browser test needs Chromium at {chromium}: apt-get install -y chromium"
    );

    let build = Command::new("node")
        .args(["node_modules/typescript/bin/tsc", "-p", "tsconfig.json"])
        .current_dir(&pkg)
        .output()
        .expect("run tsc");
    assert!(
        build.status.success(),
        "tsc failed:\n{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );

    let mut files = test_files(&pkg.join("test"));
    files.extend(test_files(&pkg.join("e2e")));
    assert!(!files.is_empty(), "no test files under {}", pkg.display());
    let out = Command::new("node")
        .args(["--test", "--test-concurrency=1", "--test-reporter=tap"])
        .args(&files)
        .env("FIRETOWER_BIN", env!("CARGO_BIN_EXE_firetower"))
        .env("CHROMIUM", &chromium)
        .current_dir(&pkg)
        .output()
        .expect("run node --test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "the TypeScript client's tests failed:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("# pass ") && l != "# pass 0"),
        "the TypeScript client's suites ran no test:\n{text}"
    );
}
