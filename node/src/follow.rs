//! A node follows the cluster map of its Raft member: every change sets the epoch its transport
//! stamps and checks, the partitions it must hold, the version it serves as active (the map's)
//! and the versions it keeps (the map's registry: retention and `model drop` are decided
//! there). What it lacks is fetched from its peers ([`crate::repair`]): a node that cannot serve
//! the map's active version stages it from them first, and never serves an older one as current
//! meanwhile; its replicas answer for it.
//!
//! [`RaftMember`] puts the member behind the node's RPCs ([`crate::rpc::Membership`]).

use crate::repair::{catch_up, repair};
use crate::rpc::Membership;
use crate::service::Node;
use scoregrid_raft::ClusterMap;
use scoregrid_raft::member::Member;
use scoregrid_raft::peers::PeerClients;
use scoregrid_wire::epoch::EpochClock;
use scoregrid_wire::{Caller, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How long a node waits before asking again for partitions no peer could give.
pub const REPAIR_RETRY: Duration = Duration::from_secs(2);

/// The node's Raft member as the RPC layer sees it.
pub struct RaftMember(pub Arc<Member>);

impl Membership for RaftMember {
    fn is_member(&self, certificate_name: &str) -> bool {
        self.0
            .map()
            .is_some_and(|map| map.nodes.iter().any(|n| n.name == certificate_name))
    }

    fn raft(
        &self,
        payload: Vec<u8>,
        caller: Caller,
    ) -> Pin<Box<dyn Future<Output = Response> + Send>> {
        let member = self.0.clone();
        Box::pin(async move {
            let reply = member.handle_raft(&payload, &caller).await;
            encoded(&reply, Response::Raft)
        })
    }

    fn cluster(
        &self,
        payload: Vec<u8>,
        caller: Caller,
    ) -> Pin<Box<dyn Future<Output = Response> + Send>> {
        let member = self.0.clone();
        Box::pin(async move {
            let reply = member.handle_cluster(&payload, &caller).await;
            encoded(&reply, Response::Cluster)
        })
    }
}

fn encoded<T: serde::Serialize>(reply: &T, wrap: fn(Vec<u8>) -> Response) -> Response {
    match scoregrid_wire::codec::encode(reply) {
        Ok(bytes) => wrap(bytes),
        Err(error) => Response::Error(scoregrid_wire::NodeError::BadRequest(format!(
            "reply does not encode: {error}"
        ))),
    }
}

/// Applies each map of `member` to `node` until `shutdown` (see the module docs).
pub async fn follow_map(
    node: Arc<Node>,
    member: Arc<Member>,
    clock: Arc<EpochClock>,
    peers: Arc<dyn PeerClients>,
    shutdown: impl Future<Output = ()>,
) {
    let mut maps = member.subscribe();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut retry = tokio::time::interval(REPAIR_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let map = maps.borrow_and_update().clone();
        if let Some(map) = map {
            apply(&node, &map, &clock, peers.as_ref()).await;
            repair(&node, &map, peers.as_ref()).await;
            if !member.is_stale() {
                keep_listed(&node, &map).await;
            }
        }
        tokio::select! {
            changed = maps.changed() => if changed.is_err() { return },
            _ = retry.tick() => {}
            () = &mut shutdown => return,
        }
    }
}

/// The epoch, the partitions to hold, the active version.
async fn apply(node: &Arc<Node>, map: &ClusterMap, clock: &EpochClock, peers: &dyn PeerClients) {
    clock.set_own(map.epoch.0);
    node.set_must_hold(map.partitions_of(node.id()));
    let Some(version) = map.active_model().cloned() else {
        return;
    };
    if node.active().as_ref() == Some(&version) {
        return;
    }
    for attempt in 0..2 {
        let activating = node.clone();
        let wanted = version.clone();
        match tokio::task::spawn_blocking(move || activating.follow_active(&wanted)).await {
            Ok(Ok(())) => {
                tracing::info!(node = %node.id(), %version, epoch = %map.epoch, "serving the map's active version");
                return;
            }
            Ok(Err(error)) if attempt == 0 => {
                metrics::counter!("scoregrid_node_active_version_missing_total", "node" => node.id().to_string()).increment(1);
                tracing::warn!(node = %node.id(), %version, %error, "the map's active version is not here: staging it from the peers");
                catch_up(node, map, peers, &version).await;
            }
            Ok(Err(error)) => {
                tracing::warn!(node = %node.id(), %version, %error, "cannot serve the map's active version yet; its other replicas answer for it");
            }
            Err(error) => {
                tracing::warn!(node = %node.id(), %error, "activation task failed");
                return;
            }
        }
    }
}

/// Deletes the versions the map no longer lists (dropped, or retired beyond its retention).
/// Only with a map from a member in contact with a quorum: a cut-off member's map may predate
/// a registration.
async fn keep_listed(node: &Arc<Node>, map: &ClusterMap) {
    let listed: Vec<_> = map.models.iter().map(|m| m.version.clone()).collect();
    let keeping = node.clone();
    if let Err(error) = tokio::task::spawn_blocking(move || {
        keeping.keep_only(&listed, crate::staging::UPLOAD_IDLE);
    })
    .await
    {
        tracing::warn!(node = %node.id(), %error, "retention task failed");
    }
}
