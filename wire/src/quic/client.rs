//! The calling side: a [`QuicClient`] per peer node, implementing [`NodeClient`] over one
//! long-lived connection (opened on the first call, reopened after it breaks) with one stream per
//! call. Clients of one process share a [`ClientEndpoint`], so a router with many peers binds
//! one UDP socket.

use super::{
    CLOSE_INCOMPATIBLE, CLOSE_NORMAL, CLOSE_SHUTDOWN, HELLO_BYTES_MAX, Hello, HelloReply,
    RequestEnvelope, ResponseEnvelope, TransportConfig, TransportError, client_config,
};
use crate::client::{NodeClient, RpcError, RpcFuture};
use crate::codec::{self, CodecError};
use crate::epoch::EpochClock;
use crate::message::{NodeId, Request, Response};
use crate::tls::Identity;
use quinn::{Connection, ConnectionError, ReadError, TransportErrorCode, VarInt, WriteError};
use rustls::pki_types::ServerName;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::time::timeout;
use tracing::debug;

/// One UDP socket, the client side of mutual TLS and the transport bounds, shared by every
/// [`QuicClient`] made from it (cheap to clone). A process that talks to many nodes binds one
/// and passes it to [`QuicClient::with_endpoint`]; [`QuicClient::new`] binds one per client.
#[derive(Clone)]
pub struct ClientEndpoint {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    client_config: quinn::ClientConfig,
    config: Arc<TransportConfig>,
    clock: Arc<EpochClock>,
}

impl ClientEndpoint {
    /// Binds a UDP socket on `local` (usually `0.0.0.0:0` or `[::]:0`: the peers' address
    /// family) and prepares to present `identity` to servers and to trust its roots.
    ///
    /// # Errors
    /// [`TransportError::Config`] for a configuration that fails
    /// [`TransportConfig::validate`], [`TransportError::Tls`] for a certificate or key rustls
    /// refuses, [`TransportError::Bind`] when the socket cannot be bound (also outside a tokio
    /// runtime).
    pub fn bind(
        local: SocketAddr,
        identity: &Identity,
        config: TransportConfig,
    ) -> Result<Self, TransportError> {
        let client_config = client_config(identity, &config)?;
        let endpoint = quinn::Endpoint::client(local).map_err(|source| TransportError::Bind {
            addr: local,
            source,
        })?;
        let local_addr = endpoint.local_addr().map_err(TransportError::Io)?;
        Ok(Self {
            endpoint,
            local_addr,
            client_config,
            config: Arc::new(config),
            clock: Arc::default(),
        })
    }

    /// An endpoint over a socket that also serves (see `QuicServer::client_endpoint`).
    pub(crate) fn from_parts(
        endpoint: quinn::Endpoint,
        local_addr: SocketAddr,
        client_config: quinn::ClientConfig,
        config: Arc<TransportConfig>,
        clock: Arc<EpochClock>,
    ) -> Self {
        Self {
            endpoint,
            local_addr,
            client_config,
            config,
            clock,
        }
    }

    /// The epochs this endpoint stamps on its requests and observes on the answers.
    pub fn clock(&self) -> &Arc<EpochClock> {
        &self.clock
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// Connections currently open on this endpoint, to every peer (tests, metrics).
    pub fn open_connections(&self) -> usize {
        self.endpoint.open_connections()
    }
}

/// A [`NodeClient`] over QUIC to one node.
///
/// Connection: one per client, opened by the first call and shared by every call after it;
/// concurrent callers wait for one attempt (a tokio mutex around connecting) instead of each
/// dialling. A broken connection is replaced on the next call. A failed attempt is remembered
/// for [`TransportConfig::connect_backoff`]: calls in that window fail at once with the same
/// error.
///
/// Bounds: connecting (handshake and Hello) within [`TransportConfig::connect_timeout`], plus at
/// most as long waiting for another caller's attempt; the call itself (stream, request,
/// response) within [`TransportConfig::request_timeout`]. No await is unbounded.
///
/// Errors: cannot connect, connection lost or node shutting down -> [`RpcError::Unreachable`];
/// refused at Hello (another protocol version, another node than expected), TLS refused (a
/// certificate of another CA, another ALPN) -> [`RpcError::Incompatible`]; no response in time
/// -> [`RpcError::Timeout`]; a stream reset or a frame that is too large or does not decode ->
/// [`RpcError::Transport`]. A [`Response::Error`] is returned as a response: the typed calls of
/// [`NodeClient`] turn it into [`RpcError::Remote`].
pub struct QuicClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    node: NodeId,
    /// Whether the Hello insists on reaching `node` (false for a client to an address whose
    /// node is not known yet: `--cluster ADDR`).
    expect_node: bool,
    addr: SocketAddr,
    server_name: String,
    endpoint: ClientEndpoint,
    /// The live connection, if any. A std mutex: held for a clone, never across an await.
    connection: Mutex<Option<Connection>>,
    /// Held by the one caller that is connecting; a tokio mutex because it is held across the
    /// handshake, so that others wait for that attempt instead of starting their own.
    connecting: tokio::sync::Mutex<ConnectState>,
}

