//! Removal notifications: the listener callback and the bounded channel.
//!
//! Every entry that leaves the cache is reported once, with its [`RemovalCause`], by whoever
//! removed it, after the shard lock is released:
//!
//! | cause | reported by | when |
//! |---|---|---|
//! | `Expired` | the expiry task | no later than one tick after the deadline, with no traffic |
//! | `Expired` | the writing or removing thread | when it replaces or removes an entry that had expired but was not removed yet |
//! | `Explicit` | the thread calling `remove` / `insert_with_ttl(.., ZERO)` | right after the removal |
//! | `Explicit` | the expiry task | when it sweeps what `invalidate_all` hid |
//! | `Replaced` | the thread calling `insert` (or a finishing load) | right after the write |
//! | `Size` | the inserting thread | right after it evicted the entry for room |
//!
//! Notifications from different threads are not ordered with each other; those from the
//! expiry task come in the order it removed the entries.
//!
//! Invariants: the listener never runs under a shard lock, the wheel's borrow, or a stripe
//! lock; a panicking listener, or a key's or value's `Clone` or `Drop` panicking while a
//! removal is reported, is caught (unless the binary is built with `panic = "abort"`), logged
//! with `tracing::error!`, and loses only that notification. Notifications a full channel
//! drops are always counted.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc::{error::TrySendError, Sender};

/// Why an entry left the cache. Later versions may add causes: match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemovalCause {
    /// Its TTL (or time-to-idle) ran out.
    Expired,
    /// `remove`, a zero `insert_with_ttl`, or `invalidate_all`.
    Explicit,
    /// An `insert` for the same key replaced it.
    Replaced,
    /// It was evicted to keep the cache within its capacity.
    Size,
}

impl RemovalCause {
    /// Whether the cache removed the entry by itself (expiry or size) rather than because a
    /// caller asked for it.
    pub fn was_evicted(self) -> bool {
        matches!(self, RemovalCause::Expired | RemovalCause::Size)
    }
}

/// One removal, as sent on the channel given to
/// [`CacheBuilder::eviction_channel`](crate::CacheBuilder::eviction_channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal<K, V> {
    /// The removed entry's key.
    pub key: K,
    /// The removed entry's value.
    pub value: V,
    /// Why it was removed.
    pub cause: RemovalCause,
}

/// The listener callback type.
pub(crate) type Listener<K, V> = Box<dyn Fn(K, V, RemovalCause) + Send + Sync + 'static>;

/// Where notifications go.
pub(crate) struct Notifier<K, V> {
    pub(crate) listener: Option<Listener<K, V>>,
    pub(crate) channel: Option<Sender<Removal<K, V>>>,
    /// Notifications the full channel dropped, counted whether or not the cache records
    /// statistics.
    dropped: AtomicU64,
}

impl<K, V> Default for Notifier<K, V> {
    fn default() -> Self {
        Notifier {
            listener: None,
            channel: None,
            dropped: AtomicU64::new(0),
        }
    }
}

impl<K, V> fmt::Debug for Notifier<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("listener", &self.listener.is_some())
            .field("channel", &self.channel.is_some())
            .finish()
    }
}

impl<K: Clone, V: Clone> Notifier<K, V> {
    /// Whether anyone listens: only then do removals need their key.
    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        self.listener.is_some() || self.channel.is_some()
    }

    /// Deliver one notification. User code runs here (the listener, and a key's or value's
    /// `Clone` and `Drop`): a panic in any of it is caught, logged with `tracing::error!`, and
    /// loses only this notification.
    pub(crate) fn notify(&self, cache: &str, key: K, value: V, cause: RemovalCause) {
        let delivered = catch_unwind(AssertUnwindSafe(|| {
            let (key, value) = match (&self.listener, &self.channel) {
                (Some(_), Some(channel)) => {
                    self.send(channel, key.clone(), value.clone(), cause);
                    (key, value)
                }
                (None, Some(channel)) => return self.send(channel, key, value, cause),
                (_, None) => (key, value),
            };
            if let Some(listener) = &self.listener {
                listener(key, value, cause);
            }
        }));
        if delivered.is_err() {
            tracing::error!(
                cache,
                ?cause,
                "user code panicked while a removal was reported (the eviction listener, or a \
                 key's or value's Clone or Drop); this notification is lost, the cache goes on"
            );
        }
    }

    /// Notifications the channel dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Send without waiting: a full channel drops the notification (and counts it); a closed
    /// one (the receiver is gone) is ignored.
    fn send(&self, channel: &Sender<Removal<K, V>>, key: K, value: V, cause: RemovalCause) {
        if let Err(TrySendError::Full(_)) = channel.try_send(Removal { key, value, cause }) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
