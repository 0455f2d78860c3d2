//! TinyLFU admission over a window FIFO and a CLOCK main queue: one instance per policy
//! shard (see the module docs of `policy`).

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};

use super::sketch::Sketch;

/// The largest value of an entry's read counter.
pub(crate) const MAX_FREQ: u8 = 3;

/// The window's share of the capacity, in thousandths (chosen on the hit-ratio traces; larger
/// windows lose hits on the cyclic trace).
const WINDOW_PER_MILLE: u64 = 2;

/// The most queue items main's CLOCK hand passes over in one [`TinyLfu::evict_within`] (an entry read
/// since the hand last passed it, whose counter it lowers); once they are spent, the entry at
/// the hand is the victim whatever its counter.
const SCAN_BUDGET: usize = 128;

/// Items of the stale queue beyond twice its live ones before it is compacted.
const STALE_SLACK: usize = 64;

/// A candidate must be counted more than this many times more than the victim to replace it.
const ADMIT_MARGIN: u8 = 1;

/// What an eviction keeps a shard within.
#[derive(Clone, Copy)]
pub(crate) enum Limit<'a> {
    /// The shard's own capacity (a shard that holds its share of the cache alone). Main
    /// takes a window candidate only while its own share has room.
    Own,
    /// A bound the shard shares with the others: over when `over`, given the shard's
    /// weight, says the cache is. While it is not, main takes every window candidate past
    /// the window's share, whatever main's own share (the capacity is the cache's, not the
    /// shard's). Main's hand never makes the entry whose key hashes to `keep` a victim (the
    /// entry the write that evicts has just admitted: the other shards pay what this one
    /// cannot without it).
    Shared {
        over: &'a dyn Fn(u64) -> bool,
        keep: Option<u64>,
    },
}

