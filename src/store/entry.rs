//! An entry of the map and the map itself.
//!
//! An [`Entry`] holds the value, its deadline, the `invalidate_all` generation it was written
//! in, its policy bits, and its wheel node ([`node`](Entry::node)). Deadlines are
//! nanoseconds since the cache's epoch ([`NEVER`] when there is none).
//!
//! The map ([`Map`]) holds bare entries (16 bytes plus the value) unless the cache has a
//! time-to-idle: then each entry has its *cap* beside it ([`Capped`], 8 bytes more). A cache
//! that refreshes (`refresh_after`) holds [`Refreshing`] entries: the cap, the TTL the entry
//! was written with, and its [`Stamp`] (read bit and next refresh check), 24 bytes more; no
//! other cache pays for them. Each operation picks the map's kind once; everything outside
//! sees an [`Entry`].
//!
//! Invariants:
//! - An entry is *live* when its generation is the cache's current one and its deadline is in
//!   the future ([`Entry::is_live`]).
//! - `deadline` is the effective deadline; the cap is the TTL's deadline (or [`NEVER`]).
//!   Without a time-to-idle the deadline *is* the cap and never moves. With one, readers may
//!   only move `deadline` later, up to the cap, with `fetch_max`.
//! - The policy bits are hints: readers bump the read counter with a relaxed
//!   compare-and-swap; only the policy, under its shard lock, moves an entry between queues.
//! - A shard's table grows as writers need room and shrinks only when the expiry task asks
//!   ([`Map::shrink`], after removals), never below the shard's share of the initial capacity.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use dashmap::{DashMap, SharedValue};

use super::handoff::UNFILED;
use crate::listener::RemovalCause;
use crate::policy::MAX_FREQ;
use crate::time::clock::NEVER;
use crate::time::wheel::NodeId;

/// One cached value and its bookkeeping. The bookkeeping comes first, in this order, so
/// that it sits right after a small key in the map's slot: [`Map::remove_grouped`] warms a
/// slot's lines by reading `deadline` and `node` alone (no user code), and a small key
/// shares its line with `deadline`.
#[repr(C)]
pub(crate) struct Entry<V> {
    /// The effective deadline (see the module docs).
    pub(super) deadline: AtomicU64,
    /// [`UNFILED`], or the id of the wheel node for this key (queued or linked).
    pub(crate) node: NodeId,
    /// The `invalidate_all` generation the entry was written in (bits 3 and up), and for
    /// bounded caches its eviction-policy state: in the main queue (bit 2), reads counted
    /// since it last passed its queue's head (bits 0-1, at most 3). Readers bump the counter.
    meta: AtomicU32,
    pub(crate) value: V,
}

/// The most fired nodes [`Map::remove_grouped`] handles under one hold of a shard's lock
/// (a few in unit tests, so that they take many turns): enough for their cache misses to
/// overlap, few enough that a writer who finds the lock taken spins through the wait.
const HOLD: usize = if cfg!(test) { 4 } else { 32 };

/// Generations wrap at 2^28: the bits of `meta` above the stale bit and the policy's.
pub(crate) const GENERATION_MASK: u32 = u32::MAX >> GENERATION_SHIFT;
const GENERATION_SHIFT: u32 = 4;
const STALE_BIT: u32 = 1 << 3;
const MAIN_BIT: u32 = 1 << 2;
const FREQ_MASK: u32 = 0b11;

impl<V> Entry<V> {
    pub(super) fn new(value: V, deadline: u64, node: NodeId, generation: u32, policy: u32) -> Self {
        Entry {
            value,
            deadline: AtomicU64::new(deadline),
            node,
            meta: AtomicU32::new(generation << GENERATION_SHIFT | policy),
        }
    }

    #[inline]
    pub(crate) fn deadline(&self) -> u64 {
        self.deadline.load(Ordering::Relaxed)
    }

