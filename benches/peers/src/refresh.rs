//! `ebb-peers refresh-latency [ROUNDS]` and `ebb-peers refresh-reads [ROUNDS]`: what
//! refresh-ahead ([`ebb_cache::LoadingCache`] with `refresh_after`) does for callers of hot
//! keys, and what it costs a `get`.
//!
//! **Latency** (`refresh-latency`). A source of fixed latency: the loader sleeps `LATENCY`
//! (20 ms, `tokio::time::sleep`, real time) and returns the key. `CALLERS` caller tasks on a
//! 2-worker multi-thread runtime each call a hot key (uniform over `HOT_KEYS`, seeded) in a
//! loop for `RUN`, pausing 1-5 ms (`tokio::time::sleep`, uniform) between calls; every call
//! is timed alone (`std::time::Instant` around it). Three configurations, each on a fresh,
//! empty cache of its own, TTL 1 s:
//!
//! - `ebb_refresh`: `LoadingCache` with `.tick(10 ms)`, `.record_stats()` and
//!   `.refresh_after(800 ms)`; callers `fetch`;
//! - `ebb_fetch`: the same without `refresh_after`; callers `fetch`;
//! - `moka_future`: `moka::future::Cache` with `time_to_live(1 s)`; callers
//!   `get_with(key, <the same loader's future>)`.
//!
//! Per round each configuration runs once, alone, the order rotating from round to round.
//!
//! What is counted (per measurement):
//!
//! - A key's *first load* is its loader invocation that started first; a *cold* call is one
//!   that started before that load ended (it could only wait). Cold calls and first loads are
//!   excluded from everything below except the totals.
//! - Latency p50 / p99 / p99.9 / max: over the other calls.
//! - *Waited* calls: those that took longer than `LATENCY / 2` (10 ms). A cache hit takes
//!   microseconds, so such a call found no value ready; "during a load" when a load of its key
//!   also ended while it was in progress (the others were slow for another reason: the thread
//!   lost its core). A caller that joins a load in its last 10 ms waits less and is not
//!   counted here, hence the next count.
//! - Calls that *joined* a load: those in progress as a load of their key ended that took
//!   longer than `JOINED` (1 ms; a hit takes microseconds), however short the wait.
//! - Loads, by where the loader ran: *by a caller* (inside a caller task: `fetch` and moka's
//!   `get_with` run the loader in the calling task; told by a task-local the caller tasks
//!   set), or *in the background* (ebb's reload tasks). A background load *had callers
//!   waiting* when a call joined it (as above). A load by a caller always had one caller
//!   waiting: the one that ran it.
//!
//! The target: in `ebb_refresh`, past each key's first load, no waited call, no call that
//! joined a load, no load by a caller (and so no load with callers waiting).
//!
//! **Reads** (`refresh-reads`). The `read_heavy` key sequence (Zipf 1.0 over 100,000 keys,
//! `mixed::zipf_ops`) read as gets only, 2 threads (`mixed::two_threads`), 2^20 gets a
//! measurement, every key present (filled, then `mixed::SETTLE`), TTL 300 s, on three caches:
//! `ebb` (plain `Cache`), `ebb_refresh` (a `LoadingCache` with `refresh_after(240 s)`, read
//! with `get` through its `Deref`; nothing is due for a refresh during the run, and the run
//! checks that its loader never ran) and `ebb_tti` (`time_to_idle(60 s)` beside the TTL, as
//! in `read_heavy`). Each of the last two is measured right before or right after `ebb`, the
//! order alternating, as `read-heavy` does; a ratio is the median over rounds of `ebb`'s time
//! over its time within a pair (its throughput over ebb's; target for `ebb_refresh`: ≥ 0.90).
//! After the rounds, every key must still be present in all three caches.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::runtime::Runtime;

