//! The check loop: runs every active check of the packs on its interval (±10% jitter), turns
//! results into confirmed states (flap damping in `opsbro_checks::Tracker`), keeps the state and
//! history for the API, persists states across restarts, gossips a summary in the node record
//! and publishes each confirmed change on the event bus (handlers notify people).
//!
//! Expression checks run on blocking threads (their functions may read files); plugin checks run
//! as `sh -c` in their own process group, killed as a group at the timeout. Neither can block
//! the loop, and one check never runs twice at the same time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use opsbro_api::monitoring::{CheckView, HistoryEntry, PerfData};
use opsbro_checks::notify::Notification;
use opsbro_checks::{CheckState, Tracker, nagios};
use opsbro_eval::{EvalContext, Evaluator};
use opsbro_packs::{CheckKind, CheckSpec};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod native;

use crate::collect::CollectedData;
use crate::eval::SharedView;
use crate::events::EventBus;
use crate::gossip::GossipHandle;

/// State changes kept for `/monitoring/history`.
const HISTORY: usize = 1000;

/// Shared with the API.
#[derive(Clone)]
pub struct MonitoringHandle {
    inner: Arc<RwLock<Shared>>,
    /// Bumped whenever a confirmed state or the set of active checks changes (the services
    /// driver follows it).
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Wakes the loop when a TTL status arrives.
    ttl_news: Arc<tokio::sync::Notify>,
}

impl Default for MonitoringHandle {
    fn default() -> Self {
        MonitoringHandle {
            inner: Arc::default(),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
            ttl_news: Arc::default(),
        }
    }
}

#[derive(Default)]
struct Shared {
    /// Active checks by name.
    checks: BTreeMap<String, CheckView>,
    history: VecDeque<HistoryEntry>,
    /// TTL statuses not yet taken by the loop.
    ttl_pending: Vec<(String, CheckState, String)>,
}

/// Why a TTL status was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    /// No active check of that name on this node.
    #[error("no active check named `{0}` on this node")]
    Unknown(String),
    /// The check is not a TTL check.
    #[error("check `{0}` is a {1} check, not a TTL check: only TTL checks take a status")]
    NotTtl(String, String),
    /// The note is not text we can show.
    #[error("note: {0}")]
    BadNote(String),
}

/// Longest note of a TTL status.
pub const MAX_TTL_NOTE: usize = 4096;

impl MonitoringHandle {
    /// This node's active checks, sorted by name.
    pub fn checks(&self) -> Vec<CheckView> {
        let g = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        g.checks.values().cloned().collect()
    }

    /// The last `limit` state changes, oldest first.
    pub fn history(&self, limit: usize) -> Vec<HistoryEntry> {
        let g = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let skip = g.history.len().saturating_sub(limit);
        g.history.iter().skip(skip).cloned().collect()
    }

    fn update(&self, f: impl FnOnce(&mut Shared)) {
        f(&mut self.inner.write().unwrap_or_else(PoisonError::into_inner));
    }

    /// A receiver that sees every change of the confirmed states or of the active checks.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// (name, confirmed state) of every active check, sorted by name (without cloning the
    /// outputs the full views carry).
    pub fn confirmed(&self) -> BTreeMap<String, CheckState> {
        let g = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        g.checks
            .values()
            .map(|c| {
                (
                    c.name.clone(),
                    CheckState::parse(&c.state).unwrap_or(CheckState::Unknown),
                )
            })
            .collect()
    }

    /// Give a TTL check of this node its status (`opsbro monitoring ttl`). `name` is the
    /// check's name, or the name of a service whose only TTL check it is. Answers the check's
    /// name.
    pub fn ttl(
        &self,
        name: &str,
        state: CheckState,
        note: Option<String>,
        services: &[(String, Vec<String>)],
    ) -> Result<String, TtlError> {
        if let Some(n) = &note {
            opsbro_types::names::text("note", n, MAX_TTL_NOTE)
                .map_err(|e| TtlError::BadNote(e.0))?;
        }
        let mut g = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let check = match g.checks.get(name) {
            Some(c) => c,
            None => {
                // A service's name stands for its TTL check when it has exactly one.
                let ttl_checks: Vec<&CheckView> = services
                    .iter()
                    .filter(|(service, _)| service == name)
                    .flat_map(|(_, checks)| checks.iter())
                    .filter_map(|c| g.checks.get(c))
                    .filter(|c| c.kind == "ttl")
                    .collect();
                match ttl_checks.as_slice() {
                    [one] => *one,
                    _ => return Err(TtlError::Unknown(name.to_owned())),
                }
            }
        };
        if check.kind != "ttl" {
            return Err(TtlError::NotTtl(check.name.clone(), check.kind.clone()));
        }
        let check_name = check.name.clone();
        let output = note.unwrap_or_else(|| {
            format!(
                "TTL check {}: status set by `opsbro monitoring ttl`",
                state.as_str().to_uppercase()
            )
        });
        g.ttl_pending.push((check_name.clone(), state, output));
        drop(g);
        self.ttl_news.notify_one();
        Ok(check_name)
    }
}

