//! Bad input and hostile callbacks: each test shows what happens (an error that names the
//! fix, or the documented behaviour), and that nothing hangs, leaks or is lost silently.
//!
//! Cases already covered elsewhere are not repeated here:
//! - builder TTL zero, per-entry TTL zero: `expiry::zero_ttl_stores_nothing_and_removes_the_old_value`
//! - builder and per-entry TTL `Duration::MAX`: `expiry::huge_ttls_never_expire_and_never_overflow`
//! - loader TTL zero: `load::loaded_values_expire_with_the_cache_ttl_or_the_loaders`
//! - zero (and out-of-range) tick, jitter NaN, negative, 1.0, 1.5: `lifecycle::invalid_options_are_errors`
//! - a listener panicking on the task and in `remove`: `observe::a_panicking_listener_does_not_stop_later_expiries`
//! - a panicking loader: `load::a_panicking_loader_panics_its_caller_and_waiters_load_again`
//! - a listener inserting and removing through a `WeakCache` on the task:
//!   `observe::a_listener_can_write_back_through_a_weak_handle`
//! - building outside a runtime: `lifecycle::build_outside_a_runtime_panics_with_the_fix`
//! - `try_build` / `build` on a runtime without timers: `lifecycle::a_runtime_without_timers_is_an_error`
//! - writes and drop after the runtime shut down: `lifecycle::using_and_dropping_a_cache_after_its_runtime_shut_down`

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::Duration;

use common::{advance, alive_tasks, logged, message, settle, taken, wait_until_blocking, Counted};
use ebb_cache::{BuildError, Cache, RemovalCause, WeakCache};

const NS: Duration = Duration::from_nanos(1);
const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const YEAR: Duration = Duration::from_secs(365 * 86_400);
const LIMIT: Duration = Duration::from_secs(10);

/// A current-thread runtime with paused time.
fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Run `f` on a thread of its own and fail if it has not finished within `LIMIT`: a
/// deadlock becomes a failure instead of a hung test run.
fn within_limit<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(what.to_string())
        .spawn(move || {
            let out = f();
            let _ = tx.send(());
            out
        })
        .unwrap();
    if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(LIMIT) {
        panic!("{what}: not done after {LIMIT:?}: a deadlock?");
    }
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Panics seen by the panic hook, by thread: a panic inside the expiry task is caught by
/// tokio and would otherwise go unnoticed.
fn panics_on_this_thread() -> usize {
    static PANICS: OnceLock<Mutex<HashMap<ThreadId, usize>>> = OnceLock::new();
    let panics = PANICS.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(panics) = PANICS.get() {
                *panics
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(std::thread::current().id())
                    .or_default() += 1;
            }
            previous(info);
        }));
        Mutex::default()
    });
    let panics = panics.lock().unwrap_or_else(|e| e.into_inner());
    panics
        .get(&std::thread::current().id())
        .copied()
        .unwrap_or(0)
}

// ---- TTL and TTI: zero and Duration::MAX ---------------------------------------------------

