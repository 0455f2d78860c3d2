//! Faults, each against a `redis-server` of the test's own (see `common`): killed mid-run,
//! frozen (the breaker), restarted, started after the tier, full (`maxmemory` with
//! `noeviction`) or a read-only replica, and holding bytes that do not decode. Each test's
//! table row is in `docs/redis.md` ("Faults").

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ebb_redis::redis::{self, AsyncCommands};
use ebb_redis::{Error, TieredCache};

use common::User;

fn user(id: u64) -> User {
    common::user(id, &format!("user {id}"))
}

/// The margin a call may take past its timeouts on two shared cores.
const MARGIN: Duration = Duration::from_secs(1);
/// A bounded wait for a condition that needs a reconnect (backoff at most 2 s) and a probe.
const WAIT: Duration = Duration::from_secs(15);

fn tier(url: String, timeout: Duration) -> TieredCache<u64, User> {
    TieredCache::builder("users:v1")
        .redis(url)
        .read_timeout(timeout)
        .write_timeout(timeout)
        .connect_timeout(timeout)
        .breaker_cooldown(Duration::from_millis(300))
        .build()
}

/// A loader that counts its runs.
fn counted(
    count: &Arc<AtomicUsize>,
    id: u64,
) -> impl std::future::Future<Output = Result<User, std::io::Error>> {
    let count = Arc::clone(count);
    async move {
        count.fetch_add(1, Ordering::SeqCst);
        Ok(user(id))
    }
}

async fn raw(admin: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    admin.get(key).await.unwrap()
}

