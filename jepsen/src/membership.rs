//! The `membership` workload: managers are added and removed while the `subscriptions`
//! clients run, and the membership changes are checked too.
//!
//! ```text
//!   worker (client ns)     subscriptions clients (subscribe / unsubscribe / read), as usual
//!   runner                 process "membership": add mN / remove mN, invoke + ok/fail/info,
//!                          one change per quiet period (between nemesis faults, if any);
//!                          at the end, after healing: "members" = cluster members --json
//!   checker                subscriptions: linearizable per topic (subscriptions.rs)
//!                          membership: the voters every group reports at the end are one of
//!                          the sets the recorded changes allow (ok: applied, fail: not,
//!                          info: either), all groups agree, and every group has a leader
//!                          among them
//! ```
//!
//! History lines of the membership process:
//!
//! ```text
//! {"process":"membership","type":"invoke","f":"add","value":{"manager":4},"time_ns":..}
//! {"process":"membership","type":"ok","f":"add","value":{"manager":4},"time_ns":..}
//! {"process":"membership","type":"ok","f":"members","value":{"groups":[{"id":0,"leader":1,"voters":[1,3,4]},..]},"time_ns":..}
//! ```

use std::collections::BTreeSet;

use firetower_proto::MembersView;
use serde_json::{json, Value};

use crate::history::{Op, OpType, Process};
use crate::verdict::{Anomaly, Validity, Verdict};
use crate::JepsenError;

/// The process name of membership operations.
pub const PROCESS: &str = "membership";

/// The managers a cluster starts with (ids 1..=3).
pub const INITIAL_VOTERS: [u64; 3] = [1, 2, 3];

/// An operation of the membership process.
pub fn op(kind: OpType, f: &str, value: Value, time_ns: u64, error: Option<String>) -> Op {
    Op {
        index: 0,
        process: Process::Named(PROCESS.into()),
        kind,
        f: f.into(),
        key: None,
        value,
        time_ns,
        error,
    }
}

/// The compact form of `cluster members --json` kept in the history.
pub fn members_value(members: &MembersView) -> Value {
    let groups: Vec<Value> = members
        .groups
        .iter()
        .map(|g| json!({"id": g.id, "leader": g.leader, "voters": g.voters}))
        .collect();
    json!({ "groups": groups })
}

/// Check a `membership` history: the subscriptions part, then the membership part.
pub fn check_history(history: &[Op], budget: u64) -> Result<Verdict, JepsenError> {
    let client_ops: Vec<Op> = history
        .iter()
        .filter(|o| o.process != Process::Named(PROCESS.into()))
        .cloned()
        .collect();
    let subs = crate::subscriptions::check_history(&client_ops, budget)?;
    let (anomalies, stats) = check_membership(history);
    let mut all = subs.anomalies.clone();
    all.extend(anomalies.iter().cloned());
    let valid = match (subs.valid, anomalies.is_empty()) {
        (Validity::Invalid, _) | (_, false) => Validity::Invalid,
        (Validity::Unknown, true) => Validity::Unknown,
        (Validity::Valid, true) => Validity::Valid,
    };
    let stats = json!({ "subscriptions": subs.stats, "membership": stats });
    Ok(Verdict::new("membership", valid, history, stats, all))
}

