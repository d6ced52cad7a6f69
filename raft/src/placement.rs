//! Partition -> replicas, by consistent hashing.
//!
//! Each node owns `virtual_nodes` points on a 64-bit ring; a partition's replicas are the first
//! `RF` distinct nodes met walking clockwise from the partition's own point. With 256 points per
//! node the most loaded node carries within a few percent of the mean (a ring with 10 points per
//! node leaves some nodes 1.4-1.9x overloaded), and when a node joins or leaves only the
//! partitions next to its points move.
//!
//! The ring uses the documented [`mix64`] hash, not `std::hash`:
//! node point `v` of node `n` is `mix64(mix64(n ^ NODE_SALT) ^ v)`, partition `p`'s point is
//! `mix64(p ^ PARTITION_SALT)`; ties between equal points break by lower node id.

use scoregrid_shard::PartitionCount;
use scoregrid_shard::PartitionId;
use scoregrid_shard::hashing::mix64;
use scoregrid_wire::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

const NODE_SALT: u64 = 0x94d0_49bb_1331_11eb;
const PARTITION_SALT: u64 = 0x2545_f491_4f6c_dd1d;

/// Copies of every partition, on distinct nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationFactor(u32);

impl ReplicationFactor {
    pub const MAX: u32 = 16;

    pub fn new(rf: u32) -> Option<Self> {
        (1..=Self::MAX).contains(&rf).then_some(Self(rf))
    }

    pub fn get(self) -> usize {
        self.0 as usize
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error("replication factor {rf} needs at least {rf} nodes that are Up, found {up}")]
    NotEnoughNodes { rf: usize, up: usize },
    #[error("virtual_nodes must be at least 1")]
    NoVirtualNodes,
    #[error("placement table broken: {0}")]
    Broken(String),
}

/// The explicit table: `replicas[p * rf .. (p + 1) * rf]` are partition `p`'s nodes, the first
/// one being the partition's preferred replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    rf: u32,
    partitions: PartitionCount,
    replicas: Vec<NodeId>,
}

fn partition_point(p: PartitionId) -> u64 {
    mix64(u64::from(p.0) ^ PARTITION_SALT)
}

fn node_point(node: NodeId, v: u32) -> u64 {
    mix64(mix64(node.0 ^ NODE_SALT) ^ u64::from(v))
}

impl Placement {
    /// Places every partition on `rf` distinct nodes out of `up`.
    ///
    /// # Errors
    /// When fewer than `rf` distinct nodes are given, or `virtual_nodes` is 0.
    pub fn compute(
        up: &[NodeId],
        partitions: PartitionCount,
        rf: ReplicationFactor,
        virtual_nodes: u32,
    ) -> Result<Self, PlacementError> {
        let mut nodes = up.to_vec();
        nodes.sort_unstable();
        nodes.dedup();
        if nodes.len() < rf.get() {
            return Err(PlacementError::NotEnoughNodes {
                rf: rf.get(),
                up: nodes.len(),
            });
        }
        if virtual_nodes == 0 {
            return Err(PlacementError::NoVirtualNodes);
        }
        let mut ring: Vec<(u64, NodeId)> = nodes
            .iter()
            .flat_map(|&n| (0..virtual_nodes).map(move |v| (node_point(n, v), n)))
            .collect();
        ring.sort_unstable();
        let mut replicas = Vec::with_capacity(partitions.get() as usize * rf.get());
        for p in partitions.iter() {
            let start = ring.partition_point(|&(point, _)| point < partition_point(p));
            let first = replicas.len();
            for i in 0..ring.len() {
                let node = ring[(start + i) % ring.len()].1;
                if !replicas[first..].contains(&node) {
                    replicas.push(node);
                    if replicas.len() - first == rf.get() {
                        break;
                    }
                }
            }
        }
        let placement = Self {
            rf: rf.0,
            partitions,
            replicas,
        };
        placement.check(&nodes)?;
        Ok(placement)
    }

