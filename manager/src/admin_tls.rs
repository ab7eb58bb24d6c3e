//! The admin port's connections: TLS with an optional client certificate, or plaintext, told
//! apart by the first byte, with a cap on open connections and a handshake deadline.
//!
//! ```text
//!   accept (while fewer than MAX_ADMIN_CONNECTIONS are open)
//!     └─ task: peek 1 byte ─ 0x16 (TLS handshake record) ─▶ rustls, client certificate optional
//!                          └ anything else (HTTP/2 preface) ▶ plaintext
//!        ─▶ AdminStream { AdminPeer { role, remote } } ─▶ tonic
//! ```
//!
//! Plaintext is accepted on a secure manager so that health probes and reflection work from
//! any gRPC client (Kubernetes' gRPC probe, Python's `grpcio-reflection`, grpcurl
//! `-plaintext`); such a peer has no role, so [`crate::admin`] refuses every admin call it
//! makes. The cap keeps a flood of admin connections from taking the file descriptors the
//! write-ahead log and the QUIC socket need: beyond it new connections wait in the kernel's
//! listen backlog instead of being accepted.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use firetower_link::{tls::role_of_chain, ClientAuth, Role, Security};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Most admin connections open at once (each is one file descriptor).
pub(crate) const MAX_ADMIN_CONNECTIONS: usize = 256;
/// A connection that has not finished its TLS handshake (or sent its first byte) by then is
/// closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// First byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Who is on the other end of an admin connection; tonic puts it in every request's
/// extensions.
#[derive(Clone, Debug)]
pub(crate) struct AdminPeer {
    /// The role of the verified client certificate; `None` for plaintext or no certificate.
    pub(crate) role: Option<Role>,
    /// The client's address, for logs.
    pub(crate) remote: SocketAddr,
}

/// One accepted admin connection, with its slot under the cap.
pub(crate) struct AdminStream {
    io: Io,
    peer: AdminPeer,
    _permit: OwnedSemaphorePermit,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for AdminStream {
    type ConnectInfo = AdminPeer;

    fn connect_info(&self) -> AdminPeer {
        self.peer.clone()
    }
}

impl AsyncRead for AdminStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AdminStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The stream of admin connections accepted on `listener` until `shutdown`.
///
/// A source address that opens connections faster than its handshake rate limit
/// ([`firetower_link::handshake_limit`]) has the excess closed at once, before any TLS work;
/// `on_refused` is called for each.
pub(crate) fn incoming(
    listener: TcpListener,
    security: &Security,
    shutdown: CancellationToken,
    on_refused: impl Fn() + Send + 'static,
) -> Result<tokio_stream::wrappers::ReceiverStream<io::Result<AdminStream>>, firetower_link::TlsError>
{
    let acceptor = match security {
        Security::Insecure => None,
        Security::Mutual(_) => {
            let crypto = security.server_crypto(
                listener
                    .local_addr()
                    .map(|a| a.ip())
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                &[b"h2"],
                ClientAuth::Optional,
            )?;
            Some(TlsAcceptor::from(Arc::new(crypto)))
        }
    };
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let handshakes = firetower_link::HandshakeLimiter::default();
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let (tcp, remote) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            if !handshakes.admit(remote.ip()) {
                tracing::debug!(%remote, "admin connection refused: handshake rate limit");
                on_refused();
                drop(tcp);
                continue;
            }
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(tcp, acceptor));
                match handshake.await {
                    Ok(Ok((io, role))) => {
                        let stream = AdminStream {
                            io,
                            peer: AdminPeer { role, remote },
                            _permit: permit,
                        };
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "admin handshake failed"),
                    Err(_) => tracing::debug!(%remote, "admin handshake timed out"),
                }
            });
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

async fn accept(tcp: TcpStream, acceptor: Option<TlsAcceptor>) -> io::Result<(Io, Option<Role>)> {
    let Some(acceptor) = acceptor else {
        return Ok((Io::Plain(tcp), None));
    };
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    if n == 0 || first[0] != TLS_HANDSHAKE_RECORD {
        return Ok((Io::Plain(tcp), None));
    }
    let tls = acceptor.accept(tcp).await?;
    let role = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| role_of_chain(chain).ok());
    Ok((Io::Tls(Box::new(tls)), role))
}
