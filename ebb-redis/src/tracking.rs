//! [`Coherence`]: replicas that agree. Redis's server-assisted invalidation (`CLIENT
//! TRACKING ON BCAST PREFIX namespace: NOLOOP`) pushes every change to a key of the namespace
//! (a write by any client, an expiry, an eviction, a `FLUSHALL`/`FLUSHDB`) to every replica,
//! which drops the key (or, for a null invalidation, its whole L1).
//!
//! What this module holds: the tracking state and its epoch, one invalidation sequence per
//! key stripe, the push handler (called by redis-rs's connection driver, synchronously, for
//! every push), the connect hook that turns tracking on for each new connection, and the
//! monitor task that pings the connection, turns tracking back on, and caps L1 while
//! tracking is down.
//!
//! Where the invalidations arrive: tracking is turned on **on the tier's own connection, the
//! one that writes**, opened in RESP3, and the pushes come over that same socket (no
//! `REDIRECT`). `NOLOOP` only spares the writes of the connection that tracks, so the
//! connection that writes must be the one that tracks; with pushes on it too, losing the
//! invalidation channel and losing the writing connection are one event, seen at once
//! (redis-rs delivers a disconnection push), with one epoch, and there is no second
//! connection whose loss would leave the first one tracking into the void.
//!
//! Invariants:
//! - **The epoch.** `status` is `generation << 2 | state`; every change of state bumps the
//!   generation. A fill or an update of L1 is trusted (kept for its normal TTL) only if
//!   tracking was on when its Redis call began and the status has not changed since; any
//!   other is kept for at most `degraded_ttl`.
//! - **Tracking back on (after a loss) drops everything filled before** (one O(1)
//!   `invalidate_all`, which also stops the L1 fill of every load in flight). The status is
//!   bumped first, so a write in flight across the confirmation (which saw the old status)
//!   updates L1 for at most `degraded_ttl`. The first confirmation clears nothing: all L1
//!   holds then was filled while tracking was not yet on, for `degraded_ttl` at most.
//! - **Redis 7.0 and scripts**: `NOLOOP` spares the tracking client's plain commands (the
//!   tier's `SET`), not its Lua scripts' writes (the fill, the tombstone): those come back as
//!   invalidations and drop the writer's own copy, which costs one more Redis read, never a
//!   stale value.
//! - Outside a Tokio runtime at build time, the monitor does not run: a loss is seen only
//!   through the disconnection push, and nothing caps the entries filled before it.
//! - **While tracking is down**, L1 keeps serving; entries filled before the last moment
//!   tracking was confirmed on are dropped at that moment plus `degraded_ttl` (or at once, if
//!   the loss was noticed later), and entries filled while it is down live `degraded_ttl` at
//!   most.
//! - **The race rule.** An invalidation bumps its key's stripe sequence, then drops the key,
//!   both under the stripe's lock; a write's L1 update checks the sequence it saw before its
//!   Redis call, then updates L1, under the same lock, so a foreign write's invalidation
//!   that arrives while the write is in flight always wins. A read's fill checks the
//!   sequence too, without the lock (an atomic load: a bump it misses comes before that
//!   invalidation's L1 removal, which stops the fill ebb makes after it: ebb's "writes win
//!   over loads"). A null invalidation bumps a global flush sequence checked the same way,
//!   then clears L1.
//! - No lock is held across an `.await`; the push handler never blocks on I/O.
//! - User code never ends the push handler, which runs in the connection's driver: a key's
//!   `from_key` runs under the stripe's lock but a panic there only falls back to matching
//!   the key's text; a removed value is dropped after the lock, and a panic there is logged.

use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::key::CacheKey;
use crate::link::{ConnectHook, Link};

/// Default for [`degraded_ttl`](crate::TieredCacheBuilder::degraded_ttl): 2 s. While tracking
/// is down (or was refused), no L1 entry lives longer than this.
pub const DEFAULT_DEGRADED_TTL: Duration = Duration::from_secs(2);
/// Default for [`tracking_ping_interval`](crate::TieredCacheBuilder::tracking_ping_interval):
/// 1 s. How often the tier checks that tracking is still on (`CLIENT TRACKINGINFO`).
pub const DEFAULT_TRACKING_PING_INTERVAL: Duration = Duration::from_secs(1);

/// While tracking is down, how often the monitor tries to turn it back on.
const RETRY: Duration = Duration::from_millis(100);
/// Invalidation sequences, one per stripe of keys (a key's stripe is a hash of its bytes).
const STRIPES: usize = 1024;

