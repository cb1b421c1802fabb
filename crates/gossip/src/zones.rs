//! The zone tree and the visibility rule of opsbro's zones: a node gossips with its own zone,
//! keeps the members of the zones below it and, of the zones above it, only the proxy nodes.

use std::collections::BTreeMap;

use opsbro_types::names;

/// The zone every node is in when nothing else is configured.
pub const DEFAULT_ZONE: &str = "internet";

/// Where a zone stands seen from another one (see [`ZoneTree::relation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Relation {
    /// The same zone.
    Same,
    /// Above (the parent, or the parent's parent, ...).
    Upper,
    /// Below (a sub-zone, or a sub-zone's sub-zone, ...).
    Lower,
    /// Neither: a sibling, a cousin, or a zone the tree does not know.
    Other,
}

/// The zones and their sub-zones: a forest (each zone has at most one parent, no cycles).
///
/// Zones are compared by name; two nodes naming the same zone are in the same zone even when
/// the tree does not define it (so a tree that knows nothing still behaves like one flat zone
/// for nodes that agree on their label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneTree {
    /// Every known zone and its parent.
    parent: BTreeMap<String, Option<String>>,
    /// Direct sub-zones of each zone, sorted.
    children: BTreeMap<String, Vec<String>>,
}

impl Default for ZoneTree {
    /// The single zone `internet`.
    fn default() -> Self {
        let mut parent = BTreeMap::new();
        parent.insert(DEFAULT_ZONE.to_owned(), None);
        let mut children = BTreeMap::new();
        children.insert(DEFAULT_ZONE.to_owned(), Vec::new());
        Self { parent, children }
    }
}

impl ZoneTree {
    /// Build the tree from zone definitions: each is a zone name and the names of its direct
    /// sub-zones. A sub-zone that is named but not defined is a leaf zone. Errors name the
    /// zone at fault: a bad name, a zone defined twice, a zone with two parents, a cycle.
    /// An empty list gives [`ZoneTree::default`].
    pub fn new(defs: &[(String, Vec<String>)]) -> Result<ZoneTree, String> {
        if defs.is_empty() {
            return Ok(Self::default());
        }
        let mut parent: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (zone, subs) in defs {
            names::zone(zone).map_err(|e| format!("zone `{zone}`: {e}"))?;
            if children.contains_key(zone) {
                return Err(format!("zone `{zone}` is defined twice"));
            }
            let mut kids = Vec::with_capacity(subs.len());
            for sub in subs {
                names::zone(sub).map_err(|e| format!("sub-zone `{sub}` of `{zone}`: {e}"))?;
                if sub == zone {
                    return Err(format!("zone `{zone}` lists itself as a sub-zone"));
                }
                if kids.contains(sub) {
                    return Err(format!("zone `{zone}` lists sub-zone `{sub}` twice"));
                }
                kids.push(sub.clone());
            }
            kids.sort();
            children.insert(zone.clone(), kids);
        }
        for (zone, kids) in &children {
            parent.entry(zone.clone()).or_insert(None);
            for sub in kids {
                match parent.get(sub) {
                    Some(Some(other)) => {
                        return Err(format!(
                            "zone `{sub}` has two parents: `{other}` and `{zone}`"
                        ));
                    }
                    _ => {
                        parent.insert(sub.clone(), Some(zone.clone()));
                    }
                }
            }
        }
        // Leaves named only as sub-zones.
        let leaves: Vec<String> = parent
            .keys()
            .filter(|z| !children.contains_key(*z))
            .cloned()
            .collect();
        for leaf in leaves {
            children.insert(leaf, Vec::new());
        }
        let tree = Self { parent, children };
        // A cycle: walking up from some zone comes back to it (every zone has one parent, so
        // more steps than zones means a loop).
        for zone in tree.parent.keys() {
            let mut at = zone.as_str();
            for _ in 0..=tree.parent.len() {
                match tree.parent(at) {
                    Some(p) if p == zone => {
                        return Err(format!("zones form a cycle through `{zone}`"));
                    }
                    Some(p) => at = p,
                    None => break,
                }
            }
        }
        Ok(tree)
    }

