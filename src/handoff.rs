//! The hand-off from writers to the expiry task: which keys have a deadline the task has not
//! filed yet, and which wheel nodes writers have orphaned.
//!
//! Writers never touch the wheel (the task owns it). Instead, while holding the key's shard
//! lock, a writer puts the key into one of a few striped, mutex-guarded maps
//! `key -> orphaned node`. The task swaps each stripe out whole, then files every key at the
//! deadline it *then* reads from the entry, reusing the orphaned node when there is one.
//!
//! Invariants:
//! - **Bounded.** A stripe holds at most one record per key, however often the key is
//!   written, removed and written again before the next drain: a record is a key, not an
//!   operation. The entry's `PENDING` state (see `store.rs`) spares writers the stripe lock
//!   when a record is already queued.
//! - **At most two orphans per record.** A node is referenced by exactly one entry or one
//!   record. A record collects the nodes its key's entries lose while the record is queued:
//!   the node the entry had when this stripe map became current, and at most one more, filed
//!   by the task from the previous map (which held one record per key) and then lost again.
//!   Merging records keeps both.
//! - **No lost wake-up.** The writer reads the task's published `next_wake` *inside* the stripe
//!   lock; the task publishes `next_wake` *before* it checks the stripes for records. So either
//!   the task sees the record, or the writer sees the new `next_wake` and notifies (a
//!   `Notify` permit survives until the task waits).
//! - **Nothing grows after the task is gone.** The task sets `closed` and then empties every
//!   stripe under its lock; writers check `closed` under the same lock.
//! - Lock order is always shard lock, then stripe lock. The task never holds a stripe lock
//!   while it takes a shard lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

use crate::clock::NEVER;
use crate::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::sync::{lock, Mutex, MutexGuard, Wake};
use crate::wheel::TimerId;

/// `timer` value of an entry the task does not track.
pub(crate) const UNFILED: TimerId = u32::MAX;
/// `timer` value of an entry whose key has a queued record.
pub(crate) const PENDING: TimerId = u32::MAX - 1;

/// What a writer holding an entry's shard lock does when it gives the entry the (effective)
/// deadline `deadline`, over an entry whose timer is `timer` and deadline `old` (a vacant
/// entry is `UNFILED`). Returns the entry's new timer, and the record to queue, if any, with
/// the node it orphans.
///
/// A later deadline needs no record: the filed node fires first and the task re-files. An
/// earlier one, or a first one, does; with a record already queued (`PENDING`) the push only
/// merges into it, but still wakes the task if the task sleeps past the new deadline.
pub(crate) fn retime(
    timer: TimerId,
    old: u64,
    deadline: u64,
) -> (TimerId, Option<Option<TimerId>>) {
    match timer {
        _ if deadline == NEVER => (timer, None),
        // The queued record will file the latest deadline, but the task may be asleep until
        // a later one: queue again (it merges into the same record) so that the push decides
        // whether to wake it.
        PENDING if deadline < old => (PENDING, Some(None)),
        PENDING => (PENDING, None),
        UNFILED => (PENDING, Some(None)),
        node if deadline < old => (PENDING, Some(Some(node))),
        node => (node, None),
    }
}

/// A stripe this large wakes the task even if no deadline is near, so drains stay small.
const WAKE_AT_RECORDS: usize = 4096;

/// A drained stripe's map: key to the nodes writers orphaned for it.
pub(crate) type Records<K, S> = HashMap<K, Orphans, S>;

/// The wheel nodes a record orphaned: at most two (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Orphans([TimerId; 2]);

impl Orphans {
    /// No node.
    pub(crate) const NONE: Orphans = Orphans([UNFILED; 2]);

    fn add(&mut self, node: TimerId) {
        let free = if self.0[0] == UNFILED { 0 } else { 1 };
        debug_assert_eq!(self.0[free], UNFILED, "a third orphaned node for one key");
        self.0[free] = node;
    }

    /// Forget `node`, if it is one of these.
    fn forget(&mut self, node: TimerId) {
        for slot in &mut self.0 {
            if *slot == node {
                *slot = UNFILED;
            }
        }
    }

    /// The orphaned nodes.
    pub(crate) fn nodes(self) -> impl Iterator<Item = TimerId> {
        self.0.into_iter().filter(|n| *n != UNFILED)
    }
}

