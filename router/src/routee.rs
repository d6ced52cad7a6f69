//! The router's view of one node (a routee): its client, a circuit breaker, and the recent
//! latencies that set its hedging delay.
//!
//! Breaker: `breaker_failures` consecutive transport failures (unreachable, reset,
//! incompatible) open the circuit; while open, the node is not called; after `breaker_open_ms`
//! one probe call may go through, and its outcome closes or re-opens the circuit. A node
//! answering with an application error (say, a version it does not hold) is healthy: that does
//! not count.
//!
//! Timeouts are not failures by themselves: when the whole cluster (or the router) is
//! saturated, healthy nodes answer late too, and opening their circuits would turn overload
//! into partial answers. A timeout counts only as part of sustained lateness: at least
//! `breaker_failures` of them with no answer in between, spread over at least `breaker_late_ms`.
//! A saturated node still answers some calls in time, which resets the run; a stopped one
//! answers none. The probe belongs to the call that makes it ([`Routee::claim`], just before
//! calling): a call that is dropped before it records its outcome (a hedge won the race) hands
//! the probe back ([`CallGuard`]), and a probe not recorded within `breaker_open_ms` expires, so
//! a recovered node always gets traffic again.
//!
//! Hedging delay: the p95 of the node's last [`LATENCY_WINDOW`] successful calls, clamped to
//! the configured floor and ceiling; the ceiling until [`LATENCY_SAMPLES_MIN`] samples exist.
//!
//! Hedging budget: every call to a node earns `hedge_budget_percent` hundredths of a hedge, and
//! a hedge sent because this node is slow spends a whole one ([`Routee::try_hedge`]); at most
//! [`HEDGE_BURST`] are saved up. Under overload every node is slow, and unbudgeted hedges would
//! add the very load that makes them late.

use scoregrid_wire::{NodeClient, RpcError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Successful call latencies kept per node for its p95.
pub const LATENCY_WINDOW: usize = 128;
/// Samples needed before the p95 is trusted (and recomputed every this many samples).
pub const LATENCY_SAMPLES_MIN: usize = 32;
/// Hedges a node's budget can save up (see the module docs).
pub const HEDGE_BURST: u64 = 10;
/// A hedge, in the budget's units (thousandths).
const HEDGE_COST: u64 = 1000;

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
    /// Timeouts open the circuit only when they go on this long with no answer.
    pub breaker_late: Duration,
    /// Hedges as a share of calls, in percent.
    pub hedge_budget_percent: u32,
}

