//! The scenarios: fan-out (throughput and latency of one topic to many subscribers) and idle
//! connections (the gateway's memory per connection), plus the idle worker processes.
//!
//! ```text
//!   fan-out:  publisher ──publish {"ft_ts":µs,"pad":..}──▶ gateway ──message──▶ N subscribers
//!             │ pace: max (window of publishes not yet delivered everywhere) | rate       │
//!             └──────────── shared epoch: latency = receive µs - ft_ts ◀──────────────────┘
//!             timeline: connect + subscribe │ warmup │ measured window │ drain
//!
//!   idle:     coordinator ──spawns──▶ worker processes (each under `ulimit -n`), each opens
//!             its share of connections spread over the gateways and source addresses, says
//!             "ready" on stdout, holds until its stdin closes. The coordinator reads the
//!             gateways' RSS before and after.
//! ```

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{Notify, Semaphore};

use super::client::{number_after, WsUrl};
use super::peer::{Event, PeerConn, System};
use super::procstat::{self, ProcUsage};
use super::stats::{LatencySummary, ShardedHistogram};

/// Time for a subscribe or the first reply to arrive.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Publishes waiting for their ack at most, whatever the pace (the gateway's own per-connection
/// limit is 64; more would only queue in the socket).
const MAX_UNACKED: usize = 64;
/// With pace `max`, a publisher that sees no delivery progress for this long stops waiting for
/// the missing deliveries (counted as a stall) so the run always ends.
const STALL_AFTER: Duration = Duration::from_secs(1);
/// After the last publish, time allowed for the remaining deliveries to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra attempts for a connection whose handshake or subscribe failed.
const CONNECT_RETRIES: u32 = 2;
/// Time the idle workers have to open their connections.
const IDLE_CONNECT_TIMEOUT: Duration = Duration::from_secs(600);
/// File descriptors a worker keeps free for itself (runtime, stdio, spare).
const FD_MARGIN: usize = 200;

/// How fast the publisher goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Pace {
    /// As fast as deliveries come back: at most `window` publishes not yet delivered to every
    /// subscriber, so the gateway's send queues never overflow and the rate found is sustained.
    Max {
        /// Publishes in flight end to end.
        window: usize,
    },
    /// A steady number of deliveries per second (publishes/s = this / subscribers).
    Rate {
        /// Deliveries per second across all subscribers.
        deliveries_per_sec: f64,
    },
}

/// A fan-out run.
#[derive(Debug, Clone)]
pub(super) struct FanoutPlan {
    /// `fanout` or `latency`, echoed in the report.
    pub scenario: &'static str,
    /// The system driven (Firetower or a peer).
    pub system: System,
    /// The gateway (or the peer's address).
    pub url: WsUrl,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Bytes of the published `data` JSON value.
    pub payload: usize,
    /// Publishing before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Publisher pace.
    pub pace: Pace,
    /// Source addresses for the subscribers, round robin (empty: the kernel's choice).
    pub source_ips: Vec<Ipv4Addr>,
    /// Server processes to sample.
    pub server_pids: Vec<u32>,
    /// Handshakes in flight while connecting.
    pub connect_concurrency: usize,
    /// The topic.
    pub topic: String,
}

/// What a fan-out run measured. Rates are over the measured window.
#[derive(Debug, Clone, Serialize)]
pub(super) struct FanoutReport {
    /// `fanout` or `latency`.
    pub scenario: &'static str,
    /// The system driven.
    pub system: System,
    /// Gateway URL.
    pub url: String,
    /// Subscribers asked for.
    pub subscribers_requested: usize,
    /// Subscribers connected and subscribed.
    pub subscribers: usize,
    /// Subscribers that failed to connect or subscribe.
    pub connect_errors: usize,
    /// First connect error, if any.
    pub first_connect_error: Option<String>,
    /// Connection attempts retried (each connection gets up to 3).
    pub connect_retries: u64,
    /// Seconds spent connecting and subscribing.
    pub setup_seconds: f64,
    /// Bytes of each published `data` value.
    pub payload_bytes: usize,
    /// `max` or `rate`.
    pub pace: &'static str,
    /// Target deliveries/s with pace `rate`.
    pub target_deliveries_per_sec: Option<f64>,
    /// Publish window with pace `max`.
    pub window: Option<usize>,
    /// Length of the measured window, seconds.
    pub seconds: f64,
    /// Publishes sent in the window.
    pub publishes: u64,
    /// Publishes per second in the window.
    pub publishes_per_sec: f64,
    /// Deliveries received (all subscribers) in the window.
    pub deliveries: u64,
    /// Deliveries per second in the window.
    pub deliveries_per_sec: f64,
    /// Publish → deliver latency of deliveries received in the window.
    pub latency: LatencySummary,
    /// Publishes sent over the whole run.
    pub published_total: u64,
    /// Publishes acknowledged over the whole run.
    pub acked_total: u64,
    /// Publishes answered with an error (or unanswered at the end).
    pub publish_errors: u64,
    /// Deliveries expected over the whole run (acked × subscribers).
    pub expected_total: u64,
    /// Deliveries received over the whole run.
    pub delivered_total: u64,
    /// Expected but never received (dropped for slow consumers, or lost).
    pub missing: u64,
    /// Sequence numbers skipped, summed over subscribers.
    pub seq_gaps: u64,
    /// Deliveries that arrived with a sequence number at or below one already seen.
    pub out_of_order: u64,
    /// Subscriber connections the gateway closed during the run.
    pub closed_by_server: u64,
    /// Times the `max` publisher gave up waiting for missing deliveries.
    pub stalls: u64,
    /// The server processes over the window.
    pub servers: Vec<ProcUsage>,
    /// The load generator itself over the window.
    pub loadgen: Option<ProcUsage>,
    /// The machine's 1-minute load average at the end of the window (anything above the
    /// core count means other work competed with the run).
    pub load_average: Option<f64>,
}

