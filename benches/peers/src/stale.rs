//! `ebb-peers stale-outage [ROUNDS]`: what stale-if-error ([`ebb_cache::LoadingCache`] with
//! `stale_if_error` and `stale_throttle`) does for callers of hot keys while their source is
//! down, and how often the failing source is still called.
//!
//! **Method.** A source of fixed latency: every call sleeps `LATENCY` (5 ms,
//! `tokio::time::sleep`, real time). It is *down* from `OUTAGE_START` (2 s) to `OUTAGE_END`
//! (6 s) after the start of a measurement: a call that starts then sleeps as long and returns
//! `Err`; at any other time it returns the key with the time its value was made (see below).
//! Each measurement runs on a fresh cache of its own, TTL 1 s, on a 2-worker multi-thread
//! runtime: at t = 0 every one of the `HOT_KEYS` (8) keys is loaded once through the cache
//! (concurrently), then `CALLERS` (8) caller tasks each call a hot key (uniform, seeded) in a
//! loop until t = `RUN` (8 s), pausing 1-5 ms (`tokio::time::sleep`, uniform) between calls;
//! every call is timed alone (`std::time::Instant` around it). So each key's last good value
//! is loaded at about t = 1 s, when its first value expires, and expires at about t = 2 s, as
//! the outage starts; the stale window (10 s) lasts past the end of the run. Three
//! configurations:
//!
//! - `ebb_stale`: `LoadingCache` with `.time_to_live(1 s)`, `.tick(10 ms)`,
//!   `.record_stats()`, `.stale_if_error(10 s)` and `.stale_throttle(250 ms)`; callers
//!   `fetch`;
//! - `ebb_fetch`: the same without `stale_if_error` and `stale_throttle`; callers `fetch`;
//! - `moka_future`: `moka::future::Cache` with `time_to_live(1 s)`; callers
//!   `try_get_with(key, <the same source's future>)`.
//!
//! Per round each configuration runs once, alone, the order rotating from round to round.
//!
//! **What is counted** (per measurement):
//!
//! - Calls (the warming loads at t = 0 are not calls), and calls *during the outage*: those
//!   that started in `[OUTAGE_START, OUTAGE_END)`.
//! - *Errors*: calls that returned `Err`, in all and during the outage. A call that started
//!   just after the outage and joined a load that started just before it fails too, so a few
//!   errors may fall outside the outage.
//! - *Source calls*: every invocation of the source, in all (the warming loads included) and
//!   *while down* (those that started during the outage and so failed).
//! - *Stale served*: ebb's `stats().stale_served` (none for moka). Beside it, counted by the
//!   callers: calls answered with a value *older than the TTL*, by more than `SLACK` (2.5 ms).
//!   A value carries the time its source call ended; a hit returns a value younger than the
//!   TTL plus the moments between that end and its store, and a stale value served after a
//!   failed load is at least `LATENCY` past the TTL, so the two counts should agree.
//! - For `ebb_stale`, the shortest gap between the starts of two failing source calls of one
//!   key. After a failed load served a stale copy, `fetch`es of the key get it without a load
//!   for the throttle, so a key's failing calls start at least `THROTTLE + LATENCY` apart
//!   (255 ms), and a key makes at most `floor(outage / (THROTTLE + LATENCY)) + 1` (16) of them:
//!   the bound on failing source calls is `HOT_KEYS` times that (128; `HOT_KEYS × outage ÷
//!   THROTTLE` is also 128 here).
//! - Latency p50 / p99 / max of every call (errors included), and of the calls during the
//!   outage.
//! - For `ebb_fetch` and `moka_future`, the start of the last call during the outage that
//!   returned a value: it should be a hit before the keys' last good values expired (at about
//!   t = 2 s).
//!
//! The targets: in `ebb_stale`, no error during the outage (none at all, in fact), and failing
//! source calls within the bound. In `ebb_fetch` and `moka_future` every call that misses
//! during the outage fails: about every call during it, except the few before the keys'
//! values expire at about t = 2 s.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::runtime::Runtime;

use crate::names::MOKA_FUTURE;

