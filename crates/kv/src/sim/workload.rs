//! Random scenarios: a seed picks a cluster (3 to 6 nodes, replication, write acks, delay,
//! loss, clock skew), a few epochs of client operations on a handful of keys (reads, puts,
//! TTL puts, deletes, CAS on the last version seen, lists) under faults (partitions, cut
//! links, crashes with the ring dropping the node and taking it back, freezes, loss bursts),
//! and a check at the end of each epoch.

use super::{Action, Expect, Scenario, SimConfig};
use crate::WriteAcks;
use crate::rng::SeededRng;

/// Workload knobs.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Epochs (each ends with a check).
    pub epochs: usize,
    /// Length of an epoch's workload (ms).
    pub epoch_ms: (u64, u64),
    /// Time between two client operations (ms).
    pub gap_ms: (u64, u64),
    /// Faults per epoch.
    pub faults: (u64, u64),
    /// Chance that partitions split the membership too (each side drops the other from its
    /// ring, as gossip would); CAS exclusivity is not asserted then.
    pub split_membership: f64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            epochs: 2,
            epoch_ms: (20_000, 40_000),
            gap_ms: (20, 400),
            faults: (1, 4),
            split_membership: 0.15,
        }
    }
}

/// The random scenario of `seed` with the default workload.
pub fn random(seed: u64) -> Scenario {
    random_with(seed, &Workload::default())
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Partition,
    Cut,
    Crash,
    Freeze,
    Loss,
}

/// The random scenario of `seed`.
pub fn random_with(seed: u64, w: &Workload) -> Scenario {
    let mut rng = SeededRng::new(seed ^ 0x5EED_0F5C_E7A2_1000);
    let nodes = rng.between(3, 6) as usize;
    let mut config = SimConfig {
        nodes,
        uuid_salt: seed,
        ..SimConfig::default()
    };
    config.core.replication_factor = if rng.chance(0.2) { 2 } else { 3 };
    config.core.write_acks = match rng.below(10) {
        0 | 1 => WriteAcks::One,
        2 => WriteAcks::All,
        _ => WriteAcks::Quorum,
    };
    config.delay_ms = (1, rng.between(3, 40));
    config.loss = if rng.chance(0.6) {
        0.0
    } else {
        rng.between(1, 5) as f64 / 100.0
    };
    config.max_skew_ms = rng.between(0, 500);
    let split = rng.chance(w.split_membership);
    let mut scenario = Scenario::new(&format!("random {seed}"), config);
    if split {
        scenario.check.cas_exclusive = false;
    }
    let keys: Vec<String> = (0..rng.between(3, 8))
        .map(|i| {
            if i % 3 == 2 {
                format!("j/{i}")
            } else {
                format!("k/{i}")
            }
        })
        .collect();
    let mut t = 0u64;
    for _ in 0..w.epochs {
        let start = t;
        let end = start + rng.between(w.epoch_ms.0, w.epoch_ms.1);
        // Client operations.
        let mut at = start;
        while at < end {
            let node = rng.below(nodes);
            let key = rng.pick(&keys).cloned().unwrap_or_default();
            let action = match rng.below(100) {
                0..35 => Action::Get { node, key },
                35..60 => Action::Put {
                    node,
                    key,
                    ttl_ms: 0,
                },
                60..65 => Action::Put {
                    node,
                    key,
                    ttl_ms: rng.between(200, 8_000),
                },
                65..75 => Action::Delete { node, key },
                75..90 => Action::Cas {
                    node,
                    key,
                    expect: Expect::LastSeen,
                },
                90..95 => Action::Cas {
                    node,
                    key,
                    expect: Expect::Absent,
                },
                _ => Action::List {
                    node,
                    prefix: if rng.chance(0.5) { "k/" } else { "" }.into(),
                },
            };
            scenario.actions.push((at, action));
            at += rng.between(w.gap_ms.0, w.gap_ms.1);
        }
        // Faults, each on nodes free at that time, ending before the check.
        let mut busy_until = vec![start; nodes];
        let mut removed: Vec<(usize, u64, u64)> = Vec::new();
        let faults = rng.between(w.faults.0, w.faults.1);
        for _ in 0..faults {
            let kind = match rng.below(5) {
                0 => Fault::Partition,
                1 => Fault::Cut,
                2 => Fault::Crash,
                3 => Fault::Freeze,
                _ => Fault::Loss,
            };
            let begin = rng.between(start, end.saturating_sub(1_000).max(start));
            let stop = (begin + rng.between(1_000, 20_000)).min(end);
            match kind {
                Fault::Partition => {
                    let mut side: Vec<usize> = (0..nodes).filter(|_| rng.chance(0.5)).collect();
                    if side.is_empty() || side.len() == nodes {
                        side = vec![rng.below(nodes)];
                    }
                    let other: Vec<usize> = (0..nodes).filter(|n| !side.contains(n)).collect();
                    scenario
                        .actions
                        .push((begin, Action::Partition(vec![side.clone()])));
                    scenario.actions.push((stop, Action::Heal));
                    if split && stop > begin + 3_000 {
                        for (mine, theirs) in [(&side, &other), (&other, &side)] {
                            for &n in mine.iter() {
                                let ring: Vec<usize> =
                                    (0..nodes).filter(|x| !theirs.contains(x)).collect();
                                scenario.actions.push((
                                    begin + 3_000,
                                    Action::RingOf {
                                        node: n,
                                        nodes: ring,
                                    },
                                ));
                            }
                        }
                        scenario
                            .actions
                            .push((stop, Action::Ring((0..nodes).collect())));
                    }
                }
                Fault::Cut => {
                    // One or two links: some nodes reach a node the others cannot.
                    for _ in 0..rng.between(1, 2) {
                        let a = rng.below(nodes);
                        let b = (a + 1 + rng.below(nodes - 1)) % nodes;
                        scenario.actions.push((begin, Action::Cut(a, b)));
                    }
                    scenario.actions.push((stop, Action::Heal));
                }
                Fault::Crash | Fault::Freeze => {
                    let node = rng.below(nodes);
                    if busy_until[node] > begin {
                        continue;
                    }
                    busy_until[node] = stop;
                    if let Fault::Crash = kind {
                        scenario.actions.push((begin, Action::Crash(node)));
                        scenario.actions.push((stop, Action::Restart(node)));
                        // Gossip declares it dead after a while: the ring drops it.
                        if stop > begin + 6_000 {
                            removed.push((node, begin + 5_000, stop));
                        }
                    } else {
                        scenario.actions.push((begin, Action::Freeze(node)));
                        scenario.actions.push((stop, Action::Thaw(node)));
                    }
                }
                Fault::Loss => {
                    let p = rng.between(10, 30) as f64 / 100.0;
                    scenario.actions.push((begin, Action::Loss(p)));
                    scenario
                        .actions
                        .push((stop, Action::Loss(scenario.config.loss)));
                }
            }
        }
        // Ring changes at each boundary of a removal, with the set removed at that time.
        let mut boundaries: Vec<u64> = removed.iter().flat_map(|(_, a, b)| [*a, *b]).collect();
        boundaries.sort_unstable();
        boundaries.dedup();
        for b in boundaries {
            let ring: Vec<usize> = (0..nodes)
                .filter(|n| !removed.iter().any(|(r, a, z)| r == n && *a <= b && b < *z))
                .collect();
            scenario.actions.push((b, Action::Ring(ring)));
        }
        scenario.actions.push((end + 1, Action::Check));
        t = end + 2;
    }
    scenario
}
