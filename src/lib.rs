//! ebb is a Tokio-native, concurrent, in-memory cache with time-to-live.
//!
//! A [`Cache`] is a cheap handle over one shared store: build it once into your app state and
//! clone it into every request handler. Each cache owns **exactly one** expiry task, which
//! removes expired entries on time with no traffic needed, and which **ends by itself when the
//! last handle is dropped**, freeing everything. Building a cache per request, by mistake or
//! on purpose, leaks nothing.
//!
//! ```
//! use std::time::Duration;
//!
//! #[tokio::main]
//! async fn main() {
//!     let sessions: ebb_cache::Cache<u64, String> = ebb_cache::Cache::builder()
//!         .name("sessions")
//!         .time_to_live(Duration::from_millis(300))
//!         .tick(Duration::from_millis(50))
//!         .build();
//!
//!     // Clone the handle into tasks: every clone sees the same entries.
//!     let writer = sessions.clone();
//!     tokio::spawn(async move { writer.insert(7, "ada".to_string()) })
//!         .await
//!         .unwrap();
//!     assert_eq!(sessions.get(&7).as_deref(), Some("ada"));
//!
//!     // Reads are exact, and with no calls at all the expiry task removes the entry
//!     // no later than one tick after its deadline.
//!     tokio::time::sleep(Duration::from_millis(300)).await;
//!     assert_eq!(sessions.get(&7), None);
//! } // the last handle is dropped here: the task ends and the memory is freed
//! ```
//!
//! # Why
//!
//! Caches elsewhere either leave expired entries in memory until the next call touches the
//! cache, or run a background worker that the user must remember to stop. A Go service once
//! built a TTL cache per request; each one started a timer goroutine nothing stopped, and the
//! service ran out of memory in minutes. ebb ties its one task to the handle's last `Arc`.
//!
//! # Lifecycle
//!
//! - [`CacheBuilder::build`] starts the expiry task on the current Tokio runtime, if there is
//!   one; [`CacheBuilder::build_on`] takes a runtime `Handle` for plain threads. Outside any
//!   runtime (a cache in a `static`) the cache works at once, and its task starts on the first
//!   runtime that writes to it. Never more than one task runs at a time.
//! - When the runtime running the task shuts down, the next runtime that writes to the cache
//!   (or asks its [`entry_count`](Cache::entry_count)) starts a new task there, which takes
//!   over every entry: those written before the shutdown expire on time too.
//! - The task holds no strong reference to the cache. When the last [`Cache`] clone is
//!   dropped, a `CancellationToken` is cancelled, the task exits, and every entry is dropped.
//!   Entries left then are dropped silently. [`Cache::closed`] resolves at that point.
//! - While nothing is scheduled the task sleeps without a timer; otherwise it sleeps until
//!   the next occupied slot of its timing wheel.
//!
//! # Time
//!
//! - [`get`](Cache::get) is exact: an entry is never returned from its deadline on, even if
//!   the task has not removed it yet (one clock read per read of an entry with a deadline).
//! - The tick (1 s by default, [`CacheBuilder::tick`], 1 ms to 60 s) bounds removal lag: an
//!   expired entry leaves [`entry_count`](Cache::entry_count), and its listener is told, at
//!   most one tick after its deadline, with no calls at all (plus the time to remove the
//!   entries due before it, when many fall due at once). A smaller tick costs wake-ups
//!   only while entries are due; an idle cache never wakes.
//! - A per-cache TTL ([`CacheBuilder::time_to_live`]), optionally spread by
//!   [`CacheBuilder::expiry_jitter`]; a per-entry TTL ([`Cache::insert_with_ttl`]), which is
//!   exact; and a time-to-idle ([`CacheBuilder::time_to_idle`]), refreshed by reads and
//!   writes. The earliest deadline wins. A zero per-entry TTL removes the key; a TTL at or
//!   past [`Cache::horizon`] never expires.
//! - Deadlines come from `tokio::time::Instant`, so `tokio::time::pause()` and `advance()`
//!   drive every TTL and TTI in tests.
//!
//! # Loading
//!
//! [`Cache::get_with`], [`Cache::try_get_with`], [`Cache::optionally_get_with`] and
//! [`Cache::get_with_expiry`] load a missing key once however many callers ask for it at the
//! same time; the others wait for that load. A cancelled or panicking loader hands over to a
//! waiter; errors are shared, not cached; a write during a load wins over the loaded value.
//!
//! # Bounded caches
//!
//! [`CacheBuilder::max_capacity`] bounds the number of entries (or, with
//! [`CacheBuilder::weigher`], their total weight). The inserting thread evicts before
//! `insert` returns, choosing victims with TinyLFU admission over a window and a CLOCK main
//! queue, so the bound holds without any maintenance call; a hit only bumps a small counter
//! in the entry. Evictions are reported with [`RemovalCause::Size`].
//!
//! # Removal notifications and statistics
//!
//! [`CacheBuilder::eviction_listener`] is called once per entry that leaves the cache, with a
//! [`RemovalCause`], never under a lock; [`CacheBuilder::eviction_channel`] sends the same to
//! a bounded channel for async consumers. A listener that calls back into its cache uses a
//! [`WeakCache`] ([`Cache::downgrade`]), so that it does not keep the cache alive.
//! [`CacheBuilder::record_stats`] enables [`Cache::stats`]; [`CacheBuilder::stats_interval`]
//! also logs a summary line with `tracing`. The task's work runs in a `tracing` span named
//! `ebb` carrying the cache's name.
//!
//! # Outside a runtime, and across runtimes
//!
//! A cache needs no runtime to be built or used: reads are exact and writes work anywhere.
//! What needs one is its expiry task, which removes expired entries with no calls: it runs
//! on a runtime with timers (a runtime without them is reported at the first write there, by
//! a panic naming `enable_time`). While no runtime runs the task (none has written yet, or
//! the one that ran it shut down and none has written since), expired entries stay in memory
//! and in `entry_count` until the next write from a runtime.
//!
//! Time is `tokio::time`. Runtimes with paused time (`start_paused`, `tokio::time::pause`)
//! each have their own clock, so a cache shared by several sees different "now"s: tests that
//! share one cache across runtimes (a `static` used by several `#[tokio::test]`s) should run
//! on real time and wait with a bounded deadline.
//!
//! # Cargo features
//!
//! None is on by default; the default build depends on tokio, dashmap, tokio-util and
//! tracing only.
//!
//! - `serde`: [`CacheStats`] implements `serde::Serialize`.
//! - `metrics`: publishes each cache's statistics as counters and gauges through the
//!   [`metrics`](https://docs.rs/metrics/0.24) facade (0.24), to whatever recorder the
//!   application installs (a Prometheus exporter, say): `ebb_cache_hits_total{cache="users"}`
//!   and the others listed in `docs/metrics.md`. Opt-in per cache, so that turning the
//!   feature on anywhere in a dependency graph makes no cache wake up: `publish_metrics(interval)`
//!   on the builder has the expiry task publish every `interval`, and `Cache::publish_metrics()`
//!   publishes now (in a scrape handler, for an exact scrape). `get` and `insert` never call
//!   the facade: the values come from the [`stats`](Cache::stats) counters.
//! - `internals`: test scaffolding for this crate's own tests, not part of the API.
//!
//! # Concurrency
//!
//! The store is a [`dashmap::DashMap`] hashed with the standard library's `RandomState`
//! (SipHash with random keys, resistant to hash flooding; see [`CacheBuilder::hasher`] for a
//! faster one with trusted keys). Reads take one shard read lock; writes take one shard
//! write lock and, only when the expiry task must learn a new or earlier deadline, a small
//! striped hand-off lock. A write to a bounded cache that creates an entry (or, with a
//! weigher, any write) also takes its key's policy shard lock, and evicts under it. No method
//! awaits or blocks on I/O, and no user code (listener, loader, weigher) runs under a lock.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]
// Every example shows its `main`, so that it runs as pasted into a new `main.rs`.
#![allow(clippy::needless_doctest_main)]

