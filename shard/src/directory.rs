//! The directory of a model version: for each container, its segments and how many candidates
//! each holds (in stock, overall and per category). It ships with the version to every router,
//! which uses it to know where a pool lives and to cut the PPS stage (`candidates=N`) into a
//! per-segment take without asking any node: the top N candidates by pool score are the first N
//! in pool order, so segment `s` contributes `min(eligible_s, N - eligible before s)`.

use crate::ids::{CategoryId, ContainerId, ModelVersion, PartitionCount};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSummary {
    pub products: u32,
    pub in_stock: u32,
    /// In-stock products per category, sorted by category id.
    pub in_stock_by_category: Vec<(CategoryId, u32)>,
}

impl SegmentSummary {
    /// Candidates of this segment under an optional category filter.
    pub fn eligible(&self, category: Option<CategoryId>) -> u32 {
        match category {
            None => self.in_stock,
            Some(c) => self
                .in_stock_by_category
                .binary_search_by_key(&c, |e| e.0)
                .map_or(0, |i| self.in_stock_by_category[i].1),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerEntry {
    pub segments: Vec<SegmentSummary>,
}

/// One segment to ask for, and how many of its candidates (in pool order) take part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentPlan {
    pub number: u32,
    pub take: u32,
}

impl ContainerEntry {
    pub fn products(&self) -> u64 {
        self.segments.iter().map(|s| u64::from(s.products)).sum()
    }

    /// The segments that hold candidates, each with its take. Segments without any are left
    /// out: they cannot contribute, and asking for them would cost a round trip.
    pub fn plan(&self, category: Option<CategoryId>, candidates: Option<u64>) -> Vec<SegmentPlan> {
        let mut remaining = candidates.unwrap_or(u64::MAX);
        let mut plan = Vec::new();
        for (number, segment) in self.segments.iter().enumerate() {
            if remaining == 0 {
                break;
            }
            let eligible = u64::from(segment.eligible(category));
            let take = eligible.min(remaining);
            if take > 0 {
                plan.push(SegmentPlan {
                    number: number as u32,
                    take: take as u32,
                });
                remaining -= take;
            }
        }
        plan
    }
}

/// All containers of one model version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Directory {
    pub version: ModelVersion,
    pub dim: u32,
    pub partitions: PartitionCount,
    pub containers: HashMap<ContainerId, ContainerEntry>,
}

impl Directory {
    pub fn container(&self, id: ContainerId) -> Option<&ContainerEntry> {
        self.containers.get(&id)
    }

    pub fn segment_count(&self) -> usize {
        self.containers.values().map(|c| c.segments.len()).sum()
    }

    /// CRC-32 of the directory in a canonical order (containers by id), so that every process
    /// computes the same value for the same directory: the map records it, nodes report it.
    pub fn digest(&self) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(self.version.as_str().as_bytes());
        hasher.update(&self.dim.to_le_bytes());
        hasher.update(&self.partitions.get().to_le_bytes());
        let mut ids: Vec<&ContainerId> = self.containers.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let entry = &self.containers[id];
            hasher.update(&id.to_le_bytes());
            hasher.update(&(entry.segments.len() as u64).to_le_bytes());
            for segment in &entry.segments {
                hasher.update(&segment.products.to_le_bytes());
                hasher.update(&segment.in_stock.to_le_bytes());
                hasher.update(&(segment.in_stock_by_category.len() as u64).to_le_bytes());
                for (category, count) in &segment.in_stock_by_category {
                    hasher.update(&category.to_le_bytes());
                    hasher.update(&count.to_le_bytes());
                }
            }
        }
        hasher.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_ignores_hash_order_and_sees_every_field() {
        let entry = |n: u32| ContainerEntry {
            segments: vec![summary(n, &[(1, n)])],
        };
        let directory = |ids: &[u64]| Directory {
            version: ModelVersion::new("v1").unwrap(),
            dim: 4,
            partitions: PartitionCount::new(8).unwrap(),
            containers: ids.iter().map(|&id| (id, entry(id as u32))).collect(),
        };
        let a = directory(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let b = directory(&[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(a.digest(), b.digest());
        let mut c = a.clone();
        c.containers.get_mut(&3).unwrap().segments[0].in_stock_by_category[0].1 += 1;
        assert_ne!(a.digest(), c.digest());
        let mut d = a.clone();
        d.dim = 5;
        assert_ne!(a.digest(), d.digest());
    }

    fn summary(in_stock: u32, by_category: &[(u32, u32)]) -> SegmentSummary {
        SegmentSummary {
            products: in_stock + 1,
            in_stock,
            in_stock_by_category: by_category.to_vec(),
        }
    }

    #[test]
    fn plan_cuts_candidates_across_segments_in_pool_order() {
        let entry = ContainerEntry {
            segments: vec![
                summary(4, &[(1, 3), (2, 1)]),
                summary(4, &[(2, 4)]),
                summary(2, &[(1, 2)]),
            ],
        };
        let all = entry.plan(None, None);
        assert_eq!(
            all.iter().map(|p| (p.number, p.take)).collect::<Vec<_>>(),
            [(0, 4), (1, 4), (2, 2)]
        );
        let top6 = entry.plan(None, Some(6));
        assert_eq!(
            top6.iter().map(|p| (p.number, p.take)).collect::<Vec<_>>(),
            [(0, 4), (1, 2)]
        );
        let cat1 = entry.plan(Some(1), Some(4));
        assert_eq!(
            cat1.iter().map(|p| (p.number, p.take)).collect::<Vec<_>>(),
            [(0, 3), (2, 1)]
        );
        assert!(entry.plan(Some(9), None).is_empty());
        assert!(entry.plan(None, Some(0)).is_empty());
    }
}
