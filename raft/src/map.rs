//! The cluster map: the state every process follows. It is the value of the Raft state machine
//! ([`crate::state_machine`]): each committed change produces a new map with a higher epoch, and
//! every message between processes carries the epoch of its sender's map so that an actor with a
//! stale map is fenced. A map with a given epoch is the same on every process that holds it,
//! because only committed commands produce epochs.

use crate::placement::{Placement, PlacementError, ReplicationFactor};
use scoregrid_shard::{ModelVersion, PartitionCount, PartitionId};
use scoregrid_wire::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Version of the cluster map; strictly increases with every change. `Epoch(0)` is "no map".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A node's state in the map (contract section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Added by `scoregrid node --join`; holds no partitions until the rebalancing issue gives
    /// it some.
    Joining,
    /// Serving its partitions.
    Up,
    /// Silent for `raft.down_after_ms` (marked by the leader): routers skip it at once.
    Down,
    /// Planned work (`scoregrid cluster maintenance ID on`): never marked down, nothing moved;
    /// routers use it only when no other replica is up.
    Maintenance,
    /// Being drained before removal (produced by the rebalancing issue; `cluster remove` of this
    /// release removes a node at once).
    Leaving,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Maintenance => "maintenance",
            NodeState::Leaving => "leaving",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Where the node is reached over QUIC (`in-process` for the demo's nodes).
    pub address: String,
    /// The name in its certificate: servers check a peer claiming to be this node against it.
    pub name: String,
    pub state: NodeState,
    /// A Raft voter (named in `raft.voters`), else a learner that follows the log.
    pub voter: bool,
    /// Its admin HTTP address (`/metrics`, `/healthz`), if it serves one.
    pub admin: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// Registered by a loader, being staged on the replicas; not served.
    Staging,
    /// The version new requests are answered from.
    Active,
    /// Served before; nodes may still host it for open cursors and rollback.
    Retired,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Staging => "staging",
            ModelState::Active => "active",
            ModelState::Retired => "retired",
        }
    }
}

/// A model version as the map knows it: what it must contain (the loader's checksums), and
/// while it is staging, which replicas hold which of its partitions. The flip to it is accepted
/// only when those reports cover the placement (see [`crate::models`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub version: ModelVersion,
    pub state: ModelState,
    /// CRC-32 of the version's directory as the loader encoded it.
    pub digest: u32,
    /// The checksum of each partition's file, indexed by partition id (one per partition).
    pub checksums: Vec<u32>,
    /// While staging: per node, the partitions it has staged with the right checksum (sorted).
    /// Cleared when the version is activated: what a node holds from then on is the node's
    /// business (it fetches what it lacks from the replicas).
    pub staged: BTreeMap<NodeId, Vec<PartitionId>>,
}

impl ModelRecord {
    /// Partition copies reported staged.
    pub fn staged_copies(&self) -> usize {
        self.staged.values().map(Vec::len).sum()
    }

    /// Whether `node` reported `partition` staged.
    pub fn is_staged(&self, node: NodeId, partition: PartitionId) -> bool {
        self.staged
            .get(&node)
            .is_some_and(|held| held.binary_search(&partition).is_ok())
    }
}

/// Model records kept in the map: the oldest retired ones are pruned beyond it, so the map
/// stays small whatever the number of nightly loads.
pub const MODEL_RECORDS_MAX: usize = 16;

/// Versions staging at once (registered, not yet active): a further registration is refused
/// until one is activated or dropped. Nodes hold a staging version in RAM beside what they serve.
pub const STAGING_VERSIONS_MAX: usize = 2;

/// The most retired versions a map keeps for rollback and open cursors
/// ([`ClusterMap::versions_retained`]); with [`STAGING_VERSIONS_MAX`] and the active one it stays
/// within [`MODEL_RECORDS_MAX`].
pub const VERSIONS_RETAINED_MAX: u32 = 8;

