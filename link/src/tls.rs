//! TLS for the cluster: mutual authentication against the cluster CA, or, only when asked for,
//! encryption without authentication.
//!
//! [`Security::Mutual`] is the normal mode. Every process holds a [`TlsIdentity`]: the cluster
//! CA it trusts and its own certificate, whose [`Role`] (`manager:3`, `gateway:7`,
//! `operator:admin`) was written in by `firetower certs issue`. Both ends verify the other's
//! chain against the CA:
//!
//! - a client accepts only a server certificate of the **manager** role (gateway and operator
//!   certificates are not valid for server authentication at all, and the role is checked
//!   on top);
//! - a server requires a client certificate ([`ClientAuth::Required`], the QUIC port) or takes
//!   one if offered ([`ClientAuth::Optional`], the admin port, where health checks and
//!   reflection are open to anyone); what the peer may then do is decided by the caller from
//!   [`peer_role`], per ALPN and per call.
//!
//! Revocation: when the TLS directory has a `crl.pem` ([`crate::certs::revoke`]), both
//! verifiers refuse every certificate it lists, at the handshake, and a process whose own
//! certificate is listed refuses to start. The list is read once, by [`TlsIdentity::load`]; a
//! new list takes effect when the process restarts.
//!
//! [`Security::Insecure`] (`--insecure`) keeps the old behaviour for experiments: every
//! endpoint makes a fresh self-signed certificate and clients accept any
//! ([`EncryptOnlyVerifier`]), so traffic is encrypted but anyone who reaches a port is trusted.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
    UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::certs::{cert_paths, single_crl, CA_CERT_FILE, CRL_FILE};
use crate::identity::{IdentityError, Role};

pub use crate::identity::SERVER_NAME;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen could not generate the self-signed certificate (insecure mode).
    #[error("cannot generate the self-signed TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the TLS configuration (certificate, key or protocol versions).
    #[error("invalid TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A file of the TLS directory could not be read.
    #[error("cannot read {}: {source} (create TLS material with `firetower certs init --dir DIR` and `firetower certs issue`)", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{}: {detail}", .path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The certificate names another role than the one this process runs as.
    #[error("{} is a certificate of {found}, but this process runs as {expected}", .path.display())]
    WrongRole {
        /// The certificate file.
        path: PathBuf,
        /// The role this process needs.
        expected: Role,
        /// The role the certificate carries.
        found: Role,
    },
    /// The certificate does not name a Firetower role.
    #[error("{}: {source}", .path.display())]
    Identity {
        /// The certificate file.
        path: PathBuf,
        /// Why it names no role.
        source: IdentityError,
    },
    /// The certificate is not signed by the directory's CA, or has expired.
    #[error("{} is not valid under {}: {detail}", .path.display(), .ca.display())]
    Untrusted {
        /// The certificate file.
        path: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// rustls' verdict.
        detail: String,
    },
    /// `crl.pem` is damaged or was not signed by the directory's CA.
    #[error("{}: not a usable revocation list: {detail} (copy the current crl.pem from where certificates are issued)", .path.display())]
    Crl {
        /// The CRL file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// This process's own certificate is in the revocation list.
    #[error("{} is revoked (listed in {}): issue a new certificate (remove the old pair, then `firetower certs issue`) and restart", .path.display(), .crl.display())]
    Revoked {
        /// The certificate file.
        path: PathBuf,
        /// The CRL file.
        crl: PathBuf,
    },
    /// The certificate verifier could not be built from the CA.
    #[error("cannot build a certificate verifier from the CA: {0}")]
    Verifier(String),
    /// Neither a TLS directory nor insecure mode was chosen.
    #[error(
        "no TLS material for {0}: give --tls-dir DIR (or FIRETOWER_TLS_DIR), a directory made by \
         `firetower certs init --dir DIR` and `firetower certs issue --dir DIR ...`, or \
         --insecure to talk to a cluster started with --insecure"
    )]
    NoMaterial(Role),
    /// Both a TLS directory and insecure mode were chosen.
    #[error("both --tls-dir and --insecure given: choose one")]
    Conflicting,
}

