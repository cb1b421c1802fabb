//! Issue 6 (collectors): values read from /proc by a running agent agree with /proc, and
//! expressions (checks, detectors, `evaluator eval`) read them through placeholders.

use opsbro_tests::{Agent, AgentOptions, stderr, stdout};

fn meminfo_total_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .expect("meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("MemTotal")
}

#[test]
fn collectors_report_proc_values_and_expressions_read_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let detectors = tmp.path().join("packs/sized/detectors");
    std::fs::create_dir_all(&detectors).expect("mkdir");
    std::fs::write(
        detectors.join("big-memory.yml"),
        "detector:\n  apply_if: \"{{collector.memory.phys_total}} > 0 and {collector.cpustats.cpuall.%idle} >= 0\"\n  add_groups: [has-memory]\n",
    )
    .expect("detector");
    let config = format!("packs_dirs: [\"{}\"]\n", tmp.path().join("packs").display());
    let agent = Agent::start_with(AgentOptions::default().config(&config)).expect("agent");
    assert!(agent.cli(["agent", "wait-initialized"]).status.success());

    let list = stdout(&agent.cli(["collectors", "list"]));
    for name in [
        "system",
        "cpustats",
        "memory",
        "loadaverage",
        "diskusage",
        "networktraffic",
        "iostats",
        "kernelstats",
        "timezone",
        "interfaces",
        "gossip",
    ] {
        let line = list
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{list}"));
        assert!(line.contains("ok"), "{line}");
    }
    let memory = stdout(&agent.cli(["collectors", "show", "memory"]));
    assert!(
        memory.contains(&format!(
            "collector.memory.memtotal = {}",
            meminfo_total_kb()
        )),
        "{memory}"
    );

    let out = agent.cli(["evaluator", "eval", "{collector.memory.phys_total}"]);
    assert_eq!(
        stdout(&out).trim(),
        meminfo_total_kb().to_string(),
        "{}",
        stderr(&out)
    );
    let out = agent.cli([
        "evaluator",
        "eval",
        "'OK: cpu is great: %s%%' % (100-{collector.cpustats.cpuall.%idle})",
    ]);
    assert!(
        stdout(&out).starts_with("OK: cpu is great: "),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = agent.cli(["evaluator", "eval", "{{collector.gossip.nb_known_nodes}}"]);
    assert_eq!(stdout(&out).trim(), "1");

    let info: serde_json::Value =
        serde_json::from_slice(&agent.cli(["agent", "info", "--json"]).stdout).expect("json");
    let groups: Vec<&str> = info["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g.as_str())
        .collect();
    assert!(
        groups.contains(&"has-memory"),
        "a detector reading collector values: {groups:?}"
    );
    let missing = agent.cli(["collectors", "show", "nope"]);
    assert_eq!(missing.status.code(), Some(2));
}
