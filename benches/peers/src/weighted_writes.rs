//! `ebb-peers weighted-writes [ROUNDS]`: insert throughput of a bounded ebb cache that evicts,
//! without and with a weigher, on two threads, alternating.
//!
//! Every operation is an insert, of the keys of the `read_heavy` sequence (Zipf 1.0 over
//! 100,000 keys, `mixed::zipf_ops`, read as keys only), value = key, no TTL; two threads, as in
//! `read_heavy` (`mixed::two_threads`), 2^20 inserts a measurement. Three configurations, each
//! built on a 2-worker multi-thread runtime and filled with every key (which evicts most of
//! them) before it is measured:
//!
//! - `ebb_bounded`: `max_capacity(10,000)`, no weigher (each policy shard holds its share);
//! - `ebb_weighted_1`: the same with `.weigher(|_, _| 1)`: the same capacity in entries, the
//!   weighted code path;
//! - `ebb_weighted`: `.weigher(|_, v| 1 + v % 8)` (weights 1 to 8, mean 4.5) and
//!   `max_capacity(45,000)`, about 10,000 entries.
//!
//! Each weighted configuration is measured right before or right after `ebb_bounded` (the
//! order alternates from round to round, and the weighted two take turns); a ratio is the
//! median over rounds of the ratio within such a pair. After each measurement the cache's
//! `weighted_size()` is read (no wait) and held within twice its capacity; the largest of
//! those reads is printed.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::mixed::{two_threads, zipf_ops, INSERT_BIT, KEYS, OPS, SETTLE};

/// Inserts per measurement: one pass over the sequence.
const PER_ROUND: u64 = OPS as u64;

/// One configuration: its name, its capacity, and its weigher (if any).
struct Config {
    name: &'static str,
    capacity: u64,
    weigher: Option<fn(&u64, &u64) -> u32>,
}

const CONFIGS: [Config; 3] = [
    Config {
        name: "ebb_bounded",
        capacity: KEYS / 10,
        weigher: None,
    },
    Config {
        name: "ebb_weighted_1",
        capacity: KEYS / 10,
        weigher: Some(|_, _| 1),
    },
    Config {
        name: "ebb_weighted",
        capacity: KEYS / 10 * 9 / 2,
        weigher: Some(|_, v| 1 + (*v % 8) as u32),
    },
];

fn build(rt: &Runtime, config: &Config) -> ebb_cache::Cache<u64, u64> {
    let builder = ebb_cache::Cache::builder().max_capacity(config.capacity);
    let builder = match config.weigher {
        Some(weigher) => builder.weigher(weigher),
        None => builder,
    };
    let cache = builder.build_on(rt.handle());
    (0..KEYS).for_each(|k| cache.insert(k, k));
    cache
}

/// One thread's share: `n` inserts from `offset`, wrapping around the sequence.
fn insert_walk(cache: &ebb_cache::Cache<u64, u64>, ops: &[u32], offset: usize, n: u64) -> u64 {
    let mut i = offset;
    for _ in 0..n {
        let key = u64::from(ops[i] & !INSERT_BIT);
        cache.insert(key, key);
        i += 1;
        if i == ops.len() {
            i = 0;
        }
    }
    0
}

pub fn run(args: &[String]) -> Result<String, String> {
    let rounds = crate::rounds(args, 9)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let ops = zipf_ops();
    let caches: Vec<_> = CONFIGS.iter().map(|c| build(&rt, c)).collect();
    std::thread::sleep(SETTLE);

    // ns/op of each configuration, each weighted one's beside ebb_bounded, and the largest
    // weighted_size() read after a measurement.
    let mut times = vec![Vec::new(); CONFIGS.len()];
    let mut beside = vec![Vec::new(); CONFIGS.len()];
    let mut peak = vec![0u64; CONFIGS.len()];
    let mut measure = |i: usize, times: &mut Vec<Vec<f64>>| {
        let cache = &caches[i];
        let t = two_threads(PER_ROUND, &ops, |o, off, n| insert_walk(cache, o, off, n));
        let size = cache.weighted_size();
        if size > 2 * CONFIGS[i].capacity {
            return Err(format!(
                "{}: weighted_size {size} over twice its capacity",
                CONFIGS[i].name
            ));
        }
        peak[i] = peak[i].max(size);
        let ns = t.as_nanos() as f64 / PER_ROUND as f64;
        times[i].push(ns);
        Ok(ns)
    };
    for round in 0..rounds {
        for j in 0..CONFIGS.len() - 1 {
            let i = 1 + (round + j) % (CONFIGS.len() - 1);
            let base = if round % 2 == 0 {
                let base = measure(0, &mut times)?;
                measure(i, &mut times)?;
                base
            } else {
                measure(i, &mut times)?;
                measure(0, &mut times)?
            };
            beside[i].push(base);
        }
    }

    let mut out = format!(
        "### weighted-writes, alternating ({rounds} rounds; {PER_ROUND} inserts a measurement, 2 threads, no TTL)\n\n\
         | configuration | capacity | median ns/insert | fastest | slowest | throughput ÷ ebb_bounded's (median of pairs) | peak weighted_size after a measurement |\n\
         |---|---:|---:|---:|---:|---:|---:|\n"
    );
    for (i, config) in CONFIGS.iter().enumerate() {
        let mut t = times[i].clone();
        t.sort_by(f64::total_cmp);
        let ratio = if i == 0 {
            1.0
        } else {
            // `times[i]` holds only pairs' measurements, in the order of `beside[i]`.
            crate::median(
                beside[i]
                    .iter()
                    .zip(&times[i])
                    .map(|(b, t)| b / t)
                    .collect(),
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {ratio:.2} | {} |",
            config.name,
            config.capacity,
            crate::median(t.clone()),
            t[0],
            t[t.len() - 1],
            peak[i]
        );
    }
    out.push('\n');
    drop(caches);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(out)
}
