//! What to load and how hard: [`BenchOptions`], the [`Target`] endpoint and the
//! [`RequestKeys`] that recommend requests draw from, with the bounds [`BenchOptions::validate`]
//! enforces.

use crate::error::BenchError;
use std::fmt;
use std::time::Duration;

/// The most connections one run opens. Each connection has its own task and its own latency
/// histogram (tens of KiB, growing with the slowest latency it records), so the bound keeps a
/// mistyped `--connections` from exhausting memory or file descriptors.
pub const CONNECTIONS_MAX: usize = 4096;

/// The longest warm-up or measurement phase. It also keeps `start + warmup + duration` far from
/// the overflow of [`Instant`](tokio::time::Instant) arithmetic.
pub const PHASE_DURATION_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// The shortest per-request timeout: timers below a millisecond are not meaningful on tokio.
pub const TIMEOUT_MIN: Duration = Duration::from_millis(1);

/// The longest per-request timeout. A request still waiting then is counted as a timeout.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(10 * 60);

/// The endpoint every request of a run goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `GET /v1/recommend?customer=C&container=K&limit=L`, with C and K drawn uniformly at random
    /// from [`RequestKeys`]: the full scoring path.
    Recommend,
    /// `GET /healthz`: no scoring, so this measures the ceiling of the HTTP stack (and of this
    /// generator) on the machine.
    Healthz,
}

impl Target {
    /// The request path, without the query: `/v1/recommend` or `/healthz`.
    pub fn path(self) -> &'static str {
        match self {
            Target::Recommend => "/v1/recommend",
            Target::Healthz => "/healthz",
        }
    }

    /// The lowercase name used in JSON output and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Recommend => "recommend",
            Target::Healthz => "healthz",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// The ids recommend requests are drawn from; the binary fills them from a model directory.
/// Ids may repeat: a repeated id is drawn proportionally more often.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestKeys {
    pub customers: Vec<u64>,
    pub containers: Vec<u64>,
}

/// One benchmark run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The server's base URL, `http://host:port` (see [`BaseUrl`](crate::BaseUrl)).
    pub url: String,
    /// The endpoint to load.
    pub target: Target,
    /// Closed loop: keep-alive connections, each running one request at a time: this is the
    /// number of requests in flight. Open loop: the most connections open at once.
    /// 1..=[`CONNECTIONS_MAX`].
    pub connections: usize,
    /// How long requests are measured, after the warm-up. 0 < duration <= [`PHASE_DURATION_MAX`].
    pub duration: Duration,
    /// How long requests run unrecorded first (caches, connection pools, CPU frequency).
    /// 0..=[`PHASE_DURATION_MAX`].
    pub warmup: Duration,
    /// The `limit` parameter of recommend requests. Not checked here: an out-of-range value
    /// makes the server answer 400, which the report shows.
    pub limit: u32,
    /// The ids recommend requests draw from; both lists must be non-empty for
    /// [`Target::Recommend`], and are ignored for [`Target::Healthz`].
    pub keys: RequestKeys,
    /// The seed of the per-connection random streams, so that a run's request sequence can be
    /// replayed.
    pub seed: u64,
    /// How long one request may take, from sending to the last byte of the body, before it is
    /// counted as a timeout and its connection replaced. Also bounds each connection attempt.
    /// [`TIMEOUT_MIN`]..=[`TIMEOUT_MAX`].
    pub timeout: Duration,
    /// Open loop: requests per second, sent on a fixed schedule whatever the answers take, each
    /// on an idle connection; `connections` is then the most connections opened. Latency counts
    /// from the scheduled time, so a server that stalls shows it instead of slowing the
    /// generator down (no coordinated omission). `None`: closed loop. 0 < rate <= [`RATE_MAX`].
    pub rate: Option<f64>,
}

/// The largest open-loop rate, requests per second.
pub const RATE_MAX: f64 = 1_000_000.0;

