//! A segment: at most `S` consecutive entries of one container's pool, in pool order (pool score
//! descending, ties by lower product id). It carries its products' vectors, categories, pool
//! scores and stock flags as columns, so scoring it is one pass over contiguous memory, and the
//! PPS stage ("the top N by pool score") is a prefix of the pool order.

use crate::ids::{CategoryId, ContainerId, ProductId, SegmentKey};
use crate::kernel::dot_rows;
use crate::rank::{RankKey, RankedItem, TopK, canonical_score};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Segment {
    pub(crate) container: ContainerId,
    pub(crate) number: u32,
    pub(crate) dim: usize,
    pub(crate) product_ids: Vec<ProductId>,
    pub(crate) categories: Vec<CategoryId>,
    pub(crate) pool_scores: Vec<f32>,
    pub(crate) in_stock: Vec<bool>,
    pub(crate) vectors: Vec<f32>,
}

impl Segment {
    pub fn key(&self) -> SegmentKey {
        SegmentKey {
            container: self.container,
            number: self.number,
        }
    }

    pub fn len(&self) -> usize {
        self.product_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.product_ids.is_empty()
    }

    pub fn product_ids(&self) -> &[ProductId] {
        &self.product_ids
    }

    pub fn vector_bytes(&self) -> usize {
        self.vectors.len() * 4
    }

    pub fn heap_bytes(&self) -> usize {
        self.product_ids.capacity() * 8
            + self.categories.capacity() * 4
            + self.pool_scores.capacity() * 4
            + self.in_stock.capacity()
            + self.vectors.capacity() * 4
    }
}

/// The weights of the scoring rule (contract section 2), set in configuration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoringWeights {
    pub affinity: f32,
    pub pool: f32,
}

impl Default for ScoringWeights {
    fn default() -> Self {
        Self {
            affinity: 1.0,
            pool: 1.0,
        }
    }
}

/// A customer's category weights, sorted by category id: `a(c, g)` of the scoring rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Affinities {
    ids: Vec<CategoryId>,
    weights: Vec<f32>,
}

impl Affinities {
    /// Builds from pairs in any order. The loader refuses duplicate categories; should one slip
    /// through, the first weight wins.
    pub fn new(mut pairs: Vec<(CategoryId, f32)>) -> Self {
        pairs.sort_by_key(|p| p.0);
        pairs.dedup_by_key(|p| p.0);
        let (ids, weights) = pairs.into_iter().unzip();
        Self { ids, weights }
    }

    pub fn from_sorted(ids: &[CategoryId], weights: &[f32]) -> Self {
        debug_assert!(ids.windows(2).all(|w| w[0] < w[1]));
        Self {
            ids: ids.to_vec(),
            weights: weights.to_vec(),
        }
    }

    /// `a(c, g)`: the weight of category `g`, else 0.
    #[inline]
    pub fn get(&self, category: CategoryId) -> f32 {
        match self.ids.binary_search(&category) {
            Ok(i) => self.weights[i],
            Err(_) => 0.0,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// What to score in one segment for one request.
#[derive(Clone, Copy, Debug)]
pub struct SegmentQuery<'a> {
    /// The customer's vector, `None` for an unknown customer (then score = w_pool * pool score).
    pub vector: Option<&'a [f32]>,
    pub affinities: &'a Affinities,
    pub weights: ScoringWeights,
    /// Only products of this category are candidates.
    pub category: Option<CategoryId>,
    /// How many candidates of this segment, counted in pool order, take part: the PPS cut-off
    /// that the router derived from the directory. `u32::MAX` for all.
    pub take: u32,
    /// Only items ranking strictly after this position are returned (a cursor's page).
    pub after: Option<RankKey>,
}

/// Rows scored per pass: the candidate indices and their dot products live on the stack.
const BLOCK_ROWS: usize = 256;

/// Scores the candidates of `segment` for `query` into `top`; returns how many were scored.
pub fn score_segment(segment: &Segment, query: &SegmentQuery<'_>, top: &mut TopK) -> u32 {
    let n = segment.len();
    let mut rows = [0u32; BLOCK_ROWS];
    let mut dots = [0.0f32; BLOCK_ROWS];
    let mut taken: u32 = 0;
    let mut r = 0usize;
    while r < n && taken < query.take {
        // 1. Select the next block of candidates in pool order.
        let mut m = 0;
        while r < n && m < BLOCK_ROWS && taken < query.take {
            let candidate = segment.in_stock[r]
                && query.category.is_none_or(|c| segment.categories[r] == c);
            if candidate {
                rows[m] = r as u32;
                m += 1;
                taken += 1;
            }
            r += 1;
        }
        // 2. The CF stage for the whole block.
        if let Some(vector) = query.vector {
            dot_rows(vector, &segment.vectors, &rows[..m], &mut dots[..m]);
        }
        // 3. The rest of the rule, the cursor filter and the top-k.
        for (&row, &dot) in rows[..m].iter().zip(&dots[..m]) {
            let row = row as usize;
            let category = segment.categories[row];
            let pool = query.weights.pool * segment.pool_scores[row];
            let score = match query.vector {
                Some(_) => {
                    canonical_score((dot + query.weights.affinity * query.affinities.get(category)) + pool)
                }
                None => canonical_score(pool),
            };
            let item = RankedItem {
                product: segment.product_ids[row],
                score,
                category,
            };
            if query.after.is_none_or(|after| item.key().is_after(&after)) {
                top.push(item);
            }
        }
    }
    taken
}
