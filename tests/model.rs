//! A model-based property test of the whole cache on paused time.
//!
//! Each case builds a `Cache<u8, u32>` on its own current-thread runtime with paused time, runs
//! a random sequence of operations on it and on a reference model (a `HashMap` of
//! `key -> (value, deadline)` written from the documented semantics), and checks after every
//! operation that both agree:
//!
//! - every `get`, `contains_key`, `remove` and `get_with` returns what the model returns
//!   (reads are exact: an entry is returned while `now < deadline`);
//! - every notification the calling thread must report (`Replaced`, `Explicit`, or `Expired`
//!   for an entry replaced or removed after its deadline) has arrived when the call returns;
//!   notifications the expiry task reports (expiry, `invalidate_all` sweeps) have arrived
//!   once time was advanced and the runtime settled; nothing is reported twice or with
//!   another cause;
//! - after every advance (and a settle), `entry_count()` is exactly what the task must have
//!   left: the live entries plus the expired ones whose deadline's tick has not begun yet
//!   (an expired entry must be gone once the tick boundary its deadline rounds up to has
//!   passed; it may go sooner, when another node of its key fires after the deadline, which
//!   the model learns from the listener), so nothing is counted a tick after its deadline.
//!
//! `the_cache_behaves_like_the_model_to_the_tick` checks all of this. `the_cache_behaves_like_the_model`
//! runs the same cases allowing the task's removals (only those) to come late:
//! `entry_count()` is then bounded by the model's entries and the expiries not reported yet,
//! and everything must be gone three days after the last operation. (The strict variant
//! found a missed wake-up, `an_earlier_deadline_while_a_record_is_queued_wakes_the_task`,
//! since fixed.)
//!
//! Values are unique (every write stores a fresh number), so notifications are matched by
//! value and a duplicate is caught at once.
//!
//! Failures are saved in `tests/model.proptest-regressions` and replayed first on the next
//! run; `PROPTEST_CASES` overrides the number of cases.

mod common;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebb_cache::{Cache, RemovalCause};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError};
use tokio::time::Instant;

const TICK: Duration = Duration::from_millis(10);
const NS: Duration = Duration::from_nanos(1);
const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Keys: few, so that operations collide.
const KEYS: u8 = 8;

#[derive(Clone)]
enum Op {
    Insert(u8),
    InsertWithTtl(u8, Duration),
    Get(u8),
    Remove(u8),
    GetWith(u8),
    ContainsKey(u8),
    InvalidateAll,
    Advance(Duration),
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Insert(k) => write!(f, "insert({k})"),
            Op::InsertWithTtl(k, ttl) => write!(f, "insert_with_ttl({k}, {})", dur(*ttl)),
            Op::Get(k) => write!(f, "get({k})"),
            Op::Remove(k) => write!(f, "remove({k})"),
            Op::GetWith(k) => write!(f, "get_with({k})"),
            Op::ContainsKey(k) => write!(f, "contains_key({k})"),
            Op::InvalidateAll => write!(f, "invalidate_all()"),
            Op::Advance(d) => write!(f, "advance({})", dur(*d)),
        }
    }
}

/// A duration as a short, readable string (`Duration::MAX` as `MAX`).
fn dur(d: Duration) -> String {
    if d == Duration::MAX {
        "MAX".to_string()
    } else {
        format!("{d:?}")
    }
}

/// The cache's settings for one case.
#[derive(Clone)]
struct Setup {
    default_ttl: Option<Duration>,
}

impl fmt::Debug for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.default_ttl {
            None => write!(f, "tick {TICK:?}, no default TTL"),
            Some(ttl) => write!(f, "tick {TICK:?}, default TTL {}", dur(ttl)),
        }
    }
}

fn setup() -> impl Strategy<Value = Setup> {
    prop::sample::select(vec![
        None,
        Some(MS),
        Some(TICK - MS),
        Some(TICK),
        Some(15 * MS),
        Some(25 * MS),
        Some(100 * MS),
        Some(DAY),
        Some(Duration::MAX),
    ])
    .prop_map(|default_ttl| Setup { default_ttl })
}

