//! Single-flight loading: [`Cache::get_with`] and its family.
//!
//! For a key that is missing or expired, the first caller *leads*: it registers a [`Flight`]
//! for the key and runs its own loader; every caller that arrives while the flight is
//! registered *waits* for it and gets a clone of its outcome. The registry is a few striped
//! maps `key -> Arc<Flight>`, separate from the store, holding only loads in progress.
//!
//! Invariants:
//! - **One leader per flight.** A flight is registered and looked up under its stripe lock, so
//!   two callers can never both lead the same key at once; each flight is led exactly once.
//! - **Every flight is settled.** The leader ends its flight with the value, the error, or
//!   nothing; if the leader's future is dropped (cancelled, or unwound by a panic in its
//!   loader) its `Drop` settles it as abandoned. Settling removes the flight from the registry,
//!   then wakes every waiter; an abandoned flight's waiters start over, and one of them leads
//!   with its own loader. Nobody waits on a flight that cannot end.
//! - **Writes win over loads.** A writer (`insert`, `remove`) that finds a flight registered
//!   for its key marks it superseded, under the key's shard lock; the leader stores its value
//!   only if, under that same shard lock, the flight is not superseded and no
//!   `invalidate_all` happened since the load began. The leader registers *before* it looks at
//!   the store one last time, so a write just before registration is seen by that look and a
//!   write after it sees the flight.
//! - **Nothing is left behind.** A flight leaves the registry when it is settled: a million
//!   loaded keys leave no records.
//! - No loader runs under any lock, and no lock is held across an `.await`.

use std::any::Any;
use std::borrow::Borrow;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use crate::cache::Cache;
use crate::stats::Counter;
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use crate::sync::{lock, Arc, Mutex};

/// An error shared by every caller of one failed load; the concrete type is recovered by the
/// caller that asked for it.
pub(crate) type SharedError = std::sync::Arc<dyn Any + Send + Sync>;

/// How a flight ended.
pub(crate) enum Outcome<V> {
    /// The loader produced a value.
    Value(V),
    /// The loader failed (`try_get_with`).
    Error(SharedError),
    /// The loader produced nothing (`optionally_get_with`).
    Nothing,
    /// The leader went away without an outcome: start over.
    Abandoned,
}

impl<V: Clone> Clone for Outcome<V> {
    fn clone(&self) -> Self {
        match self {
            Outcome::Value(v) => Outcome::Value(v.clone()),
            Outcome::Error(e) => Outcome::Error(e.clone()),
            Outcome::Nothing => Outcome::Nothing,
            Outcome::Abandoned => Outcome::Abandoned,
        }
    }
}

/// One load in progress for one key.
pub(crate) struct Flight<V> {
    outcome: Mutex<Option<Outcome<V>>>,
    superseded: AtomicBool,
    done: tokio::sync::Notify,
    /// How loom models wait: a condition variable loom can see (it cannot see `done`).
    #[cfg(loom)]
    settled: loom::sync::Condvar,
}

impl<V: Clone> Flight<V> {
    fn new() -> Self {
        Flight {
            outcome: Mutex::new(None),
            superseded: AtomicBool::new(false),
            done: tokio::sync::Notify::new(),
            #[cfg(loom)]
            settled: loom::sync::Condvar::new(),
        }
    }

    /// The outcome, once the flight is settled.
    pub(crate) fn outcome(&self) -> Option<Outcome<V>> {
        lock(&self.outcome).clone()
    }

    /// Whether the flight has an outcome. A settled flight still registered is one whose
    /// leader unwound between settling and unregistering (a user `Hash` or `Eq` that
    /// panicked): [`Flights::join_or_lead`] replaces it.
    fn is_settled(&self) -> bool {
        lock(&self.outcome).is_some()
    }

    /// Whether a write for the key landed while the flight was registered. Read under the
    /// key's shard lock, which is also where writers set it.
    pub(crate) fn is_superseded(&self) -> bool {
        self.superseded.load(Ordering::Relaxed)
    }

