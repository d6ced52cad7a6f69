//! Staging partitions: a partition file arrives in pieces ([`StageChunk`]), is written to a
//! temporary file, and is kept only once the whole file is in and verified (checksum, decode,
//! invariants, its version's layout). A node restarted mid-load keeps every partition it had
//! finished, and tells a rerun of the load what those are ([`Node::inventory`]); the pieces of
//! an unfinished one are deleted at start.
//!
//! Staging shares the node's cores with scoring. One staging lane per node (a lock held while
//! a piece is written or a file verified) keeps it to one core, and the loader waits for each
//! reply before sending more: that is the backpressure that keeps readers' latency flat
//! during a load.

use crate::control::{Control, refused, storage};
use crate::service::Node;
use scoregrid_shard::file::decode;
use scoregrid_shard::{ModelVersion, Partition, PartitionId};
use scoregrid_wire::NodeError;
use scoregrid_wire::message::{FILE_CHUNK_BYTES_MAX, Inventory, StageChunk, Staged};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Uploads open at once on a node: a loader keeps a few per node in flight.
pub const UPLOADS_MAX: usize = 64;

/// An upload with no piece for this long is abandoned (its loader died): its file is deleted
/// when room is needed.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// The largest partition file a node takes: it holds the partition in RAM once staged.
pub const PARTITION_FILE_BYTES_MAX: u64 = 4 << 30;

struct Upload {
    file: File,
    path: PathBuf,
    received: u64,
    file_bytes: u64,
    checksum: u32,
    touched: Instant,
}

/// The uploads in progress on a node, and its staging lane.
#[derive(Default)]
pub(crate) struct Uploads {
    open: Mutex<HashMap<(ModelVersion, PartitionId), Upload>>,
    lane: Mutex<()>,
}

impl Uploads {
    fn take(&self, key: &(ModelVersion, PartitionId)) -> Option<Upload> {
        self.open.lock().ok()?.remove(key)
    }

    fn put(&self, key: (ModelVersion, PartitionId), upload: Upload) -> Result<(), NodeError> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| refused("upload table poisoned"))?;
        if open.len() >= UPLOADS_MAX {
            let idle: Vec<_> = open
                .iter()
                .filter(|(_, u)| u.touched.elapsed() > UPLOAD_IDLE)
                .map(|(k, _)| k.clone())
                .collect();
            for k in idle {
                if let Some(u) = open.remove(&k) {
                    let _ = std::fs::remove_file(&u.path);
                }
            }
        }
        if open.len() >= UPLOADS_MAX {
            let _ = std::fs::remove_file(&upload.path);
            return Err(refused(format!(
                "{UPLOADS_MAX} uploads are already open on this node: retry later"
            )));
        }
        open.insert(key, upload);
        Ok(())
    }

    /// Drops the uploads of `version` and deletes their files.
    pub(crate) fn discard(&self, version: &ModelVersion) {
        if let Ok(mut open) = self.open.lock() {
            open.retain(|(v, _), u| {
                if v == version {
                    let _ = std::fs::remove_file(&u.path);
                    return false;
                }
                true
            });
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.open.lock().map_or(0, |o| o.len())
    }
}

fn check_chunk(chunk: &StageChunk) -> Result<(), NodeError> {
    let bad = |what: String| Err(NodeError::BadRequest(format!("stage_chunk: {what}")));
    if chunk.bytes.len() > FILE_CHUNK_BYTES_MAX as usize {
        return bad(format!(
            "a piece of {} bytes, at most {FILE_CHUNK_BYTES_MAX}",
            chunk.bytes.len()
        ));
    }
    if chunk.file_bytes > PARTITION_FILE_BYTES_MAX {
        return bad(format!(
            "a file of {} bytes, at most {PARTITION_FILE_BYTES_MAX}",
            chunk.file_bytes
        ));
    }
    if chunk.offset + chunk.bytes.len() as u64 > chunk.file_bytes {
        return bad(format!(
            "{} bytes at offset {} run past the file's {}",
            chunk.bytes.len(),
            chunk.offset,
            chunk.file_bytes
        ));
    }
    if chunk.bytes.is_empty() && chunk.file_bytes > 0 {
        return bad("an empty piece".into());
    }
    Ok(())
}

