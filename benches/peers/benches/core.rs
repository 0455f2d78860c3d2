//! Core micro-benchmarks: ebb against peer caches, in one run so that ratios are comparable.
//!
//! Run with `cargo bench -p ebb-peers --bench core`, then summarise with
//! `cargo run -p ebb-peers --release -- report`.
//!
//! Implementations compared in every group:
//! - `ebb`: `ebb::Cache<u64, u64>`, 300 s TTL (30 s in `build_insert_get_drop`).
//! - `dashmap_no_ttl`: a raw `DashMap<u64, u64>`; no expiry at all, an upper bound.
//! - `exact_limit`: a raw `DashMap<u64, (u64, tokio::time::Instant)>` holding a deadline;
//!   every get reads `Instant::now()` once and returns the value only before the deadline,
//!   every insert computes `now + ttl`. The least any exact-read TTL cache on DashMap can do.
//! - `moka_future`: `moka::future::Cache` 0.12 with the same TTL; its async calls are awaited
//!   inside one `block_on` per measured loop, never one per operation.
//! - `quick_cache_no_ttl`: `quick_cache::sync::Cache`, sized never to evict; it has no TTL.
//!
//! `write_heavy` is `read_heavy`'s key sequence with every other op an insert, TTL 1 s.
//! `read_heavy` and `write_heavy` also run `moka_sync` (`moka::sync::Cache` 0.12) and
//! `mini_moka` (`mini_moka::sync::Cache` 0.10), both with the same TTL, and `read_heavy` runs
//! two more ebb configurations: `ebb_stats` (`.record_stats()`) and `ebb_tti`
//! (`.time_to_idle(60 s)` beside the 300 s TTL).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use dashmap::DashMap;
use tokio::runtime::Runtime;
use tokio::time::Instant;

#[path = "../src/mixed.rs"]
mod mixed;
use mixed::{count_evictions, two_threads, walk_sync, zipf_ops, ReadHeavy, INSERT_BIT, KEYS, OPS};

const TTL: Duration = Duration::from_secs(300);
const SHORT_TTL: Duration = Duration::from_secs(30);

const EBB: &str = "ebb";
const DASHMAP: &str = "dashmap_no_ttl";
const EXACT: &str = "exact_limit";
const MOKA: &str = "moka_future";
const QUICK: &str = "quick_cache_no_ttl";
const EBB_STATS: &str = "ebb_stats";
const EBB_TTI: &str = "ebb_tti";
/// `read_heavy` with `max_capacity` at 10% of the key space, so that evictions happen. The
/// measured cache differs from `ebb` by the capacity alone (no listener, no `record_stats()`);
/// its evictions are counted in an untimed replay of the same operations (see
/// `count_evictions`).
const EBB_BOUNDED: &str = "ebb_bounded";
const MOKA_SYNC: &str = "moka_sync";
const MINI_MOKA: &str = "mini_moka";

/// The time-to-idle of `ebb_tti` in `read_heavy`.
const TTI: Duration = Duration::from_secs(60);
/// The TTL of `write_heavy`: short enough that entries expire while it runs.
const WRITE_TTL: Duration = Duration::from_secs(1);

/// A multi-thread runtime with 2 workers and timers, the kind ebb's expiry task runs on.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn ebb_cache(rt: &Runtime, ttl: Duration) -> ebb::Cache<u64, u64> {
    ebb::Cache::builder()
        .time_to_live(ttl)
        .build_on(rt.handle())
}

fn moka_cache(ttl: Duration) -> moka::future::Cache<u64, u64> {
    moka::future::Cache::builder().time_to_live(ttl).build()
}

fn moka_sync_cache(ttl: Duration) -> moka::sync::Cache<u64, u64> {
    moka::sync::Cache::builder().time_to_live(ttl).build()
}

fn mini_moka_cache(ttl: Duration) -> mini_moka::sync::Cache<u64, u64> {
    mini_moka::sync::Cache::builder().time_to_live(ttl).build()
}

fn quick_cache(capacity: usize) -> quick_cache::sync::Cache<u64, u64> {
    quick_cache::sync::Cache::new(capacity)
}

/// The exact-read limit: a deadline stored beside the value, checked on every read.
struct ExactLimit {
    map: DashMap<u64, (u64, Instant)>,
    ttl: Duration,
}

impl ExactLimit {
    fn new(ttl: Duration) -> Self {
        ExactLimit {
            map: DashMap::new(),
            ttl,
        }
    }

    #[inline]
    fn insert(&self, key: u64, value: u64) {
        let deadline = Instant::now() + self.ttl;
        self.map.insert(key, (value, deadline));
    }

