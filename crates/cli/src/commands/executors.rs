//! `opsbro executors keygen|exec|history|state`: signed remote execution.

use std::io::Write as _;

use base64::Engine as _;
use opsbro_api::executors::{
    EXEC, ExecLine, ExecRequest, ExecResult, ExecSummary, ExecutorInfo, HISTORY, HistoryEntry,
    STATE,
};

use crate::client::Client;
use crate::commands::gossip::format_time;
use crate::commands::to_json;
use crate::error::CliError;
use crate::render;

/// How long a request the CLI signs stays valid (targets get it within milliseconds).
const LIFETIME_MS: u64 = 60_000;

/// `executors exec`'s arguments.
#[derive(Debug)]
pub struct ExecArgs {
    /// Target group.
    pub group: String,
    /// The command line.
    pub command: String,
    /// Only this node.
    pub node: Option<String>,
    /// Sign with this key file.
    pub key: Option<std::path::PathBuf>,
    /// Seconds each target lets it run.
    pub timeout: u32,
}

fn user_at_host() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "operator".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

/// `executors keygen`: a new operator key pair.
pub fn keygen(out: Option<&std::path::Path>, comment: Option<&str>) -> Result<(), CliError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let key =
        opsbro_exec::SigningKey::generate().map_err(|e| CliError::Other(anyhow::anyhow!(e)))?;
    let comment = comment.map(str::to_owned).unwrap_or_else(user_at_host);
    match out {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", path.display())))?;
            f.write_all(key.to_file().as_bytes())
                .map_err(|e| CliError::Other(e.into()))?;
            eprintln!("private key written to {} (keep it secret)", path.display());
        }
        None => print!("{}", key.to_file()),
    }
    println!("{}", key.public().to_line(&comment));
    Ok(())
}

