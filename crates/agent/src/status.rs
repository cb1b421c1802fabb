//! Subsystem states and the overall agent state derived from them.
//!
//! Each subsystem registers itself as `starting` and reports `ok`, `error`, ... as it goes. The
//! agent is `initializing` until no subsystem is `starting` any more, then `ok`; once a shutdown
//! starts it is `stopping`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use opsbro_api::SubsystemStatus;
use opsbro_types::{AgentState, SubsystemState};
use tokio::sync::watch;

/// Shared registry of subsystem states (cheap to clone).
#[derive(Clone, Debug)]
pub struct Status {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    subsystems: Mutex<BTreeMap<String, SubsystemStatus>>,
    state: watch::Sender<AgentState>,
}

impl Default for Status {
    fn default() -> Self {
        Self::new()
    }
}

impl Status {
    /// An empty registry; the agent is `initializing`.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                subsystems: Mutex::new(BTreeMap::new()),
                state: watch::Sender::new(AgentState::Initializing),
            }),
        }
    }

    /// Record the state of `name`, with an optional detail.
    pub fn set(&self, name: &str, state: SubsystemState, message: Option<String>) {
        let mut map = self
            .inner
            .subsystems
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.insert(name.to_owned(), SubsystemStatus { state, message });
        let starting = map.values().any(|s| s.state == SubsystemState::Starting);
        drop(map);
        self.inner.state.send_if_modified(|current| {
            let next = match *current {
                AgentState::Stopping => AgentState::Stopping,
                _ if starting => AgentState::Initializing,
                _ => AgentState::Ok,
            };
            let changed = next != *current;
            *current = next;
            changed
        });
    }

    /// Mark the agent as shutting down.
    pub fn set_stopping(&self) {
        self.inner.state.send_replace(AgentState::Stopping);
    }

    /// The overall state now.
    pub fn agent_state(&self) -> AgentState {
        *self.inner.state.borrow()
    }

    /// Watch the overall state (used to log the move to `ok`).
    pub fn subscribe(&self) -> watch::Receiver<AgentState> {
        self.inner.state.subscribe()
    }

    /// A copy of every subsystem's status.
    pub fn subsystems(&self) -> BTreeMap<String, SubsystemStatus> {
        self.inner
            .subsystems
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_once_nothing_is_starting() {
        let status = Status::new();
        assert_eq!(status.agent_state(), AgentState::Initializing);
        status.set("api", SubsystemState::Starting, None);
        status.set("gossip", SubsystemState::Starting, None);
        status.set("api", SubsystemState::Ok, Some("127.0.0.1:6770".into()));
        assert_eq!(status.agent_state(), AgentState::Initializing);
        status.set("gossip", SubsystemState::Disabled, None);
        assert_eq!(status.agent_state(), AgentState::Ok);
        status.set_stopping();
        status.set("api", SubsystemState::Stopped, None);
        assert_eq!(status.agent_state(), AgentState::Stopping);
        assert_eq!(status.subsystems()["api"].state, SubsystemState::Stopped);
    }
}
