//! Parquet tables (a single file or the part files of a Spark folder), read in bounded batches.
//!
//! Columns are found by name and read in place: ids from their value buffers (signed columns as
//! the same bits), list columns as one flat values slice plus offsets, so no row allocates.
//! Columns other than the table's are not read (a projection), so Spark's extra columns cost
//! nothing.

use crate::error::LoadError;
use crate::source::{FileIndex, SourceFiles};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, new_empty_array};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use scoregrid_shard::{CategoryId, ModelSink};
use std::fs::File;
use std::ops::Range;

/// Most rows decoded at once.
pub const BATCH_ROWS_MAX: usize = 8192;

/// Most vector values decoded at once: with `BATCH_ROWS_MAX` this caps a batch's vectors at
/// 16 MiB as f32 (32 MiB as f64) whatever the dim; at dim 1024 a batch holds 4096 rows.
pub const BATCH_VALUES_MAX: usize = 4 << 20;

const _: () = assert!(
    BATCH_VALUES_MAX >= scoregrid_shard::DIM_MAX,
    "a batch must hold a row"
);

/// Rows per batch for vectors of `dim` values.
fn batch_rows(dim: usize) -> usize {
    (BATCH_VALUES_MAX / dim.max(1)).clamp(1, BATCH_ROWS_MAX)
}

/// The column types the loader reads, each accepting the physical forms Spark and Arrow write.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ColumnType {
    Id,
    CategoryId,
    Bool,
    Float,
    FloatList,
    CategoryList,
}

impl ColumnType {
    fn expected(self) -> &'static str {
        match self {
            ColumnType::Id => "UInt64 or Int64",
            ColumnType::CategoryId => "UInt32 or Int32",
            ColumnType::Bool => "Boolean",
            ColumnType::Float => "Float32 or Float64",
            ColumnType::FloatList => "a list of Float32 or Float64",
            ColumnType::CategoryList => {
                "a list of struct {category_id: UInt32 or Int32, weight: Float32 or Float64}"
            }
        }
    }

    fn accepts(self, data_type: &DataType) -> bool {
        let empty = new_empty_array(data_type);
        let array = empty.as_ref();
        match self {
            ColumnType::Id => Ids::new(array).is_some(),
            ColumnType::CategoryId => CategoryIds::new(array).is_some(),
            ColumnType::Bool => array.as_boolean_opt().is_some(),
            ColumnType::Float => Floats::new(array).is_some(),
            ColumnType::FloatList => FloatLists::new(array).is_some(),
            ColumnType::CategoryList => CategoryLists::new(array).is_some(),
        }
    }
}

