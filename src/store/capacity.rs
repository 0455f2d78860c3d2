//! Bounded capacity: the policy shards, the weigher, and the policy's view of the map.
//!
//! The capacity knows the map (to read and set entries' policy bits) and is handed a way to
//! evict (the store's, which also tells the task about the entry's wheel node); it never sees
//! the store itself.
//!
//! A bounded cache has a few policy shards (keys go to shards by hash); each shard runs its
//! own [`TinyLfu`] behind a mutex that only writers of that shard take, never readers.
//! Without a weigher each shard holds its share of `max_capacity`: after a write the
//! inserting thread evicts in the same shard until it is within its share, before `insert`
//! returns, so the entry count is exact. With a weigher the shards share `max_capacity`
//! ([`Shared`]): what fits does not depend on the shard count.
//!
//! One write evicts at most [`EVICTION_BUDGET`] entries, and so does each step of the expiry
//! task's payment of a weighted cache's debt.
//!
//! Invariants:
//! - Lock order is policy shard, then map shard (then hand-off stripe). Nothing that holds a
//!   map shard lock waits for a policy lock, so the order is never reversed: a writer that
//!   finds its key's slot vacant may only *try* the policy shard ([`Capacity::try_hold`]),
//!   and starts again in order if it is taken.
//! - A write to a bounded cache holds its key's policy shard ([`Capacity::hold`], or
//!   [`Capacity::try_hold`] taken under the map's shard lock) from before it changes the map
//!   until the policy has accounted for the change (except an overwrite when there is no
//!   weigher: it changes no accounting, the new entry taking over the old one's policy state
//!   under the map's shard lock). A removal (by a caller, the expiry task or a sweep) holds
//!   the key's policy shard the same way, from before it takes the entry out of the map until
//!   the policy has [`forgotten`](Capacity::forget) it: so a removal never forgets an entry
//!   whose write was not accounted for yet, and never a newer entry of the same key written
//!   between the removal and the forgetting (which would leave the policy counting weight
//!   that no entry holds, or drop a live entry's weight).
//! - The weigher is user code, and it runs only on a value about to be written, before any
//!   lock is taken. With a weigher, each policy shard keeps the weight of every entry it
//!   accounts for ([`PolicyShard`]), so that an overwrite, an eviction or a removal learns the
//!   old weight without asking the weigher again (under a lock, and perhaps getting another
//!   answer).
//! - Every entry's weight is added once (new entry), adjusted on overwrite, and subtracted
//!   once, by whichever path takes the entry out of the map: eviction here, or the store's
//!   removals (by a caller, by expiry, by a sweep).
//! - With a weigher, the shared total is the sum of the shards' weights: a shard adds each
//!   change of its own weight to it under its lock, right after making it (a write reserves
//!   its weight first, see [`Shared`]). Debt is paid with no policy lock held but the one
//!   shard being paid from (lock order unchanged).

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::entry::{Entry, Map, Removed};
use crate::policy::{Limit, Residents, Status, TinyLfu};
use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use crate::sync::{lock, Mutex, MutexGuard, TryLockError};

/// One policy shard: the policy, and with a weigher the weight of each entry it accounts for.
pub(crate) struct PolicyShard<K, S> {
    policy: TinyLfu<K, S>,
    weights: Option<HashMap<K, u32, S>>,
    /// Its place among the shards.
    index: usize,
}

/// A policy shard, locked.
pub(crate) type Held<'a, K, S> = MutexGuard<'a, PolicyShard<K, S>>;

/// Entries evicted by one write, to be reported once no lock is held. Most writes evict none
/// or one: those allocate nothing.
#[derive(Default)]
pub(crate) enum Evicted<K, V> {
    /// None.
    #[default]
    None,
    /// Exactly one.
    One(K, Entry<V>),
    /// More.
    Many(Vec<(K, Entry<V>)>),
}

impl<K, V> Evicted<K, V> {
    /// Add `more` to these.
    pub(crate) fn extend(&mut self, more: Evicted<K, V>) {
        for (key, entry) in more {
            self.push(key, entry);
        }
    }

