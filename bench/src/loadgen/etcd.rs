//! `firetower bench etcd-puts`: the control-plane peer of `bench commits`. Writers put fresh
//! keys into an etcd cluster over gRPC with the `etcd-client` crate (etcd's v3 KV `Put`, the
//! API etcd's own clients use; no JSON gateway in between). Each writer waits for its put to be
//! acknowledged (committed by a quorum, fsync on) before the next, like `bench commits`.
//!
//! ```text
//!   writer 0, 3, 6 ... ──┐                 ┌── member 1 (http://IP:PORT)
//!   writer 1, 4, 7 ... ──┼─ one Client ────┼── member 2      (one HTTP/2 connection per
//!   writer 2, 5, 8 ... ──┘  per endpoint   └── member 3       member, puts multiplexed)
//! ```
//!
//! Writers are spread round robin over the endpoints, as etcd's Go client balances, and share
//! one connection per endpoint, as `bench commits` shares one QUIC connection per manager. A
//! failed put (refused, timed out, connection lost) is retried on the next endpoint with the
//! same key until it succeeds or the round ends; its latency runs from the first attempt, so a
//! leader failover shows as the time writing stopped (`max_gap_ms`: no put succeeded anywhere;
//! `max_writer_gap_ms`: the longest one writer went without a success).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use etcd_client::{Client, ConnectOptions};
use serde::Serialize;

use super::stats::{latency_histogram, parse_writers, record, GapTracker};

/// Pause before retrying a failed put on the next endpoint.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// `firetower bench etcd-puts`.
#[derive(clap::Args, Debug)]
pub struct EtcdPutsArgs {
    /// etcd client URLs (`http://IP:PORT`, literal IPs), comma separated; writers are spread
    /// over them round robin.
    #[arg(long)]
    endpoints: String,
    /// Concurrent writer counts to measure, comma separated.
    #[arg(long, default_value = "1,16,256")]
    writers: String,
    /// Seconds of measurement per writer count.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Bytes of each value (a subscription record is about this small).
    #[arg(long, default_value_t = 16)]
    value_size: usize,
    /// Milliseconds one attempt may take before it is abandoned and retried elsewhere.
    #[arg(long, default_value_t = 2_000)]
    request_timeout_ms: u64,
    /// Print one JSON object per writer count instead of a table.
    #[arg(long)]
    json: bool,
}

/// What one writer count measured.
#[derive(Debug, Clone, Serialize)]
pub(super) struct PutsResult {
    /// `etcd`.
    pub system: &'static str,
    /// Concurrent writers.
    pub writers: usize,
    /// Length of the round, seconds.
    pub seconds: f64,
    /// Puts acknowledged.
    pub puts: u64,
    /// Puts acknowledged per second.
    pub puts_per_sec: f64,
    /// Median put latency (first attempt to acknowledgement), ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// Failed attempts (each retried).
    pub errors: u64,
    /// First failure, if any.
    pub first_error: Option<String>,
    /// Longest time no put succeeded anywhere, ms.
    pub max_gap_ms: f64,
    /// Longest time one writer went without a successful put, ms.
    pub max_writer_gap_ms: f64,
    /// The machine's 1-minute load average at the end of the round.
    pub load_average: Option<f64>,
}

/// Why one put attempt failed (it is retried on the next endpoint).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    /// etcd answered with an error, or the connection failed.
    #[error("{endpoint}: {source}")]
    Etcd {
        /// The member the attempt went to.
        endpoint: SocketAddr,
        /// What etcd-client reported.
        source: etcd_client::Error,
    },
    /// No answer in time (a dead or partitioned member, or a cluster without a leader).
    #[error("{endpoint}: no answer within {timeout:?}")]
    Timeout {
        /// The member the attempt went to.
        endpoint: SocketAddr,
        /// `--request-timeout-ms`.
        timeout: Duration,
    },
}

