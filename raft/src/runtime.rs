//! The async runtime openraft runs on: tokio, with one difference from openraft's own
//! `TokioRuntime`: the random numbers behind election timeouts come from a per-thread generator
//! that a test can seed ([`seed_thread_rng`]). With the seeded network of the simulation tests
//! and tokio's paused clock on one thread, a seed then names one run: the same elections at the
//! same virtual times. Outside tests each thread seeds itself from the OS's hash randomness.

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};
use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

thread_local! {
    /// splitmix64 state; `None` until first used or seeded.
    static RNG_STATE: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Seeds this thread's generator: every election timeout drawn on this thread from now on
/// follows from `seed`.
pub fn seed_thread_rng(seed: u64) {
    RNG_STATE.with(|state| state.set(Some(seed)));
}

fn os_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    hasher.finish()
}

fn next_u64() -> u64 {
    RNG_STATE.with(|state| {
        let mut x = state.get().unwrap_or_else(os_seed);
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(Some(x));
        scoregrid_shard::hashing::mix64(x)
    })
}

/// A handle on this thread's generator (not `Send`: openraft uses it where it draws).
#[derive(Debug)]
pub struct ThreadRng(PhantomData<*const ()>);

impl rand_core::RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        (next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// Tokio, with [`ThreadRng`] as openraft's source of randomness.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScoregridRuntime;

impl AsyncRuntime for ScoregridRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng(PhantomData)
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(sender), receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::RngCore;

    #[test]
    fn a_seed_names_one_sequence() {
        let draw = |seed| {
            seed_thread_rng(seed);
            let mut rng = ScoregridRuntime::thread_rng();
            (0..4).map(|_| rng.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
