//! The closed loop of one connection: send a request, read the whole response, record it, send
//! the next; replace the connection when it fails. Nothing is recorded during the warm-up.
//! (The open loop, which does not wait for answers, is `open_loop`.)

use crate::connection::{self, Connection};
use crate::error::BenchError;
use crate::report::Tally;
use crate::request::RequestSource;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;
use tokio::time::Instant;

/// The pause after a failed reconnect before the next attempt. Each failed attempt is counted as
/// a transport error; without the pause a refused connection (which fails in microseconds on
/// loopback) would turn the loop into a busy spin that inflates the count and starves the server
/// under test of CPU.
pub(crate) const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// When the phases of a run begin and end; the same for every connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Phases {
    /// Requests sent from here on are recorded; those sent before are the warm-up.
    pub(crate) measure_start: Instant,
    /// No request is sent from here on; the one in flight is awaited and still recorded.
    pub(crate) measure_end: Instant,
}

/// One connection's loop and what it needs.
pub(crate) struct Worker {
    pub(crate) address: SocketAddr,
    pub(crate) timeout: Duration,
    pub(crate) source: RequestSource,
    pub(crate) phases: Phases,
}

impl Worker {
    /// Runs the loop on `connection` (opened by the caller, so that an unreachable server fails
    /// the run before it starts) until `phases.measure_end`, and returns what it measured.
    ///
    /// A request is recorded when it was sent at or after `phases.measure_start`: as a response
    /// (any status, with its latency), a transport error, or a timeout. A failed reconnect in the
    /// measured phase counts as one more transport error.
    ///
    /// # Errors
    ///
    /// Only for bugs of this crate ([`BenchError::RequestUri`], [`BenchError::Histogram`]);
    /// network failures are counted, never returned.
    pub(crate) async fn run(mut self, connection: Connection) -> Result<Tally, BenchError> {
        let mut tally = Tally::new()?;
        let Phases {
            measure_start,
            measure_end,
        } = self.phases;
        let mut connection = Some(connection);
        // One timer for every request of this connection, reset before each one.
        let mut deadline = pin!(tokio::time::sleep(self.timeout));
        loop {
            let now = Instant::now();
            if now >= measure_end {
                break;
            }
            let current = match connection.take() {
                Some(current) => current,
                None => match connection::connect(self.address, self.timeout).await {
                    Ok(current) => current,
                    Err(_refused) => {
                        if now >= measure_start {
                            tally.transport_errors += 1;
                        }
                        let retry_at = (Instant::now() + RECONNECT_BACKOFF).min(measure_end);
                        tokio::time::sleep_until(retry_at).await;
                        continue;
                    }
                },
            };
            let request = self.source.next_request()?;
            let sent_at = Instant::now();
            deadline.as_mut().reset(Instant::now() + self.timeout);
            let (outcome, reusable) = current.exchange(request, deadline.as_mut()).await;
            let latency = sent_at.elapsed();
            connection = reusable;
            if sent_at < measure_start {
                continue;
            }
            tally.record(outcome, latency);
        }
        Ok(tally)
    }
}
