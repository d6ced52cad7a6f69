//! Keeps the router's view in step with the nodes. Every `router.refresh_interval_ms` it asks
//! each node which versions it serves, takes the active version most nodes report, fetches the
//! directories it lacks from a node that holds them, and swaps in a new view when anything
//! changed. The router learns everything from the nodes: a restarted router is back in step
//! after one round.

use crate::routee::Routee;
use crate::state::{ClusterView, RouterState};
use futures_util::future::join_all;
use scoregrid_raft::{ClusterMap, ModelRecord, ModelState};
use scoregrid_shard::{Directory, ModelVersion};
use scoregrid_wire::NodeId;
use scoregrid_wire::admin::AdminCalls;
use scoregrid_wire::message::NodeStatus;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Polls the nodes until `shutdown` completes.
pub async fn follow_nodes(
    state: Arc<RouterState>,
    map: ClusterMap,
    routees: HashMap<NodeId, Arc<Routee>>,
    shutdown: impl Future<Output = ()>,
) {
    let interval = Duration::from_millis(state.config.router.refresh_interval_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => refresh(&state, &map, &routees, interval).await,
            () = &mut shutdown => return,
        }
    }
}

/// One round: statuses, the chosen versions, missing directories, a new view if needed.
pub async fn refresh(
    state: &RouterState,
    map: &ClusterMap,
    routees: &HashMap<NodeId, Arc<Routee>>,
    timeout: Duration,
) {
    let statuses: Vec<NodeStatus> = join_all(routees.values().map(|r| async move {
        tokio::time::timeout(timeout, r.client.status())
            .await
            .ok()?
            .ok()
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    metrics::gauge!("scoregrid_router_nodes_answering").set(statuses.len() as f64);

    let mut votes: BTreeMap<&ModelVersion, usize> = BTreeMap::new();
    for status in &statuses {
        if let Some(v) = &status.active {
            *votes.entry(v).or_default() += 1;
        }
    }
    let active = votes
        .iter()
        .max_by_key(|&(v, n)| (*n, *v))
        .map(|(v, _)| (*v).clone());
    if votes.len() > 1 {
        tracing::warn!(
            ?votes,
            "nodes disagree on the active version; following the majority"
        );
    }
    let mut hosted: Vec<ModelVersion> = statuses
        .iter()
        .flat_map(|s| s.hosted.iter().cloned())
        .collect();
    hosted.sort();
    hosted.dedup();

    let current = state.view();
    let mut directories: HashMap<ModelVersion, Arc<Directory>> = HashMap::new();
    for version in &hosted {
        if let Some(d) = current.as_ref().and_then(|v| v.directories.get(version)) {
            directories.insert(version.clone(), d.clone());
            continue;
        }
        let holders = statuses
            .iter()
            .filter(|s| s.hosted.contains(version))
            .map(|s| s.node);
        for node in holders {
            let Some(routee) = routees.get(&node) else {
                continue;
            };
            match tokio::time::timeout(timeout, routee.client.fetch_directory(version.clone()))
                .await
            {
                Ok(Ok(directory)) => {
                    tracing::info!(%version, %node, containers = directory.containers.len(), "directory fetched");
                    directories.insert(version.clone(), Arc::new(directory));
                    break;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%version, %node, %error, "cannot fetch the directory")
                }
                Err(_) => tracing::warn!(%version, %node, "directory fetch timed out"),
            }
        }
    }

    let mut models: Vec<ModelRecord> = hosted
        .iter()
        .filter(|v| directories.contains_key(*v))
        .map(|v| ModelRecord {
            version: v.clone(),
            state: if Some(v) == active.as_ref() {
                ModelState::Active
            } else {
                ModelState::Retired
            },
        })
        .collect();
    models.sort_by(|a, b| a.version.cmp(&b.version));
    let unchanged = current
        .as_ref()
        .is_some_and(|v| v.map.models == models && v.directories.len() == directories.len());
    if unchanged {
        return;
    }
    let mut next_map = map.clone();
    next_map.epoch =
        scoregrid_raft::Epoch(current.as_ref().map_or(map.epoch.0, |v| v.map.epoch.0 + 1));
    next_map.models = models;
    if let Err(error) = next_map.check() {
        tracing::error!(%error, "refusing a cluster view that breaks its invariants");
        return;
    }
    tracing::info!(active = ?next_map.active_model(), versions = next_map.models.len(), "cluster view updated");
    state.set_view(ClusterView::from_parts(
        next_map,
        directories,
        routees.clone(),
    ));
}
