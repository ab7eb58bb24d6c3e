//! Gateway configuration: where to listen and the limits that keep one client from hurting
//! the others. Every default is a named constant saying why it is what it is.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::api::ApiConfig;
use crate::auth::AuthConfig;
use crate::hooks::{HookEvent, HooksConfig};
use crate::transport::ClientTlsConfig;

/// The client port of the design (`9090/tcp`): WebSocket, health and metrics.
pub(crate) const DEFAULT_LISTEN_PORT: u16 = 9090;
/// A WebSocket frame or message (and a TCP frame) larger than this closes the connection
/// (1009): chat lines, notifications and device commands are far smaller, and the limit bounds
/// what one connection can make the gateway buffer.
pub(crate) const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
/// Topics one connection may hold: generous for any UI, small enough that one connection
/// cannot blow up the index.
pub(crate) const DEFAULT_MAX_TOPICS_PER_CONNECTION: usize = 1_000;
/// Sustained subscribe/unsubscribe requests per second per connection.
pub(crate) const DEFAULT_SUBSCRIBE_RATE: u32 = 100;
/// Burst of subscribe/unsubscribe requests (a page load subscribing to everything at once).
pub(crate) const DEFAULT_SUBSCRIBE_BURST: u32 = 200;
/// Rate-limited requests tolerated (refilled at one per second) before the connection is
/// closed as abusive (1008).
pub(crate) const DEFAULT_RATE_LIMIT_STRIKES: u32 = 100;
/// Publishes (and subscribes) of one connection waiting for the cluster at once; past it the
/// gateway stops reading that connection (TCP back-pressure) until one completes.
pub(crate) const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Messages queued for one connection before new ones are dropped for it.
pub(crate) const DEFAULT_SEND_QUEUE_MESSAGES: usize = 1_024;
/// Bytes queued for one connection before new messages are dropped for it.
pub(crate) const DEFAULT_SEND_QUEUE_BYTES: usize = 1024 * 1024;
/// Consecutive drops after which a slow consumer is disconnected (1008).
pub(crate) const DEFAULT_SLOW_CONSUMER_DROPS: u32 = 256;
/// How long a connection's queue may stay full before it is disconnected (1008).
pub(crate) const DEFAULT_SLOW_CONSUMER_GRACE: Duration = Duration::from_secs(5);
/// Silence after which the gateway pings a WebSocket client.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a pinged client has to show a sign of life.
pub(crate) const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(30);
/// Time to send a complete HTTP request after connecting.
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the peer has to answer our close frame before the socket is dropped.
pub(crate) const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline the gateway puts on one upstream request (the upstream has its own too).
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Time `shutdown()` waits for connections to close and unsubscribes to finish.
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes per second one connection may send, sustained (a chat client sends a few; a
/// backend bridge on a WebSocket may send thousands).
pub(crate) const DEFAULT_PUBLISH_RATE: u32 = 10_000;
/// Burst of publishes of one connection.
pub(crate) const DEFAULT_PUBLISH_BURST: u32 = 20_000;
/// Connections held at once; past it new ones are refused (the process's file descriptor
/// limit must be above it).
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 500_000;

/// Per-connection limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Largest frame and message payload, in bytes.
    pub max_frame_bytes: usize,
    /// Topics one connection may hold.
    pub max_topics: usize,
    /// Subscribe/unsubscribe requests per second, sustained.
    pub subscribe_rate: u32,
    /// Subscribe/unsubscribe requests in a burst.
    pub subscribe_burst: u32,
    /// Rate-limited requests tolerated before closing.
    pub rate_limit_strikes: u32,
    /// Requests waiting for the cluster at once.
    pub max_in_flight: usize,
    /// Messages queued per connection.
    pub send_queue_messages: usize,
    /// Bytes queued per connection.
    pub send_queue_bytes: usize,
    /// Consecutive drops before disconnecting.
    pub slow_consumer_drops: u32,
    /// Time with a full queue before disconnecting.
    pub slow_consumer_grace: Duration,
    /// Silence before a ping.
    pub idle_timeout: Duration,
    /// Time to answer the ping.
    pub pong_timeout: Duration,
    /// Time to complete the HTTP request.
    pub handshake_timeout: Duration,
    /// Time to answer a close frame.
    pub close_timeout: Duration,
    /// Publishes per second, sustained, per connection.
    pub publish_rate: u32,
    /// Burst of publishes per connection.
    pub publish_burst: u32,
    /// Publishes per second, sustained, summed over every connection of one user on this
    /// gateway; 0: no per-user limit.
    pub user_publish_rate: u32,
    /// Burst of a user's publishes (at least `user_publish_rate` when that is set).
    pub user_publish_burst: u32,
    /// Connections one user may hold on this gateway at once; 0: no limit.
    pub max_connections_per_user: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_topics: DEFAULT_MAX_TOPICS_PER_CONNECTION,
            subscribe_rate: DEFAULT_SUBSCRIBE_RATE,
            subscribe_burst: DEFAULT_SUBSCRIBE_BURST,
            rate_limit_strikes: DEFAULT_RATE_LIMIT_STRIKES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            send_queue_messages: DEFAULT_SEND_QUEUE_MESSAGES,
            send_queue_bytes: DEFAULT_SEND_QUEUE_BYTES,
            slow_consumer_drops: DEFAULT_SLOW_CONSUMER_DROPS,
            slow_consumer_grace: DEFAULT_SLOW_CONSUMER_GRACE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            publish_rate: DEFAULT_PUBLISH_RATE,
            publish_burst: DEFAULT_PUBLISH_BURST,
            user_publish_rate: 0,
            user_publish_burst: 0,
            max_connections_per_user: 0,
        }
    }
}

