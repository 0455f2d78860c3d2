//! The store: the one owner of entries and of their rules. The handles and the expiry task
//! call its operations; nothing else touches the map.
//!
//! Layout: `mod.rs` the struct and the reads; `write.rs` inserts and a load's fill;
//! `remove.rs` every removal and the one place each is reported; `entry.rs` the entry and the
//! map; `flight.rs` the loads in flight; `handoff.rs` what writers tell the expiry task;
//! `capacity.rs` the bound and its policy shards; `invalidate.rs` the generations that
//! `invalidate_all` and `invalidate_entries_if` begin; `refresh.rs` what a reload may change;
//! `stale.rs` the stale copies `stale_if_error` keeps.
//!
//! Words used throughout: an entry's *deadline* is when it stops being live (the earlier of
//! its cap and its last access plus the time-to-idle); its *cap* is the latest the deadline may
//! become, the TTL's deadline ([`Cap`] carries it with the clock reading it came from); its
//! *node* is its place in the expiry task's wheel, named by a [`NodeId`] (`UNFILED` for none).
//!
//! Invariants:
//! - **Exact reads.** An entry is live while its deadline is in the future and no
//!   invalidation hides it (see `invalidate.rs`: an entry of the current generation is never
//!   hidden, and costs nothing more to check); reads return live entries only, whatever the
//!   task has or has not done yet, and read the clock only for an entry that has a deadline.
//! - **Deadlines only move later under readers.** Writers set deadline and cap under the shard
//!   lock; readers may only move a deadline later, up to the cap, with `fetch_max`, and only
//!   by more than a tolerance (so a hot entry is not written on every read).
//! - **The task always knows a deadline in time.** An entry's node is queued in the hand-off or
//!   linked in the wheel at a tick no later than its deadline's. A later deadline needs nothing
//!   (the node fires early and the task re-files it); a first or an earlier one goes through
//!   the hand-off (see `handoff.rs`).
//! - **Every removal is reported once**, by the path that took the entry out, after the shard
//!   lock is released (see `remove.rs`).
//! - **User code never runs between two writes that must both happen**: keys are cloned and
//!   values weighed before anything changes.

pub(crate) mod capacity;
pub(crate) mod entry;
pub(crate) mod flight;
mod free_ids;
pub(crate) mod handoff;
pub(crate) mod invalidate;
pub(crate) mod refresh;
mod remove;
mod stale;
mod write;

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::Ordering;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::config::Policy;
use crate::expiry::Expiry;
use crate::listener::Notifier;
use crate::stats::{CacheStats, Counter, Counters, Lag};
use crate::store::handoff::{Handoff, Signals};
use crate::time::clock::{Cap, Clock, NEVER};
use crate::time::jitter;
#[cfg(doc)]
use crate::time::wheel::NodeId;
use capacity::{Capacity, Weigher};
use entry::{with_map, Entry, Map, Stored};
pub(crate) use entry::{Fired, Retired};
use flight::Flights;
use invalidate::{Invalidations, Pending, Seen};

pub(crate) use crate::store::handoff::UNFILED;

/// What the store needs to know beyond the map.
pub(crate) struct Settings<K, V> {
    pub(crate) name: std::borrow::Cow<'static, str>,
    /// The settings as the handle reports them.
    pub(crate) policy: Policy,
    pub(crate) clock: Clock,
    /// Time-to-idle in nanoseconds; 0 for none.
    pub(crate) idle: u64,
    pub(crate) counters: Option<Counters>,
    pub(crate) notifier: Notifier<K, V>,
    /// `max_capacity` and the weigher, for a bounded cache.
    pub(crate) capacity: Option<(u64, Option<Weigher<K, V>>)>,
    /// The policy shards a test forces, if any.
    pub(crate) policy_shards: Option<usize>,
    /// The per-entry expiry policy, if any, and whether it observes reads.
    pub(crate) expiry: Option<std::sync::Arc<dyn Expiry<K, V>>>,
    pub(crate) expiry_reads: bool,
    /// The default TTL, and the jitter that spreads it.
    pub(crate) time_to_live: Option<Duration>,
    pub(crate) jitter: f64,
    /// Every how long the task logs a stats line, if asked.
    pub(crate) stats_interval: Option<Duration>,
    /// Every how long the task publishes metrics, if asked.
    #[cfg(feature = "metrics")]
    pub(crate) metrics_interval: Option<Duration>,
    /// For a cache that refreshes: its rules and its loader.
    pub(crate) refresh: Option<(refresh::Rules, Arc<dyn crate::loader::Reload<K, V>>)>,
}

