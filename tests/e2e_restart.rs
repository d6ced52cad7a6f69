//! A node killed with `kill -9` and restarted at once is heard by its peers at once.
//!
//! Found by the chaos harness (CHAOS.md, bug 1): the leader kept sending heartbeats on its QUIC
//! connection to the dead process, which the new process could not reset, so the restarted node
//! stayed silent to the leader until the connection's idle timeout (10 s), was marked down
//! meanwhile, and with one more fault its partitions had no replica to call. A node's QUIC
//! endpoint now derives its stateless-reset key from its private key, so the new process
//! resets the old connections at their first packet and the peers reconnect.

mod common;

use common::{ChildGuard, get_json};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_at_once_is_heard_by_the_leader_at_once() {
    let (_temp, root) = common::work_root(tempfile::tempdir().expect("tempdir"));
    let (model_dir, _) = common::generated_model(
        &root,
        &[
            "--customers",
            "200",
            "--products",
            "300",
            "--containers",
            "4",
            "--dim",
            "8",
            "--seed",
            "31",
        ],
    );
    let work = root.join("cluster");
    let env = [("SCOREGRID_PLACEMENT_PARTITIONS", "64")];
    let cluster = common::cluster_local(3, &model_dir, &work, &env);
    let lines = cluster.wait_for_lines("ready:", 180);
    let processes = common::local_processes(&lines);
    let router = processes["router"].addr;
    let (_, view) = get_json(router, "/v1/cluster").await;
    let leader = view["leader"].as_u64().expect("a leader");
    let follower = (1..=3u64).find(|id| *id != leader).expect("a follower");
    let node = &processes[&format!("node-{follower}")];

    // SAFETY: kill takes a pid and a signal; the pid is a node of our cluster, still running.
    unsafe { libc::kill(node.pid as libc::pid_t, libc::SIGKILL) };
    let restarted = ChildGuard::start(
        &["--config", &node.config, "node"],
        &[("SCOREGRID_LOG_FILTER", "info,quinn_proto=debug")],
    );
    restarted.wait_for_line("listening on quic://", 60);
    let listening = Instant::now();

    // The leader hears it within a few heartbeats, and keeps hearing it: from 1 s after it
    // listens (the old process's last contact is fresh at first) to 6 s, every look finds it up
    // with a last contact under 1 s. Before the fix the contact went stale for the whole idle
    // timeout (10 s) and the node was marked down.
    let mut seen = Vec::new();
    while listening.elapsed() < Duration::from_secs(6) {
        let (_, view) = get_json(router, "/v1/cluster").await;
        let nodes = view["nodes"].as_array().cloned().unwrap_or_default();
        let this = nodes
            .iter()
            .find(|n| n["id"] == follower)
            .cloned()
            .unwrap_or_default();
        let at = listening.elapsed();
        let contact = this["last_contact_ms"].as_u64();
        let state = this["state"].as_str().unwrap_or("").to_owned();
        seen.push(format!("{at:?}: {state} {contact:?}"));
        if at > Duration::from_secs(1) {
            assert!(
                state == "up" && contact.is_some_and(|ms| ms < 1000),
                "node {follower} restarted, leader {leader}: {seen:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("node {follower} restarted, leader {leader}: {seen:?}");
    drop(restarted);
    drop(cluster);
}
