//! The deterministic simulation of the control plane: for one seed, 3 or 5 real Raft members
//! (openraft with the real log store and state machine on files), two routers' real map
//! followers, an operator and a loader, all on one thread with tokio's clock paused and every
//! message carried by a seeded network ([`net`]). A run of 12 virtual seconds of faults takes
//! milliseconds, and a seed names one run: the network's drops, delays and partitions, the
//! members' election timeouts, the nemesis and the clients' requests.
//!
//! The sleeps in here are the model, not waits for a condition: a message's transit time, the
//! staggered starts of the members, the checker's step, all in virtual time. Conditions (the
//! convergence after the heal) are awaited with a deadline and report what was seen.
//!
//! Invariants, checked every 20 ms of virtual time and at the end:
//! - `one-leader-per-term`: no two members lead in the same term;
//! - `one-map-per-epoch`: every member and every router that holds epoch E holds the same map
//!   (a router never follows a map no member committed, and no committed change is replaced);
//! - `epochs-never-go-back`: at any member or router;
//! - `acknowledged-changes-stay`: a change acknowledged at epoch E is in the map of epoch E,
//!   and every member reaches at least the highest acknowledged epoch after the final heal;
//! - `minority-never-commits`: a request to a member that could reach no quorum for the whole
//!   time it was pending is never acknowledged;
//! - `refused-flips-never-appear`: a version whose every activation was refused (or that was
//!   never asked to activate) is active in no map anyone held;
//! - `routers-say-stale`: a router that can reach no member of a quorum calls its map stale
//!   within `history::stale_bound` (3.4 s) of the fault that cut it off;
//! - `converges-after-heal`: after the final heal, one leader that every member follows and
//!   one map within 3 maximum election timeouts; every router on that map (the same active
//!   version), fresh, within one more long poll.
//!
//! `scoregrid chaos sim --seeds N` runs many; a failing seed prints the command that replays it.

mod actors;
mod cluster;
mod history;
mod nemesis;
mod net;
#[cfg(test)]
mod tests;

use actors::{Clients, InFlight};
use cluster::{Cluster, ELECTION_MAX, FOLLOW, WATCH_GRACE};
use history::History;
use nemesis::Nemesis;
use net::{Dice, Links, Net, NetHandle};
use scoregrid_raft::map::Epoch;
use scoregrid_raft::protocol::MapView;
use scoregrid_raft::runtime::seed_thread_rng;
use scoregrid_wire::NodeId;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;
use tokio::time::Instant;

/// Virtual time of the nemesis phase of one run.
pub const FAULT_PHASE: Duration = Duration::from_secs(12);
/// The checker's step.
const STEP: Duration = Duration::from_millis(20);
/// Routers in every run.
const ROUTERS: u64 = 2;

/// Why a simulation could not run (not a violation: the harness itself failed).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulated member n{0} does not start: {1}")]
    Member(u64, String),
    #[error("the simulation's runtime or directory: {0}")]
    Setup(String),
}

/// What one seed did.
#[derive(Debug, Default)]
pub struct SimRun {
    pub seed: u64,
    pub members: u64,
    /// Empty when every invariant held.
    pub violations: Vec<String>,
    /// Elections, faults, flips, the end: enough to read a failing run.
    pub events: Vec<String>,
}

impl SimRun {
    /// The command that replays this seed with its events printed.
    pub fn replay_command(&self) -> String {
        format!(
            "scoregrid chaos sim --seed {} --members {} --verbose",
            self.seed, self.members
        )
    }
}

/// Runs one seed with `members` members (3 or 5) in a directory under `base` (tmpfs is best).
///
/// # Errors
/// The runtime or a member's storage could not be set up.
pub fn run(seed: u64, members: u64, base: &Path) -> Result<SimRun, SimError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| SimError::Setup(e.to_string()))?;
    seed_thread_rng(seed);
    let root = base.join(format!(
        "scoregrid-sim-{}-{seed}-{members}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    let outcome = runtime.block_on(simulate(seed, members, root.clone()));
    drop(runtime);
    let _ = std::fs::remove_dir_all(&root);
    let (violations, events) = outcome?;
    Ok(SimRun {
        seed,
        members,
        violations,
        events,
    })
}

/// Where runs keep their members' files: `/dev/shm` when there is one.
pub fn default_base() -> PathBuf {
    if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    }
}

type Outcome = (Vec<String>, Vec<String>);

