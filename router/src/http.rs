//! The axum application: routes of contract section 3, and one middleware that gives every
//! request an id (the `x-request-id` header, or a fresh one), bounds the requests in flight,
//! records `scoregrid_http_*` metrics, and logs failures with the request id.

use crate::error::ApiError;
use crate::params::{RecommendParams, parse_categories_k, parse_unsigned};
use crate::routee::BreakerState;
use crate::state::RouterState;
use crate::state::{ClusterView, Membership};
use crate::telemetry;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use scoregrid_raft::member::decode_cluster_reply;
use scoregrid_raft::protocol::{ClusterReply, ClusterRequest, MemberStatus};
use scoregrid_raft::{ClusterMap, NodeState};
use scoregrid_shard::hashing::mix64;
use scoregrid_shard::table::top_categories;
use scoregrid_wire::NodeId;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Longest `x-request-id` accepted from a client; longer ones are replaced.
const REQUEST_ID_CHARS_MAX: usize = 128;

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode response: {e}"),
        )
            .into_response(),
    }
}

pub fn app(state: Arc<RouterState>) -> Router {
    let body_max = state.config.http.request_body_bytes_max;
    Router::new()
        .route("/v1/recommend", get(recommend))
        .route("/v1/score", post(score))
        .route("/v1/customers/{id}/categories", get(categories))
        .route("/v1/cluster", get(cluster))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(body_max))
        .with_state(state)
}

async fn observe(State(state): State<Arc<RouterState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| match p.as_str() {
            "/v1/recommend" => "/v1/recommend",
            "/v1/score" => "/v1/score",
            "/v1/customers/{id}/categories" => "/v1/customers/{id}/categories",
            "/v1/cluster" => "/v1/cluster",
            "/metrics" => "/metrics",
            "/healthz" => "/healthz",
            "/readyz" => "/readyz",
            _ => "other",
        });
    let request_id: Arc<str> = match request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        Some(id) if !id.is_empty() && id.len() <= REQUEST_ID_CHARS_MAX => Arc::from(id),
        _ => {
            let seq = state.request_seq.fetch_add(1, Ordering::Relaxed);
            Arc::from(format!("{:016x}", mix64(seq ^ process_salt())))
        }
    };
    let mut response = match crate::body::read_whole(&state.config.http, request).await {
        Err(error) => {
            let mut response = error.into_response();
            // The rest of a refused body may still be on its way: do not read it.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        // Probes and scrapes take no slot: an overloaded router must still say it is alive,
        // and show why it is overloaded.
        Ok(request) if matches!(route, "/healthz" | "/readyz" | "/metrics") => {
            next.run(request).await
        }
        Ok(request) => match state.admission.enter().await {
            Ok(_slot) => next.run(request).await,
            Err(shed) => {
                state.admission.log_shed(&request_id, route, shed);
                let mut response = ApiError::overloaded(shed.label()).into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                // Logged above, at most once a second.
                response.extensions_mut().insert(ShedLogged);
                response
            }
        },
    };

    let status = response.status();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    metrics::counter!(telemetry::HTTP_REQUESTS, "route" => route, "status" => status_label(status))
        .increment(1);
    metrics::histogram!(telemetry::HTTP_DURATION, "route" => route)
        .record(started.elapsed().as_secs_f64());
    if (status.is_client_error() || status.is_server_error())
        && response.extensions().get::<ShedLogged>().is_none()
    {
        let message = response
            .extensions()
            .get::<ApiError>()
            .map(|e| e.message.clone())
            .unwrap_or_default();
        if status.is_server_error() {
            tracing::warn!(request_id = %request_id, route, status = status.as_u16(), %message, "request failed");
        } else {
            tracing::debug!(request_id = %request_id, route, status = status.as_u16(), %message, "request refused");
        }
    }
    response
}

/// Marks a shed request's answer, whose log line `Admission::log_shed` wrote (or left out).
#[derive(Clone, Copy)]
struct ShedLogged;

/// Distinguishes request ids of two router processes started at the same time.
fn process_salt() -> u64 {
    use std::sync::OnceLock;
    static SALT: OnceLock<u64> = OnceLock::new();
    *SALT.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        mix64(nanos ^ u64::from(std::process::id()))
    })
}

fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        400 => "400",
        404 => "404",
        405 => "405",
        413 => "413",
        500 => "500",
        503 => "503",
        s if s < 300 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

#[derive(Serialize)]
struct ItemBody {
    product: u64,
    score: f32,
    category: u32,
}

#[derive(Serialize)]
struct CoverageBody {
    segments: u32,
    answered: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    degraded: Vec<&'static str>,
}

#[derive(Serialize)]
struct RecommendBody {
    customer: u64,
    container: u64,
    model_version: String,
    personalized: bool,
    items: Vec<ItemBody>,
    next_cursor: Option<String>,
    coverage: CoverageBody,
    took_us: u64,
}

