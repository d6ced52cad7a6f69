//! A node follows the cluster map of its Raft member: every change sets the epoch its transport
//! stamps and checks, the partitions it must hold, and the version it serves as active (the
//! map's). Partitions the placement gives it that it lacks (lost or corrupt on disk, or new to
//! it after a node left) are fetched from their other replicas. A node that cannot serve the
//! map's active version (it was down during the load, or its data directory was wiped) stages
//! it from its peers first (the directory from any node, each partition from a replica), then
//! serves it; meanwhile its replicas answer for it.
//!
//! [`RaftMember`] puts the member behind the node's RPCs ([`crate::rpc::Membership`]).

use crate::rpc::Membership;
use crate::service::Node;
use scoregrid_raft::member::Member;
use scoregrid_raft::peers::PeerClients;
use scoregrid_raft::{ClusterMap, NodeState, RaftPeer};
use scoregrid_shard::PartitionId;
use scoregrid_wire::admin::AdminCalls;
use scoregrid_wire::epoch::EpochClock;
use scoregrid_wire::{Caller, Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How long a node waits before asking again for partitions no peer could give.
pub const REPAIR_RETRY: Duration = Duration::from_secs(2);

/// The node's Raft member as the RPC layer sees it.
pub struct RaftMember(pub Arc<Member>);

impl Membership for RaftMember {
    fn is_member(&self, certificate_name: &str) -> bool {
        self.0
            .map()
            .is_some_and(|map| map.nodes.iter().any(|n| n.name == certificate_name))
    }

    fn raft(
        &self,
        payload: Vec<u8>,
        caller: Caller,
    ) -> Pin<Box<dyn Future<Output = Response> + Send>> {
        let member = self.0.clone();
        Box::pin(async move {
            let reply = member.handle_raft(&payload, &caller).await;
            encoded(&reply, Response::Raft)
        })
    }

    fn cluster(
        &self,
        payload: Vec<u8>,
        caller: Caller,
    ) -> Pin<Box<dyn Future<Output = Response> + Send>> {
        let member = self.0.clone();
        Box::pin(async move {
            let reply = member.handle_cluster(&payload, &caller).await;
            encoded(&reply, Response::Cluster)
        })
    }
}

fn encoded<T: serde::Serialize>(reply: &T, wrap: fn(Vec<u8>) -> Response) -> Response {
    match scoregrid_wire::codec::encode(reply) {
        Ok(bytes) => wrap(bytes),
        Err(error) => Response::Error(scoregrid_wire::NodeError::BadRequest(format!(
            "reply does not encode: {error}"
        ))),
    }
}

/// Applies each map of `member` to `node` until `shutdown` (see the module docs).
pub async fn follow_map(
    node: Arc<Node>,
    member: Arc<Member>,
    clock: Arc<EpochClock>,
    peers: Arc<dyn PeerClients>,
    shutdown: impl Future<Output = ()>,
) {
    let mut maps = member.subscribe();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut retry = tokio::time::interval(REPAIR_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let map = maps.borrow_and_update().clone();
        if let Some(map) = map {
            apply(&node, &map, &clock, peers.as_ref()).await;
            repair(&node, &map, peers.as_ref()).await;
        }
        tokio::select! {
            changed = maps.changed() => if changed.is_err() { return },
            _ = retry.tick() => {}
            () = &mut shutdown => return,
        }
    }
}

/// The epoch, the partitions to hold, the active version.
async fn apply(node: &Arc<Node>, map: &ClusterMap, clock: &EpochClock, peers: &dyn PeerClients) {
    clock.set_own(map.epoch.0);
    node.set_must_hold(map.partitions_of(node.id()));
    let Some(version) = map.active_model().cloned() else {
        return;
    };
    if node.active().as_ref() == Some(&version) {
        return;
    }
    for attempt in 0..2 {
        let activating = node.clone();
        let wanted = version.clone();
        match tokio::task::spawn_blocking(move || activating.follow_active(&wanted)).await {
            Ok(Ok(())) => {
                tracing::info!(node = %node.id(), %version, epoch = %map.epoch, "serving the map's active version");
                return;
            }
            Ok(Err(error)) if attempt == 0 => {
                metrics::counter!("scoregrid_node_active_version_missing_total", "node" => node.id().to_string()).increment(1);
                tracing::warn!(node = %node.id(), %version, %error, "the map's active version is not here: staging it from the peers");
                catch_up(node, map, peers, &version).await;
            }
            Ok(Err(error)) => {
                tracing::warn!(node = %node.id(), %version, %error, "cannot serve the map's active version yet; its other replicas answer for it");
            }
            Err(error) => {
                tracing::warn!(node = %node.id(), %error, "activation task failed");
                return;
            }
        }
    }
}

/// Stages `version` from the peers: its directory from any node that has it, each partition this
/// node must hold from one of its other replicas (up ones first). Staging checks everything as
/// a load's staging does; a complete version becomes servable by name.
async fn catch_up(
    node: &Arc<Node>,
    map: &ClusterMap,
    peers: &dyn PeerClients,
    version: &scoregrid_shard::ModelVersion,
) {
    if node.hosts(version) {
        return;
    }
    let mut others: Vec<_> = map.nodes.iter().filter(|n| n.id != node.id()).collect();
    others.sort_by_key(|n| n.state != NodeState::Up);
    let client_of = |peer: &scoregrid_raft::NodeInfo| {
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
            if stage_locally(node, Request::StageDirectory(Box::new(directory))).await {
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
        let mut replicas: Vec<_> = map
            .placement
            .replicas(partition)
            .iter()
            .filter(|&&n| n != node.id())
            .filter_map(|&n| map.node(n))
            .collect();
        replicas.sort_by_key(|n| n.state != NodeState::Up);
        let mut done = false;
        for peer in replicas {
            let Some(client) = client_of(peer) else {
                continue;
            };
            let Ok(bytes) = client.read_partition(version.clone(), partition).await else {
                continue;
            };
            let request =
                Request::StagePartition(scoregrid_wire::message::StagePartition { bytes });
            if stage_locally(node, request).await {
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

/// Runs a staging request on this node (off the async workers: it writes to disk).
async fn stage_locally(node: &Arc<Node>, request: Request) -> bool {
    let staging = node.clone();
    match tokio::task::spawn_blocking(move || staging.handle(request)).await {
        Ok(Response::Error(error)) => {
            tracing::warn!(node = %node.id(), %error, "staging from a peer refused");
            false
        }
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(node = %node.id(), %error, "staging task failed");
            false
        }
    }
}

/// Fetches back, from their other replicas (up ones first), the partitions of the active
/// version that the placement gives this node but that it lacks.
async fn repair(node: &Arc<Node>, map: &ClusterMap, peers: &dyn PeerClients) {
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
    version: &scoregrid_shard::ModelVersion,
    partition: PartitionId,
) -> bool {
    let mut replicas: Vec<_> = map
        .placement
        .replicas(partition)
        .iter()
        .filter(|&&n| n != node.id())
        .filter_map(|&n| map.node(n))
        .collect();
    replicas.sort_by_key(|n| n.state != NodeState::Up);
    for peer in replicas {
        let raft_peer = RaftPeer {
            address: peer.address.clone(),
            name: peer.name.clone(),
        };
        let Some(client) = peers.client(peer.id, &raft_peer) else {
            continue;
        };
        let bytes = match client.read_partition(version.clone(), partition).await {
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
