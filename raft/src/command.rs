//! The changes the cluster map accepts, as Raft log entries, and how each is applied.
//!
//! A command is applied to a copy of the map; the copy must pass [`ClusterMap::check`] before it
//! replaces the map, so a command that would break an invariant is refused and changes nothing
//! (its log entry stays committed, as a no-op, and the proposer gets the refusal). Every command
//! that changes the map raises the epoch by one; a command that would not change anything (a node
//! already in the state asked for) leaves the map and its epoch alone.

use crate::map::{ClusterMap, Epoch, NodeInfo, NodeState};
use crate::models;
use crate::placement::ReplicationFactor;
use scoregrid_shard::{ModelVersion, PartitionCount, PartitionId};
use scoregrid_wire::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapCommand {
    /// The first map, proposed once by the first leader of a new cluster.
    Bootstrap {
        nodes: Vec<NodeInfo>,
        partitions: u32,
        replication_factor: u32,
        virtual_nodes: u32,
        /// Retired versions kept for rollback (`node.versions_retained` of the first leader).
        versions_retained: u32,
    },
    /// `scoregrid node --join`: a new node, state joining, holding nothing yet. Joining again
    /// with the same name (a restarted node) updates its addresses.
    Join {
        id: NodeId,
        address: String,
        name: String,
        admin: Option<String>,
    },
    /// The leader's failure detector: Up -> Down, or Down -> Up after flap damping. Refused for a
    /// node in maintenance or joining.
    MarkLiveness { id: NodeId, alive: bool },
    /// `scoregrid cluster maintenance ID on|off`.
    Maintenance { id: NodeId, on: bool },
    /// `scoregrid cluster remove ID`: the node leaves the map; partitions it held get a new
    /// replica on the remaining nodes.
    Remove { id: NodeId },
    /// A loader registers a version it is about to stage (state staging), with the CRC-32 of
    /// its directory and of each partition file (indexed by partition id).
    RegisterModel {
        version: ModelVersion,
        digest: u32,
        checksums: Vec<u32>,
    },
    /// A loader reports partitions of a staging version that `node` has staged, each with the
    /// checksum the node computed over what it wrote.
    ReportStaged {
        version: ModelVersion,
        node: NodeId,
        partitions: Vec<(PartitionId, u32)>,
    },
    /// The cluster-wide flip: `version` becomes active, the previous active one retired. A
    /// staging version is accepted only when it is staged everywhere ([`crate::models`]).
    ActivateModel { version: ModelVersion },
    /// `scoregrid model drop V`: a staging or retired version leaves the map (and the nodes).
    DropModel { version: ModelVersion },
    /// `scoregrid model retain N`: retired versions kept for rollback.
    RetainVersions { versions: u32 },
}

impl MapCommand {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MapCommand::Bootstrap { .. } => "bootstrap",
            MapCommand::Join { .. } => "join",
            MapCommand::MarkLiveness { .. } => "mark_liveness",
            MapCommand::Maintenance { .. } => "maintenance",
            MapCommand::Remove { .. } => "remove",
            MapCommand::RegisterModel { .. } => "register_model",
            MapCommand::ReportStaged { .. } => "report_staged",
            MapCommand::ActivateModel { .. } => "activate_model",
            MapCommand::DropModel { .. } => "drop_model",
            MapCommand::RetainVersions { .. } => "retain_versions",
        }
    }
}

/// What applying a command did, returned to its proposer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapResponse {
    /// A blank or membership entry: nothing asked by a client.
    #[default]
    Nothing,
    /// The map changed; this is its new epoch.
    Applied { epoch: Epoch },
    /// Nothing to change: the map already says so.
    Unchanged { epoch: Epoch },
    /// The command was refused and changed nothing.
    Refused { reason: String },
}

