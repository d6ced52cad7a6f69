//! The dot product, with the summation order fixed by the contract so that every replica, on
//! every CPU and through every SIMD path, produces bit-identical scores:
//!
//! - lane `j` (0..8) accumulates `a[i] * b[i]` for every `i` with `i mod 8 == j`, in increasing
//!   `i`, each product rounded to f32 before it is added (no fused multiply-add);
//! - the lanes are combined as `((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))`.
//!
//! Eight lanes fill one AVX register. One product's lanes form a chain of dependent additions,
//! so the AVX2 path of [`dot_rows`] scores eight rows at a time: eight independent chains keep
//! the adders busy while every row keeps exactly the summation order above.

/// Number of accumulation lanes. Part of the scoring contract: changing it changes scores.
pub const LANES: usize = 8;

#[inline(always)]
fn combine(l: [f32; LANES]) -> f32 {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0.0f32; LANES];
    let mut a8 = a.chunks_exact(LANES);
    let mut b8 = b.chunks_exact(LANES);
    for (x, y) in (&mut a8).zip(&mut b8) {
        for j in 0..LANES {
            lanes[j] += x[j] * y[j];
        }
    }
    for (j, (x, y)) in a8.remainder().iter().zip(b8.remainder()).enumerate() {
        lanes[j] += x * y;
    }
    combine(lanes)
}

#[inline(always)]
fn dot_rows_body(query: &[f32], vectors: &[f32], rows: &[u32], out: &mut [f32]) {
    let dim = query.len();
    let row = |r: u32| {
        let start = r as usize * dim;
        &vectors[start..start + dim]
    };
    for (&r, o) in rows.iter().zip(out.iter_mut()) {
        *o = dot_body(query, row(r));
    }
}

/// The contract's dot product of two equally long vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    dot_body(a, b)
}

/// `out[i] = dot(query, row rows[i] of vectors)`, where `vectors` is a row-major block of rows
/// of `query.len()` values.
///
/// # Panics
/// If `out` is shorter than `rows` or a row index lies outside `vectors`: both are bugs of the
/// caller, which builds `rows` from the same segment.
pub fn dot_rows(query: &[f32], vectors: &[f32], rows: &[u32], out: &mut [f32]) {
    assert!(out.len() >= rows.len());
    let out = &mut out[..rows.len()];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            let dim = query.len();
            let max_row = rows.iter().copied().max().map_or(0, |r| r as usize + 1);
            assert!(
                max_row * dim <= vectors.len(),
                "row index outside the vector block"
            );
            // SAFETY: the CPU supports AVX2 (checked above) and every row lies inside `vectors`
            // (asserted above), which is what `dot_rows_avx2` reads.
            unsafe { avx2::dot_rows(query, vectors, rows, out) };
            return;
        }
    }
    dot_rows_body(query, vectors, rows, out);
}

/// The portable path, exposed so that tests can prove both paths agree bit for bit.
pub fn dot_rows_portable(query: &[f32], vectors: &[f32], rows: &[u32], out: &mut [f32]) {
    assert!(out.len() >= rows.len());
    dot_rows_body(query, vectors, rows, &mut out[..rows.len()]);
}

