//! Issue 3: the agent process, its local API and the CLI, with the real binary on real sockets.

use std::time::Duration;

use opsbro_tests::{
    Agent, AgentOptions, DEADLINE, http, opsbro_command, spawn_agent, stderr, stdout, wait_for,
};

#[test]
fn info_json_has_identity_addresses_and_subsystems_then_stop_exits_zero() {
    let mut agent = Agent::start().expect("agent starts");
    let out = agent.cli(["agent", "wait-initialized", "--timeout", "30"]);
    assert!(out.status.success(), "wait-initialized: {}", stderr(&out));

    let out = agent.cli(["agent", "info", "--json"]);
    assert!(out.status.success(), "info: {}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(info["name"], format!("node-{}", std::process::id()));
    assert_eq!(info["display_name"], info["name"]);
    assert_eq!(info["state"], "ok");
    assert_eq!(info["pid"], agent.pid);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["ports"]["api"], agent.api.port());
    assert_eq!(info["ports"]["gossip"], agent.gossip.port());
    assert_eq!(info["subsystems"]["gossip"]["state"], "ok");
    assert_eq!(info["gossip"]["members"]["alive"], 1);
    assert_eq!(info["gossip"]["encrypted"], false);
    assert_eq!(info["addresses"]["api"], agent.api.to_string());
    assert!(info["addresses"]["advertise"].is_string());
    assert!(info["uptime_secs"].is_u64());
    assert!(info["process"]["rss_bytes"].as_u64().expect("rss") > 0);
    assert!(info["process"]["cpu_percent"].is_number());
    assert_eq!(info["subsystems"]["api"]["state"], "ok");
    assert!(info["groups"].is_array());
    let uuid = std::fs::read_to_string(agent.data_dir.join("node.uuid")).expect("uuid file");
    assert_eq!(info["uuid"], uuid.trim());

    let human = agent.cli(["agent", "info"]);
    assert!(human.status.success());
    let text = stdout(&human);
    assert!(text.contains(uuid.trim()), "{text}");
    assert!(text.contains("Subsystems"), "{text}");

    let out = agent.cli(["agent", "stop"]);
    assert!(out.status.success(), "stop: {}", stderr(&out));
    let status = agent
        .wait_exit(Duration::from_secs(15))
        .expect("exits within the grace period");
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
    assert!(
        !agent.data_dir.join("agent.runtime.json").exists(),
        "runtime file removed at exit"
    );
}

#[test]
fn sigterm_and_sigint_stop_the_agent_gracefully() {
    for signal in ["TERM", "INT"] {
        let mut agent = Agent::start().expect("agent starts");
        agent.signal(signal).expect("signal");
        let status = agent.wait_exit(Duration::from_secs(15)).expect("exits");
        assert_eq!(status.code(), Some(0), "SIG{signal}; log:\n{}", agent.log());
        assert!(agent.log().contains("agent stopped"), "{}", agent.log());
    }
}

