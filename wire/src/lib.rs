//! The messages scoregrid processes exchange, and the interface through which a router (or a
//! loader) reaches a node.
//!
//! The router never calls a node's code directly: it holds [`NodeClient`]s, which today are
//! in-process (the node crate's local client) and tomorrow a QUIC connection, with the same
//! messages. Everything here is plain data with serde derives so that a transport only has to
//! frame and encode it.
//!
//! # Layout
//! - [`message`]: requests, replies and the errors a node returns.
//! - [`client`]: the [`NodeClient`] trait and the typed calls built on it.

pub mod client;
pub mod message;

pub use client::{NodeClient, RpcError, RpcFuture};
pub use message::{
    CustomerProfile, FetchCustomer, NodeError, NodeId, ProductScore, Request, Response,
    ScoreProducts, ScoreProductsReply, ScoreSegments, ScoreSegmentsReply, SegmentTake,
};
