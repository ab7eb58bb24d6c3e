//! The replicated subscription table of each group, in sled, and openraft's state machine.
//!
//! ```text
//!   sled::Db (one per manager, <data-dir>/sled)
//!     g{N}.subs        topic ++ 0x00 ++ gateway(u64 BE)  -> ()      who wants a topic
//!     g{N}.by_gateway  gateway(u64 BE) ++ topic          -> ()      what a gateway wants
//!     g{N}.topics      topic                             -> count   subscribers per topic
//!     g{N}.sessions    gateway(u64 BE)                   -> Session
//!     g{N}.blacklist   gateway(u64 BE)                   -> ()
//!     g{N}.meta        key                               -> value
//!                      ops/ban/{id:020}                  -> Ban         (group 0: operator
//!                      ops/kick/{seq:020}                -> KickRecord   controls, see
//!                      ops/ban_next, ops/ban_count,                      `Command::AddBan`;
//!                      ops/bans_version, ops/kick_last   -> u64 BE       SetMeta refuses ops/)
//!     g{N}.sm          last_applied, membership, topic_count
//! ```
//!
//! The table lives in memory (one ordered map per group, the same keys as in sled) and sled
//! follows it:
//!
//! ```text
//!   apply(entries) ─▶ Overlay (pending writes) ─▶ commit: memory map (readers see it now)
//!                                                   └──▶ SledFollower: writes merged per key,
//!                                                        one sled batch per group every
//!                                                        FOLLOW_INTERVAL, `last_applied` included
//! ```
//!
//! A batch of entries is computed against an overlay of pending writes (so an entry sees the
//! effects of earlier ones in the same batch), then committed to memory, and later to sled as
//! one atomic batch per group that carries `last_applied`: sled never shows half a batch after
//! a crash, only an older state. sled is not synced per apply (and every sled batch costs
//! sled a write of its own, so they are merged); after a crash it lags, and openraft
//! re-applies from the log (or the snapshot when the log was already purged). The Raft log
//! is the durable record; sled only shortens the replay.
//!
//! `topic ++ 0x00` is not a unique prefix when topics contain NUL bytes; lookups therefore
//! also check the key length, which makes them exact.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Cursor;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};

use crate::codec::{decode, encode};
use crate::error::StoreError;
use crate::follower::SledFollower;
use crate::history::{
    self, Appended, ApplyEvent, ApplyObserver, HistoryRead, HistoryRule, PresenceChange, Rules,
};
use crate::snapshot::{Meta, SnapshotSlot, TableSnapshot};
use crate::types::{
    Ban, BanRecord, Command, Controls, GatewayId, KickRecord, ManagerId, ManagerNode, Response,
    Session, KICKS_KEPT, MAX_BANS, MAX_HISTORY_SIZE, MAX_HISTORY_TTL_MS,
};
use crate::StoreTypeConfig;

const LAST_APPLIED: &[u8] = b"last_applied";
/// sled's page cache.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// How long opening waits for sled's file lock (see [`open_sled`]).
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const MEMBERSHIP: &[u8] = b"membership";
const TOPIC_COUNT: &[u8] = b"topic_count";

/// Meta keys under this prefix belong to the operator controls (bans, kicks): they are kept
/// in the meta table so that snapshots, restores and reopen carry them without a format
/// change, and `SetMeta` may not touch them.
const OPS_PREFIX: &str = "ops/";
const BAN_PREFIX: &str = "ops/ban/";
const KICK_PREFIX: &str = "ops/kick/";
const BAN_NEXT: &str = "ops/ban_next";
const BAN_COUNT: &str = "ops/ban_count";
const BANS_VERSION: &str = "ops/bans_version";
const KICK_LAST: &str = "ops/kick_last";

/// The meta key of ban `id` (zero-padded, so keys sort by id).
fn ban_key(id: u64) -> Vec<u8> {
    format!("{BAN_PREFIX}{id:020}").into_bytes()
}

/// The meta key of kick `seq`.
fn kick_key(seq: u64) -> Vec<u8> {
    format!("{KICK_PREFIX}{seq:020}").into_bytes()
}

type Membership = StoredMembership<ManagerId, ManagerNode>;

/// The state machine database of one manager: one sled database for all groups, and their
/// snapshot files. Cheap to clone.
#[derive(Clone)]
pub struct StateStore {
    db: sled::Db,
    follower: Arc<SledFollower>,
    snapshot_root: PathBuf,
    /// Told of what every group's applies did (set once the manager's services exist).
    observer: Arc<OnceLock<Arc<dyn ApplyObserver>>>,
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStore")
            .field("snapshot_root", &self.snapshot_root)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// Opens (or creates) the database in `dir/sled` and snapshots under `dir/snapshots`.
    pub fn open(dir: &Path) -> Result<StateStore, StoreError> {
        let db = open_sled(&dir.join("sled"))?;
        let snapshot_root = dir.join("snapshots");
        std::fs::create_dir_all(&snapshot_root).map_err(|source| StoreError::Io {
            path: snapshot_root.clone(),
            source,
        })?;
        let follower = SledFollower::start(tagged(Tree::Sm, LAST_APPLIED))?;
        Ok(StateStore {
            db,
            follower,
            snapshot_root,
            observer: Arc::new(OnceLock::new()),
        })
    }