/// The store. A task that has not run yet holds no `Weak` of it (it reaches the store
/// through [`Signals`] when it first runs), so a cache dropped before its task runs frees the
/// whole store at once; a running task's `Weak` keeps the allocation, not the parts, until the
/// task ends.
pub(crate) struct Store<K, V, S> {
    parts: Parts<K, V, S>,
}

impl<K, V, S> std::ops::Deref for Store<K, V, S> {
    type Target = Parts<K, V, S>;

    #[inline]
    fn deref(&self) -> &Parts<K, V, S> {
        &self.parts
    }
}

/// The map, the hand-off to the task, the loads in flight, the clock and the
/// generations of invalidations.
pub(crate) struct Parts<K, V, S> {
    pub(crate) map: Map<K, V, S>,
    /// The room each shard's table keeps however few entries it holds: its share of the
    /// initial capacity.
    room: usize,
    pub(crate) handoff: Handoff<K, S>,
    pub(crate) flights: Flights<K, V, S>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) clock: Clock,
    pub(crate) name: std::borrow::Cow<'static, str>,
    /// The settings as the handle reports them.
    pub(crate) policy: Policy,
    pub(crate) lag: Lag,
    idle: u64,
    /// A read moves an idle deadline only by more than this.
    idle_tolerance: u64,
    counters: Option<Counters>,
    notifier: Notifier<K, V>,
    capacity: Option<Capacity<K, V, S>>,
    time_to_live: Option<Duration>,
    jitter: f64,
    /// Cancelled when the last handle drops the store: ends the expiry task (each task the
    /// cache starts waits on a clone) and the reloads. Made when first asked for, by a
    /// holder of the store (the task as it first runs, a reload as it starts): the store's
    /// drop cannot come before, and cancels it if it was made. A cache dropped before its
    /// task runs (one per request) makes none.
    token: OnceLock<CancellationToken>,
    pub(crate) stats_interval: Option<Duration>,
    /// The generations `invalidate_all` and `invalidate_entries_if` begin.
    pub(crate) invalidations: Invalidations<K, V>,
    /// The per-entry expiry policy, if any, and whether reads ask it.
    expiry: Option<std::sync::Arc<dyn Expiry<K, V>>>,
    expiry_reads: bool,
    /// Every how long the task publishes metrics, if asked; and the handles it publishes to.
    #[cfg(feature = "metrics")]
    pub(crate) metrics_interval: Option<Duration>,
    #[cfg(feature = "metrics")]
    metrics: crate::metrics::Metrics,
    /// What a cache that refreshes has beyond the others (see `refresh.rs`).
    pub(crate) refresh: Option<Box<refresh::Refresh<K, V>>>,
    /// Inserts that found their new key's policy shard busy and took the ordered way (a
    /// rare path; test-only visibility).
    fallbacks: std::sync::atomic::AtomicUsize,
}

impl<K, V, S> Drop for Store<K, V, S> {
    fn drop(&mut self) {
        self.signals.release_store();
        if let Some(token) = self.token.get() {
            token.cancel();
        }
        self.signals.handles_gone();
    }
}

impl<K, V, S> Store<K, V, S> {
    /// The token the store's drop cancels (see [`Parts::token`]).
    pub(crate) fn token(&self) -> &CancellationToken {
        self.token.get_or_init(CancellationToken::new)
    }

    /// Whether the expiry task makes periodic reports (a stats line, or metrics).
    pub(crate) fn reports_asked(&self) -> bool {
        #[cfg(feature = "metrics")]
        if self.metrics_interval.is_some() {
            return true;
        }
        self.stats_interval.is_some()
    }

    /// The default TTL.
    pub(crate) fn time_to_live(&self) -> Option<Duration> {
        self.time_to_live
    }
}

/// What is left to ask about an older entry once no lock is held: the pending predicates,
/// with a copy of its key (`None`: nothing, it is visible).
struct Ask<K, V>(Option<(K, Pending<K, V>)>);

impl<K, V> Ask<K, V> {
    /// `value`, unless a pending predicate matches its entry.
    fn visible(self, value: V) -> Option<V> {
        match self.0 {
            Some((key, predicates)) if predicates.matches(&key, &value) => None,
            _ => Some(value),
        }
    }
}

