//! The simulated cluster: real [`Member`]s (openraft, the log store and state machine on
//! files) and real map followers (the code a router runs), all on the seeded network.

use super::SimError;
use super::net::{FIRST_ROUTER, NetHandle, SimPeers};
use scoregrid_raft::RaftPeer;
use scoregrid_raft::client::{FollowSettings, FollowedMap, Seed, follow_map_with};
use scoregrid_raft::command::MapCommand;
use scoregrid_raft::map::{NodeInfo, NodeState};
use scoregrid_raft::member::{Member, MemberSettings};
use scoregrid_wire::{EpochClock, NodeClient, NodeId};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Partitions of the simulated map.
pub const PARTITIONS: u32 = 16;
pub const HEARTBEAT: Duration = Duration::from_millis(100);
pub const ELECTION_MIN: Duration = Duration::from_millis(300);
pub const ELECTION_MAX: Duration = Duration::from_millis(600);
/// A member without contact to a quorum for this long says its map is stale.
pub const MEMBER_STALE_AFTER: Duration = Duration::from_millis(700);
/// How routers follow the map: long polls held up to `wait`; stale after `stale_after`
/// without a fresh answer.
pub const FOLLOW: FollowSettings = FollowSettings {
    wait: Duration::from_millis(500),
    stale_after: Duration::from_millis(500),
};
/// A router gives a long poll this long past `wait` before taking its node for gone
/// (`scoregrid_raft::client`).
pub const WATCH_GRACE: Duration = Duration::from_millis(500);

fn peer(id: u64) -> RaftPeer {
    RaftPeer {
        address: format!("10.0.0.{id}:7000"),
        name: format!("node-{id}"),
    }
}

fn settings(id: u64, members: u64) -> MemberSettings {
    let voters: BTreeMap<u64, RaftPeer> = (1..=members).map(|i| (i, peer(i))).collect();
    let nodes = (1..=members)
        .map(|i| NodeInfo {
            id: NodeId(i),
            address: peer(i).address,
            name: peer(i).name,
            state: NodeState::Up,
            voter: true,
            admin: None,
        })
        .collect();
    MemberSettings {
        id: NodeId(id),
        voters,
        bootstrap: MapCommand::Bootstrap {
            nodes,
            partitions: PARTITIONS,
            replication_factor: 2,
            virtual_nodes: 8,
            versions_retained: 1,
        },
        auto_initialize: true,
        heartbeat: HEARTBEAT,
        election_timeout_min: ELECTION_MIN,
        election_timeout_max: ELECTION_MAX,
        down_after: Duration::from_millis(700),
        up_after: Duration::from_millis(400),
        client_timeout: Duration::from_millis(1500),
        stale_after: MEMBER_STALE_AFTER,
        snapshot_logs: 20,
    }
}

/// A router's map follower and the switch that stops it.
pub struct SimRouter {
    pub id: u64,
    pub followed: watch::Receiver<FollowedMap>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub struct Cluster {
    pub members: u64,
    pub root: PathBuf,
    pub net: NetHandle,
    pub routers: Vec<SimRouter>,
}

impl Cluster {
    pub fn net(&self) -> std::rc::Rc<super::net::Net> {
        self.net.net()
    }

    /// Starts member `id` from its directory (a restart resumes its log and vote).
    ///
    /// # Errors
    /// The member's storage does not open.
    pub async fn start(&self, id: u64) -> Result<(), SimError> {
        let peers = Arc::new(SimPeers {
            from: id,
            net: self.net.clone(),
        });
        let member = Member::start(
            settings(id, self.members),
            &self.root.join(format!("n{id}")),
            peers,
        )
        .await
        .map_err(|e| SimError::Member(id, e.to_string()))?;
        self.net().members.borrow_mut().insert(id, member);
        Ok(())
    }

    pub async fn crash(&self, id: u64) {
        let member = self.net().members.borrow_mut().remove(&id);
        if let Some(member) = member {
            member.shutdown().await;
        }
    }

    pub fn running(&self) -> Vec<(u64, Arc<Member>)> {
        self.net()
            .members
            .borrow()
            .iter()
            .map(|(id, m)| (*id, m.clone()))
            .collect()
    }

    /// Starts router `index` (endpoint `FIRST_ROUTER + index`): the real map follower, seeded
    /// with every member, over the seeded network.
    pub fn start_router(&mut self, index: u64) {
        let id = FIRST_ROUTER + index;
        let net = self.net.clone();
        let clients: Arc<scoregrid_raft::client::SeedClients> =
            Arc::new(move |seed: &Seed| -> Option<Arc<dyn NodeClient>> {
                seed.id.map(|to| net.client(id, to.0))
            });
        let seeds = (1..=self.members)
            .filter_map(|i| {
                let peer = peer(i);
                Some(Seed {
                    id: Some(NodeId(i)),
                    addr: peer.address.parse().ok()?,
                    name: Some(peer.name),
                })
            })
            .collect();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let followed = follow_map_with(
            Arc::new(EpochClock::default()),
            clients,
            seeds,
            FOLLOW,
            async move {
                let _ = stopped.await;
            },
        );
        self.routers.push(SimRouter {
            id,
            followed,
            _stop: stop,
        });
    }
}
