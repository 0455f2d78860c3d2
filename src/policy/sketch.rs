//! A count-min sketch of 4-bit counters: how often keys were asked for, approximately,
//! including keys the cache no longer holds. The eviction policy consults it to decide
//! whether a new key is worth more than the entry it would displace.
//!
//! Four rows of counters, packed sixteen to a `u64`; a key's estimate is the smallest of its
//! four counters. The counters are laid out in blocks of eight words (two for each row),
//! aligned to 64 bytes: a key's four counters all sit in one block, chosen by its hash, so a
//! count or an estimate touches one cache line of counters, not four, plus the word that
//! holds both of the key's doorkeeper bits: two lines where it took six. This matters more
//! than the arithmetic: the policy shard's writers run on different cores, and each line
//! they share moves between them. Updates are *conservative*: only the counters equal to that minimum grow,
//! which keeps keys that share counters with frequent ones from looking frequent. Every
//! `sample` updates all counters are halved, so the sketch forgets old popularity.
//!
//! In front of the counters sits a *doorkeeper*, a Bloom filter of keys seen once: a key's
//! first request only sets its bits there, and only later requests reach the counters. Most
//! keys of a one-pass scan are never asked for twice, so they neither fill the counters with
//! noise nor bring on an ageing, and a frequently read set keeps its counts through a scan
//! many times the cache's size. The doorkeeper is cleared at every ageing, and when a
//! quarter of its bits' worth of keys went in (before false positives grow common).
//!
//! The sketch starts small and grows with the number of keys the policy holds (a grow starts
//! it over, empty), so a cache that never fills never pays for a full-size sketch.
//!
//! Invariants:
//! - An estimate never exceeds [`MAX`] + 1, and is never below the number of increments of
//!   that key since the sketch last aged, grew or cleared its doorkeeper (no false negatives;
//!   collisions only raise estimates).
//! - Memory is four rows of `width` half-bytes, plus `width` times six bits of doorkeeper,
//!   `width` a multiple of 32 (a block holds 32 counters of each row) at most `limit`: 19.25 bytes per key at full size, for a
//!   policy of more than 2,340 keys (smaller ones get up to 16,384 counters a row).
//!
//! Pure data: no locks, no tokio. Keys arrive as 64-bit hashes.
//!
//! The constants below were chosen on the hit-ratio traces (`ebb-peers hit-ratio`); the
//! figures behind each are in `benches/peers/README.md`.

/// The largest count a counter holds.
pub(crate) const MAX: u8 = 15;

/// Counters per row for each key the policy holds: fewer lose hits, more gain none; each
/// counter per key costs 2 bytes an entry.
const COUNTERS_PER_KEY: usize = 7;

/// Small sketches get up to 16 counters a key, up to this many a row (44 KiB in all): cheap,
/// and it helps small caches on cyclic traces.
const SMALL_WIDTH: usize = 16_384;

/// Counters a row for a policy holding `keys` keys.
fn width_for(keys: usize) -> usize {
    keys.saturating_mul(COUNTERS_PER_KEY)
        .max(keys.saturating_mul(16).min(SMALL_WIDTH))
}

/// Counters of one row in a block: a block is eight words of sixteen counters, two words a row.
const BLOCK_ROW: usize = 32;

/// Eight words of counters on one cache line.
#[derive(Debug, Clone, Copy, Default)]
#[repr(align(64))]
struct Block([u64; 8]);

/// Updates between agings, per counter in a row: a shorter memory (fewer updates between
/// halvings) ranks keys worse, a longer one changes little.
const SAMPLE_PER_COUNTER: u64 = 20;

/// Doorkeeper bits per counter in a row (42 bits a key): enough to keep a one-pass scan out
/// of the counts, as well as more bits would.
const DOOR_BITS_PER_COUNTER: usize = 6;

/// Odd multipliers that mix a hash into independent-looking indexes.
const SEEDS: [u64; 4] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0x27D4_EB2F_1656_67C5,
];

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Sketch {
    blocks: Vec<Block>,
    /// Counters per row, a multiple of 32 (whole blocks).
    width: usize,
    /// Updates since the last ageing.
    updates: u64,
    /// Updates between agings.
    sample: u64,
    /// The most counters per row the sketch grows to.
    limit: usize,
    /// The doorkeeper's bits.
    door: Vec<u64>,
    /// Keys let through the doorkeeper since it was last cleared.
    door_keys: usize,
}

impl Sketch {
    /// A sketch for a policy that holds up to `keys` keys.
    pub(crate) fn new(keys: u64) -> Self {
        // At most 2^27 counters a row (320 MiB in all), however large the capacity.
        let wanted = width_for(usize::try_from(keys).unwrap_or(usize::MAX).min(1 << 24));
        let limit = wanted.max(BLOCK_ROW).next_multiple_of(BLOCK_ROW);
        let mut sketch = Sketch {
            blocks: Vec::new(),
            width: 0,
            updates: 0,
            sample: 0,
            limit,
            door: Vec::new(),
            door_keys: 0,
        };
        sketch.reset(BLOCK_ROW);
        sketch
    }