#[test]
fn second_agent_on_the_same_data_dir_fails_with_the_lock_message() {
    let first = Agent::start().expect("first agent");
    let (mut child, _tmp, _, log) =
        spawn_agent(&AgentOptions::default().data_dir(&first.data_dir)).expect("spawn second");
    let status = wait_for("the second agent to exit", DEADLINE, || {
        child.try_wait().ok().flatten()
    })
    .expect("exits");
    let text = std::fs::read_to_string(log).expect("log");
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("another opsbro agent"), "{text}");
    assert!(text.contains(&format!("(pid {})", first.pid)), "{text}");
    assert!(text.contains("already running"), "{text}");
    // The first one is unharmed.
    let out = first.cli(["agent", "state"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn uuid_survives_a_restart_and_a_kill() {
    let mut first = Agent::start().expect("first start");
    let dir_guard = first.keep_dir();
    let data_dir = first.data_dir.clone();
    let uuid_of = |agent: &Agent| -> String {
        let out = agent.cli(["agent", "info", "--json"]);
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        info["uuid"].as_str().expect("uuid").to_owned()
    };
    let uuid = uuid_of(&first);
    assert!(first.cli(["agent", "stop"]).status.success());
    first.wait_exit(Duration::from_secs(15)).expect("stopped");

    let second = Agent::start_with(AgentOptions::default().data_dir(&data_dir)).expect("restart");
    assert_eq!(uuid_of(&second), uuid);
    // kill -9 leaves no stale lock: the OS releases it with the process.
    second.signal("KILL").expect("kill -9");
    drop(second);
    let third = Agent::start_with(AgentOptions::default().data_dir(&data_dir))
        .expect("start after kill -9");
    assert_eq!(uuid_of(&third), uuid);
    drop(dir_guard);
}

#[test]
fn config_with_an_unknown_key_and_a_wrong_type_fails_naming_both_with_file_and_line() {
    let yaml = "node_name: ok-name\ncolour: blue\napi:\n  port: lots\n";
    let (mut child, tmp, _, log) =
        spawn_agent(&AgentOptions::default().config(yaml)).expect("spawn");
    let status = wait_for("the agent to refuse the config", DEADLINE, || {
        child.try_wait().ok().flatten()
    })
    .expect("exits");
    let text = std::fs::read_to_string(log).expect("log");
    assert_eq!(status.code(), Some(2), "{text}");
    let file = tmp.path().join("agent.yml").display().to_string();
    assert!(text.contains("invalid configuration (2 errors)"), "{text}");
    assert!(
        text.contains(&format!("{file}:2: key `colour`: unknown key")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{file}:4: key `api.port`")),
        "{text}"
    );
    assert!(text.contains("expected a port number"), "{text}");
    assert!(
        !tmp.path().join("data").join("agent.runtime.json").exists(),
        "the agent must not start"
    );
}

#[test]
fn bad_flag_and_env_values_are_reported_with_the_file_errors() {
    let yaml = "log_level: chatty\n";
    let (mut child, _tmp, _, log) = spawn_agent(
        &AgentOptions::default()
            .config(yaml)
            .args(["--seed", "bad host:x"])
            .env("OPSBRO_SEEDS", "also bad:0"),
    )
    .expect("spawn");
    let status = wait_for("exit", DEADLINE, || child.try_wait().ok().flatten()).expect("exits");
    let text = std::fs::read_to_string(log).expect("log");
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(text.contains("key `log_level`"), "{text}");
    assert!(text.contains("--seed"), "{text}");
}

#[test]
fn non_loopback_api_bind_without_a_token_is_refused() {
    let (mut child, tmp, _, log) =
        spawn_agent(&AgentOptions::default().args(["--api-bind", "0.0.0.0"])).expect("spawn");
    let status = wait_for("exit", DEADLINE, || child.try_wait().ok().flatten()).expect("exits");
    let text = std::fs::read_to_string(log).expect("log");
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(text.contains("key `api.bind`"), "{text}");
    assert!(text.contains("without a token"), "{text}");
    assert!(!tmp.path().join("data").join("agent.runtime.json").exists());
}

#[test]
fn with_the_api_off_loopback_every_request_must_carry_the_token() {
    let token = "t0k3n-for-tests";
    let agent = Agent::start_with(
        AgentOptions::default()
            .args(["--api-bind", "0.0.0.0"])
            .env("OPSBRO_API_TOKEN", token),
    )
    .expect("agent with token");
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], agent.api.port()));
    for path in ["/agent/state", "/agent/info", "/nope"] {
        let answer = http(api, "GET", path, &[], b"").expect("http");
        assert_eq!(answer.status, 401, "{path}: {}", answer.body);
        assert_eq!(answer.json()["status"], 401);
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    }
    let wrong = http(
        api,
        "GET",
        "/agent/state",
        &["Authorization: Bearer nope"],
        b"",
    )
    .expect("http");
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "invalid API token");
    let stop_without = http(api, "POST", "/agent/stop", &[], b"").expect("http");
    assert_eq!(
        stop_without.status, 401,
        "an unauthenticated stop must be refused"
    );

    let auth = format!("Authorization: Bearer {token}");
    let ok = http(api, "GET", "/agent/state", &[&auth], b"").expect("http");
    assert_eq!(ok.status, 200, "{}", ok.body);

    // The CLI finds the token itself when it may read the agent's token file (root here)...
    let out = opsbro_command()
        .args(["--api", &api.to_string(), "agent", "info", "--json"])
        .output()
        .expect("cli");
    assert!(out.status.success(), "{}", stderr(&out));
    // ...and a user who may not is told what to do.
    if std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
    {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(opsbro_tests::opsbro_bin())
            .args(["--api", &api.to_string(), "agent", "info"])
            .env_remove("OPSBRO_API_TOKEN")
            .output()
            .expect("cli as nobody");
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("OPSBRO_API_TOKEN") && stderr(&out).contains("api.token"),
            "{}",
            stderr(&out)
        );
    }
    let out = opsbro_command()
        .args(["--api", &api.to_string(), "agent", "info", "--json"])
        .env("OPSBRO_API_TOKEN", token)
        .output()
        .expect("cli");
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn api_errors_are_json_with_the_right_status() {
    let agent = Agent::start().expect("agent");
    // Without the token, a route that is not a public read is refused before routing.
    let anonymous = http(agent.api, "GET", "/no/such/route", &[], b"").expect("http");
    assert_eq!(anonymous.status, 401);
    let missing = http(agent.api, "GET", "/no/such/route", &[&agent.auth()], b"").expect("http");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "no such route: GET /no/such/route");
    assert_eq!(missing.header("content-type"), Some("application/json"));

    let wrong_method =
        http(agent.api, "DELETE", "/agent/info", &[&agent.auth()], b"").expect("http");
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.json()["status"], 405);

    let big = vec![b'x'; 2 * 1024 * 1024];
    let too_big = http(agent.api, "POST", "/agent/stop", &[&agent.auth()], &big);
    // The agent answers 413 before reading the body; the connection may be closed while the
    // client is still writing, which is also a refusal. It must not have stopped.
    if let Ok(answer) = too_big {
        assert_eq!(answer.status, 413, "{}", answer.body);
    }
    let state = http(agent.api, "GET", "/agent/state", &[], b"").expect("still up");
    assert_eq!(state.status, 200);
    // Still running (`Agent::start` returns before the first detector pass: it may still be
    // initializing, but never stopping).
    assert!(
        ["initializing", "ok"].contains(&state.json().as_str().unwrap_or("")),
        "{}",
        state.body
    );
}

