//! The router's view of one node (a routee): its client, a circuit breaker, and the recent
//! latencies that set its hedging delay.
//!
//! Breaker: `breaker_failures` consecutive transport failures (unreachable, timeout,
//! incompatible) open the circuit; while open, the node is not called; after `breaker_open_ms`
//! one probe call may go through, and its outcome closes or re-opens the circuit. A node
//! answering with an application error (say, a version it does not hold) is healthy: that does
//! not count. The probe belongs to the call that makes it ([`Routee::claim`], just before
//! calling): a call that is dropped before it records its outcome (a hedge won the race) hands
//! the probe back ([`CallGuard`]), and a probe not recorded within `breaker_open_ms` expires, so
//! a recovered node always gets traffic again.
//!
//! Hedging delay: the p95 of the node's last [`LATENCY_WINDOW`] successful calls, clamped to
//! the configured floor and ceiling; the ceiling until [`LATENCY_SAMPLES_MIN`] samples exist.

use scoregrid_wire::{NodeClient, RpcError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Successful call latencies kept per node for its p95.
pub const LATENCY_WINDOW: usize = 128;
/// Samples needed before the p95 is trusted (and recomputed every this many samples).
pub const LATENCY_SAMPLES_MIN: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight since then; everyone else treats the node as unavailable until
    /// it is recorded, handed back, or expires.
    HalfOpen {
        since: Instant,
    },
}

/// Breaker and hedging settings, from `[router]`.
#[derive(Clone, Copy, Debug)]
pub struct RouteePolicy {
    pub breaker_failures: u32,
    pub breaker_open: Duration,
    pub hedge_delay_min: Duration,
    pub hedge_delay_max: Duration,
}

struct Latencies {
    samples: [u32; LATENCY_WINDOW],
    recorded: usize,
}

pub struct Routee {
    pub client: Arc<dyn NodeClient>,
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    policy: RouteePolicy,
    breaker: Mutex<BreakerState>,
    latencies: Mutex<Latencies>,
    /// p95 of the latency window in microseconds; 0 until enough samples.
    p95_us: AtomicU64,
}

fn is_transport_failure(error: &RpcError) -> bool {
    !matches!(
        error,
        RpcError::Remote { .. } | RpcError::UnexpectedResponse(_)
    )
}

impl Routee {
    pub fn new(client: Arc<dyn NodeClient>, policy: RouteePolicy) -> Self {
        Self {
            client,
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            policy,
            breaker: Mutex::new(BreakerState::Closed { failures: 0 }),
            latencies: Mutex::new(Latencies {
                samples: [0; LATENCY_WINDOW],
                recorded: 0,
            }),
            p95_us: AtomicU64::new(0),
        }
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker
            .lock()
            .map_or(BreakerState::Closed { failures: 0 }, |b| *b)
    }

