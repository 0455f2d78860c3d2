//! Bounded stress on a multi-thread runtime: several tasks hammer one cache with a seeded
//! random mix of writes, reads, removals and loads over a few keys, with TTLs of a few
//! milliseconds and a 1 ms tick, so that expiry by the task, overwrites of expired entries and
//! loads superseded by writes all race. Each round then checks the books:
//!
//! - with the expiry task frozen inside the listener, stored values minus notifications equal
//!   `entry_count()` exactly;
//! - once everything has expired, every stored value was reported exactly once, under its own
//!   key, and nothing else was; the statistics agree;
//! - once the last handle is dropped, the task count returns to baseline and every value ever
//!   created has been dropped.
//!
//! The seed is printed; set `EBB_STRESS_SEED` to replay one.

mod common;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::{wait_until_blocking, Counted};
use ebb_cache::{Cache, RemovalCause};

/// The cache's capacity, below the 64 keys the workers use.
const CAPACITY: u64 = 48;
const WORKERS: usize = 2;
const TASKS: u64 = 6;
const ITERATIONS: u64 = 20_000;
const ROUNDS: u64 = 4;
const KEYS: u64 = 64;
/// A key no worker uses.
const SENTINEL: u64 = 1_000;
const LIMIT: Duration = Duration::from_secs(10);
const MS: Duration = Duration::from_millis(1);

type Value = Arc<Counted>;

/// SplitMix64: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// How a value came to be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Origin {
    Insert,
    Load,
}

/// One round's bookkeeping, shared by the workers and the listener.
struct Books {
    drops: Arc<AtomicUsize>,
    created: AtomicUsize,
    /// `insert` and `insert_with_ttl` calls: each stores its value.
    inserts: AtomicUsize,
    /// Loaders run: each may or may not store its value.
    loads: AtomicUsize,
    /// Next value number.
    next: AtomicUsize,
    /// Times each value was reported, by value number.
    reported: Vec<AtomicU8>,
    /// The origin of each value number (written once, before the value is shared).
    origins: Vec<AtomicU8>,
    /// Listener calls begun, and finished.
    entered: AtomicUsize,
    notified: AtomicUsize,
    /// Notifications whose key or cause was wrong.
    wrong: AtomicUsize,
    /// Held for writing to freeze every listener call (the expiry task's included).
    gate: RwLock<()>,
}

impl Books {
    fn new(values: usize) -> Self {
        Books {
            drops: Arc::default(),
            created: AtomicUsize::new(0),
            inserts: AtomicUsize::new(0),
            loads: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            reported: (0..values).map(|_| AtomicU8::new(0)).collect(),
            origins: (0..values).map(|_| AtomicU8::new(0)).collect(),
            entered: AtomicUsize::new(0),
            notified: AtomicUsize::new(0),
            wrong: AtomicUsize::new(0),
            gate: RwLock::new(()),
        }
    }

    /// A new value for `key`: its id holds its number and its key.
    fn value(&self, key: u64, origin: Origin) -> Value {
        let n = self.next.fetch_add(1, SeqCst);
        assert!(n < self.reported.len(), "more values than planned");
        self.origins[n].store(origin as u8 + 1, SeqCst);
        self.created.fetch_add(1, SeqCst);
        Counted::new(((n as u64) << 16) | key, &self.drops)
    }

    fn listen(&self, key: u64, value: Value, _cause: RemovalCause) {
        self.entered.fetch_add(1, SeqCst);
        let _open = self.gate.read().unwrap();
        if value.id & 0xFFFF != key {
            self.wrong.fetch_add(1, SeqCst);
        }
        self.reported[(value.id >> 16) as usize].fetch_add(1, SeqCst);
        drop(value);
        self.notified.fetch_add(1, SeqCst);
    }

    fn count(&self, origin: Origin, times: u8) -> usize {
        (0..self.next.load(SeqCst))
            .filter(|&n| {
                self.origins[n].load(SeqCst) == origin as u8 + 1
                    && self.reported[n].load(SeqCst) == times
            })
            .count()
    }
}