use crate::mixed::{two_threads, walk_sync, zipf_ops, ReadHeavy, Walk, INSERT_BIT, KEYS, OPS};
use crate::mixed::{SETTLE, TTI};
use crate::names::{EBB, EBB_TTI, MOKA_FUTURE};

/// The source's latency: every load sleeps this long.
const LATENCY: Duration = Duration::from_millis(20);
/// The TTL of the latency part.
const TTL: Duration = Duration::from_secs(1);
/// `refresh_after` of `ebb_refresh` in the latency part.
const REFRESH_AFTER: Duration = Duration::from_millis(800);
/// The expiry task's tick of both ebb caches in the latency part.
const TICK: Duration = Duration::from_millis(10);
/// Hot keys: every call asks one of them.
const HOT_KEYS: u64 = 4;
/// Caller tasks.
const CALLERS: u64 = 8;
/// Each caller's pause between calls: uniform over these milliseconds.
const PAUSE_MS: std::ops::RangeInclusive<u64> = 1..=5;
/// How long each configuration runs per round.
const RUN: Duration = Duration::from_secs(12);
/// A call that took longer than this found no value ready.
const WAITED: Duration = Duration::from_millis(10);
/// A call in progress as a load of its key ended that took longer than this waited for it.
const JOINED: Duration = Duration::from_millis(1);

/// The TTL of the reads part, as in `read_heavy`.
const READ_TTL: Duration = Duration::from_secs(300);
/// `refresh_after` of `ebb_refresh` in the reads part: long after the run.
const READ_REFRESH_AFTER: Duration = Duration::from_secs(240);
/// Gets per measurement in the reads part: one pass over the sequence.
const READS: u64 = OPS as u64;
/// The target: `ebb_refresh`'s get throughput over `ebb`'s, at least.
const READ_TARGET: f64 = 0.90;

/// ebb's `LoadingCache` with `refresh_after`.
const EBB_REFRESH: &str = "ebb_refresh";
/// ebb's `LoadingCache` without `refresh_after` (fetch only).
const EBB_FETCH: &str = "ebb_fetch";
/// The configurations of the latency part, in this order.
const CONFIGS: [&str; 3] = [EBB_REFRESH, EBB_FETCH, MOKA_FUTURE];

tokio::task_local! {
    /// Set in the caller tasks: a loader that sees it runs in a caller's task.
    static CALLER: ();
}

/// One loader invocation that ran to its end.
struct Load {
    key: u64,
    /// It ran inside a caller task.
    by_caller: bool,
    start: Instant,
    end: Instant,
}

/// One call of a caller.
struct Call {
    key: u64,
    start: Instant,
    end: Instant,
}

impl Call {
    fn took(&self) -> Duration {
        self.end - self.start
    }
}

/// The invocations of one measurement's loader.
type Log = Arc<Mutex<Vec<Load>>>;

/// The source: sleep `LATENCY`, return the key; log the invocation.
fn source(log: &Log, key: u64) -> impl Future<Output = Result<u64, Infallible>> + Send {
    let log = Arc::clone(log);
    async move {
        let by_caller = CALLER.try_with(|_| ()).is_ok();
        let start = Instant::now();
        tokio::time::sleep(LATENCY).await;
        let end = Instant::now();
        log.lock().expect("the load log").push(Load {
            key,
            by_caller,
            start,
            end,
        });
        Ok(key)
    }
}

/// One configuration of the latency part, built.
enum Subject {
    Ebb(ebb_cache::LoadingCache<u64, u64, Infallible>),
    Moka(moka::future::Cache<u64, u64>, Log),
}

