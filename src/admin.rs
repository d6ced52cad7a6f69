//! A node's admin HTTP listener (`node.admin_addr`): what a person or a scraper asks a node
//! directly, without going through a router.
//!
//! - `GET /metrics`: Prometheus text (the node's request, staging and Raft metrics: role, term,
//!   applied index, epoch, stale).
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /v1/status`: this node's own view: its Raft role, term, leader, commit and last log
//!   index, map epoch, whether it is stale, the versions it hosts and stages.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use scoregrid_node::Node;
use scoregrid_raft::member::Member;
use scoregrid_wire::{Request, Response as NodeResponse};
use std::future::Future;
use std::sync::Arc;

#[derive(Clone)]
struct Admin {
    node: Arc<Node>,
    member: Arc<Member>,
    prometheus: Option<PrometheusHandle>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    member: Arc<Member>,
    prometheus: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let addr = listener.local_addr().ok();
    // Histogram samples are folded on a timer, as the router does, so their memory is bounded.
    if let Some(handle) = prometheus.clone() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(scoregrid_router::telemetry::UPKEEP_INTERVAL);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route(
            "/healthz",
            get(|| async { json(&serde_json::json!({"status": "ok"})) }),
        )
        .route("/v1/status", get(status))
        .with_state(Admin {
            node,
            member,
            prometheus,
        });
    tracing::info!(?addr, "admin HTTP listening");
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(%error, "admin HTTP stopped");
    }
}

fn json(value: &serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        value.to_string(),
    )
        .into_response()
}

async fn metrics_text(State(admin): State<Admin>) -> Response {
    scoregrid_router::http::metrics_response(admin.prometheus.as_ref())
}

async fn status(State(admin): State<Admin>) -> Response {
    let raft = admin.member.status();
    let node = match admin.node.handle(Request::Status) {
        NodeResponse::Status(status) => serde_json::json!({
            "active": status.active.map(|v| v.to_string()),
            "hosted": status.hosted.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "staging": status.staging.iter().map(|s| serde_json::json!({
                "version": s.version.as_str(), "partitions": s.partitions, "directory": s.directory,
            })).collect::<Vec<_>>(),
            "partitions_held": admin.node.must_hold().len(),
        }),
        _ => serde_json::Value::Null,
    };
    json(&serde_json::json!({
        "node": raft.node.0,
        "raft_role": raft.role,
        "term": raft.term,
        "leader": raft.leader.map(|l| l.0),
        "commit_index": raft.commit_index,
        "last_log_index": raft.last_log_index,
        "epoch": raft.epoch.0,
        "stale": raft.stale,
        "quorum_contact_ms": raft.quorum_contact_ms,
        "voters": raft.voters.iter().map(|v| v.0).collect::<Vec<_>>(),
        "learners": raft.learners.iter().map(|v| v.0).collect::<Vec<_>>(),
        "models": node,
    }))
}
