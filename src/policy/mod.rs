//! The eviction policy for bounded caches: TinyLFU admission over a window queue and a CLOCK
//! main queue, one instance per policy shard. A pure data structure: it knows nothing of tokio,
//! the map or the store; it sees the cache's entries through [`Residents`] and accounts weights
//! as the store tells it about inserts, updates and removals.
//!
//! Every new key enters a small *window* FIFO (0.2% of the capacity). When the window is over
//! its share, its oldest key becomes a *candidate* for the *main* queue, which holds the rest.
//! While main has room the candidate simply moves in. Otherwise, once the shard is over its
//! capacity, main offers a *victim*: main is a CLOCK, so the hand passes over entries read
//! since it last passed them (their read counter, at most 3, counts down) and stops at the
//! first one not read, or, once it has passed `SCAN_BUDGET` entries in this eviction, at the
//! first entry it reaches, read or not. The candidate replaces the victim only if the frequency
//! sketch (`sketch.rs`) says it was asked for more often, by a margin of more than one request
//! (its reads while in the window count too); otherwise the candidate is evicted and the victim
//! stays.
//!
//! The sketch counts every *miss* (each time a key was inserted), so it remembers keys the cache
//! no longer holds, and an entry's reads, each once: the hand counts one read each time it
//! lowers an entry's counter. It halves its counts now and then to forget old popularity, and a
//! doorkeeper in front of it keeps keys asked for only once (a scan) out of its counts.
//!
//! Why this design: a ghost list of recently evicted keys (S3-FIFO) remembers keys for only
//! about one cache's worth of evictions, so a key that comes back on a cycle longer than that
//! always looks new; a sketch remembers far longer in a few bytes per key, and comparing
//! candidate with victim keeps a stable subset of such a cycle. A margin of one request keeps
//! keys no more frequent than what they would displace from churning main. CLOCK in place of an
//! LRU means a hit only bumps a 2-bit counter stored in the entry (a relaxed compare-and-swap,
//! skipped once saturated): no read buffer, no lock, no sketch update on the read path.
//! Everything else happens on the inserting thread, in the key's policy shard. The constants
//! were chosen on seeded traces (`ebb-peers hit-ratio`; figures in `benches/peers/README.md`).
//!
//! Why the hand has a budget: an insert must not do work that grows with the shard's size or
//! with how hot its entries are. Without one, when every resident entry is read again between
//! inserts, the hand laps the whole queue several times before it finds a victim. With it, once
//! the hand has passed `SCAN_BUDGET` entries in one eviction, the next live entry at the hand
//! that weighs something is main's victim whatever its counter. That victim still faces the
//! candidate in the sketch comparison, so a hot resident set still keeps one-off keys out and a
//! new key asked for often still gets in; when main is over its share with no candidate, that
//! victim goes, so the capacity bound holds.
//!
//! Main's queue holds only entries that weigh something: a weightless entry is never a victim
//! (evicting it frees nothing), so it moves to main without a queue item, the hand drops the
//! item of an entry that has come to weigh nothing, and `TinyLfu::update` queues an entry of
//! main again once it weighs something.
//!
//! Queue items are removed lazily: an item whose key is gone, or whose entry now sits in the
//! other queue, is dropped when it reaches the head (not a pass of the hand: the removal that
//! left it pays for it), and the queues are compacted when dead items outnumber live ones.
//!
//! Invariants:
//! - `window_weight + main_weight` is the total weight of the resident entries this shard
//!   accounts for. `TinyLfu::evict_within` evicts until the shard is no longer over its
//!   `Limit` (its own capacity, or a bound shared with other shards), unless nothing it holds
//!   weighs anything, or it has evicted its budget of entries first.
//! - Every entry of main that weighs something has an item in main's queue.
//! - One `TinyLfu::evict_within` passes over at most `SCAN_BUDGET` items and evicts at most
//!   its budget; everything else it does takes an item off a queue for good, so it always
//!   ends.
//! - No user code runs here but a key's `Hash`, `Eq` and `Clone`; [`Residents`]
//!   implementations must not take this policy's lock.
//!
//! Layout: `tinylfu.rs` holds the policy, `sketch.rs` the frequency sketch, `tests.rs` the
//! policy's model tests.

mod sketch;
mod tinylfu;

pub(crate) use tinylfu::{Limit, Residents, Status, TinyLfu, MAX_FREQ};