    fn push(&mut self, key: K, entry: Entry<V>) {
        *self = match std::mem::take(self) {
            Evicted::None => Evicted::One(key, entry),
            Evicted::One(k, e) => Evicted::Many(vec![(k, e), (key, entry)]),
            Evicted::Many(mut all) => {
                all.push((key, entry));
                Evicted::Many(all)
            }
        };
    }
}

impl<K, V> IntoIterator for Evicted<K, V> {
    type Item = (K, Entry<V>);
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<(K, Entry<V>)>, std::vec::IntoIter<(K, Entry<V>)>>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            Evicted::None => None.into_iter().chain(Vec::new()),
            Evicted::One(k, e) => Some((k, e)).into_iter().chain(Vec::new()),
            Evicted::Many(all) => None.into_iter().chain(all),
        }
    }
}

/// The weigher type.
pub(crate) type Weigher<K, V> = Box<dyn Fn(&K, &V) -> u32 + Send + Sync + 'static>;

/// Capacities below this many units per shard use fewer shards.
const UNITS_PER_SHARD: u64 = 512;

/// The most entries one write evicts, in its own shard and others together, and the most
/// the expiry task evicts in one step. An entry heavier than this many victims can free
/// leaves the cache over its capacity for a while (see [`Shared`]).
pub(crate) const EVICTION_BUDGET: usize = 64;

pub(crate) struct Capacity<K, V, S> {
    shards: Box<[Mutex<PolicyShard<K, S>>]>,
    hasher: S,
    weigher: Option<Weigher<K, V>>,
    /// With a weigher, the bound the shards share; without, each shard holds its own share.
    shared: Option<Shared>,
}

/// The capacity of a weighted cache, shared by its policy shards, so that what fits does not
/// depend on how many shards (cores) there are: any entry up to the whole capacity fits.
///
/// - `total` is the sum of the shards' weights. A shard adds its own changes to it (and to
///   its entry in `weights`) under its lock, right after making them.
/// - A write evicts while the cache is over `max`: in its own shard first (the policy's
///   admission, against that shard's victims), then, its shard released, from the shards
///   most over their share of `max`, at most [`EVICTION_BUDGET`] entries in all. What is
///   left over is *debt*: later writes pay it (each within the same budget), and so does the
///   expiry task, woken for it, a budget at a time, yielding between.
/// - The debt is bounded: a write reserves its entry's weight (or what an overwrite adds) in
///   `total` before the policy accounts for it, and only if that keeps `total` within twice
///   the capacity; otherwise its entry goes at once, as one heavier than the capacity does.
///   So `total` never exceeds twice the capacity, and it exceeds the capacity at all only
///   after a write needed more victims than the budget.
///
/// Debt is paid from the heaviest shard but the *debtor*, the shard of the last write that
/// left debt, and from the debtor only once the others hold nothing: that write's entry won
/// its shard's admission, and would otherwise be the first victim there once its shard's
/// lighter entries were gone (the writer's own eviction passes over it, see
/// [`Limit::Shared`]).
struct Shared {
    max: u64,
    total: AtomicU64,
    /// Each shard's weight as of its last change, read without its lock to choose where to
    /// pay debt.
    weights: Box<[AtomicU64]>,
    /// The shard of the last write that left debt.
    debtor: AtomicUsize,
}

impl Shared {
    /// Whether the cache is over its capacity.
    fn over(&self) -> bool {
        self.total.load(Ordering::Acquire) > self.max
    }

    /// The shard to pay debt from: the heaviest but the debtor, or the debtor.
    fn payer(&self) -> usize {
        let debtor = self.debtor.load(Ordering::Relaxed);
        let mut best = (debtor, 0);
        for (i, weight) in self.weights.iter().enumerate() {
            let weight = weight.load(Ordering::Relaxed);
            if i != debtor && weight > best.1 {
                best = (i, weight);
            }
        }
        best.0.min(self.weights.len() - 1)
    }
}

