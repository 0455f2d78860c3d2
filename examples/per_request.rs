//! The incident pattern, made harmless: a new cache for every simulated request, at about
//! 20,000 requests a second for a few seconds. Each cache spawns one expiry task, which ends
//! when the request drops its cache; alive tasks and RSS stay flat.
//!
//! Run with: `cargo run --release --example per_request`

use std::time::{Duration, Instant};

use ebb_cache::Cache;

const PER_SECOND: u64 = 20_000;
const SECONDS: u64 = 5;

/// A request handler that (wrongly, but harmlessly) builds its own cache.
async fn handle_request(id: u64) -> Option<String> {
    let cache: Cache<u64, String> = Cache::builder()
        .time_to_live(Duration::from_secs(30))
        .build();
    cache.insert(id, format!("response {id}"));
    cache.get(&id)
}

/// Resident set size in KiB, from /proc (Linux); `None` elsewhere.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() {
    let metrics = tokio::runtime::Handle::current().metrics();
    println!(
        "start: alive tasks {}, RSS {:?} KiB",
        metrics.num_alive_tasks(),
        rss_kib()
    );
    let start = Instant::now();
    let mut served = 0u64;
    for second in 1..=SECONDS {
        // Spread the second's requests over 100 batches of concurrent handlers.
        for batch in 0..100 {
            let handlers: Vec<_> = (0..PER_SECOND / 100)
                .map(|i| tokio::spawn(handle_request(second * PER_SECOND + batch * 1000 + i)))
                .collect();
            for h in handlers {
                assert!(h.await.unwrap().is_some());
                served += 1;
            }
            let due = Duration::from_millis(second * 1000 - 1000 + (batch + 1) * 10);
            tokio::time::sleep_until((start + due).into()).await;
        }
        println!(
            "t = {second} s: {served} requests served, alive tasks {}, RSS {:?} KiB",
            metrics.num_alive_tasks(),
            rss_kib()
        );
    }
}
