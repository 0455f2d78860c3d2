//! Coherence between replicas against a real `redis-server` (one per test, see `common`):
//! invalidations from writes through another replica, from plain clients, from expiries and
//! from flushes; a replica's own writes; the loss of tracking (killed connection, frozen
//! server), its return, a refusal; and a stress test of racing writers and readers.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ebb_redis::redis::{self, AsyncCommands};
use ebb_redis::{TieredCache, TrackingState};

use common::{user, User};

/// Generous: the tests share two cores.
const SLACK: Duration = Duration::from_secs(2);
/// What a bounded wait allows for a condition that needs a few round trips.
const WAIT: Duration = Duration::from_secs(10);

fn replica(server: &common::Server, namespace: &str) -> TieredCache<u64, User> {
    TieredCache::builder(namespace)
        .redis(server.url())
        .read_timeout(SLACK)
        .write_timeout(SLACK)
        .local_ttl(Duration::from_secs(60))
        .build()
}

/// Wait until the tier says tracking is on.
async fn tracking_on(tier: &TieredCache<u64, User>) {
    assert!(
        common::eventually(WAIT, async || tier.coherence_stats().state
            == TrackingState::On)
        .await,
        "tracking not on: {:?}",
        tier.coherence_stats()
    );
}

async fn set_json(admin: &mut redis::aio::MultiplexedConnection, key: &str, value: &User) {
    let _: () = admin
        .set(key, serde_json::to_vec(value).unwrap())
        .await
        .unwrap();
}

/// A value not in Redis yet: loads with a loader that must not run when Redis has it.
async fn read(tier: &TieredCache<u64, User>, id: u64) -> User {
    tier.try_get_with(
        id,
        async move { Ok::<_, std::io::Error>(user(id, "loaded")) },
    )
    .await
    .unwrap()
}

/// Make sure every push sent to `tier` before now has been handled: a plain SET of a marker
/// key under the namespace, then wait for the invalidation count to move (pushes on one
/// connection arrive in order).
async fn drain(
    tier: &TieredCache<u64, User>,
    admin: &mut redis::aio::MultiplexedConnection,
    namespace: &str,
) {
    let before = tier.coherence_stats().invalidations;
    let _: () = admin.set(format!("{namespace}:marker"), "x").await.unwrap();
    assert!(
        common::eventually(WAIT, async || tier.coherence_stats().invalidations > before).await,
        "the marker's invalidation did not arrive"
    );
}

#[tokio::test]
async fn a_write_on_one_replica_drops_the_others_copy_and_stays_a_hit_in_its_own() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let a = replica(&server, "users:v1");
    let b = replica(&server, "users:v1");
    tracking_on(&a).await;
    tracking_on(&b).await;

    a.insert(7, user(7, "ada")).await.unwrap();
    assert_eq!(
        read(&b, 7).await,
        user(7, "ada"),
        "B reads A's write from Redis"
    );
    assert_eq!(b.get_local(&7), Some(user(7, "ada")), "and keeps it in L1");

    a.insert(7, user(7, "ada lovelace")).await.unwrap();
    assert!(
        common::eventually(WAIT, async || b.get_local(&7) != Some(user(7, "ada"))).await,
        "B still serves the old value"
    );
    assert_eq!(b.get_local(&7), None, "dropped, not replaced");
    assert_eq!(read(&b, 7).await, user(7, "ada lovelace"));

    // A's own write: NOLOOP spares it. Every push sent to A before the marker's has arrived.
    drain(&a, &mut admin, "users:v1").await;
    assert_eq!(
        a.get_local(&7),
        Some(user(7, "ada lovelace")),
        "a replica's own write stays an L1 hit"
    );
    // A removal through B reaches A too.
    b.remove(&7).await.unwrap();
    assert!(common::eventually(WAIT, async || a.get_local(&7).is_none()).await);
}

