//! The network transport: QUIC (quinn) with mutual TLS 1.3 (rustls on ring), one long-lived
//! connection per peer and one bidirectional stream per call.
//!
//! # Protocol
//! A connection is usable once its first bidirectional stream has carried the Hello exchange:
//! the client sends one [`Hello`] frame (its protocol version, the node it expects to reach) and
//! the server answers one [`HelloReply`] frame: [`HelloReply::Welcome`], or
//! [`HelloReply::Refused`] (another protocol version, or another node than expected), after which
//! the connection is closed with [`CLOSE_INCOMPATIBLE`] and the reason. Every further
//! bidirectional stream carries exactly one [`RequestEnvelope`] frame from the client and one
//! [`Response`](crate::Response) frame back. Frames are those of [`crate::codec`].
//!
//! `Hello` and `HelloReply` are frozen: they must decode in every future version, so that two
//! versions can always tell each other apart. Everything else may change with
//! [`PROTOCOL_VERSION`].

mod client;
mod server;

pub use client::{ClientEndpoint, QuicClient};
pub use server::{Caller, QuicServer, Reply, Service};

use crate::codec::FRAME_BYTES_MAX_DEFAULT;
use crate::message::{NodeId, Request};
use crate::tls::{CertError, Identity, crypto_provider};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The version of everything sent after the Hello exchange. Two processes talk only if theirs
/// are equal; bump it with any change to [`RequestEnvelope`], [`Request`] or
/// [`Response`](crate::Response) that an older peer would misread.
///
/// Version 2: envelopes carry the sender's map epoch; Raft and cluster-control requests.
/// Version 3: Raft appends carry the leader's contact with a quorum.
pub const PROTOCOL_VERSION: u32 = 3;

/// The TLS application protocol (ALPN) every scoregrid endpoint offers and requires: a peer that
/// is not scoregrid at all fails the TLS handshake instead of reaching the Hello.
pub const ALPN: &[u8] = b"scoregrid";

/// Bound on a Hello or HelloReply frame. They are a few dozen bytes; the bound keeps a
/// connection that has not yet proven its protocol from making the server buffer more.
pub const HELLO_BYTES_MAX: u32 = 4096;

/// Application close code: the connection is closed without an error (a client dropped).
pub const CLOSE_NORMAL: u32 = 0;
/// Application close code: the Hello exchange refused the peer (protocol version or node id);
/// the close reason says why.
pub const CLOSE_INCOMPATIBLE: u32 = 1;
/// Application close code: the server is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 2;
/// Application close code: the peer broke the protocol before or during the Hello (no Hello in
/// time, a Hello that does not decode).
pub const CLOSE_PROTOCOL: u32 = 3;

/// Stream reset code: the server gave up on a request stream (its frame did not arrive in time,
/// or was cut); the connection stays up.
pub const STREAM_ABANDONED: u32 = 1;

const _: () = assert!(HELLO_BYTES_MAX <= FRAME_BYTES_MAX_DEFAULT);

/// The first frame of every connection, client to server. Frozen (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    /// The node the client means to reach; `None` accepts any (tools, tests).
    pub expected_node: Option<NodeId>,
}

/// The server's answer to a [`Hello`]. Frozen (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Welcome {
        node: NodeId,
        protocol_version: u32,
    },
    /// The connection will be closed with [`CLOSE_INCOMPATIBLE`].
    Refused {
        node: NodeId,
        protocol_version: u32,
        reason: String,
    },
}

/// One call: the request, the time the caller will wait for it, and its map epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    /// Milliseconds the caller waits from sending. The server tells the service when that time
    /// is up (a node skips work whose answer would arrive too late) and stops writing a response
    /// once it has passed (capped by its own [`TransportConfig::request_timeout`]).
    pub deadline_ms: u32,
    /// The epoch of the caller's cluster map (0: it has none).
    pub epoch: u64,
    pub request: Request,
}

/// One answer and the epoch of the answering process's map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    pub epoch: u64,
    pub response: crate::message::Response,
}

