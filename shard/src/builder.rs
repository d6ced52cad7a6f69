//! Turns a stream of model rows into partitions and a directory.
//!
//! The builder owns the model-level rules of contract section 1 (vector length, finite values,
//! unique ids, pool entries naming known products); the loader owns the syntax and attaches the
//! file and line, which it hands in as an opaque [`RowRef`] and gets back in errors.
//!
//! Memory: rows are appended to per-partition staging columns; `finish` copies each partition
//! into exactly sized blocks and drops the staging, so the built model holds no slack. Products
//! are staged once, globally, because pools refer to them by id; pool entries are staged as
//! 24-byte records until their containers are sorted and cut into segments.

use crate::directory::{ContainerEntry, Directory, SegmentSummary};
use crate::error::BuildError;
use crate::hashing::{partition_of_customer, partition_of_product, partition_of_segment};
use crate::ids::{
    CategoryId, ContainerId, CustomerId, ModelVersion, PartitionCount, ProductId, SegmentKey,
};
use crate::partition::Partition;
use crate::segment::Segment;
use crate::spill::{CustomerSpill, SpilledCustomers};
use crate::table::{CustomerTable, ProductTable};
use std::collections::HashMap;

/// Where a row came from, as the caller encodes it (the loader packs file index and line).
/// Returned inside errors that refer to an earlier row ("first seen at ...").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowRef(pub u64);

/// The shape of a model version being built.
#[derive(Clone, Debug)]
pub struct ModelLayout {
    pub version: ModelVersion,
    pub dim: usize,
    pub partitions: PartitionCount,
    /// Largest number of products in one segment (`S`).
    pub segment_products_max: u32,
}

/// Anything that takes the rows of a model: the [`ModelBuilder`], the brute-force
/// [`crate::reference::ReferenceModel`].
pub trait ModelSink {
    /// # Errors
    /// A [`BuildError`] naming the field at fault.
    fn add_customer(
        &mut self,
        id: CustomerId,
        vector: &[f32],
        categories: &[(CategoryId, f32)],
        origin: RowRef,
    ) -> Result<(), BuildError>;

    /// # Errors
    /// A [`BuildError`] naming the field at fault.
    fn add_product(
        &mut self,
        id: ProductId,
        category: CategoryId,
        vector: &[f32],
        in_stock: bool,
        origin: RowRef,
    ) -> Result<(), BuildError>;

    /// Pool entries must come after the products they name.
    ///
    /// # Errors
    /// A [`BuildError`] naming the field at fault.
    fn add_pool_entry(
        &mut self,
        container: ContainerId,
        product: ProductId,
        pool_score: f32,
        origin: RowRef,
    ) -> Result<(), BuildError>;
}

/// The rules shared by every sink.
pub mod rules {
    use super::*;

    /// # Errors
    /// `WrongDim` or `NotFinite` naming `field`.
    pub fn check_vector(field: &'static str, vector: &[f32], dim: usize) -> Result<(), BuildError> {
        if vector.len() != dim {
            return Err(BuildError::WrongDim {
                field,
                expected: dim,
                found: vector.len(),
            });
        }
        vector.iter().try_for_each(|&v| check_finite(field, v))
    }

    /// # Errors
    /// `NotFinite` naming `field`.
    pub fn check_finite(field: &'static str, value: f32) -> Result<(), BuildError> {
        if value.is_finite() {
            Ok(())
        } else {
            Err(BuildError::NotFinite { field, value })
        }
    }

    /// # Errors
    /// `NotFinite` or `DuplicateCategory`.
    pub fn check_categories(
        categories: &[(CategoryId, f32)],
    ) -> Result<Vec<(CategoryId, f32)>, BuildError> {
        let mut sorted = categories.to_vec();
        for &(_, w) in &sorted {
            check_finite("categories.weight", w)?;
        }
        sorted.sort_by_key(|c| c.0);
        if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(BuildError::DuplicateCategory { category: w[0].0 });
        }
        Ok(sorted)
    }
}

#[derive(Default)]
struct CustomerStaging {
    ids: Vec<CustomerId>,
    vectors: Vec<f32>,
    category_ends: Vec<u32>,
    category_ids: Vec<CategoryId>,
    category_weights: Vec<f32>,
}

#[derive(Default)]
struct ProductStaging {
    ids: Vec<ProductId>,
    categories: Vec<CategoryId>,
    in_stock: Vec<bool>,
    vectors: Vec<f32>,
    index: HashMap<ProductId, (u32, RowRef)>,
}

