//! A synthetic model with real structure (clusters of customers, categories of products, lists
//! and big grids), deterministic from a seed: written as a model folder ([`write_model`],
//! [`write_model_parts`]) or fed straight to a sink ([`generate_into`]). For one spec, every
//! path gives the same rows in the same order, so the same model.
//!
//! Rows are generated in chunks on worker threads and consumed in order on the calling thread
//! (see `pipeline`); see `world` for the structure.

mod pipeline;
mod world;

use crate::error::LoadError;
use crate::manifest::{MANIFEST_FILE, Manifest};
use crate::rows::{CustomerRows, Feeder, PoolRows, ProductRows};
use crate::source::{SourceFiles, Table};
use crate::write::{self, Format, Rendered, TableRows, TableWriter};
use arrow_array::RecordBatch;
use scoregrid_shard::{
    BuiltModel, DIM_MAX, ModelBuilder, ModelLayout, ModelSink, ModelVersion, PartitionCount,
};
use std::path::Path;
use world::World;

/// Most categories a synthetic model may have: the centres take `categories * dim` floats.
pub const CATEGORIES_MAX: u32 = 1 << 16;

/// Most customers (and containers): a row number must fit a [`scoregrid_shard::RowRef`].
pub const CUSTOMERS_MAX: u64 = crate::source::ROWS_PER_FILE_MAX;

/// Most products: the builder numbers products with u32.
pub const PRODUCTS_MAX: u64 = u32::MAX as u64 - 1;

/// Vector values per generated chunk of customers or products (a chunk is at most 8192 rows).
const CHUNK_VALUES_MAX: usize = 1 << 19;
const CHUNK_ROWS_MAX: u64 = 8192;

/// Pool entries per generated chunk of containers, at most (for the largest pools).
const CHUNK_POOL_ENTRIES_MAX: u64 = 1 << 18;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthSpec {
    pub customers: u64,
    pub products: u64,
    pub containers: u64,
    pub dim: usize,
    /// Number of product categories, `1..=CATEGORIES_MAX`.
    pub categories: u32,
    /// Every pool's size (capped by the product count); `None` for the realistic mix of lists
    /// of 20-100 and, one in five, grids of 1,000-20,000.
    pub pool_products: Option<u32>,
    pub seed: u64,
    pub version: String,
}

impl Default for SynthSpec {
    fn default() -> Self {
        Self {
            customers: 10_000,
            products: 5_000,
            containers: 200,
            dim: 64,
            categories: 50,
            pool_products: None,
            seed: 1,
            version: "synthetic-1".to_string(),
        }
    }
}

impl SynthSpec {
    /// # Errors
    /// `LoadError::Argument` naming the field out of range.
    pub fn validate(&self) -> Result<Manifest, LoadError> {
        let bad = |name, message: String| Err(LoadError::Argument { name, message });
        if !(1..=DIM_MAX).contains(&self.dim) {
            return bad("dim", format!("must be 1..={DIM_MAX}, found {}", self.dim));
        }
        if !(1..=CATEGORIES_MAX).contains(&self.categories) {
            return bad(
                "categories",
                format!("must be 1..={CATEGORIES_MAX}, found {}", self.categories),
            );
        }
        if self.customers > CUSTOMERS_MAX {
            return bad(
                "customers",
                format!("must be at most {CUSTOMERS_MAX}, found {}", self.customers),
            );
        }
        if self.containers > CUSTOMERS_MAX {
            return bad(
                "containers",
                format!("must be at most {CUSTOMERS_MAX}, found {}", self.containers),
            );
        }
        if self.products > PRODUCTS_MAX {
            return bad(
                "products",
                format!("must be at most {PRODUCTS_MAX}, found {}", self.products),
            );
        }
        if self.pool_products == Some(0) {
            return bad("pool_products", "must be at least 1".to_string());
        }
        let version = ModelVersion::new(&self.version).map_err(|message| LoadError::Argument {
            name: "version",
            message,
        })?;
        Ok(Manifest {
            version,
            dim: self.dim,
        })
    }

    fn vector_chunk_rows(&self) -> u64 {
        ((CHUNK_VALUES_MAX / self.dim) as u64).clamp(1, CHUNK_ROWS_MAX)
    }