    #[inline]
    fn get(&self, key: &u64) -> Option<u64> {
        let now = Instant::now();
        let entry = self.map.get(key)?;
        let (value, deadline) = *entry;
        (now < deadline).then_some(value)
    }
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

/// Group 1: one key present; get it, single thread.
fn get_hit(c: &mut Criterion) {
    let rt = runtime();
    let key = 42u64;
    let mut group = c.benchmark_group("get_hit");
    configure(&mut group);
    group.throughput(Throughput::Elements(1));

    let ebb = ebb_cache(&rt, TTL);
    ebb.insert(key, 7);
    assert_eq!(ebb.get(&key), Some(7));
    group.bench_function(EBB, |b| b.iter(|| black_box(ebb.get(black_box(&key)))));

    let raw = DashMap::new();
    raw.insert(key, 7u64);
    group.bench_function(DASHMAP, |b| {
        b.iter(|| black_box(raw.get(black_box(&key)).map(|e| *e)))
    });

    let exact = ExactLimit::new(TTL);
    exact.insert(key, 7);
    assert_eq!(exact.get(&key), Some(7));
    group.bench_function(EXACT, |b| b.iter(|| black_box(exact.get(black_box(&key)))));

    let moka = moka_cache(TTL);
    pollster::block_on(moka.insert(key, 7));
    assert_eq!(pollster::block_on(moka.get(&key)), Some(7));
    group.bench_function(MOKA, |b| {
        b.iter_custom(|iters| {
            pollster::block_on(async {
                let start = StdInstant::now();
                for _ in 0..iters {
                    black_box(moka.get(black_box(&key)).await);
                }
                start.elapsed()
            })
        })
    });

    let quick = quick_cache(1024);
    quick.insert(key, 7);
    assert_eq!(quick.get(&key), Some(7));
    group.bench_function(QUICK, |b| b.iter(|| black_box(quick.get(black_box(&key)))));

    group.finish();
    drop(ebb);
}

/// Group 2: overwrite one existing key, single thread.
fn insert_overwrite(c: &mut Criterion) {
    let rt = runtime();
    let key = 42u64;
    let mut group = c.benchmark_group("insert_overwrite");
    configure(&mut group);
    group.throughput(Throughput::Elements(1));

    let ebb = ebb_cache(&rt, TTL);
    ebb.insert(key, 0);
    let mut v = 0u64;
    group.bench_function(EBB, |b| {
        b.iter(|| {
            v = v.wrapping_add(1);
            ebb.insert(black_box(key), black_box(v));
        })
    });
    assert!(ebb.get(&key).is_some());

    let raw = DashMap::new();
    raw.insert(key, 0u64);
    group.bench_function(DASHMAP, |b| {
        b.iter(|| {
            v = v.wrapping_add(1);
            black_box(raw.insert(black_box(key), black_box(v)));
        })
    });

    let exact = ExactLimit::new(TTL);
    exact.insert(key, 0);
    group.bench_function(EXACT, |b| {
        b.iter(|| {
            v = v.wrapping_add(1);
            exact.insert(black_box(key), black_box(v));
        })
    });

    let moka = moka_cache(TTL);
    pollster::block_on(moka.insert(key, 0));
    group.bench_function(MOKA, |b| {
        b.iter_custom(|iters| {
            pollster::block_on(async {
                let start = StdInstant::now();
                for _ in 0..iters {
                    v = v.wrapping_add(1);
                    moka.insert(black_box(key), black_box(v)).await;
                }
                start.elapsed()
            })
        })
    });

    let quick = quick_cache(1024);
    quick.insert(key, 0);
    group.bench_function(QUICK, |b| {
        b.iter(|| {
            v = v.wrapping_add(1);
            quick.insert(black_box(key), black_box(v));
        })
    });

    group.finish();
    drop(ebb);
}

/// Group 3: per iteration: build a cache (30 s TTL), insert one entry, get it, drop the cache.
/// Runs on a 2-worker multi-thread runtime; ebb's expiry task is spawned there and ends
/// when the cache is dropped.
fn build_insert_get_drop(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("build_insert_get_drop");
    configure(&mut group);
    group.throughput(Throughput::Elements(1));

    // Every implementation runs its cycles inside a task spawned on a worker thread, as a
    // request handler would, so that a cache which spawns a task pays what it pays there.
    group.bench_function(EBB, |b| {
        b.iter_custom(|iters| {
            on_worker(&rt, async move {
                for _ in 0..iters {
                    let cache: ebb::Cache<u64, u64> =
                        ebb::Cache::builder().time_to_live(SHORT_TTL).build();
                    cache.insert(black_box(1), black_box(2));
                    black_box(cache.get(black_box(&1)));
                    drop(cache);
                }
            })
        })
    });

    group.bench_function(DASHMAP, |b| {
        b.iter_custom(|iters| {
            on_worker(&rt, async move {
                for _ in 0..iters {
                    let map = DashMap::new();
                    map.insert(black_box(1u64), black_box(2u64));
                    black_box(map.get(black_box(&1)).map(|e| *e));
                    drop(map);
                }
            })
        })
    });

    group.bench_function(EXACT, |b| {
        b.iter_custom(|iters| {
            on_worker(&rt, async move {
                for _ in 0..iters {
                    let map = ExactLimit::new(SHORT_TTL);
                    map.insert(black_box(1), black_box(2));
                    black_box(map.get(black_box(&1)));
                    drop(map);
                }
            })
        })
    });

    group.bench_function(MOKA, |b| {
        b.iter_custom(|iters| {
            on_worker(&rt, async move {
                for _ in 0..iters {
                    let cache = moka_cache(SHORT_TTL);
                    cache.insert(black_box(1), black_box(2)).await;
                    black_box(cache.get(black_box(&1)).await);
                    drop(cache);
                }
            })
        })
    });

    group.bench_function(QUICK, |b| {
        b.iter_custom(|iters| {
            on_worker(&rt, async move {
                for _ in 0..iters {
                    let cache = quick_cache(16);
                    cache.insert(black_box(1), black_box(2));
                    black_box(cache.get(black_box(&1)));
                    drop(cache);
                }
            })
        })
    });

    group.finish();
}

/// Run `work` in a task on one of `rt`'s workers and return how long it took there.
fn on_worker(
    rt: &Runtime,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) -> Duration {
    rt.block_on(async {
        tokio::spawn(async move {
            let start = StdInstant::now();
            work.await;
            start.elapsed()
        })
        .await
        .expect("benchmark task panicked")
    })
}

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

impl ReadHeavy for ExactLimit {
    #[inline]
    fn insert(&self, key: u64, value: u64) {
        ExactLimit::insert(self, key, value)
    }
    #[inline]
    fn get(&self, key: u64) -> Option<u64> {
        ExactLimit::get(self, &key)
    }
}

impl ReadHeavy for quick_cache::sync::Cache<u64, u64> {
    #[inline]
    fn insert(&self, key: u64, value: u64) {
        quick_cache::sync::Cache::insert(self, key, value)
    }
    #[inline]
    fn get(&self, key: u64) -> Option<u64> {
        quick_cache::sync::Cache::get(self, &key)
    }
}

impl ReadHeavy for moka::sync::Cache<u64, u64> {
    #[inline]
    fn insert(&self, key: u64, value: u64) {
        moka::sync::Cache::insert(self, key, value)
    }
    #[inline]
    fn get(&self, key: u64) -> Option<u64> {
        moka::sync::Cache::get(self, &key)
    }
}

impl ReadHeavy for mini_moka::sync::Cache<u64, u64> {
    #[inline]
    fn insert(&self, key: u64, value: u64) {
        mini_moka::sync::Cache::insert(self, key, value)
    }
    #[inline]
    fn get(&self, key: u64) -> Option<u64> {
        mini_moka::sync::Cache::get(self, &key)
    }
}

async fn walk_moka(
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

/// Group 4: two OS threads, Zipf(1.0) keys over 100,000 pre-populated keys,
/// 90% get / 10% insert, TTL 300 s.
/// Criterion's `iters` is the total op count; each thread does half.
fn read_heavy(c: &mut Criterion) {
    mixed(c, "read_heavy", zipf_ops(), TTL, true);
}

/// Group 5: as `read_heavy`, over the same Zipf key sequence, but every other op is an
/// insert (50% insert / 50% get) and the TTL is 1 s, so entries expire while it runs.
fn write_heavy(c: &mut Criterion) {
    let ops: Arc<[u32]> = zipf_ops()
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let key = op & !INSERT_BIT;
            if i % 2 == 0 {
                key | INSERT_BIT
            } else {
                key
            }
        })
        .collect();
    mixed(c, "write_heavy", ops, WRITE_TTL, false);
}

