//! Fetching from peers what this node should hold and lacks: a version it missed (it was down
//! during the load, or its disk was wiped) is staged from them ([`catch_up`]); partitions of the
//! active version it lost or was newly given are adopted from their other replicas
//! ([`repair`]). Files travel in ranges ([`read_partition_file`]), never in one frame.

use crate::service::Node;
use crate::staging::PARTITION_FILE_BYTES_MAX;
use scoregrid_raft::peers::PeerClients;
use scoregrid_raft::{ClusterMap, NodeInfo, NodeState, RaftPeer};
use scoregrid_shard::{ModelVersion, PartitionId};
use scoregrid_wire::admin::AdminCalls;
use scoregrid_wire::{NodeClient, NodeError, RpcError};
use std::sync::Arc;

/// The replicas of `partition` other than `me`, those that are up first: whom to ask for it.
fn other_replicas(
    map: &ClusterMap,
    me: scoregrid_wire::NodeId,
    partition: PartitionId,
) -> Vec<&NodeInfo> {
    let mut replicas: Vec<&NodeInfo> = map
        .placement
        .replicas(partition)
        .iter()
        .filter(|&&n| n != me)
        .filter_map(|&n| map.node(n))
        .collect();
    replicas.sort_by_key(|n| n.state != NodeState::Up);
    replicas
}

/// The whole file of partition `partition` of `version` from `client`, range by range.
///
/// # Errors
/// The first failed call, or a file whose length changes between ranges or exceeds
/// [`PARTITION_FILE_BYTES_MAX`].
pub async fn read_partition_file(
    client: &dyn NodeClient,
    version: &ModelVersion,
    partition: PartitionId,
) -> Result<Vec<u8>, RpcError> {
    let refused = |what: String| RpcError::Remote {
        node: client.node(),
        error: NodeError::Refused(what),
    };
    let mut bytes: Vec<u8> = Vec::new();
    loop {
        let offset = bytes.len() as u64;
        let range = client
            .read_partition_range(version.clone(), partition, offset)
            .await?;
        if range.file_bytes > PARTITION_FILE_BYTES_MAX {
            return Err(refused(format!(
                "partition {partition} of {version} is {} bytes, more than {PARTITION_FILE_BYTES_MAX}",
                range.file_bytes
            )));
        }
        if offset == 0 {
            bytes.reserve_exact(range.file_bytes as usize);
        }
        if range.bytes.is_empty() || offset + range.bytes.len() as u64 > range.file_bytes {
            return Err(refused(format!(
                "partition {partition} of {version}: a range of {} bytes at {offset} of a {}-byte file",
                range.bytes.len(),
                range.file_bytes
            )));
        }
        bytes.extend_from_slice(&range.bytes);
        if bytes.len() as u64 == range.file_bytes {
            return Ok(bytes);
        }
    }
}

/// Stages `version` from the peers: its directory from any node that has it, each partition this
/// node must hold from one of its other replicas (up ones first). Staging checks everything as
/// a load's staging does; a complete version becomes servable by name.
pub(crate) async fn catch_up(
    node: &Arc<Node>,
    map: &ClusterMap,
    peers: &dyn PeerClients,
    version: &ModelVersion,
) {
    if node.hosts(version) {
        return;
    }
    let mut others: Vec<_> = map.nodes.iter().filter(|n| n.id != node.id()).collect();
    others.sort_by_key(|n| n.state != NodeState::Up);
    let client_of = |peer: &NodeInfo| {
        peers.client(
            peer.id,
            &RaftPeer {
                address: peer.address.clone(),
                name: peer.name.clone(),
            },
        )
    };
    let (has_directory, staged) = node.staging_progress(version).unwrap_or_default();
    if !has_directory {
        let mut found = false;
        for peer in &others {
            let Some(client) = client_of(peer) else {
                continue;
            };
            let Ok(directory) = client.fetch_directory(version.clone()).await else {
                continue;
            };
            if stage_locally(node, move |n| n.stage_directory(directory)).await {
                found = true;
                break;
            }
        }
        if !found {
            tracing::warn!(node = %node.id(), %version, "no peer could give the directory of the active version");
            return;
        }
    }
    for partition in map.partitions_of(node.id()) {
        if staged.contains(&partition) || node.hosts(version) {
            continue;
        }
        let mut done = false;
        for peer in other_replicas(map, node.id(), partition) {
            let Some(client) = client_of(peer) else {
                continue;
            };
            let Ok(bytes) = read_partition_file(client.as_ref(), version, partition).await else {
                continue;
            };
            if stage_locally(node, move |n| n.stage_partition(&bytes).map(drop)).await {
                done = true;
                break;
            }
        }
        if !done {
            tracing::warn!(node = %node.id(), %version, %partition, "no replica could give a partition of the active version");
            return;
        }
    }
    tracing::info!(node = %node.id(), %version, "the active version is staged from the peers");
}

/// Runs a staging step on this node (off the async workers: it writes to disk).
async fn stage_locally(
    node: &Arc<Node>,
    stage: impl FnOnce(&Node) -> Result<(), NodeError> + Send + 'static,
) -> bool {
    let staging = node.clone();
    match tokio::task::spawn_blocking(move || stage(&staging)).await {
        Ok(Err(error)) => {
            tracing::warn!(node = %node.id(), %error, "staging from a peer refused");
            false
        }
        Ok(Ok(())) => true,
        Err(error) => {
            tracing::warn!(node = %node.id(), %error, "staging task failed");
            false
        }
    }
}

/// Fetches back, from their other replicas (up ones first), the partitions of the active
/// version that the placement gives this node but that it lacks.
pub(crate) async fn repair(node: &Arc<Node>, map: &ClusterMap, peers: &dyn PeerClients) {
    let Some((version, missing)) = node.missing_partitions() else {
        return;
    };
    for partition in missing {
        if !fetch_one(node, map, peers, &version, partition).await {
            tracing::warn!(node = %node.id(), %partition, %version, "no replica could give a missing partition; trying again later");
        }
    }
}

async fn fetch_one(
    node: &Arc<Node>,
    map: &ClusterMap,
    peers: &dyn PeerClients,
    version: &ModelVersion,
    partition: PartitionId,
) -> bool {
    for peer in other_replicas(map, node.id(), partition) {
        let raft_peer = RaftPeer {
            address: peer.address.clone(),
            name: peer.name.clone(),
        };
        let Some(client) = peers.client(peer.id, &raft_peer) else {
            continue;
        };
        let bytes = match read_partition_file(client.as_ref(), version, partition).await {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::debug!(node = %node.id(), %partition, peer = %peer.id, %error, "cannot fetch a missing partition");
                continue;
            }
        };
        let adopting = node.clone();
        match tokio::task::spawn_blocking(move || adopting.adopt_partition(&bytes)).await {
            Ok(Ok(_)) => {
                tracing::info!(node = %node.id(), %partition, peer = %peer.id, %version, "missing partition fetched back from a replica");
                return true;
            }
            Ok(Err(error)) => {
                tracing::warn!(node = %node.id(), %partition, peer = %peer.id, %error, "fetched partition refused");
            }
            Err(error) => {
                tracing::warn!(node = %node.id(), %partition, %error, "partition adoption task failed")
            }
        }
    }
    false
}
