//! Lifecycle hooks: the gateway asks the application (an HTTP endpoint, `[hooks] url`) whether a
//! client may connect, subscribe and publish, and tells it when a client is gone.
//!
//! ```text
//!   connection task                     Hooks                                 application
//!   ───────────────                     ─────                                 ───────────
//!   connect / subscribe / publish ──▶ slot (semaphore, max_concurrency) ──▶ POST url (JSON)
//!        ▲  (awaits, ≤ timeout_ms)      pooled HTTP/1.1 keep-alive client     {"allow":..}
//!        └──── HookOutcome::Allow / Deny ◀── answer::parse_* (strict) ◀──────────┘
//!                                       failures ──▶ on_failure (deny | allow)
//!
//!   disconnect (never awaited) ──▶ bounded queue ──▶ batcher task ──▶ POST {"disconnects":[..]}
//!                                  (full: dropped, counted)   (≤ disconnect_batch per POST,
//!                                                              ≤ disconnect_flush_ms late)
//! ```
//!
//! One call is bounded in every dimension a hostile or broken application could stretch: time
//! (`timeout_ms` covers waiting for a slot, connecting, sending and reading the whole answer),
//! size (`max_answer_bytes`: a larger answer is refused from its `Content-Length`, or as soon as
//! the bytes read pass the limit, without reading on), concurrency (`max_concurrency` calls at
//! once; a call that cannot get a slot before its deadline fails as `overloaded`) and sockets
//! (the pool keeps at most `max_concurrency` idle connections; the batcher sends one batch at a
//! time, on one more). A call that gets no usable answer is a [`HookFailure`], counted by
//! reason, and then decided by `on_failure`: `deny` refuses with code
//! [`HOOK_UNAVAILABLE`], `allow` proceeds as if the hook had answered `{"allow":true}`.
//!
//! Answers are parsed without I/O in [`answer`]; the wire shapes are in `docs/hooks.md`.

mod answer;
mod metrics;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::{timeout_at, Instant};

use firetower_proto::GatewayId;

pub(crate) use answer::ConnectGrant;
use answer::Verdict;
use metrics::DisconnectOutcome;
pub(crate) use metrics::HookMetrics;

use crate::Payload;

/// Time the application has for one call: a hook sits in the path of a client's connect or
/// publish, so it must answer about as fast as the cluster does; 1 s is generous on a LAN.
pub(crate) const DEFAULT_TIMEOUT_MS: u64 = 1_000;
/// Longest `timeout_ms` accepted: beyond a minute a client has long given up.
pub(crate) const MAX_TIMEOUT_MS: u64 = 60_000;
/// Calls in flight at once. At 1,000 connects/s and a 5 ms hook, about 5 are busy; 512 absorbs
/// a reconnect storm against a hook that slowed down, while bounding the sockets held for
/// hooks (at most this many busy plus this many idle) far below a 20,000 descriptor limit.
pub(crate) const DEFAULT_MAX_CONCURRENCY: usize = 512;
/// Largest `max_concurrency` accepted: each slot can hold a socket and an answer buffer.
pub(crate) const MAX_MAX_CONCURRENCY: usize = 10_000;
/// Largest answer read: a hook answer is a verdict and a few patterns, or a rewritten message,
/// and a client message is itself at most 64 KiB by default. Raise it when a publish hook
/// rewrites messages near that size into larger ones.
pub(crate) const DEFAULT_MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Bounds of `max_answer_bytes`: below 1 KiB a permission list does not fit; above 16 MiB
/// `max_concurrency` answers at once would be a memory problem.
pub(crate) const MIN_MAX_ANSWER_BYTES: usize = 1024;
/// See [`MIN_MAX_ANSWER_BYTES`].
pub(crate) const MAX_MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// Disconnect events in one POST: large enough that a mass disconnect (a gateway draining
/// 100,000 clients) is a few hundred requests, small enough (about 100 KiB) for any server.
pub(crate) const DEFAULT_DISCONNECT_BATCH: usize = 500;
/// How long a disconnect event may wait for others to share its POST.
pub(crate) const DEFAULT_DISCONNECT_FLUSH_MS: u64 = 200;
/// Disconnect events queued before new ones are dropped (and counted): a few seconds of a
/// reconnect storm while the hook is slow, at about 200 bytes each.
pub(crate) const DEFAULT_DISCONNECT_QUEUE: usize = 20_000;
/// An idle pooled connection is closed after this: below the keep-alive timeouts of common
/// servers (Node 5 s, nginx 75 s), so the gateway closes first instead of racing the server's
/// close with a new request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Shortest HTTP/1 read buffer hyper accepts.
const MIN_READ_BUFFER: usize = 8 * 1024;
/// At most one failure log line per this interval (with the number suppressed): a dead hook at
/// 1,000 connects/s must not become 1,000 log lines a second. Metrics count every failure.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The code of a call refused because the hook failed and `on_failure = "deny"`.
pub(crate) const HOOK_UNAVAILABLE: &str = "hook_unavailable";

