//! The hand-off's reserve of free wheel node ids: a set of ids, one bit each, handed out
//! highest first.
//!
//! A plain data structure: no locks, no clock. The hand-off keeps it under its reserve's
//! mutex; the task adds the ids it freed, and a writer whose pool ran dry takes a batch.
//!
//! Why bits: after a burst, almost every id handed out is free, and a list of them costs 4
//! bytes each, while a bit each costs 1/32 of that, for ids that are dense by construction
//! (they come from a counter that advances only when no free id is in reach). Why highest
//! first: the nodes in use then gather in the wheel slab's last chunks, so that the others
//! hold no live node and are trimmed (see `time/wheel/slab.rs`); and while a cache fills with
//! one TTL, ids are freed in about the order they were handed out, so the highest free ids
//! are the ones freed last, whose slab cells the task touched most recently.
//!
//! Invariants:
//! - `len` is the number of bits set in `words`.
//! - Bit `w` of `summary` is set iff `words[w]` is not zero.
//! - `words` ends with a non-zero word, and `summary` is no longer than it needs to be for
//!   `words`: the set holds memory for its highest id, and no more.
//! - An empty set holds no memory: not even its bookkeeping, so that a cache that never
//!   frees a node (one built per request) pays 8 bytes for it.

use crate::time::wheel::NodeId;

/// Bits per word.
const BITS: usize = u64::BITS as usize;

#[derive(Debug, Default)]
pub(crate) struct FreeIds {
    bits: Option<Box<Bits>>,
}

impl FreeIds {
    pub(crate) const fn new() -> Self {
        FreeIds { bits: None }
    }

    /// Ids in the set.
    pub(crate) fn len(&self) -> usize {
        self.bits.as_ref().map_or(0, |bits| bits.len)
    }

    /// Adds `id`.
    ///
    /// # Panics
    ///
    /// If `id` is in the set already (an id freed twice is a bug of the caller's books).
    #[inline]
    pub(crate) fn insert(&mut self, id: NodeId) {
        self.bits.get_or_insert_with(Box::default).insert(id);
    }

    /// Moves up to `n` ids to `out`, highest first.
    pub(crate) fn take_highest(&mut self, n: usize, out: &mut Vec<NodeId>) {
        if let Some(bits) = &mut self.bits {
            bits.take_highest(n, out);
            if bits.len == 0 {
                self.bits = None;
            }
        }
    }

    /// Empties the set and gives back its memory.
    pub(crate) fn clear(&mut self) {
        self.bits = None;
    }

    /// The ids in the set, lowest first.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.bits.iter().flat_map(|bits| bits.iter())
    }

    #[cfg(test)]
    fn check(&self) {
        if let Some(bits) = &self.bits {
            assert_ne!(bits.len, 0, "an empty set holds memory");
            bits.check();
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bits.as_ref().map_or(0, |bits| {
            8 * (bits.words.capacity() + bits.summary.capacity()) + size_of::<Bits>()
        })
    }
}

/// A non-empty set's bits.
#[derive(Debug, Default)]
struct Bits {
    /// Bit `id % 64` of `words[id / 64]` is set iff `id` is in the set.
    words: Vec<u64>,
    /// Bit `w % 64` of `summary[w / 64]` is set iff `words[w] != 0`.
    summary: Vec<u64>,
    len: usize,
}

