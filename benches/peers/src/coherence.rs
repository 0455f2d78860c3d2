//! `ebb-peers coherence [WRITES]`: how fast a write on one replica stops being served by
//! another, and how many invalidations one Redis pushes to N subscribers, on a
//! `redis-server` this command starts on a free loopback port (persistence off, its own
//! directory, killed on exit).
//!
//! 1. **Invalidation latency.** Replica B reads a key (L1 now holds the old value); replica A
//!    writes a new one; the clock runs from just before A's write until B's `get_local` no
//!    longer returns the old value (A's write round trip included). Over `WRITES` writes
//!    (default 10,000) per implementation, in alternating rounds of 1,000 (ebb-redis, then
//!    the baseline, then ebb-redis...): p50, p99 and max. Implementations:
//!    - `ebb-redis`: two `TieredCache`s with coherence on (the default).
//!    - `moka+pubsub`: the hand-written baseline: a `moka::sync::Cache` per replica, a writer
//!      that `SET`s then `PUBLISH`es the key on a channel, and each replica subscribed (RESP3
//!      push on a redis-rs connection) invalidating what it hears.
//! 2. **Foreign writes.** 100 plain `SET`s by a client that is neither: how many each
//!    replica B drops within 100 ms (ebb-redis: all, through tracking; the baseline: none,
//!    since nobody published).
//! 3. **Push rate.** N = 1, 4, 16, 64 connections with `CLIENT TRACKING ON BCAST PREFIX
//!    p: NOLOOP`, four writers pipelining `SET`s of distinct keys under `p:` for 2 s: writes
//!    per second Redis executed, and invalidated keys per second delivered to all N together.
//!    The benchmark runs on the same two cores as the server, so the figures are a floor.

use crate::redis_server::Server;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_redis::redis::{self, AsyncCommands, PushInfo, PushKind, Value};

const ROUND: usize = 1_000;
const KEYS: u64 = 100;
const TIMEOUT: Duration = Duration::from_secs(1);

/// A replica under test: read a key (filling L1), write one, peek at L1.
trait Replica {
    async fn read(&self, key: u64) -> u64;
    async fn write(&self, key: u64, value: u64);
    fn peek(&self, key: u64) -> Option<u64>;
}

struct Ebb(ebb_redis::TieredCache<u64, u64>);

impl Replica for Ebb {
    async fn read(&self, key: u64) -> u64 {
        self.0.get_with(key, async { 0 }).await
    }
    async fn write(&self, key: u64, value: u64) {
        self.0.insert(key, value).await.expect("insert");
    }
    fn peek(&self, key: u64) -> Option<u64> {
        self.0.get_local(&key)
    }
}

/// The baseline: moka in front of Redis, invalidated by a pub/sub channel the writers
/// publish on.
struct MokaPubSub {
    local: moka::sync::Cache<u64, u64>,
    conn: redis::aio::MultiplexedConnection,
    _subscriber: redis::aio::MultiplexedConnection,
}

const CHANNEL: &str = "baseline:invalidate";

impl MokaPubSub {
    async fn new(url: &str) -> MokaPubSub {
        let local: moka::sync::Cache<u64, u64> = moka::sync::Cache::builder()
            .time_to_live(Duration::from_secs(60))
            .build();
        let client = redis::Client::open(url).unwrap();
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        let sink = local.clone();
        let config = redis::AsyncConnectionConfig::new().set_push_sender(move |info: PushInfo| {
            if info.kind == PushKind::Message {
                if let Some(Value::BulkString(key)) = info.data.get(1) {
                    if let Some(key) = std::str::from_utf8(key)
                        .ok()
                        .and_then(|k| k.parse::<u64>().ok())
                    {
                        sink.invalidate(&key);
                    }
                }
            }
            Ok::<(), std::convert::Infallible>(())
        });
        let mut subscriber = redis::Client::open(format!("{url}/?protocol=resp3"))
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        subscriber.subscribe(CHANNEL).await.unwrap();
        MokaPubSub {
            local,
            conn,
            _subscriber: subscriber,
        }
    }
}