    /// The state machine of `group`. If the latest snapshot is newer than what sled holds
    /// (sled lost writes in a crash after the log was purged), the table is restored from it.
    pub fn state_machine<C: StoreTypeConfig>(
        &self,
        group: u32,
    ) -> Result<StateMachine<C>, StoreError> {
        let trees = GroupTrees::open(&self.db, &self.follower, group)?;
        let (slot, snapshot) = SnapshotSlot::open(self.snapshot_root.join(format!("g{group}")))?;
        let (mut last_applied, mut membership) = trees.applied_state()?;
        if last_applied.is_none() && snapshot.is_none() && !trees.is_empty() {
            // A crash in the middle of a round written in several batches (follower.rs): the
            // tree is partial. Without a snapshot the log was never purged, so openraft
            // re-applies all of it onto an empty table.
            tracing::warn!(
                group,
                "state machine in sled is partial (a crash while it was being written); \
                 re-applying the log from the start"
            );
            trees.clear()?;
            membership = Membership::default();
        }
        if let Some((meta, data)) = snapshot {
            if meta.last_log_id > last_applied {
                tracing::warn!(
                    group,
                    snapshot = ?meta.last_log_id,
                    sled = ?last_applied,
                    "state machine is behind its snapshot; restoring the snapshot"
                );
                trees.restore(&TableSnapshot::decode(&data)?, &meta)?;
                last_applied = meta.last_log_id;
                membership = meta.last_membership;
            }
        }
        Ok(StateMachine {
            group,
            trees,
            slot: Arc::new(slot),
            last_applied,
            membership,
            observer: Arc::clone(&self.observer),
            _config: PhantomData,
        })
    }

    /// Sets the observer of every group's applies (once; later calls are ignored). Applies
    /// before it is set tell nobody.
    pub fn set_observer(&self, observer: Arc<dyn ApplyObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Flushes sled to disk. Not needed for safety (the log is durable); useful before a
    /// planned shutdown to shorten the next startup.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.follower.write_pending()?;
        self.db.flush()?;
        Ok(())
    }
}

/// Opens sled, waiting a little for its file lock. sled releases the lock of a closed
/// database only once its deferred garbage is collected, which may lag the last handle's drop
/// when other threads wrote to it (the follower's): a store closed and opened again in the
/// same process (a restart inside tests or an embedding program) would otherwise fail. A
/// second process on the same directory still gets the lock error, after the wait.
fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        // sled is only read when a manager starts (the tables are served from memory), so
        // its page cache need not hold them a second time.
        let opened = sled::Config::default()
            .path(path)
            .cache_capacity(SLED_CACHE_BYTES)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

/// openraft's state machine for one group: applies entries to the group's table and makes and
/// installs snapshots.
pub struct StateMachine<C: StoreTypeConfig> {
    group: u32,
    trees: GroupTrees,
    slot: Arc<SnapshotSlot>,
    last_applied: Option<LogId<ManagerId>>,
    membership: Membership,
    observer: Arc<OnceLock<Arc<dyn ApplyObserver>>>,
    _config: PhantomData<fn() -> C>,
}

impl<C: StoreTypeConfig> fmt::Debug for StateMachine<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachine")
            .field("group", &self.group)
            .field("last_applied", &self.last_applied)
            .finish_non_exhaustive()
    }
}

impl<C: StoreTypeConfig> StateMachine<C> {
    /// A read handle on this group's applied table.
    pub fn reader(&self) -> TableReader {
        TableReader {
            trees: self.trees.clone(),
        }
    }

    /// The group of this state machine.
    pub fn group(&self) -> u32 {
        self.group
    }

    fn apply_batch(
        &mut self,
        entries: impl IntoIterator<Item = openraft::Entry<C>>,
    ) -> Result<Vec<Response>, StoreError> {
        let mut tx = Overlay::new(&self.trees);
        let mut ctx = ApplyCtx::default();
        let mut responses = Vec::new();
        let mut last_applied = self.last_applied;
        let mut membership = None;
        for entry in entries {
            last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(command) => {
                    ctx.log_id = (entry.log_id.leader_id.term, entry.log_id.index);
                    apply_command(&mut tx, &command, &mut ctx)?
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    Response::None
                }
            };
            responses.push(response);
        }
        if responses.is_empty() {
            return Ok(responses);
        }
        tx.put(Tree::Sm, LAST_APPLIED.to_vec(), encode(&last_applied)?);
        // Written only when it changed (rare); the stored one stays valid otherwise.
        if let Some(membership) = &membership {
            tx.put(Tree::Sm, MEMBERSHIP.to_vec(), encode(membership)?);
        }
        tx.commit()?;
        self.last_applied = last_applied;
        if let Some(membership) = membership {
            self.membership = membership;
        }
        if !ctx.events.is_empty() {
            if let Some(observer) = self.observer.get() {
                observer.applied(self.group, ctx.events);
            }
        }
        Ok(responses)
    }
}

fn write_sm(e: StoreError) -> StorageError<ManagerId> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn read_snapshot_err(e: StoreError) -> StorageError<ManagerId> {
    StorageIOError::read_snapshot(None, AnyError::new(&e)).into()
}

fn write_snapshot_err(e: StoreError) -> StorageError<ManagerId> {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

/// Runs blocking file work (snapshot writes with fsync) off the async worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(format!("snapshot task failed: {e}")),
        })
    })
}

