//! Loading benchmarks: ebb's single-flight `get_with` against moka's `future::Cache::get_with`,
//! in one run so that ratios are comparable.
//!
//! Run with `cargo bench -p ebb-peers --bench load`, then summarise with
//! `cargo run -p ebb-peers --release -- report`.
//!
//! Every cache maps `u64 -> u64` with a 300 s TTL and no capacity bound.
//! - `get_with_hit`: one key present; `get_with` on it (the loader never runs) and plain `get`,
//!   for both caches, in one task on a worker of a 2-worker multi-thread runtime.
//! - `miss_storm`: 1,000 tasks on a 2-worker multi-thread runtime call `get_with` for the same
//!   missing key at once; the loader yields once, then returns. One long-lived cache per
//!   implementation and a fresh key per storm, so build cost is excluded. ebb must run the
//!   loader exactly once per storm (asserted); moka's count is printed.
//! - `miss_heavy`: 2 OS threads, each driving its own current-thread runtime, walk one seeded
//!   Zipf(s = 0.9) sequence over 1,000,000 keys; every op is `get_with(key, async { key })`.
//!   Each iteration starts from a fresh, empty cache (built and dropped off the clock) and runs
//!   the same fixed batch, so the hit ratio is the same for both caches whatever criterion's
//!   iteration counts are. The observed hit ratio is printed once per implementation.

use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use ebb_peers::names::{EBB, EBB_GET, EBB_GET_WITH, MOKA_FUTURE, MOKA_GET, MOKA_GET_WITH};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use tokio::runtime::Runtime;

const TTL: Duration = Duration::from_secs(300);

/// Tasks per `miss_storm` storm.
const STORM: usize = 1_000;

/// Keys in the `miss_heavy` key space.
const KEYS: u64 = 1_000_000;
/// The Zipf exponent of the `miss_heavy` key sequence.
const ZIPF_S: f64 = 0.9;
/// Operations per `miss_heavy` iteration (one batch from an empty cache), half per thread.
const BATCH: usize = 1 << 16;

/// A multi-thread runtime with 2 workers and timers, the kind ebb's expiry task runs on.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn ebb_cache(rt: &Runtime) -> ebb_cache::Cache<u64, u64> {
    ebb_cache::Cache::builder()
        .time_to_live(TTL)
        .build_on(rt.handle())
}

fn moka_cache() -> moka::future::Cache<u64, u64> {
    moka::future::Cache::builder().time_to_live(TTL).build()
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

/// Run `work` in a task on one of `rt`'s workers and return how long it took there.
fn on_worker(rt: &Runtime, work: impl Future<Output = ()> + Send + 'static) -> Duration {
    rt.block_on(async {
        tokio::spawn(async move {
            let start = Instant::now();
            work.await;
            start.elapsed()
        })
        .await
        .expect("benchmark task panicked")
    })
}

/// `get_with` as both caches offer it, for the generic drivers below.
trait GetWith: Send + Sync + 'static {
    fn get_with<'a>(
        &'a self,
        key: u64,
        init: impl Future<Output = u64> + Send + 'a,
    ) -> impl Future<Output = u64> + Send + 'a;
}

impl GetWith for ebb_cache::Cache<u64, u64> {
    #[inline]
    fn get_with<'a>(
        &'a self,
        key: u64,
        init: impl Future<Output = u64> + Send + 'a,
    ) -> impl Future<Output = u64> + Send + 'a {
        ebb_cache::Cache::get_with(self, key, init)
    }
}

impl GetWith for moka::future::Cache<u64, u64> {
    #[inline]
    fn get_with<'a>(
        &'a self,
        key: u64,
        init: impl Future<Output = u64> + Send + 'a,
    ) -> impl Future<Output = u64> + Send + 'a {
        moka::future::Cache::get_with(self, key, init)
    }
}

