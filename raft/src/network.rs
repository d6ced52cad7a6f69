//! openraft's network over wire: each Raft RPC is one `Request::Raft` call to the peer, bounded
//! by openraft's own time-to-live for it. Errors are classified as openraft's example does: a
//! peer that cannot be reached is `Unreachable` (openraft backs off before trying it again), any
//! other failure a transient network error.
//!
//! Every answer from a peer is also a sign of life: the leader's failure detector
//! ([`crate::member`]) reads [`Liveness`], fed here by the heartbeats openraft sends anyway,
//! so detecting a dead node costs no traffic of its own.
//!
//! Every append also carries the leader's own contact with a quorum ([`QuorumContact`]): a
//! follower has contact with a quorum only through a leader that has it. (openraft 0.9 keeps a
//! leader that lost its quorum leading, and its heartbeats to the followers on its side would
//! otherwise make them call their maps fresh.)

use crate::peers::PeerClients;
use crate::protocol::{RaftReply, RaftRpc};
use crate::types::{RaftPeer, TypeConfig, Vote};
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetwork, RaftNetworkFactory, Snapshot};
use scoregrid_wire::{NodeClient, NodeId, Request, Response, RpcError};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// When each member last answered this one (a Raft RPC reply of any kind).
#[derive(Debug, Default)]
pub struct Liveness {
    heard: Mutex<HashMap<NodeId, Instant>>,
}

impl Liveness {
    pub fn heard_from(&self, node: NodeId) {
        self.lock().insert(node, Instant::now());
    }

    pub fn last_heard(&self, node: NodeId) -> Option<Instant> {
        self.lock().get(&node).copied()
    }

