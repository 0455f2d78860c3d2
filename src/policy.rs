//! The eviction policy for bounded caches: TinyLFU admission over a window queue and a CLOCK main
//! queue, one instance per policy shard.
//!
//! Every new key enters a small *window* FIFO (0.2% of the capacity). When the window is over its
//! share, its oldest key becomes a *candidate* for the *main* queue, which holds the rest. While
//! main has room the candidate simply moves in (whether or not the shard is full). Otherwise, once
//! the shard is over its capacity, main offers a *victim*: main is a CLOCK,
//! so the hand passes over entries read since it last passed them (their read counter, at most 3,
//! counts down) and stops at the first one not read, or, once it has passed [`SCAN_BUDGET`]
//! entries in this eviction, at the first entry it reaches, read or not. The candidate replaces
//! the victim only if a frequency [`Sketch`] says it was asked for more often, by a margin of more than one request (its
//! reads while in the window count too); otherwise the candidate is evicted and the victim stays.
//! The sketch counts every *miss* (each time a key was inserted), so it remembers keys the cache no
//! longer holds, and an entry's reads, each once: the CLOCK hand counts one read each time it
//! passes an entry whose counter it lowers by one (an entry keeps its counter when it moves from
//! the window to main; reads beyond the counter's 3 before the hand comes are not counted); it halves its counts now and then to forget old popularity, and a doorkeeper
//! in front of it keeps keys asked for only once (a scan) out of its counts.
//!
//! Why this design, chosen by measurement (`cargo run --release -p ebb-peers -- hit-ratio`,
//! replaying seeded traces; figures in the README; every constant here was tuned on them): S3-FIFO
//! (a small queue, a main CLOCK and a ghost list of recently evicted keys), our first policy, was
//! within 0.6 points of quick_cache on Zipf traces but kept 15% of requests instead of moka's 39%
//! on a Zipf workload mixed with a cyclic sweep larger than the cache: a ghost list only remembers
//! keys for about one cache's worth of evictions, so a key that comes back every 15,000 requests
//! always looks new and the main queue cycles. A sketch remembers ten times longer than that in a
//! few bytes per key, and comparing candidate with victim keeps a stable subset of the sweep. The
//! margin of one request is measured too: admitting on any larger count churns the main queue with
//! keys no more frequent than what they displace (on the sweep: 0.1 points lost at both
//! capacities; 1.2 points at capacity 1,000 before the doorkeeper was added). CLOCK in place of an LRU means a hit only bumps a 2-bit counter stored in the
//! entry (a relaxed compare-and-swap, skipped once saturated): no read buffer, no lock, no sketch
//! update on the read path. Everything else happens on the inserting thread, in the key's policy
//! shard.
//!
//! Why the hand has a budget: an insert must not do work that grows with the shard's size or with
//! how hot its entries are. Without one, when every resident entry is read again between inserts,
//! the hand lowers every counter to zero, laps of the whole queue, before it finds a victim. With
//! it, once the hand has passed `SCAN_BUDGET` entries in one eviction, the next live entry at the
//! hand that weighs something is main's victim whatever its counter: from then on the hand only
//! takes items off the queue. That victim still faces the candidate in the sketch comparison, so a
//! resident set read constantly still keeps one-off keys out (its entries are counted often), and a
//! new key asked for often still gets in; when main is over its share with no candidate, that
//! victim goes, so the capacity bound holds. Rejecting the candidate outright once the budget is
//! spent would keep hot entries as well, but it never lets a popular new key in while the set stays
//! hot, and it kept no more hits on the traces. The budget trades hit ratio for the slowest insert:
//! a smaller one loses hits on the Zipf traces in a single policy shard, where the hand meets long
//! runs of read entries; a larger one costs more per insert and gains little (`ebb-peers
//! hit-ratio` and `ebb-peers clock-scan`).
//!
//! Main's queue holds only entries that weigh something: a weightless entry is never a victim
//! (evicting it frees nothing), so it moves to main without a queue item, the hand drops the item
//! of an entry that has come to weigh nothing, and [`TinyLfu::update`] queues an entry of main
//! again once it weighs something. However many weightless entries a weigher makes, the hand never
//! passes over them.
//!
//! The policy is a pure data structure: it knows nothing of tokio or of the map. It sees the
//! cache's entries through [`Residents`], and accounts weights as the store tells it about inserts,
//! updates and removals. Queue items are removed lazily: an item whose key is gone, or whose entry
//! now sits in the other queue, is dropped when it reaches the head (once; it is not a pass of the
//! hand and does not count against the budget: the removal that left it pays for it), and the
//! queues are compacted when stale items outnumber live ones.
//!
//! Invariants:
//! - `window_weight + main_weight` is the total weight of the resident entries this shard
//!   accounts for; after [`TinyLfu::evict`] it is at most the capacity, unless nothing the shard
//!   holds weighs anything.
//! - Every entry of main that weighs something has an item in main's queue.
//! - One [`TinyLfu::evict`] passes over at most [`SCAN_BUDGET`] items (entries whose counter the
//!   hand lowers and puts back); everything else it does takes an item off a queue for good (a
//!   rejected victim goes back, but its candidate leaves the window), so it always ends.
//! - No user code runs here; [`Residents`] implementations must not take this policy's lock.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};

