//! [`NodeService`]: a node as the network sees it. Before a request reaches [`Node`] it is
//! admitted here: the caller's certificate role must allow it, a caller with an older cluster
//! map is fenced from the control plane, and each request is sent where it should run (the
//! request path inline, pieces of a load on the staging lane, other disk work on the blocking
//! pool, Raft and the map watch as futures).
//!
//! Who may ask what:
//!
//! | request | roles |
//! | --- | --- |
//! | fetch customer, score segments, score products, status, fetch directory | any |
//! | stage directory, stage partition, activate | loader, operator |
//! | read partition (a peer repairing its copy) | node, whose certificate name is a node's of the map |
//! | Raft messages | node, whose certificate name is that of the member it claims to be |
//! | cluster control (map watch, status, membership, model commands) | decided per command by the membership layer |

use crate::lane::StagingLane;
use crate::service::Node;
use scoregrid_wire::epoch::EpochClock;
use scoregrid_wire::{Caller, NodeError, Reply, Request, Response, Role};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The membership layer's side of a node's RPCs: Raft messages and cluster control, answered
/// asynchronously. Implemented by the Raft member (`scoregrid_raft`) of the node process.
pub trait Membership: Send + Sync + 'static {
    /// Whether a node of the cluster map holds a certificate of this name: node-to-node calls
    /// come only from members.
    fn is_member(&self, certificate_name: &str) -> bool;
    fn raft(
        &self,
        payload: Vec<u8>,
        caller: Caller,
    ) -> Pin<Box<dyn Future<Output = Response> + Send>>;
    fn cluster(
        &self,
        payload: Vec<u8>,
        caller: Caller,
    ) -> Pin<Box<dyn Future<Output = Response> + Send>>;
}

pub struct NodeService {
    node: Arc<Node>,
    clock: Arc<EpochClock>,
    membership: Option<Arc<dyn Membership>>,
    /// Where pieces of partition files are staged; without one, on the blocking pool.
    lane: Option<StagingLane>,
}

impl NodeService {
    /// `clock` is the node's transport clock: its own epoch is the map the node follows.
    pub fn new(
        node: Arc<Node>,
        clock: Arc<EpochClock>,
        membership: Option<Arc<dyn Membership>>,
    ) -> Self {
        Self {
            node,
            clock,
            membership,
            lane: None,
        }
    }

    /// Stages pieces of partition files on `lane` (see [`crate::lane`]).
    #[must_use]
    pub fn with_staging_lane(mut self, lane: StagingLane) -> Self {
        self.lane = Some(lane);
        self
    }

    /// Whether `caller` may make `request`.
    ///
    /// # Errors
    /// [`NodeError::NotAllowed`] naming the certificate and what it lacks, or
    /// [`NodeError::StaleEpoch`] for a control-plane call from a caller with an older map.
    fn admit(&self, request: &Request, caller: &Caller) -> Result<(), NodeError> {
        let role = caller.peer.role;
        let allowed: &[Role] = match request {
            Request::FetchCustomer(_)
            | Request::ScoreSegments(_)
            | Request::ScoreProducts(_)
            | Request::Status
            | Request::FetchDirectory(_)
            | Request::Cluster(_) => return Ok(()),
            Request::StageDirectory(_)
            | Request::StageChunk(_)
            | Request::StagedInventory(_)
            | Request::Activate(_) => &[Role::Loader, Role::Operator],
            Request::ReadPartition(_) | Request::Raft(_) => &[Role::Node],
        };
        let not_a_member = matches!(request, Request::ReadPartition(_))
            && self
                .membership
                .as_ref()
                .is_some_and(|m| !m.is_member(&caller.peer.name));
        if not_a_member {
            return Err(NodeError::NotAllowed(format!(
                "read_partition is for nodes of the cluster map; no node holds the certificate {:?}",
                caller.peer.name
            )));
        }
        if !allowed.contains(&role) {
            return Err(NodeError::NotAllowed(format!(
                "{} needs a certificate of role {}; {:?} is a {role} certificate",
                request.kind(),
                allowed
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" or "),
                caller.peer.name
            )));
        }
        // A read names its model version, which never changes under a name: a stale map cannot
        // make it wrong, and the answer's epoch tells the caller to refresh. Staging is not
        // fenced either: the flip is accepted only when the map's own staging reports cover the
        // current placement, so a copy staged by an older one is at worst not needed, and a
        // load survives the map changes (its own reports among them) that happen while it runs.
        // A direct activation and repair act on the placement: they must not use an old one.
        let fenced = !matches!(
            request,
            Request::Raft(_)
                | Request::StageDirectory(_)
                | Request::StageChunk(_)
                | Request::StagedInventory(_)
        );
        let own = self.clock.own();
        if fenced && caller.epoch < own {
            return Err(NodeError::StaleEpoch {
                sender: caller.epoch,
                receiver: own,
            });
        }
        Ok(())
    }
}

impl scoregrid_wire::Service for NodeService {
    fn call(&self, request: Request, caller: Caller) -> Reply {
        if let Err(error) = self.admit(&request, &caller) {
            tracing::info!(node = %self.node.id(), kind = request.kind(), peer = %caller.peer.name, addr = %caller.addr, %error, "request refused");
            metrics::counter!("scoregrid_node_requests_refused_total", "node" => self.node.id().to_string(), "kind" => request.kind())
                .increment(1);
            return Reply::Ready(Response::Error(error));
        }
        let no_membership = || {
            Reply::Ready(Response::Error(NodeError::Refused(
                "this node runs no Raft member".into(),
            )))
        };
        if let (Request::StageChunk(_), Some(lane)) = (&request, &self.lane) {
            let node = self.node.clone();
            return Reply::Later(Box::pin(lane.run(move || node.handle(request))));
        }
        match request {
            Request::Raft(payload) => match &self.membership {
                Some(m) => Reply::Later(m.raft(payload, caller)),
                None => no_membership(),
            },
            Request::Cluster(payload) => match &self.membership {
                Some(m) => Reply::Later(m.cluster(payload, caller)),
                None => no_membership(),
            },
            Request::FetchCustomer(_)
            | Request::ScoreSegments(_)
            | Request::ScoreProducts(_)
            | Request::Status
            | Request::FetchDirectory(_) => Reply::Ready(
                self.node
                    .handle_until(request, Some(caller.deadline.into_std())),
            ),
            Request::StageDirectory(_)
            | Request::StageChunk(_)
            | Request::StagedInventory(_)
            | Request::Activate(_)
            | Request::ReadPartition(_) => {
                let node = self.node.clone();
                Reply::Blocking(Box::new(move || node.handle(request)))
            }
        }
    }
}
