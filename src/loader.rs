//! The loader a [`LoadingCache`](crate::LoadingCache) owns, as the store and the reload
//! tasks see it: a key in, a boxed future of the value or a type-erased error out.
//!
//! It knows nothing of the store: the store holds one, the reload tasks call it.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

/// An error of the cache's loader, shared by every caller of one failed load (its concrete
/// type is recovered by [`LoadingCache::fetch`](crate::LoadingCache::fetch)).
pub(crate) type ErasedError = std::sync::Arc<dyn Any + Send + Sync>;

/// A load in progress.
pub(crate) type Loading<V> = Pin<Box<dyn Future<Output = Result<V, ErasedError>> + Send>>;

/// A cache's own loader, with its error type erased.
pub(crate) trait Reload<K, V>: Send + Sync {
    /// Start loading `key`.
    fn load(&self, key: K) -> Loading<V>;
    /// The error, for a log line (its `Debug`).
    fn describe(&self, error: &ErasedError) -> String;
}
