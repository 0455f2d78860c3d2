//! A slow database behind `get_with`: a burst of concurrent requests for the same user causes
//! one query; later requests are hits; different users load in parallel.
//!
//! Run with: `cargo run --example loader`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_cache::Cache;

/// A stand-in for a database that takes 50 ms a query and counts them.
#[derive(Default)]
struct Database {
    queries: AtomicUsize,
}

impl Database {
    async fn load_user(&self, id: u64) -> Arc<String> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        Arc::new(format!("user #{id}"))
    }
}

#[tokio::main]
async fn main() {
    let db = Arc::new(Database::default());
    let users: Cache<u64, Arc<String>> = Cache::builder()
        .name("users")
        .time_to_live(Duration::from_secs(60))
        .build();

    // 1,000 concurrent requests for user 42: one query.
    let start = Instant::now();
    let requests: Vec<_> = (0..1000)
        .map(|_| {
            let (users, db) = (users.clone(), Arc::clone(&db));
            tokio::spawn(async move {
                users
                    .get_with(42, async move { db.load_user(42).await })
                    .await
            })
        })
        .collect();
    for r in requests {
        assert_eq!(*r.await.unwrap(), "user #42");
    }
    println!(
        "1000 concurrent requests for user 42: {} query, {} ms",
        db.queries.load(Ordering::SeqCst),
        start.elapsed().as_millis()
    );

    // Later requests are hits.
    for _ in 0..1000 {
        users
            .get_with(42, async { unreachable!("a hit runs no loader") })
            .await;
    }
    println!(
        "1000 more requests: {} query in total",
        db.queries.load(Ordering::SeqCst)
    );

    // Different users load in parallel: 10 users, 10 queries, about 50 ms in all.
    let start = Instant::now();
    let requests: Vec<_> = (0..10)
        .map(|id| {
            let (users, db) = (users.clone(), Arc::clone(&db));
            tokio::spawn(async move {
                users
                    .get_with(id, async move { db.load_user(id).await })
                    .await
            })
        })
        .collect();
    for r in requests {
        r.await.unwrap();
    }
    println!(
        "10 different users: {} queries in total, {} ms",
        db.queries.load(Ordering::SeqCst),
        start.elapsed().as_millis()
    );
}
