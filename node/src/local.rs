//! The in-process client: a router and nodes in one process (the demo, tests) talk through the
//! same [`NodeClient`] interface a network transport implements, so the router's logic is the
//! same whichever is behind it.

use crate::service::Node;
use scoregrid_wire::{NodeClient, NodeId, Request, Response, RpcFuture};
use std::sync::Arc;

#[derive(Clone)]
pub struct LocalClient {
    node: Arc<Node>,
}

impl LocalClient {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

impl NodeClient for LocalClient {
    fn node(&self) -> NodeId {
        self.node.id()
    }

    fn call_until(
        &self,
        request: Request,
        deadline: Option<tokio::time::Instant>,
    ) -> RpcFuture<Response> {
        // Scoring is CPU work of microseconds: done on the caller's task, as a remote node would
        // do it on its own; nothing to await.
        let response = self
            .node
            .handle_until(request, deadline.map(tokio::time::Instant::into_std));
        Box::pin(std::future::ready(Ok(response)))
    }
}