#[tokio::test(start_paused = true)]
async fn time_to_idle_zero_is_an_error_and_duration_max_disables_it() {
    let b = || Cache::<u64, u64>::builder();
    assert_eq!(
        b().time_to_idle(Duration::ZERO).try_build().unwrap_err(),
        BuildError::ZeroTimeToIdle
    );
    let err = std::panic::catch_unwind(|| b().time_to_idle(Duration::ZERO).build()).unwrap_err();
    assert!(message(err).contains("time_to_idle"));

    for idle in [Duration::MAX, b().build().horizon()] {
        let c: Cache<u64, u64> = b().time_to_idle(idle).tick(SEC).build();
        c.insert(1, 1);
        c.insert_with_ttl(2, 2, 10 * SEC);
        settle().await;
        assert_eq!(
            c.__internals().nodes,
            1,
            "no idle deadline, only key 2's TTL"
        );
        advance(10 * SEC).await;
        assert_eq!((c.get(&1), c.get(&2)), (Some(1), None));
        advance(3 * YEAR).await;
        assert_eq!(c.get(&1), Some(1), "never idle-expires");
        assert_eq!(c.entry_count(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn duration_max_ttl_and_tti_together_never_expire() {
    let (c, log) = logged(
        Cache::builder()
            .time_to_live(Duration::MAX)
            .time_to_idle(Duration::MAX)
            .tick(MS),
    );
    c.insert(1, 1);
    c.insert_with_ttl(2, 2, Duration::MAX);
    assert_eq!(
        c.get_with_expiry(3, async { (3, Some(Duration::MAX)) })
            .await,
        3
    );
    assert_eq!(c.get_with_expiry(4, async { (4, None) }).await, 4);
    settle().await;
    assert_eq!(c.__internals().nodes, 0, "nothing to schedule");
    advance(2 * YEAR).await;
    assert_eq!(
        (c.get(&1), c.get(&2), c.get(&3), c.get(&4)),
        (Some(1), Some(2), Some(3), Some(4))
    );
    assert!(taken(&log).is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_idle_time_with_a_per_entry_ttl_of_duration_max_still_idles_out() {
    let c: Cache<u64, u64> = Cache::builder().time_to_idle(10 * SEC).tick(SEC).build();
    c.insert_with_ttl(1, 1, Duration::MAX);
    advance(10 * SEC - MS).await;
    assert_eq!(c.get(&1), Some(1)); // an access: idle again from now
    advance(10 * SEC).await;
    assert_eq!(
        c.get(&1),
        None,
        "the per-entry TTL caps, it does not disable, idleness"
    );
    advance(SEC).await;
    assert_eq!(c.entry_count(), 0);
}

/// `time_to_live(Duration::MAX)` is documented to never expire, and jitter applies to the
/// default TTL. Jitter scales the TTL with `Duration::mul_f64`, which panics when the product
/// does not fit a `Duration`: about half of all inserts panic ("cannot convert float seconds
/// to Duration: value is either too big or NaN"), and so do loads.
#[tokio::test(start_paused = true)]
async fn a_default_ttl_of_duration_max_with_jitter_never_expires() {
    let c: Cache<u64, u64> = Cache::builder()
        .time_to_live(Duration::MAX)
        .expiry_jitter(0.1)
        .tick(SEC)
        .build();
    for k in 0..100 {
        c.insert(k, k);
    }
    assert_eq!(c.get_with(100, async { 100 }).await, 100);
    advance(3 * YEAR).await;
    assert_eq!(c.entry_count(), 101);
}

// ---- Tick and jitter -------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_tick_longer_than_the_ttl_keeps_reads_exact_and_removes_within_a_tick() {
    let (c, log) = logged(Cache::builder().time_to_live(10 * MS).tick(SEC));
    c.insert(1, 1);
    c.insert(2, 2);
    c.insert_with_ttl(3, 3, 1500 * MS);
    advance(10 * MS - NS).await;
    assert_eq!(c.get(&1), Some(1));
    advance(NS).await;
    assert_eq!(
        (c.get(&1), c.contains_key(&1), c.remove(&2)),
        (None, false, None)
    );
    assert_eq!(
        taken(&log),
        vec![(2, 2, RemovalCause::Expired)],
        "remove took it"
    );
    assert_eq!(c.entry_count(), 2, "key 1 waits for the tick at 1 s");
    advance(500 * MS).await;
    c.insert(2, 20); // over nothing: key 2 was removed; expires at 520 ms
    advance(490 * MS - NS).await; // t = 1 s - 1 ns
    assert!(taken(&log).is_empty());
    assert_eq!(c.entry_count(), 3);
    assert_eq!(c.get(&2), None);
    advance(NS).await; // t = 1 s: the tick that holds every deadline before it
    let mut removed = taken(&log);
    removed.sort_unstable_by_key(|(k, _, _)| *k);
    assert_eq!(
        removed,
        vec![
            (1, 1, RemovalCause::Expired),
            (2, 20, RemovalCause::Expired)
        ]
    );
    assert_eq!(c.entry_count(), 1);
    advance(500 * MS).await; // t = 1.5 s: key 3's deadline
    assert_eq!((c.get(&3), c.entry_count()), (None, 1));
    advance(500 * MS).await; // t = 2 s: its tick
    assert_eq!(taken(&log), vec![(3, 3, RemovalCause::Expired)]);
    assert_eq!(c.entry_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn jitter_infinite_is_an_error_and_negative_zero_is_no_jitter() {
    let b = || Cache::<u64, u64>::builder().time_to_live(SEC);
    for j in [f64::INFINITY, f64::NEG_INFINITY, -f64::MIN_POSITIVE] {
        assert!(
            matches!(
                b().expiry_jitter(j).try_build(),
                Err(BuildError::InvalidJitter(_))
            ),
            "{j}"
        );
    }
    let err = std::panic::catch_unwind(|| b().expiry_jitter(f64::NAN).build()).unwrap_err();
    assert!(message(err).contains("expiry_jitter NaN"));

    // -0.0 is zero: exact deadlines.
    let c = b().expiry_jitter(-0.0).tick(MS).build();
    for k in 0..100 {
        c.insert(k, k);
    }
    advance(SEC - NS).await;
    assert_eq!((0..100).filter(|k| c.get(k).is_some()).count(), 100);
    advance(NS).await;
    assert_eq!((0..100).filter(|k| c.get(k).is_some()).count(), 0);

    // The largest jitter accepted spreads deadlines over (0, 2 * TTL), and stays there.
    let c = b().expiry_jitter(1.0 - f64::EPSILON).tick(MS).build();
    for k in 0..100 {
        c.insert(k, k);
    }
    advance(2 * SEC + MS).await;
    assert_eq!(c.entry_count(), 0);
}

// ---- Panicking and re-entrant listeners --------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_listener_panicking_on_the_writing_thread_loses_only_its_notification() {
    let drops = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let c: Cache<u64, Arc<Counted>> = Cache::builder()
        .time_to_live(SEC)
        .tick(SEC)
        .record_stats()
        .eviction_listener(move |k, _, cause| {
            counter.fetch_add(1, SeqCst);
            panic!("listener bug: {k} {cause:?}");
        })
        .build();
    let v = |id| Counted::new(id, &drops);
    let id = |v: Option<Arc<Counted>>| v.map(|v| v.id);

    c.insert(1, v(1));
    c.insert(1, v(2)); // Replaced, reported by this thread
    assert_eq!(id(c.get(&1)), Some(2));
    c.insert_with_ttl(2, v(3), 10 * MS);
    c.insert_with_ttl(3, v(4), 10 * MS);
    advance(20 * MS).await; // both expired; the task looks at t = 1 s
    c.insert(2, v(5)); // Expired, reported by this thread
    assert_eq!(id(c.get(&2)), Some(5));
    assert_eq!(c.get_with(3, async { v(6) }).await.id, 6); // Expired, by the loader
    assert_eq!(id(c.get(&3)), Some(6));
    c.insert_with_ttl(1, v(7), Duration::ZERO); // Explicit
    assert_eq!(id(c.get(&1)), None);
    assert_eq!(id(c.remove(&2)), Some(5)); // Explicit
    assert_eq!(calls.load(SeqCst), 5);

    // Nothing poisoned: the same keys work as before.
    c.insert(1, v(8));
    c.insert(2, v(9));
    assert_eq!((id(c.get(&1)), id(c.get(&2))), (Some(8), Some(9)));
    let stats = c.stats();
    assert_eq!((stats.replaced, stats.expired, stats.explicit), (1, 2, 2));
    drop(c);
    settle().await;
    assert_eq!(
        drops.load(SeqCst),
        9,
        "every value dropped, reported or not"
    );
}

/// A listener that calls back into its cache, from the thread that wrote and from the expiry
/// task: reads, writes of other keys and of the same key, removals, `entry_count`,
/// `invalidate_all`. Nothing deadlocks, since no lock is held while a listener runs.
#[test]
fn a_listener_calling_back_into_the_cache_does_not_deadlock() {
    within_limit("reentrant listener, paused", || {
        paused().block_on(async {
            let weak: Arc<OnceLock<WeakCache<u64, u64>>> = Arc::default();
            let handle = Arc::clone(&weak);
            let calls = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&calls);
            let c: Cache<u64, u64> = Cache::builder()
                .time_to_live(SEC)
                .tick(100 * MS)
                .eviction_listener(move |k, v, cause| {
                    counter.fetch_add(1, SeqCst);
                    let Some(c) = handle.get().and_then(WeakCache::upgrade) else {
                        return;
                    };
                    if k >= 100 {
                        return;
                    }
                    // Everything on the key being reported, and on others.
                    let _ = (
                        c.get(&k),
                        c.contains_key(&k),
                        c.entry_count(),
                        c.get(&(k + 1)),
                    );
                    c.insert(k + 100, v);
                    c.remove(&(k + 200));
                    if cause == RemovalCause::Replaced && v < 1000 {
                        c.insert(k, v + 1000); // replaces what the caller just wrote
                    }
                    if cause == RemovalCause::Expired && k == 50 {
                        c.invalidate_all();
                    }
                })
                .build();
            weak.set(c.downgrade()).unwrap();

            // On this thread.
            c.insert(1, 1);
            // Replaced(1) -> insert(1, 1001), which replaces 2: Replaced(2) -> insert(1, 1002),
            // which replaces 1001: Replaced(1001), which writes nothing back to key 1.
            c.insert(1, 2);
            assert_eq!(c.get(&1), Some(1002));
            // Each notification for key 1 copied its value to key 101; 1001 came last.
            assert_eq!(c.get(&101), Some(1001));
            c.insert(201, 0);
            assert_eq!(c.remove(&1), Some(1002)); // Explicit -> removes 201
            assert_eq!(c.get(&201), None);

            // On the task.
            for k in 10..20 {
                c.insert(k, k);
            }
            advance(SEC + 100 * MS).await;
            // 8 calls on this thread so far; now keys 10..20 and 101 expired.
            assert_eq!(calls.load(SeqCst), 8 + 11);
            assert_eq!(c.get(&110), Some(10), "written by the listener on the task");
            c.insert(50, 50);
            advance(SEC + 100 * MS).await;
            assert_eq!(c.get(&150), None, "hidden by the listener's invalidate_all");
            assert_eq!(c.entry_count(), 0, "and swept");
            let weak = c.downgrade();
            drop(c);
            settle().await;
            assert!(weak.upgrade().is_none());
            assert_eq!(alive_tasks(), 0);
        })
    });

    // The same with real threads: writers and the task call back in at the same time.
    within_limit("reentrant listener, threads", || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let weak: Arc<OnceLock<WeakCache<u64, u64>>> = Arc::default();
        let handle = Arc::clone(&weak);
        let c: Cache<u64, u64> = Cache::builder()
            .time_to_live(MS)
            .tick(MS)
            .eviction_listener(move |k, v, _| {
                if let Some(c) = handle.get().and_then(WeakCache::upgrade) {
                    let _ = (c.get(&k), c.entry_count());
                    if k < 64 {
                        c.insert(k + 64, v);
                        c.remove(&((k + 1) % 64));
                    }
                }
            })
            .build_on(rt.handle());
        weak.set(c.downgrade()).unwrap();
        let writers: Vec<_> = (0..2u64)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        c.insert((i * 7 + t) % 64, i);
                        if i % 3 == 0 {
                            c.remove(&((i + t) % 64));
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        wait_until_blocking(LIMIT, "everything to expire", || c.entry_count() == 0);
        let base = rt.metrics().num_alive_tasks() - 1;
        drop(c);
        wait_until_blocking(LIMIT, "the task to end", || {
            rt.metrics().num_alive_tasks() == base
        });
    });
}

/// The only strong handle left lives in a `Mutex<Option<Cache>>` the listener owns, and the
/// listener drops it while it runs. Whoever called the listener still holds the cache, so it
/// is freed when that call returns: no panic, no deadlock, the task ends, values are dropped.
#[test]
fn the_last_handle_dropped_inside_a_listener() {
    type Stash = Arc<Mutex<Option<Cache<u64, Arc<Counted>>>>>;
    fn cache(stash: &Stash, calls: &Arc<AtomicUsize>) -> Cache<u64, Arc<Counted>> {
        let (stash, calls) = (Arc::clone(stash), Arc::clone(calls));
        Cache::builder()
            .time_to_live(SEC)
            .tick(100 * MS)
            .eviction_listener(move |_, _, _| {
                calls.fetch_add(1, SeqCst);
                // Dropped while the stash's lock is held, the strongest test.
                *stash.lock().unwrap() = None;
            })
            .build()
    }

    // On the expiry task.
    within_limit("last handle dropped by the task's listener", || {
        let panics = panics_on_this_thread();
        paused().block_on(async {
            let drops = Arc::new(AtomicUsize::new(0));
            let (stash, calls) = (Stash::default(), Arc::default());
            let c = cache(&stash, &calls);
            settle().await;
            assert_eq!(alive_tasks(), 1);
            for k in 0..10 {
                c.insert(k, Counted::new(k, &drops));
                c.insert_with_ttl(100 + k, Counted::new(k, &drops), YEAR);
            }
            let weak = c.downgrade();
            *stash.lock().unwrap() = Some(c); // the user lets go: only the stash holds it
            settle().await;
            assert_eq!(alive_tasks(), 1, "the stash keeps the cache alive");
            advance(SEC + 100 * MS).await;
            assert!(calls.load(SeqCst) >= 1);
            assert!(
                weak.upgrade().is_none(),
                "freed once the listener's caller returned"
            );
            assert_eq!(alive_tasks(), 0, "the task ended");
            assert_eq!(
                drops.load(SeqCst),
                20,
                "reported and unreported values dropped"
            );
            assert_eq!(
                panics_on_this_thread(),
                panics,
                "a panic, on the task maybe"
            );
        })
    });

    // On the thread that removes: it holds only a temporary handle from a `WeakCache`.
    within_limit("last handle dropped by a caller's listener", || {
        let panics = panics_on_this_thread();
        paused().block_on(async {
            let drops = Arc::new(AtomicUsize::new(0));
            let (stash, calls) = (Stash::default(), Arc::default());
            let c = cache(&stash, &calls);
            settle().await;
            c.insert(1, Counted::new(1, &drops));
            c.insert(2, Counted::new(2, &drops));
            let weak = c.downgrade();
            *stash.lock().unwrap() = Some(c);
            let removed = weak.upgrade().unwrap().remove(&1);
            assert_eq!(removed.map(|v| v.id), Some(1));
            assert_eq!(calls.load(SeqCst), 1);
            assert!(weak.upgrade().is_none());
            settle().await;
            assert_eq!(alive_tasks(), 0, "the task ended");
            assert_eq!(drops.load(SeqCst), 2);
            assert_eq!(
                panics_on_this_thread(),
                panics,
                "a panic, on the task maybe"
            );
        })
    });
}

// ---- Runtimes ----------------------------------------------------------------------------

#[test]
fn build_on_a_runtime_without_timers_panics_naming_the_fix() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let err = std::panic::catch_unwind(|| Cache::<u64, u64>::builder().build_on(rt.handle()))
        .unwrap_err();
    let msg = message(err);
    assert!(msg.contains("enable_time"), "{msg}");
    assert_eq!(rt.metrics().num_alive_tasks(), 0, "no task was spawned");
}

/// With its runtime gone the cache has no task: reads stay exact, the calling thread still
/// reports what it removes or replaces, loads work on any executor, nothing queues, and
/// dropping the last handle frees everything. Expired and invalidated entries are counted
/// until then, since nobody sweeps them.
#[test]
fn after_its_runtime_shut_down_a_cache_reads_exactly_and_reports_on_the_caller() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let c: Cache<u64, Arc<Counted>> = Cache::builder()
        .time_to_live(50 * MS)
        .tick(10 * MS)
        .eviction_listener(move |k, v: Arc<Counted>, cause| {
            sink.lock().unwrap().push((k, v.id, cause))
        })
        .build_on(rt.handle());
    // The task must have started: see `a_runtime_shut_down_before_the_task_first_ran_...`.
    rt.block_on(settle());
    drop(rt);
    assert!(c.__internals().task_closed);

    c.insert(1, Counted::new(1, &drops));
    c.insert(2, Counted::new(2, &drops));
    assert_eq!(c.get(&1).map(|v| v.id), Some(1));
    std::thread::sleep(60 * MS);
    assert!(
        c.get(&1).is_none() && !c.contains_key(&2),
        "exact without a task"
    );
    assert_eq!(c.entry_count(), 2, "nobody removes expired entries");
    c.insert(1, Counted::new(3, &drops)); // over an expired entry
    c.insert(1, Counted::new(4, &drops)); // over a live one
    assert_eq!(c.remove(&1).map(|v| v.id), Some(4));
    assert_eq!(
        std::mem::take(&mut *log.lock().unwrap()),
        vec![
            (1, 1, RemovalCause::Expired),
            (1, 3, RemovalCause::Replaced),
            (1, 4, RemovalCause::Explicit)
        ]
    );
    let other = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let loaded = other.block_on(c.get_with(5, async { Counted::new(5, &drops) }));
    assert_eq!((loaded.id, c.get(&5).map(|v| v.id)), (5, Some(5)));
    drop(loaded);
    c.invalidate_all();
    assert!(c.get(&5).is_none());
    assert_eq!(c.entry_count(), 2, "hidden, not swept");
    assert_eq!(
        c.__internals().records,
        0,
        "nothing queued for a task that is gone"
    );
    drop(c);
    assert_eq!(drops.load(SeqCst), 5);
    assert!(
        log.lock().unwrap().is_empty(),
        "dropped entries are not reported"
    );
}

/// A runtime that shuts down before the expiry task was first polled drops the task's future
/// unstarted, so the guard that closes the hand-off (created inside the task's body) never
/// runs: `task_closed` stays false, and every later write queues a record that nobody will
/// drain, one per distinct key, until the last handle is dropped. On a multi-thread runtime
/// this is a race with the first poll (`lifecycle::using_and_dropping_a_cache_after_its_
/// runtime_shut_down` asserts `task_closed` right after such a shutdown, and can flake).
#[test]
fn a_runtime_shut_down_before_the_task_first_ran_still_closes_the_hand_off() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c: Cache<u64, u64> = Cache::builder()
        .time_to_live(60 * SEC)
        .build_on(rt.handle());
    drop(rt); // the task never ran
    for k in 0..10_000 {
        c.insert(k, k);
    }
    let internals = c.__internals();
    assert!(internals.task_closed, "{internals:?}");
    assert_eq!(
        internals.records, 0,
        "records queued for a task that is gone"
    );
}