impl<C: StoreTypeConfig> RaftStateMachine<C> for StateMachine<C> {
    type SnapshotBuilder = SnapshotBuilder<C>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<ManagerId>>, Membership), StorageError<ManagerId>> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<ManagerId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_batch(entries).map_err(write_sm)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The table is read now, between two applies, because openraft runs the builder
        // concurrently with later applies and sled has no point-in-time views.
        SnapshotBuilder {
            group: self.group,
            table: self.trees.export(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            slot: Arc::clone(&self.slot),
            _config: PhantomData,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<ManagerId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<ManagerId>> {
        let data = snapshot.into_inner();
        let table = TableSnapshot::decode(&data).map_err(write_snapshot_err)?;
        // The file first: if we crash while replacing the trees, the next open sees a
        // snapshot newer than sled and restores it.
        let slot = Arc::clone(&self.slot);
        let file_meta = meta.clone();
        blocking(move || slot.replace(&file_meta, &data))
            .await
            .map_err(write_snapshot_err)?;
        self.trees
            .restore(&table, meta)
            .map_err(write_snapshot_err)?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<C>>, StorageError<ManagerId>> {
        let slot = Arc::clone(&self.slot);
        let current = blocking(move || slot.read())
            .await
            .map_err(read_snapshot_err)?;
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Builds a snapshot from a copy of the table taken by `get_snapshot_builder`.
pub struct SnapshotBuilder<C: StoreTypeConfig> {
    group: u32,
    table: Result<TableSnapshot, StoreError>,
    last_applied: Option<LogId<ManagerId>>,
    membership: Membership,
    slot: Arc<SnapshotSlot>,
    _config: PhantomData<fn() -> C>,
}

impl<C: StoreTypeConfig> fmt::Debug for SnapshotBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotBuilder")
            .field("group", &self.group)
            .field("last_applied", &self.last_applied)
            .finish_non_exhaustive()
    }
}

impl<C: StoreTypeConfig> RaftSnapshotBuilder<C> for SnapshotBuilder<C> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<ManagerId>> {
        let data = match &self.table {
            Ok(table) => table.encode().map_err(write_snapshot_err)?,
            Err(e) => return Err(StorageIOError::write_snapshot(None, AnyError::new(e)).into()),
        };
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let at = self
            .last_applied
            .map(|l| format!("{}-{}", l.leader_id, l.index))
            .unwrap_or_else(|| "empty".into());
        let meta = Meta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: format!("g{}-{at}-{unique}", self.group),
        };
        let slot = Arc::clone(&self.slot);
        let (file_meta, file_data) = (meta.clone(), data.clone());
        let written = blocking(move || slot.replace(&file_meta, &file_data))
            .await
            .map_err(write_snapshot_err)?;
        if !written {
            tracing::info!(
                group = self.group,
                "a newer snapshot was installed meanwhile; keeping it"
            );
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// A cheap, cloneable read handle on one group's applied table. Reads go straight to sled;
/// no Raft is involved, so they may be slightly behind the leader's commits.
#[derive(Clone)]
pub struct TableReader {
    trees: GroupTrees,
}

impl fmt::Debug for TableReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableReader")
            .field("group", &self.trees.group)
            .finish()
    }
}

impl TableReader {
    /// The gateways subscribed to `topic`, sorted.
    pub fn gateways(&self, topic: &str) -> Result<Vec<GatewayId>, StoreError> {
        let prefix = topic_prefix(topic.as_bytes());
        let mut out = Vec::new();
        for item in self.trees.scan(Tree::Subs, &prefix) {
            let (key, _) = item?;
            if let Some(gateway) = subscriber_of(&key, prefix.len()) {
                out.push(gateway);
            }
        }
        Ok(out)
    }

    /// The topics `gateway` is subscribed to, sorted.
    pub fn topics_of(&self, gateway: GatewayId) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees.scan(Tree::ByGateway, &gateway.to_be_bytes()) {
            let (key, _) = item?;
            out.push(utf8(&key[8..], &self.trees.name(Tree::ByGateway))?);
        }
        Ok(out)
    }

    /// The gateways with at least one subscription in this group, sorted: one look-up per
    /// gateway, whatever its number of topics.
    pub fn subscribed_gateways(&self) -> Result<Vec<GatewayId>, StoreError> {
        let tree = self.trees.name(Tree::ByGateway);
        let tag = Tree::ByGateway as u8;
        let map = self.trees.read();
        let mut out = Vec::new();
        let mut from = tagged(Tree::ByGateway, &[]);
        while let Some((key, _)) = map.range(from..).next() {
            if key.first() != Some(&tag) {
                break;
            }
            let gateway = gateway_of(key.get(1..9).unwrap_or_default(), &tree)?;
            out.push(gateway);
            match gateway.checked_add(1) {
                Some(next) => from = tagged(Tree::ByGateway, &next.to_be_bytes()),
                None => break,
            }
        }
        Ok(out)
    }

    /// The session of `gateway`, if open.
    pub fn session(&self, gateway: GatewayId) -> Result<Option<Session>, StoreError> {
        match self.trees.get(Tree::Sessions, &gateway.to_be_bytes())? {
            Some(v) => Ok(Some(decode(&v, &self.trees.name(Tree::Sessions))?)),
            None => Ok(None),
        }
    }

    /// Every open session, by gateway.
    pub fn sessions(&self) -> Result<Vec<(GatewayId, Session)>, StoreError> {
        let tree = self.trees.name(Tree::Sessions);
        let mut out = Vec::new();
        for item in self.trees.scan(Tree::Sessions, &[]) {
            let (key, value) = item?;
            out.push((gateway_of(&key, &tree)?, decode(&value, &tree)?));
        }
        Ok(out)
    }

    /// Whether `gateway` is blacklisted.
    pub fn is_blacklisted(&self, gateway: GatewayId) -> Result<bool, StoreError> {
        self.trees.contains(Tree::Blacklist, &gateway.to_be_bytes())
    }

    /// The metadata value under `key`.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .trees
            .get(Tree::Meta, key.as_bytes())?
            .map(|v| v.to_vec()))
    }

    /// The operator controls held (group 0): every ban and the version of the list, and the
    /// newest kick's `seq`, all as of one applied state.
    pub fn controls(&self) -> Result<Controls, StoreError> {
        let name = self.trees.name(Tree::Meta);
        let map = self.trees.read();
        let number = |key: &str| -> Result<u64, StoreError> {
            match map.get(&tagged(Tree::Meta, key.as_bytes())) {
                Some(v) => count_of(v, &name),
                None => Ok(0),
            }
        };
        let from = tagged(Tree::Meta, BAN_PREFIX.as_bytes());
        let mut bans = Vec::new();
        for (key, value) in map.range(from.clone()..) {
            if !key.starts_with(&from) {
                break;
            }
            bans.push(decode_ban(value, &name)?);
        }
        Ok(Controls {
            bans_version: number(BANS_VERSION)?,
            bans,
            last_kick: number(KICK_LAST)?,
        })
    }

    /// `(bans_version, last_kick)` of [`TableReader::controls`], without reading the bans:
    /// cheap enough to poll.
    pub fn control_versions(&self) -> Result<(u64, u64), StoreError> {
        let name = self.trees.name(Tree::Meta);
        let map = self.trees.read();
        let number = |key: &str| -> Result<u64, StoreError> {
            match map.get(&tagged(Tree::Meta, key.as_bytes())) {
                Some(v) => count_of(v, &name),
                None => Ok(0),
            }
        };
        Ok((number(BANS_VERSION)?, number(KICK_LAST)?))
    }

    /// The kicks kept whose `seq` is above `seq`, oldest first (at most [`KICKS_KEPT`]).
    pub fn kicks_after(&self, seq: u64) -> Result<Vec<KickRecord>, StoreError> {
        let name = self.trees.name(Tree::Meta);
        let map = self.trees.read();
        let prefix = tagged(Tree::Meta, KICK_PREFIX.as_bytes());
        let from = tagged(Tree::Meta, &kick_key(seq.saturating_add(1)));
        let mut out = Vec::new();
        for (key, value) in map.range(from..) {
            if !key.starts_with(&prefix) {
                break;
            }
            out.push(decode::<KickRecord>(value, &name)?);
        }
        Ok(out)
    }

    /// The kept messages of `topic` with offsets above `after` (at most `limit`, and about
    /// `max_bytes` of payload), leaving out those expired at `now_ms`.
    pub fn history(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> Result<HistoryRead, StoreError> {
        let name = self.trees.name(Tree::Meta);
        let map = self.trees.read();
        history::read(
            &map, meta_tag, &name, topic, after, limit, max_bytes, now_ms,
        )
    }

    /// The users present on `topic` and their connections, over every gateway.
    pub fn presence(&self, topic: &str) -> Vec<(String, u32)> {
        let map = self.trees.read();
        history::presence_of(&map, meta_tag, topic)
    }

    /// The history and presence rules (group 0).
    pub fn rules(&self) -> Result<Rules, StoreError> {
        let name = self.trees.name(Tree::Meta);
        let map = self.trees.read();
        history::read_rules(&map, meta_tag, &name)
    }

    /// The version of [`TableReader::rules`], cheap enough to check on every publish.
    pub fn rules_version(&self) -> Result<u64, StoreError> {
        match self
            .trees
            .get(Tree::Meta, history::RULES_VERSION.as_bytes())?
        {
            Some(v) => count_of(&v, &self.trees.name(Tree::Meta)),
            None => Ok(0),
        }
    }

    /// The number of topics with at least one subscriber.
    pub fn topic_count(&self) -> Result<u64, StoreError> {
        match self.trees.get(Tree::Sm, TOPIC_COUNT)? {
            Some(v) => count_of(&v, &self.trees.name(Tree::Sm)),
            None => Ok(0),
        }
    }
}

