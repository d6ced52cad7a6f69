//! Every kind of invalid input of contract section 1 is refused, and the message names the file,
//! the line (JSONL) or row (Parquet), and the field. Each test starts from a valid dim-2 model
//! and breaks one thing, so the message checked is the one for that thing.

mod common;

use arrow_array::builder::{Float32Builder, ListBuilder};
use arrow_array::types::Float32Type;
use arrow_array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int64Array, ListArray, StringArray,
    StructArray, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Fields};
use common::*;
use scoregrid_loader::{LoadError, Location, Position, build_model, load_model};
use scoregrid_shard::PartitionCount;
use scoregrid_shard::reference::ReferenceModel;
use std::path::Path;
use std::sync::Arc;

fn build_error(dir: &Path) -> String {
    let partitions = PartitionCount::new(4).unwrap();
    match build_model(dir, partitions, 16) {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => e.to_string(),
    }
}

fn customers_line(id: &str, vector: &str) -> String {
    format!("{{\"customer_id\": {id}, \"vector\": {vector}, \"categories\": []}}\n")
}

/// Replaces one JSONL table of the valid model.
fn with_table(name: &str, text: &str) -> tempfile::TempDir {
    let dir = valid_jsonl_dir();
    write(dir.path(), name, text);
    dir
}

#[test]
fn wrong_dim_names_line_and_field() {
    let dir = with_table(
        "customers.jsonl",
        &(customers_line("1", "[1, 2]") + &customers_line("2", "[1, 2, 3]")),
    );
    assert_eq!(
        build_error(dir.path()),
        "customers.jsonl line 2: field `vector`: expected 2 values (the manifest's dim), found 3"
    );
}

#[test]
fn a_float_overflowing_f32_is_not_finite() {
    // JSONL cannot spell NaN; 1e39 is a valid JSON number that becomes +inf as f32, and the model
    // refuses it rather than clamping it.
    let dir = with_table("customers.jsonl", &customers_line("1", "[1e39, 0]"));
    assert_eq!(
        build_error(dir.path()),
        "customers.jsonl line 1: field `vector`: value inf is not a finite number"
    );
    let dir = with_table(
        "pools.jsonl",
        "{\"container_id\": 1, \"product_id\": 10, \"pool_score\": -1e300}\n",
    );
    assert_eq!(
        build_error(dir.path()),
        "pools.jsonl line 1: field `pool_score`: value -inf is not a finite number"
    );
}

#[test]
fn duplicate_customer_names_both_lines() {
    let dir = with_table(
        "customers.jsonl",
        &(customers_line("7", "[1, 2]")
            + &customers_line("8", "[1, 2]")
            + &customers_line("7", "[0, 0]")),
    );
    assert_eq!(
        build_error(dir.path()),
        "customers.jsonl line 3: field `customer_id`: duplicate id 7 (first seen at customers.jsonl line 1)"
    );
    // The spooled build (customers spilled to disk) finds it later, and says the same.
    let spool = tempfile::tempdir().unwrap();
    let error = scoregrid_loader::spool::build_spooled(
        dir.path(),
        PartitionCount::new(4).unwrap(),
        64,
        spool.path(),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        error,
        "customers.jsonl line 3: field `customer_id`: duplicate id 7 (first seen at customers.jsonl line 1)"
    );
    assert_eq!(
        std::fs::read_dir(spool.path()).unwrap().count(),
        0,
        "a refused build leaves nothing in the spool"
    );
}

