//! Statistics: striped counters written on the hot path, and the snapshot users read.
//!
//! Invariants:
//! - No counter is one atomic shared by every thread: each thread adds to its own stripe, on
//!   its own cache line. A thread *owns* one of the first [`OWNED`] stripes (claimed the first
//!   time it counts, released when it exits), and as the only writer it adds with a relaxed
//!   load and store: no read-modify-write, which on x86 is a full barrier and the larger part
//!   of a counted `get`'s cost. Threads beyond those share the remaining stripes and add with
//!   `fetch_add`. Either way no count is lost. A snapshot sums the stripes, so it is
//!   consistent per counter, not across counters.
//! - Counters exist only when the cache records statistics; otherwise the hot path pays one
//!   branch.
//! - Expiry lag is measured by the expiry task alone (one writer), when it removes an entry:
//!   how long after the entry's deadline that happened. The task gathers it over a batch of
//!   removals and publishes the batch at once (shared atomics written per removal cost the
//!   writers that read the store beside them).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// What is counted.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    Hit,
    Miss,
    Insert,
    Update,
    Expired,
    Explicit,
    Replaced,
    Size,
    LoadSuccess,
    LoadFailure,
    LoadNanos,
    ReloadStarted,
    ReloadSucceeded,
    ReloadFailed,
    ReloadTimedOut,
    StaleServed,
}

const COUNTERS: usize = 16;
/// Stripes a thread may own alone.
const OWNED: usize = 32;
/// Stripes shared by the threads that own none (more than [`OWNED`] alive at once).
const SHARED: usize = 8;
const STRIPES: usize = OWNED + SHARED;

#[repr(align(128))]
struct Stripe([AtomicU64; COUNTERS]);

/// The striped counters of one cache.
pub(crate) struct Counters {
    stripes: Box<[Stripe]>,
}

/// Which stripes a live thread owns, by index.
static OWNERS: [AtomicBool; OWNED] = [const { AtomicBool::new(false) }; OWNED];

/// A thread's stripe: owned (then released when the thread exits) or shared.
struct Claim {
    index: usize,
    owned: bool,
}

impl Claim {
    fn new() -> Self {
        for (index, owner) in OWNERS.iter().enumerate() {
            // Acquire: the previous owner's last counts happened before its release.
            if owner
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Claim { index, owned: true };
            }
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        Claim {
            index: OWNED + NEXT.fetch_add(1, Ordering::Relaxed) % SHARED,
            owned: false,
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.owned {
            OWNERS[self.index].store(false, Ordering::Release);
        }
    }
}

thread_local! {
    static CLAIM: Claim = Claim::new();
}

/// This thread's stripe, and whether it owns it. A thread whose claim is already gone (a
/// count from another thread-local's destructor) uses the first shared stripe.
#[inline]
fn stripe() -> (usize, bool) {
    CLAIM
        .try_with(|claim| (claim.index, claim.owned))
        .unwrap_or((OWNED, false))
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            stripes: (0..STRIPES)
                .map(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    #[inline]
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        let (index, owned) = stripe();
        let cell = &self.stripes[index].0[counter as usize];
        if owned {
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        } else {
            cell.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn sum(&self, counter: Counter) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0[counter as usize].load(Ordering::Relaxed))
            .sum()
    }
}

/// Expiry lag, written by the expiry task only.
#[derive(Debug, Default)]
pub(crate) struct Lag {
    max: AtomicU64,
    total: AtomicU64,
    count: AtomicU64,
}

impl Lag {
    #[cfg(test)]
    pub(crate) fn record(&self, nanos: u64) {
        let mut batch = LagBatch::default();
        batch.record(nanos);
        self.add(&mut batch);
    }

