//! The simulation's clients: an operator making random map changes, and a loader that
//! registers a version, reports it staged on every node that holds partitions and flips to it,
//! as `scoregrid load` does. Both ask a member directly (they stand beside it), and every
//! request is tracked while pending, for `minority-never-commits`.

use super::cluster::PARTITIONS;
use super::history::{FlipOutcome, History};
use super::nemesis::Split;
use super::net::Dice;
use scoregrid_raft::MapResponse;
use scoregrid_raft::command::MapCommand;
use scoregrid_raft::member::Member;
use scoregrid_raft::protocol::{ClusterError, ClusterReply, ClusterRequest};
use scoregrid_shard::ModelVersion;
use scoregrid_wire::{Caller, NodeId, PeerIdentity, Role};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a client gives one request (the member's `client_timeout` is shorter).
const REQUEST_DEADLINE: Duration = Duration::from_secs(3);

/// One pending client request and the partition state while it was pending.
pub struct Pending {
    member: u64,
    asked_at: Duration,
    /// Every member the asked one could reach while the request was pending.
    reach: BTreeSet<u64>,
}

/// The requests in flight, shared by the clients and the run loop (which widens their reach
/// when the network changes).
#[derive(Clone, Default)]
pub struct InFlight(Rc<RefCell<Vec<Rc<RefCell<Pending>>>>>);

impl InFlight {
    /// A change of the network: every pending request may now reach `side(member)` too.
    pub fn widen(&self, side: impl Fn(u64) -> BTreeSet<u64>) {
        for p in self.0.borrow().iter() {
            let mut p = p.borrow_mut();
            let more = side(p.member);
            p.reach.extend(more);
        }
    }
}

/// What the clients share: the history, the requests in flight, the members' count, the
/// partition in force, and the run's start.
#[derive(Clone)]
pub struct Clients {
    pub history: Rc<RefCell<History>>,
    pub in_flight: InFlight,
    pub members: u64,
    pub split: Rc<RefCell<Option<Split>>>,
    pub started: Instant,
}

pub(super) async fn propose(
    member: &Member,
    command: MapCommand,
) -> Result<MapResponse, ClusterError> {
    let caller = Caller {
        peer: PeerIdentity {
            name: "operator".into(),
            role: Role::Operator,
        },
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        epoch: 0,
        deadline: Instant::now() + REQUEST_DEADLINE,
    };
    let request = ClusterRequest::Propose {
        command,
        origin: Role::Operator,
        forwarded: false,
    };
    let payload = scoregrid_wire::codec::encode(&request)
        .map_err(|e| ClusterError::Refused(format!("does not encode: {e}")))?;
    match member.handle_cluster(&payload, &caller).await {
        ClusterReply::Proposed(response) => Ok(response),
        ClusterReply::Error(error) => Err(error),
        other => Err(ClusterError::Refused(format!("unexpected {other:?}"))),
    }
}

impl Clients {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Asks member `id` for `command`; records an acknowledgement (checking that the member
    /// could reach a quorum at some time while it was pending).
    pub async fn ask(
        &self,
        id: u64,
        member: Arc<Member>,
        command: MapCommand,
    ) -> Result<MapResponse, ClusterError> {
        let reach = super::nemesis::side_of(self.split.borrow().as_ref(), id, self.members);
        let entry = Rc::new(RefCell::new(Pending {
            member: id,
            asked_at: self.now(),
            reach,
        }));
        self.in_flight.0.borrow_mut().push(entry.clone());
        let outcome = propose(&member, command.clone()).await;
        let at = self.now();
        self.in_flight
            .0
            .borrow_mut()
            .retain(|p| !Rc::ptr_eq(p, &entry));
        let entry = entry.borrow();
        if let Ok(MapResponse::Applied { epoch }) = outcome {
            let mut history = self.history.borrow_mut();
            if (entry.reach.len() as u64) <= self.members / 2 {
                history.violate(
                    at,
                    format!(
                        "minority-never-commits: {command:?} asked of n{} at t={:.3}s, which could reach only {:?}, was acknowledged at epoch {epoch}",
                        entry.member,
                        entry.asked_at.as_secs_f64(),
                        entry.reach
                    ),
                );
            }
            history.acknowledged.push((epoch, command));
        }
        outcome
    }

    /// A random map change of an operator (a few version names, so that registrations,
    /// staging reports, flips and drops meet the same versions).
    pub fn random_change(&self, member: &Member, dice: &mut Dice) -> MapCommand {
        let k = dice.below(4) as u32;
        let version = version(&format!("v{k}"));
        match dice.below(5) {
            0 => MapCommand::Maintenance {
                id: NodeId(1 + dice.below(self.members)),
                on: dice.chance(50),
            },
            1 => MapCommand::RegisterModel {
                version,
                digest: k,
                checksums: vec![k; PARTITIONS as usize],
            },
            2 => {
                let node = NodeId(1 + dice.below(self.members));
                let partitions = member
                    .map()
                    .map(|m| m.partitions_of(node))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| (p, k))
                    .collect();
                MapCommand::ReportStaged {
                    version,
                    node,
                    partitions,
                }
            }
            3 => MapCommand::ActivateModel { version },
            _ => MapCommand::DropModel { version },
        }
    }

    /// One load of version `load-N` through member `id`: register, a staging report for
    /// every node of the map, the flip; a failed round drops what it registered (as an
    /// operator would; a version still staging is refused by the map's bound otherwise).
    pub async fn load_round(&self, n: u32, id: u64, member: Arc<Member>) {
        let version = version(&format!("load-{n}"));
        let at = self.now();
        let registered = self
            .ask(
                id,
                member.clone(),
                MapCommand::RegisterModel {
                    version: version.clone(),
                    digest: 1000 + n,
                    checksums: vec![1000 + n; PARTITIONS as usize],
                },
            )
            .await;
        // Whatever the answer, the version may exist from here on: it must not become
        // active unless a flip is asked for.
        self.history
            .borrow_mut()
            .flips
            .entry(version.clone())
            .or_default();
        if registered.is_err() {
            self.history
                .borrow_mut()
                .event(at, format!("load {version} via n{id}: not registered"));
            return;
        }
        let nodes: Vec<NodeId> = member
            .map()
            .map(|m| m.nodes.iter().map(|n| n.id).collect())
            .unwrap_or_default();
        for node in nodes {
            let partitions: Vec<_> = member
                .map()
                .map(|m| m.partitions_of(node))
                .unwrap_or_default()
                .into_iter()
                .map(|p| (p, 1000 + n))
                .collect();
            if partitions.is_empty() {
                continue;
            }
            let command = MapCommand::ReportStaged {
                version: version.clone(),
                node,
                partitions,
            };
            if self.ask(id, member.clone(), command).await.is_err() {
                break;
            }
        }
        // Recorded before it is asked: a flip cut short (the run ends) may still commit.
        self.history
            .borrow_mut()
            .flips
            .entry(version.clone())
            .or_default()
            .push(FlipOutcome::Unknown("asked, no answer yet".into()));
        let activated = self
            .ask(
                id,
                member.clone(),
                MapCommand::ActivateModel {
                    version: version.clone(),
                },
            )
            .await;
        let outcome = match &activated {
            Ok(MapResponse::Applied { epoch }) => FlipOutcome::Acknowledged(*epoch),
            Ok(other) => FlipOutcome::Unknown(format!("{other:?}")),
            Err(ClusterError::Refused(why) | ClusterError::NotAllowed(why)) => {
                FlipOutcome::Refused(why.clone())
            }
            Err(other) => FlipOutcome::Unknown(other.to_string()),
        };
        let done = self.now();
        {
            let mut history = self.history.borrow_mut();
            history.event(done, format!("flip to {version} via n{id}: {outcome:?}"));
            if let Some(last) = history.flips.entry(version.clone()).or_default().last_mut() {
                *last = outcome.clone();
            }
        }
        if !matches!(outcome, FlipOutcome::Acknowledged(_)) {
            let _ = self
                .ask(id, member, MapCommand::DropModel { version })
                .await;
        }
    }
}

/// A version name the simulation makes (always valid).
fn version(name: &str) -> ModelVersion {
    ModelVersion::new(name).unwrap_or_else(|_| unreachable!("{name} is a valid version name"))
}
