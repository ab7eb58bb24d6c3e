//! QUIC client set-up for the manager link.
//!
//! Managers present a self-signed certificate made at start, so the link encrypts but does
//! not authenticate managers yet; the cluster id returned in the routing table is checked
//! instead. See docs/architecture.md, "Transport security".

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// ALPN of the gateway <-> manager link.
pub const ALPN_LINK: &[u8] = b"firetower-link/1";

/// A client-only QUIC endpoint for the manager link, bound to an ephemeral port of `bind_ip`.
pub fn client_endpoint(bind: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(client_config());
    Ok(endpoint)
}

fn client_config() -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        // The ring provider supports TLS 1.3, so this cannot fail.
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN_LINK.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        // A TLS 1.3 config with a QUIC-capable suite always converts.
        .expect("TLS 1.3 config is QUIC-capable");
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    // A dead or restarted manager is noticed within 3 s: requests stuck on it fail and the
    // session stream is re-opened.
    transport.keep_alive_interval(Some(Duration::from_millis(500)));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(3)).expect("3 s is a valid idle timeout"),
    ));
    config.transport_config(Arc::new(transport));
    config
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
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
