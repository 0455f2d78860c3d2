//! The hand-off from writers to the expiry task: which keys need a wheel node and at what
//! tick, and which wheel nodes writers have orphaned.
//!
//! Writers never touch the wheel (the task owns it), but they hand out its node ids. While
//! holding the key's shard lock, a writer that gives an entry a first or an earlier deadline
//! takes an id (from its stripe's pool of ids the task freed, or a fresh one), stores it in
//! the entry, and records `key -> (id, tick)` in one of a few striped, mutex-guarded maps. The
//! task swaps each stripe out whole and links every recorded node at its tick: filing costs it
//! no map lookup and no shard lock. A writer that removes an entry, or moves it to an earlier
//! deadline after its node was linked, records the node it leaves behind as an *orphan*, which
//! the task frees. While a stripe's map is empty, a new key (an entry that held no node) is
//! queued in a plain list beside it instead, `(id, tick, hash)`, with no map insert and no
//! copy of the key: the common case of a cache filling up. The task links the list's nodes
//! and the map's, then frees the orphans (a listed node whose entry went before the drain is
//! one). The wheel keeps each node's hash (the key's, by the map's hasher), not its key: with
//! the node id, that finds the entry.
//!
//! Invariants:
//! - **Every id in one place.** An id is free with the task (on the wheel's free list, or in
//!   the task's own list of the ids it freed since its last drain); or in a stripe's pool or
//!   the reserve; or
//!   held by an entry (its `node`) and either named by the queued record or list item of the
//!   entry's key (not linked yet) or linked in the wheel; or named as an orphan by a queued
//!   record and either linked in the wheel or listed (no entry holds it). A node the task finds held by no entry when it fires
//!   is such an orphan: the task leaves it for its record to free.
//! - **Never late.** A record's tick is at most the tick of the entry's deadline: a first or
//!   an earlier deadline always goes through [`Handoff::push`], which lowers the tick of a
//!   queued record. A later deadline needs nothing: the node fires early and the task re-files
//!   it.
//! - **Bounded.** A stripe holds at most one record and one list item per key, however often
//!   the key is written, removed and written again before the next drain: a record is a key,
//!   not an operation. A key is listed only while the map is empty, and whatever ends a
//!   listed node's use (a removal, an earlier deadline) puts a record in the map, so the key
//!   is not listed again before the drain. A record names at most one node to link (the
//!   entry's) and at most two orphans (in practice one: the node the entry held when this
//!   stripe map became current, or the listed one).
//!   A pool holds the ids the task gave it, those a writer moved there from the reserve,
//!   and those of queued nodes whose entry was removed. A writer takes an id from its
//!   stripe's pool, else from the shared reserve (moving a batch of its highest ids to its
//!   pool), where the task puts every free id it did not pool, and only then a fresh one: so
//!   the ids ever handed out stay within the most nodes held at once plus what the pools and
//!   the reserve hold, however the write rate swings, and the nodes in use gather in the
//!   wheel slab's last chunks, so that it can trim the others.
//! - **No user code between two writes.** A writer's key `Clone`, `Hash` and `Eq` run here
//!   before the stripe changes, never between two changes that must both happen.
//! - **No lost wake-up.** The writer reads the task's published `next_wake` *inside* the stripe
//!   lock; the task publishes `next_wake` *before* it checks the stripes for records. So either
//!   the task sees the record, or the writer sees the new `next_wake` and notifies (a
//!   `Notify` permit survives until the task waits).
//! - **Nothing grows after the task is gone.** The task sets `closed` and then empties every
//!   stripe under its lock; writers check `closed` under the same lock, and then neither queue
//!   nor take ids.
//! - **No write lost while closed.** The stripes are made when a task first opens the
//!   hand-off (a cache built per request, whose task never gets to run, makes none). A writer
//!   that finds the hand-off closed sets `missed`, then looks at `closed` again; the opening
//!   task clears `closed`, then reads `missed`; a `SeqCst` fence on each side sits between
//!   the two steps, so either the writer sees the hand-off open (and queues under its
//!   stripe's lock) or the task sees `missed` (and takes the entry over from the map, whose
//!   shard lock the writer holds).
//! - Lock order is always shard lock, then stripe lock. The task never holds a stripe lock
//!   while it takes a shard lock, and holds one only to swap a stripe's map and pool.

use std::any::Any;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Weak};

use crate::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use crate::sync::{lock, LazyStripes, Mutex, MutexGuard, Wake};
use crate::time::clock::NEVER;
use crate::time::wheel::NodeId;

use super::free_ids::FreeIds;

/// The `node` of an entry that holds no wheel node.
pub(crate) const UNFILED: NodeId = u32::MAX;

/// Ids stop short of the two values the wheel reserves (`u32::MAX - 1` and `u32::MAX`).
const MAX_IDS: u32 = u32::MAX - 1;

