//! The `subscriptions` model and checker: per topic, the set of gateways subscribed to it.
//!
//! ```text
//!   subscribe(g)   -> changed   state ∪ {g};  changed must equal g ∉ state
//!   unsubscribe(g) -> changed   state ∖ {g};  changed must equal g ∈ state
//!   read           -> gateways  must equal state
//! ```
//!
//! Each topic is checked on its own (linearizability is compositional per object). When a
//! topic fails, [`minimize`] shrinks its history to a small one that still fails, by steps
//! that keep "this sub-history fails" implying "the whole history fails": projecting onto
//! one gateway (the set is a product of one register per gateway), dropping reads, relaxing
//! a write's `changed` result, and dropping writes invoked after every other known outcome.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::history::{pair, Op, OpType, Pair};
use crate::linearizability::{check, Model, Operation, Outcome};
use crate::verdict::{Anomaly, Validity, Verdict};
use crate::JepsenError;

/// Search steps allowed per topic before the checker answers "unknown".
pub const DEFAULT_BUDGET: u64 = 5_000_000;

/// An operation on a topic's gateway set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetInput {
    /// Add a gateway.
    Subscribe(u64),
    /// Remove a gateway.
    Unsubscribe(u64),
    /// Read the set.
    Read,
}

/// What the cluster answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOutput {
    /// A write: whether it changed the set; `None` when not checked.
    Done(Option<bool>),
    /// A read.
    Gateways(BTreeSet<u64>),
}

/// The sequential specification of a topic's gateway set.
#[derive(Debug, Clone, Copy, Default)]
pub struct GatewaySetModel;

impl Model for GatewaySetModel {
    type State = BTreeSet<u64>;
    type Input = SetInput;
    type Output = SetOutput;

    fn init(&self) -> BTreeSet<u64> {
        BTreeSet::new()
    }

    fn step(
        &self,
        state: &BTreeSet<u64>,
        input: &SetInput,
        output: Option<&SetOutput>,
    ) -> Option<BTreeSet<u64>> {
        match input {
            SetInput::Subscribe(g) | SetInput::Unsubscribe(g) => {
                let adding = matches!(input, SetInput::Subscribe(_));
                let changed = state.contains(g) != adding;
                match output {
                    None | Some(SetOutput::Done(None)) => {}
                    Some(SetOutput::Done(Some(c))) if *c == changed => {}
                    _ => return None,
                }
                let mut next = state.clone();
                if adding {
                    next.insert(*g);
                } else {
                    next.remove(g);
                }
                Some(next)
            }
            SetInput::Read => match output {
                None => Some(state.clone()),
                Some(SetOutput::Gateways(seen)) if seen == state => Some(state.clone()),
                _ => None,
            },
        }
    }
}

/// A checker operation; `id` is the index of its [`Pair`].
pub type SetOperation = Operation<SetInput, SetOutput>;

/// Turn one invoke/completion pair into a checker operation; `None` when it does not
/// constrain anything (failed ops, reads without a result, other functions).
pub fn to_operation(id: u64, p: &Pair) -> Result<Option<SetOperation>, JepsenError> {
    let outcome = p.outcome();
    if outcome == OpType::Fail {
        return Ok(None);
    }
    let gateway = || {
        p.invoke
            .value
            .get("gateway")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| JepsenError::BadHistory(format!("op {} has no gateway", p.invoke.index)))
    };
    let input = match p.invoke.f.as_str() {
        "subscribe" => SetInput::Subscribe(gateway()?),
        "unsubscribe" => SetInput::Unsubscribe(gateway()?),
        "read" => SetInput::Read,
        _ => return Ok(None),
    };
    let complete = p.complete.as_ref().filter(|_| outcome == OpType::Ok);
    let output = match (&input, complete) {
        (_, None) => None,
        (SetInput::Read, Some(c)) => {
            let list = c
                .value
                .get("gateways")
                .and_then(serde_json::Value::as_array)
                .ok_or_else(|| {
                    JepsenError::BadHistory(format!("read {} has no gateways", c.index))
                })?;
            Some(SetOutput::Gateways(
                list.iter().filter_map(serde_json::Value::as_u64).collect(),
            ))
        }
        (_, Some(c)) => Some(SetOutput::Done(
            c.value.get("changed").and_then(serde_json::Value::as_bool),
        )),
    };
    if input == SetInput::Read && output.is_none() {
        // A read of unknown outcome changes nothing and shows nothing.
        return Ok(None);
    }
    Ok(Some(Operation {
        id,
        call: p.invoke.time_ns,
        ret: complete.map(|c| c.time_ns),
        input,
        output,
    }))
}

