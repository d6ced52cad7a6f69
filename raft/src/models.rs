//! The model registry of the map: how a nightly version goes from registered to active, and
//! how old ones leave.
//!
//! ```text
//! RegisterModel(V, digest, checksums) -> staging      (a rerun with the same contents: no change)
//! ReportStaged(V, node, partitions)   -> staged copies recorded, each checksum compared
//! ActivateModel(V)                    -> active, accepted only when every partition is staged
//!                                        on each of its replicas that is up (and on at least one)
//! DropModel(V)                        -> gone from the map; nodes delete it from RAM and disk
//! RetainVersions(n)                   -> at most n retired versions kept for rollback
//! ```
//!
//! The flip is one committed change: every node and router sees it at the same epoch, so the
//! cluster never serves two versions as current. Refusing it until the staging reports cover
//! the placement is what makes it safe: when it commits, every replica that is up can serve V.

use crate::map::{
    ClusterMap, ModelRecord, ModelState, NodeState, STAGING_VERSIONS_MAX, VERSIONS_RETAINED_MAX,
};
use scoregrid_shard::{ModelVersion, PartitionId};
use scoregrid_wire::NodeId;
use std::collections::BTreeMap;

/// Missing copies named in a refused activation; the rest are counted.
const MISSING_NAMED_MAX: usize = 6;

pub(crate) fn register(
    map: &mut ClusterMap,
    version: &ModelVersion,
    digest: u32,
    checksums: &[u32],
) -> Result<bool, String> {
    let partitions = map.placement.partitions().get() as usize;
    if checksums.len() != partitions {
        return Err(format!(
            "model version {version} has {} partitions, the cluster {partitions}: build it with placement.partitions = {partitions}",
            checksums.len()
        ));
    }
    if let Some(record) = map.model(version) {
        return match record.state {
            // A rerun of a load: of one still staging (it resumes), or of one that became
            // active though its loader did not learn it (a flip without a known outcome).
            ModelState::Staging | ModelState::Active
                if record.digest == digest && record.checksums == checksums =>
            {
                Ok(false)
            }
            ModelState::Staging => Err(format!(
                "model version {version} is already staging with other contents: drop it first \
                 (scoregrid model drop {version}) or give the new model a new version name"
            )),
            state => Err(format!(
                "model version {version} is already {}; a new model needs a new version name",
                state.as_str()
            )),
        };
    }
    let staging: Vec<String> = map
        .models
        .iter()
        .filter(|m| m.state == ModelState::Staging)
        .map(|m| m.version.to_string())
        .collect();
    if staging.len() >= STAGING_VERSIONS_MAX {
        return Err(format!(
            "{} versions are already staging ({}): activate or drop one first",
            staging.len(),
            staging.join(", ")
        ));
    }
    // Staging records go before the active one: the registry is ordered by when a version
    // last served, then by registration.
    map.models.push(ModelRecord {
        version: version.clone(),
        state: ModelState::Staging,
        digest,
        checksums: checksums.to_vec(),
        staged: BTreeMap::new(),
    });
    Ok(true)
}

pub(crate) fn report_staged(
    map: &mut ClusterMap,
    version: &ModelVersion,
    node: NodeId,
    partitions: &[(PartitionId, u32)],
) -> Result<bool, String> {
    if map.node(node).is_none() {
        return Err(format!("node {node} is not in the cluster map"));
    }
    let record = record_mut(map, version)?;
    match record.state {
        ModelState::Staging => {}
        // A late report of a loader that raced its own flip, or a rerun: nothing to record.
        ModelState::Active | ModelState::Retired => return Ok(false),
    }
    for &(partition, checksum) in partitions {
        let Some(&expected) = record.checksums.get(partition.index()) else {
            return Err(format!(
                "model version {version} has no partition {partition}"
            ));
        };
        if checksum != expected {
            return Err(format!(
                "node {node} staged partition {partition} of {version} with checksum \
                 {checksum:08x}; the model's is {expected:08x}"
            ));
        }
    }
    let held = record.staged.entry(node).or_default();
    let before = held.len();
    held.extend(partitions.iter().map(|&(p, _)| p));
    held.sort_unstable();
    held.dedup();
    Ok(held.len() != before)
}

/// The copies `version` still lacks before it may become active: each partition on each of its
/// replicas that is up, and on at least one replica.
pub fn missing_copies(map: &ClusterMap, record: &ModelRecord) -> Vec<(PartitionId, NodeId)> {
    let mut missing = Vec::new();
    for partition in map.placement.partitions().iter() {
        let replicas = map.placement.replicas(partition);
        let (mut staged, mut up_lacking, mut first_lacking) = (false, false, None);
        for &node in replicas {
            if record.is_staged(node, partition) {
                staged = true;
            } else if map.state_of(node) == Some(NodeState::Up) {
                up_lacking = true;
                missing.push((partition, node));
            } else {
                first_lacking.get_or_insert(node);
            }
        }
        // No replica is up and none staged it: one copy is still needed.
        if !staged
            && !up_lacking
            && let Some(node) = first_lacking
        {
            missing.push((partition, node));
        }
    }
    missing
}

