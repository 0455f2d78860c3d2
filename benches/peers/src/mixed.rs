//! The mixed workloads (`read_heavy`, `write_heavy`): the seeded operation sequence, every
//! implementation behind one trait, one thread's walk, the two-thread driver, and the
//! eviction count of the bounded configuration. Used by the `core` bench and by
//! `ebb-peers read-heavy`.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant as StdInstant};

use dashmap::DashMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use tokio::runtime::Runtime;
use tokio::time::Instant;

use crate::names::{
    DASHMAP_NO_TTL, EBB, EBB_BOUNDED, EBB_STATS, EBB_TTI, EXACT_LIMIT, MINI_MOKA, MOKA_FUTURE,
    MOKA_SYNC, QUICK_CACHE_NO_TTL,
};

/// The time-to-idle of `ebb_tti` in `read_heavy`.
pub const TTI: Duration = Duration::from_secs(60);
/// Keys in the `read_heavy` key space.
pub const KEYS: u64 = 100_000;
/// Length of the pre-generated `read_heavy` operation sequence.
pub const OPS: usize = 1 << 20;
/// Flag bit marking an insert in a packed operation (keys fit in the low 17 bits).
pub const INSERT_BIT: u32 = 1 << 31;

/// The `read_heavy` operation sequence: Zipf(s = 1.0) keys over `KEYS`, 10% inserts,
/// packed as `key | INSERT_BIT`. Fixed seed, so every implementation sees the same ops.
pub fn zipf_ops() -> Arc<[u32]> {
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
pub trait ReadHeavy: Sync {
    fn insert(&self, key: u64, value: u64);
    fn get(&self, key: u64) -> Option<u64>;
    /// After the fill: run pending housekeeping, for caches that defer it, and check the fill.
    fn settle(&self) {}
}

/// One thread's share of `read_heavy`: `n` ops from `offset`, wrapping around the sequence.
/// Returns a checksum of the values read so that nothing is optimised away.
#[inline]
pub fn walk_sync<C: ReadHeavy>(cache: &C, ops: &[u32], offset: usize, n: u64) -> u64 {
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
pub fn two_threads<F>(iters: u64, ops: &Arc<[u32]>, work: F) -> Duration
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
pub fn count_evictions(rt: &Runtime, ops: &Arc<[u32]>, ttl: Duration) -> (u64, f64) {
    let cache = ebb_cache::Cache::builder()
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
/// Time for a freshly filled cache to settle (ebb's expiry task files the fill's timers,
/// moka's housekeeping runs) before it is measured; every implementation waits the same.
pub const SETTLE: Duration = Duration::from_secs(1);

pub fn moka_cache(ttl: Duration) -> moka::future::Cache<u64, u64> {
    moka::future::Cache::builder().time_to_live(ttl).build()
}

pub fn moka_sync_cache(ttl: Duration) -> moka::sync::Cache<u64, u64> {
    moka::sync::Cache::builder().time_to_live(ttl).build()
}

pub fn mini_moka_cache(ttl: Duration) -> mini_moka::sync::Cache<u64, u64> {
    mini_moka::sync::Cache::builder().time_to_live(ttl).build()
}

pub fn quick_cache(capacity: usize) -> quick_cache::sync::Cache<u64, u64> {
    quick_cache::sync::Cache::new(capacity)
}

/// The exact-read limit: a deadline stored beside the value, checked on every read.
pub struct ExactLimit {
    map: DashMap<u64, (u64, Instant)>,
    ttl: Duration,
}

impl ExactLimit {
    pub fn new(ttl: Duration) -> Self {
        ExactLimit {
            map: DashMap::new(),
            ttl,
        }
    }

    #[inline]
    pub fn insert(&self, key: u64, value: u64) {
        let deadline = Instant::now() + self.ttl;
        self.map.insert(key, (value, deadline));
    }

    #[inline]
    pub fn get(&self, key: &u64) -> Option<u64> {
        let now = Instant::now();
        let entry = self.map.get(key)?;
        let (value, deadline) = *entry;
        (now < deadline).then_some(value)
    }
}

/// [`ReadHeavy`] for a cache whose own `insert(key, value)` and `get(&key)` fit, with an
/// optional `settle` body (`self` bound to the name given).
macro_rules! read_heavy {
    ($ty:ty $(, settle($this:ident) $settle:block)?) => {
        impl ReadHeavy for $ty {
            $(
                fn settle(&self) {
                    let $this = self;
                    $settle
                }
            )?
            #[inline]
            fn insert(&self, key: u64, value: u64) {
                <$ty>::insert(self, key, value);
            }
            #[inline]
            fn get(&self, key: u64) -> Option<u64> {
                <$ty>::get(self, &key)
            }
        }
    };
}

read_heavy!(ebb_cache::Cache<u64, u64>, settle(cache) {
    assert!(cache.entry_count() <= KEYS);
});
read_heavy!(ExactLimit);
read_heavy!(quick_cache::sync::Cache<u64, u64>, settle(cache) {
    assert_eq!(cache.len() as u64, KEYS, "sized never to evict");
});
read_heavy!(moka::sync::Cache<u64, u64>, settle(cache) {
    cache.run_pending_tasks();
});
read_heavy!(mini_moka::sync::Cache<u64, u64>);

impl ReadHeavy for DashMap<u64, u64> {
    #[inline]
    fn insert(&self, key: u64, value: u64) {
        DashMap::insert(self, key, value);
    }
    #[inline]
    fn get(&self, key: u64) -> Option<u64> {
        DashMap::get(self, &key).map(|e| *e)
    }
}

/// One implementation in a mixed workload, not yet built: [`Contender::fill`] builds it,
/// inserts every key of `KEYS`, and returns its walk (one thread's share of the operations,
/// see [`walk_sync`]), ready for [`two_threads`].
pub struct Contender {
    pub name: &'static str,
    build: Box<dyn FnOnce() -> Walk>,
}

/// One thread's share of a mixed workload: `(ops, offset, n) -> checksum`.
pub type Walk = Box<dyn Fn(&[u32], usize, u64) -> u64 + Sync>;

impl Contender {
    /// A contender `build` makes; filling it inserts every key of `KEYS`.
    pub fn new<C: ReadHeavy + 'static>(
        name: &'static str,
        build: impl FnOnce() -> C + 'static,
    ) -> Self {
        Contender {
            name,
            build: Box::new(move || {
                let cache = build();
                (0..KEYS).for_each(|k| cache.insert(k, k));
                cache.settle();
                Box::new(move |ops: &[u32], offset: usize, n: u64| {
                    walk_sync(&cache, ops, offset, n)
                })
            }),
        }
    }

    /// Build and fill it.
    pub fn fill(self) -> Walk {
        (self.build)()
    }
}

/// Every implementation of a mixed workload with `ttl`, in the `core` bench's order; with
/// `variants`, also `ebb_stats`, `ebb_tti` and `ebb_bounded`. ebb's caches are built on `rt`.
pub fn contenders(rt: &Runtime, ttl: Duration, variants: bool) -> Vec<Contender> {
    let ebb =
        |builder: fn(ebb_cache::CacheBuilder<u64, u64>) -> ebb_cache::CacheBuilder<u64, u64>| {
            let handle = rt.handle().clone();
            move || builder(ebb_cache::Cache::builder().time_to_live(ttl)).build_on(&handle)
        };
    let mut all = vec![Contender::new(EBB, ebb(|b| b))];
    if variants {
        all.push(Contender::new(EBB_STATS, ebb(|b| b.record_stats())));
        all.push(Contender::new(EBB_TTI, ebb(|b| b.time_to_idle(TTI))));
        all.push(Contender::new(
            EBB_BOUNDED,
            ebb(|b| b.max_capacity(KEYS / 10)),
        ));
    }
    all.push(Contender::new(DASHMAP_NO_TTL, DashMap::<u64, u64>::new));
    all.push(Contender::new(EXACT_LIMIT, move || ExactLimit::new(ttl)));
    // moka's future cache: one `block_on` per measured walk, never one per operation.
    all.push(Contender {
        name: MOKA_FUTURE,
        build: Box::new(move || {
            let moka = moka_cache(ttl);
            pollster::block_on(async {
                for k in 0..KEYS {
                    moka.insert(k, k).await;
                }
                moka.run_pending_tasks().await;
            });
            Box::new(move |ops: &[u32], offset: usize, n: u64| {
                pollster::block_on(walk_moka(&moka, ops, offset, n))
            })
        }),
    });
    all.push(Contender::new(MOKA_SYNC, move || moka_sync_cache(ttl)));
    all.push(Contender::new(MINI_MOKA, move || mini_moka_cache(ttl)));
    all.push(Contender::new(QUICK_CACHE_NO_TTL, || {
        quick_cache(2 * KEYS as usize)
    }));
    all
}

pub async fn walk_moka(
    cache: &moka::future::Cache<u64, u64>,
    ops: &[u32],
    offset: usize,
    n: u64,
) -> u64 {
    let mut sum = 0u64;
    let mut i = offset;
    for _ in 0..n {
        let op = ops[i];
        let key = u64::from(op & !INSERT_BIT);
        if op & INSERT_BIT != 0 {
            cache.insert(key, key).await;
        } else if let Some(v) = cache.get(&black_box(key)).await {
            sum = sum.wrapping_add(v);
        }
        i += 1;
        if i == ops.len() {
            i = 0;
        }
    }
    sum
}
