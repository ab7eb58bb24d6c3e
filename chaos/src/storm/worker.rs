//! The storm worker, `firetower chaos storm`, inside the client host's namespace: N
//! WebSocket clients that reconnect like real ones, a probe publisher, and the post-storm
//! check, all on [`firetower_client::Client`].
//!
//! ```text
//!   client i on gateway (i mod G)+1, topic storm.((i div G) mod T):
//!     connect ─ subscribe ─ ack ─ read ... lost ─ 0–200 ms jitter ─ reconnect ─ ...
//!   probe on the last gateway: one publish every 20 ms, the topics in turn
//!   verifier: on `verify k`, publish {"round":k} to every topic through the last gateway,
//!     then wait until every client has the message of its topic
//!   stdout ◀── one StormEvent per line        stdin ──▶ StormCommand lines
//! ```
//!
//! Nothing here trusts the network: frames are parsed with the client library's codec,
//! never unwrapped, and every wait has a deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use firetower_client::{Client, ClientError, ClientFrame, Event, Flavour, Payload, ServerFrame};
use firetower_link::ReconnectPolicy;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::events::{
    gateway_of, topic_name, topic_of, MissingClient, StormCommand, StormEvent, Verification,
};
use crate::probe::{unix_ms, ProbeRecord};

/// A client that lost its connection waits up to this long before reconnecting.
const RECONNECT_JITTER_MS: u64 = 200;
/// The first connections are spread over this long (the start is not the storm).
const INITIAL_SPREAD_MS: u64 = 1_000;
/// Failed attempts back off from 100 ms, doubling, to at most this (plus the jitter).
const MAX_BACKOFF_MS: u64 = 1_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The probe's deadline per publish, connecting included (the link probe's is 1 s too).
const PROBE_DEADLINE: Duration = Duration::from_secs(1);
const VERIFY_PUBLISH_DEADLINE: Duration = Duration::from_secs(5);
const VERIFY_PUBLISH_ATTEMPTS: u32 = 3;
/// The verifier publishes for at most this long; topics left over count as failed.
const VERIFY_PUBLISH_BUDGET: Duration = Duration::from_secs(60);
/// After publishing, the verifier waits this long for the messages to reach every client.
const DELIVERY_WAIT: Duration = Duration::from_secs(10);
/// Lists in events and reports (missing clients, failed publishes) keep this many entries.
const LIST_LIMIT: usize = 20;
/// Events queued for stdout at most (clients wait when the harness reads slowly).
const EVENT_QUEUE: usize = 8_192;
/// A finished publishing connection gets this long to close cleanly, in the background.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Why the storm worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StormWorkerError {
    /// It was given no gateway, no client or no topic.
    #[error("the storm worker needs gateways, clients and topics")]
    NothingToRun,
    /// The process may not open a socket per client.
    #[error(
        "{clients} clients need about {need} open files, but this process may open {limit} \
         (ulimit -n); use fewer --clients"
    )]
    TooFewFiles {
        /// Clients asked for.
        clients: usize,
        /// Files they need (one socket each, and some to spare).
        need: u64,
        /// Files this process may open.
        limit: u64,
    },
}

/// What `firetower chaos storm` was asked to do.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// WebSocket addresses of the gateways (host:port); the last one carries the probe and
    /// the post-storm check.
    pub gateways: Vec<SocketAddr>,
    /// Clients.
    pub clients: usize,
    /// Topics.
    pub topics: usize,
    /// Pause between probe publishes.
    pub interval: Duration,
    /// The harness's t0 (ms since the Unix epoch), so times line up.
    pub t0_unix_ms: f64,
    /// Seed of the jitter.
    pub seed: u64,
}

/// Milliseconds since the harness's t0.
#[derive(Debug, Clone, Copy)]
struct Clock {
    offset_ms: f64,
    origin: Instant,
}

impl Clock {
    fn new(t0_unix_ms: f64) -> Clock {
        Clock {
            offset_ms: unix_ms() - t0_unix_ms,
            origin: Instant::now(),
        }
    }

    fn now(&self) -> f64 {
        self.offset_ms + self.origin.elapsed().as_secs_f64() * 1e3
    }
}

#[derive(Debug, Default)]
struct ClientState {
    /// Connected with its subscribe acked.
    up: AtomicBool,
    /// The highest verify round received on its topic.
    round: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    clock: Clock,
    gateways: Vec<SocketAddr>,
    topics: Vec<String>,
    clients: Vec<ClientState>,
    out: mpsc::Sender<StormEvent>,
}

impl Shared {
    /// Queue an event for stdout; false once the writer is gone (the worker is ending).
    async fn emit(&self, event: StormEvent) -> bool {
        self.out.send(event).await.is_ok()
    }