/// One worker's share of the churn.
async fn churn(cache: Cache<u64, Value>, books: Arc<Books>, seed: u64) {
    let mut rng = Rng(seed);
    for i in 0..ITERATIONS {
        let key = rng.below(KEYS);
        match rng.below(100) {
            0..=24 => {
                cache.insert(key, books.value(key, Origin::Insert));
                books.inserts.fetch_add(1, SeqCst);
            }
            25..=39 => {
                let ttl = MS * (1 + rng.below(10) as u32);
                cache.insert_with_ttl(key, books.value(key, Origin::Insert), ttl);
                books.inserts.fetch_add(1, SeqCst);
            }
            40..=69 => {
                if let Some(v) = cache.get(&key) {
                    assert_eq!(v.id & 0xFFFF, key, "a value under another key");
                }
            }
            70..=79 => {
                if let Some(v) = cache.remove(&key) {
                    assert_eq!(v.id & 0xFFFF, key, "removed a value of another key");
                }
            }
            _ => {
                // Some loads take a turn of the scheduler, so that callers wait on them and
                // writes supersede them.
                let slow = rng.below(4) == 0;
                let books2 = Arc::clone(&books);
                let v = cache
                    .get_with(key, async move {
                        if slow {
                            tokio::task::yield_now().await;
                        }
                        books2.loads.fetch_add(1, SeqCst);
                        books2.value(key, Origin::Load)
                    })
                    .await;
                assert_eq!(v.id & 0xFFFF, key, "loaded a value of another key");
            }
        }
        // Spread the churn over time, so that entries expire while it runs.
        if i % 64 == 0 {
            tokio::time::sleep(MS).await;
        } else if i % 16 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

/// `entry_count()` from another thread, so that a listener holding a shard lock shows up
/// as a failure rather than a hang.
fn entry_count(cache: &Cache<u64, Value>) -> u64 {
    let (tx, rx) = std::sync::mpsc::channel();
    let cache = cache.clone();
    std::thread::spawn(move || tx.send(cache.entry_count()).unwrap());
    rx.recv_timeout(LIMIT)
        .expect("entry_count() blocked while a listener ran")
}

fn round(rt: &tokio::runtime::Runtime, seed: u64, round: u64) {
    let books = Arc::new(Books::new((TASKS * ITERATIONS) as usize + 200));
    let base = rt.metrics().num_alive_tasks();
    let mut rng = Rng(seed ^ round);
    let ttl = MS * (1 + rng.below(10) as u32);
    let listener = Arc::clone(&books);
    let cache: Cache<u64, Value> = Cache::builder()
        .time_to_live(ttl)
        .tick(MS)
        .max_capacity(CAPACITY) // of 64 keys: evictions for size happen too
        .record_stats()
        .eviction_listener(move |k, v, cause| listener.listen(k, v, cause))
        .build_on(rt.handle());

    let started = Instant::now();
    rt.block_on(async {
        let workers: Vec<_> = (0..TASKS)
            .map(|t| {
                let (cache, books) = (cache.clone(), Arc::clone(&books));
                tokio::spawn(churn(cache, books, rng.next() ^ t))
            })
            .collect();
        for w in workers {
            w.await.expect("a worker failed");
        }
    });
    let churned = started.elapsed();

    // Freeze the task inside the listener: then nothing leaves the map, and what is held is
    // exactly what was stored minus what was reported (the frozen call included: its entry
    // left the map before it was reported). The sentinel guarantees one more expiry; its
    // key is new, so inserting it calls no listener on this thread.
    // With a capacity, the sentinel's insert must not evict (that would call the listener on
    // this thread, behind the closed gate): make room first, while the gate is open.
    // (The policy's own count, which may still include an entry the task is removing.)
    for k in 0..64 {
        if cache.__internals().policy_weight < Some(CAPACITY) {
            break;
        }
        cache.remove(&k);
    }
    let gate = books.gate.write().unwrap();
    cache.insert_with_ttl(SENTINEL, books.value(SENTINEL, Origin::Insert), 5 * MS);
    books.inserts.fetch_add(1, SeqCst);
    wait_until_blocking(LIMIT, "the expiry task to reach the listener", || {
        books.entered.load(SeqCst) == books.notified.load(SeqCst) + 1
    });
    let held = entry_count(&cache) as usize;
    let left = books.entered.load(SeqCst);
    drop(gate);

    // The map can be empty while the task still holds entries it removed and has yet to
    // report (it reports a batch after removing it): wait until the books balance, or fail
    // after LIMIT if a notification was lost.
    wait_until_blocking(LIMIT, "every entry to expire and be reported", || {
        cache.entry_count() == 0
            && books.entered.load(SeqCst) == books.notified.load(SeqCst)
            && books.notified.load(SeqCst)
                == books.inserts.load(SeqCst) + books.count(Origin::Load, 1)
    });
    let inserts = books.inserts.load(SeqCst);
    let notified = books.notified.load(SeqCst);
    // Nothing is left, so the capacity policy accounts for nothing.
    assert_eq!(
        cache.__internals().policy_weight,
        Some(0),
        "the capacity policy's books drifted"
    );
    assert_eq!(
        books.wrong.load(SeqCst),
        0,
        "notifications with a wrong key or cause"
    );
    let twice = (0..books.next.load(SeqCst))
        .filter(|&n| books.reported[n].load(SeqCst) > 1)
        .count();
    assert_eq!(twice, 0, "values reported more than once");
    assert_eq!(
        books.count(Origin::Insert, 0),
        0,
        "inserted values never reported"
    );
    // A load stored its value if and only if it was reported: a superseded one was not.
    let loads_stored = books.count(Origin::Load, 1);
    let stored = inserts + loads_stored;
    assert_eq!(
        notified, stored,
        "every stored value reported once it expired"
    );
    assert_eq!(
        stored - left,
        held,
        "entry_count() with the task frozen: {stored} stored, {left} reported"
    );
    let stats = cache.stats();
    assert_eq!(
        (stats.inserts + stats.updates) as usize,
        stored,
        "stored writes by the statistics: {stats:?}"
    );
    assert_eq!(
        (stats.replaced + stats.explicit + stats.expired + stats.evicted_for_size) as usize,
        notified,
        "{stats:?}"
    );
    let loads = books.loads.load(SeqCst);
    assert_eq!(stats.load_successes as usize, loads, "{stats:?}");
    assert!(loads_stored <= loads);

    // Odd rounds leave entries behind (fewer than the capacity, so none is evicted):
    // dropping the last handle frees them, unreported.
    if round % 2 == 1 {
        for k in 0..40 {
            cache.insert_with_ttl(k, books.value(k, Origin::Insert), Duration::from_secs(3600));
        }
    }
    drop(cache);
    wait_until_blocking(LIMIT, "the expiry task to end", || {
        rt.metrics().num_alive_tasks() == base
    });
    let created = books.created.load(SeqCst);
    wait_until_blocking(LIMIT, "every value to be dropped", || {
        books.drops.load(SeqCst) == created
    });
    assert_eq!(books.notified.load(SeqCst), notified, "reported after drop");
    println!(
        "round {round}: ttl {ttl:?}, {} ops in {churned:?}, {inserts} inserts, \
         {loads} loads ({loads_stored} stored), {notified} notifications ({} expired, {} \
         replaced, {} explicit), {held} held at the check",
        TASKS * ITERATIONS,
        stats.expired,
        stats.replaced,
        stats.explicit
    );
}

#[test]
fn concurrent_churn_keeps_the_books_balanced() {
    let seed = std::env::var("EBB_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("EBB_STRESS_SEED={seed}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .unwrap();
    for r in 0..ROUNDS {
        round(&rt, seed, r);
    }
}