    fn settle(&self, outcome: Outcome<V>) {
        *lock(&self.outcome) = Some(outcome);
        self.done.notify_waiters();
        #[cfg(loom)]
        self.settled.notify_all();
    }

    /// Block until the flight is settled: the loom models' stand-in for [`Flight::wait`].
    #[cfg(all(loom, test))]
    fn wait_blocking(&self) -> Outcome<V> {
        let mut outcome = lock(&self.outcome);
        loop {
            if let Some(outcome) = outcome.as_ref() {
                return outcome.clone();
            }
            outcome = self.settled.wait(outcome).unwrap();
        }
    }

    /// Wait until the flight is settled.
    async fn wait(&self) -> Outcome<V> {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            // Registered before the check: a settle after it wakes us.
            notified.as_mut().enable();
            if let Some(outcome) = self.outcome() {
                return outcome;
            }
            notified.await;
        }
    }
}

/// The flights whose loaders this thread is polling right now, innermost last. A caller about
/// to wait on one of them is running inside that very loader: it would wait on its own load
/// forever, so it panics instead, naming the mistake.
mod loading {
    use std::cell::RefCell;

    use super::Flight;
    use crate::sync::Arc;

    thread_local! {
        static POLLING: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    }

    fn address<V>(flight: &Arc<Flight<V>>) -> usize {
        Arc::as_ptr(flight) as *const () as usize
    }

    /// Marks `flight`'s loader as being polled on this thread until dropped.
    pub(super) struct Polling(());

    pub(super) fn enter<V>(flight: &Arc<Flight<V>>) -> Polling {
        POLLING.with(|polling| polling.borrow_mut().push(address(flight)));
        Polling(())
    }

    impl Drop for Polling {
        fn drop(&mut self) {
            POLLING.with(|polling| polling.borrow_mut().pop());
        }
    }

    /// Panic if this thread is polling `flight`'s own loader.
    pub(super) fn refuse_own<V>(flight: &Arc<Flight<V>>) {
        let own = POLLING.with(|polling| polling.borrow().contains(&address(flight)));
        assert!(
            !own,
            "ebb: a loader asked the cache for its own key (get_with or a sibling, for the key \
             it is loading), so it would wait on its own load forever. Compute the value inside \
             the loader without going through the cache for that key."
        );
    }
}

/// What a caller is to do for a key.
pub(crate) enum Role<V> {
    /// Run the loader, then end the flight.
    Lead(Arc<Flight<V>>),
    /// Wait for another caller's flight.
    Wait(Arc<Flight<V>>),
}

/// One stripe of the registry.
type Stripe<K, V, S> = Mutex<HashMap<K, Arc<Flight<V>>, S>>;

/// The registry of flights.
pub(crate) struct Flights<K, V, S> {
    stripes: Box<[Stripe<K, V, S>]>,
    hasher: S,
    /// Flights registered now; lets writers skip the registry while nothing loads.
    active: AtomicUsize,
}

