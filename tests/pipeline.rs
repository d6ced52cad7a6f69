//! The router's request logic over real in-process nodes (builder -> placement -> nodes ->
//! scatter/gather -> merge -> cursor), against the brute-force reference, without HTTP in the
//! way; and what the router reports when replicas are lost.

mod common;

use proptest::prelude::*;
use scoregrid_config::Config;
use scoregrid_router::RouterState;
use scoregrid_router::params::RecommendParams;
use scoregrid_shard::reference::{ReferenceModel, ReferenceQuery};
use scoregrid_shard::{RankedItem, ScoringWeights};

struct Cluster {
    state: RouterState,
    reference: ReferenceModel,
}

fn cluster(nodes: u64, rf: u32, segment: u32, seed: u64, up: &[u64]) -> Cluster {
    let (built, reference) = common::build(seed, 16, segment);
    Cluster {
        state: common::router(built, nodes, rf, up, Config::default()),
        reference,
    }
}

fn params(
    customer: u64,
    container: u64,
    category: Option<u32>,
    candidates: Option<u64>,
    limit: u32,
) -> RecommendParams {
    RecommendParams {
        customer,
        container,
        category,
        limit,
        candidates,
        cursor: None,
    }
}

fn bits(items: &[RankedItem]) -> Vec<(u64, u32, u32)> {
    items
        .iter()
        .map(|i| (i.product, i.score.to_bits(), i.category))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Follows cursors to the end; returns all items and the page count.
async fn all_pages(state: &RouterState, mut p: RecommendParams) -> (Vec<RankedItem>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    loop {
        let r = state.recommend(p.clone()).await.unwrap();
        assert_eq!(
            r.coverage.answered, r.coverage.segments,
            "full coverage expected"
        );
        assert!(r.items.len() <= p.limit as usize);
        pages += 1;
        items.extend(r.items);
        match r.next_cursor {
            Some(c) => p.cursor = Some(c),
            None => return (items, pages),
        }
        assert!(pages < 10_000, "cursor loop does not end");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every page, followed to the end through next_cursor, equals the reference ranking:
    /// no gaps, no duplicates, same scores bit for bit.
    #[test]
    fn router_pages_equal_the_reference(
        seed in any::<u64>(),
        segment in 1u32..9,
        limit in 1u32..9,
        customer_index in 0u64..45,
        container in prop_oneof![Just(1u64), Just(7), Just(u64::MAX)],
        category in proptest::option::of(prop_oneof![Just(0u32), Just(2), Just(u32::MAX)]),
        candidates in proptest::option::of(1u64..30),
    ) {
        let c = cluster(3, 2, segment, seed, &[1, 2, 3]);
        // Indices past 40 are unknown customers.
        let customer = common::customer_id(customer_index);
        let expect = c.reference.rank(ReferenceQuery { customer, container, category, candidates }, ScoringWeights::default()).unwrap();
        let (got, _) = runtime().block_on(all_pages(&c.state, params(customer, container, category, candidates, limit)));
        prop_assert_eq!(bits(&got), bits(&expect.items));
        let first = runtime().block_on(c.state.recommend(params(customer, container, category, candidates, limit))).unwrap();
        prop_assert_eq!(first.personalized, expect.personalized);
    }
}

#[test]
fn losing_one_node_of_three_keeps_full_coverage_with_rf_2() {
    let c = cluster(3, 2, 4, 9, &[1, 3]);
    let expect = c
        .reference
        .rank(
            ReferenceQuery {
                customer: 1,
                container: 1,
                category: None,
                candidates: None,
            },
            ScoringWeights::default(),
        )
        .unwrap();
    let (got, _) = runtime().block_on(all_pages(&c.state, params(1, 1, None, None, 7)));
    assert_eq!(bits(&got), bits(&expect.items));
}

#[test]
fn losing_two_nodes_reports_partial_coverage() {
    let c = cluster(3, 2, 2, 9, &[2]);
    let rt = runtime();
    // Find a customer whose partition node 2 holds, so the request itself can be served.
    let mut served = 0;
    for i in 0..common::CUSTOMERS {
        let customer = common::customer_id(i);
        match rt.block_on(c.state.recommend(params(customer, 1, None, None, 1000))) {
            Ok(r) => {
                served += 1;
                assert!(
                    r.coverage.answered < r.coverage.segments,
                    "{:?}",
                    r.coverage
                );
                assert!(
                    r.coverage.degraded.contains("unreachable"),
                    "{:?}",
                    r.coverage
                );
                assert!(r.items.windows(2).all(|w| w[0] < w[1]));
            }
            Err(e) => assert_eq!(e.status.as_u16(), 503, "{e}"),
        }
    }
    assert!(served > 0, "some customers live on node 2");
}

/// A real node answering late: its replies wait `delay` (as a stalled process or a congested
/// link would make them).
struct Late {
    inner: scoregrid_node::LocalClient,
    delay: std::time::Duration,
}

impl scoregrid_wire::NodeClient for Late {
    fn node(&self) -> scoregrid_wire::NodeId {
        self.inner.node()
    }
    fn call_until(
        &self,
        request: scoregrid_wire::Request,
        deadline: Option<tokio::time::Instant>,
    ) -> scoregrid_wire::RpcFuture<scoregrid_wire::Response> {
        let (delay, call) = (self.delay, self.inner.call_until(request, deadline));
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            call.await
        })
    }
}

