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

use tokio::sync::mpsc::Sender;

use std::sync::{Arc, OnceLock, Weak};

use crate::cache::Cache;
use crate::config::Policy;
use crate::error::BuildError;
use crate::expiry::Expiry;
use crate::listener::{Notifier, Removal, RemovalCause};
use crate::loader::Reload;
use crate::stats::Counters;
use crate::store::capacity::Weigher;
use crate::store::handoff::Signals;
use crate::store::refresh::Rules;
use crate::store::{Settings, Store};
use crate::task;
use crate::time::clock::Clock;
use crate::time::clock::{DEFAULT_TICK, MAX_TICK, MIN_TICK};

/// Configures and builds a [`Cache`].
///
/// ```
/// use std::time::Duration;
///
/// #[tokio::main]
/// async fn main() {
///     let cache: ebb_cache::Cache<u64, String> = ebb_cache::Cache::builder()
///         .name("users")
///         .time_to_live(Duration::from_secs(30))
///         .expiry_jitter(0.05)
///         .tick(Duration::from_millis(100))
///         .build();
///     cache.insert(1, "ada".to_string());
///     assert_eq!(cache.get(&1).as_deref(), Some("ada"));
/// }
/// ```
#[must_use = "a builder does nothing until you call `build`"]
pub struct CacheBuilder<K, V, S = RandomState> {
    pub(crate) name: Option<String>,
    pub(crate) time_to_live: Option<Duration>,
    pub(crate) tick: Duration,
    pub(crate) jitter: f64,
    pub(crate) initial_capacity: usize,
    pub(crate) time_to_idle: Option<Duration>,
    pub(crate) record_stats: bool,
    pub(crate) stats_interval: Option<Duration>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics_interval: Option<Duration>,
    pub(crate) notifier: Notifier<K, V>,
    pub(crate) max_capacity: Option<u64>,
    pub(crate) weigher: Option<Weigher<K, V>>,
    pub(crate) expiry: Option<Arc<dyn Expiry<K, V>>>,
    /// The policy shards a test forces (see `__policy_shards`).
    pub(crate) policy_shards: Option<usize>,
    pub(crate) hasher: S,
    marker: PhantomData<fn(K, V)>,
}

