//! The entry API: [`Cache::entry`] and [`Cache::entry_by_ref`] select a key, then get or
//! insert it (`or_insert_with` and its family, the `get_with` engine), or compute its new
//! state from its current one (`and_compute_with`, `and_upsert_with`).
//!
//! Invariants:
//! - **A compute leads the key's flight** (`store/flight.rs`) for as long as it runs: two
//!   computes on one key never interleave, and a compute never overlaps a load of the key (it
//!   waits for the load, then runs; a load waits for it, then starts over, or takes its value).
//! - **Writes win over computes**, as over loads: an `insert`, `remove` or `invalidate_all`
//!   that lands while the compute runs marks its flight superseded, and the compute's `Put`
//!   or `Remove` is then not applied (its result says `Unchanged` or `StillNone`).
//! - **A compute always ends its flight**: a compute future dropped mid-way (cancelled) or
//!   unwound by a panic (in the user's closure or future) abandons it, and whoever waits
//!   starts over.
//! - The user's closure and future run with no lock held.

use std::borrow::Borrow;
use std::future::Future;
use std::hash::{BuildHasher, Hash};

use crate::cache::Cache;
use crate::load::{loading, Fallible, Kind, Load, Optional, Plain};
use crate::store::flight::{Flight, Outcome, Role};
use crate::store::Store;
use crate::sync::Arc;

/// A key and its value, as the entry API returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<K, V> {
    key: K,
    value: V,
    fresh: bool,
}

impl<K, V> Entry<K, V> {
    /// The key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The value.
    pub fn value(&self) -> &V {
        &self.value
    }

    /// The value, taken.
    pub fn into_value(self) -> V {
        self.value
    }

    /// Whether this call put the value in the cache (its own loader or compute produced it),
    /// rather than finding it there.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }
}

/// What an [`and_compute_with`](OwnedKeyEntrySelector::and_compute_with) closure decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<V> {
    /// Store this value (with the cache's time to live).
    Put(V),
    /// Remove the entry.
    Remove,
    /// Leave it as it is.
    Nop,
}

/// What an [`and_compute_with`](OwnedKeyEntrySelector::and_compute_with) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompResult<K, V> {
    /// There was no entry; the compute stored this one.
    Inserted(Entry<K, V>),
    /// The compute replaced the entry with this one.
    ReplacedWith(Entry<K, V>),
    /// The compute removed this entry.
    Removed(Entry<K, V>),
    /// The entry is as it was (an `Op::Nop`, or a write landed while the compute ran and won).
    Unchanged(Entry<K, V>),
    /// There was no entry, and there still is none.
    StillNone(K),
}

/// The entry API on an owned key: [`Cache::entry`].
#[must_use = "an entry selector does nothing until one of its methods is awaited"]
pub struct OwnedKeyEntrySelector<'a, K, V, S> {
    cache: &'a Cache<K, V, S>,
    key: K,
}

/// The entry API on a borrowed key: [`Cache::entry_by_ref`]. The key is copied (`to_owned`)
/// only when the call needs an owned one: to load or compute under, and for the [`Entry`] it
/// returns.
#[must_use = "an entry selector does nothing until one of its methods is awaited"]
pub struct RefKeyEntrySelector<'a, K, Q: ?Sized, V, S> {
    cache: &'a Cache<K, V, S>,
    key: &'a Q,
}

