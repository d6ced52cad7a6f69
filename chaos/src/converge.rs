//! After the final heal: has the cluster converged? Every node's own view (`/v1/status` of its
//! admin listener) and every router's (`/v1/cluster`) must agree on one leader, one epoch and
//! one active version, with no one stale, every node in the map and `up` (or `joining`, holding
//! nothing, after a removal and a re-join).

use crate::client;
use crate::cluster::Cluster;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long the cluster gets to converge after the final heal before the run says it did not.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The nodes' own views (`/v1/status` of their admin listeners), by node name.
pub(crate) fn node_views(
    runtime: &tokio::runtime::Handle,
    cluster: &Cluster,
) -> BTreeMap<String, Result<serde_json::Value, String>> {
    cluster
        .members
        .iter()
        .map(|m| {
            let view = m
                .admin
                .ok_or_else(|| "no admin address".to_string())
                .and_then(
                    |admin| match runtime.block_on(client::get_once(admin, "/v1/status")) {
                        Ok((200, body)) => serde_json::from_slice(&body).map_err(|e| e.to_string()),
                        Ok((status, _)) => Err(format!("status {status}")),
                        Err(e) => Err(e),
                    },
                );
            (m.name.clone(), view)
        })
        .collect()
}

/// The leader's node name, as a majority of the nodes that answer see it.
pub(crate) fn leader_of_nodes(
    runtime: &tokio::runtime::Handle,
    cluster: &Cluster,
) -> Result<String, String> {
    let views = node_views(runtime, cluster);
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for view in views.values().flatten() {
        if let Some(leader) = view["leader"].as_u64() {
            *votes.entry(leader).or_default() += 1;
        }
    }
    let majority = cluster.members.len() / 2 + 1;
    votes
        .into_iter()
        .find(|(_, n)| *n >= majority)
        .and_then(|(id, _)| cluster.members.iter().find(|m| m.id == id))
        .map(|m| m.name.clone())
        .ok_or_else(|| format!("no leader seen by a majority: {views:?}"))
}

/// Whether every node has applied a map (epoch 0 means none yet).
pub(crate) fn map_on_every_node(
    runtime: &tokio::runtime::Handle,
    cluster: &Cluster,
) -> Result<(), String> {
    for (name, view) in node_views(runtime, cluster) {
        let epoch = view?["epoch"].as_u64();
        if epoch.unwrap_or(0) == 0 {
            return Err(format!("{name} holds no map yet (epoch {epoch:?})"));
        }
    }
    Ok(())
}

/// Waits for one leader, one map (every node at the same epoch, none stale, the same active
/// version), every node `up` in each router's view, each router at that epoch. Returns the
/// active version.
pub(crate) fn converge(
    cluster: &Cluster,
    runtime: &tokio::runtime::Handle,
    routers: &[(String, SocketAddr)],
) -> Result<String, String> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let why = match converged_once(cluster, runtime, routers) {
            Ok(active) => return Ok(active),
            Err(why) => why,
        };
        if Instant::now() > deadline {
            return Err(format!(
                "not converged {CONVERGE_TIMEOUT:?} after the heal: {why}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn converged_once(
    cluster: &Cluster,
    runtime: &tokio::runtime::Handle,
    routers: &[(String, SocketAddr)],
) -> Result<String, String> {
    let views = node_views(runtime, cluster);
    let mut seen: Option<(u64, u64, String)> = None;
    for (name, view) in &views {
        let view = view.as_ref().map_err(|e| format!("{name}: {e}"))?;
        if view["stale"].as_bool() != Some(false) {
            return Err(format!("{name} is stale"));
        }
        let leader = view["leader"]
            .as_u64()
            .ok_or(format!("{name} sees no leader"))?;
        let epoch = view["epoch"].as_u64().ok_or(format!("{name}: no epoch"))?;
        let active = view["models"]["active"].as_str().unwrap_or("").to_string();
        let this = (leader, epoch, active);
        match &seen {
            None => seen = Some(this),
            Some(first) if *first != this => {
                return Err(format!(
                    "{name} sees (leader, epoch, active) {this:?}, another node {first:?}"
                ));
            }
            Some(_) => {}
        }
    }
    let (_, epoch, active) = seen.ok_or("no node")?;
    for (name, addr) in routers {
        let (status, body) = runtime
            .block_on(client::get_once(*addr, "/v1/cluster"))
            .map_err(|e| format!("{name}: {e}"))?;
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("{name}: status {status}, {e}"))?;
        if json["epoch"].as_u64() != Some(epoch) || json["stale"].as_bool() != Some(false) {
            return Err(format!(
                "{name} is at epoch {:?} (stale {:?}), the nodes at {epoch}",
                json["epoch"], json["stale"]
            ));
        }
        if json["active_version"].as_str() != Some(active.as_str()) {
            return Err(format!(
                "{name} serves {:?}, the nodes {active}",
                json["active_version"]
            ));
        }
        let nodes = json["nodes"].as_array().cloned().unwrap_or_default();
        // A node that re-joined after a removal is `joining` and holds nothing until a
        // rebalancing gives it partitions (not built yet): that is its steady state.
        let settled = |n: &serde_json::Value| match n["state"].as_str() {
            Some("up") => true,
            Some("joining") => n["partitions"].as_u64() == Some(0),
            _ => false,
        };
        if let Some(not_up) = nodes.iter().find(|n| !settled(n)) {
            return Err(format!(
                "{name}: node {} is {} ({} partitions)",
                not_up["id"], not_up["state"], not_up["partitions"]
            ));
        }
        if let Some(missing) = cluster
            .members
            .iter()
            .find(|m| !nodes.iter().any(|n| n["id"].as_u64() == Some(m.id)))
        {
            return Err(format!("{name}: node {} is not in the map", missing.name));
        }
    }
    Ok(active)
}
