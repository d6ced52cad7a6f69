//! The control plane of a node with a data directory: staging a version (directory and
//! partitions, each verified and written to disk before it is acknowledged), activating it
//! (every partition the node must hold is staged), retention of older versions, and restoring
//! the active version at start.
//!
//! A staged version is not served until activated: readers never see half a model. Staging
//! holds the version's partitions in RAM beside the active one (so activation is a pointer
//! swap), at most [`STAGING_VERSIONS_MAX`] versions at a time.

use crate::service::Node;
use crate::store::{Store, StoreError};
use scoregrid_shard::file::decode;
use scoregrid_shard::{Directory, ModelVersion, Partition, PartitionId};
use scoregrid_wire::NodeError;
use scoregrid_wire::message::{NodeStatus, Staged, StagingStatus};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Versions staged at once (complete ones waiting for their flip included); staging a further
/// one is refused until one is activated.
pub const STAGING_VERSIONS_MAX: usize = 2;

#[derive(Default)]
pub(crate) struct Staging {
    pub(crate) directory: Option<Arc<Directory>>,
    pub(crate) partitions: BTreeMap<PartitionId, Partition>,
    /// Whether what a restart left on disk was read into this entry already: looking again
    /// after every staged partition cost a `stat` per missing partition each time (quadratic
    /// in the partitions of a load).
    pub(crate) disk_read: bool,
}

/// When [`Node::prepare_if_complete`] looks on disk for partitions staged before a restart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DiskCheck {
    /// Once per staging entry: the staging path, where everything new arrives through RAM.
    Once,
    /// Again: an activation, the last chance before a refusal.
    Always,
}

pub struct Control {
    pub(crate) store: Store,
    /// The partitions the placement gives this node: activation waits for all of them. Set at
    /// start and again whenever the cluster map changes the placement.
    must_hold: std::sync::RwLock<Vec<PartitionId>>,
    /// Versions kept beside the active one (for rollback and open cursors), for a node that
    /// follows no cluster map; a node that follows one keeps what the map lists
    /// ([`Node::keep_only`]).
    versions_retained: usize,
    pub(crate) staging: Mutex<HashMap<ModelVersion, Staging>>,
    pub(crate) uploads: crate::staging::Uploads,
}

/// Retention for a node whose cluster map decides which versions stay
/// ([`Control::new`]'s `versions_retained`).
pub const RETAINED_BY_MAP: usize = usize::MAX;

impl Control {
    pub(crate) fn must_hold(&self) -> Vec<PartitionId> {
        self.must_hold.read().map_or_else(
            |poisoned| poisoned.into_inner().clone(),
            |held| held.clone(),
        )
    }

    pub fn new(store: Store, must_hold: Vec<PartitionId>, versions_retained: usize) -> Self {
        Self {
            store,
            must_hold: std::sync::RwLock::new(must_hold),
            versions_retained,
            staging: Mutex::new(HashMap::new()),
            uploads: crate::staging::Uploads::default(),
        }
    }
}

pub(crate) fn refused(message: impl Into<String>) -> NodeError {
    NodeError::Refused(message.into())
}

pub(crate) fn storage(error: StoreError) -> NodeError {
    NodeError::Refused(format!("storage: {error}"))
}

impl Node {
    pub(crate) fn control(&self) -> Result<&Control, NodeError> {
        self.control.as_ref().ok_or_else(|| {
            refused("this node has no data directory: it cannot stage or activate versions")
        })
    }

    pub(crate) fn staging<T>(
        &self,
        f: impl FnOnce(&mut HashMap<ModelVersion, Staging>) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        let control = self.control()?;
        let mut staging = control
            .staging
            .lock()
            .map_err(|_| refused("staging state poisoned"))?;
        f(&mut staging)
    }

