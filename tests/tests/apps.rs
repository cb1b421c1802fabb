//! Issue 28 (applications): real servers from Debian packages, started by the tests on free
//! ports; the agent detects each (by its running process or listening port), collects from it in
//! its own protocol, stores the values as time series and checks it; a stopped server turns its
//! check CRITICAL with the reason while the agent runs on.

use std::io::{BufRead, BufReader, Write};

use opsbro_tests::apps::{self, check, wait_check, wait_collector};
use opsbro_tests::{http, stdout};

/// Send redis commands (inline protocol) and read one reply line each.
fn redis_cmds(port: u16, cmds: &[&str]) -> Vec<String> {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect redis");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut w = stream;
    cmds.iter()
        .map(|c| {
            w.write_all(format!("{c}\r\n").as_bytes()).expect("send");
            let mut line = String::new();
            reader.read_line(&mut line).expect("reply");
            line.trim_end().to_owned()
        })
        .collect()
}

#[test]
fn redis_is_detected_collected_stored_and_checked() {
    let mut server = apps::redis().expect("redis-server");
    let tmp = tempfile::tempdir().expect("tmp");
    let packs = apps::pack_parameters(tmp.path(), "redis", &format!("port: {}\n", server.port))
        .expect("pack");
    let agent = apps::agent_with_packs(&packs, "redis-host").expect("agent");

    let replies = redis_cmds(
        server.port,
        &[
            "SET a 1", "SET b 2", "SET c 3", "SELECT 1", "SET d 4", "SET e 5",
        ],
    );
    assert!(replies.iter().all(|r| r == "+OK"), "{replies:?}");
    let data = wait_collector(&agent, "redis", "5 keys", |d| d["keys"] == 5).expect("collected");
    assert_eq!(data["available"], true);
    assert_eq!(data["db0"]["keys"], 3, "{data}");
    assert_eq!(data["db1"]["keys"], 2, "{data}");
    assert_eq!(data["maxclients"], 200, "{data}");
    assert!(
        data["redis_version"]
            .as_str()
            .is_some_and(|v| v.starts_with('7')),
        "{data}"
    );
    assert!(
        data["connected_clients"].as_u64().is_some_and(|n| n >= 1),
        "{data}"
    );
    assert!(data.get("total_commands_processed/s").is_some(), "{data}");
    // The group came from the detector (the agent was given no groups).
    let info = stdout(&agent.cli(["agent", "info"]));
    assert!(info.contains("redis"), "{info}");
    // Expressions read the values.
    let out = agent.cli(["evaluator", "eval", "{{collector.redis.keys}} == 5"]);
    assert_eq!(stdout(&out).trim(), "true");

    let output = wait_check(&agent, "redis/redis-available", "ok").expect("available");
    assert!(output.contains("5 keys"), "{output}");
    wait_check(&agent, "redis/redis-connections", "ok").expect("connections");
    let output = wait_check(&agent, "redis/redis-replication", "ok").expect("replication");
    assert!(output.contains("master"), "{output}");

    // Stored as time series.
    opsbro_tests::wait_for(
        "collector.redis.keys in the time series",
        opsbro_tests::DEADLINE,
        || {
            let answer = http(
                agent.api,
                "GET",
                "/render?target=collector.redis.keys&from=-5min&format=json",
                &[],
                b"",
            )
            .ok()?;
            let v: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
            let points = v.get(0)?.get("datapoints")?.as_array()?.clone();
            points
                .iter()
                .any(|p| p[0].as_f64() == Some(5.0))
                .then_some(())
        },
    )
    .expect("series");

    // The server goes away: the collector is in error with the reason, the check CRITICAL.
    server.stop().expect("stop redis");
    let out = agent.cli(["collectors", "run", "redis"]);
    let (state, data, message) = apps::collector(&agent, "redis").expect("collector");
    assert_eq!(state, "error", "{}", stdout(&out));
    assert_eq!(data["available"], false);
    assert!(message.contains("cannot reach redis"), "{message}");
    let output = wait_check(&agent, "redis/redis-available", "critical").expect("critical");
    assert!(output.contains("redis is not available"), "{output}");
    // The agent runs on.
    assert!(agent.cli(["agent", "info"]).status.success());
    assert!(check(&agent, "redis/redis-connections").is_some());
}

#[test]
fn memcached_is_detected_collected_and_checked() {
    let mut server = apps::memcached().expect("memcached");
    let tmp = tempfile::tempdir().expect("tmp");
    let packs = apps::pack_parameters(tmp.path(), "memcached", &format!("port: {}\n", server.port))
        .expect("pack");
    let agent = apps::agent_with_packs(&packs, "memcached-host").expect("agent");
    // Two items stored, one hit, one miss.
    let stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut w = stream;
    for cmd in ["set a 0 0 1\r\nx\r\n", "set b 0 0 1\r\ny\r\n"] {
        w.write_all(cmd.as_bytes()).expect("set");
        let mut line = String::new();
        reader.read_line(&mut line).expect("reply");
        assert_eq!(line.trim_end(), "STORED");
    }
    w.write_all(b"get a\r\nget zz\r\n").expect("get");
    let mut seen = String::new();
    while !seen.ends_with("END\r\nEND\r\n") {
        let mut line = String::new();
        reader.read_line(&mut line).expect("get reply");
        seen.push_str(&line);
    }
    let data = wait_collector(&agent, "memcached", "2 items", |d| d["curr_items"] == 2)
        .expect("collected");
    assert_eq!(data["get_hits"], 1, "{data}");
    assert_eq!(data["get_misses"], 1, "{data}");
    assert_eq!(data["hit_ratio"], 50.0, "{data}");
    assert_eq!(data["max_connections"], 100, "{data}");
    let output = wait_check(&agent, "memcached/memcached-available", "ok").expect("ok");
    assert!(output.contains("2 items"), "{output}");
    wait_check(&agent, "memcached/memcached-connections", "ok").expect("connections");

    server.stop().expect("stop memcached");
    agent.cli(["collectors", "run", "memcached"]);
    let output = wait_check(&agent, "memcached/memcached-available", "critical").expect("critical");
    assert!(output.contains("memcached is not available"), "{output}");
}

#[test]
fn hosts_without_the_application_do_not_run_its_collector() {
    let agent = opsbro_tests::Agent::start().expect("agent");
    assert!(agent.cli(["agent", "wait-initialized"]).status.success());
    // Nothing listens on the redis port of this pack (a free port), no redis runs here.
    let (state, _, message) = apps::collector(&agent, "redis").expect("collector");
    if state == "not-eligible" {
        assert!(message.contains("not in group `redis`"), "{message}");
    }
    assert!(check(&agent, "redis/redis-available").is_none_or(|(s, _)| s != "critical"));
}
