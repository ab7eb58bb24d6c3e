//! The client side of a run: `firetower jepsen worker`, started by the runner inside the
//! client host's namespace (`ip netns exec <c1> /proc/self/exe jepsen worker --config JSON`).
//! Its concurrent clients print every invoke and completion as a JSON line on stdout; the
//! runner merges them with the nemesis's lines into the history. One process means one
//! monotonic clock for every client operation, which is all the checker compares.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use firetower_proto::link::{
    gateway_reply, gateway_request, Subscribe, TopicGateways, Unsubscribe,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::history::{Op, OpType, Process};
use crate::rawlink::{Outcome, RawLink};
use crate::JepsenError;

/// What the runner tells a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// `subscriptions` or `delivery`.
    pub workload: String,
    /// Manager QUIC addresses.
    pub managers: Vec<SocketAddr>,
    /// Gateway WebSocket addresses (delivery).
    #[serde(default)]
    pub gateways: Vec<SocketAddr>,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Stop invoking after this many seconds since t0.
    pub time_limit_secs: f64,
    /// Seed of every random choice.
    pub seed: u64,
    /// The runner's t0, ms since the Unix epoch.
    pub t0_unix_ms: f64,
    /// Operations on a key before it is retired (keeps each key's check small).
    pub ops_per_key: usize,
    /// Gateway ids clients act as: 1..=gateway_ids.
    pub gateway_ids: u64,
    /// Mean pause between a client's operations, ms.
    pub interval_ms: u64,
    /// The cluster's TLS directory (`gateway-<id>.pem` for every id acted as); none for an
    /// `--insecure` cluster.
    #[serde(default)]
    pub tls_dir: Option<std::path::PathBuf>,
}

/// Nanoseconds since the runner's t0, on this process's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    offset_ns: f64,
}

impl Clock {
    /// Align with the runner's t0 (given in ms since the Unix epoch).
    pub fn new(t0_unix_ms: f64) -> Clock {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(t0_unix_ms);
        Clock {
            origin: Instant::now(),
            offset_ns: (now_ms - t0_unix_ms) * 1e6,
        }
    }

    /// Now.
    pub fn now_ns(&self) -> u64 {
        (self.offset_ns + self.origin.elapsed().as_nanos() as f64).max(0.0) as u64
    }
}

/// Keys in use: each gets `ops_per_key` operations, then a fresh key replaces it.
#[derive(Debug)]
struct KeyPool {
    prefix: String,
    active: Vec<(String, usize)>,
    next: u64,
    per_key: usize,
}

impl KeyPool {
    fn new(prefix: String, slots: usize, per_key: usize) -> KeyPool {
        let mut pool = KeyPool {
            prefix,
            active: Vec::new(),
            next: 0,
            per_key: per_key.max(1),
        };
        for _ in 0..slots.max(1) {
            let k = pool.fresh();
            pool.active.push((k, pool.per_key));
        }
        pool
    }

    fn fresh(&mut self) -> String {
        self.next += 1;
        format!("{}.{}", self.prefix, self.next)
    }

    fn pick(&mut self, rng: &mut StdRng) -> String {
        let i = rng.random_range(0..self.active.len());
        let key = self.active[i].0.clone();
        self.active[i].1 -= 1;
        if self.active[i].1 == 0 {
            let k = self.fresh();
            self.active[i] = (k, self.per_key);
        }
        key
    }
}

/// Print every op sent on the returned channel as a JSON line; finishes when all senders
/// are dropped.
pub(crate) fn spawn_printer() -> (mpsc::UnboundedSender<Op>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Op>();
    let handle = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(op) = rx.recv().await {
            let Ok(mut line) = serde_json::to_string(&op) else {
                continue;
            };
            line.push('\n');
            if out.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = out.flush().await;
    });
    (tx, handle)
}

/// Lease of the sessions the subscriptions workload holds for its gateway ids: the longest a
/// manager grants.
const SESSION_LEASE: Duration = Duration::from_secs(300);

