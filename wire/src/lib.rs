//! The messages scoregrid processes exchange, the interface through which a router (or a
//! loader) reaches a node, and the network transport behind it: a bincode codec with bounded
//! frames, QUIC (quinn) with mutual TLS from a cluster CA, and a protocol version check at
//! connect.
//!
//! The router never calls a node's code directly: it holds [`NodeClient`]s, which are either
//! in-process (the node crate's local client) or a [`QuicClient`], with the same messages. A node
//! process serves them with a [`QuicServer`] around a [`Service`].
//!
//! # Layout
//! - [`message`]: requests, replies and the errors a node returns.
//! - [`client`]: the [`NodeClient`] trait, the typed calls built on it and [`RpcError`].
//! - [`admin`]: typed control-plane calls (status, directories, staging, activation).
//! - [`epoch`]: [`EpochClock`], the map epochs a process stamps on and reads off the wire.
//! - [`codec`]: the one module that knows the encoding (bincode 2 over serde) and the frames
//!   (`u32` length prefix, bounded before allocation).
//! - [`tls`]: the cluster CA, identities and their PEM files (`certs init`, `certs issue`).
//! - [`quic`]: the QUIC server and client, the Hello exchange and the transport bounds.

pub mod admin;
mod blob;
pub mod client;
pub mod codec;
pub mod epoch;
pub mod message;
pub mod quic;
pub mod tls;

pub use client::{NodeClient, RpcError, RpcFuture};
pub use codec::{CodecError, FRAME_BYTES_MAX_DEFAULT};
pub use epoch::EpochClock;
pub use message::{
    CustomerProfile, FetchCustomer, NodeError, NodeId, ProductScore, Request, Response,
    ScoreProducts, ScoreProductsReply, ScoreSegments, ScoreSegmentsReply, SegmentTake,
};
pub use quic::{
    Caller, ClientEndpoint, PROTOCOL_VERSION, QuicClient, QuicServer, Reply, Service,
    TransportConfig, TransportError,
};
pub use tls::{CertError, ClusterCa, Identity, PeerIdentity, Role, init_ca, issue_to_dir};