/// The tables of one group. They share one sled tree, `g{N}`, each under a one-byte key
/// prefix (its [`Tree`] discriminant), so that a batch of entries is applied with one atomic
/// `apply_batch` instead of a multi-tree transaction, which costs several times more.
///
/// Reads and applies use the in-memory copy, `mem`; sled follows through the
/// [`SledFollower`].
#[derive(Clone)]
struct GroupTrees {
    group: u32,
    tree: sled::Tree,
    mem: Arc<RwLock<BTreeMap<Vec<u8>, Vec<u8>>>>,
    follower: Arc<SledFollower>,
}

/// Names a table of [`GroupTrees`]; the discriminant is its key prefix and indexes
/// [`Overlay::writes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tree {
    Subs = 0,
    ByGateway = 1,
    Topics = 2,
    Sessions = 3,
    Blacklist = 4,
    Meta = 5,
    Sm = 6,
}

const TREE_COUNT: usize = 7;

impl Tree {
    const ALL: [Tree; TREE_COUNT] = [
        Tree::Subs,
        Tree::ByGateway,
        Tree::Topics,
        Tree::Sessions,
        Tree::Blacklist,
        Tree::Meta,
        Tree::Sm,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Tree::Subs => "subs",
            Tree::ByGateway => "by_gateway",
            Tree::Topics => "topics",
            Tree::Sessions => "sessions",
            Tree::Blacklist => "blacklist",
            Tree::Meta => "meta",
            Tree::Sm => "sm",
        }
    }
}

/// The tagged key of `key` in the meta table (history.rs's readers address it with this).
fn meta_tag(key: &[u8]) -> Vec<u8> {
    tagged(Tree::Meta, key)
}

/// The sled key of `key` in table `t`.
fn tagged(t: Tree, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(t as u8);
    k.extend_from_slice(key);
    k
}

impl GroupTrees {
    /// Opens the group's sled tree and reads it into memory.
    fn open(
        db: &sled::Db,
        follower: &Arc<SledFollower>,
        group: u32,
    ) -> Result<GroupTrees, StoreError> {
        let tree = db.open_tree(format!("g{group}"))?;
        let mut mem = BTreeMap::new();
        for item in tree.iter() {
            let (k, v) = item?;
            mem.insert(k.to_vec(), v.to_vec());
        }
        Ok(GroupTrees {
            group,
            tree,
            mem: Arc::new(RwLock::new(mem)),
            follower: Arc::clone(follower),
        })
    }

    fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Empties the group's table, in memory and in sled, now.
    fn clear(&self) -> Result<(), StoreError> {
        self.follower
            .replace(self.group, &self.tree, &BTreeMap::new())?;
        self.mem
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        Ok(())
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.mem.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, t: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read().get(&tagged(t, key)).cloned())
    }

    fn contains(&self, t: Tree, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.read().contains_key(&tagged(t, key)))
    }

    /// Entries of table `t` whose key starts with `prefix`, keys without the table tag, as of
    /// one moment.
    fn scan(
        &self,
        t: Tree,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> {
        let from = tagged(t, prefix);
        let found: Vec<(Vec<u8>, Vec<u8>)> = self
            .read()
            .range(from.clone()..)
            .take_while(|(k, _)| k.starts_with(&from))
            .map(|(k, v)| (k[1..].to_vec(), v.clone()))
            .collect();
        found.into_iter().map(Ok)
    }

    /// Applies `writes` (tagged keys) to memory now and hands them to the sled follower.
    fn write(&self, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
        {
            let mut mem = self.mem.write().unwrap_or_else(PoisonError::into_inner);
            for (key, value) in &writes {
                match value {
                    Some(v) => mem.insert(key.clone(), v.clone()),
                    None => mem.remove(key),
                };
            }
        }
        self.follower.follow(self.group, &self.tree, writes);
    }

    fn name(&self, t: Tree) -> String {
        format!("g{}.{}", self.group, t.suffix())
    }

    fn applied_state(&self) -> Result<(Option<LogId<ManagerId>>, Membership), StoreError> {
        let name = self.name(Tree::Sm);
        let last_applied = match self.get(Tree::Sm, LAST_APPLIED)? {
            Some(v) => decode(&v, &name)?,
            None => None,
        };
        let membership = match self.get(Tree::Sm, MEMBERSHIP)? {
            Some(v) => decode(&v, &name)?,
            None => Membership::default(),
        };
        Ok((last_applied, membership))
    }

    /// Copies the whole table out.
    fn export(&self) -> Result<TableSnapshot, StoreError> {
        let mut table = TableSnapshot::default();
        let subs_name = self.name(Tree::Subs);
        for item in self.scan(Tree::Subs, &[]) {
            let (key, _) = item?;
            let Some(split) = key.len().checked_sub(9) else {
                return Err(StoreError::CorruptValue {
                    tree: subs_name,
                    detail: "key too short".into(),
                });
            };
            let topic = utf8(&key[..split], &subs_name)?;
            let gateway = gateway_of(&key[split + 1..], &subs_name)?;
            match table.subscriptions.last_mut() {
                Some((last, gateways)) if *last == topic => gateways.push(gateway),
                _ => table.subscriptions.push((topic, vec![gateway])),
            }
        }
        let sessions_name = self.name(Tree::Sessions);
        for item in self.scan(Tree::Sessions, &[]) {
            let (key, value) = item?;
            table.sessions.push((
                gateway_of(&key, &sessions_name)?,
                decode(&value, &sessions_name)?,
            ));
        }
        let blacklist_name = self.name(Tree::Blacklist);
        for item in self.scan(Tree::Blacklist, &[]) {
            let (key, _) = item?;
            table.blacklist.push(gateway_of(&key, &blacklist_name)?);
        }
        let meta_name = self.name(Tree::Meta);
        for item in self.scan(Tree::Meta, &[]) {
            let (key, value) = item?;
            table.meta.push((utf8(&key, &meta_name)?, value.to_vec()));
        }
        Ok(table)
    }

    /// Replaces the whole table with `table` as of `meta`: one atomic batch after the clear.
    /// A crash between the two leaves no `last_applied`, so the next open restores again.
    fn restore(&self, table: &TableSnapshot, meta: &Meta) -> Result<(), StoreError> {
        let mut batch = BTreeMap::new();
        let mut topic_count = 0u64;
        for (topic, gateways) in &table.subscriptions {
            for gateway in gateways {
                put(
                    &mut batch,
                    tagged(Tree::Subs, &sub_key(topic.as_bytes(), *gateway)),
                    [],
                );
                put(
                    &mut batch,
                    tagged(Tree::ByGateway, &gateway_key(*gateway, topic.as_bytes())),
                    [],
                );
            }
            if !gateways.is_empty() {
                put(
                    &mut batch,
                    tagged(Tree::Topics, topic.as_bytes()),
                    (gateways.len() as u64).to_be_bytes(),
                );
                topic_count += 1;
            }
        }
        for (gateway, session) in &table.sessions {
            put(
                &mut batch,
                tagged(Tree::Sessions, &gateway.to_be_bytes()),
                encode(session)?,
            );
        }
        for gateway in &table.blacklist {
            put(
                &mut batch,
                tagged(Tree::Blacklist, &gateway.to_be_bytes()),
                [],
            );
        }
        for (key, value) in &table.meta {
            put(
                &mut batch,
                tagged(Tree::Meta, key.as_bytes()),
                value.as_slice(),
            );
        }
        put(
            &mut batch,
            tagged(Tree::Sm, TOPIC_COUNT),
            topic_count.to_be_bytes(),
        );
        put(
            &mut batch,
            tagged(Tree::Sm, LAST_APPLIED),
            encode(&meta.last_log_id)?,
        );
        put(
            &mut batch,
            tagged(Tree::Sm, MEMBERSHIP),
            encode(&meta.last_membership)?,
        );
        // sled first (cleared and rewritten at once, whatever it was behind), then memory.
        self.follower.replace(self.group, &self.tree, &batch)?;
        *self.mem.write().unwrap_or_else(PoisonError::into_inner) = batch;
        Ok(())
    }
}

/// `batch.insert` for the restore's map.
fn put(batch: &mut BTreeMap<Vec<u8>, Vec<u8>>, key: Vec<u8>, value: impl AsRef<[u8]>) {
    batch.insert(key, value.as_ref().to_vec());
}

/// Writes pending for one batch of entries, read through before sled.
struct Overlay<'t> {
    trees: &'t GroupTrees,
    /// Per tree: key -> new value (`None` = removed).
    writes: [BTreeMap<Vec<u8>, Option<Vec<u8>>>; TREE_COUNT],
}

