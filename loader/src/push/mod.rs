//! Pushing a model version into a running cluster through its map (`scoregrid load`).
//!
//! ```text
//! RegisterModel(V, digest, checksums)            one committed change: V is staging
//! round: read the map -> ask each node what it has of V (a rerun skips it)
//!        -> stream each missing partition to each replica that is not down, in pieces
//!        -> ReportStaged(V, node, partitions)    what each node confirmed, checksums compared
//!        -> the directory to every node          (last: a node completes V when it arrives)
//! ActivateModel(V)                               one committed change, accepted only when the
//!                                                reports cover the placement: else next round
//! ```
//!
//! The map's checks make the flip safe whatever happens meanwhile: a node that dies is marked
//! down and no longer waited for, a node that joins or a placement that changes shows up as
//! copies still missing in the next round, and a load that gives up leaves the active version
//! serving and V staging, for a rerun to finish. Memory in flight per node is bounded by
//! `parallelism` pieces of `chunk_bytes`, each acknowledged by the node before the next is sent.

mod copy;
mod progress;

pub use progress::ProgressMode;

use crate::spool::SpooledModel;
use copy::{Body, Copy, EncodedFile, Pacer, gone};
use futures_util::StreamExt;
use progress::Progress;
use scoregrid_raft::client::{ClientError, ClusterClient};
use scoregrid_raft::models::missing_copies;
use scoregrid_raft::protocol::ClusterError;
use scoregrid_raft::{ClusterMap, Epoch, MapCommand, MapResponse, ModelState, NodeState};
use scoregrid_shard::file::encode;
use scoregrid_shard::{BuiltModel, Directory, ModelVersion, PartitionId};
use scoregrid_wire::admin::AdminCalls;
use scoregrid_wire::message::FILE_CHUNK_BYTES_MAX;
use scoregrid_wire::{ClientEndpoint, NodeClient, NodeId, QuicClient, Role};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Staged copies reported to the map in one command.
const REPORT_BATCH: usize = 128;

/// How a push runs (`[load]` in the configuration).
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Flip the cluster to the version once it is staged everywhere.
    pub activate: bool,
    /// Partition copies in flight to each node at once.
    pub parallelism: usize,
    /// Bytes of one piece of a partition file on the wire.
    pub chunk_bytes: u32,
    /// Rounds of staging (each re-reads the map) before giving up.
    pub rounds: u32,
    /// Bytes sent per second over all nodes at most; 0: as fast as the nodes take them.
    pub bytes_per_second: u64,
    pub progress: ProgressMode,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            activate: true,
            parallelism: 2,
            chunk_bytes: 1 << 20,
            rounds: 5,
            bytes_per_second: 0,
            progress: ProgressMode::Auto,
        }
    }
}

/// What one node received.
#[derive(Clone, Debug, Default)]
pub struct NodeReport {
    pub copies: u64,
    pub bytes: u64,
    /// From its first piece to its last confirmation.
    pub seconds: f64,
}

/// What a push did.
#[derive(Clone, Debug, Default)]
pub struct PushReport {
    pub version: Option<ModelVersion>,
    pub partitions: u32,
    pub customers: u64,
    pub products: u64,
    /// Partition copies sent and confirmed.
    pub copies: u64,
    /// Copies a node had already (a rerun, or a node restarted mid-load): not sent again.
    pub resumed: u64,
    /// Replicas on nodes the map says are down: they fetch the version when they return.
    pub skipped_down: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub per_node: BTreeMap<NodeId, NodeReport>,
    /// The epoch of the flip, when the version was activated.
    pub activated: Option<Epoch>,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Cluster(#[from] ClientError),
    #[error("the cluster has no map yet (not bootstrapped): nothing to load into")]
    NoMap,
    #[error(
        "no quorum: node {node} has no contact with a quorum; its map (epoch {epoch}) may be stale"
    )]
    Stale { node: NodeId, epoch: Epoch },
    #[error(
        "no quorum: node {node} has not applied this load's own change (epoch {wanted}) in time; its map is at epoch {epoch}: it may be cut off from the leader"
    )]
    Behind {
        node: NodeId,
        epoch: Epoch,
        wanted: Epoch,
    },
    #[error(
        "the model was cut into {model} partitions, the cluster has {cluster}: set placement.partitions to {cluster}"
    )]
    Partitions { model: u32, cluster: u32 },
    #[error(
        "model version {version} was activated and then retired by a flip to another version; `scoregrid model activate {version}` flips back to it"
    )]
    Retired { version: ModelVersion },
    #[error("model version {version} left the map during the load (dropped?)")]
    Vanished { version: ModelVersion },
    #[error(
        "model version {version} is not staged everywhere after {rounds} rounds; the active version keeps serving and a rerun resumes: {detail}"
    )]
    Incomplete {
        version: ModelVersion,
        rounds: u32,
        detail: String,
    },
    #[error("push options: {0}")]
    Options(String),
}

