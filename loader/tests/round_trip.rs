//! What goes in comes out: ids up to u64::MAX, floats to the bit, the same model whichever form
//! the tables take (JSONL, one Parquet file, a Spark part folder), and the same model whether
//! the synthetic generator writes files or feeds the builder directly.

mod common;

use arrow_array::types::Float64Type;
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, LargeListArray, ListArray,
    StructArray,
};
use arrow_schema::{DataType, Field, Fields};
use common::*;
use proptest::prelude::*;
use scoregrid_loader::rows::{CustomerRows, PoolRows, ProductRows};
use scoregrid_loader::synth::{self, SynthSpec};
use scoregrid_loader::write::TableWriter;
use scoregrid_loader::{Format, Table, build_model, sample_request_keys};
use scoregrid_shard::{BuiltModel, PartitionCount};
use std::path::Path;
use std::sync::Arc;

fn partitions() -> PartitionCount {
    PartitionCount::new(8).unwrap()
}

fn build(dir: &Path) -> BuiltModel {
    match build_model(dir, partitions(), 64) {
        Ok((_, built)) => built,
        Err(e) => panic!("build failed: {e}"),
    }
}

fn small_spec(seed: u64) -> SynthSpec {
    SynthSpec {
        customers: 3_000,
        products: 1_500,
        containers: 40,
        dim: 16,
        categories: 12,
        pool_products: None,
        seed,
        version: "round-trip.1".to_string(),
    }
}

fn assert_same_model(a: &BuiltModel, b: &BuiltModel, what: &str) {
    assert_eq!(a.directory, b.directory, "{what}: directories differ");
    assert_eq!(a.partitions.len(), b.partitions.len());
    for (x, y) in a.partitions.iter().zip(&b.partitions) {
        assert!(x == y, "{what}: partition {} differs", x.id());
    }
}

/// Writes rows as a model folder in `format`.
fn write_rows(
    dir: &Path,
    dim: usize,
    customers: &CustomerRows,
    products: &ProductRows,
    pools: &PoolRows,
    format: Format,
) {
    write(dir, "manifest.json", &manifest(dim));
    let path = |table: Table| dir.join(format!("{}.{}", table.name(), format.extension()));
    let mut writer =
        TableWriter::create(&path(Table::Customers), Table::Customers, format).unwrap();
    writer.write(customers).unwrap();
    writer.finish().unwrap();
    let mut writer = TableWriter::create(&path(Table::Products), Table::Products, format).unwrap();
    writer.write(products).unwrap();
    writer.finish().unwrap();
    let mut writer = TableWriter::create(&path(Table::Pools), Table::Pools, format).unwrap();
    writer.write(pools).unwrap();
    writer.finish().unwrap();
}

fn recorded(customers: &CustomerRows, products: &ProductRows, pools: &PoolRows) -> Recorded {
    Recorded {
        customers: (0..customers.len())
            .map(|i| {
                let categories = customers
                    .categories(i)
                    .map(|(c, w)| (c, w.to_bits()))
                    .collect();
                (customers.ids[i], bits(customers.vector(i)), categories)
            })
            .collect(),
        products: (0..products.len())
            .map(|i| {
                (
                    products.ids[i],
                    products.categories[i],
                    bits(products.vector(i)),
                    products.in_stock[i],
                )
            })
            .collect(),
        pools: (0..pools.len())
            .map(|i| {
                (
                    pools.containers[i],
                    pools.products[i],
                    pools.pool_scores[i].to_bits(),
                )
            })
            .collect(),
    }
}

#[test]
fn extreme_ids_round_trip_in_jsonl_and_parquet() {
    // Proves ids are exact at both ends of u64 and u32, through both writers and readers.
    let dim = 2;
    let mut customers = CustomerRows::new(dim);
    customers.push(0, &[1.0, 2.0], &[(0, 0.5), (u32::MAX, 1.5)]);
    customers.push(u64::MAX, &[-0.0, f32::MIN_POSITIVE], &[]);
    customers.push(u64::MAX - 1, &[f32::MAX, -f32::MAX], &[(1 << 31, 1e-45)]);
    customers.push(1 << 63, &[0.1, 1.0 / 3.0], &[]);
    let mut products = ProductRows::new(dim);
    products.push(u64::MAX, u32::MAX, &[1.0, 0.0], true);
    products.push(0, 0, &[0.0, 1.0], false);
    let mut pools = PoolRows::default();
    pools.push(u64::MAX, u64::MAX, 0.999);
    pools.push(0, 0, 0.0);
    let expected = recorded(&customers, &products, &pools);
    for format in [Format::Jsonl, Format::Parquet] {
        let dir = tempfile::tempdir().unwrap();
        write_rows(dir.path(), dim, &customers, &products, &pools, format);
        assert_eq!(load(dir.path()), expected, "{format:?}");
    }
}