    /// The `invalidate_all` generation it was written in.
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        self.meta.load(Ordering::Relaxed) >> GENERATION_SHIFT
    }

    /// Whether it is a stale copy (see [`Entry::meta`](Entry)).
    #[inline]
    pub(crate) fn is_stale(&self) -> bool {
        self.meta.load(Ordering::Relaxed) & STALE_BIT != 0
    }

    /// Mark it a stale copy (the expiry task, under the shard's write lock).
    pub(super) fn set_stale(&mut self) {
        *self.meta.get_mut() |= STALE_BIT;
    }

    /// Stamp it with `generation` (a sweep checked it through that one; see `invalidate.rs`),
    /// keeping its policy bits.
    pub(super) fn set_generation(&mut self, generation: u32) {
        let meta = self.meta.get_mut();
        *meta = generation << GENERATION_SHIFT | (*meta & (STALE_BIT | MAIN_BIT | FREQ_MASK));
    }

    /// The policy bits (main queue, counter), carried over when the entry is overwritten.
    pub(super) fn policy_bits(&self) -> u32 {
        self.meta.load(Ordering::Relaxed) & (MAIN_BIT | FREQ_MASK)
    }

    /// Whether it is in the policy's main queue.
    pub(crate) fn in_main(&self) -> bool {
        self.meta.load(Ordering::Relaxed) & MAIN_BIT != 0
    }

    /// Reads counted since it last passed its queue's head.
    pub(crate) fn freq(&self) -> u8 {
        (self.meta.load(Ordering::Relaxed) & FREQ_MASK) as u8
    }

    /// Count a read: one relaxed compare-and-swap, none once the counter is saturated. A lost
    /// race loses one count, which is fine for a policy hint.
    #[inline]
    pub(crate) fn bump(&self) {
        let meta = self.meta.load(Ordering::Relaxed);
        if meta & FREQ_MASK != FREQ_MASK {
            let _ =
                self.meta
                    .compare_exchange(meta, meta + 1, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The CLOCK hand passes: the counter and queue as they were, and if the entry is in main
    /// and was read since the hand last passed, its counter one lower (one atomic step,
    /// no write when there is nothing to count down).
    pub(crate) fn pass(&self) -> (u8, bool) {
        let meta = self
            .meta
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (m & MAIN_BIT != 0 && m & FREQ_MASK != 0).then(|| m - 1)
            })
            .unwrap_or_else(|unchanged| unchanged);
        ((meta & FREQ_MASK) as u8, meta & MAIN_BIT != 0)
    }

    /// Set the policy bits.
    pub(crate) fn set_policy(&self, freq: u8, main: bool) {
        let bits = u32::from(freq.min(MAX_FREQ)) | if main { MAIN_BIT } else { 0 };
        let _ = self
            .meta
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                Some(m & !(MAIN_BIT | FREQ_MASK) | bits)
            });
    }

    /// Whether a read at `generation` may return this entry.
    #[inline]
    pub(crate) fn is_live(&self, generation: u32, now: impl FnOnce() -> u64) -> bool {
        let deadline = self.deadline();
        self.generation() == generation && (deadline == NEVER || deadline > now())
    }

    /// Whether the entry has a node in the wheel.
    pub(crate) fn filed_node(&self) -> Option<NodeId> {
        (self.node != UNFILED).then_some(self.node)
    }
}

/// A shard's table with room for at most this many entries is never shrunk.
pub(crate) const SMALL_TABLE: usize = 128;

/// A table shrinks once its entries fill at most one part in this many of its room.
const SHRINK_WHEN: usize = 8;

/// The entries a table of `buckets` buckets holds before it grows (hashbrown fills tables
/// to seven eighths). Not the table's `capacity()`, which leaves out the slots removals
/// left marked as deleted until the table is rebuilt.
fn room(buckets: usize) -> usize {
    if buckets < 8 {
        buckets.saturating_sub(1)
    } else {
        buckets / 8 * 7
    }
}

/// A key and its entry, taken out of the map.
pub(crate) type Removed<K, V> = (K, Entry<V>);