#[derive(Clone, Copy)]
struct PoolEntry {
    container: ContainerId,
    product: u32,
    pool_score: f32,
    origin: RowRef,
}

/// The result of building a model: every partition (empty ones included) and the directory.
#[derive(Debug)]
pub struct BuiltModel {
    pub partitions: Vec<Partition>,
    pub directory: Directory,
}

impl BuiltModel {
    pub fn vector_bytes(&self) -> usize {
        self.partitions.iter().map(Partition::vector_bytes).sum()
    }
}

pub struct ModelBuilder {
    layout: ModelLayout,
    customers: Customers,
    products: ProductStaging,
    pool: Vec<PoolEntry>,
}

/// Where customers wait for [`ModelBuilder::finish`]: in RAM, per partition, or spilled to disk
/// ([`crate::spill`]).
enum Customers {
    Ram {
        staging: Vec<CustomerStaging>,
        origins: HashMap<CustomerId, RowRef>,
    },
    Spill(CustomerSpill),
}

/// Why [`ModelBuilder::finish_each`] stopped: the model, or the caller's handling of a partition.
#[derive(Debug)]
pub enum FinishError<E> {
    Build(BuildError),
    Each(E),
}

impl ModelBuilder {
    /// # Panics
    /// If the layout's dim or segment size is zero, or dim exceeds [`crate::DIM_MAX`], or the
    /// segment size [`crate::SEGMENT_PRODUCTS_HARD_MAX`]: the loader validates the manifest and
    /// the configuration before building.
    pub fn new(layout: ModelLayout) -> Self {
        assert!((1..=crate::DIM_MAX).contains(&layout.dim));
        assert!((1..=crate::SEGMENT_PRODUCTS_HARD_MAX).contains(&layout.segment_products_max));
        let staging = (0..layout.partitions.get())
            .map(|_| CustomerStaging::default())
            .collect();
        Self {
            layout,
            customers: Customers::Ram {
                staging,
                origins: HashMap::new(),
            },
            products: ProductStaging::default(),
            pool: Vec::new(),
        }
    }

    /// A builder that spills customers to files in `dir` instead of holding them in RAM (see
    /// [`crate::spill`]); build with [`ModelBuilder::finish_each`] to hold one partition at a
    /// time. The files are deleted as they are read back, and the folder when the builder is
    /// done.
    ///
    /// # Errors
    /// `BuildError::Spill` if `dir` cannot be created.
    ///
    /// # Panics
    /// As [`ModelBuilder::new`].
    pub fn spilling(layout: ModelLayout, dir: &std::path::Path) -> Result<Self, BuildError> {
        let spill = CustomerSpill::create(dir, layout.partitions, layout.dim)
            .map_err(|message| BuildError::Spill { message })?;
        Ok(Self {
            customers: Customers::Spill(spill),
            ..Self::new(layout)
        })
    }

    pub fn layout(&self) -> &ModelLayout {
        &self.layout
    }

    /// Sorts, segments and lays out everything staged.
    ///
    /// # Errors
    /// `DuplicatePoolEntry` when a container lists a product twice; for a spilling builder,
    /// `RepeatedCustomer` and `Spill`.
    pub fn finish(self) -> Result<BuiltModel, BuildError> {
        let mut partitions = Vec::new();
        let directory = self
            .finish_each(|partition| {
                partitions.push(partition);
                Ok::<(), std::convert::Infallible>(())
            })
            .map_err(|error| match error {
                FinishError::Build(error) => error,
                FinishError::Each(never) => match never {},
            })?;
        Ok(BuiltModel {
            partitions,
            directory,
        })
    }

