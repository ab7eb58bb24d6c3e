//! What the storm worker and the harness say to each other, and the pure reading of it.
//!
//! ```text
//!   harness ── stdin:  StormCommand (one JSON line: {"cmd":"verify","round":k}) ──▶ worker
//!   harness ◀── stdout: StormEvent  (one JSON line each: up, lost, publish, verified) ── worker
//!      └─ storm_progress(events, fault time) ─▶ StormProgress: who is back, how fast
//! ```
//!
//! Everything here is plain data and plain functions: the placement of clients on gateways
//! and topics, the line formats, and the progress of a storm read from the events.

use serde::{Deserialize, Serialize};

use crate::probe::ProbeRecord;

/// Clients by default.
pub const DEFAULT_CLIENTS: usize = 2_000;
/// Topics by default.
pub const DEFAULT_TOPICS: usize = 50;
/// Gateway crashes by default.
pub const DEFAULT_FAULTS: usize = 3;
/// At most this many clients: the worker holds a socket per client, and a process here may
/// open 20,000 files (`ulimit -Hn` cannot be raised).
pub const MAX_CLIENTS: usize = 16_000;
/// At most this many topics (the verifier publishes to each after every storm).
pub const MAX_TOPICS: usize = 1_000;
/// Worker and harness clocks both derive from the wall clock; allow this much disagreement.
const CLOCK_SLACK_MS: f64 = 20.0;

/// The gateway (0-based) of client `client`.
pub fn gateway_of(client: usize, gateways: usize) -> usize {
    client % gateways.max(1)
}

/// The topic (0-based) of client `client`: consecutive clients share a topic across the
/// gateways, so every topic has subscribers on each gateway.
pub fn topic_of(client: usize, gateways: usize, topics: usize) -> usize {
    (client / gateways.max(1)) % topics.max(1)
}

/// The name of topic `t`.
pub fn topic_name(t: usize) -> String {
    format!("storm.{t}")
}

/// What the worker prints, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum StormEvent {
    /// A client is connected and its subscribe is acked.
    Up {
        /// The client.
        client: usize,
        /// Its gateway (1-based, as the host `g1`).
        gateway: usize,
        /// When the ack arrived (ms since t0).
        ms: f64,
        /// When it had noticed the loss of its previous connection (none at the start).
        lost_ms: Option<f64>,
        /// Connection attempts it took (1: the first one worked).
        attempts: u32,
    },
    /// A client's connection ended.
    Lost {
        /// The client.
        client: usize,
        /// Its gateway (1-based).
        gateway: usize,
        /// When (ms since t0).
        ms: f64,
        /// Close code or error, shortened.
        why: String,
    },
    /// One probe publish.
    Publish(ProbeRecord),
    /// The answer to a `verify` command.
    Verified(Verification),
}

/// Commands the harness writes to the worker's stdin, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum StormCommand {
    /// Publish `{"round":round}` to every topic and report who received it.
    Verify {
        /// The round (the fault's number).
        round: u64,
    },
}

/// The post-storm check: one message per topic, and who got the message of their topic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// The round.
    pub round: u64,
    /// When publishing began (ms since t0).
    pub start_ms: f64,
    /// When every topic was published (or given up), ms since t0.
    pub published_ms: f64,
    /// Clients (all of them, on every gateway).
    pub expected: usize,
    /// Clients that received the round's message of their topic.
    pub delivered: usize,
    /// Topics whose publish failed after every attempt.
    pub publish_failed: usize,
    /// The first failed publishes: `topic: error`.
    pub publish_failures: Vec<String>,
    /// The first clients that did not receive it.
    pub missing: Vec<MissingClient>,
}

/// A client that did not receive the post-storm message of its topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MissingClient {
    /// The client.
    pub client: usize,
    /// Its gateway (1-based).
    pub gateway: usize,
    /// Its topic.
    pub topic: String,
    /// Whether it was connected (subscribe acked) when the check ended.
    pub connected: bool,
}

/// Where the clients of a crashed gateway stand after a fault, from the worker's events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StormProgress {
    /// Clients of the crashed gateway.
    pub storm_clients: usize,
    /// Of them, connected and subscribed again (their latest event since the fault is `up`).
    pub back: usize,
    /// Of them, with no event at all since the fault (the crash did not reach them yet).
    pub untouched: usize,
    /// Per reconnection since the fault: from noticing the loss to the subscribe ack, ms.
    pub reconnect_ms: Vec<f64>,
    /// Most connection attempts one reconnection took.
    pub max_attempts: u32,
    /// From the fault until the last of them was back, once all are.
    pub all_back_ms: Option<f64>,
    /// Connections to the other gateways that ended since the fault.
    pub collateral_lost: usize,
}

