//! [`TieredCacheBuilder`]: the settings of both tiers, validated before anything is built.
//!
//! Invariant: `try_build` either returns a working tier or an [`Error::Config`] naming the
//! fix; it never blocks and never fails because Redis is down (the connection is opened in
//! the background, and calls wait for it within their own timeouts).

use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{Codec, Json};
use crate::config::{
    Settings, DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_LOCAL_TTL, DEFAULT_NEGATIVE_TTL, DEFAULT_READ_TIMEOUT, DEFAULT_REMOTE_TTL,
    DEFAULT_REMOTE_TTL_JITTER, DEFAULT_TOMBSTONE_TTL, DEFAULT_WRITE_TIMEOUT,
};
use crate::error::Error;
use crate::key::CacheKey;
use crate::link::Link;
use crate::remote::Remote;
use crate::stats::Counters;
use crate::tier::TieredCache;

/// Where the tier connects.
enum Source {
    Url(String),
    Client(redis::Client),
}

/// Builds a [`TieredCache`]; made by [`TieredCache::builder`].
///
/// Every setting has a documented default (the `DEFAULT_*` constants); only the Redis
/// address is required.
#[must_use]
pub struct TieredCacheBuilder<K, V, C = Json> {
    namespace: String,
    source: Option<Source>,
    codec: C,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    local_ttl: Duration,
    local_max_capacity: Option<u64>,
    remote_ttl: Duration,
    negative_ttl: Duration,
    tombstone_ttl: Duration,
    jitter: f64,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    coherence: crate::tracking::Options,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> TieredCache<K, V, Json> {
    /// A builder for a tier whose keys live in Redis as `namespace:key`.
    ///
    /// Put a version in the namespace (`users:v1`): it is how a value's schema is rolled.
    /// Replicas on the new version use `users:v2` and never read the old values, which
    /// expire on their own. Two namespaces must not be prefixes of each other up to a `:`
    /// (`users` and `users:v1`): [`invalidate_all`](TieredCache::invalidate_all) of the
    /// shorter would drop the longer's keys too.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// #[tokio::main]
    /// async fn main() {
    ///     let users: ebb_redis::TieredCache<u64, String> = ebb_redis::TieredCache::builder("users:v1")
    ///         .redis("redis://127.0.0.1:6379")      // the tier opens its own connection
    ///         .local_ttl(Duration::from_secs(30))   // L1: this replica's copy
    ///         .local_max_capacity(100_000)
    ///         .remote_ttl(Duration::from_secs(600)) // L2: Redis, ±5 % jitter
    ///         .negative_ttl(Duration::from_secs(60))
    ///         .build();                             // connects in the background
    ///     let name = users.get_with(7, async { "ada".to_string() }).await;
    ///     assert_eq!(name, "ada");
    /// }
    /// ```
    pub fn builder(namespace: impl Into<String>) -> TieredCacheBuilder<K, V, Json> {
        TieredCacheBuilder {
            namespace: namespace.into(),
            source: None,
            codec: Json,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            local_ttl: DEFAULT_LOCAL_TTL,
            local_max_capacity: None,
            remote_ttl: DEFAULT_REMOTE_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            jitter: DEFAULT_REMOTE_TTL_JITTER,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            coherence: crate::tracking::Options::default(),
            _types: PhantomData,
        }
    }
}

impl<K, V, C> TieredCacheBuilder<K, V, C> {
    /// Connect to the Redis at `url` (`redis://[user:password@]host:port[/db]`; `rediss://`
    /// with the `tls` feature; `redis+unix:///path` for a socket). The tier opens its own
    /// connection from it.
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.source = Some(Source::Url(url.into()));
        self
    }

    /// Connect through a client the application already configured (credentials, TLS,
    /// protocol). The tier opens its own connection from it and never shares one with the
    /// application's code. [`redis`] is re-exported so that the versions match.
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let client = ebb_redis::redis::Client::open("redis://127.0.0.1:6379")?;
    ///     let users: ebb_redis::TieredCache<u64, String> =
    ///         ebb_redis::TieredCache::builder("users:v1").redis_client(client).build();
    ///     users.insert(7, "ada".to_string()).await?;
    ///     Ok(())
    /// }
    /// ```
    pub fn redis_client(mut self, client: redis::Client) -> Self {
        self.source = Some(Source::Client(client));
        self
    }