#[test]
fn cli_without_an_agent_prints_one_line_and_exits_1() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    for args in [
        vec!["agent", "info"],
        vec!["agent", "stop"],
        vec!["agent", "state"],
    ] {
        let out = opsbro_command()
            .args(["--api", &format!("127.0.0.1:{port}")])
            .args(&args)
            .output()
            .expect("cli");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert_eq!(
            err.trim(),
            format!(
                "error: cannot reach the agent at 127.0.0.1:{port}: is `opsbro agent start` running?"
            )
        );
    }
    // wait-initialized gives up after its timeout with the same message.
    let out = opsbro_command()
        .args([
            "--api",
            &format!("127.0.0.1:{port}"),
            "agent",
            "wait-initialized",
            "--timeout",
            "0.3",
        ])
        .output()
        .expect("cli");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot reach the agent"));
}

#[test]
fn keygen_prints_a_usable_key_and_completions_are_generated() {
    let out = opsbro_command()
        .args(["agent", "keygen"])
        .output()
        .expect("keygen");
    assert!(out.status.success());
    let key = stdout(&out).trim().to_owned();
    let other = stdout(
        &opsbro_command()
            .args(["agent", "keygen"])
            .output()
            .expect("keygen"),
    );
    assert_ne!(key, other.trim(), "keys must be random");
    // The agent accepts it as encryption_key.
    let agent =
        Agent::start_with(AgentOptions::default().config(&format!("encryption_key: \"{key}\"\n")))
            .expect("agent accepts the generated key");
    drop(agent);
    for shell in ["bash", "zsh", "fish"] {
        let out = opsbro_command()
            .args(["completions", shell])
            .output()
            .expect("completions");
        assert!(out.status.success(), "{shell}");
        assert!(stdout(&out).contains("wait-initialized"), "{shell}");
    }
    let usage = opsbro_command()
        .args(["agent", "frobnicate"])
        .output()
        .expect("usage");
    assert_eq!(usage.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn zero_config_as_a_non_root_user_uses_the_xdg_data_dir() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let xdg = tmp.path().join("xdg");
    std::fs::create_dir(&xdg).expect("mkdir");
    std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let as_root = std::fs::metadata("/proc/self").expect("proc").uid() == 0;
    let mut cmd = if as_root {
        // Drop to `nobody` for real (setpriv is in util-linux, present on every Debian).
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(opsbro_tests::opsbro_bin());
        c
    } else {
        opsbro_command()
    };
    // No flags and no config file: only the ports are moved so the test cannot collide with a
    // real agent on 6768/6770.
    let mut child = cmd
        .args(["agent", "start"])
        .env_remove("OPSBRO_DATA_DIR")
        .env_remove("OPSBRO_CONFIG")
        .env("HOME", "/nonexistent")
        .env("XDG_DATA_HOME", &xdg)
        .env("OPSBRO_API_PORT", "0")
        .env("OPSBRO_PORT", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn (as root this needs `setpriv` from util-linux)");
    let data_dir = xdg.join("opsbro");
    let runtime = data_dir.join("agent.runtime.json");
    let found = wait_for(
        "the runtime file in $XDG_DATA_HOME/opsbro",
        DEADLINE,
        || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(status));
            }
            std::fs::read_to_string(&runtime).ok().map(Ok)
        },
    )
    .expect("waited");
    let text = match found {
        Ok(text) => text,
        Err(status) => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            panic!("agent exited with {status}: {err}");
        }
    };
    let rt: opsbro_api::RuntimeFile = serde_json::from_str(&text).expect("runtime json");
    assert!(data_dir.join("node.uuid").exists());
    if as_root {
        assert_eq!(
            std::fs::metadata(&data_dir).expect("meta").uid(),
            65534,
            "created by the unprivileged user"
        );
    }
    let token = std::fs::read_to_string(data_dir.join("api.token")).expect("api.token");
    let mode = std::fs::metadata(data_dir.join("api.token"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the token file is private");
    let auth = format!("Authorization: Bearer {}", token.trim());
    let answer = http(rt.api_addr, "POST", "/agent/stop", &[&auth], b"").expect("stop");
    assert_eq!(answer.status, 200);
    let status = wait_for("exit", DEADLINE, || child.try_wait().ok().flatten()).expect("exits");
    assert_eq!(status.code(), Some(0));
}
