//! Single-flight loading: one load per key however many callers, cancellation and panic
//! safety, shared errors, writes that win over loads, parallel keys, no leftovers.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::settle;
use ebb_cache::Cache;
use tokio::time::{sleep, Instant};

const SEC: Duration = Duration::from_secs(1);

fn cache() -> Cache<u64, u64> {
    Cache::builder().time_to_live(60 * SEC).build()
}

/// A loader that counts its runs and takes `delay` of (paused) time.
fn loader(
    runs: &Arc<AtomicUsize>,
    delay: Duration,
    value: u64,
) -> impl std::future::Future<Output = u64> {
    let runs = Arc::clone(runs);
    async move {
        runs.fetch_add(1, Ordering::SeqCst);
        sleep(delay).await;
        value
    }
}

/// Spawn `get_with(key)` on `c` with a counting loader that takes `delay` and yields `value`.
fn spawn_load(
    c: &Cache<u64, u64>,
    runs: &Arc<AtomicUsize>,
    key: u64,
    delay: Duration,
    value: u64,
) -> tokio::task::JoinHandle<u64> {
    let (c, load) = (c.clone(), loader(runs, delay, value));
    tokio::spawn(async move { c.get_with(key, load).await })
}

#[tokio::test(start_paused = true)]
async fn a_thousand_callers_one_load() {
    let c = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let c = c.clone();
            let runs = Arc::clone(&runs);
            tokio::spawn(async move { c.get_with(1, loader(&runs, SEC, 100 + i)).await })
        })
        .collect();
    let mut values = Vec::new();
    for t in tasks {
        values.push(t.await.unwrap());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(
        values.iter().all(|v| *v == values[0]),
        "everyone got the one load's value"
    );
    assert_eq!(c.get(&1), Some(values[0]));
    assert_eq!(c.__internals().loads, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_one_load_on_two_threads() {
    for round in 0..20u64 {
        let c = cache();
        let runs = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let c = c.clone();
                let runs = Arc::clone(&runs);
                tokio::spawn(async move {
                    c.get_with(round, async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        round * 10
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), round * 10);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "round {round}");
        assert_eq!(c.__internals().loads, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_leader_hands_over_to_a_waiter() {
    let c = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    // The leader gives up after 1 s of a 10 s load.
    let leader = {
        let (c, runs) = (c.clone(), Arc::clone(&runs));
        tokio::spawn(async move {
            tokio::time::timeout(SEC, c.get_with(1, loader(&runs, 10 * SEC, 1))).await
        })
    };
    settle().await;
    let waiters: Vec<_> = (0..10)
        .map(|i| {
            let (c, runs) = (c.clone(), Arc::clone(&runs));
            tokio::spawn(async move { c.get_with(1, loader(&runs, 2 * SEC, 2 + i)).await })
        })
        .collect();
    assert!(leader.await.unwrap().is_err(), "the leader timed out");
    let start = Instant::now();
    let mut values = Vec::new();
    for w in waiters {
        values.push(w.await.unwrap());
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the leader's load, then one waiter's"
    );
    assert!(values.iter().all(|v| *v == values[0]) && values[0] >= 2);
    assert_eq!(
        start.elapsed(),
        2 * SEC,
        "the waiter's own 2 s load, no hang"
    );
    assert_eq!(c.get(&1), Some(values[0]));
}

#[tokio::test(start_paused = true)]
async fn an_aborted_leader_hands_over_to_a_waiter() {
    let c = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    let leader = spawn_load(&c, &runs, 1, 10 * SEC, 1);
    settle().await;
    let waiter = spawn_load(&c, &runs, 1, SEC, 2);
    settle().await;
    leader.abort();
    assert_eq!(waiter.await.unwrap(), 2);
    assert_eq!(c.__internals().loads, 0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_loader_panics_its_caller_and_waiters_load_again() {
    let c = cache();
    let leader = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_with(1, async {
                sleep(SEC).await;
                panic!("loader exploded")
            })
            .await
        })
    };
    settle().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let (c, runs) = (c.clone(), Arc::clone(&runs));
            tokio::spawn(async move { c.get_with(1, loader(&runs, SEC, 7)).await })
        })
        .collect();
    let err = leader.await.unwrap_err();
    assert!(err.is_panic(), "the panic reaches the leader's caller");
    for w in waiters {
        assert_eq!(w.await.unwrap(), 7, "waiters finish with their own loader");
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "one waiter led the second load"
    );
}

#[derive(Debug, PartialEq)]
struct DbDown(u32);

#[tokio::test(start_paused = true)]
async fn a_failed_load_shares_one_error_and_is_not_cached() {
    let c = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (c, runs) = (c.clone(), Arc::clone(&runs));
            tokio::spawn(async move {
                c.try_get_with(1, async move {
                    let n = runs.fetch_add(1, Ordering::SeqCst) as u32;
                    sleep(SEC).await;
                    Err::<u64, _>(DbDown(n))
                })
                .await
            })
        })
        .collect();
    let mut errors = Vec::new();
    for t in tasks {
        errors.push(t.await.unwrap().unwrap_err());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(
        errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])),
        "the same Arc<E>"
    );
    assert_eq!(*errors[0], DbDown(0));
    assert_eq!(c.get(&1), None, "errors are not cached");
    let ok = c.try_get_with(1, async { Ok::<_, DbDown>(5) }).await;
    assert_eq!(ok, Ok(5), "the next call loads again");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_of_another_kind_loads_for_itself_after_a_failure() {
    let c = cache();
    let failing = {
        let c = c.clone();
        tokio::spawn(async move {
            c.try_get_with(1, async {
                sleep(SEC).await;
                Err::<u64, _>(DbDown(0))
            })
            .await
        })
    };
    settle().await;
    let plain = {
        let c = c.clone();
        tokio::spawn(async move { c.get_with(1, async { 9 }).await })
    };
    let other_error = {
        let c = c.clone();
        tokio::spawn(async move { c.try_get_with(1, async { Err::<u64, _>("other") }).await })
    };
    let none = {
        let c = c.clone();
        tokio::spawn(async move { c.optionally_get_with(1, async { None }).await })
    };
    assert!(failing.await.unwrap().is_err());
    assert_eq!(plain.await.unwrap(), 9);
    // These ran after the plain loader stored 9, or loaded themselves; never DbDown.
    match other_error.await.unwrap() {
        Ok(v) => assert_eq!(v, 9),
        Err(e) => assert_eq!(*e, "other"),
    }
    assert!(matches!(none.await.unwrap(), None | Some(9)));
}

