//! A cache that lives outside any one runtime: in a `static` shared by several
//! `#[tokio::test]`s, across a runtime that shuts down with entries live, and `closed()`.
//!
//! Real time with bounded polling throughout: paused clocks are per runtime, so a cache
//! shared by runtimes cannot run on them.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use common::wait_until;
use ebb_cache::{Cache, RemovalCause};

const MS: Duration = Duration::from_millis(1);
const LIMIT: Duration = Duration::from_secs(10);

/// Every removal the static cache reported: key -> (cause, how many times).
static REPORTED: LazyLock<Mutex<HashMap<u64, (RemovalCause, usize)>>> =
    LazyLock::new(Mutex::default);

/// Keys written to the static cache so far, by any test.
static WRITTEN: LazyLock<Mutex<Vec<u64>>> = LazyLock::new(Mutex::default);

/// Built by whichever test touches it first, outside that test's runtime's control: its task
/// starts, and restarts, on the runtime of whichever test writes.
static CACHE: LazyLock<Cache<u64, u64>> = LazyLock::new(|| {
    Cache::builder()
        .time_to_live(50 * MS)
        .tick(5 * MS)
        .eviction_listener(|key, _, cause| {
            let mut reported = REPORTED.lock().unwrap();
            let seen = reported.entry(key).or_insert((cause, 0));
            seen.1 += 1;
        })
        .build()
});

/// Write 200 keys of this test's own, wait until each was reported expired exactly once, and
/// until every key written before this test began was too (some by tests whose runtime has
/// shut down since).
async fn static_cache_round(test: u64) {
    let earlier = WRITTEN.lock().unwrap().clone();
    let mine: Vec<u64> = (0..200).map(|i| test * 1_000 + i).collect();
    for &key in &mine {
        CACHE.insert(key, key);
    }
    WRITTEN.lock().unwrap().extend(&mine);
    let internals = CACHE.__internals();
    assert!(internals.task_running, "{internals:?}");
    assert!(internals.tasks_alive <= 1, "{internals:?}");
    wait_until(
        LIMIT,
        "this test's and earlier tests' keys to expire",
        || {
            // Polling the count from this runtime restarts the task here if the runtime
            // that ran it (another test's) has shut down meanwhile.
            let _ = CACHE.entry_count();
            assert!(CACHE.__internals().tasks_alive <= 1);
            let reported = REPORTED.lock().unwrap();
            mine.iter()
                .chain(&earlier)
                .all(|key| reported.contains_key(key))
        },
    )
    .await;
    let reported = REPORTED.lock().unwrap();
    for key in mine.iter().chain(&earlier) {
        assert_eq!(reported[key], (RemovalCause::Expired, 1), "key {key}");
    }
}

#[tokio::test]
async fn a_static_cache_expires_entries_in_a_first_test() {
    static_cache_round(1).await;
}

