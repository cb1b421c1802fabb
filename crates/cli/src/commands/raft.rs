//! `opsbro lock NAME -- COMMAND`, `opsbro raft state|locks|wait-leader`, `opsbro election
//! state|wait-leader`: locks and leader elections on the cluster's Raft group.

use std::os::unix::process::CommandExt as _;
use std::time::{Duration, Instant};

use opsbro_api::raft::{
    ELECTIONS, ElectionState, HOLD, HoldLine, LOCKS, LockInfo, RaftState, STATE,
};

use crate::client::Client;
use crate::error::CliError;

/// How long a command gets to stop after SIGTERM when the lock is lost, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What `opsbro lock` does.
pub struct LockArgs {
    /// Lock name.
    pub name: String,
    /// The command (one word: run by `/bin/sh -c`; more: run as is).
    pub command: Vec<String>,
    /// TTL of the lock.
    pub ttl: String,
    /// How long to wait for it.
    pub wait: String,
}

fn path_of(name: &str) -> String {
    name.split('/')
        .map(|part| {
            part.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Read NDJSON lines of a hold.
struct Lines {
    response: reqwest::Response,
    pending: Vec<u8>,
}

impl Lines {
    async fn next(&mut self) -> Result<Option<HoldLine>, String> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.pending.drain(..=end).collect();
                return serde_json::from_slice(&raw).map(Some).map_err(|e| {
                    format!("the agent sent a line this CLI does not understand ({e})")
                });
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.pending.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => return Err(format!("the connection to the agent broke: {e}")),
            }
        }
    }
}

/// `opsbro lock NAME -- COMMAND...`: hold the lock while the command runs; stop the command
/// when the lock is lost. Exits with the command's code.
pub async fn lock(client: &Client, args: LockArgs) -> Result<(), CliError> {
    if args.command.is_empty() {
        return Err(CliError::Usage("give the command to run after `--`".into()));
    }
    let path = HOLD.replace("{*name}", &path_of(&args.name));
    let query = format!("{path}?ttl={}&wait={}", args.ttl, args.wait);
    let response = client.post_stream(&query, &serde_json::json!({})).await?;
    let mut lines = Lines {
        response,
        pending: Vec::new(),
    };
    let granted = loop {
        match lines
            .next()
            .await
            .map_err(|e| CliError::Other(anyhow::anyhow!(e)))?
        {
            Some(HoldLine::Waiting { holder }) => eprintln!(
                "waiting for `{}`: held by {} (token {})",
                args.name, holder.node, holder.token
            ),
            Some(HoldLine::Acquired(g)) => break g,
            Some(HoldLine::Failed { reason }) => {
                return Err(CliError::Negative(format!("lock not taken: {reason}")));
            }
            Some(HoldLine::Lost { reason }) => {
                return Err(CliError::Negative(format!("lock lost: {reason}")));
            }
            None => {
                return Err(CliError::Other(anyhow::anyhow!(
                    "the agent closed the connection before the lock was taken"
                )));
            }
        }
    };
    let mut command = if args.command.len() == 1 {
        let mut c = std::process::Command::new("/bin/sh");
        c.arg("-c").arg(&args.command[0]);
        c
    } else {
        let mut c = std::process::Command::new(&args.command[0]);
        c.args(&args.command[1..]);
        c
    };
    command
        .env("OPSBRO_LOCK_NAME", &granted.name)
        .env("OPSBRO_LOCK_TOKEN", granted.token.to_string())
        .env("OPSBRO_LOCK_SESSION", &granted.session)
        .process_group(0);
    let mut child = tokio::process::Command::from(command)
        .spawn()
        .map_err(|e| CliError::Usage(format!("cannot run `{}`: {e}", args.command.join(" "))))?;
    let pgid = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32));
    let signal_group = |sig: rustix::process::Signal| {
        if let Some(pgid) = pgid {
            let _ = rustix::process::kill_process_group(pgid, sig);
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CliError::Other(e.into()))?;
    let lost_reason: String = tokio::select! {
        status = child.wait() => {
            // Done: closing the connection releases the lock.
            drop(lines);
            let status = status.map_err(|e| CliError::Other(e.into()))?;
            return match status.code() {
                Some(0) => Ok(()),
                Some(code) => Err(CliError::Status(u8::try_from(code).unwrap_or(1))),
                None => Err(CliError::Status(1)),
            };
        }
        line = lines.next() => match line {
            Ok(Some(HoldLine::Lost { reason })) => reason,
            Ok(Some(other)) => format!("unexpected answer {other:?}"),
            Ok(None) => "the agent closed the connection (stopped?)".to_owned(),
            Err(e) => e,
        },
        _ = tokio::signal::ctrl_c() => "interrupted".to_owned(),
        _ = term.recv() => "terminated".to_owned(),
    };
    // Lost (or asked to stop): stop the command, then let the lock go.
    signal_group(rustix::process::Signal::TERM);
    let stopped = tokio::time::timeout(STOP_GRACE, child.wait()).await;
    if stopped.is_err() {
        signal_group(rustix::process::Signal::KILL);
        let _ = child.wait().await;
    }
    drop(lines);
    Err(CliError::Negative(format!(
        "lock `{}` lost, command stopped: {lost_reason}",
        args.name
    )))
}

