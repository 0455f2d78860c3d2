//! The [`Cache`] handle: a cheap `Clone` over one shared store, and its public methods.
//!
//! Invariants:
//! - A `Cache` is one `Arc<Store>`. The expiry task holds only a `Weak` of it (and upgrades it
//!   while it works), so user handles alone decide how long the cache lives.
//! - The store owns the `DropGuard` of the task's `CancellationToken`: when the last strong
//!   reference goes, the token is cancelled and the task exits.
//! - Every method is one store operation; the rules (exact reads, one report per removal)
//!   are the store's.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Weak};
use std::time::Duration;

use std::future::Future;

use tokio::runtime::Handle;

use crate::config::Policy;
use crate::stats::CacheStats;
use crate::store::Store;
use crate::task;

/// A concurrent in-memory cache with per-cache and per-entry TTL, whose one expiry task
/// removes expired entries on time and ends when the last handle is dropped.
///
/// `Cache` is a cheap handle: clone it into every task or request handler that needs it. All
/// methods are plain (non-`async`), take one shard lock at most, and never block on I/O.
/// Reads return a clone of the value, so wrap large values in an `Arc`.
///
/// ```
/// use std::time::Duration;
///
/// #[tokio::main]
/// async fn main() {
///     let cache: ebb_cache::Cache<&str, u32> = ebb_cache::Cache::builder()
///         .time_to_live(Duration::from_secs(60))
///         .build();
///
///     cache.insert("a", 1);
///     cache.insert_with_ttl("b", 2, Duration::from_millis(50));
///     assert_eq!(cache.get("a"), Some(1));
///
///     tokio::time::sleep(Duration::from_millis(50)).await;
///     assert_eq!(cache.get("b"), None); // expired at its own deadline
///     assert_eq!(cache.get("a"), Some(1));
/// }
/// ```
pub struct Cache<K, V, S = RandomState> {
    store: Arc<Store<K, V, S>>,
}

impl<K, V, S> Clone for Cache<K, V, S> {
    fn clone(&self) -> Self {
        Cache {
            store: Arc::clone(&self.store),
        }
    }
}

