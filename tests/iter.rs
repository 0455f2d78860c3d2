//! `Cache::iter`: live entries only, each key once, no lock held between items.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{advance, settle, wait_until};
use ebb_cache::Cache;

#[tokio::test(start_paused = true)]
async fn yields_what_a_get_would_return_when_it_is_reached() {
    let c: Cache<u32, u32> = Cache::builder()
        .time_to_live(Duration::from_secs(60))
        .tick(Duration::from_millis(10))
        .build();
    for k in 0..100 {
        c.insert(k, k * 10);
    }
    c.insert_with_ttl(1_000, 0, Duration::from_secs(1));
    let mut it = c.iter();
    // After the iterator was made: an expiry, a removal, an overwrite and a new key.
    advance(Duration::from_millis(1_500)).await;
    c.remove(&7);
    c.insert(8, 888);
    c.insert(5_000, 1);
    let mut seen = HashSet::new();
    for (k, v) in it.by_ref() {
        assert!(seen.insert(k), "{k} twice");
        assert_ne!(k, 1_000, "expired before it was reached");
        assert_ne!(k, 7, "removed before it was reached");
        assert_ne!(k, 5_000, "inserted after the call");
        assert_eq!(
            v,
            if k == 8 { 888 } else { k * 10 },
            "its value when reached"
        );
    }
    assert_eq!(seen.len(), 99);
    // An `invalidate_all` hides everything from an iterator made before it.
    let it = c.iter();
    c.invalidate_all();
    assert_eq!(it.count(), 0);
    settle().await;
}

#[tokio::test(start_paused = true)]
async fn iterating_is_not_reading() {
    let c: Cache<u32, u32> = Cache::builder()
        .time_to_idle(Duration::from_secs(10))
        .record_stats()
        .build();
    c.insert(1, 1);
    advance(Duration::from_secs(6)).await;
    assert_eq!(c.iter().count(), 1);
    advance(Duration::from_secs(6)).await;
    assert_eq!(
        c.iter().count(),
        0,
        "the iteration did not move the idle deadline"
    );
    let stats = c.stats();
    assert_eq!((stats.hits, stats.misses), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_concurrent_writes_removals_and_expiry_no_key_comes_twice() {
    let c: Cache<u64, u64> = Cache::builder()
        .time_to_live(Duration::from_millis(20))
        .tick(Duration::from_millis(1))
        .max_capacity(5_000)
        .build();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let (c, stop) = (c.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut x = t + 1;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for _ in 0..256 {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let k = (x >> 33) % 10_000;
                        if x % 5 == 0 {
                            c.remove(&k);
                        } else {
                            c.insert(k, k ^ 0xabcd);
                        }
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    wait_until(
        Duration::from_secs(5),
        "the writers filled the cache",
        || c.entry_count() > 1_000,
    )
    .await;
    let mut yielded = 0;
    for _ in 0..200 {
        let mut seen = HashSet::new();
        for (k, v) in &c {
            assert!(seen.insert(k), "{k} twice in one pass");
            assert_eq!(v, k ^ 0xabcd, "a value of another key");
            yielded += 1;
        }
        tokio::task::yield_now().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(yielded > 0);
    // A loop that removes every key it visits ends, and empties the cache.
    for (k, _) in c.iter() {
        c.remove(&k);
    }
    assert_eq!(c.iter().count(), 0);
    wait_until(Duration::from_secs(5), "the removals are done", || {
        c.entry_count() == 0
    })
    .await;
}
