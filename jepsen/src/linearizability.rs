//! A linearizability checker: the Wing & Gong search with Lowe's memoization, as in
//! porcupine. Pure code over plain data.
//!
//! ```text
//!   ops ──▶ entries sorted by time: call(a) call(b) ret(a) call(c) ret(b) ... ret(info)=∞
//!              │   doubly linked list; walk it:
//!              ├─ at call(x): if model.step(state, x) is legal and (linearized ∪ {x}, state')
//!              │              is new: push, lift x's call and return out of the list, restart
//!              └─ at ret(x):  x was not linearized before its return: pop (backtrack)
//!   list empty ─▶ linearizable;   stack empty at a return ─▶ not linearizable
//! ```
//!
//! An operation of unknown outcome (`info`, or never completed) gets an infinite return
//! time and no output: it may take effect at any point after its call, or never (it is then
//! simply linearized after everything else, where it constrains nothing). A failed operation
//! never took effect and must not be given to the checker at all.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    /// The state; hashed for the memo, so keep it small and canonical.
    type State: Clone + Eq + Hash + Debug;
    /// An operation's input.
    type Input: Debug;
    /// An operation's output.
    type Output: Debug;

    /// The initial state.
    fn init(&self) -> Self::State;

    /// Apply `input` in `state`. `output` is what the system answered, `None` when unknown.
    /// Returns the next state, or `None` when the output is impossible in this state.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// One operation given to the checker.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation<I, O> {
    /// The caller's identifier (for reports).
    pub id: u64,
    /// Invocation time.
    pub call: u64,
    /// Completion time; `None` for an unknown outcome (infinite).
    pub ret: Option<u64>,
    /// The input.
    pub input: I,
    /// The output; `None` for an unknown outcome.
    pub output: Option<O>,
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<S> {
    /// A linearization exists; the operation ids in linearization order.
    Linearizable(Vec<u64>),
    /// None exists.
    NotLinearizable(Failure<S>),
    /// The search gave up after its step budget.
    Unknown,
}

impl<S> Outcome<S> {
    /// True for [`Outcome::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Outcome::Linearizable(_))
    }

    /// True for [`Outcome::NotLinearizable`].
    pub fn is_not_linearizable(&self) -> bool {
        matches!(self, Outcome::NotLinearizable(_))
    }
}

/// Why no linearization exists: the deepest partial linearization the search reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure<S> {
    /// Operation ids of the longest linearizable prefix found, in order.
    pub longest_prefix: Vec<u64>,
    /// The state after that prefix.
    pub state: S,
    /// The operation whose return was reached without a legal place to linearize it.
    pub stuck_at: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    /// For a call: the list index of its return entry.
    partner: usize,
}

