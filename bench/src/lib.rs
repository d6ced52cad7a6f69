//! `scoregrid bench`: an HTTP/1.1 load generator that reports requests per second and latency
//! percentiles for the scoregrid HTTP API (contract section 3), either on
//! `GET /v1/recommend` with customers and containers drawn at random from a model's ids, or on
//! `GET /healthz`, the ceiling of the HTTP stack itself.
//!
//! # How it measures
//!
//! [`run`] opens `connections` keep-alive connections and runs a *closed loop* on each: send one
//! request, read the whole response body, record the latency, send the next. So there are
//! always exactly `connections` requests in flight, and the request rate is whatever the server
//! sustains at that concurrency. Requests sent during the warm-up are not recorded; the measured
//! phase follows, and the request in flight at its end is awaited and recorded.
//!
//! Latency is measured per request, from handing it to hyper to the last byte of the body, and
//! kept in an HDR histogram per connection (microseconds, 3 significant digits), merged at the
//! end. Every response counts, whatever its status; non-200 statuses are also counted by status.
//! A request that gets no response (the connection broke: it is reopened) is a transport error;
//! one that gets none within the timeout is a timeout. Neither has a latency.
//!
//! With a `rate`, [`run`] runs an *open loop* instead: requests leave on a fixed schedule, each
//! on an idle connection, and new connections are opened as the schedule needs them, up to
//! `connections`; a request due while all of them are busy is counted as `unsent`. Latency
//! counts from the scheduled time, and the report keeps the latency of the 200 answers apart
//! (`ok_latency`), so that under overload the cost of an admitted request is not averaged with
//! quick refusals. Bodies of 200 answers are scanned for a `degraded` reason (`partial`).
//!
//! Caveat for the closed loop, *coordinated omission*: in a closed loop a slow response also delays the requests
//! that would have been sent meanwhile, so a stall of the server is recorded as one slow
//! request instead of the many that an open stream of users would have seen. The percentiles
//! here are therefore the latency of a client that waits its turn, and understate the tail
//! that users arriving at a fixed rate would see during stalls. Read p99 and above together
//! with `max`, and compare runs at the same concurrency only.
//!
//! The client is kept cheap so that it disturbs the server little when both share a machine:
//! the hyper connection is driven in its connection's own task, one timer is reused per
//! connection, recommend URIs are written into a reused buffer with ids drawn by a SplitMix64
//! stream per connection, and response bodies are read and dropped, never parsed.
//!
//! # Layout
//! - [`options`]: [`BenchOptions`], the [`Target`] endpoint, the [`RequestKeys`], their bounds.
//! - [`url`]: [`BaseUrl`], the parsed `http://host:port` of the server.
//! - `runner`: [`run`], which opens the connections, starts the workers and merges their counts.
//! - `worker`: the closed loop of one connection, the warm-up and measured phases, reconnects.
//! - `open_loop`: the open loop, its schedule and its pool of connections.
//! - `connection`: one keep-alive HTTP/1.1 connection and one exchange under a deadline.
//! - `request`: the per-connection request source and its random stream.
//! - [`report`]: what was counted, and [`BenchReport`] as a table or JSON.
//! - [`error`]: the crate's error type, [`BenchError`].

mod connection;
pub mod error;
mod open_loop;
pub mod options;
pub mod report;
mod request;
mod runner;
pub mod url;
mod worker;

pub use error::BenchError;
pub use options::{BenchOptions, RequestKeys, Target};
pub use report::BenchReport;
pub use runner::run;
pub use url::BaseUrl;
