//! The synchronisation primitives ebb's own protocols use: the standard library's normally,
//! loom's under `--cfg loom`, so that `RUSTFLAGS="--cfg loom"` model-checks our code.
//!
//! Only ebb's own state machines go through this module (the single-flight registry, the
//! hand-off). DashMap, tokio and tokio-util are not loom-aware, so the models exercise the
//! synchronous cores of those protocols, not the whole cache.

#[cfg(loom)]
pub(crate) use loom::sync::{atomic, Arc, Mutex, MutexGuard};
pub(crate) use std::sync::TryLockError;
#[cfg(not(loom))]
pub(crate) use std::sync::{atomic, Arc, Mutex, MutexGuard};

/// Lock `mutex`, ignoring poison: a panic elsewhere (a user's `Hash` or `Eq`, say) leaves our
/// maps consistent, since no user code runs between our reads and writes of them.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Wakes the expiry task: a `tokio::sync::Notify` (one stored permit), plus, under loom, a
/// loom `Notify` the models block on, since loom cannot see tokio's.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    tokio: tokio::sync::Notify,
    #[cfg(loom)]
    loom: loom::sync::Notify,
}

impl Wake {
    /// Wake the task, or leave a permit for its next wait.
    pub(crate) fn wake(&self) {
        self.tokio.notify_one();
        #[cfg(loom)]
        self.loom.notify();
    }

    /// The task's wait.
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.tokio.notified()
    }

    /// The loom models' stand-in for awaiting [`Wake::notified`].
    #[cfg(all(loom, test))]
    pub(crate) fn wait_blocking(&self) {
        self.loom.wait();
    }
}
