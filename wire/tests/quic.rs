//! The QUIC transport over 127.0.0.1 with real certificates from a generated cluster CA: calls
//! and their answers, concurrency on one connection, who may connect, the Hello checks, and how
//! a client behaves when its server goes away and comes back. Every wait is bounded, so a hang
//! fails the test instead of stalling it.

mod support;

use futures_util::future::join_all;
use scoregrid_wire::codec;
use scoregrid_wire::quic::{Hello, HelloReply};
use scoregrid_wire::{
    Caller, ClientEndpoint, Identity, NodeClient, NodeError, NodeId, PROTOCOL_VERSION, QuicClient,
    Reply, Request, Response, Role, RpcError, ScoreProducts, Service, TransportConfig,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{
    EchoService, ca, echoed, fetch, identity, localhost, start_server, test_config, version,
};
use tokio::time::timeout;

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);

fn quic_client(
    node: NodeId,
    addr: std::net::SocketAddr,
    identity: &Identity,
    config: TransportConfig,
) -> QuicClient {
    QuicClient::new(node, addr, format!("n{}", node.0), identity, config).expect("client builds")
}

/// Proves a request reaches the service over QUIC + mTLS and its own response comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_gets_its_response() {
    let ca = ca("test");
    let service = Arc::new(EchoService::default());
    let server = start_server(
        localhost(),
        &identity(&ca, "n1"),
        N1,
        test_config(),
        service.clone(),
    );
    let client = quic_client(N1, server.addr, &identity(&ca, "router"), test_config());

    let response = timeout(Duration::from_secs(5), client.call(fetch(42)))
        .await
        .expect("answered within 5 s")
        .expect("call succeeds");
    assert_eq!(echoed(&response), Some(42));
    assert_eq!(service.calls(), 1);

    // An id at the top of the range survives the trip too.
    let response = client.call(fetch(u64::MAX)).await.expect("call succeeds");
    assert_eq!(echoed(&response), Some(u64::MAX));
    server.stop().await;
}

/// Proves 200 calls issued at once over one connection are all answered, each with its own
/// response, even with the per-connection stream bound (16) far below the number of calls:
/// callers over the bound wait for a stream instead of failing. One connection is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_share_one_connection() {
    let ca = ca("test");
    let config = TransportConfig {
        streams_max: 16,
        ..test_config()
    };
    let service = Arc::new(EchoService::default());
    let server = start_server(
        localhost(),
        &identity(&ca, "n1"),
        N1,
        config.clone(),
        service.clone(),
    );
    let endpoint = ClientEndpoint::bind(localhost(), &identity(&ca, "router"), config)
        .expect("endpoint binds");
    let client =
        QuicClient::with_endpoint(&endpoint, N1, server.addr, "n1".into()).expect("client builds");

    let calls = (0..200u64).map(|id| client.call(fetch(id)));
    let responses = timeout(Duration::from_secs(10), join_all(calls))
        .await
        .expect("all answered within 10 s");
    for (id, response) in responses.into_iter().enumerate() {
        let response = response.expect("call succeeds");
        assert_eq!(echoed(&response), Some(id as u64));
    }
    assert_eq!(service.calls(), 200);
    assert_eq!(endpoint.open_connections(), 1);
    server.stop().await;
}

/// Proves a client whose certificate was signed by another CA cannot get a call through: it
/// gets `Incompatible` (the server refused its certificate), and the service is never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_from_another_ca_is_refused() {
    let cluster_ca = ca("test");
    let rogue_ca = ca("rogue");
    let service = Arc::new(EchoService::default());
    let server = start_server(
        localhost(),
        &identity(&cluster_ca, "n1"),
        N1,
        test_config(),
        service.clone(),
    );

    // Trusts the cluster CA (so it accepts the server) but presents a certificate of another CA.
    let rogue = identity(&rogue_ca, "router").with_roots(vec![cluster_ca.certificate().clone()]);
    let client = quic_client(N1, server.addr, &rogue, test_config());
    let error = timeout(Duration::from_secs(5), client.call(fetch(1)))
        .await
        .expect("refused within 5 s")
        .expect_err("the call must fail");
    assert!(
        matches!(error, RpcError::Incompatible { node: N1, .. }),
        "unexpected error: {error}"
    );
    assert_eq!(error.reason(), "incompatible");
    assert_eq!(service.calls(), 0);
    server.stop().await;
}

