//! Defects an adversarial pass found with the public API only: user code that panics at the
//! worst moment (a weigher as a load finishes, a key's `Clone` in the middle of an overwrite,
//! a value's `Clone` or `Drop`, a key's `Hash` on the expiry task), and misuse (a loader that
//! waits on its own key, a full notification channel without `record_stats`). Each test fails
//! when the behaviour it names breaks; none of them may hang (time is paused, and every wait
//! has a deadline).

mod common;

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{advance, message, settle};
use ebb_cache::{Cache, RemovalCause};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const LIMIT: Duration = Duration::from_secs(10);

/// A countdown shared by every clone of a [`Trap`]: each trapped operation takes one off it,
/// and the one that brings it to zero panics. Negative: disarmed.
#[derive(Debug, Clone, Default)]
struct Fuse(Arc<AtomicI64>);

impl Fuse {
    fn disarmed() -> Self {
        Fuse(Arc::new(AtomicI64::new(-1)))
    }

    /// The `n`th trapped operation from now panics (1: the next one).
    fn arm(&self, n: i64) {
        self.0.store(n, SeqCst);
    }

    fn disarm(&self) {
        self.0.store(-1, SeqCst);
    }

    /// Whether the armed operation came (and panicked).
    fn burned(&self) -> bool {
        self.0.load(SeqCst) == 0
    }

    fn burn(&self, what: &str) {
        let left = self
            .0
            .fetch_update(SeqCst, SeqCst, |n| (n > 0).then(|| n - 1));
        if left == Ok(1) {
            panic!("trap: {what}");
        }
    }
}

/// What a [`Trap`] panics in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum In {
    Clone,
    Hash,
    Eq,
    Drop,
}

/// A key or value whose `Clone`, `Hash`, `Eq` or `Drop` panics when its fuse says so. Equality and
/// hashing are by `id`.
#[derive(Debug)]
struct Trap {
    id: u64,
    fuse: Fuse,
    trapped: In,
}

impl Trap {
    fn new(id: u64, fuse: &Fuse, trapped: In) -> Self {
        Trap {
            id,
            fuse: fuse.clone(),
            trapped,
        }
    }
}

impl Clone for Trap {
    fn clone(&self) -> Self {
        if self.trapped == In::Clone {
            self.fuse.burn("clone");
        }
        Trap {
            id: self.id,
            fuse: self.fuse.clone(),
            trapped: self.trapped,
        }
    }
}

impl Hash for Trap {
    fn hash<H: Hasher>(&self, state: &mut H) {
        if self.trapped == In::Hash {
            self.fuse.burn("hash");
        }
        self.id.hash(state);
    }
}

impl PartialEq for Trap {
    fn eq(&self, other: &Self) -> bool {
        for side in [self, other] {
            if side.trapped == In::Eq {
                side.fuse.burn("eq");
            }
        }
        self.id == other.id
    }
}

impl Eq for Trap {}

impl Drop for Trap {
    fn drop(&mut self) {
        if self.trapped == In::Drop && !std::thread::panicking() {
            self.fuse.burn("drop");
        }
    }
}

/// Run `f`, expecting it to panic.
fn panics(f: impl FnOnce()) {
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    assert!(caught.is_err(), "expected a panic");
}

// ---- Item 1: user code panicking between a load's end and its flight's end -----------------

#[tokio::test(start_paused = true)]
async fn a_weigher_panicking_as_a_load_finishes_hands_the_key_over() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(100)
        .weigher(|_, v| {
            assert_ne!(*v, 666, "the weigher refuses 666");
            1
        })
        .build();
    let leader = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_with(1, async {
                    tokio::time::sleep(10 * MS).await;
                    666
                })
                .await
        }
    });
    settle().await;
    let waiter = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get_with(1, async { 7 }).await }
    });
    settle().await;
    advance(10 * MS).await;
    assert!(leader.await.unwrap_err().is_panic(), "the weigher's panic");
    // The waiter starts over and loads with its own loader; nobody waits forever.
    let got = tokio::time::timeout(LIMIT, waiter)
        .await
        .expect("the waiter hangs on a flight nobody will end");
    assert_eq!(got.unwrap(), 7);
    let again = tokio::time::timeout(LIMIT, cache.get_with(1, async { 8 }))
        .await
        .expect("the key is wedged");
    assert_eq!(again, 7);
    assert_eq!(cache.__internals().loads, 0, "a flight left registered");
}

