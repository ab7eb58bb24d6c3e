//! The QUIC endpoint of a manager: one UDP port (6666 by default), two protocols told apart by
//! ALPN, [`ALPN_RAFT`] between managers and [`ALPN_LINK`] between gateways and managers.
//!
//! Every endpoint generates a fresh self-signed certificate at start (subject alternative
//! names `firetower`, `localhost` and the bound IP), and clients do **not** verify it: QUIC
//! traffic is encrypted but peers are not authenticated yet. Anyone who can reach the port can
//! talk to it. What keeps a manager from joining or serving the wrong cluster is the cluster id
//! carried in every Raft request and checked by the receiver (see [`crate::serve_raft_connection`]);
//! that guards against mistakes, not against an attacker. Mutual TLS with a cluster CA is the
//! planned replacement.
//!
//! The server config accepts both ALPNs; the caller reads the negotiated ALPN of each accepted
//! connection and dispatches. The endpoint has no default client config: connect with
//! [`client_config`] for the protocol wanted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{ClientConfig, Endpoint, IdleTimeout, ServerConfig, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// ALPN of Raft RPCs between managers.
pub const ALPN_RAFT: &[u8] = b"firetower-raft/1";
/// ALPN of the link between gateways and managers (served by the manager crate).
pub const ALPN_LINK: &[u8] = b"firetower-link/1";

/// Server name clients put in the TLS handshake; it is a SAN of every endpoint's certificate.
pub const SERVER_NAME: &str = "firetower";

/// Keep-alive interval: NAT bindings stay open and a dead peer is noticed within the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_millis(500);
/// A connection silent this long is closed; with keep-alives every 500 ms that means the peer
/// is gone (or restarted: a new process cannot answer the old connection), noticed within 3 s.
const IDLE_TIMEOUT_MS: u32 = 3_000;
/// Concurrent streams per connection. Every Raft RPC of every group is a stream on the one
/// connection to a peer, so this bounds RPCs in flight per peer, not per group.
const MAX_STREAMS: u32 = 1024;
/// Per-stream flow control window: a whole 3 MiB snapshot chunk fits without a stall.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection flow control windows, shared by all streams of the connection.
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// Why the QUIC endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// rcgen could not generate the self-signed certificate.
    #[error("cannot generate the self-signed TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the TLS configuration (certificate, key or protocol versions).
    #[error("invalid TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
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

/// Installs rustls' `ring` provider as the process default. Idempotent: a provider installed
/// earlier (by this call or anyone else) stays.
pub fn install_crypto_provider() {
    // Err only means a default provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A QUIC endpoint bound to `bind` that accepts [`ALPN_RAFT`] and [`ALPN_LINK`] connections and
/// can open connections with [`client_config`].
pub fn make_endpoint(bind: SocketAddr) -> Result<Endpoint, TransportError> {
    let config = server_config(bind)?;
    Endpoint::server(config, bind).map_err(|source| TransportError::Bind { addr: bind, source })
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
) -> Result<Endpoint, TransportError> {
    let config = server_config(bind)?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_secret);
    let endpoint_config = quinn::EndpointConfig::new(Arc::new(key));
    let socket = std::net::UdpSocket::bind(bind)
        .map_err(|source| TransportError::Bind { addr: bind, source })?;
    Endpoint::new(
        endpoint_config,
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Bind { addr: bind, source })
}

/// Client configuration for `alpn`. Encrypts, but does not verify the server certificate (see
/// the module documentation).
pub fn client_config(alpn: &[u8]) -> ClientConfig {
    let provider = ring_provider();
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        // Invariant: the ring provider supports TLS 1.3, so this cannot fail.
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnlyVerifier(provider)))
        .with_no_client_auth();
    crypto.alpn_protocols = vec![alpn.to_vec()];
    // Invariant: the ring provider includes TLS13_AES_128_GCM_SHA256, QUIC's initial suite.
    let crypto = QuicClientConfig::try_from(crypto).expect("ring has QUIC's initial cipher suite");
    let mut config = ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config());
    config
}

fn server_config(bind: SocketAddr) -> Result<ServerConfig, TransportError> {
    let mut names = vec![SERVER_NAME.to_owned(), "localhost".to_owned()];
    if !bind.ip().is_unspecified() {
        names.push(bind.ip().to_string());
    }
    let certified = rcgen::generate_simple_self_signed(names)?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));

    let mut crypto = rustls::ServerConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    crypto.alpn_protocols = vec![ALPN_RAFT.to_vec(), ALPN_LINK.to_vec()];
    let mut config = ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(crypto)?));
    config.transport_config(transport_config());
    Ok(config)
}

fn transport_config() -> Arc<TransportConfig> {
    let mut transport = TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW));
    Arc::new(transport)
}

/// Explicit rather than the process default, so these helpers work whether or not
/// [`install_crypto_provider`] was called.
fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate but still checks the handshake signatures, so the session
/// keys are bound to the certificate the server presented (encryption without authentication).
#[derive(Debug)]
struct EncryptOnlyVerifier(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnlyVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_connect_with_either_alpn() {
        let server = make_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = make_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
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
                .connect_with(client_config(alpn), addr, SERVER_NAME)
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
        let server = make_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = make_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                let _ = incoming.await;
            }
        });
        let result = client
            .connect_with(client_config(b"something-else"), addr, SERVER_NAME)
            .unwrap()
            .await;
        assert!(result.is_err());
    }

    #[test]
    fn install_crypto_provider_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(CryptoProvider::get_default().is_some());
    }
}
