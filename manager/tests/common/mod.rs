//! Shared fixture of the manager's in-memory network tests: three managers and test gateways
//! in this process, their QUIC endpoints on one [`MemNet`] at virtual addresses.
//!
//! ```text
//!   TestGateway 1 (10.0.1.1:7000) ─┐                     ┌─ Manager 1 (10.0.0.1:6666)
//!   TestGateway 2 (10.0.1.2:7000) ─┼── MemNet switch ────┼─ Manager 2 (10.0.0.2:6666)
//!                                  │  cut / partition /  └─ Manager 3 (10.0.0.3:6666)
//!                                  │  isolate / delay / heal
//!   admin gRPC (bootstrap only) ── loopback TCP ── every manager
//! ```
//!
//! Only QUIC (Raft between managers, the gateway link) crosses the switch; the admin API that
//! `cluster init` uses stays on loopback TCP. No packet reaches the OS network, so the tests
//! need no root and no namespaces.
//!
//! A [`TestGateway`] is a gateway's cluster side without its client side: the real
//! [`ClusterUpstream`] (its requests, and one session stream per manager with heartbeats,
//! acks, re-subscription of held topics on `Resync` and routing pushes), connected over the
//! switch with [`ClusterUpstream::connect_with_endpoint`]. The deliveries it passes on are
//! recorded for the test to read instead of being fanned out to clients.
//!
//! Everything waits by polling against a deadline; nothing assumes how long an election or a
//! timeout takes.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use firetower_gateway::{ClusterOptions, ClusterUpstream, Payload, Stamp, Upstream, UpstreamError};
use firetower_link::{LinkClient, LinkError, LinkOptions, LinkReply, LinkRequest, MemNet};
use firetower_manager::{connect_admin, Manager, ManagerConfig, RaftTuning};
use firetower_proto::admin::InitRequest;
use firetower_proto::{group_of, GroupId};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Managers in every test cluster: the smallest cluster with a majority and a minority.
pub const MANAGERS: u64 = 3;

/// The shortest lease a manager grants, so that expiry is observed quickly.
pub const LEASE: Duration = Duration::from_millis(1_000);

/// How long a gateway's link request may take across retries and leader changes.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);

/// Pause between two tries of a request that failed at once (a refusal, say).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The virtual QUIC address of manager `id`.
pub fn manager_addr(id: u64) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, octet(id)], 6666))
}

/// The virtual QUIC address of gateway `id`.
pub fn gateway_addr(id: u64) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, octet(id)], 7000))
}

fn octet(id: u64) -> u8 {
    u8::try_from(id).expect("test ids are small")
}

/// The clusters of one test binary run one at a time: three managers with their elections
/// and timeouts per test are enough load for a small machine, and timing-sensitive cases
/// should not compete with each other for it.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Log to the test output when `FIRETOWER_TEST_LOG` is set (an `EnvFilter` such as
/// `info,openraft=warn`); silent otherwise.
pub fn init_logging() {
    if let Ok(filter) = std::env::var("FIRETOWER_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Poll `check` every 20 ms until it gives a value, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback TCP port")
        .port()
}

/// Three managers on one in-memory network, initialized as one cluster.
pub struct Cluster {
    /// The network between every manager and gateway of the test.
    pub net: MemNet,
    /// The number of groups.
    pub groups: u32,
    managers: Vec<Manager>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Start [`MANAGERS`] managers with the default Raft timing, `cluster init` them with
    /// `groups` groups, and wait until all of them agree on a leader of every group.
    pub async fn start(groups: u32) -> Cluster {
        Cluster::start_tuned(groups, RaftTuning::default()).await
    }

