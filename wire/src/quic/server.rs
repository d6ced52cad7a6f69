//! The serving side: accepts connections from peers holding a certificate of the cluster CA,
//! runs the Hello exchange, then answers one request per stream through a [`Service`].
//!
//! Tasks: one per connection (handshake, Hello, then accepting streams) and one per stream (read
//! the request frame, call the service, write the response frame). A bad frame ends its stream,
//! a bad Hello its connection; neither reaches the process.

use super::{
    CLOSE_INCOMPATIBLE, CLOSE_PROTOCOL, CLOSE_SHUTDOWN, HELLO_BYTES_MAX, Hello, HelloReply,
    RequestEnvelope, ResponseEnvelope, STREAM_ABANDONED, TransportConfig, TransportError,
    client_config, server_config,
};
use crate::codec::{self, CodecError};
use crate::epoch::EpochClock;
use crate::message::{NodeError, NodeId, Request, Response};
use crate::tls::{Identity, PeerIdentity};
use quinn::{Connection, Incoming, RecvStream, SendStream, VarInt};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info, warn};

/// Who sent a request, as the server established it: the peer's certificate (verified against
/// the cluster CA at the handshake), its address, the epoch of its map and when its answer is
/// due.
#[derive(Clone, Debug)]
pub struct Caller {
    pub peer: PeerIdentity,
    pub addr: SocketAddr,
    /// The caller's map epoch (0: it has none).
    pub epoch: u64,
    /// When the caller stops waiting: work that cannot finish by then is wasted.
    pub deadline: Instant,
}

impl Caller {
    /// A caller inside this process (the demo's direct calls, tests): trusted as an operator.
    pub fn in_process(deadline: Instant) -> Self {
        Self {
            peer: PeerIdentity {
                name: "in-process".to_owned(),
                role: crate::tls::Role::Operator,
            },
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            epoch: 0,
            deadline,
        }
    }
}

/// How a service answers, which decides where the work runs:
/// - `Ready`: answered on the stream's task, a tokio worker (the request path: micro- to
///   milliseconds of CPU over memory already held, where a hop to another thread would cost
///   more than the work);
/// - `Blocking`: on tokio's blocking pool (at most 512 threads by tokio's default, and at most
///   [`TransportConfig::streams_max`] at once per connection), for work that may block on the
///   disk (staging, activation) and must never stall the workers of the request path;
/// - `Later`: a future awaited on the stream's task (Raft messages, the map watch), bounded by
///   the caller's deadline.
pub enum Reply {
    Ready(Response),
    Blocking(Box<dyn FnOnce() -> Response + Send + 'static>),
    Later(Pin<Box<dyn Future<Output = Response> + Send + 'static>>),
}

/// What a server does with a request (see [`Reply`] for where it runs).
pub trait Service: Send + Sync + 'static {
    fn call(&self, request: Request, caller: Caller) -> Reply;
}

/// A bound QUIC endpoint that serves one node. Create it with [`QuicServer::bind`], then run
/// [`QuicServer::serve`] until its shutdown future completes.
pub struct QuicServer {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    node: NodeId,
    config: Arc<TransportConfig>,
    clock: Arc<EpochClock>,
}

/// What every connection and stream task of one server shares.
struct Shared {
    node: NodeId,
    config: Arc<TransportConfig>,
    service: Arc<dyn Service>,
    clock: Arc<EpochClock>,
}

impl QuicServer {
    /// Binds a UDP socket on `addr` (port 0 picks a free port) and prepares mutual TLS with
    /// `identity`: clients must present a certificate signed by one of its roots.
    ///
    /// # Errors
    /// [`TransportError::Config`] for a configuration that fails
    /// [`TransportConfig::validate`], [`TransportError::Tls`] for a certificate or key rustls
    /// refuses, [`TransportError::Bind`] when the socket cannot be bound (also outside a tokio
    /// runtime).
    pub fn bind(
        addr: SocketAddr,
        identity: &Identity,
        node: NodeId,
        config: TransportConfig,
    ) -> Result<Self, TransportError> {
        let server_config = server_config(identity, &config)?;
        let bind = |source| TransportError::Bind { addr, source };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| bind(std::io::Error::other("no async runtime found")))?;
        let endpoint = quinn::Endpoint::new(
            identity.endpoint_config(),
            Some(server_config),
            socket,
            runtime,
        )
        .map_err(bind)?;
        let local_addr = endpoint.local_addr().map_err(TransportError::Io)?;
        Ok(Self {
            endpoint,
            local_addr,
            node,
            config: Arc::new(config),
            clock: Arc::default(),
        })
    }