/// Everything [`crate::Gateway::start`] needs besides the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// This gateway's id, as hooks and operators see it (0 when the embedder has none).
    pub id: u64,
    /// WebSocket, health and metrics (HTTP/1.1).
    pub listen: SocketAddr,
    /// Raw TCP for devices (4-byte length + protobuf); off when `None`.
    pub tcp_listen: Option<SocketAddr>,
    /// Connections held at once.
    pub max_connections: usize,
    /// Deadline on each upstream request.
    pub request_timeout: Duration,
    /// Time `shutdown()` waits for connections and unsubscribes.
    pub drain_timeout: Duration,
    /// Per-connection limits.
    pub limits: ConnectionLimits,
    /// `[auth]`: how client tokens are verified; `None`: no JWT.
    pub auth: Option<AuthConfig>,
    /// `[api]`: the backend publish API; `None`: `/api/*` answers 404.
    pub api: Option<ApiConfig>,
    /// `[hooks]`: the application's HTTP endpoint asked at connect, subscribe and publish.
    pub hooks: Option<HooksConfig>,
    /// Clients without credentials may do everything (`--allow-anonymous`).
    pub allow_anonymous: bool,
    /// Browser origins allowed to open WebSockets (`Origin` header); empty: any. A request
    /// without `Origin` (not a browser) is not affected.
    pub allowed_origins: Vec<String>,
    /// `[client_tls]`: serve TLS on the client and TCP ports; plaintext when `None`.
    pub client_tls: Option<ClientTlsConfig>,
    /// `[demo] tokens`: `POST /demo/token` signs a short token for any user name it is given
    /// (topics `demo.*`) with the `[auth]` HS256 secret, for the demo page. For trying
    /// Firetower out only: anyone can claim any name.
    pub demo_tokens: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_LISTEN_PORT)),
            tcp_listen: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            id: 0,
            limits: ConnectionLimits::default(),
            auth: None,
            api: None,
            hooks: None,
            allow_anonymous: false,
            allowed_origins: Vec::new(),
            client_tls: None,
            demo_tokens: false,
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A limit is zero where at least one is needed.
    #[error("`{0}` must be at least 1")]
    Zero(&'static str),
    /// A duration is zero.
    #[error("`{0}` must be longer than zero")]
    ZeroDuration(&'static str),
    /// The frame limit is below what the protocol itself needs.
    #[error(
        "`max_frame_bytes` is {0}; it must be at least 1024 to carry a subscribe of one long topic"
    )]
    FrameTooSmall(usize),
    /// The send queue cannot hold one full-size frame.
    #[error("`send_queue_bytes` ({queue}) must be at least `max_frame_bytes` + 14 ({frame})")]
    QueueSmallerThanFrame {
        /// Configured queue bytes.
        queue: usize,
        /// Required.
        frame: usize,
    },
    /// A burst is below its sustained rate.
    #[error("`{name}` ({burst}) must be at least the matching rate ({rate})")]
    BurstBelowRate {
        /// The burst's key.
        name: &'static str,
        /// Burst.
        burst: u32,
        /// Rate.
        rate: u32,
    },
    /// Both listeners on one address.
    #[error("`listen` and `tcp_listen` are both {0}")]
    SameAddress(SocketAddr),
    /// An allowed origin that is not `scheme://host[:port]`.
    #[error("`allowed_origins`: {0:?} is not an origin; write it as the browser sends it, e.g. \"https://app.example.com\" (scheme, host, optional port, no path or trailing slash)")]
    BadOrigin(String),
    /// `[hooks]` cannot work.
    #[error("{0}")]
    Hooks(String),
    /// `[demo] tokens` without an HS256 secret to sign them with.
    #[error("[demo] tokens = true (--demo-tokens) signs tokens with the HS256 secret: add [auth] with `hs256_secret_file`")]
    DemoTokensNeedHs256,
    /// Nobody would ever be let in, or everybody would without saying so.
    #[error("no client authentication is configured: add [auth] (JWT) or [hooks] with the `connect` event to the config file, or pass --allow-anonymous to let every client do everything")]
    NoAuth,
}

