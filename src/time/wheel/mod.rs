//! A hierarchical timing wheel: the expiry task's index of deadlines.
//!
//! The wheel is a plain data structure. It knows nothing about clocks, tasks or locks: the
//! caller turns time into `u64` ticks (rounding deadlines up), files nodes with
//! [`Wheel::link`] (under ids it hands out itself, or the caller's), and drains whatever is due with [`Wheel::poll`], using
//! [`Wheel::next_expiration`] to decide how long to sleep.
//!
//! # Layout
//!
//! There are `LEVELS` = 6 levels of 64 slots. A slot at level `l` covers `64^l` ticks, so a
//! whole level covers `64^(l + 1)` ticks and the wheel as a whole sees `64^6 = 2^36` ticks
//! ahead of its current tick, `elapsed`. Reading a tick as base-64 digits, digit `l`
//! (bits `6l .. 6l + 6`) is the slot index at level `l`.
//!
//! Each slot is an intrusive doubly-linked list threaded through the nodes of a slab (`u32`
//! `prev` / `next` indices, one head per slot), so filing, unfiling and moving a node are
//! O(1) and need no allocation once the slab has grown. Freed nodes go on a free list and
//! their ids are reused. The slab grows by chunks of 4,096 cells, never by doubling, so it
//! holds at most one chunk of cells beyond the most nodes it has held at once; for a caller
//! that holds the ids it does not link, [`Wheel::trim`] gives back every chunk but the last
//! with no live node, so memory follows the nodes live now. Each level also has a 64-bit
//! bitmap with one bit per non-empty slot,
//! and there is one extra list, the *due* list, for nodes whose deadline has already been
//! reached (inserted in the past, or brought down to "due" while advancing).
//!
//! A node is filed at the level of the **highest base-64 digit in which `when` and `elapsed`
//! differ**, in the slot given by `when`'s digit at that level. Since `when > elapsed`, that
//! digit of `when` is strictly greater than the same digit of `elapsed`.
//!
//! # Invariant
//!
//! For a slot `s` of level `l`, call its *start* the first tick after `elapsed` whose digit
//! `l` is `s` and whose lower digits are all zero. Between calls, every node filed at
//! `(l, s)` satisfies:
//!
//! * `elapsed < start <= when`, and `(l, s)` is exactly where a fresh filing of the node
//!   would put it now: `l` is the highest digit in which `when` and `elapsed` differ (capped
//!   at the top level) and `s` is `when`'s digit `l`;
//! * below the top level that means `when` and `elapsed` agree on every digit above `l`,
//!   and `when`'s digit `l` is greater than `elapsed`'s; hence `start` lies in the current
//!   `64^(l + 1)` block and `when` lies in `[start, start + 64^l)`.
//!
//! Every node on the due list has `when <= elapsed`.
//!
//! So a node need not record where it is linked: its list is the one [`Wheel::loc_for`] gives
//! for its `when`, which is how unlinking a list's head finds the head to update. A node
//! linked nowhere has `prev == UNLINKED`. A node is then its item plus 16 bytes (`when`,
//! `prev`, `next`); `when` is stored inverted, never zero since ticks stop at `MAX_TICK`
//! (`u64::MAX - 1`), and that niche holds a free slab cell at no cost.
//!
//! Two consequences make the wheel cheap to run. First, for `l` below the top, every slot
//! start at level `l` is below the next multiple of `64^(l + 1)` after `elapsed`, and every
//! slot start at level `l + 1` is at or above it, so the earliest non-empty slot is simply the first occupied
//! slot after `elapsed`'s digit at the lowest non-empty level: found with one rotation and
//! one `trailing_zeros` per level, without looking at any node. Second, a slot's start is a
//! lower bound for every deadline in it, which is what [`Wheel::next_expiration`] returns
//! (so it may name a slot that merely needs cascading; it is never later than the earliest
//! deadline).
//!
//! # Advancing
//!
//! `poll(now)` never walks ticks. It takes every occupied slot whose start is `<= now`
//! (per level, in ring order from `elapsed`'s digit, stopping at the first start beyond
//! `now`), moves `elapsed` straight to `now`, and re-files each node it took against the
//! new `elapsed`: a node with `when <= now` goes to the due list, any other goes to the
//! level where it now belongs. Re-filing a node out of a below-top slot always lands it
//! strictly lower (the slot's start is `<= now < when < start + 64^l`, so `now` and `when`
//! now agree on digit `l` too), or on the due list. So a node is taken out of a slot at
//! most six times per filing (far deadlines aside, below), and one `poll` costs O(1) per slot
//! it empties, plus O(1) per node it returns or moves down, plus O(levels). A below-top slot
//! whose whole span is due (a level-0 slot is one tick) is spliced in as the due list when
//! that is empty, without visiting its nodes: its list is already a valid due list.
//!
//! Moving `elapsed` to `now` keeps the invariant for the slots left behind: their starts
//! are `> now`, so `now` still shares their digits above `l` (it lies between the old
//! `elapsed` and the start, which share them) and its digit `l` is still smaller.
//!
//! # Far deadlines
//!
//! A deadline `2^36` or more ticks away has its highest differing digit above the top
//! level. It goes to the top level anyway, in the slot of `when`'s digit 5. That slot may
//! be at or behind `elapsed`'s digit 5, in which case its start is in the *next* `2^36`
//! block: the top level is a ring, searched by rotating the bitmap past `elapsed`'s digit.
//! When the slot's start comes round, the node is simply re-filed (perhaps into the top
//! level again), so a node is never returned before its tick. Its start is still `<= when`:
//! `when` is at least one block past `elapsed`'s block and has digit 5 equal to the slot.
//! Such a node costs one extra slot visit per `2^36` ticks the wheel crosses while
//! sleeping to [`Wheel::next_expiration`], and a far jump in one `poll` costs one visit.
//!
//! All tick arithmetic is on `u64` without overflow: a wrapping top-level slot needs
//! `when` in a later block than `elapsed`, which the last block of `u64` cannot have, and
//! the few additions are saturating regardless.
//!
//! # Never early
//!
//! `poll(now)` returns a node only from the due list, and a node is put there only when
//! `when <= elapsed` (a `when` past `MAX_TICK` is filed at `MAX_TICK`, a tick no clock of
//! the cache reaches), while `poll` first raises `elapsed` to `now` and never beyond (a `now`
//! behind `elapsed` counts as `elapsed`). Nodes still in slots have
//! `when >= start > elapsed`, so none of them can be mistaken for due.

