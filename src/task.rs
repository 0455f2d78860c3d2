//! The expiry task: one per cache. It drains the writers' hand-off records into its wheel
//! (linking the nodes writers queued, freeing the ones they orphaned, and handing each
//! stripe a pool of free ids), sweeps what `invalidate_all` hid, and removes entries whose
//! deadline has passed.
//!
//! Each time it wakes the task upgrades its `Weak` to the store, works, publishes the tick it
//! wants to wake at next, and lets go of the store before it sleeps on three things: the
//! cancellation token (the last handle was dropped), the hand-off `Notify`, and a
//! `tokio::time::Interval` reset to the wheel's next expiration.
//!
//! Invariants:
//! - **One task, no strong reference while asleep**: it holds the store only while working,
//!   so dropping the last handle frees everything at once when the task sleeps, or when the
//!   current batch ends when it works.
//! - **Filing takes no shard lock**: a queued node is linked at the tick its record names,
//!   without looking at the entry; the entry is looked at when the node fires.
//! - **The store decides, the task acts**: for a node that fires the store removes the entry
//!   (only if it still holds that node and is expired or invalidated *now*), or says to
//!   re-file or drop the node, or that the node was orphaned and its record, still queued,
//!   frees it (see `store/handoff.rs`); the task only updates its wheel and hands the removal
//!   to the store's report. The sweep's removals orphan nodes through the hand-off too.
//! - **User code cannot stop it**: a panic in a key's `Hash` or `Eq` as a node fires leaves
//!   the entry as it was and the node fires again a tick later; one in a key's `Clone` as it
//!   sweeps leaves that key for the next wake's sweep; one in a `Drop` or a notification costs
//!   that notification. Each is logged.
//! - **Node ids follow the live entries**: every id the task frees goes to a stripe's pool or
//!   to the hand-off's reserve, where writers take ids before any fresh one.
//! - **Idle costs nothing**: with no node in the wheel the interval is not polled at all; with
//!   nodes it is reset to the next occupied slot, so a far deadline costs a handful of wake-ups.
//!   `MissedTickBehavior::Delay`: after a stall the task runs once, not in a burst. The one
//!   exception is what the user asked for ([`Reports`]): a `stats_interval` line and, with
//!   the `metrics` feature, `publish_metrics(interval)`, each waking the task once a period.
//! - **Bounded batches**: it yields after every [`BATCH`] records, nodes or removals (a
//!   drain counts them across the hand-off's stripes).
//! - **Closed once stopped**: however it stops (cancelled, runtime shut down), the hand-off is
//!   closed so that writers stop queueing records no one will read.

use std::cell::Cell;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, trace, Instrument};

use crate::error::BuildError;
use crate::listener::RemovalCause;
use crate::stats::{Counter, LagBatch};
use crate::store::handoff::{Records, Signals, Taken};
use crate::store::{Fired, Retired, Store, UNFILED};
use crate::time::clock::{Clock, NEVER};
use crate::time::wheel::{NodeId, Wheel};

/// The most records, removals or fired nodes handled between two yields.
const BATCH: usize = 1024;

/// A spare hand-off map larger than this is not kept for reuse.
const SPARE_CAPACITY: usize = 4096;

/// Free ids a stripe's pool gets beyond what its writers took since the last swap.
const MIN_POOL: usize = 16;

/// Whether `handle`'s runtime has timers: checked on the starting thread, so that a runtime
/// without them is reported to the caller rather than killing the task. A `Sleep` made and
/// dropped unpolled registers nothing. The last runtime found to have them is remembered per
/// thread (runtime ids are never reused): a cache built per request checks once, not on every
/// build (each check enters the runtime and clones its handle twice).
fn timers(handle: &Handle, at: tokio::time::Instant) -> Result<(), BuildError> {
    thread_local! {
        static TIMED: Cell<Option<tokio::runtime::Id>> = const { Cell::new(None) };
    }
    let id = handle.id();
    if TIMED.with(Cell::get) == Some(id) {
        return Ok(());
    }
    let _runtime = handle.enter();
    // `sleep_until` a known instant: no clock read.
    std::panic::catch_unwind(|| drop(tokio::time::sleep_until(at)))
        .map_err(|_| BuildError::TimersDisabled)?;
    TIMED.with(|timed| timed.set(Some(id)));
    Ok(())
}