impl<'t> Overlay<'t> {
    fn new(trees: &'t GroupTrees) -> Overlay<'t> {
        Overlay {
            trees,
            writes: Default::default(),
        }
    }

    fn name(&self, t: Tree) -> String {
        self.trees.name(t)
    }

    fn get(&self, t: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes[t as usize].get(key) {
            Some(pending) => Ok(pending.clone()),
            None => self.trees.get(t, key),
        }
    }

    fn contains(&self, t: Tree, key: &[u8]) -> Result<bool, StoreError> {
        match self.writes[t as usize].get(key) {
            Some(pending) => Ok(pending.is_some()),
            None => self.trees.contains(t, key),
        }
    }

    fn put(&mut self, t: Tree, key: Vec<u8>, value: Vec<u8>) {
        self.writes[t as usize].insert(key, Some(value));
    }

    fn remove(&mut self, t: Tree, key: Vec<u8>) {
        self.writes[t as usize].insert(key, None);
    }

    /// Keys starting with `prefix` as the batch so far sees them, sorted.
    fn keys_with_prefix(&self, t: Tree, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let pending = &self.writes[t as usize];
        let mut keys = std::collections::BTreeSet::new();
        for item in self.trees.scan(t, prefix) {
            let (key, _) = item?;
            if !pending.contains_key(&key) {
                keys.insert(key);
            }
        }
        for (key, value) in pending.range(prefix.to_vec()..) {
            if !key.starts_with(prefix) {
                break;
            }
            if value.is_some() {
                keys.insert(key.clone());
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Writes everything at once: to memory now, to sled with the follower's next batch.
    fn commit(self) -> Result<(), StoreError> {
        let mut writes = BTreeMap::new();
        for (t, pending) in Tree::ALL.into_iter().zip(self.writes) {
            for (key, value) in pending {
                writes.insert(tagged(t, &key), value);
            }
        }
        self.trees.write(writes);
        Ok(())
    }
}

impl history::MetaTable for Overlay<'_> {
    fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(Tree::Meta, key)
    }

    fn meta_put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.put(Tree::Meta, key, value);
    }

    fn meta_remove(&mut self, key: Vec<u8>) {
        self.remove(Tree::Meta, key);
    }

    fn meta_keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        self.keys_with_prefix(Tree::Meta, prefix)
    }

    fn meta_name(&self) -> String {
        self.name(Tree::Meta)
    }
}

/// What applying a batch collects besides the responses.
#[derive(Default)]
struct ApplyCtx {
    /// `(term, index)` of the entry being applied.
    log_id: (u64, u64),
    /// Events for the observer, in log order.
    events: Vec<ApplyEvent>,
}

