//! [`Remote`]: the tier's side of Redis: its markers, its scripts, and each call bounded by
//! a timeout.
//!
//! Invariants (the fill protocol, see `docs/redis.md`):
//! - A read returns the value and its remaining TTL in one round trip (`PTTL` then `GET`,
//!   pipelined), so the local copy never outlives the remote one: the TTL is read *before*
//!   the value, so a write slipping between the two can only shorten what is kept, never
//!   lengthen it, and a value whose key had no TTL left (`-2`) is not trusted as a hit.
//! - A read that a fill may follow (nothing, a tombstone, undecodable bytes) is a stamped
//!   read: value, TTL and the server's clock in one script, so that the clock a fill is
//!   checked against is the clock of the very read that found no usable value.
//! - A load's fill is written only if, on the server's clock: the key holds nothing, or a
//!   tombstone older than the load's read; no `invalidate_all` happened after the read; and
//!   the read is younger than the tombstone TTL (so no tombstone written after the read can
//!   have expired yet). A fill never overwrites a value or a placeholder, except the very
//!   bytes its read found and could not decode (another writer's, an older schema's).
//! - `insert` overwrites whatever is there; `remove` leaves a tombstone stamped with the
//!   server's clock, living for the tombstone TTL.
//! - Every call, connecting included, ends within its timeout.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::{FromRedisValue, Script, Value};
use tokio::time::Instant;

use crate::breaker::Breaker;
use crate::config::Settings;
use crate::error::Error;
use crate::link::{connection_lost, Link};
use crate::stats::{Counters, Event};

/// The bytes stored for a key that was looked up and not found (by
/// [`optionally_get_with`](crate::TieredCache::optionally_get_with)): `0xFF` then
/// `ebb:not-found`. No JSON text can be equal to it (JSON is UTF-8, which never contains
/// the byte `0xFF`), and no [`Codec`](crate::Codec) may write a value that begins with
/// `0xFF`. Other services reading the namespace should treat it as "known not to exist".
pub const NOT_FOUND: &[u8] = b"\xffebb:not-found";

/// The beginning of a tombstone, the short-lived marker [`remove`](crate::TieredCache::remove)
/// leaves: `0xFF` then `ebb:tombstone:`, followed by the server time of the removal in
/// microseconds since the Unix epoch, in decimal. Readers treat it as a miss; it only stops
/// loads that began before the removal from writing their (older) value back.
pub const TOMBSTONE_PREFIX: &[u8] = b"\xffebb:tombstone:";

/// What follows `namespace:` in the key that records the server time of the last
/// `invalidate_all`: UTF-8 keys cannot contain `0xFF`, so it cannot be a cached key.
const INVALIDATED: &[u8] = b"\xffebb:invalidated";

/// Keys unlinked per `SCAN` step of `invalidate_all`.
const SCAN_BATCH: usize = 500;

/// `GET`, `TIME` and `PTTL` atomically, in one round trip: `{seconds, microseconds, pttl[,
/// value]}`. The stamped read, for a miss that may end in a fill.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local value = redis.call('GET', KEYS[1])
local now = redis.call('TIME')
local ttl = redis.call('PTTL', KEYS[1])
if value then return {now[1], now[2], ttl, value} end
return {now[1], now[2], ttl}
",
    )
});

/// A load's fill: 1 when written, 0 when refused (see the module's invariants).
/// KEYS: the key, the namespace's invalidation record. ARGV: the bytes, the TTL in ms, the
/// read's server time in µs, the tombstone TTL in µs, the tombstone prefix, and the bytes
/// the read found that did not decode (empty: none), which the fill may replace.
static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000000 + tonumber(now[2])
local read = tonumber(ARGV[3])
if now - read >= tonumber(ARGV[4]) then return 0 end
local invalidated = redis.call('GET', KEYS[2])
if invalidated and tonumber(invalidated) >= read then return 0 end
local current = redis.call('GET', KEYS[1])
if current and not (ARGV[6] ~= '' and current == ARGV[6]) then
  local prefix = ARGV[5]
  if string.sub(current, 1, #prefix) ~= prefix then return 0 end
  if tonumber(string.sub(current, #prefix + 1)) >= read then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
",
    )
});

