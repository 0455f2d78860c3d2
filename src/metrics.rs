//! Publishing a cache's statistics through the `metrics` facade (the `metrics` cargo
//! feature): the metric names and labels, documented one by one in `docs/metrics.md`, and
//! [`Metrics`], one cache's handles.
//!
//! Invariants:
//! - **Not on the hot path.** `get`, `insert` and the loads only add to the striped counters
//!   of `stats.rs`, as they do without this feature. A publish takes a finished
//!   [`CacheStats`] snapshot and hands each figure to the facade as an absolute value
//!   (`Counter::absolute`, `Gauge::set`): it is the same whether it runs every second or
//!   once an hour, and a publish that is skipped loses nothing.
//! - **Every figure of `CacheStats` is published**: [`Metrics::publish`] takes the snapshot
//!   apart field by field with no `..`, so a field added to `CacheStats` does not compile
//!   here until it is published (and documented) or deliberately left out.
//! - **Registered once.** A cache's handles are registered with the global recorder at its
//!   first publish, then kept: a publish does no lookup and no allocation. A recorder
//!   installed after that first publish never sees the cache.
//! - **No lock held.** The snapshot is complete before the first handle is called, so the
//!   recorder's code (user code) runs with none of the cache's locks held.
//! - **Imports point down**: this module knows `stats` and nothing else of the crate; the
//!   store holds a [`Metrics`], and the handle and the expiry task call it through the store.

use std::sync::OnceLock;

use ::metrics::{describe_counter, describe_gauge, Counter, Gauge, Unit};

use crate::stats::CacheStats;

/// The label every metric carries: the cache's name.
pub(crate) const CACHE: &str = "cache";
/// The label of `ebb_cache_removals_total`: why the entries left.
const CAUSE: &str = "cause";
/// The label of `ebb_cache_loads_total`: `success` or `failure`.
const RESULT: &str = "result";

const HITS: &str = "ebb_cache_hits_total";
const MISSES: &str = "ebb_cache_misses_total";
const INSERTS: &str = "ebb_cache_inserts_total";
const UPDATES: &str = "ebb_cache_updates_total";
const REMOVALS: &str = "ebb_cache_removals_total";
const LOADS: &str = "ebb_cache_loads_total";
const LOAD_NANOS: &str = "ebb_cache_load_nanoseconds_total";
const RELOADS_STARTED: &str = "ebb_cache_reloads_started_total";
const RELOADS: &str = "ebb_cache_reloads_total";
const STALE_SERVED: &str = "ebb_cache_stale_served_total";
const DROPPED: &str = "ebb_cache_notifications_dropped_total";
const ENTRIES: &str = "ebb_cache_entries";
const WEIGHTED_SIZE: &str = "ebb_cache_weighted_size";
const LAG_MAX: &str = "ebb_cache_expiry_lag_max_seconds";
const LAG_MEAN: &str = "ebb_cache_expiry_lag_mean_seconds";

/// One cache's metric handles, registered at its first publish.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    handles: OnceLock<Handles>,
}

#[derive(Debug)]
struct Handles {
    hits: Counter,
    misses: Counter,
    inserts: Counter,
    updates: Counter,
    expired: Counter,
    explicit: Counter,
    replaced: Counter,
    size: Counter,
    load_successes: Counter,
    load_failures: Counter,
    load_nanos: Counter,
    reloads_started: Counter,
    reloads_succeeded: Counter,
    reloads_failed: Counter,
    reloads_timed_out: Counter,
    stale_served: Counter,
    dropped: Counter,
    entries: Gauge,
    weighted_size: Gauge,
    lag_max: Gauge,
    lag_mean: Gauge,
}

impl Handles {
    /// Describe every metric and register this cache's series with the global recorder.
    fn register(name: &str) -> Self {
        describe();
        let cache = name.to_owned();
        let counter = |metric: &'static str| ::metrics::counter!(metric, CACHE => cache.clone());
        let labelled = |metric: &'static str, key: &'static str, value: &'static str| ::metrics::counter!(metric, CACHE => cache.clone(), key => value);
        let gauge = |metric: &'static str| ::metrics::gauge!(metric, CACHE => cache.clone());
        Handles {
            hits: counter(HITS),
            misses: counter(MISSES),
            inserts: counter(INSERTS),
            updates: counter(UPDATES),
            expired: labelled(REMOVALS, CAUSE, "expired"),
            explicit: labelled(REMOVALS, CAUSE, "explicit"),
            replaced: labelled(REMOVALS, CAUSE, "replaced"),
            size: labelled(REMOVALS, CAUSE, "size"),
            load_successes: labelled(LOADS, RESULT, "success"),
            load_failures: labelled(LOADS, RESULT, "failure"),
            load_nanos: counter(LOAD_NANOS),
            reloads_started: counter(RELOADS_STARTED),
            reloads_succeeded: labelled(RELOADS, RESULT, "success"),
            reloads_failed: labelled(RELOADS, RESULT, "failure"),
            reloads_timed_out: labelled(RELOADS, RESULT, "timeout"),
            stale_served: counter(STALE_SERVED),
            dropped: counter(DROPPED),
            entries: gauge(ENTRIES),
            weighted_size: gauge(WEIGHTED_SIZE),
            lag_max: gauge(LAG_MAX),
            lag_mean: gauge(LAG_MEAN),
        }
    }
}

