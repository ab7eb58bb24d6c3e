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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use firetower_proto::admin::{GroupStatus, ReplicaStatus};
use firetower_raft::vouch::Vouching;
use firetower_raft::{GroupId, GroupRouter, ManagerNode, Raft};
use firetower_store::{StateStore, TableReader, Wal, WalOptions};
use tokio_util::sync::CancellationToken;

use crate::config::ManagerConfig;
use crate::error::{FatalError, StartError};
use crate::meta;
use crate::metrics::{ManagerMetrics, Port};
use crate::node::{Node, NodeParts};
use crate::vouch::AdminVouch;

/// A running manager. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Manager {
    node: Node,
    /// Where `/metrics` and `/healthz` are served, if they are.
    metrics_addr: Option<SocketAddr>,
}

/// Where the manager's QUIC endpoint gets its socket.
enum QuicSocket {
    /// A UDP socket bound to `ManagerConfig::quic` (a real process).
    Bind,
    /// A socket the caller made, such as a `MemSocket` of the in-memory test network.
    Given(Arc<dyn quinn::AsyncUdpSocket>),
}

impl Manager {
    /// Open the data directory, bind both ports (and the metrics address, if configured) and
    /// start serving. Groups of a cluster this manager already joined are started too.
    pub async fn start(config: ManagerConfig) -> Result<Manager, StartError> {
        Self::start_with(config, QuicSocket::Bind).await
    }

    /// Like [`Manager::start`], with the QUIC endpoint (Raft and the gateway link) on `socket`
    /// instead of a UDP socket bound to `config.quic`: for tests that run managers on
    /// [`firetower_link::MemNet`], an in-memory network that can cut, isolate and delay links.
    /// The address this manager advertises to peers and gateways is the socket's `local_addr`
    /// (it replaces `config.quic`); the admin and metrics listeners are bound as usual.
    pub async fn start_on(
        mut config: ManagerConfig,
        socket: Arc<dyn quinn::AsyncUdpSocket>,
    ) -> Result<Manager, StartError> {
        config.quic = socket.local_addr().map_err(|e| StartError::Bind {
            addr: config.quic,
            detail: format!("the given QUIC socket has no local address: {e}"),
        })?;
        Self::start_with(config, QuicSocket::Given(socket)).await
    }

    async fn start_with(config: ManagerConfig, socket: QuicSocket) -> Result<Manager, StartError> {
        config.validate()?;
        firetower_raft::install_crypto_provider();
        let security = config.security()?;
        if !security.is_mutual() {
            tracing::warn!(
                "INSECURE: --insecure given: the QUIC port trusts anyone who reaches it and the \
                 admin API is plaintext and open to every caller; for experiments only"
            );
        }
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
        let metrics = Arc::new(ManagerMetrics::new());
        let state = StateStore::open(&config.data_dir)?;
        let wal = Wal::open_observed(
            &config.data_dir,
            WalOptions {
                fsync: config.raft.fsync,
                ..WalOptions::default()
            },
            Some(metrics.clone()),
        )?;
        let reset_secret = meta.quic_reset_secret.as_bytes();
        let endpoint = match socket {
            QuicSocket::Bind => firetower_raft::make_endpoint_with_reset_secret(
                config.quic,
                reset_secret,
                &security,
            ),
            QuicSocket::Given(socket) => {
                firetower_link::make_endpoint_on(socket, Some(reset_secret), &security)
            }
        }
        .map_err(|e| StartError::Bind {
            addr: config.quic,
            detail: e.to_string(),
        })?;
        let router = GroupRouter::new();
        // Only a manager that ran in a cluster before can have promised a leader not to vote
        // for anyone else; a fresh one votes at once.
        if meta.joined() {
            router.hold_votes_until(
                std::time::Instant::now()
                    + Duration::from_millis(config.raft.election_timeout_max_ms),
            );
        }
        let metrics_bind = config.metrics;
        let node = Node::new(NodeParts {
            lock,
            config,
            meta: meta.clone(),
            wal,
            state,
            endpoint,
            router,
            metrics,
            security,
        });
        node.set_apply_observer(Arc::new(crate::history::Deliverer::new(&node)));
        let mut manager = Manager {
            node,
            metrics_addr: None,
        };
        if meta.joined() {
            // A restart: this manager's groups existed before this process.
            manager.node.start_groups(meta.groups, true).await?;
            manager.announce_restart();
        }
        manager.spawn_quic_accept_loop();
        crate::sessions::spawn_lease_task(manager.node.clone());
        crate::operators::spawn_control_task(manager.node.clone());
        manager.spawn_routing_watch();
        manager.spawn_admin_server().await?;
        if let Some(addr) = metrics_bind {
            manager.metrics_addr =
                Some(crate::metrics_http::serve(manager.node.clone(), addr).await?);
        }
        tracing::info!(
            id = manager.id(),
            quic = %manager.node.addrs().quic,
            admin = %manager.node.addrs().admin,
            metrics = ?manager.metrics_addr,
            cluster = %meta.cluster_id,
            groups = meta.groups,
            "manager started"
        );
        Ok(manager)
    }

