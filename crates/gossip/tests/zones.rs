//! Zones on the deterministic simulator (issue 26): `internet` (2 proxies and 2 other nodes)
//! above `dc1` and `dc2` (30 nodes each, 2 of them proxies). Failure detection inside a zone,
//! relay through proxies, what each zone never learns, proxy failover, zone keys, loss, and a
//! live zone change.

use std::time::Duration;

use opsbro_gossip::sim::{NetConfig, Sim};
use opsbro_gossip::{GossipConfig, MemberState, ZoneTree};

const STEP: Duration = Duration::from_millis(50);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn tree() -> ZoneTree {
    ZoneTree::new(&[(
        "internet".to_owned(),
        vec!["dc1".to_owned(), "dc2".to_owned()],
    )])
    .expect("tree")
}

/// Node indexes per zone, proxies first.
struct Zones {
    sim: Sim,
    internet: Vec<usize>,
    dc1: Vec<usize>,
    dc2: Vec<usize>,
}

impl Zones {
    fn all(&self) -> impl Iterator<Item = usize> + '_ {
        self.internet
            .iter()
            .chain(&self.dc1)
            .chain(&self.dc2)
            .copied()
    }

    /// Whether no node of `zone` knows node `target` at all.
    fn never_known_by(&self, zone: &[usize], target: usize) -> bool {
        zone.iter()
            .all(|&v| v == target || self.sim.state_in_view(v, target).is_none())
    }
}

/// Build the three zones and run until every view is complete (as the rule allows).
fn three_zones(seed: u64, keys: bool) -> Zones {
    let cfg = GossipConfig {
        zones: tree(),
        ..GossipConfig::default()
    };
    let mut sim = Sim::new(seed, NetConfig::default(), cfg);
    if keys {
        sim.use_zone_keys();
    }
    let zone = |sim: &mut Sim, name: &str, proxies: usize, others: usize| -> Vec<usize> {
        let mut v: Vec<usize> = (0..proxies).map(|_| sim.add_node_in(name, true)).collect();
        v.extend((0..others).map(|_| sim.add_node_in(name, false)));
        v
    };
    let internet = zone(&mut sim, "internet", 2, 2);
    let dc1 = zone(&mut sim, "dc1", 2, 28);
    let dc2 = zone(&mut sim, "dc2", 2, 28);
    for &i in &internet[1..] {
        sim.join(i, internet[0]);
    }
    for dc in [&dc1, &dc2] {
        // Each proxy joins one internet proxy; the other nodes join their zone's first proxy.
        sim.join(dc[0], internet[0]);
        sim.join(dc[1], internet[1]);
        for &i in &dc[2..] {
            sim.join(i, dc[0]);
        }
    }
    let took = sim.run_until_cond(secs(120), STEP, Sim::views_complete);
    assert!(took.is_some(), "the three zones did not converge in 120 s");
    Zones {
        sim,
        internet,
        dc1,
        dc2,
    }
}

#[test]
fn each_node_keeps_its_zone_the_zones_below_and_only_the_proxies_above() {
    let z = three_zones(1, false);
    // internet sees everyone.
    for &v in &z.internet {
        assert_eq!(z.sim.node(v).live_count(), 64, "internet node {v}");
    }
    for (dc, other) in [(&z.dc1, &z.dc2), (&z.dc2, &z.dc1)] {
        for &v in dc {
            // Its zone and the two internet proxies.
            assert_eq!(z.sim.node(v).live_count(), 32, "node {v}");
            assert!(z.sim.state_in_view(v, z.internet[0]).is_some());
            assert!(
                z.sim.state_in_view(v, z.internet[2]).is_none(),
                "not a proxy"
            );
            assert!(other.iter().all(|&t| z.sim.state_in_view(v, t).is_none()));
        }
    }
    assert_eq!(z.sim.stats.false_deaths, 0);
}

#[test]
fn a_crash_in_dc1_is_known_in_dc1_and_internet_but_dc2_never_learns_dc1_nodes() {
    let mut z = three_zones(2, false);
    let victim = z.dc1[10];
    z.sim.crash(victim);
    let took = z
        .sim
        .run_until_cond(secs(60), STEP, |s| {
            s.all_allowed_see(victim, MemberState::Dead)
        })
        .expect("dc1 and internet mark the crashed node dead");
    assert!(
        z.internet
            .iter()
            .all(|&v| z.sim.state_in_view(v, victim) == Some(MemberState::Dead)),
        "internet learnt it through the proxies (took {took:?})"
    );
    z.sim.run_for(secs(60));
    for &t in &z.dc1[2..] {
        assert!(z.never_known_by(&z.dc2, t), "dc2 knows dc1 node {t}");
    }
    assert!(
        z.dc2
            .iter()
            .all(|&v| z.sim.node(v).stats().zone_filtered == 0),
        "nothing about dc1 was even sent to dc2"
    );
    assert_eq!(z.sim.stats.false_deaths, 0);
}

