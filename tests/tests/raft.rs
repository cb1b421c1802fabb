//! Issue 29 (locks and elections on Raft) on real (virtual) hosts: five agents in network
//! namespaces. `opsbro lock` of one name on two hosts runs the commands one after the other;
//! a holder cut off from the others loses the lock (its command is stopped) and another host
//! takes it; the two hosts of a 2/3 partition cannot take a lock while the three can; an
//! `election:` object elects one leader and moves when it goes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use opsbro_tests::netns::Lan;
use opsbro_tests::{opsbro_bin, stdout, wait_for};

const N: usize = 5;

fn out(o: &std::process::Output) -> String {
    format!("{}{}", stdout(o), String::from_utf8_lossy(&o.stderr))
}

/// `opsbro ARGS` on host `i`, in the background.
fn spawn(lan: &Lan, i: usize, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &lan.hosts[i].ns])
        .arg(opsbro_bin())
        .args(args)
        .env_remove("OPSBRO_API")
        .env_remove("OPSBRO_API_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn opsbro")
}

fn raft_state(lan: &Lan, i: usize) -> serde_json::Value {
    serde_json::from_slice(&lan.cli(i, &["raft", "state", "--json"]).stdout).unwrap_or_default()
}

/// Wait until host `i` sees a leader and `voters` voters.
fn wait_group(lan: &Lan, i: usize, voters: usize) {
    wait_for(
        &format!("host{i} to see a leader and {voters} voters"),
        Duration::from_secs(60),
        || {
            let s = raft_state(lan, i);
            (s["leader"].is_string() && s["voters"].as_array().map(Vec::len) == Some(voters))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", raft_state(lan, i)));
}

/// (host, start ns, end ns, token) of each line pair `<host> start|end <ns> <token>` in `file`.
fn intervals(file: &Path) -> Vec<(String, u128, u128, u64)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut open: std::collections::HashMap<String, (u128, u64)> = Default::default();
    let mut done = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [host, what, ns, token] = parts[..] else {
            continue;
        };
        let (ns, token): (u128, u64) = (ns.parse().expect("ns"), token.parse().expect("token"));
        match what {
            "start" => {
                open.insert(host.to_owned(), (ns, token));
            }
            "end" => {
                let (start, t) = open.remove(host).expect("an end after a start");
                assert_eq!(t, token, "one token per run");
                done.push((host.to_owned(), start, ns, token));
            }
            _ => {}
        }
    }
    done.sort_by_key(|x| x.1);
    done
}

