//! The long-running processes: `scoregrid node` and `scoregrid router`, and the pieces of them
//! that `demo` and `cluster local` reuse. This is where configuration becomes transport
//! settings, identities, placement and running servers.

use anyhow::{Context, Result};
use scoregrid_config::{Config, MemberConfig};
use scoregrid_node::store::Store;
use scoregrid_node::{Control, Node, NodeService};
use scoregrid_raft::{ClusterMap, NodeInfo, NodeState, ReplicationFactor};
use scoregrid_router::routee::Routee;
use scoregrid_router::{RouterState, discovery};
use scoregrid_shard::PartitionCount;
use scoregrid_wire::{
    ClientEndpoint, Identity, NodeClient, NodeId, QuicClient, QuicServer, Service, TransportConfig,
};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The transport bounds of `[transport]`.
pub fn transport(config: &Config) -> Result<TransportConfig> {
    let t = &config.transport;
    let transport = TransportConfig {
        frame_bytes_max: u32::try_from(t.frame_bytes_max)
            .context("transport.frame_bytes_max too large")?,
        connect_timeout: Duration::from_millis(t.connect_timeout_ms),
        request_timeout: Duration::from_millis(t.request_timeout_ms),
        idle_timeout: Duration::from_millis(t.idle_timeout_ms),
        keep_alive_interval: Duration::from_millis(t.keep_alive_ms),
        streams_max: t.streams_max,
        ..TransportConfig::default()
    };
    transport.validate()?;
    Ok(transport)
}

/// This process's certificate, key and the cluster CA, from `[tls]`.
pub fn identity(config: &Config) -> Result<Identity> {
    let t = &config.tls;
    Identity::load(&t.ca, &t.cert, &t.key).with_context(|| {
        format!(
            "cannot load the TLS identity (tls.ca {}, tls.cert {}, tls.key {})",
            t.ca.display(),
            t.cert.display(),
            t.key.display()
        )
    })
}

/// The static cluster map of `[cluster]` and `[placement]`: every listed node Up.
pub fn static_map(config: &Config) -> Result<ClusterMap> {
    let partitions = PartitionCount::new(config.placement.partitions)
        .context("placement.partitions out of range")?;
    let members = &config.cluster.nodes;
    anyhow::ensure!(!members.is_empty(), "cluster.nodes lists no node");
    let rf = config
        .placement
        .replication_factor
        .min(members.len() as u32);
    if rf < config.placement.replication_factor {
        tracing::warn!(
            nodes = members.len(),
            rf,
            "fewer nodes than placement.replication_factor"
        );
    }
    let rf = ReplicationFactor::new(rf).context("placement.replication_factor out of range")?;
    let nodes = members
        .iter()
        .map(|m| NodeInfo {
            id: NodeId(m.id),
            address: m.addr.to_string(),
            name: m.name.clone(),
            state: NodeState::Up,
            voter: false,
            admin: None,
        })
        .collect();
    Ok(ClusterMap::bootstrap(
        nodes,
        partitions,
        rf,
        config.placement.virtual_nodes,
    )?)
}

/// Serves `node` over QUIC on `addr` until `shutdown`.
///
/// # Errors
/// When the socket cannot be bound or the identity is refused.
pub fn bind_node(
    node: &Arc<Node>,
    addr: SocketAddr,
    identity: &Identity,
    transport: TransportConfig,
) -> Result<QuicServer> {
    QuicServer::bind(addr, identity, node.id(), transport)
        .with_context(|| format!("cannot listen on quic://{addr}"))
}

/// `scoregrid node --config FILE`.
pub async fn run_node(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let member = config.this_member()?.clone();
    let id = NodeId(member.id);
    let identity = identity(&config)?;
    let map = static_map(&config)?;
    let must_hold = map.placement.partitions_of(id);
    let store = Store::open(&config.node.data_dir).with_context(|| {
        format!(
            "cannot open node.data_dir {}",
            config.node.data_dir.display()
        )
    })?;
    let node = Arc::new(Node::with_control(
        id,
        Control::new(
            store,
            must_hold.clone(),
            config.node.versions_retained as usize,
        ),
    ));
    let restored = tokio::task::spawn_blocking({
        let node = node.clone();
        move || node.restore()
    })
    .await
    .context("restore task failed")?
    .with_context(|| format!("cannot restore from {}", config.node.data_dir.display()))?;
    let transport = transport(&config)?;
    let server = bind_node(&node, member.addr, &identity, transport.clone())?;
    let peers: Vec<MemberConfig> = config
        .cluster
        .nodes
        .iter()
        .filter(|m| m.id != member.id)
        .cloned()
        .collect();
    let peers: HashMap<NodeId, Arc<dyn NodeClient>> = clients(&peers, &identity, transport)?
        .into_iter()
        .map(|c| (c.node(), c))
        .collect();
    let shutdown = crate::commands::Shutdown::from_future(shutdown);
    tokio::spawn(repair(node.clone(), map, peers, shutdown.wait()));
    let active = restored.map_or_else(|| "none yet".to_string(), |v| v.to_string());
    crate::commands::print_line(&format!(
        "scoregrid node {id} listening on quic://{}, holding {} partitions, active model: {active}",
        server.local_addr(),
        must_hold.len()
    ))?;
    let service = NodeService::new(node, server.clock().clone(), None);
    server
        .serve(Arc::new(service) as Arc<dyn Service>, shutdown.wait())
        .await;
    Ok(())
}

