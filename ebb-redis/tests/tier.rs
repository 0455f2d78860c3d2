//! The tier against a real `redis-server` (one per test, see `common`): read-through, the
//! second replica, single flight, placeholders, fills racing writes and removals, writes
//! when Redis fails, invalidate_all, and the per-request lifecycle.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ebb_redis::redis::{self, AsyncCommands};
use ebb_redis::{Error, TieredCache, NOT_FOUND, TOMBSTONE_PREFIX};
use tokio::sync::{oneshot, Notify};

use common::{user, User};

/// Generous: the tests share two cores, and a read that times out would run the loader.
const SLACK: Duration = Duration::from_secs(2);
/// What a bounded wait allows for a condition that needs only a few round trips.
const WAIT: Duration = Duration::from_secs(10);

fn replica(server: &common::Server, namespace: &str) -> TieredCache<u64, User> {
    TieredCache::builder(namespace)
        .redis(server.url())
        .read_timeout(SLACK)
        .write_timeout(SLACK)
        .build()
}

async fn raw(admin: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    admin.get(key).await.unwrap()
}

async fn pttl(admin: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(admin)
        .await
        .unwrap()
}

/// A loader that counts its runs.
fn counted(
    count: &Arc<AtomicUsize>,
    value: User,
) -> impl std::future::Future<Output = Result<User, std::io::Error>> {
    let count = Arc::clone(count);
    async move {
        count.fetch_add(1, Ordering::SeqCst);
        Ok(value)
    }
}

#[tokio::test]
async fn read_through_fills_both_tiers_and_a_second_replica_hits_redis() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    // Coherence off: this test empties Redis behind L1's back (tests/coherence.rs has it on).
    let a = TieredCache::builder("users:v1")
        .redis(server.url())
        .read_timeout(SLACK)
        .write_timeout(SLACK)
        .coherence(false)
        .build();
    let loads = Arc::new(AtomicUsize::new(0));

    let got = a
        .try_get_with(7, counted(&loads, user(7, "ada")))
        .await
        .unwrap();
    assert_eq!(got, user(7, "ada"));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    // L2: JSON any service can read, with the remote TTL (600 s ± 5 %).
    let stored = raw(&mut admin, "users:v1:7")
        .await
        .expect("filled in Redis");
    assert_eq!(
        serde_json::from_slice::<User>(&stored).unwrap(),
        user(7, "ada")
    );
    let left = pttl(&mut admin, "users:v1:7").await;
    assert!((560_000..=630_000).contains(&left), "remote TTL {left} ms");
    // L1: served with Redis emptied behind its back, and no loader.
    let _: () = admin.del("users:v1:7").await.unwrap();
    assert_eq!(a.get_local(&7), Some(user(7, "ada")));
    let again = a
        .try_get_with(7, counted(&loads, user(7, "other")))
        .await
        .unwrap();
    assert_eq!(again, user(7, "ada"));
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    // A second replica, with its own connection: an L2 hit, no loader.
    let _: () = admin
        .set("users:v1:8", r#"{"id":8,"name":"bob"}"#)
        .await
        .unwrap();
    let b = replica(&server, "users:v1");
    let got = b
        .try_get_with(8, counted(&loads, user(8, "not this")))
        .await
        .unwrap();
    assert_eq!(got, user(8, "bob"));
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the second replica ran no loader"
    );
    assert_eq!(b.get_local(&8), Some(user(8, "bob")), "and filled its L1");
    let _ = a
        .try_get_with(8, counted(&loads, user(8, "not this")))
        .await
        .unwrap();
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    // Each replica has its own connection (plus the test's own).
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(clients.lines().count(), 3, "{clients}");
}

#[tokio::test]
async fn a_local_copy_never_outlives_what_redis_has_left() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let _: () = redis::cmd("SET")
        .arg("users:v1:1")
        .arg(r#"{"id":1,"name":"short"}"#)
        .arg("PX")
        .arg(300)
        .query_async(&mut admin)
        .await
        .unwrap();
    let tier = replica(&server, "users:v1");
    let loads = Arc::new(AtomicUsize::new(0));
    let got = tier
        .try_get_with(1, counted(&loads, user(1, "loaded")))
        .await
        .unwrap();
    assert_eq!(got, user(1, "short"));
    // The local TTL is 30 s, but Redis had 300 ms left: the L1 copy goes with it.
    assert!(
        common::eventually(WAIT, async || tier.get_local(&1).is_none()).await,
        "the L1 copy outlived Redis's"
    );
    assert_eq!(loads.load(Ordering::SeqCst), 0);
}

