//! The request logic, independent of HTTP: pin a version, fetch the customer from a replica of
//! its partition, score the pool's segments on the nodes holding them (`replicas`), merge, cut
//! the page and build the next cursor, and account for what could not be answered.

use crate::cursor::Cursor;
use crate::error::ApiError;
use crate::params::RecommendParams;
use crate::replicas::{first_answer, gather, preferred_order};
use crate::state::{ClusterView, RouterState};
use crate::telemetry;
use futures_util::future::join_all;
use scoregrid_shard::hashing::{mix64, partition_of_customer, partition_of_product};
use scoregrid_shard::{
    CategoryId, ContainerEntry, CustomerId, ModelVersion, PartitionId, ProductId, RankedItem,
    ScoringWeights, SegmentKey, merge_ranked,
};
use scoregrid_wire::{
    CustomerProfile, FetchCustomer, ProductScore, ScoreProducts, ScoreSegments, SegmentTake,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

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
        let mut coverage = gathered.coverage;
        if coverage.answered < coverage.segments {
            metrics::counter!(telemetry::PARTIAL_ANSWERS).increment(1);
        }
        if view.membership.is_stale() {
            // Exact for the version it names, but this router has lost contact with the quorum:
            // that version may no longer be the cluster's active one.
            metrics::counter!(telemetry::STALE_ANSWERS).increment(1);
            coverage.degraded.insert("stale_map");
        }
        Ok(Recommendation {
            version,
            personalized,
            items,
            next_cursor,
            coverage,
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
                let replicas = view.map.placement.replicas(partition).to_vec();
                first_answer(view, &replicas, deadline, |client| {
                    client.score_products(request.clone(), Some(deadline))
                })
                .await
                .map_err(|errors| {
                    ApiError::unavailable(format!(
                        "partition {partition} could not be reached: {}",
                        errors.join("; ")
                    ))
                })
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
    let replicas = preferred_order(view.map.placement.replicas(partition), mix64(customer));
    first_answer(view, &replicas, deadline, |client| {
        client.fetch_customer(request.clone(), Some(deadline))
    })
    .await
    .map_err(|errors| {
        let errors = errors.join("; ");
        tracing::warn!(customer, %partition, %errors, "customer partition unreachable");
        ApiError::unavailable(format!(
            "customer {customer}'s partition {partition} could not be reached: {errors}"
        ))
    })
}