    pub(crate) fn staging_entry<'a>(
        &self,
        staging: &'a mut HashMap<ModelVersion, Staging>,
        version: &ModelVersion,
    ) -> Result<&'a mut Staging, NodeError> {
        if self.hosted.load().versions.contains_key(version) {
            // Its files are in use: a different model under the same name would be served from
            // RAM and another from disk after a restart.
            return Err(refused(format!(
                "version {version} is already hosted here; a new model needs a new version name"
            )));
        }
        // Complete staged versions wait for their flip in RAM too: they count as staging.
        let prepared = {
            let hosted = self.hosted.load();
            hosted
                .versions
                .keys()
                .filter(|v| !hosted.order.contains(v))
                .count()
        };
        if !staging.contains_key(version) && staging.len() + prepared >= STAGING_VERSIONS_MAX {
            return Err(refused(format!(
                "{} versions are already staging ({}); activate one first",
                staging.len(),
                staging
                    .keys()
                    .map(ModelVersion::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(staging.entry(version.clone()).or_default())
    }

    pub(crate) fn status(&self) -> NodeStatus {
        let hosted = self.hosted.load();
        let staging = self
            .control
            .as_ref()
            .and_then(|c| c.staging.lock().ok())
            .map(|s| {
                let mut list: Vec<StagingStatus> = s
                    .iter()
                    .map(|(v, st)| StagingStatus {
                        version: v.clone(),
                        partitions: st.partitions.len() as u32,
                        directory: st.directory.is_some(),
                    })
                    .collect();
                list.sort_by(|a, b| a.version.cmp(&b.version));
                list
            })
            .unwrap_or_default();
        let mut all: Vec<ModelVersion> = hosted.order.clone();
        let mut prepared: Vec<ModelVersion> = hosted
            .versions
            .keys()
            .filter(|v| !hosted.order.contains(v))
            .cloned()
            .collect();
        prepared.sort();
        all.extend(prepared);
        NodeStatus {
            node: self.id(),
            active: hosted.active.clone(),
            hosted: all,
            staging,
        }
    }

    pub(crate) fn stage_directory(&self, directory: Directory) -> Result<(), NodeError> {
        let control = self.control()?;
        let version = directory.version.clone();
        if let Some(hosted) = self.hosted.load().versions.get(&version) {
            // A rerun of a load that completed here: nothing to do if it is the same directory.
            if hosted.directory().digest() == directory.digest() {
                return Ok(());
            }
        }
        // Room first, so that a refused version leaves nothing on disk.
        self.staging(|staging| self.staging_entry(staging, &version).map(drop))?;
        control.store.write_directory(&directory).map_err(storage)?;
        self.staging(|staging| {
            let entry = self.staging_entry(staging, &version)?;
            if let Some(p) = entry.partitions.values().find(|p| {
                p.partition_count() != directory.partitions || p.dim() != directory.dim as usize
            }) {
                return Err(refused(format!(
                    "directory does not match staged partition {}",
                    p.id()
                )));
            }
            entry.directory = Some(Arc::new(directory));
            Ok(())
        })?;
        tracing::info!(node = %self.id(), %version, "directory staged");
        self.prepare_if_complete(control, &version, DiskCheck::Once)?;
        Ok(())
    }

    /// Adds a verified partition, whose file is on disk under its final name, to the staging
    /// of its version; completes the version if it was the last one missing.
    pub(crate) fn keep_staged(
        &self,
        control: &Control,
        partition: Partition,
        checksum: u32,
    ) -> Result<Staged, NodeError> {
        let (version, id) = (partition.version().clone(), partition.id());
        self.staging(|staging| {
            let entry = self.staging_entry(staging, &version)?;
            if let Some(d) = &entry.directory
                && (d.partitions != partition.partition_count()
                    || d.dim as usize != partition.dim())
            {
                return Err(refused(format!(
                    "partition {id} does not match the staged directory"
                )));
            }
            entry.partitions.insert(id, partition);
            Ok(())
        })?;
        metrics::counter!("scoregrid_node_partitions_staged_total", "node" => self.id().to_string()).increment(1);
        self.prepare_if_complete(control, &version, DiskCheck::Once)?;
        Ok(Staged {
            version,
            partition: id,
            checksum,
        })
    }

    /// The partitions of `entry` this node must hold that it lacks, named (at most eight).
    fn not_staged(control: &Control, entry: &Staging) -> Option<String> {
        let missing: Vec<String> = control
            .must_hold()
            .iter()
            .filter(|p| !entry.partitions.contains_key(p))
            .map(ToString::to_string)
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "{} partitions not staged yet ({}{})",
                missing.len(),
                missing
                    .iter()
                    .take(8)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if missing.len() > 8 { ", ..." } else { "" }
            )
        })
    }

    /// A staged version that is complete (its directory and every partition this node must
    /// hold) leaves staging for what the node serves to requests that name it: ready for the
    /// cluster-wide flip, which then only has to make it the active one. Returns whether it
    /// moved.
    fn prepare_if_complete(
        &self,
        control: &Control,
        version: &ModelVersion,
        disk: DiskCheck,
    ) -> Result<bool, NodeError> {
        let complete = |staging: &HashMap<ModelVersion, Staging>| {
            staging.get(version).is_some_and(|entry| {
                entry.directory.is_some() && Self::not_staged(control, entry).is_none()
            })
        };
        let (done, disk_read) = self.staging(|staging| {
            Ok((
                complete(staging),
                staging.get(version).is_some_and(|e| e.disk_read),
            ))
        })?;
        if !done && (disk == DiskCheck::Always || !disk_read) {
            // What a restart left on disk counts too.
            self.stage_from_disk(control, version);
        }
        let ready = self.staging(|staging| {
            let complete = complete(staging);
            Ok(if complete {
                staging.remove(version)
            } else {
                None
            })
        })?;
        let Some(entry) = ready else {
            return Ok(false);
        };
        let Some(directory) = entry.directory else {
            return Ok(false);
        };
        self.host(directory, entry.partitions.into_values().collect())
            .map_err(refused)?;
        tracing::info!(node = %self.id(), %version, "staged version complete: served by name, active on activation");
        Ok(true)
    }

    /// Serves `version` from now on: a staged version once complete, or a retained one again
    /// (a rollback). `ACTIVE` is written before RAM switches, so that a crash in between leaves
    /// the node restarting on the version it was about to serve, never on an older one.
    pub(crate) fn activate(&self, version: &ModelVersion) -> Result<(), NodeError> {
        let control = self.control()?;
        if !self.hosted.load().versions.contains_key(version) {
            let reason = self.staging(|staging| {
                Ok(match staging.get(version) {
                    None => format!("version {version} is neither staged nor hosted here"),
                    Some(entry) if entry.directory.is_none() => {
                        format!("version {version}: the directory is not staged")
                    }
                    Some(entry) => format!(
                        "version {version}: {}",
                        Self::not_staged(control, entry).unwrap_or_default()
                    ),
                })
            })?;
            if !self.prepare_if_complete(control, version, DiskCheck::Always)? {
                return Err(refused(reason));
            }
        }
        if self.hosted.load().active.as_ref() == Some(version) {
            return Ok(());
        }
        control.store.set_active(version).map_err(storage)?;
        self.make_active(version);
        self.apply_retention(control);
        Ok(())
    }

    /// Drops hosted versions beyond the active one and `versions_retained` others, from RAM and
    /// from disk.
    fn apply_retention(&self, control: &Control) {
        let hosted = self.hosted.load();
        let keep = control.versions_retained.saturating_add(1);
        let excess: Vec<ModelVersion> = hosted
            .order
            .iter()
            .filter(|v| hosted.active.as_ref() != Some(v))
            .take(hosted.order.len().saturating_sub(keep))
            .cloned()
            .collect();
        for version in excess {
            self.drop_version(&version);
            if let Err(error) = control.store.remove_version(&version) {
                tracing::warn!(node = %self.id(), %version, %error, "cannot delete a retired version");
            }
            tracing::info!(node = %self.id(), %version, "version retired");
        }
    }

    /// Keeps the versions `listed` (the cluster map's registry) and the active one: every
    /// other version leaves RAM, staging and disk. For a node that follows a cluster map, whose
    /// retention and `model drop` decide. A version still staging here (not complete) whose
    /// folder changed within `quiet` is spared: a load may be staging it under a map newer than
    /// this node's. A complete one got its directory last, after the load registered it.
    pub fn keep_only(&self, listed: &[ModelVersion], quiet: std::time::Duration) {
        let Some(control) = self.control.as_ref() else {
            return;
        };
        let active = self.active();
        let mut unlisted: Vec<ModelVersion> = self.hosted.load().versions.keys().cloned().collect();
        if let Ok(staging) = control.staging.lock() {
            unlisted.extend(staging.keys().cloned());
        }
        unlisted.extend(control.store.versions().unwrap_or_default());
        unlisted.sort();
        unlisted.dedup();
        unlisted.retain(|v| !listed.contains(v) && active.as_ref() != Some(v));
        for version in unlisted {
            let complete = self.hosted.load().versions.contains_key(&version);
            if !complete && control.store.changed_within(&version, quiet) {
                continue;
            }
            self.drop_version(&version);
            if let Ok(mut staging) = control.staging.lock() {
                staging.remove(&version);
            }
            control.uploads.discard(&version);
            match control.store.remove_version(&version) {
                Ok(()) => {
                    metrics::counter!("scoregrid_node_versions_dropped_total", "node" => self.id().to_string()).increment(1);
                    tracing::info!(node = %self.id(), %version, "version not in the cluster map: dropped from RAM and disk");
                }
                Err(error) => {
                    tracing::warn!(node = %self.id(), %version, %error, "cannot delete a dropped version");
                }
            }
        }
    }

    /// Loads the active version recorded in the data directory, verified, and serves it.
    /// Returns the version, or `None` for a fresh data directory. A partition file that fails
    /// verification is set aside (renamed `*.corrupt`) and counts as missing: its other replicas
    /// serve it, and [`Node::missing_partitions`] tells what to fetch back from them.
    ///
    /// # Errors
    /// When the active version's directory cannot be read or verified, or its folder listed.
    pub fn restore(&self) -> Result<Option<ModelVersion>, StoreError> {
        let Some(control) = self.control.as_ref() else {
            return Ok(None);
        };
        let Some(version) = control.store.active()? else {
            return Ok(None);
        };
        let directory = control.store.read_directory(&version)?;
        let mut partitions = Vec::new();
        for path in control.store.partition_files(&version)? {
            match scoregrid_shard::file::read_partition(&path) {
                Ok(p) if p.version() == &version => partitions.push(p),
                Ok(p) => {
                    tracing::error!(node = %self.id(), file = %path.display(), found = %p.version(), "partition file of another version; set aside");
                    control.store.quarantine(&path)?;
                }
                Err(error) => {
                    tracing::error!(node = %self.id(), %error, "partition file refused; set aside");
                    metrics::counter!("scoregrid_node_partition_files_refused_total", "node" => self.id().to_string())
                        .increment(1);
                    control.store.quarantine(&path)?;
                }
            }
        }
        self.install(Arc::new(directory), partitions)
            .map_err(|what| StoreError::Corrupt {
                path: control.store.root().display().to_string(),
                what,
            })?;
        if let Some((_, missing)) = self.missing_partitions() {
            tracing::warn!(node = %self.id(), %version, missing = missing.len(), "partitions missing on disk; their other replicas serve them until they are fetched back");
        }
        Ok(Some(version))
    }

    /// Serves `version` as the active one because the cluster map says so: a hosted version
    /// (complete staged, or retained), else a staged one that is complete now.
    ///
    /// # Errors
    /// A refusal naming what is missing when this node cannot serve `version`.
    pub fn follow_active(&self, version: &ModelVersion) -> Result<(), NodeError> {
        self.activate(version)
    }

    /// What is staged of `version` here: whether its directory is, and which partitions.
    /// `None` when nothing of it is staging (it may be hosted already).
    pub fn staging_progress(&self, version: &ModelVersion) -> Option<(bool, Vec<PartitionId>)> {
        let control = self.control.as_ref()?;
        let staging = control.staging.lock().ok()?;
        let entry = staging.get(version)?;
        Some((
            entry.directory.is_some(),
            entry.partitions.keys().copied().collect(),
        ))
    }

    /// Whether `version` is hosted here (complete: servable by name).
    pub fn hosts(&self, version: &ModelVersion) -> bool {
        self.hosted.load().versions.contains_key(version)
    }

    /// Records the partitions the cluster map now gives this node (the placement changed).
    pub fn set_must_hold(&self, partitions: Vec<PartitionId>) {
        if let Some(control) = self.control.as_ref() {
            let mut held = control
                .must_hold
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *held = partitions;
        }
    }

    /// The partitions the placement gives this node (none for a node without a data directory).
    pub fn must_hold(&self) -> Vec<PartitionId> {
        self.control
            .as_ref()
            .map(Control::must_hold)
            .unwrap_or_default()
    }

    /// The partitions of the active version that the placement gives this node but it does not
    /// hold, if any.
    pub fn missing_partitions(&self) -> Option<(ModelVersion, Vec<PartitionId>)> {
        let control = self.control.as_ref()?;
        let hosted = self.hosted.load();
        let active = hosted.active.clone()?;
        let version = hosted.versions.get(&active)?;
        let missing: Vec<PartitionId> = control
            .must_hold()
            .into_iter()
            .filter(|&p| version.partition(p).is_none())
            .collect();
        (!missing.is_empty()).then_some((active, missing))
    }

    /// Takes a partition file of the active version fetched from a peer: verified, written to
    /// disk, then served.
    ///
    /// # Errors
    /// A refusal if the bytes do not decode, belong to another version or layout, or name a
    /// partition this node should not hold; a storage error if they cannot be written.
    pub fn adopt_partition(&self, bytes: &[u8]) -> Result<PartitionId, NodeError> {
        let control = self.control()?;
        let partition = decode(bytes, "fetched partition").map_err(|e| refused(e.to_string()))?;
        let id = partition.id();
        let hosted = self.hosted.load();
        let Some(active) = hosted.active.as_ref().and_then(|v| hosted.versions.get(v)) else {
            return Err(refused("no active version to add a partition to"));
        };
        if partition.version() != active.version() || !control.must_hold().contains(&id) {
            return Err(refused(format!(
                "partition {id} of {} is not one this node holds for {}",
                partition.version(),
                active.version()
            )));
        }
        control
            .store
            .write_partition_bytes(partition.version(), id, bytes)
            .map_err(storage)?;
        let updated = Arc::new(active.with_partition(partition).map_err(refused)?);
        let version = updated.version().clone();
        self.hosted.rcu(|current| {
            let mut next = current.as_ref().clone();
            next.versions.insert(version.clone(), updated.clone());
            next
        });
        metrics::counter!("scoregrid_node_partitions_repaired_total", "node" => self.id().to_string()).increment(1);
        Ok(id)
    }
}
