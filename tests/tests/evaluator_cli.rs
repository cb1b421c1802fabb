//! Issue 6 (evaluator part): expressions evaluated by a running agent through the CLI.

use opsbro_tests::{Agent, AgentOptions, stderr, stdout};

fn eval(agent: &Agent, expr: &str) -> std::process::Output {
    agent.cli(["evaluator", "eval", expr])
}

#[test]
fn the_agent_evaluates_opsbro_expressions_and_survives_bad_ones() {
    let agent =
        Agent::start_with(AgentOptions::default().config("groups: [web, linux]\n")).expect("agent");
    for (expr, want) in [
        ("16^4", "20"),
        ("10|3", "11"),
        ("100/10", "10"),
        ("'PI %.2f' % 3.14", "PI 3.14"),
        (r#"sorted({"k":"v","k2":"v2"}.values())"#, r#"["v","v2"]"#),
        ("False and missing_function()", "false"),
        ("is_in_group('web') and not is_in_group('db')", "true"),
        ("gossip_count_nodes()", "1"),
        ("gossip_count_nodes('web', 'alive')", "1"),
        ("system_get_os()", "linux"),
        ("file_exists('/proc/self')", "true"),
    ] {
        let out = eval(&agent, expr);
        assert!(out.status.success(), "{expr}: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), want, "{expr}");
    }

    let out = eval(&agent, "while true {}");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("stopped"), "{}", stderr(&out));
    let out = eval(&agent, "1 + (2 *");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("column"), "{}", stderr(&out));
    let out = eval(&agent, "True and nosuch(1)");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));
    // Still up and answering.
    assert!(agent.cli(["agent", "state"]).status.success());

    let list = stdout(&agent.cli(["evaluator", "list"]));
    for f in [
        "file_exists(path)",
        "grep_file(string, path, regexp=False)",
        "gossip_count_nodes",
        "check_tcp",
    ] {
        assert!(list.contains(f), "{f} missing from:\n{list}");
    }
    let json: Vec<serde_json::Value> =
        serde_json::from_slice(&agent.cli(["evaluator", "list", "--json"]).stdout).expect("json");
    assert!(
        json.iter()
            .all(|f| !f["doc"].as_str().unwrap_or("").is_empty())
    );
}