/// How many times Redis ran `command` since the last `CONFIG RESETSTAT`.
async fn calls(admin: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn an_l2_hit_is_a_plain_read_and_only_a_miss_reads_the_clock() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let writer = replica(&server, "users:v1");
    writer.insert(1, user(1, "ada")).await.unwrap();
    let reader = replica(&server, "users:v1");
    let loads = Arc::new(AtomicUsize::new(0));
    // A first miss loads both scripts (redis-rs sends `SCRIPT LOAD` on `NOSCRIPT`).
    reader.get_with(3, async { user(3, "warm") }).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut admin)
        .await
        .unwrap();
    // An L2 hit: PTTL and GET, no script. (Commands a script runs count too.)
    let got = reader
        .try_get_with(1, counted(&loads, user(1, "loaded")))
        .await
        .unwrap();
    assert_eq!(got, user(1, "ada"));
    assert_eq!(calls(&mut admin, "evalsha").await, 0);
    assert_eq!(calls(&mut admin, "time").await, 0);
    assert_eq!(calls(&mut admin, "pttl").await, 1);
    assert_eq!(calls(&mut admin, "get").await, 1);
    // A miss: the plain read, then the stamped read (a script) whose clock the fill uses.
    let got = reader
        .try_get_with(2, counted(&loads, user(2, "loaded")))
        .await
        .unwrap();
    assert_eq!(got, user(2, "loaded"));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    // PTTL: the hit's, the miss's plain read's, the stamped read's (inside its script).
    assert_eq!(calls(&mut admin, "pttl").await, 3);
    assert_eq!(
        calls(&mut admin, "time").await,
        2,
        "the stamped read's and the fill's"
    );
    assert_eq!(calls(&mut admin, "script").await, 0);
    let scripts = calls(&mut admin, "evalsha").await + calls(&mut admin, "eval").await;
    assert_eq!(scripts, 2, "the stamped read and the fill");
    assert!(raw(&mut admin, "users:v1:2").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_run_the_loader_once() {
    let Some(server) = common::server() else {
        return;
    };
    let tier = replica(&server, "users:v1");
    let loads = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (tier, loads, gate) = (tier.clone(), Arc::clone(&loads), Arc::clone(&gate));
        tasks.push(tokio::spawn(async move {
            tier.try_get_with(42, async move {
                loads.fetch_add(1, Ordering::SeqCst);
                gate.notified().await; // held until every caller is spawned
                Ok::<_, std::io::Error>(user(42, "once"))
            })
            .await
            .unwrap()
        }));
    }
    gate.notify_waiters();
    gate.notify_one(); // in case the loader was not yet waiting
    for task in tasks {
        assert_eq!(task.await.unwrap(), user(42, "once"));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn not_found_placeholders_stop_repeated_loads_and_expire() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let ttl = Duration::from_millis(400);
    let build = || {
        TieredCache::<u64, User>::builder("users:v1")
            .redis(server.url())
            .read_timeout(SLACK)
            .write_timeout(SLACK)
            .negative_ttl(ttl)
            .remote_ttl_jitter(0.0)
            .build()
    };
    let (a, b) = (build(), build());
    let loads = Arc::new(AtomicUsize::new(0));
    let nobody = |loads: &Arc<AtomicUsize>| {
        let loads = Arc::clone(loads);
        async move {
            loads.fetch_add(1, Ordering::SeqCst);
            None
        }
    };
    assert_eq!(a.optionally_get_with(9, nobody(&loads)).await, None);
    assert_eq!(
        raw(&mut admin, "users:v1:9").await.as_deref(),
        Some(NOT_FOUND)
    );
    assert!(pttl(&mut admin, "users:v1:9").await <= 400);
    // Again in this replica (L1) and in another (L2): no load.
    assert_eq!(a.optionally_get_with(9, nobody(&loads)).await, None);
    assert_eq!(b.optionally_get_with(9, nobody(&loads)).await, None);
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    // A loader that cannot say "not found" runs, and caches nothing over the placeholder.
    let got = a
        .try_get_with(9, counted(&loads, user(9, "exists?")))
        .await
        .unwrap();
    assert_eq!(got, user(9, "exists?"));
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    assert_eq!(
        raw(&mut admin, "users:v1:9").await.as_deref(),
        Some(NOT_FOUND)
    );
    // Once the placeholder expires, in both tiers, the key loads again.
    assert!(
        common::eventually(WAIT, async || {
            a.optionally_get_with(9, nobody(&loads)).await;
            loads.load(Ordering::SeqCst) == 3
        })
        .await,
        "the placeholder did not expire"
    );
}

/// A load, gated: it reports when it has started (after the tier's Redis read) and returns
/// `value` when released.
fn gated(
    value: User,
) -> (
    oneshot::Receiver<()>,
    oneshot::Sender<()>,
    impl std::future::Future<Output = Result<User, std::io::Error>>,
) {
    let (started_tx, started) = oneshot::channel();
    let (release, release_rx) = oneshot::channel::<()>();
    let load = async move {
        let _ = started_tx.send(());
        let _ = release_rx.await;
        Ok(value)
    };
    (started, release, load)
}

#[tokio::test]
async fn a_load_that_ends_after_a_remove_does_not_bring_the_old_value_back() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let (a, b) = (replica(&server, "users:v1"), replica(&server, "users:v1"));

    for remover in [&b, &a] {
        // `a` loads the old value; `remover` (another replica, then `a` itself) removes the key
        // meanwhile; the load ends after the removal.
        let (started, release, load) = gated(user(5, "old"));
        let loading = tokio::spawn({
            let a = a.clone();
            async move { a.try_get_with(5, load).await.unwrap() }
        });
        started.await.unwrap();
        remover.remove(&5).await.unwrap();
        release.send(()).unwrap();
        assert_eq!(
            loading.await.unwrap(),
            user(5, "old"),
            "its callers get their value"
        );
        let stored = raw(&mut admin, "users:v1:5").await.unwrap();
        assert!(
            stored.starts_with(TOMBSTONE_PREFIX),
            "Redis keeps the tombstone, not the old value"
        );
        assert_eq!(
            a.get_local(&5),
            None,
            "and the loading replica does not keep it"
        );
        // The next read loads the new value, and may fill over the (older) tombstone.
        let loads = Arc::new(AtomicUsize::new(0));
        let got = b
            .try_get_with(5, counted(&loads, user(5, "new")))
            .await
            .unwrap();
        assert_eq!(got, user(5, "new"));
        let stored = raw(&mut admin, "users:v1:5").await.unwrap();
        assert_eq!(
            serde_json::from_slice::<User>(&stored).unwrap(),
            user(5, "new")
        );
        b.remove(&5).await.unwrap();
        a.remove(&5).await.unwrap();
    }
}