    /// Whether a call may go to this node now (without claiming anything: see
    /// [`Routee::claim`]).
    pub fn available(&self) -> bool {
        let Ok(breaker) = self.breaker.lock() else {
            return true;
        };
        let now = Instant::now();
        match *breaker {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } => now >= until,
            BreakerState::HalfOpen { since } => now >= since + self.policy.breaker_open,
        }
    }

    /// Claims the right to call now: always for a closed circuit; for an open one whose time
    /// is up (or an unanswered probe that expired), the probe. Returns whether the call is a
    /// probe (then its outcome must be recorded or the guard dropped). A node that is not
    /// available is still called when the caller has nowhere else to go; that is not a probe.
    pub fn claim(&self) -> bool {
        let Ok(mut breaker) = self.breaker.lock() else {
            return false;
        };
        let now = Instant::now();
        let probe = match *breaker {
            BreakerState::Closed { .. } => false,
            BreakerState::Open { until } => now >= until,
            BreakerState::HalfOpen { since } => now >= since + self.policy.breaker_open,
        };
        if probe {
            *breaker = BreakerState::HalfOpen { since: now };
        }
        probe
    }

    /// Opens the circuit now after a transport failure (a node the map marks down that fails
    /// once is not worth `breaker_failures` calls).
    pub fn trip(&self, error: &RpcError) {
        if !is_transport_failure(error) {
            return;
        }
        if let Ok(mut breaker) = self.breaker.lock() {
            if matches!(*breaker, BreakerState::Closed { .. }) {
                tracing::info!(node = %self.client.node(), %error, "circuit opened: the node is down in the map and failed");
            }
            *breaker = BreakerState::Open {
                until: Instant::now() + self.policy.breaker_open,
            };
        }
    }

    /// A probe whose call was dropped before its outcome: the next caller may probe at once.
    fn hand_back_probe(&self) {
        if let Ok(mut breaker) = self.breaker.lock()
            && matches!(*breaker, BreakerState::HalfOpen { .. })
        {
            *breaker = BreakerState::Open {
                until: Instant::now(),
            };
        }
    }

    /// Records a call's outcome and, on success, its latency.
    pub fn record(&self, result: Result<(), &RpcError>, elapsed: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.close_breaker();
                self.record_latency(elapsed);
            }
            Err(error) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::telemetry::NODE_CALL_ERRORS,
                    "node" => self.client.node().to_string(), "reason" => error.reason())
                .increment(1);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(error.to_string());
                }
                if is_transport_failure(error) {
                    self.count_failure();
                } else {
                    self.close_breaker();
                }
            }
        }
    }

    fn close_breaker(&self) {
        if let Ok(mut breaker) = self.breaker.lock() {
            if !matches!(*breaker, BreakerState::Closed { .. }) {
                tracing::info!(node = %self.client.node(), "circuit closed");
            }
            *breaker = BreakerState::Closed { failures: 0 };
        }
    }

    fn count_failure(&self) {
        let Ok(mut breaker) = self.breaker.lock() else {
            return;
        };
        let open = BreakerState::Open {
            until: Instant::now() + self.policy.breaker_open,
        };
        *breaker = match *breaker {
            BreakerState::Closed { failures } if failures + 1 >= self.policy.breaker_failures => {
                tracing::warn!(node = %self.client.node(), failures = failures + 1, "circuit opened");
                metrics::counter!("scoregrid_router_circuit_opened_total", "node" => self.client.node().to_string())
                    .increment(1);
                open
            }
            BreakerState::Closed { failures } => BreakerState::Closed {
                failures: failures + 1,
            },
            BreakerState::HalfOpen { .. } | BreakerState::Open { .. } => open,
        };
    }

    fn record_latency(&self, elapsed: Duration) {
        let Ok(mut window) = self.latencies.lock() else {
            return;
        };
        let micros = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
        let slot = window.recorded % LATENCY_WINDOW;
        window.samples[slot] = micros;
        window.recorded += 1;
        if window.recorded >= LATENCY_SAMPLES_MIN
            && window.recorded.is_multiple_of(LATENCY_SAMPLES_MIN)
        {
            let n = window.recorded.min(LATENCY_WINDOW);
            let mut copy = window.samples;
            let rank = (n * 95).div_ceil(100).saturating_sub(1);
            let (_, p95, _) = copy[..n].select_nth_unstable(rank);
            self.p95_us.store(u64::from(*p95), Ordering::Relaxed);
        }
    }

    /// How long to wait for this node before sending a duplicate elsewhere.
    pub fn hedge_delay(&self) -> Duration {
        match self.p95_us.load(Ordering::Relaxed) {
            0 => self.policy.hedge_delay_max,
            us => Duration::from_micros(us)
                .clamp(self.policy.hedge_delay_min, self.policy.hedge_delay_max),
        }
    }
}

/// Held by a call while it runs: if the call is dropped before its outcome is recorded (a
/// hedge answered first), its probe, if it was one, is handed back.
pub struct CallGuard<'a> {
    routee: &'a Routee,
    probe: bool,
    recorded: bool,
}

