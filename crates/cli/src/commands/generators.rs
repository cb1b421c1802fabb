//! `opsbro generators state|history|wait-compliant`.

use std::time::Instant;

use opsbro_api::generators::{GeneratorView, HISTORY, HistoryEntry, STATE};

use crate::client::Client;
use crate::commands::gossip::{POLL, format_time};
use crate::commands::{secs, to_json};
use crate::error::CliError;
use crate::render;

/// `generators state`.
pub async fn state(client: &Client, show_diff: bool, json: bool) -> Result<(), CliError> {
    let views: Vec<GeneratorView> = client.get(STATE).await?;
    if json {
        println!("{}", to_json(&views)?);
        return Ok(());
    }
    if views.is_empty() {
        println!("no generators (add `generator:` objects to a pack)");
        return Ok(());
    }
    let colour = render::use_colour();
    for v in &views {
        println!(
            "{} {} → {}",
            render::state(&v.state, colour),
            v.name,
            v.path
        );
        if let Some(m) = &v.message {
            println!("    | {m}");
        }
        if let Some(t) = v.last_change_ms {
            println!(
                "    | last written {} ({} writes)",
                format_time(t),
                v.writes
            );
        }
        if let Some(out) = v.command_output.as_deref().filter(|o| !o.is_empty()) {
            for line in out.lines().take(20) {
                println!("    | command: {line}");
            }
        }
        if show_diff && let Some(d) = &v.diff {
            for line in d.lines() {
                println!("    {line}");
            }
        }
    }
    Ok(())
}

/// `generators history`.
pub async fn history(client: &Client, json: bool) -> Result<(), CliError> {
    let entries: Vec<HistoryEntry> = client.get(HISTORY).await?;
    if json {
        println!("{}", to_json(&entries)?);
        return Ok(());
    }
    for e in entries {
        println!(
            "{} {} {} → {}: {}",
            format_time(e.time_ms),
            e.name,
            e.old_state,
            e.state,
            e.message
        );
    }
    Ok(())
}

/// `generators wait-compliant`.
pub async fn wait_compliant(client: &Client, name: &str, timeout: f64) -> Result<(), CliError> {
    let deadline = Instant::now() + secs(timeout);
    loop {
        let views: Vec<GeneratorView> = client.get(STATE).await?;
        let found = views
            .iter()
            .find(|v| v.name == name || v.name.rsplit('/').next() == Some(name));
        if let Some(v) = found
            && v.state == "compliant"
        {
            println!("{} is compliant: {}", v.name, v.path);
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CliError::Negative(match found {
                Some(v) => format!(
                    "{} is still {} after {timeout}s: {}",
                    v.name,
                    v.state,
                    v.message.as_deref().unwrap_or("")
                ),
                None => format!("no generator named `{name}` (see `opsbro generators state`)"),
            }));
        }
        tokio::time::sleep(POLL).await;
    }
}