impl<K, V, S> Capacity<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    /// `max` over at most `stripes` shards (a power of two), or exactly `forced` shards (a
    /// test's choice, rounded up to a power of two). Without a weigher each shard holds its
    /// share of `max`; with one, the shards share `max` (see [`Shared`]) and their shares
    /// only size their policies.
    pub(crate) fn new(
        max: u64,
        stripes: usize,
        forced: Option<usize>,
        hasher: S,
        weigher: Option<Weigher<K, V>>,
    ) -> Self {
        let count = match forced {
            Some(count) => count.max(1).next_power_of_two() as u64,
            None => {
                let wanted = (max / UNITS_PER_SHARD).clamp(1, stripes as u64);
                1u64 << (63 - wanted.leading_zeros())
            }
        };
        let shards = (0..count)
            .map(|i| {
                let share = max / count + u64::from(i < max % count);
                Mutex::new(PolicyShard {
                    policy: TinyLfu::new(share, hasher.clone()),
                    weights: weigher
                        .is_some()
                        .then(|| HashMap::with_hasher(hasher.clone())),
                    index: i as usize,
                })
            })
            .collect();
        let shared = weigher.is_some().then(|| Shared {
            max,
            total: AtomicU64::new(0),
            weights: (0..count).map(|_| AtomicU64::new(0)).collect(),
            debtor: AtomicUsize::new(0),
        });
        Capacity {
            shards,
            hasher,
            weigher,
            shared,
        }
    }

    /// Whether a new entry of `weight` may be accounted for in `shard`: a heavier one is
    /// evicted on its own, rather than flushing the cache before it. With a weigher, this
    /// also reserves the weight in the shared total, if that stays within twice the capacity
    /// (see [`Shared`]).
    fn reserve(&self, shard: &PolicyShard<K, S>, weight: u64) -> bool {
        let Some(shared) = &self.shared else {
            return weight <= shard.policy.capacity();
        };
        if weight > shared.max {
            return false;
        }
        let limit = shared.max.saturating_mul(2);
        let mut total = shared.total.load(Ordering::Acquire);
        loop {
            if total.saturating_add(weight) > limit {
                return false;
            }
            match shared.total.compare_exchange_weak(
                total,
                total + weight,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => total = now,
            }
        }
    }

    /// Add the change in shard `index`'s weight (its `policy`, held) since it weighed
    /// `before` to the shared total.
    fn settle(&self, policy: &TinyLfu<K, S>, index: usize, before: u64) {
        let Some(shared) = &self.shared else { return };
        let after = policy.weight();
        shared.weights[index].store(after, Ordering::Relaxed);
        match after.cmp(&before) {
            std::cmp::Ordering::Greater => {
                shared.total.fetch_add(after - before, Ordering::AcqRel);
            }
            std::cmp::Ordering::Less => {
                shared.total.fetch_sub(before - after, Ordering::AcqRel);
            }
            std::cmp::Ordering::Equal => {}
        }
    }

    /// Evict in shard `index` (its `policy`, held) until it, or with a weigher the cache, is
    /// within its capacity, at most `budget` entries; settles the shard's weight.
    /// With a weigher, the entry whose key hashes to `keep` (this write's) is no victim.
    fn evict_in(
        &self,
        policy: &mut TinyLfu<K, S>,
        index: usize,
        view: &View<'_, K, V, S>,
        budget: &mut usize,
        keep: Option<u64>,
    ) {
        let before = policy.weight();
        match &self.shared {
            None => policy.evict_within(view, &Limit::Own, budget, |_| ()),
            Some(shared) => {
                // The other shards' weight is the total less this shard's, as it was before
                // this eviction (the total learns of it only once it is settled).
                let over = |weight: u64| {
                    let total = shared.total.load(Ordering::Acquire);
                    total.saturating_sub(before).saturating_add(weight) > shared.max
                };
                let limit = Limit::Shared { over: &over, keep };
                policy.evict_within(view, &limit, budget, |_| ());
            }
        }
        self.settle(policy, index, before);
    }

    /// A write in shard `index` is done evicting there: if it left debt, that shard is the
    /// debtor.
    fn owe(&self, index: usize) {
        if let Some(shared) = self.shared.as_ref().filter(|s| s.over()) {
            shared.debtor.store(index, Ordering::Relaxed);
        }
    }

    /// Whether a weighted cache is over its capacity (debt for writes and the task to pay).
    pub(crate) fn over(&self) -> bool {
        self.shared.as_ref().is_some_and(Shared::over)
    }

    /// Pay a weighted cache's debt from the shards most over their share, at most `budget`
    /// entries; call with no policy shard held. Returns the evicted entries.
    pub(crate) fn pay(&self, room: Room<'_, K, V, S>, budget: &mut usize) -> Evicted<K, V> {
        let mut evicted = Evicted::default();
        let Some(shared) = &self.shared else {
            return evicted;
        };
        for _ in 0..self.shards.len() {
            if *budget == 0 || !shared.over() {
                break;
            }
            let mut shard = lock(&self.shards[shared.payer()]);
            let PolicyShard {
                policy,
                weights,
                index,
            } = &mut *shard;
            let view = View::new(room, weights.as_mut());
            self.evict_in(policy, *index, &view, budget, None);
            evicted.extend(view.evicted.into_inner());
        }
        evicted
    }

    /// `key`'s entry became a stale copy (the expiry task, holding the key's policy shard):
    /// it goes first when room is needed.
    pub(crate) fn mark_stale(&self, shard: &mut Held<'_, K, S>, room: Room<'_, K, V, S>, key: K) {
        let PolicyShard {
            policy, weights, ..
        } = &mut **shard;
        let view = View::new(room, weights.as_mut());
        policy.mark_stale(&view, key);
    }

    /// Whether every entry weighs 1 (no weigher): then an overwrite changes no accounting.
    pub(crate) fn unweighted(&self) -> bool {
        self.weigher.is_none()
    }

    /// The weight of a value about to be written: the weigher's answer, or 1. Call with no
    /// lock held.
    pub(crate) fn weigh(&self, key: &K, value: &V) -> u32 {
        self.weigher
            .as_ref()
            .map_or(1, |weigher| weigher(key, value))
    }

    fn shard_of(&self, hash: u64) -> &Mutex<PolicyShard<K, S>> {
        &self.shards[(hash >> 40) as usize & (self.shards.len() - 1)]
    }

    /// Lock `key`'s policy shard, for a write to hold until it is accounted for, or a removal
    /// until it is forgotten. Returns the key's hash too, which the policy reuses.
    pub(crate) fn hold<Q: Hash + ?Sized>(&self, key: &Q) -> (Held<'_, K, S>, u64) {
        let hash = self.hasher.hash_one(key);
        (lock(self.shard_of(hash)), hash)
    }

    /// [`hold`](Self::hold) without waiting: `None` if another writer holds the shard. A
    /// writer that already holds a map shard lock may take a policy shard only this way (the
    /// lock order is policy, then map; a lock that is never waited for cannot deadlock).
    pub(crate) fn try_hold(&self, key: &K) -> Option<(Held<'_, K, S>, u64)> {
        let hash = self.hasher.hash_one(key);
        let held = match self.shard_of(hash).try_lock() {
            Ok(held) => held,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some((held, hash))
    }

    /// A new entry of `weight` was written for `key` (its shard held since before the write):
    /// account for it and evict for room, at most `budget` entries. Returns the evicted
    /// entries, for the store to report once no lock is held.
    pub(crate) fn admit(
        &self,
        shard: &mut Held<'_, K, S>,
        room: Room<'_, K, V, S>,
        key: K,
        hash: u64,
        weight: u32,
        budget: &mut usize,
    ) -> Evicted<K, V> {
        if !self.reserve(shard, u64::from(weight)) {
            let weights = &mut shard.weights;
            // Never accounted for: out again at once, alone, and its record with it.
            if let Some(weights) = weights {
                let _ = catch_unwind(AssertUnwindSafe(|| weights.remove(&key)));
            }
            let mut evicted = Evicted::default();
            if let Some((key, entry)) = (room.evict)(&key) {
                evicted.push(key, entry);
            }
            return evicted;
        }
        let PolicyShard {
            policy,
            weights,
            index,
        } = &mut **shard;
        // Reserved in the shared total already: settling adds nothing to it.
        let reserved = policy.weight() + u64::from(weight);
        policy.insert_hashed(key, hash, weight);
        self.settle(policy, *index, reserved);
        let view = View::new(room, weights.as_mut());
        self.evict_in(policy, *index, &view, budget, Some(hash));
        self.owe(*index);
        view.evicted.into_inner()
    }

    /// Record `weight` for `key` before a write of it changes the map (its shard held since
    /// before): the record's `Clone` and `Hash` of the key (user code) run before any change.
    /// Returns the weight recorded before, for the write to give back if it stores nothing
    /// ([`unrecord`](Self::unrecord)) or to account an overwrite from.
    pub(crate) fn record(&self, shard: &mut Held<'_, K, S>, key: &K, weight: u32) -> Option<u32> {
        let weights = shard.weights.as_mut()?;
        match weights.get_mut(key) {
            Some(recorded) => Some(std::mem::replace(recorded, weight)),
            None => {
                weights.insert(key.clone(), weight);
                None
            }
        }
    }

    /// A recorded write stored nothing: put the record back as it was. Nothing else changed,
    /// so a panic in the key's `Hash` here loses only the record.
    pub(crate) fn unrecord(&self, shard: &mut Held<'_, K, S>, key: &K, previous: Option<u32>) {
        if let Some(weights) = &mut shard.weights {
            let _ = catch_unwind(AssertUnwindSafe(|| match previous {
                Some(weight) => drop(weights.get_mut(key).map(|w| *w = weight)),
                None => drop(weights.remove(key)),
            }));
        }
    }

    /// An overwrite changed a resident entry's weight from `old` to `new` (its shard held
    /// since before the write; `hash` is its key's); evict for room, at most `budget`
    /// entries.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reweigh(
        &self,
        shard: &mut Held<'_, K, S>,
        room: Room<'_, K, V, S>,
        key: &K,
        hash: u64,
        main: bool,
        old: u32,
        new: u32,
        budget: &mut usize,
    ) -> Evicted<K, V> {
        let growth = u64::from(new.saturating_sub(old));
        let fits = u64::from(new)
            <= self
                .shared
                .as_ref()
                .map_or(shard.policy.capacity(), |s| s.max)
            && (growth == 0 || self.reserve(shard, growth));
        let PolicyShard {
            policy,
            weights,
            index,
        } = &mut **shard;
        let view = View::new(room, weights.as_mut());
        let before = policy.weight();
        if !fits {
            policy.remove(main, old);
            view.evict(key);
            self.settle(policy, *index, before);
            return view.evicted.into_inner();
        }
        policy.update(key, main, old, new);
        // Growth was reserved in the shared total already.
        self.settle(policy, *index, before + growth);
        self.evict_in(policy, *index, &view, budget, Some(hash));
        self.owe(*index);
        view.evicted.into_inner()
    }

    /// The weight `key`'s resident entry is accounted with (its shard held). A removal reads
    /// it before it takes the entry out, so that forgetting it runs no user code first.
    pub(crate) fn weight_of<Q>(&self, shard: &Held<'_, K, S>, key: &Q) -> u32
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match &shard.weights {
            Some(weights) => weights.get(key).copied().unwrap_or(0),
            None => 1,
        }
    }

    /// An entry of `weight` left the map other than by eviction, its shard held since before
    /// it was taken out: no write of the key can have been accounted for in between. The
    /// totals change first; the weight's record goes last (it hashes the key, user code: a
    /// panic there leaves a record the key's next write replaces, and the totals right).
    pub(crate) fn forget(&self, shard: &mut Held<'_, K, S>, key: &K, main: bool, weight: u32) {
        let before = shard.policy.weight();
        shard.policy.remove(main, weight);
        self.settle(&shard.policy, shard.index, before);
        if let Some(weights) = &mut shard.weights {
            let _ = catch_unwind(AssertUnwindSafe(|| weights.remove(key)));
        }
    }

    /// The total weight held: with a weigher the shared total (no lock), else the shards'
    /// sum.
    pub(crate) fn total(&self) -> u64 {
        match &self.shared {
            Some(shared) => shared.total.load(Ordering::Acquire),
            None => self.weight().0,
        }
    }

    /// Total weight the shards account for, and the number of weights recorded; takes each
    /// policy shard's lock in turn.
    pub(crate) fn weight(&self) -> (u64, usize) {
        self.shards.iter().fold((0, 0), |(total, recorded), s| {
            let shard = lock(s);
            let n = shard.weights.as_ref().map_or(0, HashMap::len);
            (total + shard.policy.weight(), recorded + n)
        })
    }
}