impl<K: std::fmt::Debug, V, S> std::fmt::Debug for OwnedKeyEntrySelector<'_, K, V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedKeyEntrySelector")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<K, Q: std::fmt::Debug + ?Sized, V, S> std::fmt::Debug for RefKeyEntrySelector<'_, K, Q, V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefKeyEntrySelector")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// Select `key` for the entry API: get or insert it, or compute its new state from its
    /// current one, single-flight with the `get_with` family on the same key.
    ///
    /// ```
    /// use ebb_cache::{CompResult, Op};
    ///
    /// #[tokio::main]
    /// async fn main() {
    ///     let hits: ebb_cache::Cache<&str, u64> = ebb_cache::Cache::builder().build();
    ///     // A counter, incremented in place.
    ///     for _ in 0..3 {
    ///         hits.entry("/home")
    ///             .and_upsert_with(|seen| async move { seen.map_or(1, |e| e.into_value() + 1) })
    ///             .await;
    ///     }
    ///     assert_eq!(hits.get("/home"), Some(3));
    ///     // A conditional remove.
    ///     let done = hits
    ///         .entry("/home")
    ///         .and_compute_with(|seen| async move {
    ///             match seen {
    ///                 Some(e) if *e.value() >= 3 => Op::Remove,
    ///                 _ => Op::Nop,
    ///             }
    ///         })
    ///         .await;
    ///     assert!(matches!(done, CompResult::Removed(_)));
    ///     let fresh = hits.entry("/about").or_insert_with(async { 0 }).await;
    ///     assert!(fresh.is_fresh());
    /// }
    /// ```
    pub fn entry(&self, key: K) -> OwnedKeyEntrySelector<'_, K, V, S> {
        OwnedKeyEntrySelector { cache: self, key }
    }

    /// [`entry`](Self::entry) with a borrowed key (a `&str` for a `String` key).
    pub fn entry_by_ref<'a, Q>(&'a self, key: &'a Q) -> RefKeyEntrySelector<'a, K, Q, V, S>
    where
        K: Borrow<Q>,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        RefKeyEntrySelector { cache: self, key }
    }
}

/// Drive `load` to its outcome, and say whether its own loader produced it.
async fn run<K, V, S, F, M>(mut load: Load<'_, K, V, S, F>) -> (M::Output, bool)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
    F: Future,
    M: Kind<V, Input = F::Output>,
{
    let output = std::future::poll_fn(|cx| load.poll_as::<M>(cx)).await;
    (output, load.led)
}

/// Abandons a compute's flight if the compute is dropped or unwinds before it ends it.
struct Leading<'a, K: Hash + Eq + Clone, V: Clone, S: BuildHasher + Clone> {
    store: &'a Store<K, V, S>,
    key: &'a K,
    flight: Option<Arc<Flight<V>>>,
}

impl<K: Hash + Eq + Clone, V: Clone, S: BuildHasher + Clone> Drop for Leading<'_, K, V, S> {
    fn drop(&mut self) {
        if let Some(flight) = self.flight.take() {
            self.store.flights.abandon(self.key, &flight);
        }
    }
}

/// Compute `key`'s new state with `f`, leading its flight (see the module docs).
async fn compute<K, V, S, F, Fut>(store: &Store<K, V, S>, key: K, f: F) -> CompResult<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
    F: FnOnce(Option<Entry<K, V>>) -> Fut,
    Fut: Future<Output = Op<V>>,
{
    let flight = loop {
        match store.flights.join_or_lead(&key) {
            Role::Lead(flight) => break flight,
            Role::Wait(flight) => {
                loading::refuse_own(&flight);
                // Whatever it ends with, this compute runs after it, on what it left.
                let _ = flight.wait().await;
            }
        }
    };
    let mut leading = Leading {
        store,
        key: &key,
        flight: Some(Arc::clone(&flight)),
    };
    let generation = store.generation_count();
    let found = store.peek(&key).map(|value| Entry {
        key: key.clone(),
        value,
        fresh: false,
    });
    let op = {
        let mut future = std::pin::pin!(f(found.clone()));
        // Marked as this flight's loader only while it is polled (other tasks run on this
        // thread between polls).
        std::future::poll_fn(|cx| {
            let _loading = loading::enter(&flight);
            future.as_mut().poll(cx)
        })
        .await
    };
    let (result, outcome) = match (op, found) {
        (Op::Put(value), found) => {
            let stored = store.finish_load(
                key.clone(),
                &flight,
                value.clone(),
                Some(store.write_cap(&key, &value)),
                generation,
            );
            let entry = Entry {
                key: key.clone(),
                value: value.clone(),
                fresh: true,
            };
            match (stored, found) {
                (true, None) => (CompResult::Inserted(entry), Outcome::Value(value)),
                (true, Some(_)) => (CompResult::ReplacedWith(entry), Outcome::Value(value)),
                (false, Some(old)) => (CompResult::Unchanged(old), Outcome::Abandoned),
                (false, None) => (CompResult::StillNone(key.clone()), Outcome::Abandoned),
            }
        }
        (Op::Remove, Some(old)) => match store.remove_for(&key, &flight) {
            Some(_) => (CompResult::Removed(old), Outcome::Abandoned),
            None => (CompResult::Unchanged(old), Outcome::Abandoned),
        },
        (Op::Remove | Op::Nop, None) => (CompResult::StillNone(key.clone()), Outcome::Abandoned),
        (Op::Nop, Some(old)) => (CompResult::Unchanged(old), Outcome::Abandoned),
    };
    // A compute that stored nothing ends its flight as abandoned: whoever waits starts over
    // and finds the key as the compute left it.
    leading.flight = None;
    store.flights.end(&key, &flight, move || outcome);
    result
}