impl<K, V, S: fmt::Debug> fmt::Debug for CacheBuilder<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("CacheBuilder");
        f.field("name", &self.name)
            .field("time_to_live", &self.time_to_live)
            .field("tick", &self.tick)
            .field("expiry_jitter", &self.jitter)
            .field("initial_capacity", &self.initial_capacity)
            .field("time_to_idle", &self.time_to_idle)
            .field("record_stats", &self.record_stats)
            .field("stats_interval", &self.stats_interval);
        #[cfg(feature = "metrics")]
        f.field("metrics_interval", &self.metrics_interval);
        f.field("notifier", &self.notifier)
            .field("max_capacity", &self.max_capacity)
            .field("weigher", &self.weigher.is_some())
            .field("expire_after", &self.expiry.is_some())
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
            time_to_idle: None,
            record_stats: false,
            stats_interval: None,
            #[cfg(feature = "metrics")]
            metrics_interval: None,
            notifier: Notifier::default(),
            max_capacity: None,
            weigher: None,
            expiry: None,
            policy_shards: None,
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

    /// The removal lag bound, [`DEFAULT_TICK`] unless set: an expired entry leaves the cache
    /// (and [`Cache::entry_count`]), and its listener hears of it, at most one tick after its
    /// deadline, with no calls needed. Reads never return an expired entry, whatever the tick:
    /// the tick only says how soon the memory is freed. A smaller tick wakes the task more
    /// often, but only while entries are due. From [`MIN_TICK`] to [`MAX_TICK`]; anything else is
    /// a [`BuildError::TickOutOfRange`].
    ///
    /// When many entries fall due at once, the bound grows with their number: the task
    /// removes them in batches of 1,024 and yields to other tasks between batches, so the last
    /// of them leave one tick plus the time it takes to remove the ones before them.
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
            time_to_idle: self.time_to_idle,
            record_stats: self.record_stats,
            stats_interval: self.stats_interval,
            #[cfg(feature = "metrics")]
            metrics_interval: self.metrics_interval,
            notifier: self.notifier,
            max_capacity: self.max_capacity,
            weigher: self.weigher,
            expiry: self.expiry,
            policy_shards: self.policy_shards,
            hasher,
            marker: PhantomData,
        }
    }

    /// Expire an entry also when it has not been read or written for `idle`. With a TTL (the
    /// cache's or the entry's own), whichever deadline comes first wins. A read extends the
    /// idle deadline only when that moves it by more than 1/16 of the tick (or of `idle`, if
    /// shorter), so an entry may expire up to that much before `idle` of true idleness;
    /// hits on a hot entry cost no write. Zero is a [`BuildError::ZeroTimeToIdle`]; a value
    /// at or past the horizon disables it.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// #[tokio::main]
    /// async fn main() {
    ///     let sessions: ebb_cache::Cache<u32, &str> = ebb_cache::Cache::builder()
    ///         .time_to_idle(Duration::from_secs(2))
    ///         .build();
    ///     sessions.insert(1, "alice");
    ///     tokio::time::sleep(Duration::from_millis(200)).await;
    ///     assert!(sessions.get(&1).is_some()); // read: idle again from now
    ///     tokio::time::sleep(Duration::from_millis(200)).await;
    ///     assert!(sessions.get(&1).is_some());
    ///     tokio::time::sleep(Duration::from_secs(2)).await;
    ///     assert!(sessions.get(&1).is_none()); // idle for 2 s: gone
    /// }
    /// ```
    pub fn time_to_idle(mut self, idle: Duration) -> Self {
        self.time_to_idle = Some(idle);
        self
    }

    /// Call `listener(key, value, cause)` for every entry that leaves the cache, exactly once,
    /// never under a lock: despite the name, every removal, not only evictions (expired,
    /// removed or invalidated, replaced by a write, evicted for size; see [`RemovalCause`],
    /// and which thread reports each). [`eviction_channel`](Self::eviction_channel) reports
    /// the same removals to a channel instead; a cache may have both.
    ///
    /// The listener runs on the expiry task (for expiry and `invalidate_all`) or on the
    /// thread that removed or replaced the entry, so keep it short: for slow or async work,
    /// use [`eviction_channel`](Self::eviction_channel). A panic in it is caught and logged.
    /// To call back into the cache, capture a [`WeakCache`](crate::WeakCache) (from
    /// [`Cache::downgrade`](crate::Cache::downgrade)): a `Cache` clone captured by its own
    /// listener would keep the cache, and its task, alive forever. Entries still held when
    /// the last handle is dropped are not reported.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// #[tokio::main]
    /// async fn main() {
    ///     let removed = Arc::new(AtomicUsize::new(0));
    ///     let seen = Arc::clone(&removed);
    ///     let cache: ebb_cache::Cache<u32, u32> = ebb_cache::Cache::builder()
    ///         .eviction_listener(move |_key, _value, cause| {
    ///             assert_eq!(cause, ebb_cache::RemovalCause::Explicit);
    ///             seen.fetch_add(1, Ordering::Relaxed);
    ///         })
    ///         .build();
    ///     cache.insert(1, 1);
    ///     cache.remove(&1);
    ///     assert_eq!(removed.load(Ordering::Relaxed), 1);
    /// }
    /// ```
    pub fn eviction_listener(
        mut self,
        listener: impl Fn(K, V, RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        self.notifier.listener = Some(Box::new(listener));
        self
    }

    /// Send a [`Removal`] for every entry that leaves the cache to `sender`,
    /// for a consumer that drains the channel in its own task (async work included).
    ///
    /// The cache never waits on the channel: when it is full, the notification is dropped
    /// and counted in [`CacheStats::notifications_dropped`](crate::CacheStats); when the
    /// receiver is gone, notifications are discarded. Size the channel for your bursts (an
    /// `invalidate_all` reports every entry). Works alongside
    /// [`eviction_listener`](Self::eviction_listener).
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() {
    ///     let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    ///     let cache: ebb_cache::Cache<u32, String> = ebb_cache::Cache::builder().eviction_channel(tx).build();
    ///     cache.insert(1, "one".into());
    ///     cache.insert(1, "uno".into());
    ///     let removal = rx.recv().await.unwrap();
    ///     assert_eq!((removal.key, removal.value.as_str()), (1, "one"));
    ///     assert_eq!(removal.cause, ebb_cache::RemovalCause::Replaced);
    /// }
    /// ```
    pub fn eviction_channel(mut self, sender: Sender<Removal<K, V>>) -> Self {
        self.notifier.channel = Some(sender);
        self
    }

    /// Bound the cache to `max` entries, or, with a [`weigher`](Self::weigher), to a total
    /// weight of `max`.
    ///
    /// When a write would go past the bound, the inserting thread evicts entries before
    /// `insert` returns (reporting them with [`RemovalCause::Size`]), choosing them with
    /// TinyLFU admission: new keys enter a small window, and leave it for the main queue only
    /// if a frequency sketch says they are asked for more often than the entry they would
    /// displace, so a one-off scan does not flush the entries that are read often, and a
    /// sweep longer than the cache keeps a stable part of it. Reads never take a lock for
    /// it: a hit bumps a 2-bit counter in the entry.
    ///
    /// Keys go to a few policy shards by hash, so that writers of different keys rarely
    /// wait for each other. Without a weigher each shard holds its share of `max`, and the
    /// entry count never exceeds `max` once an insert has returned (between a write and its
    /// eviction, one extra entry per concurrently inserting thread). With a weigher the
    /// shards share `max`, so what fits is the same on every machine (see
    /// [`weigher`](Self::weigher) for the bounded overshoot a heavy entry may cause).
    ///
    /// `max_capacity(0)` stores nothing: every insert is evicted at once (and reported).
    /// Expired entries stop counting as soon as they are removed.
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() {
    ///     let cache: ebb_cache::Cache<u32, u32> = ebb_cache::Cache::builder().max_capacity(100).build();
    ///     for k in 0..1000 {
    ///         cache.insert(k, k);
    ///         assert!(cache.entry_count() <= 100);
    ///     }
    /// }
    /// ```
    pub fn max_capacity(mut self, max: u64) -> Self {
        self.max_capacity = Some(max);
        self
    }

    /// Weigh entries for [`max_capacity`](Self::max_capacity): `weigher(&key, &value)` is
    /// the entry's weight. It is asked once per written value, on the writing thread before
    /// any lock is taken (it may call into the same cache through a
    /// [`WeakCache`](crate::WeakCache)); the cache keeps each entry's weight beside its policy
    /// state (a map per policy shard: about 20 to 40 bytes an entry for 8-byte keys), so
    /// an overwrite, an eviction or a removal never asks again. An entry of weight 0
    /// costs nothing and is never evicted for room; an entry heavier than the whole capacity
    /// is evicted as soon as it is written. Any lighter one fits, whatever the core count.
    ///
    /// One write evicts at most 64 entries. An entry heavier than that many victims can
    /// make room for (a 1 MiB value in a 1 MiB cache of 4 KiB pages, say) is kept, if the
    /// policy admits it, and leaves the cache over its capacity for a moment: each later
    /// write evicts up to 64 more, and the expiry task, woken for it, evicts the rest at
    /// once, 64 at a time, yielding between. The overshoot is bounded: a write that would
    /// take the total past twice `max` is not kept (it is evicted at once, as `Size`), so
    /// [`weighted_size`](crate::Cache::weighted_size) never exceeds `2 * max`, and exceeds
    /// `max` only after a write needed more than 64 victims.
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() {
    ///     let pages: ebb_cache::Cache<u32, Vec<u8>> = ebb_cache::Cache::builder()
    ///         .max_capacity(1 << 20) // bytes
    ///         .weigher(|_key, page: &Vec<u8>| page.len().try_into().unwrap_or(u32::MAX))
    ///         .build();
    ///     pages.insert(1, vec![0; 4096]);
    /// }
    /// ```
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u32 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Box::new(weigher));
        self
    }

    /// Give each entry its own lifetime with a per-entry [`Expiry`] policy, asked when an
    /// entry is created or updated, and on reads if it [observes reads](Expiry::observes_reads).
    /// The cache's [`time_to_live`](Self::time_to_live), if set, stays an upper bound counted
    /// from each write; [`insert_with_ttl`](crate::Cache::insert_with_ttl) and a loader's own
    /// TTL ([`get_with_expiry`](crate::Cache::get_with_expiry)) are taken as given, without
    /// asking the policy. Not with [`time_to_idle`](Self::time_to_idle) (a
    /// [`BuildError::ExpiryWithTimeToIdle`]): an `Expiry` that observes reads does what a
    /// time-to-idle does, and more.
    ///
    /// A cache without an `Expiry` pays nothing for this; with one, each write looks the key
    /// up once more (to tell a create from an update) and calls the policy outside any lock.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// /// Tokens live as long as they say.
    /// struct OwnLifetime;
    /// impl ebb_cache::Expiry<&'static str, (String, Duration)> for OwnLifetime {
    ///     fn expire_after_create(
    ///         &self,
    ///         _key: &&'static str,
    ///         token: &(String, Duration),
    ///         _at: Instant,
    ///     ) -> Option<Duration> {
    ///         Some(token.1)
    ///     }
    /// }
    ///
    /// #[tokio::main]
    /// async fn main() {
    ///     let tokens = ebb_cache::Cache::builder().expire_after(OwnLifetime).build();
    ///     tokens.insert("api", ("t0k3n".to_string(), Duration::from_millis(50)));
    ///     tokio::time::sleep(Duration::from_millis(60)).await;
    ///     assert_eq!(tokens.get("api"), None);
    /// }
    /// ```
    pub fn expire_after(mut self, expiry: impl Expiry<K, V>) -> Self {
        self.expiry = Some(Arc::new(expiry));
        self
    }

    /// Count hits, misses, writes, removals by cause and loads for
    /// [`Cache::stats`](crate::Cache::stats). Off by default: counting costs a relaxed atomic
    /// add on a per-thread stripe per operation.
    pub fn record_stats(mut self) -> Self {
        self.record_stats = true;
        self
    }

    /// Every `interval`, have the expiry task log one `tracing::info!` line for the cache if
    /// it had any lookups since the last one, in the spirit of go-zero's
    /// `cache(NAME) - qpm: N, hit_ratio: P%, elements: E, hit: H, miss: M`. A plain-text log
    /// shows each figure twice: once in that message, for people, and once as a structured
    /// field (`qpm=…`), for log pipelines that parse fields. The counts are those since the
    /// last line. Implies [`record_stats`](Self::record_stats). This is the one
    /// reason an otherwise idle cache wakes up (with the `metrics` feature,
    /// `publish_metrics(interval)` is the other). Zero is a
    /// [`BuildError::ZeroStatsInterval`].
    pub fn stats_interval(mut self, interval: Duration) -> Self {
        self.stats_interval = Some(interval);
        self.record_stats = true;
        self
    }

    /// Test scaffolding (feature `internals`), not part of the API: split a bounded cache's
    /// policy over exactly `shards` shards (rounded up to a power of two) instead of a number
    /// that follows the core count.
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn __policy_shards(mut self, shards: usize) -> Self {
        self.policy_shards = Some(shards);
        self
    }

    /// Every `interval`, have the expiry task publish the cache's statistics through the
    /// [`metrics`](https://docs.rs/metrics/0.24) facade, to the global recorder, labelled
    /// `cache` with the cache's [`name`](Self::name) (`"ebb"` when it has none: give each
    /// publishing cache its own name, or their series mix). Needs the `metrics` cargo feature.
    /// Implies [`record_stats`](Self::record_stats). Zero is a
    /// [`BuildError::ZeroMetricsInterval`].
    ///
    /// The metrics, each described in `docs/metrics.md`:
    ///
    /// - counters `ebb_cache_hits_total`, `ebb_cache_misses_total`,
    ///   `ebb_cache_inserts_total`, `ebb_cache_updates_total`,
    ///   `ebb_cache_removals_total` (label `cause`: `expired`, `explicit`, `replaced`,
    ///   `size`), `ebb_cache_loads_total` (label `result`: `success`, `failure`),
    ///   `ebb_cache_load_nanoseconds_total` and `ebb_cache_notifications_dropped_total`;
    /// - gauges `ebb_cache_entries`, `ebb_cache_weighted_size`,
    ///   `ebb_cache_expiry_lag_max_seconds` and `ebb_cache_expiry_lag_mean_seconds`.
    ///
    /// Each is the [`CacheStats`](crate::CacheStats) figure of the same meaning, published
    /// as an absolute value: `get` and `insert` never call the facade, they only count (as
    /// with `record_stats`), and a publish costs one [`Cache::stats`] snapshot. Besides a
    /// [`stats_interval`](Self::stats_interval) line, this is the one reason an otherwise idle
    /// cache wakes up: once per `interval`. It publishes while the cache's expiry task runs
    /// (see [`build`](Self::build)); a recorder must be installed before the first publish,
    /// which registers the cache's metrics with it for good.
    ///
    /// What the task published may be up to one `interval` old when it is scraped: call
    /// [`Cache::publish_metrics`] in the scrape handler for an exact scrape. A cache that is
    /// only ever published that way needs no interval at all: build it with `record_stats()`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// #[tokio::main]
    /// async fn main() {
    ///     // Install a recorder first (a Prometheus exporter's, say); without one the
    ///     // metrics go nowhere.
    ///     let users: ebb_cache::Cache<u64, String> = ebb_cache::Cache::builder()
    ///         .name("users") // the `cache` label
    ///         .publish_metrics(Duration::from_secs(15))
    ///         .build();
    ///     users.insert(1, "ada".to_string());
    /// }
    /// ```
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(mut self, interval: Duration) -> Self {
        self.metrics_interval = Some(interval);
        self.record_stats = true;
        self
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
        if self.time_to_idle == Some(Duration::ZERO) {
            return Err(BuildError::ZeroTimeToIdle);
        }
        if self.time_to_idle.is_some() && self.expiry.is_some() {
            return Err(BuildError::ExpiryWithTimeToIdle);
        }
        if self.stats_interval == Some(Duration::ZERO) {
            return Err(BuildError::ZeroStatsInterval);
        }
        #[cfg(feature = "metrics")]
        if self.metrics_interval == Some(Duration::ZERO) {
            return Err(BuildError::ZeroMetricsInterval);
        }
        Ok(())
    }

    /// Build the cache. Inside a Tokio runtime its expiry task starts there at once; outside
    /// any (a cache in a `static`, say), the cache works at once (reads, writes, exact
    /// expiry on reads) and its task starts on the first runtime that writes to it.
    ///
    /// # Panics
    ///
    /// With an invalid option, or inside a runtime without timers; the message names the fix.
    /// [`try_build`](Self::try_build) returns these as errors.
    #[track_caller]
    pub fn build(self) -> Cache<K, V, S> {
        match self.try_build() {
            Ok(cache) => cache,
            Err(e) => panic!("{e}"),
        }
    }

    /// Build the cache, or say why it cannot be built: like [`build`](Self::build), with the
    /// errors returned.
    pub fn try_build(self) -> Result<Cache<K, V, S>, BuildError> {
        let handle = Handle::try_current().ok();
        self.start(handle.as_ref(), None)
    }

    /// Build the cache from any thread, spawning its expiry task on `handle`'s runtime.
    ///
    /// The task runs only while that runtime runs tasks: a multi-thread runtime always does;
    /// a current-thread runtime only while some thread is inside its `block_on`. Until then
    /// reads stay exact (an expired entry is never returned) and writes work, but nothing
    /// removes expired entries, notifies listeners for them, or frees their bookkeeping: with
    /// a current-thread runtime that nobody drives, they pile up. Drive it, or use a
    /// multi-thread runtime.
    ///
    /// ```
    /// // A plain `main`: no Tokio context here, so the runtime is named.
    /// fn main() {
    ///     let runtime = tokio::runtime::Runtime::new().unwrap();
    ///     let cache: ebb_cache::Cache<u32, u32> =
    ///         ebb_cache::Cache::builder().build_on(runtime.handle());
    ///     cache.insert(1, 1);
    ///     assert_eq!(cache.get(&1), Some(1));
    /// }
    /// ```
    ///
    /// # Panics
    ///
    /// On a runtime without timers or with an invalid option, like [`build`](Self::build).
    #[track_caller]
    pub fn build_on(self, handle: &Handle) -> Cache<K, V, S> {
        match self.start(Some(handle), None) {
            Ok(cache) => cache,
            Err(e) => panic!("{e}"),
        }
    }

    /// Validate, make the store (with the refresh rules and loader of a loading cache), and
    /// start its expiry task on `handle`'s runtime, if any.
    pub(crate) fn start(
        self,
        handle: Option<&Handle>,
        refresh: Option<(Rules, Arc<dyn Reload<K, V>>)>,
    ) -> Result<Cache<K, V, S>, BuildError> {
        self.validate()?;
        let clock = Clock::new(self.tick);
        let shards = shard_count();
        let idle = self
            .time_to_idle
            .filter(|idle| *idle < clock.horizon())
            .map_or(0, |idle| idle.as_nanos() as u64);
        let policy = Policy {
            max_capacity: self.max_capacity,
            weighted: self.max_capacity.is_some() && self.weigher.is_some(),
            time_to_live: self.time_to_live,
            time_to_idle: self.time_to_idle,
            tick: self.tick,
        };
        let settings = Settings {
            policy,
            name: self
                .name
                .map_or(std::borrow::Cow::Borrowed("ebb"), Into::into),
            clock,
            idle,
            counters: self.record_stats.then(Counters::new),
            notifier: self.notifier,
            capacity: self.max_capacity.map(|max| (max, self.weigher)),
            policy_shards: self.policy_shards,
            expiry_reads: self.expiry.as_ref().is_some_and(|e| e.observes_reads()),
            expiry: self.expiry,
            time_to_live: self.time_to_live,
            jitter: self.jitter,
            stats_interval: self.stats_interval,
            #[cfg(feature = "metrics")]
            metrics_interval: self.metrics_interval,
            refresh,
        };
        // The signals keep a `Weak` of the store from the start: how a task that has not run
        // yet reaches it (see `Signals::store`).
        let store = Arc::new_cyclic(|store: &Weak<Store<K, V, S>>| {
            let signals = Arc::new(Signals::with_store(store.clone()));
            Store::new(
                settings,
                self.initial_capacity,
                shards,
                self.hasher,
                signals,
            )
        });
        if let Some(handle) = handle {
            task::start(&store, handle)?;
        }
        Ok(Cache::from_store(store))
    }
}

impl<K, V> Cache<K, V> {
    /// A [`CacheBuilder`] with the default settings.
    pub fn builder() -> CacheBuilder<K, V> {
        CacheBuilder::new()
    }
}

/// Shards of the map and stripes of the hand-off: four per core, as DashMap chooses. Asking
/// the OS for the core count costs tens of microseconds, so it is asked once.
fn shard_count() -> usize {
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| {
        (std::thread::available_parallelism().map_or(1, usize::from) * 4)
            .next_power_of_two()
            .max(2)
    })
}
