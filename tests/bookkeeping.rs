//! Bounded bookkeeping, idle wake-ups and yielding, observed through the task's counters.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{advance, settle};
use ebb_cache::Cache;

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// Whether the hand-off queues at most one record in a map and one in a list per key, for
/// `keys` keys.
fn per_key(records: usize, listed: usize, keys: usize) -> bool {
    records - listed <= keys && listed <= keys
}

#[tokio::test(start_paused = true)]
async fn an_idle_empty_cache_does_not_wake() {
    let c: Cache<u64, u64> = Cache::builder().time_to_live(SEC).tick(MS).build();
    settle().await;
    let before = c.__internals().wakeups;
    for _ in 0..60 {
        advance(60 * SEC).await;
    }
    assert!(
        c.__internals().wakeups - before <= 2,
        "{:?}",
        c.__internals()
    );
}

#[tokio::test(start_paused = true)]
async fn one_far_entry_costs_a_handful_of_wakeups() {
    let c: Cache<u64, u64> = Cache::builder().tick(MS).build();
    settle().await;
    c.insert_with_ttl(1, 1, 3600 * SEC);
    settle().await;
    let before = c.__internals().wakeups;
    // Let the runtime's auto-advance jump from timer to timer.
    tokio::time::sleep(3600 * SEC + 10 * MS).await;
    settle().await;
    assert_eq!(c.entry_count(), 0);
    let woke = c.__internals().wakeups - before;
    assert!(
        woke <= 300,
        "{woke} wake-ups for one 1 h entry at a 1 ms tick"
    );
    assert!(woke >= 1);
}