#[tokio::test(start_paused = true)]
async fn a_key_clone_panicking_as_a_load_finishes_hands_the_key_over() {
    let fuse = Fuse::disarmed();
    let cache: Cache<Trap, u64> = Cache::builder().build();
    let leader = tokio::spawn({
        let (cache, key) = (cache.clone(), Trap::new(1, &fuse, In::Clone));
        async move {
            cache
                .get_with(key, async {
                    tokio::time::sleep(10 * MS).await;
                    5
                })
                .await
        }
    });
    settle().await;
    let waiter = tokio::spawn({
        let (cache, key) = (cache.clone(), Trap::new(1, &fuse, In::Clone));
        async move { cache.get_with(key, async { 7 }).await }
    });
    settle().await;
    // The next clone of key 1, as the leader stores its value, panics.
    fuse.arm(1);
    advance(10 * MS).await;
    assert!(leader.await.unwrap_err().is_panic(), "the clone's panic");
    fuse.disarm();
    let got = tokio::time::timeout(LIMIT, waiter)
        .await
        .expect("the waiter hangs on a flight nobody will end");
    assert_eq!(got.unwrap(), 7);
    assert_eq!(cache.__internals().loads, 0, "a flight left registered");
}

// ---- Item 4: one panic in user code on the expiry task --------------------------------------

/// An entry whose key or value panics in `trapped` while the expiry task removes it (expired,
/// or swept after `invalidate_all`); then 1,000 later entries must still expire on time, and
/// the books must balance. With `listen`, a listener and a channel both hear every removal
/// (so the task clones each key and value once); without, the task drops what it removes.
/// `bounded`: a cache with a capacity, whose task hashes and compares each fired node's key
/// (an unbounded cache's finds the entry by its node: see below).
async fn the_task_survives(trapped: In, in_key: bool, invalidate: bool, listen: bool) {
    the_task_survives_in(trapped, in_key, invalidate, listen, false).await;
}

async fn the_task_survives_in(
    trapped: In,
    in_key: bool,
    invalidate: bool,
    listen: bool,
    bounded: bool,
) {
    let fuse = Fuse::disarmed();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let heard = Arc::new(AtomicUsize::new(0));
    let mut builder = Cache::builder().time_to_live(10 * MS).tick(MS);
    if bounded {
        builder = builder.max_capacity(10_000);
    }
    if listen {
        let heard = Arc::clone(&heard);
        builder = builder
            .eviction_listener(move |_, _, _| {
                heard.fetch_add(1, SeqCst);
            })
            .eviction_channel(tx);
    }
    let cache: Cache<Trap, Trap> = builder.build();
    let plain = Fuse::disarmed();
    let (key, value) = if in_key {
        (
            Trap::new(0, &fuse, trapped),
            Trap::new(0, &plain, In::Clone),
        )
    } else {
        (
            Trap::new(0, &plain, In::Clone),
            Trap::new(0, &fuse, trapped),
        )
    };
    cache.insert(key, value);
    settle().await;
    fuse.arm(1);
    if invalidate {
        cache.invalidate_all();
        settle().await;
    } else {
        advance(11 * MS).await;
    }
    assert!(fuse.burned(), "the trap in {trapped:?} was never reached");
    fuse.disarm();
    for id in 1..=1000 {
        cache.insert(
            Trap::new(id, &plain, In::Clone),
            Trap::new(id, &plain, In::Clone),
        );
    }
    settle().await;
    advance(20 * MS).await;
    assert_eq!(
        cache.entry_count(),
        0,
        "the expiry task stopped after a panic in {trapped:?} (in the {})",
        if in_key { "key" } else { "value" }
    );
    let internals = cache.__internals();
    assert!(!internals.task_closed, "the task ended: {internals:?}");
    assert_eq!(
        internals.tasks_started, 1,
        "the task died and another took over"
    );
    assert_eq!(
        (internals.nodes, internals.records),
        (0, 0),
        "{internals:?}"
    );
    if !listen {
        return;
    }
    // Every later entry was reported; the trapped one at most loses its own notification.
    let listened = heard.load(SeqCst);
    assert!(
        (1000..=1001).contains(&listened),
        "{listened} notifications"
    );
    let mut sent = 0;
    while rx.try_recv().is_ok() {
        sent += 1;
    }
    assert!((1000..=1001).contains(&sent), "{sent} sent");
}