impl PushError {
    /// The command line's exit code: 3 when the cluster has no reachable quorum, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            PushError::Cluster(error) => error.exit_code(),
            PushError::Stale { .. } | PushError::Behind { .. } => 3,
            _ => 1,
        }
    }
}

/// The state of one push shared by its tasks.
struct Push<'a> {
    client: &'a ClusterClient,
    endpoint: &'a ClientEndpoint,
    version: ModelVersion,
    files: Vec<EncodedFile>,
    directory: Directory,
    options: PushOptions,
    progress: Progress,
    pacer: Option<Pacer>,
    report: Mutex<PushReport>,
    /// The epoch of this load's last map change (its registration, its staging reports):
    /// the maps it reads must hold it.
    last_change: AtomicU64,
}

/// A version ready to push: its directory and its encoded partition files, in RAM or in a
/// spool folder ([`crate::spool`]).
pub struct PushModel {
    directory: Directory,
    files: Vec<EncodedFile>,
    customers: u64,
    products: u64,
    /// Keeps the spool folder until the push is done.
    _spool: Option<SpooledModel>,
}

impl PushModel {
    /// A version built in RAM: each partition is encoded and dropped, the files taking its
    /// place.
    ///
    /// # Errors
    /// [`PushError::Options`] if the model does not hold exactly one of each partition.
    pub fn in_memory(built: BuiltModel) -> Result<Self, PushError> {
        let BuiltModel {
            partitions,
            directory,
        } = built;
        let (mut customers, mut products) = (0, 0);
        let mut files: Vec<(PartitionId, EncodedFile)> = partitions
            .into_iter()
            .map(|p| {
                customers += p.customers().len() as u64;
                products += p.products().len() as u64;
                let encoded = encode(&p);
                let file = EncodedFile {
                    bytes: encoded.bytes.len() as u64,
                    checksum: encoded.checksum,
                    body: Body::Memory(Arc::from(encoded.bytes)),
                };
                (p.id(), file)
            })
            .collect();
        files.sort_by_key(|(id, _)| *id);
        let in_order = files.len() == directory.partitions.get() as usize
            && files.iter().enumerate().all(|(i, (id, _))| id.index() == i);
        if !in_order {
            return Err(PushError::Options(
                "the built model does not hold exactly one of each partition".into(),
            ));
        }
        Ok(Self {
            directory,
            files: files.into_iter().map(|(_, f)| f).collect(),
            customers,
            products,
            _spool: None,
        })
    }

    /// A version built into a spool folder: pieces are read from its files as they are sent.
    ///
    /// # Errors
    /// [`PushError::Options`] if the spool does not hold exactly one file per partition.
    pub fn spooled(spooled: SpooledModel) -> Result<Self, PushError> {
        if spooled.files.len() != spooled.directory.partitions.get() as usize {
            return Err(PushError::Options(
                "the spool does not hold exactly one file per partition".into(),
            ));
        }
        Ok(Self {
            directory: spooled.directory.clone(),
            files: spooled
                .files
                .iter()
                .map(|f| EncodedFile {
                    body: Body::Disk(f.path.clone()),
                    bytes: f.bytes,
                    checksum: f.checksum,
                })
                .collect(),
            customers: spooled.customers,
            products: spooled.products,
            _spool: Some(spooled),
        })
    }
}

