//! Customer and product tables of one partition. Rows are sorted by id (lookups are a binary
//! search, no hash index to pay for in RAM); vectors live in one row-major f32 block; customer
//! categories in a CSR layout (offsets into two flat columns), sorted by category id per row.

use crate::ids::{CategoryId, CustomerId, ProductId};
use crate::kernel;

/// The customers of one partition.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CustomerTable {
    pub(crate) dim: usize,
    pub(crate) ids: Vec<CustomerId>,
    pub(crate) vectors: Vec<f32>,
    /// `category_offsets[r]..category_offsets[r + 1]` are row `r`'s entries in the two columns.
    pub(crate) category_offsets: Vec<u32>,
    pub(crate) category_ids: Vec<CategoryId>,
    pub(crate) category_weights: Vec<f32>,
}

/// One customer as stored: its vector and its category weights (sorted by category id).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CustomerView<'a> {
    pub id: CustomerId,
    pub vector: &'a [f32],
    pub category_ids: &'a [CategoryId],
    pub category_weights: &'a [f32],
}

impl CustomerView<'_> {
    /// The customer's top `k` categories by weight, ties by lower category id (the CA stage).
    pub fn top_categories(&self, k: usize) -> Vec<(CategoryId, f32)> {
        top_categories(self.category_ids, self.category_weights, k)
    }
}

/// The top `k` of a customer's categories by weight, ties by lower category id.
pub fn top_categories(ids: &[CategoryId], weights: &[f32], k: usize) -> Vec<(CategoryId, f32)> {
    let mut all: Vec<(CategoryId, f32)> =
        ids.iter().copied().zip(weights.iter().copied()).collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

impl CustomerTable {
    pub fn empty(dim: usize) -> Self {
        Self {
            dim,
            category_offsets: vec![0],
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn ids(&self) -> &[CustomerId] {
        &self.ids
    }

    pub fn get(&self, id: CustomerId) -> Option<CustomerView<'_>> {
        let row = self.ids.binary_search(&id).ok()?;
        Some(self.row(row))
    }

    pub fn row(&self, row: usize) -> CustomerView<'_> {
        let (lo, hi) = (
            self.category_offsets[row] as usize,
            self.category_offsets[row + 1] as usize,
        );
        CustomerView {
            id: self.ids[row],
            vector: &self.vectors[row * self.dim..(row + 1) * self.dim],
            category_ids: &self.category_ids[lo..hi],
            category_weights: &self.category_weights[lo..hi],
        }
    }

    pub fn vector_bytes(&self) -> usize {
        self.vectors.len() * 4
    }

    pub fn heap_bytes(&self) -> usize {
        self.ids.capacity() * 8
            + self.vectors.capacity() * 4
            + self.category_offsets.capacity() * 4
            + self.category_ids.capacity() * 4
            + self.category_weights.capacity() * 4
    }
}

/// The products of one partition (keyed by product id; the CF stage of `POST /v1/score`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProductTable {
    pub(crate) dim: usize,
    pub(crate) ids: Vec<ProductId>,
    pub(crate) categories: Vec<CategoryId>,
    pub(crate) in_stock: Vec<bool>,
    pub(crate) vectors: Vec<f32>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProductView<'a> {
    pub id: ProductId,
    pub category: CategoryId,
    pub in_stock: bool,
    pub vector: &'a [f32],
}

impl ProductTable {
    pub fn empty(dim: usize) -> Self {
        Self {
            dim,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn get(&self, id: ProductId) -> Option<ProductView<'_>> {
        let row = self.ids.binary_search(&id).ok()?;
        Some(ProductView {
            id,
            category: self.categories[row],
            in_stock: self.in_stock[row],
            vector: &self.vectors[row * self.dim..(row + 1) * self.dim],
        })
    }

    /// The CF score of one product for `query`: the contract's dot product.
    pub fn dot(&self, id: ProductId, query: &[f32]) -> Option<f32> {
        self.get(id).map(|p| kernel::dot(query, p.vector))
    }

    pub fn vector_bytes(&self) -> usize {
        self.vectors.len() * 4
    }

    pub fn heap_bytes(&self) -> usize {
        self.ids.capacity() * 8
            + self.categories.capacity() * 4
            + self.in_stock.capacity()
            + self.vectors.capacity() * 4
    }
}
