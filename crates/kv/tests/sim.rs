//! Deterministic simulations of the KV core (`opsbro_kv::sim`): the history checker over
//! hundreds of random seeds (faults of every kind), and named scenarios — a partition that
//! heals (with one ring, and with each side dropping the other from its ring), a coordinator
//! that crashes in the middle of writes and restarts, and a coordinator that freezes while
//! holding writes in flight.

use opsbro_kv::sim::{Action, Expect, Outcome, Report, Scenario, SimConfig, workload};
use opsbro_kv::{ClientAnswer, ClientRequest, KvError};

/// Random seeds per test function (four functions, so `cargo test` spreads them over cores).
const SEEDS_PER_TEST: u64 = 250;

fn assert_passed(r: &Report) {
    assert!(r.passed(), "{}", r.explain());
}

fn random_seeds(range: std::ops::Range<u64>) -> Vec<Report> {
    let reports: Vec<Report> = range.map(|s| workload::random(s).run(s)).collect();
    let failing: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(Report::explain)
        .collect();
    assert!(
        failing.is_empty(),
        "{} seed(s) break a rule:\n{}",
        failing.len(),
        failing.join("\n")
    );
    reports
}

/// The seeds must exercise what they claim to: acknowledged and failed writes, timeouts,
/// crashes, freezes, CAS successes and refusals.
fn assert_exercised(reports: &[Report]) {
    let ops = |f: &dyn Fn(&opsbro_kv::sim::OpRecord) -> bool| -> usize {
        reports
            .iter()
            .flat_map(|r| r.history.iter())
            .filter(|o| f(o))
            .count()
    };
    let acked = reports.iter().map(Report::acked_writes).sum::<usize>();
    let timed_out = ops(&|o| o.outcome == Outcome::TimedOut);
    let cas_ok = ops(&|o| {
        matches!(
            &o.request,
            ClientRequest::Write {
                op: opsbro_kv::wire::WriteOp::Put { cas: Some(_), .. },
                ..
            }
        ) && matches!(o.outcome, Outcome::Done(Ok(_)))
    });
    let cas_failed = ops(&|o| matches!(o.outcome, Outcome::Done(Err(KvError::CasFailed { .. }))));
    let crashes: u64 = reports.iter().map(|r| r.stats.crashes).sum();
    let freezes: u64 = reports.iter().map(|r| r.stats.freezes).sum();
    assert!(acked > 1000, "{acked} acknowledged writes");
    assert!(timed_out > 10, "{timed_out} timeouts");
    assert!(
        cas_ok > 50 && cas_failed > 50,
        "CAS: {cas_ok} ok, {cas_failed} refused"
    );
    assert!(
        crashes > 10 && freezes > 10,
        "{crashes} crashes, {freezes} freezes"
    );
}

#[test]
fn random_seeds_0_to_250_keep_every_rule() {
    assert_exercised(&random_seeds(0..SEEDS_PER_TEST));
}

#[test]
fn random_seeds_250_to_500_keep_every_rule() {
    assert_exercised(&random_seeds(SEEDS_PER_TEST..2 * SEEDS_PER_TEST));
}

#[test]
fn random_seeds_500_to_750_keep_every_rule() {
    assert_exercised(&random_seeds(2 * SEEDS_PER_TEST..3 * SEEDS_PER_TEST));
}

#[test]
fn random_seeds_750_to_1000_keep_every_rule() {
    assert_exercised(&random_seeds(3 * SEEDS_PER_TEST..4 * SEEDS_PER_TEST));
}

