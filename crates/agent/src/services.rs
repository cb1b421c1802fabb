//! This node's services: the `service:` objects of the packs (and of `opsbro services
//! register`) whose `if_group` matches, each with the health of its checks, and maintenance
//! mode. One task turns them into the service records of this node's gossip record, whenever
//! the objects, the groups, a check's confirmed state or a maintenance switch changes.
//!
//! * Health of a service: the worst confirmed state of its checks — all OK → `passing`; one in
//!   WARNING → `warning`; one still pending → `pending`; one CRITICAL, UNKNOWN or not active on
//!   this node → `critical`. A service without checks is `passing`.
//! * Maintenance (`opsbro agent maintenance on`, `opsbro services maintenance web on`) is kept
//!   in `<data_dir>/maintenance.json` so a restart does not bring a node back into DNS before
//!   its operator does; a node's maintenance is in its first gossip record.
//! * Services registered through the API are files in `<data_dir>/services/`, loaded with the
//!   local objects (pack `local`), so they have inline checks, diagnostics and reloads like any
//!   object.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use opsbro_api::catalog::{LocalService, ServiceCheck};
use opsbro_checks::CheckState;
use opsbro_gossip::ServiceRecord;
use opsbro_packs::{PackSet, ServiceSpec};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::eval::SharedView;
use crate::gossip::GossipHandle;
use crate::membership::{health, health_word};
use crate::monitoring::MonitoringHandle;
use opsbro_eval::EvalContext;

/// Where registered services are kept, under the data dir.
pub const REGISTERED_DIR: &str = "services";
/// Where maintenance switches are kept, under the data dir.
pub const MAINTENANCE_FILE: &str = "maintenance.json";

/// Maintenance switches, as kept on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Switches {
    /// The node's reason, when it is in maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// Service name → reason.
    #[serde(default)]
    services: BTreeMap<String, String>,
}

/// Why a maintenance switch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaintenanceError {
    /// No service of that name is declared here.
    #[error("no service named `{0}` is declared on this node (see `opsbro services list --local`)")]
    UnknownService(String),
    /// The reason is not text we can gossip.
    #[error("reason: {0}")]
    BadReason(String),
    /// The switch could not be kept on disk.
    #[error("cannot keep the maintenance switch in {0}: {1}")]
    Io(String, String),
}

/// This node's services and maintenance switches, shared with the API.
#[derive(Clone)]
pub struct ServicesHandle {
    switches: Arc<Mutex<Switches>>,
    file: PathBuf,
    wake: Arc<Notify>,
    local: Arc<RwLock<Vec<LocalService>>>,
}

