//! Exponential backoff with full jitter: the one reconnect policy of the workspace (managers
//! reconnecting to peers, the gateway's link client and sessions, accept loops, chaos clients).
//!
//! After the `n`-th consecutive failure the next attempt waits a uniformly random time in
//! `[0, min(cap, base * 2^(n-1))]` ("full jitter", as in the AWS Architecture Blog's *Exponential
//! Backoff And Jitter*). Randomness keeps the managers of a recovering cluster from retrying a
//! returning peer in lockstep; the exponent keeps a dead peer from being hammered.
//!
//! ```text
//!   wait ▲            cap ─────────────────────
//!        │         ┌──┘
//!        │      ┌──┘      delay(n) uniform in [0, ceiling(n)]
//!        │   ┌──┘
//!        │ ──┘ base
//!        └────────────────────────────────▶ failures n = 1, 2, 3, ...
//! ```
//!
//! Pure: the caller passes the random number generator and does the sleeping.

use std::time::Duration;

use rand::Rng;

/// How quickly a peer is retried after failed connection attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Ceiling of the first retry delay; doubles with each consecutive failure.
    pub base: Duration,
    /// Largest ceiling: a peer that stays down is retried at least this often (on average
    /// every `cap / 2`), which bounds how long a returning peer waits to be noticed.
    pub cap: Duration,
    /// Longest a single connection attempt (resolve + QUIC handshake) may take before it counts
    /// as a failure. Without it, a silent peer would hold an attempt for the QUIC idle timeout.
    pub connect_timeout: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            // Short enough that a peer restarting in place is back within a heartbeat or two.
            base: Duration::from_millis(50),
            // Long enough that a dead peer costs a handshake attempt at most every few seconds.
            cap: Duration::from_secs(2),
            // A loopback or LAN handshake takes milliseconds; a few seconds means the peer is gone.
            connect_timeout: Duration::from_secs(3),
        }
    }
}

impl ReconnectPolicy {
    /// Upper bound of the wait after `failures` consecutive failures (`failures >= 1`).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << exponent)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// A random wait in `[0, ceiling(failures)]`.
    pub fn delay(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(failures).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=ceiling))
    }

    /// `ceiling(failures)` plus a uniform extra wait in `[0, jitter]`: a growing floor with a
    /// little spread, for clients that model people reconnecting (chaos's connection storm)
    /// rather than a herd to be spread over the whole interval.
    pub fn delay_above_ceiling(
        &self,
        failures: u32,
        jitter: Duration,
        rng: &mut impl Rng,
    ) -> Duration {
        let jitter = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
        self.ceiling(failures)
            .saturating_add(Duration::from_nanos(rng.random_range(0..=jitter)))
    }

    /// The endless sequence of delays for failures 1, 2, 3, ... (what openraft's replication
    /// waits between attempts to a peer reported unreachable).
    pub fn delays(self) -> impl Iterator<Item = Duration> + Send + 'static {
        let mut failures = 0u32;
        std::iter::repeat_with(move || {
            failures = failures.saturating_add(1);
            self.delay(failures, &mut rand::rng())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let p = policy();
        assert_eq!(p.ceiling(1), Duration::from_millis(50));
        assert_eq!(p.ceiling(2), Duration::from_millis(100));
        assert_eq!(p.ceiling(3), Duration::from_millis(200));
        assert_eq!(p.ceiling(6), Duration::from_millis(1600));
        assert_eq!(p.ceiling(7), Duration::from_secs(2));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn delays_are_jittered() {
        let p = policy();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let samples: Vec<Duration> = (0..64).map(|_| p.delay(10, &mut rng)).collect();
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 32, "full jitter should spread delays");
        assert!(samples.iter().any(|d| *d < Duration::from_secs(1)));
    }

    #[test]
    fn delay_above_ceiling_stays_between_ceiling_and_jitter() {
        let p = policy();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for failures in 1..20 {
            let d = p.delay_above_ceiling(failures, Duration::from_millis(200), &mut rng);
            assert!(d >= p.ceiling(failures), "{failures}: {d:?}");
            assert!(d <= p.ceiling(failures) + Duration::from_millis(200));
        }
    }

    #[test]
    fn delays_iterator_never_ends() {
        assert_eq!(policy().delays().take(100).count(), 100);
    }

    proptest! {
        #[test]
        fn delay_never_exceeds_ceiling(failures in 0u32..100, seed: u64) {
            let p = policy();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let d = p.delay(failures, &mut rng);
            prop_assert!(d <= p.ceiling(failures));
            prop_assert!(d <= p.cap);
        }
    }
}