    /// Like [`Cluster::start`], with `raft` timing (fsync is turned off either way: the data
    /// is thrown away).
    pub async fn start_tuned(groups: u32, raft: RaftTuning) -> Cluster {
        init_logging();
        let net = MemNet::new();
        let mut managers = Vec::new();
        let mut dirs = Vec::new();
        for id in 1..=MANAGERS {
            let dir = tempfile::tempdir().expect("a temporary data directory");
            let config = ManagerConfig {
                id,
                quic: manager_addr(id),
                admin: SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
                data_dir: dir.path().to_path_buf(),
                cluster_id: None,
                raft: RaftTuning {
                    fsync: false,
                    ..raft.clone()
                },
                // Scraped by tests that read a gauge (`Cluster::metric`).
                metrics: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                unsafe_stale_reads: false,
                unsafe_stale_leadership: false,
                tls: firetower_manager::TlsSettings {
                    dir: None,
                    insecure: true,
                },
                unsafe_test_hooks: false,
            };
            let socket = net.bind(manager_addr(id)).expect("a free virtual address");
            let manager = Manager::start_on(config, socket)
                .await
                .expect("the manager starts");
            assert_eq!(manager.quic_addr(), manager_addr(id));
            managers.push(manager);
            dirs.push(dir);
        }
        let mut admin = connect_admin(
            &managers[0].node().admin,
            &firetower_link::Security::Insecure,
            Duration::from_secs(10),
        )
        .await
        .expect("the admin API answers");
        admin
            .init(InitRequest {
                members: managers[1..]
                    .iter()
                    .map(|m| m.node().admin.clone())
                    .collect(),
                groups,
            })
            .await
            .expect("cluster init");
        let cluster = Cluster {
            net,
            groups,
            managers,
            _dirs: dirs,
        };
        for group in (0..groups).map(GroupId) {
            cluster
                .agreed_leader(group, &cluster.ids(), Duration::from_secs(15))
                .await;
        }
        cluster
    }

    /// Every manager id.
    pub fn ids(&self) -> Vec<u64> {
        (1..=MANAGERS).collect()
    }

    /// Manager `id`.
    pub fn manager(&self, id: u64) -> &Manager {
        &self.managers[usize::try_from(id - 1).expect("a small id")]
    }

    /// The group of `topic`.
    pub fn group_of(&self, topic: &str) -> GroupId {
        GroupId(group_of(topic, self.groups))
    }

    /// One topic per group, named `prefix.N`.
    pub fn topic_per_group(&self, prefix: &str) -> Vec<String> {
        let mut topics: Vec<Option<String>> = vec![None; self.groups as usize];
        for n in 0.. {
            if topics.iter().all(Option::is_some) {
                break;
            }
            let topic = format!("{prefix}.{n}");
            let slot = &mut topics[self.group_of(&topic).get() as usize];
            if slot.is_none() {
                *slot = Some(topic);
            }
        }
        topics.into_iter().flatten().collect()
    }

    /// The leader of `group` as manager `id` knows it.
    pub fn leader_seen_by(&self, id: u64, group: GroupId) -> Option<u64> {
        self.manager(id).leader_of(group).map(|(leader, _)| leader)
    }

    /// Wait until every manager of `among` names the same leader of `group`, that leader is
    /// one of them and it knows itself as leader; returns it.
    pub async fn agreed_leader(&self, group: GroupId, among: &[u64], timeout: Duration) -> u64 {
        eventually(
            timeout,
            &format!("managers {among:?} agree on a leader of group {group}"),
            || async move {
                let seen: BTreeSet<Option<u64>> = among
                    .iter()
                    .map(|id| self.leader_seen_by(*id, group))
                    .collect();
                let seen: Vec<Option<u64>> = seen.into_iter().collect();
                match seen[..] {
                    [Some(leader)]
                        if among.contains(&leader)
                            && self.manager(leader).led_groups().contains(&group) =>
                    {
                        Some(leader)
                    }
                    _ => None,
                }
            },
        )
        .await
    }

    /// The gateways subscribed to `topic` in manager `id`'s applied copy of the table.
    pub fn subscribers_on(&self, id: u64, topic: &str) -> Vec<u64> {
        self.manager(id)
            .reader(self.group_of(topic))
            .expect("every manager hosts every group")
            .gateways(topic)
            .expect("the table reads")
    }