#[tokio::test(start_paused = true)]
async fn the_task_survives_a_value_clone_panicking_as_it_notifies() {
    the_task_survives(In::Clone, false, false, true).await;
}

#[tokio::test(start_paused = true)]
async fn the_task_survives_a_key_clone_panicking_as_it_notifies() {
    the_task_survives(In::Clone, true, false, true).await;
}

#[tokio::test(start_paused = true)]
async fn the_task_survives_a_value_drop_panicking_as_it_expires() {
    the_task_survives(In::Drop, false, false, false).await;
}

#[tokio::test(start_paused = true)]
async fn the_task_survives_a_key_hash_panicking_as_a_node_fires() {
    the_task_survives_in(In::Hash, true, false, true, true).await;
}

#[tokio::test(start_paused = true)]
async fn the_task_survives_a_key_eq_panicking_as_a_node_fires() {
    the_task_survives_in(In::Eq, true, false, true, true).await;
}

/// A bounded cache's task copies a fired node's key (found by hash and node) for its policy:
/// a `Clone` that panics there costs that attempt only, and the entry goes a tick later.
#[tokio::test(start_paused = true)]
async fn the_task_survives_a_key_clone_panicking_as_a_bounded_cache_fires() {
    the_task_survives_in(In::Clone, true, false, false, true).await;
}

/// An unbounded cache's task finds a fired node's entry by the hash its key was filed under
/// and the node it holds: a key whose `Hash` or `Eq` would panic then is removed on time all
/// the same, and reported.
#[tokio::test(start_paused = true)]
async fn an_unbounded_cache_expires_with_no_key_hash_or_eq() {
    for trapped in [In::Hash, In::Eq] {
        let fuse = Fuse::disarmed();
        let plain = Fuse::disarmed();
        let heard = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&heard);
        let cache: Cache<Trap, Trap> = Cache::builder()
            .time_to_live(10 * MS)
            .tick(MS)
            .eviction_listener(move |_, _, _| {
                counted.fetch_add(1, SeqCst);
            })
            .build();
        cache.insert(
            Trap::new(0, &fuse, trapped),
            Trap::new(0, &plain, In::Clone),
        );
        settle().await;
        fuse.arm(1);
        advance(11 * MS).await;
        settle().await;
        assert!(
            !fuse.burned(),
            "the task ran the key's {trapped:?} as its node fired"
        );
        assert_eq!(cache.entry_count(), 0, "{trapped:?}: the entry stayed");
        assert_eq!(heard.load(SeqCst), 1, "{trapped:?}: not reported once");
        let internals = cache.__internals();
        assert_eq!(
            (internals.nodes, internals.records),
            (0, 0),
            "{trapped:?}: {internals:?}"
        );
        fuse.disarm();
    }
}

#[tokio::test(start_paused = true)]
async fn the_task_survives_a_key_clone_panicking_as_it_sweeps() {
    the_task_survives(In::Clone, true, true, true).await;
}

#[tokio::test(start_paused = true)]
async fn the_task_survives_a_value_drop_panicking_as_it_sweeps() {
    the_task_survives(In::Drop, false, true, false).await;
}

// ---- Item 5: a key `Clone` panicking in the middle of an overwrite --------------------------

