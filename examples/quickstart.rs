//! Build a cache into app state, clone it into tasks, and watch an entry expire with no
//! calls at all.
//!
//! Run with: `cargo run --example quickstart`

use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_cache::Cache;

/// What a service keeps for its handlers.
#[derive(Clone)]
struct AppState {
    users: Cache<u64, Arc<String>>,
}

#[tokio::main]
async fn main() {
    let state = AppState {
        users: Cache::builder()
            .name("users")
            .time_to_live(Duration::from_secs(2))
            .tick(Duration::from_millis(100))
            .build(),
    };

    // Request handlers get clones of the state; every clone sees the same entries.
    let handlers: Vec<_> = (0..4u64)
        .map(|id| {
            let state = state.clone();
            tokio::spawn(async move {
                state.users.insert(id, Arc::new(format!("user-{id}")));
            })
        })
        .collect();
    for h in handlers {
        h.await.unwrap();
    }
    // One entry with a TTL of its own.
    state.users.insert_with_ttl(
        99,
        Arc::new("short-lived".into()),
        Duration::from_millis(500),
    );

    println!(
        "after insert: {} entries; user 2 = {:?}",
        state.users.entry_count(),
        state.users.get(&2)
    );

    // Nobody touches the cache from here on: the expiry task removes entries on time.
    let start = Instant::now();
    let mut last = u64::MAX;
    while state.users.entry_count() > 0 && start.elapsed() < Duration::from_secs(5) {
        let n = state.users.entry_count();
        if n != last {
            println!("t = {:>4} ms: {n} entries", start.elapsed().as_millis());
            last = n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "t = {:>4} ms: {} entries; user 2 = {:?}",
        start.elapsed().as_millis(),
        state.users.entry_count(),
        state.users.get(&2)
    );
    // Dropping the last handle ends the cache's task and frees its memory.
    drop(state);
}