mod slab;
#[cfg(test)]
mod tests;

use std::mem;

use slab::{Cell, Node, Slab, NIL, RESERVED, UNLINKED};

/// Index of a node in the wheel's slab. Values `u32::MAX` and `u32::MAX - 1` are reserved by
/// the caller and never returned.
pub(crate) type NodeId = u32;

/// Number of levels.
const LEVELS: usize = 6;
/// Bits of a tick consumed by one level (64 slots).
const SLOT_BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << SLOT_BITS;
/// Mask for one base-64 digit.
const DIGIT_MASK: u64 = (SLOTS as u64) - 1;
/// The top level's index.
const TOP: usize = LEVELS - 1;
/// Ticks the wheel sees ahead of `elapsed`: `64^6`.
#[cfg(test)]
const HORIZON: u64 = 1 << (SLOT_BITS as u64 * LEVELS as u64);

/// The slab never grows to this many nodes, keeping ids clear of the reserved values.
const MAX_NODES: usize = (u32::MAX - 1) as usize;

/// Where a linked node is, or belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    /// Filed in slot `slot` of level `level`.
    Slot { level: u8, slot: u8 },
    /// On the due list: `when <= elapsed`.
    Due,
}

/// A six-level hierarchical timing wheel over `u64` ticks holding one `T` per node.
pub(crate) struct Wheel<T> {
    /// The slab; ids index it.
    entries: Slab<T>,
    /// First free cell, or `NIL`.
    free_head: u32,
    /// Cells on the free list.
    free: usize,
    /// Allocated nodes (scheduled plus fired-not-removed).
    len: usize,
    /// The wheel's current tick.
    elapsed: u64,
    /// List head of every slot, `NIL` when empty; indexed `[level][slot]`. Left unallocated
    /// until the first node is linked into a slot, so that an idle cache's task stays small.
    heads: Vec<[u32; SLOTS]>,
    /// Bit `s` of `occupied[l]` is set iff slot `(l, s)` is non-empty.
    occupied: [u64; LEVELS],
    /// Head of the due list.
    due_head: u32,
    /// Slots emptied by `poll`.
    slots_visited: u64,
}

impl<T> Wheel<T> {
    /// An empty wheel at tick 0.
    pub(crate) fn new() -> Self {
        Wheel {
            entries: Slab::new(),
            free_head: NIL,
            free: 0,
            len: 0,
            elapsed: 0,
            heads: Vec::new(),
            occupied: [0; LEVELS],
            due_head: NIL,
            slots_visited: 0,
        }
    }