/// Bounds and timings of the transport, shared by servers and clients. Every field is a bound;
/// [`TransportConfig::validate`] checks them together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// Largest frame payload accepted or sent, in bytes (default 16 MiB). A length prefix above
    /// it is refused before any allocation: the server answers the stream with a `BadRequest`,
    /// a client fails the call with [`RpcError::Transport`](crate::RpcError::Transport). It also
    /// sizes QUIC's connection flow-control window (twice this, at least 2 MiB): the bytes a
    /// peer may have in flight, unread, on one connection; past it the peer's sends wait.
    pub frame_bytes_max: u32,
    /// Time to open a connection: the QUIC/TLS handshake plus the Hello exchange (default 1 s).
    /// A client whose attempt exceeds it fails the call with `Unreachable`; a server drops a
    /// connection whose handshake or Hello takes longer.
    pub connect_timeout: Duration,
    /// Time a call waits for its response once connected (default 5 s), sent to the server as
    /// the envelope's deadline. Past it the call fails with `Timeout`. Callers with a tighter
    /// deadline (the router) wrap calls in their own timeout; dropping the call's future abandons
    /// its stream (the server's answer is discarded). A server also uses it to bound the wait
    /// for a request frame and caps the envelope's deadline with it.
    pub request_timeout: Duration,
    /// A connection with no packet from the peer for this long is closed (default 5 s); the next
    /// call reconnects. This is how a peer that vanished without closing (killed, cut off) is
    /// noticed: until then its calls end in `Timeout`. Must exceed `keep_alive_interval`.
    pub idle_timeout: Duration,
    /// Interval of keep-alive packets on an idle connection (default 1 s): keeps a healthy
    /// connection open and lets a dead peer be noticed within `idle_timeout`.
    pub keep_alive_interval: Duration,
    /// Concurrent bidirectional streams (calls) one connection accepts (default 256, QUIC's
    /// `max_concurrent_bidi_streams`). A client over the limit waits for a stream inside its
    /// request timeout.
    pub streams_max: u32,
    /// Connections a server holds at once (default 1024). One more is refused at once (QUIC
    /// `CONNECTION_REFUSED`), which its client sees as `Unreachable`.
    pub connections_max: u32,
    /// After a failed connect, the client fails calls at once with the same error for this long
    /// (default 250 ms) instead of reconnecting for each: no reconnect storm against a node that
    /// is down, and a node that comes back is reached within this delay.
    pub connect_backoff: Duration,
    /// On shutdown, how long a server waits for streams in flight to finish and for
    /// connections to close (default 1 s each); the rest are cut.
    pub shutdown_grace: Duration,
    /// The protocol version this process speaks (default [`PROTOCOL_VERSION`]; tests change it to
    /// simulate a peer of another version).
    pub protocol_version: u32,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(1),
            streams_max: 256,
            connections_max: 1024,
            connect_backoff: Duration::from_millis(250),
            shutdown_grace: Duration::from_secs(1),
            protocol_version: PROTOCOL_VERSION,
        }
    }
}

impl TransportConfig {
    /// # Errors
    /// [`TransportError::Config`] naming the field whose value cannot work.
    pub fn validate(&self) -> Result<(), TransportError> {
        let invalid =
            |field: &str, reason: &str| Err(TransportError::Config(format!("{field}: {reason}")));
        if self.frame_bytes_max < HELLO_BYTES_MAX {
            return invalid("frame_bytes_max", "must be at least 4096 bytes");
        }
        for (field, value) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("idle_timeout", self.idle_timeout),
            ("keep_alive_interval", self.keep_alive_interval),
        ] {
            if value.is_zero() {
                return invalid(field, "must be above zero");
            }
        }
        if self.request_timeout.as_millis() > u128::from(u32::MAX) {
            return invalid("request_timeout", "must fit in u32 milliseconds");
        }
        if self.keep_alive_interval >= self.idle_timeout {
            return invalid("keep_alive_interval", "must be shorter than idle_timeout");
        }
        if IdleTimeout::try_from(self.idle_timeout).is_err() {
            return invalid("idle_timeout", "is too long for QUIC");
        }
        if self.streams_max == 0 {
            return invalid("streams_max", "must be at least 1");
        }
        if self.connections_max == 0 {
            return invalid("connections_max", "must be at least 1");
        }
        Ok(())
    }

    fn quinn_transport(&self) -> Result<quinn::TransportConfig, TransportError> {
        self.validate()?;
        let idle_timeout = IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| TransportError::Config("idle_timeout: is too long for QUIC".into()))?;
        let receive_window = (2 * u64::from(self.frame_bytes_max)).max(2 * 1024 * 1024);
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(self.streams_max))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_idle_timeout(Some(idle_timeout))
            .keep_alive_interval(Some(self.keep_alive_interval))
            .receive_window(VarInt::from_u64(receive_window).unwrap_or(VarInt::MAX))
            .datagram_receive_buffer_size(None);
        Ok(transport)
    }

    pub(crate) fn deadline_ms(&self) -> u32 {
        u32::try_from(self.request_timeout.as_millis()).unwrap_or(u32::MAX)
    }
}

/// Why a server or a client could not be set up. Failures of a call are
/// [`RpcError`](crate::RpcError)s, not these.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("invalid transport configuration: {0}")]
    Config(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error(transparent)]
    Certificate(#[from] CertError),
    #[error("invalid server name {name:?}: {reason}")]
    ServerName { name: String, reason: String },
    #[error("could not bind UDP {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("transport i/o: {0}")]
    Io(#[source] std::io::Error),
}

fn tls_error(error: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(error.to_string())
}

/// The server side of mutual TLS: TLS 1.3 only, our ALPN, and a client certificate signed by one
/// of the identity's roots is required.
fn server_config(
    identity: &Identity,
    config: &TransportConfig,
) -> Result<quinn::ServerConfig, TransportError> {
    let provider = crypto_provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(identity.root_store()?, provider.clone())
            .build()
            .map_err(tls_error)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain().to_vec(), identity.key())
        .map_err(tls_error)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(tls_error)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server
        .transport_config(Arc::new(config.quinn_transport()?))
        .max_incoming(config.connections_max as usize);
    Ok(server)
}

/// The client side of mutual TLS: TLS 1.3 only, our ALPN, servers verified against the
/// identity's roots, and the identity presented as the client certificate.
fn client_config(
    identity: &Identity,
    config: &TransportConfig,
) -> Result<quinn::ClientConfig, TransportError> {
    let provider = crypto_provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_root_certificates(identity.root_store()?)
        .with_client_auth_cert(identity.chain().to_vec(), identity.key())
        .map_err(tls_error)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(tls_error)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(config.quinn_transport()?));
    Ok(client)
}
