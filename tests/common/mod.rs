//! Shared by the end-to-end tests: a deterministic test model, an in-process cluster built from
//! it, a minimal HTTP/1.1 client (the tests must not trust the server's own stack), and the
//! handling of child processes.
#![allow(dead_code)]

use scoregrid_config::Config;
use scoregrid_node::{LocalClient, Node};
use scoregrid_raft::{ClusterMap, NodeInfo, NodeState, ReplicationFactor};
use scoregrid_router::{ClusterView, RouterState};
use scoregrid_shard::reference::ReferenceModel;
use scoregrid_shard::{
    BuiltModel, ModelBuilder, ModelLayout, ModelSink, ModelVersion, PartitionCount, RowRef,
};
use scoregrid_wire::{NodeClient, NodeId};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const DIM: usize = 5;
pub const CUSTOMERS: u64 = 40;
pub const PRODUCTS: u64 = 60;

/// A model with ties everywhere (pool scores and vectors from a few values), ids at both ends
/// of the ranges, out-of-stock products and customers without categories. Containers: 1 (all
/// products, a grid of several segments), u64::MAX (a quarter of them), 7 (a single product).
pub fn feed(sink: &mut impl ModelSink, seed: u64) {
    let mut x = seed;
    let mut next = move |n: u64| {
        x = scoregrid_shard::hashing::mix64(x.wrapping_add(1));
        x % n
    };
    for c in 0..CUSTOMERS {
        let v: Vec<f32> = (0..DIM).map(|_| next(5) as f32 * 0.5 - 1.0).collect();
        let cats: Vec<(u32, f32)> = (0..next(3))
            .map(|i| (i as u32 * 2, next(4) as f32 * 0.25))
            .collect();
        sink.add_customer(customer_id(c), &v, &cats, RowRef(c))
            .unwrap();
    }
    for p in 0..PRODUCTS {
        let v: Vec<f32> = (0..DIM).map(|_| next(5) as f32 * 0.5 - 1.0).collect();
        let cat = if p % 7 == 0 { u32::MAX } else { (p % 5) as u32 };
        sink.add_product(product_id(p), cat, &v, next(10) != 0, RowRef(p))
            .unwrap();
    }
    for p in 0..PRODUCTS {
        sink.add_pool_entry(1, product_id(p), next(4) as f32 * 0.25, RowRef(p))
            .unwrap();
        if p % 4 == 0 {
            sink.add_pool_entry(u64::MAX, product_id(p), next(2) as f32, RowRef(p))
                .unwrap();
        }
    }
    sink.add_pool_entry(7, product_id(0), 0.5, RowRef(0))
        .unwrap();
}

/// The i-th customer's id (every third one near u64::MAX); indices past CUSTOMERS are unknown.
pub fn customer_id(i: u64) -> u64 {
    if i.is_multiple_of(3) { u64::MAX - i } else { i }
}

pub fn product_id(i: u64) -> u64 {
    i * 1_000_003
}

pub fn build(seed: u64, partitions: u32, segment: u32) -> (BuiltModel, ReferenceModel) {
    let mut builder = ModelBuilder::new(ModelLayout {
        version: ModelVersion::new("v1").unwrap(),
        dim: DIM,
        partitions: PartitionCount::new(partitions).unwrap(),
        segment_products_max: segment,
    });
    feed(&mut builder, seed);
    let mut reference = ReferenceModel::new(DIM);
    feed(&mut reference, seed);
    (builder.finish().unwrap(), reference)
}

/// A router over `nodes` in-process nodes holding `built` with replication `rf`; only the
/// nodes listed in `reachable` are in the router's view (the others are "down").
pub fn router(
    built: BuiltModel,
    nodes: u64,
    rf: u32,
    reachable: &[u64],
    config: Config,
) -> RouterState {
    router_with(built, nodes, rf, config, |id, client| {
        reachable
            .contains(&id.0)
            .then(|| Arc::new(client) as Arc<dyn NodeClient>)
    })
}

/// As [`router`], with `client_of` deciding how the router reaches each node (or not at all).
pub fn router_with(
    built: BuiltModel,
    nodes: u64,
    rf: u32,
    config: Config,
    client_of: impl Fn(NodeId, LocalClient) -> Option<Arc<dyn NodeClient>>,
) -> RouterState {
    let BuiltModel {
        partitions,
        directory,
    } = built;
    let count = directory.partitions;
    let infos = (1..=nodes)
        .map(|i| NodeInfo {
            id: NodeId(i),
            address: "in-process".into(),
            name: format!("node-{i}"),
            state: NodeState::Up,
            voter: false,
            admin: None,
        })
        .collect();
    let mut map =
        ClusterMap::bootstrap(infos, count, ReplicationFactor::new(rf).unwrap(), 64).unwrap();
    map.activate_outside_raft(&directory.version);
    let mut clients: Vec<Arc<dyn NodeClient>> = Vec::new();
    for i in 1..=nodes {
        let node = Arc::new(Node::new(NodeId(i)));
        let mine = map.placement.partitions_of(NodeId(i));
        let held = partitions
            .iter()
            .filter(|p| mine.contains(&p.id()))
            .cloned()
            .collect();
        node.install(Arc::new(directory.clone()), held).unwrap();
        if let Some(client) = client_of(NodeId(i), LocalClient::new(node)) {
            clients.push(client);
        }
    }
    let state = RouterState::new(config);
    let policy = state.routee_policy();
    state.set_view(ClusterView::new(map, vec![directory], clients, policy));
    state
}

/// One HTTP/1.1 exchange on a fresh connection: (status, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

pub async fn get_json(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http(addr, "GET", path, None).await;
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{path}: body is not JSON ({e}): {body}"));
    (status, json)
}

