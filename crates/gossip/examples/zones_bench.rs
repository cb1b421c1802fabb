//! Zones against a flat cluster on the deterministic simulator (figures for BENCHMARKS.md).
//!
//! `cargo run --release -p opsbro-gossip --example zones_bench [ZONES PER_ZONE PROXIES]`
//!
//! Same run, same seed, same node count (default 10 × 100 = 1000): a flat cluster (every node
//! in `internet`) and a zoned one (`internet` holds the first 100 nodes, 9 sub-zones `dc1` ..
//! `dc9` of it 100 each; 2 proxy nodes per zone). For each: mass join (every view complete as
//! the zone rule allows), idle traffic per node over 60 s, and `CRASHES` (default 5) crashes
//! of ordinary nodes (zones `internet`, `dc2`, `dc4`, ... in turn; the flat run crashes the
//! same node indexes) and one of a sub-zone proxy, each timed until every running node allowed
//! to see the victim says dead. `VERBOSE=1` prints each crash (its zone's time and the total).

use std::time::Duration;

use opsbro_gossip::sim::{NetConfig, Sim};
use opsbro_gossip::{GossipConfig, MemberState, ZoneTree};

const STEP: Duration = Duration::from_millis(10);

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Builds the cluster; `zones` = 0 gives the flat one. Returns the sim and, per zone, its nodes
/// (proxies first).
fn build(zones: usize, per_zone: usize, proxies: usize) -> (Sim, Vec<Vec<usize>>) {
    let subs: Vec<String> = (1..zones.max(1)).map(|k| format!("dc{k}")).collect();
    let tree = if zones == 0 {
        ZoneTree::default()
    } else {
        ZoneTree::new(&[("internet".to_owned(), subs.clone())]).expect("tree")
    };
    let cfg = GossipConfig {
        zones: tree,
        ..GossipConfig::default()
    };
    let mut sim = Sim::new(1, NetConfig::default(), cfg);
    let groups = zones.max(1);
    let mut layout = Vec::new();
    for z in 0..groups {
        let name = if z == 0 {
            "internet".to_owned()
        } else {
            subs[z - 1].clone()
        };
        let count = if zones == 0 { per_zone * 10 } else { per_zone };
        let nodes: Vec<usize> = (0..count)
            .map(|i| sim.add_node_in(&name, zones > 0 && i < proxies))
            .collect();
        layout.push(nodes);
    }
    let seed = layout[0][0];
    for (z, nodes) in layout.iter().enumerate() {
        for (i, &n) in nodes.iter().enumerate() {
            if z == 0 {
                if n != seed {
                    sim.join(n, seed);
                }
            } else if i < proxies {
                // Each sub-zone proxy joins one internet proxy, the others their first proxy.
                sim.join(n, layout[0][i % proxies.max(1)]);
            } else {
                sim.join(n, nodes[0]);
            }
        }
    }
    (sim, layout)
}

fn run(label: &str, zones: usize, per_zone: usize, proxies: usize) {
    let (mut sim, layout) = build(zones, per_zone, proxies);
    let n = sim.len();
    let mass = sim
        .run_until_cond(
            Duration::from_secs(600),
            Duration::from_millis(100),
            Sim::views_complete,
        )
        .expect("mass join converges");
    sim.run_for(Duration::from_secs(30));
    let (d0, b0) = (sim.stats.datagrams, sim.stats.bytes);
    let idle = Duration::from_secs(60);
    sim.run_for(idle);
    let per_node = |x: u64| x as f64 / idle.as_secs_f64() / n as f64;
    let packets = per_node(sim.stats.datagrams - d0);
    let bytes = per_node(sim.stats.bytes - b0);

    // Victims: ordinary nodes of five zones (node 10 + 7k of zone k), then a proxy of the
    // second zone (the flat run crashes the same indexes).
    let flat: Vec<usize> = layout.concat();
    let pick = |zone: usize, i: usize| -> usize {
        let z = zone % layout.len();
        if layout.len() == 1 {
            flat[(zone * per_zone + i) % flat.len()]
        } else {
            layout[z][i % layout[z].len()]
        }
    };
    let mut crash = Vec::new();
    let mut viewers = Vec::new();
    let crashes: usize = std::env::var("CRASHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    for k in 0..crashes {
        let victim = pick(k * 2, 10 + (7 * k) % 88);
        viewers.push(
            (0..n)
                .filter(|&v| v != victim && sim.is_up(v) && sim.may_see(v, victim))
                .count(),
        );
        sim.crash(victim);
        let zone = sim.node(victim).me().zone.clone();
        let start = sim.now();
        let mut in_zone = None;
        let took = sim
            .run_until_cond(Duration::from_secs(300), STEP, |s| {
                if in_zone.is_none()
                    && (0..n).all(|v| {
                        v == victim
                            || !s.is_up(v)
                            || s.node(v).me().zone != zone
                            || s.state_in_view(v, victim) == Some(MemberState::Dead)
                    })
                {
                    in_zone = Some((s.now() - start) as f64 / 1000.0);
                }
                s.all_allowed_see(victim, MemberState::Dead)
            })
            .expect("crash detected");
        if std::env::var_os("VERBOSE").is_some() {
            println!(
                "  {label}: node {victim} ({zone}): its zone {:.2} s, every allowed view {:.2} s",
                in_zone.unwrap_or(f64::NAN),
                took.as_secs_f64()
            );
        }
        crash.push(took.as_secs_f64());
        sim.run_for(Duration::from_secs(5));
    }
    let proxy = pick(1, 1);
    sim.crash(proxy);
    let proxy_took = sim
        .run_until_cond(Duration::from_secs(300), STEP, |s| {
            s.all_allowed_see(proxy, MemberState::Dead)
        })
        .expect("proxy crash detected");
    crash.sort_by(f64::total_cmp);
    println!(
        "{label}: {n} nodes; mass join {:.2} s; idle {packets:.2} packets/s, {bytes:.0} B/s per node; \
         crash → dead on every allowed view ({crashes} crashes, {:?} viewers): median {:.2} s, worst {:.2} s; \
         node {proxy} (a proxy when zoned) {:.2} s; false deaths {}",
        mass.as_secs_f64(),
        viewers,
        pct(&crash, 0.5),
        pct(&crash, 1.0),
        proxy_took.as_secs_f64(),
        sim.stats.false_deaths
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let zones = args.first().copied().unwrap_or(10);
    let per_zone = args.get(1).copied().unwrap_or(100);
    let proxies = args.get(2).copied().unwrap_or(2);
    run("flat", 0, per_zone * zones / 10, proxies);
    run("zoned", zones, per_zone, proxies);
}
