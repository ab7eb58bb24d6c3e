//! The manager's metrics endpoint: a minimal HTTP/1.1 responder on `--metrics ADDR`.
//!
//! ```text
//!   GET /metrics ─▶ Node::refresh_metrics, then the Prometheus text exposition
//!   GET /healthz ─▶ 200 "ok" while serving; 503 with the reason after a fatal failure
//!                   (storage, see `node`) or while shutting down
//!   anything else ─▶ 404 / 405 / 400 / 431; every answer closes the connection
//! ```
//!
//! Requests are read up to [`MAX_REQUEST_BYTES`] within [`REQUEST_TIMEOUT`] and parsed with
//! `httparse`; bad input gets an error status, never a panic. Connections beyond
//! [`MAX_CONNECTIONS`] wait for a free slot: a scraper needs one at a time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::error::StartError;
use crate::node::Node;

/// A request head larger than this is refused (431): scrapers send a few hundred bytes.
pub(crate) const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A request head must arrive within this long, so idle connections cannot pile up.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 32;
/// The content type of the text exposition `prometheus-client` writes (OpenMetrics text,
/// which Prometheus scrapes natively).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bind `addr` and serve until the node shuts down. Returns the bound address.
pub(crate) async fn serve(node: Node, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    let bind_error = |e: std::io::Error| StartError::Bind {
        addr,
        detail: e.to_string(),
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    let shutdown = node.shutdown_token();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    tracing::debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let node = node.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_connection(&node, stream).await {
                    tracing::debug!(error = %e, "metrics connection");
                }
                drop(permit);
            });
        }
    });
    Ok(local)
}

/// What a request asks for, once parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Metrics,
    Health,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    TooLarge,
}

/// Decide the route of a request head (`None`: incomplete, read more).
pub(crate) fn route(head: &[u8]) -> Option<Route> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Partial) if head.len() >= MAX_REQUEST_BYTES => Some(Route::TooLarge),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Route::TooLarge),
        Err(_) => Some(Route::BadRequest),
        Ok(httparse::Status::Complete(_)) => {
            let path = request.path.unwrap_or("");
            // Query strings do not change the answer.
            let path = path.split('?').next().unwrap_or("");
            Some(match (request.method, path) {
                (Some("GET"), "/metrics") => Route::Metrics,
                (Some("GET"), "/healthz") => Route::Health,
                (Some("GET"), _) => Route::NotFound,
                _ => Route::MethodNotAllowed,
            })
        }
    }
}

/// The `/healthz` status line and body.
fn health(node: &Node) -> (&'static str, String) {
    if let Some(fatal) = node.fatal_error() {
        ("503 Service Unavailable", format!("failed: {fatal}\n"))
    } else if node.shutdown_token().is_cancelled() {
        ("503 Service Unavailable", "shutting down\n".to_string())
    } else {
        ("200 OK", "ok\n".to_string())
    }
}

async fn serve_connection(node: &Node, mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let route = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            head.extend_from_slice(&buf[..n]);
            let limit = head.len().min(MAX_REQUEST_BYTES);
            if let Some(route) = route(&head[..limit]) {
                return Ok(Some(route));
            }
        }
    })
    .await;
    let route = match route {
        Ok(Ok(Some(route))) => route,
        // Closed before a whole request, or a read error: nothing to answer.
        Ok(Ok(None)) | Ok(Err(_)) => return Ok(()),
        Err(_) => Route::BadRequest,
    };
    let (status, content_type, body) = match route {
        Route::Metrics => {
            node.refresh_metrics().await;
            ("200 OK", METRICS_CONTENT_TYPE, node.metrics().encode())
        }
        Route::Health => {
            let (status, body) = health(node);
            (status, "text/plain; charset=utf-8", body)
        }
        Route::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "try /metrics or /healthz\n".to_string(),
        ),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_string(),
        ),
        Route::BadRequest => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_string(),
        ),
        Route::TooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain; charset=utf-8",
            "request too large\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn routes_the_two_paths_and_refuses_the_rest() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(route(b"GET /healthz HTTP/1.0\r\n\r\n"), Some(Route::Health));
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Some(Route::NotFound));
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Route::MethodNotAllowed)
        );
        assert_eq!(route(b"GET /metr"), None);
        assert_eq!(route(b"\x00\x01garbage\r\n\r\n"), Some(Route::BadRequest));
        let huge = [
            b"GET /metrics HTTP/1.1\r\nX: ".as_slice(),
            &[b'a'; MAX_REQUEST_BYTES],
        ]
        .concat();
        assert_eq!(route(&huge[..MAX_REQUEST_BYTES]), Some(Route::TooLarge));
    }

    proptest! {
        #[test]
        fn any_input_routes_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = route(&bytes);
        }
    }
}
