//! The request logic, independent of HTTP: pin a version, fetch the customer from a replica of
//! its partition, send one `ScoreSegments` per node holding needed segments, fail over to other
//! replicas, merge, and account for what could not be answered.

use crate::cursor::Cursor;
use crate::error::ApiError;
use crate::params::RecommendParams;
use crate::routee::Routee;
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
    CustomerProfile, FetchCustomer, NodeClient, NodeId, ProductScore, RpcError, RpcFuture,
    ScoreProducts, ScoreSegments, SegmentTake,
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
                let replicas = view.map.placement.replicas(partition).to_vec();
                first_answer(view, &replicas, deadline, |client| {
                    client.score_products(request.clone())
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

/// One call to one routee, bounded by `deadline`, recorded (outcome and latency).
async fn call<T>(
    routee: &Routee,
    deadline: Instant,
    make_call: impl FnOnce(&dyn NodeClient) -> RpcFuture<T>,
) -> Result<T, RpcError> {
    let started = Instant::now();
    let node = routee.client.node();
    let result = timeout_at(deadline, make_call(routee.client.as_ref()))
        .await
        .unwrap_or(Err(RpcError::Timeout(node)));
    routee.record(result.as_ref().map(|_| ()), started.elapsed());
    result
}

/// Asks `replicas` (available ones first) until one answers; the errors of all otherwise.
/// A replica that has not answered within its hedging delay gets company: the next replica is
/// asked too, and the first answer wins. A failed call moves on to the next replica at once.
async fn first_answer<T>(
    view: &ClusterView,
    replicas: &[NodeId],
    deadline: Instant,
    make_call: impl Fn(&dyn NodeClient) -> RpcFuture<T>,
) -> Result<T, Vec<String>> {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;
    let order: Vec<&Routee> = usable(view, replicas)
        .iter()
        .filter_map(|n| view.routees.get(n).map(Arc::as_ref))
        .collect();
    let mut errors = Vec::new();
    let mut in_flight = FuturesUnordered::new();
    let mut next = 0;
    let mut hedge_at = None;
    let launch =
        |next: &mut usize, in_flight: &mut FuturesUnordered<_>, hedge_at: &mut Option<Instant>| {
            if let Some(routee) = order.get(*next) {
                in_flight.push(call(routee, deadline, &make_call));
                *next += 1;
                *hedge_at = order
                    .get(*next)
                    .map(|_| (Instant::now() + routee.hedge_delay()).min(deadline));
            }
        };
    launch(&mut next, &mut in_flight, &mut hedge_at);
    while !in_flight.is_empty() {
        let timer = async {
            match hedge_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(result) = in_flight.next() => match result {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    errors.push(e.to_string());
                    launch(&mut next, &mut in_flight, &mut hedge_at);
                }
            },
            () = timer => {
                metrics::counter!(telemetry::HEDGES, "node" => order[next - 1].client.node().to_string()).increment(1);
                launch(&mut next, &mut in_flight, &mut hedge_at);
            }
        }
    }
    if errors.is_empty() {
        errors.push("no replica is known to this router".into());
    }
    Err(errors)
}

/// `replicas` that the router can call, those with a closed circuit first; replicas with an
/// open circuit stay at the end as a last resort rather than leaving a partition unanswered.
fn usable(view: &ClusterView, replicas: &[NodeId]) -> Vec<NodeId> {
    let known = replicas.iter().filter(|n| view.routees.contains_key(n));
    let (mut open, mut closed): (Vec<NodeId>, Vec<NodeId>) = (Vec::new(), Vec::new());
    for &node in known {
        if view.routees[&node].available() {
            closed.push(node);
        } else {
            open.push(node);
        }
    }
    closed.extend(open);
    closed
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
        client.fetch_customer(request.clone())
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

/// A segment still to be answered: its replicas in preference order and the next to try.
#[derive(Clone)]
struct Pending {
    take: SegmentTake,
    replicas: Vec<NodeId>,
    next: usize,
}

/// What one batch call (with its hedge, if any) produced.
struct BatchOutcome {
    lists: Vec<Vec<RankedItem>>,
    answered: Vec<SegmentKey>,
    /// Segments to try on their next replica.
    retry: Vec<SegmentKey>,
    reasons: Vec<&'static str>,
}

/// Scores `plan` on the nodes holding it: one call per node per round, each hedged on other
/// replicas if it is slow; segments whose node failed or did not hold them go to their next
/// replica in the following round, until the deadline.
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
    let mut pending: Vec<Pending> = plan
        .iter()
        .map(|&take| {
            let partition = partition_of_segment(take.key, partitions);
            let spread = mix64(customer) ^ u64::from(partition.0);
            let preferred = preferred_order(view.map.placement.replicas(partition), spread);
            Pending {
                take,
                replicas: usable(view, &preferred),
                next: 0,
            }
        })
        .collect();

    while !pending.is_empty() {
        let mut batches: HashMap<NodeId, Vec<Pending>> = HashMap::new();
        for p in pending.drain(..) {
            match p.replicas.get(p.next) {
                Some(&node) => batches.entry(node).or_default().push(p),
                None => {
                    coverage.degraded.insert("unreachable");
                }
            }
        }
        let calls = batches
            .into_iter()
            .map(|(node, members)| call_batch(view, node, members, &request, deadline));
        let mut retry_keys = Vec::new();
        let mut attempted: HashMap<SegmentKey, Pending> = HashMap::new();
        for (members, outcome) in join_all(calls).await {
            lists.extend(outcome.lists);
            coverage.answered += outcome.answered.len() as u32;
            coverage.degraded.extend(outcome.reasons);
            retry_keys.extend(outcome.retry);
            attempted.extend(members.into_iter().map(|p| (p.take.key, p)));
        }
        if Instant::now() >= deadline {
            if !retry_keys.is_empty() {
                coverage.degraded.insert("timeout");
            }
            break;
        }
        pending = retry_keys
            .into_iter()
            .filter_map(|key| attempted.remove(&key))
            .map(|p| Pending {
                next: p.next + 1,
                ..p
            })
            .collect();
    }
    if coverage.answered == coverage.segments {
        coverage.degraded.clear();
    }
    Gathered { lists, coverage }
}

/// One node's batch of segments. If the node has not answered within its hedging delay, the
/// same segments also go to their next replicas; the first complete answer wins.
async fn call_batch(
    view: &ClusterView,
    node: NodeId,
    members: Vec<Pending>,
    request: &ScoreSegments,
    deadline: Instant,
) -> (Vec<Pending>, BatchOutcome) {
    let routee = &view.routees[&node];
    let keys: Vec<SegmentKey> = members.iter().map(|p| p.take.key).collect();
    let primary = score_on(
        routee,
        members.iter().map(|p| p.take).collect(),
        request,
        deadline,
    );
    let mut primary = std::pin::pin!(primary);
    let delay = routee.hedge_delay();
    let hedge_at = (Instant::now() + delay).min(deadline);
    let first = tokio::select! {
        outcome = &mut primary => Some(outcome),
        () = tokio::time::sleep_until(hedge_at) => None,
    };
    if let Some(outcome) = first {
        return (members, outcome);
    }
    // Hedge: each segment to its next replica, batched per node.
    let mut alternatives: HashMap<NodeId, Vec<SegmentTake>> = HashMap::new();
    for p in &members {
        if let Some(&alt) = p.replicas.get(p.next + 1) {
            alternatives.entry(alt).or_default().push(p.take);
        }
    }
    if alternatives.values().map(Vec::len).sum::<usize>() != members.len() {
        // Some segment has no other replica: a hedge could not give a complete answer.
        return (members, primary.await);
    }
    metrics::counter!(crate::telemetry::HEDGES, "node" => node.to_string()).increment(1);
    let hedge = join_all(
        alternatives
            .into_iter()
            .map(|(alt, takes)| score_on(&view.routees[&alt], takes, request, deadline)),
    );
    let hedge = async move {
        let mut combined = BatchOutcome {
            lists: Vec::new(),
            answered: Vec::new(),
            retry: Vec::new(),
            reasons: Vec::new(),
        };
        for outcome in hedge.await {
            combined.lists.extend(outcome.lists);
            combined.answered.extend(outcome.answered);
            combined.retry.extend(outcome.retry);
            combined.reasons.extend(outcome.reasons);
        }
        combined
    };
    let mut hedge = std::pin::pin!(hedge);
    let outcome = tokio::select! {
        outcome = &mut primary => if outcome.retry.is_empty() { outcome } else { hedge.await },
        outcome = &mut hedge => if outcome.retry.is_empty() {
            metrics::counter!(crate::telemetry::HEDGES_WON, "node" => node.to_string()).increment(1);
            outcome
        } else {
            primary.await
        },
    };
    debug_assert!(
        outcome
            .answered
            .iter()
            .chain(&outcome.retry)
            .all(|k| keys.contains(k))
    );
    (members, outcome)
}

/// One `ScoreSegments` call to one routee.
async fn score_on(
    routee: &Routee,
    segments: Vec<SegmentTake>,
    request: &ScoreSegments,
    deadline: Instant,
) -> BatchOutcome {
    let keys: Vec<SegmentKey> = segments.iter().map(|t| t.key).collect();
    let mut request = request.clone();
    request.segments = segments;
    match call(routee, deadline, |client| client.score_segments(request)).await {
        Ok(reply) => {
            let (retry, answered): (Vec<SegmentKey>, Vec<SegmentKey>) =
                keys.into_iter().partition(|k| reply.missing.contains(k));
            BatchOutcome {
                lists: vec![reply.items],
                reasons: if retry.is_empty() {
                    Vec::new()
                } else {
                    vec!["stale_map"]
                },
                answered,
                retry,
            }
        }
        Err(error) => {
            tracing::debug!(%error, "segment call failed; trying other replicas");
            BatchOutcome {
                lists: Vec::new(),
                answered: Vec::new(),
                retry: keys,
                reasons: vec![error.reason()],
            }
        }
    }
}