#[tokio::test]
async fn a_load_that_ends_after_an_insert_does_not_overwrite_it() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let (a, b) = (replica(&server, "users:v1"), replica(&server, "users:v1"));
    let (started, release, load) = gated(user(6, "old"));
    let loading = tokio::spawn({
        let a = a.clone();
        async move { a.try_get_with(6, load).await.unwrap() }
    });
    started.await.unwrap();
    b.insert(6, user(6, "new")).await.unwrap();
    release.send(()).unwrap();
    assert_eq!(loading.await.unwrap(), user(6, "old"));
    let stored = raw(&mut admin, "users:v1:6").await.unwrap();
    assert_eq!(
        serde_json::from_slice::<User>(&stored).unwrap(),
        user(6, "new")
    );
    assert_eq!(a.get_local(&6), None);
    assert_eq!(
        b.get_local(&6),
        Some(user(6, "new")),
        "write-through into the writer's L1"
    );
    let loads = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        a.try_get_with(6, counted(&loads, user(6, "x")))
            .await
            .unwrap(),
        user(6, "new")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_load_that_outlives_the_tombstone_ttl_is_not_written() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let build = || {
        TieredCache::<u64, User>::builder("users:v1")
            .redis(server.url())
            .read_timeout(SLACK)
            .write_timeout(SLACK)
            .tombstone_ttl(Duration::from_millis(300))
            .build()
    };
    let (a, b) = (build(), build());
    let (started, release, load) = gated(user(4, "old"));
    let loading = tokio::spawn({
        let a = a.clone();
        async move { a.try_get_with(4, load).await.unwrap() }
    });
    started.await.unwrap();
    b.remove(&4).await.unwrap();
    // The tombstone expires while the load still runs.
    assert!(
        common::eventually(WAIT, async || raw(&mut admin, "users:v1:4").await.is_none()).await,
        "the tombstone did not expire"
    );
    release.send(()).unwrap();
    assert_eq!(loading.await.unwrap(), user(4, "old"));
    assert_eq!(
        raw(&mut admin, "users:v1:4").await,
        None,
        "a late fill is refused"
    );
    assert_eq!(a.get_local(&4), None);
}