    /// Counts everyone as just heard from: a new leader gives every member a full
    /// `down_after` before judging it, since it did not send them heartbeats until now.
    pub fn grace(&self, nodes: impl IntoIterator<Item = NodeId>) {
        let now = Instant::now();
        let mut heard = self.lock();
        for node in nodes {
            heard.insert(node, now);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Instant>> {
        self.heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How long since a leader last had a quorum acknowledge it (`None`: not a leader, or no
/// acknowledgement yet). openraft refreshes the figure on every turn of its loop, at least
/// every heartbeat.
pub fn leader_quorum_age(metrics: &openraft::RaftMetrics<u64, RaftPeer>) -> Option<Duration> {
    if metrics.state != openraft::ServerState::Leader {
        return None;
    }
    if metrics.membership_config.membership().voter_ids().count() == 1 {
        return Some(Duration::ZERO);
    }
    metrics.millis_since_quorum_ack.map(Duration::from_millis)
}

/// The sending member's openraft metrics, for the quorum contact its appends carry (set once
/// the member's `Raft` exists, which is after its network is made).
#[derive(Debug, Default)]
pub struct QuorumContact(OnceLock<watch::Receiver<openraft::RaftMetrics<u64, RaftPeer>>>);

impl QuorumContact {
    pub fn set(&self, metrics: watch::Receiver<openraft::RaftMetrics<u64, RaftPeer>>) {
        let _ = self.0.set(metrics);
    }

    /// Milliseconds since this member, leading, last had a quorum acknowledge it.
    fn leader_ms(&self) -> Option<u64> {
        let metrics = self.0.get()?.borrow();
        leader_quorum_age(&metrics).map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The factory openraft asks for one connection per target.
#[derive(Clone)]
pub struct Network {
    pub(crate) peers: Arc<dyn PeerClients>,
    pub(crate) liveness: Arc<Liveness>,
    pub(crate) quorum: Arc<QuorumContact>,
    /// How long openraft waits before trying an unreachable member again: one heartbeat, so a
    /// member that comes back (a healed partition, a restart) is in step within a heartbeat
    /// or two, not openraft's default half second.
    pub(crate) backoff: std::time::Duration,
}

pub struct PeerConnection {
    target: NodeId,
    client: Option<Arc<dyn NodeClient>>,
    liveness: Arc<Liveness>,
    quorum: Arc<QuorumContact>,
    backoff: std::time::Duration,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &RaftPeer) -> PeerConnection {
        let target = NodeId(target);
        PeerConnection {
            target,
            client: self.peers.client(target, node),
            liveness: self.liveness.clone(),
            quorum: self.quorum.clone(),
            backoff: self.backoff,
        }
    }
}

/// Why one exchange failed, before it is put in the error type of the RPC at hand.
enum Failure {
    Unreachable(String),
    Network(String),
}

#[derive(Debug)]
struct Message(String);

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl Failure {
    fn into_rpc_error(self) -> RPCError<u64, RaftPeer, RaftError<u64>> {
        match self {
            Failure::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&Message(m))),
            Failure::Network(m) => RPCError::Network(NetworkError::new(&Message(m))),
        }
    }

    fn into_streaming_error(self) -> StreamingError<TypeConfig, Fatal<u64>> {
        match self {
            Failure::Unreachable(m) => StreamingError::Unreachable(Unreachable::new(&Message(m))),
            Failure::Network(m) => StreamingError::Network(NetworkError::new(&Message(m))),
        }
    }
}

impl PeerConnection {
    async fn exchange(&self, rpc: RaftRpc, option: &RPCOption) -> Result<RaftReply, Failure> {
        let Some(client) = &self.client else {
            return Err(Failure::Unreachable(format!(
                "no address to reach member {}",
                self.target
            )));
        };
        let payload = scoregrid_wire::codec::encode(&rpc)
            .map_err(|e| Failure::Network(format!("raft message does not encode: {e}")))?;
        let deadline = Instant::now() + option.hard_ttl();
        let call = client.call_until(Request::Raft(payload), Some(deadline));
        let response = match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(response)) => response,
            Ok(Err(error @ (RpcError::Unreachable(..) | RpcError::Incompatible { .. }))) => {
                return Err(Failure::Unreachable(error.to_string()));
            }
            Ok(Err(error)) => return Err(Failure::Network(error.to_string())),
            // No answer at all within the RPC's time: treat the peer as unreachable, so that
            // openraft backs off instead of retrying it on every heartbeat.
            Err(_) => {
                return Err(Failure::Unreachable(format!(
                    "member {} did not answer within {} ms",
                    self.target,
                    option.hard_ttl().as_millis()
                )));
            }
        };
        let reply = match response {
            Response::Raft(bytes) => scoregrid_wire::codec::decode::<RaftReply>(&bytes)
                .map_err(|e| Failure::Network(format!("raft reply does not decode: {e}")))?,
            Response::Error(error) => {
                return Err(Failure::Network(format!(
                    "member {} refused: {error}",
                    self.target
                )));
            }
            _ => {
                return Err(Failure::Network(format!(
                    "member {} answered with the wrong message kind",
                    self.target
                )));
            }
        };
        if let RaftReply::Refused(reason) = reply {
            return Err(Failure::Network(format!(
                "member {} refused: {reason}",
                self.target
            )));
        }
        self.liveness.heard_from(self.target);
        Ok(reply)
    }
}

fn unexpected(target: NodeId) -> Failure {
    Failure::Network(format!("member {target} answered another RPC"))
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, RaftPeer, RaftError<u64>>> {
        let quorum_ms = self.quorum.leader_ms();
        match self
            .exchange(RaftRpc::Append(rpc, quorum_ms), &option)
            .await
        {
            Ok(RaftReply::Append(response)) => Ok(response),
            Ok(_) => Err(unexpected(self.target).into_rpc_error()),
            Err(failure) => Err(failure.into_rpc_error()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, RaftPeer, RaftError<u64>>> {
        match self.exchange(RaftRpc::Vote(rpc), &option).await {
            Ok(RaftReply::Vote(response)) => Ok(response),
            Ok(_) => Err(unexpected(self.target).into_rpc_error()),
            Err(failure) => Err(failure.into_rpc_error()),
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(self.backoff))
    }

    /// The map is small: the whole snapshot goes in one message.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let rpc = RaftRpc::Snapshot(Box::new(crate::protocol::SnapshotRpc {
            vote,
            meta: snapshot.meta,
            data: *snapshot.snapshot,
        }));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            reply = self.exchange(rpc, &option) => match reply {
                Ok(RaftReply::Snapshot(response)) => Ok(response),
                Ok(_) => Err(unexpected(self.target).into_streaming_error()),
                Err(failure) => Err(failure.into_streaming_error()),
            },
        }
    }
}
