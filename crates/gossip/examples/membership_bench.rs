//! Membership benchmarks on the deterministic simulator (figures for BENCHMARKS.md).
//!
//! `cargo run --release -p opsbro-gossip --example membership_bench [N...]`
//!
//! For each cluster size: single-join convergence (time until 50%, 99% and 100% of the views
//! have the newcomer, over several joins), crash → dead on every view (several crashes), false
//! deaths at 10% packet loss over 10 virtual minutes, idle traffic per node, and mass join of
//! every node through one seed. The loss runs happen for N ≤ 100, or for every N with
//! `LOSS_ALL=1` (`LOSS_SEEDS` sets the number of seeds, default 3).
//!
//! Knobs (environment): `LOSS_PCT` (default 10) and `LOSS_SECS` (virtual seconds, default 600)
//! for the loss runs; `JOINS` (default 10) and `CRASHES` (default 5). Each size also prints the
//! wall and CPU time of its phases, the process's peak RSS (`VmHWM`) and the Serf convergence
//! model's times for the same N and loss (see [`serf_model_rounds`]). A size whose member
//! tables would not fit in the memory available is refused before it starts (`FORCE=1` runs it
//! anyway): every node holds every other one, so memory grows with N². `MASS_ONLY=1` stops each
//! size after its mass join; `ADMIT_PER_PEER` overrides
//! [`GossipConfig::max_new_members_per_peer`] (to see what the admission budget costs a mass
//! join).

use std::time::{Duration, Instant};

use opsbro_gossip::sim::{NetConfig, Sim};
use opsbro_gossip::{GossipConfig, MemberState};

const STEP: Duration = Duration::from_millis(10);

fn config() -> GossipConfig {
    let mut cfg = GossipConfig::default();
    cfg.max_new_members_per_peer = env_or("ADMIT_PER_PEER", cfg.max_new_members_per_peer);
    cfg
}

fn converged(seed: u64, n: usize, net: NetConfig) -> (Sim, Duration) {
    let mut sim = Sim::new(seed, net, config());
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

/// Cost of one entry of a member table (one node's view of one member) in this simulator, the
/// transient state of a mass join included: peak RSS / N² was 1550 B at N = 1000 and 1510 B at
/// N = 2000 (BENCHMARKS.md); rounded up for a margin.
const BYTES_PER_VIEW_ENTRY: f64 = 1600.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `/proc/self/status` field in kB (Linux only; 0 elsewhere).
fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `MemAvailable` of `/proc/meminfo` in kB (None when unknown).
fn mem_available_kb() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    })
}

/// CPU time (user + system) of this process in seconds, from `/proc/self/stat` (clock ticks of
/// 1/100 s, the Linux default).
fn cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) start after the last ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// Wall and CPU time of one phase.
struct Phase {
    wall: Instant,
    cpu: f64,
}

impl Phase {
    // The bench measures its own wall time; the cores still only see virtual time.
    #[allow(clippy::disallowed_methods)]
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: cpu_secs(),
        }
    }

    fn done(self, what: &str) {
        println!(
            "  [{what}: wall {:.1} s, cpu {:.1} s, RSS {:.2} GB, peak {:.2} GB]",
            self.wall.elapsed().as_secs_f64(),
            cpu_secs() - self.cpu,
            proc_status_kb("VmRSS:") as f64 / 1e6,
            proc_status_kb("VmHWM:") as f64 / 1e6,
        );
    }
}

/// Serf's convergence simulator (serf.io/docs/internals/simulator.html, `convergenceAtRound`):
/// contact = fanout / N × (1 − loss) × (1 − failed) × 0.5, infected(x) = N / (1 + (N + 1) ×
/// e^(−contact × N × x)) after x gossip rounds. Returns the rounds until `fraction` of the
/// nodes are infected (no failed nodes).
fn serf_model_rounds(n: usize, fanout: f64, loss: f64, fraction: f64) -> f64 {
    let n = n as f64;
    let rate = fanout * (1.0 - loss) * 0.5;
    // fraction = 1 / (1 + (n + 1) e^(−rate x))  ⇔  x = ln((n + 1) fraction / (1 − fraction)) / rate
    ((n + 1.0) * fraction / (1.0 - fraction)).ln() / rate
}

