//! The application's answer to a hook call, parsed strictly and without I/O: bytes in, a
//! [`Verdict`] or a [`BadAnswer`] out.
//!
//! ```text
//!   body bytes ──▶ UTF-8 ──▶ JSON object (known fields only) ──▶ fields allowed for this event
//!                                                                 and this verdict ──▶ Verdict
//! ```
//!
//! Every answer is `{"allow":true, ...}` or `{"allow":false,"code":..,"message":..}`. What may
//! come with `"allow":true` depends on the event: `user`, `subscribe` and `publish` for
//! `connect`, `data` (and `encoding`) for `publish`, nothing for `subscribe`. Anything else is a
//! bad answer rather than ignored: a misspelt `premissions` silently dropped would grant
//! nothing and leave the application guessing why.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::HookEvent;
use crate::Payload;

/// The code of a denial that does not name one.
pub(crate) const DEFAULT_DENY_CODE: &str = "forbidden";
/// The message of a denial that does not carry one.
pub(crate) const DEFAULT_DENY_MESSAGE: &str = "refused by the application";
/// Longest `code`: codes are identifiers clients switch on, not sentences.
pub(crate) const MAX_CODE_BYTES: usize = 32;
/// Longest `message`: it is sent to the client in an error frame (and may end up in a close
/// reason, which WebSocket caps at 123 bytes), so it is a line, not a document.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256;
/// Longest `user`: user ids are keys (and replace `{sub}` in topic patterns).
pub(crate) const MAX_USER_BYTES: usize = 128;
/// Most patterns in one `subscribe` or `publish` list: a connection holds at most 1,000
/// topics by default, and a longer list is a bug in the application, not a permission set.
pub(crate) const MAX_PATTERNS: usize = 1_000;

/// What the application decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict<T> {
    /// `"allow":true`, with what the event's answer may carry.
    Allow(T),
    /// `"allow":false`.
    Deny {
        /// snake_case, at most [`MAX_CODE_BYTES`]; [`DEFAULT_DENY_CODE`] when absent.
        code: String,
        /// At most [`MAX_MESSAGE_BYTES`]; [`DEFAULT_DENY_MESSAGE`] when absent.
        message: String,
    },
}

/// What a `connect` answer may grant. `None` is "the answer did not say", which is not the same
/// as an empty list (no topic at all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ConnectGrant {
    /// The user the connection belongs to (a valid user id: 1..=128 bytes, no whitespace or
    /// control characters).
    pub(crate) user: Option<String>,
    /// Topic patterns the connection may subscribe to (each checked by
    /// [`firetower_proto::validate_pattern`]; `{sub}` is left for the caller to expand).
    pub(crate) subscribe: Option<Vec<String>>,
    /// Topic patterns the connection may publish to.
    pub(crate) publish: Option<Vec<String>>,
}

/// Why an answer was refused. Each says which field is wrong and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadAnswer {
    /// The body is not UTF-8 text.
    #[error("the answer is not UTF-8 text")]
    NotUtf8,
    /// Not JSON, not an object, an unknown field, a field of the wrong type, or no `allow`.
    #[error("the answer is not a valid hook answer: {0}")]
    Json(String),
    /// A known field in an answer that may not carry it.
    #[error("`{field}` is not allowed in {context}")]
    FieldNotAllowed {
        /// The field.
        field: &'static str,
        /// Where it was found, e.g. `a subscribe answer` or `an answer with "allow":false`.
        context: String,
    },
    /// `code` is empty, too long or not snake_case.
    #[error(
        "`code` {0:?} must be snake_case ([a-z][a-z0-9_]*) and at most {MAX_CODE_BYTES} bytes"
    )]
    BadCode(String),
    /// `message` is too long.
    #[error("`message` is {0} bytes; at most {MAX_MESSAGE_BYTES} are allowed")]
    MessageTooLong(usize),
    /// `user` is empty, too long, or has whitespace or control characters.
    #[error(
        "`user` {0:?} must be 1 to {MAX_USER_BYTES} bytes without whitespace or control characters"
    )]
    BadUser(String),
    /// A pattern list is too long.
    #[error("`{field}` has {count} patterns; at most {MAX_PATTERNS} are allowed")]
    TooManyPatterns {
        /// `subscribe` or `publish`.
        field: &'static str,
        /// How many there were.
        count: usize,
    },
    /// A pattern is not a topic or a topic prefix followed by `*`.
    #[error("`{field}`: {source}")]
    BadPattern {
        /// `subscribe` or `publish`.
        field: &'static str,
        /// What is wrong with the pattern.
        source: firetower_proto::PatternError,
    },
    /// `encoding` is not `base64`.
    #[error("`encoding` must be \"base64\", not {0:?}")]
    BadEncoding(String),
    /// `"encoding":"base64"` with `data` that is not a base64 string.
    #[error("`data` with \"encoding\":\"base64\" must be a string of standard base64")]
    BadBase64,
    /// `encoding` without `data`.
    #[error("`encoding` without `data`")]
    EncodingWithoutData,
}