/// What the check loop works with.
pub struct MonitoringSetup {
    /// The objects of every pack: checks and pack parameters (replaced by a reload).
    pub objects: tokio::sync::watch::Receiver<Arc<opsbro_packs::PackSet>>,
    /// Evaluates expressions.
    pub evaluator: Arc<Evaluator>,
    /// This node's groups (`if_group`).
    pub view: SharedView,
    /// Receives the state summary.
    pub gossip: GossipHandle,
    /// Collector values.
    pub collected: CollectedData,
    /// True once collectors ran.
    pub collected_once: tokio::sync::watch::Receiver<bool>,
    /// `$nagiosplugins$`.
    pub plugins_dir: PathBuf,
    /// Where confirmed states are kept across restarts.
    pub state_file: PathBuf,
    /// Where changes are published.
    pub bus: EventBus,
    /// Shared state for the API.
    pub handle: MonitoringHandle,
    /// Where perfdata goes (`check.<name>.<label>` series).
    pub metrics: crate::metrics::MetricsHandle,
}

/// One run's result.
struct RunResult {
    index: usize,
    state: CheckState,
    output: String,
    long_output: String,
    perfdata: Vec<PerfData>,
}

impl RunResult {
    fn unknown(index: usize, output: String) -> RunResult {
        RunResult {
            index,
            state: CheckState::Unknown,
            output,
            long_output: String::new(),
            perfdata: Vec::new(),
        }
    }
}

fn initial_view(spec: &CheckSpec, state: CheckState, tracker: &Tracker) -> CheckView {
    CheckView {
        name: spec.name.clone(),
        display_name: spec.display_name.clone(),
        pack: spec.pack.clone(),
        kind: match spec.kind {
            CheckKind::Expression { .. } => "expression".into(),
            CheckKind::Script { .. } => "script".into(),
            CheckKind::Tcp { .. } => "tcp".into(),
            CheckKind::Http(_) => "http".into(),
            CheckKind::Ttl { .. } => "ttl".into(),
        },
        state: state.as_str().into(),
        state_id: state.state_id(),
        last_result: CheckState::Pending.as_str().into(),
        attempts_needed: tracker.attempts_needed(),
        interval_secs: spec.interval.as_secs_f64(),
        if_group: spec.if_group.clone(),
        handlers: spec.handlers.clone(),
        error: spec.error.clone(),
        ..CheckView::default()
    }
}

/// ±10% of the interval, so checks of many nodes do not run in lockstep.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::random_range(0.9..1.1))
}

/// One check the loop runs: its spec and everything that must survive a reload of it.
struct Slot {
    /// Results name their slot by this id (positions move when checks are added or removed).
    id: usize,
    spec: Arc<CheckSpec>,
    tracker: Tracker,
    next_run: Instant,
    in_flight: bool,
    active: bool,
}

