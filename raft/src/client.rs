//! The cluster as seen from outside the Raft group: routers, loaders and the operator's commands
//! reach it through any node.
//!
//! - [`ClusterClient`]: one request to the first node that answers (proposals are forwarded to
//!   the leader by the node), with the typed calls the commands need.
//! - [`follow_map`]: the map watch a router runs: the current map first, then every change, by
//!   long polls to one node at a time; on failure, or when that node says its map is stale, the
//!   next node is asked. Nodes listed in the map join the seeds, so a router started with one
//!   address finds the others. An epoch seen on any reply of the process (its transport's
//!   [`EpochClock`]) that is newer than the map followed triggers a poll at once.

use crate::command::{MapCommand, MapResponse};
use crate::map::{ClusterMap, Epoch};
use crate::member::decode_cluster_reply;
use crate::protocol::{ClusterError, ClusterReply, ClusterRequest, MapView, MemberStatus};
use scoregrid_wire::{ClientEndpoint, EpochClock, NodeClient, NodeId, QuicClient, Request, Role};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// A node to start from: its address, and its id and certificate name when known (an
/// operator's `--cluster ADDR` knows only the address; node certificates carry their IP
/// address as an alternative name, which TLS then checks instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    pub id: Option<NodeId>,
    pub addr: SocketAddr,
    pub name: Option<String>,
}

impl Seed {
    fn client(&self, endpoint: &ClientEndpoint) -> Option<Arc<dyn NodeClient>> {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| self.addr.ip().to_string());
        let client = match self.id {
            Some(id) => QuicClient::with_endpoint(endpoint, id, self.addr, name),
            None => QuicClient::to_address(endpoint, self.addr, name),
        };
        match client {
            Ok(client) => Some(Arc::new(client)),
            Err(error) => {
                tracing::warn!(addr = %self.addr, %error, "cannot make a client to a seed node");
                None
            }
        }
    }
}

/// Why a request to the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// What the cluster answered (no quorum, not allowed, refused).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// No node answered at all.
    #[error("no node answered: {0}")]
    Unreachable(String),
}

impl ClientError {
    /// The command line's exit code: 3 when no quorum (or no node) could be reached, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Cluster(ClusterError::NoQuorum(_)) | ClientError::Unreachable(_) => 3,
            ClientError::Cluster(_) => 1,
        }
    }
}

pub struct ClusterClient {
    nodes: Vec<(Seed, Arc<dyn NodeClient>)>,
    /// The node that answered last: asked first next time, so that a dead seed costs one
    /// timeout, not one per request.
    preferred: std::sync::atomic::AtomicUsize,
    /// How long one request may take (a proposal waits for the cluster's `client_timeout`).
    timeout: Duration,
}

impl ClusterClient {
    /// Clients to `seeds` on `endpoint`; each request goes to the first that answers.
    pub fn new(endpoint: &ClientEndpoint, seeds: &[Seed], timeout: Duration) -> Self {
        let nodes = seeds
            .iter()
            .filter_map(|seed| Some((seed.clone(), seed.client(endpoint)?)))
            .collect();
        Self::with_clients(nodes, timeout)
    }

    /// Clients to the given nodes (any transport); each request goes to the first that
    /// answers.
    pub fn with_clients(nodes: Vec<(Seed, Arc<dyn NodeClient>)>, timeout: Duration) -> Self {
        Self {
            nodes,
            preferred: std::sync::atomic::AtomicUsize::new(0),
            timeout,
        }
    }

    /// This client, with every node of `map` that is not one of its seeds after them: a long
    /// task (a load) that began through one node goes on through the others when that one
    /// stops answering. (A node that answers, even "no quorum", is not passed over.)
    pub fn with_nodes_of(&self, endpoint: &ClientEndpoint, map: &ClusterMap) -> Self {
        let mut nodes = self.nodes.clone();
        for node in &map.nodes {
            let Ok(addr) = node.address.parse::<SocketAddr>() else {
                continue;
            };
            if nodes.iter().any(|(seed, _)| seed.addr == addr) {
                continue;
            }
            let seed = Seed {
                id: Some(node.id),
                addr,
                name: Some(node.name.clone()),
            };
            if let Some(client) = seed.client(endpoint) {
                nodes.push((seed, client));
            }
        }
        Self::with_clients(nodes, self.timeout)
    }

