//! The sections of [`crate::Config`]: every key, its default, and what it bounds.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The router's HTTP listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP API listens on.
    pub addr: SocketAddr,
    /// Largest request body accepted (`POST /v1/score`); larger bodies get 413.
    pub request_body_bytes_max: usize,
    /// Requests served at once (scattered to the nodes); a request beyond it waits in the
    /// admission queue. About the throughput the cluster sustains times its unloaded latency,
    /// times 2 to 4: more only moves the queue from the router, where it is bounded and shed, to
    /// the nodes, where every request waits in it (BENCHMARKS.md 3d: 4,096 slots answered an
    /// overloaded 3-node cluster's requests in about a second; 64 in a tenth of that).
    pub requests_in_flight_max: usize,
    /// Requests that may wait for a slot; one beyond it is answered 503 `overloaded` at once.
    pub queue_max: usize,
    /// How long a request may wait in the queue before it is answered 503 `overloaded`; 0 means
    /// a quarter of `router.request_deadline_ms`, so that an admitted request keeps most of its
    /// deadline for the nodes.
    pub queue_wait_ms: u64,
    /// A queue that has not been empty for this long is a standing queue: arrivals exceed what
    /// the slots serve, and a request then waits at most `queue_wait_overloaded_ms`.
    pub queue_standing_ms: u64,
    /// The wait bound in a standing queue: short, so that under sustained overload admitted
    /// requests keep their latency and the excess is shed at once.
    pub queue_wait_overloaded_ms: u64,
    /// Time to receive a request's head, counted from when the router starts waiting for one:
    /// on a new connection and again after each answer on a kept-alive one, so it is also how
    /// long an idle kept-alive connection stays open. The connection is then closed.
    pub header_read_timeout_ms: u64,
    /// Time to receive a request's body, plus one second per `body_min_bytes_per_second` of its
    /// declared length: a body that arrives slower is answered 408 and the connection closed.
    pub body_read_timeout_ms: u64,
    /// The slowest body upload that is waited for (see `body_read_timeout_ms`).
    pub body_min_bytes_per_second: u64,
    /// Client connections open at once; a connection beyond it is answered 503 and closed.
    pub connections_max: usize,
    /// Connections open at once from one client IP address, likewise.
    pub connections_per_client_max: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_body_bytes_max: 1 << 20,
            requests_in_flight_max: 64,
            queue_max: 1024,
            queue_wait_ms: 0,
            queue_standing_ms: 100,
            queue_wait_overloaded_ms: 5,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 5_000,
            body_min_bytes_per_second: 64 * 1024,
            connections_max: 16_384,
            connections_per_client_max: 4_096,
        }
    }
}

/// The weights of the scoring rule (contract section 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringConfig {
    /// Weight of the customer's affinity for the product's category.
    pub w_affinity: f32,
    /// Weight of the product's pool score in the container.
    pub w_pool: f32,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            w_affinity: 1.0,
            w_pool: 1.0,
        }
    }
}

/// Bounds of the public API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Items per page when the request gives no `limit`.
    pub limit_default: u32,
    /// Largest `limit` accepted (the contract's 1..=1000); larger is a 400.
    pub limit_max: u32,
    /// Largest `candidates` accepted; larger is a 400.
    pub candidates_max: u64,
    /// Products accepted in one `POST /v1/score` call; more is a 400.
    pub score_products_max: usize,
    /// `k` of `/v1/customers/{id}/categories` when none is given.
    pub categories_k_default: u32,
    /// Largest `k` accepted there.
    pub categories_k_max: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            limit_default: 20,
            limit_max: 1000,
            candidates_max: 10_000_000,
            score_products_max: 10_000,
            categories_k_default: 10,
            categories_k_max: 1000,
        }
    }
}

