//! What a run measured: the per-connection `Tally` that workers fill, and the
//! [`BenchReport`] made from the merged tallies, printable as a table or as JSON.

use crate::connection::Outcome;
use crate::error::BenchError;
use crate::options::Target;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Significant decimal digits the latency histogram keeps: values are exact up to 2,047 µs and
/// within 0.1% above, enough to tell p99.9 apart from the maximum.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// The status that counts as success; every other status is counted in `errors_by_status`.
pub const STATUS_OK: u16 = 200;

/// The counts of one connection (or, after [`Tally::merge`], of a whole run) over the measured
/// phase.
#[derive(Debug, Clone)]
pub(crate) struct Tally {
    /// Latency of every response (any status) in microseconds, from just before the request is
    /// handed to hyper until the last byte of the body. Auto-resizing: it grows to the largest
    /// latency recorded, so memory follows what was seen, not the timeout.
    pub(crate) latency_us: Histogram<u64>,
    /// Latency of the responses with status 200 only: under overload, what an admitted
    /// request costs, apart from the quick refusals.
    pub(crate) ok_latency_us: Histogram<u64>,
    /// Responses received, any status.
    pub(crate) requests: u64,
    pub(crate) errors_by_status: BTreeMap<u16, u64>,
    /// Responses with status 200 whose body names a `degraded` reason.
    pub(crate) partial: u64,
    /// Requests that got no response because the connection failed, plus failed reconnects.
    pub(crate) transport_errors: u64,
    pub(crate) timeouts: u64,
    /// Open loop: requests that were due while every connection the generator may open was
    /// busy, so never sent. Non-zero means the generator, not the server, set the pace.
    pub(crate) unsent: u64,
}

fn histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new(LATENCY_SIGNIFICANT_DIGITS).map_err(|error| BenchError::Histogram {
        reason: error.to_string(),
    })
}

fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    if histogram.record(latency_us).is_err() {
        // Only if resizing would overflow usize: clamp rather than lose the sample.
        histogram.saturating_record(latency_us);
    }
}

/// Latency percentiles, mean and maximum of one histogram, in microseconds: the highest value
/// the histogram cannot tell apart from the true one (exact below 2,048 µs, within 0.1% above).
/// All 0 for an empty histogram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        Latency {
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
            mean_us: histogram.mean(),
        }
    }

    /// Whether p50 <= p90 <= p99 <= p99.9 <= max, as a histogram guarantees.
    pub fn ordered(&self) -> bool {
        self.p50_us <= self.p90_us
            && self.p90_us <= self.p99_us
            && self.p99_us <= self.p999_us
            && self.p999_us <= self.max_us
    }

    fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "mean": self.mean_us,
            "p50": self.p50_us,
            "p90": self.p90_us,
            "p99": self.p99_us,
            "p999": self.p999_us,
            "max": self.max_us,
        })
    }
}

impl Tally {
    /// An empty tally.
    ///
    /// # Errors
    ///
    /// [`BenchError::Histogram`] if hdrhistogram refuses the precision (it does not for 3).
    pub(crate) fn new() -> Result<Tally, BenchError> {
        Ok(Tally {
            latency_us: histogram()?,
            ok_latency_us: histogram()?,
            requests: 0,
            errors_by_status: BTreeMap::new(),
            partial: 0,
            transport_errors: 0,
            timeouts: 0,
            unsent: 0,
        })
    }

    /// Counts one full response; `partial` for a 200 whose body says it is degraded.
    pub(crate) fn record_response(&mut self, status: u16, latency: Duration, partial: bool) {
        record(&mut self.latency_us, latency);
        self.requests += 1;
        if status == STATUS_OK {
            record(&mut self.ok_latency_us, latency);
            self.partial += u64::from(partial);
        } else {
            *self.errors_by_status.entry(status).or_insert(0) += 1;
        }
    }

    /// Counts how one exchange ended.
    pub(crate) fn record(&mut self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Response {
                status, partial, ..
            } => self.record_response(status, latency, partial),
            Outcome::Transport => self.transport_errors += 1,
            Outcome::Timeout => self.timeouts += 1,
        }
    }

    /// Adds `other` into `self`.
    ///
    /// # Errors
    ///
    /// [`BenchError::Histogram`] if the histograms cannot be added (they can: both
    /// auto-resize).
    pub(crate) fn merge(&mut self, other: &Tally) -> Result<(), BenchError> {
        let histogram_error = |error: hdrhistogram::AdditionError| BenchError::Histogram {
            reason: error.to_string(),
        };
        self.latency_us
            .add(&other.latency_us)
            .map_err(histogram_error)?;
        self.ok_latency_us
            .add(&other.ok_latency_us)
            .map_err(histogram_error)?;
        self.requests += other.requests;
        for (status, count) in &other.errors_by_status {
            *self.errors_by_status.entry(*status).or_insert(0) += count;
        }
        self.partial += other.partial;
        self.transport_errors += other.transport_errors;
        self.timeouts += other.timeouts;
        self.unsent += other.unsent;
        Ok(())
    }
}

