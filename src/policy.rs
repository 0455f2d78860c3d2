//! The eviction policy for bounded caches: S3-FIFO, one instance per policy shard.
//!
//! S3-FIFO keeps three FIFO queues: a *small* queue that every new key enters, a *main*
//! queue, and a *ghost* queue remembering (by hash) keys recently evicted from the small
//! queue. A key read at least once while in the small queue moves to main when it reaches
//! the head; a key never read is evicted there, so a one-pass scan washes through the small
//! queue (10% of the capacity) without disturbing the main queue. A key that comes back while
//! its ghost is remembered goes straight to main. In main, a key read since it last passed
//! the head gets another lap (its frequency, at most 3, counts down); one not read is evicted.
//!
//! Why S3-FIFO: it is scan-resistant and frequency-aware like W-TinyLFU, but a hit only bumps
//! a 2-bit counter stored in the entry itself (a relaxed compare-and-swap on a word the read
//! already has in cache, skipped once the counter is saturated): no sketch to hash into, no
//! read buffer, no lock. Everything else happens on the inserting thread, in the key's policy
//! shard. quick_cache reaches high hit ratios with a policy of this family and 8 shards.
//!
//! The policy is a pure data structure: it knows nothing of tokio or of the map. It sees the
//! cache's entries through [`Residents`], and accounts weights as the store tells it about
//! inserts, updates and removals. Queue items are removed lazily: an item whose key is gone,
//! or whose entry now sits in the other queue, is skipped when it reaches the head, and the
//! queues are compacted when stale items outnumber live ones.
//!
//! Invariants:
//! - `small_weight + main_weight` is the total weight of the resident entries this shard
//!   accounts for; after [`S3Fifo::evict`] it is at most the capacity, unless every item
//!   left was scanned without freeing anything (zero-weight entries), which ends the scan.
//! - An eviction scan visits each queued item at most `MAX_FREQ + 2` times, so it always
//!   ends.
//! - No user code runs here; [`Residents`] implementations must not take this policy's lock.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

/// The largest value of an entry's access counter.
pub(crate) const MAX_FREQ: u8 = 3;

/// What the policy knows about one resident entry, read from the entry itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Status {
    /// Reads since it last passed the head of its queue, at most [`MAX_FREQ`].
    pub(crate) freq: u8,
    /// Whether it is in the main queue (else the small one).
    pub(crate) main: bool,
    /// Its weight.
    pub(crate) weight: u32,
}

/// The policy's view of the cache's entries.
pub(crate) trait Residents<K> {
    /// The entry for `key`, if resident.
    fn status(&self, key: &K) -> Option<Status>;
    /// Set the entry's counter and queue.
    fn set(&self, key: &K, freq: u8, main: bool);
    /// Remove the entry for `key` from the cache for room; its status, if it was resident.
    fn evict(&self, key: &K) -> Option<Status>;
}

/// One shard's S3-FIFO state.
#[derive(Debug)]
pub(crate) struct S3Fifo<K, S> {
    capacity: u64,
    small_capacity: u64,
    small: VecDeque<K>,
    main: VecDeque<K>,
    small_weight: u64,
    main_weight: u64,
    /// Resident entries accounted for (to compact queues full of stale items).
    residents: usize,
    ghost: Ghost,
    hasher: S,
}

/// Hashes of keys recently evicted from the small queue, oldest first, with a count per hash
/// (two keys may share one).
#[derive(Debug, Default)]
struct Ghost {
    order: VecDeque<u64>,
    counts: HashMap<u64, u32>,
}

impl Ghost {
    fn insert(&mut self, hash: u64, limit: usize) {
        self.order.push_back(hash);
        *self.counts.entry(hash).or_insert(0) += 1;
        while self.order.len() > limit {
            let old = self.order.pop_front().expect("non-empty");
            self.forget(old);
        }
    }

    fn forget(&mut self, hash: u64) {
        if let Some(n) = self.counts.get_mut(&hash) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&hash);
            }
        }
    }

    fn contains(&self, hash: u64) -> bool {
        self.counts.contains_key(&hash)
    }
}

/// How many hashes the ghost queue remembers for a main queue of `main` items: as many as
/// main holds. Measured on the hit-ratio traces, twice, four or eight times as many lowered
/// every hit ratio (more keys bypass the small queue and churn main).
fn ghost_limit(main: usize) -> usize {
    main.max(64)
}

impl<K: Hash + Eq + Clone, S: BuildHasher> S3Fifo<K, S> {
    pub(crate) fn new(capacity: u64, hasher: S) -> Self {
        S3Fifo {
            capacity,
            small_capacity: (capacity / 10).max(1),
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_weight: 0,
            main_weight: 0,
            residents: 0,
            ghost: Ghost::default(),
            hasher,
        }
    }

