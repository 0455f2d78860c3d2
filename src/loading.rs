//! [`LoadingCache`]: a cache that owns its loader, and can therefore refresh ahead
//! ([`LoadingCacheBuilder::refresh_after`]); and its builder.
//!
//! It is a [`Cache`] (it dereferences to one, so every method of a cache works on it) plus
//! the loader, type-erased so that the type names the error and not the closure. The rules of
//! refresh live in the store (`store/refresh.rs`) and the reload tasks in `refresh.rs`: this
//! module is the public face and the options.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::builder::CacheBuilder;
use crate::cache::Cache;
use crate::error::BuildError;
use crate::load::{Fallible, Load};
use crate::loader::{ErasedError, Loading, Reload};
use crate::refresh::{Job, LoadPanicked, LoadTimedOut};
use crate::store::flight::{Outcome, Role};
use crate::store::refresh::Rules;

/// Reload tasks a cache runs at most at a time, unless
/// [`max_concurrent_reloads`](LoadingCacheBuilder::max_concurrent_reloads) says otherwise.
pub const DEFAULT_MAX_CONCURRENT_RELOADS: usize = 16;

/// How long a reload may run before it is given up, unless
/// [`load_timeout`](LoadingCacheBuilder::load_timeout) says otherwise.
pub const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long after a reload that stored nothing (it failed, panicked or timed out) its entry
/// may be reloaded again, unless [`reload_backoff`](LoadingCacheBuilder::reload_backoff)
/// says otherwise.
pub const DEFAULT_RELOAD_BACKOFF: Duration = Duration::from_secs(1);

/// After a failed load served a stale copy, how long that key's `fetch`es get the stale
/// copy without calling the source, unless
/// [`stale_throttle`](LoadingCacheBuilder::stale_throttle) says otherwise.
pub const DEFAULT_STALE_THROTTLE: Duration = Duration::from_secs(5);

/// The user's loader, boxed: a key in, a boxed future of `Result<V, E>` out.
type BoxedLoader<K, V, E> =
    Box<dyn Fn(K) -> Pin<Box<dyn Future<Output = Result<V, E>> + Send>> + Send + Sync>;

/// A cache's own loader, typed for [`LoadingCache::fetch`] and erased for reloads.
struct Owned<K, V, E> {
    load: BoxedLoader<K, V, E>,
}

impl<K, V, E> Reload<K, V> for Owned<K, V, E>
where
    K: Send + 'static,
    V: Send + 'static,
    E: fmt::Debug + Send + Sync + 'static,
{
    fn load(&self, key: K) -> Loading<V> {
        let loading = (self.load)(key);
        Box::pin(async move { loading.await.map_err(|e| Arc::new(e) as ErasedError) })
    }

    fn describe(&self, error: &ErasedError) -> String {
        error
            .downcast_ref::<E>()
            .map_or_else(String::new, |e| format!("{e:?}"))
    }
}

/// A cache that owns its loader: [`fetch`](Self::fetch) loads a missing key with it, and with
/// [`refresh_after`](LoadingCacheBuilder::refresh_after) the expiry task reloads the entries
/// that are read before they expire, so that a hot key's callers never wait for its load.
///
/// Built with [`CacheBuilder::loader`]. It dereferences to a [`Cache`]: `get`, `insert`,
/// `get_with` and every other method of a cache work on it unchanged (`get` is a read
/// like `fetch`'s hit, and counts for refresh). Clones share the cache and the loader.
///
/// The loader is owned by the cache: a loader that captures a strong handle of its own
/// cache keeps it alive forever. Give it a [`WeakCache`](crate::WeakCache) instead (see
/// [`Cache::downgrade`]), as for a listener.
///
/// ```
/// use std::time::Duration;
///
/// #[tokio::main]
/// async fn main() {
///     let prices = ebb_cache::Cache::builder()
///         .time_to_live(Duration::from_secs(60))
///         .loader(|sku: u32| async move {
///             // A database or another service, in real life.
///             Ok::<u64, std::io::Error>(u64::from(sku) * 100)
///         })
///         .refresh_after(Duration::from_secs(45))
///         .build();
///
///     assert_eq!(prices.fetch(7).await.unwrap(), 700); // loaded
///     assert_eq!(prices.fetch(7).await.unwrap(), 700); // a hit
///     assert_eq!(prices.get(&7), Some(700)); // every `Cache` method works
/// }
/// ```
pub struct LoadingCache<K, V, E, S = RandomState> {
    cache: Cache<K, V, S>,
    loader: Arc<Owned<K, V, E>>,
}

