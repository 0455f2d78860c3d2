//! [`Error`]: why a write, an `invalidate_all` or a build failed. Reads never return it: a
//! read whose Redis call fails goes on to the loader, and only the loader's own error reaches
//! its caller.

use std::fmt;
use std::time::Duration;

/// A boxed error from a codec or from the Redis client, kept as the [`source`] of an
/// [`Error`] so that no client type appears in this crate's API.
///
/// [`source`]: std::error::Error::source
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a write ([`insert`], [`remove`], [`invalidate_all`]) or a build failed.
///
/// A write that fails with [`Timeout`](Error::Timeout) or [`Redis`](Error::Redis) may or may
/// not have reached Redis; either way the key is dropped from the local tier, so the next
/// read asks Redis.
///
/// [`insert`]: crate::TieredCache::insert
/// [`remove`]: crate::TieredCache::remove
/// [`invalidate_all`]: crate::TieredCache::invalidate_all
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Redis did not answer within the operation's timeout (connecting included). A write may
    /// or may not have happened.
    Timeout {
        /// The operation that timed out (`"insert"`, `"remove"`, `"invalidate_all"`).
        operation: &'static str,
        /// The timeout that passed.
        after: Duration,
    },
    /// Redis could not be reached, or answered with an error (a refused connection, a
    /// dropped one, an ACL denial, an out-of-memory refusal). A write may or may not have
    /// happened.
    Redis {
        /// The operation that failed.
        operation: &'static str,
        /// The client's error.
        source: BoxError,
    },
    /// Redis was not asked: the breaker is open after repeated failures (timeouts, no
    /// connection), until its cooldown ends and a probe succeeds. A write that fails so did
    /// not happen (and the key was dropped from the local tier all the same).
    Unavailable {
        /// The operation that was not made.
        operation: &'static str,
    },
    /// The codec could not encode the value, or encoded it into bytes that begin with the
    /// marker byte `0xFF` (reserved for the tier's placeholders). Nothing was written.
    Encode(BoxError),
    /// The builder's settings cannot work (a missing Redis address, an unparsable URL, a zero
    /// TTL): the message names the fix.
    Config(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout { operation, after } => write!(
                f,
                "ebb-redis: {operation} timed out after {after:?} waiting for Redis; the write \
                 may or may not have happened, and the key was dropped from the local tier"
            ),
            Error::Redis { operation, source } => {
                write!(f, "ebb-redis: {operation} failed in Redis: {source}")
            }
            Error::Unavailable { operation } => write!(
                f,
                "ebb-redis: {operation} skipped: the breaker is open after repeated Redis \
                 failures (it probes Redis again after its cooldown)"
            ),
            Error::Encode(source) => {
                write!(f, "ebb-redis: the value could not be encoded: {source}")
            }
            Error::Config(message) => write!(f, "ebb-redis: {message}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Redis { source, .. } | Error::Encode(source) => Some(source.as_ref()),
            Error::Timeout { .. } | Error::Unavailable { .. } | Error::Config(_) => None,
        }
    }
}