/// Stamp a key with the server's time: `SET KEYS[1] (ARGV[1] .. µs) PX ARGV[2]`. For
/// tombstones (with their prefix) and the namespace's invalidation record (with none).
static STAMP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[1] .. now[1] .. string.format('%06d', tonumber(now[2])), 'PX', ARGV[2])
return 1
",
    )
});

/// What a read found in Redis.
pub(crate) enum Found {
    /// A value's bytes, as the codec wrote them.
    Value(Vec<u8>),
    /// The not-found placeholder.
    Placeholder,
    /// Nothing, or a tombstone.
    Nothing,
}

/// A read's answer.
pub(crate) struct Read {
    /// The server's clock at the read, in µs since the epoch: `Some` for a stamped read
    /// ([`Remote::read_stamped`]), `None` for a plain one ([`Remote::read`]).
    pub(crate) at: Option<u64>,
    pub(crate) found: Found,
    /// What is left of the key's TTL (`None`: no TTL, or no key).
    pub(crate) ttl: Option<Duration>,
}

/// The tier's calls to Redis.
pub(crate) struct Remote {
    link: Arc<Link>,
    settings: Arc<Settings>,
    pub(crate) breaker: Breaker,
    counters: Arc<Counters>,
    /// `namespace:\xffebb:invalidated`.
    invalidated: Vec<u8>,
}

