//! The cache's clock: `tokio::time::Instant` turned into plain numbers.
//!
//! Every deadline is stored as nanoseconds since the cache's `epoch` (a `u64`), so an entry
//! spends 8 bytes on it and a read compares two integers. The wheel works in whole ticks.
//!
//! Invariants kept here:
//! - Deadlines round **up** to ticks ([`Clock::tick_of`]) and the current tick rounds **down**
//!   ([`Clock::tick_floor`]): a deadline's tick is never reached before the deadline itself, so
//!   the wheel never fires early and the expiry task removes an entry less than one tick after
//!   its deadline.
//! - A TTL at or past the horizon ([`Clock::deadline_after`] returns [`NEVER`]) never expires,
//!   and no arithmetic here overflows.
//! - Time is `tokio::time`, so `tokio::time::pause()` and `advance()` drive every deadline.

use std::time::Duration;
use tokio::time::Instant;

/// The shortest tick ebb accepts.
pub const MIN_TICK: Duration = Duration::from_millis(1);
/// The longest tick ebb accepts.
pub const MAX_TICK: Duration = Duration::from_secs(60);
/// The default tick: expired entries leave the cache at most this long after their deadline.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);

/// A deadline that never comes.
pub(crate) const NEVER: u64 = u64::MAX;

/// A write's *cap*: the TTL's deadline, the latest its entry's deadline may become, with the
/// clock reading it was computed from when one was taken, so that a write that needs the time
/// again (for a time-to-idle) does not read the clock twice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cap {
    /// The TTL's deadline, or [`NEVER`].
    pub(crate) at: u64,
    pub(crate) now: Option<u64>,
    /// The first deadline a per-entry expiry policy chose, if earlier than `at`, else
    /// [`NEVER`].
    pub(crate) until: u64,
}

impl Cap {
    /// No TTL: a cap that never comes, no clock read.
    pub(crate) const NEVER: Cap = Cap {
        at: NEVER,
        now: None,
        until: NEVER,
    };
}

/// The number of ticks the wheel can look ahead (6 levels of 64 slots).
const WHEEL_HORIZON_TICKS: u64 = 1 << 36;

/// An upper bound on any finite deadline, far from `u64::MAX` (about 146 years).
const MAX_NANOS: u64 = 1 << 62;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
    tick_nanos: u64,
    horizon_nanos: u64,
}

impl Clock {
    /// A clock starting now. `tick` is already validated (1 ms ..= 60 s).
    pub(crate) fn new(tick: Duration) -> Self {
        let tick_nanos = tick.as_nanos() as u64;
        Clock {
            epoch: Instant::now(),
            tick_nanos,
            horizon_nanos: tick_nanos
                .saturating_mul(WHEEL_HORIZON_TICKS - 1)
                .min(MAX_NANOS / 2),
        }
    }

    /// The longest TTL that still expires; anything longer never does.
    pub(crate) fn horizon(&self) -> Duration {
        Duration::from_nanos(self.horizon_nanos)
    }

    /// The tick.
    pub(crate) fn tick(&self) -> Duration {
        Duration::from_nanos(self.tick_nanos)
    }

    /// The tick in nanoseconds.
    pub(crate) fn tick_nanos(&self) -> u64 {
        self.tick_nanos
    }

    /// Nanoseconds since the epoch.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64
    }

    /// The cap of a write now with `ttl`.
    #[inline]
    pub(crate) fn cap_after(&self, ttl: Duration) -> Cap {
        let now = self.now();
        Cap {
            at: self.deadline_after(now, ttl),
            now: Some(now),
            until: NEVER,
        }
    }

    /// The deadline `ttl` after `now`, or [`NEVER`] if `ttl` reaches the horizon.
    #[inline]
    pub(crate) fn deadline_after(&self, now: u64, ttl: Duration) -> u64 {
        if ttl >= self.horizon() {
            NEVER
        } else {
            now.saturating_add(ttl.as_nanos() as u64).min(NEVER - 1)
        }
    }

    /// The tick in which `deadline` falls, rounded up.
    #[inline]
    pub(crate) fn tick_of(&self, deadline: u64) -> u64 {
        deadline.div_ceil(self.tick_nanos)
    }

    /// The tick in which the instant `now` falls, rounded down.
    #[inline]
    pub(crate) fn tick_floor(&self, now: u64) -> u64 {
        now / self.tick_nanos
    }

    /// The instant `nanos` after the epoch.
    pub(crate) fn instant_at(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos.min(MAX_NANOS))
    }

    /// The instant at which `tick` begins.
    pub(crate) fn instant_of_tick(&self, tick: u64) -> Instant {
        let nanos = tick.saturating_mul(self.tick_nanos).min(MAX_NANOS);
        self.epoch + Duration::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_round_up_and_now_rounds_down() {
        let clock = Clock::new(Duration::from_millis(10));
        assert_eq!(clock.tick_of(0), 0);
        assert_eq!(clock.tick_of(1), 1);
        assert_eq!(clock.tick_of(10_000_000), 1);
        assert_eq!(clock.tick_of(10_000_001), 2);
        tokio::time::advance(Duration::from_millis(19)).await;
        assert_eq!(clock.tick_floor(clock.now()), 1);
        // A deadline's tick starts at or after the deadline itself.
        for d in [1u64, 9_999_999, 10_000_000, 10_000_001, 123_456_789] {
            assert!(clock.tick_of(d) * 10_000_000 >= d);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ttls_past_the_horizon_never_expire() {
        let clock = Clock::new(Duration::from_millis(1));
        assert_eq!(clock.deadline_after(5, Duration::MAX), NEVER);
        assert_eq!(clock.deadline_after(5, clock.horizon()), NEVER);
        let just_inside = clock.horizon() - Duration::from_nanos(1);
        assert_ne!(clock.deadline_after(5, just_inside), NEVER);
        // A 60 s tick has a horizon past the nanosecond range: it is capped, never overflows.
        let slow = Clock::new(Duration::from_secs(60));
        assert!(slow.deadline_after(u64::MAX / 4, slow.horizon() / 2) < NEVER);
        assert!(slow.instant_of_tick(u64::MAX) > slow.epoch);
    }
}
