//! A per-entry `Expiry`: create, read and update each pick their own lifetime, honoured to
//! the tick; the cache's TTL stays an upper bound; a panicking read hook costs only that
//! read's deadline change.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{advance, settle};
use ebb_cache::{BuildError, Cache, Expiry};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

/// Create: 1 s; read: 5 s from the read; update: 2 s from the update. Key 13's read hook
/// panics.
struct Three {
    reads: Arc<AtomicUsize>,
}

impl Expiry<u32, u32> for Three {
    fn expire_after_create(&self, _k: &u32, _v: &u32, _at: Instant) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
    fn expire_after_read(
        &self,
        k: &u32,
        _v: &u32,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        assert_ne!(*k, 13, "a read hook that panics");
        Some(Duration::from_secs(5))
    }
    fn expire_after_update(
        &self,
        _k: &u32,
        _v: &u32,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_secs(2))
    }
    fn observes_reads(&self) -> bool {
        true
    }
}

fn cache(reads: &Arc<AtomicUsize>) -> Cache<u32, u32> {
    Cache::builder()
        .tick(Duration::from_millis(10))
        .expire_after(Three {
            reads: Arc::clone(reads),
        })
        .build()
}

/// Whether `key` is readable, without a read (a read would move its deadline).
fn held(c: &Cache<u32, u32>, key: u32) -> bool {
    c.contains_key(&key)
}

#[tokio::test(start_paused = true)]
async fn create_read_and_update_each_set_the_deadline() {
    let reads = Arc::new(AtomicUsize::new(0));
    let c = cache(&reads);
    c.insert(1, 1); // expires at 1 s
    c.insert(2, 2); // read at 0.5 s: expires at 5.5 s
    c.insert(3, 3); // updated at 0.5 s: expires at 2.5 s
    advance(500 * MS).await;
    assert_eq!(c.get(&2), Some(2));
    c.insert(3, 30);
    advance(490 * MS).await; // 0.99 s
    assert!(held(&c, 1));
    advance(20 * MS).await; // 1.01 s
    settle().await;
    assert!(!held(&c, 1), "created: 1 s");
    assert_eq!(c.entry_count(), 2, "and the task removed it within a tick");
    advance(1_480 * MS).await; // 2.49 s
    assert!(held(&c, 3));
    advance(20 * MS).await; // 2.51 s
    settle().await;
    assert!(!held(&c, 3), "updated: 2 s after the update");
    assert_eq!(c.entry_count(), 1);
    advance(2_980 * MS).await; // 5.49 s
    assert!(held(&c, 2));
    advance(20 * MS).await; // 5.51 s
    settle().await;
    assert!(!held(&c, 2), "read: 5 s after the read");
    assert_eq!(c.entry_count(), 0);
    assert_eq!(
        reads.load(Ordering::Relaxed),
        1,
        "contains_key is not a read"
    );
}

/// Reads shorten a deadline as well as lengthen it.
struct Shrinking;

impl Expiry<u32, u32> for Shrinking {
    fn expire_after_read(
        &self,
        _k: &u32,
        _v: &u32,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_millis(100))
    }
    fn observes_reads(&self) -> bool {
        true
    }
}

