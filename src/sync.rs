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

/// Stripes made when first asked for: a cache that never needs them (one built per request)
/// makes none. Loom models make them at once: loom cannot see a `OnceLock`'s wait, and the
/// models cover the protocols with the stripes there.
pub(crate) struct LazyStripes<T> {
    #[cfg(not(loom))]
    cell: std::sync::OnceLock<Box<[T]>>,
    #[cfg(loom)]
    cell: Box<[T]>,
}

impl<T> LazyStripes<T> {
    /// None yet; under loom, `make`'s at once.
    pub(crate) fn new(make: impl FnOnce() -> Box<[T]>) -> Self {
        #[cfg(not(loom))]
        {
            let _ = make;
            LazyStripes {
                cell: std::sync::OnceLock::new(),
            }
        }
        #[cfg(loom)]
        LazyStripes { cell: make() }
    }

    /// The stripes, if made.
    #[inline]
    pub(crate) fn get(&self) -> Option<&[T]> {
        #[cfg(not(loom))]
        return self.cell.get().map(|stripes| &**stripes);
        #[cfg(loom)]
        return Some(&self.cell);
    }

    /// The stripes, made by `make` if they are not yet.
    #[inline]
    pub(crate) fn get_or_make(&self, make: impl FnOnce() -> Box<[T]>) -> &[T] {
        #[cfg(not(loom))]
        return self.cell.get_or_init(make);
        #[cfg(loom)]
        {
            let _ = make;
            &self.cell
        }
    }
}
