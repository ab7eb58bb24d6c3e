//! Session gaps of the gateways, from their logs. The runner starts gateways with
//! `FIRETOWER_LOG_FORMAT=json`, and a gateway reports every session with a manager that opens
//! or ends as a JSON event with a stable `event` field (gateway/src/cluster.rs):
//!
//! ```text
//! {"timestamp":"2026-11-26T10:35:19.000000Z","level":"DEBUG","fields":{"message":"..","event":"session_down","addr":"10.77.0.13:6666","error":".."},"target":"firetower_gateway::cluster"}
//! {"timestamp":"2026-11-26T10:35:24.000000Z","level":"INFO","fields":{"message":"..","event":"session_up","addr":"10.77.0.13:6666"},"target":"firetower_gateway::cluster"}
//! ```
//!
//! A gap runs from a `session_down` to the next `session_up` of the same manager address.
//! Every other line (other events, anything that is not such a JSON object) is skipped.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::json;

use crate::history::{Op, OpType, Process};

/// One line of a gateway's JSON log, as far as session gaps need it.
#[derive(Deserialize)]
struct LogLine {
    /// RFC 3339, UTC.
    timestamp: String,
    #[serde(default)]
    fields: LogFields,
}

/// The fields of a log event that session gaps need.
#[derive(Default, Deserialize)]
struct LogFields {
    /// The stable name of the event (`session_up`, `session_down`, ...).
    event: Option<String>,
    /// The manager's QUIC address.
    addr: Option<String>,
}

/// A session of a gateway with a manager opened or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Session {
    Up,
    Down,
}

/// The session event on one log line: what happened, when (Unix ms), to which manager.
fn session_event(line: &str) -> Option<(Session, f64, String)> {
    let line: LogLine = serde_json::from_str(line).ok()?;
    let session = match line.fields.event.as_deref()? {
        "session_up" => Session::Up,
        "session_down" => Session::Down,
        _ => return None,
    };
    let ms = parse_rfc3339_ms(&line.timestamp)?;
    Some((session, ms, line.fields.addr?))
}

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

/// Session gaps in one gateway's JSON log: every `session_down` event, until the next
/// `session_up` for the same manager. Returns (manager, ended at, reopened at) in ns since
/// `t0_unix_ms` (`None`: not reopened).
pub fn session_gaps_in_log(log: &str, t0_unix_ms: f64) -> Vec<(String, u64, Option<u64>)> {
    let mut open: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<(String, u64, Option<u64>)> = Vec::new();
    for line in log.lines() {
        let Some((session, ms, addr)) = session_event(line) else {
            continue;
        };
        let t = ((ms - t0_unix_ms) * 1e6).max(0.0) as u64;
        match session {
            Session::Down => {
                if !open.contains_key(&addr) {
                    open.insert(addr.clone(), out.len());
                    out.push((addr, t, None));
                }
            }
            Session::Up => {
                if let Some(i) = open.remove(&addr) {
                    out[i].2 = Some(t);
                }
            }
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

    /// A log line as the gateway writes it with `FIRETOWER_LOG_FORMAT=json`.
    fn line(timestamp: &str, level: &str, event: &str, addr: &str) -> String {
        let message = match event {
            "session_up" => "session with manager open",
            _ => "session with manager ended",
        };
        json!({
            "timestamp": timestamp,
            "level": level,
            "fields": {"message": message, "event": event, "addr": addr, "error": "connection lost"},
            "target": "firetower_gateway::cluster",
        })
        .to_string()
    }

    #[test]
    fn gateway_logs_give_session_gaps() {
        let t0 = parse_rfc3339_ms("2026-11-26T10:35:14.000000Z").unwrap();
        assert_eq!(
            parse_rfc3339_ms("1970-01-02T00:00:01.5Z"),
            Some(86_401_500.0)
        );
        let log = [
            line("2026-11-26T10:35:14.429715Z", "INFO", "session_up", "10.77.0.13:6666"),
            line("2026-11-26T10:35:19.000000Z", "DEBUG", "session_down", "10.77.0.13:6666"),
            // Not a session event, and not JSON at all: skipped.
            r#"{"timestamp":"2026-11-26T10:35:20.000000Z","level":"INFO","fields":{"message":"session with manager ended addr=10.77.0.12:6666"},"target":"firetower_gateway::server"}"#.to_string(),
            "thread 'main' panicked: session with manager ended addr=10.77.0.12:6666".to_string(),
            line("2026-11-26T10:35:21.000000Z", "DEBUG", "session_down", "10.77.0.13:6666"),
            line("2026-11-26T10:35:22.000000Z", "DEBUG", "session_down", "10.77.0.11:6666"),
            line("2026-11-26T10:35:24.000000Z", "INFO", "session_up", "10.77.0.13:6666"),
        ]
        .join("\n");
        let gaps = session_gaps_in_log(&log, t0);
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
        let ops = session_ops(&log, 2, t0);
        assert_eq!(ops[0].value["gateway"], 2);
    }
}
