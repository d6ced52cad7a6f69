//! The in-RAM data of one partition and the exact scoring rule of the contract (section 2).
//!
//! A model is cut into `P` logical partitions by a fixed hash of each key ([`hashing`]). A
//! [`Partition`] holds the customers, the products and the pool segments whose keys hash to it,
//! each as contiguous column blocks so that scoring is a streaming pass over memory. Everything
//! above this crate (nodes, router, loader) works on whole partitions and on the value types
//! defined here.
//!
//! # Layout
//! - [`ids`]: identifiers and the validated [`ModelVersion`] name.
//! - [`hashing`]: the documented key -> partition hash every process must agree on bit for bit.
//! - [`kernel`]: the dot product with its fixed summation order, and its SIMD dispatch.
//! - [`rank`]: ranked items, their total order, the bounded top-k and the k-way merge.
//! - [`table`]: customer and product tables (ids, vector blocks, categories).
//! - [`segment`]: one slice of a container's pool and how it is scored.
//! - [`directory`]: per model version, each container's segments and what they hold.
//! - [`partition`]: a partition and its invariants.
//! - [`builder`]: turns a stream of validated rows into partitions and a directory.
//! - [`file`]: the on-disk partition format (magic, format version, checksum).
//! - [`durable`]: atomic file writes and sealed (magic, format, checksum) small files.
//! - [`reference`]: a brute-force implementation of the contract, the oracle for tests.
//! - [`error`]: the crate's error types.

pub mod builder;
pub mod directory;
pub mod durable;
pub mod error;
pub mod file;
pub mod hashing;
pub mod ids;
pub mod kernel;
pub mod partition;
pub mod rank;
pub mod reference;
pub mod segment;
pub mod spill;
pub mod table;

pub use builder::{BuiltModel, FinishError, ModelBuilder, ModelLayout, ModelSink, RowRef};
pub use directory::{ContainerEntry, Directory, SegmentPlan, SegmentSummary};
pub use error::{BuildError, FileError, InvariantViolation};
pub use ids::{
    CategoryId, ContainerId, CustomerId, ModelVersion, PartitionCount, PartitionId, ProductId,
    SegmentKey,
};
pub use partition::Partition;
pub use rank::{RankKey, RankedItem, TopK, merge_ranked};
pub use segment::{Affinities, ScoringWeights, Segment, SegmentQuery, score_segment};
pub use table::{CustomerTable, CustomerView, ProductTable, ProductView};

/// The largest vector dimension a model may declare (contract section 1).
pub const DIM_MAX: usize = 1024;

/// Default number of logical partitions (`P`).
pub const PARTITIONS_DEFAULT: u32 = 1024;

/// Default largest number of products in one pool segment (`S`).
pub const SEGMENT_PRODUCTS_DEFAULT: u32 = 4096;

/// The largest `S` the layout allows: a row's category code within its segment is a u16.
pub const SEGMENT_PRODUCTS_HARD_MAX: u32 = 1 << 16;

const _: () = assert!(SEGMENT_PRODUCTS_DEFAULT <= SEGMENT_PRODUCTS_HARD_MAX);
