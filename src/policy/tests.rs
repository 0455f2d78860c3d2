//! The policy's model tests: a reference implementation under random operations, and the
//! behaviours the hit-ratio traces rely on (scans, hot sets, weightless entries, the scan
//! budget).

use super::*;
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

type Hasher = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// The cache's entries, as a plain map.
#[derive(Default)]
struct Map(RefCell<HashMap<u32, Status>>);

impl Residents<u32> for Map {
    fn status(&self, key: &u32) -> Option<Status> {
        self.0.borrow().get(key).copied()
    }
    fn set(&self, key: &u32, freq: u8, main: bool) -> bool {
        match self.0.borrow_mut().get_mut(key) {
            Some(s) => {
                s.freq = freq;
                s.main = main;
                true
            }
            None => false,
        }
    }
    fn pass(&self, key: &u32) -> Option<Status> {
        let mut map = self.0.borrow_mut();
        let s = map.get_mut(key)?;
        let before = *s;
        if s.main && s.freq > 0 {
            s.freq -= 1;
        }
        Some(before)
    }
    fn evict(&self, key: &u32) -> Option<Status> {
        self.0.borrow_mut().remove(key)
    }
}

impl Map {
    /// A new entry: into the map (in the window) and the policy, then evict for room.
    fn admit(
        &self,
        policy: &mut TinyLfu<u32, impl BuildHasher>,
        key: u32,
        weight: u32,
        evicted: impl FnMut(&u32),
    ) {
        policy.insert(key, weight);
        let status = Status {
            freq: 0,
            main: false,
            weight,
        };
        self.0.borrow_mut().insert(key, status);
        policy.evict(self, evicted);
    }

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

/// A straightforward version of the same policy: queues of keys, a resident map, weights
/// summed when needed; the same sketch (tested on its own in `sketch.rs`).
struct Reference {
    capacity: u64,
    window: VecDeque<u32>,
    main: VecDeque<u32>,
    resident: HashMap<u32, Status>,
    sketch: Sketch,
    scan_budget: usize,
}

impl Reference {
    fn new(capacity: u64, scan_budget: usize) -> Self {
        Reference {
            capacity,
            window: VecDeque::new(),
            main: VecDeque::new(),
            resident: HashMap::new(),
            sketch: Sketch::new(capacity),
            scan_budget,
        }
    }
    fn weight_of(&self, main: bool) -> u64 {
        self.resident
            .values()
            .filter(|s| s.main == main)
            .map(|s| u64::from(s.weight))
            .sum()
    }
    fn hash(key: u32) -> u64 {
        Hasher::default().hash_one(key)
    }
    fn insert(&mut self, key: u32, weight: u32) -> Vec<u32> {
        self.sketch.increment(Self::hash(key));
        let status = Status {
            freq: 0,
            main: false,
            weight,
        };
        self.resident.insert(key, status);
        self.window.push_back(key);
        self.sketch.fit(self.resident.len());
        self.evict()
    }
    /// Main's queue holds keys that weigh something.
    fn promote(&mut self, key: u32, c: Status) {
        let status = Status { main: true, ..c };
        self.resident.insert(key, status);
        if c.weight > 0 {
            self.main.push_back(key);
        }
    }
    /// An overwrite of a resident key with a value of `weight`.
    fn update(&mut self, key: u32, old: Status, weight: u32) {
        self.resident.insert(key, Status { weight, ..old });
        if old.main && old.weight == 0 && weight > 0 {
            self.main.push_back(key);
        }
    }
    /// Main's CLOCK hand: the first key in main not read since it last passed, passing
    /// over read ones (one step each) while `steps` is within the budget, and after that
    /// the first key in main whatever it was read; weightless keys leave the queue.
    fn victim(&mut self, steps: &mut usize) -> Option<u32> {
        loop {
            let key = self.main.pop_front()?;
            let Some(s) = self.resident.get_mut(&key) else {
                continue;
            };
            if !s.main {
                continue;
            }
            if *steps >= self.scan_budget {
                if s.weight > 0 {
                    return Some(key);
                }
                continue;
            }
            let read = s.freq > 0;
            if read {
                s.freq -= 1;
            }
            if s.weight == 0 {
                continue;
            }
            if !read {
                return Some(key);
            }
            *steps += 1;
            self.sketch.increment(Self::hash(key));
            self.main.push_back(key);
        }
    }
    fn evict(&mut self) -> Vec<u32> {
        let mut out = Vec::new();
        let window_capacity = (self.capacity * 2 / 1000).max(1);
        let main_capacity = self.capacity.saturating_sub(window_capacity);
        let mut steps = 0;
        let mut rounds = 2 * self.window.len() + self.main.len() + 1;
        while rounds > 0 {
            rounds -= 1;
            let over = self.weight_of(false) + self.weight_of(true) > self.capacity;
            if !over && self.weight_of(false) <= window_capacity {
                break;
            }
            let from_window =
                !over || self.weight_of(false) > window_capacity || self.weight_of(true) == 0;
            if !from_window {
                let Some(victim) = self.victim(&mut steps) else {
                    break;
                };
                self.resident.remove(&victim);
                out.push(victim);
                continue;
            }
            let Some(key) = self.window.pop_front() else {
                break;
            };
            let Some(c) = self.resident.get(&key).copied() else {
                continue;
            };
            if c.main {
                continue;
            }
            if c.weight == 0 || self.weight_of(true) + u64::from(c.weight) <= main_capacity {
                self.promote(key, c);
                continue;
            }
            if !over {
                self.window.push_front(key);
                break;
            }
            let Some(victim) = self.victim(&mut steps) else {
                self.resident.remove(&key);
                out.push(key);
                continue;
            };
            let asked = u32::from(self.sketch.estimate(Self::hash(key))) + u32::from(c.freq);
            let incumbent = u32::from(self.sketch.estimate(Self::hash(victim)));
            if asked > incumbent + 1 {
                self.resident.remove(&victim);
                out.push(victim);
                self.promote(key, c);
            } else {
                self.main.push_front(victim);
                self.resident.remove(&key);
                out.push(key);
            }
        }
        // The same compaction: live items only, the oldest of each key.
        if self.window.len() + self.main.len() > 2 * self.resident.len() + 64 {
            let mut seen = std::collections::HashSet::new();
            for (queue, main) in [(&mut self.window, false), (&mut self.main, true)] {
                let resident = &self.resident;
                queue.retain(|k| {
                    resident
                        .get(k)
                        .is_some_and(|s| s.main == main && (!main || s.weight > 0))
                        && seen.insert(*k)
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
    #![proptest_config(crate::model_test_config(300))]

    #[test]
    fn same_decisions_as_the_reference(
        capacity in 0..24u64,
        // Small budgets, so that the hand runs out of them often.
        scan_budget in prop_oneof![0..8usize, Just(SCAN_BUDGET)],
        ops in prop::collection::vec(op(), 1..400),
    ) {
        // The policy and the reference hash keys the same way, for the same sketch counts.
        let mut policy: TinyLfu<u32, Hasher> =
            TinyLfu::with_scan_budget(capacity, Hasher::default(), scan_budget);
        let map = Map::default();
        let mut reference = Reference::new(capacity, scan_budget);
        for op in ops {
            match op {
                Op::Insert(k, w) => {
                    let mut evicted = Vec::new();
                    match map.status(&k) {
                        Some(old) => {
                            // An overwrite keeps the entry's queue and counter.
                            policy.update(&k, old.main, old.weight, w);
                            map.0.borrow_mut().insert(k, Status { weight: w, ..old });
                            reference.update(k, old, w);
                            policy.evict(&map, |k| evicted.push(*k));
                            prop_assert_eq!(&evicted, &reference.evict());
                        }
                        None => {
                            policy.insert(k, w);
            let main = false;
                            map.0.borrow_mut().insert(k, Status { freq: 0, main, weight: w });
                            policy.evict(&map, |k| evicted.push(*k));
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
            prop_assert!(policy.scanned <= scan_budget);
            prop_assert!(policy.weight() <= capacity || map.0.borrow().values().all(|s| s.weight == 0));
            prop_assert!(policy.queued() <= 2 * map.0.borrow().len() + 64 + 400);
        }
    }
}

#[test]
fn the_window_keeps_to_its_share_while_the_cache_fills() {
    let map = Map::default();
    let mut policy: TinyLfu<u32, RandomState> = TinyLfu::new(10_000, RandomState::new());
    for k in 0..5_000 {
        map.admit(&mut policy, k, 1, |_| panic!("evicted below capacity"));
        assert!(policy.window.len() as u64 <= policy.window_capacity);
    }
    assert_eq!(policy.weight(), 5_000);
    assert_eq!(policy.main.len() as u64, 5_000 - policy.window_capacity);
}

#[test]
fn a_scan_does_not_flush_the_frequently_read_keys() {
    let map = Map::default();
    let mut policy: TinyLfu<u32, RandomState> = TinyLfu::new(100, RandomState::new());
    // A request: a hit, or a miss that inserts. Returns whether it hit.
    let request = |policy: &mut TinyLfu<u32, RandomState>, k: u32| {
        if map.read(k) {
            return true;
        }
        policy.insert(k, 1);
        let status = Status {
            freq: 0,
            main: false,
            weight: 1,
        };
        map.0.borrow_mut().insert(k, status);
        policy.evict(&map, |_| {});
        false
    };
    // A hot set of 50 keys, read often.
    for _ in 0..10 {
        for k in 0..50 {
            request(&mut policy, k);
        }
    }
    // One pass over 10,000 keys never seen again (100 times the capacity), with no reads
    // of the hot set: the doorkeeper keeps the scan out of the frequency counts.
    for k in 100_000..110_000 {
        request(&mut policy, k);
    }
    let hot_left = (0..50).filter(|k| map.status(k).is_some()).count();
    assert_eq!(hot_left, 50, "the scan displaced hot keys");
    // Another pass over 20,000 keys never seen again, with the hot
    // set still read in between: once per 400 scanned keys. An LRU of this size would
    // miss every one of those reads.
    let (mut hot_reads, mut hot_hits) = (0, 0);
    for k in 1000..21_000 {
        request(&mut policy, k);
        if k % 400 == 0 {
            for hot in 0..50 {
                hot_reads += 1;
                hot_hits += u32::from(request(&mut policy, hot));
            }
        }
    }
    assert!(
        hot_hits * 100 >= hot_reads * 95,
        "the scan flushed the hot set: {hot_hits} hits of {hot_reads}"
    );
    let hot_left = (0..50).filter(|k| map.status(k).is_some()).count();
    assert_eq!(hot_left, 50);
    assert!(policy.weight() <= 100);
}

#[test]
fn zero_capacity_keeps_nothing_and_zero_weight_is_never_evicted() {
    let map = Map::default();
    let mut policy: TinyLfu<u32, RandomState> = TinyLfu::new(0, RandomState::new());
    let mut evicted = Vec::new();
    map.admit(&mut policy, 1, 1, |k| evicted.push(*k));
    assert_eq!(evicted, vec![1]);
    map.admit(&mut policy, 2, 0, |k| evicted.push(*k));
    map.admit(&mut policy, 3, 1, |k| evicted.push(*k));
    assert_eq!(
        evicted,
        vec![1, 3],
        "a zero-weight entry costs nothing, so stays"
    );
    assert!(map.status(&2).is_some());
}

#[test]
fn dead_items_are_compacted() {
    let map = Map::default();
    let mut policy: TinyLfu<u32, RandomState> = TinyLfu::new(1000, RandomState::new());
    for round in 0..1000u32 {
        for k in 0..10 {
            map.admit(&mut policy, k, 1, |_| {});
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

#[test]
fn the_hand_counts_the_entries_it_passes_over() {
    let map = Map::default();
    let mut policy: TinyLfu<u32, RandomState> = TinyLfu::new(10, RandomState::new());
    for k in 0..10 {
        map.admit(&mut policy, k, 1, |_| panic!("evicted below capacity"));
    }
    // Main holds 0..9 and the window 9; each of main's entries is read once.
    assert_eq!(policy.main.len(), 9);
    for k in 0..9 {
        assert!(map.read(k));
    }
    // The hand passes all nine, lowering their counters, and comes back to 0.
    map.admit(&mut policy, 10, 1, |_| {});
    assert_eq!(policy.scanned, 9);
    // Nothing read since: the first entry at the hand goes, without a step.
    map.admit(&mut policy, 11, 1, |_| {});
    assert_eq!(policy.scanned, 0);
    assert_eq!(policy.weight(), 10);
}

#[test]
fn weightless_entries_cost_the_hand_nothing_and_stay() {
    let capacity = 100u64;
    let map = Map::default();
    let mut policy: TinyLfu<u32, RandomState> = TinyLfu::new(capacity, RandomState::new());
    for k in 0..1_000 {
        map.admit(&mut policy, k, 0, |_| {
            panic!("a weightless entry was evicted")
        });
    }
    // A hot set of weighted entries beside them, read before every insert.
    for k in 10_000..13_000u32 {
        let resident: Vec<u32> = map.0.borrow().keys().copied().collect();
        for key in resident {
            for _ in 0..MAX_FREQ {
                map.read(key);
            }
        }
        map.admit(&mut policy, k, 1, |k| assert!(*k >= 10_000));
        assert!(policy.scanned <= SCAN_BUDGET, "{} steps", policy.scanned);
        assert!(policy.weight() <= capacity);
        // Main's queue holds only entries that weigh something.
        assert!(
            policy.main.len() as u64 <= capacity,
            "{}",
            policy.main.len()
        );
    }
    assert!((0..1_000).all(|k| map.status(&k).is_some()));
}

#[test]
fn a_weightless_main_entry_that_gains_weight_can_be_evicted() {
    let capacity = 10u64;
    let map = Map::default();
    let mut policy: TinyLfu<u32, RandomState> = TinyLfu::new(capacity, RandomState::new());
    for k in 0..20 {
        map.admit(&mut policy, k, 0, |_| panic!("evicted within capacity"));
    }
    // Weighted entries push the weightless ones out of the window into main; then they
    // leave, and main holds nothing that weighs.
    for k in 50..53 {
        map.admit(&mut policy, k, 1, |_| panic!("evicted within capacity"));
    }
    for k in 50..53 {
        let s = map.evict(&k).unwrap();
        policy.remove(s.main, s.weight);
    }
    assert_eq!(policy.weight(), 0);
    // An overwrite makes key 0, in main, weigh the whole capacity.
    let old = map.status(&0).unwrap();
    assert!(old.main);
    policy.update(&0, old.main, old.weight, 10);
    map.0.borrow_mut().insert(0, Status { weight: 10, ..old });
    policy.evict(&map, |_| panic!("evicted within capacity"));
    // One more unit, in the window (within its share): main is over its share, and key 0
    // is all it holds that weighs.
    let mut evicted = Vec::new();
    map.admit(&mut policy, 100, 1, |k| evicted.push(*k));
    assert_eq!(evicted, vec![0]);
    assert_eq!(policy.weight(), 1);
}

#[test]
fn one_insert_scans_at_most_the_budget_with_a_hot_resident_set() {
    let capacity = 1_000u64;
    let map = Map::default();
    let mut policy: TinyLfu<u32, RandomState> = TinyLfu::new(capacity, RandomState::new());
    let mut most = 0;
    for k in 0..5_000u32 {
        // Every resident entry read until its counter is saturated, before each insert.
        let resident: Vec<u32> = map.0.borrow().keys().copied().collect();
        for key in resident {
            for _ in 0..MAX_FREQ {
                map.read(key);
            }
        }
        map.admit(&mut policy, k, 1, |_| {});
        most = most.max(policy.scanned);
        assert!(
            policy.scanned <= SCAN_BUDGET,
            "insert of {k}: {} scan steps",
            policy.scanned
        );
        assert!(policy.weight() <= capacity);
        assert_eq!(map.0.borrow().len() as u64, policy.weight());
    }
    // The hand did scan: the bound is what held it.
    assert!(most > 0);
}

/// A shared bound that says "over" while the shard weighs more than `limit`.
fn shared_over(limit: u64) -> impl Fn(u64) -> bool {
    move |weight| weight > limit
}

#[test]
fn an_eviction_stops_at_its_budget_and_the_next_one_goes_on() {
    let map = Map::default();
    let mut policy: TinyLfu<u32, Hasher> = TinyLfu::new(1000, Hasher::default());
    for k in 0..100 {
        map.admit(&mut policy, k, 10, |_| panic!("evicted below capacity"));
    }
    // The cache must shed 900 of its 1000: ninety entries, more than one budget.
    let over = shared_over(100);
    let limit = Limit::Shared {
        over: &over,
        keep: None,
    };
    let mut evicted = 0;
    let mut budget = 64;
    policy.evict_within(&map, &limit, &mut budget, |_| evicted += 1);
    assert_eq!((evicted, budget), (64, 0));
    assert_eq!(policy.weight(), 360);
    let mut budget = 64;
    policy.evict_within(&map, &limit, &mut budget, |_| evicted += 1);
    assert_eq!((evicted, budget), (90, 38), "only what was still needed");
    assert_eq!(policy.weight(), 100);
    assert_eq!(map.0.borrow().len(), 10);
}

#[test]
fn a_shared_bound_lets_main_grow_past_its_share_and_spares_the_kept_entry() {
    let map = Map::default();
    // The shard's share is 10; the cache, shared with other shards, has room for 50 here.
    let mut policy: TinyLfu<u32, Hasher> = TinyLfu::new(10, Hasher::default());
    let over = shared_over(50);
    for k in 0..50 {
        policy.insert(k, 1);
        map.0.borrow_mut().insert(
            k,
            Status {
                freq: 0,
                main: false,
                weight: 1,
            },
        );
        let limit = Limit::Shared {
            over: &over,
            keep: None,
        };
        let mut budget = 64;
        policy.evict_within(&map, &limit, &mut budget, |_| {
            panic!("within the shared bound")
        });
    }
    assert_eq!(policy.weight(), 50);
    assert!(policy.main.len() >= 49, "main took the window's overflow");
    // An entry as heavy as all the others wins its way in (asked for often), then its own
    // shard evicts around it, never the entry itself, though the cache (now with room for
    // only 30 here) stays over: the other shards pay the rest.
    let over = shared_over(30);
    let heavy = 1000;
    let hash = Hasher::default().hash_one(heavy);
    for _ in 0..8 {
        policy.sketch.increment(hash);
    }
    policy.insert(heavy, 50);
    map.0.borrow_mut().insert(
        heavy,
        Status {
            freq: 0,
            main: false,
            weight: 50,
        },
    );
    let limit = Limit::Shared {
        over: &over,
        keep: Some(hash),
    };
    let mut budget = usize::MAX;
    let mut evicted = Vec::new();
    policy.evict_within(&map, &limit, &mut budget, |k| evicted.push(*k));
    assert_eq!(evicted.len(), 50, "every other entry went");
    assert!(!evicted.contains(&heavy));
    assert_eq!(policy.weight(), 50);
    assert!(map.status(&heavy).is_some_and(|s| s.main));
}

/// A map whose entries may be stale copies.
#[derive(Default)]
struct WithStale {
    map: Map,
    stale: RefCell<std::collections::HashSet<u32>>,
}

impl Residents<u32> for WithStale {
    fn status(&self, key: &u32) -> Option<Status> {
        self.map.status(key)
    }
    fn set(&self, key: &u32, freq: u8, main: bool) -> bool {
        self.map.set(key, freq, main)
    }
    fn pass(&self, key: &u32) -> Option<Status> {
        self.map.pass(key)
    }
    fn evict(&self, key: &u32) -> Option<Status> {
        self.stale.borrow_mut().remove(key);
        self.map.evict(key)
    }
    fn stale(&self, key: &u32) -> bool {
        self.stale.borrow().contains(key)
    }
}

#[test]
fn stale_copies_are_evicted_before_hot_entries() {
    let cache = WithStale::default();
    let mut policy = TinyLfu::new(100, Hasher::default());
    for key in 0..100 {
        cache.map.admit(&mut policy, key, 1, |_| ());
    }
    // Every entry hot; the first ten become stale copies.
    for key in 0..100 {
        cache.map.set(&key, 3, cache.map.status(&key).unwrap().main);
    }
    for key in 0..10 {
        cache.stale.borrow_mut().insert(key);
        policy.mark_stale(&cache, key);
    }
    let mut evicted = Vec::new();
    for key in 100..110 {
        policy.insert(key, 1);
        cache.map.0.borrow_mut().insert(
            key,
            Status {
                freq: 0,
                main: false,
                weight: 1,
            },
        );
        policy.evict(&cache, |k| evicted.push(*k));
    }
    evicted.sort();
    assert_eq!(evicted, (0..10).collect::<Vec<_>>());
}

#[test]
fn the_stale_queue_stays_within_twice_the_stale_copies_under_churn() {
    let cache = WithStale::default();
    let mut policy = TinyLfu::new(1_000_000, Hasher::default());
    // A million entries each stale for a moment, then gone (their window ended): never more
    // than a handful stale at once.
    for key in 0..1_000_000u32 {
        cache.stale.borrow_mut().insert(key);
        policy.mark_stale(&cache, key);
        if key >= 5 {
            cache.stale.borrow_mut().remove(&(key - 5));
        }
        assert!(policy.stale_queued() <= 2 * 6 + STALE_SLACK + 1);
    }
}