/// Applies `command` to `map` (`None` before the bootstrap). On success the map is replaced by
/// the changed copy, with the next epoch.
pub fn apply(map: &mut Option<ClusterMap>, command: &MapCommand) -> MapResponse {
    let refused = |reason: String| MapResponse::Refused { reason };
    let Some(current) = map.as_ref() else {
        return match bootstrap(command) {
            Ok(first) => {
                let epoch = first.epoch;
                *map = Some(first);
                MapResponse::Applied { epoch }
            }
            Err(reason) => refused(reason),
        };
    };
    if let MapCommand::Bootstrap { .. } = command {
        return MapResponse::Unchanged {
            epoch: current.epoch,
        };
    }
    let mut next = current.clone();
    match change(&mut next, command) {
        Err(reason) => refused(reason),
        Ok(false) => MapResponse::Unchanged {
            epoch: current.epoch,
        },
        Ok(true) => {
            next.epoch = Epoch(current.epoch.0 + 1);
            if let Err(error) = next.check() {
                return refused(format!("{} would break the map: {error}", command.kind()));
            }
            let epoch = next.epoch;
            *map = Some(next);
            MapResponse::Applied { epoch }
        }
    }
}

impl ClusterMap {
    /// Applies `command` to this map outside Raft: for a map that no log replicates (the demo's
    /// in-process cluster, tests). A refused command changes nothing.
    pub fn apply(&mut self, command: &MapCommand) -> MapResponse {
        let mut state = Some(self.clone());
        let response = apply(&mut state, command);
        if let Some(next) = state {
            *self = next;
        }
        response
    }

    /// Registers and activates `version` outside Raft (see [`ClusterMap::apply`]): for a map
    /// whose nodes were given the version directly, so no staging is reported.
    pub fn activate_outside_raft(&mut self, version: &ModelVersion) -> MapResponse {
        let partitions = self.placement.partitions().get() as usize;
        self.apply(&MapCommand::RegisterModel {
            version: version.clone(),
            digest: 0,
            checksums: vec![0; partitions],
        });
        let mut next = self.clone();
        match crate::models::activate_unchecked(&mut next, version) {
            Ok(()) => {
                next.epoch = Epoch(self.epoch.0 + 1);
                *self = next;
                MapResponse::Applied { epoch: self.epoch }
            }
            Err(reason) => MapResponse::Refused { reason },
        }
    }
}

/// Records the voters of a committed Raft membership in the map (its `voter` flags); returns
/// whether anything changed (then the epoch was raised).
pub fn apply_voters(map: &mut Option<ClusterMap>, voters: &BTreeSet<u64>) -> bool {
    let Some(current) = map.as_mut() else {
        return false;
    };
    let mut changed = false;
    for node in &mut current.nodes {
        let voter = voters.contains(&node.id.0);
        if node.voter != voter {
            node.voter = voter;
            changed = true;
        }
    }
    if changed {
        current.epoch = Epoch(current.epoch.0 + 1);
    }
    changed
}

fn bootstrap(command: &MapCommand) -> Result<ClusterMap, String> {
    let MapCommand::Bootstrap {
        nodes,
        partitions,
        replication_factor,
        virtual_nodes,
        versions_retained,
    } = command
    else {
        return Err(format!(
            "the cluster map is not bootstrapped yet: {} must wait",
            command.kind()
        ));
    };
    let partitions = PartitionCount::new(*partitions)
        .ok_or_else(|| format!("bootstrap: {partitions} partitions is out of range"))?;
    let rf = ReplicationFactor::new(*replication_factor).ok_or_else(|| {
        format!("bootstrap: replication factor {replication_factor} is out of range")
    })?;
    let mut map = ClusterMap::bootstrap(nodes.clone(), partitions, rf, *virtual_nodes)
        .map_err(|error| format!("bootstrap: {error}"))?;
    map.versions_retained = (*versions_retained).min(crate::map::VERSIONS_RETAINED_MAX);
    Ok(map)
}

