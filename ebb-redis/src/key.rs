//! [`CacheKey`]: how a key becomes the text after `namespace:` in its Redis key.
//!
//! Invariant: a key's text is UTF-8 (it is written into a `String`), so it never contains the
//! byte `0xFF`; the tier's own bookkeeping keys in a namespace do, and cannot collide with a
//! cached key.

use std::fmt::Write;
use std::sync::Arc;

/// A key that names its entry in Redis as `namespace:text`.
///
/// Implemented for the integer types (decimal: `7` is `users:v1:7`) and for strings (as
/// they are: `"ada"` is `users:v1:ada`; a `:` in a string is kept, so `"a:b"` is
/// `users:v1:a:b`). Two keys of a tier must not write the same text: an implementation for a
/// compound key writes its parts with a separator that cannot occur in them.
///
/// ```
/// use std::fmt::Write;
///
/// #[derive(Clone, PartialEq, Eq, Hash)]
/// struct Order {
///     shop: u32,
///     id: u64,
/// }
///
/// impl ebb_redis::CacheKey for Order {
///     fn write_key(&self, out: &mut String) {
///         // `orders:v2:17/4711`: numbers never contain `/`.
///         write!(out, "{}/{}", self.shop, self.id).unwrap();
///     }
/// }
///
/// #[tokio::main]
/// async fn main() {
///     let mut text = String::new();
///     ebb_redis::CacheKey::write_key(&Order { shop: 17, id: 4711 }, &mut text);
///     assert_eq!(text, "17/4711");
/// }
/// ```
pub trait CacheKey {
    /// Append this key's text to `out` (which already holds `namespace:`).
    fn write_key(&self, out: &mut String);

    /// The key whose text is `text`, if this type can read one back. Redis's invalidations
    /// name keys by their text: with this, an invalidation drops its key from L1 in O(1);
    /// without it (the default, `None`), the tier drops the entries whose text matches
    /// through ebb's `invalidate_entries_if`, which every read pays for until the sweep.
    /// Implemented for the integer and `String`-like types.
    fn from_key(text: &str) -> Option<Self>
    where
        Self: Sized,
    {
        let _ = text;
        None
    }
}

macro_rules! integer_keys {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            fn write_key(&self, out: &mut String) {
                // Writing to a `String` cannot fail.
                let _ = write!(out, "{self}");
            }

            fn from_key(text: &str) -> Option<Self> {
                text.parse().ok()
            }
        }
    )*};
}

integer_keys!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

impl CacheKey for String {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }

    fn from_key(text: &str) -> Option<Self> {
        Some(text.into())
    }
}

impl CacheKey for &'static str {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl CacheKey for Box<str> {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }

    fn from_key(text: &str) -> Option<Self> {
        Some(text.into())
    }
}

impl CacheKey for Arc<str> {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }

    fn from_key(text: &str) -> Option<Self> {
        Some(text.into())
    }
}

#[cfg(test)]
mod tests {
    use super::CacheKey;

    fn text(key: &impl CacheKey) -> String {
        let mut out = String::from("ns:");
        key.write_key(&mut out);
        out
    }

    #[test]
    fn integers_are_decimal_and_strings_are_kept() {
        assert_eq!(text(&7_u64), "ns:7");
        assert_eq!(text(&-12_i32), "ns:-12");
        assert_eq!(text(&u128::MAX), format!("ns:{}", u128::MAX));
        assert_eq!(text(&"a:b"), "ns:a:b");
        assert_eq!(text(&String::from("ada")), "ns:ada");
        assert_eq!(text(&std::sync::Arc::<str>::from("é")), "ns:é");
    }
}