    fn pool_chunk_containers(&self) -> u64 {
        let largest = self
            .pool_products
            .map_or(world::GRID_PRODUCTS_MAX, u64::from);
        (CHUNK_POOL_ENTRIES_MAX / largest.min(self.products).max(1)).clamp(1, 256)
    }
}

/// What was generated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthSummary {
    pub manifest: Manifest,
    pub customers: u64,
    pub products: u64,
    /// Containers with at least one pool entry (all of them unless there are no products).
    pub containers: u64,
    pub pool_entries: u64,
}

/// `0..total` cut into chunks of `size`.
fn chunk_range(chunk: u64, size: u64, total: u64) -> std::ops::Range<u64> {
    let start = chunk * size;
    start..(start + size).min(total)
}

fn chunk_count(total: u64, size: u64) -> u64 {
    total.div_ceil(size)
}

/// A generated chunk of one table, after the worker-side preparation.
enum Chunk<C, P, Q> {
    Customers(C),
    Products(P),
    Pools(Q),
}

/// Generates the three tables in load order (customers, products, pools): chunks are made and
/// `prepare`d on worker threads (rendering, for the writers), then `consume`d in order on the
/// calling thread.
fn generate<C: Send, P: Send, Q: Send, E>(
    spec: &SynthSpec,
    world: &World,
    prepare_customers: impl Fn(CustomerRows) -> C + Sync,
    prepare_products: impl Fn(ProductRows) -> P + Sync,
    prepare_pools: impl Fn(PoolRows) -> Q + Sync,
    mut consume: impl FnMut(Chunk<C, P, Q>) -> Result<(), E>,
) -> Result<(), E> {
    let rows = spec.vector_chunk_rows();
    pipeline::ordered(
        chunk_count(spec.customers, rows),
        |c| {
            Chunk::Customers(prepare_customers(world.customers(chunk_range(
                c,
                rows,
                spec.customers,
            ))))
        },
        &mut consume,
    )?;
    pipeline::ordered(
        chunk_count(spec.products, rows),
        |c| {
            Chunk::Products(prepare_products(world.products(chunk_range(
                c,
                rows,
                spec.products,
            ))))
        },
        &mut consume,
    )?;
    let containers = spec.pool_chunk_containers();
    pipeline::ordered(
        chunk_count(spec.containers, containers),
        |c| {
            Chunk::Pools(prepare_pools(world.pools(chunk_range(
                c,
                containers,
                spec.containers,
            ))))
        },
        &mut consume,
    )
}

/// Containers with entries, counted from chunks that hold each container's entries together.
fn distinct_containers(rows: &PoolRows) -> u64 {
    rows.containers.chunk_by(|a, b| a == b).count() as u64
}

/// Feeds the synthetic model's rows to `sink`, in load order (customers, products, pools).
/// Origins are rows of the pseudo-files "synthetic customers", "synthetic products" and
/// "synthetic pools".
///
/// # Errors
/// A bad spec, or a row the sink refuses (a sink whose dim differs from the spec's).
pub fn generate_into(
    spec: &SynthSpec,
    sink: &mut impl ModelSink,
) -> Result<SynthSummary, LoadError> {
    let manifest = spec.validate()?;
    let world = World::new(spec);
    let files = SourceFiles::synthetic();
    let feeder = |table: Table| Feeder {
        files: &files,
        file: SourceFiles::synthetic_index(table),
        next_row: 1,
    };
    let (mut customers, mut products, mut pools) = (
        feeder(Table::Customers),
        feeder(Table::Products),
        feeder(Table::Pools),
    );
    let mut scratch = Vec::new();
    let mut containers = 0;
    generate(
        spec,
        &world,
        |rows| rows,
        |rows| rows,
        |rows| rows,
        |chunk| match chunk {
            Chunk::Customers(rows) => customers.customers(&rows, sink, &mut scratch),
            Chunk::Products(rows) => products.products(&rows, sink),
            Chunk::Pools(rows) => {
                containers += distinct_containers(&rows);
                pools.pools(&rows, sink)
            }
        },
    )?;
    Ok(SynthSummary {
        manifest,
        customers: customers.next_row - 1,
        products: products.next_row - 1,
        containers,
        pool_entries: pools.next_row - 1,
    })
}