/// The result of a run. Latencies are in microseconds and cover the responses of the measured
/// phase; they are all 0 when no response was received.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// The endpoint that was loaded.
    pub target: Target,
    /// Closed loop: the connections, each with one request in flight at a time. Open loop: the
    /// most connections the generator may open.
    pub connections: usize,
    /// Open loop: the offered rate, requests per second. `None` for a closed loop.
    pub rate: Option<f64>,
    /// Open loop: the most connections that were open at once.
    pub connections_peak: usize,
    /// Responses received during the measured phase, any status.
    pub requests: u64,
    /// Responses with a status other than 200, by status.
    pub errors_by_status: BTreeMap<u16, u64>,
    /// Responses with status 200 whose body names a `degraded` reason: partial answers.
    pub partial: u64,
    /// Requests that got no response because the connection failed, and failed reconnects.
    pub transport_errors: u64,
    /// Requests that got no full response within the per-request timeout.
    pub timeouts: u64,
    /// Open loop: requests due while all `connections` were busy, never sent.
    pub unsent: u64,
    /// From the start of the measured phase until the last request finished (at most the
    /// timeout past the requested duration).
    pub elapsed: Duration,
    /// `requests / elapsed`, 0 when `elapsed` is 0.
    pub rps: f64,
    /// Responses with status 200 per second: the goodput.
    pub ok_rps: f64,
    /// The latency of every response, whatever its status.
    pub latency: Latency,
    /// The latency of the responses with status 200: under overload, what an admitted request
    /// costs, apart from quick refusals (503) that would pull the percentiles down.
    pub ok_latency: Latency,
}

impl BenchReport {
    /// The report of a run whose merged counts are `tally`.
    pub(crate) fn from_tally(
        target: Target,
        connections: usize,
        tally: &Tally,
        elapsed: Duration,
    ) -> BenchReport {
        let elapsed_s = elapsed.as_secs_f64();
        let per_second = |count: u64| {
            if elapsed_s > 0.0 {
                count as f64 / elapsed_s
            } else {
                0.0
            }
        };
        let ok = tally.requests - tally.errors_by_status.values().sum::<u64>();
        let report = BenchReport {
            target,
            connections,
            rate: None,
            connections_peak: 0,
            requests: tally.requests,
            errors_by_status: tally.errors_by_status.clone(),
            partial: tally.partial,
            transport_errors: tally.transport_errors,
            timeouts: tally.timeouts,
            unsent: tally.unsent,
            elapsed,
            rps: per_second(tally.requests),
            ok_rps: per_second(ok),
            latency: Latency::of(&tally.latency_us),
            ok_latency: Latency::of(&tally.ok_latency_us),
        };
        debug_assert_eq!(
            tally.latency_us.len(),
            tally.requests,
            "one latency per response"
        );
        debug_assert_eq!(tally.ok_latency_us.len(), ok, "one latency per 200");
        debug_assert!(report.percentiles_ordered(), "{report:?}");
        report
    }

    /// Responses with status 200.
    pub fn ok_responses(&self) -> u64 {
        self.requests - self.errors_by_status.values().sum::<u64>()
    }

    /// Whether both latency summaries are ordered, as a histogram guarantees.
    pub fn percentiles_ordered(&self) -> bool {
        self.latency.ordered() && self.ok_latency.ordered()
    }

    /// The report as one line of JSON for scripts. Times are in the unit their key names;
    /// `errors_by_status` has the status codes as string keys, as JSON requires:
    ///
    /// ```json
    /// {"target":"healthz","connections":2,"rate":null,"connections_peak":0,"requests":1000,
    ///  "ok":990,"errors_by_status":{"500":10},"partial":0,"transport_errors":0,"timeouts":0,
    ///  "unsent":0,"elapsed_s":1.0,"rps":1000.0,"ok_rps":990.0,
    ///  "latency_us":{"mean":350.2,"p50":320,"p90":480,"p99":900,"p999":1500,"max":2100},
    ///  "ok_latency_us":{"mean":340.1,"p50":318,"p90":470,"p99":880,"p999":1400,"max":2000}}
    /// ```
    pub fn to_json(&self) -> String {
        let errors_by_status: serde_json::Map<String, serde_json::Value> = self
            .errors_by_status
            .iter()
            .map(|(status, count)| (status.to_string(), (*count).into()))
            .collect();
        serde_json::json!({
            "target": self.target.name(),
            "connections": self.connections,
            "rate": self.rate,
            "connections_peak": self.connections_peak,
            "requests": self.requests,
            "ok": self.ok_responses(),
            "errors_by_status": errors_by_status,
            "partial": self.partial,
            "transport_errors": self.transport_errors,
            "timeouts": self.timeouts,
            "unsent": self.unsent,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "rps": self.rps,
            "ok_rps": self.ok_rps,
            "latency_us": self.latency.to_json(),
            "ok_latency_us": self.ok_latency.to_json(),
        })
        .to_string()
    }
}

