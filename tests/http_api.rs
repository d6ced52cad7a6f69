//! The HTTP API of contract section 3 over a real socket: every error path answers the
//! contract's status and JSON shape, and the success paths answer what the reference says.

mod common;

use common::{get_json, http};
use scoregrid_config::Config;
use scoregrid_router::RouterState;
use scoregrid_shard::ScoringWeights;
use scoregrid_shard::reference::{ReferenceModel, ReferenceQuery, reference_dot};
use serde_json::Value;
use std::net::SocketAddr;

async fn start() -> (SocketAddr, ReferenceModel) {
    let (built, reference) = common::build(5, 16, 4);
    let mut config = Config::default();
    config.http.request_body_bytes_max = 4096;
    let addr = common::serve(common::router(built, 3, 2, &[1, 2, 3], config)).await;
    (addr, reference)
}

fn assert_error(status: u16, body: &Value, expect_status: u16, code: &str, fragment: &str) {
    assert_eq!(status, expect_status, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(fragment),
        "message {message:?} lacks {fragment:?}"
    );
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(1),
        "only `error` at the top: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_get_400_with_the_contract_shape() {
    let (addr, _) = start().await;
    let known = common::customer_id(1);
    let cases = [
        (
            "/v1/recommend?container=1".to_string(),
            "`customer` is required",
        ),
        (
            format!("/v1/recommend?customer={known}"),
            "`container` is required",
        ),
        (
            "/v1/recommend?customer=abc&container=1".into(),
            "`customer` must be an unsigned 64-bit integer",
        ),
        ("/v1/recommend?customer=-5&container=1".into(), "got \"-5\""),
        (
            "/v1/recommend?customer=1&container=-1".into(),
            "`container` must be",
        ),
        (
            "/v1/recommend?customer=1&container=1&limit=0".into(),
            "`limit` must be in 1..=1000, got 0",
        ),
        (
            "/v1/recommend?customer=1&container=1&limit=100000".into(),
            "got 100000",
        ),
        (
            "/v1/recommend?customer=1&container=1&category=x".into(),
            "`category`",
        ),
        (
            "/v1/recommend?customer=1&container=1&candidates=0".into(),
            "`candidates`",
        ),
        (
            "/v1/recommend?customer=1&container=1&colour=red".into(),
            "unknown parameter `colour`",
        ),
    ];
    for (path, fragment) in cases {
        let (status, body) = get_json(addr, &path).await;
        assert_error(status, &body, 400, "bad_parameter", fragment);
    }
    let (status, body) =
        get_json(addr, "/v1/recommend?customer=1&container=1&cursor=garbage!").await;
    assert_error(status, &body, 400, "bad_cursor", "not a valid token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_container_is_404_and_unknown_customer_is_unpersonalized() {
    let (addr, reference) = start().await;
    let (status, body) = get_json(addr, "/v1/recommend?customer=1&container=999").await;
    assert_error(status, &body, 404, "unknown_container", "999");
    // A customer id that is not in the model: pool scores only.
    let (status, body) = get_json(
        addr,
        "/v1/recommend?customer=123456789&container=1&limit=1000",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["personalized"], false);
    let expect = reference
        .rank(
            ReferenceQuery {
                customer: 123_456_789,
                container: 1,
                category: None,
                candidates: None,
            },
            ScoringWeights::default(),
        )
        .unwrap();
    let got: Vec<(u64, f32)> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["product"].as_u64().unwrap(),
                i["score"].as_f64().unwrap() as f32,
            )
        })
        .collect();
    let want: Vec<(u64, f32)> = expect.items.iter().map(|i| (i.product, i.score)).collect();
    assert_eq!(got, want);
    assert_eq!(body["next_cursor"], Value::Null);
    assert_eq!(body["coverage"]["segments"], body["coverage"]["answered"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_only_works_for_its_own_request() {
    let (addr, _) = start().await;
    let c = common::customer_id(1);
    let (status, body) = get_json(
        addr,
        &format!("/v1/recommend?customer={c}&container=1&limit=2"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cursor = body["next_cursor"]
        .as_str()
        .expect("a grid of 60 has a second page")
        .to_string();
    let (status, body) = get_json(
        addr,
        &format!("/v1/recommend?customer={c}&container=1&limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get_json(
        addr,
        &format!("/v1/recommend?customer={c}&container=1&category=2&cursor={cursor}"),
    )
    .await;
    assert_error(status, &body, 400, "bad_cursor", "another request");
    let mut bad = cursor.clone();
    bad.replace_range(3..4, if &cursor[3..4] == "A" { "B" } else { "A" });
    let (status, body) = get_json(
        addr,
        &format!("/v1/recommend?customer={c}&container=1&limit=2&cursor={bad}"),
    )
    .await;
    assert_error(status, &body, 400, "bad_cursor", "not a valid token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_endpoint_is_the_dot_product_and_refuses_bad_bodies() {
    let (addr, reference) = start().await;
    let c = common::customer_id(2);
    let products = [common::product_id(3), 42, common::product_id(59)];
    let body = format!(
        "{{\"customer\":{c},\"products\":[{},{},{}]}}",
        products[0], products[1], products[2]
    );
    let (status, text) = http(addr, "POST", "/v1/score", Some(&body)).await;
    assert_eq!(status, 200, "{text}");
    let json: Value = serde_json::from_str(&text).unwrap();
    let customer = &reference.customers[&c];
    for (i, &p) in [products[0], products[2]].iter().enumerate() {
        assert_eq!(json["scores"][i]["product"], p);
        let expect = reference_dot(&customer.vector, &reference.products[&p].vector);
        assert_eq!(json["scores"][i]["score"].as_f64().unwrap() as f32, expect);
    }
    assert_eq!(json["missing"], serde_json::json!([42]));

    let cases = [
        ("{\"customer\":1}", 400, "bad_body", "products"),
        ("not json", 400, "bad_body", "body must be"),
        ("{\"customer\":-1,\"products\":[]}", 400, "bad_body", ""),
        (
            "{\"customer\":1,\"products\":[],\"extra\":1}",
            400,
            "bad_body",
            "extra",
        ),
    ];
    for (body, status_expect, code, fragment) in cases {
        let (status, text) = http(addr, "POST", "/v1/score", Some(body)).await;
        assert_error(
            status,
            &serde_json::from_str(&text).unwrap(),
            status_expect,
            code,
            fragment,
        );
    }
    let (status, text) = http(
        addr,
        "POST",
        "/v1/score",
        Some("{\"customer\":123456789,\"products\":[0]}"),
    )
    .await;
    assert_error(
        status,
        &serde_json::from_str(&text).unwrap(),
        404,
        "unknown_customer",
        "123456789",
    );
    let big = format!(
        "{{\"customer\":1,\"products\":[{}]}}",
        vec!["1"; 3000].join(",")
    );
    let (status, text) = http(addr, "POST", "/v1/score", Some(&big)).await;
    assert_error(
        status,
        &serde_json::from_str(&text).unwrap(),
        413,
        "payload_too_large",
        "4096",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn categories_endpoint_ranks_by_weight() {
    let (addr, reference) = start().await;
    for i in 0..common::CUSTOMERS {
        let c = common::customer_id(i);
        let (status, body) = get_json(addr, &format!("/v1/customers/{c}/categories?k=2")).await;
        assert_eq!(status, 200, "{body}");
        let got: Vec<(u64, f64)> = body["categories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["category"].as_u64().unwrap(),
                    e["weight"].as_f64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(u64, f64)> = reference
            .top_categories(c, 2)
            .unwrap()
            .into_iter()
            .map(|(g, w)| (u64::from(g), f64::from(w)))
            .collect();
        assert_eq!(got, want, "customer {c}");
    }
    let (status, body) = get_json(addr, "/v1/customers/123456789/categories").await;
    assert_error(status, &body, 404, "unknown_customer", "123456789");
    let (status, body) = get_json(addr, "/v1/customers/abc/categories").await;
    assert_error(status, &body, 400, "bad_parameter", "`id`");
    let (status, body) = get_json(addr, "/v1/customers/1/categories?k=0").await;
    assert_error(status, &body, 400, "bad_parameter", "`k`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_endpoints_and_unknown_routes() {
    let (addr, _) = start().await;
    let (status, body) = get_json(addr, "/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = get_json(addr, "/readyz").await;
    assert_eq!((status, body["model_version"].as_str()), (200, Some("v1")));
    let (status, body) = get_json(addr, "/v1/cluster").await;
    assert_eq!(status, 200);
    assert_eq!(body["nodes"].as_array().map(Vec::len), Some(3));
    for key in [
        "membership",
        "leader",
        "term",
        "epoch",
        "stale",
        "active_version",
        "versions",
    ] {
        assert!(body.get(key).is_some(), "/v1/cluster has {key}: {body}");
    }
    assert_eq!(body["active_version"], "v1");
    assert_eq!(body["placement"]["partitions"], 16);
    assert_eq!(
        body["placement"]["replicas"].as_array().map(Vec::len),
        Some(16)
    );
    assert_eq!(body["versions"][0]["state"], "active");
    let (status, body) = get_json(addr, "/nope").await;
    assert_error(status, &body, 404, "not_found", "no such route");
    let (status, text) = http(addr, "POST", "/v1/recommend", Some("")).await;
    assert_error(
        status,
        &serde_json::from_str(&text).unwrap(),
        405,
        "method_not_allowed",
        "",
    );
    // Something has been served by now: the counters and histograms show it.
    let _ = get_json(addr, "/v1/recommend?customer=1&container=1").await;
    let (status, text) = http(addr, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("scoregrid_http_requests_total{route=\"/v1/recommend\",status=\"200\"}"),
        "{text}"
    );
    assert!(
        text.contains("scoregrid_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("scoregrid_recommend_stage_seconds_bucket{stage=\"score\""),
        "{text}"
    );
    assert!(
        text.contains("scoregrid_node_products_scored_total{node=\"n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_model_the_api_answers_503() {
    let addr = common::serve(RouterState::new(Config::default())).await;
    let (status, body) = get_json(addr, "/readyz").await;
    assert_error(status, &body, 503, "not_ready", "cluster map");
    let (status, body) = get_json(addr, "/v1/recommend?customer=1&container=1").await;
    assert_error(status, &body, 503, "unavailable", "no cluster map");
    let (status, _) = get_json(addr, "/healthz").await;
    assert_eq!(status, 200);
}