/// Header names the gateway sets itself, refused in `hooks.headers`.
const RESERVED_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
];

/// A lifecycle event the application can take part in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookEvent {
    /// A client connected (after the HTTP upgrade or TCP accept, after JWT if any); awaited.
    Connect,
    /// A client asks to subscribe to topics; awaited.
    Subscribe,
    /// A client publishes; awaited, and the answer may replace the data.
    Publish,
    /// A client is gone; batched, never awaited.
    Disconnect,
}

impl HookEvent {
    /// The name in configuration, payloads and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Connect => "connect",
            HookEvent::Subscribe => "subscribe",
            HookEvent::Publish => "publish",
            HookEvent::Disconnect => "disconnect",
        }
    }
}

impl std::fmt::Display for HookEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a call that got no usable answer decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Refuse, with code `hook_unavailable`: the application's rules hold even when it is down.
    #[default]
    Deny,
    /// Proceed as if the hook had answered `{"allow":true}`: availability over the rules.
    Allow,
}

/// `[hooks]` in the gateway's configuration file. Its `Debug` shows header names, not their
/// values (they are usually secrets).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    /// Where to POST, `http://host:port/path` (https is refused by [`HooksConfig::validate`]).
    pub url: String,
    /// The events to call the hook for; the others are not sent.
    pub events: Vec<HookEvent>,
    /// Deadline of one call, in milliseconds, waiting for a slot included (default 1,000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// What a failed call decides (default [`OnFailure::Deny`]).
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Calls in flight at once (default 512).
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Largest answer, in bytes (default 65,536).
    #[serde(default = "default_max_answer_bytes")]
    pub max_answer_bytes: usize,
    /// Disconnect events per POST (default 500).
    #[serde(default = "default_disconnect_batch")]
    pub disconnect_batch: usize,
    /// Longest wait of a disconnect event for others to share its POST, in milliseconds
    /// (default 200).
    #[serde(default = "default_disconnect_flush_ms")]
    pub disconnect_flush_ms: u64,
    /// Disconnect events queued before new ones are dropped (default 20,000).
    #[serde(default = "default_disconnect_queue")]
    pub disconnect_queue: usize,
    /// Extra headers sent with every call, e.g. `Authorization = "Bearer <secret>"` so the
    /// application can tell the gateway's calls from anyone else's.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl std::fmt::Debug for HooksConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: BTreeMap<&str, &str> = self
            .headers
            .keys()
            .map(|name| (name.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("HooksConfig")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("timeout_ms", &self.timeout_ms)
            .field("on_failure", &self.on_failure)
            .field("max_concurrency", &self.max_concurrency)
            .field("max_answer_bytes", &self.max_answer_bytes)
            .field("disconnect_batch", &self.disconnect_batch)
            .field("disconnect_flush_ms", &self.disconnect_flush_ms)
            .field("disconnect_queue", &self.disconnect_queue)
            .field("headers", &headers)
            .finish()
    }
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_max_concurrency() -> usize {
    DEFAULT_MAX_CONCURRENCY
}
fn default_max_answer_bytes() -> usize {
    DEFAULT_MAX_ANSWER_BYTES
}
fn default_disconnect_batch() -> usize {
    DEFAULT_DISCONNECT_BATCH
}
fn default_disconnect_flush_ms() -> u64 {
    DEFAULT_DISCONNECT_FLUSH_MS
}
fn default_disconnect_queue() -> usize {
    DEFAULT_DISCONNECT_QUEUE
}

impl HooksConfig {
    /// A configuration calling `url` for `events`, every other key at its default.
    pub fn new(url: impl Into<String>, events: Vec<HookEvent>) -> Self {
        HooksConfig {
            url: url.into(),
            events,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            on_failure: OnFailure::default(),
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
            disconnect_batch: DEFAULT_DISCONNECT_BATCH,
            disconnect_flush_ms: DEFAULT_DISCONNECT_FLUSH_MS,
            disconnect_queue: DEFAULT_DISCONNECT_QUEUE,
            headers: BTreeMap::new(),
        }
    }

    /// Check that the configuration can work; the error names the key (`hooks.url`, ...).
    pub fn validate(&self) -> Result<(), HooksConfigError> {
        self.parse().map(drop)
    }

    /// The checked configuration, in the types the client uses.
    fn parse(&self) -> Result<Settings, HooksConfigError> {
        let uri = parse_url(&self.url)?;
        if self.events.is_empty() {
            return Err(HooksConfigError::NoEvents);
        }
        let range = |key: &'static str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(HooksConfigError::OutOfRange {
                    key,
                    value,
                    min,
                    max,
                })
            }
        };
        let usize_range = |key, value: usize, min: usize, max: usize| {
            range(key, value as u64, min as u64, max as u64)
        };
        range("timeout_ms", self.timeout_ms, 1, MAX_TIMEOUT_MS)?;
        usize_range(
            "max_concurrency",
            self.max_concurrency,
            1,
            MAX_MAX_CONCURRENCY,
        )?;
        usize_range(
            "max_answer_bytes",
            self.max_answer_bytes,
            MIN_MAX_ANSWER_BYTES,
            MAX_MAX_ANSWER_BYTES,
        )?;
        usize_range("disconnect_batch", self.disconnect_batch, 1, 100_000)?;
        range(
            "disconnect_flush_ms",
            self.disconnect_flush_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        usize_range("disconnect_queue", self.disconnect_queue, 1, 10_000_000)?;
        if self.disconnect_queue < self.disconnect_batch {
            return Err(HooksConfigError::QueueBelowBatch {
                queue: self.disconnect_queue,
                batch: self.disconnect_batch,
            });
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let bad = |reason: &str| HooksConfigError::BadHeader {
                name: name.clone(),
                reason: reason.to_string(),
            };
            let header = HeaderName::from_str(name).map_err(|_| bad("not a header name"))?;
            if RESERVED_HEADERS.contains(&header.as_str()) {
                return Err(bad("set by the gateway itself"));
            }
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| bad("the value has characters a header cannot carry"))?;
            // Kept out of `Debug` output (and so out of logs) by `http` itself.
            value.set_sensitive(true);
            headers.insert(header, value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("firetower-gateway/", env!("CARGO_PKG_VERSION"))),
        );
        Ok(Settings {
            uri,
            headers,
            events: self.events.clone(),
            timeout: Duration::from_millis(self.timeout_ms),
            on_failure: self.on_failure,
            max_concurrency: self.max_concurrency,
            max_answer_bytes: self.max_answer_bytes,
            disconnect_batch: self.disconnect_batch,
            disconnect_flush: Duration::from_millis(self.disconnect_flush_ms),
            disconnect_queue: self.disconnect_queue,
        })
    }
}

