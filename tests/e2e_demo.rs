//! End to end: `scoregrid gen` writes a model, `scoregrid demo` serves it as a real process,
//! and a client pages whole grids through `next_cursor` over HTTP. Every page is compared with
//! the brute-force reference computed from the same files: the union is the full ranked list,
//! exactly once, with the same scores.

mod common;

use common::{ChildGuard, get_json};
use scoregrid_shard::ScoringWeights;
use scoregrid_shard::reference::{ReferenceModel, ReferenceQuery};
use std::net::SocketAddr;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_whole_grids_page_by_page_like_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, reference) = common::generated_model(
        dir.path(),
        &[
            "--customers",
            "300",
            "--products",
            "700",
            "--containers",
            "8",
            "--dim",
            "8",
            "--format",
            "jsonl",
            "--seed",
            "7",
        ],
    );
    let model = model_dir.to_str().unwrap();

    // Small segments and partitions so that a grid spreads over several segments and nodes.
    let demo = ChildGuard::start(
        &[
            "demo",
            "--model",
            model,
            "--http",
            "127.0.0.1:0",
            "--nodes",
            "3",
        ],
        &[
            ("SCOREGRID_MODEL_SEGMENT_PRODUCTS_MAX", "64"),
            ("SCOREGRID_PLACEMENT_PARTITIONS", "64"),
        ],
    );
    let line = demo.wait_for_line("listening on http://", 120);
    let addr: SocketAddr = line
        .rsplit("http://")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (status, ready) = get_json(addr, "/readyz").await;
    assert_eq!(status, 200, "{ready}");

    let (&grid, pool) = reference
        .pools
        .iter()
        .max_by_key(|(id, pool)| (pool.len(), **id))
        .unwrap();
    assert!(pool.len() > 64 * 2, "the grid spans several segments");
    let mut customers: Vec<u64> = reference.customers.keys().copied().take(3).collect();
    customers.push(987_654_321_012); // not in the model
    for customer in customers {
        for (category, candidates) in [
            (None, None),
            (Some(pool_category(&reference, grid)), None),
            (None, Some(150)),
        ] {
            let expect = reference
                .rank(
                    ReferenceQuery {
                        customer,
                        container: grid,
                        category,
                        candidates,
                    },
                    ScoringWeights::default(),
                )
                .unwrap();
            let mut got: Vec<(u64, f32)> = Vec::new();
            let mut cursor: Option<String> = None;
            let mut pages = 0;
            loop {
                let mut path =
                    format!("/v1/recommend?customer={customer}&container={grid}&limit=17");
                if let Some(c) = category {
                    path.push_str(&format!("&category={c}"));
                }
                if let Some(n) = candidates {
                    path.push_str(&format!("&candidates={n}"));
                }
                if let Some(c) = &cursor {
                    path.push_str(&format!("&cursor={c}"));
                }
                let (status, body) = get_json(addr, &path).await;
                assert_eq!(status, 200, "{path}: {body}");
                assert_eq!(body["personalized"], expect.personalized);
                assert_eq!(
                    body["coverage"]["segments"], body["coverage"]["answered"],
                    "{body}"
                );
                for item in body["items"].as_array().unwrap() {
                    got.push((
                        item["product"].as_u64().unwrap(),
                        item["score"].as_f64().unwrap() as f32,
                    ));
                }
                pages += 1;
                assert!(pages <= 1000);
                match body["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break,
                }
            }
            let want: Vec<(u64, f32)> = expect.items.iter().map(|i| (i.product, i.score)).collect();
            assert_eq!(
                got.len(),
                want.len(),
                "customer {customer} category {category:?} candidates {candidates:?}"
            );
            assert_eq!(
                got, want,
                "customer {customer} category {category:?} candidates {candidates:?}"
            );
        }
    }

    let (status, cluster) = get_json(addr, "/v1/cluster").await;
    assert_eq!(status, 200);
    assert_eq!(cluster["nodes"].as_array().map(Vec::len), Some(3));
    assert_eq!(cluster["membership"], "static", "the demo runs no Raft");
    assert_eq!(cluster["placement"]["replication_factor"], 2);
}

/// The most common category of the grid's in-stock products.
fn pool_category(reference: &ReferenceModel, container: u64) -> u32 {
    let mut counts = std::collections::HashMap::new();
    for (p, _) in &reference.pools[&container] {
        let product = &reference.products[p];
        if product.in_stock {
            *counts.entry(product.category).or_insert(0) += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(c, n)| (n, std::cmp::Reverse(c)))
        .map(|(c, _)| c)
        .unwrap()
}
