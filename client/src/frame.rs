//! The client protocol as plain data: parse client frames, encode server frames, in both
//! flavours (JSON text and protobuf bytes), with no socket in sight.
//!
//! ```text
//!   bytes of one WebSocket message / TCP frame
//!        │ ClientFrame::parse_json | parse_proto       (never panics; ParseError has a code)
//!        ▼
//!   ClientFrame { Subscribe | Unsubscribe | Publish | Ping | Auth }   ── topics already validated
//!        ...
//!   ServerFrame { Ack | Authenticated | Error | Message | Pong }
//!        │ encode_json | encode_proto
//!        ▼
//!   bytes of one WebSocket message / TCP frame
//! ```
//!
//! Both directions are implemented for both sides (the gateway parses client frames and
//! encodes server frames; [`crate::Client`], tests and benchmarks do the opposite), so every
//! codec round trips and is property-tested.
//!
//! JSON `data` is kept as the raw text the client sent (validated, never re-serialised), so
//! subscribers see exactly what was published. A JSON subscriber of a binary payload gets
//! `"data":"<base64>","encoding":"base64"`; a protobuf subscriber of a JSON payload gets the
//! JSON text's bytes with `kind = PAYLOAD_KIND_JSON`.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use firetower_proto::client as pb;
use firetower_proto::{validate_topic, TopicError};
use prost::Message as _;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::payload::Payload;

/// Which encoding a connection speaks, chosen by WebSocket subprotocol (raw TCP is always
/// protobuf).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// `firetower.json`: one JSON object per text message.
    Json,
    /// `firetower.proto`: one protobuf frame per binary message.
    Proto,
}

impl Flavour {
    /// The WebSocket subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Flavour::Json => "firetower.json",
            Flavour::Proto => "firetower.proto",
        }
    }

    /// The flavour of a subprotocol name, if it is one of ours.
    pub fn from_subprotocol(name: &str) -> Option<Flavour> {
        match name {
            "firetower.json" => Some(Flavour::Json),
            "firetower.proto" => Some(Flavour::Proto),
            _ => None,
        }
    }
}

/// A request from a client. Topics are validated names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Subscribe to topics; acked once every one is committed in the cluster.
    Subscribe {
        /// Correlation number.
        id: u64,
        /// At least one topic.
        topics: Vec<Arc<str>>,
        /// History topics to recover, each from the position the client last processed.
        recover: Vec<(Arc<str>, Position)>,
        /// Also send the topics' join and leave events.
        join_leave: bool,
    },
    /// Read a history topic's newest kept messages.
    History {
        /// Correlation number.
        id: u64,
        /// The topic.
        topic: Arc<str>,
        /// At most this many (0: the gateway's default).
        limit: u32,
    },
    /// Who is present on a topic.
    Presence {
        /// Correlation number.
        id: u64,
        /// The topic.
        topic: Arc<str>,
    },
    /// Unsubscribe from topics.
    Unsubscribe {
        /// Correlation number.
        id: u64,
        /// At least one topic.
        topics: Vec<Arc<str>>,
    },
    /// Publish to a topic; acked once the topic's leader ordered it.
    Publish {
        /// Correlation number.
        id: u64,
        /// Where to publish.
        topic: Arc<str>,
        /// What to publish.
        payload: Payload,
    },
    /// Liveness check; answered with a pong.
    Ping {
        /// Correlation number.
        id: u64,
    },
    /// Authenticate with a token (the first frame, when the token did not come with the
    /// upgrade request), or refresh it (a new token for the same user).
    Auth {
        /// Correlation number.
        id: u64,
        /// The token (a JWT).
        token: String,
    },
}

impl ClientFrame {
    /// The request's correlation number.
    pub fn id(&self) -> u64 {
        match self {
            ClientFrame::Subscribe { id, .. }
            | ClientFrame::Unsubscribe { id, .. }
            | ClientFrame::Publish { id, .. }
            | ClientFrame::Ping { id }
            | ClientFrame::Auth { id, .. }
            | ClientFrame::History { id, .. }
            | ClientFrame::Presence { id, .. } => *id,
        }
    }

    /// A plain subscribe (no recovery, no join and leave events).
    pub fn subscribe(id: u64, topics: Vec<Arc<str>>) -> ClientFrame {
        ClientFrame::Subscribe {
            id,
            topics,
            recover: Vec::new(),
            join_leave: false,
        }
    }
}

/// Where a history topic's message sits: the topic's epoch and the message's offset in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// Changes only when the topic's history was lost.
    pub epoch: Arc<str>,
    /// 1, 2, 3, ... within the epoch.
    pub offset: u64,
}

/// One kept message of a [`ServerFrame::History`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    /// What was published.
    pub payload: Payload,
    /// The term of the entry that stored it.
    pub term: u64,
    /// Its offset (also its seq).
    pub offset: u64,
}

/// A frame the gateway sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// The request `id` took effect.
    Ack {
        /// The request's correlation number.
        id: u64,
    },
    /// A request failed, or the connection misbehaved (`id` is `None` when no request could be
    /// identified).
    Error {
        /// The request's correlation number, when known.
        id: Option<u64>,
        /// snake_case error code.
        code: String,
        /// Human text: what happened and what to do.
        message: String,
    },
    /// A message published to a subscribed topic.
    Message {
        /// The topic.
        topic: Arc<str>,
        /// What was published.
        payload: Payload,
        /// Leader term.
        term: u64,
        /// Per-topic sequence number.
        seq: u64,
        /// History topics: the topic's epoch and the message's offset.
        position: Option<Position>,
    },
    /// A subscribe with `recover` took effect: per recovered topic, whether every missed
    /// message follows (JSON: an `ack` with `recovered`).
    Subscribed {
        /// The request's correlation number.
        id: u64,
        /// `(topic, recovered)` for each topic named in `recover`.
        recovered: Vec<(Arc<str>, bool)>,
    },
    /// A publish was ordered (JSON: an `ack` with `term`, `seq`, and for history topics
    /// `offset` and `epoch`).
    Published {
        /// The request's correlation number.
        id: u64,
        /// Leader term.
        term: u64,
        /// Per-topic sequence number (0: no subscriber anywhere).
        seq: u64,
        /// History topics: where it was stored.
        position: Option<Position>,
    },
    /// The answer to a `history` request.
    History {
        /// The request's correlation number.
        id: u64,
        /// The topic.
        topic: Arc<str>,
        /// The topic's epoch (empty when nothing is kept).
        epoch: Arc<str>,
        /// The newest offset of the epoch (0: none).
        offset: u64,
        /// The messages, oldest first.
        messages: Vec<HistoryItem>,
    },
    /// The gateway dropped `dropped` messages of `topic` for this connection.
    Gap {
        /// The topic.
        topic: Arc<str>,
        /// How many.
        dropped: u64,
    },
    /// The answer to a `presence` request.
    Presence {
        /// The request's correlation number.
        id: u64,
        /// The topic.
        topic: Arc<str>,
        /// `(user, connections)`, sorted by user.
        users: Vec<(String, u32)>,
    },
    /// A user joined (its first connection subscribed) or left (its last one left) a topic.
    PresenceEvent {
        /// The topic.
        topic: Arc<str>,
        /// The user.
        user: String,
        /// True for a join.
        joined: bool,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's correlation number.
        id: u64,
    },
    /// The `auth` request `id` took effect: the connection acts as `user` (JSON: an `ack`
    /// with a `user` field).
    Authenticated {
        /// The request's correlation number.
        id: u64,
        /// The user id the token names.
        user: String,
    },
}

