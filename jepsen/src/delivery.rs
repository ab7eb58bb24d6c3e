//! The `delivery` workload: real gateways, WebSocket clients, and a checker for what every
//! subscriber received.
//!
//! ```text
//!   worker (client ns)                                  gateways g1..gN (N >= 3: g1..gN-1
//!     subscriber connections c0, c1, ... ──ws──▶ g1, g2   hold subscribers, gN publishers)
//!       subscribe(topic) invoke/ok/fail/info; every received message (conn, id, term, seq)
//!     publishers p0..pP ──ws──▶ gN (and g1..): publish {"id":"p3-17"} invoke/ok/fail/info
//!   runner: nemesis start/stop + session-down windows parsed from the gateway logs
//!     churn subscribers, one per churn topic at a time: subscribe on a random gateway, stay
//!       1.5-5 s, unsubscribe, close; so the table's entries for those topics keep changing
//!   checker: per subscriber connection and topic -- exactly once, (term, seq) increasing,
//!            ack order kept, nothing never published, lost messages counted and excused
//!            only by a fault window (a loss during a gateway's session gap is an anomaly:
//!            the server must fail such a publish, not acknowledge it); obligations end
//!            when the unsubscribe is invoked; nothing published after its ack arrives
//! ```
//!
//! History lines besides the client operations (which [`crate::history::pair`] pairs):
//!
//! ```text
//! {"process":"delivery","type":"info","f":"message","key":"jd1.2","value":{"conn":3,"gateway":1,"id":"p4-17","term":2,"seq":41},"time_ns":..}
//! {"process":"delivery","type":"info","f":"closed","value":{"conn":3,"gateway":1,"by":"gateway","code":1008},"time_ns":..}
//! {"process":"gateway","type":"info","f":"session-down","value":{"gateway":1,"manager":"10.77.0.11:6666","until_ns":..},"time_ns":..}
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::history::{pair, Op, OpType, Process};
use crate::plot::fault_windows;
use crate::verdict::{Anomaly, Validity, Verdict};
use crate::worker::{spawn_printer, Clock, WorkerConfig};
use crate::JepsenError;

/// Subscriber connection `k` records its subscribes as process `SUB_PROCESS_BASE + k`.
pub const SUB_PROCESS_BASE: u64 = 1_000_000;
/// Topics of a run.
pub const TOPICS: usize = 4;
/// Churn topics of a run: each has one subscriber at a time, which subscribes on a gateway,
/// stays a few seconds, unsubscribes and leaves, and comes back on another (or the same)
/// gateway, so that the table's entries for these topics change all run long.
pub const CHURN_TOPICS: usize = 3;
/// A churn subscriber stays this many ms (uniform) before it unsubscribes.
const CHURN_HOLD_MS: std::ops::Range<u64> = 1_500..5_000;
/// Subscriber connections open at the start.
const INITIAL_SUBSCRIBERS: u64 = 4;
/// At most this many subscriber connections over a run (one more every few seconds).
const MAX_SUBSCRIBERS: u64 = 12;
/// Seconds between new subscriber connections.
const NEW_SUBSCRIBER_EVERY_SECS: f64 = 4.0;
/// Seconds the subscribers keep reading after the last publish invocation.
const DRAIN_SECS: f64 = 3.0;
/// A session gap of a gateway noticed within this many seconds after a fault window ended
/// is taken to have begun when that fault began (the gateway notices a dead manager late).
const SESSION_NOTICE_SECS: f64 = 15.0;
/// A lost message whose publish was acknowledged this shortly before the gateway closed the
/// subscriber's connection is excused (the close discards the connection's queue).
const CLOSE_GRACE_NS: u64 = 1_000_000_000;
/// At most this many anomalies of one kind are written out (all are counted).
const MAX_ANOMALIES_PER_KIND: usize = 50;

fn event(f: &str, key: Option<String>, value: Value, time_ns: u64) -> Op {
    Op {
        index: 0,
        process: Process::Named("delivery".into()),
        kind: OpType::Info,
        f: f.into(),
        key,
        value,
        time_ns,
        error: None,
    }
}

fn client_op(process: u64, kind: OpType, f: &str, key: &str, value: Value, t: u64) -> Op {
    Op {
        index: 0,
        process: Process::Client(process),
        kind,
        f: f.into(),
        key: Some(key.to_string()),
        value,
        time_ns: t,
        error: None,
    }
}

/// The topics of a run that subscribers join and stay on.
pub fn topics(seed: u64) -> Vec<String> {
    (0..TOPICS).map(|i| format!("jd{seed}.{i}")).collect()
}

/// The churn topics of a run.
pub fn churn_topics(seed: u64) -> Vec<String> {
    (0..CHURN_TOPICS)
        .map(|i| format!("jd{seed}.c{i}"))
        .collect()
}

/// Which gateways hold subscribers and which one publisher `p` uses: with three or more
/// gateways the last one is reserved for publishers (every other publisher uses a subscriber
/// gateway too, for local deliveries).
fn subscriber_gateways(n: usize) -> Vec<usize> {
    if n >= 3 {
        (0..n - 1).collect()
    } else {
        (0..n).collect()
    }
}

fn publisher_gateway(n: usize, p: usize) -> usize {
    if n >= 3 && p % 2 == 1 {
        (p / 2) % (n - 1)
    } else {
        n - 1
    }
}