#[test]
fn duplicate_product_across_part_files_names_both_parts() {
    // Proves the RowRef packing across files: the first occurrence is in another part file.
    let dir = valid_jsonl_dir();
    std::fs::remove_file(dir.path().join("products.jsonl")).unwrap();
    let part = |path: &str, ids: Vec<u64>| {
        let n = ids.len();
        let vectors = ListArray::from_iter_primitive::<Float32Type, _, _>(
            (0..n).map(|_| Some(vec![Some(1.0), Some(0.0)])),
        );
        write_parquet(
            &dir.path().join(path),
            vec![
                ("product_id", Arc::new(UInt64Array::from(ids)) as ArrayRef),
                ("category_id", Arc::new(UInt32Array::from(vec![3; n]))),
                ("vector", Arc::new(vectors)),
                ("in_stock", Arc::new(BooleanArray::from(vec![true; n]))),
            ],
        );
    };
    part("products/part-00000.parquet", vec![10, 5, 11]);
    part("products/part-00001.parquet", vec![12, 5]);
    write(dir.path(), "products/_SUCCESS", "");
    write(dir.path(), "products/.part-00000.parquet.crc", "crc");
    assert_eq!(
        build_error(dir.path()),
        "products/part-00001.parquet row 2: field `product_id`: duplicate id 5 \
         (first seen at products/part-00000.parquet row 2)"
    );
}

#[test]
fn duplicate_pool_entry_names_both_lines() {
    // Detected in ModelBuilder::finish, after all rows are read; the error still says where.
    let dir = with_table(
        "pools.jsonl",
        concat!(
            "{\"container_id\": 9, \"product_id\": 10, \"pool_score\": 0.5}\n",
            "{\"container_id\": 9, \"product_id\": 11, \"pool_score\": 0.5}\n",
            "{\"container_id\": 9, \"product_id\": 10, \"pool_score\": 0.1}\n",
        ),
    );
    assert_eq!(
        build_error(dir.path()),
        "pools.jsonl line 3: field `product_id`: product 10 appears twice in container 9 \
         (first seen at pools.jsonl line 1)"
    );
}

#[test]
fn pool_entry_naming_an_unknown_product() {
    let dir = with_table(
        "pools.jsonl",
        concat!(
            "{\"container_id\": 9, \"product_id\": 10, \"pool_score\": 0.5}\n",
            "{\"container_id\": 9, \"product_id\": 77, \"pool_score\": 0.5}\n",
        ),
    );
    assert_eq!(
        build_error(dir.path()),
        "pools.jsonl line 2: field `product_id`: unknown product 77 (not in the products table)"
    );
    // The brute-force reference sink gives the same message; it has no origins to cite for
    // duplicates, so no "first seen" part is invented.
    let error = load_model(dir.path(), &mut ReferenceModel::new(2)).unwrap_err();
    assert_eq!(
        error.location(),
        Some(&Location {
            file: "pools.jsonl".into(),
            position: Position::Line(2)
        })
    );
    let dir = with_table(
        "customers.jsonl",
        &(customers_line("1", "[1, 2]") + &customers_line("1", "[1, 2]")),
    );
    assert_eq!(
        load_model(dir.path(), &mut ReferenceModel::new(2))
            .unwrap_err()
            .to_string(),
        "customers.jsonl line 2: field `customer_id`: duplicate id 1"
    );
}

#[test]
fn truncated_jsonl_line_is_refused_naming_the_line() {
    let dir = with_table(
        "customers.jsonl",
        &(customers_line("1", "[1, 2]")
            + &customers_line("2", "[1, 2]")
            + "{\"customer_id\": 3, \"vector\": [1, 2"),
    );
    let message = load_error(dir.path());
    assert!(
        message.starts_with(
            "customers.jsonl line 3: malformed JSON: EOF while parsing a list (column "
        ),
        "{message}"
    );
    assert!(
        message.ends_with("the last line has no newline: the file looks truncated"),
        "{message}"
    );
    // A complete last line without its newline is fine.
    let dir = with_table("customers.jsonl", customers_line("1", "[1, 2]").trim_end());
    assert_eq!(load(dir.path()).customers.len(), 1);
}

