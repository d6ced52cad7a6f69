//! [`Member`]: one node's part in the Raft group, and the cluster-control service every node
//! offers. It owns the openraft instance (log and state machine in `<data_dir>/raft/`), answers
//! Raft RPCs from peers and cluster-control requests from any process, and runs the controller.
//!
//! The controller is a loop on every member that acts only while the member leads:
//! - a new cluster: the lowest voter initialises the group once every voter answers (or an
//!   operator runs `cluster init`), and the first leader proposes the bootstrap map;
//! - learners: every node of the map that is not a voter is made a learner, and learners that
//!   left the map are removed, so every node replicates the log;
//! - failure detection: a node silent for `down_after` (no answer to the leader's heartbeats) is
//!   marked down; a down node answering again for `up_after` is marked up (flap damping). Nodes
//!   in maintenance, joining or leaving are left alone.
//!
//! Writes (map commands) may be sent to any member: a follower forwards them to the leader, once
//! (the forwarded copy is not forwarded again). A write that no leader with a quorum commits
//! within `client_timeout` fails with [`ClusterError::NoQuorum`].

use crate::command::{MapCommand, MapResponse};
use crate::log_store::LogStore;
use crate::map::{ClusterMap, Epoch, NodeState};
use crate::network::{Liveness, Network, QuorumContact, leader_quorum_age};
use crate::peers::PeerClients;
use crate::protocol::{
    ClusterError, ClusterReply, ClusterRequest, MapView, MemberStatus, RaftReply, RaftRpc,
    WATCH_WAIT_MS_MAX,
};
use crate::state_machine::StateMachine;
use crate::types::{Raft, RaftMetrics, RaftPeer};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::raft::AppendEntriesResponse;
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use scoregrid_wire::{Caller, NodeId, Request, Response, Role};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// What a member needs to know from configuration.
#[derive(Clone, Debug)]
pub struct MemberSettings {
    pub id: NodeId,
    /// The voters named in configuration (`raft.voters`), with their addresses and names.
    pub voters: BTreeMap<u64, RaftPeer>,
    /// The first map, proposed by the first leader of a new cluster.
    pub bootstrap: MapCommand,
    /// The lowest voter initialises the group by itself once every voter answers.
    pub auto_initialize: bool,
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// A node silent this long is marked down by the leader.
    pub down_after: Duration,
    /// A down node answering this long is marked up again.
    pub up_after: Duration,
    /// How long a write may take to commit before it fails with "no quorum".
    pub client_timeout: Duration,
    /// A member without contact with a quorum (or its leader) this long says its map is stale.
    pub stale_after: Duration,
    /// Log entries between snapshots.
    pub snapshot_logs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("raft storage in {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("raft configuration: {0}")]
    Config(String),
    #[error("raft failed to start: {0}")]
    Start(String),
}

pub struct Member {
    settings: MemberSettings,
    raft: Raft,
    /// The same log store openraft writes (a clone shares it): read for the last log id.
    log: LogStore,
    state_machine: StateMachine,
    peers: Arc<dyn PeerClients>,
    liveness: Arc<Liveness>,
    /// When this member last heard from a leader (an append it accepted).
    leader_contact: Mutex<Option<Instant>>,
    stop: watch::Sender<bool>,
}

/// Heard from within this window: a node answering heartbeats now.
fn healthy_window(heartbeat: Duration) -> Duration {
    (heartbeat * 3).max(Duration::from_millis(300))
}

impl Member {
    /// Opens the member's storage in `dir`, starts openraft and the controller.
    ///
    /// # Errors
    /// [`MemberError`] when the log or the snapshot cannot be opened (a torn log tail is not an
    /// error: it is dropped and logged), or the timings are refused by openraft.
    pub async fn start(
        settings: MemberSettings,
        dir: &Path,
        peers: Arc<dyn PeerClients>,
    ) -> Result<Arc<Self>, MemberError> {
        let storage = |source| MemberError::Storage {
            path: dir.display().to_string(),
            source,
        };
        let (log, recovery) = LogStore::open(dir).map_err(storage)?;
        if recovery.dropped_bytes > 0 {
            tracing::warn!(node = %settings.id, bytes = recovery.dropped_bytes,
                reason = recovery.dropped_reason.as_deref().unwrap_or(""),
                "raft log: a torn or corrupt tail was dropped");
            metrics::counter!("scoregrid_raft_log_tail_dropped_total").increment(1);
        }
        let state_machine = StateMachine::open(dir).map_err(storage)?;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = openraft::Config {
            cluster_name: "scoregrid".into(),
            heartbeat_interval: ms(settings.heartbeat),
            election_timeout_min: ms(settings.election_timeout_min),
            election_timeout_max: ms(settings.election_timeout_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_logs),
            // Keep some entries after a snapshot: a follower a little behind catches up from
            // the log instead of a snapshot.
            max_in_snapshot_log_to_keep: 64,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| MemberError::Config(e.to_string()))?;
        let liveness = Arc::new(Liveness::default());
        let quorum = Arc::new(QuorumContact::default());
        let network = Network {
            peers: peers.clone(),
            liveness: liveness.clone(),
            quorum: quorum.clone(),
            backoff: settings.heartbeat,
        };
        let raft = Raft::new(
            settings.id.0,
            Arc::new(config),
            network,
            log.clone(),
            state_machine.clone(),
        )
        .await
        .map_err(|e| MemberError::Start(e.to_string()))?;
        quorum.set(raft.metrics());
        let (stop, stopped) = watch::channel(false);
        let member = Arc::new(Self {
            settings,
            raft,
            log,
            state_machine,
            peers,
            liveness,
            leader_contact: Mutex::new(None),
            stop,
        });
        tokio::spawn(control(member.clone(), stopped));
        Ok(member)
    }

