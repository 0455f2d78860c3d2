//! Expiry on paused time: exact reads, prompt removal with no traffic, per-entry TTL,
//! overwrites, zero and huge TTLs, jitter.

mod common;

use std::time::Duration;

use common::{advance, settle};
use ebb_cache::{BuildError, Cache};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);
const NS: Duration = Duration::from_nanos(1);

fn cache(ttl: Duration, tick: Duration) -> Cache<u64, u64> {
    Cache::builder().time_to_live(ttl).tick(tick).build()
}

#[tokio::test(start_paused = true)]
async fn get_is_exact_before_the_task_removes_anything() {
    // A 60 s tick: the task will not look before t = 60 s, but reads must stop at 10 s.
    let c = cache(10 * SEC, 60 * SEC);
    c.insert(1, 10);
    advance(10 * SEC - NS).await;
    assert_eq!(c.get(&1), Some(10));
    assert!(c.contains_key(&1));
    advance(NS).await;
    assert_eq!(c.get(&1), None, "returned at its deadline");
    assert!(!c.contains_key(&1));
    assert_eq!(c.entry_count(), 1, "the task should not have run yet");
    assert_eq!(c.remove(&1), None, "remove returns live values only");
}

#[tokio::test(start_paused = true)]
async fn removed_within_one_tick_with_no_calls() {
    let c = cache(10 * SEC, SEC);
    for k in 0..100 {
        c.insert(k, k);
    }
    settle().await;
    advance(10 * SEC - MS).await;
    assert_eq!(c.entry_count(), 100);
    // Deadline + one tick, no calls in between.
    advance(SEC + MS).await;
    assert_eq!(c.entry_count(), 0);
    assert_eq!(c.__internals().nodes, 0);
}