#[tokio::test(start_paused = true)]
async fn a_million_overwrites_of_one_key_leave_one_timer() {
    let c: Cache<u64, u64> = Cache::builder().time_to_live(300 * SEC).tick(MS).build();
    for i in 0..1_000_000u64 {
        if i % 10_000 == 0 {
            advance(MS).await; // deadlines move later as time passes
        }
        if i % 3 == 0 {
            // an earlier deadline than the current one: needs a hand-off
            c.insert_with_ttl(7, i, 200 * SEC);
        } else {
            c.insert(7, i);
        }
        if i % 1000 == 0 {
            let internals = c.__internals();
            assert!(
                per_key(internals.records, internals.listed, 1),
                "{internals:?}"
            );
        }
    }
    advance(MS).await;
    // The last overwrite may still wait in the hand-off: records for deadlines later than
    // the task's next wake are drained at that wake, not sooner.
    let internals = c.__internals();
    assert_eq!(internals.nodes, 1, "{internals:?}");
    assert!(
        per_key(internals.records, internals.listed, 1),
        "{internals:?}"
    );
    assert_eq!(c.entry_count(), 1);
    // The entry still expires at its latest deadline, and nothing is left behind.
    advance(300 * SEC).await;
    assert_eq!(c.entry_count(), 0);
    assert_eq!((c.__internals().nodes, c.__internals().records), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn insert_remove_churn_leaves_one_timer_per_live_key() {
    let c: Cache<u64, u64> = Cache::builder().time_to_live(300 * SEC).tick(MS).build();
    for i in 0..1_000_000u64 {
        let k = i % 1000;
        c.insert(k, i);
        if i % 5 != 0 {
            c.remove(&k);
        }
        if i % 100_000 == 0 {
            advance(MS).await;
        }
    }
    let internals = c.__internals();
    assert!(
        per_key(internals.records, internals.listed, 1000),
        "{internals:?}"
    );
    advance(MS).await;
    // At most one wheel node and one hand-off record per key ever written.
    let internals = c.__internals();
    assert!(internals.nodes <= 1000, "{internals:?}");
    assert!(
        per_key(internals.records, internals.listed, 1000),
        "{internals:?}"
    );
    assert_eq!(c.entry_count(), 200);
    // Once the deadlines pass, everything is gone: no dead node outlives one drain.
    advance(301 * SEC).await;
    assert_eq!(c.entry_count(), 0);
    assert_eq!((c.__internals().nodes, c.__internals().records), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn churn_over_distinct_keys_keeps_the_hand_off_bounded() {
    let c: Cache<u64, u64> = Cache::builder().time_to_live(300 * SEC).tick(MS).build();
    settle().await;
    let mut max_records = 0;
    for k in 0..1_000_000u64 {
        c.insert(k, k);
        c.remove(&k);
        if k % 1024 == 0 {
            settle().await; // the runtime gets to run the task now and then
            max_records = max_records.max(c.__internals().records);
        }
    }
    // Full stripes wake the task: records for removed keys do not pile up for a TTL.
    assert!(
        max_records <= 64 * 1024,
        "{max_records} records queued at once"
    );
    settle().await;
    assert_eq!(c.entry_count(), 0);
    assert!(c.__internals().nodes <= 64 * 1024, "{:?}", c.__internals());
}

/// Another task on the runtime, counting how many times it is polled (it yields at once).
fn spawn_counting_task() -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let polls = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&polls);
    let other = tokio::spawn(async move {
        loop {
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
    });
    (polls, other)
}

#[tokio::test(start_paused = true)]
async fn a_million_expiring_at_once_do_not_starve_other_tasks() {
    let c: Cache<u64, u64> = Cache::builder().time_to_live(SEC).tick(MS).build();
    for k in 0..1_000_000 {
        c.insert(k, k);
    }
    let (polls, other) = spawn_counting_task();
    tokio::time::advance(SEC + MS).await;
    // Watch the removal from another task on the same (only) thread.
    let mut seen_partial = 0;
    let start = polls.load(Ordering::Relaxed);
    loop {
        let n = c.entry_count();
        if n == 0 {
            break;
        }
        if n < 1_000_000 {
            seen_partial += 1;
        }
        tokio::task::yield_now().await;
    }
    other.abort();
    let other_polls = polls.load(Ordering::Relaxed) - start;
    assert!(
        seen_partial >= 100,
        "observed removal in progress {seen_partial} times"
    );
    assert!(other_polls >= 100, "the other task ran {other_polls} times");
}

#[tokio::test(start_paused = true)]
async fn filing_yields_every_batch_however_the_keys_spread_over_stripes() {
    // 3,800 new keys: with two cores or more there are four stripes or more, each queueing
    // under 1,024 of them, and the task files them all in one drain. It yields every 1,024
    // nodes all the same (three times here), not only within a stripe.
    let c: Cache<u64, u64> = Cache::builder().time_to_live(60 * SEC).build();
    settle().await;
    let (polls, other) = spawn_counting_task();
    settle().await;
    for k in 0..3_800 {
        c.insert(k, k);
    }
    let start = polls.load(Ordering::Relaxed);
    for _ in 0..1_000 {
        if c.__internals().nodes == 3_800 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let other_polls = polls.load(Ordering::Relaxed) - start;
    other.abort();
    assert_eq!(c.__internals().nodes, 3_800, "{:?}", c.__internals());
    assert!(
        other_polls >= 3,
        "the other task ran {other_polls} times while 3,800 nodes were filed"
    );
}

#[tokio::test(start_paused = true)]
async fn ttl_churn_at_uneven_rates_hands_out_ids_in_proportion_to_live_entries() {
    // Distinct keys, a 50 ms TTL, a 1 ms tick; the write rate swings from ms to ms (a busy
    // period after a quiet one is what outran the writers' pools of free node ids).
    let c: Cache<u64, u64> = Cache::builder().time_to_live(50 * MS).tick(MS).build();
    settle().await;
    let rates = [2000u64, 10, 0, 10, 1500, 3, 10, 700];
    let (mut key, mut most_live) = (0u64, 0u64);
    for ms in 0..600 {
        for _ in 0..rates[ms % rates.len()] {
            c.insert(key, key);
            key += 1;
        }
        most_live = most_live.max(c.entry_count());
        advance(MS).await;
    }
    for _ in 0..60 {
        advance(MS).await;
    }
    assert_eq!(c.entry_count(), 0);
    let internals = c.__internals();
    // Node ids index the wheel's slab: they must follow the live entries, not the number of
    // writes.
    assert!(
        u64::from(internals.node_ids) <= 2 * most_live,
        "{} ids handed out for at most {most_live} live entries ({key} writes): {internals:?}",
        internals.node_ids
    );
    assert_eq!(
        (internals.nodes, internals.records),
        (0, 0),
        "{internals:?}"
    );
    // With no live node, the slab keeps its last chunk (4,096 cells) only.
    assert!(internals.wheel_cells <= 4096, "{internals:?}");
}

/// A key that counts its copies; equal and hashed by its number.
#[derive(Debug)]
struct Counted(u64, Arc<AtomicU64>);

impl PartialEq for Counted {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Counted {}

impl std::hash::Hash for Counted {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.1.fetch_add(1, Ordering::Relaxed);
        Counted(self.0, Arc::clone(&self.1))
    }
}

#[tokio::test(start_paused = true)]
async fn new_keys_reach_the_wheel_and_expire_without_a_copy() {
    let copies = Arc::new(AtomicU64::new(0));
    let c: Cache<Counted, u64> = Cache::builder().time_to_live(SEC).tick(MS).build();
    settle().await;
    for k in 0..10_000 {
        c.insert(Counted(k, Arc::clone(&copies)), k);
    }
    settle().await;
    assert_eq!(c.__internals().nodes, 10_000, "{:?}", c.__internals());
    advance(SEC + 2 * MS).await;
    assert_eq!(c.entry_count(), 0);
    assert_eq!(
        copies.load(Ordering::Relaxed),
        0,
        "the hand-off or the wheel copied keys"
    );
}

/// Let the task work through a large expiry (it yields between batches) until `left` remain.
async fn expired_down_to(c: &Cache<u64, u64>, left: u64) {
    for _ in 0..10_000 {
        if c.entry_count() == left {
            settle().await;
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{} entries left, not {left}", c.entry_count());
}

#[tokio::test(start_paused = true)]
async fn a_burst_that_expires_gives_its_room_back() {
    let c: Cache<u64, u64> = Cache::builder().time_to_live(SEC).tick(MS).build();
    settle().await;
    for k in 0..100_000 {
        c.insert(k, k);
    }
    settle().await;
    let peak = c.__internals();
    assert!(peak.map_capacity >= 100_000, "{peak:?}");
    // A few keys outlive the burst.
    for k in 0..10 {
        c.insert_with_ttl(k, k, 60 * SEC);
    }
    advance(SEC + 2 * MS).await;
    expired_down_to(&c, 10).await;
    let after = c.__internals();
    assert!(
        after.map_capacity <= after.map_shards * 128,
        "the map kept room for {} entries (peak {}) after the burst expired: {after:?}",
        after.map_capacity,
        peak.map_capacity
    );
    // The wheel keeps the chunks of its slab (4,096 cells each) that hold the ten live
    // nodes, and its last.
    assert!(
        after.wheel_cells <= 11 * 4096,
        "the wheel kept {} cells for 10 nodes after the burst expired: {after:?}",
        after.wheel_cells
    );
    assert!(after.node_ids >= 100_000, "ids follow the peak: {after:?}");
    for k in 0..10 {
        assert_eq!(c.get(&k), Some(k));
    }
    // It grows again as before, reusing the burst's ids, and expires again.
    burst_to_empty(&c, 100_000).await;
    let again = c.__internals();
    assert!(
        again.node_ids < after.node_ids + 4096,
        "the second burst took free ids, not fresh ones: {again:?}"
    );
    assert!(again.wheel_cells <= 4096, "{again:?}");
    // With no node left, the task took back what the burst had put in the writers' pools
    // (4 bytes an id there, a bit in the reserve), and lost none of them: a third burst
    // takes free ids again.
    assert!(again.handoff_room <= 1024, "{again:?}");
    burst_to_empty(&c, 100_000).await;
    let third = c.__internals();
    assert!(
        third.node_ids < after.node_ids + 4096,
        "the third burst took free ids, not fresh ones: {third:?}"
    );
}

/// Writes keys `0..n` into `c` (a cache with a one-second TTL), checks they are there, and
/// lets them all expire.
async fn burst_to_empty(c: &Cache<u64, u64>, n: u64) {
    for k in 0..n {
        c.insert(k, k);
    }
    assert_eq!(c.entry_count(), n);
    assert_eq!(c.get(&(n - 1)), Some(n - 1));
    all_expire(c).await;
}

/// Lets a one-second TTL run out, and waits for the task to remove every entry.
async fn all_expire(c: &Cache<u64, u64>) {
    advance(SEC + 2 * MS).await;
    expired_down_to(c, 0).await;
}

/// A cache with a one-second TTL and a 1 ms tick, its task started.
async fn one_second_cache() -> Cache<u64, u64> {
    let c = Cache::builder().time_to_live(SEC).tick(MS).build();
    settle().await;
    c
}

/// Writes `n` keys new to burst number `round`, and lets the task drain them.
async fn drained_burst(c: &Cache<u64, u64>, round: u64, n: u64) {
    for k in 0..n {
        c.insert(round * n + k, k);
    }
    settle().await;
}

#[tokio::test(start_paused = true)]
async fn stripes_that_go_quiet_give_back_their_buffers() {
    // Bursts small enough that the task keeps its buffers for the next drain (at most 4,096
    // records a stripe), then quiet: the stripes hold no room once the entries expired
    // (1,024 list items in all, without the rule).
    let c = one_second_cache().await;
    for round in 0..10 {
        drained_burst(&c, round, 2000).await;
    }
    all_expire(&c).await;
    assert_eq!(c.__internals().handoff_room, 0, "{:?}", c.__internals());
}

#[tokio::test(start_paused = true)]
async fn bursts_that_empty_the_wheel_again_and_again_reuse_their_ids() {
    // Each burst empties the wheel, and the task then takes the writers' pools back: no id
    // may be lost on the way, or the ids (and the slab) would grow with the bursts.
    let c = one_second_cache().await;
    for round in 0..200 {
        drained_burst(&c, round, 1000).await;
        all_expire(&c).await;
    }
    let internals = c.__internals();
    assert!(
        internals.node_ids <= 2000,
        "{} ids handed out for bursts of 1,000 entries: {internals:?}",
        internals.node_ids
    );
}

#[tokio::test(start_paused = true)]
async fn the_initial_capacity_is_kept_through_a_burst() {
    let c: Cache<u64, u64> = Cache::builder()
        .time_to_live(SEC)
        .tick(MS)
        .initial_capacity(50_000)
        .build();
    settle().await;
    let initial = c.__internals().map_capacity;
    assert!(initial >= 50_000, "{:?}", c.__internals());
    for k in 0..200_000 {
        c.insert(k, k);
    }
    advance(SEC + 2 * MS).await;
    expired_down_to(&c, 0).await;
    let after = c.__internals().map_capacity;
    assert!(
        (initial..initial * 2).contains(&after),
        "room for {after} entries after the burst, {initial} at first"
    );
}
