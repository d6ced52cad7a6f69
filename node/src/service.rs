//! [`Node`]: answers requests from the current snapshot of hosted versions.

use crate::hosted::HostedVersion;
use arc_swap::ArcSwap;
use metrics::Counter;
use scoregrid_shard::{
    Directory, ModelVersion, Partition, SegmentQuery, TopK, kernel, score_segment,
};
use scoregrid_wire::message::{FILE_CHUNK_BYTES_MAX, PartitionFile, ReadPartition};
use scoregrid_wire::{
    CustomerProfile, FetchCustomer, NodeError, NodeId, ProductScore, Request, Response,
    ScoreProducts, ScoreProductsReply, ScoreSegments, ScoreSegmentsReply,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// The versions a node hosts. Replaced whole on every change (copy-on-write).
#[derive(Debug, Default, Clone)]
pub(crate) struct Hosted {
    pub(crate) versions: HashMap<ModelVersion, Arc<HostedVersion>>,
    /// The version new requests use; older hosted ones serve open cursors.
    pub(crate) active: Option<ModelVersion>,
    /// Versions that have been active, oldest activation first (retention drops from the
    /// front). A version staged complete but never activated is hosted and not in it.
    pub(crate) order: Vec<ModelVersion>,
}

/// Handles for the node's hot-path metrics, registered once (a registry lookup per request
/// would cost more than scoring a small list).
struct NodeMetrics {
    requests_fetch: Counter,
    requests_score_segments: Counter,
    requests_score_products: Counter,
    products_scored: Counter,
    segments_scored: Counter,
    segments_missing: Counter,
    errors: Counter,
    deadline_exceeded: Counter,
}

impl NodeMetrics {
    fn new(id: NodeId) -> Self {
        let node = id.to_string();
        let requests = |kind: &'static str| metrics::counter!("scoregrid_node_requests_total", "node" => node.clone(), "kind" => kind);
        Self {
            requests_fetch: requests("fetch_customer"),
            requests_score_segments: requests("score_segments"),
            requests_score_products: requests("score_products"),
            products_scored: metrics::counter!("scoregrid_node_products_scored_total", "node" => node.clone()),
            segments_scored: metrics::counter!("scoregrid_node_segments_scored_total", "node" => node.clone()),
            segments_missing: metrics::counter!("scoregrid_node_segments_missing_total", "node" => node.clone()),
            errors: metrics::counter!("scoregrid_node_errors_total", "node" => node.clone()),
            deadline_exceeded: metrics::counter!("scoregrid_node_deadline_exceeded_total", "node" => node),
        }
    }
}

pub struct Node {
    id: NodeId,
    pub(crate) hosted: ArcSwap<Hosted>,
    metrics: NodeMetrics,
    /// Staging, disk and retention: absent for a node that only serves what it is handed.
    pub(crate) control: Option<crate::control::Control>,
}

impl Node {
    /// A node that serves what [`Node::install`] hands it, from RAM only.
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            hosted: ArcSwap::from_pointee(Hosted::default()),
            metrics: NodeMetrics::new(id),
            control: None,
        }
    }

    /// A node with a data directory: it accepts staged versions, activates them, keeps them on
    /// disk, and restores the active one at start ([`Node::restore`]).
    pub fn with_control(id: NodeId, control: crate::control::Control) -> Self {
        Self {
            control: Some(control),
            ..Self::new(id)
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Starts serving `partitions` of the version `directory` describes, as the active version
    /// (replacing what this node held of it).
    ///
    /// # Errors
    /// When a partition does not belong to that version (see [`HostedVersion::new`]).
    pub fn install(
        &self,
        directory: Arc<Directory>,
        partitions: Vec<Partition>,
    ) -> Result<(), String> {
        let version = directory.version.clone();
        self.host(directory, partitions)?;
        self.make_active(&version);
        Ok(())
    }

    /// Serves `partitions` of the version `directory` describes to requests that name it,
    /// without making it the active one (a complete staged version, ready for the flip).
    ///
    /// # Errors
    /// As [`Node::install`].
    pub(crate) fn host(
        &self,
        directory: Arc<Directory>,
        partitions: Vec<Partition>,
    ) -> Result<(), String> {
        let version = directory.version.clone();
        let hosted = Arc::new(HostedVersion::new(directory, partitions)?);
        metrics::gauge!("scoregrid_node_vector_bytes", "node" => self.id.to_string(), "version" => version.to_string())
            .set(hosted.vector_bytes() as f64);
        self.hosted.rcu(|current| {
            let mut next = Hosted::clone(current);
            next.versions.insert(version.clone(), hosted.clone());
            next
        });
        tracing::info!(node = %self.id, %version, partitions = hosted.partitions().count(), "model version hosted");
        Ok(())
    }

    /// Makes a hosted version the one new requests use; it becomes the newest of the retained
    /// ones.
    pub(crate) fn make_active(&self, version: &ModelVersion) {
        self.hosted.rcu(|current| {
            let mut next = Hosted::clone(current);
            if next.versions.contains_key(version) {
                next.order.retain(|v| v != version);
                next.order.push(version.clone());
                next.active = Some(version.clone());
            }
            next
        });
        tracing::info!(node = %self.id, %version, "model version active");
    }

    /// Stops hosting `version`; requests already holding it finish first (they own an `Arc`).
    pub fn drop_version(&self, version: &ModelVersion) {
        self.hosted.rcu(|current| {
            let mut next = Hosted::clone(current);
            next.versions.remove(version);
            next.order.retain(|v| v != version);
            if next.active.as_ref() == Some(version) {
                next.active = None;
            }
            next
        });
    }

    pub fn active(&self) -> Option<ModelVersion> {
        self.hosted.load().active.clone()
    }

    /// Answers one request (no deadline: in-process callers and tests).
    pub fn handle(&self, request: Request) -> Response {
        self.handle_until(request, None)
    }

    /// Answers one request whose caller stops waiting at `deadline`: scoring that has not
    /// started by then is skipped ([`NodeError::DeadlineExceeded`]), since nobody would read it.
    pub fn handle_until(&self, request: Request, deadline: Option<Instant>) -> Response {
        let result = match request {
            Request::FetchCustomer(r) => self.fetch_customer(r).map(Response::Customer),
            Request::ScoreSegments(r) => self.score_segments(r, deadline).map(Response::Segments),
            Request::ScoreProducts(r) => self.score_products(r).map(Response::Products),
            Request::Status => Ok(Response::Status(self.status())),
            Request::FetchDirectory(v) => self
                .version(&v)
                .map(|h| Response::Directory(Box::new(Directory::clone(h.directory())))),
            Request::StageDirectory(d) => self.stage_directory(*d).map(|()| Response::Done),
            Request::StageChunk(chunk) => self.stage_chunk(chunk).map(|outcome| match outcome {
                Ok(staged) => Response::Staged(staged),
                Err(received) => Response::StageProgress { received },
            }),
            Request::StagedInventory(v) => self.inventory(&v).map(Response::Inventory),
            Request::Activate(v) => self.activate(&v).map(|()| Response::Done),
            Request::ReadPartition(r) => self.read_partition(&r).map(Response::PartitionFile),
            Request::Raft(_) | Request::Cluster(_) => Err(NodeError::Refused(
                "this node takes no part in Raft (in-process node)".into(),
            )),
        };
        result.unwrap_or_else(|error| {
            self.metrics.errors.increment(1);
            tracing::debug!(node = %self.id, %error, "request refused");
            Response::Error(error)
        })
    }

    fn read_partition(&self, request: &ReadPartition) -> Result<PartitionFile, NodeError> {
        let hosted = self.version(&request.version)?;
        let partition = hosted.partition(request.partition).ok_or_else(|| {
            NodeError::BadRequest(format!(
                "partition {} of {} is not held here",
                request.partition, request.version
            ))
        })?;
        let length = request.length.min(FILE_CHUNK_BYTES_MAX);
        if let Some(control) = self.control.as_ref() {
            let (bytes, file_bytes) = control
                .store
                .read_range(&request.version, request.partition, request.offset, length)
                .map_err(crate::control::storage)?;
            return Ok(PartitionFile { bytes, file_bytes });
        }
        // A node without a data directory encodes what it serves.
        let encoded = scoregrid_shard::file::encode(partition).bytes;
        let file_bytes = encoded.len() as u64;
        let start = request.offset.min(file_bytes) as usize;
        let end = (start + length as usize).min(encoded.len());
        Ok(PartitionFile {
            bytes: encoded[start..end].to_vec(),
            file_bytes,
        })
    }

    pub(crate) fn version(&self, version: &ModelVersion) -> Result<Arc<HostedVersion>, NodeError> {
        self.hosted
            .load()
            .versions
            .get(version)
            .cloned()
            .ok_or_else(|| NodeError::UnknownVersion(version.clone()))
    }

    fn fetch_customer(&self, request: FetchCustomer) -> Result<Option<CustomerProfile>, NodeError> {
        self.metrics.requests_fetch.increment(1);
        let hosted = self.version(&request.version)?;
        let partition = hosted.customer_partition(request.customer).ok_or_else(|| {
            NodeError::BadRequest(format!(
                "customer {} is not in a partition hosted here",
                request.customer
            ))
        })?;
        Ok(partition
            .customers()
            .get(request.customer)
            .map(|c| CustomerProfile {
                vector: c.vector.to_vec(),
                category_ids: c.category_ids.to_vec(),
                category_weights: c.category_weights.to_vec(),
            }))
    }

    fn score_segments(
        &self,
        request: ScoreSegments,
        deadline: Option<Instant>,
    ) -> Result<ScoreSegmentsReply, NodeError> {
        self.metrics.requests_score_segments.increment(1);
        let hosted = self.version(&request.version)?;
        check_scoring_bounds(&request)?;
        if let Some(v) = &request.vector
            && v.len() != hosted.dim()
        {
            return Err(NodeError::BadRequest(format!(
                "vector has {} values, the model {}",
                v.len(),
                hosted.dim()
            )));
        }
        let mut top = TopK::new(request.k as usize);
        let mut missing = Vec::new();
        let mut scored = 0u64;
        let mut segments = 0u64;
        for take in &request.segments {
            // A late answer is thrown away by the router: stop as soon as it would be late.
            if deadline.is_some_and(|at| Instant::now() >= at) {
                self.metrics.deadline_exceeded.increment(1);
                return Err(NodeError::DeadlineExceeded);
            }
            let Some(segment) = hosted.segment(take.key) else {
                missing.push(take.key);
                continue;
            };
            let query = SegmentQuery {
                vector: request.vector.as_deref(),
                affinities: &request.affinities,
                weights: request.weights,
                category: request.category,
                take: take.take,
                after: request.after,
            };
            scored += u64::from(score_segment(segment, &query, &mut top));
            segments += 1;
        }
        self.metrics.products_scored.increment(scored);
        self.metrics.segments_scored.increment(segments);
        self.metrics
            .segments_missing
            .increment(missing.len() as u64);
        Ok(ScoreSegmentsReply {
            items: top.into_sorted(),
            missing,
            scored,
        })
    }

    fn score_products(&self, request: ScoreProducts) -> Result<ScoreProductsReply, NodeError> {
        self.metrics.requests_score_products.increment(1);
        let hosted = self.version(&request.version)?;
        if request.products.len() > PRODUCTS_PER_CALL_MAX {
            return Err(NodeError::BadRequest(format!(
                "{} products in one call, at most {PRODUCTS_PER_CALL_MAX}",
                request.products.len()
            )));
        }
        if request.vector.len() != hosted.dim() {
            return Err(NodeError::BadRequest(format!(
                "vector has {} values, the model {}",
                request.vector.len(),
                hosted.dim()
            )));
        }
        let mut reply = ScoreProductsReply {
            scores: Vec::with_capacity(request.products.len()),
            missing: Vec::new(),
        };
        for &product in &request.products {
            let score = hosted
                .product_partition(product)
                .and_then(|p| p.products().get(product))
                .map(|p| kernel::dot(&request.vector, p.vector));
            match score {
                Some(score) => reply.scores.push(ProductScore { product, score }),
                None => reply.missing.push(product),
            }
        }
        self.metrics
            .products_scored
            .increment(reply.scores.len() as u64);
        Ok(reply)
    }
}

/// Segments one `ScoreSegments` call may name: a pool of 10M products in segments of 4096 is
/// ~2,500; anything far above is not a request the router makes.
pub const SEGMENTS_PER_CALL_MAX: usize = 1 << 16;
/// Products one `ScoreProducts` call may name (the router sends at most `api.score_products_max`,
/// itself at most 1M).
pub const PRODUCTS_PER_CALL_MAX: usize = 1 << 20;

/// The bounds of a decoded `ScoreSegments` that the scoring relies on: a count of segments, a
/// `k` and a vector of finite values (a NaN would make the ranking meaningless).
fn check_scoring_bounds(request: &ScoreSegments) -> Result<(), NodeError> {
    if request.segments.len() > SEGMENTS_PER_CALL_MAX {
        return Err(NodeError::BadRequest(format!(
            "{} segments in one call, at most {SEGMENTS_PER_CALL_MAX}",
            request.segments.len()
        )));
    }
    if request.k == 0 || request.k as usize > TopK::K_MAX {
        return Err(NodeError::BadRequest(format!(
            "k = {} is outside 1..={}",
            request.k,
            TopK::K_MAX
        )));
    }
    if let Some(v) = &request.vector
        && let Some(x) = v.iter().find(|x| !x.is_finite())
    {
        return Err(NodeError::BadRequest(format!(
            "the customer vector holds {x}, not a finite number"
        )));
    }
    if !request.weights.affinity.is_finite() || !request.weights.pool.is_finite() {
        return Err(NodeError::BadRequest(
            "scoring weights must be finite numbers".into(),
        ));
    }
    Ok(())
}