    /// Encode values with `codec` instead of JSON (for example `Postcard`,
    /// with the `postcard` feature).
    pub fn codec<C2>(self, codec: C2) -> TieredCacheBuilder<K, V, C2> {
        TieredCacheBuilder {
            namespace: self.namespace,
            source: self.source,
            codec,
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
            local_ttl: self.local_ttl,
            local_max_capacity: self.local_max_capacity,
            remote_ttl: self.remote_ttl,
            negative_ttl: self.negative_ttl,
            tombstone_ttl: self.tombstone_ttl,
            jitter: self.jitter,
            breaker_threshold: self.breaker_threshold,
            breaker_cooldown: self.breaker_cooldown,
            coherence: self.coherence,
            _types: PhantomData,
        }
    }

    /// How long one connection attempt may take (TCP, TLS and handshake). Default
    /// [`DEFAULT_CONNECT_TIMEOUT`], 1 s. A call that finds no
    /// connection waits for the attempt within its own timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a miss waits for Redis (connecting included) before it goes to the loader.
    /// Default [`DEFAULT_READ_TIMEOUT`], 200 ms.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// How long a write (`insert`, `remove`, a load's fill, each batch of
    /// `invalidate_all`) waits for Redis, connecting included, before it reports
    /// [`Error::Timeout`]. Default [`DEFAULT_WRITE_TIMEOUT`],
    /// 500 ms.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// How long this replica keeps a value (or a placeholder) in its local tier, at most:
    /// never longer than what Redis has left. This bounds how long a replica serves a value
    /// another replica has replaced or removed. Default
    /// [`DEFAULT_LOCAL_TTL`], 30 s.
    pub fn local_ttl(mut self, ttl: Duration) -> Self {
        self.local_ttl = ttl;
        self
    }

    /// Bound the local tier to `entries` entries (not-found placeholders count). Unbounded
    /// by default.
    pub fn local_max_capacity(mut self, entries: u64) -> Self {
        self.local_max_capacity = Some(entries);
        self
    }

    /// How long Redis keeps a value, spread by [`remote_ttl_jitter`](Self::remote_ttl_jitter)
    /// so that keys filled together do not expire together. Default
    /// [`DEFAULT_REMOTE_TTL`], 10 min.
    pub fn remote_ttl(mut self, ttl: Duration) -> Self {
        self.remote_ttl = ttl;
        self
    }

    /// The spread of the remote TTLs (of values and placeholders), as a fraction: 0.05 is
    /// ±5 %. `0.0` turns it off. Default
    /// [`DEFAULT_REMOTE_TTL_JITTER`].
    pub fn remote_ttl_jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// How long a not-found placeholder lives (in Redis, jittered; locally, at most the local
    /// TTL). Default [`DEFAULT_NEGATIVE_TTL`], 60 s.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// How long a removal's tombstone (and an `invalidate_all`'s record) lives in Redis, and
    /// so the longest a load may take, from its Redis read to its fill, and still have its
    /// value written to Redis: a load that takes longer returns its value but caches it
    /// nowhere. Default [`DEFAULT_TOMBSTONE_TTL`], 10 s.
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// How many Redis failures in a row (a call that times out, or finds no connection)
    /// open the breaker: then no call asks Redis (reads go to the loader, writes fail with
    /// [`Error::Unavailable`]) until [`breaker_cooldown`](Self::breaker_cooldown) has passed
    /// and one probing call succeeds. A refusal (Redis answered with an error: out of
    /// memory, read-only) is not a failure. Default [`DEFAULT_BREAKER_THRESHOLD`], 5.
    pub fn breaker_threshold(mut self, failures: u32) -> Self {
        self.breaker_threshold = failures;
        self
    }

    /// How long the open breaker skips Redis before one call probes it. Default
    /// [`DEFAULT_BREAKER_COOLDOWN`], 2 s.
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// Keep replicas coherent through Redis's invalidations (`CLIENT TRACKING` in broadcast
    /// mode on the namespace's prefix): any change to a key of the namespace, by anyone,
    /// drops it from every replica's L1. On by default; see `docs/coherence.md`. Off, L1
    /// copies live their `local_ttl` whatever happens in Redis, and the connection stays
    /// RESP2.
    pub fn coherence(mut self, on: bool) -> Self {
        self.coherence.enabled = on;
        self
    }

    /// While invalidation tracking is down (lost, not yet confirmed, or refused), how long
    /// an L1 entry may live at most; entries filled before the loss are dropped this long
    /// after tracking was last confirmed on. Default
    /// [`DEFAULT_DEGRADED_TTL`](crate::DEFAULT_DEGRADED_TTL), 2 s.
    pub fn degraded_ttl(mut self, ttl: Duration) -> Self {
        self.coherence.degraded_ttl = ttl;
        self
    }

