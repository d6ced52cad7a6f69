//! The operator's commands of a Raft-run cluster (contract section 5): `cluster status`,
//! `cluster maintenance`, `cluster remove`, `cluster init`, `model list`, `model activate`,
//! `model drop`, `model retain`.
//! Each goes through any node (followers forward changes to the leader), prints a one-line
//! result first, and exits 0 on success, 3 when no quorum could be reached (the message says
//! so), 1 on any other failure.

use crate::commands::print_line;
use anyhow::{Context, Result};
use scoregrid_config::Config;
use scoregrid_raft::client::{ClientError, ClusterClient};
use scoregrid_raft::protocol::MemberStatus;
use scoregrid_raft::{MapCommand, MapResponse};
use scoregrid_shard::ModelVersion;
use scoregrid_wire::{ClientEndpoint, NodeId, Role};
use std::net::SocketAddr;
use std::time::Duration;

/// An error that decides the process's exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodedError {
    pub code: u8,
    pub message: String,
}

fn coded(error: ClientError) -> anyhow::Error {
    anyhow::Error::new(CodedError {
        code: u8::try_from(error.exit_code()).unwrap_or(1),
        message: error.to_string(),
    })
}

/// A client to the cluster through `--cluster ADDR` (or `--node ADDR`), else the nodes of the
/// configuration, with this process's identity (an operator or loader certificate).
pub fn client(
    config: &Config,
    cluster: Option<SocketAddr>,
) -> Result<(ClientEndpoint, ClusterClient)> {
    let identity = crate::serve::identity(config)?;
    let endpoint = ClientEndpoint::bind(
        SocketAddr::from(([0, 0, 0, 0], 0)),
        &identity,
        crate::serve::transport(config)?,
    )
    .context("cannot open the client endpoint")?;
    let seeds = crate::serve::seeds(config, cluster);
    anyhow::ensure!(
        !seeds.is_empty(),
        "no node to ask: give --cluster ADDR or list [[cluster.nodes]] in the configuration"
    );
    // A proposal may wait for the cluster's own client timeout; allow a little more.
    let timeout = Duration::from_millis(config.raft.client_timeout_ms) + Duration::from_secs(1);
    let client = ClusterClient::new(&endpoint, &seeds, timeout);
    Ok((endpoint, client))
}

/// `scoregrid cluster status [--node ADDR] [--json]`.
pub async fn status(
    config: &Config,
    node: Option<SocketAddr>,
    cluster: Option<SocketAddr>,
    as_json: bool,
) -> Result<()> {
    let (_endpoint, client) = client(config, node.or(cluster))?;
    let status = client.status().await.map_err(coded)?;
    let text = if as_json {
        status_json(&status).to_string()
    } else {
        status_text(&status)
    };
    print_line(&text)?;
    if status.stale {
        return Err(anyhow::Error::new(CodedError {
            code: 3,
            message: format!(
                "no quorum: node {} has had no contact with a quorum for {}",
                status.node,
                status
                    .quorum_contact_ms
                    .map_or_else(|| "ever".to_owned(), |ms| format!("{ms} ms"))
            ),
        }));
    }
    Ok(())
}

/// The status as `/v1/cluster` names its fields.
pub fn status_json(status: &MemberStatus) -> serde_json::Value {
    let map = status.map.as_ref();
    let contact = |id: NodeId| {
        if status.node == id {
            return Some(0);
        }
        status
            .last_contact_ms
            .iter()
            .find(|(n, _)| *n == id)
            .map(|(_, ms)| *ms)
    };
    serde_json::json!({
        "membership": "raft",
        "source": status.node.0,
        "raft_role": status.role,
        "leader": status.leader.map(|l| l.0),
        "term": status.term,
        "epoch": status.epoch.0,
        "stale": status.stale,
        "commit_index": status.commit_index,
        "active_version": map.and_then(|m| m.active_model()).map(|v| v.as_str()),
        "nodes": map.map(|m| scoregrid_router::http::nodes_json(m, contact)).unwrap_or_default(),
        "versions": map.map(scoregrid_router::http::versions_json).unwrap_or_default(),
        "versions_retained": map.map(|m| m.versions_retained),
        "under_replicated_partitions": map.map(|m| m.under_replicated()),
    })
}

fn status_text(status: &MemberStatus) -> String {
    let leader = status
        .leader
        .map_or_else(|| "none".to_owned(), |l| l.to_string());
    let contact = if status.stale {
        "NO CONTACT WITH A QUORUM: this map may be stale".to_owned()
    } else {
        "in contact with a quorum".to_owned()
    };
    let mut lines = vec![format!(
        "cluster: leader {leader}, term {}, epoch {}, commit index {}, {contact} (as node {}, a {}, sees it)",
        status.term,
        status.epoch,
        status
            .commit_index
            .map_or_else(|| "-".to_owned(), |i| i.to_string()),
        status.node,
        status.role
    )];
    let Some(map) = &status.map else {
        lines.push("no cluster map yet: the cluster is not bootstrapped".into());
        return lines.join("\n");
    };
    lines.push(format!(
        "  {:<6} {:<12} {:<6} {:<22} {:>10}  {}",
        "node", "state", "voter", "address", "partitions", "last contact"
    ));
    for n in &map.nodes {
        let contact = if n.id == status.node {
            "self".to_owned()
        } else {
            status
                .last_contact_ms
                .iter()
                .find(|(id, _)| *id == n.id)
                .map_or_else(|| "-".to_owned(), |(_, ms)| format!("{ms} ms ago"))
        };
        lines.push(format!(
            "  {:<6} {:<12} {:<6} {:<22} {:>10}  {contact}",
            n.id.to_string(),
            n.state.as_str(),
            if n.voter { "yes" } else { "no" },
            n.address,
            map.placement.partitions_of(n.id).len(),
        ));
    }
    let versions: Vec<String> = map
        .models
        .iter()
        .rev()
        .map(|m| format!("{} ({})", m.version, m.state.as_str()))
        .collect();
    lines.push(format!(
        "versions: {}; under-replicated partitions: {}",
        if versions.is_empty() {
            "none".to_owned()
        } else {
            versions.join(", ")
        },
        map.under_replicated()
    ));
    lines.join("\n")
}

