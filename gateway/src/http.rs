//! The gateway's own short HTTP responses on its client port: one request per connection,
//! then either a WebSocket upgrade or a short response and a close.
//!
//! ```text
//!   GET /ws (Upgrade)  ─▶ 101, the connection becomes a WebSocket
//!   GET /healthz       ─▶ 200 while the process serves
//!   GET /readyz        ─▶ 200 when Upstream::ready(), else 503
//!   GET /metrics       ─▶ Prometheus text
//!   GET /, POST /demo/token ─▶ the demo page and its tokens (`demo.rs`)
//!   anything else      ─▶ 404 (405 for other methods)
//! ```
//!
//! No keep-alive, no bodies: health checkers and scrapers open one connection per request,
//! and a gateway has no other HTTP business. Parsing the request head is protocol, shared with
//! clients: it lives in [`firetower_client::http`].

/// A complete response with a text body and `Connection: close`.
pub(crate) fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let extra = if status == 426 {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    response_with_headers(status, content_type, extra, body.as_bytes())
}

/// A complete response with `headers` (each line ending in CRLF) and `Connection: close`.
pub(crate) fn response_with_headers(
    status: u16,
    content_type: &str,
    headers: &str,
    body: &[u8],
) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {headers}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A plain-text response.
pub(crate) fn text_response(status: u16, body: &str) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_close_and_announce_their_length() {
        let text = String::from_utf8(text_response(426, "upgrade\n")).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Content-Length: 8\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\nupgrade\n"));
    }
}
