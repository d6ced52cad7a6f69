//! Admission control: the door in front of the scatter. At most `http.requests_in_flight_max`
//! requests are scattered to the nodes at once; up to `http.queue_max` more wait for a slot.
//! Anything beyond is shed at once with 503 `overloaded` and `Retry-After`, before any node is
//! called, so that overload costs the shed requests a refusal and not the admitted ones their
//! latency. A request holds a slot only once its body has arrived (see `body.rs`): a slow client
//! cannot hold one.
//!
//! How long a request may wait follows CoDel as Facebook applies it to server queues ("Fail at
//! Scale", 2015): a queue that empties now and then absorbs a burst, so a request may wait up to
//! `http.queue_wait_ms`; a queue that has not been empty for `http.queue_standing_ms` is a
//! standing queue (arrivals exceed what the slots serve), and then a request waits at most
//! `http.queue_wait_overloaded_ms`. Under sustained overload the admitted requests' latency thus
//! stays near their service time instead of growing by the whole wait bound.

use crate::telemetry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// The bounds of [`Admission`] (the `http.*` keys of the same names).
#[derive(Clone, Copy, Debug)]
pub struct AdmissionBounds {
    pub slots: usize,
    pub queue_max: usize,
    /// The wait bound while the queue empties now and then.
    pub wait: Duration,
    /// A queue not empty for this long is a standing queue.
    pub standing: Duration,
    /// The wait bound in a standing queue.
    pub wait_overloaded: Duration,
}

pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    bounds: AdmissionBounds,
    /// When the queue was last seen empty, in nanoseconds since `epoch`.
    empty_at_ns: AtomicU64,
    epoch: Instant,
    /// The second (since `epoch`, plus one) of the last log line about a shed request, and the
    /// requests shed since without a line of their own.
    shed_logged_second: AtomicU64,
    shed_unlogged: AtomicU64,
    /// Requests that asked for a slot, admitted or shed, since the start.
    entered: AtomicU64,
}

