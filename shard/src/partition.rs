//! A partition: the customers, products and pool segments of one model version whose keys hash
//! to one [`PartitionId`]. It is the unit that is built, stored, shipped, checksummed and placed.

use crate::error::InvariantViolation;
use crate::hashing::{partition_of_customer, partition_of_product, partition_of_segment};
use crate::ids::{ModelVersion, PartitionCount, PartitionId, SegmentKey};
use crate::segment::Segment;
use crate::table::{CustomerTable, ProductTable};

#[derive(Clone, Debug, PartialEq)]
pub struct Partition {
    pub(crate) id: PartitionId,
    pub(crate) partitions: PartitionCount,
    pub(crate) version: ModelVersion,
    pub(crate) dim: usize,
    pub(crate) customers: CustomerTable,
    pub(crate) products: ProductTable,
    /// Sorted by key; looked up by binary search.
    pub(crate) segments: Vec<Segment>,
}

/// The invariants [`Partition::check`] verifies, by name: the same names appear in test
/// failures and, later, in the chaos checker.
pub mod invariant {
    pub const KEYS_HASH_HERE: &str = "partition.keys_hash_here";
    pub const IDS_SORTED_UNIQUE: &str = "partition.ids_sorted_unique";
    pub const COLUMNS_ALIGNED: &str = "partition.columns_aligned";
    pub const VALUES_FINITE: &str = "partition.values_finite";
    pub const POOL_ORDER: &str = "partition.segment_pool_order";
    pub const DIM: &str = "partition.dim";
    pub const CATEGORY_CODES: &str = "partition.segment_category_codes";
}

fn violation(invariant: &'static str, detail: String) -> InvariantViolation {
    InvariantViolation { invariant, detail }
}

fn ensure(
    ok: bool,
    invariant: &'static str,
    detail: impl FnOnce() -> String,
) -> Result<(), InvariantViolation> {
    if ok {
        Ok(())
    } else {
        Err(violation(invariant, detail()))
    }
}

fn all_finite(values: &[f32]) -> bool {
    values.iter().all(|v| v.is_finite())
}

impl Partition {
    pub fn empty(
        id: PartitionId,
        partitions: PartitionCount,
        version: ModelVersion,
        dim: usize,
    ) -> Self {
        Self {
            id,
            partitions,
            version,
            dim,
            customers: CustomerTable::empty(dim),
            products: ProductTable::empty(dim),
            segments: Vec::new(),
        }
    }

    pub fn id(&self) -> PartitionId {
        self.id
    }

    pub fn partition_count(&self) -> PartitionCount {
        self.partitions
    }