/// Per-topic statistics for the verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SubscriptionStats {
    /// Topics checked.
    pub topics: usize,
    /// Topics found linearizable.
    pub linearizable: usize,
    /// Topics where the search gave up.
    pub unknown: usize,
    /// Topics with an anomaly.
    pub anomalies: usize,
}

/// Check a whole `subscriptions` history.
pub fn check_history(history: &[Op], budget: u64) -> Result<Verdict, JepsenError> {
    let pairs = pair(history)?;
    let mut by_key: BTreeMap<String, Vec<SetOperation>> = BTreeMap::new();
    for (i, p) in pairs.iter().enumerate() {
        let Some(key) = p.invoke.key.clone() else {
            continue;
        };
        if let Some(op) = to_operation(i as u64, p)? {
            by_key.entry(key).or_default().push(op);
        }
    }
    let mut stats = SubscriptionStats::default();
    let mut anomalies = Vec::new();
    for (key, ops) in &by_key {
        stats.topics += 1;
        match check(&GatewaySetModel, ops, budget) {
            Outcome::Linearizable(_) => stats.linearizable += 1,
            Outcome::Unknown => stats.unknown += 1,
            Outcome::NotLinearizable(failure) => {
                stats.anomalies += 1;
                let small = minimize(ops, budget);
                let mut sub_history: Vec<Op> = small
                    .iter()
                    .flat_map(|o| {
                        let p = &pairs[o.id as usize];
                        std::iter::once(p.invoke.clone()).chain(p.complete.clone())
                    })
                    .collect();
                sub_history.sort_by_key(|o| (o.time_ns, o.index));
                let stuck = &pairs[failure.stuck_at as usize];
                let explanation = format!(
                    "topic {key}: the {} operations on it have no linearization. The search \
                     linearized at most {} of them, reaching gateways {:?}; then op {} ({} {}) \
                     returned {} with no legal point to take effect. The smallest failing \
                     sub-history found has {} operations (below; each step of the shrinking \
                     keeps 'this fails' implying 'the whole history fails').",
                    ops.len(),
                    failure.longest_prefix.len(),
                    failure.state,
                    stuck.invoke.index,
                    stuck.invoke.f,
                    stuck.invoke.value,
                    stuck
                        .complete
                        .as_ref()
                        .map_or("nothing".to_string(), |c| c.value.to_string()),
                    small.len(),
                );
                anomalies.push(Anomaly {
                    kind: "nonlinearizable".into(),
                    key: Some(key.clone()),
                    explanation,
                    sub_history,
                });
            }
        }
    }
    let valid = if stats.anomalies > 0 {
        Validity::Invalid
    } else if stats.unknown > 0 {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    Ok(Verdict::new(
        "subscriptions",
        valid,
        history,
        serde_json::to_value(&stats).unwrap_or_default(),
        anomalies,
    ))
}

fn fails(ops: &[SetOperation], budget: u64) -> bool {
    check(&GatewaySetModel, ops, budget).is_not_linearizable()
}

/// Shrink a failing topic history to a small one that still fails (see the module doc for
/// why each step is sound).
pub fn minimize(ops: &[SetOperation], budget: u64) -> Vec<SetOperation> {
    let mut current = ops.to_vec();
    // 1. Project onto a single gateway, if one alone fails; smallest projection first.
    let gateways: BTreeSet<u64> = ops
        .iter()
        .filter_map(|o| match o.input {
            SetInput::Subscribe(g) | SetInput::Unsubscribe(g) => Some(g),
            SetInput::Read => None,
        })
        .chain(ops.iter().flat_map(|o| match &o.output {
            Some(SetOutput::Gateways(s)) => s.iter().copied().collect::<Vec<_>>(),
            _ => Vec::new(),
        }))
        .collect();
    let mut projections: Vec<Vec<SetOperation>> =
        gateways.iter().map(|&g| project(ops, g)).collect();
    projections.sort_by_key(Vec::len);
    if let Some(p) = projections.into_iter().find(|p| fails(p, budget)) {
        current = p;
    }
    // 2. Drop reads, one at a time, while it still fails.
    let mut i = 0;
    while i < current.len() {
        if current[i].input == SetInput::Read {
            let mut candidate = current.clone();
            candidate.remove(i);
            if fails(&candidate, budget) {
                current = candidate;
                continue;
            }
        }
        i += 1;
    }
    // 3. Drop writes invoked after every other known outcome (they can be linearized last,
    //    where nothing observes them).
    loop {
        let last_known = |skip: usize, ops: &[SetOperation]| {
            ops.iter()
                .enumerate()
                .filter(|(j, _)| *j != skip)
                .filter_map(|(_, o)| o.ret)
                .max()
                .unwrap_or(0)
        };
        let droppable = (0..current.len()).find(|&j| {
            current[j].input != SetInput::Read && current[j].call > last_known(j, &current)
        });
        match droppable {
            Some(j) => {
                current.remove(j);
            }
            None => break,
        }
    }
    // 4. Relax `changed` results that are not needed for the failure.
    for j in 0..current.len() {
        if matches!(current[j].output, Some(SetOutput::Done(Some(_)))) {
            let mut candidate = current.clone();
            candidate[j].output = Some(SetOutput::Done(None));
            if fails(&candidate, budget) {
                current = candidate;
            }
        }
    }
    current
}

/// The history as seen by gateway `g` alone: its writes, and reads reduced to "g is in".
fn project(ops: &[SetOperation], g: u64) -> Vec<SetOperation> {
    ops.iter()
        .filter_map(|o| match (&o.input, &o.output) {
            (SetInput::Subscribe(x) | SetInput::Unsubscribe(x), _) if *x == g => Some(o.clone()),
            (SetInput::Read, Some(SetOutput::Gateways(s))) => {
                let mut o = o.clone();
                o.output = Some(SetOutput::Gateways(
                    s.iter().copied().filter(|&x| x == g).collect(),
                ));
                Some(o)
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Process;
    use serde_json::json;

    /// (process, f, gateway, call, ret (None: info), result) on one key.
    type Row<'a> = (u64, &'a str, u64, u64, Option<u64>, serde_json::Value);

    /// Build a history from rows.
    fn history(rows: &[Row<'_>]) -> Vec<Op> {
        let mut events = Vec::new();
        for &(p, f, g, call, ret, ref result) in rows {
            let value = if f == "read" {
                serde_json::Value::Null
            } else {
                json!({ "gateway": g })
            };
            events.push(Op {
                index: 0,
                process: Process::Client(p),
                kind: OpType::Invoke,
                f: f.into(),
                key: Some("t".into()),
                value,
                time_ns: call,
                error: None,
            });
            let (kind, value, time) = match ret {
                Some(t) => (OpType::Ok, result.clone(), t),
                None => (OpType::Info, serde_json::Value::Null, 1_000_000),
            };
            events.push(Op {
                index: 0,
                process: Process::Client(p),
                kind,
                f: f.into(),
                key: Some("t".into()),
                value,
                time_ns: time,
                error: None,
            });
        }
        events.sort_by_key(|o| o.time_ns);
        for (i, e) in events.iter_mut().enumerate() {
            e.index = i as u64;
        }
        events
    }

    fn sub(changed: bool) -> serde_json::Value {
        json!({ "changed": changed })
    }

    fn read(g: &[u64]) -> serde_json::Value {
        json!({ "gateways": g })
    }

    #[test]
    fn a_correct_history_is_valid() {
        let h = history(&[
            (1, "subscribe", 1, 0, Some(10), sub(true)),
            (2, "read", 0, 5, Some(8), read(&[])),
            (2, "read", 0, 11, Some(12), read(&[1])),
            (1, "subscribe", 2, 13, Some(20), sub(true)),
            (3, "unsubscribe", 1, 14, Some(18), sub(true)),
            (2, "read", 0, 21, Some(22), read(&[2])),
        ]);
        let v = check_history(&h, DEFAULT_BUDGET).unwrap();
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
    }

    #[test]
    fn a_stale_read_is_caught_and_explained() {
        // subscribe(1) is acknowledged, then a later read misses it: what a follower
        // answering from its own copy would do.
        let h = history(&[
            (1, "subscribe", 1, 0, Some(10), sub(true)),
            (1, "subscribe", 2, 11, Some(15), sub(true)),
            (2, "read", 0, 20, Some(25), read(&[2])),
            (3, "read", 0, 21, Some(24), read(&[1, 2])),
        ]);
        let v = check_history(&h, DEFAULT_BUDGET).unwrap();
        assert_eq!(v.valid, Validity::Invalid);
        let a = &v.anomalies[0];
        // Minimal: the subscribe of gateway 1 and the read that missed it.
        assert_eq!(a.sub_history.len(), 4, "{:#?}", a.sub_history);
        assert!(a.sub_history.iter().any(|o| o.f == "subscribe"));
        assert!(a.explanation.contains("topic t"));
    }

    #[test]
    fn a_wrong_changed_flag_is_caught() {
        // Two sequential subscribes of the same gateway both claim to have changed the set.
        let h = history(&[
            (1, "subscribe", 1, 0, Some(10), sub(true)),
            (2, "subscribe", 1, 11, Some(15), sub(true)),
        ]);
        assert_eq!(
            check_history(&h, DEFAULT_BUDGET).unwrap().valid,
            Validity::Invalid
        );
    }

    #[test]
    fn an_indeterminate_write_may_or_may_not_land() {
        // subscribe(1) timed out (info): a read may see it or not, even much later...
        for seen in [vec![], vec![1]] {
            let h = history(&[
                (1, "subscribe", 1, 0, None, serde_json::Value::Null),
                (2, "read", 0, 50, Some(60), read(&seen)),
            ]);
            assert_eq!(
                check_history(&h, DEFAULT_BUDGET).unwrap().valid,
                Validity::Valid,
                "{seen:?}"
            );
        }
        // ...but once seen, it cannot vanish without an unsubscribe.
        let h = history(&[
            (1, "subscribe", 1, 0, None, serde_json::Value::Null),
            (2, "read", 0, 50, Some(60), read(&[1])),
            (2, "read", 0, 70, Some(80), read(&[])),
        ]);
        assert_eq!(
            check_history(&h, DEFAULT_BUDGET).unwrap().valid,
            Validity::Invalid
        );
    }

    #[test]
    fn failed_writes_never_take_effect() {
        let mut h = history(&[
            (1, "subscribe", 1, 0, Some(10), serde_json::Value::Null),
            (2, "read", 0, 50, Some(60), read(&[1])),
        ]);
        // Turn the subscribe's completion into a definite failure.
        for o in &mut h {
            if o.f == "subscribe" && o.kind == OpType::Ok {
                o.kind = OpType::Fail;
            }
        }
        assert_eq!(
            check_history(&h, DEFAULT_BUDGET).unwrap().valid,
            Validity::Invalid
        );
    }

    #[test]
    fn minimization_drops_unrelated_operations() {
        let mut rows = Vec::new();
        // Lots of noise on gateways 3 and 4.
        for i in 0..20u64 {
            rows.push((
                5,
                "subscribe",
                3 + i % 2,
                100 * i,
                Some(100 * i + 10),
                serde_json::Value::Null,
            ));
        }
        // The anomaly on gateway 1: acknowledged subscribe, later read without it.
        rows.push((1, "subscribe", 1, 2000, Some(2010), sub(true)));
        rows.push((2, "read", 0, 2100, Some(2110), read(&[3, 4])));
        let h = history(&rows);
        let v = check_history(&h, DEFAULT_BUDGET).unwrap();
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(
            v.anomalies[0].sub_history.len(),
            4,
            "{:#?}",
            v.anomalies[0].sub_history
        );
    }

    proptest::proptest! {
        /// Histories generated by a correct sequential execution (with overlap) pass.
        #[test]
        fn correct_executions_pass(
            ops in proptest::collection::vec((0u8..3, 1u64..4, 0u64..4), 1..30)
        ) {
            let mut state = BTreeSet::new();
            let mut rows = Vec::new();
            for (i, (kind, g, stretch)) in ops.iter().enumerate() {
                let t = 10 * i as u64 + 5;
                let (call, ret) = (t - stretch, t + stretch);
                let p = i as u64; // distinct processes: overlaps are allowed
                match kind {
                    0 => { let c = state.insert(*g); rows.push((p, "subscribe", *g, call, Some(ret), sub(c))); }
                    1 => { let c = state.remove(g); rows.push((p, "unsubscribe", *g, call, Some(ret), sub(c))); }
                    _ => { let s: Vec<u64> = state.iter().copied().collect(); rows.push((p, "read", 0, call, Some(ret), read(&s))); }
                }
            }
            let v = check_history(&history(&rows), DEFAULT_BUDGET).unwrap();
            proptest::prop_assert_eq!(v.valid, Validity::Valid);
        }
    }
}
