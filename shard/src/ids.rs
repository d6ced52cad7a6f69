//! Identifiers. Customer, product, container and category ids are the contract's plain integers;
//! partitions, segment keys and model versions are newtypes because they carry rules.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

pub type CustomerId = u64;
pub type ProductId = u64;
pub type ContainerId = u64;
pub type CategoryId = u32;

/// A logical partition, `0..P`. Every key belongs to exactly one (see [`crate::hashing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId(pub u32);

impl PartitionId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{:04}", self.0)
    }
}

/// The number of logical partitions `P` of a cluster. Fixed for the life of a model version:
/// changing it re-shuffles every key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartitionCount(u32);

impl PartitionCount {
    /// Upper bound on `P`: the placement table has one row per partition and is copied to every
    /// process, so it must stay small.
    pub const MAX: u32 = 65_536;

    pub fn new(count: u32) -> Option<Self> {
        (1..=Self::MAX).contains(&count).then_some(Self(count))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    pub fn iter(self) -> impl Iterator<Item = PartitionId> {
        (0..self.0).map(PartitionId)
    }
}

/// A segment of a container's pool: segment `number` holds the pool entries ranked
/// `number * S .. (number + 1) * S` by pool score. Each segment is a key of its own, so the
/// segments of one big grid spread over many partitions and nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SegmentKey {
    pub container: ContainerId,
    pub number: u32,
}

/// A model version name: 1-64 characters of `[A-Za-z0-9._-]` (contract section 1). Cheap to
/// clone because every request carries one.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelVersion(Arc<str>);

/// Longest model version name, in bytes (contract section 1).
pub const MODEL_VERSION_BYTES_MAX: usize = 64;

impl ModelVersion {
    /// # Errors
    /// Returns a message naming the rule broken when `name` is empty, longer than 64 bytes or
    /// holds a character outside `[A-Za-z0-9._-]`.
    pub fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > MODEL_VERSION_BYTES_MAX {
            return Err(format!(
                "model version must be 1-{MODEL_VERSION_BYTES_MAX} characters, got {}",
                name.len()
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "model version may only hold [A-Za-z0-9._-], found {bad:?}"
            ));
        }
        Ok(Self(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ModelVersion {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<ModelVersion> for String {
    fn from(value: ModelVersion) -> Self {
        value.0.to_string()
    }
}

impl fmt::Display for ModelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ModelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelVersion({})", &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_version_accepts_the_contract_alphabet_and_refuses_the_rest() {
        assert!(ModelVersion::new("2026-11-22_nightly.v3").is_ok());
        assert!(ModelVersion::new(&"a".repeat(64)).is_ok());
        assert!(ModelVersion::new("").is_err());
        assert!(ModelVersion::new(&"a".repeat(65)).is_err());
        assert!(ModelVersion::new("v 1").unwrap_err().contains("' '"));
        assert!(ModelVersion::new("v/1").is_err());
    }

    #[test]
    fn partition_count_is_bounded() {
        assert!(PartitionCount::new(0).is_none());
        assert_eq!(PartitionCount::new(1024).map(|p| p.get()), Some(1024));
        assert!(PartitionCount::new(PartitionCount::MAX + 1).is_none());
    }
}
