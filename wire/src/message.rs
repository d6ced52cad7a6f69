//! Requests and replies between router and nodes. One [`Request`] is one remote call; every
//! request names the model version it is for, so that a request is served from one version end
//! to end even while a new one is being activated.

use scoregrid_shard::{
    Affinities, CategoryId, CustomerId, Directory, ModelVersion, PartitionId, ProductId, RankKey,
    RankedItem, ScoringWeights, SegmentKey,
};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A data node's identity in the cluster map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    FetchCustomer(FetchCustomer),
    ScoreSegments(ScoreSegments),
    ScoreProducts(ScoreProducts),
    /// Which versions the node serves and stages.
    Status,
    /// The directory of a version the node holds.
    FetchDirectory(ModelVersion),
    /// Stage a version's directory (before or after its partitions).
    StageDirectory(Box<Directory>),
    /// One piece of a partition file being staged; the last piece completes the file, which the
    /// node verifies before it keeps it. No partition travels in one frame, whatever its size.
    StageChunk(StageChunk),
    /// What of a version the node has staged or hosts on disk: how a rerun of a load knows what
    /// to skip.
    StagedInventory(ModelVersion),
    /// Serve a staged version from now on (every partition the node must hold is staged).
    Activate(ModelVersion),
    /// A partition file of a hosted version: how a replica that lost one fetches it from a peer.
    ReadPartition(ReadPartition),
    /// A Raft consensus message (append entries, vote, snapshot) between nodes, encoded by the
    /// membership layer (`scoregrid_raft`), which owns its types.
    Raft(#[serde(with = "crate::blob")] Vec<u8>),
    /// A cluster-control request (the map watch, status, membership and model commands),
    /// encoded by the membership layer.
    Cluster(#[serde(with = "crate::blob")] Vec<u8>),
}

impl Request {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::FetchCustomer(_) => "fetch_customer",
            Request::ScoreSegments(_) => "score_segments",
            Request::ScoreProducts(_) => "score_products",
            Request::Status => "status",
            Request::FetchDirectory(_) => "fetch_directory",
            Request::StageDirectory(_) => "stage_directory",
            Request::StageChunk(_) => "stage_chunk",
            Request::StagedInventory(_) => "staged_inventory",
            Request::Activate(_) => "activate",
            Request::ReadPartition(_) => "read_partition",
            Request::Raft(_) => "raft",
            Request::Cluster(_) => "cluster",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// `None`: the node holds the customer's partition and the customer is not in it.
    Customer(Option<CustomerProfile>),
    Segments(ScoreSegmentsReply),
    Products(ScoreProductsReply),
    Status(NodeStatus),
    Directory(Box<Directory>),
    Staged(Staged),
    /// A piece of a partition file was written; `received` bytes of it are here so far.
    StageProgress {
        received: u64,
    },
    Inventory(Inventory),
    /// The request was carried out and has nothing to return.
    Done,
    PartitionFile(PartitionFile),
    /// The answer to a [`Request::Raft`], encoded by the membership layer.
    Raft(#[serde(with = "crate::blob")] Vec<u8>),
    /// The answer to a [`Request::Cluster`], encoded by the membership layer.
    Cluster(#[serde(with = "crate::blob")] Vec<u8>),
    Error(NodeError),
}

/// Bytes of one piece of a partition file, in a [`StageChunk`] or a [`PartitionFile`]: a few
/// of them in flight per peer keep a link busy, and a frame stays well under the frame bound.
pub const FILE_CHUNK_BYTES_MAX: u32 = 4 * 1024 * 1024;

/// A piece of a partition file (see `scoregrid_shard::file`) being staged. The pieces of one
/// file come in order; a piece at offset 0 (re)starts the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageChunk {
    pub version: ModelVersion,
    pub partition: PartitionId,
    /// The whole file's length and checksum (its trailer), as the sender encoded it.
    pub file_bytes: u64,
    pub checksum: u32,
    /// Where `bytes` go in the file.
    pub offset: u64,
    #[serde(with = "crate::blob")]
    pub bytes: Vec<u8>,
}

/// A range of a hosted partition's file: how a replica that lacks one fetches it from a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadPartition {
    pub version: ModelVersion,
    pub partition: PartitionId,
    pub offset: u64,
    /// At most [`FILE_CHUNK_BYTES_MAX`].
    pub length: u32,
}

/// A range of a partition file (see `scoregrid_shard::file`), and the whole file's length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionFile {
    #[serde(with = "crate::blob")]
    pub bytes: Vec<u8>,
    pub file_bytes: u64,
}

