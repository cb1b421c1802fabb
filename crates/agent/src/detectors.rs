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

    /// The configuration's static groups changed (a reload): apply them now.
    pub fn set_configured(&self, groups: Vec<String>) {
        self.statics
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .configured = groups;
        self.run_now();
    }

    /// Fresh states for these detectors (none has run).
    fn reset(&self, detectors: &[Detector]) {
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = detectors
            .iter()
            .map(|d| DetectorState {
                name: d.name.clone(),
                pack: d.pack.clone(),
                interval_secs: d.interval.as_secs_f64(),
                apply_if: d.apply_if.clone(),
                groups: d.add_groups.clone(),
                rendered_groups: Vec::new(),
                skipped_groups: Vec::new(),
                matched: None,
                error: None,
                last_run_ms: None,
            })
            .collect();
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
    /// The objects of every pack (replaced by a reload).
    pub objects: tokio::sync::watch::Receiver<Arc<opsbro_packs::PackSet>>,
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
    /// This node's zone: the core group `zone::<zone>`.
    pub zone: tokio::sync::watch::Receiver<String>,
}

/// Render a detector's group template (`ec2-region::{{collector.ec2.region}}`) with
/// `resolve`: a placeholder takes the value at its path (`{{collector.x||default}}`: the
/// default when the path has none); a list value gives one group per item, and the text is
/// split on `,` as the original did. A placeholder without a value, or a result that is not a
/// group name, leaves the group out with the reason.
pub fn render_groups(
    template: &str,
    resolve: &dyn Fn(&str) -> Option<serde_json::Value>,
) -> Result<Vec<String>, String> {
    let mut text = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        text.push_str(&rest[..start]);
        let Some(len) = rest[start + 2..].find("}}") else {
            return Err(format!("`{template}`: unclosed `{{{{`"));
        };
        let inner = rest[start + 2..start + 2 + len].trim();
        rest = &rest[start + 2 + len + 2..];
        let (path, default) = match inner.split_once("||") {
            Some((p, d)) => (p.trim(), Some(d.trim())),
            None => (inner, None),
        };
        let value = match (resolve(path), default) {
            (Some(v), _) if !v.is_null() => v,
            (_, Some(d)) => {
                let unquoted = d
                    .strip_prefix('\'')
                    .and_then(|d| d.strip_suffix('\''))
                    .or_else(|| d.strip_prefix('"').and_then(|d| d.strip_suffix('"')))
                    .unwrap_or(d);
                serde_json::Value::String(unquoted.to_owned())
            }
            _ => return Err(format!("`{template}` left out: {path} has no value")),
        };
        let piece = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Bool(b) => if b { "True" } else { "False" }.to_owned(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            _ => return Err(format!("`{template}` left out: {path} is not a value")),
        };
        text.push_str(&piece);
    }
    text.push_str(rest);
    let mut groups = Vec::new();
    for g in text.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        opsbro_config::check_group(g).map_err(|e| format!("`{template}` left out: {e}"))?;
        groups.push(g.to_owned());
    }
    Ok(groups)
}