/// The source's latency: every call sleeps this long, up or down.
const LATENCY: Duration = Duration::from_millis(5);
/// The TTL of every configuration.
const TTL: Duration = Duration::from_secs(1);
/// The expiry task's tick of both ebb caches.
const TICK: Duration = Duration::from_millis(10);
/// `stale_if_error` of `ebb_stale`: longer than the run.
const WINDOW: Duration = Duration::from_secs(10);
/// `stale_throttle` of `ebb_stale`.
const THROTTLE: Duration = Duration::from_millis(250);
/// The source is down from this long after a measurement's start ...
const OUTAGE_START: Duration = Duration::from_secs(2);
/// ... until this long after it.
const OUTAGE_END: Duration = Duration::from_secs(6);
/// How long each configuration runs per round.
const RUN: Duration = Duration::from_secs(8);
/// Hot keys: every call asks one of them. Fewer than 256 (a value keeps its key in 8 bits).
const HOT_KEYS: u64 = 8;
/// Caller tasks.
const CALLERS: u64 = 8;
/// Each caller's pause between calls: uniform over these milliseconds.
const PAUSE_MS: std::ops::RangeInclusive<u64> = 1..=5;
/// A value older than the TTL by more than this was served stale.
const SLACK: Duration = Duration::from_micros(2500);

/// ebb's `LoadingCache` with `stale_if_error` and `stale_throttle`.
const EBB_STALE: &str = "ebb_stale";
/// ebb's `LoadingCache` without them (plain `fetch`).
const EBB_FETCH: &str = "ebb_fetch";
/// The configurations, in this order.
const CONFIGS: [&str; 3] = [EBB_STALE, EBB_FETCH, MOKA_FUTURE];

/// The bound on `ebb_stale`'s failing source calls per key: one at most every
/// `THROTTLE + LATENCY` over the outage.
fn failing_bound_per_key() -> u64 {
    let outage = (OUTAGE_END - OUTAGE_START).as_micros();
    (outage / (THROTTLE + LATENCY).as_micros()) as u64 + 1
}

/// One call of the source.
struct SourceCall {
    key: u64,
    /// When it started, since the measurement's start.
    start: Duration,
    /// It started during the outage (and failed).
    down: bool,
}

/// The source of one measurement: its start and the log of its calls.
#[derive(Clone)]
struct Source {
    t0: Instant,
    log: Arc<Mutex<Vec<SourceCall>>>,
}

impl Source {
    fn new(t0: Instant) -> Source {
        Source {
            t0,
            log: Arc::default(),
        }
    }

    /// Sleep `LATENCY`; while down, fail; else return the key with the time the value was
    /// made, in µs since the start, above it (`value >> 8`).
    fn call(&self, key: u64) -> impl Future<Output = Result<u64, String>> + Send + 'static {
        let source = self.clone();
        async move {
            let start = source.t0.elapsed();
            let down = (OUTAGE_START..OUTAGE_END).contains(&start);
            source
                .log
                .lock()
                .expect("the source log")
                .push(SourceCall { key, start, down });
            tokio::time::sleep(LATENCY).await;
            match down {
                true => Err(format!("the source is down (key {key})")),
                false => Ok((source.t0.elapsed().as_micros() as u64) << 8 | key),
            }
        }
    }
}

/// One configuration, built.
enum Subject {
    Ebb(ebb_cache::LoadingCache<u64, u64, String>),
    Moka(moka::future::Cache<u64, u64>, Source),
}

impl Subject {
    fn build(name: &str, rt: &Runtime, source: &Source) -> Subject {
        let ebb = |stale: bool| {
            let source = source.clone();
            let builder = ebb_cache::Cache::builder()
                .time_to_live(TTL)
                .tick(TICK)
                .record_stats()
                .loader(move |key: u64| source.call(key));
            let builder = match stale {
                true => builder.stale_if_error(WINDOW).stale_throttle(THROTTLE),
                false => builder,
            };
            Subject::Ebb(builder.build_on(rt.handle()))
        };
        match name {
            EBB_STALE => ebb(true),
            EBB_FETCH => ebb(false),
            _ => Subject::Moka(
                moka::future::Cache::builder().time_to_live(TTL).build(),
                source.clone(),
            ),
        }
    }

    async fn call(&self, key: u64) -> Result<u64, Arc<String>> {
        match self {
            Subject::Ebb(cache) => cache.fetch(key).await,
            Subject::Moka(cache, source) => cache.try_get_with(key, source.call(key)).await,
        }
    }

