//! Weighted capacity is the cache's, not a shard's: what fits and what is held do not depend
//! on how many policy shards (cores) there are. One write evicts at most a fixed budget of
//! entries; a heavy entry that needs more leaves a bounded debt, which later writes and the
//! expiry task pay off.

mod common;

use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::settle;
use ebb_cache::{Cache, RemovalCause};

/// The shard counts every test runs at: one, the smallest split, and a 16-core machine's.
const SHARDS: [usize; 3] = [1, 2, 64];

/// The most entries one write evicts (`EVICTION_BUDGET` in `src/store/capacity.rs`; the
/// docs say 64).
const BUDGET: usize = 64;

/// A fixed hasher: the policy's admission decisions are the same on every run.
type Fixed = BuildHasherDefault<DefaultHasher>;

/// A cache of `max` weight units whose values weigh what they say, over `shards` policy
/// shards, counting `Size` evictions.
fn cache(max: u64, shards: usize) -> (Cache<u64, u32, Fixed>, Arc<AtomicUsize>) {
    let evicted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&evicted);
    let cache = Cache::builder()
        .hasher(Fixed::default())
        .max_capacity(max)
        .weigher(|_k, v: &u32| *v)
        .eviction_listener(move |_k, _v, cause| {
            if cause == RemovalCause::Size {
                count.fetch_add(1, Ordering::Relaxed);
            }
        })
        .__policy_shards(shards)
        .build();
    (cache, evicted)
}

