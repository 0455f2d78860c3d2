//! [`Iter`]: iteration over a cache's live entries.
//!
//! Invariants:
//! - No lock is held between two calls to `next`: the keys are copied when the iterator is
//!   made, one map shard at a time (each shard's read lock held only while its keys are
//!   copied), and each value is looked up on its own when the iterator reaches its key, under
//!   that key's shard read lock alone. A loop body may insert, remove or iterate again.
//! - Nothing is yielded that a `get` at that moment would not return: each key is checked for
//!   liveness (deadline, `invalidate_all`) when it is reached. Each key is yielded at most
//!   once (the map holds a key once; its keys are copied once).
//! - Iterating is not reading: it counts no hit or miss, moves no idle deadline and bumps no
//!   eviction-policy counter.

use std::fmt;
use std::hash::{BuildHasher, Hash};

use crate::cache::Cache;
use crate::store::Store;

/// An iterator over a cache's live entries, as `(key, value)` clones: [`Cache::iter`].
///
/// Weakly consistent: it yields each key that was in the cache when [`iter`](Cache::iter)
/// was called and is still live when the iterator reaches it, with its value at that moment.
/// A key inserted after the call is not yielded; a key removed, expired or invalidated before
/// the iterator reaches it is not yielded; no key is yielded twice. The order is unspecified.
pub struct Iter<'a, K, V, S> {
    store: &'a Store<K, V, S>,
    keys: std::vec::IntoIter<K>,
}

impl<K, V, S> fmt::Debug for Iter<'_, K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("keys_left", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl<K, V, S> Iterator for Iter<'_, K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    type Item = (K, V);

    fn next(&mut self) -> Option<(K, V)> {
        for key in self.keys.by_ref() {
            if let Some(value) = self.store.live_value(&key) {
                return Some((key, value));
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.keys.len()))
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// The live entries, as `(key, value)` clones, in no particular order.
    ///
    /// The call copies the keys of the live entries (one map shard at a time: O(entries)
    /// time and memory for the keys); each value is cloned when the iterator reaches its key.
    /// No lock is held between items, so the loop may write to the cache. Weakly consistent:
    /// see [`Iter`]. Unlike moka's, the items are plain clones (`K`, not `Arc<K>`): wrap big
    /// values in an `Arc`.
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() {
    ///     let cache: ebb_cache::Cache<u32, &str> = ebb_cache::Cache::builder().build();
    ///     cache.insert(1, "one");
    ///     cache.insert(2, "two");
    ///     let mut all: Vec<(u32, &str)> = cache.iter().collect();
    ///     all.sort();
    ///     assert_eq!(all, [(1, "one"), (2, "two")]);
    ///     // Removing inside the loop is fine: no lock is held between items.
    ///     for (key, _) in &cache {
    ///         cache.remove(&key);
    ///     }
    ///     assert_eq!(cache.entry_count(), 0);
    /// }
    /// ```
    pub fn iter(&self) -> Iter<'_, K, V, S> {
        let store = self.store();
        Iter {
            store,
            keys: store.live_keys().into_iter(),
        }
    }
}

impl<'a, K, V, S> IntoIterator for &'a Cache<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    type Item = (K, V);
    type IntoIter = Iter<'a, K, V, S>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}