impl GatewayConfig {
    /// True when a connect hook may authenticate clients.
    pub(crate) fn has_hooks(&self) -> bool {
        self.hooks
            .as_ref()
            .is_some_and(|h| h.events.contains(&HookEvent::Connect))
    }

    /// True when a client without credentials may do everything: `allow_anonymous`, or
    /// nothing configured that could authenticate anyone (a library user's choice; the
    /// `firetower gateway` command refuses that through [`GatewayConfig::require_authentication`]).
    pub(crate) fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous || (self.auth.is_none() && !self.has_hooks())
    }

    /// Refuse a configuration that lets every client in without saying so: no `[auth]`, no
    /// connect hook and no `allow_anonymous`. What `firetower gateway` checks at start.
    pub fn require_authentication(&self) -> Result<(), ConfigError> {
        if self.auth.is_none() && !self.allow_anonymous && !self.has_hooks() {
            return Err(ConfigError::NoAuth);
        }
        Ok(())
    }

    /// Check that the configuration can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (name, v) in [
            ("max_connections", self.max_connections),
            ("limits.max_topics", l.max_topics),
            ("limits.max_in_flight", l.max_in_flight),
            ("limits.send_queue_messages", l.send_queue_messages),
            ("limits.subscribe_rate", l.subscribe_rate as usize),
            ("limits.publish_rate", l.publish_rate as usize),
            ("limits.rate_limit_strikes", l.rate_limit_strikes as usize),
            ("limits.slow_consumer_drops", l.slow_consumer_drops as usize),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        for (name, d) in [
            ("request_timeout_ms", self.request_timeout),
            ("drain_timeout_ms", self.drain_timeout),
            ("limits.slow_consumer_grace_ms", l.slow_consumer_grace),
            ("limits.idle_timeout_ms", l.idle_timeout),
            ("limits.pong_timeout_ms", l.pong_timeout),
            ("limits.handshake_timeout_ms", l.handshake_timeout),
            ("limits.close_timeout_ms", l.close_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if l.max_frame_bytes < 1024 {
            return Err(ConfigError::FrameTooSmall(l.max_frame_bytes));
        }
        if l.send_queue_bytes < l.max_frame_bytes + 14 {
            return Err(ConfigError::QueueSmallerThanFrame {
                queue: l.send_queue_bytes,
                frame: l.max_frame_bytes + 14,
            });
        }
        for (name, burst, rate) in [
            (
                "limits.subscribe_burst",
                l.subscribe_burst,
                l.subscribe_rate,
            ),
            ("limits.publish_burst", l.publish_burst, l.publish_rate),
            (
                "limits.user_publish_burst",
                l.user_publish_burst,
                l.user_publish_rate,
            ),
        ] {
            if burst < rate {
                return Err(ConfigError::BurstBelowRate { name, burst, rate });
            }
        }
        if let Some(hooks) = &self.hooks {
            hooks
                .validate()
                .map_err(|e| ConfigError::Hooks(e.to_string()))?;
        }
        for origin in &self.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                return Err(ConfigError::BadOrigin(origin.clone()));
            }
        }

        if self.demo_tokens
            && self
                .auth
                .as_ref()
                .is_none_or(|a| a.hs256_secret_file.is_none())
        {
            return Err(ConfigError::DemoTokensNeedHs256);
        }
        if self.tcp_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(ConfigError::SameAddress(self.listen));
        }
        Ok(())
    }
}