/// How the router calls nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Deadline of a whole request; a node that has not answered by then is reported in
    /// `coverage` rather than waited for.
    pub request_deadline_ms: u64,
    /// A node call still unanswered after this node's observed p95 latency gets a duplicate on
    /// another replica; the p95 is clamped to this floor...
    pub hedge_delay_min_ms: u64,
    /// ...and this ceiling. Until a node has enough samples its delay is the ceiling.
    pub hedge_delay_max_ms: u64,
    /// Consecutive failed calls that open a node's circuit: its replicas are then skipped.
    pub breaker_failures: u32,
    /// How long an open circuit stays open before one probe call may try the node again.
    pub breaker_open_ms: u64,
    /// Timeouts open a node's circuit only when they go on at least this long (and number at
    /// least `breaker_failures`) with no answer in between: a node that is slow because the
    /// cluster is saturated still answers some calls, and keeps its circuit.
    pub breaker_late_ms: u64,
    /// Hedges sent at most, as a percentage of calls (per node, with a small burst saved up).
    pub hedge_budget_percent: u32,
    /// How often the router retries what its view lacks (a directory no node gave yet); map
    /// changes themselves arrive at once through the watch.
    pub refresh_interval_ms: u64,
    /// The local address of the router's QUIC traffic to the nodes (port 0: any). Set it to
    /// the router's own IP so that a firewall rule on that address cuts the router off.
    pub quic_bind: SocketAddr,
    /// How long one watch call may wait at a node for the next map change.
    pub watch_wait_ms: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            request_deadline_ms: 1000,
            hedge_delay_min_ms: 2,
            hedge_delay_max_ms: 50,
            breaker_failures: 5,
            breaker_open_ms: 2000,
            breaker_late_ms: 1000,
            hedge_budget_percent: 5,
            refresh_interval_ms: 1000,
            quic_bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            watch_wait_ms: 2000,
        }
    }
}

/// How keys map to partitions and partitions to nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    /// Logical partitions `P`. Changing it re-shuffles every key: fixed for a cluster's life.
    pub partitions: u32,
    /// Replicas of every partition, on distinct nodes.
    pub replication_factor: u32,
    /// Points per node on the consistent-hash ring: fewer leave some nodes overloaded.
    pub virtual_nodes: u32,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            partitions: 1024,
            replication_factor: 2,
            virtual_nodes: 256,
        }
    }
}

/// How a model is cut up when it is loaded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Largest number of products in one pool segment (`S`): a bigger pool is cut into several
    /// segments, scored in parallel on several nodes.
    pub segment_products_max: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            segment_products_max: 4096,
        }
    }
}

/// `scoregrid load`: how a model version is pushed into a cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadConfig {
    /// Partition copies in flight to each node at once (`--parallelism` overrides it). Each
    /// holds one piece in flight, acknowledged by the node before the next.
    pub parallelism: u32,
    /// Bytes of one piece of a partition file on the wire (at most 4 MiB).
    pub chunk_bytes: u32,
    /// Staging rounds (each re-reads the map and sends what is still missing) before the load
    /// gives up, leaving the version staging for a rerun.
    pub rounds: u32,
    /// Where the loader builds the version (customers spilled, then one encoded file per
    /// partition) before it streams it; deleted when the load ends. Empty: the system's
    /// temporary folder (`TMPDIR`, else `/tmp`). Needs room for the encoded version.
    pub spool_dir: PathBuf,
    /// Bytes per second a load sends at most, over all nodes (staging shares the nodes' cores
    /// with readers); 0: as fast as the nodes take them.
    pub bytes_per_second: u64,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            parallelism: 2,
            chunk_bytes: 1 << 20,
            rounds: 5,
            spool_dir: PathBuf::new(),
            bytes_per_second: 0,
        }
    }
}

/// `scoregrid demo`: the in-process cluster and its synthetic model (when no `--model`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Data nodes in the demo.
    pub nodes: u32,
    pub customers: u64,
    pub products: u64,
    pub containers: u64,
    pub dim: u32,
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            customers: 100_000,
            products: 20_000,
            containers: 200,
            dim: 64,
            seed: 42,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: a level (`info`) or per-target levels (`warn,scoregrid_router=debug`).
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            // openraft's own logs are chatty (state dumps at info, an error line per failed
            // heartbeat); scoregrid logs the events that matter (elections, nodes marked down,
            // changes refused). `info,openraft=info` brings them back for debugging.
            filter: "info,openraft=off".into(),
        }
    }
}

/// The members of the cluster. Static in this release: every process reads the same list,
/// and the placement of partitions is computed from it (the next release keeps it under Raft).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Name of the cluster: the common name of its certificate authority.
    pub name: String,
    /// The data nodes, as `[[cluster.nodes]]` tables (not settable from the environment).
    pub nodes: Vec<MemberConfig>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: "scoregrid".into(),
            nodes: Vec::new(),
        }
    }
}

