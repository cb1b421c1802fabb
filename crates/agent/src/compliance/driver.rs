//! The compliance loop: one task runs every `compliance:` object on its interval, one at a time,
//! rule by rule, and keeps their states for the API, the expressions, the handlers and the
//! next start.
//!
//! A run of an object: `verify_if` false → every rule NOT-ELIGIBLE. Otherwise, in order, each
//! rule evaluates its `variables`, takes the first environment whose `if` is true (none →
//! UNKNOWN, "no environment matches"), and its backend audits (and in enforcing mode fixes);
//! after a fix the environment's `post_commands` run (`sh -c`, each under the step timeout; a
//! failure makes the rule ERROR). After an ERROR the later rules of the object are UNKNOWN.
//! The object's state is the worst of its rules (the original's order). Audit mode never
//! changes the host.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use opsbro_api::compliance::{ComplianceView, HistoryEntry, InfoView, RuleView};
use opsbro_checks::notify::Notification;
use opsbro_eval::{EvalContext, Evaluator};
use opsbro_packs::{ComplianceMode, ComplianceSpec, PackSet, RuleSpec};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::backends::{self, RuleRun};
use super::types::{Info, InfoKind, Mode, Outcome, RuleState};
use crate::collect::CollectedData;
use crate::eval::SharedView;
use crate::events::EventBus;

/// State changes kept for `/compliance/history`.
const HISTORY: usize = 500;
/// Longest one step (a command, a download, a post command) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// A request to run an object now, with where its view goes after the run.
type Launch = (String, oneshot::Sender<Option<ComplianceView>>);

#[derive(Default)]
struct Shared {
    views: BTreeMap<String, ComplianceView>,
    history: VecDeque<HistoryEntry>,
}

/// Compliance states and history, for the API; `launch` asks the loop to run an object now.
#[derive(Clone)]
pub struct ComplianceHandle {
    shared: Arc<Mutex<Shared>>,
    launch: mpsc::Sender<Launch>,
}

/// Where the loop takes launch requests from (made with its handle).
pub struct Launches(mpsc::Receiver<Launch>);

