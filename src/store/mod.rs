//! The store: the entry layout and every operation the handles perform on it, each in one
//! shard lock, plus the reporting of what those operations removed.
//!
//! An [`Entry`] holds the value, its deadline, the `invalidate_all` generation it was written
//! in, and its [`timer`](Entry::timer) state. Deadlines are nanoseconds since the cache's
//! epoch ([`NEVER`] when there is none).
//!
//! The map ([`Map`]) holds bare entries (16 bytes plus the value) unless the cache has a
//! time-to-idle: then each entry has its *cap* beside it ([`Capped`], 8 bytes more). Each
//! operation picks the map's kind once; everything outside this module sees an [`Entry`].
//!
//! Invariants:
//! - An entry is *live* when its generation is the cache's current one and its deadline is in
//!   the future. Reads return live entries only, whatever the task has or has not done yet;
//!   they read the clock only for an entry that has a deadline.
//! - `deadline` is the effective deadline. The cap is the TTL's deadline (or [`NEVER`]).
//!   Without a time-to-idle the deadline *is* the cap and never moves (so it is not stored
//!   twice). With one, the deadline is the earlier of the cap and the last access plus the
//!   idle time. Writers set both under the shard lock; readers may only move `deadline`
//!   later, up to the cap, with `fetch_max`, and only when it moves by more than the
//!   tolerance (so a hot entry is not written on every read).
//! - `timer` says where the entry's deadline is known to the task:
//!   - [`UNFILED`]: nowhere; the entry has no deadline, or the task dropped its node.
//!   - a wheel node id, which the writer took when it queued a hand-off record for the key
//!     (see `handoff.rs`): the node is queued there or linked in the wheel, at a tick no later
//!     than `deadline`'s. A later deadline needs nothing (the node fires early and the task
//!     re-files it); a first or an earlier one goes through the hand-off, which lowers the
//!     queued tick or queues a new node and orphans the linked one.
//! - Every entry that leaves the map is reported exactly once, by the code path that took it
//!   out, after the shard lock is released ([`Store::retire`]).

pub(crate) mod capacity;
pub(crate) mod entry;
pub(crate) mod flight;
pub(crate) mod handoff;

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;
use std::time::Duration;

use dashmap::{DashMap, Entry as Slot};
use tokio_util::sync::DropGuard;

use crate::listener::{Notifier, RemovalCause};
use crate::stats::{Counter, Counters, Lag};
use crate::store::handoff::{needs_push, Handoff, Signals};
use crate::sync::Arc as SyncArc;
use crate::time::clock::{Clock, Stamp, NEVER};
use crate::time::jitter;
use crate::time::wheel::TimerId;
use capacity::{Capacity, Evicted, Held, Room, Weigher};
use entry::{with_map, Entry, Map, Removed, Stored, GENERATION_MASK};
use flight::{Flight, Flights};

pub(crate) use crate::store::handoff::UNFILED;

/// A bounded write's policy bookkeeping: its key's policy shard (held), the key's hash, the
/// key, the weight.
type Admission<'a, K, S> = (Held<'a, K, S>, u64, K, u32);

/// A write done: its policy bookkeeping still to do (if any), and what it replaced.
type Written<'a, K, V, S> = (Option<Admission<'a, K, S>>, Option<Retired<K, V>>);

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
    Stale,
    /// The entry expired (or was invalidated) and is out of the map: the node is free, and
    /// this is to be reported.
    Removed(Retired<K, V>),
    /// The entry has no deadline any more: the node is free.
    Unfiled,
    /// The entry's deadline moved later: re-file the node at this tick.
    Refile(u64),
}

/// What the store needs to know beyond the map.
pub(crate) struct Settings<K, V> {
    pub(crate) name: Arc<str>,
    pub(crate) clock: Clock,
    /// Time-to-idle in nanoseconds; 0 for none.
    pub(crate) idle: u64,
    pub(crate) counters: Option<Counters>,
    pub(crate) notifier: Notifier<K, V>,
    /// `max_capacity` and the weigher, for a bounded cache.
    pub(crate) capacity: Option<(u64, Option<Weigher<K, V>>)>,
    /// The default TTL, and the jitter that spreads it.
    pub(crate) time_to_live: Option<Duration>,
    pub(crate) jitter: f64,
    /// Cancels the expiry task when the store goes, with the last handle.
    pub(crate) stop: DropGuard,
}

