//! Value codecs: [`Codec`], the [`Json`] default, and [`Postcard`] (cargo feature
//! `postcard`).
//!
//! Invariant: what a codec writes never begins with the byte `0xFF`, which begins the tier's
//! own markers (the not-found placeholder and tombstones, see [`NOT_FOUND`](crate::NOT_FOUND)).
//! JSON is UTF-8 text, which never contains `0xFF`; [`Postcard`] writes a leading format
//! byte; the tier refuses to write a value from any codec that breaks the rule.

use crate::error::BoxError;

/// How values are written to and read from Redis.
///
/// An implementation must never produce bytes that begin with `0xFF`: the tier reserves
/// that byte for its markers, and [`insert`](crate::TieredCache::insert) returns
/// [`Error::Encode`](crate::Error::Encode) for such a value (a load stores it in the local
/// tier only). A value that does not decode is treated as a miss: the loader runs, and the
/// undecodable bytes stay in Redis until they expire or are written over (roll the
/// namespace's version when a value's schema changes incompatibly).
pub trait Codec<V>: Send + Sync + 'static {
    /// The bytes stored in Redis for `value`.
    fn encode(&self, value: &V) -> Result<Vec<u8>, BoxError>;
    /// The value `bytes` stand for.
    fn decode(&self, bytes: &[u8]) -> Result<V, BoxError>;
}

/// JSON through `serde_json`, the default: other services, in any language, read and write
/// the same keys (`GET users:v1:7` returns `{"id":7,"name":"ada"}`).
///
/// ```
/// use ebb_redis::{Codec, Json};
///
/// #[tokio::main]
/// async fn main() {
///     let bytes = Json.encode(&vec![1, 2, 3]).unwrap();
///     assert_eq!(bytes, b"[1,2,3]");
///     let back: Vec<u32> = Json.decode(&bytes).unwrap();
///     assert_eq!(back, [1, 2, 3]);
/// }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<V> Codec<V> for Json
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    fn encode(&self, value: &V) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(value)?)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// A compact binary codec through `postcard` (cargo feature `postcard`): smaller values and
/// faster encoding than JSON, read only by services that share the Rust type (postcard is not
/// self-describing: a changed field order or type needs a new namespace version).
///
/// Each value is written as the format byte `0x01` followed by postcard's bytes, so that it
/// never begins with the marker byte `0xFF`.
///
/// ```
/// use ebb_redis::{Codec, Postcard};
///
/// #[tokio::main]
/// async fn main() {
///     let bytes = Postcard.encode(&(7u64, "ada".to_string())).unwrap();
///     assert_eq!(bytes, [0x01, 7, 3, b'a', b'd', b'a']);
///     let back: (u64, String) = Postcard.decode(&bytes).unwrap();
///     assert_eq!(back, (7, "ada".to_string()));
/// }
/// ```
#[cfg(feature = "postcard")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

#[cfg(feature = "postcard")]
const POSTCARD_FORMAT: u8 = 0x01;

#[cfg(feature = "postcard")]
impl<V> Codec<V> for Postcard
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    fn encode(&self, value: &V) -> Result<Vec<u8>, BoxError> {
        let mut out = postcard::to_extend(value, vec![POSTCARD_FORMAT])?;
        out.shrink_to_fit();
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, BoxError> {
        match bytes.split_first() {
            Some((&POSTCARD_FORMAT, rest)) => Ok(postcard::from_bytes(rest)?),
            _ => Err("not a postcard value written by ebb-redis (no leading 0x01)".into()),
        }
    }
}