    pub fn id(&self) -> NodeId {
        self.settings.id
    }

    /// The map as applied on this member.
    pub fn map(&self) -> Option<Arc<ClusterMap>> {
        self.state_machine.map()
    }

    /// The map now and every change after it.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<ClusterMap>>> {
        self.state_machine.subscribe()
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// Completes when openraft has stopped on a fatal error (storage failure, panic), with its
    /// reason: the node can no longer take part in the cluster and should be restarted.
    pub async fn failed(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "raft's metrics channel closed".into();
            }
        }
    }

    /// Stops the controller and openraft.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(node = %self.settings.id, %error, "raft did not shut down cleanly");
        }
    }

    /// How long since this member had contact with a quorum: as leader, its last quorum
    /// acknowledgement; otherwise that of the leader whose append it accepted last, as the
    /// append said (a follower hears the quorum only through its leader).
    fn quorum_contact(&self, metrics: &RaftMetrics) -> Option<Duration> {
        if metrics.state == ServerState::Leader {
            return leader_quorum_age(metrics);
        }
        self.leader_contact
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map(|at| at.elapsed())
    }

    /// Whether this member's map may be out of date: no contact with a quorum for
    /// `stale_after`.
    pub fn is_stale(&self) -> bool {
        let metrics = self.metrics();
        self.quorum_contact(&metrics)
            .is_none_or(|since| since > self.settings.stale_after)
    }

    pub fn view(&self) -> MapView {
        let metrics = self.metrics();
        MapView {
            map: self.map().map(|m| ClusterMap::clone(&m)),
            source: self.settings.id,
            leader: metrics.current_leader.map(NodeId),
            term: metrics.current_term,
            stale: self
                .quorum_contact(&metrics)
                .is_none_or(|since| since > self.settings.stale_after),
        }
    }

    pub fn status(&self) -> MemberStatus {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let contact = self.quorum_contact(&metrics);
        let map = self.map();
        let now = Instant::now();
        // Only a leader hears from every member; a follower's old table would mislead.
        let leading = metrics.state == ServerState::Leader;
        let last_contact_ms = map
            .iter()
            .filter(|_| leading)
            .flat_map(|m| m.nodes.iter())
            .filter(|n| n.id != self.settings.id)
            .filter_map(|n| {
                self.liveness
                    .last_heard(n.id)
                    .map(|at| (n.id, now.saturating_duration_since(at).as_millis() as u64))
            })
            .collect();
        MemberStatus {
            node: self.settings.id,
            role: role_name(metrics.state).to_owned(),
            term: metrics.current_term,
            leader: metrics.current_leader.map(NodeId),
            commit_index: metrics.last_applied.map(|id| id.index),
            last_log_index: metrics.last_log_index,
            epoch: map.as_ref().map_or(Epoch(0), |m| m.epoch),
            stale: contact.is_none_or(|since| since > self.settings.stale_after),
            quorum_contact_ms: contact.map(|d| d.as_millis() as u64),
            voters: membership.voter_ids().map(NodeId).collect(),
            learners: membership.learner_ids().map(NodeId).collect(),
            last_contact_ms,
            map: map.map(|m| ClusterMap::clone(&m)),
        }
    }

    /// A Raft RPC from a peer. The sender must hold the certificate of the member it claims to
    /// be (when this member knows it: a member not initialised yet learns the group from the
    /// log it is sent).
    pub async fn handle_raft(&self, payload: &[u8], caller: &Caller) -> RaftReply {
        let rpc: RaftRpc = match scoregrid_wire::codec::decode(payload) {
            Ok(rpc) => rpc,
            Err(error) => {
                return RaftReply::Refused(format!("raft message does not decode: {error}"));
            }
        };
        if caller.peer.role != Role::Node {
            return RaftReply::Refused(format!(
                "raft messages need a node certificate; {:?} is a {} certificate",
                caller.peer.name, caller.peer.role
            ));
        }
        if let Some(sender) = rpc.sender() {
            let metrics = self.metrics();
            let known = metrics
                .membership_config
                .membership()
                .get_node(&sender)
                .map(|peer| peer.name.clone());
            if let Some(name) = known
                && name != caller.peer.name
            {
                tracing::warn!(node = %self.settings.id, sender, certificate = %caller.peer.name, expected = %name, "raft message from a certificate that is not the member's");
                return RaftReply::Refused(format!(
                    "member {sender} holds the certificate {name:?}, not {:?}",
                    caller.peer.name
                ));
            }
        }
        let refused = |e: &dyn std::fmt::Display| RaftReply::Refused(e.to_string());
        match rpc {
            RaftRpc::Append(request, leader_quorum_ms) => {
                match self.raft.append_entries(request).await {
                    Ok(response) => {
                        let accepted = !matches!(response, AppendEntriesResponse::HigherVote(_));
                        // The leader's last quorum acknowledgement, not this append's arrival: a
                        // leader cut off from its quorum keeps sending appends.
                        let contact = leader_quorum_ms
                            .and_then(|ms| Instant::now().checked_sub(Duration::from_millis(ms)));
                        if accepted && let Some(at) = contact {
                            let mut held = self
                                .leader_contact
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            *held = Some(held.map_or(at, |before| before.max(at)));
                        }
                        RaftReply::Append(response)
                    }
                    Err(error) => refused(&error),
                }
            }
            RaftRpc::Vote(request) => match self.raft.vote(request).await {
                Ok(response) => RaftReply::Vote(response),
                Err(error) => refused(&error),
            },
            RaftRpc::Snapshot(rpc) => {
                let crate::protocol::SnapshotRpc { vote, meta, data } = *rpc;
                let snapshot = openraft::Snapshot {
                    meta,
                    snapshot: Box::new(data),
                };
                match self.raft.install_full_snapshot(vote, snapshot).await {
                    Ok(response) => RaftReply::Snapshot(response),
                    Err(error) => refused(&error),
                }
            }
        }
    }

    /// A cluster-control request from any process.
    pub async fn handle_cluster(&self, payload: &[u8], caller: &Caller) -> ClusterReply {
        let request: ClusterRequest = match scoregrid_wire::codec::decode(payload) {
            Ok(request) => request,
            Err(error) => {
                return ClusterReply::Error(ClusterError::Refused(format!(
                    "cluster request does not decode: {error}"
                )));
            }
        };
        match request {
            ClusterRequest::Ping => {
                let metrics = self.metrics();
                ClusterReply::Pong {
                    epoch: self.map().map_or(Epoch(0), |m| m.epoch),
                    initialized: self.is_initialized(),
                    last_log: self.last_log_id().await,
                    leader_contact_ms: self
                        .quorum_contact(&metrics)
                        .map(|since| since.as_millis() as u64),
                }
            }
            ClusterRequest::Watch { after, wait_ms } => {
                let wait = Duration::from_millis(u64::from(wait_ms.min(WATCH_WAIT_MS_MAX)));
                // Answer a little before the caller gives up, so that it gets the map.
                let until = (Instant::now() + wait).min(
                    caller
                        .deadline
                        .checked_sub(Duration::from_millis(50))
                        .unwrap_or(caller.deadline),
                );
                ClusterReply::Map(Box::new(self.watch(after, until).await))
            }
            ClusterRequest::Status => ClusterReply::Status(Box::new(self.status())),
            ClusterRequest::Propose {
                command,
                origin,
                forwarded,
            } => {
                // A node relays its own caller's role; anyone else speaks for itself.
                let origin = if caller.peer.role == Role::Node {
                    origin
                } else {
                    caller.peer.role
                };
                if let Err(error) = authorize(&command, origin, caller, forwarded) {
                    return ClusterReply::Error(error);
                }
                let deadline = (Instant::now() + self.settings.client_timeout).min(caller.deadline);
                match self.propose(command, origin, forwarded, deadline).await {
                    Ok(response) => ClusterReply::Proposed(response),
                    Err(error) => ClusterReply::Error(error),
                }
            }
            ClusterRequest::Initialize => {
                if caller.peer.role != Role::Operator {
                    return ClusterReply::Error(ClusterError::NotAllowed(format!(
                        "initialising the cluster needs an operator certificate; {:?} is a {} certificate",
                        caller.peer.name, caller.peer.role
                    )));
                }
                match self.initialize().await {
                    Ok(()) => ClusterReply::Initialized,
                    Err(error) => ClusterReply::Error(error),
                }
            }
        }
    }

    async fn last_log_id(&self) -> Option<openraft::LogId<u64>> {
        self.log.last_log_id()
    }

    fn is_initialized(&self) -> bool {
        let metrics = self.metrics();
        metrics.membership_config.membership().voter_ids().count() > 0
            || metrics.last_log_index.is_some()
    }

    /// The map once its epoch is above `after`, or once this member loses (or regains) its
    /// contact with a quorum, else the current one at `until`: a watcher learns at once both of
    /// a change and that this member can no longer vouch for its map.
    async fn watch(&self, after: Epoch, until: Instant) -> MapView {
        let mut maps = self.subscribe();
        let stale_at_start = self.is_stale();
        let newer = |map: &Option<Arc<ClusterMap>>| map.as_ref().is_some_and(|m| m.epoch > after);
        let staleness_changed = async {
            let mut tick = tokio::time::interval(self.settings.heartbeat);
            loop {
                tick.tick().await;
                if self.is_stale() != stale_at_start {
                    return;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout_at(until, maps.wait_for(newer)) => {}
            () = staleness_changed => {}
        }
        self.view()
    }

    /// Initialises the group with the configured voters (a no-op on an initialised member).
    ///
    /// # Errors
    /// [`ClusterError::Refused`] when openraft refuses for another reason than "already
    /// initialised".
    pub async fn initialize(&self) -> Result<(), ClusterError> {
        match self.raft.initialize(self.settings.voters.clone()).await {
            Ok(()) => {
                tracing::info!(node = %self.settings.id, voters = ?self.settings.voters.keys().collect::<Vec<_>>(), "raft group initialised");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(error) => Err(ClusterError::Refused(format!(
                "cannot initialise the raft group: {error}"
            ))),
        }
    }

    /// Commits `command` through the leader (forwarding to it from a follower) by `deadline`.
    ///
    /// # Errors
    /// [`ClusterError::NoQuorum`] when nothing committed it in time, [`ClusterError::Refused`]
    /// when the map refused it, [`ClusterError::NotLeader`] for a forwarded proposal that
    /// reached a member that no longer leads.
    pub async fn propose(
        &self,
        command: MapCommand,
        origin: Role,
        forwarded: bool,
        deadline: Instant,
    ) -> Result<MapResponse, ClusterError> {
        let kind = command.kind();
        let started = Instant::now();
        let outcome = self
            .propose_until(command, origin, forwarded, deadline)
            .await;
        let label = match &outcome {
            Ok(_) => "committed",
            Err(ClusterError::NoQuorum(_)) => "no_quorum",
            Err(ClusterError::NotLeader { .. }) => "not_leader",
            Err(_) => "refused",
        };
        metrics::counter!("scoregrid_raft_proposals_total", "kind" => kind, "outcome" => label)
            .increment(1);
        if let Err(error) = &outcome {
            tracing::info!(node = %self.settings.id, kind, %error, ms = started.elapsed().as_millis() as u64, "map change not made");
        }
        outcome
    }

    async fn propose_until(
        &self,
        command: MapCommand,
        origin: Role,
        forwarded: bool,
        deadline: Instant,
    ) -> Result<MapResponse, ClusterError> {
        let retry_pause = Duration::from_millis(50);
        let mut last_problem = String::from("no leader is known");
        loop {
            if Instant::now() >= deadline {
                return Err(ClusterError::NoQuorum(
                    self.describe_no_quorum(&last_problem),
                ));
            }
            let written =
                tokio::time::timeout_at(deadline, self.raft.client_write(command.clone()));
            match written.await {
                Err(_) => {
                    return Err(ClusterError::NoQuorum(
                        self.describe_no_quorum("the leader could not commit it"),
                    ));
                }
                Ok(Ok(response)) => {
                    return match response.data {
                        MapResponse::Refused { reason } => Err(ClusterError::Refused(reason)),
                        other => Ok(other),
                    };
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to)))) => {
                    if forwarded {
                        return Err(ClusterError::NotLeader {
                            leader: to.leader_id.map(NodeId),
                        });
                    }
                    match (to.leader_id, to.leader_node) {
                        (Some(leader), Some(peer)) if leader != self.settings.id.0 => {
                            match self
                                .forward(NodeId(leader), &peer, &command, origin, deadline)
                                .await
                            {
                                Ok(response) => return Ok(response),
                                Err(ClusterError::Refused(reason)) => {
                                    return Err(ClusterError::Refused(reason));
                                }
                                Err(ClusterError::NotAllowed(reason)) => {
                                    return Err(ClusterError::NotAllowed(reason));
                                }
                                Err(other) => last_problem = format!("leader {leader}: {other}"),
                            }
                        }
                        _ => last_problem = "no leader is known".into(),
                    }
                }
                Ok(Err(RaftError::APIError(other))) => {
                    return Err(ClusterError::Refused(other.to_string()));
                }
                Ok(Err(RaftError::Fatal(fatal))) => {
                    // The entry may already be on the others' logs and commit there: the
                    // outcome is unknown, as after a timeout (exit 3), not a refusal.
                    return Err(ClusterError::NoQuorum(format!(
                        "raft stopped on node {} before the change was known to be committed                          ({fatal}); the others may still commit it: check `cluster status` or                          `model list`",
                        self.settings.id
                    )));
                }
            }
            let pause = retry_pause.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        peer: &RaftPeer,
        command: &MapCommand,
        origin: Role,
        deadline: Instant,
    ) -> Result<MapResponse, ClusterError> {
        let client = self.peers.client(leader, peer).ok_or_else(|| {
            ClusterError::NoQuorum(format!("leader {leader} has no usable address"))
        })?;
        let request = ClusterRequest::Propose {
            command: command.clone(),
            origin,
            forwarded: true,
        };
        let payload = scoregrid_wire::codec::encode(&request)
            .map_err(|e| ClusterError::Refused(format!("proposal does not encode: {e}")))?;
        let response = client
            .call_until(Request::Cluster(payload), Some(deadline))
            .await
            .map_err(|e| ClusterError::NoQuorum(e.to_string()))?;
        match decode_cluster_reply(response) {
            Ok(ClusterReply::Proposed(response)) => Ok(response),
            Ok(ClusterReply::Error(error)) => Err(error),
            Ok(_) => Err(ClusterError::Refused(
                "the leader answered another request".into(),
            )),
            Err(error) => Err(ClusterError::NoQuorum(error)),
        }
    }

    fn describe_no_quorum(&self, problem: &str) -> String {
        let metrics = self.metrics();
        let contact = self.quorum_contact(&metrics).map_or_else(
            || "never".to_owned(),
            |since| format!("{} ms ago", since.as_millis()),
        );
        format!(
            "the change was not committed within {} ms ({problem}; node {} is {} in term {}, \
             leader {}, last contact with a quorum {contact})",
            self.settings.client_timeout.as_millis(),
            self.settings.id,
            role_name(metrics.state),
            metrics.current_term,
            metrics
                .current_leader
                .map_or_else(|| "unknown".to_owned(), |l| format!("n{l}")),
        )
    }
}

