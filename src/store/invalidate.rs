//! Invalidations: `invalidate_all` and `invalidate_entries_if`, as generations.
//!
//! Every entry is stamped with the generation it was written in (modulo 2^29, see
//! [`GENERATION_MASK`]). Each invalidation begins a new generation and applies to the entries
//! of the generations before it, never to those written after it:
//! - `invalidate_all` hides every older entry at once;
//! - `invalidate_entries_if(pred)` hides the older entries that `pred` matches. Until the
//!   expiry task has swept them, a read of an older entry asks the predicates still pending
//!   (on copies, outside any lock). The sweep removes the matches and *restamps* the others
//!   with the newest generation they were checked against, so that once every pending
//!   predicate is swept, reads of every entry take the fast path again: an entry of the
//!   current generation is visible without asking anything.
//!
//! Invariants:
//! - An entry of the current generation is visible (as far as invalidations go). An older
//!   one is hidden if an `invalidate_all` began after it; otherwise it is visible unless a
//!   pending predicate that began after it matches it ([`Seen`]).
//! - A predicate stays pending until a complete sweep that began at or after its generation
//!   has checked (and restamped or removed) every entry older than it; `invalidate_all` drops
//!   every pending predicate (the entries they apply to are all hidden now).
//! - `swept`: every entry in the map was written in, or restamped to, that generation or a
//!   later one. A new generation never comes round (2^29 later) to one an entry still has:
//!   [`Invalidations::begin`] refuses when it would, and the caller sweeps first.
//! - Generations begin one at a time, under the pending predicates' write lock.
//! - A predicate is user code: it never runs under a lock of ours, and a panic in it counts as
//!   "does not match" (that entry stays).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use super::entry::GENERATION_MASK;

/// A predicate given to `invalidate_entries_if`.
pub(crate) type Predicate<K, V> = Arc<dyn Fn(&K, &V) -> bool + Send + Sync>;

/// How many `invalidate_all` times are remembered, to judge removal causes.
const REMEMBERED: usize = 16;

/// What invalidations say about an entry of an older generation than the current one.
pub(crate) enum Seen<K, V> {
    /// Visible; checked through the generation `through` (a sweep restamps it so).
    Visible { through: u32 },
    /// Hidden by an `invalidate_all`.
    Hidden,
    /// Visible unless one of these pending predicates matches it. Restamped after they are
    /// checked, the entry's generation becomes `through`.
    Ask {
        predicates: Pending<K, V>,
        through: u32,
    },
}

/// The pending predicates, each with the generation it began.
type List<K, V> = Arc<[(u64, Predicate<K, V>)]>;

/// The pending predicates that apply to one entry: a shared copy of the pending list (no
/// allocation per read), and the entry's generation, after which a predicate must have begun
/// to apply.
pub(crate) struct Pending<K, V> {
    list: List<K, V>,
    after: u64,
}

impl<K, V> Pending<K, V> {
    /// Whether any of them matches; a panicking one does not. Call with no lock held.
    pub(crate) fn matches(&self, key: &K, value: &V) -> bool {
        self.list
            .iter()
            .filter(|(began, _)| *began > self.after)
            .any(|(_, p)| catch_unwind(AssertUnwindSafe(|| p(key, value))).unwrap_or(false))
    }
}

/// What a new generation begins with.
pub(crate) enum Begin<K, V> {
    All { now: u64 },
    Matching(Predicate<K, V>),
}

/// [`Invalidations::alls`]: (generation, when) of the last few `invalidate_all`s.
type Alls = [(AtomicU64, AtomicU64); REMEMBERED];

/// The generations: how many began, which hid everything, which predicates are pending.
pub(crate) struct Invalidations<K, V> {
    /// Generations begun so far (the current one's full number).
    count: AtomicU64,
    /// The generation the last `invalidate_all` began (0: none).
    last_all: AtomicU64,
    /// See the module docs.
    swept: AtomicU64,
    /// The last few `invalidate_all`s: (generation, when), by generation modulo
    /// [`REMEMBERED`]: tells an entry that expired before it was hidden from one hidden live.
    /// Made at the first `invalidate_all` (a cache that never calls it, one built per request
    /// say, carries a pointer, not the array).
    alls: OnceLock<Box<Alls>>,
    /// Pending predicates and the generation each began, replaced whole on each change, so
    /// that a reader takes a shared copy in one step.
    pending: RwLock<Option<List<K, V>>>,
}

impl<K, V> Default for Invalidations<K, V> {
    fn default() -> Self {
        Invalidations {
            count: AtomicU64::new(0),
            last_all: AtomicU64::new(0),
            swept: AtomicU64::new(0),
            alls: OnceLock::new(),
            pending: RwLock::new(None),
        }
    }
}

/// The 29-bit generation of the full number `count`.
fn masked(count: u64) -> u32 {
    (count & u64::from(GENERATION_MASK)) as u32
}

