//! The context every service of a manager works on: its storage, its Raft groups with their
//! readers, proposers and stampers, the live gateway sessions, the configuration and the
//! metrics. Services (`publish`, `topics`, `sessions`, `membership`, `link`, `admin`) take a
//! [`Node`]; nothing here knows about them.
//!
//! ```text
//!   Node ─ config, meta (data-dir identity), cluster id, group count
//!        ├ Wal (log + vote) and StateStore (sled state machines)
//!        ├ per group: Raft, TableReader, Proposer, Stamper (behind one lock each)
//!        ├ SessionTable (live gateway sessions and their leases)
//!        ├ operator controls: the encoded ban list (watched by every session), the
//!        │ gateways' figures, commit rates, pending connection queries (controls.rs)
//!        └ ManagerMetrics, shutdown token, routing version, fatal error
//! ```
//!
//! Fail-stop: a manager whose storage failed must not stay up with every group dead. Watchers
//! started here turn the first such failure into the node's [`FatalError`]:
//!
//! ```text
//!   Wal::failed() (a write or fdatasync failed) ──────────────┐
//!   per group: Raft metrics running_state = Err(fatal) ───────┼─▶ Node::fail (first wins,
//!     (state machine storage failed, task panicked;           │    one ERROR event)
//!      not a deliberate shutdown)                             ▼
//!                          Node::fatal() resolves ─▶ gRPC health NOT_SERVING (admin)
//!                          Node::fatal_error()    ─▶ /healthz 503 with the reason
//!                                                 ─▶ the CLI exits with FatalError::EXIT_CODE
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use firetower_proto::admin::{GroupStatus, ReplicaStatus};
use firetower_proto::GatewayId;
use firetower_raft::{
    GroupId, GroupRouter, ManagerNode, PeerConnections, QuicNetworkFactory, Raft, TypeConfig,
};
use firetower_store::{ApplyObserver, Rules, StateStore, TableReader, Wal};
use openraft::error::Fatal;
use openraft::ServerState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ManagerConfig;
use crate::controls::{BanFrames, CommitRates, QueryBook, StatsBook};
use crate::error::{FatalError, StartError};
use crate::history_book::HistoryBook;
use crate::locks::lock;
use crate::meta::NodeMeta;
use crate::metrics::{GroupSample, ManagerMetrics, Role};
use crate::proposer::Proposer;
use crate::session_table::SessionTable;
use crate::stamper::Stamper;

/// After a restart a manager does not stand for election for this many maximum election
/// timeouts unless it hears from a leader first (see
/// `leadership::hold_elections_after_restart`). 3 × 800 ms by default: longer than the
/// reconnect backoff cap (2 s) with which peers retry a manager that was down.
const RESTART_ELECTION_HOLD_FACTOR: u32 = 3;

/// The shared context of one manager process. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    inner: Arc<NodeInner>,
}

/// What [`Node::new`] is built from: the resources `Manager::start` opened.
pub(crate) struct NodeParts {
    pub lock: std::fs::File,
    pub config: ManagerConfig,
    pub meta: NodeMeta,
    pub wal: Wal<TypeConfig>,
    pub state: StateStore,
    pub endpoint: quinn::Endpoint,
    pub router: GroupRouter,
    pub metrics: Arc<ManagerMetrics>,
    pub security: firetower_link::Security,
}

struct NodeInner {
    /// Held for the life of the process: one manager per data directory.
    _lock: std::fs::File,
    config: ManagerConfig,
    addrs: ManagerNode,
    meta: Mutex<NodeMeta>,
    wal: Wal<TypeConfig>,
    state: StateStore,
    endpoint: quinn::Endpoint,
    router: GroupRouter,
    readers: RwLock<HashMap<GroupId, TableReader>>,
    proposers: RwLock<HashMap<GroupId, Proposer>>,
    stampers: RwLock<HashMap<GroupId, Arc<Mutex<Stamper>>>>,
    /// `--unsafe-stale-reads` only: a topic's subscribers as read a while ago.
    stale_copies: Mutex<HashMap<String, (Instant, Vec<GatewayId>)>>,
    peers: Mutex<Option<PeerConnections>>,
    cluster_id: watch::Sender<String>,
    sessions: SessionTable,
    /// Group 0's ban list, encoded for the sessions; `None` until first read.
    ban_frames: watch::Sender<Option<Arc<BanFrames>>>,
    /// What gateways reported with their heartbeats.
    stats_book: Mutex<StatsBook>,
    /// Applied indexes sampled every second.
    commit_rates: Mutex<CommitRates>,
    /// `Connections` queries waiting for gateways.
    queries: Mutex<QueryBook>,
    /// Bumped whenever the leader of a group hosted here changes.
    routing_version: watch::Sender<u64>,
    /// Serializes Init and membership changes started on this manager.
    change_lock: tokio::sync::Mutex<()>,
    metrics: Arc<ManagerMetrics>,
    shutdown: CancellationToken,
    /// This manager's certificate (mutual TLS) or insecure.
    security: firetower_link::Security,
    /// Set once, by the first storage failure: the manager must stop.
    fatal: watch::Sender<Option<FatalError>>,
    /// Group 0's history and presence rules, as last read.
    rules: Mutex<Arc<Rules>>,
    /// History deliveries queued at apply, waiting for their publishers.
    history_book: Mutex<HistoryBook>,
}