impl<'a, K, V, S> OwnedKeyEntrySelector<'a, K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// The `get_with` engine of kind `M` on this key; whether this call's `init` produced
    /// the outcome.
    async fn load<F, M>(&self, init: F) -> (M::Output, bool)
    where
        F: Future,
        M: Kind<V, Input = F::Output>,
    {
        self.cache.ensure_task();
        run::<_, _, _, _, M>(Load::new(self.cache.store(), self.key.clone(), init)).await
    }

    /// The entry, or the one `init` loads if there is none (single-flight, as
    /// [`get_with`](Cache::get_with)); [`Entry::is_fresh`] says whether this call's `init`
    /// produced it.
    pub async fn or_insert_with(self, init: impl Future<Output = V>) -> Entry<K, V> {
        let (value, fresh) = self.load::<_, Plain>(init).await;
        Entry {
            key: self.key,
            value,
            fresh,
        }
    }

    /// The entry, or the one a fallible `init` loads if there is none (as
    /// [`try_get_with`](Cache::try_get_with)).
    pub async fn or_try_insert_with<E: Send + Sync + 'static>(
        self,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<Entry<K, V>, std::sync::Arc<E>> {
        let (value, fresh) = self.load::<_, Fallible<E>>(init).await;
        value.map(|value| Entry {
            key: self.key,
            value,
            fresh,
        })
    }

    /// The entry, or the one `init` finds if there is none (as
    /// [`optionally_get_with`](Cache::optionally_get_with)).
    pub async fn or_optionally_insert_with(
        self,
        init: impl Future<Output = Option<V>>,
    ) -> Option<Entry<K, V>> {
        let (value, fresh) = self.load::<_, Optional>(init).await;
        value.map(|value| Entry {
            key: self.key,
            value,
            fresh,
        })
    }

    /// The entry, or `value` inserted if there is none.
    pub async fn or_insert(self, value: V) -> Entry<K, V> {
        self.or_insert_with(std::future::ready(value)).await
    }

    /// Compute the key's new state from its current entry (`None` if there is none): `f`
    /// gets it and returns a future of an [`Op`]. Two computes on one key never interleave,
    /// and a compute waits for a load of the key in flight (and a load for a compute). A
    /// plain `insert`, `remove` or `invalidate_all` that lands while the compute runs wins:
    /// the compute's `Put` or `Remove` is then not applied, and the result says `Unchanged`
    /// or `StillNone`. Dropped mid-way (cancelled) or panicking, the compute changes nothing
    /// and the next caller for the key goes on. A `Put` stores with the cache's time to live.
    pub async fn and_compute_with<F, Fut>(self, f: F) -> CompResult<K, V>
    where
        F: FnOnce(Option<Entry<K, V>>) -> Fut,
        Fut: Future<Output = Op<V>>,
    {
        self.cache.ensure_task();
        compute(self.cache.store(), self.key, f).await
    }

    /// Compute the key's new value from its current entry (`None` if there is none) and
    /// store it: [`and_compute_with`](Self::and_compute_with) with a `Put`. The entry
    /// returned holds the computed value; [`Entry::is_fresh`] is `false` if a write that
    /// landed meanwhile won and the value was not stored.
    pub async fn and_upsert_with<F, Fut>(self, f: F) -> Entry<K, V>
    where
        F: FnOnce(Option<Entry<K, V>>) -> Fut,
        Fut: Future<Output = V>,
    {
        self.cache.ensure_task();
        let store = self.cache.store();
        let key = self.key;
        let computed = std::sync::Mutex::new(None);
        let result = compute(store, key.clone(), |found| {
            let value = f(found);
            async {
                let value = value.await;
                *computed.lock().unwrap_or_else(|e| e.into_inner()) = Some(value.clone());
                Op::Put(value)
            }
        })
        .await;
        let value = computed
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .expect("a compute that returned ran its closure");
        let fresh = matches!(
            result,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        );
        Entry { key, value, fresh }
    }
}