impl<K, V> Invalidations<K, V> {
    /// The current generation, as entries are stamped.
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        masked(self.count())
    }

    /// The current generation's full number.
    #[inline]
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// The full number of an entry's generation `e`, as of the current one `count` (entries
    /// are never 2^29 generations behind, see the module docs).
    fn full(count: u64, e: u32) -> u64 {
        count - u64::from(masked(count).wrapping_sub(e) & GENERATION_MASK)
    }

    /// Whether an `invalidate_all` began after generation `count` (its full number).
    pub(crate) fn all_after(&self, count: u64) -> bool {
        self.last_all.load(Ordering::Acquire) > count
    }

    /// Whether an `invalidate_all` hid entries of generation `e`.
    pub(crate) fn hidden(&self, e: u32) -> bool {
        let count = self.count();
        Self::full(count, e) < self.last_all.load(Ordering::Acquire)
    }

    /// When the `invalidate_all` that hid entries of generation `e` happened, if one did:
    /// `Some(0)` if it is too long ago to remember.
    pub(crate) fn hidden_at(&self, e: u32) -> Option<u64> {
        let count = self.count();
        let full = Self::full(count, e);
        if full >= self.last_all.load(Ordering::Acquire) {
            return None;
        }
        // The first `invalidate_all` after it (one happened: `alls` is made).
        let Some(alls) = self.alls.get() else {
            return Some(0);
        };
        let at = alls
            .iter()
            .map(|(generation, at)| {
                (
                    generation.load(Ordering::Acquire),
                    at.load(Ordering::Acquire),
                )
            })
            .filter(|&(generation, _)| generation > full)
            .min_by_key(|&(generation, _)| generation)
            .map_or(0, |(_, at)| at);
        Some(at)
    }

    /// What invalidations say about an entry of generation `e`, not the current one.
    pub(crate) fn seen(&self, e: u32) -> Seen<K, V> {
        let count = self.count();
        let full = Self::full(count, e);
        if full < self.last_all.load(Ordering::Acquire) {
            return Seen::Hidden;
        }
        let list = self
            .pending
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // Every generation up to the current one is either a pending predicate asked here,
        // or began with nothing that applies to this entry.
        let through = masked(count);
        let list = list.filter(|list| list.iter().any(|(began, _)| *began > full));
        if let Some(list) = list {
            Seen::Ask {
                predicates: Pending { list, after: full },
                through,
            }
        } else {
            Seen::Visible { through }
        }
    }

    /// Begin a new generation; `Err` gives `begin` back when it would come round to one an
    /// unswept entry may still have: the caller sweeps first and tries again.
    pub(crate) fn begin(&self, begin: Begin<K, V>) -> Result<(), Begin<K, V>> {
        let mut pending = self.pending.write().unwrap_or_else(PoisonError::into_inner);
        let next = self.count() + 1;
        if next - self.swept.load(Ordering::Acquire) > u64::from(GENERATION_MASK) {
            return Err(begin);
        }
        match begin {
            Begin::All { now } => {
                let alls = self.alls.get_or_init(|| {
                    Box::new(std::array::from_fn(|_| {
                        (AtomicU64::new(0), AtomicU64::new(0))
                    }))
                });
                let (generation, at) = &alls[next as usize % REMEMBERED];
                at.store(now, Ordering::Release);
                generation.store(next, Ordering::Release);
                self.last_all.store(next, Ordering::Release);
                *pending = None;
            }
            Begin::Matching(predicate) => {
                let mut list = pending.as_deref().map_or_else(Vec::new, <[_]>::to_vec);
                list.push((next, predicate));
                *pending = Some(Arc::from(list));
            }
        }
        self.count.store(next, Ordering::Release);
        Ok(())
    }

    /// Whether entries may be older than the current generation.
    pub(crate) fn has_unswept(&self) -> bool {
        self.count() > self.swept.load(Ordering::Acquire)
    }

    /// A complete sweep that began at generation `count` checked every older entry: the
    /// predicates that began by then are done.
    pub(crate) fn swept_to(&self, count: u64) {
        self.swept.fetch_max(count, Ordering::AcqRel);
        let mut pending = self.pending.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = pending.as_deref() {
            if list.iter().any(|(began, _)| *began <= count) {
                let left: Vec<_> = list
                    .iter()
                    .filter(|(began, _)| *began > count)
                    .cloned()
                    .collect();
                *pending = (!left.is_empty()).then(|| Arc::from(left));
            }
        }
    }

    /// Predicates still pending (test-only visibility).
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn pending(&self) -> usize {
        self.pending
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_deref()
            .map_or(0, <[_]>::len)
    }

    /// Skip `n` generations at once (tests of the wrap).
    #[cfg(test)]
    pub(crate) fn skip(&self, n: u64) {
        self.count.fetch_add(n, Ordering::AcqRel);
    }
}