    fn stale_served(&self) -> Option<u64> {
        match self {
            Subject::Ebb(cache) => Some(cache.stats().stale_served),
            Subject::Moka(..) => None,
        }
    }
}

/// One call of a caller.
struct Call {
    /// When it started, since the measurement's start.
    start: Duration,
    took: Duration,
    ok: bool,
    /// Answered with a value older than the TTL (by more than `SLACK`).
    old: bool,
}

impl Call {
    fn during_outage(&self) -> bool {
        (OUTAGE_START..OUTAGE_END).contains(&self.start)
    }
}

/// A caller task's loop: a hot key, a pause, until `RUN` after `t0`.
async fn caller(subject: Arc<Subject>, seed: u64, t0: Instant) -> Vec<Call> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut calls = Vec::new();
    let until = t0 + RUN;
    while Instant::now() < until {
        let key = rng.random_range(0..HOT_KEYS);
        let start = Instant::now();
        let outcome = subject.call(key).await;
        let end = Instant::now();
        let old = match outcome {
            Ok(value) => {
                assert_eq!(value & 0xff, key, "a value of another key");
                let made = Duration::from_micros(value >> 8);
                (end - t0).saturating_sub(made) > TTL + SLACK
            }
            Err(_) => false,
        };
        calls.push(Call {
            start: start - t0,
            took: end - start,
            ok: outcome.is_ok(),
            old,
        });
        let pause = rng.random_range(PAUSE_MS);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    calls
}

/// What one measurement of one configuration found.
struct Measured {
    calls: usize,
    calls_during: usize,
    errors: usize,
    errors_during: usize,
    source_calls: usize,
    source_calls_down: usize,
    /// ebb's `stale_served` (`None` for moka).
    stale_served: Option<u64>,
    /// Calls answered with a value older than the TTL.
    old: usize,
    /// The shortest gap between the starts of two failing source calls of one key.
    min_failing_gap: Option<Duration>,
    /// The start of the last call during the outage that returned a value.
    last_ok_during: Option<Duration>,
    /// Latencies of all calls, sorted.
    all: Vec<Duration>,
    /// Latencies of the calls during the outage, sorted.
    during: Vec<Duration>,
}

/// The `q` quantile of sorted latencies, in µs.
fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let d = sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    d.as_secs_f64() * 1e6
}

/// Run `name` for `RUN` on a fresh cache and count.
fn measure(rt: &Runtime, name: &str, round: usize) -> Result<Measured, String> {
    let t0 = Instant::now();
    let source = Source::new(t0);
    let subject = Arc::new(Subject::build(name, rt, &source));
    let driver = {
        let subject = Arc::clone(&subject);
        rt.spawn(async move {
            // Every key cached before the callers start.
            let warming: Vec<_> = (0..HOT_KEYS)
                .map(|key| {
                    let subject = Arc::clone(&subject);
                    tokio::spawn(async move { subject.call(key).await.is_ok() })
                })
                .collect();
            for warm in warming {
                if !warm.await.expect("a warming task panicked") {
                    return Err("a warming load failed".to_string());
                }
            }
            let handles: Vec<_> = (0..CALLERS)
                .map(|c| {
                    let seed = 0x00eb_b5a1_0000_0000 + (round as u64) * 64 + c;
                    tokio::spawn(caller(Arc::clone(&subject), seed, t0))
                })
                .collect();
            let mut calls = Vec::new();
            for handle in handles {
                calls.extend(handle.await.expect("a caller task panicked"));
            }
            Ok(calls)
        })
    };
    let calls = rt.block_on(driver).expect("the driver task panicked")?;
    let stale_served = subject.stale_served();
    drop(subject);
    let log = std::mem::take(&mut *source.log.lock().expect("the source log"));
    Ok(count(calls, log, stale_served))
}

