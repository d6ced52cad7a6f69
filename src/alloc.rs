//! The process's allocator: mimalloc, purging freed memory at once.
//!
//! Why not glibc's: under overload the router spent 13% of its CPU in glibc's `malloc` and
//! `free` (`perf`, 2x capacity, BENCHMARKS.md 3d), for the many small short-lived allocations of
//! HTTP requests, node calls and JSON answers across tokio's threads. With mimalloc the same
//! cluster answered 9-18% more at capacity, and more under overload in 15 of 16 comparisons
//! (BENCHMARKS.md 3d, session 10).
//!
//! Why purge at once: mimalloc's default delays giving freed pages back, which held the loader
//! at 107 MiB peak RSS for an 84 MiB model (39 MiB on glibc) and the router at 1.6x its idle RSS
//! after a load had passed (`tests/e2e_loads.rs` and `tests/e2e_overload.rs` failed). Purging at
//! once gave 54 MiB and the idle level back, with the throughput gains above.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (libmimalloc-sys 0.1.49 names no
/// constant for it; Cargo.toml pins that version). What guards it is behaviour: the RSS bounds
/// of `tests/e2e_loads.rs` and `tests/e2e_overload.rs` fail without the purge.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc give freed pages back to the kernel at once. Called first thing in `main`:
/// what was allocated before is purged under the old delay, which is harmless.
pub fn purge_at_once() {
    // SAFETY: mi_option_set takes two integers and writes one of mimalloc's own option cells;
    // it may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}