/// Generates the model and builds its partitions and directory, as
/// [`crate::load::build_model`] would from the written folder.
///
/// # Errors
/// A bad spec or a `segment_products_max` the builder does not take.
pub fn build_model(
    spec: &SynthSpec,
    partitions: PartitionCount,
    segment_products_max: u32,
) -> Result<(SynthSummary, BuiltModel), LoadError> {
    crate::load::check_segment_products_max(segment_products_max)?;
    let manifest = spec.validate()?;
    let mut builder = ModelBuilder::new(ModelLayout {
        version: manifest.version,
        dim: manifest.dim,
        partitions,
        segment_products_max,
    });
    let summary = generate_into(spec, &mut builder)?;
    let built = builder
        .finish()
        .map_err(|e| SourceFiles::synthetic().locate_error(e))?;
    Ok((summary, built))
}

/// Refuses to write into a folder that already holds a model (or part of one): mixing two
/// models' tables would be ambiguous or silently wrong.
fn prepare_out_dir(out_dir: &Path) -> Result<(), LoadError> {
    let name = out_dir.display().to_string();
    std::fs::create_dir_all(out_dir).map_err(|e| LoadError::io(name.clone(), e))?;
    let mut existing = vec![MANIFEST_FILE.to_string()];
    for table in Table::ALL {
        for form in ["jsonl", "parquet"] {
            existing.push(format!("{}.{form}", table.name()));
        }
        existing.push(table.name().to_string());
    }
    for entry in existing {
        if out_dir.join(&entry).exists() {
            return Err(LoadError::file(
                format!("{name}/{entry}"),
                "already exists; write a synthetic model into an empty or new folder",
            ));
        }
    }
    Ok(())
}

/// Writes the manifest last (through a temporary name), so that a folder whose writing failed
/// half way is never a loadable model.
fn write_manifest(out_dir: &Path, manifest: &Manifest) -> Result<(), LoadError> {
    let temporary = out_dir.join(format!(".{MANIFEST_FILE}.tmp"));
    std::fs::write(&temporary, manifest.to_json()).map_err(|e| LoadError::io(MANIFEST_FILE, e))?;
    std::fs::rename(&temporary, out_dir.join(MANIFEST_FILE))
        .map_err(|e| LoadError::io(MANIFEST_FILE, e))
}

/// Writes the synthetic model into `out_dir` (created if missing; it must not hold a model) as
/// `manifest.json` and one file per table (`customers.jsonl` or `customers.parquet`, ...).
///
/// # Errors
/// A bad spec, an `out_dir` that already holds model files, I/O errors.
pub fn write_model(
    spec: &SynthSpec,
    out_dir: &Path,
    format: Format,
) -> Result<SynthSummary, LoadError> {
    let manifest = spec.validate()?;
    prepare_out_dir(out_dir)?;
    let world = World::new(spec);
    let create = |table: Table| {
        let path = out_dir.join(format!("{}.{}", table.name(), format.extension()));
        TableWriter::create(&path, table, format)
    };
    let mut customers = create(Table::Customers)?;
    let mut products = create(Table::Products)?;
    let mut pools = create(Table::Pools)?;
    let mut containers = 0;
    let write = |writer: &mut TableWriter, rendered: Result<Rendered, String>| {
        let rendered = rendered.map_err(|message| LoadError::file(writer.name(), message))?;
        writer.write_rendered(rendered)
    };
    generate(
        spec,
        &world,
        |rows| write::render(&rows, format),
        |rows| write::render(&rows, format),
        |rows| (distinct_containers(&rows), write::render(&rows, format)),
        |chunk| match chunk {
            Chunk::Customers(rendered) => write(&mut customers, rendered),
            Chunk::Products(rendered) => write(&mut products, rendered),
            Chunk::Pools((count, rendered)) => {
                containers += count;
                write(&mut pools, rendered)
            }
        },
    )?;
    let summary = SynthSummary {
        manifest: manifest.clone(),
        customers: customers.finish()?,
        products: products.finish()?,
        containers,
        pool_entries: pools.finish()?,
    };
    write_manifest(out_dir, &manifest)?;
    Ok(summary)
}

