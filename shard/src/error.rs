//! Errors of this crate. Bad input (a model row, a partition file) is an error to return; a
//! broken invariant of data this crate built itself is an [`InvariantViolation`], a bug.

use crate::builder::RowRef;
use crate::ids::{ContainerId, CustomerId, ProductId};
use thiserror::Error;

/// A model row the builder refuses. The loader adds the file and line from the [`RowRef`]s.
#[derive(Debug, Error, PartialEq)]
pub enum BuildError {
    #[error("field `{field}`: expected {expected} values (the manifest's dim), found {found}")]
    WrongDim {
        field: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("field `{field}`: value {value} is not a finite number")]
    NotFinite { field: &'static str, value: f32 },
    #[error("field `customer_id`: duplicate id {id}")]
    DuplicateCustomer { id: CustomerId, first: RowRef },
    /// A duplicate found when spilled customers are read back: both rows are known then.
    #[error("field `customer_id`: duplicate id {id}")]
    RepeatedCustomer {
        id: CustomerId,
        first: RowRef,
        second: RowRef,
    },
    /// The customers spilled to disk could not be written or read back.
    #[error("customer spill: {message}")]
    Spill { message: String },
    #[error("field `product_id`: duplicate id {id}")]
    DuplicateProduct { id: ProductId, first: RowRef },
    #[error("field `categories`: category {category} listed twice")]
    DuplicateCategory { category: u32 },
    #[error("field `product_id`: unknown product {product} (not in the products table)")]
    UnknownProduct { product: ProductId },
    #[error("field `product_id`: product {product} appears twice in container {container}")]
    DuplicatePoolEntry {
        container: ContainerId,
        product: ProductId,
        first: RowRef,
        second: RowRef,
    },
    #[error("too many {what}: at most {max}")]
    TooMany { what: &'static str, max: u64 },
}

/// A partition file that cannot be read back as it was written.
#[derive(Debug, Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a scoregrid partition file (bad magic)")]
    BadMagic { path: String },
    #[error(
        "{path}: partition format version {found} is not supported (this build reads {supported})"
    )]
    UnsupportedFormat {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error(
        "{path}: checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is corrupt"
    )]
    Checksum {
        path: String,
        stored: u32,
        computed: u32,
    },
    #[error("{path}: truncated or corrupt: {what}")]
    Malformed { path: String, what: String },
    #[error("{path}: {violation}")]
    Invariant {
        path: String,
        violation: InvariantViolation,
    },
}

/// A named invariant of a [`crate::Partition`] that does not hold.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invariant {invariant} broken: {detail}")]
pub struct InvariantViolation {
    pub invariant: &'static str,
    pub detail: String,
}
