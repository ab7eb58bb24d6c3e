//! Raft for Firetower managers: the openraft type configuration, the topic -> group function,
//! and Raft RPCs between managers over QUIC.

use std::io::Cursor;

pub use firetower_store::{Command, ManagerId, ManagerNode, Response};

/// A Raft group (shard of the topic space). Groups are numbered `0..G`; `G` is fixed at init.
pub type GroupId = u32;

openraft::declare_raft_types!(
    /// Openraft type configuration of every Firetower group.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = ManagerId,
        Node = ManagerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft group instance on this manager.
pub type Raft = openraft::Raft<TypeConfig>;