impl Subject {
    fn build(name: &str, rt: &Runtime, log: &Log) -> Subject {
        let ebb = |refresh: bool| {
            let log = Arc::clone(log);
            let builder = ebb_cache::Cache::builder()
                .time_to_live(TTL)
                .tick(TICK)
                .record_stats()
                .loader(move |key: u64| source(&log, key));
            let builder = match refresh {
                true => builder.refresh_after(REFRESH_AFTER),
                false => builder,
            };
            Subject::Ebb(builder.build_on(rt.handle()))
        };
        match name {
            EBB_REFRESH => ebb(true),
            EBB_FETCH => ebb(false),
            _ => Subject::Moka(
                moka::future::Cache::builder().time_to_live(TTL).build(),
                Arc::clone(log),
            ),
        }
    }

    async fn call(&self, key: u64) -> u64 {
        match self {
            Subject::Ebb(cache) => cache.fetch(key).await.expect("the source never fails"),
            Subject::Moka(cache, log) => {
                let load = source(log, key);
                cache
                    .get_with(
                        key,
                        async move { load.await.expect("the source never fails") },
                    )
                    .await
            }
        }
    }
}

/// A caller task's loop: a hot key, a pause, until `until`.
async fn caller(subject: Arc<Subject>, seed: u64, until: Instant) -> Vec<Call> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut calls = Vec::new();
    while Instant::now() < until {
        let key = rng.random_range(0..HOT_KEYS);
        let start = Instant::now();
        let value = subject.call(key).await;
        let end = Instant::now();
        assert_eq!(value, key, "a wrong value");
        calls.push(Call { key, start, end });
        let pause = rng.random_range(PAUSE_MS);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    calls
}

/// What one measurement of one configuration found.
struct Measured {
    calls: usize,
    cold_calls: usize,
    /// Latencies of the calls that were not cold, sorted.
    latencies: Vec<Duration>,
    waited: usize,
    waited_during_load: usize,
    /// Calls that joined a load: in progress as it ended, longer than `JOINED`.
    joined: usize,
    loads: usize,
    first_loads: usize,
    /// Loads past each key's first, by a caller.
    caller_loads: usize,
    /// Loads past each key's first, in the background.
    background_loads: usize,
    /// Background loads past each key's first that had callers waiting.
    background_waited: usize,
    /// ebb's `reloads_started`, `reloads_succeeded` (0 for moka).
    reloads: (u64, u64),
}

impl Measured {
    fn percentile(&self, q: f64) -> Duration {
        let l = &self.latencies;
        if l.is_empty() {
            return Duration::ZERO;
        }
        l[((l.len() - 1) as f64 * q).round() as usize]
    }
}

/// Run `name` for `RUN` on a fresh cache and count.
fn measure(rt: &Runtime, name: &str, round: usize) -> Measured {
    let log: Log = Arc::default();
    let subject = Arc::new(Subject::build(name, rt, &log));
    let until = Instant::now() + RUN;
    let tasks = {
        let subject = Arc::clone(&subject);
        rt.spawn(async move {
            let handles: Vec<_> = (0..CALLERS)
                .map(|c| {
                    let seed = 0x00eb_b0ef_0000_0000 + (round as u64) * 64 + c;
                    let calls = caller(Arc::clone(&subject), seed, until);
                    tokio::spawn(CALLER.scope((), calls))
                })
                .collect();
            let mut calls = Vec::new();
            for handle in handles {
                calls.extend(handle.await.expect("a caller task panicked"));
            }
            calls
        })
    };
    let calls = rt.block_on(tasks).expect("the driver task panicked");
    let reloads = match &*subject {
        Subject::Ebb(cache) => {
            let stats = cache.stats();
            (stats.reloads_started, stats.reloads_succeeded)
        }
        Subject::Moka(..) => (0, 0),
    };
    drop(subject);
    let loads = std::mem::take(&mut *log.lock().expect("the load log"));
    count(calls, loads, reloads)
}

