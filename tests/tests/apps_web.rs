//! Issue 28 (applications, part 2): web servers, a proxy and a queue from Debian packages —
//! nginx, apache2, haproxy, rabbitmq-server — each started by its test on free loopback ports
//! with its files in a temp dir. The agent (given no groups) detects each by its running
//! process or listening port, collects from it (stub_status, server-status, the stats socket and
//! page, the management API), checks it against thresholds reached by real traffic, and turns
//! its `<app>-available` check CRITICAL with the reason once the server is stopped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use opsbro_tests::apps::{self, collector, wait_collector};
use opsbro_tests::{http, stdout, wait_for};

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// GET `path` from 127.0.0.1:`port`; the status.
fn get(port: u16, path: &str) -> u16 {
    http(at(port), "GET", path, &[], b"")
        .unwrap_or_else(|e| panic!("GET {path} on {port}: {e}"))
        .status
}

/// Connections opened to `port` and left idle (held until dropped).
fn idle_connections(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| TcpStream::connect(at(port)).expect("connect"))
        .collect()
}

/// The agent's group list holds `group` (it was given none: a detector added it).
fn assert_detected(agent: &opsbro_tests::Agent, group: &str) {
    let info = stdout(&agent.cli(["agent", "info"]));
    let groups: Vec<&str> = info
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("Groups"))
        .map(|rest| {
            rest.trim_start_matches([':', ' '])
                .split(',')
                .map(str::trim)
                .collect()
        })
        .unwrap_or_default();
    assert!(groups.contains(&group), "{groups:?} in {info}");
}

/// The collector runs now; its data when `ok`.
fn run_now(agent: &opsbro_tests::Agent, name: &str) -> Option<serde_json::Value> {
    agent.cli(["collectors", "run", name]);
    let (state, data, _) = collector(agent, name)?;
    (state == "ok").then_some(data)
}

/// A pack `app` for `packs_dirs`: these parameters, and the shipped checks of the app with
/// `interval: 1s` instead of `10s` (their expressions unchanged: the tests do not wait ten
/// seconds for each state).
fn test_pack(root: &Path, app: &str, parameters: &str) -> PathBuf {
    let packs = apps::pack_parameters(root, app, parameters).expect("pack");
    let shipped = opsbro_tests::repo_path(&format!("packs/{app}/monitoring"));
    let dir = packs.join(app).join("monitoring");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for entry in std::fs::read_dir(&shipped)
        .expect("shipped checks")
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).expect("read check");
        assert!(text.contains("interval: 10s"), "{}", entry.path().display());
        std::fs::write(
            dir.join(entry.file_name()),
            text.replace("interval: 10s", "interval: 1s"),
        )
        .expect("write check");
    }
    packs
}

/// Wait until check `<app>/<check>` is in `state` with an output holding `text`, running
/// collector `app` about every second meanwhile; the output.
fn wait_check_saying(
    agent: &opsbro_tests::Agent,
    app: &str,
    check: &str,
    state: &str,
    text: &str,
) -> String {
    let name = format!("{app}/{check}");
    let mut last = None;
    let mut last_run = Instant::now();
    wait_for(
        &format!("check {name} {state} saying {text:?}"),
        apps::SERVER_START,
        || {
            if last_run.elapsed() >= Duration::from_secs(1) {
                agent.cli(["collectors", "run", app]);
                last_run = Instant::now();
            }
            let (s, output) = apps::check(agent, &name)?;
            let done = s == state && output.contains(text);
            last = Some((s, output.clone()));
            done.then_some(output)
        },
    )
    .unwrap_or_else(|e| panic!("{e}; last: {last:?}"))
}

/// After its server stopped: collector `app` is in error with `reason`, `<app>-available`
/// CRITICAL saying it, and the agent runs on.
fn assert_stopped_is_critical(agent: &opsbro_tests::Agent, app: &str, reason: &str) {
    agent.cli(["collectors", "run", app]);
    let (state, data, message) = collector(agent, app).expect("collector");
    assert_eq!(state, "error", "{message}");
    assert_eq!(data["available"], false);
    assert!(message.contains(reason), "{message}");
    wait_check_saying(
        agent,
        app,
        &format!("{app}-available"),
        "critical",
        &format!("{app} is not available: {reason}"),
    );
    assert!(agent.cli(["agent", "info"]).status.success());
}