/// The task's interval, made when the task first runs (inside its runtime).
fn interval(tick: Duration) -> Interval {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// Start the cache's expiry task on `handle`'s runtime, unless one runs already (or the last
/// handle is gone). Returns whether this call started it. The new task takes over the
/// entries no running task knows (a task before it may have died with its runtime, or
/// writes came before it first ran).
pub(crate) fn start<K, V, S>(
    store: &Arc<Store<K, V, S>>,
    handle: &Handle,
) -> Result<bool, BuildError>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    let signals = Arc::clone(&store.signals);
    if !signals.claim_task() {
        return Ok(false);
    }
    if let Err(e) = timers(handle, store.clock.instant_at(0)) {
        signals.task_ended();
        return Err(e);
    }
    // Built before the hand-off opens and before the task first runs, so that a runtime
    // dropping the task unpolled still closes it and lets another task start.
    #[cfg(any(test, feature = "internals"))]
    signals.tasks_alive.fetch_add(1, Ordering::SeqCst);
    let exit = Exit {
        signals: Arc::clone(&signals),
        close: close::<K, V, S>,
    };
    let seed = Seed::<K, V, S> {
        // Read only when a periodic report was asked for: a cache built per request does
        // without the clock read.
        started: store.reports_asked().then(|| {
            // In the runtime: a paused clock is the runtime's.
            let _runtime = handle.enter();
            tokio::time::Instant::now()
        }),
        exit,
        // Whatever an invalidation hid before this task and no sweep removed yet goes at
        // its first wake.
        sweep_again: store.has_unswept(),
        swept: store.generation(),
        types: PhantomData,
    };
    drop(handle.spawn(seed.grow()));
    Ok(true)
}

/// What a task starts from: all a task that never gets to run holds. A cache built and
/// dropped before its task first runs (a cache per request) pins no more than this, and the
/// task's state ([`Task`]: the wheel, the interval, buffers) is made, boxed, only when it
/// runs and the cache is still there.
struct Seed<K: Hash + Eq, V, S: BuildHasher + Clone> {
    /// When the task was started, if periodic reports count from it.
    started: Option<tokio::time::Instant>,
    exit: Exit,
    sweep_again: bool,
    swept: u32,
    types: PhantomData<(K, V, S)>,
}

impl<K, V, S> Seed<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    async fn grow(self) {
        let Some(store) = self
            .exit
            .signals
            .store::<Store<K, V, S>>()
            .filter(|store| !store.token().is_cancelled())
        else {
            return; // The cache is gone already: `exit` closes the hand-off.
        };
        // The hand-off opens only now: writes made before this (a cache built per request,
        // used and dropped before its task first runs) queue nothing; they set `missed`,
        // and this task takes their entries over from the map.
        let (base, missed) = store.handoff.open(&self.exit.signals);
        // Entries to take over: ids of a task before this one (`base > 0`), or entries written
        // while no task ran.
        let takeover = base > 0 || missed;
        let span = tracing::debug_span!("ebb", cache = %store.name);
        let task = Box::new(Task {
            store: Arc::downgrade(&store),
            clock: store.clock,
            signals: Arc::clone(&self.exit.signals),
            interval: interval(store.clock.tick()),
            reports: Reports::new(&store, self.started),
            token: store.token().clone(),
            wheel: Wheel::new(),
            base,
            takeover,
            spare: None,
            links: Vec::new(),
            orphans: Vec::new(),
            pools: Vec::new(),
            free: Vec::new(),
            sweep_again: self.sweep_again,
            swept: self.swept,
            work: Work::default(),
            lag: LagBatch::default(),
            due: Vec::new(),
            fired: Vec::new(),
            _exit: self.exit,
        });
        drop(store);
        // Boxed too: the spawned future stays the size of a `Seed`.
        Box::pin(task.run().instrument(span)).await;
    }
}

