//! The cluster map: the state every process follows. Each change produces a new map with a
//! higher epoch; messages carry the epoch so that an actor with a stale map is fenced.

use crate::placement::{Placement, PlacementError, ReplicationFactor};
use scoregrid_shard::{ModelVersion, PartitionCount};
use scoregrid_wire::NodeId;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Version of the cluster map; strictly increases with every change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Joining,
    Up,
    Down,
    Leaving,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Where the node is reached (`in-process` for the demo's nodes).
    pub address: String,
    pub state: NodeState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    Staging,
    Active,
    Retired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub version: ModelVersion,
    pub state: ModelState,
}

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
    pub nodes: Vec<NodeInfo>,
    pub placement: Placement,
    pub models: Vec<ModelRecord>,
}

impl ClusterMap {
    /// A first map over `nodes`, all Up, with the placement they imply.
    ///
    /// # Errors
    /// When the nodes cannot hold `rf` replicas of every partition.
    pub fn bootstrap(
        nodes: Vec<NodeInfo>,
        partitions: PartitionCount,
        rf: ReplicationFactor,
        virtual_nodes: u32,
    ) -> Result<Self, MapError> {
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
            models: Vec::new(),
        };
        map.check()?;
        Ok(map)
    }

    /// The model version requests are served from.
    pub fn active_model(&self) -> Option<&ModelVersion> {
        self.models
            .iter()
            .find(|m| m.state == ModelState::Active)
            .map(|m| &m.version)
    }

    /// Records `version` as the active model; the previous active one is retired (kept for
    /// open cursors until it is dropped).
    pub fn activate(&mut self, version: ModelVersion) {
        for m in &mut self.models {
            if m.state == ModelState::Active {
                m.state = ModelState::Retired;
            }
        }
        self.models.retain(|m| m.version != version);
        self.models.push(ModelRecord {
            version,
            state: ModelState::Active,
        });
        self.epoch = Epoch(self.epoch.0 + 1);
    }

    /// Verifies the map's invariants: unique node ids, placement on Up members only, at most
    /// one active model.
    ///
    /// # Errors
    /// `MapError` naming the first invariant broken.
    pub fn check(&self) -> Result<(), MapError> {
        let mut ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(MapError::Broken("duplicate node id".into()));
        }
        let up: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Up)
            .map(|n| n.id)
            .collect();
        self.placement.check(&up)?;
        if self
            .models
            .iter()
            .filter(|m| m.state == ModelState::Active)
            .count()
            > 1
        {
            return Err(MapError::Broken("more than one active model".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64) -> Vec<NodeInfo> {
        (1..=n)
            .map(|i| NodeInfo {
                id: NodeId(i),
                address: "in-process".into(),
                state: NodeState::Up,
            })
            .collect()
    }

    #[test]
    fn bootstrap_and_activate_keep_the_invariants() {
        let p = PartitionCount::new(64).unwrap();
        let rf = ReplicationFactor::new(2).unwrap();
        let mut map = ClusterMap::bootstrap(nodes(3), p, rf, 256).unwrap();
        assert_eq!(map.active_model(), None);
        let v1 = ModelVersion::new("v1").unwrap();
        let v2 = ModelVersion::new("v2").unwrap();
        map.activate(v1.clone());
        map.activate(v2.clone());
        assert_eq!(map.active_model(), Some(&v2));
        assert_eq!(map.epoch, Epoch(3));
        assert_eq!(
            map.models[0],
            ModelRecord {
                version: v1,
                state: ModelState::Retired
            }
        );
        map.check().unwrap();
    }

    #[test]
    fn check_refuses_duplicate_nodes() {
        let p = PartitionCount::new(8).unwrap();
        let rf = ReplicationFactor::new(1).unwrap();
        let mut map = ClusterMap::bootstrap(nodes(2), p, rf, 16).unwrap();
        map.nodes.push(map.nodes[0].clone());
        assert!(map.check().is_err());
    }
}
