//! Membership: the cluster map, its invariants, and the placement of partitions on nodes.
//!
//! The cluster map is the one truth about who is in the cluster and which nodes hold which
//! partition. This issue keeps it static (built from configuration); the next puts it under
//! Raft (openraft), with this same map as the replicated state machine. Placement is computed
//! once per membership change and stored in the map as an explicit table, never re-derived per
//! request, so that every process reads the same table even across builds.
//!
//! # Layout
//! - [`placement`]: the consistent-hash ring and the partition -> replicas table.
//! - [`map`]: [`ClusterMap`]: epoch, nodes and their states, placement, model versions; `check()`.

pub mod map;
pub mod placement;

pub use map::{ClusterMap, Epoch, MapError, ModelRecord, ModelState, NodeInfo, NodeState};
pub use placement::{Placement, PlacementError, ReplicationFactor};
