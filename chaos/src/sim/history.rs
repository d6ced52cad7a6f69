//! What the simulation saw, and the invariants checked over it every step of virtual time.

use super::cluster::{Cluster, FOLLOW, MEMBER_STALE_AFTER, WATCH_GRACE};
use super::net::Links;
use scoregrid_raft::ModelState;
use scoregrid_raft::command::MapCommand;
use scoregrid_raft::map::{ClusterMap, Epoch, NodeState};
use scoregrid_shard::ModelVersion;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// At most this many violations are kept per run (the first ones say what went wrong).
const VIOLATIONS_KEPT: usize = 20;

/// How an activation the loader asked for ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlipOutcome {
    Acknowledged(Epoch),
    /// The map (or the leader) said no: the flip did not and will not happen.
    Refused(String),
    /// No quorum in time, or no answer: it may still commit.
    Unknown(String),
}

#[derive(Default)]
pub struct History {
    pub violations: Vec<String>,
    pub events: Vec<String>,
    leader_of_term: BTreeMap<u64, u64>,
    /// The first map seen at each epoch, at a member or a router.
    map_of_epoch: BTreeMap<Epoch, ClusterMap>,
    /// The last epoch each member (by id) and router (by endpoint id) held.
    last_epoch: BTreeMap<u64, Epoch>,
    pub acknowledged: Vec<(Epoch, MapCommand)>,
    /// Every activation the loader asked for, by version.
    pub flips: BTreeMap<ModelVersion, Vec<FlipOutcome>>,
    /// Since when each router has had no member in contact with a quorum to ask (under the
    /// links in force now).
    isolated_since: BTreeMap<u64, Duration>,
    pub routers_said_stale: u64,
}

/// A router cut off from every member of a quorum for this long must say its map is stale:
/// a member notices the lost quorum within `MEMBER_STALE_AFTER`, a router's poll fails or
/// returns within `wait + grace`, and the router calls it stale `stale_after` after its last
/// fresh answer; twice the poll for the rotation to the next node, and a margin for delays.
pub fn stale_bound() -> Duration {
    MEMBER_STALE_AFTER
        + (FOLLOW.wait + WATCH_GRACE) * 2
        + FOLLOW.stale_after
        + Duration::from_millis(200)
}

impl History {
    pub fn event(&mut self, at: Duration, what: String) {
        self.events
            .push(format!("t={:.3}s {what}", at.as_secs_f64()));
    }

    pub fn violate(&mut self, at: Duration, what: String) {
        if self.violations.len() < VIOLATIONS_KEPT {
            self.violations
                .push(format!("t={:.3}s {what}", at.as_secs_f64()));
        }
    }

    /// `one-map-per-epoch` and `epochs-never-go-back` for a map held by `who` now.
    fn holds(&mut self, at: Duration, who: &str, key: u64, map: &ClusterMap) {
        match self.map_of_epoch.get(&map.epoch) {
            Some(seen) if seen != map => self.violate(
                at,
                format!(
                    "one-map-per-epoch: {who} holds another map at epoch {}",
                    map.epoch
                ),
            ),
            Some(_) => {}
            None => {
                self.map_of_epoch.insert(map.epoch, map.clone());
            }
        }
        if let Some(&before) = self.last_epoch.get(&key)
            && map.epoch < before
        {
            self.violate(
                at,
                format!(
                    "epochs-never-go-back: {who} went from {before} to {}",
                    map.epoch
                ),
            );
        }
        self.last_epoch.insert(key, map.epoch);
    }

    /// Checks what every member and router holds now. `links` and `minority` (the smaller
    /// side of a clean split, if one is in force) say which routers are cut off from a quorum.
    pub fn observe(
        &mut self,
        at: Duration,
        cluster: &Cluster,
        links: &Links,
        minority: Option<&BTreeSet<u64>>,
    ) {
        let running = cluster.running();
        for (id, member) in &running {
            let metrics = member.metrics();
            if metrics.state == openraft::ServerState::Leader {
                let term = metrics.current_term;
                match self.leader_of_term.get(&term) {
                    Some(&other) if other != *id => self.violate(
                        at,
                        format!("one-leader-per-term: n{other} and n{id} both lead term {term}"),
                    ),
                    Some(_) => {}
                    None => {
                        self.leader_of_term.insert(term, *id);
                        self.event(at, format!("n{id} leads term {term}"));
                    }
                }
            }
            if let Some(map) = member.map() {
                self.holds(at, &format!("n{id}"), *id, &map);
            }
        }
        for router in &cluster.routers {
            let followed = router.followed.borrow().clone();
            if let Some(map) = &followed.map {
                self.holds(at, &format!("router r{}", router.id), router.id, map);
            }
            // `routers-say-stale`: no running member it can reach is on a side with a quorum.
            let reachable_quorum_side = running.iter().any(|(id, _)| {
                links.connected(router.id, *id) && minority.is_none_or(|m| !m.contains(id))
            });
            if reachable_quorum_side || links.drop_percent > 0 {
                self.isolated_since.remove(&router.id);
                continue;
            }
            let since = *self.isolated_since.entry(router.id).or_insert(at);
            if followed.stale {
                self.routers_said_stale += 1;
            } else if at.saturating_sub(since) > stale_bound() {
                self.violate(
                    at,
                    format!(
                        "routers-say-stale: router r{} has reached no member of a quorum since t={:.3}s and still calls its map (epoch {}) fresh",
                        router.id,
                        since.as_secs_f64(),
                        followed.epoch()
                    ),
                );
                // Once per isolation.
                self.isolated_since.insert(router.id, at);
            }
        }
    }

    /// The network changed: a router cut off again may first have heard a fresh map from a
    /// member that was with the quorum until now, so its bound starts again.
    pub fn network_changed(&mut self) {
        self.isolated_since.clear();
    }

