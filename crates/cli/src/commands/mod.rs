//! One module per command group.

pub mod agent;
pub mod collectors;
pub mod compliance;
pub mod detectors;
pub mod docker;
pub mod evaluator;
pub mod events;
pub mod executors;
pub mod generators;
pub mod gossip;
pub mod kv;
pub mod log;
pub mod manpages;
pub mod metrics;
pub mod monitoring;
pub mod packs;
pub mod parameters;
pub mod raft;
pub mod services;
pub mod snapshot;

use std::time::Duration;

use crate::error::CliError;

/// Pretty JSON for `--json` output.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(value).map_err(|e| CliError::Other(e.into()))
}

/// A `--timeout S` value as a duration (negative → 0, huge → effectively forever).
pub(crate) fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX / 2)
}
