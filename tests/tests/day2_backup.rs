//! Day-2 operations, backups: `opsbro kv export|import` move every key of a cluster with its
//! versions (an old export never overwrites newer writes, a bad line is reported by number, an
//! export that cannot be complete fails), and `opsbro agent snapshot save|restore` copy one
//! node's data while it runs and bring it back, uuid included, into a stopped agent's data dir.

use std::collections::BTreeMap;
use std::path::Path;

use opsbro_tests::{Agent, AgentOptions, DEADLINE, http, opsbro_command, stderr, stdout, wait_for};
use serde_json::Value;

/// Agents re-check their replicas every second in these tests (default 30 s).
const KV_CONFIG: &str = "kv:\n  anti_entropy_interval: 1s\n";

fn info(agent: &Agent) -> Value {
    serde_json::from_slice(&agent.cli(["agent", "info", "--json"]).stdout).unwrap_or_default()
}

fn wait_ring(agents: &[Agent], n: u64) {
    for a in agents {
        wait_for(&format!("a KV ring of {n} nodes"), DEADLINE, || {
            (info(a)["kv"]["ring_nodes"] == n).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {:#}", info(a)["kv"]));
    }
}

/// Start `names` as one cluster with `config` and wait until every ring has them all.
fn cluster(names: &[&str], config: &str) -> Vec<Agent> {
    let agents: Vec<Agent> = names
        .iter()
        .map(|n| Agent::start_with(AgentOptions::default().name(n).config(config)).expect("agent"))
        .collect();
    for a in &agents[1..] {
        let out = a.cli(["gossip", "join", &agents[0].gossip.to_string()]);
        assert!(out.status.success(), "join: {}", stderr(&out));
    }
    wait_ring(&agents, names.len() as u64);
    agents
}

fn request(agent: &Agent, method: &str, path: &str, body: &[u8]) -> u16 {
    http(agent.api, method, path, &[&agent.auth()], body)
        .map(|a| a.status)
        .unwrap_or(0)
}

/// The entry lines of an export, by key (header and end line checked and left out).
fn entries(file: &Path) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(file).expect("read the export");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let (first, last) = (&lines[0], &lines[lines.len() - 1]);
    assert_eq!(first["format"], "opsbro-kv-export", "{first}");
    assert_eq!(first["version"], 1, "{first}");
    assert_eq!(last["end"], "opsbro-kv-export", "{last}");
    assert_eq!(last["entries"], (lines.len() - 2) as u64, "{last}");
    lines[1..lines.len() - 1]
        .iter()
        .map(|e| (e["key"].as_str().expect("key").to_owned(), e.clone()))
        .collect()
}

fn export(agent: &Agent, file: &Path) -> BTreeMap<String, Value> {
    let out = agent.cli(["kv", "export", "-o", file.to_str().expect("path")]);
    assert!(out.status.success(), "export: {}", stderr(&out));
    entries(file)
}

#[test]
fn an_export_imported_into_a_new_cluster_keeps_every_key_and_version_and_newer_writes_win() {
    let tmp = tempfile::tempdir().expect("tmp");
    let backup = tmp.path().join("backup.ndjson");
    let binary: Vec<u8> = (0..=255).collect();
    // The source cluster keeps each key on 2 of its 3 nodes and notices failures slowly (10 s
    // probes), so frozen nodes stay on its ring below.
    let source_config = "kv:\n  anti_entropy_interval: 1s\n  replication_factor: 2\ngossip:\n  probe_interval: 10s\n  probe_timeout: 5s\n";
    let exported = {
        let old = cluster(&["alpha", "bravo", "charlie"], source_config);
        for i in 0..40 {
            let a = &old[i % 3];
            let path = format!("/kv/app/key-{i:02}");
            assert_eq!(
                request(a, "PUT", &path, format!("value {i}").as_bytes()),
                200
            );
        }
        assert_eq!(request(&old[0], "PUT", "/kv/bin/all-bytes", &binary), 200);
        assert_eq!(
            request(&old[1], "PUT", "/kv/tmp/ttl?ttl=1h", b"short-lived"),
            200
        );
        assert_eq!(
            request(&old[2], "PUT", "/kv/app/deleted", b"soon gone"),
            200
        );
        assert_eq!(request(&old[0], "DELETE", "/kv/app/deleted", b""), 200);
        // `dir/ключ ✓`, percent-encoded on the request line.
        let unicode = "/kv/dir/%D0%BA%D0%BB%D1%8E%D1%87%20%E2%9C%93";
        assert_eq!(request(&old[1], "PUT", unicode, b"unicode key"), 200);

        let exported = export(&old[1], &backup);
        assert_eq!(exported.len(), 44, "{:#?}", exported.keys());
        assert_eq!(
            exported["app/deleted"]["deleted"], true,
            "tombstones travel"
        );
        assert!(exported["tmp/ttl"]["expires_ms"].as_u64().is_some());
        assert!(exported["app/key-07"]["modify_index"].as_u64() > Some(0));

        // The same on standard output.
        let out = old[0].cli(["kv", "export"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let on_stdout = tmp.path().join("stdout.ndjson");
        std::fs::write(&on_stdout, &out.stdout).expect("write");
        assert_eq!(entries(&on_stdout), exported);

        // Two of three nodes frozen: the keys they alone hold cannot be read, so the export
        // fails loudly and writes no file.
        old[1].signal("STOP").expect("freeze bravo");
        old[2].signal("STOP").expect("freeze charlie");
        let partial = tmp.path().join("partial.ndjson");
        let out = old[0].cli(["kv", "export", "-o", partial.to_str().expect("path")]);
        old[1].signal("CONT").expect("thaw bravo");
        old[2].signal("CONT").expect("thaw charlie");
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(
            stderr(&out).contains("incomplete export"),
            "{}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("not a usable backup"),
            "{}",
            stderr(&out)
        );
        assert!(!partial.exists(), "no partial file");
        assert_eq!(
            std::fs::read_dir(tmp.path()).expect("ls").count(),
            2,
            "no temporary file left behind"
        );
        exported
    };

    // A new, empty cluster gets the backup.
    let new = cluster(&["delta", "echo", "foxtrot"], KV_CONFIG);
    let out = new[2].cli(["kv", "import", backup.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "import: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("44 imported, 0 skipped"),
        "{}",
        stdout(&out)
    );
    let copy = tmp.path().join("copy.ndjson");
    assert_eq!(
        export(&new[0], &copy),
        exported,
        "every key, value, version, tombstone and expiry"
    );
    let raw = new[1].cli(["kv", "get", "bin/all-bytes", "--raw"]);
    assert_eq!(raw.stdout, binary);
    assert_eq!(
        stdout(&new[0].cli(["kv", "get", "dir/ключ ✓"])),
        "unicode key\n"
    );
    let gone = new[0].cli(["kv", "get", "app/deleted"]);
    assert_eq!(gone.status.code(), Some(2), "deleted stays deleted");

    // Newer writes than the backup's, then the old backup again: the newer values stay.
    for i in 0..5 {
        let path = format!("/kv/app/key-{i:02}");
        assert_eq!(request(&new[i % 3], "PUT", &path, b"newer"), 200);
    }
    assert_eq!(request(&new[1], "DELETE", "/kv/app/key-05", b""), 200);
    let out = new[0].cli(["kv", "import", backup.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "import: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("38 imported, 6 skipped"),
        "{}",
        stdout(&out)
    );
    for i in 0..5 {
        let got = new[(i + 1) % 3].cli(["kv", "get", &format!("app/key-{i:02}")]);
        assert_eq!(stdout(&got), "newer\n", "app/key-{i:02}");
    }
    let deleted = new[2].cli(["kv", "get", "app/key-05"]);
    assert_eq!(deleted.status.code(), Some(2), "{}", stdout(&deleted));
    assert_eq!(
        stdout(&new[2].cli(["kv", "get", "app/key-06"])),
        "value 6\n"
    );
}

/// Run `opsbro --api <agent> kv import` with `input` on standard input.
fn import_stdin(agent: &Agent, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = opsbro_command()
        .args(["--api", &agent.api.to_string(), "kv", "import"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    child.wait_with_output().expect("output")
}

#[test]
fn a_malformed_line_is_reported_with_its_number_and_the_others_are_imported() {
    let agents = cluster(&["solo"], KV_CONFIG);
    let agent = &agents[0];
    // A plausible version (not ahead of the agent's clock): the stamp of a write made now.
    assert_eq!(request(agent, "PUT", "/kv/clock", b"now"), 200);
    let clock: Value =
        serde_json::from_slice(&agent.cli(["kv", "get", "clock", "--json"]).stdout).expect("json");
    let stamp = clock["modify_index"].as_u64().expect("modify_index");
    let now = stamp >> 16;
    let header = format!(r#"{{"format":"opsbro-kv-export","version":1,"created_ms":{now}}}"#);
    let entry = |key: &str, value: &str| {
        format!(
            r#"{{"key":"{key}","value":"{value}","modify_index":{stamp},"create_index":{stamp}}}"#
        )
    };
    let file = [
        header.clone(),
        entry("ok/one", "b25l"),
        String::new(),
        r#"{"key":"broken","#.to_owned(),
        entry("ok/two", "!!not base64"),
        entry("ok/three", "dGhyZWU="),
        r#"{"end":"opsbro-kv-export","entries":4}"#.to_owned(),
    ]
    .join("\n");
    let out = import_stdin(agent, &file);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("line 4: not JSON"), "{err}");
    assert!(err.contains("line 5: value is not base64"), "{err}");
    assert!(err.contains("2 lines were not imported"), "{err}");
    assert!(
        stdout(&out)
            .contains("2 imported, 0 skipped (the cluster holds a newer version), 2 errors"),
        "{}",
        stdout(&out)
    );
    assert_eq!(stdout(&agent.cli(["kv", "get", "ok/one"])), "one\n");
    assert_eq!(stdout(&agent.cli(["kv", "get", "ok/three"])), "three\n");
    assert_eq!(agent.cli(["kv", "get", "ok/two"]).status.code(), Some(2));

    // No end line: what is there is imported, and the file is called partial.
    let cut = [header.clone(), entry("cut/one", "b25l")].join("\n");
    let out = import_stdin(agent, &cut);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("partial export"), "{}", stderr(&out));
    assert_eq!(stdout(&agent.cli(["kv", "get", "cut/one"])), "one\n");

    // Not an export at all: refused before anything is sent.
    let out = import_stdin(agent, &entry("nohead/one", "b25l"));
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("not an export header"),
        "{}",
        stderr(&out)
    );
    let future = header.replace("\"version\":1", "\"version\":9");
    let out = import_stdin(agent, &[future, entry("v9/one", "b25l")].join("\n"));
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("version 9"), "{}", stderr(&out));
    assert_eq!(agent.cli(["kv", "get", "v9/one"]).status.code(), Some(2));
}

#[test]
fn a_snapshot_saved_while_running_restores_keys_and_uuid_into_a_fresh_data_dir() {
    let tmp = tempfile::tempdir().expect("tmp");
    let snapshot = tmp.path().join("node.snapshot");
    let snapshot_arg = snapshot.to_str().expect("path").to_owned();
    let binary: Vec<u8> = (0..=255).rev().collect();
    let (uuid, saved_dir) = {
        let agents = cluster(&["original"], KV_CONFIG);
        let a = &agents[0];
        assert_eq!(request(a, "PUT", "/kv/snap/text", b"kept"), 200);
        assert_eq!(request(a, "PUT", "/kv/snap/binary", &binary), 200);
        let out = a.cli(["agent", "groups", "add", "restored-group"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let uuid = stdout(&a.cli(["agent", "print", "uuid"])).trim().to_owned();

        let out = a.cli(["agent", "snapshot", "save", &snapshot_arg]);
        assert!(out.status.success(), "save: {}", stderr(&out));
        assert!(stdout(&out).contains(&uuid), "{}", stdout(&out));
        assert!(
            stdout(&out).contains("static-groups.json"),
            "{}",
            stdout(&out)
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&snapshot)
                .expect("snapshot")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the snapshot is private");

        // Restoring into the data dir of the running agent is refused, and changes nothing.
        let out = opsbro_command()
            .args(["agent", "snapshot", "restore", &snapshot_arg, "--data-dir"])
            .arg(&a.data_dir)
            .args(["--force"])
            .output()
            .expect("restore");
        assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
        assert!(
            stderr(&out).contains("is running with data dir"),
            "{}",
            stderr(&out)
        );
        assert_eq!(stdout(&a.cli(["kv", "get", "snap/text"])), "kept\n");
        (uuid, a.data_dir.clone())
    };
    assert!(!saved_dir.exists(), "the first agent's data dir is gone");

    let fresh = tmp.path().join("fresh-data");
    let out = opsbro_command()
        .args(["agent", "snapshot", "restore", &snapshot_arg, "--data-dir"])
        .arg(&fresh)
        .output()
        .expect("restore");
    assert!(out.status.success(), "restore: {}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("node uuid: {uuid} (the snapshot's)")),
        "{}",
        stdout(&out)
    );
    // Once there, a second restore must be asked for.
    let out = opsbro_command()
        .args(["agent", "snapshot", "restore", &snapshot_arg, "--data-dir"])
        .arg(&fresh)
        .output()
        .expect("restore");
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));

    let agent = Agent::start_with(
        AgentOptions::default()
            .name("restored")
            .config(KV_CONFIG)
            .data_dir(&fresh),
    )
    .expect("agent on the restored data dir");
    assert_eq!(stdout(&agent.cli(["agent", "print", "uuid"])).trim(), uuid);
    wait_for("the restored keys", DEADLINE, || {
        (stdout(&agent.cli(["kv", "get", "snap/text"])) == "kept\n").then_some(())
    })
    .expect("restored key");
    assert_eq!(
        agent.cli(["kv", "get", "snap/binary", "--raw"]).stdout,
        binary
    );
    let groups = info(&agent)["groups"].clone();
    assert!(
        groups
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "restored-group")),
        "{groups}"
    );
}