/// What one wake did, for the trace line.
#[derive(Debug, Default, Clone, Copy)]
struct Work {
    filed: usize,
    fired: usize,
    expired: usize,
    swept: usize,
    reloads: usize,
}

/// The periodic statistics line: its interval and the counts at the last line.
struct StatsLine {
    every: Interval,
    period: Duration,
    hits: u64,
    misses: u64,
}

impl StatsLine {
    /// Log the line for the lookups since the last one, if there were any.
    fn emit(
        &mut self,
        store: &Store<impl Hash + Eq + Clone, impl Clone, impl BuildHasher + Clone>,
    ) {
        let Some(counters) = store.counters() else {
            return;
        };
        let (hits, misses) = (counters.sum(Counter::Hit), counters.sum(Counter::Miss));
        let (hit, miss) = (hits - self.hits, misses - self.misses);
        (self.hits, self.misses) = (hits, misses);
        if hit + miss == 0 {
            return;
        }
        let qpm = ((hit + miss) as f64 * 60.0 / self.period.as_secs_f64()).round() as u64;
        let hit_ratio = hit as f64 * 100.0 / (hit + miss) as f64;
        let elements = store.map.len();
        info!(
            qpm,
            hit_ratio,
            elements,
            hit,
            miss,
            "cache({}) - qpm: {qpm}, hit_ratio: {hit_ratio:.1}%, elements: {elements}, hit: {hit}, miss: {miss}",
            store.name
        );
    }
}

/// Waits for the next statistics line, or forever if there is none.
async fn next_line(line: &mut Option<StatsLine>) {
    match line {
        Some(line) => drop(line.every.tick().await),
        None => std::future::pending().await,
    }
}

/// A periodic timer that fires first one `period` from now and skips the ticks it misses.
fn every(since: tokio::time::Instant, period: Duration) -> Interval {
    let mut every = tokio::time::interval_at(since + period, period);
    every.set_missed_tick_behavior(MissedTickBehavior::Skip);
    every
}

/// What the task does on timers of its own, each only when asked for: the statistics line
/// (`stats_interval`) and, with the `metrics` feature, publishing metrics
/// (`publish_metrics`). They are the only reasons an otherwise idle cache wakes up.
struct Reports {
    line: Option<StatsLine>,
    #[cfg(feature = "metrics")]
    publish: Option<Interval>,
}

/// The report that is due.
enum Due {
    Line,
    #[cfg(feature = "metrics")]
    Publish,
}

impl Reports {
    /// The reports a cache asked for, their periods counted from `since` (when its task
    /// was started).
    fn new<K: Hash + Eq, V, S>(
        store: &Store<K, V, S>,
        since: Option<tokio::time::Instant>,
    ) -> Self {
        let since = since.unwrap_or_else(tokio::time::Instant::now);
        Reports {
            line: store.stats_interval.map(|period| StatsLine {
                every: every(since, period),
                period,
                hits: 0,
                misses: 0,
            }),
            #[cfg(feature = "metrics")]
            publish: store.metrics_interval.map(|period| every(since, period)),
        }
    }

    /// Waits for the next report that is due, or forever if none was asked for.
    async fn due(&mut self) -> Due {
        #[cfg(feature = "metrics")]
        if let Some(publish) = &mut self.publish {
            return tokio::select! {
                _ = next_line(&mut self.line) => Due::Line,
                _ = publish.tick() => Due::Publish,
            };
        }
        next_line(&mut self.line).await;
        Due::Line
    }

    /// Make the report that is due. A panic in the metrics recorder costs that publish only.
    fn make(
        &mut self,
        due: Due,
        store: &Store<impl Hash + Eq + Clone, impl Clone, impl BuildHasher + Clone>,
    ) {
        match due {
            Due::Line => {
                if let Some(line) = &mut self.line {
                    line.emit(store);
                }
            }
            #[cfg(feature = "metrics")]
            Due::Publish => {
                if catch_unwind(AssertUnwindSafe(|| store.publish_metrics())).is_err() {
                    error!("the metrics recorder panicked as the expiry task published; the task goes on");
                }
            }
        }
    }
}

