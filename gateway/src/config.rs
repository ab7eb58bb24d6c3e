//! Gateway configuration: where to listen and the limits that keep one client from hurting
//! the others. Every default is a named constant saying why it is what it is.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

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
        }
    }
}

/// Everything [`crate::Gateway::start`] needs besides the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
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
    /// `[client_tls]`: serve TLS on the client and TCP ports; plaintext when `None`.
    pub client_tls: Option<ClientTlsConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_LISTEN_PORT)),
            tcp_listen: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            limits: ConnectionLimits::default(),
            client_tls: None,
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
    /// The subscribe burst is below the sustained rate.
    #[error("`subscribe_burst` ({burst}) must be at least `subscribe_rate` ({rate})")]
    BurstBelowRate {
        /// Burst.
        burst: u32,
        /// Rate.
        rate: u32,
    },
    /// Both listeners on one address.
    #[error("`listen` and `tcp_listen` are both {0}")]
    SameAddress(SocketAddr),
}

impl GatewayConfig {
    /// Check that the configuration can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (name, v) in [
            ("max_connections", self.max_connections),
            ("max_topics", l.max_topics),
            ("max_in_flight", l.max_in_flight),
            ("send_queue_messages", l.send_queue_messages),
            ("subscribe_rate", l.subscribe_rate as usize),
            ("rate_limit_strikes", l.rate_limit_strikes as usize),
            ("slow_consumer_drops", l.slow_consumer_drops as usize),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        for (name, d) in [
            ("request_timeout", self.request_timeout),
            ("drain_timeout", self.drain_timeout),
            ("slow_consumer_grace", l.slow_consumer_grace),
            ("idle_timeout", l.idle_timeout),
            ("pong_timeout", l.pong_timeout),
            ("handshake_timeout", l.handshake_timeout),
            ("close_timeout", l.close_timeout),
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
        if l.subscribe_burst < l.subscribe_rate {
            return Err(ConfigError::BurstBelowRate {
                burst: l.subscribe_burst,
                rate: l.subscribe_rate,
            });
        }
        if self.tcp_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(ConfigError::SameAddress(self.listen));
        }
        Ok(())
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
        assert_eq!(c.validate(), Err(ConfigError::Zero("max_topics")));
        let mut c = GatewayConfig::default();
        c.limits.idle_timeout = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::ZeroDuration("idle_timeout")));
        let mut c = GatewayConfig::default();
        c.limits.send_queue_bytes = 1000;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::QueueSmallerThanFrame { .. })
        ));
        let mut c = GatewayConfig::default();
        c.tcp_listen = Some(c.listen);
        assert!(matches!(c.validate(), Err(ConfigError::SameAddress(_))));
    }
}