#[derive(Default)]
struct Lateness {
    /// The current run of timeouts with no answer in between: when it began, how long it is.
    run: Option<(Instant, u32)>,
    /// When the node last answered (in time, whatever the answer).
    last_answer: Option<Instant>,
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
    /// Its recent answers and timeouts; one lock, taken once per call outcome.
    lateness: Mutex<Lateness>,
    /// The hedging budget, in thousandths of a hedge.
    hedge_tokens: AtomicU64,
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
            lateness: Mutex::default(),
            hedge_tokens: AtomicU64::new(HEDGE_BURST * HEDGE_COST),
        }
    }

    /// A call starts: it earns its share of a hedge.
    fn earn_hedge(&self) {
        let earned = u64::from(self.policy.hedge_budget_percent.min(100)) * HEDGE_COST / 100;
        let _ = self
            .hedge_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + earned).min(HEDGE_BURST * HEDGE_COST))
            });
    }

    /// Whether a hedge may be sent because this node has not answered a call made at
    /// `call_started`. A node that has answered nothing at all since then looks stopped, not
    /// slow: the hedge is failover and costs no budget. Otherwise it is spent from the budget.
    pub fn try_hedge(&self, call_started: Instant) -> bool {
        if self
            .lateness
            .lock()
            .map_or(true, |l| l.last_answer.is_none_or(|at| at < call_started))
        {
            return true;
        }
        let spent = self
            .hedge_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                t.checked_sub(HEDGE_COST)
            })
            .is_ok();
        if !spent {
            metrics::counter!(crate::telemetry::HEDGES_SKIPPED, "node" => self.client.node().to_string())
                .increment(1);
        }
        spent
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
                opened(self.client.node(), "down_in_map");
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
                self.answered();
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
                if matches!(error, RpcError::Timeout(_)) {
                    self.count_timeout();
                } else if is_transport_failure(error) {
                    self.count_failure();
                } else {
                    self.answered();
                }
            }
        }
    }

    /// The node answered (in time): the circuit closes and a run of lateness ends.
    fn answered(&self) {
        if let Ok(mut lateness) = self.lateness.lock() {
            lateness.run = None;
            lateness.last_answer = Some(Instant::now());
        }
        if let Ok(mut breaker) = self.breaker.lock() {
            if !matches!(*breaker, BreakerState::Closed { .. }) {
                tracing::info!(node = %self.client.node(), "circuit closed");
                metrics::counter!(crate::telemetry::CIRCUITS_CLOSED, "node" => self.client.node().to_string())
                    .increment(1);
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
                opened(self.client.node(), "transport");
                open
            }
            BreakerState::Closed { failures } => BreakerState::Closed {
                failures: failures + 1,
            },
            BreakerState::HalfOpen { .. } | BreakerState::Open { .. } => open,
        };
    }

    /// A timeout: opens the circuit only when it extends a run of sustained lateness (see the
    /// module docs), or when the circuit was half-open (the probe timed out).
    fn count_timeout(&self) {
        let sustained = self.lateness.lock().is_ok_and(|mut lateness| {
            let now = Instant::now();
            let (since, count) = lateness.run.get_or_insert((now, 0));
            *count += 1;
            *count >= self.policy.breaker_failures && now - *since >= self.policy.breaker_late
        });
        let Ok(mut breaker) = self.breaker.lock() else {
            return;
        };
        let open = BreakerState::Open {
            until: Instant::now() + self.policy.breaker_open,
        };
        match *breaker {
            BreakerState::Closed { .. } if sustained => {
                tracing::warn!(node = %self.client.node(), late_ms = self.policy.breaker_late.as_millis() as u64, "circuit opened: no answer in time for that long");
                opened(self.client.node(), "late");
                *breaker = open;
            }
            BreakerState::Closed { .. } => {}
            BreakerState::HalfOpen { .. } | BreakerState::Open { .. } => *breaker = open,
        }
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

fn opened(node: scoregrid_wire::NodeId, cause: &'static str) {
    metrics::counter!(crate::telemetry::CIRCUITS_OPENED, "node" => node.to_string(), "cause" => cause)
        .increment(1);
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
        routee.earn_hedge();
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
                breaker_late: Duration::from_millis(60),
                hedge_budget_percent: 5,
            },
        )
    }

    /// The defect this guards against: under overload healthy nodes time out now and then,
    /// and five timeouts in a row opened their circuits (28 times in one run), turning
    /// overload into partial answers.
    #[test]
    fn timeouts_open_the_circuit_only_when_lateness_is_sustained() {
        let r = routee(Duration::from_secs(1));
        let late = RpcError::Timeout(NodeId(1));
        // A burst of timeouts, with answers in between: a saturated node.
        for _ in 0..20 {
            for _ in 0..5 {
                r.record(Err(&late), Duration::ZERO);
            }
            r.record(Ok(()), Duration::from_millis(1));
        }
        assert!(r.available(), "a node that still answers keeps its circuit");
        // Ten timeouts at once and nothing else: not yet (less than 60 ms of lateness).
        for _ in 0..10 {
            r.record(Err(&late), Duration::ZERO);
        }
        assert!(r.available(), "a burst alone does not open it");
        std::thread::sleep(Duration::from_millis(70));
        r.record(Err(&late), Duration::ZERO);
        assert!(!r.available(), "open once no answer came for breaker_late");
    }

    #[test]
    fn hedges_stay_within_their_share_of_calls() {
        let r = routee(Duration::from_secs(1));
        let mut hedges = 0;
        for _ in 0..10_000 {
            let started = Instant::now();
            CallGuard::new(&r).record(Ok(()), Duration::from_millis(1));
            if r.try_hedge(started) {
                hedges += 1;
            }
        }
        // 5% of 10,000 calls, plus the burst saved up at the start.
        assert!(
            (500..=500 + HEDGE_BURST).contains(&hedges),
            "{hedges} hedges for 10,000 calls"
        );
        // A node that answered nothing since the call was made is failed over, budget or not.
        let started = Instant::now();
        assert!(r.try_hedge(started) && r.try_hedge(started));
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
