//! Issue 19: the attacks of the security audit, each against real agents over real sockets
//! (loopback, and hosts in network namespaces for the LAN attacker), each test named after what
//! it prevents. The attacker speaks the wire formats with the project's own codecs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use opsbro_gossip::codec::{self, Message, PushPull};
use opsbro_gossip::{MemberState, NodeRecord};
use opsbro_tests::{
    Agent, AgentOptions, DEADLINE, frame, http, keygen, opsbro_bin, opsbro_command, read_frame,
    stderr, stdout, wait_for,
};
use opsbro_types::NodeUuid;
use serde_json::Value;

fn info(agent: &Agent) -> Value {
    let out = agent.cli(["agent", "info", "--json"]);
    assert!(out.status.success(), "agent info: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("info json")
}

fn counters(agent: &Agent) -> Value {
    info(agent)["gossip"]["counters"].clone()
}

fn member_names(agent: &Agent) -> Vec<String> {
    let out = agent.cli(["gossip", "members", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("members json");
    v.as_array()
        .expect("list")
        .iter()
        .map(|m| m["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A node record as an attacker would invent it.
fn record(name: &str, n: u32) -> NodeRecord {
    let mut uuid = [0x5A; 16];
    uuid[..4].copy_from_slice(&n.to_be_bytes());
    NodeRecord {
        uuid: NodeUuid::from_bytes(uuid),
        name: name.to_owned(),
        display_name: name.to_owned(),
        addr: SocketAddr::from(([127, 0, 0, 1], 9)),
        zone: "internet".into(),
        groups: vec!["kv".into(), "web".into()],
        is_proxy: false,
        incarnation: 1,
        state: MemberState::Alive,
        version: "0.1.0".into(),
        checks: vec![],
        services: vec![],
        maintenance: None,
    }
}

fn datagram(messages: &[Message]) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = messages.iter().map(codec::encode_message).collect();
    codec::datagram(encoded.iter().map(Vec::as_slice))
}

fn send_udp(to: SocketAddr, bytes: &[u8]) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("udp");
    s.send_to(bytes, to).expect("send");
}

/// One cluster frame: `[u32 length][bytes]`.
fn write_pack(root: &Path, pack: &str, files: &[(&str, String)]) {
    for (rel, text) in files {
        let path = root.join(pack).join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write pack file");
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `opsbro ARGS` as user `nobody` (setpriv, util-linux).
fn as_nobody(args: &[&str]) -> std::process::Output {
    assert!(
        is_root(),
        "this test drops to `nobody` and must run as root"
    );
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(opsbro_bin())
        .args(args)
        .env_remove("OPSBRO_API_TOKEN")
        .env_remove("OPSBRO_API_TOKEN_FILE")
        .output()
        .expect("run opsbro as nobody (setpriv from util-linux)")
}

// ---------------------------------------------------------------------------------------------
// 1. Template values never become shell code.

#[test]
fn shell_syntax_in_a_check_output_reaches_a_handler_command_as_text() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().display().to_string();
    let evil = format!(
        "$(touch {d}/PWNED1) \"; touch {d}/PWNED2; \" '; touch {d}/PWNED3; ' `touch {d}/PWNED4`"
    );
    std::fs::write(dir.path().join("evil.txt"), format!("{evil}\n")).expect("write");
    write_pack(
        &dir.path().join("packs"),
        "site",
        &[
            (
                "monitoring/evil.yml",
                format!(
                    "check:\n  interval: 1s\n  handlers: [cmd]\n  script: \"cat {d}/evil.txt; exit 2\"\n"
                ),
            ),
            (
                "handlers/cmd.yml",
                format!(
                    "handler:\n  type: command\n  command: |\n    echo \"check said {{{{ output }}}}\" >> {d}/out1\n    echo {{{{ output }}}} >> {d}/out2\n    echo 'single {{{{ output }}}}' >> {d}/out3\n"
                ),
            ),
        ],
    );
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("shellsafe")
            .config(&format!("packs_dirs: [{d}/packs]\n")),
    )
    .expect("agent");
    wait_for("the handler's three files", DEADLINE, || {
        ["out1", "out2", "out3"]
            .iter()
            .all(|f| std::fs::read_to_string(dir.path().join(f)).is_ok_and(|t| t.ends_with('\n')))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect("out");
    assert_eq!(read("out1"), format!("check said {evil}\n"));
    assert_eq!(read("out2"), format!("{evil}\n"));
    assert_eq!(read("out3"), format!("single {evil}\n"));
    for i in 1..=4 {
        assert!(
            !dir.path().join(format!("PWNED{i}")).exists(),
            "PWNED{i}: a value ran as shell code"
        );
    }
}

#[test]
fn a_member_named_like_a_shell_command_is_refused_where_it_enters() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().display().to_string();
    write_pack(
        &dir.path().join("packs"),
        "site",
        &[(
            "handlers/members.yml",
            format!(
                "handler:\n  type: command\n  events: [node]\n  command: 'echo \"member {{{{member.name}}}}\" >> {d}/members'\n"
            ),
        )],
    );
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("doorman")
            .config(&format!("packs_dirs: [{d}/packs]\n")),
    )
    .expect("agent");
    let before = counters(&agent)["malformed"].as_u64().unwrap_or(0);
    // One plaintext datagram, as the audit sent it, and an honest one after it.
    let evil = record(&format!("$(id>{d}/PWNED)"), 1);
    send_udp(agent.gossip, &datagram(&[Message::Alive(evil)]));
    send_udp(
        agent.gossip,
        &datagram(&[Message::Alive(record("honest-1", 2))]),
    );
    wait_for("the honest member through the handler", DEADLINE, || {
        std::fs::read_to_string(dir.path().join("members"))
            .ok()
            .filter(|t| t.contains("member honest-1"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert!(!member_names(&agent).iter().any(|n| n.contains('$')));
    assert!(!dir.path().join("PWNED").exists());
    assert_eq!(counters(&agent)["malformed"].as_u64(), Some(before + 1));
    // Group and check names and event types are held to the same rules at the API.
    let out = agent.cli(["gossip", "events", "add", "deploy;reboot"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("event type"), "{}", stderr(&out));
    let out = agent.cli(["agent", "groups", "add", "web$(id)"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------------
// 2. Secure default for the cluster port.

fn start_plain(dir: &Path, args: &[&str]) -> std::process::Child {
    opsbro_command()
        .args(["agent", "start", "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--api-port",
            "0",
            "--port",
            "0",
            "--dns-port",
            "0",
            "--node-name",
        ])
        .arg(format!("plain-{}", std::process::id()))
        .args(args)
        .stdout(std::fs::File::create(dir.join("log")).expect("log"))
        .stderr(std::fs::File::create(dir.join("err")).expect("err"))
        .spawn()
        .expect("spawn agent")
}

fn runtime(dir: &Path, child: &mut std::process::Child) -> opsbro_api::RuntimeFile {
    let path = dir.join("data").join(opsbro_api::RUNTIME_FILE_NAME);
    wait_for("the runtime file", DEADLINE, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "agent exited with {status}: {}",
                std::fs::read_to_string(dir.join("err")).unwrap_or_default()
            );
        }
        serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()
    })
    .expect("runtime")
}

#[test]
fn without_a_key_the_cluster_port_stays_on_loopback() {
    // Zero configuration: gossip on loopback, and the agent says so.
    let tmp = tempfile::tempdir().expect("tmp");
    let mut child = start_plain(tmp.path(), &[]);
    let rt = runtime(tmp.path(), &mut child);
    let gossip = rt.gossip_addr.expect("gossip address");
    assert!(gossip.ip().is_loopback(), "{gossip}");
    let out = opsbro_command()
        .args(["--api", &rt.api_addr.to_string(), "agent", "info", "--json"])
        .output()
        .expect("info");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["gossip"]["security"], "loopback-only");
    let human = stdout(
        &opsbro_command()
            .args(["--api", &rt.api_addr.to_string(), "agent", "info"])
            .output()
            .expect("info"),
    );
    assert!(human.contains("opsbro agent keygen"), "{human}");
    let _ = child.kill();
    let _ = child.wait();

    // Everywhere without a key: refused at start, saying what to do.
    let tmp = tempfile::tempdir().expect("tmp");
    let mut child = start_plain(tmp.path(), &["--bind", "0.0.0.0"]);
    let status =
        wait_for("the refusal", DEADLINE, || child.try_wait().ok().flatten()).expect("exits");
    let err = std::fs::read_to_string(tmp.path().join("err")).expect("err");
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("opsbro agent keygen") && err.contains("insecure_plaintext_gossip"),
        "{err}"
    );

    // The explicit opt-in works, and is shouted about.
    let tmp = tempfile::tempdir().expect("tmp");
    let mut child = start_plain(
        tmp.path(),
        &["--bind", "0.0.0.0", "--insecure-plaintext-gossip"],
    );
    let rt = runtime(tmp.path(), &mut child);
    let out = opsbro_command()
        .args(["--api", &rt.api_addr.to_string(), "agent", "info", "--json"])
        .output()
        .expect("info");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["gossip"]["security"], "insecure-plaintext");
    let log = std::fs::read_to_string(tmp.path().join("log")).unwrap_or_default()
        + &std::fs::read_to_string(tmp.path().join("err")).unwrap_or_default();
    assert!(log.contains("INSECURE"), "{log}");
    let _ = child.kill();
    let _ = child.wait();

    // With a key, every interface.
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(
        tmp.path().join("agent.yml"),
        format!("encryption_key: \"{}\"\n", keygen()),
    )
    .expect("config");
    let config = tmp.path().join("agent.yml").display().to_string();
    let mut child = start_plain(tmp.path(), &["--config", &config]);
    let rt = runtime(tmp.path(), &mut child);
    let out = opsbro_command()
        .args(["--api", &rt.api_addr.to_string(), "agent", "info", "--json"])
        .output()
        .expect("info");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["gossip"]["security"], "encrypted");
    assert_eq!(v["addresses"]["bind"], "0.0.0.0");
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------
// 3. Counters cannot be pushed to their limit.

#[test]
fn incarnations_far_ahead_cannot_wrap_or_hijack() {
    let agent = Agent::start_with(AgentOptions::default().name("counted")).expect("agent");
    let me: NodeUuid = info(&agent)["uuid"]
        .as_str()
        .expect("uuid")
        .parse()
        .expect("uuid");
    let incarnation = info(&agent)["gossip"]["incarnation"]
        .as_u64()
        .expect("incarnation");
    let attacker = record("attacker", 66);
    // Suspect{me, far ahead}: refused, counted; our incarnation does not move.
    send_udp(
        agent.gossip,
        &datagram(&[Message::Suspect {
            node: me,
            incarnation: opsbro_gossip::member::MAX_INCARNATION,
            from: attacker.uuid,
        }]),
    );
    wait_for("the refusal counted", DEADLINE, || {
        (counters(&agent)["incarnations_refused"].as_u64() >= Some(1)).then_some(())
    })
    .expect("counted");
    assert_eq!(
        info(&agent)["gossip"]["incarnation"].as_u64(),
        Some(incarnation)
    );
    // 2^64 - 1 is not even a valid packet.
    let malformed = counters(&agent)["malformed"].as_u64().unwrap_or(0);
    let mut raw = datagram(&[Message::Suspect {
        node: me,
        incarnation: 1,
        from: attacker.uuid,
    }]);
    // Patch the varint 1 into 2^64-1 (ten bytes): rebuild by hand.
    raw.truncate(raw.len() - 17);
    raw.extend_from_slice(&[0xff; 9]);
    raw.push(0x01);
    raw.extend_from_slice(attacker.uuid.as_bytes());
    send_udp(agent.gossip, &raw);
    wait_for("the malformed datagram counted", DEADLINE, || {
        (counters(&agent)["malformed"].as_u64() > Some(malformed)).then_some(())
    })
    .expect("malformed");
    // A member cannot be hijacked by an Alive far ahead of it.
    let honest = record("honest-2", 3);
    send_udp(agent.gossip, &datagram(&[Message::Alive(honest.clone())]));
    wait_for("the honest member", DEADLINE, || {
        member_names(&agent)
            .contains(&"honest-2".to_owned())
            .then_some(())
    })
    .expect("member");
    let hijack = NodeRecord {
        incarnation: honest.incarnation + (1 << 21),
        addr: SocketAddr::from(([127, 6, 6, 6], 6768)),
        ..honest
    };
    send_udp(agent.gossip, &datagram(&[Message::Alive(hijack)]));
    wait_for("the hijack refused", DEADLINE, || {
        (counters(&agent)["incarnations_refused"].as_u64() >= Some(2)).then_some(())
    })
    .expect("refused");
    let out = agent.cli(["gossip", "members", "--json"]);
    let members: Value = serde_json::from_slice(&out.stdout).expect("json");
    let h = members
        .as_array()
        .expect("list")
        .iter()
        .find(|m| m["name"] == "honest-2")
        .expect("honest-2");
    assert_eq!(h["addr"], "127.0.0.1:9", "{h}");
}

#[test]
fn a_version_far_ahead_cannot_pin_a_kv_key() {
    let agent = Agent::start_with(AgentOptions::default().name("pinned")).expect("agent");
    assert!(agent.cli(["kv", "put", "pin/k", "before"]).status.success());
    // A raw Replicate with modify_index 2^64-1 on the cluster port (plaintext: no key here).
    let entry = opsbro_kv::Entry {
        value: b"pinned".to_vec(),
        index: u64::MAX,
        create_index: 1,
        deleted: false,
        expires_ms: 0,
    };
    let req = opsbro_kv::wire::encode_request(
        7,
        &opsbro_kv::wire::Request::Replicate {
            entries: vec![("pin/k".into(), entry)],
        },
    );
    let mut s = TcpStream::connect(agent.gossip).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&frame(&req)).expect("send");
    let _ = read_frame(&mut s);
    // Later writes take effect and are read back; the forged version was refused and counted.
    assert!(agent.cli(["kv", "put", "pin/k", "after"]).status.success());
    let got = agent.cli(["kv", "get", "pin/k", "--raw"]);
    assert_eq!(stdout(&got), "after");
    assert!(info(&agent)["kv"]["rejected"].as_u64() >= Some(1));
    // A TTL that overflows is a 400, never a write that vanishes.
    let answer = http(
        agent.api,
        "PUT",
        "/kv/ttl/k?ttl=213503982334d",
        &[&agent.auth()],
        b"v",
    )
    .expect("http");
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("365d"), "{}", answer.body);
    let missing = http(agent.api, "GET", "/kv/ttl/k", &[&agent.auth()], b"").expect("http");
    assert_eq!(missing.status, 404);
}

/// Two agents `<prefix>-a` and `<prefix>-b` with `config`, joined, both with a KV ring of two.
fn ring_of_two(prefix: &str, config: &str) -> (Agent, Agent) {
    let start = |n: &str| {
        Agent::start_with(
            AgentOptions::default()
                .name(&format!("{prefix}-{n}"))
                .config(config),
        )
        .expect("agent")
    };
    let (a, b) = (start("a"), start("b"));
    assert!(
        a.cli(["gossip", "join", &b.gossip.to_string()])
            .status
            .success()
    );
    wait_for("a ring of two", DEADLINE, || {
        (info(&a)["kv"]["ring_nodes"] == 2 && info(&b)["kv"]["ring_nodes"] == 2).then_some(())
    })
    .expect("ring");
    (a, b)
}

#[test]
fn a_write_is_acknowledged_only_once_every_owner_has_it_as_newest() {
    // Two owners per key. One of them holds a version stamped 30 s ahead (a node whose clock
    // runs fast, or a member with the key): a write through the coordinator must end up above
    // it on every owner before it is acknowledged, and read back.
    let (a, b) = ring_of_two("ahead", "kv:\n  replication_factor: 2\n  write_acks: all\n");
    let loc = http(a.api, "GET", "/kv/ahead/k?locate", &[&a.auth()], b"").expect("locate");
    let owners: Value = serde_json::from_str(&loc.body).expect("json");
    let first = owners["owners"][0]["name"]
        .as_str()
        .expect("owner")
        .to_owned();
    let (coordinator, replica) = if first == "ahead-a" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as u64;
    let ahead = (now + 30_000) << 16;
    let req = opsbro_kv::wire::encode_request(
        3,
        &opsbro_kv::wire::Request::Replicate {
            entries: vec![(
                "ahead/k".into(),
                opsbro_kv::Entry {
                    value: b"from the future".to_vec(),
                    index: ahead,
                    create_index: ahead,
                    deleted: false,
                    expires_ms: 0,
                },
            )],
        },
    );
    let mut s = TcpStream::connect(replica.gossip).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&frame(&req)).expect("send");
    read_frame(&mut s).expect("stored");
    let answer = http(
        coordinator.api,
        "PUT",
        "/kv/ahead/k",
        &[&coordinator.auth()],
        b"now",
    )
    .expect("put");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let written = answer.json();
    assert!(
        written["modify_index"].as_u64() > Some(ahead),
        "{written}: acknowledged below the version an owner holds"
    );
    for agent in [&a, &b] {
        assert_eq!(stdout(&agent.cli(["kv", "get", "ahead/k", "--raw"])), "now");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Bounded state under floods.

#[test]
fn a_flood_of_invented_members_stays_bounded() {
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("flooded")
            .config("gossip:\n  max_members: 300\n  max_new_members_per_peer: 100\n"),
    )
    .expect("agent");
    // 5 push-pulls of 20,000 invented members each (the audit's flood), in bounded parts.
    for round in 0..5u32 {
        let members: Vec<NodeRecord> = (0..20_000)
            .map(|i| record(&format!("fake-{round}-{i}"), round * 100_000 + i + 1000))
            .collect();
        let parts = PushPull {
            join: true,
            members,
            events: vec![],
        }
        .split(1024 * 1024);
        let mut s = TcpStream::connect(agent.gossip).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let n = parts.len();
        for (i, p) in parts.iter().enumerate() {
            let mut plain = vec![1u8, u8::from(i + 1 < n)];
            plain.extend_from_slice(&codec::encode_push_pull(p));
            s.write_all(&frame(&plain)).expect("send part");
        }
        // The answer comes in parts too, each under the frame limit.
        loop {
            let f = read_frame(&mut s).expect("answer part");
            assert!(f.len() <= 4 * 1024 * 1024);
            assert_eq!(f[0], 1);
            if f[1] == 0 {
                break;
            }
        }
    }
    let v = info(&agent);
    let known: u64 = v["gossip"]["members"]
        .as_object()
        .expect("members")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert!(known <= 301, "{known} members known");
    assert!(
        v["gossip"]["counters"]["members_refused"].as_u64() >= Some(99_000),
        "{}",
        v["gossip"]["counters"]
    );
    let rss = v["process"]["rss_bytes"].as_u64().unwrap_or(0);
    assert!(rss < 200 * 1024 * 1024, "RSS {rss}");
}

#[test]
fn an_incomplete_kv_list_is_an_error_not_a_short_answer() {
    let (a, b) = ring_of_two("list", "kv:\n  replication_factor: 1\n");
    for i in 0..40 {
        let out = a.cli(["kv", "put", &format!("list/k{i:02}"), "v"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // Some keys live on b only (one copy): with b frozen while a still counts it as an owner,
    // a list cannot be complete. (Under load a busy b may be suspected before the freeze and
    // leave a's ring for a moment: then try again once it is back.)
    let mut answer = None;
    for _ in 0..5 {
        wait_for("b in a's ring, holding keys", DEADLINE, || {
            (info(&a)["kv"]["ring_nodes"] == 2
                && info(&b)["kv"]["local_entries"].as_u64() >= Some(1))
            .then_some(())
        })
        .expect("ring of two");
        b.signal("STOP").expect("freeze b");
        let got = http(a.api, "GET", "/kv/?prefix=list/", &[&a.auth()], b"").expect("http");
        b.signal("CONT").expect("thaw b");
        if got.status == 503 {
            answer = Some(got);
            break;
        }
    }
    let answer = answer.expect("a 503 while b was frozen");
    assert!(answer.body.contains("incomplete list"), "{}", answer.body);
    let out = a.cli(["kv", "list", "list/"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 40);
}

// ---------------------------------------------------------------------------------------------
// 5. Connection limits before authentication.

/// Whether the agent closes the connection (before the read timeout set on it).
fn closed_by_peer(s: &TcpStream) -> bool {
    let mut s = s;
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_and_slow_connections_cannot_starve_the_agent() {
    let agent =
        Agent::start_with(AgentOptions::default().name("starved").config(
            "graphite:\n  enabled: true\n  port: 0\nwebsocket:\n  enabled: true\n  port: 0\n",
        ))
        .expect("agent");
    // 600 slow-header connections to the API: the ones over the cap are closed at once, the
    // others when their headers do not arrive in time.
    let mut slow: Vec<TcpStream> = (0..600)
        .filter_map(|_| TcpStream::connect(agent.api).ok())
        .collect();
    for s in &mut slow {
        let _ = s.write_all(b"GET /agent/info HTTP/1.1\r\nHo");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
    }
    // Meanwhile the other listeners answer.
    let dns = agent.dns.expect("dns");
    let dig = std::process::Command::new("dig")
        .args(["-p", &dns.port().to_string(), "@127.0.0.1", "+short"])
        .arg("starved.name.opsbro")
        .output()
        .expect("dig (bind9-dnsutils)");
    assert!(stdout(&dig).contains("127.0.0.1"), "{}", stdout(&dig));
    let started = Instant::now();
    let closed = slow.iter().filter(|s| closed_by_peer(s)).count();
    assert_eq!(closed, 600, "every slow connection is closed by the agent");
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(slow);
    let ok = http(agent.api, "GET", "/agent/state", &[], b"").expect("api back");
    assert_eq!(ok.status, 200);
    assert!(
        wait_for("the refusals counted", DEADLINE, || {
            let m = http(agent.api, "GET", "/metrics", &[], b"").ok()?;
            m.body
                .lines()
                .find(|l| l.starts_with("opsbro_http_connections_refused_total{listener=\"api\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .filter(|n| *n >= 80)
        })
        .is_ok()
    );

    // DNS over TCP: a cap and an idle timeout.
    let mut idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(dns).ok())
        .collect();
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
    }
    assert_eq!(idle.iter().filter(|s| closed_by_peer(s)).count(), 200);
    drop(idle);
    assert!(info(&agent)["dns"]["tcp_refused"].as_u64() >= Some(60));

    // graphite: 256 idle connections do not lock a real client out.
    let graphite = agent.graphite.expect("graphite");
    let idle: Vec<TcpStream> = (0..256)
        .filter_map(|_| TcpStream::connect(graphite).ok())
        .collect();
    let mut client = TcpStream::connect(graphite).expect("client");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    client
        .write_all(format!("security.graphite.ok 42 {now}\n").as_bytes())
        .expect("line");
    drop(client);
    wait_for("the line stored", DEADLINE, || {
        let out = agent.cli(["metrics", "show", "security.graphite.ok", "--json"]);
        stdout(&out).contains("42").then_some(())
    })
    .expect("stored");
    drop(idle);
    assert!(info(&agent)["metrics"]["graphite_evicted"].as_u64() >= Some(1));

    // The websocket stream takes no big message from a client.
    let ws = agent.websocket.expect("websocket");
    let mut s = TcpStream::connect(ws).expect("ws");
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("upgrade");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut head = [0u8; 1024];
    let n = s.read(&mut head).expect("101");
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"));
    // A masked binary frame announcing 64 MiB, then its first bytes.
    let mut f = vec![0x82, 0xFF];
    f.extend_from_slice(&(64u64 << 20).to_be_bytes());
    f.extend_from_slice(&[1, 2, 3, 4]);
    f.extend_from_slice(&[0u8; 4096]);
    let _ = s.write_all(&f);
    let started = Instant::now();
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => assert!(started.elapsed() < Duration::from_secs(10), "still open"),
        }
    }
    assert_eq!(
        http(agent.api, "GET", "/agent/state", &[], b"")
            .expect("alive")
            .status,
        200
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Replay.

#[test]
fn a_captured_packet_replayed_later_is_refused_and_counted() {
    let key = keygen();
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("replayed")
            .config(&format!("encryption_key: \"{key}\"\n")),
    )
    .expect("agent");
    let ring =
        opsbro_transport::Keyring::with_key(opsbro_transport::Key::from_base64(&key).expect("key"));
    let rng = opsbro_transport::system_random();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_millis() as u64
    };
    let me: NodeUuid = info(&agent)["uuid"]
        .as_str()
        .expect("uuid")
        .parse()
        .expect("uuid");
    let write_to = |to: NodeUuid| {
        opsbro_kv::wire::encode_request(
            1,
            &opsbro_kv::wire::Request::Write {
                to,
                key: "replay/k".into(),
                op: opsbro_kv::wire::WriteOp::Put {
                    value: b"old".to_vec(),
                    cas: None,
                    ttl_ms: 0,
                },
                deadline_ms: 0,
            },
        )
    };
    // A sealed KV write captured on its way to another node, replayed to this one: refused.
    let mut s = TcpStream::connect(agent.gossip).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&frame(&ring.seal(
        &rng,
        &write_to(record("other", 5).uuid),
        now(),
    )))
    .expect("send");
    let answer = ring
        .open(&read_frame(&mut s).expect("answer"), now())
        .expect("open");
    assert!(
        matches!(
            opsbro_kv::wire::decode(&answer),
            Ok(opsbro_kv::wire::Frame::Response(
                _,
                opsbro_kv::wire::Response::Refused { code: 421, .. }
            ))
        ),
        "{:?}",
        opsbro_kv::wire::decode(&answer)
    );
    drop(s);
    // A sealed KV write of an old value, as a member sent it (and an attacker captured it).
    let captured = frame(&ring.seal(&rng, &write_to(me), now()));
    let mut s = TcpStream::connect(agent.gossip).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&captured).expect("send");
    read_frame(&mut s).expect("written");
    drop(s);
    // A newer acknowledged write...
    assert!(
        agent
            .cli(["kv", "put", "replay/k", "newer"])
            .status
            .success()
    );
    // ...is not undone by the replay three seconds later.
    std::thread::sleep(Duration::from_secs(3));
    let mut s = TcpStream::connect(agent.gossip).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&captured).expect("replay");
    assert!(read_frame(&mut s).is_none(), "a replay gets no answer");
    assert_eq!(
        stdout(&agent.cli(["kv", "get", "replay/k", "--raw"])),
        "newer"
    );
    // Replayed datagrams are refused and counted too.
    let ping = datagram(&[Message::Ping {
        seq: 9,
        target: record("x", 1).uuid,
        from: record("y", 2).uuid,
    }]);
    let sealed = ring.seal(&rng, &ping, now());
    send_udp(agent.gossip, &sealed);
    send_udp(agent.gossip, &sealed);
    wait_for("two replays counted", DEADLINE, || {
        (counters(&agent)["rejected_replayed"].as_u64() >= Some(2)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", counters(&agent)));
    // An old packet (sent before the window) is stale.
    send_udp(agent.gossip, &ring.seal(&rng, &ping, now() - 120_000));
    wait_for("a stale packet counted", DEADLINE, || {
        (counters(&agent)["rejected_stale"].as_u64() >= Some(1)).then_some(())
    })
    .expect("stale");
}

// ---------------------------------------------------------------------------------------------
// 7. The local API is not a privilege escalator.

#[test]
fn a_local_user_gets_read_only_routes_and_no_file_through_the_evaluator() {
    let key = keygen();
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("escalator")
            .config(&format!("encryption_key: \"{key}\"\n")),
    )
    .expect("agent");
    let api = agent.api.to_string();
    let keyring = agent.data_dir.join("keyring.json");
    assert!(keyring.exists());
    for expr in [
        format!("parse_json_file('{}')", keyring.display()),
        "grep_file('root', '/etc/shadow')".to_owned(),
    ] {
        let out = as_nobody(&["--api", &api, "evaluator", "eval", &expr]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(!stdout(&out).contains(&key), "the key leaked");
        assert!(stderr(&out).contains("API token"), "{}", stderr(&out));
    }
    let out = as_nobody(&["--api", &api, "agent", "stop"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = as_nobody(&["--api", &api, "kv", "get", "anything"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Reads stay open to local users.
    let out = as_nobody(&["--api", &api, "gossip", "members"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("escalator"));
    // Root (who can read the token file) does everything without flags.
    let out = agent.cli(["evaluator", "eval", "1 + 1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "2");
}

#[test]
fn a_web_page_cannot_stop_the_agent_nor_read_it_by_dns_rebinding() {
    let agent = Agent::start_with(AgentOptions::default().name("browsed")).expect("agent");
    let auth = agent.auth();
    // A form post from a page elsewhere (text/plain: no preflight), even with the token.
    let csrf = http(
        agent.api,
        "POST",
        "/agent/stop",
        &[
            "Content-Type: text/plain",
            "Origin: http://evil.example",
            &auth,
        ],
        b"x",
    )
    .expect("http");
    assert_eq!(csrf.status, 403, "{}", csrf.body);
    // DNS rebinding: the page's own name now resolves to 127.0.0.1.
    let mut s = TcpStream::connect(agent.api).expect("connect");
    s.write_all(
        format!(
            "GET /agent/info HTTP/1.1\r\nHost: evil.example:{}\r\nConnection: close\r\n\r\n",
            agent.api.port()
        )
        .as_bytes(),
    )
    .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // Still running.
    let state = http(agent.api, "GET", "/agent/state", &[], b"").expect("state");
    assert_eq!(state.status, 200);
    // Same-origin requests (the agent's own pages) are fine.
    let same = http(
        agent.api,
        "GET",
        "/agent/info",
        &[&format!("Origin: http://{}", agent.api)],
        b"",
    )
    .expect("http");
    assert_eq!(same.status, 200, "{}", same.body);
}

#[test]
fn a_process_squatting_the_api_port_never_gets_the_token() {
    let agent = Agent::start_with(AgentOptions::default().name("squatted")).expect("agent");
    let token_file = agent.data_dir.join("api.token");
    // `nobody` takes a port and answers like an agent: 401, and "my token is in <root's file>".
    let tmp = tempfile::tempdir().expect("tmp");
    let log = tmp.path().join("requests.log");
    std::fs::write(&log, "").expect("log");
    std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .expect("chmod");
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let port = opsbro_tests::services::free_port().expect("port");
    let script = format!(
        r#"
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        with open({log:?}, "a") as f:
            f.write(self.command + " " + self.path + " " + str(self.headers.get("Authorization")) + "\n")
        if self.path == "/agent/auth":
            body = json.dumps({{"token_file": {tf:?}, "anonymous_reads": True}}).encode()
            self.send_response(200)
        else:
            body = b'{{"error": "this route needs the API token", "status": 401}}'
            self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_PUT = do_POST = answer
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
"#,
        log = log.display().to_string(),
        tf = token_file.display().to_string(),
    );
    let mut squatter = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            // Debian's interpreter: a python3 under /root (pyenv) is out of reach of `nobody`.
            "/usr/bin/python3",
            "-c",
        ])
        .arg(&script)
        .spawn()
        .expect("python3 as nobody");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for("the squatter", DEADLINE, || {
        TcpStream::connect(addr).ok().map(|_| ())
    })
    .expect("listening");
    // Root's CLI talks to the squatter: it must refuse to hand over root's token.
    let out = opsbro_command()
        .args(["--api", &addr.to_string(), "kv", "get", "x"])
        .output()
        .expect("cli");
    let _ = squatter.kill();
    let _ = squatter.wait();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not sending it the token"),
        "{}",
        stderr(&out)
    );
    let seen = std::fs::read_to_string(&log).expect("log");
    assert!(seen.contains("GET /agent/auth"), "{seen}");
    assert!(
        !seen.contains(&agent.token()),
        "the token reached the squatter: {seen}"
    );
    assert!(seen.lines().all(|l| l.ends_with(" None")), "{seen}");
}

// ---------------------------------------------------------------------------------------------
// 8. Amplification, and the LAN attacker (network namespaces).

/// Send `bytes` from host `from`'s namespace to `to`, and return the sizes of the datagrams
/// that come back within a second.
fn probe_from(
    lan: &opsbro_tests::netns::Lan,
    from: usize,
    to: SocketAddr,
    bytes: &[u8],
) -> Vec<usize> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(1.0)\n\
         s.sendto(bytes.fromhex('{hex}'),('{}',{}))\nsizes=[]\n\
         try:\n    while True:\n        sizes.append(len(s.recv(65536)))\nexcept OSError:\n    pass\n\
         print(' '.join(map(str,sizes)))\n",
        to.ip(),
        to.port()
    );
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lan.hosts[from].ns,
            "python3",
            "-c",
            &script,
        ])
        .output()
        .expect("python3 in the namespace");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[test]
fn a_lan_attacker_gets_no_amplified_answer_and_cannot_join_a_keyed_cluster() {
    let mut lan = opsbro_tests::netns::Lan::new(2).expect("lan");
    let target = SocketAddr::from((lan.hosts[0].ip, 6768));
    // An agent opened on purpose (no key): a bare detect-ping gets nothing back, a padded one
    // an answer no larger than itself.
    lan.start_agent(0, "", &["--insecure-plaintext-gossip"])
        .expect("agent 0");
    let bare = datagram(&[Message::DetectPing {
        id: 1,
        from: record("attacker", 99).uuid,
        zone: "internet".into(), // zones: the asker's zone (wire version 5)
        padding: 0,
    }]);
    assert!(bare.len() <= 32);
    assert_eq!(probe_from(&lan, 1, target, &bare), Vec::<usize>::new());
    let padded = datagram(&[Message::DetectPing {
        id: 2,
        from: record("attacker", 99).uuid,
        zone: "internet".into(), // zones: the asker's zone (wire version 5)
        padding: codec::DETECT_PING_SIZE - 40,
    }]);
    let answers = probe_from(&lan, 1, target, &padded);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(answers[0] <= padded.len(), "{answers:?} > {}", padded.len());
    lan.stop_agent(0);

    // A keyed agent: plaintext from the LAN is refused and counted, nothing is answered, and
    // an invented member claiming the `kv` group never gets in.
    lan.start_agent(0, "", &[]).expect("keyed agent 0");
    assert_eq!(probe_from(&lan, 1, target, &padded), Vec::<usize>::new());
    let intruder = NodeRecord {
        addr: SocketAddr::from((lan.hosts[1].ip, 6768)),
        ..record("intruder", 7)
    };
    assert_eq!(
        probe_from(&lan, 1, target, &datagram(&[Message::Alive(intruder)])),
        Vec::<usize>::new()
    );
    let out = lan.cli(0, &["agent", "info", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("info");
    assert!(
        v["gossip"]["counters"]["rejected_plaintext"].as_u64() >= Some(2),
        "{}",
        v["gossip"]["counters"]
    );
    let members = stdout(&lan.cli(0, &["gossip", "members"]));
    assert!(!members.contains("intruder"), "{members}");
    let _ = DEADLINE;
}
