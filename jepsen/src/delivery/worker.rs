//! The delivery worker's clients, on [`firetower_client::Client`]: subscriber connections
//! that record every message as it arrives, churn subscribers that come and go, and
//! publishers whose every publish is an operation of the history.
//!
//! ```text
//!   subscriber (one task, one Client): connect ─ subscribe t1 ─ ... ─ listen ─ [unsubscribe
//!     ─ listen 300 ms] ─ close; every frame read on the way is recorded when it is read
//!   publisher: connect ─ publish ─ ack | error | no answer (info: new process, reconnect)
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use firetower_client::ws::close_code;
use firetower_client::{Client, ClientError, ClientFrame, Event, Flavour, Payload, ServerFrame};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::ops::{client_op, event, SUB_PROCESS_BASE};
use crate::history::{Op, OpType};
use crate::worker::{spawn_printer, Clock, WorkerConfig};
use crate::JepsenError;

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
/// A connection attempt gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A subscriber waits this long for the answer to a subscribe or unsubscribe.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(12);
/// A publisher waits this long for the answer to a publish.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);
/// A closing connection waits this long for the gateway's close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

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
    let target = addr.to_string();
    let connect = Client::connect(&target, Flavour::Json);
    let client = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(client)) => client,
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
    let mut sub = Subscriber {
        client,
        conn,
        gateway,
        clock,
        tx,
        gone: false,
        closing: false,
    };
    for topic in topics {
        if sub.gone {
            break;
        }
        sub.request("subscribe", topic).await;
    }

    // Listen until it is time to leave or the gateway closes the connection.
    let (Leave::Stay(until) | Leave::At(until)) = leave;
    sub.listen_until(until).await;
    if matches!(leave, Leave::At(_)) && !sub.gone {
        for topic in topics {
            if sub.gone || sub.request("unsubscribe", topic).await != OpType::Ok {
                break;
            }
        }
        sub.listen_until(clock.now_ns() + AFTER_UNSUBSCRIBE_MS * 1_000_000)
            .await;
    }
    if sub.gone {
        return true;
    }
    sub.close().await;
    false
}

/// The answer to a subscriber's request.
enum Reply {
    /// Acknowledged.
    Ack,
    /// Refused with this error code.
    Refused(String),
}

/// One subscriber connection: its requests (one topic each, recorded as operations of the
/// connection's process) and everything it reads, recorded as it is read.
struct Subscriber<'a> {
    client: Client,
    conn: u64,
    /// 1-based gateway id.
    gateway: u64,
    clock: Clock,
    tx: &'a mpsc::UnboundedSender<Op>,
    /// The connection ended (the gateway or the network ended it; recorded).
    gone: bool,
    /// This end is closing it: its end is not recorded again.
    closing: bool,
}