impl<'a> CallGuard<'a> {
    pub fn new(routee: &'a Routee) -> Self {
        let probe = routee.claim();
        Self {
            routee,
            probe,
            recorded: false,
        }
    }

    pub fn record(mut self, result: Result<(), &RpcError>, elapsed: Duration) {
        self.recorded = true;
        self.routee.record(result, elapsed);
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            self.routee.hand_back_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scoregrid_wire::{NodeId, Request, Response, RpcFuture};

    struct Nowhere;
    impl NodeClient for Nowhere {
        fn node(&self) -> NodeId {
            NodeId(1)
        }
        fn call_until(&self, _: Request, _: Option<tokio::time::Instant>) -> RpcFuture<Response> {
            Box::pin(async { Err(RpcError::Unreachable(NodeId(1), "test".into())) })
        }
    }

    fn routee(open: Duration) -> Routee {
        Routee::new(
            Arc::new(Nowhere),
            RouteePolicy {
                breaker_failures: 3,
                breaker_open: open,
                hedge_delay_min: Duration::from_millis(2),
                hedge_delay_max: Duration::from_millis(50),
            },
        )
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_and_probes_once() {
        let r = routee(Duration::from_millis(30));
        let unreachable = RpcError::Unreachable(NodeId(1), "down".into());
        for _ in 0..2 {
            r.record(Err(&unreachable), Duration::ZERO);
            assert!(r.available());
        }
        r.record(Err(&unreachable), Duration::ZERO);
        assert!(!r.available(), "open after 3 failures");
        std::thread::sleep(Duration::from_millis(40));
        assert!(r.available(), "a probe may go after the open period");
        assert!(r.available(), "looking does not take the probe");
        let probe = CallGuard::new(&r);
        assert!(!r.available(), "only one probe at a time");
        probe.record(Ok(()), Duration::from_millis(1));
        assert!(r.available() && r.available(), "closed after a good probe");
        // Application errors do not count.
        let remote = RpcError::Remote {
            node: NodeId(1),
            error: scoregrid_wire::NodeError::BadRequest("x".into()),
        };
        for _ in 0..10 {
            r.record(Err(&remote), Duration::ZERO);
        }
        assert!(r.available());
    }

    /// The defect this guards against: a probe handed to a caller that never called, or whose
    /// call lost a hedge race and was dropped, left the circuit half-open for ever, and the
    /// recovered node got no traffic again.
    #[test]
    fn a_dropped_or_unanswered_probe_never_shuts_the_node_out() {
        let r = routee(Duration::from_millis(30));
        let unreachable = RpcError::Unreachable(NodeId(1), "down".into());
        for _ in 0..3 {
            r.record(Err(&unreachable), Duration::ZERO);
        }
        std::thread::sleep(Duration::from_millis(40));
        let dropped = CallGuard::new(&r);
        assert!(!r.available());
        drop(dropped);
        assert!(r.available(), "a dropped probe is handed back at once");
        let _silent = CallGuard::new(&r);
        assert!(!r.available());
        std::thread::sleep(Duration::from_millis(40));
        assert!(r.available(), "an unanswered probe expires");
        CallGuard::new(&r).record(Ok(()), Duration::from_millis(1));
        assert_eq!(r.breaker_state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn hedge_delay_follows_the_p95_within_bounds() {
        let r = routee(Duration::from_secs(1));
        assert_eq!(
            r.hedge_delay(),
            Duration::from_millis(50),
            "ceiling until enough samples"
        );
        for i in 0..100u64 {
            // 95 fast calls of 5 ms, 5 slow ones of 40 ms.
            let ms = if i % 20 == 0 { 40 } else { 5 };
            r.record(Ok(()), Duration::from_millis(ms));
        }
        let d = r.hedge_delay();
        assert!(
            d >= Duration::from_millis(5) && d <= Duration::from_millis(40),
            "{d:?}"
        );
        for _ in 0..128 {
            r.record(Ok(()), Duration::from_micros(100));
        }
        assert_eq!(r.hedge_delay(), Duration::from_millis(2), "floor");
    }
}