pub(crate) fn activate(map: &mut ClusterMap, version: &ModelVersion) -> Result<bool, String> {
    let record = map
        .model(version)
        .ok_or_else(|| format!("model version {version} is not registered in the map"))?;
    match record.state {
        ModelState::Active => return Ok(false),
        // A rollback: the version served before, and its nodes kept it.
        ModelState::Retired => {}
        ModelState::Staging => {
            let missing = missing_copies(map, record);
            if !missing.is_empty() {
                let named: Vec<String> = missing
                    .iter()
                    .take(MISSING_NAMED_MAX)
                    .map(|(p, n)| format!("{p} on {n}"))
                    .collect();
                return Err(format!(
                    "model version {version} is not staged everywhere: {} partition copies \
                     missing ({}{}); stage them (rerun the load) first",
                    missing.len(),
                    named.join(", "),
                    if missing.len() > MISSING_NAMED_MAX {
                        ", ..."
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    activate_unchecked(map, version)?;
    Ok(true)
}

/// Makes `version` the active one, retiring the previous, without asking whether it is staged:
/// for a map outside Raft whose nodes were given the version directly.
pub(crate) fn activate_unchecked(
    map: &mut ClusterMap,
    version: &ModelVersion,
) -> Result<(), String> {
    let mut record = map
        .models
        .iter()
        .position(|m| &m.version == version)
        .map(|at| map.models.remove(at))
        .ok_or_else(|| format!("model version {version} is not registered in the map"))?;
    for m in &mut map.models {
        if m.state == ModelState::Active {
            m.state = ModelState::Retired;
        }
    }
    record.state = ModelState::Active;
    record.staged.clear();
    map.models.push(record);
    retain(map);
    Ok(())
}

pub(crate) fn drop_version(map: &mut ClusterMap, version: &ModelVersion) -> Result<bool, String> {
    match map.model(version).map(|m| m.state) {
        None => Ok(false),
        Some(ModelState::Active) => Err(format!(
            "model version {version} is active: activate another version before dropping it"
        )),
        Some(ModelState::Staging | ModelState::Retired) => {
            map.models.retain(|m| &m.version != version);
            Ok(true)
        }
    }
}

pub(crate) fn set_retention(map: &mut ClusterMap, versions: u32) -> Result<bool, String> {
    if versions > VERSIONS_RETAINED_MAX {
        return Err(format!(
            "{versions} retained versions is more than {VERSIONS_RETAINED_MAX}"
        ));
    }
    if map.versions_retained == versions {
        return Ok(false);
    }
    map.versions_retained = versions;
    retain(map);
    Ok(true)
}

/// A node left the map: its staging reports go with it.
pub(crate) fn forget_node(map: &mut ClusterMap, node: NodeId) {
    for m in &mut map.models {
        m.staged.remove(&node);
    }
}

/// Drops the oldest retired versions beyond `versions_retained`.
fn retain(map: &mut ClusterMap) {
    let retired = map
        .models
        .iter()
        .filter(|m| m.state == ModelState::Retired)
        .count();
    let mut excess = retired.saturating_sub(map.versions_retained as usize);
    map.models.retain(|m| {
        if excess > 0 && m.state == ModelState::Retired {
            excess -= 1;
            return false;
        }
        true
    });
}

fn record_mut<'a>(
    map: &'a mut ClusterMap,
    version: &ModelVersion,
) -> Result<&'a mut ModelRecord, String> {
    map.models
        .iter_mut()
        .find(|m| &m.version == version)
        .ok_or_else(|| format!("model version {version} is not registered in the map"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::tests::map;

    fn v(name: &str) -> ModelVersion {
        ModelVersion::new(name).unwrap()
    }

    fn checksums(map: &ClusterMap, seed: u32) -> Vec<u32> {
        (0..map.placement.partitions().get())
            .map(|p| p.wrapping_mul(2_654_435_761) ^ seed)
            .collect()
    }

    /// Reports every copy the placement names on the nodes `on`.
    fn stage_on(map: &mut ClusterMap, version: &ModelVersion, seed: u32, on: &[u64]) {
        let sums = checksums(map, seed);
        for &n in on {
            let node = NodeId(n);
            let held: Vec<(PartitionId, u32)> = map
                .partitions_of(node)
                .into_iter()
                .map(|p| (p, sums[p.index()]))
                .collect();
            report_staged(map, version, node, &held).unwrap();
        }
    }

    #[test]
    fn a_flip_waits_until_every_up_replica_staged() {
        let mut m = map(3, 16, 2);
        let sums = checksums(&m, 1);
        assert!(register(&mut m, &v("v1"), 7, &sums).unwrap());
        // The same load again resumes; other contents under the same name are refused.
        assert!(!register(&mut m, &v("v1"), 7, &sums).unwrap());
        let other = register(&mut m, &v("v1"), 8, &sums).unwrap_err();
        assert!(other.contains("other contents"), "{other}");
        stage_on(&mut m, &v("v1"), 1, &[1, 2]);
        let refusal = activate(&mut m, &v("v1")).unwrap_err();
        assert!(refusal.contains("on n3"), "{refusal}");
        stage_on(&mut m, &v("v1"), 1, &[3]);
        assert!(activate(&mut m, &v("v1")).unwrap());
        assert_eq!(m.active_model(), Some(&v("v1")));
        assert!(m.model(&v("v1")).unwrap().staged.is_empty());
        m.check().unwrap();
    }

    #[test]
    fn a_down_replica_is_not_waited_for_but_one_copy_is() {
        let mut m = map(3, 16, 2);
        let sums = checksums(&m, 1);
        register(&mut m, &v("v1"), 7, &sums).unwrap();
        m.node_mut(NodeId(3)).unwrap().state = NodeState::Down;
        stage_on(&mut m, &v("v1"), 1, &[1, 2]);
        // Partitions held by 3 and one other are staged on the other: enough.
        assert_eq!(missing_copies(&m, m.model(&v("v1")).unwrap()), vec![]);
        // With 3 and 2 down, partitions only on 2 and 3 have no copy at all.
        let mut both = m.clone();
        both.node_mut(NodeId(2)).unwrap().state = NodeState::Down;
        both.models[0].staged.remove(&NodeId(2));
        let missing = missing_copies(&both, both.model(&v("v1")).unwrap());
        assert!(!missing.is_empty());
        assert!(
            missing
                .iter()
                .all(|(p, _)| { !both.placement.replicas(*p).contains(&NodeId(1)) })
        );
    }

    #[test]
    fn a_wrong_checksum_is_refused_and_names_the_partition() {
        let mut m = map(3, 16, 2);
        let sums = checksums(&m, 1);
        register(&mut m, &v("v1"), 7, &sums).unwrap();
        let p = m.partitions_of(NodeId(1))[0];
        let reason = report_staged(&mut m, &v("v1"), NodeId(1), &[(p, 0xdead)]).unwrap_err();
        assert!(reason.contains(&format!("partition {p}")), "{reason}");
        let reason =
            report_staged(&mut m, &v("v1"), NodeId(1), &[(PartitionId(99), 0)]).unwrap_err();
        assert!(reason.contains("no partition p0099"), "{reason}");
        let reason = register(&mut m, &v("v2"), 7, &[1, 2, 3]).unwrap_err();
        assert!(reason.contains("placement.partitions = 16"), "{reason}");
    }

    #[test]
    fn retention_rollback_and_drop() {
        let mut m = map(3, 8, 2);
        for (i, name) in ["v1", "v2", "v3"].iter().enumerate() {
            let seed = i as u32;
            let sums = checksums(&m, seed);
            register(&mut m, &v(name), seed, &sums).unwrap();
            stage_on(&mut m, &v(name), seed, &[1, 2, 3]);
            activate(&mut m, &v(name)).unwrap();
            m.check().unwrap();
        }
        // One retired version kept by default: v1 is gone, v2 is there for a rollback.
        assert!(m.model(&v("v1")).is_none());
        assert_eq!(m.model(&v("v2")).unwrap().state, ModelState::Retired);
        assert!(activate(&mut m, &v("v2")).unwrap());
        assert_eq!(m.active_model(), Some(&v("v2")));
        assert_eq!(m.model(&v("v3")).unwrap().state, ModelState::Retired);
        let reason = drop_version(&mut m, &v("v2")).unwrap_err();
        assert!(reason.contains("is active"), "{reason}");
        assert!(drop_version(&mut m, &v("v3")).unwrap());
        assert!(!drop_version(&mut m, &v("v3")).unwrap());
        assert_eq!(m.models.len(), 1);
        assert!(set_retention(&mut m, 3).unwrap());
        assert!(set_retention(&mut m, VERSIONS_RETAINED_MAX + 1).is_err());
    }

    #[test]
    fn staging_versions_are_bounded() {
        let mut m = map(3, 8, 2);
        for name in ["a", "b"] {
            let sums = checksums(&m, 0);
            register(&mut m, &v(name), 0, &sums).unwrap();
        }
        let sums = checksums(&m, 0);
        let reason = register(&mut m, &v("c"), 0, &sums).unwrap_err();
        assert!(reason.contains("a, b"), "{reason}");
        drop_version(&mut m, &v("a")).unwrap();
        let sums = checksums(&m, 0);
        register(&mut m, &v("c"), 0, &sums).unwrap();
        m.check().unwrap();
    }
}
