//! The crate's one error type. Bad options and an unreachable server at start are errors that
//! end a run; failures during the run (a dropped connection, a timeout, a non-200 status) are
//! counted in the [`BenchReport`](crate::BenchReport) instead.

use std::net::SocketAddr;
use thiserror::Error;

/// Why a benchmark could not start or could not finish.
#[derive(Debug, Error)]
pub enum BenchError {
    /// The base URL is not of the form `http://host[:port][/]`.
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    /// An option is out of its documented range.
    #[error("invalid option `{option}`: {reason}")]
    InvalidOption {
        option: &'static str,
        reason: String,
    },
    /// The host name of the base URL did not resolve to any address.
    #[error("cannot resolve {host:?}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    /// A connection could not be opened before the run started (refused, unreachable, or no
    /// answer within the per-request timeout). During the run the same failure is counted.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    /// The HTTP/1.1 handshake over an open TCP connection failed.
    #[error("http/1.1 handshake with {address} failed: {source}")]
    Handshake {
        address: SocketAddr,
        source: hyper::Error,
    },
    /// A request URI written by this crate did not parse: a bug in this crate.
    #[error("request uri {uri:?} does not parse: {source}")]
    RequestUri {
        uri: String,
        source: hyper::http::uri::InvalidUri,
    },
    /// A latency histogram could not be created or merged.
    #[error("latency histogram: {reason}")]
    Histogram { reason: String },
    /// A connection task panicked or was cancelled.
    #[error("connection task {connection} failed: {reason}")]
    Task { connection: usize, reason: String },
}