/// The map, the hand-off to the task, the loads in flight, the clock and the
/// `invalidate_all` generation.
pub(crate) struct Store<K, V, S> {
    pub(crate) map: Map<K, V, S>,
    pub(crate) handoff: Handoff<K, S>,
    pub(crate) flights: Flights<K, V, S>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) clock: Clock,
    pub(crate) name: Arc<str>,
    pub(crate) lag: Lag,
    idle: u64,
    /// A read moves an idle deadline only by more than this.
    idle_tolerance: u64,
    counters: Option<Counters>,
    notifier: Notifier<K, V>,
    capacity: Option<Capacity<K, V, S>>,
    time_to_live: Option<Duration>,
    jitter: f64,
    /// Cancels the expiry task when the last handle drops the store.
    _stop: DropGuard,
    /// `invalidate_all` calls so far; entries keep it modulo 2^29 ([`GENERATION_MASK`]).
    generation: AtomicU64,
    /// The generation the last complete sweep reached: every entry in the map was written
    /// in it or later. `invalidate_all` sweeps by itself before its generation could come
    /// round to one an unswept entry still has (see [`Store::invalidate_all`]).
    swept: AtomicU64,
    /// When each of the last few generations began (`invalidate_all`), by generation modulo
    /// [`INVALIDATIONS`]: tells an entry that expired before it was hidden from one hidden
    /// while live.
    invalidated_at: [AtomicU64; INVALIDATIONS],
    /// Inserts that found their new key's policy shard busy (test-only visibility).
    #[cfg(test)]
    fallbacks: std::sync::atomic::AtomicUsize,
}

impl<K, V, S> Store<K, V, S> {
    /// The default TTL.
    pub(crate) fn time_to_live(&self) -> Option<Duration> {
        self.time_to_live
    }
}

/// How many `invalidate_all` times [`Store`] remembers.
const INVALIDATIONS: usize = 16;

