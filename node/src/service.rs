//! [`Node`]: answers requests from the current snapshot of hosted versions.

use crate::hosted::HostedVersion;
use arc_swap::ArcSwap;
use metrics::Counter;
use scoregrid_shard::{
    ModelVersion, Partition, PartitionCount, SegmentQuery, TopK, kernel, score_segment,
};
use scoregrid_wire::{
    CustomerProfile, FetchCustomer, NodeError, NodeId, ProductScore, Request, Response,
    ScoreProducts, ScoreProductsReply, ScoreSegments, ScoreSegmentsReply,
};
use std::collections::HashMap;
use std::sync::Arc;

/// The versions a node hosts. Replaced whole on every change (copy-on-write).
#[derive(Debug, Default)]
struct Hosted {
    versions: HashMap<ModelVersion, Arc<HostedVersion>>,
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
            errors: metrics::counter!("scoregrid_node_errors_total", "node" => node),
        }
    }
}

pub struct Node {
    id: NodeId,
    hosted: ArcSwap<Hosted>,
    metrics: NodeMetrics,
}

/// What a node holds, for `/v1/cluster` and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStats {
    pub id: NodeId,
    pub versions: Vec<(
        ModelVersion,
        usize, /* partitions */
        usize, /* vector bytes */
    )>,
}

impl Node {
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            hosted: ArcSwap::from_pointee(Hosted::default()),
            metrics: NodeMetrics::new(id),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Starts hosting `partitions` of `version` (replacing what this node held of it).
    pub fn install(
        &self,
        version: ModelVersion,
        dim: usize,
        partition_count: PartitionCount,
        partitions: Vec<Partition>,
    ) {
        let hosted = Arc::new(HostedVersion::new(
            version.clone(),
            dim,
            partition_count,
            partitions,
        ));
        metrics::gauge!("scoregrid_node_vector_bytes", "node" => self.id.to_string(), "version" => version.to_string())
            .set(hosted.vector_bytes() as f64);
        self.hosted.rcu(|current| {
            let mut versions = current.versions.clone();
            versions.insert(version.clone(), hosted.clone());
            Hosted { versions }
        });
        tracing::info!(node = %self.id, %version, partitions = hosted.partitions().count(), "model version installed");
    }

    /// Stops hosting `version`; requests already holding it finish first (they own an `Arc`).
    pub fn drop_version(&self, version: &ModelVersion) {
        self.hosted.rcu(|current| {
            let mut versions = current.versions.clone();
            versions.remove(version);
            Hosted { versions }
        });
    }

    pub fn stats(&self) -> NodeStats {
        let hosted = self.hosted.load();
        let mut versions: Vec<_> = hosted
            .versions
            .values()
            .map(|h| {
                (
                    h.version().clone(),
                    h.partitions().count(),
                    h.vector_bytes(),
                )
            })
            .collect();
        versions.sort();
        NodeStats {
            id: self.id,
            versions,
        }
    }

    /// Answers one request.
    pub fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::FetchCustomer(r) => self.fetch_customer(r).map(Response::Customer),
            Request::ScoreSegments(r) => self.score_segments(r).map(Response::Segments),
            Request::ScoreProducts(r) => self.score_products(r).map(Response::Products),
        };
        result.unwrap_or_else(|error| {
            self.metrics.errors.increment(1);
            tracing::debug!(node = %self.id, %error, "request refused");
            Response::Error(error)
        })
    }

    fn version(&self, version: &ModelVersion) -> Result<Arc<HostedVersion>, NodeError> {
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

    fn score_segments(&self, request: ScoreSegments) -> Result<ScoreSegmentsReply, NodeError> {
        self.metrics.requests_score_segments.increment(1);
        let hosted = self.version(&request.version)?;
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