/// How long a node waits before asking again for partitions no peer could give.
const REPAIR_RETRY: Duration = Duration::from_secs(2);

/// Fetches back, from their other replicas, the partitions of the active version that the
/// placement gives this node but that it lacks (lost or corrupt on disk), until none is
/// missing or `shutdown`. Meanwhile the router reads those partitions from the other replicas.
async fn repair(
    node: Arc<Node>,
    map: ClusterMap,
    peers: HashMap<NodeId, Arc<dyn NodeClient>>,
    shutdown: impl Future<Output = ()>,
) {
    use scoregrid_wire::admin::AdminCalls;
    let mut shutdown = std::pin::pin!(shutdown);
    while let Some((version, missing)) = node.missing_partitions() {
        for partition in missing {
            for peer in map
                .placement
                .replicas(partition)
                .iter()
                .filter(|&&n| n != node.id())
            {
                let Some(client) = peers.get(peer) else {
                    continue;
                };
                let bytes = match client.read_partition(version.clone(), partition).await {
                    Ok(bytes) => bytes,
                    Err(error) => {
                        tracing::warn!(%partition, %peer, %error, "cannot fetch a missing partition");
                        continue;
                    }
                };
                let adopting = node.clone();
                match tokio::task::spawn_blocking(move || adopting.adopt_partition(&bytes)).await {
                    Ok(Ok(_)) => {
                        tracing::info!(%partition, %peer, %version, "missing partition fetched back from a replica");
                        break;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%partition, %peer, %error, "fetched partition refused")
                    }
                    Err(error) => {
                        tracing::warn!(%partition, %error, "partition adoption task failed")
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(REPAIR_RETRY) => {}
            () = &mut shutdown => return,
        }
    }
}

/// QUIC clients to every member, sharing one UDP socket.
pub fn clients(
    members: &[MemberConfig],
    identity: &Identity,
    transport: TransportConfig,
) -> Result<Vec<Arc<dyn NodeClient>>> {
    let endpoint = ClientEndpoint::bind(SocketAddr::from(([0, 0, 0, 0], 0)), identity, transport)
        .context("cannot open the client endpoint")?;
    members
        .iter()
        .map(|m| {
            let client = QuicClient::with_endpoint(&endpoint, NodeId(m.id), m.addr, m.name.clone())
                .with_context(|| format!("node {} ({})", m.id, m.addr))?;
            Ok(Arc::new(client) as Arc<dyn NodeClient>)
        })
        .collect()
}

/// A router state that follows `clients` (first round done before returning, so that a
/// cluster with a model is ready at once) and keeps following them until `shutdown`.
pub async fn start_router(
    config: Config,
    map: ClusterMap,
    clients: Vec<Arc<dyn NodeClient>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Arc<RouterState> {
    let state = Arc::new(RouterState::new(config));
    let policy = state.routee_policy();
    let routees: HashMap<NodeId, Arc<Routee>> = clients
        .into_iter()
        .map(|c| (c.node(), Arc::new(Routee::new(c, policy))))
        .collect();
    let interval = Duration::from_millis(state.config.router.refresh_interval_ms);
    discovery::refresh(&state, &map, &routees, interval).await;
    tokio::spawn(discovery::follow_nodes(
        state.clone(),
        map,
        routees,
        shutdown,
    ));
    state
}

/// `scoregrid router --config FILE`.
pub async fn run_router(config: Config, shutdown: crate::commands::Shutdown) -> Result<()> {
    let identity = identity(&config)?;
    let map = static_map(&config)?;
    let clients = clients(&config.cluster.nodes, &identity, transport(&config)?)?;
    let listener = tokio::net::TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.addr))?;
    let addr = listener.local_addr()?;
    let state = start_router(config, map, clients, shutdown.wait()).await;
    let active = state
        .view()
        .and_then(|v| v.map.active_model().cloned())
        .map_or_else(|| "none yet".to_string(), |v| v.to_string());
    crate::commands::print_line(&format!(
        "scoregrid router listening on http://{addr}, active model: {active}"
    ))?;
    scoregrid_router::serve(state, listener, shutdown.wait()).await?;
    Ok(())
}