/// The slots for `checks`: a check whose name was there keeps its state, its damping counters
/// (unless its damping changed: then it restarts from its confirmed state) and its next run;
/// a new one starts from the state saved at the last stop, or pending.
fn build_slots(
    checks: &[CheckSpec],
    mut old: Vec<Slot>,
    saved: &BTreeMap<String, String>,
    next_id: &mut usize,
) -> Vec<Slot> {
    let start = Instant::now();
    checks
        .iter()
        .map(|c| {
            let spec = Arc::new(c.clone());
            if let Some(i) = old.iter().position(|s| s.spec.name == c.name) {
                let mut slot = old.swap_remove(i);
                if slot.spec.damping != c.damping {
                    slot.tracker = Tracker::restore(c.damping, slot.tracker.state());
                }
                slot.spec = spec;
                return slot;
            }
            let tracker = match saved
                .get(&c.name)
                .and_then(|s| CheckState::parse(s))
                .filter(|s| *s != CheckState::Pending)
            {
                Some(state) => Tracker::restore(c.damping, state),
                None => Tracker::new(c.damping),
            };
            *next_id += 1;
            let next_run = match c.kind {
                // A TTL check expires a TTL after the start unless news comes first.
                CheckKind::Ttl { ttl } => start + ttl,
                // Spread the first runs over up to 2 s so an agent start is not a burst.
                _ => {
                    start
                        + c.interval
                            .min(Duration::from_secs(2))
                            .mul_f64(rand::random::<f64>())
                }
            };
            Slot {
                id: *next_id,
                spec,
                tracker,
                next_run,
                in_flight: false,
                active: false,
            }
        })
        .collect()
}

