//! The parts behind the operator controls (`cluster ban|kick|stats|connections`) that hold
//! state on one manager, without I/O: the encoded ban list every session sends, the
//! gateways' reported figures with the rates derived from them, the commit rate of each
//! group, and the connection queries waiting for answers.
//!
//! ```text
//!   group 0 table (bans, version) ─▶ BanFrames (encoded once, in chunks) ─▶ every session
//!   Heartbeat{stats} ─▶ StatsBook (last reports per live gateway) ─▶ Stats: rates per second
//!   applied index every second ─▶ CommitRates ─▶ Stats: commits per second per group
//!   Connections RPC ─▶ QueryBook.start ─▶ ConnectionsQuery on every session
//!                      QueryBook.answer ◀─ Connections frame from a gateway
//! ```
//!
//! Rates come from the gateways' own counters and times (`uptime_ms`, on the gateway's
//! monotonic clock), so neither the heartbeat schedule nor clock differences skew them.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use firetower_link::{encode_frame, MAX_LINK_FRAME_BYTES};
use firetower_proto::link::{
    session_frame, Bans, ConnectionEntry, GatewayStats, Kick, SessionFrame,
};
use firetower_proto::{Ban, GatewayId, GroupId};
use firetower_store::KickRecord;
use tokio::sync::mpsc;

/// Room left in a ban chunk for its own fields (version, offset, total, tags).
const CHUNK_SLACK: usize = 64;
/// Reports kept per gateway.
const REPORTS_KEPT: usize = 16;
/// Rates are taken over about this span of a gateway's reports (the newest and the oldest
/// within it): long enough to smooth a report's jitter, short enough to follow a change.
pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(3);
/// Samples of applied indexes kept per group (one a second).
const COMMIT_SAMPLES: usize = 8;
/// Connection queries waiting at once on one manager.
pub(crate) const MAX_PENDING_QUERIES: usize = 64;

/// The ban list of one version, encoded as the session frames that carry it.
#[derive(Debug, Clone)]
pub(crate) struct BanFrames {
    /// The version of the list (group 0's count of ban changes).
    pub version: u64,
    /// Length-prefixed `SessionFrame`s with `Bans` chunks, in order; at least one.
    pub frames: Vec<Bytes>,
    /// Bans in the list.
    pub count: usize,
}

impl BanFrames {
    /// Encode `bans` of `version` into frames within the link's frame limit.
    pub(crate) fn encode(version: u64, bans: &[Ban]) -> BanFrames {
        let texts: Vec<String> = bans
            .iter()
            .filter_map(|b| serde_json::to_string(b).ok())
            .collect();
        let total = u32::try_from(texts.len()).unwrap_or(u32::MAX);
        let budget = MAX_LINK_FRAME_BYTES - CHUNK_SLACK;
        let mut frames = Vec::new();
        let mut chunk: Vec<String> = Vec::new();
        let mut used = 0usize;
        let mut offset = 0u32;
        let flush = |chunk: &mut Vec<String>, offset: &mut u32, frames: &mut Vec<Bytes>| {
            let n = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            let frame = SessionFrame {
                frame: Some(session_frame::Frame::Bans(Bans {
                    version,
                    offset: *offset,
                    total,
                    bans: std::mem::take(chunk),
                })),
            };
            frames.push(Bytes::from(encode_frame(&frame)));
            *offset = offset.saturating_add(n);
        };
        for text in texts {
            // A string field: tag, length varint (at most 3 bytes here), the text.
            let len = text.len() + 4;
            if used + len > budget && !chunk.is_empty() {
                flush(&mut chunk, &mut offset, &mut frames);
                used = 0;
            }
            used += len;
            chunk.push(text);
        }
        if !chunk.is_empty() || frames.is_empty() {
            flush(&mut chunk, &mut offset, &mut frames);
        }
        BanFrames {
            version,
            frames,
            count: bans.len(),
        }
    }
}

/// The session frame of one kick.
pub(crate) fn kick_frame(kick: &KickRecord) -> session_frame::Frame {
    session_frame::Frame::Kick(Kick {
        seq: kick.seq,
        user: kick.user.clone(),
        at_ms: kick.at_ms,
    })
}

/// What one gateway reported, as the manager keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GatewayFigures {
    /// Open client connections.
    pub connections: u64,
    /// (connection, topic) pairs.
    pub subscriptions: u64,
    /// Distinct topics.
    pub topics: u64,
    /// Client frames received per second.
    pub messages_in_per_s: f64,
    /// Messages delivered to clients per second.
    pub messages_out_per_s: f64,
    /// Messages dropped for slow clients since the gateway started.
    pub dropped_total: u64,
}

/// The latest reports of each gateway with a session here.
#[derive(Debug, Default)]
pub(crate) struct StatsBook {
    reports: HashMap<GatewayId, VecDeque<GatewayStats>>,
}

