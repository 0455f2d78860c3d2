//! The tier's settings and their documented defaults.
//!
//! Invariant: a [`Settings`] is only made by the builder after validation: every TTL and
//! timeout in it is positive and the jitter is a fraction in `0.0..1.0`.

use std::time::Duration;

/// Default for [`connect_timeout`](crate::TieredCacheBuilder::connect_timeout): 1 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default for [`read_timeout`](crate::TieredCacheBuilder::read_timeout): 200 ms. A read
/// that waits this long for Redis goes on to the loader.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_millis(200);
/// Default for [`write_timeout`](crate::TieredCacheBuilder::write_timeout): 500 ms, for
/// `insert`, `remove`, each batch of `invalidate_all`, and a load's fill.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_millis(500);
/// Default for [`local_ttl`](crate::TieredCacheBuilder::local_ttl): 30 s.
pub const DEFAULT_LOCAL_TTL: Duration = Duration::from_secs(30);
/// Default for [`remote_ttl`](crate::TieredCacheBuilder::remote_ttl): 10 min.
pub const DEFAULT_REMOTE_TTL: Duration = Duration::from_secs(600);
/// Default for [`negative_ttl`](crate::TieredCacheBuilder::negative_ttl): 60 s.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// Default for [`tombstone_ttl`](crate::TieredCacheBuilder::tombstone_ttl): 10 s.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(10);
/// Default for [`remote_ttl_jitter`](crate::TieredCacheBuilder::remote_ttl_jitter): ±5 %,
/// as go-zero spreads its Redis TTLs.
pub const DEFAULT_REMOTE_TTL_JITTER: f64 = 0.05;

/// Default for [`breaker_threshold`](crate::TieredCacheBuilder::breaker_threshold): 5
/// Redis failures in a row (timeouts, or no connection) open the breaker.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
/// Default for [`breaker_cooldown`](crate::TieredCacheBuilder::breaker_cooldown): 2 s
/// without asking Redis, then one call probes it.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(2);

/// What the tier needs at run time (the local tier's own settings went into its builder).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) namespace: String,
    pub(crate) read_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) local_ttl: Duration,
    pub(crate) remote_ttl: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) tombstone_ttl: Duration,
    pub(crate) jitter: f64,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_cooldown: Duration,
}

impl Settings {
    /// `ttl` spread by up to ± the jitter fraction, never below 1 ms.
    pub(crate) fn jittered(&self, ttl: Duration) -> Duration {
        if self.jitter == 0.0 {
            return ttl;
        }
        let spread = (unit_random() * 2.0 - 1.0) * self.jitter;
        ttl.mul_f64(1.0 + spread).max(Duration::from_millis(1))
    }
}

/// A number in `0.0..1.0`, from the standard library's randomly keyed hasher: good enough to
/// spread expiries, with no dependency.
pub(crate) fn unit_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_fraction_and_spreads() {
        let settings = Settings {
            namespace: "t".into(),
            read_timeout: DEFAULT_READ_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            local_ttl: DEFAULT_LOCAL_TTL,
            remote_ttl: DEFAULT_REMOTE_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            jitter: 0.05,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
        };
        let base = Duration::from_secs(600);
        let all: Vec<Duration> = (0..1000).map(|_| settings.jittered(base)).collect();
        assert!(all
            .iter()
            .all(|t| *t >= base.mul_f64(0.95) && *t <= base.mul_f64(1.05)));
        assert!(all.iter().any(|t| *t < base.mul_f64(0.98)));
        assert!(all.iter().any(|t| *t > base.mul_f64(1.02)));
        let exact = Settings {
            jitter: 0.0,
            ..settings
        };
        assert_eq!(exact.jittered(base), base);
    }
}