/// Per-entry TTLs around and across tick boundaries, zero, and far past the horizon.
fn ttl() -> impl Strategy<Value = Duration> {
    prop::sample::select(vec![
        MS,
        Duration::ZERO,
        NS,
        TICK - MS,
        TICK,
        TICK + NS,
        TICK + MS,
        2 * TICK,
        35 * MS,
        SEC,
        DAY,
        Duration::MAX,
    ])
}

/// Steps of time: nothing, less than a tick, exactly ticks, across several, long jumps.
fn step() -> impl Strategy<Value = Duration> {
    prop::sample::select(vec![
        MS,
        Duration::ZERO,
        NS,
        TICK - MS,
        TICK,
        TICK + MS,
        2 * TICK,
        3 * TICK + 5 * MS,
        100 * MS,
        SEC,
        HOUR,
    ])
}

fn op() -> impl Strategy<Value = Op> {
    let key = || 0..KEYS;
    prop_oneof![
        3 => key().prop_map(Op::Insert),
        3 => (key(), ttl()).prop_map(|(k, t)| Op::InsertWithTtl(k, t)),
        3 => key().prop_map(Op::Get),
        2 => key().prop_map(Op::Remove),
        2 => key().prop_map(Op::GetWith),
        1 => key().prop_map(Op::ContainsKey),
        1 => Just(Op::InvalidateAll),
        5 => step().prop_map(Op::Advance),
    ]
}

/// Who reports a removal.
#[derive(Debug, Clone, Copy, PartialEq)]
enum By {
    /// The thread that called `insert`, `remove`, ...: before the call returns.
    Caller,
    /// The expiry task sweeping what `invalidate_all` hid: once the runtime settles.
    Sweep,
    /// The expiry task removing an expired entry: once its deadline's tick has begun.
    Expiry,
}

/// What the model expects the listener to receive for one value.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Expected {
    key: u8,
    /// The cause, or `None` where either `Expired` or `Explicit` is accepted (see
    /// [`Model::invalidate_all`]).
    cause: Option<RemovalCause>,
    by: By,
}

/// The reference model: the documented semantics, on the same paused clock.
struct Model {
    epoch: Instant,
    now: Instant,
    default_ttl: Option<Duration>,
    horizon: Duration,
    /// Whether removal timing is checked to the tick (see [`Mode`]).
    mode: Mode,
    /// Entries the cache holds: live ones, and expired ones the task has not removed yet.
    entries: HashMap<u8, (u32, Option<Instant>)>,
    /// Every notification due so far, by value.
    expected: HashMap<u32, Expected>,
}

/// How closely the expiry task's timing is checked.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// An expired entry leaves (and is reported) exactly when its deadline's tick begins:
    /// `entry_count()` is exact after every advance.
    Strict,
    /// Removal by the task may come later than one tick (until the cache's next wake-up):
    /// `entry_count()` is bounded, and an entry the task should have removed may still be
    /// taken by a call or swept. Everything else is checked as in `Strict`.
    LateRemovalAllowed,
}

impl Model {
    fn is_live(&self, deadline: Option<Instant>) -> bool {
        deadline.is_none_or(|d| self.now < d)
    }

    /// The deadline of an entry written now with `ttl`: none at or past the horizon.
    fn deadline(&self, ttl: Option<Duration>) -> Option<Instant> {
        match ttl {
            Some(ttl) if ttl < self.horizon => Some(self.now + ttl),
            _ => None,
        }
    }

    fn live(&self, key: u8) -> Option<u32> {
        match self.entries.get(&key) {
            Some(&(v, d)) if self.is_live(d) => Some(v),
            _ => None,
        }
    }

    fn live_count(&self) -> usize {
        self.live_at(self.now)
    }

    /// How many held entries were live at `t`.
    fn live_at(&self, t: Instant) -> usize {
        self.entries
            .values()
            .filter(|(_, d)| d.is_none_or(|d| t < d))
            .count()
    }

    fn expect(&mut self, value: u32, key: u8, cause: Option<RemovalCause>, by: By) {
        let previous = self.expected.insert(value, Expected { key, cause, by });
        assert!(previous.is_none(), "model bug: value {value} leaves twice");
    }

    /// `key`'s entry leaves by a call: `live_cause` if it was live, `Expired` if its deadline
    /// had passed. Returns the value if it was live.
    fn leave(&mut self, key: u8, live_cause: RemovalCause) -> Option<u32> {
        let (value, deadline) = self.entries.remove(&key)?;
        let live = self.is_live(deadline);
        let cause = if live {
            live_cause
        } else {
            RemovalCause::Expired
        };
        self.expect(value, key, Some(cause), By::Caller);
        live.then_some(value)
    }

