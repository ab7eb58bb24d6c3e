//! QUIC endpoints of the cluster: one UDP port per manager (6666 by default), two protocols
//! told apart by ALPN, [`ALPN_RAFT`] between managers and [`ALPN_LINK`] between gateways and
//! managers.
//!
//! ```text
//!   gateway  client_endpoint ──ALPN_LINK──▶ ┐
//!                                            ├─ make_endpoint (manager): server + client,
//!   manager  make_endpoint   ──ALPN_RAFT──▶ ┘   the caller dispatches on the negotiated ALPN
//! ```
//!
//! A manager's server config accepts both ALPNs; the caller reads the negotiated ALPN of each
//! accepted connection and dispatches, and reads the peer's role with
//! [`peer_role`](crate::tls::peer_role). A manager endpoint's default client config speaks
//! [`ALPN_RAFT`] (its connections to peers); [`client_config`] makes one for another protocol.
//! A gateway's endpoint is client only and speaks [`ALPN_LINK`] by default. Every function takes
//! the process's [`Security`]: mutual TLS against the cluster CA, or `--insecure`'s
//! encryption without authentication ([`crate::tls`]). With mutual TLS a manager requires a
//! client certificate on both ALPNs: a handshake without one fails before any stream opens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{
    AsyncUdpSocket, ClientConfig, Endpoint, EndpointConfig, IdleTimeout, ServerConfig,
    TransportConfig, VarInt,
};

use crate::tls::{install_crypto_provider, ClientAuth, Security, TlsError};

/// ALPN of Raft RPCs between managers.
pub const ALPN_RAFT: &[u8] = b"firetower-raft/1";
/// ALPN of the link between gateways and managers.
pub const ALPN_LINK: &[u8] = b"firetower-link/1";

/// Keep-alive interval: NAT bindings stay open and a dead peer is noticed within the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_millis(500);
/// A connection silent this long is closed; with keep-alives every 500 ms that means the peer
/// is gone (or restarted: a new process cannot answer the old connection), noticed within 3 s.
/// Requests stuck on a dead manager then fail and a gateway's session stream is re-opened.
const IDLE_TIMEOUT_MS: u32 = 3_000;
/// Concurrent streams per manager connection. Every Raft RPC of every group is a stream on the
/// one connection to a peer, so this bounds RPCs in flight per peer, not per group.
const MAX_STREAMS: u32 = 1024;
/// Per-stream flow control window between managers: a whole 3 MiB snapshot chunk fits
/// without a stall.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection flow control windows between managers, shared by all streams.
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// Why a QUIC endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The certificate or the TLS configuration could not be made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TLS configuration lacks the cipher suite QUIC needs for its initial packets.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] NoInitialCipherSuite),
    /// The UDP socket could not be bound.
    #[error("cannot bind the QUIC endpoint to {addr}: {source} (is the UDP port already in use?)")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// A manager's QUIC endpoint bound to `bind`: accepts [`ALPN_RAFT`] and [`ALPN_LINK`]
/// connections and opens [`ALPN_RAFT`] connections by default.
pub fn make_endpoint(bind: SocketAddr, security: &Security) -> Result<Endpoint, TransportError> {
    let config = server_config(bind, security)?;
    let mut endpoint = Endpoint::server(config, bind)
        .map_err(|source| TransportError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client_config(ALPN_RAFT, security)?);
    Ok(endpoint)
}

/// Like [`make_endpoint`], with the stateless-reset key derived from `reset_secret`.
///
/// A process that restarts with the same secret answers packets of its previous run's
/// connections with a stateless reset that the peer accepts, so gateways and other managers
/// see the old connection end within one keep-alive and reconnect, instead of waiting out the
/// idle timeout.
pub fn make_endpoint_with_reset_secret(
    bind: SocketAddr,
    reset_secret: &[u8],
    security: &Security,
) -> Result<Endpoint, TransportError> {
    let config = server_config(bind, security)?;
    let socket = std::net::UdpSocket::bind(bind)
        .map_err(|source| TransportError::Bind { addr: bind, source })?;
    let mut endpoint = Endpoint::new(
        endpoint_config(Some(reset_secret)),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client_config(ALPN_RAFT, security)?);
    Ok(endpoint)
}

