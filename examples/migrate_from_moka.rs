//! A small service's cache layer, ported from moka 0.12's `future::Cache` to ebb: read-through
//! loads, a counter kept with a compute, iteration, predicate invalidation, a per-entry
//! `Expiry`, a removal listener, and a weighted capacity.
//!
//! Run it with `cargo run --example migrate_from_moka`. The moka original is below, line for
//! line; the port changes little more than the imports, the `.await`s on plain methods (ebb's
//! reads and writes are not async), `Arc<K>` in listeners and iterators (ebb hands out `K`),
//! and one opt-in (`observes_reads`) on the `Expiry`:
//!
//! ```text
//! use moka::future::Cache;
//! use moka::Expiry;
//!
//! struct Sliding;
//! impl Expiry<String, Session> for Sliding {
//!     fn expire_after_create(&self, _: &String, s: &Session, _: Instant) -> Option<Duration> {
//!         Some(s.idle)
//!     }
//!     fn expire_after_read(&self, _: &String, s: &Session, _: Instant,
//!                          _: Option<Duration>, _: Instant) -> Option<Duration> {
//!         Some(s.idle)
//!     }
//! }
//!
//! let users: Cache<u64, Arc<User>> = Cache::builder()
//!     .max_capacity(64 * 1024)
//!     .weigher(|_, u: &Arc<User>| u.name.len() as u32 + 64)
//!     .eviction_listener(move |id: Arc<u64>, _, cause| log(*id, cause))
//!     .build();
//! let user = users.get_with(7, load_user(7)).await;
//! let hits: Cache<String, u64> = Cache::new(10_000);
//! hits.entry("/users/7".to_string())
//!     .and_upsert_with(|e| async move { e.map_or(1, |e| e.into_value() + 1) })
//!     .await;
//! let sessions: Cache<String, Session> = Cache::builder().expire_after(Sliding).build();
//! sessions.insert("s1".into(), session).await;
//! for (id, user) in users.iter() { ... }
//! users.invalidate_entries_if(|_, u| u.banned)?;   // needs .support_invalidation_closures()
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ebb_cache::{Cache, Expiry, RemovalCause};
use tokio::time::Instant;

#[derive(Debug)]
struct User {
    name: String,
    banned: bool,
}

#[derive(Debug, Clone)]
struct Session {
    user: u64,
    idle: Duration,
}

/// A sliding per-session lifetime: each session lives `idle` past its last use.
struct Sliding;

impl Expiry<String, Session> for Sliding {
    fn expire_after_create(&self, _: &String, s: &Session, _: Instant) -> Option<Duration> {
        Some(s.idle)
    }
    fn expire_after_read(
        &self,
        _: &String,
        s: &Session,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(s.idle)
    }
    // ebb asks `expire_after_read` only when the policy says it looks at reads.
    fn observes_reads(&self) -> bool {
        true
    }
}

/// The slow store the users come from.
async fn load_user(id: u64, loads: Arc<AtomicUsize>) -> Arc<User> {
    loads.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(5)).await;
    Arc::new(User {
        name: format!("user-{id}"),
        banned: id % 10 == 3,
    })
}

#[tokio::main]
async fn main() {
    let evicted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&evicted);
    let users: Cache<u64, Arc<User>> = Cache::builder()
        .name("users")
        .max_capacity(64 * 1024)
        .weigher(|_, u: &Arc<User>| u.name.len() as u32 + 64)
        .eviction_listener(move |_id: u64, _user, cause| {
            if cause == RemovalCause::Explicit {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build();

    // Read-through, single-flight: 20 concurrent requests for user 7 load it once.
    let loads = Arc::new(AtomicUsize::new(0));
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let (users, loads) = (users.clone(), Arc::clone(&loads));
            tokio::spawn(async move { users.get_with(7, load_user(7, loads)).await })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap().name, "user-7");
    }
    assert_eq!(loads.load(Ordering::Relaxed), 1);
    for id in 0..20 {
        users.get_with(id, load_user(id, Arc::clone(&loads))).await;
    }

    // A counter kept with a compute: no lock of our own, no lost increments.
    let hits: Cache<String, u64> = Cache::builder().max_capacity(10_000).build();
    for _ in 0..3 {
        hits.entry_by_ref("/users/7")
            .and_upsert_with(|e| async move { e.map_or(1, |e| e.into_value() + 1) })
            .await;
    }
    assert_eq!(hits.get("/users/7"), Some(3));

    // Per-entry sliding expiry.
    let sessions: Cache<String, Session> = Cache::builder()
        .tick(Duration::from_millis(10))
        .expire_after(Sliding)
        .build();
    let idle = Duration::from_secs(1);
    sessions.insert("s1".into(), Session { user: 7, idle });
    sessions.insert("s2".into(), Session { user: 8, idle });
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            sessions.get("s1").map(|s| s.user),
            Some(7),
            "kept alive by use"
        );
    }
    assert_eq!(
        sessions.get("s2").map(|s| s.user),
        None,
        "idle past its lifetime"
    );

    // Iteration, then predicate invalidation of the banned users.
    let banned = users.iter().filter(|(_, u)| u.banned).count();
    users.invalidate_entries_if(|_, u| u.banned);
    assert_eq!(users.iter().filter(|(_, u)| u.banned).count(), 0);
    // The expiry task removes them in the background and reports each once.
    let deadline = Instant::now() + Duration::from_secs(5);
    while evicted.load(Ordering::Relaxed) < banned {
        assert!(Instant::now() < deadline, "the sweep did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    println!(
        "users: {} cached ({} bytes by the weigher), {} banned ones invalidated; \
         /users/7 hit {} times; session s1 alive, s2 expired",
        users.entry_count(),
        users.weighted_size(),
        banned,
        hits.get("/users/7").unwrap_or(0)
    );
}
