//! The membership the gossip driver publishes on a watch channel, as a neutral snapshot: what
//! the KV ring, DNS answers, generators, the group history and the members file read, without
//! depending on the gossip driver itself.

use std::net::SocketAddr;
use std::sync::Arc;

use opsbro_gossip::MemberState;
use opsbro_types::NodeUuid;

/// The live membership (this node included), replaced as a whole on every change.
pub type Membership = tokio::sync::watch::Receiver<Arc<Vec<Peer>>>;

/// A member as the KV store, DNS, the generators and the members file see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Identity.
    pub uuid: NodeUuid,
    /// Name.
    pub name: String,
    /// Cluster address.
    pub addr: SocketAddr,
    /// Groups.
    pub groups: Vec<String>,
    /// State.
    pub state: MemberState,
    /// Zone.
    pub zone: String,
    /// One of its checks is CRITICAL (as it gossips them).
    pub critical: bool,
}