    fn insert(&mut self, key: u8, value: u32, ttl: Option<Duration>) {
        self.leave(key, RemovalCause::Replaced);
        let deadline = self.deadline(ttl);
        self.entries.insert(key, (value, deadline));
    }

    fn insert_with_ttl(&mut self, key: u8, value: u32, ttl: Duration) {
        if ttl.is_zero() {
            self.leave(key, RemovalCause::Explicit);
        } else {
            self.insert(key, value, Some(ttl));
        }
    }

    fn remove(&mut self, key: u8) -> Option<u32> {
        self.leave(key, RemovalCause::Explicit)
    }

    fn get_with(&mut self, key: u8, fresh: u32) -> u32 {
        match self.live(key) {
            Some(v) => v,
            None => {
                self.insert(key, fresh, self.default_ttl);
                fresh
            }
        }
    }

    /// Everything held leaves, reported by the task's sweep: `Explicit` for live entries.
    ///
    /// An entry whose deadline had already passed (but which the task had not removed yet) is
    /// accepted as `Expired` or `Explicit`: ebb reports it `Explicit`, unlike `remove`, so the
    /// cause depends on whether the task got there first (see
    /// `invalidate_all_reports_an_expired_entry_as_expired`).
    fn invalidate_all(&mut self) {
        for (key, (value, deadline)) in std::mem::take(&mut self.entries) {
            let cause = self.is_live(deadline).then_some(RemovalCause::Explicit);
            self.expect(value, key, cause, By::Sweep);
        }
    }

    /// Time moved on by `d` and the runtime settled, the listener having received `log`.
    ///
    /// The task must have removed every expired entry whose deadline's tick (the deadline
    /// rounded up to a tick boundary) has begun. It may have removed an expired entry sooner:
    /// it removes whatever has expired when a node fires, and a node filed for an earlier
    /// deadline of the key fires sooner. The model learns which from the notifications:
    /// a value still held that the listener already received has left.
    fn advance(&mut self, d: Duration, log: &[(u8, u32, RemovalCause)]) {
        self.now += d;
        let now = self.since_epoch(self.now);
        let tick = TICK.as_nanos();
        let reported: HashSet<u32> = log.iter().map(|&(_, v, _)| v).collect();
        let gone: Vec<(u8, u32, bool)> = self
            .entries
            .iter()
            .filter_map(|(&k, &(v, d))| {
                let d = self.since_epoch(d?);
                let due = d.div_ceil(tick) * tick <= now;
                (due || (d <= now && reported.contains(&v))).then_some((k, v, due))
            })
            .collect();
        for (key, value, due) in gone {
            self.entries.remove(&key);
            // Removed late, such an entry may still be swept by `invalidate_all` (`Explicit`).
            let cause = match self.mode {
                Mode::LateRemovalAllowed if due => None,
                _ => Some(RemovalCause::Expired),
            };
            self.expect(value, key, cause, By::Expiry);
        }
    }

    fn since_epoch(&self, t: Instant) -> u128 {
        (t - self.epoch).as_nanos()
    }
}

type Log = Arc<Mutex<Vec<(u8, u32, RemovalCause)>>>;

/// Compare what the listener received with what the model expects, and return how many
/// expected notifications have not arrived. With `settled`, the task has caught up: in
/// strict mode every notification must be there, otherwise all but late expiries.
/// Without, only those the calling thread reports must be there.
fn check_notifications(
    log: &Log,
    model: &Model,
    settled: bool,
    at: &str,
) -> Result<usize, TestCaseError> {
    let log = log.lock().unwrap();
    let mut seen: HashMap<u32, (u8, RemovalCause)> = HashMap::new();
    for &(key, value, cause) in log.iter() {
        prop_assert!(
            seen.insert(value, (key, cause)).is_none(),
            "{at}: value {value} of key {key} reported twice; log {log:?}"
        );
        let expected = model.expected.get(&value);
        prop_assert!(
            expected.is_some(),
            "{at}: ({key}, {value}, {cause:?}) reported but the model expects no removal of \
             value {value}"
        );
        let expected = expected.unwrap();
        prop_assert_eq!(key, expected.key, "{}: key of value {}", at, value);
        match expected.cause {
            Some(c) => prop_assert_eq!(cause, c, "{}: cause for key {} value {}", at, key, value),
            None => prop_assert!(
                matches!(cause, RemovalCause::Expired | RemovalCause::Explicit),
                "{at}: cause {cause:?} for key {key} value {value} that left after its deadline"
            ),
        }
    }
    let mut missing = 0;
    for (value, e) in &model.expected {
        if seen.contains_key(value) {
            continue;
        }
        missing += 1;
        let required = match e.by {
            By::Caller => true,
            By::Sweep => settled,
            By::Expiry => settled && model.mode == Mode::Strict,
        };
        prop_assert!(
            !required,
            "{}: missing notification ({}, {}, {:?}) from {:?}",
            at,
            e.key,
            value,
            e.cause,
            e.by
        );
    }
    Ok(missing)
}