impl StatsBook {
    /// A report from `gateway`'s heartbeat. A report not newer than the last (the same
    /// figures again) is ignored; one older than it means the gateway restarted.
    pub(crate) fn record(&mut self, gateway: GatewayId, stats: GatewayStats) {
        let reports = self.reports.entry(gateway).or_default();
        match reports.back() {
            Some(last) if stats.uptime_ms == last.uptime_ms => return,
            Some(last) if stats.uptime_ms < last.uptime_ms => reports.clear(),
            _ => {}
        }
        if reports.len() == REPORTS_KEPT {
            reports.pop_front();
        }
        reports.push_back(stats);
    }

    /// Forget a gateway (its session here ended).
    pub(crate) fn forget(&mut self, gateway: GatewayId) {
        self.reports.remove(&gateway);
    }

    /// The figures of every gateway with a report, by id.
    pub(crate) fn figures(&self) -> BTreeMap<GatewayId, GatewayFigures> {
        self.reports
            .iter()
            .filter_map(|(g, r)| Some((*g, figures_of(r)?)))
            .collect()
    }
}

/// The latest report with rates over [`RATE_WINDOW`] (0 with a single report).
fn figures_of(reports: &VecDeque<GatewayStats>) -> Option<GatewayFigures> {
    let newest = reports.back()?;
    let window = RATE_WINDOW.as_millis() as u64;
    let oldest = reports
        .iter()
        .find(|r| newest.uptime_ms.saturating_sub(r.uptime_ms) <= window && r != &newest)
        .or_else(|| reports.iter().rev().nth(1));
    let rate = |pick: fn(&GatewayStats) -> u64| match oldest {
        Some(old) if newest.uptime_ms > old.uptime_ms => {
            let span = (newest.uptime_ms - old.uptime_ms) as f64 / 1000.0;
            pick(newest).saturating_sub(pick(old)) as f64 / span
        }
        _ => 0.0,
    };
    Some(GatewayFigures {
        connections: newest.connections,
        subscriptions: newest.subscriptions,
        topics: newest.topics,
        messages_in_per_s: rate(|s| s.messages_in_total),
        messages_out_per_s: rate(|s| s.messages_out_total),
        dropped_total: newest.dropped_total,
    })
}

/// Applied indexes of each group, sampled about once a second, for commits per second.
#[derive(Debug, Default)]
pub(crate) struct CommitRates {
    samples: HashMap<GroupId, VecDeque<(Instant, u64)>>,
}

impl CommitRates {
    /// The applied index of `group` at `now`.
    pub(crate) fn sample(&mut self, group: GroupId, now: Instant, applied: u64) {
        let samples = self.samples.entry(group).or_default();
        if samples.back().is_some_and(|(_, a)| applied < *a) {
            // A restore from a snapshot does not go backwards; a restarted group may.
            samples.clear();
        }
        if samples.len() == COMMIT_SAMPLES {
            samples.pop_front();
        }
        samples.push_back((now, applied));
    }

