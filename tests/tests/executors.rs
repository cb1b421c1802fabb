//! Issue 25: signed remote execution. Real agents: a four-host cluster in network namespaces
//! driven by `opsbro executors exec`, and a loopback agent attacked with frames sealed with the
//! cluster key (a member that went rogue, or someone who stole the cluster key but not an
//! operator key).

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use opsbro_tests::netns::Lan;
use opsbro_tests::{
    Agent, AgentOptions, DEADLINE, keygen, opsbro_command, stderr, stdout, wait_for,
};
use opsbro_tests::{frame, read_frame};
use serde_json::Value;

/// A new operator key: (private key file, public line).
fn operator_key(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let out = opsbro_command()
        .args(["executors", "keygen", "--comment", name, "--out"])
        .arg(&path)
        .output()
        .expect("keygen");
    assert!(out.status.success(), "{}", stderr(&out));
    (path.display().to_string(), stdout(&out).trim().to_owned())
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(out), stderr(out)))
}

/// The results of an `exec --json` answer, by node.
fn results(answer: &Value) -> std::collections::BTreeMap<String, Value> {
    answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| (r["node"].as_str().expect("node").to_owned(), r.clone()))
        .collect()
}

/// Whether a process whose command line is exactly `argv` exists (not a zombie).
fn process_running(argv: &[&str]) -> bool {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            cmdline == wanted && !stat.contains(") Z ")
        })
}

