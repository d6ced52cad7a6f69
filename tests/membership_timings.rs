//! Measurements for BENCHMARKS.md, not a check (it asserts only that each step happens):
//! on a 5-node `cluster local` with two routers,
//! - how long after a map change commits (a maintenance toggle, committed through the leader)
//!   every router serves the new map;
//! - how long after `kill -9` of the leader a new leader leads, and after that the killed node
//!   is marked down.
//!
//! Run with `cargo test --release --test membership_timings -- --ignored --nocapture`.

mod common;

use common::{ChildGuard, get_json};
use scoregrid_raft::client::{ClusterClient, Seed};
use scoregrid_raft::{MapCommand, MapResponse};
use scoregrid_wire::{ClientEndpoint, Identity, NodeId, Role};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let rank = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

fn summary(name: &str, samples: &mut [Duration]) {
    eprintln!(
        "{name}: n={} p50={:?} p99={:?} max={:?}",
        samples.len(),
        percentile(samples, 0.5),
        percentile(samples, 0.99),
        percentile(samples, 1.0)
    );
}

async fn router_epoch(router: SocketAddr) -> u64 {
    get_json(router, "/v1/cluster").await.1["epoch"]
        .as_u64()
        .unwrap_or(0)
}

async fn admin_status(admin: SocketAddr) -> Option<serde_json::Value> {
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(1), get_json(admin, "/v1/status"))
            .await
            .ok()?;
    (status == 200).then_some(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for BENCHMARKS.md"]
async fn membership_timings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (model_dir, _) = common::generated_model(
        dir.path(),
        &[
            "--customers",
            "1000",
            "--products",
            "500",
            "--containers",
            "5",
            "--dim",
            "8",
        ],
    );
    let work = dir.path().join("cluster");
    let cluster = common::cluster_local(
        5,
        &model_dir,
        &work,
        &[("SCOREGRID_PLACEMENT_PARTITIONS", "64")],
    );
    let lines = cluster.wait_for_lines("ready:", 180);
    let processes = common::local_processes(&lines);
    let mut routers = vec![processes["router"].addr];
    let mut nodes: Vec<(u64, u32, SocketAddr, String)> = processes
        .iter()
        .filter_map(|(name, p)| {
            let id: u64 = name.strip_prefix("node-")?.parse().ok()?;
            Some((id, p.pid, p.admin.expect("admin"), p.config.clone()))
        })
        .collect();
    // A second router, from the first one's configuration on another port.
    let second = ChildGuard::start(
        &[
            "--config",
            work.join("router.toml").to_str().expect("utf-8"),
            "router",
        ],
        &[("SCOREGRID_HTTP_ADDR", "127.0.0.1:0")],
    );
    let line = second.wait_for_line("listening on http://", 60);
    routers.push(
        line.rsplit("http://")
            .next()
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.trim().parse().ok())
            .expect("second router"),
    );

    let config =
        scoregrid_config::Config::load(Some(&work.join("client.toml"))).expect("client.toml");
    let identity =
        Identity::load(&config.tls.ca, &config.tls.cert, &config.tls.key).expect("identity");
    let endpoint = ClientEndpoint::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &identity,
        Default::default(),
    )
    .expect("endpoint");
    let seeds: Vec<Seed> = config
        .cluster
        .nodes
        .iter()
        .map(|m| Seed {
            id: Some(NodeId(m.id)),
            addr: m.addr,
            name: Some(m.name.clone()),
        })
        .collect();
    let client = ClusterClient::new(&endpoint, &seeds, Duration::from_secs(5));

    // Committed change -> every router serving it.
    let mut propagation = Vec::new();
    for i in 0..40 {
        let command = MapCommand::Maintenance {
            id: NodeId(5),
            on: i % 2 == 0,
        };
        let response = client
            .propose(command, Role::Operator)
            .await
            .expect("committed");
        let committed = Instant::now();
        let MapResponse::Applied { epoch } = response else {
            panic!("not applied: {response:?}");
        };
        for &router in &routers {
            while router_epoch(router).await < epoch.0 {
                assert!(
                    committed.elapsed() < Duration::from_secs(10),
                    "router {router} never saw epoch {epoch}"
                );
            }
        }
        propagation.push(committed.elapsed());
    }
    summary(
        "committed change -> every router (2) serving it",
        &mut propagation,
    );

    // Leader kill -> new leader -> old leader marked down.
    let (mut elections, mut downs) = (Vec::new(), Vec::new());
    let mut restarted: Vec<ChildGuard> = Vec::new();
    for _ in 0..5 {
        let leader = get_json(routers[0], "/v1/cluster").await.1["leader"]
            .as_u64()
            .expect("leader");
        let victim = nodes
            .iter()
            .position(|n| n.0 == leader)
            .expect("the leader's process");
        let (id, pid, _, ref node_config) = nodes[victim].clone();
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
        let killed = Instant::now();
        let witness = nodes.iter().find(|n| n.0 != id).expect("a survivor").2;
        loop {
            if let Some(s) = admin_status(witness).await
                && s["stale"] == false
                && s["leader"].as_u64().is_some_and(|l| l != id)
            {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(30), "no new leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        elections.push(killed.elapsed());
        loop {
            let view = get_json(routers[0], "/v1/cluster").await.1;
            let down = view["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["id"] == id && n["state"] == "down"));
            if down {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "never marked down"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        downs.push(killed.elapsed());
        let child = ChildGuard::start(&["--config", node_config, "node"], &[]);
        child.wait_for_line("listening on quic://", 60);
        restarted.push(child);
        let new_pid = restarted.last().map(|c| c.child.id()).expect("pid");
        nodes[victim].1 = new_pid;
        loop {
            let view = get_json(routers[0], "/v1/cluster").await.1;
            let up = view["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["id"] == id && n["state"] == "up"));
            if up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    summary("leader kill -> new leader", &mut elections);
    summary("leader kill -> marked down in the map", &mut downs);
    drop(restarted);
    drop(second);
    drop(cluster);
}