/// Serves `state` on 127.0.0.1 (a free port) in the background; returns the address.
pub async fn serve(state: RouterState) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(scoregrid_router::serve(
        Arc::new(state),
        listener,
        std::future::pending(),
    ));
    addr
}

/// A child process that is killed when the test ends, however it ends.
pub struct ChildGuard {
    pub child: std::process::Child,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildGuard {
    /// Starts the scoregrid binary with `args` and `env`, collecting its stdout lines.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_scoregrid"));
        command
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start scoregrid");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a stdout line containing `marker`; fails loudly after `seconds`.
    pub fn wait_for_line(&self, marker: &str, seconds: u64) -> String {
        self.wait_for_lines(marker, seconds)
            .pop()
            .unwrap_or_default()
    }

    /// The stdout lines up to and including the first one containing `marker`.
    pub fn wait_for_lines(&self, marker: &str, seconds: u64) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(marker);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(e) => panic!("no line with {marker:?} within {seconds} s ({e}); saw: {seen:?}"),
            }
        }
    }
}

/// Runs the scoregrid binary to completion; panics with its output if it fails.
pub fn run_scoregrid(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scoregrid"))
        .args(args)
        .output()
        .expect("run scoregrid");
    assert!(
        out.status.success(),
        "scoregrid {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes a model with `scoregrid gen` (plus `gen_args`) into `dir/model`, and loads the
/// brute-force reference from the very files the system under test will read.
pub fn generated_model(
    dir: &std::path::Path,
    gen_args: &[&str],
) -> (std::path::PathBuf, ReferenceModel) {
    let model_dir = dir.join("model");
    let mut args = vec!["gen", "--out", model_dir.to_str().expect("a UTF-8 path")];
    args.extend_from_slice(gen_args);
    run_scoregrid(&args);
    let manifest = scoregrid_loader::read_manifest(&model_dir).unwrap();
    let mut reference = ReferenceModel::new(manifest.dim);
    scoregrid_loader::load_model(&model_dir, &mut reference).unwrap();
    (model_dir, reference)
}

/// The reference's first 1,000 items (the page size the end-to-end tests ask for) as
/// (product, score).
pub fn ranked(reference: &ReferenceModel, customer: u64, container: u64) -> Vec<(u64, f32)> {
    let query = scoregrid_shard::reference::ReferenceQuery {
        customer,
        container,
        category: None,
        candidates: None,
    };
    let ranking = reference
        .rank(query, scoregrid_shard::ScoringWeights::default())
        .expect("the reference ranks");
    ranking
        .items
        .iter()
        .take(1000)
        .map(|i| (i.product, i.score))
        .collect()
}

/// The items of a `/v1/recommend` answer as (product, score).
pub fn items(body: &serde_json::Value) -> Vec<(u64, f32)> {
    body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    (
                        i["product"].as_u64().unwrap_or(0),
                        i["score"].as_f64().unwrap_or(f64::NAN) as f32,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One process of a `cluster local`, as its line describes it.
#[derive(Clone, Debug)]
pub struct LocalProcess {
    pub pid: u32,
    /// `quic://` for a node, `http://` for the router.
    pub addr: std::net::SocketAddr,
    pub admin: Option<std::net::SocketAddr>,
    pub config: String,
}

/// The processes `cluster local` printed, by name (`node-1`.., `router`).
pub fn local_processes(lines: &[String]) -> std::collections::BTreeMap<String, LocalProcess> {
    let mut processes = std::collections::BTreeMap::new();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 4 || words[1] != "pid" {
            continue;
        }
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1).copied())
        };
        let addr = words[3]
            .split("://")
            .nth(1)
            .and_then(|a| a.parse().ok())
            .expect("a process address");
        processes.insert(
            words[0].to_owned(),
            LocalProcess {
                pid: words[2].parse().expect("a pid"),
                addr,
                admin: after("admin")
                    .and_then(|a| a.strip_prefix("http://"))
                    .and_then(|a| a.parse().ok()),
                config: after("config").expect("a config path").to_owned(),
            },
        );
    }
    processes
}

/// `scoregrid cluster local --nodes N` on `model`, its working directory `work`, the router on
/// any free port, with `env` for every process it starts.
pub fn cluster_local(
    nodes: u32,
    model: &std::path::Path,
    work: &std::path::Path,
    env: &[(&str, &str)],
) -> ChildGuard {
    let nodes = nodes.to_string();
    ChildGuard::start(
        &[
            "cluster",
            "local",
            "--nodes",
            &nodes,
            "--model",
            model.to_str().expect("a UTF-8 path"),
            "--http",
            "127.0.0.1:0",
            "--dir",
            work.to_str().expect("a UTF-8 path"),
        ],
        env,
    )
}

/// The working directory of an end-to-end test: `temp`'s (deleted when the returned guard is
/// dropped), or with `E2E_KEEP_DIR=1` one that is kept afterwards (every process's log) for a
/// look.
pub fn work_root(temp: tempfile::TempDir) -> (Option<tempfile::TempDir>, std::path::PathBuf) {
    if std::env::var_os("E2E_KEEP_DIR").is_some() {
        let kept = temp.keep();
        eprintln!("working directory kept: {}", kept.display());
        (None, kept)
    } else {
        let path = temp.path().to_path_buf();
        (Some(temp), path)
    }
}

/// Polls `check` every 50 ms until it gives `Ok`, or fails with what it saw last; returns the
/// value and how long it took.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    limit: std::time::Duration,
    mut check: F,
) -> (T, std::time::Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = std::time::Instant::now();
    let mut last = String::new();
    while started.elapsed() < limit {
        match check().await {
            Ok(value) => return (value, started.elapsed()),
            Err(seen) => last = seen,
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {limit:?}; last seen: {last}");
}