    /// Allocated nodes: scheduled ones plus fired ones not yet removed.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no node is allocated.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The wheel's current tick.
    #[cfg(test)]
    pub(crate) fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// Slots emptied by [`poll`](Self::poll) so far.
    #[cfg(test)]
    pub(crate) fn slots_visited(&self) -> u64 {
        self.slots_visited
    }

    /// Files `item` at tick `when` (at most `MAX_TICK`) under an id of the wheel's choosing;
    /// a `when` at or before `elapsed` is due at the next poll. For a wheel whose ids nobody
    /// else hands out (see [`link`](Self::link)).
    #[cfg(test)]
    pub(crate) fn insert(&mut self, when: u64, item: T) -> NodeId {
        let id = self.take_free().unwrap_or(self.entries.len() as NodeId);
        self.link(id, when, item);
        id
    }

    /// Files `item` at tick `when` (at most `MAX_TICK`) as node `id`, which the caller holds:
    /// taken with [`take_free`](Self::take_free), or never seen by the wheel (a cell beyond the
    /// slab, which grows to it). A `when` at or before `elapsed` is due at the next poll.
    ///
    /// # Panics
    ///
    /// If `id` is a reserved value, a live node, or on the free list.
    pub(crate) fn link(&mut self, id: NodeId, when: u64, item: T) {
        assert!(
            (id as usize) < MAX_NODES,
            "wheel: node id {id} out of range"
        );
        self.entries.grow_to(id as usize + 1);
        match self.entries.cell_mut(id) {
            Cell::Free {
                next_free: RESERVED,
            } => {}
            _ => panic!("wheel: node {id} is not held by the caller"),
        }
        self.entries.replace(id, Cell::Live(Node::new(item, when)));
        self.len += 1;
        self.file(id);
    }

    /// An id off the free list, for the caller to hold until it links it or gives it back.
    pub(crate) fn take_free(&mut self) -> Option<NodeId> {
        if self.free_head == NIL {
            return None;
        }
        let id = self.free_head;
        let cell = self.entries.cell_mut(id);
        match *cell {
            Cell::Free { next_free } if next_free != RESERVED => self.free_head = next_free,
            _ => unreachable!("wheel: free list holds a cell that is not free"),
        }
        *cell = Cell::Free {
            next_free: RESERVED,
        };
        self.free -= 1;
        Some(id)
    }

    /// Puts an id the caller holds and will not link back on the free list.
    ///
    /// # Panics
    ///
    /// If `id` is a live node or already free.
    #[cfg(test)]
    pub(crate) fn release(&mut self, id: NodeId) {
        assert!(
            (id as usize) < MAX_NODES,
            "wheel: node id {id} out of range"
        );
        self.entries.grow_to(id as usize + 1);
        let next_free = self.free_head;
        let cell = self.entries.cell_mut(id);
        match *cell {
            Cell::Free {
                next_free: RESERVED,
            } => *cell = Cell::Free { next_free },
            _ => panic!("wheel: node {id} is not held by the caller"),
        }
        self.free_head = id;
        self.free += 1;
    }

    /// Gives back the memory of the slab's chunks that hold no live node (see
    /// `slab.rs`) once live nodes fill at most a quarter of the cells in memory, unless a
    /// cell is on the free list; returns how many chunks it trimmed. For a caller that
    /// holds every id it does not link (see [`take`](Self::take)): the ids stay valid, and a
    /// trimmed chunk comes back when one of them is linked. The quarter spares a wheel that
    /// churns at a steady size the cost of trimming chunks it brings back at once.
    pub(crate) fn trim(&mut self) -> usize {
        if self.free == 0 && self.len <= self.entries.cells() / 4 {
            self.entries.trim()
        } else {
            0
        }
    }

    /// Slab cells in memory: live, free or held.
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn cells(&self) -> usize {
        self.entries.cells()
    }

    /// Ids on the free list.
    #[cfg(test)]
    pub(crate) fn free_len(&self) -> usize {
        self.free
    }

    /// Moves node `id` (scheduled or fired) to tick `when` (at most `MAX_TICK`). The id
    /// stays valid.
    pub(crate) fn reschedule(&mut self, id: NodeId, when: u64) {
        self.unlink(id);
        self.node_mut(id).inverted_when = Node::<T>::invert(when);
        self.file(id);
    }