/// Run the delivery worker: subscribers and publishers until the time limit, then a drain.
pub async fn run_delivery_worker(config: WorkerConfig) -> Result<(), JepsenError> {
    if config.gateways.is_empty() {
        return Err(JepsenError::Usage(
            "the delivery workload needs gateways".into(),
        ));
    }
    let clock = Clock::new(config.t0_unix_ms);
    let topics = topics(config.seed);
    let (tx, printer) = spawn_printer();
    let limit_ns = (config.time_limit_secs * 1e9) as u64;
    let drain_end_ns = limit_ns + (DRAIN_SECS * 1e9) as u64;
    let conn_ids = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();

    // Subscribers: a few at the start, then one more every few seconds (so that subscribes
    // also happen during faults); a connection the gateway closes is replaced.
    let sub_gws = subscriber_gateways(config.gateways.len());
    {
        let tx = tx.clone();
        let config = config.clone();
        let topics = topics.clone();
        let conn_ids = conn_ids.clone();
        let sub_gws = sub_gws.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(config.seed ^ 0x5eed_0005);
            let mut subs = Vec::new();
            let mut started = 0u64;
            loop {
                let now = clock.now_ns();
                let due = started < INITIAL_SUBSCRIBERS
                    || (now as f64)
                        >= NEW_SUBSCRIBER_EVERY_SECS
                            * 1e9
                            * (started - INITIAL_SUBSCRIBERS + 1) as f64;
                if started >= MAX_SUBSCRIBERS || (now as f64) > config.time_limit_secs * 1e9 - 8e9 {
                    break;
                }
                if due {
                    let gw = sub_gws[started as usize % sub_gws.len()];
                    let mut mine = topics.clone();
                    mine.shuffle(&mut rng);
                    mine.truncate(rng.random_range(2..=topics.len()));
                    let seed = rng.random();
                    subs.push(tokio::spawn(subscriber_slot(
                        conn_ids.clone(),
                        gw,
                        config.gateways[gw],
                        mine,
                        clock,
                        tx.clone(),
                        limit_ns,
                        drain_end_ns,
                        seed,
                    )));
                    started += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            for s in subs {
                let _ = s.await;
            }
        }));
    }

    // Churn: one subscriber at a time per churn topic, coming and going.
    for (i, topic) in churn_topics(config.seed).into_iter().enumerate() {
        let tx = tx.clone();
        let config = config.clone();
        let conn_ids = conn_ids.clone();
        let sub_gws = sub_gws.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(config.seed ^ (0xc4u64 << 32) ^ i as u64);
            while clock.now_ns() + 4_000_000_000 < limit_ns {
                let gw = sub_gws[rng.random_range(0..sub_gws.len())];
                let conn = conn_ids.fetch_add(1, Ordering::Relaxed);
                let hold = rng.random_range(CHURN_HOLD_MS);
                let leave = Leave::At(clock.now_ns() + hold * 1_000_000);
                let topics = [topic.clone()];
                subscriber(conn, gw, config.gateways[gw], &topics, clock, &tx, leave).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
            }
        }));
    }

    // Publishers: to the steady and the churn topics.
    let topics: Vec<String> = topics
        .into_iter()
        .chain(churn_topics(config.seed))
        .collect();
    for p in 0..config.concurrency {
        let tx = tx.clone();
        let config = config.clone();
        let topics = topics.clone();
        tasks.push(tokio::spawn(async move {
            let gw = publisher_gateway(config.gateways.len(), p);
            publisher(
                p as u64,
                config.concurrency as u64,
                gw,
                config.gateways[gw],
                topics,
                clock,
                tx,
                limit_ns,
                config.interval_ms,
                config.seed.wrapping_mul(1_000_003) + p as u64,
            )
            .await;
        }));
    }
    drop(tx);
    for t in tasks {
        let _ = t.await;
    }
    let _ = printer.await;
    Ok(())
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<(), String>>>>>;

/// One subscriber "slot": a connection, replaced by a fresh one (new conn id) when the
/// gateway closes it before the time limit.
#[allow(clippy::too_many_arguments)]
async fn subscriber_slot(
    conn_ids: Arc<AtomicU64>,
    gw: usize,
    addr: SocketAddr,
    topics: Vec<String>,
    clock: Clock,
    tx: mpsc::UnboundedSender<Op>,
    limit_ns: u64,
    drain_end_ns: u64,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    while clock.now_ns() + 5_000_000_000 < limit_ns {
        let conn = conn_ids.fetch_add(1, Ordering::Relaxed);
        let leave = Leave::Stay(drain_end_ns);
        let closed_by_gateway = subscriber(conn, gw, addr, &topics, clock, &tx, leave).await;
        if !closed_by_gateway {
            return;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..800))).await;
    }
}

/// When a subscriber connection ends.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// Stay subscribed until the drain ends (ns since t0), then close.
    Stay(u64),
    /// Unsubscribe from every topic at this time (ns since t0), read a little longer, close.
    At(u64),
}

/// Time a churn subscriber keeps reading after its unsubscribes were acknowledged.
const AFTER_UNSUBSCRIBE_MS: u64 = 300;

/// One subscriber connection. Returns true when the gateway (or the network) ended it.
async fn subscriber(
    conn: u64,
    gw: usize,
    addr: SocketAddr,
    topics: &[String],
    clock: Clock,
    tx: &mpsc::UnboundedSender<Op>,
    leave: Leave,
) -> bool {
    let gateway = gw as u64 + 1;
    let url = format!("ws://{addr}/ws");
    let ws = match tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            let _ = tx.send(event(
                "connect-failed",
                None,
                json!({"conn": conn, "gateway": gateway, "error": e.to_string()}),
                clock.now_ns(),
            ));
            return true;
        }
        Err(_) => {
            let _ = tx.send(event(
                "connect-failed",
                None,
                json!({"conn": conn, "gateway": gateway, "error": "connect timeout"}),
                clock.now_ns(),
            ));
            return true;
        }
    };
    let _ = tx.send(event(
        "connected",
        None,
        json!({"conn": conn, "gateway": gateway}),
        clock.now_ns(),
    ));
    let (sink, mut stream) = ws.split();
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let closing = Arc::new(AtomicBool::new(false));
    let gone = Arc::new(AtomicBool::new(false));
    let reader = {
        let pending = pending.clone();
        let closing = closing.clone();
        let gone = gone.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let closed = |by: &str, code: Option<u16>, reason: String| {
                if !closing.load(Ordering::SeqCst) {
                    let _ = tx.send(event(
                        "closed",
                        None,
                        json!({"conn": conn, "gateway": gateway, "by": by, "code": code,
                               "reason": reason}),
                        clock.now_ns(),
                    ));
                }
            };
            loop {
                match stream.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let t = clock.now_ns();
                        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                            continue;
                        };
                        match v.get("op").and_then(Value::as_str) {
                            Some("message") => {
                                let topic =
                                    v.get("topic").and_then(Value::as_str).map(String::from);
                                let id = v
                                    .get("data")
                                    .and_then(|d| d.get("id"))
                                    .cloned()
                                    .unwrap_or(Value::Null);
                                let _ = tx.send(event(
                                    "message",
                                    topic,
                                    json!({"conn": conn, "gateway": gateway, "id": id,
                                           "term": v.get("term"), "seq": v.get("seq")}),
                                    t,
                                ));
                            }
                            Some("ack") | Some("error") => {
                                let id = v.get("id").and_then(Value::as_u64).unwrap_or(0);
                                let result = if v["op"] == "ack" {
                                    Ok(())
                                } else {
                                    Err(v
                                        .get("code")
                                        .and_then(Value::as_str)
                                        .unwrap_or("error")
                                        .to_string())
                                };
                                let waiter = pending
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .remove(&id);
                                if let Some(w) = waiter {
                                    let _ = w.send(result);
                                }
                            }
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                            .unwrap_or((None, String::new()));
                        closed("gateway", code, reason);
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        closed("error", None, e.to_string());
                        break;
                    }
                    None => {
                        closed("error", None, "end of stream".into());
                        break;
                    }
                }
            }
            gone.store(true, Ordering::SeqCst);
            pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
        })
    };

    let mut requests = Requests {
        sink,
        pending,
        gone: gone.clone(),
        process: SUB_PROCESS_BASE + conn,
        value: json!({"conn": conn, "gateway": gateway}),
        clock,
        tx,
    };
    for (id, topic) in (1u64..).zip(topics) {
        if requests.gone() {
            break;
        }
        requests.send(id, "subscribe", topic).await;
    }

    // Listen until it is time to leave or the gateway closes the connection.
    let (Leave::Stay(until) | Leave::At(until)) = leave;
    requests.listen_until(until).await;
    if matches!(leave, Leave::At(_)) && !requests.gone() {
        let id0 = topics.len() as u64 + 1;
        for (id, topic) in (id0..).zip(topics) {
            if requests.gone() || requests.send(id, "unsubscribe", topic).await != OpType::Ok {
                break;
            }
        }
        requests
            .listen_until(clock.now_ns() + AFTER_UNSUBSCRIBE_MS * 1_000_000)
            .await;
    }
    let mut sink = requests.sink;
    if gone.load(Ordering::SeqCst) {
        let _ = reader.await;
        return true;
    }
    closing.store(true, Ordering::SeqCst);
    let _ = tx.send(event(
        "closed",
        None,
        json!({"conn": conn, "gateway": gateway, "by": "client"}),
        clock.now_ns(),
    ));
    let _ = sink.send(Message::Close(None)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
    false
}

