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
    /// The distinct categories of this segment, sorted; rows refer to them by index.
    pub(crate) category_dictionary: Vec<CategoryId>,
    /// Per row, the index of its category in `category_dictionary`: half the bytes of the id,
    /// and the affinity of a row becomes one table lookup (see [`score_segment`]).
    pub(crate) category_codes: Vec<u16>,
    pub(crate) pool_scores: Vec<f32>,
    pub(crate) in_stock: Vec<bool>,
    pub(crate) vectors: Vec<f32>,
    /// Derived from `in_stock` when the segment is built or read: the common case where the
    /// candidate filter can be skipped for whole blocks.
    pub(crate) all_in_stock: bool,
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

    pub fn category(&self, row: usize) -> CategoryId {
        self.category_dictionary[usize::from(self.category_codes[row])]
    }

    pub fn heap_bytes(&self) -> usize {
        self.product_ids.capacity() * 8
            + self.category_dictionary.capacity() * 4
            + self.category_codes.capacity() * 2
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
///
/// Affinities arrive over the network, so decoding checks what [`Affinities::get`] relies on
/// (one weight per id, ids strictly ascending, finite weights): a malformed value is a decode
/// error naming what is wrong, never a panic in the node that scores with it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "AffinitiesFields")]
pub struct Affinities {
    ids: Vec<CategoryId>,
    weights: Vec<f32>,
}

#[derive(Deserialize)]
struct AffinitiesFields {
    ids: Vec<CategoryId>,
    weights: Vec<f32>,
}

impl TryFrom<AffinitiesFields> for Affinities {
    type Error = String;

    fn try_from(fields: AffinitiesFields) -> Result<Self, String> {
        let AffinitiesFields { ids, weights } = fields;
        if ids.len() != weights.len() {
            return Err(format!(
                "affinities: {} category ids but {} weights",
                ids.len(),
                weights.len()
            ));
        }
        if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
            return Err(format!(
                "affinities: category ids not strictly ascending at {} then {}",
                w[0], w[1]
            ));
        }
        if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
            return Err(format!("affinities: weight {w} is not finite"));
        }
        Ok(Self { ids, weights })
    }
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

/// `w_affinity * a(c, g)` for every category `g` of one segment, indexed by its code. Most
/// segments hold at most 256 categories: a fixed table indexed by a byte then needs no bounds
/// check per row.
enum AffinityByCode {
    Small(Box<[f32; 256]>),
    Large(Vec<f32>),
}

impl AffinityByCode {
    fn new(
        segment: &Segment,
        affinities: &Affinities,
        w_affinity: f32,
        personalized: bool,
    ) -> Self {
        let dictionary = if personalized {
            &segment.category_dictionary[..]
        } else {
            &[]
        };
        let weight = |g: &CategoryId| w_affinity * affinities.get(*g);
        if dictionary.len() <= 256 {
            let mut table = Box::new([0.0f32; 256]);
            for (slot, g) in table.iter_mut().zip(dictionary) {
                *slot = weight(g);
            }
            Self::Small(table)
        } else {
            Self::Large(dictionary.iter().map(weight).collect())
        }
    }

    #[inline(always)]
    fn get(&self, code: u16) -> f32 {
        match self {
            // Codes of a segment with at most 256 categories are below 256.
            Self::Small(table) => table[usize::from(code as u8)],
            Self::Large(table) => table[usize::from(code)],
        }
    }
}

/// `scores[i] = canonical((scores[i] + w_affinity * a(codes[i])) + w_pool * pools[i])`, the
/// rule's remaining terms for contiguous rows, in the contract's order.
fn finish_rule_contiguous(
    scores: &mut [f32],
    codes: &[u16],
    pools: &[f32],
    affinity: &AffinityByCode,
    w_pool: f32,
) {
    assert!(codes.len() == scores.len() && pools.len() == scores.len());
    #[cfg(target_arch = "x86_64")]
    {
        if let AffinityByCode::Small(table) = affinity
            && std::arch::is_x86_feature_detected!("avx2")
        {
            // SAFETY: AVX2 is present (checked above); the three slices have one length
            // (asserted above), which is all `finish_rule_avx2` reads or writes.
            unsafe { finish_rule_avx2(scores, codes, pools, table, w_pool) };
            return;
        }
    }
    finish_rule_scalar(scores, codes, pools, affinity, w_pool);
}

