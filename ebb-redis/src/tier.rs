//! [`TieredCache`]: a per-replica ebb cache in front of a Redis shared by every replica.
//!
//! Invariants:
//! - **Reads never fail because Redis did.** A miss asks Redis (bounded by the read
//!   timeout, and not at all while the breaker is open); when Redis fails, times out, or
//!   holds bytes that do not decode, the loader runs (and its fill replaces those bytes).
//!   Only the loader's own error reaches a caller.
//! - **One load per key per replica.** Misses of a key join the local cache's single flight:
//!   one Redis read and at most one loader run per key at a time in a replica.
//! - **A local copy never outlives the remote one**: a value read from Redis is kept locally
//!   for at most what Redis has left of its TTL (and at most the local TTL); a load's result
//!   is kept locally only when its fill was written to Redis (or Redis could not be asked).
//! - **Fills never overwrite writes**: see `remote.rs` for the fill protocol; in this
//!   replica, a write or removal during a load also stops the load's local fill (ebb's
//!   "writes win over loads").
//! - **Writes go to Redis first.** The local tier takes the written value only after Redis
//!   acknowledged it and no other write of the key through this tier overlapped
//!   (`writes.rs`); a write that fails, times out or is cancelled drops the key locally.
//! - No lock is held across an `.await`; the loader runs under no lock.

use std::convert::Infallible;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::Codec;
use crate::config::Settings;
use crate::error::{BoxError, Error};
use crate::key::CacheKey;
use crate::remote::{Found, Remote, NOT_FOUND};
use crate::stats::{Counters, Event, TierStats};
use crate::writes::Writes;

/// An undecodable value is logged once per key per this window (it is counted every time).
const DECODE_LOG_WINDOW: Duration = Duration::from_secs(60);
/// At most this many keys are remembered for that; past it, the oldest are forgotten.
const DECODE_LOG_KEYS: usize = 1024;