impl ServerFrame {
    /// An error frame.
    pub fn error(id: Option<u64>, code: &str, message: impl Into<String>) -> ServerFrame {
        ServerFrame::Error {
            id,
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// Why a client frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Not JSON, or not a JSON object.
    #[error("frame is not a JSON object: {0}")]
    InvalidJson(String),
    /// Not a protobuf `ClientFrame`.
    #[error("frame is not a protobuf firetower.client.v1.ClientFrame: {0}")]
    InvalidProtobuf(String),
    /// `op` names no operation.
    #[error("unknown op {0:?}; expected subscribe, unsubscribe, publish or ping")]
    UnknownOp(String),
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong type or an unusable value.
    #[error("field `{field}` {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A topic name is refused.
    #[error("invalid topic {topic:?}: {error}")]
    InvalidTopic {
        /// The name (cut to 64 characters).
        topic: String,
        /// Why.
        error: TopicError,
    },
}

impl ProtocolError {
    /// The snake_case code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::InvalidJson(_) => "invalid_json",
            ProtocolError::InvalidProtobuf(_) => "invalid_protobuf",
            ProtocolError::UnknownOp(_) => "unknown_op",
            ProtocolError::MissingField(_) => "missing_field",
            ProtocolError::InvalidField { .. } => "invalid_field",
            ProtocolError::InvalidTopic { error, .. } => error.code(),
        }
    }
}

/// A refused client frame, with the request id when it could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ParseError {
    /// The request's correlation number, when it could be read.
    pub id: Option<u64>,
    /// What is wrong.
    pub error: ProtocolError,
}

impl ParseError {
    fn new(id: Option<u64>, error: ProtocolError) -> ParseError {
        ParseError { id, error }
    }

    /// The error frame to send back.
    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::error(self.id, self.error.code(), self.error.to_string())
    }
}

/// Fields of a JSON frame, each kept raw so a wrong type gets a precise error instead of one
/// generic serde message.
#[derive(Deserialize)]
struct JsonFields<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    op: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    topics: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    topic: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    code: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    message: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    encoding: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    term: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    seq: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    token: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    user: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    recover: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    join_leave: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    limit: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    recovered: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    offset: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    epoch: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    users: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    messages: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    dropped: Option<&'a RawValue>,
}

/// `recover` of a JSON subscribe: `{"topic": {"epoch": "E", "offset": N}, ...}`.
fn recover_map(raw: &RawValue) -> Result<Vec<(Arc<str>, Position)>, ProtocolError> {
    #[derive(Deserialize)]
    struct At {
        epoch: String,
        offset: u64,
    }
    let bad = ProtocolError::InvalidField {
        field: "recover",
        reason: "must map topics to {\"epoch\": string, \"offset\": non-negative integer}",
    };
    let map: std::collections::BTreeMap<String, At> =
        serde_json::from_str(raw.get()).map_err(|_| bad.clone())?;
    if map.len() > MAX_RECOVER_TOPICS {
        return Err(ProtocolError::InvalidField {
            field: "recover",
            reason: "names more topics than a subscribe may",
        });
    }
    map.into_iter()
        .map(|(t, at)| {
            if at.epoch.len() > 64 {
                return Err(bad.clone());
            }
            Ok((
                topic(t)?,
                Position {
                    epoch: Arc::from(at.epoch),
                    offset: at.offset,
                },
            ))
        })
        .collect()
}

/// Most topics one `recover` may name.
pub const MAX_RECOVER_TOPICS: usize = 1_000;

fn json_position(
    offset: Option<&RawValue>,
    epoch: Option<&RawValue>,
) -> Result<Option<Position>, ProtocolError> {
    match (offset, epoch) {
        (Some(offset), Some(epoch)) => Ok(position_of(
            json_u64(offset, "offset")?,
            json_string(epoch, "epoch")?,
        )),
        _ => Ok(None),
    }
}

fn json_bool(raw: &RawValue, name: &'static str) -> Result<bool, ProtocolError> {
    serde_json::from_str(raw.get()).map_err(|_| ProtocolError::InvalidField {
        field: name,
        reason: "must be true or false",
    })
}

/// A present field is `Some`, even when it is `null` (serde's `Option` would say `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

fn json_fields(text: &[u8]) -> Result<JsonFields<'_>, ParseError> {
    // serde would also read a struct from an array, positionally: frames are objects only.
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ParseError::new(
            None,
            ProtocolError::InvalidJson("expected a JSON object".into()),
        ));
    }
    serde_json::from_slice(text)
        .map_err(|e| ParseError::new(None, ProtocolError::InvalidJson(e.to_string())))
}

fn required<'a>(
    field: Option<&'a RawValue>,
    name: &'static str,
) -> Result<&'a RawValue, ProtocolError> {
    field.ok_or(ProtocolError::MissingField(name))
}

fn json_u64(raw: &RawValue, name: &'static str) -> Result<u64, ProtocolError> {
    serde_json::from_str(raw.get()).map_err(|_| ProtocolError::InvalidField {
        field: name,
        reason: "must be a non-negative integer",
    })
}

fn json_string(raw: &RawValue, name: &'static str) -> Result<String, ProtocolError> {
    serde_json::from_str(raw.get()).map_err(|_| ProtocolError::InvalidField {
        field: name,
        reason: "must be a string",
    })
}

fn topic(name: String) -> Result<Arc<str>, ProtocolError> {
    match validate_topic(&name) {
        Ok(()) => Ok(Arc::from(name)),
        Err(error) => Err(ProtocolError::InvalidTopic {
            topic: name.chars().take(64).collect(),
            error,
        }),
    }
}

/// The longest token accepted, in bytes: far above any real JWT, far below the frame limit.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

fn token(token: String) -> Result<String, ProtocolError> {
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(ProtocolError::InvalidField {
            field: "token",
            reason: "must be a non-empty string of at most 16 KiB",
        });
    }
    Ok(token)
}

fn topic_list(names: Vec<String>) -> Result<Vec<Arc<str>>, ProtocolError> {
    if names.is_empty() {
        return Err(ProtocolError::InvalidField {
            field: "topics",
            reason: "must name at least one topic",
        });
    }
    names.into_iter().map(topic).collect()
}

