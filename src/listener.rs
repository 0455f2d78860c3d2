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
//! lock; a panicking listener is caught (unless the binary is built with `panic = "abort"`),
//! logged with `tracing::error!`, and loses only that notification.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use tokio::sync::mpsc::{error::TrySendError, Sender};

/// Why an entry left the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
}

impl<K, V> Default for Notifier<K, V> {
    fn default() -> Self {
        Notifier {
            listener: None,
            channel: None,
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

    /// Deliver one notification. Returns `false` if the channel was full and the
    /// notification was dropped there.
    pub(crate) fn notify(&self, cache: &str, key: K, value: V, cause: RemovalCause) -> bool {
        let mut delivered = true;
        let (key, value) = match (&self.listener, &self.channel) {
            (Some(_), Some(channel)) => {
                delivered = send(channel, key.clone(), value.clone(), cause);
                (key, value)
            }
            (None, Some(channel)) => return send(channel, key, value, cause),
            (_, None) => (key, value),
        };
        if let Some(listener) = &self.listener {
            if catch_unwind(AssertUnwindSafe(|| listener(key, value, cause))).is_err() {
                tracing::error!(
                    cache,
                    ?cause,
                    "eviction listener panicked; this notification is lost, the cache goes on"
                );
            }
        }
        delivered
    }
}

/// Never blocks: a full channel drops the notification (counted by the caller); a closed one
/// (the receiver is gone) is ignored.
fn send<K, V>(channel: &Sender<Removal<K, V>>, key: K, value: V, cause: RemovalCause) -> bool {
    !matches!(
        channel.try_send(Removal { key, value, cause }),
        Err(TrySendError::Full(_))
    )
}