impl Subscriber<'_> {
    /// The operations' value: `{"conn", "gateway"}`.
    fn value(&self) -> Value {
        json!({"conn": self.conn, "gateway": self.gateway})
    }

    /// Read until the next ack or error frame, recording every message on the way; `None`
    /// once the connection ended (recorded, unless this end is closing it).
    async fn next_reply(&mut self) -> Option<ServerFrame> {
        loop {
            let (by, code, reason) = match self.client.next_event().await {
                Ok(Some(Event::Text(text))) => {
                    let t = self.clock.now_ns();
                    match ServerFrame::parse_json(&text) {
                        Ok(ServerFrame::Message {
                            topic,
                            payload,
                            term,
                            seq,
                            ..
                        }) => self.record_message(&topic, &payload, term, seq, t),
                        Ok(reply @ (ServerFrame::Ack { .. } | ServerFrame::Error { .. })) => {
                            return Some(reply)
                        }
                        _ => {}
                    }
                    continue;
                }
                Ok(Some(Event::Binary(_) | Event::Pong(_))) => continue,
                Ok(Some(Event::Close(frame))) => {
                    let (code, reason) = frame.map_or((None, String::new()), |(c, r)| (Some(c), r));
                    ("gateway", code, reason)
                }
                Ok(None) => ("error", None, "end of stream".to_string()),
                Err(e) => ("error", None, e.to_string()),
            };
            self.gone = true;
            if !self.closing {
                let _ = self.tx.send(event(
                    "closed",
                    None,
                    json!({"conn": self.conn, "gateway": self.gateway, "by": by, "code": code,
                           "reason": reason}),
                    self.clock.now_ns(),
                ));
            }
            return None;
        }
    }

    fn record_message(&self, topic: &str, payload: &Payload, term: u64, seq: u64, t: u64) {
        let id = match payload {
            Payload::Json(data) => serde_json::from_slice::<Value>(data)
                .ok()
                .and_then(|d| d.get("id").cloned()),
            Payload::Binary(_) => None,
        };
        let _ = self.tx.send(event(
            "message",
            Some(topic.to_string()),
            json!({"conn": self.conn, "gateway": self.gateway, "id": id.unwrap_or(Value::Null),
                   "term": term, "seq": seq}),
            t,
        ));
    }

    /// Read until the answer to request `id`; `None` when the connection ended first.
    async fn reply_to(&mut self, id: u64) -> Option<Reply> {
        loop {
            match self.next_reply().await? {
                ServerFrame::Ack { id: got } if got == id => return Some(Reply::Ack),
                ServerFrame::Error {
                    id: Some(got),
                    code,
                    ..
                } if got == id => return Some(Reply::Refused(code)),
                // Late answers to requests that timed out.
                _ => {}
            }
        }
    }

    /// Keep reading until `until` (ns since t0) or the end of the connection.
    async fn listen_until(&mut self, until: u64) {
        while !self.gone {
            let now = self.clock.now_ns();
            if now >= until {
                return;
            }
            let wait = Duration::from_nanos(until - now);
            if tokio::time::timeout(wait, self.next_reply()).await.is_err() {
                return;
            }
        }
    }

    /// Send `{"op": f, "topics": [topic], "id": ..}` (`f`: subscribe or unsubscribe), record
    /// it as invoke and ok/fail/info, and return the outcome.
    async fn request(&mut self, f: &str, topic: &str) -> OpType {
        let process = SUB_PROCESS_BASE + self.conn;
        let id = self.client.next_request_id();
        let topics = vec![Arc::from(topic)];
        let frame = if f == "subscribe" {
            ClientFrame::subscribe(id, topics)
        } else {
            ClientFrame::Unsubscribe { id, topics }
        };
        let _ = self.tx.send(client_op(
            process,
            OpType::Invoke,
            f,
            topic,
            self.value(),
            self.clock.now_ns(),
        ));
        let (kind, error) = match self.client.send_client_frame(&frame).await {
            Err(e) => (OpType::Fail, Some(format!("send: {e}"))),
            Ok(()) => match tokio::time::timeout(REQUEST_TIMEOUT, self.reply_to(id)).await {
                Ok(Some(Reply::Ack)) => (OpType::Ok, None),
                Ok(Some(Reply::Refused(code))) if code == "timeout" => (OpType::Info, Some(code)),
                Ok(Some(Reply::Refused(code))) => (OpType::Fail, Some(code)),
                Ok(None) => (OpType::Info, Some("connection closed".into())),
                Err(_) => (OpType::Info, Some("no answer in 12 s".into())),
            },
        };
        let mut done = client_op(process, kind, f, topic, self.value(), self.clock.now_ns());
        done.error = error;
        let _ = self.tx.send(done);
        kind
    }

    /// Close from this end: record it, send the close frame, and keep reading (messages
    /// still arriving are recorded) until the gateway's close, for at most [`CLOSE_WAIT`].
    async fn close(mut self) {
        self.closing = true;
        let _ = self.tx.send(event(
            "closed",
            None,
            json!({"conn": self.conn, "gateway": self.gateway, "by": "client"}),
            self.clock.now_ns(),
        ));
        if self
            .client
            .send_close(close_code::NORMAL, "")
            .await
            .is_err()
        {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while self.next_reply().await.is_some() {}
        })
        .await;
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
        let target = addr.to_string();
        let connect = Client::connect(&target, Flavour::Json);
        let mut client = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(client)) => client,
            _ => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        while clock.now_ns() < limit_ns {
            let topic = topics[rng.random_range(0..topics.len())].clone();
            n += 1;
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
            let (kind, error) = publish(&mut client, &topic, &pid).await;
            let mut done = client_op(process, kind, "publish", &topic, value, clock.now_ns());
            done.error = error;
            let _ = tx.send(done);
            if kind == OpType::Info {
                // Jepsen's convention: the op stays open forever; continue as a new process
                // on a new connection.
                process += stride;
                close_in_background(client);
                continue 'connect;
            }
            let pause = rng.random_range(0..=2 * interval_ms);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        close_in_background(client);
    }
}

/// Publish `{"id": pid}` to `topic` and classify the answer.
async fn publish(client: &mut Client, topic: &str, pid: &str) -> (OpType, Option<String>) {
    let data = Payload::from(json!({ "id": pid }));
    match tokio::time::timeout(PUBLISH_TIMEOUT, client.publish(topic, data)).await {
        Ok(Ok(())) => (OpType::Ok, None),
        // `timeout` means the outcome is unknown; every other code means the message was not
        // published.
        Ok(Err(ClientError::Refused { code, .. })) if code == "timeout" => {
            (OpType::Info, Some(code))
        }
        Ok(Err(ClientError::Refused { code, .. })) => (OpType::Fail, Some(code)),
        Ok(Err(ClientError::Closed(_))) => (OpType::Info, Some("connection closed".into())),
        Ok(Err(e)) => (OpType::Info, Some(format!("connection: {e}"))),
        Err(_) => (OpType::Info, Some("no answer in 15 s".into())),
    }
}

/// Close `client` cleanly without making the caller wait for the gateway's answer.
fn close_in_background(client: Client) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(CLOSE_WAIT, client.close()).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
