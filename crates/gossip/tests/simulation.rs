//! Deterministic simulations of the gossip core (issue 4): convergence, failure detection,
//! no false deaths under loss, partition healing, mass join.

use std::time::Duration;

use opsbro_gossip::sim::{NetConfig, Sim};
use opsbro_gossip::{GossipConfig, MemberState};

const STEP: Duration = Duration::from_millis(50);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// `n` nodes, all joined through node 0, run until every view is complete.
fn cluster(seed: u64, n: usize, net: NetConfig) -> Sim {
    let mut sim = Sim::new(seed, net, GossipConfig::default());
    for _ in 0..n {
        sim.add_node();
    }
    for i in 1..n {
        sim.join(i, 0);
    }
    let took = sim.run_until_cond(secs(120), STEP, Sim::views_complete);
    assert!(took.is_some(), "{n} nodes did not converge in 120 s");
    sim
}

#[test]
fn five_nodes_joined_through_one_seed_see_each_other_alive() {
    let sim = cluster(1, 5, NetConfig::default());
    for v in 0..5 {
        for t in 0..5 {
            if v != t {
                assert_eq!(
                    sim.state_in_view(v, t),
                    Some(MemberState::Alive),
                    "{v} sees {t}"
                );
            }
        }
    }
}

#[test]
fn thousand_nodes_join_through_one_seed_and_every_view_is_complete() {
    let mut sim = Sim::new(2, NetConfig::default(), GossipConfig::default());
    for _ in 0..1000 {
        sim.add_node();
    }
    for i in 1..1000 {
        sim.join(i, 0);
    }
    let took = sim.run_until_cond(secs(60), Duration::from_millis(250), Sim::views_complete);
    let took = took.expect("100% of views complete within 60 virtual seconds");
    assert!(took <= secs(30), "mass join took {took:?}");
    assert_eq!(sim.stats.false_deaths, 0);
}

#[test]
fn in_a_thousand_node_cluster_a_new_node_is_seen_by_everyone_and_a_crash_by_everyone() {
    let mut sim = cluster(3, 1000, NetConfig::default());
    sim.run_for(secs(10));
    let newcomer = sim.add_node();
    sim.join(newcomer, 17);
    let took = sim
        .run_until_cond(secs(30), STEP, |s| s.all_see(newcomer, MemberState::Alive))
        .expect("every view has the newcomer");
    assert!(took <= secs(5), "join took {took:?} to reach every view");

    sim.crash(500);
    let took = sim
        .run_until_cond(secs(120), STEP, |s| s.all_see(500, MemberState::Dead))
        .expect("every view marks the crashed node dead");
    assert!(took <= secs(90), "crash detection took {took:?}");
    assert_eq!(sim.stats.false_deaths, 0);
}

#[test]
fn a_crashed_node_is_declared_dead_by_everyone() {
    let mut sim = cluster(4, 100, NetConfig::default());
    sim.run_for(secs(5));
    sim.crash(42);
    let took = sim
        .run_until_cond(secs(120), STEP, |s| s.all_see(42, MemberState::Dead))
        .expect("every view marks the crashed node dead");
    assert!(took <= secs(60), "took {took:?}");
    assert_eq!(sim.stats.false_deaths, 0);
}

#[test]
fn ten_percent_loss_for_ten_minutes_declares_no_healthy_node_dead() {
    let mut sim = cluster(5, 100, NetConfig::default());
    sim.set_loss(0.10);
    sim.run_for(secs(600));
    assert_eq!(
        sim.stats.false_deaths, 0,
        "healthy nodes were declared dead"
    );
    for t in 0..100 {
        assert!(
            sim.all_see(t, MemberState::Alive)
                || (0..100)
                    .all(|v| v == t || sim.state_in_view(v, t).is_some_and(MemberState::is_live))
        );
    }
}

#[test]
fn a_two_two_partition_heals_within_two_push_pull_intervals() {
    let mut sim = cluster(6, 4, NetConfig::default());
    sim.partition(&[vec![0, 1], vec![2, 3]]);
    sim.run_for(secs(300));
    assert_eq!(sim.state_in_view(0, 2), Some(MemberState::Dead));
    assert_eq!(sim.state_in_view(3, 1), Some(MemberState::Dead));
    sim.heal();
    let interval = GossipConfig::default().push_pull_interval;
    let took = sim
        .run_until_cond(interval * 2, STEP, |s| {
            (0..4).all(|t| s.all_see(t, MemberState::Alive))
        })
        .expect("one view again within two push-pull intervals");
    assert!(took <= interval * 2);
}