struct ConnectState {
    /// The last failed attempt: until when it stands, and its error.
    failure: Option<(Instant, RpcError)>,
}

impl QuicClient {
    /// A client to `node` at `addr`, on an endpoint of its own bound to the unspecified address
    /// of `addr`'s family. `server_name` is the name the node's certificate must carry (its
    /// `certs issue --name`).
    ///
    /// # Errors
    /// As [`ClientEndpoint::bind`] and [`QuicClient::with_endpoint`].
    pub fn new(
        node: NodeId,
        addr: SocketAddr,
        server_name: String,
        identity: &Identity,
        config: TransportConfig,
    ) -> Result<Self, TransportError> {
        let local = if addr.is_ipv4() {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        };
        let endpoint = ClientEndpoint::bind(local, identity, config)?;
        Self::with_endpoint(&endpoint, node, addr, server_name)
    }

    /// A client to `node` at `addr` on a shared endpoint. Nothing is sent until the first call.
    ///
    /// # Errors
    /// [`TransportError::ServerName`] when `server_name` is neither a DNS name nor an IP address.
    pub fn with_endpoint(
        endpoint: &ClientEndpoint,
        node: NodeId,
        addr: SocketAddr,
        server_name: String,
    ) -> Result<Self, TransportError> {
        Self::build(endpoint, node, true, addr, server_name)
    }

    /// A client to whichever node listens at `addr` (its id is not known: an operator's
    /// `--cluster ADDR`). `server_name` is checked by TLS as usual; the node's IP address, which
    /// node certificates carry as an alternative name, serves when its name is not known.
    ///
    /// # Errors
    /// As [`QuicClient::with_endpoint`].
    pub fn to_address(
        endpoint: &ClientEndpoint,
        addr: SocketAddr,
        server_name: String,
    ) -> Result<Self, TransportError> {
        Self::build(endpoint, NodeId(0), false, addr, server_name)
    }

    fn build(
        endpoint: &ClientEndpoint,
        node: NodeId,
        expect_node: bool,
        addr: SocketAddr,
        server_name: String,
    ) -> Result<Self, TransportError> {
        ServerName::try_from(server_name.as_str()).map_err(|error| TransportError::ServerName {
            name: server_name.clone(),
            reason: error.to_string(),
        })?;
        Ok(Self {
            inner: Arc::new(ClientInner {
                node,
                expect_node,
                addr,
                server_name,
                endpoint: endpoint.clone(),
                connection: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(ConnectState { failure: None }),
            }),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// True while the client holds an open connection (tests, metrics).
    pub fn is_connected(&self) -> bool {
        self.inner.live().is_some()
    }
}

impl NodeClient for QuicClient {
    fn node(&self) -> NodeId {
        self.inner.node
    }

    fn call_until(
        &self,
        request: Request,
        deadline: Option<tokio::time::Instant>,
    ) -> RpcFuture<Response> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.call(request, deadline).await })
    }
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        let connection = self
            .connection
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(connection) = connection {
            connection.close(VarInt::from_u32(CLOSE_NORMAL), b"client dropped");
        }
    }
}

impl ClientInner {
    fn config(&self) -> &TransportConfig {
        &self.endpoint.config
    }