    /// This manager's id.
    pub fn id(&self) -> u64 {
        self.node.id()
    }

    /// The addresses this manager advertises.
    pub fn node(&self) -> &ManagerNode {
        self.node.addrs()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ManagerConfig {
        self.node.config()
    }

    /// The cluster id, empty before joining.
    pub fn cluster_id(&self) -> String {
        self.node.cluster_id()
    }

    /// The number of groups, 0 before joining.
    pub fn group_count(&self) -> u32 {
        self.node.group_count()
    }

    /// The Raft instance of a group hosted here.
    pub fn raft(&self, group: GroupId) -> Option<Raft> {
        self.node.raft(group)
    }

    /// Read handle on a group's subscription table.
    pub fn reader(&self, group: GroupId) -> Option<TableReader> {
        self.node.reader(group)
    }

    /// The groups this manager currently leads.
    pub fn led_groups(&self) -> Vec<GroupId> {
        self.node.led_groups()
    }

    /// A token cancelled when the manager shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.node.shutdown_token()
    }

    /// Every manager named in any group's membership (voter or learner), with its addresses.
    pub fn known_managers(&self) -> std::collections::BTreeMap<u64, ManagerNode> {
        self.node.known_managers()
    }

    /// This manager's own view of one group.
    pub async fn group_status(&self, group: GroupId) -> Option<(GroupStatus, ReplicaStatus)> {
        self.node.group_status(group).await
    }

    /// The leader of a group as this manager knows it.
    pub fn leader_of(&self, group: GroupId) -> Option<(u64, ManagerNode)> {
        self.node.leader_of(group)
    }

    /// Wait until every group has a leader, or the timeout passes. Returns the groups that
    /// still have none.
    pub async fn wait_for_leaders(&self, timeout: Duration) -> Vec<GroupId> {
        self.node.wait_for_leaders(timeout).await
    }

    /// The local QUIC address the endpoint is bound to.
    pub fn quic_addr(&self) -> SocketAddr {
        self.node.quic_addr()
    }

