//! Issue 20: packs written for the original opsbro run unchanged — templated groups, keyword
//! arguments, pack parameters as `$macro$`s, duplicate YAML keys, dashboards and tutorials,
//! overrides that merge with the built-in packs, objects in the local configuration — and
//! `agent start --one-shot` does one pass of it all.

use std::net::TcpListener;
use std::path::Path;

use opsbro_tests::{Agent, AgentOptions, DEADLINE, opsbro_command, stderr, stdout, wait_for};
use serde_json::Value;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// A copy of packs in the original's layout: `<global-configuration>/packs/<pack>/...`.
fn original_packs(root: &Path, port: u16) {
    let packs = root.join("packs");
    // Named like the built-in `linux` pack: it adds to it, object by object.
    write(
        &packs.join("linux/package.yml"),
        "name: linux\ntopics:\n    - system\ndescription: site additions to linux\n",
    );
    write(
        &packs.join("linux/detectors/distribution.yml"),
        "detector:\n    # the original matches case-insensitively\n    apply_if: \"grep_file('LINUX', '/etc/os-release')\"\n    add_groups:\n        - '{{collector.system.os.linux.distribution}}-{{collector.system.os.linux.major_version}}'\n        - 'ec2-region::{{collector.ec2.region}}'\n    interval: 10s\n",
    );
    write(
        &packs.join("linux/detectors/not-ec2.yml"),
        "detector:\n    apply_if: \"not hosting_driver_is_active('ec2') and gossip_count_nodes(state='alive') >= 1 and {{collector.nothing.here||0}} == 0\"\n    add_groups:\n        - on-premise\n",
    );
    write(
        &packs.join("tcpapp/package.yml"),
        "name: tcpapp\ndescription: a TCP service\n",
    );
    // The original's parser kept the last of repeated keys: so do we, with a warning.
    write(
        &packs.join("tcpapp/parameters/parameters.yml"),
        &format!("# port of the service\nport: 1\nwarning_ms: 2000\nport: {port}\n"),
    );
    write(
        &packs.join("tcpapp/monitoring/port.yml"),
        "check:\n    interval: 1s\n    script: \"$nagiosplugins$/check_tcp -H 127.0.0.1 -p $port$ -w $warning_ms$\"\n",
    );
    write(
        &packs.join("tcpapp/monitoring/port-expression.yml"),
        "check:\n    interval: 1s\n    ok_output: \"'port %s answers' % {{parameters.port}}\"\n    critical_if: \"not check_tcp('127.0.0.1', {{parameters.port}}, timeout=2)\"\n    critical_output: \"'port %s is closed' % {{parameters.port}}\"\n",
    );
    write(
        &packs.join("tcpapp/dashboards/tcpapp.yml"),
        "dashboard:\n    title:  TCP application\n    content:\n        vertical_split:\n            - text:\n                 title: Port\n                 value: \"'listening on %s' % {{parameters.port||0}}\"\n            - horizontal_split:\n                - donut:\n                     title: Memory\n                     value: \"{{collector.memory.phys_used||0}}\"\n                     unit: \"%\"\n                - horizontal_gauge:\n                     title: Nodes\n                     value: \"gossip_count_nodes(state='alive')\"\n",
    );
    write(
        &packs.join("tcpapp/tutorials/first-steps/tutorial.yml"),
        "tutorial:\n    title: First steps with the TCP application\n",
    );
    write(
        &packs.join("tcpapp/tutorials/first-steps/tutorial-data.json"),
        "{\"version\": 1, \"width\": 80, \"height\": 24, \"duration\": 1.0, \"stdout\": [[0.5, \"$ opsbro agent info\\r\\n\"]]}",
    );
    // Python collectors are not ours to run: a warning, the rest loads.
    write(
        &packs.join("tcpapp/collectors/collector_tcpapp.py"),
        "class TcpApp(Collector):\n    pass\n",
    );
}

