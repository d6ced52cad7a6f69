//! The long-running processes: `scoregrid node` (a data node and its Raft member) and
//! `scoregrid router` (the HTTP API following the cluster map), and the pieces of them that
//! `demo`, `cluster local` and the operator commands reuse. This is where configuration
//! becomes transport settings, identities, Raft settings and running servers.

use anyhow::{Context, Result};
use scoregrid_config::{Config, MemberConfig};
use scoregrid_node::follow::RaftMember;
use scoregrid_node::store::Store;
use scoregrid_node::{Control, Node, NodeService, StagingLane};
use scoregrid_raft::client::{ClusterClient, FollowSettings, Seed, follow_map};
use scoregrid_raft::member::{Member, MemberSettings};
use scoregrid_raft::peers::{PeerClients, QuicPeers};
use scoregrid_raft::{ClusterMap, MapCommand, NodeInfo, NodeState, RaftPeer, ReplicationFactor};
use scoregrid_router::discovery::ClientMaker;
use scoregrid_router::{RouterState, discovery};
use scoregrid_shard::PartitionCount;
use scoregrid_wire::{
    ClientEndpoint, Identity, NodeClient, NodeId, QuicClient, QuicServer, Role, Service,
    TransportConfig,
};
use std::collections::BTreeMap;
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

/// A node of `[cluster]` as a first map records it: up.
fn node_info(m: &MemberConfig, voter: bool) -> NodeInfo {
    NodeInfo {
        id: NodeId(m.id),
        address: m.addr.to_string(),
        name: m.name.clone(),
        state: NodeState::Up,
        voter,
        admin: m.admin.map(|a| a.to_string()),
    }
}

/// The static cluster map of `[cluster]` and `[placement]`, every listed node Up: the demo's
/// in-process cluster, which runs no Raft.
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
    let nodes = members.iter().map(|m| node_info(m, false)).collect();
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

/// The Raft settings of this node: voters from `raft.voters` (or derived) with their
/// addresses and names from `cluster.nodes`, the bootstrap map of `[cluster]` and
/// `[placement]`, and the timings of `[raft]`.
///
/// # Errors
/// When a voter is not in `cluster.nodes`, or the placement cannot be made from them.
pub fn member_settings(config: &Config, id: NodeId, joining: bool) -> Result<MemberSettings> {
    let voter_ids = config.voters();
    let peer_of = |m: &MemberConfig| RaftPeer {
        address: m.addr.to_string(),
        name: m.name.clone(),
    };
    let voters: BTreeMap<u64, RaftPeer> = voter_ids
        .iter()
        .map(|v| {
            let m = config
                .cluster
                .nodes
                .iter()
                .find(|m| m.id == *v)
                .with_context(|| format!("raft.voters: {v} is not one of cluster.nodes"))?;
            Ok((*v, peer_of(m)))
        })
        .collect::<Result<_>>()?;
    let nodes: Vec<NodeInfo> = config
        .cluster
        .nodes
        .iter()
        .map(|m| node_info(m, voter_ids.contains(&m.id)))
        .collect();
    let rf = config
        .placement
        .replication_factor
        .min(nodes.len().max(1) as u32);
    let r = &config.raft;
    let ms = Duration::from_millis;
    Ok(MemberSettings {
        id,
        voters,
        bootstrap: MapCommand::Bootstrap {
            nodes,
            partitions: config.placement.partitions,
            replication_factor: rf,
            virtual_nodes: config.placement.virtual_nodes,
            versions_retained: config.node.versions_retained,
        },
        // A node that joins an existing cluster never starts one of its own.
        auto_initialize: !joining,
        heartbeat: ms(r.heartbeat_ms),
        election_timeout_min: ms(r.election_timeout_min_ms),
        election_timeout_max: ms(r.election_timeout_max_ms),
        down_after: ms(r.down_after_ms),
        up_after: ms(r.up_after_ms),
        client_timeout: ms(r.client_timeout_ms),
        stale_after: ms(r.stale_after_ms),
        snapshot_logs: r.snapshot_logs,
    })
}

/// The nodes of `[cluster]`, or the one address given on the command line.
pub fn seeds(config: &Config, cluster: Option<SocketAddr>) -> Vec<Seed> {
    match cluster {
        Some(addr) => vec![Seed {
            id: None,
            addr,
            name: None,
        }],
        None => config
            .cluster
            .nodes
            .iter()
            .map(|m| Seed {
                id: Some(NodeId(m.id)),
                addr: m.addr,
                name: Some(m.name.clone()),
            })
            .collect(),
    }
}

