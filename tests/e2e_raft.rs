//! Membership on Raft with real processes: `scoregrid cluster local --nodes 5` (5 voters, each
//! node its own process on its own loopback address, a router process).
//!
//! 1. `kill -9` of the leader: a new leader is elected, the killed node is marked down in the
//!    map, and every answer through the router stays complete and equal to the reference.
//! 2. The killed node restarted from its data directory is marked up again.
//! 3. A 2|3 split with the leader on the 2-side, made with nftables rules that drop every packet
//!    between the two sides' addresses (the nodes' traffic leaves from their own address): the
//!    2-side cannot change the map nor flip a model (exit code 3, "no quorum") and says it is
//!    stale; the 3-side
//!    elects a leader and changes the map; reads through the router stay exact.
//! 4. Healing converges: every node reports the same leader and epoch, none stale.
//! 5. Roles: a router's certificate cannot change membership, a loader's cannot remove a node.
//! 6. A node whose data directory was wiped rejoins and stages the active version from its peers.
//! 7. A new node joins through any node (state joining, holding nothing) and is removed.
//!
//! The split needs `nft` and root: without them this test fails and says why (never a silent
//! skip); `.ci/run` installs nftables.

mod common;

use common::{ChildGuard, get_json, items, ranked, wait_until};
use scoregrid_shard::reference::ReferenceModel;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
struct Member {
    pid: u32,
    quic: SocketAddr,
    admin: SocketAddr,
    config: String,
}

fn kill9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -9 {pid}");
}

/// Every customer's whole grid through the router equals the reference, fully covered.
async fn reads_are_exact(
    router: SocketAddr,
    customers: &[u64],
    grid: u64,
    reference: &ReferenceModel,
    when: &str,
) {
    for &c in customers {
        let (status, body) = get_json(
            router,
            &format!("/v1/recommend?customer={c}&container={grid}&limit=1000"),
        )
        .await;
        assert_eq!(status, 200, "{when}: customer {c}: {body}");
        assert_eq!(
            body["coverage"]["segments"], body["coverage"]["answered"],
            "{when}: customer {c}: {body}"
        );
        assert_eq!(
            items(&body),
            ranked(reference, c, grid),
            "{when}: customer {c}"
        );
    }
}

async fn cluster_view(router: SocketAddr) -> Value {
    get_json(router, "/v1/cluster").await.1
}

fn state_of(view: &Value, id: u64) -> String {
    view["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == id))
        .and_then(|n| n["state"].as_str())
        .unwrap_or("?")
        .to_owned()
}

/// Runs a cluster command with the operator configuration; returns (exit code, stdout, stderr).
async fn operate(client: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config".to_owned(), client.to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_scoregrid"))
            .args(&all)
            .output()
            .expect("run scoregrid");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("command task")
}

/// A node's own view from its admin listener.
async fn node_status(admin: SocketAddr) -> Option<Value> {
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(2), get_json(admin, "/v1/status"))
            .await
            .ok()?;
    (status == 200).then_some(body)
}

/// nftables rules dropping every packet between two sets of addresses, removed on drop.
struct Split {
    table: String,
}

