//! End-to-end tests of `scoregrid_bench::run` against a small HTTP/1.1 server started in each
//! test on 127.0.0.1:0. The server is written on plain tokio sockets so that it counts exactly
//! what it answered, and the tests compare those counts with the report.

use scoregrid_bench::{BenchError, BenchOptions, BenchReport, RequestKeys, Target, run};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CUSTOMERS: [u64; 3] = [1, 2, u64::MAX];
const CONTAINERS: [u64; 2] = [10, 20];
const LIMIT: u32 = 20;
/// Every this many-th recommend request (counted across connections) is answered 500.
const RECOMMEND_ERROR_EVERY: u64 = 10;
/// The most bytes of unanswered requests the server buffers per connection.
const REQUEST_BYTES_MAX: usize = 64 * 1024;

/// How the test server treats requests.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Answer everything on keep-alive connections.
    Answer,
    /// Answer, with `Connection: close`, then close the connection.
    CloseAfterEach,
    /// Close the connection without answering every this many-th request.
    DropEvery(u64),
    /// Read requests and never answer.
    Silent,
}

/// What the server did, counted as it did it.
#[derive(Debug, Default)]
struct Counts {
    connections: AtomicU64,
    healthz: AtomicU64,
    recommend: AtomicU64,
    recommend_errors: AtomicU64,
    /// Requests the server refused as malformed (bad path or parameters): must stay 0.
    bad_requests: AtomicU64,
    /// Requests read and left unanswered by closing the connection.
    dropped: AtomicU64,
    /// Requests received, answered or not, to pick which ones to drop.
    received: AtomicU64,
}

impl Counts {
    fn answered(&self) -> u64 {
        self.healthz.load(Ordering::SeqCst)
            + self.recommend.load(Ordering::SeqCst)
            + self.bad_requests.load(Ordering::SeqCst)
    }
}

async fn start_server(behaviour: Behaviour) -> (SocketAddr, Arc<Counts>) {
    let listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(error) => panic!("bind 127.0.0.1:0: {error}"),
    };
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(error) => panic!("local_addr: {error}"),
    };
    let counts = Arc::new(Counts::default());
    let server_counts = Arc::clone(&counts);
    tokio::spawn(async move {
        while let Ok((stream, _peer)) = listener.accept().await {
            server_counts.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, Arc::clone(&server_counts), behaviour));
        }
    });
    (address, counts)
}

/// Serves one connection until the client closes it or the behaviour says to close.
async fn serve(mut stream: TcpStream, counts: Arc<Counts>, behaviour: Behaviour) {
    let mut received = Vec::with_capacity(4096);
    let mut answers = Vec::with_capacity(4096);
    loop {
        while let Some(head_end) = find(&received, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
            received.drain(..head_end + 4);
            let number = counts.received.fetch_add(1, Ordering::SeqCst) + 1;
            match behaviour {
                Behaviour::Silent => continue,
                Behaviour::DropEvery(every) if number.is_multiple_of(every) => {
                    counts.dropped.fetch_add(1, Ordering::SeqCst);
                    // Answer what came before, then close without answering this one.
                    let _ = stream.write_all(&answers).await;
                    return;
                }
                _ => {}
            }
            let (status, body) = route(&head, &counts);
            let close = matches!(behaviour, Behaviour::CloseAfterEach);
            answers.extend_from_slice(
                format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{body}",
                    body.len(),
                    if close { "connection: close\r\n" } else { "" },
                )
                .as_bytes(),
            );
            if close {
                let _ = stream.write_all(&answers).await;
                return;
            }
        }
        if !answers.is_empty() {
            if stream.write_all(&answers).await.is_err() {
                return;
            }
            answers.clear();
        }
        if received.len() > REQUEST_BYTES_MAX {
            return;
        }
        match stream.read_buf(&mut received).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The status line text and body for one request head, counting it.
fn route(head: &str, counts: &Counts) -> (&'static str, &'static str) {
    let target = head
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("GET "))
        .and_then(|rest| rest.strip_suffix(" HTTP/1.1"));
    let has_host = head
        .lines()
        .any(|line| line.to_ascii_lowercase().starts_with("host: 127.0.0.1:"));
    let bad = (
        "400 Bad Request",
        r#"{"error":{"code":"bad_request","message":"bad"}}"#,
    );
    match target {
        Some("/healthz") if has_host => {
            counts.healthz.fetch_add(1, Ordering::SeqCst);
            ("200 OK", "ok")
        }
        Some(target) if has_host && recommend_is_valid(target) => {
            let number = counts.recommend.fetch_add(1, Ordering::SeqCst) + 1;
            if number.is_multiple_of(RECOMMEND_ERROR_EVERY) {
                counts.recommend_errors.fetch_add(1, Ordering::SeqCst);
                (
                    "500 Internal Server Error",
                    r#"{"error":{"code":"internal","message":"every tenth"}}"#,
                )
            } else {
                ("200 OK", r#"{"customer":1,"container":10,"items":[]}"#)
            }
        }
        _ => {
            counts.bad_requests.fetch_add(1, Ordering::SeqCst);
            bad
        }
    }
}

fn recommend_is_valid(target: &str) -> bool {
    let Some(query) = target.strip_prefix("/v1/recommend?") else {
        return false;
    };
    let mut customer = None;
    let mut container = None;
    let mut limit = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("customer", value)) => customer = value.parse::<u64>().ok(),
            Some(("container", value)) => container = value.parse::<u64>().ok(),
            Some(("limit", value)) => limit = value.parse::<u32>().ok(),
            _ => return false,
        }
    }
    customer.is_some_and(|customer| CUSTOMERS.contains(&customer))
        && container.is_some_and(|container| CONTAINERS.contains(&container))
        && limit == Some(LIMIT)
}