async fn propose(
    config: &Config,
    cluster: Option<SocketAddr>,
    command: MapCommand,
    role: Role,
) -> Result<MapResponse> {
    let (_endpoint, client) = client(config, cluster)?;
    client.propose(command, role).await.map_err(coded)
}

fn epoch_note(response: &MapResponse) -> String {
    match response {
        MapResponse::Applied { epoch } => format!("epoch {epoch}"),
        MapResponse::Unchanged { epoch } => format!("already so, epoch {epoch}"),
        MapResponse::Nothing | MapResponse::Refused { .. } => String::new(),
    }
}

/// `scoregrid cluster maintenance ID on|off`.
pub async fn maintenance(
    config: &Config,
    cluster: Option<SocketAddr>,
    id: u64,
    on: bool,
) -> Result<()> {
    let response = propose(
        config,
        cluster,
        MapCommand::Maintenance { id: NodeId(id), on },
        Role::Operator,
    )
    .await?;
    print_line(&format!(
        "node n{id}: maintenance {} ({})",
        if on {
            "on: it is never marked down and nothing is moved"
        } else {
            "off: it is up again (marked down if it does not answer)"
        },
        epoch_note(&response)
    ))
}

/// `scoregrid cluster remove ID`.
pub async fn remove(config: &Config, cluster: Option<SocketAddr>, id: u64) -> Result<()> {
    let response = propose(
        config,
        cluster,
        MapCommand::Remove { id: NodeId(id) },
        Role::Operator,
    )
    .await?;
    print_line(&format!(
        "node n{id} removed from the cluster map ({}); partitions it held get a new replica, which fetches them from the others",
        epoch_note(&response)
    ))
}

/// `scoregrid cluster init`.
pub async fn init(config: &Config, cluster: Option<SocketAddr>) -> Result<()> {
    let (_endpoint, client) = client(config, cluster)?;
    client.initialize().await.map_err(coded)?;
    print_line(
        "cluster initialised with the voters of its configuration (a no-op if it already was)",
    )
}

/// `scoregrid model list`.
pub async fn model_list(config: &Config, cluster: Option<SocketAddr>) -> Result<()> {
    let (_endpoint, client) = client(config, cluster)?;
    let view = client.map().await.map_err(coded)?;
    let Some(map) = view.map else {
        return print_line("no cluster map yet: the cluster is not bootstrapped");
    };
    let active = map
        .active_model()
        .map_or_else(|| "none".to_owned(), ToString::to_string);
    let mut lines = vec![format!(
        "active version: {active} (epoch {}{})",
        map.epoch,
        if view.stale {
            ", from a node without contact with a quorum"
        } else {
            ""
        }
    )];
    for m in map.models.iter().rev() {
        let progress = if m.state == scoregrid_raft::ModelState::Staging {
            let missing = scoregrid_raft::models::missing_copies(&map, m).len();
            format!(
                "  {} copies staged, {missing} missing{}",
                m.staged_copies(),
                if missing == 0 {
                    ": ready to activate"
                } else {
                    ""
                }
            )
        } else {
            String::new()
        };
        lines.push(format!(
            "  {:<32} {:<8} digest {:08x}{progress}",
            m.version.as_str(),
            m.state.as_str(),
            m.digest
        ));
    }
    lines.push(format!(
        "retired versions retained: {}",
        map.versions_retained
    ));
    print_line(&lines.join("\n"))
}

/// `scoregrid model drop V`: a staging or retired version leaves the map; every node deletes
/// it from RAM and disk.
pub async fn model_drop(config: &Config, cluster: Option<SocketAddr>, version: &str) -> Result<()> {
    let version = ModelVersion::new(version).map_err(anyhow::Error::msg)?;
    let response = propose(
        config,
        cluster,
        MapCommand::DropModel {
            version: version.clone(),
        },
        Role::Operator,
    )
    .await?;
    let note = match response {
        MapResponse::Unchanged { .. } => "it was not in the map".to_owned(),
        other => format!("{}; nodes delete it from RAM and disk", epoch_note(&other)),
    };
    print_line(&format!("model {version} dropped ({note})"))
}

/// `scoregrid model retain N`: retired versions kept for rollback and open cursors.
pub async fn model_retain(
    config: &Config,
    cluster: Option<SocketAddr>,
    versions: u32,
) -> Result<()> {
    let response = propose(
        config,
        cluster,
        MapCommand::RetainVersions { versions },
        Role::Operator,
    )
    .await?;
    print_line(&format!(
        "{versions} retired versions retained ({}); older ones leave the map and the nodes",
        epoch_note(&response)
    ))
}

/// `scoregrid model activate V`: the cluster-wide flip to a registered version (a rollback to
/// a retained one).
pub async fn model_activate(
    config: &Config,
    cluster: Option<SocketAddr>,
    version: &str,
) -> Result<()> {
    let version = ModelVersion::new(version).map_err(anyhow::Error::msg)?;
    let response = propose(
        config,
        cluster,
        MapCommand::ActivateModel {
            version: version.clone(),
        },
        Role::Operator,
    )
    .await?;
    print_line(&format!(
        "model {version} is the active version ({}); nodes and routers follow within a heartbeat",
        epoch_note(&response)
    ))
}
