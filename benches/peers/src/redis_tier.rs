//! `ebb-peers redis-tier [ROUNDS]`: ebb-redis's `TieredCache` against plain ebb, a bare
//! redis-rs client, and the Rust peer `multi-tier-cache` 0.6 (moka + Redis), all on one
//! `redis-server` this command starts on a free loopback port (persistence off, its own
//! temporary directory, killed when the command ends).
//!
//! - **L1 hit**: `get_with` of one present key, 200,000 calls in one task on a 2-worker
//!   runtime: `ebb_redis` (`TieredCache::get_with`), `ebb` (`ebb_cache::Cache::get_with`),
//!   `multi_tier` (`CacheManager::get_or_compute_typed`). Each round measures every
//!   implementation beside `ebb` (the order alternating), and a ratio is the median over
//!   rounds of the ratio within a pair.
//! - **L2 hit**: 2,000 keys present in Redis and absent from the reader's L1 (a fresh tier,
//!   or a fresh `CacheSystem`, per round), read one after another: `ebb_redis` (one round
//!   trip: `PTTL` and `GET` pipelined, then decode and L1 fill), `bare_get` (a redis-rs
//!   `MultiplexedConnection` `GET` plus `serde_json` decode: the floor), `bare_read` (the
//!   tier's read, `PTTL` + `GET` pipelined, plus decode, no tier), `multi_tier` (its L2
//!   path). Paired with `bare_get`, alternating.
//! - **Loads per key, 4 replicas**: 4 tiers (4 `CacheSystem`s, 4 plain ebb caches) sharing
//!   one Redis, asking for 1,000 fresh keys: one after another (replica 0, then 1, 2, 3 for
//!   each key), and all 4 at once (one task per replica, a barrier per key).

use crate::redis_server::Server;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_redis::redis;
use multi_tier_cache::{CacheStrategy, CacheSystem};
use serde::{Deserialize, Serialize};

/// The value every implementation caches: a small record, JSON in Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
}

fn item(id: u64) -> Item {
    Item {
        id,
        name: format!("item number {id}"),
    }
}

const HITS: u64 = 200_000;
const L2_KEYS: u64 = 2_000;
const LOAD_KEYS: u64 = 1_000;
const REPLICAS: usize = 4;
const TTL: Duration = Duration::from_secs(300);

fn tier(url: &str, namespace: &str) -> ebb_redis::TieredCache<u64, Item> {
    ebb_redis::TieredCache::builder(namespace)
        .redis(url)
        .local_ttl(TTL)
        .remote_ttl(TTL)
        .read_timeout(Duration::from_secs(2))
        .write_timeout(Duration::from_secs(2))
        .build()
}

fn plain() -> ebb_cache::Cache<u64, Item> {
    ebb_cache::Cache::builder().time_to_live(TTL).build()
}

async fn multi_tier(url: &str) -> Result<CacheSystem, String> {
    CacheSystem::with_redis_url(url)
        .await
        .map_err(|e| format!("multi-tier-cache: {e}"))
}

async fn mt_get(system: &CacheSystem, key: &str, id: u64, loads: &AtomicU64) -> Item {
    system
        .cache_manager()
        .get_or_compute_typed::<Item, _, _>(key, CacheStrategy::Custom(TTL), || async move {
            loads.fetch_add(1, Ordering::Relaxed);
            Ok(item(id))
        })
        .await
        .expect("multi-tier-cache get_or_compute_typed")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Measure `a` and `b` in alternating order; returns (a's, b's) ns/op per round.
fn pairs(
    rounds: usize,
    mut a: impl FnMut() -> f64,
    mut b: impl FnMut() -> f64,
) -> (Vec<f64>, Vec<f64>) {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            xs.push(a());
            ys.push(b());
        } else {
            ys.push(b());
            xs.push(a());
        }
    }
    (xs, ys)
}

/// The median over rounds of `a[r] / b[r]`.
fn ratio(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(a, b)| a / b).collect())
}

