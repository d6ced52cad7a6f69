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
            // SAFETY: the CPU supports AVX2 (checked above); `avx2::dot_rows` bounds-checks
            // every row before it reads it.
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

    /// Element `r` of the result is `combine` of `rows[r]`'s lanes: the 8x8 block is transposed
    /// (column `j` then holds lane `j` of every row) and the columns are added in the contract's
    /// pairing, `((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7))`, so each row sees exactly the
    /// additions of `combine`.
    #[inline(always)]
    fn combine_transposed(rows: [__m256; ROWS_AT_ONCE]) -> __m256 {
        // SAFETY: pure register operations; the caller is compiled with AVX2.
        unsafe {
            let t0 = _mm256_unpacklo_ps(rows[0], rows[1]);
            let t1 = _mm256_unpackhi_ps(rows[0], rows[1]);
            let t2 = _mm256_unpacklo_ps(rows[2], rows[3]);
            let t3 = _mm256_unpackhi_ps(rows[2], rows[3]);
            let t4 = _mm256_unpacklo_ps(rows[4], rows[5]);
            let t5 = _mm256_unpackhi_ps(rows[4], rows[5]);
            let t6 = _mm256_unpacklo_ps(rows[6], rows[7]);
            let t7 = _mm256_unpackhi_ps(rows[6], rows[7]);
            let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let c0 = _mm256_permute2f128_ps::<0x20>(s0, s4);
            let c1 = _mm256_permute2f128_ps::<0x20>(s1, s5);
            let c2 = _mm256_permute2f128_ps::<0x20>(s2, s6);
            let c3 = _mm256_permute2f128_ps::<0x20>(s3, s7);
            let c4 = _mm256_permute2f128_ps::<0x31>(s0, s4);
            let c5 = _mm256_permute2f128_ps::<0x31>(s1, s5);
            let c6 = _mm256_permute2f128_ps::<0x31>(s2, s6);
            let c7 = _mm256_permute2f128_ps::<0x31>(s3, s7);
            _mm256_add_ps(
                _mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
                _mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7)),
            )
        }
    }

    /// # Safety
    /// The CPU must support AVX2.
    ///
    /// # Panics
    /// If a row lies outside `vectors` or `out` is shorter than `rows` (bugs of the caller).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_rows(query: &[f32], vectors: &[f32], rows: &[u32], out: &mut [f32]) {
        let dim = query.len();
        let full = dim - dim % LANES;
        assert!(out.len() >= rows.len());
        let q = query.as_ptr();
        // Every row is sliced (bounds-checked) before its pointer is used.
        let row = |r: u32| {
            let start = r as usize * dim;
            vectors[start..start + dim].as_ptr()
        };
        let mut groups = rows.chunks_exact(ROWS_AT_ONCE);
        let mut outs = out.chunks_exact_mut(ROWS_AT_ONCE);
        for (group, o) in (&mut groups).zip(&mut outs) {
            let p: [*const f32; ROWS_AT_ONCE] = std::array::from_fn(|k| row(group[k]));
            // SAFETY (whole block): each `p[r]` starts a slice of `dim` values; `i + 8 <= full
            // <= dim` for the vector loads, `k < dim` for the scalar tail.
            unsafe {
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
                if full == dim {
                    // No tail: combine the eight rows' lanes with vertical adds after a
                    // transpose, the same pairing for every row.
                    _mm256_storeu_ps(o.as_mut_ptr(), combine_transposed(acc));
                } else {
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
        }
        for (&index, o) in groups.remainder().iter().zip(outs.into_remainder()) {
            let p = row(index);
            // SAFETY: as above, for one row.
            unsafe {
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
            (dim, n) in (1usize..40, 0usize..20),
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

        /// Signed zeros and exact small values: the sign of a zero sum must come out the same on
        /// every path (the lane combine is where a wrong pairing would show).
        #[test]
        fn signed_zeros_survive_every_path(
            dim in prop_oneof![Just(8usize), Just(16), Just(64), 1usize..24],
            n in 0usize..20,
            values in proptest::collection::vec(prop_oneof![Just(0.0f32), Just(-0.0f32), -4.0f32..4.0], 64 * 21),
        ) {
            let q = &values[..dim];
            let block = &values[64..64 + dim * n];
            let rows: Vec<u32> = (0..n as u32).collect();
            let mut fast = vec![0.0; n];
            dot_rows(q, block, &rows, &mut fast);
            for (r, got) in fast.iter().enumerate() {
                let expect = reference_dot(q, &block[r * dim..(r + 1) * dim]);
                prop_assert_eq!(got.to_bits(), expect.to_bits());
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
