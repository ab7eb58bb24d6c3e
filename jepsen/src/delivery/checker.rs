//! The delivery checker's rules, over a recorded history. Per subscriber connection and
//! topic:
//!
//! ```text
//!   phantom            a message no client published to that topic
//!   after-unsubscribe  a message published after the unsubscribe from its topic was acked
//!   duplicate          one publish received twice on one connection
//!   restamped          one publish received with different (term, seq) stamps
//!   reordered          (term, seq) not increasing, or an acked publish arriving after one
//!                      invoked only after that ack
//!   lost               an acked publish owed (acked after the subscribe's ack, before the
//!                      unsubscribe's invocation and the connection's end) and never received;
//!                      excused only by a fault window (nemesis start..stop), or when the
//!                      gateway closed the connection just after the ack; a loss in a session
//!                      gap of the subscriber's gateway stays an anomaly
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use super::report::{Anomalies, DeliveryStats};
use crate::history::{pair, Op, OpType, Process};
use crate::plot::fault_windows;
use crate::verdict::Verdict;
use crate::JepsenError;

/// A session gap of a gateway noticed within this many seconds after a fault window ended
/// is taken to have begun when that fault began (the gateway notices a dead manager late).
const SESSION_NOTICE_SECS: f64 = 15.0;
/// A lost message whose publish was acknowledged this shortly before the gateway closed the
/// subscriber's connection is excused (the close discards the connection's queue).
const CLOSE_GRACE_NS: u64 = 1_000_000_000;

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
    let mut anomalies = Anomalies::default();

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
                anomalies.report(
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
                    anomalies.report(
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
                anomalies.report(
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
                    anomalies.report(
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
                        anomalies.report(
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
                        anomalies.report(
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
                    anomalies.report(
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
    stats.set_latencies(latencies);
    Ok(anomalies.verdict(history, &stats))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::ops::{client_op, event, SUB_PROCESS_BASE};
    use super::*;
    use crate::verdict::Validity;

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
}
