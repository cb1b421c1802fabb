//! Live reload (`opsbro agent reload`, `POST /agent/reload`, SIGHUP): re-read `agent.yml`, the
//! local objects and the packs, and hand the new objects to the subsystems without a restart.
//!
//! The objects travel on one watch channel (`Arc<PackSet>`): the detectors, the checks (which
//! keep the state of every check that is still there), the handlers and the generators each
//! take the new set when it changes, and the API reads the current one. Static `groups` apply at
//! once, and so do the executor's keys and limits. Any other setting that changed (ports, data dir, keys, listeners...) is reported as
//! needing a restart and keeps its running value. Nothing is applied when the configuration
//! does not load or a pack file has an error: the previous good version keeps running and the
//! report says why.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};

use opsbro_api::ReloadReport;
use opsbro_config::AgentConfig;
use opsbro_packs::PackSet;
use tokio::sync::watch;

use crate::detectors::DetectorsHandle;

/// Reads the configuration again (the file and the command line it was started with).
pub type ConfigLoader = Arc<dyn Fn() -> Result<AgentConfig, String> + Send + Sync>;

/// Loads the packs of a configuration (syntax of expressions checked by the agent's evaluator),
/// with the services registered through the API (`<data_dir>/services/`) last: they are local
/// objects too.
pub fn load_packs(config: &AgentConfig, evaluator: &opsbro_eval::Evaluator) -> PackSet {
    let check = |expr: &str| evaluator.check_syntax(expr).map_err(|e| e.to_string());
    let mut objects = config.objects_dirs.clone().unwrap_or_default();
    let registered = config.data_dir.join(crate::services::REGISTERED_DIR);
    if registered.is_dir() {
        objects.push(registered);
    }
    let mut set = opsbro_packs::load_all(&config.packs_dirs, &objects, &check);
    for name in disabled_packs(config) {
        if set.packs.remove(&name).is_some() {
            tracing::info!(pack = %name, "pack disabled (disabled_packs)");
        }
    }
    set
}

/// Environment variable adding packs to `disabled_packs` (comma-separated): the test suite
/// turns off the application packs on agents that must not see the machine's own servers.
pub const DISABLED_PACKS_ENV: &str = "OPSBRO_DISABLED_PACKS";

/// `disabled_packs` and `$OPSBRO_DISABLED_PACKS`.
fn disabled_packs(config: &AgentConfig) -> Vec<String> {
    let from_env = std::env::var(DISABLED_PACKS_ENV).unwrap_or_default();
    config
        .disabled_packs
        .iter()
        .cloned()
        .chain(
            from_env
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty()),
        )
        .collect()
}