fn count(calls: Vec<Call>, mut log: Vec<SourceCall>, stale_served: Option<u64>) -> Measured {
    log.sort_by_key(|s| s.start);
    let mut last_failing: Vec<Option<Duration>> = vec![None; HOT_KEYS as usize];
    let mut min_failing_gap: Option<Duration> = None;
    for s in log.iter().filter(|s| s.down) {
        if let Some(last) = last_failing[s.key as usize].replace(s.start) {
            let gap = s.start - last;
            min_failing_gap = Some(min_failing_gap.map_or(gap, |m| m.min(gap)));
        }
    }
    let mut all: Vec<Duration> = calls.iter().map(|c| c.took).collect();
    all.sort();
    let mut during: Vec<Duration> = calls
        .iter()
        .filter(|c| c.during_outage())
        .map(|c| c.took)
        .collect();
    during.sort();
    Measured {
        calls: calls.len(),
        calls_during: calls.iter().filter(|c| c.during_outage()).count(),
        errors: calls.iter().filter(|c| !c.ok).count(),
        errors_during: calls.iter().filter(|c| !c.ok && c.during_outage()).count(),
        source_calls: log.len(),
        source_calls_down: log.iter().filter(|s| s.down).count(),
        stale_served,
        old: calls.iter().filter(|c| c.old).count(),
        min_failing_gap,
        last_ok_during: calls
            .iter()
            .filter(|c| c.ok && c.during_outage())
            .map(|c| c.start)
            .max(),
        all,
        during,
    }
}