/// Group 1: one key present; `get_with` hits and plain `get`s of it, single thread, in one
/// task on a worker of a 2-worker multi-thread runtime.
fn get_with_hit(c: &mut Criterion) {
    let rt = runtime();
    let key = 42u64;
    // Loader runs: must stay 0, every call is a hit.
    let loads = Arc::new(AtomicU64::new(0));
    let mut group = c.benchmark_group("get_with_hit");
    configure(&mut group);
    group.throughput(Throughput::Elements(1));

    let ebb = Arc::new(ebb_cache(&rt));
    ebb.insert(key, 7);
    assert_eq!(ebb.get(&key), Some(7));
    group.bench_function(EBB_GET_WITH, |b| {
        b.iter_custom(|iters| {
            let (cache, loads) = (Arc::clone(&ebb), Arc::clone(&loads));
            on_worker(&rt, async move {
                for _ in 0..iters {
                    let loads = &loads;
                    let v = cache
                        .get_with(black_box(key), async move {
                            loads.fetch_add(1, Ordering::Relaxed);
                            0
                        })
                        .await;
                    black_box(v);
                }
            })
        })
    });
    group.bench_function(EBB_GET, |b| {
        b.iter_custom(|iters| {
            let cache = Arc::clone(&ebb);
            on_worker(&rt, async move {
                for _ in 0..iters {
                    black_box(cache.get(black_box(&key)));
                }
            })
        })
    });

    let moka = Arc::new(moka_cache());
    rt.block_on(moka.insert(key, 7));
    assert_eq!(rt.block_on(moka.get(&key)), Some(7));
    group.bench_function(MOKA_GET_WITH, |b| {
        b.iter_custom(|iters| {
            let (cache, loads) = (Arc::clone(&moka), Arc::clone(&loads));
            on_worker(&rt, async move {
                for _ in 0..iters {
                    let loads = &loads;
                    let v = cache
                        .get_with(black_box(key), async move {
                            loads.fetch_add(1, Ordering::Relaxed);
                            0
                        })
                        .await;
                    black_box(v);
                }
            })
        })
    });
    group.bench_function(MOKA_GET, |b| {
        b.iter_custom(|iters| {
            let cache = Arc::clone(&moka);
            on_worker(&rt, async move {
                for _ in 0..iters {
                    black_box(cache.get(black_box(&key)).await);
                }
            })
        })
    });

    group.finish();
    assert_eq!(loads.load(Ordering::Relaxed), 0, "a hit ran its loader");
    assert_eq!(ebb.get(&key), Some(7));
    assert_eq!(rt.block_on(moka.get(&key)), Some(7));
}

/// One implementation's `miss_storm` state: a long-lived cache, the next fresh key, and how
/// many storms ran and how many loader runs they took.
struct Storm<C> {
    cache: C,
    next_key: AtomicU64,
    storms: AtomicU64,
    loads: AtomicU64,
}

impl<C: GetWith> Storm<C> {
    fn new(cache: C) -> Arc<Self> {
        Arc::new(Storm {
            cache,
            next_key: AtomicU64::new(0),
            storms: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        })
    }

    /// One caller: `get_with` for `key`, with a loader that counts itself, yields once and
    /// returns the key.
    async fn call(&self, key: u64) -> u64 {
        let loads = &self.loads;
        self.cache
            .get_with(key, async move {
                loads.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
                key
            })
            .await
    }

    /// `iters` storms, each on a fresh key, driven from one task on a worker of `rt`; the
    /// time is from the first spawn of the first storm to the last caller's value of the last.
    fn run(self: &Arc<Self>, rt: &Runtime, iters: u64) -> Duration {
        let storm = Arc::clone(self);
        let first_key = self.next_key.fetch_add(iters, Ordering::Relaxed);
        on_worker(rt, async move {
            let mut handles = Vec::with_capacity(STORM);
            for key in first_key..first_key + iters {
                for _ in 0..STORM {
                    let storm = Arc::clone(&storm);
                    handles.push(tokio::spawn(async move { storm.call(key).await }));
                }
                for handle in handles.drain(..) {
                    let value = handle.await.expect("storm caller panicked");
                    assert_eq!(value, key);
                }
            }
            storm.storms.fetch_add(iters, Ordering::Relaxed);
        })
    }

    /// (storms, loader runs) so far.
    fn counts(&self) -> (u64, u64) {
        (
            self.storms.load(Ordering::Relaxed),
            self.loads.load(Ordering::Relaxed),
        )
    }
}

/// Group 2: 1,000 tasks call `get_with` for one missing key at once; time until all have it.
/// One long-lived cache per implementation, a fresh key per storm: build cost is excluded.
fn miss_storm(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("miss_storm");
    configure(&mut group);
    // One element is one storm: `mean ns/op` in the report is the time of one whole storm.
    group.throughput(Throughput::Elements(1));

    let ebb = Storm::new(ebb_cache(&rt));
    group.bench_function(EBB, |b| {
        b.iter_custom(|iters| {
            let (storms, loads) = ebb.counts();
            let elapsed = ebb.run(&rt, iters);
            // Every storm's key is fresh, so each storm loads at least once; `iters` loads
            // over `iters` storms means exactly one per storm.
            let (storms_after, loads_after) = ebb.counts();
            assert_eq!(storms_after - storms, iters);
            assert_eq!(
                loads_after - loads,
                iters,
                "ebb ran its loader more than once in a storm"
            );
            elapsed
        })
    });

    let moka = Storm::new(moka_cache());
    group.bench_function(MOKA_FUTURE, |b| b.iter_custom(|iters| moka.run(&rt, iters)));

    group.finish();
    for (name, storm) in [(EBB, ebb.counts()), (MOKA_FUTURE, moka.counts())] {
        let (storms, loads) = storm;
        eprintln!(
            "miss_storm/{name}: {loads} loader runs in {storms} storms of {STORM} callers \
             ({:.3} per storm)",
            loads as f64 / storms as f64
        );
    }
    assert_eq!(ebb.cache.entry_count(), ebb.counts().0);
}

