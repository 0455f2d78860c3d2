//! Stale-if-error and the soft timeout: a failing or slow source is survived with the last
//! good value, throttled; stale copies stay out of sight and go first under pressure. All on
//! paused time.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{advance, Act, Source};
use ebb_cache::{BuildError, Cache, LoadingCache, RemovalCause};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// Every removal the listener heard.
type Log = Arc<Mutex<Vec<(u64, u64, RemovalCause)>>>;

/// A source that fails while `down` is set, and answers in 10 ms otherwise.
fn switchable() -> (Source, Arc<AtomicBool>) {
    let down = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&down);
    let source = Source::new(move |_| {
        if flag.load(Ordering::SeqCst) {
            Act::Fail(10 * MS)
        } else {
            Act::After(10 * MS)
        }
    });
    (source, down)
}

/// A loading cache over `source`: TTL 10 s, stale copies for 60 s, a 5 s throttle, a 100 ms
/// tick, stats, and a listener that logs every removal.
fn cache(source: &Source) -> (LoadingCache<u64, u64, String>, Log) {
    let log = Log::default();
    let sink = Arc::clone(&log);
    let cache = Cache::<u64, u64>::builder()
        .time_to_live(10 * SEC)
        .tick(100 * MS)
        .record_stats()
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .loader(source.loader())
        .stale_if_error(60 * SEC)
        .stale_throttle(5 * SEC)
        .build();
    (cache, log)
}

#[tokio::test(start_paused = true)]
async fn a_source_down_for_30_s_inside_the_window_costs_callers_nothing() {
    let (source, down) = switchable();
    let (c, log) = cache(&source);
    assert_eq!(c.fetch(1).await.unwrap(), 1001); // cached before the outage
    advance(10 * SEC).await; // t = 10 s: expired, kept as a stale copy
    down.store(true, Ordering::SeqCst);
    let before = source.calls();
    let mut errors = 0;
    let mut stale = 0;
    for _ in 0..300 {
        // 30 s of callers, one every 100 ms.
        match c.fetch(1).await {
            Ok(1001) => stale += 1,
            Ok(other) => panic!("{other}"),
            Err(_) => errors += 1,
        }
        advance(100 * MS).await;
    }
    assert_eq!(errors, 0, "a caller saw the outage");
    assert_eq!(stale, 300);
    // One call per 5 s throttle, at most: 30 s, 6 calls (7 if one falls on both edges).
    let calls = source.calls() - before;
    assert!(
        (6..=7).contains(&calls),
        "{calls} calls to the failing source"
    );
    assert_eq!(c.stats().stale_served, 300);
    // The source is back: the next load after the throttle gets the fresh value.
    down.store(false, Ordering::SeqCst);
    advance(5 * SEC).await;
    let fresh = c.fetch(1).await.unwrap();
    assert_ne!(fresh, 1001);
    assert_eq!(c.get(&1), Some(fresh));
    // The stale value was reported once, when the fresh one replaced it.
    assert_eq!(
        log.lock().unwrap().as_slice(),
        [(1, 1001, RemovalCause::Expired)]
    );
}

