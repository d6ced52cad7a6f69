//! Membership on Raft: the cluster map as the replicated state machine of an openraft group, its
//! durable log, its network over wire/, and the placement of partitions on nodes.
//!
//! The cluster map is the one truth about who is in the cluster, in which state, which nodes
//! hold which partition and which model version is active. Voters (3 or 5, named in
//! configuration) replicate it with openraft; every other node is a learner that follows the
//! log. Each committed change raises the map's epoch, and every message between processes
//! carries its sender's epoch, so an actor with a stale map is noticed and fenced. Placement is
//! computed once per membership change and stored in the map as an explicit table, never
//! re-derived per request, so that every process reads the same table even across builds.
//!
//! # Layout
//! - [`map`]: [`ClusterMap`]: epoch, nodes and their states, placement, model versions; `check()`.
//! - [`command`]: [`MapCommand`], the changes the map accepts, and how each is applied.
//! - [`placement`]: the consistent-hash ring and the partition -> replicas table.
//! - [`types`]: the openraft type configuration ([`TypeConfig`]).
//! - [`runtime`]: tokio for openraft, with a seedable source of election randomness.
//! - [`log_store`]: the log and vote on disk, with checksums, fsync and torn-tail recovery.
//! - [`sealed`]: small values in sealed files (the vote, the committed log id, the snapshot).
//! - [`state_machine`]: the map as openraft's state machine, with snapshots on disk.
//! - [`protocol`]: the Raft RPCs and the cluster-control requests, as this crate encodes them.
//! - [`network`]: openraft's network over wire, and the liveness its heartbeats reveal.
//! - [`peers`]: [`peers::PeerClients`], how a member reaches the others (QUIC, or a test network).
//! - [`client`]: the cluster from outside the group: [`client::ClusterClient`] and the map
//!   watch routers run ([`client::follow_map`]).
//! - [`member`]: [`member::Member`]: the Raft instance, its controller (initialisation,
//!   learners, failure detection) and the cluster-control service.

pub mod client;
pub mod command;
pub mod log_store;
pub mod map;
pub mod member;
pub mod models;
pub mod network;
pub mod peers;
pub mod placement;
pub mod protocol;
pub mod runtime;
pub mod sealed;
pub mod state_machine;
pub mod types;

pub use command::{MapCommand, MapResponse};
pub use map::{ClusterMap, Epoch, MapError, ModelRecord, ModelState, NodeInfo, NodeState};
pub use placement::{Placement, PlacementError, ReplicationFactor};
pub use types::{MapSnapshot, RaftPeer, TypeConfig};