/// `KV_SIM_SEED=<n>` replays one random seed (a failure from the `kv_sim` example) and prints
/// its history; without it, seed 0.
#[test]
fn replay_one_seed() {
    let seed = std::env::var("KV_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let report = workload::random(seed).run(seed);
    if std::env::var("KV_SIM_SEED").is_ok() {
        for o in &report.history {
            eprintln!(
                "{:5} node {} {:>8}..{:<8} {:?} -> {:?}",
                o.id,
                o.node,
                o.invoked - opsbro_kv::sim::START,
                o.completed.map_or(0, |c| c - opsbro_kv::sim::START),
                o.request,
                o.outcome
            );
        }
    }
    assert_passed(&report);
}

fn quiet() -> SimConfig {
    SimConfig {
        nodes: 5,
        delay_ms: (2, 8),
        max_skew_ms: 100,
        ..SimConfig::default()
    }
}

fn writes_ok(r: &Report, key: &str, from_ms: u64, to_ms: u64) -> (usize, usize) {
    let mut total = 0;
    let mut ok = 0;
    for o in &r.history {
        let at = o.invoked - opsbro_kv::sim::START;
        if o.final_read || at < from_ms || at >= to_ms {
            continue;
        }
        if let ClientRequest::Write { key: k, .. } = &o.request
            && k == key
        {
            total += 1;
            if matches!(o.outcome, Outcome::Done(Ok(ClientAnswer::Written { .. }))) {
                ok += 1;
            }
        }
    }
    (ok, total)
}

/// A minority (2 of 5) is cut off for 15 s while clients write on both sides, then heals.
#[test]
fn partition_heal() {
    let cfg = quiet();
    let keys: Vec<String> = (0..8).map(|i| format!("p/{i}")).collect();
    let mut s = Scenario::new("partition heal", cfg);
    for (i, k) in keys.iter().enumerate() {
        s = s.at(
            0,
            Action::Put {
                node: i % 5,
                key: k.clone(),
                ttl_ms: 0,
            },
        );
    }
    s = s.at(1_000, Action::Partition(vec![vec![0, 1]]));
    let mut t = 1_100;
    let mut n = 0usize;
    while t < 30_000 {
        let key = keys[n % keys.len()].clone();
        let node = n % 5;
        let action = match n % 7 {
            0..=2 => Action::Put {
                node,
                key,
                ttl_ms: 0,
            },
            3 => Action::Delete { node, key },
            4 => Action::Cas {
                node,
                key,
                expect: Expect::LastSeen,
            },
            _ => Action::Get { node, key },
        };
        s = s.at(t, action);
        t += 150;
        n += 1;
    }
    s = s.at(16_000, Action::Heal).at(31_000, Action::Check);
    for seed in 0..20 {
        let r = s.run(seed);
        assert_passed(&r);
        // Both sides took writes while cut; the majority side acknowledged most of its own.
        let acked_during: usize = keys.iter().map(|k| writes_ok(&r, k, 1_100, 16_000).0).sum();
        assert!(
            acked_during > 20,
            "seed {seed}: {acked_during} writes acknowledged while cut"
        );
    }
}

/// The same partition, but gossip noticed: each side drops the other from its ring, so each
/// side has its own coordinators and acknowledges writes; after the heal the newest version
/// wins everywhere and no acknowledged write is lost to an older one. (CAS can succeed on
/// both sides then: not asserted.)
#[test]
fn partition_heal_with_split_membership() {
    let cfg = quiet();
    let keys: Vec<String> = (0..6).map(|i| format!("s/{i}")).collect();
    let mut s = Scenario::new("partition heal, split membership", cfg);
    s.check.cas_exclusive = false;
    s = s.at(500, Action::Partition(vec![vec![0, 1]]));
    for n in [0, 1] {
        s = s.at(
            3_500,
            Action::RingOf {
                node: n,
                nodes: vec![0, 1],
            },
        );
    }
    for n in [2, 3, 4] {
        s = s.at(
            3_500,
            Action::RingOf {
                node: n,
                nodes: vec![2, 3, 4],
            },
        );
    }
    let mut t = 0;
    let mut n = 0usize;
    while t < 25_000 {
        let key = keys[n % keys.len()].clone();
        let node = (n * 3) % 5;
        let action = match n % 5 {
            0..3 => Action::Put {
                node,
                key,
                ttl_ms: 0,
            },
            3 => Action::Delete { node, key },
            _ => Action::Get { node, key },
        };
        s = s.at(t, action);
        t += 120;
        n += 1;
    }
    s = s
        .at(15_000, Action::Heal)
        .at(15_000, Action::Ring(vec![0, 1, 2, 3, 4]))
        .at(26_000, Action::Check);
    for seed in 0..20 {
        let r = s.run(seed);
        assert_passed(&r);
        let minority_acked: usize = r
            .history
            .iter()
            .filter(|o| {
                let at = o.invoked - opsbro_kv::sim::START;
                (4_000..15_000).contains(&at)
                    && o.node <= 1
                    && matches!(o.outcome, Outcome::Done(Ok(ClientAnswer::Written { .. })))
            })
            .count();
        assert!(
            minority_acked > 5,
            "seed {seed}: the minority side, on its own ring, acknowledged {minority_acked} writes"
        );
    }
}

/// The coordinator of a key crashes while writes to that key are in flight — at every
/// millisecond from before it receives them to after it answered — and restarts 4 s later
/// with what its disk kept. Clients write on through the other owners meanwhile.
#[test]
fn crash_restart_of_a_coordinator_mid_write() {
    let cfg = quiet();
    let key = cfg.key_coordinated_by(0, "c/");
    let other = cfg.key_coordinated_by(3, "c/");
    for offset in 0..20u64 {
        let mut s = Scenario::new("coordinator crash mid-write", cfg.clone());
        s = s.at(
            0,
            Action::Put {
                node: 1,
                key: key.clone(),
                ttl_ms: 0,
            },
        );
        for (i, node) in [1usize, 2, 3, 4].into_iter().enumerate() {
            s = s.at(
                1_000 + i as u64,
                Action::Put {
                    node,
                    key: key.clone(),
                    ttl_ms: 0,
                },
            );
        }
        s = s.at(
            1_002,
            Action::Cas {
                node: 2,
                key: key.clone(),
                expect: Expect::LastSeen,
            },
        );
        s = s.at(1_000 + offset, Action::Crash(0));
        let mut t = 1_500;
        let mut n = 0usize;
        while t < 14_000 {
            let k = if n.is_multiple_of(2) {
                key.clone()
            } else {
                other.clone()
            };
            s = s.at(
                t,
                Action::Put {
                    node: 1 + n % 4,
                    key: k,
                    ttl_ms: 0,
                },
            );
            t += 250;
            n += 1;
        }
        s = s.at(5_000, Action::Restart(0)).at(15_000, Action::Check);
        for seed in 0..5 {
            let r = s.run(seed);
            assert_passed(&r);
            let (ok, total) = writes_ok(&r, &other, 1_500, 5_000);
            assert_eq!(
                ok, total,
                "offset {offset}: writes coordinated elsewhere go on"
            );
        }
    }
}

/// Regression: a coordinator that stops answering while holding writes in flight (frozen:
/// SIGSTOP, a VM paused). Its forwarders wait, then move to the next owner; gossip drops it
/// from the ring after 3 s and the other owners coordinate its keys; writes to other keys go
/// on. When it thaws 7.5 s later, it must not apply the writes it was holding over the writes
/// acknowledged meanwhile. (`kv.rs` forwarded with an 8 s deadline but moved on after 6 s:
/// the thawed node applied a write already acknowledged through another owner, over the
/// writes acknowledged since.)
#[test]
fn frozen_coordinator() {
    for client_timeout_ms in [30_000, 5_000] {
        let cfg = SimConfig {
            client_timeout_ms,
            ..quiet()
        };
        let frozen = 0;
        let key = cfg.key_coordinated_by(frozen, "f/");
        let other = cfg.key_coordinated_by(2, "f/");
        let mut s = Scenario::new("frozen coordinator", cfg);
        // Everything the frozen node holds is past its deadline when it thaws: a CAS it held
        // must not be applied over what the other owners acknowledged meanwhile.
        s.check.cas_linearizable = true;
        s = s.at(
            0,
            Action::Put {
                node: 1,
                key: key.clone(),
                ttl_ms: 0,
            },
        );
        // Writes reaching the coordinator just before it freezes and while it is frozen, and
        // CAS writes whose reads are under way when it freezes.
        for (at, node) in [(1_000, 1), (1_001, 2), (1_500, 3), (2_000, 4)] {
            s = s.at(
                at,
                Action::Put {
                    node,
                    key: key.clone(),
                    ttl_ms: 0,
                },
            );
        }
        for (at, node) in [(990, 3), (996, 4), (1_002, 2)] {
            s = s.at(
                at,
                Action::Cas {
                    node,
                    key: key.clone(),
                    expect: Expect::LastSeen,
                },
            );
        }
        s = s
            .at(1_006, Action::Freeze(frozen))
            .at(4_000, Action::Ring(vec![1, 2, 3, 4]));
        // Clients keep writing both keys through every other node.
        let mut t = 1_100;
        let mut n = 0usize;
        while t < 12_000 {
            let k = if n.is_multiple_of(2) {
                key.clone()
            } else {
                other.clone()
            };
            s = s.at(
                t,
                Action::Put {
                    node: 1 + n % 4,
                    key: k,
                    ttl_ms: 0,
                },
            );
            t += 200;
            n += 1;
        }
        s = s
            .at(8_500, Action::Thaw(frozen))
            .at(9_500, Action::Ring(vec![0, 1, 2, 3, 4]))
            .at(13_000, Action::Check);
        for seed in 0..20 {
            let r = s.run(seed);
            assert_passed(&r);
            // Other coordinators keep serving: every write to the other key is acknowledged.
            let (ok, total) = writes_ok(&r, &other, 1_100, 12_000);
            assert_eq!(
                ok, total,
                "seed {seed}: writes to a key the frozen node does not coordinate"
            );
            // Its own key is served by the next owner once the ring dropped it.
            let (ok, total) = writes_ok(&r, &key, 4_100, 8_500);
            assert!(
                ok * 10 >= total * 9,
                "seed {seed}: {ok} of {total} writes after the ring dropped it"
            );
            // The writes it held got no answer while it was frozen: their clients waited
            // (and, with a 5 s client timeout, gave up).
            for o in &r.history {
                let at = o.invoked - opsbro_kv::sim::START;
                if !(990..=2_000).contains(&at) || o.final_read {
                    continue;
                }
                if let ClientRequest::Write { key: k, .. } = &o.request
                    && *k == key
                {
                    let done = o.completed.map_or(u64::MAX, |c| c - opsbro_kv::sim::START);
                    if done <= 1_006 + 8 {
                        continue; // answered before it froze
                    }
                    assert!(
                        done >= 7_000,
                        "seed {seed}: op {} answered at {done} ms",
                        o.id
                    );
                    if client_timeout_ms == 5_000 {
                        assert_eq!(o.outcome, Outcome::TimedOut, "seed {seed}: op {}", o.id);
                    }
                }
            }
        }
    }
}

/// Regression: CAS has one coordinator. When some clients cannot reach a key's first owner
/// (one cut link), their CAS waits and fails instead of going to the second owner — which
/// would coordinate a CAS on the same version while the first owner takes another one.
#[test]
fn cas_stays_with_the_first_owner_when_some_clients_cannot_reach_it() {
    let cfg = quiet();
    let key = cfg.key_coordinated_by(0, "x/");
    let mut s = Scenario::new("CAS with a cut link", cfg);
    s = s
        .at(
            0,
            Action::Put {
                node: 2,
                key: key.clone(),
                ttl_ms: 0,
            },
        )
        .at(100, Action::Cut(0, 1));
    // Node 1's CAS times out at node 0 after the forwarding timeout (8 s); node 2's CAS on
    // the same version reaches node 0 around then.
    for (round, skew) in (0..12u64).zip([-20i64, -12, -8, -4, -2, 0, 1, 2, 4, 8, 12, 20]) {
        let t = 1_000 + round * 10_000;
        let other = u64::try_from(i64::try_from(t + 8_000).unwrap_or(0) + skew).unwrap_or(0);
        s = s
            .at(
                t,
                Action::Cas {
                    node: 1,
                    key: key.clone(),
                    expect: Expect::LastSeen,
                },
            )
            .at(
                other,
                Action::Cas {
                    node: 2,
                    key: key.clone(),
                    expect: Expect::LastSeen,
                },
            );
    }
    for seed in 0..10 {
        let r = s.run(seed);
        assert_passed(&r);
        for o in &r.history {
            let is_cas = matches!(
                &o.request,
                ClientRequest::Write {
                    op: opsbro_kv::wire::WriteOp::Put { cas: Some(_), .. },
                    ..
                }
            );
            if !is_cas {
                continue;
            }
            let ok = matches!(o.outcome, Outcome::Done(Ok(_)));
            match o.node {
                1 => assert!(!ok, "seed {seed}: op {} went around the first owner", o.id),
                _ => assert!(ok, "seed {seed}: op {}: {:?}", o.id, o.outcome),
            }
        }
    }
}

fn cas_ok(o: &opsbro_kv::sim::OpRecord) -> bool {
    matches!(
        &o.request,
        ClientRequest::Write {
            op: opsbro_kv::wire::WriteOp::Put { cas: Some(_), .. },
            ..
        }
    ) && matches!(o.outcome, Outcome::Done(Ok(_)))
}

/// With `write_acks: one`, a coordinator cut off from every replica acknowledges a write
/// with its own copy only — after its flush: crashing it at any moment after the answer
/// loses nothing.
#[test]
fn an_acknowledged_write_survives_a_crash_right_after_its_answer() {
    let mut cfg = quiet();
    cfg.core.write_acks = opsbro_kv::WriteAcks::One;
    cfg.disk_ms = (3, 12);
    let key = cfg.key_coordinated_by(0, "d/");
    for offset in 0..16u64 {
        let s = Scenario::new("crash right after the answer", cfg.clone())
            .at(500, Action::Partition(vec![vec![0]]))
            .at(
                1_000,
                Action::Put {
                    node: 0,
                    key: key.clone(),
                    ttl_ms: 0,
                },
            )
            .at(1_001 + offset, Action::Crash(0))
            .at(3_000, Action::Restart(0))
            .at(3_000, Action::Heal)
            .at(4_000, Action::Check);
        for seed in 0..5 {
            let r = s.run(seed);
            assert_passed(&r);
        }
    }
}

/// A node that was down comes back as its keys' first owner with stale copies, alone on its
/// side of a partition. A CAS through it on the version it still holds — which an earlier CAS
/// already replaced — must not succeed on its copy alone: a CAS reads `owners - write_acks +
/// 1` owners (here all three, with `write_acks: one`), under the current ring and the one
/// before it.
#[test]
fn cas_needs_a_read_quorum_after_a_stale_node_rejoins() {
    let mut cfg = quiet();
    cfg.core.write_acks = opsbro_kv::WriteAcks::One;
    let key = cfg.key_coordinated_by(0, "q/");
    // Every CAS comes after the joint reads that follow a ring change (with `write_acks: one`
    // they need every owner under the previous ring, the crashed node included): it is the
    // read quorum of the current ring that must stop the stale one.
    let s = Scenario::new("CAS through a stale node", cfg)
        .at(
            0,
            Action::Put {
                node: 1,
                key: key.clone(),
                ttl_ms: 0,
            },
        )
        .at(1_000, Action::Crash(0))
        .at(2_000, Action::Ring(vec![1, 2, 3, 4]))
        .at(
            24_000,
            Action::Cas {
                node: 2,
                key: key.clone(),
                expect: Expect::LastSeen,
            },
        )
        .at(
            25_000,
            Action::Put {
                node: 3,
                key: key.clone(),
                ttl_ms: 0,
            },
        )
        .at(30_000, Action::Restart(0))
        .at(30_000, Action::Ring(vec![0, 1, 2, 3, 4]))
        .at(30_000, Action::Partition(vec![vec![0]]))
        // The node's own (stale) copy becomes this client's last seen version...
        .at(
            54_000,
            Action::Get {
                node: 0,
                key: key.clone(),
            },
        )
        // ... and a CAS on it goes to the stale node.
        .at(
            58_000,
            Action::Cas {
                node: 0,
                key: key.clone(),
                expect: Expect::LastSeen,
            },
        )
        .at(65_000, Action::Heal)
        .at(66_000, Action::Check);
    for seed in 0..10 {
        let r = s.run(seed);
        assert_passed(&r);
        let first = r.history.iter().find(|o| o.node == 2 && cas_ok(o));
        assert!(first.is_some(), "seed {seed}: the first CAS succeeds");
        let stale = r
            .history
            .iter()
            .find(|o| o.node == 0 && !o.final_read && o.id > 3);
        assert!(
            stale.is_some_and(|o| !cas_ok(o)),
            "seed {seed}: the CAS through the stale node fails: {stale:?}"
        );
    }
}

/// Owners (node indexes) of `key` on the ring of `nodes` only.
fn owners_among(cfg: &SimConfig, key: &str, nodes: &[usize]) -> Vec<usize> {
    let uuids: Vec<opsbro_types::NodeUuid> = nodes.iter().map(|n| cfg.uuid(*n)).collect();
    opsbro_kv::Ring::new(&uuids)
        .owners(key, cfg.core.replication_factor)
        .iter()
        .filter_map(|u| nodes.iter().copied().find(|n| cfg.uuid(*n) == *u))
        .collect()
}

/// A node whose clock runs 30 s ahead (within the 60 s a stamp may be ahead) coordinated a
/// write that the next owner missed. Once the fast node is gone, that owner coordinates the
/// key with a clock 30 s behind the stored version; the replica holding it answers
/// `Superseded` (the other one is cut off, so that answer decides), and the write is stamped
/// again above it — never acknowledged below a version that stands (it would be lost when
/// that version spreads).
#[test]
fn a_write_is_never_acknowledged_below_a_version_stamped_by_a_fast_clock() {
    let mut cfg = quiet();
    cfg.clock_offsets_ms = vec![(0, 30_000)];
    // A key node 0 coordinates, whose next coordinator (without node 0) missed node 0's write
    // and keeps the other old owner as a replica.
    let (key, next, holder, other) = (0..)
        .find_map(|i| {
            let key = format!("t/{i}");
            let old = cfg.owners(&key);
            let new = owners_among(&cfg, &key, &[1, 2, 3, 4]);
            let (next, holder) = (new[0], *old.iter().find(|n| **n != 0 && **n != new[0])?);
            let other = *new.iter().find(|n| **n != next && **n != holder)?;
            (old[0] == 0 && new.contains(&holder)).then_some((key, next, holder, other))
        })
        .unwrap_or_default();
    let s = Scenario::new("fast clock", cfg)
        .at(500, Action::Cut(0, next))
        .at(
            1_000,
            Action::Put {
                node: 0,
                key: key.clone(),
                ttl_ms: 0,
            },
        )
        .at(2_000, Action::Crash(0))
        .at(2_000, Action::Heal)
        .at(2_500, Action::Ring(vec![1, 2, 3, 4]))
        .at(2_500, Action::Cut(next, other))
        .at(
            3_000,
            Action::Put {
                node: next,
                key: key.clone(),
                ttl_ms: 0,
            },
        )
        .at(4_000, Action::Heal)
        .at(10_000, Action::Restart(0))
        .at(10_000, Action::Ring(vec![0, 1, 2, 3, 4]))
        .at(11_000, Action::Check);
    for seed in 0..10 {
        let r = s.run(seed);
        assert_passed(&r);
        let fast = r.history.iter().find(|o| o.node == 0 && !o.final_read);
        assert!(
            matches!(fast.map(|o| &o.outcome), Some(Outcome::Done(Ok(_)))),
            "seed {seed}: the fast node's write is acknowledged: {fast:?}"
        );
        let (ok, total) = writes_ok(&r, &key, 2_900, 3_100);
        assert_eq!(
            (ok, total),
            (1, 1),
            "seed {seed}: the on-time write is acknowledged"
        );
        let _ = holder;
    }
}

/// A CAS at a key's first owner races a blind write that failed over to the second owner
/// (whose clock is 200 ms ahead, so its version is the newer). The CAS's read missed that
/// write; its replication meets it (`Superseded`). The CAS must fail rather than be stamped
/// again above a version it never compared with (`kv.rs` stamped again; here a CAS is never
/// retried, so CAS stays linearizable in this race).
#[test]
fn a_cas_that_meets_a_newer_version_fails_instead_of_stamping_above_it() {
    let mut cfg = quiet();
    let key = cfg.key_coordinated_by(0, "r/");
    let owners = cfg.owners(&key);
    let (second, third) = (owners[1], owners[2]);
    let entry = (0..5).find(|n| !owners.contains(n)).unwrap_or(4);
    let casser = (0..5)
        .find(|n| !owners.contains(n) && *n != entry)
        .unwrap_or(3);
    cfg.clock_offsets_ms = vec![(0, 0), (second, 200), (third, 0)];
    cfg.core.write_acks = opsbro_kv::WriteAcks::All;
    let mut s = Scenario::new("CAS meets a newer version", cfg)
        .at(
            0,
            Action::Put {
                node: casser,
                key: key.clone(),
                ttl_ms: 0,
            },
        )
        // The blind write's entry node cannot reach the first owner: after 8 s it goes to the
        // second owner. (`write_acks: all`: the second owner's answer decides the CAS.)
        .at(100, Action::Cut(entry, 0));
    s.check.cas_linearizable = true;
    for (round, lead) in (0..40u64).zip((-10i64..).step_by(1)) {
        let t = 1_000 + round * 10_000;
        let cas_at = u64::try_from(i64::try_from(t + 8_000).unwrap_or(0) - lead).unwrap_or(0);
        s = s
            .at(
                t,
                Action::Put {
                    node: entry,
                    key: key.clone(),
                    ttl_ms: 0,
                },
            )
            // The CAS client reads the version it will expect.
            .at(
                t + 4_000,
                Action::Get {
                    node: casser,
                    key: key.clone(),
                },
            )
            .at(
                cas_at,
                Action::Cas {
                    node: casser,
                    key: key.clone(),
                    expect: Expect::LastSeen,
                },
            );
    }
    for seed in 0..10 {
        let r = s.run(seed);
        assert_passed(&r);
        let overtaken = r
            .history
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Done(Err(KvError::Overtaken))))
            .count();
        assert!(overtaken > 0, "seed {seed}: no CAS met the newer version");
    }
}

