//! [`Writes`]: the order of one replica's writes to a key, so that the local tier never
//! keeps a value Redis has already replaced.
//!
//! Two writes of one key that overlap in time (both sent, neither answered) may reach Redis
//! in either order, so neither knows whether its value is the one Redis kept. Invariants:
//! - A write stores its value in the local tier only if no other write of that key through
//!   this tier was in flight at any moment of its own flight; otherwise it drops the key
//!   locally, and the next read asks Redis.
//! - That decision and the local write happen under the key's record lock, so a write that
//!   begins after it is ordered after the local write too.
//! - A write dropped before it finishes (cancelled, or unwound by a panic) may still have
//!   reached Redis: its record drops the key locally and leaves the books balanced.
//! - Records live only while a write of their key is in flight: a local update that panics
//!   (a replaced value's `Drop`, user code) settles its record before the panic goes on.

use std::hash::Hash;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use dashmap::DashMap;

/// Writes in flight, per key.
pub(crate) struct Writes<K> {
    in_flight: DashMap<K, Record>,
}

struct Record {
    /// Writes of the key in flight now.
    count: u32,
    /// Writes of the key begun since the record was made: each write's own number.
    begun: u64,
}

/// One write in flight. Finish it with [`Ticket::finish`]; dropped unfinished, it drops the
/// key from the local tier with `drop_local`, which hands back what it removed so that it is
/// dropped after the record's lock (a value's `Drop` is user code).
pub(crate) struct Ticket<'a, K: Hash + Eq + Clone, R, F: FnMut(&K) -> R> {
    writes: &'a Writes<K>,
    key: K,
    number: u64,
    overlapped: bool,
    drop_local: F,
    finished: bool,
}

impl<K: Hash + Eq + Clone> Writes<K> {
    pub(crate) fn new() -> Self {
        Writes {
            in_flight: DashMap::new(),
        }
    }

    /// Record a write of `key` beginning now. `drop_local` removes the key from the local
    /// tier (what an unfinished or overlapped write does).
    pub(crate) fn begin<R, F: FnMut(&K) -> R>(
        &self,
        key: &K,
        drop_local: F,
    ) -> Ticket<'_, K, R, F> {
        let mut record = self
            .in_flight
            .entry(key.clone())
            .or_insert(Record { count: 0, begun: 0 });
        let overlapped = record.count > 0;
        record.count += 1;
        record.begun += 1;
        let number = record.begun;
        drop(record);
        Ticket {
            writes: self,
            key: key.clone(),
            number,
            overlapped,
            drop_local,
            finished: false,
        }
    }

    /// Whether no write of any key is in flight (the books are balanced).
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// End the write numbered `number`: under the record's lock, `local(alone)` runs, where
    /// `alone` says whether no other write overlapped it; what it returns is handed back
    /// after the lock. The record is settled whatever `local` does: a panic in it (a replaced
    /// value's `Drop`, user code) goes on to the caller after the books are balanced.
    fn end<R>(&self, key: &K, number: u64, overlapped: bool, local: impl FnOnce(bool) -> R) -> R {
        match self.in_flight.entry(key.clone()) {
            dashmap::Entry::Occupied(mut record) => {
                let alone = !overlapped && record.get().begun == number;
                let out = catch_unwind(AssertUnwindSafe(|| local(alone)));
                record.get_mut().count -= 1;
                if record.get().count == 0 {
                    record.remove();
                } else {
                    drop(record);
                }
                out.unwrap_or_else(|panic| resume_unwind(panic))
            }
            // Unreachable while the books balance; dropping the key locally is always safe.
            dashmap::Entry::Vacant(_) => local(false),
        }
    }
}

impl<K: Hash + Eq + Clone, R, F: FnMut(&K) -> R> Ticket<'_, K, R, F> {
    /// End the write: `local(alone)` runs under the key's record lock, where `alone` says
    /// whether the local tier may take the written value (no other write of the key
    /// overlapped this one).
    pub(crate) fn finish(mut self, local: impl FnOnce(bool)) {
        self.finished = true;
        self.writes
            .end(&self.key, self.number, self.overlapped, local);
    }
}

impl<K: Hash + Eq + Clone, R, F: FnMut(&K) -> R> Drop for Ticket<'_, K, R, F> {
    fn drop(&mut self) {
        if !self.finished {
            let drop_local = &mut self.drop_local;
            let key = &self.key;
            let removed = self
                .writes
                .end(key, self.number, self.overlapped, |_| drop_local(key));
            drop(removed); // outside the record's lock
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Writes;

    #[test]
    fn a_write_alone_may_fill_and_overlapping_writes_may_not() {
        let writes = Writes::new();
        let mut dropped = 0;
        let alone = writes.begin(&1, |_| {});
        let mut result = None;
        alone.finish(|a| result = Some(a));
        assert_eq!(result, Some(true));

        let first = writes.begin(&1, |_| {});
        let second = writes.begin(&1, |_| {});
        let (mut a, mut b) = (None, None);
        first.finish(|x| a = Some(x));
        second.finish(|x| b = Some(x));
        assert_eq!((a, b), (Some(false), Some(false)));

        // A write that began while another was in flight, and ends after it, overlapped too.
        let first = writes.begin(&2, |_| {});
        let second = writes.begin(&2, |_| {});
        let (mut a, mut b) = (None, None);
        second.finish(|x| b = Some(x));
        first.finish(|x| a = Some(x));
        assert_eq!((a, b), (Some(false), Some(false)));

        // Unfinished: dropped locally, books balanced.
        drop(writes.begin(&3, |_| dropped += 1));
        assert_eq!(dropped, 1);
        assert!(writes.is_idle());
    }

    #[test]
    fn a_local_update_that_panics_costs_that_write_only_never_the_books() {
        let writes = Writes::new();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            writes
                .begin(&1, |_| ())
                .finish(|_| panic!("a replaced value's Drop"))
        }));
        assert!(panicked.is_err());
        assert!(writes.is_idle(), "the write's record outlived it");
        // The key's next write is alone again.
        let mut alone = None;
        writes.begin(&1, |_| ()).finish(|a| alone = Some(a));
        assert_eq!(alone, Some(true));
        assert!(writes.is_idle());
    }

    #[test]
    fn an_unfinished_write_drops_what_it_removed_after_the_record_lock() {
        /// A removed value whose `Drop` writes the same key again: under the record's lock
        /// it would wait on that lock forever.
        struct WritesAgain<'a>(&'a Writes<u64>);
        impl Drop for WritesAgain<'_> {
            fn drop(&mut self) {
                self.0.begin(&1, |_| ()).finish(|_| ());
            }
        }
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let writes = Writes::new();
            drop(writes.begin(&1, |_| WritesAgain(&writes)));
            done.send(writes.is_idle()).unwrap();
        });
        let idle = finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a removed value was dropped under the write's record lock");
        assert!(idle);
    }
}
