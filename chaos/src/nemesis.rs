//! The nemesis: a seeded schedule of faults, one at a time, each applied, held for a while and
//! healed, with the time it was in force recorded in the history; a load (the `load` fault)
//! runs on beside them. The same seed on the same cluster size gives the same schedule (which
//! fault, on which hosts, for how long) up to when loads end (while one runs, the next fault is
//! picked from the other kinds); what the cluster does under it varies with timing, as in any
//! real run.

use crate::ChaosError;
use crate::client::Rng;
use crate::cluster::Cluster;
use crate::history::Op;
use crate::loads::Loads;
use crate::net::{LinkFault, Network};
use std::time::Duration;

/// The kinds of fault, by the names `--faults` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// The nodes split in two: a minority and a majority (routers see both).
    PartitionHalves,
    /// The Raft leader cut off from every other node.
    PartitionLeader,
    /// Two halves that each see one bridge node, which sees both.
    PartitionBridge,
    /// Each node sees its two neighbours on a ring and no one else (5 nodes and more: each
    /// sees a majority, no two the same one).
    PartitionRing,
    /// One router cut off from some of the nodes.
    PartitionRouter,
    /// `kill -9` of a node; restarted on its data directory at heal.
    Kill,
    /// SIGSTOP of a node; SIGCONT at heal.
    Pause,
    /// 50 ms ± 25 ms of delay on what one node sends (tc netem, or on a kernel without it
    /// NFQUEUE and the harness's [`crate::delay::Delayer`]).
    Delay,
    /// One node's link slowed to 2 Mbit/s, queueing at most 100 ms (tc tbf).
    Slow,
    /// 20% of what one node sends lost (nftables).
    Loss,
    /// 10% of what one node sends sent twice (nftables).
    Duplicate,
    /// `model activate` of the other retained version, through a random node. (Partitions
    /// with a side without quorum also ask for a flip through that side, half of the time;
    /// other faults, a quarter of the time, through any node while they are in force.)
    Flip,
    /// `cluster maintenance ID on`, and off at heal.
    Maintenance,
    /// `scoregrid load` of a new version with its flip, through a random node. It runs on
    /// while the next faults come and go (one load at a time) and ends as it ends: staged and
    /// active, refused, without quorum, or killed after 60 s.
    Load,
    /// `cluster remove ID` of a node that is not a Raft voter: its partitions get new
    /// replicas, which fetch them from the copies that stay. At heal it comes back as a new
    /// machine would: data directory wiped, `scoregrid node --join`, state `joining`, holding
    /// nothing (moving partitions onto a joined node is not built yet). Needs a node beyond
    /// the voters: `--nodes 4`, or 6 and more.
    Membership,
}

impl FaultKind {
    pub const ALL: [FaultKind; 15] = [
        FaultKind::PartitionHalves,
        FaultKind::PartitionLeader,
        FaultKind::PartitionBridge,
        FaultKind::PartitionRing,
        FaultKind::PartitionRouter,
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Delay,
        FaultKind::Slow,
        FaultKind::Loss,
        FaultKind::Duplicate,
        FaultKind::Flip,
        FaultKind::Maintenance,
        FaultKind::Load,
        FaultKind::Membership,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::PartitionHalves => "partition-halves",
            FaultKind::PartitionLeader => "partition-leader",
            FaultKind::PartitionBridge => "partition-bridge",
            FaultKind::PartitionRing => "partition-ring",
            FaultKind::PartitionRouter => "partition-router",
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Delay => "delay",
            FaultKind::Slow => "slow",
            FaultKind::Loss => "loss",
            FaultKind::Duplicate => "duplicate",
            FaultKind::Flip => "flip",
            FaultKind::Maintenance => "maintenance",
            FaultKind::Load => "load",
            FaultKind::Membership => "membership",
        }
    }

    /// Parses a `--faults` list (`kill,pause,partition-halves`; `all` for every kind).
    ///
    /// # Errors
    /// An unknown name, with the list of known ones.
    pub fn parse_list(list: &str) -> Result<Vec<FaultKind>, ChaosError> {
        let mut kinds = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" {
                kinds.extend(Self::ALL);
                continue;
            }
            let kind = Self::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| {
                    ChaosError::Invalid(format!(
                        "--faults: unknown fault {name:?}; known: all, {}",
                        Self::ALL.map(FaultKind::name).join(", ")
                    ))
                })?;
            kinds.push(kind);
        }
        kinds.sort();
        kinds.dedup();
        if kinds.is_empty() {
            return Err(ChaosError::Invalid("--faults: no fault named".into()));
        }
        Ok(kinds)
    }
}

