//! Day-2 operations: a cluster whose nodes all restart without `seeds` re-forms from the
//! members each node remembered in `<data_dir>/members.json`.

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::time::Duration;

use opsbro_tests::{Agent, AgentOptions, DEADLINE, stderr, wait_for};

/// Three gossip ports, free for UDP and TCP, outside the ephemeral range (so no other agent of
/// the suite takes one while its node is down). Each is held until all three are chosen.
fn three_ports() -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < 3 {
        let port = opsbro_tests::services::free_port_outside_ephemeral().expect("a free port");
        // Another test may have taken it since it was seen free: then choose again.
        if let (Ok(tcp), Ok(udp)) = (
            TcpListener::bind(("127.0.0.1", port)),
            UdpSocket::bind(("127.0.0.1", port)),
        ) {
            held.push((tcp, udp));
            ports.push(port);
        }
    }
    ports
}

fn alive_names(agent: &Agent) -> Vec<String> {
    let out = agent.cli(["gossip", "members", "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let members: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut names: Vec<String> = members
        .iter()
        .filter(|m| m["state"] == "alive")
        .filter_map(|m| m["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The names in `<data_dir>/members.json`.
fn remembered(data_dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(data_dir.join("members.json")) else {
        return Vec::new();
    };
    let file: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let mut names: Vec<String> = file["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_whole_cluster_restarted_without_seeds_reforms_from_remembered_members() {
    let names = ["day2-a", "day2-b", "day2-c"];
    let ports = three_ports();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let options = |i: usize| {
        AgentOptions::default()
            .name(names[i])
            .port(ports[i])
            .data_dir(dirs[i].path())
    };
    let seed = format!("127.0.0.1:{}", ports[0]);
    let mut agents: Vec<Agent> = (0..3)
        .map(|i| {
            let o = if i == 0 {
                options(i)
            } else {
                options(i).args(["--seed", &seed])
            };
            Agent::start_with(o).expect("start")
        })
        .collect();
    for (i, agent) in agents.iter().enumerate() {
        wait_for("3 alive members", DEADLINE, || {
            (alive_names(agent) == names).then_some(())
        })
        .unwrap_or_else(|e| panic!("{}: {e}: {:?}", names[i], alive_names(agent)));
    }
    // Each node writes the two others down (within a few seconds of meeting them).
    for (i, dir) in dirs.iter().enumerate() {
        let others: Vec<String> = names
            .iter()
            .filter(|n| **n != names[i])
            .map(|n| (*n).to_owned())
            .collect();
        wait_for("members.json to name the two others", DEADLINE, || {
            (remembered(dir.path()) == others).then_some(())
        })
        .unwrap_or_else(|e| panic!("{}: {e}: {:?}", names[i], remembered(dir.path())));
    }

    // The whole cluster stops (gracefully: each sees the others leave first).
    for agent in &agents {
        agent.signal("TERM").expect("stop");
    }
    for agent in &mut agents {
        let status = agent.wait_exit(DEADLINE).expect("stopped");
        assert!(status.success(), "{status}");
    }
    drop(agents);

    // Started again, in reverse order, and without any seed.
    let agents: Vec<Agent> = (0..3)
        .rev()
        .map(|i| Agent::start_with(options(i)).expect("restart"))
        .collect();
    for agent in &agents {
        wait_for(
            "3 alive members after the restart",
            Duration::from_secs(60),
            || (alive_names(agent) == names).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}: {:?}\nlog:\n{}", alive_names(agent), agent.log()));
        assert!(
            agent.log().contains("rejoining 2 remembered members"),
            "{}",
            agent.log()
        );
    }
}

#[test]
fn a_damaged_members_file_is_ignored_with_a_warning() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("members.json"), "{ not json").expect("write");
    let agent = Agent::start_with(AgentOptions::default().data_dir(dir.path())).expect("start");
    let out = agent.cli(["agent", "wait-initialized", "--timeout", "30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the warning", DEADLINE, || {
        agent
            .log()
            .contains("ignoring the remembered members")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", agent.log()));
    assert!(!agent.log().contains("rejoining"), "{}", agent.log());
}