impl<K, V, S> Flights<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    pub(crate) fn new(stripes: usize, hasher: S) -> Self {
        debug_assert!(stripes.is_power_of_two());
        Flights {
            stripes: (0..stripes)
                .map(|_| Mutex::new(HashMap::with_hasher(hasher.clone())))
                .collect(),
            hasher,
            active: AtomicUsize::new(0),
        }
    }

    fn stripe<Q: Hash + ?Sized>(&self, key: &Q) -> &Stripe<K, V, S> {
        let hash = self.hasher.hash_one(key) >> 32;
        &self.stripes[hash as usize & (self.stripes.len() - 1)]
    }

    /// Join the key's flight, or register a new one and lead it.
    pub(crate) fn join_or_lead(&self, key: &K) -> Role<V> {
        let mut stripe = lock(self.stripe(key));
        match stripe.get_mut(key) {
            Some(joined) if !joined.is_settled() => Role::Wait(Arc::clone(joined)),
            Some(stale) => {
                let flight = Arc::new(Flight::new());
                *stale = Arc::clone(&flight);
                Role::Lead(flight)
            }
            None => {
                let flight = Arc::new(Flight::new());
                // The key's clone (user code) comes before the count it must match.
                let key = key.clone();
                stripe.insert(key, Arc::clone(&flight));
                self.active.fetch_add(1, Ordering::SeqCst);
                Role::Lead(flight)
            }
        }
    }

    /// Mark the key's flight, if any, superseded. Called by writers under the key's shard
    /// lock, before their write.
    #[inline]
    pub(crate) fn supersede(&self, key: &K) {
        if self.active.load(Ordering::SeqCst) == 0 {
            return;
        }
        if let Some(flight) = lock(self.stripe(key)).get(key) {
            flight.superseded.store(true, Ordering::Relaxed);
        }
    }

    /// The registered key equal to `key`, if a flight is registered for it.
    pub(crate) fn registered_key<Q>(&self, key: &Q) -> Option<K>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.active.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let stripe = lock(self.stripe(key));
        stripe.get_key_value(key).map(|(k, _)| k.clone())
    }

    /// Unregister `flight` (if it is still the key's) without settling it: the caller settles
    /// it once its store decision is made.
    pub(crate) fn unregister(&self, key: &K, flight: &Arc<Flight<V>>) {
        let mut stripe = lock(self.stripe(key));
        if stripe.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            stripe.remove(key);
            self.active.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Unregister and settle `flight`. The flight is settled even if unregistering panics (a
    /// user `Hash` or `Eq`); the panic then goes on, and the next caller for the key replaces
    /// the settled flight it finds.
    pub(crate) fn end(&self, key: &K, flight: &Arc<Flight<V>>, outcome: Outcome<V>) {
        let unregistered = catch_unwind(AssertUnwindSafe(|| self.unregister(key, flight)));
        flight.settle(outcome);
        if let Err(panic) = unregistered {
            resume_unwind(panic);
        }
    }

    /// End `flight` as abandoned, from a leader that is dropped or unwinding: never panics
    /// (a second panic during an unwind would abort the process).
    pub(crate) fn abandon(&self, key: &K, flight: &Arc<Flight<V>>) {
        let _ = catch_unwind(AssertUnwindSafe(|| self.unregister(key, flight)));
        flight.settle(Outcome::Abandoned);
    }

    /// Flights registered now (test-only visibility).
    pub(crate) fn len(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

/// What a loader produced, before it is shared.
pub(crate) enum Loaded<V> {
    /// A value, with the loader's own TTL if it gave one.
    Value(V, Option<Duration>),
    Error(SharedError),
    Nothing,
}

/// Where a [`Load`] is.
enum State<V, F> {
    /// Not polled yet: the store is looked at first.
    Start,
    /// Missed: join the key's flight, or register one and lead it.
    Join,
    /// Waiting for another caller's flight.
    Wait(Pin<Box<dyn Future<Output = Outcome<V>> + Send + Sync>>),
    /// Leading `flight`: the loader runs.
    Lead {
        flight: Arc<Flight<V>>,
        loader: Pin<Box<F>>,
        generation: u32,
        started: tokio::time::Instant,
    },
    /// The outcome was returned.
    Done,
}

/// The engine behind the loading futures ([`GetWith`] and its family): the store is looked
/// at on the first poll (the future stays lazy), then, on a miss, the key's flight is joined
/// or led.
///
/// The hit path is kept to the lookup. It reads `key` in place and never moves `init`: an
/// `async fn` moves its arguments into its body on the first poll, and that copy, a wide load
/// of a loader the caller had just written field by field, could not be forwarded from the
/// store buffer and stalled every hit (about 5 ns of a 46 ns `get` on the benchmark machine).
/// The loader is moved, into a box, only when this caller leads; it is never polled in place,
/// so `Load` is `Unpin` whatever the loader is, with no unsafe pinning. And a hit drops no
/// state: `state` is dropped by hand, only in the states that hold something, so a hit pays
/// no out-of-line drop of the whole state enum.
///
/// Settling: a leader that finishes settles its flight with the outcome; a leader dropped
/// mid-load (cancelled, or unwound by a panic in its loader) settles it as abandoned in
/// [`Drop`], so its waiters start over.
struct Load<'a, K, V, S, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    cache: &'a Cache<K, V, S>,
    key: K,
    /// The loader, until this caller leads.
    init: Option<F>,
    /// Dropped by hand in `Drop`, and only in `Wait` and `Lead`, the states that hold
    /// something. Assigning `*self.state` drops the state replaced; assigning `self.state`
    /// does not, which [`hit`](Self::hit) uses when it leaves `Start`.
    state: ManuallyDrop<State<V, F>>,
}

// The loader is only ever polled inside its own `Pin<Box<_>>`, never in place.
impl<K, V, S, F> Unpin for Load<'_, K, V, S, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
}

impl<K, V, S, F> Drop for Load<'_, K, V, S, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    #[inline]
    fn drop(&mut self) {
        if !matches!(*self.state, State::Start | State::Join | State::Done) {
            self.drop_state();
        }
    }
}