/// `url` as an `http://` URI with a host, no credentials.
fn parse_url(url: &str) -> Result<Uri, HooksConfigError> {
    let bad = |reason: &str| HooksConfigError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri = Uri::from_str(url).map_err(|e| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(HooksConfigError::Https(url.to_string())),
        Some(_) | None => return Err(bad("it must start with http://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(bad("it has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(bad(
            "credentials in the URL are not sent; use hooks.headers (e.g. Authorization)",
        ));
    }
    if authority.host().is_empty() {
        return Err(bad("it has no host"));
    }
    Ok(uri)
}

/// A `[hooks]` value that cannot work. Each message names the key and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HooksConfigError {
    /// `url` is not an `http://` URL with a host.
    #[error("hooks.url: {url:?} cannot be used: {reason}")]
    BadUrl {
        /// The configured value.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `url` is `https://`.
    #[error(
        "hooks.url: {0:?} is https, which the gateway does not speak to hooks; use an http:// \
         endpoint on a loopback or private address (or a TLS-terminating sidecar next to the \
         gateway)"
    )]
    Https(String),
    /// `events` is empty.
    #[error(
        "hooks.events: empty; list at least one of \"connect\", \"subscribe\", \"publish\", \
         \"disconnect\" (or remove [hooks])"
    )]
    NoEvents,
    /// A number outside what can work.
    #[error("hooks.{key}: {value} is out of range; it must be between {min} and {max}")]
    OutOfRange {
        /// The key, without `hooks.`.
        key: &'static str,
        /// The configured value.
        value: u64,
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
    /// The disconnect queue cannot hold one batch.
    #[error("hooks.disconnect_queue ({queue}) must be at least hooks.disconnect_batch ({batch})")]
    QueueBelowBatch {
        /// `disconnect_queue`.
        queue: usize,
        /// `disconnect_batch`.
        batch: usize,
    },
    /// An entry of `headers` cannot be sent.
    #[error("hooks.headers: {name:?}: {reason}")]
    BadHeader {
        /// The header name as configured.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why [`Hooks::new`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HooksError {
    /// The configuration does not validate.
    #[error(transparent)]
    Config(#[from] HooksConfigError),
    /// Called outside a tokio runtime (the disconnect batcher and the pool need one).
    #[error("hooks must be started inside a tokio runtime")]
    NoRuntime,
}

/// [`HooksConfig`] after [`HooksConfig::validate`], in the types the client uses.
#[derive(Debug, Clone)]
struct Settings {
    uri: Uri,
    headers: HeaderMap,
    events: Vec<HookEvent>,
    timeout: Duration,
    on_failure: OnFailure,
    max_concurrency: usize,
    max_answer_bytes: usize,
    disconnect_batch: usize,
    disconnect_flush: Duration,
    disconnect_queue: usize,
}

/// The client a hook call is about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller<'a> {
    /// The connection's id as the application sees it (`conn`).
    pub(crate) conn: &'a str,
    /// The client's address (`remote`, `ip:port`).
    pub(crate) remote: SocketAddr,
    /// The user, once known (from JWT or a connect hook); omitted from the payload when `None`.
    pub(crate) user: Option<&'a str>,
}

/// What a hook call decided, failures already mapped through `on_failure`.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HookOutcome<T> {
    /// Go ahead, with what the answer carried (the default, e.g. no grant or no replaced data,
    /// when the event is not configured or the hook failed with `on_failure = "allow"`).
    Allow(T),
    /// Refuse, with a code and message for the client.
    Deny(Denial),
}