/// Run the checks until `shutdown`; a reload (new `objects`) adds, changes and removes checks
/// without losing the state of those still there.
pub async fn run(setup: MonitoringSetup, shutdown: CancellationToken) {
    let MonitoringSetup {
        mut objects,
        evaluator,
        view,
        gossip,
        collected,
        mut collected_once,
        plugins_dir,
        state_file,
        bus,
        handle,
        metrics,
    } = setup;
    // Expressions read collector values: wait for the first collection.
    tokio::select! {
        () = shutdown.cancelled() => return,
        _ = collected_once.wait_for(|done| *done) => {}
    }
    let saved: BTreeMap<String, String> = std::fs::read(&state_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut next_id = 0;
    let (mut slots, mut parameters) = {
        let set = objects.borrow_and_update();
        let checks: Vec<CheckSpec> = set.checks().cloned().collect();
        (
            build_slots(&checks, Vec::new(), &saved, &mut next_id),
            Arc::new(pack_parameters(&set)),
        )
    };
    let plugins_dir = plugins_dir.display().to_string();
    // A reload changes the checks: their views must follow even if the groups did not change.
    let mut views_stale = true;
    let (tx, mut rx) = mpsc::channel::<RunResult>(64);
    let mut tasks = tokio::task::JoinSet::new();
    // Which slot each running task is, to free it if its task panics.
    let mut task_slots: HashMap<tokio::task::Id, usize> = HashMap::new();
    loop {
        // `if_group` follows the node's groups as detectors change them.
        let groups = view.groups();
        let mut changed = std::mem::take(&mut views_stale);
        for slot in &mut slots {
            let active = slot.spec.if_group == "*" || groups.contains(&slot.spec.if_group);
            changed |= active != slot.active;
            slot.active = active;
        }
        if changed {
            handle.update(|s| {
                s.checks
                    .retain(|name, _| slots.iter().any(|c| c.active && c.spec.name == *name));
                for c in slots.iter().filter(|c| c.active) {
                    let fresh = initial_view(&c.spec, c.tracker.state(), &c.tracker);
                    match s.checks.get_mut(&c.spec.name) {
                        // Kept: the run results stay, what the spec says is updated.
                        Some(v) => {
                            v.display_name = fresh.display_name;
                            v.pack = fresh.pack;
                            v.kind = fresh.kind;
                            v.attempts_needed = fresh.attempts_needed;
                            v.interval_secs = fresh.interval_secs;
                            v.if_group = fresh.if_group;
                            v.handlers = fresh.handlers;
                            v.error = fresh.error;
                        }
                        None => {
                            s.checks.insert(c.spec.name.clone(), fresh);
                        }
                    }
                }
            });
            publish_summary(&gossip, &handle).await;
        }
        let now = Instant::now();
        let mut ttl_results = Vec::new();
        for slot in &mut slots {
            if !slot.active || slot.in_flight || slot.next_run > now {
                continue;
            }
            if let CheckKind::Ttl { ttl } = slot.spec.kind {
                // Nothing runs: the TTL passed without news.
                slot.next_run = now + ttl;
                ttl_results.push(RunResult {
                    index: slot.id,
                    state: CheckState::Critical,
                    output: format!(
                        "CRITICAL: TTL of {:?} expired without a status (`opsbro monitoring ttl pass {}`)",
                        ttl,
                        slot.spec.name
                    ),
                    long_output: String::new(),
                    perfdata: Vec::new(),
                });
                continue;
            }
            if let Some(name) = awaited_collector(&slot.spec, &collected) {
                // Its application collector has not run since this host joined its group:
                // judging now would read nothing and say CRITICAL for a server that is fine.
                tracing::debug!(check = %slot.spec.name, collector = name, "waiting for collector");
                slot.next_run = now + COLLECTOR_WAIT;
                continue;
            }
            slot.in_flight = true;
            slot.next_run = now + jittered(slot.spec.interval);
            let (i, spec, parameters, evaluator, collected, plugins_dir, tx) = (
                slot.id,
                slot.spec.clone(),
                parameters.clone(),
                evaluator.clone(),
                collected.clone(),
                plugins_dir.clone(),
                tx.clone(),
            );
            let task = tasks.spawn(async move {
                let result = match &spec.kind {
                    _ if spec.error.is_some() => RunResult::unknown(
                        i,
                        format!("UNKNOWN: {}", spec.error.clone().unwrap_or_default()),
                    ),
                    CheckKind::Expression { .. } => {
                        let spec = spec.clone();
                        tokio::task::spawn_blocking(move || {
                            let params = parameters.get(&spec.pack).cloned().unwrap_or(Value::Null);
                            run_expression(i, &spec, &evaluator, &collected, &params)
                        })
                        .await
                        .unwrap_or_else(|e| {
                            RunResult::unknown(i, format!("UNKNOWN: the check failed: {e}"))
                        })
                    }
                    CheckKind::Script { script } => {
                        let params = parameters.get(&spec.pack).unwrap_or(&Value::Null);
                        run_script(i, script, &spec, params, &plugins_dir).await
                    }
                    CheckKind::Tcp { address } => native::run_tcp(i, address, spec.timeout).await,
                    CheckKind::Http(probe) => native::run_http(i, probe, spec.timeout).await,
                    CheckKind::Ttl { .. } => {
                        RunResult::unknown(i, "UNKNOWN: a TTL check does not run".into())
                    }
                };
                let _ = tx.send(result).await;
            });
            task_slots.insert(task.id(), slot.id);
        }
        // TTL statuses that arrived, and TTLs that expired.
        let pending = {
            let mut taken = Vec::new();
            handle.update(|s| taken = std::mem::take(&mut s.ttl_pending));
            taken
        };
        for (name, state, output) in pending {
            if let Some(slot) = slots.iter_mut().find(|s| s.active && s.spec.name == name)
                && let CheckKind::Ttl { ttl } = slot.spec.kind
            {
                slot.next_run = now + ttl;
                ttl_results.push(RunResult {
                    index: slot.id,
                    state,
                    output,
                    long_output: String::new(),
                    perfdata: Vec::new(),
                });
            }
        }
        let mut ttl_changed = false;
        for result in ttl_results {
            if let Some(slot) = slots.iter_mut().find(|s| s.id == result.index) {
                ttl_changed |= apply(&slot.spec, &mut slot.tracker, result, &handle, &bus);
            }
        }
        if ttl_changed {
            publish_summary(&gossip, &handle).await;
            save_states(&state_file, &handle);
        }
        let wake = slots
            .iter()
            .filter(|s| s.active && !s.in_flight)
            .map(|s| s.next_run)
            .min()
            .unwrap_or(now + Duration::from_secs(1))
            // Look at the groups at least every second.
            .min(now + Duration::from_secs(1));
        tokio::select! {
            () = shutdown.cancelled() => {
                tasks.abort_all();
                return;
            }
            Some(result) = rx.recv() => {
                // A check removed by a reload while it ran: its result goes nowhere.
                let Some(slot) = slots.iter_mut().find(|s| s.id == result.index) else {
                    continue;
                };
                slot.in_flight = false;
                if !result.perfdata.is_empty() {
                    metrics.ingest(&crate::metrics::perfdata_points(
                        &slot.spec.name,
                        result.perfdata.iter().map(|p| (p.label.as_str(), p.value)),
                        crate::host::unix_ms() / 1000,
                    ));
                }
                if slot.active && apply(&slot.spec, &mut slot.tracker, result, &handle, &bus) {
                    publish_summary(&gossip, &handle).await;
                    save_states(&state_file, &handle);
                }
            }
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                match joined {
                    Ok((id, ())) => {
                        task_slots.remove(&id);
                    }
                    Err(e) => {
                        // A bug, not a check result: report it as UNKNOWN and keep running.
                        let id = task_slots.remove(&e.id());
                        if let Some(slot) = slots.iter_mut().find(|s| Some(s.id) == id) {
                            tracing::error!(check = %slot.spec.name, error = %e, "check task failed");
                            slot.in_flight = false;
                            let failed = RunResult::unknown(slot.id, format!("UNKNOWN: the check task failed: {e}"));
                            if slot.active && apply(&slot.spec, &mut slot.tracker, failed, &handle, &bus) {
                                publish_summary(&gossip, &handle).await;
                                save_states(&state_file, &handle);
                            }
                        }
                    }
                }
            }
            () = handle.ttl_news.notified() => {}
            Ok(()) = objects.changed() => {
                let set = objects.borrow_and_update().clone();
                let checks: Vec<CheckSpec> = set.checks().cloned().collect();
                slots = build_slots(&checks, std::mem::take(&mut slots), &saved, &mut next_id);
                parameters = Arc::new(pack_parameters(&set));
                views_stale = true;
                save_states(&state_file, &handle);
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
        }
    }
}

/// Pack name → its parameters (`{{parameters.x}}`, `$macro$` defaults).
fn pack_parameters(set: &opsbro_packs::PackSet) -> HashMap<String, Value> {
    set.packs
        .values()
        .map(|p| (p.name.clone(), p.parameters.clone()))
        .collect()
}

/// Record a result; true when it confirmed a change of state.
fn apply(
    spec: &CheckSpec,
    tracker: &mut Tracker,
    result: RunResult,
    handle: &MonitoringHandle,
    bus: &EventBus,
) -> bool {
    let now_ms = crate::host::unix_ms();
    let change = tracker.record(result.state);
    let mut notify = None;
    handle.update(|s| {
        let Some(view) = s.checks.get_mut(&spec.name) else {
            return;
        };
        view.runs += 1;
        view.last_run_ms = Some(now_ms);
        view.last_result = result.state.as_str().into();
        view.output = result.output.clone();
        view.long_output = result.long_output.clone();
        view.perfdata = result.perfdata;
        view.attempts = tracker.attempts();
        view.attempts_needed = tracker.attempts_needed();
        if let Some(c) = change {
            view.state = c.new.as_str().into();
            view.state_id = c.new.state_id();
            view.last_change_ms = Some(now_ms);
            tracing::info!(check = %spec.name, old = %c.old, new = %c.new, output = %result.output, "check state changed");
            s.history.push_back(HistoryEntry {
                time_ms: now_ms,
                check: spec.name.clone(),
                display_name: spec.display_name.clone(),
                old_state: c.old.as_str().into(),
                state: c.new.as_str().into(),
                output: result.output.clone(),
            });
            while s.history.len() > HISTORY {
                s.history.pop_front();
            }
            // A first OK after start is not news for handlers; a first problem is.
            let news = !(c.old == CheckState::Pending && c.new == CheckState::Ok);
            {
                notify = Some((news, Notification::Check {
                    name: spec.name.clone(),
                    display_name: spec.display_name.clone(),
                    pack: spec.pack.clone(),
                    state: c.new,
                    old_state: c.old,
                    output: result.output.clone(),
                    long_output: result.long_output.clone(),
                }));
            }
        }
    });
    if let Some((news, n)) = notify {
        bus.notify(n, news);
    }
    change.is_some()
}

async fn publish_summary(gossip: &GossipHandle, handle: &MonitoringHandle) {
    // Peers refuse records over the wire limits: leave out what cannot travel.
    let summary = handle
        .confirmed()
        .into_iter()
        .filter(|(name, _)| name.len() <= opsbro_gossip::codec::MAX_CHECK_NAME)
        .take(opsbro_gossip::codec::MAX_CHECKS)
        .map(|(name, state)| opsbro_gossip::CheckSummary {
            state: state.to_wire(),
            name,
        })
        .collect();
    let _ = gossip.set_checks(summary).await;
    handle.changed();
}

fn save_states(file: &std::path::Path, handle: &MonitoringHandle) {
    let states: BTreeMap<String, &str> = handle
        .confirmed()
        .into_iter()
        .map(|(name, state)| (name, state.as_str()))
        .collect();
    let bytes = serde_json::to_vec_pretty(&states).unwrap_or_default();
    if let Err(e) = crate::datadir::write_atomic(file, &bytes) {
        tracing::warn!(error = %e, file = %file.display(), "cannot save check states");
    }
}

/// The values a check's `$macro$`s read: its pack's parameters, overridden by the check's own
/// keys (a mapping in both is merged key by key).
fn macro_keys(own: &Value, params: &Value) -> Value {
    match (params, own) {
        (Value::Object(p), Value::Object(o)) => {
            let mut merged = p.clone();
            for (k, v) in o {
                let v = match merged.get(k) {
                    Some(base) => macro_keys(v, base),
                    None => v.clone(),
                };
                merged.insert(k.clone(), v);
            }
            Value::Object(merged)
        }
        (_, Value::Null) => params.clone(),
        _ => own.clone(),
    }
}

/// `{{parameters.<rest>}}` in a pack's parameters; `parameters.a|b` is the first of a, b that
/// exists (as the original).
pub fn parameter(params: &Value, rest: &str) -> Option<Value> {
    rest.split('|')
        .find_map(|alt| opsbro_collectors::lookup_in(params, alt.trim()).cloned())
}

/// `{{variables.<name>[.path]}}`: a variable's value (evaluated earlier), or a part of it.
pub(crate) fn variable(vars: &serde_json::Map<String, Value>, rest: &str) -> Option<Value> {
    let (name, more) = rest.split_once('.').unwrap_or((rest, ""));
    opsbro_collectors::lookup_in(vars.get(name)?, more).cloned()
}

/// How long a check waits before looking again for the first run of a collector it reads.
const COLLECTOR_WAIT: Duration = Duration::from_secs(1);

/// The application collector an expression check reads that has no result yet on this host
/// (pending, or not eligible before the host joined its group), if any.
fn awaited_collector(spec: &CheckSpec, collected: &CollectedData) -> Option<&'static str> {
    let CheckKind::Expression {
        ok_output,
        critical_if,
        critical_output,
        warning_if,
        warning_output,
    } = &spec.kind
    else {
        return None;
    };
    let texts: Vec<&str> = [
        ok_output,
        critical_if,
        critical_output,
        warning_if,
        warning_output,
    ]
    .into_iter()
    .flatten()
    .map(String::as_str)
    .chain(spec.variables.iter().map(|(_, e)| e.as_str()))
    .collect();
    opsbro_apps::names().into_iter().find(|name| {
        let needle = format!("collector.{name}.");
        texts.iter().any(|t| t.contains(&needle))
            && !matches!(collected.state(name).as_deref(), Some("ok" | "error"))
    })
}

