//! The reconnect-storm scenario: crash a gateway under many WebSocket clients, and check that
//! they all come back, that publishing through the other gateway stays available, and that
//! every client gets what is published after the storm.
//!
//! ```text
//!   harness (host ns) ── kill -9 g1; start g1 ──▶ g1: every client socket dies with it
//!      │ stdin:  {"cmd":"verify","round":k}
//!      │ stdout: one JSON line per event (up, lost, publish, verified)
//!      ▼
//!   ip netns exec <c1> firetower chaos storm ...   (the worker)
//!      ├─ N clients: client i on gateway (i mod G)+1, topic storm.((i div G) mod T)
//!      │    connect ─ subscribe ─ ack ─ read ... lost ─ 0–200 ms jitter ─ reconnect ─ ...
//!      ├─ probe publisher on the last gateway: one publish every 20 ms, the topics in turn
//!      └─ verifier: on `verify k`, publish {"round":k} to every topic through the last
//!         gateway, then wait until every client has the message of its topic
//! ```
//!
//! Three parts, by job: `events` is the plain data both sides share and the pure reading of
//! a storm from the events (`storm_progress`); `harness` runs the scenario (the cluster, the
//! faults, the checks); `worker` is the process in the client namespace, on
//! `firetower_client::Client`. The worker reaches only the run's private addresses.

pub(crate) mod events;
pub(crate) mod harness;
mod worker;

pub use events::{
    gateway_of, percentile, storm_progress, topic_name, topic_of, MissingClient, StormCommand,
    StormEvent, StormProgress, Verification, DEFAULT_CLIENTS, DEFAULT_FAULTS, DEFAULT_TOPICS,
    MAX_CLIENTS, MAX_TOPICS,
};
pub use worker::{run_worker, StormConfig, StormWorkerError};