impl<K, V, E, S> Clone for LoadingCache<K, V, E, S> {
    fn clone(&self) -> Self {
        LoadingCache {
            cache: self.cache.clone(),
            loader: Arc::clone(&self.loader),
        }
    }
}

impl<K, V, E, S> fmt::Debug for LoadingCache<K, V, E, S>
where
    K: Hash + Eq,
    S: BuildHasher + Clone,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadingCache")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl<K, V, E, S> Deref for LoadingCache<K, V, E, S> {
    type Target = Cache<K, V, S>;

    fn deref(&self) -> &Cache<K, V, S> {
        &self.cache
    }
}

impl<K, V, E, S> LoadingCache<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: fmt::Debug + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// The plain cache this loading cache is (the same store: what one sees, the other sees).
    pub fn as_cache(&self) -> &Cache<K, V, S> {
        &self.cache
    }

    /// The value for `key`, loaded with the cache's loader if it is missing or expired.
    ///
    /// Single-flight, and one registry with [`get_with`](Cache::get_with) and its family and
    /// with reloads: of all concurrent callers for one key, one runs the loader and the
    /// others wait for it; a caller that finds a reload of the key running (its entry expired
    /// during it) waits for that reload. An error is not cached: every caller that shared the
    /// failed load gets the same `Arc<E>`, and the next call loads again. A write, remove or
    /// `invalidate_all` of the key during the load wins, as for `get_with`.
    ///
    /// A hit counts as a read for refresh-ahead, as `get` does. The loader runs in the
    /// calling task: a panic in it reaches this caller (and the waiting callers start over).
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() {
    ///     let squares = ebb_cache::Cache::builder()
    ///         .loader(|n: u64| async move { n.checked_mul(n).ok_or("overflow") })
    ///         .build();
    ///     assert_eq!(squares.fetch(12).await.unwrap(), 144);
    ///     assert_eq!(*squares.fetch(u64::MAX).await.unwrap_err(), "overflow");
    /// }
    /// ```
    pub async fn fetch(&self, key: K) -> Result<V, Arc<E>> {
        self.cache.ensure_task();
        let store = self.cache.store();
        if let Some(value) = store.get(&key) {
            return Ok(value);
        }
        if store.rules().is_some_and(|rules| rules.loads_in_tasks()) {
            return self.fetch_guarded(key).await;
        }
        // The loader is called only if this caller leads: the future is lazy.
        let (loader, owned) = (Arc::clone(&self.loader), key.clone());
        let loading = async move { (loader.load)(owned).await };
        let mut load = Load::missed(store, key, loading);
        std::future::poll_fn(|cx| load.poll_as::<Fallible<E>>(cx)).await
    }

    /// `fetch` after a miss, in a cache with `stale_if_error` or `soft_timeout`: the load
    /// runs in a task of its own, and a stale copy stands in for a failed or slow one.
    async fn fetch_guarded(&self, key: K) -> Result<V, Arc<E>> {
        let shared = self.cache.shared_store();
        let store = &**shared;
        let rules = *store.rules().expect("a loading cache has rules");
        loop {
            if let Some(copy) = store.stale_copy(&key) {
                if copy.throttled_until.is_some_and(|t| t > store.clock.now()) {
                    return Ok(self.serve_stale(copy.value, "the source failed moments ago"));
                }
            }
            let (flight, leads) = match store.flights.join_or_lead(&key) {
                Role::Lead(flight) => {
                    // Registered first, looked last: a write before registration shows here.
                    if let Some(value) = store.peek(&key) {
                        store
                            .flights
                            .end(&key, &flight, || Outcome::Value(value.clone()));
                        return Ok(value);
                    }
                    let Ok(handle) = Handle::try_current() else {
                        store.flights.abandon(&key, &flight);
                        panic!(
                            "ebb: with stale_if_error or soft_timeout, LoadingCache::fetch runs \
                             its load as a task, so it must be awaited within a Tokio runtime"
                        );
                    };
                    flight.leader_waits();
                    let led = crate::sync::Arc::clone(&flight);
                    crate::refresh::spawn_one(shared, Job::Load, key.clone(), led, &handle);
                    (flight, true)
                }
                Role::Wait(flight) => (flight, false),
            };
            let outcome = match rules.soft_timeout {
                None => flight.wait().await,
                Some(soft) => {
                    tokio::select! {
                        outcome = flight.wait() => outcome,
                        () = tokio::time::sleep(soft) => {
                            if let Some(copy) = store.stale_copy(&key) {
                                return Ok(self.serve_stale(copy.value, "the load is slow"));
                            }
                            flight.wait().await
                        }
                    }
                }
            };
            let error = match outcome {
                Outcome::Value(value) => return Ok(value),
                Outcome::Error(error) => error,
                // The load's task was dropped (its runtime shut down): start over.
                Outcome::Nothing | Outcome::Abandoned => continue,
            };
            let failed =
                error.is::<E>() || error.is::<LoadPanicked>() || error.is::<LoadTimedOut>();
            if failed {
                if let Some(copy) = store.stale_copy(&key) {
                    let until = store
                        .clock
                        .now()
                        .saturating_add(rules.stale_throttle.as_nanos() as u64);
                    store.throttle_stale(&key, until);
                    return Ok(self.serve_stale(copy.value, "the source failed"));
                }
            }
            if let Ok(error) = error.clone().downcast::<E>() {
                return Err(error);
            }
            if leads && error.is::<LoadPanicked>() {
                panic!(
                    "ebb: the cache's loader panicked (see the log), and no stale copy of the \
                     key was left to return"
                );
            }
            // Timed out with no stale copy, or another caller's load of another kind: start
            // over (a new load, bounded by the load timeout again).
        }
    }

    /// Count and log a stale value served, and return it.
    fn serve_stale(&self, value: V, why: &'static str) -> V {
        let store = self.cache.store();
        store.count(crate::stats::Counter::StaleServed, 1);
        tracing::warn!(cache = %store.name, why, "served a stale value");
        value
    }

    /// Reload `key` now, with the cache's loader, in a task of its own on the current
    /// runtime; the returned future resolves to the reload's outcome, and may be dropped
    /// without stopping it.
    ///
    /// Deduplicated: if a load or reload of the key is running, no other starts, and the
    /// future resolves to that one's outcome. The reloaded value is stored as a reload's is
    /// (with the TTL the replaced entry was written with, or the cache's default for a key
    /// that was missing), unless a write, remove or `invalidate_all` of the key wins
    /// meanwhile (the value is still returned). A failure keeps the old value. Explicit
    /// refreshes are not limited by
    /// [`max_concurrent_reloads`](LoadingCacheBuilder::max_concurrent_reloads) (the caller
    /// chose to start them) but are by the reload timeout.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// #[tokio::main]
    /// async fn main() {
    ///     let version = Arc::new(AtomicU64::new(1));
    ///     let source = Arc::clone(&version);
    ///     let config = ebb_cache::Cache::builder()
    ///         .loader(move |_: &str| {
    ///             let v = source.load(Ordering::SeqCst);
    ///             async move { Ok::<u64, String>(v) }
    ///         })
    ///         .build();
    ///     assert_eq!(config.fetch("flags").await.unwrap(), 1);
    ///     version.store(2, Ordering::SeqCst);
    ///     assert_eq!(config.refresh("flags").await.unwrap(), 2);
    ///     assert_eq!(config.get("flags"), Some(2));
    /// }
    /// ```
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime: the reload runs as a task, so call it from within one.
    #[track_caller]
    pub fn refresh(
        &self,
        key: K,
    ) -> impl Future<Output = Result<V, RefreshError<E>>> + Send + 'static {
        let Ok(handle) = Handle::try_current() else {
            panic!(
                "ebb: LoadingCache::refresh starts a task, so it must be called from within a \
                 Tokio runtime: call it inside `#[tokio::main]`, a spawned task or \
                 `Runtime::block_on`"
            );
        };
        self.cache.ensure_task();
        let store = self.cache.shared_store();
        let flight = match store.flights.join_or_lead(&key) {
            Role::Wait(flight) => flight,
            Role::Lead(flight) => {
                flight.leader_waits();
                let flight_ = crate::sync::Arc::clone(&flight);
                crate::refresh::spawn_one(store, Job::Reload, key, flight_, &handle);
                flight
            }
        };
        async move {
            match flight.wait().await {
                Outcome::Value(value) => Ok(value),
                Outcome::Error(error) => match error.downcast::<E>() {
                    Ok(error) => Err(RefreshError::Failed(error)),
                    Err(_) => Err(RefreshError::NoValue),
                },
                Outcome::Nothing | Outcome::Abandoned => Err(RefreshError::NoValue),
            }
        }
    }
}