/// Regression (random seed 8534): a CAS coordinated by a key's second owner, while the first
/// was out of the ring, was still under way (its read waiting on the dead node) when the first
/// owner rejoined and took a CAS on the same version; the rejoined node's copy to the second
/// owner was lost, and both succeeded. A CAS is stamped only by the key's first owner, and a
/// node coordinates no CAS right after its ring changed (or it joined).
#[test]
fn cas_across_a_ring_change_has_one_coordinator() {
    let cfg = SimConfig {
        nodes: 3,
        // The crashed node's host is gone: requests to it go unanswered.
        down_refuses: 0.0,
        ..quiet()
    };
    let key = cfg.key_coordinated_by(0, "g/");
    let owners = cfg.owners(&key);
    let (first, second, third) = (owners[0], owners[1], owners[2]);
    let s = Scenario::new("CAS across a ring change", cfg)
        .at(
            0,
            Action::Put {
                node: second,
                key: key.clone(),
                ttl_ms: 0,
            },
        )
        .at(1_000, Action::Crash(first))
        .at(2_000, Action::Ring(vec![second, third]))
        .at(
            13_500,
            Action::Get {
                node: third,
                key: key.clone(),
            },
        )
        // After its CAS pause, the second owner coordinates; its read waits on the dead node
        // (an owner under the previous ring).
        .at(
            14_000,
            Action::Cas {
                node: third,
                key: key.clone(),
                expect: Expect::LastSeen,
            },
        )
        // The first owner rejoins, cut off from the second; a CAS on the same version goes
        // to it.
        .at(14_500, Action::Restart(first))
        .at(14_500, Action::Cut(first, second))
        .at(14_500, Action::Ring(vec![first, second, third]))
        .at(
            14_600,
            Action::Cas {
                node: third,
                key: key.clone(),
                expect: Expect::LastSeen,
            },
        )
        .at(40_000, Action::Heal)
        .at(41_000, Action::Check);
    for seed in 0..10 {
        assert_passed(&s.run(seed));
    }
}