impl Bits {
    /// Adds `id`.
    ///
    /// # Panics
    ///
    /// If `id` is in the set already (an id freed twice is a bug of the caller's books).
    #[inline]
    fn insert(&mut self, id: NodeId) {
        let w = id as usize / BITS;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
            self.summary.resize(w / BITS + 1, 0);
        }
        let bit = 1 << (id as usize % BITS);
        let word = &mut self.words[w];
        assert!(*word & bit == 0, "ebb: node id {id} freed twice");
        if *word == 0 {
            self.summary[w / BITS] |= 1 << (w % BITS);
        }
        *word |= bit;
        self.len += 1;
    }

    /// Moves up to `n` ids to `out`, highest first.
    fn take_highest(&mut self, n: usize, out: &mut Vec<NodeId>) {
        let mut left = n.min(self.len);
        while left > 0 {
            // `len > 0`, so the last word is not zero.
            let w = self.words.len() - 1;
            let word = &mut self.words[w];
            while left > 0 && *word != 0 {
                let bit = BITS - 1 - word.leading_zeros() as usize;
                out.push((w * BITS + bit) as NodeId);
                *word &= !(1 << bit);
                left -= 1;
                self.len -= 1;
            }
            if *word == 0 {
                self.summary[w / BITS] &= !(1 << (w % BITS));
                self.drop_zero_top();
            }
        }
        if self.words.capacity() > 2 * self.words.len() + BITS {
            self.words.shrink_to(self.words.len());
            self.summary.shrink_to(self.summary.len());
        }
    }

    /// Drops the zero words at the top, found through the summary.
    fn drop_zero_top(&mut self) {
        while let Some(&top) = self.summary.last() {
            if top != 0 {
                let last =
                    (self.summary.len() - 1) * BITS + (BITS - 1 - top.leading_zeros() as usize);
                self.words.truncate(last + 1);
                return;
            }
            self.summary.pop();
        }
        self.words.clear();
    }

    /// The ids in the set, lowest first.
    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            (0..BITS)
                .filter(move |b| word >> b & 1 == 1)
                .map(move |b| (w * BITS + b) as NodeId)
        })
    }

    /// Every invariant of the module docs.
    #[cfg(test)]
    fn check(&self) {
        let bits: usize = self.words.iter().map(|w| w.count_ones() as usize).sum();
        assert_eq!(bits, self.len);
        assert_ne!(self.words.last(), Some(&0));
        assert_eq!(self.summary.len(), self.words.len().div_ceil(BITS));
        for (w, &word) in self.words.iter().enumerate() {
            assert_eq!(self.summary[w / BITS] >> (w % BITS) & 1 == 1, word != 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn hands_out_the_highest_ids_first() {
        let mut ids = FreeIds::new();
        for id in [700, 3, 64, 5000, 65, 2] {
            ids.insert(id);
        }
        ids.check();
        let mut out = Vec::new();
        ids.take_highest(3, &mut out);
        assert_eq!(out, vec![5000, 700, 65]);
        ids.insert(9000);
        ids.check();
        ids.take_highest(10, &mut out);
        assert_eq!(out, vec![5000, 700, 65, 9000, 64, 3, 2]);
        assert_eq!(ids.len(), 0);
        ids.check();
        assert_eq!(ids.bytes(), 0, "an empty set holds no memory");
    }

    #[test]
    #[should_panic(expected = "node id 9 freed twice")]
    fn an_id_freed_twice_panics() {
        let mut ids = FreeIds::new();
        ids.insert(9);
        ids.insert(9);
    }

    #[test]
    fn a_burst_of_a_million_ids_costs_a_bit_each() {
        let mut ids = FreeIds::new();
        (0..1_000_000).for_each(|id| ids.insert(id));
        let bytes = ids.bytes();
        // A bit each, doubled at most by the vector's growth: a list would take 4 MB.
        assert!(bytes <= 2 * 1_000_000 / 8 + 4096, "{bytes} bytes");
        let mut out = Vec::new();
        ids.take_highest(999_990, &mut out);
        assert!(out.iter().copied().eq((10..1_000_000).rev()));
        ids.check();
        assert_eq!(ids.iter().collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
        assert!(ids.bytes() < 256, "the words above the ids left are gone");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32),
        Take(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..300u32).prop_map(Op::Insert),
            1 => (1_000..5_000u32).prop_map(Op::Insert),
            2 => (0..40usize).prop_map(Op::Take),
        ]
    }

    proptest! {
        #![proptest_config(crate::model_test_config(256))]

        #[test]
        fn matches_a_sorted_set(ops in prop::collection::vec(op(), 1..300)) {
            let mut ids = FreeIds::new();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(id) => {
                        if model.insert(id) {
                            ids.insert(id);
                        }
                    }
                    Op::Take(n) => {
                        let mut out = Vec::new();
                        ids.take_highest(n, &mut out);
                        let want: Vec<u32> = model.iter().rev().copied().take(n).collect();
                        for id in &want {
                            model.remove(id);
                        }
                        prop_assert_eq!(out, want);
                    }
                }
                ids.check();
                prop_assert_eq!(ids.len(), model.len());
                prop_assert!(ids.iter().eq(model.iter().copied()));
            }
        }
    }
}