/// Placeholders of a check: `collector.`, `parameters.` (its pack's), `configuration.` (its own
/// keys, e.g. `configuration.thresholds.cpuidle.warning`) and `variables.`.
fn check_resolver<'a>(
    spec: &'a CheckSpec,
    collected: &'a CollectedData,
    params: &'a Value,
    vars: &'a serde_json::Map<String, Value>,
) -> impl Fn(&str) -> Option<Value> + 'a {
    move |path: &str| {
        let (root, rest) = path.split_once('.').unwrap_or((path, ""));
        match root {
            "collector" => collected.lookup(rest),
            "parameters" => parameter(params, rest),
            "configuration" => opsbro_collectors::lookup_in(&spec.keys, rest).cloned(),
            "variables" => variable(vars, rest),
            _ => None,
        }
    }
}

fn run_expression(
    index: usize,
    spec: &CheckSpec,
    evaluator: &Evaluator,
    collected: &CollectedData,
    params: &Value,
) -> RunResult {
    let CheckKind::Expression {
        ok_output,
        critical_if,
        critical_output,
        warning_if,
        warning_output,
    } = &spec.kind
    else {
        return RunResult::unknown(index, "UNKNOWN: not an expression check".into());
    };
    let mut vars = serde_json::Map::new();
    for (name, expr) in &spec.variables {
        let result = evaluator.eval(expr, &check_resolver(spec, collected, params, &vars));
        match result {
            Ok(v) => {
                vars.insert(name.clone(), v);
            }
            Err(e) => {
                return RunResult::unknown(index, format!("UNKNOWN: variables.{name}: {e}"));
            }
        }
    }
    let resolver = check_resolver(spec, collected, params, &vars);
    let condition = |key: &str, expr: &Option<String>| -> Result<bool, String> {
        match expr {
            Some(e) => evaluator
                .eval_bool(e, &resolver)
                .map_err(|err| format!("UNKNOWN: {key}: {err}")),
            None => Ok(false),
        }
    };
    let output = |key: &str, expr: &Option<String>| -> String {
        match expr {
            Some(e) => evaluator
                .eval_string(e, &resolver)
                .unwrap_or_else(|err| format!("{key}: {err}")),
            None => String::new(),
        }
    };
    let (state, text) = match condition("critical_if", critical_if) {
        Err(m) => return RunResult::unknown(index, m),
        Ok(true) => (
            CheckState::Critical,
            output("critical_output", critical_output),
        ),
        Ok(false) => match condition("warning_if", warning_if) {
            Err(m) => return RunResult::unknown(index, m),
            Ok(true) => (
                CheckState::Warning,
                output("warning_output", warning_output),
            ),
            Ok(false) => (CheckState::Ok, output("ok_output", ok_output)),
        },
    };
    RunResult {
        index,
        state,
        output: text,
        long_output: String::new(),
        perfdata: Vec::new(),
    }
}

