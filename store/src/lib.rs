//! Durable storage of a Firetower topic manager.
//!
//! ```text
//!   openraft ──append/vote/truncate/purge──▶ LogStore<C> (one per group) ─┐
//!                                                                         ▼
//!                                             Wal<C>: one segmented write-ahead log per
//!                                             manager, group commit, fdatasync, CRC per record
//!   openraft ──apply/snapshot──────────────▶ StateMachine<C> (one per group)
//!                                             └─ sled trees `g{N}.*` in StateStore (one sled::Db)
//! ```
//!
//! Entry points: [`Wal::open`] then [`Wal::log_store`]; [`StateStore::open`] then
//! [`StateStore::state_machine`]; [`StateMachine::reader`] gives a cheap read handle on the
//! subscription table for the server.
//!
//! Both open the manager's data directory: the log lives in `<dir>/wal/`, the state machine
//! in `<dir>/sled/` and `<dir>/snapshots/g{N}/`.
//!
//! The log and vote are on disk before openraft is told they are. The sled state machine may
//! lag after a crash; it is rebuilt from the last snapshot and the log. This crate knows nothing
//! about networking or the number of groups.

#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod codec;
mod error;
mod follower;
mod history;
mod log_store;
mod snapshot;
mod state_machine;
mod types;
mod wal;

pub use error::{StoreError, WalError};
pub use history::{
    Appended, ApplyEvent, ApplyObserver, HistoryRead, HistoryRule, PresenceChange, Rules,
    HISTORY_BYTES_PER_GROUP,
};
pub use log_store::LogStore;
pub use snapshot::check_snapshot_data;
pub use state_machine::{SnapshotBuilder, StateMachine, StateStore, TableReader};
pub use types::{
    Ban, Command, Controls, GatewayId, KickRecord, ManagerId, ManagerNode, Response, Session,
    KICKS_KEPT, MAX_BANS, MAX_BATCH_DEPTH, MAX_HISTORY_SIZE, MAX_HISTORY_TTL_MS,
};
pub use wal::{FsyncObserver, Wal, WalOptions};
/// Test seam: make a log's next write or sync fail (feature `fault-injection`).
#[cfg(any(test, feature = "fault-injection"))]
pub mod faults {
    pub use crate::wal::faults::{inject_fault, Fault, EIO, ENOSPC};
}

/// The openraft type configurations this store works with: the server's own
/// `firetower_raft::TypeConfig`, or a test configuration with the same associated types.
pub trait StoreTypeConfig:
    openraft::RaftTypeConfig<
    D = Command,
    R = Response,
    NodeId = ManagerId,
    Node = ManagerNode,
    Entry = openraft::Entry<Self>,
    SnapshotData = std::io::Cursor<Vec<u8>>,
    AsyncRuntime = openraft::TokioRuntime,
>
{
}

impl<C> StoreTypeConfig for C where
    C: openraft::RaftTypeConfig<
        D = Command,
        R = Response,
        NodeId = ManagerId,
        Node = ManagerNode,
        Entry = openraft::Entry<C>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
    >
{
}