/// Run `bench etcd-puts`.
pub(crate) async fn etcd_puts(args: EtcdPutsArgs) -> anyhow::Result<()> {
    let endpoints = parse_endpoints(&args.endpoints)?;
    let writer_counts = parse_writers(&args.writers)?;
    if args.duration == 0 {
        bail!("--duration must be at least 1 second");
    }
    if args.value_size > 64 * 1024 {
        bail!("--value-size: at most 65536 bytes");
    }
    if args.request_timeout_ms == 0 {
        bail!("--request-timeout-ms must be above 0");
    }
    let request_timeout = Duration::from_millis(args.request_timeout_ms);
    let members = connect(&endpoints, request_timeout).await?;
    let run_id: u32 = rand::random();
    if !args.json {
        println!(
            "{:>8} {:>12} {:>10} {:>10} {:>10} {:>8} {:>10}",
            "writers", "puts/s", "p50 ms", "p99 ms", "max ms", "errors", "gap ms"
        );
    }
    for n in writer_counts {
        let r = puts_round(
            &members,
            n,
            Duration::from_secs(args.duration),
            args.value_size,
            request_timeout,
            run_id,
        )
        .await?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{:>8} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>8} {:>10.1}",
                r.writers, r.puts_per_sec, r.p50_ms, r.p99_ms, r.max_ms, r.errors, r.max_gap_ms
            );
            if let Some(e) = &r.first_error {
                println!("first error: {e}");
            }
        }
    }
    Ok(())
}

/// Parse `http://127.0.0.1:2379,http://127.0.0.1:22379` (literal IPs, no TLS).
fn parse_endpoints(text: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let out: Vec<SocketAddr> = text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            let rest = t.strip_prefix("http://").unwrap_or(t).trim_end_matches('/');
            if t.starts_with("https://") {
                bail!("{t:?}: https is not supported (start etcd with http:// client URLs)");
            }
            rest.parse::<SocketAddr>()
                .with_context(|| format!("{t:?}: expected http://IP:PORT with a literal IP"))
        })
        .collect::<Result<_, _>>()?;
    if out.is_empty() {
        bail!("--endpoints: give at least one http://IP:PORT");
    }
    Ok(out)
}