/// What the map holds for a key: an [`Entry`], and its cap where the cap can differ from the
/// deadline.
pub(crate) trait Stored<V> {
    /// Whether readers may move the deadline, up to [`cap`](Self::cap).
    const IDLE: bool;
    fn new(entry: Entry<V>, cap: u64) -> Self;
    fn entry(&self) -> &Entry<V>;
    fn entry_mut(&mut self) -> &mut Entry<V>;
    fn into_entry(self) -> Entry<V>;
    /// The latest the deadline may become: the TTL's deadline, or [`NEVER`].
    fn cap(&self) -> u64;
    /// Whether entries carry refresh state ([`Refreshing`]).
    const REFRESH: bool = false;
    /// An entry for a cache that refreshes, with its refresh state; others ignore `fresh`.
    #[inline]
    fn with_refresh(entry: Entry<V>, cap: u64, fresh: Fresh) -> Self
    where
        Self: Sized,
    {
        let _ = fresh;
        Self::new(entry, cap)
    }
    /// The refresh state, in a cache that refreshes.
    #[inline]
    fn stamp(&self) -> Option<&Stamp> {
        None
    }
    /// The TTL the entry was written with (nanoseconds, [`NEVER`] for none), in a cache that
    /// refreshes: a reload keeps it.
    #[inline]
    fn written_ttl(&self) -> Option<u64> {
        None
    }
    /// The entry to change, and its refresh state beside it.
    #[inline]
    fn split_mut(&mut self) -> (&mut Entry<V>, Option<&Stamp>) {
        (self.entry_mut(), None)
    }
    /// When the expiry task must next look at the entry: its deadline, or an earlier refresh
    /// check.
    #[inline]
    fn wake(&self) -> u64 {
        self.entry().deadline()
    }
}

/// Without a time-to-idle (or an `Expiry` that observes reads) the deadline never moves and
/// is its own cap: the map holds the bare entry.
impl<V> Stored<V> for Entry<V> {
    const IDLE: bool = false;

    #[inline]
    fn new(entry: Entry<V>, cap: u64) -> Self {
        debug_assert_eq!(
            entry.deadline(),
            cap,
            "a deadline below its cap without an idle time"
        );
        entry
    }

    #[inline]
    fn entry(&self) -> &Entry<V> {
        self
    }

    #[inline]
    fn entry_mut(&mut self) -> &mut Entry<V> {
        self
    }

    #[inline]
    fn into_entry(self) -> Entry<V> {
        self
    }

    #[inline]
    fn cap(&self) -> u64 {
        self.deadline()
    }
}

/// An entry of a cache with a time-to-idle, with the cap its deadline may move up to.
pub(crate) struct Capped<V> {
    entry: Entry<V>,
    cap: u64,
}

impl<V> Stored<V> for Capped<V> {
    const IDLE: bool = true;

    #[inline]
    fn new(entry: Entry<V>, cap: u64) -> Self {
        Capped { entry, cap }
    }

    #[inline]
    fn entry(&self) -> &Entry<V> {
        &self.entry
    }

    #[inline]
    fn entry_mut(&mut self) -> &mut Entry<V> {
        &mut self.entry
    }

    #[inline]
    fn into_entry(self) -> Entry<V> {
        self.entry
    }

    #[inline]
    fn cap(&self) -> u64 {
        self.cap
    }
}

/// The refresh state a write gives an entry of a cache that refreshes: when the entry is
/// first due for a refresh check, and the TTL it was written with (both [`NEVER`] for none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fresh {
    pub(crate) at: u64,
    pub(crate) ttl: u64,
}

impl Fresh {
    pub(crate) const NONE: Fresh = Fresh {
        at: NEVER,
        ttl: NEVER,
    };
}

/// An entry's refresh state, one atomic word: the *read bit* (bit 63: read since it was
/// written, or since its last reload started) and the time of the next refresh check
/// (nanoseconds since the epoch), or [`Stamp::IDLE`] (none: it is left to expire) or
/// [`Stamp::RELOADING`] (a reload was started for it and has not ended).
///
/// Readers only set the read bit: a load, and a `fetch_or` only when it is not set yet. The
/// check time changes under the shard's write lock (the expiry task as the entry's node
/// fires, a reload as it ends).
#[derive(Debug)]
pub(crate) struct Stamp(AtomicU64);

impl Stamp {
    const READ: u64 = 1 << 63;
    /// On a stale copy: the time bits say until when a failed load's callers get it without
    /// calling the source again.
    const THROTTLED: u64 = 1 << 62;
    const TIME: u64 = !(Self::READ | Self::THROTTLED);
    /// No refresh check is due: the entry is left to expire.
    pub(crate) const IDLE: u64 = Self::TIME;
    /// A reload was started and has not ended.
    pub(crate) const RELOADING: u64 = Self::TIME - 1;

    pub(crate) fn new(at: u64) -> Self {
        Stamp(AtomicU64::new(at.min(Self::IDLE)))
    }

    /// Record a read: one load, and one `fetch_or` the first time.
    #[inline]
    pub(crate) fn mark_read(&self) {
        if self.0.load(Ordering::Relaxed) & Self::READ == 0 {
            self.0.fetch_or(Self::READ, Ordering::Relaxed);
        }
    }

