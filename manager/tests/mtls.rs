//! Hostile peers against managers running with mutual TLS: real managers in this process on
//! loopback (UDP for QUIC, TCP for the admin API), certificates from a test CA made with
//! `firetower_link::certs::ensure`.
//!
//! ```text
//!   good gateway 1 ──link──▶ ┌──────────────┐ ◀──admin (TLS)── operator-admin
//!   hostile peer ──────────▶ │ manager 1..n │ ◀──────────────── hostile client
//!   (no certificate, wrong   └──────────────┘
//!    role, another gateway's id, another CA, a flood of idle admin connections, --insecure)
//! ```
//!
//! Every case asserts two things: the hostile peer is refused with an error that says why,
//! and the cluster keeps serving (a gateway with the right certificate loads the routing and
//! reads a topic's gateways, and `Members` answers an operator).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use firetower_link::certs;
use firetower_link::{
    client_config, decode_frame, encode_frame, LinkClient, LinkOptions, LinkReply, LinkRequest,
    Role, Security, TlsIdentity, ALPN_LINK, ALPN_RAFT, SERVER_NAME,
};
use firetower_manager::{connect_admin, Manager, ManagerConfig, RaftTuning, TlsSettings};
use firetower_proto::admin::admin_client::AdminClient;
use firetower_proto::admin::{InitRequest, MembersRequest};
use firetower_proto::link::{GatewayReply, GatewayRequest};
use firetower_proto::{Epoch, GatewayId};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The good gateway every "still serving" check acts as.
const GOOD_GATEWAY: u64 = 1;
/// The gateway whose certificate the impersonation case holds.
const CERT_GATEWAY: u64 = 7;
/// The gateway id it claims.
const CLAIMED_GATEWAY: u64 = 8;
/// The QUIC close code a manager uses for a certificate of the wrong role
/// (`manager/src/server.rs`).
const CLOSE_FORBIDDEN: u32 = 0x403;
/// How long a single hostile exchange may take before the test calls it a hang.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// The admin port's handshake deadline (`manager/src/admin_tls.rs`).
const ADMIN_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The admin port's connection cap (`manager/src/admin_tls.rs`).
const ADMIN_CONNECTION_CAP: usize = 256;

/// The clusters of this binary run one at a time: the flood case measures time, and the
/// machine is small.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Log to the test output when `FIRETOWER_TEST_LOG` is set (an `EnvFilter`).
fn init_logging() {
    if let Ok(filter) = std::env::var("FIRETOWER_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free TCP port")
        .port()
}

fn operator() -> Role {
    Role::Operator(certs::DEFAULT_OPERATOR.to_owned())
}

/// A TLS directory: a CA and certificates for some roles.
struct TlsDir {
    dir: tempfile::TempDir,
}

impl TlsDir {
    /// A new CA labelled `label` with certificates for `roles` and `operator-admin`.
    fn new(label: &str, roles: &[Role]) -> TlsDir {
        let dir = tempfile::tempdir().expect("a temporary TLS directory");
        certs::ensure(dir.path(), label, roles).expect("test certificates");
        TlsDir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn security(&self, role: &Role) -> Security {
        Security::Mutual(Arc::new(
            TlsIdentity::load(self.path(), role).expect("a certificate of the TLS directory"),
        ))
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path().join(file)).expect("a file of the TLS directory")
    }

    fn ca_pem(&self) -> String {
        self.read(certs::CA_CERT_FILE)
    }

    /// `role`'s certificate and key, PEM encoded.
    fn cert_and_key(&self, role: &Role) -> (String, String) {
        let (cert, key) = certs::cert_paths(self.path(), role);
        (
            std::fs::read_to_string(cert).expect("the certificate"),
            std::fs::read_to_string(key).expect("the key"),
        )
    }
}

fn manager_config(id: u64, data_dir: &Path, tls: TlsSettings) -> ManagerConfig {
    ManagerConfig {
        id,
        quic: SocketAddr::from(([127, 0, 0, 1], free_udp_port())),
        admin: SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
        data_dir: data_dir.to_path_buf(),
        cluster_id: None,
        raft: RaftTuning {
            fsync: false,
            ..RaftTuning::default()
        },
        metrics: None,
        unsafe_stale_reads: false,
        unsafe_stale_leadership: false,
        tls,
        unsafe_test_hooks: false,
    }
}

