//! `opsbro agent start --one-shot`: run the collectors, the detectors and the generators once,
//! report what they did, and stop — for provisioning scripts and image builds, where no agent
//! keeps running. Nothing listens beyond loopback: the caller ([`crate::run_once`]) turns the
//! DNS, statsd, graphite and websocket listeners off, binds the API and gossip to ephemeral
//! loopback ports and joins nobody.

use std::collections::BTreeMap;
use std::time::Duration;

use opsbro_api::collectors::Collector;
use opsbro_api::detectors::DetectorState;
use opsbro_api::generators::GeneratorView;
use opsbro_types::SubsystemState;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::collect::CollectedData;
use crate::detectors::DetectorsHandle;
use crate::generators::GeneratorsHandle;
use crate::gossip::GossipHandle;
use crate::status::Status;

/// Longest the one pass may take before the report is made with what is done.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// What one pass did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Every collector's result.
    pub collectors: BTreeMap<String, Collector>,
    /// Every detector's result.
    pub detectors: Vec<DetectorState>,
    /// The groups of this node after detection.
    pub groups: Vec<String>,
    /// Every generator after its render.
    pub generators: Vec<GeneratorView>,
    /// Set when the pass did not finish within [`DEADLINE`]: what was still running.
    pub timed_out: Option<String>,
}

impl Report {
    /// True when something failed: a generator in error, a detector that could not evaluate,
    /// or the deadline.
    pub fn failed(&self) -> bool {
        self.timed_out.is_some()
            || self.generators.iter().any(|g| g.state == "error")
            || self.detectors.iter().any(|d| d.error.is_some())
    }
}

/// What the pass reads.
pub struct Parts {
    /// Subsystem states (the detectors are `ok` after their first pass).
    pub status: Status,
    /// Collector results.
    pub collected: CollectedData,
    /// Detector states.
    pub detectors: DetectorsHandle,
    /// Generator states, and the way to render them all now.
    pub generators: GeneratorsHandle,
    /// This node's groups, as the cluster sees them.
    pub gossip: GossipHandle,
}

/// Wait for the first collection and detection, render every generator once, send the report
/// and stop the agent.
pub async fn drive(parts: Parts, report: oneshot::Sender<Report>, shutdown: CancellationToken) {
    let (groups, timed_out) = tokio::select! {
        () = shutdown.cancelled() => return,
        r = tokio::time::timeout(DEADLINE, pass(&parts)) => match r {
            Ok(groups) => (groups, None),
            Err(_) => (
                Vec::new(),
                Some(format!("the pass did not finish within {}s", DEADLINE.as_secs())),
            ),
        },
    };
    let _ = report.send(Report {
        collectors: parts.collected.all(),
        detectors: parts.detectors.state(),
        groups,
        generators: parts.generators.views(),
        timed_out,
    });
    shutdown.cancel();
}

async fn pass(parts: &Parts) -> Vec<String> {
    // The detectors are `ok` once their first pass has set the groups (after the first
    // collection, which they wait for).
    let mut changes = parts.status.subscribe();
    while parts
        .status
        .subsystems()
        .get("detectors")
        .is_none_or(|s| s.state != SubsystemState::Ok)
    {
        // Subsystem changes do not always move the agent state: poll as well.
        let _ = tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
    }
    // The gossip task takes commands in order: once it answers this, it has applied the groups
    // the detectors gave it, and expressions (`is_in_group(...)`) see them.
    let groups = parts
        .gossip
        .members()
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.is_self)
        .map(|m| m.groups)
        .unwrap_or_default();
    // Generators render with the detected groups (`generate_if: is_in_group(...)`).
    parts.generators.render_all().await;
    groups
}