/// The `miss_heavy` key sequence: Zipf(s = `ZIPF_S`) over `KEYS`, `BATCH` keys, fixed seed.
fn zipf_keys() -> Arc<[u64]> {
    let mut rng = StdRng::seed_from_u64(0x00eb_b10a_d000_0002);
    let zipf = Zipf::new(KEYS as f64, ZIPF_S).expect("valid Zipf parameters");
    (0..BATCH)
        // Rank 1 is the most popular key; ranks are 1..=KEYS.
        .map(|_| (zipf.sample(&mut rng) as u64 - 1).min(KEYS - 1))
        .collect()
}

/// One thread's share of a `miss_heavy` batch: `get_with(key, async { key })` for each key.
/// Returns how many times the loader ran (the misses this thread loaded itself).
async fn walk<C: GetWith>(cache: &C, keys: &[u64]) -> u64 {
    // Only this thread touches it: a plain load and store, no read-modify-write.
    let loads = AtomicU64::new(0);
    for &key in keys {
        let loads = &loads;
        let value = cache
            .get_with(key, async move {
                loads.store(loads.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                key
            })
            .await;
        assert_eq!(value, key);
    }
    loads.into_inner()
}

/// One `miss_heavy` batch on `cache`: 2 OS threads, each with its own current-thread runtime,
/// start together at a barrier; thread 0 walks the first half of `keys`, thread 1 the
/// second. Returns the wall time from the earliest start to the latest finish, and the
/// loader runs.
fn batch<C: GetWith>(cache: &C, keys: &[u64]) -> (Duration, u64) {
    let barrier = Barrier::new(2);
    let (first, second) = keys.split_at(keys.len() / 2);
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = [first, second]
            .into_iter()
            .map(|half| {
                let barrier = &barrier;
                s.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .expect("current-thread runtime");
                    barrier.wait();
                    let start = Instant::now();
                    let loads = rt.block_on(walk(cache, half));
                    (start, Instant::now(), loads)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("miss_heavy worker panicked"))
            .collect::<Vec<_>>()
    });
    let start = results.iter().map(|r| r.0).min().expect("two threads");
    let end = results.iter().map(|r| r.1).max().expect("two threads");
    (end - start, results.iter().map(|r| r.2).sum())
}

/// Run `iters` `miss_heavy` batches, each on a fresh cache from `make` that is built and
/// dropped off the clock; add the loader runs to `loads`.
fn batches<C: GetWith>(
    iters: u64,
    keys: &[u64],
    loads: &AtomicU64,
    batches_run: &AtomicU64,
    make: impl Fn() -> C,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let cache = make();
        let (elapsed, loaded) = batch(&cache, keys);
        total += elapsed;
        loads.fetch_add(loaded, Ordering::Relaxed);
        drop(cache);
    }
    batches_run.fetch_add(iters, Ordering::Relaxed);
    total
}

/// Group 3: 2 OS threads, Zipf(0.9) keys over 1,000,000, every op a `get_with` whose loader
/// returns the key; each iteration is one batch of `BATCH` ops from an empty cache.
fn miss_heavy(c: &mut Criterion) {
    let rt = runtime();
    let keys = zipf_keys();
    let distinct = {
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        sorted.len()
    };
    let mut group = c.benchmark_group("miss_heavy");
    configure(&mut group);
    // An iteration is a whole batch (tens of ms for ebb, about 100 ms for moka here): linear
    // sampling would need 210 of them, flat sampling at least one per sample.
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    group.throughput(Throughput::Elements(BATCH as u64));

    let (ebb_loads, ebb_batches) = (AtomicU64::new(0), AtomicU64::new(0));
    group.bench_function(EBB, |b| {
        b.iter_custom(|iters| batches(iters, &keys, &ebb_loads, &ebb_batches, || ebb_cache(&rt)))
    });

    let (moka_loads, moka_batches) = (AtomicU64::new(0), AtomicU64::new(0));
    group.bench_function(MOKA_FUTURE, |b| {
        b.iter_custom(|iters| batches(iters, &keys, &moka_loads, &moka_batches, moka_cache))
    });

    group.finish();
    eprintln!(
        "miss_heavy: {BATCH} ops per batch, {distinct} distinct keys: the least possible \
         loads per batch (hit ratio at most {:.4})",
        1.0 - distinct as f64 / BATCH as f64
    );
    for (name, loads, batches) in [
        (EBB, &ebb_loads, &ebb_batches),
        (MOKA_FUTURE, &moka_loads, &moka_batches),
    ] {
        let (loads, batches) = (
            loads.load(Ordering::Relaxed),
            batches.load(Ordering::Relaxed),
        );
        let per_batch = loads as f64 / batches as f64;
        eprintln!(
            "miss_heavy/{name}: {per_batch:.1} loads per batch over {batches} batches: \
             observed hit ratio {:.4}",
            1.0 - per_batch / BATCH as f64
        );
    }
}

criterion_group!(benches, get_with_hit, miss_storm, miss_heavy);
criterion_main!(benches);
