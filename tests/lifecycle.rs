//! One task per cache, and it ends with the last handle: on current-thread and multi-thread
//! runtimes, with clones in other tasks, after runtime shutdown, and outside any runtime.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{alive_tasks, settle, wait_until, wait_until_blocking, Counted};
use ebb_cache::{BuildError, Cache};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(start_paused = true)]
async fn one_task_per_cache_however_many_entries() {
    settle().await;
    let base = alive_tasks();
    let c: Cache<u64, u64> = Cache::builder()
        .time_to_live(Duration::from_secs(60))
        .build();
    assert_eq!(alive_tasks(), base + 1);
    for k in 0..10_000 {
        c.insert(k, k);
    }
    // The task first runs now and files the 10,000 entries in batches, yielding between.
    for _ in 0..100 {
        if c.__internals().nodes == 10_000 {
            break;
        }
        settle().await;
    }
    assert_eq!(c.__internals().nodes, 10_000);
    assert_eq!(alive_tasks(), base + 1);
    drop(c);
    settle().await;
    assert_eq!(alive_tasks(), base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_ends_with_the_last_handle_on_a_multi_thread_runtime() {
    let base = alive_tasks();
    let c: Cache<u64, u64> = Cache::builder()
        .time_to_live(Duration::from_secs(60))
        .build();
    wait_until(LIMIT, "the task to start", || alive_tasks() == base + 1).await;
    for k in 0..10_000 {
        c.insert(k, k);
    }
    let clones: Vec<_> = (0..8).map(|_| c.clone()).collect();
    drop(c);
    assert_eq!(alive_tasks(), base + 1, "clones keep it alive");
    drop(clones);
    wait_until(LIMIT, "the task to exit", || alive_tasks() == base).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_in_spawned_tasks_keep_the_cache_alive_until_they_finish() {
    let base = alive_tasks();
    let c: Cache<u64, u64> = Cache::builder().build();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let held = c.clone();
    let worker = tokio::spawn(async move {
        rx.await.unwrap();
        held.insert(1, 1);
        held.get(&1)
    });
    drop(c);
    // The cache's task and the worker are both alive: the worker's clone keeps the cache.
    wait_until(LIMIT, "cache task + worker", || alive_tasks() == base + 2).await;
    tx.send(()).unwrap();
    assert_eq!(worker.await.unwrap(), Some(1));
    wait_until(LIMIT, "the task to exit", || alive_tasks() == base).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_is_dropped_once_the_last_handle_is_gone() {
    let drops = Arc::new(AtomicUsize::new(0));
    let base = alive_tasks();
    let c: Cache<u64, Arc<Counted>> = Cache::builder()
        .time_to_live(Duration::from_millis(50))
        .tick(Duration::from_millis(5))
        .build();
    let mut made = 0;
    for k in 0..2_000u64 {
        c.insert(k % 500, Counted::new(k, &drops)); // overwrites drop the old value
        made += 1;
        if k % 7 == 0 {
            c.remove(&(k % 500));
        }
        if k % 3 == 0 {
            c.insert_with_ttl(
                10_000 + k,
                Counted::new(k, &drops),
                Duration::from_secs(3600),
            );
            made += 1;
        }
    }
    // Let some expire through the task, keep the rest.
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(c);
    wait_until(LIMIT, "the task to exit", || alive_tasks() == base).await;
    wait_until(LIMIT, "every value dropped", || {
        drops.load(Ordering::SeqCst) == made
    })
    .await;
}

#[test]
fn many_build_insert_get_drop_cycles_leave_nothing_behind() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = rt.metrics().num_alive_tasks();
    rt.block_on(async {
        for i in 0..100_000u64 {
            let c: Cache<u64, u64> = Cache::builder()
                .time_to_live(Duration::from_secs(30))
                .build();
            c.insert(i, i);
            assert_eq!(c.get(&i), Some(i));
        }
    });
    wait_until_blocking(LIMIT, "all tasks to exit", || {
        rt.metrics().num_alive_tasks() == base
    });
}

#[test]
fn build_outside_a_runtime_works_and_its_task_starts_on_the_first_write_inside_one() {
    let cache = Cache::<u64, u64>::builder()
        .time_to_live(Duration::from_millis(20))
        .tick(Duration::from_millis(5))
        .try_build()
        .expect("no runtime needed");
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), Some(1));
    assert!(!cache.__internals().task_running, "no runtime, no task");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        cache.insert(2, 2);
        assert!(cache.__internals().task_running);
        // Both entries, the one written before any task, expire with no calls.
        wait_until(Duration::from_secs(10), "both entries to expire", || {
            cache.entry_count() == 0
        })
        .await;
    });
    assert_eq!(cache.__internals().tasks_started, 1);
}

#[test]
fn build_on_works_from_a_plain_thread() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let handle = rt.handle().clone();
    let c = std::thread::spawn(move || {
        let c: Cache<u64, u64> = Cache::builder()
            .time_to_live(Duration::from_millis(20))
            .tick(Duration::from_millis(5))
            .build_on(&handle);
        c.insert(1, 1);
        c
    })
    .join()
    .unwrap();
    assert_eq!(c.get(&1), Some(1));
    wait_until_blocking(LIMIT, "expiry by the task on the runtime", || {
        c.entry_count() == 0
    });
}

