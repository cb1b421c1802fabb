//! Zones on this node: the tree (`zone:` objects of the packs and the local configuration),
//! this node's zone (`zone` in agent.yml, replaced by `<data_dir>/current_zone` once
//! `opsbro gossip zone change` moved it) and the zones' gossip keys
//! (`<data_dir>/zone_keys/<zone>.gossip.key`, one base64 key each, mode 0600).
//!
//! The gossip core applies the visibility rules ([`opsbro_gossip::ZoneTree`]); the keyring
//! seals each packet with its destination zone's key ([`opsbro_transport::Keyring::seal_for`]).

use std::path::{Path, PathBuf};

use opsbro_api::gossip::ZoneView;
use opsbro_gossip::{Relation, ZoneTree};
use opsbro_transport::{Key, Keyring};

/// The file that keeps this node's zone after a live change.
pub const CURRENT_ZONE_FILE: &str = "current_zone";
/// The folder of the zones' gossip keys, in the data dir.
pub const KEYS_DIR: &str = "zone_keys";
/// The suffix of a zone key file (the original's name).
const KEY_SUFFIX: &str = ".gossip.key";

/// The zone tree of these objects (the single zone `internet` when none is defined).
pub fn tree(packs: &opsbro_packs::PackSet) -> Result<ZoneTree, String> {
    let mut defs: Vec<(String, Vec<String>)> = packs
        .zones()
        .map(|z| (z.name.clone(), z.sub_zones.clone()))
        .collect();
    defs.sort();
    ZoneTree::new(&defs).map_err(|e| format!("the zone tree: {e}"))
}

/// This node's zone: the one a live change saved, else the configured one.
pub fn current_zone(configured: &str, data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join(CURRENT_ZONE_FILE))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|z| opsbro_types::names::zone(z).is_ok())
        .unwrap_or_else(|| configured.to_owned())
}

/// `zone` is in the tree, or an error naming the known zones.
pub fn check(tree: &ZoneTree, zone: &str) -> Result<(), String> {
    if tree.contains(zone) {
        return Ok(());
    }
    Err(format!(
        "zone `{zone}` is not a known zone (known: {}): define it with a `zone:` object \
         (`zone: {{name: {zone}}}` as a sub-zone of another) or choose a known one",
        tree.names().join(", ")
    ))
}

/// Remember `zone` as this node's zone.
pub fn save_current_zone(data_dir: &Path, zone: &str) -> std::io::Result<()> {
    crate::datadir::write_atomic(
        &data_dir.join(CURRENT_ZONE_FILE),
        format!("{zone}\n").as_bytes(),
    )
}

/// Where the key of `zone` is kept.
pub fn key_path(data_dir: &Path, zone: &str) -> PathBuf {
    data_dir.join(KEYS_DIR).join(format!("{zone}{KEY_SUFFIX}"))
}

/// Put every zone key of the data dir into `ring`, and tell it this node's zone. A key file
/// holds the zone's keys one per line, the sealing one first (more during a rotation). A key
/// file that does not load is an error naming it (the agent does not start half-keyed).
pub fn load_keys(data_dir: &Path, own_zone: &str, ring: &mut Keyring) -> Result<(), String> {
    ring.set_own_zone(own_zone);
    let dir = data_dir.join(KEYS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    for path in files {
        let Some(zone) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(KEY_SUFFIX))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read the zone key {}: {e}", path.display()))?;
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines
            .next()
            .ok_or_else(|| format!("the zone key {} is empty", path.display()))?;
        let parse = |l: &str| {
            Key::from_base64(l).map_err(|e| format!("the zone key {}: {e}", path.display()))
        };
        ring.set_zone_key(zone, parse(first)?);
        for l in lines {
            ring.install_zone_key(zone, parse(l)?);
        }
    }
    Ok(())
}

/// Keep the keys `ring` holds for `zone` (mode 0600, the sealing one first).
pub fn save_keys(data_dir: &Path, zone: &str, ring: &Keyring) -> Result<PathBuf, String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = key_path(data_dir, zone);
    let dir = data_dir.join(KEYS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let text: String = ring
        .zone_keys(zone)
        .iter()
        .map(|k| format!("{}\n", k.to_base64()))
        .collect();
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// The tree as `GET /agent/zones` shows it, from `own` (this node's zone).
pub fn views(
    tree: &ZoneTree,
    own: &str,
    ring: &Keyring,
    members_by_zone: &std::collections::BTreeMap<String, usize>,
) -> std::collections::BTreeMap<String, ZoneView> {
    tree.names()
        .into_iter()
        .map(|name| {
            let relation = match tree.relation(own, &name) {
                Relation::Same => "our",
                Relation::Upper => "upper",
                Relation::Lower => "lower",
                Relation::Other => "other",
            };
            let view = ZoneView {
                parent: tree.parent(&name).map(str::to_owned),
                sub_zones: tree.sub_zones(&name).to_vec(),
                relation: relation.to_owned(),
                is_our_zone: name == own,
                have_gossip_key: ring.zone_key(&name).is_some(),
                members: members_by_zone.get(&name).copied().unwrap_or(0),
                name: name.clone(),
            };
            (name, view)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_zone_file_wins_and_unknown_zones_name_the_known_ones() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(current_zone("internet", dir.path()), "internet");
        save_current_zone(dir.path(), "dc1").expect("save");
        assert_eq!(current_zone("internet", dir.path()), "dc1");
        let tree =
            ZoneTree::new(&[("internet".into(), vec!["dc1".into(), "dc2".into()])]).expect("tree");
        assert!(check(&tree, "dc1").is_ok());
        let e = check(&tree, "office").expect_err("unknown");
        assert!(e.contains("known: dc1, dc2, internet"), "{e}");
    }

    #[test]
    fn zone_keys_are_kept_sealing_key_first_and_loaded_into_the_keyring() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut ring = Keyring::default();
        ring.set_zone_key("dc1", Key::new([7; 32]));
        ring.install_zone_key("dc1", Key::new([8; 32]));
        let path = save_keys(dir.path(), "dc1", &ring).expect("save");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let mut loaded = Keyring::default();
        load_keys(dir.path(), "dc1", &mut loaded).expect("load");
        assert_eq!(loaded.zones_with_keys(), ["dc1"]);
        let ids = |r: &Keyring| -> Vec<String> {
            r.zone_keys("dc1").iter().map(|k| k.id_hex()).collect()
        };
        assert_eq!(ids(&loaded), ids(&ring));
        assert!(loaded.is_enabled());
        std::fs::write(key_path(dir.path(), "dc2"), "not a key").expect("w");
        let e = load_keys(dir.path(), "dc1", &mut Keyring::default()).expect_err("bad");
        assert!(e.contains("dc2.gossip.key"), "{e}");
    }
}