#[test]
fn truncated_parquet_file_is_refused_naming_the_file() {
    let dir = valid_jsonl_dir();
    std::fs::remove_file(dir.path().join("customers.jsonl")).unwrap();
    let path = dir.path().join("customers.parquet");
    let vectors =
        ListArray::from_iter_primitive::<Float32Type, _, _>([Some(vec![Some(1.0), Some(2.0)])]);
    write_parquet(
        &path,
        vec![
            (
                "customer_id",
                Arc::new(UInt64Array::from(vec![1])) as ArrayRef,
            ),
            ("vector", Arc::new(vectors)),
            ("categories", empty_categories(1)),
        ],
    );
    assert_eq!(load(dir.path()).customers.len(), 1);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let message = load_error(dir.path());
    assert!(
        message.starts_with(
            "customers.parquet: not a readable Parquet file (truncated or corrupt?): "
        ),
        "{message}"
    );
}

/// `rows` empty category lists with the contract's struct type.
fn empty_categories(rows: usize) -> ArrayRef {
    let fields = Fields::from(vec![
        Field::new("category_id", DataType::UInt32, true),
        Field::new("weight", DataType::Float32, true),
    ]);
    let values = StructArray::try_new(
        fields.clone(),
        vec![
            Arc::new(UInt32Array::from(Vec::<u32>::new())) as ArrayRef,
            Arc::new(Float32Array::from(Vec::<f32>::new())),
        ],
        None,
    )
    .unwrap();
    let field = Arc::new(Field::new("element", DataType::Struct(fields), true));
    let offsets = arrow_buffer::OffsetBuffer::new_zeroed(rows);
    Arc::new(ListArray::try_new(field, offsets, Arc::new(values), None).unwrap())
}

#[test]
fn wrong_types_are_refused_naming_the_field() {
    let dir = with_table("customers.jsonl", &customers_line("\"abc\"", "[1, 2]"));
    assert_eq!(
        load_error(dir.path()),
        "customers.jsonl line 1: field `customer_id`: expected an unsigned integer, found a string"
    );
    let dir = with_table("customers.jsonl", &customers_line("1", "[1, \"2\"]"));
    assert_eq!(
        load_error(dir.path()),
        "customers.jsonl line 1: field `vector`: element 1: expected a number, found a string"
    );
    let dir = with_table(
        "products.jsonl",
        "{\"product_id\": 10, \"category_id\": 3, \"vector\": [1, 0], \"in_stock\": 1}\n",
    );
    assert_eq!(
        load_error(dir.path()),
        "products.jsonl line 1: field `in_stock`: expected true or false, found a number"
    );
    let dir = with_table("customers.jsonl", "[1, 2]\n");
    assert_eq!(
        load_error(dir.path()),
        "customers.jsonl line 1: expected a JSON object, found a list"
    );
}

#[test]
fn utf8_id_column_is_refused_naming_file_column_and_type() {
    let dir = valid_jsonl_dir();
    std::fs::remove_file(dir.path().join("customers.jsonl")).unwrap();
    let vectors =
        ListArray::from_iter_primitive::<Float32Type, _, _>([Some(vec![Some(1.0), Some(2.0)])]);
    write_parquet(
        &dir.path().join("customers.parquet"),
        vec![
            (
                "customer_id",
                Arc::new(StringArray::from(vec!["1"])) as ArrayRef,
            ),
            ("vector", Arc::new(vectors)),
            ("categories", empty_categories(1)),
        ],
    );
    assert_eq!(
        load_error(dir.path()),
        "customers.parquet: column `customer_id`: expected UInt64 or Int64, found Utf8"
    );
}

#[test]
fn missing_parquet_column_is_refused() {
    let dir = valid_jsonl_dir();
    std::fs::remove_file(dir.path().join("products.jsonl")).unwrap();
    let vectors =
        ListArray::from_iter_primitive::<Float32Type, _, _>([Some(vec![Some(1.0), Some(0.0)])]);
    write_parquet(
        &dir.path().join("products.parquet"),
        vec![
            (
                "product_id",
                Arc::new(UInt64Array::from(vec![10])) as ArrayRef,
            ),
            ("category_id", Arc::new(UInt32Array::from(vec![3]))),
            ("vector", Arc::new(vectors)),
        ],
    );
    assert_eq!(
        load_error(dir.path()),
        "products.parquet: column `in_stock`: missing (the file has: product_id, category_id, vector)"
    );
}

