//! A counting wrapper around the system allocator: live heap bytes (allocated minus freed),
//! the peak, the number of allocation calls and the bytes they asked for, and an optional
//! trace of one thread's allocations (`trace_start` / `trace_stop`). `set_counting(false)`
//! turns all of it off (the binary does so when `EBB_PEERS_UNCOUNTED` is set), to time code
//! without the counters' shared atomics.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
/// `alloc` and `alloc_zeroed` calls that succeeded.
static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// `realloc` calls that succeeded (not counted in `ALLOCS`).
static REALLOCS: AtomicU64 = AtomicU64::new(0);
/// Bytes asked for: the size of every `alloc` and `alloc_zeroed`, the new size of every
/// `realloc`.
static ALLOCATED: AtomicU64 = AtomicU64::new(0);

/// Whether the counters and the trace run at all (set once, at start-up).
static COUNTING: AtomicBool = AtomicBool::new(true);

/// The system allocator, counting the bytes it hands out and takes back.
pub struct Counting;

/// Count (the default) or only forward to the system allocator. Call it before any
/// measurement: the counts are meaningless from then on.
pub fn set_counting(on: bool) {
    COUNTING.store(on, Ordering::SeqCst);
}

/// Whether this process counts its allocations.
pub fn counting() -> bool {
    COUNTING.load(Ordering::Relaxed)
}

/// Heap bytes allocated and not yet freed, by the whole process, now.
pub fn live_bytes() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// The most live heap bytes seen since the last `reset_peak`.
pub fn peak_bytes() -> isize {
    PEAK.load(Ordering::Relaxed)
}

/// Start tracking the peak from the live bytes now.
pub fn reset_peak() {
    PEAK.store(live_bytes(), Ordering::Relaxed);
}

/// Allocation calls so far, by the whole process: `(alloc + alloc_zeroed, realloc, bytes
/// asked for)`, the last counting each `realloc`'s new size. Differences of two readings are
/// what happened in between, on every thread.
pub fn calls() -> (u64, u64, u64) {
    (
        ALLOCS.load(Ordering::Relaxed),
        REALLOCS.load(Ordering::Relaxed),
        ALLOCATED.load(Ordering::Relaxed),
    )
}

fn grew(by: isize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------
// The trace: a fixed table, so that recording allocates nothing.

/// The most allocations one trace records; later ones are counted in `TRACE_LEN` only.
const TRACE_SLOTS: usize = 1024;
/// Whether a trace runs (checked first, so that untraced calls pay one relaxed load).
static TRACING: AtomicBool = AtomicBool::new(false);
static TRACE_LEN: AtomicUsize = AtomicUsize::new(0);
static TRACE_PTR: [AtomicUsize; TRACE_SLOTS] = [const { AtomicUsize::new(0) }; TRACE_SLOTS];
static TRACE_SIZE: [AtomicUsize; TRACE_SLOTS] = [const { AtomicUsize::new(0) }; TRACE_SLOTS];
static TRACE_ALIGN: [AtomicUsize; TRACE_SLOTS] = [const { AtomicUsize::new(0) }; TRACE_SLOTS];
/// 0: live; otherwise the free's sequence number (1 for the first free seen, ...).
static TRACE_FREED: [AtomicUsize; TRACE_SLOTS] = [const { AtomicUsize::new(0) }; TRACE_SLOTS];
static TRACE_FREES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations are recorded.
    static TRACED: Cell<bool> = const { Cell::new(false) };
}

/// One allocation a trace recorded: its size and alignment, and whether it was freed before
/// the trace stopped (frees are recorded from every thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traced {
    pub size: usize,
    pub align: usize,
    pub freed: bool,
}

/// Record every allocation this thread makes from now on (up to 1,024), and every free of
/// one of them by any thread, until `trace_stop`. One trace at a time.
pub fn trace_start() {
    TRACE_LEN.store(0, Ordering::SeqCst);
    TRACE_FREES.store(0, Ordering::SeqCst);
    TRACED.with(|t| t.set(true));
    TRACING.store(true, Ordering::SeqCst);
}

/// The allocations recorded so far, in order, without stopping the trace (allocates the
/// `Vec` it returns outside the trace), and how many there were in all.
pub fn trace_read() -> (Vec<Traced>, usize) {
    let was = TRACED.with(|t| t.replace(false));
    let total = TRACE_LEN.load(Ordering::SeqCst);
    let out = (0..total.min(TRACE_SLOTS))
        .map(|i| Traced {
            size: TRACE_SIZE[i].load(Ordering::SeqCst),
            align: TRACE_ALIGN[i].load(Ordering::SeqCst),
            freed: TRACE_FREED[i].load(Ordering::SeqCst) != 0,
        })
        .collect();
    TRACED.with(|t| t.set(was));
    (out, total)
}

/// Stop the trace and return what it recorded (see `trace_read`).
pub fn trace_stop() -> (Vec<Traced>, usize) {
    TRACED.with(|t| t.set(false));
    let out = trace_read();
    TRACING.store(false, Ordering::SeqCst);
    out
}

fn trace_alloc(p: *mut u8, size: usize, align: usize) {
    if !TRACING.load(Ordering::Relaxed) || !TRACED.with(Cell::get) {
        return;
    }
    let i = TRACE_LEN.fetch_add(1, Ordering::SeqCst);
    if i < TRACE_SLOTS {
        TRACE_FREED[i].store(0, Ordering::SeqCst);
        TRACE_SIZE[i].store(size, Ordering::SeqCst);
        TRACE_ALIGN[i].store(align, Ordering::SeqCst);
        TRACE_PTR[i].store(p as usize, Ordering::SeqCst);
    }
}

fn trace_free(p: *mut u8) {
    if !TRACING.load(Ordering::Relaxed) {
        return;
    }
    let len = TRACE_LEN.load(Ordering::SeqCst).min(TRACE_SLOTS);
    // The latest live record at this address: an address freed and handed out again has an
    // older, freed record too.
    for i in (0..len).rev() {
        if TRACE_PTR[i].load(Ordering::SeqCst) == p as usize
            && TRACE_FREED[i].load(Ordering::SeqCst) == 0
        {
            let n = TRACE_FREES.fetch_add(1, Ordering::SeqCst) + 1;
            TRACE_FREED[i].store(n, Ordering::SeqCst);
            return;
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters and the trace only observe sizes and addresses, and allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() && counting() {
            grew(layout.size() as isize);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
            trace_alloc(p, layout.size(), layout.align());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() && counting() {
            grew(layout.size() as isize);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
            trace_alloc(p, layout.size(), layout.align());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !counting() {
            return System.dealloc(ptr, layout);
        }
        trace_free(ptr);
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() && counting() {
            grew(new_size as isize - layout.size() as isize);
            REALLOCS.fetch_add(1, Ordering::Relaxed);
            ALLOCATED.fetch_add(new_size as u64, Ordering::Relaxed);
            // In the trace, the old block is freed and the new one allocated.
            trace_free(ptr);
            trace_alloc(p, new_size, layout.align());
        }
        p
    }
}