    /// Builds the partitions one at a time, in id order, and hands each to `each`, which may
    /// write it away and drop it: with a spilling builder, one partition's customers are in RAM
    /// at a time. Returns the directory.
    ///
    /// # Errors
    /// As [`ModelBuilder::finish`], or the first error of `each`.
    pub fn finish_each<E>(
        self,
        mut each: impl FnMut(Partition) -> Result<(), E>,
    ) -> Result<Directory, FinishError<E>> {
        let ModelBuilder {
            layout,
            customers,
            products,
            mut pool,
        } = self;
        let dim = layout.dim;
        let build = FinishError::Build;
        let mut partitions: Vec<Partition> = layout
            .partitions
            .iter()
            .map(|id| Partition::empty(id, layout.partitions, layout.version.clone(), dim))
            .collect();
        for (index, table) in product_tables(&products, layout.partitions, dim) {
            partitions[index].products = table;
        }

        // Duplicate (container, product) pairs first, while equal pairs are adjacent.
        pool.sort_unstable_by_key(|e| (e.container, e.product));
        if let Some(w) = pool
            .windows(2)
            .find(|w| w[0].container == w[1].container && w[0].product == w[1].product)
        {
            let (first, second) = if w[0].origin.0 <= w[1].origin.0 {
                (w[0], w[1])
            } else {
                (w[1], w[0])
            };
            return Err(build(BuildError::DuplicatePoolEntry {
                container: first.container,
                product: products.ids[first.product as usize],
                first: first.origin,
                second: second.origin,
            }));
        }
        // Pool order: container, then pool score descending, ties by lower product id.
        pool.sort_unstable_by(|a, b| {
            a.container
                .cmp(&b.container)
                .then(b.pool_score.total_cmp(&a.pool_score))
                .then(products.ids[a.product as usize].cmp(&products.ids[b.product as usize]))
        });

        let mut containers = HashMap::new();
        let segment_max = layout.segment_products_max as usize;
        for group in pool.chunk_by(|a, b| a.container == b.container) {
            let container = group[0].container;
            let mut entry = ContainerEntry::default();
            for (number, entries) in group.chunks(segment_max).enumerate() {
                let key = SegmentKey {
                    container,
                    number: number as u32,
                };
                let (segment, summary) = build_segment(key, entries, &products, dim);
                entry.segments.push(summary);
                partitions[partition_of_segment(key, layout.partitions).index()]
                    .segments
                    .push(segment);
            }
            containers.insert(container, entry);
        }
        drop(pool);
        drop(products);

        let mut customers = customers;
        let mut staged = match &mut customers {
            Customers::Ram { staging, origins } => {
                std::mem::take(origins);
                std::mem::take(staging).into_iter().map(Some).collect()
            }
            Customers::Spill(_) => Vec::new(),
        };
        let result = (|| {
            for (index, mut partition) in partitions.into_iter().enumerate() {
                let staging = match &mut customers {
                    Customers::Ram { .. } => staged[index].take().unwrap_or_default(),
                    Customers::Spill(spill) => {
                        let spilled = spill
                            .take(partition.id)
                            .map_err(|message| build(BuildError::Spill { message }))?;
                        from_spill(spilled).map_err(build)?
                    }
                };
                partition.customers = customer_table(staging, dim);
                if let Err(violation) = partition.check() {
                    // The builder's own output: a bug, not bad input.
                    panic!(
                        "built partition {} is malformed: {violation}",
                        partition.id()
                    );
                }
                each(partition).map_err(FinishError::Each)?;
            }
            Ok(())
        })();
        if let Customers::Spill(spill) = &customers {
            spill.remove();
        }
        result?;
        Ok(Directory {
            version: layout.version.clone(),
            dim: dim as u32,
            partitions: layout.partitions,
            containers,
        })
    }
}

/// One partition's spilled customers as staging, refusing a repeated id (named with both rows).
fn from_spill(spilled: SpilledCustomers) -> Result<CustomerStaging, BuildError> {
    let mut order: Vec<u32> = (0..spilled.ids.len() as u32).collect();
    order.sort_unstable_by_key(|&r| (spilled.ids[r as usize], spilled.origins[r as usize].0));
    if let Some(w) = order
        .windows(2)
        .find(|w| spilled.ids[w[0] as usize] == spilled.ids[w[1] as usize])
    {
        return Err(BuildError::RepeatedCustomer {
            id: spilled.ids[w[0] as usize],
            first: spilled.origins[w[0] as usize],
            second: spilled.origins[w[1] as usize],
        });
    }
    Ok(CustomerStaging {
        ids: spilled.ids,
        vectors: spilled.vectors,
        category_ends: spilled.category_ends,
        category_ids: spilled.category_ids,
        category_weights: spilled.category_weights,
    })
}

