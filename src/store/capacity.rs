//! Bounded capacity: the policy shards, the weigher, and the policy's view of the map.
//!
//! The capacity knows the map (to read and set entries' policy bits) and is handed a way to
//! evict (the store's, which also tells the task about the entry's wheel node); it never sees
//! the store itself.
//!
//! A bounded cache splits `max_capacity` over a few policy shards (keys go to shards by hash);
//! each shard runs its own [`TinyLfu`] behind a mutex that only writers of that shard take,
//! never readers. After a write, the inserting thread accounts for the new weight and evicts
//! in the same shard until it is within its share, before `insert` returns.
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

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::entry::{Entry, Map, Removed};
use crate::policy::{Residents, Status, TinyLfu};
use crate::sync::{lock, Mutex, MutexGuard, TryLockError};

/// One policy shard: the policy, and with a weigher the weight of each entry it accounts for.
pub(crate) struct PolicyShard<K, S> {
    policy: TinyLfu<K, S>,
    weights: Option<HashMap<K, u32, S>>,
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

pub(crate) struct Capacity<K, V, S> {
    shards: Box<[Mutex<PolicyShard<K, S>>]>,
    hasher: S,
    weigher: Option<Weigher<K, V>>,
}

impl<K, V, S> Capacity<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    /// `max` split over at most `stripes` shards (a power of two).
    pub(crate) fn new(max: u64, stripes: usize, hasher: S, weigher: Option<Weigher<K, V>>) -> Self {
        let wanted = (max / UNITS_PER_SHARD).clamp(1, stripes as u64);
        let count = 1u64 << (63 - wanted.leading_zeros());
        let shards = (0..count)
            .map(|i| {
                let share = max / count + u64::from(i < max % count);
                Mutex::new(PolicyShard {
                    policy: TinyLfu::new(share, hasher.clone()),
                    weights: weigher
                        .is_some()
                        .then(|| HashMap::with_hasher(hasher.clone())),
                })
            })
            .collect();
        Capacity {
            shards,
            hasher,
            weigher,
        }
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
    /// account for it and evict for room. Returns the evicted entries, for the store to report
    /// once no lock is held.
    pub(crate) fn admit(
        &self,
        shard: &mut Held<'_, K, S>,
        room: Room<'_, K, V, S>,
        key: K,
        hash: u64,
        weight: u32,
    ) -> Evicted<K, V> {
        let PolicyShard { policy, weights } = &mut **shard;
        if !policy.fits(weight) {
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
        policy.insert_hashed(key, hash, weight);
        let view = View::new(room, weights.as_mut());
        policy.evict(&view, |_| ());
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
    /// since before the write).
    pub(crate) fn reweigh(
        &self,
        shard: &mut Held<'_, K, S>,
        room: Room<'_, K, V, S>,
        key: &K,
        main: bool,
        old: u32,
        new: u32,
    ) -> Evicted<K, V> {
        let PolicyShard { policy, weights } = &mut **shard;
        let view = View::new(room, weights.as_mut());
        if !policy.fits(new) {
            policy.remove(main, old);
            view.evict(key);
            return view.evicted.into_inner();
        }
        policy.update(key, main, old, new);
        policy.evict(&view, |_| ());
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
        shard.policy.remove(main, weight);
        if let Some(weights) = &mut shard.weights {
            let _ = catch_unwind(AssertUnwindSafe(|| weights.remove(key)));
        }
    }

    /// Total weight accounted for, and the number of weights recorded; takes each policy
    /// shard's lock in turn.
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