    /// Whether it was read since it was written or its last reload started.
    pub(crate) fn was_read(&self) -> bool {
        self.0.load(Ordering::Relaxed) & Self::READ != 0
    }

    /// The next check: a time, [`Stamp::IDLE`] or [`Stamp::RELOADING`].
    pub(crate) fn next(&self) -> u64 {
        self.0.load(Ordering::Relaxed) & Self::TIME
    }

    /// The time of the next check, if one is due at a time ([`NEVER`] otherwise).
    pub(crate) fn due(&self) -> u64 {
        if self.0.load(Ordering::Relaxed) & Self::THROTTLED != 0 {
            return NEVER; // a stale copy: no refresh
        }
        match self.next() {
            Self::IDLE | Self::RELOADING => NEVER,
            at => at,
        }
    }

    /// Set the next check (a time, or a marker), keeping the read bit.
    pub(crate) fn set_next(&self, next: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s & (Self::READ | Self::THROTTLED) | next.min(Self::IDLE))
            });
    }

    /// Throttle a stale copy's loads until `until` (the time bits; the read bit is kept).
    pub(crate) fn throttle(&self, until: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s & Self::READ | Self::THROTTLED | until.min(Self::IDLE))
            });
    }

    /// Until when a stale copy's loads are throttled, if they are.
    pub(crate) fn throttled_until(&self) -> Option<u64> {
        let s = self.0.load(Ordering::Relaxed);
        (s & Self::THROTTLED != 0).then_some(s & Self::TIME)
    }

    /// A reload starts: the next check is [`Stamp::RELOADING`] and the read bit is cleared
    /// (reads from now on count toward the next refresh).
    pub(crate) fn start_reload(&self) {
        self.0.store(Self::RELOADING, Ordering::Relaxed);
    }
}

/// An entry of a cache that refreshes: its cap, the TTL it was written with, and its
/// [`Stamp`].
pub(crate) struct Refreshing<V> {
    entry: Entry<V>,
    cap: u64,
    ttl: u64,
    stamp: Stamp,
}

impl<V> Stored<V> for Refreshing<V> {
    // Readers may move the deadline only in a cache with a time-to-idle (or an `Expiry`
    // that observes reads); without, `touch` finds nothing to move.
    const IDLE: bool = true;
    const REFRESH: bool = true;

    #[inline]
    fn new(entry: Entry<V>, cap: u64) -> Self {
        Self::with_refresh(entry, cap, Fresh::NONE)
    }

    #[inline]
    fn with_refresh(entry: Entry<V>, cap: u64, fresh: Fresh) -> Self {
        Refreshing {
            entry,
            cap,
            ttl: fresh.ttl,
            stamp: Stamp::new(fresh.at),
        }
    }

    #[inline]
    fn entry(&self) -> &Entry<V> {
        &self.entry
    }

    #[inline]
    fn entry_mut(&mut self) -> &mut Entry<V> {
        &mut self.entry
    }

    #[inline]
    fn into_entry(self) -> Entry<V> {
        self.entry
    }

    #[inline]
    fn cap(&self) -> u64 {
        self.cap
    }

    #[inline]
    fn stamp(&self) -> Option<&Stamp> {
        Some(&self.stamp)
    }

    #[inline]
    fn written_ttl(&self) -> Option<u64> {
        Some(self.ttl)
    }

    #[inline]
    fn split_mut(&mut self) -> (&mut Entry<V>, Option<&Stamp>) {
        (&mut self.entry, Some(&self.stamp))
    }

    #[inline]
    fn wake(&self) -> u64 {
        self.entry.deadline().min(self.stamp.due())
    }
}

/// The map: bare entries for a cache without a time-to-idle, capped ones for a cache with
/// one, refreshing ones for a cache that refreshes. Its methods give every other module the
/// [`Entry`] whichever it holds.
pub(crate) enum Map<K, V, S> {
    Plain(DashMap<K, Entry<V>, S>),
    Idle(DashMap<K, Capped<V>, S>),
    Refresh(DashMap<K, Refreshing<V>, S>),
}