fn options(address: SocketAddr, target: Target, duration: Duration) -> BenchOptions {
    BenchOptions {
        url: format!("http://{address}/"),
        target,
        connections: 2,
        duration,
        warmup: Duration::ZERO,
        limit: LIMIT,
        keys: RequestKeys {
            customers: CUSTOMERS.to_vec(),
            containers: CONTAINERS.to_vec(),
        },
        seed: 42,
        timeout: Duration::from_secs(5),
        rate: None,
    }
}

async fn bench(options: BenchOptions) -> BenchReport {
    match run(options).await {
        Ok(report) => report,
        Err(error) => panic!("run failed: {error}"),
    }
}

fn assert_percentiles_ordered(report: &BenchReport) {
    assert!(
        report.latency.p50_us <= report.latency.p90_us
            && report.latency.p90_us <= report.latency.p99_us
            && report.latency.p99_us <= report.latency.p999_us
            && report.latency.p999_us <= report.latency.max_us,
        "percentiles out of order:\n{report}"
    );
    assert!(report.percentiles_ordered());
}

/// Proves that the report counts exactly what the server answered: 2 connections on recommend
/// for 1 s with no warm-up (so every answered request is in the measured phase), a server that
/// answers 500 to every tenth recommend request and checks that every request carries ids from
/// the keys, the limit and a Host header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommend_counts_match_the_server() {
    let (address, counts) = start_server(Behaviour::Answer).await;
    let report = bench(options(address, Target::Recommend, Duration::from_secs(1))).await;
    eprintln!("{report}\n{}", report.to_json());

    assert!(report.requests > 0, "{report}");
    assert_eq!(counts.bad_requests.load(Ordering::SeqCst), 0);
    assert_eq!(report.requests, counts.recommend.load(Ordering::SeqCst));
    let server_errors = counts.recommend_errors.load(Ordering::SeqCst);
    assert_eq!(report.requests / RECOMMEND_ERROR_EVERY, server_errors);
    assert_eq!(
        report.errors_by_status,
        BTreeMap::from([(500, server_errors)])
    );
    assert_eq!(report.ok_responses(), report.requests - server_errors);
    assert_eq!((report.transport_errors, report.timeouts), (0, 0));
    assert_eq!(counts.connections.load(Ordering::SeqCst), 2, "keep-alive");
    assert_percentiles_ordered(&report);
    assert!(
        report.elapsed >= Duration::from_secs(1),
        "{:?}",
        report.elapsed
    );
    assert!(
        report.elapsed < Duration::from_secs(2),
        "{:?}",
        report.elapsed
    );
    let rps = report.requests as f64 / report.elapsed.as_secs_f64();
    assert!(
        (report.rps - rps).abs() < 1e-6 * rps,
        "{} vs {rps}",
        report.rps
    );
}

/// Proves that the open loop sends on its schedule, not as fast as the server answers: 300
/// requests per second over 2 connections for 1 s is at most 300 requests (plus one per
/// connection at the edges), while the closed loop against the same server sends far more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_loop_keeps_its_rate() {
    let (address, counts) = start_server(Behaviour::Answer).await;
    let mut options = options(address, Target::Healthz, Duration::from_secs(1));
    options.keys = RequestKeys::default();
    options.rate = Some(300.0);
    let report = bench(options).await;
    eprintln!("{report}");
    let sent = counts.healthz.load(Ordering::SeqCst);
    assert_eq!(report.requests, sent, "{report}");
    assert!(sent <= 302, "{sent} requests for 300 per second over 1 s");
    assert!(sent >= 150, "{sent} requests: the schedule was not kept");
    assert!(report.errors_by_status.is_empty(), "{report}");
    assert_eq!(report.unsent, 0, "{report}");
    assert_eq!(report.ok_responses(), report.requests);
    assert_eq!(report.ok_latency.max_us, report.latency.max_us);
}

/// Proves that the open loop opens connections as its schedule needs them, stops at its bound
/// and counts what it could not send, instead of queueing: a server that never answers, 200
/// requests per second for 500 ms, at most 3 connections and a 2 s timeout. The first 3
/// requests each open (or reuse) a connection and time out; the other ~97 are unsent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_loop_counts_what_it_cannot_send() {
    let (address, counts) = start_server(Behaviour::Silent).await;
    let mut options = options(address, Target::Healthz, Duration::from_millis(500));
    options.keys = RequestKeys::default();
    options.connections = 3;
    options.rate = Some(200.0);
    options.timeout = Duration::from_secs(2);
    let report = bench(options).await;
    eprintln!("{report}\n{}", report.to_json());

    assert_eq!(report.requests, 0, "{report}");
    assert_eq!(report.timeouts, 3, "{report}");
    assert_eq!(report.connections_peak, 3, "{report}");
    assert_eq!(counts.connections.load(Ordering::SeqCst), 3);
    assert_eq!(report.timeouts + report.unsent, 100, "{report}");
    assert_eq!(report.rate, Some(200.0));
}