#[tokio::test(start_paused = true)]
async fn remove_during_a_load_wins() {
    let c = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    let load = spawn_load(&c, &runs, 1, SEC, 1);
    settle().await;
    c.remove(&1);
    assert_eq!(load.await.unwrap(), 1, "the load still returns its value");
    assert_eq!(c.get(&1), None, "but does not store it");
    assert_eq!(c.entry_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn insert_during_a_load_wins() {
    let c = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    let load = spawn_load(&c, &runs, 1, SEC, 1);
    settle().await;
    c.insert(1, 42);
    assert_eq!(load.await.unwrap(), 1);
    assert_eq!(c.get(&1), Some(42));
}

#[tokio::test(start_paused = true)]
async fn invalidate_all_during_a_load_wins() {
    let c = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    let load = spawn_load(&c, &runs, 1, SEC, 1);
    settle().await;
    c.invalidate_all();
    assert_eq!(load.await.unwrap(), 1);
    assert_eq!(c.get(&1), None);
}

#[tokio::test(start_paused = true)]
async fn different_keys_load_in_parallel() {
    let c = cache();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let loads: Vec<_> = (0..2u64)
        .map(|k| {
            let c = c.clone();
            let (now, max) = (Arc::clone(&in_flight), Arc::clone(&max_in_flight));
            tokio::spawn(async move {
                c.get_with(k, async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(n, Ordering::SeqCst);
                    sleep(SEC).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    k
                })
                .await
            })
        })
        .collect();
    for (k, l) in loads.into_iter().enumerate() {
        assert_eq!(l.await.unwrap(), k as u64);
    }
    assert_eq!(
        max_in_flight.load(Ordering::SeqCst),
        2,
        "both loaders ran at once"
    );
    assert_eq!(start.elapsed(), SEC, "in parallel, not one after the other");
}

#[tokio::test(start_paused = true)]
async fn loaded_values_expire_with_the_cache_ttl_or_the_loaders() {
    let c = cache();
    assert_eq!(c.get_with(1, async { 1 }).await, 1);
    assert_eq!(c.get_with_expiry(2, async { (2, Some(5 * SEC)) }).await, 2);
    assert_eq!(c.get_with_expiry(3, async { (3, None) }).await, 3);
    assert_eq!(
        c.get_with_expiry(4, async { (4, Some(Duration::ZERO)) })
            .await,
        4
    );
    assert_eq!(c.get(&4), None, "a zero TTL is returned, not stored");
    sleep(5 * SEC).await;
    assert_eq!((c.get(&1), c.get(&2), c.get(&3)), (Some(1), None, Some(3)));
    sleep(55 * SEC).await;
    assert_eq!((c.get(&1), c.get(&3)), (None, None));
    // An expired key loads again.
    assert_eq!(c.get_with(1, async { 10 }).await, 10);
}

#[tokio::test(start_paused = true)]
async fn many_distinct_loads_leave_no_records() {
    let c = cache();
    for k in 0..200_000u64 {
        assert_eq!(c.get_with(k, async move { k }).await, k);
    }
    assert_eq!(c.__internals().loads, 0);
    assert_eq!(c.entry_count(), 200_000);
}

#[test]
fn load_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c: Cache<String, Arc<Vec<u8>>> = Cache::builder().build_on(rt.handle());
    assert_send(&c.get_with("k".into(), async { Arc::new(vec![]) }));
    assert_send(&c.try_get_with("k".into(), async {
        Ok::<_, std::io::Error>(Arc::new(vec![]))
    }));
    assert_send(&c.optionally_get_with("k".into(), async { None }));
    assert_send(&c.get_with_expiry("k".into(), async { (Arc::new(vec![]), None) }));
}