/// An id column: `UInt64`, or `Int64` read as the same bits.
pub(crate) enum Ids<'a> {
    Unsigned(&'a [u64]),
    Signed(&'a [i64]),
}

impl<'a> Ids<'a> {
    fn new(array: &'a dyn Array) -> Option<Self> {
        if let Some(a) = array.as_primitive_opt::<UInt64Type>() {
            Some(Ids::Unsigned(a.values()))
        } else {
            array
                .as_primitive_opt::<Int64Type>()
                .map(|a| Ids::Signed(a.values()))
        }
    }

    fn get(&self, row: usize) -> u64 {
        match self {
            Ids::Unsigned(values) => values[row],
            Ids::Signed(values) => values[row] as u64,
        }
    }
}

/// A category id column: `UInt32`, or `Int32` read as the same bits.
enum CategoryIds<'a> {
    Unsigned(&'a [u32]),
    Signed(&'a [i32]),
}

impl<'a> CategoryIds<'a> {
    fn new(array: &'a dyn Array) -> Option<Self> {
        if let Some(a) = array.as_primitive_opt::<UInt32Type>() {
            Some(CategoryIds::Unsigned(a.values()))
        } else {
            array
                .as_primitive_opt::<Int32Type>()
                .map(|a| CategoryIds::Signed(a.values()))
        }
    }

    fn get(&self, index: usize) -> CategoryId {
        match self {
            CategoryIds::Unsigned(values) => values[index],
            CategoryIds::Signed(values) => values[index] as u32,
        }
    }
}

/// A float column, `Float32` or `Float64` (narrowed to f32, rounding to nearest).
enum Floats<'a> {
    Single(&'a [f32]),
    Double(&'a [f64]),
}

impl<'a> Floats<'a> {
    fn new(array: &'a dyn Array) -> Option<Self> {
        if let Some(a) = array.as_primitive_opt::<Float32Type>() {
            Some(Floats::Single(a.values()))
        } else {
            array
                .as_primitive_opt::<Float64Type>()
                .map(|a| Floats::Double(a.values()))
        }
    }

    fn get(&self, index: usize) -> f32 {
        match self {
            Floats::Single(values) => values[index],
            Floats::Double(values) => values[index] as f32,
        }
    }
}

/// The offsets of a `List` (i32) or `LargeList` (i64) column.
enum Offsets<'a> {
    Small(&'a [i32]),
    Large(&'a [i64]),
}

impl Offsets<'_> {
    /// The range of `row`'s elements in the values. Offsets of a valid array are non-negative
    /// and non-decreasing (arrow checks when it decodes).
    fn range(&self, row: usize) -> Range<usize> {
        match self {
            Offsets::Small(o) => o[row] as usize..o[row + 1] as usize,
            Offsets::Large(o) => o[row] as usize..o[row + 1] as usize,
        }
    }
}

/// A list column's offsets and values, whichever list type it is.
fn list_parts(array: &dyn Array) -> Option<(Offsets<'_>, &ArrayRef)> {
    if let Some(list) = array.as_list_opt::<i32>() {
        Some((Offsets::Small(list.value_offsets()), list.values()))
    } else {
        array
            .as_list_opt::<i64>()
            .map(|list| (Offsets::Large(list.value_offsets()), list.values()))
    }
}

/// A list-of-floats column (`vector`).
struct FloatLists<'a> {
    offsets: Offsets<'a>,
    values: Floats<'a>,
}

impl<'a> FloatLists<'a> {
    fn new(array: &'a dyn Array) -> Option<Self> {
        let (offsets, values) = list_parts(array)?;
        Some(Self {
            offsets,
            values: Floats::new(values.as_ref())?,
        })
    }

    /// `row`'s values: a slice of the column when it is f32, else narrowed into `scratch`.
    fn row<'s>(&'s self, row: usize, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        let range = self.offsets.range(row);
        match &self.values {
            Floats::Single(values) => &values[range],
            Floats::Double(values) => {
                scratch.clear();
                scratch.extend(values[range].iter().map(|&v| v as f32));
                scratch
            }
        }
    }
}

/// A `categories` column: list of struct {category_id, weight}.
struct CategoryLists<'a> {
    offsets: Offsets<'a>,
    ids: CategoryIds<'a>,
    weights: Floats<'a>,
}

impl<'a> CategoryLists<'a> {
    fn new(array: &'a dyn Array) -> Option<Self> {
        let (offsets, values) = list_parts(array)?;
        let entries = values.as_struct_opt()?;
        Some(Self {
            offsets,
            ids: CategoryIds::new(entries.column_by_name("category_id")?.as_ref())?,
            weights: Floats::new(entries.column_by_name("weight")?.as_ref())?,
        })
    }

    fn row_into(&self, row: usize, out: &mut Vec<(CategoryId, f32)>) {
        out.clear();
        out.extend(
            self.offsets
                .range(row)
                .map(|i| (self.ids.get(i), self.weights.get(i))),
        );
    }
}

/// Whether `array` or anything below it has a null slot (maybe one no row refers to).
fn has_nulls_deep(array: &dyn Array) -> bool {
    if array.null_count() > 0 {
        return true;
    }
    if let Some((_, values)) = list_parts(array) {
        return has_nulls_deep(values.as_ref());
    }
    if let Some(entries) = array.as_struct_opt() {
        return entries.columns().iter().any(|c| has_nulls_deep(c.as_ref()));
    }
    false
}

