//! The synthetic model's structure and its rows. Shared structure (category centres, customer
//! clusters, each product's category) is drawn once; each row then draws from its own stream
//! `(seed, table, index)`, so any chunk can be generated on any thread with the same result.
//!
//! - Categories have centres in R^dim (norm about 1); a product is its category's centre plus
//!   noise; category sizes are skewed (low indices are big).
//! - Customers belong to one of K clusters, each leaning to two categories; a customer is its
//!   cluster centre plus noise, and lists 0-6 categories, mostly the nearest by dot product, with
//!   decreasing positive weights. About 4% list none.
//! - Products are 90% in stock.
//! - A container's pool is a set of distinct products: most are lists of 20-100, one in five a
//!   grid of 1,000-20,000 (log-uniform), capped by the product count; most lists and half the
//!   grids are themed on one category. Pool scores are skewed towards 0, higher for popular
//!   (low-index) products, with three decimals so that ties occur.
//! - Ids: every 8th customer, 16th product and 5th container gets an id at the top of the u64
//!   range (`u64::MAX - mix63(n)`, starting with `u64::MAX` itself), the others small dense ids;
//!   every 10th category an id near `u32::MAX`.

use super::SynthSpec;
use crate::rng::Rng;
use crate::rows::{CustomerRows, PoolRows, ProductRows};
use scoregrid_shard::{CategoryId, ContainerId, CustomerId, ProductId};
use std::collections::HashSet;

const STREAM_CENTRES: u64 = 1;
const STREAM_CLUSTERS: u64 = 2;
const STREAM_PRODUCT_CATEGORY: u64 = 3;
const STREAM_PRODUCTS: u64 = 4;
const STREAM_CUSTOMERS: u64 = 5;
const STREAM_POOLS: u64 = 6;

/// Categories a cluster considers for its customers (its nearest by dot product).
const CLUSTER_CATEGORIES_MAX: usize = 8;

/// Most customer clusters.
const CLUSTERS_MAX: usize = 64;

/// Most categories one customer lists.
const CUSTOMER_CATEGORIES_MAX: usize = 6;

/// Probability (in percent, cumulative) of a customer listing 0, 1, ..., 6 categories.
const CATEGORY_COUNT_CDF: [u32; CUSTOMER_CATEGORIES_MAX + 1] = [4, 20, 44, 66, 82, 92, 100];

const _: () = assert!(CUSTOMER_CATEGORIES_MAX <= CLUSTER_CATEGORIES_MAX);

/// Pool sizes without a fixed `pool_products`.
const LIST_PRODUCTS_MIN: u64 = 20;
const LIST_PRODUCTS_MAX: u64 = 100;
const GRID_PRODUCTS_MIN: u64 = 1_000;
/// Also the largest pool a chunk is sized for.
pub(crate) const GRID_PRODUCTS_MAX: u64 = 20_000;

const MASK63: u64 = (1 << 63) - 1;

/// A bijection on `0..2^63` (xorshift-multiply rounds, each invertible modulo 2^63) with
/// `mix63(0) == 0`.
fn mix63(mut x: u64) -> u64 {
    x &= MASK63;
    x ^= x >> 31;
    x = x.wrapping_mul(0x7FB5_D329_728E_A185) & MASK63;
    x ^= x >> 27;
    x = x.wrapping_mul(0x81DA_DEF4_BC2D_D44D) & MASK63;
    x ^ (x >> 33)
}

/// Dense ids `index + 1`, except every `every`-th index which gets a distinct id in
/// `2^63..=u64::MAX`. Unique as long as indices stay below 2^63.
fn spread_id(index: u64, every: u64) -> u64 {
    if index % every == every - 1 {
        u64::MAX - mix63(index / every)
    } else {
        index + 1
    }
}

pub(crate) fn customer_id(index: u64) -> CustomerId {
    spread_id(index, 8)
}

pub(crate) fn product_id(index: u64) -> ProductId {
    spread_id(index, 16)
}