#[test]
fn nginx_counts_requests_and_connections_and_a_stopped_nginx_is_critical() {
    let mut server = apps::nginx().expect("nginx");
    let port = server.port();
    let tmp = tempfile::tempdir().expect("tmp");
    // Three idle clients plus the collector's own request: over the warning threshold of 3.
    let packs = test_pack(
        tmp.path(),
        "nginx",
        &format!(
            "url: http://127.0.0.1:{port}/nginx_status\nport: {port}\nconnections_warning: 3\nconnections_critical: 50\n"
        ),
    );
    let agent = apps::agent_with_packs(&packs, "nginx-host").expect("agent");
    let first = wait_collector(&agent, "nginx", "stub_status read", |d| {
        d["requests"].is_u64()
    })
    .expect("collected");
    assert_detected(&agent, "nginx");
    assert_eq!(first["available"], true);
    assert!(
        first["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{first}"
    );
    wait_check_saying(&agent, "nginx", "nginx-connections", "ok", "0 dropped");

    let n = 7;
    for _ in 0..n {
        assert_eq!(get(port, "/"), 200);
    }
    let held = idle_connections(port, 3);
    let before = first["requests"].as_u64().unwrap_or(u64::MAX);
    let data = run_now(&agent, "nginx").expect("nginx collected");
    let requests = data["requests"].as_u64().unwrap_or(0);
    assert!(requests >= before + n, "{before} then {data}");
    assert!(data["accepts"].as_u64() >= Some(n), "{data}");
    assert_eq!(data["dropped"], 0, "{data}");
    // Each run's own request is counted: the rate between two runs is never 0.
    assert!(
        data["requests/s"].as_f64().is_some_and(|r| r > 0.0),
        "{data}"
    );
    assert!(
        data["active_connections"].as_u64() >= Some(4),
        "3 held + the collector's: {data}"
    );
    let out = agent.cli([
        "evaluator",
        "eval",
        &format!("{{{{collector.nginx.requests}}}} >= {}", before + n),
    ]);
    assert_eq!(stdout(&out).trim(), "true");

    wait_check_saying(
        &agent,
        "nginx",
        "nginx-connections",
        "warning",
        "active connections (warning at 3)",
    );
    wait_check_saying(
        &agent,
        "nginx",
        "nginx-available",
        "ok",
        "active connections",
    );
    drop(held);

    server.stop().expect("stop nginx");
    assert_stopped_is_critical(
        &agent,
        "nginx",
        &format!("cannot reach nginx at http://127.0.0.1:{port}/nginx_status"),
    );
}

/// `n` requests to 127.0.0.1:`port` left half-sent (no end of headers): each holds a worker.
fn partial_requests(port: u16, n: usize) -> Vec<TcpStream> {
    let mut held = idle_connections(port, n);
    for c in &mut held {
        c.write_all(b"GET /index.html HTTP/1.1\r\nHost: x\r\n")
            .expect("send");
    }
    held
}

#[test]
fn apache_counts_accesses_and_workers_and_a_stopped_apache_is_critical() {
    let mut server = apps::apache().expect("apache2");
    let port = server.port();
    let tmp = tempfile::tempdir().expect("tmp");
    let packs = test_pack(
        tmp.path(),
        "apache",
        &format!(
            "url: http://127.0.0.1:{port}/server-status?auto\nport: {port}\nworkers_warning: 20\nworkers_critical: 90\n"
        ),
    );
    let agent = apps::agent_with_packs(&packs, "apache-host").expect("agent");
    let first = wait_collector(&agent, "apache", "server-status read", |d| {
        d["total_accesses"].is_u64()
    })
    .expect("collected");
    assert_detected(&agent, "apache");
    assert_eq!(first["server_mpm"], "event", "{first}");
    assert!(
        first["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("2.4.")),
        "{first}"
    );
    // ServerLimit 4 x ThreadsPerChild 10.
    assert_eq!(first["scoreboard"]["total"], 40, "{first}");
    wait_check_saying(&agent, "apache", "apache-workers", "ok", "slots");

    let n = 6;
    for _ in 0..n {
        assert_eq!(get(port, "/index.html"), 200);
    }
    let before = first["total_accesses"].as_u64().unwrap_or(u64::MAX);
    let data = run_now(&agent, "apache").expect("apache collected");
    let accesses = data["total_accesses"].as_u64().unwrap_or(0);
    assert!(accesses >= before + n, "{before} then {data}");
    assert!(
        data["total_accesses/s"].as_f64().is_some_and(|r| r > 0.0),
        "{data}"
    );
    assert!(
        data["scoreboard"]["sending"].as_u64() >= Some(1),
        "the status request is being sent: {data}"
    );
    assert!(data["uptime"].is_u64(), "{data}");
    wait_check_saying(&agent, "apache", "apache-available", "ok", "accesses");

    // Ten clients that never finish their request headers: ten workers reading, 11 of 40
    // slots busy with the status request (27.5% >= 20%).
    let held = partial_requests(port, 10);
    let data = wait_for("10 workers reading", opsbro_tests::DEADLINE, || {
        run_now(&agent, "apache").filter(|d| d["scoreboard"]["reading"].as_u64() >= Some(10))
    })
    .expect("reading");
    assert!(data["busy_workers"].as_u64() >= Some(11), "{data}");
    let used = data["workers_used_pct"].as_f64().unwrap_or(0.0);
    assert!((20.0..90.0).contains(&used), "{data}");
    wait_check_saying(&agent, "apache", "apache-workers", "warning", "of 40 slots");
    drop(held);

    server.stop().expect("stop apache2");
    assert_stopped_is_critical(
        &agent,
        "apache",
        &format!("cannot reach apache at http://127.0.0.1:{port}/server-status?auto"),
    );
}

/// An HTTP server in this process answering `200 ok` to every request (haproxy's live backend).
fn live_http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                // A health check connects and closes; a request gets an answer.
                if conn.read(&mut buf).is_ok_and(|n| n > 0) {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                    );
                }
            });
        }
    });
    port
}