/// The path below `array[index]` to its first null (`""` for the slot itself, `[2].weight`
/// inside a list of structs), or `None`.
fn null_path(array: &dyn Array, index: usize) -> Option<String> {
    if array.is_null(index) {
        return Some(String::new());
    }
    if let Some((offsets, values)) = list_parts(array) {
        let range = offsets.range(index);
        let start = range.start;
        return range.into_iter().find_map(|k| {
            null_path(values.as_ref(), k).map(|path| format!("[{}]{path}", k - start))
        });
    }
    if let Some(entries) = array.as_struct_opt() {
        return entries
            .fields()
            .iter()
            .zip(entries.columns())
            .find_map(|(field, column)| {
                null_path(column.as_ref(), index).map(|path| format!(".{}{path}", field.name()))
            });
    }
    None
}

/// The first row holding a null in `array`, with the path to it.
fn first_null(array: &dyn Array) -> Option<(usize, String)> {
    if !has_nulls_deep(array) {
        return None;
    }
    (0..array.len()).find_map(|row| null_path(array, row).map(|path| (row, path)))
}

/// An open Parquet file of one table, projected to that table's columns.
struct ParquetTable<'f> {
    files: &'f SourceFiles,
    file: FileIndex,
    columns: &'static [(&'static str, ColumnType)],
    reader: ParquetRecordBatchReader,
}

impl<'f> ParquetTable<'f> {
    /// Opens `file` and checks that each of `columns` is present with a type it can read.
    fn open(
        files: &'f SourceFiles,
        file: FileIndex,
        columns: &'static [(&'static str, ColumnType)],
        batch_rows: usize,
    ) -> Result<Self, LoadError> {
        let name = files.name(file);
        let handle = File::open(files.path(file)).map_err(|e| LoadError::io(name, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(handle).map_err(|e| {
            LoadError::file(
                name,
                format!("not a readable Parquet file (truncated or corrupt?): {e}"),
            )
        })?;
        let schema = builder.schema().clone();
        let mut roots = Vec::with_capacity(columns.len());
        for &(column, column_type) in columns {
            let column_error = |message: String| LoadError::Column {
                path: name.to_string(),
                column: column.to_string(),
                message,
            };
            let Some(index) = schema.fields().iter().position(|f| f.name() == column) else {
                let found: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(column_error(format!(
                    "missing (the file has: {})",
                    found.join(", ")
                )));
            };
            let data_type = schema.field(index).data_type();
            if !column_type.accepts(data_type) {
                return Err(column_error(format!(
                    "expected {}, found {data_type}",
                    column_type.expected()
                )));
            }
            roots.push(index);
        }
        let projection = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(projection)
            .with_batch_size(batch_rows)
            .build()
            .map_err(|e| LoadError::file(name, format!("cannot read Parquet: {e}")))?;
        Ok(Self {
            files,
            file,
            columns,
            reader,
        })
    }

    /// Calls `on_batch` with each batch and the number of rows before it, after refusing nulls.
    fn for_each_batch(
        self,
        mut on_batch: impl FnMut(&RecordBatch, u64) -> Result<(), LoadError>,
    ) -> Result<u64, LoadError> {
        let name = self.files.name(self.file);
        let mut rows: u64 = 0;
        for batch in self.reader {
            let batch = batch.map_err(|e| {
                LoadError::file(name, format!("cannot decode the Parquet data after row {rows} (corrupt, or a codec this build lacks?): {e}"))
            })?;
            // Checked before the rows are handed on, so every row number fits a RowRef.
            self.files
                .row_ref(self.file, rows + batch.num_rows() as u64)?;
            for &(column, _) in self.columns {
                let array = column_of(&batch, name, column)?;
                if let Some((row, path)) = first_null(array.as_ref()) {
                    let location = self.files.location(self.file, rows + row as u64 + 1);
                    return Err(LoadError::field(
                        location,
                        format!("{column}{path}"),
                        "null value",
                    ));
                }
            }
            on_batch(&batch, rows)?;
            rows += batch.num_rows() as u64;
        }
        Ok(rows)
    }
}

fn column_of<'b>(
    batch: &'b RecordBatch,
    path: &str,
    column: &str,
) -> Result<&'b ArrayRef, LoadError> {
    batch
        .column_by_name(column)
        .ok_or_else(|| LoadError::Column {
            path: path.to_string(),
            column: column.to_string(),
            message: "missing from a batch".to_string(),
        })
}