async fn run(setup: Setup, ops: Vec<Op>, mode: Mode) -> Result<(), TestCaseError> {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let mut builder = Cache::builder()
        .tick(TICK)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)));
    if let Some(ttl) = setup.default_ttl {
        builder = builder.time_to_live(ttl);
    }
    let cache: Cache<u8, u32> = builder.build();
    let epoch = Instant::now();
    let mut model = Model {
        epoch,
        now: epoch,
        default_ttl: setup.default_ttl,
        horizon: cache.horizon(),
        mode,
        entries: HashMap::new(),
        expected: HashMap::new(),
    };
    let mut next_value = 0u32;
    let mut fresh = || {
        next_value += 1;
        next_value
    };
    common::settle().await;

    for (i, op) in ops.iter().enumerate() {
        let at = format!("op #{i} {op:?} at t = {:?}", model.now - epoch);
        match *op {
            Op::Insert(k) => {
                let v = fresh();
                cache.insert(k, v);
                model.insert(k, v, model.default_ttl);
            }
            Op::InsertWithTtl(k, ttl) => {
                let v = fresh();
                cache.insert_with_ttl(k, v, ttl);
                model.insert_with_ttl(k, v, ttl);
            }
            Op::Get(k) => prop_assert_eq!(cache.get(&k), model.live(k), "{}", at),
            Op::ContainsKey(k) => {
                prop_assert_eq!(cache.contains_key(&k), model.live(k).is_some(), "{}", at)
            }
            Op::Remove(k) => prop_assert_eq!(cache.remove(&k), model.remove(k), "{}", at),
            Op::GetWith(k) => {
                let v = fresh();
                let got = cache.get_with(k, async move { v }).await;
                prop_assert_eq!(got, model.get_with(k, v), "{}", at);
            }
            Op::InvalidateAll => {
                cache.invalidate_all();
                model.invalidate_all();
            }
            Op::Advance(d) => {
                common::advance(d).await;
                model.advance(d, &log.lock().unwrap());
                prop_assert_eq!(Instant::now(), model.now, "{}: clocks apart", at);
            }
        }
        let settled = matches!(op, Op::Advance(_));
        let missing = check_notifications(&log, &model, settled, &at)?;
        if settled {
            check_count(&cache, &model, missing, &at)?;
        }
    }

    // One more tick after the last op: what had expired by then is gone (in strict mode),
    // what is live is counted, and what expired during that tick may or may not be gone.
    let last = model.now;
    common::advance(TICK).await;
    model.advance(TICK, &log.lock().unwrap());
    let at = "one tick after the last op";
    let missing = check_notifications(&log, &model, true, at)?;
    check_count(&cache, &model, missing, at)?;
    if mode == Mode::Strict {
        prop_assert!(cache.entry_count() <= model.live_at(last) as u64, "{}", at);
    } else {
        // Every finite deadline is at most a day after the last write, and the task wakes
        // at the earliest one it holds: after three days everything expired is gone.
        common::advance(3 * DAY).await;
        model.advance(3 * DAY, &log.lock().unwrap());
        let at = "three days after the last op";
        prop_assert_eq!(check_notifications(&log, &model, true, at)?, 0, "{}", at);
        prop_assert_eq!(cache.entry_count(), model.live_count() as u64, "{}", at);
    }

    // The last handle goes: no notification for what is left, and the task ends.
    let reported = log.lock().unwrap().len();
    drop(cache);
    common::settle().await;
    prop_assert_eq!(log.lock().unwrap().len(), reported, "reported after drop");
    prop_assert_eq!(
        common::alive_tasks(),
        0,
        "the expiry task outlived the cache"
    );
    Ok(())
}