/// Why [`LoadingCache::refresh`] produced no value. Either way the cache keeps what it held.
#[derive(Debug)]
#[non_exhaustive]
pub enum RefreshError<E> {
    /// The loader returned this error.
    Failed(Arc<E>),
    /// The reload ended without a value: its loader panicked or ran past the reload
    /// timeout, the cache was dropped, or it joined another caller's load of the key that
    /// ended without a value of this type.
    NoValue,
}

impl<E: fmt::Debug> fmt::Display for RefreshError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefreshError::Failed(e) => write!(f, "ebb: the reload failed: {e:?}"),
            RefreshError::NoValue => f.write_str(
                "ebb: the reload ended without a value (its loader panicked or ran past the \
                 reload timeout, or the cache was dropped)",
            ),
        }
    }
}

impl<E: fmt::Debug> std::error::Error for RefreshError<E> {}

/// Configures and builds a [`LoadingCache`]: a [`CacheBuilder`] that was given a loader
/// ([`CacheBuilder::loader`]), plus the refresh options.
#[must_use = "a builder does nothing until you call `build`"]
pub struct LoadingCacheBuilder<K, V, E, S = RandomState> {
    cache: CacheBuilder<K, V, S>,
    loader: Arc<Owned<K, V, E>>,
    rules: Rules,
}

