//! History of this node's groups (`opsbro detectors history`): every change of the groups this
//! node gossips — static ones from the configuration or `agent groups add|remove`, and those
//! the detectors add — read from the live membership the gossip driver publishes, so it sees
//! exactly what the cluster sees.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use opsbro_api::detectors::GroupChange;
use opsbro_types::NodeUuid;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::membership::Peer;

/// Changes kept (the oldest go first).
const KEEP: usize = 500;

/// Shared with the API: the recorded changes, oldest first.
#[derive(Clone, Default)]
pub struct GroupHistory(Arc<Mutex<VecDeque<GroupChange>>>);

impl GroupHistory {
    /// Every change kept, oldest first.
    pub fn list(&self) -> Vec<GroupChange> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    fn push(&self, change: GroupChange) {
        let mut h = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if h.len() == KEEP {
            h.pop_front();
        }
        h.push_back(change);
    }
}

/// The change from `old` to `new` groups, if any.
pub fn diff(old: &BTreeSet<String>, new: &BTreeSet<String>, time_ms: u64) -> Option<GroupChange> {
    if old == new {
        return None;
    }
    Some(GroupChange {
        time_ms,
        added: new.difference(old).cloned().collect(),
        removed: old.difference(new).cloned().collect(),
        groups: new.iter().cloned().collect(),
    })
}

/// Record the changes of `me`'s groups in `history` until `shutdown`.
pub async fn run(
    history: GroupHistory,
    me: NodeUuid,
    mut membership: watch::Receiver<Arc<Vec<Peer>>>,
    shutdown: CancellationToken,
) {
    // Before the node's first record everything is new: its first groups count as added.
    let mut known = BTreeSet::new();
    loop {
        let mine: Option<BTreeSet<String>> = membership
            .borrow_and_update()
            .iter()
            .find(|p| p.uuid == me)
            .map(|p| p.groups.iter().cloned().collect());
        if let Some(groups) = mine {
            if let Some(change) = diff(&known, &groups, crate::host::unix_ms()) {
                history.push(change);
            }
            known = groups;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = membership.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(groups: &[&str]) -> BTreeSet<String> {
        groups.iter().map(|g| (*g).to_owned()).collect()
    }

    #[test]
    fn a_change_lists_what_was_added_and_removed() {
        assert_eq!(diff(&set(&["a"]), &set(&["a"]), 1), None);
        let c = diff(&set(&["a", "b"]), &set(&["b", "c"]), 7).expect("a change");
        assert_eq!(c.time_ms, 7);
        assert_eq!(c.added, vec!["c"]);
        assert_eq!(c.removed, vec!["a"]);
        assert_eq!(c.groups, vec!["b", "c"]);
    }

    #[test]
    fn the_oldest_changes_make_way() {
        let h = GroupHistory::default();
        for i in 0..(KEEP as u64 + 3) {
            h.push(GroupChange {
                time_ms: i,
                added: vec![],
                removed: vec![],
                groups: vec![],
            });
        }
        let list = h.list();
        assert_eq!(list.len(), KEEP);
        assert_eq!(list[0].time_ms, 3);
    }
}
