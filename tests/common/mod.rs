//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
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

/// What the test source does on its n-th call (1-based).
#[derive(Clone, Copy)]
pub enum Act {
    /// Answer after this long.
    After(Duration),
    /// Fail after this long.
    Fail(Duration),
    /// Never answer.
    Hang,
    /// Panic.
    Panic,
}

/// A source that counts its calls and the calls running at once, and answers each key with
/// `key * 1000 + n` (n: that call's number), as `act(n)` says.
#[derive(Clone)]
pub struct Source {
    calls: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    act: Arc<dyn Fn(usize) -> Act + Send + Sync>,
}

pub type Loading = Pin<Box<dyn Future<Output = Result<u64, String>> + Send>>;

impl Source {
    pub fn new(act: impl Fn(usize) -> Act + Send + Sync + 'static) -> Self {
        Source {
            calls: Arc::default(),
            running: Arc::default(),
            most: Arc::default(),
            act: Arc::new(act),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn most_at_once(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }

    pub fn loader(&self) -> impl Fn(u64) -> Loading + Send + Sync + 'static {
        let source = self.clone();
        move |key| {
            let n = source.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let act = (source.act)(n);
            let (running, most) = (Arc::clone(&source.running), Arc::clone(&source.most));
            Box::pin(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                struct Done(Arc<AtomicUsize>);
                impl Drop for Done {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _done = Done(running);
                match act {
                    Act::After(d) => {
                        tokio::time::sleep(d).await;
                        Ok(key * 1000 + n as u64)
                    }
                    Act::Fail(d) => {
                        tokio::time::sleep(d).await;
                        Err(format!("source down (call {n})"))
                    }
                    Act::Hang => std::future::pending().await,
                    Act::Panic => panic!("the source panicked (call {n})"),
                }
            })
        }
    }
}
