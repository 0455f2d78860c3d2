//! Process-level workloads: `per-request`, `memory`, `idle` and `expiry`.
//!
//! `ebb-peers WORKLOAD` runs `ebb-peers WORKLOAD IMPL [N]` as a child process for every
//! implementation (and every N), reads the JSON line each child prints last, and prints a
//! Markdown table. Each measurement thus starts from a fresh process: no heap, RSS or threads
//! left over from another implementation.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::runtime::Runtime;

use crate::alloc::{live_bytes, peak_bytes, reset_peak};
use crate::names::{
    DASHMAP, EBB, EBB_BOUNDED, MINI_MOKA, MOKA_FUTURE, MOKA_FUTURE_BOUNDED, MOKA_SYNC, QUICK_CACHE,
};

/// `per-request`: cycles of build, insert, get, drop.
const CYCLES: u64 = 100_000;
/// `per-request`: the TTL of the caches built per request.
const REQUEST_TTL: Duration = Duration::from_secs(30);
/// `memory`: entry counts.
const MEMORY_NS: [u64; 3] = [900_000, 1_000_000, 1_500_000];
/// `memory`: the TTL (entries must not expire while measured).
const MEMORY_TTL: Duration = Duration::from_secs(300);
/// `idle`: entries, TTL, how long nothing is called, ebb's tick.
const IDLE_ENTRIES: u64 = 100_000;
const IDLE_TTL: Duration = Duration::from_secs(1);
const IDLE_WAIT: Duration = Duration::from_secs(3);
/// ebb's tick in `idle` and `expiry`, and the period of peers' maintenance calls in `expiry`.
const TICK: Duration = Duration::from_millis(100);
/// `expiry`: entries and TTL; the longest it may take for a cache to report 0 entries.
const EXPIRY_ENTRIES: u64 = 1_000_000;
const EXPIRY_TTL: Duration = Duration::from_millis(200);
const EXPIRY_CAP: Duration = Duration::from_secs(10);

const WORKLOADS: [&str; 5] = ["per-request", "memory", "idle", "expiry", "all"];

pub fn is_workload(name: &str) -> bool {
    WORKLOADS.contains(&name)
}

/// The implementations each workload compares, in table order.
fn impls(workload: &str) -> &'static [&'static str] {
    match workload {
        "per-request" => &[EBB, MOKA_FUTURE, MOKA_SYNC, MINI_MOKA, QUICK_CACHE],
        "memory" => &[
            EBB,
            MOKA_FUTURE,
            EBB_BOUNDED,
            MOKA_FUTURE_BOUNDED,
            MOKA_SYNC,
            MINI_MOKA,
            DASHMAP,
            QUICK_CACHE,
        ],
        "idle" => &[EBB, MOKA_FUTURE, MOKA_SYNC, MINI_MOKA, QUICK_CACHE],
        "expiry" => &[EBB, MOKA_FUTURE, MOKA_SYNC, MINI_MOKA],
        _ => &[],
    }
}

/// `args`: `[IMPL [N]]` after the workload's name.
pub fn run(workload: &str, args: &[String]) -> Result<String, String> {
    if workload == "all" {
        let mut out = String::new();
        for w in ["per-request", "memory", "idle", "expiry"] {
            out.push_str(&run(w, &[])?);
        }
        return Ok(out);
    }
    match args.first() {
        Some(name) => {
            if !impls(workload).contains(&name.as_str()) {
                return Err(format!(
                    "{workload}: unknown implementation {name:?}; one of {:?}",
                    impls(workload)
                ));
            }
            let extra = args.get(1).map(String::as_str);
            let n = || {
                extra
                    .map_or(Ok(1_000_000), |n| n.parse::<u64>())
                    .map_err(|e| format!("N: {e}"))
            };
            let result = match workload {
                "per-request" => per_request(name),
                "memory" => memory(name, n()?),
                "idle" => idle(name),
                "expiry" => expiry(name, extra == Some("fill-only")),
                _ => unreachable!("checked by is_workload"),
            };
            Ok(format!("{result}\n"))
        }
        None => match workload {
            "memory" => {
                let mut rows = Vec::new();
                for n in MEMORY_NS {
                    for name in impls(workload) {
                        rows.push(child(workload, name, Some(n.to_string()))?);
                    }
                }
                save(workload, &rows)?;
                Ok(memory_table(&rows))
            }
            "expiry" => {
                let mut rows = Vec::new();
                for name in impls(workload) {
                    let mut row = child(workload, name, None)?;
                    let base = child(workload, name, Some("fill-only".to_string()))?;
                    row["fill_only_cpu_ns_per_entry"] = base["fill_cpu_ns_per_entry"].clone();
                    rows.push(row);
                }
                save(workload, &rows)?;
                Ok(expiry_table(&rows))
            }
            _ => {
                let rows = impls(workload)
                    .iter()
                    .map(|name| child(workload, name, None))
                    .collect::<Result<Vec<_>, _>>()?;
                save(workload, &rows)?;
                Ok(match workload {
                    "per-request" => per_request_table(&rows),
                    _ => idle_table(&rows),
                })
            }
        },
    }
}