/// Runs `$body` with `$map` bound to whichever `DashMap` a [`Map`] holds.
macro_rules! with_map {
    ($map:expr, $m:ident => $body:expr) => {
        match $map {
            $crate::store::entry::Map::Plain($m) => $body,
            $crate::store::entry::Map::Idle($m) => $body,
            $crate::store::entry::Map::Refresh($m) => $body,
        }
    };
}
pub(crate) use with_map;

impl<K: Hash + Eq, V, S: BuildHasher + Clone> Map<K, V, S> {
    pub(super) fn new(
        idle: bool,
        refresh: bool,
        capacity: usize,
        hasher: S,
        shards: usize,
    ) -> Self {
        if refresh {
            Map::Refresh(DashMap::with_capacity_and_hasher_and_shard_amount(
                capacity, hasher, shards,
            ))
        } else if idle {
            Map::Idle(DashMap::with_capacity_and_hasher_and_shard_amount(
                capacity, hasher, shards,
            ))
        } else {
            Map::Plain(DashMap::with_capacity_and_hasher_and_shard_amount(
                capacity, hasher, shards,
            ))
        }
    }

    pub(crate) fn len(&self) -> usize {
        with_map!(self, m => m.len())
    }

    /// Entries the tables have room for, all shards together (test-only visibility).
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn capacity(&self) -> usize {
        with_map!(self, m => m.shards().iter().map(|s| room(s.read().buckets())).sum())
    }

    /// The map's shards (test-only visibility).
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn shard_count(&self) -> usize {
        with_map!(self, m => m.shards().len())
    }

    /// Give back the room removals left: a shard's table at most an eighth full shrinks to
    /// room for twice its entries, never below `keep` (the shard's share of the initial
    /// capacity); a table with room for at most [`SMALL_TABLE`] entries stays as it is. A
    /// table only grows on its own, so after a burst it would keep the burst's size for good.
    ///
    /// Shrinking rehashes the shard's keys (a key's `Hash`) under its write lock, and
    /// changes nothing else. A `Hash` that panics leaves that table as it was (the keys are
    /// copied into the new table, which replaces the old one only once all are in); returns
    /// whether one did.
    pub(crate) fn shrink(&self, keep: usize) -> bool {
        let roomy = |len: usize, room: usize| {
            room > SMALL_TABLE.max(keep) && len.saturating_mul(SHRINK_WHEN) <= room
        };
        let mut panicked = false;
        with_map!(self, m => {
            let rehash = |(k, _): &(K, SharedValue<_>)| m.hasher().hash_one(k);
            for shard in m.shards() {
                let table = shard.read();
                if !roomy(table.len(), room(table.buckets())) {
                    continue;
                }
                drop(table);
                let mut table = shard.write();
                let len = table.len();
                if roomy(len, room(table.buckets())) {
                    let to = len.saturating_mul(2).max(keep);
                    panicked |=
                        catch_unwind(AssertUnwindSafe(|| table.shrink_to(to, rehash))).is_err();
                }
            }
        });
        panicked
    }

    /// `f` of the entry for `key`, under the shard's read lock.
    #[inline]
    pub(crate) fn view<Q, R>(&self, key: &Q, f: impl FnOnce(&K, &Entry<V>) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        with_map!(self, m => m.view(key, |k, e| f(k, e.entry())))
    }

