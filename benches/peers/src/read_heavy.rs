//! `ebb-peers read-heavy [ROUNDS]`: the `read_heavy` workload, every implementation measured
//! in turn, round after round, so that ratios hold on a noisy machine.
//!
//! The `core` bench measures one implementation after another, and on the shared 2-core
//! reference machine a run can change speed in between (the same case measured 42 and
//! 86 ns/op in back-to-back runs there), which can move a ratio by 2x. Here every
//! implementation is measured right after or right before ebb (the order alternates from
//! round to round), on the
//! same 1 Mi operations (two threads, Zipf 1.0 over 100,000 keys, 90% get / 10% insert, TTL
//! 300 s), in rounds that rotate through the implementations; each ratio is the median over
//! rounds of the ratio within such a pair. `ebb_bounded` holds
//! 10% of the keys, so it evicts; its evictions are counted in an untimed replay
//! (`mixed::count_evictions`). The medians are saved for `ebb-peers chart`
//! (`<TARGET_DIR>/ebb-peers/read-heavy.json`).

use std::fmt::Write as _;
use std::time::Duration;

use crate::mixed::{contenders, count_evictions, two_threads, zipf_ops, Walk, OPS, SETTLE};
use crate::names::{EBB, EBB_BOUNDED, EBB_STATS, EBB_TTI, EXACT_LIMIT, MOKA_FUTURE};

/// Operations per measurement: one pass over the sequence.
const PER_ROUND: u64 = OPS as u64;
/// The TTL of `read_heavy`.
const TTL: Duration = Duration::from_secs(300);

/// The targets: (implementation, compared with, throughput ratio at least).
const TARGETS: [(&str, &str, f64); 5] = [
    (EBB, EXACT_LIMIT, 0.90),
    (EBB, MOKA_FUTURE, 4.0),
    (EBB_STATS, EBB, 0.95),
    (EBB_TTI, EBB, 0.90),
    (EBB_BOUNDED, EBB, 0.85),
];

pub fn run(args: &[String]) -> Result<String, String> {
    let rounds = crate::rounds(args, 9)?;
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

    let ebb = walks.iter().position(|w| w.0 == EBB).ok_or("no ebb")?;
    let measure =
        |i: usize| two_threads(PER_ROUND, &ops, &walks[i].1).as_nanos() as f64 / PER_ROUND as f64;
    // ns/op of every implementation in every round, and of ebb beside it.
    let (times, beside) = crate::pairs_beside(walks.len(), ebb, rounds, measure);
    let index = |name: &str| walks.iter().position(|w| w.0 == name);
    // The median over pairs of `i`'s throughput over ebb's.
    let to_ebb = |i: usize| {
        if i == ebb {
            return 1.0;
        }
        crate::median((0..rounds).map(|r| beside[i][r] / times[i][r]).collect())
    };
    // `a`'s throughput over `b`'s, one of them ebb.
    let ratio = |a: usize, b: usize| if b == ebb { to_ebb(a) } else { 1.0 / to_ebb(b) };

    let saved: Vec<serde_json::Value> = walks
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            serde_json::json!({
                "impl": name,
                "ns_per_op": crate::median(times[i].clone()),
                "to_ebb": to_ebb(i),
            })
        })
        .collect();
    crate::workloads::save("read-heavy", &saved)?;

    let mut out = format!(
        "### read-heavy, alternating ({rounds} rounds; each implementation beside ebb on {PER_ROUND} operations, 2 threads)\n\n\
         | implementation | median ns/op | fastest | slowest | throughput ÷ ebb's (median of pairs) |\n\
         |---|---:|---:|---:|---:|\n"
    );
    for (i, (name, _)) in walks.iter().enumerate() {
        let mut t = times[i].clone();
        t.sort_by(f64::total_cmp);
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.1} | {:.1} | {:.2} |",
            crate::median(t.clone()),
            t[0],
            t[t.len() - 1],
            to_ebb(i)
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