const DOWN: u64 = 0;
const ON: u64 = 1;
const REFUSED: u64 = 2;
const OFF: u64 = 3;

/// The builder's coherence settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub(crate) enabled: bool,
    pub(crate) degraded_ttl: Duration,
    pub(crate) ping_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            enabled: true,
            degraded_ttl: DEFAULT_DEGRADED_TTL,
            ping_interval: DEFAULT_TRACKING_PING_INTERVAL,
        }
    }
}

/// Whether this replica's L1 is kept coherent by Redis's invalidations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrackingState {
    /// Tracking is on and confirmed: every change under the namespace reaches this replica.
    On,
    /// Not (yet, or no longer) confirmed on: L1 entries live at most `degraded_ttl`.
    Down,
    /// Redis refused `CLIENT TRACKING` (an ACL, an old server): for the tier's whole life,
    /// L1 entries live at most `degraded_ttl`.
    Refused,
    /// Coherence was turned off by the builder: L1 entries live their `local_ttl`.
    Off,
}

/// A snapshot of the tier's coherence ([`TieredCache::coherence_stats`](crate::TieredCache::coherence_stats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoherenceStats {
    /// Tracking's state now.
    pub state: TrackingState,
    /// Keys of the namespace invalidated by Redis (writes by anyone else, expiries,
    /// evictions).
    pub invalidations: u64,
    /// Null invalidations received (`FLUSHALL`, `FLUSHDB`), each of which cleared L1.
    pub flushes: u64,
    /// Times tracking was lost (the connection broke, or a ping failed).
    pub losses: u64,
    /// Times tracking was turned on (the first time included); each clears L1.
    pub confirmations: u64,
}

/// L1, seen without its types: what an invalidation does to it.
trait Local: Send + Sync {
    /// Drop the key whose text (after `namespace:`) is `text`, and hand back what it removed,
    /// to be dropped after the stripe's lock (a value's `Drop` is user code).
    fn drop_key(&self, text: &[u8]) -> Option<Box<dyn Send>>;
    /// Drop everything.
    fn drop_all(&self);
}

struct L1<K, V, S> {
    cache: ebb_cache::Cache<K, Option<V>, S>,
}

impl<K, V, S> Local for L1<K, V, S>
where
    K: CacheKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    fn drop_key(&self, text: &[u8]) -> Option<Box<dyn Send>> {
        // A `from_key` that panics is treated as one that cannot read the text back.
        let key = catch_unwind(AssertUnwindSafe(|| {
            std::str::from_utf8(text).ok().and_then(K::from_key)
        }))
        .unwrap_or_else(|_| {
            tracing::error!(
                target: "ebb_redis",
                "a key's CacheKey::from_key panicked on an invalidated key; matching its text \
                 instead"
            );
            None
        });
        match key {
            Some(key) => self
                .cache
                .remove(&key)
                .map(|removed| Box::new(removed) as Box<dyn Send>),
            // A key type that cannot be read back: match its text (O(1) now, the sweep later).
            None => {
                let text = text.to_vec();
                self.cache.invalidate_entries_if(move |key, _| {
                    let mut mine = String::new();
                    key.write_key(&mut mine);
                    mine.as_bytes() == text
                });
                None
            }
        }
    }

    fn drop_all(&self) {
        self.cache.invalidate_all();
    }
}

/// A stripe of keys: its invalidation sequence, changed only under its lock (by an
/// invalidation, which also drops the key there) and read without it (a read's check: the
/// invalidation's L1 removal, after its bump, stops ebb's fill); a write's L1 update holds
/// the lock from its check to its update.
#[derive(Default)]
struct Stripe {
    lock: Mutex<()>,
    seq: AtomicU64,
}

/// What a Redis call saw before it began, to be checked before its result enters L1.
pub(crate) struct Seen {
    status: u64,
    /// The key's stripe (its index), and its sequence then.
    index: usize,
    stripe: u64,
    flushes: u64,
}