/// `n` managers with mutual TLS, initialized as one cluster of one group.
struct SecureCluster {
    tls: TlsDir,
    managers: Vec<Manager>,
    _data: Vec<tempfile::TempDir>,
}

impl SecureCluster {
    async fn start(n: u64) -> SecureCluster {
        init_logging();
        let mut roles: Vec<Role> = (1..=n).map(Role::Manager).collect();
        roles.extend([
            Role::Gateway(GOOD_GATEWAY),
            Role::Gateway(CERT_GATEWAY),
            // A manager certificate of this CA that no running manager holds.
            Role::Manager(99),
        ]);
        let tls = TlsDir::new("test", &roles);
        let mut managers = Vec::new();
        let mut data = Vec::new();
        for id in 1..=n {
            let dir = tempfile::tempdir().expect("a temporary data directory");
            let settings = TlsSettings {
                dir: Some(tls.path().to_path_buf()),
                insecure: false,
            };
            let manager = Manager::start(manager_config(id, dir.path(), settings))
                .await
                .expect("a secure manager starts");
            managers.push(manager);
            data.push(dir);
        }
        let cluster = SecureCluster {
            tls,
            managers,
            _data: data,
        };
        cluster
            .operator()
            .await
            .init(InitRequest {
                members: cluster.managers[1..]
                    .iter()
                    .map(|m| m.node().admin.clone())
                    .collect(),
                groups: 1,
            })
            .await
            .expect("cluster init over mutual TLS");
        for manager in &cluster.managers {
            assert!(
                manager
                    .wait_for_leaders(Duration::from_secs(15))
                    .await
                    .is_empty(),
                "manager {} sees no leader",
                manager.id()
            );
        }
        cluster
    }

    fn security(&self, role: &Role) -> Security {
        self.tls.security(role)
    }

    fn quic_addrs(&self) -> Vec<SocketAddr> {
        self.managers.iter().map(Manager::quic_addr).collect()
    }

    fn quic(&self) -> SocketAddr {
        self.managers[0].quic_addr()
    }

    fn admin(&self) -> String {
        self.managers[0].node().admin.clone()
    }

    /// The admin API of the first manager, as `operator-admin`.
    async fn operator(&self) -> AdminClient<Channel> {
        connect_admin(
            &self.admin(),
            &self.security(&operator()),
            Duration::from_secs(10),
        )
        .await
        .expect("the admin API answers the operator")
    }

    /// The first manager's `Describe`, as the operator.
    async fn describe(&self) -> firetower_proto::admin::DescribeReply {
        self.operator()
            .await
            .describe(firetower_proto::admin::DescribeRequest {})
            .await
            .expect("Describe answers the operator")
            .into_inner()
    }

    /// A link client of `gateway` with its own certificate.
    async fn gateway(&self, gateway: u64) -> LinkClient {
        LinkClient::connect(
            gateway,
            self.quic_addrs(),
            link_options(self.security(&Role::Gateway(gateway))),
        )
        .await
        .expect("a gateway with its own certificate connects")
    }

    /// The cluster still serves: a good gateway connects, loads the routing and reads a
    /// topic's gateways; every manager answers `Members` with the whole cluster.
    async fn assert_serving(&self) {
        let gateway = self.gateway(GOOD_GATEWAY).await;
        gateway
            .refresh_routing()
            .await
            .expect("the good gateway loads the routing");
        assert_eq!(gateway.groups(), 1);
        gateway
            .topic_gateways("still.serving")
            .await
            .expect("the good gateway reads a topic's gateways");
        for manager in &self.managers {
            let mut admin = connect_admin(
                &manager.node().admin,
                &self.security(&operator()),
                Duration::from_secs(10),
            )
            .await
            .expect("the admin API answers the operator");
            let members = admin
                .members(MembersRequest {})
                .await
                .expect("Members answers the operator")
                .into_inner();
            assert_eq!(members.managers.len(), self.managers.len(), "{members:?}");
        }
    }

    async fn shutdown(self) {
        futures::future::join_all(self.managers.iter().map(Manager::shutdown)).await;
    }
}

fn link_options(security: Security) -> LinkOptions {
    LinkOptions {
        request_timeout: Duration::from_secs(3),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        security,
    }
}