/// The membership part of the check: anomalies and statistics.
fn check_membership(history: &[Op]) -> (Vec<Anomaly>, Value) {
    let ops: Vec<&Op> = history
        .iter()
        .filter(|o| o.process == Process::Named(PROCESS.into()))
        .collect();
    // Voter sets the changes allow, in history order (changes are sequential).
    let mut possible: BTreeSet<BTreeSet<u64>> = BTreeSet::new();
    possible.insert(INITIAL_VOTERS.into_iter().collect());
    let (mut ok, mut failed, mut unknown) = (0u64, 0u64, 0u64);
    let mut pending: Option<&Op> = None;
    let mut final_read: Option<&Op> = None;
    for op in &ops {
        match (op.f.as_str(), op.kind) {
            ("add" | "remove", OpType::Invoke) => pending = Some(op),
            ("add" | "remove", kind) => {
                let Some(id) = op.value["manager"].as_u64() else {
                    continue;
                };
                let apply = |set: &BTreeSet<u64>| {
                    let mut s = set.clone();
                    if op.f == "add" {
                        s.insert(id);
                    } else {
                        s.remove(&id);
                    }
                    s
                };
                possible = match kind {
                    OpType::Ok => {
                        ok += 1;
                        possible.iter().map(apply).collect()
                    }
                    OpType::Fail => {
                        failed += 1;
                        possible
                    }
                    _ => {
                        unknown += 1;
                        possible
                            .iter()
                            .flat_map(|s| [s.clone(), apply(s)])
                            .collect()
                    }
                };
                pending = None;
            }
            ("members", OpType::Ok) => final_read = Some(op),
            _ => {}
        }
    }
    // A change still pending at the end may or may not have happened.
    if let Some(op) = pending {
        if let Some(id) = op.value["manager"].as_u64() {
            unknown += 1;
            possible = possible
                .iter()
                .flat_map(|s| {
                    let mut t = s.clone();
                    if op.f == "add" {
                        t.insert(id);
                    } else {
                        t.remove(&id);
                    }
                    [s.clone(), t]
                })
                .collect();
        }
    }
    let mut anomalies = Vec::new();
    let mut sub_history: Vec<Op> = ops.iter().map(|o| (*o).clone()).collect();
    sub_history.truncate(50);
    let fmt = |s: &BTreeSet<u64>| format!("{:?}", s.iter().collect::<Vec<_>>());
    let allowed = possible.iter().map(fmt).collect::<Vec<_>>().join(" or ");
    match final_read {
        None => anomalies.push(Anomaly {
            kind: "membership-unreadable".into(),
            key: None,
            explanation: "no final `cluster members` read succeeded after every fault was \
                          healed: the cluster did not recover"
                .into(),
            sub_history: sub_history.clone(),
        }),
        Some(read) => {
            let groups = read.value["groups"].as_array().cloned().unwrap_or_default();
            if groups.is_empty() {
                anomalies.push(Anomaly {
                    kind: "membership-unreadable".into(),
                    key: None,
                    explanation: "the final members read lists no group".into(),
                    sub_history: sub_history.clone(),
                });
            }
            for g in &groups {
                let id = g["id"].as_u64().unwrap_or(u64::MAX);
                let voters: BTreeSet<u64> = g["voters"]
                    .as_array()
                    .map(|v| v.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
                if !possible.contains(&voters) {
                    anomalies.push(Anomaly {
                        kind: "membership".into(),
                        key: Some(format!("group {id}")),
                        explanation: format!(
                            "group {id} ends with voters {}, but the recorded changes allow \
                             only {allowed}",
                            fmt(&voters)
                        ),
                        sub_history: sub_history.clone(),
                    });
                }
                match g["leader"].as_u64() {
                    Some(l) if voters.contains(&l) => {}
                    leader => anomalies.push(Anomaly {
                        kind: "no-leader".into(),
                        key: Some(format!("group {id}")),
                        explanation: format!(
                            "group {id} has no leader among its voters {} after every fault \
                             was healed (leader: {leader:?})",
                            fmt(&voters)
                        ),
                        sub_history: sub_history.clone(),
                    }),
                }
            }
        }
    }
    let stats = json!({
        "changes_ok": ok,
        "changes_failed": failed,
        "changes_unknown": unknown,
        "allowed_final_voters": possible.iter().map(|s| s.iter().copied().collect::<Vec<_>>()).collect::<Vec<_>>(),
        "final_read": final_read.is_some(),
    });
    (anomalies, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(f: &str, id: u64, kind: OpType, t: u64) -> Vec<Op> {
        vec![
            op(OpType::Invoke, f, json!({"manager": id}), t, None),
            op(kind, f, json!({"manager": id}), t + 1, None),
        ]
    }

    fn read(groups: Value, t: u64) -> Op {
        op(OpType::Ok, "members", json!({ "groups": groups }), t, None)
    }

    fn verdict(h: &[Op]) -> (Vec<Anomaly>, Value) {
        check_membership(h)
    }

    #[test]
    fn applied_changes_match_the_final_voters() {
        let mut h = change("add", 4, OpType::Ok, 10);
        h.extend(change("remove", 2, OpType::Ok, 20));
        h.push(read(
            json!([{"id": 0, "leader": 4, "voters": [1, 3, 4]}, {"id": 1, "leader": 1, "voters": [1, 3, 4]}]),
            30,
        ));
        let (a, stats) = verdict(&h);
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(stats["changes_ok"], 2);
    }

    #[test]
    fn an_acknowledged_removal_that_did_not_happen_is_caught() {
        let mut h = change("remove", 2, OpType::Ok, 10);
        h.push(read(
            json!([{"id": 0, "leader": 1, "voters": [1, 2, 3]}]),
            30,
        ));
        let (a, _) = verdict(&h);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].kind, "membership");
        assert!(a[0].explanation.contains("[1, 3]"), "{}", a[0].explanation);
    }

    #[test]
    fn unknown_changes_allow_both_outcomes_and_failed_ones_none() {
        let mut h = change("add", 4, OpType::Info, 10);
        h.extend(change("add", 5, OpType::Fail, 20));
        h.push(read(
            json!([{"id": 0, "leader": 1, "voters": [1, 2, 3, 4]}]),
            30,
        ));
        assert!(verdict(&h).0.is_empty());
        let mut h2 = change("add", 4, OpType::Info, 10);
        h2.push(read(
            json!([{"id": 0, "leader": 1, "voters": [1, 2, 3]}]),
            30,
        ));
        assert!(verdict(&h2).0.is_empty());
        let mut h3 = change("add", 5, OpType::Fail, 20);
        h3.push(read(
            json!([{"id": 0, "leader": 1, "voters": [1, 2, 3, 5]}]),
            30,
        ));
        assert_eq!(verdict(&h3).0.len(), 1);
    }

    #[test]
    fn groups_without_a_leader_are_caught() {
        let mut h = change("add", 4, OpType::Info, 10);
        h.push(read(
            json!([
                {"id": 0, "leader": 1, "voters": [1, 2, 3, 4]},
                {"id": 1, "leader": null, "voters": [1, 2, 3]},
                {"id": 2, "leader": 9, "voters": [1, 2, 3]}
            ]),
            30,
        ));
        let (a, _) = verdict(&h);
        // Every voter set is allowed (the add's outcome is unknown, and `cluster add`
        // changes the groups one by one), but two groups have no leader among their voters.
        assert_eq!(
            a.iter().filter(|x| x.kind == "no-leader").count(),
            2,
            "{a:?}"
        );
        // No final read at all: the cluster did not recover.
        let (a, _) = verdict(&change("add", 4, OpType::Ok, 10));
        assert_eq!(a[0].kind, "membership-unreadable");
    }
}