fn json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn original_packs_load_render_their_groups_and_fill_their_macros() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tmp");
    let global = dir.path().join("global-configuration");
    original_packs(&global, port);
    let local = dir.path().join("checks.d");
    write(
        &local.join("local.yml"),
        "check:\n    interval: 1s\n    ok_output: \"'defined in the local configuration'\"\n    critical_if: \"False\"\n",
    );
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("original-packs")
            .config(&format!(
                "packs_dirs: [{}]\nobjects_dirs: [{}]\n",
                global.display(),
                local.display()
            )),
    )
    .expect("agent");
    assert!(
        agent
            .cli(["agent", "wait-initialized", "--timeout", "30"])
            .status
            .success()
    );

    // No syntax errors: only warnings (the duplicate key, the Python collector).
    let packs = json(&agent.cli(["packs", "list", "--json"]));
    let diagnostics: Vec<String> = packs["diagnostics"]
        .as_array()
        .expect("diagnostics")
        .iter()
        .map(|d| d.as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        diagnostics.iter().all(|d| d.contains("warning:")),
        "{diagnostics:#?}"
    );
    assert!(
        diagnostics.iter().any(|d| d.ends_with(
            "tcpapp/parameters/parameters.yml:4: warning: the key `port` is given more than once: the last one is used"
        )),
        "{diagnostics:#?}"
    );
    assert!(
        diagnostics
            .iter()
            .any(|d| d.contains("tcpapp/collectors") && d.contains("Python")),
        "{diagnostics:#?}"
    );

    // Templated groups are rendered; one that does not resolve is left out, and said so.
    let distro = wait_for("the templated group", DEADLINE, || {
        let state = json(&agent.cli(["detectors", "state", "--json"]));
        state
            .as_array()?
            .iter()
            .find(|d| d["name"] == "linux/distribution" && d["matched"] == true)
            .cloned()
    })
    .expect("detector ran");
    let rendered: Vec<String> = distro["rendered_groups"]
        .as_array()
        .expect("rendered")
        .iter()
        .map(|g| g.as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(rendered.len(), 1, "{distro:#}");
    assert!(
        !rendered[0].contains("{{") && rendered[0].contains('-'),
        "{rendered:?}"
    );
    assert!(
        distro["skipped_groups"]
            .to_string()
            .contains("collector.ec2.region"),
        "{distro:#}"
    );
    let info = json(&agent.cli(["agent", "info", "--json"]));
    let groups = info["groups"].to_string();
    for g in [
        "\"linux\"",
        "\"on-premise\"",
        "\"zone::internet\"",
        &format!("\"{}\"", rendered[0]),
    ] {
        assert!(groups.contains(g), "{g} missing: {groups}");
    }
    assert!(!groups.contains("{{"), "{groups}");

    // Pack parameters fill the checks' macros (the last `port` wins).
    for name in ["tcpapp/port", "tcpapp/port-expression", "local/local"] {
        wait_for(&format!("{name} to be ok"), DEADLINE, || {
            let state = json(&agent.cli(["monitoring", "state", "--json"]));
            state["checks"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == name && c["state"] == "ok")
                .cloned()
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {}",
                stdout(&agent.cli(["monitoring", "state", "--json"]))
            )
        });
    }

    // `packs show` tells where each object comes from: the built-in linux pack and the disk one.
    let linux = stdout(&agent.cli(["packs", "show", "linux"]));
    assert!(
        linux.contains("embedded") && linux.contains(&global.display().to_string()),
        "{linux}"
    );
    assert!(
        linux.contains("distribution") && linux.contains("cpu"),
        "{linux}"
    );
    let tcpapp = json(&agent.cli(["packs", "show", "tcpapp", "--json"]));
    assert_eq!(tcpapp["pack"]["parameters"]["port"], port, "{tcpapp:#}");

    // Dashboards and tutorials, in the terminal.
    let list = stdout(&agent.cli(["dashboards", "list"]));
    assert!(list.contains("TCP application"), "{list}");
    let shown = agent.cli(["dashboards", "show", "tcpapp/tcpapp"]);
    let text = stdout(&shown);
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert!(
        text.contains(&format!("listening on {port}")) && text.contains("Memory"),
        "{text}"
    );
    let tutorials = stdout(&agent.cli(["tutorials", "list"]));
    assert!(
        tutorials.contains("First steps with the TCP application"),
        "{tutorials}"
    );

    // `kv_get` reads the replicated store; a missing key gives the default.
    assert!(
        agent
            .cli(["kv", "put", "site/motd", "hello"])
            .status
            .success()
    );
    let got = stdout(&agent.cli(["evaluator", "eval", "kv_get('site/motd') + '!'"]));
    assert!(got.contains("hello!"), "{got}");
    let missing = stdout(&agent.cli(["evaluator", "eval", "kv_get('site/none', default='dflt')"]));
    assert!(missing.contains("dflt"), "{missing}");
    drop(listener);
}

#[test]
fn one_shot_collects_detects_renders_and_exits() {
    let dir = tempfile::tempdir().expect("tmp");
    let etc = dir.path().join("etc");
    let out = dir.path().join("motd");
    // The local configuration's `*.d/` folders hold objects, as in /etc/opsbro.
    write(
        &etc.join("agent.yml"),
        &format!("packs_dirs: [{}]\n", dir.path().join("site").display()),
    );
    write(
        &dir.path().join("site/motd/generators/motd.yml"),
        &format!(
            "generator:\n  path: {}\n  template: motd\n  generate_if: \"is_in_group('linux') and is_in_group('from-etc')\"\n",
            out.display()
        ),
    );
    write(
        &dir.path().join("site/motd/templates/motd"),
        "Welcome to {{ node.name }} ({{ node.groups | join(',') }})\n",
    );
    write(
        &etc.join("detectors.d/etc.yml"),
        "detector:\n  apply_if: \"True\"\n  add_groups: [from-etc]\n",
    );
    let output = opsbro_command()
        .args(["agent", "start", "--one-shot", "--config"])
        .arg(etc.join("agent.yml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--node-name", "one-shot"])
        .output()
        .expect("run");
    let text = stdout(&output);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    assert!(
        text.contains("groups: ") && text.contains("from-etc"),
        "{text}"
    );
    assert!(
        text.contains("motd/motd") && text.contains("written"),
        "{text}"
    );
    let motd = std::fs::read_to_string(&out).expect("the generator wrote its file");
    assert!(
        motd.starts_with("Welcome to one-shot (") && motd.contains("linux"),
        "{motd}"
    );
    // Nothing is left running and nothing was published.
    assert!(!dir.path().join("data/agent.runtime.json").exists());

    // A second pass with nothing to change: the file is up to date, the report says so.
    let again = opsbro_command()
        .args(["agent", "start", "--one-shot", "--json", "--config"])
        .arg(etc.join("agent.yml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--node-name", "one-shot"])
        .output()
        .expect("run");
    let report: Value = serde_json::from_slice(&again.stdout).expect("json report");
    assert_eq!(report["generators"][0]["state"], "compliant", "{report:#}");
    assert_eq!(
        report["generators"][0]["message"], "the file is up to date",
        "{report:#}"
    );
    assert_eq!(report["generators"][0]["writes"], 0, "{report:#}");
}