    /// The epochs this server stamps and observes; shared with [`QuicServer::client_endpoint`].
    pub fn clock(&self) -> &Arc<EpochClock> {
        &self.clock
    }

    /// A client endpoint on this server's own UDP socket: the node's calls to its peers leave
    /// from its listening address, so a firewall rule or a network namespace on that address
    /// cuts the node off in both directions, as on a real network.
    ///
    /// # Errors
    /// As [`ClientEndpoint::bind`](super::ClientEndpoint::bind) for the TLS configuration.
    pub fn client_endpoint(
        &self,
        identity: &Identity,
    ) -> Result<super::ClientEndpoint, TransportError> {
        Ok(super::ClientEndpoint::from_parts(
            self.endpoint.clone(),
            self.local_addr,
            client_config(identity, &self.config)?,
            self.config.clone(),
            self.clock.clone(),
        ))
    }

    /// The address the server listens on (with the port chosen when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Serves connections until `shutdown` completes, then shuts down gracefully: new
    /// connections are refused, open connections stop accepting streams, streams in flight get
    /// up to [`TransportConfig::shutdown_grace`] to finish (their responses acknowledged), then
    /// every connection is closed with [`CLOSE_SHUTDOWN`](super::CLOSE_SHUTDOWN) and the
    /// endpoint waits up to the same grace for the closes to be sent.
    pub async fn serve(self, service: Arc<dyn Service>, shutdown: impl Future<Output = ()>) {
        let shared = Arc::new(Shared {
            node: self.node,
            config: self.config.clone(),
            service,
            clock: self.clock.clone(),
        });
        let connections = Arc::new(Semaphore::new(self.config.connections_max as usize));
        // `stop` tells connection tasks to accept no more streams; every task holds a clone of
        // `in_flight`, so `recv` returning `None` means they have all finished (mini-redis'
        // shutdown barrier).
        let (stop_sender, stop) = watch::channel(false);
        let (in_flight, mut in_flight_done) = mpsc::channel::<()>(1);
        info!(node = %self.node, addr = %self.local_addr, "serving");

        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                () = &mut shutdown => break,
                incoming = self.endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                debug!(node = %self.node, peer = %incoming.remote_address(), "connection refused: connections_max reached");
                incoming.refuse();
                continue;
            };
            tokio::spawn(serve_connection(
                incoming,
                shared.clone(),
                stop.clone(),
                in_flight.clone(),
                permit,
            ));
        }

        info!(node = %self.node, "shutting down");
        self.endpoint.set_server_config(None);
        // Receivers may all be gone already (no connection); nothing to tell then.
        let _ = stop_sender.send(true);
        drop(in_flight);
        if timeout(self.config.shutdown_grace, in_flight_done.recv())
            .await
            .is_err()
        {
            warn!(node = %self.node, "streams still in flight after the shutdown grace: cutting them");
        }
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"node shutting down");
        if timeout(self.config.shutdown_grace, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            debug!(node = %self.node, "connections still closing after the shutdown grace");
        }
    }
}