/// A refusal, by the application or by `on_failure = "deny"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denial {
    /// For the client's error frame: the application's code (default `forbidden`), or
    /// [`HOOK_UNAVAILABLE`] after a failure.
    pub(crate) code: String,
    /// For the client: the application's message, or a short one naming the failure's reason
    /// (never the hook's address or its answer).
    pub(crate) message: String,
    /// `Some` when the refusal comes from a failure rather than the application's answer (a
    /// caller may close a connect with "try again later" rather than "forbidden").
    pub(crate) failure: Option<HookFailure>,
}

/// Why a call got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HookFailure {
    /// No complete answer within `timeout_ms`.
    #[error("no complete answer within {0} ms")]
    Timeout(u64),
    /// Could not open a connection to the hook.
    #[error("cannot connect to the hook: {0}")]
    Connect(String),
    /// An HTTP status other than 200 (other than 2xx for `disconnect`).
    #[error("the hook answered HTTP {0}; it must answer 200 with a JSON body")]
    Status(u16),
    /// Not an HTTP/1.1 answer, or the connection broke before the answer was complete.
    #[error("the hook's HTTP answer is malformed or cut: {0}")]
    Malformed(String),
    /// An HTTP answer whose body is not a valid hook answer.
    #[error("bad answer: {0}")]
    BadAnswer(#[from] answer::BadAnswer),
    /// The answer is larger than `max_answer_bytes` (refused without reading the rest).
    #[error("the answer is larger than {0} bytes (hooks.max_answer_bytes)")]
    TooLarge(usize),
    /// No free slot (`max_concurrency` calls in flight) before the deadline.
    #[error("{0} hook calls already in flight (hooks.max_concurrency) until the deadline")]
    Overloaded(usize),
}

/// The `reason` label of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FailureReason {
    /// [`HookFailure::Timeout`].
    Timeout,
    /// [`HookFailure::Connect`].
    Connect,
    /// [`HookFailure::Status`].
    Status,
    /// [`HookFailure::Malformed`] and [`HookFailure::BadAnswer`].
    BadAnswer,
    /// [`HookFailure::TooLarge`].
    TooLarge,
    /// [`HookFailure::Overloaded`].
    Overloaded,
}