    /// The address `/metrics` and `/healthz` are served on, if `metrics` is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Resolves when this manager cannot go on: its write-ahead log stopped after a failed
    /// write or fdatasync (a full or failing disk), or a Raft group stopped on a fatal error.
    /// By then gRPC health reports NOT_SERVING and `/healthz` answers 503 with the reason.
    /// Wait a moment for health checkers to see it, then [`Manager::shutdown`] and exit with
    /// [`FatalError::EXIT_CODE`]. Never resolves while the manager works.
    pub fn fatal(&self) -> impl std::future::Future<Output = FatalError> + Send + 'static {
        self.node.fatal()
    }

    /// Stop serving: refuse publishes, close the QUIC endpoint (gateways see their sessions
    /// end at once and move to the other managers; peers stop hearing from this one), stop
    /// the admin server and every Raft group.
    pub async fn shutdown(&self) {
        self.node.shutdown_token().cancel();
        self.node
            .endpoint()
            .close(0u32.into(), b"manager shutting down");
        for (group, raft) in self.node.router().groups() {
            if let Err(e) = raft.shutdown().await {
                tracing::warn!(group = group.get(), error = %e, "raft group did not shut down cleanly");
            }
        }
        // Let the close frames reach the peers before the process exits.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.node.endpoint().wait_idle())
            .await;
    }

    /// After a restart, connect to every other manager of the groups' memberships, so that
    /// each of them stops backing off its attempts to reach us (`PeerConnections::peer_seen`)
    /// and its leaders' heartbeats arrive within a round trip.
    fn announce_restart(&self) {
        let Some(peers) = self.node.peers() else {
            return;
        };
        let mut addrs = std::collections::BTreeSet::new();
        for group in self.node.group_ids() {
            if let Some(raft) = self.node.raft(group) {
                let metrics = raft.metrics().borrow().clone();
                for (id, node) in metrics.membership_config.membership().nodes() {
                    if *id != self.node.id() {
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

    fn spawn_routing_watch(&self) {
        let manager = self.clone();
        tokio::spawn(async move {
            let shutdown = manager.node.shutdown_token();
            let mut known: HashMap<GroupId, Option<u64>> = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let mut changed = false;
                for (group, raft) in manager.node.router().groups() {
                    let leader = raft.metrics().borrow().current_leader;
                    if known.insert(group, leader) != Some(leader) {
                        changed = true;
                    }
                }
                if changed {
                    manager.node.bump_routing_version();
                }
            }
        });
    }

    fn spawn_quic_accept_loop(&self) {
        let manager = self.clone();
        tokio::spawn(async move {
            let endpoint = manager.node.endpoint().clone();
            let shutdown = manager.node.shutdown_token();
            let vouching = Arc::new(Vouching::new(Arc::new(AdminVouch::new(
                manager.node.security().clone(),
            ))));
            let handshakes = firetower_link::HandshakeLimiter::default();
            loop {
                let incoming = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    incoming = endpoint.accept() => incoming,
                };
                let Some(incoming) = incoming else { break };
                // Before any handshake work: a source that starts handshakes faster than its
                // rate limit is refused (QUIC CONNECTION_REFUSED), and its established
                // connections keep going.
                if !handshakes.admit(incoming.remote_address().ip()) {
                    tracing::debug!(remote = %incoming.remote_address(), "QUIC handshake refused: rate limit");
                    manager.node.metrics().handshake_refused(Port::quic);
                    incoming.refuse();
                    continue;
                }
                let manager = manager.clone();
                let vouching = Arc::clone(&vouching);
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
                    // With mutual TLS the handshake already verified the certificate against
                    // the cluster CA; its role decides which protocol the peer may speak.
                    let role = match manager.node.security().is_mutual() {
                        false => None,
                        true => match firetower_link::peer_role(&conn) {
                            Ok(role) => Some(role),
                            Err(e) => {
                                tracing::warn!(remote = %conn.remote_address(), error = %e, "QUIC peer refused");
                                conn.close(CLOSE_FORBIDDEN, e.to_string().as_bytes());
                                return;
                            }
                        },
                    };
                    match alpn.as_deref() {
                        Some(a) if a == firetower_raft::ALPN_RAFT => {
                            if let Some(other) = role
                                .clone()
                                .filter(|r| !matches!(r, firetower_link::Role::Manager(_)))
                            {
                                refuse(&conn, &other, "Raft RPCs need a manager certificate");
                                return;
                            }
                            // A manager certificate of the cluster CA, for the groups it is a
                            // member of (or that a member vouches it is in).
                            let peer = match role {
                                Some(firetower_link::Role::Manager(id)) => {
                                    Some(firetower_raft::AuthenticatedPeer {
                                        id,
                                        vouching: Arc::clone(&vouching),
                                    })
                                }
                                _ => None,
                            };
                            // A peer manager is up: let our RPCs to it dial again at once.
                            if let Some(peers) = manager.node.peers() {
                                peers.peer_seen(conn.remote_address());
                            }
                            firetower_raft::serve_raft_connection(
                                conn,
                                manager.node.router().clone(),
                                manager.node.cluster_id_watch(),
                                peer,
                            )
                            .await;
                        }
                        Some(a) if a == firetower_raft::ALPN_LINK => {
                            let gateway = match role {
                                None => None,
                                Some(firetower_link::Role::Gateway(id)) => {
                                    Some(firetower_proto::GatewayId(id))
                                }
                                Some(other) => {
                                    refuse(
                                        &conn,
                                        &other,
                                        "the gateway link needs a gateway certificate",
                                    );
                                    return;
                                }
                            };
                            crate::link::serve_connection(conn, manager.node, gateway).await;
                        }
                        _ => conn.close(1u32.into(), b"unknown ALPN"),
                    }
                });
            }
        });
    }

    async fn spawn_admin_server(&self) -> Result<(), StartError> {
        let addr = self.node.config().admin;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Bind {
                addr,
                detail: e.to_string(),
            })?;
        let router = crate::admin::router(self.node.clone()).await;
        let shutdown = self.node.shutdown_token();
        let refusals = self.node.clone();
        let incoming = crate::admin_tls::incoming(
            listener,
            self.node.security(),
            shutdown.clone(),
            move || refusals.metrics().handshake_refused(Port::admin),
        )
        .map_err(|e| StartError::Config(crate::ConfigError::Tls(e)))?;
        tokio::spawn(async move {
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "admin server stopped");
            }
        });
        Ok(())
    }
}

/// QUIC close code for a peer whose certificate does not allow what it asked for.
const CLOSE_FORBIDDEN: quinn::VarInt = quinn::VarInt::from_u32(0x403);

/// Close `conn` from a peer of `role` that asked for a protocol its role does not allow.
fn refuse(conn: &quinn::Connection, role: &firetower_link::Role, why: &str) {
    tracing::warn!(remote = %conn.remote_address(), %role, why, "QUIC peer refused");
    conn.close(
        CLOSE_FORBIDDEN,
        format!("{why}; this peer is {role}").as_bytes(),
    );
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