pub(crate) fn container_id(index: u64) -> ContainerId {
    spread_id(index, 5)
}

/// Category index -> id: dense from 0, every 10th near `u32::MAX` (starting with it).
pub(crate) fn category_id(index: u32) -> CategoryId {
    if index % 10 == 9 {
        u32::MAX - index / 10
    } else {
        index
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The shared structure of one synthetic model.
pub(crate) struct World {
    spec: SynthSpec,
    dim: usize,
    /// `categories * dim`, category `g` at `g * dim`.
    centres: Vec<f32>,
    /// `clusters * dim`.
    clusters: Vec<f32>,
    /// Per cluster, its nearest categories, nearest first.
    cluster_categories: Vec<Vec<u32>>,
    /// Category index of each product.
    product_categories: Vec<u32>,
    /// Product indices of each category, ascending.
    category_products: Vec<Vec<u32>>,
}

impl World {
    /// Draws the shared structure. `spec` must have passed `SynthSpec::validate`.
    pub fn new(spec: &SynthSpec) -> Self {
        let dim = spec.dim;
        let categories = spec.categories as usize;
        let scale = 1.0 / (dim as f64).sqrt();
        let mut rng = Rng::for_row(spec.seed, STREAM_CENTRES, 0);
        let centres: Vec<f32> = (0..categories * dim)
            .map(|_| (rng.gaussian() * scale) as f32)
            .collect();

        let cluster_count = (categories / 2).clamp(4, CLUSTERS_MAX);
        let mut rng = Rng::for_row(spec.seed, STREAM_CLUSTERS, 0);
        let mut clusters = Vec::with_capacity(cluster_count * dim);
        for _ in 0..cluster_count {
            let a = rng.below(categories as u64) as usize;
            let b = rng.below(categories as u64) as usize;
            for d in 0..dim {
                let mix =
                    0.8 * f64::from(centres[a * dim + d]) + 0.4 * f64::from(centres[b * dim + d]);
                clusters.push((mix + 0.3 * scale * rng.gaussian()) as f32);
            }
        }
        let cluster_categories = clusters
            .chunks_exact(dim)
            .map(|centre| {
                let mut by_dot: Vec<(f32, u32)> = centres
                    .chunks_exact(dim)
                    .enumerate()
                    .map(|(g, c)| (dot(centre, c), g as u32))
                    .collect();
                by_dot.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
                by_dot.truncate(CLUSTER_CATEGORIES_MAX);
                by_dot.into_iter().map(|(_, g)| g).collect()
            })
            .collect();

        // Skewed category sizes: index floor(C * u^1.6) favours low indices.
        let product_categories: Vec<u32> = (0..spec.products)
            .map(|j| {
                let u = Rng::for_row(spec.seed, STREAM_PRODUCT_CATEGORY, j).unit();
                ((categories as f64 * u.powf(1.6)) as usize).min(categories - 1) as u32
            })
            .collect();
        let mut category_products = vec![Vec::new(); categories];
        for (j, &g) in product_categories.iter().enumerate() {
            category_products[g as usize].push(j as u32);
        }
        Self {
            spec: spec.clone(),
            dim,
            centres,
            clusters,
            cluster_categories,
            product_categories,
            category_products,
        }
    }

    fn centre(&self, category: usize) -> &[f32] {
        &self.centres[category * self.dim..(category + 1) * self.dim]
    }

    /// Customers `range`.
    pub fn customers(&self, range: std::ops::Range<u64>) -> CustomerRows {
        let dim = self.dim;
        let categories = self.spec.categories as u64;
        let clusters = self.cluster_categories.len();
        let noise = 0.5 / (dim as f64).sqrt();
        let mut rows = CustomerRows::new(dim);
        rows.ids.reserve(range.clone().count());
        let mut vector = vec![0.0f32; dim];
        let mut chosen: Vec<(f32, u32)> = Vec::with_capacity(CLUSTER_CATEGORIES_MAX);
        let mut entries: Vec<(CategoryId, f32)> = Vec::with_capacity(CUSTOMER_CATEGORIES_MAX);
        for i in range {
            let mut rng = Rng::for_row(self.spec.seed, STREAM_CUSTOMERS, i);
            let cluster = ((clusters as f64 * rng.unit().powf(1.3)) as usize).min(clusters - 1);
            let centre = &self.clusters[cluster * dim..(cluster + 1) * dim];
            for (v, c) in vector.iter_mut().zip(centre) {
                *v = (f64::from(*c) + noise * rng.gaussian()) as f32;
            }
            let draw = rng.below(100) as u32;
            let count = CATEGORY_COUNT_CDF
                .iter()
                .position(|&p| draw < p)
                .unwrap_or(0);
            // The nearest of the cluster's categories by the customer's own vector.
            chosen.clear();
            chosen.extend(
                self.cluster_categories[cluster]
                    .iter()
                    .map(|&g| (dot(&vector, self.centre(g as usize)), g)),
            );
            chosen.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
            chosen.truncate(count);
            // Now and then an interest outside the cluster.
            if !chosen.is_empty() && rng.unit() < 0.2 {
                let g = rng.below(categories) as u32;
                if chosen.iter().all(|&(_, c)| c != g) {
                    let last = chosen.len() - 1;
                    chosen[last].1 = g;
                }
            }
            entries.clear();
            let mut weight = 0.6 + 0.4 * rng.unit();
            for &(_, g) in &chosen {
                let rounded = ((weight * 1000.0).round() / 1000.0).max(0.001);
                entries.push((category_id(g), rounded as f32));
                weight *= 0.85;
            }
            rows.push(customer_id(i), &vector, &entries);
        }
        rows
    }

    /// Products `range`.
    pub fn products(&self, range: std::ops::Range<u64>) -> ProductRows {
        let dim = self.dim;
        let noise = 0.4 / (dim as f64).sqrt();
        let mut rows = ProductRows::new(dim);
        let mut vector = vec![0.0f32; dim];
        for j in range {
            let mut rng = Rng::for_row(self.spec.seed, STREAM_PRODUCTS, j);
            let g = self.product_categories[j as usize];
            for (v, c) in vector.iter_mut().zip(self.centre(g as usize)) {
                *v = (f64::from(*c) + noise * rng.gaussian()) as f32;
            }
            let in_stock = rng.unit() < 0.9;
            rows.push(product_id(j), category_id(g), &vector, in_stock);
        }
        rows
    }

    /// The pools of containers `range`, each container's entries together.
    pub fn pools(&self, range: std::ops::Range<u64>) -> PoolRows {
        let products = self.spec.products;
        let mut rows = PoolRows::default();
        let mut members: Vec<u32> = Vec::new();
        let mut taken: HashSet<u32> = HashSet::new();
        for c in range {
            let mut rng = Rng::for_row(self.spec.seed, STREAM_POOLS, c);
            let (size, themed) = match self.spec.pool_products {
                Some(size) => (u64::from(size), rng.unit() < 0.5),
                None if rng.unit() < 0.2 => {
                    let (lo, hi) = (
                        (GRID_PRODUCTS_MIN as f64).ln(),
                        (GRID_PRODUCTS_MAX as f64).ln(),
                    );
                    ((lo + rng.unit() * (hi - lo)).exp() as u64, rng.unit() < 0.5)
                }
                None => {
                    let size =
                        LIST_PRODUCTS_MIN + rng.below(LIST_PRODUCTS_MAX - LIST_PRODUCTS_MIN + 1);
                    (size, rng.unit() < 0.7)
                }
            };
            let size = size.min(products) as usize;
            members.clear();
            taken.clear();
            if size > 0 && themed {
                // The category of a random product, so big categories theme more containers.
                let g = self.product_categories[rng.below(products) as usize] as usize;
                let pool = &self.category_products[g];
                sample_distinct(
                    &mut rng,
                    pool.len(),
                    |k| pool[k],
                    size.min(pool.len()),
                    &mut members,
                    &mut taken,
                );
            }
            sample_distinct(
                &mut rng,
                products as usize,
                |k| k as u32,
                size,
                &mut members,
                &mut taken,
            );
            let container = container_id(c);
            for &j in &members {
                // Popular (low-index) products score higher; most scores are low.
                let popularity = 1.0 / (1.0 + 9.0 * f64::from(j) / products as f64);
                let score = 0.7 * rng.unit().powi(3) + 0.3 * popularity * rng.unit();
                let score = ((score * 1000.0).floor() / 1000.0).min(0.999);
                rows.push(container, product_id(u64::from(j)), score as f32);
            }
        }
        rows
    }
}

/// Adds distinct elements of a universe of `universe` elements (`element(k)` for `k` in
/// `0..universe`) to `members` until it holds `target`, skipping any already `taken` (which must
/// all belong to the universe). Rejection sampling while the universe is at most half taken,
/// else one selection-sampling pass (Knuth's algorithm S), so either way it costs O(universe)
/// at worst and O(target) typically.
fn sample_distinct(
    rng: &mut Rng,
    universe: usize,
    element: impl Fn(usize) -> u32,
    target: usize,
    members: &mut Vec<u32>,
    taken: &mut HashSet<u32>,
) {
    debug_assert!(target <= universe);
    if members.len() >= target {
        return;
    }
    if target * 2 <= universe {
        while members.len() < target {
            let candidate = element(rng.below(universe as u64) as usize);
            if taken.insert(candidate) {
                members.push(candidate);
            }
        }
        return;
    }
    let mut needed = (target - members.len()) as u64;
    let mut available = (universe - taken.len()) as u64;
    for k in 0..universe {
        if needed == 0 {
            break;
        }
        let candidate = element(k);
        if taken.contains(&candidate) {
            continue;
        }
        if rng.below(available) < needed {
            taken.insert(candidate);
            members.push(candidate);
            needed -= 1;
        }
        available -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_reach_the_top_of_the_range() {
        // Proves the id scheme over the first 100k indices: no collisions, u64::MAX used.
        let ids: HashSet<u64> = (0..100_000).map(customer_id).collect();
        assert_eq!(ids.len(), 100_000);
        assert!(ids.contains(&u64::MAX));
        assert!(ids.iter().filter(|&&id| id > 1 << 63).count() >= 100_000 / 8);
        let categories: HashSet<u32> = (0..65_536).map(category_id).collect();
        assert_eq!(categories.len(), 65_536);
        assert!(categories.contains(&u32::MAX));
    }

    #[test]
    fn mix63_is_a_bijection_on_a_sample() {
        let images: HashSet<u64> = (0..200_000u64).map(|x| mix63(x * 0x1_0000_0001)).collect();
        assert_eq!(images.len(), 200_000);
        assert!(images.iter().all(|&y| y <= MASK63));
        assert_eq!(mix63(0), 0);
    }

    #[test]
    fn sampling_gives_distinct_members_of_the_universe() {
        let mut rng = Rng::new(3);
        for (universe, target) in [(10usize, 10usize), (100, 3), (100, 80), (1, 1), (5, 0)] {
            let mut members = vec![];
            let mut taken = HashSet::new();
            sample_distinct(
                &mut rng,
                universe,
                |k| (k * 2) as u32,
                target,
                &mut members,
                &mut taken,
            );
            assert_eq!(members.len(), target);
            assert_eq!(taken.len(), target);
            assert!(
                members
                    .iter()
                    .all(|&m| m % 2 == 0 && (m as usize) < universe * 2)
            );
        }
        // Topping up a themed start.
        let mut members = vec![4, 6];
        let mut taken: HashSet<u32> = members.iter().copied().collect();
        sample_distinct(&mut rng, 10, |k| k as u32, 9, &mut members, &mut taken);
        assert_eq!(taken.len(), 9);
        assert_eq!(members.len(), 9);
    }
}
