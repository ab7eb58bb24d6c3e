//! Histories: what clients invoked and what came back, one JSON object per line.
//!
//! ```text
//! {"index":0,"process":3,"type":"invoke","f":"subscribe","key":"jk.4","value":{"gateway":2},"time_ns":1200}
//! {"index":1,"process":3,"type":"ok","f":"subscribe","key":"jk.4","value":{"gateway":2,"changed":true},"time_ns":5300}
//! {"index":9,"process":"nemesis","type":"info","f":"start","value":"partition isolate [m1] | [m2 m3]","time_ns":...}
//! ```
//!
//! Every client operation is an `invoke` followed, in the same process, by `ok` (it took
//! effect), `fail` (it certainly did not) or `info` (unknown: it may take effect at any time
//! after its invocation, or never). A process has at most one operation in flight.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::JepsenError;

/// What happened to an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// Sent.
    Invoke,
    /// Took effect; `value` holds the result.
    Ok,
    /// Certainly did not take effect.
    Fail,
    /// Unknown outcome.
    Info,
}

/// Who did it: a client process number, or a named actor (`nemesis`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Process {
    /// A client.
    Client(u64),
    /// The nemesis (or another named actor).
    Named(String),
}

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history.
    #[serde(default)]
    pub index: u64,
    /// Who.
    pub process: Process,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: OpType,
    /// The function: `subscribe`, `unsubscribe`, `read`, `publish`, `start`, `stop`, ...
    pub f: String,
    /// The key (topic) when the operation has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Arguments (on invoke) or results (on ok).
    #[serde(default)]
    pub value: serde_json::Value,
    /// Nanoseconds since the run began.
    pub time_ns: u64,
    /// Why it failed, for fail and info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    /// True for client operations (not the nemesis).
    pub fn is_client(&self) -> bool {
        matches!(self.process, Process::Client(_))
    }
}

/// An invocation and its completion, paired.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// The invoke.
    pub invoke: Op,
    /// The completion; `None` when the history ended first (treated as `info`).
    pub complete: Option<Op>,
}

impl Pair {
    /// The outcome: ok, fail, or info (also when incomplete).
    pub fn outcome(&self) -> OpType {
        self.complete.as_ref().map_or(OpType::Info, |c| c.kind)
    }
}

/// Pair every client invoke with the next completion of the same process.
pub fn pair(history: &[Op]) -> Result<Vec<Pair>, JepsenError> {
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut pairs: Vec<Pair> = Vec::new();
    for op in history {
        let Process::Client(p) = op.process else {
            continue;
        };
        match op.kind {
            OpType::Invoke => {
                if open.contains_key(&p) {
                    return Err(JepsenError::BadHistory(format!(
                        "process {p} invoked op {} while another was in flight",
                        op.index
                    )));
                }
                open.insert(p, pairs.len());
                pairs.push(Pair {
                    invoke: op.clone(),
                    complete: None,
                });
            }
            _ => {
                let Some(i) = open.remove(&p) else {
                    return Err(JepsenError::BadHistory(format!(
                        "process {p} completed op {} without an invocation",
                        op.index
                    )));
                };
                pairs[i].complete = Some(op.clone());
            }
        }
    }
    Ok(pairs)
}

/// Write a history as JSON lines.
pub fn write_jsonl(path: &Path, history: &[Op]) -> Result<(), JepsenError> {
    let file = std::fs::File::create(path).map_err(|e| JepsenError::io(path, e))?;
    let mut w = std::io::BufWriter::new(file);
    for op in history {
        let line = serde_json::to_string(op).map_err(|e| JepsenError::BadHistory(e.to_string()))?;
        writeln!(w, "{line}").map_err(|e| JepsenError::io(path, e))?;
    }
    w.flush().map_err(|e| JepsenError::io(path, e))
}

/// Read a JSON-lines history.
pub fn read_jsonl(path: &Path) -> Result<Vec<Op>, JepsenError> {
    let file = std::fs::File::open(path).map_err(|e| JepsenError::io(path, e))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| JepsenError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let op: Op = serde_json::from_str(&line)
            .map_err(|e| JepsenError::BadHistory(format!("{}:{}: {e}", path.display(), n + 1)))?;
        out.push(op);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: u64, kind: OpType, t: u64) -> Op {
        Op {
            index: t,
            process: Process::Client(process),
            kind,
            f: "read".into(),
            key: Some("k".into()),
            value: serde_json::Value::Null,
            time_ns: t,
            error: None,
        }
    }

    #[test]
    fn json_shape_is_stable() {
        let o = op(3, OpType::Invoke, 5);
        let s = serde_json::to_string(&o).unwrap();
        assert!(
            s.contains(r#""process":3"#) && s.contains(r#""type":"invoke""#),
            "{s}"
        );
        let n = Op {
            process: Process::Named("nemesis".into()),
            ..o
        };
        let s = serde_json::to_string(&n).unwrap();
        assert!(s.contains(r#""process":"nemesis""#));
        assert_eq!(serde_json::from_str::<Op>(&s).unwrap(), n);
    }

    #[test]
    fn pairs_by_process() {
        let h = vec![
            op(1, OpType::Invoke, 1),
            op(2, OpType::Invoke, 2),
            op(2, OpType::Ok, 3),
            op(1, OpType::Fail, 4),
            op(1, OpType::Invoke, 5),
        ];
        let p = pair(&h).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].outcome(), OpType::Fail);
        assert_eq!(p[1].outcome(), OpType::Ok);
        assert_eq!(p[2].outcome(), OpType::Info);
        assert!(pair(&[op(1, OpType::Ok, 1)]).is_err());
        assert!(pair(&[op(1, OpType::Invoke, 1), op(1, OpType::Invoke, 2)]).is_err());
    }
}