/// `ebb-peers stale-outage [ROUNDS]`.
pub fn run_outage(args: &[String]) -> Result<String, String> {
    let rounds = crate::rounds(args, 3)?;
    let rt = crate::two_workers()?;
    // Per configuration, one per round.
    let mut found: Vec<Vec<Measured>> = CONFIGS.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for j in 0..CONFIGS.len() {
            let c = (round + j) % CONFIGS.len();
            found[c].push(measure(&rt, CONFIGS[c], round)?);
        }
    }

    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    // The median over rounds of a count, with the per-round values.
    let per_round = |c: usize, f: &dyn Fn(&Measured) -> usize| {
        let v: Vec<usize> = found[c].iter().map(f).collect();
        let mut sorted = v.clone();
        sorted.sort();
        let list: Vec<String> = v.iter().map(usize::to_string).collect();
        format!("{} ({})", sorted[sorted.len() / 2], list.join(", "))
    };
    // The median over rounds of a latency in µs, with its range.
    let over = |c: usize, f: &dyn Fn(&Measured) -> f64| {
        let (m, lo, hi) = median(found[c].iter().map(f).collect());
        format!("{} ({}-{})", fmt(m), fmt(lo), fmt(hi))
    };
    let mut out = format!(
        "### stale-outage ({rounds} rounds; each configuration alone for {} s a round, order \
         rotating; source latency {} ms, down from {} s to {} s; TTL {} s; stale window {} s, \
         throttle {} ms; {HOT_KEYS} hot keys loaded at t = 0, {CALLERS} caller tasks pausing \
         {}-{} ms between calls; 2-worker runtime)\n\n\
         Counts: the median over rounds (per round, in order).\n\n\
         | configuration | calls | during the outage | errors | during the outage | source \
         calls | while down | stale served (stats) | values older than the TTL |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        RUN.as_secs(),
        LATENCY.as_millis(),
        OUTAGE_START.as_secs(),
        OUTAGE_END.as_secs(),
        TTL.as_secs(),
        WINDOW.as_secs(),
        THROTTLE.as_millis(),
        PAUSE_MS.start(),
        PAUSE_MS.end(),
    );
    for (c, name) in CONFIGS.iter().enumerate() {
        let stale = match found[c][0].stale_served {
            Some(_) => per_round(c, &|m| m.stale_served.unwrap_or(0) as usize),
            None => "n/a".to_string(),
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {stale} | {} |",
            per_round(c, &|m| m.calls),
            per_round(c, &|m| m.calls_during),
            per_round(c, &|m| m.errors),
            per_round(c, &|m| m.errors_during),
            per_round(c, &|m| m.source_calls),
            per_round(c, &|m| m.source_calls_down),
            per_round(c, &|m| m.old),
        );
    }
    let _ = write!(
        out,
        "\nLatency in µs, the median over rounds (range):\n\n\
         | configuration | p50 | p99 | max | during the outage: p50 | p99 | max |\n\
         |---|---:|---:|---:|---:|---:|---:|\n"
    );
    for (c, name) in CONFIGS.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            over(c, &|m| percentile(&m.all, 0.5)),
            over(c, &|m| percentile(&m.all, 0.99)),
            over(c, &|m| percentile(&m.all, 1.0)),
            over(c, &|m| percentile(&m.during, 0.5)),
            over(c, &|m| percentile(&m.during, 0.99)),
            over(c, &|m| percentile(&m.during, 1.0)),
        );
    }
    // Paired ratios within a round.
    let ratio = |a: usize, b: usize, f: &dyn Fn(&Measured) -> f64| {
        let (m, lo, hi) = median(
            (0..rounds)
                .map(|r| f(&found[a][r]) / f(&found[b][r]))
                .collect(),
        );
        format!("{} ({}-{})", fmt_ratio(m), fmt_ratio(lo), fmt_ratio(hi))
    };
    let down = |m: &Measured| m.source_calls_down as f64;
    let p50 = |m: &Measured| percentile(&m.during, 0.5);
    let p99 = |m: &Measured| percentile(&m.during, 0.99);
    let _ = writeln!(
        out,
        "\nWithin a round, median over rounds (range):\n\n\
         | ratio | source calls while down | p50 during the outage | p99 during the outage |\n\
         |---|---:|---:|---:|\n\
         | {EBB_STALE} ÷ {EBB_FETCH} | {} | {} | {} |\n\
         | {EBB_STALE} ÷ {MOKA_FUTURE} | {} | {} | {} |\n\
         | {EBB_FETCH} ÷ {MOKA_FUTURE} | {} | {} | {} |",
        ratio(0, 1, &down),
        ratio(0, 1, &p50),
        ratio(0, 1, &p99),
        ratio(0, 2, &down),
        ratio(0, 2, &p50),
        ratio(0, 2, &p99),
        ratio(1, 2, &down),
        ratio(1, 2, &p50),
        ratio(1, 2, &p99),
    );

    let stale = &found[0];
    let errors_during: usize = stale.iter().map(|m| m.errors_during).sum();
    let errors: usize = stale.iter().map(|m| m.errors).sum();
    let bound = HOT_KEYS * failing_bound_per_key();
    let failing: Vec<String> = stale
        .iter()
        .map(|m| m.source_calls_down.to_string())
        .collect();
    let within = stale.iter().all(|m| m.source_calls_down as u64 <= bound);
    let gap = stale
        .iter()
        .filter_map(|m| m.min_failing_gap)
        .min()
        .map_or("none".to_string(), |g| {
            format!("{:.1} ms", g.as_secs_f64() * 1e3)
        });
    let verdict = |met: bool| if met { "met" } else { "missed" };
    let _ = writeln!(
        out,
        "\n- {EBB_STALE}: {errors_during} errors during the outage over {rounds} rounds, \
         {errors} in all (target 0: {})\n\
         - {EBB_STALE}: failing source calls per round {} (bound {HOT_KEYS} keys × \
         (floor({} ms ÷ ({} + {}) ms) + 1) = {bound}: {}); the shortest gap between two \
         failing calls of one key: {gap} (throttle + latency = {} ms)",
        verdict(errors_during == 0),
        failing.join(", "),
        (OUTAGE_END - OUTAGE_START).as_millis(),
        THROTTLE.as_millis(),
        LATENCY.as_millis(),
        verdict(within),
        (THROTTLE + LATENCY).as_millis(),
    );
    for (c, name) in CONFIGS.iter().enumerate().skip(1) {
        let (missed, during): (usize, usize) = found[c].iter().fold((0, 0), |(e, d), m| {
            (e + m.errors_during, d + m.calls_during)
        });
        let last: Vec<String> = found[c]
            .iter()
            .map(|m| {
                m.last_ok_during
                    .map_or("none".to_string(), |t| format!("{:.3} s", t.as_secs_f64()))
            })
            .collect();
        let _ = writeln!(
            out,
            "- {name}: {missed} of {during} calls during the outage failed ({:.1}%); the last \
             one that returned a value started at t = {} (per round)",
            100.0 * missed as f64 / during.max(1) as f64,
            last.join(", "),
        );
    }
    Ok(out)
}

/// A ratio to 3 significant digits, no exponent.
fn fmt_ratio(x: f64) -> String {
    let digits = match x {
        x if x > 0.0 && x < 1.0 => (2 - x.log10().floor() as i64).clamp(3, 9) as usize,
        _ => 3,
    };
    format!("{x:.digits$}")
}

/// Up to 3 significant digits, no exponent.
fn fmt(x: f64) -> String {
    match x {
        x if x >= 100.0 => format!("{x:.0}"),
        x if x >= 10.0 => format!("{x:.1}"),
        x => format!("{x:.2}"),
    }
}
