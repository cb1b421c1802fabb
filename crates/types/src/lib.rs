//! Vocabulary types shared by every opsbro crate: node identity, agent and subsystem states,
//! and the product version. This crate sits at the bottom of the dependency graph: it has no IO,
//! no async runtime and no knowledge of any protocol; other crates build on these names.

#![forbid(unsafe_code)]

pub mod names;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The version of this opsbro build, as shown by `opsbro agent info` and gossiped to peers.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The stable identity of a node: created once, persisted in the data dir, never reused.
///
/// Rendered as the canonical hyphenated lowercase UUID text.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeUuid(uuid::Uuid);

impl NodeUuid {
    /// A fresh random (version 4) identity.
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// The raw 16 bytes, for wire formats.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Rebuild an identity from the 16 bytes of a wire format.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }
}

impl fmt::Display for NodeUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for NodeUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeUuid({self})")
    }
}

/// Why a text is not a node uuid.
#[derive(Debug, thiserror::Error)]
#[error("`{text}` is not a node uuid (expected 32 hex digits, optionally hyphenated)")]
pub struct ParseNodeUuidError {
    text: String,
}

impl FromStr for NodeUuid {
    type Err = ParseNodeUuidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::try_parse(s.trim())
            .map(Self)
            .map_err(|_| ParseNodeUuidError { text: s.to_owned() })
    }
}

/// The overall state of an agent, as answered by `GET /agent/state`.
///
/// An agent is `initializing` until every enabled subsystem has reported ready once, then `ok`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Subsystems are still starting.
    Initializing,
    /// Every enabled subsystem is running.
    Ok,
    /// A shutdown has been requested and is in progress.
    Stopping,
}

impl AgentState {
    /// The lowercase word used on the wire and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Initializing => "initializing",
            AgentState::Ok => "ok",
            AgentState::Stopping => "stopping",
        }
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one subsystem (HTTP API, gossip, DNS, ...) inside the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubsystemState {
    /// Starting; the agent is `initializing` while any subsystem is here.
    Starting,
    /// Running normally.
    Ok,
    /// Turned off by configuration.
    Disabled,
    /// Failed; the message in the subsystem status says why.
    Error,
    /// Shut down.
    Stopped,
}

impl SubsystemState {
    /// The lowercase word used on the wire and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            SubsystemState::Starting => "starting",
            SubsystemState::Ok => "ok",
            SubsystemState::Disabled => "disabled",
            SubsystemState::Error => "error",
            SubsystemState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for SubsystemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_uuid_round_trips_through_text_and_bytes() {
        let id = NodeUuid::new_random();
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.parse::<NodeUuid>().expect("parse"), id);
        assert_eq!(NodeUuid::from_bytes(*id.as_bytes()), id);
        let simple = text.replace('-', "");
        assert_eq!(simple.parse::<NodeUuid>().expect("parse simple"), id);
    }

    #[test]
    fn node_uuid_rejects_garbage_with_the_text() {
        let err = "not-a-uuid".parse::<NodeUuid>().expect_err("must fail");
        assert!(err.to_string().contains("not-a-uuid"));
    }

    #[test]
    fn states_serialize_lowercase() {
        assert_eq!(
            serde_json::to_string(&AgentState::Initializing).expect("json"),
            "\"initializing\""
        );
        assert_eq!(
            serde_json::to_string(&SubsystemState::Disabled).expect("json"),
            "\"disabled\""
        );
    }
}