/// After a ring change, a CAS read needs a quorum of the owners under the previous ring too:
/// a CAS acknowledged by the old first owner and the third owner (the second missed it) must
/// be seen by the new first owner — the old second — even while handoff cannot reach it.
#[test]
fn a_cas_after_a_ring_change_reads_the_previous_owners_too() {
    let cfg = quiet();
    let key = cfg.key_coordinated_by(0, "h/");
    let old = cfg.owners(&key);
    let new = owners_among(&cfg, &key, &[1, 2, 3, 4]);
    let (a, b, c) = (old[0], old[1], old[2]);
    let d = new.iter().copied().find(|n| !old.contains(n)).unwrap_or(4);
    assert_eq!(
        new[0], b,
        "the second owner coordinates once the first is gone"
    );
    let mut s = Scenario::new("CAS reads the previous owners", cfg).at(
        0,
        Action::Put {
            node: b,
            key: key.clone(),
            ttl_ms: 0,
        },
    );
    s.check.cas_linearizable = true;
    s = s
        .at(
            500,
            Action::Get {
                node: d,
                key: key.clone(),
            },
        )
        // The second owner misses the first owner's CAS, and the third owner cannot hand it
        // to the second or to the node that becomes an owner.
        .at(1_000, Action::Cut(a, b))
        .at(1_000, Action::Cut(b, c))
        .at(1_000, Action::Cut(c, d))
        .at(
            2_000,
            Action::Cas {
                node: a,
                key: key.clone(),
                expect: Expect::LastSeen,
            },
        )
        .at(6_000, Action::Crash(a))
        .at(7_000, Action::Ring(vec![1, 2, 3, 4]))
        // After the CAS pause, a client that read the stale version through the new first
        // owner (the read waits 3 s for the third owner) tries a CAS on it.
        .at(
            18_500,
            Action::Get {
                node: b,
                key: key.clone(),
            },
        )
        .at(
            22_500,
            Action::Cas {
                node: b,
                key: key.clone(),
                expect: Expect::LastSeen,
            },
        )
        .at(30_000, Action::Heal)
        .at(30_000, Action::Restart(a))
        .at(30_000, Action::Ring(vec![0, 1, 2, 3, 4]))
        .at(31_000, Action::Check);
    for seed in 0..10 {
        let r = s.run(seed);
        assert_passed(&r);
        let first_cas = r.history.iter().find(|o| o.node == a && cas_ok(o));
        assert!(first_cas.is_some(), "seed {seed}: the first CAS succeeds");
    }
}