/// Tell the recorder each metric's unit and meaning (the same words as `docs/metrics.md`).
fn describe() {
    describe_counter!(HITS, Unit::Count, "Lookups that found a live value.");
    describe_counter!(MISSES, Unit::Count, "Lookups that found none.");
    describe_counter!(INSERTS, Unit::Count, "Writes that created an entry.");
    describe_counter!(UPDATES, Unit::Count, "Writes that replaced a live entry.");
    describe_counter!(
        REMOVALS,
        Unit::Count,
        "Entries that left the cache, by cause: expired, explicit, replaced or size."
    );
    describe_counter!(
        LOADS,
        Unit::Count,
        "Loads that ran to the end, by result: success or failure."
    );
    describe_counter!(
        LOAD_NANOS,
        Unit::Nanoseconds,
        "Time spent in loads that ran to the end."
    );
    describe_counter!(
        RELOADS_STARTED,
        Unit::Count,
        "Reloads started by refresh-ahead or an explicit refresh."
    );
    describe_counter!(
        RELOADS,
        Unit::Count,
        "Reloads that ended, by result: success, failure or timeout."
    );
    describe_counter!(
        STALE_SERVED,
        Unit::Count,
        "Stale values a fetch returned instead of an error or a wait."
    );
    describe_counter!(
        DROPPED,
        Unit::Count,
        "Removal notifications dropped because the eviction channel was full."
    );
    describe_gauge!(ENTRIES, Unit::Count, "Entries held.");
    describe_gauge!(
        WEIGHTED_SIZE,
        Unit::Count,
        "The total weight held (the entry count without a weigher)."
    );
    describe_gauge!(
        LAG_MAX,
        Unit::Seconds,
        "The longest time between an entry's deadline and its removal by the expiry task."
    );
    describe_gauge!(
        LAG_MEAN,
        Unit::Seconds,
        "The mean time between an entry's deadline and its removal by the expiry task."
    );
}

impl Metrics {
    /// Publish `stats` under the cache `name` (registering the handles first, the first time).
    pub(crate) fn publish(&self, name: &str, stats: &CacheStats) {
        let h = self.handles.get_or_init(|| Handles::register(name));
        let CacheStats {
            hits,
            misses,
            inserts,
            updates,
            expired,
            explicit,
            replaced,
            evicted_for_size,
            load_successes,
            load_failures,
            total_load_time,
            entry_count,
            weighted_size,
            expiry_lag_max,
            expiry_lag_mean,
            notifications_dropped,
            reloads_started,
            reloads_succeeded,
            reloads_failed,
            reloads_timed_out,
            stale_served,
        } = *stats;
        h.hits.absolute(hits);
        h.misses.absolute(misses);
        h.inserts.absolute(inserts);
        h.updates.absolute(updates);
        h.expired.absolute(expired);
        h.explicit.absolute(explicit);
        h.replaced.absolute(replaced);
        h.size.absolute(evicted_for_size);
        h.load_successes.absolute(load_successes);
        h.load_failures.absolute(load_failures);
        h.load_nanos
            .absolute(u64::try_from(total_load_time.as_nanos()).unwrap_or(u64::MAX));
        h.dropped.absolute(notifications_dropped);
        h.reloads_started.absolute(reloads_started);
        h.reloads_succeeded.absolute(reloads_succeeded);
        h.reloads_failed.absolute(reloads_failed);
        h.reloads_timed_out.absolute(reloads_timed_out);
        h.stale_served.absolute(stale_served);
        h.entries.set(entry_count as f64);
        h.weighted_size.set(weighted_size as f64);
        h.lag_max.set(expiry_lag_max);
        h.lag_mean.set(expiry_lag_mean);
    }
}