impl<K, V, S, F> Load<'_, K, V, S, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// Drop a state that holds something; a leader's flight is settled as abandoned first.
    #[cold]
    fn drop_state(&mut self) {
        let state = std::mem::replace(&mut self.state, ManuallyDrop::new(State::Done));
        let state = ManuallyDrop::into_inner(state);
        if let State::Lead { flight, .. } = &state {
            self.cache.store().flights.abandon(&self.key, flight);
        }
    }
}

impl<'a, K, V, S, F> Load<'a, K, V, S, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
    F: Future,
{
    #[inline]
    fn new(cache: &'a Cache<K, V, S>, key: K, init: F) -> Self {
        Load {
            cache,
            key,
            init: Some(init),
            state: ManuallyDrop::new(State::Start),
        }
    }

    /// The hit path, first in every poll: on the first poll only, the live value for the
    /// key, if any, counted as a hit (a miss is counted too, and leads to
    /// [`poll_miss`](Self::poll_miss)).
    #[inline]
    fn hit(&mut self) -> Option<V> {
        if let State::Start = *self.state {
            // `Start` holds nothing: overwritten without a drop.
            if let Some(value) = self.cache.store().get(&self.key) {
                self.state = ManuallyDrop::new(State::Done);
                return Some(value);
            }
            self.state = ManuallyDrop::new(State::Join);
        }
        None
    }

    /// The engine, after this caller found no live value (and counted the miss): another
    /// caller's outcome this caller accepts, or its own load. `loaded` turns the loader's
    /// output into a [`Loaded`]; `accepts` says which outcomes of another caller's flight,
    /// besides values, this caller takes.
    #[inline(never)]
    fn poll_miss(
        &mut self,
        cx: &mut Context<'_>,
        loaded: impl FnOnce(F::Output) -> Loaded<V>,
        accepts: impl Fn(&Outcome<V>) -> bool,
    ) -> Poll<Outcome<V>> {
        let store = self.cache.store();
        loop {
            // Assignments through `*self.state` drop the state they replace.
            match &mut *self.state {
                State::Join => match store.flights.join_or_lead(&self.key) {
                    Role::Wait(flight) => {
                        loading::refuse_own(&flight);
                        *self.state = State::Wait(Box::pin(async move { flight.wait().await }));
                    }
                    Role::Lead(flight) => {
                        // Registered first, looked last: a write before registration shows
                        // here. The look clones the value (user code): a panic there
                        // abandons the flight before it goes on.
                        let found = catch_unwind(AssertUnwindSafe(|| {
                            store.peek(&self.key).map(|value| (value.clone(), value))
                        }));
                        match found {
                            Ok(Some((shared, value))) => {
                                store
                                    .flights
                                    .end(&self.key, &flight, Outcome::Value(shared));
                                *self.state = State::Done;
                                return Poll::Ready(Outcome::Value(value));
                            }
                            Ok(None) => {}
                            Err(panic) => {
                                store.flights.abandon(&self.key, &flight);
                                resume_unwind(panic);
                            }
                        }
                        let init = self.init.take().expect("a caller leads at most once");
                        *self.state = State::Lead {
                            flight,
                            loader: Box::pin(init),
                            generation: store.generation(),
                            started: tokio::time::Instant::now(),
                        };
                    }
                },
                State::Wait(wait) => match ready!(wait.as_mut().poll(cx)) {
                    outcome @ Outcome::Value(_) => {
                        *self.state = State::Done;
                        return Poll::Ready(outcome);
                    }
                    outcome if accepts(&outcome) => {
                        *self.state = State::Done;
                        return Poll::Ready(outcome);
                    }
                    // Abandoned, or an outcome of another kind: the flight is gone, so the
                    // next round leads or joins a new one.
                    _ => *self.state = State::Join,
                },
                State::Lead {
                    flight,
                    loader,
                    generation,
                    started,
                } => {
                    let output = {
                        let _loading = loading::enter(flight);
                        ready!(loader.as_mut().poll(cx))
                    };
                    // The state stays `Lead` until the flight is ended: user code on the way
                    // (the weigher, a key's or value's `Clone` or `Hash`) that panics drops
                    // this future as a leader, and `Drop` abandons the flight.
                    let (flight, generation, started) = (Arc::clone(flight), *generation, *started);
                    let loaded = loaded(output);
                    store.count(Counter::LoadNanos, started.elapsed().as_nanos() as u64);
                    store.count(
                        match loaded {
                            Loaded::Value(..) => Counter::LoadSuccess,
                            _ => Counter::LoadFailure,
                        },
                        1,
                    );
                    let outcome = match loaded {
                        Loaded::Value(value, ttl) => {
                            let deadline = match ttl {
                                Some(ttl) => self.cache.deadline_for_ttl(ttl),
                                None => Some(self.cache.default_deadline()),
                            };
                            store.finish_load(
                                self.key.clone(),
                                &flight,
                                value.clone(),
                                deadline,
                                generation,
                            );
                            Outcome::Value(value)
                        }
                        Loaded::Error(e) => Outcome::Error(e),
                        Loaded::Nothing => Outcome::Nothing,
                    };
                    store.flights.end(&self.key, &flight, outcome.clone());
                    // Ended: from here on, dropping this future abandons nothing. The loader
                    // is dropped last, after the flight is settled.
                    drop(std::mem::replace(&mut *self.state, State::Done));
                    return Poll::Ready(outcome);
                }
                State::Start | State::Done => panic!("a loading future polled after completion"),
            }
        }
    }
}

