//! The scoring kernel against this machine's ceiling for the same loop.
//!
//! - `score_segment/4096x64`: the real path: filter, dot products, rule, top-20, over one full
//!   segment of 4096 products at dim 64 (1 MiB of vectors).
//! - `dot_rows/4096x64`: the dot products alone.
//! - `ceiling/read_1mib` and `ceiling/read_256mib`: the read bandwidth of one core over a working
//!   set the size of one segment (cache-resident when hot) and over one that only DRAM holds.
//! - `ceiling/mul_add_registers`: multiply-add throughput with no memory traffic at all.
//!
//! BENCHMARKS.md turns these into products per second and the kernel's share of the ceiling
//! (ceiling = min(bandwidth / 256 bytes, flops / 128) per product at dim 64).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use scoregrid_shard::kernel::dot_rows;
use scoregrid_shard::{
    Affinities, ModelBuilder, ModelLayout, ModelSink, ModelVersion, PartitionCount, RowRef,
    ScoringWeights, SegmentKey, SegmentQuery, TopK, score_segment,
};
use std::hint::black_box;

const DIM: usize = 64;
const ROWS: usize = 4096;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = scoregrid_shard::hashing::mix64(x.wrapping_add(0x9e37_79b9));
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn segment_model() -> scoregrid_shard::BuiltModel {
    let mut b = ModelBuilder::new(ModelLayout {
        version: ModelVersion::new("bench").unwrap(),
        dim: DIM,
        partitions: PartitionCount::new(1).unwrap(),
        segment_products_max: ROWS as u32,
    });
    let vectors = values(ROWS * DIM, 1);
    for p in 0..ROWS {
        b.add_product(
            p as u64,
            (p % 50) as u32,
            &vectors[p * DIM..(p + 1) * DIM],
            true,
            RowRef(0),
        )
        .unwrap();
        b.add_pool_entry(1, p as u64, p as f32 / ROWS as f32, RowRef(0))
            .unwrap();
    }
    b.finish().unwrap()
}

fn kernel(c: &mut Criterion) {
    let built = segment_model();
    let segment = built.partitions[0]
        .segment(SegmentKey {
            container: 1,
            number: 0,
        })
        .unwrap();
    let query = values(DIM, 2);
    let affinities = Affinities::new((0..8).map(|c| (c * 3, 0.1)).collect());

    let mut group = c.benchmark_group("score_segment");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("4096x64", |b| {
        b.iter(|| {
            let q = SegmentQuery {
                vector: Some(black_box(&query)),
                affinities: &affinities,
                weights: ScoringWeights::default(),
                category: None,
                take: u32::MAX,
                after: None,
            };
            let mut top = TopK::new(21);
            score_segment(segment, &q, &mut top);
            top.into_sorted()
        })
    });
    group.finish();

    let vectors = values(ROWS * DIM, 3);
    let rows: Vec<u32> = (0..ROWS as u32).collect();
    let mut out = vec![0.0f32; ROWS];
    let mut group = c.benchmark_group("dot_rows");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("4096x64", |b| {
        b.iter(|| dot_rows(black_box(&query), black_box(&vectors), &rows, &mut out))
    });
    group.finish();
}

/// Sums a buffer with 32 independent lanes: as fast as one core can read it.
fn read_sum(data: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above).
        return unsafe { read_sum_avx2(data) };
    }
    read_sum_body(data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn read_sum_avx2(data: &[f32]) -> f32 {
    read_sum_body(data)
}

#[inline(always)]
fn read_sum_body(data: &[f32]) -> f32 {
    let mut acc = [0.0f32; 32];
    for chunk in data.chunks_exact(32) {
        for j in 0..32 {
            acc[j] += chunk[j];
        }
    }
    acc.iter().sum()
}

/// Multiply-adds on 8 independent 8-lane accumulators, operands in registers.
#[inline(always)]
fn mul_add_body(iterations: usize, x: f32) -> f32 {
    let mut acc = [[0.0f32; 8]; 8];
    let m = [x; 8];
    for _ in 0..iterations {
        for a in acc.iter_mut() {
            for j in 0..8 {
                a[j] = a[j] * m[j] + m[j];
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mul_add_avx2(iterations: usize, x: f32) -> f32 {
    mul_add_body(iterations, x)
}

fn mul_add(iterations: usize, x: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above).
        return unsafe { mul_add_avx2(iterations, x) };
    }
    mul_add_body(iterations, x)
}

fn ceiling(c: &mut Criterion) {
    let mut group = c.benchmark_group("ceiling");
    let small = values(ROWS * DIM, 4);
    group.throughput(Throughput::Bytes((small.len() * 4) as u64));
    group.bench_function("read_1mib", |b| b.iter(|| read_sum(black_box(&small))));
    let big = values(64 << 20, 5);
    group.throughput(Throughput::Bytes((big.len() * 4) as u64));
    group.sample_size(10);
    group.bench_function("read_256mib", |b| b.iter(|| read_sum(black_box(&big))));
    // 10,000 iterations x 64 lanes x 2 flops.
    group.throughput(Throughput::Elements(10_000 * 64 * 2));
    group.sample_size(50);
    group.bench_function("mul_add_registers", |b| {
        b.iter(|| mul_add(black_box(10_000), black_box(0.999)))
    });
    group.finish();
}

criterion_group!(benches, kernel, ceiling);
criterion_main!(benches);