/// Send one command to haproxy's admin socket; its answer.
fn haproxy_command(socket: &std::path::Path, command: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("admin socket");
    s.write_all(format!("{command}\n").as_bytes())
        .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    answer
}

#[test]
fn haproxy_names_down_backends_and_servers_from_its_socket_and_page() {
    let live = live_http_server();
    let dead = opsbro_tests::services::free_port().expect("port");
    let mut server = apps::haproxy(live, dead).expect("haproxy");
    let port = server.port();
    let socket = server.dir().join("admin.sock");
    let tmp = tempfile::tempdir().expect("tmp");
    let packs = test_pack(
        tmp.path(),
        "haproxy",
        &format!("socket: {}\n", socket.display()),
    );
    let agent = apps::agent_with_packs(&packs, "haproxy-host").expect("agent");

    // From the socket: be_app has one server up, one down; be_dead none up.
    let data = wait_collector(&agent, "haproxy", "checks done", |d| {
        d["servers_down"] == 2 && d["servers_up"] == 1
    })
    .expect("collected");
    assert_detected(&agent, "haproxy");
    let be_app = &data["backends"]["be_app"];
    assert_eq!(be_app["servers"]["live"]["status"], "UP", "{data}");
    assert_eq!(be_app["servers"]["live"]["check_status"], "L4OK", "{data}");
    assert_eq!(be_app["servers"]["gone"]["status"], "DOWN", "{data}");
    assert_eq!(be_app["servers"]["gone"]["check_status"], "L4CON", "{data}");
    assert_eq!(data["backends"]["be_dead"]["status"], "DOWN", "{data}");
    assert_eq!(data["backends_down_names"], "be_dead", "{data}");
    assert_eq!(data["frontends"]["fe_main"]["slim"], 10, "{data}");

    let output = wait_check_saying(
        &agent,
        "haproxy",
        "haproxy-backends",
        "critical",
        "no server up in backend be_dead",
    );
    assert!(
        output.contains("be_app/gone (L4CON") && output.contains("be_dead/dead1"),
        "{output}"
    );
    wait_check_saying(
        &agent,
        "haproxy",
        "haproxy-available",
        "ok",
        "1 of 3 servers up",
    );
    wait_check_saying(
        &agent,
        "haproxy",
        "haproxy-sessions",
        "ok",
        "busiest frontend",
    );

    // Traffic through the frontend reaches the live server.
    let n = 5;
    for _ in 0..n {
        assert_eq!(get(port, "/"), 200);
    }
    // be_dead/dead1 now points at the live server: only be_app/gone stays down.
    let answer = haproxy_command(
        &socket,
        &format!("set server be_dead/dead1 addr 127.0.0.1 port {live}"),
    );
    assert!(!answer.contains("denied"), "{answer}");
    // Eight idle clients of the frontend (maxconn 10), plus the stats request itself.
    let held = idle_connections(port, 8);

    // Now an agent reading the stats page (its socket path broken: the page is what is read).
    drop(agent);
    let tmp = tempfile::tempdir().expect("tmp");
    let packs = test_pack(
        tmp.path(),
        "haproxy",
        &format!("socket: /nonexistent/haproxy.sock\nurl: http://127.0.0.1:{port}/stats\n"),
    );
    let agent = apps::agent_with_packs(&packs, "haproxy-page-host").expect("agent");
    let data = wait_for(
        "be_dead up, 8 sessions held",
        opsbro_tests::DEADLINE,
        || {
            let d = run_now(&agent, "haproxy")?;
            (d["backends"]["be_dead"]["status"] == "UP"
                && d["frontends"]["fe_main"]["scur"].as_u64() >= Some(8))
            .then_some(d)
        },
    )
    .expect("page");
    let live_server = &data["backends"]["be_app"]["servers"]["live"];
    assert!(live_server["stot"].as_u64() >= Some(n), "{data}");
    assert!(live_server.get("stot/s").is_some(), "{data}");
    assert!(
        data["frontends"]["fe_main"]["stot"].as_u64() >= Some(n),
        "{data}"
    );
    assert_eq!(data["servers_down"], 1, "{data}");
    assert_eq!(data["sessions_max_frontend"], "fe_main", "{data}");

    wait_check_saying(
        &agent,
        "haproxy",
        "haproxy-backends",
        "warning",
        "1 servers down: be_app/gone (L4CON",
    );
    let output = wait_check_saying(
        &agent,
        "haproxy",
        "haproxy-sessions",
        "warning",
        "frontend fe_main holds",
    );
    assert!(output.contains("of its limit 10"), "{output}");
    drop(held);

    server.stop().expect("stop haproxy");
    assert_stopped_is_critical(
        &agent,
        "haproxy",
        &format!("cannot reach haproxy at http://127.0.0.1:{port}/stats;csv"),
    );
}

