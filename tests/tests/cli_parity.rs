//! Issue 20: the original's commands that were missing (`detectors history|wait-group`,
//! `collectors history|wait-ok|run`, `evaluator wait-eval-true`, `agent print`, `version`,
//! `gossip wait-members --name|--display-name|--group`, `GET /api`, log counts in `agent info`),
//! and the CLI bugs found by hand (DOT labels, output into a closed pipe). Every command is the
//! real binary against a real agent.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Output, Stdio};

use opsbro_tests::{Agent, AgentOptions, DEADLINE, http, opsbro_command, stderr, stdout, wait_for};
use serde_json::Value;

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

/// Run `opsbro ARGS` with its stdout a pipe whose reading end is closed before the command
/// writes anything (what `| head` does to a long output, at once).
fn into_closed_pipe(args: &[&str]) -> Output {
    let mut child = opsbro_command()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn opsbro");
    drop(child.stdout.take());
    child.wait_with_output().expect("opsbro output")
}

/// Regression: `opsbro completions bash | head` panicked (clap_complete's write failed with
/// EPIPE) and printed a panic message. Every printing command ends quietly instead.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let agent = Agent::start_with(AgentOptions::default().name("piped")).expect("agent");
    let api = agent.api.to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["completions", "bash"],
        vec!["completions", "zsh"],
        vec!["version"],
        vec!["agent", "keygen"],
        vec!["--api", &api, "evaluator", "list"],
        vec!["--api", &api, "gossip", "members", "--format", "dot"],
    ];
    for args in commands {
        let out = into_closed_pipe(&args);
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

/// Regression: `gossip members --format dot` printed `\\n` in labels, which Graphviz shows as a
/// literal `\n`; the label is now `"name\naddr\nstate"` and `dot` breaks it into lines.
#[test]
fn dot_labels_are_broken_into_lines_by_graphviz() {
    let agent = Agent::start_with(AgentOptions::default().name("dotty")).expect("agent");
    let out = agent.cli(["gossip", "members", "--format", "dot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let label = format!(
        r#"[label="dotty\n{}\nalive", color=darkgreen]"#,
        agent.gossip
    );
    assert!(text.contains(&label), "{label} not in:\n{text}");
    assert!(!text.contains(r"\\n"), "{text}");

    let dot = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut dot) = dot else {
        panic!("graphviz `dot` must be installed (Debian graphviz): bash .ci/install-deps.sh");
    };
    std::io::Write::write_all(&mut dot.stdin.take().expect("stdin"), text.as_bytes())
        .expect("write to dot");
    let svg = dot.wait_with_output().expect("dot output");
    assert!(svg.status.success(), "dot -Tsvg: {}", stderr(&svg));
    let svg = stdout(&svg);
    // One <text> element per line of the label.
    for line in [
        "dotty".to_owned(),
        agent.gossip.to_string(),
        "alive".to_owned(),
    ] {
        assert!(
            svg.contains(&format!(">{line}</text>")),
            "{line} in:\n{svg}"
        );
    }
    assert!(!svg.contains(r"\n"), "{svg}");
}

/// `detectors history` lists this node's group changes (static, added live, detected);
/// `detectors wait-group G` returns once the node has G, 2 on timeout.
#[test]
fn detectors_history_and_wait_group() {
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("grouped")
            .config("groups: [web]\n"),
    )
    .expect("agent");
    let out = agent.cli(["detectors", "wait-group", "web", "--timeout", "30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("in group web"), "{}", stdout(&out));

    let out = agent.cli(["detectors", "wait-group", "nope", "--timeout", "0.5"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("still not in group nope"),
        "{}",
        stderr(&out)
    );

    // A group added live: wait-group sees it, the history records it; then removed.
    let mut waiter = opsbro_command()
        .args(["--api", &agent.api.to_string()])
        .args(["detectors", "wait-group", "extra", "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wait-group");
    let out = agent.cli(["agent", "groups", "add", "extra"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = wait_for("wait-group to return", DEADLINE, || {
        waiter.try_wait().ok().flatten()
    })
    .expect("wait-group returned");
    let mut err = String::new();
    if let Some(mut e) = waiter.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "{err}");

    let out = agent.cli(["agent", "groups", "remove", "extra"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let history = wait_for("the removal in the history", DEADLINE, || {
        let h = json(&agent.cli(["detectors", "history", "--json"]));
        h.as_array()?
            .iter()
            .any(|c| c["removed"] == serde_json::json!(["extra"]))
            .then_some(h)
    })
    .expect("history");
    let changes = history.as_array().expect("list");
    assert!(
        changes
            .iter()
            .any(|c| c["added"] == serde_json::json!(["extra"])),
        "{history:#}"
    );
    // Replaying the history gives the groups the node has now, and each entry says so too.
    let mut groups = BTreeSet::new();
    for c in changes {
        for g in c["added"].as_array().expect("added") {
            groups.insert(g.as_str().expect("group").to_owned());
        }
        for g in c["removed"].as_array().expect("removed") {
            groups.remove(g.as_str().expect("group"));
        }
        let now: BTreeSet<String> = c["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect();
        assert_eq!(groups, now, "{c:#}");
        assert!(c["time_ms"].as_u64().is_some_and(|t| t > 0), "{c:#}");
    }
    assert!(
        groups.contains("web") && !groups.contains("extra"),
        "{groups:?}"
    );
    let members = json(&agent.cli(["gossip", "members", "--json"]));
    let me: BTreeSet<String> = members
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["is_self"] == true)
        .and_then(|m| m["groups"].as_array())
        .expect("self")
        .iter()
        .filter_map(|g| g.as_str().map(str::to_owned))
        .collect();
    assert_eq!(groups, me);

    let out = agent.cli(["detectors", "history"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("TIME (UTC)"), "{text}");
    assert!(text.lines().any(|l| l.contains("extra")), "{text}");
}

/// `collectors history`, `collectors wait-ok NAME` and `collectors run NAME`.
#[test]
fn collectors_history_wait_ok_and_run() {
    let agent = Agent::start_with(AgentOptions::default().name("collecting")).expect("agent");
    let out = agent.cli(["collectors", "wait-ok", "memory", "--timeout", "30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "collector memory is ok");

    let history = json(&agent.cli(["collectors", "history", "--json"]));
    let first = history
        .as_array()
        .expect("list")
        .iter()
        .find(|c| c["name"] == "memory")
        .unwrap_or_else(|| panic!("memory in {history:#}"));
    assert_eq!(first["old_state"], "pending");
    assert_eq!(first["state"], "ok");
    let out = agent.cli(["collectors", "history"]);
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.contains("memory") && l.contains("pending → ok")),
        "{}",
        stdout(&out)
    );

    // run: a fresh result, printed like `show`, kept as the latest.
    let before =
        json(&agent.cli(["collectors", "show", "memory", "--json"]))["memory"]["last_run_ms"]
            .as_u64()
            .expect("ran once");
    let run = json(&agent.cli(["collectors", "run", "memory", "--json"]));
    assert_eq!(run["state"], "ok", "{run:#}");
    let ran_at = run["last_run_ms"].as_u64().expect("time");
    assert!(ran_at >= before, "{ran_at} < {before}");
    assert!(
        run["data"]["memtotal"].as_u64().is_some_and(|n| n > 0),
        "{run:#}"
    );
    let out = agent.cli(["collectors", "run", "memory"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with("collector.memory.memtotal = ")),
        "{}",
        stdout(&out)
    );
    let out = agent.cli(["collectors", "run", "gossip", "--json"]);
    assert_eq!(json(&out)["data"]["nb_known_nodes"], 1);

    for args in [
        ["collectors", "run", "nope"],
        ["collectors", "wait-ok", "nope"],
    ] {
        let out = agent.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("no collector named `nope`"),
            "{}",
            stderr(&out)
        );
    }
}

/// `evaluator wait-eval-true EXPR`: 0 once the expression is true, 2 (with the last value) on
/// timeout.
#[test]
fn evaluator_wait_eval_true() {
    let agent = Agent::start_with(AgentOptions::default().name("evaluating")).expect("agent");
    let dir = tempfile::tempdir().expect("tmp");
    let flag = dir.path().join("flag");
    let expr = format!("file_exists('{}')", flag.display());

    let out = agent.cli(["evaluator", "wait-eval-true", &expr, "--timeout", "0.5"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("still not true"), "{}", stderr(&out));
    assert!(stderr(&out).contains("it is false"), "{}", stderr(&out));

    let mut waiter = opsbro_command()
        .args(["--api", &agent.api.to_string()])
        .args(["evaluator", "wait-eval-true", &expr, "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wait-eval-true");
    std::fs::write(&flag, "").expect("flag");
    let status = wait_for("wait-eval-true to return", DEADLINE, || {
        waiter.try_wait().ok().flatten()
    })
    .expect("returned");
    let mut out = String::new();
    if let Some(mut o) = waiter.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    assert!(status.success(), "{out}");
    assert_eq!(out.trim(), "true");

    // An expression that fails is retried, and the error shown at the timeout.
    let out = agent.cli([
        "evaluator",
        "wait-eval-true",
        "no_such_fn()",
        "--timeout",
        "0.3",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("it fails"), "{}", stderr(&out));
}

/// `agent print uuid|local-addr|public-addr` and `version`.
#[test]
fn agent_print_and_version() {
    let agent = Agent::start_with(AgentOptions::default().name("printed")).expect("agent");
    let info = json(&agent.cli(["agent", "info", "--json"]));
    let print = |what: &str| {
        let out = agent.cli(["agent", "print", what]);
        assert!(out.status.success(), "{what}: {}", stderr(&out));
        let text = stdout(&out);
        assert_eq!(text.lines().count(), 1, "{what}: {text:?}");
        text.trim_end_matches('\n').to_owned()
    };
    assert_eq!(print("uuid"), info["uuid"].as_str().expect("uuid"));
    assert_eq!(print("local-addr"), "127.0.0.1", "gossip binds 127.0.0.1");
    assert_eq!(print("public-addr"), info["addresses"]["advertise"]);
    let out = agent.cli(["agent", "print", "nothing"]);
    assert_eq!(out.status.code(), Some(2));

    let version = opsbro_command().arg("version").output().expect("version");
    let flag = opsbro_command()
        .arg("--version")
        .output()
        .expect("--version");
    assert!(version.status.success() && flag.status.success());
    assert_eq!(stdout(&version), stdout(&flag));
    assert_eq!(
        stdout(&version).trim(),
        format!("opsbro {}", info["version"].as_str().expect("version"))
    );
}

/// `gossip wait-members` by name, display name, group and count (alive members).
#[test]
fn gossip_wait_members_by_name_display_name_group_and_count() {
    let a = Agent::start_with(
        AgentOptions::default()
            .name("alpha")
            .config("display_name: Alpha One\ngroups: [web]\n"),
    )
    .expect("alpha");
    let wait = |args: &[&str]| {
        let mut all = vec!["gossip", "wait-members"];
        all.extend_from_slice(args);
        a.cli(all)
    };
    let out = wait(&["--name", "bravo", "--timeout", "0.5"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("only 0 alive members named bravo"),
        "{}",
        stderr(&out)
    );

    let b = Agent::start_with(AgentOptions::default().name("bravo")).expect("bravo");
    let mut waiter = opsbro_command()
        .args(["--api", &a.api.to_string()])
        .args([
            "gossip",
            "wait-members",
            "--name",
            "bravo",
            "--timeout",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wait-members");
    let out = b.cli(["gossip", "join", &a.gossip.to_string()]);
    assert!(out.status.success(), "join: {}", stderr(&out));
    let status = wait_for("wait-members --name to return", DEADLINE, || {
        waiter.try_wait().ok().flatten()
    })
    .expect("returned");
    let mut text = String::new();
    if let Some(mut o) = waiter.stdout.take() {
        let _ = o.read_to_string(&mut text);
    }
    assert!(status.success(), "{text}");
    assert_eq!(text.trim(), "1 alive members named bravo");

    for ok in [
        vec!["--display-name", "Alpha One"],
        vec!["--group", "web"],
        vec!["--count", "2"],
        vec!["--name", "alpha", "--group", "web"],
    ] {
        let mut args = ok.clone();
        args.extend(["--timeout", "30"]);
        let out = wait(&args);
        assert!(out.status.success(), "{ok:?}: {}", stderr(&out));
    }
    for not_yet in [
        vec!["--group", "web", "--count", "2"],
        vec!["--display-name", "alpha"],
        vec!["--name", "bravo", "--group", "web"],
        vec!["--count", "3"],
    ] {
        let mut args = not_yet.clone();
        args.extend(["--timeout", "0.3"]);
        let out = wait(&args);
        assert_eq!(out.status.code(), Some(2), "{not_yet:?}: {}", stderr(&out));
    }
}

/// A documented path with sample values in place of its parameters.
fn sample_path(path: &str) -> String {
    path.replace("{node}", "nobody-here")
        .replace("{name}", "memory")
        .replace("{group}", "parity")
        .replace("{*key}", "parity/key")
}

/// `GET /api` (and `GET /`) list every route, anonymously; each documented route answers its
/// method, and wants the token exactly when the list says so.
#[test]
fn the_api_describes_its_routes() {
    let agent = Agent::start_with(AgentOptions::default().name("described")).expect("agent");
    let api = http(agent.api, "GET", "/api", &[], b"").expect("GET /api");
    assert_eq!(api.status, 200, "{}", api.body);
    let index = http(agent.api, "GET", "/", &[], b"").expect("GET /");
    assert_eq!(index.status, 200, "{}", index.body);
    assert_eq!(index.json(), api.json());
    let routes = api.json();
    let routes = routes.as_array().expect("a list");
    let find = |method: &str, path: &str| {
        routes
            .iter()
            .find(|r| r["method"] == method && r["path"] == path)
            .unwrap_or_else(|| panic!("{method} {path} not in {routes:#?}"))
    };
    assert_eq!(find("GET", "/api")["needs_token"], false);
    assert_eq!(find("GET", "/agent/members")["needs_token"], false);
    assert_eq!(find("POST", "/agent/stop")["needs_token"], true);
    assert_eq!(find("GET", "/kv/{*key}")["needs_token"], true);
    assert_eq!(find("POST", "/collectors/{name}/run")["needs_token"], true);
    assert_eq!(
        find("GET", "/agent/detectors/history")["needs_token"],
        false
    );
    for r in routes {
        assert!(
            r["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{r}"
        );
    }

    let auth = agent.auth();
    for r in routes {
        let (method, path) = (
            r["method"].as_str().expect("method"),
            r["path"].as_str().expect("path"),
        );
        // These two end the agent.
        if path == "/agent/stop" || path == "/agent/leave" {
            assert_eq!(r["needs_token"], true, "{r}");
            continue;
        }
        // This one never ends (day2_logs.rs follows it, and checks the 401 without the token).
        if path == "/agent/log/follow" {
            assert_eq!(r["needs_token"], true, "{r}");
            continue;
        }
        // Nor this one (ui.rs reads it in a browser, and checks its 401 without the token).
        if path == "/ui/events" {
            assert_eq!(r["needs_token"], false, "anonymous reads: {r}");
            continue;
        }
        let path = sample_path(path);
        let anonymous = http(agent.api, method, &path, &[], b"").expect("request");
        assert_eq!(
            anonymous.status == 401,
            r["needs_token"] == true,
            "{method} {path} without the token: {} {}",
            anonymous.status,
            anonymous.body
        );
        let answer = http(agent.api, method, &path, &[&auth], b"").expect("request");
        assert_ne!(answer.status, 405, "{method} {path}: {}", answer.body);
        assert_ne!(answer.status, 401, "{method} {path}: {}", answer.body);
        assert!(
            !(answer.status == 404 && answer.body.contains("no such route")),
            "{method} {path} is documented but not routed: {}",
            answer.body
        );
    }
    let missing = http(agent.api, "GET", "/no/such/thing", &[&auth], b"").expect("request");
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("no such route"), "{}", missing.body);
}

/// `agent info` shows the warnings and errors logged since start ("N errors N warnings", like
/// the original), in its JSON and in `/metrics`.
#[test]
fn agent_info_counts_logged_warnings_and_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let broken = dir.path().join("broken/monitoring");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::write(broken.join("bad.yml"), "check: [unclosed\n").expect("pack");
    // statsd on a port already taken: the agent logs an error and runs on.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let port = taken.local_addr().expect("addr").port();
    let agent = Agent::start_with(AgentOptions::default().name("noisy").config(&format!(
        "packs_dirs: [{}]\nstatsd:\n  enabled: true\n  bind: 127.0.0.1\n  port: {port}\n",
        dir.path().display()
    )))
    .expect("agent");
    let info = json(&agent.cli(["agent", "info", "--json"]));
    let (errors, warnings) = (
        info["logs"]["errors"].as_u64().expect("errors"),
        info["logs"]["warnings"].as_u64().expect("warnings"),
    );
    let log = agent.log();
    assert!(errors >= 1, "{info:#}\n{log}");
    assert!(warnings >= 1, "{info:#}\n{log}");
    assert!(
        errors <= log.matches("ERROR").count() as u64,
        "more errors counted than logged: {errors}\n{log}"
    );

    let out = agent.cli(["agent", "info"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Logs"))
        .unwrap_or_else(|| panic!("no Logs line in:\n{text}"));
    let counts: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        line.contains(" errors ") && line.trim_end().ends_with(" warnings"),
        "{line}"
    );
    assert!(
        counts.len() == 2 && counts[0] >= errors && counts[1] >= warnings,
        "{line}"
    );

    let metrics = http(agent.api, "GET", "/metrics", &[], b"").expect("metrics");
    let sample = |series: &str| {
        metrics
            .body
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert!(
        sample("opsbro_log_events_total{level=\"error\"}").is_some_and(|n| n >= 1.0),
        "{}",
        metrics.body
    );
    assert!(
        sample("opsbro_log_events_total{level=\"warn\"}").is_some_and(|n| n >= 1.0),
        "{}",
        metrics.body
    );
    drop(taken);
}