#[tokio::test(start_paused = true)]
async fn removal_lag_is_at_most_one_tick_for_odd_deadlines() {
    let tick = 100 * MS;
    let c: Cache<u64, u64> = Cache::builder().tick(tick).build();
    // Deadlines that fall inside ticks, on tick boundaries, and just after them.
    let ttls = [1u32, 99, 100, 101, 150, 199, 200, 201, 1_234, 2_000, 3_001];
    for (k, ms) in ttls.iter().enumerate() {
        c.insert_with_ttl(k as u64, u64::from(*ms), *ms * MS);
    }
    settle().await;
    let mut now = Duration::ZERO;
    while now < Duration::from_millis(3_200) {
        advance(MS).await;
        now += MS;
        for (k, ms) in ttls.iter().enumerate() {
            let deadline = *ms * MS;
            let present = c.get(&(k as u64)).is_some();
            assert_eq!(present, now < deadline, "key {k} at {now:?}");
        }
        // Every entry past deadline + tick is gone from the count.
        let must_be_gone = ttls.iter().filter(|ms| now >= **ms * MS + tick).count();
        assert!(
            c.entry_count() as usize <= ttls.len() - must_be_gone,
            "at {now:?}: {} entries, {} should be gone",
            c.entry_count(),
            must_be_gone
        );
    }
    assert_eq!(c.entry_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn per_entry_ttl_overrides_the_default() {
    let c = cache(10 * SEC, SEC);
    c.insert_with_ttl(1, 1, 3 * SEC);
    c.insert_with_ttl(2, 2, 30 * SEC);
    c.insert(3, 3);
    advance(3 * SEC).await;
    assert_eq!(c.get(&1), None);
    assert_eq!(c.get(&2), Some(2));
    assert_eq!(c.get(&3), Some(3));
    advance(SEC).await;
    assert_eq!(c.entry_count(), 2);
    advance(7 * SEC).await;
    assert_eq!((c.get(&2), c.get(&3)), (Some(2), None));
    assert_eq!(c.entry_count(), 1);
    advance(20 * SEC).await;
    assert_eq!(c.entry_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_overwrite_just_before_the_deadline_survives_with_its_new_ttl() {
    let c = cache(10 * SEC, SEC);
    c.insert(1, 1);
    settle().await;
    advance(10 * SEC - MS).await;
    c.insert(1, 2); // new deadline: 20 s - 1 ms
    advance(2 * SEC).await; // the old node fires and must re-file, not remove
    assert_eq!(c.get(&1), Some(2));
    assert_eq!(c.entry_count(), 1);
    assert_eq!(c.__internals().nodes, 1);
    advance(8 * SEC - 2 * MS).await; // 20 s - 3 ms
    assert_eq!(c.get(&1), Some(2));
    advance(SEC + 3 * MS).await; // 21 s
    assert_eq!(c.get(&1), None);
    assert_eq!(c.entry_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_overwrite_with_a_shorter_ttl_is_removed_at_the_shorter_deadline() {
    let c = cache(100 * SEC, SEC);
    c.insert(1, 1);
    settle().await;
    assert_eq!(c.__internals().nodes, 1);
    c.insert_with_ttl(1, 2, 2 * SEC);
    advance(2 * SEC).await;
    assert_eq!(c.get(&1), None);
    advance(SEC).await;
    assert_eq!(c.entry_count(), 0, "removed at the new, earlier deadline");
    assert_eq!(
        c.__internals().nodes,
        0,
        "the old node was reused, not left behind"
    );
}

#[tokio::test(start_paused = true)]
async fn an_overwrite_without_ttl_never_expires() {
    let c: Cache<u64, u64> = Cache::builder().tick(SEC).build();
    c.insert_with_ttl(1, 1, 2 * SEC);
    settle().await;
    c.insert(1, 2); // no default TTL: no deadline
    advance(5 * SEC).await;
    assert_eq!(c.get(&1), Some(2));
    assert_eq!(
        c.__internals().nodes,
        0,
        "the node was dropped when it fired"
    );
    advance(3600 * SEC).await;
    assert_eq!(c.get(&1), Some(2));
}

#[tokio::test(start_paused = true)]
async fn zero_ttl_stores_nothing_and_removes_the_old_value() {
    let c = cache(10 * SEC, SEC);
    c.insert(1, 1);
    c.insert_with_ttl(1, 2, Duration::ZERO);
    assert_eq!(c.get(&1), None);
    assert_eq!(c.entry_count(), 0);
    c.insert_with_ttl(2, 2, Duration::ZERO);
    assert_eq!(c.entry_count(), 0);
    assert_eq!(
        Cache::<u64, u64>::builder()
            .time_to_live(Duration::ZERO)
            .try_build()
            .unwrap_err(),
        BuildError::ZeroTimeToLive
    );
}

#[tokio::test(start_paused = true)]
async fn huge_ttls_never_expire_and_never_overflow() {
    for tick in [MS, SEC, 60 * SEC] {
        let c: Cache<u64, u64> = Cache::builder()
            .tick(tick)
            .time_to_live(Duration::MAX)
            .build();
        c.insert(1, 1);
        c.insert_with_ttl(2, 2, Duration::MAX);
        c.insert_with_ttl(3, 3, c.horizon());
        c.insert_with_ttl(4, 4, c.horizon() - tick);
        settle().await;
        assert_eq!(c.__internals().nodes, 1, "only key 4 has a deadline");
        advance(Duration::from_secs(86_400 * 365 * 3)).await;
        assert_eq!(c.get(&1), Some(1));
        assert_eq!(c.get(&2), Some(2));
        assert_eq!(c.get(&3), Some(3));
    }
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_default_deadlines_within_bounds() {
    let c: Cache<u64, u64> = Cache::builder()
        .time_to_live(100 * SEC)
        .expiry_jitter(0.1)
        .tick(MS)
        .build();
    for k in 0..1000 {
        c.insert(k, k);
    }
    advance(90 * SEC - MS).await;
    assert_eq!(c.entry_count(), 1000, "nothing before ttl * 0.9");
    advance(10 * SEC).await;
    let left_at_100 = c.entry_count();
    assert!(
        (100..900).contains(&left_at_100),
        "deadlines are spread: {left_at_100} of 1000 left at the nominal TTL"
    );
    advance(10 * SEC + 2 * MS).await;
    assert_eq!(c.entry_count(), 0, "nothing after ttl * 1.1 + one tick");
}

#[tokio::test(start_paused = true)]
async fn jitter_never_touches_a_per_entry_ttl() {
    let c: Cache<u64, u64> = Cache::builder()
        .time_to_live(100 * SEC)
        .expiry_jitter(0.5)
        .tick(MS)
        .build();
    for k in 0..1000 {
        c.insert_with_ttl(k, k, 10 * SEC);
    }
    advance(10 * SEC - NS).await;
    assert_eq!((0..1000).filter(|k| c.get(k).is_some()).count(), 1000);
    advance(NS).await;
    assert_eq!((0..1000).filter(|k| c.get(k).is_some()).count(), 0);
}

#[tokio::test(start_paused = true)]
async fn invalidate_all_hides_everything_at_once_then_sweeps() {
    let c: Cache<u64, u64> = Cache::builder().tick(SEC).build();
    for k in 0..5000 {
        if k % 2 == 0 {
            c.insert(k, k);
        } else {
            c.insert_with_ttl(k, k, 100 * SEC);
        }
    }
    settle().await;
    c.invalidate_all();
    assert!((0..5000).all(|k| c.get(&k).is_none()));
    c.insert(5001, 42); // written after: visible
    assert_eq!(c.get(&5001), Some(42));
    settle().await;
    assert_eq!(
        c.entry_count(),
        1,
        "the task swept the rest without waiting for a tick"
    );
    assert_eq!(c.__internals().nodes, 0, "swept entries' nodes are freed");
    advance(200 * SEC).await;
    assert_eq!(c.get(&5001), Some(42));
}

#[tokio::test(start_paused = true)]
async fn lookups_take_borrowed_keys() {
    let c: Cache<String, u64> = Cache::builder().time_to_live(SEC).build();
    c.insert("a".to_string(), 1);
    assert_eq!(c.get("a"), Some(1));
    assert!(c.contains_key("a"));
    assert_eq!(c.remove("a"), Some(1));
    assert_eq!(c.get("a"), None);
}

#[tokio::test(start_paused = true)]
async fn timer_ids_are_reused_under_churn() {
    // Writers take wheel node ids from pools that the task refills with the ids it freed:
    // churn over a bounded number of live entries must not keep handing out new ids.
    let c = cache(10 * MS, MS);
    for round in 0..200u64 {
        for k in 0..1000 {
            let key = round * 1000 + k;
            c.insert(key, k);
            if k % 7 == 0 {
                // An earlier deadline: a new node, and an orphan once the first is linked.
                c.insert_with_ttl(key, k, 5 * MS);
            }
            if k % 11 == 0 {
                c.remove(&key);
            }
        }
        advance(3 * MS).await;
    }
    advance(20 * MS).await;
    assert_eq!(c.entry_count(), 0);
    assert_eq!(c.__internals().nodes, 0);
    // About four rounds' entries (4,000) are alive at once, out of 200,000 writes.
    let ids = c.__internals().node_ids;
    assert!(ids <= 12_000, "{ids} node ids handed out");
}