/// What is in force, to be healed.
enum InForce {
    Network,
    Killed(String),
    Paused(String),
    Maintenance(u64),
    /// Removed (or perhaps: the removal's outcome is unknown): re-joins at heal.
    Removed(String),
    Nothing,
}

/// Applies faults to a run's network and processes.
pub struct Nemesis<'a> {
    pub network: &'a mut Network,
    pub cluster: &'a mut Cluster,
    pub rng: Rng,
    /// The version the nemesis believes active, and the one a flip goes back to (the active
    /// one before it: a rollback).
    pub active: String,
    pub previous: String,
    pub loads: &'a mut Loads,
    /// Finds the Raft leader's node name (through a router), if there is one.
    pub leader: Box<dyn FnMut() -> Option<String> + 'a>,
    pub operator_timeout: Duration,
}

/// What applying a fault did: its history entry and, for a flip or a maintenance, the
/// operator command's.
pub struct Applied {
    pub fault: Op,
    pub operator: Option<Op>,
    in_force: InForce,
}

impl Nemesis<'_> {
    fn nodes(&self) -> Vec<String> {
        self.cluster.node_names()
    }

    fn shuffled_nodes(&mut self) -> Vec<String> {
        let mut nodes = self.nodes();
        for i in (1..nodes.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            nodes.swap(i, j);
        }
        nodes
    }

    fn cut_between(&mut self, a: &[String], b: &[String]) -> Result<(), ChaosError> {
        for x in a {
            for y in b {
                self.network.cut(x, y)?;
            }
        }
        Ok(())
    }

    /// Applies one fault of `kind`.
    ///
    /// # Errors
    /// A command the kernel refused, or a process that does not start again.
    pub fn apply(&mut self, kind: FaultKind, at_ms: u64) -> Result<Applied, ChaosError> {
        let mut operator = None;
        // The side of a partition without quorum, if it has one: a flip asked through it must
        // fail.
        let mut minority_side: Vec<String> = Vec::new();
        let (detail, in_force) = match kind {
            FaultKind::PartitionHalves => {
                let nodes = self.shuffled_nodes();
                let (small, large) = nodes.split_at(nodes.len() / 2);
                self.cut_between(small, large)?;
                // Quorum is over the voters: with a learner, the smaller half may hold most
                // of them.
                let voters = self.voter_names();
                minority_side = side_without_quorum(small, large, &voters).to_vec();
                (
                    format!("{} | {}", small.join(" "), large.join(" ")),
                    InForce::Network,
                )
            }
            FaultKind::PartitionLeader => {
                let nodes = self.nodes();
                let leader = (self.leader)().unwrap_or_else(|| nodes[0].clone());
                let others: Vec<String> = nodes.into_iter().filter(|n| *n != leader).collect();
                self.cut_between(std::slice::from_ref(&leader), &others)?;
                if !others.is_empty() {
                    minority_side = vec![leader.clone()];
                }
                (format!("{leader} | {}", others.join(" ")), InForce::Network)
            }
            FaultKind::PartitionBridge => {
                let nodes = self.shuffled_nodes();
                let (bridge, rest) = nodes
                    .split_first()
                    .ok_or_else(|| ChaosError::Invalid("a bridge partition needs nodes".into()))?;
                let (a, b) = rest.split_at(rest.len() / 2);
                self.cut_between(a, b)?;
                (
                    format!("{} | {bridge} | {}", a.join(" "), b.join(" ")),
                    InForce::Network,
                )
            }
            FaultKind::PartitionRing => {
                let nodes = self.shuffled_nodes();
                let n = nodes.len();
                let mut cuts = Vec::new();
                for i in 0..n {
                    for j in i + 1..n {
                        let distance = (j - i).min(n - (j - i));
                        if distance > 1 {
                            self.network.cut(&nodes[i], &nodes[j])?;
                            cuts.push(format!("{}-{}", nodes[i], nodes[j]));
                        }
                    }
                }
                (
                    format!("ring {} (cut {})", nodes.join(" "), cuts.join(" ")),
                    InForce::Network,
                )
            }
            FaultKind::PartitionRouter => {
                let routers: Vec<String> = self
                    .cluster
                    .processes
                    .iter()
                    .filter(|p| p.kind == crate::cluster::Kind::Router)
                    .map(|p| p.name.clone())
                    .collect();
                let router = self
                    .rng
                    .pick(&routers)
                    .cloned()
                    .ok_or_else(|| ChaosError::Invalid("no router".into()))?;
                let nodes = self.shuffled_nodes();
                let count =
                    1 + self.rng.below(nodes.len().saturating_sub(1).max(1) as u64) as usize;
                let cut = &nodes[..count.min(nodes.len())];
                self.cut_between(std::slice::from_ref(&router), cut)?;
                (format!("{router} | {}", cut.join(" ")), InForce::Network)
            }
            FaultKind::Kill => {
                let node = self.random_node()?;
                self.cluster.kill(&node)?;
                (node.clone(), InForce::Killed(node))
            }
            FaultKind::Pause => {
                let node = self.random_node()?;
                self.cluster.pause(&node, true)?;
                (node.clone(), InForce::Paused(node))
            }
            FaultKind::Delay | FaultKind::Slow | FaultKind::Loss | FaultKind::Duplicate => {
                let node = self.random_node()?;
                let fault = match kind {
                    FaultKind::Delay => LinkFault::Delay {
                        ms: 50,
                        jitter_ms: 25,
                    },
                    FaultKind::Slow => LinkFault::Slow {
                        kbit: 2000,
                        latency_ms: 100,
                    },
                    FaultKind::Loss => LinkFault::Loss { percent: 20 },
                    _ => LinkFault::Duplicate { percent: 10 },
                };
                self.network.degrade(&node, fault)?;
                (format!("{node}: {fault:?}"), InForce::Network)
            }
            FaultKind::Flip => {
                let via = self.random_node()?;
                let (op, version) = self.flip(&via, false);
                operator = Some(op);
                (format!("to {version} via {via}"), InForce::Nothing)
            }
            FaultKind::Maintenance => {
                let node = self.random_node()?;
                let id = self.node_id(&node);
                operator = Some(self.maintenance(&node, id, true).0);
                (node, InForce::Maintenance(id))
            }
            FaultKind::Membership => {
                let learners: Vec<String> = self
                    .cluster
                    .members
                    .iter()
                    .filter(|m| !self.cluster.voters.contains(&m.id))
                    .map(|m| m.name.clone())
                    .collect();
                let node = self.rng.pick(&learners).cloned().ok_or_else(|| {
                    ChaosError::Invalid("membership faults need a node that is not a voter".into())
                })?;
                let via = self.random_voter()?;
                let id = self.node_id(&node);
                let (op, code) = self.remove(&via, id);
                operator = Some(op);
                let in_force = if code == Some(1) {
                    InForce::Nothing
                } else {
                    InForce::Removed(node.clone())
                };
                (format!("{node} via {via}"), in_force)
            }
            FaultKind::Load => {
                let via = self.random_node()?;
                if let Some(version) = self.loads.abandoned() {
                    operator = Some(self.drop_version(&via, &version));
                }
                let (version, attempt) =
                    self.loads
                        .start(self.cluster, &via, &self.addr_of(&via), at_ms)?;
                (
                    format!("{version} via {via} (attempt {attempt})"),
                    InForce::Nothing,
                )
            }
        };
        if !minority_side.is_empty() && self.rng.below(2) == 0 {
            let via = self.rng.pick(&minority_side).cloned().unwrap_or_default();
            operator = Some(self.flip(&via, true).0);
        } else if operator.is_none() && self.rng.below(4) == 0 {
            // A flip while the fault is in force, through any node: the flip must hold (or be
            // refused) under it, not only between faults.
            let via = self.random_node()?;
            operator = Some(self.flip(&via, false).0);
        }
        Ok(Applied {
            fault: Op::Fault {
                kind: kind.name().to_string(),
                detail,
            },
            operator,
            in_force,
        })
    }

    /// Heals what `applied` did. A maintenance is switched off with retries until it is (the
    /// operator's own job after a planned restart).
    ///
    /// # Errors
    /// A command the kernel refused, or a killed node that does not start again.
    pub fn heal(&mut self, applied: &Applied) -> Result<Option<Op>, ChaosError> {
        match &applied.in_force {
            InForce::Network => self.network.heal()?,
            InForce::Killed(node) => self.cluster.start(node)?,
            InForce::Paused(node) => self.cluster.pause(node, false)?,
            InForce::Removed(node) => {
                let via = self.random_voter()?;
                let addr = self
                    .member_addr(&via)
                    .ok_or_else(|| ChaosError::Invalid(format!("no node {via}")))?;
                self.cluster.rejoin(node, addr)?;
            }
            InForce::Maintenance(id) => {
                let mut last = None;
                for _ in 0..5 {
                    let via = self.random_node()?;
                    let (op, done) = self.maintenance(&via, *id, false);
                    last = Some(op);
                    if done {
                        break;
                    }
                }
                return Ok(last);
            }
            InForce::Nothing => {}
        }
        Ok(None)
    }

    /// Heals everything: cuts, disciplines, paused and killed processes.
    ///
    /// # Errors
    /// As [`Nemesis::heal`].
    pub fn heal_all(&mut self) -> Result<(), ChaosError> {
        self.network.heal()?;
        for node in self.nodes() {
            if self.cluster.is_running(&node) {
                self.cluster.pause(&node, false)?;
            } else {
                self.cluster.start(&node)?;
            }
        }
        Ok(())
    }

    /// `cluster maintenance ID on|off` through node `via`: its history entry and whether it
    /// was acknowledged.
    fn maintenance(&self, via: &str, id: u64, on: bool) -> (Op, bool) {
        let state = if on { "on" } else { "off" };
        let (op, code) = self.map_change(
            via,
            &["cluster", "maintenance", &id.to_string(), state],
            format!("cluster maintenance {id} {state}"),
        );
        (op, code == Some(0))
    }

    /// An operator command through node `via` that changes the map but activates nothing:
    /// its history entry (named `command`) and exit code.
    fn map_change(&self, via: &str, args: &[&str], command: String) -> (Op, Option<i32>) {
        let outcome = self.operator(via, args);
        let code = outcome.as_ref().ok().and_then(|o| o.0);
        let op = Op::Operator {
            command,
            version: None,
            code,
            message: outcome.map_or_else(|e| e.to_string(), |o| o.1),
            minority: false,
        };
        (op, code)
    }

    /// The load that has just ended, if one has: when (it was invoked) and its history entry.
    /// An acknowledged load makes its version the one believed active.
    ///
    /// # Errors
    /// The load's status cannot be read.
    pub fn poll_load(&mut self) -> Result<Option<(u64, Op)>, ChaosError> {
        let Some(finished) = self.loads.poll()? else {
            return Ok(None);
        };
        if finished.acknowledged {
            self.previous = std::mem::replace(&mut self.active, finished.version);
        }
        Ok(Some((finished.invoke_ms, finished.op)))
    }

    /// `cluster remove ID` through node `via`: its history entry and exit code.
    fn remove(&self, via: &str, id: u64) -> (Op, Option<i32>) {
        self.map_change(
            via,
            &["cluster", "remove", &id.to_string()],
            format!("cluster remove {id} via {via}"),
        )
    }

    fn voter_names(&self) -> Vec<String> {
        self.cluster
            .members
            .iter()
            .filter(|m| self.cluster.voters.contains(&m.id))
            .map(|m| m.name.clone())
            .collect()
    }

    fn random_voter(&mut self) -> Result<String, ChaosError> {
        let voters = self.voter_names();
        self.rng
            .pick(&voters)
            .cloned()
            .ok_or_else(|| ChaosError::Invalid("no voter".into()))
    }

    /// `model drop V` through node `via`, for a version the run gave up loading.
    fn drop_version(&self, via: &str, version: &str) -> Op {
        self.map_change(
            via,
            &["model", "drop", version],
            format!("model drop {version} via {via}"),
        )
        .0
    }

    /// `model activate` of the version active before the one believed active (a rollback),
    /// through node `via` (`minority`: a side without quorum, where it must fail).
    fn flip(&mut self, via: &str, minority: bool) -> (Op, String) {
        let version = self.previous.clone();
        let outcome = self.operator(via, &["model", "activate", &version]);
        let code = outcome.as_ref().ok().and_then(|o| o.0);
        if code == Some(0) {
            std::mem::swap(&mut self.active, &mut self.previous);
        }
        let op = Op::Operator {
            command: format!("model activate {version} via {via}"),
            version: Some(version.clone()),
            code,
            message: outcome.map_or_else(|e| e.to_string(), |o| o.1),
            minority,
        };
        (op, version)
    }

    fn random_node(&mut self) -> Result<String, ChaosError> {
        let nodes = self.nodes();
        self.rng
            .pick(&nodes)
            .cloned()
            .ok_or_else(|| ChaosError::Invalid("no node".into()))
    }

    fn node_id(&self, name: &str) -> u64 {
        self.cluster
            .members
            .iter()
            .find(|m| m.name == name)
            .map_or(0, |m| m.id)
    }

    fn member_addr(&self, name: &str) -> Option<std::net::SocketAddr> {
        self.cluster
            .members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.addr)
    }

    fn addr_of(&self, name: &str) -> String {
        self.member_addr(name)
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    /// An operator command through node `via`: (exit code, its first line of output).
    fn operator(&self, via: &str, args: &[&str]) -> Result<(Option<i32>, String), ChaosError> {
        let addr = self.addr_of(via);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--cluster", &addr]);
        let outcome = self.cluster.operator(&all, self.operator_timeout)?;
        let message = format!("{}{}", outcome.stdout, outcome.stderr);
        Ok((
            outcome.code,
            message
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect(),
        ))
    }
}

