//! TLS for the cluster's QUIC: the certificate a manager presents and how clients check it.
//!
//! Every endpoint generates a fresh self-signed certificate at start (subject alternative
//! names [`SERVER_NAME`], `localhost` and the bound IP), and clients do **not** verify it:
//! QUIC traffic is encrypted but peers are not authenticated yet. Anyone who can reach the
//! port can talk to it. What keeps a manager from joining or serving the wrong cluster is the
//! cluster id carried in every Raft request and in the routing table; that guards against
//! mistakes, not against an attacker. Mutual TLS with a cluster CA is the planned replacement,
//! and this module is the one place it replaces: [`EncryptOnlyVerifier`] is the workspace's only
//! `ServerCertVerifier`.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Server name clients put in the TLS handshake; it is a SAN of every endpoint's certificate.
pub const SERVER_NAME: &str = "firetower";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen could not generate the self-signed certificate.
    #[error("cannot generate the self-signed TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the TLS configuration (certificate, key or protocol versions).
    #[error("invalid TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Installs rustls' `ring` provider as the process default. Idempotent: a provider installed
/// earlier (by this call or anyone else) stays.
pub fn install_crypto_provider() {
    // Err only means a default provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// TLS 1.3 client configuration offering `alpn`. Encrypts, but does not verify the server
/// certificate (see the module documentation).
pub fn client_crypto(alpn: &[u8]) -> rustls::ClientConfig {
    let provider = ring_provider();
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        // Invariant: the ring provider supports TLS 1.3, so this cannot fail.
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnlyVerifier(provider)))
        .with_no_client_auth();
    crypto.alpn_protocols = vec![alpn.to_vec()];
    crypto
}

/// TLS 1.3 server configuration with a fresh self-signed certificate for `ip` (left out of
/// the names when unspecified), accepting any of `alpns`.
pub fn server_crypto(ip: IpAddr, alpns: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    let mut names = vec![SERVER_NAME.to_owned(), "localhost".to_owned()];
    if !ip.is_unspecified() {
        names.push(ip.to_string());
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
    crypto.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(crypto)
}

/// Explicit rather than the process default, so these helpers work whether or not
/// [`install_crypto_provider`] was called.
fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate but still checks the handshake signatures, so the session
/// keys are bound to the certificate the server presented (encryption without authentication).
#[derive(Debug)]
pub struct EncryptOnlyVerifier(Arc<CryptoProvider>);

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

    #[test]
    fn install_crypto_provider_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(CryptoProvider::get_default().is_some());
    }

    #[test]
    fn configs_carry_the_alpns_asked_for() {
        let client = client_crypto(b"x/1");
        assert_eq!(client.alpn_protocols, vec![b"x/1".to_vec()]);
        let server = server_crypto("127.0.0.1".parse().unwrap(), &[b"a/1", b"b/1"]).unwrap();
        assert_eq!(
            server.alpn_protocols,
            vec![b"a/1".to_vec(), b"b/1".to_vec()]
        );
    }
}
