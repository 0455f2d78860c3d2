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
//!     let sessions: ebb::Cache<u64, String> = ebb::Cache::builder()
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
//! - [`CacheBuilder::build`] spawns the expiry task on the current Tokio runtime (it panics
//!   outside one, naming the fix); [`CacheBuilder::try_build`] returns a [`BuildError`]
//!   instead, and [`CacheBuilder::build_on`] takes a runtime `Handle` for plain threads.
//! - The task holds no strong reference to the cache. When the last [`Cache`] clone is
//!   dropped, a `CancellationToken` is cancelled, the task exits, and every entry is dropped.
//!   Entries left then are dropped silently.
//! - While nothing is scheduled the task sleeps without a timer; otherwise it sleeps until
//!   the next occupied slot of its timing wheel.
//!
//! # Time
//!
//! - [`get`](Cache::get) is exact: an entry is never returned from its deadline on.
//! - The tick (1 s by default, [`CacheBuilder::tick`]) bounds removal lag: an expired entry
//!   leaves [`entry_count`](Cache::entry_count) at most one tick after its deadline.
//! - Deadlines come from `tokio::time::Instant`, so `tokio::time::pause()` and `advance()`
//!   drive them in tests.
//! - A per-cache TTL ([`CacheBuilder::time_to_live`]), optionally spread by
//!   [`CacheBuilder::expiry_jitter`], and a per-entry TTL ([`Cache::insert_with_ttl`]), which
//!   is exact. A zero per-entry TTL removes the key; a TTL at or past
//!   [`Cache::horizon`] never expires.
//!
//! # Concurrency
//!
//! The store is a [`dashmap::DashMap`]. Reads take one shard read lock; writes take one
//! shard write lock and, only when the expiry task must learn a new or earlier deadline, a
//! small striped hand-off lock. No method awaits or blocks on I/O.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]

mod builder;
mod cache;
mod clock;
mod driver;
mod handoff;
mod jitter;
mod listener;
mod load;
mod stats;
mod store;
mod sync;
mod wheel;

pub use builder::{BuildError, CacheBuilder, DEFAULT_TICK, MAX_TICK, MIN_TICK};
pub use cache::{Cache, Internals, WeakCache};
pub use listener::{Removal, RemovalCause};
pub use stats::CacheStats;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