#[tokio::test]
async fn insert_writes_through_and_remove_leaves_a_tombstone() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let (a, b) = (replica(&server, "users:v1"), replica(&server, "users:v1"));
    a.insert(3, user(3, "ada")).await.unwrap();
    assert_eq!(a.get_local(&3), Some(user(3, "ada")));
    let stored = raw(&mut admin, "users:v1:3").await.unwrap();
    assert_eq!(
        serde_json::from_slice::<User>(&stored).unwrap(),
        user(3, "ada")
    );
    let loads = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        b.try_get_with(3, counted(&loads, user(3, "x")))
            .await
            .unwrap(),
        user(3, "ada")
    );

    a.remove(&3).await.unwrap();
    assert_eq!(a.get_local(&3), None);
    let stored = raw(&mut admin, "users:v1:3").await.unwrap();
    assert!(stored.starts_with(TOMBSTONE_PREFIX));
    let left = pttl(&mut admin, "users:v1:3").await;
    assert!(left > 0 && left <= 10_000, "tombstone TTL {left} ms");
    // A tombstone reads as a miss (in a replica whose L1 does not hold the key).
    let c = replica(&server, "users:v1");
    assert_eq!(
        c.try_get_with(3, counted(&loads, user(3, "again")))
            .await
            .unwrap(),
        user(3, "again")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn reads_survive_a_dead_redis_writes_report_it_and_the_tier_reconnects() {
    let Some(mut server) = common::server() else {
        return;
    };
    let a = TieredCache::<u64, User>::builder("users:v1")
        .redis(server.url())
        .read_timeout(Duration::from_millis(300))
        .write_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .build();
    a.insert(1, user(1, "cached")).await.unwrap();
    server.shut_down();

    // A read of a cached key is an L1 hit; a miss runs the loader and is kept locally.
    let loads = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        a.try_get_with(1, counted(&loads, user(1, "x")))
            .await
            .unwrap(),
        user(1, "cached")
    );
    let started = tokio::time::Instant::now();
    assert_eq!(
        a.try_get_with(2, counted(&loads, user(2, "db")))
            .await
            .unwrap(),
        user(2, "db")
    );
    assert!(started.elapsed() < Duration::from_millis(300) * 2 + SLACK);
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(a.get_local(&2), Some(user(2, "db")));
    // Only the loader's own error reaches a caller.
    let failed = a
        .try_get_with(3, async {
            Err::<User, _>(std::io::Error::other("db down"))
        })
        .await
        .unwrap_err();
    assert_eq!(failed.to_string(), "db down");

    // A write fails, and drops the key from L1 rather than updating it.
    let error = a.insert(1, user(1, "new")).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::Redis {
                operation: "insert",
                ..
            } | Error::Timeout { .. }
        ),
        "{error:?}"
    );
    assert_eq!(a.get_local(&1), None);
    assert!(a.remove(&2).await.is_err());
    assert_eq!(a.get_local(&2), None);

    // A new server on the same port: the tier reconnects by itself.
    server.restart();
    assert!(
        common::eventually(WAIT, async || a.insert(1, user(1, "back")).await.is_ok()).await,
        "the tier did not reconnect"
    );
    let mut admin = server.admin().await;
    let stored = raw(&mut admin, "users:v1:1").await.unwrap();
    assert_eq!(
        serde_json::from_slice::<User>(&stored).unwrap(),
        user(1, "back")
    );
}

#[tokio::test]
async fn a_frozen_redis_costs_reads_their_timeout_and_writes_an_error() {
    let Some(server) = common::server() else {
        return;
    };
    let timeout = Duration::from_millis(200);
    let a = TieredCache::<u64, User>::builder("users:v1")
        .redis(server.url())
        .read_timeout(timeout)
        .write_timeout(timeout)
        .build();
    a.insert(1, user(1, "cached")).await.unwrap(); // connected
    server.pause();
    let loads = Arc::new(AtomicUsize::new(0));
    let started = tokio::time::Instant::now();
    assert_eq!(
        a.try_get_with(2, counted(&loads, user(2, "db")))
            .await
            .unwrap(),
        user(2, "db")
    );
    // The read's timeout, then the fill's (a write), plus a margin.
    assert!(
        started.elapsed() < timeout * 2 + SLACK,
        "{:?}",
        started.elapsed()
    );
    let started = tokio::time::Instant::now();
    let error = a.insert(1, user(1, "new")).await.unwrap_err();
    assert!(started.elapsed() < timeout + SLACK);
    assert!(
        matches!(error, Error::Timeout { operation: "insert", after } if after == timeout),
        "{error:?}"
    );
    assert_eq!(
        a.get_local(&1),
        None,
        "a write that may have happened drops the L1 copy"
    );
    server.resume();
    assert!(common::eventually(WAIT, async || a.insert(1, user(1, "again")).await.is_ok()).await);
}

