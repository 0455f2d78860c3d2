//! The code of the `ebb-peers` binary and of the `core` and `load` benches.
//!
//! - `names`: the implementation names, used by all of them.
//! - `mixed`: the mixed workloads (`read_heavy`, `write_heavy`), used by the `core` bench and
//!   by `ebb-peers read-heavy`.
//! - One module per subcommand of the binary: `report`, `chart`, `hit_ratio`, `read_heavy`,
//!   `clock_scan`, and `workloads` (the process-level workloads).
//! - `alloc`: the counting allocator, which the binary installs as its `#[global_allocator]`
//!   and `workloads` reads; the benches run on the system allocator.

pub mod alloc;
pub mod chart;
pub mod clock_scan;
pub mod hit_ratio;
pub mod mixed;
pub mod names;
pub mod read_heavy;
pub mod report;
pub mod workloads;