/// Read the events since `fault_ms` for the clients of gateway `crashed` (1-based).
pub fn storm_progress(
    events: &[StormEvent],
    clients: usize,
    gateways: usize,
    crashed: usize,
    fault_ms: f64,
) -> StormProgress {
    let is_storm = |c: usize| c < clients && gateway_of(c, gateways) + 1 == crashed;
    // Per client of the crashed gateway: its latest event since the fault (up?, when).
    let mut latest: Vec<Option<(bool, f64)>> = vec![None; clients];
    let mut p = StormProgress {
        storm_clients: (0..clients).filter(|&c| is_storm(c)).count(),
        ..StormProgress::default()
    };
    let since = fault_ms - CLOCK_SLACK_MS;
    for ev in events {
        match *ev {
            StormEvent::Up {
                client,
                ms,
                lost_ms,
                attempts,
                ..
            } if ms >= since && is_storm(client) => {
                latest[client] = Some((true, ms));
                if let Some(lost) = lost_ms.filter(|&l| l >= since) {
                    p.reconnect_ms.push(ms - lost);
                    p.max_attempts = p.max_attempts.max(attempts);
                }
            }
            StormEvent::Lost { client, ms, .. } if ms >= since => {
                if is_storm(client) {
                    latest[client] = Some((false, ms));
                } else if client < clients {
                    p.collateral_lost += 1;
                }
            }
            _ => {}
        }
    }
    let mut last_up = f64::MIN;
    for c in (0..clients).filter(|&c| is_storm(c)) {
        match latest[c] {
            Some((true, ms)) => {
                p.back += 1;
                last_up = last_up.max(ms);
            }
            Some((false, _)) => {}
            None => p.untouched += 1,
        }
    }
    if p.storm_clients > 0 && p.back == p.storm_clients {
        p.all_back_ms = Some((last_up - fault_ms).max(0.0));
    }
    p
}

/// The `p`-th percentile (nearest rank) of `values`; 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(client: usize, ms: f64, lost_ms: Option<f64>) -> StormEvent {
        StormEvent::Up {
            client,
            gateway: gateway_of(client, 2) + 1,
            ms,
            lost_ms,
            attempts: 1,
        }
    }

    fn lost(client: usize, ms: f64) -> StormEvent {
        StormEvent::Lost {
            client,
            gateway: gateway_of(client, 2) + 1,
            ms,
            why: "end of stream".into(),
        }
    }

    #[test]
    fn every_topic_has_clients_on_every_gateway() {
        let (clients, gateways, topics) = (300, 2, 50);
        for t in 0..topics {
            for g in 0..gateways {
                assert!((0..clients)
                    .any(|c| topic_of(c, gateways, topics) == t && gateway_of(c, gateways) == g));
            }
        }
    }

    #[test]
    fn progress_counts_the_crashed_gateways_clients() {
        // Clients 0 and 2 are on g1, 1 and 3 on g2; the fault is at 1000.
        let mut events: Vec<StormEvent> = (0..4).map(|c| up(c, 10.0, None)).collect();
        events.push(lost(0, 1005.0));
        events.push(lost(2, 1006.0));
        events.push(up(0, 1300.0, Some(1005.0)));
        let p = storm_progress(&events, 4, 2, 1, 1000.0);
        assert_eq!(p.storm_clients, 2);
        assert_eq!(p.back, 1);
        assert_eq!(p.all_back_ms, None);
        events.push(up(2, 1500.0, Some(1006.0)));
        // A client that drops again is not back until its next ack.
        events.push(lost(0, 1600.0));
        let p = storm_progress(&events, 4, 2, 1, 1000.0);
        assert_eq!(p.back, 1);
        events.push(up(0, 1900.0, Some(1600.0)));
        events.push(lost(1, 1700.0));
        let p = storm_progress(&events, 4, 2, 1, 1000.0);
        assert_eq!(p.back, 2);
        assert_eq!(p.all_back_ms, Some(900.0));
        assert_eq!(p.reconnect_ms, vec![295.0, 494.0, 300.0]);
        assert_eq!(p.collateral_lost, 1);
        assert_eq!(p.untouched, 0);
    }

    #[test]
    fn progress_ignores_events_before_the_fault_and_out_of_range_clients() {
        let events = vec![
            up(0, 10.0, None),
            lost(0, 50.0),
            up(0, 80.0, Some(50.0)),
            up(99, 1200.0, Some(1100.0)),
        ];
        let p = storm_progress(&events, 2, 2, 1, 1000.0);
        assert_eq!(p.storm_clients, 1);
        assert_eq!(p.back, 0);
        assert_eq!(p.untouched, 1);
        assert!(p.reconnect_ms.is_empty());
        assert_eq!(p.all_back_ms, None);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn events_and_commands_round_trip() {
        let events = vec![
            up(3, 1.5, Some(0.5)),
            lost(3, 2.0),
            StormEvent::Publish(ProbeRecord {
                op: "publish".into(),
                start_ms: 1.0,
                end_ms: 2.0,
                ok: true,
            }),
            StormEvent::Verified(Verification {
                round: 2,
                expected: 4,
                delivered: 3,
                missing: vec![MissingClient {
                    client: 1,
                    gateway: 2,
                    topic: "storm.0".into(),
                    connected: true,
                }],
                ..Verification::default()
            }),
        ];
        for e in events {
            let line = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<StormEvent>(&line).unwrap(), e);
        }
        let c = StormCommand::Verify { round: 7 };
        let line = serde_json::to_string(&c).unwrap();
        assert_eq!(line, r#"{"cmd":"verify","round":7}"#);
        assert_eq!(serde_json::from_str::<StormCommand>(&line).unwrap(), c);
    }
}