/// The tier's coherence: see the module's invariants.
pub(crate) struct Coherence {
    /// Itself, for the push senders of the connections it configures.
    me: Weak<Coherence>,
    options: Options,
    /// `namespace:`, the prefix tracked.
    prefix: Vec<u8>,
    /// `generation << 2 | state`.
    status: AtomicU64,
    /// The connection tracking was last confirmed on (0: none).
    conn: AtomicU64,
    stripes: Box<[Stripe]>,
    /// Null invalidations (and drop-alls of L1 for coherence), as a sequence.
    flush_seq: AtomicU64,
    local: Box<dyn Local>,
    read_timeout: Duration,
    /// When tracking was last confirmed on.
    confirmed_at: Mutex<Option<Instant>>,
    /// When L1 must be cleared if tracking is still down (the status it was lost in).
    degraded: Mutex<Option<(Instant, u64)>>,
    /// Wakes the monitor when tracking is lost.
    wake: Arc<Notify>,
    /// Dropped with the tier: ends the monitor.
    _stop: oneshot::Sender<()>,
    stop: Mutex<Option<oneshot::Receiver<()>>>,
    invalidations: AtomicU64,
    flushes: AtomicU64,
    losses: AtomicU64,
    confirmations: AtomicU64,
}

impl ConnectHook for Coherence {
    fn configure(&self, config: AsyncConnectionConfig, conn: u64) -> AsyncConnectionConfig {
        self.configure_connection(config, conn)
    }

    fn connected<'a>(
        &'a self,
        conn: u64,
        connection: &'a mut MultiplexedConnection,
        limit: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(self.track_connection(conn, connection, limit))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Coherence {
    pub(crate) fn new<K, V, S>(
        namespace: &str,
        options: Options,
        cache: ebb_cache::Cache<K, Option<V>, S>,
        read_timeout: Duration,
    ) -> Arc<Coherence>
    where
        K: CacheKey + Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        S: BuildHasher + Clone + Send + Sync + 'static,
    {
        let (stop_tx, stop_rx) = oneshot::channel();
        Arc::new_cyclic(|me| Coherence {
            me: me.clone(),
            options,
            prefix: format!("{namespace}:").into_bytes(),
            status: AtomicU64::new(if options.enabled { DOWN } else { OFF }),
            conn: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            flush_seq: AtomicU64::new(0),
            local: Box::new(L1 { cache }),
            read_timeout,
            confirmed_at: Mutex::new(None),
            degraded: Mutex::new(None),
            wake: Arc::new(Notify::new()),
            _stop: stop_tx,
            stop: Mutex::new(Some(stop_rx)),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            losses: AtomicU64::new(0),
            confirmations: AtomicU64::new(0),
        })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.options.enabled
    }

    /// The client to connect with: the same one in RESP3 (pushes need it) when coherence is
    /// on.
    pub(crate) fn client(&self, client: redis::Client) -> Result<redis::Client, redis::RedisError> {
        if !self.enabled() {
            return Ok(client);
        }
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        redis::Client::open(info.set_redis_settings(settings))
    }

    /// The index of `key`'s stripe.
    fn index(key: &[u8]) -> usize {
        use std::hash::Hasher;
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(key);
        (hasher.finish() as usize) % STRIPES
    }

    fn stripe(&self, key: &[u8]) -> &Stripe {
        &self.stripes[Self::index(key)]
    }

    fn state(status: u64) -> u64 {
        status & 3
    }

    /// Move to `state` in a new generation; returns the new status.
    fn set_state(&self, state: u64) -> u64 {
        let next = |s: u64| ((s >> 2) + 1) << 2 | state;
        let old = self
            .status
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| Some(next(s)))
            .unwrap_or_else(|s| s);
        next(old)
    }

    /// The tracking state now.
    pub(crate) fn tracking_state(&self) -> TrackingState {
        match Self::state(self.status.load(Ordering::SeqCst)) {
            ON => TrackingState::On,
            DOWN => TrackingState::Down,
            REFUSED => TrackingState::Refused,
            _ => TrackingState::Off,
        }
    }

    pub(crate) fn stats(&self) -> CoherenceStats {
        CoherenceStats {
            state: self.tracking_state(),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            losses: self.losses.load(Ordering::Relaxed),
            confirmations: self.confirmations.load(Ordering::Relaxed),
        }
    }

    /// Before a Redis call whose result may enter L1 for `key` (its Redis key).
    pub(crate) fn seen(&self, key: &[u8]) -> Seen {
        if !self.enabled() {
            return Seen {
                status: OFF,
                index: 0,
                stripe: 0,
                flushes: 0,
            };
        }
        // Status first: a fill that sees the new status after a confirmation also sees the
        // stripe as it was after the confirmation's drop-all.
        let status = self.status.load(Ordering::SeqCst);
        let flushes = self.flush_seq.load(Ordering::SeqCst);
        let index = Self::index(key);
        let stripe = self.stripes[index].seq.load(Ordering::SeqCst);
        Seen {
            status,
            index,
            stripe,
            flushes,
        }
    }