/// How a manager ended a hostile QUIC connection.
#[derive(Debug)]
enum Refusal {
    /// The handshake did not complete.
    Handshake(quinn::ConnectionError),
    /// The handshake completed on the client's side, then the manager closed the connection
    /// without answering the request sent on it.
    Closed(quinn::ConnectionError),
}

impl Refusal {
    fn error(&self) -> &quinn::ConnectionError {
        match self {
            Refusal::Handshake(e) | Refusal::Closed(e) => e,
        }
    }

    /// The application close the manager sent, as (code, reason); panics on anything else.
    fn application_close(&self) -> (u32, String) {
        match self {
            Refusal::Closed(quinn::ConnectionError::ApplicationClosed(close)) => (
                u32::try_from(close.error_code.into_inner()).expect("a small close code"),
                String::from_utf8_lossy(&close.reason).into_owned(),
            ),
            other => panic!("expected the manager to close the connection, got {other:?}"),
        }
    }
}

/// A QUIC client endpoint on loopback whose connections use `config`.
fn endpoint(config: quinn::ClientConfig) -> quinn::Endpoint {
    firetower_link::install_crypto_provider();
    let mut endpoint =
        quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("a client endpoint");
    endpoint.set_default_client_config(config);
    endpoint
}

/// The endpoint a gateway's [`LinkClient`] makes for `security`.
fn gateway_endpoint(security: &Security) -> quinn::Endpoint {
    firetower_link::client_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), security)
        .expect("a gateway's endpoint")
}

/// [`refused_on`] a new endpoint with `config`.
async fn refused(config: quinn::ClientConfig, addr: SocketAddr) -> Refusal {
    refused_on(endpoint(config), addr).await
}

/// Connect to `addr` from `endpoint`, send a `GetRouting` request on a stream and wait for the
/// manager to end the connection. Panics if any byte of an answer arrives, or if the
/// connection neither fails its handshake nor is closed.
async fn refused_on(endpoint: quinn::Endpoint, addr: SocketAddr) -> Refusal {
    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .expect("a connection attempt starts");
    let conn = match tokio::time::timeout(EXCHANGE_TIMEOUT, connecting)
        .await
        .expect("the handshake ends in time")
    {
        Ok(conn) => conn,
        Err(e) => return Refusal::Handshake(e),
    };
    let request = LinkRequest::GetRouting.to_frame(GatewayId(GOOD_GATEWAY));
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        send.write_all(&encode_frame(&request)).await.ok()?;
        send.finish().ok()?;
        recv.read_to_end(1 << 20).await.ok()
    };
    if let Ok(Some(answer)) = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
        panic!(
            "the manager answered a refused peer: {:?}",
            decode_frame::<GatewayReply>(&answer)
        );
    }
    let error = tokio::time::timeout(EXCHANGE_TIMEOUT, conn.closed())
        .await
        .expect("the manager closes the connection");
    endpoint.close(0u32.into(), b"done");
    Refusal::Closed(error)
}

/// A QUIC client config for `alpn` that trusts `ca_pem` for the server and presents
/// `cert_pem`/`key_pem`, whatever CA signed them (a [`TlsIdentity`] refuses to load a
/// certificate its CA did not sign).
fn client_config_presenting(
    alpn: &[u8],
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> quinn::ClientConfig {
    let crypto = client_crypto_presenting(alpn, ca_pem, cert_pem, key_pem);
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).expect("a QUIC config");
    quinn::ClientConfig::new(Arc::new(quic))
}

/// The TLS 1.3 client side of [`client_config_presenting`].
fn client_crypto_presenting(
    alpn: &[u8],
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(ca.expect("a CA certificate"))
            .expect("a usable CA");
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("a certificate chain");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("a private key");
    let mut crypto = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("a client certificate");
    crypto.alpn_protocols = vec![alpn.to_vec()];
    crypto
}