/// What the subscriber tasks of a scenario (fan-out, many topics) count, and the measurement
/// window they count in.
#[derive(Debug)]
pub(super) struct Deliveries {
    pub(super) epoch: Instant,
    window_start_us: AtomicU64,
    window_end_us: AtomicU64,
    pub(super) delivered_total: AtomicU64,
    pub(super) delivered_in_window: AtomicU64,
    pub(super) seq_gaps: AtomicU64,
    pub(super) out_of_order: AtomicU64,
    pub(super) closed: AtomicU64,
    pub(super) latencies: ShardedHistogram,
}

impl Deliveries {
    /// Nothing counted yet; no window until [`Deliveries::set_window`].
    pub(super) fn new(epoch: Instant) -> Deliveries {
        Deliveries {
            epoch,
            window_start_us: AtomicU64::new(u64::MAX),
            window_end_us: AtomicU64::new(u64::MAX),
            delivered_total: AtomicU64::new(0),
            delivered_in_window: AtomicU64::new(0),
            seq_gaps: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            latencies: ShardedHistogram::default(),
        }
    }

    /// Microseconds since the epoch.
    pub(super) fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The measurement window, µs since the epoch: `[start, end)`.
    pub(super) fn set_window(&self, start: u64, end: u64) {
        self.window_start_us.store(start, Ordering::SeqCst);
        self.window_end_us.store(end, Ordering::SeqCst);
    }

    /// The end of the measurement window, µs since the epoch.
    pub(super) fn window_end(&self) -> u64 {
        self.window_end_us.load(Ordering::Relaxed)
    }

    /// Whether `us` falls in the measurement window.
    pub(super) fn in_window(&self, us: u64) -> bool {
        us >= self.window_start_us.load(Ordering::Relaxed)
            && us < self.window_end_us.load(Ordering::Relaxed)
    }