impl FailureReason {
    /// Every reason, for creating the series up front.
    pub(crate) const ALL: [FailureReason; 6] = [
        FailureReason::Timeout,
        FailureReason::Connect,
        FailureReason::Status,
        FailureReason::BadAnswer,
        FailureReason::TooLarge,
        FailureReason::Overloaded,
    ];

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailureReason::Timeout => "timeout",
            FailureReason::Connect => "connect",
            FailureReason::Status => "status",
            FailureReason::BadAnswer => "bad_answer",
            FailureReason::TooLarge => "too_large",
            FailureReason::Overloaded => "overloaded",
        }
    }
}

impl HookFailure {
    /// The metric label.
    pub(crate) fn reason(&self) -> FailureReason {
        match self {
            HookFailure::Timeout(_) => FailureReason::Timeout,
            HookFailure::Connect(_) => FailureReason::Connect,
            HookFailure::Status(_) => FailureReason::Status,
            HookFailure::Malformed(_) | HookFailure::BadAnswer(_) => FailureReason::BadAnswer,
            HookFailure::TooLarge(_) => FailureReason::TooLarge,
            HookFailure::Overloaded(_) => FailureReason::Overloaded,
        }
    }
}

/// The gateway's client of the application's hook endpoint. Clones share one pool, one
/// concurrency bound and one disconnect queue; the batcher ends (after sending what is queued)
/// when the last clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Hooks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    transport: Arc<Transport>,
    on_failure: OnFailure,
    events: Vec<HookEvent>,
    /// `Some` when `disconnect` is configured.
    disconnects: Option<mpsc::Sender<Queued>>,
    failure_log: LogLimiter,
}