/// Until a miss of a fresh key is filled into Redis: the tier uses Redis again.
async fn uses_redis_again(tier: &TieredCache<u64, User>, server: &common::Server) -> bool {
    let mut admin = server.admin().await;
    let next = AtomicUsize::new(1_000_000);
    common::eventually(WAIT, async || {
        let id = next.fetch_add(1, Ordering::SeqCst) as u64;
        tier.get_with(id, async move { user(id) }).await;
        raw(&mut admin, &format!("users:v1:{id}")).await.is_some()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_run_every_request_succeeds_within_its_timeout() {
    let Some(mut server) = common::server() else {
        return;
    };
    let timeout = Duration::from_millis(200);
    let a = tier(server.url(), timeout);
    for id in 0..50 {
        a.insert(id, user(id)).await.unwrap();
    }
    let done = Arc::new(AtomicUsize::new(0));
    let loads = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (a, done, loads) = (a.clone(), Arc::clone(&done), Arc::clone(&loads));
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                for i in 0..400_u64 {
                    // Every other request a cached key (an L1 hit), else a fresh miss.
                    let id = if i % 2 == 0 { i % 50 } else { 1000 + i * 4 + w };
                    let started = tokio::time::Instant::now();
                    let got = a.try_get_with(id, counted(&loads, id)).await.unwrap();
                    slowest = slowest.max(started.elapsed());
                    assert_eq!(got, user(id));
                    done.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
                slowest
            })
        })
        .collect();
    assert!(common::eventually(WAIT, async || done.load(Ordering::SeqCst) >= 200).await);
    server.shut_down();
    let mut slowest = Duration::ZERO;
    for worker in workers {
        slowest = slowest.max(worker.await.unwrap());
    }
    // A miss: the read's timeout, the loader, the fill's timeout, at the very worst.
    assert!(slowest < timeout * 2 + MARGIN, "{slowest:?}");
    assert_eq!(done.load(Ordering::SeqCst), 1600);
    let stats = a.stats();
    assert!(stats.l1_hits > 0, "{stats:?}");
    assert!(stats.breaker_trips >= 1, "{stats:?}");
    assert!(
        stats.redis_connection_errors + stats.redis_timeouts + stats.redis_skipped > 0,
        "{stats:?}"
    );
    // Writes report the outage, and drop the key from L1.
    assert!(matches!(
        a.insert(1, user(1)).await,
        Err(Error::Redis { .. } | Error::Timeout { .. } | Error::Unavailable { .. })
    ));
    assert_eq!(a.get_local(&1), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_an_outage_loads_stay_single_flight_per_key_per_replica() {
    let Some(mut server) = common::server() else {
        return;
    };
    let a = tier(server.url(), Duration::from_millis(200));
    a.insert(0, user(0)).await.unwrap();
    server.shut_down();
    let loads = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (a, loads, gate) = (a.clone(), Arc::clone(&loads), Arc::clone(&gate));
            tokio::spawn(async move {
                a.get_with(1, async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.acquire().await; // held until every caller has joined
                    user(1)
                })
                .await
            })
        })
        .collect();
    assert!(common::eventually(WAIT, async || loads.load(Ordering::SeqCst) == 1).await);
    tokio::task::yield_now().await;
    gate.add_permits(1);
    for caller in callers {
        assert_eq!(caller.await.unwrap(), user(1));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_frozen_redis_opens_the_breaker_and_calls_stop_waiting() {
    let Some(server) = common::server() else {
        return;
    };
    let timeout = Duration::from_millis(200);
    let a = TieredCache::<u64, User>::builder("users:v1")
        .redis(server.url())
        .read_timeout(timeout)
        .write_timeout(timeout)
        .breaker_threshold(3)
        .breaker_cooldown(Duration::from_millis(500))
        .build();
    a.insert(1, user(1)).await.unwrap(); // connected
    server.pause();
    let loads = Arc::new(AtomicUsize::new(0));
    for id in 10..13 {
        let started = tokio::time::Instant::now();
        assert_eq!(
            a.try_get_with(id, counted(&loads, id)).await.unwrap(),
            user(id)
        );
        assert!(started.elapsed() < timeout + MARGIN);
    }
    let stats = a.stats();
    assert_eq!((stats.redis_timeouts, stats.breaker_trips), (3, 1));
    assert!(stats.breaker_open);
    // Open: misses go straight to the loader, writes fail at once, L1 hits are served.
    let started = tokio::time::Instant::now();
    for id in 20..30 {
        assert_eq!(
            a.try_get_with(id, counted(&loads, id)).await.unwrap(),
            user(id)
        );
    }
    assert!(
        started.elapsed() < timeout,
        "ten misses with the breaker open took {:?}",
        started.elapsed()
    );
    assert!(matches!(
        a.insert(1, user(1)).await,
        Err(Error::Unavailable {
            operation: "insert"
        })
    ));
    assert_eq!(a.get_local(&1), None, "a failed write drops the L1 copy");
    assert_eq!(
        a.get_with(20, async { unreachable!("an L1 hit") }).await,
        user(20)
    );
    assert_eq!(loads.load(Ordering::SeqCst), 13);
    assert!(a.stats().redis_skipped >= 11);

    // Thawed: after the cooldown a probe succeeds and the breaker closes.
    server.resume();
    assert!(
        uses_redis_again(&a, &server).await,
        "the breaker did not close"
    );
    let stats = a.stats();
    assert!(
        !stats.breaker_open && stats.breaker_closes >= 1,
        "{stats:?}"
    );
    // Timeouts that open the breaker also replace the connection (it may be dead silently).
    assert!(stats.connections >= 2, "{stats:?}");
    assert!(stats.breaker_probes >= 1, "{stats:?}");
    a.insert(1, user(1)).await.unwrap();
}

#[tokio::test]
async fn a_restarted_redis_is_used_again_without_restarting_the_tier() {
    let Some(mut server) = common::server() else {
        return;
    };
    let timeout = Duration::from_millis(200);
    let a = tier(server.url(), timeout);
    a.insert(1, user(1)).await.unwrap();
    server.shut_down();
    // Down: an L1 hit, a miss through the loader within the timeout.
    let loads = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        a.try_get_with(1, counted(&loads, 1)).await.unwrap(),
        user(1)
    );
    let started = tokio::time::Instant::now();
    assert_eq!(
        a.try_get_with(2, counted(&loads, 2)).await.unwrap(),
        user(2)
    );
    assert!(started.elapsed() < timeout + MARGIN);
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    // A new, empty server on the same port: the background reconnect finds it.
    server.restart();
    assert!(
        uses_redis_again(&a, &server).await,
        "the tier did not recover"
    );
    assert!(a.stats().connections >= 2, "{:?}", a.stats());
    a.insert(1, user(1)).await.unwrap();
    let b = tier(server.url(), timeout);
    assert_eq!(
        b.get_with(1, async { unreachable!("an L2 hit") }).await,
        user(1)
    );
}