/// Whether a writer holding an entry's shard lock must [`push`](Handoff::push) when it gives
/// the entry the (effective) deadline `deadline`, over an entry that holds the node `held`
/// and had the deadline `old` (a vacant entry holds `UNFILED`): for a first deadline, or an
/// earlier one. A later deadline, or none, needs nothing: a node the entry holds fires early,
/// and the task re-files or drops it.
pub(crate) fn needs_push(held: NodeId, old: u64, deadline: u64) -> bool {
    deadline != NEVER && (held == UNFILED || deadline < old)
}

/// A writer whose pool ran dry moves up to this many ids from the reserve to its pool.
const RESERVE_BATCH: usize = 32;

/// A stripe this large wakes the task even if no deadline is near, so drains stay small.
const WAKE_AT_RECORDS: usize = 4096;

/// One key's record: the node to link for its entry, and the nodes it orphaned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    /// The node to link, or `UNFILED`.
    pub(crate) node: NodeId,
    /// The tick to link it at.
    pub(crate) tick: u64,
    /// The hash the key is filed under in the map, for the node to link (the wheel keeps it
    /// to find the entry).
    pub(crate) hash: u64,
    pub(crate) orphans: Orphans,
}

impl Record {
    const EMPTY: Record = Record {
        node: UNFILED,
        tick: u64::MAX,
        hash: 0,
        orphans: Orphans::NONE,
    };
}

/// A drained stripe's map: key to its record.
pub(crate) type Records<K, S> = HashMap<K, Record, S>;

/// The wheel nodes a record orphaned: at most two (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Orphans([NodeId; 2]);

impl Orphans {
    /// No node.
    pub(crate) const NONE: Orphans = Orphans([UNFILED; 2]);

    fn add(&mut self, node: NodeId) {
        let free = if self.0[0] == UNFILED { 0 } else { 1 };
        debug_assert_eq!(self.0[free], UNFILED, "a third orphaned node for one key");
        self.0[free] = node;
    }

    /// The orphaned nodes.
    pub(crate) fn nodes(self) -> impl Iterator<Item = NodeId> {
        self.0.into_iter().filter(|n| *n != UNFILED)
    }
}

/// What the task and the writers share besides the store; the task keeps its own `Arc` of it
/// so that it can wait without keeping the store alive.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    /// Wakes the task: a deadline earlier than `next_wake`, a full stripe, `invalidate_all`.
    pub(crate) notify: Wake,
    /// The tick the task sleeps until; `u64::MAX` when it has no timer at all.
    pub(crate) next_wake: AtomicU64,
    /// Set while no task reads the hand-off (until a task first runs, and after one
    /// stops): writers then queue nothing and take no ids.
    pub(crate) closed: AtomicBool,
    /// The cache's lifecycle: whether a task runs ([`TASK`]), whether the last handle is
    /// gone ([`GONE`]). At most one task at a time: a task is started only by the caller that
    /// sets `TASK` ([`Signals::claim_task`]).
    lifecycle: AtomicU8,
    /// Set when a writer found the hand-off closed, so that the next task takes over the
    /// entries nobody filed; cleared by that task as it opens the hand-off (see the module
    /// docs: "No write lost while closed").
    pub(crate) missed: AtomicBool,
    /// Tasks started so far (test-only visibility).
    #[cfg(any(test, feature = "internals"))]
    pub(crate) tasks_started: AtomicU64,
    /// Tasks that exist now, from their start until their exit guard drops: at most one
    /// (test-only visibility).
    #[cfg(any(test, feature = "internals"))]
    pub(crate) tasks_alive: AtomicUsize,
    /// Set once the last handle is gone and no task runs: what `Cache::closed` waits for.
    ended: AtomicBool,
    end: tokio::sync::Notify,
    /// Callers of [`Signals::ended`] registered or registering on `end`: the end notifies
    /// only when there is one (a cache built per request is never waited for).
    end_waiters: AtomicUsize,
    /// The store, for a task that has not run yet to reach when it first does: such a task
    /// holds only these signals, and the store's drop empties this, so a cache dropped before
    /// its task runs frees its store at once. Set by [`Signals::with_store`].
    store: std::sync::Mutex<Option<Weak<dyn Any + Send + Sync>>>,
    /// How many times the task woke (test-only visibility).
    pub(crate) wakeups: AtomicU64,
    /// Wheel nodes the task holds, as of its last wake (test-only visibility).
    pub(crate) nodes: AtomicUsize,
    /// Wheel slab cells in memory, as of the task's last wake that fired or swept
    /// (test-only visibility).
    #[cfg(any(test, feature = "internals"))]
    pub(crate) wheel_cells: AtomicUsize,
}

/// [`Signals::lifecycle`]: a task runs.
const TASK: u8 = 1;
/// [`Signals::lifecycle`]: the last handle is gone.
const GONE: u8 = 2;

impl Signals {
    /// Signals of a cache no task serves yet: the hand-off is closed.
    pub(crate) fn new() -> Self {
        let signals = Signals::default();
        signals.closed.store(true, Ordering::SeqCst);
        signals
    }