pub fn run(args: &[String]) -> Result<String, String> {
    let rounds = crate::rounds(args, 15)?;
    let server = Server::start("redis", &[])?;
    let url = server.url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = format!(
        "### redis-tier ({rounds} rounds, alternating pairs; redis-server {} on loopback)\n\n",
        redis_version(&url)
    );

    // --- L1 hit: get_with of one present key.
    let (ebb_tier, ebb_plain, mt) = rt.block_on(async {
        let t = tier(&url, "hit:v1");
        t.get_with(1, async { item(1) }).await;
        let p = plain();
        p.get_with(1, async { item(1) }).await;
        let mt = multi_tier(&url).await?;
        mt_get(&mt, "hit:1", 1, &AtomicU64::new(0)).await;
        Ok::<_, String>((t, p, mt))
    })?;
    let hit_tier = || {
        rt.block_on(async {
            let started = Instant::now();
            for _ in 0..HITS {
                std::hint::black_box(ebb_tier.get_with(1, async { unreachable!() }).await);
            }
            started.elapsed().as_nanos() as f64 / HITS as f64
        })
    };
    let hit_plain = || {
        rt.block_on(async {
            let started = Instant::now();
            for _ in 0..HITS {
                std::hint::black_box(ebb_plain.get_with(1, async { unreachable!() }).await);
            }
            started.elapsed().as_nanos() as f64 / HITS as f64
        })
    };
    let never = AtomicU64::new(0);
    let hit_mt = || {
        rt.block_on(async {
            let started = Instant::now();
            for _ in 0..HITS {
                std::hint::black_box(mt_get(&mt, "hit:1", 1, &never).await);
            }
            started.elapsed().as_nanos() as f64 / HITS as f64
        })
    };
    let (tier_ns, plain_ns) = pairs(rounds, hit_tier, hit_plain);
    let (mt_ns, plain_ns2) = pairs(rounds, hit_mt, hit_plain);
    if never.load(Ordering::Relaxed) != 0 {
        return Err("multi-tier-cache ran its loader on an L1 hit".into());
    }
    let tier_to_ebb = ratio(&plain_ns, &tier_ns);
    let mt_to_ebb = ratio(&plain_ns2, &mt_ns);
    let _ = writeln!(
        out,
        "#### L1 hit: `get_with` of one present key ({HITS} calls in one task per measurement)\n\n\
         | implementation | median ns/op | throughput ÷ ebb's (median of pairs) |\n|---|---:|---:|\n\
         | ebb (`Cache::get_with`) | {:.1} | 1.00 |\n\
         | ebb_redis (`TieredCache::get_with`) | {:.1} | {tier_to_ebb:.2} |\n\
         | multi_tier (`get_or_compute_typed`) | {:.1} | {mt_to_ebb:.2} |\n\n\
         - ebb_redis ÷ ebb throughput: {tier_to_ebb:.2} (target ≥ 0.85: {})\n",
        median(plain_ns.clone()),
        median(tier_ns.clone()),
        median(mt_ns.clone()),
        if tier_to_ebb >= 0.85 { "met" } else { "missed" },
    );
    drop((ebb_tier, ebb_plain, mt));

    // --- L2 hit: keys in Redis, not in the reader's L1.
    rt.block_on(async {
        let writer = tier(&url, "l2:v1");
        let mt = multi_tier(&url).await?;
        for id in 0..L2_KEYS {
            writer
                .insert(id, item(id))
                .await
                .map_err(|e| e.to_string())?;
            mt_get(&mt, &format!("l2:{id}"), id, &AtomicU64::new(0)).await;
        }
        Ok::<_, String>(())
    })?;
    let l2_tier = || {
        rt.block_on(async {
            let reader = tier(&url, "l2:v1");
            reader.get_with(u64::MAX, async { item(0) }).await; // connected, script loaded
            let started = Instant::now();
            for id in 0..L2_KEYS {
                let got = reader
                    .get_with(id, async { unreachable!("an L2 hit") })
                    .await;
                std::hint::black_box(got);
            }
            started.elapsed().as_nanos() as f64 / L2_KEYS as f64
        })
    };
    let l2_bare = || {
        rt.block_on(async {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = (0..L2_KEYS).map(|id| format!("l2:v1:{id}")).collect();
            let started = Instant::now();
            for key in &keys {
                let bytes: Vec<u8> = redis::AsyncCommands::get(&mut conn, key).await.unwrap();
                let got: Item = serde_json::from_slice(&bytes).unwrap();
                std::hint::black_box(got);
            }
            started.elapsed().as_nanos() as f64 / L2_KEYS as f64
        })
    };
    // The tier's L2-hit read alone (`PTTL` then `GET`, pipelined, on the same kind of
    // connection as the floor) plus decode: how much of the tier's L2 hit is the second
    // command, and how much the tier's own path.
    let l2_read = || {
        rt.block_on(async {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = (0..L2_KEYS).map(|id| format!("l2:v1:{id}")).collect();
            let started = Instant::now();
            for key in &keys {
                let (ttl, bytes): (i64, Vec<u8>) = redis::pipe()
                    .pttl(key)
                    .get(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let got: Item = serde_json::from_slice(&bytes).unwrap();
                std::hint::black_box((ttl, got));
            }
            started.elapsed().as_nanos() as f64 / L2_KEYS as f64
        })
    };
    let mt_loads = AtomicU64::new(0);
    let l2_mt = || {
        rt.block_on(async {
            let reader = multi_tier(&url).await.unwrap();
            mt_get(&reader, "l2:warm", 0, &AtomicU64::new(0)).await;
            let keys: Vec<String> = (0..L2_KEYS).map(|id| format!("l2:{id}")).collect();
            let started = Instant::now();
            for (id, key) in keys.iter().enumerate() {
                std::hint::black_box(mt_get(&reader, key, id as u64, &mt_loads).await);
            }
            started.elapsed().as_nanos() as f64 / L2_KEYS as f64
        })
    };
    let (tier_l2, bare_l2) = pairs(rounds, l2_tier, l2_bare);
    let (mt_l2, bare_l2b) = pairs(rounds, l2_mt, l2_bare);
    let (read_l2, bare_l2c) = pairs(rounds, l2_read, l2_bare);
    let read_over_bare = ratio(&read_l2, &bare_l2c);
    let tier_over_bare = ratio(&tier_l2, &bare_l2);
    let mt_over_bare = ratio(&mt_l2, &bare_l2b);
    let _ = writeln!(
        out,
        "#### L2 hit: {L2_KEYS} keys in Redis, not in the reader's L1, read one after another\n\n\
         | implementation | median µs/op | latency ÷ bare GET's (median of pairs) |\n|---|---:|---:|\n\
         | bare_get (redis-rs `GET` + `serde_json`) | {:.1} | 1.00 |\n\
         | bare_read (the tier's read, `PTTL` + `GET` pipelined, + `serde_json`, no tier) | {:.1} | {read_over_bare:.2} |\n\
         | ebb_redis (`PTTL` + `GET`, decode, L1 fill) | {:.1} | {tier_over_bare:.2} |\n\
         | multi_tier (L2 get, promotion to L1, decode) | {:.1} | {mt_over_bare:.2} |\n\n\
         - ebb_redis ÷ bare GET latency: {tier_over_bare:.2} (target ≤ 1.2: {}); multi_tier \
         loader calls during its L2 reads: {}\n",
        median(bare_l2.clone()) / 1000.0,
        median(read_l2.clone()) / 1000.0,
        median(tier_l2.clone()) / 1000.0,
        median(mt_l2.clone()) / 1000.0,
        if tier_over_bare <= 1.2 { "met" } else { "missed" },
        mt_loads.load(Ordering::Relaxed),
    );

    // --- Loads per key, 4 replicas.
    let per_key = rt.block_on(loads_per_key(&url))?;
    let _ = writeln!(
        out,
        "#### Loader calls per key, {REPLICAS} replicas sharing one Redis ({LOAD_KEYS} fresh keys)\n\n\
         | implementation | one after another | all at once |\n|---|---:|---:|"
    );
    for (name, sequential, simultaneous) in per_key {
        let _ = writeln!(out, "| {name} | {sequential:.2} | {simultaneous:.2} |");
    }
    out.push('\n');
    drop(server);
    Ok(out)
}

fn redis_version(url: &str) -> String {
    let info: Option<String> = redis::Client::open(url)
        .ok()
        .and_then(|c| c.get_connection().ok())
        .and_then(|mut c| redis::cmd("INFO").arg("server").query(&mut c).ok());
    info.and_then(|info| {
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:").map(str::to_owned))
    })
    .unwrap_or_else(|| "?".into())
}

/// (implementation, loads per key one replica after another, loads per key all at once).
async fn loads_per_key(url: &str) -> Result<Vec<(&'static str, f64, f64)>, String> {
    let mut rows = Vec::new();
    let keys = LOAD_KEYS as f64;

    // ebb_redis
    let tiers: Vec<_> = (0..REPLICAS).map(|_| tier(url, "loads:v1")).collect();
    let loads = Arc::new(AtomicU64::new(0));
    for id in 0..LOAD_KEYS {
        for t in &tiers {
            let loads = Arc::clone(&loads);
            t.get_with(id, async move {
                loads.fetch_add(1, Ordering::Relaxed);
                item(id)
            })
            .await;
        }
    }
    let sequential = loads.swap(0, Ordering::Relaxed) as f64 / keys;
    for id in LOAD_KEYS..2 * LOAD_KEYS {
        let barrier = Arc::new(tokio::sync::Barrier::new(REPLICAS));
        let tasks: Vec<_> = tiers
            .iter()
            .map(|t| {
                let (t, loads, barrier) = (t.clone(), Arc::clone(&loads), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    t.get_with(id, async move {
                        loads.fetch_add(1, Ordering::Relaxed);
                        item(id)
                    })
                    .await
                })
            })
            .collect();
        for task in tasks {
            task.await.map_err(|e| e.to_string())?;
        }
    }
    rows.push((
        "ebb_redis",
        sequential,
        loads.swap(0, Ordering::Relaxed) as f64 / keys,
    ));

    // multi_tier
    let mut systems = Vec::new();
    for _ in 0..REPLICAS {
        systems.push(Arc::new(multi_tier(url).await?));
    }
    for id in 0..LOAD_KEYS {
        for s in &systems {
            mt_get(s, &format!("loads:{id}"), id, &loads).await;
        }
    }
    let sequential = loads.swap(0, Ordering::Relaxed) as f64 / keys;
    for id in LOAD_KEYS..2 * LOAD_KEYS {
        let barrier = Arc::new(tokio::sync::Barrier::new(REPLICAS));
        let tasks: Vec<_> = systems
            .iter()
            .map(|s| {
                let (s, loads, barrier) = (Arc::clone(s), Arc::clone(&loads), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    mt_get(&s, &format!("loads:{id}"), id, &loads).await
                })
            })
            .collect();
        for task in tasks {
            task.await.map_err(|e| e.to_string())?;
        }
    }
    rows.push((
        "multi_tier",
        sequential,
        loads.swap(0, Ordering::Relaxed) as f64 / keys,
    ));

    // 4 plain ebb caches (no shared tier)
    let caches: Vec<_> = (0..REPLICAS).map(|_| plain()).collect();
    for id in 0..LOAD_KEYS {
        for c in &caches {
            let loads = Arc::clone(&loads);
            c.get_with(id, async move {
                loads.fetch_add(1, Ordering::Relaxed);
                item(id)
            })
            .await;
        }
    }
    let sequential = loads.swap(0, Ordering::Relaxed) as f64 / keys;
    rows.push(("4 plain ebb caches", sequential, sequential));
    Ok(rows)
}