    /// Start over, empty, with `width` counters a row.
    fn reset(&mut self, width: usize) {
        let width = width
            .clamp(BLOCK_ROW, self.limit)
            .next_multiple_of(BLOCK_ROW);
        // Four rows of `width` counters, sixteen counters a word.
        self.blocks = vec![Block::default(); width / BLOCK_ROW];
        self.width = width;
        self.updates = 0;
        self.sample = SAMPLE_PER_COUNTER * width as u64;
        self.door = vec![0; (width * DOOR_BITS_PER_COUNTER).div_ceil(64)];
        self.door_keys = 0;
    }

    /// Grow (starting over, at least doubling) once the policy holds more keys than the
    /// sketch is sized for, up to exactly the size for its capacity: no power-of-two round-up.
    pub(crate) fn fit(&mut self, keys: usize) {
        let wanted = width_for(keys);
        if wanted > self.width && self.width < self.limit {
            self.reset(wanted.max(2 * self.width));
        }
    }

    /// `hash` mixed with `seed`, scaled to `0..n` (multiply-shift: no power of two needed).
    fn scale(hash: u64, seed: u64, n: usize) -> usize {
        let mixed = (hash ^ seed).wrapping_mul(SEEDS[0] | 1) >> 32;
        ((mixed * n as u64) >> 32) as usize
    }

    /// The word and bit offset of `hash`'s counter in `row`: in the key's block, one of the
    /// row's two words, one of its sixteen counters (five more bits of the hash, remixed).
    fn slot(&self, hash: u64, row: usize) -> (usize, u32) {
        let block = Self::scale(hash, SEEDS[0], self.blocks.len());
        let pick = ((hash ^ SEEDS[3]).wrapping_mul(SEEDS[1]) >> (32 + 5 * row)) as usize & 31;
        (block * 8 + 2 * row + pick / 16, (pick % 16) as u32 * 4)
    }

    fn counter(&self, hash: u64, row: usize) -> u8 {
        let (word, shift) = self.slot(hash, row);
        (self.blocks[word / 8].0[word % 8] >> shift & 0xF) as u8
    }

    /// The smallest of `hash`'s counters.
    fn min_count(&self, hash: u64) -> u8 {
        (0..4).map(|row| self.counter(hash, row)).min().unwrap_or(0)
    }

    /// The doorkeeper's word for `hash`, and the mask of its two bits there (two distinct
    /// bits: the second is 1 to 63 places after the first).
    fn door_bits(&self, hash: u64) -> (usize, u64) {
        let word = Self::scale(hash, SEEDS[1] ^ SEEDS[2], self.door.len());
        let mixed = (hash ^ SEEDS[0]).wrapping_mul(SEEDS[2]) >> 40;
        let first = mixed % 64;
        let second = (first + 1 + (mixed >> 6) % 63) % 64;
        (word, 1 << first | 1 << second)
    }

    fn door_has(&self, hash: u64) -> bool {
        let (word, mask) = self.door_bits(hash);
        self.door[word] & mask == mask
    }

    /// How often `hash` was counted (an over-estimate when counters are shared).
    pub(crate) fn estimate(&self, hash: u64) -> u8 {
        self.min_count(hash) + u8::from(self.door_has(hash))
    }

    /// Count one request for `hash`.
    pub(crate) fn increment(&mut self, hash: u64) {
        if !self.door_has(hash) {
            let (word, mask) = self.door_bits(hash);
            self.door[word] |= mask;
            self.door_keys += 1;
            if self.door_keys * 4 >= self.door.len() * 64 {
                self.clear_door();
            }
            return;
        }
        let min = self.min_count(hash);
        if min == MAX {
            return;
        }
        for row in 0..4 {
            if self.counter(hash, row) == min {
                let (word, shift) = self.slot(hash, row);
                self.blocks[word / 8].0[word % 8] += 1 << shift;
            }
        }
        self.updates += 1;
        if self.updates >= self.sample {
            self.age();
        }
    }

    fn clear_door(&mut self) {
        self.door.fill(0);
        self.door_keys = 0;
    }

    /// Halve every counter, and clear the doorkeeper.
    fn age(&mut self) {
        self.clear_door();
        for word in self.blocks.iter_mut().flat_map(|b| &mut b.0) {
            *word = (*word >> 1) & 0x7777_7777_7777_7777;
        }
        self.updates /= 2;
    }

