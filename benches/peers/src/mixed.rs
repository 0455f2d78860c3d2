//! The `read_heavy` and `write_heavy` workloads' shared parts: the seeded operation
//! sequence, one thread's walk through it, the two-thread driver, and the eviction count of
//! the bounded configuration. Used by the `core` bench (through `#[path]`) and by
//! `ebb-peers capacity-cost`.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant as StdInstant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use tokio::runtime::Runtime;

/// Keys in the `read_heavy` key space.
pub(crate) const KEYS: u64 = 100_000;
/// Length of the pre-generated `read_heavy` operation sequence.
pub(crate) const OPS: usize = 1 << 20;
/// Flag bit marking an insert in a packed operation (keys fit in the low 17 bits).
pub(crate) const INSERT_BIT: u32 = 1 << 31;

/// The `read_heavy` operation sequence: Zipf(s = 1.0) keys over `KEYS`, 10% inserts,
/// packed as `key | INSERT_BIT`. Fixed seed, so every implementation sees the same ops.
pub(crate) fn zipf_ops() -> Arc<[u32]> {
    let mut rng = StdRng::seed_from_u64(0x00eb_b5ee_d000_0001);
    let zipf = Zipf::new(KEYS as f64, 1.0).expect("valid Zipf parameters");
    (0..OPS)
        .map(|_| {
            // Rank 1 is the most popular key; ranks are 1..=KEYS.
            let key = (zipf.sample(&mut rng) as u64 - 1).min(KEYS - 1) as u32;
            if rng.random_ratio(1, 10) {
                key | INSERT_BIT
            } else {
                key
            }
        })
        .collect()
}

/// The operations one implementation must offer to `read_heavy`.
pub(crate) trait ReadHeavy: Sync {
    fn insert(&self, key: u64, value: u64);
    fn get(&self, key: u64) -> Option<u64>;
}

impl ReadHeavy for ebb::Cache<u64, u64> {
    #[inline]
    fn insert(&self, key: u64, value: u64) {
        ebb::Cache::insert(self, key, value)
    }
    #[inline]
    fn get(&self, key: u64) -> Option<u64> {
        ebb::Cache::get(self, &key)
    }
}

/// One thread's share of `read_heavy`: `n` ops from `offset`, wrapping around the sequence.
/// Returns a checksum of the values read so that nothing is optimised away.
#[inline]
pub(crate) fn walk_sync<C: ReadHeavy>(cache: &C, ops: &[u32], offset: usize, n: u64) -> u64 {
    let mut sum = 0u64;
    let mut i = offset;
    for _ in 0..n {
        let op = ops[i];
        let key = u64::from(op & !INSERT_BIT);
        if op & INSERT_BIT != 0 {
            cache.insert(key, key);
        } else if let Some(v) = cache.get(black_box(key)) {
            sum = sum.wrapping_add(v);
        }
        i += 1;
        if i == ops.len() {
            i = 0;
        }
    }
    sum
}

/// Run `iters` ops split over 2 OS threads started together at a barrier; the elapsed
/// time is from the earliest start to the latest finish.
pub(crate) fn two_threads<F>(iters: u64, ops: &Arc<[u32]>, work: F) -> Duration
where
    F: Fn(&[u32], usize, u64) -> u64 + Sync,
{
    let barrier = Barrier::new(2);
    let shares = [iters.div_ceil(2), iters / 2];
    let offsets = [0, OPS / 2];
    let spans = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let (barrier, work, ops) = (&barrier, &work, &ops[..]);
                s.spawn(move || {
                    barrier.wait();
                    let start = StdInstant::now();
                    black_box(work(ops, offsets[t], shares[t]));
                    (start, StdInstant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("read_heavy worker panicked"))
            .collect::<Vec<_>>()
    });
    let start = spans.iter().map(|s| s.0).min().expect("two spans");
    let end = spans.iter().map(|s| s.1).max().expect("two spans");
    end - start
}

/// `ebb_bounded`'s evictions, counted without slowing the measured cache: a cache built the
/// same way plus `record_stats()`, filled the same way, runs `OPS` of the same operations on
/// two threads. Returns the evictions for size and the hit ratio of those operations.
pub(crate) fn count_evictions(rt: &Runtime, ops: &Arc<[u32]>, ttl: Duration) -> (u64, f64) {
    let cache = ebb::Cache::builder()
        .time_to_live(ttl)
        .max_capacity(KEYS / 10)
        .record_stats()
        .build_on(rt.handle());
    (0..KEYS).for_each(|k| cache.insert(k, k));
    let before = cache.stats();
    two_threads(OPS as u64, ops, |o, off, n| walk_sync(&cache, o, off, n));
    let after = cache.stats();
    let hits = after.hits - before.hits;
    let requests = after.requests() - before.requests();
    (
        after.evicted_for_size - before.evicted_for_size,
        hits as f64 / requests.max(1) as f64,
    )
}