    /// Whether an entry of `weight` can be held at all: a heavier one is evicted on its own,
    /// rather than flushing the shard before it.
    pub(crate) fn fits(&self, weight: u32) -> bool {
        u64::from(weight) <= self.capacity
    }

    /// The total weight accounted for.
    pub(crate) fn weight(&self) -> u64 {
        self.small_weight + self.main_weight
    }

    /// A new entry for `key` of `weight` became resident; returns whether it goes to the main
    /// queue (the caller records that in the entry). Call [`evict`](Self::evict) next.
    pub(crate) fn insert(&mut self, key: K, weight: u32) -> bool {
        let main = self.ghost.contains(self.hasher.hash_one(&key));
        if main {
            self.main_weight += u64::from(weight);
            self.main.push_back(key);
        } else {
            self.small_weight += u64::from(weight);
            self.small.push_back(key);
        }
        self.residents += 1;
        main
    }

    /// A resident entry's weight changed from `old` to `new` (an overwrite).
    pub(crate) fn update(&mut self, main: bool, old: u32, new: u32) {
        let queue = if main {
            &mut self.main_weight
        } else {
            &mut self.small_weight
        };
        *queue = (*queue + u64::from(new)).saturating_sub(u64::from(old));
    }

    /// A resident entry left the cache by another way than [`evict`](Self::evict) (removed,
    /// expired, invalidated). Its queue item is skipped when it reaches the head.
    pub(crate) fn remove(&mut self, main: bool, weight: u32) {
        let queue = if main {
            &mut self.main_weight
        } else {
            &mut self.small_weight
        };
        *queue = queue.saturating_sub(u64::from(weight));
        self.residents = self.residents.saturating_sub(1);
    }

    /// Evict until the shard is within its capacity; each evicted key is passed to
    /// `evicted` (after [`Residents::evict`] removed it).
    pub(crate) fn evict(&mut self, residents: &impl Residents<K>, mut evicted: impl FnMut(K)) {
        // Each item can come round at most MAX_FREQ + 1 times before its counter is spent.
        let mut budget = (usize::from(MAX_FREQ) + 2) * (self.small.len() + self.main.len()) + 2;
        while self.weight() > self.capacity && budget > 0 {
            budget -= 1;
            // Main frees nothing when it holds no weight: take from small then.
            let from_small = self.small_weight > self.small_capacity || self.main_weight == 0;
            let popped = if from_small {
                self.small.pop_front()
            } else {
                self.main.pop_front()
            };
            let Some(key) = popped else {
                // Nothing queued where the weight says there is: accounting drifted (a bug);
                // stop rather than spin.
                break;
            };
            match residents.status(&key) {
                // Gone, or this is a stale item of an entry now in the other queue.
                None => {}
                Some(status) if status.main == from_small => {}
                Some(status) if from_small => {
                    // Read since it came in, or weightless (evicting it frees nothing): to main.
                    if status.freq > 0 || status.weight == 0 {
                        residents.set(&key, 0, true);
                        self.small_weight =
                            self.small_weight.saturating_sub(u64::from(status.weight));
                        self.main_weight += u64::from(status.weight);
                        self.main.push_back(key);
                    } else if let Some(gone) = residents.evict(&key) {
                        self.small_weight =
                            self.small_weight.saturating_sub(u64::from(gone.weight));
                        self.residents = self.residents.saturating_sub(1);
                        let limit = ghost_limit(self.main.len());
                        self.ghost.insert(self.hasher.hash_one(&key), limit);
                        evicted(key);
                    }
                }
                Some(status) => {
                    if status.freq > 0 || status.weight == 0 {
                        residents.set(&key, status.freq.saturating_sub(1), true);
                        self.main.push_back(key);
                    } else if let Some(gone) = residents.evict(&key) {
                        self.main_weight = self.main_weight.saturating_sub(u64::from(gone.weight));
                        self.residents = self.residents.saturating_sub(1);
                        evicted(key);
                    }
                }
            }
        }
        self.compact(residents);
    }

    /// Drop stale items once they outnumber live ones.
    fn compact(&mut self, residents: &impl Residents<K>) {
        if self.small.len() + self.main.len() <= 2 * self.residents + 64 {
            return;
        }
        let mut seen = HashMap::with_capacity(self.residents);
        for (queue, main) in [(&mut self.small, false), (&mut self.main, true)] {
            queue.retain(|key| {
                let live = residents.status(key).is_some_and(|s| s.main == main);
                // Keep the first (oldest) item of a key; later ones are duplicates.
                live && seen.insert(key.clone(), ()).is_none()
            });
        }
    }

