//! The code of the `ebb-peers` binary and of the `core` and `load` benches.
//!
//! - `names`: the implementation names, used by all of them.
//! - `floor`: the naive implementation of ebb's design (`per-request`).
//! - `mixed`: the mixed workloads (`read_heavy`, `write_heavy`), used by the `core` bench and
//!   by `ebb-peers read-heavy`.
//! - One module per subcommand of the binary: `report`, `chart`, `hit_ratio`, `read_heavy`,
//!   `clock_scan`, `weighted_writes`, `metrics_cost` (`metrics`), `iter_invalidate`,
//!   `compute_expiry`, `refresh` (`refresh-latency`, `refresh-reads`), `stale`
//!   (`stale-outage`), `redis_tier` (`redis-tier`), `coherence`, and `workloads` (the process-level workloads and `per-request-rounds`).
//! - `alloc`: the counting allocator, which the binary installs as its `#[global_allocator]`
//!   and `workloads` reads; the benches run on the system allocator.

pub mod alloc;
pub mod chart;
pub mod clock_scan;
pub mod coherence;
pub mod compute_expiry;
pub mod floor;
pub mod hit_ratio;
pub mod iter_invalidate;
pub mod metrics_cost;
pub mod mixed;
pub mod names;
pub mod read_heavy;
pub mod redis_server;
pub mod redis_tier;
pub mod refresh;
pub mod report;
pub mod stale;
pub mod weighted_writes;
pub mod workloads;

/// The median of `values` (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Measure every implementation `0..count` beside the `reference` one, round after round:
/// in each round every other implementation once, in a rotating order, each paired with a
/// measurement of the reference taken right before it (even rounds) or right after it (odd
/// rounds). Returns per implementation its measurements, and the reference's measurements
/// made beside it (the reference's own row gets all of them).
pub fn pairs_beside(
    count: usize,
    reference: usize,
    rounds: usize,
    mut measure: impl FnMut(usize) -> f64,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let mut times = vec![Vec::with_capacity(rounds); count];
    let mut beside = vec![Vec::with_capacity(rounds); count];
    let others: Vec<usize> = (0..count).filter(|&i| i != reference).collect();
    for round in 0..rounds {
        for j in 0..others.len() {
            let i = others[(round + j) % others.len()];
            let (e, t) = if round % 2 == 0 {
                let e = measure(reference);
                (e, measure(i))
            } else {
                let t = measure(i);
                (measure(reference), t)
            };
            times[i].push(t);
            beside[i].push(e);
            times[reference].push(e);
        }
    }
    (times, beside)
}

/// The runtime the subcommands measure on: two workers, timers and I/O.
pub fn two_workers() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// The `[ROUNDS]` argument of the alternating subcommands: a positive number, or `default`.
pub fn rounds(args: &[String], default: usize) -> Result<usize, String> {
    match args.first() {
        Some(n) => n
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("ROUNDS must be a positive integer, not {n:?}")),
        None => Ok(default),
    }
}