/// A TLS connection to the admin port at `addr` presenting `cert_pem`/`key_pem` while
/// trusting `ca_pem`; what the client's TLS layer reports once the manager has seen the
/// client certificate (TLS 1.3 clients finish their handshake before the server checks it,
/// so the refusal arrives as an alert on the first read). Panics if the manager sends data.
async fn admin_tls_refusal(addr: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    let crypto = client_crypto_presenting(b"h2", ca_pem, cert_pem, key_pem);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the admin port accepts");
    let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("a server name");
    let connect = tokio_rustls::TlsConnector::from(Arc::new(crypto)).connect(name, tcp);
    let mut tls = match tokio::time::timeout(EXCHANGE_TIMEOUT, connect)
        .await
        .expect("the TLS handshake ends in time")
    {
        Ok(tls) => tls,
        Err(e) => return e.to_string(),
    };
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("the HTTP/2 preface is written");
    let mut buf = [0u8; 64];
    match tokio::time::timeout(EXCHANGE_TIMEOUT, tls.read(&mut buf))
        .await
        .expect("the manager ends the connection in time")
    {
        Ok(0) => "closed without an alert".into(),
        Ok(n) => panic!("the manager answered: {:?}", &buf[..n]),
        Err(e) => e.to_string(),
    }
}

/// Send `request` as `as_gateway` on a new stream of `conn`; the manager's answer.
async fn request_as(conn: &quinn::Connection, as_gateway: u64, request: &LinkRequest) -> LinkReply {
    let frame: GatewayRequest = request.to_frame(GatewayId(as_gateway));
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
        send.write_all(&encode_frame(&frame))
            .await
            .expect("the request is sent");
        send.finish().expect("the stream finishes");
        recv.read_to_end(1 << 20).await.expect("an answer")
    };
    let answer = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .expect("an answer in time");
    let reply: GatewayReply = decode_frame(&answer).expect("a reply frame");
    LinkReply::try_from(reply).expect("a valid reply")
}

fn mentions_certificate(text: &str) -> bool {
    text.to_lowercase().contains("certificate")
}

/// Case 1: a QUIC client without a certificate is refused at the handshake or closed before
/// its request is answered, on both ALPNs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_certificate_is_refused() {
    let _serial = one_at_a_time().await;
    let cluster = SecureCluster::start(1).await;
    for alpn in [ALPN_LINK, ALPN_RAFT] {
        let config = client_config(alpn, &Security::Insecure).expect("an insecure config");
        let refusal = refused(config, cluster.quic()).await;
        assert!(
            mentions_certificate(&refusal.error().to_string()),
            "{}: {refusal:?}",
            String::from_utf8_lossy(alpn)
        );
    }
    cluster.assert_serving().await;
    cluster.shutdown().await;
}

/// Cases 2 and 3: a certificate of the CA but of the wrong role for the ALPN is closed with
/// a reason naming the role it has and the role it needs. Three managers, so that Raft between
/// them has to keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_the_wrong_role_is_closed_naming_the_role() {
    let _serial = one_at_a_time().await;
    let cluster = SecureCluster::start(3).await;
    let cases = [
        (
            ALPN_RAFT,
            Role::Gateway(CERT_GATEWAY),
            "manager certificate",
        ),
        (ALPN_RAFT, operator(), "manager certificate"),
        (ALPN_LINK, Role::Manager(2), "gateway certificate"),
        (ALPN_LINK, Role::Manager(99), "gateway certificate"),
        (ALPN_LINK, operator(), "gateway certificate"),
    ];
    for (alpn, role, needed) in cases {
        let config = client_config(alpn, &cluster.security(&role)).expect("a client config");
        let (code, reason) = refused(config, cluster.quic()).await.application_close();
        assert_eq!(code, CLOSE_FORBIDDEN, "{role} on {alpn:?}: {reason}");
        assert!(
            reason.contains(needed) && reason.contains(&format!("this peer is {role}")),
            "{role} on {}: {reason}",
            String::from_utf8_lossy(alpn)
        );
    }
    cluster.assert_serving().await;
    // Raft still replicates: a subscription commits in the three-manager group.
    let good = cluster.gateway(GOOD_GATEWAY).await;
    // Managers commit subscriptions only inside a live session of the gateway.
    let _session = good
        .hold_sessions(Duration::from_secs(5), Duration::from_secs(15))
        .await
        .expect("gateway 1 opens its session");
    good.subscribe("after.refusals")
        .await
        .expect("a subscription commits");
    assert_eq!(
        good.topic_gateways("after.refusals").await.expect("a read"),
        vec![GOOD_GATEWAY]
    );
    cluster.shutdown().await;
}

