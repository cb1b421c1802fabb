//! Issue 11: the event bus on a websocket (followed with `opsbro events watch`, a
//! tokio-tungstenite client), a client that never reads, and `/metrics` checked by the real
//! `promtool` (Debian prometheus).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opsbro_tests::{Agent, AgentOptions, DEADLINE, http, opsbro_command, stderr, wait_for};
use serde_json::Value;

/// `opsbro events watch --json` running against an agent; its frames are collected as they come.
struct Watch {
    child: Child,
    frames: Arc<Mutex<Vec<Value>>>,
}

impl Watch {
    fn start(agent: &Agent, args: &[&str]) -> Watch {
        let mut child = opsbro_command()
            .arg("--api")
            .arg(agent.api.to_string())
            .args(["events", "watch", "--json"])
            .args(args)
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

    /// Wait for a frame on `channel` whose payload satisfies `pred`.
    fn wait(&self, what: &str, channel: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, DEADLINE, || {
            self.frames()
                .into_iter()
                .find(|f| f["channel"] == channel && pred(&f["payload"]))
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

/// A websocket client that completes the handshake and then never reads.
fn stuck_client(addr: SocketAddr, query: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET /{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("handshake answer");
        head.push(byte[0]);
    }
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

fn info(agent: &Agent) -> Value {
    let out = agent.cli(["agent", "info", "--json"]);
    assert!(out.status.success(), "agent info: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("info json")
}

/// `name{labels} value` samples of a Prometheus exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn websocket_streams_members_checks_kv_and_user_events_and_drops_a_stuck_client() {
    let dir = tempfile::tempdir().expect("tmp");
    let flag = dir.path().join("flag");
    let check = dir.path().join("packs/site/monitoring/flag.yml");
    std::fs::create_dir_all(check.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &check,
        format!(
            "check:\n  interval: 500ms\n  critical_if: \"file_exists('{}')\"\n",
            flag.display()
        ),
    )
    .expect("check");
    let a = Agent::start_with(AgentOptions::default().name("alpha").config(&format!(
        "websocket:\n  enabled: true\n  port: 0\npacks_dirs: [{}]\n",
        dir.path().join("packs").display()
    )))
    .expect("alpha");
    let ws = a.websocket.expect("websocket address in the runtime file");
    let watch = Watch::start(&a, &[]);
    let kv_only = Watch::start(&a, &["--channel", "kv"]);
    wait_for("two websocket clients", DEADLINE, || {
        (info(&a)["websocket"]["clients"] == 2).then_some(())
    })
    .expect("clients");
    // Key names are not for anonymous readers: the kv channel needs the token.
    let stuck = stuck_client(ws, &format!("?channels=kv&token={}", a.token()));

    // A member joins.
    let b = Agent::start_with(AgentOptions::default().name("bravo")).expect("bravo");
    let out = b.cli(["gossip", "join", &a.gossip.to_string()]);
    assert!(out.status.success(), "join: {}", stderr(&out));
    let joined = watch.wait("bravo joined", "node", |p| {
        p["name"] == "bravo" && p["state"] == "alive"
    });
    assert_eq!(joined["payload"]["old_state"], "new");
    assert!(joined["time_ms"].as_u64().is_some());

    // A check changes state on this node.
    std::fs::write(&flag, "x").expect("flag");
    watch.wait("the check going critical", "check", |p| {
        p["name"] == "site/flag" && p["state"] == "critical"
    });

    // A key changes.
    let out = a.cli(["kv", "put", "app/config", "v1"]);
    assert!(out.status.success(), "kv put: {}", stderr(&out));
    let kv = watch.wait("the kv change", "kv", |p| p["key"] == "app/config");
    assert_eq!(kv["payload"]["action"], "put");

    // A user event.
    let out = a.cli(["gossip", "events", "add", "deploy", "--payload", "v42"]);
    assert!(out.status.success(), "event: {}", stderr(&out));
    watch.wait("the user event", "event", |p| {
        p["type"] == "deploy" && p["payload"] == "v42"
    });

    // The filtered client saw only kv frames.
    kv_only.wait("app/config on the kv-only stream", "kv", |p| {
        p["key"] == "app/config"
    });
    assert!(kv_only.frames().iter().all(|f| f["channel"] == "kv"));

    // A flood of key changes: the client that never reads is dropped, the others get all of it.
    let pad = "x".repeat(200);
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (api, pad, auth) = (a.api, pad.clone(), a.auth());
            std::thread::spawn(move || {
                for i in 0..500 {
                    let path = format!("/kv/flood/{t}-{i:04}-{pad}");
                    let r = http(api, "PUT", &path, &[&auth], b"v").expect("put");
                    assert_eq!(r.status, 200, "{}", r.body);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let flood = |w: &Watch| {
        w.frames()
            .iter()
            .filter(|f| {
                f["channel"] == "kv"
                    && f["payload"]["key"]
                        .as_str()
                        .is_some_and(|k| k.starts_with("flood/"))
            })
            .count()
    };
    wait_for(
        "every flood event on both reading clients",
        DEADLINE,
        || (flood(&watch) == 2000 && flood(&kv_only) == 2000).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}: {} and {}", flood(&watch), flood(&kv_only)));
    let ws_info = wait_for("the stuck client dropped", DEADLINE, || {
        let w = info(&a)["websocket"].clone();
        (w["slow_dropped"] == 1 && w["clients"] == 2).then_some(w)
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}", info(&a)["websocket"]));
    assert!(ws_info["sent"].as_u64().unwrap_or(0) >= 4000, "{ws_info:#}");
    drop(stuck);

    // A member dies.
    b.signal("KILL").expect("kill -9 bravo");
    watch.wait("bravo suspected", "node", |p| {
        p["name"] == "bravo" && p["state"] == "suspect"
    });
    watch.wait("bravo dead", "node", |p| {
        p["name"] == "bravo" && p["state"] == "dead"
    });
}

#[test]
fn prometheus_metrics_pass_promtool_and_move_with_traffic() {
    let promtool = Command::new("promtool").arg("--version").output();
    assert!(
        promtool.is_ok_and(|o| o.status.success()),
        "promtool (Debian prometheus) must be installed: bash .ci/install-deps.sh"
    );
    let a = Agent::start_with(AgentOptions::default().name("scraped").config(
        "statsd:\n  enabled: true\n  port: 0\n  interval: 1s\nwebsocket:\n  enabled: true\n  port: 0\n",
    ))
    .expect("agent");
    let b = Agent::start_with(AgentOptions::default().name("peer")).expect("peer");
    let out = b.cli(["gossip", "join", &a.gossip.to_string()]);
    assert!(out.status.success(), "join: {}", stderr(&out));
    let scrape = || {
        let r = http(a.api, "GET", "/metrics", &[], b"").expect("scrape");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
            "{:?}",
            r.headers
        );
        r.body
    };
    let om = http(
        a.api,
        "GET",
        "/metrics",
        &["Accept: application/openmetrics-text; version=1.0.0"],
        b"",
    )
    .expect("openmetrics scrape");
    assert!(
        om.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{:?}",
        om.headers
    );
    assert!(om.body.trim_end().ends_with("# EOF"), "{}", om.body);
    let check = |text: &str| {
        let mut p = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        p.stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let out = p.wait_with_output().expect("promtool output");
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}\n---\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let before = scrape();
    check(&before);

    // Traffic of every kind.
    for i in 0..5 {
        let out = a.cli(["kv", "put", &format!("k{i}"), "v"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let statsd = a.statsd.expect("statsd");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.send_to(b"a:1|c\nb:2|ms\nnot a line", statsd)
        .expect("send");
    let dns = a.dns.expect("dns");
    let _ = Command::new("dig")
        .args(["-p", &dns.port().to_string(), &format!("@{}", dns.ip())])
        .args(["+time=2", "+tries=1", "peer.name.opsbro", "+short"])
        .output();
    let _watch = opsbro_command()
        .arg("--api")
        .arg(a.api.to_string())
        .args(["events", "watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(ChildGuard)
        .expect("watch");

    let after = wait_for("the counters to move", DEADLINE, || {
        let text = scrape();
        let moved = |s: &str| sample(&text, s).unwrap_or(0.0) > sample(&before, s).unwrap_or(0.0);
        (moved("opsbro_kv_writes_total")
            && moved("opsbro_statsd_lines_total")
            && moved("opsbro_statsd_bad_lines_total")
            && moved("opsbro_gossip_packets_received_total")
            && moved("opsbro_events_published_total")
            && sample(&text, "opsbro_gossip_probe_rtt_seconds_count").unwrap_or(0.0) >= 1.0
            && sample(&text, "opsbro_websocket_clients") == Some(1.0)
            && sample(&text, "opsbro_members{state=\"alive\"}") == Some(2.0))
        .then_some(text)
    })
    .unwrap_or_else(|e| panic!("{e}\nbefore:\n{before}\nnow:\n{}", scrape()));
    check(&after);
    assert!(
        sample(
            &after,
            "opsbro_kv_request_duration_seconds_count{op=\"put\"}"
        )
        .unwrap_or(0.0)
            >= 5.0,
        "{after}"
    );
    assert!(
        sample(&after, "process_resident_memory_bytes").unwrap_or(0.0) > 1e6,
        "{after}"
    );
    assert!(
        sample(&after, "opsbro_dns_queries_total").unwrap_or(0.0) >= 1.0,
        "{after}"
    );
    assert!(after.contains("opsbro_checks{state=\"ok\"}"), "{after}");

    // Unknown channels and missing tokens are refused with a reason.
    let ws = a.websocket.expect("ws");
    let mut s = TcpStream::connect(ws).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET /?channels=nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("write");
    let mut answer = vec![0u8; 4096];
    let n = s.read(&mut answer).expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("unknown channel `nope`"), "{answer}");
    // A web page (Origin header) may not read the stream without a token.
    let mut s = TcpStream::connect(ws).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("write");
    let mut answer = vec![0u8; 4096];
    let n = s.read(&mut answer).expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
}

#[test]
fn a_token_guards_the_stream() {
    let a = Agent::start_with(
        AgentOptions::default()
            .name("guarded")
            .config("websocket:\n  enabled: true\n  port: 0\n")
            .env("OPSBRO_API_TOKEN", "s3cret-token"),
    )
    .expect("agent");
    let ws = a.websocket.expect("ws");
    // Without the token: refused.
    let out = opsbro_command()
        .args([
            "events",
            "watch",
            "--count",
            "1",
            "--url",
            &format!("ws://{ws}/"),
        ])
        .output()
        .expect("watch");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    // With it (the CLI sends it, and finds the stream through `agent info`).
    let mut watch = opsbro_command()
        .args(["--api", &a.api.to_string(), "--token", "s3cret-token"])
        .args([
            "events",
            "watch",
            "--json",
            "--count",
            "1",
            "--channel",
            "event",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("watch");
    wait_for("the client", DEADLINE, || {
        let out = opsbro_command()
            .args(["--api", &a.api.to_string(), "--token", "s3cret-token"])
            .args(["agent", "info", "--json"])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["websocket"]["clients"] == 1).then_some(())
    })
    .expect("connected");
    let out = opsbro_command()
        .args(["--api", &a.api.to_string(), "--token", "s3cret-token"])
        .args(["gossip", "events", "add", "hello"])
        .output()
        .expect("event");
    assert!(out.status.success(), "{}", stderr(&out));
    let mut line = String::new();
    BufReader::new(watch.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("a frame");
    let frame: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(frame["payload"]["type"], "hello");
    assert!(watch.wait().expect("exit").success(), "--count 1 exits 0");
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Regression (issue 20): a user event sent from a node showed twice on that node's stream —
/// published when it was sent, and again when the gossip core reported it as news.
#[test]
fn a_user_event_shows_once_on_the_sending_nodes_stream() {
    let a = Agent::start_with(
        AgentOptions::default()
            .name("sender")
            .config("websocket:\n  enabled: true\n  port: 0\n"),
    )
    .expect("agent");
    let b = Agent::start_with(AgentOptions::default().name("peer")).expect("peer");
    let out = b.cli(["gossip", "join", &a.gossip.to_string()]);
    assert!(out.status.success(), "join: {}", stderr(&out));
    let watch = Watch::start(&a, &["--channel", "event"]);
    wait_for("the watcher connected", DEADLINE, || {
        (info(&a)["websocket"]["clients"] == 1).then_some(())
    })
    .expect("client");
    let out = a.cli(["gossip", "events", "add", "deploy-once", "--payload", "v1"]);
    assert!(out.status.success(), "event: {}", stderr(&out));
    watch.wait("the event", "event", |p| p["type"] == "deploy-once");
    // An event from the peer comes back through gossip: once it is in, anything the first
    // event would still produce on this stream has been published before it.
    let out = b.cli(["gossip", "events", "add", "marker"]);
    assert!(out.status.success(), "event: {}", stderr(&out));
    watch.wait("the peer's event", "event", |p| p["type"] == "marker");
    let seen: Vec<Value> = watch
        .frames()
        .into_iter()
        .filter(|f| f["payload"]["type"] == "deploy-once")
        .collect();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0]["payload"]["payload"], "v1");
}

/// Issue 20: event types starting with `_` are the agent's own (`_keyring` spreads key
/// changes): the API and the CLI refuse them with a 400 that says why, and the agent's own
/// `_keyring` events still go through.
#[test]
fn underscore_event_types_are_refused_from_the_api_and_keyring_events_still_spread() {
    let key = opsbro_tests::keygen();
    let keyed = format!("encryption_key: {key}\n");
    let a = Agent::start_with(AgentOptions::default().name("alpha").config(&keyed)).expect("a");
    let b = Agent::start_with(AgentOptions::default().name("bravo").config(&keyed)).expect("b");
    let out = b.cli(["gossip", "join", &a.gossip.to_string()]);
    assert!(out.status.success(), "join: {}", stderr(&out));

    for kind in ["_keyring", "_x"] {
        let out = a.cli(["gossip", "events", "add", kind]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("400") && err.contains(&format!("event type `{kind}` is reserved")),
            "{err}"
        );
        let body = serde_json::json!({ "type": kind, "payload": "" }).to_string();
        let r = http(
            a.api,
            "POST",
            "/agent/events",
            &[&a.auth(), "Content-Type: application/json"],
            body.as_bytes(),
        )
        .expect("post");
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            r.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("starting with `_` are the agent's own")),
            "{}",
            r.body
        );
    }
    // A name with `_` elsewhere is fine.
    let out = a.cli(["gossip", "events", "add", "deploy_v2"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The agent's own `_keyring` event: a key installed on alpha reaches bravo.
    let new = opsbro_tests::keygen();
    let out = a.cli(["gossip", "keyring", "install", &new]);
    assert!(out.status.success(), "install: {}", stderr(&out));
    wait_for("the new key on bravo", DEADLINE, || {
        let out = b.cli(["gossip", "keyring", "list", "--json"]);
        let ring: Value = serde_json::from_slice(&out.stdout).ok()?;
        (ring["keys"].as_array()?.len() == 2).then_some(())
    })
    .expect("the _keyring event spread");
    let events =
        String::from_utf8_lossy(&a.cli(["gossip", "events", "list", "--json"]).stdout).into_owned();
    assert!(
        events.contains("deploy_v2") && !events.contains("_keyring"),
        "{events}"
    );
}
