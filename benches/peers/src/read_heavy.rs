//! `ebb-peers read-heavy [ROUNDS]`: the `read_heavy` workload, every implementation measured
//! in turn, round after round, so that ratios hold on a noisy machine.
//!
//! The `core` bench measures one implementation after another, and on the shared 2-core
//! reference machine a run can change speed in between (the same case measured 42 and
//! 86 ns/op in back-to-back runs there), which can move a ratio by 2x. Here every round
//! measures every implementation on the same 2 Mi operations (two threads, Zipf 1.0 over
//! 100,000 keys, 90% get / 10% insert, TTL 300 s; the order rotates from round to round),
//! and each ratio is the median over rounds of the ratio within a round. `ebb_bounded` holds
//! 10% of the keys, so it evicts; its evictions are counted in an untimed replay
//! (`mixed::count_evictions`).

use std::fmt::Write as _;
use std::time::Duration;

use crate::mixed::{
    contenders, count_evictions, two_threads, zipf_ops, Walk, EBB, EBB_BOUNDED, EBB_STATS, EBB_TTI,
    EXACT, MOKA, OPS, SETTLE,
};

/// Operations per implementation per round: two passes over the sequence.
const PER_ROUND: u64 = 2 * OPS as u64;
/// The TTL of `read_heavy`.
const TTL: Duration = Duration::from_secs(300);

/// The targets: (implementation, compared with, throughput ratio at least).
const TARGETS: [(&str, &str, f64); 5] = [
    (EBB, EXACT, 0.90),
    (EBB, MOKA, 4.0),
    (EBB_STATS, EBB, 0.95),
    (EBB_TTI, EBB, 0.90),
    (EBB_BOUNDED, EBB, 0.85),
];

pub(crate) fn run(args: &[String]) -> Result<String, String> {
    let rounds: usize = match args.first() {
        Some(n) => n
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("ROUNDS must be a positive integer, not {n:?}"))?,
        None => 7,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let ops = zipf_ops();
    let walks: Vec<(&str, Walk)> = contenders(&rt, TTL, true)
        .into_iter()
        .map(|c| (c.name, c.fill()))
        .collect();
    std::thread::sleep(SETTLE);

    // ns/op of every implementation in every round.
    let mut times = vec![Vec::with_capacity(rounds); walks.len()];
    for round in 0..rounds {
        for j in 0..walks.len() {
            let i = (round + j) % walks.len();
            let spent = two_threads(PER_ROUND, &ops, &walks[i].1);
            times[i].push(spent.as_nanos() as f64 / PER_ROUND as f64);
        }
    }
    let index = |name: &str| walks.iter().position(|w| w.0 == name);
    // The median over rounds of `a`'s throughput over `b`'s.
    let ratio = |a: usize, b: usize| {
        median(
            (0..rounds)
                .map(|r| times[b][r] / times[a][r])
                .collect::<Vec<_>>(),
        )
    };
    let ebb = index(EBB).ok_or("no ebb")?;

    let mut out = format!(
        "### read-heavy, alternating ({rounds} rounds of {PER_ROUND} operations each, 2 threads)\n\n\
         | implementation | median ns/op | fastest round | slowest round | throughput ÷ ebb's |\n\
         |---|---:|---:|---:|---:|\n"
    );
    for (i, (name, _)) in walks.iter().enumerate() {
        let mut t = times[i].clone();
        t.sort_by(f64::total_cmp);
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.1} | {:.1} | {:.2} |",
            median(t.clone()),
            t[0],
            t[rounds - 1],
            ratio(i, ebb)
        );
    }
    out.push('\n');
    for (a, b, target) in TARGETS {
        let (Some(ia), Some(ib)) = (index(a), index(b)) else {
            continue;
        };
        let r = ratio(ia, ib);
        let verdict = if r >= target { "met" } else { "missed" };
        let _ = writeln!(
            out,
            "- {a} ÷ {b} throughput: median {r:.2} (target ≥ {target:.2}: {verdict})"
        );
    }
    let (evicted, hit_ratio) = count_evictions(&rt, &ops, TTL);
    let _ = writeln!(
        out,
        "- {EBB_BOUNDED}: {evicted} evictions for size per {OPS} operations (hit ratio {:.1}%, \
         untimed replay)",
        hit_ratio * 100.0
    );
    Ok(out)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
