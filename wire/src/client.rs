//! The interface a node is reached through. A transport implements one method, [`NodeClient::call`];
//! the typed calls ([`NodeClient::fetch_customer`] and the others) check that the reply is the
//! one the request asks for, so a confused peer is an error, never a wrong answer.

use crate::message::{
    CustomerProfile, FetchCustomer, NodeError, NodeId, Request, Response, ScoreProducts,
    ScoreProductsReply, ScoreSegments, ScoreSegmentsReply,
};
use std::future::Future;
use std::pin::Pin;
use thiserror::Error;
use tokio::time::Instant;

/// A remote call in flight. Boxed so that [`NodeClient`] can be used as a trait object.
pub type RpcFuture<T> = Pin<Box<dyn Future<Output = Result<T, RpcError>> + Send + 'static>>;

/// Why a call did not produce a reply. The router decides from the variant whether to try
/// another replica (all of them) and reports it in `coverage.degraded`.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RpcError {
    #[error("node {0} is unreachable: {1}")]
    Unreachable(NodeId, String),
    #[error("node {0} did not answer in time")]
    Timeout(NodeId),
    #[error("node {node}: {error}")]
    Remote { node: NodeId, error: NodeError },
    #[error("node {0} answered with the wrong message kind")]
    UnexpectedResponse(NodeId),
    /// The node cannot be talked to by this process, and retrying will not help: another
    /// protocol version, another node than expected at that address, a certificate the other
    /// side does not trust.
    #[error("node {node} is incompatible: {reason}")]
    Incompatible { node: NodeId, reason: String },
    /// The node was reached but the call's stream failed: reset by the node, or a frame over the
    /// bound or that does not decode.
    #[error("node {node}: transport error: {reason}")]
    Transport { node: NodeId, reason: String },
}

impl RpcError {
    /// The short reason reported in `coverage.degraded`.
    pub fn reason(&self) -> &'static str {
        match self {
            RpcError::Unreachable(..) => "unreachable",
            RpcError::Timeout(_) => "timeout",
            RpcError::Remote {
                error: NodeError::UnknownVersion(_) | NodeError::StaleEpoch { .. },
                ..
            } => "stale_map",
            RpcError::Remote {
                error: NodeError::DeadlineExceeded,
                ..
            } => "timeout",
            RpcError::Remote { .. }
            | RpcError::UnexpectedResponse(_)
            | RpcError::Transport { .. } => "node_error",
            RpcError::Incompatible { .. } => "incompatible",
        }
    }
}

pub trait NodeClient: Send + Sync + 'static {
    /// The node this client talks to.
    fn node(&self) -> NodeId;

    /// Sends one request and waits for its response. `deadline`, when given, is when the caller
    /// stops waiting: the node is told, and skips work it could not finish in time.
    fn call_until(&self, request: Request, deadline: Option<Instant>) -> RpcFuture<Response>;

    /// [`NodeClient::call_until`] with the transport's own timeout.
    fn call(&self, request: Request) -> RpcFuture<Response> {
        self.call_until(request, None)
    }

    fn fetch_customer(
        &self,
        request: FetchCustomer,
        deadline: Option<Instant>,
    ) -> RpcFuture<Option<CustomerProfile>> {
        let (node, call) = (
            self.node(),
            self.call_until(Request::FetchCustomer(request), deadline),
        );
        Box::pin(async move {
            match call.await? {
                Response::Customer(profile) => Ok(profile),
                other => Err(unexpected(node, other)),
            }
        })
    }

    fn score_segments(
        &self,
        request: ScoreSegments,
        deadline: Option<Instant>,
    ) -> RpcFuture<ScoreSegmentsReply> {
        let (node, call) = (
            self.node(),
            self.call_until(Request::ScoreSegments(request), deadline),
        );
        Box::pin(async move {
            match call.await? {
                Response::Segments(reply) => Ok(reply),
                other => Err(unexpected(node, other)),
            }
        })
    }

    fn score_products(
        &self,
        request: ScoreProducts,
        deadline: Option<Instant>,
    ) -> RpcFuture<ScoreProductsReply> {
        let (node, call) = (
            self.node(),
            self.call_until(Request::ScoreProducts(request), deadline),
        );
        Box::pin(async move {
            match call.await? {
                Response::Products(reply) => Ok(reply),
                other => Err(unexpected(node, other)),
            }
        })
    }
}

fn unexpected(node: NodeId, response: Response) -> RpcError {
    match response {
        Response::Error(error) => RpcError::Remote { node, error },
        _ => RpcError::UnexpectedResponse(node),
    }
}
