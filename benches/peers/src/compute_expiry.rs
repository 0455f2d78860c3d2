//! `ebb-peers compute-expiry [ROUNDS]`: ebb's compute (`entry(k).and_upsert_with`) on a hot
//! key against moka's, and what configuring a per-entry [`ebb_cache::Expiry`] costs a `get`.
//! Both parts alternate, round after round, as `read-heavy` does.
//!
//! **Computes.** One counter key, `u64 -> u64`, incremented `INCREMENTS` times with
//! `entry(key).and_upsert_with(|e| async move { e.map_or(1, |e| e.into_value() + 1) })`
//! (moka's sync cache: the same closure without `async`), by 1, 2 and 8 tasks (each
//! `INCREMENTS / tasks` of them) spawned by one driver task on a 2-worker multi-thread
//! runtime; the time is from the first spawn until every task has joined. Each measurement
//! uses a fresh key of a long-lived cache (TTL 300 s, no capacity bound; ebb built on that
//! runtime), and afterwards the key's count must equal `INCREMENTS`. Per round and task
//! count, `moka_future` and `moka_sync` are each measured right before or right after ebb
//! (the order alternates from round to round, the two take turns); a ratio is the median over
//! rounds of ebb's time over the peer's within such a pair (< 1: ebb is faster).
//!
//! **Expiry on reads.** The `read_heavy` key sequence (Zipf 1.0 over 100,000 keys,
//! `mixed::zipf_ops`) read as gets only, two threads (`mixed::two_threads`), 2^20 gets a
//! measurement, on three ebb caches built with a TTL of 300 s, filled with every key and left
//! alone for `mixed::SETTLE` (so every get hits):
//!
//! - `ebb`: nothing else;
//! - `ebb_expiry`: `.expire_after(Inert)`, whose methods all return `None` and which does not
//!   observe reads (the trait's defaults);
//! - `ebb_expiry_reads`: `.expire_after(Reads)`, the same but `observes_reads()` is `true`
//!   (its `expire_after_read` returns `None`), so every get asks it.
//!
//! Each of the last two is measured right before or right after `ebb`, as above; a ratio is
//! the median over rounds of its time over ebb's within a pair (target for `ebb_expiry`:
//! ≤ 1.03). Before timing, untimed caches built with counting versions of both policies check
//! that reads ask the observing one once per get and the inert one never.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use tokio::runtime::Runtime;
use tokio::time::Instant;

use crate::mixed::{two_threads, zipf_ops, Contender, Walk, INSERT_BIT, KEYS, OPS, SETTLE};
use crate::names::{EBB, MOKA_FUTURE, MOKA_SYNC};

/// The TTL of every cache here, as in `read_heavy`.
const TTL: Duration = Duration::from_secs(300);
/// Increments of the counter key per measurement (divisible by every task count).
const INCREMENTS: u64 = 1 << 16;
/// The scenarios of the compute part: (tasks, whether each task yields after each increment).
const TASKS: [(usize, bool); 6] = [
    (1, false),
    (2, false),
    (8, false),
    (1, true),
    (2, true),
    (8, true),
];
/// Gets per measurement in the expiry part: one pass over the sequence.
const READS: u64 = OPS as u64;
/// The target: `ebb_expiry`'s time per get over `ebb`'s, at most.
const INERT_TARGET: f64 = 1.03;

/// ebb built with an `Expiry` that answers `None` everywhere and does not observe reads.
const EBB_EXPIRY: &str = "ebb_expiry";
/// ebb built with an `Expiry` that answers `None` everywhere and observes reads.
const EBB_EXPIRY_READS: &str = "ebb_expiry_reads";

/// Every method `None`, reads not observed: the trait's defaults.
struct Inert;
impl ebb_cache::Expiry<u64, u64> for Inert {}

/// Every method `None`, reads observed.
struct Reads;
impl ebb_cache::Expiry<u64, u64> for Reads {
    fn observes_reads(&self) -> bool {
        true
    }
}

