//! The membership the gossip driver publishes on a watch channel, as a neutral snapshot: what
//! the KV ring, DNS answers, generators, the group history and the members file read, without
//! depending on the gossip driver itself.

use std::net::SocketAddr;
use std::sync::Arc;

use opsbro_checks::CheckState;
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
    /// Why it is in maintenance (`None`: it is not).
    pub maintenance: Option<String>,
    /// Its services, as it gossips them.
    pub services: Vec<opsbro_gossip::ServiceRecord>,
}

/// The word for a health state (`passing`, `warning`, `pending`, `critical`).
pub fn health_word(state: CheckState) -> &'static str {
    match state {
        CheckState::Ok => "passing",
        CheckState::Warning => "warning",
        CheckState::Pending => "pending",
        CheckState::Critical | CheckState::Unknown => "critical",
    }
}

/// The worst of `states` for a service's health (see the module docs); `None` is a check that
/// is not active on this node.
pub fn health(states: impl IntoIterator<Item = Option<CheckState>>) -> CheckState {
    let rank = |s: CheckState| match s {
        CheckState::Ok => 0,
        CheckState::Warning => 1,
        CheckState::Pending => 2,
        CheckState::Unknown | CheckState::Critical => 3,
    };
    states
        .into_iter()
        .map(|s| match s {
            Some(CheckState::Unknown) | None => CheckState::Critical,
            Some(s) => s,
        })
        .max_by_key(|s| rank(*s))
        .unwrap_or(CheckState::Ok)
}
