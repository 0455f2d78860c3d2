//! A shared second tier for [`ebb_cache`] in a real Redis.
//!
//! A service that runs as N replicas has N in-process caches that each miss on their own.
//! A [`TieredCache`] keeps ebb's in-process cache per replica (L1) and puts Redis (L2),
//! shared by every replica, between it and the loader:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct User {
//!     id: u64,
//!     name: String,
//! }
//!
//! async fn find_user(id: u64) -> Result<Option<User>, std::io::Error> {
//!     Ok((id == 7).then(|| User { id, name: "ada".into() }))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let users: ebb_redis::TieredCache<u64, User> = ebb_redis::TieredCache::builder("users:v1")
//!         .redis("redis://127.0.0.1:6379")
//!         .local_ttl(Duration::from_secs(30))
//!         .local_max_capacity(100_000)
//!         .remote_ttl(Duration::from_secs(600))
//!         .negative_ttl(Duration::from_secs(60))
//!         .build();
//!     // L1, then Redis, then the loader; the loaded value goes to both tiers.
//!     let user = users.try_optionally_get_with(7, find_user(7)).await?;
//!     assert_eq!(user.map(|u| u.name).as_deref(), Some("ada"));
//!     // Nobody: cached as a not-found placeholder for `negative_ttl`.
//!     assert!(users.try_optionally_get_with(8, find_user(8)).await?.is_none());
//!     // Write-through, and removal (in Redis, then in L1).
//!     users.insert(7, User { id: 7, name: "ada lovelace".into() }).await?;
//!     users.remove(&7).await?;
//!     Ok(())
//! }
//! ```
//!
//! # Reads
//!
//! An L1 hit costs what an ebb hit costs. A miss joins the key's single flight in this
//! replica (however many callers miss at once, one asks Redis and at most one runs its
//! loader), which reads the value and its remaining TTL in one round trip (`PTTL` and `GET`,
//! pipelined). A Redis hit fills L1 for no longer than Redis has left; a Redis miss reads the
//! key again with the server's clock (a small Lua script, for the fill protocol), runs the
//! loader and fills Redis, then L1. Reads never fail because Redis did: a Redis that
//! is down or slow (past the read timeout) is skipped, and the loader's value is kept in L1
//! only; bytes that do not decode are a miss, replaced in Redis by the loaded value. Only the
//! loader's own error reaches a caller.
//!
//! # Faults
//!
//! After [`breaker_threshold`](TieredCacheBuilder::breaker_threshold) (5) Redis failures in a
//! row (timeouts, no connection), a breaker skips Redis for
//! [`breaker_cooldown`](TieredCacheBuilder::breaker_cooldown) (2 s): misses go straight to
//! the loader and writes fail with [`Error::Unavailable`]; then one call probes Redis. A lost
//! connection is reopened in the background with a backoff (100 ms doubling to 2 s). A Redis
//! that refuses writes (out of memory, read-only) fails the writes and serves the reads. Every
//! change is a `tracing` event and a counter ([`TieredCache::stats`]; with the `metrics`
//! feature, `TieredCache::publish_metrics`). The fault table, with what a caller sees and
//! the test that shows it, is in `docs/redis.md`.
//!
//! # Writes, removals and loads that race them
//!
//! [`insert`](TieredCache::insert) and [`remove`](TieredCache::remove) write Redis first,
//! then L1. When Redis fails or times out, the key is dropped from L1 (not updated) and the
//! error is returned. A removal leaves a tombstone in Redis for
//! [`tombstone_ttl`](TieredCacheBuilder::tombstone_ttl); a load's fill is a script that
//! writes only if the key is empty or holds a tombstone older than the load's Redis read, no
//! [`invalidate_all`](TieredCache::invalidate_all) came after that read, and the read is
//! younger than the tombstone TTL. So a load that started before a write or removal made
//! through the tier, in any replica, never writes its older value over it. What remains
//! (another replica's L1 copy, writes that bypass the tier) is in `docs/redis.md`.
//!
//! # Coherence between replicas
//!
//! On by default: the tier turns on Redis's broadcast invalidation (`CLIENT TRACKING ON BCAST
//! PREFIX namespace: NOLOOP`) on its connection, so any change to a key of the namespace, by
//! anyone (another replica, another service, an expiry, a `FLUSHALL`), drops that key from
//! every replica's L1; a replica's own `insert` keeps its fresh copy. While tracking is down
//! or refused, L1 entries live at most [`degraded_ttl`](TieredCacheBuilder::degraded_ttl);
//! when it comes back, L1 is cleared. [`coherence_stats`](TieredCache::coherence_stats) says
//! where it stands. See `docs/coherence.md`.
//!
//! # Keys and values
//!
//! Keys are `namespace:key` ([`CacheKey`], implemented for integers and strings); the
//! namespace carries a version (`users:v1`), which is how a value's schema is rolled. Values
//! are JSON by default ([`Json`]), so services in any language can read them; `Postcard`
//! (feature `postcard`) is a compact binary codec. A not-found placeholder is the marker
//! [`NOT_FOUND`] (`0xFF` then `ebb:not-found`), a tombstone begins with [`TOMBSTONE_PREFIX`]:
//! neither can be a JSON value, since JSON is UTF-8 and UTF-8 never contains `0xFF`.
//!
//! # Connections, tasks and timeouts
//!
//! Each tier opens its own multiplexed connection (one socket, pipelined; never one the
//! application's code shares), in the background from [`build`](TieredCacheBuilder::build),
//! and reopens it in the background when it breaks. Every Redis call, connecting included, is bounded: reads by
//! [`read_timeout`](TieredCacheBuilder::read_timeout) (200 ms), writes by
//! [`write_timeout`](TieredCacheBuilder::write_timeout) (500 ms), connection attempts by
//! [`connect_timeout`](TieredCacheBuilder::connect_timeout) (1 s). A tier holds the L1's one
//! expiry task, the connection's driver task and, while it connects, one connection task;
//! when the last clone of a tier is dropped they all end and the connection closes, so a
//! tier built per request leaks nothing.
//!
//! # Scope
//!
//! A standalone Redis (7.x, or anything that speaks its protocol and runs Lua scripts), over
//! TCP, a Unix socket, or TLS (`rediss://`, feature `tls`). Not yet: Sentinel (redis-rs
//! supports it through its own client type, not through a URL) and Redis Cluster; what they
//! would take, and the ACL rules the tier needs, are in `docs/redis.md`.
//!
//! # Cargo features
//!
//! None by default. `postcard`: the `Postcard` codec. `tls`: `rediss://` URLs through
//! rustls (with ring) and the webpki roots. `metrics`: `TieredCache::publish_metrics`, the
//! tier's counters through the `metrics` 0.24 facade.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]
// Every example shows its `main`, so that it runs as pasted into a new `main.rs`.
#![allow(clippy::needless_doctest_main)]