#[tokio::test]
async fn a_loaded_key_stays_in_l1_after_at_most_one_more_redis_read() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let a = replica(&server, "users:v1");
    tracking_on(&a).await;
    let loads = Arc::new(AtomicU64::new(0));
    let load = || {
        let loads = Arc::clone(&loads);
        async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(user(5, "loaded"))
        }
    };
    assert_eq!(a.try_get_with(5, load()).await.unwrap(), user(5, "loaded"));
    // The fill is a Lua script, and Redis 7.0 sends a script's writer its own invalidation
    // despite NOLOOP (plain SETs, as `insert` sends, are spared): the loaded copy may be
    // dropped, and the next read is an L2 hit, which stays.
    assert!(
        common::eventually(WAIT, async || {
            let _ = a.try_get_with(5, load()).await.unwrap();
            a.get_local(&5).is_some()
        })
        .await
    );
    drain(&a, &mut admin, "users:v1").await;
    assert_eq!(a.get_local(&5), Some(user(5, "loaded")));
    assert_eq!(loads.load(Ordering::SeqCst), 1, "the loader ran once");
}

#[tokio::test]
async fn a_plain_set_by_another_client_invalidates_every_replica_and_other_prefixes_do_not() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let replicas: Vec<_> = (0..3).map(|_| replica(&server, "users:v1")).collect();
    let other = replica(&server, "orders:v1");
    for tier in replicas.iter().chain([&other]) {
        tracking_on(tier).await;
    }
    set_json(&mut admin, "users:v1:1", &user(1, "old")).await;
    set_json(&mut admin, "orders:v1:1", &user(1, "order")).await;
    for tier in &replicas {
        assert_eq!(read(tier, 1).await, user(1, "old"));
    }
    assert_eq!(read(&other, 1).await, user(1, "order"));
    let other_before = other.coherence_stats().invalidations;

    set_json(&mut admin, "users:v1:1", &user(1, "new")).await;
    for tier in &replicas {
        assert!(
            common::eventually(WAIT, async || tier.get_local(&1).is_none()).await,
            "a replica still serves the old value"
        );
        assert_eq!(read(tier, 1).await, user(1, "new"));
    }
    // The other namespace heard nothing of it, and kept its copy.
    drain(&other, &mut admin, "orders:v1").await;
    assert_eq!(other.coherence_stats().invalidations, other_before + 1);
    assert_eq!(other.get_local(&1), Some(user(1, "order")));
}

#[tokio::test]
async fn flushall_and_a_flushdb_in_another_database_drop_every_l1() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let a = replica(&server, "users:v1");
    let b = replica(&server, "users:v1");
    tracking_on(&a).await;
    tracking_on(&b).await;
    for id in 0..20 {
        a.insert(id, user(id, "x")).await.unwrap();
        assert_eq!(read(&b, id).await, user(id, "x"));
    }
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    for tier in [&a, &b] {
        assert!(
            common::eventually(WAIT, async || (0..20)
                .all(|id| tier.get_local(&id).is_none()))
            .await,
            "an L1 kept entries past FLUSHALL"
        );
        assert_eq!(tier.coherence_stats().flushes, 1);
    }

    // Tracking is not per database: a FLUSHDB of database 1 clears these L1s too.
    for id in 0..5 {
        a.insert(id, user(id, "y")).await.unwrap();
        assert_eq!(read(&b, id).await, user(id, "y"));
    }
    let mut db1 = redis::Client::open(format!("{}/1", server.url()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = db1.set("unrelated", "1").await.unwrap();
    let _: () = redis::cmd("FLUSHDB").query_async(&mut db1).await.unwrap();
    for tier in [&a, &b] {
        assert!(
            common::eventually(WAIT, async || tier.coherence_stats().flushes == 2).await,
            "no null invalidation for FLUSHDB in another database"
        );
        assert!((0..5).all(|id| tier.get_local(&id).is_none()));
    }
}

#[tokio::test]
async fn a_redis_side_expiry_is_counted_as_an_invalidation() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let a = replica(&server, "users:v1");
    tracking_on(&a).await;
    let before = a.coherence_stats().invalidations;
    let _: () = redis::cmd("SET")
        .arg("users:v1:3")
        .arg(serde_json::to_vec(&user(3, "brief")).unwrap())
        .arg("PX")
        .arg(300)
        .query_async(&mut admin)
        .await
        .unwrap();
    // The SET itself is one invalidation; the expiry, a second.
    assert!(
        common::eventually(WAIT, async || a.coherence_stats().invalidations
            >= before + 2)
        .await,
        "no invalidation for the expiry: {:?}",
        a.coherence_stats()
    );
    let exists: bool = admin.exists("users:v1:3").await.unwrap();
    assert!(!exists);
}

