//! The key -> partition function. Every process (router, loader, nodes, and any external job
//! that pre-partitions data) must compute it bit for bit the same, so it is spelled out here
//! rather than left to `std::hash`, whose output may change between Rust releases.
//!
//! `mix64` is the 64-bit finaliser of MurmurHash3 (`fmix64`):
//!
//! ```text
//! x ^= x >> 33; x *= 0xff51afd7ed558ccd; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53; x ^= x >> 33
//! ```
//!
//! - customer `c`: `mix64(c ^ CUSTOMER_SALT) mod P`
//! - product `p`: `mix64(p ^ PRODUCT_SALT) mod P`
//! - segment `(k, n)`: `mix64(mix64(k ^ SEGMENT_SALT) ^ n) mod P`
//!
//! The salts keep customer 7, product 7 and container 7 from always landing on one partition.

use crate::ids::{ContainerId, CustomerId, PartitionCount, PartitionId, ProductId, SegmentKey};

pub const CUSTOMER_SALT: u64 = 0x0000_0000_0000_0000;
pub const PRODUCT_SALT: u64 = 0x9e37_79b9_7f4a_7c15;
pub const SEGMENT_SALT: u64 = 0xbf58_476d_1ce4_e5b9;

/// MurmurHash3's `fmix64`: a bijection on u64 with full avalanche.
pub const fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

fn reduce(hash: u64, partitions: PartitionCount) -> PartitionId {
    // `mod P`, so the function stays the same for any P (a power of two or not).
    PartitionId((hash % u64::from(partitions.get())) as u32)
}

pub fn partition_of_customer(customer: CustomerId, partitions: PartitionCount) -> PartitionId {
    reduce(mix64(customer ^ CUSTOMER_SALT), partitions)
}

pub fn partition_of_product(product: ProductId, partitions: PartitionCount) -> PartitionId {
    reduce(mix64(product ^ PRODUCT_SALT), partitions)
}

pub fn partition_of_segment(segment: SegmentKey, partitions: PartitionCount) -> PartitionId {
    let container: ContainerId = segment.container;
    reduce(
        mix64(mix64(container ^ SEGMENT_SALT) ^ u64::from(segment.number)),
        partitions,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the hash to known values: if this test fails, every stored partition file and every
    /// external partitioning job disagrees with this build.
    #[test]
    fn hash_is_pinned() {
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0xb456_bcfc_34c2_cb2c);
        assert_eq!(mix64(u64::MAX), 0x64b5_720b_4b82_5f21);
        let p = PartitionCount::new(1024).unwrap();
        assert_eq!(partition_of_customer(1, p), PartitionId(0x32c));
        assert_eq!(partition_of_customer(u64::MAX, p), PartitionId(0x321));
    }

    #[test]
    fn keys_spread_evenly_over_partitions() {
        let p = PartitionCount::new(64).unwrap();
        let mut counts = [0u32; 64];
        for c in 0..64_000u64 {
            counts[partition_of_customer(c, p).index()] += 1;
        }
        // Expected 1000 each; a binomial 5-sigma band is about +-160.
        assert!(
            counts.iter().all(|&n| (840..=1160).contains(&n)),
            "{counts:?}"
        );
    }
}