async fn serve_connection(
    incoming: Incoming,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    in_flight: mpsc::Sender<()>,
    _permit: OwnedSemaphorePermit,
) {
    let node = shared.node;
    let peer = incoming.remote_address();
    let connect_timeout = shared.config.connect_timeout;
    let connection = match timeout(connect_timeout, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            debug!(%node, %peer, %error, "handshake failed");
            return;
        }
        Err(_) => {
            debug!(%node, %peer, "handshake timed out");
            return;
        }
    };

    match timeout(connect_timeout, hello(&connection, &shared)).await {
        Ok(Ok(())) => {}
        Ok(Err(HelloOutcome::Refused(reason))) => {
            info!(%node, %peer, %reason, "peer refused at hello");
            // The reply is on its way; let the client read it and close first (it does so at
            // once), then close in any case. The reason travels in the close too, for a client
            // that missed the reply.
            let _ = timeout(connect_timeout, connection.closed()).await;
            connection.close(VarInt::from_u32(CLOSE_INCOMPATIBLE), reason.as_bytes());
            return;
        }
        Ok(Err(HelloOutcome::Broken(reason))) => {
            debug!(%node, %peer, %reason, "bad hello");
            connection.close(VarInt::from_u32(CLOSE_PROTOCOL), reason.as_bytes());
            return;
        }
        Err(_) => {
            debug!(%node, %peer, "no hello in time");
            connection.close(VarInt::from_u32(CLOSE_PROTOCOL), b"no hello in time");
            return;
        }
    }

    let identity = match peer_identity(&connection) {
        Ok(identity) => identity,
        Err(reason) => {
            info!(%node, %peer, %reason, "peer refused: its certificate names no usable role");
            connection.close(VarInt::from_u32(CLOSE_INCOMPATIBLE), reason.as_bytes());
            return;
        }
    };
    // This connection's own barrier: its stream tasks hold clones of `streams`.
    let (streams, mut streams_done) = mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            accepted = connection.accept_bi() => accepted,
        };
        match accepted {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(
                    send,
                    recv,
                    shared.clone(),
                    (peer, identity.clone()),
                    [in_flight.clone(), streams.clone()],
                ));
            }
            Err(error) => {
                debug!(%node, %peer, %error, "connection ended");
                return;
            }
        }
    }
    // Shutting down: once this connection's streams are answered (and acknowledged), close it
    // with a code that tells the client why, rather than letting it drop with code 0.
    drop(streams);
    let _ = timeout(shared.config.shutdown_grace, streams_done.recv()).await;
    connection.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"node shutting down");
}

enum HelloOutcome {
    /// The peer spoke the protocol and was refused: the reply is sent.
    Refused(String),
    /// The peer did not speak the protocol.
    Broken(String),
}

async fn hello(connection: &Connection, shared: &Shared) -> Result<(), HelloOutcome> {
    let broken = |what: &str, error: &dyn std::fmt::Display| {
        HelloOutcome::Broken(format!("{what}: {error}"))
    };
    let (mut send, mut recv) = connection
        .accept_bi()
        .await
        .map_err(|error| broken("no hello stream", &error))?;
    let payload = codec::read_frame(&mut recv, HELLO_BYTES_MAX)
        .await
        .map_err(|error| broken("bad hello frame", &error))?;
    let hello: Hello =
        codec::decode(&payload).map_err(|error| broken("hello does not decode", &error))?;

    let (node, ours) = (shared.node, shared.config.protocol_version);
    let refusal = if hello.protocol_version != ours {
        Some(format!(
            "node {node} speaks protocol {ours}, the peer {}",
            hello.protocol_version
        ))
    } else {
        match hello.expected_node {
            Some(expected) if expected != node => {
                Some(format!("this is node {node}, the peer expected {expected}"))
            }
            _ => None,
        }
    };
    let reply = match &refusal {
        Some(reason) => HelloReply::Refused {
            node,
            protocol_version: ours,
            reason: reason.clone(),
        },
        None => HelloReply::Welcome {
            node,
            protocol_version: ours,
        },
    };
    let frame = codec::encode_frame(&reply, HELLO_BYTES_MAX)
        .map_err(|error| broken("hello reply does not encode", &error))?;
    send.write_all(&frame)
        .await
        .map_err(|error| broken("hello reply not sent", &error))?;
    send.finish()
        .map_err(|error| broken("hello reply not sent", &error))?;
    match refusal {
        Some(reason) => Err(HelloOutcome::Refused(reason)),
        None => Ok(()),
    }
}

/// The peer's name and role from the certificate it presented (already verified by TLS).
fn peer_identity(connection: &Connection) -> Result<PeerIdentity, String> {
    let chain = connection
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| "no client certificate".to_owned())?;
    let leaf = chain
        .first()
        .ok_or_else(|| "an empty certificate chain".to_owned())?;
    PeerIdentity::from_certificate(leaf).map_err(|error| error.to_string())
}