    fn topic_of(&self, client: usize) -> &str {
        let t = topic_of(client, self.gateways.len(), self.topics.len());
        self.topics.get(t).map_or("", String::as_str)
    }
}

/// Run the worker until its stdin closes (or stdout breaks). Prints [`StormEvent`] lines and
/// answers [`StormCommand`]s.
pub async fn run_worker(config: StormConfig) -> Result<(), StormWorkerError> {
    if config.gateways.is_empty() || config.clients == 0 || config.topics == 0 {
        return Err(StormWorkerError::NothingToRun);
    }
    let need = config.clients as u64 + 64;
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    if let Some(limit) = limit.filter(|&l| l < need) {
        return Err(StormWorkerError::TooFewFiles {
            clients: config.clients,
            need,
            limit,
        });
    }
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let shared = Arc::new(Shared {
        clock: Clock::new(config.t0_unix_ms),
        gateways: config.gateways.clone(),
        topics: (0..config.topics).map(topic_name).collect(),
        clients: (0..config.clients)
            .map(|_| ClientState::default())
            .collect(),
        out: tx,
    });
    let writer = tokio::spawn(write_events(rx));
    for i in 0..config.clients {
        let seed = config.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        tokio::spawn(run_client(shared.clone(), i, seed));
    }
    tokio::spawn(run_probe(shared.clone(), config.interval));
    tokio::select! {
        _ = read_commands(shared) => {}
        _ = writer => {}
    }
    Ok(())
}

async fn write_events(mut rx: mpsc::Receiver<StormEvent>) {
    let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
    while let Some(first) = rx.recv().await {
        // Write what is queued (up to a batch), then flush once.
        let mut next = Some(first);
        let mut written = 0;
        while let Some(event) = next {
            if let Ok(mut line) = serde_json::to_string(&event) {
                line.push('\n');
                if out.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
            written += 1;
            next = if written < 1_024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if out.flush().await.is_err() {
            // The harness went away.
            return;
        }
    }
}

async fn read_commands(shared: Arc<Shared>) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<StormCommand>(&line) {
            Ok(StormCommand::Verify { round }) => {
                let v = verify(&shared, round).await;
                if !shared.emit(StormEvent::Verified(v)).await {
                    return;
                }
            }
            Err(e) => eprintln!("storm worker: ignoring command {line:?}: {e}"),
        }
    }
}

/// Why a request got no ack.
#[derive(Debug, thiserror::Error)]
enum ReplyError {
    /// The gateway answered with an error code; the connection is fine.
    #[error("{0}")]
    Refused(String),
    /// The connection failed or ended.
    #[error("connection: {0}")]
    Connection(String),
}

impl From<ClientError> for ReplyError {
    fn from(e: ClientError) -> ReplyError {
        match e {
            ClientError::Refused { code, .. } => ReplyError::Refused(short(&code)),
            ClientError::Closed(reason) => ReplyError::Connection(close_reason(reason)),
            e => ReplyError::Connection(short(&e.to_string())),
        }
    }
}

/// Open a `firetower.json` WebSocket to `addr`.
async fn open(addr: SocketAddr) -> Result<Client, ReplyError> {
    let target = addr.to_string();
    let connect = Client::connect(&target, Flavour::Json);
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ReplyError::Connection(format!(
            "connect: no answer in {CONNECT_TIMEOUT:?}"
        ))),
    }
}

/// Send `frame` and read until the reply to it; messages on the way go to `on_message` as
/// they arrive (so a subscriber sees the messages that overtake its ack).
async fn request(
    client: &mut Client,
    frame: ClientFrame,
    mut on_message: impl FnMut(&ServerFrame),
) -> Result<(), ReplyError> {
    let id = frame.id();
    client.send_client_frame(&frame).await?;
    loop {
        match client.next_event().await? {
            Some(Event::Text(text)) => match ServerFrame::parse_json(&text) {
                Ok(ServerFrame::Ack { id: got }) if got == id => return Ok(()),
                Ok(ServerFrame::Error {
                    id: Some(got),
                    code,
                    ..
                }) if got == id => return Err(ReplyError::Refused(short(&code))),
                Ok(frame @ ServerFrame::Message { .. }) => on_message(&frame),
                // Replies to earlier requests, pongs, connection-level errors.
                _ => {}
            },
            Some(Event::Close(reason)) => return Err(ReplyError::Connection(close_reason(reason))),
            Some(Event::Binary(_) | Event::Pong(_)) => {}
            None => return Err(ReplyError::Connection("end of stream".into())),
        }
    }
}

fn close_reason(reason: Option<(u16, String)>) -> String {
    match reason {
        Some((code, reason)) => short(&format!("closed by the gateway: {code} {reason}")),
        None => "closed by the gateway".into(),
    }
}

