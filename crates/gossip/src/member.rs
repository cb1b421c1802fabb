//! Members: the node record that travels on the wire and the states a member can be in.

use std::fmt;
use std::net::SocketAddr;

use opsbro_types::NodeUuid;

/// Liveness of a member as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum MemberState {
    /// Answers probes (or was last heard of as alive).
    Alive = 0,
    /// Missed a probe; dead unless it refutes before the suspicion timeout.
    Suspect = 1,
    /// Declared dead (tombstone until reaped).
    Dead = 2,
    /// Left on purpose (tombstone until reaped).
    Left = 3,
}

impl MemberState {
    /// Decode the wire byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Alive,
            1 => Self::Suspect,
            2 => Self::Dead,
            3 => Self::Left,
            _ => return None,
        })
    }

    /// The lowercase word used in the API and CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Dead => "dead",
            Self::Left => "left",
        }
    }

    /// Alive or suspect: still probed and gossiped to.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Alive | Self::Suspect)
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The largest incarnation a node may have (2^48). A node bumps its incarnation a few times per
/// change or refutation, so this is never reached; numbers above it are refused on the wire, and
/// the core never moves an incarnation further than [`MAX_INCARNATION_STEP`] at once, so no
/// packet can push a counter to its limit (where it would wrap, or pin a record for good).
pub const MAX_INCARNATION: u64 = 1 << 48;

/// How far above the known incarnation a message may be and still be believed. A node persists
/// its incarnation and continues above it after a restart, so honest news is at most a few
/// steps ahead of what its peers know; a jump further than this is refused and counted.
pub const MAX_INCARNATION_STEP: u64 = 1 << 20;

/// Everything the cluster knows about a node (SPEC §5), as gossiped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Stable identity.
    pub uuid: NodeUuid,
    /// Unique name.
    pub name: String,
    /// Human-friendly name.
    pub display_name: String,
    /// Gossip address (advertised address and port).
    pub addr: SocketAddr,
    /// Zone.
    pub zone: String,
    /// Groups (static ∪ detected).
    pub groups: Vec<String>,
    /// Proxy node flag.
    pub is_proxy: bool,
    /// Incarnation: bumped by the node itself to refute suspicion or announce a change.
    pub incarnation: u64,
    /// State as seen by the sender.
    pub state: MemberState,
    /// Agent version.
    pub version: String,
    /// Summary of the node's active checks (name and state), sorted by name.
    pub checks: Vec<CheckSummary>,
    /// The services the node runs, sorted by name.
    pub services: Vec<ServiceRecord>,
    /// Why the whole node is in maintenance (left out of DNS, the catalog and `ok_nodes`);
    /// `None` when it is not.
    pub maintenance: Option<String>,
}

/// A service a node runs, as gossiped (SPEC: services in the node record).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceRecord {
    /// Service name (a DNS label: `web`).
    pub name: String,
    /// Port; 0 when the service declares none.
    pub port: u16,
    /// Address when it is not the node's (`None`: the node's address).
    pub address: Option<std::net::IpAddr>,
    /// Tags (DNS labels), sorted.
    pub tags: Vec<String>,
    /// Free-form metadata, sorted by key.
    pub meta: Vec<(String, String)>,
    /// Health: the worst confirmed state of its checks (`opsbro_checks::CheckState` wire
    /// byte; the gossip layer does not interpret it).
    pub state: u8,
    /// Why the service is in maintenance, `None` when it is not.
    pub maintenance: Option<String>,
}

/// One check of a node as gossiped: its name and state (`opsbro_checks::CheckState` wire byte;
/// the gossip layer does not interpret it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CheckSummary {
    /// Check name (`<pack>/<file>`).
    pub name: String,
    /// State byte.
    pub state: u8,
}

/// opsbro's rule for `detect --auto-join`: join a proxy node if one answered (the last by uuid),
/// else the first other node (by uuid, so every asker picks the same one).
pub fn choose_join_target(found: &[NodeRecord]) -> Option<&NodeRecord> {
    let mut proxies: Vec<&NodeRecord> = found.iter().filter(|r| r.is_proxy).collect();
    proxies.sort_by_key(|r| r.uuid);
    if let Some(last) = proxies.last() {
        return Some(last);
    }
    found.iter().min_by_key(|r| r.uuid)
}