type WsSink = futures::stream::SplitSink<Ws, Message>;

/// The request side of one subscriber connection: subscribes and unsubscribes, one topic
/// per request, each recorded as an operation of the connection's process.
struct Requests<'a> {
    sink: WsSink,
    /// Replies by request id, filled by the connection's reader.
    pending: Pending,
    /// Set by the reader when the connection ended.
    gone: Arc<AtomicBool>,
    process: u64,
    /// The operations' value: `{"conn", "gateway"}`.
    value: Value,
    clock: Clock,
    tx: &'a mpsc::UnboundedSender<Op>,
}

impl Requests<'_> {
    fn gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }

    /// Keep reading (the reader task does) until `until` (ns since t0) or the end of the
    /// connection.
    async fn listen_until(&self, until: u64) {
        while self.clock.now_ns() < until && !self.gone() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Send `{"op": f, "topics": [topic], "id": id}` (`f`: subscribe or unsubscribe), record it
    /// as invoke and ok/fail/info, and return the outcome.
    async fn send(&mut self, id: u64, f: &str, topic: &str) -> OpType {
        let (process, clock) = (self.process, self.clock);
        let (wtx, wrx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, wtx);
        let _ = self.tx.send(client_op(
            process,
            OpType::Invoke,
            f,
            topic,
            self.value.clone(),
            clock.now_ns(),
        ));
        let frame = json!({"op": f, "topics": [topic], "id": id}).to_string();
        let (kind, error) = match self.sink.send(Message::text(frame)).await {
            Err(e) => (OpType::Fail, Some(format!("send: {e}"))),
            Ok(()) => match tokio::time::timeout(Duration::from_secs(12), wrx).await {
                Ok(Ok(Ok(()))) => (OpType::Ok, None),
                Ok(Ok(Err(code))) if code == "timeout" => (OpType::Info, Some(code)),
                Ok(Ok(Err(code))) => (OpType::Fail, Some(code)),
                Ok(Err(_)) => (OpType::Info, Some("connection closed".into())),
                Err(_) => (OpType::Info, Some("no answer in 12 s".into())),
            },
        };
        let mut done = client_op(process, kind, f, topic, self.value.clone(), clock.now_ns());
        done.error = error;
        let _ = self.tx.send(done);
        kind
    }
}

