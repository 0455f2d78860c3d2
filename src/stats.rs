//! Statistics: striped counters written on the hot path, and the snapshot users read.
//!
//! Invariants:
//! - No counter is one atomic shared by every thread: each thread adds to its own stripe
//!   (chosen once per thread), on its own cache line, with a relaxed `fetch_add`. A snapshot
//!   sums the stripes, so it is consistent per counter, not across counters.
//! - Counters exist only when the cache records statistics; otherwise the hot path pays one
//!   branch.
//! - Expiry lag is measured by the expiry task alone (one writer), when it removes an entry:
//!   how long after the entry's deadline that happened.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    Dropped,
}

const COUNTERS: usize = 12;
const STRIPES: usize = 32;

#[repr(align(128))]
struct Stripe([AtomicU64; COUNTERS]);

/// The striped counters of one cache.
pub(crate) struct Counters {
    stripes: Box<[Stripe]>,
}

/// This thread's stripe index, handed out round-robin the first time a thread counts.
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    MINE.with(|mine| {
        let i = mine.get();
        if i != usize::MAX {
            return i;
        }
        let i = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        mine.set(i);
        i
    })
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
        self.stripes[stripe_index()].0[counter as usize].fetch_add(n, Ordering::Relaxed);
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
    pub(crate) fn record(&self, nanos: u64) {
        self.max.fetch_max(nanos, Ordering::Relaxed);
        self.total.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of a cache's statistics, from [`Cache::stats`](crate::Cache::stats).
///
/// Request, write, load and removal counts are kept only when the cache was built with
/// [`record_stats`](crate::CacheBuilder::record_stats) (or `stats_interval`); otherwise they
/// read zero. `entry_count` and the expiry lag are always there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups (`get`, and `get_with` and its family) that found a live value.
    pub hits: u64,
    /// Lookups that found none (`get_with` counts one miss whether it loads or waits).
    pub misses: u64,
    /// Writes that created an entry (including over an expired or invalidated one).
    pub inserts: u64,
    /// Writes that replaced a live entry.
    pub updates: u64,
    /// Entries removed because they expired.
    pub expired: u64,
    /// Entries removed by `remove`, a zero TTL or `invalidate_all`.
    pub explicit: u64,
    /// Entries replaced by a write.
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
    /// The longest time between an entry's deadline and its removal by the expiry task.
    pub expiry_lag_max: Duration,
    /// The mean of the same.
    pub expiry_lag_mean: Duration,
    /// Notifications dropped because the eviction channel was full.
    pub notifications_dropped: u64,
}

impl CacheStats {
    /// `hits + misses`.
    pub fn requests(&self) -> u64 {
        self.hits + self.misses
    }

    /// `hits / requests`, or 1.0 with no requests.
    pub fn hit_ratio(&self) -> f64 {
        match self.requests() {
            0 => 1.0,
            n => self.hits as f64 / n as f64,
        }
    }

    pub(crate) fn read(counters: Option<&Counters>, lag: &Lag, entry_count: u64) -> Self {
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
            expiry_lag_max: Duration::from_nanos(lag.max.load(Ordering::Relaxed)),
            expiry_lag_mean: Duration::from_nanos(
                lag.total
                    .load(Ordering::Relaxed)
                    .checked_div(lags)
                    .unwrap_or(0),
            ),
            notifications_dropped: count(Counter::Dropped),
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
    fn ratios_and_lag() {
        let lag = Lag::default();
        lag.record(10);
        lag.record(30);
        let stats = CacheStats::read(None, &lag, 3);
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