    /// One subscriber connection: read deliveries until the connection ends, counting them,
    /// checking their order ([`observe_delivery`]) and recording latencies in histogram
    /// shard `index`; `after_batch` runs after every batch that held a delivery.
    pub(super) async fn subscribe(
        &self,
        index: usize,
        mut conn: PeerConn,
        mut after_batch: impl FnMut(),
    ) {
        let mut last: Option<(u64, u64)> = None;
        let mut latencies: Vec<u64> = Vec::new();
        loop {
            let mut received = 0u64;
            let (mut gaps, mut reordered) = (0u64, 0u64);
            latencies.clear();
            let mut now_us = 0;
            let open = conn
                .read_batch(|e| {
                    let Event::Delivery(text) = e else { return };
                    received += 1;
                    now_us = self.now_us();
                    observe_delivery(
                        text,
                        now_us,
                        &mut last,
                        &mut gaps,
                        &mut reordered,
                        &mut latencies,
                    );
                })
                .await;
            if received > 0 {
                self.delivered_total.fetch_add(received, Ordering::Relaxed);
                if self.in_window(now_us) {
                    self.delivered_in_window
                        .fetch_add(received, Ordering::Relaxed);
                    self.latencies.record_batch(index, &latencies);
                }
                if gaps > 0 {
                    self.seq_gaps.fetch_add(gaps, Ordering::Relaxed);
                }
                if reordered > 0 {
                    self.out_of_order.fetch_add(reordered, Ordering::Relaxed);
                }
                after_batch();
            }
            if !matches!(open, Ok(true)) {
                self.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Counters shared by the subscriber tasks, the publisher and the driver.
#[derive(Debug)]
struct FanoutShared {
    d: Deliveries,
    progress: Notify,
}

/// Run a fan-out scenario against one gateway.
pub(super) async fn fanout(plan: FanoutPlan) -> anyhow::Result<FanoutReport> {
    check_fd_budget(plan.subscribers + 16)?;
    // Fail on a wrong --server-pid now, not after connecting thousands of subscribers.
    procstat::sample_all(&plan.server_pids)?;
    let shared = Arc::new(FanoutShared {
        d: Deliveries::new(Instant::now()),
        progress: Notify::new(),
    });

    let setup = Instant::now();
    let (conns, errors) = open_connections(
        plan.system,
        std::slice::from_ref(&plan.url),
        plan.subscribers,
        0,
        &plan.source_ips,
        Topics::One(&plan.topic),
        plan.connect_concurrency,
    )
    .await;
    let setup_seconds = setup.elapsed().as_secs_f64();
    let subscribers = conns.len();
    if subscribers == 0 {
        bail!(
            "no subscriber could connect to {}: {}",
            plan.url.addr,
            errors.first.unwrap_or_default()
        );
    }
    let mut tasks = Vec::with_capacity(subscribers);
    for (i, (_, _, conn)) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(subscriber(i, conn, shared.clone())));
    }

    let publisher_conn = PeerConn::connect(plan.system, &plan.url, None, true)
        .await
        .context("publisher cannot connect")?;
    let start = shared.d.now_us();
    let window_start = start + plan.warmup.as_micros() as u64;
    let window_end = window_start + plan.duration.as_micros() as u64;
    shared.d.set_window(window_start, window_end);
    let publisher = tokio::spawn(publish(
        publisher_conn,
        shared.clone(),
        plan.clone(),
        subscribers as u64,
        window_start,
        window_end,
    ));

    let at = |us: u64| tokio::time::Instant::from_std(shared.d.epoch + Duration::from_micros(us));
    tokio::time::sleep_until(at(window_start)).await;
    let self_pid = std::process::id();
    let servers_before = procstat::sample_all(&plan.server_pids)?;
    let self_before = procstat::sample(self_pid).ok();
    tokio::time::sleep_until(at(window_end)).await;
    let servers_after = procstat::sample_all(&plan.server_pids)?;
    let self_after = procstat::sample(self_pid).ok();
    let load_average = procstat::load_average();
    let seconds = Duration::from_micros(window_end - window_start).as_secs_f64();

    let published = publisher
        .await
        .map_err(|e| anyhow!("publisher task: {e}"))??;
    let expected_total = published.acked * subscribers as u64;
    // Drain: wait until every acknowledged publish reached every subscriber, or progress stops.
    let mut last = shared.d.delivered_total.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let now = shared.d.delivered_total.load(Ordering::Relaxed);
        if now >= expected_total || last_change.elapsed() > DRAIN_TIMEOUT {
            break;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in &tasks {
        t.abort();
    }
    let delivered_total = shared.d.delivered_total.load(Ordering::Relaxed);
    let deliveries = shared.d.delivered_in_window.load(Ordering::Relaxed);
    let (pace, target, window) = match plan.pace {
        Pace::Max { window } => ("max", None, Some(window)),
        Pace::Rate { deliveries_per_sec } => ("rate", Some(deliveries_per_sec), None),
    };
    Ok(FanoutReport {
        scenario: plan.scenario,
        system: plan.system,
        url: plan.system.show_url(&plan.url),
        subscribers_requested: plan.subscribers,
        subscribers,
        connect_errors: errors.count,
        first_connect_error: errors.first,
        connect_retries: errors.retries,
        setup_seconds,
        payload_bytes: plan.payload,
        pace,
        target_deliveries_per_sec: target,
        window,
        seconds,
        publishes: published.in_window,
        publishes_per_sec: published.in_window as f64 / seconds,
        deliveries,
        deliveries_per_sec: deliveries as f64 / seconds,
        latency: LatencySummary::of(&shared.d.latencies.merged()),
        published_total: published.sent,
        acked_total: published.acked,
        publish_errors: published.errors
            + published
                .sent
                .saturating_sub(published.acked + published.errors),
        expected_total,
        delivered_total,
        missing: expected_total.saturating_sub(delivered_total),
        seq_gaps: shared.d.seq_gaps.load(Ordering::Relaxed),
        out_of_order: shared.d.out_of_order.load(Ordering::Relaxed),
        closed_by_server: shared.d.closed.load(Ordering::Relaxed),
        stalls: published.stalls,
        servers: procstat::usage(&servers_before, &servers_after),
        loadgen: match (self_before, self_after) {
            (Some(b), Some(a)) => procstat::usage(&[b], &[a]).pop(),
            _ => None,
        },
        load_average,
    })
}

/// Account for one delivered message `text` received at `now_us`: order by Firetower's
/// `(term, seq)` or, for peers without them, the payload's `"ft_seq"` (a gap or a step back
/// within one term counts); latency from the payload's `"ft_ts"`. `last` is the subscriber's
/// newest stamp so far.
fn observe_delivery(
    text: &[u8],
    now_us: u64,
    last: &mut Option<(u64, u64)>,
    gaps: &mut u64,
    reordered: &mut u64,
    latencies: &mut Vec<u64>,
) {
    let order = match (
        number_after(text, b",\"term\":"),
        number_after(text, b",\"seq\":"),
    ) {
        (Some(term), Some(seq)) => Some((term, seq)),
        _ => number_after(text, b"\"ft_seq\":").map(|seq| (0, seq)),
    };
    if let Some((term, seq)) = order {
        match *last {
            Some((t, s)) if t == term && seq <= s => *reordered += 1,
            Some((t, s)) if t == term && seq > s + 1 => *gaps += seq - s - 1,
            _ => {}
        }
        if last.is_none_or(|(t, s)| t != term || seq > s) {
            *last = Some((term, seq));
        }
    }
    if let Some(sent) = number_after(text, b"\"ft_ts\":") {
        latencies.push(now_us.saturating_sub(sent));
    }
}

/// One subscriber: count deliveries, check sequence numbers, record latencies.
///
/// Order is checked with Firetower's `(term, seq)`; peers have no such numbers, so their
/// payload carries the publisher's own `"ft_seq"` (one publisher, so it must arrive in order).
async fn subscriber(index: usize, conn: PeerConn, shared: Arc<FanoutShared>) {
    shared
        .d
        .subscribe(index, conn, || shared.progress.notify_one())
        .await;
}

#[derive(Debug, Default)]
struct Published {
    sent: u64,
    in_window: u64,
    acked: u64,
    errors: u64,
    stalls: u64,
}

/// The publisher: paces publishes until the window ends, then waits for the last acks.
async fn publish(
    conn: PeerConn,
    shared: Arc<FanoutShared>,
    plan: FanoutPlan,
    subscribers: u64,
    window_start: u64,
    window_end: u64,
) -> anyhow::Result<Published> {
    let (mut reader, mut writer) = conn.into_split();
    let unacked = Arc::new(Semaphore::new(MAX_UNACKED));
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let acks = {
        let (unacked, acked, errors) = (unacked.clone(), acked.clone(), errors.clone());
        tokio::spawn(async move {
            loop {
                let mut done = 0usize;
                let open = reader
                    .read_batch(|e| match e {
                        Event::Ack => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            done += 1;
                        }
                        Event::Error(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            done += 1;
                        }
                        _ => {}
                    })
                    .await;
                unacked.add_permits(done);
                if !matches!(open, Ok(true)) {
                    return;
                }
            }
        })
    };

    let mut out = Published::default();
    let mut forgiven = 0u64;
    let mut text = Vec::with_capacity(plan.payload + 128);
    let mut data = Vec::with_capacity(plan.payload + 64);
    let publishes_per_sec = match plan.pace {
        Pace::Rate { deliveries_per_sec } => deliveries_per_sec / subscribers as f64,
        Pace::Max { .. } => 0.0,
    };
    let start_us = shared.d.now_us();
    loop {
        let now = shared.d.now_us();
        if now >= window_end {
            break;
        }
        match plan.pace {
            Pace::Max { window } => {
                // Wait while more than `window` publishes are not yet delivered everywhere.
                let mut waited_since = Instant::now();
                let mut seen = shared.d.delivered_total.load(Ordering::Relaxed);
                loop {
                    let delivered = shared.d.delivered_total.load(Ordering::Relaxed) + forgiven;
                    let allowed = (delivered / subscribers) + window as u64;
                    if out.sent < allowed || shared.d.now_us() >= window_end {
                        break;
                    }
                    let _ =
                        tokio::time::timeout(Duration::from_millis(5), shared.progress.notified())
                            .await;
                    let d = shared.d.delivered_total.load(Ordering::Relaxed);
                    if d != seen {
                        seen = d;
                        waited_since = Instant::now();
                    } else if waited_since.elapsed() > STALL_AFTER {
                        // Deliveries went missing (dropped or lost): stop waiting for them.
                        out.stalls += 1;
                        forgiven = ((out.sent + 1).saturating_sub(window as u64) * subscribers)
                            .saturating_sub(d);
                        waited_since = Instant::now();
                    }
                }
            }
            Pace::Rate { .. } => {
                let due_at = start_us + (out.sent as f64 * 1e6 / publishes_per_sec) as u64;
                let now = shared.d.now_us();
                if due_at > now {
                    let until = tokio::time::Instant::from_std(
                        shared.d.epoch + Duration::from_micros(due_at.min(window_end)),
                    );
                    tokio::time::sleep_until(until).await;
                    continue;
                }
            }
        }
        if shared.d.now_us() >= window_end {
            break;
        }
        // Closed only by this function, never: acquiring cannot fail.
        let permit = unacked
            .acquire()
            .await
            .map_err(|_| anyhow!("ack window closed"))?;
        permit.forget();
        let sent_at = shared.d.now_us();
        match plan.system {
            System::Firetower | System::NodeWs => {
                publish_text(&mut text, &plan.topic, sent_at, out.sent + 1, plan.payload)
            }
            System::Nats | System::Redis => {
                peer_data(&mut data, sent_at, out.sent + 1, plan.payload);
                plan.system
                    .publish_frame(&mut text, &plan.topic, &data, out.sent + 1);
            }
        }
        writer
            .send(&text)
            .await
            .context("publisher connection failed")?;
        out.sent += 1;
        if sent_at >= window_start && sent_at < window_end {
            out.in_window += 1;
        }
    }
    // Wait (bounded) for the outstanding acks.
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while acked.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed) < out.sent
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acks.abort();
    out.acked = acked.load(Ordering::Relaxed);
    out.errors = errors.load(Ordering::Relaxed);
    Ok(out)
}

/// `{"op":"publish","topic":T,"data":{"ft_ts":µs,"pad":"xxx"},"id":N}` with `data` exactly
/// `payload` bytes long (or as short as it can be).
pub(super) fn publish_text(out: &mut Vec<u8>, topic: &str, sent_us: u64, id: u64, payload: usize) {
    use std::io::Write;
    out.clear();
    let head = format!("{{\"ft_ts\":{sent_us},\"pad\":\"");
    let pad = payload.saturating_sub(head.len() + 2);
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "{{\"op\":\"publish\",\"topic\":\"{topic}\",\"data\":{head}"
    );
    out.resize(out.len() + pad, b'x');
    let _ = write!(out, "\"}},\"id\":{id}}}");
}

