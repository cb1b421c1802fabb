//! What the library's gossip, zone, hosting, compliance and KV functions ask the agent.

/// Facts about the cluster that gossip functions read (`is_in_group`, `gossip_count_nodes`, ...).
pub trait EvalContext: Send + Sync {
    /// Groups of this node.
    fn groups(&self) -> Vec<String>;
    /// Members in `group` (empty: any) and `state` (empty: any), this node included.
    fn count_nodes(&self, group: &str, state: &str) -> i64;
    /// Whether a user event of this type was received recently.
    fn has_event_type(&self, kind: &str) -> bool;
    /// Zone of the node `node_uuid` (`gossip_get_zone`); an empty uuid means this node. An
    /// unknown node has the zone `''`, as in the original. Default: `''`.
    fn zone(&self, node_uuid: &str) -> String {
        let _ = node_uuid;
        String::new()
    }
    /// Whether the hosting driver `name` (`ec2`, `azure`, `docker-container`, `on-premise`, ...)
    /// is the active one (`hosting_driver_is_active`). Default: only `on-premise` is active.
    fn hosting_driver_active(&self, name: &str) -> bool {
        name == "on-premise"
    }
    /// State of the compliance rule `name` (`COMPLIANT`, `FIXED`, `ERROR`, `PENDING`, ...) for
    /// `compliance_get_state_of_rule`; an unknown rule is `UNKNOWN`. Default: `UNKNOWN`.
    fn compliance_rule_state(&self, name: &str) -> String {
        let _ = name;
        "UNKNOWN".to_owned()
    }
    /// Whether this node leads the election `name` (`is_leader`). Default: false.
    fn is_leader(&self, name: &str) -> bool {
        let _ = name;
        false
    }
    /// Value of `key` in the replicated KV store (`kv_get`), or None when it does not exist.
    ///
    /// Expressions run synchronously, so an implementation that has to ask another node must
    /// wait a bounded time (a second or two) and answer None past it. Default: None.
    fn kv_get(&self, key: &str) -> Option<String> {
        let _ = key;
        None
    }
}

/// A context for evaluations outside an agent (tests, `--one-shot` tools): no groups, no nodes.
pub struct NoContext;

impl EvalContext for NoContext {
    fn groups(&self) -> Vec<String> {
        Vec::new()
    }
    fn count_nodes(&self, _: &str, _: &str) -> i64 {
        0
    }
    fn has_event_type(&self, _: &str) -> bool {
        false
    }
}