/// What the task and the writers share besides the store; the task keeps its own `Arc` of it
/// so that it can wait without keeping the store alive.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    /// Wakes the task: a deadline earlier than `next_wake`, a full stripe, `invalidate_all`.
    pub(crate) notify: Wake,
    /// The tick the task sleeps until; `u64::MAX` when it has no timer at all.
    pub(crate) next_wake: AtomicU64,
    /// Set once the task has stopped for good.
    pub(crate) closed: AtomicBool,
    /// How many times the task woke (test-only visibility).
    pub(crate) wakeups: AtomicU64,
    /// Wheel nodes the task holds, as of its last wake (test-only visibility).
    pub(crate) timers: AtomicUsize,
}

#[repr(align(64))]
struct Stripe<K, S>(Mutex<Records<K, S>>);

pub(crate) struct Handoff<K, S> {
    stripes: Box<[Stripe<K, S>]>,
    hasher: S,
}

impl<K: Hash + Eq, S: BuildHasher + Clone> Handoff<K, S> {
    pub(crate) fn new(stripes: usize, hasher: S) -> Self {
        debug_assert!(stripes.is_power_of_two());
        let stripes = (0..stripes)
            .map(|_| Stripe(Mutex::new(HashMap::with_hasher(hasher.clone()))))
            .collect();
        Handoff { stripes, hasher }
    }

    pub(crate) fn stripe_count(&self) -> usize {
        self.stripes.len()
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Records<K, S>> {
        lock(&self.stripes[i].0)
    }

    fn stripe_of(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) >> 32) as usize & (self.stripes.len() - 1)
    }

    /// Queue `key` for the task, with the node a writer orphaned for it. Called with the key's
    /// shard lock held. `due_tick` is the earliest tick the entry needs the task at (`u64::MAX`
    /// for a record that only frees a node).
    pub(crate) fn push(&self, signals: &Signals, key: K, orphan: Option<TimerId>, due_tick: u64) {
        let mut stripe = self.lock(self.stripe_of(&key));
        if signals.closed.load(Ordering::Acquire) {
            return;
        }
        let len_before = stripe.len();
        let slot = stripe.entry(key).or_insert(Orphans::NONE);
        if let Some(node) = orphan {
            slot.add(node);
        }
        let grew_large = len_before + 1 == WAKE_AT_RECORDS && stripe.len() == WAKE_AT_RECORDS;
        let wake = grew_large || due_tick < signals.next_wake.load(Ordering::SeqCst);
        drop(stripe);
        if wake {
            signals.notify.wake();
        }
    }

    /// Swap stripe `i` for `spare` and return what it held.
    pub(crate) fn take(&self, i: usize, spare: Records<K, S>) -> Records<K, S> {
        std::mem::replace(&mut *self.lock(i), spare)
    }

    /// An empty map to swap in.
    pub(crate) fn empty(&self) -> Records<K, S> {
        HashMap::with_hasher(self.hasher.clone())
    }

    /// Whether any stripe holds a record.
    pub(crate) fn has_records(&self) -> bool {
        (0..self.stripes.len()).any(|i| !self.lock(i).is_empty())
    }

    /// The number of queued records (test-only visibility).
    pub(crate) fn len(&self) -> usize {
        (0..self.stripes.len()).map(|i| self.lock(i).len()).sum()
    }

    /// Forget that a queued record orphaned `node`: the task found the node stale and freed it.
    /// Called by the task after it saw, under the key's shard lock, that no entry holds the node.
    pub(crate) fn forget_orphan(&self, key: &K, node: TimerId) {
        let mut stripe = self.lock(self.stripe_of(key));
        if let Some(slot) = stripe.get_mut(key) {
            slot.forget(node);
        }
    }

    /// Drop every record and refuse new ones: the task has stopped.
    pub(crate) fn close(&self, signals: &Signals) {
        signals.closed.store(true, Ordering::SeqCst);
        for i in 0..self.stripes.len() {
            let old = std::mem::replace(&mut *self.lock(i), self.empty());
            drop(old);
        }
    }
}

/// Loom models of the hand-off, with the writer's and the task's steps as `Store::write` and
/// the driver take them (an entry behind a mutex stands in for the shard lock).
/// Run with `RUSTFLAGS="--cfg loom" cargo test --release --lib loom_`.
#[cfg(all(test, loom))]
mod loom_handoff {
    use super::*;
    use crate::sync::Arc;
    use loom::thread;
    use std::hash::BuildHasherDefault;