    /// Whether a task runs now (a hint for writers: one relaxed load).
    #[inline]
    pub(crate) fn task_running(&self) -> bool {
        self.lifecycle.load(Ordering::Relaxed) & TASK != 0
    }

    /// Claim the right to start the task: true for exactly one caller while no task runs and
    /// a handle is still alive.
    pub(crate) fn claim_task(&self) -> bool {
        let mut state = self.lifecycle.load(Ordering::Acquire);
        loop {
            if state & (TASK | GONE) != 0 {
                return false;
            }
            match self.lifecycle.compare_exchange(
                state,
                state | TASK,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    #[cfg(any(test, feature = "internals"))]
                    self.tasks_started.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(actual) => state = actual,
            }
        }
    }

    /// The task has stopped (its hand-off already closed), or could not start: another may
    /// be claimed. Ends the cache if the last handle is gone too.
    pub(crate) fn task_ended(&self) {
        if self.lifecycle.fetch_and(!TASK, Ordering::AcqRel) & GONE != 0 {
            self.end();
        }
    }

    /// The last handle is gone. Ends the cache if no task runs.
    pub(crate) fn handles_gone(&self) {
        if self.lifecycle.fetch_or(GONE, Ordering::AcqRel) & TASK == 0 {
            self.end();
        }
    }

    fn end(&self) {
        // SeqCst pairs with `ended`: either this load sees its waiter, or its check of
        // `ended` sees the store.
        self.ended.store(true, Ordering::SeqCst);
        if self.end_waiters.load(Ordering::SeqCst) != 0 {
            self.end.notify_waiters();
        }
    }

    /// Signals of a cache no task serves yet, that keep a `Weak` of its store for a task
    /// to reach.
    pub(crate) fn with_store(store: Weak<impl Any + Send + Sync>) -> Self {
        let store: Weak<dyn Any + Send + Sync> = store;
        Signals {
            store: std::sync::Mutex::new(Some(store)),
            ..Signals::new()
        }
    }

    /// The store, while a handle keeps it alive.
    pub(crate) fn store<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        // The store lets go of the slot before the last handle marks itself gone: once gone,
        // there is nothing to find (and a task run after its cache, one per request, takes
        // no lock).
        if self.lifecycle.load(Ordering::Acquire) & GONE != 0 {
            return None;
        }
        let weak = self.slot().clone()?;
        weak.upgrade()?.downcast().ok()
    }

    /// Let go of the store: its last handle is dropping it.
    pub(crate) fn release_store(&self) {
        let weak = self.slot().take();
        drop(weak);
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Weak<dyn Any + Send + Sync>>> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the last handle is gone and no task runs.
    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// Wait until the last handle is gone and no task runs.
    pub(crate) async fn ended(&self) {
        /// Counts a waiter from before its registration until it returns or is dropped.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.end_waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.end_waiters);
        loop {
            let notified = self.end.notified();
            tokio::pin!(notified);
            // Registered before the check: an end after it wakes us.
            notified.as_mut().enable();
            if self.is_ended() {
                return;
            }
            notified.await;
        }
    }
}

/// A queued node of a key that had no record when it was queued: (node, tick, the hash the
/// key is filed under in the map). No copy of the key.
pub(crate) type Fresh = (NodeId, u64, u64);

/// A stripe's records, and the ids its writers hand out.
struct Stripe<K, S> {
    records: Records<K, S>,
    /// Nodes queued while `records` was empty, for entries that held none (a new key): no
    /// map insert. Once `records` holds anything (a key removed or moved earlier since the
    /// last drain), every push goes there, so no key is queued twice (see the module docs).
    fresh: Vec<Fresh>,
    /// Ids the task freed (or queued nodes whose entry went), for writers to take first.
    pool: Vec<NodeId>,
    /// Ids writers took since the task last swapped the pool.
    taken: usize,
}

/// A stripe followed by a cache line of padding: two stripes' locks and maps never share a
/// line, and the array needs no over-aligned allocation (which the system allocator serves
/// more slowly than a plain one).
struct Padded<K, S> {
    stripe: Mutex<Stripe<K, S>>,
    _line: [u64; 8],
}

/// What [`Handoff::take`] hands the task.
pub(crate) struct Taken<K, S> {
    pub(crate) records: Records<K, S>,
    /// Nodes to link, queued outside `records`. Some may be named as orphans in `records`
    /// too (their entry went before the drain): the task links these first.
    pub(crate) fresh: Vec<Fresh>,
    /// The ids left in the pool the task swapped out: still held, now by the task.
    pub(crate) pool: Vec<NodeId>,
    /// Ids writers took from the stripe since the previous swap.
    pub(crate) taken: usize,
}

