//! The evaluator as the agent runs it: its gossip functions read a snapshot of the cluster that
//! the gossip driver refreshes whenever membership or events change (rhai functions are
//! synchronous, so they cannot ask the gossip task).

use std::path::Path;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use opsbro_eval::EvalContext;

/// What the gossip functions of expressions see.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// This node's groups.
    pub groups: Vec<String>,
    /// Every known member: (groups, state), this node included.
    pub members: Vec<(Vec<String>, String)>,
    /// Types of the user events of the last 5 minutes.
    pub event_types: Vec<String>,
    /// This node's zone.
    pub zone: String,
    /// Every known member's (uuid, zone), this node included.
    pub zones: Vec<(String, String)>,
}

/// How long `kv_get()` waits for the store before answering its default.
pub const KV_GET_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared, refreshed snapshot (and the handles the store functions use).
#[derive(Clone, Default)]
pub struct SharedView {
    view: Arc<RwLock<ClusterView>>,
    /// The hosting driver found at start (metadata services and local files).
    hosting: opsbro_apps::clouds::Hosting,
    /// What the local files show, when no detection was made (read once).
    files_driver: Arc<OnceLock<String>>,
    /// Reads the KV store, once it runs.
    kv: Arc<OnceLock<KvReader>>,
    /// Compliance rule name → state (`compliance_get_state_of_rule`).
    compliance: Arc<RwLock<std::collections::HashMap<String, String>>>,
    /// Elections this node leads (`is_leader`).
    leading: Arc<RwLock<std::collections::BTreeSet<String>>>,
}

/// `kv_get(key)`: the live text value, or None (absent, deleted, no answer in time). Called on
/// blocking threads.
pub type KvReader = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

impl std::fmt::Debug for SharedView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedView").finish_non_exhaustive()
    }
}

impl SharedView {
    /// A view whose hosting functions read `hosting` (the detection made at start).
    pub fn with_hosting(hosting: opsbro_apps::clouds::Hosting) -> SharedView {
        SharedView {
            hosting,
            ..SharedView::default()
        }
    }

    /// The hosting detection (the cloud collectors read it).
    pub fn hosting(&self) -> opsbro_apps::clouds::Hosting {
        self.hosting.clone()
    }

    /// Replace the snapshot.
    pub fn set(&self, view: ClusterView) {
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = view;
    }

    /// Number of known members, this node included.
    pub fn member_count(&self) -> usize {
        self.read(|v| v.members.len())
    }

    /// Give `kv_get()` the store (once it runs); it should wait at most [`KV_GET_TIMEOUT`].
    pub fn set_kv(&self, reader: KvReader) {
        let _ = self.kv.set(reader);
    }

    /// Replace the elections this node leads (`is_leader`).
    pub fn set_leading(&self, elections: std::collections::BTreeSet<String>) {
        *self.leading.write().unwrap_or_else(PoisonError::into_inner) = elections;
    }

    /// Replace the compliance rule states `compliance_get_state_of_rule` reads.
    pub fn set_compliance(&self, states: std::collections::HashMap<String, String>) {
        *self
            .compliance
            .write()
            .unwrap_or_else(PoisonError::into_inner) = states;
    }

    /// The hosting driver of this host (`ec2`, `docker-container`, ..., `on-premise`).
    pub fn hosting_driver(&self) -> String {
        self.hosting.driver().unwrap_or_else(|| {
            self.files_driver
                .get_or_init(|| hosting_driver(Path::new("/")))
                .clone()
        })
    }

    fn read<T>(&self, f: impl FnOnce(&ClusterView) -> T) -> T {
        f(&self.view.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl EvalContext for SharedView {
    fn groups(&self) -> Vec<String> {
        self.read(|v| v.groups.clone())
    }

    fn count_nodes(&self, group: &str, state: &str) -> i64 {
        self.read(|v| {
            v.members
                .iter()
                .filter(|(g, s)| {
                    (group.is_empty() || g.iter().any(|x| x == group))
                        && (state.is_empty() || s == state)
                })
                .count() as i64
        })
    }

    fn has_event_type(&self, kind: &str) -> bool {
        self.read(|v| v.event_types.iter().any(|t| t == kind))
    }

    fn zone(&self, node_uuid: &str) -> String {
        self.read(|v| {
            if node_uuid.is_empty() {
                return v.zone.clone();
            }
            v.zones
                .iter()
                .find(|(u, _)| u == node_uuid)
                .map(|(_, z)| z.clone())
                .unwrap_or_default()
        })
    }

    fn hosting_driver_active(&self, name: &str) -> bool {
        self.hosting_driver() == name
    }

    fn is_leader(&self, name: &str) -> bool {
        self.leading
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(name)
    }

    fn compliance_rule_state(&self, name: &str) -> String {
        self.compliance
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .unwrap_or_else(|| "UNKNOWN".to_owned())
    }

    /// The store's live value (see [`KvReader`]); None before the store runs.
    fn kv_get(&self, key: &str) -> Option<String> {
        self.kv.get()?(key)
    }
}

/// The hosting driver of the host whose filesystem is at `root`, from the files that clouds,
/// containers and NAS systems leave (DMI strings, `/.dockerenv`...): `docker-container`,
/// `ec2`, `google-cloud`, `azure`, `digitalocean`, `scaleway`, `alibaba`, `openstack`,
/// `synology`, or `on-premise` when none matches (the original's driver names). Without a
/// metadata service's answer: the agent itself uses [`opsbro_apps::clouds::detect`].
pub fn hosting_driver(root: &Path) -> String {
    opsbro_apps::clouds::hints::LocalFacts::read(root).files_driver()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tmp");
        for (rel, text) in files {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        dir
    }

    #[test]
    fn the_hosting_driver_comes_from_what_the_host_shows() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "on-premise"),
            (&[(".dockerenv", "")], "docker-container"),
            (&[("sys/class/dmi/id/board_vendor", "Amazon EC2\n")], "ec2"),
            (
                &[("sys/class/dmi/id/product_name", "Google Compute Engine\n")],
                "google-cloud",
            ),
            (
                &[(
                    "sys/class/dmi/id/chassis_asset_tag",
                    "7783-7084-3265-9085-8269-3286-77\n",
                )],
                "azure",
            ),
            (
                &[("sys/class/dmi/id/sys_vendor", "DigitalOcean\n")],
                "digitalocean",
            ),
            (&[("etc/synoinfo.conf", "x")], "synology"),
        ];
        for (files, want) in cases {
            let dir = host(files);
            assert_eq!(hosting_driver(dir.path()), *want, "{files:?}");
        }
    }

    #[test]
    fn zones_are_looked_up_by_uuid_and_empty_means_this_node() {
        let view = SharedView::default();
        view.set(ClusterView {
            zone: "lan".into(),
            zones: vec![("u1".into(), "lan".into()), ("u2".into(), "dmz".into())],
            ..ClusterView::default()
        });
        assert_eq!(view.zone(""), "lan");
        assert_eq!(view.zone("u2"), "dmz");
        assert_eq!(view.zone("nope"), "");
        assert!(view.kv_get("x").is_none(), "no store yet: no value");
    }
}