/// `Authorization` for guest/guest.
const GUEST: &str = "Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=";

#[test]
fn rabbitmq_reports_messages_resources_and_alarms_from_its_management_api() {
    let mut node = apps::rabbitmq().expect("rabbitmq-server");
    let api = node.node.port();
    let tmp = tempfile::tempdir().expect("tmp");
    let packs = test_pack(
        tmp.path(),
        "rabbitmq",
        &format!("url: http://127.0.0.1:{api}\nport: {api}\n"),
    );
    let agent = apps::agent_with_packs(&packs, "rabbitmq-host").expect("agent");

    // A queue with three messages, published through the management API.
    let json = "Content-Type: application/json";
    let answer = http(
        at(api),
        "PUT",
        "/api/queues/%2F/orders",
        &[GUEST, json],
        br#"{"durable":false}"#,
    )
    .expect("declare");
    assert!(answer.status < 300, "{} {}", answer.status, answer.body);
    for i in 0..3 {
        let body = format!(
            r#"{{"properties":{{}},"routing_key":"orders","payload":"order {i}","payload_encoding":"string"}}"#
        );
        let answer = http(
            at(api),
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            &[GUEST, json],
            body.as_bytes(),
        )
        .expect("publish");
        assert!(answer.body.contains("\"routed\":true"), "{}", answer.body);
    }

    // The broker updates its totals every second (collect_statistics_interval): run until
    // they show.
    let data = wait_for("3 messages ready", opsbro_tests::DEADLINE, || {
        run_now(&agent, "rabbitmq").filter(|d| d["messages_ready"] == 3)
    })
    .expect("collected");
    assert_detected(&agent, "rabbitmq");
    assert!(
        data["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{data}"
    );
    assert_eq!(data["node"], node.name.as_str(), "{data}");
    assert_eq!(data["queue"]["orders"]["messages"], 3, "{data}");
    assert_eq!(data["queues"], 1, "{data}");
    assert!(data["publish"].as_u64() >= Some(3), "{data}");
    assert!(data["fd_total"].as_u64() > Some(0), "{data}");
    assert!(
        data["fd_used_pct"].as_f64().is_some_and(|p| p > 0.0),
        "{data}"
    );
    assert!(
        data["mem_used_pct"].as_f64().is_some_and(|p| p > 0.0),
        "{data}"
    );
    assert_eq!(data["alarms_count"], 0, "{data}");
    assert_eq!(data["nodes_running"], 1, "{data}");
    wait_check_saying(
        &agent,
        "rabbitmq",
        "rabbitmq-available",
        "ok",
        "1 queues, 3 messages ready",
    );
    wait_check_saying(&agent, "rabbitmq", "rabbitmq-resources", "ok", "no alarm");

    // A disk limit above the free space raises the disk alarm (publishers are blocked).
    let out = node
        .ctl(&["set_disk_free_limit", "100000000000000000"])
        .expect("rabbitmqctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_check_saying(
        &agent,
        "rabbitmq",
        "rabbitmq-resources",
        "critical",
        &format!("1 alarms ({}: disk)", node.name),
    );
    let (_, data, _) = collector(&agent, "rabbitmq").expect("collector");
    assert_eq!(data["disk_free_alarm"], true, "{data}");

    node.node.stop().expect("stop rabbitmq");
    assert_stopped_is_critical(
        &agent,
        "rabbitmq",
        &format!("cannot reach rabbitmq at http://127.0.0.1:{api}/api/overview"),
    );
}