/// What the policy may do to the map: read it, and evict from it through the store.
pub(crate) struct Room<'a, K, V, S> {
    pub(crate) map: &'a Map<K, V, S>,
    /// Takes a key's entry out of the map for room (the policy accounts for it).
    pub(crate) evict: &'a dyn Fn(&K) -> Option<Removed<K, V>>,
}

impl<K, V, S> Clone for Room<'_, K, V, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V, S> Copy for Room<'_, K, V, S> {}

/// The policy's view of the map, collecting what it evicts. Weights come from the shard's
/// record (with a weigher) or are 1.
struct View<'a, K, V, S> {
    room: Room<'a, K, V, S>,
    weights: RefCell<Option<&'a mut HashMap<K, u32, S>>>,
    evicted: RefCell<Evicted<K, V>>,
}

impl<'a, K, V, S> View<'a, K, V, S> {
    fn new(room: Room<'a, K, V, S>, weights: Option<&'a mut HashMap<K, u32, S>>) -> Self {
        View {
            room,
            weights: RefCell::new(weights),
            evicted: RefCell::new(Evicted::default()),
        }
    }
}

impl<K, V, S> View<'_, K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// The weight `key`'s entry is accounted with.
    fn weight(&self, key: &K) -> u32 {
        match &*self.weights.borrow() {
            Some(weights) => weights.get(key).copied().unwrap_or(0),
            None => 1,
        }
    }
}

