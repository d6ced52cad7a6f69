//! `scoregrid demo`: a whole cluster in one process. A model (a directory, or a synthetic one)
//! is built into partitions; each of N nodes receives its own copy of the partitions the
//! placement gives it (RF copies in all, as separate machines would hold them) and listens on
//! QUIC on loopback; the router reaches them over QUIC with mutual TLS (a CA made for the
//! demo, in memory), exactly as in a cluster, and serves the HTTP API until Ctrl-C or SIGTERM.

use crate::commands::{Shutdown, print_line};
use crate::serve;
use anyhow::{Context, Result};
use scoregrid_config::Config;
use scoregrid_config::MemberConfig;
use scoregrid_loader::synth::{self, SynthSpec};
use scoregrid_node::{LocalClient, Node, NodeService};
use scoregrid_raft::Placement;
use scoregrid_shard::{
    BuiltModel, Directory, ModelBuilder, ModelLayout, ModelVersion, Partition, PartitionCount,
};
use scoregrid_wire::{ClusterCa, NodeClient, NodeId, Service};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

pub async fn run(config: Config, model: Option<PathBuf>, in_process: bool) -> Result<()> {
    // First: metric handles created before the recorder exists would record into nothing.
    if scoregrid_router::telemetry::prometheus().is_none() {
        tracing::warn!("no metrics recorder: /metrics will answer 503");
    }
    let partitions = PartitionCount::new(config.placement.partitions)
        .context("placement.partitions out of range")?;
    let started = Instant::now();
    let build_config = config.clone();
    let source = model.clone();
    let built = tokio::task::spawn_blocking(move || build(&build_config, partitions, source))
        .await
        .context("model build task failed")??;
    let version = built.directory.version.clone();
    let dim = built.directory.dim as usize;
    let customers: usize = built.partitions.iter().map(|p| p.customers().len()).sum();
    let example = example_request(&built);
    tracing::info!(%version, customers, containers = built.directory.containers.len(),
        seconds = started.elapsed().as_secs_f64(), "model built");

    let node_count = config.demo.nodes;
    let shutdown = Shutdown::on_signals();
    // The demo's own CA, in memory: nodes and router authenticate each other as in a cluster.
    let ca = ClusterCa::generate("scoregrid-demo")?;
    let router_identity = ca.issue("router", &[])?;
    let mut members = Vec::new();
    let mut nodes = Vec::new();
    let mut servers = Vec::new();
    let transport = serve::transport(&config)?;
    for i in 1..=u64::from(node_count) {
        let name = format!("node-{i}");
        let identity = ca.issue(&name, &["127.0.0.1".to_string()])?;
        let node = Arc::new(Node::new(NodeId(i)));
        let server = serve::bind_node(
            &node,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &identity,
            transport.clone(),
        )?;
        members.push(MemberConfig {
            id: i,
            addr: server.local_addr(),
            name,
            admin: None,
        });
        nodes.push(node);
        servers.push(server);
    }
    let mut config = config;
    config.cluster.nodes = members;
    let map = serve::static_map(&config)?;
    let rf = map.placement.replication_factor();
    let BuiltModel {
        partitions: built_partitions,
        directory,
    } = built;
    let directory = Arc::new(directory);
    let vector_bytes = distribute(built_partitions, &map.placement, &nodes, &directory)?;
    let clients: Vec<Arc<dyn NodeClient>> = if in_process {
        nodes
            .iter()
            .map(|n| Arc::new(LocalClient::new(n.clone())) as Arc<dyn NodeClient>)
            .collect()
    } else {
        for (node, server) in nodes.iter().zip(servers) {
            let service = NodeService::new(node.clone(), server.clock().clone(), None);
            tokio::spawn(server.serve(Arc::new(service) as Arc<dyn Service>, shutdown.wait()));
        }
        serve::clients(&config.cluster.nodes, &router_identity, transport)?
    };
    let reached = if in_process {
        "called in process"
    } else {
        "reached over QUIC with mutual TLS"
    };
    // One process, no Raft: the demo's map is static, with its one version active.
    let mut map = map;
    map.activate_outside_raft(&version);
    let state = Arc::new(scoregrid_router::RouterState::new(config.clone()));
    let policy = state.routee_policy();
    state.set_view(scoregrid_router::ClusterView::new(
        map,
        vec![Directory::clone(&directory)],
        clients,
        policy,
    ));

    let listener = tokio::net::TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.addr))?;
    let addr = listener.local_addr()?;
    let resident = resident_bytes();
    metrics::gauge!("scoregrid_process_resident_bytes").set(resident as f64);
    metrics::gauge!("scoregrid_demo_vector_bytes").set(vector_bytes as f64);
    let mut banner = format!(
        "scoregrid demo: model {version} ({customers} customers, dim {dim}) on {node_count} nodes in this process, \
         {reached}, RF {rf}, {} partitions\n",
        partitions.get()
    );
    banner += &format!(
        "  vectors held: {:.1} MiB (RF included); resident memory: {:.1} MiB ({:.2}x)\n",
        mib(vector_bytes),
        mib(resident),
        resident as f64 / vector_bytes.max(1) as f64
    );
    banner += &format!(
        "  ready in {:.1} s; listening on http://{addr}\n",
        started.elapsed().as_secs_f64()
    );
    if let Some((customer, container)) = example {
        banner += &format!(
            "try:\n  curl 'http://{addr}/v1/recommend?customer={customer}&container={container}&limit=5'\n"
        );
        banner += &format!("  curl 'http://{addr}/v1/customers/{customer}/categories?k=3'\n");
    }
    banner += &format!("  curl 'http://{addr}/v1/cluster'\n  curl 'http://{addr}/metrics'");
    if let Err(error) = print_line(&banner) {
        // Serving matters more than the banner: a closed stdout is only worth a log line.
        tracing::warn!(%error, "cannot print the banner");
    }
    scoregrid_router::serve(state, listener, shutdown.wait()).await?;
    Ok(())
}