/// Writes the synthetic model as Spark would: a folder per table of Parquet part files
/// (`customers/part-00000.parquet`, ...) of at most `rows_per_part` rows each, with an empty
/// `_SUCCESS` marker.
///
/// # Errors
/// As [`write_model`]; also a zero `rows_per_part`.
pub fn write_model_parts(
    spec: &SynthSpec,
    out_dir: &Path,
    rows_per_part: u64,
) -> Result<SynthSummary, LoadError> {
    if rows_per_part == 0 {
        return Err(LoadError::Argument {
            name: "rows_per_part",
            message: "must be at least 1".to_string(),
        });
    }
    let manifest = spec.validate()?;
    prepare_out_dir(out_dir)?;
    let world = World::new(spec);
    let mut customers = PartWriter::new(out_dir, Table::Customers, rows_per_part)?;
    let mut products = PartWriter::new(out_dir, Table::Products, rows_per_part)?;
    let mut pools = PartWriter::new(out_dir, Table::Pools, rows_per_part)?;
    let mut containers = 0;
    let batch =
        |rows: Result<RecordBatch, arrow_schema::ArrowError>| rows.map_err(|e| e.to_string());
    generate(
        spec,
        &world,
        |rows| batch(rows.to_record_batch()),
        |rows| batch(rows.to_record_batch()),
        |rows| (distinct_containers(&rows), batch(rows.to_record_batch())),
        |chunk| match chunk {
            Chunk::Customers(batch) => customers.write(batch),
            Chunk::Products(batch) => products.write(batch),
            Chunk::Pools((count, batch)) => {
                containers += count;
                pools.write(batch)
            }
        },
    )?;
    let summary = SynthSummary {
        manifest: manifest.clone(),
        customers: customers.finish()?,
        products: products.finish()?,
        containers,
        pool_entries: pools.finish()?,
    };
    write_manifest(out_dir, &manifest)?;
    Ok(summary)
}

/// Writes one table as numbered part files, starting a new part every `rows_per_part` rows.
struct PartWriter<'d> {
    folder: std::path::PathBuf,
    name: &'d str,
    table: Table,
    rows_per_part: u64,
    current: Option<(TableWriter, u64)>,
    parts: u32,
    rows: u64,
}

impl<'d> PartWriter<'d> {
    fn new(out_dir: &'d Path, table: Table, rows_per_part: u64) -> Result<Self, LoadError> {
        let folder = out_dir.join(table.name());
        std::fs::create_dir(&folder).map_err(|e| LoadError::io(format!("{}/", table.name()), e))?;
        Ok(Self {
            folder,
            name: table.name(),
            table,
            rows_per_part,
            current: None,
            parts: 0,
            rows: 0,
        })
    }

    fn write(&mut self, batch: Result<RecordBatch, String>) -> Result<(), LoadError> {
        let mut batch =
            batch.map_err(|message| LoadError::file(format!("{}/", self.name), message))?;
        while batch.num_rows() > 0 {
            let (writer, rows_in_part) = match &mut self.current {
                Some(current) => current,
                None => {
                    let path = self.folder.join(format!("part-{:05}.parquet", self.parts));
                    self.parts += 1;
                    self.current
                        .insert((TableWriter::create(&path, self.table, Format::Parquet)?, 0))
                }
            };
            let room = (self.rows_per_part - *rows_in_part).min(batch.num_rows() as u64) as usize;
            writer.write_rendered(Rendered::Parquet(batch.slice(0, room)))?;
            *rows_in_part += room as u64;
            self.rows += room as u64;
            batch = batch.slice(room, batch.num_rows() - room);
            if *rows_in_part == self.rows_per_part
                && let Some((full, _)) = self.current.take()
            {
                full.finish()?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<u64, LoadError> {
        if let Some((writer, _)) = self.current.take() {
            writer.finish()?;
        }
        if self.parts == 0 {
            // An empty table is still a table: one part with no rows.
            let path = self.folder.join("part-00000.parquet");
            TableWriter::create(&path, self.table, Format::Parquet)?.finish()?;
        }
        let marker = self.folder.join("_SUCCESS");
        std::fs::write(&marker, b"")
            .map_err(|e| LoadError::io(format!("{}/_SUCCESS", self.name), e))?;
        Ok(self.rows)
    }
}