fn milliseconds(microseconds: f64) -> String {
    format!("{:.3}", microseconds / 1_000.0)
}

impl fmt::Display for BenchReport {
    /// A table for people (the `offered` line and the `connections` peak only in an open loop):
    ///
    /// ```text
    /// target       GET /healthz over 2 connections
    /// offered      1000.0 req/s; connections open at most: 12; unsent: 0
    /// elapsed      1.001 s
    /// requests     12345 (12 not 200; 0 partial)
    /// throughput   12333.1 req/s (200: 12321.1 req/s)
    /// latency ms       mean      p50      p90      p99    p99.9      max
    ///   all           0.161    0.150    0.210    0.400    1.020    3.200
    ///   200           0.160    0.150    0.210    0.390    1.010    3.200
    /// errors       status 500: 12; transport: 0; timeouts: 0
    /// ```
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "target       GET {} over {} connection{}",
            self.target.path(),
            self.connections,
            if self.connections == 1 { "" } else { "s" }
        )?;
        if let Some(rate) = self.rate {
            writeln!(
                formatter,
                "offered      {rate:.1} req/s; connections open at most: {}; unsent: {}",
                self.connections_peak, self.unsent
            )?;
        }
        writeln!(
            formatter,
            "elapsed      {:.3} s",
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            formatter,
            "requests     {} ({} not 200; {} partial)",
            self.requests,
            self.requests - self.ok_responses(),
            self.partial
        )?;
        writeln!(
            formatter,
            "throughput   {:.1} req/s (200: {:.1} req/s)",
            self.rps, self.ok_rps
        )?;
        writeln!(
            formatter,
            "latency ms   {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "mean", "p50", "p90", "p99", "p99.9", "max"
        )?;
        for (label, latency) in [("all", &self.latency), ("200", &self.ok_latency)] {
            writeln!(
                formatter,
                "  {label}         {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                milliseconds(latency.mean_us),
                milliseconds(latency.p50_us as f64),
                milliseconds(latency.p90_us as f64),
                milliseconds(latency.p99_us as f64),
                milliseconds(latency.p999_us as f64),
                milliseconds(latency.max_us as f64),
            )?;
        }
        write!(formatter, "errors       ")?;
        for (status, count) in &self.errors_by_status {
            write!(formatter, "status {status}: {count}; ")?;
        }
        write!(
            formatter,
            "transport: {}; timeouts: {}",
            self.transport_errors, self.timeouts
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally() -> Tally {
        match Tally::new() {
            Ok(tally) => tally,
            Err(error) => panic!("{error}"),
        }
    }

    /// Percentiles, mean, rps and error counts come out as computed by hand from latencies
    /// 1..=1000 µs (exact in a 3-digit histogram below 2,048 µs), split over two merged tallies.
    #[test]
    fn report_math_matches_hand_computation() {
        let mut first = tally();
        let mut second = tally();
        for latency_us in 1..=1000u64 {
            let (tally, status) = match latency_us {
                even if even % 2 == 0 && even % 250 == 0 => (&mut first, 404),
                even if even % 2 == 0 => (&mut first, STATUS_OK),
                odd if odd % 5 == 0 => (&mut second, 503),
                _ => (&mut second, STATUS_OK),
            };
            tally.record_response(status, Duration::from_micros(latency_us), false);
        }
        first.transport_errors = 2;
        second.transport_errors = 1;
        second.timeouts = 4;

        let mut merged = tally();
        for part in [&first, &second] {
            if let Err(error) = merged.merge(part) {
                panic!("{error}");
            }
        }
        let report = BenchReport::from_tally(Target::Recommend, 2, &merged, Duration::from_secs(2));

        assert_eq!(report.requests, 1000);
        assert_eq!(report.rps, 500.0);
        assert_eq!(report.latency.p50_us, 500);
        assert_eq!(report.latency.p90_us, 900);
        assert_eq!(report.latency.p99_us, 990);
        assert_eq!(report.latency.p999_us, 999);
        assert_eq!(report.latency.max_us, 1000);
        assert!(
            (report.latency.mean_us - 500.5).abs() < 1e-9,
            "{}",
            report.latency.mean_us
        );
        // 404: 250, 500, 750, 1000. 503: the odd multiples of 5, 5, 15, .., 995.
        assert_eq!(
            report.errors_by_status,
            BTreeMap::from([(404, 4), (503, 100)])
        );
        assert_eq!(report.ok_responses(), 1000 - 104);
        assert_eq!(report.ok_rps, 448.0);
        // The slowest 200 is 999 (1000 was a 404). Of the 896 answers 200, 448 took at most
        // 499 µs (499 values, less 50 odd multiples of 5 and the 404 at 250), so the median is 499.
        assert_eq!(report.ok_latency.max_us, 999);
        assert_eq!(report.ok_latency.p50_us, 499);
        assert_eq!(report.transport_errors, 3);
        assert_eq!(report.timeouts, 4);
        assert!(report.percentiles_ordered());
    }

    /// An empty run reports zeros, not NaN or infinity, and a zero elapsed time gives 0 rps.
    #[test]
    fn empty_report_is_all_zero() {
        let report = BenchReport::from_tally(Target::Healthz, 1, &tally(), Duration::ZERO);
        assert_eq!(report.requests, 0);
        assert_eq!(report.rps, 0.0);
        assert_eq!(
            (
                report.latency.p50_us,
                report.latency.p999_us,
                report.latency.max_us
            ),
            (0, 0, 0)
        );
        assert_eq!(report.latency.mean_us, 0.0);
        assert!(report.percentiles_ordered());
        let json: serde_json::Value = match serde_json::from_str(&report.to_json()) {
            Ok(json) => json,
            Err(error) => panic!("{error}"),
        };
        assert_eq!(json["rps"], 0.0);
    }

    /// Latencies above 2,048 µs keep 3 significant digits, and percentiles stay ordered.
    #[test]
    fn large_latencies_keep_three_digits() {
        let mut tally = tally();
        for latency_ms in [1u64, 2, 3, 50, 1_000, 30_000] {
            tally.record_response(STATUS_OK, Duration::from_millis(latency_ms), false);
        }
        let report = BenchReport::from_tally(Target::Healthz, 1, &tally, Duration::from_secs(1));
        assert!(report.percentiles_ordered());
        let max_us = 30_000_000.0;
        assert!(
            (report.latency.max_us as f64 - max_us).abs() / max_us < 1e-3,
            "{}",
            report.latency.max_us
        );
    }

    /// The table shows rps, percentiles in ms with 3 decimals and every error count; the JSON
    /// parses and carries the same numbers.
    #[test]
    fn display_and_json_carry_the_numbers() {
        let mut tally = tally();
        tally.record_response(STATUS_OK, Duration::from_micros(1_250), true);
        tally.record_response(500, Duration::from_micros(250), false);
        tally.transport_errors = 3;
        tally.timeouts = 1;
        let report =
            BenchReport::from_tally(Target::Recommend, 4, &tally, Duration::from_millis(500));

        let table = report.to_string();
        for expected in [
            "GET /v1/recommend over 4 connections",
            "0.500 s",
            "2 (1 not 200; 1 partial)",
            "4.0 req/s",
            "p99.9",
            "1.250",
            "0.250",
            "status 500: 1",
            "transport: 3",
            "timeouts: 1",
        ] {
            assert!(
                table.contains(expected),
                "{expected:?} missing from\n{table}"
            );
        }

        let json: serde_json::Value = match serde_json::from_str(&report.to_json()) {
            Ok(json) => json,
            Err(error) => panic!("{error}: {}", report.to_json()),
        };
        assert_eq!(json["target"], "recommend");
        assert_eq!(json["connections"], 4);
        assert_eq!(json["requests"], 2);
        assert_eq!(json["ok"], 1);
        assert_eq!(json["errors_by_status"]["500"], 1);
        assert_eq!(json["transport_errors"], 3);
        assert_eq!(json["timeouts"], 1);
        assert_eq!(json["elapsed_s"], 0.5);
        assert_eq!(json["rps"], 4.0);
        assert_eq!(json["latency_us"]["p50"], 250);
        assert_eq!(json["latency_us"]["max"], 1_250);
        assert_eq!(json["latency_us"]["mean"], 750.0);
        assert_eq!(json["ok_latency_us"]["p50"], 1_250);
        assert_eq!(json["partial"], 1);
        assert_eq!(json["ok_rps"], 2.0);
    }
}