/// Which roles may propose `command` (and joins only for oneself).
fn authorize(
    command: &MapCommand,
    origin: Role,
    caller: &Caller,
    forwarded: bool,
) -> Result<(), ClusterError> {
    let allowed: &[Role] = match command {
        MapCommand::Maintenance { .. } | MapCommand::Remove { .. } => &[Role::Operator],
        MapCommand::RegisterModel { .. }
        | MapCommand::ReportStaged { .. }
        | MapCommand::ActivateModel { .. }
        | MapCommand::DropModel { .. }
        | MapCommand::RetainVersions { .. } => &[Role::Loader, Role::Operator],
        MapCommand::Join { name, .. } => {
            if !forwarded && caller.peer.name != *name {
                return Err(ClusterError::NotAllowed(format!(
                    "a node joins as itself: certificate {:?} cannot join as {name:?}",
                    caller.peer.name
                )));
            }
            &[Role::Node]
        }
        MapCommand::Bootstrap { .. } | MapCommand::MarkLiveness { .. } => {
            return Err(ClusterError::NotAllowed(format!(
                "{} is made by the leader itself, not asked for",
                command.kind()
            )));
        }
    };
    if allowed.contains(&origin) {
        Ok(())
    } else {
        Err(ClusterError::NotAllowed(format!(
            "{} needs a certificate of role {}; the request came with a {origin} certificate",
            command.kind(),
            allowed
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        )))
    }
}