#[tokio::test(start_paused = true)]
async fn a_key_clone_panicking_mid_overwrite_leaves_the_wheel_whole() {
    let fuse = Fuse::disarmed();
    let log = Arc::new(Mutex::new(Vec::new()));
    let cache: Cache<Trap, u64> = Cache::builder()
        .tick(MS)
        .eviction_listener({
            let log = Arc::clone(&log);
            move |k: Trap, v, cause| log.lock().unwrap().push((k.id, v, cause))
        })
        .build();
    cache.insert_with_ttl(Trap::new(0, &fuse, In::Clone), 1, 100 * MS);
    settle().await; // its node is linked
                    // An earlier deadline needs a new node; the overwrite clones the key for the hand-off
                    // and for the notification. Whichever clone panics, the write is all or nothing.
    let mut panicked = 0;
    for nth in 1..=3 {
        fuse.arm(nth);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.insert_with_ttl(Trap::new(0, &fuse, In::Clone), 2, 50 * MS)
        }));
        panicked += usize::from(caught.is_err());
        fuse.disarm();
        settle().await;
        if caught.is_ok() {
            break; // the write happened: it cloned the key fewer than `nth` times
        }
    }
    assert!(panicked >= 1);
    let kept = cache.get(&Trap::new(0, &fuse, In::Clone));
    assert!(matches!(kept, Some(1 | 2)), "{kept:?}");
    // 64 other keys with a deadline, then key 0 goes away: nothing may free a node twice.
    for id in 1..=64 {
        cache.insert_with_ttl(Trap::new(id, &fuse, In::Clone), id, 30 * MS);
    }
    settle().await;
    assert_eq!(cache.remove(&Trap::new(0, &fuse, In::Clone)), kept);
    advance(200 * MS).await;
    assert_eq!(cache.entry_count(), 0, "entries left after their deadline");
    let internals = cache.__internals();
    assert!(!internals.task_closed, "the task died: {internals:?}");
    assert_eq!(
        (internals.nodes, internals.records),
        (0, 0),
        "{internals:?}"
    );
    let log = log.lock().unwrap();
    // 64 expiries, key 0's removal, and its replacement if the overwrite went through.
    assert_eq!(log.len(), 65 + usize::from(kept == Some(2)), "{log:?}");
    assert_eq!(
        log.iter()
            .filter(|(_, _, c)| *c == RemovalCause::Expired)
            .count(),
        64
    );
}

// ---- Item 7: a loader waiting on its own key -----------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_loader_that_waits_on_its_own_key_panics_naming_the_mistake() {
    let cache: Cache<u64, u64> = Cache::builder().build();
    let inner = cache.clone();
    let outer = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_with(1, async move { inner.get_with(1, async { 2 }).await + 1 })
                .await
        }
    });
    let joined = tokio::time::timeout(LIMIT, outer)
        .await
        .expect("the loader waits on its own flight forever");
    let panic = joined.unwrap_err().into_panic();
    let message = message(panic);
    assert!(message.contains("its own key"), "{message}");
    // The key is not wedged.
    assert_eq!(cache.get_with(1, async { 3 }).await, 3);
    assert_eq!(cache.__internals().loads, 0);
}

#[tokio::test(start_paused = true)]
async fn loads_of_one_key_joined_in_one_task_still_share_a_flight() {
    // Two callers of one key polled by the same task are not a loader waiting on itself.
    let cache: Cache<u64, u64> = Cache::builder().build();
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, SeqCst);
        tokio::time::sleep(MS).await;
        9
    };
    let (a, b) = tokio::join!(cache.get_with(1, load()), cache.get_with(1, load()));
    assert_eq!((a, b, loads.load(SeqCst)), (9, 9, 1));
}

// ---- Item 9: dropped notifications are counted without `record_stats` ---------------------

#[tokio::test(start_paused = true)]
async fn a_full_channel_counts_what_it_drops_without_record_stats() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let cache: Cache<u64, u64> = Cache::builder().eviction_channel(tx).build();
    for k in 0..10 {
        cache.insert(k, k);
        cache.remove(&k);
    }
    let mut received = 0;
    while rx.try_recv().is_ok() {
        received += 1;
    }
    assert_eq!(received, 2);
    assert_eq!(cache.stats().notifications_dropped, 8);
    assert_eq!(
        cache.stats().explicit,
        0,
        "removals are counted only with record_stats"
    );
}

// ---- Item 3 lives in bookkeeping.rs, item 2 in capacity.rs, item 10 in store.rs -------------