/// At most 160 characters of an error text.
fn short(text: &str) -> String {
    text.chars().take(160).collect()
}

/// The round number of a post-storm message on `topic`.
fn round_of(frame: &ServerFrame, topic: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Data {
        round: Option<u64>,
    }
    match frame {
        ServerFrame::Message {
            topic: t,
            payload: Payload::Json(data),
            ..
        } if &**t == topic => serde_json::from_slice::<Data>(data).ok()?.round,
        _ => None,
    }
}

fn note_round(state: &ClientState, frame: &ServerFrame, topic: &str) {
    if let Some(r) = round_of(frame, topic) {
        state.round.fetch_max(r, Ordering::SeqCst);
    }
}

/// Connect, subscribe to `topic` and wait for the ack.
async fn connect_and_subscribe(
    addr: SocketAddr,
    topic: &str,
    state: &ClientState,
) -> Result<Client, ReplyError> {
    let mut client = open(addr).await?;
    let frame = ClientFrame::subscribe(client.next_request_id(), vec![Arc::from(topic)]);
    let acked = tokio::time::timeout(
        SUBSCRIBE_TIMEOUT,
        request(&mut client, frame, |f| note_round(state, f, topic)),
    )
    .await;
    match acked {
        Ok(Ok(())) => Ok(client),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ReplyError::Connection(format!(
            "subscribe: no ack in {SUBSCRIBE_TIMEOUT:?}"
        ))),
    }
}

/// Read until the connection ends; returns why it ended.
async fn serve(client: &mut Client, topic: &str, state: &ClientState) -> String {
    loop {
        match client.next_event().await {
            Ok(Some(Event::Text(text))) => {
                if let Ok(frame) = ServerFrame::parse_json(&text) {
                    note_round(state, &frame, topic);
                }
            }
            Ok(Some(Event::Close(reason))) => return close_reason(reason),
            Ok(Some(Event::Binary(_) | Event::Pong(_))) => {}
            Ok(None) => return "end of stream".into(),
            Err(e) => return short(&e.to_string()),
        }
    }
}

/// Pause after the `attempt`-th failed attempt: 100 ms doubling to 1 s, plus jitter.
fn backoff(attempt: u32, rng: &mut StdRng) -> Duration {
    let policy = ReconnectPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_millis(MAX_BACKOFF_MS),
        ..ReconnectPolicy::default()
    };
    policy.delay_above_ceiling(attempt, Duration::from_millis(RECONNECT_JITTER_MS), rng)
}

/// One client: connect, subscribe, read; when the connection ends, reconnect after a jitter
/// like a real client, forever.
async fn run_client(shared: Arc<Shared>, i: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let g = gateway_of(i, shared.gateways.len());
    let Some(&addr) = shared.gateways.get(g) else {
        return;
    };
    let Some(state) = shared.clients.get(i) else {
        return;
    };
    let topic = shared.topic_of(i).to_string();
    tokio::time::sleep(Duration::from_millis(
        rng.random_range(0..=INITIAL_SPREAD_MS),
    ))
    .await;
    let mut lost_ms = None;
    loop {
        let mut attempts = 0u32;
        let mut client = loop {
            attempts = attempts.saturating_add(1);
            match connect_and_subscribe(addr, &topic, state).await {
                Ok(client) => break client,
                Err(_) => tokio::time::sleep(backoff(attempts, &mut rng)).await,
            }
        };
        state.up.store(true, Ordering::SeqCst);
        let up = StormEvent::Up {
            client: i,
            gateway: g + 1,
            ms: shared.clock.now(),
            lost_ms,
            attempts,
        };
        if !shared.emit(up).await {
            return;
        }
        let why = serve(&mut client, &topic, state).await;
        drop(client);
        state.up.store(false, Ordering::SeqCst);
        let ms = shared.clock.now();
        lost_ms = Some(ms);
        let lost = StormEvent::Lost {
            client: i,
            gateway: g + 1,
            ms,
            why,
        };
        if !shared.emit(lost).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(
            rng.random_range(0..=RECONNECT_JITTER_MS),
        ))
        .await;
    }
}

/// Publish `data` to `topic` on `client` (connecting first when there is no connection); a
/// failed connection is dropped so that the next call opens a new one.
async fn publish(
    client: &mut Option<Client>,
    addr: SocketAddr,
    topic: &str,
    data: &serde_json::Value,
) -> Result<(), ReplyError> {
    let conn = match client {
        Some(conn) => conn,
        None => client.insert(open(addr).await?),
    };
    let result = conn
        .publish(topic, Payload::from(data))
        .await
        .map_err(ReplyError::from);
    if matches!(result, Err(ReplyError::Connection(_))) {
        *client = None;
    }
    result
}