/// Proves a client that presents no certificate at all cannot get a stream answered: the TLS
/// handshake is refused by the server's client verifier, and the service is never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_certificate_is_refused() {
    let ca = ca("test");
    let service = Arc::new(EchoService::default());
    let server = start_server(
        localhost(),
        &identity(&ca, "n1"),
        N1,
        test_config(),
        service.clone(),
    );

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.certificate().clone()).expect("root");
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"scoregrid".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic crypto");
    let endpoint = quinn::Endpoint::client(localhost()).expect("endpoint");
    let attempt = async {
        let connection = endpoint
            .connect_with(
                quinn::ClientConfig::new(Arc::new(crypto)),
                server.addr,
                "n1",
            )
            .map_err(|error| format!("{error:?}"))?
            .await
            .map_err(|error| format!("{error:?}"))?;
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|error| format!("{error:?}"))?;
        send.write_all(&[0, 0, 0, 0])
            .await
            .map_err(|error| format!("{error:?}"))?;
        recv.read_to_end(1024)
            .await
            .map_err(|error| format!("{error:?}"))
    };
    let result = timeout(Duration::from_secs(5), attempt)
        .await
        .expect("refused within 5 s");
    let error = result.expect_err("a client without certificate must not get an answer");
    // A TLS alert from the server (QUIC crypto error), wherever the client notices it.
    assert!(error.contains("crypto"), "unexpected error: {error}");
    assert_eq!(service.calls(), 0);
    server.stop().await;
}

/// Proves a peer of another protocol version gets `Incompatible` naming both versions, in well
/// under a second (a hang would fail the 1 s timeout), in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_protocol_version_is_incompatible_quickly() {
    let ca = ca("test");
    let service = Arc::new(EchoService::default());
    let server = start_server(
        localhost(),
        &identity(&ca, "n1"),
        N1,
        test_config(),
        service.clone(),
    );
    let (ours, theirs) = (PROTOCOL_VERSION, PROTOCOL_VERSION + 1);
    let newer = TransportConfig {
        protocol_version: theirs,
        ..test_config()
    };
    let client = quic_client(N1, server.addr, &identity(&ca, "router"), newer.clone());
    let started = Instant::now();
    let error = timeout(Duration::from_secs(1), client.call(fetch(1)))
        .await
        .expect("refused within 1 s, not hung")
        .expect_err("another version must be refused");
    let RpcError::Incompatible { node, reason } = &error else {
        panic!("expected Incompatible, got {error}");
    };
    assert_eq!(*node, N1);
    assert!(
        reason.contains(&format!("speaks protocol {ours}"))
            && reason.contains(&format!("this process {theirs}")),
        "the reason must name both versions: {reason}"
    );
    eprintln!("refused in {:?}: {error}", started.elapsed());
    assert_eq!(service.calls(), 0);
    server.stop().await;

    // The other way round: a newer server, an older client.
    let server = start_server(
        localhost(),
        &identity(&ca, "n1"),
        N1,
        newer,
        service.clone(),
    );
    let client = quic_client(N1, server.addr, &identity(&ca, "router"), test_config());
    let error = timeout(Duration::from_secs(1), client.call(fetch(1)))
        .await
        .expect("refused within 1 s, not hung")
        .expect_err("another version must be refused");
    assert!(
        error
            .to_string()
            .contains(&format!("speaks protocol {theirs}"))
            && error.to_string().contains(&format!("this process {ours}")),
        "the reason must name both versions: {error}"
    );
    assert_eq!(service.calls(), 0);
    server.stop().await;
}

