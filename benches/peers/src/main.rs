//! `ebb-peers`: the benchmark tool of the `ebb-peers` workspace member. Each subcommand is a
//! module of the `ebb_peers` library (`src/lib.rs`); this binary picks one by its arguments.
//!
//! - `ebb-peers report [TARGET_DIR]`: Markdown ratio tables from criterion's results for the
//!   `core` and `load` benches (see `report.rs`).
//! - `ebb-peers <per-request|memory|idle|expiry|all> [IMPL [N]]`: process-level workloads
//!   (see `workloads.rs`). Without `IMPL`, the binary re-executes itself once per
//!   implementation (and per N), so every measurement runs in a fresh process, and prints a
//!   Markdown table; with `IMPL` it runs that one measurement and prints one JSON line.
//! - `ebb-peers per-request-rounds [ROUNDS]`: `per-request` for ebb, floor and moka future
//!   in fresh processes, order rotating round after round, with ebb's and floor's pinned
//!   bytes and no-task probes; paired ratios (see `workloads.rs`).
//! - `ebb-peers expiry-rounds [ROUNDS]`: `expiry` for ebb, floor and moka future in fresh
//!   processes, order rotating round after round; the ratios within each round, their
//!   medians, and the rounds at or under the target (see `workloads.rs`).
//! - `ebb-peers hit-ratio`: hit ratios on seeded traces (see `hit_ratio.rs`).
//! - `ebb-peers read-heavy [ROUNDS]`: the `read_heavy` workload, every implementation in
//!   turn, round after round (see `read_heavy.rs`).
//! - `ebb-peers clock-scan [ROUNDS]`: inserts into a full bounded ebb cache with and without
//!   a hot resident set, alternating (see `clock_scan.rs`).
//! - `ebb-peers weighted-writes [ROUNDS]`: inserts into a bounded ebb cache that evicts,
//!   without and with a weigher, alternating (see `weighted_writes.rs`).
//! - `ebb-peers metrics [ROUNDS]`: `read_heavy` with ebb's `metrics` feature publishing to a
//!   Prometheus recorder, against plain ebb, alternating (see `metrics_cost.rs`).
//! - `ebb-peers iter-invalidate [ROUNDS]`: `Cache::iter` against moka's, and
//!   `invalidate_entries_if`'s sweep and pending reads (see `iter_invalidate.rs`).
//! - `ebb-peers refresh-latency [ROUNDS]`: per-caller latency of hot keys behind a 20 ms
//!   source, ebb's `LoadingCache` with and without `refresh_after` against moka's `get_with`,
//!   and the calls that waited for a load (see `refresh.rs`).
//! - `ebb-peers refresh-reads [ROUNDS]`: `get` throughput of a `LoadingCache` with
//!   `refresh_after` and of a cache with a time-to-idle against a plain cache, alternating
//!   (see `refresh.rs`).
//! - `ebb-peers stale-outage [ROUNDS]`: hot keys behind a 5 ms source that goes down for 4 s,
//!   ebb's `LoadingCache` with and without `stale_if_error` against moka's `try_get_with`:
//!   errors seen by callers, calls to the failing source, stale values served, latency (see
//!   `stale.rs`).
//! - `ebb-peers redis-tier [ROUNDS]`: ebb-redis's tier against plain ebb, a bare redis-rs
//!   `GET` and `multi-tier-cache` (moka + Redis) on a `redis-server` it starts itself: L1
//!   hits, L2 hits, loader calls per key for 4 replicas (see `redis_tier.rs`).
//! - `ebb-peers chart [TARGET_DIR]`: draw `benches/peers/performance.svg` from the last
//!   `memory` results and the last `read_heavy` / `write_heavy` criterion results.

use std::path::PathBuf;
use std::process::ExitCode;

use ebb_peers::{
    alloc, chart, clock_scan, hit_ratio, iter_invalidate, metrics_cost, read_heavy, report,
    weighted_writes, workloads,
};

/// Counts this process's heap for the process-level workloads (the benches keep the system
/// allocator).
#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

const USAGE: &str =
    "usage: ebb-peers report [TARGET_DIR]   (default: $CARGO_TARGET_DIR, then `target`)
       ebb-peers per-request|memory|idle|expiry|all [IMPL [N]]
       ebb-peers per-request IMPL pinned|no-task   (one probe, ebb or floor)
       ebb-peers per-request-rounds [ROUNDS]
       ebb-peers expiry-rounds [ROUNDS]
       ebb-peers hit-ratio
       ebb-peers read-heavy [ROUNDS]
       ebb-peers clock-scan [ROUNDS]
       ebb-peers weighted-writes [ROUNDS]
       ebb-peers metrics [ROUNDS]   (with --features metrics: publishing measured too)
       ebb-peers iter-invalidate [ROUNDS]
       ebb-peers compute-expiry [ROUNDS]
       ebb-peers refresh-latency [ROUNDS]
       ebb-peers refresh-reads [ROUNDS]
       ebb-peers stale-outage [ROUNDS]
       ebb-peers redis-tier [ROUNDS]   (starts its own redis-server)
       ebb-peers coherence [WRITES]   (starts its own redis-server)
       ebb-peers chart [TARGET_DIR]   (after `memory` and the core bench)";

fn main() -> ExitCode {
    // Timing without the counting allocator's shared atomics (heap and allocation figures
    // are then meaningless); child processes inherit the variable.
    if std::env::var_os("EBB_PEERS_UNCOUNTED").is_some() {
        alloc::set_counting(false);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("report") => {
            let dir = args
                .get(1)
                .cloned()
                .or_else(|| std::env::var("CARGO_TARGET_DIR").ok())
                .unwrap_or_else(|| "target".to_string());
            report::report(&PathBuf::from(dir).join("criterion"))
        }
        Some("chart") => {
            let dir = args
                .get(1)
                .cloned()
                .or_else(|| std::env::var("CARGO_TARGET_DIR").ok())
                .unwrap_or_else(|| "target".to_string());
            chart::chart(&PathBuf::from(dir))
        }
        Some("per-request-rounds") => workloads::per_request_rounds(&args[1..]),
        Some("expiry-rounds") => workloads::expiry_rounds(&args[1..]),
        Some("hit-ratio") => hit_ratio::run(),
        Some("read-heavy") => read_heavy::run(&args[1..]),
        Some("clock-scan") => clock_scan::run(&args[1..]),
        Some("weighted-writes") => weighted_writes::run(&args[1..]),
        Some("metrics") => metrics_cost::run(&args[1..]),
        Some("iter-invalidate") => iter_invalidate::run(&args[1..]),
        Some("compute-expiry") => ebb_peers::compute_expiry::run(&args[1..]),
        Some("refresh-latency") => ebb_peers::refresh::run_latency(&args[1..]),
        Some("refresh-reads") => ebb_peers::refresh::run_reads(&args[1..]),
        Some("redis-tier") => ebb_peers::redis_tier::run(&args[1..]),
        Some("stale-outage") => ebb_peers::stale::run_outage(&args[1..]),
        Some("coherence") => ebb_peers::coherence::run(&args[1..]),
        Some(workload) if workloads::is_workload(workload) => workloads::run(workload, &args[1..]),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ebb-peers: {e}");
            ExitCode::FAILURE
        }
    }
}