#[tokio::test(start_paused = true)]
async fn a_value_drop_panicking_on_the_caller_costs_only_that_call() {
    let fuse = Fuse::disarmed();
    let cache: Cache<u64, Trap> = Cache::builder().time_to_live(SEC).tick(MS).build();
    cache.insert(1, Trap::new(1, &fuse, In::Drop));
    fuse.arm(1);
    // The replaced value's drop panics on the writer, after the write is whole.
    panics(|| cache.insert(1, Trap::new(2, &fuse, In::Drop)));
    fuse.disarm();
    assert_eq!(cache.get(&1).map(|t| t.id), Some(2));
    advance(SEC + MS).await;
    assert_eq!(cache.entry_count(), 0);
    let internals = cache.__internals();
    assert_eq!(
        (internals.nodes, internals.records),
        (0, 0),
        "{internals:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_weigher_panicking_on_insert_costs_only_that_insert() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(10)
        .weigher(|_, v| {
            assert_ne!(*v, 666, "the weigher refuses 666");
            1
        })
        .build();
    cache.insert(1, 1);
    panics(|| cache.insert(1, 666));
    panics(|| cache.insert(2, 666));
    assert_eq!((cache.get(&1), cache.get(&2)), (Some(1), None));
    let internals = cache.__internals();
    assert_eq!(
        (internals.policy_weight, internals.policy_records),
        (Some(1), Some(1))
    );
    for k in 10..30 {
        cache.insert(k, k);
    }
    assert_eq!(cache.entry_count(), 10, "the bound holds after the panics");
    assert_eq!(cache.__internals().policy_weight, Some(10));
}

#[tokio::test(start_paused = true)]
async fn a_key_hash_panicking_in_a_call_costs_only_that_call() {
    let fuse = Fuse::disarmed();
    let key = |id| Trap::new(id, &fuse, In::Hash);
    let cache: Cache<Trap, u64> = Cache::builder()
        .max_capacity(100)
        .time_to_live(SEC)
        .tick(MS)
        .build();
    cache.insert(key(1), 1);
    settle().await;
    // Each call's first, second, ... hash of a key panics (a call that hashes fewer times
    // completes); whatever it had done before stays whole.
    let mut panicked = 0;
    for nth in 1..=6 {
        for call in 0..3 {
            fuse.arm(nth);
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match call {
                0 => cache.insert(key(1), 10 + nth as u64),
                1 => drop(cache.remove(&key(3))),
                _ => cache.insert(key(2), 20 + nth as u64),
            }));
            panicked += usize::from(caught.is_err());
            fuse.disarm();
            cache.insert(key(3), 3);
            settle().await;
        }
    }
    assert!(panicked >= 6, "only {panicked} calls panicked");
    assert!(cache.get(&key(1)).is_some(), "key 1 was lost");
    assert!(cache.get(&key(3)).is_some(), "key 3 was lost");
    advance(SEC + 2 * MS).await;
    assert_eq!(cache.entry_count(), 0);
    let internals = cache.__internals();
    assert_eq!(
        (internals.nodes, internals.records),
        (0, 0),
        "{internals:?}"
    );
    assert_eq!(internals.policy_weight, Some(0), "{internals:?}");
}

#[tokio::test(start_paused = true)]
async fn a_key_hash_or_eq_panicking_in_an_unbounded_insert_costs_only_that_insert() {
    for trapped in [In::Hash, In::Eq] {
        let fuse = Fuse::disarmed();
        let key = |id| Trap::new(id, &fuse, trapped);
        let cache: Cache<Trap, u64> = Cache::builder().time_to_live(SEC).tick(MS).build();
        cache.insert(key(0), 0);
        settle().await;
        // Each insert's first, second, ... hash or comparison of a key panics: overwrites of
        // key 0, and new keys that make the map grow (a resize hashes every key).
        let mut panicked = 0;
        for nth in 1..=4 {
            for id in 0..40 {
                fuse.arm(nth);
                let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    cache.insert(key(id), nth as u64)
                }));
                panicked += usize::from(caught.is_err());
                fuse.disarm();
            }
            settle().await;
        }
        assert!(panicked > 0, "{trapped:?}: no insert panicked");
        for id in 0..40 {
            cache.insert(key(id), 99);
        }
        settle().await;
        for id in 0..40 {
            assert_eq!(cache.get(&key(id)), Some(99), "{trapped:?}: key {id}");
        }
        advance(SEC + 2 * MS).await;
        assert_eq!(cache.entry_count(), 0, "{trapped:?}");
        let internals = cache.__internals();
        assert_eq!(
            (internals.nodes, internals.records, internals.tasks_started),
            (0, 0, 1),
            "{trapped:?}: {internals:?}"
        );
    }
}

