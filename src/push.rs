//! `scoregrid load`: a model version into a running cluster, through its map. The version is
//! registered in the map (state staging); its directory goes to every node of the map and each
//! partition (as partition-file bytes, encoded once) to every replica the map's placement names
//! that is not down, each staged copy's checksum compared with the one encoded; then one
//! committed map change makes it the active version, and every node and router follows. Nodes
//! verify and write what they stage, and serve nothing of it before it is complete; a request
//! names one version end to end.
//!
//! Every staging call carries the epoch of the map the loader read: a node holding a newer map
//! refuses it (`StaleEpoch`), so a load never stages by a placement that has changed.

use crate::operate::{CodedError, client};
use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use scoregrid_config::Config;
use scoregrid_raft::client::ClusterClient;
use scoregrid_raft::{ClusterMap, MapCommand, MapResponse, NodeState};
use scoregrid_shard::BuiltModel;
use scoregrid_shard::file::encode;
use scoregrid_wire::admin::AdminCalls;
use scoregrid_wire::{ClientEndpoint, NodeClient, NodeId, QuicClient, Role};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Staging calls in flight at once: enough to keep every node busy, few enough that the
/// encoded partitions held in memory stay a small multiple of one partition.
const STAGE_CALLS_IN_FLIGHT_MAX: usize = 8;

#[derive(Debug, Default)]
pub struct PushReport {
    pub partitions: usize,
    pub copies: usize,
    pub bytes: u64,
    /// Replicas skipped because the map says their node is down.
    pub skipped: usize,
}

/// Clients to every node of `map`, on `endpoint`.
fn node_clients(
    map: &ClusterMap,
    endpoint: &ClientEndpoint,
) -> HashMap<NodeId, Arc<dyn NodeClient>> {
    map.nodes
        .iter()
        .filter_map(|n| {
            let addr: SocketAddr = n.address.parse().ok()?;
            let client = QuicClient::with_endpoint(endpoint, n.id, addr, n.name.clone()).ok()?;
            Some((n.id, Arc::new(client) as Arc<dyn NodeClient>))
        })
        .collect()
}

/// Stages `built` on the replicas of `map`: the directory on every node that is not down, each
/// partition on each of its replicas that is not down (at least one).
pub async fn stage(
    built: BuiltModel,
    map: &ClusterMap,
    clients: &HashMap<NodeId, Arc<dyn NodeClient>>,
) -> Result<PushReport> {
    let BuiltModel {
        partitions,
        directory,
    } = built;
    let version = directory.version.clone();
    let reachable = |node: NodeId| map.state_of(node) != Some(NodeState::Down);
    for (node, client) in clients {
        if !reachable(*node) || map.partitions_of(*node).is_empty() {
            continue;
        }
        client
            .stage_directory(directory.clone())
            .await
            .with_context(|| format!("staging the directory of {version} on node {node}"))?;
    }
    let mut report = PushReport::default();
    let mut copies = Vec::new();
    for partition in partitions {
        let replicas: Vec<NodeId> = map.placement.replicas(partition.id()).to_vec();
        let up: Vec<NodeId> = replicas.iter().copied().filter(|&n| reachable(n)).collect();
        if up.is_empty() {
            bail!(
                "partition {} has no replica that is up ({replicas:?} are all down): it cannot be staged",
                partition.id()
            );
        }
        report.skipped += replicas.len() - up.len();
        let encoded = Arc::new(encode(&partition));
        copies.extend(
            up.into_iter()
                .map(|node| (node, partition.id(), encoded.clone())),
        );
    }
    let mut staged = futures_util::stream::iter(copies)
        .map(|(node, partition, encoded)| async move {
            let client = clients.get(&node).with_context(|| format!("no client for node {node}"))?;
            let reply = client
                .stage_partition(encoded.bytes.clone())
                .await
                .with_context(|| format!("staging partition {partition} on node {node}"))?;
            if reply.checksum != encoded.checksum || reply.partition != partition {
                bail!(
                    "node {node} staged partition {} with checksum {:08x}, expected {partition} with {:08x}",
                    reply.partition,
                    reply.checksum,
                    encoded.checksum
                );
            }
            Ok::<_, anyhow::Error>(encoded.bytes.len() as u64)
        })
        .buffer_unordered(STAGE_CALLS_IN_FLIGHT_MAX);
    while let Some(result) = staged.next().await {
        report.bytes += result?;
        report.copies += 1;
    }
    report.partitions = map.placement.partitions().get() as usize;
    Ok(report)
}

