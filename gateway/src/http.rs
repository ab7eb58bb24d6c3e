//! The little HTTP/1.1 the gateway speaks on its client port: one request per connection,
//! then either a WebSocket upgrade or a short response and a close.
//!
//! ```text
//!   GET /ws (Upgrade)  ─▶ 101, the connection becomes a WebSocket
//!   GET /healthz       ─▶ 200 while the process serves
//!   GET /readyz        ─▶ 200 when Upstream::ready(), else 503
//!   GET /metrics       ─▶ Prometheus text
//!   anything else      ─▶ 404 (405 for other methods)
//! ```
//!
//! No keep-alive, no bodies: health checkers and scrapers open one connection per request,
//! and a gateway has no other HTTP business. Parsing is pure ([`parse_request_head`]), bounded
//! by [`MAX_REQUEST_HEAD`].

/// Longest request head accepted (request line and headers), in bytes.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Most headers accepted in one request.
const MAX_HEADERS: usize = 32;

/// Why a request head is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Not HTTP/1.x.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// Head larger than [`MAX_REQUEST_HEAD`] or more than 32 headers.
    #[error("request head too large")]
    TooLarge,
}

impl HttpError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::TooLarge => 431,
        }
    }
}

/// The parts of a request the gateway looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, ...
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// Headers with lower-cased names, in order.
    headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first value of a header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse a request head from the front of `buf`: `Ok(None)` while incomplete, else the head and
/// its length in bytes (what follows may already be WebSocket frames).
pub fn parse_request_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() >= MAX_REQUEST_HEAD => {
            return Err(HttpError::TooLarge)
        }
        httparse::Status::Partial => return Ok(None),
    };
    if len > MAX_REQUEST_HEAD {
        return Err(HttpError::TooLarge);
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(HttpError::Malformed("no request line".into()));
    };
    let path = target.split('?').next().unwrap_or_default().to_string();
    let headers = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    Ok(Some((
        RequestHead {
            method: method.to_string(),
            path,
            headers,
        },
        len,
    )))
}

/// A complete response with a text body and `Connection: close`.
pub fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let extra = if status == 426 {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A plain-text response.
pub fn text_response(status: u16, body: &str) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_heads_and_leaves_what_follows() {
        let raw = b"GET /ws?token=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\n\r\n\x81\x80";
        let (head, len) = parse_request_head(raw).unwrap().unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/ws");
        assert_eq!(head.header("upgrade"), Some("WebSocket"));
        assert_eq!(&raw[len..], b"\x81\x80");
        assert_eq!(parse_request_head(b"GET / HTTP/1.1\r\nHost"), Ok(None));
        assert!(matches!(
            parse_request_head(b"\x16\x03\x01garbage\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn bounds_the_head() {
        let mut raw = b"GET / HTTP/1.1\r\nX: ".to_vec();
        raw.resize(MAX_REQUEST_HEAD + 10, b'a');
        assert_eq!(parse_request_head(&raw), Err(HttpError::TooLarge));
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..40 {
            many.push_str(&format!("H{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(
            parse_request_head(many.as_bytes()),
            Err(HttpError::TooLarge)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_request_head(&bytes);
        }
    }
}