    /// Sends `request` to each seed in turn until one answers.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] with every node's error when none answered.
    pub async fn call(&self, request: &ClusterRequest) -> Result<ClusterReply, ClientError> {
        let payload = scoregrid_wire::codec::encode(request)
            .map_err(|e| ClientError::Unreachable(format!("request does not encode: {e}")))?;
        let mut errors = Vec::new();
        let first = self
            .preferred
            .load(std::sync::atomic::Ordering::Relaxed)
            .min(self.nodes.len().saturating_sub(1));
        let order = (0..self.nodes.len()).map(|i| (first + i) % self.nodes.len());
        for at in order {
            let (seed, client) = &self.nodes[at];
            let deadline = Instant::now() + self.timeout;
            let call = client.call_until(Request::Cluster(payload.clone()), Some(deadline));
            match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(response)) => match decode_cluster_reply(response) {
                    Ok(reply) => {
                        self.preferred
                            .store(at, std::sync::atomic::Ordering::Relaxed);
                        return Ok(reply);
                    }
                    Err(error) => errors.push(format!("{}: {error}", seed.addr)),
                },
                Ok(Err(error)) => errors.push(format!("{}: {error}", seed.addr)),
                Err(_) => errors.push(format!(
                    "{}: no answer within {} ms",
                    seed.addr,
                    self.timeout.as_millis()
                )),
            }
        }
        if errors.is_empty() {
            errors.push("no node is configured".into());
        }
        Err(ClientError::Unreachable(errors.join("; ")))
    }

    /// Commits `command` through the leader.
    ///
    /// # Errors
    /// [`ClientError`]: no quorum, refused by the map, not allowed for this certificate, or no
    /// node reachable.
    pub async fn propose(
        &self,
        command: MapCommand,
        role: Role,
    ) -> Result<MapResponse, ClientError> {
        let request = ClusterRequest::Propose {
            command,
            origin: role,
            forwarded: false,
        };
        match self.call(&request).await? {
            ClusterReply::Proposed(response) => Ok(response),
            ClusterReply::Error(error) => Err(error.into()),
            other => Err(ClusterError::Refused(format!("unexpected answer {other:?}")).into()),
        }
    }

    /// The map as the first node that answers holds it.
    ///
    /// # Errors
    /// As [`ClusterClient::call`].
    pub async fn map(&self) -> Result<MapView, ClientError> {
        let request = ClusterRequest::Watch {
            after: Epoch(u64::MAX),
            wait_ms: 0,
        };
        match self.call(&request).await? {
            ClusterReply::Map(view) => Ok(*view),
            ClusterReply::Error(error) => Err(error.into()),
            other => Err(ClusterError::Refused(format!("unexpected answer {other:?}")).into()),
        }
    }

    /// The first answering node's map once it holds `epoch` (a change this client made: a
    /// follower applies a committed change a heartbeat or more after the leader answered,
    /// and one cut off from the leader never does). Waits at most about the client's timeout;
    /// the view it returns may still be older, which the caller must check.
    ///
    /// # Errors
    /// As [`ClusterClient::call`].
    pub async fn map_at_least(&self, epoch: Epoch) -> Result<MapView, ClientError> {
        let wait = self.timeout.saturating_sub(Duration::from_millis(200));
        let request = ClusterRequest::Watch {
            after: Epoch(epoch.0.saturating_sub(1)),
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        match self.call(&request).await? {
            ClusterReply::Map(view) => Ok(*view),
            ClusterReply::Error(error) => Err(error.into()),
            other => Err(ClusterError::Refused(format!("unexpected answer {other:?}")).into()),
        }
    }

    /// The first answering node's own view of the group.
    ///
    /// # Errors
    /// As [`ClusterClient::call`].
    pub async fn status(&self) -> Result<MemberStatus, ClientError> {
        match self.call(&ClusterRequest::Status).await? {
            ClusterReply::Status(status) => Ok(*status),
            ClusterReply::Error(error) => Err(error.into()),
            other => Err(ClusterError::Refused(format!("unexpected answer {other:?}")).into()),
        }
    }

    /// `scoregrid cluster init`: initialise the group now with its configured voters.
    ///
    /// # Errors
    /// As [`ClusterClient::call`].
    pub async fn initialize(&self) -> Result<(), ClientError> {
        match self.call(&ClusterRequest::Initialize).await? {
            ClusterReply::Initialized => Ok(()),
            ClusterReply::Error(error) => Err(error.into()),
            other => Err(ClusterError::Refused(format!("unexpected answer {other:?}")).into()),
        }
    }
}