/// Where the runner keeps its last results, one JSON file per workload, for `chart`:
/// `<TARGET_DIR>/ebb-peers/`, TARGET_DIR being `$CARGO_TARGET_DIR`, else `target`.
pub fn results_dir() -> std::path::PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_string());
    std::path::PathBuf::from(target).join("ebb-peers")
}

pub fn save(workload: &str, rows: &[Value]) -> Result<(), String> {
    let dir = results_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!("{workload}.json"));
    std::fs::write(&path, Value::from(rows.to_vec()).to_string())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Run one measurement in a fresh process and parse the JSON line it prints last.
fn child(workload: &str, name: &str, extra: Option<String>) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg(workload).arg(name);
    if let Some(extra) = &extra {
        cmd.arg(extra);
    }
    eprintln!("ebb-peers: {workload} {name} {}", extra.unwrap_or_default());
    let out = cmd
        .output()
        .map_err(|e| format!("{workload} {name}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{workload} {name} failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("{workload} {name}: {e}: {line:?}"))
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Resident set size of this process, in bytes (`VmRSS` of /proc/self/status).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU time of the whole process (all threads, live or exited), from the utime and stime
/// fields of /proc/self/stat, in clock ticks (10 ms at the usual 100 Hz).
fn cpu_stat() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// CPU time of the threads alive now, summed, in nanoseconds (the first field of every
/// /proc/self/task/*/schedstat). Finer than `cpu_stat`, but misses exited threads.
fn cpu_sched() -> Duration {
    let mut ns = 0u64;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for task in dir.flatten() {
            let text = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            ns += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// Wait up to 2 s for the runtime's alive task count to reach `target`; return the last
/// count seen.
fn settle_tasks(rt: &Runtime, target: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let n = rt.metrics().num_alive_tasks();
        if n <= target || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// per-request

fn per_request(name: &str) -> Value {
    let rt = runtime();
    let name_owned = name.to_string();
    // Warm the runtime and allocator with a few cycles so that one-time setup is not counted.
    let warm = rt.block_on(async {
        let n = name_owned.clone();
        tokio::spawn(async move { cycles(&n, 100).await })
            .await
            .expect("warm-up task")
    });
    black_box(warm);
    settle_tasks(&rt, 0);
    let rss_before = rss();
    let heap_before = live_bytes();
    reset_peak();
    let elapsed = rt.block_on(async {
        tokio::spawn(async move { cycles(&name_owned, CYCLES).await })
            .await
            .expect("per-request task")
    });
    let heap_peak = peak_bytes();
    let tasks_after = settle_tasks(&rt, 0);
    let heap_after = live_bytes();
    let rss_after = rss();
    json!({
        "impl": name,
        "ns_per_cycle": elapsed.as_nanos() as f64 / CYCLES as f64,
        "tasks_after": tasks_after,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "heap_before": heap_before,
        "heap_after": heap_after,
        "heap_peak": heap_peak,
    })
}

/// `n` cycles of build, insert one entry, get it, drop, awaited in the calling task.
async fn cycles(name: &str, n: u64) -> Duration {
    let start = Instant::now();
    match name {
        EBB => {
            for _ in 0..n {
                let cache: ebb_cache::Cache<u64, u64> = ebb_cache::Cache::builder()
                    .time_to_live(REQUEST_TTL)
                    .build();
                cache.insert(black_box(1), black_box(2));
                black_box(cache.get(black_box(&1)));
            }
        }
        MOKA_FUTURE => {
            for _ in 0..n {
                let cache: moka::future::Cache<u64, u64> = moka::future::Cache::builder()
                    .time_to_live(REQUEST_TTL)
                    .build();
                cache.insert(black_box(1), black_box(2)).await;
                black_box(cache.get(black_box(&1)).await);
            }
        }
        MOKA_SYNC => {
            for _ in 0..n {
                let cache: moka::sync::Cache<u64, u64> = moka::sync::Cache::builder()
                    .time_to_live(REQUEST_TTL)
                    .build();
                cache.insert(black_box(1), black_box(2));
                black_box(cache.get(black_box(&1)));
            }
        }
        MINI_MOKA => {
            for _ in 0..n {
                let cache: mini_moka::sync::Cache<u64, u64> = mini_moka::sync::Cache::builder()
                    .time_to_live(REQUEST_TTL)
                    .build();
                cache.insert(black_box(1), black_box(2));
                black_box(cache.get(black_box(&1)));
            }
        }
        QUICK_CACHE => {
            for _ in 0..n {
                let cache: quick_cache::sync::Cache<u64, u64> = quick_cache::sync::Cache::new(16);
                cache.insert(black_box(1), black_box(2));
                black_box(cache.get(black_box(&1)));
            }
        }
        other => unreachable!("per-request: {other}"),
    }
    start.elapsed()
}

fn per_request_table(rows: &[Value]) -> String {
    let get = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let ebb = rows
        .iter()
        .find(|r| r["impl"] == EBB)
        .map(|r| get(r, "ns_per_cycle"));
    let moka = rows
        .iter()
        .find(|r| r["impl"] == MOKA_FUTURE)
        .map(|r| get(r, "ns_per_cycle"));
    let mut s = format!(
        "### per-request ({CYCLES} cycles of build, insert, get, drop in one task on a \
         2-worker runtime)\n\n\
         | implementation | ns/cycle | time ÷ ebb | tasks alive after | heap after − before | \
         peak heap − before | RSS before | RSS after |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let ns = get(r, "ns_per_cycle");
        s.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            r["impl"].as_str().unwrap_or("?"),
            ns,
            ebb.map_or("n/a".into(), |e| format!("{:.2}", ns / e)),
            r["tasks_after"],
            bytes_signed(get(r, "heap_after") - get(r, "heap_before")),
            bytes_signed(get(r, "heap_peak") - get(r, "heap_before")),
            bytes(get(r, "rss_before")),
            bytes(get(r, "rss_after")),
        ));
    }
    if let (Some(e), Some(m)) = (ebb, moka) {
        let ebb_row = rows.iter().find(|r| r["impl"] == EBB);
        let tasks = ebb_row.map_or(-1, |r| r["tasks_after"].as_i64().unwrap_or(-1));
        let heap = ebb_row.map_or(f64::NAN, |r| get(r, "heap_after") - get(r, "heap_before"));
        s.push_str(&format!(
            "\nebb ÷ moka future time per cycle = {:.2} (target ≤ 0.50: {}); ebb tasks left = \
             {tasks} (target 0: {}); ebb heap after − before = {} (target flat, < 64 KiB: {})\n",
            e / m,
            verdict(e / m <= 0.5),
            verdict(tasks == 0),
            bytes_signed(heap),
            verdict(heap.abs() < 65536.0),
        ));
    }
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------------------
// memory

fn memory(name: &str, n: u64) -> Value {
    let rt = runtime();
    // Let the runtime's threads start and allocate what they allocate before measuring.
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    let heap_before = live_bytes();
    let rss_before = rss();
    let settle = Duration::from_millis(1500);
    let (heap_after, rss_after, count) = rt.block_on(async {
        macro_rules! measure {
            ($cache:expr, $count:expr) => {{
                let cache = $cache;
                tokio::time::sleep(settle).await;
                let out = (live_bytes(), rss(), $count(&cache));
                drop(black_box(cache));
                out
            }};
        }
        match name {
            EBB => measure!(
                {
                    let c: ebb_cache::Cache<u64, u64> =
                        ebb_cache::Cache::builder().time_to_live(MEMORY_TTL).build();
                    (0..n).for_each(|k| c.insert(k, k));
                    c
                },
                |c: &ebb_cache::Cache<u64, u64>| c.entry_count()
            ),
            EBB_BOUNDED => measure!(
                {
                    let c: ebb_cache::Cache<u64, u64> = ebb_cache::Cache::builder()
                        .time_to_live(MEMORY_TTL)
                        .max_capacity(n)
                        .build();
                    (0..n).for_each(|k| c.insert(k, k));
                    c
                },
                |c: &ebb_cache::Cache<u64, u64>| c.entry_count()
            ),
            MOKA_FUTURE | MOKA_FUTURE_BOUNDED => {
                let mut builder = moka::future::Cache::builder().time_to_live(MEMORY_TTL);
                if name == MOKA_FUTURE_BOUNDED {
                    builder = builder.max_capacity(n);
                }
                let c: moka::future::Cache<u64, u64> = builder.build();
                for k in 0..n {
                    c.insert(k, k).await;
                }
                c.run_pending_tasks().await;
                tokio::time::sleep(settle).await;
                c.run_pending_tasks().await;
                let out = (live_bytes(), rss(), c.entry_count());
                drop(black_box(c));
                out
            }
            MOKA_SYNC => measure!(
                {
                    let c: moka::sync::Cache<u64, u64> = moka::sync::Cache::builder()
                        .time_to_live(MEMORY_TTL)
                        .build();
                    (0..n).for_each(|k| c.insert(k, k));
                    c.run_pending_tasks();
                    c
                },
                |c: &moka::sync::Cache<u64, u64>| {
                    c.run_pending_tasks();
                    c.entry_count()
                }
            ),
            MINI_MOKA => measure!(
                {
                    let c: mini_moka::sync::Cache<u64, u64> = mini_moka::sync::Cache::builder()
                        .time_to_live(MEMORY_TTL)
                        .build();
                    (0..n).for_each(|k| c.insert(k, k));
                    c
                },
                |c: &mini_moka::sync::Cache<u64, u64>| c.entry_count()
            ),
            DASHMAP => measure!(
                {
                    let c: dashmap::DashMap<u64, u64> = dashmap::DashMap::new();
                    (0..n).for_each(|k| {
                        c.insert(k, k);
                    });
                    c
                },
                |c: &dashmap::DashMap<u64, u64>| c.len() as u64
            ),
            QUICK_CACHE => measure!(
                {
                    let c: quick_cache::sync::Cache<u64, u64> =
                        quick_cache::sync::Cache::new(n as usize);
                    (0..n).for_each(|k| c.insert(k, k));
                    c
                },
                |c: &quick_cache::sync::Cache<u64, u64>| c.len() as u64
            ),
            other => unreachable!("memory: {other}"),
        }
    });
    json!({
        "impl": name,
        "n": n,
        "count": count,
        "heap_per_entry": (heap_after - heap_before) as f64 / n as f64,
        "rss_per_entry": (rss_after as f64 - rss_before as f64) / n as f64,
    })
}

fn memory_table(rows: &[Value]) -> String {
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let mut s = String::from(
        "### memory (N `u64 -> u64` entries, TTL 300 s where the cache has one)\n\n\
         | N | implementation | TTL | entries reported | heap B/entry | heap ÷ moka future | \
         heap ÷ ebb | RSS B/entry |\n|---:|---|---|---:|---:|---:|---:|---:|\n",
    );
    let mut verdicts = Vec::new();
    let mut by_n: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for r in rows {
        by_n.entry(r["n"].as_u64().unwrap_or(0))
            .or_default()
            .push(r);
    }
    for (n, rs) in &by_n {
        let heap_of = |name: &str| {
            rs.iter()
                .find(|r| r["impl"] == name)
                .map(|r| f(r, "heap_per_entry"))
        };
        let (ebb, moka) = (heap_of(EBB), heap_of(MOKA_FUTURE));
        for r in rs {
            let name = r["impl"].as_str().unwrap_or("?");
            let h = f(r, "heap_per_entry");
            s.push_str(&format!(
                "| {n} | {name} | {} | {} | {h:.1} | {} | {} | {:.1} |\n",
                if matches!(name, DASHMAP | QUICK_CACHE) {
                    "none"
                } else {
                    "300 s"
                },
                r["count"],
                moka.map_or("n/a".into(), |m| format!("{:.2}", h / m)),
                ebb.map_or("n/a".into(), |e| format!("{:.2}", h / e)),
                f(r, "rss_per_entry"),
            ));
        }
        if let (Some(e), Some(m)) = (ebb, moka) {
            verdicts.push(format!(
                "N = {n}: ebb ÷ moka future heap = {:.2} (target ≤ 0.40: {})",
                e / m,
                verdict(e / m <= 0.4)
            ));
        }
        if let (Some(e), Some(m)) = (heap_of(EBB_BOUNDED), heap_of(MOKA_FUTURE_BOUNDED)) {
            verdicts.push(format!(
                "N = {n}, with a capacity: ebb ÷ moka future heap = {:.2} (target ≤ 0.50: {})",
                e / m,
                verdict(e / m <= 0.5)
            ));
        }
    }
    s.push_str(&format!("\n{}\n\n", verdicts.join("; ")));
    s
}

// ---------------------------------------------------------------------------------------
// idle

/// When the process's workload clock started; removal times are measured from it.
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn since_epoch_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Counts expiry notifications and remembers when the last one came.
#[derive(Default)]
struct Removals {
    expired: AtomicU64,
    other: AtomicU64,
    last_ns: AtomicU64,
}

impl Removals {
    fn record(&self, expired: bool) {
        if expired {
            self.expired.fetch_add(1, Ordering::Relaxed);
        } else {
            self.other.fetch_add(1, Ordering::Relaxed);
        }
        self.last_ns.fetch_max(since_epoch_ns(), Ordering::Relaxed);
    }
}

fn idle(name: &str) -> Value {
    let rt = runtime();
    EPOCH.get_or_init(Instant::now);
    let removals = Arc::new(Removals::default());
    let rss_before = rss();
    let fill_start = since_epoch_ns();
    // Build and fill; then make no call at all for IDLE_WAIT, then read the count once.
    let (count, listener, fill_end) = rt.block_on(async {
        let r = Arc::clone(&removals);
        match name {
            EBB => {
                let c: ebb_cache::Cache<u64, u64> = ebb_cache::Cache::builder()
                    .time_to_live(IDLE_TTL)
                    .tick(TICK)
                    .eviction_listener(move |_, _, cause| {
                        r.record(cause == ebb_cache::RemovalCause::Expired)
                    })
                    .build();
                (0..IDLE_ENTRIES).for_each(|k| c.insert(k, k));
                let fill_end = since_epoch_ns();
                tokio::time::sleep(IDLE_WAIT).await;
                (Some(c.entry_count()), true, fill_end)
            }
            MOKA_FUTURE => {
                let c: moka::future::Cache<u64, u64> = moka::future::Cache::builder()
                    .time_to_live(IDLE_TTL)
                    .eviction_listener(move |_, _, cause| {
                        r.record(cause == moka::notification::RemovalCause::Expired)
                    })
                    .build();
                for k in 0..IDLE_ENTRIES {
                    c.insert(k, k).await;
                }
                let fill_end = since_epoch_ns();
                tokio::time::sleep(IDLE_WAIT).await;
                (Some(c.entry_count()), true, fill_end)
            }
            MOKA_SYNC => {
                let c: moka::sync::Cache<u64, u64> = moka::sync::Cache::builder()
                    .time_to_live(IDLE_TTL)
                    .eviction_listener(move |_, _, cause| {
                        r.record(cause == moka::notification::RemovalCause::Expired)
                    })
                    .build();
                (0..IDLE_ENTRIES).for_each(|k| c.insert(k, k));
                let fill_end = since_epoch_ns();
                tokio::time::sleep(IDLE_WAIT).await;
                (Some(c.entry_count()), true, fill_end)
            }
            MINI_MOKA => {
                let c: mini_moka::sync::Cache<u64, u64> = mini_moka::sync::Cache::builder()
                    .time_to_live(IDLE_TTL)
                    .build();
                (0..IDLE_ENTRIES).for_each(|k| c.insert(k, k));
                let fill_end = since_epoch_ns();
                tokio::time::sleep(IDLE_WAIT).await;
                (Some(c.entry_count()), false, fill_end)
            }
            QUICK_CACHE => {
                // No TTL: it can only hold every entry.
                let c: quick_cache::sync::Cache<u64, u64> =
                    quick_cache::sync::Cache::new(2 * IDLE_ENTRIES as usize);
                (0..IDLE_ENTRIES).for_each(|k| c.insert(k, k));
                let fill_end = since_epoch_ns();
                tokio::time::sleep(IDLE_WAIT).await;
                (Some(c.len() as u64), false, fill_end)
            }
            other => unreachable!("idle: {other}"),
        }
    });
    let rss_after = rss();
    let last = removals.last_ns.load(Ordering::Relaxed);
    json!({
        "impl": name,
        "entries": IDLE_ENTRIES,
        "count": count,
        "listener": listener,
        "expired_notified": removals.expired.load(Ordering::Relaxed),
        "other_notified": removals.other.load(Ordering::Relaxed),
        "fill_ms": (fill_end - fill_start) as f64 / 1e6,
        "last_after_fill_end_ms": if last > 0 { Some((last - fill_end) as f64 / 1e6) } else { None },
        "rss_before": rss_before,
        "rss_after": rss_after,
    })
}

fn idle_table(rows: &[Value]) -> String {
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let mut s = format!(
        "### idle ({IDLE_ENTRIES} entries, TTL 1 s, then no calls for 3 s; ebb tick 100 ms)\n\n\
         | implementation | entries reported after 3 s | expiry notifications | last \
         notification after fill end | fill time | RSS before fill | RSS after idle |\n\
         |---|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let name = r["impl"].as_str().unwrap_or("?");
        let no_ttl = name == QUICK_CACHE;
        s.push_str(&format!(
            "| {name} | {}{} | {} | {} | {:.0} ms | {} | {} |\n",
            r["count"],
            if no_ttl { " (no TTL)" } else { "" },
            if r["listener"].as_bool() == Some(true) {
                r["expired_notified"].to_string()
            } else {
                "n/a".to_string()
            },
            r["last_after_fill_end_ms"]
                .as_f64()
                .map_or("none".into(), |ms| format!("{ms:.0} ms")),
            f(r, "fill_ms"),
            bytes(f(r, "rss_before")),
            bytes(f(r, "rss_after")),
        ));
    }
    if let Some(e) = rows.iter().find(|r| r["impl"] == EBB) {
        let removed = e["count"].as_u64() == Some(0);
        let notified = e["expired_notified"].as_u64() == Some(IDLE_ENTRIES);
        let bound_ms = (IDLE_TTL + TICK).as_secs_f64() * 1e3;
        let in_time = e["last_after_fill_end_ms"]
            .as_f64()
            .is_some_and(|ms| ms <= bound_ms);
        s.push_str(&format!(
            "\nebb: every entry removed ({}), every entry notified as expired ({}), last \
             notification within TTL + one tick = {bound_ms:.0} ms of the fill's end ({}): \
             target {}\n",
            verdict(removed),
            verdict(notified),
            verdict(in_time),
            verdict(removed && notified && in_time),
        ));
    }
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------------------
// expiry

/// One implementation under `expiry`: its count, and the call a peer gets once per tick.
trait Expiring {
    fn count(&self) -> u64;
    fn maintain(&self, rt: &Runtime);
}

impl Expiring for ebb_cache::Cache<u64, u64> {
    fn count(&self) -> u64 {
        self.entry_count()
    }
    fn maintain(&self, _: &Runtime) {}
}

impl Expiring for moka::future::Cache<u64, u64> {
    fn count(&self) -> u64 {
        self.entry_count()
    }
    fn maintain(&self, rt: &Runtime) {
        rt.block_on(self.run_pending_tasks());
    }
}

impl Expiring for moka::sync::Cache<u64, u64> {
    fn count(&self) -> u64 {
        self.entry_count()
    }
    fn maintain(&self, _: &Runtime) {
        self.run_pending_tasks();
    }
}

impl Expiring for mini_moka::sync::Cache<u64, u64> {
    fn count(&self) -> u64 {
        self.entry_count()
    }
    /// mini-moka has no public maintenance call: its housekeeping runs inside reads and
    /// writes, so one `get` of an absent key per tick stands in for it.
    fn maintain(&self, _: &Runtime) {
        black_box(self.get(&u64::MAX));
    }
}

/// `fill_only`: the same fill with a TTL that does not run out (300 s), and no drain: the
/// CPU a fill costs without expiry, subtracted from the real run's fill + drain.
fn expiry(name: &str, fill_only: bool) -> Value {
    let ttl = if fill_only { MEMORY_TTL } else { EXPIRY_TTL };
    let drain = |name: &str,
                 rt: &Runtime,
                 c: &dyn Expiring,
                 cpu0: (Duration, Duration),
                 t0: Instant| {
        if fill_only {
            let cpu1 = cpu_sched();
            json!({
                "impl": name,
                "fill_ms": t0.elapsed().as_secs_f64() * 1e3,
                "fill_cpu_ns_per_entry": (cpu1 - cpu0.1).as_nanos() as f64 / EXPIRY_ENTRIES as f64,
                "count": c.count(),
            })
        } else {
            drain(name, rt, c, cpu0, t0)
        }
    };
    let rt = runtime();
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    let cpu0 = (cpu_stat(), cpu_sched());
    let t0 = Instant::now();
    match name {
        EBB => {
            let c: ebb_cache::Cache<u64, u64> = ebb_cache::Cache::builder()
                .time_to_live(ttl)
                .tick(TICK)
                .build_on(rt.handle());
            (0..EXPIRY_ENTRIES).for_each(|k| c.insert(k, k));
            drain(name, &rt, &c, cpu0, t0)
        }
        MOKA_FUTURE => {
            let c: moka::future::Cache<u64, u64> =
                moka::future::Cache::builder().time_to_live(ttl).build();
            rt.block_on(async {
                for k in 0..EXPIRY_ENTRIES {
                    c.insert(k, k).await;
                }
            });
            drain(name, &rt, &c, cpu0, t0)
        }
        MOKA_SYNC => {
            let c: moka::sync::Cache<u64, u64> =
                moka::sync::Cache::builder().time_to_live(ttl).build();
            (0..EXPIRY_ENTRIES).for_each(|k| c.insert(k, k));
            drain(name, &rt, &c, cpu0, t0)
        }
        MINI_MOKA => {
            let c: mini_moka::sync::Cache<u64, u64> =
                mini_moka::sync::Cache::builder().time_to_live(ttl).build();
            (0..EXPIRY_ENTRIES).for_each(|k| c.insert(k, k));
            drain(name, &rt, &c, cpu0, t0)
        }
        other => unreachable!("expiry: {other}"),
    }
}

/// From the end of filling: every tick, give the cache its maintenance call; check its
/// count every 10 ms (a plain read) until it reports 0, or `EXPIRY_CAP` passes.
fn drain(
    name: &str,
    rt: &Runtime,
    cache: &dyn Expiring,
    cpu0: (Duration, Duration),
    t0: Instant,
) -> Value {
    let fill = t0.elapsed();
    let cpu1 = (cpu_stat(), cpu_sched());
    let count_at_fill_end = cache.count();
    let start = Instant::now();
    let mut next_tick = start + TICK;
    let mut maintenance_calls = 0u64;
    let reached_zero = loop {
        if cache.count() == 0 {
            break true;
        }
        if start.elapsed() >= EXPIRY_CAP {
            break false;
        }
        let now = Instant::now();
        if now >= next_tick {
            cache.maintain(rt);
            maintenance_calls += 1;
            next_tick += TICK;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall = start.elapsed();
    let cpu2 = (cpu_stat(), cpu_sched());
    let per_entry = |d: Duration| d.as_nanos() as f64 / EXPIRY_ENTRIES as f64;
    json!({
        "impl": name,
        "entries": EXPIRY_ENTRIES,
        "reached_zero": reached_zero,
        "count_at_fill_end": count_at_fill_end,
        "count_at_end": cache.count(),
        "fill_ms": fill.as_secs_f64() * 1e3,
        "fill_cpu_ns_per_entry": per_entry(cpu1.1 - cpu0.1),
        "wall_ms": wall.as_secs_f64() * 1e3,
        "maintenance_calls": maintenance_calls,
        "cpu_ns_per_entry": per_entry(cpu2.1 - cpu1.1),
        "cpu_ns_per_remaining_entry": (cpu2.1 - cpu1.1).as_nanos() as f64
            / count_at_fill_end.max(1) as f64,
        "cpu_stat_ns_per_entry": per_entry(cpu2.0.saturating_sub(cpu1.0)),
        "total_cpu_ns_per_entry": per_entry(cpu2.1 - cpu0.1),
    })
}

fn expiry_table(rows: &[Value]) -> String {
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    // CPU spent on expiry: the run's fill + drain less the same fill with a TTL that never
    // runs out.
    let expiry_cpu =
        |r: &Value| f(r, "total_cpu_ns_per_entry") - f(r, "fill_only_cpu_ns_per_entry");
    let moka = rows.iter().find(|r| r["impl"] == MOKA_FUTURE);
    let over_moka = |x: f64, of: &dyn Fn(&Value) -> f64| {
        moka.map_or("n/a".into(), |m| format!("{:.2}", x / of(m)))
    };
    let total = |r: &Value| f(r, "total_cpu_ns_per_entry");
    let mut s = format!(
        "### expiry ({EXPIRY_ENTRIES} entries, TTL 200 ms; ebb tick 100 ms; peers' maintenance \
         call once per 100 ms)\n\n\
         | implementation | fill | left at fill end | wall, fill end → 0 entries | maintenance \
         calls | CPU ns per entry left, fill end → 0 | CPU ns/entry, fill + drain | ÷ moka \
         future | same fill, no expiry | expiry CPU ns/entry | ÷ moka future |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let zero = r["reached_zero"].as_bool() == Some(true);
        s.push_str(&format!(
            "| {} | {:.0} ms | {} | {} | {} | {:.0} | {:.0} | {} | {:.0} | {} | {} |\n",
            r["impl"].as_str().unwrap_or("?"),
            f(r, "fill_ms"),
            r["count_at_fill_end"],
            if zero {
                format!("{:.0} ms", f(r, "wall_ms"))
            } else {
                format!(
                    "not in {} s ({} left)",
                    EXPIRY_CAP.as_secs(),
                    r["count_at_end"]
                )
            },
            r["maintenance_calls"],
            f(r, "cpu_ns_per_remaining_entry"),
            total(r),
            over_moka(total(r), &total),
            f(r, "fill_only_cpu_ns_per_entry"),
            if zero {
                format!("{:.0}", expiry_cpu(r))
            } else {
                "n/a (never reached 0)".to_string()
            },
            if zero {
                over_moka(expiry_cpu(r), &expiry_cpu)
            } else {
                "n/a".to_string()
            },
        ));
    }
    if let (Some(e), Some(m)) = (rows.iter().find(|r| r["impl"] == EBB), moka) {
        let t = total(e) / total(m);
        let x = expiry_cpu(e) / expiry_cpu(m);
        s.push_str(&format!(
            "\nebb ÷ moka future: total CPU per entry (fill + drain, all threads) = {t:.2} \
             (target ≤ 0.20: {}); expiry CPU per entry (less the fill's own cost) = {x:.2} \
             (target ≤ 0.20: {})\n",
            verdict(t <= 0.2),
            verdict(x <= 0.2),
        ));
    }
    s.push_str(
        "\nCPU is the sum of every live thread's on-CPU time (/proc/self/task/*/schedstat, ns), \
         from just before the cache is built. A peer's inserts also run its housekeeping, so \
         much of its expiry happens during the fill: compare the fill + drain columns.\n\n",
    );
    s
}

// ---------------------------------------------------------------------------------------

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "missed"
    }
}

fn bytes(b: f64) -> String {
    if b.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b.abs() >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn bytes_signed(b: f64) -> String {
    if b >= 0.0 {
        format!("+{}", bytes(b))
    } else {
        format!("−{}", bytes(-b))
    }
}