/// The answer as it is written, before the per-event checks.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a JSON object such as {\"allow\":true}"
)]
struct RawAnswer<'a> {
    allow: bool,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
    /// Present (even as `null`, which is a valid replacement) or absent.
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    encoding: Option<String>,
}

/// `Some` for any value, `null` included: with `Option`'s own deserializer `"data":null` would
/// read as absent.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

impl RawAnswer<'_> {
    /// The fields that are present, by name, in the order of the struct.
    fn present_fields(&self) -> [(&'static str, bool); 7] {
        [
            ("code", self.code.is_some()),
            ("message", self.message.is_some()),
            ("user", self.user.is_some()),
            ("subscribe", self.subscribe.is_some()),
            ("publish", self.publish.is_some()),
            ("data", self.data.is_some()),
            ("encoding", self.encoding.is_some()),
        ]
    }

    /// Refuse every present field not in `allowed`.
    fn only(&self, allowed: &[&str], context: impl FnOnce() -> String) -> Result<(), BadAnswer> {
        match self
            .present_fields()
            .into_iter()
            .find(|(name, present)| *present && !allowed.contains(name))
        {
            Some((field, _)) => Err(BadAnswer::FieldNotAllowed {
                field,
                context: context(),
            }),
            None => Ok(()),
        }
    }
}

/// Parse `body` as the answer to an `event` call; `allow` turns the fields of an allowing
/// answer into what the event grants.
fn parse<'a, T>(
    event: HookEvent,
    body: &'a [u8],
    allowed: &[&str],
    allow: impl FnOnce(RawAnswer<'a>) -> Result<T, BadAnswer>,
) -> Result<Verdict<T>, BadAnswer> {
    let text = std::str::from_utf8(body).map_err(|_| BadAnswer::NotUtf8)?;
    let raw: RawAnswer<'a> =
        serde_json::from_str(text).map_err(|e| BadAnswer::Json(e.to_string()))?;
    if raw.allow {
        raw.only(allowed, || format!("a {event} answer"))?;
        return allow(raw).map(Verdict::Allow);
    }
    raw.only(&["code", "message"], || {
        "an answer with \"allow\":false".to_string()
    })?;
    let code = match raw.code {
        Some(code) if valid_code(&code) => code,
        Some(code) => return Err(BadAnswer::BadCode(code)),
        None => DEFAULT_DENY_CODE.to_string(),
    };
    let message = match raw.message {
        Some(message) if message.len() > MAX_MESSAGE_BYTES => {
            return Err(BadAnswer::MessageTooLong(message.len()))
        }
        Some(message) => message,
        None => DEFAULT_DENY_MESSAGE.to_string(),
    };
    Ok(Verdict::Deny { code, message })
}

/// The answer to a `connect` call.
pub(crate) fn parse_connect(body: &[u8]) -> Result<Verdict<ConnectGrant>, BadAnswer> {
    parse(
        HookEvent::Connect,
        body,
        &["user", "subscribe", "publish"],
        |raw| {
            if let Some(user) = &raw.user {
                if !valid_user(user) {
                    return Err(BadAnswer::BadUser(user.clone()));
                }
            }
            Ok(ConnectGrant {
                user: raw.user,
                subscribe: raw
                    .subscribe
                    .map(|p| patterns("subscribe", p))
                    .transpose()?,
                publish: raw.publish.map(|p| patterns("publish", p)).transpose()?,
            })
        },
    )
}