/// Whether a server asks connecting clients for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// The handshake fails without a client certificate signed by the CA (the QUIC port).
    Required,
    /// A client certificate is verified if offered; a client without one still connects and
    /// is told apart by [`peer_role`] failing (the admin port: health and reflection).
    Optional,
}

/// How a process secures its cluster connections.
#[derive(Clone, Debug)]
pub enum Security {
    /// Encrypted, unauthenticated: anyone who reaches a port is trusted (`--insecure`).
    Insecure,
    /// Mutual TLS against the cluster CA with this process's own certificate.
    Mutual(Arc<TlsIdentity>),
}

impl Security {
    /// The security chosen by the `--tls-dir DIR` and `--insecure` flags, for a process acting
    /// as `role`: `role`'s certificate from `DIR`, or insecure; neither is an error that says
    /// how to make certificates.
    pub fn from_flags(
        tls_dir: Option<&Path>,
        insecure: bool,
        role: &Role,
    ) -> Result<Security, TlsError> {
        match (tls_dir, insecure) {
            (Some(_), true) => Err(TlsError::Conflicting),
            (None, true) => Ok(Security::Insecure),
            (Some(dir), false) => Ok(Security::Mutual(Arc::new(TlsIdentity::load(dir, role)?))),
            (None, false) => Err(TlsError::NoMaterial(role.clone())),
        }
    }

    /// Whether peers are authenticated.
    pub fn is_mutual(&self) -> bool {
        matches!(self, Security::Mutual(_))
    }

    /// This process's identity, when it has one.
    pub fn identity(&self) -> Option<&TlsIdentity> {
        match self {
            Security::Insecure => None,
            Security::Mutual(identity) => Some(identity),
        }
    }

    /// TLS 1.3 client configuration offering `alpn`.
    pub fn client_crypto(&self, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
        let mut crypto = match self {
            Security::Insecure => insecure_client_crypto(),
            Security::Mutual(identity) => identity.client_crypto()?,
        };
        crypto.alpn_protocols = vec![alpn.to_vec()];
        Ok(crypto)
    }

    /// TLS 1.3 server configuration accepting any of `alpns`. In insecure mode the certificate
    /// is a fresh self-signed one naming `ip` (left out when unspecified).
    pub fn server_crypto(
        &self,
        ip: IpAddr,
        alpns: &[&[u8]],
        client_auth: ClientAuth,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let mut crypto = match self {
            Security::Insecure => insecure_server_crypto(ip)?,
            Security::Mutual(identity) => identity.server_crypto(client_auth)?,
        };
        crypto.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
        Ok(crypto)
    }
}

/// The cluster CA a process trusts and its own certificate and key.
pub struct TlsIdentity {
    role: Role,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    crl_pem: Option<String>,
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The files an identity's PEM texts came from, for errors that name the wrong one.
struct Sources<'a> {
    ca: &'a Path,
    cert: &'a Path,
    key: &'a Path,
    crl: &'a Path,
}

impl TlsIdentity {
    /// Load `role`'s certificate from the TLS directory `dir` (`ca.pem`, `<role>-<id>.pem`,
    /// `<role>-<id>-key.pem`, and `crl.pem` when there is one), checking that it carries
    /// `role`, that the key is its key, that the CA signed it and that it is not revoked.
    pub fn load(dir: &Path, role: &Role) -> Result<TlsIdentity, TlsError> {
        let ca_path = dir.join(CA_CERT_FILE);
        let crl_path = dir.join(CRL_FILE);
        let (cert_path, key_path) = cert_paths(dir, role);
        let ca_pem = read(&ca_path)?;
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        // No list means nothing is revoked; a list that is there but unreadable is an error.
        let crl_pem = match std::fs::read_to_string(&crl_path) {
            Ok(pem) => Some(pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(TlsError::Read {
                    path: crl_path,
                    source,
                })
            }
        };
        let sources = Sources {
            ca: &ca_path,
            cert: &cert_path,
            key: &key_path,
            crl: &crl_path,
        };
        TlsIdentity::build(role, ca_pem, cert_pem, key_pem, crl_pem, &sources)
    }