#[test]
fn negative_and_out_of_range_ids_are_refused() {
    let dir = with_table("customers.jsonl", &customers_line("-1", "[1, 2]"));
    assert_eq!(
        load_error(dir.path()),
        "customers.jsonl line 1: field `customer_id`: negative value -1 (expected an unsigned integer)"
    );
    let dir = with_table(
        "customers.jsonl",
        &customers_line("18446744073709551616", "[1, 2]"),
    );
    assert_eq!(
        load_error(dir.path()),
        "customers.jsonl line 1: field `customer_id`: value 18446744073709551616 is above u64::MAX \
         (18446744073709551615)"
    );
    let dir = with_table(
        "products.jsonl",
        "{\"product_id\": 10, \"category_id\": 4294967296, \"vector\": [1, 0], \"in_stock\": true}\n",
    );
    assert_eq!(
        load_error(dir.path()),
        "products.jsonl line 1: field `category_id`: value 4294967296 is above u32::MAX (4294967295)"
    );
    let dir = with_table(
        "customers.jsonl",
        "{\"customer_id\": 1, \"vector\": [1, 2], \"categories\": [{\"category_id\": 1, \"weight\": 1}, \
         {\"category_id\": 4294967296, \"weight\": 1}]}\n",
    );
    assert_eq!(
        load_error(dir.path()),
        "customers.jsonl line 1: field `categories[1].category_id`: value 4294967296 is above u32::MAX \
         (4294967295)"
    );
}

#[test]
fn missing_unknown_and_duplicate_fields_are_refused() {
    let dir = with_table(
        "customers.jsonl",
        "{\"customer_id\": 1, \"vector\": [1, 2]}\n",
    );
    assert_eq!(
        load_error(dir.path()),
        "customers.jsonl line 1: missing field `categories`"
    );
    let dir = with_table(
        "customers.jsonl",
        "{\"customer_id\": 1, \"vector\": [1, 2], \"categories\": [], \"colour\": 1}\n",
    );
    assert_eq!(
        load_error(dir.path()),
        "customers.jsonl line 1: unknown field `colour`, expected one of `customer_id`, `vector`, `categories`"
    );
    let dir = with_table(
        "pools.jsonl",
        "{\"container_id\": 1, \"product_id\": 10, \"pool_score\": 0.5, \"pool_score\": 0.5}\n",
    );
    assert_eq!(
        load_error(dir.path()),
        "pools.jsonl line 1: duplicate field `pool_score`"
    );
}

#[test]
fn blank_and_overlong_lines_are_refused() {
    let dir = with_table(
        "customers.jsonl",
        &(customers_line("1", "[1, 2]") + "\n" + &customers_line("2", "[1, 2]")),
    );
    assert_eq!(
        load_error(dir.path()),
        "customers.jsonl line 2: blank line (expected one JSON object per line)"
    );
    let dir = with_table(
        "customers.jsonl",
        &(customers_line("1", "[1, 2]") + "   \n"),
    );
    assert_eq!(
        load_error(dir.path()),
        "customers.jsonl line 2: blank line (expected one JSON object per line)"
    );
    let long = format!("[{}0]", "0,".repeat(scoregrid_loader::LINE_BYTES_MAX / 2));
    let dir = with_table(
        "customers.jsonl",
        &(customers_line("1", "[1, 2]") + &customers_line("2", &long)),
    );
    assert_eq!(
        load_error(dir.path()),
        "customers.jsonl line 2: line longer than 4194304 bytes (missing newlines, or not a JSONL file?)"
    );
}