/// The reply inside a `Response` to a `Request::Cluster`.
///
/// # Errors
/// A message when the response is a node error, another kind, or does not decode.
pub fn decode_cluster_reply(response: Response) -> Result<ClusterReply, String> {
    match response {
        Response::Cluster(bytes) => scoregrid_wire::codec::decode(&bytes)
            .map_err(|e| format!("cluster reply does not decode: {e}")),
        Response::Error(error) => Err(error.to_string()),
        _ => Err("answered with another message kind".into()),
    }
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// The controller loop (see the module docs).
async fn control(member: Arc<Member>, mut stopped: watch::Receiver<bool>) {
    let settings = &member.settings;
    let mut tick = tokio::time::interval(settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading: Option<(u64, Instant)> = None;
    let mut healthy_since: HashMap<NodeId, Instant> = HashMap::new();
    let mut last_init_attempt: Option<Instant> = None;
    let mut last_term = 0;
    let mut elections = ElectionGuard::default();
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tick.tick() => {}
        }
        let metrics = member.metrics();
        publish_metrics(&member, &metrics);
        if let Err(fatal) = &metrics.running_state {
            tracing::error!(node = %settings.id, %fatal, "raft has stopped on this node: it takes no part in the cluster until restarted");
            return;
        }
        if metrics.current_term != last_term {
            if last_term != 0 {
                metrics::counter!("scoregrid_raft_term_changes_total").increment(1);
            }
            last_term = metrics.current_term;
        }
        if !member.is_initialized() {
            let due = last_init_attempt.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
            if settings.auto_initialize && due && is_lowest_voter(settings) {
                last_init_attempt = Some(Instant::now());
                if all_voters_answer(&member).await
                    && let Err(error) = member.initialize().await
                {
                    tracing::warn!(node = %settings.id, %error, "cannot initialise the raft group");
                }
            }
            continue;
        }
        elections.tick(&member, &metrics).await;
        if metrics.state != ServerState::Leader {
            leading = None;
            continue;
        }
        let since = match leading {
            Some((term, since)) if term == metrics.current_term => since,
            _ => {
                let now = Instant::now();
                tracing::info!(node = %settings.id, term = metrics.current_term, "leading");
                if let Some(map) = member.map() {
                    member.liveness.grace(map.nodes.iter().map(|n| n.id));
                }
                healthy_since.clear();
                leading = Some((metrics.current_term, now));
                now
            }
        };
        let Some(map) = member.map() else {
            commit_internal(&member, settings.bootstrap.clone()).await;
            continue;
        };
        reconcile_learners(&member, &map, &metrics).await;
        detect_failures(&member, &map, since, &mut healthy_since).await;
    }
}