/// The answer to a `subscribe` call.
pub(crate) fn parse_subscribe(body: &[u8]) -> Result<Verdict<()>, BadAnswer> {
    parse(HookEvent::Subscribe, body, &[], |_| Ok(()))
}

/// The answer to a `publish` call: `Some` carries the data that replaces the published one.
/// JSON `data` (any JSON value, `null` included) becomes [`Payload::Json`] with the answer's
/// text verbatim; `"encoding":"base64"` with a base64 string becomes [`Payload::Binary`].
pub(crate) fn parse_publish(body: &[u8]) -> Result<Verdict<Option<Payload>>, BadAnswer> {
    parse(
        HookEvent::Publish,
        body,
        &["data", "encoding"],
        |raw| match (raw.data, raw.encoding) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(BadAnswer::EncodingWithoutData),
            (Some(data), None) => Ok(Some(Payload::Json(Bytes::copy_from_slice(
                data.get().as_bytes(),
            )))),
            (Some(data), Some(encoding)) if encoding == "base64" => {
                let text: String =
                    serde_json::from_str(data.get()).map_err(|_| BadAnswer::BadBase64)?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|_| BadAnswer::BadBase64)?;
                Ok(Some(Payload::Binary(Bytes::from(bytes))))
            }
            (Some(_), Some(encoding)) => Err(BadAnswer::BadEncoding(encoding)),
        },
    )
}

/// Check every pattern of a list.
fn patterns(field: &'static str, list: Vec<String>) -> Result<Vec<String>, BadAnswer> {
    if list.len() > MAX_PATTERNS {
        return Err(BadAnswer::TooManyPatterns {
            field,
            count: list.len(),
        });
    }
    for pattern in &list {
        firetower_proto::validate_pattern(pattern)
            .map_err(|source| BadAnswer::BadPattern { field, source })?;
    }
    Ok(list)
}