/// A [`Node`] that does not keep it alive (held by the state machines' apply observer).
#[derive(Clone, Debug)]
pub(crate) struct WeakNode(Weak<NodeInner>);

impl WeakNode {
    pub(crate) fn upgrade(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node { inner })
    }
}

impl std::fmt::Debug for NodeInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.config.id)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Must run inside a Tokio runtime: it starts the watcher of the write-ahead log.
    pub(crate) fn new(parts: NodeParts) -> Node {
        let addrs = ManagerNode {
            quic: parts.config.quic.to_string(),
            admin: parts.config.admin.to_string(),
        };
        let (cluster_id, _) = watch::channel(parts.meta.cluster_id.clone());
        let node = Node {
            inner: Arc::new(NodeInner {
                _lock: parts.lock,
                addrs,
                meta: Mutex::new(parts.meta),
                wal: parts.wal,
                state: parts.state,
                endpoint: parts.endpoint,
                router: parts.router,
                readers: RwLock::new(HashMap::new()),
                proposers: RwLock::new(HashMap::new()),
                stampers: RwLock::new(HashMap::new()),
                stale_copies: Mutex::new(HashMap::new()),
                peers: Mutex::new(None),
                cluster_id,
                sessions: SessionTable::default(),
                ban_frames: watch::channel(None).0,
                stats_book: Mutex::new(StatsBook::default()),
                commit_rates: Mutex::new(CommitRates::default()),
                queries: Mutex::new(QueryBook::default()),
                routing_version: watch::channel(0).0,
                change_lock: tokio::sync::Mutex::new(()),
                metrics: parts.metrics,
                shutdown: CancellationToken::new(),
                fatal: watch::channel(None).0,
                config: parts.config,
                security: parts.security,
                rules: Mutex::new(Arc::new(Rules::default())),
                history_book: Mutex::new(HistoryBook::default()),
            }),
        };
        node.watch_wal();
        node
    }

    pub(crate) fn downgrade(&self) -> WeakNode {
        WeakNode(Arc::downgrade(&self.inner))
    }

    /// Tell `observer` of every group's applies from now on.
    pub(crate) fn set_apply_observer(&self, observer: Arc<dyn ApplyObserver>) {
        self.inner.state.set_observer(observer);
    }

    /// Group 0's history and presence rules as this manager applied them (re-read when their
    /// version moved).
    pub(crate) fn rules(&self) -> Arc<Rules> {
        let cached = lock(&self.inner.rules).clone();
        let Some(reader) = self.reader(GroupId(0)) else {
            return cached;
        };
        match reader.rules_version() {
            Ok(v) if v == cached.version => cached,
            Ok(_) => match reader.rules() {
                Ok(rules) => {
                    let rules = Arc::new(rules);
                    *lock(&self.inner.rules) = rules.clone();
                    rules
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading group 0's rules");
                    cached
                }
            },
            Err(_) => cached,
        }
    }

    pub(crate) fn history_book(&self) -> std::sync::MutexGuard<'_, HistoryBook> {
        lock(&self.inner.history_book)
    }

    /// This manager's id.
    pub(crate) fn id(&self) -> u64 {
        self.inner.config.id
    }

    /// The addresses this manager advertises.
    pub(crate) fn addrs(&self) -> &ManagerNode {
        &self.inner.addrs
    }

    pub(crate) fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }

    /// This manager's certificate, for the admin calls it makes to other managers.
    pub(crate) fn security(&self) -> &firetower_link::Security {
        &self.inner.security
    }

    /// The cluster id, empty before joining.
    pub(crate) fn cluster_id(&self) -> String {
        self.inner.cluster_id.borrow().clone()
    }

    /// Follows the cluster id (the Raft server refuses peers of another cluster).
    pub(crate) fn cluster_id_watch(&self) -> watch::Receiver<String> {
        self.inner.cluster_id.subscribe()
    }

    /// The number of groups, 0 before joining.
    pub(crate) fn group_count(&self) -> u32 {
        self.meta().groups
    }

    /// Every group of the cluster, `0..group_count()` (none before joining).
    pub(crate) fn group_ids(&self) -> impl Iterator<Item = GroupId> {
        (0..self.group_count()).map(GroupId)
    }

    pub(crate) fn meta(&self) -> NodeMeta {
        lock(&self.inner.meta).clone()
    }

    /// Record a new identity (already stored on disk by the caller).
    pub(crate) fn set_meta(&self, meta: NodeMeta) {
        *lock(&self.inner.meta) = meta;
    }

    pub(crate) fn router(&self) -> &GroupRouter {
        &self.inner.router
    }

    pub(crate) fn endpoint(&self) -> &quinn::Endpoint {
        &self.inner.endpoint
    }

    /// The Raft instance of a group hosted here.
    pub(crate) fn raft(&self, group: GroupId) -> Option<Raft> {
        self.inner.router.get(group)
    }

    /// Read handle on a group's subscription table.
    pub(crate) fn reader(&self, group: GroupId) -> Option<TableReader> {
        self.inner
            .readers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .cloned()
    }

    /// The proposal queue of a group hosted here.
    pub(crate) fn proposer(&self, group: GroupId) -> Option<Proposer> {
        self.inner
            .proposers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .cloned()
    }

    /// The stamper of a group hosted here.
    pub(crate) fn stamper(&self, group: GroupId) -> Option<Arc<Mutex<Stamper>>> {
        self.inner
            .stampers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .cloned()
    }

    pub(crate) fn stale_copies(&self) -> &Mutex<HashMap<String, (Instant, Vec<GatewayId>)>> {
        &self.inner.stale_copies
    }

    pub(crate) fn sessions(&self) -> &SessionTable {
        &self.inner.sessions
    }

    /// Follows group 0's ban list as the sessions send it.
    pub(crate) fn ban_frames(&self) -> watch::Receiver<Option<Arc<BanFrames>>> {
        self.inner.ban_frames.subscribe()
    }

    /// Publish a new encoded ban list to every session.
    pub(crate) fn set_ban_frames(&self, frames: BanFrames) {
        let _ = self.inner.ban_frames.send_replace(Some(Arc::new(frames)));
    }

    /// The gateways' reported figures.
    pub(crate) fn stats_book(&self) -> std::sync::MutexGuard<'_, StatsBook> {
        lock(&self.inner.stats_book)
    }

    /// The groups' commit rates.
    pub(crate) fn commit_rates(&self) -> std::sync::MutexGuard<'_, CommitRates> {
        lock(&self.inner.commit_rates)
    }

    /// Pending connection queries.
    pub(crate) fn queries(&self) -> std::sync::MutexGuard<'_, QueryBook> {
        lock(&self.inner.queries)
    }

    pub(crate) fn metrics(&self) -> &ManagerMetrics {
        &self.inner.metrics
    }

    /// A receiver that changes whenever a group's leader changes.
    pub(crate) fn routing_version(&self) -> watch::Receiver<u64> {
        self.inner.routing_version.subscribe()
    }

    /// Tell session streams that routing changed.
    pub(crate) fn bump_routing_version(&self) {
        self.inner.routing_version.send_modify(|v| *v += 1);
    }

    /// A token cancelled when the manager shuts down.
    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Resolves with the failure that makes this manager stop (see the module doc); never
    /// while it works. The future does not keep the node alive.
    pub(crate) fn fatal(&self) -> impl Future<Output = FatalError> + Send + 'static {
        let mut fatal = self.inner.fatal.subscribe();
        async move {
            // `Err`: the node is gone without a failure: never.
            if let Ok(fatal) = fatal.wait_for(Option::is_some).await {
                if let Some(fatal) = fatal.as_ref() {
                    return fatal.clone();
                }
            }
            std::future::pending().await
        }
    }

    /// The failure that makes this manager stop, if there was one.
    pub(crate) fn fatal_error(&self) -> Option<FatalError> {
        self.inner.fatal.borrow().clone()
    }

    /// Record the failure that makes this manager stop; only the first one counts.
    pub(crate) fn fail(&self, error: FatalError) {
        let first = self.inner.fatal.send_if_modified(|fatal| {
            if fatal.is_some() {
                return false;
            }
            *fatal = Some(error.clone());
            true
        });
        if !first {
            return;
        }
        match &error {
            FatalError::Storage(wal) => match &**wal {
                firetower_store::WalError::Io { path, source } => tracing::error!(
                    event = "manager_fatal",
                    file = %path.display(),
                    os_error = %source,
                    "{error}; health reports NOT_SERVING and the manager stops"
                ),
                _ => tracing::error!(
                    event = "manager_fatal",
                    "{error}; health reports NOT_SERVING and the manager stops"
                ),
            },
            FatalError::GroupStopped { group, .. } => tracing::error!(
                event = "manager_fatal",
                group = group.get(),
                "{error}; health reports NOT_SERVING and the manager stops"
            ),
        }
    }

    /// Fail the node when its write-ahead log stops.
    fn watch_wal(&self) {
        let failed = self.inner.wal.failed();
        let node = Arc::downgrade(&self.inner);
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                error = failed => {
                    if let Some(node) = upgrade(&node) {
                        node.fail(FatalError::Storage(error));
                    }
                }
            }
        });
    }

    /// Fail the node when a group's Raft core stops on a fatal error. A deliberate stop
    /// (`Raft::shutdown`, `Fatal::Stopped`) or one during the manager's shutdown is not one.
    fn watch_group(&self, group: GroupId, raft: &Raft) {
        let mut metrics = raft.metrics();
        let node = Arc::downgrade(&self.inner);
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let detail = match &metrics.borrow_and_update().running_state {
                    Ok(()) | Err(Fatal::Stopped) => None,
                    Err(fatal) => Some(fatal.to_string()),
                };
                if let Some(detail) = detail {
                    if let Some(node) = upgrade(&node).filter(|_| !shutdown.is_cancelled()) {
                        // A failed log fails every group: name the log, not the group.
                        let error = match node.inner.wal.failure() {
                            Some(wal) => FatalError::Storage(wal),
                            None => FatalError::GroupStopped { group, detail },
                        };
                        node.fail(error);
                    }
                    return;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = metrics.changed() => if changed.is_err() { return },
                }
            }
        });
    }

    pub(crate) async fn change_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.change_lock.lock().await
    }

    pub(crate) fn peers(&self) -> Option<PeerConnections> {
        lock(&self.inner.peers).clone()
    }

    /// The groups this manager currently leads.
    pub(crate) fn led_groups(&self) -> Vec<GroupId> {
        self.inner
            .router
            .groups()
            .into_iter()
            .filter(|(_, raft)| raft.metrics().borrow().current_leader == Some(self.id()))
            .map(|(g, _)| g)
            .collect()
    }

    /// Start the Raft groups; `restarted` when they existed before this process started.
    pub(crate) async fn start_groups(
        &self,
        groups: u32,
        restarted: bool,
    ) -> Result<(), StartError> {
        let inner = &self.inner;
        let cluster_id = self.meta().cluster_id;
        let _ = inner.cluster_id.send_replace(cluster_id.clone());
        let peers = PeerConnections::new(inner.endpoint.clone(), cluster_id);
        *lock(&inner.peers) = Some(peers.clone());
        let config = Arc::new(inner.config.raft.openraft_config()?);
        for group in (0..groups).map(GroupId) {
            if inner.router.get(group).is_some() {
                continue;
            }
            let mut log_store = inner.wal.log_store(group.get());
            let startup_term = if inner.config.unsafe_stale_leadership {
                // DELIBERATELY UNSAFE (Jepsen self-test): resume leadership of the old term.
                0
            } else {
                crate::leadership::step_down_on_restart(&mut log_store, self.id())
                    .await
                    .map_err(|e| StartError::Raft {
                        group,
                        detail: e.to_string(),
                    })?
            };
            let state_machine = inner.state.state_machine::<TypeConfig>(group.get())?;
            let reader = state_machine.reader();
            let network = QuicNetworkFactory::new(group, peers.clone());
            let raft = Raft::new(self.id(), config.clone(), network, log_store, state_machine)
                .await
                .map_err(|e| StartError::Raft {
                    group,
                    detail: e.to_string(),
                })?;
            inner
                .readers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(group, reader);
            inner.metrics.add_group(group);
            let proposer = Proposer::spawn(
                group,
                raft.clone(),
                inner.config.raft.proposal_timeout(),
                inner.metrics.clone(),
            );
            inner
                .proposers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(group, proposer);
            let stamper = Arc::new(Mutex::new(Stamper::new(startup_term)));
            inner
                .stampers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(group, stamper.clone());
            crate::leadership::watch(self.id(), &raft, stamper, inner.shutdown.clone());
            self.watch_group(group, &raft);
            if restarted {
                crate::leadership::hold_elections_after_restart(
                    &raft,
                    self.id(),
                    RESTART_ELECTION_HOLD_FACTOR
                        * Duration::from_millis(inner.config.raft.election_timeout_max_ms),
                );
            }
            inner.router.insert(group, raft);
        }
        Ok(())
    }

    /// Every manager named in any group's membership (voter or learner), with its addresses.
    pub(crate) fn known_managers(&self) -> BTreeMap<u64, ManagerNode> {
        let mut all = BTreeMap::new();
        for (_, raft) in self.inner.router.groups() {
            let metrics = raft.metrics().borrow().clone();
            for (id, node) in metrics.membership_config.nodes() {
                all.insert(*id, node.clone());
            }
        }
        if all.is_empty() {
            all.insert(self.id(), self.inner.addrs.clone());
        }
        all
    }

    /// This manager's own view of one group.
    pub(crate) async fn group_status(
        &self,
        group: GroupId,
    ) -> Option<(GroupStatus, ReplicaStatus)> {
        let raft = self.raft(group)?;
        let m = raft.metrics().borrow().clone();
        let committed = committed_index(&raft).await;
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners: Vec<u64> = membership.learner_ids().collect();
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        let status = GroupStatus {
            id: group.get(),
            leader: m.current_leader.unwrap_or(0),
            term: m.current_term,
            voters: voters.into_iter().collect(),
            learners,
            committed,
            applied,
            replicas: Vec::new(),
        };
        let replica = ReplicaStatus {
            id: self.id(),
            state: state_name(m.state).to_string(),
            term: m.current_term,
            committed,
            applied,
        };
        Some((status, replica))
    }

    /// The leader of a group as this manager knows it.
    pub(crate) fn leader_of(&self, group: GroupId) -> Option<(u64, ManagerNode)> {
        let raft = self.raft(group)?;
        let m = raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node))
    }

    /// Wait until every group has a leader, or the timeout passes. Returns the groups that
    /// still have none.
    pub(crate) async fn wait_for_leaders(&self, timeout: Duration) -> Vec<GroupId> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let missing: Vec<GroupId> = self
                .group_ids()
                .filter(|g| self.leader_of(*g).is_none())
                .collect();
            if missing.is_empty() || tokio::time::Instant::now() >= deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The local QUIC address the endpoint is bound to.
    pub(crate) fn quic_addr(&self) -> SocketAddr {
        self.inner
            .endpoint
            .local_addr()
            .unwrap_or(self.inner.config.quic)
    }

    /// Sample the state behind the scrape-time metrics (Raft roles and indexes, sessions,
    /// stamp map sizes).
    pub(crate) async fn refresh_metrics(&self) {
        let metrics = &self.inner.metrics;
        metrics.set_gateway_sessions(self.inner.sessions.live_count());
        metrics.set_session_queued_bytes(self.inner.sessions.queued_bytes());
        for (group, raft) in self.inner.router.groups() {
            let (role, term, applied) = {
                let m = raft.metrics();
                let m = m.borrow();
                (
                    role_of(m.state),
                    m.current_term,
                    m.last_applied.map(|l| l.index).unwrap_or(0),
                )
            };
            let committed = committed_index(&raft).await;
            let stamp_topics = self.stamper(group).map(|s| lock(&s).topics()).unwrap_or(0);
            metrics.set_group(
                group,
                GroupSample {
                    role,
                    term,
                    committed,
                    applied,
                    stamp_topics,
                },
            );
        }
    }
}

fn upgrade(node: &Weak<NodeInner>) -> Option<Node> {
    node.upgrade().map(|inner| Node { inner })
}

/// The highest index the group's Raft core knows committed (0 if none, or the core stopped).
async fn committed_index(raft: &Raft) -> u64 {
    raft.with_raft_state(|st| st.committed.map(|l| l.index))
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

fn role_of(state: ServerState) -> Option<Role> {
    match state {
        ServerState::Leader => Some(Role::leader),
        ServerState::Follower => Some(Role::follower),
        ServerState::Candidate => Some(Role::candidate),
        ServerState::Learner => Some(Role::learner),
        ServerState::Shutdown => None,
    }
}

/// The name of a Raft role as the admin API reports it.
pub fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}