    /// How often the tier checks that invalidation tracking is still on (`CLIENT
    /// TRACKINGINFO` on its connection), to notice a silent loss. Default
    /// [`DEFAULT_TRACKING_PING_INTERVAL`](crate::DEFAULT_TRACKING_PING_INTERVAL), 1 s.
    pub fn tracking_ping_interval(mut self, interval: Duration) -> Self {
        self.coherence.ping_interval = interval;
        self
    }

    /// Build the tier, or say why it cannot be built. Never blocks: the connection is opened
    /// in the background (inside a Tokio runtime; outside one, by the first call).
    pub fn try_build(self) -> Result<TieredCache<K, V, C>, Error>
    where
        K: CacheKey + Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        C: Codec<V>,
    {
        if self.namespace.is_empty() {
            return Err(Error::Config(
                "the namespace is empty: give one with a version, such as `users:v1`".into(),
            ));
        }
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("read_timeout", self.read_timeout),
            ("write_timeout", self.write_timeout),
            ("local_ttl", self.local_ttl),
            ("remote_ttl", self.remote_ttl),
            ("negative_ttl", self.negative_ttl),
            ("tombstone_ttl", self.tombstone_ttl),
            ("breaker_cooldown", self.breaker_cooldown),
            ("degraded_ttl", self.coherence.degraded_ttl),
            ("tracking_ping_interval", self.coherence.ping_interval),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!(
                    "{name} is zero: give it a positive duration"
                )));
            }
        }
        if self.breaker_threshold == 0 {
            return Err(Error::Config(
                "breaker_threshold is zero: give the number of failures in a row that open \
                 the breaker (default 5)"
                    .into(),
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(Error::Config(format!(
                "remote_ttl_jitter {} is not a fraction in 0.0..1.0 (0.05 spreads TTLs by ±5 %)",
                self.jitter
            )));
        }
        let client =
            match self.source {
                None => return Err(Error::Config(
                    "no Redis given: call .redis(\"redis://host:6379\") or .redis_client(client)"
                        .into(),
                )),
                Some(Source::Client(client)) => client,
                Some(Source::Url(url)) => redis::Client::open(url.as_str()).map_err(|e| {
                    Error::Config(format!(
                    "cannot use the Redis URL {url:?}: {e} (`rediss://` needs the `tls` feature)"
                ))
                })?,
            };
        let mut local = ebb_cache::Cache::builder()
            .name(self.namespace.clone())
            .time_to_live(self.local_ttl);
        if let Some(max) = self.local_max_capacity {
            local = local.max_capacity(max);
        }
        let local = local
            .try_build()
            .map_err(|e| Error::Config(format!("the local tier: {e}")))?;
        let settings = Arc::new(Settings {
            namespace: self.namespace,
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
            local_ttl: self.local_ttl,
            remote_ttl: self.remote_ttl,
            negative_ttl: self.negative_ttl,
            tombstone_ttl: self.tombstone_ttl,
            jitter: self.jitter,
            breaker_threshold: self.breaker_threshold,
            breaker_cooldown: self.breaker_cooldown,
        });
        let coherence = crate::tracking::Coherence::new(
            &settings.namespace,
            self.coherence,
            local.clone(),
            settings.read_timeout,
        );
        let client = coherence
            .client(client)
            .map_err(|e| Error::Config(format!("the Redis client in RESP3: {e}")))?;
        let hook = coherence
            .enabled()
            .then(|| Arc::clone(&coherence) as Arc<dyn crate::link::ConnectHook>);
        let counters = Arc::new(Counters::new());
        let link = Link::new(
            client,
            self.connect_timeout,
            Arc::clone(&counters),
            settings.namespace.clone(),
            hook,
        );
        link.warm_up();
        coherence.start(&link);
        let remote = Remote::new(link, Arc::clone(&settings), Arc::clone(&counters));
        Ok(TieredCache::from_parts(
            local, remote, self.codec, settings, counters, coherence,
        ))
    }

    /// Build the tier, like [`try_build`](Self::try_build).
    ///
    /// # Panics
    ///
    /// When a setting cannot work (no Redis given, an unparsable URL, a zero duration): the
    /// message names the fix. Never because Redis is down.
    #[track_caller]
    pub fn build(self) -> TieredCache<K, V, C>
    where
        K: CacheKey + Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        C: Codec<V>,
    {
        match self.try_build() {
            Ok(tier) => tier,
            Err(e) => panic!("{e}"),
        }
    }
}
