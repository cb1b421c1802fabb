//! Membership benchmarks on the deterministic simulator (figures for BENCHMARKS.md).
//!
//! `cargo run --release -p opsbro-gossip --example membership_bench [N...]`
//!
//! For each cluster size: single-join convergence (time until 50%, 99% and 100% of the views
//! have the newcomer, over several joins), crash → dead on every view (several crashes), false
//! deaths at 10% packet loss over 10 virtual minutes, idle traffic per node, and mass join of
//! every node through one seed. The loss runs happen for N ≤ 100, or for every N with
//! `LOSS_ALL=1` (`LOSS_SEEDS` sets the number of seeds, default 3).

use std::time::Duration;

use opsbro_gossip::sim::{NetConfig, Sim};
use opsbro_gossip::{GossipConfig, MemberState};

const STEP: Duration = Duration::from_millis(10);

fn converged(seed: u64, n: usize, net: NetConfig) -> (Sim, Duration) {
    let mut sim = Sim::new(seed, net, GossipConfig::default());
    for _ in 0..n {
        sim.add_node();
    }
    for i in 1..n {
        sim.join(i, 0);
    }
    let took = sim
        .run_until_cond(
            Duration::from_secs(600),
            Duration::from_millis(100),
            Sim::views_complete,
        )
        .expect("mass join converges");
    (sim, took)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1000]
    } else {
        sizes
    };
    for n in sizes {
        println!("== N = {n}");
        let (mut sim, mass) = converged(1, n, NetConfig::default());
        println!(
            "mass join through one seed: 100% of views complete after {:.2} s",
            mass.as_secs_f64()
        );
        sim.run_for(Duration::from_secs(30));

        // Idle traffic.
        let (d0, b0) = (sim.stats.datagrams, sim.stats.bytes);
        let idle = Duration::from_secs(60);
        sim.run_for(idle);
        let per_node = |x: u64| x as f64 / idle.as_secs_f64() / n as f64;
        println!(
            "idle: {:.1} packets/s and {:.0} B/s per node",
            per_node(sim.stats.datagrams - d0),
            per_node(sim.stats.bytes - b0)
        );

        // Single joins.
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        let mut alls = Vec::new();
        for trial in 0..10 {
            let newcomer = sim.add_node();
            sim.join(newcomer, (trial * 37) % n);
            let start = sim.now();
            let (mut t50, mut t99) = (None, None);
            let all = sim
                .run_until_cond(Duration::from_secs(60), STEP, |s| {
                    let viewers = (0..s.len()).filter(|&v| v != newcomer && s.is_up(v));
                    let total = viewers.clone().count();
                    let seen = viewers
                        .filter(|&v| s.state_in_view(v, newcomer) == Some(MemberState::Alive))
                        .count();
                    let t = (s.now() - start) as f64 / 1000.0;
                    if t50.is_none() && seen * 2 >= total {
                        t50 = Some(t);
                    }
                    if t99.is_none() && seen * 100 >= total * 99 {
                        t99 = Some(t);
                    }
                    seen == total
                })
                .expect("join converges");
            p50s.push(t50.unwrap_or(f64::NAN));
            p99s.push(t99.unwrap_or(f64::NAN));
            alls.push(all.as_secs_f64());
            sim.run_for(Duration::from_secs(5));
        }
        for v in [&mut p50s, &mut p99s, &mut alls] {
            v.sort_by(f64::total_cmp);
        }
        println!(
            "single join (10 joins, median): 50% of views {:.2} s, 99% of views {:.2} s, all views {:.2} s (worst {:.2} s)",
            pct(&p50s, 0.5),
            pct(&p99s, 0.5),
            pct(&alls, 0.5),
            pct(&alls, 1.0)
        );

        // Crashes.
        let mut crash = Vec::new();
        for k in 0..5 {
            let victim = (k * 131 + 7) % n;
            sim.crash(victim);
            let took = sim
                .run_until_cond(Duration::from_secs(300), STEP, |s| {
                    s.all_see(victim, MemberState::Dead)
                })
                .expect("crash detected");
            crash.push(took.as_secs_f64());
            sim.run_for(Duration::from_secs(5));
        }
        crash.sort_by(f64::total_cmp);
        println!(
            "crash → dead on every view (5 crashes): median {:.2} s, worst {:.2} s; false deaths so far {}",
            pct(&crash, 0.5),
            pct(&crash, 1.0),
            sim.stats.false_deaths
        );

        // Loss: several seeds (LOSS_SEEDS, default 3) of 10 virtual minutes at 10% loss.
        if n <= 100 || std::env::var_os("LOSS_ALL").is_some() {
            let seeds: u64 = std::env::var("LOSS_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3);
            let mut total = 0;
            for seed in 0..seeds {
                let (mut lossy, _) = converged(100 + seed, n, NetConfig::default());
                lossy.set_loss(0.10);
                lossy.run_for(Duration::from_secs(600));
                total += lossy.stats.false_deaths;
                if lossy.stats.false_deaths > 0 && std::env::var_os("VERBOSE").is_some() {
                    println!(
                        "  seed {}: {:?}",
                        100 + seed,
                        &lossy.stats.false_death_log[..3.min(lossy.stats.false_death_log.len())]
                    );
                }
            }
            println!("10% loss for 600 s, {seeds} seeds: {total} false deaths");
        }
    }
}
