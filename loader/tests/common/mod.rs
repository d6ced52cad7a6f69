//! Helpers shared by the integration tests: model folders from literal rows, Parquet files with
//! hand-made schemas, and a sink that records rows verbatim.

#![allow(dead_code)]

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Field, Schema};
use parquet::arrow::ArrowWriter;
use scoregrid_shard::{BuildError, CategoryId, ModelSink, RowRef};
use std::path::Path;
use std::sync::Arc;
use tempfile::TempDir;

/// A customer row with floats as bits: id, vector, (category, weight).
pub type CustomerBits = (u64, Vec<u32>, Vec<(u32, u32)>);

/// Every row a sink was given, floats as bits (so -0.0 and NaN compare exactly).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    pub customers: Vec<CustomerBits>,
    pub products: Vec<(u64, u32, Vec<u32>, bool)>,
    pub pools: Vec<(u64, u64, u32)>,
}

pub fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

impl ModelSink for Recorded {
    fn add_customer(
        &mut self,
        id: u64,
        vector: &[f32],
        categories: &[(CategoryId, f32)],
        _origin: RowRef,
    ) -> Result<(), BuildError> {
        let categories = categories.iter().map(|&(c, w)| (c, w.to_bits())).collect();
        self.customers.push((id, bits(vector), categories));
        Ok(())
    }

    fn add_product(
        &mut self,
        id: u64,
        category: u32,
        vector: &[f32],
        in_stock: bool,
        _origin: RowRef,
    ) -> Result<(), BuildError> {
        self.products.push((id, category, bits(vector), in_stock));
        Ok(())
    }

    fn add_pool_entry(
        &mut self,
        container: u64,
        product: u64,
        pool_score: f32,
        _origin: RowRef,
    ) -> Result<(), BuildError> {
        self.pools.push((container, product, pool_score.to_bits()));
        Ok(())
    }
}

pub fn write(dir: &Path, name: &str, text: &str) {
    if let Some(parent) = Path::new(name).parent() {
        std::fs::create_dir_all(dir.join(parent)).unwrap();
    }
    std::fs::write(dir.join(name), text).unwrap();
}

pub fn manifest(dim: usize) -> String {
    format!("{{\"version\": \"test-1\", \"dim\": {dim}}}\n")
}

/// A valid dim-2 model in JSONL: customers 1 and 2, products 10 and 11, container 100 holding
/// both products.
pub fn valid_jsonl_dir() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    write(path, "manifest.json", &manifest(2));
    write(
        path,
        "customers.jsonl",
        concat!(
            r#"{"customer_id": 1, "vector": [0.5, -1], "categories": [{"category_id": 3, "weight": 0.25}]}"#,
            "\n",
            r#"{"customer_id": 2, "vector": [1, 2], "categories": []}"#,
            "\n",
        ),
    );
    write(path, "products.jsonl", &products_jsonl(&[10, 11]));
    write(
        path,
        "pools.jsonl",
        concat!(
            r#"{"container_id": 100, "product_id": 10, "pool_score": 0.5}"#,
            "\n",
            r#"{"container_id": 100, "product_id": 11, "pool_score": 0.25}"#,
            "\n",
        ),
    );
    dir
}

/// Products lines of dim 2 for `ids`.
pub fn products_jsonl(ids: &[u64]) -> String {
    ids.iter()
        .map(|id| format!("{{\"product_id\": {id}, \"category_id\": 3, \"vector\": [1, 0], \"in_stock\": true}}\n"))
        .collect()
}

/// Writes `columns` as one Parquet file (one row group, default properties).
pub fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// The message of the error `load_model` gives for `dir`, read into a recording sink.
pub fn load_error(dir: &Path) -> String {
    match scoregrid_loader::load_model(dir, &mut Recorded::default()) {
        Ok(summary) => panic!("expected a refusal, loaded {summary:?}"),
        Err(e) => e.to_string(),
    }
}

pub fn load(dir: &Path) -> Recorded {
    let mut recorded = Recorded::default();
    if let Err(e) = scoregrid_loader::load_model(dir, &mut recorded) {
        panic!("load failed: {e}");
    }
    recorded
}
