//! `ebb-peers hit-ratio`: hit ratios of ebb (TinyLFU admission), moka (`sync::Cache`, TinyLFU),
//! quick_cache and a plain LRU on seeded traces of 2,000,000 requests, at capacities 1,000 and
//! 10,000, inserting on every miss. After every request each cache's resident count is
//! checked against its capacity (moka's pending work is run first, so it is held to its
//! bound too). Traces: Zipf 0.9 and 1.0 over 1,000,000 keys; Zipf 0.9 with a one-pass scan
//! of 20,000 fresh keys after every 100,000 requests; a 50/50 interleave of Zipf 0.8 with a
//! cyclic sweep over 15,000 keys.
//!
//! `ebb weighted` is the same ebb cache built with `.weigher(|_, _| 1)`: every entry weighs 1,
//! so its capacity in entries is the same, but it takes the weighted code path (the policy
//! shards share the capacity instead of each holding its share of it). Its `weighted_size()`
//! is checked after every request against twice the capacity (the bound the weigher's docs
//! give), and its peak is printed.
//!
//! ebb's default hasher is `RandomState`, which decides the policy shard of each key and the
//! sketch's hashes: ebb's figures can differ by a few hundredths of a point from run to run.
use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

const REQUESTS: usize = 2_000_000;

fn zipf(s: f64, keys: u64, n: usize, seed: u64) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let z = Zipf::new(keys as f64, s).unwrap();
    (0..n).map(|_| z.sample(&mut rng) as u64 - 1).collect()
}

fn traces() -> Vec<(&'static str, Vec<u64>)> {
    let mut scan = Vec::with_capacity(REQUESTS + 20 * 20_000);
    let base = zipf(0.9, 1_000_000, REQUESTS, 3);
    let mut fresh = 10_000_000u64;
    for (i, k) in base.into_iter().enumerate() {
        scan.push(k);
        if (i + 1) % 100_000 == 0 {
            for _ in 0..20_000 {
                scan.push(fresh);
                fresh += 1;
            }
        }
    }
    scan.truncate(REQUESTS);
    let z08 = zipf(0.8, 1_000_000, REQUESTS / 2, 4);
    let mut mixed = Vec::with_capacity(REQUESTS);
    let mut rng = StdRng::seed_from_u64(5);
    let (mut zi, mut sweep) = (0, 0u64);
    while mixed.len() < REQUESTS {
        if rng.random_bool(0.5) && zi < z08.len() {
            mixed.push(z08[zi]);
            zi += 1;
        } else {
            mixed.push(20_000_000 + sweep);
            sweep = (sweep + 1) % 15_000;
        }
    }
    vec![
        ("zipf-0.9", zipf(0.9, 1_000_000, REQUESTS, 1)),
        ("zipf-1.0", zipf(1.0, 1_000_000, REQUESTS, 2)),
        ("zipf-0.9+scans", scan),
        ("zipf-0.8/loop-15k", mixed),
    ]
}

/// A plain LRU: a slab-backed doubly linked list and a map.
struct Lru {
    cap: usize,
    map: HashMap<u64, usize>,
    keys: Vec<u64>,
    prev: Vec<usize>,
    next: Vec<usize>,
    head: usize,
    tail: usize,
}
const NIL: usize = usize::MAX;
impl Lru {
    fn new(cap: usize) -> Self {
        Lru {
            cap,
            map: HashMap::new(),
            keys: vec![],
            prev: vec![],
            next: vec![],
            head: NIL,
            tail: NIL,
        }
    }
    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        if p != NIL {
            self.next[p] = n
        } else {
            self.head = n
        }
        if n != NIL {
            self.prev[n] = p
        } else {
            self.tail = p
        }
    }
    fn push_front(&mut self, i: usize) {
        self.prev[i] = NIL;
        self.next[i] = self.head;
        if self.head != NIL {
            self.prev[self.head] = i
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i
        }
    }
    fn access(&mut self, k: u64) -> bool {
        if let Some(&i) = self.map.get(&k) {
            self.unlink(i);
            self.push_front(i);
            return true;
        }
        if self.cap == 0 {
            return false;
        }
        let i = if self.map.len() == self.cap {
            let t = self.tail;
            self.unlink(t);
            self.map.remove(&self.keys[t]);
            self.keys[t] = k;
            t
        } else {
            self.keys.push(k);
            self.prev.push(NIL);
            self.next.push(NIL);
            self.keys.len() - 1
        };
        self.push_front(i);
        self.map.insert(k, i);
        false
    }
}

