//! Refresh-ahead: the rules of a cache that owns its loader and refreshes its entries
//! (`refresh_after`), as the store keeps them. The expiry task decides *when*, the reload
//! workers (`crate::refresh`) run the loader; this module owns what a reload may change.
//!
//! Each entry of such a cache has a [`Stamp`]: a read bit that readers set, and the time of
//! its next *refresh check*. The entry's wheel node is filed at the earlier of its deadline
//! and that check, so the task looks at it then (see [`Store::fire`]):
//!
//! - read since it was written (or since its last reload started): a reload is started, the
//!   stamp says [`Stamp::RELOADING`], and the key goes to the [`Reloads`] queue;
//! - not read: the check moves to a *re-check*, half way to the deadline (at least a tick
//!   later), so that an entry first read after its refresh time is still reloaded before
//!   it expires, with as much time left as it waited; with no deadline, a refresh interval
//!   later. Past the last re-check the entry is left to expire.
//!
//! Invariants:
//! - **Reads only set a bit**: no read spawns, allocates or queues anything.
//! - **One reload per key at a time**, shared with the loads of that key: a reload leads the
//!   key's flight (see `flight.rs`) or does not run, and a stamp says [`Stamp::RELOADING`]
//!   while its key is queued or reloading, so the task never queues a key twice.
//! - **Writes win**: a write, remove or `invalidate_all` while a reload runs supersedes its
//!   flight, and the reloaded value is discarded (as a load's is, in `write.rs`). Expiry and
//!   eviction are not writes: an entry that expires or is evicted while its reload runs is
//!   followed by the reloaded value, stored as a load's would be (a `fetch` of the key after
//!   the expiry waits for that reload and gets the same value).
//! - **Every reload ends**: whatever becomes of it (stored, failed, timed out, panicked,
//!   skipped), [`Store::reload_ended`] gives an entry still marked [`Stamp::RELOADING`] its
//!   next check a backoff later, so that a failure never stops later refreshes.
//! - **A reload keeps the entry's TTL**: the reloaded value lives as long from now as the
//!   replaced one was written to live (a per-entry TTL stays per-entry); with an `Expiry`, it
//!   is asked as for an update.
//! - The queue holds each key once (the stamp says so), so it is bounded by the live entries.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use super::entry::{with_map, Fresh, Stamp, Stored};
use super::flight::{Flight, Role};
use super::Store;
use crate::loader::Reload;
use crate::sync::{lock, Arc as SyncArc, Mutex};
use crate::time::clock::{Cap, NEVER};
use crate::time::jitter;

/// The refresh settings of a cache that refreshes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// How long after a write an entry that was read is reloaded (`None`: the cache owns a
    /// loader but does not refresh ahead; explicit refreshes still run).
    pub(crate) after: Option<Duration>,
    /// A fraction: each write's refresh comes at a random point of `[after * (1 - jitter),
    /// after]`.
    pub(crate) jitter: f64,
    /// Reload tasks at most at a time.
    pub(crate) max_concurrent: usize,
    /// A reload still running this long after it started is given up.
    pub(crate) timeout: Duration,
    /// After a reload that did not store a value, the entry is checked again no sooner.
    pub(crate) backoff: Duration,
    /// How long an entry past its deadline is kept as a stale copy (`stale_if_error`).
    pub(crate) stale: Option<Duration>,
    /// After a failed load served a stale copy, how long its key's loads are throttled.
    pub(crate) stale_throttle: Duration,
    /// How long a `fetch` waits for a load before it takes a stale copy (`soft_timeout`).
    pub(crate) soft_timeout: Option<Duration>,
}

impl Rules {
    /// Whether a `fetch` runs its load in a task of its own (it may return before the load
    /// ends: with a stale copy, on the load's failure or at the soft timeout).
    pub(crate) fn loads_in_tasks(&self) -> bool {
        self.stale.is_some() || self.soft_timeout.is_some()
    }

    /// Whether entries carry a stamp ([`Stamp`]): for refresh, or for stale copies.
    pub(crate) fn stamps(&self) -> bool {
        self.after.is_some() || self.stale.is_some()
    }
}

/// What a cache that refreshes has beyond the others: its rules, its loader, and the queue
/// of keys due for a reload.
pub(crate) struct Refresh<K, V> {
    pub(crate) rules: Rules,
    pub(crate) loader: std::sync::Arc<dyn Reload<K, V>>,
    pub(crate) reloads: Reloads<K>,
    /// Stale copies in the map (see `stale.rs`).
    pub(crate) stale: std::sync::atomic::AtomicU64,
}

/// The keys due for a reload, and how many reload tasks run.
pub(crate) struct Reloads<K> {
    state: Mutex<Queue<K>>,
}

struct Queue<K> {
    keys: VecDeque<K>,
    running: usize,
}

impl<K> Default for Reloads<K> {
    fn default() -> Self {
        Reloads {
            state: Mutex::new(Queue {
                keys: VecDeque::new(),
                running: 0,
            }),
        }
    }
}

impl<K> Reloads<K> {
    /// Queue `key`; whether a new reload task is to be started for it (fewer than `max` run).
    pub(crate) fn push(&self, key: K, max: usize) -> bool {
        let mut queue = lock(&self.state);
        queue.keys.push_back(key);
        let start = queue.running < max;
        queue.running += usize::from(start);
        start
    }

    /// The next key for a reload task; `None` ends that task (counted as gone).
    pub(crate) fn next(&self) -> Option<K> {
        let mut queue = lock(&self.state);
        let key = queue.keys.pop_front();
        if key.is_none() {
            queue.running -= 1;
        }
        key
    }

    /// A reload task is gone without asking for more (its cache was dropped).
    pub(crate) fn quit(&self) {
        lock(&self.state).running -= 1;
    }