/// Applies one command. Pure table logic: every outcome is documented on [`Command`].
fn apply_command(
    tx: &mut Overlay<'_>,
    command: &Command,
    ctx: &mut ApplyCtx,
) -> Result<Response, StoreError> {
    let applied = |changed| Ok(Response::Applied { changed });
    let blacklisted = |gateway: GatewayId| Response::Refused {
        reason: format!("gateway {gateway} is blacklisted"),
    };
    match command {
        Command::Batch(commands) => {
            let mut responses = Vec::with_capacity(commands.len());
            for c in commands {
                responses.push(apply_command(tx, c, ctx)?);
            }
            Ok(Response::Batch(responses))
        }
        Command::Subscribe { topic, gateway } => {
            if tx.contains(Tree::Blacklist, &gateway.to_be_bytes())? {
                return Ok(blacklisted(*gateway));
            }
            let key = sub_key(topic.as_bytes(), *gateway);
            if tx.contains(Tree::Subs, &key)? {
                return applied(false);
            }
            tx.put(Tree::Subs, key, Vec::new());
            tx.put(
                Tree::ByGateway,
                gateway_key(*gateway, topic.as_bytes()),
                Vec::new(),
            );
            add_subscriber(tx, topic.as_bytes(), 1)?;
            applied(true)
        }
        Command::Unsubscribe { topic, gateway } => {
            if tx.contains(Tree::Blacklist, &gateway.to_be_bytes())? {
                return Ok(blacklisted(*gateway));
            }
            applied(remove_subscription(tx, topic.as_bytes(), *gateway)?)
        }
        Command::OpenSession {
            gateway,
            epoch,
            lease_ms,
        } => {
            if tx.contains(Tree::Blacklist, &gateway.to_be_bytes())? {
                return Ok(blacklisted(*gateway));
            }
            let key = gateway.to_be_bytes().to_vec();
            let stored: Option<Session> = match tx.get(Tree::Sessions, &key)? {
                Some(v) => Some(decode(&v, &tx.trees.name(Tree::Sessions))?),
                None => None,
            };
            if let Some(stored) = stored {
                if stored.epoch > *epoch {
                    return Ok(Response::Refused {
                        reason: format!(
                            "session epoch {epoch} of gateway {gateway} is older than its current epoch {}",
                            stored.epoch
                        ),
                    });
                }
            }
            let session = Session {
                epoch: *epoch,
                lease_ms: *lease_ms,
            };
            if stored == Some(session) {
                return applied(false);
            }
            tx.put(Tree::Sessions, key, encode(&session)?);
            applied(true)
        }
        Command::ExpireSession { gateway, epoch } => {
            let key = gateway.to_be_bytes().to_vec();
            let stored: Option<Session> = match tx.get(Tree::Sessions, &key)? {
                Some(v) => Some(decode(&v, &tx.trees.name(Tree::Sessions))?),
                None => None,
            };
            if stored.is_none_or(|s| s.epoch != *epoch) {
                return applied(false);
            }
            tx.remove(Tree::Sessions, key);
            for key in tx.keys_with_prefix(Tree::ByGateway, &gateway.to_be_bytes())? {
                remove_subscription(tx, &key[8..], *gateway)?;
            }
            // Its users leave the topics where it held their last connection (once: the
            // entries go with this command).
            for (topic, user) in history::drop_gateway_presence(tx, *gateway)? {
                let gateways = gateways_at(tx, &topic)?;
                ctx.events.push(ApplyEvent::Presence(PresenceChange {
                    topic,
                    user,
                    joined: false,
                    gateways,
                }));
            }
            applied(true)
        }
        Command::Blacklist { gateway, blocked } => {
            let key = gateway.to_be_bytes().to_vec();
            let was = tx.contains(Tree::Blacklist, &key)?;
            if *blocked {
                tx.put(Tree::Blacklist, key, Vec::new());
            } else {
                tx.remove(Tree::Blacklist, key);
            }
            applied(was != *blocked)
        }
        Command::SetMeta { key, .. } if key.starts_with(OPS_PREFIX) => Ok(Response::Refused {
            reason: format!(
                "meta key {key:?}: the {OPS_PREFIX} keys belong to the operator controls"
            ),
        }),
        Command::AddBan { ban } => add_ban(tx, ban),
        Command::RemoveBan { id } => {
            let key = ban_key(*id);
            if !tx.contains(Tree::Meta, &key)? {
                return Ok(Response::Refused {
                    reason: format!("there is no ban {id} (see `cluster ban list`)"),
                });
            }
            tx.remove(Tree::Meta, key);
            let count = meta_number(tx, BAN_COUNT)?;
            put_number(tx, BAN_COUNT, count.saturating_sub(1));
            bump(tx, BANS_VERSION)?;
            applied(true)
        }
        Command::Kick { user, at_ms } => {
            let seq = meta_number(tx, KICK_LAST)?.saturating_add(1);
            let record = KickRecord {
                seq,
                user: user.clone(),
                at_ms: *at_ms,
            };
            tx.put(Tree::Meta, kick_key(seq), encode(&record)?);
            if seq > KICKS_KEPT {
                tx.remove(Tree::Meta, kick_key(seq - KICKS_KEPT));
            }
            put_number(tx, KICK_LAST, seq);
            applied(true)
        }
        Command::SetHistory {
            pattern,
            size,
            ttl_ms,
        } => {
            let rule = HistoryRule {
                size: (*size).clamp(1, MAX_HISTORY_SIZE),
                ttl_ms: (*ttl_ms).clamp(1, MAX_HISTORY_TTL_MS),
            };
            tx.put(
                Tree::Meta,
                history::rule_key(history::HISTORY_RULE_PREFIX, pattern),
                encode(&rule)?,
            );
            bump(tx, history::RULES_VERSION)?;
            applied(true)
        }
        Command::RemoveHistory { pattern } => {
            let key = history::rule_key(history::HISTORY_RULE_PREFIX, pattern);
            if !tx.contains(Tree::Meta, &key)? {
                return Ok(Response::Refused {
                    reason: format!("no history rule for {pattern:?}"),
                });
            }
            tx.remove(Tree::Meta, key);
            bump(tx, history::RULES_VERSION)?;
            applied(true)
        }
        Command::SetPresence { pattern, enabled } => {
            let key = history::rule_key(history::PRESENCE_RULE_PREFIX, pattern);
            let had = tx.contains(Tree::Meta, &key)?;
            if had == *enabled {
                return applied(false);
            }
            if *enabled {
                tx.put(Tree::Meta, key, Vec::new());
            } else {
                tx.remove(Tree::Meta, key);
            }
            bump(tx, history::RULES_VERSION)?;
            applied(true)
        }
        Command::HistoryAppend {
            topic,
            data,
            json,
            at_ms,
            size,
            ttl_ms,
        } => {
            let (offset, epoch) =
                history::append(tx, ctx.log_id, topic, data, *json, *at_ms, *size, *ttl_ms)?;
            let gateways = gateways_at(tx, topic)?;
            let term = ctx.log_id.0;
            ctx.events.push(ApplyEvent::Appended(Appended {
                topic: topic.clone(),
                data: bytes::Bytes::copy_from_slice(data),
                json: *json,
                term,
                offset,
                epoch: epoch.clone(),
                gateways: gateways.clone(),
            }));
            Ok(Response::HistoryAppended {
                offset,
                epoch,
                term,
                gateways,
            })
        }
        Command::SetPresenceCount {
            topic,
            user,
            gateway,
            connections,
        } => {
            if tx.contains(Tree::Blacklist, &gateway.to_be_bytes())? {
                return Ok(blacklisted(*gateway));
            }
            let change = history::set_presence(tx, topic, user, *gateway, *connections)?;
            if let Some(joined) = change {
                ctx.events.push(ApplyEvent::Presence(PresenceChange {
                    topic: topic.clone(),
                    user: user.clone(),
                    joined,
                    gateways: gateways_at(tx, topic)?,
                }));
            }
            Ok(Response::Presence { change })
        }
        Command::SetMeta { key, value } => {
            let old = tx.get(Tree::Meta, key.as_bytes())?;
            if value.is_empty() {
                tx.remove(Tree::Meta, key.as_bytes().to_vec());
                applied(old.is_some())
            } else {
                let changed = old.as_ref() != Some(value);
                tx.put(Tree::Meta, key.as_bytes().to_vec(), value.clone());
                applied(changed)
            }
        }
    }
}

/// A meta counter of the operator controls (0 when unset).
fn meta_number(tx: &Overlay<'_>, key: &str) -> Result<u64, StoreError> {
    match tx.get(Tree::Meta, key.as_bytes())? {
        Some(v) => count_of(&v, &tx.trees.name(Tree::Meta)),
        None => Ok(0),
    }
}

fn put_number(tx: &mut Overlay<'_>, key: &str, value: u64) {
    tx.put(
        Tree::Meta,
        key.as_bytes().to_vec(),
        value.to_be_bytes().to_vec(),
    );
}

/// Adds one to a meta counter.
fn bump(tx: &mut Overlay<'_>, key: &str) -> Result<(), StoreError> {
    let next = meta_number(tx, key)?.saturating_add(1);
    put_number(tx, key, next);
    Ok(())
}