impl ComplianceHandle {
    /// A handle, and the launch requests for the loop ([`ComplianceSetup::launches`]).
    pub fn new() -> (ComplianceHandle, Launches) {
        let (tx, rx) = mpsc::channel(16);
        (
            ComplianceHandle {
                shared: Arc::default(),
                launch: tx,
            },
            Launches(rx),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every object, by name.
    pub fn views(&self) -> Vec<ComplianceView> {
        self.lock().views.values().cloned().collect()
    }

    /// The last `limit` changes, oldest first.
    pub fn history(&self, limit: usize) -> Vec<HistoryEntry> {
        let g = self.lock();
        let skip = g.history.len().saturating_sub(limit);
        g.history.iter().skip(skip).cloned().collect()
    }

    /// Counts of objects by state (for `agent info` and `/metrics`).
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for v in self.lock().views.values() {
            *out.entry(v.state.clone()).or_default() += 1;
        }
        out
    }

    /// The object named `name` (its name or display name), if any.
    pub fn find(&self, name: &str) -> Option<ComplianceView> {
        let g = self.lock();
        g.views
            .get(name)
            .or_else(|| g.views.values().find(|v| v.display_name == name))
            .cloned()
    }

    /// Run `name` now; answers its view after the run (None: no such object, or the loop is
    /// gone).
    pub async fn launch(&self, name: &str) -> Option<ComplianceView> {
        let name = self.find(name)?.name;
        let (tx, rx) = oneshot::channel();
        self.launch.send((name, tx)).await.ok()?;
        rx.await.ok().flatten()
    }
}

/// What the loop works with.
pub struct ComplianceSetup {
    /// The objects (a reload sends new ones).
    pub objects: watch::Receiver<Arc<PackSet>>,
    /// Evaluates `verify_if`, `variables` and `if`.
    pub evaluator: Arc<Evaluator>,
    /// Collector values (`{{collector...}}`, the distribution).
    pub collected: CollectedData,
    /// True once collectors ran.
    pub collected_once: watch::Receiver<bool>,
    /// `compliance_get_state_of_rule`.
    pub view: SharedView,
    /// Where changes go.
    pub bus: EventBus,
    /// States for the API.
    pub handle: ComplianceHandle,
    /// `launch` requests of that handle.
    pub launches: Launches,
    /// Where states are kept across restarts.
    pub state_file: PathBuf,
    /// Prefix of the paths rules write (`/`).
    pub root: PathBuf,
}

fn mode_of(spec: &ComplianceSpec) -> Mode {
    match spec.mode {
        ComplianceMode::Audit => Mode::Audit,
        ComplianceMode::Enforcing => Mode::Enforcing,
    }
}

fn view_of(spec: &ComplianceSpec, saved: Option<&ComplianceView>) -> ComplianceView {
    let rules = spec
        .rules
        .iter()
        .map(|r| {
            let old = saved.and_then(|s| s.rules.iter().find(|x| x.name == r.name));
            RuleView {
                name: r.name.clone(),
                kind: r.kind.clone(),
                state: old.map_or_else(
                    || RuleState::Pending.as_str().to_owned(),
                    |o| o.state.clone(),
                ),
                old_state: old.map(|o| o.old_state.clone()).unwrap_or_default(),
                environment: old.and_then(|o| o.environment.clone()),
                infos: old.map(|o| o.infos.clone()).unwrap_or_default(),
            }
        })
        .collect();
    ComplianceView {
        name: spec.name.clone(),
        display_name: spec.display_name.clone(),
        pack: spec.pack.clone(),
        file: spec.file.clone(),
        mode: mode_of(spec).as_str().to_owned(),
        state: saved.map_or_else(
            || RuleState::Pending.as_str().to_owned(),
            |s| s.state.clone(),
        ),
        old_state: saved.map(|s| s.old_state.clone()).unwrap_or_default(),
        is_running: false,
        last_run_ms: saved.and_then(|s| s.last_run_ms),
        interval_secs: spec.interval.as_secs_f64(),
        rules,
    }
}

fn info_view(i: &Info) -> InfoView {
    InfoView {
        state: match i.kind {
            InfoKind::Compliant => "COMPLIANT",
            InfoKind::Fix => "FIX",
            InfoKind::Error => "ERROR",
            InfoKind::Success => "SUCCESS",
        }
        .to_owned(),
        text: i.text.clone(),
    }
}

/// Placeholders of compliance expressions: `collector.` and `variables.`.
fn resolver<'a>(
    collected: &'a CollectedData,
    vars: &'a serde_json::Map<String, Value>,
) -> impl Fn(&str) -> Option<Value> + 'a {
    move |path: &str| {
        let (root, rest) = path.split_once('.').unwrap_or((path, ""));
        match root {
            "collector" => collected.lookup(rest),
            "variables" => crate::monitoring::variable(vars, rest),
            _ => None,
        }
    }
}