impl<K, V, S> Residents<K> for View<'_, K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    fn status(&self, key: &K) -> Option<Status> {
        let (freq, main) = self.room.map.view(key, |_, e| (e.freq(), e.in_main()))?;
        Some(Status {
            freq,
            main,
            weight: self.weight(key),
        })
    }

    fn set(&self, key: &K, freq: u8, main: bool) -> bool {
        self.room
            .map
            .view(key, |_, e| e.set_policy(freq, main))
            .is_some()
    }

    fn pass(&self, key: &K) -> Option<Status> {
        let (freq, main) = self.room.map.view(key, |_, e| e.pass())?;
        Some(Status {
            freq,
            main,
            weight: self.weight(key),
        })
    }

    fn stale(&self, key: &K) -> bool {
        self.room
            .map
            .view(key, |_, e| e.is_stale())
            .unwrap_or(false)
    }

    fn evict(&self, key: &K) -> Option<Status> {
        // The weight is read before the entry leaves (hashing the key is user code); the
        // record goes after, and a panic there leaves a record the key's next write replaces.
        let weight = self.weight(key);
        let (key, entry) = (self.room.evict)(key)?;
        if let Some(weights) = &mut *self.weights.borrow_mut() {
            let _ = catch_unwind(AssertUnwindSafe(|| weights.remove(&key)));
        }
        let status = Status {
            freq: entry.freq(),
            main: entry.in_main(),
            weight,
        };
        self.evicted.borrow_mut().push(key, entry);
        Some(status)
    }
}