/// `entry_count()` after an advance and a settle, `missing` notifications not arrived yet.
fn check_count(
    cache: &Cache<u8, u32>,
    model: &Model,
    missing: usize,
    at: &str,
) -> Result<(), TestCaseError> {
    let count = cache.entry_count() as usize;
    let held = model.entries.len();
    let what = || {
        format!(
            "{at}: entry_count {count}; the model holds {:?} (live: {}, missing notifications: \
             {missing})",
            model.entries,
            model.live_count()
        )
    };
    match model.mode {
        Mode::Strict => {
            prop_assert_eq!(count, held, "{}", what());
            // Removal lags at most one tick: nothing counted that expired a tick ago.
            let tick_ago = model.now.checked_sub(TICK).unwrap_or(model.epoch);
            prop_assert!(count <= model.live_at(tick_ago), "{}", what());
        }
        Mode::LateRemovalAllowed => {
            // Never removed early; removed late only if its notification is missing.
            prop_assert!(held <= count && count <= held + missing, "{}", what());
        }
    }
    Ok(())
}

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Everything but the exact timing of removal by the task.
    #[test]
    fn the_cache_behaves_like_the_model(
        setup in setup(),
        ops in prop::collection::vec(op(), 1..=60),
    ) {
        paused_runtime().block_on(run(setup, ops, Mode::LateRemovalAllowed))?;
    }

    /// Everything, removal by the task to the tick included.
    #[test]
    fn the_cache_behaves_like_the_model_to_the_tick(
        setup in setup(),
        ops in prop::collection::vec(op(), 1..=60),
    ) {
        paused_runtime().block_on(run(setup, ops, Mode::Strict))?;
    }
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// ebb reports an entry that had expired, but that the task had not removed yet, as
/// `Explicit` when `invalidate_all` sweeps it, yet as `Expired` when `remove`,
/// `insert_with_ttl(.., ZERO)` or an `insert` takes it, or when the task got there first.
/// The cause then depends on the task's timing. The model accepts either; this pins the
/// consistent answer.
#[tokio::test(start_paused = true)]
async fn invalidate_all_reports_an_expired_entry_as_expired() {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let cache: Cache<u8, u32> = Cache::builder()
        .tick(SEC)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build();
    cache.insert_with_ttl(1, 10, 10 * MS);
    cache.insert_with_ttl(2, 20, 10 * MS);
    common::advance(20 * MS).await; // both expired; the task looks at t = 1 s
    assert_eq!(cache.remove(&1), None);
    cache.invalidate_all();
    common::settle().await;
    let mut log = log.lock().unwrap().clone();
    log.sort_unstable_by_key(|&(k, v, _)| (k, v));
    assert_eq!(
        log,
        vec![
            (1, 10, RemovalCause::Expired),
            (2, 20, RemovalCause::Expired)
        ],
        "both had expired before they left"
    );
}

/// Found by the model: an overwrite that brings a deadline earlier while the key's first
/// hand-off record is still queued (`PENDING`) queues nothing and wakes nobody, so the task
/// sleeps on until its previous wake-up (here a day) and the expired entry stays counted,
/// and unreported, all that time. Reads stay exact.
#[tokio::test(start_paused = true)]
async fn an_earlier_deadline_while_a_record_is_queued_wakes_the_task() {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let cache: Cache<u8, u32> = Cache::builder()
        .tick(TICK)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build();
    cache.insert_with_ttl(0, 0, DAY);
    common::settle().await; // the task files key 0 and sleeps until t = 1 day
    cache.insert_with_ttl(1, 1, DAY); // queued; no need to wake the task for a day
    cache.insert_with_ttl(1, 2, 10 * MS); // due in one tick: the task must wake
    common::advance(10 * MS + TICK).await;
    assert_eq!(cache.get(&1), None, "reads are exact");
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            (1, 1, RemovalCause::Replaced),
            (1, 2, RemovalCause::Expired)
        ],
        "removed no later than one tick after its deadline"
    );
    assert_eq!(cache.entry_count(), 1);
}