/// Nodes a map holds; a join beyond it is refused (the placement table and every message
/// carrying the map grow with it).
pub const NODES_MAX: usize = 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MapError {
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error("cluster map broken: {0}")]
    Broken(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    pub epoch: Epoch,
    /// Sorted by id.
    pub nodes: Vec<NodeInfo>,
    pub placement: Placement,
    /// Points per node on the placement ring, kept for re-placing partitions.
    pub virtual_nodes: u32,
    /// Oldest first.
    pub models: Vec<ModelRecord>,
    /// Retired versions kept beside the active one (rollback, open cursors): on a flip, older
    /// retired ones leave the map, and nodes delete them from RAM and disk.
    pub versions_retained: u32,
}

impl ClusterMap {
    /// A first map over `nodes`, placing partitions on those that are Up.
    ///
    /// # Errors
    /// When the nodes cannot hold `rf` replicas of every partition, or break [`Self::check`].
    pub fn bootstrap(
        mut nodes: Vec<NodeInfo>,
        partitions: PartitionCount,
        rf: ReplicationFactor,
        virtual_nodes: u32,
    ) -> Result<Self, MapError> {
        nodes.sort_by_key(|n| n.id);
        let up: Vec<NodeId> = nodes
            .iter()
            .filter(|n| n.state == NodeState::Up)
            .map(|n| n.id)
            .collect();
        let placement = Placement::compute(&up, partitions, rf, virtual_nodes)?;
        let map = Self {
            epoch: Epoch(1),
            nodes,
            placement,
            virtual_nodes,
            models: Vec::new(),
            versions_retained: 1,
        };
        map.check()?;
        Ok(map)
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes
            .binary_search_by_key(&id, |n| n.id)
            .ok()
            .map(|i| &self.nodes[i])
    }

    pub(crate) fn node_mut(&mut self, id: NodeId) -> Option<&mut NodeInfo> {
        self.nodes
            .binary_search_by_key(&id, |n| n.id)
            .ok()
            .map(|i| &mut self.nodes[i])
    }

    pub fn state_of(&self, id: NodeId) -> Option<NodeState> {
        self.node(id).map(|n| n.state)
    }

    /// The model version requests are served from.
    pub fn active_model(&self) -> Option<&ModelVersion> {
        self.models
            .iter()
            .find(|m| m.state == ModelState::Active)
            .map(|m| &m.version)
    }

    pub fn model(&self, version: &ModelVersion) -> Option<&ModelRecord> {
        self.models.iter().find(|m| &m.version == version)
    }

    /// The partitions the placement gives `node`.
    pub fn partitions_of(&self, node: NodeId) -> Vec<PartitionId> {
        self.placement.partitions_of(node)
    }

    /// Partitions with at least one replica on a node that is not Up.
    pub fn under_replicated(&self) -> usize {
        self.placement
            .partitions()
            .iter()
            .filter(|&p| {
                self.placement
                    .replicas(p)
                    .iter()
                    .any(|&n| self.state_of(n) != Some(NodeState::Up))
            })
            .count()
    }