    /// Queued items, live and stale (test-only visibility).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.small.len() + self.main.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasherDefault;

    type Hasher = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

    /// The cache's entries, as a plain map.
    #[derive(Default)]
    struct Map(RefCell<HashMap<u32, Status>>);

    impl Residents<u32> for Map {
        fn status(&self, key: &u32) -> Option<Status> {
            self.0.borrow().get(key).copied()
        }
        fn set(&self, key: &u32, freq: u8, main: bool) {
            if let Some(s) = self.0.borrow_mut().get_mut(key) {
                s.freq = freq;
                s.main = main;
            }
        }
        fn evict(&self, key: &u32) -> Option<Status> {
            self.0.borrow_mut().remove(key)
        }
    }

    impl Map {
        fn read(&self, key: u32) -> bool {
            match self.0.borrow_mut().get_mut(&key) {
                Some(s) => {
                    s.freq = (s.freq + 1).min(MAX_FREQ);
                    true
                }
                None => false,
            }
        }
    }

    /// A straightforward S3-FIFO: queues of keys, a resident map, a ghost list searched
    /// linearly. The same decisions, written the obvious way.
    struct Reference {
        capacity: u64,
        small: VecDeque<u32>,
        main: VecDeque<u32>,
        resident: HashMap<u32, Status>,
        ghost: VecDeque<u32>,
    }

    impl Reference {
        fn new(capacity: u64) -> Self {
            Reference {
                capacity,
                small: VecDeque::new(),
                main: VecDeque::new(),
                resident: HashMap::new(),
                ghost: VecDeque::new(),
            }
        }
        fn weight_of(&self, main: bool) -> u64 {
            self.resident
                .values()
                .filter(|s| s.main == main)
                .map(|s| u64::from(s.weight))
                .sum()
        }
        fn insert(&mut self, key: u32, weight: u32) -> Vec<u32> {
            let main = self.ghost.contains(&key);
            self.resident.insert(
                key,
                Status {
                    freq: 0,
                    main,
                    weight,
                },
            );
            if main {
                self.main.push_back(key);
            } else {
                self.small.push_back(key);
            }
            self.evict()
        }
        fn evict(&mut self) -> Vec<u32> {
            let mut out = Vec::new();
            let small_capacity = (self.capacity / 10).max(1);
            let mut budget = (usize::from(MAX_FREQ) + 2) * (self.small.len() + self.main.len()) + 2;
            while self.weight_of(false) + self.weight_of(true) > self.capacity && budget > 0 {
                budget -= 1;
                let from_small =
                    self.weight_of(false) > small_capacity || self.weight_of(true) == 0;
                let key = if from_small {
                    self.small.pop_front()
                } else {
                    self.main.pop_front()
                };
                let Some(key) = key else { break };
                let Some(status) = self.resident.get(&key).copied() else {
                    continue;
                };
                if status.main == from_small {
                    continue;
                }
                if from_small {
                    if status.freq > 0 || status.weight == 0 {
                        self.resident.insert(
                            key,
                            Status {
                                freq: 0,
                                main: true,
                                ..status
                            },
                        );
                        self.main.push_back(key);
                    } else {
                        self.resident.remove(&key);
                        self.ghost.push_back(key);
                        let limit = ghost_limit(self.main.len());
                        while self.ghost.len() > limit {
                            self.ghost.pop_front();
                        }
                        out.push(key);
                    }
                } else if status.freq > 0 || status.weight == 0 {
                    let freq = status.freq.saturating_sub(1);
                    self.resident.insert(key, Status { freq, ..status });
                    self.main.push_back(key);
                } else {
                    self.resident.remove(&key);
                    out.push(key);
                }
            }
            // The same compaction: live items only, the oldest of each key.
            if self.small.len() + self.main.len() > 2 * self.resident.len() + 64 {
                let mut seen = std::collections::HashSet::new();
                for (queue, main) in [(&mut self.small, false), (&mut self.main, true)] {
                    let resident = &self.resident;
                    queue.retain(|k| {
                        resident.get(k).is_some_and(|s| s.main == main) && seen.insert(*k)
                    });
                }
            }
            out
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, u32),
        Read(u32),
        Remove(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..40u32, prop_oneof![9 => Just(1u32), 1 => 0..4u32]).prop_map(|(k, w)| Op::Insert(k, w)),
            4 => (0..40u32).prop_map(Op::Read),
            1 => (0..40u32).prop_map(Op::Remove),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn same_decisions_as_the_reference(capacity in 0..24u64, ops in prop::collection::vec(op(), 1..400)) {
            // Keys hash to themselves in the ghost, as the reference compares keys.
            let mut policy: S3Fifo<u32, Hasher> = S3Fifo::new(capacity, Hasher::default());
            let map = Map::default();
            let mut reference = Reference::new(capacity);
            for op in ops {
                match op {
                    Op::Insert(k, w) => {
                        let mut evicted = Vec::new();
                        match map.status(&k) {
                            Some(old) => {
                                // An overwrite keeps the entry's queue and counter.
                                policy.update(old.main, old.weight, w);
                                map.0.borrow_mut().insert(k, Status { weight: w, ..old });
                                reference.resident.insert(k, Status { weight: w, ..old });
                                policy.evict(&map, |k| evicted.push(k));
                                prop_assert_eq!(&evicted, &reference.evict());
                            }
                            None => {
                                let main = policy.insert(k, w);
                                map.0.borrow_mut().insert(k, Status { freq: 0, main, weight: w });
                                policy.evict(&map, |k| evicted.push(k));
                                prop_assert_eq!(&evicted, &reference.insert(k, w));
                            }
                        }
                    }
                    Op::Read(k) => {
                        let hit = map.read(k);
                        if let Some(s) = reference.resident.get_mut(&k) {
                            s.freq = (s.freq + 1).min(MAX_FREQ);
                        }
                        prop_assert_eq!(hit, reference.resident.contains_key(&k));
                    }
                    Op::Remove(k) => {
                        if let Some(s) = map.evict(&k) {
                            policy.remove(s.main, s.weight);
                        }
                        reference.resident.remove(&k);
                    }
                }
                prop_assert_eq!(&*map.0.borrow(), &reference.resident);
                prop_assert!(policy.weight() <= capacity || map.0.borrow().values().all(|s| s.weight == 0));
                prop_assert!(policy.queued() <= 2 * map.0.borrow().len() + 64 + 400);
            }
        }
    }

