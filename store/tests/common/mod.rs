//! Shared fixtures of the store's integration tests.

#![allow(dead_code)]

use firetower_store::{Command, ManagerId, ManagerNode, Response};
use openraft::{CommittedLeaderId, LogId};

openraft::declare_raft_types!(
    /// A type configuration with the same associated types as the server's.
    pub TestConfig:
        D = Command,
        R = Response,
        NodeId = ManagerId,
        Node = ManagerNode,
        Entry = openraft::Entry<TestConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Entry = openraft::Entry<TestConfig>;

pub fn log_id(term: u64, index: u64) -> LogId<ManagerId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: openraft::EntryPayload::Blank,
    }
}

pub fn command(term: u64, index: u64, command: Command) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: openraft::EntryPayload::Normal(command),
    }
}