    /// Remove `key` if `f` says so, under the shard's write lock.
    pub(crate) fn remove_if<Q>(
        &self,
        key: &Q,
        f: impl FnOnce(&K, &Entry<V>) -> bool,
    ) -> Option<(K, Entry<V>)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        with_map!(self, m => m
            .remove_if(key, |k, e| f(k, e.entry()))
            .map(|(k, e)| (k, e.into_entry())))
    }

    /// `key`'s hash by the map's hasher (user code): the hash the map files it under, which
    /// the hand-off and the wheel keep for its node.
    pub(crate) fn hash(&self, key: &K) -> u64 {
        with_map!(self, m => m.hash_usize(key) as u64)
    }

    /// A copy of the key whose entry holds `node`, looked for under `hash` (the key's, from
    /// [`Map::hash`]) with the shard's read lock: no `Hash` or `Eq` runs, only the key's
    /// `Clone` (a panic there leaves everything as it was). `None`: no entry holds `node`.
    pub(crate) fn key_of(&self, hash: u64, node: NodeId) -> Option<K>
    where
        K: Clone,
    {
        with_map!(self, m => {
            let table = m.shards()[m.determine_shard(hash as usize)].read();
            table
                .get(hash, holds::<K, V, _>(node))
                .map(|(k, _)| k.clone())
        })
    }

    /// For each node of `items` (each with the hash its key is filed under: `(hash, node)`)
    /// under the shard's write lock: the entry removed at once if `leaves(i, entry)` says it
    /// holds the node and goes as it is; else, if an entry holds the node, `f(i, key, entry,
    /// stamp)`, which may change it, and the entry removed if `f` says so. What left goes
    /// into `removed`, with its index. An entry is found by its node alone (a node id is held
    /// by one entry at most): no key's `Hash` or `Eq` runs. Up to [`HOLD`] nodes of one shard
    /// go under one hold of its lock: their cache misses then overlap, where one lock per key
    /// makes each wait for the previous release. The shards take turns, so that a writer or
    /// reader who finds a shard locked waits for a few removals (spinning), never for a whole
    /// batch: the shard lock parks a thread that spins that long, and the task would then
    /// retake the lock before the parked thread woke. A panic in `f` costs that node only (its
    /// index goes to `panicked`); `f` must change an entry only when it keeps it, so that a
    /// panic leaves a removed one as it was.
    pub(crate) fn remove_grouped(
        &self,
        items: &[(u64, NodeId)],
        leaves: impl Fn(usize, &Entry<V>) -> bool,
        mut f: impl FnMut(usize, &K, &mut Entry<V>, Option<&Stamp>) -> bool,
        removed: &mut Vec<(usize, K, Entry<V>)>,
        panicked: &mut Vec<usize>,
    ) {
        with_map!(self, m => {
            // The indices grouped by shard (a counting sort): `order[starts[s]..starts[s + 1]]`
            // are shard `s`'s, in the order given.
            let shards = m.shards();
            let shard_of: Vec<usize> =
                items.iter().map(|&(hash, _)| m.determine_shard(hash as usize)).collect();
            let mut starts = vec![0; shards.len() + 1];
            for &s in &shard_of {
                starts[s + 1] += 1;
            }
            for s in 0..shards.len() {
                starts[s + 1] += starts[s];
            }
            let mut order = vec![0; items.len()];
            let mut next = starts.clone();
            for (i, &s) in shard_of.iter().enumerate() {
                order[next[s]] = i;
                next[s] += 1;
            }
            // In turns: each shard's next `HOLD` nodes, shard after shard.
            let mut from = starts[..shards.len()].to_vec();
            while (0..shards.len()).any(|s| from[s] < starts[s + 1]) {
                for (s, shard) in shards.iter().enumerate() {
                    let to = starts[s + 1].min(from[s] + HOLD);
                    let group = &order[from[s]..to];
                    from[s] = to;
                    if group.is_empty() {
                        continue;
                    }
                    let mut table = shard.write();
                    // A first pass finds each entry: the probes are independent, so their cache
                    // misses overlap, and the pass below finds its lines in cache. It reads the
                    // deadline as well as the node: a bucket may straddle two cache lines (the
                    // table is only 16-byte aligned), and the step below reads both.
                    let found = group
                        .iter()
                        .filter(|&&i| {
                            let (hash, node) = items[i];
                            table
                                .get(hash, |(_, e)| {
                                    let entry = e.get().entry();
                                    entry.node == node && entry.deadline() != NEVER
                                })
                                .is_some()
                        })
                        .count();
                    std::hint::black_box(found);
                    for &i in group {
                        let (hash, node) = items[i];
                        let step = catch_unwind(AssertUnwindSafe(|| {
                            // Most fired entries leave as they are: taken out in one probe.
                            let gone =
                                table.remove_entry(hash, |(_, e)| leaves(i, e.get().entry()));
                            if gone.is_some() {
                                return gone;
                            }
                            let remove = table.get_mut(hash, holds::<K, V, _>(node)).is_some_and(
                                |(key, value)| {
                                    let (entry, stamp) = value.get_mut().split_mut();
                                    f(i, key, entry, stamp)
                                },
                            );
                            if remove {
                                table.remove_entry(hash, holds::<K, V, _>(node))
                            } else {
                                None
                            }
                        }));
                        match step {
                            Ok(Some((k, value))) => {
                                removed.push((i, k, value.into_inner().into_entry()))
                            }
                            Ok(None) => {}
                            Err(_) => panicked.push(i),
                        }
                    }
                }
            }
        })
    }

    /// Remove `key` if `f`, which may change the entry (and its refresh state), says so,
    /// under the shard's write lock.
    pub(crate) fn remove_if_mut<Q>(
        &self,
        key: &Q,
        f: impl FnOnce(&K, &mut Entry<V>, Option<&Stamp>) -> bool,
    ) -> Option<(K, Entry<V>)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        with_map!(self, m => m
            .remove_if_mut(key, |k, e| {
                let (entry, stamp) = e.split_mut();
                f(k, entry, stamp)
            })
            .map(|(k, e)| (k, e.into_entry())))
    }

    /// Give every entry `pick` chooses a deadline in the past, one shard at a time, with no
    /// user code (no key is copied).
    pub(crate) fn expire_where(&self, pick: impl Fn(&Entry<V>) -> bool) {
        with_map!(self, m => m.iter_mut().for_each(|mut e| {
            let entry = e.value_mut().entry_mut();
            if pick(entry) {
                entry.deadline.store(0, Ordering::Relaxed);
            }
        }));
    }

    /// The keys of the entries written in another generation than `generation`, one shard
    /// at a time, and how many of them could not be copied (a key's `Clone` panicked: that
    /// key is left out, the others are not).
    pub(crate) fn older_keys(&self, generation: u32) -> (Vec<K>, usize)
    where
        K: Clone,
    {
        self.keys_where(|entry| entry.generation() != generation)
    }

    /// The keys of the entries `pick` chooses, one shard at a time, and how many of them
    /// could not be copied (a key's `Clone` panicked: that key is left out).
    pub(crate) fn keys_where(&self, pick: impl Fn(&Entry<V>) -> bool) -> (Vec<K>, usize)
    where
        K: Clone,
    {
        let mut failed = 0;
        let keys = with_map!(self, m => m
            .iter()
            .filter(|e| pick(e.value().entry()))
            .filter_map(|e| {
                let key = catch_unwind(AssertUnwindSafe(|| e.key().clone())).ok();
                failed += usize::from(key.is_none());
                key
            })
            .collect());
        (keys, failed)
    }
}

