//! A data node: hosts replicas of partitions, per model version, and answers the scoring RPCs
//! of [`scoregrid_wire`]: fetch a customer, score segments (batched, one call per request per
//! node), score products.
//!
//! The hosted data is an immutable snapshot behind an `ArcSwap`: a request loads the snapshot
//! once (no lock on the hot path) and is served from it end to end; installing or dropping a
//! model version swaps in a new snapshot without disturbing requests in flight.
//!
//! # Layout
//! - [`hosted`]: the snapshot of versions and partitions a node holds.
//! - [`control`]: staging, activation, retention and restore, for a node with a data directory.
//! - [`follow`]: the node following its Raft member's map (epoch, partitions to hold, active
//!   version) and fetching back the partitions it lacks.
//! - [`service`]: [`Node`], which answers requests from the snapshot, and its metrics.
//! - [`lane`]: [`StagingLane`], the low-priority thread pieces of a load are staged on.
//! - [`local`]: [`LocalClient`], the in-process [`scoregrid_wire::NodeClient`].
//! - [`rpc`]: [`NodeService`], the node as the network sees it: roles, epoch fencing, where
//!   each request runs.
//! - [`store`]: the data directory: partition files, directories, the active marker.

pub mod control;
pub mod follow;
pub mod hosted;
pub mod lane;
pub mod local;
pub mod repair;
pub mod rpc;
pub mod service;
pub mod staging;
pub mod store;

pub use control::Control;
pub use hosted::HostedVersion;
pub use lane::StagingLane;
pub use local::LocalClient;
pub use rpc::{Membership, NodeService};
pub use service::Node;
