//! Rate limits on new connections per source address, checked before the TLS handshake.
//!
//! A handshake costs the server a signature and a certificate-chain check, before it knows who
//! the peer is; a peer that opens connections as fast as it can would otherwise spend a
//! manager's CPU on handshakes it will refuse anyway. Each source address (IPv4, or the /64 of
//! an IPv6 address, which one host usually holds whole) has a token bucket of
//! [`HANDSHAKE_BURST`] handshakes, refilled at [`HANDSHAKES_PER_SECOND`]. Connections already
//! established are not affected. A cluster's own peers (a few managers and gateways, one
//! connection each, reconnecting with backoff) stay far below it.
//!
//! At most [`MAX_TRACKED_SOURCES`] addresses are tracked; when full, the buckets that have
//! refilled (and so say nothing) are dropped, and if every one is still in use a new address is
//! refused until some refill.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::token_bucket::TokenBucket;

/// Handshakes a source address may start per second, sustained.
pub const HANDSHAKES_PER_SECOND: u32 = 100;
/// Handshakes a source address may start at once.
pub const HANDSHAKE_BURST: u32 = 400;
/// Most source addresses tracked at once.
pub const MAX_TRACKED_SOURCES: usize = 65_536;

/// A token bucket per source address. Shared by the accept loop of one port.
#[derive(Debug)]
pub struct HandshakeLimiter {
    rate: u32,
    burst: u32,
    max_sources: usize,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl Default for HandshakeLimiter {
    fn default() -> Self {
        Self::new(HANDSHAKES_PER_SECOND, HANDSHAKE_BURST)
    }
}

impl HandshakeLimiter {
    /// `rate` handshakes per second per source, `burst` at once.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::with_capacity(rate, burst, MAX_TRACKED_SOURCES)
    }

    fn with_capacity(rate: u32, burst: u32, max_sources: usize) -> Self {
        Self {
            rate,
            burst: burst.max(1),
            max_sources,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a handshake from `ip` may start now; takes a token if so.
    pub fn admit(&self, ip: IpAddr) -> bool {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(&self, ip: IpAddr, now: Instant) -> bool {
        let source = source_of(ip);
        // Each critical section is a few arithmetic updates: a poisoned lock still guards
        // consistent data.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(&source) && buckets.len() >= self.max_sources {
            buckets.retain(|_, b| !b.is_full(now));
            if buckets.len() >= self.max_sources {
                return false;
            }
        }
        buckets
            .entry(source)
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst, now))
            .take(now)
    }
}

/// The address a bucket is kept for: IPv4 as it is, IPv6 by its /64 (an IPv4-mapped IPv6
/// address counts as the IPv4 address).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let limiter = HandshakeLimiter::new(10, 20);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        assert_eq!((0..50).filter(|_| limiter.admit_at(a, t0)).count(), 20);
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..50).filter(|_| limiter.admit_at(a, t1)).count(), 5);
        // Another source is not affected.
        assert!(limiter.admit_at(ip("192.0.2.2"), t1));
    }

    #[test]
    fn an_ipv6_host_is_limited_by_its_64() {
        let limiter = HandshakeLimiter::new(1, 2);
        let t0 = Instant::now();
        assert!(limiter.admit_at(ip("2001:db8:1:2::1"), t0));
        assert!(limiter.admit_at(ip("2001:db8:1:2:ffff::9"), t0));
        assert!(!limiter.admit_at(ip("2001:db8:1:2::abcd"), t0));
        assert!(limiter.admit_at(ip("2001:db8:1:3::1"), t0));
        // Mapped IPv4 is the IPv4 address.
        assert!(limiter.admit_at(ip("::ffff:192.0.2.7"), t0));
        assert!(limiter.admit_at(ip("192.0.2.7"), t0));
        assert!(!limiter.admit_at(ip("192.0.2.7"), t0));
    }

    #[test]
    fn tracked_sources_are_bounded_and_refilled_ones_make_room() {
        let limiter = HandshakeLimiter::with_capacity(10, 5, 100);
        let t0 = Instant::now();
        for n in 0..100u32 {
            assert!(limiter.admit_at(IpAddr::V4(n.into()), t0));
        }
        // Full of buckets in use: a new source waits.
        assert!(!limiter.admit_at(ip("198.51.100.1"), t0));
        // A known source still gets its tokens.
        assert!(limiter.admit_at(IpAddr::V4(7u32.into()), t0));
        // Once they refilled, the old buckets go and the new source is admitted.
        let t1 = t0 + Duration::from_secs(1);
        assert!(limiter.admit_at(ip("198.51.100.1"), t1));
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1);
    }
}
