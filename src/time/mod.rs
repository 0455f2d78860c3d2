//! Time, as the cache counts it: the clock that turns `tokio::time::Instant`s into
//! nanoseconds and wheel ticks, the jitter that spreads default-TTL deadlines, and the timing
//! wheel the expiry task files deadlines in.
//!
//! Layering: nothing here knows the store or the task. The wheel is a pure data structure
//! (no tokio, no clock), checked against a reference model in its `tests.rs`.

pub(crate) mod clock;
pub(crate) mod jitter;
pub(crate) mod wheel;
