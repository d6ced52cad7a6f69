//! What a node holds for one model version: its replicas of some partitions.

use scoregrid_shard::hashing::{partition_of_customer, partition_of_product, partition_of_segment};
use scoregrid_shard::{
    CustomerId, Directory, ModelVersion, Partition, PartitionCount, PartitionId, ProductId,
    Segment, SegmentKey,
};
use std::sync::Arc;

#[derive(Debug)]
pub struct HostedVersion {
    directory: Arc<Directory>,
    /// Indexed by partition id; `None` where this node holds no replica.
    partitions: Vec<Option<Arc<Partition>>>,
}

impl HostedVersion {
    /// Hosts `partitions` of the version `directory` describes.
    ///
    /// # Errors
    /// A message naming the partition that belongs to another version, partition count or dim,
    /// or is given twice: partitions can arrive over the network, so this is checked, not assumed.
    pub fn new(directory: Arc<Directory>, partitions: Vec<Partition>) -> Result<Self, String> {
        let count = directory.partitions;
        let mut slots: Vec<Option<Arc<Partition>>> = vec![None; count.get() as usize];
        for p in partitions {
            if p.version() != &directory.version
                || p.partition_count() != count
                || p.dim() != directory.dim as usize
            {
                return Err(format!(
                    "partition {} is of version {} ({} partitions, dim {}), expected {} ({} partitions, dim {})",
                    p.id(),
                    p.version(),
                    p.partition_count().get(),
                    p.dim(),
                    directory.version,
                    count.get(),
                    directory.dim
                ));
            }
            let index = p.id().index();
            if slots[index].is_some() {
                return Err(format!("partition {} given twice", p.id()));
            }
            slots[index] = Some(Arc::new(p));
        }
        Ok(Self {
            directory,
            partitions: slots,
        })
    }

    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// The same version with one more partition (fetched back from a peer).
    ///
    /// # Errors
    /// As [`HostedVersion::new`] for that partition.
    pub fn with_partition(&self, partition: Partition) -> Result<Self, String> {
        let mut added = Self::new(self.directory.clone(), vec![partition])?;
        for (slot, held) in added.partitions.iter_mut().zip(&self.partitions) {
            if slot.is_none() {
                slot.clone_from(held);
            }
        }
        Ok(added)
    }

    pub fn partition(&self, partition: PartitionId) -> Option<&Partition> {
        self.partitions.get(partition.index())?.as_deref()
    }

    pub fn version(&self) -> &ModelVersion {
        &self.directory.version
    }

    pub fn dim(&self) -> usize {
        self.directory.dim as usize
    }

    pub fn partition_count(&self) -> PartitionCount {
        self.directory.partitions
    }

    pub fn partitions(&self) -> impl Iterator<Item = &Partition> {
        self.partitions.iter().flatten().map(|p| p.as_ref())
    }

    /// `Some(holds)`: whether the customer's partition is hosted here.
    pub fn customer_partition(&self, customer: CustomerId) -> Option<&Partition> {
        self.partitions[partition_of_customer(customer, self.partition_count()).index()].as_deref()
    }

    pub fn product_partition(&self, product: ProductId) -> Option<&Partition> {
        self.partitions[partition_of_product(product, self.partition_count()).index()].as_deref()
    }

    pub fn segment(&self, key: SegmentKey) -> Option<&Segment> {
        self.partitions[partition_of_segment(key, self.partition_count()).index()]
            .as_deref()?
            .segment(key)
    }

    pub fn vector_bytes(&self) -> usize {
        self.partitions().map(Partition::vector_bytes).sum()
    }
}