/// Registers `model` in the cluster `client` reaches, stages it on every replica, and (with
/// `options.activate`) flips the cluster to it. See the module docs.
///
/// # Errors
/// [`PushError`]; the active version is untouched by every one of them.
pub async fn push(
    model: PushModel,
    client: &ClusterClient,
    endpoint: &ClientEndpoint,
    options: PushOptions,
) -> Result<PushReport, PushError> {
    if options.parallelism == 0 || options.rounds == 0 {
        return Err(PushError::Options(
            "parallelism and rounds must be at least 1".into(),
        ));
    }
    if options.chunk_bytes == 0 || options.chunk_bytes > FILE_CHUNK_BYTES_MAX {
        return Err(PushError::Options(format!(
            "chunk_bytes must be 1..={FILE_CHUNK_BYTES_MAX}, found {}",
            options.chunk_bytes
        )));
    }
    let started = Instant::now();
    let map = current_map(client, Epoch(0)).await?;
    let client = &client.with_nodes_of(endpoint, &map);
    let PushModel {
        directory,
        files,
        customers,
        products,
        _spool,
    } = model;
    if map.placement.partitions() != directory.partitions {
        return Err(PushError::Partitions {
            model: directory.partitions.get(),
            cluster: map.placement.partitions().get(),
        });
    }
    let report = PushReport {
        version: Some(directory.version.clone()),
        partitions: directory.partitions.get(),
        customers,
        products,
        ..PushReport::default()
    };
    let push = Push {
        client,
        endpoint,
        version: directory.version.clone(),
        files,
        directory,
        progress: Progress::new(options.progress),
        pacer: Pacer::new(options.bytes_per_second),
        options,
        report: Mutex::new(report),
        last_change: AtomicU64::new(0),
    };
    let result = push.run().await;
    push.progress.finish();
    let mut report = push
        .report
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    report.seconds = started.elapsed().as_secs_f64();
    report.activated = result?;
    drop(_spool);
    Ok(report)
}

/// The map as a node knows it, once that node has applied epoch `at_least` (the load's own
/// last change: a follower applies a committed change some time after the leader answered).
async fn current_map(client: &ClusterClient, at_least: Epoch) -> Result<ClusterMap, PushError> {
    let view = if at_least == Epoch(0) {
        client.map().await?
    } else {
        client.map_at_least(at_least).await?
    };
    let Some(map) = view.map else {
        return Err(PushError::NoMap);
    };
    if map.epoch < at_least {
        return Err(PushError::Behind {
            node: view.source,
            epoch: map.epoch,
            wanted: at_least,
        });
    }
    if view.stale {
        return Err(PushError::Stale {
            node: view.source,
            epoch: map.epoch,
        });
    }
    Ok(map)
}

fn is_incomplete(error: &ClientError) -> bool {
    matches!(error, ClientError::Cluster(ClusterError::Refused(reason)) if reason.contains("not staged everywhere"))
}