fn count(calls: Vec<Call>, mut loads: Vec<Load>, reloads: (u64, u64)) -> Measured {
    loads.sort_by_key(|l| l.start);
    // Each key's first load: the one that started first.
    let mut first = vec![None; HOT_KEYS as usize];
    for (i, load) in loads.iter().enumerate() {
        first[load.key as usize].get_or_insert(i);
    }
    let ready = |key: u64| first[key as usize].map(|i| loads[i].end);
    let (cold, warm): (Vec<Call>, Vec<Call>) = calls
        .into_iter()
        .partition(|c| ready(c.key).is_none_or(|ready| c.start < ready));
    let waited: Vec<&Call> = warm.iter().filter(|c| c.took() > WAITED).collect();
    let during = |c: &Call, l: &Load| l.key == c.key && c.start <= l.end && l.end <= c.end;
    let waited_during_load = waited
        .iter()
        .filter(|c| loads.iter().any(|l| during(c, l)))
        .count();
    let later: Vec<&Load> = loads
        .iter()
        .enumerate()
        .filter(|(i, _)| !first.contains(&Some(*i)))
        .map(|(_, l)| l)
        .collect();
    let joins = |c: &Call, l: &Load| during(c, l) && c.took() > JOINED;
    let joined = warm
        .iter()
        .filter(|c| loads.iter().any(|l| joins(c, l)))
        .count();
    let background_waited = later
        .iter()
        .filter(|l| !l.by_caller && warm.iter().any(|c| joins(c, l)))
        .count();
    let mut latencies: Vec<Duration> = warm.iter().map(Call::took).collect();
    latencies.sort();
    Measured {
        calls: cold.len() + warm.len(),
        cold_calls: cold.len(),
        latencies,
        waited: waited.len(),
        waited_during_load,
        joined,
        loads: loads.len(),
        first_loads: first.iter().flatten().count(),
        caller_loads: later.iter().filter(|l| l.by_caller).count(),
        background_loads: later.iter().filter(|l| !l.by_caller).count(),
        background_waited,
        reloads,
    }
}

