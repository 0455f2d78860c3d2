//! Removals: by a caller (`remove`), by the expiry task (a fired node, a sweep), by
//! `invalidate_all` itself when generations would wrap; how a removal's cause is judged; and
//! the one place every removal is counted and reported.
//!
//! Invariants:
//! - **Reported once.** Every entry that leaves the map is counted and reported exactly once,
//!   by the path that took it out, after the shard lock is released ([`Store::retire`]).
//! - **Books first.** A removal from a bounded cache holds the key's policy shard from before
//!   the entry leaves the map until the policy forgets it; the weight is read before the
//!   removal, so no user code runs between the two.
//! - **The task's steps run no user code after their first change**: a panic in a key's
//!   `Hash` or `Eq` leaves the entry and its node as they were.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;

use dashmap::Entry as Slot;

use super::capacity::Held;
use super::entry::{with_map, Entry, Fired, Retired, GENERATION_MASK};
use super::handoff::UNFILED;
use super::{Store, INVALIDATIONS};
use crate::listener::RemovalCause;
use crate::stats::Counter;
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
        let live = cause == RemovalCause::Explicit && entry.generation() == self.generation();
        if !self.notifier.is_active() {
            self.count_removal(cause);
            return live.then_some(entry.value);
        }
        let value = live.then(|| entry.value.clone());
        self.retire(self.retired(key, entry, cause));
        value
    }

    /// Tell the task that `entry`, being removed under its shard lock, leaves its wheel node
    /// behind (see handoff.rs).
    pub(crate) fn orphan(&self, key: &K, entry: &Entry<V>) {
        if let Some(node) = entry.filed_node() {
            self.handoff.orphan(&self.signals, key, node);
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
        let generation = self.generation();
        // When `invalidate_all` hid the entry, if it did and we still know when.
        let hidden_at = (entry.generation() != generation).then(|| {
            let hider = entry.generation().wrapping_add(1) & GENERATION_MASK;
            if generation.wrapping_sub(hider) & GENERATION_MASK < INVALIDATIONS as u32 {
                self.invalidated_at[hider as usize % INVALIDATIONS].load(Ordering::Acquire)
            } else {
                0
            }
        });
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

    /// The expiry task's step for `node`, fired for `key` at `now`: under the key's shard
    /// lock, the entry is removed if it still holds the node and is no longer live, or its
    /// node is re-filed or dropped. User code (the key's `Hash` and `Eq`) runs only before
    /// anything changes: a panic leaves the entry and the node as they were.
    pub(crate) fn fire(&self, key: &K, node: NodeId, now: u64) -> Fired<K, V> {
        let held = self.hold_for_removal(key);
        let generation = self.generation();
        let mut fired = Fired::Stale;
        let removed = self.map.remove_if_mut(key, |_, entry| {
            if entry.node != node {
                return false;
            }
            if !entry.is_live(generation, || now) {
                return true;
            }
            fired = match entry.deadline() {
                NEVER => {
                    entry.node = UNFILED;
                    Fired::Unfiled
                }
                deadline => Fired::Refile(self.clock.tick_of(deadline)),
            };
            false
        });
        let Some((key, entry)) = removed else {
            return fired;
        };
        self.forget(held, &key, &entry);
        // Judged at `now`, the time it was removed for: no clock read per entry.
        let cause = self.cause_at(&entry, RemovalCause::Explicit, || now);
        if cause == RemovalCause::Expired {
            self.lag.record(now.saturating_sub(entry.deadline()));
        }
        Fired::Removed(self.retired(key, entry, cause))
    }

    /// A sweep's step: remove `key`'s entry if `invalidate_all` hid it; what left, to report.
    /// Its node, queued or linked, goes back through the hand-off like a writer's.
    pub(crate) fn sweep_one(&self, key: &K) -> Option<Retired<K, V>> {
        let held = self.hold_for_removal(key);
        let generation = self.generation();
        let (key, entry) = self.map.remove_if(key, |key, entry| {
            let stale = entry.generation() != generation;
            if stale {
                self.orphan(key, entry);
            }
            stale
        })?;
        self.forget(held, &key, &entry);
        let cause = self.cause(&entry, RemovalCause::Explicit);
        Some(self.retired(key, entry, cause))
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
    ///
    /// Entries keep their generation modulo 2^29, so the generation must never come round to
    /// one an entry still in the map has: that entry would be live again. The task's sweeps
    /// keep the map far from that; if they have not (no task has swept for 2^29 - 1 calls: its
    /// runtime shut down), this call sweeps the map itself first, once in 2^29 calls.
    pub(crate) fn invalidate_all(&self) {
        let mut current = self.generation.load(Ordering::Acquire);
        loop {
            if current + 1 - self.swept.load(Ordering::Acquire) > u64::from(GENERATION_MASK) {
                self.sweep_all();
            }
            let next = (current + 1) & u64::from(GENERATION_MASK);
            self.invalidated_at[next as usize % INVALIDATIONS]
                .store(self.clock.now(), Ordering::Release);
            // One step at a time: two calls at the wrap boundary cannot both skip the sweep.
            match self.generation.compare_exchange(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        self.signals.notify.wake();
    }

    /// The full generation count, for a sweep to say which generation it reached.
    pub(crate) fn generation_count(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether `invalidate_all` hid entries that no sweep has removed yet.
    pub(crate) fn has_unswept(&self) -> bool {
        self.generation_count() > self.swept.load(Ordering::Acquire)
    }

    /// Every entry written before generation `count` has been swept.
    pub(crate) fn swept_to(&self, count: u64) {
        self.swept.fetch_max(count, Ordering::AcqRel);
    }

    /// Sweep, on the calling thread, every entry `invalidate_all` has hidden so far.
    fn sweep_all(&self) {
        let count = self.generation_count();
        let generation = (count & u64::from(GENERATION_MASK)) as u32;
        let (keys, failed) = self.map.stale_keys(generation);
        for key in keys {
            if let Some(retired) = self.sweep_one(&key) {
                self.retire(retired);
            }
        }
        if failed > 0 {
            // Keys whose `Clone` panicked stay in the map: their deadline goes to the past,
            // so that no generation can make them readable again.
            self.map.expire_stale(generation);
        }
        self.swept_to(count);
    }
}