/// The API request: signed here with `--key`, else fields for the agent to sign.
fn api_request(args: &ExecArgs) -> Result<ExecRequest, CliError> {
    if !(1..=opsbro_exec::MAX_TIMEOUT_SECS).contains(&args.timeout) {
        return Err(CliError::Usage(format!(
            "--timeout {} is outside 1..{}",
            args.timeout,
            opsbro_exec::MAX_TIMEOUT_SECS
        )));
    }
    let Some(path) = &args.key else {
        return Ok(ExecRequest {
            group: Some(args.group.clone()),
            node: args.node.clone(),
            command: Some(args.command.clone()),
            timeout_secs: Some(args.timeout),
            requester: Some(user_at_host()),
            ..ExecRequest::default()
        });
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read the key {}: {e}", path.display())))?;
    let key = opsbro_exec::SigningKey::from_file(&text)
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let request = opsbro_exec::Request {
        id: opsbro_exec::new_id().map_err(|e| CliError::Other(anyhow::anyhow!(e)))?,
        group: args.group.clone(),
        node: args.node.clone(),
        command: args.command.clone(),
        timeout_secs: args.timeout,
        issued_at_ms: now,
        expires_at_ms: now + LIFETIME_MS,
        requester: user_at_host(),
    };
    Ok(ExecRequest {
        signed: Some(base64::engine::general_purpose::STANDARD.encode(key.sign(&request))),
        ..ExecRequest::default()
    })
}

/// A result for a person: `node  rc=0  12 ms`, then its output indented.
fn describe(r: &ExecResult, colour: bool) -> String {
    let head = match r.state.as_str() {
        "done" => {
            let rc =
                r.rc.map_or("killed by a signal".to_owned(), |c| format!("rc={c}"));
            let word = if r.ok() { "ok" } else { "critical" };
            let rc = if colour {
                render::state(word, true).replace(word, &rc)
            } else {
                rc
            };
            format!("{rc}  {} ms", r.duration_ms)
        }
        state => {
            let word = if colour {
                render::state("critical", true).replace("critical", state)
            } else {
                state.to_owned()
            };
            format!(
                "{word}: {}",
                r.error.as_deref().unwrap_or("no reason given")
            )
        }
    };
    let mut text = format!("{}  {head}\n", r.node);
    for (name, output) in [("", &r.stdout), ("stderr", &r.stderr)] {
        if output.is_empty() {
            continue;
        }
        if !name.is_empty() {
            text.push_str("  stderr:\n");
        }
        for line in output.lines() {
            text.push_str("    ");
            text.push_str(line);
            text.push('\n');
        }
    }
    if r.truncated {
        text.push_str("    (output cut at 64 KiB)\n");
    }
    text
}

fn summary_line(s: &ExecSummary) -> String {
    let mut parts = vec![format!("{} ok", s.ok)];
    for (n, what) in [
        (s.failed, "failed"),
        (s.timed_out, "timed out"),
        (s.refused, "refused"),
        (s.unreachable, "unreachable"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    format!(
        "{} target{}: {} ({:.2} s)",
        s.targets,
        if s.targets == 1 { "" } else { "s" },
        parts.join(", "),
        s.duration_ms as f64 / 1000.0
    )
}

/// Print, ignoring a reader that went away (`| head`).
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// `executors exec`: results as they arrive; exit 0 only when every target returned 0.
pub async fn exec(client: &Client, args: ExecArgs, json: bool) -> Result<(), CliError> {
    let body = api_request(&args)?;
    let mut response = client.post_stream(EXEC, &body).await?;
    let colour = render::use_colour();
    let mut pending: Vec<u8> = Vec::new();
    let (mut request, mut results, mut summary) = (None, Vec::new(), None);
    while summary.is_none() {
        let chunk = response.chunk().await.map_err(|e| {
            CliError::Other(anyhow::anyhow!(
                "the answer from {} broke off: {e}",
                client.addr()
            ))
        })?;
        let Some(chunk) = chunk else { break };
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=end).collect();
            let line: ExecLine = serde_json::from_slice(&raw).map_err(|e| {
                CliError::Other(anyhow::anyhow!(
                    "the agent sent a line this CLI does not understand ({e}); are the CLI and agent the same version?"
                ))
            })?;
            match line {
                ExecLine::Request {
                    ref id,
                    ref group,
                    ref targets,
                    ..
                } => {
                    if !json {
                        emit(&format!(
                            "request {id} to {} node{} of group {group}: {}\n",
                            targets.len(),
                            if targets.len() == 1 { "" } else { "s" },
                            targets.join(", ")
                        ));
                    }
                    request = Some(line);
                }
                ExecLine::Started { .. } => {}
                ExecLine::Result(r) => {
                    if !json {
                        emit(&describe(&r, colour));
                    }
                    results.push(r);
                }
                ExecLine::Done(s) => summary = Some(s),
            }
        }
    }
    let summary = summary.ok_or_else(|| {
        CliError::Other(anyhow::anyhow!(
            "the agent at {} ended the answer before every target answered",
            client.addr()
        ))
    })?;
    if json {
        let doc = serde_json::json!({
            "request": request,
            "results": results,
            "summary": summary,
        });
        emit(&format!("{}\n", to_json(&doc)?));
    } else {
        emit(&format!("{}\n", summary_line(&summary)));
    }
    if summary.all_ok() {
        Ok(())
    } else {
        Err(CliError::Negative(format!(
            "{} of {} targets did not return 0",
            summary.targets - summary.ok,
            summary.targets
        )))
    }
}

/// `executors history`.
pub async fn history(client: &Client, limit: usize, json: bool) -> Result<(), CliError> {
    let entries: Vec<HistoryEntry> = client.get(&format!("{HISTORY}?limit={limit}")).await?;
    if json {
        emit(&format!("{}\n", to_json(&entries)?));
        return Ok(());
    }
    if entries.is_empty() {
        emit("no executions on this node yet\n");
        return Ok(());
    }
    let mut text = String::new();
    for e in &entries {
        let outcome = match (&e.summary, e.rc, &e.error) {
            (Some(s), _, _) => summary_line(s),
            (None, Some(rc), _) => format!("{} rc={rc} {} ms", e.state, e.duration_ms),
            (None, None, Some(err)) => format!("{}: {err}", e.state),
            (None, None, None) => e.state.clone(),
        };
        text.push_str(&format!(
            "{} {:<9} {} by {} to {}{}: {} -> {outcome}\n",
            format_time(e.time_ms),
            e.role,
            if e.id.is_empty() { "?" } else { &e.id },
            if e.requester.is_empty() {
                "?"
            } else {
                &e.requester
            },
            e.group,
            e.node
                .as_deref()
                .map(|n| format!(" (node {n})"))
                .unwrap_or_default(),
            e.command
        ));
    }
    emit(&text);
    Ok(())
}

/// `executors state`.
pub async fn state(client: &Client, json: bool) -> Result<(), CliError> {
    let info: ExecutorInfo = client.get(STATE).await?;
    if json {
        emit(&format!("{}\n", to_json(&info)?));
        return Ok(());
    }
    emit(&describe_state(&info));
    Ok(())
}

/// The executor for a person (`executors state`).
pub fn describe_state(info: &ExecutorInfo) -> String {
    let mut text = if info.enabled {
        format!(
            "executor: enabled, {} authorized key{}\n",
            info.authorized_keys.len(),
            if info.authorized_keys.len() == 1 {
                ""
            } else {
                "s"
            }
        )
    } else {
        "executor: disabled (no executor.authorized_keys: remote commands are refused)\n".to_owned()
    };
    for k in &info.authorized_keys {
        text.push_str(&format!("  key {} {}\n", k.id, k.comment));
    }
    text.push_str(&format!(
        "  signs with: {}\n",
        info.private_key_file
            .as_deref()
            .unwrap_or("(no executor.private_key_file: use --key)")
    ));
    let refused: u64 = info.refused.values().sum();
    text.push_str(&format!(
        "  received {}, ran {}, timed out {}, refused {refused}, running {}, sent {}, unreachable {}\n",
        info.received, info.ran, info.timed_out, info.running, info.requests_sent, info.unreachable
    ));
    for (reason, n) in info.refused.iter().filter(|(_, n)| **n > 0) {
        text.push_str(&format!("    refused {reason}: {n}\n"));
    }
    text
}