impl BenchOptions {
    /// Checks every bound documented on the fields (the URL is checked by
    /// [`BaseUrl::parse`](crate::BaseUrl::parse)).
    ///
    /// # Errors
    ///
    /// [`BenchError::InvalidOption`] naming the first option out of range.
    pub fn validate(&self) -> Result<(), BenchError> {
        let invalid = |option: &'static str, reason: String| {
            Err(BenchError::InvalidOption { option, reason })
        };
        if !(1..=CONNECTIONS_MAX).contains(&self.connections) {
            return invalid(
                "connections",
                format!("{} is out of range 1..={CONNECTIONS_MAX}", self.connections),
            );
        }
        if self.duration.is_zero() || self.duration > PHASE_DURATION_MAX {
            return invalid(
                "duration",
                format!(
                    "{:?} is out of range (0 s, {} s]",
                    self.duration,
                    PHASE_DURATION_MAX.as_secs()
                ),
            );
        }
        if self.warmup > PHASE_DURATION_MAX {
            return invalid(
                "warmup",
                format!(
                    "{:?} is longer than {} s",
                    self.warmup,
                    PHASE_DURATION_MAX.as_secs()
                ),
            );
        }
        if !(TIMEOUT_MIN..=TIMEOUT_MAX).contains(&self.timeout) {
            return invalid(
                "timeout",
                format!(
                    "{:?} is out of range [{:?}, {:?}]",
                    self.timeout, TIMEOUT_MIN, TIMEOUT_MAX
                ),
            );
        }
        if let Some(rate) = self.rate
            && !(rate > 0.0 && rate <= RATE_MAX)
        {
            return invalid("rate", format!("{rate} is out of range (0, {RATE_MAX}]"));
        }
        if self.target == Target::Recommend {
            if self.keys.customers.is_empty() {
                return invalid(
                    "keys.customers",
                    "recommend requests need at least one customer id".to_owned(),
                );
            }
            if self.keys.containers.is_empty() {
                return invalid(
                    "keys.containers",
                    "recommend requests need at least one container id".to_owned(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BenchOptions {
        BenchOptions {
            url: "http://127.0.0.1:8080".to_owned(),
            target: Target::Recommend,
            connections: 2,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            limit: 20,
            keys: RequestKeys {
                customers: vec![1],
                containers: vec![2],
            },
            seed: 7,
            timeout: Duration::from_secs(1),
            rate: None,
        }
    }

    fn refused_option(options: &BenchOptions) -> &'static str {
        match options.validate() {
            Err(BenchError::InvalidOption { option, .. }) => option,
            other => panic!("expected an invalid option, got {other:?}"),
        }
    }

    /// Each bound is enforced and the error names the option; healthz needs no keys.
    #[test]
    fn validate_names_the_option_out_of_range() {
        assert!(options().validate().is_ok());

        let mut bad = options();
        bad.connections = 0;
        assert_eq!(refused_option(&bad), "connections");
        bad.connections = CONNECTIONS_MAX + 1;
        assert_eq!(refused_option(&bad), "connections");

        let mut bad = options();
        bad.duration = Duration::ZERO;
        assert_eq!(refused_option(&bad), "duration");
        bad.duration = Duration::MAX;
        assert_eq!(refused_option(&bad), "duration");

        let mut bad = options();
        bad.warmup = Duration::MAX;
        assert_eq!(refused_option(&bad), "warmup");

        let mut bad = options();
        bad.timeout = Duration::from_micros(999);
        assert_eq!(refused_option(&bad), "timeout");
        bad.timeout = TIMEOUT_MAX + Duration::from_secs(1);
        assert_eq!(refused_option(&bad), "timeout");

        let mut bad = options();
        bad.keys.customers.clear();
        assert_eq!(refused_option(&bad), "keys.customers");
        let mut bad = options();
        bad.keys.containers.clear();
        assert_eq!(refused_option(&bad), "keys.containers");

        let mut bad = options();
        bad.rate = Some(0.0);
        assert_eq!(refused_option(&bad), "rate");
        bad.rate = Some(f64::NAN);
        assert_eq!(refused_option(&bad), "rate");

        let mut healthz = options();
        healthz.target = Target::Healthz;
        healthz.keys = RequestKeys::default();
        assert!(healthz.validate().is_ok());
    }
}