impl Hooks {
    /// Check `config`, build the pooled client and, when `disconnect` is configured, start the
    /// batcher (so this must run inside a tokio runtime). Counts into `metrics`.
    pub(crate) fn new(
        config: &HooksConfig,
        gateway: GatewayId,
        metrics: HookMetrics,
    ) -> Result<Self, HooksError> {
        let settings = config.parse()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| HooksError::NoRuntime)?;
        metrics.prepare(&settings.events);
        let transport = Arc::new(Transport::new(&settings, gateway, metrics));
        let disconnects = settings.events.contains(&HookEvent::Disconnect).then(|| {
            let (tx, rx) = mpsc::channel(settings.disconnect_queue);
            runtime.spawn(run_batcher(
                Arc::clone(&transport),
                rx,
                settings.disconnect_batch,
                settings.disconnect_flush,
            ));
            tx
        });
        Ok(Hooks {
            inner: Arc::new(Inner {
                transport,
                on_failure: settings.on_failure,
                events: settings.events,
                disconnects,
                failure_log: LogLimiter::default(),
            }),
        })
    }

    /// True when the hook is called for `event`; the other calls return `Allow` at once.
    pub(crate) fn wants(&self, event: HookEvent) -> bool {
        self.inner.events.contains(&event)
    }

    /// Ask whether a client may connect. `headers` are the HTTP request's (lower-case names;
    /// repeated names are joined with `", "`, cookies with `"; "`); empty for raw TCP.
    pub(crate) async fn connect(
        &self,
        who: Caller<'_>,
        headers: &[(String, String)],
    ) -> HookOutcome<ConnectGrant> {
        if !self.wants(HookEvent::Connect) {
            return HookOutcome::Allow(ConnectGrant::default());
        }
        let request = ConnectRequest {
            event: HookEvent::Connect,
            gateway: self.inner.transport.gateway,
            conn: who.conn,
            user: who.user,
            remote: who.remote,
            headers: header_object(headers),
        };
        self.call(HookEvent::Connect, &request, answer::parse_connect)
            .await
    }

    /// Ask whether a client may subscribe to `topics` (one call for the whole request; the
    /// answer covers every topic).
    pub(crate) async fn subscribe(&self, who: Caller<'_>, topics: &[Arc<str>]) -> HookOutcome<()> {
        if !self.wants(HookEvent::Subscribe) {
            return HookOutcome::Allow(());
        }
        let request = SubscribeRequest {
            event: HookEvent::Subscribe,
            gateway: self.inner.transport.gateway,
            conn: who.conn,
            user: who.user,
            remote: who.remote,
            topics,
        };
        self.call(HookEvent::Subscribe, &request, answer::parse_subscribe)
            .await
    }

    /// Ask whether a client may publish `payload` to `topic`. `Allow(Some(data))` carries the
    /// data to publish instead: JSON from the answer verbatim (valid JSON, within
    /// `max_answer_bytes`), or bytes when it answered `"encoding":"base64"`. A binary payload
    /// is sent to the hook as `"data":"<base64>","encoding":"base64"`.
    pub(crate) async fn publish(
        &self,
        who: Caller<'_>,
        topic: &str,
        payload: &Payload,
    ) -> HookOutcome<Option<Payload>> {
        if !self.wants(HookEvent::Publish) {
            return HookOutcome::Allow(None);
        }
        let data = match payload {
            Payload::Json(bytes) => std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
                .map(Data::Json),
            Payload::Binary(_) => None,
        };
        // A JSON payload is valid JSON by `Payload`'s contract; should one not be, it still
        // reaches the hook, as bytes.
        let (data, encoding) = match data {
            Some(data) => (data, None),
            None => (
                Data::Base64(base64::engine::general_purpose::STANDARD.encode(payload.bytes())),
                Some("base64"),
            ),
        };
        let request = PublishRequest {
            event: HookEvent::Publish,
            gateway: self.inner.transport.gateway,
            conn: who.conn,
            user: who.user,
            remote: who.remote,
            topic,
            data,
            encoding,
        };
        self.call(HookEvent::Publish, &request, answer::parse_publish)
            .await
    }

    /// Tell the application a client is gone (`reason`: a short code such as `client_closed`,
    /// `idle`, `slow_consumer`, `kicked`, `shutdown`). Queued and sent in a batch; never waits.
    /// When the queue is full the event is dropped and counted
    /// (`hook_disconnects_total{outcome="queue_full"}`).
    pub(crate) fn disconnect(&self, who: Caller<'_>, reason: &str) {
        let Some(queue) = &self.inner.disconnects else {
            return;
        };
        let entry = DisconnectEntry {
            conn: who.conn.to_string(),
            user: who.user.map(str::to_string),
            remote: who.remote,
            reason: reason.to_string(),
        };
        if queue.try_send(Queued::Gone(entry)).is_err() {
            // Full (or the batcher is gone, which only happens when the runtime shuts down).
            self.inner
                .transport
                .metrics
                .disconnects(DisconnectOutcome::QueueFull, 1);
        }
    }

    /// Send every disconnect event queued so far and return once its POSTs are answered or
    /// failed (for draining at shutdown; bound it with a timeout).
    pub(crate) async fn flush(&self) {
        let Some(queue) = &self.inner.disconnects else {
            return;
        };
        let (done, sent) = oneshot::channel();
        if queue.send(Queued::Flush(done)).await.is_ok() {
            let _ = sent.await;
        }
    }

    /// One synchronous call: POST `request`, parse the answer, count, map failures.
    async fn call<R, T>(
        &self,
        event: HookEvent,
        request: &R,
        parse: fn(&[u8]) -> Result<Verdict<T>, answer::BadAnswer>,
    ) -> HookOutcome<T>
    where
        R: Serialize,
        T: Default,
    {
        let transport = &self.inner.transport;
        let started = Instant::now();
        let deadline = started + transport.timeout;
        transport.metrics.call(event);
        let result = match serde_json::to_vec(request) {
            Ok(body) => transport
                .post(event, body, deadline, true, |status| {
                    status == StatusCode::OK
                })
                .await
                .and_then(|answer| parse(&answer).map_err(HookFailure::from)),
            // Our own structs of strings and numbers: serialising them cannot fail.
            Err(e) => Err(HookFailure::Malformed(format!("request: {e}"))),
        };
        transport.metrics.observe(event, started.elapsed());
        match result {
            Ok(Verdict::Allow(value)) => HookOutcome::Allow(value),
            Ok(Verdict::Deny { code, message }) => {
                transport.metrics.denial(event);
                HookOutcome::Deny(Denial {
                    code,
                    message,
                    failure: None,
                })
            }
            Err(failure) => {
                transport.metrics.failure(event, failure.reason());
                self.inner.failure_log.warn(event, &failure);
                match self.inner.on_failure {
                    OnFailure::Allow => HookOutcome::Allow(T::default()),
                    OnFailure::Deny => HookOutcome::Deny(Denial {
                        code: HOOK_UNAVAILABLE.to_string(),
                        message: format!(
                            "the application could not be asked ({}); try again later",
                            failure.reason().as_str()
                        ),
                        failure: Some(failure),
                    }),
                }
            }
        }
    }
}