enum Request<'a> {
    Cmd(&'a redis::Cmd),
    Pipeline(&'a redis::Pipeline),
    Script(&'a redis::ScriptInvocation<'a>),
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Remote {
    pub(crate) fn new(link: Arc<Link>, settings: Arc<Settings>, counters: Arc<Counters>) -> Remote {
        let mut invalidated = format!("{}:", settings.namespace).into_bytes();
        invalidated.extend_from_slice(INVALIDATED);
        let breaker = Breaker::new(
            settings.breaker_threshold,
            settings.breaker_cooldown,
            Arc::clone(&counters),
            settings.namespace.clone(),
        );
        Remote {
            link,
            settings,
            breaker,
            counters,
            invalidated,
        }
    }

    /// One request on the tier's connection, connecting first if needed, all within `limit`;
    /// none while the breaker is open. Counts its failures by kind and tells the breaker.
    async fn call<T: FromRedisValue>(
        &self,
        operation: &'static str,
        limit: Duration,
        request: Request<'_>,
    ) -> Result<T, Error> {
        self.call_until(operation, Instant::now() + limit, limit, request)
            .await
    }

    /// [`call`](Self::call), ending by `deadline`, the end of a budget of `limit` (the
    /// timeout the error names).
    async fn call_until<T: FromRedisValue>(
        &self,
        operation: &'static str,
        deadline: Instant,
        limit: Duration,
        request: Request<'_>,
    ) -> Result<T, Error> {
        let Some(permit) = self.breaker.admit() else {
            self.counters.count(Event::Skipped);
            return Err(Error::Unavailable { operation });
        };
        let attempt = async {
            // Connected (the usual case): no waiting, and no connection wait's state in
            // this future (boxed when it is needed: ebb boxes a miss's whole future).
            let up = match self.link.up() {
                Some(up) => Ok(up),
                None => Box::pin(self.link.conn()).await,
            };
            let (id, mut conn) = match up {
                Ok(conn) => conn,
                Err(e) => {
                    return Err((
                        Event::Connection,
                        Error::Redis {
                            operation,
                            source: e.to_string().into(),
                        },
                    ))
                }
            };
            let result = match request {
                Request::Cmd(cmd) => cmd.query_async(&mut conn).await,
                Request::Pipeline(pipeline) => pipeline.query_async(&mut conn).await,
                // The largest of the three futures (`EVALSHA`, then `SCRIPT LOAD` when the
                // script is missing), and only on the miss and write paths: boxed.
                Request::Script(invocation) => Box::pin(invocation.invoke_async(&mut conn)).await,
            };
            result.map_err(|error| {
                self.link.failed(id, &error);
                let kind = if connection_lost(&error) {
                    Event::Connection
                } else if error.is_timeout() {
                    Event::Timeout
                } else {
                    // Redis answered, with an error: out of memory, read-only, an ACL denial.
                    Event::Refused
                };
                (
                    kind,
                    Error::Redis {
                        operation,
                        source: Box::new(error),
                    },
                )
            })
        };
        let outcome = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err((
                Event::Timeout,
                Error::Timeout {
                    operation,
                    after: limit,
                },
            )),
        };
        match outcome {
            Ok(value) => {
                permit.succeeded();
                Ok(value)
            }
            Err((kind, error)) => {
                self.counters.count(kind);
                if matches!(kind, Event::Refused) {
                    permit.succeeded();
                } else if permit.failed() && matches!(kind, Event::Timeout) {
                    // Timeouts opened the breaker: the connection may be dead without an
                    // error (a peer gone without a reset, a failover to another address), so
                    // open a new one in the background; the probe will use it.
                    self.link.reconnect();
                }
                Err(error)
            }
        }
    }

    /// The key's value (or placeholder) and its remaining TTL, without the server's clock:
    /// `PTTL` then `GET`, pipelined, by `deadline` (the end of the read timeout). A value
    /// found with no TTL left (`-2`: the key expired or was written between the two) is
    /// reported as `Found::Nothing`, so that the caller asks again with
    /// [`read_stamped`](Self::read_stamped).
    pub(crate) async fn read(&self, key: &[u8], deadline: Instant) -> Result<Read, Error> {
        // Built at its final size: no buffer grows.
        let command = |name: &str| {
            let mut cmd = redis::Cmd::with_capacity(2, name.len() + key.len());
            cmd.arg(name).arg(key);
            cmd
        };
        let mut pipeline = redis::Pipeline::with_capacity(2);
        pipeline
            .add_command(command("PTTL"))
            .add_command(command("GET"));
        let (ttl, value): (i64, Option<Vec<u8>>) = self
            .call_until(
                "read",
                deadline,
                self.settings.read_timeout,
                Request::Pipeline(&pipeline),
            )
            .await?;
        let found = match value {
            Some(_) if ttl == -2 => Found::Nothing,
            Some(bytes) => found(bytes),
            None => Found::Nothing,
        };
        Ok(Read {
            at: None,
            found,
            ttl: u64::try_from(ttl).ok().map(Duration::from_millis),
        })
    }

    /// The key's value (or placeholder), its remaining TTL and the server's clock, read
    /// atomically (one script) by `deadline` (the end of the read timeout): the read a fill
    /// may follow.
    pub(crate) async fn read_stamped(&self, key: &[u8], deadline: Instant) -> Result<Read, Error> {
        let invocation = READ.key(key);
        let reply: Value = self
            .call_until(
                "read",
                deadline,
                self.settings.read_timeout,
                Request::Script(&invocation),
            )
            .await?;
        parse_read(reply).map_err(|message| Error::Redis {
            operation: "read",
            source: message.into(),
        })
    }

    /// Write a load's result unless a write, a removal or an `invalidate_all` came after the
    /// read at `read_at` (see the module's invariants). `Ok(true)` when written.
    pub(crate) async fn fill(
        &self,
        key: &[u8],
        bytes: &[u8],
        ttl: Duration,
        read_at: u64,
        replace: Option<&[u8]>,
    ) -> Result<bool, Error> {
        let tombstone_us =
            u64::try_from(self.settings.tombstone_ttl.as_micros()).unwrap_or(u64::MAX);
        let mut invocation = FILL.key(key);
        invocation
            .key(&self.invalidated[..])
            .arg(bytes)
            .arg(millis(ttl))
            .arg(read_at)
            .arg(tombstone_us)
            .arg(TOMBSTONE_PREFIX)
            .arg(replace.unwrap_or_default());
        let written: i64 = self
            .call(
                "fill",
                self.settings.write_timeout,
                Request::Script(&invocation),
            )
            .await?;
        Ok(written == 1)
    }

    /// `SET key bytes PX ttl`: an explicit write, over whatever is there.
    pub(crate) async fn set(&self, key: &[u8], bytes: &[u8], ttl: Duration) -> Result<(), Error> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(bytes).arg("PX").arg(millis(ttl));
        self.call::<()>("insert", self.settings.write_timeout, Request::Cmd(&cmd))
            .await
    }

    /// Replace the key with a tombstone stamped with the server's time.
    pub(crate) async fn tombstone(&self, key: &[u8]) -> Result<(), Error> {
        self.stamp("remove", key, TOMBSTONE_PREFIX).await
    }

    async fn stamp(&self, operation: &'static str, key: &[u8], prefix: &[u8]) -> Result<(), Error> {
        let mut invocation = STAMP.key(key);
        invocation
            .arg(prefix)
            .arg(millis(self.settings.tombstone_ttl));
        self.call::<i64>(
            operation,
            self.settings.write_timeout,
            Request::Script(&invocation),
        )
        .await
        .map(drop)
    }

    /// Record the invalidation's server time (fills of loads that read before it are then
    /// refused), then unlink every key of the namespace in `SCAN` batches. Returns the number
    /// of keys unlinked.
    pub(crate) async fn invalidate_all(&self) -> Result<u64, Error> {
        const OPERATION: &str = "invalidate_all";
        self.stamp(OPERATION, &self.invalidated, b"").await?;
        let pattern = glob_prefix(&self.settings.namespace);
        let mut cursor = 0_u64;
        let mut unlinked = 0_u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH);
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .call(OPERATION, self.settings.write_timeout, Request::Cmd(&scan))
                .await?;
            let keys: Vec<Vec<u8>> = keys
                .into_iter()
                .filter(|k| *k != self.invalidated)
                .collect();
            if !keys.is_empty() {
                let mut unlink = redis::cmd("UNLINK");
                unlink.arg(&keys);
                let n: u64 = self
                    .call(
                        OPERATION,
                        self.settings.write_timeout,
                        Request::Cmd(&unlink),
                    )
                    .await?;
                unlinked += n;
            }
            if next == 0 {
                return Ok(unlinked);
            }
            cursor = next;
        }
    }
}