    /// Verifies the map's invariants: node ids unique and sorted, placement rows of distinct
    /// members that are neither joining nor leaving, model versions unique and at most one
    /// active, the bounds on nodes and model records, an epoch above zero.
    ///
    /// # Errors
    /// `MapError` naming the first invariant broken.
    pub fn check(&self) -> Result<(), MapError> {
        let broken = |what: String| Err(MapError::Broken(what));
        if self.epoch == Epoch(0) {
            return broken("epoch 0 is reserved for 'no map'".into());
        }
        if self.nodes.len() > NODES_MAX {
            return broken(format!("{} nodes, at most {NODES_MAX}", self.nodes.len()));
        }
        if let Some(w) = self.nodes.windows(2).find(|w| w[0].id >= w[1].id) {
            return broken(format!(
                "node ids not unique and sorted at {} and {}",
                w[0].id, w[1].id
            ));
        }
        let holders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| !matches!(n.state, NodeState::Joining | NodeState::Leaving))
            .map(|n| n.id)
            .collect();
        self.placement.check(&holders)?;
        if self.models.len() > MODEL_RECORDS_MAX {
            return broken(format!(
                "{} model records, at most {MODEL_RECORDS_MAX}",
                self.models.len()
            ));
        }
        for (i, m) in self.models.iter().enumerate() {
            if self.models[..i].iter().any(|o| o.version == m.version) {
                return broken(format!("model version {} recorded twice", m.version));
            }
        }
        if self
            .models
            .iter()
            .filter(|m| m.state == ModelState::Active)
            .count()
            > 1
        {
            return broken("more than one active model".into());
        }
        let staging = self
            .models
            .iter()
            .filter(|m| m.state == ModelState::Staging)
            .count();
        if staging > STAGING_VERSIONS_MAX {
            return broken(format!(
                "{staging} versions staging, at most {STAGING_VERSIONS_MAX}"
            ));
        }
        if self.versions_retained > VERSIONS_RETAINED_MAX {
            return broken(format!(
                "{} versions retained, at most {VERSIONS_RETAINED_MAX}",
                self.versions_retained
            ));
        }
        let partitions = self.placement.partitions().get() as usize;
        for m in &self.models {
            if m.checksums.len() != partitions {
                return broken(format!(
                    "model version {} has {} partition checksums for {partitions} partitions",
                    m.version,
                    m.checksums.len()
                ));
            }
            for (node, held) in &m.staged {
                if self.node(*node).is_none() {
                    return broken(format!(
                        "model version {} staged on node {node}, which is not in the map",
                        m.version
                    ));
                }
                if held.windows(2).any(|w| w[0] >= w[1])
                    || held.last().is_some_and(|p| p.index() >= partitions)
                {
                    return broken(format!(
                        "model version {}: node {node}'s staged partitions are not sorted, unique and in range",
                        m.version
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn nodes(n: u64) -> Vec<NodeInfo> {
        (1..=n)
            .map(|i| NodeInfo {
                id: NodeId(i),
                address: format!("127.0.0.{}:7000", i + 1),
                name: format!("node-{i}"),
                state: NodeState::Up,
                voter: i <= 3,
                admin: None,
            })
            .collect()
    }

    pub(crate) fn map(n: u64, partitions: u32, rf: u32) -> ClusterMap {
        ClusterMap::bootstrap(
            nodes(n),
            PartitionCount::new(partitions).unwrap(),
            ReplicationFactor::new(rf).unwrap(),
            64,
        )
        .unwrap()
    }

    #[test]
    fn bootstrap_keeps_the_invariants() {
        let map = map(3, 64, 2);
        assert_eq!(map.epoch, Epoch(1));
        assert_eq!(map.active_model(), None);
        assert_eq!(map.under_replicated(), 0);
        assert_eq!(map.node(NodeId(2)).unwrap().name, "node-2");
        assert!(map.node(NodeId(9)).is_none());
        map.check().unwrap();
    }

    #[test]
    fn check_refuses_duplicate_nodes_and_two_active_models() {
        let mut broken = map(2, 8, 1);
        broken.nodes.push(broken.nodes[0].clone());
        assert!(broken.check().is_err());
        let mut broken = map(2, 8, 1);
        for v in ["a", "b"] {
            broken.models.push(ModelRecord {
                version: ModelVersion::new(v).unwrap(),
                state: ModelState::Active,
                digest: 0,
                checksums: vec![0; 8],
                staged: BTreeMap::new(),
            });
        }
        assert!(broken.check().unwrap_err().to_string().contains("active"));
    }

    #[test]
    fn a_joining_node_cannot_hold_partitions() {
        let mut broken = map(3, 16, 2);
        broken.nodes[0].state = NodeState::Joining;
        assert!(broken.check().is_err());
        let mut fine = map(3, 16, 2);
        fine.nodes[0].state = NodeState::Down;
        fine.check().unwrap();
        assert!(fine.under_replicated() > 0);
    }
}
