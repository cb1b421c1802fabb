//! The evaluator as the agent runs it: its gossip functions read a snapshot of the cluster that
//! the gossip driver refreshes whenever membership or events change (rhai functions are
//! synchronous, so they cannot ask the gossip task).

use std::sync::{Arc, PoisonError, RwLock};

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
}

/// Shared, refreshed snapshot.
#[derive(Debug, Clone, Default)]
pub struct SharedView(pub Arc<RwLock<ClusterView>>);

impl SharedView {
    /// Replace the snapshot.
    pub fn set(&self, view: ClusterView) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = view;
    }

    fn read<T>(&self, f: impl FnOnce(&ClusterView) -> T) -> T {
        f(&self.0.read().unwrap_or_else(PoisonError::into_inner))
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
}