#[test]
fn missing_and_ambiguous_tables_are_refused() {
    let dir = valid_jsonl_dir();
    std::fs::remove_file(dir.path().join("pools.jsonl")).unwrap();
    assert_eq!(
        load_error(dir.path()),
        "no pools table: expected pools.jsonl, pools.parquet or pools/"
    );
    let dir = valid_jsonl_dir();
    write(dir.path(), "customers/part-00000.parquet", "");
    assert_eq!(
        load_error(dir.path()),
        "customers table is given in more than one form: customers.jsonl and customers/ (keep exactly one)"
    );
    let dir = valid_jsonl_dir();
    std::fs::remove_file(dir.path().join("products.jsonl")).unwrap();
    std::fs::create_dir(dir.path().join("products")).unwrap();
    write(dir.path(), "products/_SUCCESS", "");
    assert_eq!(
        load_error(dir.path()),
        "products/: no part-*.parquet files in the folder"
    );
    write(dir.path(), "products/notes.txt", "");
    assert_eq!(
        load_error(dir.path()),
        "products/notes.txt: unexpected entry in a part folder (expected part-*.parquet files; \
         `_*`, `.*` and `*.crc` are ignored)"
    );
    let dir = valid_jsonl_dir();
    std::fs::remove_file(dir.path().join("products.jsonl")).unwrap();
    std::fs::create_dir(dir.path().join("products.parquet")).unwrap();
    assert_eq!(
        load_error(dir.path()),
        "products.parquet: is a folder; a part folder must be named products/"
    );
}

#[test]
fn bad_manifests_are_refused() {
    let dir = valid_jsonl_dir();
    write(
        dir.path(),
        "manifest.json",
        "{\"version\": \"v1\", \"dim\": 0}",
    );
    assert_eq!(
        load_error(dir.path()),
        "manifest.json: field `dim`: must be 1..=1024, found 0"
    );
    write(
        dir.path(),
        "manifest.json",
        "{\"version\": \"v/1\", \"dim\": 2}",
    );
    assert_eq!(
        load_error(dir.path()),
        "manifest.json: field `version`: model version may only hold [A-Za-z0-9._-], found '/'"
    );
    std::fs::remove_file(dir.path().join("manifest.json")).unwrap();
    assert!(load_error(dir.path()).starts_with("manifest.json: "));
    assert!(matches!(
        load_model(dir.path(), &mut Recorded::default()),
        Err(LoadError::Io { .. })
    ));
}

/// A customers.parquet of dim 2 with the given columns replacing the defaults.
fn customers_parquet(dir: &Path, ids: ArrayRef, vectors: ArrayRef, categories: ArrayRef) {
    let _ = std::fs::remove_file(dir.join("customers.jsonl"));
    write_parquet(
        &dir.join("customers.parquet"),
        vec![
            ("customer_id", ids),
            ("vector", vectors),
            ("categories", categories),
        ],
    );
}

#[test]
fn nan_and_inf_in_parquet_are_not_finite() {
    let dir = valid_jsonl_dir();
    let vectors = ListArray::from_iter_primitive::<Float32Type, _, _>([
        Some(vec![Some(1.0), Some(2.0)]),
        Some(vec![Some(1.0), Some(f32::NAN)]),
    ]);
    customers_parquet(
        dir.path(),
        Arc::new(UInt64Array::from(vec![1, 2])),
        Arc::new(vectors),
        empty_categories(2),
    );
    assert_eq!(
        build_error(dir.path()),
        "customers.parquet row 2: field `vector`: value NaN is not a finite number"
    );
    let dir = valid_jsonl_dir();
    std::fs::remove_file(dir.path().join("pools.jsonl")).unwrap();
    write_parquet(
        &dir.path().join("pools.parquet"),
        vec![
            (
                "container_id",
                Arc::new(UInt64Array::from(vec![1, 1])) as ArrayRef,
            ),
            ("product_id", Arc::new(UInt64Array::from(vec![10, 11]))),
            (
                "pool_score",
                Arc::new(Float64Array::from(vec![0.5, f64::INFINITY])),
            ),
        ],
    );
    assert_eq!(
        build_error(dir.path()),
        "pools.parquet row 2: field `pool_score`: value inf is not a finite number"
    );
}