/// Proves a client configured for node n1 that reaches n2 (a wrong address in its map) is told
/// so with `Incompatible` and never has a request served there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaching_another_node_than_expected_is_incompatible() {
    let ca = ca("test");
    let service = Arc::new(EchoService::default());
    let server = start_server(
        localhost(),
        &identity(&ca, "n2"),
        N2,
        test_config(),
        service.clone(),
    );
    // Expects n1, but the certificate name and the address are n2's.
    let client = QuicClient::new(
        N1,
        server.addr,
        "n2".into(),
        &identity(&ca, "router"),
        test_config(),
    )
    .expect("client builds");
    let error = timeout(Duration::from_secs(2), client.call(fetch(1)))
        .await
        .expect("refused within 2 s")
        .expect_err("the wrong node must be refused");
    let RpcError::Incompatible { node, reason } = &error else {
        panic!("expected Incompatible, got {error}");
    };
    assert_eq!(*node, N1);
    assert!(reason.contains("n2") && reason.contains("n1"), "{reason}");
    assert_eq!(service.calls(), 0);
    server.stop().await;
}

/// Proves a server that is down gives `Unreachable` within the connect timeout, and that the
/// failure is remembered: the next call within the backoff fails at once without dialling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_is_unreachable_within_the_connect_timeout() {
    let ca = ca("test");
    // A port that nothing listens on: bind it, note it, let it go.
    let addr = std::net::UdpSocket::bind(localhost())
        .and_then(|socket| socket.local_addr())
        .expect("a free port");
    let config = TransportConfig {
        connect_timeout: Duration::from_millis(300),
        connect_backoff: Duration::from_secs(2),
        ..test_config()
    };
    let client = quic_client(N1, addr, &identity(&ca, "router"), config);

    let started = Instant::now();
    let error = timeout(Duration::from_secs(2), client.call(fetch(1)))
        .await
        .expect("fails within 2 s")
        .expect_err("nobody answers");
    let first = started.elapsed();
    assert!(matches!(error, RpcError::Unreachable(N1, _)), "{error}");
    assert_eq!(error.reason(), "unreachable");
    assert!(
        first < Duration::from_millis(800),
        "took {first:?}, connect timeout is 300 ms"
    );

    let started = Instant::now();
    let error = client.call(fetch(2)).await.expect_err("still down");
    let second = started.elapsed();
    assert!(matches!(error, RpcError::Unreachable(N1, _)), "{error}");
    assert!(
        second < Duration::from_millis(100),
        "backoff must fail fast, took {second:?}"
    );
}

/// Proves the client survives a server restart on the same address: while the server is down
/// calls fail with `Unreachable` (not a hang), and once it is back a call succeeds on a new
/// connection, served by the new server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_after_the_server_restarts() {
    let ca = ca("test");
    let node_identity = identity(&ca, "n1");
    let first_service = Arc::new(EchoService::default());
    let server = start_server(
        localhost(),
        &node_identity,
        N1,
        test_config(),
        first_service.clone(),
    );
    let addr = server.addr;
    let client = quic_client(N1, addr, &identity(&ca, "router"), test_config());
    assert_eq!(
        echoed(&client.call(fetch(1)).await.expect("first call")),
        Some(1)
    );
    assert!(client.is_connected());

    server.stop().await;
    let error = timeout(Duration::from_secs(2), client.call(fetch(2)))
        .await
        .expect("fails within 2 s")
        .expect_err("the server is down");
    assert!(matches!(error, RpcError::Unreachable(N1, _)), "{error}");

    // The old endpoint's socket may take a moment to be released.
    let second_service = Arc::new(EchoService::default());
    let deadline = Instant::now() + Duration::from_secs(5);
    let server = loop {
        match scoregrid_wire::QuicServer::bind(addr, &node_identity, N1, test_config()) {
            Ok(server) => break server,
            Err(error) if Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("could not rebind {addr}: {error}"),
        }
    };
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(second_service.clone(), async move {
        let _ = stopped.await;
    }));

    // Within the backoff a call may still fail fast; after it, one must succeed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let response = loop {
        match timeout(Duration::from_secs(2), client.call(fetch(3))).await {
            Ok(Ok(response)) => break response,
            Ok(Err(error)) if Instant::now() < deadline => {
                eprintln!("while reconnecting: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("no reconnection within 5 s: {other:?}"),
        }
    };
    assert_eq!(echoed(&response), Some(3));
    assert_eq!(second_service.calls(), 1);
    assert_eq!(first_service.calls(), 1);
    let _ = shutdown.send(());
    timeout(Duration::from_secs(5), serving)
        .await
        .expect("serve returns")
        .expect("serve does not panic");
}