/// Case 4: gateway 7's certificate acting as gateway 8: every request is refused with
/// `permission_denied` and the table never holds gateway 8, while the same connection acting
/// as gateway 7 is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cannot_act_as_another_gateway_id() {
    let _serial = one_at_a_time().await;
    let cluster = SecureCluster::start(1).await;
    let topic = "room.impersonated";
    let cert = cluster.security(&Role::Gateway(CERT_GATEWAY));

    // The link client as a whole cannot start: its first request (the routing) is refused,
    // at every try until its deadline (what it then reports: see
    // `link_client_errors_keep_the_refusal`).
    LinkClient::connect(
        CLAIMED_GATEWAY,
        cluster.quic_addrs(),
        link_options(cert.clone()),
    )
    .await
    .expect_err("gateway 7's certificate cannot connect as gateway 8");

    // Every request, one by one, on one connection with gateway 7's certificate.
    let endpoint = endpoint(client_config(ALPN_LINK, &cert).expect("a client config"));
    let conn = endpoint
        .connect(cluster.quic(), SERVER_NAME)
        .expect("a connection attempt")
        .await
        .expect("gateway 7's certificate completes the handshake");
    let requests = [
        LinkRequest::GetRouting,
        LinkRequest::Subscribe {
            topic: topic.into(),
            epoch: Epoch(0),
        },
        LinkRequest::Subscribe {
            topic: topic.into(),
            epoch: Epoch(u64::MAX),
        },
        LinkRequest::Unsubscribe {
            topic: topic.into(),
        },
        LinkRequest::TopicGateways {
            topic: topic.into(),
        },
        LinkRequest::Publish {
            topic: topic.into(),
            data: b"forged".to_vec(),
            json: false,
        },
        LinkRequest::OpenSession {
            epoch: Epoch(u64::MAX),
            lease: Duration::from_secs(10),
        },
    ];
    for request in &requests {
        match request_as(&conn, CLAIMED_GATEWAY, request).await {
            LinkReply::Failure { code, message } => {
                assert_eq!(code, "permission_denied", "{request:?}: {message}");
                assert!(
                    message.contains("gateway 7") && message.contains("gateway 8"),
                    "{request:?}: {message}"
                );
            }
            other => panic!("{request:?} as gateway 8 was answered: {other:?}"),
        }
    }
    // The same connection as the certificate's own gateway is served (inside gateway 7's
    // session, held by a client with the same certificate).
    let holder = cluster.gateway(CERT_GATEWAY).await;
    let _session = holder
        .hold_sessions(Duration::from_secs(5), Duration::from_secs(15))
        .await
        .expect("gateway 7 opens its session");
    match request_as(
        &conn,
        CERT_GATEWAY,
        &LinkRequest::Subscribe {
            topic: topic.into(),
            epoch: Epoch(0),
        },
    )
    .await
    {
        LinkReply::Done(written) => assert!(written.changed, "{written:?}"),
        other => panic!("gateway 7's own subscription was not committed: {other:?}"),
    }
    conn.close(0u32.into(), b"done");

    // The table holds gateway 7's subscription and nothing of gateway 8.
    let good = cluster.gateway(GOOD_GATEWAY).await;
    assert_eq!(
        good.topic_gateways(topic).await.expect("a read"),
        vec![CERT_GATEWAY]
    );
    cluster.assert_serving().await;
    cluster.shutdown().await;
}

