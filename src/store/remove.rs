//! Removals: by a caller (`remove`), by the expiry task (a fired node, a sweep of what an
//! invalidation hid), by an invalidation itself when generations would wrap; how a removal's
//! cause is judged; and the one place every removal is counted and reported.
//!
//! Invariants:
//! - **Reported once.** Every entry that leaves the map is counted and reported exactly once,
//!   by the path that took it out, after the shard lock is released ([`Store::retire`]).
//! - **Books first.** A removal from a bounded cache holds the key's policy shard from before
//!   the entry leaves the map until the policy forgets it; the weight is read before the
//!   removal, so no user code runs between the two.
//! - **The task's steps run no user code after their first change**: a panic in a key's
//!   `Hash`, `Eq` or `Clone` leaves the entry and its node as they were. An unbounded
//!   cache's fired nodes run none of them but a reload's `Clone`: each entry is found by the
//!   hash its key is filed under and the node it holds.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use dashmap::Entry as Slot;

use super::capacity::Held;
use super::entry::{with_map, Entry, Fired, Retired, Stamp, Stored};
use super::flight::Flight;
use super::handoff::UNFILED;
use super::invalidate::{Begin, Predicate, Seen};
use super::refresh::Check;
use super::Store;
use crate::listener::RemovalCause;
use crate::stats::{Counter, LagBatch};
use crate::time::clock::NEVER;
use crate::time::wheel::NodeId;