impl ClientFrame {
    /// Parse one JSON frame (the text of one WebSocket text message).
    pub fn parse_json(text: &[u8]) -> Result<ClientFrame, ParseError> {
        let f = json_fields(text)?;
        // The id first, so that every later error can echo it.
        let id = match f.id {
            Some(raw) => Some(json_u64(raw, "id").map_err(|e| ParseError::new(None, e))?),
            None => None,
        };
        let fail = |e| ParseError::new(id, e);
        let id = id.unwrap_or(0);
        let op = json_string(required(f.op, "op").map_err(fail)?, "op").map_err(fail)?;
        let topics = || -> Result<Vec<Arc<str>>, ProtocolError> {
            let raw = required(f.topics, "topics")?;
            let names: Vec<String> =
                serde_json::from_str(raw.get()).map_err(|_| ProtocolError::InvalidField {
                    field: "topics",
                    reason: "must be an array of strings",
                })?;
            topic_list(names)
        };
        match op.as_str() {
            "subscribe" => {
                let topics = topics().map_err(fail)?;
                let recover = match f.recover {
                    Some(raw) => recover_map(raw).map_err(fail)?,
                    None => Vec::new(),
                };
                let join_leave = match f.join_leave {
                    Some(raw) => json_bool(raw, "join_leave").map_err(fail)?,
                    None => false,
                };
                Ok(ClientFrame::Subscribe {
                    id,
                    topics,
                    recover,
                    join_leave,
                })
            }
            "history" | "presence" => {
                let name = json_string(required(f.topic, "topic").map_err(fail)?, "topic")
                    .map_err(fail)?;
                let topic = topic(name).map_err(fail)?;
                if op == "presence" {
                    return Ok(ClientFrame::Presence { id, topic });
                }
                let limit = match f.limit {
                    Some(raw) => json_u64(raw, "limit").map_err(fail)?,
                    None => 0,
                };
                Ok(ClientFrame::History {
                    id,
                    topic,
                    limit: u32::try_from(limit).unwrap_or(u32::MAX),
                })
            }
            "unsubscribe" => Ok(ClientFrame::Unsubscribe {
                id,
                topics: topics().map_err(fail)?,
            }),
            "publish" => {
                let name = json_string(required(f.topic, "topic").map_err(fail)?, "topic")
                    .map_err(fail)?;
                let topic = topic(name).map_err(fail)?;
                let data = required(f.data, "data").map_err(fail)?;
                Ok(ClientFrame::Publish {
                    id,
                    topic,
                    payload: Payload::Json(Bytes::copy_from_slice(data.get().as_bytes())),
                })
            }
            "ping" => Ok(ClientFrame::Ping { id }),
            "auth" => Ok(ClientFrame::Auth {
                id,
                token: token(
                    json_string(required(f.token, "token").map_err(fail)?, "token")
                        .map_err(fail)?,
                )
                .map_err(fail)?,
            }),
            _ => Err(fail(ProtocolError::UnknownOp(
                op.chars().take(64).collect(),
            ))),
        }
    }

    /// Parse one protobuf `ClientFrame`.
    pub fn parse_proto(bytes: &[u8]) -> Result<ClientFrame, ParseError> {
        let frame = pb::ClientFrame::decode(bytes)
            .map_err(|e| ParseError::new(None, ProtocolError::InvalidProtobuf(e.to_string())))?;
        let id = frame.id;
        let fail = |e| ParseError::new(Some(id), e);
        match frame.op {
            None => Err(fail(ProtocolError::MissingField("op"))),
            Some(pb::client_frame::Op::Subscribe(s)) => {
                if s.recover.len() > MAX_RECOVER_TOPICS {
                    return Err(fail(ProtocolError::InvalidField {
                        field: "recover",
                        reason: "names more topics than a subscribe may",
                    }));
                }
                let mut recover = Vec::with_capacity(s.recover.len());
                for (t, at) in s.recover {
                    recover.push((
                        topic(t).map_err(fail)?,
                        Position {
                            epoch: Arc::from(at.epoch),
                            offset: at.offset,
                        },
                    ));
                }
                recover.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(ClientFrame::Subscribe {
                    id,
                    topics: topic_list(s.topics).map_err(fail)?,
                    recover,
                    join_leave: s.join_leave,
                })
            }
            Some(pb::client_frame::Op::History(h)) => Ok(ClientFrame::History {
                id,
                topic: topic(h.topic).map_err(fail)?,
                limit: h.limit,
            }),
            Some(pb::client_frame::Op::Presence(p)) => Ok(ClientFrame::Presence {
                id,
                topic: topic(p.topic).map_err(fail)?,
            }),
            Some(pb::client_frame::Op::Unsubscribe(s)) => Ok(ClientFrame::Unsubscribe {
                id,
                topics: topic_list(s.topics).map_err(fail)?,
            }),
            Some(pb::client_frame::Op::Publish(p)) => {
                let topic = topic(p.topic).map_err(fail)?;
                let payload = if p.kind == pb::PayloadKind::Json as i32 {
                    if serde_json::from_slice::<&RawValue>(&p.data).is_err() {
                        return Err(fail(ProtocolError::InvalidField {
                            field: "data",
                            reason: "must be JSON text when kind is PAYLOAD_KIND_JSON",
                        }));
                    }
                    Payload::Json(Bytes::from(p.data))
                } else {
                    Payload::Binary(Bytes::from(p.data))
                };
                Ok(ClientFrame::Publish { id, topic, payload })
            }
            Some(pb::client_frame::Op::Ping(_)) => Ok(ClientFrame::Ping { id }),
            Some(pb::client_frame::Op::Auth(a)) => Ok(ClientFrame::Auth {
                id,
                token: token(a.token).map_err(fail)?,
            }),
        }
    }

