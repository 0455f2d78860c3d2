//! `ebb-peers capacity-cost [ROUNDS]`: what `max_capacity` costs the `read_heavy` workload.
//!
//! The `core` bench measures `ebb` and `ebb_bounded` one after the other, and on a shared
//! 2-core machine a run can change speed between the two (the same case measured 42 and
//! 86 ns/op in back-to-back runs here). This comparison alternates the two caches instead:
//! each round measures both on the same 4 Mi operations of `read_heavy` (two threads, Zipf
//! 1.0 over 100,000 keys, 90% get / 10% insert, TTL 300 s), in alternating order, and the
//! median of the per-round ratios is the figure. The bounded cache holds 10% of the keys, so
//! evictions happen; they are counted in an untimed replay (see `mixed::count_evictions`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::mixed::{count_evictions, two_threads, walk_sync, zipf_ops, KEYS, OPS};

/// Operations per measurement: four passes over the sequence.
const PER_ROUND: u64 = 4 * OPS as u64;
/// The TTL of `read_heavy`.
const TTL: Duration = Duration::from_secs(300);

pub(crate) fn run(args: &[String]) -> Result<String, String> {
    let rounds: usize = match args.first() {
        Some(n) => n
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("ROUNDS must be a positive integer, not {n:?}"))?,
        None => 10,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let ops = zipf_ops();
    let plain = ebb::Cache::builder()
        .time_to_live(TTL)
        .build_on(rt.handle());
    let bounded = ebb::Cache::builder()
        .time_to_live(TTL)
        .max_capacity(KEYS / 10)
        .build_on(rt.handle());
    for k in 0..KEYS {
        plain.insert(k, k);
        bounded.insert(k, k);
    }
    // Let the expiry task file the fill's timers before anything is measured.
    std::thread::sleep(Duration::from_secs(1));
    let measure = |cache: &ebb::Cache<u64, u64>| {
        let spent = two_threads(PER_ROUND, &ops, |o, off, n| walk_sync(cache, o, off, n));
        spent.as_nanos() as f64 / PER_ROUND as f64
    };

    let mut out = String::from(
        "### capacity-cost (read_heavy, 2 threads: ebb with and without max_capacity(10,000), alternating)\n\n\
         | round | ebb ns/op | ebb bounded ns/op | ebb ÷ bounded (throughput ratio) |\n|---:|---:|---:|---:|\n",
    );
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (p, b) = if round % 2 == 0 {
            let p = measure(&plain);
            (p, measure(&bounded))
        } else {
            let b = measure(&bounded);
            (measure(&plain), b)
        };
        ratios.push(p / b);
        let _ = writeln!(out, "| {round} | {p:.1} | {b:.1} | {:.3} |", p / b);
    }
    ratios.sort_by(f64::total_cmp);
    let (evicted, hit_ratio) = count_evictions(&rt, &Arc::clone(&ops), TTL);
    let _ = writeln!(
        out,
        "\nbounded throughput ÷ unbounded: median {:.3}, range {:.3}-{:.3} over {rounds} rounds \
         (target ≥ 0.85); {evicted} evictions for size per {OPS} operations (hit ratio {:.1}%)",
        ratios[rounds / 2],
        ratios[0],
        ratios[rounds - 1],
        hit_ratio * 100.0
    );
    Ok(out)
}