impl Split {
    fn nft(args: &[&str]) -> Result<(), String> {
        let out = std::process::Command::new("nft")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run nft (install nftables; .ci/run does): {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft {args:?} failed (root is needed): {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn new(left: &[std::net::IpAddr], right: &[std::net::IpAddr]) -> Self {
        let table = format!("scoregrid_test_{}", std::process::id());
        let set = |ips: &[std::net::IpAddr]| {
            format!(
                "{{ {} }}",
                ips.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let (l, r) = (set(left), set(right));
        let steps: Vec<Vec<String>> = vec![
            vec!["add".into(), "table".into(), "inet".into(), table.clone()],
            vec![
                "add".into(),
                "chain".into(),
                "inet".into(),
                table.clone(),
                "input".into(),
                "{ type filter hook input priority -10; policy accept; }".into(),
            ],
            format!("add rule inet {table} input ip saddr {l} ip daddr {r} drop")
                .split(' ')
                .map(str::to_owned)
                .collect(),
            format!("add rule inet {table} input ip saddr {r} ip daddr {l} drop")
                .split(' ')
                .map(str::to_owned)
                .collect(),
        ];
        let split = Self { table };
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if let Err(reason) = Self::nft(&args) {
                panic!("the 2|3 split needs nftables and root, and could not be made: {reason}");
            }
        }
        split
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        let _ = Self::nft(&["delete", "table", "inet", &self.table]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_survive_leader_loss_and_a_split_brain() {
    // E2E_KEEP_DIR=1 keeps the working directory (every process's log) for a look.
    // E2E_KEEP_DIR=1 keeps the working directory (every process's log) for a look.
    let (_temp, root) = common::work_root(tempfile::tempdir().expect("tempdir"));
    let (model_dir, reference) = common::generated_model(
        &root,
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
            "21",
        ],
    );
    let work = root.join("cluster");
    let env = [
        ("SCOREGRID_MODEL_SEGMENT_PRODUCTS_MAX", "32"),
        ("SCOREGRID_PLACEMENT_PARTITIONS", "64"),
        ("SCOREGRID_ROUTER_REQUEST_DEADLINE_MS", "1500"),
        ("SCOREGRID_ROUTER_BREAKER_OPEN_MS", "300"),
        ("SCOREGRID_RAFT_DOWN_AFTER_MS", "1500"),
        ("SCOREGRID_RAFT_UP_AFTER_MS", "1000"),
        ("SCOREGRID_RAFT_STALE_AFTER_MS", "1500"),
        ("SCOREGRID_RAFT_CLIENT_TIMEOUT_MS", "2000"),
    ];
    let cluster = common::cluster_local(5, &model_dir, &work, &env);
    let lines = cluster.wait_for_lines("ready:", 180);
    let processes = common::local_processes(&lines);
    let router: Option<SocketAddr> = processes.get("router").map(|p| p.addr);
    let members: BTreeMap<u64, Member> = processes
        .iter()
        .filter_map(|(name, p)| {
            let id: u64 = name.strip_prefix("node-")?.parse().ok()?;
            Some((
                id,
                Member {
                    pid: p.pid,
                    quic: p.addr,
                    admin: p.admin.expect("a node's admin address"),
                    config: p.config.clone(),
                },
            ))
        })
        .collect();
    let router = router.expect("the router's address");
    assert_eq!(members.len(), 5, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("5 Raft voters")),
        "5 nodes give 5 voters: {lines:?}"
    );
    let client = work.join("client.toml").to_str().expect("utf-8").to_owned();
    assert!(
        std::path::Path::new(&client).exists(),
        "cluster local leaves client.toml"
    );

    let (&grid, _) = reference
        .pools
        .iter()
        .max_by_key(|(id, pool)| (pool.len(), **id))
        .expect("a pool");
    let customers: Vec<u64> = {
        let mut ids: Vec<u64> = reference.customers.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter().take(12).collect()
    };
    reads_are_exact(router, &customers, grid, &reference, "all up").await;
    let view = cluster_view(router).await;
    assert_eq!(view["membership"], "raft", "{view}");
    assert_eq!(view["stale"], false, "{view}");
    let leader = view["leader"].as_u64().expect("a leader");

    // 1. kill -9 the leader.
    kill9(members[&leader].pid);
    let survivors: Vec<Member> = members
        .iter()
        .filter(|(id, _)| **id != leader)
        .map(|(_, m)| m.clone())
        .collect();
    let (new_leader, new_leader_after) =
        wait_until("a new leader", Duration::from_secs(30), || async {
            reads_are_exact(router, &customers[..2], grid, &reference, "leader killed").await;
            match node_status(survivors[0].admin).await {
                Some(s)
                    if s["stale"] == false && s["leader"].as_u64().is_some_and(|l| l != leader) =>
                {
                    Ok(s["leader"].as_u64().unwrap_or(0))
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    let (_, down_after) = wait_until(
        "the killed leader marked down",
        Duration::from_secs(30),
        || async {
            reads_are_exact(router, &customers[..2], grid, &reference, "leader killed").await;
            let view = cluster_view(router).await;
            match state_of(&view, leader).as_str() {
                "down" => Ok(()),
                other => Err(format!(
                    "node {leader} is {other}; leader {}",
                    view["leader"]
                )),
            }
        },
    )
    .await;
    eprintln!(
        "leader n{leader} killed: n{new_leader} leads after {new_leader_after:?}, n{leader} marked down {down_after:?} later"
    );
    reads_are_exact(router, &customers, grid, &reference, "old leader down").await;

    // 2. Restart it from its data directory: it is marked up again.
    let killed = leader;
    let restarted = ChildGuard::start(&["--config", &members[&leader].config, "node"], &[]);
    restarted.wait_for_line("listening on quic://", 60);
    let (_, up_after) = wait_until(
        "the restarted node marked up",
        Duration::from_secs(30),
        || async {
            let view = cluster_view(router).await;
            match state_of(&view, leader).as_str() {
                "up" => Ok(()),
                other => Err(format!("node {leader} is {other}")),
            }
        },
    )
    .await;
    eprintln!("node n{leader} restarted: marked up after {up_after:?}");
    // And it gets traffic again (its circuit, opened while it was gone, closes on a probe).
    let calls_of = |view: &Value, id: u64| {
        view["routees"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["node"] == id))
            .and_then(|r| r["calls"].as_u64())
            .unwrap_or(0)
    };
    let before = calls_of(&cluster_view(router).await, leader);
    wait_until(
        "the restarted node gets traffic",
        Duration::from_secs(20),
        || async {
            reads_are_exact(router, &customers, grid, &reference, "after the restart").await;
            let view = cluster_view(router).await;
            let (calls, circuit) = (calls_of(&view, leader), view["routees"].to_string());
            if calls > before + 5 {
                Ok(())
            } else {
                Err(format!("calls {before} -> {calls}: {circuit}"))
            }
        },
    )
    .await;

    // 3. A 2|3 split with the current leader on the 2-side.
    let leader = cluster_view(router).await["leader"]
        .as_u64()
        .expect("a leader");
    let partner = *members
        .keys()
        .find(|&&id| id != leader)
        .expect("another node");
    let small: Vec<u64> = vec![leader, partner];
    let large: Vec<u64> = members
        .keys()
        .copied()
        .filter(|id| !small.contains(id))
        .collect();
    let ips = |ids: &[u64]| {
        ids.iter()
            .map(|id| members[id].quic.ip())
            .collect::<Vec<_>>()
    };
    let split = Split::new(&ips(&small), &ips(&large));
    let old_leader = members[&leader].clone();
    let (_, stale_after) = wait_until(
        "the 2-side says it is stale",
        Duration::from_secs(15),
        || async {
            let (code, out, err) = operate(
                &client,
                &["cluster", "status", "--node", &old_leader.quic.to_string()],
            )
            .await;
            if code == 3 && err.contains("no quorum") && out.contains("NO CONTACT WITH A QUORUM") {
                Ok(())
            } else {
                Err(format!("exit {code}: {out} {err}"))
            }
        },
    )
    .await;
    eprintln!("2|3 split: the old leader n{leader} says it is stale after {stale_after:?}");
    let started = Instant::now();
    let (code, out, err) = operate(
        &client,
        &[
            "cluster",
            "maintenance",
            &partner.to_string(),
            "on",
            "--cluster",
            &old_leader.quic.to_string(),
        ],
    )
    .await;
    assert_eq!(
        code, 3,
        "a change through the minority fails with exit 3: {out} {err}"
    );
    assert!(err.contains("no quorum"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "it fails within the client timeout: {:?}",
        started.elapsed()
    );
    // A model flip through the minority is refused the same way, and changes nothing.
    let (code, out, err) = operate(
        &client,
        &[
            "model",
            "activate",
            "synthetic-1",
            "--cluster",
            &old_leader.quic.to_string(),
        ],
    )
    .await;
    assert_eq!(
        code, 3,
        "a flip through the minority fails with exit 3: {out} {err}"
    );
    assert!(err.contains("no quorum"), "{err}");
    let majority = members[&large[0]].clone();
    let (_, majority_leader_after) = wait_until(
        "the 3-side elects a leader",
        Duration::from_secs(20),
        || async {
            match node_status(majority.admin).await {
                Some(s)
                    if s["stale"] == false
                        && s["leader"].as_u64().is_some_and(|l| large.contains(&l)) =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    eprintln!("2|3 split: the 3-side has a leader after {majority_leader_after:?}");
    let target = large[1];
    let (code, out, err) = operate(
        &client,
        &[
            "cluster",
            "maintenance",
            &target.to_string(),
            "on",
            "--cluster",
            &majority.quic.to_string(),
        ],
    )
    .await;
    assert_eq!(code, 0, "the majority can change the map: {out} {err}");
    reads_are_exact(router, &customers, grid, &reference, "during the split").await;
    let (code, out, _) = operate(
        &client,
        &[
            "cluster",
            "status",
            "--node",
            &old_leader.quic.to_string(),
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 3, "{out}");
    let minority_view: Value = serde_json::from_str(out.trim()).expect("status --json is JSON");
    assert_eq!(minority_view["stale"], true, "{minority_view}");
    assert_ne!(
        state_of(&minority_view, target),
        "maintenance",
        "the minority never sees what it was cut off from: {minority_view}"
    );

    // 4. Heal: one leader, one map, everywhere.
    drop(split);
    let (epoch, converged_after) = wait_until(
        "every node agrees after the heal",
        Duration::from_secs(30),
        || async {
            let mut seen = Vec::new();
            for m in members.values() {
                seen.push(node_status(m.admin).await);
            }
            let agree = seen.iter().all(|s| {
                s.as_ref().is_some_and(|s| {
                    s["stale"] == false
                        && s["leader"]
                            == seen[0]
                                .as_ref()
                                .map_or(Value::Null, |f| f["leader"].clone())
                        && s["epoch"]
                            == seen[0].as_ref().map_or(Value::Null, |f| f["epoch"].clone())
                })
            });
            if agree {
                Ok(seen[0]
                    .as_ref()
                    .map_or(0, |s| s["epoch"].as_u64().unwrap_or(0)))
            } else {
                Err(format!(
                    "{:?}",
                    seen.iter()
                        .map(|s| s.as_ref().map(|s| (
                            s["node"].clone(),
                            s["leader"].clone(),
                            s["epoch"].clone(),
                            s["stale"].clone()
                        )))
                        .collect::<Vec<_>>()
                ))
            }
        },
    )
    .await;
    eprintln!("healed: every node on one leader and epoch {epoch} after {converged_after:?}");
    let view = cluster_view(router).await;
    assert_eq!(state_of(&view, target), "maintenance", "{view}");
    let (code, out, err) = operate(
        &client,
        &["cluster", "maintenance", &target.to_string(), "off"],
    )
    .await;
    assert_eq!(code, 0, "{out} {err}");
    reads_are_exact(router, &customers, grid, &reference, "after the heal").await;

    // 5. Roles from certificates: a router's certificate cannot change membership, a loader's
    // cannot remove a node.
    let router_config = work.join("router.toml").to_str().expect("utf-8").to_owned();
    let (code, _, err) = operate(
        &router_config,
        &["cluster", "maintenance", &target.to_string(), "on"],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not allowed") && err.contains("operator"),
        "{err}"
    );
    let loader_config = config_with(&work.join("router.toml"), |c| {
        c.tls.cert = work.join("certs/loader.pem");
        c.tls.key = work.join("certs/loader.key");
    });
    let loader_path = work.join("loader.toml");
    std::fs::write(&loader_path, loader_config).expect("write loader.toml");
    let (code, _, err) = operate(
        loader_path.to_str().expect("utf-8"),
        &["cluster", "remove", &target.to_string()],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not allowed"), "{err}");

    // 6. A node whose data directory was wiped rejoins: it follows the map again and stages the
    // active version from its peers.
    let leader_now = cluster_view(router).await["leader"]
        .as_u64()
        .expect("a leader");
    // Not the leader, and not the node restarted above (its first process is gone).
    let wiped = *members
        .keys()
        .find(|&&id| id != leader_now && id != killed)
        .expect("a follower");
    let wiped_member = members[&wiped].clone();
    kill9(wiped_member.pid);
    let data_dir = work.join("data").join(format!("node-{wiped}"));
    std::fs::remove_dir_all(&data_dir).expect("wipe the data directory");
    let rejoined = ChildGuard::start(&["--config", &wiped_member.config, "node"], &[]);
    rejoined.wait_for_line("listening on quic://", 60);
    let (_, rejoined_after) = wait_until(
        "the wiped node serves the active version again",
        Duration::from_secs(60),
        || async {
            match node_status(wiped_member.admin).await {
                Some(s)
                    if s["stale"] == false
                        && s["models"]["active"] == "synthetic-1"
                        && s["epoch"].as_u64() >= Some(epoch) =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    eprintln!(
        "node n{wiped} wiped and restarted: serving the active version after {rejoined_after:?}"
    );
    reads_are_exact(router, &customers, grid, &reference, "after the rejoin").await;

    // 7. A new node joins through any node (state joining, holding nothing), then is removed.
    let certs = work.join("certs");
    common::run_scoregrid(&[
        "certs",
        "issue",
        "--dir",
        certs.to_str().expect("utf-8"),
        "--name",
        "node-6",
        "--san",
        "127.0.0.7",
    ]);
    let quic6 = std::net::UdpSocket::bind("127.0.0.7:0")
        .expect("a port on 127.0.0.7")
        .local_addr()
        .expect("addr");
    let joiner = config_with(std::path::Path::new(&members[&1].config), |c| {
        c.node.id = 6;
        c.node.data_dir = work.join("data/node-6");
        c.node.admin_addr = String::new();
        c.tls.cert = certs.join("node-6.pem");
        c.tls.key = certs.join("node-6.key");
        c.cluster.nodes.push(scoregrid_config::MemberConfig {
            id: 6,
            addr: quic6,
            name: "node-6".into(),
            admin: None,
        });
    });
    let joiner_path = work.join("node-6.toml");
    std::fs::write(&joiner_path, joiner).expect("write node-6.toml");
    let via = members[&1].quic.to_string();
    let joined = ChildGuard::start(
        &[
            "--config",
            joiner_path.to_str().expect("utf-8"),
            "node",
            "--join",
            &via,
        ],
        &[],
    );
    joined.wait_for_line("listening on quic://", 60);
    wait_until("node 6 joins", Duration::from_secs(30), || async {
        let view = cluster_view(router).await;
        let node6 = view["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["id"] == 6).cloned());
        match node6 {
            Some(n) if n["state"] == "joining" && n["voter"] == false && n["partitions"] == 0 => {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (code, out, err) = operate(&client, &["cluster", "remove", "6"]).await;
    assert_eq!(code, 0, "{out} {err}");
    wait_until("node 6 leaves the map", Duration::from_secs(30), || async {
        let view = cluster_view(router).await;
        if view["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().all(|n| n["id"] != 6))
        {
            Ok(())
        } else {
            Err(view["nodes"].to_string())
        }
    })
    .await;
    drop(joined);
    drop(rejoined);
    drop(restarted);
    drop(cluster);
}

/// The configuration in `path`, changed by `change`, as TOML.
fn config_with(
    path: &std::path::Path,
    change: impl FnOnce(&mut scoregrid_config::Config),
) -> String {
    let text = std::fs::read_to_string(path).expect("read a configuration");
    let mut config = scoregrid_config::Config::from_toml_str(
        &text,
        &path.display().to_string(),
        std::iter::empty(),
    )
    .expect("a valid configuration");
    change(&mut config);
    config.to_toml()
}