impl<K, V, E, S: fmt::Debug> fmt::Debug for LoadingCacheBuilder<K, V, E, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadingCacheBuilder")
            .field("cache", &self.cache)
            .field("refresh_after", &self.rules.after)
            .field("refresh_jitter", &self.rules.jitter)
            .field("max_concurrent_reloads", &self.rules.max_concurrent)
            .field("load_timeout", &self.rules.timeout)
            .field("reload_backoff", &self.rules.backoff)
            .field("stale_if_error", &self.rules.stale)
            .field("stale_throttle", &self.rules.stale_throttle)
            .field("soft_timeout", &self.rules.soft_timeout)
            .finish()
    }
}

impl<K, V, S> CacheBuilder<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// Give the cache its own loader: `build` then makes a [`LoadingCache`], whose
    /// [`fetch`](LoadingCache::fetch) loads missing keys with it and which can refresh ahead
    /// ([`refresh_after`](LoadingCacheBuilder::refresh_after)).
    ///
    /// Give the cache's own options (`time_to_live`, `max_capacity`, ...) before this call:
    /// what it returns has only the loader's and the refresh options.
    ///
    /// The loader takes the key by value and returns an owned (`'static`, `Send`) future of
    /// `Result<V, E>`; errors are shared with the callers of the failed load and logged (with
    /// their `Debug`) when a reload fails. It is called from the fetching task, or from a
    /// reload task on the cache's runtime.
    pub fn loader<E, F, Fut>(self, loader: F) -> LoadingCacheBuilder<K, V, E, S>
    where
        E: fmt::Debug + Send + Sync + 'static,
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        LoadingCacheBuilder {
            cache: self,
            loader: Arc::new(Owned {
                load: Box::new(move |key| Box::pin(loader(key))),
            }),
            rules: Rules {
                after: None,
                jitter: 0.0,
                max_concurrent: DEFAULT_MAX_CONCURRENT_RELOADS,
                timeout: DEFAULT_LOAD_TIMEOUT,
                backoff: DEFAULT_RELOAD_BACKOFF,
                stale: None,
                stale_throttle: DEFAULT_STALE_THROTTLE,
                soft_timeout: None,
            },
        }
    }
}