/// The tier's own connection, found in `CLIENT LIST` (every client but the admin's).
async fn tier_clients(admin: &mut redis::aio::MultiplexedConnection) -> Vec<u64> {
    let me: u64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(admin)
        .await
        .unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(admin)
        .await
        .unwrap();
    list.lines()
        .filter_map(|line| {
            let id = line.split(' ').next()?.strip_prefix("id=")?.parse().ok()?;
            (id != me).then_some(id)
        })
        .collect()
}

#[tokio::test]
async fn a_killed_tracking_connection_caps_l1_then_tracking_comes_back_and_clears_it() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let a: TieredCache<u64, User> = TieredCache::builder("users:v1")
        .redis(server.url())
        .read_timeout(SLACK)
        .write_timeout(SLACK)
        .local_ttl(Duration::from_secs(60))
        .degraded_ttl(Duration::from_millis(500))
        .tracking_ping_interval(Duration::from_millis(100))
        .build();
    tracking_on(&a).await;
    a.insert(1, user(1, "before")).await.unwrap();
    assert_eq!(a.get_local(&1), Some(user(1, "before")));

    let ids = tier_clients(&mut admin).await;
    assert_eq!(ids.len(), 1, "one connection per tier: {ids:?}");
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(ids[0])
        .query_async(&mut admin)
        .await
        .unwrap();
    // Lost, then back on, on a new connection, with L1 cleared.
    assert!(
        common::eventually(WAIT, async || a.coherence_stats().losses == 1).await,
        "{:?}",
        a.coherence_stats()
    );
    assert!(
        common::eventually(WAIT, async || {
            let s = a.coherence_stats();
            s.state == TrackingState::On && s.confirmations == 2
        })
        .await,
        "tracking did not come back: {:?}",
        a.coherence_stats()
    );
    assert_eq!(a.get_local(&1), None, "L1 cleared when tracking came back");
    assert_ne!(tier_clients(&mut admin).await, ids);
    // And it works again: a foreign write drops a fresh copy.
    assert_eq!(read(&a, 1).await, user(1, "before"));
    set_json(&mut admin, "users:v1:1", &user(1, "after")).await;
    assert!(common::eventually(WAIT, async || a.get_local(&1).is_none()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_noticed_by_the_ping_and_l1_lives_degraded_ttl_at_most() {
    let Some(server) = common::server() else {
        return;
    };
    let a: TieredCache<u64, User> = TieredCache::builder("users:v1")
        .redis(server.url())
        .read_timeout(Duration::from_millis(200))
        .write_timeout(SLACK)
        .local_ttl(Duration::from_secs(60))
        .degraded_ttl(Duration::from_millis(800))
        .tracking_ping_interval(Duration::from_millis(100))
        .build();
    tracking_on(&a).await;
    a.insert(1, user(1, "kept")).await.unwrap();
    server.pause();
    let frozen = tokio::time::Instant::now();
    let noticed = common::eventually(WAIT, async || {
        a.coherence_stats().state == TrackingState::Down
    })
    .await;
    let dropped = common::eventually(WAIT, async || a.get_local(&1).is_none()).await;
    let after = frozen.elapsed();
    server.resume();
    assert!(
        noticed,
        "the ping did not notice: {:?}",
        a.coherence_stats()
    );
    assert!(dropped, "L1 kept serving past degraded_ttl");
    // Last confirmed at most one ping before the freeze; dropped by then + degraded_ttl.
    assert!(after < Duration::from_secs(3), "dropped after {after:?}");
    assert!(
        common::eventually(WAIT, async || a.coherence_stats().state
            == TrackingState::On)
        .await,
        "tracking did not come back after the thaw: {:?}",
        a.coherence_stats()
    );
}

#[tokio::test]
async fn a_refused_client_tracking_is_reported_and_caps_l1_at_degraded_ttl() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    // The ACL of docs/redis.md, without +client|tracking.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("app")
        .arg("on")
        .arg(">secret")
        .arg("resetkeys")
        .arg("~users:v1:*")
        .arg("resetchannels")
        .arg("-@all")
        .arg("+get")
        .arg("+set")
        .arg("+pttl")
        .arg("+time")
        .arg("+unlink")
        .arg("+scan")
        .arg("+evalsha")
        .arg("+script|load")
        .arg("+hello")
        .arg("+client|trackinginfo")
        .query_async(&mut admin)
        .await
        .unwrap();
    let a: TieredCache<u64, User> = TieredCache::builder("users:v1")
        .redis(format!("redis://app:secret@127.0.0.1:{}", server.port))
        .read_timeout(SLACK)
        .write_timeout(SLACK)
        .local_ttl(Duration::from_secs(60))
        .degraded_ttl(Duration::from_millis(300))
        .build();
    a.insert(1, user(1, "capped")).await.unwrap();
    assert_eq!(a.coherence_stats().state, TrackingState::Refused);
    assert_eq!(a.get_local(&1), Some(user(1, "capped")));
    assert!(
        common::eventually(WAIT, async || a.get_local(&1).is_none()).await,
        "L1 kept a value past degraded_ttl with tracking refused"
    );
    // Reads still work, and what they fill is capped too.
    assert_eq!(read(&a, 1).await, user(1, "capped"));
    assert!(common::eventually(WAIT, async || a.get_local(&1).is_none()).await);
}

#[tokio::test]
async fn with_coherence_off_another_replica_keeps_its_copy() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    let b: TieredCache<u64, User> = TieredCache::builder("users:v1")
        .redis(server.url())
        .read_timeout(SLACK)
        .coherence(false)
        .build();
    set_json(&mut admin, "users:v1:1", &user(1, "old")).await;
    assert_eq!(read(&b, 1).await, user(1, "old"));
    set_json(&mut admin, "users:v1:1", &user(1, "new")).await;
    let _: String = redis::cmd("PING").query_async(&mut admin).await.unwrap();
    assert_eq!(b.get_local(&1), Some(user(1, "old")));
    assert_eq!(b.coherence_stats().state, TrackingState::Off);
}