/// The map a router follows, and what it knows of its freshness.
#[derive(Clone, Debug, Default)]
pub struct FollowedMap {
    pub map: Option<Arc<ClusterMap>>,
    pub leader: Option<NodeId>,
    pub term: u64,
    /// The node the map came from last.
    pub source: Option<NodeId>,
    /// This process may be following an out-of-date map: no node with contact to a quorum has
    /// answered it for `stale_after`.
    pub stale: bool,
}

impl FollowedMap {
    pub fn epoch(&self) -> Epoch {
        self.map.as_ref().map_or(Epoch(0), |m| m.epoch)
    }
}

/// How [`follow_map`] polls.
#[derive(Clone, Copy, Debug)]
pub struct FollowSettings {
    /// How long one long poll may be held by a node.
    pub wait: Duration,
    /// Without an answer from a node in contact with a quorum for this long, the map is stale.
    pub stale_after: Duration,
}

/// Makes the client a map follower calls a node through (QUIC in a process; the seeded
/// network in the simulation).
pub type SeedClients = dyn Fn(&Seed) -> Option<Arc<dyn NodeClient>> + Send + Sync;

/// Follows the map through `seeds` (and the nodes of the map) until `shutdown`.
pub fn follow_map(
    endpoint: ClientEndpoint,
    seeds: Vec<Seed>,
    settings: FollowSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> watch::Receiver<FollowedMap> {
    let clock = endpoint.clock().clone();
    let clients: Arc<SeedClients> = Arc::new(move |seed: &Seed| seed.client(&endpoint));
    follow_map_with(clock, clients, seeds, settings, shutdown)
}

/// [`follow_map`] over any transport: `clients` makes the client to a node, `clock` is the
/// epoch clock of the process (a newer epoch observed on it triggers a poll at once).
pub fn follow_map_with(
    clock: Arc<EpochClock>,
    clients: Arc<SeedClients>,
    seeds: Vec<Seed>,
    settings: FollowSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> watch::Receiver<FollowedMap> {
    let (sender, receiver) = watch::channel(FollowedMap {
        stale: true,
        ..FollowedMap::default()
    });
    tokio::spawn(async move {
        tokio::select! {
            () = follow(clock, clients, seeds, settings, sender) => {}
            () = shutdown => {}
        }
    });
    receiver
}

async fn follow(
    clock: Arc<EpochClock>,
    clients: Arc<SeedClients>,
    seeds: Vec<Seed>,
    settings: FollowSettings,
    sender: watch::Sender<FollowedMap>,
) {
    let mut sources = Sources::new(clients, seeds);
    let mut observed = clock.subscribe();
    let mut last_fresh: Option<Instant> = None;
    let mut failures_in_a_row = 0usize;
    loop {
        let current = sender.borrow().clone();
        let epoch = current.epoch();
        // A newer epoch was seen on the wire: ask at once (and elsewhere if this source lags).
        let behind = clock.observed() > epoch.0;
        let wait = if behind {
            Duration::ZERO
        } else {
            settings.wait
        };
        let Some((id, client)) = sources.current() else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let request = ClusterRequest::Watch {
            after: epoch,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        let Ok(payload) = scoregrid_wire::codec::encode(&request) else {
            return;
        };
        // A node answers a watch by `wait`; half a second more and it is taken for gone.
        let deadline = Instant::now() + wait + Duration::from_millis(500);
        let call = client.call_until(Request::Cluster(payload), Some(deadline));
        let outcome = tokio::select! {
            outcome = tokio::time::timeout_at(deadline, call) => Some(outcome),
            changed = observed.changed(), if !behind => {
                if changed.is_err() {
                    return;
                }
                None
            }
        };
        let view = match outcome {
            // A newer epoch was observed while waiting: poll again at once.
            None => continue,
            Some(Ok(Ok(response))) => match decode_cluster_reply(response) {
                Ok(ClusterReply::Map(view)) => Some(*view),
                Ok(other) => {
                    tracing::debug!(node = ?id, ?other, "unexpected answer to a map watch");
                    None
                }
                Err(error) => {
                    tracing::debug!(node = ?id, %error, "map watch refused");
                    None
                }
            },
            Some(Ok(Err(error))) => {
                tracing::debug!(node = ?id, %error, "map watch failed");
                None
            }
            Some(Err(_)) => None,
        };
        let now = Instant::now();
        match view {
            Some(view) => {
                failures_in_a_row = 0;
                if !view.stale {
                    last_fresh = Some(now);
                }
                let newer = view.epoch() > epoch;
                if let Some(map) = &view.map {
                    sources.learn(map);
                }
                let stale = view.stale
                    && last_fresh.is_none_or(|at| now.duration_since(at) > settings.stale_after);
                let next = FollowedMap {
                    map: if newer {
                        view.map.map(Arc::new)
                    } else {
                        current.map.clone()
                    },
                    leader: view.leader,
                    term: view.term,
                    source: Some(view.source),
                    stale,
                };
                if newer {
                    clock.set_own(next.epoch().0);
                    tracing::info!(epoch = %next.epoch(), source = %view.source, "cluster map updated");
                }
                publish(&sender, next);
                if view.stale || (behind && !newer) {
                    // This node is cut off from the quorum, or behind what others said: try
                    // another one.
                    sources.rotate();
                }
            }
            None => {
                failures_in_a_row += 1;
                sources.rotate();
                let fresh =
                    last_fresh.is_some_and(|at| now.duration_since(at) <= settings.stale_after);
                if !fresh && !current.stale {
                    tracing::warn!(epoch = %epoch, "no node in contact with a quorum answers: the map may be stale");
                    publish(
                        &sender,
                        FollowedMap {
                            stale: true,
                            ..current
                        },
                    );
                }
                if failures_in_a_row >= sources.len().max(1) {
                    // Every node failed in a row: pause before the next round.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

fn publish(sender: &watch::Sender<FollowedMap>, next: FollowedMap) {
    sender.send_if_modified(|held| {
        let changed = held.epoch() != next.epoch()
            || held.stale != next.stale
            || held.leader != next.leader
            || held.term != next.term;
        *held = next;
        changed
    });
}

/// The nodes a follower may ask: the seeds, then the nodes of the map.
struct Sources {
    make: Arc<SeedClients>,
    clients: Vec<(Option<NodeId>, Arc<dyn NodeClient>)>,
    known: BTreeMap<NodeId, String>,
    next: usize,
}

impl Sources {
    fn new(make: Arc<SeedClients>, seeds: Vec<Seed>) -> Self {
        let clients = seeds
            .iter()
            .filter_map(|seed| Some((seed.id, make(seed)?)))
            .collect();
        Self {
            make,
            clients,
            known: BTreeMap::new(),
            next: 0,
        }
    }

    fn len(&self) -> usize {
        self.clients.len()
    }

    fn current(&self) -> Option<(Option<NodeId>, Arc<dyn NodeClient>)> {
        self.clients
            .get(self.next % self.clients.len().max(1))
            .cloned()
    }

    fn rotate(&mut self) {
        self.next = self.next.wrapping_add(1);
    }

    /// Adds the nodes of `map` not known yet (and follows a node's new address).
    fn learn(&mut self, map: &ClusterMap) {
        for node in &map.nodes {
            if self.known.get(&node.id) == Some(&node.address) {
                continue;
            }
            let Ok(addr) = node.address.parse::<SocketAddr>() else {
                continue;
            };
            let seed = Seed {
                id: Some(node.id),
                addr,
                name: Some(node.name.clone()),
            };
            if let Some(client) = (self.make)(&seed) {
                self.clients.retain(|(id, _)| *id != Some(node.id));
                self.clients.push((Some(node.id), client));
                self.known.insert(node.id, node.address.clone());
            }
        }
    }
}