use crate::sketch::Sketch;

/// The largest value of an entry's read counter.
pub(crate) const MAX_FREQ: u8 = 3;

/// The window's share of the capacity, in thousandths. Measured on the traces (two runs
/// each): 0.1%, 0.2% and 0.3% beat 0.5% by 0.1-0.2 points on the sweep at capacity 10,000 and
/// tie with it elsewhere; 1% and 2% lose up to 0.4 points on the sweep at
/// capacity 10,000, 10% and 20% lose on every trace.
const WINDOW_PER_MILLE: u64 = 2;

/// The most queue items main's CLOCK hand passes over in one [`TinyLfu::evict`] (an entry read
/// since the hand last passed it, whose counter it lowers); once they are spent, the entry at
/// the hand is the victim whatever its counter.
const SCAN_BUDGET: usize = 128;

/// A candidate must be counted more than this many times more than the victim to replace it.
const ADMIT_MARGIN: u8 = 1;

/// What the policy knows about one resident entry, read from the entry itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Status {
    /// Reads since it last passed the head of its queue, at most [`MAX_FREQ`].
    pub(crate) freq: u8,
    /// Whether it is in the main queue (else the window).
    pub(crate) main: bool,
    /// Its weight.
    pub(crate) weight: u32,
}

/// The policy's view of the cache's entries.
pub(crate) trait Residents<K> {
    /// The entry for `key`, if resident.
    fn status(&self, key: &K) -> Option<Status>;
    /// Set the entry's counter and queue; whether it was still resident (an entry may leave
    /// the cache by removal or expiry at any time, without this policy's lock).
    fn set(&self, key: &K, freq: u8, main: bool) -> bool;
    /// The CLOCK hand passes `key`'s entry: its status as it was, and if it is in main and was
    /// read since the hand last passed, its counter one lower (in one lookup).
    fn pass(&self, key: &K) -> Option<Status>;
    /// Remove the entry for `key` from the cache for room; its status, if it was resident.
    fn evict(&self, key: &K) -> Option<Status>;
}

/// One shard's policy state.
#[derive(Debug)]
pub(crate) struct TinyLfu<K, S> {
    capacity: u64,
    window_capacity: u64,
    /// New keys with their hashes (the window is small, so keeping them costs little and
    /// spares hashing a candidate again).
    window: VecDeque<(K, u64)>,
    main: VecDeque<K>,
    window_weight: u64,
    main_weight: u64,
    /// Resident entries accounted for (to size the sketch and compact the queues).
    residents: usize,
    sketch: Sketch,
    hasher: S,
    /// Items main's hand may pass over in one eviction: [`SCAN_BUDGET`] (tests use others).
    scan_budget: usize,
    /// Scan steps of the last [`evict`](Self::evict): queue items main's hand passed over
    /// without evicting them (test-only visibility).
    #[cfg(test)]
    scanned: usize,
}

impl<K: Hash + Eq + Clone, S: BuildHasher> TinyLfu<K, S> {
    pub(crate) fn new(capacity: u64, hasher: S) -> Self {
        TinyLfu {
            capacity,
            window_capacity: (capacity.saturating_mul(WINDOW_PER_MILLE) / 1000).max(1),
            window: VecDeque::new(),
            main: VecDeque::new(),
            window_weight: 0,
            main_weight: 0,
            residents: 0,
            sketch: Sketch::new(capacity),
            hasher,
            scan_budget: SCAN_BUDGET,
            #[cfg(test)]
            scanned: 0,
        }
    }

    /// A policy whose hand passes over at most `scan_budget` items an eviction.
    #[cfg(test)]
    fn with_scan_budget(capacity: u64, hasher: S, scan_budget: usize) -> Self {
        TinyLfu {
            scan_budget,
            ..Self::new(capacity, hasher)
        }
    }