/// Check `ops` against `model`, giving up after `budget` search steps.
pub fn check<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Outcome<M::State> {
    let n = ops.len();
    if n == 0 {
        return Outcome::Linearizable(Vec::new());
    }
    // Entries: calls and returns sorted by time; at equal times calls first (the more
    // permissive reading: the operations overlap).
    let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, 0, i));
        order.push((op.ret.unwrap_or(u64::MAX), 1, i));
    }
    order.sort();
    // Node 0 is the head sentinel; entries are nodes 1..=2n.
    let mut entries = vec![Entry {
        op: usize::MAX,
        is_call: false,
        partner: 0,
    }];
    let mut call_node = vec![0usize; n];
    for &(_, kind, i) in &order {
        let node = entries.len();
        if kind == 0 {
            call_node[i] = node;
            entries.push(Entry {
                op: i,
                is_call: true,
                partner: 0,
            });
        } else {
            entries.push(Entry {
                op: i,
                is_call: false,
                partner: 0,
            });
            let c = call_node[i];
            entries[c].partner = node;
        }
    }
    let len = entries.len();
    let mut next: Vec<usize> = (1..=len).collect();
    next[len - 1] = usize::MAX;
    let mut prev: Vec<usize> = (0..len).map(|i| i.wrapping_sub(1)).collect();
    let none = usize::MAX;

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut best: Vec<usize> = Vec::new();
    let mut best_state = state.clone();
    // The first operation whose return was reached, unlinearized, at the deepest point.
    let mut best_stuck: Option<usize> = None;
    let mut entry = next[0];
    let mut steps = 0u64;

    // Remove a call node and its return node from the list.
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, c: usize, r: usize| {
        for node in [c, r] {
            let (p, nx) = (prev[node], next[node]);
            next[p] = nx;
            if nx != none {
                prev[nx] = p;
            }
        }
    };
    // Put them back (reverse order of removal).
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, c: usize, r: usize| {
        for node in [r, c] {
            let (p, nx) = (prev[node], next[node]);
            next[p] = node;
            if nx != none {
                prev[nx] = node;
            }
        }
    };

    while next[0] != none {
        steps += 1;
        if steps > budget {
            return Outcome::Unknown;
        }
        if entry == none {
            // Cannot happen: the last entry is always a return, handled below.
            return Outcome::Unknown;
        }
        let e = entries[entry];
        if e.is_call {
            let op = &ops[e.op];
            if let Some(new_state) = model.step(&state, &op.input, op.output.as_ref()) {
                let mut lin = linearized.clone();
                lin[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((lin.clone(), new_state.clone())) {
                    stack.push((entry, state));
                    state = new_state;
                    linearized = lin;
                    lift(&mut next, &mut prev, entry, e.partner);
                    if stack.len() > best.len() {
                        best = stack.iter().map(|(node, _)| entries[*node].op).collect();
                        best_state = state.clone();
                        best_stuck = None;
                    }
                    entry = next[0];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            if stack.len() == best.len() && best_stuck.is_none() {
                best_stuck = Some(e.op);
            }
            let Some((node, old_state)) = stack.pop() else {
                return Outcome::NotLinearizable(Failure {
                    longest_prefix: best.iter().map(|&i| ops[i].id).collect(),
                    state: best_state,
                    stuck_at: ops[best_stuck.unwrap_or(e.op)].id,
                });
            };
            let op = entries[node].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = old_state;
            unlift(&mut next, &mut prev, node, entries[node].partner);
            entry = next[node];
        }
    }
    Outcome::Linearizable(
        stack
            .iter()
            .map(|(node, _)| ops[entries[*node].op].id)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register: write(v) / read -> v.
    struct Register;

    #[derive(Debug, Clone)]
    enum RegOp {
        Write(u8),
        Read,
    }

    impl Model for Register {
        type State = u8;
        type Input = RegOp;
        type Output = u8;
        fn init(&self) -> u8 {
            0
        }
        fn step(&self, s: &u8, i: &RegOp, o: Option<&u8>) -> Option<u8> {
            match (i, o) {
                (RegOp::Write(v), _) => Some(*v),
                (RegOp::Read, Some(v)) if v == s => Some(*s),
                (RegOp::Read, None) => Some(*s),
                (RegOp::Read, Some(_)) => None,
            }
        }
    }

    fn w(id: u64, call: u64, ret: Option<u64>, v: u8) -> Operation<RegOp, u8> {
        Operation {
            id,
            call,
            ret,
            input: RegOp::Write(v),
            output: ret.map(|_| 0),
        }
    }

    fn r(id: u64, call: u64, ret: u64, v: u8) -> Operation<RegOp, u8> {
        Operation {
            id,
            call,
            ret: Some(ret),
            input: RegOp::Read,
            output: Some(v),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            w(1, 0, Some(1), 5),
            r(2, 2, 3, 5),
            w(3, 4, Some(5), 6),
            r(4, 6, 7, 6),
        ];
        assert_eq!(
            check(&Register, &h, 1_000),
            Outcome::Linearizable(vec![1, 2, 3, 4])
        );
    }

    #[test]
    fn stale_read_after_write_is_not() {
        // write 5 completes, then a read returns the old 0.
        let h = vec![w(1, 0, Some(1), 5), r(2, 2, 3, 0)];
        match check(&Register, &h, 1_000) {
            Outcome::NotLinearizable(f) => {
                assert_eq!(f.longest_prefix, vec![1]);
                assert_eq!(f.state, 5);
                assert_eq!(f.stuck_at, 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn concurrent_ops_may_reorder() {
        // Read overlaps the write: both 0 and 5 are fine.
        for v in [0, 5] {
            let h = vec![w(1, 0, Some(10), 5), r(2, 1, 3, v)];
            assert!(check(&Register, &h, 1_000).is_linearizable(), "read {v}");
        }
    }

    #[test]
    fn reads_cannot_go_back_in_time() {
        // Two sequential reads during a long write: 5 then 0 is impossible.
        let h = vec![w(1, 0, Some(10), 5), r(2, 1, 2, 5), r(3, 3, 4, 0)];
        assert!(check(&Register, &h, 1_000).is_not_linearizable());
    }

    #[test]
    fn info_write_may_happen_late_or_never() {
        // The write's outcome is unknown: a later read may see it, or not.
        for v in [0, 5] {
            let h = vec![w(1, 0, None, 5), r(2, 5, 6, v)];
            assert!(check(&Register, &h, 1_000).is_linearizable(), "read {v}");
        }
        // But once seen it cannot be unseen.
        let h = vec![w(1, 0, None, 5), r(2, 5, 6, 5), r(3, 7, 8, 0)];
        assert!(check(&Register, &h, 1_000).is_not_linearizable());
        // And it cannot take effect before its invocation.
        let h = vec![r(2, 0, 1, 5), w(1, 2, None, 5)];
        assert!(check(&Register, &h, 1_000).is_not_linearizable());
    }

    #[test]
    fn budget_exhaustion_is_unknown() {
        let h: Vec<_> = (0..20).map(|i| w(i, 0, Some(100), i as u8)).collect();
        let mut h = h;
        h.push(r(99, 101, 102, 250));
        assert_eq!(check(&Register, &h, 10), Outcome::Unknown);
    }

    proptest::proptest! {
        /// Any history produced by applying operations one at a time, with times that
        /// respect that order (possibly stretched to overlap), is linearizable.
        #[test]
        fn sequential_executions_are_linearizable(
            ops in proptest::collection::vec((proptest::bool::ANY, 0u8..4, 0u64..5), 1..25)
        ) {
            let mut state = 0u8;
            let mut history = Vec::new();
            for (i, (is_write, v, stretch)) in ops.iter().enumerate() {
                let t = 10 * i as u64;
                // The effect happens at t; the call may start earlier, the return come later.
                let call = t.saturating_sub(*stretch);
                let ret = t + stretch;
                if *is_write {
                    state = *v;
                    history.push(w(i as u64, call, Some(ret), *v));
                } else {
                    history.push(r(i as u64, call, ret, state));
                }
            }
            proptest::prop_assert!(check(&Register, &history, 1_000_000).is_linearizable());
        }

        /// Changing one read's result to a value never written makes it non-linearizable.
        #[test]
        fn impossible_reads_are_caught(n in 1usize..15, which in 0usize..15) {
            let mut history = Vec::new();
            for i in 0..n {
                let t = 10 * i as u64;
                history.push(w(2 * i as u64, t, Some(t + 2), 1 + (i % 3) as u8));
                history.push(r(2 * i as u64 + 1, t + 4, t + 6, 1 + (i % 3) as u8));
            }
            let k = 2 * (which % n) + 1;
            history[k].output = Some(200);
            proptest::prop_assert!(check(&Register, &history, 1_000_000).is_not_linearizable());
        }
    }
}