    /// Encode as a JSON frame (what a JSON client sends). A binary payload becomes a JSON
    /// string holding its base64, since the JSON flavour has no way to publish raw bytes.
    pub fn encode_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            ClientFrame::Subscribe { id, topics, .. } | ClientFrame::Unsubscribe { id, topics } => {
                let op = if matches!(self, ClientFrame::Subscribe { .. }) {
                    "subscribe"
                } else {
                    "unsubscribe"
                };
                out.extend_from_slice(b"{\"op\":\"");
                out.extend_from_slice(op.as_bytes());
                out.extend_from_slice(b"\",\"topics\":[");
                for (i, t) in topics.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    push_json_string(&mut out, t);
                }
                out.push(b']');
                if let ClientFrame::Subscribe {
                    recover,
                    join_leave,
                    ..
                } = self
                {
                    if !recover.is_empty() {
                        out.extend_from_slice(b",\"recover\":{");
                        for (i, (t, at)) in recover.iter().enumerate() {
                            if i > 0 {
                                out.push(b',');
                            }
                            push_json_string(&mut out, t);
                            out.extend_from_slice(b":{\"epoch\":");
                            push_json_string(&mut out, &at.epoch);
                            out.extend_from_slice(b",\"offset\":");
                            push_u64(&mut out, at.offset);
                            out.push(b'}');
                        }
                        out.push(b'}');
                    }
                    if *join_leave {
                        out.extend_from_slice(b",\"join_leave\":true");
                    }
                }
                out.extend_from_slice(b",\"id\":");
                push_u64(&mut out, *id);
            }
            ClientFrame::History { id, topic, limit } => {
                out.extend_from_slice(b"{\"op\":\"history\",\"topic\":");
                push_json_string(&mut out, topic);
                out.extend_from_slice(b",\"limit\":");
                push_u64(&mut out, u64::from(*limit));
                out.extend_from_slice(b",\"id\":");
                push_u64(&mut out, *id);
            }
            ClientFrame::Presence { id, topic } => {
                out.extend_from_slice(b"{\"op\":\"presence\",\"topic\":");
                push_json_string(&mut out, topic);
                out.extend_from_slice(b",\"id\":");
                push_u64(&mut out, *id);
            }
            ClientFrame::Publish { id, topic, payload } => {
                out.extend_from_slice(b"{\"op\":\"publish\",\"topic\":");
                push_json_string(&mut out, topic);
                out.extend_from_slice(b",\"data\":");
                push_json_data(&mut out, payload);
                out.extend_from_slice(b",\"id\":");
                push_u64(&mut out, *id);
            }
            ClientFrame::Ping { id } => {
                out.extend_from_slice(b"{\"op\":\"ping\",\"id\":");
                push_u64(&mut out, *id);
            }
            ClientFrame::Auth { id, token } => {
                out.extend_from_slice(b"{\"op\":\"auth\",\"token\":");
                push_json_string(&mut out, token);
                out.extend_from_slice(b",\"id\":");
                push_u64(&mut out, *id);
            }
        }
        out.push(b'}');
        out
    }

    /// Encode as a protobuf `ClientFrame`.
    pub fn encode_proto(&self) -> Vec<u8> {
        use pb::client_frame::Op;
        let (id, op) = match self {
            ClientFrame::Subscribe {
                id,
                topics,
                recover,
                join_leave,
            } => (
                *id,
                Op::Subscribe(pb::Subscribe {
                    topics: topics.iter().map(|t| t.to_string()).collect(),
                    recover: recover
                        .iter()
                        .map(|(t, at)| {
                            (
                                t.to_string(),
                                pb::Position {
                                    epoch: at.epoch.to_string(),
                                    offset: at.offset,
                                },
                            )
                        })
                        .collect(),
                    join_leave: *join_leave,
                }),
            ),
            ClientFrame::History { id, topic, limit } => (
                *id,
                Op::History(pb::HistoryRequest {
                    topic: topic.to_string(),
                    limit: *limit,
                }),
            ),
            ClientFrame::Presence { id, topic } => (
                *id,
                Op::Presence(pb::PresenceRequest {
                    topic: topic.to_string(),
                }),
            ),
            ClientFrame::Unsubscribe { id, topics } => (
                *id,
                Op::Unsubscribe(pb::Unsubscribe {
                    topics: topics.iter().map(|t| t.to_string()).collect(),
                }),
            ),
            ClientFrame::Publish { id, topic, payload } => (
                *id,
                Op::Publish(pb::Publish {
                    topic: topic.to_string(),
                    data: payload.bytes().to_vec(),
                    kind: payload_kind(payload) as i32,
                }),
            ),
            ClientFrame::Ping { id } => (*id, Op::Ping(pb::Ping {})),
            ClientFrame::Auth { id, token } => (
                *id,
                Op::Auth(pb::Auth {
                    token: token.clone(),
                }),
            ),
        };
        pb::ClientFrame { id, op: Some(op) }.encode_to_vec()
    }
}

fn payload_kind(payload: &Payload) -> pb::PayloadKind {
    match payload {
        Payload::Json(_) => pb::PayloadKind::Json,
        Payload::Binary(_) => pb::PayloadKind::Binary,
    }
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(n.to_string().as_bytes());
}

fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail: serde_json's only errors come from the writer or
    // from non-string map keys.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_json_data(out: &mut Vec<u8>, payload: &Payload) {
    match payload {
        Payload::Json(text) => out.extend_from_slice(text),
        Payload::Binary(bytes) => {
            out.push(b'"');
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .as_bytes(),
            );
            out.push(b'"');
        }
    }
}

/// `"topic":..,"data":..[,"encoding":"base64"],"term":..,"seq":..[,"offset":..,"epoch":..]`
fn push_message_fields(
    out: &mut Vec<u8>,
    topic: &str,
    payload: &Payload,
    term: u64,
    seq: u64,
    position: Option<&Position>,
) {
    out.extend_from_slice(b"\"topic\":");
    push_json_string(out, topic);
    out.extend_from_slice(b",\"data\":");
    push_json_data(out, payload);
    if matches!(payload, Payload::Binary(_)) {
        out.extend_from_slice(b",\"encoding\":\"base64\"");
    }
    out.extend_from_slice(b",\"term\":");
    push_u64(out, term);
    out.extend_from_slice(b",\"seq\":");
    push_u64(out, seq);
    push_position(out, position);
}

fn push_position(out: &mut Vec<u8>, position: Option<&Position>) {
    if let Some(at) = position {
        out.extend_from_slice(b",\"offset\":");
        push_u64(out, at.offset);
        out.extend_from_slice(b",\"epoch\":");
        push_json_string(out, &at.epoch);
    }
}

fn pb_message(
    topic: &str,
    payload: &Payload,
    term: u64,
    seq: u64,
    position: Option<&Position>,
) -> pb::Message {
    pb::Message {
        topic: topic.to_string(),
        data: payload.bytes().to_vec(),
        term,
        seq,
        kind: payload_kind(payload) as i32,
        offset: position.map_or(0, |p| p.offset),
        epoch: position.map(|p| p.epoch.to_string()).unwrap_or_default(),
    }
}

fn position_of(offset: u64, epoch: String) -> Option<Position> {
    (offset > 0 || !epoch.is_empty()).then(|| Position {
        epoch: Arc::from(epoch),
        offset,
    })
}

fn payload_of(kind: i32, data: Vec<u8>) -> Payload {
    if kind == pb::PayloadKind::Json as i32 {
        Payload::Json(Bytes::from(data))
    } else {
        Payload::Binary(Bytes::from(data))
    }
}

