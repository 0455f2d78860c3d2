//! Single-flight loading: [`Cache::get_with`] and its family, as futures that drive the
//! store's flight registry (`store/flight.rs`).
//!
//! Invariants:
//! - **Writes win over loads.** A writer (`insert`, `remove`) that finds a flight registered
//!   for its key marks it superseded, under the key's shard lock; the leader stores its value
//!   only if, under that same shard lock, the flight is not superseded and no
//!   `invalidate_all` happened since the load began. The leader registers *before* it looks at
//!   the store one last time, so a write just before registration is seen by that look and a
//!   write after it sees the flight.
//! - **A leader always ends its flight.** It stays in its `Lead` state until the flight is
//!   ended; dropped in that state (cancelled, or unwound by a panic in its loader or in user
//!   code as the value is stored), it abandons the flight, and the waiters start over.
//! - **A loader never waits on itself.** A caller about to wait on a flight whose loader this
//!   thread is polling panics, naming the mistake.
//! - No loader runs under any lock, and no lock is held across an `.await`.

use std::borrow::Borrow;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use crate::cache::Cache;
use crate::stats::Counter;
use crate::store::flight::{Flight, Outcome, Role, SharedError};
use crate::store::Store;
use crate::sync::Arc;

/// The flights whose loaders this thread is polling right now, innermost last. A caller about
/// to wait on one of them is running inside that very loader: it would wait on its own load
/// forever, so it panics instead, naming the mistake.
pub(crate) mod loading {
    use std::cell::RefCell;

    use crate::store::flight::Flight;
    use crate::sync::Arc;

    thread_local! {
        static POLLING: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    }

    fn address<V>(flight: &Arc<Flight<V>>) -> usize {
        Arc::as_ptr(flight) as *const () as usize
    }

    /// Marks `flight`'s loader as being polled on this thread until dropped.
    pub(crate) struct Polling(());

    pub(crate) fn enter<V>(flight: &Arc<Flight<V>>) -> Polling {
        POLLING.with(|polling| polling.borrow_mut().push(address(flight)));
        Polling(())
    }

    impl Drop for Polling {
        fn drop(&mut self) {
            POLLING.with(|polling| polling.borrow_mut().pop());
        }
    }

    /// Panic if this thread is polling `flight`'s own loader.
    pub(crate) fn refuse_own<V>(flight: &Arc<Flight<V>>) {
        let own = POLLING.with(|polling| polling.borrow().contains(&address(flight)));
        assert!(
            !own,
            "ebb: a loader asked the cache for its own key (get_with or a sibling, for the key \
             it is loading), so it would wait on its own load forever. Compute the value inside \
             the loader without going through the cache for that key."
        );
    }
}

/// What a loader produced, before it is shared.
pub(crate) enum Loaded<V> {
    /// A value, with the loader's own TTL if it gave one.
    Value(V, Option<Duration>),
    Error(SharedError),
    Nothing,
}

/// Where a [`Load`] is after a miss. A plain enum: assigning a new state drops the old one.
enum State<K, V, S, F> {
    /// Join the key's flight, or register one and lead it.
    Join,
    /// Waiting for another caller's flight.
    Wait(Pin<Box<dyn Future<Output = Outcome<V>> + Send + Sync>>),
    /// Leading a flight: the loader runs.
    Lead(Lead<K, V, S, F>),
}

/// A flight this caller leads. Until the flight is ended this state stays in place, so that a
/// [`Load`] dropped in it (cancelled, or unwound by a panic in the loader or in user code as
/// the value is stored) abandons the flight.
struct Lead<K, V, S, F> {
    flight: Arc<Flight<V>>,
    loader: Pin<Box<F>>,
    /// The generation the load began in (its full number).
    generation: u64,
    /// When the load began, if the cache keeps statistics (for the load-time counter).
    started: Option<tokio::time::Instant>,
    /// Abandons the flight: a plain function made where the cache's bounds hold, so that
    /// neither `Load` nor its `Drop` needs them.
    abandon: Abandon<K, V, S>,
}

/// See [`Lead::abandon`].
type Abandon<K, V, S> = fn(&Store<K, V, S>, &K, &Arc<Flight<V>>);