/// Defines one public loading future over [`Load`], with its `Debug`.
macro_rules! loading_future {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Like every future it does nothing until polled: the cache is looked at on the first
        /// poll, not when the method is called. It is `Send` when the loader is, and `Unpin`
        /// whatever the loader is.
        #[must_use = "futures do nothing unless you `.await` or poll them"]
        pub struct $name<'a, K, V, S, F>
        where
            K: Hash + Eq + Clone + Send + Sync + 'static,
            V: Clone + Send + Sync + 'static,
            S: BuildHasher + Clone + Send + Sync + 'static,
        {
            load: Load<'a, K, V, S, F>,
        }

        impl<K, V, S, F> std::fmt::Debug for $name<'_, K, V, S, F>
        where
            K: Hash + Eq + Clone + Send + Sync + 'static,
            V: Clone + Send + Sync + 'static,
            S: BuildHasher + Clone + Send + Sync + 'static,
        {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }
    };
}

loading_future! {
    /// The future returned by [`Cache::get_with`]: the value for the key, loaded if needed.
    GetWith
}

loading_future! {
    /// The future returned by [`Cache::get_with_expiry`]: the value for the key, loaded with
    /// its own TTL if needed.
    GetWithExpiry
}

loading_future! {
    /// The future returned by [`Cache::try_get_with`]: the value for the key, or the shared
    /// error of the load that failed.
    TryGetWith
}