#[tokio::test(start_paused = true)]
async fn load_futures_are_lazy_and_unpin() {
    fn assert_unpin<T: Unpin>(_: &T) {}
    let c: Cache<u64, u64> = Cache::builder().record_stats().build();
    let runs = Arc::new(AtomicUsize::new(0));
    // Nothing is looked up when the future is made: a value inserted before the first poll
    // is a hit, and the loader never runs.
    let pending = c.get_with(1, loader(&runs, SEC, 10));
    assert_unpin(&pending);
    assert_eq!((c.stats().hits, c.stats().misses), (0, 0));
    c.insert(1, 7);
    assert_eq!(pending.await, 7);
    assert_eq!((c.stats().hits, c.stats().misses), (1, 0));
    // A future made and dropped unpolled counts nothing and loads nothing.
    drop(c.get_with(2, loader(&runs, SEC, 20)));
    drop(c.try_get_with(2, async { Ok::<u64, ()>(20) }));
    drop(c.optionally_get_with(2, async { Some(20) }));
    drop(c.get_with_expiry(2, async { (20, None) }));
    assert_eq!((c.stats().hits, c.stats().misses), (1, 0));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(c.get(&2), None);
    assert_eq!(c.__internals().loads, 0);
}

/// A value that counts its clones.
#[derive(Debug)]
struct Copies(Arc<AtomicUsize>);

impl Clone for Copies {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, Ordering::Relaxed);
        Copies(Arc::clone(&self.0))
    }
}

#[tokio::test(start_paused = true)]
async fn a_load_nobody_waits_for_copies_its_value_only_for_the_map() {
    let copies = Arc::new(AtomicUsize::new(0));
    let c: Cache<u64, Copies> = Cache::builder().build();
    let value = c.get_with(1, async { Copies(Arc::clone(&copies)) }).await;
    assert_eq!(
        copies.load(Ordering::Relaxed),
        1,
        "copies made by a load with no waiter (one is the map's)"
    );
    drop(value);
    // With a waiter, the flight keeps a copy, and the waiter takes its own from it.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let leader = {
        let (c, copies) = (c.clone(), Arc::clone(&copies));
        tokio::spawn(async move {
            c.get_with(2, async move {
                let _ = rx.await;
                Copies(copies)
            })
            .await
        })
    };
    settle().await;
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.get_with(2, async { unreachable!("it waits") }).await })
    };
    settle().await;
    copies.store(0, Ordering::Relaxed);
    tx.send(()).unwrap();
    leader.await.unwrap();
    waiter.await.unwrap();
    assert_eq!(
        copies.load(Ordering::Relaxed),
        3,
        "the map's copy, the flight's and the waiter's own"
    );
}
