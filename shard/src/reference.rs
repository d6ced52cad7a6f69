//! A brute-force implementation of the contract (sections 1 and 2): plain hash maps, a sort of the
//! whole candidate list, no segments, no heaps, no SIMD. It is the oracle that the real pipeline
//! (builder, segments, kernel, top-k, router merge, cursors) is tested against, and it is kept
//! deliberately simple so that it can be checked by reading it beside the contract.

use crate::builder::{ModelSink, RowRef, rules};
use crate::error::BuildError;
use crate::ids::{CategoryId, ContainerId, CustomerId, ProductId};
use crate::kernel::LANES;
use crate::rank::RankedItem;
use crate::segment::ScoringWeights;
use std::collections::HashMap;

/// The contract's dot product written as its definition reads: lane `i mod 8` accumulates
/// `a[i] * b[i]` in increasing `i`; lanes combine pairwise.
pub fn reference_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    for i in 0..a.len() {
        lanes[i % LANES] += a[i] * b[i];
    }
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}

#[derive(Clone, Debug)]
pub struct ReferenceCustomer {
    pub vector: Vec<f32>,
    pub categories: Vec<(CategoryId, f32)>,
}

#[derive(Clone, Debug)]
pub struct ReferenceProduct {
    pub category: CategoryId,
    pub vector: Vec<f32>,
    pub in_stock: bool,
}

/// A whole model in hash maps.
#[derive(Clone, Debug, Default)]
pub struct ReferenceModel {
    pub dim: usize,
    pub customers: HashMap<CustomerId, ReferenceCustomer>,
    pub products: HashMap<ProductId, ReferenceProduct>,
    /// Container -> (product, pool score), in input order.
    pub pools: HashMap<ContainerId, Vec<(ProductId, f32)>>,
}

/// A request as the contract states it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReferenceQuery {
    pub customer: CustomerId,
    pub container: ContainerId,
    pub category: Option<CategoryId>,
    pub candidates: Option<u64>,
}

/// The full ranked list for a query.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceRanking {
    pub personalized: bool,
    pub items: Vec<RankedItem>,
}

impl ReferenceModel {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            ..Self::default()
        }
    }

    /// The whole ranked list for `query`, or `None` for an unknown container.
    pub fn rank(&self, query: ReferenceQuery, weights: ScoringWeights) -> Option<ReferenceRanking> {
        let pool = self.pools.get(&query.container)?;
        // Candidates: in stock, in the category if given.
        let mut candidates: Vec<(ProductId, f32, &ReferenceProduct)> = pool
            .iter()
            .map(|&(id, s)| (id, s, &self.products[&id]))
            .filter(|(_, _, p)| p.in_stock && query.category.is_none_or(|c| p.category == c))
            .collect();
        // PPS: the top N by pool score, ties by lower product id.
        if let Some(n) = query.candidates {
            candidates.sort_by(|a, b| {
                if a.1 == b.1 {
                    a.0.cmp(&b.0)
                } else {
                    b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal)
                }
            });
            candidates.truncate(usize::try_from(n).unwrap_or(usize::MAX));
        }
        let customer = self.customers.get(&query.customer);
        let mut items: Vec<RankedItem> = candidates
            .into_iter()
            .map(|(id, pool_score, p)| {
                let score = match customer {
                    Some(c) => {
                        let affinity = c
                            .categories
                            .iter()
                            .find(|(g, _)| *g == p.category)
                            .map_or(0.0, |(_, w)| *w);
                        (reference_dot(&c.vector, &p.vector) + weights.affinity * affinity)
                            + weights.pool * pool_score
                    }
                    None => weights.pool * pool_score,
                };
                RankedItem {
                    product: id,
                    // -0.0 and 0.0 are equal scores.
                    score: if score == 0.0 { 0.0 } else { score },
                    category: p.category,
                }
            })
            .collect();
        items.sort_by(|a, b| {
            if a.score == b.score {
                a.product.cmp(&b.product)
            } else {
                b.score
                    .partial_cmp(&a.score)
                    .unwrap_or(std::cmp::Ordering::Equal)
            }
        });
        Some(ReferenceRanking {
            personalized: customer.is_some(),
            items,
        })
    }

    /// The customer's top `k` categories by weight, ties by lower category id.
    pub fn top_categories(&self, customer: CustomerId, k: usize) -> Option<Vec<(CategoryId, f32)>> {
        let mut all = self.customers.get(&customer)?.categories.clone();
        all.sort_by(|a, b| {
            if a.1 == b.1 {
                a.0.cmp(&b.0)
            } else {
                b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal)
            }
        });
        all.truncate(k);
        Some(all)
    }
}

impl ModelSink for ReferenceModel {
    fn add_customer(
        &mut self,
        id: CustomerId,
        vector: &[f32],
        categories: &[(CategoryId, f32)],
        _origin: RowRef,
    ) -> Result<(), BuildError> {
        rules::check_vector("vector", vector, self.dim)?;
        let categories = rules::check_categories(categories)?;
        let customer = ReferenceCustomer {
            vector: vector.to_vec(),
            categories,
        };
        if self.customers.insert(id, customer).is_some() {
            return Err(BuildError::DuplicateCustomer {
                id,
                first: RowRef(0),
            });
        }
        Ok(())
    }

    fn add_product(
        &mut self,
        id: ProductId,
        category: CategoryId,
        vector: &[f32],
        in_stock: bool,
        _origin: RowRef,
    ) -> Result<(), BuildError> {
        rules::check_vector("vector", vector, self.dim)?;
        let product = ReferenceProduct {
            category,
            vector: vector.to_vec(),
            in_stock,
        };
        if self.products.insert(id, product).is_some() {
            return Err(BuildError::DuplicateProduct {
                id,
                first: RowRef(0),
            });
        }
        Ok(())
    }

    fn add_pool_entry(
        &mut self,
        container: ContainerId,
        product: ProductId,
        pool_score: f32,
        _origin: RowRef,
    ) -> Result<(), BuildError> {
        rules::check_finite("pool_score", pool_score)?;
        if !self.products.contains_key(&product) {
            return Err(BuildError::UnknownProduct { product });
        }
        self.pools
            .entry(container)
            .or_default()
            .push((product, pool_score));
        Ok(())
    }
}