fn print_serf_model(n: usize, loss: f64) {
    let interval = 0.2;
    for fanout in [3.0, 4.0] {
        let t = |f: f64| serf_model_rounds(n, fanout, loss, f) * interval;
        println!(
            "serf model (interval 0.2 s, fanout {fanout}, loss {:.0}%): 50% {:.2} s, 99% {:.2} s, 99.99% {:.2} s, all but one node {:.2} s",
            loss * 100.0,
            t(0.5),
            t(0.99),
            t(0.9999),
            t(1.0 - 1.0 / n as f64),
        );
    }
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
    let loss_pct: f64 = env_or("LOSS_PCT", 10.0);
    let loss_secs: u64 = env_or("LOSS_SECS", 600);
    let joins: usize = env_or("JOINS", 10);
    let crashes: usize = env_or("CRASHES", 5);
    for n in sizes {
        println!("== N = {n}");
        print_serf_model(n, 0.0);
        let need_kb = BYTES_PER_VIEW_ENTRY * (n as f64) * (n as f64) / 1000.0;
        if let Some(avail) = mem_available_kb()
            && need_kb > avail as f64
            && std::env::var_os("FORCE").is_none()
        {
            println!(
                "skipped: its member tables need about {:.1} GB ({BYTES_PER_VIEW_ENTRY} B per view entry × N²), {:.1} GB available (FORCE=1 runs it anyway)",
                need_kb / 1e6,
                avail as f64 / 1e6
            );
            print_serf_model(n, loss_pct / 100.0);
            continue;
        }
        let whole = Phase::start();
        let phase = Phase::start();
        let (mut sim, mass) = converged(1, n, NetConfig::default());
        println!(
            "mass join through one seed: 100% of views complete after {:.2} s",
            mass.as_secs_f64()
        );
        let refused: u64 = (0..n).map(|i| sim.node(i).stats().members_refused).sum();
        println!("  (new members refused by the per-peer admission budget, all nodes: {refused})");
        phase.done("mass join");
        if std::env::var_os("MASS_ONLY").is_some() {
            whole.done(&format!("N = {n} in all"));
            continue;
        }
        sim.run_for(Duration::from_secs(30));

        // Idle traffic.
        let phase = Phase::start();
        let (d0, b0) = (sim.stats.datagrams, sim.stats.bytes);
        let (p0, pb0) = (sim.stats.push_pulls, sim.stats.push_pull_bytes);
        sim.count_push_pull_bytes(true);
        let idle = Duration::from_secs(60);
        sim.run_for(idle);
        sim.count_push_pull_bytes(false);
        let per_node = |x: u64| x as f64 / idle.as_secs_f64() / n as f64;
        println!(
            "idle: {:.1} packets/s and {:.0} B/s per node",
            per_node(sim.stats.datagrams - d0),
            per_node(sim.stats.bytes - b0)
        );
        println!(
            "idle push-pull (TCP, both directions): {:.3} exchanges/s and {:.0} B/s per node",
            per_node(sim.stats.push_pulls - p0),
            per_node(sim.stats.push_pull_bytes - pb0)
        );
        phase.done("idle");

        // Single joins.
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        let mut alls = Vec::new();
        let phase = Phase::start();
        for trial in 0..joins {
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
            "single join ({joins} joins, median): 50% of views {:.2} s, 99% of views {:.2} s, all views {:.2} s (worst {:.2} s)",
            pct(&p50s, 0.5),
            pct(&p99s, 0.5),
            pct(&alls, 0.5),
            pct(&alls, 1.0)
        );
        println!("single join, 99% of views: worst {:.2} s", pct(&p99s, 1.0));
        phase.done("single joins");

        // Crashes.
        let phase = Phase::start();
        let mut crash = Vec::new();
        for k in 0..crashes {
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
            "crash → dead on every view ({crashes} crashes): median {:.2} s, worst {:.2} s; false deaths so far {}",
            pct(&crash, 0.5),
            pct(&crash, 1.0),
            sim.stats.false_deaths
        );
        phase.done("crashes");
        drop(sim);

        // Loss: several seeds (LOSS_SEEDS, default 3) of LOSS_SECS (default 10 virtual
        // minutes) at LOSS_PCT (default 10%) loss.
        if n <= 100 || std::env::var_os("LOSS_ALL").is_some() {
            let phase = Phase::start();
            let seeds: u64 = env_or("LOSS_SEEDS", 3);
            let mut total = 0;
            for seed in 0..seeds {
                let (mut lossy, _) = converged(100 + seed, n, NetConfig::default());
                lossy.set_loss(loss_pct / 100.0);
                lossy.run_for(Duration::from_secs(loss_secs));
                total += lossy.stats.false_deaths;
                if lossy.stats.false_deaths > 0 && std::env::var_os("VERBOSE").is_some() {
                    println!(
                        "  seed {}: {:?}",
                        100 + seed,
                        &lossy.stats.false_death_log[..3.min(lossy.stats.false_death_log.len())]
                    );
                }
            }
            println!("{loss_pct}% loss for {loss_secs} s, {seeds} seeds: {total} false deaths");
            phase.done("loss runs");
            print_serf_model(n, loss_pct / 100.0);
        }
        whole.done(&format!("N = {n} in all"));
    }
}
