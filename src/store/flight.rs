//! The single-flight registry: which keys are being loaded now, and how each load ends.
//!
//! For a key that is missing or expired, the first caller *leads*: it registers a [`Flight`]
//! for the key and runs its own loader; every caller that arrives while the flight is
//! registered *waits* for it and gets a clone of its outcome. The registry is a few striped
//! maps `key -> Arc<Flight>`, separate from the map of entries, holding only loads in
//! progress. It knows nothing of futures or of the store: `load.rs` drives it, and writers
//! mark flights superseded through the store.
//!
//! Invariants:
//! - **One leader per flight.** A flight is registered and looked up under its stripe lock, so
//!   two callers can never both lead the same key at once; each flight is led exactly once.
//! - **Every flight is settled.** The leader ends its flight with the value, the error, or
//!   nothing, or abandons it ([`Flights::abandon`]) when it is dropped or unwinds. Ending
//!   unregisters the flight, then wakes every waiter; an abandoned flight's waiters start
//!   over, and one of them leads. A flight is settled even when unregistering it panics (a
//!   user `Hash` or `Eq`): the next caller replaces a settled flight it finds registered.
//!   Nobody waits on a flight that cannot end.
//! - **Nothing is left behind.** A flight leaves the registry when it is settled: a million
//!   loaded keys leave no records.
//! - **A copy only for a waiter.** A flight is settled with its outcome only if a caller joined
//!   it (or its leader waits on it, handing the load to a task); with none, it is settled as
//!   abandoned and its leader makes no copy of the value. Joining and unregistering take the
//!   same stripe lock, so no caller joins once the leader looked.
//! - A key's `Clone` and `Hash` (user code) run before the registry changes, never between
//!   two changes that must both happen (the registered count and the map).

