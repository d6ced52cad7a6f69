//! Customers spilled to disk while a model is read, one file per partition, so that building a
//! version needs RAM for its products and pools and for one partition's customers at a time,
//! not for every customer at once (customers are most of a model: 10M of dim 64 are 2.5 GiB).
//!
//! Rows are already validated (vector length, finite values, categories) when they are spilled;
//! duplicates are found when a partition is read back, since equal ids hash to one partition.
//! Each partition's rows are buffered in RAM up to [`SPILL_BUFFER_BYTES`] and appended to its
//! file, opened only for that write: a spill of 1,024 partitions never holds 1,024 files open.
//!
//! A record: `id u64 | origin u64 | categories u32 | vector [f32; dim] | [(u32, f32); categories]`,
//! little-endian. The files are the builder's own: read back once, then deleted.

use crate::builder::RowRef;
use crate::ids::{CategoryId, CustomerId, PartitionCount, PartitionId};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bytes buffered per partition before they are appended to its file.
pub const SPILL_BUFFER_BYTES: usize = 32 * 1024;

/// One partition's customers read back, in the order they were added.
#[derive(Debug, Default)]
pub(crate) struct SpilledCustomers {
    pub(crate) ids: Vec<CustomerId>,
    pub(crate) origins: Vec<RowRef>,
    pub(crate) vectors: Vec<f32>,
    pub(crate) category_ends: Vec<u32>,
    pub(crate) category_ids: Vec<CategoryId>,
    pub(crate) category_weights: Vec<f32>,
}

#[derive(Debug)]
pub(crate) struct CustomerSpill {
    dir: PathBuf,
    dim: usize,
    buffers: Vec<Vec<u8>>,
}

fn io_error(path: &Path, error: std::io::Error) -> String {
    format!("{}: {error}", path.display())
}

impl CustomerSpill {
    /// A spill in `dir` (created; it must not hold an earlier spill's files).
    pub(crate) fn create(
        dir: &Path,
        partitions: PartitionCount,
        dim: usize,
    ) -> Result<Self, String> {
        fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            dim,
            buffers: vec![Vec::new(); partitions.get() as usize],
        })
    }

    fn path(&self, partition: usize) -> PathBuf {
        self.dir.join(format!("customers-{partition:05}.spill"))
    }

    pub(crate) fn add(
        &mut self,
        partition: PartitionId,
        id: CustomerId,
        origin: RowRef,
        vector: &[f32],
        categories: &[(CategoryId, f32)],
    ) -> Result<(), String> {
        let index = partition.index();
        let buffer = &mut self.buffers[index];
        buffer.extend_from_slice(&id.to_le_bytes());
        buffer.extend_from_slice(&origin.0.to_le_bytes());
        buffer.extend_from_slice(&(categories.len() as u32).to_le_bytes());
        for v in vector {
            buffer.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        for (c, w) in categories {
            buffer.extend_from_slice(&c.to_le_bytes());
            buffer.extend_from_slice(&w.to_bits().to_le_bytes());
        }
        if buffer.len() >= SPILL_BUFFER_BYTES {
            self.flush(index)?;
        }
        Ok(())
    }

    fn flush(&mut self, index: usize) -> Result<(), String> {
        if self.buffers[index].is_empty() {
            return Ok(());
        }
        let path = self.path(index);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        file.write_all(&self.buffers[index])
            .map_err(|e| io_error(&path, e))?;
        self.buffers[index].clear();
        Ok(())
    }

    /// Reads partition `partition`'s customers back and deletes its file.
    pub(crate) fn take(&mut self, partition: PartitionId) -> Result<SpilledCustomers, String> {
        let index = partition.index();
        let path = self.path(index);
        let mut bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error(&path, e)),
        };
        bytes.append(&mut self.buffers[index]);
        self.buffers[index] = Vec::new();
        let _ = fs::remove_file(&path);
        let mut out = SpilledCustomers::default();
        let mut reader = Reader {
            bytes: &bytes,
            at: 0,
        };
        let cut = || format!("{}: a spilled record is cut short", path.display());
        while !reader.done() {
            out.ids.push(reader.u64().ok_or_else(cut)?);
            out.origins.push(RowRef(reader.u64().ok_or_else(cut)?));
            let categories = reader.u32().ok_or_else(cut)? as usize;
            for _ in 0..self.dim {
                out.vectors
                    .push(f32::from_bits(reader.u32().ok_or_else(cut)?));
            }
            for _ in 0..categories {
                out.category_ids.push(reader.u32().ok_or_else(cut)?);
                out.category_weights
                    .push(f32::from_bits(reader.u32().ok_or_else(cut)?));
            }
            let end = u32::try_from(out.category_ids.len()).map_err(|_| {
                format!(
                    "{}: more than {} category entries in one partition",
                    path.display(),
                    u32::MAX
                )
            })?;
            out.category_ends.push(end);
        }
        Ok(out)
    }

    /// Deletes every file of the spill.
    pub(crate) fn remove(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let piece = self.bytes.get(self.at..self.at + N)?;
        self.at += N;
        piece.try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}