    type Hasher = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

    /// The node id the model's task files entries under.
    const NODE: TimerId = 7;

    struct Entry {
        deadline: u64,
        timer: TimerId,
    }

    struct World {
        handoff: Handoff<u8, Hasher>,
        signals: Signals,
        entry: Mutex<Entry>,
    }

    fn world() -> Arc<World> {
        Arc::new(World {
            handoff: Handoff::new(2, Hasher::default()),
            signals: Signals::default(),
            entry: Mutex::new(Entry {
                deadline: NEVER,
                timer: UNFILED,
            }),
        })
    }

    /// A writer: `Store::write` for key 1 (deadlines stand for their own ticks).
    fn write(w: &World, deadline: u64) {
        let mut entry = lock(&w.entry);
        let (timer, record) = retime(entry.timer, entry.deadline, deadline);
        if let Some(orphan) = record {
            w.handoff.push(&w.signals, 1, orphan, deadline);
        }
        entry.timer = timer;
        entry.deadline = deadline;
        assert!(w.handoff.len() <= 1, "more than one record for one key");
    }

    /// The task's drain: file every queued key at the deadline its entry holds now.
    fn drain(w: &World, filed: &mut Option<u64>) {
        for i in 0..w.handoff.stripe_count() {
            for (_key, orphans) in w.handoff.take(i, w.handoff.empty()) {
                let mut entry = lock(&w.entry);
                if entry.timer == PENDING {
                    // The model's wheel has one node, so an orphan is always it.
                    assert!(orphans.nodes().all(|n| n == NODE));
                    entry.timer = NODE;
                    *filed = Some(entry.deadline);
                }
            }
        }
    }

    #[test]
    fn loom_handoff_files_the_latest_deadline_and_loses_no_wakeup() {
        loom::model(|| {
            let w = world();
            let writer = {
                let w = Arc::clone(&w);
                // Each deadline is earlier than the last: each needs the task, now.
                thread::spawn(move || [30, 20, 10].into_iter().for_each(|d| write(&w, d)))
            };
            // The task: drain, publish when it would wake next, look again, then sleep until
            // woken. It has no timer here, so a lost wake-up leaves it asleep: a deadlock.
            let mut filed = None;
            loop {
                drain(&w, &mut filed);
                w.signals
                    .next_wake
                    .store(filed.unwrap_or(u64::MAX), Ordering::SeqCst);
                if w.handoff.has_records() {
                    continue;
                }
                let entry = lock(&w.entry);
                if filed == Some(10) && entry.timer == NODE {
                    break;
                }
                drop(entry);
                w.signals.notify.wait_blocking();
            }
            writer.join().unwrap();
            assert_eq!(lock(&w.entry).deadline, 10);
            assert_eq!(w.handoff.len(), 0);
        });
    }

    #[test]
    fn loom_handoff_stops_growing_once_the_task_is_gone() {
        loom::model(|| {
            let w = world();
            let cancelled = Arc::new(AtomicBool::new(false));
            let writer = {
                let w = Arc::clone(&w);
                thread::spawn(move || {
                    write(&w, 20);
                    write(&w, 10);
                })
            };
            let last_handle = {
                let (w, cancelled) = (Arc::clone(&w), Arc::clone(&cancelled));
                // What dropping the last handle does: cancel, which wakes the task.
                thread::spawn(move || {
                    cancelled.store(true, Ordering::SeqCst);
                    w.signals.notify.wake();
                })
            };
            // The task: work, then check for cancellation before it parks.
            let mut filed = None;
            loop {
                drain(&w, &mut filed);
                w.signals
                    .next_wake
                    .store(filed.unwrap_or(u64::MAX), Ordering::SeqCst);
                if cancelled.load(Ordering::SeqCst) {
                    break;
                }
                if !w.handoff.has_records() {
                    w.signals.notify.wait_blocking();
                }
            }
            // How the task ends, however it ends.
            w.handoff.close(&w.signals);
            writer.join().unwrap();
            last_handle.join().unwrap();
            assert_eq!(
                w.handoff.len(),
                0,
                "a write after the task stopped queued a record"
            );
            // Later writes queue nothing either.
            write(&w, 5);
            assert_eq!(w.handoff.len(), 0);
        });
    }
}
