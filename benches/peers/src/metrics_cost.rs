//! `ebb-peers metrics [ROUNDS]`: what ebb's `metrics` feature costs the `read_heavy` workload
//! (the same 1 Mi operations as `read-heavy`: two threads, Zipf 1.0 over 100,000 keys, 90%
//! get / 10% insert, TTL 300 s), measured in alternating pairs like `read-heavy`.
//!
//! Built with this package's `metrics` feature (`--features metrics`), which turns on ebb's,
//! the process installs `metrics-exporter-prometheus`'s recorder (the one a service would
//! use) before any cache is built, and three caches are measured:
//!
//! - `ebb`: a TTL and nothing else;
//! - `ebb_stats`: `record_stats()` (what publishing reads);
//! - `ebb_metrics`: `publish_metrics(10 ms)`, so its expiry task publishes to the recorder
//!   about five times during each measurement (a service would publish every 10 s or so, or
//!   at scrape time only), and it implies `record_stats()`.
//!
//! Each of `ebb_stats` and `ebb_metrics` is measured right before or right after `ebb`
//! (alternating from round to round); a ratio is the median over rounds of the ratio within a
//! pair. At the end the recorder's rendered text is checked to hold `ebb_metrics`'s hits, so
//! the publishing measured did reach a real recorder. Without the feature, the subcommand
//! measures `ebb` and `ebb_stats` only (in a build where ebb has no `metrics` code at all).

use std::fmt::Write as _;
use std::time::Duration;

use crate::mixed::{two_threads, zipf_ops, Contender, Walk, OPS, SETTLE};
#[cfg(feature = "metrics")]
use crate::names::EBB_METRICS;
use crate::names::{EBB, EBB_STATS};

/// Operations per measurement: one pass over the sequence.
const PER_ROUND: u64 = OPS as u64;
/// The TTL of `read_heavy`.
const TTL: Duration = Duration::from_secs(300);
/// How often `ebb_metrics` publishes: far more often than any service would.
#[cfg(feature = "metrics")]
const PUBLISH: Duration = Duration::from_millis(10);

pub fn run(args: &[String]) -> Result<String, String> {
    let rounds = crate::rounds(args, 15)?;
    // The recorder first, before any cache publishes.
    #[cfg(feature = "metrics")]
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let ebb = |name: &'static str,
               builder: fn(
        ebb_cache::CacheBuilder<u64, u64>,
    ) -> ebb_cache::CacheBuilder<u64, u64>| {
        let handle = rt.handle().clone();
        Contender::new(name, move || {
            builder(ebb_cache::Cache::builder().name(name).time_to_live(TTL)).build_on(&handle)
        })
    };
    #[allow(unused_mut)]
    let mut contenders = vec![ebb(EBB, |b| b), ebb(EBB_STATS, |b| b.record_stats())];
    #[cfg(feature = "metrics")]
    contenders.push(ebb(EBB_METRICS, |b| b.publish_metrics(PUBLISH)));
    let ops = zipf_ops();
    let walks: Vec<(&str, Walk)> = contenders.into_iter().map(|c| (c.name, c.fill())).collect();
    std::thread::sleep(SETTLE);

    let measure =
        |i: usize| two_threads(PER_ROUND, &ops, &walks[i].1).as_nanos() as f64 / PER_ROUND as f64;
    // ns per operation of every implementation in every round, and of ebb beside it.
    let (times, beside) = crate::pairs_beside(walks.len(), 0, rounds, measure);
    // The median over pairs of `i`'s throughput over ebb's.
    let to_ebb =
        |i: usize| crate::median((0..rounds).map(|r| beside[i][r] / times[i][r]).collect());

    let mut out = format!(
        "### metrics, alternating ({rounds} rounds; each cache beside ebb on {PER_ROUND} operations, 2 threads)\n\n\
         | cache | median ns/op | fastest | slowest | throughput ÷ ebb's (median of pairs) |\n\
         |---|---:|---:|---:|---:|\n"
    );
    for (i, (name, _)) in walks.iter().enumerate() {
        let mut t = times[i].clone();
        t.sort_by(f64::total_cmp);
        let ratio = if i == 0 { 1.0 } else { to_ebb(i) };
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.1} | {:.1} | {ratio:.2} |",
            crate::median(t.clone()),
            t[0],
            t[t.len() - 1],
        );
    }
    out.push('\n');
    #[cfg(feature = "metrics")]
    {
        let r = to_ebb(2);
        let verdict = if r >= 0.95 { "met" } else { "missed" };
        let _ = writeln!(
            out,
            "- {EBB_METRICS} ÷ {EBB} throughput: median {r:.2} (target ≥ 0.95: {verdict})"
        );
        let _ = writeln!(
            out,
            "- {EBB_METRICS} ÷ {EBB_STATS}, within the same rounds: median {:.2}",
            crate::median((0..rounds).map(|r| times[1][r] / times[2][r]).collect())
        );
        // The recorder holds what the last publish put there (at most 10 ms old).
        std::thread::sleep(2 * PUBLISH);
        let text = prometheus.render();
        let prefix = format!("ebb_cache_hits_total{{cache=\"{EBB_METRICS}\"}} ");
        let hits: u64 = text
            .lines()
            .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
            .ok_or_else(|| format!("no {prefix}in the recorder's text:\n{text}"))?;
        if hits == 0 {
            return Err(format!("{EBB_METRICS} published no hits"));
        }
        let _ = writeln!(
            out,
            "- the Prometheus recorder holds {EBB_METRICS}'s hits: {hits} (published every {PUBLISH:?})"
        );
    }
    #[cfg(not(feature = "metrics"))]
    let _ = writeln!(
        out,
        "- built without the `metrics` feature: no `ebb_metrics` (`--features metrics` adds it)"
    );
    let _ = writeln!(
        out,
        "- {EBB_STATS} ÷ {EBB} throughput: median {:.2}",
        to_ebb(1)
    );
    Ok(out)
}
