//! Core micro-benchmarks: ebb against peer caches, in one run so that ratios are comparable.
//!
//! Run with `cargo bench -p ebb-peers --bench core`, then summarise with
//! `cargo run -p ebb-peers --release -- report`.
//!
//! Implementations compared in every group:
//! - `ebb`: `ebb_cache::Cache<u64, u64>`, 300 s TTL (30 s in `build_insert_get_drop`).
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
//! three more ebb configurations: `ebb_stats` (`.record_stats()`), `ebb_tti`
//! (`.time_to_idle(60 s)` beside the 300 s TTL) and `ebb_bounded` (`.max_capacity(10,000)`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use dashmap::DashMap;
use ebb_peers::mixed::{
    contenders, count_evictions, moka_cache, quick_cache, two_threads, zipf_ops, ExactLimit,
    INSERT_BIT, OPS, SETTLE,
};
use ebb_peers::names::{
    DASHMAP_NO_TTL, EBB, EBB_BOUNDED, EXACT_LIMIT, MOKA_FUTURE, QUICK_CACHE_NO_TTL,
};
use tokio::runtime::Runtime;

const TTL: Duration = Duration::from_secs(300);
const SHORT_TTL: Duration = Duration::from_secs(30);

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

fn ebb_cache(rt: &Runtime, ttl: Duration) -> ebb_cache::Cache<u64, u64> {
    ebb_cache::Cache::builder()
        .time_to_live(ttl)
        .build_on(rt.handle())
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
    group.bench_function(DASHMAP_NO_TTL, |b| {
        b.iter(|| black_box(raw.get(black_box(&key)).map(|e| *e)))
    });

    let exact = ExactLimit::new(TTL);
    exact.insert(key, 7);
    assert_eq!(exact.get(&key), Some(7));
    group.bench_function(EXACT_LIMIT, |b| {
        b.iter(|| black_box(exact.get(black_box(&key))))
    });

    let moka = moka_cache(TTL);
    pollster::block_on(moka.insert(key, 7));
    assert_eq!(pollster::block_on(moka.get(&key)), Some(7));
    group.bench_function(MOKA_FUTURE, |b| {
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
    group.bench_function(QUICK_CACHE_NO_TTL, |b| {
        b.iter(|| black_box(quick.get(black_box(&key))))
    });

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
    group.bench_function(DASHMAP_NO_TTL, |b| {
        b.iter(|| {
            v = v.wrapping_add(1);
            black_box(raw.insert(black_box(key), black_box(v)));
        })
    });

    let exact = ExactLimit::new(TTL);
    exact.insert(key, 0);
    group.bench_function(EXACT_LIMIT, |b| {
        b.iter(|| {
            v = v.wrapping_add(1);
            exact.insert(black_box(key), black_box(v));
        })
    });

    let moka = moka_cache(TTL);
    pollster::block_on(moka.insert(key, 0));
    group.bench_function(MOKA_FUTURE, |b| {
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
    group.bench_function(QUICK_CACHE_NO_TTL, |b| {
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
                    let cache: ebb_cache::Cache<u64, u64> =
                        ebb_cache::Cache::builder().time_to_live(SHORT_TTL).build();
                    cache.insert(black_box(1), black_box(2));
                    black_box(cache.get(black_box(&1)));
                    drop(cache);
                }
            })
        })
    });

    group.bench_function(DASHMAP_NO_TTL, |b| {
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

    group.bench_function(EXACT_LIMIT, |b| {
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

    group.bench_function(MOKA_FUTURE, |b| {
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

    group.bench_function(QUICK_CACHE_NO_TTL, |b| {
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

/// A two-thread mixed workload over `ops` (see `two_threads`) for every implementation
/// (`ebb_peers::mixed::contenders`), each filled with all `KEYS` keys and left to settle just
/// before it is measured; `ebb_variants` adds `ebb_stats`, `ebb_tti` and `ebb_bounded`.
fn mixed(c: &mut Criterion, name: &str, ops: Arc<[u32]>, ttl: Duration, ebb_variants: bool) {
    let rt = runtime();
    let mut group = c.benchmark_group(name);
    configure(&mut group);
    group.throughput(Throughput::Elements(1));
    for contender in contenders(&rt, ttl, ebb_variants) {
        let label = contender.name;
        let walk = contender.fill();
        std::thread::sleep(SETTLE);
        group.bench_function(label, |b| {
            b.iter_custom(|iters| two_threads(iters, &ops, &walk))
        });
    }
    group.finish();
    if ebb_variants {
        let (evicted, hit_ratio) = count_evictions(&rt, &ops, ttl);
        eprintln!(
            "{name}/{EBB_BOUNDED}: {evicted} evictions for size per {OPS} operations \
             (untimed replay with record_stats; hit ratio {:.1}%)",
            hit_ratio * 100.0
        );
    }
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