#[test]
fn signed_parquet_ids_are_read_as_the_same_bits() {
    // Spark has no unsigned types: a negative long is an id above 2^63, a negative int a
    // category above 2^31. Also reads f64 vectors (narrowed) in a LargeList.
    let dir = valid_jsonl_dir();
    std::fs::remove_file(dir.path().join("products.jsonl")).unwrap();
    let vectors = LargeListArray::from_iter_primitive::<Float64Type, _, _>([
        Some(vec![Some(0.1), Some(1e-50)]),
        Some(vec![Some(-2.5), Some(3.0)]),
        Some(vec![Some(1.0), Some(0.0)]),
    ]);
    write_parquet(
        &dir.path().join("products.parquet"),
        vec![
            (
                "product_id",
                Arc::new(Int64Array::from(vec![-1, i64::MIN, 10])) as ArrayRef,
            ),
            (
                "category_id",
                Arc::new(Int32Array::from(vec![-1, 7, i32::MIN])),
            ),
            ("vector", Arc::new(vectors)),
            (
                "in_stock",
                Arc::new(BooleanArray::from(vec![true, false, true])),
            ),
            (
                "spark_extra_column",
                Arc::new(Int64Array::from(vec![0, 0, 0])),
            ),
        ],
    );
    write(
        dir.path(),
        "pools.jsonl",
        "{\"container_id\": 1, \"product_id\": 18446744073709551615, \"pool_score\": 0.5}\n",
    );
    let recorded = load(dir.path());
    assert_eq!(
        recorded.products,
        vec![
            (u64::MAX, u32::MAX, bits(&[0.1f64 as f32, 0.0]), true),
            (1 << 63, 7, bits(&[-2.5, 3.0]), false),
            (10, 1 << 31, bits(&[1.0, 0.0]), true),
        ]
    );
    assert_eq!(recorded.pools, vec![(1, u64::MAX, 0.5f32.to_bits())]);
}

#[test]
fn double_vectors_and_weights_are_narrowed_to_f32() {
    let dir = valid_jsonl_dir();
    std::fs::remove_file(dir.path().join("customers.jsonl")).unwrap();
    let vectors = ListArray::from_iter_primitive::<Float64Type, _, _>([Some(vec![
        Some(0.1),
        Some(-1.0 / 3.0),
    ])]);
    let fields = Fields::from(vec![
        Field::new("category_id", DataType::Int32, false),
        Field::new("weight", DataType::Float64, false),
    ]);
    let entries = StructArray::try_new(
        fields.clone(),
        vec![
            Arc::new(Int32Array::from(vec![4, 5])) as ArrayRef,
            Arc::new(Float64Array::from(vec![0.7, 1e-3])),
        ],
        None,
    )
    .unwrap();
    let categories = ListArray::try_new(
        Arc::new(Field::new("element", DataType::Struct(fields), false)),
        arrow_buffer::OffsetBuffer::from_lengths([2]),
        Arc::new(entries),
        None,
    )
    .unwrap();
    write_parquet(
        &dir.path().join("customers.parquet"),
        vec![
            (
                "customer_id",
                Arc::new(arrow_array::UInt64Array::from(vec![42])) as ArrayRef,
            ),
            ("vector", Arc::new(vectors)),
            ("categories", Arc::new(categories)),
        ],
    );
    let recorded = load(dir.path());
    assert_eq!(
        recorded.customers,
        vec![(
            42,
            bits(&[0.1f64 as f32, (-1.0f64 / 3.0) as f32]),
            vec![
                (4, (0.7f64 as f32).to_bits()),
                (5, (1e-3f64 as f32).to_bits())
            ]
        )]
    );
}

