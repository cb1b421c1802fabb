//! The service catalog: every service instance the cluster gossips (a service on a live node),
//! rebuilt from the membership on each change, with an index per service for blocking reads
//! (`GET /catalog/service/web?index=N&wait=30s`) and one `service` event per instance that
//! appears, changes health or maintenance, or goes away.
//!
//! Indexes are millisecond clock readings that only grow (the next index is at least the last
//! plus one), so they stay comparable across agent restarts: a client holding an index from
//! before a restart gets an answer at once instead of waiting for the counter to catch up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use opsbro_api::catalog::{ServiceInstance, ServiceSummary};
use opsbro_api::events::{Payload, ServiceChanged};
use opsbro_checks::CheckState;
use opsbro_gossip::MemberState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::events::EventBus;
use crate::membership::health_word;
use crate::membership::{Membership, Peer};

/// One service's instances and the index of their last change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// Index of the last change of this service's instances.
    pub index: u64,
    /// Its instances, by node name.
    pub instances: Vec<ServiceInstance>,
}

/// The whole catalog.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// Index of the last change of any service.
    pub index: u64,
    /// Services by name.
    pub services: BTreeMap<String, Entry>,
    /// Whether instances in WARNING count as passing.
    pub warning_passes: bool,
}

impl Catalog {
    /// Every service, by name.
    pub fn summaries(&self) -> Vec<ServiceSummary> {
        self.services
            .iter()
            .map(|(name, e)| {
                let mut tags: Vec<String> = e
                    .instances
                    .iter()
                    .flat_map(|i| i.tags.iter().cloned())
                    .collect();
                tags.sort();
                tags.dedup();
                ServiceSummary {
                    name: name.clone(),
                    tags,
                    instances: e.instances.len(),
                    passing: e.instances.iter().filter(|i| i.passing).count(),
                }
            })
            .collect()
    }

    /// The index of `service` (0 when it does not exist: any change to it passes it).
    pub fn index_of(&self, service: &str) -> u64 {
        self.services.get(service).map_or(0, |e| e.index)
    }
}

/// The catalog as last built; `changed()` wakes blocking reads.
pub type CatalogWatch = watch::Receiver<Arc<Catalog>>;

/// Whether DNS and `?passing` answer with an instance.
fn passing(
    state: CheckState,
    warning_passes: bool,
    maintenance: bool,
    node_maintenance: bool,
) -> bool {
    !maintenance
        && !node_maintenance
        && (state == CheckState::Ok || (warning_passes && state == CheckState::Warning))
}

/// The instances of every service of the live members.
pub fn instances(peers: &[Peer], warning_passes: bool) -> BTreeMap<String, Vec<ServiceInstance>> {
    let mut out: BTreeMap<String, Vec<ServiceInstance>> = BTreeMap::new();
    for p in peers
        .iter()
        .filter(|p| matches!(p.state, MemberState::Alive | MemberState::Suspect))
    {
        for s in &p.services {
            let state = CheckState::from_wire(s.state);
            out.entry(s.name.clone())
                .or_default()
                .push(ServiceInstance {
                    service: s.name.clone(),
                    node: p.name.clone(),
                    uuid: p.uuid,
                    zone: p.zone.clone(),
                    node_state: p.state.as_str().to_owned(),
                    address: s.address.unwrap_or_else(|| p.addr.ip()),
                    port: s.port,
                    tags: s.tags.clone(),
                    meta: s.meta.iter().cloned().collect(),
                    state: health_word(state).to_owned(),
                    maintenance: s.maintenance.clone(),
                    node_maintenance: p.maintenance.clone(),
                    passing: passing(
                        state,
                        warning_passes,
                        s.maintenance.is_some(),
                        p.maintenance.is_some(),
                    ),
                });
        }
    }
    for list in out.values_mut() {
        list.sort_by(|a, b| a.node.cmp(&b.node).then(a.uuid.cmp(&b.uuid)));
    }
    out
}

/// What an instance looks like in a `service` event.
fn event_state(i: &ServiceInstance) -> String {
    if i.maintenance.is_some() || i.node_maintenance.is_some() {
        "maintenance".to_owned()
    } else {
        i.state.clone()
    }
}

/// The events between two builds of one service's instances.
fn diff(service: &str, old: &[ServiceInstance], new: &[ServiceInstance]) -> Vec<ServiceChanged> {
    let mut out = Vec::new();
    let event = |i: &ServiceInstance, state: String, old_state: String| ServiceChanged {
        service: service.to_owned(),
        node: i.node.clone(),
        uuid: i.uuid.to_string(),
        state,
        old_state,
    };
    for n in new {
        match old.iter().find(|o| o.uuid == n.uuid) {
            None => out.push(event(n, event_state(n), "new".into())),
            Some(o) if event_state(o) != event_state(n) => {
                out.push(event(n, event_state(n), event_state(o)));
            }
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|n| n.uuid == o.uuid) {
            out.push(event(o, "gone".into(), event_state(o)));
        }
    }
    out
}

/// The next index: the clock in ms, at least one past `last`.
fn next_index(last: u64) -> u64 {
    crate::host::unix_ms().max(last.saturating_add(1))
}

