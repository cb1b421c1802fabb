//! Issue 9: the DNS server, asked with the real `dig` (Debian bind9-dnsutils).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use opsbro_tests::{Agent, AgentOptions, DEADLINE, stderr, wait_for};

fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg("-p")
        .arg(server.port().to_string())
        .arg(format!("@{}", server.ip()))
        .args(["+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig (Debian bind9-dnsutils) must be installed: bash .ci/install-deps.sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `+short` answers, sorted.
fn short(server: SocketAddr, name: &str, qtype: &str) -> Vec<String> {
    let mut v: Vec<String> = dig(server, &[name, qtype, "+short"])
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

fn node(name: &str, ip: &str, config: &str) -> Agent {
    // Zone dc1 is defined by the test zone tree.
    let config = format!("{config}\n{}", opsbro_tests::zones_config());
    Agent::start_with(AgentOptions::default().name(name).bind(ip).config(&config)).expect("agent")
}

fn join(agents: &[&Agent]) {
    for a in &agents[1..] {
        let out = a.cli(["gossip", "join", &agents[0].gossip.to_string()]);
        assert!(out.status.success(), "join: {}", stderr(&out));
    }
    for a in agents {
        let n = agents.len().to_string();
        let out = a.cli(["gossip", "wait-members", "--count", &n, "--timeout", "60"]);
        assert!(out.status.success(), "wait-members: {}", stderr(&out));
    }
}

#[test]
fn dig_sees_groups_nodes_soa_refusals_deaths_and_only_passing() {
    let dir = tempfile::tempdir().expect("tmp");
    let flag = dir.path().join("flag");
    let pack = dir.path().join("site/monitoring");
    std::fs::create_dir_all(&pack).expect("mkdir");
    std::fs::write(
        pack.join("flag.yml"),
        format!(
            "check:\n  interval: 500ms\n  critical_if: \"file_exists('{}')\"\n",
            flag.display()
        ),
    )
    .expect("pack");
    let a = node(
        "alpha",
        "127.0.0.11",
        "zone: dc1\ngroups: [redis]\ndns:\n  only_passing: true\n",
    );
    let mut b = node("bravo", "127.0.0.12", "zone: dc1\ngroups: [redis]\n");
    let c = node(
        "charlie",
        "127.0.0.13",
        &format!(
            "zone: dc1\ngroups: [web]\npacks_dirs: [{}]\n",
            dir.path().display()
        ),
    );
    join(&[&a, &b, &c]);
    let dns = a.dns.expect("alpha serves DNS");

    // The README's command form.
    let redis = wait_for("both redis nodes", DEADLINE, || {
        let v = short(dns, "redis.group.dc1.opsbro", "A");
        (v.len() == 2).then_some(v)
    })
    .expect("redis");
    assert_eq!(redis, ["127.0.0.11", "127.0.0.12"]);
    assert_eq!(
        short(dns, "redis.group.opsbro", "A"),
        redis,
        "the zone is optional"
    );
    assert_eq!(short(dns, "charlie.name.dc1.opsbro", "A"), ["127.0.0.13"]);
    assert_eq!(short(dns, "charlie.node.opsbro", "A"), ["127.0.0.13"]);

    let nx = dig(dns, &["nobody.group.opsbro", "A"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(nx.contains("SOA\tns.opsbro. hostmaster.opsbro."), "{nx}");
    assert!(nx.contains("flags: qr aa"), "authoritative: {nx}");
    let refused = dig(dns, &["example.com", "A"]);
    assert!(refused.contains("status: REFUSED"), "{refused}");
    let nodata = dig(dns, &["alpha.name.opsbro", "AAAA"]);
    assert!(
        nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0"),
        "{nodata}"
    );

    // only_passing (on alpha's server): charlie disappears while its check is CRITICAL.
    assert_eq!(short(dns, "web.group.opsbro", "A"), ["127.0.0.13"]);
    std::fs::write(&flag, "").expect("raise flag");
    wait_for("charlie hidden while critical", DEADLINE, || {
        short(dns, "web.group.opsbro", "A").is_empty().then_some(())
    })
    .expect("hidden");
    // bravo's server does not filter.
    let b_dns = b.dns.expect("bravo dns");
    assert_eq!(short(b_dns, "web.group.opsbro", "A"), ["127.0.0.13"]);
    std::fs::remove_file(&flag).expect("lower flag");
    wait_for("charlie back", DEADLINE, || {
        (short(dns, "web.group.opsbro", "A") == ["127.0.0.13"]).then_some(())
    })
    .expect("back");

    // A node killed with -9 leaves the answers once it is dead.
    b.signal("KILL").expect("kill");
    let _ = b.wait_exit(DEADLINE);
    wait_for("bravo gone from the answers", DEADLINE, || {
        (short(dns, "redis.group.dc1.opsbro", "A") == ["127.0.0.11"]).then_some(())
    })
    .expect("dead node removed");

    let info: serde_json::Value =
        serde_json::from_slice(&a.cli(["agent", "info", "--json"]).stdout).expect("info");
    let counted = &info["dns"];
    assert!(
        counted["queries"].as_u64().unwrap_or(0) >= 10,
        "{counted:#}"
    );
    assert!(
        counted["nxdomain"].as_u64().unwrap_or(0) >= 1,
        "{counted:#}"
    );
    assert!(counted["refused"].as_u64().unwrap_or(0) >= 1, "{counted:#}");
}

#[test]
fn an_ipv6_node_answers_aaaa() {
    let v6 = node("sixer", "::1", "groups: [db]\n");
    let dns = v6.dns.expect("dns");
    assert_eq!(short(dns, "sixer.name.opsbro", "AAAA"), ["::1"]);
    assert_eq!(short(dns, "db.group.opsbro", "AAAA"), ["::1"]);
    assert!(short(dns, "db.group.opsbro", "A").is_empty());
}

#[test]
fn forty_members_are_truncated_over_udp_and_whole_over_tcp() {
    let agents: Vec<Agent> = (0..40)
        .map(|i| {
            node(
                &format!("big{i:02}"),
                &format!("127.0.1.{}", i + 10),
                "groups: [big]\n",
            )
        })
        .collect();
    let refs: Vec<&Agent> = agents.iter().collect();
    join(&refs);
    let dns = agents[0].dns.expect("dns");
    let tcp = wait_for("40 answers over TCP", Duration::from_secs(60), || {
        let mut v: Vec<String> = dig(dns, &["big.group.opsbro", "A", "+tcp", "+short"])
            .lines()
            .map(str::to_owned)
            .collect();
        v.sort();
        (v.len() == 40).then_some(v)
    })
    .expect("tcp");
    assert_eq!(tcp.len(), 40);
    // Plain UDP without EDNS: 512 bytes do not hold 40 answers.
    let udp = dig(dns, &["big.group.opsbro", "A", "+noedns", "+ignore"]);
    assert!(udp.contains(" tc"), "TC flag expected: {udp}");
    // With EDNS0 and a 4096-byte buffer they fit.
    let edns = dig(dns, &["big.group.opsbro", "A", "+bufsize=4096", "+ignore"]);
    assert!(
        !edns.contains(" tc") && edns.contains("ANSWER: 40"),
        "{edns}"
    );
}

#[test]
fn names_outside_the_domain_go_to_the_recursor() {
    let port = opsbro_tests::services::free_port().expect("port");
    let mut dnsmasq = Command::new("dnsmasq")
        .args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
        ])
        .args(["--listen-address=127.0.0.1", "--user=root"])
        .arg(format!("--port={port}"))
        .arg("--address=/example.test/10.9.8.7")
        .spawn()
        .expect("dnsmasq (Debian dnsmasq-base) must be installed: bash .ci/install-deps.sh");
    let upstream: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for("dnsmasq to answer", DEADLINE, || {
        (short(upstream, "www.example.test", "A") == ["10.9.8.7"]).then_some(())
    })
    .expect("dnsmasq up");
    let a = node(
        "forwarder",
        "127.0.0.21",
        &format!("groups: [app]\ndns:\n  recursors: [\"127.0.0.1:{port}\"]\n"),
    );
    let dns = a.dns.expect("dns");
    assert_eq!(short(dns, "www.example.test", "A"), ["10.9.8.7"]);
    assert_eq!(short(dns, "app.group.opsbro", "A"), ["127.0.0.21"]);
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    // The recursor is gone: SERVFAIL after the forwarding timeout (2 s).
    let failed = dig(dns, &["other.example.test", "A", "+time=6"]);
    assert!(failed.contains("status: SERVFAIL"), "{failed}");
}

#[test]
fn garbage_datagrams_never_break_the_server() {
    let a = node("sturdy", "127.0.0.31", "groups: [ok]\n");
    let dns = a.dns.expect("dns");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..2000usize {
        let len = i % 600;
        let packet: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let _ = sock.send_to(&packet, dns);
    }
    // A valid header with nonsense after it, and a truncated question.
    let _ = sock.send_to(&[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63, b'a'], dns);
    assert_eq!(short(dns, "ok.group.opsbro", "A"), ["127.0.0.31"]);
    assert!(a.cli(["agent", "state"]).status.success());
}

/// A query by hand: `id`, one question, EDNS0 (1232 bytes) when asked.
fn wire_query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    if edns {
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    q
}

/// Past a (possibly compressed) name at `at`.
fn skip_name(m: &[u8], mut at: usize) -> usize {
    loop {
        let len = m[at];
        if len & 0xc0 == 0xc0 {
            return at + 2;
        }
        at += 1 + usize::from(len);
        if len == 0 {
            return at;
        }
    }
}

/// What an answer says: (rcode, answers, authorities, additionals, the first A record).
fn read_answer(m: &[u8]) -> (u8, u16, u16, u16, Option<[u8; 4]>) {
    let count = |at: usize| u16::from_be_bytes([m[at], m[at + 1]]);
    let (an, ns, ar) = (count(6), count(8), count(10));
    let mut first = None;
    if an > 0 {
        let at = skip_name(m, 12) + 4;
        let at = skip_name(m, at);
        if count(at) == 1 && count(at + 8) == 4 {
            first = Some([m[at + 10], m[at + 11], m[at + 12], m[at + 13]]);
        }
    }
    (m[3] & 0x0f, an, ns, ar, first)
}

/// Bursts of 250 datagrams at once (so that receives come back full and the helper thread
/// joins in): plain questions (the fast path) mixed with NXDOMAIN, NODATA, REFUSED, a
/// mixed-case name with EDNS0 and garbage — every query gets its own right answer, the garbage
/// none, and the counters add up.
#[test]
fn bursts_of_mixed_queries_each_get_their_own_answer() {
    let a = node("busy", "127.0.0.32", "groups: [ok]\n");
    let dns = a.dns.expect("dns");
    assert_eq!(short(dns, "ok.group.opsbro", "A"), ["127.0.0.32"]);
    let before: serde_json::Value =
        serde_json::from_slice(&a.cli(["agent", "info", "--json"]).stdout).expect("info");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let (mut sent, mut garbage) = (0u64, 0u64);
    let mut answered = std::collections::HashMap::new();
    for wave in 0..8u16 {
        let mut expected = std::collections::HashMap::new();
        for i in 0..250u16 {
            let id = wave * 250 + i;
            let (query, want) = match id % 6 {
                0 => (wire_query(id, "ok.group.opsbro", 1, false), (0, 1, 0, 0)),
                1 => (wire_query(id, "Ok.GROUP.opsbro", 1, true), (0, 1, 0, 1)),
                2 => (wire_query(id, "nope.group.opsbro", 1, false), (3, 0, 1, 0)),
                3 => (wire_query(id, "busy.name.opsbro", 16, true), (0, 0, 1, 1)),
                4 => (wire_query(id, "example.com", 1, false), (5, 0, 0, 0)),
                _ => {
                    // A header that says "response", then noise.
                    let mut g = id.to_be_bytes().to_vec();
                    g.extend_from_slice(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9, 9, 9]);
                    sock.send_to(&g, dns).expect("send");
                    garbage += 1;
                    continue;
                }
            };
            sock.send_to(&query, dns).expect("send");
            expected.insert(id, want);
            sent += 1;
        }
        let deadline = std::time::Instant::now() + DEADLINE;
        let mut buf = [0u8; 4096];
        let mut got = 0;
        while got < expected.len() && std::time::Instant::now() < deadline {
            let Ok(n) = sock.recv(&mut buf) else {
                continue;
            };
            let m = &buf[..n];
            let id = u16::from_be_bytes([m[0], m[1]]);
            let (rcode, an, ns, ar, first) = read_answer(m);
            let want = expected
                .get(&id)
                .unwrap_or_else(|| panic!("an answer to {id}, which was not asked or garbage"));
            assert_eq!((rcode, an, ns, ar), *want, "answer to query {id}");
            if an == 1 {
                assert_eq!(first, Some([127, 0, 0, 32]), "answer to query {id}");
            }
            assert!(answered.insert(id, ()).is_none(), "two answers to {id}");
            got += 1;
        }
        assert_eq!(got, expected.len(), "answers in wave {wave}");
    }
    let after: serde_json::Value =
        serde_json::from_slice(&a.cli(["agent", "info", "--json"]).stdout).expect("info");
    let delta = |k: &str| after["dns"][k].as_u64().expect(k) - before["dns"][k].as_u64().expect(k);
    assert_eq!(delta("queries"), sent);
    assert_eq!(delta("malformed"), garbage);
    assert_eq!(delta("nxdomain"), sent / 5);
    assert_eq!(delta("refused"), sent / 5);
    let human = a.cli(["agent", "info"]);
    assert!(
        String::from_utf8_lossy(&human.stdout)
            .contains(&format!("{garbage} malformed datagrams dropped")),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );
}

/// The `dns:` block of the original README, as it renders (aligned colons, `domain: ".opsbro"`
/// with its leading dot): before issue 20 the leading dot was refused.
const README_DNS_BLOCK: &str =
    "dns:\n    enabled    : true\n    port       : 6766\n    domain     : \".opsbro\"\n";

/// Regression: a domain written with a leading dot (the original README's `.opsbro`) made the
/// configuration invalid; it is the same domain without the dot, and the server answers for it.
#[test]
fn a_leading_dot_domain_from_the_readme_block_is_served() {
    let a = node(
        "readme",
        "127.0.0.41",
        &format!("zone: dc1\ngroups: [redis]\n{README_DNS_BLOCK}"),
    );
    let dns = a.dns.expect("the README block enables DNS");
    let redis = wait_for("the README's query answered", DEADLINE, || {
        let v = short(dns, "redis.group.dc1.opsbro", "A");
        (!v.is_empty()).then_some(v)
    })
    .expect("answer");
    assert_eq!(redis, ["127.0.0.41"]);

    // Another domain written the same way: the server answers for it, not for the default.
    let b = node(
        "dotted",
        "127.0.0.42",
        &format!(
            "zone: dc1\ngroups: [redis]\n{}",
            README_DNS_BLOCK.replace(".opsbro", ".cluster.example")
        ),
    );
    let dns = b.dns.expect("dns");
    let v = wait_for("an answer under .cluster.example", DEADLINE, || {
        let v = short(dns, "redis.group.dc1.cluster.example", "A");
        (!v.is_empty()).then_some(v)
    })
    .expect("answer");
    assert_eq!(v, ["127.0.0.42"]);
    let other = dig(dns, &["redis.group.dc1.opsbro", "A"]);
    assert!(other.contains("status: REFUSED"), "{other}");
}