async fn recommend(
    State(state): State<Arc<RouterState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let params = RecommendParams::parse(query.as_deref(), &state.config.api)?;
    let (customer, container) = (params.customer, params.container);
    let r = state.recommend(params).await?;
    let body = RecommendBody {
        customer,
        container,
        model_version: r.version.to_string(),
        personalized: r.personalized,
        items: r
            .items
            .iter()
            .map(|i| ItemBody {
                product: i.product,
                score: i.score,
                category: i.category,
            })
            .collect(),
        next_cursor: r.next_cursor,
        coverage: CoverageBody {
            segments: r.coverage.segments,
            answered: r.coverage.answered,
            degraded: r.coverage.degraded.into_iter().collect(),
        },
        took_us: started.elapsed().as_micros() as u64,
    };
    Ok(json(StatusCode::OK, &body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreRequest {
    customer: u64,
    products: Vec<u64>,
}

#[derive(Serialize)]
struct ScoreBody {
    scores: Vec<ScoreItem>,
    missing: Vec<u64>,
}

#[derive(Serialize)]
struct ScoreItem {
    product: u64,
    score: f32,
}

async fn score(
    State(state): State<Arc<RouterState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "payload_too_large",
                format!(
                    "request body larger than {} bytes",
                    state.config.http.request_body_bytes_max
                ),
            )
        } else {
            ApiError::bad_body(rejection.body_text())
        }
    })?;
    let request: ScoreRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_body(format!(
            "body must be {{\"customer\":U64,\"products\":[U64, ...]}}: {e}"
        ))
    })?;
    let max = state.config.api.score_products_max;
    if request.products.len() > max {
        return Err(ApiError::bad_body(format!(
            "at most {max} products per call, got {}",
            request.products.len()
        )));
    }
    let (scores, missing) = state
        .score_products(request.customer, request.products)
        .await?;
    let body = ScoreBody {
        scores: scores
            .into_iter()
            .map(|s| ScoreItem {
                product: s.product,
                score: s.score,
            })
            .collect(),
        missing,
    };
    Ok(json(StatusCode::OK, &body))
}

#[derive(Serialize)]
struct CategoriesBody {
    customer: u64,
    categories: Vec<CategoryItem>,
}

#[derive(Serialize)]
struct CategoryItem {
    category: u32,
    weight: f32,
}

async fn categories(
    State(state): State<Arc<RouterState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let customer = parse_unsigned("id", &id, u64::MAX, "an unsigned 64-bit integer")?;
    let k = parse_categories_k(query.as_deref(), &state.config.api)?;
    let profile = state.customer_profile(customer).await?;
    let categories = top_categories(&profile.category_ids, &profile.category_weights, k)
        .into_iter()
        .map(|(category, weight)| CategoryItem { category, weight })
        .collect();
    Ok(json(
        StatusCode::OK,
        &CategoriesBody {
            customer,
            categories,
        },
    ))
}

async fn cluster(State(state): State<Arc<RouterState>>) -> Result<Response, ApiError> {
    let view = state
        .view()
        .ok_or_else(|| ApiError::unavailable("the router has no cluster map yet"))?;
    let map = &view.map;
    let placement = &map.placement;
    let mut routees: Vec<_> = view
        .routees
        .iter()
        .map(|(id, r)| {
            let circuit = match r.breaker_state() {
                BreakerState::Closed { .. } => "closed",
                BreakerState::Open { .. } => "open",
                BreakerState::HalfOpen { .. } => "half_open",
            };
            serde_json::json!({
                "node": id.0,
                "circuit": circuit,
                "hedge_delay_us": r.hedge_delay().as_micros() as u64,
                "calls": r.calls.load(Ordering::Relaxed),
                "errors": r.errors.load(Ordering::Relaxed),
                "last_error": r.last_error.lock().ok().and_then(|e| e.clone()),
            })
        })
        .collect();
    routees.sort_by_key(|r| r["node"].as_u64());
    let (membership, leader, term, stale, source) = match &view.membership {
        Membership::Static => ("static", None, 0, false, None),
        Membership::Raft {
            leader,
            term,
            stale,
            source,
        } => (
            "raft",
            leader.map(|l| l.0),
            *term,
            *stale,
            source.map(|s| s.0),
        ),
    };
    // The leader's own view, for the commit index and when it last heard from each node.
    let leader_status = match view.membership {
        Membership::Raft {
            leader: Some(leader),
            ..
        } => leader_status(&view, leader).await,
        _ => None,
    };
    let contact_of = |id: NodeId| {
        leader_status.as_ref().and_then(|s| {
            if s.node == id {
                return Some(0);
            }
            s.last_contact_ms
                .iter()
                .find(|(n, _)| *n == id)
                .map(|(_, ms)| *ms)
        })
    };
    let body = serde_json::json!({
        "membership": membership,
        "leader": leader,
        "term": term,
        "epoch": map.epoch.0,
        "stale": stale,
        "source": source,
        "commit_index": leader_status.as_ref().and_then(|s| s.commit_index),
        "active_version": map.active_model().map(|v| v.as_str()),
        "nodes": nodes_json(map, contact_of),
        "versions": versions_json(map).into_iter().zip(&map.models).map(|(mut v, m)| {
            v["containers"] = view.directories.get(&m.version).map(|d| d.containers.len()).into();
            v["segments"] = view.directories.get(&m.version).map(|d| d.segment_count()).into();
            v
        }).collect::<Vec<_>>(),
        "versions_retained": map.versions_retained,
        "under_replicated_partitions": map.under_replicated(),
        "placement": {
            "partitions": placement.partitions().get(),
            "replication_factor": placement.replication_factor(),
            "load": placement.load().into_iter().map(|(n, count)| (n.0.to_string(), count)).collect::<std::collections::BTreeMap<_, _>>(),
            "replicas": placement.partitions().iter().map(|p| placement.replicas(p).iter().map(|n| n.0).collect::<Vec<_>>()).collect::<Vec<_>>(),
        },
        "routees": routees,
        "up": map.nodes.iter().filter(|n| n.state == NodeState::Up).count(),
    });
    Ok(json(StatusCode::OK, &body))
}