/// Case 5: certificates of another CA, for a gateway and an operator, are refused at the
/// QUIC and the admin TLS handshakes, whether the client trusts that CA or ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_is_refused() {
    let _serial = one_at_a_time().await;
    let cluster = SecureCluster::start(1).await;
    let foreign = TlsDir::new("other", &[Role::Gateway(CERT_GATEWAY)]);
    let our_ca = cluster.tls.ca_pem();

    // A foreign gateway that trusts its own CA: its handshake refuses our manager.
    let foreign_gateway = foreign.security(&Role::Gateway(CERT_GATEWAY));
    let refusal = refused_on(gateway_endpoint(&foreign_gateway), cluster.quic()).await;
    assert!(
        matches!(refusal, Refusal::Handshake(_))
            && mentions_certificate(&refusal.error().to_string()),
        "{refusal:?}"
    );
    LinkClient::connect(
        CERT_GATEWAY,
        cluster.quic_addrs(),
        link_options(foreign_gateway),
    )
    .await
    .expect_err("a gateway of another CA does not connect");

    // A foreign gateway or operator certificate presented to a client that trusts our CA:
    // the manager refuses it.
    for role in [Role::Gateway(CERT_GATEWAY), operator()] {
        let (cert, key) = foreign.cert_and_key(&role);
        for alpn in [ALPN_LINK, ALPN_RAFT] {
            let config = client_config_presenting(alpn, &our_ca, &cert, &key);
            let refusal = refused(config, cluster.quic()).await;
            let text = refusal.error().to_string();
            assert!(
                text.contains("invalid peer certificate: UnknownIssuer"),
                "{role} of another CA on {}: {refusal:?}",
                String::from_utf8_lossy(alpn)
            );
        }
    }

    // The admin API: the foreign operator that trusts its own CA refuses our manager...
    let error = connect_admin(
        &cluster.admin(),
        &foreign.security(&operator()),
        Duration::from_secs(5),
    )
    .await
    .expect_err("an operator of another CA does not reach the admin API");
    assert!(mentions_certificate(error.message()), "{error}");

    // ...and presenting it while trusting our CA is refused by the manager at the TLS
    // handshake, with the alert for an unknown CA...
    let (cert, key) = foreign.cert_and_key(&operator());
    let refusal = admin_tls_refusal(&cluster.admin(), &our_ca, &cert, &key).await;
    assert!(refusal.contains("UnknownCA"), "{refusal}");
    // ...so no admin call is served to it.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&our_ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(SERVER_NAME);
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", cluster.admin()))
        .expect("an admin address")
        .tls_config(tls)
        .expect("TLS settings")
        .timeout(EXCHANGE_TIMEOUT)
        .connect_timeout(EXCHANGE_TIMEOUT)
        .connect()
        .await;
    if let Ok(channel) = channel {
        let status = AdminClient::new(channel)
            .members(MembersRequest {})
            .await
            .expect_err("an operator of another CA is refused");
        assert_ne!(status.code(), tonic::Code::Ok, "{status}");
    }
    // The same call with our operator certificate is served (`assert_serving`).
    cluster.assert_serving().await;
    cluster.shutdown().await;
}

/// Case 6: 300 idle TCP connections on the admin port (more than its cap) delay an operator
/// only until their handshake deadline; the QUIC port serves throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_flood_of_idle_connections_is_outlived() {
    let _serial = one_at_a_time().await;
    let cluster = SecureCluster::start(1).await;
    let admin: SocketAddr = cluster.admin().parse().expect("an admin address");
    let flood_size = ADMIN_CONNECTION_CAP + 44;
    let started = Instant::now();
    let mut idle = Vec::with_capacity(flood_size);
    for _ in 0..flood_size {
        idle.push(
            tokio::net::TcpStream::connect(admin)
                .await
                .expect("the kernel takes the connection"),
        );
    }

    // The QUIC port is not behind the admin port's cap.
    tokio::time::timeout(Duration::from_secs(5), cluster.assert_link_serving())
        .await
        .expect("the link serves during the flood");

    // An operator gets its answer once the idle connections reached their deadline.
    let deadline = started + ADMIN_HANDSHAKE_TIMEOUT + Duration::from_secs(6);
    let operator = cluster.security(&operator());
    // Each try is bounded (a TLS handshake waiting in the backlog is not covered by the
    // channel's connect timeout); so is the whole wait.
    let members = tokio::time::timeout_at(deadline, async {
        loop {
            let attempt = async {
                let mut client = connect_admin(&cluster.admin(), &operator, Duration::from_secs(3))
                    .await
                    .ok()?;
                client.members(MembersRequest {}).await.ok()
            };
            if let Ok(Some(members)) = tokio::time::timeout(Duration::from_secs(3), attempt).await {
                break members.into_inner();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "Members did not answer within {:?} of the flood",
            deadline - started
        )
    });
    assert_eq!(members.managers.len(), 1, "{members:?}");

    // The manager closed the idle connections it accepted at their deadline (at least a
    // cap's worth of them; the rest waited in the backlog and have a later one).
    let closed = futures::future::join_all(idle.iter_mut().map(|stream| async move {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }))
    .await
    .into_iter()
    .filter(|closed| *closed)
    .count();
    assert!(
        closed >= ADMIN_CONNECTION_CAP,
        "only {closed} of {flood_size} idle connections were closed by the manager"
    );
    drop(idle);
    cluster.assert_serving().await;
    cluster.shutdown().await;
}

