//! Client side of Raft RPCs: openraft's [`RaftNetworkFactory`] over QUIC.
//!
//! ```text
//!   group 0 ─ QuicNetworkFactory ─┐
//!   group 1 ─ QuicNetworkFactory ─┼─ PeerConnections ─┬─ quinn::Connection ─▶ manager 2
//!   group 7 ─ QuicNetworkFactory ─┘  (one per manager) └─ quinn::Connection ─▶ manager 3
//! ```
//!
//! All groups share one QUIC connection per peer; every RPC is its own bidirectional stream
//! tagged with the group id (see the wire module), so a slow snapshot of one group never blocks
//! the heartbeats of another.
//!
//! Connections are opened lazily and replaced when they close. A failed connection attempt puts
//! the peer in backoff (exponential, full jitter, see [`ReconnectPolicy`]); until it expires,
//! RPCs to that peer fail at once instead of each paying for a handshake that will time out.
//! Only one attempt per peer runs at a time, and it runs in its own task, so openraft timing out
//! an RPC (after one heartbeat interval) does not abort the handshake the next RPC needs.
//!
//! Every RPC on an established connection has a deadline, openraft's `hard_ttl` for it: a peer
//! that takes a request and never answers costs one RPC timeout, not a stuck replication task.
//! A reply is read with a limit of [`MAX_REPLY_LEN`](crate::wire::MAX_REPLY_LEN) bytes.
//!
//! Errors are mapped so that openraft's own backoff works: a peer that cannot be reached, or
//! refuses to serve the group (not in a cluster, another cluster, group not started yet, not a
//! member) is [`Unreachable`]; a failure on an established stream, a deadline passed, or a
//! request the peer found malformed or implausible is a [`NetworkError`]; an error returned by
//! the peer's openraft is a [`RemoteError`]. Two refusals become what openraft acts on: an
//! append too large for the peer is `PayloadTooLarge` (openraft sends fewer entries), and a
//! snapshot chunk out of order is openraft's `SnapshotMismatch` (it starts over at offset 0).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    SnapshotMismatch, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::SnapshotSegmentId;
use quinn::{Connection, Endpoint};
use tokio::time::Instant;

use crate::wire::{
    self, RaftReply, RaftRequest, Rejection, ReplyBody, RequestBody, WireError, MAX_REPLY_LEN,
};
use crate::{GroupId, ManagerId, ManagerNode, TypeConfig};
use firetower_link::{ReconnectPolicy, SERVER_NAME};

/// The QUIC connections of this manager to its peers, shared by every Raft group.
/// Cheap to clone: clones share the connections.
#[derive(Clone)]
pub struct PeerConnections {
    inner: Arc<Peers>,
}

struct Peers {
    endpoint: Endpoint,
    cluster_id: String,
    policy: ReconnectPolicy,
    /// Keyed by the peer's QUIC address as written in the membership (`ManagerNode::quic`).
    slots: Mutex<HashMap<String, PeerSlot>>,
}

/// A connection attempt every caller for that peer can wait on.
type Dial = Shared<BoxFuture<'static, Result<Connection, DialError>>>;

#[derive(Default)]
struct PeerSlot {
    conn: Option<Connection>,
    dialing: Option<Dial>,
    /// Consecutive failed attempts; reset by a successful handshake.
    failures: u32,
    /// No new attempt before this instant.
    retry_at: Option<Instant>,
}