loading_future! {
    /// The future returned by [`Cache::optionally_get_with`]: the value for the key, or
    /// `None` if the load found nothing.
    OptionallyGetWith
}

impl<K, V, S, F> Future for GetWith<'_, K, V, S, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
    F: Future<Output = V>,
{
    type Output = V;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<V> {
        let load = &mut self.get_mut().load;
        if let Some(value) = load.hit() {
            return Poll::Ready(value);
        }
        let outcome = ready!(load.poll_miss(cx, |value| Loaded::Value(value, None), |_| false));
        match outcome {
            Outcome::Value(v) => Poll::Ready(v),
            _ => unreachable!("get_with accepts values only"),
        }
    }
}

impl<K, V, S, F> Future for GetWithExpiry<'_, K, V, S, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
    F: Future<Output = (V, Option<Duration>)>,
{
    type Output = V;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<V> {
        let load = &mut self.get_mut().load;
        if let Some(value) = load.hit() {
            return Poll::Ready(value);
        }
        let outcome =
            ready!(load.poll_miss(cx, |(value, ttl)| Loaded::Value(value, ttl), |_| false));
        match outcome {
            Outcome::Value(v) => Poll::Ready(v),
            _ => unreachable!("get_with_expiry accepts values only"),
        }
    }
}

impl<K, V, S, F, E> Future for TryGetWith<'_, K, V, S, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
    F: Future<Output = Result<V, E>>,
    E: Send + Sync + 'static,
{
    type Output = Result<V, std::sync::Arc<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let load = &mut self.get_mut().load;
        if let Some(value) = load.hit() {
            return Poll::Ready(Ok(value));
        }
        let outcome = ready!(load.poll_miss(
            cx,
            |result| match result {
                Ok(value) => Loaded::Value(value, None),
                Err(e) => Loaded::Error(std::sync::Arc::new(e)),
            },
            |o| matches!(o, Outcome::Error(e) if e.is::<E>()),
        ));
        Poll::Ready(match outcome {
            Outcome::Value(v) => Ok(v),
            Outcome::Error(e) => Err(e.downcast::<E>().expect("checked by `accepts`")),
            _ => unreachable!("try_get_with accepts values and its own errors"),
        })
    }
}