/// [`Inert`] or [`Reads`] (as `observes`) counting the calls of each method: for the untimed
/// check only, never in a timed cache (the shared counter would cost more than the call).
struct Counting {
    observes: bool,
    creates: Arc<AtomicU64>,
    reads: Arc<AtomicU64>,
}
impl ebb_cache::Expiry<u64, u64> for Counting {
    fn expire_after_create(&self, _: &u64, _: &u64, _: Instant) -> Option<Duration> {
        self.creates.fetch_add(1, Ordering::Relaxed);
        None
    }
    fn expire_after_read(
        &self,
        _: &u64,
        _: &u64,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        None
    }
    fn observes_reads(&self) -> bool {
        self.observes
    }
}

/// A cache with a compute, as the compute part drives it.
trait Counter: Send + Sync + 'static {
    /// Add one to `key`'s count (1 if absent); the new count.
    fn increment(&self, key: u64) -> impl Future<Output = u64> + Send;
    fn count(&self, key: u64) -> Option<u64>;
}

impl Counter for ebb_cache::Cache<u64, u64> {
    async fn increment(&self, key: u64) -> u64 {
        self.entry(key)
            .and_upsert_with(|e| async move { e.map_or(1, |e| e.into_value() + 1) })
            .await
            .into_value()
    }
    fn count(&self, key: u64) -> Option<u64> {
        self.get(&key)
    }
}

impl Counter for moka::future::Cache<u64, u64> {
    async fn increment(&self, key: u64) -> u64 {
        self.entry(key)
            .and_upsert_with(|e| async move { e.map_or(1, |e| e.into_value() + 1) })
            .await
            .into_value()
    }
    fn count(&self, key: u64) -> Option<u64> {
        pollster::block_on(self.get(&key))
    }
}

impl Counter for moka::sync::Cache<u64, u64> {
    async fn increment(&self, key: u64) -> u64 {
        self.entry(key)
            .and_upsert_with(|e| e.map_or(1, |e| e.into_value() + 1))
            .into_value()
    }
    fn count(&self, key: u64) -> Option<u64> {
        self.get(&key)
    }
}

/// ns per increment of `INCREMENTS` increments of the fresh key `key` by `tasks` tasks, and
/// the share of increments that found another task's count (the previous increment of the key
/// was not this task's: the tasks did interleave); checks the count.
fn increments<C: Counter>(
    rt: &Runtime,
    cache: &Arc<C>,
    key: u64,
    (tasks, yields): (usize, bool),
) -> (f64, f64) {
    let cache = Arc::clone(cache);
    let driver = rt.spawn(async move {
        let start = StdInstant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move {
                    let (mut last, mut interleaved) = (0, 0u64);
                    for _ in 0..INCREMENTS / tasks as u64 {
                        let count = cache.increment(key).await;
                        interleaved += u64::from(count != last + 1);
                        last = count;
                        if yields {
                            tokio::task::yield_now().await;
                        }
                    }
                    interleaved
                })
            })
            .collect();
        let mut interleaved = 0;
        for handle in handles {
            interleaved += handle.await.expect("an incrementing task panicked");
        }
        let elapsed = start.elapsed();
        (elapsed, interleaved, cache.count(key))
    });
    let (elapsed, interleaved, count) = rt.block_on(driver).expect("the driver task panicked");
    assert_eq!(
        count,
        Some(INCREMENTS),
        "{tasks} tasks (yields {yields}) lost increments"
    );
    (
        elapsed.as_nanos() as f64 / INCREMENTS as f64,
        interleaved as f64 / INCREMENTS as f64,
    )
}

pub fn run(args: &[String]) -> Result<String, String> {
    let rounds = crate::rounds(args, 21)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = computes(&rt, rounds);
    out.push('\n');
    out.push_str(&expiry_reads(&rt, rounds)?);
    Ok(out)
}