    /// How long L1 may keep what a call that saw `seen` brought, given it would keep it for
    /// `ttl`: zero if the key was invalidated meanwhile; at most `degraded_ttl` unless
    /// tracking was on for the whole call.
    fn judge(&self, seen: &Seen, stripe: u64, ttl: Option<Duration>) -> Option<Duration> {
        if !self.enabled() {
            return ttl;
        }
        if stripe != seen.stripe || self.flush_seq.load(Ordering::SeqCst) != seen.flushes {
            return Some(Duration::ZERO);
        }
        let trusted =
            Self::state(seen.status) == ON && self.status.load(Ordering::SeqCst) == seen.status;
        if trusted {
            ttl
        } else {
            let cap = self.options.degraded_ttl;
            Some(ttl.map_or(cap, |ttl| ttl.min(cap)))
        }
    }

    /// A read's fill: the TTL L1 keeps it for (see [`judge`](Self::judge)). An invalidation
    /// after this check removes the key from L1, which stops ebb's fill.
    pub(crate) fn fill_ttl(
        &self,
        key: &[u8],
        seen: &Seen,
        ttl: Option<Duration>,
    ) -> Option<Duration> {
        debug_assert!(!self.enabled() || seen.index == Self::index(key));
        let stripe = self.stripes[seen.index].seq.load(Ordering::SeqCst);
        self.judge(seen, stripe, ttl)
    }

    /// A write's L1 update: `update(Some(ttl))` stores the value for `ttl`, `update(None)`
    /// drops the key; it runs under the key's stripe lock, so that no invalidation falls
    /// between the check and the update.
    pub(crate) fn update<R>(
        &self,
        key: &[u8],
        seen: &Seen,
        ttl: Duration,
        update: impl FnOnce(Option<Duration>) -> R,
    ) -> R {
        debug_assert!(!self.enabled() || seen.index == Self::index(key));
        let stripe = &self.stripes[seen.index];
        let _locked = lock(&stripe.lock);
        match self.judge(seen, stripe.seq.load(Ordering::SeqCst), Some(ttl)) {
            Some(ttl) if !ttl.is_zero() => update(Some(ttl)),
            _ => update(None),
        }
    }