/// `opsbro raft state`.
pub async fn state(client: &Client, json: bool) -> Result<(), CliError> {
    let s: RaftState = client.get(STATE).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return Ok(());
    }
    println!("role:     {}", s.role);
    println!("leader:   {}", s.leader.as_deref().unwrap_or("(none)"));
    println!("term:     {}", s.term);
    println!("voters:   {}", s.voters.join(", "));
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    if sorted(&s.wanted_voters) != sorted(&s.voters) {
        println!("wanted:   {}", s.wanted_voters.join(", "));
    }
    println!("commit:   {}  applied: {}", s.commit, s.applied);
    print_locks(&s.locks);
    Ok(())
}

fn print_locks(locks: &[LockInfo]) {
    if locks.is_empty() {
        println!("locks:    (none held)");
        return;
    }
    println!("locks:");
    for l in locks {
        println!(
            "  {:<30} {:<20} token {:<8} ttl {} s",
            l.name,
            l.node,
            l.token,
            l.ttl_ms / 1000
        );
    }
}

/// `opsbro raft locks`.
pub async fn locks(client: &Client, json: bool) -> Result<(), CliError> {
    let locks: Vec<LockInfo> = client.get(LOCKS).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&locks).unwrap_or_default()
        );
    } else {
        print_locks(&locks);
    }
    Ok(())
}

/// `opsbro raft wait-leader`: wait until the group has a leader.
pub async fn wait_leader(client: &Client, timeout: u64) -> Result<(), CliError> {
    let end = Instant::now() + Duration::from_secs(timeout);
    loop {
        let s: RaftState = client.get(STATE).await?;
        if let Some(leader) = s.leader {
            println!("{leader}");
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(CliError::Negative(format!(
                "no Raft leader after {timeout} s (voters: {})",
                s.wanted_voters.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `opsbro election state [NAME]`.
pub async fn elections(client: &Client, name: Option<&str>, json: bool) -> Result<(), CliError> {
    let mut list: Vec<ElectionState> = client.get(ELECTIONS).await?;
    if let Some(n) = name {
        list.retain(|e| e.name == n);
        if list.is_empty() {
            return Err(CliError::Negative(format!(
                "no election named `{n}` on this node"
            )));
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return Ok(());
    }
    if list.is_empty() {
        println!("no elections (see `election:` objects in packs)");
    }
    for e in list {
        let me = if e.is_leader { "  (this node)" } else { "" };
        println!(
            "{:<30} leader: {}{me}{}",
            e.name,
            e.leader.as_deref().unwrap_or("(none)"),
            if e.member { "" } else { "  [not a member]" }
        );
    }
    Ok(())
}

/// `opsbro election wait-leader NAME`.
pub async fn wait_election(client: &Client, name: &str, timeout: u64) -> Result<(), CliError> {
    let end = Instant::now() + Duration::from_secs(timeout);
    loop {
        let list: Vec<ElectionState> = client.get(ELECTIONS).await?;
        let e = list.iter().find(|e| e.name == name);
        if e.is_none() {
            return Err(CliError::Negative(format!(
                "no election named `{name}` on this node"
            )));
        }
        if let Some(leader) = e.and_then(|e| e.leader.clone()) {
            println!("{leader}");
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(CliError::Negative(format!(
                "no leader for `{name}` after {timeout} s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