/// The portable form of [`finish_rule_contiguous`] (also the reference its AVX2 form is tested
/// against).
fn finish_rule_scalar(
    scores: &mut [f32],
    codes: &[u16],
    pools: &[f32],
    affinity: &AffinityByCode,
    w_pool: f32,
) {
    for ((score, &code), &pool) in scores.iter_mut().zip(codes).zip(pools) {
        *score = canonical_score((*score + affinity.get(code)) + w_pool * pool);
    }
}

/// The AVX2 form of [`finish_rule_contiguous`] for segments of at most 256 categories: the
/// affinity of eight rows is one gather from the 256-entry table. Same operations in the same
/// order (add, multiply, add, add 0.0), so the same bits as the scalar loop.
///
/// # Safety
/// The CPU must support AVX2; `codes` and `pools` must be as long as `scores`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn finish_rule_avx2(
    scores: &mut [f32],
    codes: &[u16],
    pools: &[f32],
    table: &[f32; 256],
    w_pool: f32,
) {
    use std::arch::x86_64::*;
    let n = scores.len();
    let full = n - n % 8;
    let w = _mm256_set1_ps(w_pool);
    let zero = _mm256_setzero_ps();
    let byte = _mm256_set1_epi32(0xff);
    let mut i = 0;
    while i < full {
        // SAFETY: i + 8 <= full <= n for all three slices; gather indices are masked below 256,
        // the table's length.
        unsafe {
            let codes8 = _mm_loadu_si128(codes.as_ptr().add(i).cast::<__m128i>());
            let index = _mm256_and_si256(_mm256_cvtepu16_epi32(codes8), byte);
            let affinity = _mm256_i32gather_ps::<4>(table.as_ptr(), index);
            let dot = _mm256_loadu_ps(scores.as_ptr().add(i));
            let pool = _mm256_mul_ps(w, _mm256_loadu_ps(pools.as_ptr().add(i)));
            let score = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(dot, affinity), pool), zero);
            _mm256_storeu_ps(scores.as_mut_ptr().add(i), score);
        }
        i += 8;
    }
    for k in full..n {
        scores[k] =
            canonical_score((scores[k] + table[usize::from(codes[k] as u8)]) + w_pool * pools[k]);
    }
}

/// Rows scored per pass: the candidate indices and their dot products live on the stack.
const BLOCK_ROWS: usize = 256;