#[test]
fn a_group_runs_a_signed_command_and_every_failure_is_reported_as_what_it_is() {
    let keys = tempfile::tempdir().expect("tmp");
    let (key, public) = operator_key(keys.path(), "ops");
    let (_, other_public) = operator_key(keys.path(), "someone-else");
    let mut lan = Lan::new(4).expect("lan");
    let seeds = format!("seeds: [\"{}:6768\"]\n", lan.hosts[0].ip);
    let config = |groups: &str, public: &str| {
        format!("groups: [{groups}]\n{seeds}executor:\n  authorized_keys:\n    - {public}\n")
    };
    lan.start_agent(0, &config("ops", &public), &[])
        .expect("host0");
    for i in 1..4 {
        lan.start_agent(i, &config("web", &public), &[])
            .expect("agent");
    }
    lan.wait_all_see(&[0, 1, 2, 3], &[0, 1, 2, 3], "alive", DEADLINE)
        .expect("cluster");

    // Three results, each with its node's output and exit code; the requester is not in `web`.
    let out = lan.cli(
        0,
        &exec_web(
            &key,
            &[
                "--json",
                "--",
                "echo \"hello from $OPSBRO_NODE_NAME\"; echo warn >&2",
            ],
        ),
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let answer = json_of(&out);
    let by_node = results(&answer);
    assert_eq!(
        by_node.keys().collect::<Vec<_>>(),
        ["host1", "host2", "host3"],
        "{answer:#}"
    );
    for (node, r) in &by_node {
        assert_eq!(r["state"], "done", "{r}");
        assert_eq!(r["rc"], 0, "{r}");
        assert_eq!(r["stdout"], format!("hello from {node}\n"), "{r}");
        assert_eq!(r["stderr"], "warn\n", "{r}");
        assert!(r["started_ms"].as_u64().is_some(), "{r}");
    }
    assert_eq!(answer["summary"]["ok"], 3, "{answer:#}");
    // Each target keeps it in its history, with the requester's key id.
    let history = json_of(&lan.cli(2, &["executors", "history", "--json"]));
    let ran = history
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["role"] == "target")
        .unwrap_or_else(|| panic!("{history:#}"));
    assert_eq!(ran["state"], "done", "{ran}");
    assert_eq!(ran["rc"], 0, "{ran}");

    // The human form: one line per node with its rc, then its output; the exit code says
    // whether every node returned 0.
    let out = lan.cli(
        0,
        &exec_web(
            &key,
            &["--node", "host2", "--", "echo", "four;", "exit", "4"],
        ),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("host2  rc=4"), "{text}");
    assert!(text.contains("    four"), "{text}");
    assert!(!text.contains("host1"), "only host2: {text}");
    assert!(
        stderr(&out).contains("1 of 1 targets did not return 0"),
        "{}",
        stderr(&out)
    );

    // A command that hangs is killed at the timeout with its whole process group.
    let out = lan.cli(
        0,
        &exec_web(
            &key,
            &[
                "--timeout",
                "2",
                "--json",
                "--",
                "sleep 613 & echo begun; sleep 614",
            ],
        ),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let answer = json_of(&out);
    for r in results(&answer).values() {
        assert_eq!(r["state"], "timeout", "{r}");
        assert_eq!(r["stdout"], "begun\n", "what it printed is kept: {r}");
        assert!(
            r["error"]
                .as_str()
                .is_some_and(|e| e.contains("2 s timeout")),
            "{r}"
        );
    }
    assert_eq!(answer["summary"]["timed_out"], 3, "{answer:#}");
    wait_for("the hanging commands gone", DEADLINE, || {
        (!process_running(&["sleep", "613"]) && !process_running(&["sleep", "614"])).then_some(())
    })
    .expect("killed with their group");

    // host3 stops trusting the operator key (a reload, no restart): it refuses, and says why.
    std::fs::write(
        lan_config_path(&lan, 3),
        format!(
            "encryption_key: \"{}\"\n{}",
            lan.key,
            config("web", &other_public)
        ),
    )
    .expect("config");
    let reload = lan.cli(3, &["agent", "reload"]);
    assert!(reload.status.success(), "{}", stderr(&reload));
    assert!(
        stdout(&reload).contains("executor.authorized_keys"),
        "{}",
        stdout(&reload)
    );

    // host2 is killed while the command runs: reported unreachable, not waited on forever.
    let release = keys.path().join("release");
    let script = format!(
        "touch {dir}/started-$OPSBRO_NODE_NAME; while [ ! -e {release} ]; do sleep 0.1; done; echo released",
        dir = keys.path().display(),
        release = release.display()
    );
    let requester = lan_cli_spawn(&lan, 0, &exec_web(&key, &["--json", "--", &script]));
    wait_for("host1 and host2 started", DEADLINE, || {
        (keys.path().join("started-host1").exists() && keys.path().join("started-host2").exists())
            .then_some(())
    })
    .expect("started");
    lan.stop_agent(2);
    std::fs::write(&release, "").expect("release");
    let out = requester.wait_with_output().expect("requester");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let answer = json_of(&out);
    let by_node = results(&answer);
    assert_eq!(by_node["host1"]["state"], "done", "{answer:#}");
    assert_eq!(by_node["host1"]["stdout"], "released\n", "{answer:#}");
    assert_eq!(by_node["host2"]["state"], "unreachable", "{answer:#}");
    assert!(
        by_node["host2"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("closed before a result")),
        "{answer:#}"
    );
    assert_refused(
        &by_node["host3"],
        "is not in this node's executor.authorized_keys",
    );
    assert!(
        !keys.path().join("started-host3").exists(),
        "nothing ran on host3"
    );
    let summary = &answer["summary"];
    assert_eq!(
        (&summary["ok"], &summary["unreachable"], &summary["refused"]),
        (&Value::from(1), &Value::from(1), &Value::from(1)),
        "{answer:#}"
    );
    let state = json_of(&lan.cli(3, &["executors", "state", "--json"]));
    assert_eq!(state["refused"]["unknown_key"], 1, "{state:#}");
    let info = json_of(&lan.cli(0, &["agent", "info", "--json"]));
    assert_eq!(info["executor"]["unreachable"], 1, "{info:#}");
}

/// `executors exec web --key KEY` followed by `rest`.
fn exec_web<'a>(key: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["executors", "exec", "web", "--key", key];
    args.extend_from_slice(rest);
    args
}