    /// A push from connection `conn` (called by the connection's driver).
    fn on_push(&self, conn: u64, info: PushInfo) {
        match info.kind {
            PushKind::Invalidate => match info.data.into_iter().next() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        if let Value::BulkString(key) = key {
                            self.invalidate(&key);
                        }
                    }
                }
                // A null payload: FLUSHALL or FLUSHDB, in any database.
                _ => {
                    self.flushes.fetch_add(1, Ordering::Relaxed);
                    self.drop_all();
                }
            },
            PushKind::Disconnection => self.lost(conn, "the connection closed"),
            _ => {}
        }
    }

    fn invalidate(&self, key: &[u8]) {
        let Some(text) = key.strip_prefix(&self.prefix[..]) else {
            return;
        };
        // The tier's own records (0xFF) are no cached key.
        if text.first() == Some(&0xFF) {
            return;
        }
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        let stripe = self.stripe(key);
        let locked = lock(&stripe.lock);
        stripe.seq.fetch_add(1, Ordering::SeqCst);
        let removed = self.local.drop_key(text);
        drop(locked);
        // This runs in the connection's driver: a value's `Drop` that panics ends here.
        if catch_unwind(AssertUnwindSafe(|| drop(removed))).is_err() {
            tracing::error!(
                target: "ebb_redis",
                "a value's Drop panicked as an invalidation removed it; the key is gone"
            );
        }
    }

    /// Drop all of L1, after bumping the flush sequence (so no update in flight lands after).
    fn drop_all(&self) {
        self.flush_seq.fetch_add(1, Ordering::SeqCst);
        self.local.drop_all();
    }

    /// Tracking was lost on connection `conn` (0: whichever it was on).
    fn lost(&self, conn: u64, why: &str) {
        if Self::state(self.status.load(Ordering::SeqCst)) != ON {
            return;
        }
        if conn != 0 && self.conn.load(Ordering::SeqCst) != conn {
            return;
        }
        let status = self.set_state(DOWN);
        let since = lock(&self.confirmed_at).unwrap_or_else(Instant::now);
        *lock(&self.degraded) = Some((since + self.options.degraded_ttl, status));
        self.losses.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            target: "ebb_redis",
            prefix = %String::from_utf8_lossy(&self.prefix),
            why,
            degraded_ttl = ?self.options.degraded_ttl,
            "Redis invalidation tracking lost: L1 entries now live at most degraded_ttl"
        );
        self.wake.notify_one();
    }

    /// Tracking is on for connection `conn`: bump the epoch, then drop all of L1.
    fn confirmed(&self, conn: u64) {
        self.conn.store(conn, Ordering::SeqCst);
        *lock(&self.confirmed_at) = Some(Instant::now());
        *lock(&self.degraded) = None;
        self.set_state(ON);
        let n = self.confirmations.fetch_add(1, Ordering::Relaxed);
        if n > 0 {
            // Not `drop_all`: a write in flight across the confirmation saw the old status, so
            // its update is capped at degraded_ttl; loads in flight are stopped by the clear.
            // The first confirmation clears nothing: all L1 holds then was filled before
            // tracking was ever on, so for degraded_ttl at most.
            self.local.drop_all();
            tracing::info!(
                target: "ebb_redis",
                prefix = %String::from_utf8_lossy(&self.prefix),
                "Redis invalidation tracking back on: L1 cleared"
            );
        }
    }

    fn refused(&self, error: &redis::RedisError) {
        self.set_state(REFUSED);
        tracing::warn!(
            target: "ebb_redis",
            prefix = %String::from_utf8_lossy(&self.prefix),
            %error,
            degraded_ttl = ?self.options.degraded_ttl,
            "Redis refused CLIENT TRACKING: replicas are not kept coherent, and every L1 \
             entry lives at most degraded_ttl (grant +client|tracking, or use Redis 6+)"
        );
    }

    /// The connect hook's first half: the connection's config, with a push sender tagged
    /// with the connection's id.
    fn configure_connection(
        &self,
        config: AsyncConnectionConfig,
        conn: u64,
    ) -> AsyncConnectionConfig {
        if !self.enabled() {
            return config;
        }
        let me = self.me.clone();
        config.set_push_sender(move |info: PushInfo| {
            if let Some(me) = me.upgrade() {
                me.on_push(conn, info);
            }
            Ok::<(), std::convert::Infallible>(())
        })
    }

    /// The connect hook's second half, before the connection is handed out: turn tracking
    /// on, within `limit`.
    async fn track_connection(
        &self,
        conn: u64,
        connection: &mut MultiplexedConnection,
        limit: Duration,
    ) {
        if !self.enabled() || Self::state(self.status.load(Ordering::SeqCst)) == REFUSED {
            return;
        }
        match tokio::time::timeout(limit, self.track(connection)).await {
            Ok(Ok(())) => self.confirmed(conn),
            Ok(Err(error)) if refusal(&error) => self.refused(&error),
            Ok(Err(error)) => {
                tracing::debug!(target: "ebb_redis", %error, "CLIENT TRACKING failed; retrying");
            }
            Err(_) => tracing::debug!(target: "ebb_redis", "CLIENT TRACKING timed out; retrying"),
        }
    }

    async fn track(&self, connection: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(&self.prefix[..])
            .arg("NOLOOP")
            .query_async(connection)
            .await
    }

    /// Start the monitor (inside a runtime; outside one, only the disconnection pushes
    /// tell a loss).
    pub(crate) fn start(self: &Arc<Self>, link: &Arc<Link>) {
        if !self.enabled() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let Some(stop) = lock(&self.stop).take() else {
            return;
        };
        tokio::spawn(monitor(
            Arc::downgrade(self),
            Arc::downgrade(link),
            Arc::clone(&self.wake),
            stop,
        ));
    }

    /// If tracking has been down since before the degraded deadline, clear L1 (once).
    fn enforce_degraded(&self) {
        let mut degraded = lock(&self.degraded);
        if let Some((deadline, status)) = *degraded {
            if Instant::now() >= deadline {
                *degraded = None;
                drop(degraded);
                if self.status.load(Ordering::SeqCst) == status {
                    self.drop_all();
                }
            }
        }
    }

    fn degraded_deadline(&self) -> Option<Instant> {
        lock(&self.degraded).map(|(deadline, _)| deadline)
    }

    /// One ping of the monitor: check tracking on the connection, or turn it back on.
    /// Returns how long to wait before the next one.
    async fn round(&self, link: &Arc<Link>) -> Duration {
        let status = self.status.load(Ordering::SeqCst);
        match Self::state(status) {
            REFUSED | OFF => return Duration::MAX,
            _ => {}
        }
        let limit = self.read_timeout.max(Duration::from_millis(200));
        let check = async {
            let (id, mut conn) = link.conn().await.map_err(|e| e.to_string())?;
            let on_this = Self::state(self.status.load(Ordering::SeqCst)) == ON
                && self.conn.load(Ordering::SeqCst) == id;
            let result = if on_this {
                let info: redis::RedisResult<Value> = redis::cmd("CLIENT")
                    .arg("TRACKINGINFO")
                    .query_async(&mut conn)
                    .await;
                match info {
                    Ok(info) if tracking_on(&info) => {
                        *lock(&self.confirmed_at) = Some(Instant::now());
                        return Ok(());
                    }
                    Ok(_) => {
                        self.lost(id, "CLIENT TRACKINGINFO says tracking is off");
                        return Err("tracking is off".to_string());
                    }
                    Err(error) => Err(error),
                }
            } else {
                // A connection tracking was lost on (a ping timed out) may still track:
                // asking for the same prefix again would be refused as overlapping.
                let on = redis::cmd("CLIENT")
                    .arg("TRACKINGINFO")
                    .query_async::<Value>(&mut conn)
                    .await
                    .is_ok_and(|info| tracking_on(&info));
                if on {
                    self.confirmed(id);
                    Ok(())
                } else {
                    self.track(&mut conn).await.map(|()| self.confirmed(id))
                }
            };
            result.map_err(|error| {
                link.failed(id, &error);
                if refusal(&error) {
                    self.refused(&error);
                }
                error.to_string()
            })
        };
        match tokio::time::timeout(limit, check).await {
            Ok(Ok(())) => self.options.ping_interval,
            Ok(Err(why)) => {
                self.lost(0, &why);
                RETRY
            }
            Err(_) => {
                self.lost(0, "the tracking ping timed out");
                RETRY
            }
        }
    }
}