    /// `acknowledged-changes-stay`: the map of the epoch a change was acknowledged at shows it.
    pub fn check_acknowledged(&mut self, at: Duration) {
        let acknowledged = self.acknowledged.clone();
        for (epoch, command) in acknowledged {
            let Some(map) = self.map_of_epoch.get(&epoch) else {
                continue;
            };
            let holds = match &command {
                MapCommand::RegisterModel { version, .. } => map
                    .model(version)
                    .is_some_and(|m| m.state == ModelState::Staging),
                MapCommand::ReportStaged {
                    version,
                    node,
                    partitions,
                } => map.model(version).is_some_and(|m| {
                    m.state == ModelState::Staging
                        && partitions.iter().all(|&(p, _)| m.is_staged(*node, p))
                }),
                MapCommand::ActivateModel { version } => map.active_model() == Some(version),
                MapCommand::DropModel { version } => map.model(version).is_none(),
                MapCommand::Maintenance { id, on } => {
                    map.state_of(*id)
                        == Some(if *on {
                            NodeState::Maintenance
                        } else {
                            NodeState::Up
                        })
                }
                _ => true,
            };
            if !holds {
                self.violate(
                    at,
                    format!(
                        "acknowledged-changes-stay: {command:?} acknowledged at epoch {epoch}, not in that map"
                    ),
                );
            }
        }
    }

    /// `refused-flips-never-appear`: a version the loader asked to activate only ever with a
    /// definite refusal (or never asked) is active in no map anyone held.
    pub fn check_flips(&mut self, at: Duration) {
        let mut never = Vec::new();
        for (version, outcomes) in &self.flips {
            let may_have = outcomes
                .iter()
                .any(|o| !matches!(o, FlipOutcome::Refused(_)));
            if may_have {
                continue;
            }
            if let Some((epoch, _)) = self
                .map_of_epoch
                .iter()
                .find(|(_, map)| map.active_model() == Some(version))
            {
                never.push(format!(
                    "refused-flips-never-appear: {version} is active at epoch {epoch}, but every activation of it was refused ({outcomes:?})"
                ));
            }
        }
        for what in never {
            self.violate(at, what);
        }
    }

    /// The highest epoch seen anywhere.
    pub fn highest_epoch(&self) -> Epoch {
        self.map_of_epoch
            .keys()
            .next_back()
            .copied()
            .unwrap_or_default()
    }

    pub fn terms_with_a_leader(&self) -> usize {
        self.leader_of_term.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scoregrid_raft::map::{ModelRecord, NodeInfo};
    use scoregrid_raft::placement::ReplicationFactor;
    use scoregrid_shard::PartitionCount;
    use scoregrid_wire::NodeId;

    fn map() -> ClusterMap {
        let nodes = (1..=3)
            .map(|i| NodeInfo {
                id: NodeId(i),
                address: format!("10.0.0.{i}:7000"),
                name: format!("node-{i}"),
                state: NodeState::Up,
                voter: true,
                admin: None,
            })
            .collect();
        ClusterMap::bootstrap(
            nodes,
            PartitionCount::new(4).unwrap(),
            ReplicationFactor::new(2).unwrap(),
            8,
        )
        .unwrap()
    }

    fn version(name: &str) -> ModelVersion {
        ModelVersion::new(name).unwrap()
    }

    #[test]
    fn two_maps_at_one_epoch_and_an_epoch_going_back_are_violations() {
        let mut history = History::default();
        let first = map();
        let mut other = first.clone();
        other.versions_retained = 7;
        history.holds(Duration::ZERO, "n1", 1, &first);
        history.holds(Duration::ZERO, "router r101", 101, &first);
        assert!(history.violations.is_empty(), "{:?}", history.violations);
        history.holds(Duration::from_millis(20), "router r102", 102, &other);
        assert!(
            history.violations[0].contains("one-map-per-epoch: router r102"),
            "{:?}",
            history.violations
        );
        let mut later = first.clone();
        later.epoch = Epoch(5);
        history.holds(Duration::from_millis(40), "n1", 1, &later);
        history.holds(Duration::from_millis(60), "n1", 1, &first);
        assert!(
            history.violations[1].contains("epochs-never-go-back: n1 went from 5 to 1"),
            "{:?}",
            history.violations
        );
    }

    #[test]
    fn a_refused_flip_seen_active_is_a_violation_and_an_unknown_one_is_not() {
        let mut active = map();
        active.epoch = Epoch(3);
        for name in ["refused", "unknown"] {
            active.models.push(ModelRecord {
                version: version(name),
                state: ModelState::Retired,
                digest: 0,
                checksums: vec![0; 4],
                staged: BTreeMap::new(),
            });
        }
        active.models[0].state = ModelState::Active;
        let mut history = History::default();
        history.holds(Duration::ZERO, "n1", 1, &active);
        history.flips.insert(
            version("refused"),
            vec![FlipOutcome::Refused("not staged".into())],
        );
        history.check_flips(Duration::ZERO);
        assert!(
            history.violations[0]
                .contains("refused-flips-never-appear: refused is active at epoch 3"),
            "{:?}",
            history.violations
        );
        let mut history = History::default();
        let mut unknown = active.clone();
        unknown.models[0].state = ModelState::Retired;
        unknown.models[1].state = ModelState::Active;
        history.holds(Duration::ZERO, "n1", 1, &unknown);
        history.flips.insert(
            version("unknown"),
            vec![
                FlipOutcome::Refused("not staged".into()),
                FlipOutcome::Unknown("no quorum".into()),
            ],
        );
        history.check_flips(Duration::ZERO);
        assert!(history.violations.is_empty(), "{:?}", history.violations);
    }
}
