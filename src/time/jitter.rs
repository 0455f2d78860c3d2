//! Spreads default-TTL deadlines so that entries written together do not expire together.
//!
//! A per-thread xorshift generator, seeded from the standard library's random hasher keys:
//! no lock, no shared state, no dependency. It is not cryptographic and need not be.
//!
//! Invariant: [`spread`] returns a duration within `ttl * (1 ± fraction)`, for any `fraction`
//! in `0.0..1.0`.

use std::cell::Cell;
use std::hash::BuildHasher;
use std::time::Duration;

thread_local! {
    static STATE: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().hash_one(0u8) | 1);
}

/// A uniform number in `[0, 1)`.
pub(crate) fn unit() -> f64 {
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// `ttl` scaled by a random factor in `[1 - fraction, 1 + fraction]`.
pub(crate) fn spread(ttl: Duration, fraction: f64) -> Duration {
    if fraction == 0.0 {
        return ttl;
    }
    let factor = 1.0 + fraction * (2.0 * unit() - 1.0);
    // Saturates rather than panics for TTLs too long to scale (they never expire anyway).
    Duration::try_from_secs_f64(ttl.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_the_fraction_and_spreads() {
        let ttl = Duration::from_secs(100);
        let (mut lo, mut hi) = (ttl, ttl);
        for _ in 0..10_000 {
            let d = spread(ttl, 0.05);
            assert!(
                d >= Duration::from_secs(95) && d <= Duration::from_secs(105),
                "{d:?}"
            );
            lo = lo.min(d);
            hi = hi.max(d);
        }
        assert!(lo < Duration::from_secs(96) && hi > Duration::from_secs(104));
        assert_eq!(spread(ttl, 0.0), ttl);
        // Far too long to scale: saturates, never panics.
        assert!(spread(Duration::MAX, 0.5) >= Duration::from_secs(u64::MAX / 4));
    }
}