/// Changes `map` in place; `Ok(false)` when there is nothing to change.
fn change(map: &mut ClusterMap, command: &MapCommand) -> Result<bool, String> {
    match command {
        MapCommand::Bootstrap { .. } => Ok(false),
        MapCommand::Join {
            id,
            address,
            name,
            admin,
        } => join(map, *id, address, name, admin.as_deref()),
        MapCommand::MarkLiveness { id, alive } => {
            let node = known(map, *id)?;
            let target = if *alive {
                NodeState::Up
            } else {
                NodeState::Down
            };
            match node.state {
                state if state == target => Ok(false),
                NodeState::Up | NodeState::Down => {
                    node.state = target;
                    Ok(true)
                }
                other => Err(format!(
                    "node {id} is {other}: the failure detector leaves it alone"
                )),
            }
        }
        MapCommand::Maintenance { id, on } => {
            let node = known(map, *id)?;
            match (node.state, *on) {
                (NodeState::Maintenance, true) => Ok(false),
                (NodeState::Up | NodeState::Down, true) => {
                    node.state = NodeState::Maintenance;
                    Ok(true)
                }
                (NodeState::Maintenance, false) => {
                    // Up again: if it is not back, the failure detector marks it down.
                    node.state = NodeState::Up;
                    Ok(true)
                }
                (NodeState::Up | NodeState::Down, false) => Ok(false),
                (other, _) => Err(format!(
                    "node {id} is {other}: maintenance applies to nodes that hold partitions"
                )),
            }
        }
        MapCommand::Remove { id } => remove(map, *id),
        MapCommand::RegisterModel {
            version,
            digest,
            checksums,
        } => models::register(map, version, *digest, checksums),
        MapCommand::ReportStaged {
            version,
            node,
            partitions,
        } => models::report_staged(map, version, *node, partitions),
        MapCommand::ActivateModel { version } => models::activate(map, version),
        MapCommand::DropModel { version } => models::drop_version(map, version),
        MapCommand::RetainVersions { versions } => models::set_retention(map, *versions),
    }
}

fn known(map: &mut ClusterMap, id: NodeId) -> Result<&mut NodeInfo, String> {
    map.node_mut(id)
        .ok_or_else(|| format!("node {id} is not in the cluster map"))
}

fn join(
    map: &mut ClusterMap,
    id: NodeId,
    address: &str,
    name: &str,
    admin: Option<&str>,
) -> Result<bool, String> {
    if let Some(other) = map
        .nodes
        .iter()
        .find(|n| n.id != id && (n.address == address || n.name == name))
    {
        return Err(format!(
            "node {} already uses address {} or name {}",
            other.id, other.address, other.name
        ));
    }
    if let Some(node) = map.node_mut(id) {
        if node.name != name {
            return Err(format!(
                "node {id} is in the map with certificate name {}, not {name}",
                node.name
            ));
        }
        let admin = admin.map(str::to_owned);
        if node.address == address && node.admin == admin {
            return Ok(false);
        }
        node.address = address.to_owned();
        node.admin = admin;
        return Ok(true);
    }
    let at = map.nodes.partition_point(|n| n.id < id);
    map.nodes.insert(
        at,
        NodeInfo {
            id,
            address: address.to_owned(),
            name: name.to_owned(),
            state: NodeState::Joining,
            voter: false,
            admin: admin.map(str::to_owned),
        },
    );
    Ok(true)
}