#[test]
fn every_form_of_one_synthetic_model_builds_the_same_partitions() {
    // Proves JSONL, a single Parquet file, a Spark part folder (several parts, _SUCCESS and .crc
    // beside them) and direct generation all give identical partitions and directory.
    let spec = small_spec(7);
    let jsonl = tempfile::tempdir().unwrap();
    let parquet = tempfile::tempdir().unwrap();
    let parts = tempfile::tempdir().unwrap();
    let summary = synth::write_model(&spec, jsonl.path(), Format::Jsonl).unwrap();
    assert_eq!(
        synth::write_model(&spec, parquet.path(), Format::Parquet).unwrap(),
        summary
    );
    assert_eq!(
        synth::write_model_parts(&spec, parts.path(), 700).unwrap(),
        summary
    );
    write(
        parts.path(),
        "customers/.part-00000.parquet.crc",
        "not parquet",
    );
    let part_count = std::fs::read_dir(parts.path().join("customers"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("part-")
        })
        .count();
    assert_eq!(part_count, 5, "3000 customers in parts of 700");
    assert_eq!(summary.customers, 3_000);
    assert_eq!(summary.products, 1_500);
    assert_eq!(summary.containers, 40);

    let from_jsonl = build(jsonl.path());
    assert_eq!(from_jsonl.directory.containers.len(), 40);
    assert_same_model(&from_jsonl, &build(parquet.path()), "parquet");
    assert_same_model(&from_jsonl, &build(parts.path()), "parts");
    let (generated_summary, generated) = synth::build_model(&spec, partitions(), 64).unwrap();
    assert_eq!(generated_summary, summary);
    assert_same_model(&from_jsonl, &generated, "generate_into");

    // And the rows themselves, in order.
    assert_eq!(load(jsonl.path()), load(parts.path()));
}

#[test]
fn synthetic_models_have_the_promised_structure() {
    let spec = small_spec(3);
    let mut reference = scoregrid_shard::reference::ReferenceModel::new(spec.dim);
    let summary = synth::generate_into(&spec, &mut reference).unwrap();
    assert_eq!(reference.customers.len(), 3_000);
    assert!(
        reference.customers.contains_key(&u64::MAX),
        "big ids are exercised"
    );
    let without = reference
        .customers
        .values()
        .filter(|c| c.categories.is_empty())
        .count();
    assert!(
        (30..300).contains(&without),
        "a few customers list no category: {without}"
    );
    assert!(
        reference
            .customers
            .values()
            .all(|c| c.categories.len() <= 6)
    );
    assert!(
        reference
            .customers
            .values()
            .flat_map(|c| &c.categories)
            .all(|&(_, w)| w > 0.0)
    );
    let in_stock = reference.products.values().filter(|p| p.in_stock).count();
    assert!(
        (1_250..1_450).contains(&in_stock),
        "about 90% in stock: {in_stock}"
    );
    let sizes: Vec<usize> = reference.pools.values().map(Vec::len).collect();
    assert_eq!(sizes.iter().sum::<usize>() as u64, summary.pool_entries);
    assert!(sizes.iter().any(|&n| n > 100), "some grids: {sizes:?}");
    assert!(
        sizes.iter().any(|&n| (20..=100).contains(&n)),
        "some lists: {sizes:?}"
    );
    for pool in reference.pools.values() {
        let distinct: std::collections::HashSet<u64> = pool.iter().map(|e| e.0).collect();
        assert_eq!(
            distinct.len(),
            pool.len(),
            "no duplicate products in a pool"
        );
        assert!(pool.iter().all(|&(_, s)| (0.0..1.0).contains(&s)));
    }
    // A different dim is refused with the row named.
    let error = synth::generate_into(
        &spec,
        &mut scoregrid_shard::reference::ReferenceModel::new(8),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "synthetic customers row 1: field `vector`: expected 8 values (the manifest's dim), found 16"
    );
    // Fixed pool sizes, capped by the product count.
    let fixed = SynthSpec {
        pool_products: Some(2_000),
        ..small_spec(3)
    };
    let mut reference = scoregrid_shard::reference::ReferenceModel::new(fixed.dim);
    synth::generate_into(&fixed, &mut reference).unwrap();
    assert!(reference.pools.values().all(|p| p.len() == 1_500));
}

#[test]
fn writing_refuses_a_folder_that_holds_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        customers: 10,
        products: 10,
        containers: 2,
        dim: 4,
        ..SynthSpec::default()
    };
    synth::write_model(&spec, dir.path(), Format::Jsonl).unwrap();
    let error = synth::write_model(&spec, dir.path(), Format::Parquet)
        .unwrap_err()
        .to_string();
    assert!(
        error.ends_with(
            "manifest.json: already exists; write a synthetic model into an empty or new folder"
        ),
        "{error}"
    );
    let bad = SynthSpec {
        dim: 0,
        ..SynthSpec::default()
    };
    assert_eq!(
        synth::write_model(&bad, dir.path(), Format::Jsonl)
            .unwrap_err()
            .to_string(),
        "argument `dim`: must be 1..=1024, found 0"
    );
}

