//! Running helper programs (`ip`, `nft`) and turning their failures into [`ChaosError`]s.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::ChaosError;

/// Run `program args...`, return its stdout, fail with its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, ChaosError> {
    run_with_stdin(program, args, None)
}

/// Run `program args...` feeding `stdin`.
pub(crate) fn run_with_stdin(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, ChaosError> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| ChaosError::Spawn {
        program: program.to_string(),
        source,
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A program that exits before reading its input reports its own error below.
        let _ = pipe.write_all(text.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|source| ChaosError::Spawn {
            program: program.to_string(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(ChaosError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Run in network namespace `ns`: `ip netns exec NS program args...`.
pub(crate) fn run_in(ns: &str, program: &str, args: &[&str]) -> Result<String, ChaosError> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}