/// `[a-z][a-z0-9_]*`, at most [`MAX_CODE_BYTES`].
fn valid_code(code: &str) -> bool {
    let mut chars = code.chars();
    code.len() <= MAX_CODE_BYTES
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// 1..=[`MAX_USER_BYTES`] bytes, no whitespace or control characters: a user id replaces
/// `{sub}` in topic patterns, and topics allow neither.
fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_USER_BYTES
        && !user.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deny(code: &str, message: &str) -> Verdict<()> {
        Verdict::Deny {
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn allow_and_deny() {
        assert_eq!(
            parse_subscribe(br#"{"allow":true}"#),
            Ok(Verdict::Allow(()))
        );
        assert_eq!(
            parse_subscribe(br#" {"allow" : false, "code":"not_member", "message":"join first"} "#),
            Ok(deny("not_member", "join first"))
        );
        assert_eq!(
            parse_subscribe(br#"{"allow":false}"#),
            Ok(deny(DEFAULT_DENY_CODE, DEFAULT_DENY_MESSAGE))
        );
        // `null` reads as absent.
        assert_eq!(
            parse_subscribe(br#"{"allow":false,"code":null,"message":null}"#),
            Ok(deny(DEFAULT_DENY_CODE, DEFAULT_DENY_MESSAGE))
        );
    }

    #[test]
    fn a_connect_answer_grants_a_user_and_permissions() {
        let grant = parse_connect(
            br#"{"allow":true,"user":"u1","subscribe":["room.*","user.{sub}"],"publish":[]}"#,
        );
        assert_eq!(
            grant,
            Ok(Verdict::Allow(ConnectGrant {
                user: Some("u1".into()),
                subscribe: Some(vec!["room.*".into(), "user.{sub}".into()]),
                publish: Some(vec![]),
            }))
        );
        assert_eq!(
            parse_connect(br#"{"allow":true}"#),
            Ok(Verdict::Allow(ConnectGrant::default()))
        );
    }

    #[test]
    fn a_publish_answer_may_replace_the_data() {
        assert_eq!(
            parse_publish(br#"{"allow":true}"#),
            Ok(Verdict::Allow(None))
        );
        let Ok(Verdict::Allow(Some(Payload::Json(data)))) =
            parse_publish(br#"{"allow":true,"data":{"text":"***", "n":[1,2.50]}}"#)
        else {
            panic!("expected replaced JSON data");
        };
        // Verbatim: no re-serialisation of numbers or spacing.
        assert_eq!(&data[..], br#"{"text":"***", "n":[1,2.50]}"#);
        let Ok(Verdict::Allow(Some(Payload::Json(data)))) =
            parse_publish(br#"{"allow":true,"data":null}"#)
        else {
            panic!("null is a replacement");
        };
        assert_eq!(&data[..], b"null");
        assert_eq!(
            parse_publish(br#"{"allow":true,"data":"AAE=","encoding":"base64"}"#),
            Ok(Verdict::Allow(Some(Payload::Binary(Bytes::from_static(
                &[0, 1]
            )))))
        );
    }

    /// Every way an answer can be wrong, with the error it must give.
    #[test]
    fn every_bad_answer_is_refused() {
        let json = |body: &[u8]| match parse_connect(body) {
            Err(BadAnswer::Json(message)) => message,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(body)),
        };
        assert!(json(b"").contains("EOF"));
        assert!(json(b"<html>hello</html>").contains("expected value"));
        assert!(json(b"[]").contains("a JSON object such as"));
        assert!(json(b"true").contains("a JSON object such as"));
        assert!(json(b"{}").contains("missing field `allow`"));
        assert!(json(br#"{"allow":"yes"}"#).contains("expected a boolean"));
        assert!(json(br#"{"allow":1}"#).contains("expected a boolean"));
        assert!(json(br#"{"allow":null}"#).contains("expected a boolean"));
        assert!(json(br#"{"allow":true,"premissions":[]}"#).contains("unknown field `premissions`"));
        assert!(json(br#"{"allow":true}{"allow":true}"#).contains("trailing characters"));
        assert!(json(br#"{"allow":true,"allow":false}"#).contains("duplicate field `allow`"));
        assert!(json(br#"{"allow":true,"user":7}"#).contains("expected a string"));
        assert!(json(br#"{"allow":true,"subscribe":"room.*"}"#).contains("expected a sequence"));
        assert!(json(br#"{"allow":true,"subscribe":[1]}"#).contains("expected a string"));
        assert!(json(br#"{"allow":false,"code":5}"#).contains("expected a string"));
        assert!(json(br#"{"allow":true"#).contains("EOF"));

        assert_eq!(parse_connect(b"\xff\xfe"), Err(BadAnswer::NotUtf8));

        let not_allowed = |r: Result<Verdict<()>, BadAnswer>, f: &str| match r {
            Err(BadAnswer::FieldNotAllowed { field, .. }) => assert_eq!(field, f),
            other => panic!("{f}: {other:?}"),
        };
        not_allowed(parse_subscribe(br#"{"allow":true,"user":"u"}"#), "user");
        not_allowed(parse_subscribe(br#"{"allow":true,"data":1}"#), "data");
        not_allowed(parse_subscribe(br#"{"allow":true,"code":"x"}"#), "code");
        not_allowed(
            parse_subscribe(br#"{"allow":true,"message":"ok"}"#),
            "message",
        );
        not_allowed(
            parse_connect(br#"{"allow":false,"user":"u"}"#).map(|_| Verdict::Allow(())),
            "user",
        );
        not_allowed(
            parse_connect(br#"{"allow":true,"data":1}"#).map(|_| Verdict::Allow(())),
            "data",
        );
        not_allowed(
            parse_publish(br#"{"allow":false,"data":1}"#).map(|_| Verdict::Allow(())),
            "data",
        );
        not_allowed(
            parse_publish(br#"{"allow":true,"publish":[]}"#).map(|_| Verdict::Allow(())),
            "publish",
        );
        assert_eq!(
            parse_subscribe(br#"{"allow":true,"user":"u"}"#)
                .unwrap_err()
                .to_string(),
            "`user` is not allowed in a subscribe answer"
        );

        for code in [
            "",
            "Forbidden",
            "no way",
            "1abc",
            "_x",
            "a-b",
            &"a".repeat(33),
        ] {
            let body = format!(r#"{{"allow":false,"code":"{code}"}}"#);
            assert_eq!(
                parse_subscribe(body.as_bytes()),
                Err(BadAnswer::BadCode(code.to_string()))
            );
        }
        let ok = format!(r#"{{"allow":false,"code":"{}"}}"#, "a_1".repeat(10));
        assert!(parse_subscribe(ok.as_bytes()).is_ok());

        let long = format!(r#"{{"allow":false,"message":"{}"}}"#, "m".repeat(257));
        assert_eq!(
            parse_subscribe(long.as_bytes()),
            Err(BadAnswer::MessageTooLong(257))
        );

        for user in ["", "a b", "tab\\t", "nl\\n", "nul\\u0000", &"u".repeat(129)] {
            let body = format!(r#"{{"allow":true,"user":"{user}"}}"#);
            assert!(
                matches!(parse_connect(body.as_bytes()), Err(BadAnswer::BadUser(_))),
                "{user:?}"
            );
        }

        for (pattern, field) in [
            ("a*b", "subscribe"),
            ("", "publish"),
            ("a b.*", "subscribe"),
        ] {
            let body = format!(r#"{{"allow":true,"{field}":["ok.*","{pattern}"]}}"#);
            match parse_connect(body.as_bytes()) {
                Err(BadAnswer::BadPattern { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{pattern:?}: {other:?}"),
            }
        }
        let many: Vec<String> = (0..1001).map(|i| format!("t.{i}")).collect();
        let body = serde_json::json!({"allow": true, "publish": many}).to_string();
        assert_eq!(
            parse_connect(body.as_bytes()),
            Err(BadAnswer::TooManyPatterns {
                field: "publish",
                count: 1001
            })
        );

        assert_eq!(
            parse_publish(br#"{"allow":true,"data":"AAE=","encoding":"hex"}"#),
            Err(BadAnswer::BadEncoding("hex".into()))
        );
        assert_eq!(
            parse_publish(br#"{"allow":true,"data":"not base64!","encoding":"base64"}"#),
            Err(BadAnswer::BadBase64)
        );
        assert_eq!(
            parse_publish(br#"{"allow":true,"data":[1],"encoding":"base64"}"#),
            Err(BadAnswer::BadBase64)
        );
        assert_eq!(
            parse_publish(br#"{"allow":true,"encoding":"base64"}"#),
            Err(BadAnswer::EncodingWithoutData)
        );
    }

    proptest::proptest! {
        /// Whatever the hook sends, parsing returns (no panic), and an allowing publish answer's
        /// JSON data is valid JSON.
        #[test]
        fn any_bytes_parse_or_fail_cleanly(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = parse_connect(&body);
            let _ = parse_subscribe(&body);
            if let Ok(Verdict::Allow(Some(Payload::Json(data)))) = parse_publish(&body) {
                proptest::prop_assert!(serde_json::from_slice::<serde_json::Value>(&data).is_ok());
            }
        }

        /// Answers built from JSON-ish pieces reach the field checks, not only the parser.
        #[test]
        fn structured_answers_parse_or_fail_cleanly(
            allow in proptest::bool::ANY,
            user in proptest::option::of("[ -~]{0,8}"),
            sub in proptest::option::of(proptest::collection::vec("[a-z.*{}]{0,6}", 0..4)),
            data in proptest::option::of("(null|1|\"x\"|\\{\\}|\\[1\\])"),
        ) {
            let mut answer = serde_json::Map::new();
            answer.insert("allow".into(), allow.into());
            if let Some(user) = user { answer.insert("user".into(), user.into()); }
            if let Some(sub) = sub { answer.insert("subscribe".into(), sub.into()); }
            let mut text = serde_json::Value::Object(answer).to_string();
            if let Some(data) = data {
                text.pop();
                text.push_str(&format!(",\"data\":{data}}}"));
            }
            let _ = parse_connect(text.as_bytes());
            let _ = parse_publish(text.as_bytes());
        }
    }
}
