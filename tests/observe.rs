//! Time-to-idle, the removal listener and channel, statistics and the stats line.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{advance, logged, settle, taken, wait_until};
use ebb_cache::{Cache, RemovalCause};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn idle_entries_expire_and_reads_and_writes_extend_them() {
    let c: Cache<u64, u64> = Cache::builder()
        .time_to_idle(10 * SEC)
        .tick(100 * MS)
        .build();
    c.insert(1, 1);
    c.insert(2, 2);
    advance(8 * SEC).await;
    assert_eq!(c.get(&1), Some(1)); // read: idle from t = 8 s
    c.insert(2, 20); // write: idle from t = 8 s
    advance(9 * SEC).await; // t = 17 s
    assert_eq!((c.get(&1), c.get(&2)), (Some(1), Some(20)));
    advance(10 * SEC - MS).await; // t = 27 s - 1 ms: 10 s - 1 ms idle
    assert_eq!(c.entry_count(), 2);
    assert!(
        c.contains_key(&1),
        "contains_key does not count as an access"
    );
    advance(MS).await; // t = 27 s: idle for exactly 10 s
    assert_eq!((c.get(&1), c.get(&2)), (None, None));
    advance(100 * MS).await; // within one tick, with no calls
    assert_eq!(c.entry_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_untouched_idle_entry_leaves_within_one_tick_with_no_calls() {
    let (c, log) = logged(Cache::builder().time_to_idle(5 * SEC).tick(SEC));
    c.insert(1, 1);
    advance(5 * SEC - MS).await;
    assert!(taken(&log).is_empty());
    advance(SEC + MS).await;
    assert_eq!(taken(&log), vec![(1, 1, RemovalCause::Expired)]);
    assert_eq!(c.entry_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn ttl_caps_time_to_idle() {
    let c: Cache<u64, u64> = Cache::builder()
        .time_to_live(10 * SEC)
        .time_to_idle(4 * SEC)
        .tick(100 * MS)
        .build();
    c.insert(1, 1);
    c.insert_with_ttl(2, 2, 5 * SEC);
    for t in 1..=9 {
        advance(SEC).await;
        assert!(c.get(&1).is_some(), "kept alive by reads at t = {t} s");
        // Key 2's own TTL (5 s) caps its idle deadline.
        assert_eq!(c.get(&2).is_some(), t < 5, "key 2 at t = {t} s");
    }
    advance(SEC - MS).await; // t = 10 s - 1 ms: idle only 1 s, but the TTL is near
    assert_eq!(c.get(&1), Some(1));
    advance(MS).await;
    assert_eq!(c.get(&1), None, "reads cannot extend past the TTL");
    advance(100 * MS).await;
    assert_eq!(c.entry_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn one_notification_per_removal_with_its_cause() {
    let (c, log) = logged(Cache::builder().time_to_live(10 * SEC).tick(100 * MS));
    c.insert(1, 1);
    c.insert(1, 11); // Replaced
    c.insert(2, 2);
    assert_eq!(c.remove(&2), Some(2)); // Explicit
    assert_eq!(c.remove(&2), None); // nothing to report
    c.insert(3, 3);
    c.insert_with_ttl(3, 33, Duration::ZERO); // Explicit
    c.insert(4, 4);
    assert_eq!(
        taken(&log),
        vec![
            (1, 1, RemovalCause::Replaced),
            (2, 2, RemovalCause::Explicit),
            (3, 3, RemovalCause::Explicit),
        ]
    );
    // Expired, from the task, with no calls.
    advance(10 * SEC + 100 * MS).await;
    let mut expired = taken(&log);
    expired.sort_unstable_by_key(|(k, _, _)| *k);
    assert_eq!(
        expired,
        vec![
            (1, 11, RemovalCause::Expired),
            (4, 4, RemovalCause::Expired)
        ]
    );
    // invalidate_all: Explicit, from the task's sweep.
    c.insert(5, 5);
    c.invalidate_all();
    settle().await;
    assert_eq!(taken(&log), vec![(5, 5, RemovalCause::Explicit)]);
    advance(20 * SEC).await;
    assert!(taken(&log).is_empty(), "nothing reported twice");
}

#[tokio::test(start_paused = true)]
async fn an_insert_over_an_expired_entry_reports_it_once_as_expired() {
    // A 60 s tick: the task will not have removed the entry when the insert lands.
    let (c, log) = logged(Cache::builder().time_to_live(SEC).tick(60 * SEC));
    c.insert(1, 1);
    advance(2 * SEC).await;
    c.insert(1, 2);
    assert_eq!(taken(&log), vec![(1, 1, RemovalCause::Expired)]);
    assert_eq!(c.get(&1), Some(2), "the new value is in");
    advance(60 * SEC).await;
    assert_eq!(
        taken(&log),
        vec![(1, 2, RemovalCause::Expired)],
        "reported once, not the old one again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_listener_can_write_back_through_a_weak_handle() {
    let slot: Arc<Mutex<Option<ebb_cache::WeakCache<u64, u64>>>> = Arc::default();
    let weak = Arc::clone(&slot);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let c: Cache<u64, u64> = Cache::builder()
        .time_to_live(SEC)
        .tick(100 * MS)
        .eviction_listener(move |k, v, cause| {
            counter.fetch_add(1, Ordering::SeqCst);
            if cause == RemovalCause::Expired && k < 1000 {
                // Re-insert under another key from inside the listener.
                if let Some(cache) = weak.lock().unwrap().as_ref().and_then(|w| w.upgrade()) {
                    cache.insert(k + 1000, v);
                    cache.remove(&(k + 5000));
                }
            }
        })
        .build();
    *slot.lock().unwrap() = Some(c.downgrade());
    settle().await;
    let base = common::alive_tasks();
    for k in 0..10 {
        c.insert(k, k);
    }
    advance(SEC + 100 * MS).await;
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    assert_eq!(c.entry_count(), 10, "the listener's inserts landed");
    assert_eq!(c.get(&1001), Some(1));
    let weak = c.downgrade();
    drop(c);
    settle().await;
    assert!(
        weak.upgrade().is_none(),
        "the listener's weak handle keeps nothing alive"
    );
    assert_eq!(common::alive_tasks(), base - 1, "the task ended");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_listener_does_not_stop_later_expiries() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let c: Cache<u64, u64> = Cache::builder()
        .time_to_live(SEC)
        .tick(100 * MS)
        .eviction_listener(move |k, _, _| {
            counter.fetch_add(1, Ordering::SeqCst);
            if k % 2 == 0 {
                panic!("listener bug on key {k}");
            }
        })
        .build();
    for k in 0..10 {
        c.insert(k, k);
    }
    advance(SEC + 100 * MS).await;
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    for k in 10..20 {
        c.insert(k, k);
    }
    advance(SEC + 100 * MS).await;
    assert_eq!(calls.load(Ordering::SeqCst), 20, "the task kept running");
    assert_eq!(c.entry_count(), 0);
    c.remove(&1); // and a panic on a user thread is caught too
    c.insert(2, 2);
    assert_eq!(c.remove(&2), Some(2));
}

#[tokio::test(start_paused = true)]
async fn the_channel_carries_removals_and_drops_when_full() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let c: Cache<u64, u64> = Cache::builder()
        .time_to_live(SEC)
        .record_stats()
        .eviction_channel(tx)
        .build();
    for k in 0..10 {
        c.insert(k, k);
    }
    advance(2 * SEC).await;
    let mut got = Vec::new();
    while let Ok(r) = rx.try_recv() {
        assert_eq!(r.cause, RemovalCause::Expired);
        got.push(r.key);
    }
    assert_eq!(got.len(), 4, "the channel holds 4");
    assert_eq!(
        c.stats().notifications_dropped,
        6,
        "the rest were dropped, and counted"
    );
    assert_eq!(c.stats().expired, 10);
    drop(rx);
    c.insert(1, 1);
    c.remove(&1); // a closed channel is not an error
}

#[tokio::test(start_paused = true)]
async fn stats_count_the_workload() {
    let c: Cache<u64, u64> = Cache::builder()
        .time_to_live(10 * SEC)
        .tick(100 * MS)
        .record_stats()
        .build();
    for k in 0..100 {
        c.insert(k, k); // 100 inserts
    }
    for k in 0..50 {
        c.insert(k, k + 1); // 50 updates, 50 replaced
    }
    for k in 0..150 {
        c.get(&k); // 100 hits, 50 misses
    }
    for k in 90..100 {
        c.remove(&k); // 10 explicit
    }
    assert_eq!(c.get_with(500, async { 5 }).await, 5); // a miss and a load
    assert_eq!(
        c.try_get_with(501, async { Err::<u64, _>(()) }).await,
        Err(Arc::new(()))
    );
    tokio::time::sleep(10 * SEC + 200 * MS).await; // 91 expire, the task waking on time
    settle().await;
    let s = c.stats();
    assert_eq!((s.hits, s.misses), (100, 52));
    assert_eq!((s.inserts, s.updates), (101, 50));
    assert_eq!((s.replaced, s.explicit, s.expired), (50, 10, 91));
    assert_eq!((s.load_successes, s.load_failures), (1, 1));
    assert_eq!(s.entry_count, 0);
    assert!(s.expiry_lag_max <= 100 * MS, "{s:?}");
    assert!(s.expiry_lag_mean <= s.expiry_lag_max);
    // Without record_stats, only entry_count and the lag are kept.
    let plain: Cache<u64, u64> = Cache::builder().build();
    plain.insert(1, 1);
    plain.get(&1);
    assert_eq!((plain.stats().hits, plain.stats().entry_count), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_churn_loses_and_duplicates_no_notification() {
    let notified = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&notified);
    let c: Cache<u64, u64> = Cache::builder()
        .time_to_live(5 * MS)
        .tick(MS)
        .eviction_listener(move |_, _, _| {
            counter.fetch_add(1, Ordering::Relaxed);
        })
        .build();
    let writes = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            let (c, writes) = (c.clone(), Arc::clone(&writes));
            tokio::spawn(async move {
                for i in 0..20_000u64 {
                    let k = (i * 7 + t) % 64;
                    match i % 5 {
                        0 => {
                            c.remove(&k);
                        }
                        1 => {
                            c.insert_with_ttl(k, i, MS * (i % 3 + 1) as u32);
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            c.insert(k, i);
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if i % 1000 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let writes = writes.load(Ordering::Relaxed);
    // Every write created one entry; each left through exactly one notification or is held.
    let balanced = || writes == notified.load(Ordering::Relaxed) + c.entry_count() as usize;
    assert!(balanced(), "right after the churn");
    wait_until(Duration::from_secs(10), "everything to expire", || {
        c.entry_count() == 0
    })
    .await;
    // The task reports a batch of removals once it has taken them all out of the map: the
    // last notifications may come just after the count reaches zero.
    wait_until(
        Duration::from_secs(10),
        "every removal to be notified",
        || notified.load(Ordering::Relaxed) >= writes,
    )
    .await;
    assert_eq!(notified.load(Ordering::Relaxed), writes);
}

/// A tracing layer that keeps the stats lines' fields.
mod capture {
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, Layer};

    #[derive(Default, Debug, Clone)]
    pub struct Line {
        pub message: String,
        pub qpm: u64,
        pub hit: u64,
        pub miss: u64,
        pub elements: u64,
    }

    impl Visit for Line {
        fn record_u64(&mut self, field: &Field, value: u64) {
            match field.name() {
                "qpm" => self.qpm = value,
                "hit" => self.hit = value,
                "miss" => self.miss = value,
                "elements" => self.elements = value,
                _ => {}
            }
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.message = format!("{value:?}");
            }
        }
    }

    pub struct Lines(pub Arc<Mutex<Vec<Line>>>);

    impl<S: tracing::Subscriber> Layer<S> for Lines {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            if *event.metadata().level() == tracing::Level::INFO {
                let mut line = Line::default();
                event.record(&mut line);
                self.0.lock().unwrap().push(line);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_stats_line_comes_at_its_interval_with_the_workload() {
    use tracing_subscriber::layer::SubscriberExt;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(capture::Lines(Arc::clone(&lines)));
    let _default = tracing::subscriber::set_default(subscriber);

    let c: Cache<u64, u64> = Cache::builder()
        .name("users")
        .stats_interval(60 * SEC)
        .build();
    for k in 0..30 {
        c.insert(k, k);
    }
    for k in 0..40 {
        c.get(&k); // 30 hits, 10 misses
    }
    advance(60 * SEC).await;
    {
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert_eq!((l.qpm, l.hit, l.miss, l.elements), (40, 30, 10, 30));
        assert!(
            l.message.contains(
                "cache(users) - qpm: 40, hit_ratio: 75.0%, elements: 30, hit: 30, miss: 10"
            ),
            "{}",
            l.message
        );
    }
    // A quiet minute logs nothing; the next busy one counts only itself.
    advance(60 * SEC).await;
    assert_eq!(lines.lock().unwrap().len(), 1);
    c.get(&1);
    advance(60 * SEC).await;
    let lines = lines.lock().unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!((lines[1].qpm, lines[1].hit, lines[1].miss), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn stats_serialize_with_the_serde_feature() {
    let c: Cache<u64, u64> = Cache::builder().record_stats().build();
    c.insert(1, 1);
    assert_eq!(c.get(&1), Some(1));
    assert_eq!(c.get(&2), None);
    let json = serde_json::to_value(c.stats()).unwrap();
    assert_eq!(
        (json["hits"].as_u64(), json["misses"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(json["inserts"], 1);
    assert_eq!(json["entry_count"], 1);
    assert_eq!(json["weighted_size"], 1);
    assert!(json["expiry_lag_max"].is_object(), "{json}");
}
