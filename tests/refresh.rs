//! A cache that owns its loader (`LoadingCache`), and refresh-ahead driven by the expiry task:
//! hot keys never wait, cold keys are not reloaded, writes win over reloads, and reloads that
//! fail or hang cost nothing but their own value. All on paused time.

mod common;

use std::collections::HashMap;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{advance, alive_tasks, settle, Act, Source};
use ebb_cache::{BuildError, Cache, LoadingCache, RefreshError, RemovalCause};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// Advance paused time by `d` one tick (100 ms) at a time, as a running service's clock
/// goes: each tick's reloads start, and their loaders' timers begin, at that tick.
async fn steps(d: Duration) {
    let mut left = d;
    while !left.is_zero() {
        let step = left.min(100 * MS);
        advance(step).await;
        left -= step;
    }
}

/// Every removal the listener heard.
type Log = Arc<Mutex<Vec<(u64, u64, RemovalCause)>>>;

/// A loading cache over `source` with a TTL of 10 s, refresh at 8 s, a 100 ms tick, stats,
/// and a listener that logs every removal.
fn cache(source: &Source) -> (LoadingCache<u64, u64, String>, Log) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let cache = Cache::<u64, u64>::builder()
        .time_to_live(10 * SEC)
        .tick(100 * MS)
        .record_stats()
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .loader(source.loader())
        .refresh_after(8 * SEC)
        .load_timeout(SEC)
        .reload_backoff(500 * MS)
        .build();
    (cache, log)
}

#[tokio::test(start_paused = true)]
async fn a_hot_key_is_never_missed_and_reloads_about_once_per_refresh_interval() {
    let source = Source::new(|_| Act::After(20 * MS));
    let (c, log) = cache(&source);
    assert_eq!(c.fetch(1).await.unwrap(), 1001);
    let mut seen = Vec::new();
    // Read every 100 ms for 10 minutes of virtual time.
    for _ in 0..6000 {
        advance(100 * MS).await;
        let value = c.get(&1);
        assert!(value.is_some(), "a hot key was missed");
        seen.push(value.unwrap());
    }
    seen.dedup();
    // A refresh every ~8.1 s (8 s, up to a tick, plus the 20 ms load): 600 s / 8.1 s ≈ 74.
    let reloads = source.calls() - 1;
    assert!((70..=75).contains(&reloads), "{reloads} reloads in 600 s");
    assert_eq!(seen.len(), reloads + 1, "each reload gave a new value");
    let s = c.stats();
    assert_eq!(
        (
            s.reloads_started,
            s.reloads_succeeded,
            s.reloads_failed,
            s.reloads_timed_out
        ),
        (reloads as u64, reloads as u64, 0, 0)
    );
    assert_eq!(
        (s.misses, s.load_successes),
        (1, 1),
        "no reader ever waited for a load"
    );
    // Every replaced value reported once, as replaced; nothing expired.
    let log = log.lock().unwrap();
    assert_eq!(log.len(), reloads);
    assert!(log
        .iter()
        .all(|(_, _, cause)| *cause == RemovalCause::Replaced));
    let mut values: Vec<u64> = log.iter().map(|(_, v, _)| *v).collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), reloads, "a value was reported twice");
}

#[tokio::test(start_paused = true)]
async fn an_entry_read_at_least_once_per_refresh_interval_is_never_missed() {
    // Reads at random gaps of 10 ms to 8 s (the refresh interval), for 10 minutes, under
    // several seeds; the source answers in 20 ms.
    for seed in 1..=8u64 {
        let source = Source::new(|_| Act::After(20 * MS));
        let (c, _log) = cache(&source);
        c.fetch(1).await.unwrap();
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut elapsed = Duration::ZERO;
        while elapsed < 600 * SEC {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let gap = Duration::from_millis(10 + x % 7_991);
            steps(gap).await;
            elapsed += gap;
            assert!(
                c.get(&1).is_some(),
                "seed {seed}: missed {elapsed:?} in, after a gap of {gap:?}"
            );
        }
        assert_eq!(c.stats().misses, 1, "seed {seed}");
    }
}

#[tokio::test(start_paused = true)]
async fn fetch_hits_count_as_reads_for_refresh() {
    let source = Source::new(|_| Act::After(MS));
    let (c, _log) = cache(&source);
    assert_eq!(c.fetch(1).await.unwrap(), 1001);
    for _ in 0..300 {
        advance(100 * MS).await;
        assert!(c.fetch(1).await.is_ok());
    }
    // 30 s: reloads at about 8, 16 and 24 s, and the one load.
    assert_eq!(source.calls(), 4);
    assert_eq!(c.stats().misses, 1);
}