/// The compute part: a Markdown table.
fn computes(rt: &Runtime, rounds: usize) -> String {
    let ebb = Arc::new(
        ebb_cache::Cache::<u64, u64>::builder()
            .time_to_live(TTL)
            .build_on(rt.handle()),
    );
    let moka_future = Arc::new(
        moka::future::Cache::<u64, u64>::builder()
            .time_to_live(TTL)
            .build(),
    );
    let moka_sync = Arc::new(
        moka::sync::Cache::<u64, u64>::builder()
            .time_to_live(TTL)
            .build(),
    );
    let mut key = 0u64;
    let mut fresh = || {
        key += 1;
        key
    };
    // Per task count: [ebb beside moka_future, moka_future, ebb beside moka_sync, moka_sync],
    // ns per increment, one per round.
    let mut times = vec![[(); 4].map(|_| Vec::with_capacity(rounds)); TASKS.len()];
    // The same, the share of increments that found another task's count.
    let mut mixed = times.clone();
    for round in 0..rounds {
        for (t, &tasks) in TASKS.iter().enumerate() {
            for j in 0..2 {
                let peer = (round + j) % 2;
                let mut measure = |which: usize| match which {
                    0 => increments(rt, &ebb, fresh(), tasks),
                    1 => increments(rt, &moka_future, fresh(), tasks),
                    _ => increments(rt, &moka_sync, fresh(), tasks),
                };
                let (e, p) = if round % 2 == 0 {
                    let e = measure(0);
                    (e, measure(1 + peer))
                } else {
                    let p = measure(1 + peer);
                    (measure(0), p)
                };
                times[t][2 * peer].push(e.0);
                times[t][2 * peer + 1].push(p.0);
                mixed[t][2 * peer].push(e.1);
                mixed[t][2 * peer + 1].push(p.1);
            }
        }
    }
    let mut out = format!(
        "### compute-expiry: `and_upsert_with` on one hot key ({rounds} rounds; \
         {INCREMENTS} increments a measurement, 2-worker runtime; ebb ÷ peer: median over \
         rounds of the time ratio within a pair, range in brackets)\n\n\
         | tasks | yield | {EBB} ns/increment | {MOKA_FUTURE} ns/increment | {EBB} ÷ {MOKA_FUTURE} | \
         {MOKA_SYNC} ns/increment | {EBB} ÷ {MOKA_SYNC} | interleaved increments, \
         {EBB} / {MOKA_FUTURE} / {MOKA_SYNC} |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|\n"
    );
    for (t, (tasks, yields)) in TASKS.iter().enumerate() {
        let yields = if *yields { "after each" } else { "no" };
        let [ef, f, es, s] = &times[t];
        let ebb_all: Vec<f64> = ef.iter().chain(es).copied().collect();
        let [mef, mf, mes, ms] = &mixed[t];
        let ebb_mixed: Vec<f64> = mef.iter().chain(mes).copied().collect();
        let _ = writeln!(
            out,
            "| {tasks} | {yields} | {:.0} | {:.0} | {} | {:.0} | {} | {:.1}% / {:.1}% / {:.1}% |",
            crate::median(ebb_all),
            crate::median(f.clone()),
            ratios(ef, f),
            crate::median(s.clone()),
            ratios(es, s),
            100.0 * crate::median(ebb_mixed),
            100.0 * crate::median(mf.clone()),
            100.0 * crate::median(ms.clone()),
        );
    }
    let _ = writeln!(
        out,
        "\nEvery measurement's final count was {INCREMENTS} (checked), for every cache. \
         Interleaved: the median share of increments whose previous increment of the key was \
         another task's."
    );
    out
}

