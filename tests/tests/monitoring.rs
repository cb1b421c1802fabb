//! Issue 7: checks (rhai expressions and nagios plugins), cluster-wide states, and handlers that
//! notify a real SMTP server, a local Slack-speaking HTTP server and shell commands.

use std::path::Path;

use opsbro_tests::services::{HttpRecorder, SmtpServer, mail_body, mail_header};
use opsbro_tests::{Agent, AgentOptions, DEADLINE, stderr, stdout, wait_for};
use serde_json::Value;

/// Write `files` (relative path → text) under `dir/<pack>/`.
fn write_pack(dir: &Path, pack: &str, files: &[(&str, String)]) {
    for (rel, text) in files {
        let path = dir.join(pack).join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write pack file");
    }
}

fn agent_with_packs(name: &str, packs: &Path) -> Agent {
    Agent::start_with(
        AgentOptions::default()
            .name(name)
            .config(&format!("packs_dirs: [{}]\n", packs.display())),
    )
    .expect("start agent")
}

fn state(agent: &Agent) -> Value {
    let out = agent.cli(["monitoring", "state", "--json"]);
    assert!(out.status.success(), "monitoring state: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("state json")
}

fn check(agent: &Agent, name: &str) -> Option<Value> {
    state(agent)["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

/// Wait until check `name` is in `want`; returns its view.
fn wait_check(agent: &Agent, name: &str, want: &str) -> Value {
    wait_for(&format!("{name} to be {want}"), DEADLINE, || {
        check(agent, name).filter(|c| c["state"] == want)
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}\nlog:\n{}", check(agent, name), agent.log()))
}

fn runs(agent: &Agent, name: &str) -> u64 {
    check(agent, name)
        .and_then(|c| c["runs"].as_u64())
        .unwrap_or(0)
}

/// Wait until the check ran `n` more times.
fn wait_runs(agent: &Agent, name: &str, n: u64) {
    let start = runs(agent, name);
    wait_for(&format!("{n} more runs of {name}"), DEADLINE, || {
        (runs(agent, name) >= start + n).then_some(())
    })
    .expect("runs");
}

fn handler(agent: &Agent, name: &str) -> Value {
    let out = agent.cli(["monitoring", "handlers", "--json"]);
    assert!(out.status.success(), "handlers: {}", stderr(&out));
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("handlers json");
    all.into_iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("no handler {name}"))
}

/// A check that is CRITICAL while `flag` exists, run every 500 ms.
fn flag_check(flag: &Path, handlers: &[&str]) -> String {
    format!(
        "check:\n  interval: 500ms\n  display_name: Flag\n  handlers: [{}]\n  \
         critical_if: \"file_exists('{}')\"\n  critical_output: \"'CRITICAL: the flag is up'\"\n  \
         ok_output: \"'OK: no flag'\"\n",
        handlers.join(", "),
        flag.display()
    )
}

/// The cpu check of the opsbro README, verbatim.
const README_CPU_CHECK: &str = r#"
check:
    interval:          10s
    if_group:          linux

    ok_output:         "'OK: cpu is great: %s%%' % (100-{collector.cpustats.cpuall.%idle})"

    critical_if:       "{collector.cpustats.cpuall.%idle} < {configuration.thresholds.cpuidle.critical}"
    critical_output:   "'Critical: cpu is too high: %s%%' % (100-{collector.cpustats.cpuall.%idle})"

    warning_if:        "{collector.cpustats.cpuall.%idle} < {configuration.thresholds.cpuidle.warning}"
    warning_output:    "'Warning: cpu is very high: %s%%' % (100-{collector.cpustats.cpuall.%idle})"

    thresholds :
           cpuidle :
                warning: 5
                critical: 1
"#;

#[test]
fn default_checks_and_the_readme_cpu_check_are_ok_on_a_healthy_machine() {
    let dir = tempfile::tempdir().expect("tmp");
    write_pack(
        dir.path(),
        "readme",
        &[("monitoring/cpu.yml", README_CPU_CHECK.to_owned())],
    );
    let agent = agent_with_packs("healthy", dir.path());
    let readme = wait_check(&agent, "readme/cpu", "ok");
    assert!(
        readme["output"]
            .as_str()
            .is_some_and(|o| o.starts_with("OK: cpu is great: ") && o.ends_with('%')),
        "{readme:#}"
    );
    for name in [
        "linux/cpu",
        "linux/load-average",
        "linux/memory",
        "linux/disks",
    ] {
        let c = wait_for(&format!("{name} to run"), DEADLINE, || {
            check(&agent, name).filter(|c| c["state"] != "pending")
        })
        .expect("check ran");
        assert_eq!(c["state"], "ok", "{name} on this machine: {c:#}");
        assert!(
            c["output"].as_str().is_some_and(|o| o.starts_with("OK: ")),
            "{c:#}"
        );
        assert_eq!(c["kind"], "expression");
    }
    let info: Value =
        serde_json::from_slice(&agent.cli(["agent", "info", "--json"]).stdout).expect("info");
    assert_eq!(info["checks"]["ok"], 5, "{:#}", info["checks"]);
    assert!(stdout(&agent.cli(["agent", "info"])).contains("5 ok"));
    let table = stdout(&agent.cli(["monitoring", "state"]));
    assert!(
        table.contains("linux/memory") && table.contains("OK: "),
        "{table}"
    );
}

#[test]
fn mail_goes_out_once_per_change_and_never_while_the_state_holds() {
    let smtp = SmtpServer::start().expect("smtp server");
    // A server that accepts connections and never speaks: its handler must not slow checks.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("silent");
    let dir = tempfile::tempdir().expect("tmp");
    let flag = dir.path().join("flag");
    let mail = |name: &str, server: String, extra: &str| {
        format!(
            "handler:\n  id: {name}\n  type: mail\n  severities: [ok, warning, critical, unknown]\n  \
             contacts: [\"admin@example.com\"]\n  addr_from: \"opsbro@example.com\"\n  \
             smtp_server: \"{server}\"\n{extra}"
        )
    };
    write_pack(
        dir.path(),
        "site",
        &[
            (
                "monitoring/flag.yml",
                flag_check(&flag, &["mailer", "stuck"]),
            ),
            (
                "handlers/mailer.yml",
                mail("mailer", smtp.addr.to_string(), ""),
            ),
            (
                "handlers/stuck.yml",
                mail(
                    "stuck",
                    silent.local_addr().expect("addr").to_string(),
                    "  timeout: 2s\n  retries: 0\n",
                ),
            ),
        ],
    );
    let agent = agent_with_packs("mailnode", dir.path());
    wait_check(&agent, "site/flag", "ok");
    assert!(smtp.mails().is_empty(), "a first OK is not news");

    std::fs::write(&flag, "").expect("raise flag");
    wait_check(&agent, "site/flag", "critical");
    let mails = wait_for("the CRITICAL mail", DEADLINE, || {
        let m = smtp.mails();
        (!m.is_empty()).then_some(m)
    })
    .expect("mail");
    let subject = mail_header(&mails[0], "Subject").expect("subject");
    assert_eq!(
        subject, "[opsbro] mailnode: Flag is CRITICAL",
        "{}",
        mails[0]
    );
    assert_eq!(
        mail_header(&mails[0], "To").as_deref(),
        Some("admin@example.com")
    );
    let body = mail_body(&mails[0]);
    assert!(
        body.contains("The check site/flag on mailnode")
            && body.contains("switched from OK to CRITICAL")
            && body.contains("CRITICAL: the flag is up"),
        "{body}"
    );
    // Still critical for a while: no more mail, and the stuck handler never delayed a run.
    wait_runs(&agent, "site/flag", 6);
    assert_eq!(smtp.mails().len(), 1, "no mail while the state holds");
    assert_eq!(handler(&agent, "mailer")["sent"], 1);
    let stuck = wait_for("the stuck handler to give up", DEADLINE, || {
        let h = handler(&agent, "stuck");
        (h["failed"] == 1).then_some(h)
    })
    .expect("stuck handler counted");
    assert_eq!(stuck["sent"], 0);
    assert!(
        stuck["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")),
        "{stuck:#}"
    );

    let waited = agent.cli(["monitoring", "wait-ok", "Flag", "--timeout", "1"]);
    assert_eq!(waited.status.code(), Some(2), "{}", stdout(&waited));
    assert!(
        stderr(&waited).contains("still CRITICAL"),
        "{}",
        stderr(&waited)
    );

    std::fs::remove_file(&flag).expect("lower flag");
    let waited = agent.cli(["monitoring", "wait-ok", "site/flag", "--timeout", "30"]);
    assert!(waited.status.success(), "wait-ok: {}", stderr(&waited));
    let mails = wait_for("the recovery mail", DEADLINE, || {
        let m = smtp.mails();
        (m.len() >= 2).then_some(m)
    })
    .expect("second mail");
    assert_eq!(
        mail_header(&mails[1], "Subject").as_deref(),
        Some("[opsbro] mailnode: Flag is OK")
    );
    wait_runs(&agent, "site/flag", 4);
    assert_eq!(smtp.mails().len(), 2);

    let history = stdout(&agent.cli(["monitoring", "history"]));
    assert!(
        history.contains("ok → critical") && history.contains("critical → ok"),
        "{history}"
    );
}

#[test]
fn slack_and_command_handlers_get_the_new_state() {
    let slack = HttpRecorder::start().expect("http server");
    // Refuses the first post like Slack does: the handler retries after a backoff.
    let flaky = HttpRecorder::start_failing(1).expect("failing http server");
    let dir = tempfile::tempdir().expect("tmp");
    let flag = dir.path().join("flag");
    let out_file = dir.path().join("command.out");
    write_pack(
        dir.path(),
        "site",
        &[
            (
                "monitoring/flag.yml",
                flag_check(&flag, &["slack", "hook", "cmd", "flaky"]),
            ),
            (
                "handlers/flaky.yml",
                format!(
                    "handler:\n  type: slack\n  token: t\n  api_url: http://{}\n  severities: [critical]\n",
                    flaky.addr
                ),
            ),
            (
                "handlers/slack.yml",
                format!(
                    "handler:\n  type: slack\n  token: xoxb-test-token\n  channel: \"#ops\"\n  \
                     api_url: http://{}/api\n",
                    slack.addr
                ),
            ),
            (
                "handlers/hook.yml",
                format!(
                    "handler:\n  type: slack\n  url: http://{}/services/T/B/X\n  severities: [critical]\n",
                    slack.addr
                ),
            ),
            (
                "handlers/cmd.yml",
                format!(
                    "handler:\n  type: command\n  command: \"echo {{{{check.name}}}} {{{{check.state}}}} >> {}\"\n",
                    out_file.display()
                ),
            ),
        ],
    );
    let agent = agent_with_packs("slacknode", dir.path());
    wait_check(&agent, "site/flag", "ok");
    std::fs::write(&flag, "").expect("raise flag");
    wait_check(&agent, "site/flag", "critical");
    let requests = wait_for("slack requests", DEADLINE, || {
        let r = slack.requests();
        (r.len() >= 2).then_some(r)
    })
    .expect("requests");
    let api = requests
        .iter()
        .find(|r| r.path == "/api/chat.postMessage")
        .unwrap_or_else(|| panic!("no chat.postMessage: {requests:#?}"));
    assert_eq!(api.method, "POST");
    assert_eq!(api.header("authorization"), Some("Bearer xoxb-test-token"));
    let body: Value = serde_json::from_str(&api.body).expect("json body");
    assert_eq!(body["channel"], "#ops");
    assert_eq!(body["attachments"][0]["color"], "danger");
    assert!(
        body["attachments"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("Flag is CRITICAL")),
        "{body:#}"
    );
    let hook = requests
        .iter()
        .find(|r| r.path == "/services/T/B/X")
        .unwrap_or_else(|| panic!("no webhook call: {requests:#?}"));
    let body: Value = serde_json::from_str(&hook.body).expect("json body");
    assert_eq!(body["attachments"][0]["color"], "danger");
    let written = wait_for("the command's file", DEADLINE, || {
        std::fs::read_to_string(&out_file)
            .ok()
            .filter(|t| !t.is_empty())
    })
    .expect("command ran");
    assert_eq!(written, "site/flag critical\n");

    std::fs::remove_file(&flag).expect("lower flag");
    wait_check(&agent, "site/flag", "ok");
    let api_calls = wait_for("the recovery post", DEADLINE, || {
        let calls: Vec<_> = slack
            .requests()
            .into_iter()
            .filter(|r| r.path == "/api/chat.postMessage")
            .collect();
        (calls.len() >= 2).then_some(calls)
    })
    .expect("second post");
    let body: Value = serde_json::from_str(&api_calls[1].body).expect("json");
    assert_eq!(body["attachments"][0]["color"], "good");
    wait_for("the command's second line", DEADLINE, || {
        let t = std::fs::read_to_string(&out_file).ok()?;
        (t == "site/flag critical\nsite/flag ok\n").then_some(())
    })
    .expect("command ran on recovery");
    let retried = wait_for(
        "the flaky handler to succeed on its retry",
        DEADLINE,
        || {
            let h = handler(&agent, "flaky");
            (h["sent"] == 1).then_some(h)
        },
    )
    .expect("retried");
    assert_eq!(retried["retried"], 1, "{retried:#}");
    assert_eq!(retried["failed"], 0, "{retried:#}");
    assert!(
        retried["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("channel_not_found")),
        "{retried:#}"
    );
    assert_eq!(flaky.requests().len(), 2);
    // The webhook only wants critical.
    wait_runs(&agent, "site/flag", 3);
    assert_eq!(
        slack
            .requests()
            .iter()
            .filter(|r| r.path == "/services/T/B/X")
            .count(),
        1
    );
}

fn plugins_dir() -> &'static str {
    let dir = "/usr/lib/nagios/plugins";
    assert!(
        Path::new(dir).join("check_dummy").exists(),
        "check_dummy is missing: install Debian's monitoring-plugins-basic (bash .ci/install-deps.sh)"
    );
    dir
}

fn pgrep(pattern: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn nagios_plugins_exit_codes_perfdata_macros_and_timeouts() {
    plugins_dir();
    let dir = tempfile::tempdir().expect("tmp");
    // A unique argument so the leftover-process check cannot see anything else.
    let marker = format!(
        "{}.{}",
        3000 + std::process::id() % 1000,
        std::process::id()
    );
    write_pack(
        dir.path(),
        "nagios",
        &[
            (
                "monitoring/dummy.yml",
                "check:\n  interval: 1s\n  script: \"$nagiosplugins$/check_dummy $exit_status$ '$exit_text$'\"\n  \
                 exit_status: 1\n  exit_text: This is the exit text\n"
                    .to_owned(),
            ),
            (
                "monitoring/perf.yml",
                "check:\n  interval: 1s\n  script: \"printf 'DISK OK - fine | /=2643MB;5948;5958;0;5968 time=0.5s\\\\nmore text\\\\n'\"\n"
                    .to_owned(),
            ),
            (
                "monitoring/hangs.yml",
                format!(
                    "check:\n  interval: 1s\n  timeout: 1s\n  script: \"sleep {marker} & sleep {marker}; echo never\"\n"
                ),
            ),
            (
                "monitoring/missing.yml",
                "check:\n  interval: 1s\n  script: \"$nagiosplugins$/check_does_not_exist\"\n".to_owned(),
            ),
            (
                "monitoring/nomacro.yml",
                "check:\n  interval: 1s\n  script: \"check_x -w $warning_level$\"\n".to_owned(),
            ),
        ],
    );
    let agent = agent_with_packs("nagios", dir.path());
    let dummy = wait_check(&agent, "nagios/dummy", "warning");
    assert_eq!(dummy["output"], "WARNING: This is the exit text");
    assert_eq!(dummy["kind"], "script");

    let perf = wait_check(&agent, "nagios/perf", "ok");
    assert_eq!(perf["output"], "DISK OK - fine");
    assert_eq!(perf["long_output"], "more text");
    assert_eq!(perf["perfdata"][0]["label"], "/");
    assert_eq!(perf["perfdata"][0]["value"], 2643.0);
    assert_eq!(perf["perfdata"][0]["unit"], "MB");
    assert_eq!(perf["perfdata"][0]["max"], 5968.0);
    assert_eq!(perf["perfdata"][1]["label"], "time");

    let hangs = wait_check(&agent, "nagios/hangs", "unknown");
    assert!(
        hangs["output"]
            .as_str()
            .is_some_and(|o| o.contains("timeout")),
        "{hangs:#}"
    );
    // Killed as a group: neither the shell's child nor its background child is left. (The
    // check runs again every second, so look between runs: a run lasts 1 s, the gap ~1 s.)
    wait_for("no plugin process left between runs", DEADLINE, || {
        (!pgrep(&format!("sleep {marker}"))).then_some(())
    })
    .expect("processes killed");

    let missing = wait_check(&agent, "nagios/missing", "unknown");
    assert!(
        missing["output"]
            .as_str()
            .is_some_and(|o| o.contains("not found")),
        "{missing:#}"
    );
    let nomacro = wait_check(&agent, "nagios/nomacro", "unknown");
    assert!(
        nomacro["output"]
            .as_str()
            .is_some_and(|o| o.contains("$warning_level$")),
        "{nomacro:#}"
    );
    let mut agent = agent;
    let out = agent.cli(["agent", "stop"]);
    assert!(out.status.success(), "stop: {}", stderr(&out));
    agent.wait_exit(DEADLINE).expect("agent exits");
    wait_for(
        "no plugin process after the agent stopped",
        DEADLINE,
        || (!pgrep(&format!("sleep {marker}"))).then_some(()),
    )
    .expect("nothing left");
}

#[test]
fn a_flapping_check_with_failures_before_critical_sends_exactly_one_mail() {
    let smtp = SmtpServer::start().expect("smtp server");
    let dir = tempfile::tempdir().expect("tmp");
    let seq = dir.path().join("sequence");
    // One exit code per run; once the list is used up the plugin stays CRITICAL.
    std::fs::write(&seq, "0\n2\n0\n2\n2\n0\n2\n0\n2\n2\n0\n").expect("sequence");
    write_pack(
        dir.path(),
        "flaps",
        &[
            (
                "monitoring/flappy.yml",
                format!(
                    "check:\n  interval: 300ms\n  failures_before_critical: 3\n  handlers: [mailer]\n  \
                     script: \"s=$$(head -n 1 {seq}); sed -i 1d {seq}; echo result $${{s:-2}}; exit $${{s:-2}}\"\n",
                    seq = seq.display()
                ),
            ),
            (
                "handlers/mailer.yml",
                format!(
                    "handler:\n  type: mail\n  contacts: [\"oncall@example.com\"]\n  smtp_server: \"{}\"\n",
                    smtp.addr
                ),
            ),
        ],
    );
    let agent = agent_with_packs("flappy", dir.path());
    let c = wait_check(&agent, "flaps/flappy", "critical");
    assert!(
        std::fs::read_to_string(&seq).is_ok_and(|s| s.is_empty()),
        "CRITICAL only after the flapping part: {c:#}"
    );
    wait_for("the one mail", DEADLINE, || {
        (smtp.mails().len() == 1).then_some(())
    })
    .expect("one mail");
    wait_runs(&agent, "flaps/flappy", 5);
    assert_eq!(
        smtp.mails().len(),
        1,
        "exactly one mail for the whole episode"
    );
    let history: Vec<Value> =
        serde_json::from_slice(&agent.cli(["monitoring", "history", "--json"]).stdout)
            .expect("history");
    let changes: Vec<(String, String)> = history
        .iter()
        .filter(|h| h["check"] == "flaps/flappy")
        .map(|h| {
            (
                h["old_state"].as_str().unwrap_or_default().to_owned(),
                h["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            ("pending".to_owned(), "ok".to_owned()),
            ("ok".to_owned(), "critical".to_owned())
        ]
    );
}

#[test]
fn a_critical_check_on_one_node_is_seen_from_the_others() {
    let dir = tempfile::tempdir().expect("tmp");
    let flag = dir.path().join("flag");
    write_pack(
        dir.path(),
        "site",
        &[("monitoring/flag.yml", flag_check(&flag, &[]))],
    );
    let a = agent_with_packs("alpha", dir.path());
    let b = Agent::start_with(AgentOptions::default().name("bravo")).expect("b");
    let c = Agent::start_with(AgentOptions::default().name("charlie")).expect("c");
    for joiner in [&b, &c] {
        let out = joiner.cli(["gossip", "join", &a.gossip.to_string()]);
        assert!(out.status.success(), "join: {}", stderr(&out));
    }
    let out = c.cli(["gossip", "wait-members", "--count", "3", "--timeout", "30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_check(&a, "site/flag", "ok");
    std::fs::write(&flag, "").expect("raise flag");
    wait_check(&a, "site/flag", "critical");
    let remote = wait_for("charlie to see alpha's critical check", DEADLINE, || {
        let out = c.cli(["monitoring", "state", "alpha", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["checks"]
            .as_array()?
            .iter()
            .any(|ch| ch["name"] == "site/flag" && ch["state"] == "critical")
            .then_some(v)
    })
    .expect("gossiped state");
    assert_eq!(remote["is_self"], false);
    assert_eq!(remote["node"], "alpha");
    let table = stdout(&c.cli(["monitoring", "state", "alpha"]));
    assert!(
        table.contains("site/flag") && table.contains("critical"),
        "{table}"
    );
    // And back.
    std::fs::remove_file(&flag).expect("lower flag");
    wait_for("charlie to see it recover", DEADLINE, || {
        let out = c.cli(["monitoring", "state", "alpha", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["checks"]
            .as_array()?
            .iter()
            .any(|ch| ch["name"] == "site/flag" && ch["state"] == "ok")
            .then_some(())
    })
    .expect("recovered");
    let unknown = c.cli(["monitoring", "state", "nobody"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
}

#[test]
fn a_check_with_a_syntax_error_is_unknown_and_the_agent_keeps_running() {
    let dir = tempfile::tempdir().expect("tmp");
    write_pack(
        dir.path(),
        "broken",
        &[
            (
                "monitoring/bad.yml",
                "check:\n  interval: 1s\n  critical_if: \"1 + + \"\n  ok_output: \"'fine'\"\n"
                    .to_owned(),
            ),
            (
                "monitoring/fails.yml",
                "check:\n  interval: 1s\n  critical_if: \"no_such_function(1) > 1\"\n".to_owned(),
            ),
        ],
    );
    let agent = agent_with_packs("broken", dir.path());
    let bad = wait_check(&agent, "broken/bad", "unknown");
    let output = bad["output"].as_str().unwrap_or_default();
    assert!(output.starts_with("UNKNOWN: critical_if:"), "{bad:#}");
    assert!(bad["error"].as_str().is_some(), "{bad:#}");
    let fails = wait_check(&agent, "broken/fails", "unknown");
    assert!(
        fails["output"]
            .as_str()
            .is_some_and(|o| o.contains("critical_if")),
        "{fails:#}"
    );
    wait_runs(&agent, "broken/bad", 2);
    let info = agent.cli(["agent", "info"]);
    assert!(
        info.status.success(),
        "the agent still answers: {}",
        stderr(&info)
    );
    assert!(
        agent.log().contains("bad.yml"),
        "the load problem is logged"
    );
    // The rest of the agent is fine: the default checks still run.
    wait_check(&agent, "linux/memory", "ok");
}

#[test]
fn group_and_node_changes_reach_subscribed_handlers_and_min_interval_merges() {
    let dir = tempfile::tempdir().expect("tmp");
    let events = dir.path().join("events.out");
    let merged = dir.path().join("merged.out");
    write_pack(
        dir.path(),
        "site",
        &[
            (
                "handlers/events.yml",
                format!(
                    "handler:\n  type: command\n  events: [group, node]\n  \
                     command: \"echo {{{{event}}}} {{{{state}}}} {{{{group}}}}{{{{member.name}}}} >> {}\"\n",
                    events.display()
                ),
            ),
            (
                "handlers/merged.yml",
                format!(
                    "handler:\n  type: command\n  events: [group]\n  min_interval: 10s\n  \
                     command: \"echo {{{{group}}}} >> {}\"\n",
                    merged.display()
                ),
            ),
        ],
    );
    let a = agent_with_packs("alpha", dir.path());
    let lines = |path: &Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let wait_line = |path: &Path, line: &str| {
        wait_for(&format!("`{line}` in {}", path.display()), DEADLINE, || {
            lines(path).iter().any(|l| l == line).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}\nlog:\n{}", lines(path), a.log()));
    };
    // Wait for the first detector pass, so the groups below are changes.
    let out = a.cli(["agent", "wait-initialized", "--timeout", "30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for g in ["g1", "g2", "g3"] {
        let out = a.cli(["agent", "groups", "add", g]);
        assert!(out.status.success(), "groups add: {}", stderr(&out));
    }
    wait_line(&events, "group add g3");
    wait_line(&events, "group add g1");
    // The first notification runs at once; the two that come within min_interval are merged
    // into one run with the newest.
    wait_line(&merged, "g3");
    assert_eq!(lines(&merged), vec!["g1", "g3"]);
    assert_eq!(handler(&a, "merged")["dropped"], 1);

    let mut b = Agent::start_with(AgentOptions::default().name("bravo")).expect("b");
    let out = b.cli(["gossip", "join", &a.gossip.to_string()]);
    assert!(out.status.success(), "join: {}", stderr(&out));
    wait_line(&events, "node alive bravo");
    b.signal("KILL").expect("kill -9");
    let _ = b.wait_exit(DEADLINE);
    wait_line(&events, "node dead bravo");
    let out = a.cli(["agent", "groups", "remove", "g2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_line(&events, "group remove g2");
}

#[test]
fn check_states_survive_a_restart_without_a_second_notification() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = tempfile::tempdir().expect("data");
    let flag = dir.path().join("flag");
    let out_file = dir.path().join("command.out");
    write_pack(
        dir.path(),
        "site",
        &[
            ("monitoring/flag.yml", flag_check(&flag, &["cmd"])),
            (
                "handlers/cmd.yml",
                format!(
                    "handler:\n  type: command\n  command: \"echo {{{{check.state}}}} >> {}\"\n",
                    out_file.display()
                ),
            ),
        ],
    );
    let options = || {
        AgentOptions::default()
            .name("restarts")
            .data_dir(data.path())
            .config(&format!("packs_dirs: [{}]\n", dir.path().display()))
    };
    std::fs::write(&flag, "").expect("raise flag");
    let mut agent = Agent::start_with(options()).expect("agent");
    wait_check(&agent, "site/flag", "critical");
    wait_for("the command", DEADLINE, || {
        (std::fs::read_to_string(&out_file).ok()? == "critical\n").then_some(())
    })
    .expect("notified once");
    let out = agent.cli(["agent", "stop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    agent.wait_exit(DEADLINE).expect("stopped");

    let agent = Agent::start_with(options()).expect("restarted");
    // Known CRITICAL from the first listing: no "pending" and no new notification.
    let c = wait_for("the check to be listed", DEADLINE, || {
        check(&agent, "site/flag")
    })
    .expect("listed");
    assert_eq!(c["state"], "critical", "{c:#}");
    wait_runs(&agent, "site/flag", 3);
    assert_eq!(
        std::fs::read_to_string(&out_file).expect("file"),
        "critical\n"
    );
    std::fs::remove_file(&flag).expect("lower flag");
    wait_for("the recovery notification", DEADLINE, || {
        (std::fs::read_to_string(&out_file).ok()? == "critical\nok\n").then_some(())
    })
    .expect("recovery");
}

#[test]
fn mail_over_starttls_with_auth_to_a_server_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("tmp");
    // A private CA and a server certificate for 127.0.0.1 signed by it.
    let p = |name: &str| dir.path().join(name);
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: Vec<Vec<String>> = vec![
        [
            &["req", "-x509"][..],
            &ec,
            &["-days", "1", "-subj", "/CN=opsbro test CA"],
        ]
        .concat(),
        [&["req"][..], &ec, &["-subj", "/CN=127.0.0.1"]].concat(),
        vec!["x509", "-req", "-days", "1"],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(str::to_owned).collect())
    .collect();
    let files: [&[(&str, &str)]; 3] = [
        &[("-keyout", "ca.key"), ("-out", "ca.pem")],
        &[("-keyout", "key.pem"), ("-out", "leaf.csr")],
        &[
            ("-in", "leaf.csr"),
            ("-CA", "ca.pem"),
            ("-CAkey", "ca.key"),
            ("-CAcreateserial", ""),
            ("-extfile", "ext.cnf"),
            ("-out", "cert.pem"),
        ],
    ];
    for (args, files) in steps.iter().zip(files) {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(args);
        for (flag, file) in files {
            cmd.arg(flag);
            if !file.is_empty() {
                cmd.arg(p(file));
            }
        }
        let made = cmd
            .output()
            .expect("openssl (Debian package openssl) must be installed");
        assert!(made.status.success(), "openssl {args:?}: {}", stderr(&made));
    }
    let (cert, key, ca) = (p("cert.pem"), p("key.pem"), p("ca.pem"));
    let smtp = SmtpServer::start_tls(&cert, &key, "opsbro", "s3cret").expect("tls smtp");
    let flag = dir.path().join("flag");
    let mail_handler = |name: &str, password: &str| {
        format!(
            "handler:\n  id: {name}\n  type: mail\n  contacts: [\"ops@example.com\"]\n  \
             smtp_server: \"{}\"\n  starttls: true\n  ca_file: {}\n  smtp_user: opsbro\n  \
             smtp_password: {password}\n  retries: 0\n",
            smtp.addr,
            ca.display()
        )
    };
    write_pack(
        dir.path(),
        "site",
        &[
            (
                "monitoring/flag.yml",
                flag_check(&flag, &["tls", "wrongpass"]),
            ),
            ("handlers/tls.yml", mail_handler("tls", "s3cret")),
            ("handlers/wrongpass.yml", mail_handler("wrongpass", "nope")),
        ],
    );
    let agent = agent_with_packs("tlsnode", dir.path());
    wait_check(&agent, "site/flag", "ok");
    std::fs::write(&flag, "").expect("raise flag");
    let mails = wait_for("the mail over STARTTLS", DEADLINE, || {
        let m = smtp.mails();
        (!m.is_empty()).then_some(m)
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}", handler_view(&agent)));
    assert_eq!(
        mail_header(&mails[0], "Subject").as_deref(),
        Some("[opsbro] tlsnode: Flag is CRITICAL")
    );
    let refused = wait_for("the wrong password to be refused", DEADLINE, || {
        let h = handler(&agent, "wrongpass");
        (h["failed"] == 1).then_some(h)
    })
    .expect("refused");
    assert!(
        refused["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("535") || e.to_lowercase().contains("auth")),
        "{refused:#}"
    );
    assert_eq!(smtp.mails().len(), 1);
}

fn handler_view(agent: &Agent) -> Value {
    serde_json::from_slice(&agent.cli(["monitoring", "handlers", "--json"]).stdout)
        .unwrap_or_default()
}
