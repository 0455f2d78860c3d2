//! The entry API: get-or-insert (single-flight with `get_with`) and compute (one at a time per
//! key; writes win; cancelled or panicking computes hand over).

mod common;

use std::sync::Arc;
use std::time::Duration;

use ebb_cache::{Cache, CompResult, Op};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_upserts_count_to_a_thousand() {
    let c: Cache<&'static str, u64> = Cache::builder().build();
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                c.entry("hits")
                    .and_upsert_with(|seen| async move {
                        tokio::task::yield_now().await;
                        seen.map_or(1, |e| e.into_value() + 1)
                    })
                    .await
            })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        fresh += usize::from(t.await.unwrap().is_fresh());
    }
    assert_eq!(c.get("hits"), Some(1_000));
    assert_eq!(fresh, 1_000);
    assert_eq!(c.__internals().loads, 0, "no flight left registered");
}

#[tokio::test(start_paused = true)]
async fn every_comp_result() {
    let c: Cache<u32, u32> = Cache::builder().build();
    let put = |v| move |_| async move { Op::Put(v) };
    match c.entry(1).and_compute_with(put(10)).await {
        CompResult::Inserted(e) => assert_eq!((*e.key(), *e.value(), e.is_fresh()), (1, 10, true)),
        other => panic!("{other:?}"),
    }
    match c.entry(1).and_compute_with(put(11)).await {
        CompResult::ReplacedWith(e) => assert_eq!(e.into_value(), 11),
        other => panic!("{other:?}"),
    }
    match c.entry(1).and_compute_with(|_| async { Op::Nop }).await {
        CompResult::Unchanged(e) => assert_eq!((*e.value(), e.is_fresh()), (11, false)),
        other => panic!("{other:?}"),
    }
    match c.entry(1).and_compute_with(|_| async { Op::Remove }).await {
        CompResult::Removed(e) => assert_eq!(e.into_value(), 11),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.get(&1), None);
    assert_eq!(
        c.entry(1).and_compute_with(|_| async { Op::Remove }).await,
        CompResult::StillNone(1)
    );
    assert_eq!(
        c.entry(1).and_compute_with(|_| async { Op::Nop }).await,
        CompResult::StillNone(1)
    );
    // by reference, too
    let s: Cache<String, u32> = Cache::builder().build();
    match s
        .entry_by_ref("k")
        .and_compute_with(|_| async { Op::Put(1) })
        .await
    {
        CompResult::Inserted(e) => assert_eq!(e.key(), "k"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.entry_by_ref("k")
            .and_upsert_with(|e| async move { e.unwrap().into_value() + 1 })
            .await
            .into_value(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn a_write_during_a_compute_wins() {
    let c: Cache<u32, u32> = Cache::builder().build();
    c.insert(1, 1);
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let compute = {
        let c = c.clone();
        tokio::spawn(async move {
            c.entry(1)
                .and_compute_with(|_| async move {
                    wait.await.unwrap();
                    Op::Put(100)
                })
                .await
        })
    };
    common::settle().await;
    c.insert(1, 2);
    go.send(()).unwrap();
    match compute.await.unwrap() {
        CompResult::Unchanged(e) => assert_eq!(e.into_value(), 1, "the entry the compute saw"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.get(&1), Some(2), "the insert won");
    // A remove wins over a compute's remove, too: nothing is removed twice.
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let compute = {
        let c = c.clone();
        tokio::spawn(async move {
            c.entry(1)
                .and_compute_with(|_| async move {
                    wait.await.unwrap();
                    Op::Remove
                })
                .await
        })
    };
    common::settle().await;
    c.insert(1, 3);
    go.send(()).unwrap();
    assert!(matches!(compute.await.unwrap(), CompResult::Unchanged(_)));
    assert_eq!(c.get(&1), Some(3));
}

#[tokio::test(start_paused = true)]
async fn cancelled_and_panicking_computes_hand_over() {
    let c: Cache<u32, u32> = Cache::builder().build();
    let stuck = c.entry(1).and_compute_with(|_| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Op::Put(1)
    });
    assert!(tokio::time::timeout(Duration::from_millis(10), stuck)
        .await
        .is_err());
    assert_eq!(
        c.__internals().loads,
        0,
        "the cancelled compute left no flight"
    );
    let panicking = {
        let c = c.clone();
        tokio::spawn(async move {
            c.entry(1)
                .and_compute_with(|_| async {
                    tokio::task::yield_now().await;
                    panic!("compute");
                    #[allow(unreachable_code)]
                    Op::Put(2)
                })
                .await
        })
    };
    // A waiter queued behind the panicking compute goes on.
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.get_with(1, async { 3 }).await })
    };
    assert!(panicking.await.is_err());
    assert_eq!(waiter.await.unwrap(), 3);
    assert_eq!(c.__internals().loads, 0);
    assert_eq!(c.get(&1), Some(3));
}

#[tokio::test(start_paused = true)]
async fn computes_and_loads_of_one_key_take_turns() {
    let c: Cache<u32, u32> = Cache::builder().build();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (o1, o2) = (Arc::clone(&order), Arc::clone(&order));
    let load = c.get_with(1, async move {
        o1.lock().unwrap().push("load starts");
        tokio::time::sleep(Duration::from_millis(10)).await;
        o1.lock().unwrap().push("load ends");
        5
    });
    let compute = c.entry(1).and_compute_with(move |seen| async move {
        o2.lock().unwrap().push("compute runs");
        Op::Put(seen.unwrap().into_value() * 2)
    });
    let (loaded, computed) = tokio::join!(load, compute);
    assert_eq!(loaded, 5);
    assert!(matches!(computed, CompResult::ReplacedWith(ref e) if *e.value() == 10));
    assert_eq!(
        *order.lock().unwrap(),
        ["load starts", "load ends", "compute runs"]
    );
    assert_eq!(c.get(&1), Some(10));
}

#[tokio::test(start_paused = true)]
async fn or_insert_family() {
    let c: Cache<String, u32> = Cache::builder().build();
    let first = c.entry("a".to_string()).or_insert_with(async { 1 }).await;
    assert!(first.is_fresh());
    let again = c.entry("a".to_string()).or_insert_with(async { 2 }).await;
    assert_eq!((*again.value(), again.is_fresh()), (1, false));
    let by_ref = c.entry_by_ref("a").or_insert_with(async { 3 }).await;
    assert_eq!((*by_ref.value(), by_ref.is_fresh()), (1, false));
    let err = c
        .entry_by_ref("b")
        .or_try_insert_with(async { Err::<u32, _>("down") })
        .await;
    assert_eq!(*err.unwrap_err(), "down");
    assert_eq!(
        c.entry_by_ref("b")
            .or_optionally_insert_with(async { None })
            .await,
        None
    );
    let some = c
        .entry("b".to_string())
        .or_optionally_insert_with(async { Some(4) })
        .await;
    assert!(some.unwrap().is_fresh());
    assert_eq!(c.entry("c".to_string()).or_insert(5).await.into_value(), 5);
    assert_eq!(c.entry_count(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_compute_that_asks_for_its_own_key_panics_instead_of_waiting_forever() {
    let c: Cache<u32, u32> = Cache::builder().build();
    let inner = c.clone();
    let run = tokio::spawn(async move {
        inner
            .clone()
            .entry(1)
            .and_compute_with(move |_| async move { Op::Put(inner.get_with(1, async { 0 }).await) })
            .await
    });
    let err = run.await.unwrap_err();
    assert!(common::message(err.into_panic()).contains("its own key"));
    assert_eq!(c.__internals().loads, 0);
}