/// Evaluate a rule's variables, then its environments' `if`s: the first that holds (its
/// index), or why none could be chosen.
fn choose_environment(
    rule: &RuleSpec,
    evaluator: &Evaluator,
    collected: &CollectedData,
) -> Result<Option<usize>, String> {
    let mut vars = serde_json::Map::new();
    for (name, expr) in &rule.variables {
        let v = evaluator
            .eval(expr, &resolver(collected, &vars))
            .map_err(|e| format!("variables.{name}: {e}"))?;
        vars.insert(name.clone(), v);
    }
    let r = resolver(collected, &vars);
    for (i, env) in rule.environments.iter().enumerate() {
        if evaluator
            .eval_bool(&env.if_expr, &r)
            .map_err(|e| format!("environment {}: if: {e}", env.name))?
        {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// Run `post_commands` after a fix: the first that fails makes the outcome ERROR.
async fn post_commands(commands: &[String], outcome: &mut Outcome) {
    for c in commands {
        match backends::run_command(&["/bin/sh", "-c", c], &[], STEP_TIMEOUT).await {
            Ok(out) if out.code == Some(0) => {
                outcome
                    .infos
                    .push(Info::success(format!("post command `{c}` did run")));
            }
            Ok(out) => {
                let text = if out.stderr.trim().is_empty() {
                    out.stdout
                } else {
                    out.stderr
                };
                outcome.infos.push(Info::error(format!(
                    "post command `{c}` failed ({}): {}",
                    out.code
                        .map_or_else(|| "killed".to_owned(), |c| format!("exit {c}")),
                    text.trim()
                )));
                outcome.state = RuleState::Error;
                return;
            }
            Err(e) => {
                outcome
                    .infos
                    .push(Info::error(format!("post command `{c}` failed: {e}")));
                outcome.state = RuleState::Error;
                return;
            }
        }
    }
}

/// The distribution id the package backends pick from (`debian`, `centos`...).
fn distro(collected: &CollectedData) -> Option<String> {
    collected
        .lookup("system.os.linux.distribution")
        .and_then(|v| v.as_str().map(str::to_owned))
}

/// Run one object now; update the shared view as rules progress.
async fn run_object(
    spec: &ComplianceSpec,
    setup: &ComplianceSetup,
    now_ms: u64,
) -> Vec<(RuleView, RuleState)> {
    let handle = &setup.handle;
    let set_running = |name: &str, running: bool| {
        let mut g = handle.lock();
        if let Some(v) = g.views.get_mut(&spec.name) {
            v.is_running = running;
            if let Some(r) = v.rules.iter_mut().find(|r| r.name == name) {
                r.state = RuleState::Running.as_str().into();
            }
        }
    };
    let eligible = {
        let (ev, col, expr) = (
            setup.evaluator.clone(),
            setup.collected.clone(),
            spec.verify_if.clone(),
        );
        tokio::task::spawn_blocking(move || {
            ev.eval_bool(&expr, &resolver(&col, &serde_json::Map::new()))
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    };
    let distro = distro(&setup.collected);
    let mut out = Vec::new();
    let mut failed = false;
    for rule in &spec.rules {
        let (state, environment, infos) = match &eligible {
            Ok(false) => (
                RuleState::NotEligible,
                None,
                vec![Info::compliant(
                    "verify_if is false on this node".to_owned(),
                )],
            ),
            Err(e) => (
                RuleState::Error,
                None,
                vec![Info::error(format!("verify_if: {e}"))],
            ),
            Ok(true) if failed => (
                RuleState::Unknown,
                None,
                vec![Info::error("not run: an earlier rule failed".to_owned())],
            ),
            Ok(true) => {
                set_running(&rule.name, true);
                let chosen = {
                    let (ev, col, r) = (
                        setup.evaluator.clone(),
                        setup.collected.clone(),
                        rule.clone(),
                    );
                    tokio::task::spawn_blocking(move || choose_environment(&r, &ev, &col))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()))
                };
                match chosen {
                    Err(e) => (RuleState::Error, None, vec![Info::error(e)]),
                    Ok(None) => (
                        RuleState::Unknown,
                        None,
                        vec![Info::error("no environment matches this node".to_owned())],
                    ),
                    Ok(Some(i)) => {
                        let env = &rule.environments[i];
                        let mut outcome = match backends::validate(&rule.kind, &env.parameters) {
                            Err(e) => Outcome {
                                state: RuleState::Error,
                                infos: vec![Info::error(format!("parameters: {e}"))],
                            },
                            Ok(()) => {
                                backends::run(RuleRun {
                                    kind: &rule.kind,
                                    parameters: &env.parameters,
                                    mode: mode_of(spec),
                                    root: &setup.root,
                                    timeout: STEP_TIMEOUT,
                                    distro: distro.as_deref(),
                                })
                                .await
                            }
                        };
                        if outcome.state == RuleState::Fixed && !env.post_commands.is_empty() {
                            post_commands(&env.post_commands, &mut outcome).await;
                        }
                        (outcome.state, Some(env.name.clone()), outcome.infos)
                    }
                }
            }
        };
        failed |= state == RuleState::Error;
        let old = handle
            .lock()
            .views
            .get(&spec.name)
            .and_then(|v| v.rules.iter().find(|r| r.name == rule.name).cloned());
        let old_state = old
            .as_ref()
            .map(|o| o.state.clone())
            .filter(|s| s != "RUNNING")
            .unwrap_or_else(|| "PENDING".into());
        let view = RuleView {
            name: rule.name.clone(),
            kind: rule.kind.clone(),
            state: state.as_str().into(),
            old_state,
            environment,
            infos: infos.iter().map(info_view).collect(),
        };
        {
            let mut g = handle.lock();
            if let Some(v) = g.views.get_mut(&spec.name) {
                if let Some(r) = v.rules.iter_mut().find(|r| r.name == rule.name) {
                    *r = view.clone();
                }
                v.last_run_ms = Some(now_ms);
            }
        }
        out.push((view, state));
    }
    out
}

/// The original's notable transitions (`compliance_execution` events): PENDING/UNKNOWN/
/// NOT-ELIGIBLE → FIXED or ERROR, FIXED/COMPLIANT → ERROR, ERROR → FIXED or COMPLIANT.
fn notable(old: &str, new: &str) -> bool {
    matches!(
        (old, new),
        ("PENDING" | "UNKNOWN" | "NOT-ELIGIBLE", "FIXED" | "ERROR")
            | ("FIXED" | "COMPLIANT", "ERROR")
            | ("ERROR", "FIXED" | "COMPLIANT")
    )
}

fn save(file: &std::path::Path, handle: &ComplianceHandle) {
    let views: BTreeMap<String, ComplianceView> = handle.lock().views.clone();
    let bytes = serde_json::to_vec_pretty(&views).unwrap_or_default();
    if let Err(e) = crate::datadir::write_atomic(file, &bytes) {
        tracing::warn!(error = %e, file = %file.display(), "cannot save compliance states");
    }
}

fn publish_rule_states(view: &SharedView, handle: &ComplianceHandle) {
    let states: HashMap<String, String> = handle
        .lock()
        .views
        .values()
        .flat_map(|v| v.rules.iter().map(|r| (r.name.clone(), r.state.clone())))
        .collect();
    view.set_compliance(states);
}

/// Run the compliance objects until `shutdown`.
pub async fn run(mut setup: ComplianceSetup, shutdown: CancellationToken) {
    let mut objects = setup.objects.clone();
    let mut collected_once = setup.collected_once.clone();
    // Rules read collector values (the distribution): wait for the first collection.
    tokio::select! {
        () = shutdown.cancelled() => return,
        _ = collected_once.wait_for(|done| *done) => {}
    }
    // `verify_if` reads the node's groups (`is_in_group('linux')`): wait for the detectors'
    // first pass to reach the view — it always adds `zone::<zone>` — at most 30 s.
    let groups_deadline = Instant::now() + Duration::from_secs(30);
    while !setup.view.groups().iter().any(|g| g.starts_with("zone::"))
        && Instant::now() < groups_deadline
    {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let saved: BTreeMap<String, ComplianceView> = std::fs::read(&setup.state_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut specs: Vec<ComplianceSpec> = Vec::new();
    let mut next: HashMap<String, Instant> = HashMap::new();
    let load =
        |set: &PackSet, specs: &mut Vec<ComplianceSpec>, next: &mut HashMap<String, Instant>| {
            let before = std::mem::replace(specs, set.compliance().cloned().collect());
            let mut g = setup.handle.lock();
            let old = std::mem::take(&mut g.views);
            for s in specs.iter() {
                let kept = old.get(&s.name).or_else(|| saved.get(&s.name));
                g.views.insert(s.name.clone(), view_of(s, kept));
                // New or changed objects (a reload turned audit into enforcing) run at once.
                if before.iter().find(|b| b.name == s.name) != Some(s) {
                    next.insert(s.name.clone(), Instant::now());
                }
            }
            next.retain(|n, _| specs.iter().any(|s| &s.name == n));
        };
    load(&objects.borrow_and_update(), &mut specs, &mut next);
    publish_rule_states(&setup.view, &setup.handle);
    loop {
        let now = Instant::now();
        let due = specs
            .iter()
            .find(|s| next.get(&s.name).is_some_and(|t| *t <= now))
            .cloned();
        let mut waiting = None;
        let spec = match due {
            Some(s) => Some(s),
            None => {
                let wake = next
                    .values()
                    .min()
                    .copied()
                    .unwrap_or(now + Duration::from_secs(60));
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    Ok(()) = objects.changed() => {
                        load(&objects.borrow_and_update(), &mut specs, &mut next);
                        None
                    }
                    Some((name, reply)) = setup.launches.0.recv() => {
                        waiting = Some(reply);
                        specs.iter().find(|s| s.name == name).cloned()
                    }
                    () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => None,
                }
            }
        };
        let Some(spec) = spec else {
            if let Some(reply) = waiting {
                let _ = reply.send(None);
            }
            continue;
        };
        next.insert(spec.name.clone(), Instant::now() + spec.interval);
        let now_ms = crate::host::unix_ms();
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = run_object(&spec, &setup, now_ms) => r,
        };
        let state = RuleState::worst(result.iter().map(|(_, s)| *s));
        let output: String = result
            .iter()
            .flat_map(|(r, _)| {
                r.infos
                    .iter()
                    .map(move |i| format!("{}: {}: {}", r.name, i.state, i.text))
            })
            .collect::<Vec<_>>()
            .join("\n");
        let (changed, old_state) = {
            let mut g = setup.handle.lock();
            let Some(v) = g.views.get_mut(&spec.name) else {
                continue;
            };
            v.is_running = false;
            let old_state = v.state.clone();
            let changed = old_state != state.as_str();
            if changed {
                v.old_state = old_state.clone();
                v.state = state.as_str().into();
            }
            if changed {
                g.history.push_back(HistoryEntry {
                    time_ms: now_ms,
                    name: spec.name.clone(),
                    display_name: spec.display_name.clone(),
                    state: state.as_str().into(),
                    old_state: old_state.clone(),
                    output: output.clone(),
                });
                while g.history.len() > HISTORY {
                    g.history.pop_front();
                }
            }
            (changed, old_state)
        };
        if changed {
            tracing::info!(compliance = %spec.name, old = %old_state, new = %state, "compliance state changed");
            let n = Notification::Compliance {
                name: spec.name.clone(),
                display_name: spec.display_name.clone(),
                mode: mode_of(&spec).as_str().into(),
                state: state.as_str().into(),
                old_state: old_state.clone(),
                output: output.clone(),
            };
            // Every change is on the stream; handlers get the original's notable ones.
            setup.bus.notify(n, notable(&old_state, state.as_str()));
        }
        save(&setup.state_file, &setup.handle);
        publish_rule_states(&setup.view, &setup.handle);
        if let Some(reply) = waiting {
            let _ = reply.send(setup.handle.find(&spec.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notable_transitions_are_the_originals() {
        assert!(notable("PENDING", "FIXED"));
        assert!(notable("UNKNOWN", "ERROR"));
        assert!(notable("COMPLIANT", "ERROR"));
        assert!(notable("ERROR", "COMPLIANT"));
        assert!(!notable("PENDING", "COMPLIANT"));
        assert!(!notable("COMPLIANT", "FIXED"));
        assert!(!notable("PENDING", "NOT-ELIGIBLE"));
    }
}