#[tokio::test(start_paused = true)]
async fn a_key_read_once_just_after_its_refresh_time_is_reloaded_before_its_ttl() {
    let source = Source::new(|_| Act::After(20 * MS));
    let (c, log) = cache(&source);
    c.fetch(1).await.unwrap();
    advance(8 * SEC + 100 * MS).await;
    assert_eq!(source.calls(), 1, "not read yet: not reloaded");
    assert_eq!(c.get(&1), Some(1001)); // the one read, after the refresh time
    steps(SEC + 800 * MS).await; // t = 9.9 s
    assert_eq!(source.calls(), 2, "reloaded before its TTL");
    assert_eq!(c.get(&1), Some(1002));
    advance(SEC).await; // t = 10.9 s: past the first TTL, the reloaded value is live
    assert!(c.contains_key(&1));
    assert_eq!(
        log.lock().unwrap().as_slice(),
        [(1, 1001, RemovalCause::Replaced)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_not_read_after_its_write_is_never_reloaded() {
    let source = Source::new(|_| Act::After(MS));
    let (c, log) = cache(&source);
    c.fetch(1).await.unwrap();
    c.insert(2, 2);
    advance(30 * SEC).await;
    assert_eq!(source.calls(), 1);
    assert_eq!(c.stats().reloads_started, 0);
    assert_eq!(c.entry_count(), 0, "both expired at their TTL");
    let mut log = log.lock().unwrap().clone();
    log.sort_by_key(|(k, _, _)| *k);
    assert_eq!(
        log,
        [
            (1, 1001, RemovalCause::Expired),
            (2, 2, RemovalCause::Expired)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_write_during_a_reload_wins() {
    // The reload takes 1 s; a write lands half way.
    let source = Source::new(|n| Act::After(if n == 1 { MS } else { SEC }));
    let (c, log) = cache(&source);
    c.fetch(1).await.unwrap();
    advance(SEC).await;
    assert_eq!(c.get(&1), Some(1001)); // read: due for a reload at 8 s
    advance(7 * SEC + 500 * MS).await; // t = 8.5 s: the reload runs
    assert_eq!(source.calls(), 2);
    c.insert(1, 7);
    advance(SEC).await; // t = 9.5 s: the reload ended
    assert_eq!(c.stats().reloads_succeeded, 1);
    assert_eq!(c.get(&1), Some(7), "the reload overwrote a write");
    assert_eq!(
        log.lock().unwrap().as_slice(),
        [(1, 1001, RemovalCause::Replaced)],
        "only the write replaced a value"
    );
    // The write's own TTL: it lives until 18.5 s (reloaded on the way, as it was read).
    advance(8 * SEC).await; // t = 17.5 s
    assert!(c.contains_key(&1));
}

#[tokio::test(start_paused = true)]
async fn a_remove_or_invalidate_all_during_a_reload_wins() {
    let source = Source::new(|n| Act::After(if n <= 2 { MS } else { SEC }));
    let (c, _log) = cache(&source);
    c.fetch(1).await.unwrap();
    c.fetch(2).await.unwrap();
    advance(SEC).await;
    c.get(&1);
    c.get(&2);
    advance(7 * SEC + 500 * MS).await; // both reloads run
    assert_eq!(source.calls(), 4);
    c.remove(&1);
    c.invalidate_all();
    advance(SEC).await;
    assert_eq!(c.stats().reloads_succeeded, 2);
    assert_eq!((c.get(&1), c.get(&2)), (None, None));
    assert_eq!(c.entry_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_hangs_stops_neither_expiry_nor_the_next_refresh() {
    // The first reload hangs; the next succeeds.
    let source = Source::new(|n| if n == 2 { Act::Hang } else { Act::After(MS) });
    let (c, _log) = cache(&source);
    c.fetch(1).await.unwrap();
    for _ in 0..99 {
        advance(100 * MS).await;
        assert!(
            c.get(&1).is_some(),
            "missed at {:?}",
            tokio::time::Instant::now()
        );
    }
    // t = 9.9 s: the hung reload (from 8.1 s, the first tick past its refresh time) was
    // given up at 9.1 s, and after the 500 ms backoff the next one ran.
    let s = c.stats();
    assert_eq!((s.reloads_timed_out, s.reloads_succeeded), (1, 1));
    assert_eq!(c.get(&1), Some(1003));

    // Every reload hangs: the TTL still ends the entry, on time, with no calls.
    let source = Source::new(|n| if n == 1 { Act::After(MS) } else { Act::Hang });
    let (c, log) = cache(&source);
    c.fetch(1).await.unwrap();
    for _ in 0..99 {
        advance(100 * MS).await;
        assert!(c.get(&1).is_some());
    }
    advance(200 * MS).await; // t = 10.1 s
    assert_eq!(c.get(&1), None);
    assert_eq!(c.entry_count(), 0);
    assert_eq!(
        log.lock().unwrap().as_slice(),
        [(1, 1001, RemovalCause::Expired)]
    );
    assert!(c.stats().reloads_timed_out >= 1);
    assert_eq!(c.stats().reloads_succeeded, 0);
}

#[tokio::test(start_paused = true)]
async fn failed_and_panicking_reloads_keep_the_value_and_back_off() {
    // Reloads fail (2), panic (3), then succeed.
    let source = Source::new(|n| match n {
        2 => Act::Fail(MS),
        3 => Act::Panic,
        _ => Act::After(MS),
    });
    let (c, log) = cache(&source);
    c.fetch(1).await.unwrap();
    let mut reload_times = Vec::new();
    let mut calls = source.calls();
    for _ in 0..99 {
        advance(100 * MS).await;
        assert!(c.get(&1).is_some());
        if source.calls() != calls {
            calls = source.calls();
            reload_times.push(tokio::time::Instant::now());
        }
    }
    let s = c.stats();
    assert_eq!((s.reloads_failed, s.reloads_succeeded), (2, 1));
    assert_eq!(c.get(&1), Some(1004));
    // Each retry came a backoff (500 ms) or more after the failure before it.
    assert_eq!(reload_times.len(), 3);
    for pair in reload_times.windows(2) {
        assert!(pair[1] - pair[0] >= 500 * MS, "{reload_times:?}");
    }
    assert_eq!(
        log.lock().unwrap().as_slice(),
        [(1, 1001, RemovalCause::Replaced)]
    );
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_keys_due_at_once_never_run_more_than_the_limit() {
    let source = Source::new(|_| Act::After(10 * MS));
    let c: LoadingCache<u64, u64, String> = Cache::builder()
        .time_to_live(60 * SEC)
        .tick(100 * MS)
        .record_stats()
        .loader(source.loader())
        .refresh_after(30 * SEC)
        .max_concurrent_reloads(8)
        .build();
    settle().await;
    let baseline = alive_tasks();
    for k in 0..10_000 {
        c.insert(k, k);
        c.get(&k);
    }
    let mut most_tasks = 0;
    // Slept, not advanced: paused time moves on to each reload's own timer in between.
    for _ in 0..450 {
        tokio::time::sleep(100 * MS).await;
        most_tasks = most_tasks.max(alive_tasks() - baseline);
    }
    // 10,000 reloads of 10 ms, 8 at a time: 12.5 s from 30 s.
    assert_eq!(source.calls(), 10_000);
    assert_eq!(
        source.most_at_once(),
        8,
        "the limit was not reached, or passed"
    );
    assert_eq!(most_tasks, 8, "reload tasks beside the expiry task");
    let s = c.stats();
    assert_eq!((s.reloads_started, s.reloads_succeeded), (10_000, 10_000));
    assert!((0..10_000).all(|k| c.get(&k).is_some()));
    // The reload tasks are short-lived: none is left once the queue is empty.
    assert_eq!(alive_tasks(), baseline);
}

#[tokio::test(start_paused = true)]
async fn a_reloaded_entry_keeps_its_own_ttl() {
    let source = Source::new(|_| Act::After(MS));
    let (c, _log) = cache(&source);
    c.insert_with_ttl(1, 1, 20 * SEC); // longer than the cache's 10 s
    c.insert_with_ttl(2, 2, 5 * SEC); // expires before its refresh time
    advance(SEC).await;
    assert_eq!((c.get(&1), c.get(&2)), (Some(1), Some(2)));
    steps(7 * SEC + 200 * MS).await; // t = 8.2 s: key 1 reloaded at 8.1 s, for 20 s
    assert_eq!(source.calls(), 1, "key 2 expired unreloaded");
    assert_eq!(c.get(&2), None);
    // Not read again: checked, not reloaded, and it lives 20 s from its reload.
    steps(19 * SEC + 800 * MS).await; // t = 28 s
    assert!(c.contains_key(&1), "a reloaded entry lost its own TTL");
    steps(300 * MS).await; // t = 28.3 s
    assert!(!c.contains_key(&1));
    assert_eq!(source.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn explicit_refreshes_are_deduplicated_and_may_be_dropped() {
    let source = Source::new(|_| Act::After(100 * MS));
    let c: LoadingCache<u64, u64, String> = Cache::builder()
        .time_to_live(60 * SEC)
        .loader(source.loader())
        .build();
    c.insert(1, 1);
    let a = c.refresh(1);
    let b = c.refresh(1);
    let (a, b) = tokio::join!(a, b);
    assert_eq!((a.unwrap(), b.unwrap()), (1001, 1001));
    assert_eq!(source.calls(), 1);
    assert_eq!(c.get(&1), Some(1001));
    // Dropped at once: the reload still runs.
    drop(c.refresh(1));
    steps(200 * MS).await;
    assert_eq!(c.get(&1), Some(1002));
    // A fetch of a missing key waits for the refresh running for it.
    let refreshing = c.refresh(2);
    assert_eq!(c.fetch(2).await.unwrap(), 2003);
    assert_eq!(refreshing.await.unwrap(), 2003);
    assert_eq!(source.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_explicit_refresh_reports_the_loaders_error_and_keeps_the_value() {
    let source = Source::new(|n| match n {
        1 => Act::Fail(MS),
        _ => Act::Panic,
    });
    let c: LoadingCache<u64, u64, String> = Cache::builder()
        .record_stats()
        .loader(source.loader())
        .build();
    c.insert(1, 1);
    match c.refresh(1).await {
        Err(RefreshError::Failed(e)) => assert_eq!(*e, "source down (call 1)"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(c.refresh(1).await, Err(RefreshError::NoValue)));
    assert_eq!(c.get(&1), Some(1));
    assert_eq!(c.stats().reloads_failed, 2);
}

#[tokio::test(start_paused = true)]
async fn fetch_loads_once_for_concurrent_callers_and_shares_errors() {
    let source = Source::new(|n| {
        if n == 1 {
            Act::Fail(10 * MS)
        } else {
            Act::After(10 * MS)
        }
    });
    let c: LoadingCache<u64, u64, String> = Cache::builder().loader(source.loader()).build();
    let (a, b) = tokio::join!(c.fetch(5), c.fetch(5));
    assert!(Arc::ptr_eq(&a.unwrap_err(), &b.unwrap_err()));
    let (a, b) = tokio::join!(c.fetch(5), c.fetch(5));
    assert_eq!((a.unwrap(), b.unwrap()), (5002, 5002));
    assert_eq!(source.calls(), 2);
    // The per-call loaders work on a loading cache, through the same registry.
    assert_eq!(c.get_with(6, async { 6 }).await, 6);
}

#[tokio::test(start_paused = true)]
async fn reload_tasks_end_when_the_cache_is_dropped() {
    let source = Source::new(|n| if n == 1 { Act::After(MS) } else { Act::Hang });
    let (c, _log) = cache(&source);
    settle().await;
    let baseline = alive_tasks();
    c.fetch(1).await.unwrap();
    advance(SEC).await;
    c.get(&1);
    advance(7 * SEC + 200 * MS).await; // the reload hangs
    assert_eq!(alive_tasks(), baseline + 1);
    let closed = c.closed();
    drop(c);
    closed.await;
    settle().await;
    assert_eq!(
        alive_tasks(),
        baseline - 1,
        "the expiry task and the reload task ended"
    );
}

#[tokio::test]
async fn refresh_options_are_checked() {
    let build = |after: Duration, ttl: Option<Duration>| {
        let mut b = Cache::<u64, u64>::builder();
        if let Some(ttl) = ttl {
            b = b.time_to_live(ttl);
        }
        b.loader(|k: u64| async move { Ok::<u64, String>(k) })
            .refresh_after(after)
            .try_build()
            .map(|_| ())
    };
    assert_eq!(build(8 * SEC, Some(10 * SEC)), Ok(()));
    assert_eq!(build(8 * SEC, None), Ok(()));
    assert_eq!(
        build(10 * SEC, Some(10 * SEC)),
        Err(BuildError::RefreshNotBeforeTimeToLive {
            refresh_after: 10 * SEC,
            time_to_live: 10 * SEC
        })
    );
    assert_eq!(
        build(Duration::ZERO, None),
        Err(BuildError::ZeroLoadingOption("refresh_after"))
    );
    let zero = Cache::<u64, u64>::builder()
        .loader(|k: u64| async move { Ok::<u64, String>(k) })
        .max_concurrent_reloads(0)
        .try_build();
    assert!(matches!(
        zero,
        Err(BuildError::ZeroLoadingOption("max_concurrent_reloads"))
    ));
    let message = BuildError::RefreshNotBeforeTimeToLive {
        refresh_after: 10 * SEC,
        time_to_live: 10 * SEC,
    }
    .to_string();
    assert!(message.contains("below the TTL"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn refresh_jitter_spreads_reloads_below_the_refresh_interval() {
    let source = Source::new(|_| Act::After(MS));
    let c: LoadingCache<u64, u64, String> = Cache::builder()
        .time_to_live(100 * SEC)
        .tick(100 * MS)
        .loader(source.loader())
        .refresh_after(80 * SEC)
        .refresh_jitter(0.5)
        .build();
    for k in 0..100 {
        c.insert(k, k);
        c.get(&k);
    }
    let mut reloaded_at: HashMap<u64, Duration> = HashMap::new();
    let start = tokio::time::Instant::now();
    for _ in 0..810 {
        advance(100 * MS).await;
        for k in 0..100 {
            if c.get(&k) != Some(k) {
                reloaded_at.entry(k).or_insert(start.elapsed());
            }
        }
    }
    assert_eq!(reloaded_at.len(), 100, "every key reloaded by 81 s");
    let earliest = reloaded_at.values().min().unwrap();
    assert!(*earliest >= 40 * SEC, "before after * (1 - jitter)");
    assert!(*earliest < 60 * SEC, "not spread: {earliest:?}");
}

#[tokio::test(start_paused = true)]
async fn a_refresh_awaited_when_the_cache_is_dropped_resolves() {
    let source = Source::new(|_| Act::Hang);
    let c: LoadingCache<u64, u64, String> = Cache::builder().loader(source.loader()).build();
    c.insert(1, 1);
    let refreshing = c.refresh(1);
    settle().await;
    drop(c);
    let outcome = tokio::time::timeout(60 * SEC, refreshing).await;
    assert!(
        matches!(outcome, Ok(Err(RefreshError::NoValue))),
        "{outcome:?}"
    );
}

#[test]
fn a_runtime_that_shuts_down_mid_reload_leaves_no_key_waiting_and_refresh_going_on() {
    use common::wait_until_blocking;
    let source = Source::new(|n| if n == 2 { Act::Hang } else { Act::After(MS) });
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let c: LoadingCache<u64, u64, String> = Cache::builder()
        .time_to_live(2 * SEC)
        .tick(10 * MS)
        .loader(source.loader())
        .refresh_after(SEC)
        .reload_backoff(10 * MS)
        .build_on(first.handle());
    first.block_on(async {
        c.fetch(1).await.unwrap();
        assert_eq!(c.get(&1), Some(1001)); // read: reloaded at 1 s
    });
    wait_until_blocking(10 * SEC, "the reload to start", || source.calls() == 2);
    // The reload hangs; its runtime goes away with it.
    drop(first);
    let internals = c.__internals();
    assert_eq!(internals.loads, 0, "a flight was left registered");
    assert_eq!(
        internals.reloads_running, 0,
        "a reload task's place was kept"
    );
    // On the next runtime the key is read, and refreshed again.
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    second.block_on(async {
        // Until the third call's value is in (its reload task runs on this runtime).
        let deadline = tokio::time::Instant::now() + 10 * SEC;
        while c.get(&1) != Some(1003) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no refresh after the shutdown ({} calls)",
                source.calls()
            );
            assert!(c.fetch(1).await.is_ok());
            tokio::time::sleep(10 * MS).await;
        }
    });
    assert_eq!(source.calls(), 3);
}

#[test]
fn refresh_outside_a_runtime_panics_naming_the_fix() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let c: LoadingCache<u64, u64, String> = Cache::builder()
        .loader(|k: u64| async move { Ok::<u64, String>(k) })
        .build_on(runtime.handle());
    let panic =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(c.refresh(1)))).unwrap_err();
    let message = common::message(panic);
    assert!(message.contains("within a Tokio runtime"), "{message}");
}

#[tokio::test]
async fn a_loader_holding_a_weak_handle_lets_the_cache_go() {
    use std::sync::OnceLock;
    let own: Arc<OnceLock<ebb_cache::WeakCache<u64, u64>>> = Arc::default();
    let seen = Arc::clone(&own);
    let c: LoadingCache<u64, u64, String> = Cache::builder()
        .loader(move |k: u64| {
            // The loader may read the cache it loads for, through a weak handle.
            let other = seen
                .get()
                .and_then(|weak| weak.upgrade())
                .and_then(|c| c.get(&0));
            async move { Ok::<u64, String>(k + other.unwrap_or(0)) }
        })
        .build();
    own.set(c.downgrade()).unwrap();
    c.insert(0, 100);
    assert_eq!(c.fetch(1).await.unwrap(), 101);
    let closed = c.closed();
    drop(c);
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("a loader with a weak handle kept the cache alive");
}

#[test]
fn a_reload_task_dropped_unpolled_by_its_runtime_ends_its_flight() {
    let source = Source::new(|_| Act::After(MS));
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let c: LoadingCache<u64, u64, String> = Cache::builder()
        .loader(source.loader())
        .build_on(first.handle());
    c.insert(1, 1);
    // The reload's task is spawned, and the runtime goes away before it runs it.
    // (Called inside the runtime, the future not awaited there.)
    let refreshing = {
        let _inside = first.enter();
        c.refresh(1)
    };
    drop(first);
    assert_eq!(c.__internals().loads, 0, "a flight was left registered");
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let outcome = tokio::time::timeout(10 * SEC, refreshing)
            .await
            .expect("a refresh whose task was dropped unpolled never resolved");
        assert!(matches!(outcome, Err(RefreshError::NoValue)), "{outcome:?}");
        // The key is not wedged: the next refresh runs.
        assert_eq!(c.refresh(1).await.unwrap(), 1002);
    });
}

#[tokio::test(start_paused = true)]
async fn a_weigher_panicking_as_a_reload_stores_costs_that_reload_only() {
    let source = Source::new(|_| Act::After(MS));
    let c: LoadingCache<u64, u64, String> = Cache::builder()
        .time_to_live(10 * SEC)
        .tick(100 * MS)
        .max_capacity(1_000)
        .weigher(|_, v: &u64| {
            assert_ne!(*v, 1002, "the weigher panics on the first reload's value");
            1
        })
        .record_stats()
        .loader(source.loader())
        .refresh_after(8 * SEC)
        .reload_backoff(500 * MS)
        .build();
    c.fetch(1).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..99 {
        advance(100 * MS).await;
        seen.push(c.get(&1).expect("a reader missed"));
    }
    seen.dedup();
    // The second value was never stored; after the backoff the third was.
    assert_eq!(seen, [1001, 1003]);
    assert_eq!(c.__internals().loads, 0, "a flight was left registered");
}

#[tokio::test(start_paused = true)]
async fn a_key_clone_panicking_as_its_reload_is_due_costs_that_reload_only() {
    use std::sync::atomic::AtomicBool;
    static TRAP: AtomicBool = AtomicBool::new(false);
    #[derive(Debug, PartialEq, Eq, Hash)]
    struct Key(u64);
    impl Clone for Key {
        fn clone(&self) -> Self {
            if TRAP.swap(false, std::sync::atomic::Ordering::SeqCst) {
                panic!("trap: a key's clone");
            }
            Key(self.0)
        }
    }
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&calls);
    let c: LoadingCache<Key, u64, String> = Cache::builder()
        .time_to_live(10 * SEC)
        .tick(100 * MS)
        .loader(move |_: Key| {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            async move { Ok::<u64, String>(n) }
        })
        .refresh_after(8 * SEC)
        .reload_backoff(500 * MS)
        .build();
    assert_eq!(c.fetch(Key(1)).await.unwrap(), 1);
    for step in 0..99 {
        if step == 79 {
            // The next clone of a key is the expiry task's, for the reload due at 8 s.
            TRAP.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        advance(100 * MS).await;
        assert!(c.get(&Key(1)).is_some(), "a reader missed at step {step}");
    }
    assert!(
        !TRAP.load(std::sync::atomic::Ordering::SeqCst),
        "the trap never fired"
    );
    // The trapped reload left the entry as it was and was tried again a tick later: one
    // reload, which stored the next value.
    assert_eq!(c.get(&Key(1)), Some(2));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}
