//! The membership layer's messages, carried by wire's `Request::Raft` / `Request::Cluster` as
//! bytes of this crate's own encoding (the wire codec), so that wire needs no openraft types.
//!
//! - [`RaftRpc`] / [`RaftReply`]: the three Raft RPCs between members.
//! - [`ClusterRequest`] / [`ClusterReply`]: cluster control for every process: the map watch
//!   (long poll: the current map at once if the caller's is older, else the next change), a
//!   member's own status, proposals of map changes (forwarded to the leader), joins and the
//!   one-time initialisation.

use crate::command::{MapCommand, MapResponse};
use crate::map::{ClusterMap, Epoch};
use crate::types::{MapSnapshot, SnapshotMeta, TypeConfig, Vote};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use scoregrid_wire::{NodeId, Role};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    /// An append (or heartbeat), and how many milliseconds ago the leader sending it last had
    /// a quorum acknowledge it (`None`: not since it was elected).
    Append(AppendEntriesRequest<TypeConfig>, Option<u64>),
    Vote(VoteRequest<u64>),
    Snapshot(Box<SnapshotRpc>),
}

/// A whole snapshot in one message (the map is small).
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotRpc {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub data: MapSnapshot,
}

impl RaftRpc {
    /// The member that sent it: the candidate or leader of its vote.
    pub fn sender(&self) -> Option<u64> {
        match self {
            RaftRpc::Append(request, _) => request.vote.leader_id().voted_for(),
            RaftRpc::Vote(request) => request.vote.leader_id().voted_for(),
            RaftRpc::Snapshot(snapshot) => snapshot.vote.leader_id().voted_for(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    Append(AppendEntriesResponse<u64>),
    Vote(VoteResponse<u64>),
    Snapshot(SnapshotResponse<u64>),
    /// The receiver could not take it: not allowed, or its Raft stopped.
    Refused(String),
}

/// Longest a watch may be held open by one call; callers poll again after it.
pub const WATCH_WAIT_MS_MAX: u32 = 30_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterRequest {
    /// Liveness of a process that may not be initialised yet (the first voter waits for all).
    Ping,
    /// The map once its epoch is above `after` (at once if it already is), else the current
    /// one after `wait_ms` (capped by [`WATCH_WAIT_MS_MAX`] and the caller's deadline).
    Watch { after: Epoch, wait_ms: u32 },
    /// This member's own view (`scoregrid cluster status --node ADDR`).
    Status,
    /// A change of the map, carried out by the leader. `origin` is the role of the process that
    /// asked; a node forwarding a proposal passes its caller's role on, and sets `forwarded`
    /// so that the leader it reaches does not forward again.
    Propose {
        command: MapCommand,
        origin: Role,
        forwarded: bool,
    },
    /// Initialise the Raft group now with the configured voters (`scoregrid cluster init`),
    /// without waiting for every voter to answer.
    Initialize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterReply {
    Pong {
        epoch: Epoch,
        initialized: bool,
        /// The member's last log id: a voter whose log is behind cannot win an election.
        last_log: Option<openraft::LogId<u64>>,
        /// Milliseconds since the member heard from a leader (0 for the leader itself): a
        /// voter with a live leader does not help another win (the pre-vote of the election
        /// guard in `member`).
        leader_contact_ms: Option<u64>,
    },
    Map(Box<MapView>),
    Status(Box<MemberStatus>),
    Proposed(MapResponse),
    Initialized,
    Error(ClusterError),
}

/// A map as one member holds it, with what the member knows of the Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapView {
    /// `None` until the cluster is bootstrapped.
    pub map: Option<ClusterMap>,
    pub source: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    /// The member has lost contact with a quorum: its map may be out of date.
    pub stale: bool,
}

impl MapView {
    pub fn epoch(&self) -> Epoch {
        self.map.as_ref().map_or(Epoch(0), |m| m.epoch)
    }
}

/// A member's own view of the group, for `cluster status` and the node's admin endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node: NodeId,
    /// leader, follower, candidate or learner.
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    /// The last log index applied to the map (entries are applied as soon as they commit).
    pub commit_index: Option<u64>,
    pub last_log_index: Option<u64>,
    pub epoch: Epoch,
    pub stale: bool,
    /// Milliseconds since this member last heard from a quorum (as leader) or its leader.
    pub quorum_contact_ms: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// As the leader sees them: milliseconds since each member last answered it.
    pub last_contact_ms: Vec<(NodeId, u64)>,
    pub map: Option<ClusterMap>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClusterError {
    /// No leader with a quorum committed the change in time. Exit code 3 at the CLI.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The map refused the command (its checks), or the member cannot take the request.
    #[error("refused: {0}")]
    Refused(String),
    /// A forwarded proposal reached a member that is not the leader (any more).
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
}