    /// Whether the tree defines or names `zone`.
    pub fn contains(&self, zone: &str) -> bool {
        self.parent.contains_key(zone)
    }

    /// Every zone, sorted by name.
    pub fn names(&self) -> Vec<String> {
        self.parent.keys().cloned().collect()
    }

    /// The zone directly above `zone` (None for a top zone or an unknown one).
    pub fn parent(&self, zone: &str) -> Option<&str> {
        self.parent.get(zone).and_then(|p| p.as_deref())
    }

    /// The direct sub-zones of `zone`, sorted (empty for a leaf or an unknown zone).
    pub fn sub_zones(&self, zone: &str) -> &[String] {
        self.children.get(zone).map_or(&[], Vec::as_slice)
    }

    /// Whether `zone` is (recursively) below `of`; a zone is not below itself.
    pub fn is_below(&self, zone: &str, of: &str) -> bool {
        let mut at = zone;
        // The tree has no cycle (checked by `new`), the bound only guards the loop.
        for _ in 0..self.parent.len() {
            match self.parent(at) {
                Some(p) if p == of => return true,
                Some(p) => at = p,
                None => return false,
            }
        }
        false
    }

    /// Whether `zone` is (recursively) above `of`; a zone is not above itself.
    pub fn is_above(&self, zone: &str, of: &str) -> bool {
        self.is_below(of, zone)
    }

    /// Where `to` stands seen from `from`.
    pub fn relation(&self, from: &str, to: &str) -> Relation {
        if from == to {
            Relation::Same
        } else if self.is_below(to, from) {
            Relation::Lower
        } else if self.is_below(from, to) {
            Relation::Upper
        } else {
            Relation::Other
        }
    }

    /// Whether `zone` is a direct sub-zone of `of`.
    pub fn is_direct_sub_zone(&self, zone: &str, of: &str) -> bool {
        self.parent(zone) == Some(of)
    }

    /// The visibility rule: a node of zone `viewer` (proxy or not) keeps a member of zone
    /// `member_zone` when it is the same zone, a zone (recursively) below it, or a zone above
    /// it and the member is a proxy node. Everything else it never stores.
    pub fn may_see(&self, viewer: &str, member_zone: &str, member_is_proxy: bool) -> bool {
        match self.relation(viewer, member_zone) {
            Relation::Same | Relation::Lower => true,
            Relation::Upper => member_is_proxy,
            Relation::Other => false,
        }
    }