/// Whether the task goes on after a piece of work.
enum Flow {
    Continue,
    /// No handle is left: stop now.
    Stop,
}

struct Task<K: Hash + Eq, V, S: BuildHasher + Clone> {
    _exit: Exit,
    store: Weak<Store<K, V, S>>,
    clock: Clock,
    signals: Arc<Signals>,
    token: CancellationToken,
    interval: Interval,
    /// Indexed by `id - base`: ids below `base` belong to a task that is gone. A node's item
    /// is the hash its key is filed under in the map: with the node id, it finds the entry.
    wheel: Wheel<u64>,
    /// The first node id of this task's epoch (see `Handoff::open`).
    base: NodeId,
    /// Whether the entries in the map are still to be taken over (at the first wake).
    takeover: bool,
    spare: Option<Records<K, S>>,
    /// The nodes of a drained stripe, to link in id order: (id, tick, key's hash).
    links: Vec<(NodeId, u64, u64)>,
    /// The orphans of a drained stripe, to remove once its nodes are linked.
    orphans: Vec<NodeId>,
    /// Per stripe: the ids its writers left in their pool, held for its next pool, and how
    /// many they took last time.
    pools: Vec<(Vec<NodeId>, usize)>,
    /// Ids the task fired, freed or took back from a pool since it last stocked the
    /// hand-off's reserve (as writers see them, `base` added): they top up the pools and
    /// stock the reserve at the next drain, with whatever is on the wheel's free list. Kept
    /// here rather than on that list, which the next drain would walk through the slab.
    free: Vec<NodeId>,
    /// A sweep left keys behind (their `Clone` panicked): it runs again at the next wake.
    sweep_again: bool,
    /// The `invalidate_all` generation swept last.
    swept: u32,
    work: Work,
    reports: Reports,
    /// Expiry lag gathered since it was last published to the store's.
    lag: LagBatch,
    /// Buffers for firing nodes in batches: the nodes due, and what each firing did.
    due: Vec<NodeId>,
    fired: Vec<Option<Fired<K, V>>>,
}

/// Closes the hand-off however the task ends, including when the runtime drops it. Holds no
/// `Weak` of the store (it reaches the store through the signals): a task that never runs
/// pins only the signals.
struct Exit {
    signals: Arc<Signals>,
    /// Closes the hand-off of the store the signals hold, if it is still there.
    close: fn(&Signals),
}

impl Drop for Exit {
    fn drop(&mut self) {
        (self.close)(&self.signals);
        // Closed first: a task started after this line finds the hand-off empty.
        #[cfg(any(test, feature = "internals"))]
        self.signals.tasks_alive.fetch_sub(1, Ordering::SeqCst);
        self.signals.task_ended();
        debug!("expiry task stopped");
    }
}

/// [`Exit::close`] for a store of `K`, `V`, `S`.
fn close<K, V, S>(signals: &Signals)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    // A store that is gone has no writer left, and no task can start for it.
    if let Some(store) = signals.store::<Store<K, V, S>>() {
        store.handoff.close(signals);
    }
}

