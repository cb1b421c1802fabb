//! Day-2 operations: the agent's log file (rotation, retention) and `opsbro agent log follow`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use opsbro_tests::{Agent, AgentOptions, DEADLINE, http, opsbro_command, stderr, wait_for};

/// Make the agent log one INFO line ("user event sent").
fn log_something(agent: &Agent, kind: &str) {
    let out = agent.cli(["gossip", "events", "add", kind]);
    assert!(out.status.success(), "events add: {}", stderr(&out));
}

/// Rotated files of `agent.log` in `dir` (`agent.log.<stamp>`).
fn rotated(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    n.strip_prefix("agent.log.")
                        .is_some_and(|s| s.starts_with(|c: char| c.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_log_file_is_rotated_and_old_files_are_deleted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("logs");
    let file = dir.join("agent.log");
    let agent = Agent::start_with(
        AgentOptions::default()
            .name("day2-logs")
            .config(&format!("log_file: {}\nlog_keep_days: 2\n", file.display()))
            // Rotate every second instead of every day (the original opsbro's variable).
            .env("FORCE_LOG_ROTATION_PERIOD", "1"),
    )
    .expect("agent");
    // stderr keeps the log as before.
    wait_for("the start line on stderr", DEADLINE, || {
        agent.log().contains("agent started").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", agent.log()));
    let mut seen = BTreeSet::new();
    let mut polls = 0u32;
    let deleted = wait_for(
        "rotated files, and the oldest deleted",
        Duration::from_secs(60),
        || {
            // A line every few polls (about 300 ms): rotation happens when a line is written.
            if polls.is_multiple_of(6) {
                log_something(&agent, "day2-rotate");
            }
            polls += 1;
            let now = rotated(&dir);
            seen.extend(now.iter().cloned());
            let gone: Vec<String> = seen.difference(&now).cloned().collect();
            (seen.len() >= 4 && !gone.is_empty() && now.len() <= 2).then_some((gone, now))
        },
    );
    let (gone, now) =
        deleted.unwrap_or_else(|e| panic!("{e}: seen {seen:?}, now {:?}", rotated(&dir)));
    // The oldest went first.
    let oldest_kept = now.iter().next().expect("a rotated file");
    assert!(gone.iter().all(|g| g < oldest_kept), "{gone:?} vs {now:?}");
    // Rotated files hold log lines, named after the second they started (UTC).
    let name = now.iter().next_back().expect("newest");
    let stamp = name.strip_prefix("agent.log.").expect("prefix");
    assert_eq!(stamp.len(), "YYYY-MM-DD_HH-MM-SS".len(), "{name}");
    let live = std::fs::read_to_string(&file).expect("the live file");
    let all: String = now
        .iter()
        .map(|n| std::fs::read_to_string(dir.join(n)).unwrap_or_default())
        .collect::<String>()
        + &live;
    assert!(all.contains("user event sent"), "{all}");
    assert!(
        !all.contains('\u{1b}'),
        "no colour codes in the file: {all}"
    );
}

#[test]
fn log_follow_streams_the_agents_lines_and_needs_the_token() {
    let agent = Agent::start_with(AgentOptions::default().name("day2-follow")).expect("agent");
    // Not an anonymous read: the log may say more than the public routes do.
    let refused = http(agent.api, "GET", "/agent/log/follow", &[], b"").expect("http");
    assert_eq!(refused.status, 401, "{}", refused.body);
    let out = agent.cli(["agent", "log", "follow", "--level", "loud"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let mut child = opsbro_command()
        .arg("--api")
        .arg(agent.api.to_string())
        .args(["agent", "log", "follow", "--level", "info"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn log follow");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The follower may not be connected yet when a line is logged: log until one arrives.
    let mut got = Vec::new();
    let found = wait_for("the event line in `agent log follow`", DEADLINE, || {
        log_something(&agent, "day2-follow-marker");
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let hit = line.contains("user event sent") && line.contains("day2-follow-marker");
            got.push(line.clone());
            if hit {
                return Some(line);
            }
        }
        None
    });
    let _ = child.kill();
    let status = child.wait().expect("reaped");
    let line = found.unwrap_or_else(|e| panic!("{e}: {got:?} (exit {status})"));
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains("opsbro_agent::gossip"), "{line}");
}
