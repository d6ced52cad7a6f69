//! What the router knows: its configuration and a swappable [`ClusterView`] (the cluster map,
//! each retained model version's directory, a client per node). A request loads the view once
//! and uses that snapshot throughout, so a map change never mixes two views in one answer.

use arc_swap::ArcSwapOption;
use metrics_exporter_prometheus::PrometheusHandle;
use scoregrid_config::Config;
use scoregrid_raft::ClusterMap;
use scoregrid_shard::{Directory, ModelVersion};
use scoregrid_wire::{NodeClient, NodeId, RpcError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// The router's view of one node (a routee): its client and what calls to it have done.
pub struct Routee {
    pub client: Arc<dyn NodeClient>,
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl Routee {
    pub fn new(client: Arc<dyn NodeClient>) -> Self {
        Self {
            client,
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub(crate) fn record(&self, result: Result<(), &RpcError>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = result {
            self.errors.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::telemetry::NODE_CALL_ERRORS, "node" => self.client.node().to_string(), "reason" => error.reason())
                .increment(1);
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(error.to_string());
            }
        }
    }
}

pub struct ClusterView {
    pub map: ClusterMap,
    /// Directories of the retained model versions (the active one and those kept for cursors).
    pub directories: HashMap<ModelVersion, Arc<Directory>>,
    pub routees: HashMap<NodeId, Arc<Routee>>,
}

impl ClusterView {
    pub fn new(
        map: ClusterMap,
        directories: Vec<Directory>,
        clients: Vec<Arc<dyn NodeClient>>,
    ) -> Self {
        Self {
            map,
            directories: directories
                .into_iter()
                .map(|d| (d.version.clone(), Arc::new(d)))
                .collect(),
            routees: clients
                .into_iter()
                .map(|c| (c.node(), Arc::new(Routee::new(c))))
                .collect(),
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
    /// Bounds the requests served at once (`http.requests_in_flight_max`).
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) request_seq: AtomicU64,
    pub(crate) prometheus: Option<PrometheusHandle>,
}

impl RouterState {
    pub fn new(config: Config) -> Self {
        let in_flight = Arc::new(Semaphore::new(config.http.requests_in_flight_max));
        Self {
            config,
            view: ArcSwapOption::empty(),
            in_flight,
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
}
