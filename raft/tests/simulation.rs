//! A deterministic in-process cluster under a seeded fault-injecting network.
//!
//! Each seed builds 3 or 5 real [`Member`]s (openraft, the real log store and state machine on
//! tmpfs, the real network code behind [`PeerClients`]) on one thread with tokio's clock paused,
//! so virtual seconds pass in milliseconds and a seed names one run: the network's drops, delays
//! and partitions, the election timeouts (the member's seeded runtime) and the client's writes.
//! The nemesis cuts the network into halves, bridges, an isolated leader or one-way links,
//! drops, delays and reorders messages, and crashes and restarts members from their disks.
//!
//! The sleeps here are the model, not waits for a condition: a message's transit time on the
//! simulated network, the staggered starts of the members, and the checker's step, all on the
//! paused clock (virtual time; a run of 12 virtual seconds takes milliseconds). Conditions are
//! awaited with a deadline and report what was seen (`converges-after-heal`).
//!
//! Invariants are checked every 20 ms of virtual time:
//! - `one-leader-per-term`: no two members lead in the same term;
//! - `one-map-per-epoch`: every member that holds epoch E holds the same map (so no committed
//!   change is lost or replaced: a change acknowledged at epoch E is in the map of epoch E,
//!   wherever and whenever it is seen);
//! - `epochs-never-go-back`: a running member's epoch never decreases;
//! - `acknowledged-changes-stay`: a change acknowledged at epoch E is in that map, and every
//!   member reaches an epoch >= E after the final heal;
//! - `minority-never-commits`: a write asked of a member on the minority side of clean
//!   partitions for the whole time it was pending (the union of the sides it could reach over
//!   that time holds no quorum) is never acknowledged;
//! - `converges-after-heal`: after the final heal, one leader that every member follows and
//!   identical maps within 3 maximum election timeouts.
//!
//! A failing seed prints the command that replays it:
//! `SIM_SEED=<seed> SIM_MEMBERS=<n> cargo test -p scoregrid-raft --test simulation replay -- --nocapture`.
//! `SIM_SEEDS` sets how many seeds each of the sweep tests runs (default below).

