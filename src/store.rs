//! The entry layout, shared by the handles (which read and write entries) and the expiry task
//! (which files them in its wheel and removes them when due).
//!
//! An [`Entry`] is 16 bytes plus the value: a deadline in nanoseconds since the cache's epoch
//! ([`NEVER`] when it has none), the `invalidate_all` generation it was written in, and its
//! [`timer`](Entry::timer) state. Only the shard lock guards an entry; every field below is
//! read and written under it.
//!
//! Invariants:
//! - An entry is *live* when its generation is the cache's current one and its deadline is in
//!   the future. Reads return live entries only, whatever the task has or has not done yet.
//! - `timer` says where the entry's deadline is known to the task:
//!   - [`UNFILED`]: nowhere; the entry has no deadline, or had one that the task dropped.
//!   - [`PENDING`]: a hand-off record for the key is queued (see `handoff.rs`); the task will
//!     read the entry's *current* deadline when it drains the record, so writers that see
//!     `PENDING` need not queue another.
//!   - a wheel node id: the task filed the entry at a deadline no later than `deadline`. A
//!     writer that moves the deadline later does nothing (the node fires early, the task sees
//!     the later deadline and re-files it); a writer that moves it earlier queues a record
//!     carrying the node id and sets `PENDING`.
//! - Only the expiry task turns `PENDING` into a node id, and each node id is referenced by at
//!   most one entry or one queued record at a time.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use dashmap::{DashMap, Entry as Slot};

use crate::clock::{Clock, NEVER};
use crate::handoff::{Handoff, Signals};
use crate::load::{Flight, Flights};
use crate::sync::Arc as SyncArc;
use crate::wheel::TimerId;

/// `timer` value: the task does not track this entry.
pub(crate) const UNFILED: TimerId = u32::MAX;
/// `timer` value: a hand-off record for this key is queued.
pub(crate) const PENDING: TimerId = u32::MAX - 1;

/// One cached value and its bookkeeping.
pub(crate) struct Entry<V> {
    pub(crate) value: V,
    /// Nanoseconds since the cache's epoch, or [`NEVER`].
    pub(crate) deadline: u64,
    /// [`UNFILED`], [`PENDING`] or the id of the wheel node that holds this key.
    pub(crate) timer: TimerId,
    /// The `invalidate_all` generation the entry was written in.
    pub(crate) generation: u32,
}

impl<V> Entry<V> {
    /// Whether a read at `generation` may return this entry. Reads the clock only when the
    /// entry has a deadline.
    #[inline]
    pub(crate) fn is_live(&self, generation: u32, now: impl FnOnce() -> u64) -> bool {
        self.generation == generation && (self.deadline == NEVER || self.deadline > now())
    }

    /// Whether the entry has a node in the wheel.
    pub(crate) fn node(&self) -> Option<TimerId> {
        (self.timer != UNFILED && self.timer != PENDING).then_some(self.timer)
    }
}

/// The map, the hand-off to the task, the clock and the `invalidate_all` generation: every
/// operation the handles perform, each in one shard lock.
pub(crate) struct Store<K, V, S> {
    pub(crate) map: DashMap<K, Entry<V>, S>,
    pub(crate) handoff: Handoff<K, S>,
    pub(crate) flights: Flights<K, V, S>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) clock: Clock,
    generation: AtomicU32,
}