/// What a node has of a version on disk: its directory's digest, and the partitions whose
/// files are complete, each with its checksum.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub directory: Option<u32>,
    pub partitions: Vec<(PartitionId, u32)>,
}

/// A partition staged: written to disk, read back and verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub version: ModelVersion,
    pub partition: PartitionId,
    pub checksum: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: NodeId,
    /// The version this node serves new requests from.
    pub active: Option<ModelVersion>,
    /// Every version it can serve (the active one and those retained for cursors).
    pub hosted: Vec<ModelVersion>,
    /// Versions being staged: partitions received so far and whether the directory is there.
    pub staging: Vec<StagingStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingStatus {
    pub version: ModelVersion,
    pub partitions: u32,
    pub directory: bool,
}

/// Fetch a customer's vector and categories from a replica of its partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FetchCustomer {
    pub version: ModelVersion,
    pub customer: CustomerId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CustomerProfile {
    pub vector: Vec<f32>,
    /// Sorted by category id.
    pub category_ids: Vec<CategoryId>,
    pub category_weights: Vec<f32>,
}

impl CustomerProfile {
    /// `a(c, g)` of the scoring rule for this customer.
    pub fn affinities(&self) -> Affinities {
        Affinities::from_sorted(&self.category_ids, &self.category_weights)
    }
}

/// One segment to score and how many of its candidates take part (the PPS cut-off).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentTake {
    pub key: SegmentKey,
    pub take: u32,
}

/// Score some segments of one container for one customer: one call per node per request, all
/// of that node's segments batched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreSegments {
    pub version: ModelVersion,
    /// `None` for an unknown customer: scores are then `w_pool * pool_score`.
    pub vector: Option<Vec<f32>>,
    pub affinities: Affinities,
    pub weights: ScoringWeights,
    pub category: Option<CategoryId>,
    pub segments: Vec<SegmentTake>,
    /// Items to return: the node's best `k` over all its segments.
    pub k: u32,
    /// Only items ranking strictly after this position.
    pub after: Option<RankKey>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreSegmentsReply {
    /// At most `k` items, in ranking order.
    pub items: Vec<RankedItem>,
    /// Segments of the request that this node does not hold for that version.
    pub missing: Vec<SegmentKey>,
    /// Candidates scored, for metrics.
    pub scored: u64,
}

/// The CF stage alone for a list of products (`POST /v1/score`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreProducts {
    pub version: ModelVersion,
    pub vector: Vec<f32>,
    pub products: Vec<ProductId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProductScore {
    pub product: ProductId,
    pub score: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreProductsReply {
    pub scores: Vec<ProductScore>,
    /// Products of the request that this node does not hold.
    pub missing: Vec<ProductId>,
}

/// An error a node returns instead of a reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NodeError {
    #[error("model version {0} is not hosted on this node")]
    UnknownVersion(ModelVersion),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("refused: {0}")]
    Refused(String),
    /// The sender's cluster map is older than the receiver's: it must refresh its map before it
    /// asks again (a stale actor is fenced).
    #[error("stale cluster map: the sender's epoch is {sender}, this node's {receiver}")]
    StaleEpoch { sender: u64, receiver: u64 },
    /// The caller's certificate does not allow this request.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The caller's deadline passed before the work started: the answer would be thrown away.
    #[error("the caller's deadline passed before the node started this work")]
    DeadlineExceeded,
}
