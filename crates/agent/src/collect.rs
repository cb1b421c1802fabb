//! The collector loop: runs every collector on its interval (on a blocking thread: it reads
//! /proc and /sys), keeps the latest data for the API and for expressions
//! (`{{collector.<name>.<path>}}`), and adds the `gossip` collector from the cluster snapshot.
//! It also keeps each collector's state changes (`opsbro collectors history`) and runs one
//! collector at once when the API asks (`opsbro collectors run NAME`).
//!
//! After the Linux collectors come the application collectors (`opsbro_apps`: redis, mysql,
//! ...), concurrently, each under its timeout, with its pack's parameters, on hosts in its group
//! only. One whose server cannot be reached is `error` with the reason and keeps
//! `{available: false, error}` as its data, so checks can say why (`{{collector.redis.error}}`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use opsbro_api::collectors::{Collector, CollectorChange};
use opsbro_apps::AppCollector;
use opsbro_collectors::{Collectors, NAMES, Outcome};
use opsbro_eval::EvalContext;
use opsbro_types::SubsystemState;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::eval::SharedView;
use crate::status::Status;

/// How often collectors run (SPEC §6).
pub const INTERVAL: Duration = Duration::from_secs(10);

/// State changes kept for `collectors history`.
const HISTORY_KEEP: usize = 500;

/// A request to run one collector now, answered with its result.
type RunRequest = (&'static str, oneshot::Sender<Collector>);

/// Latest collector results, shared with the API and the evaluator's resolver.
#[derive(Clone)]
pub struct CollectedData {
    values: Arc<RwLock<BTreeMap<String, Collector>>>,
    history: Arc<Mutex<VecDeque<CollectorChange>>>,
    run_tx: mpsc::Sender<RunRequest>,
    /// Taken by the loop when it starts.
    run_rx: Arc<Mutex<Option<mpsc::Receiver<RunRequest>>>>,
}

impl Default for CollectedData {
    fn default() -> Self {
        // A few at once is plenty: each waits for a run of its own.
        let (run_tx, run_rx) = mpsc::channel(16);
        CollectedData {
            values: Arc::default(),
            history: Arc::default(),
            run_tx,
            run_rx: Arc::new(Mutex::new(Some(run_rx))),
        }
    }
}

/// Why a collector could not be run on request.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No collector has that name.
    #[error("no collector named `{0}` (see `opsbro collectors list`)")]
    Unknown(String),
    /// The collector loop is not running (the agent is stopping).
    #[error("the collectors are not running")]
    Stopped,
}

