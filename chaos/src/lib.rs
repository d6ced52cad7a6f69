//! The chaos harness: a real cluster (N node processes and two routers, each in its own Linux
//! network namespace), a seeded schedule of faults against it (partitions with nftables, kill -9,
//! SIGSTOP, delay (netem or NFQUEUE), loss and duplication, model flips, maintenance, loads of
//! new versions, removals) while clients read through both routers, a history of every
//! operation, and a checker that reads the history afterwards and names every broken promise.
//!
//! `scoregrid chaos run` calls [`run`]; `scoregrid chaos check DIR` calls [`check_dir`] on the
//! history of an earlier run; `scoregrid chaos sim` runs seeds of [`sim`], the deterministic
//! simulation of the control plane (no processes, virtual time).
//!
//! # Layout
//! - [`net`]: namespaces, the bridge, cuts and link disciplines.
//! - [`delay`]: a packet delayer over NFQUEUE, for kernels without netem.
//! - [`cluster`]: the processes of a run, their certificates and configurations, operator
//!   commands.
//! - [`nemesis`]: the kinds of fault and how each is applied and healed.
//! - [`loads`]: the run's model versions, and the loads that run on beside the faults.
//! - [`client`]: readers, cursor walkers and observers, and the history recorder.
//! - [`history`]: the events of `history.jsonl`.
//! - [`checker`]: the invariants, checked over a history.
//! - `run`, `converge`, `report`: one run start to end, the wait for one map after the final
//!   heal, the verdict written out.
//! - [`sim`]: Raft members, routers' map followers, an operator and a loader on a seeded
//!   network in one thread, with its own invariants.
//!
//! # Limits
//! One fault at a time (healed before the next), and one load beside it; the harness's own
//! link to every host (its clients, the loader and the operator) is never cut; at most
//! [`NODES_MAX`] nodes.

pub mod checker;
pub mod client;
pub mod cluster;
mod converge;
pub mod delay;
pub mod history;
pub mod loads;
pub mod nemesis;
pub mod net;
mod report;
mod run;
pub mod sim;

pub use loads::references_of;
pub use nemesis::FaultKind;
pub use report::{Summary, check_dir};
pub use run::{RunOptions, run};

/// Nodes a run starts at most.
pub const NODES_MAX: u32 = 9;

/// What can go wrong in the harness itself (not in the cluster under test: that is a
/// [`checker::Violation`]).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{command}: {message}")]
    Command { command: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{name}: {message}")]
    Process { name: String, message: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("the cluster did not get ready: {0}")]
    Setup(String),
}

impl ChaosError {
    pub(crate) fn io(path: &std::path::Path, error: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            message: error.to_string(),
        }
    }
}
