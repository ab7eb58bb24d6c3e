//! The manager process: owns the storage, the QUIC endpoint, the Raft groups and the admin API.
//!
//! ```text
//!                 6666/udp QUIC                                  6667/tcp gRPC
//!   managers ──ALPN firetower-raft/1──▶ serve_raft_connection    Admin + health + reflection
//!   gateways ──ALPN firetower-link/1──▶ link::serve_connection         │
//!                         │                                            │
//!                         ▼                                            ▼
//!                 GroupRouter: group id -> openraft::Raft  ◀──── Manager (this module)
//!                         │
//!                 Wal (log + vote, fsync)   StateStore (sled state machine, snapshots)
//! ```
//!
//! A fresh manager hosts no group: it waits for `Join` (sent during `cluster init` or
//! `cluster add`), records the cluster id and group count in its data directory, and from then
//! on starts its groups by itself at every start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// After a restart a manager does not stand for election for this many maximum election
/// timeouts unless it hears from a leader first (see
/// `leadership::hold_elections_after_restart`). 3 × 800 ms by default: longer than the
/// reconnect backoff cap (2 s) with which peers retry a manager that was down.
const RESTART_ELECTION_HOLD_FACTOR: u32 = 3;

use firetower_proto::admin::{GroupStatus, ReplicaStatus};
use firetower_raft::{
    GroupId, GroupRouter, ManagerNode, PeerConnections, QuicNetworkFactory, Raft, TypeConfig,
};
use firetower_store::{StateStore, TableReader, Wal, WalOptions};
use openraft::ServerState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ManagerConfig;
use crate::error::StartError;
use crate::meta::{self, NodeMeta};