mod builder;
mod cache;
mod compute;
mod config;
mod error;
mod expiry;
mod iter;
mod listener;
mod load;
mod loader;
mod loading;
#[cfg(feature = "metrics")]
mod metrics;
mod policy;
mod refresh;
mod stats;
mod store;
mod sync;
mod task;
mod time;

pub use builder::CacheBuilder;
pub use cache::{Cache, WeakCache};
pub use compute::{CompResult, Entry, Op, OwnedKeyEntrySelector, RefKeyEntrySelector};
pub use config::Policy;
pub use error::BuildError;
pub use expiry::Expiry;
pub use iter::Iter;
pub use listener::{Removal, RemovalCause};
pub use load::{
    GetWith, GetWithByRef, GetWithExpiry, OptionallyGetWith, OptionallyGetWithByRef, TryGetWith,
    TryGetWithByRef, TryGetWithExpiry,
};
pub use loading::{
    LoadingCache, LoadingCacheBuilder, RefreshError, DEFAULT_LOAD_TIMEOUT,
    DEFAULT_MAX_CONCURRENT_RELOADS, DEFAULT_RELOAD_BACKOFF, DEFAULT_STALE_THROTTLE,
};
pub use stats::CacheStats;
pub use time::clock::{DEFAULT_TICK, MAX_TICK, MIN_TICK};

/// The settings of ebb's model tests (property tests against a reference model): `cases`
/// random cases, and no file of past failures (a failure prints its case).
#[cfg(test)]
fn model_test_config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The code in `docs/`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/migration.md")]
#[doc = include_str!("../docs/bad-input.md")]
#[doc = include_str!("../docs/performance.md")]
#[doc = include_str!("../docs/refresh.md")]
#[cfg_attr(feature = "metrics", doc = include_str!("../docs/metrics.md"))]
pub struct DocsDoctests;
