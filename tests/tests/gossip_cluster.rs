//! Issue 4: real `opsbro` agents forming a cluster over loopback UDP/TCP.

use std::time::Duration;

use opsbro_tests::{Agent, AgentOptions, DEADLINE, stderr, stdout, wait_for};

fn members(agent: &Agent) -> Vec<serde_json::Value> {
    let out = agent.cli(["gossip", "members", "--json"]);
    assert!(out.status.success(), "members: {}", stderr(&out));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("members json")
}

fn state_of(agent: &Agent, name: &str) -> Option<String> {
    members(agent)
        .into_iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["state"].as_str().map(str::to_owned))
}

fn named(name: &str) -> AgentOptions {
    AgentOptions::default().name(name)
}

fn info(agent: &Agent) -> serde_json::Value {
    let out = agent.cli(["agent", "info", "--json"]);
    serde_json::from_slice(&out.stdout).expect("info json")
}

fn wait_state(agent: &Agent, name: &str, state: &str, deadline: Duration) {
    wait_for(&format!("{name} to be {state}"), deadline, || {
        (state_of(agent, name).as_deref() == Some(state)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; members: {:?}", members(agent)));
}

#[test]
fn three_agents_join_see_each_other_and_detect_kill_leave_and_restart() {
    let a = Agent::start_with(named("alpha")).expect("a");
    let mut b = Agent::start_with(named("bravo")).expect("b");
    let c = Agent::start_with(named("charlie")).expect("c");
    for joiner in [&b, &c] {
        let out = joiner.cli(["gossip", "join", &a.gossip.to_string()]);
        assert!(out.status.success(), "join: {}", stderr(&out));
        assert!(stdout(&out).contains("joined"), "{}", stdout(&out));
    }
    for agent in [&a, &b, &c] {
        let out = agent.cli(["gossip", "wait-members", "--count", "3", "--timeout", "30"]);
        assert!(out.status.success(), "wait-members: {}", stderr(&out));
        let table = stdout(&agent.cli(["gossip", "members"]));
        for name in ["alpha", "bravo", "charlie"] {
            assert!(table.contains(name), "{table}");
        }
        assert_eq!(table.matches("✓ alive").count(), 3, "{table}");
    }
    let b_incarnation = info(&b)["gossip"]["incarnation"]
        .as_u64()
        .expect("incarnation");

    // kill -9 → the others declare it dead.
    b.signal("KILL").expect("kill -9");
    b.wait_exit(DEADLINE).expect("killed");
    wait_state(&a, "bravo", "dead", Duration::from_secs(40));
    wait_state(&c, "bravo", "dead", Duration::from_secs(40));
    let out = a.cli(["gossip", "ping", "bravo"]);
    assert_eq!(out.status.code(), Some(2), "ping of a dead node exits 2");
    assert!(
        stdout(&out).contains("bravo is: dead (no answer to a probe)"),
        "{}",
        stdout(&out)
    );

    // Restart on the same data dir: same uuid, higher incarnation, alive again everywhere.
    let b2 = Agent::start_with(named("bravo").data_dir(&b.data_dir)).expect("restart");
    let out = b2.cli(["gossip", "join", &a.gossip.to_string()]);
    assert!(out.status.success(), "rejoin: {}", stderr(&out));
    wait_state(&a, "bravo", "alive", Duration::from_secs(30));
    wait_state(&c, "bravo", "alive", Duration::from_secs(30));
    let seen = members(&a)
        .into_iter()
        .find(|m| m["name"] == "bravo")
        .expect("bravo");
    assert!(
        seen["incarnation"].as_u64().expect("inc") > b_incarnation,
        "{seen}"
    );
    assert_eq!(seen["uuid"], info(&b2)["uuid"]);

    // A graceful leave is seen as left, not dead.
    let out = c.cli(["gossip", "leave"]);
    assert!(out.status.success(), "leave: {}", stderr(&out));
    wait_state(&a, "charlie", "left", Duration::from_secs(20));
    wait_state(&b2, "charlie", "left", Duration::from_secs(20));

    let history = stdout(&a.cli(["gossip", "history"]));
    assert!(
        history.contains("alive → dead") || history.contains("suspect → dead"),
        "{history}"
    );
    assert!(history.contains("→ left"), "{history}");
    drop(b);
}

#[test]
fn seeds_join_at_start_and_user_events_reach_every_node() {
    let a = Agent::start_with(named("seed-a")).expect("a");
    let b = Agent::start_with(named("seed-b").args(["--seed", &a.gossip.to_string()])).expect("b");
    let out = a.cli(["gossip", "wait-members", "--count", "2", "--timeout", "30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = b.cli(["gossip", "events", "add", "deploy-done", "--payload", "v42"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = a.cli(["gossip", "events", "wait", "deploy-done", "--timeout", "20"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<serde_json::Value> =
        serde_json::from_slice(&a.cli(["gossip", "events", "list", "--json"]).stdout)
            .expect("json");
    let matching: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "deploy-done")
        .collect();
    assert_eq!(matching.len(), 1, "delivered once: {events:?}");
    assert_eq!(matching[0]["payload"], "v42");
    let out = a.cli(["gossip", "events", "wait", "never-sent", "--timeout", "0.5"]);
    assert_eq!(out.status.code(), Some(2));

    let dot = stdout(&a.cli(["gossip", "members", "--format", "dot"]));
    assert!(dot.starts_with("digraph opsbro {"), "{dot}");
    assert!(dot.contains("seed-b"), "{dot}");
}

#[test]
fn agents_with_different_keys_never_join_and_count_what_they_refuse() {
    let keygen = || {
        let out = opsbro_tests::opsbro_command()
            .args(["agent", "keygen"])
            .output()
            .expect("keygen");
        stdout(&out).trim().to_owned()
    };
    let (k1, k2) = (keygen(), keygen());
    let a = Agent::start_with(named("key-a").config(&format!("encryption_key: \"{k1}\"\n")))
        .expect("a");
    let b = Agent::start_with(named("key-b").config(&format!("encryption_key: \"{k2}\"\n")))
        .expect("b");
    let c = Agent::start_with(named("key-c").config(&format!("encryption_key: \"{k1}\"\n")))
        .expect("c");
    assert_eq!(info(&a)["gossip"]["encrypted"], true);

    let out = b.cli(["gossip", "join", &a.gossip.to_string()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "join with the wrong key fails: {}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("joining"), "{}", stderr(&out));
    // Same key joins.
    let out = c.cli(["gossip", "join", &a.gossip.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_state(&a, "key-c", "alive", Duration::from_secs(20));

    let refused = wait_for("a to count the refused frame", DEADLINE, || {
        let n = info(&a)["gossip"]["counters"]["rejected_unknown_key"]
            .as_u64()
            .unwrap_or(0);
        (n > 0).then_some(n)
    })
    .expect("counted");
    assert!(refused >= 1);
    assert!(members(&a).iter().all(|m| m["name"] != "key-b"));
    assert!(
        members(&b).iter().all(|m| m["name"] == "key-b"),
        "b joined nobody"
    );

    // A plaintext datagram sent by the test is dropped and counted, never processed.
    let before = info(&a)["gossip"]["counters"]["rejected_plaintext"]
        .as_u64()
        .unwrap_or(0);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.send_to(&[1, 0], a.gossip).expect("send");
    wait_for("the plaintext packet to be counted", DEADLINE, || {
        let n = info(&a)["gossip"]["counters"]["rejected_plaintext"]
            .as_u64()
            .unwrap_or(0);
        (n > before).then_some(())
    })
    .expect("counted");
    // Garbage to an open (unkeyed) agent is counted as malformed and the agent carries on.
    let open = Agent::start_with(named("open")).expect("open agent");
    sock.send_to(&[1, 200, 7, 7], open.gossip).expect("send");
    sock.send_to(b"\xff\xfe garbage", open.gossip)
        .expect("send");
    wait_for("malformed packets to be counted", DEADLINE, || {
        let n = info(&open)["gossip"]["counters"]["malformed"]
            .as_u64()
            .unwrap_or(0);
        (n >= 2).then_some(())
    })
    .expect("counted");
    assert_eq!(info(&open)["state"], "ok");
}

fn keyring(agent: &Agent) -> serde_json::Value {
    let out = agent.cli(["gossip", "keyring", "list", "--json"]);
    assert!(out.status.success(), "keyring list: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("keyring json")
}

fn key_ids(agent: &Agent) -> Vec<(String, bool)> {
    keyring(agent)["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            (
                k["id"].as_str().expect("id").to_owned(),
                k["primary"] == true,
            )
        })
        .collect()
}

#[test]
fn keyring_rotation_install_use_remove_spreads_to_every_node() {
    let keygen = || {
        stdout(
            &opsbro_tests::opsbro_command()
                .args(["agent", "keygen"])
                .output()
                .expect("keygen"),
        )
        .trim()
        .to_owned()
    };
    let (old, new) = (keygen(), keygen());
    let conf = format!("encryption_key: \"{old}\"\n");
    let mut a = Agent::start_with(named("rot-a").config(&conf)).expect("a");
    let b = Agent::start_with(named("rot-b").config(&conf)).expect("b");
    let c = Agent::start_with(named("rot-c").config(&conf)).expect("c");
    for x in [&b, &c] {
        assert!(
            x.cli(["gossip", "join", &a.gossip.to_string()])
                .status
                .success()
        );
    }
    for x in [&a, &b, &c] {
        assert!(
            x.cli(["gossip", "wait-members", "--count", "3"])
                .status
                .success()
        );
    }
    let old_id = key_ids(&a)[0].0.clone();

    // `use` before `install` is refused: nodes without the key would be cut off.
    let out = b.cli(["gossip", "keyring", "use", &new]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("install it on every node first"),
        "{}",
        stderr(&out)
    );

    assert!(
        a.cli(["gossip", "keyring", "install", &new])
            .status
            .success()
    );
    for x in [&a, &b, &c] {
        wait_for("the new key everywhere", DEADLINE, || {
            (key_ids(x).len() == 2).then_some(())
        })
        .expect("installed");
    }
    let new_id = key_ids(&a)
        .into_iter()
        .map(|(id, _)| id)
        .find(|id| *id != old_id)
        .expect("new id");

    assert!(b.cli(["gossip", "keyring", "use", &new]).status.success());
    for x in [&a, &b, &c] {
        wait_for("the new key to be primary everywhere", DEADLINE, || {
            key_ids(x).contains(&(new_id.clone(), true)).then_some(())
        })
        .expect("primary");
    }
    let out = c.cli(["gossip", "keyring", "remove", &old]);
    assert!(out.status.success(), "{}", stderr(&out));
    for x in [&a, &b, &c] {
        wait_for("the old key gone everywhere", DEADLINE, || {
            (key_ids(x) == vec![(new_id.clone(), true)]).then_some(())
        })
        .expect("removed");
    }
    // Key material never shows in the API.
    let listed = stdout(&a.cli(["gossip", "keyring", "list", "--json"]));
    assert!(!listed.contains(&new) && !listed.contains(&old));
    let events = stdout(&a.cli(["gossip", "events", "list", "--json"]));
    assert!(!events.contains("_keyring"), "{events}");

    // Still one healthy cluster, now on the new key only.
    for x in [&a, &b, &c] {
        assert!(
            x.cli(["gossip", "wait-members", "--count", "3", "--timeout", "10"])
                .status
                .success()
        );
    }
    let newcomer =
        Agent::start_with(named("rot-new").config(&format!("encryption_key: \"{new}\"\n")))
            .expect("new");
    assert!(
        newcomer
            .cli(["gossip", "join", &a.gossip.to_string()])
            .status
            .success()
    );
    let stale = Agent::start_with(named("rot-stale").config(&conf)).expect("stale");
    assert_eq!(
        stale
            .cli(["gossip", "join", &a.gossip.to_string()])
            .status
            .code(),
        Some(1)
    );
    // The rotation survives a restart: the persisted keyring file wins over the (old)
    // encryption_key still in the configuration, so the restarted agent rejoins on the new key.
    drop(newcomer);
    let dir_guard = a.keep_dir();
    assert!(a.cli(["agent", "stop"]).status.success());
    a.wait_exit(DEADLINE).expect("a stopped");
    let a2 =
        Agent::start_with(named("rot-a").config(&conf).data_dir(&a.data_dir)).expect("restart a");
    assert_eq!(
        key_ids(&a2),
        vec![(new_id.clone(), true)],
        "the removed key must not come back"
    );
    assert!(
        a2.cli(["gossip", "join", &b.gossip.to_string()])
            .status
            .success()
    );
    drop(dir_guard);
}

#[test]
fn keyring_changes_are_refused_on_a_plaintext_cluster() {
    let a = Agent::start_with(named("plain")).expect("a");
    let key = stdout(
        &opsbro_tests::opsbro_command()
            .args(["agent", "keygen"])
            .output()
            .expect("keygen"),
    )
    .trim()
    .to_owned();
    let out = a.cli(["gossip", "keyring", "install", &key]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not encrypted"), "{}", stderr(&out));
    let out = a.cli(["gossip", "keyring", "install", "not-base64!"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("invalid key"), "{}", stderr(&out));
    assert!(stdout(&a.cli(["gossip", "keyring", "list"])).contains("not encrypted"));
}

#[test]
fn a_node_left_alone_rejoins_its_seed_when_it_comes_back() {
    // A fixed gossip port for the seed, so that its restart is reachable at the same address.
    // Taken below the kernel's ephemeral range: the other agents of the suite bind port 0, so
    // none of them can take it while the seed is down (that made this test flaky).
    let port = opsbro_tests::services::free_port_outside_ephemeral().expect("a free port");
    let seed_opts = || named("lonely-seed").port(port);
    let mut a = Agent::start_with(seed_opts()).expect("seed");
    let b = Agent::start_with(named("lonely-b").args(["--seed", &format!("127.0.0.1:{port}")]))
        .expect("b");
    wait_state(&b, "lonely-seed", "alive", Duration::from_secs(20));
    a.signal("KILL").expect("kill -9 the seed");
    a.wait_exit(DEADLINE).expect("killed");
    wait_state(&b, "lonely-seed", "dead", Duration::from_secs(40));
    // The seed comes back knowing nobody; b, alone, retries its seeds and they meet again.
    let a2 = Agent::start_with(seed_opts().data_dir(&a.data_dir)).expect("restart seed");
    wait_state(&b, "lonely-seed", "alive", Duration::from_secs(60));
    wait_state(&a2, "lonely-b", "alive", Duration::from_secs(20));
}

#[test]
fn idle_cluster_connections_are_bounded_and_garbage_frames_refused() {
    use std::io::Write;
    let a = Agent::start_with(named("bounded")).expect("a");
    // 80 connections that never send anything: only 64 are served at once.
    let idle: Vec<std::net::TcpStream> = (0..80)
        .filter_map(|_| std::net::TcpStream::connect(a.gossip).ok())
        .collect();
    wait_for("refused connections to be counted", DEADLINE, || {
        let n = info(&a)["gossip"]["counters"]["connections_refused"]
            .as_u64()
            .unwrap_or(0);
        (n >= 10).then_some(())
    })
    .expect("counted");
    drop(idle);
    // A frame announcing 1 GiB is refused without reading it; garbage is refused too.
    let mut s = std::net::TcpStream::connect(a.gossip).expect("connect");
    s.write_all(&(1u32 << 30).to_be_bytes()).expect("write");
    let mut g = std::net::TcpStream::connect(a.gossip).expect("connect");
    g.write_all(&[0, 0, 0, 4, 9, 9, 9, 9]).expect("write");
    wait_for("the bad frames to be counted", DEADLINE, || {
        let n = info(&a)["gossip"]["counters"]["push_pull_errors"]
            .as_u64()
            .unwrap_or(0);
        (n >= 2).then_some(())
    })
    .expect("counted");
    // The agent still works: another agent joins it.
    let b = Agent::start_with(named("bounded-b")).expect("b");
    let out = b.cli(["gossip", "join", &a.gossip.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
}
