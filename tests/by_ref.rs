//! The by-reference loading methods and the fallible loader that picks its TTL: a hit copies
//! nothing, a miss loads once under an owned copy of the key, single-flight with the owned
//! methods.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{advance, settle};
use ebb_cache::Cache;

/// Counts this thread's allocations.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[tokio::test]
async fn a_by_ref_hit_on_a_string_key_allocates_nothing() {
    let cache: Cache<String, u64> = Cache::builder().record_stats().build();
    cache.insert("user:42".to_string(), 7);
    // Warm up whatever a first call sets up (the thread's stats stripe).
    assert_eq!(cache.get_with_by_ref("user:42", async { 0 }).await, 7);
    let before = allocations();
    for _ in 0..1_000 {
        assert_eq!(cache.get_with_by_ref("user:42", async { 0 }).await, 7);
        let ok = cache
            .try_get_with_by_ref("user:42", async { Ok::<_, ()>(0) })
            .await;
        assert_eq!(ok, Ok(7));
        let some = cache
            .optionally_get_with_by_ref("user:42", async { None })
            .await;
        assert_eq!(some, Some(7));
    }
    assert_eq!(allocations() - before, 0, "hits allocated");
    // The owned method allocates the key on every call, to compare.
    let before = allocations();
    for _ in 0..10 {
        assert_eq!(cache.get_with("user:42".to_string(), async { 0 }).await, 7);
    }
    assert!(allocations() - before >= 10);
    assert_eq!(cache.stats().hits, 1 + 3_000 + 10);
}

#[tokio::test(start_paused = true)]
async fn a_by_ref_miss_loads_once_and_shares_the_flight_with_owned_callers() {
    let cache: Cache<String, u64> = Cache::builder().build();
    let loads = Arc::new(AtomicUsize::new(0));
    let load = |n: u64| {
        let loads = Arc::clone(&loads);
        async move {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            n
        }
    };
    let (a, b, c) = tokio::join!(
        cache.get_with_by_ref("k", load(1)),
        cache.get_with("k".to_string(), load(2)),
        cache.get_with_by_ref("k", load(3)),
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!((a, b, c), (1, 1, 1));
    assert_eq!(cache.get("k"), Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_by_ref_load_cancelled_hands_the_key_over() {
    let cache: Cache<String, u64> = Cache::builder().build();
    let first = cache.get_with_by_ref("k", async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        1
    });
    let timed_out = tokio::time::timeout(Duration::from_millis(5), first).await;
    assert!(timed_out.is_err());
    assert_eq!(cache.get_with_by_ref("k", async { 2 }).await, 2);
}

#[tokio::test(start_paused = true)]
async fn try_get_with_expiry_stores_for_the_loaders_ttl_and_shares_its_errors() {
    let cache: Cache<u32, String> = Cache::builder()
        .time_to_live(Duration::from_secs(3600))
        .tick(Duration::from_millis(10))
        .build();
    let failed = cache
        .try_get_with_expiry(1, async { Err::<(String, Option<Duration>), _>("down") })
        .await;
    assert_eq!(*failed.unwrap_err(), "down");
    assert_eq!(cache.get(&1), None, "an error is not cached");
    let ok = cache
        .try_get_with_expiry(1, async {
            Ok::<_, &str>(("short".to_string(), Some(Duration::from_secs(1))))
        })
        .await;
    assert_eq!(ok.unwrap(), "short");
    let default = cache
        .try_get_with_expiry(2, async { Ok::<_, &str>(("long".to_string(), None)) })
        .await;
    assert_eq!(default.unwrap(), "long");
    advance(Duration::from_millis(1_020)).await;
    settle().await;
    assert_eq!(cache.get(&1), None, "the loader's TTL");
    assert_eq!(cache.get(&2).as_deref(), Some("long"), "the cache's TTL");
    assert_eq!(cache.entry_count(), 1, "removed, not only hidden");
}