pub(crate) struct Handoff<K, S> {
    /// Made when a task first opens the hand-off.
    stripes: LazyStripes<Padded<K, S>>,
    /// How many stripes there are, or will be.
    count: usize,
    hasher: S,
    /// Free ids beyond what the stripes' pools hold, for a writer whose pool ran dry: the
    /// task stocks it with every id it freed and did not pool. Handed out highest first.
    reserve: Mutex<FreeIds>,
    /// How many ids the reserve holds, as of its last change (a hint read without its lock).
    reserved: AtomicUsize,
    /// The next id never handed out.
    fresh: AtomicU32,
}

impl<K: Hash + Eq, S: BuildHasher + Clone> Handoff<K, S> {
    pub(crate) fn new(stripes: usize, hasher: S) -> Self {
        debug_assert!(stripes.is_power_of_two());
        Handoff {
            stripes: LazyStripes::new(|| Self::make(stripes, &hasher)),
            count: stripes,
            hasher,
            reserve: Mutex::new(FreeIds::new()),
            reserved: AtomicUsize::new(0),
            fresh: AtomicU32::new(0),
        }
    }

    fn make(count: usize, hasher: &S) -> Box<[Padded<K, S>]> {
        (0..count)
            .map(|_| Padded {
                stripe: Mutex::new(Stripe {
                    records: HashMap::with_hasher(hasher.clone()),
                    fresh: Vec::new(),
                    pool: Vec::new(),
                    taken: 0,
                }),
                _line: [0; 8],
            })
            .collect()
    }

    /// The stripes, once a task has opened the hand-off.
    fn stripes(&self) -> Option<&[Padded<K, S>]> {
        self.stripes.get()
    }

    /// The stripes of a hand-off a task opened, for the task.
    fn opened(&self) -> &[Padded<K, S>] {
        self.stripes()
            .expect("ebb: the hand-off is used before its task opened it")
    }