/// Elections only by members that can win, and no endless split votes: openraft 0.9 has no
/// pre-vote, and the simulation tests found both of its consequences.
///
/// - A voter whose log is behind (it was cut off) cannot win, yet each election it starts raises
///   its term, and the leader's next heartbeat to it comes back with that higher term and
///   deposes the leader: the cluster is leaderless again and again. Before a voter without a
///   leader may start an election, it asks the voters (a ping) for their last log ids and
///   whether they heard from a leader within the minimum election timeout; unless a quorum,
///   itself included, would grant it (a log no longer than its own, no live leader), its
///   elections are switched off (`Raft::enable_elect`) until a later poll allows them.
/// - openraft draws each member's election timeout once, at start, and checks it on a tick of
///   1.5 heartbeats: two candidates whose timers fire on the same tick after their own votes
///   collide again in every election. A voter that may win and has had no leader for one
///   maximum election timeout starts an election itself after a delay drawn anew each time
///   (below one more), which no two members repeat. (Two timeouts plus the delay could take
///   the whole of the 3 election timeouts a cluster gets to converge after a heal: `chaos
///   sim`, CHAOS.md bug 6.)
#[derive(Default)]
struct ElectionGuard {
    /// Whether this member's own election timer is switched off.
    elections_off: bool,
    leaderless_since: Option<Instant>,
    kick_at: Option<Instant>,
}