/// `scoregrid node --config FILE [--join ADDR]`.
pub async fn run_node(
    config: Config,
    join: Option<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // Install the recorder before anything counts.
    let prometheus = scoregrid_router::telemetry::prometheus();
    let member = config.this_member()?.clone();
    let id = NodeId(member.id);
    let identity = identity(&config)?;
    let data_dir = config.node.data_dir.clone();
    let store = Store::open(&data_dir)
        .with_context(|| format!("cannot open node.data_dir {}", data_dir.display()))?;
    let node = Arc::new(Node::with_control(
        id,
        // The cluster map decides which versions stay (its retention, `model drop`); the
        // bootstrap copies `node.versions_retained` into it.
        Control::new(store, Vec::new(), scoregrid_node::control::RETAINED_BY_MAP),
    ));
    let restored = tokio::task::spawn_blocking({
        let node = node.clone();
        move || node.restore()
    })
    .await
    .context("restore task failed")?
    .with_context(|| format!("cannot restore from {}", data_dir.display()))?;
    let transport = transport(&config)?;
    let server = bind_node(&node, member.addr, &identity, transport)?;
    // One socket for both directions: the node's calls leave from its own address.
    let endpoint = server
        .client_endpoint(&identity)
        .context("cannot prepare the node's client side")?;
    let peers: Arc<dyn PeerClients> = Arc::new(QuicPeers::new(endpoint.clone()));
    let settings = member_settings(&config, id, join.is_some())?;
    let voter = settings.voters.contains_key(&id.0);
    let raft_member = Member::start(settings, &data_dir.join("raft"), peers.clone())
        .await
        .context("cannot start the node's Raft member")?;
    let shutdown = crate::commands::Shutdown::from_future(shutdown);
    tokio::spawn(scoregrid_node::follow::follow_map(
        node.clone(),
        raft_member.clone(),
        server.clock().clone(),
        peers,
        shutdown.wait(),
    ));
    if let Some(addr) = config.admin_addr()? {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on node.admin_addr {addr}"))?;
        tokio::spawn(crate::admin::serve(
            listener,
            node.clone(),
            raft_member.clone(),
            prometheus,
            shutdown.wait(),
        ));
    }
    if let Some(join) = join {
        let admin = config.admin_addr()?.map(|a| a.to_string());
        tokio::spawn(join_cluster(
            endpoint.clone(),
            join,
            MapCommand::Join {
                id,
                address: member.addr.to_string(),
                name: member.name.clone(),
                admin,
            },
            Duration::from_millis(config.raft.client_timeout_ms),
            shutdown.wait(),
        ));
    }
    let active = restored.map_or_else(|| "none yet".to_string(), |v| v.to_string());
    crate::commands::print_line(&format!(
        "scoregrid node {id} listening on quic://{}, {}, active model: {active}",
        server.local_addr(),
        if voter { "raft voter" } else { "raft learner" },
    ))?;
    let lane = StagingLane::start(&id.to_string(), config.node.staging_nice)
        .context("node.staging_nice")?;
    let service = NodeService::new(
        node,
        server.clock().clone(),
        Some(Arc::new(RaftMember(raft_member.clone()))),
    )
    .with_staging_lane(lane);
    // A node whose Raft has stopped takes no part in the cluster any more: stop the process
    // (with an error, so that a supervisor restarts it) rather than serve on silently.
    let failure = {
        let member = raft_member.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let reason = member.failed().await;
            tracing::error!(%reason, "the node's Raft member stopped: shutting the node down");
            shutdown.trigger();
            reason
        })
    };
    server
        .serve(Arc::new(service) as Arc<dyn Service>, shutdown.wait())
        .await;
    // Asked before shutting the member down, which stops it too.
    let failed = failure.is_finished();
    failure.abort();
    raft_member.shutdown().await;
    if failed {
        anyhow::bail!("the node's Raft member stopped; see the log above for why");
    }
    Ok(())
}

/// `--join ADDR`: asks the cluster, through the node at `addr`, to add this node (state
/// joining); retries until it is done or `shutdown`.
async fn join_cluster(
    endpoint: ClientEndpoint,
    addr: SocketAddr,
    join: MapCommand,
    timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let seed = Seed {
        id: None,
        addr,
        name: None,
    };
    let client = ClusterClient::new(&endpoint, &[seed], timeout + Duration::from_secs(1));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        match client.propose(join.clone(), Role::Node).await {
            Ok(response) => {
                tracing::info!(via = %addr, ?response, "joined the cluster: state joining, holding no partitions until the rebalancing gives it some");
                return;
            }
            Err(error) => {
                tracing::warn!(via = %addr, %error, "cannot join the cluster yet; trying again")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
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

/// `scoregrid router --config FILE`: the HTTP API in front of the cluster, following its map.
pub async fn run_router(config: Config, shutdown: crate::commands::Shutdown) -> Result<()> {
    let identity = identity(&config)?;
    let endpoint = ClientEndpoint::bind(config.router.quic_bind, &identity, transport(&config)?)
        .with_context(|| format!("cannot bind router.quic_bind {}", config.router.quic_bind))?;
    let followed = follow_map(
        endpoint.clone(),
        seeds(&config, None),
        FollowSettings {
            wait: Duration::from_millis(config.router.watch_wait_ms),
            stale_after: Duration::from_millis(config.raft.stale_after_ms),
        },
        shutdown.wait(),
    );
    let listener = tokio::net::TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.addr))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(RouterState::new(config));
    let make_client: Arc<ClientMaker> = Arc::new(move |node: &NodeInfo| {
        let addr: SocketAddr = node.address.parse().ok()?;
        QuicClient::with_endpoint(&endpoint, node.id, addr, node.name.clone())
            .ok()
            .map(|c| Arc::new(c) as Arc<dyn NodeClient>)
    });
    tokio::spawn(discovery::follow_map(
        state.clone(),
        followed,
        make_client,
        shutdown.wait(),
    ));
    crate::commands::print_line(&format!(
        "scoregrid router listening on http://{addr}, following the cluster map"
    ))?;
    scoregrid_router::serve(state, listener, shutdown.wait()).await?;
    Ok(())
}