impl CollectedData {
    /// A copy of every collector's latest result.
    pub fn all(&self) -> BTreeMap<String, Collector> {
        self.values
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The value at `collector.<path>` for expressions (`path` without the `collector.` prefix).
    /// A collector in error answers from what it kept (`available`/`error` of an application).
    pub fn lookup(&self, path: &str) -> Option<serde_json::Value> {
        let guard = self.values.read().unwrap_or_else(PoisonError::into_inner);
        let (name, rest) = path.split_once('.').unwrap_or((path, ""));
        let c = guard
            .get(name)
            .filter(|c| c.state == "ok" || (c.state == "error" && !c.data.is_null()))?;
        opsbro_collectors::lookup_in(&c.data, rest).cloned()
    }

    /// The state of collector `name` (`ok`, `error`, `not-eligible`), None before its first run.
    pub fn state(&self, name: &str) -> Option<String> {
        let guard = self.values.read().unwrap_or_else(PoisonError::into_inner);
        guard.get(name).map(|c| c.state.clone())
    }

    /// Every state change kept, oldest first.
    pub fn history(&self) -> Vec<CollectorChange> {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Run collector `name` now (the loop runs it between two passes) and return its result,
    /// which is also kept as its latest.
    pub async fn run_now(&self, name: &str) -> Result<Collector, RunError> {
        let name = NAMES
            .iter()
            .copied()
            .chain(std::iter::once(GOSSIP))
            .chain(opsbro_apps::names())
            .find(|n| *n == name)
            .ok_or_else(|| RunError::Unknown(name.to_owned()))?;
        let (tx, rx) = oneshot::channel();
        self.run_tx
            .send((name, tx))
            .await
            .map_err(|_| RunError::Stopped)?;
        rx.await.map_err(|_| RunError::Stopped)
    }

    /// Keep `result` as `name`'s latest, recording a change of state.
    fn store(&self, name: &str, result: Collector) {
        let mut map = self.values.write().unwrap_or_else(PoisonError::into_inner);
        let old_state = map.get(name).map_or("pending", |c| c.state.as_str());
        if old_state != result.state {
            let change = CollectorChange {
                time_ms: result.last_run_ms.unwrap_or_else(crate::host::unix_ms),
                name: name.to_owned(),
                old_state: old_state.to_owned(),
                state: result.state.clone(),
                message: result.message.clone(),
            };
            let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            if history.len() == HISTORY_KEEP {
                history.pop_front();
            }
            history.push_back(change);
        }
        map.insert(name.to_owned(), result);
    }
}

/// The collector made from the cluster snapshot rather than from the host.
const GOSSIP: &str = "gossip";

/// Resolves expression placeholders: `collector.x.y` from the collectors; other roots are not
/// known to the agent-wide evaluator (checks add their own `configuration.`/`variables.`).
pub fn resolver(data: &CollectedData) -> impl Fn(&str) -> Option<serde_json::Value> + '_ {
    move |path: &str| path.strip_prefix("collector.").and_then(|p| data.lookup(p))
}

/// What the loop needs besides the shared data.
struct Loop {
    data: CollectedData,
    view: SharedView,
    zone: watch::Receiver<String>,
    metrics: crate::metrics::MetricsHandle,
    /// Pack parameters (the application collectors' connection settings).
    objects: watch::Receiver<Arc<opsbro_packs::PackSet>>,
}

/// The most an application collector may take beyond its own `timeout` parameter (it should
/// give up by itself; this stops one that does not).
const APP_GRACE: Duration = Duration::from_secs(2);

/// How often the loop looks for application collectors that became eligible (groups changed).
const GROUP_WATCH: Duration = Duration::from_secs(1);

/// Why an application collector does not run on this host.
fn not_in_group(group: &str) -> String {
    format!(
        "this host is not in group `{group}` (the `{group}` pack's detector adds it when the \
         server is installed or running; or add it to `groups` in agent.yml)"
    )
}

impl Loop {
    /// Turn outcomes into results (and points for the time series), keep them, and count the
    /// errors.
    fn keep(&self, outcomes: Vec<(&'static str, Outcome)>, now: u64) -> usize {
        let mut errors = 0;
        let mut points = Vec::new();
        for (name, outcome) in outcomes {
            let (state, value, message) = match outcome {
                Outcome::Ok(v) => {
                    points.extend(crate::metrics::collector_points(name, &v, now / 1000));
                    ("ok", v, None)
                }
                Outcome::NotEligible(m) => ("not-eligible", serde_json::Value::Null, Some(m)),
                Outcome::Error(m) => {
                    errors += 1;
                    tracing::warn!(collector = name, error = %m, "collector failed");
                    ("error", serde_json::Value::Null, Some(m))
                }
                Outcome::Unavailable(m) => {
                    // An application whose server is down: `available` false, and why.
                    errors += 1;
                    tracing::warn!(collector = name, error = %m, "collector failed");
                    let data = serde_json::json!({"available": false, "error": m});
                    points.extend(crate::metrics::collector_points(name, &data, now / 1000));
                    ("error", data, Some(m))
                }
            };
            self.data.store(
                name,
                Collector {
                    state: state.to_owned(),
                    last_run_ms: Some(now),
                    data: value,
                    message,
                },
            );
        }
        self.metrics.ingest(&points);
        errors
    }

    fn keep_gossip(&self, now: u64) {
        // Every known member, whatever its group or state.
        let known = opsbro_eval::EvalContext::count_nodes(&self.view, "", "");
        self.data.store(
            GOSSIP,
            Collector {
                state: "ok".to_owned(),
                last_run_ms: Some(now),
                data: serde_json::json!({ "zone": *self.zone.borrow(), "nb_known_nodes": known }),
                message: None,
            },
        );
    }
}

impl Loop {
    /// The application collectors this host runs now (by its groups).
    fn eligible_apps(&self, apps: &[Box<dyn AppCollector>]) -> Vec<&'static str> {
        let groups = self.view.groups();
        apps.iter()
            .filter(|c| c.group().is_none_or(|g| groups.iter().any(|x| x == g)))
            .map(|c| c.name())
            .collect()
    }

