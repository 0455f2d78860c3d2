//! Reload tasks: what runs a cache's loader for refresh-ahead, on the cache's runtime.
//!
//! The expiry task finds the entries due for a reload (see `store/refresh.rs`) and queues
//! their keys; [`queue`] starts a reload task when fewer than `max_concurrent_reloads` run.
//! A reload task takes keys from the queue one at a time and ends when the queue is empty,
//! so a cache has at most that many reload tasks, and none while nothing reloads. An
//! explicit [`LoadingCache::refresh`](crate::LoadingCache::refresh) runs its reload in a
//! task of its own ([`spawn_one`]), outside that limit.
//!
//! Invariants:
//! - **No strong handle while a loader runs**: a reload task upgrades its `Weak` of the store
//!   to begin a reload and to end it, never across the loader's `.await`, and stops when the
//!   cache's token is cancelled (the last handle dropped), dropping the loader's future.
//! - **Every reload ends its flight** (stored, error, or abandoned) and tells the store
//!   ([`Store::reload_ended`]) when it stored nothing, whatever the loader does: fails,
//!   panics, or runs past the reload timeout.
//! - **User code costs one reload**: a panic in the loader, its future, or a key's or value's
//!   `Clone`, `Hash` or the weigher as the value is stored is caught and logged; the task
//!   goes on with the next key.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, trace, warn};

use crate::loader::{ErasedError, Loading};
use crate::stats::Counter;
use crate::store::flight::{Flight, Outcome};
use crate::store::Store;
use crate::sync::Arc as SyncArc;

/// Queue `key` for a reload (the expiry task, for an entry it found due), starting a reload
/// task on the current runtime if fewer than the limit run.
pub(crate) fn queue<K, V, S>(store: &Arc<Store<K, V, S>>, key: K)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    let Some(refresh) = store.refresh.as_deref() else {
        return;
    };
    if refresh.reloads.push(key, refresh.rules.max_concurrent) {
        // The seat is the future's from here: given back however the future ends, even
        // dropped unpolled (a runtime shutting down drops what it is handed).
        let seat = Seat {
            store: Arc::downgrade(store),
            held: true,
        };
        drop(tokio::spawn(worker(seat, store.token().clone())));
    }
}

/// A reload task: reload queued keys until the queue is empty or the cache is gone.
async fn worker<K, V, S>(mut seat: Seat<K, V, S>, token: CancellationToken)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    let store = seat.store.clone();
    loop {
        let begun = {
            let Some(strong) = store.upgrade() else {
                return;
            };
            let Some(refresh) = strong.refresh.as_deref() else {
                return;
            };
            if token.is_cancelled() {
                return;
            }
            let Some(key) = refresh.reloads.next() else {
                seat.held = false;
                return;
            };
            // The key's `Hash` or `Eq` (user code) may panic here: that key is skipped.
            match catch_unwind(AssertUnwindSafe(|| strong.begin_reload(&key))) {
                Ok(Some((flight, generation))) => {
                    begin(&strong, Job::Reload, key, flight, generation)
                }
                Ok(None) => None,
                Err(_) => {
                    error!("a key's Hash or Eq panicked as its reload began; it is skipped");
                    None
                }
            }
        };
        if let Some((key, flight, generation, loading)) = begun {
            let running = Running {
                store: store.clone(),
                job: Some((key, flight)),
            };
            run(running, &token, Job::Reload, generation, loading).await;
        }
    }
}

/// A reload task's place among the `max_concurrent_reloads`, given back when the task ends
/// without having given it back already (it gives it back as it finds the queue empty).
struct Seat<K, V, S> {
    store: Weak<Store<K, V, S>>,
    held: bool,
}

impl<K, V, S> Drop for Seat<K, V, S> {
    fn drop(&mut self) {
        if self.held {
            if let Some(refresh) = self
                .store
                .upgrade()
                .as_deref()
                .and_then(|s| s.refresh.as_deref())
            {
                refresh.reloads.quit();
            }
        }
    }
}

/// A reload whose loader runs: ended as abandoned (its waiters start over, its entry gets
/// its backoff) if dropped before it is finished, as when its task is cancelled or its
/// runtime shuts down.
struct Running<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    store: Weak<Store<K, V, S>>,
    job: Option<(K, SyncArc<Flight<V>>)>,
}