    /// Whether an entry of `weight` can be held at all: a heavier one is evicted on its own,
    /// rather than flushing the shard before it.
    pub(crate) fn fits(&self, weight: u32) -> bool {
        u64::from(weight) <= self.capacity
    }

    /// The total weight accounted for.
    pub(crate) fn weight(&self) -> u64 {
        self.window_weight + self.main_weight
    }

    /// [`insert_hashed`](Self::insert_hashed), hashing the key here.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, key: K, weight: u32) {
        let hash = self.hasher.hash_one(&key);
        self.insert_hashed(key, hash, weight);
    }

    /// A new entry for `key` of `weight` became resident, in the window (the entry's own
    /// state says so already); `hash` is the key's hash by this policy's hasher. Call
    /// [`evict`](Self::evict) next.
    pub(crate) fn insert_hashed(&mut self, key: K, hash: u64, weight: u32) {
        self.sketch.increment(hash);
        self.window_weight += u64::from(weight);
        self.window.push_back((key, hash));
        self.residents += 1;
        self.sketch.fit(self.residents);
    }

    /// A resident entry's weight changed from `old` to `new` (an overwrite). A main entry that
    /// weighed nothing has no item in main's queue: once it weighs something it gets one, so
    /// the hand can evict it.
    pub(crate) fn update(&mut self, key: &K, main: bool, old: u32, new: u32) {
        let queue = self.weight_of(main);
        *queue = (*queue + u64::from(new)).saturating_sub(u64::from(old));
        if main && old == 0 && new > 0 {
            self.main.push_back(key.clone());
        }
    }

    /// A resident entry left the cache by another way than [`evict`](Self::evict) (removed,
    /// expired, invalidated). Its queue item is skipped when it reaches the head.
    pub(crate) fn remove(&mut self, main: bool, weight: u32) {
        let queue = self.weight_of(main);
        *queue = queue.saturating_sub(u64::from(weight));
        self.residents = self.residents.saturating_sub(1);
    }

    fn weight_of(&mut self, main: bool) -> &mut u64 {
        if main {
            &mut self.main_weight
        } else {
            &mut self.window_weight
        }
    }

    /// Keep the window to its share, moving its oldest entries to main while main has room,
    /// and evict until the shard is within its capacity; each evicted key is passed to
    /// `evicted` (after [`Residents::evict`] removed it). The window moves even while the
    /// shard is not full, so it never holds more than its share: a cache filling up does not
    /// queue every entry there (16 bytes an item) only to move them all at once when it first
    /// overflows. However many victims it takes, main's hand passes over at most the scan
    /// budget in all (see [`victim`](Self::victim)).
    pub(crate) fn evict(&mut self, residents: &impl Residents<K>, mut evicted: impl FnMut(K)) {
        // Items main's hand passed over (at most the budget).
        let mut steps = 0;
        // Every round takes a window item off for good, or main's victim (a rejected victim
        // goes back, but a window item goes instead), so `2 * window + main` falls by at least
        // one a round: the rounds are bounded without counting the hand's passes.
        let mut rounds = 2 * self.window.len() + self.main.len() + 1;
        while rounds > 0 {
            rounds -= 1;
            let over = self.weight() > self.capacity;
            if !over && self.window_weight <= self.window_capacity {
                break;
            }
            if over && self.window_weight <= self.window_capacity && self.main_weight > 0 {
                // Main is over its share: its victim goes.
                let Some(victim) = self.victim(residents, &mut steps) else {
                    break;
                };
                self.drop_entry(residents, &victim, &mut evicted);
                continue;
            }
            let Some((key, hash)) = self.window.pop_front() else {
                // Nothing queued where the weight says there is: accounting drifted (a bug);
                // stop rather than spin.
                break;
            };
            let Some(candidate) = residents.status(&key).filter(|s| !s.main) else {
                continue; // Gone, or a stale item of an entry now in main.
            };
            let main_capacity = self.capacity - self.window_capacity.min(self.capacity);
            if candidate.weight == 0
                || self.main_weight + u64::from(candidate.weight) <= main_capacity
            {
                self.promote(residents, key, candidate);
                continue;
            }
            if !over {
                // Main is full and nothing has to go: the candidate waits at the window's head.
                self.window.push_front((key, hash));
                break;
            }
            let Some(victim) = self.victim(residents, &mut steps) else {
                self.drop_entry(residents, &key, &mut evicted);
                continue;
            };
            let asked = self.sketch.estimate(hash);
            let incumbent = self.sketch.estimate(self.hasher.hash_one(&victim));
            if asked.saturating_add(candidate.freq) > incumbent.saturating_add(ADMIT_MARGIN) {
                self.drop_entry(residents, &victim, &mut evicted);
                self.promote(residents, key, candidate);
            } else {
                self.main.push_front(victim);
                self.drop_entry(residents, &key, &mut evicted);
            }
        }
        #[cfg(test)]
        {
            self.scanned = steps;
        }
        self.compact(residents);
    }

    /// Take main's CLOCK victim off the queue: the first live entry not read since the hand
    /// last passed it. Entries read since get another lap, their counter one lower (and their
    /// reads count in the sketch now), as long as `steps` (this eviction's passes so far) is
    /// within the budget; after that, the first live entry at the hand is the victim whatever
    /// its counter. Items of weightless main entries are dropped where the hand finds them (an
    /// entry reweighed to nothing): evicting them frees nothing, and [`update`](Self::update)
    /// queues them again once they weigh something. `None` once main's queue is empty.
    fn victim(&mut self, residents: &impl Residents<K>, steps: &mut usize) -> Option<K> {
        loop {
            let key = self.main.pop_front()?;
            if *steps >= self.scan_budget {
                match residents.status(&key) {
                    Some(s) if s.main && s.weight > 0 => return Some(key),
                    _ => continue, // Gone, in the window now, or weightless.
                }
            }
            match residents.pass(&key) {
                Some(s) if s.main && s.weight == 0 => {} // Weightless: no item until it weighs.
                Some(s) if s.main && s.freq > 0 => {
                    *steps += 1;
                    // The read the hand just consumed counts once in the sketch.
                    self.sketch.increment(self.hasher.hash_one(&key));
                    self.main.push_back(key);
                }
                Some(s) if s.main => return Some(key),
                _ => {} // Gone, or a stale item of an entry now in the window.
            }
        }
    }

    /// Move a window entry to main, with its read counter (main's hand counts those reads as
    /// it consumes them); a weightless one gets no item in main's queue. If it left the cache
    /// since its status was read, its weight stays with the window, where its removal takes it
    /// from.
    fn promote(&mut self, residents: &impl Residents<K>, key: K, status: Status) {
        let weight = status.weight;
        if !residents.set(&key, status.freq, true) {
            return;
        }
        self.window_weight = self.window_weight.saturating_sub(u64::from(weight));
        self.main_weight += u64::from(weight);
        if weight > 0 {
            self.main.push_back(key);
        }
    }

    /// Evict `key`'s entry for room.
    fn drop_entry(&mut self, residents: &impl Residents<K>, key: &K, evicted: &mut impl FnMut(K)) {
        if let Some(gone) = residents.evict(key) {
            let queue = self.weight_of(gone.main);
            *queue = queue.saturating_sub(u64::from(gone.weight));
            self.residents = self.residents.saturating_sub(1);
            evicted(key.clone());
        }
    }

    /// Drop stale items once they outnumber live ones.
    fn compact(&mut self, residents: &impl Residents<K>) {
        if self.window.len() + self.main.len() <= 2 * self.residents + 64 {
            return;
        }
        let mut seen = HashSet::with_capacity(self.residents);
        // Keep a key's first (oldest) live item; later ones are duplicates.
        // Main's items only for entries that weigh something (as the hand keeps it).
        let mut keep = |key: &K, main: bool| {
            residents
                .status(key)
                .is_some_and(|s| s.main == main && (!main || s.weight > 0))
                && seen.insert(key.clone())
        };
        self.window.retain(|(key, _)| keep(key, false));
        self.main.retain(|key| keep(key, true));
    }

    /// Queued items, live and stale (test-only visibility).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.window.len() + self.main.len()
    }
}

#[cfg(test)]
mod tests {
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
            evicted: impl FnMut(u32),
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
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

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
                                policy.evict(&map, |k| evicted.push(k));
                                prop_assert_eq!(&evicted, &reference.evict());
                            }
                            None => {
                                policy.insert(k, w);
                let main = false;
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
        map.admit(&mut policy, 1, 1, |k| evicted.push(k));
        assert_eq!(evicted, vec![1]);
        map.admit(&mut policy, 2, 0, |k| evicted.push(k));
        map.admit(&mut policy, 3, 1, |k| evicted.push(k));
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
            map.admit(&mut policy, k, 1, |k| assert!(k >= 10_000));
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
        map.admit(&mut policy, 100, 1, |k| evicted.push(k));
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
}