/// The pooled HTTP client and what every call needs.
#[derive(Debug)]
struct Transport {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    headers: HeaderMap,
    gateway: GatewayId,
    timeout: Duration,
    max_answer_bytes: usize,
    max_concurrency: usize,
    /// One permit per call in flight.
    slots: Semaphore,
    metrics: HookMetrics,
}

impl Transport {
    fn new(settings: &Settings, gateway: GatewayId, metrics: HookMetrics) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(settings.max_concurrency)
            .pool_timer(TokioTimer::new())
            // The read buffer bounds what one read takes in, so an answer over the limit is
            // refused after at most the limit plus one buffer.
            .http1_max_buf_size(settings.max_answer_bytes.max(MIN_READ_BUFFER))
            .build(connector);
        Transport {
            client,
            uri: settings.uri.clone(),
            headers: settings.headers.clone(),
            gateway,
            timeout: settings.timeout,
            max_answer_bytes: settings.max_answer_bytes,
            max_concurrency: settings.max_concurrency,
            slots: Semaphore::new(settings.max_concurrency),
            metrics,
        }
    }

    /// POST `body` and return the answer's body, all before `deadline`. With `slot`, wait (until
    /// the deadline) for one of the `max_concurrency` slots first.
    async fn post(
        &self,
        event: HookEvent,
        body: Vec<u8>,
        deadline: Instant,
        slot: bool,
        accept: impl Fn(StatusCode) -> bool,
    ) -> Result<Bytes, HookFailure> {
        let _permit = if slot {
            match timeout_at(deadline, self.slots.acquire()).await {
                Ok(Ok(permit)) => Some(permit),
                // The semaphore is never closed; a timeout is the overload.
                Ok(Err(_)) | Err(_) => return Err(HookFailure::Overloaded(self.max_concurrency)),
            }
        } else {
            None
        };
        let _in_flight = self.metrics.in_flight(event);
        match timeout_at(deadline, self.exchange(body, accept)).await {
            Ok(result) => result,
            Err(_) => Err(HookFailure::Timeout(
                u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            )),
        }
    }

    async fn exchange(
        &self,
        body: Vec<u8>,
        accept: impl Fn(StatusCode) -> bool,
    ) -> Result<Bytes, HookFailure> {
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        let response = self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                HookFailure::Connect(error_chain(&e))
            } else {
                HookFailure::Malformed(error_chain(&e))
            }
        })?;
        if !accept(response.status()) {
            // Dropping the unread answer closes the connection instead of pooling it.
            return Err(HookFailure::Status(response.status().as_u16()));
        }
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_answer_bytes as u64) {
            return Err(HookFailure::TooLarge(self.max_answer_bytes));
        }
        match Limited::new(response.into_body(), self.max_answer_bytes)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                Err(HookFailure::TooLarge(self.max_answer_bytes))
            }
            Err(e) => Err(HookFailure::Malformed(error_chain(e.as_ref()))),
        }
    }
}

/// An error and its sources, `a: b: c` (hyper's errors say little at the top).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// What the batcher's queue carries.
#[derive(Debug)]
enum Queued {
    /// A disconnect event.
    Gone(DisconnectEntry),
    /// Send what is queued before this, then answer.
    Flush(oneshot::Sender<()>),
}