/// One data node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Unique, stable id (a replaced machine keeps the id of the node it replaces).
    pub id: u64,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// The name in its certificate (`scoregrid certs issue --name`), checked by TLS.
    pub name: String,
    /// Its admin HTTP address (`node.admin_addr` in its own configuration), shown in the map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
}

/// Membership on Raft: who votes, the timings of elections and of the failure detector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Ids of `cluster.nodes` that vote (3 or 5; any other node is a learner). Empty: the
    /// lowest 5 ids of `cluster.nodes` when there are 5 or more, else the lowest 3 (all when
    /// fewer). Every process must see the same voters.
    pub voters: Vec<u64>,
    /// The leader's heartbeat to every member; also how often the leader's controller looks
    /// at liveness.
    pub heartbeat_ms: u64,
    /// A follower that hears nothing from a leader for a random time in this range starts an
    /// election (openraft draws it once per start).
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A node that answers none of the leader's heartbeats for this long is marked down in
    /// the map (routers stop sending it requests at once).
    pub down_after_ms: u64,
    /// A down node must answer for this long before it is marked up again (flap damping).
    pub up_after_ms: u64,
    /// A change asked through any node (maintenance, removal, a model flip) that no leader
    /// with a quorum commits by then fails with "no quorum" (exit code 3).
    pub client_timeout_ms: u64,
    /// A process with no contact with a quorum for this long says its map may be stale
    /// (`"stale": true` in /v1/cluster, `stale_map` in answers).
    pub stale_after_ms: u64,
    /// Log entries between two snapshots of the map.
    pub snapshot_logs: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            voters: Vec::new(),
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            down_after_ms: 2000,
            up_after_ms: 2000,
            client_timeout_ms: 3000,
            stale_after_ms: 2000,
            snapshot_logs: 256,
        }
    }
}

/// `scoregrid node`: this node's identity and storage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's id: one of `cluster.nodes`.
    pub id: u64,
    /// Where partition files live: `models/<version>/p<id>.part`, the directory and the
    /// `ACTIVE` marker. A restarted node serves from it.
    pub data_dir: PathBuf,
    /// Model versions kept on disk and in RAM beside the active one (for rollback and open
    /// cursors); older ones are deleted when a new version is activated.
    pub versions_retained: u32,
    /// The node's admin HTTP listener (`host:port`): `/metrics`, `/healthz` and `/v1/status`
    /// (its own Raft view). Empty: none.
    pub admin_addr: String,
    /// The nice value of the thread that stages pieces of a load (writes, verifies and decodes
    /// them): above 0, staging gets the cores that reads leave idle. 0: the same priority as
    /// reads; -20 to 19.
    pub staging_nice: i32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: 0,
            data_dir: PathBuf::from("data"),
            versions_retained: 1,
            admin_addr: String::new(),
            staging_nice: 10,
        }
    }
}

/// Mutual TLS: every process has a certificate from the cluster's CA.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The cluster CA's certificate (`scoregrid certs init`).
    pub ca: PathBuf,
    /// This process's certificate and key (`scoregrid certs issue --name`).
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca: PathBuf::from("certs/ca.pem"),
            cert: PathBuf::from("certs/node.pem"),
            key: PathBuf::from("certs/node.key"),
        }
    }
}

/// QUIC between processes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// Largest message; a bigger one is refused before it is read (a partition file must fit).
    pub frame_bytes_max: usize,
    /// A connection not established by then fails (the peer counts as unreachable).
    pub connect_timeout_ms: u64,
    /// A connection silent for this long is closed.
    pub idle_timeout_ms: u64,
    /// Keep-alive pings on an idle connection, well inside the idle timeout.
    pub keep_alive_ms: u64,
    /// Requests in flight on one connection; more wait for a free stream.
    pub streams_max: u32,
    /// A call without an answer by then fails (routers use their own, shorter deadline).
    pub request_timeout_ms: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            frame_bytes_max: 64 << 20,
            connect_timeout_ms: 1000,
            idle_timeout_ms: 10_000,
            keep_alive_ms: 2000,
            streams_max: 1024,
            request_timeout_ms: 30_000,
        }
    }
}