impl ElectionGuard {
    async fn tick(&mut self, member: &Member, metrics: &RaftMetrics) {
        let settings = &member.settings;
        let membership = metrics.membership_config.membership();
        let voter = membership.voter_ids().any(|id| id == settings.id.0);
        let heard_leader_recently = metrics.state == ServerState::Leader
            || member
                .quorum_contact(metrics)
                .is_some_and(|since| since < settings.election_timeout_min);
        if !voter || heard_leader_recently {
            self.leaderless_since = None;
            self.kick_at = None;
            self.set_elections(member, true);
            return;
        }
        let may_win = self.poll(member, membership.voter_ids().count()).await;
        self.set_elections(member, may_win);
        if !may_win {
            self.kick_at = None;
            return;
        }
        let now = Instant::now();
        let since = *self.leaderless_since.get_or_insert(now);
        if now.saturating_duration_since(since) < settings.election_timeout_max {
            return;
        }
        let kick_at = *self.kick_at.get_or_insert_with(|| {
            use rand_core::RngCore;
            let mut rng =
                <crate::runtime::ScoregridRuntime as openraft::AsyncRuntime>::thread_rng();
            let max = settings.election_timeout_max.as_millis().max(1) as u64;
            now + Duration::from_millis(rng.next_u64() % max)
        });
        if now >= kick_at {
            tracing::info!(node = %settings.id, term = metrics.current_term, "no leader for a while: starting an election");
            metrics::counter!("scoregrid_raft_elections_kicked_total").increment(1);
            if let Err(error) = member.raft.trigger().elect().await {
                tracing::warn!(node = %settings.id, %error, "cannot start an election");
            }
            self.leaderless_since = Some(now);
            self.kick_at = None;
        }
    }

