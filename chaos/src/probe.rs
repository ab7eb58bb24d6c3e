//! The availability probe: a gateway-like client that writes and publishes in a loop and
//! prints one JSON line per operation. It runs inside the client host's namespace
//! (`ip netns exec <c1> firetower chaos probe ...`); [`Unavailability`] turns its lines and
//! the fault times into "how long was each operation kind unavailable".

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use firetower_link::{LinkClient, LinkOptions};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// Why the probe stopped before it was killed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The gateway certificate could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[source] firetower_link::TlsError),
    /// The link client could not reach the cluster.
    #[error("cannot connect to the managers: {0}")]
    Connect(#[from] firetower_link::LinkError),
    /// A record could not be written as JSON (cannot happen for these plain numbers).
    #[error("cannot encode a record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One probe operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// `subscribe` (a committed write) or `publish`.
    pub op: String,
    /// Invocation, milliseconds since the run's t0.
    pub start_ms: f64,
    /// Completion, milliseconds since the run's t0.
    pub end_ms: f64,
    /// Whether it succeeded.
    pub ok: bool,
}

/// Milliseconds since the Unix epoch now.
pub fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

/// Run the probe until killed: alternate subscribe/unsubscribe of `topic` as gateway
/// `gateway`, and publish to it, every `interval`, printing [`ProbeRecord`] lines.
pub(crate) async fn run_probe(
    managers: Vec<SocketAddr>,
    topic: String,
    gateway: u64,
    security: firetower_link::Security,
    interval: Duration,
    t0_unix_ms: f64,
) -> Result<(), ProbeError> {
    // A short deadline: a request in flight to a manager that just died waits for the whole
    // deadline (the link client's per-attempt timeout is its request timeout), so a long one
    // would measure the client's patience rather than the cluster's failover.
    let options = LinkOptions {
        request_timeout: Duration::from_secs(1),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        security,
    };
    let link = LinkClient::connect(gateway, managers, options).await?;
    // Subscriptions are committed only within a live session of the gateway id.
    let _sessions = link
        .hold_sessions(Duration::from_secs(5), Duration::from_secs(15))
        .await?;
    let offset = unix_ms() - t0_unix_ms;
    let origin = Instant::now();
    let now = move || offset + origin.elapsed().as_secs_f64() * 1e3;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProbeRecord>();
    for kind in ["subscribe", "publish"] {
        let link = link.clone();
        let topic = topic.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let start = now();
                let ok = match kind {
                    "subscribe" if n.is_multiple_of(2) => link.subscribe(&topic).await.is_ok(),
                    "subscribe" => link.unsubscribe(&topic).await.is_ok(),
                    _ => link
                        .publish(&topic, format!("{n}").into_bytes(), true)
                        .await
                        .is_ok(),
                };
                n += 1;
                let record = ProbeRecord {
                    op: kind.to_string(),
                    start_ms: start,
                    end_ms: now(),
                    ok,
                };
                if tx.send(record).is_err() {
                    return;
                }
                tokio::time::sleep(interval).await;
            }
        });
    }
    drop(tx);
    let mut out = tokio::io::stdout();
    while let Some(r) = rx.recv().await {
        let mut line = serde_json::to_string(&r)?;
        line.push('\n');
        if out.write_all(line.as_bytes()).await.is_err() {
            // The harness went away: stop.
            return Ok(());
        }
        let _ = out.flush().await;
    }
    Ok(())
}

/// How long one fault made one kind of operation unavailable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unavailability {
    /// `subscribe` or `publish`.
    pub op: String,
    /// When the fault began (ms since t0).
    pub fault_ms: f64,
    /// The longest stretch without a successful completion that overlaps the fault window,
    /// in ms (about the probe interval plus latency when the fault did not hurt).
    pub unavailable_ms: f64,
    /// Failed operations in the window.
    pub failures: usize,
}

/// Measure, for each fault window `[start, end)`, the longest gap between successful
/// completions of `op` that touches the window.
pub fn unavailability(
    records: &[ProbeRecord],
    op: &str,
    windows: &[(f64, f64)],
) -> Vec<Unavailability> {
    let mut ok: Vec<f64> = records
        .iter()
        .filter(|r| r.op == op && r.ok)
        .map(|r| r.end_ms)
        .collect();
    ok.sort_by(f64::total_cmp);
    windows
        .iter()
        .map(|&(start, end)| {
            // The last success before the fault, then every success up to the window's end.
            let before = ok
                .iter()
                .rev()
                .find(|&&t| t <= start)
                .copied()
                .unwrap_or(start);
            let mut prev = before;
            let mut worst = 0.0f64;
            for &t in ok.iter().filter(|&&t| t > start && t <= end) {
                worst = worst.max(t - prev);
                prev = t;
            }
            // Still unavailable at the window's end.
            if ok.iter().all(|&t| t <= start || t > end) {
                worst = worst.max(end - before);
            }
            let failures = records
                .iter()
                .filter(|r| r.op == op && !r.ok && r.start_ms >= start && r.start_ms < end)
                .count();
            Unavailability {
                op: op.to_string(),
                fault_ms: start,
                unavailable_ms: worst,
                failures,
            }
        })
        .collect()
}

/// The median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: &str, end: f64, ok: bool) -> ProbeRecord {
        ProbeRecord {
            op: op.into(),
            start_ms: end - 5.0,
            end_ms: end,
            ok,
        }
    }

    #[test]
    fn gap_spanning_the_fault_is_measured() {
        let mut r = Vec::new();
        for t in (0..100).map(|i| f64::from(i) * 10.0) {
            // Down between 300 and 1500.
            r.push(rec("publish", t, !(300.0..1500.0).contains(&t)));
        }
        for t in (150..200).map(|i| f64::from(i) * 10.0) {
            r.push(rec("publish", t, true));
        }
        let u = unavailability(&r, "publish", &[(310.0, 1900.0)]);
        assert_eq!(u.len(), 1);
        assert!((u[0].unavailable_ms - 1210.0).abs() < 1e-6, "{u:?}");
        assert!(u[0].failures > 0);
    }

    #[test]
    fn no_success_in_the_window_counts_the_whole_window() {
        let r = vec![
            rec("subscribe", 100.0, true),
            rec("subscribe", 900.0, false),
        ];
        let u = unavailability(&r, "subscribe", &[(200.0, 1000.0)]);
        assert_eq!(u[0].unavailable_ms, 900.0);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
