//! The request logic, independent of HTTP: pin a version, fetch the customer from a replica of
//! its partition, send one `ScoreSegments` per node holding needed segments, fail over to other
//! replicas, merge, and account for what could not be answered.

use crate::cursor::Cursor;
use crate::error::ApiError;
use crate::params::RecommendParams;
use crate::state::{ClusterView, RouterState};
use crate::telemetry;
use futures_util::future::join_all;
use scoregrid_shard::hashing::{
    mix64, partition_of_customer, partition_of_product, partition_of_segment,
};
use scoregrid_shard::{
    CategoryId, ContainerEntry, CustomerId, ModelVersion, PartitionId, ProductId, RankedItem,
    ScoringWeights, SegmentKey, merge_ranked,
};
use scoregrid_wire::{
    CustomerProfile, FetchCustomer, NodeId, ProductScore, RpcError, ScoreProducts, ScoreSegments,
    SegmentTake,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, timeout_at};

/// What part of the pool answered. `answered < segments` means a partial answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    pub segments: u32,
    pub answered: u32,
    /// Why some segments did not answer (`timeout`, `unreachable`, `stale_map`, `node_error`).
    pub degraded: BTreeSet<&'static str>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Recommendation {
    pub version: ModelVersion,
    pub personalized: bool,
    pub items: Vec<RankedItem>,
    pub next_cursor: Option<String>,
    pub coverage: Coverage,
}

impl RouterState {
    fn weights(&self) -> ScoringWeights {
        ScoringWeights {
            affinity: self.config.scoring.w_affinity,
            pool: self.config.scoring.w_pool,
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.router.request_deadline_ms)
    }

    fn current_view(&self) -> Result<Arc<ClusterView>, ApiError> {
        self.view()
            .ok_or_else(|| ApiError::unavailable("the router has no cluster map yet"))
    }

    /// `GET /v1/recommend`.
    ///
    /// # Errors
    /// 400 for a bad or mismatched cursor, 404 for an unknown container, 503 when no model is
    /// active or the customer's partition cannot be reached.
    pub async fn recommend(&self, params: RecommendParams) -> Result<Recommendation, ApiError> {
        let view = self.current_view()?;
        let cursor = match &params.cursor {
            Some(token) => {
                let cursor =
                    Cursor::decode(token).map_err(|e| ApiError::bad_cursor(e.to_string()))?;
                cursor
                    .check_matches(
                        params.customer,
                        params.container,
                        params.category,
                        params.candidates,
                    )
                    .map_err(|e| ApiError::bad_cursor(e.to_string()))?;
                Some(cursor)
            }
            None => None,
        };
        let (version, directory) = match &cursor {
            Some(c) => {
                let directory = view.directories.get(&c.version).ok_or_else(|| {
                    ApiError::bad_cursor(format!(
                        "the cursor's model version {} is no longer retained; start again without a cursor",
                        c.version
                    ))
                })?;
                (c.version.clone(), directory.clone())
            }
            None => {
                let (v, d) = view.active().ok_or_else(ApiError::no_model)?;
                (v.clone(), d.clone())
            }
        };
        let entry = directory
            .container(params.container)
            .ok_or_else(|| ApiError::unknown_container(params.container))?;
        let deadline = self.deadline();

        let started = Instant::now();
        let profile = fetch_customer(&view, &version, params.customer, deadline).await?;
        metrics::histogram!(telemetry::STAGE_DURATION, "stage" => "customer")
            .record(started.elapsed().as_secs_f64());

        let started = Instant::now();
        let k = params.limit as usize + 1;
        let request = ScoreSegments {
            version: version.clone(),
            affinities: profile
                .as_ref()
                .map(CustomerProfile::affinities)
                .unwrap_or_default(),
            vector: profile.map(|p| p.vector),
            weights: self.weights(),
            category: params.category,
            segments: Vec::new(),
            k: k as u32,
            after: cursor.map(|c| c.after),
        };
        let personalized = request.vector.is_some();
        let plan = segment_plan(entry, params.container, params.category, params.candidates);
        let gathered = gather(&view, request, &plan, params.customer, deadline).await;
        metrics::histogram!(telemetry::STAGE_DURATION, "stage" => "score")
            .record(started.elapsed().as_secs_f64());

        let started = Instant::now();
        let mut items = merge_ranked(&gathered.lists, k);
        let next_cursor = if items.len() > params.limit as usize {
            items.truncate(params.limit as usize);
            items.last().map(|last| {
                Cursor {
                    version: version.clone(),
                    customer: params.customer,
                    container: params.container,
                    category: params.category,
                    candidates: params.candidates,
                    after: last.key(),
                }
                .encode()
            })
        } else {
            None
        };
        metrics::histogram!(telemetry::STAGE_DURATION, "stage" => "merge")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(telemetry::ITEMS_RETURNED).increment(items.len() as u64);
        if gathered.coverage.answered < gathered.coverage.segments {
            metrics::counter!(telemetry::PARTIAL_ANSWERS).increment(1);
        }
        Ok(Recommendation {
            version,
            personalized,
            items,
            next_cursor,
            coverage: gathered.coverage,
        })
    }