/// The `versions` of `/v1/cluster` (and of `scoregrid cluster status --json`), oldest first:
/// each version's state and directory digest, and for one staging, the copies its replicas
/// reported staged and those still missing before it may be activated.
pub fn versions_json(map: &ClusterMap) -> Vec<serde_json::Value> {
    map.models
        .iter()
        .map(|m| {
            let staging = m.state == scoregrid_raft::ModelState::Staging;
            serde_json::json!({
                "version": m.version.as_str(),
                "state": m.state,
                "digest": format!("{:08x}", m.digest),
                "staged_copies": staging.then(|| m.staged_copies()),
                "copies_missing": staging
                    .then(|| scoregrid_raft::models::missing_copies(map, m).len()),
            })
        })
        .collect()
}

/// The `nodes` of `/v1/cluster` (and of `scoregrid cluster status --json`): each node of the
/// map with its state, role and partitions, and `contact` (ms since the leader last heard it).
pub fn nodes_json(
    map: &ClusterMap,
    contact: impl Fn(NodeId) -> Option<u64>,
) -> Vec<serde_json::Value> {
    map.nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "id": n.id.0,
                "addr": n.address,
                "name": n.name,
                "state": n.state,
                "voter": n.voter,
                "admin": n.admin,
                "partitions": map.placement.partitions_of(n.id).len(),
                "last_contact_ms": contact(n.id),
            })
        })
        .collect()
}

/// How long `/v1/cluster` waits for the leader's own status before answering without it.
const LEADER_STATUS_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

async fn leader_status(view: &ClusterView, leader: NodeId) -> Option<MemberStatus> {
    let routee = view.routees.get(&leader)?;
    let payload = scoregrid_wire::codec::encode(&ClusterRequest::Status).ok()?;
    let deadline = tokio::time::Instant::now() + LEADER_STATUS_WAIT;
    let call = routee
        .client
        .call_until(scoregrid_wire::Request::Cluster(payload), Some(deadline));
    let response = tokio::time::timeout_at(deadline, call).await.ok()?.ok()?;
    match decode_cluster_reply(response) {
        Ok(ClusterReply::Status(status)) => Some(*status),
        _ => None,
    }
}

async fn metrics_text(State(state): State<Arc<RouterState>>) -> Response {
    metrics_response(state.prometheus.as_ref())
}

/// `/metrics` of any scoregrid process: the Prometheus text of its recorder, or 503 when it has
/// none.
pub fn metrics_response(prometheus: Option<&PrometheusHandle>) -> Response {
    match prometheus {
        Some(handle) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            )],
            handle.render(),
        )
            .into_response(),
        None => ApiError::unavailable("no metrics recorder in this process").into_response(),
    }
}

async fn healthz() -> Response {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<Arc<RouterState>>) -> Response {
    let Some(view) = state.view() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no cluster map yet",
        )
        .into_response();
    };
    match view.active() {
        Some((version, _)) => json(
            StatusCode::OK,
            &serde_json::json!({"status": "ready", "model_version": version.as_str(), "epoch": view.map.epoch.0, "stale": view.membership.is_stale()}),
        ),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no model version is active",
        )
        .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see GET /v1/recommend, POST /v1/score, GET /v1/cluster")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}