    async fn call(
        &self,
        request: Request,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Response, RpcError> {
        let config = self.config();
        // The server learns how long this caller waits: the caller's own deadline when it has a
        // shorter one than the transport's timeout (a router's request deadline).
        let deadline_ms = match deadline {
            Some(at) => {
                let left = at.saturating_duration_since(tokio::time::Instant::now());
                u32::try_from(left.as_millis())
                    .unwrap_or(u32::MAX)
                    .min(config.deadline_ms())
            }
            None => config.deadline_ms(),
        };
        let envelope = RequestEnvelope {
            deadline_ms,
            epoch: self.endpoint.clock.own(),
            request,
        };
        // Encoded first: a request over the bound fails without touching the network.
        let frame = codec::encode_frame(&envelope, config.frame_bytes_max)
            .map_err(|error| self.transport(format!("request not sent: {error}")))?;
        let connection = self.connection().await?;
        let received_before = connection.stats().udp_rx.datagrams;
        let started = Instant::now();
        let exchange = self.exchange(&connection, &frame);
        let outcome = match deadline {
            Some(at) => {
                tokio::time::timeout_at(
                    at.min(tokio::time::Instant::now() + config.request_timeout),
                    exchange,
                )
                .await
            }
            None => timeout(config.request_timeout, exchange).await,
        };
        match outcome {
            Ok(result) => result,
            Err(_) => {
                // Not a single packet from the peer for a whole keep-alive interval (a live
                // peer acknowledges the request, or the keep-alive, within milliseconds): the
                // peer is gone, though the connection will only notice at its idle timeout.
                // Drop it, so that the next call connects afresh (to a restarted process, say)
                // instead of waiting on a dead one. A shorter silence proves nothing: a call
                // with little deadline left, or one that waited for a stream, can end before any
                // packet was due, and when this process is saturated it reads its socket late.
                // Closing then would fail every call on the connection and turn local overload
                // into false failure detection.
                if started.elapsed() >= config.keep_alive_interval
                    && connection.stats().udp_rx.datagrams == received_before
                {
                    debug!(node = %self.node, addr = %self.addr, "no packet from the peer during a call: reconnecting on the next one");
                    connection.close(VarInt::from_u32(CLOSE_NORMAL), b"peer silent");
                }
                Err(RpcError::Timeout(self.node))
            }
        }
    }

    /// One stream: the request frame out, the response frame in.
    async fn exchange(&self, connection: &Connection, frame: &[u8]) -> Result<Response, RpcError> {
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|error| self.connection_error(&error))?;
        match send.write_all(frame).await {
            Ok(()) => {
                // Fails only if the stream is already closed; the read below says why.
                let _ = send.finish();
            }
            // The server stopped reading early (a frame over its bound): its answer follows.
            Err(WriteError::Stopped(_)) => {}
            Err(error) => return Err(self.write_error(error)),
        }
        let payload = codec::read_frame(&mut recv, self.config().frame_bytes_max)
            .await
            .map_err(|error| self.read_error(error, "response"))?;
        let envelope = codec::decode::<ResponseEnvelope>(&payload)
            .map_err(|error| self.transport(format!("response does not decode: {error}")))?;
        self.endpoint.clock.observe(envelope.epoch);
        Ok(envelope.response)
    }

    /// The live connection, if it is still open.
    fn live(&self) -> Option<Connection> {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            Some(connection) if connection.close_reason().is_none() => Some(connection.clone()),
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    /// The live connection, or a new one.
    async fn connection(&self) -> Result<Connection, RpcError> {
        if let Some(connection) = self.live() {
            return Ok(connection);
        }
        let config = self.config();
        let mut state = timeout(config.connect_timeout, self.connecting.lock())
            .await
            .map_err(|_| {
                RpcError::Unreachable(
                    self.node,
                    "another call's connect attempt did not finish in time".to_owned(),
                )
            })?;
        // Another caller may have connected, or failed, while this one waited.
        if let Some(connection) = self.live() {
            return Ok(connection);
        }
        if let Some((until, error)) = &state.failure {
            let now = Instant::now();
            if now < *until {
                return Err(remembered(error, *until - now));
            }
        }
        let result = match timeout(config.connect_timeout, self.connect()).await {
            Ok(result) => result,
            Err(_) => Err(RpcError::Unreachable(
                self.node,
                format!(
                    "no connection to {} within {} ms",
                    self.addr,
                    config.connect_timeout.as_millis()
                ),
            )),
        };
        match result {
            Ok(connection) => {
                state.failure = None;
                *self
                    .connection
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(connection.clone());
                debug!(node = %self.node, addr = %self.addr, "connected");
                Ok(connection)
            }
            Err(error) => {
                debug!(node = %self.node, addr = %self.addr, %error, "connect failed");
                state.failure = Some((Instant::now() + config.connect_backoff, error.clone()));
                Err(error)
            }
        }
    }

    /// Handshake, then the Hello exchange; a connection that fails the Hello is closed.
    async fn connect(&self) -> Result<Connection, RpcError> {
        let connecting = self
            .endpoint
            .endpoint
            .connect_with(
                self.endpoint.client_config.clone(),
                self.addr,
                &self.server_name,
            )
            .map_err(|error| {
                RpcError::Unreachable(
                    self.node,
                    format!("cannot connect to {}: {error}", self.addr),
                )
            })?;
        let connection = connecting
            .await
            .map_err(|error| self.connection_error(&error))?;
        if let Err(error) = self.hello(&connection).await {
            let code = match error {
                RpcError::Incompatible { .. } => CLOSE_INCOMPATIBLE,
                _ => CLOSE_NORMAL,
            };
            connection.close(VarInt::from_u32(code), b"hello failed");
            return Err(error);
        }
        Ok(connection)
    }

    async fn hello(&self, connection: &Connection) -> Result<(), RpcError> {
        let ours = self.config().protocol_version;
        let hello = Hello {
            protocol_version: ours,
            expected_node: self.expect_node.then_some(self.node),
        };
        let frame = codec::encode_frame(&hello, HELLO_BYTES_MAX)
            .map_err(|error| self.transport(format!("hello not sent: {error}")))?;
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|error| self.connection_error(&error))?;
        send.write_all(&frame)
            .await
            .map_err(|error| self.write_error(error))?;
        let _ = send.finish();
        let payload = codec::read_frame(&mut recv, HELLO_BYTES_MAX)
            .await
            .map_err(|error| self.read_error(error, "hello reply"))?;
        let reply: HelloReply = codec::decode(&payload).map_err(|error| {
            self.incompatible(format!(
                "the hello reply from {} does not decode: {error}",
                self.addr
            ))
        })?;
        match reply {
            HelloReply::Welcome {
                node,
                protocol_version,
            } => {
                if protocol_version != ours {
                    return Err(self.incompatible(format!(
                        "node {node} speaks protocol {protocol_version}, this process {ours}"
                    )));
                }
                if self.expect_node && node != self.node {
                    return Err(self.incompatible(format!(
                        "expected node {} at {}, reached node {node}",
                        self.node, self.addr
                    )));
                }
                Ok(())
            }
            HelloReply::Refused {
                node,
                protocol_version,
                reason,
            } => Err(self.incompatible(if protocol_version != ours {
                format!("node {node} speaks protocol {protocol_version}, this process {ours}")
            } else {
                format!(
                    "node {node} at {} refused the connection: {reason}",
                    self.addr
                )
            })),
        }
    }

