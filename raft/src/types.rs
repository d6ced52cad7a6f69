//! The openraft type configuration: the log carries [`MapCommand`]s, the state machine answers
//! with [`MapResponse`]s, a member is a [`RaftPeer`] (its QUIC address and certificate name), and
//! a snapshot is the whole [`MapSnapshot`] (the map is small: one message carries it).

use crate::command::{MapCommand, MapResponse};
use crate::map::ClusterMap;
use crate::runtime::ScoregridRuntime;
use openraft::{LogId, StoredMembership};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The types scoregrid's Raft group is built from.
    pub TypeConfig:
        D = MapCommand,
        R = MapResponse,
        NodeId = u64,
        Node = RaftPeer,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = MapSnapshot,
        AsyncRuntime = ScoregridRuntime,
);

/// A member of the Raft group as openraft records it in its membership: enough to reach it and
/// to check that a peer claiming to be it holds its certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftPeer {
    /// Its QUIC address.
    pub address: String,
    /// The name in its certificate.
    pub name: String,
}

/// The state machine's whole state: what a snapshot holds and a follower installs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapSnapshot {
    pub last_applied: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, RaftPeer>,
    /// `None` until the bootstrap command is applied.
    pub map: Option<ClusterMap>,
}

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<u64>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, RaftPeer>;
pub type StorageError = openraft::StorageError<u64>;
pub type RaftMetrics = openraft::RaftMetrics<u64, RaftPeer>;
