//! `invalidate_entries_if`: matching entries written before the call are hidden at once from
//! every read, swept by the task and reported once as `Explicit`; entries written after are
//! not touched; reads pay for the predicate only until the sweep is done.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{advance, logged, settle, taken, wait_until};
use ebb_cache::{Cache, RemovalCause};

#[tokio::test(start_paused = true)]
async fn matching_entries_vanish_at_once_and_are_reported_once() {
    let (c, log) = logged(Cache::builder().tick(Duration::from_millis(10)));
    for k in 0..100 {
        c.insert(k, k);
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    c.invalidate_entries_if(move |_k, v| {
        counted.fetch_add(1, Ordering::Relaxed);
        v % 2 == 0
    });
    assert_eq!(
        calls.load(Ordering::Relaxed),
        0,
        "the call itself asks nothing"
    );
    // Every read hides the even ones before any sweep.
    assert_eq!(c.get(&4), None);
    assert_eq!(c.get(&5), Some(5));
    assert!(!c.contains_key(&6));
    assert!(c.contains_key(&7));
    let seen: HashSet<u64> = c.iter().map(|(k, _)| k).collect();
    assert_eq!(seen, (0..100).filter(|k| k % 2 == 1).collect());
    assert_eq!(
        c.get_with(8, async { 800 }).await,
        800,
        "loaded again, not the hidden value"
    );
    // Written after the call: not affected, even though it matches.
    c.insert(10, 10);
    assert_eq!(c.get(&10), Some(10));
    assert!(calls.load(Ordering::Relaxed) > 0);
    settle().await;
    assert_eq!(c.__internals().pending_predicates, 0, "swept");
    let mut removed = taken(&log);
    removed.sort_by_key(|(k, _, _)| *k);
    let expected: Vec<_> = (0..100)
        .filter(|k| k % 2 == 0)
        .map(|k| (k, k, RemovalCause::Explicit))
        .collect();
    assert_eq!(
        removed, expected,
        "each match once, as Explicit: swept, or replaced first (8 by a load, 10 by an insert)"
    );
    assert_eq!(c.entry_count(), 52);
    // Swept: reads no longer ask the predicate.
    let before = calls.load(Ordering::Relaxed);
    for k in 0..100 {
        c.get(&k);
        c.contains_key(&k);
    }
    assert_eq!(c.iter().count(), 52);
    assert_eq!(calls.load(Ordering::Relaxed), before);
}

#[tokio::test(start_paused = true)]
async fn predicates_pile_up_and_invalidate_all_supersedes_them() {
    let c: Cache<u64, u64> = Cache::builder().build();
    for k in 0..10 {
        c.insert(k, k);
    }
    c.invalidate_entries_if(|k, _| *k < 3);
    c.insert(20, 20);
    c.invalidate_entries_if(|k, _| *k == 5 || *k == 20);
    assert_eq!(c.__internals().pending_predicates, 2);
    let live: HashSet<u64> = c.iter().map(|(k, _)| k).collect();
    assert_eq!(live, HashSet::from([3, 4, 6, 7, 8, 9]));
    c.invalidate_all();
    assert_eq!(c.__internals().pending_predicates, 0);
    assert_eq!(c.iter().count(), 0);
    c.insert(1, 1);
    settle().await;
    assert_eq!(c.entry_count(), 1);
    assert_eq!(c.get(&1), Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_predicate_matches_nothing_and_costs_nothing_else() {
    let (c, log) = logged(Cache::builder());
    for k in 0..10 {
        c.insert(k, k);
    }
    c.invalidate_entries_if(|k, _| if *k == 3 { panic!("predicate") } else { *k < 5 });
    assert_eq!(c.get(&2), None);
    assert_eq!(c.get(&3), Some(3), "a panic is no match");
    settle().await;
    assert_eq!(c.__internals().pending_predicates, 0);
    assert_eq!(taken(&log).len(), 4);
    assert_eq!(c.entry_count(), 6);
    // The task goes on.
    c.insert_with_ttl(100, 1, Duration::from_secs(1));
    advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(c.entry_count(), 6);
}

#[tokio::test(start_paused = true)]
async fn an_expired_match_is_reported_as_expired() {
    let (c, log) = logged(Cache::builder().tick(Duration::from_millis(10)));
    c.insert_with_ttl(1, 1, Duration::from_secs(1));
    c.insert(2, 2);
    // The task has not run: the entry's deadline passes, then the predicate comes.
    advance(Duration::from_millis(1_500)).await;
    c.invalidate_entries_if(|_, _| true);
    settle().await;
    let mut log = taken(&log);
    log.sort_by_key(|(k, _, _)| *k);
    assert_eq!(
        log,
        vec![
            (1, 1, RemovalCause::Expired),
            (2, 2, RemovalCause::Explicit)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_concurrent_writes_no_old_match_is_read_and_each_is_reported_once() {
    const N: u64 = 200_000;
    let (c, log) = logged(Cache::builder());
    for k in 0..N {
        c.insert(k, 0);
    }
    // Writers keep writing version 1 of odd keys in [N, 2N) and of keys below 1,000.
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            for k in (N..2 * N).step_by(2) {
                c.insert(k, 1);
                if k % 1_000 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            for k in 0..1_000 {
                c.insert(k, 1);
            }
        })
    };
    let start = std::time::Instant::now();
    c.invalidate_entries_if(|k, v| *v == 0 && k % 3 == 0);
    let returned = start.elapsed();
    // No old match is readable, from here on.
    let reader = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            for k in (0..N).step_by(7) {
                let t = std::time::Instant::now();
                let v = c.get(&k);
                worst = worst.max(t.elapsed());
                if let Some(0) = v {
                    assert_ne!(k % 3, 0, "{k}: an old match was read");
                }
            }
            worst
        })
    };
    writer.await.unwrap();
    let worst = reader.await.unwrap();
    wait_until(Duration::from_secs(60), "the sweep", || {
        c.__internals().pending_predicates == 0
    })
    .await;
    let removed = taken(&log);
    let keys: HashSet<u64> = removed.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(keys.len(), removed.len(), "a key reported twice");
    for (k, v, cause) in &removed {
        match cause {
            RemovalCause::Explicit => assert!(*v == 0 && k % 3 == 0, "{k}={v} swept"),
            RemovalCause::Replaced => assert!(*k < 1_000 && k % 3 != 0, "{k} replaced"),
            other => panic!("{k}: {other:?}"),
        }
    }
    // Every old match is reported, as `Explicit`: swept, or replaced by a writer first.
    for k in (0..N).filter(|k| k % 3 == 0) {
        assert!(keys.contains(&k), "{k} was not reported");
    }
    for k in (0..N).filter(|k| k % 3 == 0 && *k >= 1_000) {
        assert_eq!(c.get(&k), None);
    }
    for k in (N..2 * N).step_by(2) {
        assert_eq!(c.get(&k), Some(1), "{k}, written after the call");
    }
    eprintln!("invalidate_entries_if over {N} entries returned in {returned:?}; worst get during the sweep {worst:?}");
}