#[test]
fn request_keys_are_sampled_from_the_id_columns() {
    let spec = small_spec(11);
    let jsonl = tempfile::tempdir().unwrap();
    let parquet = tempfile::tempdir().unwrap();
    synth::write_model(&spec, jsonl.path(), Format::Jsonl).unwrap();
    synth::write_model_parts(&spec, parquet.path(), 1_000).unwrap();
    let keys = sample_request_keys(jsonl.path(), 500, 9).unwrap();
    assert_eq!(
        keys,
        sample_request_keys(parquet.path(), 500, 9).unwrap(),
        "same keys from either form"
    );
    assert_eq!(keys.customers.len(), 500);
    let distinct: std::collections::HashSet<u64> = keys.customers.iter().copied().collect();
    assert_eq!(distinct.len(), 500, "a sample without repeats");
    assert_ne!(
        keys.customers,
        sample_request_keys(jsonl.path(), 500, 10)
            .unwrap()
            .customers
    );
    let (_, built) = synth::build_model(&spec, partitions(), 64).unwrap();
    let mut expected: Vec<(u64, u64)> = built
        .directory
        .containers
        .iter()
        .map(|(&id, entry)| (id, entry.products()))
        .collect();
    expected.sort_unstable();
    assert_eq!(keys.containers, expected);
    // Fewer customers than asked for: all of them.
    assert_eq!(
        sample_request_keys(jsonl.path(), 10_000, 1)
            .unwrap()
            .customers
            .len(),
        3_000
    );
}

/// A random small model's rows (not necessarily a valid model: the recording sink keeps what it
/// is given, so duplicates and empty pools are fine).
fn arbitrary_rows() -> impl Strategy<Value = (usize, CustomerRows, ProductRows, PoolRows)> {
    let finite = prop_oneof![
        any::<f32>().prop_filter("finite", |v| v.is_finite()),
        Just(-0.0f32),
        Just(f32::MIN_POSITIVE),
        Just(f32::MAX),
        Just(1e-45f32),
    ];
    let id = prop_oneof![any::<u64>(), Just(u64::MAX), Just(0u64), 0u64..1000];
    (1usize..5).prop_flat_map(move |dim| {
        let vector = proptest::collection::vec(finite.clone(), dim);
        let customer = (
            id.clone(),
            vector.clone(),
            proptest::collection::vec((any::<u32>(), finite.clone()), 0..4),
        );
        let product = (id.clone(), any::<u32>(), vector, any::<bool>());
        let pool = (id.clone(), id.clone(), finite.clone());
        (
            Just(dim),
            proptest::collection::vec(customer, 0..8),
            proptest::collection::vec(product, 0..8),
            proptest::collection::vec(pool, 0..8),
        )
            .prop_map(|(dim, customers, products, pools)| {
                let mut c = CustomerRows::new(dim);
                for (id, vector, categories) in &customers {
                    c.push(*id, vector, categories);
                }
                let mut p = ProductRows::new(dim);
                for (id, category, vector, in_stock) in &products {
                    p.push(*id, *category, vector, *in_stock);
                }
                let mut q = PoolRows::default();
                for &(container, product, score) in &pools {
                    q.push(container, product, score);
                }
                (dim, c, p, q)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Proves the writers and readers are inverse to the bit in both formats, on random rows with
    /// extreme ids and floats (subnormals, -0.0, f32::MAX).
    #[test]
    fn random_rows_round_trip_through_both_formats((dim, customers, products, pools) in arbitrary_rows()) {
        let expected = recorded(&customers, &products, &pools);
        for format in [Format::Jsonl, Format::Parquet] {
            let dir = tempfile::tempdir().unwrap();
            write_rows(dir.path(), dim, &customers, &products, &pools, format);
            prop_assert_eq!(&load(dir.path()), &expected, "{:?}", format);
        }
    }
}

/// A version built into the spool (customers spilled to disk, one partition in RAM at a time)
/// is byte for byte the version built in RAM, and its folder goes when it is dropped.
#[test]
fn a_spooled_build_writes_the_files_of_the_in_memory_build() {
    let dir = tempfile::tempdir().unwrap();
    synth::write_model(&small_spec(5), dir.path(), Format::Parquet).unwrap();
    let built = build(dir.path());
    let spool = tempfile::tempdir().unwrap();
    let (_, spooled) =
        scoregrid_loader::spool::build_spooled(dir.path(), partitions(), 64, spool.path()).unwrap();
    assert_eq!(spooled.directory, built.directory);
    assert_eq!(spooled.files.len(), built.partitions.len());
    for (file, partition) in spooled.files.iter().zip(&built.partitions) {
        let encoded = scoregrid_shard::file::encode(partition);
        assert_eq!(std::fs::read(&file.path).unwrap(), encoded.bytes);
        assert_eq!(
            (file.checksum, file.bytes),
            (encoded.checksum, encoded.bytes.len() as u64)
        );
    }
    let customers: u64 = built
        .partitions
        .iter()
        .map(|p| p.customers().len() as u64)
        .sum();
    assert_eq!(spooled.customers, customers);
    drop(spooled);
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
}