use std::any::Any;
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use crate::sync::{lock, Arc, LazyStripes, Mutex};

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
    /// Whether a caller joined to wait; set under the key's stripe lock.
    joined: AtomicBool,
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
            joined: AtomicBool::new(false),
            done: tokio::sync::Notify::new(),
            #[cfg(loom)]
            settled: loom::sync::Condvar::new(),
        }
    }

    /// Count the leader as a waiter: it hands the flight to a task to end, and waits for it
    /// itself. Called before the task is spawned (which orders it before the task's `end`).
    pub(crate) fn leader_waits(&self) {
        self.joined.store(true, Ordering::Relaxed);
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

    /// Settle the flight with `outcome`, unless it is settled already: the first outcome
    /// stands (a leader whose `end` unwound after settling also abandons the flight).
    fn settle(&self, outcome: Outcome<V>) {
        {
            let mut settled = lock(&self.outcome);
            if settled.is_some() {
                return;
            }
            *settled = Some(outcome);
        }
        self.done.notify_waiters();
        #[cfg(loom)]
        self.settled.notify_all();
    }

    /// Settle the flight as abandoned when its registry is gone (the cache was dropped):
    /// whoever still waits on it starts over, or gives up.
    pub(crate) fn give_up(&self) {
        self.settle(Outcome::Abandoned);
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
    pub(crate) async fn wait(&self) -> Outcome<V> {
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
    /// Made at the first flight: a cache that never loads (a cache built per request, say)
    /// allocates none.
    stripes: LazyStripes<Stripe<K, V, S>>,
    count: usize,
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
            stripes: LazyStripes::new(|| Self::make(stripes, &hasher)),
            count: stripes,
            hasher,
            active: AtomicUsize::new(0),
        }
    }

    fn make(count: usize, hasher: &S) -> Box<[Stripe<K, V, S>]> {
        (0..count)
            .map(|_| Mutex::new(HashMap::with_hasher(hasher.clone())))
            .collect()
    }

    fn stripe<Q: Hash + ?Sized>(&self, key: &Q) -> &Stripe<K, V, S> {
        let hash = self.hasher.hash_one(key) >> 32;
        let stripes = self
            .stripes
            .get_or_make(|| Self::make(self.count, &self.hasher));
        &stripes[hash as usize & (self.count - 1)]
    }

    /// Join the key's flight, or register a new one and lead it.
    pub(crate) fn join_or_lead(&self, key: &K) -> Role<V> {
        let mut stripe = lock(self.stripe(key));
        match stripe.get_mut(key) {
            Some(joined) if !joined.is_settled() => {
                joined.joined.store(true, Ordering::Relaxed);
                Role::Wait(Arc::clone(joined))
            }
            Some(settled) => {
                let flight = Arc::new(Flight::new());
                *settled = Arc::clone(&flight);
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
            let removed = stripe.remove_entry(key);
            self.active.fetch_sub(1, Ordering::SeqCst);
            drop(stripe);
            // The registered key's `Drop` (user code) runs last, with the count right.
            drop(removed);
        }
    }

    /// Unregister and settle `flight` with `outcome()`, made only if a caller waits for it:
    /// callers join under the stripe lock that unregistering takes, so once the flight is
    /// unregistered nobody else can (a leader with no waiters clones no value for them). The
    /// flight is settled even if unregistering panics (a user `Hash` or `Eq`; then
    /// `outcome()` is made, as a caller may still join) or if `outcome()` does (a value's
    /// `Clone`; then the flight is abandoned and its waiters start over); the panic then goes
    /// on, and the next caller for the key replaces the settled flight it finds.
    pub(crate) fn end(
        &self,
        key: &K,
        flight: &Arc<Flight<V>>,
        outcome: impl FnOnce() -> Outcome<V>,
    ) {
        let unregistered = catch_unwind(AssertUnwindSafe(|| self.unregister(key, flight)));
        let made = if unregistered.is_err() || flight.joined.load(Ordering::Relaxed) {
            catch_unwind(AssertUnwindSafe(outcome))
        } else {
            Ok(Outcome::Abandoned)
        };
        match made {
            Ok(outcome) => flight.settle(outcome),
            Err(panic) => {
                flight.settle(Outcome::Abandoned);
                resume_unwind(panic);
            }
        }
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
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn len(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

/// Loom model of the flight registry: leaders, waiters, a cancelled leader, completion, and a
/// refresh-ahead reload racing a write and the expiry task.
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
                        registry.end(&1, &flight, || Outcome::Value(v));
                        return Some(v);
                    }
                    let others = loading.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(others, 0, "two loads of one key at once");
                    loads.fetch_add(1, Ordering::SeqCst);
                    loading.fetch_sub(1, Ordering::SeqCst);
                    match ends {
                        Ends::Finishes => {
                            stored.store(7, Ordering::SeqCst);
                            registry.end(&1, &flight, || Outcome::Value(7));
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

    /// A compute of key 1 (`compute.rs`): it leads the key's flight, waiting out any other
    /// flight whatever its outcome; leading, it computes `stored * 2 + 1` from what is stored
    /// (0 for absent) and stores that, then ends its flight with the value.
    fn compute(registry: &Registry, stored: &AtomicUsize, loading: &AtomicUsize) -> u32 {
        loop {
            match registry.join_or_lead(&1) {
                Role::Lead(flight) => {
                    let others = loading.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(others, 0, "a compute overlapped a load or compute");
                    let new = stored.load(Ordering::SeqCst) * 2 + 1;
                    stored.store(new, Ordering::SeqCst);
                    loading.fetch_sub(1, Ordering::SeqCst);
                    registry.end(&1, &flight, || Outcome::Value(new as u32));
                    return new as u32;
                }
                Role::Wait(flight) => drop(flight.wait_blocking()),
            }
        }
    }

    #[test]
    fn loom_single_flight_a_compute_racing_a_load() {
        loom::model(|| {
            let registry = Arc::new(Registry::new(2, Default::default()));
            let stored = Arc::new(AtomicUsize::new(0));
            let loading = Arc::new(AtomicUsize::new(0));
            let loads = Arc::new(AtomicUsize::new(0));
            let computing = {
                let (registry, stored, loading) = (
                    Arc::clone(&registry),
                    Arc::clone(&stored),
                    Arc::clone(&loading),
                );
                thread::spawn(move || compute(&registry, &stored, &loading))
            };
            let loaded = caller(&registry, &stored, &loading, &loads, Ends::Finishes);
            let computed = computing.join().unwrap();
            // One order or the other, never interleaved: the load first (7, then 15), or the
            // compute first (1, which the load then finds or is handed).
            match computed {
                15 => assert_eq!(loaded, Some(7)),
                1 => assert_eq!(loaded, Some(1)),
                other => panic!("computed {other}"),
            }
            assert_eq!(stored.load(Ordering::SeqCst), computed as usize);
            assert_eq!(registry.len(), 0);
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

    /// The modelled entry's next refresh check (its `Stamp`, see `store/refresh.rs`).
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Next {
        /// A reload was started for it (the expiry task queued its key) and has not ended.
        Reloading,
        /// Written since: its first check is a refresh interval away.
        Later,
        /// A reload ended without storing: checked again a backoff from now.
        Backoff,
    }

    /// Key 1's entry, as its shard holds it.
    #[derive(Clone, Copy, Debug)]
    struct Slot {
        value: u32,
        /// Past its deadline. Only the initial entry may be: a write stores a live entry.
        expired: bool,
        next: Next,
    }

    /// Why a value left the map, as `Store::cause_at` judges it.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Cause {
        Replaced,
        Expired,
    }

    /// The stored value the expiry task queued a reload for, the reloaded one, the written one.
    const INITIAL: u32 = 1;
    const RELOADED: u32 = 3;
    const WRITTEN: u32 = 2;

    /// The registry, key 1's shard (its lock standing for the map's shard lock) and the values
    /// reported as removed.
    struct Refreshing {
        registry: Registry,
        shard: Mutex<Option<Slot>>,
        reported: Mutex<Vec<(u32, Cause)>>,
    }

    impl Refreshing {
        /// `Store::write` into the held shard: a live entry with a fresh stamp; what it
        /// replaced, judged under the lock.
        fn write(shard: &mut Option<Slot>, value: u32) -> Option<(u32, Cause)> {
            let new = Slot {
                value,
                expired: false,
                next: Next::Later,
            };
            shard.replace(new).map(|old| {
                let cause = if old.expired {
                    Cause::Expired
                } else {
                    Cause::Replaced
                };
                (old.value, cause)
            })
        }

        /// `Store::retire`: after the shard lock is released.
        fn report(&self, removed: Option<(u32, Cause)>) {
            if let Some(removed) = removed {
                lock(&self.reported).push(removed);
            }
        }

        /// `Store::reload_ended`: an entry still waiting for the reload gets a backoff.
        fn reload_ended(&self) {
            if let Some(slot) = lock(&self.shard).as_mut() {
                if slot.next == Next::Reloading {
                    slot.next = Next::Backoff;
                }
            }
        }

        /// A reload task for key 1 (`refresh.rs`: `begin_reload`, the loader, `finish`), whose
        /// loader yields `RELOADED` or fails: whether it stored its value, and the flight it
        /// led.
        fn reload(&self, loads: bool) -> (bool, Option<Arc<Flight<u32>>>) {
            // `begin_reload`: lead the flight, or leave it to the load that runs.
            let flight = match self.registry.join_or_lead(&1) {
                Role::Lead(flight) => flight,
                Role::Wait(_) => {
                    self.reload_ended();
                    return (false, None);
                }
            };
            // Registered first, looked last.
            let waiting = lock(&self.shard).is_some_and(|slot| slot.next == Next::Reloading);
            if !waiting {
                self.registry.abandon(&1, &flight);
                return (false, Some(flight));
            }
            // The loader runs with no lock held. Failed: `finish` ends the reload with the error.
            if !loads {
                self.reload_ended();
                let error: SharedError = std::sync::Arc::new("failed");
                self.registry.end(&1, &flight, || Outcome::Error(error));
                return (false, Some(flight));
            }
            // Loaded: `finish` asks `reload_cap`, which reads the written TTL under the shard
            // lock.
            let _ttl = lock(&self.shard).map(|slot| slot.value);
            // `finish_load`: unregistered under the shard lock, stored unless superseded.
            let replaced = {
                let mut shard = lock(&self.shard);
                self.registry.unregister(&1, &flight);
                (!flight.is_superseded()).then(|| Self::write(&mut shard, RELOADED))
            };
            let stored = replaced.is_some();
            self.report(replaced.flatten());
            // `end_quietly`, stored or not: the stamp, then the flight.
            self.reload_ended();
            self.registry.end(&1, &flight, || Outcome::Value(RELOADED));
            (stored, Some(flight))
        }

        /// `Store::insert`: supersede the flight, then write, under the shard lock.
        fn insert(&self) {
            let replaced = {
                let mut shard = lock(&self.shard);
                self.registry.supersede(&1);
                Self::write(&mut shard, WRITTEN)
            };
            self.report(replaced);
        }

        /// `Store::fire` for the entry's node: an expired entry is removed under the shard
        /// lock and reported. A live one is left (its node re-filed): its check is not due,
        /// whether a reload runs (`Reloading`), or it was written since, or given a backoff.
        fn fire(&self) {
            let removed = {
                let mut shard = lock(&self.shard);
                match *shard {
                    Some(slot) if slot.expired => shard.take(),
                    _ => None,
                }
            };
            self.report(removed.map(|slot| (slot.value, Cause::Expired)));
        }
    }

    /// A reload of key 1, queued by the expiry task (the stamp says `Reloading`), whose loader
    /// `loads` or fails, racing an insert and the expiry task firing the entry's node,
    /// `expired` or not by then.
    fn reload_vs_write_vs_expiry(expired: bool, loads: bool) {
        loom::model(move || {
            let model = Arc::new(Refreshing {
                registry: Registry::new(2, Default::default()),
                shard: Mutex::new(Some(Slot {
                    value: INITIAL,
                    expired,
                    next: Next::Reloading,
                })),
                reported: Mutex::new(Vec::new()),
            });
            let reloading = {
                let model = Arc::clone(&model);
                thread::spawn(move || {
                    let reloaded = model.reload(loads);
                    // Nothing else starts a reload here: once this one is over, the entry
                    // (if any) no longer waits for it.
                    let next = lock(&model.shard).map(|slot| slot.next);
                    assert_ne!(next, Some(Next::Reloading), "RELOADING after the reload");
                    reloaded
                })
            };
            let writing = {
                let model = Arc::clone(&model);
                thread::spawn(move || model.insert())
            };
            model.fire();
            let (stored, flight) = reloading.join().unwrap();
            writing.join().unwrap();

            // Writes win: the written value stays, live, and no reload is left pending on it.
            let last = lock(&model.shard).expect("the write's entry is gone");
            assert_eq!(last.value, WRITTEN, "the write lost: {last:?}");
            assert!(!last.expired);
            assert_ne!(last.next, Next::Reloading, "the stamp stayed RELOADING");
            // Every value that left was reported once, as what it was when it left: the
            // initial one (expired or replaced), the reloaded one if it was stored (the write
            // replaced it), never the written one. The reload may store into an empty slot:
            // `fire` does not supersede the flight, so a reload that looked before the expired
            // entry was removed puts the key back.
            let reported = lock(&model.reported).clone();
            let initial = if expired {
                Cause::Expired
            } else {
                Cause::Replaced
            };
            let mut expected = vec![(INITIAL, initial)];
            if stored {
                expected.push((RELOADED, Cause::Replaced));
            }
            let mut sorted = reported.clone();
            sorted.sort_by_key(|(value, _)| *value);
            assert_eq!(sorted, expected, "reported {reported:?}");
            // The reload's flight ended, and nothing is left behind.
            let flight = flight.expect("the reload had no other flight to wait for");
            assert!(
                flight.outcome().is_some(),
                "the reload's flight never ended"
            );
            assert_eq!(model.registry.len(), 0);
            assert!(model.registry.registered_key(&1).is_none());
        });
    }

    #[test]
    fn loom_refresh_reload_vs_write_vs_expiry() {
        for expired in [true, false] {
            for loads in [true, false] {
                reload_vs_write_vs_expiry(expired, loads);
            }
        }
    }
}
