//! `ebb-peers clock-scan [ROUNDS]`: the cost of one insert into a full bounded ebb cache, with
//! and without a hot resident set.
//!
//! A bounded cache evicts on the inserting thread, and its CLOCK hand passes over entries read
//! since it last passed them. Two modes, measured on fresh caches of `max_capacity(N)` (`u64`
//! keys and values, no TTL), each first filled with N keys:
//!
//! - `cold`: new keys are inserted one after another, with no reads at all;
//! - `hot`: before each insert, every resident key is read `MAX_FREQ` times (enough to
//!   saturate its read counter), so the hand finds every entry read since it last passed.
//!   The resident keys are tracked by the reads themselves: a key that misses is dropped from
//!   the list, and each inserted key joins it.
//!
//! Only the insert calls are timed (one `Instant` pair around each, the same in both modes);
//! the reads are not. The modes alternate within a round (cold first in even rounds, hot first
//! in odd ones); a round's ratio is its hot inserts/s over its cold inserts/s. The table gives
//! medians over rounds, and each mode's slowest single insert twice: the median over rounds of
//! a round's slowest (on a shared machine one preemption can decide the slowest of all), and
//! the slowest of all rounds.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

/// Reads of each resident key before an insert in `hot` mode: the read counter's maximum.
const MAX_FREQ: usize = 3;

/// The capacities measured, and the inserts timed per mode and round at each.
const CASES: [(u64, usize); 2] = [(1_000, 4_000), (10_000, 1_000)];

/// One mode's run on a fresh cache.
struct Run {
    inserts_per_s: f64,
    worst: Duration,
}

fn run_mode(rt: &Runtime, capacity: u64, inserts: usize, hot: bool) -> Run {
    let cache: ebb_cache::Cache<u64, u64> = ebb_cache::Cache::builder()
        .max_capacity(capacity)
        .build_on(rt.handle());
    let mut resident: Vec<u64> = (0..capacity).collect();
    for &k in &resident {
        cache.insert(k, k);
    }
    let (mut total, mut worst) = (Duration::ZERO, Duration::ZERO);
    for next in capacity..capacity + inserts as u64 {
        if hot {
            resident.retain(|k| {
                let mut hit = false;
                for _ in 0..MAX_FREQ {
                    hit = black_box(cache.get(k)).is_some();
                }
                hit
            });
            resident.push(next);
        }
        let start = Instant::now();
        cache.insert(next, next);
        let took = start.elapsed();
        total += took;
        worst = worst.max(took);
    }
    assert!(cache.entry_count() <= capacity, "over capacity");
    Run {
        inserts_per_s: inserts as f64 / total.as_secs_f64(),
        worst,
    }
}

pub fn run(args: &[String]) -> Result<String, String> {
    let rounds = crate::rounds(args, 7)?;
    // Never driven: no entry has a deadline, so the expiry task has nothing to do.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = format!(
        "### clock-scan: inserts into a full bounded cache, cold vs hot resident set ({rounds} rounds)\n\n\
         | capacity | inserts per mode and round | cold inserts/s | hot inserts/s | hot ÷ cold | cold slowest insert | hot slowest insert |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for (capacity, inserts) in CASES {
        let (mut cold, mut hot, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut cold_worst, mut hot_worst) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let (c, h) = if round % 2 == 0 {
                let c = run_mode(&rt, capacity, inserts, false);
                (c, run_mode(&rt, capacity, inserts, true))
            } else {
                let h = run_mode(&rt, capacity, inserts, true);
                (run_mode(&rt, capacity, inserts, false), h)
            };
            ratios.push(h.inserts_per_s / c.inserts_per_s);
            cold.push(c.inserts_per_s);
            hot.push(h.inserts_per_s);
            cold_worst.push(c.worst.as_secs_f64() * 1e6);
            hot_worst.push(h.worst.as_secs_f64() * 1e6);
        }
        let _ = writeln!(
            out,
            "| {capacity} | {inserts} | {:.0} | {:.0} | {:.4} | {:.1} µs ({:.1} µs) | {:.1} µs ({:.1} µs) |",
            crate::median(cold),
            crate::median(hot),
            crate::median(ratios),
            crate::median(cold_worst.clone()),
            max(cold_worst),
            crate::median(hot_worst.clone()),
            max(hot_worst),
        );
    }
    out.push_str(
        "\nInserts/s and hot ÷ cold: medians over rounds (the ratio within each round). Slowest \
         insert: the median over rounds of each round's slowest (in brackets: the slowest of \
         all rounds).\n",
    );
    Ok(out)
}

fn max(values: Vec<f64>) -> f64 {
    values.into_iter().fold(0.0, f64::max)
}
