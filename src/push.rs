//! Pushes a built model into a running cluster: the directory to every node, each partition
//! (as partition-file bytes, encoded once) to every replica the placement names, each staged
//! copy's checksum compared with the one encoded, and finally `Activate` on every node. Nodes
//! verify and write what they stage, and serve nothing of it before activation.

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use scoregrid_config::Config;
use scoregrid_raft::ClusterMap;
use scoregrid_shard::BuiltModel;
use scoregrid_shard::file::encode;
use scoregrid_wire::admin::AdminCalls;
use scoregrid_wire::{NodeClient, NodeId};
use std::collections::HashMap;
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
}

pub async fn push_model(
    built: BuiltModel,
    map: &ClusterMap,
    clients: &HashMap<NodeId, Arc<dyn NodeClient>>,
    activate: bool,
) -> Result<PushReport> {
    let BuiltModel {
        partitions,
        directory,
    } = built;
    let version = directory.version.clone();
    for (node, client) in clients {
        client
            .stage_directory(directory.clone())
            .await
            .with_context(|| format!("staging the directory of {version} on node {node}"))?;
    }
    let mut report = PushReport::default();
    let copies = partitions.into_iter().flat_map(|partition| {
        let encoded = Arc::new(encode(&partition));
        let replicas = map.placement.replicas(partition.id()).to_vec();
        replicas
            .into_iter()
            .map(move |node| (node, partition.id(), encoded.clone()))
    });
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
    if activate {
        for (node, client) in clients {
            client
                .activate(version.clone())
                .await
                .with_context(|| format!("activating {version} on node {node}"))?;
        }
    }
    Ok(report)
}

/// `scoregrid load --model DIR [--no-activate]`: the nodes of `[cluster]`, reached with the
/// identity of `[tls]` (a loader certificate from the cluster CA).
pub async fn load(config: Config, model: PathBuf, activate: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let map = crate::serve::static_map(&config)?;
    let identity = crate::serve::identity(&config)?;
    let clients: HashMap<NodeId, Arc<dyn NodeClient>> = crate::serve::clients(
        &config.cluster.nodes,
        &identity,
        crate::serve::transport(&config)?,
    )?
    .into_iter()
    .map(|c| (c.node(), c))
    .collect();
    let built = build(&config, model).await?;
    let version = built.directory.version.clone();
    let report = push_model(built, &map, &clients, activate).await?;
    crate::commands::print_line(&format!(
        "model {version}: {} partition copies ({:.1} MiB) staged and verified on {} nodes{} in {:.1} s",
        report.copies,
        report.bytes as f64 / 1048576.0,
        clients.len(),
        if activate {
            ", then activated"
        } else {
            " (not activated)"
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