/// A typed view of a column whose type `ParquetTable::open` checked.
fn view<'b, V>(
    batch: &'b RecordBatch,
    path: &str,
    column: &str,
    new: impl FnOnce(&'b dyn Array) -> Option<V>,
) -> Result<V, LoadError> {
    let array = column_of(batch, path, column)?;
    new(array.as_ref()).ok_or_else(|| LoadError::Column {
        path: path.to_string(),
        column: column.to_string(),
        message: format!("unexpected type {} in a batch", array.data_type()),
    })
}

const CUSTOMER_COLUMNS: &[(&str, ColumnType)] = &[
    ("customer_id", ColumnType::Id),
    ("vector", ColumnType::FloatList),
    ("categories", ColumnType::CategoryList),
];

const PRODUCT_COLUMNS: &[(&str, ColumnType)] = &[
    ("product_id", ColumnType::Id),
    ("category_id", ColumnType::CategoryId),
    ("vector", ColumnType::FloatList),
    ("in_stock", ColumnType::Bool),
];

const POOL_COLUMNS: &[(&str, ColumnType)] = &[
    ("container_id", ColumnType::Id),
    ("product_id", ColumnType::Id),
    ("pool_score", ColumnType::Float),
];

/// Streams a `customers` Parquet file into `sink`, returning its row count.
///
/// # Errors
/// An unreadable file, a missing or mistyped column, a null, or the first refused row, located.
pub(crate) fn read_customers(
    files: &SourceFiles,
    file: FileIndex,
    dim: usize,
    sink: &mut impl ModelSink,
) -> Result<u64, LoadError> {
    let name = files.name(file);
    let mut scratch = Vec::new();
    let mut categories = Vec::new();
    ParquetTable::open(files, file, CUSTOMER_COLUMNS, batch_rows(dim))?.for_each_batch(
        |batch, before| {
            let ids = view(batch, name, "customer_id", Ids::new)?;
            let vectors = view(batch, name, "vector", FloatLists::new)?;
            let category_lists = view(batch, name, "categories", CategoryLists::new)?;
            for row in 0..batch.num_rows() {
                let origin = files.row_ref(file, before + row as u64 + 1)?;
                category_lists.row_into(row, &mut categories);
                sink.add_customer(
                    ids.get(row),
                    vectors.row(row, &mut scratch),
                    &categories,
                    origin,
                )
                .map_err(|e| files.rejected(origin, e))?;
            }
            Ok(())
        },
    )
}

/// Streams a `products` Parquet file into `sink`, returning its row count.
///
/// # Errors
/// As [`read_customers`].
pub(crate) fn read_products(
    files: &SourceFiles,
    file: FileIndex,
    dim: usize,
    sink: &mut impl ModelSink,
) -> Result<u64, LoadError> {
    let name = files.name(file);
    let mut scratch = Vec::new();
    ParquetTable::open(files, file, PRODUCT_COLUMNS, batch_rows(dim))?.for_each_batch(
        |batch, before| {
            let ids = view(batch, name, "product_id", Ids::new)?;
            let categories = view(batch, name, "category_id", CategoryIds::new)?;
            let vectors = view(batch, name, "vector", FloatLists::new)?;
            let in_stock: &BooleanArray = view(batch, name, "in_stock", |a| a.as_boolean_opt())?;
            for row in 0..batch.num_rows() {
                let origin = files.row_ref(file, before + row as u64 + 1)?;
                sink.add_product(
                    ids.get(row),
                    categories.get(row),
                    vectors.row(row, &mut scratch),
                    in_stock.value(row),
                    origin,
                )
                .map_err(|e| files.rejected(origin, e))?;
            }
            Ok(())
        },
    )
}