use scoregrid_raft::command::MapCommand;
use scoregrid_raft::map::{ClusterMap, Epoch, NodeInfo, NodeState};
use scoregrid_raft::member::{Member, MemberSettings};
use scoregrid_raft::peers::PeerClients;
use scoregrid_raft::protocol::{ClusterError, ClusterReply, ClusterRequest, MapView};
use scoregrid_raft::runtime::seed_thread_rng;
use scoregrid_raft::{MapResponse, RaftPeer};
use scoregrid_shard::ModelVersion;
use scoregrid_shard::hashing::mix64;
use scoregrid_wire::{
    Caller, NodeClient, NodeError, NodeId, PeerIdentity, Request, Response, Role, RpcError,
    RpcFuture,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Seeds per sweep test (four sweeps: two for 3 members, two for 5): 1,000 seeds of each size.
const SEEDS_PER_SWEEP: u64 = 500;
/// Virtual time of the nemesis phase of one run.
/// Partitions of the simulated map.
const PARTITIONS: u32 = 16;
const FAULT_PHASE: Duration = Duration::from_secs(12);
const HEARTBEAT: Duration = Duration::from_millis(100);
const ELECTION_MIN: Duration = Duration::from_millis(300);
const ELECTION_MAX: Duration = Duration::from_millis(600);
const STEP: Duration = Duration::from_millis(20);

// ---- a seeded random source for the network and the nemesis ----

struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

// ---- the network ----

/// Which directed links carry messages, and how badly.
#[derive(Clone, Debug)]
struct Links {
    /// `cut.contains(&(a, b))`: nothing from a reaches b.
    cut: BTreeSet<(u64, u64)>,
    drop_percent: u64,
    delay_max_ms: u64,
}

impl Links {
    fn healthy() -> Self {
        Self {
            cut: BTreeSet::new(),
            drop_percent: 0,
            delay_max_ms: 5,
        }
    }
}

struct Net {
    dice: RefCell<Dice>,
    links: RefCell<Links>,
    members: RefCell<BTreeMap<u64, Arc<Member>>>,
}

/// `Net` lives on the one simulation thread; members need `Send + Sync` clients, so the
/// handle carries it through a mutex that is only ever taken on that thread.
#[derive(Clone)]
struct NetHandle(Arc<Mutex<SendRc>>);

struct SendRc(Rc<Net>);
// SAFETY: the simulation runs on one current-thread runtime; the `Rc` never leaves that thread
// (tasks are spawned on the same runtime, which never moves them).
unsafe impl Send for SendRc {}

impl NetHandle {
    fn net(&self) -> Rc<Net> {
        self.0.lock().expect("net lock").0.clone()
    }
}

struct SimPeers {
    from: u64,
    net: NetHandle,
}

impl PeerClients for SimPeers {
    fn client(&self, id: NodeId, _peer: &RaftPeer) -> Option<Arc<dyn NodeClient>> {
        Some(Arc::new(SimClient {
            from: self.from,
            to: id.0,
            net: self.net.clone(),
        }))
    }
}

struct SimClient {
    from: u64,
    to: u64,
    net: NetHandle,
}

fn caller_from(from: u64, deadline: Instant) -> Caller {
    Caller {
        peer: PeerIdentity {
            name: format!("node-{from}"),
            role: Role::Node,
        },
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        epoch: 0,
        deadline,
    }
}

impl NodeClient for SimClient {
    fn node(&self) -> NodeId {
        NodeId(self.to)
    }

    fn call_until(&self, request: Request, deadline: Option<Instant>) -> RpcFuture<Response> {
        let (from, to, net) = (self.from, self.to, self.net.clone());
        let deadline = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(5));
        let future = async move {
            let net = net.net();
            let lost = |net: &Net, a: u64, b: u64| {
                let links = net.links.borrow().clone();
                links.cut.contains(&(a, b)) || net.dice.borrow_mut().chance(links.drop_percent)
            };
            let delay = |net: &Net| {
                let max = net.links.borrow().delay_max_ms;
                net.dice.borrow_mut().millis(0, max)
            };
            if lost(&net, from, to) {
                tokio::time::sleep_until(deadline).await;
                return Err(RpcError::Timeout(NodeId(to)));
            }
            tokio::time::sleep(delay(&net)).await;
            let Some(member) = net.members.borrow().get(&to).cloned() else {
                return Err(RpcError::Unreachable(NodeId(to), "crashed".into()));
            };
            let caller = caller_from(from, deadline);
            let response = match request {
                Request::Raft(payload) => {
                    let reply = member.handle_raft(&payload, &caller).await;
                    Response::Raft(scoregrid_wire::codec::encode(&reply).expect("encodes"))
                }
                Request::Cluster(payload) => {
                    let reply = member.handle_cluster(&payload, &caller).await;
                    Response::Cluster(scoregrid_wire::codec::encode(&reply).expect("encodes"))
                }
                _ => Response::Error(NodeError::BadRequest("not in the simulation".into())),
            };
            if lost(&net, to, from) {
                tokio::time::sleep_until(deadline).await;
                return Err(RpcError::Timeout(NodeId(to)));
            }
            tokio::time::sleep(delay(&net)).await;
            Ok(response)
        };
        // SAFETY of `Send`: see `SendRc`; the future runs on the simulation thread only.
        Box::pin(AssertSend(Box::pin(future)))
    }
}

struct AssertSend<F>(std::pin::Pin<Box<F>>);
// SAFETY: as for `SendRc`: polled only on the simulation's single thread.
unsafe impl<F> Send for AssertSend<F> {}
impl<F: std::future::Future> std::future::Future for AssertSend<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.0.as_mut().poll(cx)
    }
}

// ---- the cluster ----

fn peer(id: u64) -> RaftPeer {
    RaftPeer {
        address: format!("10.0.0.{id}:7000"),
        name: format!("node-{id}"),
    }
}