/// The gateway's TOML file (`firetower gateway --config FILE`): every key is optional and
/// defaults to the constant above it; flags given on the command line win over the file.
/// Unknown keys are refused (a typo must not silently leave a limit at its default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayFile {
    /// This gateway's id (`--id`).
    pub id: Option<u64>,
    /// WebSocket, health, metrics and API listener (`--listen`).
    pub listen: Option<SocketAddr>,
    /// Raw TCP listener (`--tcp`).
    pub tcp_listen: Option<SocketAddr>,
    /// Admin addresses of managers (`--managers`).
    pub managers: Vec<String>,
    /// Session lease towards the managers, in milliseconds (`--lease-ms`).
    pub lease_ms: Option<u64>,
    /// Let clients without credentials do everything (`--allow-anonymous`).
    pub allow_anonymous: bool,
    /// Browser origins allowed to open WebSockets; empty: any.
    pub allowed_origins: Vec<String>,
    /// Connections held at once.
    pub max_connections: Option<usize>,
    /// Deadline on each request to the cluster, in milliseconds.
    pub request_timeout_ms: Option<u64>,
    /// Time a shutdown waits for connections to close, in milliseconds.
    pub drain_timeout_ms: Option<u64>,
    /// Per-connection limits.
    pub limits: LimitsFile,
    /// Certificates towards the cluster (`--tls-dir`, `--insecure`).
    pub tls: ClusterTlsFile,
    /// JWT verification.
    pub auth: Option<AuthConfig>,
    /// The backend publish API.
    pub api: Option<ApiConfig>,
    /// Lifecycle hooks.
    pub hooks: Option<HooksConfig>,
    /// TLS towards clients (`wss://`, `https://`, TLS on the TCP port).
    pub client_tls: Option<ClientTlsConfig>,
    /// The demo page's token endpoint.
    pub demo: DemoFile,
}

/// `[demo]` of the gateway file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoFile {
    /// Serve `POST /demo/token` (`--demo-tokens`); needs `[auth]` with an HS256 secret.
    pub tokens: bool,
}

/// `[tls]` of the gateway file: the cluster certificates (mutual TLS towards the managers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterTlsFile {
    /// The TLS directory made by `firetower certs`.
    pub dir: Option<PathBuf>,
    /// Plaintext towards the managers (experiments only).
    pub insecure: bool,
}

/// `[limits]` of the gateway file; durations in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct LimitsFile {
    pub max_frame_bytes: Option<usize>,
    pub max_topics: Option<usize>,
    pub subscribe_rate: Option<u32>,
    pub subscribe_burst: Option<u32>,
    pub publish_rate: Option<u32>,
    pub publish_burst: Option<u32>,
    pub user_publish_rate: Option<u32>,
    pub user_publish_burst: Option<u32>,
    pub max_connections_per_user: Option<u32>,
    pub rate_limit_strikes: Option<u32>,
    pub max_in_flight: Option<usize>,
    pub send_queue_messages: Option<usize>,
    pub send_queue_bytes: Option<usize>,
    pub slow_consumer_drops: Option<u32>,
    pub slow_consumer_grace_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub pong_timeout_ms: Option<u64>,
    pub handshake_timeout_ms: Option<u64>,
    pub close_timeout_ms: Option<u64>,
}

