//! Scratch: run the 10%-loss scenario over several seeds and print false deaths.
use opsbro_gossip::GossipConfig;
use opsbro_gossip::sim::{NetConfig, Sim};
use std::time::Duration;
fn main() {
    for seed in 16..40u64 {
        let mut sim = Sim::new(seed, NetConfig::default(), GossipConfig::default());
        for _ in 0..100 {
            sim.add_node();
        }
        for i in 1..100 {
            sim.join(i, 0);
        }
        sim.run_until_cond(
            Duration::from_secs(120),
            Duration::from_millis(50),
            Sim::views_complete,
        )
        .expect("conv");
        sim.set_loss(0.10);
        sim.run_for(Duration::from_secs(600));
        println!(
            "seed {seed}: false deaths {} {:?}",
            sim.stats.false_deaths, sim.stats.false_death_log
        );
    }
}