/// Proves a request frame over the server's bound ends only its own stream: the service is not
/// called, the caller gets a `BadRequest` naming both sizes (not a hang or a reset), and the
/// same connection then serves the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_ends_its_stream_not_the_connection() {
    let ca = ca("test");
    let service = Arc::new(EchoService::default());
    let server_config = TransportConfig {
        frame_bytes_max: 4096,
        ..test_config()
    };
    let server = start_server(
        localhost(),
        &identity(&ca, "n1"),
        N1,
        server_config,
        service.clone(),
    );
    let client = quic_client(N1, server.addr, &identity(&ca, "router"), test_config());

    let big = Request::ScoreProducts(ScoreProducts {
        version: version(),
        vector: vec![0.5; 64],
        products: (0..10_000).collect(),
    });
    let response = timeout(Duration::from_secs(5), client.call(big))
        .await
        .expect("answered within 5 s")
        .expect("the stream is answered");
    let Response::Error(NodeError::BadRequest(message)) = &response else {
        panic!("expected BadRequest, got {response:?}");
    };
    assert!(
        message.contains("exceeds the bound of 4096 bytes"),
        "{message}"
    );
    assert_eq!(service.calls(), 0);

    let response = client
        .call(fetch(7))
        .await
        .expect("the connection still serves");
    assert_eq!(echoed(&response), Some(7));
    server.stop().await;
}

/// Proves a graceful shutdown answers the call in flight before closing: the service takes
/// 300 ms, the shutdown is asked for 50 ms into it, and the caller still gets its response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_calls_in_flight() {
    let ca = ca("test");
    let service = Arc::new(EchoService {
        delay: Some(Duration::from_millis(300)),
        ..EchoService::default()
    });
    let config = TransportConfig {
        shutdown_grace: Duration::from_secs(2),
        ..test_config()
    };
    let server = start_server(
        localhost(),
        &identity(&ca, "n1"),
        N1,
        config,
        service.clone(),
    );
    let client = Arc::new(quic_client(
        N1,
        server.addr,
        &identity(&ca, "router"),
        test_config(),
    ));
    // Connect first, so that the slow call below is in flight when the shutdown begins.
    let warm = timeout(Duration::from_secs(5), client.call(fetch(0)))
        .await
        .expect("answered within 5 s")
        .expect("warm-up call succeeds");
    assert_eq!(echoed(&warm), Some(0));

    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.call(fetch(9)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.stop().await;
    let response = timeout(Duration::from_secs(2), in_flight)
        .await
        .expect("answered within 2 s")
        .expect("task does not panic")
        .expect("the call in flight is answered");
    assert_eq!(echoed(&response), Some(9));
}

/// Opens a raw QUIC connection with a certificate of `ca` (read back from the files
/// `issue_to_dir` writes) and sends `hello`; returns the server's reply and how the connection
/// then ended (if it did within `wait_for_close`). Lets the server's Hello checks be tested on their own,
/// without the client's own checks in front of them.
async fn raw_hello(
    ca: &scoregrid_wire::ClusterCa,
    addr: std::net::SocketAddr,
    hello: &Hello,
    wait_for_close: Duration,
) -> (HelloReply, Option<quinn::ConnectionError>) {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().expect("tempdir");
    ca.write_to_dir(dir.path()).expect("CA written");
    let tool =
        scoregrid_wire::issue_to_dir(dir.path(), "tool", scoregrid_wire::Role::Operator, &[])
            .expect("issued");
    let key = PrivateKeyDer::from_pem_file(dir.path().join("tool.key")).expect("key");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.certificate().clone()).expect("root");
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(tool.chain().to_vec(), key)
        .expect("client auth");
    tls.alpn_protocols = vec![scoregrid_wire::quic::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic crypto");
    let endpoint = quinn::Endpoint::client(localhost()).expect("endpoint");
    let connection = endpoint
        .connect_with(quinn::ClientConfig::new(Arc::new(crypto)), addr, "n1")
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, mut recv) = connection.open_bi().await.expect("stream");
    let frame = codec::encode_frame(hello, scoregrid_wire::quic::HELLO_BYTES_MAX).expect("encodes");
    send.write_all(&frame).await.expect("hello sent");
    send.finish().expect("finished");
    let payload = timeout(Duration::from_secs(2), codec::read_frame(&mut recv, 4096))
        .await
        .expect("reply within 2 s")
        .expect("reply frame");
    let reply: HelloReply = codec::decode(&payload).expect("reply decodes");
    // Do not close from this side: see whether the server does.
    let closed = timeout(wait_for_close, connection.closed()).await.ok();
    (reply, closed)
}

