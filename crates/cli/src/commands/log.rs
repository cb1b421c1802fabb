//! `opsbro agent log follow`: print the agent's log lines as they are logged.

use std::io::Write;

use opsbro_api::LogLine;
use opsbro_api::routes::AGENT_LOG_FOLLOW;

use crate::client::Client;
use crate::commands::gossip::format_time;
use crate::error::CliError;

/// One line for a person: `2026-01-02 10:00:00.123  INFO opsbro_agent::gossip: message`.
fn describe(line: &LogLine) -> String {
    format!(
        "{}.{:03} {:>5} {}: {}",
        format_time(line.time_ms),
        line.time_ms % 1000,
        line.level,
        line.target,
        line.message
    )
}

/// `agent log follow`: until Ctrl-C, the reader of stdout going away, or the agent ending the
/// stream.
pub async fn follow(client: &Client, level: Option<String>, json: bool) -> Result<(), CliError> {
    let path = match level {
        Some(l) => {
            let l = opsbro_config::check_log_level(l).map_err(CliError::Usage)?;
            format!("{AGENT_LOG_FOLLOW}?level={l}")
        }
        None => AGENT_LOG_FOLLOW.to_owned(),
    };
    let mut response = client.get_stream(&path).await?;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let chunk = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            c = response.chunk() => c.map_err(|e| {
                CliError::Other(anyhow::anyhow!("the log stream from {} broke: {e}", client.addr()))
            })?,
        };
        let Some(chunk) = chunk else {
            return Err(CliError::Negative("the agent closed the log stream".into()));
        };
        pending.extend_from_slice(&chunk);
        let mut out = Vec::new();
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=end).collect();
            let raw = &raw[..raw.len() - 1];
            // Blank lines keep the connection checked while the agent is quiet.
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if json {
                out.extend_from_slice(raw);
            } else {
                match serde_json::from_slice::<LogLine>(raw) {
                    Ok(line) => out.extend_from_slice(describe(&line).as_bytes()),
                    Err(_) => out.extend_from_slice(raw),
                }
            }
            out.push(b'\n');
        }
        if out.is_empty() {
            continue;
        }
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(&out).and_then(|()| stdout.flush()) {
            Ok(()) => {}
            // `| head`, `| grep -m1`: the reader is done, so are we.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(CliError::Other(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reads_like_the_agent_log() {
        let line = LogLine {
            time_ms: 1_500,
            level: "INFO".into(),
            target: "opsbro_agent::gossip".into(),
            message: "member discovered node=web-1".into(),
            skipped: 0,
        };
        assert_eq!(
            describe(&line),
            "1970-01-01 00:00:01.500  INFO opsbro_agent::gossip: member discovered node=web-1"
        );
    }
}
