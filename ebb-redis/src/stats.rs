//! The tier's counters ([`TierStats`]): striped per thread, so that an L1 hit adds to a
//! counter no other core is writing.
//!
//! Invariants:
//! - Counting is one relaxed `fetch_add` on a cache line of the calling thread's stripe: no
//!   lock, no allocation, nothing shared between two threads that land on different stripes.
//! - A snapshot sums the stripes; it is exact once the counting calls it races have ended.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// How many stripes: enough that two busy threads rarely share one.
const STRIPES: usize = 16;

/// What the tier counts, one slot per event.
#[derive(Clone, Copy)]
pub(crate) enum Event {
    L1Hit = 0,
    L2Hit,
    L2Miss,
    Load,
    NegativeHit,
    DecodeError,
    Timeout,
    Connection,
    Refused,
    Skipped,
    BreakerTrip,
    BreakerClose,
    BreakerProbe,
    Connected,
    ConnectFailed,
    FillRefused,
}

const EVENTS: usize = Event::FillRefused as usize + 1;

#[repr(align(128))]
struct Stripe([AtomicU64; EVENTS]);

pub(crate) struct Counters {
    stripes: Box<[Stripe]>,
}

fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    INDEX.with(|i| *i)
}

impl Counters {
    pub(crate) fn new() -> Counters {
        Counters {
            stripes: (0..STRIPES)
                .map(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    #[inline]
    pub(crate) fn count(&self, event: Event) {
        self.stripes[stripe_index()].0[event as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self, event: Event) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0[event as usize].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    pub(crate) fn snapshot(&self, breaker_open: bool) -> TierStats {
        TierStats {
            l1_hits: self.sum(Event::L1Hit),
            l2_hits: self.sum(Event::L2Hit),
            l2_misses: self.sum(Event::L2Miss),
            loads: self.sum(Event::Load),
            negative_hits: self.sum(Event::NegativeHit),
            decode_errors: self.sum(Event::DecodeError),
            redis_timeouts: self.sum(Event::Timeout),
            redis_connection_errors: self.sum(Event::Connection),
            redis_refusals: self.sum(Event::Refused),
            redis_skipped: self.sum(Event::Skipped),
            breaker_trips: self.sum(Event::BreakerTrip),
            breaker_closes: self.sum(Event::BreakerClose),
            breaker_probes: self.sum(Event::BreakerProbe),
            connections: self.sum(Event::Connected),
            connect_failures: self.sum(Event::ConnectFailed),
            fills_refused: self.sum(Event::FillRefused),
            breaker_open,
        }
    }
}

/// A snapshot of a tier's counters ([`TieredCache::stats`](crate::TieredCache::stats)), since
/// it was built. With the `metrics` feature,
/// `TieredCache::publish_metrics` publishes the same figures
/// (their metric names are in `docs/redis.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierStats {
    /// Reads answered by this replica's local tier (values and not-found placeholders).
    pub l1_hits: u64,
    /// Misses answered by Redis (values and placeholders).
    pub l2_hits: u64,
    /// Misses that Redis answered with nothing (or a tombstone), so the loader ran.
    pub l2_misses: u64,
    /// Loader runs (one per flight, whatever the reason: a Redis miss, Redis failing or
    /// skipped, an undecodable value).
    pub loads: u64,
    /// Reads answered by a not-found placeholder, from either tier (also counted in
    /// `l1_hits` or `l2_hits`).
    pub negative_hits: u64,
    /// Values in Redis that the codec could not decode (each one a miss, then replaced by
    /// the loaded value).
    pub decode_errors: u64,
    /// Redis calls that ran past their timeout.
    pub redis_timeouts: u64,
    /// Redis calls that failed for want of a connection (refused, dropped, reconnecting).
    pub redis_connection_errors: u64,
    /// Redis calls that Redis answered with an error (out of memory with `noeviction`, a
    /// read-only replica, an ACL denial): Redis is up, but did not do it.
    pub redis_refusals: u64,
    /// Redis calls not made because the breaker was open.
    pub redis_skipped: u64,
    /// Times the breaker opened (after the failure threshold, or a failed probe).
    pub breaker_trips: u64,
    /// Times the breaker closed again after a successful probe.
    pub breaker_closes: u64,
    /// Probes: calls let through to Redis by the open breaker after its cooldown.
    pub breaker_probes: u64,
    /// Connections opened to Redis (the first one, and every reconnection).
    pub connections: u64,
    /// Connection attempts that failed (each followed by a backoff pause).
    pub connect_failures: u64,
    /// Load fills Redis refused because a write, removal or `invalidate_all` came after
    /// the load's read (the value was returned and kept nowhere).
    pub fills_refused: u64,
    /// Whether the breaker is open (or probing) now.
    pub breaker_open: bool,
}

/// Publish a snapshot through the `metrics` facade (see `docs/redis.md` for the names).
#[cfg(feature = "metrics")]
pub(crate) fn publish(namespace: &str, stats: &TierStats) {
    let ns = namespace.to_owned();
    let counter = |name: &'static str, value: u64| {
        metrics::counter!(name, "namespace" => ns.clone()).absolute(value);
    };
    counter("ebb_redis_l1_hits_total", stats.l1_hits);
    counter("ebb_redis_l2_hits_total", stats.l2_hits);
    counter("ebb_redis_l2_misses_total", stats.l2_misses);
    counter("ebb_redis_loads_total", stats.loads);
    counter("ebb_redis_negative_hits_total", stats.negative_hits);
    counter("ebb_redis_decode_errors_total", stats.decode_errors);
    counter("ebb_redis_fills_refused_total", stats.fills_refused);
    counter("ebb_redis_breaker_trips_total", stats.breaker_trips);
    counter("ebb_redis_breaker_closes_total", stats.breaker_closes);
    counter("ebb_redis_breaker_probes_total", stats.breaker_probes);
    counter("ebb_redis_connections_total", stats.connections);
    counter("ebb_redis_connect_failures_total", stats.connect_failures);
    for (kind, value) in [
        ("timeout", stats.redis_timeouts),
        ("connection", stats.redis_connection_errors),
        ("refused", stats.redis_refusals),
        ("skipped", stats.redis_skipped),
    ] {
        metrics::counter!("ebb_redis_errors_total", "namespace" => ns.clone(), "kind" => kind)
            .absolute(value);
    }
    metrics::gauge!("ebb_redis_breaker_open", "namespace" => ns).set(if stats.breaker_open {
        1.0
    } else {
        0.0
    });
}