/// Proves the server's own Hello checks, with no client-side check in front: another protocol
/// version and another expected node are refused with a reply naming both values and the
/// connection is closed with `CLOSE_INCOMPATIBLE` carrying the reason; a matching Hello is
/// welcomed and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_checks_the_hello_itself() {
    let ca = ca("test");
    let service = Arc::new(EchoService::default());
    let server = start_server(
        localhost(),
        &identity(&ca, "n1"),
        N1,
        test_config(),
        service.clone(),
    );

    let (ours, theirs) = (PROTOCOL_VERSION, PROTOCOL_VERSION + 1);
    let (reply, closed) = raw_hello(
        &ca,
        server.addr,
        &Hello {
            protocol_version: theirs,
            expected_node: Some(N1),
        },
        Duration::from_secs(2),
    )
    .await;
    let HelloReply::Refused {
        node,
        protocol_version,
        reason,
    } = reply
    else {
        panic!("expected Refused, got {reply:?}");
    };
    assert_eq!((node, protocol_version), (N1, ours));
    assert!(
        reason.contains(&format!("protocol {ours}")) && reason.contains(&format!("peer {theirs}")),
        "{reason}"
    );
    let Some(quinn::ConnectionError::ApplicationClosed(close)) = closed else {
        panic!("expected the server to close the connection, got {closed:?}");
    };
    assert_eq!(
        close.error_code,
        quinn::VarInt::from_u32(scoregrid_wire::quic::CLOSE_INCOMPATIBLE)
    );
    assert_eq!(String::from_utf8_lossy(&close.reason), reason);

    let (reply, closed) = raw_hello(
        &ca,
        server.addr,
        &Hello {
            protocol_version: ours,
            expected_node: Some(NodeId(9)),
        },
        Duration::from_secs(2),
    )
    .await;
    let HelloReply::Refused { reason, .. } = reply else {
        panic!("expected Refused, got {reply:?}");
    };
    assert!(reason.contains("n1") && reason.contains("n9"), "{reason}");
    assert!(
        closed.is_some(),
        "the server must close a refused connection"
    );

    let (reply, closed) = raw_hello(
        &ca,
        server.addr,
        &Hello {
            protocol_version: ours,
            expected_node: None,
        },
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        reply,
        HelloReply::Welcome {
            node: N1,
            protocol_version: ours
        }
    );
    assert!(closed.is_none(), "a welcomed connection stays open");
    assert_eq!(service.calls(), 0);
    server.stop().await;
}

/// Proves a slow control-plane call does not hold up the request path: four `Status` calls that
/// each block for 1 s are in flight (inline, they would occupy both runtime workers), and a
/// `FetchCustomer` sent meanwhile is still answered within 600 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_control_calls_do_not_block_the_request_path() {
    let ca = ca("test");
    let service = Arc::new(EchoService {
        control_delay: Some(Duration::from_secs(1)),
        ..EchoService::default()
    });
    let server = start_server(
        localhost(),
        &identity(&ca, "n1"),
        N1,
        test_config(),
        service.clone(),
    );
    let client = Arc::new(quic_client(
        N1,
        server.addr,
        &identity(&ca, "router"),
        test_config(),
    ));
    client.call(fetch(0)).await.expect("warm-up call");

    let slow: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.call(Request::Status).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = timeout(Duration::from_millis(600), client.call(fetch(8)))
        .await
        .expect("the request path is answered within 600 ms")
        .expect("call succeeds");
    assert_eq!(echoed(&response), Some(8));
    for call in slow {
        let response = timeout(Duration::from_secs(3), call)
            .await
            .expect("control call answered")
            .expect("task does not panic")
            .expect("call succeeds");
        assert_eq!(response, Response::Done);
    }
    server.stop().await;
}

