//! The history lines the delivery workload writes besides what [`crate::history`] defines:
//! the worker's events (`process: "delivery"`) and the subscribers' requests, each recorded
//! as an operation of the connection's own process.

use serde_json::Value;

use crate::history::{Op, OpType, Process};

/// Subscriber connection `k` records its subscribes as process `SUB_PROCESS_BASE + k`.
pub const SUB_PROCESS_BASE: u64 = 1_000_000;

/// An event of the worker (`message`, `connected`, `closed`, ...).
pub(super) fn event(f: &str, key: Option<String>, value: Value, time_ns: u64) -> Op {
    Op {
        index: 0,
        process: Process::Named("delivery".into()),
        kind: OpType::Info,
        f: f.into(),
        key,
        value,
        time_ns,
        error: None,
    }
}

/// An invoke or completion of a client operation (`process` is a number).
pub(super) fn client_op(
    process: u64,
    kind: OpType,
    f: &str,
    key: &str,
    value: Value,
    t: u64,
) -> Op {
    Op {
        index: 0,
        process: Process::Client(process),
        kind,
        f: f.into(),
        key: Some(key.to_string()),
        value,
        time_ns: t,
        error: None,
    }
}
