//! Issue 23: services with native health checks, with the real binary over real sockets —
//! service files in the objects dir (HTTP, TCP and TTL checks against a server and a port this
//! test controls), the catalog and its blocking reads, `opsbro services register|deregister`,
//! `opsbro monitoring ttl`, maintenance mode, and the `service` events of the stream; then
//! `dig A` / `dig SRV` across a 3-agent cluster in network namespaces answering exactly the
//! passing instances.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use opsbro_tests::netns::Lan;
use opsbro_tests::services::free_port_outside_ephemeral;
use opsbro_tests::{Agent, AgentOptions, DEADLINE, http, stderr, stdout, wait_for};
use serde_json::Value;

/// An HTTP server on a free loopback port answering every request with the status in
/// `status` (200 at first).
fn http_server() -> (u16, Arc<AtomicU16>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let status = Arc::new(AtomicU16::new(200));
    let answer = status.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let code = answer.load(Ordering::SeqCst);
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {code} Status\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
                );
            });
        }
    });
    (port, status)
}

fn write(dir: &Path, name: &str, yaml: &str) {
    std::fs::write(dir.join(name), yaml).expect("write object");
}

/// `GET path` with the agent's token.
fn get(agent: &Agent, path: &str) -> opsbro_tests::HttpAnswer {
    http(agent.api, "GET", path, &[&agent.auth()], b"").expect("http")
}

fn instances(agent: &Agent, service: &str) -> Vec<Value> {
    let a = get(agent, &format!("/catalog/service/{service}"));
    assert_eq!(a.status, 200, "{}", a.body);
    serde_json::from_str(&a.body).expect("instances")
}

fn local(agent: &Agent, service: &str) -> Option<Value> {
    let out = agent.cli(["services", "list", "--local", "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
    list.into_iter()
        .find(|s| s["name"] == service && s["active"] == true)
}

fn wait_service(agent: &Agent, service: &str, want: &str) -> Value {
    wait_for(&format!("service {service} to be {want}"), DEADLINE, || {
        instances(agent, service)
            .into_iter()
            .find(|i| i["state"] == want)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?} / {:?}\nlog:\n{}",
            instances(agent, service),
            local(agent, service),
            agent.log()
        )
    })
}