/// Streams a `pools` Parquet file into `sink`, returning its row count.
///
/// # Errors
/// As [`read_customers`].
pub(crate) fn read_pools(
    files: &SourceFiles,
    file: FileIndex,
    sink: &mut impl ModelSink,
) -> Result<u64, LoadError> {
    let name = files.name(file);
    ParquetTable::open(files, file, POOL_COLUMNS, BATCH_ROWS_MAX)?.for_each_batch(
        |batch, before| {
            let containers = view(batch, name, "container_id", Ids::new)?;
            let products = view(batch, name, "product_id", Ids::new)?;
            let scores = view(batch, name, "pool_score", Floats::new)?;
            for row in 0..batch.num_rows() {
                let origin = files.row_ref(file, before + row as u64 + 1)?;
                sink.add_pool_entry(
                    containers.get(row),
                    products.get(row),
                    scores.get(row),
                    origin,
                )
                .map_err(|e| files.rejected(origin, e))?;
            }
            Ok(())
        },
    )
}

const CUSTOMER_ID_COLUMN: &[(&str, ColumnType)] = &[("customer_id", ColumnType::Id)];
const CONTAINER_ID_COLUMN: &[(&str, ColumnType)] = &[("container_id", ColumnType::Id)];

/// Calls `on_id` with every id of one id column (`customer_id` or `container_id`), reading no
/// other column.
///
/// # Errors
/// An unreadable file, a missing or mistyped column, a null.
pub(crate) fn read_ids(
    files: &SourceFiles,
    file: FileIndex,
    column: &str,
    mut on_id: impl FnMut(u64),
) -> Result<u64, LoadError> {
    let name = files.name(file);
    let columns = if column == "customer_id" {
        CUSTOMER_ID_COLUMN
    } else {
        CONTAINER_ID_COLUMN
    };
    ParquetTable::open(files, file, columns, BATCH_ROWS_MAX)?.for_each_batch(|batch, _| {
        let ids = view(batch, name, columns[0].0, Ids::new)?;
        (0..batch.num_rows()).for_each(|row| on_id(ids.get(row)));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::{Float64Builder, ListBuilder};
    use arrow_schema::{Field, Fields};
    use std::sync::Arc;

    #[test]
    fn accepted_types_follow_the_contract() {
        // Proves which physical types each column accepts: unsigned and signed ids, f32 and f64
        // vectors in List or LargeList, and nothing else.
        let list = |t: DataType| DataType::List(Arc::new(Field::new("element", t, true)));
        let large = |t: DataType| DataType::LargeList(Arc::new(Field::new("element", t, true)));
        assert!(ColumnType::Id.accepts(&DataType::UInt64));
        assert!(ColumnType::Id.accepts(&DataType::Int64));
        assert!(!ColumnType::Id.accepts(&DataType::Utf8));
        assert!(!ColumnType::Id.accepts(&DataType::UInt32));
        assert!(ColumnType::CategoryId.accepts(&DataType::Int32));
        assert!(!ColumnType::CategoryId.accepts(&DataType::Int64));
        assert!(ColumnType::FloatList.accepts(&list(DataType::Float32)));
        assert!(ColumnType::FloatList.accepts(&large(DataType::Float64)));
        assert!(!ColumnType::FloatList.accepts(&list(DataType::Int32)));
        assert!(!ColumnType::FloatList.accepts(&DataType::Float32));
        let entry = |id: DataType, weight: DataType| {
            DataType::Struct(Fields::from(vec![
                Field::new("category_id", id, true),
                Field::new("weight", weight, true),
            ]))
        };
        assert!(ColumnType::CategoryList.accepts(&list(entry(DataType::Int32, DataType::Float64))));
        assert!(
            !ColumnType::CategoryList.accepts(&list(entry(DataType::Int64, DataType::Float64)))
        );
    }

    #[test]
    fn null_paths_point_inside_lists() {
        let mut builder = ListBuilder::new(Float64Builder::new());
        builder.values().append_value(1.0);
        builder.append(true);
        builder.values().append_value(1.0);
        builder.values().append_null();
        builder.append(true);
        let array = builder.finish();
        assert_eq!(first_null(&array), Some((1, "[1]".to_string())));
        let lists = FloatLists::new(&array).unwrap();
        let mut scratch = Vec::new();
        assert_eq!(lists.row(0, &mut scratch), &[1.0f32]);
    }
}
