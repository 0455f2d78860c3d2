//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Let every ready task run (the expiry task included) on a current-thread runtime.
pub async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// Advance paused time by `d`, then let the runtime settle.
pub async fn advance(d: Duration) {
    tokio::time::advance(d).await;
    settle().await;
}

/// Poll `cond` until it holds, failing after `limit` of real time. For tests that cannot
/// pause time (multi-thread runtimes, lifecycle).
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The same, for a plain thread.
pub fn wait_until_blocking(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Alive tasks on the current runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// A value that counts how many of its kind are dropped.
#[derive(Debug)]
pub struct Counted {
    pub id: u64,
    drops: Arc<AtomicUsize>,
}

impl Counted {
    pub fn new(id: u64, drops: &Arc<AtomicUsize>) -> Arc<Self> {
        Arc::new(Counted {
            id,
            drops: Arc::clone(drops),
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// Every notification a listener received: `(key, value, cause)`.
pub type Log = Arc<std::sync::Mutex<Vec<(u64, u64, ebb_cache::RemovalCause)>>>;

/// Build `builder` with a listener that records every notification in the returned log.
pub fn logged(builder: ebb_cache::CacheBuilder<u64, u64>) -> (ebb_cache::Cache<u64, u64>, Log) {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let cache = builder
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build();
    (cache, log)
}

/// The notifications so far, emptying the log.
pub fn taken(log: &Log) -> Vec<(u64, u64, ebb_cache::RemovalCause)> {
    std::mem::take(&mut *log.lock().unwrap())
}

/// The message of a caught panic.
pub fn message(panic: Box<dyn std::any::Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(s) => *s,
        Err(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .unwrap_or_default(),
    }
}
