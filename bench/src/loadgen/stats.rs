//! Numbers for the load generator: latency histograms and their summaries, the source-address
//! and writer-count parsers, medians, and the "how long did writing stop" tracker shared by
//! `bench commits` and `bench etcd-puts`. Pure functions, tested below.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded, in microseconds (60 s); slower deliveries are clamped to it.
const MAX_LATENCY_US: u64 = 60_000_000;
/// Latency histogram shards: subscriber tasks on different worker threads rarely meet on one.
const SHARDS: usize = 16;
/// Most source addresses one range may name.
const MAX_SOURCE_IPS: u32 = 4096;

/// A latency histogram in microseconds, 3 significant figures.
pub(super) fn latency_histogram() -> Histogram<u64> {
    // Bounds are constants within hdrhistogram's limits, so this cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// Record one latency (microseconds), clamped into the histogram's range.
pub(super) fn record(hist: &mut Histogram<u64>, micros: u64) {
    // Clamped, so `record` cannot be out of range.
    let _ = hist.record(micros.clamp(1, MAX_LATENCY_US));
}

/// Latency histograms shared by thousands of subscriber tasks: one histogram each would cost
/// ~100 KiB per subscriber, one shared histogram would be a hot lock.
#[derive(Debug)]
pub(super) struct ShardedHistogram {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Default for ShardedHistogram {
    fn default() -> Self {
        ShardedHistogram {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(latency_histogram()))
                .collect(),
        }
    }
}

impl ShardedHistogram {
    /// Record a batch of latencies (microseconds) into the shard of `key`.
    pub(super) fn record_batch(&self, key: usize, micros: &[u64]) {
        if micros.is_empty() {
            return;
        }
        let mut h = self.shards[key % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for &m in micros {
            record(&mut h, m);
        }
    }

    /// All shards added together.
    pub(super) fn merged(&self) -> Histogram<u64> {
        let mut total = latency_histogram();
        for s in &self.shards {
            let h = s.lock().unwrap_or_else(|e| e.into_inner());
            // Same bounds on both sides, so `add` cannot fail.
            let _ = total.add(&*h);
        }
        total
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(super) struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl LatencySummary {
    /// Summarize a histogram of microseconds.
    pub(super) fn of(hist: &Histogram<u64>) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        if hist.is_empty() {
            return LatencySummary {
                count: 0,
                p50_ms: 0.0,
                p99_ms: 0.0,
                p999_ms: 0.0,
                max_ms: 0.0,
                mean_ms: 0.0,
            };
        }
        LatencySummary {
            count: hist.len(),
            p50_ms: ms(hist.value_at_quantile(0.5)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
            mean_ms: hist.mean() / 1000.0,
        }
    }
}

/// Parse source addresses: `127.0.0.2-127.0.0.9`, `127.0.0.2,127.0.0.5`, or a mix. Only
/// loopback addresses (127.0.0.0/8) are accepted: the load generator binds them locally.
pub(super) fn parse_source_ips(text: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (parse_loopback(a)?, parse_loopback(b)?),
            None => {
                let ip = parse_loopback(part)?;
                (ip, ip)
            }
        };
        let (lo, hi) = (u32::from(first), u32::from(last));
        if lo > hi {
            bail!("source range {part:?} runs backwards");
        }
        if hi - lo >= MAX_SOURCE_IPS || out.len() as u32 + (hi - lo) >= MAX_SOURCE_IPS {
            bail!("source addresses {text:?}: at most {MAX_SOURCE_IPS} addresses");
        }
        out.extend((lo..=hi).map(Ipv4Addr::from));
    }
    if out.is_empty() {
        bail!("source addresses {text:?}: none given");
    }
    Ok(out)
}

fn parse_loopback(text: &str) -> anyhow::Result<Ipv4Addr> {
    let ip: Ipv4Addr = text
        .trim()
        .parse()
        .map_err(|_| anyhow!("{text:?} is not an IPv4 address"))?;
    if !ip.is_loopback() {
        bail!("{ip} is not a loopback address (127.0.0.0/8)");
    }
    Ok(ip)
}

/// Parse `1,16,256`.
pub(crate) fn parse_writers(text: &str) -> anyhow::Result<Vec<usize>> {
    text.split(',')
        .map(|w| {
            w.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0 && *n <= 10_000)
                .ok_or_else(|| anyhow!("--writers {w:?}: expected 1..=10000"))
        })
        .collect()
}

/// "How long did writing stop": the longest interval without a success, over all writers
/// (`global`) and per writer. Times are microseconds since the round started.
#[derive(Debug, Default)]
pub(crate) struct GapTracker {
    last_success_us: AtomicU64,
    max_gap_us: AtomicU64,
    max_writer_gap_us: AtomicU64,
}

impl GapTracker {
    /// A success of a writer whose previous success (or start) was at `*writer_last`.
    pub(crate) fn success(&self, now_us: u64, writer_last: &mut u64) {
        let prev = self.last_success_us.fetch_max(now_us, Ordering::Relaxed);
        if now_us > prev {
            self.max_gap_us.fetch_max(now_us - prev, Ordering::Relaxed);
        }
        self.max_writer_gap_us
            .fetch_max(now_us.saturating_sub(*writer_last), Ordering::Relaxed);
        *writer_last = now_us;
    }

    /// A writer stopped at `end_us`: a stall that never ended counts up to there.
    pub(crate) fn writer_done(&self, end_us: u64, writer_last: u64) {
        self.max_writer_gap_us
            .fetch_max(end_us.saturating_sub(writer_last), Ordering::Relaxed);
    }

    /// (global, per writer) longest gaps in ms, closing the global one at `end_us`.
    pub(crate) fn finish(&self, end_us: u64) -> (f64, f64) {
        let last = self.last_success_us.load(Ordering::Relaxed);
        let global = self
            .max_gap_us
            .load(Ordering::Relaxed)
            .max(end_us.saturating_sub(last));
        (
            global as f64 / 1000.0,
            self.max_writer_gap_us.load(Ordering::Relaxed) as f64 / 1000.0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = latency_histogram();
        for us in 1..=10_000u64 {
            record(&mut h, us);
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 10_000);
        // 3 significant figures: within 0.1% of the exact value.
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 9.9).abs() < 0.02, "{s:?}");
        assert!((s.p999_ms - 9.99).abs() < 0.02, "{s:?}");
        assert!((s.max_ms - 10.0).abs() < 0.02, "{s:?}");
        assert!((s.mean_ms - 5.0).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn empty_and_clamped_histograms() {
        let h = latency_histogram();
        assert_eq!(LatencySummary::of(&h).count, 0);
        let mut h = latency_histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert!(LatencySummary::of(&h).max_ms >= 59_000.0);
    }

    #[test]
    fn shards_merge() {
        let s = ShardedHistogram::default();
        s.record_batch(0, &[100, 200]);
        s.record_batch(17, &[300]);
        s.record_batch(3, &[]);
        let m = s.merged();
        assert_eq!(m.len(), 3);
        assert_eq!(m.max(), 300);
    }

    #[test]
    fn source_ip_ranges() {
        let ips = parse_source_ips("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(
            ips,
            vec![
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3),
                Ipv4Addr::new(127, 0, 0, 4)
            ]
        );
        let ips = parse_source_ips("127.0.0.1, 127.0.0.255-127.0.1.1").unwrap();
        assert_eq!(ips.len(), 4);
        assert_eq!(ips[3], Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(parse_source_ips("127.0.0.7").unwrap().len(), 1);
        assert!(parse_source_ips("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_source_ips("10.0.0.1").is_err());
        assert!(parse_source_ips("127.0.0.1-10.0.0.1").is_err());
        assert!(parse_source_ips("").is_err());
        assert!(parse_source_ips("127.0.0.1-127.1.0.0").is_err());
        assert!(parse_source_ips("nope").is_err());
    }

    #[test]
    fn writers() {
        assert_eq!(parse_writers("1,16,256").unwrap(), vec![1, 16, 256]);
        assert!(parse_writers("0").is_err());
        assert!(parse_writers("x").is_err());
    }

    #[test]
    fn gaps() {
        let g = GapTracker::default();
        let (mut a, mut b) = (0, 0);
        g.success(100, &mut a);
        g.success(150, &mut b);
        g.success(2_000, &mut a);
        g.success(2_100, &mut b);
        g.writer_done(3_000, a);
        let (global, writer) = g.finish(3_000);
        assert_eq!(global, 1.85);
        assert_eq!(writer, 1.95);
    }
}
