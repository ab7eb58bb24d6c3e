//! The backend publish API on the client port: an application's servers publish without
//! opening a WebSocket.
//!
//! ```text
//!   POST /api/publish   {"topic":"room.1","data":<JSON>}       ─▶ 200 {"term":3,"seq":42}
//!   POST /api/broadcast {"topics":["a","b"],"data":<JSON>}     ─▶ 200 {"results":[
//!                                 {"topic":"a","term":3,"seq":42},
//!                                 {"topic":"b","code":"timeout","message":"..."}]}
//!   Authorization: apikey <key>    (keys from `[api] keys_file`, one per line)
//!   errors: {"code":"..","message":".."} with 400, 401, 403, 404 (no [api]), 405, 411, 413,
//!           503 (unavailable), 504 (timeout: the outcome is unknown, do not assume it failed)
//! ```
//!
//! Same acknowledgement as a client publish: 200 only once the topic's leader ordered the
//! message and every subscribed gateway has it. One request per connection, like every other
//! HTTP answer of the gateway; the body is read up to `limits.max_frame_bytes`.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use firetower_client::http::RequestHead;
use firetower_client::Payload;
use firetower_proto::validate_topic;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::upstream::{Stamp, UpstreamError};

/// Most topics in one broadcast.
pub(crate) const MAX_BROADCAST_TOPICS: usize = 1_000;
/// Most keys in a keys file.
const MAX_KEYS: usize = 10_000;
/// Shortest key accepted: a guessable key is no key.
const MIN_KEY_BYTES: usize = 16;

/// `[api]` of the gateway configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// A file with one API key per line (blank lines and `#` comments ignored), each at
    /// least 16 characters.
    pub keys_file: PathBuf,
}

/// Why `[api]` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiConfigError {
    /// The keys file could not be read.
    #[error("[api] `keys_file` = {path}: cannot read it: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file's content is unusable.
    #[error("[api] `keys_file` = {path}: {reason}")]
    Bad {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The accepted keys.
pub(crate) struct ApiKeys {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.keys.len())
    }
}