/// [`Lead::abandon`].
fn abandon<K, V, S>(store: &Store<K, V, S>, key: &K, flight: &Arc<Flight<V>>)
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    store.flights.abandon(key, flight);
}

/// The engine behind the loading futures ([`GetWith`] and its family): the store is looked
/// at on the first poll (the future stays lazy), then, on a miss, the key's flight is joined
/// or led.
///
/// The hit path is kept to the lookup. It reads `key` in place and never moves `init`: an
/// `async fn` would move its arguments into its body on the first poll, a wide copy of a
/// loader the caller had just written that stalls every hit. The loader is moved, into a
/// box, only when this caller leads; it is never polled in place, so `Load` is `Unpin`
/// whatever the loader is, with no unsafe pinning. What a miss needs lives in a box, so that
/// a hit, done at its first poll, leaves nothing behind but an empty `Option` to drop.
pub(crate) struct Load<'a, K, V, S, F> {
    store: &'a Store<K, V, S>,
    key: K,
    /// The loader, until this caller leads.
    init: Option<F>,
    /// Whether the first poll has looked at the store.
    looked: bool,
    /// Whether this caller's own loader produced the outcome (the entry API's `is_fresh`).
    pub(crate) led: bool,
    /// After a miss, until the outcome is returned.
    miss: Option<Box<State<K, V, S, F>>>,
}

// The loader is only ever polled inside its own `Pin<Box<_>>`, never in place.
impl<K, V, S, F> Unpin for Load<'_, K, V, S, F> {}

