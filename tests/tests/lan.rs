//! Issue 5: LAN discovery and failure scenarios on real (virtual) hosts: network namespaces on a
//! bridge, one real agent per host. Scenarios adapted from the original opsbro test suite
//! (duo1 auto-join, duo12 auto-join at boot, duo10 bad key, duo6 indirect ping) plus a partition.

use std::time::Duration;

use opsbro_tests::netns::Lan;
use opsbro_tests::{opsbro_command, stdout, wait_for};

fn out(o: &std::process::Output) -> String {
    format!("{}{}", stdout(o), String::from_utf8_lossy(&o.stderr))
}

fn keygen() -> String {
    stdout(
        &opsbro_command()
            .args(["agent", "keygen"])
            .output()
            .expect("keygen"),
    )
    .trim()
    .to_owned()
}

#[test]
fn detect_auto_join_on_two_hosts_then_events_cross() {
    let mut lan = Lan::new(2).expect("lan");
    lan.start_agent(0, "", &[]).expect("agent 0");
    lan.start_agent(1, "", &[]).expect("agent 1");
    let o = lan.cli(0, &["gossip", "detect", "--timeout", "3"]);
    assert!(o.status.success(), "detect: {}", out(&o));
    assert!(stdout(&o).contains("host1"), "{}", out(&o));
    assert!(
        !stdout(&o).contains("host0"),
        "an agent never lists itself: {}",
        out(&o)
    );
    let o = lan.cli(0, &["gossip", "detect", "--timeout", "3", "--auto-join"]);
    assert!(o.status.success(), "auto-join: {}", out(&o));
    assert!(stdout(&o).contains("joined host1"), "{}", out(&o));
    lan.wait_all_see(&[0, 1], &[0, 1], "alive", Duration::from_secs(20))
        .expect("both alive on both");

    for (from, to) in [(0usize, 1usize), (1, 0)] {
        let kind = format!("NODE{from}-END");
        assert!(
            lan.cli(from, &["gossip", "events", "add", &kind])
                .status
                .success()
        );
        let o = lan.cli(to, &["gossip", "events", "wait", &kind, "--timeout", "20"]);
        assert!(o.status.success(), "{}", out(&o));
    }
    let history = stdout(&lan.cli(1, &["gossip", "history"]));
    assert!(history.contains("host0"), "{history}");
}

#[test]
fn two_hosts_started_with_auto_detect_find_each_other() {
    let mut lan = Lan::new(2).expect("lan");
    lan.start_agent(0, "", &["--auto-detect"]).expect("agent 0");
    lan.start_agent(1, "", &["--auto-detect"]).expect("agent 1");
    lan.wait_all_see(&[0, 1], &[0, 1], "alive", Duration::from_secs(40))
        .unwrap_or_else(|e| panic!("{e}\nlog0:\n{}\nlog1:\n{}", lan.log(0), lan.log(1)));
}

#[test]
fn hosts_with_different_keys_never_detect_nor_join_each_other() {
    let mut lan = Lan::new(2).expect("lan");
    lan.start_agent(
        0,
        &format!("encryption_key: \"{}\"\n", keygen()),
        &["--auto-detect"],
    )
    .expect("agent 0");
    lan.start_agent(
        1,
        &format!("encryption_key: \"{}\"\n", keygen()),
        &["--auto-detect"],
    )
    .expect("agent 1");
    // 30 seconds of detection: nothing answers, and auto-detect joins nobody meanwhile.
    let o = lan.cli(0, &["gossip", "detect", "--timeout", "30"]);
    assert_eq!(o.status.code(), Some(1), "nothing must answer: {}", out(&o));
    assert!(out(&o).contains("no agent answered"), "{}", out(&o));
    let o = lan.cli(1, &["gossip", "detect", "--timeout", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    for i in [0, 1] {
        assert_eq!(
            lan.members(i).len(),
            1,
            "host{i} must know only itself: {:?}",
            lan.members(i)
        );
        let info: serde_json::Value =
            serde_json::from_slice(&lan.cli(i, &["agent", "info", "--json"]).stdout).expect("json");
        let refused = info["gossip"]["counters"]["rejected_unknown_key"]
            .as_u64()
            .unwrap_or(0);
        assert!(
            refused > 0,
            "host{i} counts the other's detect-pings as refused"
        );
    }
}

#[test]
fn three_hosts_with_the_link_between_1_and_3_cut_stay_alive_through_indirect_probes() {
    let mut lan = Lan::new(3).expect("lan");
    for i in 0..3 {
        lan.start_agent(i, "", &[]).expect("agent");
    }
    let seed = format!("{}:6768", lan.hosts[1].ip);
    for i in [0, 2] {
        let o = lan.cli(i, &["gossip", "join", &seed]);
        assert!(o.status.success(), "{}", out(&o));
    }
    lan.wait_all_see(&[0, 1, 2], &[0, 1, 2], "alive", Duration::from_secs(20))
        .expect("formed");
    lan.cut(0, 2).expect("cut 0-2");
    // 30 seconds without a direct path between host0 and host2.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        for v in 0..3 {
            for (n, s) in lan.members(v) {
                assert!(
                    s == "alive" || s == "suspect",
                    "host{v} sees {n} {s} after {:?}",
                    start.elapsed()
                );
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    lan.wait_all_see(&[0, 1, 2], &[0, 1, 2], "alive", Duration::from_secs(10))
        .expect("all alive everywhere");
}

#[test]
fn a_two_two_split_marks_the_other_side_dead_and_heals_within_two_push_pull_intervals() {
    let mut lan = Lan::new(4).expect("lan");
    // A shorter anti-entropy interval keeps the test short; the healing rule is the same.
    let config = "gossip:\n  push_pull_interval: 10s\n";
    for i in 0..4 {
        lan.start_agent(i, config, &[]).expect("agent");
    }
    let seed = format!("{}:6768", lan.hosts[0].ip);
    for i in 1..4 {
        assert!(lan.cli(i, &["gossip", "join", &seed]).status.success());
    }
    lan.wait_all_see(
        &[0, 1, 2, 3],
        &[0, 1, 2, 3],
        "alive",
        Duration::from_secs(20),
    )
    .expect("formed");
    lan.partition(&[0, 1], &[2, 3]).expect("split");
    lan.wait_all_see(&[0, 1], &[2, 3], "dead", Duration::from_secs(40))
        .expect("left side marks right dead");
    lan.wait_all_see(&[2, 3], &[0, 1], "dead", Duration::from_secs(40))
        .expect("right side marks left dead");
    std::thread::sleep(Duration::from_secs(30)); // 60 s of split in all
    lan.heal(&[0, 1], &[2, 3]).expect("heal");
    let healed = wait_for("one view again", Duration::from_secs(20), || {
        (0..4)
            .all(|v| (0..4).all(|t| t == v || lan.sees(v, t, "alive")))
            .then_some(())
    });
    healed.unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}",
            (0..4).map(|i| lan.members(i)).collect::<Vec<_>>()
        )
    });
}
