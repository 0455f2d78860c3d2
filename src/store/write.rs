//! Writes: `insert`, a load's fill, and what every write does after it (the policy's
//! accounting, evictions, and the report of what it replaced).
//!
//! Invariants:
//! - A write takes its key's shard lock once; it hands the task a new or earlier deadline
//!   (see `handoff.rs`) under that lock, and clones what it needs (user code) before it
//!   changes anything.
//! - A bounded write holds its key's policy shard from before it changes the map until the
//!   policy has accounted for it (see `capacity.rs` for the lock order); the weigher runs
//!   before any lock.
//! - Writes win over loads: a writer marks the key's flight superseded under the shard lock,
//!   and a load's fill, under that same lock, stores nothing once superseded.

use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::Duration;

use dashmap::{DashMap, Entry as Slot, SharedValue};

use super::capacity::{Capacity, Evicted, Held, Room, EVICTION_BUDGET};
use super::entry::{with_map, Entry, Removed, Retired, Stored};
use super::flight::Flight;
use super::handoff::{needs_push, UNFILED};
use super::Store;
use crate::expiry::Expiry;
use crate::listener::RemovalCause;
use crate::stats::Counter;
use crate::sync::Arc as SyncArc;
use crate::time::clock::{Cap, NEVER};
use crate::time::wheel::NodeId;

/// A bounded write's policy bookkeeping: its key's policy shard, held from before the write
/// until the policy has accounted for it, and what the policy needs.
struct Admission<'a, K, S> {
    shard: Held<'a, K, S>,
    /// The key's hash by the policy's hasher.
    hash: u64,
    key: K,
    weight: u32,
    /// With a weigher: the weight recorded for the key before this write (see
    /// `Capacity::record`).
    previous: Option<u32>,
}

/// A write done under the map's shard lock: its policy bookkeeping still to do, if any, and
/// the entry it replaced.
struct Written<'a, K, V, S> {
    admission: Option<Admission<'a, K, S>>,
    replaced: Option<Retired<K, V>>,
}