impl Limit<'_> {
    fn over(&self, weight: u64, capacity: u64) -> bool {
        match self {
            Limit::Own => weight > capacity,
            Limit::Shared { over, .. } => over(weight),
        }
    }

    fn shared(&self) -> bool {
        matches!(self, Limit::Shared { .. })
    }

    fn keep(&self) -> Option<u64> {
        match self {
            Limit::Own => None,
            Limit::Shared { keep, .. } => *keep,
        }
    }
}

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
    /// Whether `key`'s entry is a stale copy (kept past its deadline by `stale_if_error`):
    /// those go first when room is needed.
    fn stale(&self, key: &K) -> bool {
        let _ = key;
        false
    }
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
    /// Keys of entries that became stale copies, oldest first: evicted before any other
    /// entry. Items of entries no longer stale are dropped as they are found, or when the
    /// queue passes `stale_limit` (then set to twice what is left, so the work is amortised
    /// and the queue stays within twice the stale copies, plus a little).
    stale: VecDeque<K>,
    stale_limit: usize,
    window_weight: u64,
    main_weight: u64,
    /// Resident entries accounted for (to size the sketch and compact the queues).
    residents: usize,
    sketch: Sketch,
    hasher: S,
    /// Items main's hand may pass over in one eviction: [`SCAN_BUDGET`] (tests use others).
    scan_budget: usize,
    /// Scan steps of the last [`evict_within`](Self::evict_within): queue items main's hand passed over
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
            stale: VecDeque::new(),
            stale_limit: STALE_SLACK,
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

    /// The weight this shard is sized for (its window, its main queue's share, its sketch).
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
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
    /// [`evict_within`](Self::evict_within) next.
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

    /// A resident entry left the cache by another way than [`evict_within`](Self::evict_within) (removed,
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

    /// [`evict_within`](Self::evict_within) this shard's own capacity, with no budget: the
    /// model tests' entry point.
    #[cfg(test)]
    pub(crate) fn evict(&mut self, residents: &impl Residents<K>, evicted: impl FnMut(&K)) {
        let mut budget = usize::MAX;
        self.evict_within(residents, &Limit::Own, &mut budget, evicted);
    }

    /// Keep the window to its share, moving its oldest entries to main while main has room,
    /// and evict until the shard is no longer over `limit`, at most `budget` entries (each
    /// eviction takes one off it); each evicted key is passed to `evicted` (after
    /// [`Residents::evict`] removed it). The window moves even while the shard is not over,
    /// so it never holds more than its share: a cache filling up does not queue every entry
    /// there (16 bytes an item) only to move them all at once when it first overflows.
    /// However many victims it takes, main's hand passes over at most the scan budget in all
    /// (see [`victim`](Self::victim)).
    pub(crate) fn evict_within(
        &mut self,
        residents: &impl Residents<K>,
        limit: &Limit<'_>,
        budget: &mut usize,
        mut evicted: impl FnMut(&K),
    ) {
        // Stale copies go first, whatever their counters: at most the scan budget of items
        // looked at.
        let mut looked = 0;
        while looked < self.scan_budget && *budget > 0 && limit.over(self.weight(), self.capacity) {
            let Some(key) = self.stale.pop_front() else {
                break;
            };
            looked += 1;
            if residents.stale(&key) {
                self.drop_entry(residents, &key, budget, &mut evicted);
            }
        }
        // Items main's hand passed over (at most the budget).
        let mut steps = 0;
        // Every round takes a window item off for good, or main's victim (a rejected victim
        // goes back, but a window item goes instead), so `2 * window + main` falls by at least
        // one a round: the rounds are bounded without counting the hand's passes. A round
        // evicts at most one entry.
        let mut rounds = 2 * self.window.len() + self.main.len() + 1;
        while rounds > 0 {
            rounds -= 1;
            let over = limit.over(self.weight(), self.capacity);
            if !over && self.window_weight <= self.window_capacity {
                break;
            }
            if over && *budget == 0 {
                break;
            }
            if over && self.window_weight <= self.window_capacity && self.main_weight > 0 {
                // Main is over its share: its victim goes.
                let Some(victim) = self.victim(residents, &mut steps, limit.keep()) else {
                    break;
                };
                self.drop_entry(residents, &victim, budget, &mut evicted);
                continue;
            }
            let Some((key, hash)) = self.window.pop_front() else {
                // Nothing queued where the weight says there is: accounting drifted (a bug);
                // stop rather than spin.
                break;
            };
            let Some(candidate) = residents.status(&key).filter(|s| !s.main) else {
                continue; // Gone, or a dead item of an entry now in main.
            };
            // Main has room: in its own share, or, under a shared bound, while the cache is
            // not over it (a shard below its share may not take a candidate past admission
            // while the cache is over: that is another shard's room).
            let room = if limit.shared() {
                !over
            } else {
                let main_capacity = self.capacity - self.window_capacity.min(self.capacity);
                self.main_weight + u64::from(candidate.weight) <= main_capacity
            };
            if candidate.weight == 0 || room {
                self.promote(residents, key, candidate);
                continue;
            }
            if !over {
                // Main is full and nothing has to go: the candidate waits at the window's head.
                self.window.push_front((key, hash));
                break;
            }
            let Some(victim) = self.victim(residents, &mut steps, limit.keep()) else {
                self.drop_entry(residents, &key, budget, &mut evicted);
                continue;
            };
            let asked = self.sketch.estimate(hash);
            let incumbent = self.sketch.estimate(self.hasher.hash_one(&victim));
            if asked.saturating_add(candidate.freq) > incumbent.saturating_add(ADMIT_MARGIN) {
                self.drop_entry(residents, &victim, budget, &mut evicted);
                self.promote(residents, key, candidate);
            } else {
                self.main.push_front(victim);
                self.drop_entry(residents, &key, budget, &mut evicted);
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
    /// queues them again once they weigh something. The entry whose key hashes to `keep`
    /// goes back to the queue's tail; `None` once main's queue is empty, or holds nothing
    /// else.
    fn victim(
        &mut self,
        residents: &impl Residents<K>,
        steps: &mut usize,
        keep: Option<u64>,
    ) -> Option<K> {
        let mut kept = false;
        loop {
            let key = self.main.pop_front()?;
            if keep.is_some_and(|hash| self.hasher.hash_one(&key) == hash) {
                self.main.push_back(key);
                if kept {
                    return None;
                }
                kept = true;
                continue;
            }
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
                _ => {} // Gone, or a dead item of an entry now in the window.
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

    /// Evict `key`'s entry for room, taking one off `budget` if it was resident.
    fn drop_entry(
        &mut self,
        residents: &impl Residents<K>,
        key: &K,
        budget: &mut usize,
        evicted: &mut impl FnMut(&K),
    ) {
        if let Some(gone) = residents.evict(key) {
            *budget = budget.saturating_sub(1);
            let queue = self.weight_of(gone.main);
            *queue = queue.saturating_sub(u64::from(gone.weight));
            self.residents = self.residents.saturating_sub(1);
            evicted(key);
        }
    }

    /// `key`'s entry became a stale copy: it is the first to go when room is needed.
    pub(crate) fn mark_stale(&mut self, residents: &impl Residents<K>, key: K) {
        self.stale.push_back(key);
        if self.stale.len() > self.stale_limit {
            self.stale.retain(|key| residents.stale(key));
            self.stale_limit = 2 * self.stale.len() + STALE_SLACK;
        }
    }

    /// Stale queue items, live and dead (test-only visibility).
    #[cfg(test)]
    pub(crate) fn stale_queued(&self) -> usize {
        self.stale.len()
    }

    /// Drop dead items once they outnumber live ones.
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

    /// Queued items, live and dead (test-only visibility).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.window.len() + self.main.len()
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
