//! The `delivery` workload: real gateways, WebSocket clients, and a checker for what every
//! subscriber received.
//!
//! ```text
//!   worker (client ns)                                  gateways g1..gN (N >= 3: g1..gN-1
//!     subscriber connections c0, c1, ... ──ws──▶ g1, g2   hold subscribers, gN publishers)
//!       subscribe(topic) invoke/ok/fail/info; every received message (conn, id, term, seq)
//!     publishers p0..pP ──ws──▶ gN (and g1..): publish {"id":"p3-17"} invoke/ok/fail/info
//!   runner: nemesis start/stop + session-down windows from the gateways' JSON log events
//!     churn subscribers, one per churn topic at a time: subscribe on a random gateway, stay
//!       1.5-5 s, unsubscribe, close; so the table's entries for those topics keep changing
//!   checker: per subscriber connection and topic -- exactly once, (term, seq) increasing,
//!            ack order kept, nothing never published, lost messages counted and excused
//!            only by a fault window (a loss during a gateway's session gap is an anomaly:
//!            the server must fail such a publish, not acknowledge it); obligations end
//!            when the unsubscribe is invoked; nothing published after its ack arrives
//! ```
//!
//! History lines besides the client operations (which [`crate::history::pair`] pairs):
//!
//! ```text
//! {"process":"delivery","type":"info","f":"message","key":"jd1.2","value":{"conn":3,"gateway":1,"id":"p4-17","term":2,"seq":41},"time_ns":..}
//! {"process":"delivery","type":"info","f":"closed","value":{"conn":3,"gateway":1,"by":"gateway","code":1008},"time_ns":..}
//! {"process":"gateway","type":"info","f":"session-down","value":{"gateway":1,"manager":"10.77.0.11:6666","until_ns":..},"time_ns":..}
//! ```
//!
//! The parts, by job: `worker` (the clients, on `firetower_client::Client`), `sessions`
//! (session gaps from the gateways' JSON log events), `checker` (the rules) and `report`
//! (the counts and the anomalies of a verdict); `ops` holds the history lines they share.

mod checker;
mod ops;
mod report;
mod sessions;
mod worker;

pub use checker::{check_history, SessionGap};
pub use ops::SUB_PROCESS_BASE;
pub use report::DeliveryStats;
pub use sessions::{parse_rfc3339_ms, session_gaps_in_log, session_ops};
pub use worker::{churn_topics, run_delivery_worker, topics, CHURN_TOPICS, TOPICS};