impl<K, V, S, F> Future for OptionallyGetWith<'_, K, V, S, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
    F: Future<Output = Option<V>>,
{
    type Output = Option<V>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<V>> {
        let load = &mut self.get_mut().load;
        if let Some(value) = load.hit() {
            return Poll::Ready(Some(value));
        }
        let outcome = ready!(load.poll_miss(
            cx,
            |found| match found {
                Some(value) => Loaded::Value(value, None),
                None => Loaded::Nothing,
            },
            |o| matches!(o, Outcome::Nothing),
        ));
        Poll::Ready(match outcome {
            Outcome::Value(v) => Some(v),
            _ => None,
        })
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// The value for `key`, loading it with `init` if it is missing or expired.
    ///
    /// Single-flight: of all concurrent callers for one key, one runs its `init`; the others
    /// wait for that load and get a clone of its value. Different keys load in parallel. The
    /// value is stored with the cache's `time_to_live` (see
    /// [`get_with_expiry`](Self::get_with_expiry) for a loader-chosen TTL), unless an
    /// `insert`, `remove` or `invalidate_all` touched the key while it loaded: then the write
    /// wins, and the loaded value is only returned.
    ///
    /// Cancellation and panics: if the caller running the loader is dropped (a timeout, a
    /// client that hung up), or its loader panics, or user code panics as the loaded value is
    /// stored (the weigher, a key's or value's `Clone` or `Hash`; the panic goes to that
    /// caller), the waiting callers start over and one of them runs *its own* `init`. Nobody
    /// waits forever.
    ///
    /// A loader must not ask the cache for the key it is loading (through this method or a
    /// sibling, on a clone of the cache): it would wait on its own load. Awaited inside the
    /// loader, that call panics with a message naming the mistake; a loader that waits for
    /// another task which makes that call cannot be told from a slow one, and hangs like it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: ebb::Cache<u32, String> = ebb::Cache::builder().build();
    /// let name = cache.get_with(7, async { "loaded once".to_string() }).await;
    /// assert_eq!(name, "loaded once");
    /// // A hit: the loader is not run.
    /// let again = cache.get_with(7, async { unreachable!() }).await;
    /// assert_eq!(again, "loaded once");
    /// # }
    /// ```
    #[inline]
    pub fn get_with<F>(&self, key: K, init: F) -> GetWith<'_, K, V, S, F>
    where
        F: Future<Output = V>,
    {
        GetWith {
            load: Load::new(self, key, init),
        }
    }

    /// Like [`get_with`](Self::get_with), with a loader that also chooses the entry's TTL:
    /// `Some(ttl)` stores it for exactly `ttl` (zero: returned but not stored), `None` uses
    /// the cache's `time_to_live`. For tokens that expire at their own time, or responses
    /// with their own max-age.
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let tokens: ebb::Cache<&str, String> = ebb::Cache::builder().build();
    /// let token = tokens
    ///     .get_with_expiry("api", async { ("t0k3n".to_string(), Some(Duration::from_secs(60))) })
    ///     .await;
    /// assert_eq!(token, "t0k3n");
    /// tokio::time::sleep(Duration::from_secs(60)).await;
    /// assert_eq!(tokens.get("api"), None);
    /// # }
    /// ```
    #[inline]
    pub fn get_with_expiry<F>(&self, key: K, init: F) -> GetWithExpiry<'_, K, V, S, F>
    where
        F: Future<Output = (V, Option<Duration>)>,
    {
        GetWithExpiry {
            load: Load::new(self, key, init),
        }
    }

    /// The value for `key`, or the result of loading it with a fallible `init`.
    ///
    /// Single-flight like [`get_with`](Self::get_with). An error is not cached: every caller
    /// that shared the failed load gets the same `Arc<E>`, and the next call loads again. A
    /// caller waiting on a load started with a different error type, or by a method that
    /// cannot fail, that ends without a value runs its own `init`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: ebb::Cache<u32, u64> = ebb::Cache::builder().build();
    /// let err = cache.try_get_with(1, async { "db down".parse::<u64>() }).await;
    /// assert!(err.is_err());
    /// let ok = cache.try_get_with(1, async { "42".parse::<u64>() }).await;
    /// assert_eq!(ok.unwrap(), 42);
    /// # }
    /// ```
    #[inline]
    pub fn try_get_with<F, E>(&self, key: K, init: F) -> TryGetWith<'_, K, V, S, F>
    where
        F: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        TryGetWith {
            load: Load::new(self, key, init),
        }
    }

    /// The value for `key`, or the result of loading it with an `init` that may find nothing
    /// (`None` is returned and not cached).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: ebb::Cache<u32, String> = ebb::Cache::builder().build();
    /// assert_eq!(cache.optionally_get_with(1, async { None }).await, None);
    /// assert!(cache.get(&1).is_none());
    /// # }
    /// ```
    #[inline]
    pub fn optionally_get_with<F>(&self, key: K, init: F) -> OptionallyGetWith<'_, K, V, S, F>
    where
        F: Future<Output = Option<V>>,
    {
        OptionallyGetWith {
            load: Load::new(self, key, init),
        }
    }
}

/// Loom model of the flight registry: leaders, waiters, a cancelled leader, completion.
/// Run with `RUSTFLAGS="--cfg loom" cargo test --release --lib loom_`.
#[cfg(all(test, loom))]
mod loom_flights {
    use super::*;
    use loom::thread;
    use std::hash::BuildHasherDefault;

    type Registry = Flights<u8, u32, BuildHasherDefault<std::collections::hash_map::DefaultHasher>>;