impl<K, V, S, F> Drop for Load<'_, K, V, S, F> {
    #[inline]
    fn drop(&mut self) {
        if let Some(State::Lead(lead)) = self.miss.as_deref() {
            (lead.abandon)(self.store, &self.key, &lead.flight);
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
    pub(crate) fn new(store: &'a Store<K, V, S>, key: K, init: F) -> Self {
        Load {
            store,
            key,
            init: Some(init),
            looked: false,
            led: false,
            miss: None,
        }
    }

    /// A load for a caller that already looked at the store and missed (counted): a
    /// by-reference lookup that owns its key only now.
    pub(crate) fn missed(store: &'a Store<K, V, S>, key: K, init: F) -> Self {
        Load {
            store,
            key,
            init: Some(init),
            looked: true,
            led: false,
            miss: Some(Box::new(State::Join)),
        }
    }

    /// The hit path, first in every poll: on the first poll only, the live value for the
    /// key, if any, counted as a hit (a miss is counted too, and leads to
    /// [`poll_miss`](Self::poll_miss)).
    #[inline]
    fn hit(&mut self) -> Option<V> {
        if !self.looked {
            self.looked = true;
            if let Some(value) = self.store.get(&self.key) {
                return Some(value);
            }
            self.miss = Some(Box::new(State::Join));
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
        let store = self.store;
        loop {
            let Some(state) = self.miss.as_deref_mut() else {
                panic!("a loading future polled after completion");
            };
            match state {
                State::Join => match store.flights.join_or_lead(&self.key) {
                    Role::Wait(flight) => {
                        loading::refuse_own(&flight);
                        *state = State::Wait(Box::pin(async move { flight.wait().await }));
                    }
                    Role::Lead(flight) => {
                        // Registered first, looked last: a write before registration shows
                        // here. The look clones the value (user code): a panic there
                        // abandons the flight before it goes on.
                        let found = catch_unwind(AssertUnwindSafe(|| store.peek(&self.key)));
                        match found {
                            Ok(Some(value)) => {
                                // A waiter's copy is made only if one joined.
                                store
                                    .flights
                                    .end(&self.key, &flight, || Outcome::Value(value.clone()));
                                self.miss = None;
                                return Poll::Ready(Outcome::Value(value));
                            }
                            Ok(None) => {}
                            Err(panic) => {
                                store.flights.abandon(&self.key, &flight);
                                resume_unwind(panic);
                            }
                        }
                        let init = self.init.take().expect("a caller leads at most once");
                        *state = State::Lead(Lead {
                            flight,
                            loader: Box::pin(init),
                            generation: store.generation_count(),
                            // Read only for the load-time statistic.
                            started: store.counters().is_some().then(tokio::time::Instant::now),
                            abandon: abandon::<K, V, S>,
                        });
                    }
                },
                State::Wait(wait) => match ready!(wait.as_mut().poll(cx)) {
                    outcome @ Outcome::Value(_) => {
                        self.miss = None;
                        return Poll::Ready(outcome);
                    }
                    outcome if accepts(&outcome) => {
                        self.miss = None;
                        return Poll::Ready(outcome);
                    }
                    // Abandoned, or an outcome of another kind: the flight is gone, so the
                    // next round leads or joins a new one.
                    _ => *state = State::Join,
                },
                State::Lead(lead) => {
                    let output = {
                        let _loading = loading::enter(&lead.flight);
                        ready!(lead.loader.as_mut().poll(cx))
                    };
                    let (flight, generation, started) =
                        (Arc::clone(&lead.flight), lead.generation, lead.started);
                    let outcome = self.store_loaded(&flight, loaded(output), generation, started);
                    store.flights.end(&self.key, &flight, || outcome.clone());
                    self.led = true;
                    // Ended: from here on, dropping this future abandons nothing. The loader
                    // is dropped last, after the flight is settled.
                    drop(self.miss.take());
                    return Poll::Ready(outcome);
                }
            }
        }
    }

    /// Count the load and store its value (unless a write won), still leading: user code on
    /// the way (the weigher, a key's or value's `Clone` or `Hash`) that panics drops this
    /// future in its `Lead` state, and `Drop` abandons the flight.
    fn store_loaded(
        &self,
        flight: &Arc<Flight<V>>,
        loaded: Loaded<V>,
        generation: u64,
        started: Option<tokio::time::Instant>,
    ) -> Outcome<V> {
        let store = self.store;
        if let Some(started) = started {
            store.count(Counter::LoadNanos, started.elapsed().as_nanos() as u64);
        }
        store.count(
            match loaded {
                Loaded::Value(..) => Counter::LoadSuccess,
                _ => Counter::LoadFailure,
            },
            1,
        );
        match loaded {
            Loaded::Value(value, ttl) => {
                let deadline = match ttl {
                    Some(ttl) => store.cap_for_ttl(ttl),
                    None => Some(store.load_cap(&self.key, &value)),
                };
                // Stored or not (a write won), the callers get the value.
                let _stored = store.finish_load(
                    self.key.clone(),
                    flight,
                    value.clone(),
                    deadline,
                    generation,
                );
                Outcome::Value(value)
            }
            Loaded::Error(e) => Outcome::Error(e),
            Loaded::Nothing => Outcome::Nothing,
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
        pub struct $name<'a, K, V, S, F> {
            load: Load<'a, K, V, S, F>,
        }

        impl<K, V, S, F> std::fmt::Debug for $name<'_, K, V, S, F> {
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
    /// The future returned by [`Cache::try_get_with_expiry`]: the value for the key, loaded
    /// with its own TTL if needed, or the shared error of the load that failed.
    TryGetWithExpiry
}

loading_future! {
    /// The future returned by [`Cache::optionally_get_with`]: the value for the key, or
    /// `None` if the load found nothing.
    OptionallyGetWith
}

/// How each loading method turns a loader's output into a [`Loaded`], which outcomes of
/// another caller's flight it accepts besides values, and what it returns.
pub(crate) trait Kind<V> {
    /// The loader's output.
    type Input;
    /// What the future returns.
    type Output;
    fn loaded(input: Self::Input) -> Loaded<V>;
    fn accepts(outcome: &Outcome<V>) -> bool;
    fn hit(value: V) -> Self::Output;
    fn output(outcome: Outcome<V>) -> Self::Output;
}

/// `get_with`: a value.
pub(crate) struct Plain;
/// `get_with_expiry`: a value and its TTL.
pub(crate) struct Expiring;
/// `try_get_with`: a value or an error of type `E`.
pub(crate) struct Fallible<E>(std::marker::PhantomData<E>);
/// `try_get_with_expiry`: a value and its TTL, or an error of type `E`.
pub(crate) struct FallibleExpiring<E>(std::marker::PhantomData<E>);
/// `optionally_get_with`: a value, or nothing.
pub(crate) struct Optional;

impl<V> Kind<V> for Plain {
    type Input = V;
    type Output = V;
    fn loaded(value: V) -> Loaded<V> {
        Loaded::Value(value, None)
    }
    fn accepts(_: &Outcome<V>) -> bool {
        false
    }
    fn hit(value: V) -> V {
        value
    }
    fn output(outcome: Outcome<V>) -> V {
        match outcome {
            Outcome::Value(v) => v,
            _ => unreachable!("get_with accepts values only"),
        }
    }
}

impl<V> Kind<V> for Expiring {
    type Input = (V, Option<Duration>);
    type Output = V;
    fn loaded((value, ttl): (V, Option<Duration>)) -> Loaded<V> {
        Loaded::Value(value, ttl)
    }
    fn accepts(_: &Outcome<V>) -> bool {
        false
    }
    fn hit(value: V) -> V {
        value
    }
    fn output(outcome: Outcome<V>) -> V {
        match outcome {
            Outcome::Value(v) => v,
            _ => unreachable!("get_with_expiry accepts values only"),
        }
    }
}

impl<V, E: Send + Sync + 'static> Kind<V> for Fallible<E> {
    type Input = Result<V, E>;
    type Output = Result<V, std::sync::Arc<E>>;
    fn loaded(result: Result<V, E>) -> Loaded<V> {
        match result {
            Ok(value) => Loaded::Value(value, None),
            Err(e) => Loaded::Error(std::sync::Arc::new(e)),
        }
    }
    fn accepts(outcome: &Outcome<V>) -> bool {
        matches!(outcome, Outcome::Error(e) if e.is::<E>())
    }
    fn hit(value: V) -> Self::Output {
        Ok(value)
    }
    fn output(outcome: Outcome<V>) -> Self::Output {
        match outcome {
            Outcome::Value(v) => Ok(v),
            Outcome::Error(e) => Err(e.downcast::<E>().expect("checked by `accepts`")),
            _ => unreachable!("try_get_with accepts values and its own errors"),
        }
    }
}

impl<V, E: Send + Sync + 'static> Kind<V> for FallibleExpiring<E> {
    type Input = Result<(V, Option<Duration>), E>;
    type Output = Result<V, std::sync::Arc<E>>;
    fn loaded(result: Self::Input) -> Loaded<V> {
        match result {
            Ok((value, ttl)) => Loaded::Value(value, ttl),
            Err(e) => Loaded::Error(std::sync::Arc::new(e)),
        }
    }
    fn accepts(outcome: &Outcome<V>) -> bool {
        <Fallible<E> as Kind<V>>::accepts(outcome)
    }
    fn hit(value: V) -> Self::Output {
        Ok(value)
    }
    fn output(outcome: Outcome<V>) -> Self::Output {
        <Fallible<E> as Kind<V>>::output(outcome)
    }
}

impl<V> Kind<V> for Optional {
    type Input = Option<V>;
    type Output = Option<V>;
    fn loaded(found: Option<V>) -> Loaded<V> {
        match found {
            Some(value) => Loaded::Value(value, None),
            None => Loaded::Nothing,
        }
    }
    fn accepts(outcome: &Outcome<V>) -> bool {
        matches!(outcome, Outcome::Nothing)
    }
    fn hit(value: V) -> Option<V> {
        Some(value)
    }
    fn output(outcome: Outcome<V>) -> Option<V> {
        match outcome {
            Outcome::Value(v) => Some(v),
            _ => None,
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
    /// One poll of a loading method of kind `M`.
    #[inline]
    pub(crate) fn poll_as<M: Kind<V, Input = F::Output>>(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<M::Output> {
        if let Some(value) = self.hit() {
            return Poll::Ready(M::hit(value));
        }
        let outcome = ready!(self.poll_miss(cx, M::loaded, M::accepts));
        Poll::Ready(M::output(outcome))
    }
}

/// Implements `Future` for a public loading future over [`Load`] of kind `$kind`.
macro_rules! loading_impl {
    ($name:ident, $kind:ty, $input:ty, $output:ty $(, $e:ident)?) => {
        impl<K, V, S, F $(, $e)?> Future for $name<'_, K, V, S, F>
        where
            K: Hash + Eq + Clone + Send + Sync + 'static,
            V: Clone + Send + Sync + 'static,
            S: BuildHasher + Clone + Send + Sync + 'static,
            F: Future<Output = $input>,
            $($e: Send + Sync + 'static,)?
        {
            type Output = $output;

            #[inline]
            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
                self.get_mut().load.poll_as::<$kind>(cx)
            }
        }
    };
}

loading_impl!(GetWith, Plain, V, V);
loading_impl!(GetWithExpiry, Expiring, (V, Option<Duration>), V);
loading_impl!(TryGetWith, Fallible<E>, Result<V, E>, Result<V, std::sync::Arc<E>>, E);
loading_impl!(
    TryGetWithExpiry,
    FallibleExpiring<E>,
    Result<(V, Option<Duration>), E>,
    Result<V, std::sync::Arc<E>>,
    E
);
loading_impl!(OptionallyGetWith, Optional, Option<V>, Option<V>);

/// A by-reference lookup: the borrowed key until the store misses, then a [`Load`] that owns
/// a copy of it. A hit neither copies the key nor allocates.
enum ByRef<'a, K, V, S, Q: ?Sized, F> {
    /// Not looked yet.
    First {
        store: &'a Store<K, V, S>,
        key: &'a Q,
        init: Option<F>,
    },
    /// Missed: loading under an owned key.
    Missed(Load<'a, K, V, S, F>),
}

impl<'a, K, V, S, Q, F> ByRef<'a, K, V, S, Q, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static + Borrow<Q>,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
    Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    F: Future,
{
    /// One poll of a loading method of kind `M`.
    #[inline]
    fn poll_as<M: Kind<V, Input = F::Output>>(&mut self, cx: &mut Context<'_>) -> Poll<M::Output> {
        if let ByRef::First { store, key, init } = self {
            if let Some(value) = store.get(*key) {
                return Poll::Ready(M::hit(value));
            }
            let init = init.take().expect("a by-reference load looks once");
            *self = ByRef::Missed(Load::missed(store, key.to_owned(), init));
        }
        match self {
            ByRef::Missed(load) => load.poll_as::<M>(cx),
            ByRef::First { .. } => unreachable!("left above"),
        }
    }
}

/// Defines one public by-reference loading future over [`ByRef`] of kind `$kind`.
macro_rules! by_ref_future {
    ($(#[$doc:meta])* $name:ident, $kind:ty, $input:ty, $output:ty $(, $e:ident)?) => {
        $(#[$doc])*
        ///
        /// Like every future it does nothing until polled: the cache is looked at on the first
        /// poll, not when the method is called. It is `Send` when the loader and the borrowed
        /// key are, and `Unpin` whatever the loader is.
        #[must_use = "futures do nothing unless you `.await` or poll them"]
        pub struct $name<'a, K, V, S, Q: ?Sized, F> {
            load: ByRef<'a, K, V, S, Q, F>,
        }

        impl<K, V, S, Q: ?Sized, F> std::fmt::Debug for $name<'_, K, V, S, Q, F> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        // The loader is only ever polled inside its own `Pin<Box<_>>`, never in place.
        impl<K, V, S, Q: ?Sized, F> Unpin for $name<'_, K, V, S, Q, F> {}

        impl<K, V, S, Q, F $(, $e)?> Future for $name<'_, K, V, S, Q, F>
        where
            K: Hash + Eq + Clone + Send + Sync + 'static + Borrow<Q>,
            V: Clone + Send + Sync + 'static,
            S: BuildHasher + Clone + Send + Sync + 'static,
            Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
            F: Future<Output = $input>,
            $($e: Send + Sync + 'static,)?
        {
            type Output = $output;

            #[inline]
            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
                self.get_mut().load.poll_as::<$kind>(cx)
            }
        }
    };
}

by_ref_future! {
    /// The future returned by [`Cache::get_with_by_ref`].
    GetWithByRef, Plain, V, V
}

by_ref_future! {
    /// The future returned by [`Cache::try_get_with_by_ref`].
    TryGetWithByRef, Fallible<E>, Result<V, E>, Result<V, std::sync::Arc<E>>, E
}

by_ref_future! {
    /// The future returned by [`Cache::optionally_get_with_by_ref`].
    OptionallyGetWithByRef, Optional, Option<V>, Option<V>
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
    /// #[tokio::main]
    /// async fn main() {
    ///     let cache: ebb_cache::Cache<u32, String> = ebb_cache::Cache::builder().build();
    ///     let name = cache.get_with(7, async { "loaded once".to_string() }).await;
    ///     assert_eq!(name, "loaded once");
    ///     // A hit: the loader is not run.
    ///     let again = cache.get_with(7, async { unreachable!() }).await;
    ///     assert_eq!(again, "loaded once");
    /// }
    /// ```
    #[inline]
    #[track_caller]
    pub fn get_with<F>(&self, key: K, init: F) -> GetWith<'_, K, V, S, F>
    where
        F: Future<Output = V>,
    {
        self.ensure_task();
        GetWith {
            load: Load::new(self.store(), key, init),
        }
    }

    /// Like [`get_with`](Self::get_with), with a loader that also chooses the entry's TTL:
    /// `Some(ttl)` stores it for exactly `ttl` (zero: returned but not stored), `None` uses
    /// the cache's `time_to_live`. For tokens that expire at their own time, or responses
    /// with their own max-age.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// #[tokio::main]
    /// async fn main() {
    ///     let tokens: ebb_cache::Cache<&str, String> = ebb_cache::Cache::builder().build();
    ///     let ttl = Duration::from_millis(100); // the token's own lifetime
    ///     let token = tokens
    ///         .get_with_expiry("api", async move { ("t0k3n".to_string(), Some(ttl)) })
    ///         .await;
    ///     assert_eq!(token, "t0k3n");
    ///     tokio::time::sleep(ttl).await;
    ///     assert_eq!(tokens.get("api"), None);
    /// }
    /// ```
    #[inline]
    #[track_caller]
    pub fn get_with_expiry<F>(&self, key: K, init: F) -> GetWithExpiry<'_, K, V, S, F>
    where
        F: Future<Output = (V, Option<Duration>)>,
    {
        self.ensure_task();
        GetWithExpiry {
            load: Load::new(self.store(), key, init),
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
    /// #[tokio::main]
    /// async fn main() {
    ///     let cache: ebb_cache::Cache<u32, u64> = ebb_cache::Cache::builder().build();
    ///     let err = cache.try_get_with(1, async { "db down".parse::<u64>() }).await;
    ///     assert!(err.is_err());
    ///     let ok = cache.try_get_with(1, async { "42".parse::<u64>() }).await;
    ///     assert_eq!(ok.unwrap(), 42);
    /// }
    /// ```
    #[inline]
    #[track_caller]
    pub fn try_get_with<F, E>(&self, key: K, init: F) -> TryGetWith<'_, K, V, S, F>
    where
        F: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        self.ensure_task();
        TryGetWith {
            load: Load::new(self.store(), key, init),
        }
    }

    /// Like [`try_get_with`](Self::try_get_with), with a loader that also chooses the entry's
    /// TTL on success, as [`get_with_expiry`](Self::get_with_expiry) does: `Ok((value,
    /// Some(ttl)))` stores it for exactly `ttl` (zero: returned but not stored), `Ok((value,
    /// None))` uses the cache's `time_to_live`, and an error is shared with the waiting
    /// callers and not cached.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// #[tokio::main]
    /// async fn main() {
    ///     let tokens: ebb_cache::Cache<&str, String> = ebb_cache::Cache::builder().build();
    ///     let failed = tokens
    ///         .try_get_with_expiry("api", async { Err::<(String, _), _>("auth server down") })
    ///         .await;
    ///     assert_eq!(*failed.unwrap_err(), "auth server down");
    ///     let ttl = Duration::from_millis(100); // the token's own lifetime
    ///     let token = tokens
    ///         .try_get_with_expiry("api", async move { Ok::<_, &str>(("t0k3n".to_string(), Some(ttl))) })
    ///         .await;
    ///     assert_eq!(token.unwrap(), "t0k3n");
    ///     tokio::time::sleep(ttl).await;
    ///     assert_eq!(tokens.get("api"), None);
    /// }
    /// ```
    #[inline]
    #[track_caller]
    pub fn try_get_with_expiry<F, E>(&self, key: K, init: F) -> TryGetWithExpiry<'_, K, V, S, F>
    where
        F: Future<Output = Result<(V, Option<Duration>), E>>,
        E: Send + Sync + 'static,
    {
        self.ensure_task();
        TryGetWithExpiry {
            load: Load::new(self.store(), key, init),
        }
    }

    /// The value for `key`, or the result of loading it with an `init` that may find nothing
    /// (`None` is returned and not cached).
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() {
    ///     let cache: ebb_cache::Cache<u32, String> = ebb_cache::Cache::builder().build();
    ///     assert_eq!(cache.optionally_get_with(1, async { None }).await, None);
    ///     assert!(cache.get(&1).is_none());
    /// }
    /// ```
    #[inline]
    #[track_caller]
    pub fn optionally_get_with<F>(&self, key: K, init: F) -> OptionallyGetWith<'_, K, V, S, F>
    where
        F: Future<Output = Option<V>>,
    {
        self.ensure_task();
        OptionallyGetWith {
            load: Load::new(self.store(), key, init),
        }
    }

    /// [`get_with`](Self::get_with) by reference: `key` is borrowed (a `&str` for a `String`
    /// key), and copied (`to_owned`) only on a miss, to load under. A hit neither copies
    /// the key nor allocates.
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() {
    ///     let cache: ebb_cache::Cache<String, usize> = ebb_cache::Cache::builder().build();
    ///     let len = cache.get_with_by_ref("ada", async { 3 }).await;
    ///     assert_eq!(len, 3);
    ///     assert_eq!(cache.get("ada"), Some(3));
    /// }
    /// ```
    #[inline]
    #[track_caller]
    pub fn get_with_by_ref<'a, Q, F>(
        &'a self,
        key: &'a Q,
        init: F,
    ) -> GetWithByRef<'a, K, V, S, Q, F>
    where
        K: Borrow<Q>,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
        F: Future<Output = V>,
    {
        self.ensure_task();
        GetWithByRef {
            load: ByRef::First {
                store: self.store(),
                key,
                init: Some(init),
            },
        }
    }

    /// [`try_get_with`](Self::try_get_with) by reference (see
    /// [`get_with_by_ref`](Self::get_with_by_ref)).
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() {
    ///     let cache: ebb_cache::Cache<String, u64> = ebb_cache::Cache::builder().build();
    ///     let n = cache.try_get_with_by_ref("n", async { "42".parse::<u64>() }).await;
    ///     assert_eq!(n.unwrap(), 42);
    /// }
    /// ```
    #[inline]
    #[track_caller]
    pub fn try_get_with_by_ref<'a, Q, F, E>(
        &'a self,
        key: &'a Q,
        init: F,
    ) -> TryGetWithByRef<'a, K, V, S, Q, F>
    where
        K: Borrow<Q>,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
        F: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        self.ensure_task();
        TryGetWithByRef {
            load: ByRef::First {
                store: self.store(),
                key,
                init: Some(init),
            },
        }
    }

    /// [`optionally_get_with`](Self::optionally_get_with) by reference (see
    /// [`get_with_by_ref`](Self::get_with_by_ref)).
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() {
    ///     let cache: ebb_cache::Cache<String, String> = ebb_cache::Cache::builder().build();
    ///     assert_eq!(cache.optionally_get_with_by_ref("nobody", async { None }).await, None);
    /// }
    /// ```
    #[inline]
    #[track_caller]
    pub fn optionally_get_with_by_ref<'a, Q, F>(
        &'a self,
        key: &'a Q,
        init: F,
    ) -> OptionallyGetWithByRef<'a, K, V, S, Q, F>
    where
        K: Borrow<Q>,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
        F: Future<Output = Option<V>>,
    {
        self.ensure_task();
        OptionallyGetWithByRef {
            load: ByRef::First {
                store: self.store(),
                key,
                init: Some(init),
            },
        }
    }
}
