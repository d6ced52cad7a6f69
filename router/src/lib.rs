//! The stateless HTTP front of scoregrid (contract section 3).
//!
//! A request is validated, pinned to one model version, and answered by scattering to the nodes
//! that hold the customer's partition and the container's pool segments, then merging their
//! ranked answers. The router keeps no state a restart would lose: the cluster view (map,
//! directories, node clients) is handed to it, and cursors carry their own position.
//!
//! # Layout
//! - [`error`]: [`ApiError`], the contract's error JSON and status codes.
//! - [`params`]: query-string parsing and validation, one message per bad parameter.
//! - [`cursor`]: the opaque pagination token and its integrity check.
//! - [`state`]: [`RouterState`] and the swappable [`ClusterView`].
//! - `replicas`: calling replicas: deadlines, hedging, failover, the gathering of segments.
//! - [`routee`]: one node as the router sees it: circuit breaker, latency, hedging delay.
//! - [`discovery`]: follows the nodes: active version, retained versions, their directories.
//! - [`scatter`]: the request logic: customer fetch, per-node batching, failover, merge, coverage.
//! - [`listener`]: the connection layer: accepts, connection bounds, header timeout, drain.
//! - `bare_errors`: JSON bodies for the errors hyper answers by itself (400, 414, 431).
//! - [`http`]: the axum application: routes, request ids, metrics.
//! - `body`: a request's body read whole against a size bound and a deadline (413, 408).
//! - [`admission`]: the slots and the bounded queue in front of the scatter (503 `overloaded`).
//! - [`telemetry`]: the Prometheus recorder and the router's metric names.

pub mod admission;
mod bare_errors;
mod body;
pub mod cursor;
pub mod discovery;
pub mod error;
pub mod http;
pub mod listener;
mod memory;
pub mod params;
mod replicas;
pub mod routee;
pub mod scatter;
pub mod state;
pub mod telemetry;

pub use error::ApiError;
pub use http::app;
pub use listener::serve;
pub use state::{ClusterView, RouterState};
