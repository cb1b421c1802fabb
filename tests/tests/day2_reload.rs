//! Issue 21: live reload — checks added, changed and removed by editing files and `opsbro agent
//! reload` (or SIGHUP) while the others keep their state; a broken file keeps the previous
//! version; settings that need a restart are named; `agent parameters` edits agent.yml and
//! reloads.

use std::path::{Path, PathBuf};

use opsbro_tests::{Agent, AgentOptions, DEADLINE, stderr, stdout, wait_for, zones_config};
use serde_json::Value;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn check_file(output: &str) -> String {
    format!("check:\n  interval: 1s\n  ok_output: \"'{output}'\"\n  critical_if: \"False\"\n")
}

fn checks(agent: &Agent) -> Vec<Value> {
    let out = agent.cli(["monitoring", "state", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v["checks"].as_array().cloned().unwrap_or_default()
}

fn check(agent: &Agent, name: &str) -> Option<Value> {
    checks(agent).into_iter().find(|c| c["name"] == name)
}

fn wait_output(agent: &Agent, name: &str, output: &str) -> Value {
    wait_for(&format!("{name} to say {output}"), DEADLINE, || {
        check(agent, name).filter(|c| c["state"] == "ok" && c["output"] == output)
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}", check(agent, name)))
}

fn config_path(agent: &Agent) -> PathBuf {
    agent.log_path.parent().expect("tmp").join("agent.yml")
}

fn groups(agent: &Agent) -> String {
    let out = agent.cli(["agent", "info", "--json"]);
    let info: Value = serde_json::from_slice(&out.stdout).expect("info");
    info["groups"].to_string()
}

#[test]
fn checks_follow_their_files_on_reload_and_the_others_keep_their_state() {
    let dir = tempfile::tempdir().expect("tmp");
    let packs = dir.path().join("packs");
    write(&packs.join("site/monitoring/a.yml"), &check_file("A1"));
    write(&packs.join("site/monitoring/b.yml"), &check_file("B"));
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("reload-checks")
            .config(&format!("packs_dirs: [{}]\n", packs.display())),
    )
    .expect("agent");
    wait_output(&agent, "site/a", "A1");
    let b = wait_output(&agent, "site/b", "B");
    let b_changed = b["last_change_ms"].clone();

    // Change a, add c: one reload.
    write(&packs.join("site/monitoring/a.yml"), &check_file("A2"));
    write(&packs.join("site/monitoring/c.yml"), &check_file("C"));
    let out = agent.cli(["agent", "reload"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.contains("checks: added site/c; changed site/a"),
        "{text}"
    );
    wait_output(&agent, "site/a", "A2");
    wait_output(&agent, "site/c", "C");
    let b = check(&agent, "site/b").expect("b is still there");
    assert_eq!(b["state"], "ok");
    assert_eq!(
        b["last_change_ms"], b_changed,
        "b kept its state: it did not go through pending again"
    );

    // Remove c, by SIGHUP this time.
    std::fs::remove_file(packs.join("site/monitoring/c.yml")).expect("rm");
    agent.signal("HUP").expect("sighup");
    wait_for("c to be gone", DEADLINE, || {
        check(&agent, "site/c").is_none().then_some(())
    })
    .expect("c removed");

    // A broken file: refused with its file and line, the previous version runs on.
    write(
        &packs.join("site/monitoring/a.yml"),
        "check:\n  interval: 1s\n  ok_output: [unclosed\n",
    );
    let out = agent.cli(["agent", "reload"]);
    let text = stdout(&out);
    assert!(!out.status.success(), "a broken file is refused: {text}");
    assert!(
        text.contains("site/monitoring/a.yml:") && text.contains("previous objects keep running"),
        "{text}"
    );
    let runs = check(&agent, "site/a").expect("a")["runs"]
        .as_u64()
        .expect("runs");
    wait_for("a to keep running its previous version", DEADLINE, || {
        check(&agent, "site/a")
            .filter(|c| c["runs"].as_u64() > Some(runs) && c["output"] == "A2")
            .map(|_| ())
    })
    .expect("a runs on");
    assert!(
        agent.cli(["agent", "state"]).status.success(),
        "the agent is still ok"
    );
}

#[test]
fn settings_apply_live_or_are_named_as_needing_a_restart() {
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("reload-settings")
            .config(&format!("zone: first\ngroups: [one]\n{}", zones_config())),
    )
    .expect("agent");
    let config = config_path(&agent);
    assert!(groups(&agent).contains("\"one\""));
    write(
        &config,
        &format!(
            "zone: second   # moved\ngroups: [one, two]\n{}",
            zones_config()
        ),
    );
    let out = agent.cli(["agent", "reload", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["applied"], true, "{report:#}");
    assert!(
        report["restart_needed"]
            .to_string()
            .contains("zone: \\\"first\\\" -> \\\"second\\\""),
        "{report:#}"
    );
    wait_for("the new static group", DEADLINE, || {
        groups(&agent).contains("\"two\"").then_some(())
    })
    .expect("groups apply live");

    // A configuration that does not load changes nothing.
    write(
        &config,
        &format!("zone: [not, a, zone]\ngroups: [three]\n{}", zones_config()),
    );
    let out = agent.cli(["agent", "reload"]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("does not load"), "{}", stdout(&out));
    assert!(!groups(&agent).contains("three"));

    // `agent parameters` edits the file (comments kept) and reloads.
    write(
        &config,
        &format!(
            "# site settings\nzone: first   # moved\ngroups:\n  - one\n{}",
            zones_config()
        ),
    );
    let params = |args: &[&str]| {
        let mut all = vec!["agent", "parameters"];
        all.extend_from_slice(args);
        all.push("--config");
        let path = config.display().to_string();
        let mut all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        all.push(path);
        agent.cli(&all)
    };
    let out = params(&["add", "groups", "web"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("OK: agent.groups"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("reloaded"), "{}", stdout(&out));
    wait_for("the added group", DEADLINE, || {
        groups(&agent).contains("\"web\"").then_some(())
    })
    .expect("added live");
    let text = std::fs::read_to_string(&config).expect("read");
    assert!(
        text.starts_with(
            "# site settings\nzone: first   # moved\ngroups:\n  - one\n  - web  # CHANGE: ("
        ),
        "{text}"
    );
    let out = params(&["get", "groups"]);
    assert_eq!(stdout(&out).trim(), "[one, web]");
    let out = params(&["set", "groups", "x"]);
    assert_eq!(out.status.code(), Some(2), "lists are not set");
    let out = params(&["set", "dns.port", "not-a-port"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not saved"), "{}", stderr(&out));
    assert!(
        !std::fs::read_to_string(&config)
            .expect("read")
            .contains("not-a-port")
    );
    let out = params(&["show"]);
    assert!(stdout(&out).contains("zone: first"), "{}", stdout(&out));
}

#[test]
fn detectors_handlers_and_generators_come_and_go_with_a_reload() {
    let dir = tempfile::tempdir().expect("tmp");
    let packs = dir.path().join("packs");
    let events = dir.path().join("group-events.log");
    let motd = dir.path().join("motd");
    write(&packs.join("site/package.yml"), "name: site\n");
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("reload-objects")
            .config(&format!("packs_dirs: [{}]\n", packs.display())),
    )
    .expect("agent");
    assert!(
        agent
            .cli(["agent", "wait-initialized", "--timeout", "30"])
            .status
            .success()
    );
    // A handler of group events, a detector that adds a group, a generator that follows it.
    write(
        &packs.join("site/handlers/groups.yml"),
        &format!(
            "handler:\n  type: command\n  events: [group]\n  command: \"echo {{{{group}}}} {{{{state}}}} >> {}\"\n",
            events.display()
        ),
    );
    write(
        &packs.join("site/detectors/reloaded.yml"),
        "detector:\n  apply_if: \"True\"\n  add_groups: [reloaded]\n",
    );
    write(
        &packs.join("site/generators/motd.yml"),
        &format!(
            "generator:\n  path: {}\n  template: motd\n  generate_if: \"is_in_group('reloaded')\"\n",
            motd.display()
        ),
    );
    write(
        &packs.join("site/templates/motd"),
        "groups: {{ node.groups | join(',') }}\n",
    );
    let out = agent.cli(["agent", "reload"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    for line in [
        "detectors: added site/reloaded",
        "handlers: added groups",
        "generators: added site/motd",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    wait_for("the group event through the new handler", DEADLINE, || {
        std::fs::read_to_string(&events)
            .ok()
            .filter(|t| t.contains("reloaded"))
    })
    .expect("handler ran");
    wait_for("the generated file", DEADLINE, || {
        std::fs::read_to_string(&motd)
            .ok()
            .filter(|t| t.contains("reloaded"))
    })
    .expect("generator ran");

    // The detector goes: so does its group (and the handler says so).
    std::fs::remove_file(packs.join("site/detectors/reloaded.yml")).expect("rm");
    let out = agent.cli(["agent", "reload"]);
    assert!(
        stdout(&out).contains("detectors: removed site/reloaded"),
        "{}",
        stdout(&out)
    );
    wait_for("the group to go", DEADLINE, || {
        (!groups(&agent).contains("\"reloaded\"")).then_some(())
    })
    .expect("group removed");
    wait_for("the removal event", DEADLINE, || {
        std::fs::read_to_string(&events)
            .ok()
            .filter(|t| t.lines().count() >= 2)
    })
    .expect("handler told");
    let handler_names = || {
        let all: Vec<Value> =
            serde_json::from_slice(&agent.cli(["monitoring", "handlers", "--json"]).stdout)
                .expect("handlers");
        all.iter()
            .map(|h| h["name"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(handler_names().contains(&"groups".to_owned()));
    std::fs::remove_file(packs.join("site/handlers/groups.yml")).expect("rm");
    assert!(agent.cli(["agent", "reload"]).status.success());
    assert!(!handler_names().contains(&"groups".to_owned()));
}