/// Read everything `r` sends, keeping the first [`nagios::MAX_OUTPUT`] bytes (reading on so the
/// plugin never blocks on a full pipe).
pub(crate) async fn read_capped(mut r: impl tokio::io::AsyncRead + Unpin) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    let mut cut = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, cut),
            Ok(n) => {
                let room = nagios::MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                cut |= n > room;
            }
        }
    }
}

async fn run_script(
    index: usize,
    script: &str,
    spec: &CheckSpec,
    params: &Value,
    plugins_dir: &str,
) -> RunResult {
    // `$macro$`s read the check's own keys first, then its pack's parameters (as the original).
    let keys = macro_keys(&spec.keys, params);
    let command = match nagios::substitute(script, &keys, plugins_dir) {
        Ok(c) => c,
        Err(e) => return RunResult::unknown(index, format!("UNKNOWN: {e}")),
    };
    let mut child = match crate::host::shell(&command).spawn() {
        Ok(c) => c,
        Err(e) => return RunResult::unknown(index, format!("UNKNOWN: cannot run /bin/sh: {e}")),
    };
    // Dropped with this future (agent shutdown) or at the timeout: the whole group goes.
    let mut guard = crate::host::ProcessGroupGuard::new(child.id());
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return RunResult::unknown(index, "UNKNOWN: no pipes to the plugin".into());
    };
    let finished = tokio::time::timeout(spec.timeout, async {
        let (out, err, status) =
            tokio::join!(read_capped(stdout), read_capped(stderr), child.wait());
        (out, err, status)
    })
    .await;
    let Ok(((out, out_cut), (err, _), status)) = finished else {
        // The whole group: a plugin's own children must not outlive it.
        guard.kill();
        let _ = child.wait().await;
        tracing::warn!(check = %spec.name, timeout = ?spec.timeout, "check timed out; its process group was killed");
        return RunResult::unknown(
            index,
            format!(
                "UNKNOWN: timeout: the plugin did not finish in {:?} and was killed",
                spec.timeout
            ),
        );
    };
    guard.disarm();
    let code = status.ok().and_then(|s| s.code());
    let text_bytes = if out.iter().all(u8::is_ascii_whitespace) {
        err
    } else {
        out
    };
    let (text, _) = nagios::cap_output(&text_bytes);
    let parsed = nagios::parse_output(&text);
    let mut long_output = parsed.long_output;
    if out_cut {
        long_output.push_str("\n[output cut at 4 KiB]");
    }
    let state = CheckState::from_exit_code(code);
    let output = if parsed.output.is_empty() && code.is_none() {
        "UNKNOWN: the plugin was killed by a signal".to_owned()
    } else {
        parsed.output
    };
    RunResult {
        index,
        state,
        output,
        long_output,
        perfdata: parsed
            .perfdata
            .into_iter()
            .map(|p| PerfData {
                label: p.label,
                value: p.value,
                unit: p.unit,
                warning: p.warning,
                critical: p.critical,
                min: p.min,
                max: p.max,
            })
            .collect(),
    }
}