#[test]
fn build_on_a_current_thread_runtime_expires_only_while_it_is_driven() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let cache: Cache<u64, u64> = Cache::builder()
        .time_to_live(20 * MS)
        .tick(MS)
        .build_on(rt.handle());
    for k in 0..100 {
        cache.insert(k, k);
    }
    std::thread::sleep(40 * MS);
    // Nobody drives the runtime: reads are exact, but nothing is removed.
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.entry_count(), 100);
    // Driven, its task removes them.
    rt.block_on(common::wait_until(
        LIMIT,
        "the driven task to expire",
        || cache.entry_count() == 0,
    ));
    assert_eq!(cache.__internals().records, 0);
}

// ---- Found by review: user code panicking inside the policy's and registry's bookkeeping ----

type Fixed = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

#[tokio::test(start_paused = true)]
async fn weighted_books_survive_a_key_hash_panicking_in_an_evicting_insert() {
    let mut panicked = 0;
    for ttl in [false, true] {
        for nth in 1..=30 {
            let fuse = Fuse::disarmed();
            let key = |id| Trap::new(id, &fuse, In::Hash);
            let mut builder = Cache::builder()
                .max_capacity(8)
                .weigher(|_, _| 1)
                .hasher(Fixed::default());
            if ttl {
                builder = builder.time_to_live(60 * SEC);
            }
            let cache: Cache<Trap, u64, Fixed> = builder.build();
            for k in 0..8 {
                cache.insert(key(k), k);
            }
            settle().await;
            fuse.arm(nth);
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                cache.insert(key(100), 0)
            }));
            fuse.disarm();
            if caught.is_ok() {
                continue;
            }
            panicked += 1;
            for k in 1000..1100 {
                cache.insert(key(k), k);
            }
            // Every entry weighs 1: the books balance when the weight is the entry count.
            let weight = cache.__internals().policy_weight;
            assert_eq!(
                weight,
                Some(cache.entry_count()),
                "ttl {ttl}, the insert's hash {nth} panicked"
            );
            assert!(cache.entry_count() <= 8);
        }
    }
    assert!(panicked >= 10, "only {panicked} inserts panicked");
}

#[tokio::test(start_paused = true)]
async fn a_key_drop_panicking_as_an_overwrite_is_reweighed_keeps_the_books() {
    for nth in 1..=4 {
        let fuse = Fuse::disarmed();
        let cache: Cache<Trap, u32> = Cache::builder()
            .max_capacity(1000)
            .weigher(|_, v: &u32| *v)
            .build();
        cache.insert(Trap::new(9, &fuse, In::Drop), 100);
        cache.insert(Trap::new(1, &fuse, In::Drop), 10);
        fuse.arm(nth);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.insert(Trap::new(1, &fuse, In::Drop), 50)
        }));
        fuse.disarm();
        cache.remove(&Trap::new(1, &fuse, In::Drop));
        assert_eq!(cache.__internals().policy_weight, Some(100), "drop {nth}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_drop_panicking_as_a_load_unregisters_keeps_the_registry_count() {
    let fuse = Fuse::disarmed();
    let cache: Cache<Trap, u64> = Cache::builder().build();
    let (c, f, armed) = (cache.clone(), fuse.clone(), fuse.clone());
    let joined = tokio::spawn(async move {
        c.get_with(Trap::new(1, &f, In::Drop), async move {
            armed.arm(1);
            7
        })
        .await
    })
    .await;
    fuse.disarm();
    assert!(joined.is_err(), "the load's caller panicked");
    assert_eq!(cache.__internals().loads, 0, "no load is in flight");
}

