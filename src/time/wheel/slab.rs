//! The wheel's storage: a slab of cells in fixed-size chunks, each a live [`Node`] or a free
//! cell, and the markers the wheel's intrusive lists use.
//!
//! Invariants: a cell never moves once allocated (the slab grows by whole chunks and never
//! shrinks), so node ids stay valid; only the last chunk has room to spare.

use std::num::NonZeroU64;

/// End-of-list marker. It is one of the ids reserved by the caller, so no node has it.
pub(super) const NIL: u32 = u32::MAX;
/// `prev` of a node linked nowhere: returned by `poll` (or between steps of a move). It is
/// the other id reserved by the caller, so no node has it either.
pub(super) const UNLINKED: u32 = u32::MAX - 1;

/// The latest tick a node is filed at; a later `when` counts as this one. (Nodes store
/// `!when`, which is then never zero: the niche holds a slab cell's `Free` variant.)
pub(super) const MAX_TICK: u64 = u64::MAX - 1;

/// An allocated node. It does not record where it is linked: a linked node is always where
/// [`Wheel::loc_for`](super::Wheel::loc_for) puts its `when` (see the invariant), and an unlinked one has `prev ==
/// UNLINKED`. That keeps a node at 16 bytes plus its item.
pub(super) struct Node<T> {
    pub(super) item: T,
    /// `!when`: never zero, as `when <= MAX_TICK`.
    pub(super) inverted_when: NonZeroU64,
    pub(super) prev: u32,
    pub(super) next: u32,
}

impl<T> Node<T> {
    pub(super) fn new(item: T, when: u64) -> Self {
        Node {
            item,
            inverted_when: Self::invert(when),
            prev: UNLINKED,
            next: NIL,
        }
    }

    pub(super) fn invert(when: u64) -> NonZeroU64 {
        NonZeroU64::new(!when.min(MAX_TICK)).expect("the inverse of a tick below u64::MAX")
    }

    pub(super) fn when(&self) -> u64 {
        !self.inverted_when.get()
    }
}

/// A slab cell. `Free` fits in the niche of `Node::inverted_when`, so it adds no size.
pub(super) enum Cell<T> {
    Live(Node<T>),
    /// On the free list (`next_free` is the next free cell or `NIL`), or, with `next_free ==
    /// RESERVED`, held by the caller to link later.
    Free {
        next_free: u32,
    },
}

/// `next_free` of a cell whose id the caller holds (see [`Wheel::link`](super::Wheel::link)).
pub(super) const RESERVED: u32 = UNLINKED;

/// Cells per chunk of the slab: 2^12.
pub(super) const CHUNK_BITS: u32 = 12;
pub(super) const CHUNK: usize = 1 << CHUNK_BITS;

/// The slab: cells in chunks of [`CHUNK`], cell `id` at `chunks[id >> CHUNK_BITS]`.
///
/// Only the last chunk has room to spare, so the slab never holds more than `CHUNK` unused
/// cells (a `Vec` that doubles may hold as many unused cells as used ones), and growing never
/// moves a cell. The first chunk grows like a `Vec` up to `CHUNK`, so a small wheel stays
/// small.
pub(super) struct Slab<T> {
    pub(super) chunks: Vec<Vec<Cell<T>>>,
    len: usize,
}

impl<T> Slab<T> {
    pub(super) const fn new() -> Self {
        Slab {
            chunks: Vec::new(),
            len: 0,
        }
    }

    /// Cells: live, free or reserved.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Adds reserved cells until there are `len`.
    pub(super) fn grow_to(&mut self, len: usize) {
        while self.len < len {
            self.push(Cell::Free {
                next_free: RESERVED,
            });
        }
    }

    /// Appends a cell; its id is the old `len`.
    pub(super) fn push(&mut self, cell: Cell<T>) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(cell),
            _ => {
                let mut chunk = Vec::with_capacity(if self.chunks.is_empty() { 0 } else { CHUNK });
                chunk.push(cell);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    pub(super) fn get(&self, id: u32) -> Option<&Cell<T>> {
        self.chunks
            .get((id >> CHUNK_BITS) as usize)?
            .get(id as usize & (CHUNK - 1))
    }

    pub(super) fn get_mut(&mut self, id: u32) -> Option<&mut Cell<T>> {
        self.chunks
            .get_mut((id >> CHUNK_BITS) as usize)?
            .get_mut(id as usize & (CHUNK - 1))
    }

    /// The cell `id`, which exists.
    pub(super) fn cell_mut(&mut self, id: u32) -> &mut Cell<T> {
        self.get_mut(id).expect("wheel: cell id out of range")
    }

    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &Cell<T>> {
        self.chunks.iter().flatten()
    }
}
