//! Stale copies: what a loading cache with `stale_if_error(window)` keeps of an entry past its
//! deadline, for a `fetch` whose load fails (or is slow) to return instead of an error.
//!
//! A stale copy is the entry itself, left in the map by the expiry task when its node fires
//! at the deadline: marked stale (`Entry::is_stale`), its node re-filed at the end of the
//! window, when the task removes it and reports it `Expired`. Nothing else changes:
//!
//! - it is not live, so `get`, `contains_key` and `iter` never return it (the exact-read rule
//!   needs nothing new), and [`Store::entry_count`] leaves it out (the count of stale copies
//!   is kept beside the map: up by the task as it marks one, down by [`Store::retire`] as one
//!   leaves, whatever the path);
//! - it stays in the capacity policy, so it counts toward the bound;
//! - a write over it replaces it like any entry (reported `Expired`, as an overwrite of an
//!   expired entry is); `remove` and the invalidations remove it (`Explicit`).
//!
//! An entry past its deadline that the task has not marked yet (at most a tick) is a stale
//! copy to a `fetch` too: [`Store::stale_copy`] looks at the deadline and the window, not the
//! mark. Its stamp's time bits throttle loads once a failed load has served it
//! ([`Store::throttle_stale`]).
//!
//! Invariant: every value is reported once, when it leaves the map: a stale copy's value when
//! its window ends (`Expired`) or something else removes it.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::Ordering;

use super::entry::{with_map, Entry, Stored};
use super::Store;

/// A stale copy's value, and until when loads of its key are throttled (if they are).
pub(crate) struct StaleCopy<V> {
    pub(crate) value: V,
    pub(crate) throttled_until: Option<u64>,
}

impl<K, V, S> Store<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    /// The stale window in nanoseconds (0: the cache keeps no stale copies).
    #[inline]
    pub(crate) fn stale_window(&self) -> u64 {
        self.rules()
            .and_then(|rules| rules.stale)
            .map_or(0, |window| window.as_nanos() as u64)
    }

    /// Entries held, stale copies left out.
    pub(crate) fn entry_count(&self) -> u64 {
        let stale = self
            .refresh
            .as_deref()
            .map_or(0, |r| r.stale.load(Ordering::Relaxed));
        (self.map.len() as u64).saturating_sub(stale)
    }

    /// Whether [`keep_stale`](Self::keep_stale) keeps `entry`, past its deadline at `now`,
    /// as a stale copy (a look, changing nothing).
    pub(super) fn keeps_stale(&self, entry: &Entry<V>, now: u64) -> bool {
        let window = self.stale_window();
        window > 0 && now < entry.deadline().saturating_add(window)
    }

    /// The expiry task, under the shard's write lock, for an entry past its deadline at
    /// `now` (and not hidden by an invalidation): keep it as a stale copy? The end of its
    /// window if so, and whether it was marked just now; `None` to remove it.
    pub(super) fn keep_stale(&self, entry: &mut Entry<V>, now: u64) -> Option<(u64, bool)> {
        let window = self.stale_window();
        if window == 0 {
            return None;
        }
        let until = entry.deadline().saturating_add(window);
        if now >= until {
            return None;
        }
        let newly = !entry.is_stale();
        if newly {
            entry.set_stale();
            if let Some(refresh) = self.refresh.as_deref() {
                refresh.stale.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some((until, newly))
    }

    /// A stale copy left the map (any path): it is no longer counted apart.
    #[inline]
    pub(super) fn stale_left(&self, entry: &Entry<V>) {
        if entry.is_stale() {
            if let Some(refresh) = self.refresh.as_deref() {
                refresh.stale.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// The stale copy of `key`, if there is one now: an entry of the current generation,
    /// past its deadline by less than the stale window.
    pub(crate) fn stale_copy<Q>(&self, key: &Q) -> Option<StaleCopy<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let window = self.stale_window();
        if window == 0 {
            return None;
        }
        let generation = self.generation();
        with_map!(&self.map, m => m.view(key, |_, stored| {
            let e = stored.entry();
            let deadline = e.deadline();
            if e.generation() != generation || deadline == crate::time::clock::NEVER {
                return None;
            }
            let now = self.clock.now();
            (deadline <= now && now < deadline.saturating_add(window)).then(|| StaleCopy {
                value: e.value.clone(),
                throttled_until: stored.stamp().and_then(|s| s.throttled_until()),
            })
        }))
        .flatten()
    }

    /// Throttle loads of `key` until `until`, if its entry is (still) a stale copy.
    pub(crate) fn throttle_stale<Q>(&self, key: &Q, until: u64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = self.clock.now();
        with_map!(&self.map, m => m.view(key, |_, stored| {
            if stored.entry().deadline() <= now {
                if let Some(stamp) = stored.stamp() {
                    stamp.throttle(until);
                }
            }
        }));
    }
}
