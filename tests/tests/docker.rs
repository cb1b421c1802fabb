//! Issue 28, Docker: the agent on a Docker host (the `docker-host` pack's `socket` parameter
//! pointing at the daemon) detects it, collects the daemon and its containers (state, health,
//! restarts, CPU/memory/network/block IO), serves them on `/docker/...` and in
//! `opsbro docker show`, checks them (unhealthy → CRITICAL naming the container, exited with
//! an error → WARNING), and puts the daemon's events on the event bus (channel `docker`).
//!
//! Two daemons: a fake one speaking the Engine API's JSON over a unix socket (its containers
//! and events driven by the test, its crash and restart too), and a real Docker-compatible
//! one, podman's API service, running a busybox container.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};

use opsbro_tests::apps::{self, check, wait_check, wait_collector};
use opsbro_tests::docker::{FakeContainer, FakeDocker, PODMAN_IMAGE, Podman, container_event};
use opsbro_tests::{Agent, AgentOptions, DEADLINE, http, opsbro_command, stderr, stdout, wait_for};
use serde_json::Value;

/// `opsbro events watch --json --channel docker`, its frames collected as they come.
struct Watch {
    child: Child,
    frames: Arc<Mutex<Vec<Value>>>,
}

impl Watch {
    fn start(agent: &Agent) -> Watch {
        let mut child = opsbro_command()
            .arg("--api")
            .arg(agent.api.to_string())
            .args(["events", "watch", "--json", "--channel", "docker"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("opsbro events watch");
        let out = child.stdout.take().expect("stdout");
        let frames = Arc::new(Mutex::new(Vec::new()));
        let sink = frames.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                let v: Value = serde_json::from_str(&line).expect("every line is a JSON frame");
                sink.lock().expect("lock").push(v);
            }
        });
        Watch { child, frames }
    }

    fn frames(&self) -> Vec<Value> {
        self.frames.lock().expect("lock").clone()
    }

    /// Wait for a `docker` frame whose payload satisfies `pred`.
    fn wait(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, DEADLINE, || {
            self.frames()
                .into_iter()
                .find(|f| f["channel"] == "docker" && pred(&f["payload"]))
        })
        .unwrap_or_else(|e| panic!("{e}; frames so far: {:#?}", self.frames()))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent whose `docker-host` pack points at `socket`, with the event stream on.
fn docker_agent(dir: &std::path::Path, name: &str, parameters: &str) -> Agent {
    let packs = apps::pack_parameters(dir, "docker-host", parameters).expect("pack");
    Agent::start_with(
        AgentOptions::default()
            .name(name)
            .env("OPSBRO_DISABLED_PACKS", "")
            .config(&format!(
                "packs_dirs: [\"{}\"]\nwebsocket:\n  enabled: true\n  port: 0\n",
                packs.display()
            )),
    )
    .expect("agent")
}

fn get(agent: &Agent, path: &str, auth: bool) -> (u16, Value) {
    let token = agent.auth();
    let headers: Vec<&str> = if auth { vec![token.as_str()] } else { vec![] };
    let answer = http(agent.api, "GET", path, &headers, b"").expect("request");
    let body = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    (answer.status, body)
}

/// The event follower's counters (`GET /docker`, `events`).
fn follower(agent: &Agent) -> Option<Value> {
    let (status, body) = get(agent, "/docker", false);
    (status == 200).then(|| body["events"].clone())
}