    /// `POST /v1/score`: the CF stage alone, in the order of `products`.
    ///
    /// # Errors
    /// 404 for an unknown customer, 503 when no model is active or a product's partition
    /// cannot be reached on any replica.
    pub async fn score_products(
        &self,
        customer: CustomerId,
        products: Vec<ProductId>,
    ) -> Result<(Vec<ProductScore>, Vec<ProductId>), ApiError> {
        let view = self.current_view()?;
        let (version, _) = view.active().ok_or_else(ApiError::no_model)?;
        let version = version.clone();
        let deadline = self.deadline();
        let profile = fetch_customer(&view, &version, customer, deadline)
            .await?
            .ok_or_else(|| ApiError::unknown_customer(customer))?;
        let partitions = view.map.placement.partitions();
        let mut groups: HashMap<PartitionId, Vec<ProductId>> = HashMap::new();
        for &p in &products {
            groups
                .entry(partition_of_product(p, partitions))
                .or_default()
                .push(p);
        }
        let calls = groups.into_iter().map(|(partition, ids)| {
            let request = ScoreProducts {
                version: version.clone(),
                vector: profile.vector.clone(),
                products: ids,
            };
            let view = &view;
            async move {
                let mut errors = Vec::new();
                for node in view.map.placement.replicas(partition) {
                    let Some(routee) = view.routees.get(node) else {
                        continue;
                    };
                    let result =
                        timeout_at(deadline, routee.client.score_products(request.clone()))
                            .await
                            .unwrap_or(Err(RpcError::Timeout(*node)));
                    routee.record(result.as_ref().map(|_| ()));
                    match result {
                        Ok(reply) => return Ok(reply),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                Err(ApiError::unavailable(format!(
                    "partition {partition} could not be reached: {}",
                    errors.join("; ")
                )))
            }
        });
        let mut scores: HashMap<ProductId, f32> = HashMap::with_capacity(products.len());
        for reply in join_all(calls).await {
            for s in reply?.scores {
                scores.insert(s.product, s.score);
            }
        }
        let mut found = Vec::with_capacity(products.len());
        let mut missing = Vec::new();
        for product in products {
            match scores.get(&product) {
                Some(&score) => found.push(ProductScore { product, score }),
                None => missing.push(product),
            }
        }
        Ok((found, missing))
    }

    /// `GET /v1/customers/{id}/categories`: the profile, for the CA stage.
    ///
    /// # Errors
    /// 404 for an unknown customer, 503 when no model is active or the customer's partition
    /// cannot be reached.
    pub async fn customer_profile(
        &self,
        customer: CustomerId,
    ) -> Result<CustomerProfile, ApiError> {
        let view = self.current_view()?;
        let (version, _) = view.active().ok_or_else(ApiError::no_model)?;
        fetch_customer(&view, version, customer, self.deadline())
            .await?
            .ok_or_else(|| ApiError::unknown_customer(customer))
    }
}

/// The segments to ask for, with their keys.
fn segment_plan(
    entry: &ContainerEntry,
    container: u64,
    category: Option<CategoryId>,
    candidates: Option<u64>,
) -> Vec<SegmentTake> {
    entry
        .plan(category, candidates)
        .into_iter()
        .map(|p| SegmentTake {
            key: SegmentKey {
                container,
                number: p.number,
            },
            take: p.take,
        })
        .collect()
}

/// The customer's profile from the first replica of its partition that answers: `Ok(None)` if
/// the customer is not in the model.
async fn fetch_customer(
    view: &ClusterView,
    version: &ModelVersion,
    customer: CustomerId,
    deadline: Instant,
) -> Result<Option<CustomerProfile>, ApiError> {
    let partition = partition_of_customer(customer, view.map.placement.partitions());
    let request = FetchCustomer {
        version: version.clone(),
        customer,
    };
    let mut errors = Vec::new();
    for node in preferred_order(view.map.placement.replicas(partition), mix64(customer)) {
        let Some(routee) = view.routees.get(&node) else {
            continue;
        };
        let result = timeout_at(deadline, routee.client.fetch_customer(request.clone()))
            .await
            .unwrap_or(Err(RpcError::Timeout(node)));
        routee.record(result.as_ref().map(|_| ()));
        match result {
            Ok(profile) => return Ok(profile),
            Err(e) => errors.push(e.to_string()),
        }
    }
    tracing::warn!(customer, %partition, errors = %errors.join("; "), "customer partition unreachable");
    Err(ApiError::unavailable(format!(
        "customer {customer}'s partition {partition} could not be reached: {}",
        errors.join("; ")
    )))
}

/// Replicas in the order to try them: rotated by `spread` so that the load of a partition's
/// reads is shared by all of its replicas.
fn preferred_order(replicas: &[NodeId], spread: u64) -> Vec<NodeId> {
    let mut order = replicas.to_vec();
    if !order.is_empty() {
        let shift = (spread % order.len() as u64) as usize;
        order.rotate_left(shift);
    }
    order
}

struct Gathered {
    lists: Vec<Vec<RankedItem>>,
    coverage: Coverage,
}

/// Scores `plan` on the nodes holding it: one call per node per round; segments whose node
/// failed or did not hold them go to their next replica in the following round.
async fn gather(
    view: &ClusterView,
    request: ScoreSegments,
    plan: &[SegmentTake],
    customer: CustomerId,
    deadline: Instant,
) -> Gathered {
    let partitions = view.map.placement.partitions();
    let mut coverage = Coverage {
        segments: plan.len() as u32,
        ..Coverage::default()
    };
    let mut lists = Vec::new();
    // (segment, its replicas in preference order, index of the replica to try next)
    let mut pending: Vec<(SegmentTake, Vec<NodeId>, usize)> = plan
        .iter()
        .map(|&take| {
            let partition = partition_of_segment(take.key, partitions);
            let spread = mix64(customer) ^ u64::from(partition.0);
            (
                take,
                preferred_order(view.map.placement.replicas(partition), spread),
                0,
            )
        })
        .collect();

    while !pending.is_empty() {
        let mut batches: HashMap<NodeId, Vec<usize>> = HashMap::new();
        for (i, (_, replicas, next)) in pending.iter_mut().enumerate() {
            // Skip replicas the router has no route to (not in its view).
            while replicas
                .get(*next)
                .is_some_and(|n| !view.routees.contains_key(n))
            {
                *next += 1;
            }
            match replicas.get(*next) {
                Some(node) => batches.entry(*node).or_default().push(i),
                None => {
                    coverage.degraded.insert("unreachable");
                }
            }
        }
        let calls = batches.into_iter().map(|(node, members)| {
            let mut request = request.clone();
            request.segments = members.iter().map(|&i| pending[i].0).collect();
            let routee = view.routees[&node].clone();
            async move {
                let result = timeout_at(deadline, routee.client.score_segments(request))
                    .await
                    .unwrap_or(Err(RpcError::Timeout(node)));
                routee.record(result.as_ref().map(|_| ()));
                (members, result)
            }
        });
        let mut retry = Vec::new();
        for (members, result) in join_all(calls).await {
            match result {
                Ok(reply) => {
                    for &i in &members {
                        if reply.missing.contains(&pending[i].0.key) {
                            coverage.degraded.insert("stale_map");
                            retry.push(i);
                        } else {
                            coverage.answered += 1;
                        }
                    }
                    lists.push(reply.items);
                }
                Err(error) => {
                    tracing::debug!(%error, "segment call failed; trying other replicas");
                    coverage.degraded.insert(error.reason());
                    retry.extend(members);
                }
            }
        }
        if Instant::now() >= deadline {
            if !retry.is_empty() {
                coverage.degraded.insert("timeout");
            }
            break;
        }
        pending = retry
            .into_iter()
            .filter_map(|i| {
                let (take, replicas, next) = pending[i].clone();
                (next + 1 < replicas.len()).then_some((take, replicas, next + 1))
            })
            .collect();
    }
    if coverage.answered == coverage.segments {
        coverage.degraded.clear();
    }
    Gathered { lists, coverage }
}
