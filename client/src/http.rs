//! The little HTTP/1.1 a WebSocket handshake needs, as pure functions over byte buffers:
//! the request head a server reads ([`parse_request_head`]) and the response head a client
//! reads ([`parse_response_head`]).
//!
//! ```text
//!   client ── GET /ws (Upgrade) ──▶ server: parse_request_head ─▶ ws::negotiate
//!   client ◀── 101 Switching ───── server
//!   client: parse_response_head ─▶ ws::check_upgrade_response
//! ```
//!
//! Both are bounded by [`MAX_REQUEST_HEAD`] and by a header count, and leave the bytes after
//! the head (possibly WebSocket frames already) to the caller. No bodies, no keep-alive: the
//! server's own short responses (health, metrics) are its business, not the protocol's.

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

/// The parts of a request a WebSocket server looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, ...
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The query string after `?`, undecoded (empty when there is none).
    pub query: String,
    /// Headers with lower-cased names, in order.
    headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first value of a header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(&self.headers, name)
    }

    /// Every header, names in lower case, in the order received.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first value of a query parameter, percent-decoded (`+` is a space). `None` when
    /// absent or not valid UTF-8 once decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k)? == name)
                .then(|| percent_decode(v))
                .flatten()
        })
    }
}

/// `%XX` and `+` decoding of one query component.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Parse a request head from the front of `buf`: `Ok(None)` while incomplete, else the head and
/// its length in bytes (what follows may already be WebSocket frames).
pub fn parse_request_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(len) = head_len(req.parse(buf), buf.len())? else {
        return Ok(None);
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(HttpError::Malformed("no request line".into()));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_string(), query.to_string());
    let headers = lower_case_headers(req.headers);
    Ok(Some((
        RequestHead {
            method: method.to_string(),
            path,
            query,
            headers,
        },
        len,
    )))
}

/// The parts of a response a WebSocket client looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// `101`, `400`, ...
    pub status: u16,
    /// Headers with lower-cased names, in order.
    headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// The first value of a header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(&self.headers, name)
    }
}

/// Parse a response head from the front of `buf`: `Ok(None)` while incomplete, else the head
/// and its length in bytes (what follows may already be WebSocket frames).
pub fn parse_response_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let Some(len) = head_len(resp.parse(buf), buf.len())? else {
        return Ok(None);
    };
    let Some(code) = resp.code else {
        return Err(HttpError::Malformed("no status line".into()));
    };
    Ok(Some((
        ResponseHead {
            status: code,
            headers: lower_case_headers(resp.headers),
        },
        len,
    )))
}

/// The head's length once `parsed` (of a buffer of `buffered` bytes) is complete, `None` while
/// more may come; a head over [`MAX_REQUEST_HEAD`] is refused either way.
fn head_len(parsed: httparse::Result<usize>, buffered: usize) -> Result<Option<usize>, HttpError> {
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buffered >= MAX_REQUEST_HEAD => {
            return Err(HttpError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if len > MAX_REQUEST_HEAD {
        return Err(HttpError::TooLarge);
    }
    Ok(Some(len))
}

fn first_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn lower_case_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn query_parameters_are_decoded() {
        let raw = b"GET /ws?a=1&token=ey%2Ej+x&empty&bad=%zz HTTP/1.1\r\nHost: a\r\n\r\n";
        let (head, _) = parse_request_head(raw).unwrap().unwrap();
        assert_eq!(head.query_param("token").as_deref(), Some("ey.j x"));
        assert_eq!(head.query_param("a").as_deref(), Some("1"));
        assert_eq!(head.query_param("empty").as_deref(), Some(""));
        assert_eq!(head.query_param("bad"), None);
        assert_eq!(head.query_param("missing"), None);
    }

    #[test]
    fn parses_heads_and_leaves_what_follows() {
        let raw = b"GET /ws?token=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\n\r\n\x81\x80";
        let (head, len) = parse_request_head(raw).unwrap().unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/ws");
        assert_eq!(head.query_param("token").as_deref(), Some("1"));
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

    #[test]
    fn parses_response_heads_and_leaves_what_follows() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00";
        let (head, len) = parse_response_head(raw).unwrap().unwrap();
        assert_eq!(head.status, 101);
        assert_eq!(head.header("upgrade"), Some("websocket"));
        assert_eq!(&raw[len..], b"\x81\x00");
        assert_eq!(parse_response_head(b"HTTP/1.1 101 Swi"), Ok(None));
        assert!(matches!(
            parse_response_head(b"\x16\x03\x01garbage\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_request_head(&bytes);
            let _ = parse_response_head(&bytes);
        }
    }
}
