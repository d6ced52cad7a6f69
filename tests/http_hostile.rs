//! The router against clients that misbehave on purpose, over real sockets: connections that
//! send half a header or stall in a body, floods of connections, and requests hyper refuses by
//! itself. Each test keeps a well-behaved client running beside the attackers and checks what
//! it gets, and checks that the attackers' connections are closed on time.

mod common;

use common::{get_json, http};
use scoregrid_config::Config;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn start(config: Config) -> SocketAddr {
    let (built, _) = common::build(5, 16, 4);
    common::serve(common::router(built, 3, 2, &[1, 2, 3], config)).await
}

fn assert_json_error(raw: &[u8], status: u16, code: &str) {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        panic!("not a complete answer: {text:?}");
    };
    assert!(
        head.starts_with(&format!("HTTP/1.1 {status} ")),
        "expected {status}, got {head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(json["error"]["code"], code, "{body}");
    assert!(json["error"]["message"].is_string(), "{body}");
}

/// Sends `bytes` on a fresh connection and reads until the router closes it (at most 10 s).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "the router did not close the connection");
    raw
}

/// How long until the router closes `stream` (reads return end of file or an error).
async fn closed_after(mut stream: TcpStream, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = vec![0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + bound),
            stream.read(&mut sink),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Watches each of `streams` until the router closes it (at most 10 s), in the background.
fn watch(streams: Vec<TcpStream>) -> Vec<tokio::task::JoinHandle<Option<Duration>>> {
    streams
        .into_iter()
        .map(|s| tokio::spawn(closed_after(s, Duration::from_secs(10))))
        .collect()
}

/// Every watcher ([`watch`]) saw its connection closed within `bound`.
async fn assert_closed_within(
    watchers: Vec<tokio::task::JoinHandle<Option<Duration>>>,
    bound: Duration,
    what: &str,
) {
    let total = watchers.len();
    let mut late = Vec::new();
    for watcher in watchers {
        match watcher.await.expect("joins") {
            Some(after) if after <= bound => {}
            other => late.push(other),
        }
    }
    assert!(
        late.is_empty(),
        "{} of {total} {what} were not closed within {bound:?} (None: still open after 10 s): {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_the_server_makes_has_the_json_body() {
    let mut config = Config::default();
    config.http.request_body_bytes_max = 4096;
    config.http.body_read_timeout_ms = 300;
    let addr = start(config).await;

    let raw = exchange(addr, b"GARBAGE\r\n\r\n").await;
    assert_json_error(&raw, 400, "bad_request");

    let long_uri = format!(
        "GET /v1/recommend?customer=1&x={} HTTP/1.1\r\nHost: a\r\n\r\n",
        "a".repeat(70_000)
    );
    let raw = exchange(addr, long_uri.as_bytes()).await;
    assert_json_error(&raw, 414, "uri_too_long");

    let mut many_headers = String::from("GET /healthz HTTP/1.1\r\nHost: a\r\n");
    for i in 0..200 {
        many_headers.push_str(&format!("x-h{i}: v\r\n"));
    }
    many_headers.push_str("\r\n");
    let raw = exchange(addr, many_headers.as_bytes()).await;
    assert_json_error(&raw, 431, "headers_too_large");

    let too_big = b"POST /v1/score HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000\r\n\r\n{";
    let raw = exchange(addr, too_big).await;
    assert_json_error(&raw, 413, "payload_too_large");

    let stalled = b"POST /v1/score HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n{";
    let raw = exchange(addr, stalled).await;
    assert_json_error(&raw, 408, "body_timeout");

    // And the router still answers normally.
    let (status, _) = get_json(addr, "/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_on_time_while_a_client_is_served() {
    let mut config = Config::default();
    config.http.header_read_timeout_ms = 1_000;
    let addr = start(config).await;
    let attackers = 1_000;
    let mut streams = Vec::with_capacity(attackers);
    for i in 0..attackers {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // Nothing at all, half a request line, or half a header.
        let partial: &[u8] = match i % 3 {
            0 => b"",
            1 => b"GET /v1/recom",
            _ => b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: ",
        };
        stream.write_all(partial).await.expect("write");
        streams.push(stream);
    }
    // And a kept-alive connection that asked once and then sits idle.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut answer = vec![0u8; 4096];
    let n = idle.read(&mut answer).await.expect("an answer");
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200 "));
    streams.push(idle);
    let opened = Instant::now();
    let watchers = watch(streams);
    // A well-behaved client meanwhile.
    let mut served = 0;
    while opened.elapsed() < Duration::from_millis(800) {
        let (status, body) = get_json(addr, "/v1/recommend?customer=1&container=1").await;
        assert_eq!(status, 200, "{body}");
        served += 1;
    }
    assert!(served > 0);
    assert_closed_within(
        watchers,
        Duration::from_secs(4),
        "stalled connections (and one idle one; header timeout 1 s)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_hold_no_slot() {
    let mut config = Config::default();
    // Few slots: if a stalled body held one, the normal client would be refused.
    config.http.requests_in_flight_max = 4;
    config.http.queue_max = 4;
    config.http.body_read_timeout_ms = 1_500;
    let addr = start(config).await;
    let attackers = 2_000;
    let mut streams = Vec::with_capacity(attackers);
    for _ in 0..attackers {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"POST /v1/score HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n{")
            .await
            .expect("write");
        streams.push(stream);
    }
    let opened = Instant::now();
    let watchers = watch(streams);
    let mut statuses = Vec::new();
    while opened.elapsed() < Duration::from_millis(1_200) {
        let (status, _) = http(
            addr,
            "POST",
            "/v1/score",
            Some(r#"{"customer":1,"products":[1,2,3]}"#),
        )
        .await;
        statuses.push(status);
    }
    assert!(
        !statuses.is_empty() && statuses.iter().all(|&s| s == 200),
        "the normal client got {statuses:?} while {attackers} bodies stalled"
    );
    // Body deadline: 1.5 s plus 1000 bytes at 64 KiB/s.
    assert_closed_within(
        watchers,
        Duration::from_secs(5),
        "stalled bodies (body deadline 1.5 s)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_client_bound_are_refused_with_json() {
    let mut config = Config::default();
    config.http.connections_per_client_max = 20;
    let addr = start(config).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Wait until the router has accepted them all: the 21st is then refused.
    let raw = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_json_error(&raw, 503, "overloaded");
    // Another client address is not affected.
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let mut other = socket.connect(addr).await.expect("connect");
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    other.read_to_end(&mut raw).await.expect("read");
    assert!(
        String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    // Closing one gives the first client its place back.
    drop(held.pop());
    common::wait_until(
        "a place given back after a connection closed",
        Duration::from_secs(5),
        || async {
            match http(addr, "GET", "/healthz", None).await {
                (200, _) => Ok(()),
                (status, body) => Err(format!("{status} {body}")),
            }
        },
    )
    .await;
}