    /// The same table over `holders` with as little movement as possible: each partition keeps
    /// its replicas that are still holders, in order, and gets the ones it lacks from its ring
    /// walk over `holders` (as [`Placement::compute`] would pick them). Used when a node leaves:
    /// only the partitions it held get a new replica, and those fetch their data from the
    /// replicas they kept.
    ///
    /// # Errors
    /// When fewer than `rf` distinct holders are given, or `virtual_nodes` is 0.
    pub fn reassign(&self, holders: &[NodeId], virtual_nodes: u32) -> Result<Self, PlacementError> {
        let rf = ReplicationFactor(self.rf);
        let fresh = Self::compute(holders, self.partitions, rf, virtual_nodes)?;
        let mut replicas = Vec::with_capacity(self.replicas.len());
        for p in self.partitions.iter() {
            let first = replicas.len();
            replicas.extend(self.replicas(p).iter().filter(|n| holders.contains(n)));
            for &n in fresh.replicas(p) {
                if replicas.len() - first == rf.get() {
                    break;
                }
                if !replicas[first..].contains(&n) {
                    replicas.push(n);
                }
            }
            // The fresh row alone has rf distinct holders, so the row is always complete.
            debug_assert_eq!(replicas.len() - first, rf.get());
        }
        let placement = Self {
            rf: self.rf,
            partitions: self.partitions,
            replicas,
        };
        placement.check(holders)?;
        Ok(placement)
    }

    pub fn replication_factor(&self) -> usize {
        self.rf as usize
    }

    pub fn partitions(&self) -> PartitionCount {
        self.partitions
    }

    /// Partition `p`'s replicas, preferred first.
    pub fn replicas(&self, p: PartitionId) -> &[NodeId] {
        let rf = self.rf as usize;
        &self.replicas[p.index() * rf..(p.index() + 1) * rf]
    }

    /// The partitions `node` holds a replica of.
    pub fn partitions_of(&self, node: NodeId) -> Vec<PartitionId> {
        self.partitions
            .iter()
            .filter(|&p| self.replicas(p).contains(&node))
            .collect()
    }

    /// Replicas per node.
    pub fn load(&self) -> BTreeMap<NodeId, usize> {
        let mut load = BTreeMap::new();
        for &n in &self.replicas {
            *load.entry(n).or_default() += 1;
        }
        load
    }

