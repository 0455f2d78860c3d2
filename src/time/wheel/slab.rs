//! The wheel's storage: a slab of cells in fixed-size chunks, each a live [`Node`] or a free
//! cell, and the markers the wheel's intrusive lists use.
//!
//! Invariants: a cell never moves while it is in memory (the slab grows by whole chunks), so
//! node ids stay valid; only the last chunk has room to spare. A chunk other than the last
//! whose every cell is held by the caller (no live node, nothing on the free list) may be
//! *trimmed*: its memory goes back, and it comes back, all its cells still held, when one
//! of them is next touched. So the slab's memory follows the nodes live now (in whole
//! chunks), while its ids follow the most ever held at once.

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

/// Cells per chunk of the slab: 2^12 (2^4 in ebb's own unit tests, so that their few
/// nodes span many chunks and trimming is exercised).
pub(super) const CHUNK_BITS: u32 = if cfg!(test) { 4 } else { 12 };
pub(super) const CHUNK: usize = 1 << CHUNK_BITS;

/// The slab: cells in chunks of [`CHUNK`], cell `id` at `chunks[id >> CHUNK_BITS]`.
///
/// Only the last chunk has room to spare, so the slab never holds more than `CHUNK` unused
/// cells (a `Vec` that doubles may hold as many unused cells as used ones), and growing never
/// moves a cell. The first chunk grows like a `Vec` up to `CHUNK`, so a small wheel stays
/// small. An empty chunk is a trimmed one (see [`trim`](Slab::trim)): the last one always
/// holds the slab's last cell.
pub(super) struct Slab<T> {
    pub(super) chunks: Vec<Chunk<T>>,
    len: usize,
}

/// A chunk's cells, and how many of them are live: the books [`Slab::trim`] reads.
pub(super) struct Chunk<T> {
    pub(super) cells: Vec<Cell<T>>,
    live: u32,
}

impl<T> Slab<T> {
    pub(super) const fn new() -> Self {
        Slab {
            chunks: Vec::new(),
            len: 0,
        }
    }

    /// Cells: live, free or reserved, trimmed ones included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Cells in memory.
    pub(super) fn cells(&self) -> usize {
        self.chunks.iter().map(|chunk| chunk.cells.len()).sum()
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
        let live = u32::from(matches!(cell, Cell::Live(_)));
        match self.chunks.last_mut() {
            Some(chunk) if chunk.cells.len() < CHUNK => {
                chunk.cells.push(cell);
                chunk.live += live;
            }
            _ => {
                let mut cells = Vec::with_capacity(if self.chunks.is_empty() { 0 } else { CHUNK });
                cells.push(cell);
                self.chunks.push(Chunk { cells, live });
            }
        }
        self.len += 1;
    }

    /// The cell `id`, if it exists and is in memory (a trimmed chunk holds no live node).
    pub(super) fn get(&self, id: u32) -> Option<&Cell<T>> {
        self.chunks
            .get((id >> CHUNK_BITS) as usize)?
            .cells
            .get(id as usize & (CHUNK - 1))
    }

    /// As [`get`](Self::get). Changing a cell from or to [`Cell::Live`] goes through
    /// [`replace`](Self::replace), which keeps the books.
    pub(super) fn get_mut(&mut self, id: u32) -> Option<&mut Cell<T>> {
        self.chunks
            .get_mut((id >> CHUNK_BITS) as usize)?
            .cells
            .get_mut(id as usize & (CHUNK - 1))
    }

    /// The cell `id`, which exists, brought back into memory if its chunk was trimmed. Not
    /// to change a cell from or to [`Cell::Live`] (see [`replace`](Self::replace)).
    #[inline]
    pub(super) fn cell_mut(&mut self, id: u32) -> &mut Cell<T> {
        let c = (id >> CHUNK_BITS) as usize;
        if self
            .chunks
            .get(c)
            .is_some_and(|chunk| chunk.cells.is_empty())
        {
            self.bring_back(c);
        }
        self.get_mut(id).expect("wheel: cell id out of range")
    }

    /// Brings the trimmed chunk `c` back into memory, every cell held by the caller, as it
    /// was.
    #[cold]
    fn bring_back(&mut self, c: usize) {
        let cells = &mut self.chunks[c].cells;
        cells.reserve_exact(CHUNK);
        cells.resize_with(CHUNK, || Cell::Free {
            next_free: RESERVED,
        });
    }

    /// Puts `cell` in cell `id` (which exists), returning the one it held, and keeps the
    /// count of live cells.
    #[inline]
    pub(super) fn replace(&mut self, id: u32, cell: Cell<T>) -> Cell<T> {
        let now = u32::from(matches!(cell, Cell::Live(_)));
        let old = std::mem::replace(self.cell_mut(id), cell);
        let chunk = &mut self.chunks[(id >> CHUNK_BITS) as usize];
        chunk.live = chunk.live + now - u32::from(matches!(old, Cell::Live(_)));
        old
    }

    /// Gives back the memory of every chunk but the last with no live cell; returns how
    /// many chunks it trimmed. The caller must hold every cell that is not live: with a
    /// cell on the free list, a trim would lose the list.
    pub(super) fn trim(&mut self) -> usize {
        let last = self.chunks.len().saturating_sub(1);
        let mut trimmed = 0;
        for chunk in &mut self.chunks[..last] {
            if chunk.live == 0 && !chunk.cells.is_empty() {
                debug_assert!(chunk.cells.iter().all(|cell| matches!(
                    cell,
                    Cell::Free {
                        next_free: RESERVED
                    }
                )));
                chunk.cells = Vec::new();
                trimmed += 1;
            }
        }
        trimmed
    }

    /// Every cell, a trimmed one as `None` (it is held by the caller).
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = Option<&Cell<T>>> {
        self.chunks.iter().flat_map(|chunk| {
            let trimmed = if chunk.cells.is_empty() { CHUNK } else { 0 };
            chunk
                .cells
                .iter()
                .map(Some)
                .chain(std::iter::repeat_n(None, trimmed))
        })
    }

    /// The count of live cells per chunk matches the cells, and only the last chunk may be
    /// neither full nor trimmed.
    #[cfg(test)]
    pub(super) fn check(&self) {
        let last = self.chunks.len().saturating_sub(1);
        for (c, chunk) in self.chunks.iter().enumerate() {
            let counted = chunk
                .cells
                .iter()
                .filter(|c| matches!(c, Cell::Live(_)))
                .count();
            assert_eq!(
                counted, chunk.live as usize,
                "live cells of a chunk miscounted"
            );
            let len = chunk.cells.len();
            assert!(
                c == last || len == 0 || len == CHUNK,
                "chunk {c} holds {len} cells"
            );
        }
        assert_ne!(self.chunks.last().map(|c| c.cells.len()), Some(0));
    }
}