/// An entry node freezes while its client's write waits on the key's coordinator, for longer
/// than the client waits. When it thaws, it must not send the write on to the next owner —
/// over writes acknowledged long after its client gave up.
#[test]
fn a_write_held_by_a_frozen_entry_node_is_not_sent_on_when_it_thaws() {
    let cfg = quiet();
    let key = cfg.key_coordinated_by(0, "e/");
    let entry = (1..5).find(|n| !cfg.owners(&key).contains(n)).unwrap_or(4);
    let other = (1..5)
        .find(|n| *n != entry && !cfg.owners(&key).contains(n))
        .unwrap_or(3);
    let mut s = Scenario::new("frozen entry node", cfg)
        .at(500, Action::Cut(entry, 0))
        .at(
            1_000,
            Action::Put {
                node: entry,
                key: key.clone(),
                ttl_ms: 0,
            },
        )
        .at(1_100, Action::Freeze(entry));
    for t in (34_000..45_000).step_by(2_000) {
        s = s.at(
            t,
            Action::Put {
                node: other,
                key: key.clone(),
                ttl_ms: 0,
            },
        );
    }
    s = s
        .at(46_000, Action::Thaw(entry))
        .at(46_000, Action::Heal)
        .at(50_000, Action::Check);
    for seed in 0..10 {
        let r = s.run(seed);
        assert_passed(&r);
        assert_eq!(r.history[0].outcome, Outcome::TimedOut, "seed {seed}");
    }
}
