//! `bench topics`: many small topics. T subscriber connections, each on its own topic
//! (`PREFIX.g`), and P publisher connections; publisher j owns the topics g with g % P == j.
//! Closed loop per topic: each topic has one message in flight, and its publisher publishes
//! the next one when the previous was delivered, so the rate found is what the server
//! sustains for many topics with one subscriber each (routing per message, not fan-out).
//!
//! ```text
//!   publisher j ──publish PREFIX.g──▶ server ──message──▶ subscriber g ──"g delivered"──▶ publisher j
//!   timeline: connect + subscribe │ warmup │ measured window │ acks │ drain
//! ```
//!
//! Memory is bounded by the topic count: a publisher's queue of topics ready to publish holds
//! each of its topics at most once (a topic is queued only when its message in flight was
//! delivered).

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use super::client::WsUrl;
use super::peer::{Event, PeerConn, System};
use super::procstat::{self, ProcUsage};
use super::scenarios::Deliveries;
use super::scenarios::{
    check_fd_budget, numbered_topic, open_connections, peer_data, publish_text, Topics,
};
use super::stats::LatencySummary;

/// Publishes waiting for their ack per publisher connection (the gateway's own limit is 64).
const MAX_UNACKED: usize = 64;
/// Time for the last acks after the window.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// After the last publish, time without progress before the drain gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A many-topics run.
#[derive(Debug, Clone)]
pub(super) struct TopicsPlan {
    /// The system driven.
    pub system: System,
    /// Servers; subscribers and publishers are spread over them round robin.
    pub urls: Vec<WsUrl>,
    /// Topics, one subscriber connection each.
    pub topics: usize,
    /// Publisher connections.
    pub publishers: usize,
    /// Bytes of each published value.
    pub payload: usize,
    /// Publishing before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Source addresses for the subscribers.
    pub source_ips: Vec<Ipv4Addr>,
    /// Server processes to sample.
    pub server_pids: Vec<u32>,
    /// Handshakes in flight while connecting.
    pub connect_concurrency: usize,
    /// Topic `g` is `PREFIX.g`.
    pub prefix: String,
}

/// What a many-topics run measured. Rates are over the measured window.
#[derive(Debug, Clone, Serialize)]
pub(super) struct TopicsReport {
    /// `topics`.
    pub scenario: &'static str,
    /// The system driven.
    pub system: System,
    /// Server addresses.
    pub urls: Vec<String>,
    /// Topics asked for.
    pub topics_requested: usize,
    /// Topics whose subscriber connected and subscribed.
    pub topics: usize,
    /// Subscribers that failed to connect or subscribe.
    pub connect_errors: usize,
    /// First connect error, if any.
    pub first_connect_error: Option<String>,
    /// Connection attempts retried.
    pub connect_retries: u64,
    /// Seconds spent connecting and subscribing.
    pub setup_seconds: f64,
    /// Publisher connections.
    pub publishers: usize,
    /// Bytes of each published value.
    pub payload_bytes: usize,
    /// Length of the measured window, seconds.
    pub seconds: f64,
    /// Publishes sent in the window.
    pub publishes: u64,
    /// Publishes per second in the window.
    pub publishes_per_sec: f64,
    /// Deliveries received in the window.
    pub deliveries: u64,
    /// Deliveries per second in the window.
    pub deliveries_per_sec: f64,
    /// Publish → deliver latency of deliveries received in the window.
    pub latency: LatencySummary,
    /// Publishes sent over the whole run.
    pub published_total: u64,
    /// Publishes acknowledged over the whole run.
    pub acked_total: u64,
    /// Publishes refused (or unanswered at the end).
    pub publish_errors: u64,
    /// The first refusal, as the server worded it.
    pub first_publish_error: Option<String>,
    /// Deliveries received over the whole run.
    pub delivered_total: u64,
    /// Acknowledged publishes never delivered.
    pub missing: u64,
    /// Topics whose last message was never delivered (their loop stopped).
    pub stalled_topics: u64,
    /// Sequence numbers skipped, summed over subscribers.
    pub seq_gaps: u64,
    /// Deliveries at or below a sequence number already seen.
    pub out_of_order: u64,
    /// Subscriber connections the server closed during the run.
    pub closed_by_server: u64,
    /// The server processes over the window.
    pub servers: Vec<ProcUsage>,
    /// The load generator over the window.
    pub loadgen: Option<ProcUsage>,
    /// The machine's 1-minute load average at the end of the window.
    pub load_average: Option<f64>,
}