    pub(crate) fn stripe_count(&self) -> usize {
        self.count
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Stripe<K, S>> {
        lock(&self.opened()[i].stripe)
    }

    /// The stripe of a key whose hash by the map's hasher is `hash`: every push and orphan
    /// of one key goes to one stripe, so that it has one record there.
    fn stripe_of(&self, hash: u64) -> usize {
        (hash >> 32) as usize & (self.count - 1)
    }

    /// Ids handed out so far, pooled or not: the wheel's slab holds no more cells than this.
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn ids(&self) -> u32 {
        self.fresh.load(Ordering::Relaxed)
    }

    /// Queue a node for a key (whose hash by the map's hasher is `hash`), whose entry holds
    /// `held` (`UNFILED` or a node), to be linked at `tick`; called with the key's shard lock
    /// held, when [`needs_push`] says so. `key` gives a copy of the key (user code), called
    /// before the stripe changes and only for a record: a new key's node is queued with its
    /// hash alone. Returns the
    /// entry's node from now on: `held` itself if it is still queued here (the record's tick
    /// is lowered), else a newly taken id (and `held`, linked in the wheel, becomes an
    /// orphan). Once the task has stopped: `held`, and nothing queued.
    pub(crate) fn push(
        &self,
        signals: &Signals,
        key: impl FnOnce() -> K,
        hash: u64,
        held: NodeId,
        tick: u64,
    ) -> NodeId {
        let Some(stripes) = self.open_stripes(signals) else {
            return held;
        };
        let mut guard = lock(&stripes[self.stripe_of(hash)].stripe);
        if signals.closed.load(Ordering::Acquire) {
            // The next task must look for this entry: nobody filed it.
            signals.missed.store(true, Ordering::Release);
            return held;
        }
        let stripe = &mut *guard;
        if held == UNFILED && stripe.records.is_empty() {
            let id = self.take_id(&mut stripe.pool, &mut stripe.taken);
            stripe.fresh.push((id, tick, hash));
            let wake = stripe.fresh.len() == WAKE_AT_RECORDS
                || tick < signals.next_wake.load(Ordering::SeqCst);
            drop(guard);
            if wake {
                signals.notify.wake();
            }
            return id;
        }
        let key = key();
        let len_before = stripe.records.len();
        let record = stripe.records.entry(key).or_insert(Record::EMPTY);
        let node = if held != UNFILED && record.node == held {
            record.tick = record.tick.min(tick);
            held
        } else {
            // A queued node is always the entry's: this record has none.
            debug_assert_eq!(record.node, UNFILED, "a queued node no entry holds");
            if held != UNFILED {
                record.orphans.add(held);
            }
            let id = self.take_id(&mut stripe.pool, &mut stripe.taken);
            record.node = id;
            record.tick = tick;
            record.hash = hash;
            id
        };
        let grew_large =
            len_before + 1 == WAKE_AT_RECORDS && stripe.records.len() == WAKE_AT_RECORDS;
        let wake = grew_large || tick < signals.next_wake.load(Ordering::SeqCst);
        drop(guard);
        if wake {
            signals.notify.wake();
        }
        node
    }

    /// The stripes for a writer, or `None` if the hand-off is closed, in which case the write
    /// is marked `missed` for the next task (see the module docs: "No write lost while
    /// closed"). A hand-off that closes after this returns is caught under the stripe's lock.
    #[inline]
    fn open_stripes(&self, signals: &Signals) -> Option<&[Padded<K, S>]> {
        if !signals.closed.load(Ordering::Acquire) {
            if let Some(stripes) = self.stripes() {
                return Some(stripes);
            }
        }
        signals.missed.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        // Acquire: a hand-off seen open here has its stripes made.
        if signals.closed.load(Ordering::Acquire) {
            return None;
        }
        self.stripes()
    }

    /// An id for a writer: from its stripe's `pool`, else the reserve or a fresh one; counted
    /// in the stripe's `taken`.
    #[inline]
    fn take_id(&self, pool: &mut Vec<NodeId>, taken: &mut usize) -> NodeId {
        *taken += 1;
        match pool.pop() {
            Some(id) => id,
            None => self.reserved_or_fresh_id(pool),
        }
    }

    /// An id for a writer whose stripe's pool is empty: a free one from the reserve (which
    /// tops the pool up with up to [`RESERVE_BATCH`] more), else one never handed out. Fresh
    /// ids are taken only while no free id is in reach, so the ids handed out follow the
    /// most nodes held at once, not the write rate.
    fn reserved_or_fresh_id(&self, pool: &mut Vec<NodeId>) -> NodeId {
        // The hint spares a writer the reserve's lock while the reserve is empty (always,
        // while a cache only grows); it is written under that lock.
        if self.reserved.load(Ordering::Relaxed) != 0 {
            let mut reserve = lock(&self.reserve);
            reserve.take_highest(RESERVE_BATCH, pool);
            self.reserved.store(reserve.len(), Ordering::Relaxed);
            drop(reserve);
            if let Some(id) = pool.pop() {
                return id;
            }
        }
        let id = self.fresh.fetch_add(1, Ordering::Relaxed);
        assert!(id < MAX_IDS, "ebb: more than {MAX_IDS} wheel nodes");
        id
    }

    /// Add free ids (the task's) to the reserve.
    pub(crate) fn stock(&self, ids: &mut Vec<NodeId>) {
        if !ids.is_empty() {
            let mut reserve = lock(&self.reserve);
            ids.drain(..).for_each(|id| reserve.insert(id));
            self.reserved.store(reserve.len(), Ordering::Relaxed);
        }
    }

    /// For a task about to rest (its wheel is empty): swap stripe `i`'s pool for `pool`, and
    /// give back the room of its record map and list if they are empty, leaving any record
    /// a writer queued meanwhile; returns the old pool and how many ids its writers took.
    pub(crate) fn rest(&self, i: usize, pool: Vec<NodeId>) -> (Vec<NodeId>, usize) {
        let mut stripe = self.lock(i);
        if stripe.records.is_empty() {
            stripe.records = self.empty();
        }
        if stripe.fresh.is_empty() {
            stripe.fresh = Vec::new();
        }
        (
            std::mem::replace(&mut stripe.pool, pool),
            std::mem::take(&mut stripe.taken),
        )
    }

    /// Swap stripe `i`'s records for `spare` (an empty map and an empty list) and its pool
    /// for `pool`.
    pub(crate) fn take(
        &self,
        i: usize,
        spare: (Records<K, S>, Vec<Fresh>),
        pool: Vec<NodeId>,
    ) -> Taken<K, S> {
        let mut stripe = self.lock(i);
        Taken {
            records: std::mem::replace(&mut stripe.records, spare.0),
            fresh: std::mem::replace(&mut stripe.fresh, spare.1),
            pool: std::mem::replace(&mut stripe.pool, pool),
            taken: std::mem::take(&mut stripe.taken),
        }
    }

    /// An empty map to swap in.
    pub(crate) fn empty(&self) -> Records<K, S> {
        HashMap::with_hasher(self.hasher.clone())
    }

    /// Whether any stripe holds a record.
    pub(crate) fn has_records(&self) -> bool {
        self.stripes().is_some_and(|stripes| {
            stripes.iter().any(|s| {
                let stripe = lock(&s.stripe);
                !stripe.records.is_empty() || !stripe.fresh.is_empty()
            })
        })
    }

    /// Queued records and fresh nodes, apart (loom models).
    #[cfg(all(test, loom))]
    fn queued(&self) -> (usize, usize) {
        self.opened()
            .iter()
            .map(|s| {
                let stripe = lock(&s.stripe);
                (stripe.records.len(), stripe.fresh.len())
            })
            .fold((0, 0), |(r, f), (sr, sf)| (r + sr, f + sf))
    }

    /// The number of queued records (test-only visibility).
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn len(&self) -> usize {
        self.sum_over_stripes(|stripe| stripe.records.len() + stripe.fresh.len())
    }

    /// Room the stripes hold, in records, list items and pooled ids (test-only visibility).
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn room(&self) -> usize {
        self.sum_over_stripes(|stripe| {
            stripe.records.capacity() + stripe.fresh.capacity() + stripe.pool.capacity()
        })
    }

    /// `count` of each stripe, each under its lock, added up (0 before the task opens the
    /// hand-off).
    #[cfg(any(test, feature = "internals"))]
    fn sum_over_stripes(&self, count: impl Fn(&Stripe<K, S>) -> usize) -> usize {
        self.stripes().map_or(0, |stripes| {
            stripes.iter().map(|s| count(&lock(&s.stripe))).sum()
        })
    }

    /// The number of queued list items, of [`Handoff::len`] (test-only visibility).
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn listed(&self) -> usize {
        self.stripes().map_or(0, |stripes| {
            stripes.iter().map(|s| lock(&s.stripe).fresh.len()).sum()
        })
    }

    /// Drop every record and pool and refuse new records: the task has stopped.
    pub(crate) fn close(&self, signals: &Signals) {
        signals.closed.store(true, Ordering::SeqCst);
        {
            let mut reserve = lock(&self.reserve);
            self.reserved.store(0, Ordering::Relaxed);
            reserve.clear();
        }
        for padded in self.stripes().unwrap_or_default() {
            let mut stripe = lock(&padded.stripe);
            stripe.taken = 0;
            let old = (
                std::mem::replace(&mut stripe.records, self.empty()),
                std::mem::take(&mut stripe.fresh),
                std::mem::take(&mut stripe.pool),
            );
            drop(stripe);
            drop(old);
        }
    }

    /// Accept records again, for a task that starts now with an empty wheel (making the
    /// stripes if no task opened the hand-off before). Returns the first id of its epoch:
    /// ids below it were handed out for a task that is gone, and an entry may still hold one
    /// (the new task files such entries again, and ignores such ids when they come back as
    /// orphans). While closed nobody took an id, so none is in flight. Returns too whether a
    /// writer found the hand-off closed since the last task opened it (clearing the mark):
    /// the task must then take over the entries no task filed.
    ///
    /// Every stripe is held at once: a writer that saw the hand-off closed under its stripe's
    /// lock has finished, `missed` included, before it opens; one that saw it closed before
    /// taking a lock is caught by the fences (see the module docs).
    pub(crate) fn open(&self, signals: &Signals) -> (NodeId, bool) {
        let stripes = self
            .stripes
            .get_or_make(|| Self::make(self.count, &self.hasher));
        let held: Vec<_> = stripes.iter().map(|s| lock(&s.stripe)).collect();
        let base = self.fresh.load(Ordering::Relaxed);
        signals.closed.store(false, Ordering::SeqCst);
        drop(held);
        fence(Ordering::SeqCst);
        let missed = signals.missed.swap(false, Ordering::Acquire);
        (base, missed)
    }
}

impl<K: Hash + Eq + Clone, S: BuildHasher + Clone> Handoff<K, S> {
    /// Tell the task that `key`'s entry (`hash` gives the key's hash by the map's hasher),
    /// being removed under its shard lock, leaves `node` behind. A node still queued here was never linked: its id goes back to the pool, and the
    /// record forgets it. Else the node is linked (or about to be, from a map the task swapped
    /// out) and the record orphans it.
    pub(crate) fn orphan(
        &self,
        signals: &Signals,
        key: &K,
        hash: impl FnOnce() -> u64,
        node: NodeId,
    ) {
        let Some(stripes) = self.stripes() else {
            return; // Never opened: nothing was queued or linked.
        };
        let mut guard = lock(&stripes[self.stripe_of(hash())].stripe);
        if signals.closed.load(Ordering::Acquire) {
            return;
        }
        let stripe = &mut *guard;
        match stripe.records.get_mut(key) {
            Some(record) if record.node == node => {
                // The record stays, empty if it orphaned nothing: removing it would hash the
                // key again (user code) after the pool has the id back.
                record.node = UNFILED;
                stripe.pool.push(node);
            }
            Some(record) => {
                // A queued node is always the entry's: this record has none.
                debug_assert_eq!(record.node, UNFILED, "a queued node no entry holds");
                record.orphans.add(node);
            }
            None => {
                let mut record = Record::EMPTY;
                record.orphans.add(node);
                stripe.records.insert(key.clone(), record);
                if stripe.records.len() == WAKE_AT_RECORDS {
                    drop(guard);
                    signals.notify.wake();
                }
            }
        }
    }
}

/// Loom models of the hand-off, with the writer's and the task's steps as `Store::write`,
/// `Store::remove` and the expiry task take them (an entry behind a mutex stands in for the shard
/// lock, a map of linked nodes for the wheel).
/// Run with `RUSTFLAGS="--cfg loom" cargo test --release --lib loom_`.
#[cfg(all(test, loom))]
mod loom_handoff {
    use super::*;
    use crate::sync::Arc;
    use loom::thread;
    use std::collections::BTreeMap;
    use std::hash::BuildHasherDefault;

