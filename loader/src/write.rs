//! Writes rows as the tables of a model folder, in either form the loader reads: JSONL (floats in
//! shortest round-trip form, so they read back to the same bits) or Parquet (unsigned id
//! columns, `List<Float32>` vectors, snappy, bounded row groups).
//!
//! Rendering a chunk (to JSONL bytes or an Arrow batch) is separate from writing it, so that
//! the generator can render on worker threads and keep the writing thread on I/O alone.

use crate::error::LoadError;
use crate::rows::{CustomerRows, PoolRows, ProductRows};
use crate::source::Table;
use arrow_array::{
    ArrayRef, BooleanArray, Float32Array, ListArray, RecordBatch, StructArray, UInt32Array,
    UInt64Array,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

/// Rows per Parquet row group at most. Readers decode page by page, so this bounds the writer's
/// memory (a row group is buffered encoded until it is flushed) more than the reader's.
pub const ROW_GROUP_ROWS_MAX: usize = 1 << 20;

/// Encoded bytes of a Parquet row group at most (Spark's default block size is 128 MiB).
pub const ROW_GROUP_BYTES_MAX: usize = 64 << 20;

/// Write buffer of a JSONL table.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// The two forms a table is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Jsonl,
    Parquet,
}

impl Format {
    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
        }
    }
}

/// A chunk of one table's rows that can be written.
pub trait TableRows {
    const TABLE: Table;
    fn row_count(&self) -> usize;
    /// Appends one JSON object per row, each with its newline.
    ///
    /// # Errors
    /// A message naming the row and field of a value JSON cannot express (NaN, infinity).
    fn render_jsonl(&self, out: &mut Vec<u8>) -> Result<(), String>;
    /// # Errors
    /// When the chunk is too large for 32-bit list offsets.
    fn to_record_batch(&self) -> Result<RecordBatch, ArrowError>;
}

/// The Arrow schema the writer uses for `table` (every column non-null).
pub fn schema(table: Table) -> SchemaRef {
    let fields = match table {
        Table::Customers => vec![
            Field::new("customer_id", DataType::UInt64, false),
            Field::new("vector", vector_type(), false),
            Field::new(
                "categories",
                DataType::List(Arc::new(category_entry_field())),
                false,
            ),
        ],
        Table::Products => vec![
            Field::new("product_id", DataType::UInt64, false),
            Field::new("category_id", DataType::UInt32, false),
            Field::new("vector", vector_type(), false),
            Field::new("in_stock", DataType::Boolean, false),
        ],
        Table::Pools => vec![
            Field::new("container_id", DataType::UInt64, false),
            Field::new("product_id", DataType::UInt64, false),
            Field::new("pool_score", DataType::Float32, false),
        ],
    };
    Arc::new(Schema::new(fields))
}

fn vector_type() -> DataType {
    DataType::List(Arc::new(Field::new("element", DataType::Float32, false)))
}

fn category_fields() -> Fields {
    Fields::from(vec![
        Field::new("category_id", DataType::UInt32, false),
        Field::new("weight", DataType::Float32, false),
    ])
}

fn category_entry_field() -> Field {
    Field::new("element", DataType::Struct(category_fields()), false)
}

/// 32-bit list offsets `0, step, 2 * step, ...` for `rows` rows.
fn even_offsets(rows: usize, step: usize) -> Result<OffsetBuffer<i32>, ArrowError> {
    let total = rows.checked_mul(step).filter(|&t| t <= i32::MAX as usize);
    if total.is_none() {
        return Err(ArrowError::InvalidArgumentError(format!(
            "{rows} rows of {step} values overflow 32-bit list offsets; write smaller chunks"
        )));
    }
    Ok(OffsetBuffer::new(ScalarBuffer::from_iter(
        (0..=rows).map(|r| (r * step) as i32),
    )))
}

fn float_list(values: &[f32], offsets: OffsetBuffer<i32>) -> Result<ListArray, ArrowError> {
    let field = Arc::new(Field::new("element", DataType::Float32, false));
    ListArray::try_new(
        field,
        offsets,
        Arc::new(Float32Array::from(values.to_vec())),
        None,
    )
}

/// Writes `value` in shortest round-trip form; a JSON number, so finite values only.
fn push_f32(out: &mut Vec<u8>, floats: &mut ryu::Buffer, value: f32) -> bool {
    if !value.is_finite() {
        return false;
    }
    out.extend_from_slice(floats.format_finite(value).as_bytes());
    true
}

fn not_finite(row: usize, field: &str, value: f32) -> String {
    format!(
        "row {}: field `{field}`: cannot write {value} in JSON (not a finite number)",
        row + 1
    )
}

impl TableRows for CustomerRows {
    const TABLE: Table = Table::Customers;

    fn row_count(&self) -> usize {
        self.len()
    }