#[tokio::test(start_paused = true)]
async fn what_fits_does_not_depend_on_the_shard_count() {
    const KIB: u32 = 1024;
    for shards in SHARDS {
        // moka keeps a 500 KiB value in a 1 MiB cache, and a 200 KiB one.
        let (c, evicted) = cache(1 << 20, shards);
        c.insert(1, 500 * KIB);
        c.insert(2, 200 * KIB);
        assert_eq!(c.get(&1), Some(500 * KIB), "{shards} shards");
        assert_eq!(c.get(&2), Some(200 * KIB), "{shards} shards");
        // An entry as heavy as the whole capacity fits, alone.
        let (c, _) = cache(1 << 20, shards);
        c.insert(3, 1 << 20);
        assert_eq!(c.get(&3), Some(1 << 20), "{shards} shards");
        assert_eq!(c.weighted_size(), 1 << 20);
        assert_eq!(evicted.load(Ordering::Relaxed), 0, "{shards} shards");
        // A 32 KiB budget holds sixteen 2 KiB entries (moka held 16; one shard per core held
        // 13 on two cores).
        let (c, evicted) = cache(32 * 1024, shards);
        for k in 0..16 {
            c.insert(k, 2 * KIB);
        }
        assert_eq!(c.entry_count(), 16, "{shards} shards");
        assert_eq!(evicted.load(Ordering::Relaxed), 0, "{shards} shards");
        c.insert(16, 2 * KIB);
        assert!(c.weighted_size() <= 32 * 1024, "{shards} shards");
        assert_eq!(
            c.entry_count(),
            16,
            "{shards} shards: one went for the 17th"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_total_stays_within_the_capacity_when_no_write_needs_more_than_the_budget() {
    const MAX: u64 = 10_000;
    for shards in SHARDS {
        let (c, evicted) = cache(MAX, shards);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Weights 1 to 64: one write never needs more than 64 victims.
            let before = evicted.load(Ordering::Relaxed);
            c.insert(x % 3_000, (x % 64) as u32 + 1);
            let size = c.weighted_size();
            assert!(size <= MAX, "{shards} shards: {size} after write {i}");
            let now = evicted.load(Ordering::Relaxed);
            assert!(
                now - before <= BUDGET,
                "{shards} shards: {} evicted by one write",
                now - before
            );
        }
        assert!(evicted.load(Ordering::Relaxed) > 0, "the cache filled");
        assert_eq!(
            c.__internals().policy_weight,
            Some(c.weighted_size()),
            "{shards} shards: the shared total is the policy's"
        );
    }
}

/// Fill a cache of `max` with `n` entries of `max / n`, then insert a key as heavy as the whole
/// capacity until the policy admits it (it must be asked for more often than the entries it
/// displaces). Checks the bounds after every write; returns the cache and the eviction count.
fn admit_a_heavy_entry(shards: usize) -> (Cache<u64, u32, Fixed>, Arc<AtomicUsize>) {
    const MAX: u64 = 100_000;
    const N: u64 = 1_000;
    let (c, evicted) = cache(MAX, shards);
    for k in 0..N {
        c.insert(k, (MAX / N) as u32);
    }
    assert_eq!(c.weighted_size(), MAX, "{shards} shards: full");
    let mut attempts = 0;
    while c.get(&u64::MAX).is_none() {
        attempts += 1;
        assert!(
            attempts <= 20,
            "{shards} shards: the heavy key never got in"
        );
        let before = evicted.load(Ordering::Relaxed);
        c.insert(u64::MAX, MAX as u32);
        let by_this = evicted.load(Ordering::Relaxed) - before;
        assert!(
            by_this <= BUDGET,
            "{shards} shards: one write evicted {by_this}"
        );
        let size = c.weighted_size();
        assert!(
            size <= 2 * MAX,
            "{shards} shards: {size} is past the margin"
        );
    }
    assert!(
        c.weighted_size() > MAX,
        "{shards} shards: {} victims of 100 cannot make room for 100,000: debt is left",
        BUDGET
    );
    (c, evicted)
}

#[tokio::test(start_paused = true)]
async fn a_heavy_entry_leaves_a_bounded_debt_that_later_writes_pay() {
    for shards in SHARDS {
        // The task does not run between these writes (nothing here awaits).
        let (c, evicted) = admit_a_heavy_entry(shards);
        let mut writes = 0;
        while c.weighted_size() > 100_000 {
            writes += 1;
            // Each light write pays a budget's worth of the debt, with its own weight.
            assert!(
                writes <= 1_000 / BUDGET + 2,
                "{shards} shards: no convergence"
            );
            let before = evicted.load(Ordering::Relaxed);
            c.insert(1_000_000 + writes as u64, 1);
            let by_this = evicted.load(Ordering::Relaxed) - before;
            assert!(
                by_this <= BUDGET,
                "{shards} shards: one write evicted {by_this}"
            );
            assert!(c.weighted_size() <= 200_000);
        }
        assert_eq!(c.__internals().policy_weight, Some(c.weighted_size()));
    }
}

#[tokio::test(start_paused = true)]
async fn the_expiry_task_pays_the_debt_with_no_other_write() {
    for shards in SHARDS {
        let (c, _) = admit_a_heavy_entry(shards);
        settle().await;
        assert_eq!(
            c.weighted_size(),
            100_000,
            "{shards} shards: the task evicted everything but the heavy entry"
        );
        assert_eq!(c.get(&u64::MAX), Some(100_000));
        assert_eq!(c.entry_count(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_that_would_pass_twice_the_capacity_is_not_kept() {
    for shards in SHARDS {
        let (c, _) = admit_a_heavy_entry(shards);
        let size = c.weighted_size();
        // Room left under the margin: less than the capacity.
        let room = 200_000 - size;
        assert!(room < 100_000);
        c.insert(7_000_000, room as u32 + 1);
        assert_eq!(c.get(&7_000_000), None, "{shards} shards");
        assert!(c.weighted_size() <= size, "{shards} shards");
        assert_eq!(c.__internals().policy_weight, Some(c.weighted_size()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_total_balances_under_concurrent_writes_and_removals() {
    const MAX: u64 = 10_000;
    for shards in SHARDS {
        let (c, _) = cache(MAX, shards);
        let writers: Vec<_> = (0..4u64)
            .map(|t| {
                let c = c.clone();
                tokio::spawn(async move {
                    let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    for _ in 0..20_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let key = x % 500;
                        match x % 10 {
                            0 => drop(c.remove(&key)),
                            // Now and then an entry heavier than 64 victims can pay for.
                            1 => c.insert(key, (x % MAX) as u32 + 1),
                            _ => c.insert(key, (x % 200) as u32),
                        }
                        let size = c.weighted_size();
                        assert!(size <= 2 * MAX, "{shards} shards: {size}");
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        // With no writer left, the books match the entries held.
        let held: u64 = (0..500u64).filter_map(|k| c.get(&k)).map(u64::from).sum();
        assert_eq!(c.__internals().policy_weight, Some(held), "{shards} shards");
        assert_eq!(c.weighted_size(), held, "{shards} shards");
        common::wait_until(
            std::time::Duration::from_secs(10),
            "the debt is paid",
            || c.weighted_size() <= MAX,
        )
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_scan_does_not_flush_the_hot_keys_on_any_shard_count() {
    for shards in SHARDS {
        let (c, _) = cache(10_000, shards);
        // 5,000 hot keys of weight 1, read again and again.
        for _ in 0..5 {
            for k in 0..5_000 {
                if c.get(&k).is_none() {
                    c.insert(k, 1);
                }
            }
        }
        // A one-pass scan over 100,000 keys nobody reads twice: each must win the policy's
        // admission to get in, whatever shard it lands in.
        for k in 1_000_000..1_100_000 {
            if c.get(&k).is_none() {
                c.insert(k, 1);
            }
        }
        let hot = (0..5_000).filter(|k| c.get(k).is_some()).count();
        assert!(
            hot >= 4_500,
            "{shards} shards: only {hot} of 5,000 hot keys survived the scan"
        );
        assert!(c.weighted_size() <= 10_000);
    }
}
