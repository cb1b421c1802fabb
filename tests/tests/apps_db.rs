//! Issue 28 (applications, databases): real MariaDB and PostgreSQL servers from Debian packages,
//! started by the tests on free ports (a primary and its replica or standby where replication is
//! shown); the agent, given no groups, is put in `mysql`/`postgresql` by the detectors, logs in
//! with a password (or as root over the socket), collects what the test did to the server, keeps
//! it as time series and checks it; a stopped server (or a replica whose primary is gone) turns
//! the check CRITICAL with the reason while the agent runs on. MongoDB is not packaged in Debian
//! 12: its collector is tested against an in-process OP_MSG server (crates/apps/src/mongodb.rs).

use opsbro_tests::apps::{self, Server, mariadb_sql, psql, wait_check, wait_collector};
use opsbro_tests::{Agent, http, stdout, wait_for};
use serde_json::Value;

/// A number of the collected data at `path` (`a.b.c`).
fn num(data: &Value, path: &str) -> f64 {
    path.split('.')
        .try_fold(data, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

/// Run collector `name` now (instead of waiting for the next 10 s pass).
fn collect_now(agent: &Agent, name: &str) {
    let out = agent.cli(["collectors", "run", name]);
    assert!(
        out.status.success() || !stdout(&out).is_empty(),
        "collectors run {name}: {out:?}"
    );
}

/// Wait until the agent's time series `target` has the value `want`.
fn wait_series(agent: &Agent, target: &str, want: f64) {
    wait_for(
        &format!("{target} = {want} in the time series"),
        opsbro_tests::DEADLINE,
        || {
            let answer = http(
                agent.api,
                "GET",
                &format!("/render?target={target}&from=-5min&format=json"),
                &[],
                b"",
            )
            .ok()?;
            let v: Value = serde_json::from_str(&answer.body).ok()?;
            let points = v.get(0)?.get("datapoints")?.as_array()?.clone();
            points
                .iter()
                .any(|p| p[0].as_f64() == Some(want))
                .then_some(())
        },
    )
    .expect("series");
}

/// The agent was given no groups: it is in `group` because a detector found the server, whose
/// process (`process`) runs and whose port listens, as the detector's expression sees them.
fn assert_detected(agent: &Agent, group: &str, process: &str, port: u16) {
    wait_for(&format!("group {group}"), opsbro_tests::DEADLINE, || {
        stdout(&agent.cli(["agent", "info"]))
            .contains(group)
            .then_some(())
    })
    .expect("detected");
    let seen = agent.cli([
        "evaluator",
        "eval",
        &format!("process_is_running('{process}') and port_is_listening({port})"),
    ]);
    assert_eq!(stdout(&seen).trim(), "true", "{seen:?}");
}

/// The collector, run now, is in error with `reason`, and the available check turns CRITICAL
/// saying it.
fn see_critical(agent: &Agent, name: &str, reason: &str) {
    collect_now(agent, name);
    let (state, data, message) = apps::collector(agent, name).expect("collector");
    assert_eq!(state, "error", "{message}");
    assert_eq!(data["available"], false);
    assert!(message.contains(reason), "{message}");
    let check = format!("{name}/{name}-available");
    let want = format!("{name} is not available: {reason}");
    let mut last = None;
    wait_for(
        &format!("{check} critical: {want}"),
        apps::SERVER_START,
        || {
            let (state, output) = apps::check(agent, &check)?;
            let done = state == "critical" && output.contains(&want);
            last = Some(output);
            done.then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {last:?}"));
    // The agent runs on.
    assert!(agent.cli(["agent", "info"]).status.success());
}

/// The server stops: the collector is in error with the reason, the available check CRITICAL.
fn stop_and_see_critical(agent: &Agent, server: &mut Server, name: &str, reason: &str) {
    server.stop().expect("stop");
    see_critical(agent, name, reason);
}

#[test]
fn mariadb_is_detected_collected_stored_and_checked() {
    let mut server = apps::mariadb(57, &[]).expect("mariadbd");
    // The agent's own user, with a password, over TCP.
    mariadb_sql(
        &server,
        "CREATE USER 'opsbro'@'127.0.0.1' IDENTIFIED BY 'collector secret';
         GRANT PROCESS, SLAVE MONITOR ON *.* TO 'opsbro'@'127.0.0.1';
         CREATE DATABASE shop;
         CREATE TABLE shop.items (id INT PRIMARY KEY, name TEXT);
         INSERT INTO shop.items VALUES (1, 'a'), (2, 'b'), (3, 'c');",
    )
    .expect("setup");
    let tmp = tempfile::tempdir().expect("tmp");
    let packs = apps::pack_parameters(
        tmp.path(),
        "mysql",
        &format!(
            "port: {}\nsocket: ''\nuser: opsbro\npassword: 'collector secret'\n",
            server.port
        ),
    )
    .expect("pack");
    let agent = apps::agent_with_packs(&packs, "mariadb-host").expect("agent");
    assert_detected(&agent, "mysql", "mariadbd", server.port);

    let before = wait_collector(&agent, "mysql", "max_connections 57", |d| {
        d["max_connections"] == 57
    })
    .expect("collected");
    assert_eq!(before["available"], true);
    assert_eq!(before["flavor"], "mariadb", "{before}");
    assert!(
        before["version"]
            .as_str()
            .is_some_and(|v| v.contains("MariaDB")),
        "{before}"
    );
    assert!(num(&before, "threads_connected") >= 1.0, "{before}");
    assert!(num(&before, "connections_used_pct") > 0.0, "{before}");
    assert_eq!(before["role"], "primary", "{before}");
    assert!(num(&before, "com_insert") >= 1.0, "{before}");

    // 25 queries from the test: the server's counters, read by the agent, grow by as much.
    let selects = "SELECT count(*) FROM shop.items;".repeat(25);
    let counts = mariadb_sql(&server, &selects).expect("selects");
    assert_eq!(counts.lines().filter(|l| l.trim() == "3").count(), 25);
    collect_now(&agent, "mysql");
    let after = wait_collector(&agent, "mysql", "25 more selects", |d| {
        num(d, "com_select") >= num(&before, "com_select") + 25.0
    })
    .expect("counted");
    assert!(
        num(&after, "questions") >= num(&before, "questions") + 25.0,
        "{before}\n{after}"
    );
    assert!(num(&after, "com_select/s") > 0.0, "{after}");
    assert!(after.get("bytes_received/s").is_some(), "{after}");

    let output = wait_check(&agent, "mysql/mysql-available", "ok").expect("available");
    assert!(output.contains("mariadb"), "{output}");
    let output = wait_check(&agent, "mysql/mysql-connections", "ok").expect("connections");
    assert!(output.contains("max_connections 57"), "{output}");
    let output = wait_check(&agent, "mysql/mysql-replication", "ok").expect("replication");
    assert!(output.contains("primary"), "{output}");
    wait_series(&agent, "collector.mysql.max_connections", 57.0);

    // The agent's password no longer works: the server is there but refuses it, and says why.
    mariadb_sql(
        &server,
        "ALTER USER 'opsbro'@'127.0.0.1' IDENTIFIED BY 'changed'",
    )
    .expect("alter user");
    see_critical(&agent, "mysql", "mysql at 127.0.0.1");
    let (_, _, message) = apps::collector(&agent, "mysql").expect("collector");
    assert!(message.contains("refused the login"), "{message}");
    assert!(
        message.contains("Access denied for user 'opsbro'"),
        "{message}"
    );

    stop_and_see_critical(&agent, &mut server, "mysql", "cannot reach mysql");
}

#[test]
fn mariadb_replica_threads_and_lag_are_checked() {
    let (primary, replica) = std::thread::scope(|s| {
        let p = s.spawn(|| apps::mariadb(50, &["--log-bin=primary-bin", "--server-id=1"]));
        let r = s.spawn(|| apps::mariadb(50, &["--server-id=2", "--read-only"]));
        (
            p.join().expect("thread").expect("primary"),
            r.join().expect("thread").expect("replica"),
        )
    });
    let mut primary = primary;
    mariadb_sql(
        &primary,
        "CREATE USER 'repl'@'127.0.0.1' IDENTIFIED BY 'repl secret';
         GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';
         CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY);
         INSERT INTO shop.items VALUES (1), (2);",
    )
    .expect("primary setup");
    mariadb_sql(
        &replica,
        &format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='repl',
             MASTER_PASSWORD='repl secret', MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=no,
             MASTER_LOG_FILE='primary-bin.000001', MASTER_LOG_POS=4;
             START SLAVE;",
            primary.port
        ),
    )
    .expect("replica setup");
    wait_for("the rows replicated", opsbro_tests::DEADLINE, || {
        mariadb_sql(&replica, "SELECT count(*) FROM shop.items")
            .ok()
            .filter(|n| n.trim() == "2")
    })
    .expect("replicated");

    // The agent logs in as root over the replica's socket (no password: the socket is the proof).
    let tmp = tempfile::tempdir().expect("tmp");
    let socket = replica.dir.path().join("mysqld.sock");
    let packs = apps::pack_parameters(
        tmp.path(),
        "mysql",
        &format!(
            "port: {}\nsocket: '{}'\nuser: root\n",
            replica.port,
            socket.display()
        ),
    )
    .expect("pack");
    let agent = apps::agent_with_packs(&packs, "replica-host").expect("agent");
    let data = wait_collector(&agent, "mysql", "a running replica", |d| {
        d["role"] == "replica" && d["replication_io_running"] == true
    })
    .expect("collected");
    assert_eq!(data["replication_sql_running"], true, "{data}");
    assert_eq!(data["replication_lag_seconds"], 0, "{data}");
    assert_eq!(data["replication_source"], "127.0.0.1", "{data}");
    assert_eq!(data["replication"]["master_port"], primary.port, "{data}");
    assert_eq!(data["max_connections"], 50, "{data}");
    let output = wait_check(&agent, "mysql/mysql-replication", "ok").expect("replication ok");
    assert!(output.contains("replica of 127.0.0.1"), "{output}");

    // The primary goes away: the replica's IO thread is no longer running, the check says so.
    primary.stop().expect("stop primary");
    wait_for("the IO thread to notice", opsbro_tests::DEADLINE, || {
        collect_now(&agent, "mysql");
        let (_, d, _) = apps::collector(&agent, "mysql")?;
        (d["replication_io_running"] == false).then_some(())
    })
    .expect("io thread down");
    let output =
        wait_check(&agent, "mysql/mysql-replication", "critical").expect("replication critical");
    assert!(output.contains("replication from 127.0.0.1"), "{output}");
    // The replica itself is still available.
    wait_check(&agent, "mysql/mysql-available", "ok").expect("replica available");
}

#[test]
fn postgresql_is_detected_collected_stored_and_checked() {
    let mut server = apps::postgresql(37).expect("postgres");
    psql(
        &server,
        "postgres",
        "CREATE ROLE opsbro LOGIN PASSWORD 'collector secret' IN ROLE pg_monitor",
    )
    .expect("role");
    psql(&server, "postgres", "CREATE DATABASE shop").expect("database");
    psql(
        &server,
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c');",
    )
    .expect("rows");
    // The agent logs in over TCP with its password (SCRAM).
    let tmp = tempfile::tempdir().expect("tmp");
    let packs = apps::pack_parameters(
        tmp.path(),
        "postgresql",
        &format!(
            "port: {}\nuser: opsbro\npassword: 'collector secret'\n",
            server.port
        ),
    )
    .expect("pack");
    let agent = apps::agent_with_packs(&packs, "postgresql-host").expect("agent");
    assert_detected(&agent, "postgresql", "postgres", server.port);

    // A client stays connected to `shop` while the agent collects.
    let bin = std::process::Command::new("psql")
        .arg("-h")
        .arg(server.dir.path())
        .args([
            "-p",
            &server.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "shop",
        ])
        .args(["-X", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn();
    let mut client = bin.expect("psql session");
    collect_now(&agent, "postgresql");
    let data = wait_collector(&agent, "postgresql", "a backend on shop, 3 rows in", |d| {
        num(d, "databases.shop.numbackends") >= 1.0 && num(d, "databases.shop.tup_inserted") >= 3.0
    })
    .expect("collected");
    let _ = client.kill();
    let _ = client.wait();
    assert_eq!(data["available"], true);
    assert_eq!(data["max_connections"], 37, "{data}");
    assert!(
        data["version"].as_str().is_some_and(|v| v.starts_with("1")),
        "{data}"
    );
    assert_eq!(data["role"], "primary", "{data}");
    assert_eq!(data["in_recovery"], false, "{data}");
    // The agent's own connection and the client's.
    assert!(num(&data, "connections") >= 2.0, "{data}");
    assert!(num(&data, "connections_used_pct") > 0.0, "{data}");
    assert!(num(&data, "databases.shop.xact_commit") >= 1.0, "{data}");
    assert!(num(&data, "xact_commit") >= num(&data, "databases.shop.xact_commit"));
    assert!(num(&data, "cache_hit_ratio") > 0.0, "{data}");
    assert!(data.get("xact_commit/s").is_some(), "{data}");
    assert!(
        data["databases"]["shop"].get("xact_commit/s").is_some(),
        "{data}"
    );

    let output = wait_check(&agent, "postgresql/postgresql-available", "ok").expect("available");
    assert!(output.contains("(primary)"), "{output}");
    let output =
        wait_check(&agent, "postgresql/postgresql-connections", "ok").expect("connections");
    assert!(output.contains("max_connections 37"), "{output}");
    let output =
        wait_check(&agent, "postgresql/postgresql-replication", "ok").expect("replication");
    assert!(
        output.contains("primary with 0 streaming replicas"),
        "{output}"
    );
    wait_series(&agent, "collector.postgresql.max_connections", 37.0);

    stop_and_see_critical(&agent, &mut server, "postgresql", "cannot reach postgresql");
}

#[test]
fn postgresql_standby_streaming_and_lag_are_checked() {
    let mut primary = apps::postgresql(30).expect("primary");
    psql(
        &primary,
        "postgres",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1)",
    )
    .expect("rows");
    let standby = apps::postgresql_standby(&primary, 30).expect("standby");
    // The agent logs in as postgres over the standby's socket (trust).
    let tmp = tempfile::tempdir().expect("tmp");
    let packs = apps::pack_parameters(
        tmp.path(),
        "postgresql",
        &format!(
            "port: {}\nsocket: '{}'\n",
            standby.port,
            standby.dir.path().display()
        ),
    )
    .expect("pack");
    let agent = apps::agent_with_packs(&packs, "standby-host").expect("agent");
    let data = wait_collector(&agent, "postgresql", "a streaming standby", |d| {
        d["replication_streaming"] == true && d.get("replication_lag_seconds").is_some()
    })
    .expect("collected");
    assert_eq!(data["role"], "standby", "{data}");
    assert_eq!(data["in_recovery"], true, "{data}");
    assert_eq!(data["wal_receiver_status"], "streaming", "{data}");
    let output =
        wait_check(&agent, "postgresql/postgresql-replication", "ok").expect("replication ok");
    assert!(output.contains("standby, WAL streaming"), "{output}");
    let output = wait_check(&agent, "postgresql/postgresql-available", "ok").expect("available");
    assert!(output.contains("(standby)"), "{output}");

    // The primary goes away: the standby's WAL receiver stops, the check says so.
    primary.stop().expect("stop primary");
    wait_for("the WAL receiver to stop", opsbro_tests::DEADLINE, || {
        collect_now(&agent, "postgresql");
        let (_, d, _) = apps::collector(&agent, "postgresql")?;
        (d["replication_streaming"] == false).then_some(())
    })
    .expect("receiver down");
    let output = wait_check(&agent, "postgresql/postgresql-replication", "critical")
        .expect("replication critical");
    assert!(output.contains("standby WAL receiver"), "{output}");
}