/// Why the gateway file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read the gateway config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type (the message names the key and
    /// the line).
    #[error("gateway config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
}

impl GatewayFile {
    /// Read and parse `path` (at most 1 MiB).
    pub fn load(path: &std::path::Path) -> Result<GatewayFile, FileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        GatewayFile::parse(&text).map_err(|message| FileError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parse TOML text.
    pub fn parse(text: &str) -> Result<GatewayFile, String> {
        if text.len() > 1024 * 1024 {
            return Err("larger than 1 MiB".into());
        }
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// The gateway configuration the file describes, over the defaults (the cluster parts,
    /// `id`, `managers`, `lease_ms` and `[tls]`, are the command's business).
    pub fn to_config(&self) -> GatewayConfig {
        let d = GatewayConfig::default();
        let l = &self.limits;
        let dl = &d.limits;
        let ms =
            |v: Option<u64>, default: Duration| v.map(Duration::from_millis).unwrap_or(default);
        GatewayConfig {
            listen: self.listen.unwrap_or(d.listen),
            tcp_listen: self.tcp_listen,
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            request_timeout: ms(self.request_timeout_ms, d.request_timeout),
            drain_timeout: ms(self.drain_timeout_ms, d.drain_timeout),
            limits: ConnectionLimits {
                max_frame_bytes: l.max_frame_bytes.unwrap_or(dl.max_frame_bytes),
                max_topics: l.max_topics.unwrap_or(dl.max_topics),
                subscribe_rate: l.subscribe_rate.unwrap_or(dl.subscribe_rate),
                subscribe_burst: l.subscribe_burst.unwrap_or(dl.subscribe_burst),
                rate_limit_strikes: l.rate_limit_strikes.unwrap_or(dl.rate_limit_strikes),
                max_in_flight: l.max_in_flight.unwrap_or(dl.max_in_flight),
                send_queue_messages: l.send_queue_messages.unwrap_or(dl.send_queue_messages),
                send_queue_bytes: l.send_queue_bytes.unwrap_or(dl.send_queue_bytes),
                slow_consumer_drops: l.slow_consumer_drops.unwrap_or(dl.slow_consumer_drops),
                slow_consumer_grace: ms(l.slow_consumer_grace_ms, dl.slow_consumer_grace),
                idle_timeout: ms(l.idle_timeout_ms, dl.idle_timeout),
                pong_timeout: ms(l.pong_timeout_ms, dl.pong_timeout),
                handshake_timeout: ms(l.handshake_timeout_ms, dl.handshake_timeout),
                close_timeout: ms(l.close_timeout_ms, dl.close_timeout),
                publish_rate: l.publish_rate.unwrap_or(dl.publish_rate),
                publish_burst: l.publish_burst.unwrap_or(dl.publish_burst),
                user_publish_rate: l.user_publish_rate.unwrap_or(dl.user_publish_rate),
                user_publish_burst: l
                    .user_publish_burst
                    .or(l.user_publish_rate.map(|r| r.saturating_mul(2)))
                    .unwrap_or(dl.user_publish_burst),
                max_connections_per_user: l
                    .max_connections_per_user
                    .unwrap_or(dl.max_connections_per_user),
            },
            id: self.id.unwrap_or(0),
            auth: self.auth.clone(),
            api: self.api.clone(),
            hooks: self.hooks.clone(),
            client_tls: self.client_tls.clone(),
            allow_anonymous: self.allow_anonymous,
            allowed_origins: self.allowed_origins.clone(),
            demo_tokens: self.demo.tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        GatewayConfig::default().validate().unwrap();
    }

    #[test]
    fn refuses_unworkable_values() {
        let mut c = GatewayConfig::default();
        c.limits.max_topics = 0;
        assert_eq!(c.validate(), Err(ConfigError::Zero("limits.max_topics")));
        let mut c = GatewayConfig::default();
        c.limits.idle_timeout = Duration::ZERO;
        assert_eq!(
            c.validate(),
            Err(ConfigError::ZeroDuration("limits.idle_timeout_ms"))
        );
        let mut c = GatewayConfig::default();
        c.limits.send_queue_bytes = 1000;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::QueueSmallerThanFrame { .. })
        ));
        let mut c = GatewayConfig::default();
        c.tcp_listen = Some(c.listen);
        assert!(matches!(c.validate(), Err(ConfigError::SameAddress(_))));
        let c = GatewayConfig {
            allowed_origins: vec!["app.example.com".into()],
            ..GatewayConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::BadOrigin(_))));
        let mut c = GatewayConfig::default();
        c.limits.publish_burst = 1;
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("limits.publish_burst"), "{e}");
    }

    #[test]
    fn an_open_gateway_must_say_so() {
        let c = GatewayConfig::default();
        assert!(c.anonymous_allowed());
        assert!(matches!(
            c.require_authentication(),
            Err(ConfigError::NoAuth)
        ));
        let c = GatewayConfig {
            allow_anonymous: true,
            ..GatewayConfig::default()
        };
        c.require_authentication().unwrap();
    }

    #[test]
    fn demo_tokens_need_an_hs256_secret() {
        let file = GatewayFile::parse("allow_anonymous = true\n[demo]\ntokens = true\n").unwrap();
        let mut c = file.to_config();
        assert!(c.demo_tokens);
        assert_eq!(c.validate(), Err(ConfigError::DemoTokensNeedHs256));
        c.auth = Some(AuthConfig {
            public_key_file: Some("/etc/firetower/jwt.pem".into()),
            ..AuthConfig::default()
        });
        assert_eq!(c.validate(), Err(ConfigError::DemoTokensNeedHs256));
        c.auth = Some(AuthConfig {
            hs256_secret_file: Some("/etc/firetower/secret".into()),
            ..AuthConfig::default()
        });
        c.validate().unwrap();
        assert!(
            !GatewayFile::default().to_config().demo_tokens,
            "off by default"
        );
        assert!(GatewayFile::parse("[demo]\ntoken = true\n").is_err());
    }

    #[test]
    fn the_file_sets_every_limit_and_refuses_unknown_keys() {
        let file = GatewayFile::parse(
            r#"
            id = 7
            listen = "127.0.0.1:9999"
            managers = ["127.0.0.1:6667"]
            allowed_origins = ["https://app.example.com"]
            request_timeout_ms = 3000
            [limits]
            max_topics = 12
            idle_timeout_ms = 1500
            publish_rate = 5
            publish_burst = 10
            max_connections_per_user = 3
            [auth]
            hs256_secret_file = "/etc/firetower/secret"
            audience = "app"
            [api]
            keys_file = "/etc/firetower/api-keys"
            "#,
        )
        .unwrap();
        let c = file.to_config();
        assert_eq!(file.id, Some(7));
        assert_eq!(c.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(c.limits.max_topics, 12);
        assert_eq!(c.limits.idle_timeout, Duration::from_millis(1500));
        assert_eq!(c.limits.publish_rate, 5);
        assert_eq!(c.limits.max_connections_per_user, 3);
        assert_eq!(c.request_timeout, Duration::from_secs(3));
        assert_eq!(c.limits.send_queue_bytes, DEFAULT_SEND_QUEUE_BYTES);
        assert_eq!(c.auth.as_ref().unwrap().audience.as_deref(), Some("app"));
        assert!(c.api.is_some());
        c.validate().unwrap();

        let e = GatewayFile::parse("[limits]\nmax_topic = 3\n").unwrap_err();
        assert!(e.contains("max_topic"), "{e}");
        let e = GatewayFile::parse("[limits]\nmax_topics = \"many\"\n").unwrap_err();
        assert!(e.contains("max_topics"), "{e}");
        assert!(GatewayFile::parse("this is not toml").is_err());
        let e = GatewayFile::parse("[limits]\nmax_topics = 0\n")
            .unwrap()
            .to_config()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("limits.max_topics"), "{e}");
    }
}
