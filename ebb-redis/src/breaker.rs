//! [`Breaker`]: after repeated Redis failures, the tier stops asking Redis for a cooldown,
//! then lets one call through as a probe.
//!
//! Invariants:
//! - Closed: every call goes to Redis. `threshold` failures in a row (a timeout, or no
//!   connection) open it; a success resets the count. A refusal (Redis answered with an
//!   error: out of memory, read-only, ACL) is not a failure: Redis is up and answered fast.
//! - Open: no call goes to Redis until `cooldown` has passed; then the first call is the
//!   probe (half-open) and every other call still skips Redis. The probe's success closes the
//!   breaker; its failure opens it for another cooldown; a probe dropped before it ends (its
//!   caller cancelled) lets the next call probe.
//! - Every change of state is a `tracing` event (target `ebb_redis`) and a counter.
//! - The lock is held for a few field moves: never across an `.await`, never around user
//!   code. While the breaker is closed with no failure counted (a healthy Redis), calls are
//!   admitted and their successes recorded without it: `healthy` mirrors that state, and is
//!   only written under the lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::stats::{Counters, Event};

enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    Probing,
}

pub(crate) struct Breaker {
    state: Mutex<State>,
    /// Whether `state` is `Closed` with no failure counted (written under its lock).
    healthy: AtomicBool,
    threshold: u32,
    cooldown: Duration,
    counters: Arc<Counters>,
    namespace: String,
}

/// Leave to make one Redis call. Record its outcome with [`Permit::succeeded`] or
/// [`Permit::failed`]; dropped unrecorded, a probe lets the next call probe.
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl Breaker {
    pub(crate) fn new(
        threshold: u32,
        cooldown: Duration,
        counters: Arc<Counters>,
        namespace: String,
    ) -> Breaker {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            healthy: AtomicBool::new(true),
            threshold,
            cooldown,
            counters,
            namespace,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mirror `state` (under its lock) in `healthy`.
    fn mirror(&self, state: &State) {
        let healthy = matches!(state, State::Closed { failures: 0 });
        self.healthy.store(healthy, Ordering::Release);
    }

    /// Whether the breaker is open or probing now.
    pub(crate) fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }

    /// A permit to call Redis, or `None` when the breaker is open (or another call probes).
    pub(crate) fn admit(&self) -> Option<Permit<'_>> {
        if self.healthy.load(Ordering::Acquire) {
            return Some(Permit {
                breaker: self,
                probe: false,
                recorded: false,
            });
        }
        let mut state = self.state();
        let probe = match &*state {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() >= *until => {
                *state = State::Probing;
                self.mirror(&state);
                true
            }
            State::Open { .. } | State::Probing => return None,
        };
        drop(state);
        if probe {
            self.counters.count(Event::BreakerProbe);
            tracing::info!(
                target: "ebb_redis",
                namespace = %self.namespace,
                "breaker half-open: probing Redis with one call"
            );
        }
        Some(Permit {
            breaker: self,
            probe,
            recorded: false,
        })
    }

    fn open(&self, state: &mut State) {
        *state = State::Open {
            until: Instant::now() + self.cooldown,
        };
        self.mirror(state);
    }
}

impl Permit<'_> {
    /// The call reached Redis and Redis answered (with a value or with an error).
    pub(crate) fn succeeded(mut self) {
        self.recorded = true;
        let breaker = self.breaker;
        if !self.probe && breaker.healthy.load(Ordering::Acquire) {
            return; // closed, and no failure to forget
        }
        let mut state = breaker.state();
        let closed = match &mut *state {
            State::Closed { failures } => {
                *failures = 0;
                breaker.mirror(&state);
                false
            }
            State::Probing if self.probe => {
                *state = State::Closed { failures: 0 };
                breaker.mirror(&state);
                true
            }
            // A call admitted before the breaker opened: the probe decides.
            State::Probing | State::Open { .. } => false,
        };
        drop(state);
        if closed {
            breaker.counters.count(Event::BreakerClose);
            tracing::info!(
                target: "ebb_redis",
                namespace = %breaker.namespace,
                "breaker closed: Redis answered the probe"
            );
        }
    }

    /// The call timed out or found no connection. Returns whether this opened the breaker.
    pub(crate) fn failed(mut self) -> bool {
        self.recorded = true;
        let breaker = self.breaker;
        let mut state = breaker.state();
        let tripped = match &mut *state {
            State::Closed { failures } => {
                *failures += 1;
                if *failures >= breaker.threshold {
                    breaker.open(&mut state);
                    true
                } else {
                    breaker.mirror(&state);
                    false
                }
            }
            State::Probing if self.probe => {
                breaker.open(&mut state);
                true
            }
            State::Probing | State::Open { .. } => false,
        };
        drop(state);
        if tripped {
            breaker.counters.count(Event::BreakerTrip);
            tracing::warn!(
                target: "ebb_redis",
                namespace = %breaker.namespace,
                cooldown = ?breaker.cooldown,
                probe = self.probe,
                "breaker open: Redis is skipped (reads go to the loader, writes fail) until \
                 the cooldown ends and a probe succeeds"
            );
        }
        tripped
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            let mut state = self.breaker.state();
            if matches!(*state, State::Probing) {
                // Cancelled mid-probe: the next call probes.
                *state = State::Open {
                    until: Instant::now(),
                };
                self.breaker.mirror(&state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            3,
            Duration::from_secs(2),
            Arc::new(Counters::new()),
            "t".into(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_probes_after_the_cooldown_and_closes() {
        let b = breaker();
        assert!(!b.admit().unwrap().failed());
        assert!(!b.admit().unwrap().failed());
        b.admit().unwrap().succeeded(); // resets the count
        assert!(!b.admit().unwrap().failed());
        assert!(!b.admit().unwrap().failed());
        assert!(
            b.admit().unwrap().failed(),
            "the third failure in a row opens it"
        );
        assert!(b.admit().is_none(), "open");
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(b.admit().is_none(), "still open");
        tokio::time::advance(Duration::from_millis(1)).await;
        let probe = b.admit().expect("the probe");
        assert!(b.admit().is_none(), "one probe at a time");
        assert!(probe.failed(), "a failed probe reopens");
        assert!(b.admit().is_none(), "open again");
        tokio::time::advance(Duration::from_secs(2)).await;
        let probe = b.admit().unwrap();
        drop(probe); // cancelled
        b.admit().expect("the next call probes").succeeded();
        assert!(!b.is_open());
        let stats = b.counters.snapshot(false);
        assert_eq!(
            (
                stats.breaker_trips,
                stats.breaker_probes,
                stats.breaker_closes
            ),
            (2, 3, 1)
        );
    }
}
