//! Admission control: the door in front of the scatter. At most `http.requests_in_flight_max`
//! requests are scattered to the nodes at once; up to `http.queue_max` more wait for a slot,
//! each at most `http.queue_wait_ms`. Anything beyond is shed at once with 503 `overloaded`
//! and `Retry-After`, before any node is called, so that overload costs the shed requests a
//! refusal and not the admitted ones their latency. A request holds a slot only once its body
//! has arrived (see `body.rs`): a slow client cannot hold one.

use crate::telemetry;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// `http.queue_max` requests were already waiting.
    QueueFull,
    /// No slot freed up within the queue wait.
    QueueWait,
}

impl Shed {
    pub fn label(self) -> &'static str {
        match self {
            Shed::QueueFull => "queue_full",
            Shed::QueueWait => "queue_wait",
        }
    }
}

pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue_max: usize,
    wait_max: Duration,
}

impl Admission {
    pub fn new(slots: usize, queue_max: usize, wait_max: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            waiting: AtomicUsize::new(0),
            queue_max,
            wait_max,
        }
    }

    /// A slot for one request, held until the permit is dropped; or why there is none.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Shed> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _leave = Leave(&self.waiting);
        if queued >= self.queue_max {
            metrics::counter!(telemetry::REQUESTS_SHED, "reason" => Shed::QueueFull.label())
                .increment(1);
            return Err(Shed::QueueFull);
        }
        metrics::gauge!(telemetry::QUEUE_DEPTH).set((queued + 1) as f64);
        let started = Instant::now();
        let acquired =
            tokio::time::timeout(self.wait_max, self.slots.clone().acquire_owned()).await;
        metrics::histogram!(telemetry::QUEUE_WAIT).record(started.elapsed().as_secs_f64());
        match acquired {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a timeout is the only other way out.
            _ => {
                metrics::counter!(telemetry::REQUESTS_SHED, "reason" => Shed::QueueWait.label())
                    .increment(1);
                Err(Shed::QueueWait)
            }
        }
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// Leaves the queue when the waiting request does, however it does (also when its client
/// goes away and the future is dropped).
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let left = self.0.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        metrics::gauge!(telemetry::QUEUE_DEPTH).set(left as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that waits in `admission`'s queue, once it is there.
    async fn queued(admission: &Arc<Admission>) -> tokio::task::JoinHandle<Result<(), Shed>> {
        let waiter = tokio::spawn({
            let admission = admission.clone();
            async move { admission.enter().await.map(drop) }
        });
        while admission.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        waiter
    }

    #[tokio::test]
    async fn a_request_waits_for_a_slot_then_gets_it() {
        let admission = Arc::new(Admission::new(1, 4, Duration::from_secs(5)));
        let first = admission.enter().await.expect("a free slot");
        let waiter = queued(&admission).await;
        drop(first);
        assert_eq!(waiter.await.expect("joins"), Ok(()));
        assert_eq!(admission.waiting(), 0);
    }

    #[tokio::test]
    async fn beyond_the_queue_a_request_is_shed_at_once() {
        let admission = Arc::new(Admission::new(1, 1, Duration::from_secs(30)));
        let _held = admission.enter().await.expect("a free slot");
        let waiter = queued(&admission).await;
        let started = Instant::now();
        assert_eq!(admission.enter().await.map(drop), Err(Shed::QueueFull));
        assert!(started.elapsed() < Duration::from_secs(1), "shed at once");
        waiter.abort();
    }

    #[tokio::test]
    async fn a_request_waits_at_most_the_wait_bound() {
        let admission = Admission::new(1, 8, Duration::from_millis(40));
        let _held = admission.enter().await.expect("a free slot");
        let started = Instant::now();
        assert_eq!(admission.enter().await.map(drop), Err(Shed::QueueWait));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(40) && waited < Duration::from_secs(2),
            "waited {waited:?}"
        );
        assert_eq!(admission.waiting(), 0);
    }
}