impl ModelSink for ModelBuilder {
    fn add_customer(
        &mut self,
        id: CustomerId,
        vector: &[f32],
        categories: &[(CategoryId, f32)],
        origin: RowRef,
    ) -> Result<(), BuildError> {
        rules::check_vector("vector", vector, self.layout.dim)?;
        let categories = rules::check_categories(categories)?;
        let partition = partition_of_customer(id, self.layout.partitions);
        let (staging, origins) = match &mut self.customers {
            Customers::Spill(spill) => {
                return spill
                    .add(partition, id, origin, vector, &categories)
                    .map_err(|message| BuildError::Spill { message });
            }
            Customers::Ram { staging, origins } => (&mut staging[partition.index()], origins),
        };
        if let Some(&first) = origins.get(&id) {
            return Err(BuildError::DuplicateCustomer { id, first });
        }
        if staging.category_ids.len() + categories.len() > u32::MAX as usize {
            return Err(BuildError::TooMany {
                what: "category entries in one partition",
                max: u64::from(u32::MAX),
            });
        }
        origins.insert(id, origin);
        staging.ids.push(id);
        staging.vectors.extend_from_slice(vector);
        for (c, w) in categories {
            staging.category_ids.push(c);
            staging.category_weights.push(w);
        }
        staging
            .category_ends
            .push(staging.category_ids.len() as u32);
        Ok(())
    }

    fn add_product(
        &mut self,
        id: ProductId,
        category: CategoryId,
        vector: &[f32],
        in_stock: bool,
        origin: RowRef,
    ) -> Result<(), BuildError> {
        rules::check_vector("vector", vector, self.layout.dim)?;
        let staging = &mut self.products;
        if let Some(&(_, first)) = staging.index.get(&id) {
            return Err(BuildError::DuplicateProduct { id, first });
        }
        let index = u32::try_from(staging.ids.len())
            .ok()
            .filter(|&i| i < u32::MAX)
            .ok_or(BuildError::TooMany {
                what: "products",
                max: u64::from(u32::MAX - 1),
            })?;
        staging.index.insert(id, (index, origin));
        staging.ids.push(id);
        staging.categories.push(category);
        staging.in_stock.push(in_stock);
        staging.vectors.extend_from_slice(vector);
        Ok(())
    }

    fn add_pool_entry(
        &mut self,
        container: ContainerId,
        product: ProductId,
        pool_score: f32,
        origin: RowRef,
    ) -> Result<(), BuildError> {
        rules::check_finite("pool_score", pool_score)?;
        let Some(&(index, _)) = self.products.index.get(&product) else {
            return Err(BuildError::UnknownProduct { product });
        };
        self.pool.push(PoolEntry {
            container,
            product: index,
            // -0.0 and 0.0 tie in the PPS order; store one of them.
            pool_score: pool_score + 0.0,
            origin,
        });
        Ok(())
    }
}

fn customer_table(staging: CustomerStaging, dim: usize) -> CustomerTable {
    let n = staging.ids.len();
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_unstable_by_key(|&r| staging.ids[r as usize]);
    let mut table = CustomerTable {
        dim,
        ids: Vec::with_capacity(n),
        vectors: Vec::with_capacity(n * dim),
        category_offsets: Vec::with_capacity(n + 1),
        category_ids: Vec::with_capacity(staging.category_ids.len()),
        category_weights: Vec::with_capacity(staging.category_weights.len()),
    };
    table.category_offsets.push(0);
    for r in order {
        let r = r as usize;
        table.ids.push(staging.ids[r]);
        table
            .vectors
            .extend_from_slice(&staging.vectors[r * dim..(r + 1) * dim]);
        let lo = if r == 0 {
            0
        } else {
            staging.category_ends[r - 1] as usize
        };
        let hi = staging.category_ends[r] as usize;
        table
            .category_ids
            .extend_from_slice(&staging.category_ids[lo..hi]);
        table
            .category_weights
            .extend_from_slice(&staging.category_weights[lo..hi]);
        table.category_offsets.push(table.category_ids.len() as u32);
    }
    table
}

fn product_tables(
    staging: &ProductStaging,
    partitions: PartitionCount,
    dim: usize,
) -> Vec<(usize, ProductTable)> {
    let mut rows: Vec<Vec<u32>> = vec![Vec::new(); partitions.get() as usize];
    for (r, &id) in staging.ids.iter().enumerate() {
        rows[partition_of_product(id, partitions).index()].push(r as u32);
    }
    rows.into_iter()
        .enumerate()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(index, mut rows)| {
            rows.sort_unstable_by_key(|&r| staging.ids[r as usize]);
            let n = rows.len();
            let mut table = ProductTable {
                dim,
                ids: Vec::with_capacity(n),
                categories: Vec::with_capacity(n),
                in_stock: Vec::with_capacity(n),
                vectors: Vec::with_capacity(n * dim),
            };
            for r in rows {
                let r = r as usize;
                table.ids.push(staging.ids[r]);
                table.categories.push(staging.categories[r]);
                table.in_stock.push(staging.in_stock[r]);
                table
                    .vectors
                    .extend_from_slice(&staging.vectors[r * dim..(r + 1) * dim]);
            }
            (index, table)
        })
        .collect()
}