fn refusal(error: scoregrid_raft::client::ClientError) -> anyhow::Error {
    anyhow::Error::new(CodedError {
        code: u8::try_from(error.exit_code()).unwrap_or(1),
        message: error.to_string(),
    })
}

/// Registers, stages and (with `activate`) flips `built` in the cluster `client` reaches.
pub async fn push(
    built: BuiltModel,
    client: &ClusterClient,
    endpoint: &ClientEndpoint,
    activate: bool,
) -> Result<PushReport> {
    let version = built.directory.version.clone();
    let view = client.map().await.map_err(refusal)?;
    let Some(map) = view.map else {
        bail!("the cluster has no map yet (not bootstrapped): nothing to load into");
    };
    if view.stale {
        return Err(anyhow::Error::new(CodedError {
            code: 3,
            message: format!(
                "no quorum: node {} has no contact with a quorum; its map (epoch {}) may be stale",
                view.source, map.epoch
            ),
        }));
    }
    anyhow::ensure!(
        map.placement.partitions() == built.directory.partitions,
        "the model was cut into {} partitions, the cluster has {}: set placement.partitions to {}",
        built.directory.partitions.get(),
        map.placement.partitions().get(),
        map.placement.partitions().get()
    );
    client
        .propose(
            MapCommand::RegisterModel {
                version: version.clone(),
            },
            Role::Loader,
        )
        .await
        .map_err(refusal)?;
    // Registering raised the epoch: read the map again, and stage by it.
    let map = client
        .map()
        .await
        .map_err(refusal)?
        .map
        .context("the cluster map vanished")?;
    endpoint.clock().set_own(map.epoch.0);
    let clients = node_clients(&map, endpoint);
    let report = stage(built, &map, &clients).await?;
    if activate {
        let response = client
            .propose(
                MapCommand::ActivateModel {
                    version: version.clone(),
                },
                Role::Loader,
            )
            .await
            .map_err(refusal)?;
        if let MapResponse::Applied { epoch } = response {
            tracing::info!(%version, %epoch, "model version active cluster-wide");
        }
    }
    Ok(report)
}

/// `scoregrid load --model DIR [--cluster ADDR] [--no-activate]`, with the identity of `[tls]`
/// (a loader certificate from the cluster CA).
pub async fn load(
    config: Config,
    model: PathBuf,
    cluster: Option<SocketAddr>,
    activate: bool,
) -> Result<()> {
    let started = std::time::Instant::now();
    let (endpoint, client) = client(&config, cluster)?;
    let built = build(&config, model).await?;
    let version = built.directory.version.clone();
    let report = push(built, &client, &endpoint, activate).await?;
    crate::commands::print_line(&format!(
        "model {version}: {} partition copies ({:.1} MiB) staged and verified{}{} in {:.1} s",
        report.copies,
        report.bytes as f64 / 1048576.0,
        if report.skipped > 0 {
            format!(
                " ({} replicas of nodes that are down skipped)",
                report.skipped
            )
        } else {
            String::new()
        },
        if activate {
            ", then activated cluster-wide"
        } else {
            " (not activated: `scoregrid model activate` flips it)"
        },
        started.elapsed().as_secs_f64()
    ))
}

/// Reads and builds the model in `dir` with the layout of `config` (off the async workers).
pub async fn build(config: &Config, dir: PathBuf) -> Result<BuiltModel> {
    let (partitions, segment) = (
        config.placement.partitions,
        config.model.segment_products_max,
    );
    let (_, built) = tokio::task::spawn_blocking(move || {
        let partitions = scoregrid_shard::PartitionCount::new(partitions)
            .context("placement.partitions out of range")?;
        scoregrid_loader::build_model(&dir, partitions, segment)
            .with_context(|| format!("cannot load the model in {}", dir.display()))
    })
    .await
    .context("model build task failed")??;
    Ok(built)
}