/// Everything a reload touches.
pub struct Reloader {
    loader: Option<ConfigLoader>,
    /// The configuration in use.
    current: Mutex<AgentConfig>,
    objects: watch::Sender<Arc<PackSet>>,
    evaluator: Arc<opsbro_eval::Evaluator>,
    detectors: DetectorsHandle,
    executor: crate::executor::ExecutorHandle,
    /// One reload at a time.
    busy: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader for an agent started with `config`, publishing objects on `objects`. Without
    /// a `loader` (an agent embedded in a test), a reload reads the packs of `config` again.
    pub fn new(
        loader: Option<ConfigLoader>,
        config: AgentConfig,
        objects: watch::Sender<Arc<PackSet>>,
        evaluator: Arc<opsbro_eval::Evaluator>,
        detectors: DetectorsHandle,
        executor: crate::executor::ExecutorHandle,
    ) -> Self {
        Reloader {
            loader,
            current: Mutex::new(config),
            objects,
            evaluator,
            detectors,
            executor,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Reload now; the report says what was applied and what was not.
    pub async fn reload(self: &Arc<Self>) -> ReloadReport {
        let _one = self.busy.lock().await;
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.reload_blocking())
            .await
            .unwrap_or_else(|e| ReloadReport {
                errors: vec![format!("the reload failed: {e}")],
                ..ReloadReport::default()
            })
    }

    fn reload_blocking(&self) -> ReloadReport {
        let mut report = ReloadReport::default();
        let old = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let new = match &self.loader {
            Some(load) => match load() {
                Ok(c) => c,
                Err(e) => {
                    report.errors.push(format!(
                        "the configuration does not load, nothing changed: {e}"
                    ));
                    return report;
                }
            },
            None => old.clone(),
        };
        report.restart_needed = restart_needed(&old, &new);
        let packs = load_packs(&new, &self.evaluator);
        for d in &packs.diagnostics {
            if d.warning {
                report.warnings.push(d.to_string());
            } else {
                report.errors.push(d.to_string());
            }
        }
        if !report.errors.is_empty() {
            report.errors.insert(
                0,
                "a pack file has errors: the previous objects keep running".into(),
            );
            return report;
        }
        // The zone tree is built at start: a changed one waits for a restart, a broken one is
        // refused like a broken pack.
        let zone_defs = |p: &PackSet| {
            let mut d: Vec<(String, Vec<String>)> = p
                .zones()
                .map(|z| (z.name.clone(), z.sub_zones.clone()))
                .collect();
            d.sort();
            d
        };
        let zone = crate::zones::current_zone(&new.zone, &new.data_dir);
        if let Err(e) =
            crate::zones::tree(&packs).and_then(|tree| crate::zones::check(&tree, &zone))
        {
            report
                .errors
                .push(format!("{e}: the previous objects keep running"));
            return report;
        }
        if zone_defs(&self.objects.borrow()) != zone_defs(&packs) {
            report
                .restart_needed
                .push("zones: the zone tree changed".into());
        }
        // The executor's keys are read before anything is applied: a key file that does not
        // load keeps the keys in use, and nothing else changes either.
        if let Err(e) = crate::executor::load_keys(&new.executor) {
            report
                .errors
                .push(format!("{e}: the previous keys and objects keep running"));
            return report;
        }
        report.changes = describe_changes(&self.objects.borrow(), &packs);
        if old.groups != new.groups {
            self.detectors.set_configured(new.groups.clone());
            report.changes.push(format!(
                "groups: [{}] -> [{}]",
                old.groups.join(", "),
                new.groups.join(", ")
            ));
        }
        match self.executor.apply(&new.executor) {
            Ok(changes) => report.changes.extend(changes),
            Err(e) => report.errors.push(e),
        }
        if report.changes.is_empty() {
            report.changes.push("nothing changed".into());
        }
        self.objects.send_replace(Arc::new(packs));
        // What needs a restart keeps its running value: remember only what was applied.
        let mut applied = old;
        applied.groups = new.groups;
        applied.packs_dirs = new.packs_dirs;
        applied.objects_dirs = new.objects_dirs;
        applied.executor = new.executor;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = applied;
        report.applied = true;
        for line in &report.changes {
            tracing::info!("reload: {line}");
        }
        for line in &report.restart_needed {
            tracing::warn!("reload: needs a restart: {line}");
        }
        report
    }
}

fn shown<T: Debug>(v: &T) -> String {
    format!("{v:?}")
}

/// The settings that differ between `old` and `new` and only take effect at start. Secrets
/// are named, never shown.
pub fn restart_needed(old: &AgentConfig, new: &AgentConfig) -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! compare {
        ($($field:ident),* $(,)?) => {
            $(
                if old.$field != new.$field {
                    out.push(format!(
                        "{}: {} -> {}",
                        stringify!($field),
                        shown(&old.$field),
                        shown(&new.$field)
                    ));
                }
            )*
        };
    }
    compare!(
        node_name,
        display_name,
        data_dir,
        bind_addr,
        advertise_addr,
        port,
        api_bind,
        api_port,
        api_anonymous_reads,
        api_allowed_hosts,
        seeds,
        bootstrap,
        zone,
        proxy_node,
        insecure_plaintext_gossip,
        keyring_file,
        templates_dir,
        log_level,
        gossip,
        auto_detect,
        nagios_plugins_dir,
        kv,
        dns,
        statsd,
        graphite,
        websocket,
        hosting,
    );
    if old.api_token != new.api_token {
        out.push("api.token: changed".into());
    }
    if old.encryption_key != new.encryption_key {
        out.push("encryption_key: changed".into());
    }
    // Anything else (a setting added later and not listed above) is named generally rather
    // than silently ignored.
    let mut rest = new.clone();
    rest.groups = old.groups.clone();
    rest.packs_dirs = old.packs_dirs.clone();
    rest.objects_dirs = old.objects_dirs.clone();
    if out.is_empty() && rest != *old {
        out.push("other settings changed".into());
    }
    out
}

