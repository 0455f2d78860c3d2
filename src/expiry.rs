//! [`Expiry`]: a per-entry expiry policy, asked when an entry is created, updated or (if it
//! says so) read. A user trait; the store calls it, never under a lock.

use std::time::Duration;

use tokio::time::Instant;

/// A per-entry expiry policy: [`CacheBuilder::expire_after`](crate::CacheBuilder::expire_after).
///
/// Each method returns how long the entry lives from the moment given (`Some`), or `None`:
/// on create, no deadline of its own (the cache's `time_to_live`, if any, applies); on read
/// and update, the entry keeps the deadline it has. The cache's `time_to_live`, if set, stays
/// an upper bound counted from the entry's last write. The times are `tokio::time::Instant`s,
/// so `tokio::time::pause()` drives them in tests.
///
/// The methods are user code: the cache calls them with no lock held (a panic in
/// [`expire_after_create`](Self::expire_after_create) or
/// [`expire_after_update`](Self::expire_after_update) reaches the writing caller before
/// anything is written; one in [`expire_after_read`](Self::expire_after_read) costs only that
/// read's deadline change). A write asks `expire_after_create` or `expire_after_update`
/// according to whether it found a live entry a moment before it wrote (a write racing
/// another write of the same key may ask the other one).
///
/// Reads ask [`expire_after_read`](Self::expire_after_read) only if
/// [`observes_reads`](Self::observes_reads) says so: each such read then copies the key under
/// the shard lock, reads the clock and calls the method outside the lock, and a changed
/// deadline is filed like a time-to-idle read files one (a later one in place; an earlier one
/// through the expiry task's hand-off, under the shard's write lock).
///
/// ```
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// /// Sessions live 30 minutes from their last use; admin sessions 5 minutes from creation.
/// struct Sessions;
///
/// impl ebb_cache::Expiry<String, bool> for Sessions {
///     fn expire_after_create(&self, _id: &String, admin: &bool, _at: Instant) -> Option<Duration> {
///         Some(if *admin { Duration::from_secs(300) } else { Duration::from_secs(1800) })
///     }
///     fn expire_after_read(
///         &self,
///         _id: &String,
///         admin: &bool,
///         _at: Instant,
///         _left: Option<Duration>,
///     ) -> Option<Duration> {
///         (!*admin).then(|| Duration::from_secs(1800))
///     }
///     fn observes_reads(&self) -> bool {
///         true
///     }
/// }
///
/// #[tokio::main]
/// async fn main() {
///     let sessions: ebb_cache::Cache<String, bool> =
///         ebb_cache::Cache::builder().expire_after(Sessions).build();
///     sessions.insert("s1".to_string(), false);
///     assert_eq!(sessions.get("s1"), Some(false));
/// }
/// ```
pub trait Expiry<K, V>: Send + Sync + 'static {
    /// How long a new entry lives from `created_at`; `None`: no deadline of its own.
    fn expire_after_create(&self, key: &K, value: &V, created_at: Instant) -> Option<Duration> {
        let _ = (key, value, created_at);
        None
    }

    /// How long an entry lives from `read_at`, given the time it had `left` (`None`: no
    /// deadline); `None` keeps its deadline. Asked only if
    /// [`observes_reads`](Self::observes_reads) is `true`.
    fn expire_after_read(
        &self,
        key: &K,
        value: &V,
        read_at: Instant,
        left: Option<Duration>,
    ) -> Option<Duration> {
        let _ = (key, value, read_at, left);
        None
    }

    /// How long an entry lives from `updated_at`, when a write replaces its value, given the
    /// time it had `left` (`None`: no deadline); `None` keeps its deadline.
    fn expire_after_update(
        &self,
        key: &K,
        value: &V,
        updated_at: Instant,
        left: Option<Duration>,
    ) -> Option<Duration> {
        let _ = (key, value, updated_at, left);
        None
    }

    /// Whether reads ask [`expire_after_read`](Self::expire_after_read). `false` unless
    /// overridden, so that a cache whose policy does not look at reads pays nothing for it on
    /// `get`: return `true` when you implement `expire_after_read`.
    fn observes_reads(&self) -> bool {
        false
    }
}