    fn incompatible(&self, reason: String) -> RpcError {
        RpcError::Incompatible {
            node: self.node,
            reason,
        }
    }

    fn transport(&self, reason: String) -> RpcError {
        RpcError::Transport {
            node: self.node,
            reason,
        }
    }

    /// Classifies why a connection ended, the way openraft's example does: a peer that is gone is
    /// `Unreachable`, a peer that refuses us for what we are is `Incompatible`.
    fn connection_error(&self, error: &ConnectionError) -> RpcError {
        let is_tls = |code: TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
        match error {
            ConnectionError::ApplicationClosed(close)
                if close.error_code == VarInt::from_u32(CLOSE_INCOMPATIBLE) =>
            {
                self.incompatible(String::from_utf8_lossy(&close.reason).into_owned())
            }
            ConnectionError::ApplicationClosed(close)
                if close.error_code == VarInt::from_u32(CLOSE_SHUTDOWN) =>
            {
                RpcError::Unreachable(self.node, "the node is shutting down".to_owned())
            }
            ConnectionError::ApplicationClosed(close)
                if close.error_code == VarInt::from_u32(CLOSE_NORMAL) =>
            {
                RpcError::Unreachable(self.node, "the node closed the connection".to_owned())
            }
            ConnectionError::ConnectionClosed(close) if is_tls(close.error_code) => {
                self.incompatible(format!("the node refused the TLS handshake: {close}"))
            }
            ConnectionError::TransportError(error) if is_tls(error.code) => {
                self.incompatible(format!("TLS handshake with the node failed: {error}"))
            }
            ConnectionError::VersionMismatch => {
                self.incompatible("no QUIC version in common with the node".to_owned())
            }
            other => RpcError::Unreachable(self.node, format!("connection lost: {other}")),
        }
    }

    fn write_error(&self, error: WriteError) -> RpcError {
        match error {
            WriteError::ConnectionLost(error) => self.connection_error(&error),
            other => self.transport(format!("request not sent: {other}")),
        }
    }

    fn read_error(&self, error: CodecError, what: &str) -> RpcError {
        match error {
            CodecError::Io(error) => {
                match error
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<ReadError>())
                {
                    Some(ReadError::ConnectionLost(error)) => self.connection_error(error),
                    Some(other) => self.transport(format!("{what} not received: {other}")),
                    None => self.transport(format!("{what} not received: {error}")),
                }
            }
            other => self.transport(format!("{what} refused: {other}")),
        }
    }
}

/// A failed connect repeated to a caller within the backoff, saying so.
fn remembered(error: &RpcError, left: std::time::Duration) -> RpcError {
    let note = |reason: &str| {
        format!(
            "{reason} (last attempt; next one in {} ms)",
            left.as_millis().max(1)
        )
    };
    match error {
        RpcError::Unreachable(node, reason) => RpcError::Unreachable(*node, note(reason)),
        RpcError::Incompatible { node, reason } => RpcError::Incompatible {
            node: *node,
            reason: note(reason),
        },
        other => other.clone(),
    }
}