/// A map bucket's test for the entry that holds `node` (an id is held by one entry at most).
fn holds<K, V, E: Stored<V>>(node: NodeId) -> impl Fn(&(K, SharedValue<E>)) -> bool {
    move |(_, e)| e.get().entry().node == node
}

/// An entry that left the map, on its way to being reported.
pub(crate) struct Retired<K, V> {
    /// The key: `None` for an entry an overwrite replaced when nobody listens (the key
    /// stays in the map).
    pub(crate) key: Option<K>,
    pub(crate) entry: Entry<V>,
    pub(crate) cause: RemovalCause,
}

/// What a fired wheel node meant, decided under its key's shard lock: what the expiry task
/// does with the node next.
pub(crate) enum Fired<K, V> {
    /// No entry holds the node: it was orphaned, and its record, still queued, frees it (see
    /// `handoff.rs`).
    Orphaned,
    /// The entry expired (or was invalidated) and is out of the map: the node is free, and
    /// this is to be reported.
    Removed(Retired<K, V>),
    /// The entry has no deadline any more: the node is free.
    Unfiled,
    /// The entry's deadline moved later: re-file the node at this tick.
    Refile(u64),
    /// The entry is due for a reload (its stamp says so now): queue this key (a copy of the
    /// entry's), and re-file the node at this tick (`None`: the entry has no deadline, and
    /// the node is free).
    Reload(Option<u64>, K),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(deadline: u64, generation: u32) -> Entry<u64> {
        Entry::new(1, deadline, UNFILED, generation, 0)
    }

    #[test]
    fn liveness_honours_deadline_and_generation() {
        let e = entry(100, 3);
        assert!(e.is_live(3, || 99));
        assert!(!e.is_live(3, || 100));
        assert!(!e.is_live(4, || 0));
        let forever = entry(NEVER, 3);
        assert!(forever.is_live(3, || panic!("no clock read for an entry without deadline")));
    }

    #[test]
    fn policy_bits_live_beside_the_generation() {
        let e = entry(NEVER, GENERATION_MASK);
        assert_eq!(
            (e.generation(), e.freq(), e.in_main()),
            (GENERATION_MASK, 0, false)
        );
        for _ in 0..10 {
            e.bump();
        }
        assert_eq!(
            (e.generation(), e.freq()),
            (GENERATION_MASK, 3),
            "saturates at 3"
        );
        e.set_policy(1, true);
        assert_eq!(
            (e.generation(), e.freq(), e.in_main()),
            (GENERATION_MASK, 1, true)
        );
    }