fn build_segment(
    key: SegmentKey,
    entries: &[PoolEntry],
    products: &ProductStaging,
    dim: usize,
) -> (Segment, SegmentSummary) {
    let n = entries.len();
    let mut segment = Segment {
        container: key.container,
        number: key.number,
        dim,
        product_ids: Vec::with_capacity(n),
        category_dictionary: Vec::new(),
        category_codes: Vec::with_capacity(n),
        pool_scores: Vec::with_capacity(n),
        in_stock: Vec::with_capacity(n),
        vectors: Vec::with_capacity(n * dim),
        all_in_stock: false,
    };
    let mut dictionary: Vec<CategoryId> = entries
        .iter()
        .map(|e| products.categories[e.product as usize])
        .collect();
    dictionary.sort_unstable();
    dictionary.dedup();
    let mut by_category: HashMap<CategoryId, u32> = HashMap::new();
    for e in entries {
        let p = e.product as usize;
        segment.product_ids.push(products.ids[p]);
        let code = dictionary
            .binary_search(&products.categories[p])
            .unwrap_or_default();
        // A segment holds at most SEGMENT_PRODUCTS_HARD_MAX rows, so a code fits in u16.
        segment.category_codes.push(code as u16);
        segment.pool_scores.push(e.pool_score);
        segment.in_stock.push(products.in_stock[p]);
        segment
            .vectors
            .extend_from_slice(&products.vectors[p * dim..(p + 1) * dim]);
        if products.in_stock[p] {
            *by_category.entry(products.categories[p]).or_default() += 1;
        }
    }
    segment.category_dictionary = dictionary;
    segment.all_in_stock = segment.in_stock.iter().all(|&s| s);
    let mut in_stock_by_category: Vec<(CategoryId, u32)> = by_category.into_iter().collect();
    in_stock_by_category.sort_unstable();
    let summary = SegmentSummary {
        products: n as u32,
        in_stock: in_stock_by_category.iter().map(|e| e.1).sum(),
        in_stock_by_category,
    };
    (segment, summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> ModelBuilder {
        ModelBuilder::new(ModelLayout {
            version: ModelVersion::new("v1").unwrap(),
            dim: 2,
            partitions: PartitionCount::new(4).unwrap(),
            segment_products_max: 3,
        })
    }

    fn feed(b: &mut ModelBuilder) {
        for i in 0..200u64 {
            let id = if i % 3 == 0 { u64::MAX - i } else { i * 7 };
            let cats: Vec<(u32, f32)> = (0..i % 4).map(|c| (c as u32 * 3, 0.25)).collect();
            b.add_customer(id, &[i as f32, -0.5], &cats, RowRef(i))
                .unwrap();
        }
        for p in 0..30u64 {
            b.add_product(
                p,
                (p % 4) as u32,
                &[1.0, p as f32],
                p % 5 != 0,
                RowRef(1000 + p),
            )
            .unwrap();
            b.add_pool_entry(p % 3, p, 0.1 * p as f32, RowRef(2000 + p))
                .unwrap();
        }
    }

    /// Spilling customers to disk changes where they wait, not what is built.
    #[test]
    fn a_spilling_builder_builds_the_same_model() {
        let mut ram = builder();
        feed(&mut ram);
        let ram = ram.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spill_dir = dir.path().join("spill");
        let mut spilling = ModelBuilder::spilling(builder().layout().clone(), &spill_dir).unwrap();
        feed(&mut spilling);
        let mut partitions = Vec::new();
        let directory = spilling
            .finish_each(|p| {
                partitions.push(p);
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(directory, ram.directory);
        assert_eq!(partitions, ram.partitions);
        assert!(!spill_dir.exists(), "the spill is deleted");
    }

    #[test]
    fn a_spilling_builder_names_both_rows_of_a_repeated_customer() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = ModelBuilder::spilling(builder().layout().clone(), dir.path()).unwrap();
        b.add_customer(9, &[1.0, 2.0], &[], RowRef(4)).unwrap();
        b.add_customer(10, &[1.0, 2.0], &[], RowRef(5)).unwrap();
        b.add_customer(9, &[3.0, 2.0], &[], RowRef(7)).unwrap();
        let error = b.finish().unwrap_err();
        assert_eq!(
            error,
            BuildError::RepeatedCustomer {
                id: 9,
                first: RowRef(4),
                second: RowRef(7)
            }
        );
    }

    #[test]
    fn model_rules_are_enforced_with_the_first_occurrence() {
        let mut b = builder();
        assert_eq!(
            b.add_customer(1, &[1.0], &[], RowRef(1)),
            Err(BuildError::WrongDim {
                field: "vector",
                expected: 2,
                found: 1
            })
        );
        assert_eq!(
            b.add_customer(1, &[1.0, f32::INFINITY], &[], RowRef(1)),
            Err(BuildError::NotFinite {
                field: "vector",
                value: f32::INFINITY
            })
        );
        assert_eq!(
            b.add_customer(1, &[1.0, 2.0], &[(3, 1.0), (3, 2.0)], RowRef(1)),
            Err(BuildError::DuplicateCategory { category: 3 })
        );
        assert!(matches!(
            b.add_customer(1, &[1.0, 2.0], &[(3, f32::NAN)], RowRef(1)),
            Err(BuildError::NotFinite {
                field: "categories.weight",
                ..
            })
        ));
        b.add_customer(1, &[1.0, 2.0], &[], RowRef(10)).unwrap();
        assert_eq!(
            b.add_customer(1, &[1.0, 2.0], &[], RowRef(11)),
            Err(BuildError::DuplicateCustomer {
                id: 1,
                first: RowRef(10)
            })
        );
        b.add_product(5, 0, &[1.0, 2.0], true, RowRef(20)).unwrap();
        assert_eq!(
            b.add_product(5, 0, &[1.0, 2.0], true, RowRef(21)),
            Err(BuildError::DuplicateProduct {
                id: 5,
                first: RowRef(20)
            })
        );
        assert_eq!(
            b.add_pool_entry(9, 6, 0.5, RowRef(30)),
            Err(BuildError::UnknownProduct { product: 6 })
        );
        assert!(matches!(
            b.add_pool_entry(9, 5, f32::NAN, RowRef(30)),
            Err(BuildError::NotFinite {
                field: "pool_score",
                ..
            })
        ));
        b.add_pool_entry(9, 5, 0.5, RowRef(31)).unwrap();
        b.add_pool_entry(9, 5, 0.7, RowRef(32)).unwrap();
        assert_eq!(
            b.finish().unwrap_err(),
            BuildError::DuplicatePoolEntry {
                container: 9,
                product: 5,
                first: RowRef(31),
                second: RowRef(32)
            }
        );
    }

    #[test]
    fn pools_are_cut_into_segments_in_pool_order_with_summaries() {
        let mut b = builder();
        for p in 0..7u64 {
            b.add_product(p, (p % 2) as u32, &[p as f32, 0.0], p != 2, RowRef(p))
                .unwrap();
            // Scores 0.0 for all but 6 (highest): ties broken by lower product id.
            b.add_pool_entry(42, p, if p == 6 { 1.0 } else { -0.0 }, RowRef(p))
                .unwrap();
        }
        let built = b.finish().unwrap();
        let entry = built.directory.container(42).unwrap();
        assert_eq!(entry.segments.len(), 3);
        assert_eq!(entry.products(), 7);
        let order: Vec<u64> = (0..3)
            .flat_map(|n| {
                let key = SegmentKey {
                    container: 42,
                    number: n,
                };
                let p = crate::hashing::partition_of_segment(key, built.directory.partitions);
                built.partitions[p.index()]
                    .segment(key)
                    .unwrap()
                    .product_ids()
                    .to_vec()
            })
            .collect();
        assert_eq!(order, [6, 0, 1, 2, 3, 4, 5]);
        // Segment 0 = {6, 0, 1}: all in stock; categories 0 (6, 0) and 1 (1).
        assert_eq!(entry.segments[0].in_stock_by_category, [(0, 2), (1, 1)]);
        // Segment 1 = {2, 3, 4}: 2 is out of stock.
        assert_eq!(entry.segments[1].in_stock, 2);
        assert_eq!(
            built
                .partitions
                .iter()
                .map(|p| p.customers().len())
                .sum::<usize>(),
            0
        );
    }
}