#[tokio::test(start_paused = true)]
async fn a_key_hash_panicking_as_a_failed_load_ends_still_shares_its_error() {
    let fuse = Fuse::disarmed();
    let cache: Cache<Trap, u64> = Cache::builder().build();
    let waiter_loads = Arc::new(AtomicUsize::new(0));
    let leader = {
        let (c, f) = (cache.clone(), fuse.clone());
        tokio::spawn(async move {
            let armed = f.clone();
            c.try_get_with(Trap::new(1, &f, In::Hash), async move {
                tokio::time::sleep(10 * MS).await;
                armed.arm(1); // the next hash of the key: as the flight ends
                Err::<u64, &str>("db down")
            })
            .await
        })
    };
    settle().await;
    let waiter = {
        let (c, f, n) = (cache.clone(), fuse.clone(), Arc::clone(&waiter_loads));
        tokio::spawn(async move {
            c.try_get_with(Trap::new(1, &f, In::Hash), async move {
                n.fetch_add(1, SeqCst);
                Err::<u64, &str>("second load")
            })
            .await
        })
    };
    settle().await;
    advance(20 * MS).await;
    let _ = leader.await;
    let waiter = waiter.await.unwrap();
    fuse.disarm();
    assert_eq!(
        waiter.map_err(|e| *e),
        Err("db down"),
        "the flight's error was overwritten"
    );
    assert_eq!(waiter_loads.load(SeqCst), 0, "the waiter ran its own load");
}

#[tokio::test(start_paused = true)]
async fn a_sweep_left_behind_is_retried_in_an_idle_cache() {
    let fuse = Fuse::disarmed();
    let cache: Cache<Trap, u64> = Cache::builder().tick(MS).build();
    for k in 0..3 {
        cache.insert(Trap::new(k, &fuse, In::Clone), k);
    }
    settle().await;
    fuse.arm(1);
    cache.invalidate_all();
    settle().await;
    fuse.disarm();
    for _ in 0..5 {
        advance(MS).await;
    }
    cache.insert(Trap::new(10, &fuse, In::Clone), 10);
    assert_eq!(cache.entry_count(), 1, "a hidden entry is still counted");
}

#[tokio::test(start_paused = true)]
async fn a_key_drop_panicking_in_a_remove_during_a_load_keeps_the_books() {
    let fuse = Fuse::disarmed();
    let cache: Cache<Trap, u64> = Cache::builder().max_capacity(100).build();
    let leader = {
        let (c, f) = (cache.clone(), fuse.clone());
        tokio::spawn(async move {
            c.get_with(Trap::new(1, &f, In::Drop), async {
                tokio::time::sleep(10 * MS).await;
                7
            })
            .await
        })
    };
    settle().await;
    assert_eq!(cache.__internals().loads, 1);
    cache.insert(Trap::new(1, &fuse, In::Drop), 10);
    let key = Trap::new(1, &fuse, In::Drop);
    for nth in 1..=3 {
        fuse.arm(nth);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.remove(&key)));
        fuse.disarm();
    }
    advance(20 * MS).await;
    let _ = leader.await;
    assert_eq!(cache.get(&key), None, "the remove won over the load");
    assert_eq!(
        cache.__internals().policy_weight,
        Some(cache.entry_count()),
        "phantom weight"
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_hash_panicking_as_the_table_shrinks_costs_that_shrink_only() {
    let fuse = Fuse::disarmed();
    let plain = Fuse::disarmed();
    let cache: Cache<Trap, u64> = Cache::builder().time_to_live(10 * MS).tick(MS).build();
    settle().await;
    cache.insert_with_ttl(Trap::new(0, &fuse, In::Hash), 0, 60 * SEC);
    for id in 1..=4000 {
        cache.insert(Trap::new(id, &plain, In::Clone), id);
    }
    settle().await;
    fuse.arm(1);
    // The burst expires; every shard's table shrinks, and rehashing key 0 panics.
    advance(11 * MS).await;
    assert!(fuse.burned(), "no table shrank past key 0");
    fuse.disarm();
    assert_eq!(cache.entry_count(), 1);
    assert_eq!(cache.get(&Trap::new(0, &plain, In::Clone)), Some(0));
    let internals = cache.__internals();
    assert!(!internals.task_closed, "the task ended: {internals:?}");
    // The next burst's expiry shrinks that shard too.
    for id in 1..=4000 {
        cache.insert(Trap::new(id, &plain, In::Clone), id);
    }
    settle().await;
    advance(11 * MS).await;
    assert_eq!(cache.entry_count(), 1);
    let internals = cache.__internals();
    assert!(
        internals.map_capacity <= internals.map_shards * 128,
        "{internals:?}"
    );
    assert_eq!(internals.tasks_started, 1);
}