/// `namespace:*` with the namespace's glob characters escaped.
fn glob_prefix(namespace: &str) -> String {
    let mut pattern = String::with_capacity(namespace.len() + 2);
    for c in namespace.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str(":*");
    pattern
}

/// What the bytes under a key stand for.
fn found(bytes: Vec<u8>) -> Found {
    if bytes == NOT_FOUND {
        Found::Placeholder
    } else if bytes.starts_with(TOMBSTONE_PREFIX) {
        Found::Nothing
    } else {
        Found::Value(bytes)
    }
}

fn parse_read(reply: Value) -> Result<Read, String> {
    let Value::Array(items) = reply else {
        return Err(format!("unexpected reply to the read script: {reply:?}"));
    };
    let mut items = items.into_iter();
    let mut next = || items.next().ok_or("short reply to the read script");
    let seconds: u64 = redis::from_redis_value(next()?).map_err(|e| e.to_string())?;
    let micros: u64 = redis::from_redis_value(next()?).map_err(|e| e.to_string())?;
    let ttl: i64 = redis::from_redis_value(next()?).map_err(|e| e.to_string())?;
    let found = match next() {
        Err(_) => Found::Nothing,
        Ok(value) => found(redis::from_redis_value(value).map_err(|e| e.to_string())?),
    };
    Ok(Read {
        at: Some(seconds * 1_000_000 + micros),
        found,
        ttl: u64::try_from(ttl).ok().map(Duration::from_millis),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_in_a_namespace_are_escaped() {
        assert_eq!(glob_prefix("users:v1"), "users:v1:*");
        assert_eq!(glob_prefix("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\:*");
    }

    #[test]
    fn markers_are_not_json() {
        assert!(serde_json::from_slice::<serde_json::Value>(NOT_FOUND).is_err());
        assert!(serde_json::from_slice::<serde_json::Value>(TOMBSTONE_PREFIX).is_err());
        assert_eq!(NOT_FOUND[0], 0xFF);
        assert_eq!(TOMBSTONE_PREFIX[0], 0xFF);
    }
}
