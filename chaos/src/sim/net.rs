//! The seeded network of the simulation: every call between two endpoints (members, routers)
//! passes here, where the run's [`Links`] decide whether it is lost and how long it takes.
//! Everything lives on the one simulation thread (tokio's current-thread runtime with the
//! clock paused), so the same seed gives the same deliveries in the same order.

use scoregrid_raft::RaftPeer;
use scoregrid_raft::member::Member;
use scoregrid_raft::peers::PeerClients;
use scoregrid_shard::hashing::mix64;
use scoregrid_wire::{
    Caller, NodeClient, NodeError, NodeId, PeerIdentity, Request, Response, Role, RpcError,
    RpcFuture,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Endpoint ids from this one up are routers (members are 1..=5).
pub const FIRST_ROUTER: u64 = 101;

/// A seeded random source for the network, the nemesis and the clients.
pub struct Dice(pub u64);

impl Dice {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high.saturating_sub(low) + 1))
    }
}

/// Which directed links carry messages, and how badly.
#[derive(Clone, Debug)]
pub struct Links {
    /// `cut.contains(&(a, b))`: nothing from a reaches b.
    pub cut: BTreeSet<(u64, u64)>,
    pub drop_percent: u64,
    pub delay_max_ms: u64,
}

impl Links {
    pub fn healthy() -> Self {
        Self {
            cut: BTreeSet::new(),
            drop_percent: 0,
            delay_max_ms: 5,
        }
    }

    /// Whether a and b can talk both ways (ignoring random drops).
    pub fn connected(&self, a: u64, b: u64) -> bool {
        !self.cut.contains(&(a, b)) && !self.cut.contains(&(b, a))
    }
}

/// The network and the members running on it.
pub struct Net {
    pub dice: RefCell<Dice>,
    pub links: RefCell<Links>,
    pub members: RefCell<BTreeMap<u64, Arc<Member>>>,
}

impl Net {
    pub fn new(seed: u64) -> Self {
        Self {
            dice: RefCell::new(Dice(seed ^ 0x5eed)),
            links: RefCell::new(Links::healthy()),
            members: RefCell::new(BTreeMap::new()),
        }
    }

    fn lost(&self, from: u64, to: u64) -> bool {
        let links = self.links.borrow().clone();
        links.cut.contains(&(from, to)) || self.dice.borrow_mut().chance(links.drop_percent)
    }

    fn delay(&self) -> Duration {
        let max = self.links.borrow().delay_max_ms;
        self.dice.borrow_mut().millis(0, max)
    }
}

/// `Net` lives on the one simulation thread; members need `Send + Sync` clients, so the
/// handle carries it through a mutex that is only ever taken on that thread.
#[derive(Clone)]
pub struct NetHandle(Arc<Mutex<SendRc>>);

struct SendRc(Rc<Net>);
// SAFETY: the simulation runs on one current-thread runtime; the `Rc` never leaves that thread
// (tasks are spawned on the same runtime, which never moves them).
unsafe impl Send for SendRc {}

impl NetHandle {
    pub fn new(net: Rc<Net>) -> Self {
        Self(Arc::new(Mutex::new(SendRc(net))))
    }

    pub fn net(&self) -> Rc<Net> {
        // Only the simulation thread takes the lock, one call at a time: it cannot be poisoned
        // by another thread.
        match self.0.lock() {
            Ok(guard) => guard.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// A client from endpoint `from` to member `to`.
    pub fn client(&self, from: u64, to: u64) -> Arc<dyn NodeClient> {
        Arc::new(SimClient {
            from,
            to,
            net: self.clone(),
        })
    }
}

/// The Raft peers of member `from`: clients over the seeded network.
pub struct SimPeers {
    pub from: u64,
    pub net: NetHandle,
}

impl PeerClients for SimPeers {
    fn client(&self, id: NodeId, _peer: &RaftPeer) -> Option<Arc<dyn NodeClient>> {
        Some(self.net.client(self.from, id.0))
    }
}

struct SimClient {
    from: u64,
    to: u64,
    net: NetHandle,
}

/// Who a call comes from: a member (`node-N`, role node) or a router (`router-N`).
fn caller_from(from: u64, deadline: Instant) -> Caller {
    let (name, role) = if from >= FIRST_ROUTER {
        (format!("router-{from}"), Role::Router)
    } else {
        (format!("node-{from}"), Role::Node)
    };
    Caller {
        peer: PeerIdentity { name, role },
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
            if net.lost(from, to) {
                tokio::time::sleep_until(deadline).await;
                return Err(RpcError::Timeout(NodeId(to)));
            }
            tokio::time::sleep(net.delay()).await;
            let Some(member) = net.members.borrow().get(&to).cloned() else {
                return Err(RpcError::Unreachable(NodeId(to), "crashed".into()));
            };
            let caller = caller_from(from, deadline);
            let encoded = match request {
                Request::Raft(payload) => {
                    scoregrid_wire::codec::encode(&member.handle_raft(&payload, &caller).await)
                        .map(Response::Raft)
                }
                Request::Cluster(payload) => {
                    scoregrid_wire::codec::encode(&member.handle_cluster(&payload, &caller).await)
                        .map(Response::Cluster)
                }
                _ => Ok(Response::Error(NodeError::BadRequest(
                    "not in the simulation".into(),
                ))),
            };
            let response = encoded.map_err(|e| RpcError::Transport {
                node: NodeId(to),
                reason: e.to_string(),
            })?;
            // A member that crashed (or was restarted) while it handled the call never answers.
            let same = net
                .members
                .borrow()
                .get(&to)
                .is_some_and(|now| Arc::ptr_eq(now, &member));
            if !same {
                return Err(RpcError::Unreachable(NodeId(to), "crashed".into()));
            }
            if net.lost(to, from) {
                tokio::time::sleep_until(deadline).await;
                return Err(RpcError::Timeout(NodeId(to)));
            }
            tokio::time::sleep(net.delay()).await;
            Ok(response)
        };
        Box::pin(AssertSend(Box::pin(future)))
    }
}

/// The calls' futures hold `Rc`s: they are `Send` only because the simulation polls every
/// future on its one thread.
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