/// One line per kind of object: what was added, changed and removed.
pub fn describe_changes(old: &PackSet, new: &PackSet) -> Vec<String> {
    fn by_name<'a, T: PartialEq + 'a>(
        items: impl Iterator<Item = (&'a str, &'a T)>,
    ) -> BTreeMap<&'a str, &'a T> {
        items.collect()
    }
    fn line<T: PartialEq>(
        kind: &str,
        old: &BTreeMap<&str, &T>,
        new: &BTreeMap<&str, &T>,
    ) -> Option<String> {
        let added: Vec<&str> = new
            .keys()
            .filter(|k| !old.contains_key(*k))
            .copied()
            .collect();
        let removed: Vec<&str> = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .copied()
            .collect();
        let changed: Vec<&str> = new
            .iter()
            .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
            .map(|(k, _)| *k)
            .collect();
        if added.is_empty() && removed.is_empty() && changed.is_empty() {
            return None;
        }
        let part = |what: &str, names: &[&str]| {
            (!names.is_empty()).then(|| format!("{what} {}", names.join(", ")))
        };
        let parts: Vec<String> = [
            part("added", &added),
            part("changed", &changed),
            part("removed", &removed),
        ]
        .into_iter()
        .flatten()
        .collect();
        Some(format!("{kind}: {}", parts.join("; ")))
    }
    let mut out = Vec::new();
    macro_rules! kind {
        ($label:literal, $iter:ident, $name:ident) => {
            let (o, n) = (
                by_name(old.$iter().map(|x| (x.$name.as_str(), x))),
                by_name(new.$iter().map(|x| (x.$name.as_str(), x))),
            );
            out.extend(line($label, &o, &n));
        };
    }
    kind!("detectors", detectors, name);
    kind!("checks", checks, name);
    kind!("handlers", handlers, name);
    kind!("generators", generators, name);
    let all = |set: &PackSet, f: fn(&opsbro_packs::Pack) -> Vec<(String, String)>| {
        set.packs.values().flat_map(f).collect::<BTreeMap<_, _>>()
    };
    // The rest by name and content: parameters and templates per pack, dashboards, compliance.
    let others = |p: &opsbro_packs::Pack| -> Vec<(String, String)> {
        let mut v = vec![(format!("{}/parameters", p.name), p.parameters.to_string())];
        v.extend(
            p.templates
                .iter()
                .map(|(k, t)| (format!("{}/templates/{k}", p.name), t.clone())),
        );
        v.extend(
            p.dashboards
                .iter()
                .map(|d| (d.name.clone(), format!("{d:?}"))),
        );
        v.extend(
            p.compliance
                .iter()
                .map(|c| (c.name.clone(), format!("{c:?}"))),
        );
        v
    };
    let (o, n) = (all(old, others), all(new, others));
    let (o, n): (BTreeMap<&str, &String>, BTreeMap<&str, &String>) = (
        o.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        n.iter().map(|(k, v)| (k.as_str(), v)).collect(),
    );
    out.extend(line("other objects", &o, &n));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AgentConfig {
        opsbro_config::Config::default()
            .resolve(
                opsbro_config::Overrides::default(),
                &opsbro_config::HostFacts {
                    hostname: "h".into(),
                    euid: 1000,
                    xdg_data_home: Some("/tmp/x".into()),
                    home: None,
                },
            )
            .expect("defaults")
    }

    #[test]
    fn ports_and_keys_need_a_restart_groups_and_packs_do_not() {
        let old = config();
        let mut new = old.clone();
        new.groups = vec!["web".into()];
        new.packs_dirs = vec!["/etc/opsbro/packs".into()];
        assert!(restart_needed(&old, &new).is_empty());
        new.port = 7000;
        new.api_token = Some("secret-token-value".into());
        let lines = restart_needed(&old, &new);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], "port: 6768 -> 7000");
        assert_eq!(lines[1], "api.token: changed");
        assert!(!lines.iter().any(|l| l.contains("secret")));
    }
}