    /// Run the application collectors that `wanted` names, concurrently.
    async fn run_apps(
        &self,
        apps: &mut [Box<dyn AppCollector>],
        wanted: impl Fn(&str) -> bool,
    ) -> Vec<(&'static str, Outcome)> {
        let groups = self.view.groups();
        let set = self.objects.borrow().clone();
        let runs = apps.iter_mut().filter(|c| wanted(c.name())).map(|c| {
            let name = c.name();
            let eligible = c.group().is_none_or(|g| groups.iter().any(|x| x == g));
            let params = set
                .packs
                .get(c.pack())
                .and_then(|p| p.parameters.as_object().cloned())
                .unwrap_or_default();
            let group = c.group().unwrap_or_default();
            async move {
                if !eligible {
                    return (name, Outcome::NotEligible(not_in_group(group)));
                }
                let limit = opsbro_apps::timeout_of(&params) + APP_GRACE;
                let outcome = match tokio::time::timeout(limit, c.collect(&params)).await {
                    Ok(Ok(serde_json::Value::Object(m))) if m.is_empty() => {
                        Outcome::NotEligible("nothing to report on this host".into())
                    }
                    Ok(Ok(v)) => Outcome::Ok(v),
                    Ok(Err(e)) => Outcome::Unavailable(e),
                    Err(_) => {
                        Outcome::Unavailable(format!("no answer within {} s", limit.as_secs_f64()))
                    }
                };
                (name, outcome)
            }
        });
        futures_util::future::join_all(runs).await
    }
}

/// Run the collectors every [`INTERVAL`] until `shutdown`; `first_run` becomes true after the
/// first pass (detectors wait for it, so their expressions see collector values).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    data: CollectedData,
    view: SharedView,
    zone: watch::Receiver<String>,
    objects: watch::Receiver<Arc<opsbro_packs::PackSet>>,
    status: Status,
    metrics: crate::metrics::MetricsHandle,
    first_run: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let Some(mut requests) = data
        .run_rx
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    else {
        tracing::error!("the collector loop was started twice");
        return;
    };
    let me = Loop {
        data,
        view,
        zone,
        metrics,
        objects,
    };
    let mut apps = opsbro_apps::all();
    // The cloud collectors read the hosting detection made at start.
    apps.extend(opsbro_apps::clouds::collectors(&me.view.hosting()));
    let app_names = opsbro_apps::names();
    let mut collectors = Some(Collectors::new());
    let mut next_pass = tokio::time::Instant::now();
    let mut eligible = me.eligible_apps(&apps);
    let mut group_watch = tokio::time::interval(GROUP_WATCH);
    group_watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // One collector on request, or every collector when the pass is due.
        let only: Option<RunRequest> = tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(next_pass) => None,
            Some(request) = requests.recv() => Some(request),
            _ = group_watch.tick() => {
                // A host that just joined `redis` gets collector.redis now, not in 10 s.
                let now_eligible = me.eligible_apps(&apps);
                let joined: Vec<&str> = now_eligible
                    .iter()
                    .copied()
                    .filter(|n| !eligible.contains(n))
                    .collect();
                eligible = now_eligible;
                if !joined.is_empty() {
                    let outcomes = me.run_apps(&mut apps, |n| joined.contains(&n)).await;
                    me.keep(outcomes, crate::host::unix_ms());
                }
                continue;
            }
        };
        let Some(mut c) = collectors.take() else {
            return;
        };
        let only_app = only
            .as_ref()
            .map(|(name, _)| *name)
            .filter(|n| app_names.contains(n));
        let names: Vec<&'static str> = match &only {
            Some((name, _)) if *name == GOSSIP || only_app.is_some() => Vec::new(),
            Some((name, _)) => vec![*name],
            None => NAMES.to_vec(),
        };
        let result = tokio::task::spawn_blocking(move || {
            let out: Vec<(&'static str, Outcome)> =
                names.iter().map(|n| (*n, c.collect(n))).collect();
            (c, out)
        })
        .await;
        let Ok((c, mut outcomes)) = result else {
            tracing::error!("collector task panicked; collectors stopped");
            status.set(
                "collectors",
                SubsystemState::Error,
                Some("collector task panicked".into()),
            );
            return;
        };
        collectors = Some(c);
        if only.is_none() || only_app.is_some() {
            let ran = me
                .run_apps(&mut apps, |n| only_app.is_none_or(|o| o == n))
                .await;
            outcomes.extend(ran);
        }
        let now = crate::host::unix_ms();
        let errors = me.keep(outcomes, now);
        match only {
            Some((name, reply)) => {
                if name == GOSSIP {
                    me.keep_gossip(now);
                }
                if let Some(result) = me.data.all().remove(name) {
                    let _ = reply.send(result);
                }
            }
            None => {
                me.keep_gossip(now);
                next_pass = tokio::time::Instant::now() + INTERVAL;
                if !*first_run.borrow() {
                    first_run.send_replace(true);
                    status.set(
                        "collectors",
                        SubsystemState::Ok,
                        Some(format!(
                            "{} collectors, {errors} failing",
                            NAMES.len() + app_names.len() + 1
                        )),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(state: &str, at: u64) -> Collector {
        Collector {
            state: state.to_owned(),
            last_run_ms: Some(at),
            data: serde_json::Value::Null,
            message: (state != "ok").then(|| "why".to_owned()),
        }
    }

    #[test]
    fn only_state_changes_are_history() {
        let data = CollectedData::default();
        data.store("memory", result("ok", 1));
        data.store("memory", result("ok", 2));
        data.store("memory", result("error", 3));
        data.store("memory", result("ok", 4));
        let states: Vec<(u64, String, String)> = data
            .history()
            .into_iter()
            .map(|c| (c.time_ms, c.old_state, c.state))
            .collect();
        assert_eq!(
            states,
            vec![
                (1, "pending".into(), "ok".into()),
                (3, "ok".into(), "error".into()),
                (4, "error".into(), "ok".into()),
            ]
        );
        assert_eq!(data.history()[1].message.as_deref(), Some("why"));
    }
}