    #[test]
    fn the_clock_hand_counts_down_main_entries_only() {
        let e = entry(NEVER, 7);
        e.set_policy(3, false);
        assert_eq!(e.pass(), (3, false));
        assert_eq!(e.freq(), 3, "a window entry keeps its count");
        e.set_policy(2, true);
        assert_eq!(e.pass(), (2, true));
        assert_eq!(e.pass(), (1, true));
        assert_eq!(e.pass(), (0, true));
        assert_eq!(e.pass(), (0, true), "stops at zero");
        assert_eq!((e.generation(), e.in_main()), (7, true));
    }

    #[test]
    fn entry_stays_small() {
        // Key and value of 8 bytes each: 32 bytes a bucket in the map, 40 with a cap (only
        // with a time-to-idle).
        assert_eq!(std::mem::size_of::<(u64, Entry<u64>)>(), 32);
        assert_eq!(std::mem::size_of::<(u64, Capped<u64>)>(), 40);
        // Refresh state only in a cache that refreshes.
        assert_eq!(std::mem::size_of::<(u64, Refreshing<u64>)>(), 56);
    }

    /// Fired nodes spread over every shard, many per shard (so that the shards take several
    /// turns): each is handled exactly once, by the rule its entry meets, and a panic in `f`
    /// costs its own node only.
    #[test]
    fn grouped_removal_handles_each_node_once_in_turns() {
        let map: Map<u64, u64, std::hash::RandomState> =
            Map::new(false, false, 0, Default::default(), 8);
        let Map::Plain(m) = &map else { unreachable!() };
        let keys = 300u64;
        for k in 0..keys {
            m.insert(k, Entry::new(k, 10, 1_000 + k as NodeId, 0, 0));
        }
        // One item per key for its node, and twenty for nodes no entry holds.
        let items: Vec<(u64, NodeId)> = (0..keys)
            .map(|k| (map.hash(&k), 1_000 + k as NodeId))
            .chain((0..20).map(|k| (map.hash(&k), 5_000 + k as NodeId)))
            .collect();
        let key_of = |i: usize| i as u64;
        let (mut removed, mut panicked) = (Vec::new(), Vec::new());
        let mut asked = vec![0; items.len()];
        map.remove_grouped(
            &items,
            |i, e| e.node == items[i].1 && key_of(i) % 2 == 0,
            |i, key, entry, _| {
                asked[i] += 1;
                assert_eq!(*key, key_of(i), "f sees the entry that holds the node");
                if key % 7 == 1 {
                    panic!("a test panic for key {key}");
                }
                if key % 3 == 0 {
                    return true;
                }
                entry.deadline.store(99, Ordering::Relaxed);
                false
            },
            &mut removed,
            &mut panicked,
        );
        let odd = |k: u64| k % 2 == 1;
        let mut gone: Vec<u64> = removed
            .iter()
            .map(|(i, k, _)| {
                assert_eq!(*k, key_of(*i));
                *k
            })
            .collect();
        gone.sort_unstable();
        let expected: Vec<u64> = (0..keys)
            .filter(|&k| !odd(k) || (k % 7 != 1 && k % 3 == 0))
            .collect();
        assert_eq!(gone, expected, "each removed once, by `leaves` or by `f`");
        panicked.sort_unstable();
        let expected: Vec<usize> = (0..keys)
            .filter(|&k| odd(k) && k % 7 == 1)
            .map(|k| k as usize)
            .collect();
        assert_eq!(panicked, expected);
        for (i, &n) in asked.iter().enumerate() {
            let k = key_of(i);
            let once = i < keys as usize && odd(k);
            assert_eq!(n, usize::from(once), "f asked {n} times for item {i}");
        }
        for k in (0..keys).filter(|&k| odd(k) && !(k % 7 != 1 && k % 3 == 0)) {
            let deadline = m.get(&k).expect("kept").deadline();
            assert_eq!(deadline, if k % 7 == 1 { 10 } else { 99 }, "key {k}");
        }
        assert_eq!(map.len(), keys as usize - gone.len());
    }
}