fn settings(id: u64, members: u64) -> MemberSettings {
    let voters: BTreeMap<u64, RaftPeer> = (1..=members).map(|i| (i, peer(i))).collect();
    let nodes = (1..=members)
        .map(|i| NodeInfo {
            id: NodeId(i),
            address: peer(i).address,
            name: peer(i).name,
            state: NodeState::Up,
            voter: true,
            admin: None,
        })
        .collect();
    MemberSettings {
        id: NodeId(id),
        voters,
        bootstrap: MapCommand::Bootstrap {
            nodes,
            partitions: PARTITIONS,
            replication_factor: 2,
            virtual_nodes: 8,
            versions_retained: 1,
        },
        auto_initialize: true,
        heartbeat: HEARTBEAT,
        election_timeout_min: ELECTION_MIN,
        election_timeout_max: ELECTION_MAX,
        down_after: Duration::from_millis(700),
        up_after: Duration::from_millis(400),
        client_timeout: Duration::from_millis(1500),
        stale_after: Duration::from_millis(700),
        snapshot_logs: 20,
    }
}

struct Cluster {
    members: u64,
    root: PathBuf,
    net: NetHandle,
}

impl Cluster {
    fn net(&self) -> Rc<Net> {
        self.net.net()
    }

    async fn start(&self, id: u64) {
        let peers = Arc::new(SimPeers {
            from: id,
            net: self.net.clone(),
        });
        let member = Member::start(
            settings(id, self.members),
            &self.root.join(format!("n{id}")),
            peers,
        )
        .await
        .expect("member starts");
        self.net().members.borrow_mut().insert(id, member);
    }

    async fn crash(&self, id: u64) {
        let member = self.net().members.borrow_mut().remove(&id);
        if let Some(member) = member {
            member.shutdown().await;
        }
    }

    fn running(&self) -> Vec<(u64, Arc<Member>)> {
        self.net()
            .members
            .borrow()
            .iter()
            .map(|(id, m)| (*id, m.clone()))
            .collect()
    }
}

// ---- the history and its invariants ----

#[derive(Default)]
struct History {
    violations: Vec<String>,
    leader_of_term: BTreeMap<u64, u64>,
    map_of_epoch: BTreeMap<Epoch, ClusterMap>,
    last_epoch: BTreeMap<u64, Epoch>,
    acknowledged: Vec<(Epoch, MapCommand)>,
    events: Vec<String>,
}

impl History {
    fn violate(&mut self, at: Duration, what: String) {
        if self.violations.len() < 20 {
            self.violations
                .push(format!("t={:.3}s {what}", at.as_secs_f64()));
        }
    }