/// Time for a freshly filled cache to settle (ebb's expiry task files the fill's timers,
/// moka's housekeeping runs) before it is measured; every implementation waits the same.
const SETTLE: Duration = Duration::from_secs(1);

/// A two-thread mixed workload over `ops` (see `two_threads`) for every implementation,
/// each pre-populated with all `KEYS` keys; `ebb_variants` adds `ebb_stats` and `ebb_tti`.
fn mixed(c: &mut Criterion, name: &str, ops: Arc<[u32]>, ttl: Duration, ebb_variants: bool) {
    let rt = runtime();
    let mut group = c.benchmark_group(name);
    configure(&mut group);
    group.throughput(Throughput::Elements(1));

    let mut ebbs: Vec<(&str, ebb::Cache<u64, u64>)> = vec![(EBB, ebb_cache(&rt, ttl))];
    if ebb_variants {
        let stats = ebb::Cache::builder()
            .time_to_live(ttl)
            .record_stats()
            .build_on(rt.handle());
        let tti = ebb::Cache::builder()
            .time_to_live(ttl)
            .time_to_idle(TTI)
            .build_on(rt.handle());
        let bounded = ebb::Cache::builder()
            .time_to_live(ttl)
            .max_capacity(KEYS / 10)
            .build_on(rt.handle());
        ebbs.push((EBB_STATS, stats));
        ebbs.push((EBB_TTI, tti));
        ebbs.push((EBB_BOUNDED, bounded));
    }
    for (label, cache) in ebbs {
        (0..KEYS).for_each(|k| cache.insert(k, k));
        assert!(cache.entry_count() <= KEYS);
        std::thread::sleep(SETTLE);
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                two_threads(iters, &ops, |o, off, n| walk_sync(&cache, o, off, n))
            })
        });
    }
    if ebb_variants {
        let (evicted, hit_ratio) = count_evictions(&rt, &ops, ttl);
        eprintln!(
            "{name}/{EBB_BOUNDED}: {evicted} evictions for size per {OPS} operations \
             (untimed replay with record_stats; hit ratio {:.1}%)",
            hit_ratio * 100.0
        );
    }
    {
        let map = DashMap::new();
        (0..KEYS).for_each(|k| {
            map.insert(k, k);
        });
        std::thread::sleep(SETTLE);
        group.bench_function(DASHMAP, |b| {
            b.iter_custom(|iters| two_threads(iters, &ops, |o, off, n| walk_sync(&map, o, off, n)))
        });
    }
    {
        let exact = ExactLimit::new(ttl);
        (0..KEYS).for_each(|k| exact.insert(k, k));
        std::thread::sleep(SETTLE);
        group.bench_function(EXACT, |b| {
            b.iter_custom(|iters| {
                two_threads(iters, &ops, |o, off, n| walk_sync(&exact, o, off, n))
            })
        });
    }
    {
        let moka = moka_cache(ttl);
        pollster::block_on(async {
            for k in 0..KEYS {
                moka.insert(k, k).await;
            }
        });
        pollster::block_on(moka.run_pending_tasks());
        std::thread::sleep(SETTLE);
        group.bench_function(MOKA, |b| {
            b.iter_custom(|iters| {
                two_threads(iters, &ops, |o, off, n| {
                    pollster::block_on(walk_moka(&moka, o, off, n))
                })
            })
        });
    }
    {
        let moka = moka_sync_cache(ttl);
        (0..KEYS).for_each(|k| moka.insert(k, k));
        moka.run_pending_tasks();
        std::thread::sleep(SETTLE);
        group.bench_function(MOKA_SYNC, |b| {
            b.iter_custom(|iters| two_threads(iters, &ops, |o, off, n| walk_sync(&moka, o, off, n)))
        });
    }
    {
        let mini = mini_moka_cache(ttl);
        (0..KEYS).for_each(|k| mini.insert(k, k));
        std::thread::sleep(SETTLE);
        group.bench_function(MINI_MOKA, |b| {
            b.iter_custom(|iters| two_threads(iters, &ops, |o, off, n| walk_sync(&mini, o, off, n)))
        });
    }
    {
        let quick = quick_cache(2 * KEYS as usize);
        (0..KEYS).for_each(|k| quick.insert(k, k));
        assert_eq!(quick.len() as u64, KEYS);
        std::thread::sleep(SETTLE);
        group.bench_function(QUICK, |b| {
            b.iter_custom(|iters| {
                two_threads(iters, &ops, |o, off, n| walk_sync(&quick, o, off, n))
            })
        });
    }

    group.finish();
}

criterion_group!(
    benches,
    get_hit,
    insert_overwrite,
    build_insert_get_drop,
    read_heavy,
    write_heavy
);
criterion_main!(benches);
