//! The entry points: stream a model folder into a sink ([`load_model`]), or build its partitions
//! and directory ([`build_model`]).

use crate::columnar;
use crate::error::LoadError;
use crate::jsonl;
use crate::manifest::{Manifest, read_manifest};
use crate::source::{FileFormat, FileIndex, SourceFiles, Table};
use scoregrid_shard::{
    BuiltModel, ModelBuilder, ModelLayout, ModelSink, PartitionCount, SEGMENT_PRODUCTS_HARD_MAX,
};
use std::path::Path;
use std::time::Instant;

/// What a load read.
#[derive(Clone, Debug)]
pub struct LoadSummary {
    pub manifest: Manifest,
    /// Rows of the customers table.
    pub customers: u64,
    /// Rows of the products table.
    pub products: u64,
    /// Rows of the pools table.
    pub pool_entries: u64,
    /// The files read, to locate [`scoregrid_shard::RowRef`]s in later errors (see
    /// [`SourceFiles::locate_error`]).
    pub files: SourceFiles,
}

/// Reads the manifest, then the customers, products and pools tables (in that order, so pool
/// entries come after every product) into `sink`.
///
/// All three tables are found before any row is read, so a missing or ambiguous table fails
/// fast.
///
/// # Errors
/// The first problem found: the manifest, a missing or ambiguous table, an unreadable file, a
/// malformed row, or a row the sink refuses, each located by file, line or row, and field.
pub fn load_model(dir: &Path, sink: &mut impl ModelSink) -> Result<LoadSummary, LoadError> {
    let manifest = read_manifest(dir)?;
    let mut files = SourceFiles::default();
    let customers = files.add_table(dir, Table::Customers)?;
    let products = files.add_table(dir, Table::Products)?;
    let pools = files.add_table(dir, Table::Pools)?;
    let dim = manifest.dim;
    let customers = read_table(
        &files,
        Table::Customers,
        &customers,
        |files, file| match files.format(file) {
            FileFormat::Jsonl => jsonl::read_customers(files, file, sink),
            _ => columnar::read_customers(files, file, dim, sink),
        },
    )?;
    let products = read_table(
        &files,
        Table::Products,
        &products,
        |files, file| match files.format(file) {
            FileFormat::Jsonl => jsonl::read_products(files, file, sink),
            _ => columnar::read_products(files, file, dim, sink),
        },
    )?;
    let pool_entries = read_table(&files, Table::Pools, &pools, |files, file| {
        match files.format(file) {
            FileFormat::Jsonl => jsonl::read_pools(files, file, sink),
            _ => columnar::read_pools(files, file, sink),
        }
    })?;
    Ok(LoadSummary {
        manifest,
        customers,
        products,
        pool_entries,
        files,
    })
}

fn read_table(
    files: &SourceFiles,
    table: Table,
    list: &[FileIndex],
    mut read_file: impl FnMut(&SourceFiles, FileIndex) -> Result<u64, LoadError>,
) -> Result<u64, LoadError> {
    let started = Instant::now();
    let mut rows = 0;
    for &file in list {
        rows += read_file(files, file)?;
    }
    tracing::info!(
        table = table.name(),
        files = list.len(),
        rows,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "table loaded"
    );
    Ok(rows)
}

/// Reads the model in `dir` and builds its partitions and directory.
///
/// # Errors
/// As [`load_model`]; also a `segment_products_max` outside
/// `1..=SEGMENT_PRODUCTS_HARD_MAX`, and a container listing a product
/// twice, reported at the second entry with the first.
pub fn build_model(
    dir: &Path,
    partitions: PartitionCount,
    segment_products_max: u32,
) -> Result<(Manifest, BuiltModel), LoadError> {
    check_segment_products_max(segment_products_max)?;
    let manifest = read_manifest(dir)?;
    let mut builder = ModelBuilder::new(ModelLayout {
        version: manifest.version.clone(),
        dim: manifest.dim,
        partitions,
        segment_products_max,
    });
    let summary = load_model(dir, &mut builder)?;
    if summary.manifest != manifest {
        return Err(LoadError::file(
            crate::manifest::MANIFEST_FILE,
            "changed while the model was being read",
        ));
    }
    let started = Instant::now();
    let built = builder
        .finish()
        .map_err(|e| summary.files.locate_error(e))?;
    tracing::info!(
        version = %manifest.version,
        partitions = partitions.get(),
        containers = built.directory.containers.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "model built"
    );
    Ok((manifest, built))
}

/// # Errors
/// `LoadError::Argument` when `segment_products_max` is outside
/// `1..=SEGMENT_PRODUCTS_HARD_MAX` (the builder would panic on it).
pub(crate) fn check_segment_products_max(segment_products_max: u32) -> Result<(), LoadError> {
    if (1..=SEGMENT_PRODUCTS_HARD_MAX).contains(&segment_products_max) {
        return Ok(());
    }
    Err(LoadError::Argument {
        name: "segment_products_max",
        message: format!("must be 1..={SEGMENT_PRODUCTS_HARD_MAX}, found {segment_products_max}"),
    })
}