    /// An identity from PEM text (the CA, the certificate, its key), with no revocation list;
    /// `cert_path` only names the certificate in errors.
    pub fn from_pem(
        role: &Role,
        ca_pem: String,
        cert_pem: String,
        key_pem: String,
        cert_path: &Path,
    ) -> Result<TlsIdentity, TlsError> {
        TlsIdentity::from_pem_with_crl(role, ca_pem, cert_pem, key_pem, None, cert_path)
    }

    /// An identity from PEM text (the CA, the certificate, its key, and the CA's revocation
    /// list if there is one); `cert_path` only names the certificate in errors. Fails if the
    /// list is damaged, not the CA's, or lists this certificate.
    pub fn from_pem_with_crl(
        role: &Role,
        ca_pem: String,
        cert_pem: String,
        key_pem: String,
        crl_pem: Option<String>,
        cert_path: &Path,
    ) -> Result<TlsIdentity, TlsError> {
        let sources = Sources {
            ca: Path::new(CA_CERT_FILE),
            cert: cert_path,
            key: Path::new("key"),
            crl: Path::new(CRL_FILE),
        };
        TlsIdentity::build(role, ca_pem, cert_pem, key_pem, crl_pem, &sources)
    }

    /// Parse and check the PEM texts; `sources` names the file each came from in errors.
    fn build(
        role: &Role,
        ca_pem: String,
        cert_pem: String,
        key_pem: String,
        crl_pem: Option<String>,
        sources: &Sources<'_>,
    ) -> Result<TlsIdentity, TlsError> {
        let cert_path = sources.cert;
        let crls = match &crl_pem {
            None => Vec::new(),
            Some(pem) => vec![single_crl(pem.as_bytes()).map_err(|detail| TlsError::Crl {
                path: sources.crl.to_owned(),
                detail,
            })?],
        };
        let mut roots = RootCertStore::empty();
        let cas = parse_certificates(ca_pem.as_bytes()).map_err(|detail| TlsError::Pem {
            path: sources.ca.to_owned(),
            detail,
        })?;
        for ca in cas {
            roots.add(ca).map_err(|e| TlsError::Pem {
                path: sources.ca.to_owned(),
                detail: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let chain = parse_certificates(cert_pem.as_bytes()).map_err(|detail| TlsError::Pem {
            path: cert_path.to_owned(),
            detail,
        })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            path: sources.key.to_owned(),
            detail: format!("no private key: {e}"),
        })?;
        let found = Role::from_certificate(&chain[0]).map_err(|source| TlsError::Identity {
            path: cert_path.to_owned(),
            source,
        })?;
        if &found != role {
            return Err(TlsError::WrongRole {
                path: cert_path.to_owned(),
                expected: role.clone(),
                found,
            });
        }
        let identity = TlsIdentity {
            role: role.clone(),
            ca_pem,
            cert_pem,
            key_pem,
            crl_pem,
            roots: Arc::new(roots),
            crls,
            chain,
            key,
        };
        identity.check(sources)?;
        Ok(identity)
    }

    /// The role this process runs as.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The cluster CA, PEM encoded.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// This process's certificate, PEM encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// This process's private key, PEM encoded.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The revocation list both verifiers apply, PEM encoded, if there is one.
    pub fn crl_pem(&self) -> Option<&str> {
        self.crl_pem.as_deref()
    }

    /// The certificate must be ours (key matches), signed by the CA, within its validity and
    /// not revoked.
    fn check(&self, sources: &Sources<'_>) -> Result<(), TlsError> {
        let cert_path = sources.cert;
        let provider = ring_provider();
        let certified = rustls::sign::CertifiedKey::from_der(
            self.chain.clone(),
            self.key.clone_key(),
            &provider,
        )
        .map_err(|e| TlsError::Pem {
            path: sources.key.to_owned(),
            detail: format!("the key does not belong to {}: {e}", cert_path.display()),
        })?;
        drop(certified);
        let untrusted = |detail: String| TlsError::Untrusted {
            path: cert_path.to_owned(),
            ca: sources.ca.to_owned(),
            detail,
        };
        let crl = |detail: String| TlsError::Crl {
            path: sources.crl.to_owned(),
            detail,
        };
        // The verifier is where rustls first parses the list: name the file it came from.
        let verifier = self
            .client_verifier(ClientAuth::Required)
            .map_err(|e| match e {
                TlsError::Crl { detail, .. } => crl(detail),
                other => other,
            })?;
        verifier
            .verify_client_cert(&self.chain[0], &self.chain[1..], UnixTime::now())
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(CertificateError::Revoked) => TlsError::Revoked {
                    path: cert_path.to_owned(),
                    crl: sources.crl.to_owned(),
                },
                // The list does not speak for our CA: every peer would be refused.
                rustls::Error::InvalidCertificate(CertificateError::UnknownRevocationStatus) => {
                    crl(format!("it was not issued by the CA in {CA_CERT_FILE}"))
                }
                rustls::Error::InvalidCertRevocationList(e) => crl(format!("{e:?}")),
                other => untrusted(other.to_string()),
            })?;
        Ok(())
    }

    fn client_verifier(
        &self,
        auth: ClientAuth,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
        let builder =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), ring_provider())
                .with_crls(self.crls.iter().cloned());
        let builder = match auth {
            ClientAuth::Required => builder,
            ClientAuth::Optional => builder.allow_unauthenticated(),
        };
        builder.build().map_err(verifier_error)
    }

    fn client_crypto(&self) -> Result<rustls::ClientConfig, TlsError> {
        let provider = ring_provider();
        let inner =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .with_crls(self.crls.iter().cloned())
                .build()
                .map_err(verifier_error)?;
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ManagerVerifier { inner }))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?)
    }

    fn server_crypto(&self, auth: ClientAuth) -> Result<rustls::ServerConfig, TlsError> {
        Ok(rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(self.client_verifier(auth)?)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?)
    }
}