#[test]
fn a_runtime_without_timers_is_an_error() {
    // A runtime with timers first, on this thread: what its check found is not taken for
    // the next runtime's.
    let timed = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for _ in 0..2 {
        let _guard = timed.enter();
        assert!(Cache::<u64, u64>::builder().try_build().is_ok());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = rt.enter();
    assert_eq!(
        Cache::<u64, u64>::builder().try_build().unwrap_err(),
        BuildError::TimersDisabled
    );
    let err = std::panic::catch_unwind(|| Cache::<u64, u64>::builder().build()).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("enable_time"), "{msg}");
}

#[test]
fn using_and_dropping_a_cache_after_its_runtime_shut_down() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let c: Cache<u64, Arc<Counted>> = Cache::builder()
        .time_to_live(Duration::from_secs(1))
        .build_on(rt.handle());
    c.insert(1, Counted::new(1, &drops));
    drop(rt);
    assert!(c.__internals().task_closed);
    // Reads stay exact; writes work and queue nothing for a task that is gone.
    assert_eq!(c.get(&1).map(|v| v.id), Some(1));
    for k in 0..1000 {
        c.insert(k, Counted::new(k, &drops));
        c.remove(&(k / 2));
    }
    assert_eq!(c.__internals().records, 0);
    let left = c.entry_count() as usize;
    drop(c);
    assert_eq!(drops.load(Ordering::SeqCst), 1001, "{left} left at drop");
}

#[tokio::test(start_paused = true)]
async fn invalid_options_are_errors() {
    let b = || Cache::<u64, u64>::builder();
    assert_eq!(
        b().tick(Duration::ZERO).try_build().unwrap_err(),
        BuildError::TickOutOfRange(Duration::ZERO)
    );
    assert!(b().tick(Duration::from_micros(999)).try_build().is_err());
    assert!(b().tick(Duration::from_secs(61)).try_build().is_err());
    assert!(b().tick(Duration::from_secs(60)).try_build().is_ok());
    for j in [f64::NAN, -0.1, 1.0, 1.5] {
        assert!(matches!(
            b().expiry_jitter(j).try_build().unwrap_err(),
            BuildError::InvalidJitter(_)
        ));
    }
    assert!(b().expiry_jitter(0.99).try_build().is_ok());
}

#[tokio::test(start_paused = true)]
async fn the_cache_is_send_sync_clone_debug() {
    fn check<T: Send + Sync + Clone + std::fmt::Debug>(_: &T) {}
    let c: Cache<String, Vec<u8>> = Cache::builder().name("named").build();
    check(&c);
    assert!(format!("{c:?}").contains("named"));
    assert_eq!(c.name(), "named");
}

/// The file and line a panic reported, caught on this thread.
fn panic_location(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let this_thread = std::thread::current().id();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Other tests of this binary may panic at the same time, on their own threads.
        if std::thread::current().id() != this_thread {
            return;
        }
        if let Some(location) = info.location() {
            *sink.lock().unwrap() = Some(format!("{}:{}", location.file(), location.line()));
        }
    }));
    let caught = std::panic::catch_unwind(f);
    std::panic::set_hook(previous);
    assert!(caught.is_err(), "expected a panic");
    let location = seen.lock().unwrap().clone();
    location.unwrap_or_default()
}

#[test]
fn every_builder_panic_points_at_the_callers_line() {
    let no_timers = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let cache = Cache::<u64, u64>::builder().build(); // no runtime here: no task yet
    let first_write = panic_location(std::panic::AssertUnwindSafe(|| {
        no_timers.block_on(async { cache.insert(1, 1) })
    }));
    assert!(
        first_write.starts_with("tests/lifecycle.rs:"),
        "{first_write}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let handle = rt.handle().clone();
    let bad_tick = panic_location(move || {
        drop(
            Cache::<u64, u64>::builder()
                .tick(Duration::ZERO)
                .build_on(&handle),
        )
    });
    assert!(bad_tick.starts_with("tests/lifecycle.rs:"), "{bad_tick}");
    let inside = panic_location(|| {
        rt.block_on(async { drop(Cache::<u64, u64>::builder().tick(Duration::ZERO).build()) })
    });
    assert!(inside.starts_with("tests/lifecycle.rs:"), "{inside}");
}

/// Writes from other threads racing the expiry task's first run (when it opens the hand-off)
/// are all filed: every entry leaves on time with no reads. Many rounds: the race is narrow.
#[test]
fn writes_racing_the_first_run_of_the_task_all_leave_on_time() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..200u64 {
        let c: Cache<u64, u64> = Cache::builder()
            .time_to_live(Duration::from_millis(3))
            .tick(Duration::from_millis(1))
            .build_on(rt.handle());
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let c = c.clone();
                s.spawn(move || (0..64).for_each(|k| c.insert(t << 32 | k, round)));
            }
        });
        wait_until_blocking(LIMIT, "every entry removed with no reads", || {
            c.entry_count() == 0
        });
    }
}