    /// Wait until every manager's copy of the table holds each `(gateway, topic)`.
    pub async fn wait_subscribed_everywhere(&self, expected: &[(u64, String)], timeout: Duration) {
        eventually(
            timeout,
            &format!("every manager holds {expected:?}"),
            || async move {
                self.ids()
                    .into_iter()
                    .all(|id| {
                        expected.iter().all(|(gateway, topic)| {
                            self.subscribers_on(id, topic).contains(gateway)
                        })
                    })
                    .then_some(())
            },
        )
        .await;
    }

    /// Wait until no manager's copy of the table holds `gateway` for any of `topics`.
    pub async fn wait_unsubscribed_everywhere(
        &self,
        gateway: u64,
        topics: &[String],
        timeout: Duration,
    ) {
        eventually(
            timeout,
            &format!("no manager holds gateway {gateway} for {topics:?}"),
            || async move {
                self.ids()
                    .into_iter()
                    .all(|id| {
                        topics
                            .iter()
                            .all(|topic| !self.subscribers_on(id, topic).contains(&gateway))
                    })
                    .then_some(())
            },
        )
        .await;
    }

    /// A gateway at [`gateway_addr`]`(id)` with a session to every manager; returns once all
    /// sessions are open.
    pub async fn gateway(&self, id: u64) -> TestGateway {
        let gateway = TestGateway::connect(&self.net, id).await;
        gateway
            .wait_sessions(MANAGERS as usize, Duration::from_secs(10))
            .await;
        gateway
    }

    /// The value of the metric series `series` (name and labels, as scraped) on manager `id`.
    pub async fn metric(&self, id: u64, series: &str) -> Option<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.manager(id).metrics_addr()?;
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8(response).ok()?;
        text.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
    }

    /// Stop every manager.
    pub async fn shutdown(self) {
        futures::future::join_all(self.managers.iter().map(Manager::shutdown)).await;
    }
}

/// A message a [`TestGateway`]'s upstream passed on to its (absent) fan-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub data: Vec<u8>,
    /// The stamp its leader gave it: the leader's term...
    pub term: u64,
    /// ...and the topic's sequence number in that term.
    pub seq: u64,
}

/// The cluster side of a gateway (see the module doc): a [`ClusterUpstream`] whose
/// deliveries are recorded. Its sessions stop when it is dropped.
pub struct TestGateway {
    /// The gateway's id.
    pub id: u64,
    /// Its virtual address.
    pub addr: SocketAddr,
    upstream: ClusterUpstream,
    received: Arc<Mutex<Vec<Received>>>,
    /// The task recording deliveries.
    recorder: AbortHandle,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.upstream.close();
        self.recorder.abort();
    }
}

impl TestGateway {
    /// Connect gateway `id` (through every manager's address) and start its sessions.
    pub async fn connect(net: &MemNet, id: u64) -> TestGateway {
        let addr = gateway_addr(id);
        let endpoint = net.client_endpoint(addr).expect("a free virtual address");
        let managers = (1..=MANAGERS).map(manager_addr).collect();
        let options = ClusterOptions {
            lease: LEASE,
            link: LinkOptions {
                request_timeout: REQUEST_TIMEOUT,
                min_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(500),
                ..LinkOptions::default()
            },
            ..ClusterOptions::default()
        };
        let (upstream, mut deliveries) =
            ClusterUpstream::connect_with_endpoint(endpoint, id, managers, options)
                .await
                .expect("the gateway reaches the cluster");
        let received = Arc::new(Mutex::new(Vec::new()));
        let record = received.clone();
        let recorder = tokio::spawn(async move {
            while let Some(delivery) = deliveries.recv().await {
                lock(&record).push(Received {
                    topic: delivery.topic.to_string(),
                    data: delivery.payload.bytes().to_vec(),
                    term: delivery.term,
                    seq: delivery.seq,
                });
            }
        })
        .abort_handle();
        TestGateway {
            id,
            addr,
            upstream,
            received,
            recorder,
        }
    }