impl Node {
    /// Takes one piece of a partition file (see the module docs): `Ok(Err(received))` while the
    /// file is incomplete. A piece at offset 0 of a partition already staged with the same
    /// checksum is answered at once: a rerun skips it.
    pub(crate) fn stage_chunk(&self, chunk: StageChunk) -> Result<Result<Staged, u64>, NodeError> {
        let control = self.control()?;
        check_chunk(&chunk)?;
        let (version, id) = (chunk.version.clone(), chunk.partition);
        let staged = Staged {
            version: version.clone(),
            partition: id,
            checksum: chunk.checksum,
        };
        if chunk.offset == 0 && self.already_staged(control, &version, id, chunk.checksum) {
            return Ok(Ok(staged));
        }
        self.staging(|staging| self.staging_entry(staging, &version).map(drop))?;
        let _lane = control
            .uploads
            .lane
            .lock()
            .map_err(|_| refused("staging lane poisoned"))?;
        let key = (version.clone(), id);
        let mut upload = match (control.uploads.take(&key), chunk.offset) {
            (previous, 0) => {
                if let Some(previous) = previous {
                    let _ = std::fs::remove_file(&previous.path);
                }
                let (file, path) = control.store.upload_file(&version, id).map_err(storage)?;
                Upload {
                    file,
                    path,
                    received: 0,
                    file_bytes: chunk.file_bytes,
                    checksum: chunk.checksum,
                    touched: Instant::now(),
                }
            }
            (Some(upload), offset)
                if upload.received == offset
                    && upload.file_bytes == chunk.file_bytes
                    && upload.checksum == chunk.checksum =>
            {
                upload
            }
            (previous, offset) => {
                let expected = previous.as_ref().map_or(0, |u| u.received);
                if let Some(previous) = previous {
                    control.uploads.put(key, previous)?;
                }
                return Err(refused(format!(
                    "partition {id} of {version}: a piece at offset {offset}, expected one at {expected}: restart the file"
                )));
            }
        };
        if let Err(error) = upload.file.write_all(&chunk.bytes) {
            let _ = std::fs::remove_file(&upload.path);
            return Err(refused(format!(
                "storage: {}: {error}",
                upload.path.display()
            )));
        }
        upload.received += chunk.bytes.len() as u64;
        upload.touched = Instant::now();
        let node = self.id().to_string();
        metrics::counter!("scoregrid_node_staged_bytes_total", "node" => node.clone())
            .increment(chunk.bytes.len() as u64);
        metrics::gauge!("scoregrid_node_uploads_open", "node" => node)
            .set(control.uploads.count() as f64);
        if upload.received < upload.file_bytes {
            let received = upload.received;
            control.uploads.put(key, upload)?;
            return Ok(Err(received));
        }
        let finished = self.finish_upload(control, &upload, &version, id);
        if finished.is_err() {
            let _ = std::fs::remove_file(&upload.path);
        }
        finished.map(Ok)
    }

    /// Verifies a complete upload, gives it its final name and stages the partition.
    fn finish_upload(
        &self,
        control: &Control,
        upload: &Upload,
        version: &ModelVersion,
        id: PartitionId,
    ) -> Result<Staged, NodeError> {
        upload
            .file
            .sync_all()
            .map_err(|e| refused(format!("storage: {}: {e}", upload.path.display())))?;
        let bytes = std::fs::read(&upload.path)
            .map_err(|e| refused(format!("storage: {}: {e}", upload.path.display())))?;
        let partition = decode(&bytes, "staged partition").map_err(|e| refused(e.to_string()))?;
        let trailer = file_checksum(&bytes);
        if partition.version() != version || partition.id() != id || trailer != upload.checksum {
            return Err(refused(format!(
                "the file sent as partition {id} of {version} (checksum {:08x}) holds partition {} of {} (checksum {trailer:08x})",
                upload.checksum,
                partition.id(),
                partition.version()
            )));
        }
        control
            .store
            .keep_upload(&upload.path, version, id)
            .map_err(storage)?;
        self.keep_staged(control, partition, trailer)
    }

