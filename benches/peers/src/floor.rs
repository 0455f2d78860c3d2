//! `floor`: the naive correct implementation of ebb's design card, for `per-request`.
//!
//! A handle holds an `Arc` of a shared state: a `DashMap<u64, (u64, tokio::time::Instant)>`
//! (value and deadline) and the `DropGuard` of a `CancellationToken`, so that dropping the
//! last handle cancels the token. Building one spawns exactly one task, which holds a `Weak`
//! of the shared state and a clone of the token and waits on `token.cancelled()`: it ends
//! when the last handle is dropped. An insert stores `(value, now + ttl)`; a get returns the
//! value only if `now < deadline`. Nothing removes an expired entry before the cache is
//! dropped (reads refuse it): the floor pays for the task ebb's design has, not for its work.
//!
//! Written for this benchmark from that description, not taken from ebb.

use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The state every handle shares.
pub struct Shared {
    map: DashMap<u64, (u64, Instant)>,
    ttl: Duration,
    /// Cancels the task's token when the last handle drops the state.
    _cancel: DropGuard,
}

/// A handle: one per cache in `per-request`.
pub struct Floor {
    shared: Arc<Shared>,
}

impl Floor {
    /// Build a cache and spawn its task on the current runtime (`tokio::spawn`: panics
    /// outside one).
    pub fn new(ttl: Duration) -> Self {
        let (floor, task) = Floor::without_task(ttl);
        drop(tokio::spawn(task));
        floor
    }

    /// Build a cache and return the future its task would run, unspawned: for measuring the
    /// parts of a cycle apart (a `Floor` whose future is dropped unpolled works the same).
    pub fn without_task(ttl: Duration) -> (Self, impl std::future::Future<Output = ()>) {
        let token = CancellationToken::new();
        let shared = Arc::new(Shared {
            map: DashMap::new(),
            ttl,
            _cancel: token.clone().drop_guard(),
        });
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        let task = async move {
            // Held, never upgraded: an expiry task would reach the map through it.
            let _state = weak;
            token.cancelled().await;
        };
        (Floor { shared }, task)
    }

    pub fn insert(&self, key: u64, value: u64) {
        let deadline = Instant::now() + self.shared.ttl;
        self.shared.map.insert(key, (value, deadline));
    }

    pub fn get(&self, key: &u64) -> Option<u64> {
        let now = Instant::now();
        self.shared
            .map
            .get(key)
            .and_then(|entry| (now < entry.1).then_some(entry.0))
    }
}

/// Bytes of the shared state's `Arc` allocation (two counts and `Shared`): what the task's
/// `Weak` keeps allocated after the last handle is gone, until the task ends.
pub const fn arc_bytes() -> usize {
    2 * std::mem::size_of::<usize>() + std::mem::size_of::<Shared>()
}

/// Bytes of the task's future before it is first polled (`size_of_val`), for the record.
pub fn task_future_bytes() -> usize {
    let (floor, task) = Floor::without_task(Duration::from_secs(1));
    let n = std::mem::size_of_val(&task);
    drop(floor);
    n
}

/// The least a fixed-TTL cache over a `DashMap` does to remove expired entries, for
/// `expiry`: an insert stores `(value, now + ttl)` and appends `(deadline, key)` to a FIFO
/// (with one TTL, deadlines come in write order); each maintenance call pops the due keys and
/// removes each by key if its entry's deadline has passed. No task, no wheel, no hand-off:
/// the map's own insert and remove, one clock read per write, and a queue. Written for this
/// benchmark, not taken from ebb.
pub struct ExpiryFloor {
    map: DashMap<u64, (u64, Instant)>,
    due: std::sync::Mutex<std::collections::VecDeque<(Instant, u64)>>,
    ttl: Duration,
}

impl ExpiryFloor {
    pub fn new(ttl: Duration) -> Self {
        ExpiryFloor {
            map: DashMap::new(),
            due: Default::default(),
            ttl,
        }
    }

    pub fn insert(&self, key: u64, value: u64) {
        let deadline = Instant::now() + self.ttl;
        self.map.insert(key, (value, deadline));
        self.due.lock().unwrap().push_back((deadline, key));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Remove every entry whose deadline has passed.
    pub fn remove_expired(&self) {
        let now = Instant::now();
        let mut due = self.due.lock().unwrap();
        while let Some(&(deadline, key)) = due.front() {
            if deadline > now {
                break;
            }
            due.pop_front();
            self.map.remove_if(&key, |_, entry| entry.1 <= now);
        }
    }
}