impl ServicesHandle {
    /// The switches kept in `data_dir` (a damaged file is reported and taken as empty).
    pub fn load(data_dir: &Path) -> Self {
        let file = data_dir.join(MAINTENANCE_FILE);
        let switches = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(file = %file.display(), error = %e, "cannot read the maintenance switches: starting without");
                Switches::default()
            }),
            Err(_) => Switches::default(),
        };
        ServicesHandle {
            switches: Arc::new(Mutex::new(switches)),
            file,
            wake: Arc::default(),
            local: Arc::default(),
        }
    }

    /// Why the node is in maintenance, when it is.
    pub fn node_maintenance(&self) -> Option<String> {
        self.lock().node.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Switches> {
        self.switches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn save(&self, switches: &Switches) -> Result<(), MaintenanceError> {
        let bytes = serde_json::to_vec_pretty(switches)
            .map_err(|e| MaintenanceError::Io(self.file.display().to_string(), e.to_string()))?;
        crate::datadir::write_atomic(&self.file, &bytes)
            .map_err(|e| MaintenanceError::Io(self.file.display().to_string(), e.to_string()))
    }

    fn change(&self, f: impl FnOnce(&mut Switches)) -> Result<(), MaintenanceError> {
        let mut g = self.lock();
        let mut next = g.clone();
        f(&mut next);
        if next != *g {
            self.save(&next)?;
            *g = next;
        }
        drop(g);
        self.wake.notify_one();
        Ok(())
    }

    fn reason(reason: Option<String>) -> Result<String, MaintenanceError> {
        let reason = reason
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "maintenance mode".to_owned());
        opsbro_types::names::text("reason", &reason, opsbro_types::names::MAX_REASON)
            .map_err(|e| MaintenanceError::BadReason(e.0))?;
        Ok(reason)
    }

    /// Put the node in maintenance (`enable`) with `reason`, or take it out.
    pub fn set_node(&self, enable: bool, reason: Option<String>) -> Result<(), MaintenanceError> {
        let reason = if enable {
            Some(Self::reason(reason)?)
        } else {
            None
        };
        self.change(|s| s.node = reason)
    }

    /// Put a service of this node (declared in `objects`) in maintenance, or take it out.
    pub fn set_service(
        &self,
        objects: &PackSet,
        name: &str,
        enable: bool,
        reason: Option<String>,
    ) -> Result<(), MaintenanceError> {
        if !objects.services().any(|s| s.name == name) {
            return Err(MaintenanceError::UnknownService(name.to_owned()));
        }
        let reason = if enable {
            Some(Self::reason(reason)?)
        } else {
            None
        };
        self.change(|s| match reason {
            Some(r) => {
                s.services.insert(name.to_owned(), r);
            }
            None => {
                s.services.remove(name);
            }
        })
    }

    /// Forget a service's switch (it was deregistered).
    pub fn forget(&self, name: &str) {
        if let Err(e) = self.change(|s| {
            s.services.remove(name);
        }) {
            tracing::warn!(error = %e, "cannot forget the maintenance switch of {name}");
        }
    }

    /// This node's services as last computed (active or not), by name, with the latest
    /// output of each check from `monitoring`.
    pub fn local(&self, monitoring: &MonitoringHandle) -> Vec<LocalService> {
        let mut services = self.computed();
        let outputs: BTreeMap<String, String> = monitoring
            .checks()
            .into_iter()
            .map(|c| (c.name, c.output))
            .collect();
        for c in services.iter_mut().flat_map(|s| s.checks.iter_mut()) {
            c.output = outputs.get(&c.name).cloned().unwrap_or_default();
        }
        services
    }

    fn computed(&self) -> Vec<LocalService> {
        self.local
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// (service name, its checks) of this node's services: `opsbro monitoring ttl web` finds
    /// the TTL check of service `web` with it.
    pub fn check_names(&self) -> Vec<(String, Vec<String>)> {
        self.computed()
            .into_iter()
            .filter(|s| s.active)
            .map(|s| (s.name, s.checks.into_iter().map(|c| c.name).collect()))
            .collect()
    }
}

/// What the services task works with.
pub struct ServicesSetup {
    /// The objects (a reload sends new ones).
    pub objects: watch::Receiver<Arc<PackSet>>,
    /// This node's groups (`if_group`).
    pub view: SharedView,
    /// Check states.
    pub monitoring: MonitoringHandle,
    /// Where the records go.
    pub gossip: GossipHandle,
    /// Maintenance switches and the views for the API.
    pub handle: ServicesHandle,
    /// The data dir's registered services (to tell them apart).
    pub registered_dir: PathBuf,
}

/// Compute this node's services: the records to gossip, and the views for the API.
fn compute(
    objects: &PackSet,
    groups: &[String],
    monitoring: &MonitoringHandle,
    switches: &Switches,
    registered_dir: &Path,
) -> (Vec<ServiceRecord>, Vec<LocalService>) {
    let confirmed = monitoring.confirmed();
    let mut records = Vec::new();
    let mut views = Vec::new();
    let mut taken: HashSet<&str> = HashSet::new();
    for spec in objects.services() {
        let active = (spec.if_group == "*" || groups.contains(&spec.if_group))
            && !taken.contains(spec.name.as_str());
        let checks: Vec<ServiceCheck> = spec
            .checks
            .iter()
            .map(|c| ServiceCheck {
                name: c.clone(),
                state: confirmed
                    .get(c)
                    .map_or("missing", |s| s.as_str())
                    .to_owned(),
                // Filled when read (outputs change on every run, states do not).
                output: String::new(),
            })
            .collect();
        let state = health(spec.checks.iter().map(|c| confirmed.get(c).copied()));
        let maintenance = switches.services.get(&spec.name).cloned();
        if active {
            if records.len() < opsbro_packs::MAX_SERVICES {
                taken.insert(spec.name.as_str());
                records.push(record(spec, state, maintenance.clone()));
            } else {
                tracing::warn!(service = %spec.name, "more than {} services on this node: left out of gossip", opsbro_packs::MAX_SERVICES);
            }
        }
        views.push(LocalService {
            name: spec.name.clone(),
            object: spec.object.clone(),
            file: spec.file.clone(),
            registered: Path::new(&spec.file).parent() == Some(registered_dir),
            active,
            if_group: spec.if_group.clone(),
            port: spec.port,
            address: spec.address,
            tags: spec.tags.clone(),
            meta: spec.meta.iter().cloned().collect(),
            state: health_word(state).to_owned(),
            checks,
            maintenance,
        });
    }
    records.sort();
    views.sort_by(|a, b| (&a.name, !a.active).cmp(&(&b.name, !b.active)));
    (records, views)
}

fn record(spec: &ServiceSpec, state: CheckState, maintenance: Option<String>) -> ServiceRecord {
    ServiceRecord {
        name: spec.name.clone(),
        port: spec.port,
        address: spec.address,
        tags: spec.tags.clone(),
        meta: spec.meta.clone(),
        state: state.to_wire(),
        maintenance,
    }
}

/// Keep this node's service records and maintenance reason in its gossip record until
/// `shutdown`.
pub async fn run(setup: ServicesSetup, shutdown: CancellationToken) {
    let ServicesSetup {
        mut objects,
        view,
        monitoring,
        gossip,
        handle,
        registered_dir,
    } = setup;
    let mut checks = monitoring.subscribe();
    let mut last: Option<(Vec<ServiceRecord>, Option<String>)> = None;
    let mut groups = view.groups();
    loop {
        let switches = handle.lock().clone();
        let (records, views) = compute(
            &objects.borrow_and_update(),
            &groups,
            &monitoring,
            &switches,
            &registered_dir,
        );
        *handle.local.write().unwrap_or_else(PoisonError::into_inner) = views;
        let now = (records, switches.node);
        if last.as_ref() != Some(&now) {
            if gossip
                .set_services(now.0.clone(), now.1.clone())
                .await
                .is_err()
            {
                return;
            }
            last = Some(now);
        }
        // Groups change without news: look at them every second, and compute again only
        // when they did change (or something else woke us).
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Ok(()) = objects.changed() => break,
                Ok(()) = checks.changed() => break,
                () = handle.wake.notified() => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    if view.groups() != groups {
                        break;
                    }
                }
            }
        }
        checks.borrow_and_update();
        groups = view.groups();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_the_worst_check() {
        use CheckState::*;
        assert_eq!(health([]), Ok);
        assert_eq!(health([Some(Ok), Some(Ok)]), Ok);
        assert_eq!(health([Some(Ok), Some(Warning)]), Warning);
        assert_eq!(health([Some(Warning), Some(Pending)]), Pending);
        assert_eq!(health([Some(Pending), Some(Critical)]), Critical);
        assert_eq!(health([Some(Ok), Some(Unknown)]), Critical);
        assert_eq!(
            health([Some(Ok), None]),
            Critical,
            "a check not active here"
        );
        assert_eq!(health_word(Unknown), "critical");
        assert_eq!(health_word(Ok), "passing");
    }

    #[test]
    fn switches_are_kept_and_reasons_checked() {
        let dir = tempfile::tempdir().expect("dir");
        let h = ServicesHandle::load(dir.path());
        assert_eq!(h.node_maintenance(), None);
        h.set_node(true, Some("kernel upgrade".into())).expect("on");
        assert_eq!(
            ServicesHandle::load(dir.path())
                .node_maintenance()
                .as_deref(),
            Some("kernel upgrade"),
            "kept across a restart"
        );
        h.set_node(true, None).expect("default reason");
        assert_eq!(h.node_maintenance().as_deref(), Some("maintenance mode"));
        assert!(matches!(
            h.set_node(true, Some("a\u{7}b".into())),
            Err(MaintenanceError::BadReason(_))
        ));
        h.set_node(false, None).expect("off");
        assert_eq!(ServicesHandle::load(dir.path()).node_maintenance(), None);
        let objects = PackSet::default();
        assert!(matches!(
            h.set_service(&objects, "web", true, None),
            Err(MaintenanceError::UnknownService(_))
        ));
    }
}