    /// Publish what the task gathered since its last call, and start `batch` over.
    pub(crate) fn add(&self, batch: &mut LagBatch) {
        if batch.count > 0 {
            self.max.fetch_max(batch.max, Ordering::Relaxed);
            self.total.fetch_add(batch.total, Ordering::Relaxed);
            self.count.fetch_add(batch.count, Ordering::Relaxed);
            *batch = LagBatch::default();
        }
    }
}

/// Expiry lag the task gathers over a batch of removals, published to [`Lag`] at once: three
/// shared atomic writes per batch rather than per removal.
#[derive(Debug, Default)]
pub(crate) struct LagBatch {
    max: u64,
    total: u64,
    count: u64,
}

impl LagBatch {
    pub(crate) fn record(&mut self, nanos: u64) {
        self.max = self.max.max(nanos);
        self.total = self.total.saturating_add(nanos);
        self.count += 1;
    }
}

/// A snapshot of a cache's statistics, from [`Cache::stats`](crate::Cache::stats).
///
/// Request, write, load and removal counts are kept only when the cache was built with
/// [`record_stats`](crate::CacheBuilder::record_stats) (or `stats_interval`); otherwise they
/// read zero. `entry_count` and the expiry lag are always there.
///
/// With the `serde` cargo feature it implements `serde::Serialize` (durations as serde
/// serializes a `Duration`: `secs` and `nanos`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct CacheStats {
    /// Lookups (`get`, and `get_with` and its family) that found a live value.
    pub hits: u64,
    /// Lookups that found none (`get_with` counts one miss whether it loads or waits).
    pub misses: u64,
    /// Writes that created an entry (including over an expired or invalidated one).
    pub inserts: u64,
    /// Writes that replaced a live entry, counted on the write side: with `inserts`, every
    /// write. (`replaced` counts the same events on the removal side, with the other causes.)
    pub updates: u64,
    /// Entries removed because they expired.
    pub expired: u64,
    /// Entries removed by `remove`, a zero TTL or `invalidate_all`.
    pub explicit: u64,
    /// Entries that left because a write replaced them, counted with the other removals
    /// (`expired`, `explicit`, `evicted_for_size`); equal to `updates`.
    pub replaced: u64,
    /// Entries evicted for room.
    pub evicted_for_size: u64,
    /// Loads that produced a value.
    pub load_successes: u64,
    /// Loads that failed (`try_get_with`) or produced nothing (`optionally_get_with`).
    pub load_failures: u64,
    /// Time spent in loaders that ran to the end.
    pub total_load_time: Duration,
    /// Entries held now (as [`Cache::entry_count`](crate::Cache::entry_count)).
    pub entry_count: u64,
    /// The total weight held now (as [`Cache::weighted_size`](crate::Cache::weighted_size)).
    pub weighted_size: u64,
    /// The longest time between an entry's deadline and its removal by the expiry task.
    pub expiry_lag_max: Duration,
    /// The mean of the same.
    pub expiry_lag_mean: Duration,
    /// Notifications dropped because the eviction channel was full.
    pub notifications_dropped: u64,
    /// Reloads started by refresh-ahead or [`LoadingCache::refresh`](crate::LoadingCache::refresh).
    pub reloads_started: u64,
    /// Reloads whose loader produced a value (stored, unless a write won meanwhile).
    pub reloads_succeeded: u64,
    /// Reloads whose loader failed or panicked: the entry kept its value.
    pub reloads_failed: u64,
    /// Reloads given up at the load timeout: the entry kept its value.
    pub reloads_timed_out: u64,
    /// Stale values a `fetch` returned instead of an error or a wait (`stale_if_error`).
    pub stale_served: u64,
}

impl CacheStats {
    /// `hits + misses`.
    pub fn requests(&self) -> u64 {
        self.hits + self.misses
    }

    /// `hits / requests`. With no requests yet it is 1.0: nothing has missed.
    pub fn hit_ratio(&self) -> f64 {
        match self.requests() {
            0 => 1.0,
            n => self.hits as f64 / n as f64,
        }
    }