/// One etcd-client `Client` per member, each with only that member as its endpoint, so a
/// writer knows which member it talks to and can move to the next one when that one fails.
/// Each connection is opened here (a `Status` call) and re-made by tonic after a failure.
async fn connect(
    endpoints: &[SocketAddr],
    request_timeout: Duration,
) -> anyhow::Result<Vec<(SocketAddr, Client)>> {
    let mut members = Vec::with_capacity(endpoints.len());
    for &endpoint in endpoints {
        let options = ConnectOptions::new()
            .with_connect_timeout(request_timeout)
            .with_timeout(request_timeout);
        let mut client = Client::connect([format!("http://{endpoint}")], Some(options))
            .await
            .with_context(|| format!("etcd client for {endpoint}"))?;
        // Open the connection before measuring, as `bench commits` connects its link first:
        // the first round must not time a TCP and HTTP/2 handshake.
        tokio::time::timeout(request_timeout, client.status())
            .await
            .map_err(|_| anyhow!("no answer within {request_timeout:?}"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("cannot reach the etcd member at {endpoint}"))?;
        members.push((endpoint, client));
    }
    Ok(members)
}

/// The key of writer `w`'s `n`th put: the same layout as every earlier run of this benchmark.
fn put_key(run_id: u32, writers: usize, w: usize, n: u64) -> String {
    format!("bench/{run_id:08x}/{writers}/{w}/{n}")
}

/// One attempt of one put, bounded by `timeout` (a member that is down or cut off must not
/// hold the writer: the caller moves on to the next member).
async fn put_once(
    client: &mut Client,
    endpoint: SocketAddr,
    key: &str,
    value: &[u8],
    timeout: Duration,
) -> Result<(), AttemptError> {
    match tokio::time::timeout(timeout, client.put(key.as_bytes(), value, None)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(AttemptError::Etcd { endpoint, source }),
        Err(_) => Err(AttemptError::Timeout { endpoint, timeout }),
    }
}

async fn puts_round(
    members: &[(SocketAddr, Client)],
    writers: usize,
    duration: Duration,
    value_size: usize,
    request_timeout: Duration,
    run_id: u32,
) -> anyhow::Result<PutsResult> {
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let gaps = Arc::new(GapTracker::default());
    let start = Instant::now();
    let deadline = start + duration;
    let value = vec![b'v'; value_size];
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        // Clones share the member's connection (HTTP/2 streams, like the Go client's).
        let mut members = members.to_vec();
        let (errors, first_error, gaps) = (errors.clone(), first_error.clone(), gaps.clone());
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = latency_histogram();
            let mut member = w % members.len();
            let mut n = 0u64;
            let mut last_us = 0u64;
            while Instant::now() < deadline {
                let key = put_key(run_id, writers, w, n);
                n += 1;
                let t0 = Instant::now();
                // Retry the same put until acknowledged or the round is over.
                let done = loop {
                    let (endpoint, client) = &mut members[member];
                    let outcome = put_once(client, *endpoint, &key, &value, request_timeout).await;
                    match outcome {
                        Ok(()) => break true,
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert_with(|| e.to_string());
                            member = (member + 1) % members.len();
                            if Instant::now() + RETRY_PAUSE >= deadline {
                                break false;
                            }
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    }
                };
                if !done {
                    break;
                }
                record(&mut hist, t0.elapsed().as_micros() as u64);
                gaps.success(start.elapsed().as_micros() as u64, &mut last_us);
            }
            gaps.writer_done(
                (deadline - start).as_micros() as u64,
                last_us.min((deadline - start).as_micros() as u64),
            );
            hist
        }));
    }
    let mut total = latency_histogram();
    for t in tasks {
        let h = t.await.map_err(|e| anyhow!("writer task: {e}"))?;
        // Same bounds on both sides, so `add` cannot fail.
        let _ = total.add(&h);
    }
    let seconds = start.elapsed().as_secs_f64();
    let (max_gap_ms, max_writer_gap_ms) = gaps.finish(duration.as_micros() as u64);
    let first_error = first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(PutsResult {
        system: "etcd",
        writers,
        seconds,
        puts: total.len(),
        puts_per_sec: total.len() as f64 / seconds,
        p50_ms: total.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: total.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: total.max() as f64 / 1000.0,
        errors: errors.load(Ordering::Relaxed),
        first_error,
        max_gap_ms,
        max_writer_gap_ms,
        load_average: super::procstat::load_average(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoints("http://127.0.0.1:2379, 127.0.0.1:22379/")
                .unwrap()
                .len(),
            2
        );
        assert!(parse_endpoints("https://127.0.0.1:2379").is_err());
        assert!(parse_endpoints("http://localhost:2379").is_err());
        assert!(parse_endpoints("").is_err());
    }

    #[test]
    fn keys_keep_their_layout() {
        assert_eq!(put_key(0xab, 16, 3, 7), "bench/000000ab/16/3/7");
    }

    /// A member that refuses connections is reported by name at start, and a put to it is an
    /// attempt error within the attempt's timeout, naming the member (what failover relies on).
    #[tokio::test]
    async fn a_refused_member_is_an_error_not_a_hang() {
        // Bind and drop: nothing listens on this loopback port afterwards.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let Err(err) = connect(&[addr], Duration::from_millis(500)).await else {
            panic!("connected to {addr}, where nothing listens");
        };
        assert!(format!("{err:#}").contains(&addr.to_string()), "{err:#}");
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_millis(200));
        let mut client = Client::connect([format!("http://{addr}")], Some(options))
            .await
            .unwrap();
        let t0 = Instant::now();
        let e = put_once(&mut client, addr, "k", b"v", Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(e.to_string().starts_with(&addr.to_string()), "{e}");
    }
}
