//! Issue 10: statsd and graphite listeners, the time-series store behind `/render` and
//! `/metrics/find`, and forwarding to a real carbon-cache (Debian graphite-carbon).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opsbro_tests::graphite::Carbon;
use opsbro_tests::{Agent, AgentOptions, DEADLINE, http, stderr, stdout, wait_for};
use serde_json::Value;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// `/render` answer: target → its datapoints.
fn render(agent: &Agent, query: &str) -> BTreeMap<String, Vec<(Option<f64>, u64)>> {
    let answer = http(agent.api, "GET", &format!("/render?{query}"), &[], b"").expect("render");
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_str::<Vec<Value>>(&answer.body)
        .expect("render json")
        .into_iter()
        .map(|s| {
            let points = s["datapoints"]
                .as_array()
                .expect("datapoints")
                .iter()
                .map(|p| (p[0].as_f64(), p[1].as_u64().expect("timestamp")))
                .collect();
            (s["target"].as_str().expect("target").to_owned(), points)
        })
        .collect()
}

/// The known values of one series over the last 10 minutes.
fn values(agent: &Agent, target: &str) -> Vec<f64> {
    render(agent, &format!("target={target}&from=-10min&format=json"))
        .remove(target)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(v, _)| v)
        .collect()
}

fn info(agent: &Agent) -> Value {
    let out = agent.cli(["agent", "info", "--json"]);
    assert!(out.status.success(), "agent info: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("info json")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// The reference statsd's timer aggregates, computed here from scratch.
fn expected_timer(mut values: Vec<f64>, weighted_count: f64) -> BTreeMap<&'static str, f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len() as f64;
    let sum: f64 = values.iter().sum();
    let mean = sum / n;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let mid = values.len() / 2;
    let median = if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    };
    let pct = |p: f64| values[((p / 100.0 * n).round() as usize).max(1) - 1];
    BTreeMap::from([
        ("count", weighted_count),
        ("lower", values[0]),
        ("upper", values[values.len() - 1]),
        ("mean", mean),
        ("median", median),
        ("upper_90", pct(90.0)),
        ("upper_99", pct(99.0)),
        ("sum", sum),
        ("std", std),
    ])
}