impl<K, V, S> Store<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    /// The effective deadline of an entry written now with `cap`.
    fn effective(&self, cap: Cap) -> u64 {
        let at = cap.at.min(cap.until);
        if self.idle == 0 {
            at
        } else {
            let now = cap.now.unwrap_or_else(|| self.clock.now());
            at.min(now.saturating_add(self.idle))
        }
    }

    /// The cap of a plain write of `value` for `key` now: the cache's default, or with a
    /// per-entry [`Expiry`] what it says, asked with no lock held (`update` if a live entry
    /// was there a moment ago, else `create`).
    #[inline]
    pub(crate) fn write_cap(&self, key: &K, value: &V) -> Cap
    where
        K: 'static,
        V: 'static,
    {
        self.cap_for(key, value, true)
    }

    /// The cap of a load's value for `key`, stored on a miss: the cache's default, or what a
    /// per-entry [`Expiry`] says on create.
    pub(crate) fn load_cap(&self, key: &K, value: &V) -> Cap
    where
        K: 'static,
        V: 'static,
    {
        self.cap_for(key, value, false)
    }

    #[inline]
    fn cap_for(&self, key: &K, value: &V, may_update: bool) -> Cap
    where
        K: 'static,
        V: 'static,
    {
        let cap = self.default_cap();
        match &self.expiry {
            None => cap,
            Some(expiry) => self.expiry_cap(&**expiry, key, value, cap, may_update),
        }
    }

    #[cold]
    fn expiry_cap(
        &self,
        expiry: &dyn Expiry<K, V>,
        key: &K,
        value: &V,
        cap: Cap,
        may_update: bool,
    ) -> Cap
    where
        K: 'static,
        V: 'static,
    {
        let now = cap.now.unwrap_or_else(|| self.clock.now());
        let at = self.clock.instant_at(now);
        let found = if may_update {
            self.left(key, now)
        } else {
            None
        };
        let chosen = match found {
            None => expiry.expire_after_create(key, value, at),
            Some(left) => expiry.expire_after_update(key, value, at, left),
        };
        let until = match (chosen, found) {
            (Some(ttl), _) => self.clock.deadline_after(now, ttl),
            // Keeps the deadline it had.
            (None, Some(Some(left))) => now.saturating_add(left.as_nanos() as u64),
            (None, _) => NEVER,
        };
        Cap {
            at: cap.at,
            now: Some(now),
            until,
        }
    }

    /// The time a live entry for `key` has left at `now` (`Some(None)`: no deadline); `None`
    /// if there is none.
    fn left(&self, key: &K, now: u64) -> Option<Option<Duration>> {
        let generation = self.generation();
        self.map
            .view(key, |_, e| {
                (e.generation() == generation && e.is_live(generation, || now)).then(|| {
                    (e.deadline() != NEVER).then(|| Duration::from_nanos(e.deadline() - now))
                })
            })
            .flatten()
    }

    /// After a read of `key`'s entry, seen with `deadline`, by a cache whose
    /// [`Expiry`] observes reads: ask it (no lock held) and file the deadline it
    /// chooses, up to the entry's cap. A later deadline is set in place (the entry's node
    /// fires early and the task re-files it, as for a time-to-idle read); an earlier one goes
    /// to the task through the hand-off, under the shard's write lock. Nothing changes if the
    /// entry's deadline moved meanwhile, or the policy panics.
    #[cold]
    pub(super) fn after_read(&self, key: &K, value: &V, deadline: u64)
    where
        K: 'static,
        V: 'static,
    {
        let Some(expiry) = &self.expiry else { return };
        let now = self.clock.now();
        let left = (deadline != NEVER).then(|| Duration::from_nanos(deadline.saturating_sub(now)));
        let at = self.clock.instant_at(now);
        let asked = catch_unwind(AssertUnwindSafe(|| {
            expiry.expire_after_read(key, value, at, left)
        }));
        let Ok(Some(ttl)) = asked else { return };
        let wanted = self.clock.deadline_after(now, ttl);
        with_map!(&self.map, m => {
            if wanted > deadline {
                m.view(key, |_, stored| {
                    let wanted = wanted.min(stored.cap());
                    let _ = stored.entry().deadline.compare_exchange(
                        deadline,
                        wanted,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                });
            } else if wanted < deadline {
                if let Some(mut stored) = m.get_mut(key) {
                    if stored.entry().deadline() == deadline {
                        // The key's clone for the hand-off (user code) comes first.
                        let held = stored.entry().node;
                        let due = stored.stamp().map_or(NEVER, |s| s.due());
                        let key = stored.key();
                        let hash = || self.map.hash(key);
                        let node = self.hand_off(key, hash, held, stored.wake(), wanted.min(due));
                        let entry = stored.entry_mut();
                        entry.node = node;
                        entry.deadline.store(wanted, Ordering::Relaxed);
                    }
                }
            }
        });
    }

    /// Store `value` under `key` with the cap `cap`, and report what it replaced.
    #[inline]
    pub(crate) fn insert(&self, key: K, value: V, cap: Cap) {
        let (key, value) = match self.capacity.as_ref().filter(|c| c.unweighted()) {
            Some(capacity) => match self.insert_unweighted(capacity, key, value, cap) {
                Ok(written) => return self.after_write(written.admission, written.replaced),
                Err(back) => {
                    self.fallbacks.fetch_add(1, Ordering::Relaxed);
                    back
                }
            },
            None => (key, value),
        };
        let admission = self.admission(&key, &value);
        let replaced = with_map!(&self.map, m => {
            // Hashed once, for the map's shard and the hand-off's stripe.
            let hash = m.hash_usize(&key) as u64;
            self.write_hashed(m, key, hash, value, cap)
        });
        self.after_write(admission, replaced);
    }

    /// [`write`](Self::write) for `key`, whose hash by the map's hasher is `hash`, under its
    /// shard's write lock taken here: the hand-off's stripe comes from that same hash.
    fn write_hashed<E: Stored<V>>(
        &self,
        m: &DashMap<K, E, S>,
        key: K,
        hash: u64,
        value: V,
        cap: Cap,
    ) -> Option<Retired<K, V>> {
        let rehash = |(k, _): &(K, SharedValue<E>)| m.hasher().hash_one(k);
        let mut table = m.shards()[m.determine_shard(hash as usize)].write();
        // Room first (a resize hashes keys, user code), as the map's own entry does.
        table.reserve(1, rehash);
        let found = table.get_mut(hash, |(k, _)| *k == key);
        self.flights.supersede(&key);
        let generation = self.generation();
        match found {
            Some((stored_key, stored)) => {
                let (new, cause) =
                    self.next_entry(stored_key, || hash, stored.get(), value, cap, generation);
                // The map keeps the caller's key and hands its own back with the old entry
                // (see `write`).
                let old = std::mem::replace(stored.get_mut(), new);
                let key = std::mem::replace(stored_key, key);
                Some(Retired {
                    key: Some(key),
                    entry: old.into_entry(),
                    cause,
                })
            }
            None => {
                let entry = self.new_entry(&key, || hash, value, cap, generation);
                table.insert(hash, (key, SharedValue::new(entry)), rehash);
                None
            }
        }
    }

    /// An insert into a bounded cache whose entries all weigh 1, in one map lookup. An
    /// overwrite changes no policy accounting (the new entry inherits the old one's policy
    /// state under the shard lock), so it needs no policy lock. A new entry does: it is
    /// *tried* under the map's shard lock (see `capacity.rs` for the lock order), and if
    /// another writer holds it, key and value come back for the ordered path.
    fn insert_unweighted<'a>(
        &'a self,
        capacity: &'a Capacity<K, V, S>,
        key: K,
        value: V,
        cap: Cap,
    ) -> Result<Written<'a, K, V, S>, (K, V)> {
        with_map!(&self.map, m => {
            let (slot, admission) = match m.entry(key) {
                Slot::Vacant(vacant) => match capacity.try_hold(vacant.key()) {
                    Some((shard, hash)) => {
                        let key = vacant.key().clone();
                        let admission = Admission {
                            shard,
                            hash,
                            key,
                            weight: 1,
                            previous: None,
                        };
                        (Slot::Vacant(vacant), Some(admission))
                    }
                    None => return Err((vacant.into_key(), value)),
                },
                occupied => (occupied, None),
            };
            self.flights.supersede(slot.key());
            let replaced = self.write(slot, value, cap, self.generation());
            Ok(Written { admission, replaced })
        })
    }

    /// For a bounded cache: the key's policy shard, held from before the write until it is
    /// accounted for (see `capacity.rs`), the key for the policy's queue, and the weight of
    /// the value about to be written, taken before the map's shard lock (the weigher is user
    /// code).
    fn admission(&self, key: &K, value: &V) -> Option<Admission<'_, K, S>> {
        let capacity = self.capacity.as_ref()?;
        let weight = capacity.weigh(key, value);
        let (mut shard, hash) = capacity.hold(key);
        let key = key.clone();
        let previous = capacity.record(&mut shard, &key, weight);
        Some(Admission {
            shard,
            hash,
            key,
            weight,
            previous,
        })
    }

    /// After a write, with no map lock held: account for it in the policy (evicting for room,
    /// within [`EVICTION_BUDGET`]), release the policy shard, pay what debt the budget still
    /// allows (a weighted cache), then report what the write replaced and what was evicted.
    fn after_write(&self, admission: Option<Admission<'_, K, S>>, replaced: Option<Retired<K, V>>) {
        let evict = |key: &K| self.evict(key);
        let room = Room {
            map: &self.map,
            evict: &evict,
        };
        let mut budget = EVICTION_BUDGET;
        let mut evicted = match (&self.capacity, admission) {
            (
                Some(capacity),
                Some(Admission {
                    mut shard,
                    hash,
                    key,
                    weight,
                    previous,
                }),
            ) => match &replaced {
                None => capacity.admit(&mut shard, room, key, hash, weight, &mut budget),
                // The replaced entry was resident: its weight is the one recorded before.
                Some(old) => match previous.unwrap_or(weight) {
                    // Same weight: nothing to account for.
                    same if same == weight => Evicted::None,
                    old_weight => capacity.reweigh(
                        &mut shard,
                        room,
                        &key,
                        hash,
                        old.entry.in_main(),
                        old_weight,
                        weight,
                        &mut budget,
                    ),
                },
            },
            _ => Evicted::None,
        };
        if let Some(capacity) = self.capacity.as_ref().filter(|c| c.over()) {
            evicted.extend(capacity.pay(room, &mut budget));
            if capacity.over() {
                // The task pays the rest (see `Task::pay`).
                self.signals.notify.wake();
            }
        }
        let evicted = evicted.into_iter().map(|(key, entry)| {
            let cause = self.cause(&entry, RemovalCause::Size);
            self.retired(key, entry, cause)
        });
        let replaced = replaced.map(|r| self.judge_replaced(r));
        self.retire_all(replaced.into_iter().chain(evicted));
    }

    /// Pay a weighted cache's debt, at most [`EVICTION_BUDGET`] evictions, and report them;
    /// whether anything was evicted. The expiry task's step, repeated (yielding between)
    /// while the cache is over its capacity.
    pub(crate) fn pay(&self) -> bool {
        let Some(capacity) = self.capacity.as_ref().filter(|c| c.over()) else {
            return false;
        };
        let evict = |key: &K| self.evict(key);
        let room = Room {
            map: &self.map,
            evict: &evict,
        };
        let mut budget = EVICTION_BUDGET;
        let evicted = capacity.pay(room, &mut budget);
        let paid = budget < EVICTION_BUDGET;
        self.retire_all(evicted.into_iter().map(|(key, entry)| {
            let cause = self.cause(&entry, RemovalCause::Size);
            self.retired(key, entry, cause)
        }));
        paid
    }

    /// Whether a weighted cache holds more than its capacity (see `capacity.rs`).
    pub(crate) fn over_capacity(&self) -> bool {
        self.capacity.as_ref().is_some_and(Capacity::over)
    }

    /// Take `key`'s entry out of the map for room (the policy accounts for it); its wheel
    /// node goes back through the hand-off.
    pub(super) fn evict(&self, key: &K) -> Option<Removed<K, V>> {
        self.map.remove_if(key, |key, entry| {
            self.orphan(key, entry);
            true
        })
    }

    /// Store the value a load produced, unless a write or `invalidate_all` landed while it
    /// loaded (see `load.rs`), or `cap` is `None` (a zero TTL: returned, not stored); whether
    /// it was stored.
    pub(crate) fn finish_load(
        &self,
        key: K,
        flight: &SyncArc<Flight<V>>,
        value: V,
        cap: Option<Cap>,
        generation: u64,
    ) -> bool {
        let admission = self.admission(&key, &value);
        let written = with_map!(&self.map, m => {
            let slot = m.entry(key);
            // Unregistered under the shard lock: a writer either marked the flight before
            // this point, or finds no flight and writes after us.
            self.flights.unregister(slot.key(), flight);
            match cap {
                // Written now: a predicate given since the load began does not apply to it.
                Some(cap) if !flight.is_superseded() && !self.invalidations.all_after(generation) => {
                    Some(self.write(slot, value, cap, self.generation()))
                }
                _ => None,
            }
        });
        let stored = written.is_some();
        match (written, &self.capacity, admission) {
            (Some(replaced), _, admission) => self.after_write(admission, replaced),
            (None, Some(capacity), Some(mut admission)) => {
                capacity.unrecord(&mut admission.shard, &admission.key, admission.previous);
            }
            (None, ..) => {}
        }
        stored
    }

    /// Write an entry into `slot`, held under its shard lock, telling the task about a new or
    /// earlier deadline. Returns the entry it replaced.
    fn write<E: Stored<V>>(
        &self,
        slot: Slot<'_, K, E>,
        value: V,
        cap: Cap,
        generation: u32,
    ) -> Option<Retired<K, V>> {
        match slot {
            Slot::Vacant(slot) => {
                let key = slot.key();
                let entry = self.new_entry(key, || self.map.hash(key), value, cap, generation);
                slot.insert(entry);
                None
            }
            Slot::Occupied(slot) => {
                let key = slot.key();
                let hash = || self.map.hash(key);
                let (new, cause) = self.next_entry(key, hash, slot.get(), value, cap, generation);
                // The map keeps the caller's key and hands back its own with the old entry,
                // so no key is cloned or dropped here: both go with the report, after the
                // policy has accounted for the write.
                let (key, old) = slot.replace_entry(new);
                Some(Retired {
                    key: Some(key),
                    entry: old.into_entry(),
                    cause,
                })
            }
        }
    }

    /// A write's effective deadline, refresh state and the tick its node is due.
    fn deadlines<E: Stored<V>>(&self, cap: Cap) -> (u64, super::entry::Fresh, u64) {
        let deadline = self.effective(cap);
        // A cache that refreshes files the node at the first refresh check, if earlier.
        let fresh = if E::REFRESH {
            self.fresh(cap.at.min(cap.until), cap.now)
        } else {
            super::entry::Fresh::NONE
        };
        (deadline, fresh, deadline.min(fresh.at))
    }

    /// The entry a write stores for `key` (hashed by `hash`, if the hand-off needs it),
    /// which has none: its node is handed to the task.
    fn new_entry<E: Stored<V>>(
        &self,
        key: &K,
        hash: impl FnOnce() -> u64,
        value: V,
        cap: Cap,
        generation: u32,
    ) -> E {
        let (deadline, fresh, wake) = self.deadlines::<E>(cap);
        let node = self.hand_off(key, hash, UNFILED, NEVER, wake);
        self.count(Counter::Insert, 1);
        E::with_refresh(
            Entry::new(value, deadline, node, generation, 0),
            Self::bound::<E>(cap, deadline),
            fresh,
        )
    }

    /// The entry a write stores over `old`, `key`'s (hashed by `hash`, if the hand-off
    /// needs it), and why `old` leaves.
    fn next_entry<E: Stored<V>>(
        &self,
        key: &K,
        hash: impl FnOnce() -> u64,
        old: &E,
        value: V,
        cap: Cap,
        generation: u32,
    ) -> (E, RemovalCause) {
        let (deadline, fresh, wake) = self.deadlines::<E>(cap);
        let node = self.hand_off(key, hash, old.entry().node, old.wake(), wake);
        let old = old.entry();
        // Judging the cause needs the time (the write's own, if it read the clock): only
        // when someone counts or listens.
        let cause = if self.counters.is_some() || self.notifier.is_active() {
            let now = || cap.now.unwrap_or_else(|| self.clock.now());
            self.cause_at(old, RemovalCause::Replaced, now)
        } else {
            RemovalCause::Replaced
        };
        self.count(
            if cause == RemovalCause::Replaced {
                Counter::Update
            } else {
                Counter::Insert
            },
            1,
        );
        let new = Entry::new(value, deadline, node, generation, old.policy_bits());
        let new = E::with_refresh(new, Self::bound::<E>(cap, deadline), fresh);
        (new, cause)
    }

    /// The expiry task's takeover of `key`: an entry with a deadline whose node no running
    /// wheel knows (`UNFILED`, or an id from before `base`, handed out for a task that is
    /// gone) is handed to the task as a writer would hand it, under its shard lock.
    pub(crate) fn refile(&self, key: &K, base: NodeId) {
        with_map!(&self.map, m => {
            if let Some(mut stored) = m.get_mut(key) {
                let (deadline, node) = (stored.wake(), stored.entry().node);
                if deadline != NEVER && (node == UNFILED || node < base) {
                    // The key's hash and clone (user code) come before the two writes.
                    let key = stored.key();
                    let hash = self.map.hash(key);
                    let due = self.clock.tick_of(deadline);
                    let node =
                        self.handoff
                            .push(&self.signals, || key.clone(), hash, UNFILED, due);
                    stored.entry_mut().node = node;
                }
            }
        })
    }

    /// The latest an entry written now with `cap` and `deadline` may live: the TTL's deadline
    /// where readers may move the deadline (`E::IDLE`), else the deadline itself (an
    /// [`Expiry`] that does not observe reads may set one before the TTL's).
    #[inline]
    fn bound<E: Stored<V>>(cap: Cap, deadline: u64) -> u64 {
        if E::IDLE {
            cap.at
        } else {
            deadline
        }
    }

    /// The node of `key`'s entry, under its shard lock, as it goes from the deadline `old`
    /// with the node `held` to `deadline`: a node queued for the task if it needs one (see
    /// [`needs_push`]). The deadline's tick (a division) is worked out only then: most
    /// overwrites move a deadline later and need nothing.
    #[inline]
    pub(super) fn hand_off(
        &self,
        key: &K,
        hash: impl FnOnce() -> u64,
        held: NodeId,
        old: u64,
        deadline: u64,
    ) -> NodeId {
        if needs_push(held, old, deadline) {
            let due = self.clock.tick_of(deadline);
            // Hashed (user code) before the stripe changes; the key is copied (user code) only
            // for a record, before the stripe changes too.
            let hash = hash();
            self.handoff
                .push(&self.signals, || key.clone(), hash, held, due)
        } else {
            held
        }
    }
}