impl ServerFrame {
    /// Encode as a JSON frame (the text of one WebSocket text message).
    pub fn encode_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            ServerFrame::Ack { id } => {
                out.extend_from_slice(b"{\"op\":\"ack\",\"id\":");
                push_u64(&mut out, *id);
            }
            ServerFrame::Pong { id } => {
                out.extend_from_slice(b"{\"op\":\"pong\",\"id\":");
                push_u64(&mut out, *id);
            }
            ServerFrame::Authenticated { id, user } => {
                out.extend_from_slice(b"{\"op\":\"ack\",\"id\":");
                push_u64(&mut out, *id);
                out.extend_from_slice(b",\"user\":");
                push_json_string(&mut out, user);
            }
            ServerFrame::Error { id, code, message } => {
                out.extend_from_slice(b"{\"op\":\"error\",");
                if let Some(id) = id {
                    out.extend_from_slice(b"\"id\":");
                    push_u64(&mut out, *id);
                    out.push(b',');
                }
                out.extend_from_slice(b"\"code\":");
                push_json_string(&mut out, code);
                out.extend_from_slice(b",\"message\":");
                push_json_string(&mut out, message);
            }
            ServerFrame::Message {
                topic,
                payload,
                term,
                seq,
                position,
            } => {
                out.reserve(payload.len() + topic.len() + 64);
                out.extend_from_slice(b"{\"op\":\"message\",");
                push_message_fields(&mut out, topic, payload, *term, *seq, position.as_ref());
            }
            ServerFrame::Subscribed { id, recovered } => {
                out.extend_from_slice(b"{\"op\":\"ack\",\"id\":");
                push_u64(&mut out, *id);
                out.extend_from_slice(b",\"recovered\":{");
                for (i, (t, ok)) in recovered.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    push_json_string(&mut out, t);
                    out.extend_from_slice(if *ok { b":true" } else { b":false" });
                }
                out.push(b'}');
            }
            ServerFrame::Published {
                id,
                term,
                seq,
                position,
            } => {
                out.extend_from_slice(b"{\"op\":\"ack\",\"id\":");
                push_u64(&mut out, *id);
                out.extend_from_slice(b",\"term\":");
                push_u64(&mut out, *term);
                out.extend_from_slice(b",\"seq\":");
                push_u64(&mut out, *seq);
                push_position(&mut out, position.as_ref());
            }
            ServerFrame::History {
                id,
                topic,
                epoch,
                offset,
                messages,
            } => {
                out.extend_from_slice(b"{\"op\":\"history\",\"id\":");
                push_u64(&mut out, *id);
                out.extend_from_slice(b",\"topic\":");
                push_json_string(&mut out, topic);
                out.extend_from_slice(b",\"epoch\":");
                push_json_string(&mut out, epoch);
                out.extend_from_slice(b",\"offset\":");
                push_u64(&mut out, *offset);
                out.extend_from_slice(b",\"messages\":[");
                for (i, m) in messages.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b'{');
                    let at = Position {
                        epoch: epoch.clone(),
                        offset: m.offset,
                    };
                    push_message_fields(&mut out, topic, &m.payload, m.term, m.offset, Some(&at));
                    out.push(b'}');
                }
                out.push(b']');
            }
            ServerFrame::Gap { topic, dropped } => {
                out.extend_from_slice(b"{\"op\":\"gap\",\"topic\":");
                push_json_string(&mut out, topic);
                out.extend_from_slice(b",\"dropped\":");
                push_u64(&mut out, *dropped);
            }
            ServerFrame::Presence { id, topic, users } => {
                out.extend_from_slice(b"{\"op\":\"presence\",\"id\":");
                push_u64(&mut out, *id);
                out.extend_from_slice(b",\"topic\":");
                push_json_string(&mut out, topic);
                out.extend_from_slice(b",\"users\":[");
                for (i, (user, n)) in users.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(b"{\"user\":");
                    push_json_string(&mut out, user);
                    out.extend_from_slice(b",\"connections\":");
                    push_u64(&mut out, u64::from(*n));
                    out.push(b'}');
                }
                out.push(b']');
            }
            ServerFrame::PresenceEvent {
                topic,
                user,
                joined,
            } => {
                out.extend_from_slice(if *joined {
                    b"{\"op\":\"join\",\"topic\":"
                } else {
                    b"{\"op\":\"leave\",\"topic\":"
                });
                push_json_string(&mut out, topic);
                out.extend_from_slice(b",\"user\":");
                push_json_string(&mut out, user);
            }
        }
        out.push(b'}');
        out
    }

    /// Encode as a protobuf `ServerFrame`.
    pub fn encode_proto(&self) -> Vec<u8> {
        use pb::server_frame::Kind;
        let (id, kind) = match self {
            ServerFrame::Ack { id } => (Some(*id), Kind::Ack(pb::Ack::default())),
            ServerFrame::Authenticated { id, user } => (
                Some(*id),
                Kind::Ack(pb::Ack {
                    user: user.clone(),
                    ..pb::Ack::default()
                }),
            ),
            ServerFrame::Subscribed { id, recovered } => (
                Some(*id),
                Kind::Ack(pb::Ack {
                    recovered: recovered
                        .iter()
                        .map(|(t, ok)| (t.to_string(), *ok))
                        .collect(),
                    ..pb::Ack::default()
                }),
            ),
            ServerFrame::Published {
                id,
                term,
                seq,
                position,
            } => (
                Some(*id),
                Kind::Ack(pb::Ack {
                    term: *term,
                    seq: *seq,
                    offset: position.as_ref().map_or(0, |p| p.offset),
                    epoch: position
                        .as_ref()
                        .map(|p| p.epoch.to_string())
                        .unwrap_or_default(),
                    ..pb::Ack::default()
                }),
            ),
            ServerFrame::History {
                id,
                topic,
                epoch,
                offset,
                messages,
            } => (
                Some(*id),
                Kind::History(pb::History {
                    topic: topic.to_string(),
                    epoch: epoch.to_string(),
                    offset: *offset,
                    messages: messages
                        .iter()
                        .map(|m| {
                            let at = Position {
                                epoch: epoch.clone(),
                                offset: m.offset,
                            };
                            pb_message(topic, &m.payload, m.term, m.offset, Some(&at))
                        })
                        .collect(),
                }),
            ),
            ServerFrame::Gap { topic, dropped } => (
                None,
                Kind::Gap(pb::Gap {
                    topic: topic.to_string(),
                    dropped: *dropped,
                }),
            ),
            ServerFrame::Presence { id, topic, users } => (
                Some(*id),
                Kind::Presence(pb::Presence {
                    topic: topic.to_string(),
                    users: users
                        .iter()
                        .map(|(user, connections)| pb::PresenceUser {
                            user: user.clone(),
                            connections: *connections,
                        })
                        .collect(),
                }),
            ),
            ServerFrame::PresenceEvent {
                topic,
                user,
                joined,
            } => (
                None,
                Kind::PresenceEvent(pb::PresenceEvent {
                    topic: topic.to_string(),
                    user: user.clone(),
                    joined: *joined,
                }),
            ),
            ServerFrame::Pong { id } => (Some(*id), Kind::Pong(pb::Pong {})),
            ServerFrame::Error { id, code, message } => (
                *id,
                Kind::Error(pb::Error {
                    code: code.clone(),
                    message: message.clone(),
                }),
            ),
            ServerFrame::Message {
                topic,
                payload,
                term,
                seq,
                position,
            } => (
                None,
                Kind::Message(pb_message(topic, payload, *term, *seq, position.as_ref())),
            ),
        };
        pb::ServerFrame {
            id,
            kind: Some(kind),
        }
        .encode_to_vec()
    }

    /// Parse a JSON server frame (what a JSON client receives).
    pub fn parse_json(text: &[u8]) -> Result<ServerFrame, ParseError> {
        let f = json_fields(text)?;
        let id = match f.id {
            Some(raw) => Some(json_u64(raw, "id").map_err(|e| ParseError::new(None, e))?),
            None => None,
        };
        let fail = |e| ParseError::new(id, e);
        let op = json_string(required(f.op, "op").map_err(fail)?, "op").map_err(fail)?;
        let need_id = || id.ok_or(ProtocolError::MissingField("id"));
        match op.as_str() {
            "ack" => {
                let id = need_id().map_err(fail)?;
                if let Some(user) = f.user {
                    return Ok(ServerFrame::Authenticated {
                        id,
                        user: json_string(user, "user").map_err(fail)?,
                    });
                }
                if let Some(raw) = f.recovered.filter(|r| r.get().trim() != "{}") {
                    let map: std::collections::BTreeMap<String, bool> =
                        serde_json::from_str(raw.get())
                            .map_err(|_| ProtocolError::InvalidField {
                                field: "recovered",
                                reason: "must map topics to true or false",
                            })
                            .map_err(fail)?;
                    return Ok(ServerFrame::Subscribed {
                        id,
                        recovered: map.into_iter().map(|(t, ok)| (Arc::from(t), ok)).collect(),
                    });
                }
                if let (Some(term), Some(seq)) = (f.term, f.seq) {
                    // Terms start at 1: an ack with term 0 orders nothing (a plain ack).
                    let term = json_u64(term, "term").map_err(fail)?;
                    if term > 0 {
                        return Ok(ServerFrame::Published {
                            id,
                            term,
                            seq: json_u64(seq, "seq").map_err(fail)?,
                            position: json_position(f.offset, f.epoch).map_err(fail)?,
                        });
                    }
                }
                Ok(ServerFrame::Ack { id })
            }
            "gap" => Ok(ServerFrame::Gap {
                topic: Arc::from(
                    json_string(required(f.topic, "topic").map_err(fail)?, "topic")
                        .map_err(fail)?,
                ),
                dropped: json_u64(required(f.dropped, "dropped").map_err(fail)?, "dropped")
                    .map_err(fail)?,
            }),
            "join" | "leave" => Ok(ServerFrame::PresenceEvent {
                topic: Arc::from(
                    json_string(required(f.topic, "topic").map_err(fail)?, "topic")
                        .map_err(fail)?,
                ),
                user: json_string(required(f.user, "user").map_err(fail)?, "user").map_err(fail)?,
                joined: op == "join",
            }),
            "presence" => {
                #[derive(Deserialize)]
                struct User {
                    user: String,
                    connections: u32,
                }
                let users: Vec<User> =
                    serde_json::from_str(required(f.users, "users").map_err(fail)?.get())
                        .map_err(|_| ProtocolError::InvalidField {
                            field: "users",
                            reason: "must be a list of {user, connections}",
                        })
                        .map_err(fail)?;
                Ok(ServerFrame::Presence {
                    id: need_id().map_err(fail)?,
                    topic: Arc::from(
                        json_string(required(f.topic, "topic").map_err(fail)?, "topic")
                            .map_err(fail)?,
                    ),
                    users: users.into_iter().map(|u| (u.user, u.connections)).collect(),
                })
            }
            "history" => {
                let raw: Vec<&RawValue> =
                    serde_json::from_str(required(f.messages, "messages").map_err(fail)?.get())
                        .map_err(|_| ProtocolError::InvalidField {
                            field: "messages",
                            reason: "must be a list of messages",
                        })
                        .map_err(fail)?;
                let mut messages = Vec::with_capacity(raw.len());
                for m in raw {
                    match ServerFrame::parse_message(json_fields(m.get().as_bytes())?)
                        .map_err(fail)?
                    {
                        ServerFrame::Message {
                            payload, term, seq, ..
                        } => messages.push(HistoryItem {
                            payload,
                            term,
                            offset: seq,
                        }),
                        _ => unreachable!("parse_message makes messages"),
                    }
                }
                Ok(ServerFrame::History {
                    id: need_id().map_err(fail)?,
                    topic: Arc::from(
                        json_string(required(f.topic, "topic").map_err(fail)?, "topic")
                            .map_err(fail)?,
                    ),
                    epoch: Arc::from(
                        json_string(required(f.epoch, "epoch").map_err(fail)?, "epoch")
                            .map_err(fail)?,
                    ),
                    offset: json_u64(required(f.offset, "offset").map_err(fail)?, "offset")
                        .map_err(fail)?,
                    messages,
                })
            }
            "pong" => Ok(ServerFrame::Pong {
                id: need_id().map_err(fail)?,
            }),
            "error" => Ok(ServerFrame::Error {
                id,
                code: json_string(required(f.code, "code").map_err(fail)?, "code").map_err(fail)?,
                message: json_string(required(f.message, "message").map_err(fail)?, "message")
                    .map_err(fail)?,
            }),
            "message" => ServerFrame::parse_message(f).map_err(fail),
            _ => Err(fail(ProtocolError::UnknownOp(
                op.chars().take(64).collect(),
            ))),
        }
    }

    /// The fields of a JSON `message` (also each element of a `history` answer).
    fn parse_message(f: JsonFields<'_>) -> Result<ServerFrame, ProtocolError> {
        let topic = json_string(required(f.topic, "topic")?, "topic")?;
        let data = required(f.data, "data")?;
        let payload = match f.encoding {
            None => Payload::Json(Bytes::copy_from_slice(data.get().as_bytes())),
            Some(enc) => {
                let enc = json_string(enc, "encoding")?;
                let text = json_string(data, "data")?;
                let decoded = (enc == "base64")
                    .then(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
                    .flatten()
                    .ok_or(ProtocolError::InvalidField {
                        field: "data",
                        reason: "must be base64 when encoding is \"base64\"",
                    })?;
                Payload::Binary(Bytes::from(decoded))
            }
        };
        Ok(ServerFrame::Message {
            topic: Arc::from(topic),
            payload,
            term: json_u64(required(f.term, "term")?, "term")?,
            seq: json_u64(required(f.seq, "seq")?, "seq")?,
            position: json_position(f.offset, f.epoch)?,
        })
    }

    /// Parse a protobuf server frame (what a protobuf client receives).
    pub fn parse_proto(bytes: &[u8]) -> Result<ServerFrame, ParseError> {
        use pb::server_frame::Kind;
        let frame = pb::ServerFrame::decode(bytes)
            .map_err(|e| ParseError::new(None, ProtocolError::InvalidProtobuf(e.to_string())))?;
        let id = frame.id;
        let fail = |e| ParseError::new(id, e);
        match frame.kind {
            None => Err(fail(ProtocolError::MissingField("kind"))),
            Some(Kind::Ack(a)) if !a.user.is_empty() => Ok(ServerFrame::Authenticated {
                id: id.unwrap_or(0),
                user: a.user,
            }),
            Some(Kind::Ack(a)) if !a.recovered.is_empty() => {
                let mut recovered: Vec<(Arc<str>, bool)> = a
                    .recovered
                    .into_iter()
                    .map(|(t, ok)| (Arc::from(t), ok))
                    .collect();
                recovered.sort();
                Ok(ServerFrame::Subscribed {
                    id: id.unwrap_or(0),
                    recovered,
                })
            }
            Some(Kind::Ack(a)) if a.term > 0 => Ok(ServerFrame::Published {
                id: id.unwrap_or(0),
                term: a.term,
                seq: a.seq,
                position: position_of(a.offset, a.epoch),
            }),
            Some(Kind::History(h)) => Ok(ServerFrame::History {
                id: id.unwrap_or(0),
                topic: Arc::from(h.topic),
                epoch: Arc::from(h.epoch),
                offset: h.offset,
                messages: h
                    .messages
                    .into_iter()
                    .map(|m| HistoryItem {
                        term: m.term,
                        offset: m.offset,
                        payload: payload_of(m.kind, m.data),
                    })
                    .collect(),
            }),
            Some(Kind::Gap(g)) => Ok(ServerFrame::Gap {
                topic: Arc::from(g.topic),
                dropped: g.dropped,
            }),
            Some(Kind::Presence(p)) => Ok(ServerFrame::Presence {
                id: id.unwrap_or(0),
                topic: Arc::from(p.topic),
                users: p
                    .users
                    .into_iter()
                    .map(|u| (u.user, u.connections))
                    .collect(),
            }),
            Some(Kind::PresenceEvent(e)) => Ok(ServerFrame::PresenceEvent {
                topic: Arc::from(e.topic),
                user: e.user,
                joined: e.joined,
            }),
            Some(Kind::Ack(_)) => Ok(ServerFrame::Ack {
                id: id.unwrap_or(0),
            }),
            Some(Kind::Pong(_)) => Ok(ServerFrame::Pong {
                id: id.unwrap_or(0),
            }),
            Some(Kind::Error(e)) => Ok(ServerFrame::Error {
                id,
                code: e.code,
                message: e.message,
            }),
            Some(Kind::Message(m)) => Ok(ServerFrame::Message {
                topic: Arc::from(m.topic),
                payload: payload_of(m.kind, m.data),
                term: m.term,
                seq: m.seq,
                position: position_of(m.offset, m.epoch),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<ClientFrame, ParseError> {
        ClientFrame::parse_json(text.as_bytes())
    }

    fn code(text: &str) -> (Option<u64>, &'static str) {
        let e = parse(text).unwrap_err();
        (e.id, e.error.code())
    }

    #[test]
    fn parses_the_documented_frames() {
        assert_eq!(
            parse(r#"{"op":"subscribe","topics":["room.1"],"id":1}"#).unwrap(),
            ClientFrame::subscribe(1, vec![Arc::from("room.1")])
        );
        assert_eq!(
            parse(
                r#"{"op":"subscribe","topics":["chat.1"],"recover":{"chat.1":{"epoch":"e","offset":41}},"id":5}"#
            )
            .unwrap(),
            ClientFrame::Subscribe {
                id: 5,
                topics: vec![Arc::from("chat.1")],
                recover: vec![(
                    Arc::from("chat.1"),
                    Position {
                        epoch: Arc::from("e"),
                        offset: 41
                    }
                )],
                join_leave: false,
            }
        );
        assert_eq!(
            parse(r#"{"op":"history","topic":"chat.1","limit":100,"id":6}"#).unwrap(),
            ClientFrame::History {
                id: 6,
                topic: Arc::from("chat.1"),
                limit: 100
            }
        );
        assert_eq!(
            parse(r#"{"op":"unsubscribe","topics":["room.1"],"id":2}"#).unwrap(),
            ClientFrame::Unsubscribe {
                id: 2,
                topics: vec![Arc::from("room.1")]
            }
        );
        assert_eq!(
            parse(r#"{"op":"publish","topic":"room.1","data": {"a" : [1, 2]},"id":3}"#).unwrap(),
            ClientFrame::Publish {
                id: 3,
                topic: Arc::from("room.1"),
                payload: Payload::Json(Bytes::from_static(br#"{"a" : [1, 2]}"#)),
            }
        );
        assert_eq!(
            parse(r#"{"op":"ping","id":4}"#).unwrap(),
            ClientFrame::Ping { id: 4 }
        );
        assert_eq!(
            parse(r#"{"op":"ping"}"#).unwrap(),
            ClientFrame::Ping { id: 0 }
        );
    }

    #[test]
    fn null_data_is_published_as_null() {
        let f = parse(r#"{"op":"publish","topic":"t","data":null,"id":3}"#).unwrap();
        assert!(
            matches!(f, ClientFrame::Publish { payload: Payload::Json(b), .. } if &b[..] == b"null")
        );
    }

    #[test]
    fn refusals_carry_a_code_and_the_id() {
        assert_eq!(code("{"), (None, "invalid_json"));
        assert_eq!(code("[1,2]"), (None, "invalid_json"));
        assert_eq!(code(r#"{"op":"fly","id":7}"#), (Some(7), "unknown_op"));
        assert_eq!(code(r#"{"id":7}"#), (Some(7), "missing_field"));
        assert_eq!(
            code(r#"{"op":"subscribe","id":7}"#),
            (Some(7), "missing_field")
        );
        assert_eq!(
            code(r#"{"op":"subscribe","topics":[],"id":7}"#),
            (Some(7), "invalid_field")
        );
        assert_eq!(
            code(r#"{"op":"subscribe","topics":"a","id":7}"#),
            (Some(7), "invalid_field")
        );
        assert_eq!(
            code(r#"{"op":"subscribe","topics":[""],"id":7}"#),
            (Some(7), "invalid_topic")
        );
        assert_eq!(
            code(r#"{"op":"subscribe","topics":["a\u0001"],"id":7}"#),
            (Some(7), "invalid_topic")
        );
        assert_eq!(
            code(r#"{"op":"publish","topic":"t","id":7}"#),
            (Some(7), "missing_field")
        );
        assert_eq!(code(r#"{"op":"ping","id":-1}"#), (None, "invalid_field"));
        assert_eq!(code(r#"{"op":1,"id":1}"#), (Some(1), "invalid_field"));
        let long = format!(
            r#"{{"op":"publish","topic":"{}","data":1,"id":9}}"#,
            "x".repeat(300)
        );
        assert_eq!(code(&long), (Some(9), "invalid_topic"));
    }

    #[test]
    fn encodes_the_documented_server_frames() {
        let text = |f: ServerFrame| String::from_utf8(f.encode_json()).unwrap();
        assert_eq!(text(ServerFrame::Ack { id: 1 }), r#"{"op":"ack","id":1}"#);
        assert_eq!(text(ServerFrame::Pong { id: 4 }), r#"{"op":"pong","id":4}"#);
        assert_eq!(
            text(ServerFrame::error(Some(1), "invalid_topic", "bad \"x\"")),
            r#"{"op":"error","id":1,"code":"invalid_topic","message":"bad \"x\""}"#
        );
        assert_eq!(
            text(ServerFrame::Message {
                topic: Arc::from("room.1"),
                payload: Payload::Json(Bytes::from_static(b"{\"a\":1}")),
                term: 3,
                seq: 42,
                position: None,
            }),
            r#"{"op":"message","topic":"room.1","data":{"a":1},"term":3,"seq":42}"#
        );
        assert_eq!(
            text(ServerFrame::Subscribed {
                id: 5,
                recovered: vec![(Arc::from("chat.1"), true)]
            }),
            r#"{"op":"ack","id":5,"recovered":{"chat.1":true}}"#
        );
        assert_eq!(
            text(ServerFrame::Gap {
                topic: Arc::from("room.1"),
                dropped: 3
            }),
            r#"{"op":"gap","topic":"room.1","dropped":3}"#
        );
        assert_eq!(
            text(ServerFrame::Message {
                topic: Arc::from("t"),
                payload: Payload::Binary(Bytes::from_static(b"\x00\x01")),
                term: 1,
                seq: 2,
                position: None,
            }),
            r#"{"op":"message","topic":"t","data":"AAE=","encoding":"base64","term":1,"seq":2}"#
        );
    }

    #[test]
    fn proto_json_kind_must_hold_json() {
        let frame = pb::ClientFrame {
            id: 5,
            op: Some(pb::client_frame::Op::Publish(pb::Publish {
                topic: "t".into(),
                data: b"{not json".to_vec(),
                kind: pb::PayloadKind::Json as i32,
            })),
        };
        let e = ClientFrame::parse_proto(&frame.encode_to_vec()).unwrap_err();
        assert_eq!((e.id, e.error.code()), (Some(5), "invalid_field"));
        let e = ClientFrame::parse_proto(&pb::ClientFrame { id: 6, op: None }.encode_to_vec())
            .unwrap_err();
        assert_eq!((e.id, e.error.code()), (Some(6), "missing_field"));
    }

    fn arb_topic() -> impl Strategy<Value = Arc<str>> {
        "[a-z0-9./_-]{1,20}".prop_map(Arc::from)
    }

    fn arb_json() -> impl Strategy<Value = Bytes> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
        .prop_map(|v| Bytes::from(v.to_string()))
    }

    fn arb_payload() -> impl Strategy<Value = Payload> {
        prop_oneof![
            arb_json().prop_map(Payload::Json),
            prop::collection::vec(any::<u8>(), 0..40).prop_map(|v| Payload::Binary(Bytes::from(v))),
        ]
    }

    fn arb_client_frame(json_only: bool) -> impl Strategy<Value = ClientFrame> {
        let payload = if json_only {
            arb_json().prop_map(Payload::Json).boxed()
        } else {
            arb_payload().boxed()
        };
        prop_oneof![
            (any::<u64>(), prop::collection::vec(arb_topic(), 1..5))
                .prop_map(|(id, topics)| ClientFrame::subscribe(id, topics)),
            (
                any::<u64>(),
                arb_topic(),
                "[a-z0-9-]{1,20}",
                any::<u64>(),
                any::<bool>()
            )
                .prop_map(|(id, topic, epoch, offset, join_leave)| {
                    ClientFrame::Subscribe {
                        id,
                        topics: vec![topic.clone()],
                        recover: vec![(
                            topic,
                            Position {
                                epoch: Arc::from(epoch),
                                offset,
                            },
                        )],
                        join_leave,
                    }
                }),
            (any::<u64>(), arb_topic(), any::<u32>())
                .prop_map(|(id, topic, limit)| ClientFrame::History { id, topic, limit }),
            (any::<u64>(), arb_topic()).prop_map(|(id, topic)| ClientFrame::Presence { id, topic }),
            (any::<u64>(), prop::collection::vec(arb_topic(), 1..5))
                .prop_map(|(id, topics)| ClientFrame::Unsubscribe { id, topics }),
            (any::<u64>(), arb_topic(), payload)
                .prop_map(|(id, topic, payload)| ClientFrame::Publish { id, topic, payload }),
            any::<u64>().prop_map(|id| ClientFrame::Ping { id }),
            (any::<u64>(), "[A-Za-z0-9._-]{1,60}")
                .prop_map(|(id, token)| ClientFrame::Auth { id, token }),
        ]
    }

    fn arb_server_frame() -> impl Strategy<Value = ServerFrame> {
        prop_oneof![
            any::<u64>().prop_map(|id| ServerFrame::Ack { id }),
            any::<u64>().prop_map(|id| ServerFrame::Pong { id }),
            (any::<u64>(), "[a-z0-9_-]{1,20}")
                .prop_map(|(id, user)| ServerFrame::Authenticated { id, user }),
            (any::<Option<u64>>(), "[a-z_]{1,20}", ".{0,30}")
                .prop_map(|(id, code, message)| ServerFrame::Error { id, code, message }),
            (arb_topic(), arb_payload(), any::<u64>(), any::<u64>()).prop_map(
                |(topic, payload, term, seq)| ServerFrame::Message {
                    topic,
                    payload,
                    term,
                    seq,
                    position: None,
                }
            ),
            (
                arb_topic(),
                arb_payload(),
                1u64..,
                1u64..,
                "[a-z0-9-]{1,20}"
            )
                .prop_map(|(topic, payload, term, offset, epoch)| {
                    ServerFrame::Message {
                        topic,
                        payload,
                        term,
                        seq: offset,
                        position: Some(Position {
                            epoch: Arc::from(epoch),
                            offset,
                        }),
                    }
                }),
            (
                any::<u64>(),
                prop::collection::btree_map(arb_topic(), any::<bool>(), 1..4)
            )
                .prop_map(|(id, m)| ServerFrame::Subscribed {
                    id,
                    recovered: m.into_iter().collect(),
                }),
            (
                any::<u64>(),
                1u64..,
                any::<u64>(),
                1u64..,
                "[a-z0-9-]{1,20}"
            )
                .prop_map(|(id, term, seq, offset, epoch)| ServerFrame::Published {
                    id,
                    term,
                    seq,
                    position: Some(Position {
                        epoch: Arc::from(epoch),
                        offset,
                    }),
                }),
            (
                any::<u64>(),
                arb_topic(),
                "[a-z0-9-]{1,20}",
                prop::collection::vec((arb_payload(), 1u64.., 1u64..), 0..3)
            )
                .prop_map(|(id, topic, epoch, items)| {
                    let offset = items.iter().map(|i| i.2).max().unwrap_or(0);
                    ServerFrame::History {
                        id,
                        topic,
                        epoch: Arc::from(epoch),
                        offset,
                        messages: items
                            .into_iter()
                            .map(|(payload, term, offset)| HistoryItem {
                                payload,
                                term,
                                offset,
                            })
                            .collect(),
                    }
                }),
            (arb_topic(), any::<u64>())
                .prop_map(|(topic, dropped)| ServerFrame::Gap { topic, dropped }),
            (
                any::<u64>(),
                arb_topic(),
                prop::collection::vec(("[a-z0-9]{1,10}", any::<u32>()), 0..3)
            )
                .prop_map(|(id, topic, users)| ServerFrame::Presence {
                    id,
                    topic,
                    users
                }),
            (arb_topic(), "[a-z0-9]{1,10}", any::<bool>()).prop_map(|(topic, user, joined)| {
                ServerFrame::PresenceEvent {
                    topic,
                    user,
                    joined,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = ClientFrame::parse_json(&bytes);
            let _ = ClientFrame::parse_proto(&bytes);
            let _ = ServerFrame::parse_json(&bytes);
            let _ = ServerFrame::parse_proto(&bytes);
        }

        #[test]
        fn parse_never_panics_on_json_like_text(text in r#"\{("(op|id|topics|topic|data)":(-?[0-9]{1,22}|"[a-z ]{0,8}"|\[("[^"]{0,5}",?){0,3}\]|null|\{\}),?){0,5}\}"#) {
            let _ = ClientFrame::parse_json(text.as_bytes());
        }

        #[test]
        fn client_json_round_trips(frame in arb_client_frame(true)) {
            prop_assert_eq!(ClientFrame::parse_json(&frame.encode_json()).unwrap(), frame);
        }

        #[test]
        fn client_proto_round_trips(frame in arb_client_frame(false)) {
            prop_assert_eq!(ClientFrame::parse_proto(&frame.encode_proto()).unwrap(), frame);
        }

        #[test]
        fn server_json_round_trips(frame in arb_server_frame()) {
            prop_assert_eq!(ServerFrame::parse_json(&frame.encode_json()).unwrap(), frame);
        }

        #[test]
        fn server_proto_round_trips(frame in arb_server_frame()) {
            prop_assert_eq!(ServerFrame::parse_proto(&frame.encode_proto()).unwrap(), frame);
        }
    }
}