#[tokio::test(start_paused = true)]
async fn a_read_may_bring_a_deadline_forward_and_the_task_honours_it() {
    let c: Cache<u32, u32> = Cache::builder()
        .tick(Duration::from_millis(10))
        .time_to_live(Duration::from_secs(3600))
        .expire_after(Shrinking)
        .build();
    c.insert(1, 1);
    settle().await;
    assert_eq!(c.get(&1), Some(1)); // now expires 100 ms from here, not in an hour
    advance(90 * MS).await;
    assert!(c.contains_key(&1));
    advance(30 * MS).await;
    settle().await;
    assert_eq!(
        c.entry_count(),
        0,
        "removed by the task on the earlier deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn the_caches_time_to_live_bounds_what_reads_extend() {
    let c: Cache<u32, u32> = Cache::builder()
        .tick(Duration::from_millis(10))
        .time_to_live(Duration::from_secs(1))
        .expire_after(Three {
            reads: Arc::default(),
        })
        .build();
    c.insert(1, 1);
    advance(500 * MS).await;
    assert_eq!(c.get(&1), Some(1)); // asks for 5 s; the TTL says 1 s from the write
    advance(510 * MS).await;
    settle().await;
    assert!(!c.contains_key(&1));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_read_hook_costs_only_that_reads_deadline_change() {
    let reads = Arc::new(AtomicUsize::new(0));
    let c = cache(&reads);
    c.insert(13, 13);
    c.insert(14, 14);
    assert_eq!(c.get(&13), Some(13), "the read itself succeeds");
    assert_eq!(c.get(&14), Some(14));
    advance(1_010 * MS).await;
    settle().await;
    assert!(!c.contains_key(&13), "its deadline stayed at 1 s");
    assert!(c.contains_key(&14), "the other read moved its own");
    // The task goes on.
    c.insert(15, 15);
    advance(1_010 * MS).await;
    settle().await;
    assert!(!c.contains_key(&15));
}

/// `None` everywhere: create gives no deadline of its own; update keeps the deadline.
struct Silent;
impl Expiry<u32, u32> for Silent {}

#[tokio::test(start_paused = true)]
async fn none_means_the_caches_ttl_on_create_and_the_same_deadline_on_update() {
    let c: Cache<u32, u32> = Cache::builder()
        .tick(Duration::from_millis(10))
        .time_to_live(Duration::from_secs(1))
        .expire_after(Silent)
        .build();
    c.insert(1, 1);
    advance(600 * MS).await;
    c.insert(1, 2); // an update that keeps the deadline: 1 s from the first write
    advance(410 * MS).await;
    settle().await;
    assert!(!c.contains_key(&1));
    // Loads are creates.
    assert_eq!(c.get_with(2, async { 2 }).await, 2);
    advance(1_010 * MS).await;
    settle().await;
    assert!(!c.contains_key(&2));
}

#[tokio::test(start_paused = true)]
async fn loads_and_computes_ask_the_policy_too() {
    let c = cache(&Arc::default());
    assert_eq!(c.get_with(1, async { 1 }).await, 1);
    c.entry(2).and_upsert_with(|_| async { 2 }).await;
    c.entry(2).and_upsert_with(|_| async { 3 }).await; // update: 2 s
    advance(1_010 * MS).await;
    settle().await;
    assert!(!c.contains_key(&1), "a load is a create: 1 s");
    assert!(c.contains_key(&2));
    advance(1_000 * MS).await;
    settle().await;
    assert!(!c.contains_key(&2), "a compute's update: 2 s");
}

#[tokio::test]
async fn expire_after_and_time_to_idle_do_not_mix() {
    let err = Cache::<u32, u32>::builder()
        .time_to_idle(Duration::from_secs(1))
        .expire_after(Silent)
        .try_build()
        .unwrap_err();
    assert_eq!(err, BuildError::ExpiryWithTimeToIdle);
    assert!(err.to_string().contains("use one"));
}

/// An `Expiry` whose create and update hooks panic for key 13.
struct Broken;

impl Expiry<u32, u32> for Broken {
    fn expire_after_create(&self, k: &u32, _v: &u32, _at: Instant) -> Option<Duration> {
        assert_ne!(*k, 13, "a create hook that panics");
        Some(Duration::from_secs(1))
    }
    fn expire_after_update(
        &self,
        k: &u32,
        _v: &u32,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        assert_ne!(*k, 13, "an update hook that panics");
        None
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_create_or_update_hook_costs_that_write_only() {
    let c: Cache<u32, u32> = Cache::builder()
        .tick(Duration::from_millis(10))
        .expire_after(Broken)
        .build();
    let insert = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.insert(13, 1)));
    assert!(insert.is_err());
    assert_eq!(c.get(&13), None, "nothing was written");
    // A load that panics as its value is stored hands the key over.
    let c2 = c.clone();
    let load = tokio::spawn(async move { c2.get_with(13, async { 1 }).await });
    assert!(load.await.is_err());
    assert_eq!(c.__internals().loads, 0, "no flight left");
    // So does a compute.
    let c3 = c.clone();
    let compute = tokio::spawn(async move {
        c3.entry(13)
            .and_compute_with(|_| async { ebb_cache::Op::Put(1) })
            .await
    });
    assert!(compute.await.is_err());
    assert_eq!(c.__internals().loads, 0);
    // Other keys, and the task, go on.
    c.insert(1, 1);
    assert_eq!(c.get(&1), Some(1));
    advance(1_010 * MS).await;
    settle().await;
    assert_eq!(c.entry_count(), 0);
}