impl<K, V, S> Drop for Running<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    fn drop(&mut self) {
        if let Some((key, flight)) = self.job.take() {
            match self.store.upgrade() {
                Some(store) => end_quietly(&store, &key, &flight, None),
                // No registry left: settle the flight itself, for whoever still waits on it
                // (a dropped cache's `refresh` future).
                None => flight.give_up(),
            }
        }
    }
}

/// What a task that runs the cache's loader is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Job {
    /// A reload (refresh-ahead, or `LoadingCache::refresh`): counted as a reload; its value
    /// keeps the replaced entry's TTL; a failure keeps the entry and backs off.
    Reload,
    /// A `fetch`'s load, run in a task so that the caller may return before it ends (a
    /// stale copy, a soft timeout): counted as a load; its value gets a new entry's TTL; a
    /// panic or a timeout ends the flight with [`LoadPanicked`] or [`LoadTimedOut`], so
    /// that its callers can tell them from the loader's own errors.
    Load,
}

/// A load run by [`Job::Load`] panicked.
#[derive(Debug)]
pub(crate) struct LoadPanicked;

/// A load run by [`Job::Load`] ran past the load timeout.
#[derive(Debug)]
pub(crate) struct LoadTimedOut;

/// A reload begun: its key, the flight it leads, the generation it began in, its loader.
type Begun<K, V> = (K, SyncArc<Flight<V>>, u64, Loading<V>);

/// When a job began, for the load time.
type Started = tokio::time::Instant;

/// Start `key`'s loader for a job this caller leads. `None` (the flight ended, the stamp
/// given a backoff) if user code panicked on the way.
fn begin<K, V, S>(
    store: &Store<K, V, S>,
    job: Job,
    key: K,
    flight: SyncArc<Flight<V>>,
    generation: u64,
) -> Option<Begun<K, V>>
where
    K: Hash + Eq + Clone + 'static,
    V: Clone + 'static,
    S: BuildHasher + Clone,
{
    let refresh = store.refresh.as_deref()?;
    if job == Job::Reload {
        store.count(Counter::ReloadStarted, 1);
        trace!("reload started");
    }
    let started = catch_unwind(AssertUnwindSafe(|| refresh.loader.load(key.clone())));
    match started {
        Ok(loading) => Some((key, flight, generation, loading)),
        Err(_) => {
            finish(store, job, key, flight, generation, None, Ran::Panicked);
            None
        }
    }
}

/// Run `job` for `key` in a task of its own on `handle`'s runtime, leading `flight`: an
/// explicit reload ([`LoadingCache::refresh`](crate::LoadingCache::refresh)), or a `fetch`'s
/// load that may outlive its caller.
pub(crate) fn spawn_one<K, V, S>(
    store: &Arc<Store<K, V, S>>,
    job: Job,
    key: K,
    flight: SyncArc<Flight<V>>,
    handle: &tokio::runtime::Handle,
) where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    let generation = store.generation_count();
    let Some((key, flight, generation, loading)) = begin(store, job, key, flight, generation)
    else {
        return;
    };
    // The guard is the future's from here: the flight is ended however the future ends,
    // even dropped unpolled (a runtime shutting down drops what it is handed).
    let running = Running {
        store: Arc::downgrade(store),
        job: Some((key, flight)),
    };
    let token = store.token().clone();
    drop(handle.spawn(async move {
        run(running, &token, job, generation, loading).await;
    }));
}

/// How a reload's loader ended.
enum Ran<V> {
    Value(V),
    Error(ErasedError),
    Panicked,
    TimedOut,
    Cancelled,
}

/// Await the loader (no strong handle held), then end the reload.
async fn run<K, V, S>(
    mut running: Running<K, V, S>,
    token: &CancellationToken,
    job: Job,
    generation: u64,
    loading: Loading<V>,
) where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    let store = running.store.clone();
    let Some(timeout) = store
        .upgrade()
        .and_then(|s| s.rules().map(|rules| rules.timeout))
    else {
        return;
    };
    let started = Started::now();
    let ran = tokio::select! {
        biased;
        _ = token.cancelled() => Ran::Cancelled,
        ran = tokio::time::timeout(timeout, CatchUnwind(loading)) => match ran {
            Ok(Ok(Ok(value))) => Ran::Value(value),
            Ok(Ok(Err(error))) => Ran::Error(error),
            Ok(Err(())) => Ran::Panicked,
            Err(_) => Ran::TimedOut,
        },
    };
    let Some(store) = store.upgrade() else {
        return;
    };
    let (key, flight) = running.job.take().expect("finished once");
    finish(&store, job, key, flight, generation, Some(started), ran);
}