#[tokio::test]
async fn a_static_cache_expires_entries_in_a_second_test() {
    static_cache_round(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_cache_expires_entries_in_a_multi_thread_test() {
    static_cache_round(3).await;
}

#[tokio::test]
async fn a_static_cache_keeps_entries_a_test_left_behind() {
    // Written and left: the test (and its runtime) ends before they expire, and a later
    // test's runtime, or this one's task while it lasts, removes them.
    let keys: Vec<u64> = (0..200).map(|i| 4_000 + i).collect();
    for &key in &keys {
        CACHE.insert(key, key);
    }
    WRITTEN.lock().unwrap().extend(&keys);
    assert!(CACHE.__internals().tasks_alive <= 1);
}

#[test]
fn entries_live_when_their_runtime_shuts_down_expire_on_the_next_one() {
    const N: u64 = 10_000;
    let reported: Arc<Mutex<HashMap<u64, (RemovalCause, usize)>>> = Arc::default();
    let sink = Arc::clone(&reported);
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let cache: Cache<u64, u64> = Cache::builder()
        .time_to_live(1_000 * MS)
        .tick(5 * MS)
        .max_capacity(100_000)
        .weigher(|_, v| (*v % 3) as u32 + 1)
        .eviction_listener(move |key, _, cause| {
            let mut reported = sink.lock().unwrap();
            reported.entry(key).or_insert((cause, 0)).1 += 1;
        })
        .build_on(first.handle());
    for key in 0..N {
        cache.insert(key, key);
    }
    // Let the first task file them, then take its runtime away with all of them live.
    first.block_on(wait_until(
        LIMIT,
        "the first task to file the entries",
        || cache.__internals().records == 0,
    ));
    // Each entry is live here or was reported already (a slow machine may reach deadlines).
    let live = cache.entry_count();
    assert_eq!(live + reported.lock().unwrap().len() as u64, N);
    assert!(
        live > N / 2,
        "only {live} entries live when the runtime went"
    );
    drop(first);
    let after = cache.__internals();
    assert!(!after.task_running && after.tasks_alive == 0, "{after:?}");
    // A new runtime; one write there starts a task that takes over every entry.
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    second.block_on(async {
        cache.insert(N, N);
        assert_eq!(cache.__internals().tasks_started, 2);
        wait_until(LIMIT, "every entry to be removed and reported", || {
            cache.entry_count() == 0 && reported.lock().unwrap().len() == N as usize + 1
        })
        .await;
    });
    let reported = reported.lock().unwrap();
    for key in 0..=N {
        assert_eq!(reported[&key], (RemovalCause::Expired, 1), "key {key}");
    }
    let books = cache.__internals();
    assert_eq!((books.nodes, books.records), (0, 0), "{books:?}");
    assert_eq!(
        (books.policy_weight, books.policy_records),
        (Some(0), Some(0)),
        "{books:?}"
    );
    // One id per entry in each task's epoch, and a little slack for the pools.
    assert!(
        u64::from(books.node_ids) <= 2 * (N + 1) + 4_096,
        "{books:?}"
    );
    assert_eq!(books.tasks_alive, 1);
}

/// `closed()` on a cache built on `rt`: pending while a handle lives, resolved once the last
/// is dropped and the task has exited.
fn closed_resolves_after_the_last_handle(rt: tokio::runtime::Runtime) {
    rt.block_on(async {
        let cache: Cache<u64, u64> = Cache::builder().time_to_live(MS * 50).tick(MS).build();
        cache.insert(1, 1);
        let closed = cache.closed();
        tokio::pin!(closed);
        let early = tokio::time::timeout(50 * MS, closed.as_mut()).await;
        assert!(early.is_err(), "closed() resolved while a handle was alive");
        let clone = cache.clone();
        drop(cache);
        let still = tokio::time::timeout(20 * MS, closed.as_mut()).await;
        assert!(still.is_err(), "closed() resolved while a clone was alive");
        drop(clone);
        tokio::time::timeout(LIMIT, closed)
            .await
            .expect("closed() did not resolve after the last handle was dropped");
    });
}

#[test]
fn closed_resolves_after_the_last_handle_on_a_current_thread_runtime() {
    closed_resolves_after_the_last_handle(
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap(),
    );
}

#[test]
fn closed_resolves_after_the_last_handle_on_a_multi_thread_runtime() {
    closed_resolves_after_the_last_handle(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap(),
    );
}

#[test]
fn closed_does_not_resolve_when_only_the_runtime_dies() {
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let cache: Cache<u64, u64> = Cache::builder().tick(MS).build_on(first.handle());
    let closed = cache.closed();
    drop(first); // the task dies with its runtime; the handle lives
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    second.block_on(async {
        tokio::pin!(closed);
        let early = tokio::time::timeout(50 * MS, closed.as_mut()).await;
        assert!(early.is_err(), "closed() resolved though a handle is alive");
        drop(cache);
        tokio::time::timeout(LIMIT, closed)
            .await
            .expect("closed() did not resolve once the last handle was gone");
    });
}

#[test]
fn two_runtimes_writing_as_the_old_task_dies_start_one_task() {
    for _ in 0..50 {
        let dying = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let cache: Cache<u64, u64> = Cache::builder()
            .time_to_live(10 * MS)
            .tick(MS)
            .build_on(dying.handle());
        let started = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let (cache, started) = (cache.clone(), Arc::clone(&started));
                s.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        for i in 0..200 {
                            cache.insert(t * 1_000 + i, i);
                            assert!(cache.__internals().tasks_alive <= 1);
                            tokio::task::yield_now().await;
                        }
                    });
                    started.fetch_add(1, Ordering::SeqCst);
                });
            }
            drop(dying);
        });
        let internals = cache.__internals();
        assert!(internals.tasks_alive <= 1, "{internals:?}");
        // The builder's task, then at most one per runtime that wrote after it died.
        assert!(internals.tasks_started <= 3, "{internals:?}");
    }
}