impl<K, V, S> Task<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    async fn run(mut self: Box<Self>) {
        debug!("expiry task started");
        loop {
            let Some(store) = self.store.upgrade() else {
                break;
            };
            let next = match self.work(&store).await {
                Flow::Continue => self.wheel.next_expiration(),
                Flow::Stop => break,
            };
            // A sweep that left keys behind runs again a tick from now, even in a cache with
            // nothing else to wake for.
            let retry = self
                .sweep_again
                .then(|| self.clock.tick_floor(self.clock.now()).saturating_add(1));
            let next = next.into_iter().chain(retry).min();
            drop(store);
            if let Some(tick) = next {
                self.interval.reset_at(self.clock.instant_of_tick(tick));
            }
            let notified = self.signals.notify.notified();
            let mut report = None;
            tokio::select! {
                biased;
                _ = self.token.cancelled() => break,
                _ = notified => {}
                _ = self.interval.tick(), if next.is_some() => {}
                due = self.reports.due() => report = Some(due),
            }
            self.signals.wakeups.fetch_add(1, Ordering::Relaxed);
            if let (Some(due), Some(store)) = (report, self.store.upgrade()) {
                self.reports.make(due, &store);
            }
        }
    }

    /// Everything there is to do now; returns once the wheel's next expiration is published
    /// and no record or sweep is left behind it.
    async fn work(&mut self, store: &Arc<Store<K, V, S>>) -> Flow {
        if self.takeover {
            if let Flow::Stop = self.take_over(store).await {
                return Flow::Stop;
            }
            self.takeover = false;
        }
        let mut sweep = self.sweep_again;
        loop {
            if let Flow::Stop = self.drain(store).await {
                return Flow::Stop;
            }
            if sweep || store.generation() != self.swept {
                sweep = false;
                if let Flow::Stop = self.sweep(store).await {
                    return Flow::Stop;
                }
            }
            if let Flow::Stop = self.advance(store).await {
                return Flow::Stop;
            }
            self.signals
                .nodes
                .store(self.wheel.len(), Ordering::Release);
            let next = self.wheel.next_expiration().unwrap_or(u64::MAX);
            // Publish before looking for records: a writer either sees this value (and
            // notifies) or queued its record before we look (see handoff.rs).
            self.signals.next_wake.store(next, Ordering::SeqCst);
            if !store.handoff.has_records() && store.generation() == self.swept {
                break;
            }
        }
        if let Flow::Stop = self.pay(store).await {
            return Flow::Stop;
        }
        let work = std::mem::take(&mut self.work);
        if work.fired + work.swept > 0 {
            if store.shrink_map() {
                error!("a key's Hash panicked as the map's table shrank; the table keeps its room");
            }
            // With no node left, nothing wakes this task before the next write, so it gives
            // back now the room a burst left: the stripes' empty buffers and its spares, and
            // what the pools hold beyond what their writers took since the last drain; and
            // it puts the ids just fired in the reserve (a bit each there, 4 bytes each in its
            // list). While nodes are left, the next drains do that, and give the pools their
            // share first.
            if self.wheel.is_empty() {
                self.spare = None;
                self.links = Vec::new();
                for stripe in 0..store.handoff.stripe_count() {
                    let (mut left, taken) = store.handoff.rest(stripe, Vec::new());
                    // With the ids held for the stripe's next pool: `keep_pool` replaces them.
                    if let Some((held, _)) = self.pools.get_mut(stripe) {
                        left.append(held);
                    }
                    self.keep_pool(stripe, left, taken);
                }
                self.stock_reserve(store);
            }
            // Every id the wheel does not link is held: by this task, or handed out.
            self.wheel.trim();
            shed(&mut self.free, SPARE_CAPACITY);
            #[cfg(any(test, feature = "internals"))]
            self.signals
                .wheel_cells
                .store(self.wheel.cells(), Ordering::Release);
        }
        if work.filed + work.fired + work.swept > 0 {
            trace!(
                filed = work.filed,
                fired = work.fired,
                expired = work.expired,
                swept = work.swept,
                reloads = work.reloads,
                nodes = self.wheel.len(),
                "expiry tick"
            );
        }
        Flow::Continue
    }

    /// Yield to the runtime between batches; stop if no user handle is left.
    async fn pause(&self, store: &Arc<Store<K, V, S>>) -> Flow {
        tokio::task::yield_now().await;
        if Arc::strong_count(store) == 1 || self.token.is_cancelled() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    /// [`pause`](Self::pause) once `since` (work done since the last yield) reaches
    /// [`BATCH`], and count afresh.
    async fn pause_after_batch(&self, store: &Arc<Store<K, V, S>>, since: &mut usize) -> Flow {
        if *since < BATCH {
            return Flow::Continue;
        }
        *since = 0;
        self.pause(store).await
    }

    /// Link every queued node in the wheel and free every orphan, stripe by stripe, handing
    /// each stripe a pool of free ids for its writers.
    async fn drain(&mut self, store: &Arc<Store<K, V, S>>) -> Flow {
        // Records, nodes and orphans handled since the last yield, across stripes: a drain of
        // many small stripes yields as often as one of a large stripe.
        let mut since = 0;
        for stripe in 0..store.handoff.stripe_count() {
            let spare = (
                self.spare.take().unwrap_or_else(|| store.handoff.empty()),
                std::mem::take(&mut self.links),
            );
            let pool = self.pool_for(stripe);
            let Taken {
                mut records,
                fresh: mut links,
                pool: left,
                taken,
            } = store.handoff.take(stripe, spare, pool);
            self.keep_pool(stripe, left, taken);
            // A stripe that queued nothing since the last drain keeps the spares it was just
            // given, and its own go: after two such drains it holds no room, so a cache that
            // has gone quiet keeps none of a burst's.
            let quiet = records.is_empty() && links.is_empty();
            // The new nodes in id order: writers take fresh ids in write order, so slot lists
            // then run through the slab in order, and walking them later does not miss the
            // cache at every node. Then the orphans: linked from earlier maps, or just now
            // (a queued node whose entry went before this drain).
            let mut orphans = std::mem::take(&mut self.orphans);
            since += records.len();
            for (key, record) in records.drain() {
                // An orphan from before `base` was handed out for a task that is gone: this
                // wheel never linked it.
                orphans.extend(record.orphans.nodes().filter(|&id| id >= self.base));
                if record.node != UNFILED {
                    links.push((record.node, record.tick, record.hash));
                }
                quietly(key);
            }
            if records.capacity() <= SPARE_CAPACITY && !quiet {
                self.spare = Some(records);
            }
            links.sort_unstable_by_key(|(node, ..)| *node);
            self.work.filed += links.len();
            for (node, tick, hash) in links.drain(..) {
                self.wheel.link(node - self.base, tick, hash);
                since += 1;
                if let Flow::Stop = self.pause_after_batch(store, &mut since).await {
                    return Flow::Stop;
                }
            }
            if links.capacity() <= SPARE_CAPACITY && !quiet {
                self.links = links;
            }
            since += orphans.len();
            for orphan in orphans.drain(..) {
                quietly(self.wheel.take(orphan - self.base));
                self.free.push(orphan);
            }
            shed(&mut orphans, SPARE_CAPACITY);
            self.orphans = orphans;
            if let Flow::Stop = self.pause_after_batch(store, &mut since).await {
                return Flow::Stop;
            }
        }
        self.stock_reserve(store);
        Flow::Continue
    }

    /// Hand every free id the pools did not take to the hand-off's reserve, so that a writer
    /// whose pool runs dry takes one of them before a fresh one.
    fn stock_reserve(&mut self, store: &Store<K, V, S>) {
        let mut free = std::mem::take(&mut self.free);
        let base = self.base;
        free.extend(std::iter::from_fn(|| self.wheel.take_free()).map(|id| id + base));
        store.handoff.stock(&mut free);
        self.free = free;
    }

    /// The pool to give `stripe`: what it had left last time, topped up with free ids to what
    /// its writers took last time, plus [`MIN_POOL`].
    fn pool_for(&mut self, stripe: usize) -> Vec<NodeId> {
        if self.pools.len() <= stripe {
            self.pools.resize_with(stripe + 1, Default::default);
        }
        let (held, demand) = &mut self.pools[stripe];
        let mut pool = std::mem::take(held);
        let want = *demand + MIN_POOL;
        let from_free = want.saturating_sub(pool.len()).min(self.free.len());
        pool.extend(self.free.drain(self.free.len() - from_free..));
        while pool.len() < want {
            match self.wheel.take_free() {
                Some(id) => pool.push(id + self.base),
                None => break,
            }
        }
        pool
    }

    /// Keep the ids `stripe`'s writers left in the pool swapped out (they took `taken`), for
    /// its next pool; free those beyond what it may want.
    fn keep_pool(&mut self, stripe: usize, mut left: Vec<NodeId>, taken: usize) {
        let want = taken + MIN_POOL;
        while left.len() > want {
            let id = left.pop().expect("longer than want");
            self.free.push(id);
        }
        shed(&mut left, want);
        self.pools[stripe] = (left, taken);
    }

    /// File every entry with a deadline that no running wheel knows: all of them for a task
    /// that replaces one that died with its runtime, those written before it first ran for a
    /// cache's first task (the hand-off was closed to them). In batches; a key whose `Clone` panics is logged and left unfiled.
    async fn take_over(&mut self, store: &Arc<Store<K, V, S>>) -> Flow {
        let base = self.base;
        let (keys, mut failed) = store.map.keys_where(|entry| {
            entry.deadline() != NEVER && (entry.node == UNFILED || entry.node < base)
        });
        for (done, key) in keys.into_iter().enumerate() {
            if catch_unwind(AssertUnwindSafe(|| store.refile(&key, base))).is_err() {
                failed += 1;
            }
            quietly(key);
            if (done + 1) % BATCH == 0 {
                if let Flow::Stop = self.pause(store).await {
                    return Flow::Stop;
                }
            }
        }
        if failed > 0 {
            error!(
                failed,
                "a key's Clone or Hash panicked as the expiry task took over the cache's \
                 entries; those entries are not removed on time (reads still refuse them)"
            );
        }
        Flow::Continue
    }

    /// Remove every entry hidden by `invalidate_all`, in batches. A key whose `Clone` or
    /// `Hash` panics is left for the next wake's sweep (logged); the others are swept.
    async fn sweep(&mut self, store: &Arc<Store<K, V, S>>) -> Flow {
        let count = store.generation_count();
        let target = store.generation();
        // One read-only pass collects the keys; removal then goes in batches.
        let (older, mut failed) = store.map.older_keys(target);
        for (done, key) in older.into_iter().enumerate() {
            match catch_unwind(AssertUnwindSafe(|| store.sweep_one(&key))) {
                Ok(Some(retired)) => {
                    self.work.swept += 1;
                    report(store, retired);
                }
                Ok(None) => {}
                Err(_) => failed += 1,
            }
            quietly(key);
            if (done + 1) % BATCH == 0 {
                if let Flow::Stop = self.pause(store).await {
                    return Flow::Stop;
                }
            }
        }
        self.swept = target;
        self.sweep_again = failed > 0;
        if failed == 0 {
            store.swept_to(count);
        } else {
            error!(
                failed,
                "a key's Clone or Hash panicked as the expiry task swept what invalidate_all \
                 hid; those entries stay hidden and are swept at the task's next wake"
            );
        }
        Flow::Continue
    }

    /// Pay a weighted cache's debt (see `capacity.rs`): a write that needed more victims
    /// than its budget left the cache over its capacity and woke the task. A budget at a
    /// time, yielding between, until the cache is within its capacity or nothing more can go.
    async fn pay(&mut self, store: &Arc<Store<K, V, S>>) -> Flow {
        while store.over_capacity() {
            // A listener's panic (reported after the evictions) means entries went.
            let paid = catch_unwind(AssertUnwindSafe(|| store.pay())).unwrap_or(true);
            if !paid {
                break;
            }
            if let Flow::Stop = self.pause(store).await {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Fire every node due by now.
    async fn advance(&mut self, store: &Arc<Store<K, V, S>>) -> Flow {
        let now = store.clock.now();
        let now_tick = store.clock.tick_floor(now);
        let one_by_one = store.fires_one_by_one();
        let mut done = 0;
        let mut due = std::mem::take(&mut self.due);
        let mut flow = Flow::Continue;
        loop {
            let node = self.wheel.poll(now_tick);
            if let Some(node) = node {
                if one_by_one {
                    self.fire(store, node, now);
                } else {
                    due.push(node);
                }
                done += 1;
            }
            if node.is_none() || done % BATCH == 0 {
                self.fire_all(store, &mut due, now);
                store.lag.add(&mut self.lag);
                if node.is_none() {
                    break;
                }
                if let Flow::Stop = self.pause(store).await {
                    flow = Flow::Stop;
                    break;
                }
            }
        }
        self.due = due;
        self.work.fired += done;
        flow
    }

    /// Fire one node (a bounded cache's way; `node` is the wheel's index, the id less
    /// `base`): act on what it means (decided by the store under the key's shard lock), then
    /// report what it removed, with the wheel no longer borrowed. A key's `Hash`, `Eq` or
    /// `Clone` that panics leaves the entry and its node as they were: the node fires again
    /// one tick later.
    fn fire(&mut self, store: &Arc<Store<K, V, S>>, node: NodeId, now: u64) {
        let fired = catch_unwind(AssertUnwindSafe(|| {
            store.fire(*self.wheel.get(node), node + self.base, now, &mut self.lag)
        }));
        self.settle(store, node, fired.ok(), now);
    }

    /// Fire the nodes in `due` at once (an unbounded cache's way), and empty it.
    fn fire_all(&mut self, store: &Arc<Store<K, V, S>>, due: &mut Vec<NodeId>, now: u64) {
        if due.is_empty() {
            return;
        }
        let mut fired = std::mem::take(&mut self.fired);
        {
            let items: Vec<(u64, NodeId)> = due
                .iter()
                .map(|&node| (*self.wheel.get(node), node + self.base))
                .collect();
            store.fire_all(&items, now, &mut self.lag, &mut fired);
        }
        for (&node, fired) in due.iter().zip(fired.drain(..)) {
            self.settle(store, node, fired, now);
        }
        due.clear();
        self.fired = fired;
    }

    /// What a fired node's step means for the wheel, and the report of what it removed;
    /// `None`: its key's `Hash` or `Eq` panicked, and it is tried again next tick.
    fn settle(
        &mut self,
        store: &Arc<Store<K, V, S>>,
        node: NodeId,
        fired: Option<Fired<K, V>>,
        now: u64,
    ) {
        let removed = match fired {
            Some(Fired::Orphaned) => None,
            Some(Fired::Removed(retired)) => {
                quietly(self.wheel.take(node));
                self.free.push(node + self.base);
                self.work.expired += usize::from(retired.cause == RemovalCause::Expired);
                Some(retired)
            }
            Some(Fired::Unfiled) => {
                quietly(self.wheel.take(node));
                self.free.push(node + self.base);
                None
            }
            Some(Fired::Refile(tick)) => {
                self.wheel.reschedule(node, tick);
                None
            }
            Some(Fired::Reload(tick, key)) => {
                match tick {
                    None => {
                        quietly(self.wheel.take(node));
                        self.free.push(node + self.base);
                    }
                    Some(tick) => self.wheel.reschedule(node, tick),
                }
                self.work.reloads += 1;
                crate::refresh::queue(store, key);
                None
            }
            None => {
                error!(
                    "a key's Hash, Eq or Clone panicked as its deadline or reload came; it is \
                     tried again next tick"
                );
                let retry = self.clock.tick_floor(now).saturating_add(1);
                self.wheel.reschedule(node, retry);
                None
            }
        };
        if let Some(retired) = removed {
            report(store, retired);
        }
    }
}

/// Give back the memory of a buffer of the task's that holds under a quarter of what it has
/// room for (a burst's), down to room for its items or `keep`, whichever is more.
fn shed<T>(buffer: &mut Vec<T>, keep: usize) {
    let room = buffer.len().max(keep);
    if buffer.capacity() > 4 * room {
        buffer.shrink_to(room);
    }
}

/// Report a removal from the task: a panic in user code (a value's `Drop`; the listener's
/// are caught where it is called) costs that notification only, never the task.
fn report<K, V, S>(store: &Store<K, V, S>, retired: Retired<K, V>)
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    if catch_unwind(AssertUnwindSafe(|| store.retire(retired))).is_err() {
        error!("a value's Drop panicked as the expiry task removed it; the task goes on");
    }
}

/// Drop a key or value on the task: a panic in its `Drop` is logged and goes no further.
fn quietly<T>(value: T) {
    if catch_unwind(AssertUnwindSafe(|| drop(value))).is_err() {
        error!("a key's or value's Drop panicked on the expiry task; the task goes on");
    }
}