#[tokio::test(start_paused = true)]
async fn errors_reach_callers_once_the_window_ends() {
    let (source, down) = switchable();
    let (c, log) = cache(&source);
    c.fetch(1).await.unwrap();
    down.store(true, Ordering::SeqCst);
    advance(69 * SEC + 800 * MS).await; // t = 69.8 s: the window ends at 70 s
    assert_eq!(c.fetch(1).await.unwrap(), 1001);
    assert!(
        log.lock().unwrap().is_empty(),
        "the stale copy is still held"
    );
    advance(300 * MS).await; // t = 70.1 s: past the window, within a tick
    assert_eq!(
        log.lock().unwrap().as_slice(),
        [(1, 1001, RemovalCause::Expired)],
        "the stale copy dropped, and reported once, at the end of its window"
    );
    let error = c.fetch(1).await.unwrap_err();
    assert!(error.starts_with("source down"), "{error}");
    // A key never cached gets the error at once.
    assert!(c.fetch(2).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_slow_source_with_a_soft_timeout_answers_with_the_stale_value_then_updates() {
    let slow = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&slow);
    let source = Source::new(move |_| {
        Act::After(if flag.load(Ordering::SeqCst) {
            2 * SEC
        } else {
            MS
        })
    });
    let c: LoadingCache<u64, u64, String> = Cache::builder()
        .time_to_live(10 * SEC)
        .tick(100 * MS)
        .record_stats()
        .loader(source.loader())
        .stale_if_error(60 * SEC)
        .soft_timeout(100 * MS)
        .build();
    c.fetch(1).await.unwrap();
    advance(11 * SEC).await;
    slow.store(true, Ordering::SeqCst);
    let asked = tokio::time::Instant::now();
    assert_eq!(
        c.fetch(1).await.unwrap(),
        1001,
        "the stale value, at the soft timeout"
    );
    assert_eq!(asked.elapsed(), 100 * MS);
    assert_eq!(c.get(&1), None, "still loading");
    // A second caller joins the same load, and gets the stale value at its own soft timeout.
    assert_eq!(c.fetch(1).await.unwrap(), 1001);
    assert_eq!(source.calls(), 2);
    advance(2 * SEC).await; // the load ends in the background
    assert_eq!(
        c.get(&1),
        Some(1002),
        "the fresh value, once the load ended"
    );
    assert_eq!(c.stats().stale_served, 2);
    // Without a stale copy, the soft timeout does not apply: the caller waits.
    let asked = tokio::time::Instant::now();
    assert_eq!(c.fetch(2).await.unwrap(), 2003);
    assert_eq!(asked.elapsed(), 2 * SEC);
}

#[tokio::test(start_paused = true)]
async fn a_load_past_the_hard_timeout_is_ended_and_the_stale_value_returned() {
    let source = Source::new(|n| if n == 1 { Act::After(MS) } else { Act::Hang });
    let c: LoadingCache<u64, u64, String> = Cache::builder()
        .time_to_live(10 * SEC)
        .tick(100 * MS)
        .loader(source.loader())
        .stale_if_error(60 * SEC)
        .load_timeout(3 * SEC)
        .build();
    c.fetch(1).await.unwrap();
    advance(11 * SEC).await;
    let asked = tokio::time::Instant::now();
    assert_eq!(c.fetch(1).await.unwrap(), 1001);
    assert_eq!(
        asked.elapsed(),
        3 * SEC,
        "the stale value at the hard timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn stale_copies_are_out_of_sight() {
    let (source, _down) = switchable();
    let (c, _log) = cache(&source);
    c.fetch(1).await.unwrap();
    c.insert(2, 2);
    advance(10 * SEC + 100 * MS).await; // both stale copies now
    assert_eq!((c.get(&1), c.get(&2)), (None, None));
    assert!(!c.contains_key(&1));
    assert_eq!(c.iter().count(), 0);
    assert_eq!(c.entry_count(), 0);
    c.insert(3, 3);
    assert_eq!(c.entry_count(), 1);
    // A write over a stale copy replaces it like any expired entry.
    c.insert(1, 10);
    assert_eq!(c.entry_count(), 2);
    assert_eq!(c.get(&1), Some(10));
    // `remove` and `invalidate_all` take stale copies too.
    c.remove(&2);
    c.invalidate_all();
    advance(200 * MS).await;
    assert_eq!(c.entry_count(), 0);
    assert_eq!(c.weighted_size(), 0, "nothing held, stale or not");
}

#[tokio::test(start_paused = true)]
async fn stale_copies_are_evicted_first_under_capacity_pressure() {
    let (source, down) = switchable();
    let log = Log::default();
    let sink = Arc::clone(&log);
    let c: LoadingCache<u64, u64, String> = Cache::builder()
        .time_to_live(60 * SEC)
        .tick(100 * MS)
        .max_capacity(20)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .loader(source.loader())
        .stale_if_error(600 * SEC)
        .build();
    // Ten entries that go stale, read often (the policy would keep them if they were live).
    for k in 0..10 {
        c.insert_with_ttl(k, k, 5 * SEC);
    }
    for k in 10..20 {
        c.insert(k, k);
    }
    for _ in 0..3 {
        for k in 0..20 {
            c.get(&k);
        }
    }
    advance(5 * SEC + 100 * MS).await;
    assert_eq!(c.entry_count(), 10, "ten live, ten stale copies");
    // Ten new entries need room: the stale copies go, and no live entry.
    for k in 20..30 {
        c.insert(k, k);
    }
    advance(100 * MS).await;
    let mut evicted: Vec<u64> = log.lock().unwrap().iter().map(|(k, _, _)| *k).collect();
    evicted.sort();
    assert_eq!(evicted, (0..10).collect::<Vec<_>>());
    assert!(
        (10..30).all(|k| c.contains_key(&k)),
        "a live entry was evicted"
    );
    assert_eq!(c.entry_count(), 20);
    // And they are gone for fetch too.
    down.store(true, Ordering::SeqCst);
    assert!(c.fetch(3).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn every_value_is_reported_once_through_outages_and_recoveries() {
    // The source is down in alternate 20 s spans.
    let (source, down) = switchable();
    let (c, log) = cache(&source);
    let mut served = Vec::new();
    for step in 0..2000u32 {
        down.store((step / 200) % 2 == 1, Ordering::SeqCst);
        for k in 0..3 {
            if let Ok(v) = c.fetch(k).await {
                served.push(v);
            }
        }
        advance(100 * MS).await;
    }
    drop(c);
    let log = log.lock().unwrap();
    let mut values: Vec<u64> = log.iter().map(|(_, v, _)| *v).collect();
    let reported = values.len();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), reported, "a value was reported twice");
    // Every value reported was one the source produced, and was served.
    served.sort();
    served.dedup();
    assert!(values.iter().all(|v| served.binary_search(v).is_ok()));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_loader_costs_the_call_that_led_it_unless_a_stale_copy_answers() {
    let source = Source::new(|n| if n == 1 { Act::After(MS) } else { Act::Panic });
    let (c, _log) = cache(&source);
    c.fetch(1).await.unwrap();
    advance(10 * SEC + 100 * MS).await;
    assert_eq!(
        c.fetch(1).await.unwrap(),
        1001,
        "the stale copy answers a panic"
    );
    // No stale copy: the panic reaches the caller that led the load, naming the cause.
    let c2 = c.clone();
    let led = tokio::spawn(async move { c2.fetch(2).await }).await;
    let panic = led.unwrap_err().into_panic();
    let message = common::message(panic);
    assert!(message.contains("loader panicked"), "{message}");
    // The cache goes on.
    assert_eq!(c.stats().stale_served, 1);
    assert_eq!(c.fetch(1).await.unwrap(), 1001);
}

#[test]
fn a_soft_timeout_needs_stale_copies() {
    let built = Cache::<u64, u64>::builder()
        .loader(|k: u64| async move { Ok::<u64, String>(k) })
        .soft_timeout(100 * MS)
        .try_build();
    assert!(matches!(
        built,
        Err(BuildError::SoftTimeoutWithoutStaleIfError)
    ));
    let message = BuildError::SoftTimeoutWithoutStaleIfError.to_string();
    assert!(message.contains("stale_if_error(window)"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn an_explicit_refresh_keeps_the_entrys_ttl_with_stale_copies_and_an_idle_time() {
    let source = Source::new(|_| Act::After(MS));
    let c: LoadingCache<u64, u64, String> = Cache::builder()
        .time_to_live(10 * SEC)
        .time_to_idle(8 * SEC)
        .tick(100 * MS)
        .loader(source.loader())
        .stale_if_error(60 * SEC)
        .build();
    c.insert(1, 1);
    advance(SEC).await;
    assert_eq!(c.refresh(1).await.unwrap(), 1001); // written at 1 s: TTL to 11 s, idle to 9 s
    advance(7 * SEC + 500 * MS).await; // t = 8.5 s
    assert_eq!(c.get(&1), Some(1001)); // idle to 16.5 s, capped by the TTL at 11 s
    advance(2 * SEC).await; // t = 10.5 s
    assert!(
        c.contains_key(&1),
        "the reloaded entry lost its TTL to its idle time"
    );
    advance(SEC).await; // t = 11.5 s
    assert!(!c.contains_key(&1));
    // A key with only the cache's TTL: a refresh gives it the TTL again, not forever.
    c.insert(2, 2);
    assert_eq!(c.refresh(2).await.unwrap(), 2002);
    advance(10 * SEC + 100 * MS).await;
    assert!(!c.contains_key(&2), "a refreshed entry never expired");
}

#[tokio::test(start_paused = true)]
async fn churn_of_distinct_keys_with_stale_copies_leaves_the_books_balanced() {
    let source = Source::new(|_| Act::After(MS));
    let c: LoadingCache<u64, u64, String> = Cache::builder()
        .time_to_live(SEC)
        .tick(100 * MS)
        .max_capacity(2_000)
        .loader(source.loader())
        .stale_if_error(2 * SEC)
        .build();
    let mut next = 0u64;
    for _ in 0..300 {
        for _ in 0..200 {
            c.insert(next, next);
            next += 1;
        }
        advance(100 * MS).await;
        // Live entries are what the last second wrote, at most; stale copies are not counted,
        // and live and stale together stay within the capacity.
        assert!(c.entry_count() <= 2_000);
        assert!(c.weighted_size() <= 2_000, "{}", c.weighted_size());
    }
    advance(3 * SEC + 200 * MS).await; // every window over
    assert_eq!(c.entry_count(), 0);
    assert_eq!(c.weighted_size(), 0, "a stale copy outlived its window");
    let internals = c.__internals();
    assert_eq!(
        internals.policy_weight,
        Some(0),
        "the policy's books drifted"
    );
    assert_eq!(internals.nodes, 0, "wheel nodes left behind");
}

/// A value whose `Clone` panics once its shared countdown reaches zero (negative: never).
#[derive(Debug)]
struct Brittle(u64, Arc<std::sync::atomic::AtomicI64>);

impl Clone for Brittle {
    fn clone(&self) -> Self {
        if self.1.fetch_sub(1, Ordering::SeqCst) == 1 {
            panic!("trap: a value's clone");
        }
        Brittle(self.0, Arc::clone(&self.1))
    }
}

#[tokio::test(start_paused = true)]
async fn a_value_clone_panicking_as_a_fetch_finds_a_written_value_never_wedges_the_key() {
    let fuse = Arc::new(std::sync::atomic::AtomicI64::new(-1));
    let loads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c: LoadingCache<u64, Brittle, String> = {
        let (fuse, loads) = (Arc::clone(&fuse), Arc::clone(&loads));
        Cache::<u64, Brittle>::builder()
            .loader(move |k| {
                let (fuse, loads) = (Arc::clone(&fuse), Arc::clone(&loads));
                async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok(Brittle(k, fuse))
                }
            })
            .stale_if_error(60 * SEC)
            .build()
    };
    // A compute leads key 1 and stores nothing, once released.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let compute = {
        let c = c.clone();
        tokio::spawn(async move {
            c.as_cache()
                .entry(1)
                .and_compute_with(|_| async move {
                    let _ = released.await;
                    ebb_cache::Op::Nop
                })
                .await
        })
    };
    advance(MS).await;
    // A fetch misses and waits for the compute's flight.
    let fetch = {
        let c = c.clone();
        tokio::spawn(async move { c.fetch(1).await.map(|v| v.0) })
    };
    advance(MS).await;
    // A write lands, then the compute ends: the fetch starts over, leads, and finds the
    // written value; the second copy of it from now panics.
    c.as_cache().insert(1, Brittle(7, Arc::clone(&fuse)));
    fuse.store(2, Ordering::SeqCst);
    release.send(()).unwrap();
    let _ = compute.await;
    let _ = fetch.await; // it may return the value or pass the panic on: either way, ...
    fuse.store(-1, Ordering::SeqCst);
    // ... the key is not wedged: a miss loads it.
    c.as_cache().remove(&1);
    let again = tokio::time::timeout(10 * SEC, c.fetch(1))
        .await
        .expect("a fetch waited forever on a flight a panic left unsettled");
    assert_eq!(again.unwrap().0, 1);
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}