fn remove(map: &mut ClusterMap, id: NodeId) -> Result<bool, String> {
    let Some(node) = map.node(id) else {
        return Ok(false);
    };
    if node.voter {
        return Err(format!(
            "node {id} is a Raft voter: voters are named in raft.voters and are not removed by \
             this command"
        ));
    }
    map.nodes.retain(|n| n.id != id);
    models::forget_node(map, id);
    let holders: Vec<NodeId> = map
        .nodes
        .iter()
        .filter(|n| !matches!(n.state, NodeState::Joining | NodeState::Leaving))
        .map(|n| n.id)
        .collect();
    if map.placement.partitions_of(id).is_empty() {
        return Ok(true);
    }
    map.placement = map
        .placement
        .reassign(&holders, map.virtual_nodes)
        .map_err(|error| format!("node {id} cannot be removed: {error}"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::tests::{map, nodes};

    fn v(name: &str) -> ModelVersion {
        ModelVersion::new(name).unwrap()
    }

    fn applied(map: &mut Option<ClusterMap>, command: MapCommand) -> Epoch {
        match apply(map, &command) {
            MapResponse::Applied { epoch } => epoch,
            other => panic!("{command:?}: {other:?}"),
        }
    }

    fn refusal(map: &mut Option<ClusterMap>, command: MapCommand) -> String {
        let before = map.clone();
        match apply(map, &command) {
            MapResponse::Refused { reason } => {
                assert_eq!(*map, before, "a refused command changes nothing");
                reason
            }
            other => panic!("{command:?}: {other:?}"),
        }
    }

    #[test]
    fn only_a_bootstrap_starts_a_map_and_only_once() {
        let mut state = None;
        let reason = refusal(
            &mut state,
            MapCommand::Maintenance {
                id: NodeId(1),
                on: true,
            },
        );
        assert!(reason.contains("not bootstrapped"), "{reason}");
        let bootstrap = MapCommand::Bootstrap {
            nodes: nodes(3),
            partitions: 32,
            replication_factor: 2,
            virtual_nodes: 16,
            versions_retained: 1,
        };
        assert_eq!(applied(&mut state, bootstrap.clone()), Epoch(1));
        assert_eq!(
            apply(&mut state, &bootstrap),
            MapResponse::Unchanged { epoch: Epoch(1) }
        );
        let mut fresh = None;
        let reason = refusal(
            &mut fresh,
            MapCommand::Bootstrap {
                nodes: nodes(1),
                partitions: 32,
                replication_factor: 2,
                virtual_nodes: 16,
                versions_retained: 1,
            },
        );
        assert!(reason.contains("needs at least 2"), "{reason}");
    }

    #[test]
    fn liveness_and_maintenance_follow_their_rules() {
        let mut state = Some(map(3, 32, 2));
        let down = MapCommand::MarkLiveness {
            id: NodeId(2),
            alive: false,
        };
        assert_eq!(applied(&mut state, down.clone()), Epoch(2));
        assert_eq!(
            apply(&mut state, &down),
            MapResponse::Unchanged { epoch: Epoch(2) }
        );
        applied(
            &mut state,
            MapCommand::Maintenance {
                id: NodeId(2),
                on: true,
            },
        );
        let reason = refusal(
            &mut state,
            MapCommand::MarkLiveness {
                id: NodeId(2),
                alive: true,
            },
        );
        assert!(reason.contains("maintenance"), "{reason}");
        applied(
            &mut state,
            MapCommand::Maintenance {
                id: NodeId(2),
                on: false,
            },
        );
        let map = state.as_ref().unwrap();
        assert_eq!(map.state_of(NodeId(2)), Some(NodeState::Up));
        assert_eq!(map.epoch, Epoch(4));
        let reason = refusal(
            &mut state,
            MapCommand::MarkLiveness {
                id: NodeId(9),
                alive: true,
            },
        );
        assert!(reason.contains("not in the cluster map"), "{reason}");
    }

    #[test]
    fn a_joined_node_holds_nothing_and_can_be_removed() {
        let mut state = Some(map(3, 32, 2));
        let join = MapCommand::Join {
            id: NodeId(7),
            address: "127.0.0.9:7000".into(),
            name: "node-7".into(),
            admin: None,
        };
        applied(&mut state, join.clone());
        assert_eq!(
            apply(&mut state, &join),
            MapResponse::Unchanged { epoch: Epoch(2) }
        );
        let map = state.as_ref().unwrap();
        assert_eq!(map.state_of(NodeId(7)), Some(NodeState::Joining));
        assert!(map.partitions_of(NodeId(7)).is_empty());
        let reason = refusal(
            &mut state,
            MapCommand::Join {
                id: NodeId(8),
                address: "127.0.0.9:7000".into(),
                name: "node-8".into(),
                admin: None,
            },
        );
        assert!(reason.contains("already uses"), "{reason}");
        let reason = refusal(
            &mut state,
            MapCommand::Maintenance {
                id: NodeId(7),
                on: true,
            },
        );
        assert!(reason.contains("joining"), "{reason}");
        applied(&mut state, MapCommand::Remove { id: NodeId(7) });
        assert!(state.as_ref().unwrap().node(NodeId(7)).is_none());
    }

    #[test]
    fn removing_a_holder_moves_its_partitions_and_voters_stay() {
        let mut state = Some(map(4, 64, 2));
        let reason = refusal(&mut state, MapCommand::Remove { id: NodeId(1) });
        assert!(reason.contains("voter"), "{reason}");
        let held = state.as_ref().unwrap().partitions_of(NodeId(4));
        assert!(!held.is_empty());
        applied(&mut state, MapCommand::Remove { id: NodeId(4) });
        let map = state.as_ref().unwrap();
        assert!(map.partitions_of(NodeId(4)).is_empty());
        map.check().unwrap();
        let mut small = Some(super::super::map::tests::map(2, 8, 2));
        small.as_mut().unwrap().nodes[1].voter = false;
        let reason = refusal(&mut small, MapCommand::Remove { id: NodeId(2) });
        assert!(reason.contains("cannot be removed"), "{reason}");
    }

    #[test]
    fn a_refused_flip_changes_nothing_and_a_staged_one_commits() {
        let mut state = Some(map(3, 8, 2));
        let reason = refusal(&mut state, MapCommand::ActivateModel { version: v("v1") });
        assert!(reason.contains("not registered"), "{reason}");
        let checksums: Vec<u32> = (0..8).collect();
        let register = MapCommand::RegisterModel {
            version: v("v1"),
            digest: 1,
            checksums: checksums.clone(),
        };
        applied(&mut state, register.clone());
        assert!(matches!(
            apply(&mut state, &register),
            MapResponse::Unchanged { .. }
        ));
        let reason = refusal(&mut state, MapCommand::ActivateModel { version: v("v1") });
        assert!(reason.contains("not staged everywhere"), "{reason}");
        for n in 1..=3 {
            let node = NodeId(n);
            let partitions = state
                .as_ref()
                .unwrap()
                .partitions_of(node)
                .into_iter()
                .map(|p| (p, checksums[p.index()]))
                .collect();
            applied(
                &mut state,
                MapCommand::ReportStaged {
                    version: v("v1"),
                    node,
                    partitions,
                },
            );
        }
        applied(&mut state, MapCommand::ActivateModel { version: v("v1") });
        assert_eq!(state.as_ref().unwrap().active_model(), Some(&v("v1")));
        let reason = refusal(&mut state, MapCommand::DropModel { version: v("v1") });
        assert!(reason.contains("is active"), "{reason}");
        // A rerun of the load that activated it (its outcome unknown to its loader) finds it
        // done; other contents under its name are refused.
        assert!(matches!(
            apply(&mut state, &register),
            MapResponse::Unchanged { .. }
        ));
        let other = MapCommand::RegisterModel {
            version: v("v1"),
            digest: 2,
            checksums,
        };
        let reason = refusal(&mut state, other);
        assert!(reason.contains("already active"), "{reason}");
    }

    #[test]
    fn voters_of_a_membership_are_recorded_with_a_new_epoch() {
        let mut state = Some(map(4, 16, 2));
        let before = state.as_ref().unwrap().epoch;
        assert!(!apply_voters(&mut state, &[1, 2, 3].into_iter().collect()));
        assert!(apply_voters(&mut state, &[1, 2, 4].into_iter().collect()));
        let map = state.as_ref().unwrap();
        assert_eq!(map.epoch, Epoch(before.0 + 1));
        assert!(map.node(NodeId(4)).unwrap().voter && !map.node(NodeId(3)).unwrap().voter);
    }
}