/// Records who called: the name and role of the caller's certificate, its epoch, and how long
/// it said it would wait.
#[derive(Default)]
struct WhoCalled {
    seen: std::sync::Mutex<Vec<(String, Role, u64, Duration)>>,
}

impl Service for WhoCalled {
    fn call(&self, _request: Request, caller: Caller) -> Reply {
        let left = caller
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        self.seen.lock().expect("lock").push((
            caller.peer.name.clone(),
            caller.peer.role,
            caller.epoch,
            left,
        ));
        Reply::Ready(Response::Done)
    }
}

/// Proves the server hands its service the caller's certificate name and role, the caller's map
/// epoch and deadline, and that each side learns the other's epoch from the envelopes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_sees_who_calls_and_both_sides_learn_the_epochs() {
    let ca = ca("test");
    let service = Arc::new(WhoCalled::default());
    let server =
        scoregrid_wire::QuicServer::bind(localhost(), &identity(&ca, "n1"), N1, test_config())
            .expect("binds");
    server.clock().set_own(7);
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(service.clone(), async move {
        let _ = stopped.await;
    }));
    let endpoint = ClientEndpoint::bind(localhost(), &identity(&ca, "router-a"), test_config())
        .expect("endpoint");
    endpoint.clock().set_own(3);
    let client = QuicClient::with_endpoint(&endpoint, N1, addr, "n1".into()).expect("client");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
    let response = client
        .call_until(Request::Status, Some(deadline))
        .await
        .expect("answered");
    assert_eq!(response, Response::Done);
    let seen = service.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    let (name, role, epoch, left) = &seen[0];
    assert_eq!(
        (name.as_str(), *role, *epoch),
        ("router-a", Role::Router, 3)
    );
    assert!(
        *left <= Duration::from_millis(400),
        "the caller's deadline travels: {left:?}"
    );
    assert_eq!(
        endpoint.clock().observed(),
        7,
        "the client learns the node's epoch"
    );
    let _ = stop.send(());
    let _ = timeout(Duration::from_secs(5), task).await;
}

/// Proves a call that times out before any packet was due does not close the connection (the
/// defect: under overload the router's short-deadline calls closed connections that other calls
/// were using, and those failed as if the node were gone). One stream: a `Status` call holds it
/// for 600 ms, and a call with a 50 ms deadline sent 200 ms later waits for it and times out; the slow call still
/// gets its answer on the same connection, and a later call needs no new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_call_timing_out_keeps_the_connection_for_the_others() {
    let ca = ca("test");
    let config = TransportConfig {
        streams_max: 1,
        ..test_config()
    };
    let service = Arc::new(EchoService {
        control_delay: Some(Duration::from_millis(600)),
        ..EchoService::default()
    });
    let server = start_server(
        localhost(),
        &identity(&ca, "n1"),
        N1,
        config.clone(),
        service.clone(),
    );
    let client = Arc::new(quic_client(
        N1,
        server.addr,
        &identity(&ca, "router"),
        config,
    ));
    client.call(fetch(0)).await.expect("warm-up call");

    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.call(Request::Status).await }
    });
    // The slow call holds the stream once the service has it.
    let started = Instant::now();
    while service.calls() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the slow call never arrived"
        );
        tokio::task::yield_now().await;
    }
    // Let the acknowledgements of the slow call's request arrive, so that the peer is quiet
    // (as a saturated one is) while the short call waits: this sleep is the quiet time itself.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
    let short = client.call_until(fetch(1), Some(deadline)).await;
    assert!(matches!(short, Err(RpcError::Timeout(N1))), "{short:?}");

    let slow = timeout(Duration::from_secs(5), slow)
        .await
        .expect("the slow call ends")
        .expect("task does not panic");
    assert_eq!(
        slow,
        Ok(Response::Done),
        "the slow call lost its connection"
    );
    let response = client.call(fetch(2)).await.expect("a later call succeeds");
    assert_eq!(echoed(&response), Some(2));
    server.stop().await;
}