    /// Bytes of counters (test-only visibility).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        (self.blocks.len() * 8 + self.door.len()) * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        #![proptest_config(crate::model_test_config(200))]

        /// Between agings, no estimate is below the key's true count (capped at MAX).
        #[test]
        fn never_underestimates(hashes in prop::collection::vec(0..200u64, 1..2_000)) {
            let mut sketch = Sketch::new(1 << 20);
            sketch.fit(64);
            let mut exact: HashMap<u64, u32> = HashMap::new();
            for h in hashes {
                // Spread the small test values over the hash space, as real hashes are.
                let h = h.wrapping_mul(0x2545_F491_4F6C_DD1D);
                if sketch.updates + 1 >= sketch.sample {
                    break;
                }
                sketch.increment(h);
                *exact.entry(h).or_default() += 1;
            }
            for (&k, &n) in &exact {
                prop_assert!(u32::from(sketch.estimate(k)) >= n.min(u32::from(MAX)));
            }
        }
    }

    #[test]
    fn a_keys_counters_share_one_cache_line() {
        assert_eq!(std::mem::align_of::<Block>(), 64);
        let mut sketch = Sketch::new(100_000);
        sketch.fit(100_000);
        let mut h = 5u64;
        for _ in 0..1000 {
            h = h.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(1);
            let words: Vec<usize> = (0..4).map(|row| sketch.slot(h, row).0).collect();
            assert!(words.iter().all(|w| w / 8 == words[0] / 8), "{words:?}");
            // Each row has its own words in the block.
            assert!((0..4).all(|row| words[row] % 8 / 2 == row), "{words:?}");
        }
    }

    #[test]
    fn counts_saturate_and_age() {
        let mut sketch = Sketch::new(1000);
        for _ in 0..100 {
            sketch.increment(42);
        }
        // The first request went to the doorkeeper, the rest to the counters.
        assert_eq!(sketch.estimate(42), MAX + 1);
        sketch.age();
        assert_eq!(
            sketch.estimate(42),
            MAX / 2,
            "aged, and out of the doorkeeper"
        );
        // Ageing happens by itself after `sample` updates: the update count halves.
        let mut h = 1u64;
        let mut last = sketch.updates;
        loop {
            h = h.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(1);
            sketch.increment(h);
            assert!(sketch.updates < sketch.sample);
            if sketch.updates < last {
                break;
            }
            last = sketch.updates;
        }
        assert_eq!(sketch.updates, sketch.sample / 2);
    }

    #[test]
    fn keys_seen_once_stay_in_the_doorkeeper() {
        let mut sketch = Sketch::new(1000);
        sketch.fit(1000);
        for _ in 0..3 {
            sketch.increment(7);
        }
        // A scan of distinct keys, fewer than would clear the doorkeeper.
        let mut h = 99u64;
        for _ in 0..2000 {
            h = h.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(1);
            sketch.increment(h);
        }
        // Key 7's second and third requests were counted, and the few scan keys the Bloom
        // filter took for seen before (false positives, well under 1%).
        assert!((2..=2 + 20).contains(&sketch.updates), "{}", sketch.updates);
        assert!(sketch.estimate(7) >= 3);
        let mut h = 99u64;
        let mut total = 0u32;
        for _ in 0..2000 {
            h = h.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(1);
            total += u32::from(sketch.estimate(h));
        }
        assert!(total <= 2000 + 40, "scan keys look frequent: {total}");
    }

    #[test]
    fn frequent_keys_rank_above_rare_ones() {
        let mut sketch = Sketch::new(1000);
        sketch.fit(1000);
        let hash = |k: u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k;
        for round in 0..5u64 {
            for k in 0..100 {
                sketch.increment(hash(k));
            }
            for k in 0..500 {
                sketch.increment(hash(10_000 + round * 500 + k));
            }
        }
        let frequent = (0..100).filter(|&k| sketch.estimate(hash(k)) >= 5).count();
        let rare = (10_000..12_500)
            .filter(|&k| sketch.estimate(hash(k)) >= 5)
            .count();
        assert_eq!(frequent, 100);
        assert!(rare < 50, "{rare} rare keys look frequent");
    }

    #[test]
    fn grows_with_the_keys_held_up_to_its_limit() {
        let mut sketch = Sketch::new(1000);
        let small = sketch.bytes();
        sketch.fit(900);
        assert!(sketch.bytes() > small);
        // Four rows of 14,400 half-byte counters (16 a key while small), and 14,400 x 6 bits
        // of doorkeeper.
        assert_eq!(sketch.bytes(), 14_400 * 4 / 2 + 14_400 * 6 / 8);
        sketch.fit(1_000_000);
        assert_eq!(
            sketch.bytes(),
            16_000 * 4 / 2 + 16_000 * 6 / 8,
            "never beyond the capacity's size"
        );
    }
}
