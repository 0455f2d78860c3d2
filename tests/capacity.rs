//! Bounded capacity: the bound holds after every insert, evictions are reported once as
//! `Size`, the policy's accounting follows every way out of the cache, weights, scans.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{advance, logged, settle, wait_until, Log};
use ebb_cache::{Cache, RemovalCause};

const SEC: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_holds_after_every_insert_under_concurrency() {
    const CAP: u64 = 1000;
    const TASKS: usize = 4;
    let size = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&size);
    let c: Cache<u64, u64> = Cache::builder()
        .max_capacity(CAP)
        .time_to_live(Duration::from_millis(50))
        .tick(Duration::from_millis(5))
        .eviction_listener(move |_, _, cause| {
            if cause == RemovalCause::Size {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build();
    // Rounds: every task inserts once, concurrently; once all inserts have returned, the
    // count is taken with no writer running (`entry_count` reads shard by shard, so a count
    // taken during writes can mix moments). The expiry task may still remove entries.
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS as u64)
        .map(|t| {
            let (c, barrier) = (c.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                let mut x = t * 7919 + 1;
                for i in 0..4_000u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    c.insert(x % 20_000, i);
                    if i % 7 == 0 {
                        c.get(&(x % 100));
                    }
                    if barrier.wait().await.is_leader() {
                        let n = c.entry_count();
                        assert!(n <= CAP, "{n} entries once every insert returned");
                    }
                    barrier.wait().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(size.load(Ordering::Relaxed) > 0, "evictions happened");
    // Everything expires; the policy forgets every removed entry's weight.
    wait_until(Duration::from_secs(10), "all entries expired", || {
        c.entry_count() == 0
    })
    .await;
    assert_eq!(c.__internals().policy_weight, Some(0));
}

#[tokio::test(start_paused = true)]
async fn evictions_are_reported_once_as_size() {
    let (c, log) = logged(Cache::builder().max_capacity(10));
    for k in 0..100 {
        c.insert(k, k);
    }
    assert_eq!(c.entry_count(), 10);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 90);
    assert!(log.iter().all(|(_, _, cause)| *cause == RemovalCause::Size));
    let mut keys: Vec<_> = log.iter().map(|(k, _, _)| *k).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 90, "no key reported twice");
    assert!(log.iter().all(|(k, _, _)| c.get(k).is_none()));
}

#[tokio::test(start_paused = true)]
async fn every_way_out_is_accounted_for() {
    let (c, log) = logged(
        Cache::builder()
            .max_capacity(50)
            .time_to_live(10 * SEC)
            .tick(SEC)
            .record_stats(),
    );
    for k in 0..40 {
        c.insert(k, k);
    }
    for k in 0..10 {
        c.remove(&k); // explicit
    }
    for k in 10..20 {
        c.insert(k, k + 100); // replaced: same weight
    }
    c.insert_with_ttl(20, 1, Duration::ZERO); // explicit
    assert_eq!(c.__internals().policy_weight, Some(c.entry_count()));
    advance(11 * SEC).await; // everything expires
    assert_eq!(c.entry_count(), 0);
    assert_eq!(
        c.__internals().policy_weight,
        Some(0),
        "expired entries stop counting"
    );
    // Room for 50 again: no evictions until then.
    let before = log.lock().unwrap().len();
    for k in 100..150 {
        c.insert(k, k);
    }
    assert_eq!(
        log.lock().unwrap().len(),
        before,
        "nothing evicted below the bound"
    );
    c.invalidate_all();
    settle().await;
    assert_eq!(
        c.__internals().policy_weight,
        Some(0),
        "swept entries stop counting"
    );
    assert_eq!(c.stats().evicted_for_size, 0);
}

#[tokio::test(start_paused = true)]
async fn weights_bound_the_total() {
    let weights = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let c: Cache<u64, u64> = Cache::builder()
        .max_capacity(1000)
        .weigher(|_k, v: &u64| (*v % 50) as u32)
        .build();
    for k in 0..2000u64 {
        let v = k * 7;
        c.insert(k, v);
        weights.lock().unwrap().insert(k, v % 50);
        let total: u64 = (0..=k).filter_map(|k| c.get(&k)).map(|v| v % 50).sum();
        assert!(
            total <= 1000 + 49,
            "total weight {total} after inserting {k}"
        );
    }
    // Weightless entries cost nothing and are never evicted for room.
    let weightless: Vec<u64> = (0..2000u64).filter(|k| (k * 7) % 50 == 0).collect();
    assert!(weightless.iter().all(|k| c.get(k).is_some()));
    assert_eq!(
        c.__internals().policy_weight,
        Some((0..2000).filter_map(|k| c.get(&k)).map(|v| v % 50).sum())
    );
}

#[tokio::test(start_paused = true)]
async fn the_weigher_weighs_each_written_value_once_and_only_that() {
    // A weigher that answers differently each time it is asked: were it asked again when an
    // entry is replaced, evicted or removed, the policy's total would drift from the entries.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let c: Cache<u64, u64> = Cache::builder()
        .max_capacity(100)
        .time_to_live(10 * SEC)
        .tick(SEC)
        .weigher(move |_k, _v| (counted.fetch_add(1, Ordering::Relaxed) % 7) as u32 + 1)
        .build();
    let mut writes = 0;
    for k in 0..300u64 {
        c.insert(k % 150, k); // new keys, overwrites, evictions
        writes += 1;
    }
    for k in 0..50u64 {
        c.remove(&k);
    }
    assert_eq!(
        calls.load(Ordering::Relaxed),
        writes,
        "one weighing per write"
    );
    let internals = c.__internals();
    assert!(internals.policy_weight <= Some(100));
    assert_eq!(internals.policy_records, Some(c.entry_count() as usize));
    advance(11 * SEC).await; // the rest expires
    assert_eq!(c.entry_count(), 0);
    let internals = c.__internals();
    assert_eq!(
        internals.policy_weight,
        Some(0),
        "the total followed every way out"
    );
    assert_eq!(internals.policy_records, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weigher_may_call_into_its_cache() {
    // It runs before any lock is taken: a weigher that writes to and removes from its own
    // cache (both take the policy shard) neither waits for itself nor breaks the accounting.
    thread_local! {
        static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    let cell: Arc<std::sync::OnceLock<ebb_cache::WeakCache<u64, u64>>> = Arc::default();
    let weak = Arc::clone(&cell);
    let c: Cache<u64, u64> = Cache::builder()
        .max_capacity(20)
        .weigher(move |k, _v| {
            // Not again for the weigher's own write.
            if !INSIDE.with(|inside| inside.replace(true)) {
                if let Some(cache) = weak.get().and_then(|w| w.upgrade()) {
                    cache.insert(k + 1000, 0);
                    cache.remove(&(k + 1));
                }
                INSIDE.with(|inside| inside.set(false));
            }
            1
        })
        .build();
    assert!(cell.set(c.downgrade()).is_ok(), "set once");
    let writer = {
        let c = c.clone();
        std::thread::spawn(move || {
            for k in 0..500u64 {
                c.insert(k % 60, k);
            }
        })
    };
    wait_until(Duration::from_secs(10), "the writer", || {
        writer.is_finished()
    })
    .await;
    writer.join().expect("the writer finished");
    let internals = c.__internals();
    assert!(c.entry_count() <= 20);
    assert_eq!(internals.policy_weight, Some(c.entry_count()));
    assert_eq!(internals.policy_records, Some(c.entry_count() as usize));
}

#[tokio::test(start_paused = true)]
async fn zero_capacity_stores_nothing_and_says_so() {
    let (c, log) = logged(Cache::builder().max_capacity(0));
    c.insert(1, 1);
    c.insert(2, 2);
    assert_eq!(c.entry_count(), 0);
    assert_eq!(c.get(&1), None);
    assert_eq!(
        *log.lock().unwrap(),
        vec![(1, 1, RemovalCause::Size), (2, 2, RemovalCause::Size)]
    );
    assert_eq!(
        c.get_with(3, async { 3 }).await,
        3,
        "a load still returns its value"
    );
    assert_eq!(c.entry_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_scan_does_not_flush_the_hot_keys() {
    let c: Cache<u64, u64> = Cache::builder().max_capacity(1000).build();
    // 500 hot keys, read again and again.
    for _ in 0..5 {
        for k in 0..500 {
            if c.get(&k).is_none() {
                c.insert(k, k);
            }
        }
    }
    // A one-pass scan over 100,000 keys nobody reads twice.
    for k in 1_000_000..1_100_000 {
        if c.get(&k).is_none() {
            c.insert(k, k);
        }
    }
    let hot = (0..500).filter(|k| c.get(k).is_some()).count();
    assert!(hot >= 450, "only {hot} of 500 hot keys survived the scan");
    assert!(c.entry_count() <= 1000);
}

#[tokio::test(start_paused = true)]
async fn hot_keys_read_during_a_scan_keep_hitting() {
    let c: Cache<u64, u64> = Cache::builder().max_capacity(1000).build();
    // 500 hot keys, read again and again.
    for _ in 0..5 {
        for k in 0..500 {
            if c.get(&k).is_none() {
                c.insert(k, k);
            }
        }
    }
    // A one-pass scan over 100,000 keys nobody reads twice, while the hot keys stay in use:
    // all 500 are read once per 1,000 scanned keys. An LRU of this size would miss each of
    // those reads.
    let (mut reads, mut hits) = (0u32, 0u32);
    for k in 1_000_000..1_100_000 {
        if c.get(&k).is_none() {
            c.insert(k, k);
        }
        if k % 1_000 == 0 {
            for hot in 0..500 {
                reads += 1;
                if c.get(&hot).is_some() {
                    hits += 1;
                } else {
                    c.insert(hot, hot);
                }
            }
        }
    }
    assert!(
        hits * 100 >= reads * 95,
        "the scan flushed the hot keys: {hits} hits of {reads} reads"
    );
    let hot = (0..500).filter(|k| c.get(k).is_some()).count();
    assert!(hot >= 450, "only {hot} of 500 hot keys survived the scan");
    assert!(c.entry_count() <= 1000);
}

#[tokio::test(start_paused = true)]
async fn an_entry_heavier_than_the_capacity_is_evicted_at_once() {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let c: Cache<u64, u64> = Cache::builder()
        .max_capacity(1000)
        .weigher(|_k, v: &u64| if *v == 0 { u32::MAX } else { 1 })
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build();
    for k in 1..=10 {
        c.insert(k, k);
    }
    c.insert(99, 0); // weighs u32::MAX
    assert_eq!(c.get(&99), None);
    assert_eq!(*log.lock().unwrap(), vec![(99, 0, RemovalCause::Size)]);
    assert_eq!(c.entry_count(), 10, "the light entries stay");
    assert_eq!(
        c.__internals().policy_weight,
        Some(10),
        "no overflow in the accounting"
    );
}

/// Threads write a few keys with short TTLs (and, with `removes`, remove them) through a
/// weighted cache; once everything has expired the policy must account for nothing, and the
/// cache must then hold fresh entries up to its capacity.
fn weighted_books_balance_under_races(removes: bool) {
    const CAP: u64 = 400;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let c: Cache<u64, u64> = Cache::builder()
        .max_capacity(CAP)
        .weigher(|_, v| (*v % 7) as u32 + 1)
        .tick(Duration::from_millis(1))
        .build_on(rt.handle());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let c = c.clone();
            s.spawn(move || {
                let mut x = t * 7919 + 1;
                let start = std::time::Instant::now();
                let mut i = 0u64;
                while start.elapsed() < Duration::from_millis(400) {
                    i += 1;
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = x % 8;
                    if removes && i % 3 == 0 {
                        c.remove(&key);
                    } else {
                        c.insert_with_ttl(key, x, Duration::from_micros(500 + x % 1500));
                    }
                }
            });
        }
    });
    rt.block_on(wait_until(
        Duration::from_secs(10),
        "every entry to expire",
        || c.entry_count() == 0,
    ));
    let weight = c.__internals().policy_weight;
    assert_eq!(
        weight,
        Some(0),
        "an empty cache still counts {weight:?} units"
    );
    assert_eq!(c.__internals().policy_records, Some(0));
    for k in 100..100 + CAP {
        c.insert(k, 0); // weight 1 each
    }
    assert_eq!(
        c.entry_count(),
        CAP,
        "fresh entries evicted by phantom weight"
    );
}

#[test]
fn weighted_books_balance_when_short_ttls_race_on_a_few_keys() {
    weighted_books_balance_under_races(false);
}

#[test]
fn weighted_books_balance_when_removes_race_inserts() {
    weighted_books_balance_under_races(true);
}

#[tokio::test(start_paused = true)]
async fn weighted_size_follows_every_write_and_removal() {
    let c: Cache<u64, u64> = Cache::builder()
        .max_capacity(1_000)
        .weigher(|_, v| *v as u32)
        .time_to_live(SEC)
        .tick(Duration::from_millis(1))
        .build();
    assert_eq!(c.weighted_size(), 0);
    c.insert(1, 10);
    c.insert(2, 20);
    assert_eq!(c.weighted_size(), 30);
    c.insert(1, 5); // an overwrite: its new weight replaces the old
    assert_eq!(c.weighted_size(), 25);
    c.remove(&2);
    assert_eq!(c.weighted_size(), 5);
    assert_eq!(c.stats().weighted_size, 5);
    advance(SEC + Duration::from_millis(2)).await;
    assert_eq!((c.entry_count(), c.weighted_size()), (0, 0));
    // Without a weigher (or a bound) every entry weighs 1.
    let plain: Cache<u64, u64> = Cache::builder().build();
    plain.insert(1, 100);
    plain.insert(2, 200);
    assert_eq!(plain.weighted_size(), 2);
    assert_eq!(plain.stats().weighted_size, 2);
}