#[test]
fn a_graceful_leave_is_seen_as_left_not_dead() {
    let mut sim = cluster(7, 20, NetConfig::default());
    sim.leave(3);
    sim.run_for(secs(1));
    sim.crash(3); // the process exits after announcing
    sim.run_until_cond(secs(30), STEP, |s| s.all_see(3, MemberState::Left))
        .expect("every view marks the node left");
    sim.run_for(secs(60));
    assert!(
        sim.all_see(3, MemberState::Left),
        "left must stay left, not turn dead"
    );
}

#[test]
fn user_events_reach_every_node_once() {
    let mut sim = cluster(8, 30, NetConfig::default());
    let now = sim.now();
    // Events are created through the core's API on node 5.
    let event = {
        let node = sim_node_mut(&mut sim, 5);
        node.add_event(now, "deploy-done".into(), b"v2".to_vec(), now)
    };
    sim.run_for(secs(10));
    for v in 0..30 {
        let seen: Vec<_> = sim
            .node(v)
            .recent_events()
            .filter(|e| e.id == event.id)
            .collect();
        assert_eq!(seen.len(), 1, "node {v}");
    }
}

// `Sim` hands out `&Gossip` only; events are created through a tiny helper scenario API.
fn sim_node_mut(sim: &mut Sim, i: usize) -> &mut opsbro_gossip::Gossip {
    sim.node_mut(i)
}

#[test]
fn a_record_too_big_for_a_datagram_still_reaches_everyone_over_tcp() {
    let mut sim = cluster(9, 30, NetConfig::default());
    // 80 groups of 60 characters: about 5 KB, far over the 1400-byte datagram limit.
    let groups: Vec<String> = (0..80)
        .map(|i| format!("{i:02}-{}", "g".repeat(57)))
        .collect();
    sim.node_mut(4).set_groups(groups.clone());
    let uuid = sim.node(4).me().uuid;
    sim.run_until_cond(secs(30), STEP, |s| {
        (0..30).all(|v| {
            s.node(v)
                .member(&uuid)
                .is_some_and(|r| r.groups.len() == 80)
        })
    })
    .expect("every view has the big record");
    let mut seen = sim.node(17).member(&uuid).expect("member").groups.clone();
    seen.sort();
    let mut want = groups;
    want.sort();
    assert_eq!(seen, want);
    assert_eq!(sim.stats.false_deaths, 0);
}

#[test]
fn a_node_with_many_services_spreads_them_over_tcp_and_keeps_datagrams_bounded() {
    let mut sim = cluster(9, 30, NetConfig::default());
    // The most services a node declares, with tags and meta: far over one datagram.
    let services: Vec<opsbro_gossip::ServiceRecord> = (0..opsbro_gossip::codec::MAX_SERVICES)
        .map(|i| opsbro_gossip::ServiceRecord {
            name: format!("svc-{i:02}"),
            port: 8000 + u16::try_from(i).unwrap_or(0),
            address: None,
            tags: vec!["primary".into(), format!("shard-{i}")],
            meta: vec![("version".into(), "1.2.3".into())],
            state: 0,
            maintenance: None,
        })
        .collect();
    sim.node_mut(6).set_services(services.clone());
    let uuid = sim.node(6).me().uuid;
    sim.run_until_cond(secs(30), STEP, |s| {
        (0..30).all(|v| {
            s.node(v)
                .member(&uuid)
                .is_some_and(|r| r.services == services)
        })
    })
    .expect("every view has every service");
    // Maintenance is one small change: it spreads too.
    sim.node_mut(6).set_maintenance(Some("reboot".into()));
    sim.run_until_cond(secs(30), STEP, |s| {
        (0..30).all(|v| {
            s.node(v)
                .member(&uuid)
                .is_some_and(|r| r.maintenance.as_deref() == Some("reboot"))
        })
    })
    .expect("every view has the maintenance");
    assert_eq!(sim.stats.false_deaths, 0);
}
