//! Regression scenarios on the simulated network, with real members: each reproduces one bug
//! that a chaos run found, under conditions set by hand rather than by a seed.

use super::actors::propose;
use super::cluster::Cluster;
use super::nemesis::current_leader;
use super::net::{FIRST_ROUTER, Net, NetHandle};
use scoregrid_raft::client::{ClusterClient, Seed};
use scoregrid_raft::command::{MapCommand, MapResponse};
use scoregrid_wire::NodeId;
use std::rc::Rc;
use std::time::Duration;
use tokio::time::Instant;

/// Bug 4 (CHAOS.md), found by `chaos run` with loads: `scoregrid load` registered its version
/// (committed by the leader and one follower), then read the map through the node it was
/// given, a follower that had not applied the change yet, and gave up: "model version
/// chaos-v3 left the map during the load (dropped?)". A client reading after its own change
/// must wait for that change (`ClusterClient::map_at_least`), and a node cut off from the
/// leader must not pass for one that has it.
#[test]
fn a_client_reads_its_own_change_through_a_follower_that_lags() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let root = super::default_base().join(format!("scoregrid-sim-ryw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let net = Rc::new(Net::new(4));
        let cluster = Cluster {
            members: 3,
            root: root.clone(),
            net: NetHandle::new(net.clone()),
            routers: Vec::new(),
        };
        for id in 1..=3 {
            cluster.start(id).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let leader = loop {
            let map_ready = cluster
                .running()
                .iter()
                .all(|(_, m)| m.view().map.is_some());
            if let (Some(leader), true) = (current_leader(&cluster), map_ready) {
                break leader;
            }
            assert!(
                Instant::now() < deadline,
                "no leader with a map within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let lagging = if leader == 1 { 2 } else { 1 };
        let other = 6 - leader - lagging;
        // The lagging follower hears nothing from the leader; the leader commits with the other.
        net.links.borrow_mut().cut.insert((leader, lagging));
        net.links.borrow_mut().cut.insert((lagging, leader));
        let members = cluster.running();
        let leading = &members.iter().find(|(id, _)| *id == leader).unwrap().1;
        let maintenance = MapCommand::Maintenance {
            id: NodeId(other),
            on: true,
        };
        let epoch = match propose(leading, maintenance).await.unwrap() {
            MapResponse::Applied { epoch } => epoch,
            other => panic!("the maintenance was not applied: {other:?}"),
        };
        let client = ClusterClient::with_clients(
            vec![(
                Seed {
                    id: Some(NodeId(lagging)),
                    addr: std::net::SocketAddr::from(([127, 0, 0, 1], 7000)),
                    name: None,
                },
                cluster.net.client(FIRST_ROUTER, lagging),
            )],
            Duration::from_secs(2),
        );
        // What the loader did: the follower answers at once with a map without the change,
        // and (cut off for less than the stale bound) does not call it stale.
        let plain = client.map().await.unwrap();
        let plain_epoch = plain.map.as_ref().map(|m| m.epoch);
        assert!(plain_epoch < Some(epoch), "{plain_epoch:?} vs {epoch:?}");
        // Waiting for the change: while the follower is cut off it never has it, and the
        // view says how far behind it is.
        let behind = client.map_at_least(epoch).await.unwrap();
        assert!(behind.map.as_ref().map(|m| m.epoch) < Some(epoch));
        // Healed during the wait, the follower applies the change and answers with it.
        net.links.borrow_mut().cut.clear();
        let caught_up = client.map_at_least(epoch).await.unwrap();
        let map = caught_up.map.expect("a map");
        assert!(map.epoch >= epoch, "{:?} vs {epoch:?}", map.epoch);
        assert!(!caught_up.stale);
        for (id, _) in cluster.running() {
            cluster.crash(id).await;
        }
    });
    let _ = std::fs::remove_dir_all(&root);
}