impl<K, V, S> fmt::Debug for Cache<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher + Clone,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("name", &&*self.store.name)
            .field("entries", &self.store.map.len())
            .field("time_to_live", &self.store.time_to_live())
            .finish_non_exhaustive()
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// A handle over `store`, whose task the builder has started.
    pub(crate) fn from_store(store: Arc<Store<K, V, S>>) -> Self {
        Cache { store }
    }

    pub(crate) fn store(&self) -> &Store<K, V, S> {
        &self.store
    }

    /// The shared store itself, for what outlives a borrow of this handle (a reload task).
    pub(crate) fn shared_store(&self) -> &Arc<Store<K, V, S>> {
        &self.store
    }

    /// Start the expiry task on the current runtime if none runs: a cache built outside any
    /// runtime, or whose task's runtime shut down. One relaxed load while a task runs.
    #[inline]
    #[track_caller]
    pub(crate) fn ensure_task(&self) {
        if !self.store.signals.task_running() {
            self.start_task();
        }
    }

    #[cold]
    #[track_caller]
    fn start_task(&self) {
        if let Ok(handle) = Handle::try_current() {
            if let Err(e) = task::start(&self.store, &handle) {
                panic!("{e}");
            }
        }
    }

    /// A future that resolves once the last handle has been dropped and the expiry task has
    /// exited (or none ran): everything the cache held has been dropped. It holds no handle,
    /// so it does not keep the cache alive. A task that ends because its runtime shut down
    /// does not resolve it: the cache can still start another.
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() {
    ///     let cache: ebb_cache::Cache<u32, u32> = ebb_cache::Cache::builder().build();
    ///     let closed = cache.closed();
    ///     drop(cache);
    ///     closed.await; // the task has exited
    /// }
    /// ```
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let signals = Arc::clone(&self.store.signals);
        async move { signals.ended().await }
    }

    /// Insert `value` for `key`, replacing any previous value. It expires after the cache's
    /// `time_to_live` (spread by `expiry_jitter`), or never if none is set.
    ///
    /// Outside any runtime the write works, and the expiry task starts on the first runtime
    /// that writes. Panics (naming `enable_time`) when that runtime has no timers.
    #[inline]
    #[track_caller]
    pub fn insert(&self, key: K, value: V) {
        self.ensure_task();
        let cap = self.store.write_cap(&key, &value);
        self.store.insert(key, value, cap);
    }

    /// Insert `value` for `key` with its own TTL, exactly as given (never jittered). It
    /// overrides the cache's `time_to_live` for this entry.
    ///
    /// A zero `ttl` stores nothing and removes any previous value for `key`. A `ttl` at or
    /// past [`horizon`](Self::horizon) (for example `Duration::MAX`) never expires.
    #[track_caller]
    pub fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) {
        self.ensure_task();
        match self.store.cap_for_ttl(ttl) {
            Some(deadline) => self.store.insert(key, value, deadline),
            None => drop(self.remove(&key)),
        }
    }

    /// A clone of the value for `key`, unless it is absent or expired.
    ///
    /// Exact: from its deadline on, an entry is never returned, even if the expiry task has
    /// not removed it yet. Takes one shard read lock and, for an entry with a deadline, reads
    /// the clock once.
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.store.get(key)
    }

    /// Whether `get(key)` would return a value, without cloning it.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.store.contains_key(key)
    }

    /// Remove `key` and return its value, if it was present and not expired.
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.store.remove(key)
    }

    /// The number of entries held.
    ///
    /// An expired entry is counted until the expiry task removes it, at most one tick after
    /// its deadline while the runtime runs (later when many fall due at once: see
    /// [`CacheBuilder::tick`](crate::CacheBuilder::tick)); entries hidden by
    /// [`invalidate_all`](Self::invalidate_all) until the task has swept them. Takes each
    /// shard's read lock in turn, so while other threads write, the sum mixes moments (an
    /// entry evicted from a shard already counted and one inserted into a shard not yet
    /// counted both count).
    ///
    /// Like a write, it starts the expiry task on the current runtime if none runs (the
    /// runtime that ran it shut down): a caller waiting for the count to drop gets its
    /// entries removed.
    #[track_caller]
    pub fn entry_count(&self) -> u64 {
        self.ensure_task();
        self.store.entry_count()
    }

    /// Hide every entry at once, in O(1); the expiry task then removes them in batches.
    #[track_caller]
    pub fn invalidate_all(&self) {
        self.ensure_task();
        self.store.invalidate_all();
    }

    /// Hide every entry written before this call that `predicate` matches, at once; the
    /// expiry task then removes them in batches, yielding between, and reports each once as
    /// [`RemovalCause::Explicit`](crate::RemovalCause::Explicit).
    ///
    /// The call returns at once. From then on no read (`get`, `contains_key`, `iter`, the
    /// loading methods) returns an entry that existed at the call and matches; entries
    /// written after the call are not affected. Until the task has swept, a read of an entry
    /// older than the call asks the pending predicates (a copy of its key and the predicate
    /// calls, with no lock held); once it has, reads cost what they did before. `predicate`
    /// runs on copies, never under a lock, and may be called more than once for an entry
    /// (by readers and by the sweep); a panic in it counts as "does not match".
    ///
    /// Unlike moka's, it needs no builder option, returns nothing to unwrap, and the
    /// predicate may not be cancelled.
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() {
    ///     let sessions: ebb_cache::Cache<u64, String> = ebb_cache::Cache::builder().build();
    ///     sessions.insert(1, "ada".to_string());
    ///     sessions.insert(2, "bob".to_string());
    ///     sessions.invalidate_entries_if(|_id, user| user == "bob");
    ///     assert_eq!(sessions.get(&2), None);
    ///     assert_eq!(sessions.get(&1).as_deref(), Some("ada"));
    ///     // Written after the call: kept.
    ///     sessions.insert(3, "bob".to_string());
    ///     assert_eq!(sessions.get(&3).as_deref(), Some("bob"));
    /// }
    /// ```
    #[track_caller]
    pub fn invalidate_entries_if(
        &self,
        predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
    ) {
        self.ensure_task();
        self.store.invalidate_if(Arc::new(predicate));
    }

    /// The settings the cache was built with: capacity, time to live, time to idle, tick.
    pub fn policy(&self) -> Policy {
        self.store.policy
    }

    /// The name given to the builder, or `"ebb"`.
    pub fn name(&self) -> &str {
        &self.store.name
    }

    /// A snapshot of the cache's statistics. Counters other than `entry_count` and the expiry
    /// lag need [`record_stats`](crate::CacheBuilder::record_stats).
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() {
    ///     let cache: ebb_cache::Cache<u32, u32> = ebb_cache::Cache::builder().record_stats().build();
    ///     cache.insert(1, 1);
    ///     cache.get(&1);
    ///     cache.get(&2);
    ///     let stats = cache.stats();
    ///     assert_eq!((stats.hits, stats.misses, stats.inserts), (1, 1, 1));
    ///     assert_eq!(stats.hit_ratio(), 0.5);
    /// }
    /// ```
    #[track_caller]
    pub fn stats(&self) -> CacheStats {
        // Like `entry_count`, it starts the expiry task if none runs.
        self.ensure_task();
        self.store.stats()
    }

    /// Publish the cache's statistics through the [`metrics`](https://docs.rs/metrics/0.24)
    /// facade now, to the global recorder: the counters and gauges listed in `docs/metrics.md`
    /// (and under [`CacheBuilder::publish_metrics`](crate::CacheBuilder::publish_metrics)),
    /// labelled `cache` with [`name`](Self::name). Needs the `metrics` cargo feature.
    ///
    /// Call it in a scrape handler before rendering, so that a scrape is exact: what the
    /// expiry task published at its last interval may be up to one interval old. Publishing
    /// costs one [`stats`](Self::stats) snapshot and a relaxed store per metric; `get` and
    /// `insert` never call the facade. The counters other than the gauges need
    /// [`record_stats`](crate::CacheBuilder::record_stats) (which `publish_metrics(interval)`
    /// implies); without it they publish zero. Like `stats`, it starts the expiry task on the
    /// current runtime if none runs. The first publish registers the cache's metrics with
    /// the recorder installed then, for good: install it before that.
    ///
    /// ```
    /// use metrics_util::debugging::DebuggingRecorder;
    ///
    /// #[tokio::main]
    /// async fn main() {
    ///     // Any recorder: a Prometheus exporter's in a service.
    ///     let recorder = DebuggingRecorder::new();
    ///     let snapshotter = recorder.snapshotter();
    ///     recorder.install().unwrap();
    ///
    ///     let users: ebb_cache::Cache<u64, String> =
    ///         ebb_cache::Cache::builder().name("users").record_stats().build();
    ///     users.insert(1, "ada".to_string());
    ///     users.get(&1);
    ///     users.publish_metrics(); // in the scrape handler, before rendering
    ///
    ///     let hits = snapshotter.snapshot().into_vec().into_iter().find(|(key, ..)| {
    ///         let key = key.key();
    ///         key.name() == "ebb_cache_hits_total"
    ///             && key.labels().any(|l| l.key() == "cache" && l.value() == "users")
    ///     });
    ///     assert!(matches!(
    ///         hits,
    ///         Some((.., metrics_util::debugging::DebugValue::Counter(1)))
    ///     ));
    /// }
    /// ```
    #[cfg(feature = "metrics")]
    #[track_caller]
    pub fn publish_metrics(&self) {
        self.ensure_task();
        self.store.publish_metrics();
    }

    /// The total weight of the entries held: with [`max_capacity`] and a
    /// [`weigher`](crate::CacheBuilder::weigher), the sum of their weights as the capacity
    /// accounts for them; otherwise each entry weighs 1 and this is
    /// [`entry_count`](Self::entry_count). Takes each policy shard's lock in turn.
    ///
    /// [`max_capacity`]: crate::CacheBuilder::max_capacity
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() {
    ///     let pages: ebb_cache::Cache<u32, Vec<u8>> = ebb_cache::Cache::builder()
    ///         .max_capacity(1 << 20) // a mebibyte
    ///         .weigher(|_, page: &Vec<u8>| page.len() as u32)
    ///         .build();
    ///     pages.insert(1, vec![0; 4096]);
    ///     pages.insert(2, vec![0; 1024]);
    ///     assert_eq!(pages.weighted_size(), 5120);
    /// }
    /// ```
    pub fn weighted_size(&self) -> u64 {
        self.store.weighted_size()
    }

    /// A handle that does not keep the cache alive: for listeners and loaders that call back
    /// into their own cache.
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() {
    ///     let cache: ebb_cache::Cache<u32, u32> = ebb_cache::Cache::builder().build();
    ///     let weak = cache.downgrade();
    ///     weak.upgrade().unwrap().insert(1, 1);
    ///     assert_eq!(cache.get(&1), Some(1));
    ///     let closed = cache.closed();
    ///     drop(cache);
    ///     closed.await; // the last handle is gone, and the task with it
    ///     assert!(weak.upgrade().is_none());
    /// }
    /// ```
    pub fn downgrade(&self) -> WeakCache<K, V, S> {
        WeakCache {
            store: Arc::downgrade(&self.store),
        }
    }

    /// The default TTL, if one was set.
    pub fn time_to_live(&self) -> Option<Duration> {
        self.store.time_to_live()
    }

    /// The horizon: the longest TTL that still expires. An entry given this TTL or a longer
    /// one (`Duration::MAX` included) never expires, and nothing is scheduled for it. It is
    /// 2^36 - 1 ticks, capped at about 73 years: the cap at the default 1 s tick, about 795
    /// days at a 1 ms tick.
    pub fn horizon(&self) -> Duration {
        self.store.clock.horizon()
    }

    /// A snapshot of the expiry task's bookkeeping, for tests of ebb itself (the
    /// `internals` cargo feature; not part of the public API).
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn __internals(&self) -> Internals {
        use std::sync::atomic::Ordering;
        let store = &self.store;
        Internals {
            nodes: store.signals.nodes.load(Ordering::Acquire),
            wheel_cells: store.signals.wheel_cells.load(Ordering::Acquire),
            map_capacity: store.map.capacity(),
            map_shards: store.map.shard_count(),
            records: store.handoff.len(),
            listed: store.handoff.listed(),
            handoff_room: store.handoff.room(),
            node_ids: store.handoff.ids(),
            loads: store.flights.len(),
            wakeups: store.signals.wakeups.load(Ordering::Acquire),
            task_closed: store.signals.closed.load(Ordering::Acquire),
            task_running: store.signals.task_running(),
            tasks_started: store.signals.tasks_started.load(Ordering::Acquire),
            tasks_alive: store.signals.tasks_alive.load(Ordering::Acquire),
            policy_weight: store.policy_weight(),
            policy_records: store.policy_records(),
            pending_predicates: store.invalidations.pending(),
            reloads_running: store.refresh.as_deref().map_or(0, |r| r.reloads.running()),
            reloads_queued: store.refresh.as_deref().map_or(0, |r| r.reloads.queued()),
        }
    }
}

/// A handle to a [`Cache`] that does not keep it alive; see [`Cache::downgrade`].
pub struct WeakCache<K, V, S = RandomState> {
    store: Weak<Store<K, V, S>>,
}

impl<K, V, S> Clone for WeakCache<K, V, S> {
    fn clone(&self) -> Self {
        WeakCache {
            store: Weak::clone(&self.store),
        }
    }
}

impl<K, V, S> fmt::Debug for WeakCache<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakCache")
            .field("alive", &(self.store.strong_count() > 0))
            .finish()
    }
}

impl<K, V, S> WeakCache<K, V, S> {
    /// The cache, if a strong handle still exists somewhere.
    pub fn upgrade(&self) -> Option<Cache<K, V, S>> {
        self.store.upgrade().map(|store| Cache { store })
    }
}

/// The expiry task's bookkeeping, for tests of ebb itself (the `internals` cargo feature);
/// not part of the public API.
#[cfg(feature = "internals")]
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Internals {
    /// Wheel nodes the task held after its last wake.
    pub nodes: usize,
    /// Wheel slab cells in memory after the task's last wake that fired or swept.
    pub wheel_cells: usize,
    /// Entries the map's tables have room for now, all shards together.
    pub map_capacity: usize,
    /// The map's shards.
    pub map_shards: usize,
    /// Hand-off records queued for the task now, listed ones included.
    pub records: usize,
    /// Of `records`, those queued in a stripe's list (a new key while its map was empty):
    /// a key has at most one record in a map and one in a list.
    pub listed: usize,
    /// Room the hand-off's stripes hold now: records, list items and pooled ids.
    pub handoff_room: usize,
    /// Wheel node ids handed out so far: a bound on the wheel's slab.
    pub node_ids: u32,
    /// Loads in flight now.
    pub loads: usize,
    /// Times the task has woken up.
    pub wakeups: u64,
    /// Whether the task has stopped.
    pub task_closed: bool,
    /// Whether an expiry task runs now.
    pub task_running: bool,
    /// Expiry tasks started so far.
    pub tasks_started: u64,
    /// Expiry tasks that exist now (at most one).
    pub tasks_alive: usize,
    /// The weight the capacity policy accounts for, for a bounded cache.
    pub policy_weight: Option<u64>,
    /// Entry weights the capacity policy keeps (one per entry with a weigher; none without).
    pub policy_records: Option<usize>,
    /// `invalidate_entries_if` predicates no sweep has finished yet.
    pub pending_predicates: usize,
    /// Reload tasks running (a loading cache).
    pub reloads_running: usize,
    /// Keys queued for a reload task.
    pub reloads_queued: usize,
}