/// One publisher: publishes `{"id":"p<process>-<n>"}` to random topics until the time limit.
/// After an unknown outcome it reconnects and continues as a new process.
#[allow(clippy::too_many_arguments)]
async fn publisher(
    mut process: u64,
    stride: u64,
    gw: usize,
    addr: SocketAddr,
    topics: Vec<String>,
    clock: Clock,
    tx: mpsc::UnboundedSender<Op>,
    limit_ns: u64,
    interval_ms: u64,
    seed: u64,
) {
    let gateway = gw as u64 + 1;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0u64;
    'connect: while clock.now_ns() < limit_ns {
        let url = format!("ws://{addr}/ws");
        let mut ws = match tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url),
        )
        .await
        {
            Ok(Ok((ws, _))) => ws,
            _ => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut req = 0u64;
        while clock.now_ns() < limit_ns {
            let topic = topics[rng.random_range(0..topics.len())].clone();
            n += 1;
            req += 1;
            let pid = format!("p{process}-{n}");
            let value = json!({"id": pid, "gateway": gateway});
            let _ = tx.send(client_op(
                process,
                OpType::Invoke,
                "publish",
                &topic,
                value.clone(),
                clock.now_ns(),
            ));
            let frame = json!({"op": "publish", "topic": topic, "data": {"id": pid}, "id": req})
                .to_string();
            let (kind, error) = match ws.send(Message::text(frame)).await {
                Err(e) => (OpType::Info, Some(format!("send: {e}"))),
                Ok(()) => await_reply(&mut ws, req).await,
            };
            let mut done = client_op(process, kind, "publish", &topic, value, clock.now_ns());
            done.error = error;
            let _ = tx.send(done);
            if kind == OpType::Info {
                // Jepsen's convention: the op stays open forever; continue as a new process
                // on a new connection.
                process += stride;
                let _ = ws.close(None).await;
                continue 'connect;
            }
            let pause = rng.random_range(0..=2 * interval_ms);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let _ = ws.close(None).await;
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Wait for the ack or error of request `req`.
async fn await_reply(ws: &mut Ws, req: u64) -> (OpType, Option<String>) {
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    if v.get("id").and_then(Value::as_u64) != Some(req) {
                        continue;
                    }
                    match v.get("op").and_then(Value::as_str) {
                        Some("ack") => return (OpType::Ok, None),
                        Some("error") => {
                            let code = v
                                .get("code")
                                .and_then(Value::as_str)
                                .unwrap_or("error")
                                .to_string();
                            // `timeout` means the outcome is unknown; every other code means
                            // the message was not published.
                            let kind = if code == "timeout" {
                                OpType::Info
                            } else {
                                OpType::Fail
                            };
                            return (kind, Some(code));
                        }
                        _ => continue,
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    return (OpType::Info, Some("connection closed".into()))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return (OpType::Info, Some(format!("connection: {e}"))),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(15), wait).await {
        Ok(r) => r,
        Err(_) => (OpType::Info, Some("no answer in 15 s".into())),
    }
}

// ---------------------------------------------------------------------------------------
// The checker.
// ---------------------------------------------------------------------------------------

/// Counts of the delivery checker (`verdict.json` → `stats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeliveryStats {
    /// Topics published to.
    pub topics: usize,
    /// Subscriber connections.
    pub connections: usize,
    /// Subscriber connections the gateway (or the network) ended before the drain.
    pub connections_closed_by_gateway: usize,
    /// Publishes by outcome.
    pub publishes_ok: u64,
    /// Publishes that certainly failed.
    pub publishes_fail: u64,
    /// Publishes of unknown outcome.
    pub publishes_info: u64,
    /// Acknowledged subscriptions (connection, topic).
    pub subscriptions: u64,
    /// Messages received, over all connections.
    pub messages_received: u64,
    /// (subscriber, acknowledged publish) pairs that had to be delivered exactly once.
    pub obligations: u64,
    /// Of those, delivered.
    pub delivered: u64,
    /// Of those, never received.
    pub lost: u64,
    /// Lost, but the publish overlapped a fault window.
    pub lost_excused_fault: u64,
    /// Unexcused losses that fell in a session gap of the subscriber's gateway (counted for
    /// the explanation; still anomalies).
    pub lost_in_session_gap: u64,
    /// Lost, acknowledged just before the gateway closed the subscriber's connection.
    pub lost_excused_closing: u64,
    /// Lost with no excuse (each is an anomaly).
    pub lost_unexcused: u64,
    /// Messages received twice on one connection.
    pub duplicates: u64,
    /// Messages out of (term, seq) order or out of acknowledgement order.
    pub reordered: u64,
    /// Messages never published (or published to another topic).
    pub phantoms: u64,
    /// One publish received with different (term, seq) stamps.
    pub restamped: u64,
    /// Messages of publishes that failed (the gateway said the publish was not done).
    pub delivered_after_fail: u64,
    /// Messages of publishes of unknown outcome.
    pub delivered_info: u64,
    /// Messages of publishes invoked after the connection's unsubscribe from the topic was
    /// acknowledged (each is an anomaly).
    pub delivered_after_unsubscribe: u64,
    /// Fault windows (nemesis) and gateway session gaps used for excuses.
    pub fault_windows: usize,
    /// Session gaps read from the gateway logs.
    pub session_gaps: usize,
    /// Publish invoke → receive, ms: median, 99th percentile, max (acknowledged publishes).
    pub delivery_ms_p50: f64,
    /// 99th percentile.
    pub delivery_ms_p99: f64,
    /// Max.
    pub delivery_ms_max: f64,
}

struct Publish {
    topic: String,
    pair: usize,
    invoke: u64,
    /// Ack time, for ok publishes.
    ack: Option<u64>,
    outcome: OpType,
}

#[derive(Default)]
struct Conn {
    gateway: u64,
    /// topic -> (ack time of the first ok subscribe, its pair).
    subs: BTreeMap<String, (u64, usize)>,
    /// topic -> (invoke time of the first unsubscribe, its ack time if ok, its pair).
    unsubs: BTreeMap<String, (u64, Option<u64>, usize)>,
    /// When its obligations end, how, and the line.
    end: Option<(u64, bool, Op)>,
    received: Vec<Op>,
}

/// Per connection and topic: the last (term, seq) received and its line, the latest publish
/// invocation among the messages received so far, and that publish.
type TopicOrder<'a> = ((u64, u64), &'a Op, u64, usize);

fn u64_of(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A session gap of gateway `gateway`: from `from` to `to` (ns), widened back to the fault
/// that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionGap {
    /// The gateway (1-based id).
    pub gateway: u64,
    /// Start (ns since t0).
    pub from: u64,
    /// End (ns since t0).
    pub to: u64,
}