    type Hasher = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

    struct Entry {
        deadline: u64,
        node: NodeId,
    }

    struct World {
        handoff: Handoff<u8, Hasher>,
        signals: Signals,
        entry: Mutex<Entry>,
    }

    fn world() -> Arc<World> {
        Arc::new(World {
            handoff: Handoff::new(2, Hasher::default()),
            signals: Signals::default(),
            entry: Mutex::new(Entry {
                deadline: NEVER,
                node: UNFILED,
            }),
        })
    }

    /// Key 1's hash by the map's hasher, for a stripe.
    const KEY_HASH: u64 = 1 << 32;

    /// A writer: `Store::write` for key 1 (deadlines stand for their own ticks).
    fn write(w: &World, deadline: u64) {
        let mut entry = lock(&w.entry);
        if needs_push(entry.node, entry.deadline, deadline) {
            entry.node = w
                .handoff
                .push(&w.signals, || 1, KEY_HASH, entry.node, deadline);
        }
        entry.deadline = deadline;
        let (records, fresh) = w.handoff.queued();
        assert!(
            records <= 1 && fresh <= 1,
            "key 1 queued more than once: {records} records, {fresh} fresh"
        );
    }

    /// A writer: `Store::remove` of key 1.
    fn remove(w: &World) {
        let mut entry = lock(&w.entry);
        if entry.node != UNFILED {
            w.handoff.orphan(&w.signals, &1, || KEY_HASH, entry.node);
        }
        *entry = Entry {
            deadline: NEVER,
            node: UNFILED,
        };
    }