#[tokio::test]
async fn invalidate_all_drops_the_namespace_in_batches_and_nothing_else() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let (a, b) = (replica(&server, "users:v1"), replica(&server, "users:v1"));
    for id in 0..1_200 {
        let _: () = admin
            .set(format!("users:v1:{id}"), r#"{"id":0,"name":"x"}"#)
            .await
            .unwrap();
    }
    let _: () = admin.set("users:v2:1", "other version").await.unwrap();
    let _: () = admin.set("orders:v1:1", "other namespace").await.unwrap();
    a.insert(7, user(7, "local")).await.unwrap();

    // A load in another replica that read Redis before the call.
    let (started, release, load) = gated(user(5000, "old"));
    let loading = tokio::spawn({
        let b = b.clone();
        async move { b.try_get_with(5000, load).await.unwrap() }
    });
    started.await.unwrap();

    a.invalidate_all().await.unwrap();
    assert_eq!(a.get_local(&7), None);
    let left: Vec<Vec<u8>> = admin.keys("users:v1:*").await.unwrap(); // the test's own check
    assert_eq!(
        left.len(),
        1,
        "only the invalidation record stays: {left:?}"
    );
    assert_eq!(
        raw(&mut admin, "users:v2:1").await.as_deref(),
        Some(&b"other version"[..])
    );
    assert_eq!(
        raw(&mut admin, "orders:v1:1").await.as_deref(),
        Some(&b"other namespace"[..])
    );

    release.send(()).unwrap();
    assert_eq!(loading.await.unwrap(), user(5000, "old"));
    assert_eq!(
        raw(&mut admin, "users:v1:5000").await,
        None,
        "a load that read before is not written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_and_dropped_a_thousand_times_leaves_no_client_and_no_task() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let clients = async |admin: &mut redis::aio::MultiplexedConnection| -> usize {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(admin)
            .await
            .unwrap();
        list.lines().count()
    };
    let metrics = tokio::runtime::Handle::current().metrics();
    let (clients_before, tasks_before) = (clients(&mut admin).await, metrics.num_alive_tasks());
    for id in 0..1_000_u64 {
        // As a handler that builds its cache per request would.
        let tier = replica(&server, "users:v1");
        let got = tier
            .try_get_with(id % 10, async move {
                Ok::<_, std::io::Error>(user(id % 10, "x"))
            })
            .await
            .unwrap();
        assert_eq!(got.id, id % 10);
        drop(tier);
    }
    assert!(
        common::eventually(WAIT, async || clients(&mut admin).await == clients_before).await,
        "connections left open: {} (before: {clients_before})",
        clients(&mut admin).await
    );
    assert!(
        common::eventually(WAIT, async || metrics.num_alive_tasks() == tasks_before).await,
        "tasks left alive: {} (before: {tasks_before})",
        metrics.num_alive_tasks()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writes_in_one_replica_never_leave_l1_disagreeing_with_redis() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let a = replica(&server, "users:v1");
    for round in 0..100_u64 {
        let writers: Vec<_> = (0..4_u64)
            .map(|w| {
                let a = a.clone();
                tokio::spawn(async move {
                    if w == 3 {
                        a.remove(&1).await.unwrap();
                    } else {
                        a.insert(1, user(round, &format!("writer {w}")))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let stored = raw(&mut admin, "users:v1:1").await.unwrap();
        if let Some(local) = a.get_local(&1) {
            let remote: User =
                serde_json::from_slice(&stored).expect("L1 holds a value, Redis a tombstone");
            assert_eq!(local, remote, "round {round}");
        }
    }
}

#[tokio::test]
async fn the_documented_acl_rules_are_enough() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    // The rules docs/redis.md gives, for a namespace `users:v1`.
    let rules = "on >secret resetkeys ~users:v1:* resetchannels -@all +get +set +pttl +time +unlink +scan +evalsha +script|load";
    let mut acl = redis::cmd("ACL");
    acl.arg("SETUSER").arg("ebb");
    for rule in rules.split(' ') {
        acl.arg(rule);
    }
    let _: () = acl.query_async(&mut admin).await.unwrap();
    let url = format!("redis://ebb:secret@127.0.0.1:{}", server.port);
    let tier = TieredCache::<u64, User>::builder("users:v1")
        .redis(url)
        .read_timeout(SLACK)
        .write_timeout(SLACK)
        .build();
    let got = tier
        .optionally_get_with(1, async { Some(user(1, "ada")) })
        .await;
    assert_eq!(got, Some(user(1, "ada")));
    assert!(
        raw(&mut admin, "users:v1:1").await.is_some(),
        "the fill was allowed"
    );
    tier.insert(2, user(2, "bob")).await.unwrap();
    tier.remove(&2).await.unwrap();
    tier.invalidate_all().await.unwrap();
    // The check that the rules do not allow more than the namespace.
    let other = TieredCache::<u64, User>::builder("orders:v1")
        .redis(format!("redis://ebb:secret@127.0.0.1:{}", server.port))
        .build();
    assert!(matches!(
        other.insert(1, user(1, "x")).await,
        Err(Error::Redis { .. })
    ));
}

#[tokio::test]
async fn string_keys_postcard_values_and_codec_rules() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let tier: TieredCache<String, (u64, String), ebb_redis::Postcard> =
        TieredCache::builder("pairs:v1")
            .redis(server.url())
            .codec(ebb_redis::Postcard)
            .read_timeout(SLACK)
            .write_timeout(SLACK)
            .build();
    tier.insert("a:b".to_string(), (7, "ada".into()))
        .await
        .unwrap();
    assert_eq!(
        raw(&mut admin, "pairs:v1:a:b").await.unwrap(),
        [0x01, 7, 3, b'a', b'd', b'a']
    );
    let other: TieredCache<String, (u64, String), ebb_redis::Postcard> =
        TieredCache::builder("pairs:v1")
            .redis(server.url())
            .codec(ebb_redis::Postcard)
            .build();
    let got = other
        .get_with("a:b".to_string(), async { unreachable!("an L2 hit") })
        .await;
    assert_eq!(got, (7, "ada".to_string()));

    // A value that does not decode is a miss: the loader runs and the caller gets its value.
    let _: () = admin.set("users:v1:1", "not json").await.unwrap();
    let users = replica(&server, "users:v1");
    let loads = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        users
            .try_get_with(1, counted(&loads, user(1, "db")))
            .await
            .unwrap(),
        user(1, "db")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    // A codec that writes the marker byte is refused before anything is written.
    struct Marker;
    impl ebb_redis::Codec<u8> for Marker {
        fn encode(&self, value: &u8) -> Result<Vec<u8>, ebb_redis::BoxError> {
            Ok(vec![0xFF, *value])
        }
        fn decode(&self, bytes: &[u8]) -> Result<u8, ebb_redis::BoxError> {
            Ok(bytes[1])
        }
    }
    let bad: TieredCache<u64, u8, Marker> = TieredCache::builder("bad:v1")
        .redis(server.url())
        .codec(Marker)
        .build();
    assert!(matches!(bad.insert(1, 1).await, Err(Error::Encode(_))));
    assert_eq!(raw(&mut admin, "bad:v1:1").await, None);
}

#[test]
fn bad_settings_are_reported_with_the_fix() {
    let no_redis = TieredCache::<u64, User>::builder("users:v1")
        .try_build()
        .unwrap_err();
    assert!(no_redis.to_string().contains(".redis("), "{no_redis}");
    let bad_url = TieredCache::<u64, User>::builder("users:v1")
        .redis("nope://x")
        .try_build()
        .unwrap_err();
    assert!(matches!(bad_url, Error::Config(_)), "{bad_url}");
    let zero = TieredCache::<u64, User>::builder("users:v1")
        .redis("redis://127.0.0.1:1")
        .local_ttl(Duration::ZERO)
        .try_build()
        .unwrap_err();
    assert!(zero.to_string().contains("local_ttl"), "{zero}");
    let empty = TieredCache::<u64, User>::builder("")
        .redis("redis://127.0.0.1:1")
        .try_build()
        .unwrap_err();
    assert!(empty.to_string().contains("namespace"), "{empty}");
    // Outside any runtime it builds, and connects on first use.
    assert!(TieredCache::<u64, User>::builder("users:v1")
        .redis("redis://127.0.0.1:1")
        .try_build()
        .is_ok());
}
