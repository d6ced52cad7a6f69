//! Transport speed on loopback, server and client in one process (they share the machine's
//! cores, as a node and a router on one host would). Ignored by default; run with
//! `cargo test --release -p scoregrid-wire --test transport_speed -- --ignored --nocapture`.
//! Prints figures and asserts only that every call was answered correctly.

mod support;

use scoregrid_wire::{NodeClient, NodeId, QuicClient, TransportConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{EchoService, ca, echoed, fetch, identity, localhost, start_server};

const WARMUP_CALLS: u64 = 2_000;
const SEQUENTIAL_CALLS: u64 = 20_000;
const CONCURRENT_CALLERS: u64 = 32;
const CALLS_PER_CALLER: u64 = 2_000;

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn summary(label: &str, mut latencies: Vec<Duration>, elapsed: Duration) {
    latencies.sort_unstable();
    let calls = latencies.len();
    println!(
        "{label}: {calls} calls in {:.2} s = {:.0} calls/s; latency p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e6,
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        percentile(&latencies, 1.0).as_secs_f64() * 1e6,
    );
}

/// Measures round trips on one connection: sequential (one call at a time: latency) and with
/// 32 concurrent callers (throughput), each call a FetchCustomer answered by an echo service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints transport figures; run in release with --ignored --nocapture"]
async fn transport_round_trips() {
    let ca = ca("bench");
    let service = Arc::new(EchoService::default());
    let config = TransportConfig::default();
    let server = start_server(
        localhost(),
        &identity(&ca, "n1"),
        NodeId(1),
        config.clone(),
        service.clone(),
    );
    let client = Arc::new(
        QuicClient::new(
            NodeId(1),
            server.addr,
            "n1".into(),
            &identity(&ca, "router"),
            config,
        )
        .expect("client builds"),
    );

    for id in 0..WARMUP_CALLS {
        let response = client.call(fetch(id)).await.expect("warm-up call");
        assert_eq!(echoed(&response), Some(id));
    }

    let mut latencies = Vec::with_capacity(SEQUENTIAL_CALLS as usize);
    let started = Instant::now();
    for id in 0..SEQUENTIAL_CALLS {
        let call_started = Instant::now();
        let response = client.call(fetch(id)).await.expect("sequential call");
        latencies.push(call_started.elapsed());
        assert_eq!(echoed(&response), Some(id));
    }
    summary("sequential, 1 caller", latencies, started.elapsed());

    let started = Instant::now();
    let callers: Vec<_> = (0..CONCURRENT_CALLERS)
        .map(|caller| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(CALLS_PER_CALLER as usize);
                for call in 0..CALLS_PER_CALLER {
                    let id = caller * CALLS_PER_CALLER + call;
                    let call_started = Instant::now();
                    let response = client.call(fetch(id)).await.expect("concurrent call");
                    latencies.push(call_started.elapsed());
                    assert_eq!(echoed(&response), Some(id));
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for caller in callers {
        latencies.extend(caller.await.expect("caller does not panic"));
    }
    summary("concurrent, 32 callers", latencies, started.elapsed());
    assert_eq!(
        service.calls(),
        WARMUP_CALLS + SEQUENTIAL_CALLS + CONCURRENT_CALLERS * CALLS_PER_CALLER
    );
    server.stop().await;
}