/// Run the detectors until `shutdown`.
pub async fn run(setup: DetectorsSetup, status: Status, shutdown: CancellationToken) {
    let DetectorsSetup {
        mut objects,
        evaluator,
        gossip,
        handle,
        collected,
        mut collected_once,
        bus,
        mut zone,
    } = setup;
    // Expressions may read collector values: wait for the first collection.
    tokio::select! {
        () = shutdown.cancelled() => return,
        _ = collected_once.wait_for(|done| *done) => {}
    }
    let mut detectors: Vec<Detector> = objects.borrow_and_update().detectors().cloned().collect();
    handle.reset(&detectors);
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
            // `{{parameters.x}}`: the detector's pack's parameters (a port to look for).
            let params = objects
                .borrow()
                .packs
                .get(&d.pack)
                .map(|p| p.parameters.clone())
                .unwrap_or_default();
            let result = tokio::task::spawn_blocking(move || {
                let collectors = crate::collect::resolver(&data);
                let resolve = |path: &str| match path.strip_prefix("parameters.") {
                    Some(rest) => crate::monitoring::parameter(&params, rest),
                    None => collectors(path),
                };
                evaluator.eval_bool(&expr, &resolve)
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
            // Groups are rendered on each run (their templates read collector values).
            let (mut rendered, mut skipped) = (Vec::new(), Vec::new());
            if matched == Some(true) {
                let resolve = crate::collect::resolver(&collected);
                for template in &d.add_groups {
                    match render_groups(template, &resolve) {
                        Ok(groups) => rendered.extend(groups),
                        Err(why) => skipped.push(why),
                    }
                }
                rendered.sort();
                rendered.dedup();
            }
            let mut state = handle.state.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(s) = state.get_mut(i) {
                if s.skipped_groups != skipped {
                    for why in &skipped {
                        tracing::info!(detector = %d.name, "{why}");
                    }
                }
                s.matched = matched;
                s.error = error;
                s.rendered_groups = rendered;
                s.skipped_groups = skipped;
                s.last_run_ms = Some(crate::host::unix_ms());
            }
        }
        let groups: Vec<String> = {
            let state = handle.state.read().unwrap_or_else(PoisonError::into_inner);
            let mut set: BTreeSet<String> = handle.statics();
            // The core group of the zone, as the original's core-gossip pack.
            set.insert(format!("zone::{}", *zone.borrow_and_update()));
            for s in state.iter().filter(|s| s.matched == Some(true)) {
                set.extend(s.rendered_groups.iter().cloned());
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
            Ok(()) = zone.changed() => {
                // `gossip zone change`: the zone group follows (the groups are recomputed).
            }
            Ok(()) = objects.changed() => {
                // A reload: the new detectors all run now.
                detectors = objects.borrow_and_update().detectors().cloned().collect();
                handle.reset(&detectors);
                next_run = vec![Instant::now(); detectors.len()];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::render_groups;
    use serde_json::json;

    fn facts(path: &str) -> Option<serde_json::Value> {
        match path {
            "collector.ec2.region" => Some(json!("eu-west-1")),
            "collector.system.os.linux.distribution" => Some(json!("debian")),
            "collector.roles" => Some(json!(["web", "db"])),
            "collector.bad" => Some(json!("two words")),
            "collector.count" => Some(json!(3)),
            _ => None,
        }
    }

    #[test]
    fn group_templates_render_from_collector_values() {
        assert_eq!(
            render_groups("ec2-region::{{collector.ec2.region}}", &facts),
            Ok(vec!["ec2-region::eu-west-1".to_owned()])
        );
        assert_eq!(
            render_groups("{{collector.system.os.linux.distribution}}", &facts),
            Ok(vec!["debian".to_owned()])
        );
        assert_eq!(
            render_groups("{{collector.roles}}", &facts),
            Ok(vec!["web".to_owned(), "db".to_owned()])
        );
        assert_eq!(
            render_groups("linux, x{{collector.count}}", &facts),
            Ok(vec!["linux".to_owned(), "x3".to_owned()])
        );
        assert_eq!(
            render_groups("az::{{collector.ec2.zone||'unknown'}}", &facts),
            Ok(vec!["az::unknown".to_owned()])
        );
        assert_eq!(render_groups("plain", &facts), Ok(vec!["plain".to_owned()]));
    }

    #[test]
    fn a_placeholder_without_a_value_leaves_the_group_out_never_a_literal() {
        let e = render_groups("ec2-region::{{collector.ec2.nope}}", &facts).expect_err("out");
        assert!(e.contains("collector.ec2.nope has no value"), "{e}");
        let e = render_groups("{{collector.bad}}", &facts).expect_err("out");
        assert!(e.contains("left out"), "{e}");
        assert!(render_groups("x{{collector.ec2.region", &facts).is_err());
    }
}
