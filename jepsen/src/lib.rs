//! Jepsen-style verification of Firetower: concurrent clients record a history while a
//! nemesis injects faults and heals them; checkers decide whether the history is valid.
//!
//! Entry point: `firetower jepsen run` ([`cli`]), which calls [`runner::run`]:
//!
//! ```text
//!   runner (host ns) ── firetower_chaos::Cluster (managers in namespaces, nftables faults)
//!      │                     ▲ nemesis: start/stop lines into the history
//!      └─ ip netns exec <c1> firetower jepsen worker ── JSON lines (invoke/ok/fail/info) ─┐
//!   history.jsonl ◀── merge, sort by time ◀────────────────────────────────────────────────┘
//!      └─▶ checker (subscriptions: per-topic Wing-Gong/Lowe linearizability;
//!          delivery: exactly once, in order, no phantom, losses excused only by faults;
//!          membership: subscriptions plus the recorded add/remove changes)
//!          └─▶ verdict.json / verdict.txt (+ smallest failing sub-history), latency.svg,
//!              throughput.svg; exit 1 when invalid
//! ```
//!
//! The checkers ([`linearizability`], [`subscriptions`], [`delivery`]) are pure code over
//! plain data. The harness drives the built binary from outside and uses only public APIs:
//! `firetower_proto` frames over QUIC ([`rawlink`]), WebSocket clients of `firetower_client`
//! (delivery), `cluster members --json` as `firetower_proto::MembersView`, and the gateways'
//! JSON log events (`session_up` / `session_down`); it never links manager internals.

#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod check;
pub mod cli;
pub mod delivery;
mod error;
pub mod history;
pub mod linearizability;
pub mod membership;
pub mod nemesis;
pub mod plot;
pub mod rawlink;
pub mod runner;
pub mod subscriptions;
pub mod verdict;
pub mod worker;

pub use error::JepsenError;
