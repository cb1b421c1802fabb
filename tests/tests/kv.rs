//! Issue 8: the replicated KV store with real agents on loopback: any node reads and writes,
//! data lives on 3 nodes, an owner killed with `kill -9` loses no acknowledged write, a deleted
//! key stays deleted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opsbro_tests::{Agent, AgentOptions, DEADLINE, http, stderr, stdout, wait_for};
use serde_json::Value;

/// Agents re-check their replicas every second in these tests (default 30 s).
const KV_CONFIG: &str = "kv:\n  anti_entropy_interval: 1s\n";

fn options(name: &str) -> AgentOptions {
    AgentOptions::default().name(name).config(KV_CONFIG)
}

fn info(agent: &Agent) -> Value {
    serde_json::from_slice(&agent.cli(["agent", "info", "--json"]).stdout).unwrap_or_default()
}

fn wait_ring(agents: &[&Agent], n: u64) {
    for a in agents {
        wait_for(&format!("a KV ring of {n} nodes"), DEADLINE, || {
            (info(a)["kv"]["ring_nodes"] == n).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {:#}", info(a)["kv"]));
    }
}

/// Start `names` as one cluster (all join the first) and wait until every ring has them all.
fn cluster(names: &[&str]) -> Vec<Agent> {
    let agents: Vec<Agent> = names
        .iter()
        .map(|n| Agent::start_with(options(n)).expect("agent"))
        .collect();
    for a in &agents[1..] {
        let out = a.cli(["gossip", "join", &agents[0].gossip.to_string()]);
        assert!(out.status.success(), "join: {}", stderr(&out));
    }
    let refs: Vec<&Agent> = agents.iter().collect();
    wait_ring(&refs, names.len() as u64);
    agents
}

fn put(agent: &Agent, key: &str, value: &[u8]) -> u16 {
    http(
        agent.api,
        "PUT",
        &format!("/kv/{key}"),
        &[&agent.auth()],
        value,
    )
    .map(|a| a.status)
    .unwrap_or(0)
}

fn get_raw(agent: &Agent, key: &str) -> Option<String> {
    let a = http(
        agent.api,
        "GET",
        &format!("/kv/{key}?raw"),
        &[&agent.auth()],
        b"",
    )
    .ok()?;
    (a.status == 200).then_some(a.body)
}

#[test]
fn three_agents_share_keys_with_cas_ttl_blocking_reads_and_limits() {
    let agents = cluster(&["alpha", "bravo", "charlie"]);
    let (a, b, c) = (&agents[0], &agents[1], &agents[2]);

    let out = a.cli(["kv", "put", "app/config", "hello world"]);
    assert!(out.status.success(), "put: {}", stderr(&out));
    for other in [b, c] {
        let out = other.cli(["kv", "get", "app/config"]);
        assert!(out.status.success(), "get: {}", stderr(&out));
        assert_eq!(stdout(&out), "hello world\n");
    }
    let loc: Value =
        serde_json::from_slice(&c.cli(["kv", "locate", "app/config", "--json"]).stdout)
            .expect("locate json");
    let mut owners: Vec<String> = loc["owners"]
        .as_array()
        .expect("owners")
        .iter()
        .map(|o| o["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    owners.sort();
    assert_eq!(
        owners,
        ["alpha", "bravo", "charlie"],
        "three distinct owners"
    );
    assert!(stdout(&c.cli(["kv", "locate", "app/config"])).contains("coordinator"));
    let alias = b.cli(["kv-store", "get", "app/config"]);
    assert_eq!(
        stdout(&alias),
        "hello world\n",
        "kv-store is an alias of kv"
    );
    assert!(stdout(&a.cli(["agent", "info"])).contains("ring of 3 nodes"));

    // CAS: a stale index is refused with 409, the current one wins.
    let entry: Value = serde_json::from_slice(&b.cli(["kv", "get", "app/config", "--json"]).stdout)
        .expect("entry");
    let index = entry["modify_index"].as_u64().expect("index");
    let stale = c.cli([
        "kv",
        "put",
        "app/config",
        "x",
        "--cas",
        &(index - 1).to_string(),
    ]);
    assert_eq!(stale.status.code(), Some(2), "{}", stdout(&stale));
    assert!(
        stderr(&stale).contains("409") && stderr(&stale).contains("CAS"),
        "{}",
        stderr(&stale)
    );
    let fresh = c.cli(["kv", "put", "app/config", "v2", "--cas", &index.to_string()]);
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    assert_eq!(get_raw(a, "app/config").as_deref(), Some("v2"));
    let create_only =
        http(a.api, "PUT", "/kv/app/config?cas=0", &[&a.auth()], b"v3").expect("http");
    assert_eq!(create_only.status, 409, "{}", create_only.body);

    // Raw bytes and stdin.
    let mut child = opsbro_tests::opsbro_command()
        .args(["--api", &b.api.to_string(), "kv", "put", "bin/blob", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"line 1\nline 2\n").expect("write");
    }
    assert!(child.wait().expect("wait").success());
    assert_eq!(
        stdout(&a.cli(["kv", "get", "bin/blob", "--raw"])),
        "line 1\nline 2\n"
    );

    // TTL.
    let out = a.cli(["kv", "put", "tmp/lease", "mine", "--ttl", "1s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the TTL key to expire", DEADLINE, || {
        get_raw(c, "tmp/lease").is_none().then_some(())
    })
    .expect("expired");

    // A blocking read answers when the key is written.
    let api = c.api;
    let waiter = std::thread::spawn(move || {
        opsbro_tests::opsbro_command()
            .args([
                "--api",
                &api.to_string(),
                "kv",
                "wait-exists",
                "later/key",
                "--timeout",
                "30",
            ])
            .output()
            .expect("wait-exists")
    });
    wait_for("the blocking read to be waiting", DEADLINE, || {
        // The waiter is parked on the coordinator; give it the key once it is (we cannot see
        // it, so just make sure the CLI had time to start by asking the agent something).
        a.cli(["agent", "state"]).status.success().then_some(())
    })
    .expect("agent");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(put(a, "later/key", b"now"), 200);
    let out = waiter.join().expect("thread");
    assert!(out.status.success(), "wait-exists: {}", stderr(&out));
    assert!(
        stdout(&out).contains("later/key exists"),
        "{}",
        stdout(&out)
    );
    let missing = b.cli(["kv", "wait-exists", "never/there", "--timeout", "1"]);
    assert_eq!(missing.status.code(), Some(2));

    // Limits and bad keys.
    let big = vec![b'x'; 600 * 1024];
    let answer = http(a.api, "PUT", "/kv/too/big", &[&a.auth()], &big).expect("http");
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert!(answer.body.contains("512 KiB"), "{}", answer.body);
    for (path, why) in [
        ("/kv/a/%2E%2E/b", "`..` segment"),
        ("/kv/a//b", "empty segment"),
        ("/kv/bad%0Akey", "control character"),
    ] {
        let answer = http(a.api, "PUT", path, &[&a.auth()], b"v").expect("http");
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert!(answer.body.contains(why), "{path}: {}", answer.body);
    }

    // List and delete.
    let listed = stdout(&b.cli(["kv", "list", "app/"]));
    assert_eq!(listed, "app/config\n");
    let out = b.cli(["kv", "delete", "app/config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gone = c.cli(["kv", "get", "app/config"]);
    assert_eq!(gone.status.code(), Some(2), "{}", stdout(&gone));
    assert!(stderr(&gone).contains("404"), "{}", stderr(&gone));
}

#[test]
fn acknowledged_writes_survive_kill_9_of_an_owner_and_come_back_after_restart() {
    let mut agents = cluster(&["alpha", "bravo", "charlie", "delta"]);
    let writes = 2000;
    let key = |i: usize| format!("load/k{i:04}");

    // The node (not alpha, which takes the writes) that coordinates the most keys.
    let mut coordinated: HashMap<String, usize> = HashMap::new();
    for i in (0..writes).step_by(10) {
        let loc = http(
            agents[0].api,
            "GET",
            &format!("/kv/{}?locate", key(i)),
            &[&agents[0].auth()],
            b"",
        )
        .expect("locate");
        let v: Value = serde_json::from_str(&loc.body).expect("json");
        let first = v["owners"][0]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *coordinated.entry(first).or_default() += 1;
    }
    coordinated.remove("alpha");
    let victim_name = coordinated
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(n, _)| n.clone())
        .expect("victim");
    let victim = agents
        .iter()
        .position(|a| info(a)["name"] == victim_name.as_str())
        .expect("victim index");

    // Stream writes through alpha; kill -9 the victim a quarter of the way in.
    let acked: Arc<std::sync::Mutex<BTreeMap<usize, String>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (api, acked, done) = (agents[0].api, acked.clone(), done.clone());
        let auth = agents[0].auth();
        std::thread::spawn(move || {
            for i in 0..writes {
                let value = format!("value-{i}");
                let ok = http(
                    api,
                    "PUT",
                    &format!("/kv/load/k{i:04}"),
                    &[&auth],
                    value.as_bytes(),
                )
                .is_ok_and(|a| a.status == 200);
                if ok {
                    acked.lock().expect("lock").insert(i, value);
                }
                done.store(i + 1, Ordering::SeqCst);
            }
        })
    };
    wait_for("a quarter of the writes", DEADLINE, || {
        (done.load(Ordering::SeqCst) >= writes / 4).then_some(())
    })
    .expect("progress");
    agents[victim].signal("KILL").expect("kill -9");
    let _ = agents[victim].wait_exit(DEADLINE);
    writer.join().expect("writer");
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > writes * 9 / 10,
        "most writes are acknowledged even while an owner dies ({} of {writes})",
        acked.len()
    );

    // Once the cluster knows, every acknowledged key reads back from the survivors.
    let survivors: Vec<usize> = (0..agents.len()).filter(|i| *i != victim).collect();
    for &s in &survivors {
        let out = agents[s].cli(["gossip", "wait-members", "--count", "3", "--timeout", "30"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let check_all = |reader: &Agent| {
        let mut wrong = Vec::new();
        for (i, value) in &acked {
            if get_raw(reader, &key(*i)).as_deref() != Some(value.as_str()) {
                wrong.push(key(*i));
            }
        }
        wrong
    };
    for &s in &survivors {
        let wrong = check_all(&agents[s]);
        assert!(
            wrong.is_empty(),
            "{} acknowledged keys lost on {}: {:?}",
            wrong.len(),
            info(&agents[s])["name"],
            &wrong[..wrong.len().min(10)]
        );
    }

    // Restart it (same data dir): it rejoins, gets the keys it owns handed back.
    let data_dir = agents[victim].data_dir.clone();
    let _keep = agents[victim].keep_dir();
    let seed = agents[0].gossip.to_string();
    agents[victim] = Agent::start_with(
        options(&victim_name)
            .data_dir(&data_dir)
            .args(["--seed", seed.as_str()]),
    )
    .expect("restart");
    let refs: Vec<&Agent> = agents.iter().collect();
    wait_ring(&refs, 4);
    // How many of the keys it owns now: it must end up holding every one of them.
    let owned = acked
        .keys()
        .filter(|i| {
            let loc = http(
                agents[0].api,
                "GET",
                &format!("/kv/{}?locate", key(**i)),
                &[&agents[0].auth()],
                b"",
            )
            .expect("locate");
            loc.body.contains(&format!("\"name\":\"{victim_name}\""))
        })
        .count();
    wait_for(
        "the handoff back to the restarted node",
        Duration::from_secs(60),
        || {
            let n = info(&agents[victim])["kv"]["local_entries"].as_u64()? as usize;
            (n >= owned).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: it owns {owned}; {:#}", info(&agents[victim])["kv"]));
    let wrong = check_all(&agents[victim]);
    assert!(
        wrong.is_empty(),
        "{} keys wrong through the restarted node",
        wrong.len()
    );

    // Proof that the data is really back on it: kill two other nodes; every key still has an
    // owner among alpha and the restarted node, and only the handoff could have put it there.
    let others: Vec<usize> = survivors.iter().copied().filter(|i| *i != 0).collect();
    for &o in &others {
        agents[o].signal("KILL").expect("kill");
        let _ = agents[o].wait_exit(DEADLINE);
    }
    for a in [0, victim] {
        let out = agents[a].cli(["gossip", "wait-members", "--count", "2", "--timeout", "30"]);
        assert!(out.status.success());
        wait_for("members to be declared dead", DEADLINE, || {
            (info(&agents[a])["gossip"]["members"]["alive"] == 2).then_some(())
        })
        .expect("dead");
    }
    wait_ring(&[&agents[0], &agents[victim]], 2);
    let wrong = check_all(&agents[0]);
    assert!(
        wrong.is_empty(),
        "{} keys lost with only alpha and the restarted node: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
}

#[test]
fn a_deleted_key_does_not_come_back_with_a_node_that_missed_the_delete() {
    let mut agents = cluster(&["alpha", "bravo", "charlie"]);
    assert_eq!(put(&agents[0], "gone/soon", b"old"), 200);
    wait_for("the value on charlie", DEADLINE, || {
        (get_raw(&agents[2], "gone/soon").as_deref() == Some("old")).then_some(())
    })
    .expect("replicated");
    let data_dir = agents[2].data_dir.clone();
    let _keep = agents[2].keep_dir();
    agents[2].signal("KILL").expect("kill");
    let _ = agents[2].wait_exit(DEADLINE);
    wait_ring(&[&agents[0], &agents[1]], 2);
    let out = agents[0].cli(["kv", "delete", "gone/soon"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let seed = agents[0].gossip.to_string();
    agents[2] = Agent::start_with(
        options("charlie")
            .data_dir(&data_dir)
            .args(["--seed", seed.as_str()]),
    )
    .expect("restart");
    let refs: Vec<&Agent> = agents.iter().collect();
    wait_ring(&refs, 3);
    // Anti-entropy (every second here): the only thing newer than charlie's copy is the
    // tombstone, so anything it receives after its restart is that.
    wait_for("charlie to take the tombstone", DEADLINE, || {
        (info(&agents[2])["kv"]["received"].as_u64()? > 0).then_some(())
    })
    .expect("tombstone received onto charlie");
    std::thread::sleep(Duration::from_secs(3));
    for a in &agents {
        assert_eq!(
            get_raw(a, "gone/soon"),
            None,
            "the key came back on {}",
            info(a)["name"]
        );
    }
    let listed = stdout(&agents[2].cli(["kv", "list", "gone/"]));
    assert!(listed.is_empty(), "{listed}");
}

#[test]
fn a_write_that_cannot_reach_enough_replicas_is_refused_with_503() {
    // Every copy must be durable, and failures are noticed slowly (10 s probes): a frozen owner
    // stays on the ring while writes wait for it.
    let config = "kv:\n  write_acks: all\ngossip:\n  probe_interval: 10s\n  probe_timeout: 5s\n";
    let agents: Vec<Agent> = ["alpha", "bravo", "charlie"]
        .iter()
        .map(|n| Agent::start_with(AgentOptions::default().name(n).config(config)).expect("agent"))
        .collect();
    for a in &agents[1..] {
        let out = a.cli(["gossip", "join", &agents[0].gossip.to_string()]);
        assert!(out.status.success(), "join: {}", stderr(&out));
    }
    let refs: Vec<&Agent> = agents.iter().collect();
    wait_ring(&refs, 3);
    assert_eq!(put(&agents[0], "all/three", b"ok"), 200);

    // Under a loaded machine a probe of charlie may fail just before the freeze: a suspect
    // owner leaves alpha's ring, and a write to the two left is rightly acknowledged. Such a
    // try says nothing about a frozen owner on the ring: thaw, wait for the full ring, again.
    let mut tries = 0;
    let answer = loop {
        tries += 1;
        agents[2].signal("STOP").expect("freeze charlie");
        let answer = http(
            agents[0].api,
            "PUT",
            "/kv/all/three",
            &[&agents[0].auth()],
            b"frozen",
        )
        .expect("http");
        let ring = info(&agents[0])["kv"]["ring_nodes"].clone();
        agents[2].signal("CONT").expect("thaw charlie");
        if answer.status == 200 && ring != 3 && tries < 5 {
            wait_ring(&refs, 3);
            continue;
        }
        break answer;
    };
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer.body.contains("not enough replicas"),
        "{}",
        answer.body
    );
    // Once it answers again, writes are acknowledged again.
    wait_for("writes to succeed again", DEADLINE, || {
        (put(&agents[0], "all/three", b"thawed") == 200).then_some(())
    })
    .expect("thawed");
    assert_eq!(get_raw(&agents[1], "all/three").as_deref(), Some("thawed"));
}