/// Build `next` from `prev` and the new instances: services whose instances changed get a new
/// index; the events of the changes are returned.
fn rebuild(
    prev: &Catalog,
    now: BTreeMap<String, Vec<ServiceInstance>>,
) -> (Catalog, Vec<ServiceChanged>) {
    let mut next = Catalog {
        index: prev.index,
        services: BTreeMap::new(),
        warning_passes: prev.warning_passes,
    };
    let mut events = Vec::new();
    let mut index = None;
    for (name, instances) in now {
        let old = prev.services.get(&name);
        let same = old.is_some_and(|e| e.instances == instances);
        let entry_index = if same {
            old.map_or(0, |e| e.index)
        } else {
            events.extend(diff(
                &name,
                old.map_or(&[][..], |e| &e.instances),
                &instances,
            ));
            *index.get_or_insert_with(|| next_index(prev.index))
        };
        next.services.insert(
            name,
            Entry {
                index: entry_index,
                instances,
            },
        );
    }
    for (name, e) in &prev.services {
        if !next.services.contains_key(name) {
            events.extend(diff(name, &e.instances, &[]));
            index.get_or_insert_with(|| next_index(prev.index));
        }
    }
    if let Some(i) = index {
        next.index = i;
    }
    (next, events)
}

/// Keep the catalog from the membership until `shutdown`; service changes go on the bus.
pub fn start(
    mut membership: Membership,
    warning_passes: bool,
    bus: EventBus,
    tracker: &tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) -> CatalogWatch {
    let empty = Catalog {
        warning_passes,
        ..Catalog::default()
    };
    let (first, _) = rebuild(
        &empty,
        instances(&membership.borrow_and_update(), warning_passes),
    );
    let (tx, rx) = watch::channel(Arc::new(first));
    tracker.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = membership.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            let now = instances(&membership.borrow_and_update(), warning_passes);
            let prev = tx.borrow().clone();
            let (next, events) = rebuild(&prev, now);
            if events.is_empty() && next == *prev {
                continue;
            }
            for e in events {
                bus.publish(Payload::Service(e), None);
            }
            tx.send_replace(Arc::new(next));
        }
    });
    rx
}

/// Wait until `service`'s index passes `index`, at most `wait`; answers the catalog then.
pub async fn wait_past(
    catalog: &CatalogWatch,
    service: Option<&str>,
    index: u64,
    wait: Duration,
) -> Arc<Catalog> {
    let mut rx = catalog.clone();
    let passed = |c: &Catalog| match service {
        Some(s) => c.index_of(s) > index,
        None => c.index > index,
    };
    let _ = tokio::time::timeout(wait, rx.wait_for(|c| passed(c))).await;
    rx.borrow().clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsbro_gossip::ServiceRecord;
    use opsbro_types::NodeUuid;

    fn peer(n: u8, services: Vec<ServiceRecord>) -> Peer {
        Peer {
            uuid: NodeUuid::from_bytes([n; 16]),
            name: format!("n{n}"),
            addr: std::net::SocketAddr::from(([10, 0, 0, n], 6768)),
            groups: vec![],
            state: MemberState::Alive,
            zone: "dc1".into(),
            critical: false,
            maintenance: None,
            services,
        }
    }

    fn web(state: CheckState) -> ServiceRecord {
        ServiceRecord {
            name: "web".into(),
            port: 80,
            address: None,
            tags: vec!["primary".into()],
            meta: vec![],
            state: state.to_wire(),
            maintenance: None,
        }
    }

    #[test]
    fn instances_passing_and_indexes() {
        let mut peers = vec![
            peer(1, vec![web(CheckState::Ok)]),
            peer(2, vec![web(CheckState::Warning)]),
            peer(3, vec![web(CheckState::Ok)]),
        ];
        peers[2].state = MemberState::Dead;
        let (c1, events) = rebuild(&Catalog::default(), instances(&peers, false));
        assert_eq!(events.len(), 2, "{events:?}");
        let web1 = &c1.services["web"];
        assert_eq!(web1.instances.len(), 2, "dead nodes have no instances");
        assert_eq!(web1.instances[0].address.to_string(), "10.0.0.1");
        assert!(web1.instances[0].passing);
        assert!(
            !web1.instances[1].passing,
            "warning does not pass by default"
        );
        assert!(
            instances(&peers, true)["web"][1].passing,
            "unless configured"
        );
        assert_eq!(c1.summaries()[0].passing, 1);
        // Nothing changed: same index, no events.
        let (c2, events) = rebuild(&c1, instances(&peers, false));
        assert!(events.is_empty());
        assert_eq!(c2.index_of("web"), web1.index);
        // Node 1 goes into maintenance: a new index and a `maintenance` event.
        peers[0].maintenance = Some("reboot".into());
        let (c3, events) = rebuild(&c2, instances(&peers, false));
        assert!(c3.index_of("web") > c2.index_of("web"));
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].node.as_str(), events[0].state.as_str()),
            ("n1", "maintenance")
        );
        assert!(!c3.services["web"].instances[0].passing);
        // The service goes away everywhere: `gone` events, the service leaves the catalog.
        let (c4, events) = rebuild(&c3, instances(&[], false));
        assert!(c4.services.is_empty());
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| e.state == "gone"));
        assert!(c4.index > c3.index);
    }

    #[tokio::test]
    async fn blocking_reads_wake_on_a_change_or_time_out() {
        let (tx, rx) = watch::channel(Arc::new(Catalog::default()));
        let (c1, _) = rebuild(
            &Catalog::default(),
            instances(&[peer(1, vec![web(CheckState::Ok)])], false),
        );
        let index = c1.index_of("web");
        tx.send_replace(Arc::new(c1.clone()));
        // Nothing newer: the wait ends at its deadline with the same index.
        let same = wait_past(&rx, Some("web"), index, Duration::from_millis(50)).await;
        assert_eq!(same.index_of("web"), index);
        let waiter = tokio::spawn({
            let rx = rx.clone();
            async move {
                wait_past(&rx, Some("web"), index, Duration::from_secs(30))
                    .await
                    .index_of("web")
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (c2, _) = rebuild(
            &c1,
            instances(&[peer(1, vec![web(CheckState::Critical)])], false),
        );
        tx.send_replace(Arc::new(c2));
        let woke = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woke before the deadline")
            .expect("task");
        assert!(woke > index);
    }
}