    /// The model task's wheel: the nodes it linked and their ticks, and the ids it freed or
    /// took back from pools.
    #[derive(Default)]
    struct Wheel {
        linked: BTreeMap<NodeId, u64>,
        held: Vec<NodeId>,
    }

    /// The task's drain: link every queued node at its tick, then free every orphan, and put
    /// every id it holds in the reserve.
    fn drain(w: &World, wheel: &mut Wheel) {
        for i in 0..w.handoff.stripe_count() {
            let taken = w
                .handoff
                .take(i, (w.handoff.empty(), Vec::new()), Vec::new());
            wheel.held.extend(taken.pool);
            let mut orphans = Vec::new();
            let fresh = taken.fresh.into_iter().map(|(node, tick, _)| (node, tick));
            let queued = taken.records.into_iter().map(|(_key, record)| {
                orphans.extend(record.orphans.nodes());
                (record.node, record.tick)
            });
            for (node, tick) in fresh.chain(queued).collect::<Vec<_>>() {
                if node != UNFILED {
                    let linked = wheel.linked.insert(node, tick);
                    assert!(linked.is_none(), "node {node} linked twice");
                }
            }
            for orphan in orphans {
                assert!(
                    wheel.linked.remove(&orphan).is_some(),
                    "orphan {orphan} not linked"
                );
                wheel.held.push(orphan);
            }
        }
        w.handoff.stock(&mut wheel.held);
    }

    /// Whether the entry's node is linked at `tick`.
    fn linked_at(w: &World, wheel: &Wheel, tick: u64) -> bool {
        let entry = lock(&w.entry);
        wheel.linked.get(&entry.node) == Some(&tick)
    }

    /// The task until the entry's node is linked at `tick`: drain, publish when it would wake
    /// next, look again, then sleep until woken. It has no timer here, so a lost wake-up leaves
    /// it asleep: a deadlock.
    fn run_until_linked_at(w: &World, tick: u64) -> Wheel {
        let mut wheel = Wheel::default();
        loop {
            drain(w, &mut wheel);
            let next = wheel.linked.values().min().copied().unwrap_or(u64::MAX);
            w.signals.next_wake.store(next, Ordering::SeqCst);
            if w.handoff.has_records() {
                continue;
            }
            if linked_at(w, &wheel, tick) {
                return wheel;
            }
            w.signals.notify.wait_blocking();
        }
    }

    #[test]
    fn loom_handoff_links_the_latest_deadline_and_loses_no_wakeup() {
        loom::model(|| {
            let w = world();
            let writer = {
                let w = Arc::clone(&w);
                // Each deadline is earlier than the last: each needs the task, now.
                thread::spawn(move || [30, 20, 10].into_iter().for_each(|d| write(&w, d)))
            };
            let wheel = run_until_linked_at(&w, 10);
            writer.join().unwrap();
            assert_eq!(lock(&w.entry).deadline, 10);
            assert_eq!(w.handoff.len(), 0);
            assert_eq!(
                wheel.linked.len(),
                1,
                "an orphan left linked: {:?}",
                wheel.linked
            );
        });
    }

