//! A hierarchical timing wheel: the expiry task's index of deadlines.
//!
//! The wheel is a plain data structure. It knows nothing about clocks, tasks or locks: the
//! caller turns time into `u64` ticks (rounding deadlines up), files nodes with
//! [`Wheel::insert`], and drains whatever is due with [`Wheel::poll`], using
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
//! holds at most one chunk of cells beyond the most nodes it has held at once. Each level also has a 64-bit bitmap with one bit per non-empty slot,
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

use std::mem;
use std::num::NonZeroU64;

/// Index of a node in the wheel's slab. Values `u32::MAX` and `u32::MAX - 1` are reserved by
/// the caller and never returned.
pub(crate) type TimerId = u32;

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

/// End-of-list marker. It is one of the ids reserved by the caller, so no node has it.
const NIL: u32 = u32::MAX;
/// `prev` of a node linked nowhere: returned by `poll` (or between steps of a move). It is
/// the other id reserved by the caller, so no node has it either.
const UNLINKED: u32 = u32::MAX - 1;
/// The slab never grows to this many nodes, keeping ids clear of the reserved values.
const MAX_NODES: usize = (u32::MAX - 1) as usize;

/// The latest tick a node is filed at; a later `when` counts as this one. (Nodes store
/// `!when`, which is then never zero: the niche holds a slab cell's `Free` variant.)
const MAX_TICK: u64 = u64::MAX - 1;

/// Where a linked node is, or belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    /// Filed in slot `slot` of level `level`.
    Slot { level: u8, slot: u8 },
    /// On the due list: `when <= elapsed`.
    Due,
}

/// An allocated node. It does not record where it is linked: a linked node is always where
/// [`Wheel::loc_for`] puts its `when` (see the invariant), and an unlinked one has `prev ==
/// UNLINKED`. That keeps a node at 16 bytes plus its item.
struct Node<T> {
    item: T,
    /// `!when`: never zero, as `when <= MAX_TICK`.
    inverted_when: NonZeroU64,
    prev: u32,
    next: u32,
}

impl<T> Node<T> {
    fn new(item: T, when: u64) -> Self {
        Node {
            item,
            inverted_when: Self::invert(when),
            prev: UNLINKED,
            next: NIL,
        }
    }

    fn invert(when: u64) -> NonZeroU64 {
        NonZeroU64::new(!when.min(MAX_TICK)).expect("the inverse of a tick below u64::MAX")
    }

    fn when(&self) -> u64 {
        !self.inverted_when.get()
    }
}

/// A slab cell. `Free` fits in the niche of `Node::inverted_when`, so it adds no size.
enum Entry<T> {
    Live(Node<T>),
    /// On the free list (`next_free` is the next free cell or `NIL`), or, with `next_free ==
    /// RESERVED`, held by the caller to link later.
    Free {
        next_free: u32,
    },
}

/// `next_free` of a cell whose id the caller holds (see [`Wheel::link`]).
const RESERVED: u32 = UNLINKED;

/// Cells per chunk of the slab: 2^12.
const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

/// The slab: cells in chunks of [`CHUNK`], cell `id` at `chunks[id >> CHUNK_BITS]`.
///
/// Only the last chunk has room to spare, so the slab never holds more than `CHUNK` unused
/// cells (a `Vec` that doubles may hold as many unused cells as used ones), and growing never
/// moves a cell. The first chunk grows like a `Vec` up to `CHUNK`, so a small wheel stays
/// small.
struct Slab<T> {
    chunks: Vec<Vec<Entry<T>>>,
    len: usize,
}

impl<T> Slab<T> {
    const fn new() -> Self {
        Slab {
            chunks: Vec::new(),
            len: 0,
        }
    }

    /// Cells: live, free or reserved.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// Adds reserved cells until there are `len`.
    fn grow_to(&mut self, len: usize) {
        while self.len < len {
            self.push(Entry::Free {
                next_free: RESERVED,
            });
        }
    }

