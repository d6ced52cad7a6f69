//! Keeps the router's view in step with the cluster map. The map comes from the nodes' watch
//! (`scoregrid_raft::client::follow_map`): on every change, and every
//! `router.refresh_interval_ms` until nothing is missing, this builds a new [`ClusterView`]:
//! a routee per node of the map (existing ones kept, so their breakers and latencies carry
//! over; a node whose address changed gets a new client), and the directory of every version
//! the map names as active or retired, fetched once from a node that holds it. The active
//! version is the map's: the router never picks one itself.

use crate::routee::Routee;
use crate::state::{ClusterView, Membership, RouterState};
use scoregrid_raft::client::FollowedMap;
use scoregrid_raft::{ClusterMap, ModelState, NodeInfo, NodeState};
use scoregrid_shard::{Directory, ModelVersion};
use scoregrid_wire::admin::AdminCalls;
use scoregrid_wire::{NodeClient, NodeId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Makes the client a routee calls a node through.
pub type ClientMaker = dyn Fn(&NodeInfo) -> Option<Arc<dyn NodeClient>> + Send + Sync;

/// Follows `followed` until `shutdown`, swapping in a new view whenever the map, its freshness
/// or the directories known change.
pub async fn follow_map(
    state: Arc<RouterState>,
    mut followed: watch::Receiver<FollowedMap>,
    make_client: Arc<ClientMaker>,
    shutdown: impl Future<Output = ()>,
) {
    let interval = Duration::from_millis(state.config.router.refresh_interval_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let current = followed.borrow_and_update().clone();
        refresh(&state, &current, make_client.as_ref(), interval).await;
        tokio::select! {
            changed = followed.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
            () = &mut shutdown => return,
        }
    }
}

/// Routees for the nodes of `map`, reusing `current` ones that still point at the same address.
fn routees_for(
    state: &RouterState,
    map: &ClusterMap,
    current: Option<&ClusterView>,
    make_client: &ClientMaker,
) -> HashMap<NodeId, Arc<Routee>> {
    let policy = state.routee_policy();
    let mut routees = HashMap::new();
    for node in &map.nodes {
        let kept = current.and_then(|view| {
            let same_address = view.map.node(node.id).map(|n| &n.address) == Some(&node.address);
            same_address
                .then(|| view.routees.get(&node.id).cloned())
                .flatten()
        });
        let routee = kept.or_else(|| make_client(node).map(|c| Arc::new(Routee::new(c, policy))));
        if let Some(routee) = routee {
            routees.insert(node.id, routee);
        }
    }
    routees
}

/// One round: a new view if the map, its freshness or the directories changed.
pub async fn refresh(
    state: &RouterState,
    followed: &FollowedMap,
    make_client: &ClientMaker,
    timeout: Duration,
) {
    let Some(map) = followed.map.as_deref() else {
        return;
    };
    let current = state.view();
    let routees = routees_for(state, map, current.as_deref(), make_client);
    let wanted: Vec<&ModelVersion> = map
        .models
        .iter()
        .filter(|m| m.state != ModelState::Staging)
        .map(|m| &m.version)
        .collect();
    let mut directories: HashMap<ModelVersion, Arc<Directory>> = HashMap::new();
    for version in wanted {
        if let Some(d) = current.as_ref().and_then(|v| v.directories.get(version)) {
            directories.insert(version.clone(), d.clone());
            continue;
        }
        if let Some(directory) = fetch_directory(map, &routees, version, timeout).await {
            directories.insert(version.clone(), directory);
        }
    }
    let membership = Membership::Raft {
        leader: followed.leader,
        term: followed.term,
        stale: followed.stale,
        source: followed.source,
    };
    let unchanged = current.as_ref().is_some_and(|v| {
        v.map == *map
            && v.membership == membership
            && v.directories.len() == directories.len()
            && v.routees.len() == routees.len()
            && routees
                .iter()
                .all(|(id, r)| v.routees.get(id).is_some_and(|o| Arc::ptr_eq(o, r)))
    });
    if unchanged {
        return;
    }
    if let Err(error) = map.check() {
        tracing::error!(%error, epoch = %map.epoch, "refusing a cluster map that breaks its invariants");
        return;
    }
    metrics::gauge!(crate::telemetry::MAP_STALE).set(f64::from(u8::from(followed.stale)));
    metrics::gauge!(crate::telemetry::MAP_EPOCH).set(map.epoch.0 as f64);
    tracing::info!(epoch = %map.epoch, active = ?map.active_model(), stale = followed.stale,
        directories = directories.len(), "cluster view updated");
    state.set_view(ClusterView::from_parts(
        map.clone(),
        membership,
        directories,
        routees,
    ));
}

/// The directory of `version` from the first node that has it: nodes that are up first.
async fn fetch_directory(
    map: &ClusterMap,
    routees: &HashMap<NodeId, Arc<Routee>>,
    version: &ModelVersion,
    timeout: Duration,
) -> Option<Arc<Directory>> {
    let mut nodes: Vec<&NodeInfo> = map.nodes.iter().collect();
    nodes.sort_by_key(|n| n.state != NodeState::Up);
    for node in nodes {
        let Some(routee) = routees.get(&node.id) else {
            continue;
        };
        match tokio::time::timeout(timeout, routee.client.fetch_directory(version.clone())).await {
            Ok(Ok(directory)) => {
                tracing::info!(%version, node = %node.id, containers = directory.containers.len(), "directory fetched");
                return Some(Arc::new(directory));
            }
            Ok(Err(error)) => {
                tracing::debug!(%version, node = %node.id, %error, "no directory there")
            }
            Err(_) => tracing::debug!(%version, node = %node.id, "directory fetch timed out"),
        }
    }
    tracing::warn!(%version, "no node could give the directory of a version the map names");
    None
}
