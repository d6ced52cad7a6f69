//! A version built for a load without holding it in RAM: customers are spilled to disk while
//! the tables are read ([`scoregrid_shard::spill`]), then each partition is built, encoded and
//! written to a spool folder, one at a time; the push streams the files from there in pieces.
//! RAM holds the products, the pools' segments and one partition; disk holds the encoded
//! version once (its customers, briefly, twice). The spool folder is deleted when the
//! [`SpooledModel`] is dropped.

use crate::error::LoadError;
use crate::load::check_segment_products_max;
use crate::manifest::{MANIFEST_FILE, Manifest, read_manifest};
use scoregrid_shard::file::encode;
use scoregrid_shard::{Directory, FinishError, ModelBuilder, ModelLayout, PartitionCount};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One encoded partition file in the spool.
#[derive(Clone, Debug)]
pub struct SpooledFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub checksum: u32,
}

/// A built version in a spool folder (deleted on drop).
#[derive(Debug)]
pub struct SpooledModel {
    pub directory: Directory,
    /// Indexed by partition id.
    pub files: Vec<SpooledFile>,
    pub customers: u64,
    pub products: u64,
    folder: PathBuf,
}

impl Drop for SpooledModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// A spool folder being filled: rows go into its [`ModelBuilder`], then [`Spool::build`] writes
/// the partitions. Deleted on drop unless it became a [`SpooledModel`].
pub struct Spool {
    model: SpooledModel,
}

impl Spool {
    /// A new spool folder under `spool` for a version of `manifest`, and the builder to feed.
    ///
    /// # Errors
    /// A bad `segment_products_max`; the folder cannot be created.
    pub fn create(
        manifest: &Manifest,
        partitions: PartitionCount,
        segment_products_max: u32,
        spool: &Path,
    ) -> Result<(Self, ModelBuilder), LoadError> {
        check_segment_products_max(segment_products_max)?;
        let folder = spool.join(format!(
            "scoregrid-load-{}-{}",
            manifest.version,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::create_dir_all(&folder)
            .map_err(|e| LoadError::io(folder.display().to_string(), e))?;
        let model = SpooledModel {
            directory: Directory {
                version: manifest.version.clone(),
                dim: manifest.dim as u32,
                partitions,
                containers: Default::default(),
            },
            files: Vec::with_capacity(partitions.get() as usize),
            customers: 0,
            products: 0,
            folder,
        };
        let layout = ModelLayout {
            version: manifest.version.clone(),
            dim: manifest.dim,
            partitions,
            segment_products_max,
        };
        let builder = ModelBuilder::spilling(layout, &model.folder.join("spill"))
            .map_err(|error| LoadError::Model { error })?;
        Ok((Self { model }, builder))
    }

    /// Builds what `builder` was fed, partition by partition, into the spool; `locate` turns a
    /// build error into one that names the row.
    ///
    /// # Errors
    /// The model's refusals (located), the spool's I/O errors.
    pub fn build(
        self,
        builder: ModelBuilder,
        locate: impl FnOnce(scoregrid_shard::BuildError) -> LoadError,
    ) -> Result<SpooledModel, LoadError> {
        let Self { mut model } = self;
        let started = Instant::now();
        let (folder, files) = (model.folder.clone(), &mut model.files);
        let (mut customers, mut products) = (0u64, 0u64);
        let directory = builder
            .finish_each(|partition| {
                customers += partition.customers().len() as u64;
                products += partition.products().len() as u64;
                let id = partition.id();
                let encoded = encode(&partition);
                drop(partition);
                if id.index() != files.len() {
                    return Err(LoadError::file(
                        folder.display().to_string(),
                        format!("partition {id} built out of order"),
                    ));
                }
                let path = folder.join(format!("p{:05}.part", id.0));
                std::fs::write(&path, &encoded.bytes)
                    .map_err(|e| LoadError::io(path.display().to_string(), e))?;
                files.push(SpooledFile {
                    path,
                    bytes: encoded.bytes.len() as u64,
                    checksum: encoded.checksum,
                });
                Ok(())
            })
            .map_err(|error| match error {
                FinishError::Build(error) => locate(error),
                FinishError::Each(error) => error,
            })?;
        model.directory = directory;
        model.customers = customers;
        model.products = products;
        tracing::info!(
            version = %model.directory.version,
            partitions = model.files.len(),
            mib = model.files.iter().map(|f| f.bytes).sum::<u64>() / (1 << 20),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model built into the spool"
        );
        Ok(model)
    }
}

/// Reads the model in `dir` and builds it into a new folder under `spool` (see the module
/// docs).
///
/// # Errors
/// As [`crate::build_model`]; also the spool folder's I/O errors, named by path.
pub fn build_spooled(
    dir: &Path,
    partitions: PartitionCount,
    segment_products_max: u32,
    spool: &Path,
) -> Result<(Manifest, SpooledModel), LoadError> {
    let manifest = read_manifest(dir)?;
    let (spool, mut builder) = Spool::create(&manifest, partitions, segment_products_max, spool)?;
    let summary = crate::load::load_model(dir, &mut builder)?;
    if summary.manifest != manifest {
        return Err(LoadError::file(
            MANIFEST_FILE,
            "changed while the model was being read",
        ));
    }
    let model = spool.build(builder, |error| summary.files.locate_error(error))?;
    Ok((manifest, model))
}