/// Of two sides of a partition, the one that holds at most half of the `voters` (none of it
/// can commit); empty when each holds more than half (never, with both sides disjoint).
fn side_without_quorum<'s>(a: &'s [String], b: &'s [String], voters: &[String]) -> &'s [String] {
    let count = |side: &[String]| side.iter().filter(|n| voters.contains(n)).count();
    if 2 * count(a) <= voters.len() {
        a
    } else if 2 * count(b) <= voters.len() {
        b
    } else {
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_side_without_quorum_is_counted_in_voters_not_nodes() {
        let names = |list: &[&str]| list.iter().map(|n| (*n).to_string()).collect::<Vec<_>>();
        let voters = names(&["n1", "n2", "n3"]);
        // 4 nodes, n4 a learner: the half {n1, n2} holds two voters of three, a quorum.
        let (a, b) = (names(&["n1", "n2"]), names(&["n3", "n4"]));
        assert_eq!(side_without_quorum(&a, &b, &voters), b.as_slice());
        let (a, b) = (names(&["n1", "n4"]), names(&["n2", "n3"]));
        assert_eq!(side_without_quorum(&a, &b, &voters), a.as_slice());
        let (a, b) = (names(&["n1"]), names(&["n2", "n3"]));
        assert_eq!(side_without_quorum(&a, &b, &voters), a.as_slice());
    }

    #[test]
    fn fault_lists_parse_and_name_what_is_unknown() {
        assert_eq!(
            FaultKind::parse_list("all").unwrap().len(),
            FaultKind::ALL.len()
        );
        assert_eq!(
            FaultKind::parse_list("kill, pause,kill").unwrap(),
            [FaultKind::Kill, FaultKind::Pause]
        );
        let error = FaultKind::parse_list("kill,meteor")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("meteor") && error.contains("partition-halves"),
            "{error}"
        );
        assert!(FaultKind::parse_list(" , ").is_err());
    }
}