/// `ebb-peers refresh-latency [ROUNDS]`.
pub fn run_latency(args: &[String]) -> Result<String, String> {
    let rounds = crate::rounds(args, 3)?;
    let rt = crate::two_workers()?;
    // Per configuration, one per round.
    let mut found: Vec<Vec<Measured>> = CONFIGS.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for j in 0..CONFIGS.len() {
            let c = (round + j) % CONFIGS.len();
            found[c].push(measure(&rt, CONFIGS[c], round));
        }
    }

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    // The median over rounds of `f`, with its range.
    let over = |c: usize, f: &dyn Fn(&Measured) -> f64| {
        let mut v: Vec<f64> = found[c].iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        format!(
            "{} ({}-{})",
            fmt(v[v.len() / 2]),
            fmt(v[0]),
            fmt(v[v.len() - 1])
        )
    };
    let per_round = |c: usize, f: &dyn Fn(&Measured) -> usize| {
        let v: Vec<usize> = found[c].iter().map(f).collect();
        let list: Vec<String> = v.iter().map(usize::to_string).collect();
        format!("{} ({})", v.iter().sum::<usize>(), list.join(", "))
    };
    let mut out = format!(
        "### refresh-latency ({rounds} rounds; each configuration alone for {} s a round, \
         order rotating; source latency {} ms; TTL {} s; {HOT_KEYS} hot keys, {CALLERS} \
         caller tasks pausing {}-{} ms between calls; 2-worker runtime)\n\n\
         Latency of the calls that were not cold, in µs: the median over rounds (range). \
         Counts: the total over rounds (per round).\n\n\
         | configuration | calls | cold calls (excluded) | p50 | p99 | p99.9 | max |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        RUN.as_secs(),
        LATENCY.as_millis(),
        TTL.as_secs(),
        PAUSE_MS.start(),
        PAUSE_MS.end(),
    );
    for (c, name) in CONFIGS.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            per_round(c, &|m| m.calls),
            per_round(c, &|m| m.cold_calls),
            over(c, &|m| us(m.percentile(0.5))),
            over(c, &|m| us(m.percentile(0.99))),
            over(c, &|m| us(m.percentile(0.999))),
            over(c, &|m| us(m.percentile(1.0))),
        );
    }
    let _ = write!(
        out,
        "\n| configuration | waited calls (> {} ms) | of which during a load of the key | calls \
         that joined a load (> {} ms) | loads, all | first | later, by a caller | later, in the \
         background | of which with callers waiting | reloads started / succeeded |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        WAITED.as_millis(),
        JOINED.as_millis(),
    );
    for (c, name) in CONFIGS.iter().enumerate() {
        let (started, succeeded) = found[c]
            .iter()
            .fold((0, 0), |(s, ok), m| (s + m.reloads.0, ok + m.reloads.1));
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {started} / {succeeded} |",
            per_round(c, &|m| m.waited),
            per_round(c, &|m| m.waited_during_load),
            per_round(c, &|m| m.joined),
            per_round(c, &|m| m.loads),
            per_round(c, &|m| m.first_loads),
            per_round(c, &|m| m.caller_loads),
            per_round(c, &|m| m.background_loads),
            per_round(c, &|m| m.background_waited),
        );
    }
    // Paired ratios within a round.
    let ratio = |a: usize, b: usize, q: f64| {
        let mut v: Vec<f64> = (0..rounds)
            .map(|r| us(found[a][r].percentile(q)) / us(found[b][r].percentile(q)))
            .collect();
        v.sort_by(f64::total_cmp);
        format!("{:.4} ({:.4}-{:.4})", v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let _ = writeln!(
        out,
        "\nWithin a round, median over rounds (range):\n\n\
         | ratio | p50 | p99 |\n|---|---:|---:|\n\
         | {EBB_REFRESH} ÷ {EBB_FETCH} | {} | {} |\n\
         | {EBB_REFRESH} ÷ {MOKA_FUTURE} | {} | {} |\n\
         | {EBB_FETCH} ÷ {MOKA_FUTURE} | {} | {} |",
        ratio(0, 1, 0.5),
        ratio(0, 1, 0.99),
        ratio(0, 2, 0.5),
        ratio(0, 2, 0.99),
        ratio(1, 2, 0.5),
        ratio(1, 2, 0.99),
    );
    let waited: usize = found[0].iter().map(|m| m.waited).sum();
    let joined: usize = found[0].iter().map(|m| m.joined).sum();
    let by_caller: usize = found[0].iter().map(|m| m.caller_loads).sum();
    let with_waiters: usize = found[0].iter().map(|m| m.background_waited).sum();
    let verdict = match waited + joined + by_caller + with_waiters {
        0 => "met",
        _ => "missed",
    };
    let _ = writeln!(
        out,
        "\n- {EBB_REFRESH}, past each key's first load: {waited} waited calls, {joined} calls \
         that joined a load, {by_caller} loads by a caller, {with_waiters} background loads with \
         callers waiting (target 0: {verdict})"
    );
    Ok(out)
}

/// Up to 3 significant digits, no exponent.
fn fmt(x: f64) -> String {
    match x {
        x if x >= 100.0 => format!("{x:.0}"),
        x if x >= 10.0 => format!("{x:.1}"),
        x => format!("{x:.2}"),
    }
}

impl ReadHeavy for ebb_cache::LoadingCache<u64, u64, Infallible> {
    #[inline]
    fn insert(&self, key: u64, value: u64) {
        ebb_cache::Cache::insert(self, key, value);
    }
    #[inline]
    fn get(&self, key: u64) -> Option<u64> {
        ebb_cache::Cache::get(self, &key)
    }
}

/// A filled cache's walk, and a check that every key is still present.
fn filled<C: ReadHeavy + Send + Sync + 'static>(cache: C) -> (Walk, Box<dyn Fn() -> bool>) {
    (0..KEYS).for_each(|k| cache.insert(k, k));
    let cache = Arc::new(cache);
    let check = Arc::clone(&cache);
    (
        Box::new(move |ops: &[u32], offset: usize, n: u64| walk_sync(&*cache, ops, offset, n)),
        Box::new(move || (0..KEYS).all(|k| check.get(k) == Some(k))),
    )
}