    /// Appends a cell; its id is the old `len`.
    fn push(&mut self, cell: Entry<T>) {
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

    fn get(&self, id: u32) -> Option<&Entry<T>> {
        self.chunks
            .get((id >> CHUNK_BITS) as usize)?
            .get(id as usize & (CHUNK - 1))
    }

    fn get_mut(&mut self, id: u32) -> Option<&mut Entry<T>> {
        self.chunks
            .get_mut((id >> CHUNK_BITS) as usize)?
            .get_mut(id as usize & (CHUNK - 1))
    }

    /// The cell `id`, which exists.
    fn cell_mut(&mut self, id: u32) -> &mut Entry<T> {
        self.get_mut(id).expect("wheel: cell id out of range")
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = &Entry<T>> {
        self.chunks.iter().flatten()
    }
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

// The expiry task is the only user; until it is wired up parts of this may be unused.
#[allow(dead_code)]
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
    pub(crate) fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// Slots emptied by [`poll`](Self::poll) so far.
    pub(crate) fn slots_visited(&self) -> u64 {
        self.slots_visited
    }

    /// Files `item` at tick `when` (at most [`MAX_TICK`]) under an id of the wheel's choosing;
    /// a `when` at or before `elapsed` is due at the next poll. For a wheel whose ids nobody
    /// else hands out (see [`link`](Self::link)).
    #[cfg(test)]
    pub(crate) fn insert(&mut self, when: u64, item: T) -> TimerId {
        let id = self.take_free().unwrap_or(self.entries.len() as TimerId);
        self.link(id, when, item);
        id
    }

    /// Files `item` at tick `when` (at most [`MAX_TICK`]) as node `id`, which the caller holds:
    /// taken with [`take_free`](Self::take_free), or never seen by the wheel (a cell beyond the
    /// slab, which grows to it). A `when` at or before `elapsed` is due at the next poll.
    ///
    /// # Panics
    ///
    /// If `id` is a reserved value, a live node, or on the free list.
    pub(crate) fn link(&mut self, id: TimerId, when: u64, item: T) {
        assert!(
            (id as usize) < MAX_NODES,
            "wheel: node id {id} out of range"
        );
        self.entries.grow_to(id as usize + 1);
        let cell = self.entries.cell_mut(id);
        match *cell {
            Entry::Free {
                next_free: RESERVED,
            } => *cell = Entry::Live(Node::new(item, when)),
            _ => panic!("wheel: node {id} is not held by the caller"),
        }
        self.len += 1;
        self.file(id);
    }

    /// An id off the free list, for the caller to hold until it links it or gives it back.
    pub(crate) fn take_free(&mut self) -> Option<TimerId> {
        if self.free_head == NIL {
            return None;
        }
        let id = self.free_head;
        let cell = self.entries.cell_mut(id);
        match *cell {
            Entry::Free { next_free } if next_free != RESERVED => self.free_head = next_free,
            _ => unreachable!("wheel: free list holds a cell that is not free"),
        }
        *cell = Entry::Free {
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
    pub(crate) fn release(&mut self, id: TimerId) {
        assert!(
            (id as usize) < MAX_NODES,
            "wheel: node id {id} out of range"
        );
        self.entries.grow_to(id as usize + 1);
        let next_free = self.free_head;
        let cell = self.entries.cell_mut(id);
        match *cell {
            Entry::Free {
                next_free: RESERVED,
            } => *cell = Entry::Free { next_free },
            _ => panic!("wheel: node {id} is not held by the caller"),
        }
        self.free_head = id;
        self.free += 1;
    }

    /// Ids on the free list.
    pub(crate) fn free_len(&self) -> usize {
        self.free
    }

    /// Moves node `id` (scheduled or fired) to tick `when` (at most [`MAX_TICK`]). The id
    /// stays valid.
    pub(crate) fn reschedule(&mut self, id: TimerId, when: u64) {
        self.unlink(id);
        self.node_mut(id).inverted_when = Node::<T>::invert(when);
        self.file(id);
    }

    /// Unlinks and frees node `id`, returning its item.
    ///
    /// # Panics
    ///
    /// If `id` is not an allocated node.
    pub(crate) fn remove(&mut self, id: TimerId) -> T {
        self.unlink(id);
        let cell = Entry::Free {
            next_free: self.free_head,
        };
        match mem::replace(self.entries.cell_mut(id), cell) {
            Entry::Live(node) => {
                self.free_head = id;
                self.free += 1;
                self.len -= 1;
                node.item
            }
            Entry::Free { .. } => unreachable!("wheel: unlink accepted a free node"),
        }
    }

    /// The item of node `id`.
    ///
    /// # Panics
    ///
    /// If `id` is not an allocated node.
    pub(crate) fn get(&self, id: TimerId) -> &T {
        &self.node(id).item
    }

    /// The tick node `id` is filed at (or was, if it has fired).
    ///
    /// # Panics
    ///
    /// If `id` is not an allocated node.
    pub(crate) fn when(&self, id: TimerId) -> u64 {
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
    /// [`remove`]d or [`reschedule`]d by the caller.
    ///
    /// [`next_expiration`]: Self::next_expiration
    /// [`remove`]: Self::remove
    /// [`reschedule`]: Self::reschedule
    pub(crate) fn poll(&mut self, now: u64) -> Option<TimerId> {
        let now = now.max(self.elapsed);
        loop {
            if self.due_head != NIL {
                let id = self.due_head;
                self.unlink(id);
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
    fn file(&mut self, id: TimerId) {
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
    fn unlink(&mut self, id: TimerId) {
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

    fn node(&self, id: TimerId) -> &Node<T> {
        match self.entries.get(id) {
            Some(Entry::Live(node)) => node,
            _ => panic!("wheel: timer id {id} is not allocated"),
        }
    }

    fn node_mut(&mut self, id: TimerId) -> &mut Node<T> {
        match self.entries.get_mut(id) {
            Some(Entry::Live(node)) => node,
            _ => panic!("wheel: timer id {id} is not allocated"),
        }
    }
}

#[cfg(test)]
impl<T> Wheel<T> {
    /// Checks every structural fact and the documented invariant. Test-only, O(slots + nodes).
    fn check(&self) {
        let mut linked = 0;
        for level in 0..LEVELS {
            for slot in 0..SLOTS {
                let head = self.heads.get(level).map_or(NIL, |heads| heads[slot]);
                let bit = self.occupied[level] >> slot & 1 == 1;
                assert_eq!(bit, head != NIL, "occupancy bit of ({level}, {slot})");
                let start = self.slot_start(level, slot);
                let mut prev = NIL;
                let mut cur = head;
                while cur != NIL {
                    let node = self.node(cur);
                    assert_eq!(node.prev, prev, "prev link of {cur}");
                    let when = node.when();
                    assert_eq!(
                        self.loc_for(when),
                        Loc::Slot {
                            level: level as u8,
                            slot: slot as u8
                        },
                        "node {cur} misfiled"
                    );
                    assert!(self.elapsed < start && start <= when, "start of {cur}");
                    if level < TOP {
                        assert!(when - start < 1u64 << (SLOT_BITS * level as u32));
                    }
                    linked += 1;
                    prev = cur;
                    cur = node.next;
                }
            }
        }
        let mut prev = NIL;
        let mut cur = self.due_head;
        while cur != NIL {
            let node = self.node(cur);
            assert_eq!(node.prev, prev);
            assert_eq!(self.loc_for(node.when()), Loc::Due);
            linked += 1;
            prev = cur;
            cur = node.next;
        }
        let mut live = 0;
        let mut fired = 0;
        let mut reserved = 0;
        for entry in self.entries.iter() {
            match entry {
                Entry::Live(node) => {
                    live += 1;
                    if node.prev == UNLINKED {
                        fired += 1;
                    }
                }
                Entry::Free {
                    next_free: RESERVED,
                } => reserved += 1,
                Entry::Free { .. } => {}
            }
        }
        assert_eq!(live, self.len);
        assert_eq!(linked + fired, live);
        let mut free = 0;
        let mut cur = self.free_head;
        while cur != NIL {
            match self.entries.get(cur).expect("free id in range") {
                Entry::Free { next_free } if *next_free != RESERVED => cur = *next_free,
                _ => panic!("cell {cur} on the free list is not free"),
            }
            free += 1;
        }
        assert_eq!(free, self.free);
        assert_eq!(free + live + reserved, self.entries.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::{select, Index};
    use std::collections::BTreeMap;

    const P: [u64; 7] = [
        1,
        64,
        64 * 64,
        64 * 64 * 64,
        64 * 64 * 64 * 64,
        64 * 64 * 64 * 64 * 64,
        HORIZON,
    ];

    /// Polls at `now` until `None`, returning the ids in order and checking each is due.
    fn drain(wheel: &mut Wheel<u64>, now: u64) -> Vec<TimerId> {
        let mut out = Vec::new();
        // A `now` behind `elapsed` counts as `elapsed`.
        let now = now.max(wheel.elapsed());
        while let Some(id) = wheel.poll(now) {
            assert!(wheel.when(id) <= now, "node {id} returned early");
            out.push(id);
        }
        assert_eq!(wheel.elapsed(), now);
        if let Some(next) = wheel.next_expiration() {
            assert!(
                next > now,
                "next_expiration {next} <= now {now} after draining"
            );
        }
        wheel.check();
        out
    }

    #[test]
    fn node_is_small() {
        // An item plus 16 bytes: the free variant and the location cost nothing.
        assert_eq!(mem::size_of::<Entry<u64>>(), 24);
        assert_eq!(mem::size_of::<Entry<String>>(), 40);
    }

    #[test]
    fn ticks_past_max_tick_count_as_max_tick() {
        let mut wheel = Wheel::new();
        let a = wheel.insert(u64::MAX, 1);
        assert_eq!(wheel.when(a), MAX_TICK);
        wheel.reschedule(a, 5);
        assert_eq!(wheel.when(a), 5);
        wheel.reschedule(a, u64::MAX);
        assert_eq!(drain(&mut wheel, MAX_TICK - 1), vec![]);
        assert_eq!(drain(&mut wheel, MAX_TICK), vec![a]);
    }

    #[test]
    fn empty_wheel() {
        let mut wheel = Wheel::<u64>::new();
        assert_eq!(wheel.elapsed(), 0);
        assert!(wheel.is_empty());
        assert_eq!(wheel.len(), 0);
        assert_eq!(wheel.next_expiration(), None);
        assert_eq!(wheel.poll(P[5] * 3), None);
        assert_eq!(wheel.elapsed(), P[5] * 3);
        assert_eq!(wheel.next_expiration(), None);
        assert_eq!(wheel.slots_visited(), 0);
        // Going back is harmless.
        assert_eq!(wheel.poll(5), None);
        assert_eq!(wheel.elapsed(), P[5] * 3);
    }

    #[test]
    fn insert_then_poll() {
        let mut wheel = Wheel::new();
        let a = wheel.insert(10, 100);
        let b = wheel.insert(70, 200);
        let c = wheel.insert(70, 300);
        assert_eq!(wheel.len(), 3);
        wheel.check();
        assert_eq!(wheel.next_expiration(), Some(10));
        assert_eq!(drain(&mut wheel, 9), vec![]);
        assert_eq!(wheel.elapsed(), 9);
        assert_eq!(drain(&mut wheel, 10), vec![a]);
        assert_eq!(*wheel.get(a), 100);
        assert_eq!(wheel.len(), 3, "a fired node stays allocated");
        assert_eq!(wheel.remove(a), 100);
        assert_eq!(wheel.len(), 2);
        // 70 is in level 1 (slot 1, start 64).
        assert_eq!(wheel.next_expiration(), Some(64));
        assert_eq!(drain(&mut wheel, 69), vec![]);
        assert_eq!(wheel.next_expiration(), Some(70));
        let mut fired = drain(&mut wheel, 1_000);
        fired.sort_unstable();
        assert_eq!(fired, vec![b, c]);
        assert_eq!(wheel.when(b), 70);
        assert_eq!(wheel.next_expiration(), None);
    }

    #[test]
    fn past_deadline_is_due_at_once() {
        let mut wheel = Wheel::new();
        assert_eq!(wheel.poll(500), None);
        let a = wheel.insert(500, 1);
        let b = wheel.insert(3, 2);
        assert_eq!(wheel.next_expiration(), Some(500));
        wheel.check();
        // Even polling "before" elapsed returns them: it is treated as elapsed.
        let mut fired = drain(&mut wheel, 0);
        fired.sort_unstable();
        assert_eq!(fired, vec![a, b]);
        assert_eq!(wheel.elapsed(), 500);
    }

    #[test]
    fn reschedule_earlier_and_later() {
        let mut wheel = Wheel::new();
        let a = wheel.insert(P[4] * 2, 1);
        wheel.reschedule(a, 5);
        wheel.check();
        assert_eq!(wheel.next_expiration(), Some(5));
        assert_eq!(drain(&mut wheel, 4), vec![]);
        wheel.reschedule(a, 4_000);
        wheel.check();
        assert_eq!(drain(&mut wheel, 3_999), vec![]);
        assert_eq!(drain(&mut wheel, 4_000), vec![a]);
        assert_eq!(wheel.remove(a), 1);
        assert!(wheel.is_empty());
    }

    #[test]
    fn reschedule_fired_node() {
        let mut wheel = Wheel::new();
        let a = wheel.insert(10, 7);
        assert_eq!(wheel.poll(20), Some(a));
        // Later: re-linked, same id, fires again at its new tick only.
        wheel.reschedule(a, 30);
        wheel.check();
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.poll(20), None);
        assert_eq!(wheel.next_expiration(), Some(30));
        assert_eq!(wheel.poll(30), Some(a));
        // Into the past: due at the next poll.
        wheel.reschedule(a, 1);
        assert_eq!(wheel.next_expiration(), Some(30));
        assert_eq!(wheel.poll(30), Some(a));
        assert_eq!(wheel.poll(30), None);
        assert_eq!(*wheel.get(a), 7);
        wheel.check();
    }

    #[test]
    fn remove_scheduled_and_fired() {
        let mut wheel = Wheel::new();
        let a = wheel.insert(100, 1);
        let b = wheel.insert(100, 2);
        let c = wheel.insert(100, 3);
        let d = wheel.insert(50, 4);
        assert_eq!(wheel.remove(b), 2, "middle of a slot list");
        wheel.check();
        assert_eq!(wheel.poll(60), Some(d));
        assert_eq!(wheel.remove(d), 4, "fired");
        wheel.check();
        assert_eq!(wheel.remove(c), 3, "head of a slot list");
        assert_eq!(wheel.remove(a), 1, "last in its slot");
        wheel.check();
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_expiration(), None);
        assert_eq!(wheel.poll(1_000), None);
    }

    #[test]
    #[should_panic(expected = "not allocated")]
    fn remove_twice_panics() {
        let mut wheel = Wheel::new();
        let a = wheel.insert(1, ());
        wheel.remove(a);
        wheel.remove(a);
    }

    #[test]
    #[should_panic(expected = "not allocated")]
    fn get_unknown_panics() {
        let wheel = Wheel::<()>::new();
        wheel.get(0);
    }

    #[test]
    fn slab_reuses_ids() {
        let mut wheel = Wheel::new();
        let ids: Vec<_> = (0..10).map(|i| wheel.insert(i * 1000, i)).collect();
        assert_eq!(wheel.len(), 10);
        for &id in &ids[2..5] {
            wheel.remove(id);
        }
        assert_eq!(wheel.len(), 7);
        let mut again: Vec<_> = (0..3).map(|i| wheel.insert(5, 100 + i)).collect();
        again.sort_unstable();
        assert_eq!(again, ids[2..5].to_vec(), "freed ids come back");
        assert_eq!(wheel.len(), 10);
        assert_eq!(wheel.entries.len(), 10, "no growth while cells are free");
        let fresh = wheel.insert(5, 999);
        assert_eq!(fresh, 10);
        wheel.check();
    }

    #[test]
    fn ids_held_by_the_caller() {
        let mut wheel = Wheel::new();
        // Ids the wheel never saw: the slab grows to them, leaving the cells between held.
        wheel.link(5, 10, 50);
        wheel.link(2, 20, 20);
        wheel.check();
        assert_eq!(wheel.len(), 2);
        assert_eq!(wheel.take_free(), None, "held cells are not free");
        for held in [0, 1, 3, 4] {
            wheel.release(held);
        }
        wheel.release(9);
        wheel.check();
        assert_eq!(wheel.free_len(), 5);
        assert_eq!(wheel.remove(5), 50);
        assert_eq!(wheel.free_len(), 6);
        let mut taken: Vec<_> = std::iter::from_fn(|| wheel.take_free()).collect();
        taken.sort_unstable();
        assert_eq!(taken, vec![0, 1, 3, 4, 5, 9]);
        wheel.check();
        wheel.link(9, 15, 90);
        let mut fired = drain(&mut wheel, 20);
        fired.sort_unstable();
        assert_eq!(fired, vec![2, 9]);
        wheel.remove(9);
        wheel.remove(2);
        for id in [0, 1, 3, 4, 5] {
            wheel.release(id);
        }
        wheel.check();
        assert!(wheel.is_empty());
    }

    #[test]
    #[should_panic(expected = "not held by the caller")]
    fn linking_a_free_id_panics() {
        let mut wheel = Wheel::new();
        let a = wheel.insert(3, 1);
        wheel.remove(a);
        wheel.link(a, 4, 2);
    }

    #[test]
    #[should_panic(expected = "not held by the caller")]
    fn linking_a_live_id_panics() {
        let mut wheel = Wheel::new();
        let a = wheel.insert(3, 1);
        wheel.link(a, 4, 2);
    }

    #[test]
    fn slab_grows_by_chunks() {
        let mut wheel = Wheel::new();
        let n = 3 * CHUNK + 5;
        let ids: Vec<_> = (0..n as u64)
            .map(|i| wheel.insert(i % 700 + 1, i))
            .collect();
        assert_eq!(ids, (0..n as u32).collect::<Vec<_>>());
        let chunks = &wheel.entries.chunks;
        assert_eq!(chunks.len(), 4);
        assert!(
            chunks.iter().all(|c| c.capacity() == CHUNK),
            "no spare beyond one chunk"
        );
        assert_eq!(wheel.entries.len(), n);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(*wheel.get(*id), i as u64);
        }
        wheel.check();
        let mut fired = drain(&mut wheel, 700);
        fired.sort_unstable();
        assert_eq!(fired, ids);
    }

    #[test]
    fn next_expiration_is_a_lower_bound_after_poll() {
        let mut wheel = Wheel::new();
        for (i, when) in [3, 64, 65, 4_095, 4_096, P[5] + 1, HORIZON * 3]
            .iter()
            .enumerate()
        {
            wheel.insert(*when, i as u64);
        }
        let mut now = 0;
        while let Some(next) = wheel.next_expiration() {
            assert!(next > now || wheel.due_head != NIL);
            now = next;
            for id in drain(&mut wheel, now) {
                wheel.remove(id);
            }
            if let Some(next) = wheel.next_expiration() {
                assert!(next > now);
            }
        }
        assert_eq!(now, HORIZON * 3);
        assert!(wheel.is_empty());
    }

    #[test]
    fn far_future_is_refiled_not_fired() {
        for start in [0, 12_345, HORIZON - 1, u64::MAX / 3] {
            let mut wheel = Wheel::new();
            assert_eq!(wheel.poll(start), None);
            let when = start + HORIZON * 3;
            let a = wheel.insert(when, 1);
            wheel.check();
            // One giant step just short of it.
            assert_eq!(drain(&mut wheel, when - 1), vec![]);
            assert_eq!(wheel.next_expiration(), Some(when));
            assert_eq!(drain(&mut wheel, when), vec![a]);

            // The same by sleeping to next_expiration: a few wake-ups per 2^36 ticks.
            let mut wheel = Wheel::new();
            wheel.poll(start);
            let a = wheel.insert(when, 1);
            let mut wakeups = 0;
            let fired_at = loop {
                let next = wheel.next_expiration().expect("still scheduled");
                assert!(next > wheel.elapsed() && next <= when);
                wakeups += 1;
                let fired = drain(&mut wheel, next);
                if !fired.is_empty() {
                    assert_eq!(fired, vec![a]);
                    break next;
                }
            };
            assert_eq!(fired_at, when);
            assert!(wakeups <= 3 * 2 + 12, "{wakeups} wake-ups");
        }
    }

    #[test]
    fn deadlines_near_max_tick() {
        const M: u64 = MAX_TICK;
        let mut wheel = Wheel::new();
        let a = wheel.insert(M, 1);
        let b = wheel.insert(M - 1, 2);
        let c = wheel.insert(M - HORIZON, 3);
        wheel.check();
        assert_eq!(drain(&mut wheel, M - HORIZON - 1), vec![]);
        assert_eq!(drain(&mut wheel, M - HORIZON), vec![c]);
        assert_eq!(drain(&mut wheel, M - 2), vec![]);
        assert_eq!(wheel.next_expiration(), Some(M - 1));
        assert_eq!(drain(&mut wheel, M - 1), vec![b]);
        assert_eq!(wheel.next_expiration(), Some(M));
        assert_eq!(drain(&mut wheel, M), vec![a]);
        assert_eq!(wheel.next_expiration(), None);
        // At the end of time everything is due at once.
        let d = wheel.insert(M, 4);
        assert_eq!(wheel.next_expiration(), Some(M));
        assert_eq!(drain(&mut wheel, M), vec![d]);
        assert_eq!(drain(&mut wheel, u64::MAX), vec![]);
        let e = wheel.insert(u64::MAX, 5);
        assert_eq!(wheel.next_expiration(), Some(u64::MAX));
        assert_eq!(drain(&mut wheel, u64::MAX), vec![e]);

        // Stepping towards the last tick from one block before.
        let mut wheel = Wheel::new();
        wheel.poll(M - 2 * HORIZON);
        let a = wheel.insert(M, 1);
        let mut wakeups = 0;
        while let Some(next) = wheel.next_expiration() {
            wakeups += 1;
            for id in drain(&mut wheel, next) {
                assert_eq!(id, a);
                assert_eq!(next, M);
                wheel.remove(id);
            }
        }
        assert!(wakeups <= 20, "{wakeups} wake-ups");
        assert!(wheel.is_empty());
    }

    #[test]
    fn advancing_visits_occupied_slots_not_ticks() {
        let deadlines = [P[5] - 1, P[4] * 7 + 5, P[3] * 9 + 1, 12_345_678, P[5]];
        let bound = 6 * deadlines.len() as u64 + 2;

        // One poll across 64^5 ticks.
        let mut wheel = Wheel::new();
        for (i, &when) in deadlines.iter().enumerate() {
            wheel.insert(when, i as u64);
        }
        let fired = drain(&mut wheel, P[5]);
        assert_eq!(fired.len(), deadlines.len());
        assert!(wheel.slots_visited() <= bound, "{}", wheel.slots_visited());

        // Sleeping to next_expiration each time.
        let mut wheel = Wheel::new();
        for (i, &when) in deadlines.iter().enumerate() {
            wheel.insert(when, i as u64);
        }
        let mut fired = 0;
        let mut wakeups = 0;
        while let Some(next) = wheel.next_expiration() {
            wakeups += 1;
            for id in drain(&mut wheel, next) {
                assert_eq!(wheel.when(id), next, "fired late");
                wheel.remove(id);
                fired += 1;
            }
        }
        assert_eq!(fired, deadlines.len());
        assert_eq!(wheel.elapsed(), P[5]);
        assert!(wheel.slots_visited() <= bound, "{}", wheel.slots_visited());
        assert!(wakeups <= bound, "{wakeups}");

        // An empty stretch costs nothing.
        let before = wheel.slots_visited();
        assert_eq!(wheel.poll(P[5] * 2), None);
        assert_eq!(wheel.slots_visited(), before);
    }

    #[test]
    fn one_hour_at_one_millisecond_ticks() {
        let mut wheel = Wheel::new();
        let a = wheel.insert(3_600_000, ());
        let mut wakeups = 0;
        loop {
            let next = wheel.next_expiration().expect("not fired yet");
            assert!(next <= 3_600_000);
            wakeups += 1;
            if let Some(id) = wheel.poll(next) {
                assert_eq!(id, a);
                assert_eq!(next, 3_600_000);
                break;
            }
        }
        println!("1 h at 1 ms: {wakeups} wake-ups");
        assert!(wakeups <= 50, "{wakeups} wake-ups");
        // One timer: each wake-up empties exactly the one slot holding it.
        assert_eq!(wheel.slots_visited(), wakeups);
    }

    // ---- model-based property test ----

    fn special_offsets(max_k: u32) -> Vec<u64> {
        let mut out = vec![0, 1, 2, 63];
        for k in 1..=max_k {
            let p = 64u64.pow(k);
            out.extend([p - 1, p, p + 1]);
        }
        out.extend([
            HORIZON - 1,
            HORIZON,
            HORIZON + 1,
            HORIZON * 3,
            HORIZON * 64 + 5,
        ]);
        out
    }

    fn offset() -> impl Strategy<Value = u64> {
        prop_oneof![
            2 => Just(0u64),
            4 => 1..70u64,
            3 => 0..10_000u64,
            5 => select(special_offsets(6)),
            1 => HORIZON..HORIZON * 300,
            1 => any::<u64>(),
        ]
    }

    fn jump() -> impl Strategy<Value = u64> {
        prop_oneof![
            2 => Just(0u64),
            4 => 1..70u64,
            3 => 0..10_000u64,
            6 => select(special_offsets(5)),
            1 => HORIZON..HORIZON * 300,
            // Rare: towards the end of time (a few of these reach it).
            1 => Just(u64::MAX / 4),
        ]
    }

    fn absolute() -> impl Strategy<Value = u64> {
        select(vec![
            u64::MAX,
            u64::MAX - 1,
            u64::MAX - 63,
            u64::MAX - 64,
            u64::MAX - HORIZON,
            u64::MAX - HORIZON + 1,
            u64::MAX / 2,
            HORIZON * 5,
            7,
        ])
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        InsertPast(u64),
        InsertAt(u64),
        Reschedule(Index, u64),
        ReschedulePast(Index, u64),
        Remove(Index),
        Advance(u64, u64),
        /// Hold an id: off the free list, or one the wheel never saw (`bool`).
        Hold(bool, u8),
        /// Link a held id at an offset from `elapsed`.
        LinkHeld(Index, u64),
        /// Give a held id back.
        ReleaseHeld(Index),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => offset().prop_map(Op::Insert),
            1 => offset().prop_map(Op::InsertPast),
            1 => absolute().prop_map(Op::InsertAt),
            3 => (any::<Index>(), offset()).prop_map(|(i, o)| Op::Reschedule(i, o)),
            1 => (any::<Index>(), offset()).prop_map(|(i, o)| Op::ReschedulePast(i, o)),
            2 => any::<Index>().prop_map(Op::Remove),
            4 => (jump(), any::<u64>()).prop_map(|(j, s)| Op::Advance(j, s)),
            1 => (any::<bool>(), 0..5u8).prop_map(|(f, gap)| Op::Hold(f, gap)),
            2 => (any::<Index>(), offset()).prop_map(|(i, o)| Op::LinkHeld(i, o)),
            1 => any::<Index>().prop_map(Op::ReleaseHeld),
        ]
    }

    /// xorshift64*: deterministic choices for fired nodes, seeded by the op.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    type Model = BTreeMap<TimerId, (u64, u64)>;

    fn pick(model: &Model, index: &Index) -> Option<TimerId> {
        (!model.is_empty()).then(|| *model.keys().nth(index.index(model.len())).unwrap())
    }

    /// What to do with a fired node: remove it, or move it past `now`.
    fn settle(
        wheel: &mut Wheel<u64>,
        model: &mut Model,
        id: TimerId,
        item: u64,
        now: u64,
        seed: &mut u64,
    ) -> Result<(), TestCaseError> {
        let r = rng(seed);
        if r & 1 == 0 || now >= MAX_TICK {
            prop_assert_eq!(wheel.remove(id), item);
        } else {
            let offsets = special_offsets(6);
            let extra = offsets[(r >> 8) as usize % offsets.len()].max(1);
            let when = now.saturating_add(extra).min(MAX_TICK);
            wheel.reschedule(id, when);
            model.insert(id, (when, item));
        }
        Ok(())
    }

    fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut wheel = Wheel::<u64>::new();
        let mut model = Model::new();
        let mut held: Vec<TimerId> = Vec::new();
        // Ids handed out so far, free or not.
        let mut fresh: TimerId = 0;
        let mut next_item = 0u64;
        for op in ops {
            let elapsed = wheel.elapsed();
            let mut drained_to = None;
            match op {
                Op::Insert(off) | Op::InsertPast(off) | Op::InsertAt(off) => {
                    let when = match op {
                        Op::Insert(_) => elapsed.saturating_add(off),
                        Op::InsertPast(_) => elapsed.saturating_sub(off),
                        _ => off,
                    }
                    .min(MAX_TICK);
                    next_item += 1;
                    // As the hand-off does: a free id, else one never handed out.
                    let id = wheel.take_free().unwrap_or_else(|| {
                        fresh += 1;
                        fresh - 1
                    });
                    wheel.link(id, when, next_item);
                    prop_assert!(id < u32::MAX - 1);
                    prop_assert!(
                        model.insert(id, (when, next_item)).is_none(),
                        "id reused while live"
                    );
                }
                Op::Reschedule(i, off) | Op::ReschedulePast(i, off) => {
                    if let Some(id) = pick(&model, &i) {
                        let when = match op {
                            Op::Reschedule(..) => elapsed.saturating_add(off),
                            _ => elapsed.saturating_sub(off),
                        }
                        .min(MAX_TICK);
                        wheel.reschedule(id, when);
                        model.get_mut(&id).unwrap().0 = when;
                        prop_assert_eq!(wheel.when(id), when);
                    }
                }
                Op::Remove(i) => {
                    if let Some(id) = pick(&model, &i) {
                        let (_, item) = model.remove(&id).unwrap();
                        prop_assert_eq!(wheel.remove(id), item);
                    }
                }
                Op::Hold(never_seen, gap) => {
                    let id = match wheel.take_free() {
                        Some(id) if !never_seen => id,
                        taken => {
                            if let Some(id) = taken {
                                wheel.release(id);
                            }
                            // Never seen, maybe past the slab's end.
                            let id = fresh + TimerId::from(gap);
                            fresh = id + 1;
                            id
                        }
                    };
                    prop_assert!(!model.contains_key(&id) && !held.contains(&id));
                    held.push(id);
                }
                Op::LinkHeld(i, off) => {
                    if !held.is_empty() {
                        let id = held.swap_remove(i.index(held.len()));
                        let when = elapsed.saturating_add(off).min(MAX_TICK);
                        next_item += 1;
                        wheel.link(id, when, next_item);
                        model.insert(id, (when, next_item));
                    }
                }
                Op::ReleaseHeld(i) => {
                    if !held.is_empty() {
                        let id = held.swap_remove(i.index(held.len()));
                        wheel.release(id);
                    }
                }
                Op::Advance(jump, mut seed) => {
                    seed |= 1;
                    let now = elapsed.saturating_add(jump);
                    let expected: Model = model
                        .iter()
                        .filter(|(_, &(when, _))| when <= now)
                        .map(|(&id, &v)| (id, v))
                        .collect();
                    let settle_at_once = rng(&mut seed) & 1 == 0;
                    let mut fired = Model::new();
                    let mut held = Vec::new();
                    while let Some(id) = wheel.poll(now) {
                        let when = wheel.when(id);
                        let item = *wheel.get(id);
                        prop_assert!(when <= now, "fired early: {} > {}", when, now);
                        prop_assert!(fired.insert(id, (when, item)).is_none(), "fired twice");
                        prop_assert_eq!(model.remove(&id), Some((when, item)));
                        if settle_at_once {
                            settle(&mut wheel, &mut model, id, item, now, &mut seed)?;
                        } else {
                            held.push((id, item));
                        }
                    }
                    prop_assert_eq!(&fired, &expected);
                    prop_assert_eq!(wheel.elapsed(), now);
                    for (id, item) in held {
                        settle(&mut wheel, &mut model, id, item, now, &mut seed)?;
                    }
                    prop_assert_eq!(wheel.poll(now), None);
                    drained_to = Some(now);
                }
            }
            wheel.check();
            prop_assert_eq!(wheel.len(), model.len());
            let earliest = model.values().map(|&(when, _)| when).min();
            let next = wheel.next_expiration();
            prop_assert_eq!(next.is_none(), earliest.is_none());
            if let (Some(next), Some(earliest)) = (next, earliest) {
                if earliest <= wheel.elapsed() {
                    // Something is due: "now" (elapsed) or earlier.
                    prop_assert!(next <= wheel.elapsed(), "due, yet next {} > elapsed", next);
                } else {
                    prop_assert!(next <= earliest, "next {} > earliest {}", next, earliest);
                    prop_assert!(next > wheel.elapsed(), "next {} <= elapsed", next);
                }
                if let Some(now) = drained_to {
                    prop_assert!(next > now, "next {} <= now {}", next, now);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn matches_model(ops in prop::collection::vec(op(), 1..200)) {
            run(ops)?;
        }
    }
}