mod breaker;
mod builder;
mod codec;
mod config;
mod error;
mod key;
mod link;
mod remote;
mod stats;
mod tier;
mod tracking;
mod writes;

pub use builder::TieredCacheBuilder;
#[cfg(feature = "postcard")]
pub use codec::Postcard;
pub use codec::{Codec, Json};
pub use config::{
    DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_LOCAL_TTL, DEFAULT_NEGATIVE_TTL, DEFAULT_READ_TIMEOUT, DEFAULT_REMOTE_TTL,
    DEFAULT_REMOTE_TTL_JITTER, DEFAULT_TOMBSTONE_TTL, DEFAULT_WRITE_TIMEOUT,
};
pub use error::{BoxError, Error};
pub use key::CacheKey;
/// The Redis client crate this tier is built on (redis-rs), for
/// [`redis_client`](TieredCacheBuilder::redis_client): hand in a `redis::Client` of this
/// version.
pub use redis;
pub use remote::{NOT_FOUND, TOMBSTONE_PREFIX};
pub use stats::TierStats;
pub use tier::TieredCache;
pub use tracking::{
    CoherenceStats, TrackingState, DEFAULT_DEGRADED_TTL, DEFAULT_TRACKING_PING_INTERVAL,
};

/// The code in `docs/redis.md`, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/redis.md")]
pub struct DocsDoctests;

/// The code in `docs/coherence.md`, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/coherence.md")]
pub struct CoherenceDoctests;
