//! End to end over a real cluster: `scoregrid cluster local` starts 3 node processes and a
//! router process that talk QUIC with mutual TLS; answers equal the brute-force reference;
//! `scoregrid load` activates a second version while a cursor keeps paging the first;
//! `kill -9` of one node changes nothing a client can see (RF 2: every request still answered
//! with full coverage, well within the deadline); killing a second node gives partial answers
//! that say so (or a 503 when the customer's own partition is gone); restarting a killed node
//! from its data directory, one of its partition files lost meanwhile, brings full coverage
//! back and the lost file is fetched back from its other replica.

mod common;

use common::{ChildGuard, get_json, items, ranked};
use scoregrid_wire::NodeId;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Member {
    pid: u32,
    config: String,
}

fn kill9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {pid}");
}

async fn page(addr: SocketAddr, customer: u64, container: u64) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, body) = get_json(
        addr,
        &format!("/v1/recommend?customer={customer}&container={container}&limit=1000"),
    )
    .await;
    (status, body, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_survives_losing_nodes_and_recovers_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, reference) = common::generated_model(
        dir.path(),
        &[
            "--customers",
            "200",
            "--products",
            "600",
            "--containers",
            "6",
            "--dim",
            "8",
            "--format",
            "parquet",
            "--seed",
            "11",
        ],
    );

    let work = dir.path().join("cluster");
    let env = [
        ("SCOREGRID_MODEL_SEGMENT_PRODUCTS_MAX", "32"),
        ("SCOREGRID_PLACEMENT_PARTITIONS", "64"),
        ("SCOREGRID_ROUTER_REQUEST_DEADLINE_MS", "1500"),
        ("SCOREGRID_ROUTER_BREAKER_OPEN_MS", "300"),
        ("SCOREGRID_ROUTER_REFRESH_INTERVAL_MS", "200"),
    ];
    let cluster = common::cluster_local(3, &model_dir, &work, &env);
    let lines = cluster.wait_for_lines("ready:", 120);
    let processes = common::local_processes(&lines);
    let addr = processes["router"].addr;
    let members: std::collections::HashMap<String, Member> = processes
        .iter()
        .filter(|(name, _)| name.starts_with("node-"))
        .map(|(name, p)| {
            (
                name.clone(),
                Member {
                    pid: p.pid,
                    config: p.config.clone(),
                },
            )
        })
        .collect();
    assert_eq!(members.len(), 3, "{lines:?}");

    let (&grid, _) = reference
        .pools
        .iter()
        .max_by_key(|(id, pool)| (pool.len(), **id))
        .unwrap();
    let customers: Vec<u64> = {
        let mut ids: Vec<u64> = reference.customers.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter().take(30).collect()
    };
    let expect = |customer: u64| ranked(&reference, customer, grid);

    // 1. All nodes up: the reference's answers.
    for &c in &customers {
        let (status, body, _) = page(addr, c, grid).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(items(&body), expect(c), "customer {c}");
        assert_eq!(body["coverage"]["segments"], body["coverage"]["answered"]);
    }

    // 1b. A nightly load: `scoregrid load` pushes version 2 into the running cluster. New
    // requests move to it; a cursor opened on version 1 keeps paging version 1 (retained).
    let (v2_dir, v2_reference) = common::generated_model(
        &dir.path().join("v2"),
        &[
            "--customers",
            "200",
            "--products",
            "600",
            "--containers",
            "6",
            "--dim",
            "8",
            "--format",
            "jsonl",
            "--seed",
            "12",
            "--version",
            "synthetic-2",
        ],
    );
    let c = customers[0];
    let (_, first) = get_json(
        addr,
        &format!("/v1/recommend?customer={c}&container={grid}&limit=5"),
    )
    .await;
    assert_eq!(first["model_version"], "synthetic-1");
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let router_config = std::fs::read_to_string(work.join("router.toml")).unwrap();
    let loader_config = work.join("loader.toml");
    std::fs::write(
        &loader_config,
        router_config
            .replace("router.pem", "loader.pem")
            .replace("router.key", "loader.key"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scoregrid"))
        .args([
            "--config",
            loader_config.to_str().unwrap(),
            "load",
            "--model",
            v2_dir.to_str().unwrap(),
        ])
        .envs(env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("active cluster-wide"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, ready) = get_json(addr, "/readyz").await;
        if ready["model_version"] == "synthetic-2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the router did not move to synthetic-2: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, second) = get_json(
        addr,
        &format!("/v1/recommend?customer={c}&container={grid}&limit=5&cursor={cursor}"),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        second["model_version"], "synthetic-1",
        "the cursor stays on its version"
    );
    assert_eq!(items(&second), expect(c)[5..10].to_vec());
    let (&grid2, _) = v2_reference
        .pools
        .iter()
        .max_by_key(|(id, pool)| (pool.len(), **id))
        .unwrap();
    let (_, fresh) = get_json(
        addr,
        &format!("/v1/recommend?customer={c}&container={grid2}&limit=1000"),
    )
    .await;
    assert_eq!(fresh["model_version"], "synthetic-2");
    let want = ranked(&v2_reference, c, grid2);
    assert_eq!(items(&fresh), want);
    let (grid, reference) = (grid2, v2_reference);
    let expect = |customer: u64| ranked(&reference, customer, grid);

    // 2. kill -9 one node: every request still fully answered, within its deadline.
    kill9(members["node-1"].pid);
    for round in 0..2 {
        for &c in &customers {
            let (status, body, took) = page(addr, c, grid).await;
            assert_eq!(status, 200, "round {round}, customer {c}: {body}");
            assert_eq!(
                body["coverage"]["segments"], body["coverage"]["answered"],
                "round {round}: {body}"
            );
            assert_eq!(items(&body), expect(c), "customer {c}");
            assert!(
                took < Duration::from_millis(1500),
                "customer {c} took {took:?}"
            );
        }
    }

    // 3. kill -9 a second node: partitions held only by nodes 1 and 2 are gone.
    kill9(members["node-2"].pid);
    let (mut partial, mut unavailable) = (0, 0);
    for &c in &customers {
        let (status, body, took) = page(addr, c, grid).await;
        assert!(
            took < Duration::from_millis(2500),
            "customer {c} took {took:?}"
        );
        match status {
            200 => {
                let coverage = &body["coverage"];
                if coverage["answered"] != coverage["segments"] {
                    partial += 1;
                    let reasons = coverage["degraded"].as_array().cloned().unwrap_or_default();
                    assert!(!reasons.is_empty(), "a partial answer says why: {body}");
                }
            }
            503 => {
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("could not be reached"),
                    "{body}"
                );
                unavailable += 1;
            }
            other => panic!("status {other}: {body}"),
        }
    }
    assert!(
        partial > 0,
        "some answers are partial ({unavailable} were 503)"
    );

    // 4. Lose one of node 1's partition files while it is down (a partition it shares with
    // node 3), then restart it: it serves from its data directory, fetches the lost partition
    // back from node 3, and full coverage returns (node 3 + node 1 hold every partition that
    // node 2 shared with either).
    let placement = scoregrid_raft::Placement::compute(
        &[NodeId(1), NodeId(2), NodeId(3)],
        scoregrid_shard::PartitionCount::new(64).unwrap(),
        scoregrid_raft::ReplicationFactor::new(2).unwrap(),
        256,
    )
    .unwrap();
    let shared = (0..64)
        .map(scoregrid_shard::PartitionId)
        .find(|&p| {
            placement.replicas(p).contains(&NodeId(1)) && placement.replicas(p).contains(&NodeId(3))
        })
        .expect("a partition on nodes 1 and 3");
    let lost = work.join(format!(
        "data/node-1/models/v-synthetic-2/p{:05}.part",
        shared.0
    ));
    std::fs::remove_file(&lost).unwrap();
    let restarted = ChildGuard::start(&["--config", &members["node-1"].config, "node"], &[]);
    let line = restarted.wait_for_line("listening on quic://", 60);
    assert!(
        line.contains("active model: synthetic-2"),
        "restored from disk: {line}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut complete = true;
        for &c in &customers {
            let (status, body, _) = page(addr, c, grid).await;
            let full =
                status == 200 && body["coverage"]["segments"] == body["coverage"]["answered"];
            if full {
                assert_eq!(items(&body), expect(c), "customer {c}");
            }
            complete &= full;
        }
        if complete {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "coverage did not come back after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lost.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was not fetched back from node 3",
            lost.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, cluster_view) = get_json(addr, "/v1/cluster").await;
    let routees = cluster_view["routees"].as_array().unwrap();
    assert!(
        routees
            .iter()
            .any(|r| r["node"] == 2 && r["errors"].as_u64().unwrap_or(0) > 0),
        "{cluster_view}"
    );
}