impl ApiKeys {
    /// Read the keys file.
    pub(crate) fn load(config: &ApiConfig) -> Result<ApiKeys, ApiConfigError> {
        let path = config.keys_file.display().to_string();
        let meta =
            std::fs::metadata(&config.keys_file).map_err(|e| ApiConfigError::Unreadable {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if meta.len() > 4 * 1024 * 1024 {
            return Err(ApiConfigError::Bad {
                path,
                reason: format!("{} bytes; at most 4 MiB", meta.len()),
            });
        }
        let text =
            std::fs::read_to_string(&config.keys_file).map_err(|e| ApiConfigError::Unreadable {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        ApiKeys::parse(&text).map_err(|reason| ApiConfigError::Bad { path, reason })
    }

    fn parse(text: &str) -> Result<ApiKeys, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.len() < MIN_KEY_BYTES || line.chars().any(char::is_whitespace) {
                return Err(format!(
                    "line {}: a key is one word of at least {MIN_KEY_BYTES} characters",
                    n + 1
                ));
            }
            keys.push(line.as_bytes().to_vec());
        }
        if keys.is_empty() {
            return Err("holds no key".into());
        }
        if keys.len() > MAX_KEYS {
            return Err(format!("{} keys; at most {MAX_KEYS}", keys.len()));
        }
        Ok(ApiKeys { keys })
    }

    /// True when the request's `Authorization: apikey <key>` names a known key (compared in
    /// time independent of where the bytes differ).
    pub(crate) fn authorizes(&self, head: &RequestHead) -> bool {
        let Some(value) = head.header("authorization") else {
            return false;
        };
        let Some((scheme, key)) = value.trim().split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("apikey") {
            return false;
        }
        let key = key.trim().as_bytes();
        let mut found = false;
        for k in &self.keys {
            found |= constant_time_eq(k, key);
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An answer of the API: status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiResponse {
    pub(crate) status: u16,
    pub(crate) body: String,
}

impl ApiResponse {
    pub(crate) fn error(status: u16, code: &str, message: impl Into<String>) -> ApiResponse {
        ApiResponse {
            status,
            body: serde_json::json!({"code": code, "message": message.into()}).to_string(),
        }
    }
}

/// What a request asks for, once its body is parsed.
#[derive(Debug)]
pub(crate) enum ApiRequest {
    Publish {
        topic: Arc<str>,
        data: Payload,
    },
    Broadcast {
        topics: Vec<Arc<str>>,
        data: Payload,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    topic: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody<'a> {
    topics: Vec<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn topic(name: String) -> Result<Arc<str>, ApiResponse> {
    validate_topic(&name).map_err(|e| {
        ApiResponse::error(
            400,
            "invalid_topic",
            format!("topic {:?}: {e}", name.chars().take(64).collect::<String>()),
        )
    })?;
    Ok(Arc::from(name))
}

/// Parse the body of `path` (`/api/publish` or `/api/broadcast`).
pub(crate) fn parse(path: &str, body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    let bad = |e: serde_json::Error| {
        ApiResponse::error(400, "invalid_json", format!("the body is not valid: {e}"))
    };
    match path {
        "/api/publish" => {
            let b: PublishBody = serde_json::from_slice(body).map_err(bad)?;
            Ok(ApiRequest::Publish {
                topic: topic(b.topic)?,
                data: Payload::Json(bytes::Bytes::copy_from_slice(b.data.get().as_bytes())),
            })
        }
        "/api/broadcast" => {
            let b: BroadcastBody = serde_json::from_slice(body).map_err(bad)?;
            if b.topics.is_empty() || b.topics.len() > MAX_BROADCAST_TOPICS {
                return Err(ApiResponse::error(
                    400,
                    "invalid_field",
                    format!(
                        "`topics` must name 1 to {MAX_BROADCAST_TOPICS} topics, not {}",
                        b.topics.len()
                    ),
                ));
            }
            let mut topics: Vec<Arc<str>> =
                b.topics.into_iter().map(topic).collect::<Result<_, _>>()?;
            topics.sort();
            topics.dedup();
            Ok(ApiRequest::Broadcast {
                topics,
                data: Payload::Json(bytes::Bytes::copy_from_slice(b.data.get().as_bytes())),
            })
        }
        _ => Err(ApiResponse::error(
            404,
            "not_found",
            "the API has /api/publish and /api/broadcast",
        )),
    }
}

/// The HTTP status of a failed publish.
pub(crate) fn status_of(e: &UpstreamError) -> u16 {
    match e {
        UpstreamError::Timeout => 504,
        UpstreamError::Refused { code, .. } if code == "forbidden" => 403,
        UpstreamError::Refused { code, .. } if code == "invalid_topic" => 400,
        UpstreamError::Unavailable(_)
        | UpstreamError::ShuttingDown
        | UpstreamError::Refused { .. } => 503,
    }
}

/// The answer to one publish.
pub(crate) fn publish_response(result: Result<Stamp, UpstreamError>) -> ApiResponse {
    match result {
        Ok(s) => ApiResponse {
            status: 200,
            body: stamp_json(&s, None).to_string(),
        },
        Err(e) => ApiResponse::error(status_of(&e), e.code(), e.to_string()),
    }
}

/// `{"term","seq"}`, with `offset` and `epoch` for a history topic (and `topic` when given).
fn stamp_json(s: &Stamp, topic: Option<&str>) -> serde_json::Value {
    let mut v = serde_json::json!({"term": s.term, "seq": s.seq});
    if let Some(p) = &s.position {
        v["offset"] = p.offset.into();
        v["epoch"] = (*p.epoch).into();
    }
    if let Some(t) = topic {
        v["topic"] = t.into();
    }
    v
}

/// The answer to a broadcast: one result per topic, in the order of `topics`.
pub(crate) fn broadcast_response(
    results: Vec<(Arc<str>, Result<Stamp, UpstreamError>)>,
) -> ApiResponse {
    let results: Vec<serde_json::Value> = results
        .into_iter()
        .map(|(topic, r)| match r {
            Ok(s) => stamp_json(&s, Some(&topic)),
            Err(e) => {
                serde_json::json!({"topic": &*topic, "code": e.code(), "message": e.to_string()})
            }
        })
        .collect();
    ApiResponse {
        status: 200,
        body: serde_json::json!({ "results": results }).to_string(),
    }
}

/// How many body bytes the request announces, or the answer that refuses it.
pub(crate) fn content_length(head: &RequestHead, max: usize) -> Result<usize, ApiResponse> {
    if head.header("transfer-encoding").is_some() {
        return Err(ApiResponse::error(
            411,
            "length_required",
            "send the body with Content-Length (chunked bodies are not accepted)",
        ));
    }
    let Some(len) = head.header("content-length") else {
        return Err(ApiResponse::error(
            411,
            "length_required",
            "Content-Length is required",
        ));
    };
    let len: usize = len
        .trim()
        .parse()
        .map_err(|_| ApiResponse::error(400, "bad_request", "Content-Length is not a number"))?;
    if len > max {
        return Err(ApiResponse::error(
            413,
            "payload_too_large",
            format!("the body is {len} bytes; the limit is {max}"),
        ));
    }
    Ok(len)
}

/// The body bytes already received behind the head, and how many more to read.
pub(crate) fn body_so_far(buf: &mut BytesMut, head_len: usize) -> BytesMut {
    let _ = buf.split_to(head_len.min(buf.len()));
    std::mem::take(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(auth: Option<&str>) -> RequestHead {
        let mut raw =
            String::from("POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n");
        if let Some(a) = auth {
            raw.push_str(&format!("Authorization: {a}\r\n"));
        }
        raw.push_str("\r\n");
        firetower_client::http::parse_request_head(raw.as_bytes())
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn keys_are_checked() {
        let keys = ApiKeys::parse("# backend keys\n\nkey-0123456789abcdef\nkey-another-one-xyz\n")
            .unwrap();
        assert!(keys.authorizes(&head(Some("apikey key-0123456789abcdef"))));
        assert!(keys.authorizes(&head(Some("ApiKey key-another-one-xyz"))));
        assert!(!keys.authorizes(&head(Some("apikey key-0123456789abcdeX"))));
        assert!(!keys.authorizes(&head(Some("Bearer key-0123456789abcdef"))));
        assert!(!keys.authorizes(&head(Some("apikey"))));
        assert!(!keys.authorizes(&head(None)));
        assert!(ApiKeys::parse("short\n").is_err());
        assert!(ApiKeys::parse("# nothing\n").is_err());
        assert!(ApiKeys::parse("two words-0123456789\n").is_err());
        assert_eq!(content_length(&head(None), 10), Ok(3));
        assert_eq!(content_length(&head(None), 2).unwrap_err().status, 413);
    }

    #[test]
    fn bodies_are_parsed_strictly() {
        match parse("/api/publish", br#"{"topic":"room.1","data":{"a":1}}"#).unwrap() {
            ApiRequest::Publish { topic, data } => {
                assert_eq!(&*topic, "room.1");
                assert_eq!(data.bytes().as_ref(), br#"{"a":1}"#);
            }
            other => panic!("{other:?}"),
        }
        for (path, body, code) in [
            (
                "/api/publish",
                &br#"{"topic":"room.1"}"#[..],
                "invalid_json",
            ),
            ("/api/publish", br#"{"topic":"","data":1}"#, "invalid_topic"),
            (
                "/api/publish",
                br#"{"topic":"a b","data":1}"#,
                "invalid_topic",
            ),
            ("/api/publish", b"not json", "invalid_json"),
            (
                "/api/publish",
                br#"{"topic":"a","data":1,"x":2}"#,
                "invalid_json",
            ),
            (
                "/api/broadcast",
                br#"{"topics":[],"data":1}"#,
                "invalid_field",
            ),
            ("/api/nope", b"{}", "not_found"),
        ] {
            let e = parse(path, body).unwrap_err();
            assert!(e.body.contains(code), "{path} {body:?}: {e:?}");
        }
        match parse("/api/broadcast", br#"{"topics":["b","a","b"],"data":[1]}"#).unwrap() {
            ApiRequest::Broadcast { topics, .. } => {
                assert_eq!(topics, vec![Arc::from("a"), Arc::from("b")]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn results_have_the_documented_shapes() {
        let ok = publish_response(Ok(Stamp {
            term: 3,
            seq: 42,
            position: None,
        }));
        assert_eq!(
            (ok.status, ok.body.as_str()),
            (200, r#"{"seq":42,"term":3}"#)
        );
        let timeout = publish_response(Err(UpstreamError::Timeout));
        assert_eq!(timeout.status, 504);
        assert!(timeout.body.contains(r#""code":"timeout""#));
        let b = broadcast_response(vec![
            (
                Arc::from("a"),
                Ok(Stamp {
                    term: 1,
                    seq: 2,
                    position: None,
                }),
            ),
            (Arc::from("b"), Err(UpstreamError::Unavailable("x".into()))),
        ]);
        let v: serde_json::Value = serde_json::from_str(&b.body).unwrap();
        assert_eq!(v["results"][0]["seq"], 2);
        assert_eq!(v["results"][1]["code"], "unavailable");
    }
}