    /// Whether a quorum of voters, this one included, would grant this member a vote now.
    async fn poll(&self, member: &Member, voters: usize) -> bool {
        let settings = &member.settings;
        let ours = member.last_log_id().await;
        let answers = ping_voters(member, settings.heartbeat * 2).await;
        let granted = 1 + answers
            .into_iter()
            .flatten()
            .filter(|pong| {
                pong.last_log <= ours
                    && pong
                        .leader_contact_ms
                        .is_none_or(|ms| ms >= settings.election_timeout_min.as_millis() as u64)
            })
            .count();
        granted > voters / 2
    }

    fn set_elections(&mut self, member: &Member, on: bool) {
        if self.elections_off == on {
            self.elections_off = !on;
            member.raft.runtime_config().elect(on);
            tracing::debug!(node = %member.settings.id, on, "own elections");
        }
    }
}

fn is_lowest_voter(settings: &MemberSettings) -> bool {
    settings.voters.keys().next() == Some(&settings.id.0)
}

/// What a voter answered to a ping.
struct Pong {
    last_log: Option<openraft::LogId<u64>>,
    leader_contact_ms: Option<u64>,
}

/// Pings the other configured voters; `None` for a voter that did not answer within `wait`.
async fn ping_voters(member: &Member, wait: Duration) -> Vec<Option<Pong>> {
    let Ok(ping) = scoregrid_wire::codec::encode(&ClusterRequest::Ping) else {
        return Vec::new();
    };
    let answers = member
        .settings
        .voters
        .iter()
        .filter(|(id, _)| **id != member.settings.id.0)
        .map(|(id, peer)| {
            let client = member.peers.client(NodeId(*id), peer);
            let ping = ping.clone();
            async move {
                let client = client?;
                let call = client.call_until(Request::Cluster(ping), Some(Instant::now() + wait));
                match tokio::time::timeout(wait, call).await {
                    Ok(Ok(response)) => match decode_cluster_reply(response) {
                        Ok(ClusterReply::Pong {
                            last_log,
                            leader_contact_ms,
                            ..
                        }) => Some(Pong {
                            last_log,
                            leader_contact_ms,
                        }),
                        _ => None,
                    },
                    _ => None,
                }
            }
        });
    futures_util::future::join_all(answers).await
}

/// Whether every configured voter answers a ping now.
async fn all_voters_answer(member: &Member) -> bool {
    let answered = ping_voters(member, Duration::from_millis(500)).await;
    let all = answered.iter().all(Option::is_some);
    if !all {
        tracing::info!(node = %member.settings.id, answered = answered.iter().filter(|a| a.is_some()).count(),
            voters = answered.len(), "waiting for every voter before initialising the cluster");
    }
    all
}