/// The hit ratio (%) of an ebb cache of `cap` built with `.weigher(|_, _| 1)` on `trace`, and
/// the peak of its `weighted_size()`, read after every request and held within `2 * cap`.
fn weighted(rt: &tokio::runtime::Runtime, trace: &[u64], cap: u64) -> (f64, u64) {
    let ebb: ebb_cache::Cache<u64, u64> = ebb_cache::Cache::builder()
        .max_capacity(cap)
        .weigher(|_, _| 1)
        .build_on(rt.handle());
    let (mut hits, mut peak) = (0usize, 0u64);
    for &k in trace {
        if ebb.get(&k).is_some() {
            hits += 1
        } else {
            ebb.insert(k, k)
        }
        let size = ebb.weighted_size();
        assert!(size <= 2 * cap, "ebb weighted over twice its capacity");
        peak = peak.max(size);
    }
    (hits as f64 / trace.len() as f64 * 100.0, peak)
}

pub fn run() -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = String::from(
        "### hit ratio (%), 2,000,000 requests, insert on miss\n\n| trace | capacity | ebb | ebb weighted | its peak weighted_size | moka sync | quick_cache | LRU | ebb − best of moka and quick_cache | ebb − LRU |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, trace) in traces() {
        for cap in [1_000u64, 10_000] {
            // ebb, and ebb with every entry weighing 1
            let ebb: ebb_cache::Cache<u64, u64> = ebb_cache::Cache::builder()
                .max_capacity(cap)
                .build_on(rt.handle());
            let mut hits = 0usize;
            for &k in trace.iter() {
                if ebb.get(&k).is_some() {
                    hits += 1
                } else {
                    ebb.insert(k, k)
                }
                assert!(ebb.entry_count() <= cap, "ebb over capacity");
            }
            let e = hits as f64 / trace.len() as f64 * 100.0;
            let (w, peak) = weighted(&rt, &trace, cap);
            // moka sync
            let moka: moka::sync::Cache<u64, u64> = moka::sync::Cache::new(cap);
            let mut hits = 0usize;
            for &k in trace.iter() {
                if moka.get(&k).is_some() {
                    hits += 1
                } else {
                    moka.insert(k, k)
                }
                moka.run_pending_tasks();
                assert!(moka.entry_count() <= cap, "moka over capacity");
            }
            let m = hits as f64 / trace.len() as f64 * 100.0;
            // quick_cache
            let qc: quick_cache::sync::Cache<u64, u64> =
                quick_cache::sync::Cache::new(cap as usize);
            let mut hits = 0usize;
            for &k in trace.iter() {
                if qc.get(&k).is_some() {
                    hits += 1
                } else {
                    qc.insert(k, k)
                }
                assert!(qc.len() as u64 <= cap, "quick_cache over capacity");
            }
            let q = hits as f64 / trace.len() as f64 * 100.0;
            let mut lru = Lru::new(cap as usize);
            let l = trace.iter().filter(|&&k| lru.access(k)).count() as f64 / trace.len() as f64
                * 100.0;
            out.push_str(&format!(
                "| {name} | {cap} | {e:.2} | {w:.2} | {peak} | {m:.2} | {q:.2} | {l:.2} | {:+.2} | {:+.2} |\n",
                e - m.max(q),
                e - l
            ));
        }
    }
    out.push_str(
        "\nTargets: ebb at least the better of moka and quick_cache on every row; at least 5 \
         points above LRU on the Zipf traces at capacity 10,000.\n\n",
    );
    Ok(out)
}