/// A node answering after 400 ms does not make requests wait for it: once its hedging delay
/// (at most 20 ms here) passes, the same segments go to their other replica, and the answer is
/// complete and identical to the reference, well inside the 1 s deadline.
#[test]
fn a_slow_replica_is_hedged() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let (built, reference) = common::build(3, 16, 4);
    let mut config = Config::default();
    config.router.hedge_delay_max_ms = 20;
    // Every request here meets the slow node: hedges are most of the calls, far beyond the
    // default budget (5%), which is for a cluster where slowness is the exception.
    config.router.hedge_budget_percent = 100;
    let state = common::router_with(built, 3, 2, config, |id, client| {
        let delay = if id.0 == 1 {
            Duration::from_millis(400)
        } else {
            Duration::ZERO
        };
        Some(Arc::new(Late {
            inner: client,
            delay,
        }) as Arc<dyn scoregrid_wire::NodeClient>)
    });
    let rt = runtime();
    let expect_for = |customer| {
        reference
            .rank(
                ReferenceQuery {
                    customer,
                    container: 1,
                    category: None,
                    candidates: None,
                },
                ScoringWeights::default(),
            )
            .unwrap()
    };
    for i in 0..common::CUSTOMERS {
        let customer = common::customer_id(i);
        let started = Instant::now();
        let r = rt
            .block_on(state.recommend(params(customer, 1, None, None, 1000)))
            .unwrap();
        let took = started.elapsed();
        assert_eq!(r.coverage.answered, r.coverage.segments);
        assert_eq!(bits(&r.items), bits(&expect_for(customer).items));
        // Both the customer fetch and the segment calls are hedged.
        assert!(
            took < Duration::from_millis(300),
            "customer {customer} took {took:?}"
        );
    }
}

/// A node that never answers: killed without a goodbye, or cut off.
struct Silent(scoregrid_wire::NodeId);

impl scoregrid_wire::NodeClient for Silent {
    fn node(&self) -> scoregrid_wire::NodeId {
        self.0
    }
    fn call_until(
        &self,
        _request: scoregrid_wire::Request,
        _deadline: Option<tokio::time::Instant>,
    ) -> scoregrid_wire::RpcFuture<scoregrid_wire::Response> {
        Box::pin(std::future::pending())
    }
}

/// The defect this guards against: with two of three nodes silent, every request that touched
/// their partitions waited its whole deadline, even once both circuits were open (a reader loop
/// fell from ~1,800 to ~3.5 requests/s). Once the breakers say no replica can answer, a request
/// answers at once: partial (saying `unreachable`), or 503 when the customer's own partition is
/// gone. The deadline here is 800 ms; an answer "at once" takes a few milliseconds, and the
/// check allows a quarter of the deadline for a loaded machine.
#[test]
fn with_no_replica_callable_a_request_answers_at_once() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let (built, _) = common::build(9, 16, 2);
    let mut config = Config::default();
    config.router.request_deadline_ms = 800;
    config.router.breaker_failures = 1;
    config.router.breaker_open_ms = 60_000;
    let state = common::router_with(built, 3, 2, config, |id, local| {
        if id == scoregrid_wire::NodeId(2) {
            Some(Arc::new(local) as Arc<dyn scoregrid_wire::NodeClient>)
        } else {
            Some(Arc::new(Silent(id)) as Arc<dyn scoregrid_wire::NodeClient>)
        }
    });
    let rt = runtime();
    // The first requests meet the silent nodes and open their circuits.
    for i in 0..4 {
        let _ = rt.block_on(state.recommend(params(common::customer_id(i), 1, None, None, 1000)));
    }
    let mut answered = 0;
    for i in 0..common::CUSTOMERS {
        let started = Instant::now();
        let outcome =
            rt.block_on(state.recommend(params(common::customer_id(i), 1, None, None, 1000)));
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(200),
            "customer {i} waited {took:?}: {outcome:?}"
        );
        match outcome {
            Ok(r) => {
                answered += 1;
                assert!(
                    r.coverage.answered < r.coverage.segments,
                    "{:?}",
                    r.coverage
                );
                assert!(
                    r.coverage.degraded.contains("unreachable"),
                    "{:?}",
                    r.coverage
                );
            }
            Err(e) => assert_eq!(e.status.as_u16(), 503, "{e}"),
        }
    }
    assert!(answered > 0, "customers on node 2 are answered, partially");
}