/// The published value for the peers without sequence numbers of their own:
/// `{"ft_ts":µs,"ft_seq":N,"pad":"xxx"}`, exactly `payload` bytes long (or as short as it can
/// be), so every system carries the same number of payload bytes.
pub(super) fn peer_data(out: &mut Vec<u8>, sent_us: u64, seq: u64, payload: usize) {
    use std::io::Write;
    out.clear();
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{{\"ft_ts\":{sent_us},\"ft_seq\":{seq},\"pad\":\"");
    let pad = payload.saturating_sub(out.len() + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// Connection failures while opening many.
#[derive(Debug, Default)]
pub(super) struct ConnectErrors {
    pub(super) count: usize,
    pub(super) first: Option<String>,
    pub(super) retries: u64,
}

/// What the connections opened by [`open_connections`] subscribe to.
#[derive(Debug, Clone, Copy)]
pub(super) enum Topics<'a> {
    /// Nothing.
    None,
    /// All the same topic.
    One(&'a str),
    /// Connection `g` to `PREFIX.g`.
    Numbered(&'a str),
}

impl<'a> Topics<'a> {
    fn of(self, g: usize) -> Option<std::borrow::Cow<'a, str>> {
        match self {
            Topics::None => None,
            Topics::One(t) => Some(std::borrow::Cow::Borrowed(t)),
            Topics::Numbered(prefix) => Some(std::borrow::Cow::Owned(numbered_topic(prefix, g))),
        }
    }
}

/// The topic of connection `g` with [`Topics::Numbered`].
pub(super) fn numbered_topic(prefix: &str, g: usize) -> String {
    format!("{prefix}.{g}")
}

/// Open `count` connections numbered from `offset`; connection `g` goes to
/// `urls[g % urls.len()]` from `source_ips[g % source_ips.len()]`, and subscribes as `topics`
/// says. Returns the connections with their url index and number `g`.
pub(super) async fn open_connections(
    system: System,
    urls: &[WsUrl],
    count: usize,
    offset: usize,
    source_ips: &[Ipv4Addr],
    topics: Topics<'_>,
    concurrency: usize,
) -> (Vec<(usize, usize, PeerConn)>, ConnectErrors) {
    let retries = AtomicU64::new(0);
    let retries = &retries;
    let results: Vec<(usize, usize, anyhow::Result<PeerConn>)> =
        futures::stream::iter(offset..offset + count)
            .map(|g| async move {
                let url_index = g % urls.len();
                let source = (!source_ips.is_empty()).then(|| source_ips[g % source_ips.len()]);
                let topic = topics.of(g);
                let mut attempt = 0;
                let conn = loop {
                    match connect_and_subscribe(system, &urls[url_index], source, topic.as_deref())
                        .await
                    {
                        Err(_) if attempt < CONNECT_RETRIES => {
                            // An overloaded gateway times a handshake out; a real client retries
                            // after a pause, and so do we (counted).
                            attempt += 1;
                            retries.fetch_add(1, Ordering::Relaxed);
                            let pause =
                                Duration::from_millis(100 + u64::from(rand::random::<u16>() % 900));
                            tokio::time::sleep(pause).await;
                        }
                        other => break other,
                    }
                };
                (url_index, g, conn)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    let mut conns = Vec::with_capacity(count);
    let mut errors = ConnectErrors {
        retries: retries.load(Ordering::Relaxed),
        ..ConnectErrors::default()
    };
    for (i, g, r) in results {
        match r {
            Ok(c) => conns.push((i, g, c)),
            Err(e) => {
                errors.count += 1;
                errors.first.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    (conns, errors)
}

/// Connect (upgrade, greet), and subscribe to `topic` when given (waiting for the ack).
async fn connect_and_subscribe(
    system: System,
    url: &WsUrl,
    source: Option<Ipv4Addr>,
    topic: Option<&str>,
) -> anyhow::Result<PeerConn> {
    let mut conn = PeerConn::connect(system, url, source, false).await?;
    if let Some(topic) = topic {
        conn.subscribe(topic).await?;
    }
    conn.release_buffer();
    Ok(conn)
}

/// File descriptors this process may open (`ulimit -n`, soft).
fn fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(1024)
}

pub(super) fn check_fd_budget(needed: usize) -> anyhow::Result<()> {
    let limit = fd_limit();
    if needed + FD_MARGIN > limit {
        bail!(
            "{needed} connections need about {} file descriptors but this process may open {limit} \
             (ulimit -n); raise the limit or use fewer connections",
            needed + FD_MARGIN
        );
    }
    Ok(())
}

/// An idle-connections run.
#[derive(Debug, Clone)]
pub(super) struct IdlePlan {
    /// The system driven.
    pub system: System,
    /// Gateways, connections spread round robin.
    pub urls: Vec<WsUrl>,
    /// Connections in total.
    pub connections: usize,
    /// Gateway processes, in the order of `urls` (or any order for totals only).
    pub server_pids: Vec<u32>,
    /// Seconds to hold the connections after they are all open.
    pub hold: Duration,
    /// Subscribe every connection to this topic.
    pub topic: Option<String>,
    /// Connections per worker process (0: as many as `ulimit -n` allows).
    pub per_worker: usize,
    /// Handshakes in flight per worker.
    pub connect_concurrency: usize,
}

/// One gateway's memory over an idle run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct IdleServer {
    /// Process id.
    pub pid: u32,
    /// The gateway's URL when pids were given in URL order.
    pub url: Option<String>,
    /// Connections held to it (when known).
    pub connections: Option<u64>,
    /// RSS before connecting, KiB.
    pub rss_before_kib: u64,
    /// RSS at the end of the hold, KiB.
    pub rss_after_kib: u64,
    /// Resident bytes added per connection.
    pub bytes_per_connection: Option<f64>,
}

/// What an idle run measured.
#[derive(Debug, Clone, Serialize)]
pub(super) struct IdleReport {
    /// `idle`.
    pub scenario: &'static str,
    /// The system driven.
    pub system: System,
    /// Connections asked for.
    pub connections_requested: usize,
    /// Connections open at the end of the hold.
    pub connections: u64,
    /// Connections that failed to open.
    pub failed: u64,
    /// First failure, if any.
    pub first_error: Option<String>,
    /// Connection attempts retried after a failed handshake.
    pub connect_retries: u64,
    /// Connections the gateways closed during the hold.
    pub closed_by_server: u64,
    /// Worker processes used.
    pub workers: usize,
    /// Seconds to open every connection.
    pub connect_seconds: f64,
    /// Seconds held.
    pub hold_seconds: f64,
    /// Whether each connection subscribed to a topic.
    pub subscribed: bool,
    /// Per gateway process.
    pub servers: Vec<IdleServer>,
    /// RSS added over all gateway processes, KiB.
    pub rss_delta_kib: i64,
    /// RSS added per connection over all gateway processes, bytes.
    pub bytes_per_connection: f64,
    /// The machine's 1-minute load average at the end of the hold.
    pub load_average: Option<f64>,
}

/// What a worker says on stdout once its connections are open (one JSON line), and again
/// when it stops.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct WorkerStatus {
    /// Connections open, per URL index.
    pub opened_per_url: Vec<u64>,
    /// Connections that failed to open.
    pub failed: u64,
    /// First failure.
    pub first_error: Option<String>,
    /// Connection attempts retried.
    pub retries: u64,
    /// Connections the gateway closed so far.
    pub closed_by_server: u64,
}

/// Run the idle scenario: spawn workers, measure the gateways' RSS, stop the workers.
pub(super) async fn idle(plan: IdlePlan, worker_args: WorkerArgs) -> anyhow::Result<IdleReport> {
    let per_worker = if plan.per_worker == 0 {
        fd_limit().saturating_sub(FD_MARGIN).max(1)
    } else {
        plan.per_worker
    };
    let workers = plan.connections.div_ceil(per_worker).max(1);
    let before = procstat::sample_all(&plan.server_pids)?;
    let exe = std::env::current_exe().context("cannot find this executable to start workers")?;
    let started = Instant::now();
    let mut children = Vec::with_capacity(workers);
    let mut offset = 0;
    for w in 0..workers {
        // Even shares; each is at most `per_worker` because `workers` was rounded up.
        let count = plan.connections / workers + usize::from(w < plan.connections % workers);
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(["bench", "idle", "--worker"])
            .args(["--system", plan.system.name()])
            .args(["--url", &worker_args.urls])
            .args(["--connections", &count.to_string()])
            .args(["--offset", &offset.to_string()])
            .args([
                "--connect-concurrency",
                &plan.connect_concurrency.to_string(),
            ])
            .args([
                "--max-lifetime",
                &(plan.hold.as_secs() + IDLE_CONNECT_TIMEOUT.as_secs() + 60).to_string(),
            ]);
        if let Some(ca) = &worker_args.ca {
            cmd.arg("--ca").arg(ca);
        }
        if let Some(ips) = &worker_args.source_ips {
            cmd.args(["--source-ips", ips]);
        }
        if let Some(topic) = &plan.topic {
            cmd.args(["--subscribe", "--topic", topic]);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("cannot start an idle worker")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("worker stdout missing"))?;
        children.push((child, BufReader::new(stdout).lines()));
        offset += count;
    }
    let mut ready = Vec::with_capacity(workers);
    for (_, lines) in &mut children {
        let line = tokio::time::timeout(IDLE_CONNECT_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| {
                anyhow!("an idle worker did not finish connecting within {IDLE_CONNECT_TIMEOUT:?}")
            })??
            .ok_or_else(|| {
                anyhow!("an idle worker exited before connecting (see its errors above)")
            })?;
        ready.push(serde_json::from_str::<WorkerStatus>(&line).context("bad worker status line")?);
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(plan.hold).await;
    let after = procstat::sample_all(&plan.server_pids)?;
    // Stop the workers: closing stdin is their signal; each answers with its final status.
    let mut finals = Vec::with_capacity(workers);
    for (mut child, mut lines) in children {
        drop(child.stdin.take());
        let last = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
        if let Ok(Ok(Some(line))) = last {
            if let Ok(s) = serde_json::from_str::<WorkerStatus>(&line) {
                finals.push(s);
            }
        }
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    let mut per_url = vec![0u64; plan.urls.len()];
    let mut failed = 0;
    let mut first_error = None;
    for s in &ready {
        for (i, n) in s.opened_per_url.iter().enumerate() {
            if let Some(slot) = per_url.get_mut(i) {
                *slot += n;
            }
        }
        failed += s.failed;
        if first_error.is_none() {
            first_error.clone_from(&s.first_error);
        }
    }
    let opened: u64 = per_url.iter().sum();
    let closed_by_server: u64 = finals.iter().map(|s| s.closed_by_server).sum();
    let by_url = plan.server_pids.len() == plan.urls.len();
    let servers: Vec<IdleServer> = before
        .iter()
        .zip(&after)
        .enumerate()
        .map(|(i, (b, a))| {
            let connections = by_url.then(|| per_url[i]);
            IdleServer {
                pid: b.pid,
                url: by_url.then(|| plan.system.show_url(&plan.urls[i])),
                connections,
                rss_before_kib: b.rss_kib,
                rss_after_kib: a.rss_kib,
                bytes_per_connection: connections
                    .filter(|n| *n > 0)
                    .map(|n| (a.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / n as f64),
            }
        })
        .collect();
    let rss_delta_kib: i64 = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.rss_kib as i64 - b.rss_kib as i64)
        .sum();
    Ok(IdleReport {
        scenario: "idle",
        system: plan.system,
        connections_requested: plan.connections,
        connections: opened.saturating_sub(closed_by_server),
        failed,
        first_error,
        connect_retries: ready.iter().map(|s| s.retries).sum(),
        closed_by_server,
        workers,
        connect_seconds,
        hold_seconds: plan.hold.as_secs_f64(),
        subscribed: plan.topic.is_some(),
        servers,
        rss_delta_kib,
        bytes_per_connection: if opened > 0 {
            rss_delta_kib as f64 * 1024.0 / opened as f64
        } else {
            0.0
        },
        load_average: procstat::load_average(),
    })
}

/// The command-line values a coordinator passes on to its workers verbatim.
#[derive(Debug, Clone)]
pub(super) struct WorkerArgs {
    /// `--url` values joined with commas.
    pub urls: String,
    /// `--source-ips` as given.
    pub source_ips: Option<String>,
    /// `--ca` as given (for `wss://` URLs).
    pub ca: Option<std::path::PathBuf>,
}

/// A worker plan (`bench idle --worker`).
#[derive(Debug, Clone)]
pub(super) struct WorkerPlan {
    /// The system driven.
    pub system: System,
    /// Gateways.
    pub urls: Vec<WsUrl>,
    /// Connections this worker opens.
    pub connections: usize,
    /// Global number of its first connection (for the round robin).
    pub offset: usize,
    /// Source addresses.
    pub source_ips: Vec<Ipv4Addr>,
    /// Topic to subscribe to.
    pub topic: Option<String>,
    /// Handshakes in flight.
    pub connect_concurrency: usize,
    /// Exit after this long even if stdin stays open.
    pub max_lifetime: Duration,
}

/// The worker: open, report, hold until stdin closes (or the lifetime ends), report, exit.
pub(super) async fn idle_worker(plan: WorkerPlan) -> anyhow::Result<()> {
    check_fd_budget(plan.connections)?;
    let (conns, errors) = open_connections(
        plan.system,
        &plan.urls,
        plan.connections,
        plan.offset,
        &plan.source_ips,
        plan.topic.as_deref().map_or(Topics::None, Topics::One),
        plan.connect_concurrency,
    )
    .await;
    let mut opened_per_url = vec![0u64; plan.urls.len()];
    let closed = Arc::new(AtomicU64::new(0));
    let mut holders = Vec::with_capacity(conns.len());
    for (url_index, _, mut conn) in conns {
        opened_per_url[url_index] += 1;
        let closed = closed.clone();
        holders.push(tokio::spawn(async move {
            // Answers pings; ends when the gateway closes the connection.
            while let Ok(true) = conn.read_batch(|_| {}).await {
                conn.release_buffer();
            }
            closed.fetch_add(1, Ordering::Relaxed);
        }));
    }
    let status = |closed_by_server| WorkerStatus {
        opened_per_url: opened_per_url.clone(),
        failed: errors.count as u64,
        first_error: errors.first.clone(),
        retries: errors.retries,
        closed_by_server,
    };
    println!("{}", serde_json::to_string(&status(0))?);
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(plan.max_lifetime, async {
        while let Ok(n) = stdin.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let closed_by_server = closed.load(Ordering::Relaxed);
    for h in &holders {
        h.abort();
    }
    println!("{}", serde_json::to_string(&status(closed_by_server))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_text_has_the_requested_data_size() {
        let mut out = Vec::new();
        publish_text(&mut out, "bench.t", 123_456, 7, 100);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["op"], "publish");
        assert_eq!(v["id"], 7);
        assert_eq!(v["data"]["ft_ts"], 123_456);
        assert_eq!(serde_json::to_string(&v["data"]).unwrap().len(), 100);
        publish_text(&mut out, "t", 1, 1, 0);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"]["pad"], "");
    }

    #[test]
    fn peer_data_has_the_requested_size() {
        let mut out = Vec::new();
        peer_data(&mut out, 123_456, 9, 100);
        assert_eq!(out.len(), 100);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["ft_ts"], 123_456);
        assert_eq!(v["ft_seq"], 9);
        assert_eq!(number_after(&out, b"\"ft_seq\":"), Some(9));
        peer_data(&mut out, 1, 1, 0);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["pad"], "");
    }
}
