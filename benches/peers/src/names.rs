//! The implementation names: criterion's function ids in the `core` and `load` benches, the
//! `IMPL` argument of the process-level workloads, and the `impl` field of the rows the runner
//! saves under `<TARGET_DIR>/ebb-peers/`. Criterion keeps its results under
//! `<TARGET_DIR>/criterion/<group>/<name>/`, `report` and `chart` find them there by these
//! names, and `README.md` lists them: a name changed here no longer matches earlier results.

/// `ebb_cache::Cache<u64, u64>` with a TTL and nothing else.
pub const EBB: &str = "ebb";
/// `ebb` built with `.record_stats()` (`read_heavy`).
pub const EBB_STATS: &str = "ebb_stats";
/// `ebb` built with `.publish_metrics(10 ms)`, publishing to a Prometheus recorder
/// (`ebb-peers metrics`, with this package's `metrics` feature).
pub const EBB_METRICS: &str = "ebb_metrics";
/// `ebb` built with `.time_to_idle(60 s)` beside its TTL (`read_heavy`).
pub const EBB_TTI: &str = "ebb_tti";
/// `ebb` with a capacity. In `read_heavy`: `max_capacity` at 10% of the key space, so that
/// evictions happen, and nothing else (no listener, no `record_stats()`); its evictions are
/// counted in an untimed replay of the same operations (`mixed::count_evictions`). In
/// `memory`: `max_capacity(N)`, so that nothing is evicted.
pub const EBB_BOUNDED: &str = "ebb_bounded";
/// ebb's `get_with` on a present key (`get_with_hit`).
pub const EBB_GET_WITH: &str = "ebb_get_with";
/// ebb's plain `get` on a present key (`get_with_hit`), the group's baseline.
pub const EBB_GET: &str = "ebb_get";

/// The exact-read limit: a raw `DashMap` holding a deadline beside each value, checked on
/// every read (`mixed::ExactLimit`).
pub const EXACT_LIMIT: &str = "exact_limit";
/// A raw `DashMap<u64, u64>` in the benches: no expiry at all, an upper bound.
pub const DASHMAP_NO_TTL: &str = "dashmap_no_ttl";
/// A raw `DashMap<u64, u64>` in the process-level workloads (`memory`).
pub const DASHMAP: &str = "dashmap";

/// The naive correct implementation of ebb's design (`floor::Floor`): an `Arc` of a
/// `DashMap<u64, (u64, Instant)>` and a `CancellationToken`'s `DropGuard`, and one spawned
/// task per cache holding a `Weak` of it and waiting on the token (`per-request`). In
/// `expiry`, the least a fixed-TTL cache over a `DashMap` does to remove what expires
/// (`floor::ExpiryFloor`: the map, a clock read per write, a FIFO of deadlines drained by key
/// at each maintenance call).
pub const FLOOR: &str = "floor";

/// `moka::future::Cache<u64, u64>` with the same TTL as ebb.
pub const MOKA_FUTURE: &str = "moka_future";
/// `moka_future` with `max_capacity(N)`, so that nothing is evicted (`memory`).
pub const MOKA_FUTURE_BOUNDED: &str = "moka_future_bounded";
/// `ebb_cache::Cache<String, u64>` with a TTL, keys of 24 bytes (`memory`).
pub const EBB_STRING: &str = "ebb_string";
/// `moka::future::Cache<String, u64>` with the same TTL and keys as `ebb_string` (`memory`).
pub const MOKA_FUTURE_STRING: &str = "moka_future_string";
/// `moka::sync::Cache<u64, u64>` with the same TTL as ebb.
pub const MOKA_SYNC: &str = "moka_sync";
/// moka future's `get_with` on a present key (`get_with_hit`).
pub const MOKA_GET_WITH: &str = "moka_get_with";
/// moka future's plain `get` on a present key (`get_with_hit`).
pub const MOKA_GET: &str = "moka_get";
/// `mini_moka::sync::Cache<u64, u64>` with the same TTL as ebb.
pub const MINI_MOKA: &str = "mini_moka";

/// `quick_cache::sync::Cache<u64, u64>` in the benches, sized never to evict; it has no TTL.
pub const QUICK_CACHE_NO_TTL: &str = "quick_cache_no_ttl";
/// `quick_cache::sync::Cache<u64, u64>` in the process-level workloads; it has no TTL.
pub const QUICK_CACHE: &str = "quick_cache";
