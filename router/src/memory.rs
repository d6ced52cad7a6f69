//! Gives the heap back after load, where glibc's allocator serves it. (The `scoregrid` binary
//! runs on mimalloc, which purges freed pages itself, and this trim then has little to do; it
//! stays for processes that embed the router on the system allocator.)
//!
//! glibc's allocator keeps the pages of freed memory for reuse,
//! and returns them to the kernel only from the top of the heap: after an overload run (about
//! 10,000 requests/s, thousands of connections) the router stayed at 35-70 MiB of RSS while idle,
//! against 12 MiB before, and `malloc_trim(0)` brought it back to 15 MiB. Nothing was leaked;
//! the memory was free but held.
//!
//! So the upkeep timer trims the heap once load has fallen: when an interval saw less than a
//! quarter of the requests of the one before. Never under steady load, where trimming would
//! only hand pages back that the next requests ask for again (and it holds the allocator's locks
//! while it runs).

/// Decides, once per upkeep interval, whether load has fallen enough to trim.
#[derive(Debug, Default)]
pub struct HeapTrim {
    /// Requests counted at the previous tick, and in the interval before it.
    seen: u64,
    previous_interval: u64,
}

impl HeapTrim {
    /// `total` is the count of requests since the start; returns whether to trim now.
    pub fn tick(&mut self, total: u64) -> bool {
        let interval = total.saturating_sub(self.seen);
        let fallen = interval.saturating_mul(4) < self.previous_interval;
        self.seen = total;
        self.previous_interval = interval;
        fallen
    }
}

/// Returns free heap memory to the kernel; a no-op but for glibc on Linux.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::time::Instant::now();
        // SAFETY: malloc_trim takes no pointer and only walks the allocator's own free lists,
        // under its own locks; it is safe to call from any thread at any time.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(
            released = released != 0,
            micros = started.elapsed().as_micros() as u64,
            "heap trimmed after load fell"
        );
        metrics::counter!(crate::telemetry::HEAP_TRIMS).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trims when load falls below a quarter of the interval before, not under steady or rising
    /// load, not while idle.
    #[test]
    fn trims_once_each_time_load_falls() {
        let mut trim = HeapTrim::default();
        let mut total = 0;
        let mut ticks = |per_interval: &[u64]| -> Vec<bool> {
            per_interval
                .iter()
                .map(|requests| {
                    total += requests;
                    trim.tick(total)
                })
                .collect()
        };
        // Idle start, load, steady load with noise, a fall to a fifth, then to nothing (a
        // second fall), idle.
        assert_eq!(
            ticks(&[0, 0, 50_000, 48_000, 52_000, 10_000, 0, 0]),
            [false, false, false, false, false, true, true, false]
        );
        // Load again, then it stops at once.
        assert_eq!(ticks(&[40_000, 0, 0]), [false, true, false]);
        // Falling by half each interval is not a fall to a quarter.
        assert_eq!(ticks(&[40_000, 20_000, 10_000]), [false, false, false]);
    }
}