/// The path of host `i`'s agent.yml (as `Lan::start_agent` writes it).
fn lan_config_path(lan: &Lan, i: usize) -> std::path::PathBuf {
    let out = lan.cli(i, &["agent", "info", "--json"]);
    let info = json_of(&out);
    Path::new(info["data_dir"].as_str().expect("data dir")).with_file_name("agent.yml")
}

/// `opsbro ARGS` on host `i`, not waited for.
fn lan_cli_spawn(lan: &Lan, i: usize, args: &[&str]) -> std::process::Child {
    std::process::Command::new("ip")
        .args(["netns", "exec", &lan.hosts[i].ns])
        .arg(opsbro_tests::opsbro_bin())
        .args(args)
        .env_remove("OPSBRO_API")
        .env_remove("OPSBRO_API_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn opsbro")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as u64
}

/// A result refused by the target for a reason containing `why`.
fn assert_refused(r: &Value, why: &str) {
    assert_eq!(r["state"], "refused", "{r}");
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains(why)),
        "`{why}` in {r}"
    );
}

/// What an attacker with the cluster key can do: seal any bytes and send them.
struct Rogue {
    ring: opsbro_transport::Keyring,
    addr: std::net::SocketAddr,
}

impl Rogue {
    /// Send a signed request; the reply lines until the result (none if the connection
    /// closed without one).
    fn send(&self, signed: &[u8]) -> Option<Value> {
        let mut plain = vec![opsbro_exec::KIND_REQUEST];
        plain.extend_from_slice(signed);
        let sealed = self
            .ring
            .seal(&opsbro_transport::system_random(), &plain, now_ms());
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.write_all(&frame(&sealed)).expect("send");
        while let Some(f) = read_frame(&mut s) {
            let reply = self.ring.open(&f, now_ms()).expect("a sealed reply");
            assert_eq!(reply[0], opsbro_exec::KIND_REPLY);
            let line: Value = serde_json::from_slice(&reply[1..]).expect("json");
            if line["type"] == "result" {
                return Some(line);
            }
            assert_eq!(line["type"], "started", "{line}");
        }
        None
    }
}

fn request(id: &str, command: &str) -> opsbro_exec::Request {
    let now = now_ms();
    opsbro_exec::Request {
        id: id.into(),
        group: "*".into(),
        node: None,
        command: command.into(),
        timeout_secs: 10,
        issued_at_ms: now,
        expires_at_ms: now + 60_000,
        requester: "rogue".into(),
    }
}