#[derive(Debug, Default)]
struct Published {
    sent: u64,
    in_window: u64,
    acked: u64,
    errors: u64,
    first_error: Option<String>,
    stalled: u64,
}

/// Run the many-topics scenario.
pub(super) async fn topics(plan: TopicsPlan) -> anyhow::Result<TopicsReport> {
    if plan.topics == 0 || plan.publishers == 0 {
        bail!("--topics and --publishers must be at least 1");
    }
    check_fd_budget(plan.topics + plan.publishers + 16)?;
    procstat::sample_all(&plan.server_pids)?;
    let epoch = Instant::now();

    let setup = Instant::now();
    let (conns, errors) = open_connections(
        plan.system,
        &plan.urls,
        plan.topics,
        0,
        &plan.source_ips,
        Topics::Numbered(&plan.prefix),
        plan.connect_concurrency,
    )
    .await;
    let setup_seconds = setup.elapsed().as_secs_f64();
    if conns.is_empty() {
        bail!(
            "no subscriber could connect: {}",
            errors.first.unwrap_or_default()
        );
    }
    let mut publisher_conns = Vec::with_capacity(plan.publishers);
    for j in 0..plan.publishers {
        let url = &plan.urls[j % plan.urls.len()];
        publisher_conns.push(
            PeerConn::connect(plan.system, url, None, true)
                .await
                .with_context(|| format!("publisher {j} cannot connect"))?,
        );
    }

    let start = epoch.elapsed().as_micros() as u64;
    let window_start_us = start + plan.warmup.as_micros() as u64;
    let window_end_us = window_start_us + plan.duration.as_micros() as u64;
    let shared = Arc::new(Deliveries::new(epoch));
    shared.set_window(window_start_us, window_end_us);

    // One notification channel per publisher; see the module doc for its bound.
    let mut senders = Vec::with_capacity(plan.publishers);
    let mut receivers = Vec::with_capacity(plan.publishers);
    for _ in 0..plan.publishers {
        let (tx, rx) = mpsc::unbounded_channel::<usize>();
        senders.push(tx);
        receivers.push(rx);
    }
    let mut owned: Vec<Vec<usize>> = vec![Vec::new(); plan.publishers];
    let subscribed = conns.len();
    let mut tasks = Vec::with_capacity(subscribed);
    for (_, g, conn) in conns {
        owned[g % plan.publishers].push(g);
        tasks.push(tokio::spawn(subscriber(
            g,
            conn,
            shared.clone(),
            senders[g % plan.publishers].clone(),
        )));
    }
    drop(senders);

    let mut publishers = Vec::with_capacity(plan.publishers);
    for ((conn, rx), mine) in publisher_conns.into_iter().zip(receivers).zip(owned) {
        publishers.push(tokio::spawn(publisher(
            conn,
            rx,
            mine,
            shared.clone(),
            plan.clone(),
        )));
    }

    let at = |us: u64| tokio::time::Instant::from_std(epoch + Duration::from_micros(us));
    tokio::time::sleep_until(at(window_start_us)).await;
    let self_pid = std::process::id();
    let servers_before = procstat::sample_all(&plan.server_pids)?;
    let self_before = procstat::sample(self_pid).ok();
    tokio::time::sleep_until(at(window_end_us)).await;
    let servers_after = procstat::sample_all(&plan.server_pids)?;
    let self_after = procstat::sample(self_pid).ok();
    let load_average = procstat::load_average();
    let seconds = Duration::from_micros(window_end_us - window_start_us).as_secs_f64();

    let mut published = Published::default();
    for p in publishers {
        let r = p.await.map_err(|e| anyhow!("publisher task: {e}"))??;
        published.sent += r.sent;
        published.in_window += r.in_window;
        published.acked += r.acked;
        published.errors += r.errors;
        if published.first_error.is_none() {
            published.first_error = r.first_error;
        }
    }
    // Drain: every acknowledged publish has exactly one subscriber.
    let mut last = shared.delivered_total.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let now = shared.delivered_total.load(Ordering::Relaxed);
        if now >= published.acked || last_change.elapsed() > DRAIN_TIMEOUT {
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
    let delivered_total = shared.delivered_total.load(Ordering::Relaxed);
    // Each topic has at most one message in flight: what is still missing is that many topics.
    published.stalled = published.sent.saturating_sub(delivered_total);
    let deliveries = shared.delivered_in_window.load(Ordering::Relaxed);
    Ok(TopicsReport {
        scenario: "topics",
        system: plan.system,
        urls: plan.urls.iter().map(|u| plan.system.show_url(u)).collect(),
        topics_requested: plan.topics,
        topics: subscribed,
        connect_errors: errors.count,
        first_connect_error: errors.first,
        connect_retries: errors.retries,
        setup_seconds,
        publishers: plan.publishers,
        payload_bytes: plan.payload,
        seconds,
        publishes: published.in_window,
        publishes_per_sec: published.in_window as f64 / seconds,
        deliveries,
        deliveries_per_sec: deliveries as f64 / seconds,
        latency: LatencySummary::of(&shared.latencies.merged()),
        published_total: published.sent,
        acked_total: published.acked,
        publish_errors: published.errors
            + published
                .sent
                .saturating_sub(published.acked + published.errors),
        first_publish_error: published.first_error,
        delivered_total,
        missing: published.acked.saturating_sub(delivered_total),
        stalled_topics: published.stalled,
        seq_gaps: shared.seq_gaps.load(Ordering::Relaxed),
        out_of_order: shared.out_of_order.load(Ordering::Relaxed),
        closed_by_server: shared.closed.load(Ordering::Relaxed),
        servers: procstat::usage(&servers_before, &servers_after),
        loadgen: match (self_before, self_after) {
            (Some(b), Some(a)) => procstat::usage(&[b], &[a]).pop(),
            _ => None,
        },
        load_average,
    })
}

/// One topic's subscriber: count, check order, record latency, tell the topic's publisher.
async fn subscriber(
    g: usize,
    conn: PeerConn,
    shared: Arc<Deliveries>,
    delivered: mpsc::UnboundedSender<usize>,
) {
    // The publisher ignores a notification for a topic with nothing in flight, so duplicates
    // cannot widen the loop.
    shared
        .subscribe(g, conn, || {
            let _ = delivered.send(g);
        })
        .await;
}

/// One publisher: publish to each of its topics, then to each again as soon as its previous
/// message was delivered, until the window ends; then wait for the last acks.
async fn publisher(
    conn: PeerConn,
    mut delivered: mpsc::UnboundedReceiver<usize>,
    mine: Vec<usize>,
    shared: Arc<Deliveries>,
    plan: TopicsPlan,
) -> anyhow::Result<Published> {
    let p = plan.publishers;
    let (mut reader, mut writer) = conn.into_split();
    let unacked = Arc::new(Semaphore::new(MAX_UNACKED));
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let acks = {
        let (unacked, acked, errors) = (unacked.clone(), acked.clone(), errors.clone());
        let first_error = first_error.clone();
        tokio::spawn(async move {
            loop {
                let mut done = 0usize;
                let open = reader
                    .read_batch(|e| match e {
                        Event::Ack => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            done += 1;
                        }
                        Event::Error(t) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            done += 1;
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert_with(|| {
                                    String::from_utf8_lossy(&t[..t.len().min(300)]).into_owned()
                                });
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

    // Topic g of this publisher is slot g / p.
    let slots = mine.iter().map(|g| g / p + 1).max().unwrap_or(0);
    let mut names: Vec<String> = vec![String::new(); slots];
    let mut seq = vec![0u64; slots];
    let mut in_flight = vec![false; slots];
    for &g in &mine {
        names[g / p] = numbered_topic(&plan.prefix, g);
    }
    let mut ready: VecDeque<usize> = mine.iter().copied().collect();
    let mut out = Published::default();
    let mut text = Vec::with_capacity(plan.payload + 256);
    let mut data = Vec::with_capacity(plan.payload + 64);
    let end =
        tokio::time::Instant::from_std(shared.epoch + Duration::from_micros(shared.window_end()));
    loop {
        while let Ok(g) = delivered.try_recv() {
            mark_delivered(g, p, &mut in_flight, &mut ready);
        }
        let g = match ready.pop_front() {
            Some(g) => g,
            None => match tokio::time::timeout_at(end, delivered.recv()).await {
                Ok(Some(g)) => {
                    mark_delivered(g, p, &mut in_flight, &mut ready);
                    continue;
                }
                Ok(None) | Err(_) => break,
            },
        };
        if shared.now_us() >= shared.window_end() {
            break;
        }
        // Closed only by this function, never: acquiring cannot fail.
        let permit = unacked
            .acquire()
            .await
            .map_err(|_| anyhow!("ack window closed"))?;
        permit.forget();
        let slot = g / p;
        seq[slot] += 1;
        let sent_at = shared.now_us();
        match plan.system {
            System::Firetower | System::NodeWs => {
                publish_text(&mut text, &names[slot], sent_at, out.sent + 1, plan.payload)
            }
            System::Nats | System::Redis => {
                peer_data(&mut data, sent_at, seq[slot], plan.payload);
                plan.system
                    .publish_frame(&mut text, &names[slot], &data, out.sent + 1);
            }
        }
        writer
            .send(&text)
            .await
            .context("publisher connection failed")?;
        in_flight[slot] = true;
        out.sent += 1;
        if shared.in_window(sent_at) {
            out.in_window += 1;
        }
    }
    let deadline = Instant::now() + ACK_TIMEOUT;
    while acked.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed) < out.sent
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acks.abort();
    out.acked = acked.load(Ordering::Relaxed);
    out.errors = errors.load(Ordering::Relaxed);
    out.first_error = first_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    if out.first_error.is_none() && out.acked + out.errors < out.sent {
        out.first_error = Some(format!(
            "{} publishes unanswered {ACK_TIMEOUT:?} after the window",
            out.sent - out.acked - out.errors
        ));
    }
    Ok(out)
}

/// Topic `g` was delivered: queue it again if it had a message in flight.
fn mark_delivered(g: usize, p: usize, in_flight: &mut [bool], ready: &mut VecDeque<usize>) {
    if let Some(f) = in_flight.get_mut(g / p) {
        if *f {
            *f = false;
            ready.push_back(g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_queued_once_per_delivery_in_flight() {
        let mut in_flight = vec![true, false];
        let mut ready = VecDeque::new();
        mark_delivered(3, 3, &mut in_flight, &mut ready); // slot 1: nothing in flight
        assert!(ready.is_empty());
        mark_delivered(0, 3, &mut in_flight, &mut ready);
        mark_delivered(0, 3, &mut in_flight, &mut ready); // a duplicate
        assert_eq!(ready, VecDeque::from([0]));
        mark_delivered(99, 3, &mut in_flight, &mut ready); // not ours
        assert_eq!(ready.len(), 1);
    }
}