/// Check a delivery history.
pub fn check_history(history: &[Op]) -> Result<Verdict, JepsenError> {
    let pairs = pair(history)?;
    let end_of_history = history.iter().map(|o| o.time_ns).max().unwrap_or(0);
    let mut stats = DeliveryStats::default();

    // Publishes.
    let mut publishes: Vec<Publish> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut conns: BTreeMap<u64, Conn> = BTreeMap::new();
    for (i, p) in pairs.iter().enumerate() {
        match p.invoke.f.as_str() {
            "publish" => {
                let id = p
                    .invoke
                    .value
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        JepsenError::BadHistory(format!("publish {} has no id", p.invoke.index))
                    })?
                    .to_string();
                let outcome = p.outcome();
                match outcome {
                    OpType::Ok => stats.publishes_ok += 1,
                    OpType::Fail => stats.publishes_fail += 1,
                    _ => stats.publishes_info += 1,
                }
                if by_id.insert(id.clone(), publishes.len()).is_some() {
                    return Err(JepsenError::BadHistory(format!(
                        "publish id {id} invoked twice"
                    )));
                }
                publishes.push(Publish {
                    topic: p.invoke.key.clone().unwrap_or_default(),
                    pair: i,
                    invoke: p.invoke.time_ns,
                    ack: (outcome == OpType::Ok)
                        .then(|| p.complete.as_ref().map(|c| c.time_ns))
                        .flatten(),
                    outcome,
                });
            }
            "subscribe" => {
                let conn = u64_of(&p.invoke.value, "conn").ok_or_else(|| {
                    JepsenError::BadHistory(format!("subscribe {} has no conn", p.invoke.index))
                })?;
                let c = conns.entry(conn).or_default();
                c.gateway = u64_of(&p.invoke.value, "gateway").unwrap_or(c.gateway);
                if let (OpType::Ok, Some(done)) = (p.outcome(), &p.complete) {
                    let topic = p.invoke.key.clone().unwrap_or_default();
                    let e = c.subs.entry(topic).or_insert((done.time_ns, i));
                    if done.time_ns < e.0 {
                        *e = (done.time_ns, i);
                    }
                }
            }
            "unsubscribe" => {
                let conn = u64_of(&p.invoke.value, "conn").ok_or_else(|| {
                    JepsenError::BadHistory(format!("unsubscribe {} has no conn", p.invoke.index))
                })?;
                let c = conns.entry(conn).or_default();
                let acked = match (p.outcome(), &p.complete) {
                    (OpType::Ok, Some(done)) => Some(done.time_ns),
                    _ => None,
                };
                let topic = p.invoke.key.clone().unwrap_or_default();
                let e = c
                    .unsubs
                    .entry(topic)
                    .or_insert((p.invoke.time_ns, acked, i));
                if p.invoke.time_ns < e.0 {
                    *e = (p.invoke.time_ns, acked, i);
                }
            }
            _ => {}
        }
    }
    stats.topics = publishes
        .iter()
        .map(|p| p.topic.as_str())
        .collect::<HashSet<_>>()
        .len();

    // Events: messages, closes, session gaps.
    let windows: Vec<(u64, u64)> = fault_windows(history)
        .iter()
        .map(|w| ((w.start * 1e9) as u64, (w.end * 1e9) as u64))
        .collect();
    let mut gaps: Vec<SessionGap> = Vec::new();
    for op in history {
        match (&op.process, op.f.as_str()) {
            (Process::Named(n), "message") if n == "delivery" => {
                let conn = u64_of(&op.value, "conn").unwrap_or(u64::MAX);
                let c = conns.entry(conn).or_default();
                c.gateway = u64_of(&op.value, "gateway").unwrap_or(c.gateway);
                c.received.push(op.clone());
            }
            (Process::Named(n), "connected") if n == "delivery" => {
                let conn = u64_of(&op.value, "conn").unwrap_or(u64::MAX);
                let c = conns.entry(conn).or_default();
                c.gateway = u64_of(&op.value, "gateway").unwrap_or(c.gateway);
            }
            (Process::Named(n), "closed") if n == "delivery" => {
                let conn = u64_of(&op.value, "conn").unwrap_or(u64::MAX);
                let by_gateway = op.value.get("by").and_then(Value::as_str) != Some("client");
                let c = conns.entry(conn).or_default();
                if c.end.as_ref().is_none_or(|e| op.time_ns < e.0) {
                    c.end = Some((op.time_ns, by_gateway, op.clone()));
                }
            }
            (Process::Named(n), "session-down") if n == "gateway" => {
                let gateway = u64_of(&op.value, "gateway").unwrap_or(0);
                let noticed = op.time_ns;
                let to = u64_of(&op.value, "until_ns").unwrap_or(end_of_history);
                let from = windows
                    .iter()
                    .filter(|(s, e)| {
                        *s <= noticed && (*e as f64 + SESSION_NOTICE_SECS * 1e9) >= noticed as f64
                    })
                    .map(|(s, _)| *s)
                    .max()
                    .unwrap_or(noticed);
                gaps.push(SessionGap { gateway, from, to });
            }
            _ => {}
        }
    }
    stats.fault_windows = windows.len();
    stats.session_gaps = gaps.len();
    stats.connections = conns.len();
    stats.connections_closed_by_gateway = conns
        .values()
        .filter(|c| c.end.as_ref().is_some_and(|e| e.1))
        .count();

    let pair_ops = |i: usize| -> Vec<Op> {
        let p = &pairs[i];
        std::iter::once(p.invoke.clone())
            .chain(p.complete.clone())
            .collect()
    };
    let mut anomalies: BTreeMap<&'static str, Vec<Anomaly>> = BTreeMap::new();
    let mut report =
        |kind: &'static str, key: Option<String>, explanation: String, ops: Vec<Op>| {
            let list = anomalies.entry(kind).or_default();
            if list.len() < MAX_ANOMALIES_PER_KIND {
                let mut sub_history = ops;
                sub_history.sort_by_key(|o| (o.time_ns, o.index));
                list.push(Anomaly {
                    kind: kind.into(),
                    key,
                    explanation,
                    sub_history,
                });
            }
        };

    // Per connection: phantoms, duplicates, order.
    let mut stamps: HashMap<String, ((u64, u64), Op)> = HashMap::new();
    let mut latencies: Vec<f64> = Vec::new();
    let mut received_by: HashSet<(u64, String)> = HashSet::new();
    for (&conn, c) in &conns {
        let mut seen: HashMap<String, &Op> = HashMap::new();
        let mut order: HashMap<String, TopicOrder<'_>> = HashMap::new();
        for m in &c.received {
            stats.messages_received += 1;
            let topic = m.key.clone().unwrap_or_default();
            let id = match m.value.get("id") {
                Some(Value::String(s)) => s.clone(),
                other => other.map(Value::to_string).unwrap_or_default(),
            };
            let stamp = (
                u64_of(&m.value, "term").unwrap_or(0),
                u64_of(&m.value, "seq").unwrap_or(0),
            );
            let Some(&pi) = by_id.get(&id).filter(|&&pi| publishes[pi].topic == topic) else {
                stats.phantoms += 1;
                let mut ops = vec![m.clone()];
                if let Some(&pi) = by_id.get(&id) {
                    ops.extend(pair_ops(publishes[pi].pair));
                }
                report(
                    "phantom",
                    Some(topic.clone()),
                    format!(
                        "connection {conn} received message {id} on topic {topic}, which no \
                         client ever published to that topic"
                    ),
                    ops,
                );
                continue;
            };
            let p = &publishes[pi];
            if let Some(&(_, Some(unsubscribed), unsub_pair)) = c.unsubs.get(&topic) {
                if p.invoke > unsubscribed {
                    stats.delivered_after_unsubscribe += 1;
                    let mut ops = vec![m.clone()];
                    ops.extend(pair_ops(unsub_pair));
                    ops.extend(pair_ops(p.pair));
                    report(
                        "after-unsubscribe",
                        Some(topic.clone()),
                        format!(
                            "connection {conn} received {id} on topic {topic}, published after \
                             its unsubscribe from {topic} was acknowledged at {:.3} s",
                            unsubscribed as f64 / 1e9
                        ),
                        ops,
                    );
                }
            }
            match p.outcome {
                OpType::Fail => stats.delivered_after_fail += 1,
                OpType::Ok => {}
                _ => stats.delivered_info += 1,
            }
            if let Some(prev) = seen.get(&id) {
                stats.duplicates += 1;
                let mut ops = vec![(*prev).clone(), m.clone()];
                ops.extend(pair_ops(p.pair));
                report(
                    "duplicate",
                    Some(topic.clone()),
                    format!(
                        "connection {conn} received message {id} on topic {topic} twice \
                         (at {:.3} s and {:.3} s)",
                        prev.time_ns as f64 / 1e9,
                        m.time_ns as f64 / 1e9
                    ),
                    ops,
                );
                continue;
            }
            seen.insert(id.clone(), m);
            received_by.insert((conn, id.clone()));
            if p.ack.is_some() {
                latencies.push(m.time_ns.saturating_sub(p.invoke) as f64 / 1e6);
            }
            match stamps.get(&id) {
                Some((s, other)) if *s != stamp => {
                    stats.restamped += 1;
                    let mut ops = vec![other.clone(), m.clone()];
                    ops.extend(pair_ops(p.pair));
                    report(
                        "restamped",
                        Some(topic.clone()),
                        format!(
                            "message {id} arrived stamped {s:?} on one connection and {stamp:?} \
                             on connection {conn}: a publish is stamped once"
                        ),
                        ops,
                    );
                }
                Some(_) => {}
                None => {
                    stamps.insert(id.clone(), (stamp, m.clone()));
                }
            }
            match order.get_mut(&topic) {
                None => {
                    order.insert(topic.clone(), (stamp, m, p.invoke, pi));
                }
                Some(entry) => {
                    let (last_stamp, last_op, max_invoke, max_pi) = *entry;
                    if stamp <= last_stamp {
                        stats.reordered += 1;
                        report(
                            "reordered",
                            Some(topic.clone()),
                            format!(
                                "connection {conn} received {id} stamped {stamp:?} after a \
                                 message stamped {last_stamp:?} on topic {topic}: (term, seq) \
                                 must increase"
                            ),
                            vec![last_op.clone(), m.clone()],
                        );
                    } else if p.ack.is_some_and(|a| a < max_invoke) {
                        stats.reordered += 1;
                        let mut ops = vec![m.clone()];
                        ops.extend(pair_ops(p.pair));
                        ops.extend(pair_ops(publishes[max_pi].pair));
                        ops.extend(
                            c.received
                                .iter()
                                .filter(|o| {
                                    o.value.get("id").and_then(Value::as_str)
                                        == pairs[publishes[max_pi].pair]
                                            .invoke
                                            .value
                                            .get("id")
                                            .and_then(Value::as_str)
                                })
                                .cloned(),
                        );
                        report(
                            "reordered",
                            Some(topic.clone()),
                            format!(
                                "connection {conn} received {id} after a message whose publish \
                                 was invoked only after {id}'s publish was acknowledged, on \
                                 topic {topic}: acknowledged publishes must arrive in order"
                            ),
                            ops,
                        );
                    }
                    let (mi, mpi) = if p.invoke > max_invoke {
                        (p.invoke, pi)
                    } else {
                        (max_invoke, max_pi)
                    };
                    *entry = (stamp.max(last_stamp), m, mi, mpi);
                }
            }
        }
    }

    // Lost messages.
    let mut by_topic: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, p) in publishes.iter().enumerate() {
        if p.ack.is_some() {
            by_topic.entry(p.topic.as_str()).or_default().push(i);
        }
    }
    for (&conn, c) in &conns {
        let (end, closed_by_gateway) = c
            .end
            .as_ref()
            .map_or((end_of_history, false), |e| (e.0, e.1));
        for (topic, &(subscribed, sub_pair)) in &c.subs {
            stats.subscriptions += 1;
            // Owed until the unsubscribe was invoked or the connection ended.
            let until = c.unsubs.get(topic).map_or(end, |u| u.0.min(end));
            for &pi in by_topic.get(topic.as_str()).map_or(&[][..], Vec::as_slice) {
                let p = &publishes[pi];
                let Some(ack) = p.ack else { continue };
                if p.invoke <= subscribed || ack > until {
                    continue;
                }
                stats.obligations += 1;
                let id = pairs[p.pair]
                    .invoke
                    .value
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if received_by.contains(&(conn, id.clone())) {
                    stats.delivered += 1;
                    continue;
                }
                stats.lost += 1;
                let overlaps = |from: u64, to: u64| p.invoke <= to && ack >= from;
                let in_gap = gaps
                    .iter()
                    .any(|g| g.gateway == c.gateway && overlaps(g.from, g.to));
                if windows.iter().any(|&(s, e)| overlaps(s, e)) {
                    stats.lost_excused_fault += 1;
                } else if closed_by_gateway && ack + CLOSE_GRACE_NS >= end {
                    stats.lost_excused_closing += 1;
                } else {
                    stats.lost_unexcused += 1;
                    stats.lost_in_session_gap += u64::from(in_gap);
                    let mut ops = pair_ops(sub_pair);
                    ops.extend(pair_ops(p.pair));
                    if let Some(e) = &c.end {
                        ops.push(e.2.clone());
                    }
                    report(
                        "lost",
                        Some(topic.clone()),
                        format!(
                            "publish {id} to {topic} was acknowledged at {:.3} s, after \
                             connection {conn} (gateway {}) was acknowledged-subscribed at \
                             {:.3} s and before it ended at {:.3} s, outside every fault window, \
                             but the connection never received it{}",
                            ack as f64 / 1e9,
                            c.gateway,
                            subscribed as f64 / 1e9,
                            end as f64 / 1e9,
                            if in_gap {
                                " (the gateway had no session with some manager meanwhile: \
                                 the publish should have failed)"
                            } else {
                                ""
                            }
                        ),
                        ops,
                    );
                }
            }
        }
    }

    latencies.sort_by(f64::total_cmp);
    stats.delivery_ms_p50 = percentile(&latencies, 0.5);
    stats.delivery_ms_p99 = percentile(&latencies, 0.99);
    stats.delivery_ms_max = latencies.last().copied().unwrap_or(0.0);

    let anomalies: Vec<Anomaly> = anomalies.into_values().flatten().collect();
    let valid = if anomalies.is_empty() {
        Validity::Valid
    } else {
        Validity::Invalid
    };
    Ok(Verdict::new(
        "delivery",
        valid,
        history,
        serde_json::to_value(&stats).unwrap_or(Value::Null),
        anomalies,
    ))
}