    /// Entries applied per second in `group` over about the last [`RATE_WINDOW`].
    pub(crate) fn rate(&self, group: GroupId) -> f64 {
        let Some(samples) = self.samples.get(&group) else {
            return 0.0;
        };
        let Some(&(t1, a1)) = samples.back() else {
            return 0.0;
        };
        let old = samples
            .iter()
            .find(|(t, _)| t1.saturating_duration_since(*t) <= RATE_WINDOW && *t < t1)
            .or_else(|| samples.iter().rev().nth(1));
        match old {
            Some(&(t0, a0)) if t1 > t0 => a1.saturating_sub(a0) as f64 / (t1 - t0).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// One gateway's answer to a connections query.
#[derive(Debug)]
pub(crate) struct QueryAnswer {
    /// Who answered.
    pub gateway: GatewayId,
    /// The user's connections there.
    pub connections: Vec<ConnectionEntry>,
    /// Some were left out to fit a frame.
    pub truncated: bool,
}

#[derive(Debug)]
struct PendingQuery {
    asked: HashSet<GatewayId>,
    answered: HashSet<GatewayId>,
    answers: mpsc::Sender<QueryAnswer>,
}

/// Connection queries waiting for the gateways' answers.
#[derive(Debug, Default)]
pub(crate) struct QueryBook {
    next: u64,
    pending: HashMap<u64, PendingQuery>,
}

impl QueryBook {
    /// A new query asked of `asked`: its id and where the answers come; `None` when
    /// [`MAX_PENDING_QUERIES`] are waiting already.
    pub(crate) fn start(
        &mut self,
        asked: HashSet<GatewayId>,
    ) -> Option<(u64, mpsc::Receiver<QueryAnswer>)> {
        if self.pending.len() >= MAX_PENDING_QUERIES {
            return None;
        }
        self.next += 1;
        let (tx, rx) = mpsc::channel(asked.len().max(1));
        self.pending.insert(
            self.next,
            PendingQuery {
                asked,
                answered: HashSet::new(),
                answers: tx,
            },
        );
        Some((self.next, rx))
    }

    /// An answer from `gateway`'s session. Answers to unknown queries, from gateways not
    /// asked, or repeated, are dropped (false).
    pub(crate) fn answer(&mut self, query: u64, answer: QueryAnswer) -> bool {
        let Some(p) = self.pending.get_mut(&query) else {
            return false;
        };
        if !p.asked.contains(&answer.gateway) || !p.answered.insert(answer.gateway) {
            return false;
        }
        // The channel holds one answer per gateway asked: never full.
        p.answers.try_send(answer).is_ok()
    }

    /// The query is over (answered or timed out).
    pub(crate) fn finish(&mut self, query: u64) {
        self.pending.remove(&query);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firetower_link::decode_frame;
    use firetower_proto::BanTarget;

    fn stats(uptime_ms: u64, messages_in_total: u64) -> GatewayStats {
        GatewayStats {
            connections: 3,
            messages_in_total,
            messages_out_total: messages_in_total * 2,
            uptime_ms,
            ..Default::default()
        }
    }

    #[test]
    fn rates_come_from_the_gateways_own_times() {
        let mut book = StatsBook::default();
        let g = GatewayId(7);
        book.record(g, stats(1_000, 0));
        assert_eq!(book.figures()[&g].messages_in_per_s, 0.0);
        book.record(g, stats(2_000, 100));
        // The same report again (a heartbeat before the next report): ignored.
        book.record(g, stats(2_000, 100));
        book.record(g, stats(3_000, 200));
        book.record(g, stats(4_000, 300));
        book.record(g, stats(5_000, 400));
        let f = book.figures()[&g];
        assert_eq!(f.connections, 3);
        // Over the last 3 s: (400 - 100) / 3.
        assert!((f.messages_in_per_s - 100.0).abs() < 1e-9, "{f:?}");
        assert!((f.messages_out_per_s - 200.0).abs() < 1e-9, "{f:?}");
        // A restarted gateway starts over.
        book.record(g, stats(500, 5));
        assert_eq!(book.figures()[&g].messages_in_per_s, 0.0);
        book.forget(g);
        assert!(book.figures().is_empty());
        for i in 0..100 {
            book.record(g, stats(i * 1000, i));
        }
        assert!(book.reports[&g].len() <= REPORTS_KEPT);
    }

    #[test]
    fn commit_rates_follow_the_applied_index() {
        let mut rates = CommitRates::default();
        let t0 = Instant::now();
        let g = GroupId(0);
        assert_eq!(rates.rate(g), 0.0);
        for i in 0..6u64 {
            rates.sample(g, t0 + Duration::from_secs(i), i * 50);
        }
        assert!((rates.rate(g) - 50.0).abs() < 1e-9);
    }

    #[test]
    fn ban_frames_fit_the_link_and_carry_every_ban_in_order() {
        let bans: Vec<Ban> = (1..=5_000)
            .map(|id| Ban {
                id,
                target: BanTarget::User("u".repeat(200)),
                reason: "r".repeat(200),
                created_ms: 1,
                expires_ms: Some(2),
            })
            .collect();
        let encoded = BanFrames::encode(9, &bans);
        assert!(encoded.frames.len() > 1, "a list this long is chunked");
        let mut seen = Vec::new();
        for bytes in &encoded.frames {
            assert!(bytes.len() - 4 <= MAX_LINK_FRAME_BYTES);
            let frame: SessionFrame = decode_frame(bytes).unwrap();
            let Some(session_frame::Frame::Bans(b)) = frame.frame else {
                panic!("not a ban chunk")
            };
            assert_eq!(
                (b.version, b.total, b.offset as usize),
                (9, 5_000, seen.len())
            );
            for text in b.bans {
                seen.push(serde_json::from_str::<Ban>(&text).unwrap());
            }
        }
        assert_eq!(seen, bans);
        let empty = BanFrames::encode(0, &[]);
        assert_eq!(empty.frames.len(), 1);
    }

    #[test]
    fn query_answers_are_taken_once_from_gateways_asked() {
        let mut book = QueryBook::default();
        let asked: HashSet<GatewayId> = [GatewayId(1), GatewayId(2)].into();
        let (id, mut rx) = book.start(asked).unwrap();
        let answer = |g| QueryAnswer {
            gateway: GatewayId(g),
            connections: Vec::new(),
            truncated: false,
        };
        assert!(book.answer(id, answer(1)));
        assert!(!book.answer(id, answer(1)), "repeated");
        assert!(!book.answer(id, answer(3)), "not asked");
        assert!(!book.answer(id + 1, answer(2)), "unknown query");
        assert_eq!(rx.try_recv().unwrap().gateway, GatewayId(1));
        book.finish(id);
        assert!(!book.answer(id, answer(2)), "finished");
        for _ in 0..MAX_PENDING_QUERIES {
            assert!(book.start(HashSet::new()).is_some());
        }
        assert!(book.start(HashSet::new()).is_none());
    }
}