/// A miss's outcome, judged before it enters L1: the TTL it is kept for is zero if its key
/// was invalidated while it ran, and at most `degraded_ttl` unless tracking was on for the
/// whole of it. `seen` is taken at the first poll, before the miss's Redis read (`fill`
/// makes the miss's future then: a future passed in by value would be stored twice in this
/// one, which ebb boxes per miss).
pub(crate) async fn guard_fill<V, E, F>(
    coherence: &Coherence,
    key: &[u8],
    fill: impl FnOnce() -> F,
) -> Result<(V, Option<Duration>), E>
where
    F: std::future::Future<Output = Result<(V, Option<Duration>), E>>,
{
    let seen = coherence.seen(key);
    let (value, ttl) = fill().await?;
    Ok((value, coherence.fill_ttl(key, &seen, ttl)))
}

/// Whether `CLIENT TRACKING` was refused for good (an ACL, an unknown command or option).
fn refusal(error: &redis::RedisError) -> bool {
    let text = error.to_string();
    error.code() == Some("NOPERM")
        || text.contains("unknown command")
        || text.contains("unknown subcommand")
        || text.contains("NOPERM")
}

/// Whether a `CLIENT TRACKINGINFO` reply says tracking is on.
fn tracking_on(info: &Value) -> bool {
    let pairs: Vec<(&Value, &Value)> = match info {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        Value::Array(items) => items.chunks_exact(2).map(|kv| (&kv[0], &kv[1])).collect(),
        _ => return false,
    };
    pairs.into_iter().any(|(k, v)| {
        redis::from_redis_value_ref::<String>(k).is_ok_and(|k| k == "flags")
            && redis::from_redis_value_ref::<Vec<String>>(v)
                .is_ok_and(|f| f.iter().any(|f| f == "on"))
    })
}