/// Scores the candidates of `segment` for `query` into `top`; returns how many were scored.
///
/// Three passes per block of rows: select the candidates (in stock, in the category) in pool
/// order up to the take; compute their dot products with the kernel; finish the rule (with
/// per-category affinity weights looked up once per segment rather than once per row) and
/// keep the best in the same pass.
pub fn score_segment(segment: &Segment, query: &SegmentQuery<'_>, top: &mut TopK) -> u32 {
    let n = segment.len();
    let category_code = match query.category {
        None => None,
        Some(c) => match segment.category_dictionary.binary_search(&c) {
            Ok(code) => Some(code as u16),
            Err(_) => return 0,
        },
    };
    let (w_affinity, w_pool) = (query.weights.affinity, query.weights.pool);
    let personalized = query.vector.is_some();
    let affinity = AffinityByCode::new(segment, query.affinities, w_affinity, personalized);
    let mut rows = [0u32; BLOCK_ROWS];
    let mut scores = [0.0f32; BLOCK_ROWS];
    let mut taken: u32 = 0;
    let mut r = 0usize;
    while r < n && taken < query.take {
        // 1. Select the next block of candidates in pool order (branch-free).
        let want = (BLOCK_ROWS as u32).min(query.take - taken) as usize;
        let mut m = 0;
        match category_code {
            None => {
                let end = (r + want).min(n);
                if segment.all_in_stock || segment.in_stock[r..end].iter().all(|&s| s) {
                    // The common case: a block with nothing out of stock.
                    for (slot, row) in rows.iter_mut().zip(r..end) {
                        *slot = row as u32;
                    }
                    m = end - r;
                    r = end;
                } else {
                    while r < n && m < want {
                        rows[m] = r as u32;
                        m += usize::from(segment.in_stock[r]);
                        r += 1;
                    }
                }
            }
            Some(code) => {
                while r < n && m < want {
                    rows[m] = r as u32;
                    m += usize::from(segment.in_stock[r] & (segment.category_codes[r] == code));
                    r += 1;
                }
            }
        }
        taken += m as u32;
        let rows = &rows[..m];
        let scores = &mut scores[..m];
        // 2. The CF stage for the whole block.
        if let Some(vector) = query.vector {
            dot_rows(vector, &segment.vectors, rows, scores);
        }
        // 3. The rest of the rule for the block.
        let contiguous = rows
            .first()
            .map(|&first| first as usize..first as usize + rows.len());
        let contiguous =
            contiguous.filter(|span| rows.last().is_some_and(|&l| l as usize + 1 == span.end));
        match (personalized, contiguous) {
            (true, Some(span)) => {
                // Rows r..r+m: straight slices, eight rows at a time where the CPU allows.
                let codes = &segment.category_codes[span.clone()];
                let pools = &segment.pool_scores[span];
                finish_rule_contiguous(scores, codes, pools, &affinity, w_pool);
            }
            (true, None) => {
                for (&row, score) in rows.iter().zip(scores.iter_mut()) {
                    let row = row as usize;
                    let code = segment.category_codes[row];
                    *score = canonical_score(
                        (*score + affinity.get(code)) + w_pool * segment.pool_scores[row],
                    );
                }
            }
            (false, _) => {
                for (&row, score) in rows.iter().zip(scores.iter_mut()) {
                    *score = canonical_score(w_pool * segment.pool_scores[row as usize]);
                }
            }
        }
        // 4. The cursor filter and the top-k. Once the heap is full, most rows score below its
        // worst item: one float comparison rejects them.
        let mut floor = top.floor_score();
        for (&row, &score) in rows.iter().zip(scores.iter()) {
            if score < floor {
                continue;
            }
            let row = row as usize;
            let key = RankKey {
                score,
                product: segment.product_ids[row],
            };
            if !top.accepts(&key) || query.after.is_some_and(|after| !key.is_after(&after)) {
                continue;
            }
            top.push(RankedItem {
                product: key.product,
                score,
                category: segment.category(row),
            });
            floor = top.floor_score();
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The AVX2 rule and the scalar rule give the same bits for any values (not just the
        /// exact ones of the pipeline tests, where a wrong order of additions could go unseen).
        #[test]
        fn the_rule_paths_agree_bit_for_bit(
            rows in proptest::collection::vec((any::<f32>(), 0u16..256, any::<f32>()), 0..40),
            table in proptest::collection::vec(any::<f32>(), 256),
            w_pool in any::<f32>(),
        ) {
            let mut small = Box::new([0.0f32; 256]);
            small.copy_from_slice(&table);
            let affinity = AffinityByCode::Small(small);
            let codes: Vec<u16> = rows.iter().map(|r| r.1).collect();
            let pools: Vec<f32> = rows.iter().map(|r| r.2).collect();
            let mut fast: Vec<f32> = rows.iter().map(|r| r.0).collect();
            let mut slow = fast.clone();
            finish_rule_contiguous(&mut fast, &codes, &pools, &affinity, w_pool);
            finish_rule_scalar(&mut slow, &codes, &pools, &affinity, w_pool);
            let bits = |v: &[f32]| v.iter().map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() }).collect::<Vec<_>>();
            prop_assert_eq!(bits(&fast), bits(&slow));
        }
    }
}