/// A two-tier cache: an in-process [`ebb_cache::Cache`] per replica (L1) in front of Redis
/// (L2), shared by every replica of a service.
///
/// A cheap handle: clone it into every task; the clones share both tiers and the one Redis
/// connection. When the last clone is dropped, the local cache's expiry task ends and the
/// connection closes: a tier built per request leaks neither.
///
/// Keys live in Redis as `namespace:key` ([`CacheKey`]), values as JSON by default
/// ([`Codec`]). See the [crate documentation](crate) for the read and write paths, and
/// `docs/redis.md` for the protocol and its limits.
///
/// ```no_run
/// use std::time::Duration;
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct User {
///     id: u64,
///     name: String,
/// }
///
/// async fn user_from_db(id: u64) -> Result<User, std::io::Error> {
///     Ok(User { id, name: "ada".into() })
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let users: ebb_redis::TieredCache<u64, User> = ebb_redis::TieredCache::builder("users:v1")
///         .redis("redis://127.0.0.1:6379")
///         .local_ttl(Duration::from_secs(30))
///         .remote_ttl(Duration::from_secs(600))
///         .build();
///     let user = users.try_get_with(7, user_from_db(7)).await?; // L1, Redis, then the database
///     assert_eq!(user.name, "ada");
///     users.remove(&7).await?; // in Redis (a tombstone), then in L1
///     Ok(())
/// }
/// ```
pub struct TieredCache<K, V, C = crate::Json> {
    inner: Arc<Inner<K, V, C>>,
}

struct Inner<K, V, C> {
    /// L1. `None` is the not-found placeholder.
    local: ebb_cache::Cache<K, Option<V>>,
    remote: Remote,
    codec: C,
    settings: Arc<Settings>,
    writes: Writes<K>,
    counters: Arc<Counters>,
    /// Redis keys whose undecodable value was logged, and when.
    decode_logged: std::sync::Mutex<std::collections::HashMap<Vec<u8>, tokio::time::Instant>>,
    /// Invalidations from Redis, the tracking epoch (`tracking.rs`).
    coherence: Arc<crate::tracking::Coherence>,
}

impl<K, V, C> Clone for TieredCache<K, V, C> {
    fn clone(&self) -> Self {
        TieredCache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V, C> std::fmt::Debug for TieredCache<K, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredCache")
            .field("namespace", &self.inner.settings.namespace)
            .finish_non_exhaustive()
    }
}

/// Unwrap a result whose error cannot happen.
fn infallible<T>(result: Result<T, Arc<Infallible>>) -> T {
    match result {
        Ok(value) => value,
        Err(never) => match *never {},
    }
}

impl<K, V, C> TieredCache<K, V, C>
where
    K: CacheKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    C: Codec<V>,
{
    pub(crate) fn from_parts(
        local: ebb_cache::Cache<K, Option<V>>,
        remote: Remote,
        codec: C,
        settings: Arc<Settings>,
        counters: Arc<Counters>,
        coherence: Arc<crate::tracking::Coherence>,
    ) -> Self {
        TieredCache {
            inner: Arc::new(Inner {
                local,
                remote,
                codec,
                settings,
                writes: Writes::new(),
                counters,
                decode_logged: Default::default(),
                coherence,
            }),
        }
    }

    /// The tier's counters since it was built: hits in each tier, loads, not-found hits,
    /// Redis errors by kind, the breaker's trips and state. Sums a few per-thread stripes;
    /// reads and writes never wait for it.
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() {
    ///     let users: ebb_redis::TieredCache<u64, String> =
    ///         ebb_redis::TieredCache::builder("users:v1").redis("redis://127.0.0.1:6379").build();
    ///     users.get_with(7, async { "ada".to_string() }).await;
    ///     users.get_with(7, async { unreachable!() }).await;
    ///     let stats = users.stats();
    ///     assert_eq!((stats.loads, stats.l1_hits), (1, 1));
    /// }
    /// ```
    pub fn stats(&self) -> TierStats {
        self.inner
            .counters
            .snapshot(self.inner.remote.breaker.is_open())
    }

    /// Publish the tier's counters ([`stats`](Self::stats)) now through the
    /// [`metrics`](https://docs.rs/metrics/0.24) facade (0.24), to the global recorder, as
    /// absolute values labelled `namespace`: the names are listed in `docs/redis.md`. Call it
    /// in the scrape handler (the scrape is then exact), or from an interval task. Reads and
    /// writes never call the facade. Needs the `metrics` cargo feature.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        crate::stats::publish(&self.inner.settings.namespace, &self.stats());
    }

    /// Log an undecodable value once per key per window.
    fn log_undecodable(&self, redis_key: &[u8], error: &BoxError) {
        let now = tokio::time::Instant::now();
        let log = {
            let mut logged = self
                .inner
                .decode_logged
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if logged.len() >= DECODE_LOG_KEYS {
                logged.retain(|_, at| now.duration_since(*at) < DECODE_LOG_WINDOW);
                if logged.len() >= DECODE_LOG_KEYS {
                    logged.clear();
                }
            }
            match logged.get(redis_key) {
                Some(at) if now.duration_since(*at) < DECODE_LOG_WINDOW => false,
                _ => {
                    logged.insert(redis_key.to_vec(), now);
                    true
                }
            }
        };
        if log {
            tracing::warn!(
                target: "ebb_redis",
                namespace = %self.inner.settings.namespace,
                key = %String::from_utf8_lossy(redis_key),
                %error,
                "a value in Redis does not decode: it counts as a miss and the loaded value \
                 replaces it (another writer, or an older schema: give each schema its own \
                 versioned namespace); logged once per key per minute"
            );
        }
    }

    /// The namespace, version included (`users:v1`): keys live in Redis as
    /// `namespace:key`.
    pub fn namespace(&self) -> &str {
        &self.inner.settings.namespace
    }

    /// The Redis key for `key`: `namespace:key`.
    fn redis_key(&self, key: &K) -> Vec<u8> {
        let namespace = &self.inner.settings.namespace;
        let mut text = String::with_capacity(namespace.len() + 24);
        text.push_str(namespace);
        text.push(':');
        key.write_key(&mut text);
        text.into_bytes()
    }

    fn encode(&self, value: &V) -> Result<Vec<u8>, Error> {
        let bytes = self.inner.codec.encode(value).map_err(Error::Encode)?;
        if bytes.first() == Some(&0xFF) {
            let reason: BoxError =
                "the codec wrote a value that begins with 0xFF, the byte that begins the tier's \
                 markers: make the codec write a leading format byte (as Postcard does)"
                    .into();
            return Err(Error::Encode(reason));
        }
        Ok(bytes)
    }

    /// The value for `key` if this replica's local tier holds it, without asking Redis or
    /// running a loader (`None` for a not-found placeholder too).
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() {
    ///     let users: ebb_redis::TieredCache<u64, String> =
    ///         ebb_redis::TieredCache::builder("users:v1").redis("redis://127.0.0.1:6379").build();
    ///     assert_eq!(users.get_local(&7), None);
    ///     users.insert(7, "ada".to_string()).await.unwrap();
    ///     assert_eq!(users.get_local(&7).as_deref(), Some("ada"));
    /// }
    /// ```
    pub fn get_local(&self, key: &K) -> Option<V> {
        self.inner.local.get(key).flatten()
    }

    /// The value for `key`, from the local tier, else from Redis, else from `init`, whose
    /// result is written to both tiers; `init` may find nothing (`Ok(None)`), which is cached
    /// as a not-found placeholder for [`negative_ttl`](crate::TieredCacheBuilder::negative_ttl).
    /// The most general of the reads: the others are this one with a narrower loader.
    ///
    /// - Single-flight per key per replica: of all concurrent callers for a key, one asks
    ///   Redis and, on a miss, runs its `init`; the others share the outcome. An error from
    ///   `init` is shared with them as the same `Arc<E>` and cached nowhere.
    /// - A Redis that fails or is slower than the read timeout is skipped: `init` runs, and
    ///   its value is kept locally.
    /// - The result is written to Redis only if no write, removal or `invalidate_all` of the
    ///   key came after the miss's Redis read; otherwise it is returned and kept nowhere.
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() {
    ///     let users: ebb_redis::TieredCache<u64, String> =
    ///         ebb_redis::TieredCache::builder("users:v1").redis("redis://127.0.0.1:6379").build();
    ///     let found = users
    ///         .try_optionally_get_with(8, async { Ok::<_, std::io::Error>(None) })
    ///         .await
    ///         .unwrap();
    ///     assert_eq!(found, None); // cached as not found, in both tiers
    /// }
    /// ```
    pub async fn try_optionally_get_with<F, E>(&self, key: K, init: F) -> Result<Option<V>, Arc<E>>
    where
        F: Future<Output = Result<Option<V>, E>>,
        E: Send + Sync + 'static,
    {
        if let Some(hit) = self.inner.local.get(&key) {
            self.inner.counters.count(Event::L1Hit);
            if hit.is_none() {
                self.inner.counters.count(Event::NegativeHit);
            }
            return Ok(hit);
        }
        let redis_key = self.redis_key(&key);
        let redis_key = &redis_key[..];
        let miss = crate::tracking::guard_fill(&self.inner.coherence, redis_key, move || {
            self.miss(redis_key, init)
        });
        self.inner.local.try_get_with_expiry(key, miss).await
    }

    /// The value for `key`, from the local tier, else from Redis, else from a fallible
    /// `init` whose value is written to both tiers. Single-flight per key per replica, as
    /// [`try_optionally_get_with`](Self::try_optionally_get_with) is.
    ///
    /// A not-found placeholder (left by an `optionally` read) is not an answer this method
    /// can give: it runs `init` then, returns its result and caches it nowhere (the
    /// placeholder stays until it expires).
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() {
    ///     let users: ebb_redis::TieredCache<u64, String> =
    ///         ebb_redis::TieredCache::builder("users:v1").redis("redis://127.0.0.1:6379").build();
    ///     let name = users
    ///         .try_get_with(7, async { Ok::<_, std::io::Error>("ada".to_string()) })
    ///         .await
    ///         .unwrap();
    ///     assert_eq!(name, "ada");
    /// }
    /// ```
    pub async fn try_get_with<F, E>(&self, key: K, init: F) -> Result<V, Arc<E>>
    where
        F: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        let mut init = Some(init);
        let slot = &mut init;
        let found = self
            .try_optionally_get_with(key, async move {
                match slot.take() {
                    Some(init) => init.await.map(Some),
                    // This block runs at most once, and only it takes the loader.
                    None => Ok(None),
                }
            })
            .await?;
        match (found, init) {
            (Some(value), _) => Ok(value),
            // A placeholder answered: this caller's loader has not run.
            (None, Some(init)) => init.await.map_err(Arc::new),
            (None, None) => unreachable!("a loader that ran returned a value or an error"),
        }
    }

    /// [`try_get_with`](Self::try_get_with) with a loader that cannot fail.
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() {
    ///     let squares: ebb_redis::TieredCache<u64, u64> =
    ///         ebb_redis::TieredCache::builder("squares:v1").redis("redis://127.0.0.1:6379").build();
    ///     assert_eq!(squares.get_with(12, async { 144 }).await, 144);
    /// }
    /// ```
    pub async fn get_with<F>(&self, key: K, init: F) -> V
    where
        F: Future<Output = V>,
    {
        infallible(
            self.try_get_with(key, async { Ok::<_, Infallible>(init.await) })
                .await,
        )
    }

    /// The value for `key`, or `None` when `init` finds nothing; `None` is cached as a
    /// not-found placeholder in both tiers for
    /// [`negative_ttl`](crate::TieredCacheBuilder::negative_ttl), so repeated lookups of a
    /// missing key stop reaching the database. See
    /// [`try_optionally_get_with`](Self::try_optionally_get_with).
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() {
    ///     let users: ebb_redis::TieredCache<u64, String> =
    ///         ebb_redis::TieredCache::builder("users:v1").redis("redis://127.0.0.1:6379").build();
    ///     assert_eq!(users.optionally_get_with(8, async { None }).await, None);
    ///     // Cached as not found: this loader does not run.
    ///     assert_eq!(users.optionally_get_with(8, async { unreachable!() }).await, None);
    /// }
    /// ```
    pub async fn optionally_get_with<F>(&self, key: K, init: F) -> Option<V>
    where
        F: Future<Output = Option<V>>,
    {
        infallible(
            self.try_optionally_get_with(key, async { Ok::<_, Infallible>(init.await) })
                .await,
        )
    }

    /// A miss in this replica, as the leader of the key's flight (`redis_key` is its Redis
    /// key): Redis, then the loader and the fill. Returns the outcome and how long the local
    /// tier keeps it (zero: not kept).
    ///
    /// Redis is read plainly first (`PTTL`, `GET`: all a hit needs); only when that finds no
    /// usable value is it read again, stamped with the server's clock, for the fill. Both
    /// reads together stay within the read timeout.
    ///
    /// The hit is answered here; everything after a read that found no usable value (the
    /// stamped read, the loader, the fill) is [`load`](Self::load), boxed: ebb boxes this
    /// whole future per miss, and keeping the rare states out of it keeps that allocation
    /// small on the hit path.
    async fn miss<F, E>(
        &self,
        redis_key: &[u8],
        init: F,
    ) -> Result<(Option<V>, Option<Duration>), E>
    where
        F: Future<Output = Result<Option<V>, E>>,
    {
        let settings = &self.inner.settings;
        // Both reads end within the read timeout.
        let deadline = tokio::time::Instant::now() + settings.read_timeout;
        let read = self.inner.remote.read(redis_key, deadline).await;
        if let Ok(found) = &read {
            // What Redis has left bounds the local copy.
            let keep = |cap: Duration| Some(found.ttl.map_or(cap, |left| cap.min(left)));
            match &found.found {
                Found::Value(bytes) => {
                    if let Ok(value) = self.inner.codec.decode(bytes) {
                        self.inner.counters.count(Event::L2Hit);
                        return Ok((Some(value), keep(settings.local_ttl)));
                    }
                }
                Found::Placeholder => {
                    self.inner.counters.count(Event::L2Hit);
                    self.inner.counters.count(Event::NegativeHit);
                    return Ok((None, keep(settings.local_ttl.min(settings.negative_ttl))));
                }
                Found::Nothing => {}
            }
        }
        Box::pin(self.load(redis_key, deadline, read, init)).await
    }

    /// The rest of a miss after a plain read (`read`) found no usable value: the stamped
    /// read (which may still find a value), the loader and the fill, all reads ending by
    /// `deadline`.
    async fn load<F, E>(
        &self,
        redis_key: &[u8],
        deadline: tokio::time::Instant,
        mut read: Result<crate::remote::Read, Error>,
        init: F,
    ) -> Result<(Option<V>, Option<Duration>), E>
    where
        F: Future<Output = Result<Option<V>, E>>,
    {
        let settings = &self.inner.settings;
        let remote = &self.inner.remote;
        // What Redis has left bounds the local copy.
        let keep =
            |cap: Duration, left: Option<Duration>| Some(left.map_or(cap, |left| cap.min(left)));
        let counters = &self.inner.counters;
        let stamped = || remote.read_stamped(redis_key, deadline);
        // The stamped read's server time (`None`: Redis could not be asked, so no fill), and
        // the undecodable bytes it found, which the fill replaces.
        let mut undecodable = None;
        let read_at = loop {
            match read {
                Ok(found) => match found.found {
                    Found::Value(bytes) => match self.inner.codec.decode(&bytes) {
                        Ok(value) => {
                            counters.count(Event::L2Hit);
                            return Ok((Some(value), keep(settings.local_ttl, found.ttl)));
                        }
                        Err(error) => match found.at {
                            None => read = stamped().await,
                            Some(at) => {
                                counters.count(Event::DecodeError);
                                self.log_undecodable(redis_key, &error);
                                undecodable = Some(bytes);
                                break Some(at);
                            }
                        },
                    },
                    Found::Placeholder => {
                        counters.count(Event::L2Hit);
                        counters.count(Event::NegativeHit);
                        let cap = settings.local_ttl.min(settings.negative_ttl);
                        return Ok((None, keep(cap, found.ttl)));
                    }
                    Found::Nothing => match found.at {
                        None => read = stamped().await,
                        Some(at) => {
                            counters.count(Event::L2Miss);
                            break Some(at);
                        }
                    },
                },
                Err(error) => {
                    tracing::debug!(target: "ebb_redis", %error, "Redis read failed: loading");
                    break None;
                }
            }
        };
        counters.count(Event::Load);
        let loaded = init.await?;
        let (bytes, remote_ttl, local_ttl) = match &loaded {
            Some(value) => {
                let bytes = self.encode(value).inspect_err(|error| {
                    tracing::warn!(target: "ebb_redis", %error, "a loaded value is kept locally only");
                });
                let ttl = settings.jittered(settings.remote_ttl);
                (bytes.ok(), ttl, settings.local_ttl)
            }
            None => (
                Some(NOT_FOUND.to_vec()),
                settings.jittered(settings.negative_ttl),
                settings.local_ttl.min(settings.negative_ttl),
            ),
        };
        let local_ttl = match (read_at, bytes) {
            (Some(read_at), Some(bytes)) => {
                match self
                    .inner
                    .remote
                    .fill(
                        redis_key,
                        &bytes,
                        remote_ttl,
                        read_at,
                        undecodable.as_deref(),
                    )
                    .await
                {
                    Ok(true) => local_ttl.min(remote_ttl),
                    // A write, removal or invalidate_all came after the read (or the load
                    // outlived the tombstone TTL): return the value, keep it nowhere.
                    Ok(false) => {
                        counters.count(Event::FillRefused);
                        Duration::ZERO
                    }
                    Err(error) => {
                        tracing::debug!(target: "ebb_redis", %error, "Redis fill failed");
                        local_ttl
                    }
                }
            }
            _ => local_ttl,
        };
        Ok((loaded, Some(local_ttl)))
    }

    /// Write `value` for `key`: to Redis first (for the remote TTL, jittered), then to this
    /// replica's local tier.
    ///
    /// When Redis fails or times out (the write may or may not have happened), the key is
    /// dropped from the local tier, not updated, and the error is returned. A load of the key
    /// in flight anywhere does not overwrite this value. When several writes of one key
    /// overlap in this replica, the local tier drops the key instead of guessing which one
    /// Redis kept.
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() -> Result<(), ebb_redis::Error> {
    ///     let users: ebb_redis::TieredCache<u64, String> =
    ///         ebb_redis::TieredCache::builder("users:v1").redis("redis://127.0.0.1:6379").build();
    ///     users.insert(7, "ada".to_string()).await?;
    ///     Ok(())
    /// }
    /// ```
    pub async fn insert(&self, key: K, value: V) -> Result<(), Error> {
        let bytes = self.encode(&value)?;
        let redis_key = self.redis_key(&key);
        let settings = &self.inner.settings;
        let remote_ttl = settings.jittered(settings.remote_ttl);
        let local = &self.inner.local;
        let ticket = self.inner.writes.begin(&key, |key| local.remove(key));
        let seen = self.inner.coherence.seen(&redis_key);
        let result = self.inner.remote.set(&redis_key, &bytes, remote_ttl).await;
        let mut replaced = None;
        ticket.finish(|alone| match (&result, alone) {
            (Ok(()), true) => self.inner.coherence.update(
                &redis_key,
                &seen,
                settings.local_ttl.min(remote_ttl),
                |ttl| match ttl {
                    Some(ttl) => local.insert_with_ttl(key, Some(value), ttl),
                    None => replaced = local.remove(&key),
                },
            ),
            _ => replaced = local.remove(&key),
        });
        drop(replaced); // outside the write's record lock
        result
    }

    /// Remove `key`: in Redis first (replaced by a short-lived tombstone, so that loads that
    /// began before the removal cannot write their value back), then in this replica's local
    /// tier, which drops the key whatever Redis answered. Returns Redis's error, if any (the
    /// removal may or may not have happened).
    ///
    /// Other replicas keep a local copy until their local TTL ends (see `docs/redis.md`).
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() -> Result<(), ebb_redis::Error> {
    ///     let users: ebb_redis::TieredCache<u64, String> =
    ///         ebb_redis::TieredCache::builder("users:v1").redis("redis://127.0.0.1:6379").build();
    ///     users.remove(&7).await?;
    ///     Ok(())
    /// }
    /// ```
    pub async fn remove(&self, key: &K) -> Result<(), Error> {
        let redis_key = self.redis_key(key);
        let local = &self.inner.local;
        let ticket = self.inner.writes.begin(key, |key| local.remove(key));
        let result = self.inner.remote.tombstone(&redis_key).await;
        let mut removed = None;
        ticket.finish(|_| removed = local.remove(key));
        drop(removed); // outside the write's record lock
        result
    }

    /// Drop every key of the namespace, in Redis and in this replica's local tier, without
    /// blocking Redis: no `KEYS`, but `SCAN` and `UNLINK` in batches of 500, each within the
    /// write timeout. The call takes as long as the namespace needs (roughly one round trip
    /// per 500 keys).
    ///
    /// Before the scan, the invalidation's server time is recorded in the namespace, so that
    /// no load that read Redis before this call writes its value back (for the tombstone
    /// TTL). Keys written during the scan may survive it; reads during the scan may still
    /// see keys not yet unlinked. Other replicas keep their local copies until their local
    /// TTL ends.
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() -> Result<(), ebb_redis::Error> {
    ///     let users: ebb_redis::TieredCache<u64, String> =
    ///         ebb_redis::TieredCache::builder("users:v1").redis("redis://127.0.0.1:6379").build();
    ///     users.invalidate_all().await?;
    ///     Ok(())
    /// }
    /// ```
    pub async fn invalidate_all(&self) -> Result<(), Error> {
        self.inner.local.invalidate_all();
        let result = self.inner.remote.invalidate_all().await;
        // Misses during the scan may have filled from keys not yet unlinked.
        self.inner.local.invalidate_all();
        result.map(drop)
    }

    /// The state of this replica's coherence with the others: tracking's state and the
    /// invalidations received (see `docs/coherence.md`).
    pub fn coherence_stats(&self) -> crate::CoherenceStats {
        self.inner.coherence.stats()
    }
}
