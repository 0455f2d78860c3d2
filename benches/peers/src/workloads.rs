//! Process-level workloads: `per-request`, `memory`, `idle` and `expiry`.
//!
//! `ebb-peers WORKLOAD` runs `ebb-peers WORKLOAD IMPL [N]` as a child process for every
//! implementation (and every N), reads the JSON line each child prints last, and prints a
//! Markdown table. Each measurement thus starts from a fresh process: no heap, RSS or threads
//! left over from another implementation.
//!
//! `per-request` also has two probes, `ebb-peers per-request IMPL pinned|no-task` (ebb and
//! floor): the bytes a cycle leaves allocated until its task runs, and the cycle with no
//! runtime and no task. `ebb-peers per-request-rounds [ROUNDS]` runs ebb, floor and moka
//! future and those probes in fresh processes, round after round, and pairs them.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::runtime::Runtime;

use crate::alloc::{
    calls, live_bytes, peak_bytes, reset_peak, trace_read, trace_start, trace_stop, Traced,
};
use crate::floor::Floor;
use crate::names::{
    DASHMAP, EBB, EBB_BOUNDED, EBB_STRING, FLOOR, MINI_MOKA, MOKA_FUTURE, MOKA_FUTURE_BOUNDED,
    MOKA_FUTURE_STRING, MOKA_SYNC, QUICK_CACHE,
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
        "per-request" => &[EBB, FLOOR, MOKA_FUTURE, MOKA_SYNC, MINI_MOKA, QUICK_CACHE],
        "memory" => &[
            EBB,
            MOKA_FUTURE,
            EBB_BOUNDED,
            MOKA_FUTURE_BOUNDED,
            MOKA_SYNC,
            MINI_MOKA,
            DASHMAP,
            QUICK_CACHE,
            EBB_STRING,
            MOKA_FUTURE_STRING,
        ],
        "idle" => &[EBB, MOKA_FUTURE, MOKA_SYNC, MINI_MOKA, QUICK_CACHE],
        "expiry" => &[EBB, FLOOR, MOKA_FUTURE, MOKA_SYNC, MINI_MOKA],
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
            let result = match (workload, extra) {
                ("per-request", None) => per_request(name),
                ("per-request", Some("pinned")) => per_request_pinned(name),
                ("per-request", Some("no-task")) => per_request_no_task(name)?,
                ("per-request", Some(other)) => {
                    return Err(format!(
                        "per-request {name}: unknown mode {other:?}; `pinned` or `no-task`"
                    ))
                }
                (workload, _) => match workload {
                    "memory" => memory(name, n()?),
                    "idle" => idle(name),
                    "expiry" => expiry(name, extra == Some("fill-only")),
                    _ => unreachable!("checked by is_workload"),
                },
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

/// Minor page faults of the whole process so far (field 10 of /proc/self/stat): first
/// touches of memory the allocator took from the kernel.
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces; `rest`
    // starts at field 3 (state), so field 10 is its eighth.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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

/// How often the calling thread has gone to sleep (its voluntary context switches, from
/// /proc/thread-self/status): during a fill, each is a wait for a lock some other thread
/// held too long to spin through.
fn thread_sleeps() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
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

/// `per-request IMPL pinned`: cycles per batch.
const PINNED_CYCLES: u64 = 10_000;

/// Allocation calls per cycle between two `calls()` readings: `(alloc + alloc_zeroed,
/// realloc, bytes asked for)`.
fn per_cycle(before: (u64, u64, u64), after: (u64, u64, u64), n: u64) -> [f64; 3] {
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / n as f64;
    [
        per(before.0, after.0),
        per(before.1, after.1),
        per(before.2, after.2),
    ]
}

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
    let calls_before = calls();
    let faults_before = minor_faults();
    reset_peak();
    let (elapsed, alive_at_loop_end, faults_in_loop, settled, cpu_settled) = rt.block_on(async {
        tokio::spawn(async move {
            let (cpu0, start) = (cpu_sched(), Instant::now());
            let elapsed = cycles(&name_owned, CYCLES).await;
            let faults = minor_faults() - faults_before;
            // Tasks alive besides this one as the loop ends: the cycles' tasks that the other
            // worker has not run (to their end) yet.
            let metrics = tokio::runtime::Handle::current().metrics();
            let alive = metrics.num_alive_tasks();
            // Then until every cycle's task has run to its end (sleeping a millisecond at a
            // time, so that this worker runs its own queue too; bounded): what the loop left
            // for later counts too. (`yield_now` would leave a worker's buffer allocated
            // after the loop, which the heap figures would count.)
            let deadline = Instant::now() + Duration::from_secs(10);
            while metrics.num_alive_tasks() > 1 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let (settled, cpu) = (start.elapsed(), cpu_sched() - cpu0);
            (elapsed, alive.saturating_sub(1), faults, settled, cpu)
        })
        .await
        .expect("per-request task")
    });
    let heap_peak = peak_bytes();
    let tasks_after = settle_tasks(&rt, 0);
    // After the tasks have run: their own allocations count too.
    let [allocs, reallocs, allocated] = per_cycle(calls_before, calls(), CYCLES);
    let heap_after = live_bytes();
    let rss_after = rss();
    json!({
        "impl": name,
        "ns_per_cycle": elapsed.as_nanos() as f64 / CYCLES as f64,
        "ns_per_cycle_settled": settled.as_nanos() as f64 / CYCLES as f64,
        "cpu_ns_per_cycle_settled": cpu_settled.as_nanos() as f64 / CYCLES as f64,
        "counted": crate::alloc::counting(),
        "tasks_alive_at_loop_end": alive_at_loop_end,
        "minor_faults_per_cycle": faults_in_loop as f64 / CYCLES as f64,
        "tasks_after": tasks_after,
        "allocs_per_cycle": allocs,
        "reallocs_per_cycle": reallocs,
        "bytes_allocated_per_cycle": allocated,
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
        FLOOR => {
            for _ in 0..n {
                let cache = Floor::new(REQUEST_TTL);
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

/// Yield until the current runtime has no task alive (at most 100,000 yields); return how
/// many are left.
async fn run_pending() -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    for _ in 0..100_000 {
        if metrics.num_alive_tasks() == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    metrics.num_alive_tasks()
}

/// `per-request IMPL pinned`: the bytes a cycle leaves allocated until the runtime runs the
/// task it spawned. On a current-thread runtime, inside `block_on`, where no spawned task
/// runs until the `block_on` future yields: `PINNED_CYCLES` cycles without a yield, then live
/// bytes less those before, per cycle; then yield until every task has run, and read them
/// again. A first batch of the same size, whose tasks run too, warms the allocator and grows
/// the runtime's run queue to hold that many tasks, so that the queue's growth is not counted
/// in the second. Then one cycle traced (`alloc::trace_start`): the size of every allocation
/// it makes, which were still live as it ended, and which once its task had run.
fn per_request_pinned(name: &str) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        black_box(cycles(name, PINNED_CYCLES).await);
        let warm_left = run_pending().await;
        let before = live_bytes();
        let calls_before = calls();
        let faults_before = minor_faults();
        let elapsed = cycles(name, PINNED_CYCLES).await;
        let faults = minor_faults() - faults_before;
        let at_end = live_bytes();
        let [allocs, reallocs, allocated] = per_cycle(calls_before, calls(), PINNED_CYCLES);
        let pending = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        let left = run_pending().await;
        let after = live_bytes();
        // One cycle, traced; then its task run, still traced (this thread runs it).
        trace_start();
        black_box(cycles(name, 1).await);
        let (cycle, cycle_total) = trace_read();
        let traced_left = run_pending().await;
        let (ran, ran_total) = trace_stop();
        // `[size, live, align]`, in allocation order.
        let pairs = |t: &[Traced]| -> Vec<(usize, bool, usize)> {
            t.iter().map(|a| (a.size, !a.freed, a.align)).collect()
        };
        json!({
            "impl": name,
            "mode": "pinned",
            "counted": crate::alloc::counting(),
            "cycles": PINNED_CYCLES,
            "warm_tasks_left": warm_left,
            "ns_per_cycle_no_yield": elapsed.as_nanos() as f64 / PINNED_CYCLES as f64,
            "tasks_pending_at_end": pending,
            "minor_faults_per_cycle": faults as f64 / PINNED_CYCLES as f64,
            "pinned_bytes_per_cycle": (at_end - before) as f64 / PINNED_CYCLES as f64,
            "tasks_left_after_run": left,
            "bytes_left_per_cycle_after_run": (after - before) as f64 / PINNED_CYCLES as f64,
            "allocs_per_cycle": allocs,
            "reallocs_per_cycle": reallocs,
            "bytes_allocated_per_cycle": allocated,
            // The cycle's allocations, each with whether it was live as the cycle ended.
            "trace_cycle": pairs(&cycle),
            "trace_cycle_count": cycle_total,
            // The same allocations and those the task's run made after them, each with
            // whether it was live once the task had run.
            "trace_after_task_ran": pairs(&ran),
            "trace_count": ran_total,
            "trace_tasks_left": traced_left,
            // Sizes known here, to put names on the traced allocations.
            "size_of_tokio_sleep": std::mem::size_of::<tokio::time::Sleep>(),
            "size_of_tokio_interval": std::mem::size_of::<tokio::time::Interval>(),
            "floor_arc_bytes": crate::floor::arc_bytes(),
            "floor_task_future_bytes": crate::floor::task_future_bytes(),
        })
    })
}

/// `per-request IMPL no-task` (`ebb` and `floor`): the same cycles with no runtime at all,
/// on the process's main thread, so that the cache's task is never spawned: ebb built
/// outside any runtime (it starts no task there, and its writes find none to start it on),
/// floor with its task's future dropped unpolled. What the cycle costs without its task.
fn per_request_no_task(name: &str) -> Result<Value, String> {
    let run = |n: u64| -> Duration {
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
            FLOOR => {
                for _ in 0..n {
                    let (cache, task) = Floor::without_task(REQUEST_TTL);
                    drop(task);
                    cache.insert(black_box(1), black_box(2));
                    black_box(cache.get(black_box(&1)));
                }
            }
            other => unreachable!("per-request no-task: {other}"),
        }
        start.elapsed()
    };
    if !matches!(name, EBB | FLOOR) {
        return Err(format!(
            "per-request {name} no-task: only {EBB} and {FLOOR}"
        ));
    }
    black_box(run(100));
    let heap_before = live_bytes();
    let calls_before = calls();
    let faults_before = minor_faults();
    reset_peak();
    let elapsed = run(CYCLES);
    let faults = minor_faults() - faults_before;
    let [allocs, reallocs, allocated] = per_cycle(calls_before, calls(), CYCLES);
    let heap_peak = peak_bytes();
    let heap_after = live_bytes();
    Ok(json!({
        "impl": name,
        "mode": "no-task",
        "ns_per_cycle": elapsed.as_nanos() as f64 / CYCLES as f64,
        "counted": crate::alloc::counting(),
        "minor_faults_per_cycle": faults as f64 / CYCLES as f64,
        "allocs_per_cycle": allocs,
        "reallocs_per_cycle": reallocs,
        "bytes_allocated_per_cycle": allocated,
        "heap_before": heap_before,
        "heap_after": heap_after,
        "heap_peak": heap_peak,
    }))
}

fn per_request_table(rows: &[Value]) -> String {
    let get = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let time_of = |name: &str| {
        rows.iter()
            .find(|r| r["impl"] == name)
            .map(|r| get(r, "ns_per_cycle"))
    };
    let (ebb, floor, moka) = (time_of(EBB), time_of(FLOOR), time_of(MOKA_FUTURE));
    let mut s = format!(
        "### per-request ({CYCLES} cycles of build, insert, get, drop in one task on a \
         2-worker runtime)\n\n\
         | implementation | ns/cycle | time ÷ ebb | allocs/cycle | bytes allocated/cycle | \
         tasks alive at loop end | tasks alive after | heap after − before | \
         peak heap − before | RSS before | RSS after |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let ns = get(r, "ns_per_cycle");
        s.push_str(&format!(
            "| {} | {:.0} | {} | {:.2} | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            r["impl"].as_str().unwrap_or("?"),
            ns,
            ebb.map_or("n/a".into(), |e| format!("{:.2}", ns / e)),
            get(r, "allocs_per_cycle") + get(r, "reallocs_per_cycle"),
            get(r, "bytes_allocated_per_cycle"),
            r["tasks_alive_at_loop_end"],
            r["tasks_after"],
            bytes_signed(get(r, "heap_after") - get(r, "heap_before")),
            bytes_signed(get(r, "heap_peak") - get(r, "heap_before")),
            bytes(get(r, "rss_before")),
            bytes(get(r, "rss_after")),
        ));
    }
    s.push_str(
        "\nallocs/cycle: `alloc`, `alloc_zeroed` and `realloc` calls by every thread from the \
         loop's start until the tasks have settled, ÷ cycles; bytes: what they asked for (a \
         `realloc`'s new size).\n",
    );
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
    if let (Some(e), Some(f)) = (ebb, floor) {
        s.push_str(&format!(
            "ebb ÷ floor time per cycle = {:.2} (one run; `per-request-rounds` pairs them)\n",
            e / f
        ));
    }
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------------------
// expiry-rounds

/// The expiry target: ebb's total CPU per entry at most this share of moka future's.
const EXPIRY_TARGET: f64 = 0.2;

/// `ebb-peers expiry-rounds [ROUNDS]` (default 30): per round, `expiry IMPL` for ebb, floor
/// and moka future, each in a fresh child process, the order rotating from round to round.
/// Prints each round's total CPU per entry (fill and drain, every thread) and the ratios
/// within the round, then the medians over rounds of those ratios with their range, and how
/// many rounds put ebb and the floor at or under [`EXPIRY_TARGET`] of moka future's.
pub fn expiry_rounds(args: &[String]) -> Result<String, String> {
    let rounds = crate::rounds(args, 30)?;
    let mut rows = Vec::new();
    for round in 0..rounds {
        rows.push(rotating_round("expiry", round)?);
    }
    save("expiry-rounds", &rows)?;
    Ok(expiry_rounds_table(&rows))
}

fn expiry_rounds_table(rows: &[Value]) -> String {
    let cpu = |r: &Value, name: &str| {
        r[name]["total_cpu_ns_per_entry"]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let mut s = format!(
        "### expiry, alternating: ebb, floor, moka future ({} rounds of {EXPIRY_ENTRIES} entries, \
         TTL {} ms, each implementation in a fresh process, order rotating)\n\n\
         Total CPU per entry, ns (fill and drain, every thread).\n\n\
         | round | order | ebb | floor | moka future | ebb ÷ moka future | floor ÷ moka future \
         | ebb ÷ floor |\n|---:|---|---:|---:|---:|---:|---:|---:|\n",
        rows.len(),
        EXPIRY_TTL.as_millis(),
    );
    for r in rows {
        let order: Vec<&str> = r["order"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let (e, f, m) = (cpu(r, EBB), cpu(r, FLOOR), cpu(r, MOKA_FUTURE));
        s.push_str(&format!(
            "| {} | {} | {e:.0} | {f:.0} | {m:.0} | {:.3} | {:.3} | {:.3} |\n",
            r["round"],
            order.join(", "),
            e / m,
            f / m,
            e / f,
        ));
    }
    let ratio =
        |a: &str, b: &str| -> Vec<f64> { rows.iter().map(|r| cpu(r, a) / cpu(r, b)).collect() };
    let within = |v: &[f64]| v.iter().filter(|&&x| x <= EXPIRY_TARGET).count();
    let (em, fm, ef) = (
        ratio(EBB, MOKA_FUTURE),
        ratio(FLOOR, MOKA_FUTURE),
        ratio(EBB, FLOOR),
    );
    let cell = |v: &[f64]| {
        let (m, lo, hi) = spread(v);
        format!("{m:.3} [{lo:.3}, {hi:.3}]")
    };
    s.push_str(&format!(
        "\nMedian over rounds [least, greatest]: ebb ÷ moka future {} ({} of {} rounds at or \
         under {EXPIRY_TARGET}); floor ÷ moka future {} ({} of {}); ebb ÷ floor {}.\n",
        cell(&em),
        within(&em),
        rows.len(),
        cell(&fm),
        within(&fm),
        rows.len(),
        cell(&ef),
    ));
    s
}

// ---------------------------------------------------------------------------------------
// per-request-rounds

/// The implementations `per-request-rounds` alternates, in the first round's order.
const ROUND_IMPLS: [&str; 3] = [EBB, FLOOR, MOKA_FUTURE];

/// `ebb-peers per-request-rounds [ROUNDS]` (default 7): per round, `per-request IMPL` for
/// ebb, floor and moka future, each in a fresh child process, the order rotating from round
/// to round; then the `pinned` and `no-task` probes of ebb and floor, in a fresh process
/// each, ebb first in even rounds and floor first in odd ones. Prints each round's figures
/// and the medians over rounds of the ratios within a round (ebb ÷ floor, ebb ÷ moka future),
/// with their range.
pub fn per_request_rounds(args: &[String]) -> Result<String, String> {
    let rounds = crate::rounds(args, 7)?;
    let mut rows = Vec::new();
    for round in 0..rounds {
        let mut row = rotating_round("per-request", round)?;
        let mut probes = vec![
            (EBB, "pinned"),
            (FLOOR, "pinned"),
            (EBB, "no-task"),
            (FLOOR, "no-task"),
        ];
        if round % 2 == 1 {
            probes.swap(0, 1);
            probes.swap(2, 3);
        }
        for (name, mode) in probes {
            row[format!("{name}_{mode}")] = child("per-request", name, Some(mode.to_string()))?;
        }
        rows.push(row);
    }
    save("per-request-rounds", &rows)?;
    Ok(rounds_table(&rows))
}

/// Round `round` (from 0) of `workload` for each of [`ROUND_IMPLS`], each in a fresh child
/// process, the order rotated by one from round to round: `{round, order, <impl>: <its JSON>}`.
fn rotating_round(workload: &str, round: usize) -> Result<Value, String> {
    let mut order = ROUND_IMPLS.to_vec();
    order.rotate_left(round % ROUND_IMPLS.len());
    let mut row = json!({ "round": round + 1, "order": order });
    for name in &order {
        row[*name] = child(workload, name, None)?;
    }
    Ok(row)
}

/// `values`' median (mean of the middle two for an even count), least and greatest.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

fn rounds_table(rows: &[Value]) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let of = |r: &Value, name: &str, key: &str| f(&r[name][key]);
    let peak = |r: &Value, name: &str| of(r, name, "heap_peak") - of(r, name, "heap_before");
    let allocs =
        |r: &Value, name: &str| of(r, name, "allocs_per_cycle") + of(r, name, "reallocs_per_cycle");
    let mut s = format!(
        "### per-request, alternating: ebb, floor, moka future ({} rounds of {CYCLES} cycles, \
         each implementation in a fresh process, order rotating)\n\n{}\
         | round | order | ebb ns/cycle | floor | moka future | ebb ÷ floor | ebb ÷ moka | \
         peak heap − before: ebb | floor | ebb ÷ floor | tasks alive at loop end: ebb / floor \
         | pinned B/cycle (current-thread): ebb / floor | no task, ns/cycle: ebb / floor |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        rows.len(),
        if rows.iter().any(|r| r[EBB]["counted"] == false) {
            "`EBB_PEERS_UNCOUNTED` was set: only the times were measured (heap, allocation \
             and pinned figures below are not).\n\n"
        } else {
            ""
        },
    );
    for r in rows {
        let order: Vec<&str> = r["order"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {} | {:.1} | {} / {} | \
             {:.0} / {:.0} | {:.0} / {:.0} |\n",
            r["round"],
            order.join(", "),
            of(r, EBB, "ns_per_cycle"),
            of(r, FLOOR, "ns_per_cycle"),
            of(r, MOKA_FUTURE, "ns_per_cycle"),
            of(r, EBB, "ns_per_cycle") / of(r, FLOOR, "ns_per_cycle"),
            of(r, EBB, "ns_per_cycle") / of(r, MOKA_FUTURE, "ns_per_cycle"),
            bytes(peak(r, EBB)),
            bytes(peak(r, FLOOR)),
            peak(r, EBB) / peak(r, FLOOR),
            r[EBB]["tasks_alive_at_loop_end"],
            r[FLOOR]["tasks_alive_at_loop_end"],
            of(r, "ebb_pinned", "pinned_bytes_per_cycle"),
            of(r, "floor_pinned", "pinned_bytes_per_cycle"),
            of(r, "ebb_no-task", "ns_per_cycle"),
            of(r, "floor_no-task", "ns_per_cycle"),
        ));
    }
    let col = |g: &dyn Fn(&Value) -> f64| -> Vec<f64> { rows.iter().map(g).collect() };
    let cell = |g: &dyn Fn(&Value) -> f64, digits: usize| {
        let (m, lo, hi) = spread(&col(g));
        format!("{m:.digits$} [{lo:.digits$}, {hi:.digits$}]")
    };
    let ns = |name: &'static str| move |r: &Value| of(r, name, "ns_per_cycle");
    let probe = |name: &'static str, mode: &'static str, key: &'static str| {
        move |r: &Value| of(r, &format!("{name}_{mode}"), key)
    };
    let after = |name: &'static str| {
        move |r: &Value| of(r, name, "heap_after") - of(r, name, "heap_before")
    };
    s.push_str(
        "\nMedian over rounds [least, greatest].\n\n\
         | figure | ebb | floor | moka future |\n|---|---:|---:|---:|\n",
    );
    let mut line = |what: &str, cells: [String; 3]| {
        s.push_str(&format!(
            "| {what} | {} | {} | {} |\n",
            cells[0], cells[1], cells[2]
        ));
    };
    let na = || "n/a".to_string();
    let each = |g: &dyn Fn(&Value, &'static str) -> f64, digits: usize| -> [String; 3] {
        ROUND_IMPLS.map(|name| cell(&|r| g(r, name), digits))
    };
    line("ns/cycle", each(&|r, n| of(r, n, "ns_per_cycle"), 0));
    line(
        "ns/cycle until every cycle's task ran",
        each(&|r, n| of(r, n, "ns_per_cycle_settled"), 0),
    );
    line(
        "CPU ns/cycle until every cycle's task ran (all threads)",
        each(&|r, n| of(r, n, "cpu_ns_per_cycle_settled"), 0),
    );
    line(
        "peak heap − before, KiB",
        each(&|r, n| peak(r, n) / 1024.0, 1),
    );
    line(
        "peak heap − before ÷ cycles, B",
        each(&|r, n| peak(r, n) / CYCLES as f64, 1),
    );
    line(
        "tasks alive at loop end",
        each(&|r, n| of(r, n, "tasks_alive_at_loop_end"), 0),
    );
    line(
        "minor page faults/cycle in the loop",
        each(&|r, n| of(r, n, "minor_faults_per_cycle"), 3),
    );
    line("allocation calls/cycle", each(&allocs, 2));
    line(
        "of which realloc/cycle",
        each(&|r, n| of(r, n, "reallocs_per_cycle"), 3),
    );
    line(
        "bytes allocated/cycle",
        each(&|r, n| of(r, n, "bytes_allocated_per_cycle"), 0),
    );
    line(
        "tasks alive after (settled)",
        each(&|r, n| of(r, n, "tasks_after"), 0),
    );
    line(
        "heap after − before, B",
        [
            cell(&after(EBB), 0),
            cell(&after(FLOOR), 0),
            cell(&after(MOKA_FUTURE), 0),
        ],
    );
    line(
        "pinned B/cycle until the tasks run (current-thread, 10,000 cycles)",
        [
            cell(&probe(EBB, "pinned", "pinned_bytes_per_cycle"), 1),
            cell(&probe(FLOOR, "pinned", "pinned_bytes_per_cycle"), 1),
            na(),
        ],
    );
    line(
        "B/cycle left once those tasks ran",
        [
            cell(&probe(EBB, "pinned", "bytes_left_per_cycle_after_run"), 2),
            cell(&probe(FLOOR, "pinned", "bytes_left_per_cycle_after_run"), 2),
            na(),
        ],
    );
    line(
        "current-thread, tasks not run: ns/cycle",
        [
            cell(&probe(EBB, "pinned", "ns_per_cycle_no_yield"), 0),
            cell(&probe(FLOOR, "pinned", "ns_per_cycle_no_yield"), 0),
            na(),
        ],
    );
    line(
        "no runtime, no task: ns/cycle",
        [
            cell(&probe(EBB, "no-task", "ns_per_cycle"), 0),
            cell(&probe(FLOOR, "no-task", "ns_per_cycle"), 0),
            na(),
        ],
    );
    line(
        "no task: allocation calls/cycle",
        [
            cell(
                &|r| {
                    probe(EBB, "no-task", "allocs_per_cycle")(r)
                        + probe(EBB, "no-task", "reallocs_per_cycle")(r)
                },
                2,
            ),
            cell(
                &|r| {
                    probe(FLOOR, "no-task", "allocs_per_cycle")(r)
                        + probe(FLOOR, "no-task", "reallocs_per_cycle")(r)
                },
                2,
            ),
            na(),
        ],
    );
    line(
        "no task: bytes allocated/cycle",
        [
            cell(&probe(EBB, "no-task", "bytes_allocated_per_cycle"), 0),
            cell(&probe(FLOOR, "no-task", "bytes_allocated_per_cycle"), 0),
            na(),
        ],
    );
    line(
        "ns/cycle − no-task ns/cycle (same round): the task's share",
        [
            cell(
                &|r| ns(EBB)(r) - probe(EBB, "no-task", "ns_per_cycle")(r),
                0,
            ),
            cell(
                &|r| ns(FLOOR)(r) - probe(FLOOR, "no-task", "ns_per_cycle")(r),
                0,
            ),
            na(),
        ],
    );
    s.push_str(
        "\nPaired ratios: each round's ratio, then the median over rounds [least, greatest].\n\n\
         | ratio | median [range] |\n|---|---:|\n",
    );
    let mut ratio = |what: &str, g: &dyn Fn(&Value) -> f64| {
        s.push_str(&format!("| {what} | {} |\n", cell(g, 2)));
    };
    let task_share = |name: &'static str| {
        move |r: &Value| ns(name)(r) - probe(name, "no-task", "ns_per_cycle")(r)
    };
    ratio("ebb ÷ floor, time per cycle", &|r| {
        ns(EBB)(r) / ns(FLOOR)(r)
    });
    ratio("ebb ÷ floor, time per cycle until every task ran", &|r| {
        of(r, EBB, "ns_per_cycle_settled") / of(r, FLOOR, "ns_per_cycle_settled")
    });
    ratio("ebb ÷ floor, CPU per cycle until every task ran", &|r| {
        of(r, EBB, "cpu_ns_per_cycle_settled") / of(r, FLOOR, "cpu_ns_per_cycle_settled")
    });
    ratio("ebb ÷ moka future, time per cycle", &|r| {
        ns(EBB)(r) / ns(MOKA_FUTURE)(r)
    });
    ratio("floor ÷ moka future, time per cycle", &|r| {
        ns(FLOOR)(r) / ns(MOKA_FUTURE)(r)
    });
    ratio("ebb ÷ floor, peak heap − before", &|r| {
        peak(r, EBB) / peak(r, FLOOR)
    });
    ratio("ebb ÷ floor, allocation calls/cycle", &|r| {
        allocs(r, EBB) / allocs(r, FLOOR)
    });
    ratio("ebb ÷ floor, bytes allocated/cycle", &|r| {
        of(r, EBB, "bytes_allocated_per_cycle") / of(r, FLOOR, "bytes_allocated_per_cycle")
    });
    ratio("ebb ÷ floor, pinned bytes/cycle", &|r| {
        probe(EBB, "pinned", "pinned_bytes_per_cycle")(r)
            / probe(FLOOR, "pinned", "pinned_bytes_per_cycle")(r)
    });
    ratio(
        "ebb ÷ floor, current-thread time with tasks not run",
        &|r| {
            probe(EBB, "pinned", "ns_per_cycle_no_yield")(r)
                / probe(FLOOR, "pinned", "ns_per_cycle_no_yield")(r)
        },
    );
    ratio("ebb ÷ floor, no-task time", &|r| {
        probe(EBB, "no-task", "ns_per_cycle")(r) / probe(FLOOR, "no-task", "ns_per_cycle")(r)
    });
    ratio(
        "ebb ÷ floor, the task's share (time − no-task time)",
        &|r| task_share(EBB)(r) / task_share(FLOOR)(r),
    );
    // The traced cycle: allocation sizes, the same from round to round; the first round's.
    if let Some(r) = rows.first() {
        s.push_str(
            "\nOne cycle traced on a current-thread runtime (round 1): its allocations' sizes \
             in bytes, in order; `*`: still live as the cycle ended (pinned until its task \
             runs); `/128`: aligned to 128 bytes (an alignment above 16 is noted; glibc serves \
             those through `posix_memalign`); `+`: allocated by the task's run.\n\n",
        );
        let pairs = |v: &Value| -> Vec<(u64, bool, u64)> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| Some((p[0].as_u64()?, p[1].as_bool()?, p[2].as_u64()?)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let show = |&(n, _, align): &(u64, bool, u64)| {
            if align > 16 {
                format!("{n}/{align}")
            } else {
                n.to_string()
            }
        };
        for name in [EBB, FLOOR] {
            let p = &r[format!("{name}_pinned")];
            let cycle = pairs(&p["trace_cycle"]);
            let ran = pairs(&p["trace_after_task_ran"]);
            let total: u64 = cycle.iter().map(|c| c.0).sum();
            let live: u64 = cycle.iter().filter(|c| c.1).map(|c| c.0).sum();
            let mut listed: Vec<String> = cycle
                .iter()
                .map(|a| {
                    if a.1 {
                        format!("{}*", show(a))
                    } else {
                        show(a)
                    }
                })
                .collect();
            listed.extend(
                ran.iter()
                    .skip(cycle.len())
                    .map(|a| format!("+{}", show(a))),
            );
            let aligned = cycle.iter().filter(|a| a.2 > 16).count();
            let still: Vec<u64> = ran.iter().filter(|c| c.1).map(|c| c.0).collect();
            s.push_str(&format!(
                "- {name}: {} allocations ({aligned} over-aligned), {total} B, {live} B of them \
                 live at the cycle's end: {}; still live once the task ran: {}\n",
                cycle.len(),
                listed.join(", "),
                if still.is_empty() {
                    "none".to_string()
                } else {
                    format!("{still:?}")
                },
            ));
        }
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
                measure_moka(c, settle).await
            }
            EBB_STRING => measure!(
                {
                    let c: ebb_cache::Cache<String, u64> =
                        ebb_cache::Cache::builder().time_to_live(MEMORY_TTL).build();
                    (0..n).for_each(|k| c.insert(string_key(k), k));
                    c
                },
                |c: &ebb_cache::Cache<String, u64>| c.entry_count()
            ),
            MOKA_FUTURE_STRING => {
                let c: moka::future::Cache<String, u64> = moka::future::Cache::builder()
                    .time_to_live(MEMORY_TTL)
                    .build();
                for k in 0..n {
                    c.insert(string_key(k), k).await;
                }
                measure_moka(c, settle).await
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

/// `memory`'s reading of a filled moka future cache: heap, RSS and count once its pending
/// work has run before and after `settle`; the cache is dropped after.
async fn measure_moka<K>(c: moka::future::Cache<K, u64>, settle: Duration) -> (isize, u64, u64)
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    c.run_pending_tasks().await;
    tokio::time::sleep(settle).await;
    c.run_pending_tasks().await;
    let out = (live_bytes(), rss(), c.entry_count());
    drop(black_box(c));
    out
}

/// A `memory` key of 24 bytes (`ebb_string`, `moka_future_string`): each its own heap
/// allocation, as a service's string keys are.
fn string_key(k: u64) -> String {
    format!("session:{k:016}")
}

fn memory_table(rows: &[Value]) -> String {
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let mut s = String::from(
        "### memory (N `u64 -> u64` entries, `String -> u64` with 24-byte keys for the \
         `_string` rows; TTL 300 s where the cache has one)\n\n\
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
        if let (Some(e), Some(m)) = (heap_of(EBB_STRING), heap_of(MOKA_FUTURE_STRING)) {
            verdicts.push(format!(
                "N = {n}, String keys: ebb ÷ moka future heap = {:.2}",
                e / m
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
    // The heap the cache holds once idle: live bytes after the wait, less those before it
    // was built, read while it is still alive.
    let heap_before = crate::alloc::live_bytes();
    let held = || crate::alloc::live_bytes() - heap_before;
    let fill_start = since_epoch_ns();
    // Build and fill; then make no call at all for IDLE_WAIT, then read the count once.
    let (count, listener, fill_end, heap_held) = rt.block_on(async {
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
                (Some(c.entry_count()), true, fill_end, held())
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
                (Some(c.entry_count()), true, fill_end, held())
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
                (Some(c.entry_count()), true, fill_end, held())
            }
            MINI_MOKA => {
                let c: mini_moka::sync::Cache<u64, u64> = mini_moka::sync::Cache::builder()
                    .time_to_live(IDLE_TTL)
                    .build();
                (0..IDLE_ENTRIES).for_each(|k| c.insert(k, k));
                let fill_end = since_epoch_ns();
                tokio::time::sleep(IDLE_WAIT).await;
                (Some(c.entry_count()), false, fill_end, held())
            }
            QUICK_CACHE => {
                // No TTL: it can only hold every entry.
                let c: quick_cache::sync::Cache<u64, u64> =
                    quick_cache::sync::Cache::new(2 * IDLE_ENTRIES as usize);
                (0..IDLE_ENTRIES).for_each(|k| c.insert(k, k));
                let fill_end = since_epoch_ns();
                tokio::time::sleep(IDLE_WAIT).await;
                (Some(c.len() as u64), false, fill_end, held())
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
        "heap_held": heap_held,
    })
}

fn idle_table(rows: &[Value]) -> String {
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let mut s = format!(
        "### idle ({IDLE_ENTRIES} entries, TTL 1 s, then no calls for 3 s; ebb tick 100 ms)\n\n\
         | implementation | entries reported after 3 s | expiry notifications | last \
         notification after fill end | fill time | RSS before fill | RSS after idle | heap \
         the cache holds after idle |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let name = r["impl"].as_str().unwrap_or("?");
        let no_ttl = name == QUICK_CACHE;
        s.push_str(&format!(
            "| {name} | {}{} | {} | {} | {:.0} ms | {} | {} | {} |\n",
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
            bytes(f(r, "heap_held")),
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

impl Expiring for crate::floor::ExpiryFloor {
    fn count(&self) -> u64 {
        self.len() as u64
    }
    fn maintain(&self, _: &Runtime) {
        self.remove_expired();
    }
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
                 cpu0: (Duration, Duration, u64),
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
    let cpu0 = (cpu_stat(), cpu_sched(), thread_sleeps());
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
        FLOOR => {
            let c = crate::floor::ExpiryFloor::new(ttl);
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
/// count every 10 ms (a plain read) until it reports 0, or `EXPIRY_CAP` passes. `cpu0`: the
/// process's CPU (`cpu_stat`, `cpu_sched`) and the filling thread's sleeps (`thread_sleeps`)
/// when the fill began.
fn drain(
    name: &str,
    rt: &Runtime,
    cache: &dyn Expiring,
    cpu0: (Duration, Duration, u64),
    t0: Instant,
) -> Value {
    let fill = t0.elapsed();
    let cpu1 = (cpu_stat(), cpu_sched());
    let fill_thread_sleeps = thread_sleeps().saturating_sub(cpu0.2);
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
        "fill_thread_sleeps": fill_thread_sleeps,
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
         | implementation | fill | filling thread slept | left at fill end | wall, fill end → \
         0 entries | maintenance calls | CPU ns per entry left, fill end → 0 | CPU ns/entry, \
         fill + drain | ÷ moka future | same fill, no expiry | expiry CPU ns/entry | ÷ moka \
         future |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let zero = r["reached_zero"].as_bool() == Some(true);
        s.push_str(&format!(
            "| {} | {:.0} ms | {} | {} | {} | {} | {:.0} | {:.0} | {} | {:.0} | {} | {} |\n",
            r["impl"].as_str().unwrap_or("?"),
            f(r, "fill_ms"),
            r["fill_thread_sleeps"],
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
        if let Some(fl) = rows.iter().find(|r| r["impl"] == FLOOR) {
            s.push_str(&format!(
                "floor (a DashMap, a clock read per write, a FIFO of deadlines removed by key):                  total CPU per entry ÷ moka future = {:.2}; ebb ÷ floor = {:.2}\n",
                total(fl) / total(m),
                total(e) / total(fl),
            ));
        }
    }
    s.push_str(
        "\nCPU is the sum of every live thread's on-CPU time (/proc/self/task/*/schedstat, ns), \
         from just before the cache is built. \"Filling thread slept\": its voluntary context \
         switches during the fill (/proc/thread-self/status), each a wait for a lock another \
         thread held too long to spin through. A peer's inserts also run its housekeeping, so \
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