    fn render_jsonl(&self, out: &mut Vec<u8>) -> Result<(), String> {
        let mut ints = itoa::Buffer::new();
        let mut floats = ryu::Buffer::new();
        for row in 0..self.len() {
            out.extend_from_slice(b"{\"customer_id\":");
            out.extend_from_slice(ints.format(self.ids[row]).as_bytes());
            out.extend_from_slice(b",\"vector\":[");
            for (i, &v) in self.vector(row).iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if !push_f32(out, &mut floats, v) {
                    return Err(not_finite(row, "vector", v));
                }
            }
            out.extend_from_slice(b"],\"categories\":[");
            for (i, (category, weight)) in self.categories(row).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"category_id\":");
                out.extend_from_slice(ints.format(category).as_bytes());
                out.extend_from_slice(b",\"weight\":");
                if !push_f32(out, &mut floats, weight) {
                    return Err(not_finite(row, "categories.weight", weight));
                }
                out.push(b'}');
            }
            out.extend_from_slice(b"]}\n");
        }
        Ok(())
    }

    fn to_record_batch(&self) -> Result<RecordBatch, ArrowError> {
        let rows = self.len();
        let vectors = float_list(&self.vectors, even_offsets(rows, self.dim)?)?;
        let entries = StructArray::try_new(
            category_fields(),
            vec![
                Arc::new(UInt32Array::from(self.category_ids.clone())) as ArrayRef,
                Arc::new(Float32Array::from(self.category_weights.clone())) as ArrayRef,
            ],
            None,
        )?;
        if self.category_ids.len() > i32::MAX as usize {
            return Err(ArrowError::InvalidArgumentError(
                "too many categories for 32-bit list offsets; write smaller chunks".to_string(),
            ));
        }
        let offsets = OffsetBuffer::new(ScalarBuffer::from_iter(
            self.category_offsets.iter().map(|&o| o as i32),
        ));
        let categories = ListArray::try_new(
            Arc::new(category_entry_field()),
            offsets,
            Arc::new(entries),
            None,
        )?;
        RecordBatch::try_new(
            schema(Table::Customers),
            vec![
                Arc::new(UInt64Array::from(self.ids.clone())),
                Arc::new(vectors),
                Arc::new(categories),
            ],
        )
    }
}

impl TableRows for ProductRows {
    const TABLE: Table = Table::Products;

    fn row_count(&self) -> usize {
        self.len()
    }

    fn render_jsonl(&self, out: &mut Vec<u8>) -> Result<(), String> {
        let mut ints = itoa::Buffer::new();
        let mut floats = ryu::Buffer::new();
        for row in 0..self.len() {
            out.extend_from_slice(b"{\"product_id\":");
            out.extend_from_slice(ints.format(self.ids[row]).as_bytes());
            out.extend_from_slice(b",\"category_id\":");
            out.extend_from_slice(ints.format(self.categories[row]).as_bytes());
            out.extend_from_slice(b",\"vector\":[");
            for (i, &v) in self.vector(row).iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if !push_f32(out, &mut floats, v) {
                    return Err(not_finite(row, "vector", v));
                }
            }
            out.extend_from_slice(if self.in_stock[row] {
                b"],\"in_stock\":true}\n"
            } else {
                b"],\"in_stock\":false}\n"
            });
        }
        Ok(())
    }

    fn to_record_batch(&self) -> Result<RecordBatch, ArrowError> {
        let vectors = float_list(&self.vectors, even_offsets(self.len(), self.dim)?)?;
        RecordBatch::try_new(
            schema(Table::Products),
            vec![
                Arc::new(UInt64Array::from(self.ids.clone())),
                Arc::new(UInt32Array::from(self.categories.clone())),
                Arc::new(vectors),
                Arc::new(BooleanArray::from(self.in_stock.clone())),
            ],
        )
    }
}

impl TableRows for PoolRows {
    const TABLE: Table = Table::Pools;

    fn row_count(&self) -> usize {
        self.len()
    }

    fn render_jsonl(&self, out: &mut Vec<u8>) -> Result<(), String> {
        let mut ints = itoa::Buffer::new();
        let mut floats = ryu::Buffer::new();
        for row in 0..self.len() {
            out.extend_from_slice(b"{\"container_id\":");
            out.extend_from_slice(ints.format(self.containers[row]).as_bytes());
            out.extend_from_slice(b",\"product_id\":");
            out.extend_from_slice(ints.format(self.products[row]).as_bytes());
            out.extend_from_slice(b",\"pool_score\":");
            let score = self.pool_scores[row];
            if !push_f32(out, &mut floats, score) {
                return Err(not_finite(row, "pool_score", score));
            }
            out.extend_from_slice(b"}\n");
        }
        Ok(())
    }

