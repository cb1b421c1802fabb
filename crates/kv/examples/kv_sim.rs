//! Run many random KV simulations (`opsbro_kv::sim::workload::random`) and report the rate and
//! any seed whose history breaks a rule.
//!
//! `cargo run --release -p opsbro-kv --example kv_sim -- [SEEDS] [FIRST_SEED] [THREADS]`
//!
//! Defaults: 2000 seeds from 0 on every core. `KV_SIM_STRICT=1` also asserts that CAS is
//! linearizable (`CheckOptions::cas_linearizable`, which the protocol does not promise: see
//! `opsbro_kv::sim::check`), to measure how often it is not. A failing seed replays alone with
//! `KV_SIM_SEED=<seed> cargo test -p opsbro-kv --test sim replay_one_seed -- --nocapture`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use opsbro_kv::sim::workload;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seeds = args.first().copied().unwrap_or(2000);
    let first = args.get(1).copied().unwrap_or(0);
    let threads = args
        .get(2)
        .copied()
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64));
    let strict = std::env::var("KV_SIM_STRICT").is_ok_and(|v| v == "1");
    let next = Arc::new(AtomicU64::new(first));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let totals = Arc::new(Mutex::new((0u64, 0u64, 0u64, 0u64)));
    // The benchmark's own stopwatch: it measures the simulator from outside and never feeds
    // a core (the crate's clock ban guards the cores' determinism).
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (next, failures, totals) = (next.clone(), failures.clone(), totals.clone());
            std::thread::spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + seeds {
                        return;
                    }
                    let mut scenario = workload::random(seed);
                    if strict {
                        scenario.check.cas_linearizable = scenario.check.cas_exclusive;
                    }
                    let report = scenario.run(seed);
                    if let Ok(mut t) = totals.lock() {
                        t.0 += report.history.len() as u64;
                        t.1 += report.acked_writes() as u64;
                        t.2 += report.elapsed_ms;
                        t.3 += report.stats.events;
                    }
                    if !report.passed() {
                        eprintln!("{}", report.explain());
                        if let Ok(mut f) = failures.lock() {
                            f.push(seed);
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let took = started.elapsed().as_secs_f64();
    let (ops, acked, virtual_ms, events) = totals.lock().map(|t| *t).unwrap_or_default();
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    println!(
        "{seeds} seeds ({first}..{}) on {threads} threads in {took:.1} s: {:.1} seeds/s; {ops} client operations ({acked} acknowledged writes), {:.0} virtual hours, {events} events",
        first + seeds,
        seeds as f64 / took,
        virtual_ms as f64 / 3_600_000.0,
    );
    if failures.is_empty() {
        println!("no violation");
    } else {
        let mut failures = failures;
        failures.sort_unstable();
        println!("{} failing seed(s): {failures:?}", failures.len());
        std::process::exit(1);
    }
}