impl Replica for MokaPubSub {
    async fn read(&self, key: u64) -> u64 {
        if let Some(v) = self.local.get(&key) {
            return v;
        }
        let mut conn = self.conn.clone();
        let v: Option<u64> = conn.get(format!("baseline:{key}")).await.unwrap();
        let v = v.unwrap_or(0);
        self.local.insert(key, v);
        v
    }
    async fn write(&self, key: u64, value: u64) {
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .set(format!("baseline:{key}"), value)
            .ignore()
            .publish(CHANNEL, key)
            .ignore()
            .query_async(&mut conn)
            .await
            .unwrap();
        self.local.insert(key, value);
    }
    fn peek(&self, key: u64) -> Option<u64> {
        self.local.get(&key)
    }
}

/// Read `key` until `b`'s L1 holds it. A replica's own load fill is written by a Lua
/// script, and Redis 7.0 sends the writer of a script its own invalidation despite
/// `NOLOOP`: the first read of a missing key may be dropped again, the next is an L2 hit.
async fn settled_read(b: &impl Replica, key: u64) -> u64 {
    for _ in 0..1_000 {
        let value = b.read(key).await;
        if b.peek(key) == Some(value) {
            return value;
        }
        tokio::task::yield_now().await;
    }
    panic!("B's L1 never kept key {key}");
}

