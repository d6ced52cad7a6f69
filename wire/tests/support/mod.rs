//! What the transport tests share: a cluster CA, servers on 127.0.0.1 port 0 that can be stopped
//! and restarted, and a small service that echoes what it is asked and counts its calls.

#![allow(dead_code)]

use scoregrid_shard::ModelVersion;
use scoregrid_wire::quic::QuicServer;
use scoregrid_wire::{
    Caller, ClusterCa, FetchCustomer, Identity, NodeError, NodeId, Reply, Request, Response,
    ScoreProductsReply, Service, TransportConfig,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Short timeouts, so that a test that should fail does so quickly.
pub fn test_config() -> TransportConfig {
    TransportConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        connect_backoff: Duration::from_millis(100),
        shutdown_grace: Duration::from_millis(500),
        ..TransportConfig::default()
    }
}

pub fn ca(cluster: &str) -> ClusterCa {
    ClusterCa::generate(cluster).expect("a CA can be generated")
}

pub fn identity(ca: &ClusterCa, name: &str) -> Identity {
    ca.issue(name, &["127.0.0.1".to_owned()])
        .expect("an identity can be issued")
}

pub fn version() -> ModelVersion {
    ModelVersion::new("v1").expect("valid version")
}

pub fn fetch(customer: u64) -> Request {
    Request::FetchCustomer(FetchCustomer {
        version: version(),
        customer,
    })
}

/// Echoes a `FetchCustomer`'s customer id back in `Products.missing`; sleeps `delay` first
/// (blocking the thread, as a real node's CPU work would). Answers `Status` with `Done` after
/// sleeping `control_delay` (as a control call blocked on the disk would). Counts every call.
#[derive(Default)]
pub struct EchoService {
    pub calls: AtomicU64,
    pub delay: Option<Duration>,
    pub control_delay: Option<Duration>,
}

impl EchoService {
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service for EchoService {
    fn call(&self, request: Request, _caller: Caller) -> Reply {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(delay) = self.delay {
            std::thread::sleep(delay);
        }
        match request {
            Request::FetchCustomer(fetch) => Reply::Ready(Response::Products(ScoreProductsReply {
                scores: Vec::new(),
                missing: vec![fetch.customer],
            })),
            Request::Status => {
                let delay = self.control_delay;
                Reply::Blocking(Box::new(move || {
                    if let Some(delay) = delay {
                        std::thread::sleep(delay);
                    }
                    Response::Done
                }))
            }
            _ => Reply::Ready(Response::Error(NodeError::BadRequest(
                "echo knows FetchCustomer and Status only".into(),
            ))),
        }
    }
}

/// The customer id an echo response carries.
pub fn echoed(response: &Response) -> Option<u64> {
    match response {
        Response::Products(reply) if reply.missing.len() == 1 => Some(reply.missing[0]),
        _ => None,
    }
}

pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops the server gracefully and waits (at most 5 s) for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("serve returns within 5 s of shutdown")
                .expect("serve does not panic");
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Binds a server on `addr` (port 0 for any) and serves `service` on a task.
pub fn start_server(
    addr: SocketAddr,
    identity: &Identity,
    node: NodeId,
    config: TransportConfig,
    service: Arc<dyn Service>,
) -> RunningServer {
    let server = QuicServer::bind(addr, identity, node, config).expect("server binds");
    let addr = server.local_addr();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(service, async move {
        let _ = stopped.await;
    }));
    RunningServer {
        addr,
        shutdown: Some(shutdown),
        task: Some(task),
    }
}

pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