/// Two replicas, writers through each and through a plain client, readers on both, a few
/// keys; once the writers stop and a bounded settle passes, every replica's L1 holds what
/// Redis holds, or nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_and_readers_leave_every_l1_agreeing_with_redis() {
    let Some(server) = common::server() else {
        return;
    };
    let mut admin = server.admin().await;
    const KEYS: u64 = 4;
    for round in 0..20 {
        let namespace = format!("stress{round}:v1");
        let a = replica(&server, &namespace);
        let b = replica(&server, &namespace);
        tracking_on(&a).await;
        tracking_on(&b).await;
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (w, tier) in [a.clone(), b.clone()].into_iter().enumerate() {
            let (stop, counter) = (Arc::clone(&stop), Arc::clone(&counter));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let _ = tier
                        .insert(n % KEYS, user(n % KEYS, &format!("w{w}-{n}")))
                        .await;
                }
            }));
        }
        {
            let (stop, counter) = (Arc::clone(&stop), Arc::clone(&counter));
            let mut plain = server.admin().await;
            let namespace = namespace.clone();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let value = serde_json::to_vec(&user(n % KEYS, &format!("plain-{n}"))).unwrap();
                    let _: () = plain
                        .set(format!("{namespace}:{}", n % KEYS), value)
                        .await
                        .unwrap();
                }
            }));
        }
        for tier in [a.clone(), b.clone(), a.clone(), b.clone()] {
            let stop = Arc::clone(&stop);
            tasks.push(tokio::spawn(async move {
                let mut i = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let _ = read(&tier, i % KEYS).await;
                    tokio::task::yield_now().await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(250)).await; // the run's length, not a sync
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.unwrap();
        }
        let mut agreed = false;
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            let mut all = true;
            for id in 0..KEYS {
                let stored: Option<Vec<u8>> = admin.get(format!("{namespace}:{id}")).await.unwrap();
                let truth = stored.and_then(|b| serde_json::from_slice::<User>(&b).ok());
                for (name, tier) in [("A", &a), ("B", &b)] {
                    if let Some(local) = tier.get_local(&id) {
                        if Some(&local) != truth.as_ref() {
                            all = false;
                            last = format!(
                                "round {round}: {name} holds {local:?} for {id}, Redis {truth:?}"
                            );
                        }
                    }
                }
            }
            if all {
                agreed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(agreed, "{last}");
        for tier in [&a, &b] {
            assert_eq!(tier.coherence_stats().losses, 0);
        }
    }
}
