//! [`CacheBuilder`]: every option, its validation, and the three ways to build.
//!
//! Invariant: an option outside its documented range is a [`BuildError`], never a silent
//! clamp; `build` turns that error into a panic whose message names the fix.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::cache::Cache;

/// The shortest tick ebb accepts.
pub const MIN_TICK: Duration = Duration::from_millis(1);
/// The longest tick ebb accepts.
pub const MAX_TICK: Duration = Duration::from_secs(60);
/// The default tick: expired entries leave the cache at most this long after their deadline.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);

/// Why a cache could not be built.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BuildError {
    /// `build()` or `try_build()` was called outside a Tokio runtime.
    NoRuntime,
    /// The runtime was built without timers.
    TimersDisabled,
    /// `tick` is outside [`MIN_TICK`]`..=`[`MAX_TICK`].
    TickOutOfRange(Duration),
    /// `time_to_live` is zero.
    ZeroTimeToLive,
    /// `expiry_jitter` is not a number in `0.0..1.0`.
    InvalidJitter(f64),
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
        }
    }
}

impl std::error::Error for BuildError {}

/// Configures and builds a [`Cache`].
///
/// ```
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache: ebb::Cache<u64, String> = ebb::Cache::builder()
///     .name("users")
///     .time_to_live(Duration::from_secs(30))
///     .expiry_jitter(0.05)
///     .tick(Duration::from_millis(100))
///     .build();
/// cache.insert(1, "ada".to_string());
/// assert_eq!(cache.get(&1).as_deref(), Some("ada"));
/// # }
/// ```
#[must_use = "a builder does nothing until you call `build`"]
pub struct CacheBuilder<K, V, S = RandomState> {
    pub(crate) name: Option<String>,
    pub(crate) time_to_live: Option<Duration>,
    pub(crate) tick: Duration,
    pub(crate) jitter: f64,
    pub(crate) initial_capacity: usize,
    pub(crate) hasher: S,
    marker: PhantomData<fn(K, V)>,
}

impl<K, V, S: fmt::Debug> fmt::Debug for CacheBuilder<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("name", &self.name)
            .field("time_to_live", &self.time_to_live)
            .field("tick", &self.tick)
            .field("expiry_jitter", &self.jitter)
            .field("initial_capacity", &self.initial_capacity)
            .field("hasher", &self.hasher)
            .finish()
    }
}

impl<K, V> Default for CacheBuilder<K, V> {
    fn default() -> Self {
        CacheBuilder {
            name: None,
            time_to_live: None,
            tick: DEFAULT_TICK,
            jitter: 0.0,
            initial_capacity: 0,
            hasher: RandomState::new(),
            marker: PhantomData,
        }
    }
}

impl<K, V> CacheBuilder<K, V> {
    /// A builder with no TTL, the default 1 s tick, no jitter and the standard hasher.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<K, V, S> CacheBuilder<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// A name for tracing spans and events.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How long an entry lives after it is written, unless it is written with its own TTL
    /// ([`Cache::insert_with_ttl`]). Unset, entries never expire. A TTL at or past the
    /// wheel's horizon ([`Cache::horizon`]; `Duration::MAX` for instance) never expires.
    /// Zero is a [`BuildError::ZeroTimeToLive`].
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = Some(ttl);
        self
    }

    /// The wheel's resolution, [`DEFAULT_TICK`] unless set: an expired entry leaves the cache
    /// (and [`Cache::entry_count`]) at most one tick after its deadline. Reads never return an
    /// expired entry, whatever the tick. From [`MIN_TICK`] to [`MAX_TICK`]; anything else is
    /// a [`BuildError::TickOutOfRange`].
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Spread default-TTL deadlines by up to `± fraction` of the TTL, so that entries written
    /// together do not expire (and get reloaded) together. `0.0` (the default) disables it;
    /// values outside `0.0..1.0`, or NaN, are a [`BuildError::InvalidJitter`]. Never applied
    /// to a TTL given with [`Cache::insert_with_ttl`].
    pub fn expiry_jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// Room for this many entries before the map first grows.
    pub fn initial_capacity(mut self, entries: usize) -> Self {
        self.initial_capacity = entries;
        self
    }

    /// Hash keys with `hasher` instead of the standard library's `RandomState`.
    ///
    /// `RandomState` (SipHash with random keys) resists hash flooding by untrusted keys; a
    /// faster hasher is only safe when keys are trusted.
    pub fn hasher<S2>(self, hasher: S2) -> CacheBuilder<K, V, S2> {
        CacheBuilder {
            name: self.name,
            time_to_live: self.time_to_live,
            tick: self.tick,
            jitter: self.jitter,
            initial_capacity: self.initial_capacity,
            hasher,
            marker: PhantomData,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        if !(MIN_TICK..=MAX_TICK).contains(&self.tick) {
            return Err(BuildError::TickOutOfRange(self.tick));
        }
        if self.time_to_live == Some(Duration::ZERO) {
            return Err(BuildError::ZeroTimeToLive);
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(BuildError::InvalidJitter(self.jitter));
        }
        Ok(())
    }

    /// Build the cache and spawn its expiry task on the current Tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, on a runtime without timers, or with an invalid option; the
    /// message names the fix. [`try_build`](Self::try_build) returns these as errors.
    #[track_caller]
    pub fn build(self) -> Cache<K, V, S> {
        self.try_build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Build the cache, or say why it cannot be built.
    pub fn try_build(self) -> Result<Cache<K, V, S>, BuildError> {
        let handle = Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        Cache::start(self, &handle)
    }

    /// Build the cache from any thread, spawning its expiry task on `handle`'s runtime.
    ///
    /// ```
    /// let runtime = tokio::runtime::Runtime::new().unwrap();
    /// let cache: ebb::Cache<u32, u32> = ebb::Cache::builder().build_on(runtime.handle());
    /// cache.insert(1, 1);
    /// assert_eq!(cache.get(&1), Some(1));
    /// ```
    ///
    /// # Panics
    ///
    /// On a runtime without timers or with an invalid option, like [`build`](Self::build).
    #[track_caller]
    pub fn build_on(self, handle: &Handle) -> Cache<K, V, S> {
        Cache::start(self, handle).unwrap_or_else(|e| panic!("{e}"))
    }
}