impl SecureCluster {
    /// The link half of [`SecureCluster::assert_serving`].
    async fn assert_link_serving(&self) {
        let gateway = self.gateway(GOOD_GATEWAY).await;
        gateway
            .topic_gateways("during.flood")
            .await
            .expect("the good gateway reads a topic's gateways");
    }
}

/// Case 7: `--insecure` peers against a secure manager, and a secure gateway against an
/// insecure manager: refused, with an error that mentions certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_and_secure_peers_do_not_mix() {
    let _serial = one_at_a_time().await;
    let cluster = SecureCluster::start(1).await;

    // An insecure gateway against the secure manager.
    let refusal = refused_on(gateway_endpoint(&Security::Insecure), cluster.quic()).await;
    assert!(
        mentions_certificate(&refusal.error().to_string()),
        "{refusal:?}"
    );
    LinkClient::connect(
        GOOD_GATEWAY,
        cluster.quic_addrs(),
        link_options(Security::Insecure),
    )
    .await
    .expect_err("an insecure gateway does not connect to a secure manager");

    // An insecure manager's Raft client against the secure manager.
    let config = client_config(ALPN_RAFT, &Security::Insecure).expect("an insecure config");
    let refusal = refused(config, cluster.quic()).await;
    assert!(
        mentions_certificate(&refusal.error().to_string()),
        "{refusal:?}"
    );

    // An insecure (plaintext) operator against the secure admin API.
    let mut admin = connect_admin(&cluster.admin(), &Security::Insecure, EXCHANGE_TIMEOUT)
        .await
        .expect("plaintext reaches the admin port (health checks are open)");
    let status = admin
        .members(MembersRequest {})
        .await
        .expect_err("a plaintext admin call is refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    assert!(mentions_certificate(status.message()), "{status}");
    cluster.assert_serving().await;

    // A secure gateway against an insecure manager.
    let data = tempfile::tempdir().expect("a temporary data directory");
    let insecure = Manager::start(manager_config(
        5,
        data.path(),
        TlsSettings {
            dir: None,
            insecure: true,
        },
    ))
    .await
    .expect("an insecure manager starts");
    let secure_gateway = cluster.security(&Role::Gateway(GOOD_GATEWAY));
    let refusal = refused_on(gateway_endpoint(&secure_gateway), insecure.quic_addr()).await;
    assert!(
        matches!(refusal, Refusal::Handshake(_))
            && mentions_certificate(&refusal.error().to_string()),
        "{refusal:?}"
    );
    LinkClient::connect(
        GOOD_GATEWAY,
        vec![insecure.quic_addr()],
        link_options(secure_gateway),
    )
    .await
    .expect_err("a secure gateway does not connect to an insecure manager");
    insecure.shutdown().await;
    cluster.shutdown().await;
}

/// The refusals above as the link client reports them: a gateway's operator should read why
/// it cannot join (a certificate problem, `permission_denied`), not only that the deadline
/// passed. `LinkClient::refresh_routing` retries until its deadline, and its error keeps the
/// first distinct reasons, not only the try the deadline cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_client_errors_keep_the_refusal() {
    let _serial = one_at_a_time().await;
    let cluster = SecureCluster::start(1).await;
    let foreign = TlsDir::new("other", &[Role::Gateway(CERT_GATEWAY)]);
    let cases = [
        (CERT_GATEWAY, Security::Insecure, "certificate"),
        (
            CERT_GATEWAY,
            foreign.security(&Role::Gateway(CERT_GATEWAY)),
            "certificate",
        ),
        (
            CLAIMED_GATEWAY,
            cluster.security(&Role::Gateway(CERT_GATEWAY)),
            "permission_denied",
        ),
    ];
    for (gateway, security, expected) in cases {
        let error = LinkClient::connect(gateway, cluster.quic_addrs(), link_options(security))
            .await
            .expect_err("refused");
        assert!(
            error.to_string().to_lowercase().contains(expected),
            "gateway {gateway}: {error}"
        );
    }
    cluster.shutdown().await;
}