/// Runs the service's answer where [`Reply`] says.
async fn call_service(shared: &Arc<Shared>, request: Request, caller: Caller) -> Response {
    let kind = request.kind();
    match shared.service.call(request, caller) {
        Reply::Ready(response) => response,
        Reply::Later(future) => future.await,
        Reply::Blocking(work) => match tokio::task::spawn_blocking(work).await {
            Ok(response) => response,
            Err(error) => {
                warn!(node = %shared.node, kind, %error, "the service failed on a request");
                Response::Error(NodeError::BadRequest(format!(
                    "the node failed on this request: {error}"
                )))
            }
        },
    }
}

/// One call: one request frame in, one response frame out. The deadline starts when the stream
/// is accepted: the request frame must arrive within the server's `request_timeout`, and the
/// response is written within the envelope's deadline (capped by the same timeout).
async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    shared: Arc<Shared>,
    (peer, identity): (SocketAddr, PeerIdentity),
    _barriers: [mpsc::Sender<()>; 2],
) {
    let started = Instant::now();
    let node = shared.node;
    let config = &shared.config;
    let frame_bytes_max = config.frame_bytes_max;

    let payload = match timeout(
        config.request_timeout,
        codec::read_frame(&mut recv, frame_bytes_max),
    )
    .await
    {
        Ok(Ok(payload)) => Ok(payload),
        // Answerable: the peer gets a reason instead of a reset.
        Ok(Err(error @ CodecError::FrameTooLarge { .. })) => Err(error),
        Ok(Err(error)) => {
            debug!(%node, %peer, %error, "request stream ended without a whole frame");
            let _ = send.reset(VarInt::from_u32(STREAM_ABANDONED));
            return;
        }
        Err(_) => {
            debug!(%node, %peer, "request frame not received in time");
            let _ = send.reset(VarInt::from_u32(STREAM_ABANDONED));
            let _ = recv.stop(VarInt::from_u32(STREAM_ABANDONED));
            return;
        }
    };

    let envelope = payload.and_then(|payload| codec::decode::<RequestEnvelope>(&payload));
    let (response, deadline) = match envelope {
        Ok(envelope) => {
            let deadline = std::time::Duration::from_millis(u64::from(envelope.deadline_ms))
                .min(config.request_timeout);
            shared.clock.observe(envelope.epoch);
            let caller = Caller {
                peer: identity,
                addr: peer,
                epoch: envelope.epoch,
                deadline: started + deadline,
            };
            (
                call_service(&shared, envelope.request, caller).await,
                deadline,
            )
        }
        Err(error) => {
            debug!(%node, %peer, %error, "bad request frame");
            // Nothing more is read from this stream.
            let _ = recv.stop(VarInt::from_u32(STREAM_ABANDONED));
            let response = Response::Error(NodeError::BadRequest(format!(
                "request frame refused: {error}"
            )));
            (response, config.request_timeout)
        }
    };

    let epoch = shared.clock.own();
    let envelope = ResponseEnvelope { epoch, response };
    let frame = match codec::encode_frame(&envelope, frame_bytes_max) {
        Ok(frame) => frame,
        Err(error) => {
            warn!(%node, %peer, %error, "response refused by the frame bound");
            let refusal = ResponseEnvelope {
                epoch,
                response: Response::Error(NodeError::BadRequest(format!(
                    "response refused: {error}"
                ))),
            };
            match codec::encode_frame(&refusal, frame_bytes_max) {
                Ok(frame) => frame,
                Err(_) => {
                    let _ = send.reset(VarInt::from_u32(STREAM_ABANDONED));
                    return;
                }
            }
        }
    };

    let deadline = started + deadline;
    let written = timeout_at(deadline, async {
        send.write_all(&frame).await?;
        send.finish()?;
        Ok::<(), quinn::WriteError>(())
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            debug!(%node, %peer, %error, "response not sent");
            return;
        }
        Err(_) => {
            debug!(%node, %peer, "response not sent before the caller's deadline");
            let _ = send.reset(VarInt::from_u32(STREAM_ABANDONED));
            return;
        }
    }
    // Hold the task (and so the shutdown barrier) until the peer has acknowledged the response:
    // a graceful shutdown closes connections only after that, so no answer is lost in a buffer.
    let _ = timeout_at(deadline, send.stopped()).await;
}
