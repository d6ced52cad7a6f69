//! Calling replicas: one call bounded by the request's deadline and recorded on its routee;
//! the first answer among a partition's replicas, hedged; and the gathering of a pool's
//! segments, batched per node, hedged, with failover to other replicas.

use crate::routee::{CallGuard, Routee};
use crate::scatter::Coverage;
use crate::state::ClusterView;
use crate::telemetry;
use futures_util::future::join_all;
use scoregrid_raft::NodeState;
use scoregrid_shard::hashing::{mix64, partition_of_segment};
use scoregrid_shard::{CustomerId, RankedItem, SegmentKey};
use scoregrid_wire::{NodeClient, NodeId, RpcError, RpcFuture, ScoreSegments, SegmentTake};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::{Instant, timeout_at};

/// One call to one routee, bounded by `deadline`, recorded (outcome and latency); a call
/// dropped before it ends hands back the breaker's probe it may hold ([`CallGuard`]).
pub(crate) async fn call<T>(
    routee: &Routee,
    deadline: Instant,
    make_call: impl FnOnce(&dyn NodeClient) -> RpcFuture<T>,
) -> Result<T, RpcError> {
    let started = Instant::now();
    let node = routee.client.node();
    let guard = CallGuard::new(routee);
    let result = timeout_at(deadline, make_call(routee.client.as_ref()))
        .await
        .unwrap_or(Err(RpcError::Timeout(node)));
    guard.record(result.as_ref().map(|_| ()), started.elapsed());
    result
}

/// [`call`] for a node of `view`: a node the map marks down has its circuit opened by its first
/// transport failure (the map and the failure agree: it is gone).
pub(crate) async fn call_on<T>(
    view: &ClusterView,
    routee: &Routee,
    deadline: Instant,
    make_call: impl FnOnce(&dyn NodeClient) -> RpcFuture<T>,
) -> Result<T, RpcError> {
    let result = call(routee, deadline, make_call).await;
    if let Err(error) = &result
        && view.map.state_of(routee.client.node()) == Some(NodeState::Down)
    {
        routee.trip(error);
    }
    result
}

/// Asks `replicas` (available ones first) until one answers; the errors of all otherwise.
/// A replica that has not answered within its hedging delay gets company: the next replica is
/// asked too, and the first answer wins. A failed call moves on to the next replica at once.
pub(crate) async fn first_answer<T>(
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
    let launch = |next: &mut usize,
                  in_flight: &mut FuturesUnordered<_>,
                  hedge_at: &mut Option<(Instant, Instant)>| {
        if let Some(routee) = order.get(*next) {
            in_flight.push(call_on(view, routee, deadline, &make_call));
            *next += 1;
            let now = Instant::now();
            *hedge_at = order
                .get(*next)
                .map(|_| (now, (now + routee.hedge_delay()).min(deadline)));
        }
    };
    launch(&mut next, &mut in_flight, &mut hedge_at);
    while !in_flight.is_empty() {
        let timer = async {
            match hedge_at {
                Some((_, at)) => tokio::time::sleep_until(at).await,
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
                let slow = order[next - 1];
                let started = hedge_at.map_or_else(Instant::now, |(started, _)| started);
                if slow.try_hedge(started.into_std()) {
                    metrics::counter!(telemetry::HEDGES, "node" => slow.client.node().to_string()).increment(1);
                    launch(&mut next, &mut in_flight, &mut hedge_at);
                } else {
                    // No budget: wait for this one (a failure still moves on at once).
                    hedge_at = None;
                }
            }
        }
    }
    if errors.is_empty() {
        metrics::counter!(telemetry::FAST_FAILURES).increment(1);
        errors.push(
            "no replica can be called now (each is down in the cluster map, has an open circuit, or is unknown)"
                .into(),
        );
    }
    Err(errors)
}

/// `replicas` that the router may call now, in the order to try them: nodes that are up first,
/// then those in maintenance or joining (they may still answer), then those the map marks down
/// (the leader cannot reach them, but this router may: a leader cut off by a partition marks
/// down nodes that serve perfectly well). A node whose circuit is open is left out: when
/// nothing is left the request learns it at once instead of waiting for its deadline on a node
/// that cannot answer. A node marked down trips its circuit on its first failure
/// ([`call_on`]), so a dead one costs at most one call.
pub(crate) fn usable(view: &ClusterView, replicas: &[NodeId]) -> Vec<NodeId> {
    let mut up = Vec::new();
    let mut others = Vec::new();
    let mut down = Vec::new();
    for &node in replicas {
        let Some(routee) = view.routees.get(&node) else {
            continue;
        };
        if !routee.available() {
            continue;
        }
        match view.map.state_of(node) {
            Some(NodeState::Up) => up.push(node),
            Some(NodeState::Down) => down.push(node),
            // In-process and static maps know no states beyond Up.
            None | Some(NodeState::Maintenance | NodeState::Joining | NodeState::Leaving) => {
                others.push(node);
            }
        }
    }
    up.extend(others);
    up.extend(down);
    up
}

/// Replicas in the order to try them: rotated by `spread` so that the load of a partition's
/// reads is shared by all of its replicas.
pub(crate) fn preferred_order(replicas: &[NodeId], spread: u64) -> Vec<NodeId> {
    let mut order = replicas.to_vec();
    if !order.is_empty() {
        let shift = (spread % order.len() as u64) as usize;
        order.rotate_left(shift);
    }
    order
}

pub(crate) struct Gathered {
    pub(crate) lists: Vec<Vec<RankedItem>>,
    pub(crate) coverage: Coverage,
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
pub(crate) async fn gather(
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
    let started = Instant::now();
    let primary = score_on(
        view,
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
    if !routee.try_hedge(started.into_std()) {
        return (members, primary.await);
    }
    metrics::counter!(crate::telemetry::HEDGES, "node" => node.to_string()).increment(1);
    let hedge = join_all(
        alternatives
            .into_iter()
            .map(|(alt, takes)| score_on(view, &view.routees[&alt], takes, request, deadline)),
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
    view: &ClusterView,
    routee: &Routee,
    segments: Vec<SegmentTake>,
    request: &ScoreSegments,
    deadline: Instant,
) -> BatchOutcome {
    let keys: Vec<SegmentKey> = segments.iter().map(|t| t.key).collect();
    let mut request = request.clone();
    request.segments = segments;
    match call_on(view, routee, deadline, |client| {
        client.score_segments(request, Some(deadline))
    })
    .await
    {
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