/// Proves that the warm-up is not recorded and healthz needs no keys: 2 connections, 300 ms of
/// warm-up then 1 s measured; the server answered more than the report counts, and nothing
/// failed. Prints the rps as a sanity figure for the HTTP stack on this machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_warmup_is_not_recorded() {
    let (address, counts) = start_server(Behaviour::Answer).await;
    let mut options = options(address, Target::Healthz, Duration::from_secs(1));
    options.warmup = Duration::from_millis(300);
    options.keys = RequestKeys::default();
    let report = bench(options).await;
    eprintln!("{report}\n{}", report.to_json());

    assert!(report.requests > 0, "{report}");
    assert!(counts.healthz.load(Ordering::SeqCst) > report.requests);
    assert_eq!(counts.bad_requests.load(Ordering::SeqCst), 0);
    assert!(report.errors_by_status.is_empty(), "{report}");
    assert_eq!((report.transport_errors, report.timeouts), (0, 0));
    assert_percentiles_ordered(&report);
}

/// Proves that a dropped connection is reopened and counted once as a transport error: the
/// server closes the connection instead of answering every 50th request, for 400 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_reopened_and_counted() {
    let (address, counts) = start_server(Behaviour::DropEvery(50)).await;
    let report = bench(options(
        address,
        Target::Healthz,
        Duration::from_millis(400),
    ))
    .await;

    let dropped = counts.dropped.load(Ordering::SeqCst);
    assert!(dropped > 0, "the run was too short to drop a connection");
    assert_eq!(report.transport_errors, dropped, "{report}");
    assert_eq!(report.requests, counts.answered());
    // Each drop is followed by a reconnect, unless the run ended first.
    let connections = counts.connections.load(Ordering::SeqCst);
    assert!(
        (dropped..=dropped + 2).contains(&connections),
        "{connections} for {dropped}"
    );
    assert_eq!(report.timeouts, 0);
    assert_percentiles_ordered(&report);
}

/// Proves that `Connection: close` is honoured without counting an error: the server closes the
/// connection after every answer, and every request still gets a response, for 300 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_not_an_error() {
    let (address, counts) = start_server(Behaviour::CloseAfterEach).await;
    let report = bench(options(
        address,
        Target::Healthz,
        Duration::from_millis(300),
    ))
    .await;

    assert!(report.requests > 0);
    assert_eq!(report.requests, counts.healthz.load(Ordering::SeqCst));
    assert_eq!(
        (report.transport_errors, report.timeouts),
        (0, 0),
        "{report}"
    );
    // One connection a response, plus at most one per client opened as the run ended.
    let connections = counts.connections.load(Ordering::SeqCst);
    assert!(
        (report.requests..=report.requests + 2).contains(&connections),
        "{connections} connections for {} requests",
        report.requests
    );
}

/// Proves that the per-request timeout fires and the connection is replaced: the server never
/// answers; 1 connection, a 100 ms timeout, 350 ms measured, so 4 requests time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_times_out() {
    let (address, counts) = start_server(Behaviour::Silent).await;
    let mut options = options(address, Target::Healthz, Duration::from_millis(350));
    options.connections = 1;
    options.timeout = Duration::from_millis(100);
    let report = bench(options).await;

    assert_eq!(report.requests, 0);
    assert!((3..=4).contains(&report.timeouts), "{report}");
    assert_eq!(report.transport_errors, 0);
    assert_eq!(counts.connections.load(Ordering::SeqCst), report.timeouts);
    assert_eq!(
        (report.latency.p50_us, report.latency.max_us, report.rps),
        (0, 0, 0.0)
    );
}

/// Proves that an unreachable server fails the run before it starts, with the address named,
/// and that a bad URL is refused before any connection is tried.
#[tokio::test]
async fn unreachable_server_and_bad_url_are_errors() {
    let address = {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(error) => panic!("bind: {error}"),
        };
        match listener.local_addr() {
            Ok(address) => address,
            Err(error) => panic!("local_addr: {error}"),
        }
    };
    // The listener is closed: connecting is refused.
    match run(options(address, Target::Healthz, Duration::from_secs(1))).await {
        Err(BenchError::Connect { address: named, .. }) => {
            assert_eq!(named, address.to_string());
        }
        other => panic!("expected a connect error, got {other:?}"),
    }

    let mut https = options(address, Target::Healthz, Duration::from_secs(1));
    https.url = format!("https://{address}");
    match run(https).await {
        Err(error @ BenchError::InvalidUrl { .. }) => {
            assert!(
                error.to_string().contains("https is not supported"),
                "{error}"
            );
        }
        other => panic!("expected an invalid url error, got {other:?}"),
    }
}
