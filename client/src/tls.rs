//! TLS for [`crate::Client`] (`wss://` and TLS on the raw TCP port): a rustls client
//! configuration that trusts a given CA, and the stream the client reads and writes.
//!
//! ```text
//!   client_config_from_ca_file("ca.pem") ─▶ Arc<rustls::ClientConfig> (ring, TLS 1.2+1.3,
//!                                            ALPN http/1.1)
//!   Client::connect_tls(url, flavour, config) ─▶ TCP ─▶ TLS handshake ─▶ WebSocket upgrade
//! ```
//!
//! Only the CA given is trusted (no system roots): this is a client for a gateway whose
//! certificate the caller knows how to check.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The CA file could not be read.
    #[error("cannot read the CA file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The CA PEM holds no usable certificate.
    #[error("no usable CA certificate in {source_name}: {detail}")]
    NoCertificate {
        /// The file (or "the PEM given").
        source_name: String,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("invalid TLS client configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A client configuration trusting the CA certificates in the PEM file `path`.
pub fn client_config_from_ca_file(
    path: &Path,
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let pem = std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    client_config_from_ca_pem(&pem, &path.display().to_string())
}

/// A client configuration trusting the CA certificates in `pem` (`source_name` names it in
/// errors). ALPN `http/1.1`, TLS 1.2 and 1.3, the ring provider.
pub fn client_config_from_ca_pem(
    pem: &[u8],
    source_name: &str,
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let no_cert = |detail: String| TlsConfigError::NoCertificate {
        source_name: source_name.to_string(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| no_cert(e.to_string()))?;
    if certs.is_empty() {
        return Err(no_cert("no PEM CERTIFICATE block".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| no_cert(e.to_string()))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name to check the server certificate against: the host of `host:port`.
pub(crate) fn server_name(
    authority: &str,
) -> Result<rustls::pki_types::ServerName<'static>, &'static str> {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| "the host is not a valid TLS server name")
}

/// A client socket: plain TCP or TLS over it (what [`crate::Client`] and the load generator
/// read and write).
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, handshake done.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Run the TLS handshake on `tcp`, checking the server certificate against `name`.
    pub async fn tls(
        tcp: TcpStream,
        name: rustls::pki_types::ServerName<'static>,
        config: Arc<rustls::ClientConfig>,
    ) -> io::Result<Stream> {
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        Ok(Stream::Tls(Box::new(stream)))
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_authorities() {
        for (authority, name) in [
            ("localhost:9090", "localhost"),
            ("127.0.0.1:1", "127.0.0.1"),
            ("[::1]:7", "::1"),
        ] {
            let got = server_name(authority).unwrap();
            assert_eq!(got.to_str(), name, "{authority}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let err = client_config_from_ca_pem(b"not pem", "x.pem").unwrap_err();
        assert!(err.to_string().contains("x.pem"), "{err}");
    }
}