impl<K, V, E, S> LoadingCacheBuilder<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: fmt::Debug + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// Refresh ahead: an entry read since it was written is reloaded `after` its write, in
    /// the background, while callers keep getting the current value; an entry first read
    /// later is reloaded soon after that read (the expiry task looks at it again, half way
    /// to its deadline each time), and an entry nobody reads is not reloaded and simply
    /// expires.
    ///
    /// Reads only set a bit on the entry: the expiry task starts the reloads, as tasks on
    /// the cache's runtime. A reloaded entry keeps the TTL it was written with, counted from
    /// the reload. A failed, panicking or timed-out reload keeps the current value and is
    /// retried no sooner than the [`reload_backoff`](Self::reload_backoff); the TTL still
    /// ends an entry whose reloads keep failing. A write, remove or `invalidate_all` of the
    /// key during a reload wins.
    ///
    /// `after` must be shorter than the cache's `time_to_live` when there is one, and not
    /// zero; an entry whose own TTL (`insert_with_ttl`) is shorter is not reloaded. Without
    /// a TTL, an entry never read after `after` is looked at once every `after`.
    pub fn refresh_after(mut self, after: Duration) -> Self {
        self.rules.after = Some(after);
        self
    }

    /// Spread refreshes: each write's refresh comes at a random point of `[after * (1 -
    /// fraction), after]`, so that keys written together do not all reload together.
    /// `fraction` is in `0.0..1.0`; the default is 0.
    pub fn refresh_jitter(mut self, fraction: f64) -> Self {
        self.rules.jitter = fraction;
        self
    }

    /// Reload tasks at most at a time (default [`DEFAULT_MAX_CONCURRENT_RELOADS`]). More
    /// keys due at once wait in a queue, each key at most once.
    pub fn max_concurrent_reloads(mut self, max: usize) -> Self {
        self.rules.max_concurrent = max;
        self
    }

    /// How long a reload may run before it is given up, keeping the current value (default
    /// [`DEFAULT_LOAD_TIMEOUT`]). A `fetch` that finds the key expired while its reload
    /// runs waits for that reload, so this also bounds that wait.
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.rules.timeout = timeout;
        self
    }

    /// After a reload that stored nothing, how long before the entry may be reloaded again
    /// (default [`DEFAULT_RELOAD_BACKOFF`]).
    pub fn reload_backoff(mut self, backoff: Duration) -> Self {
        self.rules.backoff = backoff;
        self
    }

    /// Stale-if-error: keep an entry past its TTL for `window` more, as a *stale copy*, and
    /// when a `fetch`'s load of its key fails (the loader's error, a panic, or the
    /// [`load_timeout`](Self::load_timeout)), return the stale value instead of the error.
    /// For [`stale_throttle`](Self::stale_throttle) after that, `fetch`es of the key get the
    /// stale value without calling the failing source. After the window the copy is dropped
    /// (reported `Expired` then) and errors reach the callers.
    ///
    /// Stale copies are never returned by `get`, `contains_key` or `iter`, and are not in
    /// `entry_count()`; they count toward `max_capacity`, and are evicted before any live
    /// entry. Every stale value served is counted (`stale_served`) and logged (`tracing`,
    /// warn). With this option a `fetch`'s load runs in a task of its own on the current
    /// runtime (it may outlive the caller). Refresh failures keep the current value, as
    /// without it.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.rules.stale = Some(window);
        self
    }

    /// After a failed load served a stale copy, how long `fetch`es of that key get it
    /// without calling the source (default [`DEFAULT_STALE_THROTTLE`]).
    pub fn stale_throttle(mut self, throttle: Duration) -> Self {
        self.rules.stale_throttle = throttle;
        self
    }

    /// A soft timeout: a `fetch` that has waited `timeout` for a load, and finds a stale copy
    /// of its key (see [`stale_if_error`](Self::stale_if_error)), returns the stale value;
    /// the load goes on in the background and stores its value when it ends (unless it runs
    /// past the [`load_timeout`](Self::load_timeout), the hard timeout, which ends it). A
    /// `fetch` with no stale copy to return keeps waiting. Loads then run in tasks of their
    /// own, as with `stale_if_error`.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.rules.soft_timeout = Some(timeout);
        self
    }

    fn validate(&self) -> Result<(), BuildError> {
        let rules = &self.rules;
        if let Some(after) = rules.after {
            if after.is_zero() {
                return Err(BuildError::ZeroLoadingOption("refresh_after"));
            }
            if let Some(ttl) = self.cache.time_to_live.filter(|ttl| after >= *ttl) {
                return Err(BuildError::RefreshNotBeforeTimeToLive {
                    refresh_after: after,
                    time_to_live: ttl,
                });
            }
        }
        if !(0.0..1.0).contains(&rules.jitter) {
            return Err(BuildError::InvalidJitter(rules.jitter));
        }
        if rules.max_concurrent == 0 {
            return Err(BuildError::ZeroLoadingOption("max_concurrent_reloads"));
        }
        if rules.timeout.is_zero() {
            return Err(BuildError::ZeroLoadingOption("load_timeout"));
        }
        if rules.stale == Some(Duration::ZERO) {
            return Err(BuildError::ZeroLoadingOption("stale_if_error"));
        }
        if rules.soft_timeout == Some(Duration::ZERO) {
            return Err(BuildError::ZeroLoadingOption("soft_timeout"));
        }
        if rules.soft_timeout.is_some() && rules.stale.is_none() {
            return Err(BuildError::SoftTimeoutWithoutStaleIfError);
        }
        Ok(())
    }

    /// Build the loading cache, as [`CacheBuilder::build`] builds a cache.
    ///
    /// # Panics
    ///
    /// With an invalid option, or inside a runtime without timers; the message names the fix.
    /// [`try_build`](Self::try_build) returns these as errors.
    #[track_caller]
    pub fn build(self) -> LoadingCache<K, V, E, S> {
        match self.try_build() {
            Ok(cache) => cache,
            Err(e) => panic!("{e}"),
        }
    }

    /// Build the loading cache, or say why it cannot be built.
    pub fn try_build(self) -> Result<LoadingCache<K, V, E, S>, BuildError> {
        let handle = Handle::try_current().ok();
        self.start(handle.as_ref())
    }

    /// Build the loading cache from any thread, its tasks on `handle`'s runtime (see
    /// [`CacheBuilder::build_on`]).
    ///
    /// # Panics
    ///
    /// As [`build`](Self::build).
    #[track_caller]
    pub fn build_on(self, handle: &Handle) -> LoadingCache<K, V, E, S> {
        match self.start(Some(handle)) {
            Ok(cache) => cache,
            Err(e) => panic!("{e}"),
        }
    }

    fn start(self, handle: Option<&Handle>) -> Result<LoadingCache<K, V, E, S>, BuildError> {
        self.validate()?;
        let reload: Arc<dyn Reload<K, V>> = Arc::clone(&self.loader) as _;
        let cache = self.cache.start(handle, Some((self.rules, reload)))?;
        Ok(LoadingCache {
            cache,
            loader: self.loader,
        })
    }
}