pub(crate) async fn run_subscriptions(config: WorkerConfig) -> Result<(), JepsenError> {
    let clock = Clock::new(config.t0_unix_ms);
    let link = Arc::new(
        RawLink::new(
            config.managers.clone(),
            Duration::from_secs(3),
            config.tls_dir.as_deref(),
            config.gateway_ids,
        )
        .await?,
    );
    // Managers commit subscriptions only for a gateway with a live session: hold one for every
    // gateway id the clients act as, with the longest lease, so a partition of this host does
    // not sweep their subscriptions in the middle of the run.
    let mut sessions = Vec::new();
    for gateway in 1..=config.gateway_ids.max(1) {
        let security = firetower_link::Security::from_flags(
            config.tls_dir.as_deref(),
            config.tls_dir.is_none(),
            &firetower_link::Role::Gateway(gateway),
        )
        .map_err(crate::rawlink::RawLinkError::Tls)?;
        let holder = firetower_link::LinkClient::connect(
            gateway,
            config.managers.clone(),
            firetower_link::LinkOptions {
                security,
                ..firetower_link::LinkOptions::default()
            },
        )
        .await
        .map_err(crate::rawlink::RawLinkError::Session)?;
        let held = holder
            .hold_sessions(SESSION_LEASE, Duration::from_secs(30))
            .await
            .map_err(crate::rawlink::RawLinkError::Session)?;
        sessions.push((holder, held));
    }
    let pool = Arc::new(Mutex::new(KeyPool::new(
        format!("jk{}", config.seed),
        (config.concurrency / 2).max(2),
        config.ops_per_key,
    )));
    let (tx, printer) = spawn_printer();
    let mut tasks = Vec::new();
    for c in 0..config.concurrency {
        let link = link.clone();
        let pool = pool.clone();
        let tx = tx.clone();
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(config.seed.wrapping_mul(1_000_003) + c as u64);
            let mut process = c as u64;
            while (clock.now_ns() as f64) < config.time_limit_secs * 1e9 {
                let key = pool
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pick(&mut rng);
                let gateway = rng.random_range(1..=config.gateway_ids.max(1));
                let roll = rng.random_range(0..10);
                let (f, op, value, read) = match roll {
                    0..=3 => (
                        "read",
                        gateway_request::Op::TopicGateways(TopicGateways { topic: key.clone() }),
                        serde_json::Value::Null,
                        true,
                    ),
                    4..=6 => (
                        "subscribe",
                        gateway_request::Op::Subscribe(Subscribe {
                            topic: key.clone(),
                            epoch: 0,
                        }),
                        json!({ "gateway": gateway }),
                        false,
                    ),
                    _ => (
                        "unsubscribe",
                        gateway_request::Op::Unsubscribe(Unsubscribe { topic: key.clone() }),
                        json!({ "gateway": gateway }),
                        false,
                    ),
                };
                let invoke = Op {
                    index: 0,
                    process: Process::Client(process),
                    kind: OpType::Invoke,
                    f: f.into(),
                    key: Some(key.clone()),
                    value: value.clone(),
                    time_ns: clock.now_ns(),
                    error: None,
                };
                let _ = tx.send(invoke);
                let outcome = link.request(gateway, &key, op, read).await;
                let (kind, result, error) = match outcome {
                    Outcome::Ok(gateway_reply::Result::Done(d)) => (
                        OpType::Ok,
                        json!({ "gateway": gateway, "changed": d.changed, "index": d.index }),
                        None,
                    ),
                    Outcome::Ok(gateway_reply::Result::Gateways(g)) => {
                        let mut list = g.gateways;
                        list.sort_unstable();
                        (OpType::Ok, json!({ "gateways": list }), None)
                    }
                    Outcome::Ok(other) => (
                        OpType::Info,
                        serde_json::Value::Null,
                        Some(format!("unexpected reply {other:?}")),
                    ),
                    Outcome::Fail(e) => (OpType::Fail, value.clone(), Some(e)),
                    Outcome::Info(e) => (OpType::Info, value.clone(), Some(e)),
                };
                let _ = tx.send(Op {
                    index: 0,
                    process: Process::Client(process),
                    kind,
                    f: f.into(),
                    key: Some(key),
                    value: result,
                    time_ns: clock.now_ns(),
                    error,
                });
                if kind == OpType::Info {
                    // Jepsen's convention: the crashed process's op stays open forever; the
                    // client continues as a new process.
                    process += config.concurrency as u64;
                }
                let pause = rng.random_range(0..=2 * config.interval_ms);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }));
    }
    drop(tx);
    for t in tasks {
        let _ = t.await;
    }
    let _ = printer.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_retire_after_their_budget() {
        let mut pool = KeyPool::new("k".into(), 2, 3);
        let mut rng = StdRng::seed_from_u64(1);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..30 {
            *counts.entry(pool.pick(&mut rng)).or_insert(0) += 1;
        }
        assert!(counts.values().all(|&n| n <= 3), "{counts:?}");
        assert!(counts.len() >= 10);
    }
}