/// The probe: publish through the last gateway to the topics in turn, one at a time, every
/// `interval`, printing a [`ProbeRecord`] per publish (deadline 1 s, connecting included).
async fn run_probe(shared: Arc<Shared>, interval: Duration) {
    let Some(&addr) = shared.gateways.last() else {
        return;
    };
    let mut client = None;
    let mut n = 0u64;
    loop {
        let Some(topic) = shared.topics.get(n as usize % shared.topics.len().max(1)) else {
            return;
        };
        n += 1;
        let start = shared.clock.now();
        let data = serde_json::json!({ "probe": n });
        let ok =
            match tokio::time::timeout(PROBE_DEADLINE, publish(&mut client, addr, topic, &data))
                .await
            {
                Ok(r) => r.is_ok(),
                Err(_) => {
                    // Start over on a fresh connection rather than behind a stuck request.
                    client = None;
                    false
                }
            };
        let record = ProbeRecord {
            op: "publish".into(),
            start_ms: start,
            end_ms: shared.clock.now(),
            ok,
        };
        if !shared.emit(StormEvent::Publish(record)).await {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// The post-storm check: publish `{"round":round}` to every topic through the last gateway
/// (up to 3 attempts each), then wait until every client has it or the wait is over.
async fn verify(shared: &Shared, round: u64) -> Verification {
    let mut v = Verification {
        round,
        start_ms: shared.clock.now(),
        expected: shared.clients.len(),
        ..Verification::default()
    };
    let Some(&addr) = shared.gateways.last() else {
        return v;
    };
    let budget = Instant::now() + VERIFY_PUBLISH_BUDGET;
    let data = serde_json::json!({ "round": round });
    let mut client = None;
    for topic in &shared.topics {
        let mut last = None;
        for attempt in 0..VERIFY_PUBLISH_ATTEMPTS {
            if Instant::now() >= budget {
                last = Some(format!("not published within {VERIFY_PUBLISH_BUDGET:?}"));
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            match tokio::time::timeout(
                VERIFY_PUBLISH_DEADLINE,
                publish(&mut client, addr, topic, &data),
            )
            .await
            {
                Ok(Ok(())) => {
                    last = None;
                    break;
                }
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => {
                    client = None;
                    last = Some(format!("no ack in {VERIFY_PUBLISH_DEADLINE:?}"));
                }
            }
        }
        if let Some(e) = last {
            v.publish_failed += 1;
            if v.publish_failures.len() < LIST_LIMIT {
                v.publish_failures.push(format!("{topic}: {e}"));
            }
        }
    }
    if let Some(conn) = client {
        // In the background: the delivery wait below starts now, as it always did.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CLOSE_WAIT, conn.close()).await;
        });
    }
    v.published_ms = shared.clock.now();
    let has = |c: &ClientState| c.round.load(Ordering::SeqCst) >= round;
    let deadline = Instant::now() + DELIVERY_WAIT;
    while !shared.clients.iter().all(has) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    v.delivered = shared.clients.iter().filter(|c| has(c)).count();
    v.missing = shared
        .clients
        .iter()
        .enumerate()
        .filter(|(_, c)| !has(c))
        .take(LIST_LIMIT)
        .map(|(i, c)| MissingClient {
            client: i,
            gateway: gateway_of(i, shared.gateways.len()) + 1,
            topic: shared.topic_of(i).to_string(),
            connected: c.up.load(Ordering::SeqCst),
        })
        .collect();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_read_only_from_the_clients_topic() {
        let msg = |topic: &str, data: &str| {
            ServerFrame::parse_json(
                format!(r#"{{"op":"message","topic":"{topic}","data":{data},"term":1,"seq":1}}"#)
                    .as_bytes(),
            )
            .unwrap()
        };
        assert_eq!(
            round_of(&msg("storm.1", r#"{"round":4}"#), "storm.1"),
            Some(4)
        );
        assert_eq!(round_of(&msg("storm.2", r#"{"round":4}"#), "storm.1"), None);
        assert_eq!(round_of(&msg("storm.1", r#"{"probe":4}"#), "storm.1"), None);
        assert_eq!(round_of(&msg("storm.1", r#""text""#), "storm.1"), None);
        assert_eq!(
            round_of(&msg("storm.1", r#"{"round":-1}"#), "storm.1"),
            None
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut rng = StdRng::seed_from_u64(1);
        for attempt in 1..20 {
            let d = backoff(attempt, &mut rng).as_millis() as u64;
            let base = (100u64 << (attempt - 1).min(4)).min(MAX_BACKOFF_MS);
            assert!(
                (base..=base + RECONNECT_JITTER_MS).contains(&d),
                "{attempt}: {d}"
            );
        }
    }
}