#[tokio::test]
async fn a_tier_built_before_its_redis_starts_serves_the_loader_then_redis() {
    let port = common::free_port();
    let timeout = Duration::from_millis(200);
    let a = tier(format!("redis://127.0.0.1:{port}"), timeout);
    let loads = Arc::new(AtomicUsize::new(0));
    for id in 0..10 {
        let started = tokio::time::Instant::now();
        assert_eq!(
            a.try_get_with(id, counted(&loads, id)).await.unwrap(),
            user(id)
        );
        assert!(started.elapsed() < timeout + MARGIN);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 10);
    assert!(a.insert(1, user(1)).await.is_err());
    let Some(server) = common::server_on(port) else {
        return;
    };
    assert!(
        uses_redis_again(&a, &server).await,
        "the tier never connected"
    );
    let stats = a.stats();
    assert_eq!(stats.connections, 1, "{stats:?}");
    assert!(stats.connect_failures >= 1, "{stats:?}");
    a.insert(1, user(1)).await.unwrap();
}

/// Fill the server's memory with the test's own keys until it refuses a write.
async fn fill_memory(admin: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1mb")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(admin)
        .await
        .unwrap();
    let blob = vec![b'x'; 64 * 1024];
    for i in 0..64 {
        let set: Result<(), _> = admin.set(format!("filler:{i}"), &blob[..]).await;
        if let Err(error) = set {
            assert!(error.to_string().contains("OOM"), "{error}");
            return;
        }
    }
    panic!("a 1 MB Redis took 4 MB");
}

#[tokio::test]
async fn a_full_or_read_only_redis_fails_writes_cleanly_and_serves_reads() {
    let Some(server) = common::server() else {
        return;
    };
    let timeout = Duration::from_secs(2);
    let a = tier(server.url(), timeout);
    let b = tier(server.url(), timeout);
    a.insert(1, user(1)).await.unwrap();
    let mut admin = server.admin().await;
    fill_memory(&mut admin).await;

    for _ in 0..10 {
        let error = a.insert(2, user(2)).await.unwrap_err();
        assert!(
            matches!(&error, Error::Redis { operation: "insert", .. } if error.to_string().contains("OOM")),
            "{error:?}"
        );
        assert_eq!(a.get_local(&2), None);
    }
    assert!(matches!(a.remove(&1).await, Err(Error::Redis { .. })));
    assert_eq!(a.get_local(&1), None, "a failed removal drops the L1 copy");
    // Reads: an L2 hit, and a miss through the loader (its fill is refused: kept in L1).
    assert_eq!(
        b.get_with(1, async { unreachable!("an L2 hit") }).await,
        user(1)
    );
    assert_eq!(b.get_with(3, async { user(3) }).await, user(3));
    assert_eq!(b.get_local(&3), Some(user(3)));
    assert_eq!(raw(&mut admin, "users:v1:3").await, None);
    let stats = a.stats();
    assert!(stats.redis_refusals >= 11, "{stats:?}");
    assert_eq!(
        stats.breaker_trips, 0,
        "refusals are not outages: {stats:?}"
    );

    // A read-only replica (of a primary that is not there) refuses writes the same way.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut admin)
        .await
        .unwrap();
    a.insert(4, user(4)).await.unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(common::free_port())
        .query_async(&mut admin)
        .await
        .unwrap();
    let error = a.insert(4, user(5)).await.unwrap_err();
    assert!(
        matches!(&error, Error::Redis { operation: "insert", .. } if error.to_string().contains("read only")),
        "{error:?}"
    );
    assert_eq!(a.get_local(&4), None);
    assert_eq!(
        a.get_with(4, async { unreachable!("an L2 hit") }).await,
        user(4)
    );
    assert_eq!(a.stats().breaker_trips, 0);
}