impl Push<'_> {
    async fn run(&self) -> Result<Option<Epoch>, PushError> {
        let command = MapCommand::RegisterModel {
            version: self.version.clone(),
            digest: self.directory.digest(),
            checksums: self.files.iter().map(|f| f.checksum).collect(),
        };
        match self.client.propose(command, Role::Loader).await? {
            MapResponse::Applied { epoch } | MapResponse::Unchanged { epoch } => {
                self.last_change.fetch_max(epoch.0, Ordering::Relaxed);
            }
            MapResponse::Refused { reason } => {
                return Err(ClientError::Cluster(ClusterError::Refused(reason)).into());
            }
            MapResponse::Nothing => {}
        }
        let mut detail = String::new();
        for round in 1..=self.options.rounds {
            let map = self.map().await?;
            self.endpoint.clock().set_own(map.epoch.0);
            let Some(record) = map.model(&self.version) else {
                return Err(PushError::Vanished {
                    version: self.version.clone(),
                });
            };
            match record.state {
                ModelState::Staging => {}
                // Activated meanwhile (by another loader, an operator, or an earlier run of
                // this load whose outcome was not known): nothing left to do.
                ModelState::Active => return Ok(None),
                ModelState::Retired => {
                    return Err(PushError::Retired {
                        version: self.version.clone(),
                    });
                }
            }
            let failures = self.stage_round(&map, round).await?;
            if self.options.activate {
                let activate = MapCommand::ActivateModel {
                    version: self.version.clone(),
                };
                match self.client.propose(activate, Role::Loader).await {
                    Ok(MapResponse::Applied { epoch } | MapResponse::Unchanged { epoch }) => {
                        tracing::info!(version = %self.version, %epoch, "model version active cluster-wide");
                        return Ok(Some(epoch));
                    }
                    Ok(_) => return Ok(None),
                    Err(error) if is_incomplete(&error) => detail = error.to_string(),
                    Err(error) => return Err(error.into()),
                }
            } else {
                let map = self.map().await?;
                let missing = map
                    .model(&self.version)
                    .map(|record| missing_copies(&map, record).len())
                    .unwrap_or(0);
                if missing == 0 {
                    return Ok(None);
                }
                detail = format!("{missing} partition copies missing");
            }
            if !failures.is_empty() {
                detail = format!(
                    "{detail}; {} copies failed this round, first: {}",
                    failures.len(),
                    failures[..failures.len().min(3)].join("; ")
                );
            }
            tracing::warn!(version = %self.version, round, %detail, "not staged everywhere yet; another round");
            tokio::time::sleep(Duration::from_millis(500 * u64::from(round))).await;
        }
        Err(PushError::Incomplete {
            version: self.version.clone(),
            rounds: self.options.rounds,
            detail,
        })
    }

    /// One round: what every node lacks, sent and reported; then the directories. Returns
    /// the copies that failed, described.
    async fn stage_round(&self, map: &ClusterMap, round: u32) -> Result<Vec<String>, PushError> {
        let Some(record) = map.model(&self.version) else {
            return Ok(Vec::new());
        };
        let clients = node_clients(map, self.endpoint);
        let holders: Vec<NodeId> = map
            .nodes
            .iter()
            .filter(|n| n.state != NodeState::Down && !map.partitions_of(n.id).is_empty())
            .map(|n| n.id)
            .collect();
        // What each node has already; matching copies are reported, not sent.
        let mut plan: BTreeMap<NodeId, Vec<PartitionId>> = BTreeMap::new();
        let mut failures = Vec::new();
        for &node in &holders {
            let Some(client) = clients.get(&node) else {
                continue;
            };
            let have: HashMap<PartitionId, u32> =
                match client.staged_inventory(self.version.clone()).await {
                    Ok(inventory) => inventory.partitions.into_iter().collect(),
                    Err(error) => {
                        failures.push(format!("{node}: {error}"));
                        continue;
                    }
                };
            let (mut known, mut send, mut reported) = (Vec::new(), Vec::new(), 0u64);
            for p in map.partitions_of(node) {
                if record.is_staged(node, p) {
                    reported += 1;
                    continue;
                }
                match have.get(&p) {
                    Some(&sum) if sum == self.files[p.index()].checksum => known.push(p),
                    _ => send.push(p),
                }
            }
            if round == 1
                && let Ok(mut r) = self.report.lock()
            {
                // Copies staged before this load started (a rerun): not sent again.
                r.resumed += reported + known.len() as u64;
            }
            if !known.is_empty() {
                self.report_staged(node, &known).await?;
            }
            plan.insert(node, send);
        }
        if round == 1
            && let Ok(mut r) = self.report.lock()
        {
            r.skipped_down = map
                .nodes
                .iter()
                .filter(|n| n.state == NodeState::Down)
                .map(|n| map.partitions_of(n.id).len() as u64)
                .sum();
        }
        let (copies, bytes) = plan.values().flatten().fold((0u64, 0u64), |(c, b), p| {
            (c + 1, b + self.files[p.index()].bytes)
        });
        self.progress.plan(copies, bytes);
        tracing::info!(version = %self.version, round, copies, mib = bytes / (1 << 20), nodes = plan.len(), "staging round");
        let lanes = plan.into_iter().filter_map(|(node, partitions)| {
            let client = clients.get(&node)?.clone();
            Some(self.stage_on(node, client, partitions))
        });
        for lane in futures_util::future::join_all(lanes).await {
            failures.extend(lane?);
        }
        for &node in &holders {
            let Some(client) = clients.get(&node) else {
                continue;
            };
            if let Err(error) = client.stage_directory(self.directory.clone()).await {
                failures.push(format!("the directory on {node}: {error}"));
            }
        }
        Ok(failures)
    }

    /// Sends `partitions` to `node`, `parallelism` copies at a time, and reports what it
    /// confirmed. Returns the copies that failed.
    async fn stage_on(
        &self,
        node: NodeId,
        client: Arc<dyn NodeClient>,
        partitions: Vec<PartitionId>,
    ) -> Result<Vec<String>, PushError> {
        let started = Instant::now();
        let chunk = self.options.chunk_bytes as usize;
        let unreachable = AtomicBool::new(false);
        let unreachable = &unreachable;
        let mut sends = futures_util::stream::iter(partitions)
            .map(|p| {
                let client = client.clone();
                async move {
                    let file = &self.files[p.index()];
                    let sent = if unreachable.load(Ordering::Relaxed) {
                        Err("not sent: the node did not answer".to_owned())
                    } else {
                        let sent = Copy {
                            client: client.as_ref(),
                            version: &self.version,
                            partition: p,
                            file,
                            chunk_bytes: chunk,
                            progress: &self.progress,
                            pacer: self.pacer.as_ref(),
                        }
                        .send()
                        .await;
                        sent.map_err(|error| {
                            if gone(&error) {
                                unreachable.store(true, Ordering::Relaxed);
                            }
                            error.to_string()
                        })
                    };
                    (p, file.bytes, sent)
                }
            })
            .buffer_unordered(self.options.parallelism);
        let (mut pending, mut failures) = (Vec::new(), Vec::new());
        while let Some((p, bytes, sent)) = sends.next().await {
            match sent {
                Ok(()) => {
                    self.progress.copy_done();
                    if let Ok(mut r) = self.report.lock() {
                        r.copies += 1;
                        r.bytes += bytes;
                        let n = r.per_node.entry(node).or_default();
                        n.copies += 1;
                        n.bytes += bytes;
                        n.seconds = started.elapsed().as_secs_f64();
                    }
                    pending.push(p);
                    if pending.len() >= REPORT_BATCH {
                        self.report_staged(node, &std::mem::take(&mut pending))
                            .await?;
                    }
                }
                Err(error) => {
                    if failures.is_empty() {
                        tracing::warn!(%node, partition = %p, version = %self.version, %error, "partition copy failed");
                    }
                    failures.push(format!("{p} on {node}: {error}"));
                }
            }
        }
        if !pending.is_empty() {
            self.report_staged(node, &pending).await?;
        }
        Ok(failures)
    }

    async fn report_staged(
        &self,
        node: NodeId,
        partitions: &[PartitionId],
    ) -> Result<(), PushError> {
        let command = MapCommand::ReportStaged {
            version: self.version.clone(),
            node,
            partitions: partitions
                .iter()
                .map(|&p| (p, self.files[p.index()].checksum))
                .collect(),
        };
        if let MapResponse::Applied { epoch } | MapResponse::Unchanged { epoch } =
            self.client.propose(command, Role::Loader).await?
        {
            self.last_change.fetch_max(epoch.0, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The map once it holds this load's last change.
    async fn map(&self) -> Result<ClusterMap, PushError> {
        current_map(self.client, Epoch(self.last_change.load(Ordering::Relaxed))).await
    }
}

/// Clients to every node of `map`, on `endpoint`.
fn node_clients(
    map: &ClusterMap,
    endpoint: &ClientEndpoint,
) -> HashMap<NodeId, Arc<dyn NodeClient>> {
    map.nodes
        .iter()
        .filter_map(|n| {
            let addr: SocketAddr = n.address.parse().ok()?;
            let client = QuicClient::with_endpoint(endpoint, n.id, addr, n.name.clone()).ok()?;
            Some((n.id, Arc::new(client) as Arc<dyn NodeClient>))
        })
        .collect()
}
