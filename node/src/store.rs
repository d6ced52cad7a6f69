//! A node's data directory: the model versions it holds, as files, so that a restarted node
//! serves again without asking anyone.
//!
//! ```text
//! <data_dir>/ACTIVE                          the active version's name (written atomically)
//! <data_dir>/models/<version>/directory.bin  the version's directory (magic, format, crc32)
//! <data_dir>/models/<version>/p0042.part     one file per partition replica held
//! ```
//!
//! Every file is written to a temporary name, fsynced and renamed; every file read is checked
//! (magic, format, checksum, invariants) before anything is served from it.

use scoregrid_shard::file::{read_partition, write_partition};
use scoregrid_shard::{Directory, FileError, ModelVersion, Partition, PartitionId};
use scoregrid_wire::message::Inventory;
use std::fs;
use std::path::{Path, PathBuf};
use thiserror::Error;

const DIRECTORY_MAGIC: &[u8; 8] = b"SGRDDIRY";
const DIRECTORY_FORMAT: u32 = 1;
const ACTIVE_FILE: &str = "ACTIVE";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Partition(#[from] FileError),
    #[error("{path}: {what}")]
    Corrupt { path: String, what: String },
    #[error("{path}: model version {version:?} is not a valid name: {reason}")]
    BadVersion {
        path: String,
        version: String,
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (see [`scoregrid_shard::durable`]).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    scoregrid_shard::durable::write_atomically(path, bytes).map_err(io(path))
}

/// The checksum in the trailer of the partition file at `path`.
fn trailer(path: &Path) -> std::io::Result<u32> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::File::open(path)?;
    file.seek(SeekFrom::End(-4))?;
    let mut crc = [0u8; 4];
    file.read_exact(&mut crc)?;
    Ok(u32::from_le_bytes(crc))
}

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the data directory at `root`.
    ///
    /// # Errors
    /// `StoreError::Io` if the directories cannot be created.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let models = root.join("models");
        fs::create_dir_all(&models).map_err(io(&models))?;
        let store = Self {
            root: root.to_path_buf(),
        };
        // Pieces of files a crash interrupted (uploads, atomic writes) are never read: delete
        // them, so that they do not pile up over restarts.
        for version in store.versions()? {
            let dir = store.version_dir(&version);
            match scoregrid_shard::durable::remove_temporary_files(&dir) {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::info!(%version, removed, "temporary files of an interrupted write removed")
                }
                Err(source) => {
                    return Err(StoreError::Io {
                        path: dir.display().to_string(),
                        source,
                    });
                }
            }
        }
        Ok(store)
    }

    /// The folder of `version`, created if needed; a new folder's entry is fsynced so that
    /// what is renamed into it later survives a crash.
    fn created_version_dir(&self, version: &ModelVersion) -> Result<PathBuf, StoreError> {
        let dir = self.version_dir(version);
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
            scoregrid_shard::durable::sync_parent(&dir).map_err(io(&dir))?;
        }
        Ok(dir)
    }

    /// A new temporary file for an upload of partition `id` of `version`, beside its final name
    /// and under a name no other writer uses.
    ///
    /// # Errors
    /// `StoreError::Io`.
    pub fn upload_file(
        &self,
        version: &ModelVersion,
        id: PartitionId,
    ) -> Result<(fs::File, PathBuf), StoreError> {
        self.created_version_dir(version)?;
        let path = scoregrid_shard::durable::temporary_path(&self.partition_path(version, id));
        let file = fs::File::create(&path).map_err(io(&path))?;
        Ok((file, path))
    }

    /// Gives a complete, verified and fsynced upload its final name (durably).
    ///
    /// # Errors
    /// `StoreError::Io`.
    pub fn keep_upload(
        &self,
        upload: &Path,
        version: &ModelVersion,
        id: PartitionId,
    ) -> Result<(), StoreError> {
        let path = self.partition_path(version, id);
        fs::rename(upload, &path).map_err(io(&path))?;
        scoregrid_shard::durable::sync_parent(&path).map_err(io(&path))
    }

    /// Whether a partition file of `version` is on disk.
    pub fn has_partition(&self, version: &ModelVersion, id: PartitionId) -> bool {
        self.partition_path(version, id).is_file()
    }

    /// Reads and verifies one partition file of `version`.
    ///
    /// # Errors
    /// `StoreError::Partition` if it cannot be read or verified, `Corrupt` if it holds another
    /// partition.
    pub fn read_one(
        &self,
        version: &ModelVersion,
        id: PartitionId,
    ) -> Result<Partition, StoreError> {
        let path = self.partition_path(version, id);
        let partition = read_partition(&path)?;
        if partition.version() != version || partition.id() != id {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                what: format!(
                    "holds partition {} of {}, expected {id} of {version}",
                    partition.id(),
                    partition.version()
                ),
            });
        }
        Ok(partition)
    }

    /// `length` bytes (fewer at the end) of partition `id`'s file from `offset`, and the file's
    /// length.
    ///
    /// # Errors
    /// `StoreError::Io` if the file cannot be read, `Corrupt` for an offset beyond its end.
    pub fn read_range(
        &self,
        version: &ModelVersion,
        id: PartitionId,
        offset: u64,
        length: u32,
    ) -> Result<(Vec<u8>, u64), StoreError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.partition_path(version, id);
        let mut file = fs::File::open(&path).map_err(io(&path))?;
        let file_bytes = file.metadata().map_err(io(&path))?.len();
        if offset > file_bytes {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                what: format!("offset {offset} is beyond the file's {file_bytes} bytes"),
            });
        }
        let take = (file_bytes - offset).min(u64::from(length));
        file.seek(SeekFrom::Start(offset)).map_err(io(&path))?;
        let mut bytes = vec![0u8; take as usize];
        file.read_exact(&mut bytes).map_err(io(&path))?;
        Ok((bytes, file_bytes))
    }

    /// The checksum in the trailer of partition `id`'s file, if the file is there.
    pub fn checksum_of(&self, version: &ModelVersion, id: PartitionId) -> Option<u32> {
        trailer(&self.partition_path(version, id)).ok()
    }

    /// Sets partition `id`'s file aside (see [`Store::quarantine`]).
    ///
    /// # Errors
    /// `StoreError::Io` if it cannot be renamed.
    pub fn quarantine_partition(
        &self,
        version: &ModelVersion,
        id: PartitionId,
    ) -> Result<(), StoreError> {
        self.quarantine(&self.partition_path(version, id))
    }

    /// What of `version` is on disk: its directory's digest (if the directory is there and
    /// reads back), and each complete partition file with the checksum in its trailer. Files
    /// get their final name only after verification, so the trailer stands for the file.
    ///
    /// # Errors
    /// `StoreError::Io` if the version's folder cannot be listed.
    pub fn inventory(&self, version: &ModelVersion) -> Result<Inventory, StoreError> {
        if !self.version_dir(version).is_dir() {
            return Ok(Inventory::default());
        }
        let directory = self.read_directory(version).ok().map(|d| d.digest());
        let mut partitions = Vec::new();
        for path in self.partition_files(version)? {
            let Some(id) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.strip_prefix('p'))
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            match trailer(&path) {
                Ok(checksum) => partitions.push((PartitionId(id), checksum)),
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "partition file unreadable; not counted as staged");
                }
            }
        }
        Ok(Inventory {
            directory,
            partitions,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn version_dir(&self, version: &ModelVersion) -> PathBuf {
        // Version names are [A-Za-z0-9._-]{1,64}: safe as a path component, except "." and "..".
        self.root.join("models").join(format!("v-{version}"))
    }

    fn partition_path(&self, version: &ModelVersion, id: PartitionId) -> PathBuf {
        self.version_dir(version).join(format!("p{:05}.part", id.0))
    }

    /// Writes one partition of `version`; returns its checksum.
    ///
    /// # Errors
    /// `StoreError::Io` or `StoreError::Partition`.
    pub fn write_partition(&self, partition: &Partition) -> Result<u32, StoreError> {
        self.created_version_dir(partition.version())?;
        Ok(write_partition(
            &self.partition_path(partition.version(), partition.id()),
            partition,
        )?)
    }

    /// Writes the bytes of a partition file that the caller has already verified; returns the
    /// checksum stored in its trailer.
    ///
    /// # Errors
    /// `StoreError::Io`, or `Corrupt` for bytes too short to hold a trailer.
    pub fn write_partition_bytes(
        &self,
        version: &ModelVersion,
        id: PartitionId,
        bytes: &[u8],
    ) -> Result<u32, StoreError> {
        self.created_version_dir(version)?;
        let path = self.partition_path(version, id);
        let trailer: [u8; 4] = bytes
            .len()
            .checked_sub(4)
            .and_then(|at| bytes[at..].try_into().ok())
            .ok_or_else(|| StoreError::Corrupt {
                path: path.display().to_string(),
                what: "too short for a partition file".into(),
            })?;
        write_atomically(&path, bytes)?;
        Ok(u32::from_le_bytes(trailer))
    }

    /// Writes the directory of `directory.version`.
    ///
    /// # Errors
    /// `StoreError::Io`, or `Corrupt` if it cannot be encoded.
    pub fn write_directory(&self, directory: &Directory) -> Result<(), StoreError> {
        let dir = self.created_version_dir(&directory.version)?;
        let path = dir.join("directory.bin");
        let payload =
            scoregrid_wire::codec::encode(directory).map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                what: format!("cannot encode the directory: {e}"),
            })?;
        let bytes = scoregrid_shard::durable::seal(DIRECTORY_MAGIC, DIRECTORY_FORMAT, &payload);
        write_atomically(&path, &bytes)
    }

    /// Reads and verifies the directory of `version`.
    ///
    /// # Errors
    /// `StoreError::Io` if absent or unreadable, `Corrupt` if it is not what was written.
    pub fn read_directory(&self, version: &ModelVersion) -> Result<Directory, StoreError> {
        let path = self.version_dir(version).join("directory.bin");
        let name = path.display().to_string();
        let bytes = fs::read(&path).map_err(io(&path))?;
        let corrupt = |what: &str| StoreError::Corrupt {
            path: name.clone(),
            what: what.to_string(),
        };
        let (format, payload) = scoregrid_shard::durable::unseal(&bytes, DIRECTORY_MAGIC)
            .map_err(|e| corrupt(&e.to_string()))?;
        if format != DIRECTORY_FORMAT {
            return Err(corrupt(&format!(
                "directory format {format} is not supported"
            )));
        }
        let directory: Directory = scoregrid_wire::codec::decode(payload)
            .map_err(|e| corrupt(&format!("cannot decode: {e}")))?;
        if &directory.version != version {
            return Err(corrupt(&format!(
                "holds version {}, expected {version}",
                directory.version
            )));
        }
        Ok(directory)
    }

    /// The partition files of `version`, sorted by name.
    ///
    /// # Errors
    /// `StoreError::Io` if the version's folder cannot be listed.
    pub fn partition_files(&self, version: &ModelVersion) -> Result<Vec<PathBuf>, StoreError> {
        let dir = self.version_dir(version);
        let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "part"))
            .collect();
        paths.sort();
        Ok(paths)
    }

    /// Sets a file aside as `<name>.corrupt`, kept for inspection, never read again.
    ///
    /// # Errors
    /// `StoreError::Io` if it cannot be renamed.
    pub fn quarantine(&self, path: &Path) -> Result<(), StoreError> {
        let aside = path.with_extension("corrupt");
        fs::rename(path, &aside).map_err(io(path))
    }

    /// Reads every partition file of `version`, verified.
    ///
    /// # Errors
    /// The first file that cannot be read or verified.
    pub fn read_partitions(&self, version: &ModelVersion) -> Result<Vec<Partition>, StoreError> {
        let paths = self.partition_files(version)?;
        let mut partitions = Vec::with_capacity(paths.len());
        for path in paths {
            let partition = read_partition(&path)?;
            if partition.version() != version {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    what: format!("holds version {}, expected {version}", partition.version()),
                });
            }
            partitions.push(partition);
        }
        Ok(partitions)
    }

    /// The versions with a folder on disk.
    ///
    /// # Errors
    /// `StoreError::Io` if the models folder cannot be listed.
    pub fn versions(&self) -> Result<Vec<ModelVersion>, StoreError> {
        let models = self.root.join("models");
        let mut versions = Vec::new();
        for entry in fs::read_dir(&models).map_err(io(&models))? {
            let entry = entry.map_err(io(&models))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_prefix("v-")
                && let Ok(version) = ModelVersion::new(v)
            {
                versions.push(version);
            }
        }
        versions.sort();
        Ok(versions)
    }

    /// The active version, if one was set.
    ///
    /// # Errors
    /// `StoreError::Io` if the marker cannot be read, `BadVersion` if it holds garbage.
    pub fn active(&self) -> Result<Option<ModelVersion>, StoreError> {
        let path = self.root.join(ACTIVE_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let name = text.trim();
                ModelVersion::new(name)
                    .map(Some)
                    .map_err(|reason| StoreError::BadVersion {
                        path: path.display().to_string(),
                        version: name.to_string(),
                        reason,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Records `version` as active (atomically: a crash leaves the old or the new marker).
    ///
    /// # Errors
    /// `StoreError::Io`.
    pub fn set_active(&self, version: &ModelVersion) -> Result<(), StoreError> {
        write_atomically(
            &self.root.join(ACTIVE_FILE),
            format!("{version}\n").as_bytes(),
        )
    }

    /// Whether the folder of `version` changed (a file added, renamed or removed) within `span`.
    pub fn changed_within(&self, version: &ModelVersion, span: std::time::Duration) -> bool {
        fs::metadata(self.version_dir(version))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age < span)
    }

    /// Deletes a version's files.
    ///
    /// # Errors
    /// `StoreError::Io`.
    pub fn remove_version(&self, version: &ModelVersion) -> Result<(), StoreError> {
        let dir = self.version_dir(version);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&dir)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scoregrid_shard::{ModelBuilder, ModelLayout, ModelSink, PartitionCount, RowRef};

    fn model() -> scoregrid_shard::BuiltModel {
        let mut b = ModelBuilder::new(ModelLayout {
            version: ModelVersion::new("v7").unwrap(),
            dim: 2,
            partitions: PartitionCount::new(4).unwrap(),
            segment_products_max: 2,
        });
        for i in 0..20u64 {
            b.add_customer(i, &[i as f32, 1.0], &[(1, 0.5)], RowRef(i))
                .unwrap();
            b.add_product(i, 3, &[1.0, i as f32], true, RowRef(i))
                .unwrap();
            b.add_pool_entry(i % 3, i, 0.1 * i as f32, RowRef(i))
                .unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn a_version_written_reads_back_identical() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let built = model();
        for p in &built.partitions {
            store.write_partition(p).unwrap();
        }
        store.write_directory(&built.directory).unwrap();
        let v = built.directory.version.clone();
        assert_eq!(store.active().unwrap(), None);
        store.set_active(&v).unwrap();
        assert_eq!(store.active().unwrap(), Some(v.clone()));
        assert_eq!(store.versions().unwrap(), vec![v.clone()]);
        assert_eq!(store.read_directory(&v).unwrap(), built.directory);
        assert_eq!(store.read_partitions(&v).unwrap(), built.partitions);
        store.remove_version(&v).unwrap();
        assert!(store.versions().unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let built = model();
        store.write_directory(&built.directory).unwrap();
        let path = dir.path().join("models/v-v7/directory.bin");
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        fs::write(&path, bytes).unwrap();
        let e = store
            .read_directory(&built.directory.version)
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        fs::write(dir.path().join(ACTIVE_FILE), "not a version!\n").unwrap();
        assert!(
            store
                .active()
                .unwrap_err()
                .to_string()
                .contains("not a valid name")
        );
    }
}