impl Admission {
    pub fn new(bounds: AdmissionBounds) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(bounds.slots)),
            waiting: AtomicUsize::new(0),
            bounds,
            empty_at_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            shed_logged_second: AtomicU64::new(0),
            shed_unlogged: AtomicU64::new(0),
            entered: AtomicU64::new(0),
        }
    }

    /// Logs a shed request, at most one line a second: at 10,000 sheds a second, a line each
    /// would spend the CPU that the admitted requests need. The line names one request id and
    /// how many were shed since the previous line; the counter has them all. Returns whether
    /// this request got the line.
    pub fn log_shed(&self, request_id: &str, route: &str, shed: Shed) -> bool {
        let second = self.epoch.elapsed().as_secs() + 1;
        let last = self.shed_logged_second.load(Ordering::Relaxed);
        let mine = second > last
            && self
                .shed_logged_second
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if mine {
            let unlogged = self.shed_unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(
                request_id,
                route,
                reason = shed.label(),
                shed_without_a_line = unlogged,
                "request shed: 503 overloaded"
            );
        } else {
            self.shed_unlogged.fetch_add(1, Ordering::Relaxed);
        }
        mine
    }

    /// A slot for one request, held until the permit is dropped; or why there is none.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Shed> {
        self.entered.fetch_add(1, Ordering::Relaxed);
        // A free slot means nobody waits; no need to mark the queue empty here, as the next
        // request to queue marks it at its arrival (`wait_bound`), which keeps this path to one
        // atomic besides the semaphore.
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _leave = Leave(self);
        if queued >= self.bounds.queue_max {
            metrics::counter!(telemetry::REQUESTS_SHED, "reason" => Shed::QueueFull.label())
                .increment(1);
            return Err(Shed::QueueFull);
        }
        metrics::gauge!(telemetry::QUEUE_DEPTH).set((queued + 1) as f64);
        let started = Instant::now();
        let wait = self.wait_bound(queued, started);
        let acquired = tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await;
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

    /// How long a request that found `queued` others waiting may wait, at `now`.
    fn wait_bound(&self, queued: usize, now: Instant) -> Duration {
        if queued == 0 {
            // The first in line: the queue was empty until this request came.
            self.mark_empty_at(now);
        }
        let empty_at = self.epoch + Duration::from_nanos(self.empty_at_ns.load(Ordering::Acquire));
        let standing = now.saturating_duration_since(empty_at) >= self.bounds.standing;
        metrics::gauge!(telemetry::QUEUE_STANDING).set(f64::from(u8::from(standing)));
        if standing {
            self.bounds.wait_overloaded.min(self.bounds.wait)
        } else {
            self.bounds.wait
        }
    }

    fn mark_empty(&self) {
        self.mark_empty_at(Instant::now());
    }

    fn mark_empty_at(&self, at: Instant) {
        let ns =
            u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        self.empty_at_ns.fetch_max(ns, Ordering::AcqRel);
    }

    /// Requests that asked for a slot since the start, admitted or shed.
    pub fn entered(&self) -> u64 {
        self.entered.load(Ordering::Relaxed)
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// Leaves the queue when the waiting request does, however it does (also when its client
/// goes away and the future is dropped).
struct Leave<'a>(&'a Admission);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let left = self
            .0
            .waiting
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        if left == 0 {
            self.0.mark_empty();
        }
        metrics::gauge!(telemetry::QUEUE_DEPTH).set(left as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `slots` and `queue_max` as given, a wait of `wait`, and a standing queue only after an
    /// hour: the plain bounded queue.
    fn bounds(slots: usize, queue_max: usize, wait: Duration) -> AdmissionBounds {
        AdmissionBounds {
            slots,
            queue_max,
            wait,
            standing: Duration::from_secs(3600),
            wait_overloaded: Duration::from_millis(1),
        }
    }

    /// A request that waits in `admission`'s queue, once it is there.
    async fn queued(admission: &Arc<Admission>) -> tokio::task::JoinHandle<Result<(), Shed>> {
        let waiter = tokio::spawn({
            let admission = admission.clone();
            async move { admission.enter().await.map(drop) }
        });
        let before = admission.waiting();
        while admission.waiting() == before {
            tokio::task::yield_now().await;
        }
        waiter
    }

    #[tokio::test]
    async fn a_request_waits_for_a_slot_then_gets_it() {
        let admission = Arc::new(Admission::new(bounds(1, 4, Duration::from_secs(5))));
        let first = admission.enter().await.expect("a free slot");
        let waiter = queued(&admission).await;
        drop(first);
        assert_eq!(waiter.await.expect("joins"), Ok(()));
        assert_eq!(admission.waiting(), 0);
    }

    #[tokio::test]
    async fn beyond_the_queue_a_request_is_shed_at_once() {
        let admission = Arc::new(Admission::new(bounds(1, 1, Duration::from_secs(30))));
        let _held = admission.enter().await.expect("a free slot");
        let waiter = queued(&admission).await;
        let started = Instant::now();
        assert_eq!(admission.enter().await.map(drop), Err(Shed::QueueFull));
        assert!(started.elapsed() < Duration::from_secs(1), "shed at once");
        waiter.abort();
    }

    #[tokio::test]
    async fn a_request_waits_at_most_the_wait_bound() {
        let admission = Admission::new(bounds(1, 8, Duration::from_millis(40)));
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

    /// The wait bound is the long one while the queue empties now and then, and the short one
    /// once the queue has stayed non-empty for the standing interval; it is long again once the
    /// queue has emptied.
    #[test]
    fn a_standing_queue_shortens_the_wait() {
        let admission = Admission::new(AdmissionBounds {
            standing: Duration::from_millis(100),
            wait_overloaded: Duration::from_millis(5),
            ..bounds(1, 8, Duration::from_millis(250))
        });
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        // The first in line starts the queue at 0 ms; others join behind it.
        assert_eq!(admission.wait_bound(0, at(0)), Duration::from_millis(250));
        assert_eq!(admission.wait_bound(3, at(99)), Duration::from_millis(250));
        assert_eq!(admission.wait_bound(3, at(100)), Duration::from_millis(5));
        assert_eq!(admission.wait_bound(7, at(400)), Duration::from_millis(5));
        // The queue emptied at 450 ms: a burst is absorbed again, until it stands.
        admission.mark_empty_at(at(450));
        assert_eq!(admission.wait_bound(2, at(451)), Duration::from_millis(250));
        assert_eq!(admission.wait_bound(2, at(549)), Duration::from_millis(250));
        assert_eq!(admission.wait_bound(2, at(550)), Duration::from_millis(5));
        // A request that finds nobody waiting marks the queue empty itself.
        assert_eq!(admission.wait_bound(0, at(900)), Duration::from_millis(250));
    }

    /// Under a standing queue, a newcomer is shed after the short wait, not the long one; the
    /// request that waited since before the queue stood still gets the slot when it frees.
    #[tokio::test]
    async fn a_standing_queue_sheds_after_the_short_wait() {
        let admission = Arc::new(Admission::new(AdmissionBounds {
            standing: Duration::from_millis(50),
            wait_overloaded: Duration::from_millis(10),
            ..bounds(1, 8, Duration::from_secs(30))
        }));
        let held = admission.enter().await.expect("a free slot");
        let patient = queued(&admission).await;
        // The queue has now held `patient` for the standing interval.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let started = Instant::now();
        assert_eq!(admission.enter().await.map(drop), Err(Shed::QueueWait));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(10) && waited < Duration::from_secs(5),
            "waited {waited:?}"
        );
        drop(held);
        assert_eq!(patient.await.expect("joins"), Ok(()));
        assert_eq!(admission.waiting(), 0);
    }

    /// One line for the first shed request, none for the thousands after it in the same second.
    #[test]
    fn shed_requests_get_at_most_a_line_a_second() {
        let admission = Admission::new(bounds(1, 1, Duration::from_millis(1)));
        assert!(admission.log_shed("first", "/v1/recommend", Shed::QueueFull));
        let logged = (0..10_000)
            .filter(|_| admission.log_shed("next", "/v1/recommend", Shed::QueueWait))
            .count();
        // The loop takes far less than a second, but may straddle one boundary.
        assert!(logged <= 1, "{logged} more lines");
    }
}