    fn observe(&mut self, at: Duration, cluster: &Cluster) {
        for (id, member) in cluster.running() {
            let metrics = member.metrics();
            if metrics.state == openraft::ServerState::Leader {
                let term = metrics.current_term;
                match self.leader_of_term.get(&term) {
                    Some(&other) if other != id => self.violate(
                        at,
                        format!("one-leader-per-term: n{other} and n{id} both lead term {term}"),
                    ),
                    Some(_) => {}
                    None => {
                        self.leader_of_term.insert(term, id);
                        self.events.push(format!(
                            "t={:.3}s n{id} leads term {term}",
                            at.as_secs_f64()
                        ));
                    }
                }
            }
            if let Some(map) = member.map() {
                match self.map_of_epoch.get(&map.epoch) {
                    Some(seen) if *seen != *map => self.violate(
                        at,
                        format!(
                            "one-map-per-epoch: n{id} holds another map at epoch {}",
                            map.epoch
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        self.map_of_epoch.insert(map.epoch, ClusterMap::clone(&map));
                    }
                }
                if let Some(&before) = self.last_epoch.get(&id)
                    && map.epoch < before
                {
                    self.violate(
                        at,
                        format!(
                            "epochs-never-go-back: n{id} went from {before} to {}",
                            map.epoch
                        ),
                    );
                }
                self.last_epoch.insert(id, map.epoch);
            }
        }
    }

    /// `acknowledged-changes-stay` for what is known now.
    fn check_acknowledged(&mut self, at: Duration) {
        let acknowledged = self.acknowledged.clone();
        for (epoch, command) in acknowledged {
            let Some(map) = self.map_of_epoch.get(&epoch) else {
                continue;
            };
            // The map of epoch E is the one the command produced: it shows exactly that change.
            let holds = match &command {
                MapCommand::RegisterModel { version, .. } => map
                    .model(version)
                    .is_some_and(|m| m.state == scoregrid_raft::ModelState::Staging),
                MapCommand::ReportStaged {
                    version,
                    node,
                    partitions,
                } => map.model(version).is_some_and(|m| {
                    m.state == scoregrid_raft::ModelState::Staging
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
}

/// A clean partition: two sides with no link between them, one of them holding a quorum.
#[derive(Clone, Debug)]
struct Split {
    minority: BTreeSet<u64>,
}

/// The members `member` can reach now: its side of a clean split, else everyone.
fn side_of(split: Option<&Split>, member: u64, members: u64) -> BTreeSet<u64> {
    match split {
        Some(s) if s.minority.contains(&member) => s.minority.clone(),
        Some(s) => (1..=members).filter(|n| !s.minority.contains(n)).collect(),
        None => (1..=members).collect(),
    }
}

struct Nemesis {
    split: Option<Split>,
}

fn cut_between(a: &BTreeSet<u64>, b: &BTreeSet<u64>) -> BTreeSet<(u64, u64)> {
    let mut cut = BTreeSet::new();
    for &x in a {
        for &y in b {
            cut.insert((x, y));
            cut.insert((y, x));
        }
    }
    cut
}

fn current_leader(cluster: &Cluster) -> Option<u64> {
    cluster
        .running()
        .into_iter()
        .find(|(_, m)| m.metrics().state == openraft::ServerState::Leader)
        .map(|(id, _)| id)
}

impl Nemesis {
    /// Applies the next fault of the schedule; returns its description.
    async fn strike(&mut self, cluster: &Cluster, dice: &mut Dice) -> String {
        let all: BTreeSet<u64> = (1..=cluster.members).collect();
        let net = cluster.net();
        let mut links = Links::healthy();
        self.split = None;
        let fault = dice.below(9);
        let text = match fault {
            0 => "heal".to_owned(),
            1 | 2 => {
                // Random halves: the smaller side is a minority.
                let size = 1 + dice.below(cluster.members / 2);
                let mut minority = BTreeSet::new();
                while (minority.len() as u64) < size {
                    minority.insert(1 + dice.below(cluster.members));
                }
                let majority: BTreeSet<u64> = all.difference(&minority).copied().collect();
                links.cut = cut_between(&minority, &majority);
                self.split = Some(Split {
                    minority: minority.clone(),
                });
                format!("halves: {minority:?} | {majority:?}")
            }
            3 => {
                let leader = current_leader(cluster).unwrap_or(1);
                let minority = BTreeSet::from([leader]);
                let majority: BTreeSet<u64> = all.difference(&minority).copied().collect();
                links.cut = cut_between(&minority, &majority);
                self.split = Some(Split { minority });
                format!("isolated leader n{leader}")
            }
            4 => {
                // Bridge: two sides that cannot talk, and one node that talks to both.
                let bridge = 1 + dice.below(cluster.members);
                let rest: Vec<u64> = all.iter().copied().filter(|&n| n != bridge).collect();
                let (left, right) = rest.split_at(rest.len() / 2);
                let left: BTreeSet<u64> = left.iter().copied().collect();
                let right: BTreeSet<u64> = right.iter().copied().collect();
                links.cut = cut_between(&left, &right);
                format!("bridge n{bridge} between {left:?} and {right:?}")
            }
            5 => {
                // Asymmetric: the leader's messages go out, nothing comes back to it.
                let leader = current_leader(cluster).unwrap_or(1);
                for &n in &all {
                    if n != leader {
                        links.cut.insert((n, leader));
                    }
                }
                format!("one-way: nothing reaches leader n{leader}")
            }
            6 => {
                links.drop_percent = 5 + dice.below(25);
                links.delay_max_ms = 20 + dice.below(150);
                format!(
                    "lossy: {}% drops, delays up to {} ms",
                    links.drop_percent, links.delay_max_ms
                )
            }
            7 => {
                let victim = 1 + dice.below(cluster.members);
                cluster.crash(victim).await;
                format!("crash n{victim}")
            }
            _ => {
                let mut restarted = Vec::new();
                for id in 1..=cluster.members {
                    if !net.members.borrow().contains_key(&id) {
                        cluster.start(id).await;
                        restarted.push(id);
                    }
                }
                format!("restart {restarted:?}")
            }
        };
        *net.links.borrow_mut() = links;
        text
    }
}

/// One pending client write and the partition state while it was pending.
struct Pending {
    member: u64,
    asked_at: Duration,
    /// Every member the asked one could reach while the write was pending.
    reach: BTreeSet<u64>,
}

async fn propose(member: Arc<Member>, command: MapCommand) -> Result<MapResponse, ClusterError> {
    let caller = Caller {
        peer: PeerIdentity {
            name: "operator".into(),
            role: Role::Operator,
        },
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        epoch: 0,
        deadline: Instant::now() + Duration::from_secs(3),
    };
    let request = ClusterRequest::Propose {
        command,
        origin: Role::Operator,
        forwarded: false,
    };
    let payload = scoregrid_wire::codec::encode(&request).expect("encodes");
    match member.handle_cluster(&payload, &caller).await {
        ClusterReply::Proposed(response) => Ok(response),
        ClusterReply::Error(error) => Err(error),
        other => Err(ClusterError::Refused(format!("unexpected {other:?}"))),
    }
}

/// Runs one seed; returns the violations (empty when every invariant held) and the events.
fn run(seed: u64, members: u64) -> (Vec<String>, Vec<String>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    seed_thread_rng(seed);
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let root = base.join(format!(
        "scoregrid-sim-{}-{seed}-{members}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    let result = runtime.block_on(simulate(seed, members, root.clone()));
    drop(runtime);
    let _ = std::fs::remove_dir_all(&root);
    result
}

async fn simulate(seed: u64, members: u64, root: PathBuf) -> (Vec<String>, Vec<String>) {
    let net = Rc::new(Net {
        dice: RefCell::new(Dice(seed ^ 0x5eed)),
        links: RefCell::new(Links::healthy()),
        members: RefCell::new(BTreeMap::new()),
    });
    let cluster = Cluster {
        members,
        root,
        net: NetHandle(Arc::new(Mutex::new(SendRc(net.clone())))),
    };
    let mut dice = Dice(seed);
    // Real processes never start in the same microsecond: stagger the starts, so that the
    // members' timers do not tick in lockstep.
    for id in 1..=members {
        cluster.start(id).await;
        tokio::time::sleep(dice.millis(0, 150)).await;
    }
    let started = Instant::now();
    let history = Rc::new(RefCell::new(History::default()));
    let mut nemesis = Nemesis { split: None };
    let mut next_fault = started + Duration::from_secs(2);
    let mut next_write = started + Duration::from_millis(300);
    let mut writes = 0u64;
    let pending: Rc<RefCell<Vec<Rc<RefCell<Pending>>>>> = Rc::default();
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            while started.elapsed() < FAULT_PHASE {
                tokio::time::sleep(STEP).await;
                let now = Instant::now();
                let at = started.elapsed();
                history.borrow_mut().observe(at, &cluster);
                if now >= next_fault {
                    let text = nemesis.strike(&cluster, &mut dice).await;
                    history
                        .borrow_mut()
                        .events
                        .push(format!("t={:.3}s fault: {text}", at.as_secs_f64()));
                    next_fault = now + dice.millis(400, 2000);
                    // A write pending across a change of the network could reach more members.
                    for p in pending.borrow().iter() {
                        let mut p = p.borrow_mut();
                        let side = side_of(nemesis.split.as_ref(), p.member, members);
                        p.reach.extend(side);
                    }
                }
                if now >= next_write {
                    next_write = now + dice.millis(50, 400);
                    let running = cluster.running();
                    if running.is_empty() {
                        continue;
                    }
                    let (id, member) = running[dice.below(running.len() as u64) as usize].clone();
                    writes += 1;
                    // A few version names, so that registrations, staging reports, flips
                    // and drops meet the same versions.
                    let k = dice.below(4) as u32;
                    let version = ModelVersion::new(&format!("v{k}")).expect("name");
                    let command = match dice.below(5) {
                        0 => MapCommand::Maintenance {
                            id: NodeId(1 + dice.below(members)),
                            on: dice.chance(50),
                        },
                        1 => MapCommand::RegisterModel {
                            version,
                            digest: k,
                            checksums: vec![k; PARTITIONS as usize],
                        },
                        2 => {
                            let node = NodeId(1 + dice.below(members));
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
                    };
                    let entry = Rc::new(RefCell::new(Pending {
                        member: id,
                        asked_at: at,
                        reach: side_of(nemesis.split.as_ref(), id, members),
                    }));
                    pending.borrow_mut().push(entry.clone());
                    let history = history.clone();
                    let pending = pending.clone();
                    tokio::task::spawn_local(async move {
                        let outcome = propose(member, command.clone()).await;
                        let at = started.elapsed();
                        pending.borrow_mut().retain(|p| !Rc::ptr_eq(p, &entry));
                        let entry = entry.borrow();
                        if let Ok(MapResponse::Applied { epoch }) = outcome {
                            let mut history = history.borrow_mut();
                            if (entry.reach.len() as u64) <= members / 2 {
                                history.violate(at, format!(
                                    "minority-never-commits: {command:?} asked of n{} at t={:.3}s, which could reach only {:?}, was acknowledged at epoch {epoch}",
                                    entry.member,
                                    entry.asked_at.as_secs_f64(),
                                    entry.reach
                                ));
                            }
                            history.acknowledged.push((epoch, command));
                        }
                    });
                }
            }
            // Final heal: every member running, every link whole; writes still pending may now
            // commit through the majority.
            *net.links.borrow_mut() = Links::healthy();
            for p in pending.borrow().iter() {
                p.borrow_mut().reach.extend(1..=members);
            }
            for id in 1..=members {
                if !net.members.borrow().contains_key(&id) {
                    cluster.start(id).await;
                }
            }
            let healed = Instant::now();
            history.borrow_mut().events.push(format!(
                "t={:.3}s final heal",
                started.elapsed().as_secs_f64()
            ));
            let window = ELECTION_MAX * 3;
            let mut converged = false;
            while healed.elapsed() <= window {
                tokio::time::sleep(STEP).await;
                history.borrow_mut().observe(started.elapsed(), &cluster);
                let running = cluster.running();
                let views: Vec<MapView> = running.iter().map(|(_, m)| m.view()).collect();
                let leaders: BTreeSet<Option<NodeId>> = views.iter().map(|v| v.leader).collect();
                let epochs: BTreeSet<Epoch> = views.iter().map(MapView::epoch).collect();
                let one_leader = leaders.len() == 1
                    && leaders.iter().next().copied().flatten().is_some_and(|l| {
                        running.iter().any(|(id, m)| {
                            *id == l.0 && m.metrics().state == openraft::ServerState::Leader
                        })
                    });
                if one_leader && epochs.len() == 1 && epochs.iter().all(|e| *e > Epoch(0)) {
                    converged = true;
                    break;
                }
            }
            let at = started.elapsed();
            let mut history = history.borrow_mut();
            if !converged {
                let views: Vec<String> = cluster
                    .running()
                    .iter()
                    .map(|(id, m)| {
                        let v = m.view();
                        format!("n{id}: {:?} term {} leader {:?} epoch {}", m.metrics().state, v.term, v.leader, v.epoch())
                    })
                    .collect();
                history.violate(
                    at,
                    format!(
                        "converges-after-heal: no single leader and map within {} ms: {}",
                        window.as_millis(),
                        views.join("; ")
                    ),
                );
            }
            history.check_acknowledged(at);
            let summary = format!(
                "t={:.3}s end: {writes} writes, {} acknowledged, {} terms with a leader, highest epoch {}",
                at.as_secs_f64(),
                history.acknowledged.len(),
                history.leader_of_term.len(),
                history.map_of_epoch.keys().next_back().copied().unwrap_or_default()
            );
            history.events.push(summary);
            let highest_acknowledged = history.acknowledged.iter().map(|(e, _)| *e).max();
            if let Some(highest) = highest_acknowledged {
                for (id, member) in cluster.running() {
                    let epoch = member.map().map_or(Epoch(0), |m| m.epoch);
                    if converged && epoch < highest {
                        history.violate(at, format!(
                            "acknowledged-changes-stay: n{id} ends at epoch {epoch}, below the acknowledged {highest}"
                        ));
                    }
                }
            }
        })
        .await;
    for (id, _) in cluster.running() {
        cluster.crash(id).await;
    }
    let mut history = history.borrow_mut();
    (
        std::mem::take(&mut history.violations),
        std::mem::take(&mut history.events),
    )
}

fn sweep(members: u64, seeds: std::ops::Range<u64>) {
    let count: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(seeds.end - seeds.start);
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    for seed in seeds.start..seeds.start + count {
        let (violations, events) = run(seed, members);
        if !violations.is_empty() {
            failures.push(format!(
                "seed {seed} ({members} members): {}\n  replay: SIM_SEED={seed} SIM_MEMBERS={members} cargo test -p scoregrid-raft --test simulation replay -- --nocapture\n  events: {}",
                violations.join("\n    "),
                events.iter().rev().take(12).rev().cloned().collect::<Vec<_>>().join("\n    ")
            ));
        }
    }
    eprintln!(
        "{count} seeds of {members} members in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn three_members_first_half_of_the_seeds() {
    sweep(3, 0..SEEDS_PER_SWEEP);
}

#[test]
fn three_members_second_half_of_the_seeds() {
    sweep(3, SEEDS_PER_SWEEP..2 * SEEDS_PER_SWEEP);
}

#[test]
fn five_members_first_half_of_the_seeds() {
    sweep(5, 0..SEEDS_PER_SWEEP);
}

#[test]
fn five_members_second_half_of_the_seeds() {
    sweep(5, SEEDS_PER_SWEEP..2 * SEEDS_PER_SWEEP);
}

/// Log timestamps in the simulation's virtual time (tokio's paused clock).
struct VirtualTime;

impl tracing_subscriber::fmt::time::FormatTime for VirtualTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        let now = tokio::time::Instant::now().into_std();
        let start = *START.get_or_init(|| now);
        write!(
            w,
            "t={:.3}s",
            now.saturating_duration_since(start).as_secs_f64()
        )
    }
}

/// Replays one seed with its events printed: `SIM_SEED=.. SIM_MEMBERS=..` (and `SIM_LOG=info`
/// or any tracing filter for the members' logs).
#[test]
fn replay() {
    let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) else {
        return;
    };
    let members = std::env::var("SIM_MEMBERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    if let Ok(filter) = std::env::var("SIM_LOG") {
        use tracing_subscriber::prelude::*;
        let targets: tracing_subscriber::filter::Targets = filter.parse().expect("SIM_LOG filter");
        let _ = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_timer(VirtualTime)
                    .with_filter(targets),
            )
            .try_init();
    }
    let (violations, events) = run(seed, members);
    for event in &events {
        eprintln!("{event}");
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// Proves the simulation is deterministic: the same seed gives the same elections, faults and
/// acknowledged writes, event for event.
#[test]
fn a_seed_names_one_run() {
    let (_, first) = run(7, 3);
    let (_, second) = run(7, 3);
    assert_eq!(first, second);
}
