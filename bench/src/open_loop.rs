//! The open loop: requests leave on a fixed schedule, `rate` per second evenly spaced, each on
//! whichever connection is idle, whatever the answers take. A request due while every open
//! connection is busy gets a new one, up to `connections`; past that bound it is not sent and is
//! counted as `unsent`, so that a generator at its limit says so instead of queueing requests
//! itself and reporting its own queue as the server's latency.
//!
//! Latency counts from the scheduled time (no coordinated omission): a new connection's connect
//! time is part of its first request's latency, as it is for a user.

use crate::connection::{self, Connection, Outcome};
use crate::error::BenchError;
use crate::report::Tally;
use crate::request::RequestSource;
use crate::worker::Phases;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// An idle connection older than this is closed instead of reused: the server may have closed
/// it meanwhile (scoregrid's router closes connections idle for `http.header_read_timeout_ms`,
/// 10 s by default), and a request sent on it would fail for the generator's sake.
const IDLE_MAX: Duration = Duration::from_secs(5);

/// The dispatcher yields to the runtime after this many requests sent back to back (when it runs
/// behind its schedule), so that the tasks it spawned get a worker thread.
const BURST_MAX: u64 = 64;

/// One open-loop run.
pub(crate) struct OpenLoop {
    pub(crate) address: SocketAddr,
    pub(crate) timeout: Duration,
    /// Requests per second.
    pub(crate) rate: f64,
    /// The most connections open at once.
    pub(crate) connections_max: usize,
    pub(crate) source: RequestSource,
    pub(crate) phases: Phases,
}

/// What an open-loop run measured.
pub(crate) struct Measured {
    pub(crate) tally: Tally,
    pub(crate) connections_peak: usize,
    /// When the last request finished.
    pub(crate) finished: Instant,
}

impl OpenLoop {
    /// Runs the schedule from `start` until `phases.measure_end`, then waits for the requests in
    /// flight (each bounded by the timeout). `first` is the connection the caller opened to
    /// check that the server is there.
    ///
    /// # Errors
    ///
    /// Only for bugs of this crate ([`BenchError::RequestUri`], [`BenchError::Task`]); network
    /// failures are counted, never returned.
    pub(crate) async fn run(
        mut self,
        first: Connection,
        start: Instant,
    ) -> Result<Measured, BenchError> {
        let pool = Arc::new(Pool::new(self.connections_max));
        pool.reserve();
        pool.put(first);
        let tally = Arc::new(Mutex::new(Tally::new()?));
        let Phases {
            measure_start,
            measure_end,
        } = self.phases;
        let mut in_flight = JoinSet::new();
        let mut scheduled: u64 = 0;
        let mut unsent: u64 = 0;
        loop {
            let due = start + Duration::from_secs_f64(scheduled as f64 / self.rate);
            if due >= measure_end {
                break;
            }
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            } else if scheduled.is_multiple_of(BURST_MAX) {
                tokio::task::yield_now().await;
            }
            scheduled += 1;
            let measured = due >= measure_start;
            let idle = pool.take();
            if idle.is_none() && !pool.reserve() {
                unsent += u64::from(measured);
                continue;
            }
            let request = self.source.next_request()?;
            let (pool, tally) = (Arc::clone(&pool), Arc::clone(&tally));
            let (address, timeout) = (self.address, self.timeout);
            in_flight.spawn(async move {
                let outcome = exchange(&pool, idle, address, timeout, request).await;
                if measured {
                    lock(&tally).record(outcome, due.elapsed());
                }
            });
            // Reap what finished, so that the set holds only requests in flight.
            while let Some(done) = in_flight.try_join_next() {
                done.map_err(task_error)?;
            }
        }
        while let Some(done) = in_flight.join_next().await {
            done.map_err(task_error)?;
        }
        let finished = Instant::now();
        let mut tally = lock(&tally).clone();
        tally.unsent = unsent;
        Ok(Measured {
            tally,
            connections_peak: pool.peak.load(Ordering::Relaxed),
            finished,
        })
    }
}

/// One request on `idle`, or on a new connection when there is none (its place in the pool was
/// reserved by the caller). The connection goes back to the pool if it can carry another
/// request; otherwise its place is given back.
async fn exchange(
    pool: &Pool,
    idle: Option<Connection>,
    address: SocketAddr,
    timeout: Duration,
    request: hyper::Request<http_body_util::Empty<hyper::body::Bytes>>,
) -> Outcome {
    let connection = match idle {
        Some(connection) => connection,
        None => match connection::connect(address, timeout).await {
            Ok(connection) => connection,
            Err(_refused) => {
                pool.release();
                return Outcome::Transport;
            }
        },
    };
    let deadline = pin!(tokio::time::sleep(timeout));
    let (outcome, reusable) = connection.exchange(request, deadline).await;
    match reusable {
        Some(connection) => pool.put(connection),
        None => pool.release(),
    }
    outcome
}

fn task_error(error: tokio::task::JoinError) -> BenchError {
    BenchError::Task {
        connection: 0,
        reason: error.to_string(),
    }
}

/// A tally or pool lock: a panic elsewhere while holding it leaves counts that are still whole
/// (each update is one statement), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The connections of an open loop: the idle ones (newest last, so that a busy run reuses a
/// small hot set) and a count of those that exist, idle, busy or being opened.
struct Pool {
    idle: Mutex<Vec<(Connection, Instant)>>,
    open: AtomicUsize,
    peak: AtomicUsize,
    max: usize,
}

impl Pool {
    fn new(max: usize) -> Pool {
        Pool {
            idle: Mutex::new(Vec::with_capacity(max)),
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            max,
        }
    }

    /// The most recently used idle connection, closing those idle for longer than [`IDLE_MAX`].
    fn take(&self) -> Option<Connection> {
        let mut idle = lock(&self.idle);
        while let Some((connection, since)) = idle.pop() {
            if since.elapsed() <= IDLE_MAX {
                return Some(connection);
            }
            drop(connection);
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
        None
    }

    /// Takes a place for a new connection, if fewer than `max` exist.
    fn reserve(&self) -> bool {
        let reserved = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            });
        match reserved {
            Ok(before) => {
                self.peak.fetch_max(before + 1, Ordering::Relaxed);
                true
            }
            Err(_at_max) => false,
        }
    }

    fn put(&self, connection: Connection) {
        lock(&self.idle).push((connection, Instant::now()));
    }

    /// A connection closed (or was never opened): its place is free.
    fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}
