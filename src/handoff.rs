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
//! - **At most one orphan per record.** A key has at most one wheel node at a time, and a node
//!   is referenced by exactly one entry or one record; merging records keeps the orphan.
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::wheel::TimerId;

/// A stripe this large wakes the task even if no deadline is near, so drains stay small.
const WAKE_AT_RECORDS: usize = 4096;

/// A drained stripe's map: key to the node a writer orphaned for it, if any.
pub(crate) type Records<K, S> = HashMap<K, Option<TimerId>, S>;

/// What the task and the writers share besides the store; the task keeps its own `Arc` of it
/// so that it can wait without keeping the store alive.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    /// Wakes the task: a deadline earlier than `next_wake`, a full stripe, `invalidate_all`.
    pub(crate) notify: Notify,
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
        // A poisoned stripe only means a panic elsewhere; its map is still consistent.
        self.stripes[i]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
        let slot = stripe.entry(key).or_insert(None);
        if let Some(node) = orphan {
            // Records are per key and a key has one node at a time, so there is nothing to
            // merge. Were there, the older node would only linger until it fires.
            debug_assert!(slot.is_none(), "two orphaned nodes for one key");
            *slot = Some(node);
        }
        let grew_large = len_before + 1 == WAKE_AT_RECORDS && stripe.len() == WAKE_AT_RECORDS;
        let wake = grew_large || due_tick < signals.next_wake.load(Ordering::SeqCst);
        drop(stripe);
        if wake {
            signals.notify.notify_one();
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
            if *slot == Some(node) {
                *slot = None;
            }
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