/// One round: `ROUND` writes on `a`, each timed until `b` drops the old value. Returns the
/// latencies in µs and how many were never seen within `TIMEOUT`.
async fn round(a: &impl Replica, b: &impl Replica, next: &mut u64) -> (Vec<u64>, usize) {
    let mut out = Vec::with_capacity(ROUND);
    let mut unseen = 0;
    for i in 0..ROUND {
        let key = i as u64 % KEYS;
        let old = settled_read(b, key).await;
        *next += 1;
        let start = Instant::now();
        a.write(key, *next).await;
        loop {
            if b.peek(key) != Some(old) {
                out.push(start.elapsed().as_micros() as u64);
                break;
            }
            if start.elapsed() > TIMEOUT {
                unseen += 1;
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    (out, unseen)
}

/// How many of 100 plain `SET`s (by a client that is neither replica) `b` drops within
/// 100 ms each.
async fn foreign(
    b: &impl Replica,
    admin: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> usize {
    let mut seen = 0;
    for i in 0..100_u64 {
        let key = i % KEYS;
        let old = settled_read(b, key).await;
        let _: () = admin
            .set(format!("{prefix}:{key}"), 1_000_000 + i)
            .await
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(100) {
            if b.peek(key) != Some(old) {
                seen += 1;
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    seen
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    percentile(&v, 0.5)
}

/// Push rate to `n` tracking subscribers: (writes/s, invalidated keys/s delivered in total).
async fn push_rate(url: &str, n: usize) -> (f64, f64) {
    let received = Arc::new(AtomicU64::new(0));
    let mut subscribers = Vec::new();
    for _ in 0..n {
        let counter = Arc::clone(&received);
        let config = redis::AsyncConnectionConfig::new().set_push_sender(move |info: PushInfo| {
            if info.kind == PushKind::Invalidate {
                if let Some(Value::Array(keys)) = info.data.first() {
                    counter.fetch_add(keys.len() as u64, Ordering::Relaxed);
                }
            }
            Ok::<(), std::convert::Infallible>(())
        });
        let mut conn = redis::Client::open(format!("{url}/?protocol=resp3"))
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        let _: () = redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg("p:")
            .arg("NOLOOP")
            .query_async(&mut conn)
            .await
            .unwrap();
        subscribers.push(conn);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..4_u64 {
        let mut conn = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let (stop, written) = (Arc::clone(&stop), Arc::clone(&written));
        writers.push(tokio::spawn(async move {
            let mut i = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                let mut pipe = redis::pipe();
                for _ in 0..100 {
                    i += 1;
                    pipe.set(format!("p:{w}:{}", i % 10_000), i).ignore();
                }
                let _: () = pipe.query_async(&mut conn).await.unwrap();
                written.fetch_add(100, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // warm-up: not counted
    let (w0, r0, t0) = (
        written.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // the measured window
    let (w1, r1, t1) = (
        written.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
        t0.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    drop(subscribers);
    let secs = t1.as_secs_f64();
    ((w1 - w0) as f64 / secs, (r1 - r0) as f64 / secs)
}

/// Run the benchmark; `args`: `[WRITES]` (default 10,000, in rounds of 1,000).
pub fn run(args: &[String]) -> Result<String, String> {
    use std::fmt::Write;
    let writes = crate::rounds(args, 10_000)?;
    let rounds = writes.div_ceil(ROUND);
    let server = Server::start("coherence", &["--maxclients", "10000"])?;
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let mut out = String::new();
        let tier = |name: &str| {
            ebb_redis::TieredCache::<u64, u64>::builder(name)
                .redis(url.clone())
                .local_ttl(Duration::from_secs(60))
                .read_timeout(Duration::from_secs(2))
                .write_timeout(Duration::from_secs(2))
                .build()
        };
        let (ea, eb) = (Ebb(tier("bench:v1")), Ebb(tier("bench:v1")));
        let (ma, mb) = (MokaPubSub::new(&url).await, MokaPubSub::new(&url).await);
        // Wait for tracking (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        while [&ea, &eb]
            .iter()
            .any(|t| t.0.coherence_stats().state != ebb_redis::TrackingState::On)
        {
            if Instant::now() > deadline {
                return Err("tracking did not come on within 10 s".to_string());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut next = 0;
        let (mut all_e, mut all_m) = (Vec::new(), Vec::new());
        let (mut unseen_e, mut unseen_m) = (0, 0);
        let mut ratios = Vec::new();
        for _ in 0..rounds {
            let (e, ue) = round(&ea, &eb, &mut next).await;
            let (m, um) = round(&ma, &mb, &mut next).await;
            ratios.push((median(e.clone()) * 1000) / median(m.clone()).max(1));
            all_e.extend(e);
            all_m.extend(m);
            unseen_e += ue;
            unseen_m += um;
        }
        let mut admin = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let foreign_e = foreign(&eb, &mut admin, "bench:v1").await;
        let foreign_m = foreign(&mb, &mut admin, "baseline").await;
        all_e.sort_unstable();
        all_m.sort_unstable();
        let _ = writeln!(
            out,
            "### coherence: invalidation latency ({} writes each, {rounds} alternating rounds of {ROUND}; write on A until B drops the old value, A's write round trip included)\n",
            all_e.len()
        );
        let _ = writeln!(
            out,
            "| implementation | p50 µs | p99 µs | max µs | never seen (1 s) | foreign SETs seen (of 100) |");
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|");
        for (name, all, unseen, foreign) in [
            ("ebb-redis", &all_e, unseen_e, foreign_e),
            ("moka+pubsub", &all_m, unseen_m, foreign_m),
        ] {
            let _ = writeln!(
            out,
                "| {name} | {} | {} | {} | {unseen} | {foreign} |",
                percentile(all, 0.5),
                percentile(all, 0.99),
                all.last().copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "\nebb-redis / moka+pubsub, median of the per-round p50 ratios: {:.2}\n",
            median(ratios) as f64 / 1000.0
        );
        drop((ea, eb, ma, mb));
        let _ = writeln!(
            out,
            "### coherence: push rate, BCAST tracking to N subscribers (4 pipelined writers, 2 s)\n");
        let _ = writeln!(
            out,
            "| N | writes/s | invalidated keys/s delivered (all N) | per subscriber |");
        let _ = writeln!(
            out,
            "|---:|---:|---:|---:|");
        for n in [1, 4, 16, 64] {
            let (w, r) = push_rate(&url, n).await;
            let _ = writeln!(
            out,
                "| {n} | {:.0} | {:.0} | {:.0} |",
                w,
                r,
                r / n as f64
            );
        }
        Ok(out)
    })
}