    /// Stages a whole partition file held in memory (one fetched from a peer).
    ///
    /// # Errors
    /// A refusal if the bytes do not decode or do not fit the staged version; a storage error.
    pub fn stage_partition(&self, bytes: &[u8]) -> Result<Staged, NodeError> {
        let control = self.control()?;
        let partition = decode(bytes, "staged partition").map_err(|e| refused(e.to_string()))?;
        let version = partition.version().clone();
        self.staging(|staging| self.staging_entry(staging, &version).map(drop))?;
        let checksum = control
            .store
            .write_partition_bytes(&version, partition.id(), bytes)
            .map_err(storage)?;
        self.keep_staged(control, partition, checksum)
    }

    /// Whether partition `id` of `version` is staged (or hosted) here with `checksum`: its file
    /// is on disk under its final name, which it gets only once verified. A partition staged
    /// before a restart is read back into RAM when the version completes
    /// ([`Node::stage_from_disk`]).
    fn already_staged(
        &self,
        control: &Control,
        version: &ModelVersion,
        id: PartitionId,
        checksum: u32,
    ) -> bool {
        control.store.checksum_of(version, id) == Some(checksum)
    }

    /// What of `version` this node has on disk (see [`Inventory`]).
    ///
    /// # Errors
    /// A storage error when the version's folder cannot be listed.
    pub fn inventory(&self, version: &ModelVersion) -> Result<Inventory, NodeError> {
        self.control()?.store.inventory(version).map_err(storage)
    }

    /// Fills the staging entry of `version` with what is on disk and not in RAM yet: the
    /// directory and the partitions this node must hold. How a node restarted mid-load (or
    /// asked to roll back to a version it kept on disk) gets a complete version without
    /// receiving it again.
    pub(crate) fn stage_from_disk(&self, control: &Control, version: &ModelVersion) {
        let wanted: Vec<PartitionId> = {
            let Ok(staging) = control.staging.lock() else {
                return;
            };
            let entry = staging.get(version);
            control
                .must_hold()
                .into_iter()
                .filter(|p| !entry.is_some_and(|e| e.partitions.contains_key(p)))
                .filter(|&p| control.store.has_partition(version, p))
                .collect()
        };
        let need_directory = control
            .staging
            .lock()
            .is_ok_and(|s| s.get(version).is_none_or(|e| e.directory.is_none()));
        if wanted.is_empty() && !need_directory {
            self.mark_disk_read(control, version);
            return;
        }
        let directory = if need_directory {
            match control.store.read_directory(version) {
                Ok(d) => Some(d),
                Err(_) if wanted.is_empty() => {
                    self.mark_disk_read(control, version);
                    return;
                }
                Err(_) => None,
            }
        } else {
            None
        };
        let mut partitions: Vec<Partition> = Vec::new();
        for p in wanted {
            match control.store.read_one(version, p) {
                Ok(partition) => partitions.push(partition),
                Err(error) => {
                    tracing::warn!(node = %self.id(), %version, partition = %p, %error, "staged partition file refused; set aside");
                    let _ = control.store.quarantine_partition(version, p);
                }
            }
        }
        let loaded = partitions.len();
        let result = self.staging(|staging| {
            let entry = self.staging_entry(staging, version)?;
            entry.disk_read = true;
            if let Some(d) = directory {
                entry.directory = Some(std::sync::Arc::new(d));
            }
            for partition in partitions {
                entry.partitions.insert(partition.id(), partition);
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                tracing::info!(node = %self.id(), %version, partitions = loaded, "staged files read back from disk")
            }
            Err(error) => {
                tracing::warn!(node = %self.id(), %version, %error, "cannot stage from disk")
            }
        }
    }

    /// Notes that `version`'s staging entry, if there is one, has seen what is on disk.
    fn mark_disk_read(&self, control: &Control, version: &ModelVersion) {
        if let Ok(mut staging) = control.staging.lock()
            && let Some(entry) = staging.get_mut(version)
        {
            entry.disk_read = true;
        }
    }
}

/// The checksum in a partition file's trailer.
fn file_checksum(bytes: &[u8]) -> u32 {
    bytes
        .len()
        .checked_sub(4)
        .and_then(|at| bytes[at..].try_into().ok())
        .map_or(0, u32::from_le_bytes)
}
