//! Shared fixtures of the QUIC transport tests: a node that owns a QUIC endpoint, a group
//! router, an accept loop and a real `firetower-store` (write-ahead log + sled state machine in
//! a temporary directory), wired as a manager wires them.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use firetower_raft::vouch::{Vouch, VouchFuture, Vouching};
use firetower_raft::{
    make_endpoint, serve_raft_connection, AuthenticatedPeer, GroupId, GroupRouter, ManagerId,
    ManagerNode, PeerConnections, QuicNetworkFactory, Raft, TypeConfig,
};
use firetower_store::{StateStore, TableReader, Wal, WalOptions};
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Vouches for any peer in these groups, provided some other member is there to ask.
struct FixedVouch(Vec<GroupId>);

impl Vouch for FixedVouch {
    fn vouch(
        &self,
        group: GroupId,
        _peer: ManagerId,
        members: Vec<(ManagerId, ManagerNode)>,
    ) -> VouchFuture {
        let yes = !members.is_empty() && self.0.contains(&group);
        Box::pin(async move { yes })
    }
}

/// Raft timing for tests: fast elections on loopback.
pub fn raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "firetower-test".into(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid raft config"))
}

/// One manager as the transport sees it: endpoint, router, accept loop, hosted groups.
pub struct TestNode {
    pub id: ManagerId,
    pub endpoint: quinn::Endpoint,
    pub addr: SocketAddr,
    pub router: GroupRouter,
    pub cluster_id: watch::Sender<String>,
    wal: Wal<TypeConfig>,
    state: StateStore,
    readers: BTreeMap<GroupId, TableReader>,
    accept: JoinHandle<()>,
    // Dropped last: the store's files live here.
    _dir: TempDir,
}

impl TestNode {
    /// Opens a fresh store, binds a loopback endpoint and serves Raft RPCs on it; no groups yet.
    /// Peers are not authenticated (insecure mode).
    pub fn start(id: ManagerId, cluster_id: &str) -> TestNode {
        TestNode::start_with_peer(id, cluster_id, None)
    }

    /// Like [`TestNode::start`], but every connection is served as coming from manager `peer`,
    /// as if its certificate said so; no member vouches for it where it is not a member.
    pub fn start_with_peer(id: ManagerId, cluster_id: &str, peer: Option<ManagerId>) -> TestNode {
        TestNode::start_vouched(id, cluster_id, peer, &[])
    }

    /// Like [`TestNode::start_with_peer`], with the groups' other members vouching for `peer`
    /// in `vouched_in` (as if their views of those groups had it).
    pub fn start_vouched(
        id: ManagerId,
        cluster_id: &str,
        peer: Option<ManagerId>,
        vouched_in: &[GroupId],
    ) -> TestNode {
        let vouching = Arc::new(Vouching::new(Arc::new(FixedVouch(vouched_in.to_vec()))));
        let peer = peer.map(|id| AuthenticatedPeer {
            id,
            vouching: Arc::clone(&vouching),
        });
        firetower_raft::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let wal = Wal::open(&dir.path().join("wal"), WalOptions::default()).expect("wal opens");
        let state = StateStore::open(&dir.path().join("state")).expect("state store opens");
        let endpoint = make_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &firetower_link::Security::Insecure,
        )
        .expect("endpoint");
        let addr = endpoint.local_addr().expect("local addr");
        let router = GroupRouter::new();
        let (cluster_id, cluster_rx) = watch::channel(cluster_id.to_owned());
        let accept = tokio::spawn({
            let endpoint = endpoint.clone();
            let router = router.clone();
            async move {
                while let Some(incoming) = endpoint.accept().await {
                    let router = router.clone();
                    let cluster_rx = cluster_rx.clone();
                    let peer = peer.clone();
                    tokio::spawn(async move {
                        if let Ok(conn) = incoming.await {
                            serve_raft_connection(conn, router, cluster_rx, peer).await;
                        }
                    });
                }
            }
        });
        TestNode {
            id,
            endpoint,
            addr,
            router,
            cluster_id,
            wal,
            state,
            readers: BTreeMap::new(),
            accept,
            _dir: dir,
        }
    }

    pub fn node(&self) -> ManagerNode {
        ManagerNode {
            quic: self.addr.to_string(),
            admin: String::new(),
        }
    }

    /// Starts `groups` on this node, all sharing one `PeerConnections`.
    pub async fn start_groups(
        &mut self,
        groups: impl IntoIterator<Item = GroupId>,
        config: Arc<openraft::Config>,
    ) {
        let peers = PeerConnections::new(self.endpoint.clone(), self.cluster_id.borrow().clone());
        for group in groups {
            let sm = self
                .state
                .state_machine(group.get())
                .expect("state machine opens");
            self.readers.insert(group, sm.reader());
            let raft = Raft::new(
                self.id,
                config.clone(),
                QuicNetworkFactory::new(group, peers.clone()),
                self.wal.log_store(group.get()),
                sm,
            )
            .await
            .expect("raft starts");
            self.router.insert(group, raft);
        }
    }

    pub fn raft(&self, group: GroupId) -> Raft {
        self.router.get(group).expect("group hosted")
    }

    pub fn subscribers(&self, group: GroupId, topic: &str) -> BTreeSet<u64> {
        self.readers[&group]
            .gateways(topic)
            .expect("table readable")
            .into_iter()
            .collect()
    }

    /// Stops serving Raft RPCs on the endpoint (a test then accepts connections itself).
    pub fn accept_abort(&self) {
        self.accept.abort();
    }

    /// Cuts this node off: its endpoint closes every connection and refuses new ones.
    pub fn close_endpoint(&self) {
        self.endpoint.close(0u32.into(), b"test: node isolated");
    }

    pub async fn shutdown(self) {
        for (_, raft) in self.router.groups() {
            let _ = raft.shutdown().await;
        }
        self.accept.abort();
        self.endpoint.close(0u32.into(), b"test over");
    }
}

/// Waits until `raft` reports a leader satisfying `ok`, and returns it.
pub async fn wait_leader(
    raft: &Raft,
    ok: impl Fn(ManagerId) -> bool + Send + 'static,
    timeout: Duration,
) -> anyhow::Result<ManagerId> {
    let metrics = raft
        .wait(Some(timeout))
        .metrics(
            move |m| m.current_leader.is_some_and(&ok),
            "a leader that satisfies the condition",
        )
        .await?;
    Ok(metrics
        .current_leader
        .expect("checked by the wait condition"))
}
