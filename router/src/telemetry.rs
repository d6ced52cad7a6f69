//! Metrics: the Prometheus recorder (installed once per process) and the router's metric
//! names. Histograms get explicit buckets so that `/metrics` exposes real histograms, from
//! which any percentile can be aggregated across routers, rather than per-process summaries.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub const HTTP_REQUESTS: &str = "scoregrid_http_requests_total";
pub const HTTP_DURATION: &str = "scoregrid_http_request_duration_seconds";
pub const STAGE_DURATION: &str = "scoregrid_recommend_stage_seconds";
pub const PARTIAL_ANSWERS: &str = "scoregrid_recommend_partial_total";
pub const NODE_CALL_ERRORS: &str = "scoregrid_router_node_call_errors_total";
pub const ITEMS_RETURNED: &str = "scoregrid_recommend_items_total";
pub const HEDGES: &str = "scoregrid_router_hedges_total";
pub const HEDGES_WON: &str = "scoregrid_router_hedges_won_total";
/// The epoch of the cluster map the router follows.
pub const MAP_EPOCH: &str = "scoregrid_router_map_epoch";
/// 1 while the router's map may be out of date (no node in contact with a quorum answers).
pub const MAP_STALE: &str = "scoregrid_router_map_stale";
/// Answers given from a map that may be out of date (`stale_map` in `coverage.degraded`).
pub const STALE_ANSWERS: &str = "scoregrid_recommend_stale_map_total";
/// Requests answered at once because no replica of a needed partition could be called.
pub const FAST_FAILURES: &str = "scoregrid_router_no_replica_total";

/// Hedges not sent because the slow node's hedging budget was spent.
pub const HEDGES_SKIPPED: &str = "scoregrid_router_hedges_skipped_total";
/// Circuits opened, by node and cause (`transport`, `late`, `down_in_map`).
pub const CIRCUITS_OPENED: &str = "scoregrid_router_circuit_opened_total";
/// Circuits closed again by an answer.
pub const CIRCUITS_CLOSED: &str = "scoregrid_router_circuit_closed_total";
/// Client connections open now.
pub const CONNECTIONS_OPEN: &str = "scoregrid_http_connections_open";
/// Connections refused at accept, by the bound they hit (`connections_max`,
/// `connections_per_client_max`).
pub const CONNECTIONS_REFUSED: &str = "scoregrid_http_connections_refused_total";
/// Connections that ended in an error, by cause (`header_timeout`, `bad_request`, ...).
pub const CONNECTIONS_CLOSED: &str = "scoregrid_http_connections_closed_total";
/// Requests whose body did not arrive in time (answered 408).
pub const BODY_TIMEOUTS: &str = "scoregrid_http_body_timeouts_total";
/// Requests shed at the door (503 `overloaded`), by reason (`queue_full`, `queue_wait`).
pub const REQUESTS_SHED: &str = "scoregrid_http_requests_shed_total";
/// Requests waiting for a slot now.
pub const QUEUE_DEPTH: &str = "scoregrid_http_queue_depth";
/// How long queued requests waited for a slot (or until they were shed).
pub const QUEUE_WAIT: &str = "scoregrid_http_queue_wait_seconds";
/// 1 while the admission queue is a standing queue (not empty for `http.queue_standing_ms`),
/// when requests wait at most `http.queue_wait_overloaded_ms`; else 0.
pub const QUEUE_STANDING: &str = "scoregrid_http_queue_standing";

/// Times the router gave free heap memory back to the kernel after load fell (`memory.rs`).
pub const HEAP_TRIMS: &str = "scoregrid_router_heap_trims_total";

/// How often histogram samples are folded into their buckets. At 30,000 requests/s and four
/// samples per request, one interval holds at most ~5 MB of samples.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Latency buckets, in seconds: 25 µs to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's global recorder, once; later calls return
/// the same handle. `None` if another recorder was installed first (then `/metrics` says so).
pub fn prometheus() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}