    pub fn version(&self) -> &ModelVersion {
        &self.version
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn customers(&self) -> &CustomerTable {
        &self.customers
    }

    pub fn products(&self) -> &ProductTable {
        &self.products
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn segment(&self, key: SegmentKey) -> Option<&Segment> {
        self.segments
            .binary_search_by_key(&key, Segment::key)
            .ok()
            .map(|i| &self.segments[i])
    }

    /// Bytes of f32 vector data held: the figure the memory target is stated against.
    pub fn vector_bytes(&self) -> usize {
        self.customers.vector_bytes()
            + self.products.vector_bytes()
            + self
                .segments
                .iter()
                .map(Segment::vector_bytes)
                .sum::<usize>()
    }

    /// Bytes of heap held by this partition's columns.
    pub fn heap_bytes(&self) -> usize {
        self.customers.heap_bytes()
            + self.products.heap_bytes()
            + self.segments.iter().map(Segment::heap_bytes).sum::<usize>()
    }

    /// Verifies every invariant of a well-formed partition. Called after building, before
    /// writing a file and after reading one back.
    ///
    /// # Errors
    /// The first invariant found broken, with the offending key.
    pub fn check(&self) -> Result<(), InvariantViolation> {
        use invariant::*;
        let (dim, p, id) = (self.dim, self.partitions, self.id);
        ensure((1..=crate::DIM_MAX).contains(&dim), DIM, || {
            format!("dim {dim}")
        })?;
        ensure(id.0 < p.get(), KEYS_HASH_HERE, || {
            format!("partition {id} of {}", p.get())
        })?;

        let c = &self.customers;
        ensure(c.dim == dim && p == self.partitions, DIM, || {
            "customer table dim".into()
        })?;
        ensure(
            c.ids.windows(2).all(|w| w[0] < w[1]),
            IDS_SORTED_UNIQUE,
            || "customer ids".into(),
        )?;
        ensure(
            c.vectors.len() == c.ids.len() * dim,
            COLUMNS_ALIGNED,
            || "customer vectors".into(),
        )?;
        ensure(
            c.category_offsets.len() == c.ids.len() + 1
                && c.category_offsets.first() == Some(&0)
                && c.category_offsets.windows(2).all(|w| w[0] <= w[1])
                && c.category_offsets.last().map(|&o| o as usize) == Some(c.category_ids.len())
                && c.category_ids.len() == c.category_weights.len(),
            COLUMNS_ALIGNED,
            || "customer category offsets".into(),
        )?;
        for row in 0..c.ids.len() {
            let view = c.row(row);
            ensure(
                view.category_ids.windows(2).all(|w| w[0] < w[1]),
                IDS_SORTED_UNIQUE,
                || format!("categories of customer {}", view.id),
            )?;
        }
        if let Some(&bad) = c
            .ids
            .iter()
            .find(|&&cid| partition_of_customer(cid, p) != id)
        {
            return Err(violation(KEYS_HASH_HERE, format!("customer {bad} in {id}")));
        }
        ensure(
            all_finite(&c.vectors) && all_finite(&c.category_weights),
            VALUES_FINITE,
            || "customer values".into(),
        )?;

        let t = &self.products;
        ensure(t.dim == dim, DIM, || "product table dim".into())?;
        ensure(
            t.ids.windows(2).all(|w| w[0] < w[1]),
            IDS_SORTED_UNIQUE,
            || "product ids".into(),
        )?;
        ensure(
            t.categories.len() == t.ids.len()
                && t.in_stock.len() == t.ids.len()
                && t.vectors.len() == t.ids.len() * dim,
            COLUMNS_ALIGNED,
            || "product columns".into(),
        )?;
        if let Some(&bad) = t
            .ids
            .iter()
            .find(|&&pid| partition_of_product(pid, p) != id)
        {
            return Err(violation(KEYS_HASH_HERE, format!("product {bad} in {id}")));
        }
        ensure(all_finite(&t.vectors), VALUES_FINITE, || {
            "product vectors".into()
        })?;

        ensure(
            self.segments.windows(2).all(|w| w[0].key() < w[1].key()),
            IDS_SORTED_UNIQUE,
            || "segment keys".into(),
        )?;
        for s in &self.segments {
            let key = s.key();
            ensure(partition_of_segment(key, p) == id, KEYS_HASH_HERE, || {
                format!("segment {key:?} in {id}")
            })?;
            ensure(s.dim == dim && !s.product_ids.is_empty(), DIM, || {
                format!("segment {key:?}")
            })?;
            let n = s.product_ids.len();
            ensure(
                s.all_in_stock == s.in_stock.iter().all(|&x| x),
                COLUMNS_ALIGNED,
                || format!("segment {key:?} stock summary"),
            )?;
            ensure(
                s.category_codes.len() == n
                    && s.pool_scores.len() == n
                    && s.in_stock.len() == n
                    && s.vectors.len() == n * dim,
                COLUMNS_ALIGNED,
                || format!("segment {key:?} columns"),
            )?;
            ensure(
                s.category_dictionary.windows(2).all(|w| w[0] < w[1])
                    && s.category_codes
                        .iter()
                        .all(|&c| usize::from(c) < s.category_dictionary.len()),
                CATEGORY_CODES,
                || format!("segment {key:?} category dictionary"),
            )?;
            ensure(
                all_finite(&s.vectors) && all_finite(&s.pool_scores),
                VALUES_FINITE,
                || format!("segment {key:?} values"),
            )?;
            let ordered = (1..n).all(|i| {
                let (a, b) = (s.pool_scores[i - 1], s.pool_scores[i]);
                a > b || (a == b && s.product_ids[i - 1] < s.product_ids[i])
            });
            ensure(ordered, POOL_ORDER, || format!("segment {key:?}"))?;
        }
        Ok(())
    }
}