    /// The link the gateway's requests go through.
    pub fn link(&self) -> &LinkClient {
        self.upstream.link()
    }

    /// Subscribe to `topic` in this gateway's session, as the gateway does for its first
    /// local subscriber: [`ClusterUpstream`] holds it for resyncs.
    pub async fn subscribe(&self, topic: &str) -> Result<(), UpstreamError> {
        self.upstream.subscribe(topic).await
    }

    /// Retry [`TestGateway::subscribe`] until it is acknowledged, or panic after `timeout`.
    pub async fn subscribe_within(&self, topic: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let error = match self.subscribe(topic).await {
                Ok(()) => return,
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "gateway {} could not subscribe {topic} within {timeout:?}: {error}",
                self.id
            );
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Publish as the gateway does for a client (the link finds the leader and retries what
    /// is safe to retry).
    pub async fn publish(&self, topic: &str, data: &[u8]) -> Result<Stamp, UpstreamError> {
        let payload = Payload::Binary(Bytes::copy_from_slice(data));
        self.upstream.publish(topic, payload).await
    }

    /// Retry [`TestGateway::publish`] until it is acknowledged, or panic after `timeout`.
    pub async fn publish_within(&self, topic: &str, data: &[u8], timeout: Duration) -> Stamp {
        let deadline = Instant::now() + timeout;
        loop {
            let error = match self.publish(topic, data).await {
                Ok(stamp) => return stamp,
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "gateway {} could not publish to {topic} within {timeout:?}: {error}",
                self.id
            );
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// One publish sent to manager `at` only, without retries, with its reply as is (which
    /// says to how many gateways the message was delivered). `Err` when no reply came.
    pub async fn publish_at(
        &self,
        at: SocketAddr,
        topic: &str,
        data: &[u8],
    ) -> Result<LinkReply, LinkError> {
        let request = LinkRequest::Publish {
            topic: topic.to_string(),
            data: data.to_vec(),
            json: false,
        };
        self.link().request_at(at, &request, REQUEST_TIMEOUT).await
    }

    /// The gateways of `topic`, read at its group's leader (linearizable).
    pub async fn topic_gateways(&self, topic: &str) -> Result<Vec<u64>, LinkError> {
        self.link().topic_gateways(topic).await
    }

    /// How many managers this gateway has an open session with.
    pub fn open_sessions(&self) -> usize {
        self.upstream.open_sessions()
    }

    /// Wait until exactly `n` sessions are open.
    pub async fn wait_sessions(&self, n: usize, timeout: Duration) {
        eventually(
            timeout,
            &format!("gateway {} has {n} open sessions", self.id),
            || async move { (self.open_sessions() == n).then_some(()) },
        )
        .await;
    }

    /// `Resync` frames received so far.
    pub fn resyncs(&self) -> u64 {
        self.upstream.resyncs()
    }

    /// Re-subscriptions after a `Resync` that failed.
    pub fn resync_failures(&self) -> u64 {
        self.upstream.resync_failures()
    }

    /// Every message of `topic` passed on so far.
    pub fn received(&self, topic: &str) -> Vec<Received> {
        lock(&self.received)
            .iter()
            .filter(|r| r.topic == topic)
            .cloned()
            .collect()
    }

    /// Wait until the message `data` of `topic` arrived; returns it.
    pub async fn wait_received(&self, topic: &str, data: &[u8], timeout: Duration) -> Received {
        eventually(
            timeout,
            &format!(
                "gateway {} receives {:?} on {topic}",
                self.id,
                String::from_utf8_lossy(data)
            ),
            || async move { self.received(topic).into_iter().find(|r| r.data == data) },
        )
        .await
    }
}