/// The role of the peer of a QUIC connection, from the certificate it presented (which the
/// handshake verified against the cluster CA). Fails for a peer without a certificate, which
/// only happens in insecure mode.
pub fn peer_role(conn: &quinn::Connection) -> Result<Role, IdentityError> {
    let chain = conn
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(IdentityError::NoCertificate)?;
    role_of_chain(&chain)
}

/// The role of a verified certificate chain (leaf first).
pub fn role_of_chain(chain: &[CertificateDer<'_>]) -> Result<Role, IdentityError> {
    let leaf = chain.first().ok_or(IdentityError::NoCertificate)?;
    Role::from_certificate(leaf)
}

/// Every certificate in PEM text; an error if there is none or one is damaged.
pub fn parse_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("damaged PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(certs)
}

/// Installs rustls' `ring` provider as the process default. Idempotent: a provider installed
/// earlier (by this call or anyone else) stays.
pub fn install_crypto_provider() {
    // Err only means a default provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn insecure_client_crypto() -> rustls::ClientConfig {
    let provider = ring_provider();
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        // Invariant: the ring provider supports TLS 1.3, so this cannot fail.
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnlyVerifier(provider)))
        .with_no_client_auth()
}

fn insecure_server_crypto(ip: IpAddr) -> Result<rustls::ServerConfig, TlsError> {
    let mut names = vec![SERVER_NAME.to_owned(), "localhost".to_owned()];
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    let certified = rcgen::generate_simple_self_signed(names)?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    Ok(rustls::ServerConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?)
}