    pub(crate) fn read(
        counters: Option<&Counters>,
        lag: &Lag,
        entry_count: u64,
        weighted_size: u64,
        notifications_dropped: u64,
    ) -> Self {
        let count = |c| counters.map_or(0, |counters| counters.sum(c));
        let lags = lag.count.load(Ordering::Relaxed);
        CacheStats {
            hits: count(Counter::Hit),
            misses: count(Counter::Miss),
            inserts: count(Counter::Insert),
            updates: count(Counter::Update),
            expired: count(Counter::Expired),
            explicit: count(Counter::Explicit),
            replaced: count(Counter::Replaced),
            evicted_for_size: count(Counter::Size),
            load_successes: count(Counter::LoadSuccess),
            load_failures: count(Counter::LoadFailure),
            total_load_time: Duration::from_nanos(count(Counter::LoadNanos)),
            entry_count,
            weighted_size,
            expiry_lag_max: Duration::from_nanos(lag.max.load(Ordering::Relaxed)),
            expiry_lag_mean: Duration::from_nanos(
                lag.total
                    .load(Ordering::Relaxed)
                    .checked_div(lags)
                    .unwrap_or(0),
            ),
            notifications_dropped,
            reloads_started: count(Counter::ReloadStarted),
            reloads_succeeded: count(Counter::ReloadSucceeded),
            reloads_failed: count(Counter::ReloadFailed),
            reloads_timed_out: count(Counter::ReloadTimedOut),
            stale_served: count(Counter::StaleServed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_across_threads_and_stripes() {
        let counters = std::sync::Arc::new(Counters::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = std::sync::Arc::clone(&counters);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(Counter::Hit, 1);
                    }
                    c.add(Counter::LoadNanos, 5);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counters.sum(Counter::Hit), 8000);
        assert_eq!(counters.sum(Counter::LoadNanos), 40);
        assert_eq!(counters.sum(Counter::Miss), 0);
    }

    #[test]
    fn no_count_is_lost_with_more_threads_than_owned_stripes() {
        use std::sync::{Arc, Barrier};
        let counters = Arc::new(Counters::new());
        // Threads that claim every owned stripe and hold it until released.
        let claimed = Arc::new(Barrier::new(OWNED + 1));
        let release = Arc::new(Barrier::new(OWNED + 1));
        let holders: Vec<_> = (0..OWNED)
            .map(|_| {
                let (c, claimed, release) = (
                    Arc::clone(&counters),
                    Arc::clone(&claimed),
                    Arc::clone(&release),
                );
                std::thread::spawn(move || {
                    c.add(Counter::Insert, 1);
                    claimed.wait();
                    release.wait();
                })
            })
            .collect();
        claimed.wait();
        // Two threads to each shared stripe, counting at once.
        let start = Arc::new(Barrier::new(2 * SHARED));
        let sharers: Vec<_> = (0..2 * SHARED)
            .map(|_| {
                let (c, start) = (Arc::clone(&counters), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..2_000_000 {
                        c.add(Counter::Hit, 1);
                    }
                })
            })
            .collect();
        for t in sharers {
            t.join().unwrap();
        }
        release.wait();
        for t in holders {
            t.join().unwrap();
        }
        // Threads one after another reuse the stripes their predecessors released.
        for _ in 0..100 {
            let c = Arc::clone(&counters);
            std::thread::spawn(move || c.add(Counter::Miss, 3))
                .join()
                .unwrap();
        }
        assert_eq!(counters.sum(Counter::Insert), OWNED as u64);
        assert_eq!(counters.sum(Counter::Hit), 2 * SHARED as u64 * 2_000_000);
        assert_eq!(counters.sum(Counter::Miss), 300);
    }

    #[test]
    fn ratios_and_lag() {
        let lag = Lag::default();
        lag.record(10);
        lag.record(30);
        let stats = CacheStats::read(None, &lag, 3, 3, 0);
        assert_eq!(stats.expiry_lag_max, Duration::from_nanos(30));
        assert_eq!(stats.expiry_lag_mean, Duration::from_nanos(20));
        assert_eq!(stats.hit_ratio(), 1.0);
        let stats = CacheStats {
            hits: 3,
            misses: 1,
            ..stats
        };
        assert_eq!(stats.hit_ratio(), 0.75);
    }
}