/// A change the leader makes itself; failures are logged, the next tick tries again.
async fn commit_internal(member: &Member, command: MapCommand) {
    let kind = command.kind();
    let deadline = Instant::now() + member.settings.client_timeout;
    match member.propose(command, Role::Node, true, deadline).await {
        Ok(MapResponse::Applied { epoch }) => {
            tracing::info!(node = %member.settings.id, kind, %epoch, "map changed");
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(node = %member.settings.id, kind, %error, "map change failed"),
    }
}

/// Every map node that is not a voter is a learner; learners no longer in the map are removed;
/// a member whose address or name changed in the map gets it in the membership too.
async fn reconcile_learners(member: &Member, map: &ClusterMap, metrics: &RaftMetrics) {
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    for node in &map.nodes {
        let peer = RaftPeer {
            address: node.address.clone(),
            name: node.name.clone(),
        };
        let result = match membership.get_node(&node.id.0) {
            None if !voters.contains(&node.id.0) => {
                tracing::info!(node = %member.settings.id, learner = %node.id, "adding a learner");
                member
                    .raft
                    .add_learner(node.id.0, peer, false)
                    .await
                    .map(drop)
            }
            Some(known) if *known != peer => member
                .raft
                .change_membership(
                    ChangeMembers::SetNodes(BTreeMap::from([(node.id.0, peer)])),
                    true,
                )
                .await
                .map(drop),
            _ => Ok(()),
        };
        if let Err(error) = result {
            tracing::warn!(node = %member.settings.id, member = %node.id, %error, "membership change failed");
        }
    }
    let gone: BTreeSet<u64> = membership
        .learner_ids()
        .filter(|id| map.node(NodeId(*id)).is_none())
        .collect();
    if !gone.is_empty() {
        tracing::info!(node = %member.settings.id, learners = ?gone, "removing learners that left the map");
        if let Err(error) = member
            .raft
            .change_membership(ChangeMembers::RemoveNodes(gone), false)
            .await
        {
            tracing::warn!(node = %member.settings.id, %error, "removing learners failed");
        }
    }
}

/// Down after `down_after` of silence, up after `up_after` of answers (see the module docs).
async fn detect_failures(
    member: &Member,
    map: &ClusterMap,
    leading_since: Instant,
    healthy_since: &mut HashMap<NodeId, Instant>,
) {
    let settings = &member.settings;
    let now = Instant::now();
    let window = healthy_window(settings.heartbeat);
    for node in &map.nodes {
        let heard = if node.id == settings.id {
            Some(now)
        } else {
            member.liveness.last_heard(node.id)
        };
        let last_sign = heard.unwrap_or(leading_since).max(leading_since);
        let silent_for = now.saturating_duration_since(last_sign);
        let healthy = heard.is_some_and(|at| now.saturating_duration_since(at) < window);
        match node.state {
            NodeState::Up => {
                healthy_since.remove(&node.id);
                if silent_for >= settings.down_after {
                    tracing::warn!(leader = %settings.id, node = %node.id, silent_ms = silent_for.as_millis() as u64, "node silent: marking it down");
                    commit_internal(
                        member,
                        MapCommand::MarkLiveness {
                            id: node.id,
                            alive: false,
                        },
                    )
                    .await;
                }
            }
            NodeState::Down if healthy => {
                let since = *healthy_since.entry(node.id).or_insert(now);
                if now.saturating_duration_since(since) >= settings.up_after {
                    tracing::info!(leader = %settings.id, node = %node.id, "node answering again: marking it up");
                    commit_internal(
                        member,
                        MapCommand::MarkLiveness {
                            id: node.id,
                            alive: true,
                        },
                    )
                    .await;
                    healthy_since.remove(&node.id);
                }
            }
            NodeState::Down => {
                healthy_since.remove(&node.id);
            }
            NodeState::Joining | NodeState::Maintenance | NodeState::Leaving => {}
        }
    }
}

fn publish_metrics(member: &Member, metrics: &RaftMetrics) {
    let node = member.settings.id.to_string();
    metrics::gauge!("scoregrid_raft_term", "node" => node.clone()).set(metrics.current_term as f64);
    metrics::gauge!("scoregrid_raft_is_leader", "node" => node.clone())
        .set(f64::from(u8::from(metrics.state == ServerState::Leader)));
    metrics::gauge!("scoregrid_raft_applied_index", "node" => node.clone())
        .set(metrics.last_applied.map_or(0.0, |id| id.index as f64));
    metrics::gauge!("scoregrid_raft_last_log_index", "node" => node.clone())
        .set(metrics.last_log_index.map_or(0.0, |i| i as f64));
    metrics::gauge!("scoregrid_map_epoch", "node" => node.clone())
        .set(member.map().map_or(0.0, |m| m.epoch.0 as f64));
    metrics::gauge!("scoregrid_map_stale", "node" => node).set(f64::from(u8::from(
        member
            .quorum_contact(metrics)
            .is_none_or(|since| since > member.settings.stale_after),
    )));
}