impl<K, V, S> Store<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    pub(crate) fn new(
        settings: Settings<K, V>,
        capacity: usize,
        shards: usize,
        hasher: S,
        signals: Arc<Signals>,
    ) -> Self {
        let clock = settings.clock;
        Store {
            map: Map::new(settings.idle != 0, capacity, hasher.clone(), shards),
            handoff: Handoff::new(shards, hasher.clone()),
            flights: Flights::new(shards, hasher.clone()),
            capacity: settings
                .capacity
                .map(|(max, weigher)| Capacity::new(max, shards, hasher, weigher)),
            signals,
            clock,
            name: settings.name,
            lag: Lag::default(),
            idle: settings.idle,
            idle_tolerance: (clock.tick_nanos() / 16).min(settings.idle / 16),
            counters: settings.counters,
            notifier: settings.notifier,
            time_to_live: settings.time_to_live,
            jitter: settings.jitter,
            _stop: settings.stop,
            generation: AtomicU64::new(0),
            swept: AtomicU64::new(0),
            invalidated_at: std::array::from_fn(|_| AtomicU64::new(0)),
            #[cfg(test)]
            fallbacks: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The deadline of a write with the default TTL (jittered), now.
    #[inline]
    pub(crate) fn default_deadline(&self) -> Stamp {
        match self.time_to_live {
            None => Stamp::NEVER,
            Some(ttl) => self.clock.stamp(jitter::spread(ttl, self.jitter)),
        }
    }

    /// The deadline of a write with its own `ttl`, now; `None` for zero (nothing is stored).
    pub(crate) fn deadline_for_ttl(&self, ttl: Duration) -> Option<Stamp> {
        (!ttl.is_zero()).then(|| self.clock.stamp(ttl))
    }

    /// The current `invalidate_all` generation.
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        (self.generation.load(Ordering::Acquire) & u64::from(GENERATION_MASK)) as u32
    }

    #[inline]
    pub(crate) fn count(&self, counter: Counter, n: u64) {
        if let Some(counters) = &self.counters {
            counters.add(counter, n);
        }
    }

    pub(crate) fn counters(&self) -> Option<&Counters> {
        self.counters.as_ref()
    }

    /// A clone of the live value for `key`; with a time-to-idle, the read also counts as an
    /// access.
    #[inline]
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let found = self.peek(key);
        self.count(
            if found.is_some() {
                Counter::Hit
            } else {
                Counter::Miss
            },
            1,
        );
        found
    }

    /// `get` without counting a hit or a miss.
    #[inline]
    pub(crate) fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        with_map!(&self.map, m => self.peek_in(m, key))
    }

    #[inline]
    fn peek_in<E: Stored<V>, Q>(&self, map: &DashMap<K, E, S>, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let generation = self.generation();
        map.view(key, |_, stored| {
            let e = stored.entry();
            let deadline = e.deadline();
            if e.generation() != generation {
                return None;
            }
            if deadline != NEVER {
                let now = self.clock.now();
                if deadline <= now {
                    return None;
                }
                if E::IDLE {
                    self.touch(stored, deadline, now);
                }
            }
            if self.capacity.is_some() {
                e.bump();
            }
            Some(e.value.clone())
        })
        .flatten()
    }

    /// Record a read access: move an idle deadline later, within the cap.
    #[inline]
    fn touch(&self, stored: &impl Stored<V>, deadline: u64, now: u64) {
        let wanted = stored.cap().min(now.saturating_add(self.idle));
        if wanted > deadline.saturating_add(self.idle_tolerance) {
            stored.entry().deadline.fetch_max(wanted, Ordering::Relaxed);
        }
    }

    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let generation = self.generation();
        self.map
            .view(key, |_, e| e.is_live(generation, || self.clock.now()))
            .unwrap_or(false)
    }

    /// The effective deadline of an entry written now with `stamp`.
    fn effective(&self, stamp: Stamp) -> u64 {
        if self.idle == 0 {
            stamp.cap
        } else {
            let now = stamp.now.unwrap_or_else(|| self.clock.now());
            stamp.cap.min(now.saturating_add(self.idle))
        }
    }

    /// Store `value` under `key` with the TTL deadline `cap`, and report what it replaced.
    #[inline]
    pub(crate) fn insert(&self, key: K, value: V, cap: Stamp) {
        let (key, value) = match self.capacity.as_ref().filter(|c| c.unweighted()) {
            Some(capacity) => match self.insert_unweighted(capacity, key, value, cap) {
                Ok((mut admit, replaced)) => return self.after_write(&mut admit, replaced),
                Err(back) => {
                    #[cfg(test)]
                    self.fallbacks.fetch_add(1, Ordering::Relaxed);
                    back
                }
            },
            None => (key, value),
        };
        let mut admit = self.admission(&key, &value);
        let replaced = with_map!(&self.map, m => {
            let slot = m.entry(key);
            self.flights.supersede(slot.key());
            self.write(slot, value, cap, self.generation())
        });
        self.after_write(&mut admit, replaced);
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
        cap: Stamp,
    ) -> Result<Written<'a, K, V, S>, (K, V)> {
        with_map!(&self.map, m => {
            let (slot, admit) = match m.entry(key) {
                Slot::Vacant(vacant) => match capacity.try_hold(vacant.key()) {
                    Some((shard, hash)) => {
                        let key = vacant.key().clone();
                        (Slot::Vacant(vacant), Some((shard, hash, key, 1)))
                    }
                    None => return Err((vacant.into_key(), value)),
                },
                occupied => (occupied, None),
            };
            self.flights.supersede(slot.key());
            Ok((admit, self.write(slot, value, cap, self.generation())))
        })
    }

    /// For a bounded cache: the key's policy shard, held from before the write until it is
    /// accounted for (see `capacity.rs`), the key for the policy's queue, and the weight of
    /// the value about to be written, taken before the map's shard lock (the weigher is user
    /// code).
    fn admission(&self, key: &K, value: &V) -> Option<Admission<'_, K, S>> {
        let capacity = self.capacity.as_ref()?;
        let weight = capacity.weigh(key, value);
        let (shard, hash) = capacity.hold(key);
        Some((shard, hash, key.clone(), weight))
    }

    /// After a write, with no map lock held: account for it in the policy (evicting for room),
    /// release the policy shard, then report what the write replaced and what was evicted.
    fn after_write(
        &self,
        admission: &mut Option<Admission<'_, K, S>>,
        replaced: Option<Retired<K, V>>,
    ) {
        let evict = |key: &K| self.evict(key);
        let room = || Room {
            map: &self.map,
            evict: &evict,
        };
        let evicted = match (&self.capacity, admission.take()) {
            (Some(capacity), Some((mut shard, hash, key, weight))) => match &replaced {
                None => capacity.admit(&mut shard, room(), key, hash, weight),
                Some(old) => match capacity.replaced(&mut shard, &key, weight) {
                    // Same weight: nothing to account for.
                    same if same == weight => Evicted::None,
                    old_weight => capacity.reweigh(
                        &mut shard,
                        room(),
                        &key,
                        old.entry.in_main(),
                        old_weight,
                        weight,
                    ),
                },
            },
            _ => Evicted::None,
        };
        let evicted = evicted.into_iter().map(|(key, entry)| {
            let cause = self.cause(&entry, RemovalCause::Size);
            self.retired(key, entry, cause)
        });
        self.retire_all(replaced.into_iter().chain(evicted));
    }

    /// Take `key`'s entry out of the map for room (the policy accounts for it); its wheel
    /// node goes back through the hand-off.
    fn evict(&self, key: &K) -> Option<Removed<K, V>> {
        self.map.remove_if(key, |key, entry| {
            self.orphan(key, entry);
            true
        })
    }

    /// Store the value a load produced, unless a write or `invalidate_all` landed while it
    /// loaded (see `load.rs`), or `cap` is `None` (a zero TTL: returned, not stored).
    pub(crate) fn finish_load(
        &self,
        key: K,
        flight: &SyncArc<Flight<V>>,
        value: V,
        cap: Option<Stamp>,
        generation: u32,
    ) {
        let mut admit = self.admission(&key, &value);
        let written = with_map!(&self.map, m => {
            let slot = m.entry(key);
            // Unregistered under the shard lock: a writer either marked the flight before
            // this point, or finds no flight and writes after us.
            self.flights.unregister(slot.key(), flight);
            match cap {
                Some(cap) if !flight.is_superseded() && self.generation() == generation => {
                    Some(self.write(slot, value, cap, generation))
                }
                _ => None,
            }
        });
        if let Some(replaced) = written {
            self.after_write(&mut admit, replaced);
        }
    }

    /// Write an entry into `slot`, held under its shard lock, telling the task about a new or
    /// earlier deadline. Returns the entry it replaced.
    fn write<E: Stored<V>>(
        &self,
        slot: Slot<'_, K, E>,
        value: V,
        stamp: Stamp,
        generation: u32,
    ) -> Option<Retired<K, V>> {
        let (deadline, cap) = (self.effective(stamp), stamp.cap);
        match slot {
            Slot::Vacant(slot) => {
                let timer = self.hand_off(slot.key(), UNFILED, NEVER, deadline);
                slot.insert(E::new(
                    Entry::new(value, deadline, timer, generation, 0),
                    cap,
                ));
                self.count(Counter::Insert, 1);
                None
            }
            Slot::Occupied(mut slot) => {
                // The key's clone (user code) comes first: the hand-off below and the
                // replacement after it must both happen.
                let key = self.notifier.is_active().then(|| slot.key().clone());
                let old = slot.get().entry();
                let timer = self.hand_off(slot.key(), old.timer, old.deadline(), deadline);
                // Judging the cause needs the time (the write's own, if it read the clock):
                // only when someone counts or listens.
                let cause = if self.counters.is_some() || self.notifier.is_active() {
                    let now = || stamp.now.unwrap_or_else(|| self.clock.now());
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
                let new = Entry::new(value, deadline, timer, generation, old.policy_bits());
                let entry = std::mem::replace(slot.get_mut(), E::new(new, cap)).into_entry();
                Some(Retired { key, entry, cause })
            }
        }
    }

    /// The timer of `key`'s entry, under its shard lock, as it goes from the deadline `old`
    /// with `timer` to `deadline`: a node queued for the task if it needs one (see
    /// [`needs_push`]). The deadline's tick (a division) is worked out only then: most
    /// overwrites move a deadline later and need nothing.
    #[inline]
    fn hand_off(&self, key: &K, timer: TimerId, old: u64, deadline: u64) -> TimerId {
        if needs_push(timer, old, deadline) {
            let due = self.clock.tick_of(deadline);
            self.handoff.push(&self.signals, key.clone(), timer, due)
        } else {
            timer
        }
    }

    /// Remove `key`; its value if it was live.
    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let held = self.hold_for_removal(key);
        let removed = match self.flights.registered_key(key) {
            // A load is in flight: take the shard lock even if the key is absent, so that the
            // load cannot store its value after this remove (see load.rs).
            Some(key) => with_map!(&self.map, m => match m.entry(key) {
                Slot::Occupied(slot) => {
                    self.flights.supersede(slot.key());
                    self.orphan(slot.key(), slot.get().entry());
                    let (key, stored) = slot.remove_entry();
                    Some((key, stored.into_entry()))
                }
                Slot::Vacant(slot) => {
                    self.flights.supersede(slot.key());
                    None
                }
            }),
            None => self.map.remove_if(key, |key, entry| {
                self.flights.supersede(key);
                self.orphan(key, entry);
                true
            }),
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
        if let Some(node) = entry.node() {
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
    fn retired(&self, key: K, entry: Entry<V>, cause: RemovalCause) -> Retired<K, V> {
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
    pub(crate) fn fire(&self, key: &K, node: TimerId, now: u64) -> Fired<K, V> {
        let held = self.hold_for_removal(key);
        let generation = self.generation();
        let mut fired = Fired::Stale;
        let removed = self.map.remove_if_mut(key, |_, entry| {
            if entry.timer != node {
                return false;
            }
            if !entry.is_live(generation, || now) {
                return true;
            }
            fired = match entry.deadline() {
                NEVER => {
                    entry.timer = UNFILED;
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
    fn retire_all(&self, retired: impl IntoIterator<Item = Retired<K, V>>) {
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

    /// Total weight the capacity policy accounts for (test-only visibility).
    pub(crate) fn policy_weight(&self) -> Option<u64> {
        self.capacity.as_ref().map(|c| c.weight().0)
    }

    /// Entry weights the capacity policy keeps, with a weigher (test-only visibility).
    pub(crate) fn policy_records(&self) -> Option<usize> {
        self.capacity.as_ref().map(|c| c.weight().1)
    }

    /// Make every entry written so far invisible, at once; the task sweeps them later.
    ///
    /// Entries keep their generation modulo 2^29, so the generation must never come round to
    /// one an entry still in the map has: that entry would be live again. The task's sweeps
    /// keep the map far from that; if they have not (no task has swept for 2^29 - 1 calls: its
    /// runtime shut down), this call sweeps the map itself first, once in 2^29 calls.
    pub(crate) fn invalidate_all(&self) {
        let current = self.generation.load(Ordering::Acquire);
        if current + 1 - self.swept.load(Ordering::Acquire) > u64::from(GENERATION_MASK) {
            self.sweep_all();
        }
        let next = self.generation().wrapping_add(1) & GENERATION_MASK;
        self.invalidated_at[next as usize % INVALIDATIONS]
            .store(self.clock.now(), Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.signals.notify.wake();
    }

    /// The full generation count, for a sweep to say which generation it reached.
    pub(crate) fn generation_count(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Every entry written before generation `count` has been swept.
    pub(crate) fn swept_to(&self, count: u64) {
        self.swept.fetch_max(count, Ordering::AcqRel);
    }

    /// Sweep, on the calling thread, every entry `invalidate_all` has hidden so far.
    fn sweep_all(&self) {
        let count = self.generation_count();
        let (keys, _) = self
            .map
            .stale_keys((count & u64::from(GENERATION_MASK)) as u32);
        for key in keys {
            if let Some(retired) = self.sweep_one(&key) {
                self.retire(retired);
            }
        }
        self.swept_to(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_whose_policy_shard_is_busy_waits_for_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let cache = crate::Cache::<u64, u64>::builder()
            .max_capacity(100)
            .build_on(rt.handle());
        let store = cache.store();
        (0..10).for_each(|k| cache.insert(k, k));
        let capacity = store.capacity.as_ref().unwrap();
        let (held, _) = capacity.hold(&10);
        std::thread::scope(|s| {
            let writer = s.spawn(|| cache.insert(10, 10));
            // The writer found the slot vacant and the shard taken: it goes the ordered way
            // (policy shard, then map) and waits for the shard.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while store.fallbacks.load(Ordering::Relaxed) == 0 {
                assert!(std::time::Instant::now() < deadline, "no fallback in 10 s");
                std::thread::yield_now();
            }
            assert!(
                cache.get(&10).is_none(),
                "written before its shard was free"
            );
            drop(held);
            writer.join().unwrap();
        });
        assert_eq!(cache.get(&10), Some(10));
        assert_eq!(store.policy_weight(), Some(11));
        // A new key with its shard free takes the one-lookup way.
        cache.insert(11, 11);
        assert_eq!(store.fallbacks.load(Ordering::Relaxed), 1);
        assert_eq!(store.policy_weight(), Some(12));
    }

    #[test]
    fn invalidate_all_never_brings_an_entry_back_when_generations_wrap() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let cache = crate::Cache::<u64, u64>::builder().build_on(rt.handle());
        // No task will sweep: its runtime is gone.
        drop(rt);
        cache.insert(1, 1);
        cache.invalidate_all();
        assert_eq!(cache.get(&1), None);
        // Skip to the last call before the generation comes round to the entry's (0).
        let store = cache.store();
        store
            .generation
            .fetch_add(u64::from(GENERATION_MASK) - 1, Ordering::AcqRel);
        assert_eq!(store.generation(), GENERATION_MASK);
        cache.invalidate_all();
        assert_eq!(store.generation(), 0);
        assert_eq!(cache.get(&1), None, "an invalidated entry came back");
        assert!(!cache.contains_key(&1));
        assert_eq!(cache.entry_count(), 0, "the wrap swept the map first");
        cache.insert(2, 2);
        assert_eq!(cache.get(&2), Some(2));
    }
}