// ---------------------------------------------------------------------------------------
// Session gaps from gateway logs.
// ---------------------------------------------------------------------------------------

/// Unix milliseconds of an RFC 3339 UTC timestamp as `tracing` writes it
/// (`2025-06-01T10:00:00.123456Z`).
pub fn parse_rfc3339_ms(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, mi) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60) as f64 + sec) * 1e3)
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Session gaps in one gateway's log: every `session with manager ended` line, until the
/// next `session with manager open` for the same manager. Returns (manager, ended at,
/// reopened at) in ns since `t0_unix_ms` (`None`: not reopened).
pub fn session_gaps_in_log(log: &str, t0_unix_ms: f64) -> Vec<(String, u64, Option<u64>)> {
    let mut open: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<(String, u64, Option<u64>)> = Vec::new();
    for raw in log.lines() {
        let line = strip_ansi(raw);
        let ended = line.contains("session with manager ended");
        let opened = line.contains("session with manager open");
        if !ended && !opened {
            continue;
        }
        let Some(ms) = line.split_whitespace().next().and_then(parse_rfc3339_ms) else {
            continue;
        };
        let t = ((ms - t0_unix_ms) * 1e6).max(0.0) as u64;
        let Some(addr) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .map(String::from)
        else {
            continue;
        };
        if ended {
            if !open.contains_key(&addr) {
                open.insert(addr.clone(), out.len());
                out.push((addr, t, None));
            }
        } else if let Some(i) = open.remove(&addr) {
            out[i].2 = Some(t);
        }
    }
    out
}