    /// The table's invariants: one row of `rf` distinct members of `nodes` per partition.
    ///
    /// # Errors
    /// `PlacementError::Broken` naming the first partition at fault.
    pub fn check(&self, nodes: &[NodeId]) -> Result<(), PlacementError> {
        let rf = self.rf as usize;
        if self.replicas.len() != self.partitions.get() as usize * rf {
            return Err(PlacementError::Broken(format!(
                "{} entries for {} partitions x rf {rf}",
                self.replicas.len(),
                self.partitions.get()
            )));
        }
        for p in self.partitions.iter() {
            let row = self.replicas(p);
            for (i, n) in row.iter().enumerate() {
                if !nodes.contains(n) {
                    return Err(PlacementError::Broken(format!(
                        "{p} placed on {n}, not a member"
                    )));
                }
                if row[..i].contains(n) {
                    return Err(PlacementError::Broken(format!("{p} has {n} twice")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: u64) -> Vec<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    /// The ring walked the slow way: every point's clockwise distance from the partition.
    fn naive(
        nodes: &[NodeId],
        partitions: PartitionCount,
        rf: usize,
        vnodes: u32,
    ) -> Vec<Vec<NodeId>> {
        partitions
            .iter()
            .map(|p| {
                let x = partition_point(p);
                let mut points: Vec<(u64, u64, NodeId)> = nodes
                    .iter()
                    .flat_map(|&n| (0..vnodes).map(move |v| (node_point(n, v), n)))
                    .map(|(pt, n)| (pt.wrapping_sub(x), pt, n))
                    .collect();
                points.sort_unstable();
                let mut out = Vec::new();
                for (_, _, n) in points {
                    if !out.contains(&n) && out.len() < rf {
                        out.push(n);
                    }
                }
                out
            })
            .collect()
    }

    proptest! {
        #[test]
        fn placement_matches_the_naive_ring_walk(
            node_ids in proptest::collection::btree_set(any::<u64>(), 1..7),
            p in 1u32..70,
            rf in 1u32..4,
            vnodes in 1u32..20,
        ) {
            let nodes: Vec<NodeId> = node_ids.into_iter().map(NodeId).collect();
            let partitions = PartitionCount::new(p).unwrap();
            let rf = ReplicationFactor::new(rf).unwrap();
            match Placement::compute(&nodes, partitions, rf, vnodes) {
                Ok(placement) => {
                    let expect = naive(&nodes, partitions, rf.get(), vnodes);
                    for part in partitions.iter() {
                        prop_assert_eq!(placement.replicas(part), &expect[part.index()][..]);
                    }
                    prop_assert!(placement.check(&nodes).is_ok());
                }
                Err(PlacementError::NotEnoughNodes { .. }) => prop_assert!(nodes.len() < rf.get()),
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }

    #[test]
    fn load_is_balanced_with_256_virtual_nodes() {
        let p = PartitionCount::new(1024).unwrap();
        let rf = ReplicationFactor::new(2).unwrap();
        for n in [3u64, 5, 10] {
            let placement = Placement::compute(&ids(n), p, rf, 256).unwrap();
            let load = placement.load();
            let mean = (1024.0 * 2.0) / n as f64;
            let max = *load.values().max().unwrap() as f64;
            assert!(
                max / mean < 1.15,
                "{n} nodes: max {max} vs mean {mean}: {load:?}"
            );
        }
    }

    #[test]
    fn a_joining_node_moves_only_a_share_of_the_partitions() {
        let p = PartitionCount::new(1024).unwrap();
        let rf = ReplicationFactor::new(1).unwrap();
        let before = Placement::compute(&ids(4), p, rf, 256).unwrap();
        let after = Placement::compute(&ids(5), p, rf, 256).unwrap();
        let moved = p
            .iter()
            .filter(|&q| before.replicas(q) != after.replicas(q))
            .count();
        // Ideal: 1/5 of the partitions move, all of them to the new node.
        assert!((150..=260).contains(&moved), "{moved} moved");
        assert!(
            p.iter()
                .filter(|&q| before.replicas(q) != after.replicas(q))
                .all(|q| after.replicas(q) == [NodeId(5)])
        );
    }

    proptest! {
        #[test]
        fn reassigning_moves_only_the_rows_of_the_nodes_that_left(
            n in 3u64..7,
            gone in 1u64..3,
            rf in 1u32..3,
        ) {
            let p = PartitionCount::new(64).unwrap();
            let rf = ReplicationFactor::new(rf).unwrap();
            let before = Placement::compute(&ids(n), p, rf, 16).unwrap();
            let holders: Vec<NodeId> = ids(n).into_iter().filter(|id| id.0 != gone).collect();
            let after = before.reassign(&holders, 16).unwrap();
            prop_assert!(after.check(&holders).is_ok());
            for q in p.iter() {
                let kept: Vec<NodeId> = before.replicas(q).iter().copied().filter(|x| x.0 != gone).collect();
                prop_assert_eq!(&after.replicas(q)[..kept.len()], &kept[..]);
                if !before.replicas(q).contains(&NodeId(gone)) {
                    prop_assert_eq!(after.replicas(q), before.replicas(q));
                }
            }
        }
    }

    #[test]
    fn too_few_nodes_is_an_error() {
        let p = PartitionCount::new(8).unwrap();
        let e =
            Placement::compute(&ids(1), p, ReplicationFactor::new(2).unwrap(), 256).unwrap_err();
        assert_eq!(e, PlacementError::NotEnoughNodes { rf: 2, up: 1 });
    }
}