/// A manager certificate of the cluster CA whose id is in no group's membership: its Raft RPCs
/// are refused as `NotAMember` (after the members this manager knows said they do not count it
/// either), and the group's term does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_rpcs_from_a_manager_certificate_of_a_non_member_are_refused() {
    use firetower_raft::wire::{self, RaftReply, RaftRequest, RequestBody};
    use firetower_raft::{GroupId, Rejection};
    use openraft::raft::VoteRequest;
    use openraft::Vote;

    let _serial = one_at_a_time().await;
    let cluster = SecureCluster::start(3).await;
    let described = cluster.describe().await;
    let term_before = described.group_status[0].term;
    let stranger = Role::Manager(99);
    let config = client_config(ALPN_RAFT, &cluster.security(&stranger)).expect("a client config");
    let endpoint = endpoint(config);
    let conn = endpoint
        .connect(cluster.quic(), SERVER_NAME)
        .expect("a connection attempt starts")
        .await
        .expect("a manager certificate completes the handshake");
    // A vote that would win over the current term if it were heard.
    let request = RaftRequest {
        cluster_id: described.cluster_id.clone(),
        group: GroupId(0),
        body: RequestBody::Vote(VoteRequest::new(Vote::new(term_before + 1, 99), None)),
    };
    for _ in 0..3 {
        let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
        send.write_all(&wire::encode_request(&request).expect("encodes"))
            .await
            .expect("the request is sent");
        let _ = send.finish();
        let reply = tokio::time::timeout(EXCHANGE_TIMEOUT, recv.read_to_end(1 << 20))
            .await
            .expect("a reply in time")
            .expect("a reply");
        let reply: RaftReply = wire::decode_frame(&reply).expect("a reply frame");
        match reply {
            Err(Rejection::NotAMember { peer: 99, group }) => assert_eq!(group, GroupId(0)),
            other => panic!("expected NotAMember, got {other:?}"),
        }
    }
    endpoint.close(0u32.into(), b"done");
    let after = cluster.describe().await;
    assert_eq!(after.group_status[0].term, term_before, "the term moved");
    cluster.assert_serving().await;
    cluster.shutdown().await;
}

/// A source that starts QUIC handshakes faster than its rate limit has the excess refused
/// (CONNECTION_REFUSED, before any TLS work); a link established before the flood keeps being
/// served throughout, and new connections are taken again once the bucket refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_is_refused_and_established_links_keep_serving() {
    use firetower_link::handshake_limit::{HANDSHAKES_PER_SECOND, HANDSHAKE_BURST};

    let _serial = one_at_a_time().await;
    let cluster = SecureCluster::start(1).await;
    let good = cluster.gateway(GOOD_GATEWAY).await;
    good.refresh_routing()
        .await
        .expect("routing before the flood");

    let flood = 2 * HANDSHAKE_BURST as usize;
    let config = client_config(ALPN_LINK, &Security::Insecure).expect("an insecure config");
    let flooder = endpoint(config);
    let started = Instant::now();
    let attempts = futures::future::join_all((0..flood).map(|_| {
        let connecting = flooder
            .connect(cluster.quic(), SERVER_NAME)
            .expect("a connection attempt starts");
        async move { tokio::time::timeout(EXCHANGE_TIMEOUT, connecting).await }
    }));
    // The established link is served while the flood runs.
    let (outcomes, served) = tokio::join!(attempts, async {
        good.topic_gateways("during.flood").await
    });
    let took = started.elapsed();
    served.expect("the established link is served during the flood");
    let refused = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o,
                Ok(Err(quinn::ConnectionError::ConnectionClosed(close)))
                    if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
            )
        })
        .count();
    // At most the burst and what refilled while the flood ran got to their handshake.
    let refill = (took.as_secs_f64().ceil() as usize + 1) * HANDSHAKES_PER_SECOND as usize;
    assert!(
        refused >= flood.saturating_sub(HANDSHAKE_BURST as usize + refill) && refused > 0,
        "{refused} of {flood} attempts refused in {took:?}"
    );
    flooder.close(0u32.into(), b"done");

    // New connections again once the bucket has refilled.
    tokio::time::sleep(Duration::from_secs_f64(
        f64::from(HANDSHAKE_BURST) / f64::from(HANDSHAKES_PER_SECOND),
    ))
    .await;
    cluster.assert_serving().await;
    cluster.shutdown().await;
}