/// History lines (`process: "gateway"`, `f: "session-down"`) for the session gaps of
/// gateway `gateway` found in its log.
pub fn session_ops(log: &str, gateway: u64, t0_unix_ms: f64) -> Vec<Op> {
    session_gaps_in_log(log, t0_unix_ms)
        .into_iter()
        .map(|(manager, from, to)| Op {
            index: 0,
            process: Process::Named("gateway".into()),
            kind: OpType::Info,
            f: "session-down".into(),
            key: None,
            value: json!({"gateway": gateway, "manager": manager, "until_ns": to}),
            time_ns: from,
            error: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A hand-made history, built in time order.
    #[derive(Default)]
    struct H {
        ops: Vec<Op>,
    }

    impl H {
        fn push(&mut self, op: Op) -> &mut Self {
            let mut op = op;
            op.index = self.ops.len() as u64;
            self.ops.push(op);
            self
        }
        /// An acknowledged subscribe or unsubscribe (`f`) of connection `conn`.
        fn request(&mut self, f: &str, conn: u64, topic: &str, t: u64, done: u64) -> &mut Self {
            let v = json!({"conn": conn, "gateway": 1});
            let p = SUB_PROCESS_BASE + conn;
            self.push(client_op(p, OpType::Invoke, f, topic, v.clone(), t * MS));
            self.push(client_op(p, OpType::Ok, f, topic, v, done * MS))
        }
        fn subscribe(&mut self, conn: u64, topic: &str, t: u64, done: u64) -> &mut Self {
            self.request("subscribe", conn, topic, t, done)
        }
        fn unsubscribe(&mut self, conn: u64, topic: &str, t: u64, done: u64) -> &mut Self {
            self.request("unsubscribe", conn, topic, t, done)
        }
        fn publish(
            &mut self,
            p: u64,
            id: &str,
            topic: &str,
            t: u64,
            done: u64,
            kind: OpType,
        ) -> &mut Self {
            let v = json!({"id": id, "gateway": 3});
            self.push(client_op(
                p,
                OpType::Invoke,
                "publish",
                topic,
                v.clone(),
                t * MS,
            ));
            self.push(client_op(p, kind, "publish", topic, v, done * MS))
        }
        fn recv(
            &mut self,
            conn: u64,
            id: &str,
            topic: &str,
            term: u64,
            seq: u64,
            t: u64,
        ) -> &mut Self {
            self.push(event(
                "message",
                Some(topic.into()),
                json!({"conn": conn, "gateway": 1, "id": id, "term": term, "seq": seq}),
                t * MS,
            ))
        }
        fn nemesis(&mut self, f: &str, t: u64) -> &mut Self {
            self.push(Op {
                index: 0,
                process: Process::Named("nemesis".into()),
                kind: OpType::Info,
                f: f.into(),
                key: None,
                value: json!("kill -9 m1"),
                time_ns: t * MS,
                error: None,
            })
        }
        fn check(&mut self) -> Verdict {
            self.ops.sort_by_key(|o| o.time_ns);
            check_history(&self.ops).unwrap()
        }
    }

    fn stat(v: &Verdict, k: &str) -> u64 {
        v.stats[k].as_u64().unwrap()
    }

    /// Two subscribers, two publishes, everything delivered once and in order.
    fn valid() -> H {
        let mut h = H::default();
        h.subscribe(0, "t", 0, 10)
            .subscribe(1, "t", 0, 12)
            .publish(0, "p0-1", "t", 20, 30, OpType::Ok)
            .recv(0, "p0-1", "t", 1, 1, 28)
            .recv(1, "p0-1", "t", 1, 1, 29)
            .publish(0, "p0-2", "t", 40, 50, OpType::Ok)
            .recv(0, "p0-2", "t", 1, 2, 45)
            .recv(1, "p0-2", "t", 1, 2, 46);
        h
    }

    #[test]
    fn a_clean_history_is_valid() {
        let v = valid().check();
        assert_eq!(v.valid, Validity::Valid, "{}", v.text());
        assert_eq!(stat(&v, "obligations"), 4);
        assert_eq!(stat(&v, "delivered"), 4);
    }

    #[test]
    fn a_duplicate_is_caught() {
        let mut h = valid();
        h.recv(0, "p0-1", "t", 1, 1, 60);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(stat(&v, "duplicates"), 1);
        assert_eq!(v.anomalies[0].kind, "duplicate");
        assert!(!v.anomalies[0].sub_history.is_empty());
    }

    #[test]
    fn a_stamp_reordering_is_caught() {
        let mut h = H::default();
        h.subscribe(0, "t", 0, 10)
            .publish(0, "p0-1", "t", 20, 30, OpType::Ok)
            .publish(1, "p1-1", "t", 21, 31, OpType::Ok)
            .recv(0, "p1-1", "t", 1, 2, 28)
            .recv(0, "p0-1", "t", 1, 1, 29);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid, "{}", v.text());
        assert_eq!(v.anomalies[0].kind, "reordered");
    }

    #[test]
    fn an_acknowledgement_order_reordering_is_caught() {
        // p0-1 was acknowledged before p0-2 was invoked, yet arrives after it (the stamps
        // agree with the arrival order, so only the acknowledgement order catches it).
        let mut h = H::default();
        h.subscribe(0, "t", 0, 10)
            .publish(0, "p0-1", "t", 20, 30, OpType::Ok)
            .publish(0, "p0-2", "t", 40, 50, OpType::Ok)
            .recv(0, "p0-2", "t", 2, 1, 45)
            .recv(0, "p0-1", "t", 2, 2, 46);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid, "{}", v.text());
        assert_eq!(stat(&v, "reordered"), 1);
        // Overlapping publishes may arrive in either order.
        let mut h = H::default();
        h.subscribe(0, "t", 0, 10)
            .publish(0, "p0-1", "t", 20, 50, OpType::Ok)
            .publish(1, "p1-1", "t", 25, 40, OpType::Ok)
            .recv(0, "p1-1", "t", 1, 1, 30)
            .recv(0, "p0-1", "t", 1, 2, 35);
        assert_eq!(h.check().valid, Validity::Valid);
    }

    #[test]
    fn a_message_never_published_is_caught() {
        let mut h = valid();
        h.recv(0, "p9-9", "t", 1, 3, 60);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(stat(&v, "phantoms"), 1);
        // Published, but to another topic: also a phantom.
        let mut h = valid();
        h.subscribe(0, "u", 55, 58).recv(0, "p0-2", "u", 1, 1, 60);
        assert_eq!(stat(&h.check(), "phantoms"), 1);
    }

    #[test]
    fn a_lost_acknowledged_publish_is_caught() {
        let mut h = H::default();
        h.subscribe(0, "t", 0, 10)
            .publish(0, "p0-1", "t", 20, 30, OpType::Ok)
            .recv(0, "p0-1", "t", 1, 1, 25)
            .publish(0, "p0-2", "t", 40, 50, OpType::Ok);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid, "{}", v.text());
        assert_eq!(stat(&v, "lost_unexcused"), 1);
        assert_eq!(v.anomalies[0].kind, "lost");
        assert_eq!(v.anomalies[0].sub_history.len(), 4);
    }

    #[test]
    fn obligations_follow_subscription_and_connection() {
        let mut h = H::default();
        // Published before the subscribe was acknowledged: no obligation.
        h.publish(0, "p0-1", "t", 5, 15, OpType::Ok)
            .subscribe(0, "t", 0, 10)
            // Failed and unknown publishes: no obligation (and may show up when info).
            .publish(0, "p0-2", "t", 20, 25, OpType::Fail)
            .publish(0, "p0-3", "t", 30, 35, OpType::Info)
            .recv(0, "p0-3", "t", 1, 1, 33);
        // The gateway closed the connection: publishes acknowledged later are not owed.
        h.push(event(
            "closed",
            None,
            json!({"conn": 0, "gateway": 1, "by": "gateway", "code": 1008}),
            40 * MS,
        ));
        h.publish(1, "p1-1", "t", 41, 45, OpType::Ok);
        let v = h.check();
        assert_eq!(v.valid, Validity::Valid, "{}", v.text());
        assert_eq!(stat(&v, "obligations"), 0);
        assert_eq!(stat(&v, "delivered_info"), 1);
    }

    #[test]
    fn obligations_end_when_the_unsubscribe_is_invoked() {
        let mut h = H::default();
        h.subscribe(0, "t", 0, 10)
            .publish(0, "p0-1", "t", 20, 30, OpType::Ok)
            .recv(0, "p0-1", "t", 1, 1, 25)
            // Acknowledged after the unsubscribe was invoked: not owed, may still arrive.
            .publish(0, "p0-2", "t", 35, 45, OpType::Ok)
            .unsubscribe(0, "t", 40, 50)
            .publish(1, "p1-1", "t", 38, 47, OpType::Ok)
            .recv(0, "p1-1", "t", 1, 3, 46);
        let v = h.check();
        assert_eq!(v.valid, Validity::Valid, "{}", v.text());
        assert_eq!(stat(&v, "obligations"), 1);
        assert_eq!(stat(&v, "delivered_after_unsubscribe"), 0);

        // Acknowledged before the unsubscribe was invoked and never received: lost.
        let mut h = H::default();
        h.subscribe(0, "t", 0, 10)
            .publish(0, "p0-1", "t", 20, 30, OpType::Ok)
            .unsubscribe(0, "t", 40, 50);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid, "{}", v.text());
        assert_eq!(stat(&v, "lost_unexcused"), 1);
    }

    #[test]
    fn a_message_published_after_the_unsubscribe_ack_is_caught() {
        let mut h = H::default();
        h.subscribe(0, "t", 0, 10)
            .unsubscribe(0, "t", 20, 25)
            .publish(0, "p0-1", "t", 30, 40, OpType::Ok)
            .recv(0, "p0-1", "t", 1, 1, 35);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid, "{}", v.text());
        assert_eq!(stat(&v, "delivered_after_unsubscribe"), 1);
        assert_eq!(v.anomalies[0].kind, "after-unsubscribe");
        assert_eq!(v.anomalies[0].sub_history.len(), 5);
    }

    #[test]
    fn losses_in_fault_windows_are_excused_and_in_session_gaps_are_not() {
        let mut h = H::default();
        h.subscribe(0, "t", 0, 10)
            .nemesis("start", 100)
            .publish(0, "p0-1", "t", 90, 110, OpType::Ok)
            .nemesis("stop", 200)
            // After the fault, while gateway 1 had no session (noticed at 205, back at 300):
            .publish(0, "p0-2", "t", 250, 260, OpType::Ok)
            .push(Op {
                index: 0,
                process: Process::Named("gateway".into()),
                kind: OpType::Info,
                f: "session-down".into(),
                key: None,
                value: json!({"gateway": 1, "manager": "10.77.0.11:6666", "until_ns": 300 * MS}),
                time_ns: 205 * MS,
                error: None,
            });
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid, "{}", v.text());
        assert_eq!(stat(&v, "lost"), 2);
        assert_eq!(stat(&v, "lost_excused_fault"), 1);
        assert_eq!(stat(&v, "lost_unexcused"), 1);
        assert_eq!(stat(&v, "lost_in_session_gap"), 1);
        assert!(v.text().contains("should have failed"), "{}", v.text());
        // A loss long after every fault and gap is an anomaly too, not counted as in a gap.
        h.publish(0, "p0-3", "t", 400, 410, OpType::Ok);
        let v = h.check();
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(stat(&v, "lost_unexcused"), 2);
        assert_eq!(stat(&v, "lost_in_session_gap"), 1);
    }

    #[test]
    fn gateway_logs_give_session_gaps() {
        let t0 = parse_rfc3339_ms("2026-11-26T10:35:14.000000Z").unwrap();
        assert_eq!(
            parse_rfc3339_ms("1970-01-02T00:00:01.5Z"),
            Some(86_401_500.0)
        );
        let log = "\
2026-11-26T10:35:14.429715Z  INFO firetower_gateway::cluster: session with manager open addr=10.77.0.13:6666
2026-11-26T10:35:19.000000Z DEBUG firetower_gateway::cluster: session with manager ended addr=10.77.0.13:6666 error=connection lost
\u{1b}[2m2026-11-26T10:35:21.000000Z\u{1b}[0m DEBUG firetower_gateway::cluster: session with manager ended addr=10.77.0.13:6666 error=QUIC handshake timed out
2026-11-26T10:35:22.000000Z DEBUG firetower_gateway::cluster: session with manager ended addr=10.77.0.11:6666 error=x
2026-11-26T10:35:24.000000Z  INFO firetower_gateway::cluster: session with manager open addr=10.77.0.13:6666
";
        let gaps = session_gaps_in_log(log, t0);
        assert_eq!(
            gaps,
            vec![
                (
                    "10.77.0.13:6666".to_string(),
                    5_000_000_000,
                    Some(10_000_000_000)
                ),
                ("10.77.0.11:6666".to_string(), 8_000_000_000, None),
            ]
        );
        let ops = session_ops(log, 2, t0);
        assert_eq!(ops[0].value["gateway"], 2);
    }

    #[test]
    fn gateway_roles() {
        assert_eq!(subscriber_gateways(3), vec![0, 1]);
        assert_eq!(publisher_gateway(3, 0), 2);
        assert_eq!(publisher_gateway(3, 1), 0);
        assert_eq!(publisher_gateway(3, 3), 1);
        assert_eq!(subscriber_gateways(1), vec![0]);
        assert_eq!(publisher_gateway(1, 1), 0);
    }
}