    /// Reload tasks running now (test-only visibility).
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn running(&self) -> usize {
        lock(&self.state).running
    }

    /// Keys waiting for a reload task (test-only visibility).
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn queued(&self) -> usize {
        lock(&self.state).keys.len()
    }
}

/// What a fired node of a live entry means for its refresh.
pub(crate) enum Check<K> {
    /// Nothing: the entry waits for its next check or its deadline.
    Wait,
    /// A reload of this key (a copy of the entry's) is due: the stamp now says
    /// [`Stamp::RELOADING`].
    Reload(K),
}

impl<K, V, S> Store<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    /// The refresh rules, in a cache that refreshes.
    #[inline]
    pub(crate) fn rules(&self) -> Option<&Rules> {
        self.refresh.as_deref().map(|r| &r.rules)
    }

    /// The refresh state of an entry written now whose TTL ends at `ends` (its cap, before
    /// any time-to-idle; `now` read already, if the write read the clock).
    #[inline]
    pub(super) fn fresh(&self, ends: u64, now: Option<u64>) -> Fresh {
        let Some(rules) = self.rules() else {
            return Fresh::NONE;
        };
        let now = now.unwrap_or_else(|| self.clock.now());
        let at = match (rules.after, rules.jitter) {
            (None, _) => NEVER,
            (Some(after), 0.0) => self.clock.deadline_after(now, after),
            // Spread below `after` only: a refresh never comes later than asked.
            (Some(after), j) => self
                .clock
                .deadline_after(now, after.mul_f64(1.0 - j * jitter::unit())),
        };
        Fresh {
            at,
            ttl: match ends {
                NEVER => NEVER,
                ends => ends.saturating_sub(now),
            },
        }
    }

    /// The refresh check of `key`'s live entry, whose node fired at `now` (the expiry task,
    /// under the key's shard write lock): start a reload, move the check to a re-check, or
    /// nothing. A reload copies the key first (user code): a panic there leaves the stamp as
    /// it was.
    pub(super) fn check(&self, key: &K, stamp: &Stamp, deadline: u64, now: u64) -> Check<K> {
        let Some(after) = self.rules().and_then(|r| r.after) else {
            return Check::Wait;
        };
        if stamp.due() > now {
            return Check::Wait;
        }
        if stamp.was_read() {
            let key = key.clone();
            stamp.start_reload();
            return Check::Reload(key);
        }
        let tick = self.clock.tick_nanos();
        let next = match deadline {
            NEVER => now.saturating_add(after.as_nanos() as u64),
            deadline => now.saturating_add(((deadline - now) / 2).max(tick)),
        };
        stamp.set_next(if next >= deadline { Stamp::IDLE } else { next });
        Check::Wait
    }

    /// Begin a reload of `key` for the expiry task: lead the key's flight, if no load or
    /// reload of it runs and its entry still waits for this reload. The flight and the
    /// generation the reload begins in; `None`: nothing to reload (the entry's stamp was
    /// dealt with).
    pub(crate) fn begin_reload(&self, key: &K) -> Option<(SyncArc<Flight<V>>, u64)> {
        let flight = match self.flights.join_or_lead(key) {
            Role::Lead(flight) => flight,
            // A load, compute or explicit refresh of the key runs: it stores what it gets.
            Role::Wait(_) => {
                self.reload_ended(key);
                return None;
            }
        };
        // Registered first, looked last: a write before registration shows here (a fresh
        // stamp), one after it supersedes the flight.
        let waiting = with_map!(&self.map, m => m
            .view(key, |_, stored| stored.stamp().is_some_and(|s| s.next() == Stamp::RELOADING)))
        .unwrap_or(false);
        if !waiting {
            self.flights.abandon(key, &flight);
            return None;
        }
        Some((flight, self.generation_count()))
    }

    /// The cap of `value` reloaded for `key` now: an `Expiry` asked as for an update;
    /// otherwise the TTL the replaced entry was written with, from now (the cache's default
    /// if the entry is gone).
    pub(crate) fn reload_cap(&self, key: &K, value: &V) -> Cap
    where
        K: 'static,
        V: 'static,
    {
        if self.expiry.is_some() {
            return self.write_cap(key, value);
        }
        let ttl =
            with_map!(&self.map, m => m.view(key, |_, stored| stored.written_ttl())).flatten();
        match ttl {
            None => self.default_cap(),
            Some(NEVER) => Cap::NEVER,
            Some(ttl) => self.clock.cap_after(Duration::from_nanos(ttl)),
        }
    }

    /// A reload of `key` ended without storing a value (failed, timed out, panicked,
    /// discarded, skipped): if the entry still waits for it, its next refresh check is a
    /// backoff from now, handed to the expiry task if that is before the entry's node fires.
    pub(crate) fn reload_ended(&self, key: &K) {
        let Some(rules) = self.rules() else { return };
        with_map!(&self.map, m => {
            if let Some(mut stored) = m.get_mut(key) {
                let Some(stamp) = stored.stamp() else { return };
                if stamp.next() != Stamp::RELOADING {
                    return;
                }
                let now = self.clock.now();
                let old = stored.wake();
                let next = now.saturating_add(rules.backoff.as_nanos() as u64);
                let deadline = stored.entry().deadline();
                let next = if next >= deadline { Stamp::IDLE } else { next };
                // The key's clone for the hand-off (user code) comes before the two writes.
                let held = stored.entry().node;
                let key = stored.key();
                let node = self.hand_off(key, || self.map.hash(key), held, old, deadline.min(next));
                if let Some(stamp) = stored.stamp() {
                    stamp.set_next(next);
                }
                stored.entry_mut().node = node;
            }
        });
    }
}