#[test]
fn nulls_in_parquet_are_refused_naming_row_and_field() {
    let dir = valid_jsonl_dir();
    let vectors = || {
        Arc::new(ListArray::from_iter_primitive::<Float32Type, _, _>([
            Some(vec![Some(1.0), Some(2.0)]),
            Some(vec![Some(1.0), Some(2.0)]),
        ])) as ArrayRef
    };
    customers_parquet(
        dir.path(),
        Arc::new(UInt64Array::from(vec![Some(1), None])),
        vectors(),
        empty_categories(2),
    );
    assert_eq!(
        load_error(dir.path()),
        "customers.parquet row 2: field `customer_id`: null value"
    );

    let mut builder = ListBuilder::new(Float32Builder::new());
    builder.append_value([Some(1.0), Some(2.0)]);
    builder.append_value([Some(1.0), None]);
    customers_parquet(
        dir.path(),
        Arc::new(UInt64Array::from(vec![1, 2])),
        Arc::new(builder.finish()),
        empty_categories(2),
    );
    assert_eq!(
        load_error(dir.path()),
        "customers.parquet row 2: field `vector[1]`: null value"
    );

    let fields = Fields::from(vec![
        Field::new("category_id", DataType::UInt32, true),
        Field::new("weight", DataType::Float32, true),
    ]);
    let entries = StructArray::try_new(
        fields.clone(),
        vec![
            Arc::new(UInt32Array::from(vec![1, 2, 3])) as ArrayRef,
            Arc::new(Float32Array::from(vec![Some(0.5), Some(0.5), None])),
        ],
        None,
    )
    .unwrap();
    let categories = ListArray::try_new(
        Arc::new(Field::new("element", DataType::Struct(fields), true)),
        arrow_buffer::OffsetBuffer::from_lengths([1, 2]),
        Arc::new(entries),
        None,
    )
    .unwrap();
    customers_parquet(
        dir.path(),
        Arc::new(UInt64Array::from(vec![1, 2])),
        vectors(),
        Arc::new(categories),
    );
    assert_eq!(
        load_error(dir.path()),
        "customers.parquet row 2: field `categories[1].weight`: null value"
    );
}

#[test]
fn list_of_int_vectors_are_refused_naming_the_type() {
    let dir = valid_jsonl_dir();
    let vectors =
        ListArray::from_iter_primitive::<arrow_array::types::Int32Type, _, _>([Some(vec![
            Some(1),
            Some(2),
        ])]);
    customers_parquet(
        dir.path(),
        Arc::new(Int64Array::from(vec![1])),
        Arc::new(vectors),
        empty_categories(1),
    );
    assert_eq!(
        load_error(dir.path()),
        "customers.parquet: column `vector`: expected a list of Float32 or Float64, found List(Int32)"
    );
}

#[test]
fn corrupt_parquet_pages_are_refused_naming_the_file() {
    // The footer is intact, the data pages are not: the error comes from decoding a batch.
    let dir = tempfile::tempdir().unwrap();
    let spec = scoregrid_loader::synth::SynthSpec {
        customers: 2_000,
        products: 10,
        containers: 1,
        dim: 8,
        ..Default::default()
    };
    scoregrid_loader::synth::write_model(&spec, dir.path(), scoregrid_loader::Format::Parquet)
        .unwrap();
    let path = dir.path().join("customers.parquet");
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[4..4 + 64] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let message = load_error(dir.path());
    assert!(
        message.starts_with("customers.parquet: cannot decode the Parquet data after row 0"),
        "{message}"
    );
}