/// A running manager. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    /// Held for the life of the process: one manager per data directory.
    _lock: std::fs::File,
    config: ManagerConfig,
    node: ManagerNode,
    meta: std::sync::Mutex<NodeMeta>,
    wal: Wal<TypeConfig>,
    state: StateStore,
    endpoint: quinn::Endpoint,
    router: GroupRouter,
    readers: RwLock<HashMap<GroupId, TableReader>>,
    proposers: RwLock<HashMap<GroupId, crate::proposer::Proposer>>,
    peers: std::sync::Mutex<Option<PeerConnections>>,
    cluster_id: watch::Sender<String>,
    sessions: crate::sessions::Sessions,
    stamps: crate::publish::Stamps,
    leadership: crate::leadership::Leadership,
    /// Bumped whenever the leader of a group hosted here changes.
    routing_version: watch::Sender<u64>,
    /// Serializes Init and membership changes started on this manager.
    change_lock: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("id", &self.config.id)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Open the data directory, bind both ports and start serving. Groups of a cluster this
    /// manager already joined are started too.
    pub async fn start(config: ManagerConfig) -> Result<Manager, StartError> {
        config.validate()?;
        firetower_raft::install_crypto_provider();
        let meta = meta::load_or_create(&config.data_dir, config.id)?;
        if let Some(expected) = &config.cluster_id {
            if meta.joined() && &meta.cluster_id != expected {
                return Err(StartError::WrongDataDir(format!(
                    "data directory {} belongs to cluster {}, but this manager is configured \
                     for cluster {expected}: point --data-dir at this cluster's directory",
                    config.data_dir.display(),
                    meta.cluster_id
                )));
            }
        }
        let lock = lock_data_dir(&config.data_dir)?;
        let meta = meta::ensure_reset_secret(&config.data_dir, meta)?;
        let state = StateStore::open(&config.data_dir)?;
        let wal = Wal::open(
            &config.data_dir,
            WalOptions {
                fsync: config.raft.fsync,
                ..WalOptions::default()
            },
        )?;
        let endpoint = firetower_raft::make_endpoint_with_reset_secret(
            config.quic,
            meta.quic_reset_secret.as_bytes(),
        )
        .map_err(|e| StartError::Bind {
            addr: config.quic,
            detail: e.to_string(),
        })?;
        let node = ManagerNode {
            quic: config.quic.to_string(),
            admin: config.admin.to_string(),
        };
        let (cluster_id, _) = watch::channel(meta.cluster_id.clone());
        let manager = Manager {
            inner: Arc::new(Inner {
                _lock: lock,
                node,
                meta: std::sync::Mutex::new(meta.clone()),
                wal,
                state,
                endpoint,
                router: {
                    let router = GroupRouter::new();
                    // Only a manager that ran in a cluster before can have promised a leader
                    // not to vote for anyone else; a fresh one votes at once.
                    if meta.joined() {
                        router.hold_votes_until(
                            std::time::Instant::now()
                                + Duration::from_millis(config.raft.election_timeout_max_ms),
                        );
                    }
                    router
                },
                readers: RwLock::new(HashMap::new()),
                proposers: RwLock::new(HashMap::new()),
                peers: std::sync::Mutex::new(None),
                cluster_id,
                sessions: Default::default(),
                stamps: Default::default(),
                leadership: Default::default(),
                routing_version: watch::channel(0).0,
                change_lock: tokio::sync::Mutex::new(()),
                shutdown: CancellationToken::new(),
                config,
            }),
        };
        if meta.joined() {
            // A restart: this manager's groups existed before this process.
            manager.start_groups(meta.groups, true).await?;
            manager.announce_restart();
        }
        manager.spawn_quic_accept_loop();
        crate::sessions::spawn_lease_task(manager.clone());
        manager.spawn_routing_watch();
        manager.spawn_admin_server().await?;
        tracing::info!(
            id = manager.id(),
            quic = %manager.inner.node.quic,
            admin = %manager.inner.node.admin,
            cluster = %meta.cluster_id,
            groups = meta.groups,
            "manager started"
        );
        Ok(manager)
    }

    /// This manager's id.
    pub fn id(&self) -> u64 {
        self.inner.config.id
    }

    /// The addresses this manager advertises.
    pub fn node(&self) -> &ManagerNode {
        &self.inner.node
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }

    /// The cluster id, empty before joining.
    pub fn cluster_id(&self) -> String {
        self.inner.cluster_id.borrow().clone()
    }

    /// The number of groups, 0 before joining.
    pub fn group_count(&self) -> u32 {
        self.meta().groups
    }

    pub(crate) fn meta(&self) -> NodeMeta {
        // A poisoned lock only means another thread panicked while holding it; the data (a
        // small plain struct replaced whole) is still consistent.
        self.inner
            .meta
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The Raft instance of a group hosted here.
    pub fn raft(&self, group: GroupId) -> Option<Raft> {
        self.inner.router.get(group)
    }

    /// Read handle on a group's subscription table.
    pub fn reader(&self, group: GroupId) -> Option<TableReader> {
        self.inner
            .readers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .cloned()
    }

    pub(crate) fn sessions(&self) -> &crate::sessions::Sessions {
        &self.inner.sessions
    }

    pub(crate) fn stamps(&self) -> &crate::publish::Stamps {
        &self.inner.stamps
    }

    pub(crate) fn leadership(&self) -> &crate::leadership::Leadership {
        &self.inner.leadership
    }

    /// A receiver that changes whenever a group's leader changes.
    pub(crate) fn routing_version(&self) -> watch::Receiver<u64> {
        self.inner.routing_version.subscribe()
    }

    /// The groups this manager currently leads.
    pub fn led_groups(&self) -> Vec<GroupId> {
        self.inner
            .router
            .groups()
            .into_iter()
            .filter(|(_, raft)| raft.metrics().borrow().current_leader == Some(self.id()))
            .map(|(g, _)| g)
            .collect()
    }

    fn spawn_routing_watch(&self) {
        let manager = self.clone();
        tokio::spawn(async move {
            let shutdown = manager.shutdown_token();
            let mut known: HashMap<GroupId, Option<u64>> = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let mut changed = false;
                for (group, raft) in manager.inner.router.groups() {
                    let leader = raft.metrics().borrow().current_leader;
                    if known.insert(group, leader) != Some(leader) {
                        changed = true;
                    }
                }
                if changed {
                    manager.inner.routing_version.send_modify(|v| *v += 1);
                }
            }
        });
    }

    /// The proposal queue of a group hosted here.
    pub(crate) fn proposer(&self, group: GroupId) -> Option<crate::proposer::Proposer> {
        self.inner
            .proposers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .cloned()
    }

    /// A token cancelled when the manager shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Stop serving: refuse publishes, close the QUIC endpoint (gateways see their sessions
    /// end at once and move to the other managers; peers stop hearing from this one), stop
    /// the admin server and every Raft group.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner
            .endpoint
            .close(0u32.into(), b"manager shutting down");
        for (group, raft) in self.inner.router.groups() {
            if let Err(e) = raft.shutdown().await {
                tracing::warn!(group, error = %e, "raft group did not shut down cleanly");
            }
        }
        // Let the close frames reach the peers before the process exits.
        let _ =
            tokio::time::timeout(Duration::from_millis(500), self.inner.endpoint.wait_idle()).await;
    }

    /// Record membership of a cluster and start its groups; initialize the listed groups with
    /// `members` as their voters. Idempotent for the same cluster.
    pub(crate) async fn join(
        &self,
        cluster_id: &str,
        groups: u32,
        members: &BTreeMap<u64, ManagerNode>,
        initialize: &[GroupId],
    ) -> Result<(), tonic::Status> {
        let current = self.meta();
        if current.joined() {
            if current.cluster_id != cluster_id {
                return Err(tonic::Status::failed_precondition(format!(
                    "manager {} already belongs to cluster {}; it joins no other cluster. \
                     To move it, stop it and start it on an empty data directory",
                    self.id(),
                    current.cluster_id
                )));
            }
            if current.groups != groups {
                return Err(tonic::Status::failed_precondition(format!(
                    "manager {} has {} groups, the request has {groups}",
                    self.id(),
                    current.groups
                )));
            }
        } else {
            if groups == 0 || groups > crate::config::MAX_GROUPS {
                return Err(tonic::Status::invalid_argument(format!(
                    "groups must be within 1..={}",
                    crate::config::MAX_GROUPS
                )));
            }
            let new_meta = NodeMeta {
                cluster_id: cluster_id.to_string(),
                groups,
                ..self.meta()
            };
            meta::store(&self.inner.config.data_dir, &new_meta)
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            *self.inner.meta.lock().unwrap_or_else(|e| e.into_inner()) = new_meta;
            self.start_groups(groups, false)
                .await
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
        }
        for &group in initialize {
            let raft = self.raft(group).ok_or_else(|| {
                tonic::Status::invalid_argument(format!("group {group} does not exist"))
            })?;
            match raft.initialize(members.clone()).await {
                Ok(()) => tracing::info!(group, "initialized group"),
                // A repeated Join (retry of an init that timed out) finds it initialized.
                Err(openraft::error::RaftError::APIError(
                    openraft::error::InitializeError::NotAllowed(_),
                )) => {}
                Err(e) => {
                    return Err(tonic::Status::internal(format!(
                        "initialize group {group}: {e}"
                    )))
                }
            }
        }
        Ok(())
    }

    fn peers(&self) -> Option<PeerConnections> {
        self.inner
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a restart, connect to every other manager of the groups' memberships, so that
    /// each of them stops backing off its attempts to reach us (`PeerConnections::peer_seen`)
    /// and its leaders' heartbeats arrive within a round trip.
    fn announce_restart(&self) {
        let Some(peers) = self.peers() else {
            return;
        };
        let mut addrs = std::collections::BTreeSet::new();
        for group in 0..self.meta().groups {
            if let Some(raft) = self.raft(group) {
                let metrics = raft.metrics().borrow().clone();
                for (id, node) in metrics.membership_config.membership().nodes() {
                    if *id != self.id() {
                        addrs.insert(node.quic.clone());
                    }
                }
            }
        }
        for addr in addrs {
            let peers = peers.clone();
            tokio::spawn(async move { peers.warm_up(&addr).await });
        }
    }

    /// Start the Raft groups; `restarted` when they existed before this process started.
    async fn start_groups(&self, groups: u32, restarted: bool) -> Result<(), StartError> {
        let cluster_id = self.meta().cluster_id;
        let _ = self.inner.cluster_id.send_replace(cluster_id.clone());
        let peers = PeerConnections::new(self.inner.endpoint.clone(), cluster_id);
        *self.inner.peers.lock().unwrap_or_else(|e| e.into_inner()) = Some(peers.clone());
        let config = Arc::new(self.inner.config.raft.openraft_config()?);
        for group in 0..groups {
            if self.inner.router.get(group).is_some() {
                continue;
            }
            let mut log_store = self.inner.wal.log_store(group);
            let startup_term = if self.inner.config.unsafe_stale_leadership {
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
            let state_machine = self.inner.state.state_machine::<TypeConfig>(group)?;
            let reader = state_machine.reader();
            let network = QuicNetworkFactory::new(group, peers.clone());
            let raft = Raft::new(self.id(), config.clone(), network, log_store, state_machine)
                .await
                .map_err(|e| StartError::Raft {
                    group,
                    detail: e.to_string(),
                })?;
            self.inner
                .readers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(group, reader);
            let proposer = crate::proposer::Proposer::spawn(
                raft.clone(),
                self.inner.config.raft.proposal_timeout(),
            );
            self.inner
                .proposers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(group, proposer);
            self.inner.leadership.watch(
                group,
                self.id(),
                startup_term,
                &raft,
                self.inner.shutdown.clone(),
            );
            if restarted {
                crate::leadership::hold_elections_after_restart(
                    &raft,
                    self.id(),
                    RESTART_ELECTION_HOLD_FACTOR
                        * Duration::from_millis(self.inner.config.raft.election_timeout_max_ms),
                );
            }
            self.inner.router.insert(group, raft);
        }
        Ok(())
    }

    fn spawn_quic_accept_loop(&self) {
        let manager = self.clone();
        tokio::spawn(async move {
            let endpoint = manager.inner.endpoint.clone();
            let shutdown = manager.inner.shutdown.clone();
            loop {
                let incoming = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    incoming = endpoint.accept() => incoming,
                };
                let Some(incoming) = incoming else { break };
                let manager = manager.clone();
                tokio::spawn(async move {
                    let conn = match incoming.await {
                        Ok(conn) => conn,
                        Err(e) => {
                            tracing::debug!(error = %e, "QUIC handshake failed");
                            return;
                        }
                    };
                    let alpn = conn
                        .handshake_data()
                        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                        .and_then(|d| d.protocol);
                    match alpn.as_deref() {
                        Some(a) if a == firetower_raft::ALPN_RAFT => {
                            // A peer manager is up: let our RPCs to it dial again at once.
                            if let Some(peers) = manager.peers() {
                                peers.peer_seen(conn.remote_address());
                            }
                            firetower_raft::serve_raft_connection(
                                conn,
                                manager.inner.router.clone(),
                                manager.inner.cluster_id.subscribe(),
                            )
                            .await;
                        }
                        Some(a) if a == firetower_raft::ALPN_LINK => {
                            crate::link::serve_connection(conn, manager).await;
                        }
                        _ => conn.close(1u32.into(), b"unknown ALPN"),
                    }
                });
            }
        });
    }

    async fn spawn_admin_server(&self) -> Result<(), StartError> {
        let addr = self.inner.config.admin;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Bind {
                addr,
                detail: e.to_string(),
            })?;
        let router = crate::admin::router(self.clone()).await;
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "admin server stopped");
            }
        });
        Ok(())
    }

    /// Every manager named in any group's membership (voter or learner), with its addresses.
    pub fn known_managers(&self) -> BTreeMap<u64, ManagerNode> {
        let mut all = BTreeMap::new();
        for (_, raft) in self.inner.router.groups() {
            let metrics = raft.metrics().borrow().clone();
            for (id, node) in metrics.membership_config.nodes() {
                all.insert(*id, node.clone());
            }
        }
        if all.is_empty() {
            all.insert(self.id(), self.inner.node.clone());
        }
        all
    }

    /// This manager's own view of one group.
    pub async fn group_status(&self, group: GroupId) -> Option<(GroupStatus, ReplicaStatus)> {
        let raft = self.raft(group)?;
        let m = raft.metrics().borrow().clone();
        let committed = raft
            .with_raft_state(|st| st.committed.map(|l| l.index))
            .await
            .ok()
            .flatten()
            .unwrap_or(0);
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners: Vec<u64> = membership.learner_ids().collect();
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        let status = GroupStatus {
            id: group,
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
    pub fn leader_of(&self, group: GroupId) -> Option<(u64, ManagerNode)> {
        let raft = self.raft(group)?;
        let m = raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node))
    }

    /// Wait until every group has a leader, or the timeout passes. Returns the groups that
    /// still have none.
    pub async fn wait_for_leaders(&self, timeout: Duration) -> Vec<GroupId> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let missing: Vec<GroupId> = (0..self.group_count())
                .filter(|g| self.leader_of(*g).is_none())
                .collect();
            if missing.is_empty() || tokio::time::Instant::now() >= deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn inner_change_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.change_lock.lock().await
    }

    /// The local QUIC address the endpoint is bound to.
    pub fn quic_addr(&self) -> SocketAddr {
        self.inner
            .endpoint
            .local_addr()
            .unwrap_or(self.inner.config.quic)
    }
}

/// Take an exclusive lock on `DATA/LOCK`, so that a second process on the same directory
/// stops before it touches the log (it would otherwise "repair" a tail still being written).
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::DataDir {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::WrongDataDir(format!(
            "data directory {} is in use by another running manager; each manager needs its \
             own directory",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(source)) => Err(StartError::DataDir { path, source }),
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