/// [`Command::AddBan`]: the next id, within [`MAX_BANS`].
fn add_ban(tx: &mut Overlay<'_>, ban: &Ban) -> Result<Response, StoreError> {
    let mut count = meta_number(tx, BAN_COUNT)?;
    if count >= MAX_BANS as u64 {
        // Full: drop what lapsed by the new ban's creation (the proposer's clock, written in
        // the entry, so every replica drops the same bans).
        let name = tx.trees.name(Tree::Meta);
        let mut dropped = false;
        for key in tx.keys_with_prefix(Tree::Meta, BAN_PREFIX.as_bytes())? {
            let Some(value) = tx.get(Tree::Meta, &key)? else {
                continue;
            };
            let held = decode_ban(&value, &name)?;
            if !held.is_active(ban.created_ms) {
                tx.remove(Tree::Meta, key);
                count = count.saturating_sub(1);
                dropped = true;
            }
        }
        put_number(tx, BAN_COUNT, count);
        if dropped {
            bump(tx, BANS_VERSION)?;
        }
        if count >= MAX_BANS as u64 {
            return Ok(Response::Refused {
                reason: format!(
                    "the cluster already holds {MAX_BANS} bans, the most it keeps; remove \
                     some (`cluster ban remove ID`) or wait for their TTLs to lapse"
                ),
            });
        }
    }
    let id = meta_number(tx, BAN_NEXT)?.max(1);
    put_number(tx, BAN_NEXT, id.saturating_add(1));
    let stored = Ban { id, ..ban.clone() };
    tx.put(Tree::Meta, ban_key(id), encode(&BanRecord::from(&stored))?);
    put_number(tx, BAN_COUNT, count.saturating_add(1));
    bump(tx, BANS_VERSION)?;
    Ok(Response::BanAdded { id })
}

/// Removes one subscription; false when it did not exist.
fn remove_subscription(
    tx: &mut Overlay<'_>,
    topic: &[u8],
    gateway: GatewayId,
) -> Result<bool, StoreError> {
    let key = sub_key(topic, gateway);
    if !tx.contains(Tree::Subs, &key)? {
        return Ok(false);
    }
    tx.remove(Tree::Subs, key);
    tx.remove(Tree::ByGateway, gateway_key(gateway, topic));
    add_subscriber(tx, topic, -1)?;
    Ok(true)
}

/// Adjusts a topic's subscriber count by `delta` (±1), keeping `topic_count` in step.
fn add_subscriber(tx: &mut Overlay<'_>, topic: &[u8], delta: i8) -> Result<(), StoreError> {
    let sm_name = tx.trees.name(Tree::Sm);
    let topics_name = tx.trees.name(Tree::Topics);
    let count = match tx.get(Tree::Topics, topic)? {
        Some(v) => count_of(&v, &topics_name)?,
        None => 0,
    };
    let topic_count = match tx.get(Tree::Sm, TOPIC_COUNT)? {
        Some(v) => count_of(&v, &sm_name)?,
        None => 0,
    };
    let new_count = if delta > 0 {
        count.saturating_add(1)
    } else {
        count.saturating_sub(1)
    };
    if new_count == 0 {
        tx.remove(Tree::Topics, topic.to_vec());
    } else {
        tx.put(
            Tree::Topics,
            topic.to_vec(),
            new_count.to_be_bytes().to_vec(),
        );
    }
    let new_topic_count = match (count, new_count) {
        (0, n) if n > 0 => topic_count.saturating_add(1),
        (c, 0) if c > 0 => topic_count.saturating_sub(1),
        _ => topic_count,
    };
    if new_topic_count != topic_count {
        tx.put(
            Tree::Sm,
            TOPIC_COUNT.to_vec(),
            new_topic_count.to_be_bytes().to_vec(),
        );
    }
    Ok(())
}

/// The gateways subscribed to `topic` as the batch so far sees them.
fn gateways_at(tx: &Overlay<'_>, topic: &str) -> Result<Vec<GatewayId>, StoreError> {
    let prefix = topic_prefix(topic.as_bytes());
    Ok(tx
        .keys_with_prefix(Tree::Subs, &prefix)?
        .iter()
        .filter_map(|k| subscriber_of(k, prefix.len()))
        .collect())
}

fn topic_prefix(topic: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 9);
    key.extend_from_slice(topic);
    key.push(0);
    key
}

fn sub_key(topic: &[u8], gateway: GatewayId) -> Vec<u8> {
    let mut key = topic_prefix(topic);
    key.extend_from_slice(&gateway.to_be_bytes());
    key
}

fn gateway_key(gateway: GatewayId, topic: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + topic.len());
    key.extend_from_slice(&gateway.to_be_bytes());
    key.extend_from_slice(topic);
    key
}

/// The gateway of a `subs` key found under a topic prefix of `prefix_len` bytes, or `None`
/// when the key belongs to a longer topic that merely shares the prefix.
fn subscriber_of(key: &[u8], prefix_len: usize) -> Option<GatewayId> {
    let bytes: [u8; 8] = key.get(prefix_len..)?.try_into().ok()?;
    Some(GatewayId::from_be_bytes(bytes))
}

fn gateway_of(bytes: &[u8], tree: &str) -> Result<GatewayId, StoreError> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| StoreError::CorruptValue {
        tree: tree.to_string(),
        detail: format!("gateway key of {} bytes", bytes.len()),
    })?;
    Ok(GatewayId::from_be_bytes(bytes))
}

fn count_of(bytes: &[u8], tree: &str) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| StoreError::CorruptValue {
        tree: tree.to_string(),
        detail: format!("counter of {} bytes", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn utf8(bytes: &[u8], tree: &str) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).map_err(|e| StoreError::CorruptValue {
        tree: tree.to_string(),
        detail: format!("key is not UTF-8: {e}"),
    })
}

fn decode_ban(bytes: &[u8], tree: &str) -> Result<Ban, StoreError> {
    let record: BanRecord = decode(bytes, tree)?;
    Ban::try_from(record).map_err(|e| StoreError::CorruptValue {
        tree: tree.to_string(),
        detail: format!("ban: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_in_topic_does_not_leak_between_topics() {
        let a = sub_key(b"a", 7);
        let a_nul_b = sub_key(b"a\0b", 9);
        let prefix = topic_prefix(b"a");
        assert!(a_nul_b.starts_with(&prefix), "the premise of this test");
        assert_eq!(subscriber_of(&a, prefix.len()), Some(7));
        assert_eq!(subscriber_of(&a_nul_b, prefix.len()), None);
    }

    #[test]
    fn short_keys_are_errors_not_panics() {
        assert!(gateway_of(&[1, 2], "t").is_err());
        assert!(count_of(&[], "t").is_err());
        assert!(utf8(&[0xff], "t").is_err());
    }
}
