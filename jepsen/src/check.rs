//! Choosing the checker for a workload, and writing the report files.

use std::path::Path;

use crate::history::Op;
use crate::plot::{latency_svg, throughput_svg};
use crate::verdict::Verdict;
use crate::JepsenError;

/// Check a history of `workload`.
pub fn check(workload: &str, history: &[Op]) -> Result<Verdict, JepsenError> {
    match workload {
        "subscriptions" => {
            crate::subscriptions::check_history(history, crate::subscriptions::DEFAULT_BUDGET)
        }
        "delivery" => crate::delivery::check_history(history),
        "membership" => {
            crate::membership::check_history(history, crate::subscriptions::DEFAULT_BUDGET)
        }
        other => Err(JepsenError::Usage(format!(
            "no checker for workload {other:?}"
        ))),
    }
}

/// Write verdict.json, verdict.txt, latency.svg and throughput.svg into `dir`.
pub fn write_report(
    dir: &Path,
    history: &[Op],
    verdict: &Verdict,
    workload: &str,
) -> Result<(), JepsenError> {
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| JepsenError::io(&path, e))
    };
    write(
        "verdict.json",
        serde_json::to_string_pretty(verdict).unwrap_or_default(),
    )?;
    write("verdict.txt", verdict.text())?;
    write(
        "latency.svg",
        latency_svg(history, &format!("{workload}: latency")),
    )?;
    write(
        "throughput.svg",
        throughput_svg(history, &format!("{workload}: throughput")),
    )?;
    Ok(())
}
