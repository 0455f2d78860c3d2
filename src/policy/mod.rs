//! The eviction policy for bounded caches: TinyLFU admission over a window queue and a CLOCK main
//! queue, one instance per policy shard.
//!
//! Every new key enters a small *window* FIFO (0.2% of the capacity). When the window is over its
//! share, its oldest key becomes a *candidate* for the *main* queue, which holds the rest. While
//! main has room the candidate simply moves in (whether or not the shard is full). Otherwise, once
//! the shard is over its capacity, main offers a *victim*: main is a CLOCK,
//! so the hand passes over entries read since it last passed them (their read counter, at most 3,
//! counts down) and stops at the first one not read, or, once it has passed [`SCAN_BUDGET`]
//! entries in this eviction, at the first entry it reaches, read or not. The candidate replaces
//! the victim only if a frequency [`Sketch`] says it was asked for more often, by a margin of more than one request (its
//! reads while in the window count too); otherwise the candidate is evicted and the victim stays.
//! The sketch counts every *miss* (each time a key was inserted), so it remembers keys the cache no
//! longer holds, and an entry's reads, each once: the CLOCK hand counts one read each time it
//! passes an entry whose counter it lowers by one (an entry keeps its counter when it moves from
//! the window to main; reads beyond the counter's 3 before the hand comes are not counted); it halves its counts now and then to forget old popularity, and a doorkeeper
//! in front of it keeps keys asked for only once (a scan) out of its counts.
//!
//! Why this design, chosen by measurement (`cargo run --release -p ebb-peers -- hit-ratio`,
//! replaying seeded traces; figures in the README; every constant here was tuned on them): S3-FIFO
//! (a small queue, a main CLOCK and a ghost list of recently evicted keys), our first policy, was
//! within 0.6 points of quick_cache on Zipf traces but kept 15% of requests instead of moka's 39%
//! on a Zipf workload mixed with a cyclic sweep larger than the cache: a ghost list only remembers
//! keys for about one cache's worth of evictions, so a key that comes back every 15,000 requests
//! always looks new and the main queue cycles. A sketch remembers ten times longer than that in a
//! few bytes per key, and comparing candidate with victim keeps a stable subset of the sweep. The
//! margin of one request is measured too: admitting on any larger count churns the main queue with
//! keys no more frequent than what they displace (on the sweep: 0.1 points lost at both
//! capacities; 1.2 points at capacity 1,000 before the doorkeeper was added). CLOCK in place of an LRU means a hit only bumps a 2-bit counter stored in the
//! entry (a relaxed compare-and-swap, skipped once saturated): no read buffer, no lock, no sketch
//! update on the read path. Everything else happens on the inserting thread, in the key's policy
//! shard.
//!
//! Why the hand has a budget: an insert must not do work that grows with the shard's size or with
//! how hot its entries are. Without one, when every resident entry is read again between inserts,
//! the hand lowers every counter to zero, laps of the whole queue, before it finds a victim. With
//! it, once the hand has passed `SCAN_BUDGET` entries in one eviction, the next live entry at the
//! hand that weighs something is main's victim whatever its counter: from then on the hand only
//! takes items off the queue. That victim still faces the candidate in the sketch comparison, so a
//! resident set read constantly still keeps one-off keys out (its entries are counted often), and a
//! new key asked for often still gets in; when main is over its share with no candidate, that
//! victim goes, so the capacity bound holds. Rejecting the candidate outright once the budget is
//! spent would keep hot entries as well, but it never lets a popular new key in while the set stays
//! hot, and it kept no more hits on the traces. The budget trades hit ratio for the slowest insert:
//! a smaller one loses hits on the Zipf traces in a single policy shard, where the hand meets long
//! runs of read entries; a larger one costs more per insert and gains little (`ebb-peers
//! hit-ratio` and `ebb-peers clock-scan`).
//!
//! Main's queue holds only entries that weigh something: a weightless entry is never a victim
//! (evicting it frees nothing), so it moves to main without a queue item, the hand drops the item
//! of an entry that has come to weigh nothing, and [`TinyLfu::update`] queues an entry of main
//! again once it weighs something. However many weightless entries a weigher makes, the hand never
//! passes over them.
//!
//! The policy is a pure data structure: it knows nothing of tokio or of the map. It sees the
//! cache's entries through [`Residents`], and accounts weights as the store tells it about inserts,
//! updates and removals. Queue items are removed lazily: an item whose key is gone, or whose entry
//! now sits in the other queue, is dropped when it reaches the head (once; it is not a pass of the
//! hand and does not count against the budget: the removal that left it pays for it), and the
//! queues are compacted when stale items outnumber live ones.
//!
//! Invariants:
//! - `window_weight + main_weight` is the total weight of the resident entries this shard
//!   accounts for; after [`TinyLfu::evict`] it is at most the capacity, unless nothing the shard
//!   holds weighs anything.
//! - Every entry of main that weighs something has an item in main's queue.
//! - One [`TinyLfu::evict`] passes over at most [`SCAN_BUDGET`] items (entries whose counter the
//!   hand lowers and puts back); everything else it does takes an item off a queue for good (a
//!   rejected victim goes back, but its candidate leaves the window), so it always ends.
//! - No user code runs here; [`Residents`] implementations must not take this policy's lock.
//!
//! Layout: `tinylfu.rs` holds the policy, `sketch.rs` the frequency sketch, `tests.rs` the
//! policy's model tests. Nothing here knows tokio, the map or the store.

mod sketch;
mod tinylfu;

pub(crate) use tinylfu::{Residents, Status, TinyLfu, MAX_FREQ};