impl<K, V, S> Store<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    pub(crate) fn new(
        clock: Clock,
        capacity: usize,
        shards: usize,
        hasher: S,
        signals: Arc<Signals>,
    ) -> Self {
        Store {
            map: DashMap::with_capacity_and_hasher_and_shard_amount(
                capacity,
                hasher.clone(),
                shards,
            ),
            handoff: Handoff::new(shards, hasher.clone()),
            flights: Flights::new(shards, hasher),
            signals,
            clock,
            generation: AtomicU32::new(0),
        }
    }

    /// The current `invalidate_all` generation.
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// A clone of the live value for `key`.
    #[inline]
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let generation = self.generation();
        self.map
            .view(key, |_, e| {
                e.is_live(generation, || self.clock.now())
                    .then(|| e.value.clone())
            })
            .flatten()
    }

    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let generation = self.generation();
        self.map
            .view(key, |_, e| e.is_live(generation, || self.clock.now()))
            .unwrap_or(false)
    }

    /// Store `value` under `key` until `deadline` and return the entry it replaced, for the
    /// caller to drop (or report) once the shard lock is released.
    #[inline]
    pub(crate) fn insert(&self, key: K, value: V, deadline: u64) -> Option<Entry<V>> {
        let slot = self.map.entry(key);
        self.flights.supersede(slot.key());
        self.write(slot, value, deadline, self.generation())
    }

    /// Store the value a load produced, unless a write or `invalidate_all` landed while it
    /// loaded (see `load.rs`), or `deadline` is `None` (a zero TTL: returned, not stored).
    pub(crate) fn finish_load(
        &self,
        key: K,
        flight: &SyncArc<Flight<V>>,
        value: V,
        deadline: Option<u64>,
        generation: u32,
    ) {
        let slot = self.map.entry(key);
        // Unregistered under the shard lock: a writer either marked the flight before this
        // point, or finds no flight and writes after us.
        self.flights.unregister(slot.key(), flight);
        let replaced = match deadline {
            Some(deadline) if !flight.is_superseded() && self.generation() == generation => {
                self.write(slot, value, deadline, generation)
            }
            _ => None,
        };
        drop(replaced);
    }

    /// Write an entry into `slot`, held under its shard lock, telling the task about a new or
    /// earlier deadline.
    fn write(
        &self,
        slot: Slot<'_, K, Entry<V>>,
        value: V,
        deadline: u64,
        generation: u32,
    ) -> Option<Entry<V>> {
        let due = self.clock.tick_of(deadline);
        match slot {
            Slot::Vacant(slot) => {
                let timer = if deadline == NEVER {
                    UNFILED
                } else {
                    self.handoff
                        .push(&self.signals, slot.key().clone(), None, due);
                    PENDING
                };
                slot.insert(Entry {
                    value,
                    deadline,
                    timer,
                    generation,
                });
                None
            }
            Slot::Occupied(mut slot) => {
                let old = slot.get();
                let timer = match old.timer {
                    // A later or no deadline: the filed node fires first, the task re-files.
                    node if deadline == NEVER || node == PENDING => node,
                    UNFILED => {
                        self.handoff
                            .push(&self.signals, slot.key().clone(), None, due);
                        PENDING
                    }
                    node if deadline < old.deadline => {
                        self.handoff
                            .push(&self.signals, slot.key().clone(), Some(node), due);
                        PENDING
                    }
                    node => node,
                };
                let new = Entry {
                    value,
                    deadline,
                    timer,
                    generation,
                };
                Some(std::mem::replace(slot.get_mut(), new))
            }
        }
    }

    /// Remove `key`; its value if it was live.
    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let generation = self.generation();
        let removed = match self.flights.registered_key(key) {
            // A load is in flight: take the shard lock even if the key is absent, so that the
            // load cannot store its value after this remove (see load.rs).
            Some(key) => match self.map.entry(key) {
                Slot::Occupied(slot) => {
                    self.flights.supersede(slot.key());
                    self.orphan(slot.key(), slot.get());
                    Some(slot.remove_entry())
                }
                Slot::Vacant(slot) => {
                    self.flights.supersede(slot.key());
                    None
                }
            },
            None => self.map.remove_if(key, |key, entry| {
                self.flights.supersede(key);
                self.orphan(key, entry);
                true
            }),
        };
        let (_key, entry) = removed?;
        entry
            .is_live(generation, || self.clock.now())
            .then_some(entry.value)
    }

    /// Tell the task that `entry`, being removed under its shard lock, leaves its wheel node
    /// behind: the task then sees either the entry or this record (see handoff.rs).
    fn orphan(&self, key: &K, entry: &Entry<V>) {
        if let Some(node) = entry.node() {
            self.handoff
                .push(&self.signals, key.clone(), Some(node), u64::MAX);
        }
    }

    /// Make every entry written so far invisible, at once; the task sweeps them later.
    pub(crate) fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.signals.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_honours_deadline_and_generation() {
        let e = Entry {
            value: 1u64,
            deadline: 100,
            timer: UNFILED,
            generation: 3,
        };
        assert!(e.is_live(3, || 99));
        assert!(!e.is_live(3, || 100));
        assert!(!e.is_live(4, || 0));
        let forever = Entry {
            deadline: NEVER,
            ..e
        };
        assert!(forever.is_live(3, || panic!("no clock read for an entry without deadline")));
    }

    #[test]
    fn entry_stays_small() {
        // Key and value of 8 bytes each: 32 bytes a bucket in the map.
        assert_eq!(std::mem::size_of::<(u64, Entry<u64>)>(), 32);
    }
}
