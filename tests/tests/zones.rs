//! Issue 26: zones on real hosts (network namespaces). `internet` ⊃ {`dc1`, `dc2`}, each zone
//! with its own gossip key: a node sees its zone, its sub-zones and only the proxies of the
//! zones above; a node of dc2 cannot read dc1's traffic; a node moves with `gossip zone change`;
//! a dc1 proxy killed, the other keeps the news flowing up.

use std::collections::BTreeSet;

use opsbro_tests::netns::Lan;
use opsbro_tests::{DEADLINE, keygen, opsbro_command, stderr, stdout, wait_for};
use serde_json::Value;

const ZONES: &str = "zone:\n  name: internet\n  sub-zones: [dc1, dc2]\n";

/// Host `i` and its zone: 0 internet (proxy); 1, 2 dc1 (proxies), 3 dc1; 4 dc2 (proxy), 5 dc2.
const LAYOUT: [(&str, bool); 6] = [
    ("internet", true),
    ("dc1", true),
    ("dc1", true),
    ("dc1", false),
    ("dc2", true),
    ("dc2", false),
];

fn json_of(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}\n{}", stdout(out), stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

/// `opsbro gossip zone key import` of `zone`'s key on host `i`.
fn import_key(lan: &Lan, i: usize, zone: &str, key: &str) {
    let out = lan.cli(
        i,
        &[
            "gossip", "zone", "key", "import", "--zone", zone, "--key", key,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The names host `i` lists (any state) and the alive ones.
fn seen(lan: &Lan, i: usize) -> (BTreeSet<String>, BTreeSet<String>) {
    let members = lan.members(i);
    (
        members.iter().map(|(n, _)| n.clone()).collect(),
        members
            .iter()
            .filter(|(_, s)| s == "alive")
            .map(|(n, _)| n.clone())
            .collect(),
    )
}

fn names(list: &[usize]) -> BTreeSet<String> {
    list.iter().map(|i| format!("host{i}")).collect()
}

/// Wait until host `i` lists exactly `expected` alive and nothing it should not know.
fn wait_view(lan: &Lan, i: usize, expected: &[usize]) {
    let want = names(expected);
    wait_for(
        &format!("host{i} to see exactly {want:?}"),
        DEADLINE * 2,
        || {
            let (all, alive) = seen(lan, i);
            (alive == want && all.is_subset(&want)).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: sees {:?}\n{}", lan.members(i), lan.log(i)));
}

#[test]
fn zones_limit_what_each_node_sees_and_reads() {
    let objects = tempfile::tempdir().expect("tmp");
    std::fs::write(objects.path().join("zones.yml"), ZONES).expect("zones");
    let keys: Vec<(&str, String)> = ["internet", "dc1", "dc2"]
        .into_iter()
        .map(|z| (z, keygen()))
        .collect();
    let key_of = |zone: &str| {
        keys.iter()
            .find(|(z, _)| *z == zone)
            .map(|(_, k)| k.clone())
            .expect("key")
    };
    let mut lan = Lan::new(6).expect("lan");
    let seed = format!("{}:6768", lan.hosts[0].ip);
    for (i, (zone, proxy)) in LAYOUT.iter().enumerate() {
        let seeds = if i == 0 {
            String::new()
        } else {
            format!("seeds: [\"{seed}\"]\n")
        };
        let config = format!(
            "zone: {zone}\nproxy_node: {proxy}\nobjects_dirs: [{}]\n{seeds}",
            objects.path().display()
        );
        lan.start_agent(i, &config, &[]).expect("agent");
        // A node holds its own zone's key and its sub-zones' (the internet proxy: all three).
        let held: Vec<&str> = if *zone == "internet" {
            vec!["internet", "dc1", "dc2"]
        } else {
            vec![zone]
        };
        for z in held {
            import_key(&lan, i, z, &key_of(z));
        }
    }

    // Visibility: internet sees everything below it; each datacenter its own zone and the
    // proxy above, never the other datacenter.
    wait_view(&lan, 0, &[0, 1, 2, 3, 4, 5]);
    for i in [1, 2, 3] {
        wait_view(&lan, i, &[0, 1, 2, 3]);
    }
    for i in [4, 5] {
        wait_view(&lan, i, &[0, 4, 5]);
    }
    let zones = json_of(&lan.cli(3, &["gossip", "zone", "list", "--json"]));
    assert_eq!(zones["dc1"]["relation"], "our", "{zones:#}");
    assert_eq!(zones["dc1"]["have_gossip_key"], true, "{zones:#}");
    assert_eq!(zones["internet"]["relation"], "upper", "{zones:#}");
    assert_eq!(zones["dc2"]["relation"], "other", "{zones:#}");
    assert_eq!(zones["dc2"]["have_gossip_key"], false, "{zones:#}");
    let tree = stdout(&lan.cli(0, &["gossip", "zone", "list"]));
    assert!(tree.contains("internet (your zone) [key]"), "{tree}");
    assert!(tree.contains("└─ dc1 (lower zone) [key]"), "{tree}");
    let info = json_of(&lan.cli(3, &["agent", "info", "--json"]));
    assert!(
        info["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "zone::dc1")),
        "{info:#}"
    );

    // dc2's key rotates without a gap on the nodes that hold it (host0, host4, host5): install
    // the new one everywhere, use it everywhere, remove the old one; dc2 still talks.
    let (old_dc2, new_dc2) = (key_of("dc2"), keygen());
    for step in ["install", "use", "remove"] {
        let key = if step == "remove" { &old_dc2 } else { &new_dc2 };
        for i in [0, 4, 5] {
            let out = lan.cli(
                i,
                &["gossip", "zone", "key", step, "--zone", "dc2", "--key", key],
            );
            assert!(out.status.success(), "{step} on host{i}: {}", stderr(&out));
        }
    }
    let zones = json_of(&lan.cli(4, &["gossip", "zone", "list", "--json"]));
    assert_eq!(zones["dc2"]["have_gossip_key"], true, "{zones:#}");
    let sent = lan.cli(
        5,
        &["gossip", "events", "add", "rotated", "--payload", "dc2"],
    );
    assert!(sent.status.success(), "{}", stderr(&sent));
    let got = lan.cli(
        4,
        &["gossip", "events", "wait", "rotated", "--timeout", "30"],
    );
    assert!(
        got.status.success(),
        "host4 hears host5 after the rotation: {}",
        stderr(&got)
    );
    wait_view(&lan, 4, &[0, 4, 5]);
    // A key that is not installed cannot be used.
    let out = lan.cli(
        4,
        &[
            "gossip",
            "zone",
            "key",
            "use",
            "--zone",
            "dc2",
            "--key",
            &keygen(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));

    // The KV store is per zone: a key written in dc1 lives on dc1's nodes only.
    let put = lan.cli(3, &["kv", "put", "zoned/k", "in-dc1"]);
    assert!(put.status.success(), "{}", stderr(&put));
    let got = lan.cli(2, &["kv", "get", "zoned/k", "--raw"]);
    assert_eq!(stdout(&got), "in-dc1", "{}", stderr(&got));
    let other = lan.cli(4, &["kv", "get", "zoned/k"]);
    assert_eq!(other.status.code(), Some(2), "{}", stdout(&other));

    // A dc1 node asked to join a dc2 node: its packets are sealed with dc1's key, which dc2
    // does not hold — dropped and counted there, and the views do not merge.
    let before = json_of(&lan.cli(5, &["agent", "info", "--json"]))["gossip"]["counters"]
        ["rejected_unknown_key"]
        .as_u64()
        .unwrap_or(0);
    let join = lan.cli(3, &["gossip", "join", &format!("{}:6768", lan.hosts[5].ip)]);
    assert!(!join.status.success(), "{}", stdout(&join));
    wait_for(
        "host5 to count dc1 packets it cannot open",
        DEADLINE,
        || {
            let after = json_of(&lan.cli(5, &["agent", "info", "--json"]))["gossip"]["counters"]
            ["rejected_unknown_key"]
            .as_u64()
            .unwrap_or(0);
            (after > before).then_some(())
        },
    )
    .expect("counted");
    wait_view(&lan, 5, &[0, 4, 5]);
    wait_view(&lan, 3, &[0, 1, 2, 3]);

    // host5 moves to dc1 (it gets dc1's key first): dc1 sees it alive, dc2 no longer does.
    import_key(&lan, 5, "dc1", &key_of("dc1"));
    let out = lan.cli(5, &["gossip", "zone", "change", "dc1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("to zone `dc1`"), "{}", stdout(&out));
    let out = lan.cli(5, &["gossip", "zone", "change", "office"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("known: dc1, dc2, internet"),
        "{}",
        stderr(&out)
    );
    wait_view(&lan, 5, &[0, 1, 2, 3, 5]);
    wait_view(&lan, 3, &[0, 1, 2, 3, 5]);
    // dc2 no longer hears from it (its news stays in dc1 and the zones above).
    wait_for("host4 to stop listing host5 alive", DEADLINE * 2, || {
        (!seen(&lan, 4).1.contains("host5")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", lan.members(4)));
    let info = json_of(&lan.cli(5, &["agent", "info", "--json"]));
    assert_eq!(info["zone"], "dc1", "{info:#}");

    // One dc1 proxy dies: the other keeps relaying dc1's news up to internet.
    lan.stop_agent(1);
    lan.stop_agent(3);
    wait_for("internet to see host1 and host3 dead", DEADLINE * 3, || {
        (lan.sees(0, 1, "dead") && lan.sees(0, 3, "dead")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", lan.members(0), lan.log(0)));
    assert!(
        lan.sees(0, 2, "alive") && lan.sees(0, 5, "alive"),
        "{:?}",
        lan.members(0)
    );
}

/// The original kept its zone objects in `/etc/opsbro/zones/`: that folder next to agent.yml
/// defines the tree too; without it, a zone nobody defined stops the agent with the known ones.
#[test]
fn the_zones_folder_next_to_agent_yml_defines_the_tree() {
    let etc = tempfile::tempdir().expect("tmp");
    std::fs::write(etc.path().join("agent.yml"), "zone: dc9\n").expect("config");
    let one_shot = |data: &str| {
        opsbro_command()
            .args(["agent", "start", "--one-shot", "--config"])
            .arg(etc.path().join("agent.yml"))
            .arg("--data-dir")
            .arg(etc.path().join(data))
            .output()
            .expect("opsbro")
    };
    let out = one_shot("first");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("zone `dc9` is not a known zone (known: internet)"),
        "{}",
        stderr(&out)
    );
    std::fs::create_dir_all(etc.path().join("zones")).expect("mkdir");
    std::fs::write(
        etc.path().join("zones/internet.yml"),
        "zone:\n  name: internet\n  sub-zones: [dc9]\n",
    )
    .expect("zones");
    let out = one_shot("second");
    assert!(out.status.success(), "{}", stderr(&out));
}