#[test]
fn a_fake_docker_daemon_is_detected_listed_checked_and_followed_through_a_crash() {
    let dir = tempfile::tempdir().expect("tmp");
    let socket = dir.path().join("docker.sock");
    let web = FakeContainer::running("web", "nginx:1.25").health("healthy");
    let db = FakeContainer::running("db.primary", "postgres:16");
    let job = FakeContainer::running("nightly-job", "nginx:1.25").exited(0);
    let mut fake =
        FakeDocker::start(&socket, vec![web.clone(), db.clone(), job.clone()]).expect("fake");
    let agent = docker_agent(
        dir.path(),
        "docker-host-1",
        &format!(
            "socket: {}\nevents_per_second: 20\nignore: [ignored-one]\n",
            socket.display()
        ),
    );

    // Detected by its socket (the agent was given no groups), collected.
    let data = wait_collector(&agent, "docker", "three containers", |d| {
        d["containers"].as_object().is_some_and(|c| c.len() == 3)
    })
    .expect("collected");
    let info = stdout(&agent.cli(["agent", "info"]));
    assert!(info.contains("docker-host"), "{info}");
    assert_eq!(data["version"], "24.0.7", "{data:#}");
    assert_eq!(data["api_version"], "1.43");
    assert_eq!(data["os"], "Debian GNU/Linux 12 (bookworm)");
    assert_eq!(data["containers_running"], 2);
    assert_eq!(data["containers_stopped"], 1);
    assert_eq!(data["images"], 2);
    let w = &data["containers"]["web"];
    assert_eq!(w["image"], "nginx:1.25");
    assert_eq!(w["state"], "running");
    assert_eq!(w["health"], "healthy");
    assert_eq!(w["restart_count"], 0);
    assert_eq!(w["started_at"], "2023-11-14T22:13:20.123456789Z");
    assert_eq!(w["pids"], 3);
    // Memory as `docker stats`: usage less the inactive page cache, of the limit.
    assert_eq!(w["mem_usage"], 73_400_320 - 10_485_760);
    assert_eq!(w["mem_limit"], 1_073_741_824u64);
    assert_eq!(w["mem_pct"], 5.86);
    // A dotted name is one key (dots would split the path).
    assert_eq!(data["containers"]["db_primary"]["name"], "db.primary");
    assert_eq!(data["containers"]["nightly-job"]["state"], "exited");
    assert!(
        data["containers"]["nightly-job"].get("mem_usage").is_none(),
        "{data:#}"
    );
    // One-shot stats carry no previous sample: CPU % comes from the collector's own two runs.
    let out = agent.cli(["collectors", "run", "docker"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let data = wait_collector(&agent, "docker", "a CPU % for web", |d| {
        d["containers"]["web"]["cpu_pct"].is_number()
    })
    .expect("cpu");
    // Each stats read adds 0.5 s of container CPU per 2 s of host CPU, on 2 CPUs.
    assert_eq!(data["containers"]["web"]["cpu_pct"], 50.0, "{data:#}");
    assert!(data["containers"]["web"]["net_rx"].as_u64() > Some(0));
    assert!(data["containers"]["web"]["blk_write"].as_u64() > Some(0));
    // Expressions read them.
    let out = agent.cli([
        "evaluator",
        "eval",
        "{{collector.docker.containers.web.mem_pct}}",
    ]);
    assert_eq!(stdout(&out).trim(), "5.86", "{}", stderr(&out));

    let output = wait_check(&agent, "docker-host/docker-available", "ok").expect("available");
    assert!(output.contains("Docker 24.0.7 (API 1.43)"), "{output}");
    assert!(
        output.contains("3 containers (2 running), 2 images"),
        "{output}"
    );
    let output = wait_check(&agent, "docker-host/docker-containers", "ok").expect("containers");
    assert!(output.contains("3 containers, 2 running"), "{output}");

    // The API.
    let (status, summary) = get(&agent, "/docker", false);
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["version"], "24.0.7");
    assert_eq!(summary["running"], 2);
    assert_eq!(summary["socket"], socket.display().to_string());
    let (status, list) = get(&agent, "/docker/containers", false);
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["db.primary", "nightly-job", "web"]);
    let (status, images) = get(&agent, "/docker/images", false);
    assert_eq!(status, 200, "{images}");
    assert_eq!(images[0]["tags"][0], "nginx:1.25");
    let (status, stats) = get(&agent, "/docker/stats", false);
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["containers"]["web"]["mem_pct"], 5.86, "{stats}");
    assert!(stats["containers"].get("nightly-job").is_none(), "{stats}");
    // One container's inspect holds its environment: only with the token.
    let (status, _) = get(&agent, "/docker/containers/web", false);
    assert_eq!(status, 401);
    let (status, inspect) = get(&agent, "/docker/containers/web", true);
    assert_eq!(status, 200, "{inspect}");
    assert_eq!(inspect["Config"]["Image"], "nginx:1.25");
    let (status, missing) = get(&agent, "/docker/containers/nope", true);
    assert_eq!(status, 404, "{missing}");
    assert!(
        missing["error"]
            .as_str()
            .is_some_and(|e| e.contains("No such container: nope"))
    );
    let (status, _) = get(&agent, "/docker/images/postgres:16", true);
    assert_eq!(
        status, 404,
        "the fake has no image inspect: the daemon's 404 passes through"
    );

    // `opsbro docker show`.
    let out = agent.cli(["docker", "show"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("Docker 24.0.7 (API 1.43)"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_default();
    for part in [
        "nginx:1.25",
        "running (healthy)",
        "50.00%",
        "62.9 MB / 1.1 GB (5.9%)",
    ] {
        assert!(row.contains(part), "{part} in {row}\n{text}");
    }
    assert!(text.contains("postgres:16"), "{text}");

    // Events: the follower is connected; a line of the daemon's stream is a bus event.
    wait_for("the event follower connected", DEADLINE, || {
        (fake.streams() == 1 && follower(&agent)?["connected"] == true).then_some(())
    })
    .expect("follower");
    let watch = Watch::start(&agent);
    wait_for("the watcher subscribed", DEADLINE, || {
        let (_, info) = get(&agent, "/agent/info", false);
        (info["websocket"]["clients"] == 1).then_some(())
    })
    .expect("watcher");
    assert_eq!(
        fake.emit(&container_event(&job, "die", &[("exitCode", "3")])),
        1
    );
    let frame = watch.wait("the die event", |p| p["action"] == "die");
    assert_eq!(frame["payload"]["kind"], "container");
    assert_eq!(frame["payload"]["name"], "nightly-job");
    assert_eq!(frame["payload"]["image"], "nginx:1.25");
    assert_eq!(frame["payload"]["attributes"]["exitCode"], "3");
    assert_eq!(frame["payload"]["id"], job.id);

    // The container becomes unhealthy: the check is CRITICAL and names it (a container event
    // runs the collector again, no need to wait for its next pass).
    fake.update("web", |c| c.health = Some("unhealthy".into()));
    fake.emit(&container_event(&web, "health_status: unhealthy", &[]));
    watch.wait("the health event", |p| {
        p["action"] == "health_status: unhealthy"
    });
    let output = wait_check(&agent, "docker-host/docker-containers", "critical").expect("critical");
    assert!(output.contains("web is unhealthy"), "{output}");
    // Another one exits with an error: a WARNING, said with the CRITICAL.
    fake.update("nightly-job", |c| c.exit_code = 2);
    let out = agent.cli(["collectors", "run", "docker"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, output) = check(&agent, "docker-host/docker-containers").expect("check");
    assert!(output.contains("web is unhealthy"), "{output}");
    wait_check(&agent, "docker-host/docker-containers", "critical").expect("still critical");
    let out = agent.cli([
        "evaluator",
        "eval",
        "{{collector.docker.exited_with_error}}",
    ]);
    assert!(stdout(&out).contains("nightly-job"), "{}", stdout(&out));
    // The healthcheck passes again: only the WARNING is left.
    fake.update("web", |c| c.health = Some("healthy".into()));
    agent.cli(["collectors", "run", "docker"]);
    let output = wait_check(&agent, "docker-host/docker-containers", "warning").expect("warning");
    assert!(
        output.contains("nightly-job exited with code 2"),
        "{output}"
    );

    // A burst of events: the bus takes `events_per_second`, the rest is dropped and counted.
    let before = follower(&agent).expect("follower");
    for _ in 0..100 {
        fake.emit(&container_event(&db, "exec_die", &[]));
        fake.emit(&container_event(&db, "top", &[]));
    }
    let after = wait_for("the burst read", DEADLINE, || {
        let f = follower(&agent)?;
        (f["received"].as_u64()? >= before["received"].as_u64()? + 200).then_some(f)
    })
    .expect("burst");
    let dropped = after["dropped"].as_u64().unwrap_or(0) - before["dropped"].as_u64().unwrap_or(0);
    let published =
        after["published"].as_u64().unwrap_or(0) - before["published"].as_u64().unwrap_or(0);
    // The 100 exec_* are not events worth a bus event; of the 100 others at most 2 × 20 pass
    // (the burst may straddle two one-second windows).
    assert!(dropped >= 60, "{before} → {after}");
    assert!((20..=40).contains(&published), "{before} → {after}");
    assert!(watch.frames().iter().all(|f| {
        !f["payload"]["action"]
            .as_str()
            .unwrap_or("")
            .starts_with("exec_")
    }));

    // The daemon crashes (its socket stays, nothing answers).
    fake.crash();
    let out = agent.cli(["collectors", "run", "docker"]);
    assert!(!out.status.success());
    let (state, data, message) = apps::collector(&agent, "docker").expect("collector");
    assert_eq!(state, "error");
    assert_eq!(data["available"], false);
    assert!(
        message.contains("cannot connect to the Docker daemon at"),
        "{message}"
    );
    assert!(message.contains("docker.sock"), "{message}");
    let output = wait_check(&agent, "docker-host/docker-available", "critical").expect("critical");
    assert!(
        output.contains("Docker is not available: cannot connect"),
        "{output}"
    );
    let out = agent.cli(["docker", "show"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("no Docker daemon on this host"), "{err}");
    assert!(err.contains("docker.sock"), "{err}");
    let (status, body) = get(&agent, "/docker/containers", false);
    assert_eq!(status, 503, "{body}");
    let (status, body) = get(&agent, "/docker/stats", false);
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect")),
        "{body}"
    );
    // The agent runs on.
    assert!(agent.cli(["agent", "info"]).status.success());

    // The daemon comes back: the follower reconnects (with its backoff) and events flow again.
    let fake = FakeDocker::start(&socket, vec![web.clone(), db.clone()]).expect("fake again");
    wait_for("the follower back on the new daemon", DEADLINE, || {
        (fake.streams() == 1).then_some(())
    })
    .expect("reconnected");
    fake.emit(&container_event(&db, "restart", &[]));
    watch.wait("an event from the restarted daemon", |p| {
        p["action"] == "restart"
    });
    wait_check(&agent, "docker-host/docker-available", "ok").expect("available again");
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.starts_with("/containers/json")),
        "{:?}",
        fake.requests()
    );
}

#[test]
fn podman_containers_are_listed_measured_shown_and_followed() {
    let podman = Podman::start_with_container("web").expect(
        "podman runs a container here (apt-get install podman busybox-static; see tests/src/docker.rs)",
    );
    let agent = docker_agent(
        podman.dir.path(),
        "podman-host",
        &format!("socket: {}\n", podman.socket.display()),
    );
    let data = wait_collector(&agent, "docker", "web running", |d| {
        d["containers"]["web"]["state"] == "running"
    })
    .expect("collected");
    let web = &data["containers"]["web"];
    assert_eq!(web["image"], PODMAN_IMAGE, "{data:#}");
    assert!(web["mem_usage"].as_u64().is_some_and(|m| m > 0), "{data:#}");
    assert!(web["mem_limit"].as_u64().is_some_and(|m| m > 0), "{data:#}");
    assert_eq!(web["pids"], 1, "sleep alone: {data:#}");
    assert_eq!(data["containers_running"], 1);
    assert_eq!(data["images"], 1);
    assert!(
        data["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{data:#}"
    );
    // A second sample gives CPU %.
    agent.cli(["collectors", "run", "docker"]);
    wait_collector(&agent, "docker", "a CPU % for web", |d| {
        d["containers"]["web"]["cpu_pct"].is_number()
    })
    .expect("cpu");
    wait_check(&agent, "docker-host/docker-available", "ok").expect("available");
    wait_check(&agent, "docker-host/docker-containers", "ok").expect("containers");

    let out = agent.cli(["docker", "show"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let row = text
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_default();
    assert!(row.contains(PODMAN_IMAGE), "{text}");
    assert!(row.contains("running"), "{text}");
    assert!(row.contains('%'), "CPU and memory shown: {text}");
    assert!(text.contains("opsbro-busybox"), "{text}");

    // `podman kill`: the die event reaches the bus, the state follows, the check warns.
    wait_for("the event follower connected", DEADLINE, || {
        (follower(&agent)?["connected"] == true).then_some(())
    })
    .expect("follower");
    let watch = Watch::start(&agent);
    wait_for("the watcher subscribed", DEADLINE, || {
        let (_, info) = get(&agent, "/agent/info", false);
        (info["websocket"]["clients"] == 1).then_some(())
    })
    .expect("watcher");
    podman.run(&["kill", "web"]).expect("podman kill");
    let frame = watch.wait("web's die event", |p| {
        p["name"] == "web" && p["action"] == "die"
    });
    assert_eq!(frame["payload"]["kind"], "container");
    assert_eq!(frame["payload"]["attributes"]["exitCode"], "137");
    let data = wait_collector(&agent, "docker", "web exited", |d| {
        d["containers"]["web"]["state"] == "exited"
    })
    .expect("exited");
    assert_eq!(data["containers"]["web"]["exit_code"], 137, "{data:#}");
    let output = wait_check(&agent, "docker-host/docker-containers", "warning").expect("warning");
    assert!(output.contains("web exited with code 137"), "{output}");
    let out = agent.cli(["docker", "show"]);
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.starts_with("web ") && l.contains("exited")),
        "{text}"
    );
}