#[test]
fn a_crashed_proxy_is_replaced_by_the_second_one_and_news_keeps_flowing() {
    let mut z = three_zones(3, false);
    let (proxy, survivor) = (z.dc1[0], z.dc1[1]);
    z.sim.crash(proxy);
    z.sim
        .run_until_cond(secs(60), STEP, |s| {
            s.all_allowed_see(proxy, MemberState::Dead)
        })
        .expect("the proxy is dead for dc1 and internet");
    // A later crash in dc1 still reaches internet, through the survivor alone.
    let victim = z.dc1[20];
    z.sim.crash(victim);
    z.sim
        .run_until_cond(secs(60), STEP, |s| {
            s.all_allowed_see(victim, MemberState::Dead)
        })
        .expect("internet learns a dc1 death through the second proxy");
    // A newcomer of dc1 joining through an ordinary node reaches internet too.
    let newcomer = z.sim.add_node_in("dc1", false);
    z.sim.join(newcomer, z.dc1[5]);
    z.sim
        .run_until_cond(secs(60), STEP, |s| {
            s.all_allowed_see(newcomer, MemberState::Alive)
        })
        .expect("internet learns a dc1 newcomer through the second proxy");
    assert!(z.sim.is_up(survivor));
    assert!(z.never_known_by(&z.dc2, newcomer));
    assert_eq!(z.sim.stats.false_deaths, 0);
}

#[test]
fn zone_keys_let_the_zones_form_and_a_node_without_its_zone_key_never_merges() {
    let mut z = three_zones(4, true);
    assert_eq!(z.sim.stats.false_deaths, 0);
    // A node that claims dc1 but holds only a key of its own making.
    let rogue = z.sim.add_node_in("dc1", false);
    z.sim
        .set_node_keys(rogue, vec!["stolen-nothing".to_owned()]);
    // A dc2 node (dc2 key only) that tries to join a dc1 node.
    let stranger = z.sim.add_node_in("dc2", false);
    let dropped = z.sim.stats.undecryptable;
    z.sim.join(rogue, z.dc1[3]);
    z.sim.join(stranger, z.dc1[4]);
    z.sim.run_for(secs(60));
    assert!(
        z.sim.stats.undecryptable > dropped,
        "the joins were dropped"
    );
    for t in [rogue, stranger] {
        let everyone: Vec<usize> = z.all().collect();
        assert!(z.never_known_by(&everyone, t), "node {t} merged");
        assert_eq!(z.sim.node(t).live_count(), 1, "node {t} learnt members");
    }
}

#[test]
fn ten_percent_loss_for_ten_minutes_declares_no_healthy_node_dead_in_any_zone() {
    for seed in [5, 15, 25] {
        ten_percent_loss(seed);
    }
}

fn ten_percent_loss(seed: u64) {
    let mut z = three_zones(seed, false);
    z.sim.set_loss(0.10);
    z.sim.run_for(secs(600));
    assert_eq!(
        z.sim.stats.false_deaths, 0,
        "seed {seed}: {:?}",
        z.sim.stats.false_death_log
    );
    for t in z.all().collect::<Vec<_>>() {
        for v in z.all() {
            if v != t && z.sim.may_see(v, t) {
                assert!(
                    z.sim.state_in_view(v, t).is_some_and(MemberState::is_live),
                    "{v} lost {t}"
                );
            }
        }
    }
}

#[test]
fn a_live_zone_change_moves_a_node_from_dc1_to_dc2() {
    let mut z = three_zones(6, false);
    let mover = z.dc1[7];
    z.sim.set_zone(mover, "dc2");
    z.sim
        .run_until_cond(secs(60), STEP, |s| {
            s.all_allowed_see(mover, MemberState::Alive)
                && z.dc2.iter().all(|&v| s.state_in_view(mover, v).is_some())
        })
        .expect("dc2 and internet see the mover in dc2, and it sees dc2");
    z.sim
        .run_until_cond(secs(60), STEP, |s| {
            z.dc1
                .iter()
                .all(|&v| v == mover || s.state_in_view(v, mover).is_none())
        })
        .expect("dc1 forgets the mover");
    for &v in &z.internet {
        let zone = z
            .sim
            .node(v)
            .member(&z.sim.node(mover).me().uuid)
            .map(|r| r.zone.clone());
        assert_eq!(zone.as_deref(), Some("dc2"), "internet node {v}");
    }
    assert!(
        z.dc1[2..]
            .iter()
            .all(|&t| t == mover || z.sim.state_in_view(mover, t).is_none()),
        "the mover forgot dc1's ordinary nodes"
    );
    z.sim.run_for(secs(30));
    assert!(z.sim.views_complete());
    assert_eq!(z.sim.stats.false_deaths, 0);
}
