//! The detector loop: runs every pack detector on its interval, and makes this node's groups the
//! static groups plus those of the detectors that match. Group changes are gossiped (the gossip
//! core bumps the incarnation). The subsystem is `ok` after the first full pass.

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use opsbro_api::detectors::DetectorState;
use opsbro_eval::Evaluator;
use opsbro_packs::Detector;
use opsbro_types::SubsystemState;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::gossip::GossipHandle;
use crate::status::Status;

/// Shared with the API: the state of every detector, and a way to run them all now.
#[derive(Clone, Default)]
pub struct DetectorsHandle {
    state: Arc<RwLock<Vec<DetectorState>>>,
    run_now: Arc<Notify>,
    statics: Arc<RwLock<StaticGroups>>,
}

/// Static groups: the configuration's `groups`, plus those added and minus those removed with
/// `opsbro agent groups add|remove` (persisted in the data dir, so they survive a restart).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct StaticGroups {
    /// From `agent.yml` / flags.
    #[serde(skip)]
    pub configured: Vec<String>,
    /// Added at run time.
    pub added: BTreeSet<String>,
    /// Removed at run time.
    pub removed: BTreeSet<String>,
    /// Where `added`/`removed` are kept.
    #[serde(skip)]
    pub file: Option<std::path::PathBuf>,
}

impl StaticGroups {
    /// Load the run-time changes from `file` (a missing file means none).
    pub fn load(configured: Vec<String>, file: std::path::PathBuf) -> Self {
        let mut g: StaticGroups = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        g.configured = configured;
        g.file = Some(file);
        g
    }

    /// The effective static groups.
    pub fn effective(&self) -> BTreeSet<String> {
        self.configured
            .iter()
            .chain(self.added.iter())
            .filter(|g| !self.removed.contains(*g))
            .cloned()
            .collect()
    }

    fn save(&self) -> std::io::Result<()> {
        match &self.file {
            Some(f) => crate::datadir::write_atomic(
                f,
                &serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
            ),
            None => Ok(()),
        }
    }
}

impl DetectorsHandle {
    /// The state of every detector.
    pub fn state(&self) -> Vec<DetectorState> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Ask for a run of every detector at once.
    pub fn run_now(&self) {
        self.run_now.notify_one();
    }

    /// Use these static groups (before the loop starts).
    pub fn set_statics(&self, statics: StaticGroups) {
        *self.statics.write().unwrap_or_else(PoisonError::into_inner) = statics;
    }

    /// Add (`add = true`) or remove a static group, persist the change and re-apply the groups.
    pub fn change_static(&self, group: &str, add: bool) -> std::io::Result<BTreeSet<String>> {
        let mut g = self.statics.write().unwrap_or_else(PoisonError::into_inner);
        if add {
            g.removed.remove(group);
            if !g.configured.iter().any(|c| c == group) {
                g.added.insert(group.to_owned());
            }
        } else {
            g.added.remove(group);
            if g.configured.iter().any(|c| c == group) {
                g.removed.insert(group.to_owned());
            }
        }
        g.save()?;
        let effective = g.effective();
        drop(g);
        self.run_now();
        Ok(effective)
    }

    fn statics(&self) -> BTreeSet<String> {
        self.statics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .effective()
    }
}

/// What the detector loop works with.
pub struct DetectorsSetup {
    /// Every detector of every pack.
    pub detectors: Vec<Detector>,
    /// Evaluates `apply_if`.
    pub evaluator: Arc<Evaluator>,
    /// Receives the resulting groups.
    pub gossip: GossipHandle,
    /// Shared state for the API.
    pub handle: DetectorsHandle,
    /// Collector values for placeholders.
    pub collected: crate::collect::CollectedData,
    /// True once collectors ran.
    pub collected_once: tokio::sync::watch::Receiver<bool>,
    /// Where group changes are published.
    pub bus: crate::events::EventBus,
}

/// Run the detectors until `shutdown`.
pub async fn run(setup: DetectorsSetup, status: Status, shutdown: CancellationToken) {
    let DetectorsSetup {
        detectors,
        evaluator,
        gossip,
        handle,
        collected,
        mut collected_once,
        bus,
    } = setup;
    // Expressions may read collector values: wait for the first collection.
    tokio::select! {
        () = shutdown.cancelled() => return,
        _ = collected_once.wait_for(|done| *done) => {}
    }
    {
        let mut state = handle.state.write().unwrap_or_else(PoisonError::into_inner);
        *state = detectors
            .iter()
            .map(|d| DetectorState {
                name: d.name.clone(),
                pack: d.pack.clone(),
                interval_secs: d.interval.as_secs_f64(),
                apply_if: d.apply_if.clone(),
                groups: d.add_groups.clone(),
                matched: None,
                error: None,
                last_run_ms: None,
            })
            .collect();
    }
    let mut next_run: Vec<Instant> = vec![Instant::now(); detectors.len()];
    let mut applied: Option<Vec<String>> = None;
    let mut first_pass = true;
    loop {
        let now = Instant::now();
        for (i, d) in detectors.iter().enumerate() {
            if next_run[i] > now {
                continue;
            }
            next_run[i] = now + d.interval;
            let evaluator = evaluator.clone();
            let expr = d.apply_if.clone();
            let data = collected.clone();
            let result = tokio::task::spawn_blocking(move || {
                evaluator.eval_bool(&expr, &crate::collect::resolver(&data))
            })
            .await;
            let (matched, error) = match result {
                Ok(Ok(m)) => (Some(m), None),
                Ok(Err(e)) => (Some(false), Some(e.to_string())),
                Err(e) => (Some(false), Some(format!("detector task failed: {e}"))),
            };
            if let Some(err) = &error {
                tracing::warn!(detector = %d.name, error = %err, "detector failed");
            }
            let mut state = handle.state.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(s) = state.get_mut(i) {
                s.matched = matched;
                s.error = error;
                s.last_run_ms = Some(crate::host::unix_ms());
            }
        }
        let groups: Vec<String> = {
            let state = handle.state.read().unwrap_or_else(PoisonError::into_inner);
            let mut set: BTreeSet<String> = handle.statics();
            for s in state.iter().filter(|s| s.matched == Some(true)) {
                set.extend(s.groups.iter().cloned());
            }
            set.into_iter().collect()
        };
        if applied.as_ref() != Some(&groups) {
            if let Some(old) = &applied {
                let added: Vec<_> = groups.iter().filter(|g| !old.contains(g)).collect();
                let removed: Vec<_> = old.iter().filter(|g| !groups.contains(g)).collect();
                tracing::info!(?added, ?removed, "groups changed");
                for (list, added) in [(added, true), (removed, false)] {
                    for g in list {
                        bus.notify(
                            opsbro_checks::notify::Notification::Group {
                                group: g.clone(),
                                added,
                            },
                            true,
                        );
                    }
                }
            } else {
                tracing::info!(?groups, "groups detected");
            }
            if gossip.set_groups(groups.clone()).await.is_err() {
                return;
            }
            applied = Some(groups.clone());
        }
        if first_pass {
            first_pass = false;
            status.set(
                "detectors",
                SubsystemState::Ok,
                Some(format!(
                    "{} detectors, groups: {}",
                    detectors.len(),
                    groups.join(",")
                )),
            );
        }
        let wake = next_run
            .iter()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            () = handle.run_now.notified() => {
                let now = Instant::now();
                next_run.iter_mut().for_each(|t| *t = now);
            }
        }
    }
}