/// The AVX2 path. One 256-bit register holds the eight lanes of one row; eight rows are scored
/// at once so that eight independent addition chains hide the adder's latency. Multiplies and
/// adds are separate instructions (never fused), in the contract's order, so every result is
/// bit-identical to the portable path.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{LANES, combine};
    use std::arch::x86_64::*;

    const ROWS_AT_ONCE: usize = 8;

    /// # Safety
    /// The CPU must support AVX2, and `(row + 1) * query.len() <= vectors.len()` for every
    /// `row` in `rows`; `out.len() == rows.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_rows(query: &[f32], vectors: &[f32], rows: &[u32], out: &mut [f32]) {
        let dim = query.len();
        let full = dim - dim % LANES;
        let q = query.as_ptr();
        let base = vectors.as_ptr();
        let mut groups = rows.chunks_exact(ROWS_AT_ONCE);
        let mut outs = out.chunks_exact_mut(ROWS_AT_ONCE);
        for (group, o) in (&mut groups).zip(&mut outs) {
            // SAFETY (whole block): rows lie inside `vectors` (caller's contract), `i + 8 <= full
            // <= dim` for the vector loads, `k < dim` for the scalar tail.
            unsafe {
                let p: [*const f32; ROWS_AT_ONCE] =
                    std::array::from_fn(|k| base.add(group[k] as usize * dim));
                let mut acc = [_mm256_setzero_ps(); ROWS_AT_ONCE];
                let mut i = 0;
                while i < full {
                    let x = _mm256_loadu_ps(q.add(i));
                    for r in 0..ROWS_AT_ONCE {
                        acc[r] =
                            _mm256_add_ps(acc[r], _mm256_mul_ps(x, _mm256_loadu_ps(p[r].add(i))));
                    }
                    i += LANES;
                }
                for r in 0..ROWS_AT_ONCE {
                    let mut lanes = [0.0f32; LANES];
                    _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]);
                    for (j, k) in (full..dim).enumerate() {
                        lanes[j] += *q.add(k) * *p[r].add(k);
                    }
                    o[r] = combine(lanes);
                }
            }
        }
        for (&row, o) in groups.remainder().iter().zip(outs.into_remainder()) {
            // SAFETY: as above, for one row.
            unsafe {
                let p = base.add(row as usize * dim);
                let mut acc = _mm256_setzero_ps();
                let mut i = 0;
                while i < full {
                    acc = _mm256_add_ps(
                        acc,
                        _mm256_mul_ps(_mm256_loadu_ps(q.add(i)), _mm256_loadu_ps(p.add(i))),
                    );
                    i += LANES;
                }
                let mut lanes = [0.0f32; LANES];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
                for (j, k) in (full..dim).enumerate() {
                    lanes[j] += *q.add(k) * *p.add(k);
                }
                *o = combine(lanes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::reference_dot;
    use proptest::prelude::*;

    fn vectors(dim: usize, rows: usize) -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
        (
            proptest::collection::vec(-100.0f32..100.0, dim),
            proptest::collection::vec(-100.0f32..100.0, dim * rows),
        )
    }

    proptest! {
        /// Every path of the kernel gives exactly the reference's bits, for every dimension from
        /// 1 (all remainder) to past several full lanes, and for any row order.
        #[test]
        fn kernel_matches_reference_bit_for_bit(
            (dim, n) in (1usize..40, 0usize..11),
            seed in any::<u64>(),
        ) {
            let mut rng = seed;
            let mut next = || { rng = crate::hashing::mix64(rng.wrapping_add(1)); (rng >> 40) as f32 / 1000.0 - 8000.0 };
            let q: Vec<f32> = (0..dim).map(|_| next()).collect();
            let block: Vec<f32> = (0..dim * n).map(|_| next()).collect();
            let rows: Vec<u32> = (0..n as u32).rev().collect();
            let mut fast = vec![0.0; n];
            let mut portable = vec![0.0; n];
            dot_rows(&q, &block, &rows, &mut fast);
            dot_rows_portable(&q, &block, &rows, &mut portable);
            for (i, &r) in rows.iter().enumerate() {
                let expect = reference_dot(&q, &block[r as usize * dim..(r as usize + 1) * dim]);
                prop_assert_eq!(fast[i].to_bits(), expect.to_bits());
                prop_assert_eq!(portable[i].to_bits(), expect.to_bits());
                prop_assert_eq!(dot(&q, &block[r as usize * dim..(r as usize + 1) * dim]).to_bits(), expect.to_bits());
            }
        }

        #[test]
        fn kernel_is_close_to_the_exact_dot((q, block) in vectors(64, 3)) {
            let rows = [0u32, 1, 2];
            let mut out = [0.0; 3];
            dot_rows(&q, &block, &rows, &mut out);
            for r in 0..3 {
                let exact: f64 = q.iter().zip(&block[r * 64..(r + 1) * 64]).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                prop_assert!((f64::from(out[r]) - exact).abs() <= 1e-3 * (1.0 + exact.abs()) + 1.0);
            }
        }
    }

    #[test]
    fn dims_1_and_1024_work() {
        assert_eq!(dot(&[3.0], &[2.0]), 6.0);
        let a = vec![0.5f32; 1024];
        let b = vec![2.0f32; 1024];
        assert_eq!(dot(&a, &b), 1024.0);
    }
}