    #[test]
    fn loom_handoff_accounts_for_every_id() {
        loom::model(|| {
            let w = world();
            let writer = {
                let w = Arc::clone(&w);
                thread::spawn(move || {
                    write(&w, 20);
                    remove(&w);
                    write(&w, 10);
                })
            };
            let mut wheel = run_until_linked_at(&w, 10);
            writer.join().unwrap();
            drain(&w, &mut wheel);
            // Every id handed out is in exactly one place: linked (the entry's), held, or in
            // the reserve (where the writer took the orphaned id back from, if it could).
            let mut ids: Vec<NodeId> = wheel.linked.keys().copied().collect();
            ids.extend(&wheel.held);
            ids.extend(lock(&w.handoff.reserve).iter());
            ids.sort_unstable();
            assert_eq!(ids, (0..w.handoff.ids()).collect::<Vec<_>>());
            assert_eq!(wheel.linked.len(), 1);
        });
    }

    #[test]
    fn loom_handoff_stops_growing_once_the_task_is_gone() {
        loom::model(|| {
            let w = world();
            let cancelled = Arc::new(AtomicBool::new(false));
            let writer = {
                let w = Arc::clone(&w);
                thread::spawn(move || {
                    write(&w, 20);
                    write(&w, 10);
                })
            };
            let last_handle = {
                let (w, cancelled) = (Arc::clone(&w), Arc::clone(&cancelled));
                // What dropping the last handle does: cancel, which wakes the task.
                thread::spawn(move || {
                    cancelled.store(true, Ordering::SeqCst);
                    w.signals.notify.wake();
                })
            };
            // The task: work, then check for cancellation before it parks.
            let mut wheel = Wheel::default();
            loop {
                drain(&w, &mut wheel);
                let next = wheel.linked.values().min().copied().unwrap_or(u64::MAX);
                w.signals.next_wake.store(next, Ordering::SeqCst);
                if cancelled.load(Ordering::SeqCst) {
                    break;
                }
                if !w.handoff.has_records() {
                    w.signals.notify.wait_blocking();
                }
            }
            // How the task ends, however it ends.
            w.handoff.close(&w.signals);
            writer.join().unwrap();
            last_handle.join().unwrap();
            assert_eq!(
                w.handoff.len(),
                0,
                "a write after the task stopped queued a record"
            );
            // Later writes queue nothing and take no id either.
            let ids = w.handoff.ids();
            remove(&w);
            write(&w, 5);
            assert_eq!(w.handoff.len(), 0);
            assert_eq!(w.handoff.ids(), ids);
        });
    }

    #[test]
    fn loom_lifecycle_starts_one_task_at_a_time() {
        loom::model(|| {
            let signals = Arc::new(Signals::new());
            assert!(signals.claim_task(), "the first task");
            let alive = Arc::new(AtomicUsize::new(1));
            let starts = Arc::new(AtomicUsize::new(0));
            // The old task's exit guard, as its runtime shuts down.
            let dying = {
                let (signals, alive) = (Arc::clone(&signals), Arc::clone(&alive));
                thread::spawn(move || {
                    alive.fetch_sub(1, Ordering::SeqCst);
                    signals.task_ended();
                })
            };
            // Two writers on other runtimes, each starting a task if none runs.
            let writers: Vec<_> = (0..2)
                .map(|_| {
                    let (signals, alive, starts) = (
                        Arc::clone(&signals),
                        Arc::clone(&alive),
                        Arc::clone(&starts),
                    );
                    thread::spawn(move || {
                        if signals.claim_task() {
                            let now = alive.fetch_add(1, Ordering::SeqCst) + 1;
                            assert_eq!(now, 1, "two tasks alive at once");
                            starts.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            dying.join().unwrap();
            for writer in writers {
                writer.join().unwrap();
            }
            assert!(starts.load(Ordering::SeqCst) <= 1);
            assert_eq!(signals.task_running(), starts.load(Ordering::SeqCst) == 1);
        });
    }

    #[test]
    fn loom_lifecycle_ends_once_the_handles_and_the_task_are_gone() {
        loom::model(|| {
            let signals = Arc::new(Signals::new());
            assert!(signals.claim_task());
            let task = {
                let signals = Arc::clone(&signals);
                thread::spawn(move || signals.task_ended())
            };
            let handles = {
                let signals = Arc::clone(&signals);
                thread::spawn(move || signals.handles_gone())
            };
            task.join().unwrap();
            handles.join().unwrap();
            assert!(signals.is_ended());
            assert!(
                !signals.claim_task(),
                "a task started after the last handle"
            );
        });
    }

    #[test]
    fn loom_a_write_no_task_saw_is_taken_over_by_the_next() {
        loom::model(|| {
            let w = world();
            w.signals.closed.store(true, Ordering::SeqCst); // no task yet
            let writer = {
                let w = Arc::clone(&w);
                thread::spawn(move || write(&w, 10))
            };
            // A task starting: open the hand-off, then look for writes nobody filed.
            let (_, take_over) = w.handoff.open(&w.signals);
            writer.join().unwrap();
            let queued = w.handoff.len() == 1;
            assert!(
                queued || take_over,
                "an entry with a deadline that no task will file"
            );
        });
    }
}