/// `ebb-peers refresh-reads [ROUNDS]`.
pub fn run_reads(args: &[String]) -> Result<String, String> {
    let rounds = crate::rounds(args, 21)?;
    let rt = crate::two_workers()?;
    let handle = rt.handle();
    let loaded = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&loaded);
    let plain = ebb_cache::Cache::<u64, u64>::builder()
        .time_to_live(READ_TTL)
        .build_on(handle);
    let refresh = ebb_cache::Cache::<u64, u64>::builder()
        .time_to_live(READ_TTL)
        .loader(move |key: u64| {
            counter.fetch_add(1, Ordering::Relaxed);
            async move { Ok::<u64, Infallible>(key) }
        })
        .refresh_after(READ_REFRESH_AFTER)
        .build_on(handle);
    let tti = ebb_cache::Cache::<u64, u64>::builder()
        .time_to_live(READ_TTL)
        .time_to_idle(TTI)
        .build_on(handle);
    let caches = [
        (EBB, filled(plain)),
        (EBB_REFRESH, filled(refresh)),
        (EBB_TTI, filled(tti)),
    ];
    // Gets only: the keys of the `read_heavy` sequence.
    let gets: Arc<[u32]> = zipf_ops().iter().map(|op| op & !INSERT_BIT).collect();
    std::thread::sleep(SETTLE);

    let measure =
        |i: usize| two_threads(READS, &gets, &caches[i].1 .0).as_nanos() as f64 / READS as f64;
    // ns per operation of every implementation in every round, and of ebb beside it.
    let (times, beside) = crate::pairs_beside(caches.len(), 0, rounds, measure);
    for (name, (_, present)) in &caches {
        if !present() {
            return Err(format!("{name}: a key went missing during the run"));
        }
    }
    let loads = loaded.load(Ordering::Relaxed);
    if loads != 0 {
        return Err(format!("{EBB_REFRESH}: its loader ran {loads} times"));
    }

    let mut out = format!(
        "### refresh-reads ({rounds} rounds; each cache beside ebb on {READS} gets, 2 threads, \
         Zipf 1.0 over {KEYS} keys, all hits)\n\n\
         | cache | median ns/get | fastest | slowest | throughput ÷ ebb's (median of pairs, range) |\n\
         |---|---:|---:|---:|---:|\n"
    );
    let mut throughput = vec![1.0; caches.len()];
    for (i, (name, _)) in caches.iter().enumerate() {
        let mut t = times[i].clone();
        t.sort_by(f64::total_cmp);
        let ratio = if i == 0 {
            "1".to_string()
        } else {
            let mut r: Vec<f64> = (0..rounds).map(|r| beside[i][r] / times[i][r]).collect();
            r.sort_by(f64::total_cmp);
            throughput[i] = r[r.len() / 2];
            format!("{:.3} ({:.2}-{:.2})", r[r.len() / 2], r[0], r[r.len() - 1])
        };
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.1} | {:.1} | {ratio} |",
            t[t.len() / 2],
            t[0],
            t[t.len() - 1],
        );
    }
    let verdict = if throughput[1] >= READ_TARGET {
        "met"
    } else {
        "missed"
    };
    let _ = writeln!(
        out,
        "\n- {EBB_REFRESH} ÷ {EBB} throughput: median {:.3} (target ≥ {READ_TARGET:.2}: \
         {verdict}); {EBB_TTI} ÷ {EBB}: {:.3} (for reference)\n- checked after the rounds: \
         every key present in all three caches, {EBB_REFRESH}'s loader ran 0 times",
        throughput[1], throughput[2],
    );
    Ok(out)
}