/// End a job with what its loader did: store the value (unless a write won) or, for a
/// reload, keep the old one; count and log; end the flight.
fn finish<K, V, S>(
    store: &Store<K, V, S>,
    job: Job,
    key: K,
    flight: SyncArc<Flight<V>>,
    generation: u64,
    started: Option<Started>,
    ran: Ran<V>,
) where
    K: Hash + Eq + Clone + 'static,
    V: Clone + 'static,
    S: BuildHasher + Clone,
{
    if job == Job::Load {
        if let Some(started) = started {
            store.count(Counter::LoadNanos, started.elapsed().as_nanos() as u64);
        }
    }
    let count = |reload, load| store.count(if job == Job::Reload { reload } else { load }, 1);
    match ran {
        Ran::Value(value) => {
            count(Counter::ReloadSucceeded, Counter::LoadSuccess);
            trace!(?job, "the cache's loader succeeded");
            // User code on the way (the weigher, an `Expiry`, a key's or value's `Clone`
            // or `Hash`): a panic costs this job, and the entry keeps its value.
            let stored = catch_unwind(AssertUnwindSafe(|| {
                let cap = match job {
                    Job::Reload => store.reload_cap(&key, &value),
                    Job::Load => store.load_cap(&key, &value),
                };
                store.finish_load(key.clone(), &flight, value.clone(), Some(cap), generation)
            }));
            match stored {
                Ok(stored) => {
                    if !stored {
                        debug!(
                            ?job,
                            "a loaded value was discarded: a write, remove or invalidation won"
                        );
                    }
                    end_quietly(store, &key, &flight, Some(Outcome::Value(value)));
                }
                Err(_) => {
                    error!(
                        ?job,
                        "user code panicked as a loaded value was stored; it was not"
                    );
                    let outcome = (job == Job::Load).then(|| panicked());
                    end_quietly(store, &key, &flight, outcome);
                }
            }
        }
        Ran::Error(error) => {
            count(Counter::ReloadFailed, Counter::LoadFailure);
            if let Some(refresh) = store.refresh.as_deref() {
                let error = refresh.loader.describe(&error);
                warn!(?job, %error, "the cache's loader failed");
            }
            end_quietly(store, &key, &flight, Some(Outcome::Error(error)));
        }
        Ran::Panicked => {
            count(Counter::ReloadFailed, Counter::LoadFailure);
            error!(?job, "the cache's loader panicked");
            let outcome = (job == Job::Load).then(|| panicked());
            end_quietly(store, &key, &flight, outcome);
        }
        Ran::TimedOut => {
            count(Counter::ReloadTimedOut, Counter::LoadFailure);
            warn!(
                ?job,
                "the cache's loader ran past the load timeout and was given up"
            );
            let outcome = (job == Job::Load).then(|| Outcome::Error(Arc::new(LoadTimedOut) as _));
            end_quietly(store, &key, &flight, outcome);
        }
        Ran::Cancelled => end_quietly(store, &key, &flight, None),
    }
}

/// The outcome of a [`Job::Load`] whose loader or storing panicked.
fn panicked<V>() -> Outcome<V> {
    Outcome::Error(Arc::new(LoadPanicked) as _)
}

/// End `flight` with `outcome` (`None`: abandoned, so that its waiters start over) and tell
/// the store the reload ended; a panic in the key's `Hash` or `Eq` on the way is logged, and
/// the flight is settled regardless.
fn end_quietly<K, V, S>(
    store: &Store<K, V, S>,
    key: &K,
    flight: &SyncArc<Flight<V>>,
    outcome: Option<Outcome<V>>,
) where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    let ended = catch_unwind(AssertUnwindSafe(|| {
        store.reload_ended(key);
        match outcome {
            Some(outcome) => store.flights.end(key, flight, move || outcome),
            None => store.flights.abandon(key, flight),
        }
    }));
    if ended.is_err() {
        store.flights.abandon(key, flight);
        error!("a key's Hash or Eq panicked as its reload ended");
    }
}

/// A future that turns a panic while it is polled into `Err(())`.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut self.0).poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}