/// Explicit rather than the process default, so these helpers work whether or not
/// [`install_crypto_provider`] was called.
fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn verifier_error(e: rustls::server::VerifierBuilderError) -> TlsError {
    match e {
        rustls::server::VerifierBuilderError::InvalidCrl(e) => TlsError::Crl {
            path: CRL_FILE.into(),
            detail: format!("{e:?}"),
        },
        other => TlsError::Verifier(other.to_string()),
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Verifies a server's chain against the cluster CA (webpki, with the name [`SERVER_NAME`]),
/// then that its certificate is a manager's.
#[derive(Debug)]
struct ManagerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ManagerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match Role::from_certificate(end_entity) {
            Ok(Role::Manager(_)) => Ok(verified),
            Ok(other) => Err(rustls::Error::General(format!(
                "the server presented a certificate of {other}, not of a manager"
            ))),
            Err(e) => Err(rustls::Error::General(format!("server certificate: {e}"))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Insecure mode only: accepts any server certificate but still checks the handshake
/// signatures, so the session keys are bound to the certificate the server presented
/// (encryption without authentication).
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
    use crate::certs::CertificateAuthority;

    #[test]
    fn install_crypto_provider_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(CryptoProvider::get_default().is_some());
    }

    #[test]
    fn configs_carry_the_alpns_asked_for() {
        let client = Security::Insecure.client_crypto(b"x/1").unwrap();
        assert_eq!(client.alpn_protocols, vec![b"x/1".to_vec()]);
        let server = Security::Insecure
            .server_crypto(
                "127.0.0.1".parse().unwrap(),
                &[b"a/1", b"b/1"],
                ClientAuth::Required,
            )
            .unwrap();
        assert_eq!(
            server.alpn_protocols,
            vec![b"a/1".to_vec(), b"b/1".to_vec()]
        );
    }

    fn identity(ca: &CertificateAuthority, role: Role) -> Result<TlsIdentity, TlsError> {
        let issued = ca.issue(&role, &[], 1).unwrap();
        TlsIdentity::from_pem(
            &role,
            ca.cert_pem().to_owned(),
            issued.cert_pem,
            issued.key_pem,
            Path::new("cert.pem"),
        )
    }

    #[test]
    fn an_identity_must_match_its_role_and_ca() {
        let ca = CertificateAuthority::generate("a").unwrap();
        let other = CertificateAuthority::generate("b").unwrap();
        assert_eq!(
            identity(&ca, Role::Manager(1)).unwrap().role(),
            &Role::Manager(1)
        );
        let issued = ca.issue(&Role::Gateway(2), &[], 1).unwrap();
        let wrong_role = TlsIdentity::from_pem(
            &Role::Gateway(3),
            ca.cert_pem().to_owned(),
            issued.cert_pem.clone(),
            issued.key_pem.clone(),
            Path::new("g.pem"),
        );
        assert!(matches!(wrong_role, Err(TlsError::WrongRole { .. })));
        let wrong_ca = TlsIdentity::from_pem(
            &Role::Gateway(2),
            other.cert_pem().to_owned(),
            issued.cert_pem.clone(),
            issued.key_pem,
            Path::new("g.pem"),
        );
        assert!(
            matches!(wrong_ca, Err(TlsError::Untrusted { .. })),
            "{wrong_ca:?}"
        );
        let foreign_key = ca.issue(&Role::Gateway(2), &[], 1).unwrap().key_pem;
        let wrong_key = TlsIdentity::from_pem(
            &Role::Gateway(2),
            ca.cert_pem().to_owned(),
            issued.cert_pem,
            foreign_key,
            Path::new("g.pem"),
        );
        assert!(
            matches!(wrong_key, Err(TlsError::Pem { .. })),
            "{wrong_key:?}"
        );
    }
}
