//! Issue 6 (detectors and packs): the agent learns what its host is, and its groups travel with
//! it through gossip.

use std::time::Duration;

use opsbro_tests::{Agent, AgentOptions, DEADLINE, stderr, stdout, wait_for};

fn groups_of(agent: &Agent) -> Vec<String> {
    let info: serde_json::Value =
        serde_json::from_slice(&agent.cli(["agent", "info", "--json"]).stdout).expect("info");
    info["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g.as_str().unwrap_or("").to_owned())
        .collect()
}

fn member_groups(viewer: &Agent, name: &str) -> Vec<String> {
    let members: Vec<serde_json::Value> =
        serde_json::from_slice(&viewer.cli(["gossip", "members", "--json"]).stdout)
            .expect("members");
    members
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| {
            m["groups"]
                .as_array()
                .expect("groups")
                .iter()
                .map(|g| g.as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The distribution id of this machine, when a default pack detects it.
fn distribution() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("ID="))?
        .trim_matches('"')
        .to_owned();
    ["debian", "ubuntu", "centos", "fedora", "alpine"]
        .contains(&id.as_str())
        .then_some(id)
}

#[test]
fn default_packs_detect_linux_and_the_distribution_and_a_second_agent_sees_them() {
    let a = Agent::start_with(AgentOptions::default().name("detect-a")).expect("a");
    let out = a.cli(["agent", "wait-initialized", "--timeout", "30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let groups = groups_of(&a);
    assert!(groups.contains(&"linux".to_owned()), "{groups:?}");
    if let Some(distro) = distribution() {
        assert!(groups.contains(&distro), "{distro} missing from {groups:?}");
    }
    let b = Agent::start_with(AgentOptions::default().name("detect-b")).expect("b");
    assert!(
        b.cli(["gossip", "join", &a.gossip.to_string()])
            .status
            .success()
    );
    wait_for("b to see a's groups", DEADLINE, || {
        let seen = member_groups(&b, "detect-a");
        groups.iter().all(|g| seen.contains(g)).then_some(())
    })
    .expect("groups travel through gossip");
    let table = stdout(&b.cli(["gossip", "members"]));
    assert!(table.contains("linux"), "{table}");
    let packs = stdout(&a.cli(["packs", "list"]));
    assert!(
        packs.contains("linux") && packs.contains("embedded"),
        "{packs}"
    );
    assert!(
        !packs.contains("problems"),
        "the default packs load cleanly: {packs}"
    );
}

#[test]
fn the_readme_detector_follows_its_file_and_changes_travel() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fixture = tmp.path().join("redhat-release");
    std::fs::write(&fixture, "CentOS Linux release 7.9.2009 (Core) centos\n").expect("fixture");
    let detectors = tmp.path().join("packs/mine/detectors");
    std::fs::create_dir_all(&detectors).expect("mkdir");
    // The opsbro README's detector, pointed at the fixture.
    std::fs::write(
        detectors.join("centos.yml"),
        format!(
            "detector:\n    interval: 10s\n    apply_if: \"grep('centos', '{}')\"\n    groups: [\"linux\", \"centos\"]\n",
            fixture.display()
        ),
    )
    .expect("detector");
    // A broken sibling: reported with file and line, the rest still loads.
    std::fs::write(
        detectors.join("broken.yml"),
        "detector:\n    apply_if: \"1 + * 2\"\n    groups: [x]\n",
    )
    .expect("broken");
    let config = format!(
        "packs_dirs: [\"{}\"]\ngroups: [static-one]\n",
        tmp.path().join("packs").display()
    );
    let a = Agent::start_with(AgentOptions::default().name("readme-a").config(&config)).expect("a");
    let b = Agent::start_with(AgentOptions::default().name("readme-b")).expect("b");
    assert!(
        b.cli(["gossip", "join", &a.gossip.to_string()])
            .status
            .success()
    );
    assert!(a.cli(["agent", "wait-initialized"]).status.success());
    let groups = groups_of(&a);
    assert!(
        groups.contains(&"centos".to_owned()) && groups.contains(&"static-one".to_owned()),
        "{groups:?}"
    );
    wait_for("b to see centos", DEADLINE, || {
        member_groups(&b, "readme-a")
            .contains(&"centos".to_owned())
            .then_some(())
    })
    .expect("centos gossiped");

    let packs = stdout(&a.cli(["packs", "list"]));
    assert!(
        packs.contains("broken.yml:2: apply_if: syntax error"),
        "{packs}"
    );

    // The file no longer says centos: the next run removes the group, everywhere.
    std::fs::write(&fixture, "Debian GNU/Linux\n").expect("fixture");
    let out = a.cli(["detectors", "run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!groups_of(&a).contains(&"centos".to_owned()));
    assert!(
        groups_of(&a).contains(&"static-one".to_owned()),
        "static groups stay"
    );
    wait_for("b to see centos removed", Duration::from_secs(20), || {
        (!member_groups(&b, "readme-a").contains(&"centos".to_owned())).then_some(())
    })
    .expect("removal gossiped");
    let state = stdout(&a.cli(["detectors", "state"]));
    assert!(state.contains("mine/centos"), "{state}");
    let one = stdout(&a.cli(["detectors", "run", "mine/centos"]));
    assert!(
        one.contains("mine/centos") && !one.contains("linux/linux"),
        "{one}"
    );
    assert_eq!(
        a.cli(["detectors", "run", "no/such"]).status.code(),
        Some(2)
    );
    let show = stdout(&a.cli(["packs", "show", "mine"]));
    assert!(
        show.contains("mine/centos") && show.contains("problem:") && show.contains("broken.yml"),
        "{show}"
    );
    assert_eq!(a.cli(["packs", "show", "nope"]).status.code(), Some(2));
}

#[test]
fn static_groups_change_live_travel_and_survive_a_restart() {
    let mut a = Agent::start_with(
        AgentOptions::default()
            .name("groups-a")
            .config("groups: [cfg-one]\n"),
    )
    .expect("a");
    let dir_guard = a.keep_dir();
    let b = Agent::start_with(AgentOptions::default().name("groups-b")).expect("b");
    assert!(
        b.cli(["gossip", "join", &a.gossip.to_string()])
            .status
            .success()
    );
    assert!(a.cli(["agent", "wait-initialized"]).status.success());

    let out = a.cli(["agent", "groups", "add", "extra"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("cfg-one, extra"), "{}", stdout(&out));
    let out = a.cli(["agent", "groups", "remove", "cfg-one"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the new static groups", DEADLINE, || {
        let g = groups_of(&a);
        (g.contains(&"extra".to_owned()) && !g.contains(&"cfg-one".to_owned())).then_some(())
    })
    .expect("applied");
    wait_for("b to see them", DEADLINE, || {
        let g = member_groups(&b, "groups-a");
        (g.contains(&"extra".to_owned()) && !g.contains(&"cfg-one".to_owned())).then_some(())
    })
    .expect("gossiped");
    let bad = a.cli(["agent", "groups", "add", "has space"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));

    assert!(a.cli(["agent", "stop"]).status.success());
    a.wait_exit(DEADLINE).expect("stopped");
    let a2 = Agent::start_with(
        AgentOptions::default()
            .name("groups-a")
            .config("groups: [cfg-one]\n")
            .data_dir(&a.data_dir),
    )
    .expect("restart");
    assert!(a2.cli(["agent", "wait-initialized"]).status.success());
    let g = groups_of(&a2);
    assert!(
        g.contains(&"extra".to_owned()) && !g.contains(&"cfg-one".to_owned()),
        "{g:?}"
    );
    drop(dir_guard);
}