async fn simulate(seed: u64, members: u64, root: PathBuf) -> Result<Outcome, SimError> {
    let net = Rc::new(Net::new(seed));
    let mut cluster = Cluster {
        members,
        root,
        net: NetHandle::new(net.clone()),
        routers: Vec::new(),
    };
    let mut dice = Dice(seed);
    let local = tokio::task::LocalSet::new();
    let outcome = local
        .run_until(async {
            // Real processes never start in the same microsecond: stagger the starts, so that
            // the members' timers do not tick in lockstep.
            for id in 1..=members {
                cluster.start(id).await?;
                tokio::time::sleep(dice.millis(0, 150)).await;
            }
            for index in 0..ROUTERS {
                cluster.start_router(index);
            }
            let started = Instant::now();
            let clients = Clients {
                history: Rc::new(RefCell::new(History::default())),
                in_flight: InFlight::default(),
                members,
                split: Rc::new(RefCell::new(None)),
                started,
            };
            let loader = tokio::task::spawn_local(load_rounds(
                clients.clone(),
                cluster.net.clone(),
                Dice(seed ^ 0x10ad),
            ));
            fault_phase(&cluster, &clients, &mut dice).await?;
            loader.abort();
            final_heal(&cluster, &clients, &net).await?;
            let mut history = clients.history.borrow_mut();
            Ok::<Outcome, SimError>((
                std::mem::take(&mut history.violations),
                std::mem::take(&mut history.events),
            ))
        })
        .await;
    cluster.routers.clear();
    for (id, _) in cluster.running() {
        cluster.crash(id).await;
    }
    outcome
}

/// The loader: a load round every 0.3 to 1.5 s through a random running member.
async fn load_rounds(clients: Clients, net: NetHandle, mut dice: Dice) {
    let mut n = 0u32;
    loop {
        tokio::time::sleep(dice.millis(300, 1500)).await;
        let running: Vec<_> = net
            .net()
            .members
            .borrow()
            .iter()
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        if running.is_empty() {
            continue;
        }
        let (id, member) = running[dice.below(running.len() as u64) as usize].clone();
        n += 1;
        clients.load_round(n, id, member).await;
    }
}

async fn fault_phase(
    cluster: &Cluster,
    clients: &Clients,
    dice: &mut Dice,
) -> Result<(), SimError> {
    let started = clients.started;
    let mut nemesis = Nemesis::default();
    let mut next_fault = started + Duration::from_secs(2);
    let mut next_write = started + Duration::from_millis(300);
    while started.elapsed() < FAULT_PHASE {
        tokio::time::sleep(STEP).await;
        let now = Instant::now();
        let at = started.elapsed();
        let links = cluster.net().links.borrow().clone();
        let minority = nemesis.split.as_ref().map(|s| s.minority.clone());
        clients
            .history
            .borrow_mut()
            .observe(at, cluster, &links, minority.as_ref());
        if now >= next_fault {
            let struck = nemesis.strike(cluster, dice).await?;
            {
                let mut history = clients.history.borrow_mut();
                history.event(at, format!("fault: {}", struck.text));
                history.network_changed();
            }
            next_fault = now + struck.hold;
            *clients.split.borrow_mut() = nemesis.split.clone();
            // A request pending across a change of the network could reach more members.
            let split = nemesis.split.clone();
            clients
                .in_flight
                .widen(|m| nemesis::side_of(split.as_ref(), m, cluster.members));
        }
        if now >= next_write {
            next_write = now + dice.millis(50, 400);
            let running = cluster.running();
            if running.is_empty() {
                continue;
            }
            let (id, member) = running[dice.below(running.len() as u64) as usize].clone();
            let command = clients.random_change(&member, dice);
            let clients = clients.clone();
            tokio::task::spawn_local(async move {
                let _ = clients.ask(id, member, command).await;
            });
        }
    }
    Ok(())
}