/// Why a connection to a peer could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum DialError {
    /// The peer's address did not resolve.
    #[error("cannot resolve the address: {0}")]
    Resolve(String),
    /// The address resolved to nothing usable from this endpoint.
    #[error("the address resolves to no {0} address")]
    NoAddress(&'static str),
    /// quinn refused to start the connection (endpoint closed, invalid address, ...).
    #[error("cannot start a QUIC connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC or TLS handshake failed.
    #[error("QUIC handshake failed: {0}")]
    Handshake(#[from] quinn::ConnectionError),
    /// No handshake within the policy's connect timeout.
    #[error("no QUIC handshake within {0:?}")]
    Timeout(Duration),
}

/// Why one RPC failed on this side (the peer's Raft errors are not among these).
#[derive(Debug, thiserror::Error)]
enum RpcError {
    #[error("peer {addr} is in reconnect backoff for {remaining:?} more after {failures} failed attempts")]
    Backoff {
        addr: String,
        remaining: Duration,
        failures: u32,
    },
    #[error("cannot connect to peer {addr}: {source}")]
    Dial { addr: String, source: DialError },
    #[error("connection to the peer lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("cannot send the request: {0}")]
    Send(#[from] quinn::WriteError),
    #[error("cannot finish the request stream: {0}")]
    Finish(#[from] quinn::ClosedStream),
    #[error("cannot encode the request: {0}")]
    Encode(#[source] WireError),
    #[error("bad reply: {0}")]
    Reply(#[from] WireError),
    #[error("the peer closed the stream without replying")]
    NoReply,
    #[error("the peer answered a different kind of request")]
    MismatchedReply,
    #[error("the peer refused the request: {0}")]
    Rejected(#[from] Rejection),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
}

impl RpcError {
    /// Whether openraft should treat the peer as unreachable and back off, rather than retry
    /// at its normal pace.
    fn is_unreachable(&self) -> bool {
        match self {
            RpcError::Backoff { .. } | RpcError::Dial { .. } | RpcError::Connection(_) => true,
            RpcError::Send(quinn::WriteError::ConnectionLost(_)) => true,
            RpcError::Rejected(rejection) => matches!(
                rejection,
                Rejection::NotInCluster
                    | Rejection::ClusterMismatch
                    | Rejection::GroupNotHosted(_)
                    | Rejection::NotAMember { .. }
            ),
            _ => false,
        }
    }

    fn into_rpc_error<E: std::error::Error>(self) -> RPCError<ManagerId, ManagerNode, E> {
        if self.is_unreachable() {
            RPCError::Unreachable(Unreachable::new(&self))
        } else {
            RPCError::Network(NetworkError::new(&self))
        }
    }
}

impl std::fmt::Debug for PeerConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut peers: Vec<String> = self.inner.slots().keys().cloned().collect();
        peers.sort_unstable();
        f.debug_struct("PeerConnections")
            .field("cluster_id", &self.inner.cluster_id)
            .field("peers", &peers)
            .finish()
    }
}

impl PeerConnections {
    /// Connections opened from `endpoint`, with every request stamped with `cluster_id`.
    pub fn new(endpoint: Endpoint, cluster_id: String) -> Self {
        Self::with_policy(endpoint, cluster_id, ReconnectPolicy::default())
    }

    /// Like [`PeerConnections::new`] with a custom reconnect policy.
    pub fn with_policy(endpoint: Endpoint, cluster_id: String, policy: ReconnectPolicy) -> Self {
        Self {
            inner: Arc::new(Peers {
                endpoint,
                cluster_id,
                policy,
                slots: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The cluster id stamped on every request.
    pub fn cluster_id(&self) -> &str {
        &self.inner.cluster_id
    }

    /// A peer at `remote` just connected to us, so it is up: forget the backoff of our own
    /// connection attempts to it, and any attempt still waiting on a handshake begun while it
    /// was down (that one would complete only at its next retransmission). Our next RPC to it
    /// dials at once. Without this a restarted manager could go unheard by the leader for up
    /// to the backoff cap plus a handshake timeout.
    pub fn peer_seen(&self, remote: SocketAddr) {
        let mut slots = self.inner.slots();
        for (addr, slot) in slots.iter_mut() {
            if addr.parse::<SocketAddr>().ok() != Some(remote) {
                continue;
            }
            let connected = slot
                .conn
                .as_ref()
                .is_some_and(|c| c.close_reason().is_none());
            if !connected {
                slot.conn = None;
                slot.dialing = None;
                slot.failures = 0;
                slot.retry_at = None;
            }
        }
    }

    /// Open the connection to `addr` now (if it is not open), so that the peer learns we are
    /// up (see [`PeerConnections::peer_seen`]). Errors are left to the next RPC.
    pub async fn warm_up(&self, addr: &str) {
        if let Err(e) = self.connection(addr).await {
            tracing::debug!(peer = %addr, error = %e, "could not reach a peer at start");
        }
    }

    /// One RPC: a new stream on the peer's connection, the request (header and body frames),
    /// one reply frame, all within `deadline` once connected.
    async fn call(
        &self,
        addr: &str,
        group: GroupId,
        body: RequestBody,
        deadline: Duration,
    ) -> Result<ReplyBody, RpcError> {
        let request = RaftRequest {
            cluster_id: self.inner.cluster_id.clone(),
            group,
            body,
        };
        // Encode first: a request too large to send is not the peer's fault.
        let frames = wire::encode_request(&request).map_err(RpcError::Encode)?;
        let conn = self.connection(addr).await?;
        tokio::time::timeout(deadline, exchange(&conn, &frames))
            .await
            .unwrap_or(Err(RpcError::Timeout(deadline)))
    }

    /// The open connection to `addr`, or a new one unless the peer is in backoff.
    async fn connection(&self, addr: &str) -> Result<Connection, RpcError> {
        let dial = {
            let mut slots = self.inner.slots();
            let slot = match slots.get_mut(addr) {
                Some(slot) => slot,
                None => slots.entry(addr.to_owned()).or_default(),
            };
            if let Some(conn) = &slot.conn {
                if conn.close_reason().is_none() {
                    return Ok(conn.clone());
                }
                slot.conn = None;
            }
            match &slot.dialing {
                Some(dial) => dial.clone(),
                None => {
                    if let Some(retry_at) = slot.retry_at {
                        let now = Instant::now();
                        if now < retry_at {
                            return Err(RpcError::Backoff {
                                addr: addr.to_owned(),
                                remaining: retry_at - now,
                                failures: slot.failures,
                            });
                        }
                    }
                    let dial = dial(Arc::clone(&self.inner), addr.to_owned())
                        .boxed()
                        .shared();
                    slot.dialing = Some(dial.clone());
                    // Drive the attempt to its end even if every caller gives up waiting.
                    tokio::spawn(dial.clone());
                    dial
                }
            }
        };
        dial.await.map_err(|source| RpcError::Dial {
            addr: addr.to_owned(),
            source,
        })
    }
}

/// Sends `frames` on a new stream of `conn` and reads the reply.
async fn exchange(conn: &Connection, frames: &[u8]) -> Result<ReplyBody, RpcError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    match send.write_all(frames).await {
        Ok(()) => send.finish()?,
        // The server refused the request from its header and stopped reading: its reply says
        // why.
        Err(quinn::WriteError::Stopped(_)) => {}
        Err(error) => return Err(error.into()),
    }
    let reply = wire::read_frame(&mut recv, MAX_REPLY_LEN)
        .await?
        .ok_or(RpcError::NoReply)?;
    let reply: RaftReply = wire::decode_body(&reply)?;
    Ok(reply?)
}

impl Peers {
    // Every critical section is a few field updates that cannot panic halfway, so a poisoned
    // lock still guards consistent data.
    fn slots(&self) -> MutexGuard<'_, HashMap<String, PeerSlot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection attempt to `addr`; records its outcome in the peer's slot.
async fn dial(peers: Arc<Peers>, addr: String) -> Result<Connection, DialError> {
    let timeout = peers.policy.connect_timeout;
    let attempt = async {
        let target = resolve(&addr, peers.endpoint.local_addr().ok()).await?;
        let connecting = peers.endpoint.connect(target, SERVER_NAME)?;
        Ok(connecting.await?)
    };
    let result = tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(DialError::Timeout(timeout)));

    let mut slots = peers.slots();
    let slot = slots.entry(addr.clone()).or_default();
    slot.dialing = None;
    match &result {
        Ok(conn) => {
            tracing::debug!(peer = %addr, "connected to peer");
            slot.conn = Some(conn.clone());
            slot.failures = 0;
            slot.retry_at = None;
        }
        Err(error) => {
            slot.failures = slot.failures.saturating_add(1);
            let delay = peers.policy.delay(slot.failures, &mut rand::rng());
            slot.retry_at = Some(Instant::now() + delay);
            tracing::debug!(peer = %addr, %error, failures = slot.failures, ?delay, "cannot connect to peer");
        }
    }
    result
}

/// Resolves `addr` (`host:port`), preferring the address family of the local endpoint.
async fn resolve(addr: &str, local: Option<SocketAddr>) -> Result<SocketAddr, DialError> {
    if let Ok(addr) = addr.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let candidates: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| DialError::Resolve(e.to_string()))?
        .collect();
    let want_v4 = local.is_none_or(|l| l.is_ipv4());
    candidates
        .iter()
        .find(|a| a.is_ipv4() == want_v4)
        .or(candidates.first())
        .copied()
        .ok_or(DialError::NoAddress(if want_v4 { "IPv4" } else { "IPv6" }))
}

/// Openraft's network factory for one group: every client it makes shares the manager's
/// [`PeerConnections`].
#[derive(Debug, Clone)]
pub struct QuicNetworkFactory {
    group: GroupId,
    peers: PeerConnections,
}

impl QuicNetworkFactory {
    /// The factory of group `group`.
    pub fn new(group: GroupId, peers: PeerConnections) -> Self {
        Self { group, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for QuicNetworkFactory {
    type Network = QuicNetwork;

    async fn new_client(&mut self, target: ManagerId, node: &ManagerNode) -> QuicNetwork {
        QuicNetwork {
            group: self.group,
            target,
            node: node.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// Openraft's client of one peer for one group.
#[derive(Debug)]
pub struct QuicNetwork {
    group: GroupId,
    target: ManagerId,
    node: ManagerNode,
    peers: PeerConnections,
}

impl QuicNetwork {
    async fn call(&self, body: RequestBody, option: &RPCOption) -> Result<ReplyBody, RpcError> {
        self.peers
            .call(&self.node.quic, self.group, body, option.hard_ttl())
            .await
    }

    fn remote<E>(&self, error: E) -> RPCError<ManagerId, ManagerNode, E>
    where
        E: std::error::Error,
    {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            error,
        ))
    }
}

impl RaftNetwork<TypeConfig> for QuicNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        AppendEntriesResponse<ManagerId>,
        RPCError<ManagerId, ManagerNode, RaftError<ManagerId>>,
    > {
        let entries = rpc.entries.len();
        match self.call(RequestBody::AppendEntries(rpc), &option).await {
            Ok(ReplyBody::AppendEntries(Ok(response))) => Ok(response),
            Ok(ReplyBody::AppendEntries(Err(error))) => Err(self.remote(error)),
            Ok(_) => Err(RpcError::MismatchedReply.into_rpc_error()),
            // Too many entries for one frame (here or at the peer): openraft retries at once
            // with fewer.
            Err(
                RpcError::Encode(WireError::TooLarge { .. })
                | RpcError::Rejected(Rejection::BodyTooLarge { .. }),
            ) if entries > 1 => Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries as u64 / 2),
            )),
            Err(error) => Err(error.into_rpc_error()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<ManagerId>,
        RPCError<ManagerId, ManagerNode, RaftError<ManagerId, InstallSnapshotError>>,
    > {
        match self.call(RequestBody::InstallSnapshot(rpc), &option).await {
            Ok(ReplyBody::InstallSnapshot(Ok(response))) => Ok(response),
            Ok(ReplyBody::InstallSnapshot(Err(error))) => Err(self.remote(error)),
            Ok(_) => Err(RpcError::MismatchedReply.into_rpc_error()),
            // Openraft's sender starts the snapshot over at offset 0 on a mismatch.
            Err(RpcError::Rejected(Rejection::SnapshotOutOfOrder {
                snapshot_id,
                expected,
                got,
            })) => Err(
                self.remote(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
                    SnapshotMismatch {
                        expect: SnapshotSegmentId {
                            id: snapshot_id.clone(),
                            offset: expected,
                        },
                        got: SnapshotSegmentId {
                            id: snapshot_id,
                            offset: got,
                        },
                    },
                ))),
            ),
            Err(error) => Err(error.into_rpc_error()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ManagerId>,
        option: RPCOption,
    ) -> Result<VoteResponse<ManagerId>, RPCError<ManagerId, ManagerNode, RaftError<ManagerId>>>
    {
        match self.call(RequestBody::Vote(rpc), &option).await {
            Ok(ReplyBody::Vote(Ok(response))) => Ok(response),
            Ok(ReplyBody::Vote(Err(error))) => Err(self.remote(error)),
            Ok(_) => Err(RpcError::MismatchedReply.into_rpc_error()),
            Err(error) => Err(error.into_rpc_error()),
        }
    }

    /// After an [`Unreachable`], openraft pauses replication to the peer for these delays (the
    /// same exponential backoff with full jitter as reconnecting).
    fn backoff(&self) -> Backoff {
        Backoff::new(self.peers.inner.policy.delays())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_versus_network_errors() {
        let backoff = RpcError::Backoff {
            addr: "x".into(),
            remaining: Duration::from_millis(5),
            failures: 1,
        };
        assert!(backoff.is_unreachable());
        assert!(RpcError::Rejected(Rejection::NotInCluster).is_unreachable());
        assert!(RpcError::Rejected(Rejection::GroupNotHosted(GroupId(1))).is_unreachable());
        assert!(RpcError::Rejected(Rejection::ClusterMismatch).is_unreachable());
        assert!(RpcError::Rejected(Rejection::NotAMember {
            peer: 4,
            group: GroupId(1)
        })
        .is_unreachable());
        assert!(!RpcError::Rejected(Rejection::BadRequest("x".into())).is_unreachable());
        assert!(!RpcError::Timeout(Duration::from_secs(1)).is_unreachable());
        assert!(!RpcError::NoReply.is_unreachable());
        assert!(!RpcError::MismatchedReply.is_unreachable());
        let e: RPCError<ManagerId, ManagerNode, RaftError<ManagerId>> =
            RpcError::NoReply.into_rpc_error();
        assert!(matches!(e, RPCError::Network(_)));
    }

    #[tokio::test]
    async fn resolve_prefers_the_endpoint_family() {
        let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            resolve("127.0.0.1:6666", Some(v4)).await.unwrap(),
            "127.0.0.1:6666".parse().unwrap()
        );
        let resolved = resolve("localhost:6666", Some(v4)).await.unwrap();
        assert!(resolved.is_ipv4());
        assert!(resolve("no-such-host.invalid:1", Some(v4)).await.is_err());
    }

    #[tokio::test]
    async fn dead_peer_goes_into_backoff_and_fails_fast() {
        let endpoint = crate::make_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &firetower_link::Security::Insecure,
        )
        .unwrap();
        // A bound UDP socket nobody answers on: handshakes time out.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let policy = ReconnectPolicy {
            base: Duration::from_secs(30),
            cap: Duration::from_secs(60),
            connect_timeout: Duration::from_millis(200),
        };
        let peers = PeerConnections::with_policy(endpoint, "c".into(), policy);
        let first = peers.connection(&addr).await.unwrap_err();
        assert!(
            matches!(
                first,
                RpcError::Dial {
                    source: DialError::Timeout(_),
                    ..
                }
            ),
            "{first}"
        );
        // Within the backoff window the next attempt fails at once, without a handshake...
        let started = std::time::Instant::now();
        let mut in_backoff = 0;
        for _ in 0..20 {
            match peers.connection(&addr).await {
                Err(RpcError::Backoff { failures: 1, .. }) => in_backoff += 1,
                // ...unless full jitter drew a tiny delay, which is allowed.
                Err(RpcError::Dial { .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(in_backoff > 0);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
