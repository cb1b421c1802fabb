//! The collector loop: runs every collector on its interval (on a blocking thread: it reads
//! /proc and /sys), keeps the latest data for the API and for expressions
//! (`{{collector.<name>.<path>}}`), and adds the `gossip` collector from the cluster snapshot.
//! It also keeps each collector's state changes (`opsbro collectors history`) and runs one
//! collector at once when the API asks (`opsbro collectors run NAME`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use opsbro_api::collectors::{Collector, CollectorChange};
use opsbro_collectors::{Collectors, NAMES, Outcome};
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
    pub fn lookup(&self, path: &str) -> Option<serde_json::Value> {
        let guard = self.values.read().unwrap_or_else(PoisonError::into_inner);
        let (name, rest) = path.split_once('.').unwrap_or((path, ""));
        let c = guard.get(name).filter(|c| c.state == "ok")?;
        opsbro_collectors::lookup_in(&c.data, rest).cloned()
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
            .chain(std::iter::once(&GOSSIP))
            .find(|n| **n == name)
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

/// Run the collectors every [`INTERVAL`] until `shutdown`; `first_run` becomes true after the
/// first pass (detectors wait for it, so their expressions see collector values).
pub async fn run(
    data: CollectedData,
    view: SharedView,
    zone: watch::Receiver<String>,
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
    };
    let mut collectors = Some(Collectors::new());
    let mut next_pass = tokio::time::Instant::now();
    loop {
        // One collector on request, or every collector when the pass is due.
        let only: Option<RunRequest> = tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(next_pass) => None,
            Some(request) = requests.recv() => Some(request),
        };
        let Some(mut c) = collectors.take() else {
            return;
        };
        let names: Vec<&'static str> = match &only {
            Some((name, _)) if *name == GOSSIP => Vec::new(),
            Some((name, _)) => vec![*name],
            None => NAMES.to_vec(),
        };
        let result = tokio::task::spawn_blocking(move || {
            let out: Vec<(&'static str, Outcome)> =
                names.iter().map(|n| (*n, c.collect(n))).collect();
            (c, out)
        })
        .await;
        let Ok((c, outcomes)) = result else {
            tracing::error!("collector task panicked; collectors stopped");
            status.set(
                "collectors",
                SubsystemState::Error,
                Some("collector task panicked".into()),
            );
            return;
        };
        collectors = Some(c);
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
                        Some(format!("{} collectors, {errors} failing", NAMES.len() + 1)),
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