    /// How a leader in the model ends.
    #[derive(Clone, Copy, PartialEq)]
    enum Ends {
        /// It stores its value and ends the flight with it.
        Finishes,
        /// Its future is dropped mid-load: `Drop` abandons the flight.
        Cancelled,
        /// User code panics after the load, once `finish_load` has unregistered the flight
        /// under the shard lock but before the flight is ended: `Drop` abandons it.
        PanicsAfterUnregistering,
        /// User code (the weigher) panics after the load, before anything else: `Drop`
        /// abandons the flight.
        PanicsBeforeStoring,
    }

    /// One caller of `get_with` for key 1, as the async code drives the registry: a hit in the
    /// store (`stored`, 0 for absent), or lead (look at the store once more, load, store, end;
    /// or end as `ends` says) or wait until settled, starting over when the flight it waited
    /// on was abandoned.
    fn caller(
        registry: &Registry,
        stored: &AtomicUsize,
        loading: &AtomicUsize,
        loads: &AtomicUsize,
        ends: Ends,
    ) -> Option<u32> {
        let hit = |stored: &AtomicUsize| match stored.load(Ordering::SeqCst) {
            0 => None,
            v => Some(v as u32),
        };
        if let Some(v) = hit(stored) {
            return Some(v);
        }
        loop {
            match registry.join_or_lead(&1) {
                Role::Lead(flight) => {
                    if let Some(v) = hit(stored) {
                        registry.end(&1, &flight, Outcome::Value(v));
                        return Some(v);
                    }
                    let others = loading.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(others, 0, "two loads of one key at once");
                    loads.fetch_add(1, Ordering::SeqCst);
                    loading.fetch_sub(1, Ordering::SeqCst);
                    match ends {
                        Ends::Finishes => {
                            stored.store(7, Ordering::SeqCst);
                            registry.end(&1, &flight, Outcome::Value(7));
                            return Some(7);
                        }
                        Ends::Cancelled | Ends::PanicsBeforeStoring => {
                            registry.abandon(&1, &flight);
                            return None;
                        }
                        Ends::PanicsAfterUnregistering => {
                            registry.unregister(&1, &flight);
                            registry.abandon(&1, &flight);
                            return None;
                        }
                    }
                }
                Role::Wait(flight) => match flight.wait_blocking() {
                    Outcome::Value(v) => return Some(v),
                    Outcome::Abandoned => continue,
                    _ => unreachable!("only values and abandonment in this model"),
                },
            }
        }
    }

    /// Two callers that finish and one that ends as `ends`, racing on one key.
    fn three_callers(ends: Ends) {
        loom::model(move || {
            let registry = Arc::new(Registry::new(2, Default::default()));
            let stored = Arc::new(AtomicUsize::new(0));
            let loading = Arc::new(AtomicUsize::new(0));
            let loads = Arc::new(AtomicUsize::new(0));
            let spawn = |ends| {
                let (registry, stored, loading, loads) = (
                    Arc::clone(&registry),
                    Arc::clone(&stored),
                    Arc::clone(&loading),
                    Arc::clone(&loads),
                );
                thread::spawn(move || caller(&registry, &stored, &loading, &loads, ends))
            };
            let failing = spawn(ends);
            let waiter = spawn(Ends::Finishes);
            let here = caller(&registry, &stored, &loading, &loads, Ends::Finishes);
            let failing = failing.join().unwrap();
            let waiter = waiter.join().unwrap();
            // Every caller that did not fail got the value; nobody was left waiting.
            assert_eq!((here, waiter), (Some(7), Some(7)));
            assert!(failing.is_none() || failing == Some(7));
            // The loader ran once, plus once more only if the failing caller led first.
            let expected = if failing.is_none() { 2 } else { 1 };
            assert!(loads.load(Ordering::SeqCst) <= expected);
            // Nothing left behind.
            assert_eq!(registry.len(), 0);
            assert!(registry.registered_key(&1).is_none());
        });
    }

    #[test]
    fn loom_single_flight_leader_waiters_cancellation() {
        three_callers(Ends::Cancelled);
    }

    #[test]
    fn loom_single_flight_panic_between_the_load_and_the_flights_end() {
        three_callers(Ends::PanicsBeforeStoring);
        three_callers(Ends::PanicsAfterUnregistering);
    }
}
