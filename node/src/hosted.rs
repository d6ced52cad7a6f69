//! What a node holds for one model version: its replicas of some partitions.

use scoregrid_shard::hashing::{partition_of_customer, partition_of_product, partition_of_segment};
use scoregrid_shard::{
    CustomerId, ModelVersion, Partition, PartitionCount, ProductId, Segment, SegmentKey,
};
use std::sync::Arc;

#[derive(Debug)]
pub struct HostedVersion {
    version: ModelVersion,
    dim: usize,
    partition_count: PartitionCount,
    /// Indexed by partition id; `None` where this node holds no replica.
    partitions: Vec<Option<Arc<Partition>>>,
}

impl HostedVersion {
    /// # Panics
    /// If a partition belongs to another version or partition count: the caller hands over the
    /// partitions of one built version.
    pub fn new(
        version: ModelVersion,
        dim: usize,
        partition_count: PartitionCount,
        partitions: Vec<Partition>,
    ) -> Self {
        let mut slots: Vec<Option<Arc<Partition>>> = vec![None; partition_count.get() as usize];
        for p in partitions {
            assert_eq!(p.version(), &version, "partition of another version");
            assert_eq!(
                p.partition_count(),
                partition_count,
                "partition of another layout"
            );
            assert_eq!(p.dim(), dim, "partition of another dim");
            let index = p.id().index();
            slots[index] = Some(Arc::new(p));
        }
        Self {
            version,
            dim,
            partition_count,
            partitions: slots,
        }
    }

    pub fn version(&self) -> &ModelVersion {
        &self.version
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn partition_count(&self) -> PartitionCount {
        self.partition_count
    }

    pub fn partitions(&self) -> impl Iterator<Item = &Partition> {
        self.partitions.iter().flatten().map(|p| p.as_ref())
    }

    /// `Some(holds)`: whether the customer's partition is hosted here.
    pub fn customer_partition(&self, customer: CustomerId) -> Option<&Partition> {
        self.partitions[partition_of_customer(customer, self.partition_count).index()].as_deref()
    }

    pub fn product_partition(&self, product: ProductId) -> Option<&Partition> {
        self.partitions[partition_of_product(product, self.partition_count).index()].as_deref()
    }

    pub fn segment(&self, key: SegmentKey) -> Option<&Segment> {
        self.partitions[partition_of_segment(key, self.partition_count).index()]
            .as_deref()?
            .segment(key)
    }

    pub fn vector_bytes(&self) -> usize {
        self.partitions().map(Partition::vector_bytes).sum()
    }
}