/// Collect disconnect events into batches of at most `batch`, each sent at most `flush` after
/// its first event, one POST at a time; ends when every [`Hooks`] clone is gone.
async fn run_batcher(
    transport: Arc<Transport>,
    mut queue: mpsc::Receiver<Queued>,
    batch: usize,
    flush: Duration,
) {
    let mut entries = Vec::with_capacity(batch);
    let mut flushed = Vec::new();
    loop {
        let mut closed = false;
        match queue.recv().await {
            Some(Queued::Gone(entry)) => entries.push(entry),
            Some(Queued::Flush(done)) => flushed.push(done),
            None => return,
        }
        let due = Instant::now() + flush;
        while flushed.is_empty() && entries.len() < batch {
            match timeout_at(due, queue.recv()).await {
                Ok(Some(Queued::Gone(entry))) => entries.push(entry),
                Ok(Some(Queued::Flush(done))) => flushed.push(done),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if !entries.is_empty() {
            send_batch(&transport, &entries).await;
            entries.clear();
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
        if closed {
            return;
        }
    }
}

/// POST one batch; its answer (any 2xx) is read and ignored.
async fn send_batch(transport: &Transport, entries: &[DisconnectEntry]) {
    let event = HookEvent::Disconnect;
    let started = Instant::now();
    transport.metrics.call(event);
    let request = DisconnectRequest {
        event,
        gateway: transport.gateway,
        disconnects: entries,
    };
    let result = match serde_json::to_vec(&request) {
        Ok(body) => {
            transport
                .post(
                    event,
                    body,
                    started + transport.timeout,
                    false,
                    |status: StatusCode| status.is_success(),
                )
                .await
        }
        Err(e) => Err(HookFailure::Malformed(format!("request: {e}"))),
    };
    transport.metrics.observe(event, started.elapsed());
    match result {
        Ok(_) => transport
            .metrics
            .disconnects(DisconnectOutcome::Sent, entries.len()),
        Err(failure) => {
            transport.metrics.failure(event, failure.reason());
            transport
                .metrics
                .disconnects(DisconnectOutcome::Failed, entries.len());
            tracing::warn!(
                event = "hook_failed",
                hook = event.as_str(),
                reason = failure.reason().as_str(),
                dropped = entries.len(),
                error = %failure,
                "a batch of disconnect events was not delivered to the hook"
            );
        }
    }
}

/// Logs a failure at most once per [`FAILURE_LOG_INTERVAL`], with how many were not logged.
#[derive(Debug)]
struct LogLimiter {
    started: Instant,
    /// Milliseconds since `started` before which nothing is logged.
    quiet_until_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter {
            started: Instant::now(),
            quiet_until_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl LogLimiter {
    fn warn(&self, event: HookEvent, failure: &HookFailure) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let until = self.quiet_until_ms.load(Ordering::Relaxed);
        let next =
            now.saturating_add(u64::try_from(FAILURE_LOG_INTERVAL.as_millis()).unwrap_or(u64::MAX));
        if now < until
            || self
                .quiet_until_ms
                .compare_exchange(until, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tracing::warn!(
            event = "hook_failed",
            hook = event.as_str(),
            reason = failure.reason().as_str(),
            error = %failure,
            suppressed = self.suppressed.swap(0, Ordering::Relaxed),
            "a hook call got no usable answer (hook_failures_total counts every one)"
        );
    }
}

/// `{"event":"connect", ...}`.
#[derive(Serialize)]
struct ConnectRequest<'a> {
    event: HookEvent,
    gateway: GatewayId,
    conn: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    remote: SocketAddr,
    headers: BTreeMap<String, String>,
}

/// `{"event":"subscribe", ...}`.
#[derive(Serialize)]
struct SubscribeRequest<'a> {
    event: HookEvent,
    gateway: GatewayId,
    conn: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    remote: SocketAddr,
    #[serde(serialize_with = "topic_list")]
    topics: &'a [Arc<str>],
}

/// `{"event":"publish", ...}`.
#[derive(Serialize)]
struct PublishRequest<'a> {
    event: HookEvent,
    gateway: GatewayId,
    conn: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    remote: SocketAddr,
    topic: &'a str,
    data: Data<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
}

/// Published data as the hook sees it.
#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    /// The client's JSON, verbatim.
    Json(&'a RawValue),
    /// Binary data, with `"encoding":"base64"` beside it.
    Base64(String),
}

/// `{"event":"disconnect","gateway":7,"disconnects":[..]}`.
#[derive(Serialize)]
struct DisconnectRequest<'a> {
    event: HookEvent,
    gateway: GatewayId,
    disconnects: &'a [DisconnectEntry],
}

/// One client gone.
#[derive(Debug, Serialize)]
struct DisconnectEntry {
    conn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    remote: SocketAddr,
    reason: String,
}

/// `Arc<str>` topics as a JSON list of strings (serde's `rc` feature is not enabled).
fn topic_list<S: Serializer>(topics: &&[Arc<str>], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(topics.iter().map(|t| &**t))
}

/// Request headers as one JSON object: lower-case names, repeated names joined the way HTTP
/// allows (`", "`, and `"; "` for cookies).
fn header_object(headers: &[(String, String)]) -> BTreeMap<String, String> {
    let mut object: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let separator = if name == "cookie" { "; " } else { ", " };
        object
            .entry(name)
            .and_modify(|joined| {
                joined.push_str(separator);
                joined.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    object
}