#[test]
fn statsd_packets_become_the_reference_aggregates() {
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("statsd")
            .config("statsd:\n  enabled: true\n  port: 0\n  interval: 2s\n"),
    )
    .expect("agent");
    let statsd = agent.statsd.expect("statsd address in the runtime file");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp");

    // Everything in one datagram, so that it lands in one flush interval.
    let mut lines = Vec::new();
    let mut counter = 0.0;
    for i in 1..=40u32 {
        let rate = [1.0, 0.5, 0.25, 0.1][i as usize % 4];
        lines.push(if rate == 1.0 {
            format!("shop.orders:{i}|c")
        } else {
            format!("shop.orders:{i}|c|@{rate}")
        });
        counter += f64::from(i) / rate;
    }
    let mut timer = Vec::new();
    let mut timer_count = 0.0;
    for i in 0..137u32 {
        let v = f64::from((i * 7919) % 503) + 0.25;
        let rate = if i % 10 == 0 { 0.5 } else { 1.0 };
        lines.push(if rate == 1.0 {
            format!("api.latency:{v}|ms")
        } else {
            format!("api.latency:{v}|ms|@{rate}")
        });
        timer.push(v);
        timer_count += 1.0 / rate;
    }
    lines.extend(
        [
            "pool.size:40|g",
            "pool.size:+5|g",
            "pool.size:-12|g",
            "visitors:alice|s",
            "visitors:bob|s",
            "visitors:alice|s",
            "visitors:carol|s",
            "this is not statsd",
            "bad.type:1|x",
            "bad.value:abc|c",
            "bad.rate:1|c|@7",
            "histo:5|h",
        ]
        .map(str::to_owned),
    );
    let packet = lines.join("\n");
    assert!(packet.len() < 60_000);
    socket.send_to(packet.as_bytes(), statsd).expect("send");
    // And a burst of small datagrams: every one is counted.
    for _ in 0..200 {
        socket.send_to(b"burst:1|c", statsd).expect("send");
    }

    let got_timer = wait_for("the timer aggregates", DEADLINE, || {
        let all = render(
            &agent,
            "target=stats.timers.api.latency.*&from=-10min&format=json",
        );
        (all.len() == 9).then_some(all)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    for (suffix, want) in expected_timer(timer, timer_count) {
        let name = format!("stats.timers.api.latency.{suffix}");
        let got: Vec<f64> = got_timer[&name].iter().filter_map(|(v, _)| *v).collect();
        assert_eq!(got.len(), 1, "{name}: one flush, one value: {got:?}");
        assert!(close(got[0], want), "{name}: got {} want {want}", got[0]);
    }
    assert_eq!(
        values(&agent, "stats.counters.shop.orders.count"),
        [counter]
    );
    assert!(close(
        values(&agent, "stats.counters.shop.orders.rate")[0],
        counter / 2.0
    ));
    assert!(
        values(&agent, "stats.gauges.pool.size")
            .iter()
            .all(|v| *v == 33.0),
        "gauge set then +5 then -12"
    );
    assert_eq!(values(&agent, "stats.sets.visitors.count"), [3.0]);
    assert_eq!(values(&agent, "stats.timers.histo.upper"), [5.0]);
    let burst = wait_for("all 200 burst datagrams", DEADLINE, || {
        let total: f64 = values(&agent, "stats.counters.burst.count").iter().sum();
        (total == 200.0).then_some(total)
    });
    assert!(
        burst.is_ok(),
        "{:?}",
        values(&agent, "stats.counters.burst.count")
    );

    let m = &info(&agent)["metrics"];
    assert_eq!(m["statsd_bad_lines"], 4, "{m:#}");
    assert_eq!(m["statsd_packets"], 201, "{m:#}");
    assert_eq!(m["statsd_lines"], 40 + 137 + 8 + 200, "{m:#}");
    assert!(m["statsd_last_error"].as_str().is_some(), "{m:#}");
    // The agent's own statsd counters are series too.
    assert!(!values(&agent, "stats.statsd.bad_lines").is_empty());

    // The CLI reads the same store.
    let out = agent.cli(["metrics", "find", "stats.*"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for branch in [
        "stats.counters",
        "stats.timers",
        "stats.gauges",
        "stats.sets",
    ] {
        assert!(stdout(&out).contains(branch), "{}", stdout(&out));
    }
    let out = agent.cli([
        "metrics",
        "show",
        "stats.sets.visitors.count",
        "--from",
        "-10min",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("  3\n"), "{}", stdout(&out));
}

fn send_tcp(addr: SocketAddr, parts: &[&[u8]]) {
    let mut s = TcpStream::connect(addr).expect("graphite tcp");
    for p in parts {
        s.write_all(p).expect("write");
        s.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn graphite_lines_collectors_and_perfdata_are_stored_queried_and_found() {
    let packs = tempfile::tempdir().expect("tmp");
    let check = packs.path().join("site/monitoring/temperature.yml");
    std::fs::create_dir_all(check.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &check,
        "check:\n  interval: 1s\n  script: \"echo 'OK - cool | celsius=42.5;50;60 fans=3'\"\n",
    )
    .expect("write check");
    let agent = Agent::start_with(AgentOptions::default().name("graphite").config(&format!(
        "graphite:\n  enabled: true\n  port: 0\npacks_dirs: [{}]\n",
        packs.path().display()
    )))
    .expect("agent");
    let graphite = agent
        .graphite
        .expect("graphite address in the runtime file");
    let t = now();
    let two_hours_ago = t - 7200;
    let long_line = format!("too.long {} {t}\n", "9".repeat(5000));
    send_tcp(
        graphite,
        &[
            format!("servers.web1.load 1.5 {t}\nservers.web2.load 2.5 {t}\nthis line is bad\n")
                .as_bytes(),
            // A line split over two writes.
            b"servers.db1.lo",
            format!("ad 10 {t}\r\nservers.old.load 7 {two_hours_ago}\n").as_bytes(),
            long_line.as_bytes(),
            format!("servers.after.long 1 -1\nservers.nan.load nan {t}\nservers.last 4 {t}")
                .as_bytes(),
        ],
    );
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.send_to(
        format!("servers.web3.load 3.5 {t}\nudp garbage\n").as_bytes(),
        graphite,
    )
    .expect("send udp");

    let loads = wait_for("graphite series", DEADLINE, || {
        let r = render(&agent, "target=servers.*.load&from=-5min&format=json");
        // web1, web2, db1, web3, and old (two hours back, nothing in these 5 minutes).
        (r.len() == 5).then_some(r)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let last = |name: &str| loads[name].iter().rev().find_map(|(v, _)| *v);
    assert_eq!(last("servers.web1.load"), Some(1.5));
    assert_eq!(last("servers.web2.load"), Some(2.5));
    assert_eq!(last("servers.db1.load"), Some(10.0), "split line");
    assert_eq!(last("servers.web3.load"), Some(3.5), "udp");
    // The line without a final newline is kept when the connection closes.
    wait_for("the unterminated last line", DEADLINE, || {
        (values(&agent, "servers.last") == [4.0]).then_some(())
    })
    .expect("servers.last");
    assert_eq!(values(&agent, "servers.after.long"), [1.0]);
    // A point two hours back sits in its own minute.
    let old = render(&agent, "target=servers.old.load&from=-3h&format=json");
    let at: Vec<u64> = old["servers.old.load"]
        .iter()
        .filter(|(v, _)| *v == Some(7.0))
        .map(|(_, ts)| *ts)
        .collect();
    assert_eq!(at, [two_hours_ago - two_hours_ago % 60]);

    // Grafana's requests: POST form with several targets, maxDataPoints, functions.
    let body = "target=sumSeries(servers.web*.load)&target=alias(servers.db1.load,%20%27db%27)\
                &from=-10min&until=now&format=json&maxDataPoints=5";
    let answer = http(
        agent.api,
        "POST",
        "/render",
        &["Content-Type: application/x-www-form-urlencoded"],
        body.as_bytes(),
    )
    .expect("post render");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let series: Vec<Value> = serde_json::from_str(&answer.body).expect("json");
    assert_eq!(series[0]["target"], "sumSeries(servers.web*.load)");
    assert_eq!(series[1]["target"], "db");
    assert!(series[0]["datapoints"].as_array().expect("points").len() <= 5);
    let sum = series[0]["datapoints"]
        .as_array()
        .expect("points")
        .iter()
        .rev()
        .find_map(|p| p[0].as_f64());
    assert_eq!(sum, Some(7.5));
    let bad = http(agent.api, "GET", "/render?target=nosuchfn(a.b)", &[], b"").expect("bad");
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("unknown function"), "{}", bad.body);
    let bad = http(
        agent.api,
        "GET",
        "/render?target=a.b&from=yesterweek",
        &[],
        b"",
    )
    .expect("bad");
    assert_eq!(bad.status, 400, "{}", bad.body);

    // /metrics/find, one level at a time, like Grafana's tree.
    let find = http(agent.api, "GET", "/metrics/find?query=servers.*", &[], b"").expect("find");
    let nodes: Vec<Value> = serde_json::from_str(&find.body).expect("find json");
    let ids: Vec<&str> = nodes.iter().filter_map(|n| n["id"].as_str()).collect();
    for id in ["servers.web1", "servers.db1", "servers.last"] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    let last_node = nodes
        .iter()
        .find(|n| n["id"] == "servers.last")
        .expect("leaf");
    assert_eq!(
        (last_node["leaf"].as_u64(), last_node["expandable"].as_u64()),
        (Some(1), Some(0))
    );
    let web1 = nodes
        .iter()
        .find(|n| n["id"] == "servers.web1")
        .expect("branch");
    assert_eq!(
        (web1["leaf"].as_u64(), web1["text"].as_str()),
        (Some(0), Some("web1"))
    );

    let m = &info(&agent)["metrics"];
    // "this line is bad", the 5000-byte line, "nan", "udp garbage".
    assert_eq!(m["graphite_bad_lines"], 4, "{m:#}");
    assert_eq!(m["graphite_lines"], 7, "{m:#}");

    // Collectors and check perfdata are series too.
    wait_for("collector and perfdata series", DEADLINE, || {
        let celsius = values(&agent, "check.site.temperature.celsius");
        let idle = values(&agent, "collector.cpustats.cpu_all.%idle");
        (celsius.contains(&42.5) && !idle.is_empty()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", render(&agent, "target=check.*.*.*&from=-5min")));
    let out = agent.cli(["metrics", "find", "--recursive", "check.site"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [
            "check.site.temperature.celsius",
            "check.site.temperature.fans"
        ]
    );
    let out = agent.cli(["metrics", "find", "no.such.*"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
}

#[test]
fn forwarding_buffers_while_carbon_is_down_and_lands_in_whisper_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let carbon_port = opsbro_tests::services::free_port_outside_ephemeral().expect("port");
    let agent = Agent::start_with(AgentOptions::default().name("forward").config(&format!(
        "graphite:\n  enabled: true\n  port: 0\n  forward: 127.0.0.1:{carbon_port}\n  forward_buffer: 5\n\
         statsd:\n  enabled: true\n  port: 0\n  interval: 1s\n"
    )))
    .expect("agent");
    let graphite = agent.graphite.expect("graphite");

    // Carbon is not there yet: 20 lines, only the newest 5 fit in the buffer.
    let t = now();
    let lines: String = (0..20)
        .map(|i| format!("forward.drop.s{i:02} {i} {t}\n"))
        .collect();
    send_tcp(graphite, &[lines.as_bytes()]);
    let forward = wait_for("20 lines counted", DEADLINE, || {
        let m = info(&agent)["metrics"].clone();
        (m["graphite_lines"] == 20).then(|| m["forward"].clone())
    })
    .expect("lines");
    assert_eq!(forward["connected"], false, "{forward:#}");
    assert_eq!(forward["address"], format!("127.0.0.1:{carbon_port}"));
    assert_eq!(forward["dropped"], 15, "{forward:#}");
    assert_eq!(forward["queued"], 5, "{forward:#}");
    assert!(forward["last_error"].as_str().is_some(), "{forward:#}");
    // Local storage kept them all.
    assert_eq!(values(&agent, "forward.drop.s00"), [0.0]);

    let carbon = Carbon::start(dir.path(), carbon_port);
    wait_for("the buffered lines in carbon", DEADLINE * 2, || {
        (15..20)
            .all(|i| carbon.fetch(&format!("forward.drop.s{i:02}")) == [f64::from(i)])
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}\n{}", info(&agent)["metrics"], agent.log()));
    assert!(
        !carbon.file("forward.drop.s00").exists(),
        "dropped lines never reach carbon"
    );

    // Once connected, new graphite lines and statsd aggregates flow straight through.
    send_tcp(
        graphite,
        &[format!("forward.live.load 2.5 {}\n", now()).as_bytes()],
    );
    let statsd = agent.statsd.expect("statsd");
    UdpSocket::bind("127.0.0.1:0")
        .expect("udp")
        .send_to(b"forward.requests:7|c", statsd)
        .expect("send");
    wait_for("live series in carbon", DEADLINE * 2, || {
        (carbon.fetch("forward.live.load") == [2.5]
            && carbon.fetch("stats.counters.forward.requests.count") == [7.0])
        .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}", info(&agent)["metrics"]));
    let m = info(&agent)["metrics"].clone();
    assert_eq!(m["forward"]["connected"], true, "{m:#}");
    assert!(m["forward"]["sent"].as_u64().unwrap_or(0) >= 7, "{m:#}");
    // The agent's own collector series stay local.
    assert!(!dir.path().join("whisper/collector").exists());
}
