//! What the router knows: its configuration and a swappable [`ClusterView`] (the cluster map,
//! each retained model version's directory, a client per node). A request loads the view once
//! and uses that snapshot throughout, so a map change never mixes two views in one answer.

use crate::admission::{Admission, AdmissionBounds};
use crate::routee::{Routee, RouteePolicy};
use arc_swap::ArcSwapOption;
use metrics_exporter_prometheus::PrometheusHandle;
use scoregrid_config::Config;
use scoregrid_raft::ClusterMap;
use scoregrid_shard::{Directory, ModelVersion};
use scoregrid_wire::{NodeClient, NodeId};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Where the router's map comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// A map handed to the router once (the demo's in-process cluster, tests): no Raft.
    Static,
    /// The Raft-replicated map, followed through the nodes' watch.
    Raft {
        leader: Option<NodeId>,
        term: u64,
        /// No node in contact with a quorum has answered for `raft.stale_after_ms`: the map
        /// may be out of date. Reads go on from it, and say so.
        stale: bool,
        /// The node the map came from.
        source: Option<NodeId>,
    },
}

impl Membership {
    pub fn is_stale(&self) -> bool {
        matches!(self, Membership::Raft { stale: true, .. })
    }
}

pub struct ClusterView {
    pub map: ClusterMap,
    pub membership: Membership,
    /// Directories of the retained model versions (the active one and those kept for cursors).
    pub directories: HashMap<ModelVersion, Arc<Directory>>,
    pub routees: HashMap<NodeId, Arc<Routee>>,
}

impl ClusterView {
    pub fn new(
        map: ClusterMap,
        directories: Vec<Directory>,
        clients: Vec<Arc<dyn NodeClient>>,
        policy: RouteePolicy,
    ) -> Self {
        Self {
            map,
            membership: Membership::Static,
            directories: directories
                .into_iter()
                .map(|d| (d.version.clone(), Arc::new(d)))
                .collect(),
            routees: clients
                .into_iter()
                .map(|c| (c.node(), Arc::new(Routee::new(c, policy))))
                .collect(),
        }
    }

    /// A view over routees that outlive it (their breakers and latencies carry over).
    pub fn from_parts(
        map: ClusterMap,
        membership: Membership,
        directories: HashMap<ModelVersion, Arc<Directory>>,
        routees: HashMap<NodeId, Arc<Routee>>,
    ) -> Self {
        Self {
            map,
            membership,
            directories,
            routees,
        }
    }

    /// The active version and its directory.
    pub fn active(&self) -> Option<(&ModelVersion, &Arc<Directory>)> {
        let version = self.map.active_model()?;
        Some((version, self.directories.get(version)?))
    }
}

pub struct RouterState {
    pub config: Config,
    view: ArcSwapOption<ClusterView>,
    /// Bounds the requests served at once and those waiting for a slot.
    pub(crate) admission: Admission,
    pub(crate) request_seq: AtomicU64,
    pub(crate) prometheus: Option<PrometheusHandle>,
}

impl RouterState {
    pub fn new(config: Config) -> Self {
        let http = &config.http;
        let queue_wait = match http.queue_wait_ms {
            0 => Duration::from_millis(config.router.request_deadline_ms / 4),
            ms => Duration::from_millis(ms),
        };
        let admission = Admission::new(AdmissionBounds {
            slots: http.requests_in_flight_max,
            queue_max: http.queue_max,
            wait: queue_wait,
            standing: Duration::from_millis(http.queue_standing_ms),
            wait_overloaded: Duration::from_millis(http.queue_wait_overloaded_ms),
        });
        Self {
            config,
            view: ArcSwapOption::empty(),
            admission,
            request_seq: AtomicU64::new(1),
            prometheus: crate::telemetry::prometheus(),
        }
    }

    /// Replaces the cluster view; requests in flight finish on the one they loaded.
    pub fn set_view(&self, view: ClusterView) {
        if let Some((version, directory)) = view.active() {
            metrics::gauge!("scoregrid_router_active_containers", "version" => version.to_string())
                .set(directory.containers.len() as f64);
        }
        self.view.store(Some(Arc::new(view)));
    }

    pub fn view(&self) -> Option<Arc<ClusterView>> {
        self.view.load_full()
    }

    /// The breaker and hedging settings of `[router]`, for the routees of a new view.
    pub fn routee_policy(&self) -> RouteePolicy {
        let r = &self.config.router;
        RouteePolicy {
            breaker_failures: r.breaker_failures,
            breaker_open: Duration::from_millis(r.breaker_open_ms),
            hedge_delay_min: Duration::from_millis(r.hedge_delay_min_ms),
            hedge_delay_max: Duration::from_millis(r.hedge_delay_max_ms),
            breaker_late: Duration::from_millis(r.breaker_late_ms),
            hedge_budget_percent: r.hedge_budget_percent,
        }
    }
}
