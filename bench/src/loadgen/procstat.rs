//! CPU time and resident memory of processes, read from `/proc` (Linux only).
//!
//! The benchmarks sample the server processes (`--server-pid`) and the load generator itself
//! at the start and end of the measurement window; CPU is reported as percent of one core.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde::Serialize;

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`): 100 on every Linux
/// architecture we run on.
const CLK_TCK: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ProcSample {
    /// Process id.
    pub pid: u32,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// When it was read.
    pub at: Instant,
}

/// What a process did between two samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct ProcUsage {
    /// Process id.
    pub pid: u32,
    /// CPU used, percent of one core (200 = two cores busy).
    pub cpu_percent: f64,
    /// Resident set size at the first sample, KiB.
    pub rss_start_kib: u64,
    /// Resident set size at the second sample, KiB.
    pub rss_end_kib: u64,
}

/// Read `/proc/PID/stat` and `/proc/PID/status`.
pub(super) fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat (is process {pid} running?)"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    Ok(ProcSample {
        pid,
        cpu_ticks: parse_cpu_ticks(&stat)
            .ok_or_else(|| anyhow!("/proc/{pid}/stat: unexpected format"))?,
        rss_kib: parse_rss_kib(&status).ok_or_else(|| anyhow!("/proc/{pid}/status: no VmRSS"))?,
        at: Instant::now(),
    })
}

/// Sample every pid (errors name the pid).
pub(super) fn sample_all(pids: &[u32]) -> anyhow::Result<Vec<ProcSample>> {
    pids.iter().map(|&p| sample(p)).collect()
}

/// Usage between matching samples of the same pids.
pub(super) fn usage(before: &[ProcSample], after: &[ProcSample]) -> Vec<ProcUsage> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let secs =
                a.at.saturating_duration_since(b.at)
                    .max(Duration::from_millis(1));
            ProcUsage {
                pid: b.pid,
                cpu_percent: a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64
                    / CLK_TCK
                    / secs.as_secs_f64()
                    * 100.0,
                rss_start_kib: b.rss_kib,
                rss_end_kib: a.rss_kib,
            }
        })
        .collect()
}

/// The 1-minute load average of the machine (other work competing for the cores).
pub(super) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime: fields 14 and 15 of `/proc/PID/stat`, counted after the command name, which
/// is in parentheses and may itself hold spaces or parentheses.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 (state), so utime (14) is fields[11] and stime (15) fields[12].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS:   1234 kB` from `/proc/PID/status`.
fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Parse `--server-pid 12,34` (also repeatable).
pub(super) fn parse_pids(texts: &[String]) -> anyhow::Result<Vec<u32>> {
    texts
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .map_err(|_| anyhow!("--server-pid {t:?}: not a process id"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat =
            "1234 (fire tower) (x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 \
                    100 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        let status = "Name:\tfiretower\nVmPeak:\t  9999 kB\nVmRSS:\t   4321 kB\nThreads:\t3\n";
        assert_eq!(parse_rss_kib(status), Some(4321));
        assert_eq!(parse_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        assert_eq!(
            parse_pids(&["1,2".into(), "3".into()]).unwrap(),
            vec![1, 2, 3]
        );
        assert!(parse_pids(&["x".into()]).is_err());
    }
}