    #[test]
    fn a_scan_does_not_flush_the_frequently_read_keys() {
        let map = Map::default();
        let mut policy: S3Fifo<u32, RandomState> = S3Fifo::new(100, RandomState::new());
        let insert = |policy: &mut S3Fifo<u32, RandomState>, k: u32| {
            if map.read(k) {
                return;
            }
            let main = policy.insert(k, 1);
            map.0.borrow_mut().insert(
                k,
                Status {
                    freq: 0,
                    main,
                    weight: 1,
                },
            );
            policy.evict(&map, |_| {});
        };
        // A hot set of 50 keys, read often.
        for _ in 0..10 {
            for k in 0..50 {
                insert(&mut policy, k);
            }
        }
        // One pass over 10,000 keys never seen again.
        for k in 1000..11_000 {
            insert(&mut policy, k);
        }
        let hot_left = (0..50).filter(|k| map.status(k).is_some()).count();
        assert_eq!(hot_left, 50, "the scan washed through the small queue only");
        assert!(policy.weight() <= 100);
    }

    #[test]
    fn zero_capacity_keeps_nothing_and_zero_weight_is_never_evicted() {
        let map = Map::default();
        let mut policy: S3Fifo<u32, RandomState> = S3Fifo::new(0, RandomState::new());
        let main = policy.insert(1, 1);
        map.0.borrow_mut().insert(
            1,
            Status {
                freq: 0,
                main,
                weight: 1,
            },
        );
        let mut evicted = Vec::new();
        policy.evict(&map, |k| evicted.push(k));
        assert_eq!(evicted, vec![1]);
        let main = policy.insert(2, 0);
        map.0.borrow_mut().insert(
            2,
            Status {
                freq: 0,
                main,
                weight: 0,
            },
        );
        policy.evict(&map, |k| evicted.push(k));
        let main = policy.insert(3, 1);
        map.0.borrow_mut().insert(
            3,
            Status {
                freq: 0,
                main,
                weight: 1,
            },
        );
        policy.evict(&map, |k| evicted.push(k));
        assert_eq!(
            evicted,
            vec![1, 3],
            "a zero-weight entry costs nothing, so stays"
        );
        assert!(map.status(&2).is_some());
    }

    #[test]
    fn stale_items_are_compacted() {
        let map = Map::default();
        let mut policy: S3Fifo<u32, RandomState> = S3Fifo::new(1000, RandomState::new());
        for round in 0..1000u32 {
            for k in 0..10 {
                let main = policy.insert(k, 1);
                map.0.borrow_mut().insert(
                    k,
                    Status {
                        freq: 0,
                        main,
                        weight: 1,
                    },
                );
                policy.evict(&map, |_| {});
                let s = map.evict(&k).unwrap();
                policy.remove(s.main, s.weight);
            }
            assert!(
                policy.queued() <= 2 * 10 + 64 + 10,
                "round {round}: {}",
                policy.queued()
            );
        }
        assert_eq!(policy.weight(), 0);
    }
}
