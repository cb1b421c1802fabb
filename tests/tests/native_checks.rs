//! Issue 23 (part): native `tcp:` and `http:` checks against real sockets — an HTTP server this
//! test runs (200 → OK, 500 → CRITICAL, 429 → WARNING, a body without the expected text →
//! CRITICAL, too slow → CRITICAL with a timeout, a refused port → CRITICAL with the reason) and
//! a TCP port that is closed, then opened.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use opsbro_tests::{Agent, AgentOptions, DEADLINE, stderr, wait_for};
use serde_json::Value;

/// An HTTP/1.1 server on a free loopback port: `/ok` 200 "healthy", `/fail` 500, `/busy` 429,
/// `/other` 200 "something else", `/slow` answers after 5 s. Runs until the test ends.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (status, body) = match path.as_str() {
                    "/ok" => ("200 OK", "healthy"),
                    "/fail" => ("500 Internal Server Error", "broken"),
                    "/busy" => ("429 Too Many Requests", "later"),
                    "/other" => ("200 OK", "something else"),
                    "/slow" => {
                        std::thread::sleep(Duration::from_secs(5));
                        ("200 OK", "late")
                    }
                    _ => ("404 Not Found", "no"),
                };
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

fn write_check(dir: &Path, name: &str, yaml: &str) {
    let path = dir
        .join("native")
        .join("monitoring")
        .join(format!("{name}.yml"));
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, yaml).expect("write check");
}

fn check(agent: &Agent, name: &str) -> Option<Value> {
    let out = agent.cli(["monitoring", "state", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

fn wait_state(agent: &Agent, name: &str, want: &str) -> Value {
    wait_for(&format!("{name} to be {want}"), DEADLINE, || {
        check(agent, name).filter(|c| c["state"] == want)
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}\nlog:\n{}", check(agent, name), agent.log()))
}

#[test]
fn http_and_tcp_checks_judge_real_servers_and_never_hang() {
    let http = http_server();
    // A port with nothing behind it, opened later in the test; outside the ephemeral range so
    // that no socket bound to port 0 elsewhere takes it meanwhile.
    let closed = opsbro_tests::services::free_port_outside_ephemeral().expect("port");
    let packs = tempfile::tempdir().expect("tmp");
    let dir = packs.path();
    let http_check = |name: &str, extra: &str| {
        write_check(
            dir,
            name,
            &format!(
                "check:\n  interval: 1s\n  timeout: 2s\n  http: http://127.0.0.1:{http}/{name}\n{extra}"
            ),
        );
    };
    http_check(
        "ok",
        "  expect_body: healthy\n  header:\n    X-Probe: [opsbro]\n",
    );
    http_check("fail", "");
    http_check("busy", "");
    http_check("other", "  expect_body: healthy\n");
    http_check("slow", "");
    write_check(
        dir,
        "refused",
        &format!("check:\n  interval: 1s\n  timeout: 2s\n  http: http://127.0.0.1:{closed}/\n"),
    );
    write_check(
        dir,
        "port",
        &format!("check:\n  interval: 1s\n  timeout: 2s\n  tcp: 127.0.0.1:{closed}\n"),
    );
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("native")
            .config(&format!("packs_dirs: [{}]\n", dir.display())),
    )
    .expect("agent");

    let ok = wait_state(&agent, "native/ok", "ok");
    assert_eq!(ok["kind"], "http", "{ok:#}");
    assert!(
        ok["output"].as_str().unwrap_or_default().contains("200"),
        "{ok:#}"
    );
    let fail = wait_state(&agent, "native/fail", "critical");
    assert!(
        fail["output"].as_str().unwrap_or_default().contains("500"),
        "{fail:#}"
    );
    wait_state(&agent, "native/busy", "warning");
    let other = wait_state(&agent, "native/other", "critical");
    assert!(
        other["output"]
            .as_str()
            .unwrap_or_default()
            .contains("does not contain `healthy`"),
        "{other:#}"
    );
    let slow = wait_state(&agent, "native/slow", "critical");
    assert!(
        slow["output"]
            .as_str()
            .unwrap_or_default()
            .contains("no answer within"),
        "{slow:#}"
    );
    let refused = wait_state(&agent, "native/refused", "critical");
    assert!(
        refused["output"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("refused"),
        "{refused:#}"
    );
    let port = wait_state(&agent, "native/port", "critical");
    assert_eq!(port["kind"], "tcp");
    assert!(
        port["output"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot connect"),
        "{port:#}"
    );

    // The port opens: the TCP check passes.
    let listener = TcpListener::bind(("127.0.0.1", closed)).expect("open the port");
    let port = wait_state(&agent, "native/port", "ok");
    assert!(
        port["output"]
            .as_str()
            .unwrap_or_default()
            .contains("connected"),
        "{port:#}"
    );
    drop(listener);
}

#[test]
fn a_malformed_native_check_is_a_diagnostic_and_the_others_load() {
    let packs = tempfile::tempdir().expect("tmp");
    let dir = packs.path();
    write_check(dir, "bad-url", "check:\n  http: ftp://example\n");
    write_check(dir, "bad-port", "check:\n  tcp: localhost:http\n");
    write_check(
        dir,
        "both",
        "check:\n  tcp: 127.0.0.1:22\n  script: 'true'\n",
    );
    write_check(
        dir,
        "stray",
        "check:\n  tcp: 127.0.0.1:22\n  method: POST\n",
    );
    write_check(dir, "good", "check:\n  tcp: 127.0.0.1:9\n");
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("native-bad")
            .config(&format!("packs_dirs: [{}]\n", dir.display())),
    )
    .expect("agent");
    wait_for("the good check", DEADLINE, || check(&agent, "native/good")).expect("loaded");
    for bad in ["bad-url", "bad-port", "both", "stray"] {
        assert!(
            check(&agent, &format!("native/{bad}")).is_none(),
            "{bad} loaded"
        );
    }
    let out = agent.cli(["packs", "list", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &agent.log();
    for why in [
        "is not an http:// or https:// URL",
        "is not host:port",
        "a check is one of",
        "belongs to an HTTP check",
    ] {
        assert!(
            text.contains(why),
            "no diagnostic `{why}`: {}",
            stderr(&out)
        );
    }
}