fn build(
    config: &Config,
    partitions: PartitionCount,
    model: Option<PathBuf>,
) -> Result<BuiltModel> {
    let segment_products_max = config.model.segment_products_max;
    match model {
        Some(dir) => {
            let (_, built) = scoregrid_loader::build_model(&dir, partitions, segment_products_max)
                .with_context(|| format!("cannot load the model in {}", dir.display()))?;
            Ok(built)
        }
        None => {
            let d = &config.demo;
            let spec = SynthSpec {
                customers: d.customers,
                products: d.products,
                containers: d.containers,
                dim: d.dim as usize,
                categories: 200,
                pool_products: None,
                seed: d.seed,
                version: "synthetic-demo".into(),
            };
            let mut builder = ModelBuilder::new(ModelLayout {
                version: ModelVersion::new(&spec.version).map_err(anyhow::Error::msg)?,
                dim: spec.dim,
                partitions,
                segment_products_max,
            });
            synth::generate_into(&spec, &mut builder)
                .context("cannot generate the synthetic model")?;
            Ok(builder.finish()?)
        }
    }
}

/// Hands every partition to each of its replicas: a copy for all but the last, which takes the
/// original (no spare copy is ever held). Returns the vector bytes now held, RF included.
fn distribute(
    partitions: Vec<Partition>,
    placement: &Placement,
    nodes: &[Arc<Node>],
    directory: &Arc<Directory>,
) -> Result<usize> {
    let mut per_node: Vec<Vec<Partition>> = nodes.iter().map(|_| Vec::new()).collect();
    let index_of = |id: NodeId| nodes.iter().position(|n| n.id() == id);
    let mut vector_bytes = 0;
    for partition in partitions {
        let replicas: Vec<usize> = placement
            .replicas(partition.id())
            .iter()
            .filter_map(|&n| index_of(n))
            .collect();
        vector_bytes += partition.vector_bytes() * replicas.len();
        if let Some((&last, others)) = replicas.split_last() {
            for &i in others {
                per_node[i].push(partition.clone());
            }
            per_node[last].push(partition);
        }
    }
    for (node, partitions) in nodes.iter().zip(per_node) {
        node.install(directory.clone(), partitions)
            .map_err(anyhow::Error::msg)?;
    }
    Ok(vector_bytes)
}

/// A real customer and the container with the biggest pool, for the printed example.
pub fn example_request(built: &BuiltModel) -> Option<(u64, u64)> {
    let customer = built
        .partitions
        .iter()
        .find_map(|p| p.customers().ids().first().copied())?;
    let container = built
        .directory
        .containers
        .iter()
        .max_by_key(|(id, entry)| (entry.products(), std::cmp::Reverse(**id)))
        .map(|(id, _)| *id)?;
    Some((customer, container))
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// This process's resident set size (Linux `/proc/self/statm`), 0 where unknown.
fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|pages| pages.parse::<usize>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}
