//! Issue 12: generators — files rendered from cluster state, validated, reloaded, rolled back.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use opsbro_tests::{Agent, AgentOptions, DEADLINE, stderr, stdout, wait_for};
use serde_json::Value;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn lines_of(path: &Path) -> usize {
    read(path).lines().count()
}

fn generator(agent: &Agent, name: &str) -> Value {
    let out = agent.cli(["generators", "state", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    all.into_iter()
        .find(|g| g["name"] == name)
        .unwrap_or(Value::Null)
}

fn node(name: &str, config: &str) -> Agent {
    Agent::start_with(AgentOptions::default().name(name).config(config)).expect("agent")
}

fn join(agent: &Agent, seed: &Agent) {
    let out = agent.cli(["gossip", "join", &seed.gossip.to_string()]);
    assert!(out.status.success(), "join: {}", stderr(&out));
}

#[test]
fn a_haproxy_file_follows_the_web_group_with_one_reload_per_change() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("haproxy.cfg");
    let reloads = dir.path().join("reloads.log");
    let packs = dir.path().join("packs");
    write(
        &packs.join("lb/generators/haproxy.yml"),
        &format!(
            "generator:\n  path: {}\n  template: haproxy.cfg\n  command: \"echo reloaded >> {}\"\n  interval: 2s\n",
            out.display(),
            reloads.display()
        ),
    );
    write(
        &packs.join("lb/templates/haproxy.cfg"),
        "backend web\n{% for n in ok_nodes(group='web') %}\n    server {{ n.name }} {{ n.addr }}:80 check\n{% endfor %}\n",
    );
    let a = node("web-a", "groups: [web]\n");
    let b = node("web-b", "groups: [web]\n");
    let c = node("lb-c", &format!("packs_dirs: [{}]\n", packs.display()));
    join(&b, &a);
    join(&c, &a);
    let servers = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("server "))
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
            .collect()
    };
    wait_for("web-a and web-b in the file", DEADLINE, || {
        (servers(&read(&out)) == ["web-a", "web-b"]).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{:#}", read(&out), generator(&c, "lb/haproxy")));
    assert_eq!(
        read(&out),
        "backend web\n    server web-a 127.0.0.1:80 check\n    server web-b 127.0.0.1:80 check\n"
    );
    // Writes and reloads go together: settle, then count.
    let settled = wait_for("writes and reloads to agree", DEADLINE, || {
        let g = generator(&c, "lb/haproxy");
        let writes = g["writes"].as_u64()?;
        (g["state"] == "compliant" && lines_of(&reloads) as u64 == writes).then_some(writes)
    })
    .expect("settled");

    let d = node("web-d", "groups: [web]\n");
    join(&d, &a);
    wait_for("web-d in the file", DEADLINE, || {
        (servers(&read(&out)) == ["web-a", "web-b", "web-d"]).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", read(&out)));
    // Longer than the debounce and the interval: nothing else may come.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        lines_of(&reloads) as u64,
        settled + 1,
        "exactly one more reload"
    );
    let g = generator(&c, "lb/haproxy");
    assert!(
        g["diff"]
            .as_str()
            .is_some_and(|d| d.contains("+    server web-d 127.0.0.1:80 check")),
        "{g:#}"
    );

    b.signal("KILL").expect("kill -9 web-b");
    wait_for("web-b out of the file", DEADLINE * 2, || {
        (servers(&read(&out)) == ["web-a", "web-d"]).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", read(&out)));
    wait_for("the reload for the removal", DEADLINE, || {
        (lines_of(&reloads) as u64 == settled + 2).then_some(())
    })
    .expect("reload");
    let out = c.cli(["generators", "wait-compliant", "haproxy", "--timeout", "5"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn validation_rollback_partial_blocks_and_kv_values() {
    let dir = tempfile::tempdir().expect("tmp");
    let packs = dir.path().join("packs");
    let app = dir.path().join("etc/app.conf");
    let keys = dir.path().join("ssh/authorized_keys");
    let fresh_keys = dir.path().join("ssh/authorized_keys2");
    let svc = dir.path().join("etc/svc.conf");
    write(&app, "old content\n");
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    write(
        &keys,
        "ssh-rsa AAA admin\n# BEGIN opsbro\nstale key\n# END opsbro\nssh-rsa ZZZ backup\n",
    );
    write(&fresh_keys, "ssh-rsa AAA admin\n");
    write(&svc, "v1\n");
    let add_generator =
        |name: &str, body: String| write(&packs.join(format!("site/generators/{name}.yml")), &body);
    add_generator(
        "app",
        format!(
            "generator:\n  path: {}\n  template: app.conf\n  \
             validate_command: \"grep -q '^port 80$' {{{{path}}}} || {{ echo 'port must be 80' >&2; exit 1; }}\"\n  \
             command: \"echo applied\"\n",
            app.display()
        ),
    );
    for (name, path) in [("keys", &keys), ("keys2", &fresh_keys)] {
        add_generator(
            name,
            format!(
                "generator:\n  path: {}\n  template: keys\n  partial_start: '# BEGIN opsbro'\n  partial_end: '# END opsbro'\n",
                path.display()
            ),
        );
    }
    add_generator(
        "svc",
        format!(
            "generator:\n  path: {}\n  template: svc.conf\n  command: \"echo 'reload failed: bad directive' >&2; exit 3\"\n",
            svc.display()
        ),
    );
    write(
        &packs.join("site/templates/app.conf"),
        "port {{ kv('app/port') }}\n",
    );
    write(
        &packs.join("site/templates/keys"),
        "{% for n in nodes %}\nssh-ed25519 KEY-{{ n.name }}\n{% endfor %}\n",
    );
    write(&packs.join("site/templates/svc.conf"), "v2\n");
    let a = node("solo", &format!("packs_dirs: [{}]\n", packs.display()));

    // No key yet: "port " fails validation; the file is untouched.
    let g = wait_for("the validation error", DEADLINE, || {
        let g = generator(&a, "site/app");
        (g["state"] == "error").then_some(g)
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}", generator(&a, "site/app")));
    assert!(
        g["message"]
            .as_str()
            .is_some_and(|m| m.contains("validate_command refused")),
        "{g:#}"
    );
    assert_eq!(g["command_output"], "port must be 80");
    assert_eq!(read(&app), "old content\n");

    // The key arrives: re-rendered, validated, written (mode kept), applied.
    let out = a.cli(["kv", "put", "app/port", "80"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = a.cli([
        "generators",
        "wait-compliant",
        "site/app",
        "--timeout",
        "30",
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(read(&app), "port 80\n");
    assert_eq!(
        std::fs::metadata(&app).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(generator(&a, "site/app")["command_output"], "applied");
    let out = a.cli(["generators", "state", "--show-diff"]);
    assert!(stdout(&out).contains("+port 80"), "{}", stdout(&out));
    assert!(stdout(&out).contains("-old content"), "{}", stdout(&out));

    // A bad value is refused again; the good file stays.
    let out = a.cli(["kv", "put", "app/port", "8080"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the refusal of port 8080", DEADLINE, || {
        (generator(&a, "site/app")["state"] == "error").then_some(())
    })
    .expect("refused");
    assert_eq!(read(&app), "port 80\n");

    // Partial mode: the block is replaced, the lines around it kept; appended when missing.
    wait_for("the managed block", DEADLINE, || {
        (read(&keys)
            == "ssh-rsa AAA admin\n# BEGIN opsbro\nssh-ed25519 KEY-solo\n# END opsbro\nssh-rsa ZZZ backup\n")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", read(&keys)));
    assert_eq!(
        read(&fresh_keys),
        "ssh-rsa AAA admin\n# BEGIN opsbro\nssh-ed25519 KEY-solo\n# END opsbro\n"
    );

    // A failing reload puts the previous file back.
    let g = wait_for("the reload failure", DEADLINE, || {
        let g = generator(&a, "site/svc");
        (g["state"] == "error").then_some(g)
    })
    .expect("svc error");
    assert!(
        g["message"]
            .as_str()
            .is_some_and(|m| m.contains("exit 3") && m.contains("previous file is restored")),
        "{g:#}"
    );
    assert_eq!(g["command_output"], "reload failed: bad directive");
    assert_eq!(read(&svc), "v1\n");

    let out = a.cli(["generators", "history"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("site/app error → compliant"),
        "{}",
        stdout(&out)
    );
}
