//! [`BuildError`]: why a cache could not be built. Each message names the fix.

use std::fmt;
use std::time::Duration;

use crate::time::clock::{MAX_TICK, MIN_TICK};

/// Why a cache could not be built.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BuildError {
    /// Not returned any more: a cache builds anywhere, and its expiry task starts on the
    /// first runtime that writes to it. Kept so that matches written for it still compile.
    NoRuntime,
    /// The runtime was built without timers.
    TimersDisabled,
    /// `tick` is outside [`MIN_TICK`]`..=`[`MAX_TICK`].
    TickOutOfRange(Duration),
    /// `time_to_live` is zero.
    ZeroTimeToLive,
    /// `expiry_jitter` is not a number in `0.0..1.0`.
    InvalidJitter(f64),
    /// `time_to_idle` is zero.
    ZeroTimeToIdle,
    /// `stats_interval` is zero.
    ZeroStatsInterval,
    /// Both `expire_after` and `time_to_idle` were given.
    ExpiryWithTimeToIdle,
    /// `refresh_after` is not shorter than `time_to_live`: entries would expire before their
    /// refresh.
    RefreshNotBeforeTimeToLive {
        /// The refresh interval given.
        refresh_after: Duration,
        /// The cache's time-to-live.
        time_to_live: Duration,
    },
    /// An option of a loading cache that must be positive (`refresh_after`,
    /// `max_concurrent_reloads`, `load_timeout`, `stale_if_error`, `soft_timeout`: named
    /// here) is zero.
    ZeroLoadingOption(&'static str),
    /// `soft_timeout` was given without `stale_if_error`: there is no stale copy to return.
    SoftTimeoutWithoutStaleIfError,
    /// `publish_metrics` was given a zero interval (the `metrics` cargo feature).
    #[cfg(feature = "metrics")]
    ZeroMetricsInterval,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::NoRuntime => f.write_str(
                "ebb: a cache must be built from within a Tokio runtime, because it spawns its \
                 expiry task there: call `build()` inside `#[tokio::main]`, `#[tokio::test]` or \
                 `Runtime::block_on`, or use `build_on(&handle)` from a plain thread",
            ),
            BuildError::TimersDisabled => f.write_str(
                "ebb: the Tokio runtime has timers disabled, and the expiry task needs them: \
                 call `enable_time()` (or `enable_all()`) on the runtime builder",
            ),
            BuildError::TickOutOfRange(tick) => write!(
                f,
                "ebb: tick {tick:?} is out of range: choose a tick from {MIN_TICK:?} to {MAX_TICK:?}"
            ),
            BuildError::ZeroTimeToLive => f.write_str(
                "ebb: a time_to_live of zero would expire every entry at once: give a positive \
                 duration, or leave time_to_live unset for entries that never expire",
            ),
            BuildError::InvalidJitter(j) => write!(
                f,
                "ebb: expiry_jitter {j} is not a fraction in 0.0..1.0 (0.05 spreads deadlines by ±5%)"
            ),
            BuildError::ZeroTimeToIdle => f.write_str(
                "ebb: a time_to_idle of zero would expire every entry at once: give a positive \
                 duration, or leave time_to_idle unset",
            ),
            BuildError::ExpiryWithTimeToIdle => f.write_str(
                "ebb: expire_after and time_to_idle both move deadlines on reads: use one. An \
                 Expiry whose observes_reads() is true and whose expire_after_read returns the \
                 idle time does what time_to_idle does",
            ),
            BuildError::ZeroStatsInterval => f.write_str(
                "ebb: a stats_interval of zero would log without pause: give a positive \
                 duration, such as 60 s",
            ),
            BuildError::RefreshNotBeforeTimeToLive {
                refresh_after,
                time_to_live,
            } => write!(
                f,
                "ebb: refresh_after {refresh_after:?} is not shorter than time_to_live \
                 {time_to_live:?}, so entries would expire before they are refreshed: choose a \
                 refresh interval below the TTL (such as 80% of it)"
            ),
            BuildError::ZeroLoadingOption(option) => write!(
                f,
                "ebb: {option} is zero: give it a positive value, or leave it unset for its \
                 default"
            ),
            BuildError::SoftTimeoutWithoutStaleIfError => f.write_str(
                "ebb: soft_timeout returns a stale copy to a fetch whose load is slow, and only \
                 stale_if_error keeps stale copies: give stale_if_error(window) too",
            ),
            #[cfg(feature = "metrics")]
            BuildError::ZeroMetricsInterval => f.write_str(
                "ebb: a publish_metrics interval of zero would publish without pause: give a \
                 positive duration, such as your scrape interval (15 s, say)",
            ),
        }
    }
}

impl std::error::Error for BuildError {}