#[test]
fn locks_are_exclusive_fail_over_from_a_cut_holder_and_need_a_majority() {
    let mut lan = Lan::new(N).expect("lan");
    let seed = format!("seeds: [\"{}:6768\"]\n", lan.hosts[0].ip);
    let work = tempfile::tempdir().expect("tmp");
    // An election every host takes part in; the leader writes its name.
    let elections = work.path().join("objects.d");
    std::fs::create_dir_all(&elections).expect("mkdir");
    let leader_file = work.path().join("leader");
    std::fs::write(
        elections.join("primary.yml"),
        format!(
            "election:\n  name: primary\n  ttl: 6s\n  command_on_leader: \"echo $OPSBRO_LEADER $OPSBRO_LOCK_TOKEN >> {}\"\n",
            leader_file.display()
        ),
    )
    .expect("election");
    for i in 0..N {
        let config = format!(
            "{}objects_dirs: [\"{}\"]\n",
            if i == 0 { "" } else { &seed },
            elections.display()
        );
        lan.start_agent(i, &config, &[]).expect("agent");
    }
    let all: Vec<usize> = (0..N).collect();
    lan.wait_all_see(&all, &all, "alive", Duration::from_secs(30))
        .expect("everyone alive");
    for i in 0..N {
        wait_group(&lan, i, N);
    }

    // 1. The same lock on two hosts, three times each: the runs never overlap and each new
    //    holder has a larger fencing token.
    let log = work.path().join("runs");
    let script = |host: usize| {
        format!(
            "echo host{host} start $(date +%s%N) $OPSBRO_LOCK_TOKEN >> {0}; sleep 0.4; echo host{host} end $(date +%s%N) $OPSBRO_LOCK_TOKEN >> {0}",
            log.display()
        )
    };
    let mut children = Vec::new();
    for _ in 0..3 {
        for host in [1usize, 2] {
            children.push(spawn(
                &lan,
                host,
                &["lock", "--wait", "60s", "shared", "--", &script(host)],
            ));
        }
    }
    for c in children {
        let o = c.wait_with_output().expect("lock run");
        assert!(o.status.success(), "{}", out(&o));
    }
    let runs = intervals(&log);
    assert_eq!(runs.len(), 6, "{runs:?}");
    for w in runs.windows(2) {
        assert!(
            w[0].2 <= w[1].1,
            "{} held `shared` until {} but {} started at {}",
            w[0].0,
            w[0].2,
            w[1].0,
            w[1].1
        );
        assert!(w[0].3 < w[1].3, "tokens must grow: {runs:?}");
    }
    // The exit code of the command is the CLI's.
    let o = lan.cli(3, &["lock", "code", "--", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", out(&o));

    // 2. A holder cut off from everyone: its command is stopped, another host takes the lock.
    let marks = work.path().join("cut");
    let holder_cmd = format!(
        "trap 'echo stopped >> {0}; exit 0' TERM; echo started $OPSBRO_LOCK_TOKEN >> {0}; while true; do sleep 0.1; done",
        marks.display()
    );
    let mut holder = spawn(&lan, 3, &["lock", "--ttl", "6s", "job", "--", &holder_cmd]);
    wait_for(
        "the holder's command to start",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&marks)
                .ok()
                .filter(|t| t.contains("started"))
        },
    )
    .expect("started");
    let others = [0usize, 1, 2, 4];
    lan.partition(&[3], &others).expect("cut host3");
    let cut_at = std::time::Instant::now();
    let o = lan.cli(
        0,
        &[
            "lock",
            "--wait",
            "60s",
            "job",
            "--",
            "echo $OPSBRO_LOCK_TOKEN",
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    let taken_after = cut_at.elapsed();
    let token: u64 = stdout(&o).trim().parse().expect("token");
    let first: u64 = std::fs::read_to_string(&marks)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("started ")?.trim().parse().ok())
        .expect("first token");
    assert!(token > first, "{token} after {first}");
    // Within the documented time: gossip declares the holder dead (or its TTL runs out).
    assert!(taken_after < Duration::from_secs(30), "{taken_after:?}");
    wait_for(
        "the cut holder's command to be stopped",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&marks)
                .ok()
                .filter(|t| t.contains("stopped"))
        },
    )
    .expect("stopped");
    let status = wait_for(
        "the cut holder's CLI to exit",
        Duration::from_secs(30),
        || holder.try_wait().ok().flatten(),
    )
    .expect("exit");
    assert!(!status.success(), "the CLI says the lock was lost");
    lan.heal(&[3], &others).expect("heal");
    lan.wait_all_see(&all, &all, "alive", Duration::from_secs(60))
        .expect("host3 back");
    for i in 0..N {
        wait_group(&lan, i, N);
    }

    // 3. A 2/3 partition: the two cannot take a lock, the three can.
    let (minority, majority) = ([0usize, 1], [2usize, 3, 4]);
    lan.partition(&minority, &majority).expect("partition");
    let o = lan.cli(2, &["lock", "--wait", "45s", "majority", "--", "true"]);
    assert!(
        o.status.success(),
        "the majority side: {}\n{:#?}",
        out(&o),
        (0..N).map(|i| raft_state(&lan, i)).collect::<Vec<_>>()
    );
    for i in minority {
        let o = lan.cli(i, &["lock", "--wait", "8s", "minority", "--", "echo ran"]);
        assert!(
            !o.status.success(),
            "host{i} took a lock without a majority: {}",
            out(&o)
        );
        assert!(!stdout(&o).contains("ran"), "{}", out(&o));
    }
    lan.heal(&minority, &majority).expect("heal");

    // 4. The election has one leader, which ran its command; is_leader() agrees.
    let leader = wait_for("a leader of `primary`", Duration::from_secs(30), || {
        let o = lan.cli(4, &["election", "wait-leader", "primary", "--timeout", "1"]);
        o.status.success().then(|| stdout(&o).trim().to_owned())
    })
    .expect("leader");
    let idx: usize = leader
        .trim_start_matches("host")
        .parse()
        .expect("host index");
    for i in 0..N {
        let o = lan.cli(i, &["evaluator", "eval", "is_leader('primary')"]);
        let want = if i == idx { "true" } else { "false" };
        wait_for(
            &format!("host{i} is_leader = {want}"),
            Duration::from_secs(15),
            || {
                (stdout(&lan.cli(i, &["evaluator", "eval", "is_leader('primary')"])).trim() == want)
                    .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}: {}", out(&o)));
    }
    wait_for("the leader's command", Duration::from_secs(15), || {
        std::fs::read_to_string(&leader_file)
            .ok()
            .filter(|t| t.contains(&leader))
    })
    .expect("command_on_leader ran");
    // The leader goes away: another is elected.
    lan.stop_agent(idx);
    let next = (idx + 1) % N;
    let new_leader = wait_for("a new leader of `primary`", Duration::from_secs(60), || {
        let o = lan.cli(next, &["election", "state", "primary", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        let l = v.get(0)?.get("leader")?.as_str()?.to_owned();
        (l != leader).then_some(l)
    })
    .expect("new leader");
    assert_ne!(new_leader, leader);
}

#[test]
fn two_groups_started_apart_become_one_when_their_clusters_join() {
    use opsbro_tests::{Agent, AgentOptions};
    let start = |name: &str| Agent::start_with(AgentOptions::default().name(name)).expect("agent");
    let (a, b) = (start("alone-a"), start("alone-b"));
    let state = |agent: &Agent| -> serde_json::Value {
        serde_json::from_slice(&agent.cli(["raft", "state", "--json"]).stdout).unwrap_or_default()
    };
    // Each one alone starts its own group and takes a lock in it.
    for (agent, name) in [(&a, "alone-a"), (&b, "alone-b")] {
        let o = agent.cli(["raft", "wait-leader", "--timeout", "30"]);
        assert_eq!(stdout(&o).trim(), name, "{}", out(&o));
        let o = agent.cli(["lock", "solo", "--", "true"]);
        assert!(o.status.success(), "{}", out(&o));
    }
    let o = b.cli(["gossip", "join", &a.gossip.to_string()]);
    assert!(o.status.success(), "{}", out(&o));
    // One group: both see the same leader and both voters.
    wait_for(
        "one Raft group of two voters",
        Duration::from_secs(60),
        || {
            let (sa, sb) = (state(&a), state(&b));
            (sa["leader"].is_string()
                && sa["leader"] == sb["leader"]
                && sa["voters"].as_array().map(Vec::len) == Some(2)
                && sb["voters"].as_array().map(Vec::len) == Some(2))
            .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {} / {}", state(&a), state(&b)));
    // And it grants: a lock held through one is refused through the other.
    let mut held = opsbro_tests::opsbro_command()
        .args([
            "--api",
            &a.api.to_string(),
            "lock",
            "merged",
            "--",
            "sleep 5",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("hold");
    wait_for("the lock held", Duration::from_secs(30), || {
        let o = b.cli(["raft", "locks", "--json"]);
        stdout(&o).contains("\"merged\"").then_some(())
    })
    .expect("held");
    let o = b.cli(["lock", "merged", "--", "echo ran"]);
    assert!(!o.status.success(), "{}", out(&o));
    assert!(!stdout(&o).contains("ran"));
    let _ = held.wait();
}