impl<K, V, S> Store<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    pub(crate) fn new(
        settings: Settings<K, V>,
        capacity: usize,
        shards: usize,
        hasher: S,
        signals: Arc<Signals>,
    ) -> Self {
        let clock = settings.clock;
        let parts = Parts {
            map: Map::new(
                // Deadlines move under readers only with these; otherwise each is its own cap.
                settings.idle != 0 || settings.expiry_reads,
                settings
                    .refresh
                    .as_ref()
                    .is_some_and(|(rules, _)| rules.stamps()),
                capacity,
                hasher.clone(),
                shards,
            ),
            // What DashMap gives each shard of the initial capacity.
            room: capacity / shards,
            // Two stripes per core (shards are four per core): writers hold a stripe only to
            // queue one record, and the stripes stay under 1 KiB in all, which glibc serves
            // without consolidating its fast bins (a cache built per request pays that).
            handoff: Handoff::new((shards / 2).max(1), hasher.clone()),
            // Loads register and unregister briefly: a stripe per core (shards are four per
            // core) is plenty, and a cache built per request allocates a quarter of the bytes.
            flights: Flights::new((shards / 4).max(1), hasher.clone()),
            capacity: settings.capacity.map(|(max, weigher)| {
                Capacity::new(max, shards, settings.policy_shards, hasher, weigher)
            }),
            signals,
            clock,
            name: settings.name,
            policy: settings.policy,
            lag: Lag::default(),
            idle: settings.idle,
            idle_tolerance: (clock.tick_nanos() / 16).min(settings.idle / 16),
            counters: settings.counters,
            notifier: settings.notifier,
            time_to_live: settings.time_to_live,
            jitter: settings.jitter,
            token: OnceLock::new(),
            stats_interval: settings.stats_interval,
            invalidations: Invalidations::default(),
            expiry_reads: settings.expiry_reads,
            expiry: settings.expiry,
            #[cfg(feature = "metrics")]
            metrics_interval: settings.metrics_interval,
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::Metrics::default(),
            refresh: settings.refresh.map(|(rules, loader)| {
                Box::new(refresh::Refresh {
                    rules,
                    loader,
                    reloads: refresh::Reloads::default(),
                    stale: std::sync::atomic::AtomicU64::new(0),
                })
            }),
            fallbacks: std::sync::atomic::AtomicUsize::new(0),
        };
        Store { parts }
    }

    /// The deadline of a write with the default TTL (jittered), now.
    #[inline]
    pub(crate) fn default_cap(&self) -> Cap {
        match self.time_to_live {
            None => Cap::NEVER,
            Some(ttl) => self.clock.cap_after(jitter::spread(ttl, self.jitter)),
        }
    }

    /// The deadline of a write with its own `ttl`, now; `None` for zero (nothing is stored).
    pub(crate) fn cap_for_ttl(&self, ttl: Duration) -> Option<Cap> {
        (!ttl.is_zero()).then(|| self.clock.cap_after(ttl))
    }

    /// Give back the room in the map that removals left (see [`Map::shrink`]); whether a
    /// key's `Hash` panicked (that shard stays as it was).
    pub(crate) fn shrink_map(&self) -> bool {
        self.map.shrink(self.room)
    }

    /// The current generation (see `invalidate.rs`).
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        self.invalidations.generation()
    }

    #[inline]
    pub(crate) fn count(&self, counter: Counter, n: u64) {
        if let Some(counters) = &self.counters {
            counters.add(counter, n);
        }
    }

    pub(crate) fn counters(&self) -> Option<&Counters> {
        self.counters.as_ref()
    }

    /// A clone of the live value for `key`; with a time-to-idle, the read also counts as an
    /// access.
    #[inline]
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q> + 'static,
        V: 'static,
        Q: Hash + Eq + ?Sized,
    {
        let found = self.peek(key);
        self.count(
            if found.is_some() {
                Counter::Hit
            } else {
                Counter::Miss
            },
            1,
        );
        found
    }

    /// `get` without counting a hit or a miss.
    #[inline]
    pub(crate) fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q> + 'static,
        V: 'static,
        Q: Hash + Eq + ?Sized,
    {
        with_map!(&self.map, m => self.peek_in(m, key))
    }

    #[inline]
    fn peek_in<E: Stored<V>, Q>(&self, map: &DashMap<K, E, S>, key: &Q) -> Option<V>
    where
        K: Borrow<Q> + 'static,
        V: 'static,
        Q: Hash + Eq + ?Sized,
    {
        let generation = self.generation();
        let found = map.view(key, |k, stored| {
            let e = stored.entry();
            let deadline = e.deadline();
            let ask = match e.generation() == generation {
                true => None,
                false => Some(self.older(k, e)?),
            };
            if deadline != NEVER {
                let now = self.clock.now();
                if deadline <= now {
                    return None;
                }
                if E::IDLE {
                    self.touch(stored, deadline, now);
                }
            }
            if self.capacity.is_some() {
                e.bump();
            }
            if let Some(stamp) = stored.stamp() {
                stamp.mark_read();
            }
            // An `Expiry` that observes reads is asked once the lock is released.
            let read = self.expiry_reads.then(|| (k.clone(), deadline));
            Some((e.value.clone(), ask, read))
        });
        let (value, ask, read) = found.flatten()?;
        let value = match ask {
            None => value,
            Some(ask) => ask.visible(value)?,
        };
        if let Some((key, deadline)) = read {
            self.after_read(&key, &value, deadline);
        }
        Some(value)
    }

    /// For an entry of an older generation than the current one, under its shard lock:
    /// `None` if an `invalidate_all` hid it, else what is left to ask, once no lock is held
    /// (copies of the key and of the predicates pending, if any; see `invalidate.rs`).
    #[cold]
    fn older(&self, key: &K, entry: &Entry<V>) -> Option<Ask<K, V>> {
        match self.invalidations.seen(entry.generation()) {
            Seen::Hidden => None,
            Seen::Visible { .. } => Some(Ask(None)),
            Seen::Ask { predicates, .. } => Some(Ask(Some((key.clone(), predicates)))),
        }
    }

    /// Record a read access: move an idle deadline later, within the cap.
    #[inline]
    fn touch(&self, stored: &impl Stored<V>, deadline: u64, now: u64) {
        let wanted = stored.cap().min(now.saturating_add(self.idle));
        if wanted > deadline.saturating_add(self.idle_tolerance) {
            stored.entry().deadline.fetch_max(wanted, Ordering::Relaxed);
        }
    }

    /// The live value for `key`, without counting or touching anything (see `iter.rs`).
    pub(crate) fn live_value(&self, key: &K) -> Option<V> {
        let generation = self.generation();
        let found = self.map.view(key, |k, e| {
            let ask = match e.generation() == generation {
                true => None,
                false => Some(self.older(k, e)?),
            };
            e.is_live(e.generation(), || self.clock.now())
                .then(|| (e.value.clone(), ask))
        });
        let (value, ask) = found.flatten()?;
        match ask {
            None => Some(value),
            Some(ask) => ask.visible(value),
        }
    }

    /// Copies of the keys of the entries that may be live (not expired, not hidden by an
    /// `invalidate_all`), one map shard at a time; a pending predicate is asked later, by
    /// [`live_value`](Self::live_value). A key whose `Clone` panics is left out.
    pub(crate) fn live_keys(&self) -> Vec<K> {
        let generation = self.generation();
        let now = self.clock.now();
        self.map
            .keys_where(|e| {
                e.is_live(e.generation(), || now)
                    && (e.generation() == generation || !self.invalidations.hidden(e.generation()))
            })
            .0
    }

    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let generation = self.generation();
        let found = self.map.view(key, |k, e| {
            if !e.is_live(e.generation(), || self.clock.now()) {
                return None;
            }
            match e.generation() == generation {
                true => Some(None),
                false => match self.older(k, e)? {
                    Ask(None) => Some(None),
                    ask => Some(Some((ask, e.value.clone()))),
                },
            }
        });
        match found.flatten() {
            None => false,
            Some(None) => true,
            Some(Some((ask, value))) => ask.visible(value).is_some(),
        }
    }

    /// The total weight held: the capacity's, or the entry count without one.
    pub(crate) fn weighted_size(&self) -> u64 {
        self.capacity
            .as_ref()
            .map_or(self.map.len() as u64, Capacity::total)
    }

    /// A snapshot of the statistics. Unlike `Cache::stats`, it starts no expiry task.
    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats::read(
            self.counters(),
            &self.lag,
            self.entry_count(),
            self.weighted_size(),
            self.notifications_dropped(),
        )
    }

    /// Publish a snapshot of the statistics through the `metrics` facade, under the cache's
    /// name. The snapshot is complete before the recorder is called.
    #[cfg(feature = "metrics")]
    pub(crate) fn publish_metrics(&self) {
        let stats = self.stats();
        self.metrics.publish(&self.name, &stats);
    }

    /// Total weight the capacity policy's shards account for, for a bounded cache.
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn policy_weight(&self) -> Option<u64> {
        self.capacity.as_ref().map(|c| c.weight().0)
    }

    /// Entry weights the capacity policy keeps, with a weigher (test-only visibility).
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn policy_records(&self) -> Option<usize> {
        self.capacity.as_ref().map(|c| c.weight().1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_whose_policy_shard_is_busy_waits_for_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let cache = crate::Cache::<u64, u64>::builder()
            .max_capacity(100)
            .build_on(rt.handle());
        let store = cache.store();
        (0..10).for_each(|k| cache.insert(k, k));
        let capacity = store.capacity.as_ref().unwrap();
        let (held, _) = capacity.hold(&10);
        std::thread::scope(|s| {
            let writer = s.spawn(|| cache.insert(10, 10));
            // The writer found the slot vacant and the shard taken: it goes the ordered way
            // (policy shard, then map) and waits for the shard.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while store.fallbacks.load(Ordering::Relaxed) == 0 {
                assert!(std::time::Instant::now() < deadline, "no fallback in 10 s");
                std::thread::yield_now();
            }
            assert!(
                cache.get(&10).is_none(),
                "written before its shard was free"
            );
            drop(held);
            writer.join().unwrap();
        });
        assert_eq!(cache.get(&10), Some(10));
        assert_eq!(store.policy_weight(), Some(11));
        // A new key with its shard free takes the one-lookup way.
        cache.insert(11, 11);
        assert_eq!(store.fallbacks.load(Ordering::Relaxed), 1);
        assert_eq!(store.policy_weight(), Some(12));
    }

    #[test]
    fn a_wrap_sweep_that_cannot_copy_a_key_still_brings_nothing_back() {
        static TRAP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        #[derive(Debug, PartialEq, Eq, Hash)]
        struct K(u64);
        impl Clone for K {
            fn clone(&self) -> Self {
                if self.0 == 2 && TRAP.swap(false, Ordering::SeqCst) {
                    panic!("trap: clone");
                }
                K(self.0)
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let cache = crate::Cache::<K, u64>::builder().build_on(rt.handle());
        drop(rt);
        cache.insert(K(1), 1);
        cache.insert(K(2), 2);
        cache.invalidate_all();
        let store = cache.store();
        store
            .invalidations
            .skip(u64::from(entry::GENERATION_MASK) - 1);
        TRAP.store(true, Ordering::SeqCst);
        cache.invalidate_all();
        assert_eq!(store.generation(), 0);
        assert_eq!(cache.get(&K(1)), None);
        assert_eq!(
            cache.get(&K(2)),
            None,
            "an entry the sweep could not copy came back"
        );
    }

    #[test]
    fn predicates_never_bring_an_entry_back_when_generations_wrap() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let cache = crate::Cache::<u64, u64>::builder().build_on(rt.handle());
        // No task will sweep: its runtime is gone.
        drop(rt);
        for k in 0..4 {
            cache.insert(k, k);
        }
        cache.invalidate_entries_if(|k, _| *k == 1);
        let store = cache.store();
        store
            .invalidations
            .skip(u64::from(entry::GENERATION_MASK) - 1);
        // This one would come round to the entries' generation: it sweeps first.
        cache.invalidate_entries_if(|k, _| *k == 2);
        assert_eq!(store.invalidations.pending(), 1);
        assert_eq!(
            cache.entry_count(),
            3,
            "the first predicate's match was swept"
        );
        let live: Vec<u64> = {
            let mut live: Vec<u64> = cache.iter().map(|(k, _)| k).collect();
            live.sort();
            live
        };
        assert_eq!(live, [0, 3]);
        // Round and round again: nothing comes back.
        for _ in 0..3 {
            store
                .invalidations
                .skip(u64::from(entry::GENERATION_MASK) - 1);
            cache.invalidate_entries_if(|_, _| false);
            let mut live: Vec<u64> = cache.iter().map(|(k, _)| k).collect();
            live.sort();
            assert_eq!(live, [0, 3]);
        }
    }

    #[test]
    fn invalidate_all_never_brings_an_entry_back_when_generations_wrap() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let cache = crate::Cache::<u64, u64>::builder().build_on(rt.handle());
        // No task will sweep: its runtime is gone.
        drop(rt);
        cache.insert(1, 1);
        cache.invalidate_all();
        assert_eq!(cache.get(&1), None);
        // Skip to the last call before the generation comes round to the entry's (0).
        let store = cache.store();
        store
            .invalidations
            .skip(u64::from(entry::GENERATION_MASK) - 1);
        assert_eq!(store.generation(), entry::GENERATION_MASK);
        cache.invalidate_all();
        assert_eq!(store.generation(), 0);
        assert_eq!(cache.get(&1), None, "an invalidated entry came back");
        assert!(!cache.contains_key(&1));
        assert_eq!(cache.entry_count(), 0, "the wrap swept the map first");
        cache.insert(2, 2);
        assert_eq!(cache.get(&2), Some(2));
    }
}
