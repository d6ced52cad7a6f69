//! How a member reaches the others: [`PeerClients`] hands out one [`NodeClient`] per peer, by
//! id and address. [`QuicPeers`] is the real one (QUIC over the node's own endpoint, a client
//! kept per peer and replaced when the peer's address changes); the simulation tests put a
//! fault-injecting network behind the same trait, so Raft, forwarding and the failure detector
//! run the same code in both.

use crate::types::RaftPeer;
use scoregrid_wire::{ClientEndpoint, NodeClient, NodeId, QuicClient};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub trait PeerClients: Send + Sync + 'static {
    /// A client to member `id` at `peer`'s address, or `None` when it cannot be reached at all
    /// (an address that does not parse).
    fn client(&self, id: NodeId, peer: &RaftPeer) -> Option<Arc<dyn NodeClient>>;
}

/// A client made for a member, and the address and name it was made for.
type KnownClient = (RaftPeer, Arc<dyn NodeClient>);

/// QUIC clients to the members, on one endpoint.
pub struct QuicPeers {
    endpoint: ClientEndpoint,
    clients: Mutex<HashMap<NodeId, KnownClient>>,
}

impl QuicPeers {
    pub fn new(endpoint: ClientEndpoint) -> Self {
        Self {
            endpoint,
            clients: Mutex::new(HashMap::new()),
        }
    }
}

impl PeerClients for QuicPeers {
    fn client(&self, id: NodeId, peer: &RaftPeer) -> Option<Arc<dyn NodeClient>> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((known, client)) = clients.get(&id)
            && known == peer
        {
            return Some(client.clone());
        }
        let addr: SocketAddr = match peer.address.parse() {
            Ok(addr) => addr,
            Err(error) => {
                tracing::warn!(node = %id, address = %peer.address, %error, "member address does not parse");
                return None;
            }
        };
        match QuicClient::with_endpoint(&self.endpoint, id, addr, peer.name.clone()) {
            Ok(client) => {
                let client: Arc<dyn NodeClient> = Arc::new(client);
                clients.insert(id, (peer.clone(), client.clone()));
                Some(client)
            }
            Err(error) => {
                tracing::warn!(node = %id, name = %peer.name, %error, "cannot make a client to a member");
                None
            }
        }
    }
}
