//! Request keys for the load generator: a uniform sample of customer ids and every container
//! with its pool size, read from the id columns alone (JSONL lines are scanned for one field;
//! Parquet files are projected to one column).

use crate::columnar;
use crate::error::LoadError;
use crate::jsonl;
use crate::rng::Rng;
use crate::source::{FileFormat, SourceFiles, Table};
use scoregrid_shard::{ContainerId, CustomerId};
use std::collections::HashMap;
use std::path::Path;

/// Keys to build requests from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestKeys {
    /// At most `customers_max` customer ids, a uniform sample (reservoir) in no particular order.
    pub customers: Vec<CustomerId>,
    /// Every container with its number of pool entries, by container id.
    pub containers: Vec<(ContainerId, u64)>,
}

/// Samples up to `customers_max` customer ids uniformly (the same ones for the same `seed` and
/// model) and counts every container's pool entries.
///
/// # Errors
/// A missing or ambiguous table, an unreadable file or id, located.
pub fn sample_request_keys(
    dir: &Path,
    customers_max: usize,
    seed: u64,
) -> Result<RequestKeys, LoadError> {
    let mut files = SourceFiles::default();
    let customer_files = files.add_table(dir, Table::Customers)?;
    let pool_files = files.add_table(dir, Table::Pools)?;

    let mut rng = Rng::new(seed);
    let mut customers = Vec::with_capacity(customers_max.min(1 << 20));
    let mut seen: u64 = 0;
    // Algorithm R: the k-th id (from 0) replaces a random slot with probability max / (k + 1).
    let mut sample = |id: CustomerId| {
        if customers.len() < customers_max {
            customers.push(id);
        } else if let Ok(slot) = usize::try_from(rng.below(seen + 1))
            && slot < customers_max
        {
            customers[slot] = id;
        }
        seen += 1;
    };
    for &file in &customer_files {
        match files.format(file) {
            FileFormat::Jsonl => jsonl::read_customer_ids(&files, file, &mut sample)?,
            _ => columnar::read_ids(&files, file, "customer_id", &mut sample)?,
        };
    }

    let mut sizes: HashMap<ContainerId, u64> = HashMap::new();
    let mut count = |id: ContainerId| *sizes.entry(id).or_default() += 1;
    for &file in &pool_files {
        match files.format(file) {
            FileFormat::Jsonl => jsonl::read_container_ids(&files, file, &mut count)?,
            _ => columnar::read_ids(&files, file, "container_id", &mut count)?,
        };
    }
    let mut containers: Vec<(ContainerId, u64)> = sizes.into_iter().collect();
    containers.sort_unstable();
    Ok(RequestKeys {
        customers,
        containers,
    })
}