impl<'a, K, Q, V, S> RefKeyEntrySelector<'a, K, Q, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static + Borrow<Q>,
    Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// The `get_with` engine of kind `M` on this key: a hit looks by reference; whether this
    /// call's `init` produced the outcome.
    async fn load<F, M>(&self, init: F) -> (M::Output, bool)
    where
        F: Future,
        M: Kind<V, Input = F::Output>,
    {
        self.cache.ensure_task();
        let store = self.cache.store();
        if let Some(value) = store.get(self.key) {
            return (M::hit(value), false);
        }
        run::<_, _, _, _, M>(Load::missed(store, self.key.to_owned(), init)).await
    }

    /// As [`OwnedKeyEntrySelector::or_insert_with`]; a hit copies the key only for the
    /// [`Entry`] it returns.
    pub async fn or_insert_with(self, init: impl Future<Output = V>) -> Entry<K, V> {
        let (value, fresh) = self.load::<_, Plain>(init).await;
        Entry {
            key: self.key.to_owned(),
            value,
            fresh,
        }
    }

    /// As [`OwnedKeyEntrySelector::or_try_insert_with`].
    pub async fn or_try_insert_with<E: Send + Sync + 'static>(
        self,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<Entry<K, V>, std::sync::Arc<E>> {
        let (value, fresh) = self.load::<_, Fallible<E>>(init).await;
        value.map(|value| Entry {
            key: self.key.to_owned(),
            value,
            fresh,
        })
    }

    /// As [`OwnedKeyEntrySelector::or_optionally_insert_with`].
    pub async fn or_optionally_insert_with(
        self,
        init: impl Future<Output = Option<V>>,
    ) -> Option<Entry<K, V>> {
        let (value, fresh) = self.load::<_, Optional>(init).await;
        value.map(|value| Entry {
            key: self.key.to_owned(),
            value,
            fresh,
        })
    }

    /// As [`OwnedKeyEntrySelector::and_compute_with`].
    pub async fn and_compute_with<F, Fut>(self, f: F) -> CompResult<K, V>
    where
        F: FnOnce(Option<Entry<K, V>>) -> Fut,
        Fut: Future<Output = Op<V>>,
    {
        OwnedKeyEntrySelector {
            cache: self.cache,
            key: self.key.to_owned(),
        }
        .and_compute_with(f)
        .await
    }

    /// As [`OwnedKeyEntrySelector::and_upsert_with`].
    pub async fn and_upsert_with<F, Fut>(self, f: F) -> Entry<K, V>
    where
        F: FnOnce(Option<Entry<K, V>>) -> Fut,
        Fut: Future<Output = V>,
    {
        OwnedKeyEntrySelector {
            cache: self.cache,
            key: self.key.to_owned(),
        }
        .and_upsert_with(f)
        .await
    }
}
