//! The Raft groups hosted by this manager, by group id.
//!
//! The server side of the transport looks a group up for every incoming RPC; the manager adds
//! groups once it has joined a cluster and removes them at shutdown. Lookups vastly outnumber
//! changes, hence a read-write lock; it is never held across an `await`.
//!
//! Next to each group's Raft instance the registry keeps where the snapshot the group is
//! receiving stands ([`SnapshotReceipt`]), shared by every connection: a leader may send the
//! chunks of one snapshot over successive connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use crate::admission::SnapshotReceipt;
use crate::{GroupId, Raft};

/// Registry of the Raft groups hosted by this manager. Cheap to clone: clones share the registry.
#[derive(Clone, Default)]
pub struct GroupRouter {
    groups: Arc<RwLock<HashMap<GroupId, Hosted>>>,
    votes_held_until: Arc<Mutex<Option<Instant>>>,
}

/// One hosted group: its Raft instance and the snapshot it is receiving.
#[derive(Clone)]
pub(crate) struct Hosted {
    pub(crate) raft: Raft,
    /// Held while a chunk is taken (and, for the last, while the snapshot is installed).
    pub(crate) snapshot: Arc<tokio::sync::Mutex<SnapshotReceipt>>,
}

impl std::fmt::Debug for GroupRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<GroupId> = self.read().keys().copied().collect();
        ids.sort_unstable();
        f.debug_struct("GroupRouter").field("groups", &ids).finish()
    }
}

impl GroupRouter {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hosts `raft` as group `group`, replacing any previous instance of that group.
    pub fn insert(&self, group: GroupId, raft: Raft) {
        let hosted = Hosted {
            raft,
            snapshot: Arc::default(),
        };
        self.write().insert(group, hosted);
    }

    /// The instance of `group`, if hosted here.
    pub fn get(&self, group: GroupId) -> Option<Raft> {
        self.read().get(&group).map(|h| h.raft.clone())
    }

    /// The instance of `group` and its snapshot receipt, if hosted here.
    pub(crate) fn hosted(&self, group: GroupId) -> Option<Hosted> {
        self.read().get(&group).cloned()
    }

    /// Stops routing RPCs to `group` and returns its instance (the caller shuts it down).
    pub fn remove(&self, group: GroupId) -> Option<Raft> {
        self.write().remove(&group).map(|h| h.raft)
    }

    /// Answer no vote request before `until`.
    ///
    /// A follower refuses to vote for `election_timeout_max` after it last heard from its
    /// leader (openraft's leader lease), and leaders rely on that to serve without a round
    /// trip. The lease lives in memory: a manager that restarts would otherwise vote at once
    /// and could help elect a new leader while the old one still counts on its lease. Holding
    /// votes for one `election_timeout_max` after start carries the promise across restarts.
    pub fn hold_votes_until(&self, until: Instant) {
        *self
            .votes_held_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(until);
    }

    /// The instant before which vote requests wait, if any.
    pub fn votes_held_until(&self) -> Option<Instant> {
        *self
            .votes_held_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every hosted group, ordered by group id.
    pub fn groups(&self) -> Vec<(GroupId, Raft)> {
        let mut groups: Vec<(GroupId, Raft)> = self
            .read()
            .iter()
            .map(|(g, h)| (*g, h.raft.clone()))
            .collect();
        groups.sort_unstable_by_key(|(g, _)| *g);
        groups
    }

    // The map stays consistent even if a holder panicked (every operation is a single map
    // call), so a poisoned lock is safe to keep using.
    fn read(&self) -> RwLockReadGuard<'_, HashMap<GroupId, Hosted>> {
        self.groups.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<GroupId, Hosted>> {
        self.groups.write().unwrap_or_else(PoisonError::into_inner)
    }
}
