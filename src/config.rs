//! [`Policy`]: the settings a cache was built with, as its handle reports them. Plain data,
//! fixed at build time.

use std::time::Duration;

/// The settings a cache was built with: [`Cache::policy`](crate::Cache::policy).
///
/// ```
/// use std::time::Duration;
///
/// #[tokio::main]
/// async fn main() {
///     let cache: ebb_cache::Cache<u32, u32> = ebb_cache::Cache::builder()
///         .max_capacity(1_000)
///         .time_to_live(Duration::from_secs(30))
///         .build();
///     let policy = cache.policy();
///     assert_eq!(policy.max_capacity(), Some(1_000));
///     assert_eq!(policy.time_to_live(), Some(Duration::from_secs(30)));
///     assert_eq!(policy.time_to_idle(), None);
///     assert_eq!(policy.tick(), Duration::from_secs(1));
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub(crate) max_capacity: Option<u64>,
    pub(crate) weighted: bool,
    pub(crate) time_to_live: Option<Duration>,
    pub(crate) time_to_idle: Option<Duration>,
    pub(crate) tick: Duration,
}

impl Policy {
    /// The bound given to [`max_capacity`](crate::CacheBuilder::max_capacity): entries, or
    /// with a weigher, total weight; `None` for an unbounded cache.
    pub fn max_capacity(&self) -> Option<u64> {
        self.max_capacity
    }

    /// Whether a [`weigher`](crate::CacheBuilder::weigher) weighs the entries (else each
    /// weighs 1).
    pub fn is_weighted(&self) -> bool {
        self.weighted
    }

    /// The default time to live, if any.
    pub fn time_to_live(&self) -> Option<Duration> {
        self.time_to_live
    }

    /// The time to idle, if any.
    pub fn time_to_idle(&self) -> Option<Duration> {
        self.time_to_idle
    }

    /// The expiry task's tick: the wheel's resolution, and the most an expired entry waits
    /// for its removal.
    pub fn tick(&self) -> Duration {
        self.tick
    }
}