#[tokio::test]
async fn garbage_under_a_key_is_a_counted_miss_and_is_replaced() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let a = tier(server.url(), Duration::from_secs(2));
    for garbage in [
        &b"not json"[..],
        &[0x00, 0x9F, 0x92][..],
        b"{\"id\":\"seven\"}",
    ] {
        let _: () = admin.set("users:v1:7", garbage).await.unwrap();
        let loads = Arc::new(AtomicUsize::new(0));
        let fresh = tier(server.url(), Duration::from_secs(2));
        assert_eq!(
            fresh.try_get_with(7, counted(&loads, 7)).await.unwrap(),
            user(7)
        );
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(fresh.stats().decode_errors, 1);
        let stored = raw(&mut admin, "users:v1:7").await.unwrap();
        assert_eq!(serde_json::from_slice::<User>(&stored).unwrap(), user(7));
        // Another replica now hits Redis.
        let other = tier(server.url(), Duration::from_secs(2));
        assert_eq!(
            other.get_with(7, async { unreachable!("an L2 hit") }).await,
            user(7)
        );
    }
    // A fill replaces only the very bytes its read found: a value written meanwhile stays.
    let _: () = admin.set("users:v1:8", "old garbage").await.unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(tokio::sync::Notify::new());
    let load = {
        let (a, gate, started) = (a.clone(), Arc::clone(&gate), Arc::clone(&started));
        tokio::spawn(async move {
            a.get_with(8, async move {
                started.notify_one();
                gate.notified().await;
                user(8)
            })
            .await
        })
    };
    started.notified().await;
    let _: () = admin.set("users:v1:8", "newer bytes").await.unwrap();
    gate.notify_one();
    assert_eq!(load.await.unwrap(), user(8));
    assert_eq!(
        raw(&mut admin, "users:v1:8").await.as_deref(),
        Some(&b"newer bytes"[..])
    );
}

#[tokio::test]
async fn counters_are_published_through_the_metrics_facade() {
    let Some(server) = common::server() else {
        return;
    };
    // Coherence off: on Redis 7.0 a fill's own invalidation (docs/coherence.md) may turn the
    // second read below into an L2 hit, depending on when the push arrives.
    let a = TieredCache::builder("users:v1")
        .redis(server.url())
        .read_timeout(Duration::from_secs(2))
        .write_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .coherence(false)
        .build();
    a.get_with(1, async { user(1) }).await;
    a.get_with(1, async { unreachable!() }).await;
    assert_eq!(a.optionally_get_with(2, async { None }).await, None);
    assert_eq!(a.optionally_get_with(2, async { None }).await, None);
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || a.publish_metrics());
    let published: std::collections::HashMap<String, u64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            assert!(labels.contains(&"namespace=users:v1".to_string()));
            match value {
                metrics_util::debugging::DebugValue::Counter(v) => {
                    Some((format!("{}{labels:?}", key.name()), v))
                }
                _ => None,
            }
        })
        .collect();
    let get = |name: &str| published[&format!("{name}[\"namespace=users:v1\"]")];
    assert_eq!(get("ebb_redis_l1_hits_total"), 2);
    assert_eq!(get("ebb_redis_loads_total"), 2);
    assert_eq!(get("ebb_redis_negative_hits_total"), 1);
    assert_eq!(get("ebb_redis_l2_misses_total"), 2);
    assert_eq!(
        published["ebb_redis_errors_total[\"namespace=users:v1\", \"kind=timeout\"]"],
        0
    );
    let stats = a.stats();
    assert_eq!((stats.l1_hits, stats.loads, stats.negative_hits), (2, 2, 1));
}

/// Counts the events that say a value does not decode.
struct Undecodable(Arc<AtomicUsize>);

impl tracing::Subscriber for Undecodable {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" && format!("{value:?}").contains("does not decode") {
                    self.0 = true;
                }
            }
        }
        let mut message = Message(false);
        event.record(&mut message);
        if message.0 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn an_undecodable_value_is_logged_once_per_key_and_counted_every_time() {
    let Some(server) = common::server() else {
        return;
    };
    let logged = Arc::new(AtomicUsize::new(0));
    // This test's thread only: a current-thread runtime runs every task of the tier here.
    let _guard = tracing::subscriber::set_default(Undecodable(Arc::clone(&logged)));
    let mut admin = server.admin().await;
    let a = tier(server.url(), Duration::from_secs(2));
    for round in 1..=3 {
        let _: () = admin.set("users:v1:7", "garbage").await.unwrap();
        assert_eq!(a.get_with(7, async { user(7) }).await, user(7));
        assert_eq!(a.stats().decode_errors, round);
        a.remove(&7).await.unwrap(); // out of L1, so that the next read asks Redis
    }
    assert_eq!(logged.load(Ordering::SeqCst), 1, "once per key per window");
    let _: () = admin.set("users:v1:8", "garbage").await.unwrap();
    assert_eq!(a.get_with(8, async { user(8) }).await, user(8));
    assert_eq!(logged.load(Ordering::SeqCst), 2, "another key is logged");
}
