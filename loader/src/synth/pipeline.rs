//! Chunks produced in parallel, consumed in order: `workers` threads each take every
//! `workers`-th chunk and hand it over a bounded channel; the calling thread receives round-robin,
//! so chunks arrive in order with no reordering buffer and at most `IN_FLIGHT` per worker waiting.

use std::sync::mpsc::sync_channel;

/// Chunks a worker may have finished ahead of the consumer. Bounds memory to
/// `workers * (IN_FLIGHT + 1)` chunks.
const IN_FLIGHT: usize = 2;

/// Most worker threads: generation is CPU-bound and the consumer (a writer or a sink) needs a
/// core too.
const WORKERS_MAX: usize = 4;

fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, WORKERS_MAX)
}

/// Calls `produce(c)` for every chunk `c` in `0..chunks` on worker threads and `consume` on the
/// calling thread with the results in chunk order. Stops at the first error of `consume`
/// (workers notice the closed channel and stop).
///
/// # Errors
/// The first error of `consume`.
///
/// # Panics
/// If `produce` panics (re-raised when the workers are joined).
pub(crate) fn ordered<T: Send, E>(
    chunks: u64,
    produce: impl Fn(u64) -> T + Sync,
    mut consume: impl FnMut(T) -> Result<(), E>,
) -> Result<(), E> {
    let workers = workers().min(usize::try_from(chunks).unwrap_or(usize::MAX));
    if workers <= 1 {
        return (0..chunks).try_for_each(|chunk| consume(produce(chunk)));
    }
    std::thread::scope(|scope| {
        let produce = &produce;
        let receivers: Vec<_> = (0..workers)
            .map(|worker| {
                let (sender, receiver) = sync_channel(IN_FLIGHT);
                scope.spawn(move || {
                    let mut chunk = worker as u64;
                    while chunk < chunks {
                        if sender.send(produce(chunk)).is_err() {
                            return; // the consumer stopped
                        }
                        chunk += workers as u64;
                    }
                });
                receiver
            })
            .collect();
        for chunk in 0..chunks {
            // A closed channel before its last chunk means the worker panicked; the scope
            // re-raises that panic when it joins.
            let Ok(item) = receivers[(chunk % workers as u64) as usize].recv() else {
                break;
            };
            consume(item)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_arrive_in_order_and_errors_stop_early() {
        let mut seen = Vec::new();
        ordered::<_, ()>(
            100,
            |c| c * 2,
            |v| {
                seen.push(v);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, (0..100).map(|c| c * 2).collect::<Vec<_>>());
        let mut consumed = 0;
        let result = ordered(
            1000,
            |c| c,
            |c| {
                consumed += 1;
                if c == 10 { Err("stop") } else { Ok(()) }
            },
        );
        assert_eq!(result, Err("stop"));
        assert_eq!(consumed, 11);
    }
}
