//! The Raft state machine: the cluster map. Committed commands are applied to it in log order
//! ([`crate::command::apply`]); a snapshot is the whole state, written to
//! `<data_dir>/raft/snapshot` (sealed: magic "SGRDSNAP", format, crc32; see [`crate::sealed`]) whenever openraft builds
//! or installs one, and read back at start. After a restart the state is the snapshot's, and
//! openraft re-applies the committed entries after it from the log.
//!
//! Every applied change is published on a `watch` channel ([`StateMachine::subscribe`]): the
//! node serving the map, its failure detector and the watch streams of routers read it there.

use crate::command::{MapResponse, apply, apply_voters};
use crate::map::ClusterMap;
use crate::types::{Entry, MapSnapshot, RaftPeer, SnapshotMeta, StorageError, TypeConfig};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

const SNAPSHOT_MAGIC: &[u8; 8] = b"SGRDSNAP";

#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: MapSnapshot,
}

struct Inner {
    path: PathBuf,
    state: MapSnapshot,
    snapshot: Option<StoredSnapshot>,
    /// Snapshots built by this process, for unique snapshot ids.
    built: u64,
}

/// The state machine openraft applies to; cheap to clone (its snapshot builder is a clone).
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<Inner>>,
    published: Arc<watch::Sender<Option<Arc<ClusterMap>>>>,
}

fn read_snapshot(path: &Path) -> std::io::Result<Option<StoredSnapshot>> {
    let stored: Option<StoredSnapshot> = crate::sealed::read(path, SNAPSHOT_MAGIC)?;
    if let Some(map) = stored.as_ref().and_then(|s| s.data.map.as_ref()) {
        map.check()
            .map_err(|e| crate::sealed::invalid(format!("{}: {e}", path.display())))?;
    }
    Ok(stored)
}

fn write_snapshot(path: &Path, stored: &StoredSnapshot) -> std::io::Result<()> {
    crate::sealed::write(path, SNAPSHOT_MAGIC, stored)
}

impl StateMachine {
    /// The state machine of `dir`, from its snapshot if there is one.
    ///
    /// # Errors
    /// A snapshot file that cannot be read, is corrupt, or holds a map that fails its check.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("snapshot");
        let snapshot = read_snapshot(&path)?;
        let state = snapshot
            .as_ref()
            .map(|s| s.data.clone())
            .unwrap_or_default();
        let (published, _) = watch::channel(state.map.clone().map(Arc::new));
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                path,
                state,
                snapshot,
                built: 0,
            })),
            published: Arc::new(published),
        })
    }

    /// The current map and every change after it.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<ClusterMap>>> {
        self.published.subscribe()
    }

    /// The map as applied so far.
    pub fn map(&self) -> Option<Arc<ClusterMap>> {
        self.published.borrow().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, map: &Option<ClusterMap>) {
        let epoch = map.as_ref().map(|m| m.epoch);
        let unchanged = self.published.borrow().as_ref().map(|m| m.epoch) == epoch;
        if !unchanged {
            self.published.send_replace(map.clone().map(Arc::new));
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let mut inner = self.lock();
        inner.built += 1;
        let data = inner.state.clone();
        let snapshot_id = match data.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, inner.built),
            None => format!("--{}", inner.built),
        };
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        write_snapshot(&inner.path, &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.snapshot = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, RaftPeer>), StorageError> {
        let inner = self.lock();
        Ok((inner.state.last_applied, inner.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MapResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut responses = Vec::new();
        for entry in entries {
            inner.state.last_applied = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => MapResponse::Nothing,
                EntryPayload::Normal(command) => {
                    let response = apply(&mut inner.state.map, command);
                    if let MapResponse::Refused { reason } = &response {
                        tracing::info!(kind = command.kind(), %reason, index = entry.log_id.index, "map command refused");
                    }
                    response
                }
                EntryPayload::Membership(membership) => {
                    inner.state.membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    let voters = membership.voter_ids().collect();
                    apply_voters(&mut inner.state.map, &voters);
                    MapResponse::Nothing
                }
            };
            // Pair assertion: every map the state machine holds passed its check.
            debug_assert!(inner.state.map.as_ref().is_none_or(|m| m.check().is_ok()));
            responses.push(response);
        }
        let map = inner.state.map.clone();
        drop(inner);
        self.publish(&map);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<MapSnapshot>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<MapSnapshot>,
    ) -> Result<(), StorageError> {
        if let Some(map) = &snapshot.map
            && let Err(error) = map.check()
        {
            return Err(StorageIOError::read_snapshot(Some(meta.signature()), &error).into());
        }
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: *snapshot,
        };
        let mut inner = self.lock();
        write_snapshot(&inner.path, &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.state = stored.data.clone();
        inner.snapshot = Some(stored);
        let map = inner.state.map.clone();
        drop(inner);
        self.publish(&map);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.lock().snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(s.data.clone()),
        }))
    }
}
