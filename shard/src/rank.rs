//! The ranking order of the contract (score descending, ties by product id ascending), the
//! bounded top-k that keeps the best `k` items of a stream, and the k-way merge of ranked lists.
//!
//! Scores are compared with `f32::total_cmp` so the order is total even for values a model
//! should never produce; [`canonical_score`] folds `-0.0` into `0.0` first, because the contract
//! treats equal scores as ties and `total_cmp` would otherwise rank `0.0` above `-0.0`.

use crate::ids::{CategoryId, ProductId};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Folds `-0.0` into `0.0` (and leaves every other value as it is).
#[inline(always)]
pub fn canonical_score(score: f32) -> f32 {
    score + 0.0
}

/// A position in a ranked list: the cursor stores the last key it returned.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankKey {
    pub score: f32,
    pub product: ProductId,
}

impl RankKey {
    /// The contract's order: `Less` means `self` ranks before `other`.
    #[inline(always)]
    pub fn rank_cmp(&self, other: &RankKey) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.product.cmp(&other.product))
    }

    /// True if `self` comes strictly after `cursor` in the ranking.
    #[inline(always)]
    pub fn is_after(&self, cursor: &RankKey) -> bool {
        self.rank_cmp(cursor) == Ordering::Greater
    }
}

/// One scored product, as a node returns it and the router serves it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankedItem {
    pub product: ProductId,
    pub score: f32,
    pub category: CategoryId,
}

impl RankedItem {
    pub fn key(&self) -> RankKey {
        RankKey {
            score: self.score,
            product: self.product,
        }
    }
}

impl Eq for RankedItem {}

impl Ord for RankedItem {
    /// `Less` ranks first. Product ids are unique within one ranked list, so this is total.
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().rank_cmp(&other.key())
    }
}

impl PartialOrd for RankedItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Keeps the best `k` items pushed into it. A max-heap on the ranking order: its top is the worst
/// item kept, so a new item enters only if it ranks before that one (one comparison for most
/// items of a long stream).
#[derive(Debug)]
pub struct TopK {
    k: usize,
    heap: BinaryHeap<RankedItem>,
}

impl TopK {
    /// Upper bound on `k`: the router asks for at most `limit_max + 1` items per request, and a
    /// heap sized from the request must not be an allocation an attacker chooses.
    pub const K_MAX: usize = 100_001;

    pub fn new(k: usize) -> Self {
        let k = k.min(Self::K_MAX);
        Self {
            k,
            heap: BinaryHeap::with_capacity(k.min(4096)),
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The worst item kept once the heap is full: anything not ranking before it is rejected.
    #[inline]
    pub fn threshold(&self) -> Option<&RankedItem> {
        if self.heap.len() == self.k {
            self.heap.peek()
        } else {
            None
        }
    }

    /// A score below which nothing can enter: the worst kept score once the heap is full,
    /// else negative infinity. (`score < floor` is then a sure rejection; equal or unordered
    /// scores go through [`TopK::accepts`].)
    #[inline(always)]
    pub fn floor_score(&self) -> f32 {
        self.threshold()
            .map_or(f32::NEG_INFINITY, |worst| worst.score)
    }

    /// Whether an item at `key` would be kept: false once the heap is full and `key` does not
    /// rank before the worst item kept. One comparison, no heap access beyond the top.
    #[inline(always)]
    pub fn accepts(&self, key: &RankKey) -> bool {
        match self.threshold() {
            Some(worst) => key.rank_cmp(&worst.key()) == Ordering::Less,
            None => self.k > 0,
        }
    }

    #[inline]
    pub fn push(&mut self, item: RankedItem) {
        if self.heap.len() < self.k {
            self.heap.push(item);
        } else if let Some(mut worst) = self.heap.peek_mut()
            && item < *worst
        {
            *worst = item;
        }
    }

    /// The kept items in ranking order.
    pub fn into_sorted(self) -> Vec<RankedItem> {
        self.heap.into_sorted_vec()
    }
}

/// Merges lists that are each in ranking order into the first `k` items of their union, in
/// ranking order.
pub fn merge_ranked(lists: &[Vec<RankedItem>], k: usize) -> Vec<RankedItem> {
    use std::cmp::Reverse;
    // (head item, list index, position) in a min-heap on the ranking order.
    let mut heads: BinaryHeap<Reverse<(RankedItem, usize, usize)>> = lists
        .iter()
        .enumerate()
        .filter_map(|(i, list)| list.first().map(|&item| Reverse((item, i, 0))))
        .collect();
    let total: usize = lists.iter().map(Vec::len).sum();
    let mut merged = Vec::with_capacity(k.min(total));
    while merged.len() < k {
        let Some(Reverse((item, list, pos))) = heads.pop() else {
            break;
        };
        debug_assert!(merged.last().is_none_or(|last: &RankedItem| *last < item));
        merged.push(item);
        if let Some(&next) = lists[list].get(pos + 1) {
            heads.push(Reverse((next, list, pos + 1)));
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(product: u64, score: f32) -> RankedItem {
        RankedItem {
            product,
            score,
            category: 0,
        }
    }

    fn items() -> impl Strategy<Value = Vec<RankedItem>> {
        // Few distinct scores so that ties are common; ids near both ends of u64.
        proptest::collection::btree_set(prop_oneof![0u64..50, (u64::MAX - 50)..=u64::MAX], 0..120)
            .prop_flat_map(|ids| {
                let n = ids.len();
                (Just(ids), proptest::collection::vec(-3i8..3, n))
            })
            .prop_map(|(ids, scores)| {
                ids.into_iter()
                    .zip(scores)
                    .map(|(id, s)| item(id, f32::from(s) * 0.5))
                    .collect()
            })
    }

    fn brute_force(mut all: Vec<RankedItem>, k: usize) -> Vec<RankedItem> {
        all.sort_by(|a, b| {
            if a.score != b.score {
                b.score.partial_cmp(&a.score).unwrap()
            } else {
                a.product.cmp(&b.product)
            }
        });
        all.truncate(k);
        all
    }

    proptest! {
        #[test]
        fn top_k_equals_sort_and_truncate(all in items(), k in 0usize..130) {
            let mut top = TopK::new(k);
            for &i in &all { top.push(i); }
            prop_assert_eq!(top.into_sorted(), brute_force(all, k));
        }

        #[test]
        fn merge_equals_sort_of_the_union(all in items(), parts in 1usize..6, k in 0usize..130) {
            let mut lists = vec![Vec::new(); parts];
            for (n, &i) in all.iter().enumerate() { lists[n % parts].push(i); }
            for l in &mut lists { l.sort(); }
            prop_assert_eq!(merge_ranked(&lists, k), brute_force(all, k));
        }
    }

    #[test]
    fn negative_zero_ties_with_zero() {
        let a = item(2, canonical_score(-0.0));
        let b = item(1, 0.0);
        assert!(b < a, "equal scores rank by lower product id");
    }

    #[test]
    fn cursor_position_is_strict() {
        let k = RankKey {
            score: 1.0,
            product: 5,
        };
        assert!(!item(5, 1.0).key().is_after(&k));
        assert!(item(6, 1.0).key().is_after(&k));
        assert!(!item(4, 1.0).key().is_after(&k));
        assert!(item(1, 0.5).key().is_after(&k));
        assert!(!item(9, 2.0).key().is_after(&k));
    }
}