impl<K, V, S> Store<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    /// Remove `key`; its value if it was live.
    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let held = self.hold_for_removal(key);
        let take = |key: &Q| {
            self.map.remove_if(key, |key, entry| {
                self.flights.supersede(key);
                self.orphan(key, entry);
                true
            })
        };
        // Declared before the removal, so that its `Drop` (user code) runs after the books.
        let registered = self.flights.registered_key(key);
        let removed = match &registered {
            // A load is in flight: take the shard lock even if the key is absent, so that the
            // load cannot store its value after this remove (see load.rs). If it stored one
            // just now, that is removed too.
            Some(registered) => loop {
                if let Some(removed) = take(key) {
                    break Some(removed);
                }
                let vacant = with_map!(&self.map, m => match m.entry(registered.clone()) {
                    Slot::Vacant(slot) => {
                        self.flights.supersede(slot.key());
                        true
                    }
                    Slot::Occupied(_) => false,
                });
                if vacant {
                    break None;
                }
            },
            None => take(key),
        };
        let (key, entry) = removed?;
        self.forget(held, &key, &entry);
        let cause = self.cause(&entry, RemovalCause::Explicit);
        let live = cause == RemovalCause::Explicit && self.visible(&key, &entry);
        if !self.notifier.is_active() {
            self.count_removal(cause);
            return live.then_some(entry.value);
        }
        let value = live.then(|| entry.value.clone());
        self.retire(self.retired(key, entry, cause));
        value
    }

    /// A compute's removal of `key`, as the leader of `flight`: unless a write superseded
    /// the flight (checked under the shard lock, where writers mark it). Its value if it was
    /// live.
    pub(crate) fn remove_for(&self, key: &K, flight: &Flight<V>) -> Option<V> {
        let held = self.hold_for_removal(key);
        let (key, entry) = self.map.remove_if(key, |key, entry| {
            if flight.is_superseded() {
                return false;
            }
            self.orphan(key, entry);
            true
        })?;
        self.forget(held, &key, &entry);
        let cause = self.cause(&entry, RemovalCause::Explicit);
        let live = cause == RemovalCause::Explicit && self.visible(&key, &entry);
        let value = live.then(|| entry.value.clone());
        self.retire(self.retired(key, entry, cause));
        value
    }

    /// Tell the task that `entry`, being removed under its shard lock, leaves its wheel node
    /// behind (see handoff.rs).
    pub(crate) fn orphan(&self, key: &K, entry: &Entry<V>) {
        if let Some(node) = entry.filed_node() {
            self.handoff
                .orphan(&self.signals, key, || self.map.hash(key), node);
        }
    }

    /// Why `entry` leaves the map, judged at the moment it stopped being live: `Expired` if
    /// its deadline came first (whoever removes it), `Explicit` if `invalidate_all` hid it
    /// first, else `live_cause`.
    pub(crate) fn cause(&self, entry: &Entry<V>, live_cause: RemovalCause) -> RemovalCause {
        self.cause_at(entry, live_cause, || self.clock.now())
    }

    /// [`cause`](Self::cause), with `now` for the clock when it is needed: the expiry task
    /// judges a batch at the time it removes it for.
    pub(crate) fn cause_at(
        &self,
        entry: &Entry<V>,
        live_cause: RemovalCause,
        now: impl FnOnce() -> u64,
    ) -> RemovalCause {
        let deadline = entry.deadline();
        // When `invalidate_all` hid the entry, if it did and we still know when.
        let hidden_at = (entry.generation() != self.generation())
            .then(|| self.invalidations.hidden_at(entry.generation()))
            .flatten();
        match hidden_at {
            Some(at) if deadline != NEVER && deadline <= at => RemovalCause::Expired,
            Some(_) => RemovalCause::Explicit,
            None if deadline != NEVER && deadline <= now() => RemovalCause::Expired,
            None => live_cause,
        }
    }

    fn count_removal(&self, cause: RemovalCause) {
        self.count(
            match cause {
                RemovalCause::Expired => Counter::Expired,
                RemovalCause::Explicit => Counter::Explicit,
                RemovalCause::Replaced => Counter::Replaced,
                RemovalCause::Size => Counter::Size,
            },
            1,
        );
    }

    /// Count and report one entry that left the map (its books are already balanced). Never
    /// called under a lock. The notification's user code catches its own panics; without
    /// one, the key and entry are dropped here, and a panic in a `Drop` reaches the caller.
    pub(crate) fn retire(&self, retired: Retired<K, V>) {
        self.stale_left(&retired.entry);
        self.count_removal(retired.cause);
        match retired.key {
            Some(key) if self.notifier.is_active() => {
                self.notifier
                    .notify(&self.name, key, retired.entry.value, retired.cause)
            }
            key => drop((key, retired.entry)),
        }
    }

    /// Notifications the eviction channel dropped because it was full.
    pub(crate) fn notifications_dropped(&self) -> u64 {
        self.notifier.dropped()
    }

    /// What a removal hands to [`retire`](Self::retire). The key goes along even when nobody
    /// listens, so that it is dropped where the entry is (a `Drop` is user code).
    pub(super) fn retired(&self, key: K, entry: Entry<V>, cause: RemovalCause) -> Retired<K, V> {
        Retired {
            key: Some(key),
            entry,
            cause,
        }
    }

    /// For a removal from a bounded cache: the key's policy shard, held from before the entry
    /// leaves the map until the policy forgets it, and the weight the entry is accounted with
    /// (read now: it hashes the key, user code that must not run between the two).
    fn hold_for_removal<Q>(&self, key: &Q) -> Option<(Held<'_, K, S>, u32)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let capacity = self.capacity.as_ref()?;
        let (shard, _) = capacity.hold(key);
        let weight = capacity.weight_of(&shard, key);
        Some((shard, weight))
    }

    /// The policy forgets an entry a removal took out, with the shard it held since before.
    fn forget(&self, held: Option<(Held<'_, K, S>, u32)>, key: &K, entry: &Entry<V>) {
        if let (Some(capacity), Some((mut shard, weight))) = (&self.capacity, held) {
            capacity.forget(&mut shard, key, entry.in_main(), weight);
        }
    }

    /// The expiry task's step for `node`, fired at `now`, whose key is filed under `hash`, in
    /// a bounded cache (see [`fires_one_by_one`](Self::fires_one_by_one)): the key is found
    /// by its node and copied (the policy needs it), then stepped as [`fire_key`] says.
    ///
    /// [`fire_key`]: Self::fire_key
    pub(crate) fn fire(
        &self,
        hash: u64,
        node: NodeId,
        now: u64,
        lag: &mut LagBatch,
    ) -> Fired<K, V> {
        match self.map.key_of(hash, node) {
            Some(key) => self.fire_key(&key, node, now, lag),
            None => Fired::Orphaned,
        }
    }

    /// The expiry task's step for `node`, fired for `key` at `now`: under the key's shard
    /// lock, the entry is removed if it still holds the node and is no longer live, or its
    /// node is re-filed or dropped. User code (the key's `Hash`, `Eq` and `Clone`) runs only
    /// before anything changes: a panic leaves the entry and the node as they were.
    fn fire_key(&self, key: &K, node: NodeId, now: u64, lag: &mut LagBatch) -> Fired<K, V> {
        let held = self.hold_for_removal(key);
        let generation = self.generation();
        let mut fired = Fired::Orphaned;
        // A bounded cache that keeps stale copies queues each new one for eviction first:
        // the key's copy (user code) is made before anything changes.
        let stale_key = (held.is_some() && self.stale_window() > 0).then(|| key.clone());
        let mut newly_stale = false;
        let removed = self.map.remove_if_mut(key, |k, entry, stamp| {
            let (remove, step, newly) = self.step(k, entry, stamp, node, now, generation);
            (fired, newly_stale) = (step, newly);
            remove
        });
        let Some((key, entry)) = removed else {
            if let (true, Some(capacity), Some((mut shard, _)), Some(stale_key)) =
                (newly_stale, &self.capacity, held, stale_key)
            {
                let evict = |key: &K| self.evict(key);
                let room = super::capacity::Room {
                    map: &self.map,
                    evict: &evict,
                };
                capacity.mark_stale(&mut shard, room, stale_key);
            }
            return fired;
        };
        self.forget(held, &key, &entry);
        Fired::Removed(self.fired_out(key, entry, now, lag))
    }

    /// Whether fired nodes go one at a time ([`fire`](Self::fire)): a bounded cache's do.
    pub(crate) fn fires_one_by_one(&self) -> bool {
        self.capacity.is_some()
    }

    /// [`fire`](Self::fire) for many nodes at once (`items`: the hash each node's key is
    /// filed under, and the node), for a cache without a capacity bound (a bound takes each
    /// key's policy shard before its map shard, so those go one at a time). Each entry is
    /// found by its node, the nodes of one map shard under one lock (see
    /// [`Map::remove_grouped`](super::entry::Map::remove_grouped)): no key's `Hash` or `Eq`
    /// runs. `fired[i]` is the step for `items[i]`, or `None` if it panicked (a key's
    /// `Clone` for a reload: nothing changed for it).
    pub(crate) fn fire_all(
        &self,
        items: &[(u64, NodeId)],
        now: u64,
        lag: &mut LagBatch,
        fired: &mut Vec<Option<Fired<K, V>>>,
    ) {
        debug_assert!(
            self.capacity.is_none(),
            "a bounded cache fires one key at a time"
        );
        let generation = self.generation();
        fired.clear();
        fired.resize_with(items.len(), || Some(Fired::Orphaned));
        let (mut removed, mut panicked) = (Vec::with_capacity(items.len()), Vec::new());
        self.map.remove_grouped(
            items,
            |i, entry| self.leaves(entry, items[i].1, now, generation),
            |i, key, entry, stamp| {
                let (remove, step, _) = self.step(key, entry, stamp, items[i].1, now, generation);
                fired[i] = Some(step);
                remove
            },
            &mut removed,
            &mut panicked,
        );
        for i in panicked {
            fired[i] = None;
        }
        for (i, key, entry) in removed {
            fired[i] = Some(Fired::Removed(self.fired_out(key, entry, now, lag)));
        }
    }

    /// Whether a fired `node` takes its entry out of the map (on a shared look, changing
    /// nothing): the entry holds the node, and `invalidate_all` hid it (a pending predicate
    /// is the sweep's), or it expired and is not kept as a stale copy (see `stale.rs`).
    /// [`step`](Self::step) removes exactly these.
    fn leaves(&self, entry: &Entry<V>, node: NodeId, now: u64, generation: u32) -> bool {
        if entry.node != node {
            return false;
        }
        let e = entry.generation();
        if e != generation && self.invalidations.hidden(e) {
            return true;
        }
        !entry.is_live(e, || now) && !self.keeps_stale(entry, now)
    }

    /// What a fired `node` does to `key`'s entry, under the entry's shard lock: whether to
    /// remove it (then it is left as it was), else what becomes of the node (the entry may
    /// change: a stale copy kept, a node dropped, a reload started, once the key is copied
    /// for it), and whether the entry just became a stale copy.
    fn step(
        &self,
        key: &K,
        entry: &mut Entry<V>,
        stamp: Option<&Stamp>,
        node: NodeId,
        now: u64,
        generation: u32,
    ) -> (bool, Fired<K, V>, bool) {
        if entry.node != node {
            return (false, Fired::Orphaned, false);
        }
        if self.leaves(entry, node, now, generation) {
            return (true, Fired::Orphaned, false);
        }
        if !entry.is_live(entry.generation(), || now) {
            // Kept as a stale copy (`leaves` said so).
            return match self.keep_stale(entry, now) {
                Some((until, newly)) => (false, Fired::Refile(self.clock.tick_of(until)), newly),
                None => (true, Fired::Orphaned, false),
            };
        }
        let deadline = entry.deadline();
        // A cache that refreshes: the check may start a reload (see `refresh.rs`).
        let (reload, wake) = match stamp {
            None => (None, deadline),
            Some(stamp) => {
                let reload = match self.check(key, stamp, deadline, now) {
                    Check::Reload(key) => Some(key),
                    Check::Wait => None,
                };
                (reload, deadline.min(stamp.due()))
            }
        };
        let tick = match wake {
            NEVER => {
                entry.node = UNFILED;
                None
            }
            wake => Some(self.clock.tick_of(wake)),
        };
        let step = match (reload, tick) {
            (Some(key), tick) => Fired::Reload(tick, key),
            (None, None) => Fired::Unfiled,
            (None, Some(tick)) => Fired::Refile(tick),
        };
        (false, step, false)
    }

    /// An entry a fired node took out of the map: its cause judged at `now` (no clock read
    /// per entry), its lag gathered, ready to report.
    fn fired_out(&self, key: K, entry: Entry<V>, now: u64, lag: &mut LagBatch) -> Retired<K, V> {
        let cause = self.cause_at(&entry, RemovalCause::Explicit, || now);
        if cause == RemovalCause::Expired {
            // Due at its deadline, or a stale copy at the end of its window.
            let due = match entry.is_stale() {
                true => entry.deadline().saturating_add(self.stale_window()),
                false => entry.deadline(),
            };
            lag.record(now.saturating_sub(due));
        }
        self.retired(key, entry, cause)
    }

    /// A sweep's step for `key`, whose entry may be older than the current generation:
    /// removed if an `invalidate_all` hid it or a pending predicate matches it (asked on
    /// copies, with no lock held), else restamped with the generation it was checked
    /// through (see `invalidate.rs`). What left, to report. Its node, queued or linked, goes
    /// back through the hand-off like a writer's.
    pub(crate) fn sweep_one(&self, key: &K) -> Option<Retired<K, V>> {
        let generation = self.generation();
        // What the entry is, and copies for the predicates.
        let look = self.map.view(key, |k, entry| {
            let e = entry.generation();
            if e == generation {
                return None;
            }
            Some(match self.invalidations.seen(e) {
                Seen::Hidden => (e, None, true, 0),
                Seen::Visible { through } => (e, None, false, through),
                Seen::Ask {
                    predicates,
                    through,
                } => (
                    e,
                    Some((k.clone(), entry.value.clone(), predicates)),
                    false,
                    through,
                ),
            })
        });
        let (e, ask, hidden, through) = look.flatten()?;
        let out = match &ask {
            Some((key, value, predicates)) => predicates.matches(key, value),
            None => hidden,
        };
        if out {
            return self.sweep_out(key, e);
        }
        with_map!(&self.map, m => {
            if let Some(mut stored) = m.get_mut(key) {
                if stored.entry().generation() == e {
                    stored.entry_mut().set_generation(through);
                }
            }
        });
        None
    }

    /// Remove `key`'s entry if it is still the one of generation `e` a sweep judged.
    fn sweep_out(&self, key: &K, e: u32) -> Option<Retired<K, V>> {
        let held = self.hold_for_removal(key);
        let (key, entry) = self.map.remove_if(key, |key, entry| {
            let same = entry.generation() == e;
            if same {
                self.orphan(key, entry);
            }
            same
        })?;
        self.forget(held, &key, &entry);
        let cause = self.cause(&entry, RemovalCause::Explicit);
        Some(self.retired(key, entry, cause))
    }

    /// An entry an overwrite replaced, judged `Replaced` under the shard lock: `Explicit`
    /// instead if a pending `invalidate_entries_if` predicate matches it (asked now, with no
    /// lock held; only when its key came out with it, that is when someone listens).
    pub(super) fn judge_replaced(&self, mut retired: Retired<K, V>) -> Retired<K, V> {
        if retired.cause == RemovalCause::Replaced
            && retired.entry.generation() != self.generation()
        {
            if let Some(key) = &retired.key {
                if !self.visible(key, &retired.entry) {
                    retired.cause = RemovalCause::Explicit;
                }
            }
        }
        retired
    }

    /// Whether `entry`, out of the map with its `key`, was visible as far as invalidations go.
    fn visible(&self, key: &K, entry: &Entry<V>) -> bool {
        if entry.generation() == self.generation() {
            return true;
        }
        match self.invalidations.seen(entry.generation()) {
            Seen::Visible { .. } => true,
            Seen::Hidden => false,
            Seen::Ask { predicates, .. } => !predicates.matches(key, &entry.value),
        }
    }

    /// [`retire`](Self::retire) each; a panic in one value's `Drop` does not keep the others
    /// from being counted and reported: the first panic goes on to the caller after them.
    pub(super) fn retire_all(&self, retired: impl IntoIterator<Item = Retired<K, V>>) {
        let mut first_panic = None;
        for r in retired {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.retire(r))) {
                first_panic.get_or_insert(panic);
            }
        }
        if let Some(panic) = first_panic {
            resume_unwind(panic);
        }
    }

    /// Make every entry written so far invisible, at once; the task sweeps them later.
    pub(crate) fn invalidate_all(&self) {
        self.begin(Begin::All {
            now: self.clock.now(),
        });
    }

    /// From now on, hide every entry written so far that `predicate` matches; the task
    /// sweeps them later (see `invalidate.rs`).
    pub(crate) fn invalidate_if(&self, predicate: Predicate<K, V>) {
        self.begin(Begin::Matching(predicate));
    }

    /// Begin a generation, and wake the task to sweep.
    ///
    /// Entries keep their generation modulo 2^29, so a new generation must never come round to
    /// one an entry still in the map has: that entry would be live again. The task's sweeps
    /// keep the map far from that; if they have not (no task has swept for 2^29 - 1
    /// generations: its runtime shut down), this call sweeps the map itself first.
    fn begin(&self, mut begin: Begin<K, V>) {
        loop {
            match self.invalidations.begin(begin) {
                Ok(()) => break,
                Err(back) => {
                    begin = back;
                    self.sweep_all();
                }
            }
        }
        self.signals.notify.wake();
    }

    /// The current generation's full number, for a sweep to say which generation it reached.
    pub(crate) fn generation_count(&self) -> u64 {
        self.invalidations.count()
    }

    /// Whether an invalidation left entries that no sweep has checked yet.
    pub(crate) fn has_unswept(&self) -> bool {
        self.invalidations.has_unswept()
    }

    /// A complete sweep that began at generation `count` checked every older entry.
    pub(crate) fn swept_to(&self, count: u64) {
        self.invalidations.swept_to(count);
    }

    /// Sweep, on the calling thread, every entry older than the current generation.
    fn sweep_all(&self) {
        let count = self.generation_count();
        let generation = self.generation();
        let (keys, failed) = self.map.older_keys(generation);
        for key in keys {
            if let Some(retired) = self.sweep_one(&key) {
                self.retire(retired);
            }
        }
        if failed > 0 {
            // Keys whose `Clone` panicked stay in the map: if hidden, their deadline goes to
            // the past, so that no generation can make them readable again.
            self.map.expire_where(|e| {
                e.generation() != generation && self.invalidations.hidden(e.generation())
            });
        }
        self.swept_to(count);
    }
}