/// The expiry part: a Markdown table and the ratios.
fn expiry_reads(rt: &Runtime, rounds: usize) -> Result<String, String> {
    // The check, untimed: who asks the policy on a read.
    let mut asked = Vec::new();
    for observes in [false, true] {
        let (creates, reads) = (Arc::default(), Arc::default());
        let cache = ebb_cache::Cache::<u64, u64>::builder()
            .time_to_live(TTL)
            .expire_after(Counting {
                observes,
                creates: Arc::clone(&creates),
                reads: Arc::clone(&reads),
            })
            .build_on(rt.handle());
        (0..1000).for_each(|k| cache.insert(k, k));
        let hits = (0..1000).filter(|k| cache.get(k).is_some()).count();
        let (c, r) = (
            creates.load(Ordering::Relaxed),
            reads.load(Ordering::Relaxed),
        );
        let wanted = if observes { 1000 } else { 0 };
        if hits != 1000 || c != 1000 || r != wanted {
            return Err(format!(
                "Expiry (observes_reads {observes}): {hits} hits, {c} creates asked, {r} reads \
                 asked of 1000 (wanted 1000, 1000, {wanted})"
            ));
        }
        asked.push(r);
    }

    let ebb = |name: &'static str,
               builder: fn(
        ebb_cache::CacheBuilder<u64, u64>,
    ) -> ebb_cache::CacheBuilder<u64, u64>| {
        let handle = rt.handle().clone();
        Contender::new(name, move || {
            builder(ebb_cache::Cache::builder().time_to_live(TTL)).build_on(&handle)
        })
    };
    let contenders = vec![
        ebb(EBB, |b| b),
        ebb(EBB_EXPIRY, |b| b.expire_after(Inert)),
        ebb(EBB_EXPIRY_READS, |b| b.expire_after(Reads)),
    ];
    // Gets only: the keys of the `read_heavy` sequence.
    let gets: Arc<[u32]> = zipf_ops().iter().map(|op| op & !INSERT_BIT).collect();
    let walks: Vec<(&str, Walk)> = contenders.into_iter().map(|c| (c.name, c.fill())).collect();
    std::thread::sleep(SETTLE);

    let measure =
        |i: usize| two_threads(READS, &gets, &walks[i].1).as_nanos() as f64 / READS as f64;
    // ns per operation of every implementation in every round, and of ebb beside it.
    let (times, beside) = crate::pairs_beside(walks.len(), 0, rounds, measure);

    let mut out = format!(
        "### compute-expiry: `get` with a per-entry Expiry ({rounds} rounds; each cache beside \
         ebb on {READS} gets, 2 threads, Zipf 1.0 over {KEYS} keys, all hits)\n\n\
         | cache | median ns/get | fastest | slowest | time ÷ ebb's (median of pairs) |\n\
         |---|---:|---:|---:|---:|\n"
    );
    for (i, (name, _)) in walks.iter().enumerate() {
        let mut t = times[i].clone();
        t.sort_by(f64::total_cmp);
        let ratio = if i == 0 {
            "1".to_string()
        } else {
            ratios(&times[i], &beside[i])
        };
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.1} | {:.1} | {ratio} |",
            crate::median(t.clone()),
            t[0],
            t[t.len() - 1],
        );
    }
    let r = crate::median((0..rounds).map(|r| times[1][r] / beside[1][r]).collect());
    let verdict = if r <= INERT_TARGET { "met" } else { "missed" };
    let _ = writeln!(
        out,
        "\n- {EBB_EXPIRY} ÷ {EBB} time per get: median {r:.3} (target ≤ {INERT_TARGET:.2}: \
         {verdict})\n- checked untimed on 1,000 gets: an Expiry that does not observe reads was \
         asked {} times, one that does {} times",
        asked[0], asked[1]
    );
    Ok(out)
}

/// The median of `a[r] / b[r]` over rounds, with its range in brackets.
fn ratios(a: &[f64], b: &[f64]) -> String {
    let mut r: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
    r.sort_by(f64::total_cmp);
    format!("{:.2} ({:.2}-{:.2})", r[r.len() / 2], r[0], r[r.len() - 1])
}