/// The monitor task: pings, restores tracking, enforces the degraded deadline; ends when
/// the tier is dropped (its stop sender with it). Holds the tier's parts only during a round,
/// which is bounded.
async fn monitor(
    coherence: Weak<Coherence>,
    link: Weak<Link>,
    wake: Arc<Notify>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut next_ping = Instant::now();
    loop {
        let until = {
            let Some(me) = coherence.upgrade() else {
                return;
            };
            me.degraded_deadline()
                .map_or(next_ping, |deadline| deadline.min(next_ping))
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep_until(until) => {}
            _ = wake.notified() => next_ping = Instant::now(),
        }
        let (Some(me), Some(link)) = (coherence.upgrade(), link.upgrade()) else {
            return;
        };
        me.enforce_degraded();
        if Instant::now() < next_ping {
            continue;
        }
        let wait = tokio::select! {
            _ = &mut stop => return,
            wait = me.round(&link) => wait,
        };
        if wait == Duration::MAX {
            // Refused or off: nothing to watch; wait for the tier to go.
            drop((me, link));
            let _ = stop.await;
            return;
        }
        me.enforce_degraded();
        next_ping = Instant::now() + wait;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coherence() -> (ebb_cache::Cache<u64, Option<u64>>, Arc<Coherence>) {
        let local: ebb_cache::Cache<u64, Option<u64>> = ebb_cache::Cache::builder().build();
        let options = Options {
            degraded_ttl: Duration::from_secs(2),
            ..Options::default()
        };
        let coherence = Coherence::new("ns", options, local.clone(), Duration::from_secs(1));
        (local, coherence)
    }

    fn invalidate(keys: &[&str]) -> PushInfo {
        PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(
                keys.iter()
                    .map(|k| Value::BulkString(k.as_bytes().to_vec()))
                    .collect(),
            )],
        }
    }

    /// Coherence over `local` (namespace `ns`), tracking confirmed on connection 1.
    fn confirmed_over<K, V>(local: &ebb_cache::Cache<K, Option<V>>) -> Arc<Coherence>
    where
        K: CacheKey + Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        let c = Coherence::new(
            "ns",
            Options::default(),
            local.clone(),
            Duration::from_secs(1),
        );
        c.confirmed(1);
        c
    }

    /// Whether the push handler returns from an invalidation of `key`: it runs inside the
    /// connection's driver, which a panic would end.
    fn push_returns(c: &Coherence, key: &str) -> bool {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            c.on_push(1, invalidate(&[key]));
        }))
        .is_ok()
    }

    /// What a write's L1 update would store: `Some(ttl)`, or `None` (dropped).
    fn update(c: &Coherence, key: &str, seen: &Seen) -> Option<Duration> {
        c.update(key.as_bytes(), seen, Duration::from_secs(30), |ttl| ttl)
    }

    #[tokio::test]
    async fn an_invalidation_during_a_write_or_a_read_wins_and_others_do_not_matter() {
        let (local, c) = coherence();
        c.confirmed(1);
        let seen = c.seen(b"ns:7");
        assert_eq!(update(&c, "ns:7", &seen), Some(Duration::from_secs(30)));
        // Another key, another namespace, the tier's own record: no effect on key 7.
        c.on_push(1, invalidate(&["ns:8", "other:7"]));
        c.on_push(
            1,
            PushInfo {
                kind: PushKind::Invalidate,
                data: vec![Value::Array(vec![Value::BulkString(b"ns:\xffx".to_vec())])],
            },
        );
        assert_eq!(update(&c, "ns:7", &seen), Some(Duration::from_secs(30)));
        assert_eq!(c.stats().invalidations, 1);
        // Key 7 invalidated while the call was in flight: the update drops, the read keeps nothing.
        local.insert(7, Some(1));
        c.on_push(1, invalidate(&["ns:7"]));
        assert_eq!(local.get(&7), None, "the invalidation dropped the key");
        assert_eq!(update(&c, "ns:7", &seen), None);
        assert_eq!(
            c.fill_ttl(b"ns:7", &seen, Some(Duration::from_secs(30))),
            Some(Duration::ZERO)
        );
        // A call that began after it is trusted again.
        let later = c.seen(b"ns:7");
        assert_eq!(update(&c, "ns:7", &later), Some(Duration::from_secs(30)));
        // A null invalidation: every call in flight drops, and L1 is cleared.
        local.insert(9, Some(1));
        c.on_push(
            1,
            PushInfo {
                kind: PushKind::Invalidate,
                data: vec![Value::Nil],
            },
        );
        assert_eq!(update(&c, "ns:7", &later), None);
        assert_eq!(local.get(&9), None);
        assert_eq!(c.stats().flushes, 1);
    }

    #[tokio::test]
    async fn a_value_whose_drop_panics_costs_an_invalidation_nothing() {
        /// A value whose `Drop` panics once armed (clones are not armed).
        struct Bomb(bool);
        impl Clone for Bomb {
            fn clone(&self) -> Self {
                Bomb(false)
            }
        }
        impl Drop for Bomb {
            fn drop(&mut self) {
                if self.0 && !std::thread::panicking() {
                    panic!("a value's Drop panicked");
                }
            }
        }
        let local: ebb_cache::Cache<u64, Option<Bomb>> = ebb_cache::Cache::builder().build();
        let c = confirmed_over(&local);
        local.insert(7, Some(Bomb(true)));
        local.insert(8, Some(Bomb(false)));
        let seen = c.seen(b"ns:8");
        assert!(
            push_returns(&c, "ns:7"),
            "a value's Drop panic left the push handler"
        );
        assert!(!local.contains_key(&7), "the invalidation dropped the key");
        assert_eq!(c.stats().invalidations, 1);
        // The stripes work as before: another key's invalidation and update.
        c.on_push(1, invalidate(&["ns:8"]));
        assert!(!local.contains_key(&8));
        assert_eq!(
            c.update(b"ns:8", &seen, Duration::from_secs(30), |ttl| ttl),
            None
        );
        assert_eq!(c.stats().invalidations, 2);
    }

    #[tokio::test]
    async fn a_key_whose_from_key_panics_is_invalidated_by_its_text() {
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        struct Stubborn(u64);
        impl CacheKey for Stubborn {
            fn write_key(&self, out: &mut String) {
                out.push_str(&self.0.to_string());
            }
            fn from_key(_: &str) -> Option<Self> {
                panic!("a key's from_key panicked");
            }
        }
        let local: ebb_cache::Cache<Stubborn, Option<u64>> = ebb_cache::Cache::builder().build();
        let c = confirmed_over(&local);
        local.insert(Stubborn(7), Some(1));
        local.insert(Stubborn(8), Some(1));
        assert!(
            push_returns(&c, "ns:7"),
            "a from_key panic left the push handler"
        );
        assert_eq!(local.get(&Stubborn(7)), None, "the key was not invalidated");
        assert_eq!(local.get(&Stubborn(8)), Some(Some(1)));
        assert_eq!(c.stats().invalidations, 1);
    }

    #[tokio::test]
    async fn calls_that_tracking_did_not_cover_whole_are_capped_at_degraded_ttl() {
        let (local, c) = coherence();
        let cap = Some(Duration::from_secs(2));
        // Before the first confirmation: capped.
        let before = c.seen(b"ns:1");
        assert_eq!(update(&c, "ns:1", &before), cap);
        c.confirmed(1);
        assert_eq!(
            update(&c, "ns:1", &before),
            cap,
            "began before tracking was on"
        );
        // Lost during the call: capped; a disconnection of another connection is ignored.
        let during = c.seen(b"ns:1");
        c.on_push(
            2,
            PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            },
        );
        assert_eq!(c.tracking_state(), TrackingState::On);
        c.on_push(
            1,
            PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            },
        );
        assert_eq!(c.tracking_state(), TrackingState::Down);
        assert_eq!(update(&c, "ns:1", &during), cap);
        assert_eq!(
            update(&c, "ns:1", &c.seen(b"ns:1")),
            cap,
            "began while down"
        );
        // Back on: L1 cleared (a second confirmation), calls that began before stay capped.
        local.insert(1, Some(1));
        let down = c.seen(b"ns:1");
        c.confirmed(3);
        assert_eq!(local.get(&1), None);
        assert_eq!(update(&c, "ns:1", &down), cap);
        assert_eq!(
            c.stats(),
            CoherenceStats {
                state: TrackingState::On,
                invalidations: 0,
                flushes: 0,
                losses: 1,
                confirmations: 2,
            }
        );
    }

    #[test]
    fn trackinginfo_flags_are_read_in_both_protocols() {
        let flags = |f: &[&str]| {
            Value::Array(
                f.iter()
                    .map(|f| Value::SimpleString(f.to_string()))
                    .collect(),
            )
        };
        let key = |k: &str| Value::BulkString(k.as_bytes().to_vec());
        assert!(tracking_on(&Value::Map(vec![(
            key("flags"),
            flags(&["on", "bcast"])
        )])));
        assert!(!tracking_on(&Value::Map(vec![(
            key("flags"),
            flags(&["off"])
        )])));
        assert!(tracking_on(&Value::Array(vec![
            key("flags"),
            flags(&["on"])
        ])));
        assert!(!tracking_on(&Value::Nil));
    }
}