/// A manager endpoint (as [`make_endpoint_with_reset_secret`], or [`make_endpoint`] when
/// `reset_secret` is `None`) over any socket, for example a `MemSocket` of the in-memory
/// network.
pub fn make_endpoint_on(
    socket: Arc<dyn AsyncUdpSocket>,
    reset_secret: Option<&[u8]>,
    security: &Security,
) -> Result<Endpoint, TransportError> {
    let addr = socket.local_addr().map_err(|source| TransportError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let config = server_config(addr, security)?;
    let mut endpoint = Endpoint::new_with_abstract_socket(
        endpoint_config(reset_secret),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Bind { addr, source })?;
    endpoint.set_default_client_config(client_config(ALPN_RAFT, security)?);
    Ok(endpoint)
}

/// A gateway's client-only QUIC endpoint bound to `bind` (port 0 for an ephemeral one),
/// speaking [`ALPN_LINK`] by default.
pub fn client_endpoint(bind: SocketAddr, security: &Security) -> Result<Endpoint, TransportError> {
    install_crypto_provider();
    let mut endpoint =
        Endpoint::client(bind).map_err(|source| TransportError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(link_client_config(security)?);
    Ok(endpoint)
}

/// A gateway's client-only endpoint over any socket, for example a `MemSocket` of the
/// in-memory network.
pub fn client_endpoint_on(
    socket: Arc<dyn AsyncUdpSocket>,
    security: &Security,
) -> Result<Endpoint, TransportError> {
    install_crypto_provider();
    let addr = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut endpoint = Endpoint::new_with_abstract_socket(
        EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Bind { addr, source })?;
    endpoint.set_default_client_config(link_client_config(security)?);
    Ok(endpoint)
}

/// Client configuration of a manager for `alpn`, with the manager-to-manager transport
/// (many streams, large windows).
pub fn client_config(alpn: &[u8], security: &Security) -> Result<ClientConfig, TransportError> {
    let mut config = ClientConfig::new(Arc::new(quic_client_crypto(alpn, security)?));
    config.transport_config(manager_transport());
    Ok(config)
}

/// Client configuration of a gateway: [`ALPN_LINK`], keep-alives and the idle timeout, quinn's
/// default stream limits and windows (a gateway sends small requests).
fn link_client_config(security: &Security) -> Result<ClientConfig, TransportError> {
    let mut config = ClientConfig::new(Arc::new(quic_client_crypto(ALPN_LINK, security)?));
    config.transport_config(Arc::new(liveness_transport()));
    Ok(config)
}

fn quic_client_crypto(
    alpn: &[u8],
    security: &Security,
) -> Result<QuicClientConfig, TransportError> {
    Ok(QuicClientConfig::try_from(security.client_crypto(alpn)?)?)
}

fn server_config(bind: SocketAddr, security: &Security) -> Result<ServerConfig, TransportError> {
    let crypto =
        security.server_crypto(bind.ip(), &[ALPN_RAFT, ALPN_LINK], ClientAuth::Required)?;
    let mut config = ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(crypto)?));
    config.transport_config(manager_transport());
    Ok(config)
}

fn endpoint_config(reset_secret: Option<&[u8]>) -> EndpointConfig {
    match reset_secret {
        Some(secret) => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
            EndpointConfig::new(Arc::new(key))
        }
        None => EndpointConfig::default(),
    }
}

/// What every cluster connection shares: a dead peer is noticed within the idle timeout.
fn liveness_transport() -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))));
    transport
}