/// Every member running, every link whole; then one leader and one map, and every router on
/// it, within their bounds.
async fn final_heal(cluster: &Cluster, clients: &Clients, net: &Net) -> Result<(), SimError> {
    let started = clients.started;
    let members = cluster.members;
    *net.links.borrow_mut() = Links::healthy();
    *clients.split.borrow_mut() = None;
    // Requests still pending may now commit through the majority.
    clients.in_flight.widen(|_| (1..=members).collect());
    for id in 1..=members {
        if !net.members.borrow().contains_key(&id) {
            cluster.start(id).await?;
        }
    }
    let healed = Instant::now();
    clients
        .history
        .borrow_mut()
        .event(started.elapsed(), "final heal".into());
    let members_window = ELECTION_MAX * 3;
    let routers_window = members_window + FOLLOW.wait + WATCH_GRACE + Duration::from_millis(200);
    let mut members_converged: Option<Epoch> = None;
    let mut routers_converged = false;
    let healthy = Links::healthy();
    while healed.elapsed() <= routers_window {
        tokio::time::sleep(STEP).await;
        clients
            .history
            .borrow_mut()
            .observe(started.elapsed(), cluster, &healthy, None);
        // The map moves on after the heal (the leader marks restarted members up, pending
        // requests commit): the routers must reach the members' map as it is now.
        let common = one_leader_one_map(cluster);
        if members_converged.is_none() && healed.elapsed() <= members_window {
            members_converged = common;
        }
        if let (Some(epoch), Some(_)) = (common, members_converged) {
            let leader_active = cluster
                .running()
                .first()
                .and_then(|(_, m)| m.map())
                .and_then(|m| m.active_model().cloned());
            routers_converged = cluster.routers.iter().all(|r| {
                let followed = r.followed.borrow();
                !followed.stale
                    && followed.epoch() == epoch
                    && followed
                        .map
                        .as_ref()
                        .and_then(|m| m.active_model().cloned())
                        == leader_active
            });
            if routers_converged {
                break;
            }
        }
    }
    let at = started.elapsed();
    let mut history = clients.history.borrow_mut();
    if members_converged.is_none() {
        let views: Vec<String> = cluster
            .running()
            .iter()
            .map(|(id, m)| {
                let v = m.view();
                format!(
                    "n{id}: {:?} term {} leader {:?} epoch {}",
                    m.metrics().state,
                    v.term,
                    v.leader,
                    v.epoch()
                )
            })
            .collect();
        history.violate(
            at,
            format!(
                "converges-after-heal: no single leader and map within {} ms: {}",
                members_window.as_millis(),
                views.join("; ")
            ),
        );
    } else if !routers_converged {
        let views: Vec<String> = cluster
            .routers
            .iter()
            .map(|r| {
                let f = r.followed.borrow();
                format!(
                    "r{}: epoch {} stale {} source {:?}",
                    r.id,
                    f.epoch(),
                    f.stale,
                    f.source
                )
            })
            .collect();
        history.violate(
            at,
            format!(
                "converges-after-heal: the routers are not on the members' map (epoch {}) within {} ms: {}",
                members_converged.unwrap_or_default(),
                routers_window.as_millis(),
                views.join("; ")
            ),
        );
    }
    history.check_acknowledged(at);
    history.check_flips(at);
    let flips = history.flips.len();
    let summary = format!(
        "end: {} acknowledged changes, {flips} loads, {} terms with a leader, highest epoch {}, routers said stale in {} steps",
        history.acknowledged.len(),
        history.terms_with_a_leader(),
        history.highest_epoch(),
        history.routers_said_stale
    );
    history.event(at, summary);
    let highest_acknowledged = history.acknowledged.iter().map(|(e, _)| *e).max();
    if let (Some(highest), Some(_)) = (highest_acknowledged, members_converged) {
        for (id, member) in cluster.running() {
            let epoch = member.map().map_or(Epoch(0), |m| m.epoch);
            if epoch < highest {
                history.violate(
                    at,
                    format!(
                        "acknowledged-changes-stay: n{id} ends at epoch {epoch}, below the acknowledged {highest}"
                    ),
                );
            }
        }
    }
    Ok(())
}

/// The common epoch when one leader leads every running member and they hold one map.
fn one_leader_one_map(cluster: &Cluster) -> Option<Epoch> {
    let running = cluster.running();
    let views: Vec<MapView> = running.iter().map(|(_, m)| m.view()).collect();
    let leaders: BTreeSet<Option<NodeId>> = views.iter().map(|v| v.leader).collect();
    let epochs: BTreeSet<Epoch> = views.iter().map(MapView::epoch).collect();
    let one_leader = leaders.len() == 1
        && leaders.iter().next().copied().flatten().is_some_and(|l| {
            running
                .iter()
                .any(|(id, m)| *id == l.0 && m.metrics().state == openraft::ServerState::Leader)
        });
    let epoch = *epochs.iter().next()?;
    (one_leader && epochs.len() == 1 && epoch > Epoch(0)).then_some(epoch)
}

/// Runs `count` seeds from `first` with `members` members; returns the failing runs.
///
/// # Errors
/// A run that could not be set up.
pub fn sweep(first: u64, count: u64, members: u64, base: &Path) -> Result<Vec<SimRun>, SimError> {
    let mut failing = Vec::new();
    for seed in first..first.saturating_add(count) {
        let run = run(seed, members, base)?;
        if !run.violations.is_empty() {
            failing.push(run);
        }
    }
    Ok(failing)
}