#[test]
fn services_follow_their_checks_in_the_catalog_and_maintenance_hides_them() {
    let (http_port, status) = http_server();
    let closed = free_port_outside_ephemeral().expect("port");
    let objects = tempfile::tempdir().expect("objects");
    write(
        objects.path(),
        "web.yml",
        &format!(
            "service:\n  name: web\n  port: 8080\n  tags: [primary, v2]\n  meta: {{version: '1.25'}}\n  check:\n    http: http://127.0.0.1:{http_port}/health\n    interval: 1s\n    timeout: 2s\n"
        ),
    );
    write(
        objects.path(),
        "db-port.yml",
        &format!("check:\n  tcp: 127.0.0.1:{closed}\n  interval: 1s\n  timeout: 1s\n"),
    );
    write(
        objects.path(),
        "db.yml",
        "service:\n  port: 5432\n  checks: [db-port]\n",
    );
    write(
        objects.path(),
        "worker.yml",
        "service:\n  name: worker\n  check:\n    ttl: 3s\n",
    );
    // A broken service file is a diagnostic; the others load.
    write(
        objects.path(),
        "broken.yml",
        "service:\n  name: 'bad name'\n  port: 1\n",
    );
    let agent = Agent::start_with(
        AgentOptions::default().config(&format!("objects_dirs: [{}]\n", objects.path().display())),
    )
    .expect("agent");
    let log = wait_for("the broken file to be reported", DEADLINE, || {
        let log = agent.log();
        log.contains("broken.yml").then_some(log)
    })
    .expect("diagnostic");
    assert!(log.contains("service name"), "{log}");

    // HTTP check 200 → passing, with the service's port, tags, meta and the node's address.
    let web = wait_service(&agent, "web", "passing");
    assert_eq!(web["port"], 8080);
    assert_eq!(web["tags"], serde_json::json!(["primary", "v2"]));
    assert_eq!(web["meta"]["version"], "1.25");
    assert_eq!(web["address"], "127.0.0.1");
    assert_eq!(web["passing"], true);
    let out = agent.cli(["services", "show", "web", "--passing"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("8080"), "{}", stdout(&out));

    // 500 → critical: out of `?passing` (and `services show --passing` says so, exit 2), while
    // a blocking read started before the change wakes with a larger index.
    let before = get(&agent, "/catalog/service/web");
    let index: u64 = before
        .header("x-opsbro-index")
        .expect("index header")
        .parse()
        .expect("index");
    let addr = agent.api;
    let auth = agent.auth();
    let waiter = std::thread::spawn(move || {
        http(
            addr,
            "GET",
            &format!("/catalog/service/web?index={index}&wait=60s"),
            &[&auth],
            b"",
        )
        .expect("blocking read")
    });
    std::thread::sleep(Duration::from_millis(300));
    status.store(500, Ordering::SeqCst);
    let woke = waiter.join().expect("waiter");
    let woke_index: u64 = woke
        .header("x-opsbro-index")
        .expect("index")
        .parse()
        .expect("index");
    assert!(woke_index > index, "{woke_index} > {index}");
    let woke: Vec<Value> = serde_json::from_str(&woke.body).expect("json");
    assert_eq!(woke[0]["state"], "critical", "{woke:?}");
    let passing = get(&agent, "/catalog/service/web?passing");
    assert_eq!(passing.body.trim(), "[]");
    let out = agent.cli(["services", "show", "web", "--passing"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    // Back to 200.
    status.store(200, Ordering::SeqCst);
    wait_service(&agent, "web", "passing");

    // TCP check: closed port → critical; a listener opens → passing.
    wait_service(&agent, "db", "critical");
    let _listener = TcpListener::bind(("127.0.0.1", closed)).expect("open the port");
    wait_service(&agent, "db", "passing");

    // TTL: no status yet → not passing; `pass` with a note → passing with the note as output;
    // then the TTL runs out → critical, saying so.
    assert_ne!(instances(&agent, "worker")[0]["state"], "passing");
    let out = agent.cli([
        "monitoring",
        "ttl",
        "pass",
        "worker",
        "--note",
        "queue empty",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("local/service-worker"),
        "{}",
        stdout(&out)
    );
    wait_service(&agent, "worker", "passing");
    let check = local(&agent, "worker").expect("worker");
    assert_eq!(check["checks"][0]["output"], "queue empty", "{check}");
    let expired = wait_for("the TTL to expire", DEADLINE, || {
        local(&agent, "worker").filter(|s| s["state"] == "critical")
    })
    .expect("expired");
    assert!(
        expired["checks"][0]["output"]
            .as_str()
            .is_some_and(|o| o.contains("TTL of 3s expired")),
        "{expired}"
    );
    // Only TTL checks take a status; unknown checks are named.
    let out = agent.cli(["monitoring", "ttl", "pass", "local/service-web"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a TTL check"), "{}", stderr(&out));
    let out = agent.cli(["monitoring", "ttl", "fail", "nope"]);
    assert!(
        stderr(&out).contains("no active check named `nope`"),
        "{}",
        stderr(&out)
    );

    // Service maintenance: out of the passing instances, visible with its reason.
    let out = agent.cli(["services", "maintenance", "web", "on", "--reason", "deploy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("web in maintenance", DEADLINE, || {
        instances(&agent, "web")
            .into_iter()
            .find(|i| i["maintenance"] == "deploy" && i["passing"] == false)
    })
    .expect("maintenance");
    agent.cli(["services", "maintenance", "web", "off"]);
    wait_for("web back", DEADLINE, || {
        instances(&agent, "web")
            .into_iter()
            .find(|i| i["passing"] == true)
    })
    .expect("back");
    let out = agent.cli(["services", "maintenance", "nope", "on"]);
    assert!(
        stderr(&out).contains("no service named `nope`"),
        "{}",
        stderr(&out)
    );

    // Node maintenance: every service of the node leaves the passing instances; `members`
    // shows it; it survives a restart of the agent.
    let out = agent.cli(["agent", "maintenance", "on", "--reason", "kernel upgrade"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("node maintenance in the catalog", DEADLINE, || {
        instances(&agent, "web")
            .into_iter()
            .find(|i| i["node_maintenance"] == "kernel upgrade" && i["passing"] == false)
    })
    .expect("node maintenance");
    let members = stdout(&agent.cli(["gossip", "members"]));
    assert!(members.contains("maintenance: kernel upgrade"), "{members}");
    let shown = stdout(&agent.cli(["agent", "maintenance"]));
    assert!(shown.contains("maintenance on: kernel upgrade"), "{shown}");
    agent.cli(["agent", "maintenance", "off"]);
    wait_for("node back", DEADLINE, || {
        instances(&agent, "web")
            .into_iter()
            .find(|i| i["passing"] == true && i.get("node_maintenance").is_none())
    })
    .expect("node back");
}

/// `opsbro events watch --json --channel service` against `agent`, its lines collected.
struct Watch(std::process::Child, Arc<std::sync::Mutex<Vec<Value>>>);

impl Watch {
    fn start(agent: &Agent) -> Watch {
        let mut child = opsbro_tests::opsbro_command()
            .arg("--api")
            .arg(agent.api.to_string())
            .args(["events", "watch", "--json", "--channel", "service"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("opsbro events watch");
        let out = child.stdout.take().expect("stdout");
        let frames = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = frames.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().expect("lock").push(v);
                }
            }
        });
        Watch(child, frames)
    }

    fn wait(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, DEADLINE, || {
            self.1
                .lock()
                .expect("lock")
                .iter()
                .find(|f| f["channel"] == "service" && pred(&f["payload"]))
                .cloned()
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", self.1.lock().expect("lock")))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn services_register_and_deregister_live_and_bad_files_change_nothing() {
    let agent = Agent::start_with(
        AgentOptions::default().config("websocket:\n  enabled: true\n  port: 0\n"),
    )
    .expect("agent");
    let watch = Watch::start(&agent);
    wait_for("the stream client", DEADLINE, || {
        let info: Value =
            serde_json::from_slice(&agent.cli(["agent", "info", "--json"]).stdout).ok()?;
        (info["websocket"]["clients"] == 1).then_some(())
    })
    .expect("client connected");
    let dir = tempfile::tempdir().expect("dir");
    let (http_port, _status) = http_server();
    let file = dir.path().join("api.yml");
    std::fs::write(
        &file,
        format!(
            "service:\n  name: api\n  port: 9000\n  tags: [blue]\n  check:\n    http: http://127.0.0.1:{http_port}/\n    interval: 1s\n"
        ),
    )
    .expect("write");
    let out = agent.cli(["services", "register", file.to_str().expect("path")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("service api registered"),
        "{}",
        stdout(&out)
    );
    wait_service(&agent, "api", "passing");
    // The stream told of the new instance, then of its health.
    watch.wait("api appears", |p| {
        p["service"] == "api" && p["old_state"] == "new"
    });
    watch.wait("api passes", |p| {
        p["service"] == "api" && p["state"] == "passing"
    });
    // The catalog lists it with its tags and counts.
    let list: Vec<Value> =
        serde_json::from_slice(&agent.cli(["services", "list", "--json"]).stdout).expect("list");
    let api_entry = list
        .iter()
        .find(|s| s["name"] == "api")
        .expect("api listed");
    assert_eq!(api_entry["passing"], 1);
    assert_eq!(api_entry["tags"], serde_json::json!(["blue"]));
    // Consul's JSON form registers too.
    let consul = dir.path().join("cache.json");
    std::fs::write(
        &consul,
        r#"{"Name": "cache", "Port": 11211, "Tags": ["a"]}"#,
    )
    .expect("write");
    let out = agent.cli(["services", "register", consul.to_str().expect("path")]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_service(&agent, "cache", "passing");

    // Malformed files: refused with the reason; what runs is untouched.
    for (body, why) in [
        (
            "service:\n  name: bad\n  port: 99999\n",
            "port from 1 to 65535",
        ),
        (
            "service:\n  name: bad\n  check: {http: 'ftp://x'}\n",
            "not an http",
        ),
        (
            "service:\n  name: bad\n  checks: [missing]\n",
            "does not exist",
        ),
        ("{{{", "not valid YAML"),
    ] {
        let bad = dir.path().join("bad.yml");
        std::fs::write(&bad, body).expect("write");
        let out = agent.cli(["services", "register", bad.to_str().expect("path")]);
        assert_eq!(out.status.code(), Some(2), "{body}: {}", stdout(&out));
        assert!(stderr(&out).contains(why), "{body}: {}", stderr(&out));
    }
    assert_eq!(instances(&agent, "api").len(), 1);
    assert!(instances(&agent, "bad").is_empty());

    // Deregister: gone from the catalog; a second time is a 404; pack services cannot be.
    let out = agent.cli(["services", "deregister", "api"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("api to leave the catalog", DEADLINE, || {
        instances(&agent, "api").is_empty().then_some(())
    })
    .expect("deregistered");
    watch.wait("api goes", |p| {
        p["service"] == "api" && p["state"] == "gone"
    });
    let out = agent.cli(["services", "deregister", "api"]);
    assert!(
        stderr(&out).contains("no service named api"),
        "{}",
        stderr(&out)
    );
    // Registered services come back after a restart (they are files in the data dir).
    assert!(
        agent.data_dir.join("services").join("cache.yml").is_file(),
        "kept in the data dir"
    );
}

/// `dig @127.0.0.1 -p 6766 ARGS` on host `i` (against its agent's DNS), its output.
fn dig_raw(lan: &Lan, i: usize, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &lan.hosts[i].ns])
        .args(["dig", "@127.0.0.1", "-p", "6766", "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The answers to `name`/`qtype` (`+short`), sorted.
fn dig(lan: &Lan, i: usize, name: &str, qtype: &str) -> Vec<String> {
    let mut lines: Vec<String> = dig_raw(lan, i, &[name, qtype, "+short"])
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.starts_with(';'))
        .collect();
    lines.sort();
    lines
}

/// The whole SRV answer (`dig` without `+short`), for the additional section.
fn dig_full(lan: &Lan, i: usize, name: &str) -> String {
    dig_raw(lan, i, &[name, "SRV"])
}

#[test]
fn dig_answers_exactly_the_passing_instances_across_three_agents() {
    let mut lan = Lan::new(3).expect("lan");
    // host0 and host2 pass (their check connects to their own API); host1's check is a TTL
    // nobody feeds: never passing. host2 is tagged `primary`.
    let service = |port: u16, tag: &str, check: &str| {
        format!("service:\n  name: web\n  port: {port}\n  tags: [{tag}]\n  check:\n{check}")
    };
    let passing_check = "    tcp: 127.0.0.1:6770\n    interval: 1s\n";
    let files = [
        service(8080, "backup", passing_check),
        service(8081, "backup", "    ttl: 1h\n"),
        service(8082, "primary", passing_check),
    ];
    let mut dirs = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("web.yml"), file).expect("write");
        let seeds = if i == 0 {
            String::new()
        } else {
            format!("seeds: [\"{}:6768\"]\n", lan.hosts[0].ip)
        };
        let config = format!("objects_dirs: [{dir}]\n{seeds}", dir = dir.path().display());
        lan.start_agent(i, &config, &[]).expect("agent");
        dirs.push(dir);
    }
    let (h0, h2) = (lan.hosts[0].ip.to_string(), lan.hosts[2].ip.to_string());
    let want_a = {
        let mut v = vec![h0.clone(), h2.clone()];
        v.sort();
        v
    };
    // Every agent answers the same: the two passing instances, never host1.
    for i in 0..3 {
        wait_for(
            &format!("host{i} to answer the passing instances"),
            DEADLINE,
            || (dig(&lan, i, "web.service.opsbro", "A") == want_a).then_some(()),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {:?}\n{}",
                dig(&lan, i, "web.service.opsbro", "A"),
                lan.log(i)
            )
        });
    }
    let srv = dig(&lan, 1, "_web._tcp.service.opsbro", "SRV");
    assert_eq!(
        srv,
        ["1 1 8080 host0.node.opsbro.", "1 1 8082 host2.node.opsbro."],
        "{srv:?}"
    );
    // The targets' addresses come in the additional section.
    let full = dig_full(&lan, 1, "_web._tcp.service.opsbro");
    assert!(full.contains(";; ADDITIONAL SECTION:"), "{full}");
    assert!(
        full.contains(&format!("host0.node.opsbro.\t30\tIN\tA\t{h0}")),
        "{full}"
    );
    assert!(
        full.contains(&format!("host2.node.opsbro.\t30\tIN\tA\t{h2}")),
        "{full}"
    );
    // Tags, in both forms.
    assert_eq!(
        dig(&lan, 0, "primary.web.service.opsbro", "A"),
        std::slice::from_ref(&h2)
    );
    assert_eq!(
        dig(&lan, 0, "_web._primary.service.opsbro", "SRV"),
        ["1 1 8082 host2.node.opsbro."]
    );
    // Feeding host1's TTL check brings it in.
    let out = lan.cli(1, &["monitoring", "ttl", "pass", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("host1 to join the answers", DEADLINE, || {
        (dig(&lan, 0, "_web._tcp.service.opsbro", "SRV").len() == 3).then_some(())
    })
    .expect("three instances");
    // Maintenance on host2 removes it from every agent's answers.
    let out = lan.cli(2, &["agent", "maintenance", "on", "--reason", "reboot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for i in 0..3 {
        wait_for(&format!("host{i} to drop host2"), DEADLINE, || {
            let a = dig(&lan, i, "web.service.opsbro", "A");
            (!a.is_empty() && !a.contains(&h2)).then_some(())
        })
        .expect("host2 left out");
    }
    assert!(dig(&lan, 0, "primary.web.service.opsbro", "A").is_empty());
    // Still a member, marked.
    let members = String::from_utf8_lossy(&lan.cli(0, &["gossip", "members"]).stdout).into_owned();
    assert!(members.contains("maintenance: reboot"), "{members}");
}