    fn to_record_batch(&self) -> Result<RecordBatch, ArrowError> {
        RecordBatch::try_new(
            schema(Table::Pools),
            vec![
                Arc::new(UInt64Array::from(self.containers.clone())),
                Arc::new(UInt64Array::from(self.products.clone())),
                Arc::new(Float32Array::from(self.pool_scores.clone())),
            ],
        )
    }
}

/// A chunk rendered for one format, ready for [`TableWriter::write_rendered`].
pub enum Rendered {
    Jsonl(Vec<u8>),
    Parquet(RecordBatch),
}

/// Renders `rows` for `format`; safe to call on any thread.
///
/// # Errors
/// A message naming the row (within the chunk) and the field that cannot be written.
pub fn render<R: TableRows>(rows: &R, format: Format) -> Result<Rendered, String> {
    match format {
        Format::Jsonl => {
            let mut out = Vec::new();
            rows.render_jsonl(&mut out)?;
            Ok(Rendered::Jsonl(out))
        }
        Format::Parquet => rows
            .to_record_batch()
            .map(Rendered::Parquet)
            .map_err(|e| e.to_string()),
    }
}

enum Output {
    Jsonl(BufWriter<File>),
    Parquet(Box<ArrowWriter<File>>),
}

/// Writes one table file, chunk by chunk.
pub struct TableWriter {
    /// The path as given, for messages.
    name: String,
    table: Table,
    output: Output,
    rows: u64,
}

impl TableWriter {
    /// Creates (or truncates) `path` for `table` in `format`.
    ///
    /// # Errors
    /// I/O errors, or a Parquet writer that cannot start.
    pub fn create(path: &Path, table: Table, format: Format) -> Result<Self, LoadError> {
        let name = path.display().to_string();
        let file = File::create(path).map_err(|e| LoadError::io(name.clone(), e))?;
        let output = match format {
            Format::Jsonl => Output::Jsonl(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            Format::Parquet => {
                let properties = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    // Ids and vectors are nearly all distinct: dictionaries would cost time and
                    // then be abandoned.
                    .set_dictionary_enabled(false)
                    .set_max_row_group_row_count(Some(ROW_GROUP_ROWS_MAX))
                    .set_max_row_group_bytes(Some(ROW_GROUP_BYTES_MAX))
                    .build();
                let writer =
                    ArrowWriter::try_new(file, schema(table), Some(properties)).map_err(|e| {
                        LoadError::file(name.clone(), format!("cannot start writing Parquet: {e}"))
                    })?;
                Output::Parquet(Box::new(writer))
            }
        };
        Ok(Self {
            name,
            table,
            output,
            rows: 0,
        })
    }

    /// Renders and writes one chunk.
    ///
    /// # Errors
    /// A value the format cannot hold, I/O errors.
    ///
    /// # Panics
    /// If the rows are of another table than the writer's: a bug of the caller.
    pub fn write<R: TableRows>(&mut self, rows: &R) -> Result<(), LoadError> {
        assert_eq!(
            R::TABLE,
            self.table,
            "rows written to another table's writer"
        );
        let format = match self.output {
            Output::Jsonl(_) => Format::Jsonl,
            Output::Parquet(_) => Format::Parquet,
        };
        let rendered = render(rows, format).map_err(|message| self.error(message))?;
        self.write_rendered(rendered)
    }

    /// Writes a chunk rendered by [`render`] for this writer's format and table.
    ///
    /// # Errors
    /// I/O errors, a chunk rendered for the other format.
    pub fn write_rendered(&mut self, rendered: Rendered) -> Result<(), LoadError> {
        match (&mut self.output, rendered) {
            (Output::Jsonl(out), Rendered::Jsonl(bytes)) => {
                out.write_all(&bytes)
                    .map_err(|e| LoadError::io(self.name.clone(), e))?;
                self.rows += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            }
            (Output::Parquet(writer), Rendered::Parquet(batch)) => {
                writer.write(&batch).map_err(|e| {
                    LoadError::file(self.name.clone(), format!("writing Parquet: {e}"))
                })?;
                self.rows += batch.num_rows() as u64;
            }
            _ => return Err(self.error("chunk rendered for the other format".to_string())),
        }
        Ok(())
    }

    /// The file's path, as given to [`TableWriter::create`].
    pub fn name(&self) -> &str {
        &self.name
    }

    fn error(&self, message: String) -> LoadError {
        LoadError::file(self.name.clone(), message)
    }

    /// Flushes and closes the file, returning the number of rows written.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish(self) -> Result<u64, LoadError> {
        match self.output {
            Output::Jsonl(out) => {
                out.into_inner()
                    .map_err(|e| LoadError::io(self.name.clone(), e.into_error()))?;
            }
            Output::Parquet(writer) => {
                writer.close().map_err(|e| {
                    LoadError::file(self.name.clone(), format!("finishing Parquet: {e}"))
                })?;
            }
        }
        Ok(self.rows)
    }
}
