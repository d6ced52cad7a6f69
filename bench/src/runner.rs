//! [`run`]: validate the options; for a closed loop, open every connection, start one [`Worker`]
//! task per connection, and merge what they measured into a [`BenchReport`]; for an open loop,
//! open one connection and hand it to [`OpenLoop`], which opens the others as its schedule needs.

use crate::connection::{self, Connection};
use crate::error::BenchError;
use crate::open_loop::OpenLoop;
use crate::options::BenchOptions;
use crate::report::{BenchReport, Tally};
use crate::request::RequestSource;
use crate::url::BaseUrl;
use crate::worker::{Phases, Worker};
use hyper::header::HeaderValue;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Runs one benchmark as `options` describe and reports what it measured.
///
/// Closed loop: opens `options.connections` keep-alive connections first; then every connection
/// runs its loop through `options.warmup` (not recorded) and `options.duration` (recorded).
/// Open loop (`options.rate`): opens one connection first, then sends on the schedule through
/// both phases, opening up to `options.connections` as needed. Must be called within a tokio
/// runtime; the tasks are spread over its worker threads, so a multi-threaded runtime is what
/// lets the generator use more than one core.
///
/// If the returned future is dropped, the connection tasks are aborted.
///
/// # Errors
///
/// - [`BenchError::InvalidOption`] or [`BenchError::InvalidUrl`] for bad options.
/// - [`BenchError::Resolve`], [`BenchError::Connect`], [`BenchError::Handshake`] when the server
///   cannot be reached before the run starts. Failures during the run are counted in the report.
/// - [`BenchError::Task`], [`BenchError::RequestUri`], [`BenchError::Histogram`] for bugs of this
///   crate.
pub async fn run(options: BenchOptions) -> Result<BenchReport, BenchError> {
    options.validate()?;
    let base = BaseUrl::parse(&options.url)?;
    let host = HeaderValue::from_str(&base.authority).map_err(|_| BenchError::InvalidUrl {
        url: options.url.clone(),
        reason: "the authority is not a valid Host header",
    })?;
    let opened_first = match options.rate {
        Some(_) => 1,
        None => options.connections,
    };
    let (address, first, others) = open_connections(&base, opened_first, options.timeout).await?;

    let keys = Arc::new(options.keys);
    let start = Instant::now();
    let phases = Phases {
        measure_start: start + options.warmup,
        measure_end: start + options.warmup + options.duration,
    };
    if let Some(rate) = options.rate {
        let open_loop = OpenLoop {
            address,
            timeout: options.timeout,
            rate,
            connections_max: options.connections,
            source: RequestSource::new(options.target, keys, options.limit, options.seed, 0, host),
            phases,
        };
        let measured = open_loop.run(first, start).await?;
        let elapsed = measured
            .finished
            .saturating_duration_since(phases.measure_start);
        let mut report = BenchReport::from_tally(
            options.target,
            options.connections,
            &measured.tally,
            elapsed,
        );
        report.rate = Some(rate);
        report.connections_peak = measured.connections_peak;
        return Ok(report);
    }

    let mut workers = Workers(Vec::with_capacity(options.connections));
    for (index, connection) in std::iter::once(first).chain(others).enumerate() {
        let worker = Worker {
            address,
            timeout: options.timeout,
            source: RequestSource::new(
                options.target,
                Arc::clone(&keys),
                options.limit,
                options.seed,
                index,
                host.clone(),
            ),
            phases,
        };
        workers.0.push(tokio::spawn(worker.run(connection)));
    }

    let mut total = Tally::new()?;
    for (index, handle) in workers.0.iter_mut().enumerate() {
        let tally = handle.await.map_err(|error| BenchError::Task {
            connection: index,
            reason: error.to_string(),
        })??;
        total.merge(&tally)?;
    }
    let elapsed = Instant::now().saturating_duration_since(phases.measure_start);
    Ok(BenchReport::from_tally(
        options.target,
        options.connections,
        &total,
        elapsed,
    ))
}

/// The connection tasks of a run; dropping it (an error, or the caller dropping [`run`]'s
/// future) aborts those still running instead of leaving them to load the server until the
/// end of the run.
struct Workers(Vec<JoinHandle<Result<Tally, BenchError>>>);

impl Drop for Workers {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

/// Resolves the host, finds the first of its addresses that accepts a connection, and opens
/// `count` connections to it (at least one), concurrently: the address, the first connection
/// and the others.
async fn open_connections(
    base: &BaseUrl,
    count: usize,
    timeout: Duration,
) -> Result<(SocketAddr, Connection, Vec<Connection>), BenchError> {
    let resolve_error = |source| BenchError::Resolve {
        host: base.host.clone(),
        source,
    };
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((base.host.as_str(), base.port))
        .await
        .map_err(resolve_error)?
        .collect();

    // `localhost` may resolve to ::1 first while the server listens on 127.0.0.1 only.
    let mut last_error = resolve_error(io::Error::new(io::ErrorKind::NotFound, "no address found"));
    let mut first = None;
    for address in addresses {
        match connection::connect(address, timeout).await {
            Ok(connection) => {
                first = Some((address, connection));
                break;
            }
            Err(error) => last_error = error,
        }
    }
    let Some((address, first)) = first else {
        return Err(last_error);
    };

    let mut connections = Vec::with_capacity(count.saturating_sub(1));
    // Dropping the set on an error aborts the attempts still under way.
    let mut attempts = JoinSet::new();
    for _ in 1..count {
        attempts.spawn(connection::connect(address, timeout));
    }
    while let Some(attempt) = attempts.join_next().await {
        let connection = attempt.map_err(|error| BenchError::Task {
            connection: connections.len() + 1,
            reason: error.to_string(),
        })??;
        connections.push(connection);
    }
    debug_assert_eq!(connections.len() + 1, count.max(1));
    Ok((address, first, connections))
}