/// Between managers (and a manager's side of the link): many concurrent RPCs, snapshot-sized
/// windows.
fn manager_transport() -> Arc<TransportConfig> {
    let mut transport = liveness_transport();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW));
    Arc::new(transport)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::CertificateAuthority;
    use crate::identity::Role;
    use crate::tls::{peer_role, TlsIdentity, SERVER_NAME};
    use std::path::Path;

    const LOCAL: &str = "127.0.0.1:0";

    fn insecure() -> Security {
        Security::Insecure
    }

    fn mutual(ca: &CertificateAuthority, role: Role) -> Security {
        let issued = ca.issue(&role, &[], 1).unwrap();
        Security::Mutual(Arc::new(
            TlsIdentity::from_pem(
                &role,
                ca.cert_pem().to_owned(),
                issued.cert_pem,
                issued.key_pem,
                Path::new("test.pem"),
            )
            .unwrap(),
        ))
    }

    fn spawn_acceptor(server: Endpoint) -> tokio::task::JoinHandle<Vec<Result<Role, String>>> {
        tokio::spawn(async move {
            let mut roles = Vec::new();
            while let Some(incoming) = server.accept().await {
                match incoming.await {
                    Ok(conn) => roles.push(peer_role(&conn).map_err(|e| e.to_string())),
                    Err(e) => roles.push(Err(e.to_string())),
                }
                if roles.len() == 1 {
                    break;
                }
            }
            roles
        })
    }

    #[tokio::test]
    async fn endpoints_connect_with_either_alpn() {
        let server = make_endpoint(LOCAL.parse().unwrap(), &insecure()).unwrap();
        let client = make_endpoint(LOCAL.parse().unwrap(), &insecure()).unwrap();
        let addr = server.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let mut alpns = Vec::new();
            for _ in 0..2 {
                let conn = server.accept().await.unwrap().await.unwrap();
                let alpn = conn
                    .handshake_data()
                    .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                    .and_then(|d| d.protocol)
                    .unwrap();
                alpns.push(alpn);
            }
            alpns
        });
        for alpn in [ALPN_RAFT, ALPN_LINK] {
            let conn = client
                .connect_with(client_config(alpn, &insecure()).unwrap(), addr, SERVER_NAME)
                .unwrap()
                .await
                .unwrap();
            assert_eq!(conn.remote_address(), addr);
        }
        assert_eq!(
            accept.await.unwrap(),
            vec![ALPN_RAFT.to_vec(), ALPN_LINK.to_vec()]
        );
    }

    #[tokio::test]
    async fn unknown_alpn_is_refused() {
        let server = make_endpoint(LOCAL.parse().unwrap(), &insecure()).unwrap();
        let client = make_endpoint(LOCAL.parse().unwrap(), &insecure()).unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                let _ = incoming.await;
            }
        });
        let result = client
            .connect_with(
                client_config(b"something-else", &insecure()).unwrap(),
                addr,
                SERVER_NAME,
            )
            .unwrap()
            .await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn a_gateway_endpoint_speaks_the_link_alpn() {
        let server = make_endpoint(LOCAL.parse().unwrap(), &insecure()).unwrap();
        let addr = server.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            conn.handshake_data()
                .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|d| d.protocol)
        });
        let client = client_endpoint(LOCAL.parse().unwrap(), &insecure()).unwrap();
        let _conn = client.connect(addr, SERVER_NAME).unwrap().await.unwrap();
        assert_eq!(accept.await.unwrap(), Some(ALPN_LINK.to_vec()));
    }

    #[tokio::test]
    async fn mutual_tls_tells_the_server_who_connected() {
        let ca = CertificateAuthority::generate("t").unwrap();
        let server = make_endpoint(LOCAL.parse().unwrap(), &mutual(&ca, Role::Manager(1))).unwrap();
        let addr = server.local_addr().unwrap();
        let accept = spawn_acceptor(server);
        let gateway =
            client_endpoint(LOCAL.parse().unwrap(), &mutual(&ca, Role::Gateway(7))).unwrap();
        let conn = gateway.connect(addr, SERVER_NAME).unwrap().await.unwrap();
        assert_eq!(peer_role(&conn).unwrap(), Role::Manager(1));
        assert_eq!(accept.await.unwrap(), vec![Ok(Role::Gateway(7))]);
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused() {
        let ca = CertificateAuthority::generate("t").unwrap();
        let server = make_endpoint(LOCAL.parse().unwrap(), &mutual(&ca, Role::Manager(1))).unwrap();
        let addr = server.local_addr().unwrap();
        let accept = spawn_acceptor(server);
        let stranger = client_endpoint(LOCAL.parse().unwrap(), &insecure()).unwrap();
        let result = stranger.connect(addr, SERVER_NAME).unwrap().await;
        // The client may see its handshake complete before the server's refusal arrives; the
        // server never admits it.
        if let Ok(conn) = result {
            assert!(conn.accept_uni().await.is_err());
        }
        let roles = accept.await.unwrap();
        assert!(roles[0].is_err(), "{roles:?}");
    }

    #[tokio::test]
    async fn a_certificate_of_another_ca_is_refused_both_ways() {
        let ca = CertificateAuthority::generate("ours").unwrap();
        let other = CertificateAuthority::generate("theirs").unwrap();
        let server = make_endpoint(LOCAL.parse().unwrap(), &mutual(&ca, Role::Manager(1))).unwrap();
        let addr = server.local_addr().unwrap();
        let accept = spawn_acceptor(server);
        let foreign =
            client_endpoint(LOCAL.parse().unwrap(), &mutual(&other, Role::Gateway(7))).unwrap();
        let result = foreign.connect(addr, SERVER_NAME).unwrap().await;
        // The foreign client already refuses our manager's certificate.
        assert!(result.is_err());
        assert!(accept.await.unwrap()[0].is_err());
    }

    #[tokio::test]
    async fn insecure_servers_are_refused_by_secure_clients() {
        let ca = CertificateAuthority::generate("t").unwrap();
        let server = make_endpoint(LOCAL.parse().unwrap(), &insecure()).unwrap();
        let addr = server.local_addr().unwrap();
        let _accept = spawn_acceptor(server);
        let gateway =
            client_endpoint(LOCAL.parse().unwrap(), &mutual(&ca, Role::Gateway(7))).unwrap();
        let error = gateway
            .connect(addr, SERVER_NAME)
            .unwrap()
            .await
            .unwrap_err();
        assert!(
            error.to_string().to_lowercase().contains("certificate"),
            "{error}"
        );
    }
}
