//! A model's rows in columns, a chunk at a time: what the synthetic generator produces, what the
//! writers take, and what a sink can be fed from. Columns rather than row structs so that a
//! chunk is a handful of allocations, and converts to an Arrow batch without reshaping.

use crate::error::LoadError;
use crate::source::{FileIndex, SourceFiles};
use scoregrid_shard::{CategoryId, ContainerId, CustomerId, ModelSink, ProductId};

/// Customers rows: `ids[i]`, `vectors[i * dim..(i + 1) * dim]`, and the categories
/// `category_offsets[i]..category_offsets[i + 1]` of the category columns.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomerRows {
    pub dim: usize,
    pub ids: Vec<CustomerId>,
    pub vectors: Vec<f32>,
    /// One more entry than rows, starting at 0.
    pub category_offsets: Vec<u32>,
    pub category_ids: Vec<CategoryId>,
    pub category_weights: Vec<f32>,
}

impl CustomerRows {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            ids: Vec::new(),
            vectors: Vec::new(),
            category_offsets: vec![0],
            category_ids: Vec::new(),
            category_weights: Vec::new(),
        }
    }

    /// # Panics
    /// If `vector` is not `dim` long: rows built by the caller, a bug.
    pub fn push(&mut self, id: CustomerId, vector: &[f32], categories: &[(CategoryId, f32)]) {
        assert_eq!(vector.len(), self.dim, "customer vector length");
        self.ids.push(id);
        self.vectors.extend_from_slice(vector);
        for &(category, weight) in categories {
            self.category_ids.push(category);
            self.category_weights.push(weight);
        }
        self.category_offsets.push(self.category_ids.len() as u32);
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn vector(&self, row: usize) -> &[f32] {
        &self.vectors[row * self.dim..(row + 1) * self.dim]
    }

    pub fn categories(&self, row: usize) -> impl Iterator<Item = (CategoryId, f32)> + '_ {
        let range = self.category_offsets[row] as usize..self.category_offsets[row + 1] as usize;
        self.category_ids[range.clone()]
            .iter()
            .copied()
            .zip(self.category_weights[range].iter().copied())
    }
}

/// Products rows, one entry per row in each column (`vectors` holds `dim` per row).
#[derive(Clone, Debug, PartialEq)]
pub struct ProductRows {
    pub dim: usize,
    pub ids: Vec<ProductId>,
    pub categories: Vec<CategoryId>,
    pub vectors: Vec<f32>,
    pub in_stock: Vec<bool>,
}

impl ProductRows {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            ids: Vec::new(),
            categories: Vec::new(),
            vectors: Vec::new(),
            in_stock: Vec::new(),
        }
    }

    /// # Panics
    /// If `vector` is not `dim` long.
    pub fn push(&mut self, id: ProductId, category: CategoryId, vector: &[f32], in_stock: bool) {
        assert_eq!(vector.len(), self.dim, "product vector length");
        self.ids.push(id);
        self.categories.push(category);
        self.vectors.extend_from_slice(vector);
        self.in_stock.push(in_stock);
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn vector(&self, row: usize) -> &[f32] {
        &self.vectors[row * self.dim..(row + 1) * self.dim]
    }
}

/// Pools rows: (container, product, pool score).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolRows {
    pub containers: Vec<ContainerId>,
    pub products: Vec<ProductId>,
    pub pool_scores: Vec<f32>,
}

impl PoolRows {
    pub fn push(&mut self, container: ContainerId, product: ProductId, pool_score: f32) {
        self.containers.push(container);
        self.products.push(product);
        self.pool_scores.push(pool_score);
    }

    pub fn len(&self) -> usize {
        self.containers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }
}

/// Feeds rows to a sink with origins `(file, first_row + i)`, locating refusals in `files`.
pub(crate) struct Feeder<'f> {
    pub files: &'f SourceFiles,
    pub file: FileIndex,
    /// 1-based number of the next row.
    pub next_row: u64,
}

impl Feeder<'_> {
    fn origin(&mut self) -> Result<scoregrid_shard::RowRef, LoadError> {
        let origin = self.files.row_ref(self.file, self.next_row)?;
        self.next_row += 1;
        Ok(origin)
    }

    pub fn customers(
        &mut self,
        rows: &CustomerRows,
        sink: &mut impl ModelSink,
        scratch: &mut Vec<(CategoryId, f32)>,
    ) -> Result<(), LoadError> {
        for row in 0..rows.len() {
            let origin = self.origin()?;
            scratch.clear();
            scratch.extend(rows.categories(row));
            sink.add_customer(rows.ids[row], rows.vector(row), scratch, origin)
                .map_err(|e| self.files.rejected(origin, e))?;
        }
        Ok(())
    }

    pub fn products(
        &mut self,
        rows: &ProductRows,
        sink: &mut impl ModelSink,
    ) -> Result<(), LoadError> {
        for row in 0..rows.len() {
            let origin = self.origin()?;
            sink.add_product(
                rows.ids[row],
                rows.categories[row],
                rows.vector(row),
                rows.in_stock[row],
                origin,
            )
            .map_err(|e| self.files.rejected(origin, e))?;
        }
        Ok(())
    }

    pub fn pools(&mut self, rows: &PoolRows, sink: &mut impl ModelSink) -> Result<(), LoadError> {
        for row in 0..rows.len() {
            let origin = self.origin()?;
            sink.add_pool_entry(
                rows.containers[row],
                rows.products[row],
                rows.pool_scores[row],
                origin,
            )
            .map_err(|e| self.files.rejected(origin, e))?;
        }
        Ok(())
    }
}