    /// Unlinks and frees node `id`, returning its item.
    ///
    /// # Panics
    ///
    /// If `id` is not an allocated node.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, id: NodeId) -> T {
        self.unlink(id);
        let cell = Cell::Free {
            next_free: self.free_head,
        };
        match self.entries.replace(id, cell) {
            Cell::Live(node) => {
                self.free_head = id;
                self.free += 1;
                self.len -= 1;
                node.item
            }
            Cell::Free { .. } => unreachable!("wheel: unlink accepted a free node"),
        }
    }

    /// Unlinks node `id` and returns its item, leaving the id with the caller (as
    /// [`take_free`](Self::take_free) would), to [`link`](Self::link) again. For a caller
    /// that keeps its own list of free ids.
    ///
    /// # Panics
    ///
    /// If `id` is not an allocated node.
    pub(crate) fn take(&mut self, id: NodeId) -> T {
        self.unlink(id);
        let cell = Cell::Free {
            next_free: RESERVED,
        };
        match self.entries.replace(id, cell) {
            Cell::Live(node) => {
                self.len -= 1;
                node.item
            }
            Cell::Free { .. } => unreachable!("wheel: unlink accepted a free node"),
        }
    }

    /// The item of node `id`.
    ///
    /// # Panics
    ///
    /// If `id` is not an allocated node.
    pub(crate) fn get(&self, id: NodeId) -> &T {
        &self.node(id).item
    }

    /// The tick node `id` is filed at (or was, if it has fired).
    ///
    /// # Panics
    ///
    /// If `id` is not an allocated node.
    #[cfg(test)]
    pub(crate) fn when(&self, id: NodeId) -> u64 {
        self.node(id).when()
    }

    /// A lower bound on the earliest scheduled deadline, or `None` if nothing is scheduled.
    ///
    /// It is `<= elapsed` exactly when something is already due; otherwise it is the start of
    /// the earliest non-empty slot, which is `> elapsed` and `<=` every scheduled `when`. A
    /// caller that sleeps until it and then polls makes progress on every wake-up.
    pub(crate) fn next_expiration(&self) -> Option<u64> {
        if self.due_head != NIL {
            return Some(self.elapsed);
        }
        // Starts grow with the level, so the first hit is the earliest; taking the minimum
        // costs the same and does not lean on that.
        (0..LEVELS)
            .filter_map(|level| self.next_slot(level).map(|(_, start)| start))
            .min()
    }

    /// Unlinks and returns one node with `when <= now`, or `None` if there is none, in which
    /// case `elapsed` becomes `max(elapsed, now)` and [`next_expiration`] is `None` or
    /// `> now`. A returned node is *fired*: still allocated, linked nowhere, and must be
    /// [`take`]n or [`reschedule`]d by the caller.
    ///
    /// [`next_expiration`]: Self::next_expiration
    /// [`take`]: Self::take
    /// [`reschedule`]: Self::reschedule
    pub(crate) fn poll(&mut self, now: u64) -> Option<NodeId> {
        let now = now.max(self.elapsed);
        loop {
            if self.due_head != NIL {
                // The due list's head: unlinked without looking up where it is.
                let id = self.due_head;
                let node = self.node_mut(id);
                let next = mem::replace(&mut node.next, NIL);
                node.prev = UNLINKED;
                self.due_head = next;
                if next != NIL {
                    self.node_mut(next).prev = NIL;
                }
                return Some(id);
            }
            let taken = self.take_slots_until(now);
            self.elapsed = now;
            if taken == NIL && self.due_head == NIL {
                return None;
            }
            // Every slot starting at or before `now` is empty now, so re-filing against the
            // new `elapsed` cannot put a node back into a slot that is already due. At most
            // one more pass: if nothing became due, the next one takes no slot.
            let mut cur = taken;
            while cur != NIL {
                let next = self.node(cur).next;
                self.file(cur);
                cur = next;
            }
        }
    }

    /// Empties every slot whose start is `<= now` (measured from the current `elapsed`,
    /// which the caller moves to `now` afterwards) and returns its nodes as a chain through
    /// `next`, each unlinked; except that one slot wholly due by `now` may become the due list
    /// instead, if that is empty.
    fn take_slots_until(&mut self, now: u64) -> u32 {
        let mut chain = NIL;
        for level in 0..LEVELS {
            while let Some((slot, start)) = self.next_slot(level) {
                if start > now {
                    break;
                }
                self.slots_visited += 1;
                self.occupied[level] &= !(1u64 << slot);
                let mut cur = mem::replace(&mut self.heads[level][slot], NIL);
                // Every node of a below-top slot lies in `[start, start + 64^level)`: if all of
                // that is due, the list becomes the (empty) due list as it is, node by node
                // untouched. (`poll` empties the due list before it takes slots.)
                let last = start.saturating_add((1u64 << (SLOT_BITS * level as u32)) - 1);
                if level < TOP && last <= now && self.due_head == NIL {
                    self.due_head = cur;
                    continue;
                }
                while cur != NIL {
                    let node = self.node_mut(cur);
                    let next = node.next;
                    node.prev = UNLINKED;
                    node.next = chain;
                    chain = cur;
                    cur = next;
                }
            }
        }
        chain
    }

    /// The first occupied slot of `level` after `elapsed`'s digit (in ring order) and its
    /// start tick.
    fn next_slot(&self, level: usize) -> Option<(usize, u64)> {
        let occupied = self.occupied[level];
        if occupied == 0 {
            return None;
        }
        let shift = SLOT_BITS * level as u32;
        let current = ((self.elapsed >> shift) & DIGIT_MASK) as u32;
        // Rotate so bit 0 is the slot right after the current one; the current slot itself
        // comes last, as the start of the next rotation (only far nodes can sit there).
        let from = (current + 1) % SLOTS as u32;
        let slot = (from + occupied.rotate_right(from).trailing_zeros()) % SLOTS as u32;
        Some((slot as usize, self.slot_start(level, slot as usize)))
    }

    /// The first tick after `elapsed` at which slot `(level, slot)` begins.
    fn slot_start(&self, level: usize, slot: usize) -> u64 {
        let shift = SLOT_BITS * level as u32;
        let current = (self.elapsed >> shift) & DIGIT_MASK;
        let block_span = 1u64 << (shift + SLOT_BITS);
        let mut block = self.elapsed & !(block_span - 1);
        if slot as u64 <= current {
            // Wrapped: only the top level does this, for far nodes, and never from the last
            // block of u64 (see the module docs); saturate all the same.
            block = block.saturating_add(block_span);
        }
        block.saturating_add((slot as u64) << shift)
    }

    /// Where a node due at `when` belongs against the current `elapsed`.
    fn loc_for(&self, when: u64) -> Loc {
        if when <= self.elapsed {
            return Loc::Due;
        }
        let highest_bit = 63 - (when ^ self.elapsed).leading_zeros();
        let level = ((highest_bit / SLOT_BITS) as usize).min(TOP);
        let slot = (when >> (SLOT_BITS * level as u32)) & DIGIT_MASK;
        Loc::Slot {
            level: level as u8,
            slot: slot as u8,
        }
    }

    /// Links an unlinked node where its `when` belongs.
    fn file(&mut self, id: NodeId) {
        let loc = self.loc_for(self.node(id).when());
        let head = match loc {
            Loc::Slot { level, slot } => {
                if self.heads.is_empty() {
                    self.heads = vec![[NIL; SLOTS]; LEVELS];
                }
                self.occupied[level as usize] |= 1u64 << slot;
                &mut self.heads[level as usize][slot as usize]
            }
            Loc::Due => &mut self.due_head,
        };
        let old = mem::replace(head, id);
        if old != NIL {
            self.node_mut(old).prev = id;
        }
        let node = self.node_mut(id);
        node.prev = NIL;
        node.next = old;
    }

    /// Takes node `id` out of its list, if it is in one, leaving it unlinked.
    fn unlink(&mut self, id: NodeId) {
        let node = self.node(id);
        let (prev, next) = (node.prev, node.next);
        if prev == UNLINKED {
            return;
        }
        if prev != NIL {
            self.node_mut(prev).next = next;
        } else {
            // The head of its list: the list `when` belongs to (see the invariant).
            let head = match self.loc_for(node.when()) {
                Loc::Slot { level, slot } => {
                    if next == NIL {
                        self.occupied[level as usize] &= !(1u64 << slot);
                    }
                    &mut self.heads[level as usize][slot as usize]
                }
                Loc::Due => &mut self.due_head,
            };
            debug_assert_eq!(*head, id, "wheel: node {id} is not where its tick belongs");
            *head = next;
        }
        if next != NIL {
            self.node_mut(next).prev = prev;
        }
        let node = self.node_mut(id);
        node.prev = UNLINKED;
        node.next = NIL;
    }

    fn node(&self, id: NodeId) -> &Node<T> {
        match self.entries.get(id) {
            Some(Cell::Live(node)) => node,
            _ => panic!("wheel: node {id} is not allocated"),
        }
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node<T> {
        match self.entries.get_mut(id) {
            Some(Cell::Live(node)) => node,
            _ => panic!("wheel: node {id} is not allocated"),
        }
    }
}
