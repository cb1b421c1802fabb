//! The collector loop: runs every collector on its interval (on a blocking thread: it reads
//! /proc and /sys), keeps the latest data for the API and for expressions
//! (`{{collector.<name>.<path>}}`), and adds the `gossip` collector from the cluster snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use opsbro_api::collectors::Collector;
use opsbro_collectors::{Collectors, NAMES, Outcome};
use opsbro_types::SubsystemState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::eval::SharedView;
use crate::status::Status;

/// How often collectors run (SPEC §6).
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Latest collector results, shared with the API and the evaluator's resolver.
#[derive(Clone, Default)]
pub struct CollectedData(Arc<RwLock<BTreeMap<String, Collector>>>);

impl CollectedData {
    /// A copy of every collector's latest result.
    pub fn all(&self) -> BTreeMap<String, Collector> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The value at `collector.<path>` for expressions (`path` without the `collector.` prefix).
    pub fn lookup(&self, path: &str) -> Option<serde_json::Value> {
        let guard = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let (name, rest) = path.split_once('.').unwrap_or((path, ""));
        let c = guard.get(name).filter(|c| c.state == "ok")?;
        opsbro_collectors::lookup_in(&c.data, rest).cloned()
    }
}

/// Resolves expression placeholders: `collector.x.y` from the collectors; other roots are not
/// known to the agent-wide evaluator (checks add their own `configuration.`/`variables.`).
pub fn resolver(data: &CollectedData) -> impl Fn(&str) -> Option<serde_json::Value> + '_ {
    move |path: &str| path.strip_prefix("collector.").and_then(|p| data.lookup(p))
}

/// Run the collectors every [`INTERVAL`] until `shutdown`; `first_run` becomes true after the
/// first pass (detectors wait for it, so their expressions see collector values).
pub async fn run(
    data: CollectedData,
    view: SharedView,
    zone: String,
    status: Status,
    metrics: crate::metrics::MetricsHandle,
    first_run: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut collectors = Some(Collectors::new());
    loop {
        let Some(mut c) = collectors.take() else {
            return;
        };
        let result = tokio::task::spawn_blocking(move || {
            let out: Vec<(&'static str, Outcome)> =
                NAMES.iter().map(|n| (*n, c.collect(n))).collect();
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
        let mut errors = 0;
        let mut points = Vec::new();
        {
            let mut map = data.0.write().unwrap_or_else(PoisonError::into_inner);
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
                map.insert(
                    name.to_owned(),
                    Collector {
                        state: state.to_owned(),
                        last_run_ms: Some(now),
                        data: value,
                        message,
                    },
                );
            }
            let known = view
                .0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .members
                .len();
            map.insert(
                "gossip".to_owned(),
                Collector {
                    state: "ok".to_owned(),
                    last_run_ms: Some(now),
                    data: serde_json::json!({ "zone": zone, "nb_known_nodes": known }),
                    message: None,
                },
            );
        }
        metrics.ingest(&points);
        if !*first_run.borrow() {
            first_run.send_replace(true);
            status.set(
                "collectors",
                SubsystemState::Ok,
                Some(format!("{} collectors, {errors} failing", NAMES.len() + 1)),
            );
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
}
