#![cfg(feature = "metrics")]
//! The `metrics` feature: every metric `docs/metrics.md` lists is read back from a debugging
//! recorder, with its labels, at its exact value; the expiry task publishes every interval
//! and wakes for nothing else; a cache that did not ask publishes nothing.
//!
//! One `DebuggingRecorder` is installed globally for this test binary. Its snapshots reset
//! every value they read (counters and gauges to zero), whoever's they are, so the tests run
//! one at a time (`serial`); each also names its cache apart and reads only its own series.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use common::{advance, settle};
use ebb_cache::{BuildError, Cache, RemovalCause};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// A series: its metric name and its labels other than `cache`, sorted.
type Series = (String, Vec<(String, String)>);

/// The global debugging recorder's snapshotter, installed on first use.
fn recorder() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this binary");
        snapshotter
    })
}

/// Take the test lock: one test at a time reads (and so resets) the recorder.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Every series of cache `name` in a snapshot (which resets the recorder's values), with its
/// value: counters as they are, gauges as `f64`.
fn read(name: &str) -> BTreeMap<Series, Value> {
    let mut out = BTreeMap::new();
    for (key, _unit, _description, value) in recorder().snapshot().into_vec() {
        let key = key.key();
        let mut cache = None;
        let mut labels = Vec::new();
        for label in key.labels() {
            if label.key() == "cache" {
                cache = Some(label.value().to_owned());
            } else {
                labels.push((label.key().to_owned(), label.value().to_owned()));
            }
        }
        if cache.as_deref() != Some(name) {
            continue;
        }
        labels.sort();
        let value = match value {
            DebugValue::Counter(n) => Value::Counter(n),
            DebugValue::Gauge(x) => Value::Gauge(x.into_inner()),
            DebugValue::Histogram(_) => panic!("ebb publishes no histogram"),
        };
        let old = out.insert((key.name().to_owned(), labels), value);
        assert!(old.is_none(), "one series per name and labels");
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Counter(u64),
    Gauge(f64),
}

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    let mut labels: Vec<_> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

/// The metric names in docs/metrics.md's table, with the types it gives them.
fn documented() -> BTreeMap<String, String> {
    let doc = include_str!("../docs/metrics.md");
    doc.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells
                .get(1)?
                .strip_prefix("`ebb_cache_")?
                .strip_suffix('`')?;
            Some((format!("ebb_cache_{name}"), cells.get(2)?.to_string()))
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn every_documented_metric_is_published_with_its_labels_and_exact_value() {
    let _serial = serial().await;
    recorder();
    // A channel of one that nobody drains: the first removal fills it, the others are
    // dropped (and counted).
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let c: Cache<u64, u64> = Cache::builder()
        .name("exact")
        .record_stats()
        .tick(100 * MS)
        // A value is its own weight; heavier than the whole capacity, it is evicted at once.
        .max_capacity(1000)
        .weigher(|_, v| *v as u32)
        .eviction_channel(tx)
        .build();

    c.insert(1, 10); // insert
    c.insert(2, 20); // insert
    c.insert(1, 11); // update; removal `replaced`, which fills the channel
    assert_eq!(c.remove(&2), Some(20)); // removal `explicit` (notification dropped)
    c.insert(3, 5000); // insert; removal `size` at once (dropped)
    c.insert_with_ttl(4, 7, 1050 * MS); // insert; its deadline is at t = 1.05 s
    assert_eq!(c.get(&1), Some(11)); // hit
    assert_eq!(c.get(&2), None); // miss
    assert_eq!(c.get(&3), None); // miss
    let loaded = c
        .get_with(5, async {
            tokio::time::sleep(20 * MS).await;
            8
        })
        .await; // miss; a load that succeeds in 20 ms; an insert
    assert_eq!(loaded, 8);
    let failed = c
        .try_get_with(6, async {
            tokio::time::sleep(5 * MS).await;
            Err::<u64, _>("no such key")
        })
        .await; // miss; a load that fails after 5 ms
    assert!(failed.is_err());
    assert_eq!(c.get_with(5, async { unreachable!() }).await, 8); // hit
                                                                  // t = 25 ms: the entry of key 4 expires at 1.05 s, and the task removes it at the start
                                                                  // of the next tick, 1.1 s, 50 ms late (notification dropped). (`advance` past 1.1 s would
                                                                  // let the task run only at the later instant, and measure a longer lag.)
    advance(SEC + 75 * MS).await;
    assert_eq!(c.entry_count(), 2); // keys 1 and 5, weighing 11 + 8

    let stats = c.stats();
    c.publish_metrics();
    let got = read("exact");

    let counter = |n: u64| Value::Counter(n);
    let expected: BTreeMap<Series, Value> = [
        (series("ebb_cache_hits_total", &[]), counter(2)),
        (series("ebb_cache_misses_total", &[]), counter(4)),
        (series("ebb_cache_inserts_total", &[]), counter(5)),
        (series("ebb_cache_updates_total", &[]), counter(1)),
        (
            series("ebb_cache_removals_total", &[("cause", "expired")]),
            counter(1),
        ),
        (
            series("ebb_cache_removals_total", &[("cause", "explicit")]),
            counter(1),
        ),
        (
            series("ebb_cache_removals_total", &[("cause", "replaced")]),
            counter(1),
        ),
        (
            series("ebb_cache_removals_total", &[("cause", "size")]),
            counter(1),
        ),
        (
            series("ebb_cache_loads_total", &[("result", "success")]),
            counter(1),
        ),
        (
            series("ebb_cache_loads_total", &[("result", "failure")]),
            counter(1),
        ),
        (
            series("ebb_cache_load_nanoseconds_total", &[]),
            counter(25_000_000),
        ),
        (
            series("ebb_cache_notifications_dropped_total", &[]),
            counter(3),
        ),
        // A plain cache never reloads (see tests/refresh.rs for a loading cache's figures).
        (series("ebb_cache_reloads_started_total", &[]), counter(0)),
        (
            series("ebb_cache_reloads_total", &[("result", "success")]),
            counter(0),
        ),
        (
            series("ebb_cache_reloads_total", &[("result", "failure")]),
            counter(0),
        ),
        (
            series("ebb_cache_reloads_total", &[("result", "timeout")]),
            counter(0),
        ),
        (series("ebb_cache_stale_served_total", &[]), counter(0)),
        (series("ebb_cache_entries", &[]), Value::Gauge(2.0)),
        (series("ebb_cache_weighted_size", &[]), Value::Gauge(19.0)),
        (
            series("ebb_cache_expiry_lag_max_seconds", &[]),
            Value::Gauge(0.05),
        ),
        (
            series("ebb_cache_expiry_lag_mean_seconds", &[]),
            Value::Gauge(0.05),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, expected);

    // The same figures as `stats()`.
    assert_eq!(
        (stats.hits, stats.misses, stats.inserts, stats.updates),
        (2, 4, 5, 1)
    );
    assert_eq!(
        (
            stats.expired,
            stats.explicit,
            stats.replaced,
            stats.evicted_for_size
        ),
        (1, 1, 1, 1)
    );
    assert_eq!((stats.load_successes, stats.load_failures), (1, 1));
    assert_eq!(stats.total_load_time, 25 * MS);
    assert_eq!(stats.notifications_dropped, 3);
    assert_eq!((stats.entry_count, stats.weighted_size), (2, 19));
    assert_eq!(
        (stats.expiry_lag_max, stats.expiry_lag_mean),
        (50 * MS, 50 * MS)
    );

    // Every metric of docs/metrics.md's table, and no other, with the type it gives.
    let published: BTreeMap<String, String> = expected
        .iter()
        .map(|((name, _), value)| {
            let kind = match value {
                Value::Counter(_) => "counter",
                Value::Gauge(_) => "gauge",
            };
            (name.clone(), kind.to_owned())
        })
        .collect();
    assert_eq!(documented(), published);
}

#[tokio::test(start_paused = true)]
async fn the_expiry_task_publishes_every_interval_and_wakes_for_nothing_else() {
    let _serial = serial().await;
    recorder();
    let c: Cache<u64, u64> = Cache::builder()
        .name("interval")
        .publish_metrics(10 * SEC) // implies record_stats
        .build();
    c.insert(1, 1);
    assert_eq!(c.get(&1), Some(1));
    settle().await;
    let woken = c.__internals().wakeups;
    advance(10 * SEC - MS).await;
    assert!(read("interval").is_empty(), "nothing published yet");

    let hits = series("ebb_cache_hits_total", &[]);
    let misses = series("ebb_cache_misses_total", &[]);
    let entries = series("ebb_cache_entries", &[]);
    advance(MS).await; // t = 10 s: the first publish
    let got = read("interval");
    assert_eq!(got.len(), 21, "every metric: {got:?}");
    assert_eq!(got[&hits], Value::Counter(1));
    assert_eq!(got[&misses], Value::Counter(0));
    assert_eq!(got[&entries], Value::Gauge(1.0));

    assert_eq!(c.get(&2), None);
    c.insert(2, 2);
    advance(9 * SEC).await; // t = 19 s: the snapshot reset the values, nothing published since
    assert_eq!(read("interval")[&hits], Value::Counter(0));
    advance(SEC).await; // t = 20 s: the running totals again
    let got = read("interval");
    assert_eq!(got[&hits], Value::Counter(1));
    assert_eq!(got[&misses], Value::Counter(1));
    assert_eq!(got[&entries], Value::Gauge(2.0));

    // Nothing is scheduled (no TTL): the task woke once per interval, and for the writes'
    // hand-offs, and for nothing else.
    let wakeups = c.__internals().wakeups - woken;
    assert!(
        (2..=3).contains(&wakeups),
        "two publishes and at most one hand-off: {wakeups} wake-ups"
    );
    let before = c.__internals().wakeups;
    for _ in 0..10 {
        advance(10 * SEC).await;
    }
    assert_eq!(
        c.__internals().wakeups - before,
        10,
        "one wake-up per interval"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cache_that_does_not_ask_publishes_nothing_and_never_wakes() {
    let _serial = serial().await;
    recorder();
    let c: Cache<u64, u64> = Cache::builder().name("quiet").record_stats().build();
    c.insert(1, 1);
    c.get(&1);
    settle().await;
    let woken = c.__internals().wakeups;
    advance(3600 * SEC).await;
    assert_eq!(c.__internals().wakeups, woken, "an idle cache never wakes");
    assert!(read("quiet").is_empty());
    // Until it is asked to, now.
    c.publish_metrics();
    let got = read("quiet");
    assert_eq!(got[&series("ebb_cache_hits_total", &[])], Value::Counter(1));
    assert_eq!(got.len(), 21);
}

#[tokio::test(start_paused = true)]
async fn without_record_stats_counters_publish_zero_and_gauges_the_truth() {
    let _serial = serial().await;
    recorder();
    let c: Cache<u64, u64> = Cache::builder().name("uncounted").build();
    c.insert(1, 1);
    c.get(&1);
    c.publish_metrics();
    let got = read("uncounted");
    assert_eq!(got[&series("ebb_cache_hits_total", &[])], Value::Counter(0));
    assert_eq!(got[&series("ebb_cache_entries", &[])], Value::Gauge(1.0));
}

#[tokio::test]
async fn a_zero_interval_is_an_error() {
    let built = Cache::<u64, u64>::builder()
        .publish_metrics(Duration::ZERO)
        .try_build();
    assert_eq!(built.err(), Some(BuildError::ZeroMetricsInterval));
}

/// A recorder whose every registration panics, counting the panics.
struct Panicking;

static PANICS: AtomicUsize = AtomicUsize::new(0);

impl metrics::Recorder for Panicking {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        PANICS.fetch_add(1, Ordering::SeqCst);
        panic!("a broken recorder");
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        panic!("a broken recorder");
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        panic!("a broken recorder");
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_recorder_costs_that_publish_and_never_the_task() {
    let _serial = serial().await;
    recorder();
    let (c, log) = common::logged(
        Cache::builder()
            .name("broken")
            .tick(100 * MS)
            .publish_metrics(SEC),
    );
    // This thread runs the test's current-thread runtime, the expiry task included: the
    // task publishes to the broken recorder.
    let guard = metrics::set_default_local_recorder(&Panicking);
    c.insert_with_ttl(1, 1, 2 * SEC);
    advance(SEC).await; // a publish panics in the recorder, and is logged
    advance(SEC + 100 * MS).await; // the task still expires on time
    assert_eq!(common::taken(&log), vec![(1, 1, RemovalCause::Expired)]);
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        2,
        "the publishes at 1 s and 2 s panicked"
    );
    drop(guard);
    // The registration that panicked left nothing behind: the next publish registers with
    // the global recorder.
    advance(SEC).await;
    let got = read("broken");
    assert_eq!(
        got[&series("ebb_cache_removals_total", &[("cause", "expired")])],
        Value::Counter(1)
    );
}