    /// Whether two nodes gossip and probe each other: same zone, or both proxies and one's
    /// zone is the direct parent of the other's.
    pub fn are_peers(&self, a_zone: &str, a_proxy: bool, b_zone: &str, b_proxy: bool) -> bool {
        a_zone == b_zone
            || (a_proxy
                && b_proxy
                && (self.is_direct_sub_zone(a_zone, b_zone)
                    || self.is_direct_sub_zone(b_zone, a_zone)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        list.iter()
            .map(|(z, subs)| {
                (
                    (*z).to_owned(),
                    subs.iter().map(|s| (*s).to_owned()).collect(),
                )
            })
            .collect()
    }

    fn company() -> ZoneTree {
        ZoneTree::new(&defs(&[
            ("internet", &["dc1", "dc2", "office"]),
            ("dc1", &["rack1"]),
        ]))
        .expect("valid tree")
    }

    #[test]
    fn the_default_tree_is_the_single_zone_internet() {
        let t = ZoneTree::default();
        assert_eq!(t.names(), vec!["internet".to_owned()]);
        assert!(t.contains("internet"));
        assert_eq!(t.parent("internet"), None);
        assert!(t.sub_zones("internet").is_empty());
        assert_eq!(ZoneTree::new(&[]).expect("empty"), t);
    }

    #[test]
    fn parents_sub_zones_and_relations() {
        let t = company();
        assert_eq!(t.names(), vec!["dc1", "dc2", "internet", "office", "rack1"]);
        assert_eq!(t.parent("rack1"), Some("dc1"));
        assert_eq!(t.parent("dc1"), Some("internet"));
        assert_eq!(t.parent("internet"), None);
        assert_eq!(t.sub_zones("internet"), ["dc1", "dc2", "office"]);
        assert!(t.sub_zones("rack1").is_empty());
        assert!(t.is_below("rack1", "internet"));
        assert!(t.is_below("rack1", "dc1"));
        assert!(!t.is_below("dc1", "dc1"));
        assert!(!t.is_below("dc2", "dc1"));
        assert!(t.is_above("internet", "rack1"));
        assert!(!t.is_above("rack1", "internet"));
        assert_eq!(t.relation("dc1", "dc1"), Relation::Same);
        assert_eq!(t.relation("dc1", "internet"), Relation::Upper);
        assert_eq!(t.relation("internet", "rack1"), Relation::Lower);
        assert_eq!(t.relation("dc1", "dc2"), Relation::Other);
        assert_eq!(t.relation("rack1", "office"), Relation::Other);
        assert_eq!(t.relation("dc1", "nowhere"), Relation::Other);
        assert_eq!(t.relation("nowhere", "nowhere"), Relation::Same);
    }

    #[test]
    fn visibility_keeps_own_and_lower_zones_and_only_upper_proxies() {
        let t = company();
        assert!(t.may_see("dc1", "dc1", false));
        assert!(t.may_see("dc1", "rack1", false));
        assert!(t.may_see("internet", "rack1", false));
        assert!(t.may_see("dc1", "internet", true));
        assert!(t.may_see("rack1", "internet", true));
        assert!(!t.may_see("dc1", "internet", false));
        assert!(!t.may_see("dc1", "dc2", true));
        assert!(!t.may_see("dc2", "rack1", false));
        assert!(!t.may_see("dc1", "unknown", true));
    }

    #[test]
    fn proxies_of_a_zone_and_its_direct_sub_zones_are_peers() {
        let t = company();
        assert!(t.are_peers("dc1", false, "dc1", false));
        assert!(t.are_peers("dc1", true, "internet", true));
        assert!(t.are_peers("internet", true, "dc1", true));
        assert!(!t.are_peers("internet", true, "rack1", true), "two levels");
        assert!(!t.are_peers("dc1", true, "internet", false));
        assert!(!t.are_peers("dc1", true, "dc2", true));
    }

    #[test]
    fn bad_trees_are_refused_with_the_zone_named() {
        let two_parents = ZoneTree::new(&defs(&[("a", &["c"]), ("b", &["c"])]));
        let err = two_parents.expect_err("two parents");
        assert!(err.contains("`c` has two parents"), "{err}");
        let cycle = ZoneTree::new(&defs(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]));
        assert!(cycle.expect_err("cycle").contains("cycle"));
        let itself = ZoneTree::new(&defs(&[("a", &["a"])]));
        assert!(itself.expect_err("self").contains("itself"));
        let bad = ZoneTree::new(&defs(&[("a b", &[])]));
        assert!(bad.expect_err("bad name").contains("`a b`"));
        let bad_sub = ZoneTree::new(&defs(&[("a", &["$(x)"])]));
        assert!(bad_sub.expect_err("bad sub").contains("$(x)"));
        let twice = ZoneTree::new(&defs(&[("a", &[]), ("a", &["b"])]));
        assert!(twice.expect_err("twice").contains("defined twice"));
    }

    #[test]
    fn a_forest_has_several_top_zones() {
        let t = ZoneTree::new(&defs(&[("eu", &["paris"]), ("us", &["nyc"])])).expect("forest");
        assert_eq!(t.relation("paris", "nyc"), Relation::Other);
        assert_eq!(t.relation("paris", "eu"), Relation::Upper);
        assert!(!t.contains("internet"));
    }
}