#[test]
fn only_requests_signed_by_an_authorized_key_run_once_and_every_refusal_is_counted() {
    let dir = tempfile::tempdir().expect("tmp");
    let cluster_key = keygen();
    let (key_file, public) = operator_key(dir.path(), "ops");
    let key = opsbro_exec::SigningKey::from_file(&std::fs::read_to_string(&key_file).expect("key"))
        .expect("key");
    let thief = opsbro_exec::SigningKey::generate().expect("thief");
    // No key at first: the executor is off, and says so.
    let agent = Agent::start_with(AgentOptions::default().name("target").config(&format!(
        "encryption_key: \"{cluster_key}\"\ngroups: [web]\n"
    )))
    .expect("agent");
    let rogue = Rogue {
        ring: opsbro_transport::Keyring::with_key(
            opsbro_transport::Key::from_base64(&cluster_key).expect("key"),
        ),
        addr: agent.gossip,
    };
    let marker = dir.path().join("ran");
    let append = format!("echo ran >> {}", marker.display());
    let info = json_of(&agent.cli(["agent", "info", "--json"]));
    assert_eq!(info["executor"]["enabled"], false, "{info:#}");
    let text = stdout(&agent.cli(["agent", "info"]));
    assert!(
        text.contains("disabled (no executor.authorized_keys)"),
        "{text}"
    );
    let refused = rogue
        .send(&key.sign(&request("d1", &append)))
        .expect("answer");
    assert_refused(&refused, "disabled");
    // Asked through the API without a key to sign with: a clear error, nothing sent.
    let out = agent.cli(["executors", "exec", "web", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no key to sign with"),
        "{}",
        stderr(&out)
    );

    // The operator key is authorized by a reload.
    let agent_config = std::fs::read_to_string(agent_config_file(&agent)).expect("config");
    std::fs::write(
        agent_config_file(&agent),
        format!("{agent_config}executor:\n  authorized_keys:\n    - {public}\n"),
    )
    .expect("write");
    let reload = agent.cli(["agent", "reload"]);
    assert!(reload.status.success(), "{}", stderr(&reload));
    let state = json_of(&agent.cli(["executors", "state", "--json"]));
    assert_eq!(state["enabled"], true, "{state:#}");
    assert_eq!(state["authorized_keys"][0]["comment"], "ops", "{state:#}");

    // Signed by a key this node does not know.
    let r = rogue
        .send(&thief.sign(&request("t1", &append)))
        .expect("answer");
    assert_refused(&r, "not in this node's");
    // Signed by the operator, then one byte of the command changed.
    let mut tampered = key.sign(&request("t2", &format!("{append}; echo x")));
    let last = tampered.len() - 20;
    tampered[last] ^= 0x20;
    let r = rogue.send(&tampered).expect("answer");
    assert_refused(&r, "bad signature");
    // Expired.
    let mut old = request("t3", &append);
    old.issued_at_ms -= 200_000;
    old.expires_at_ms = old.issued_at_ms + 60_000;
    let r = rogue.send(&key.sign(&old)).expect("answer");
    assert_refused(&r, "expired");
    // For another group.
    let mut db = request("t4", &append);
    db.group = "db".into();
    let r = rogue.send(&key.sign(&db)).expect("answer");
    assert_refused(&r, "not in group `db`");
    // Unsealed: the cluster transport refuses it before the executor sees it.
    let mut plain = vec![opsbro_exec::KIND_REQUEST];
    plain.extend_from_slice(&key.sign(&request("t5", &append)));
    let mut s = TcpStream::connect(agent.gossip).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(&frame(&plain)).expect("send");
    assert!(read_frame(&mut s).is_none(), "closed without an answer");

    // A valid request runs once; the same bytes again are a replay.
    let signed = key.sign(&request("v1", &append));
    let r = rogue.send(&signed).expect("answer");
    assert_eq!(r["state"], "done", "{r}");
    assert_eq!(r["rc"], 0, "{r}");
    let r = rogue.send(&signed).expect("answer");
    assert_refused(&r, "replayed");
    assert_eq!(
        std::fs::read_to_string(&marker).expect("marker"),
        "ran\n",
        "only the valid request ran, once"
    );

    let state = json_of(&agent.cli(["executors", "state", "--json"]));
    for (reason, n) in [
        ("disabled", 1),
        ("unknown_key", 1),
        ("bad_signature", 1),
        ("expired", 1),
        ("not_a_target", 1),
        ("replayed", 1),
    ] {
        assert_eq!(state["refused"][reason], n, "{reason}: {state:#}");
    }
    assert_eq!(state["ran"], 1, "{state:#}");
    let metrics =
        opsbro_tests::http(agent.api, "GET", "/metrics", &[&agent.auth()], b"").expect("metrics");
    assert!(
        metrics
            .body
            .contains("opsbro_executor_requests_refused_total{reason=\"replayed\"} 1"),
        "{}",
        metrics.body
    );
    let listener = &json_of(&agent.cli(["agent", "info", "--json"]))["gossip"]["counters"];
    assert!(
        listener["rejected_plaintext"].as_u64().unwrap_or(0) >= 1,
        "{listener:#}"
    );
}

/// The agent.yml an `Agent` was started with.
fn agent_config_file(agent: &Agent) -> std::path::PathBuf {
    agent.data_dir.with_file_name("agent.yml")
}
