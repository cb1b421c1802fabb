//! `opsbro compliance state|history|launch|wait-compliant`.

use std::time::Instant;

use opsbro_api::compliance::{ComplianceView, HISTORY, HistoryEntry, LAUNCH, STATE};

use crate::client::Client;
use crate::commands::gossip::{POLL, format_time};
use crate::commands::{secs, to_json};
use crate::error::CliError;
use crate::render;

/// Paint a compliance state.
fn paint(state: &str, colour: bool) -> String {
    let word = match state {
        "COMPLIANT" | "FIXED" => "ok",
        "ERROR" => "critical",
        "PENDING" | "RUNNING" => "pending",
        _ => "left",
    };
    if colour {
        render::state(word, true).replace(word, state)
    } else {
        state.to_owned()
    }
}

fn find<'a>(views: &'a [ComplianceView], name: &str) -> Option<&'a ComplianceView> {
    views
        .iter()
        .find(|v| v.name == name || v.display_name == name)
}

/// One object, as the original printed it: the object, then each rule and its report lines.
fn print_view(v: &ComplianceView, colour: bool) {
    println!(
        "{} ({}) [{}] {}{}",
        v.display_name,
        v.name,
        v.mode,
        paint(&v.state, colour),
        if v.is_running { " (running)" } else { "" }
    );
    for r in &v.rules {
        println!(
            "  - {} ({}{}): {}",
            r.name,
            r.kind,
            r.environment
                .as_deref()
                .map(|e| format!(", environment {e}"))
                .unwrap_or_default(),
            paint(&r.state, colour)
        );
        for i in &r.infos {
            println!("      | {} : {}", i.state, i.text);
        }
    }
}

/// `compliance state [NAME]`.
pub async fn state(client: &Client, name: Option<&str>, json: bool) -> Result<(), CliError> {
    let views: Vec<ComplianceView> = client.get(STATE).await?;
    let views: Vec<ComplianceView> = match name {
        Some(n) => vec![find(&views, n).cloned().ok_or_else(|| {
            CliError::Negative(format!(
                "no compliance object named `{n}` on this node (see `opsbro compliance state`)"
            ))
        })?],
        None => views,
    };
    if json {
        println!("{}", to_json(&views)?);
        return Ok(());
    }
    if views.is_empty() {
        println!("no compliance objects on this node");
        return Ok(());
    }
    let colour = render::use_colour();
    for v in &views {
        print_view(v, colour);
    }
    Ok(())
}

/// `compliance history`.
pub async fn history(client: &Client, limit: usize, json: bool) -> Result<(), CliError> {
    let entries: Vec<HistoryEntry> = client.get(&format!("{HISTORY}?limit={limit}")).await?;
    if json {
        println!("{}", to_json(&entries)?);
        return Ok(());
    }
    let colour = render::use_colour();
    for e in &entries {
        println!(
            "{}  {} ({}): {} → {}",
            format_time(e.time_ms),
            e.display_name,
            e.name,
            e.old_state,
            paint(&e.state, colour)
        );
        for line in e.output.lines() {
            println!("      | {line}");
        }
    }
    Ok(())
}

fn good(state: &str) -> bool {
    matches!(state, "COMPLIANT" | "FIXED")
}

/// `compliance launch NAME`.
pub async fn launch(client: &Client, name: &str, json: bool) -> Result<(), CliError> {
    let v: ComplianceView = client.post(&LAUNCH.replace("{*name}", name)).await?;
    if json {
        println!("{}", to_json(&v)?);
    } else {
        print_view(&v, render::use_colour());
    }
    if good(&v.state) {
        Ok(())
    } else {
        Err(CliError::Negative(format!("{} is {}", v.name, v.state)))
    }
}

/// `compliance wait-compliant NAME`.
pub async fn wait_compliant(client: &Client, name: &str, timeout: f64) -> Result<(), CliError> {
    let deadline = Instant::now() + secs(timeout);
    loop {
        let views: Vec<ComplianceView> = client.get(STATE).await?;
        let found = find(&views, name);
        if let Some(v) = found
            && good(&v.state)
        {
            println!("{} is {}", v.name, v.state);
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CliError::Negative(match found {
                Some(v) => format!("{} is still {} after {timeout}s", v.name, v.state),
                None => format!(
                    "no compliance object named `{name}` on this node (see `opsbro compliance state`)"
                ),
            }));
        }
        tokio::time::sleep(POLL).await;
    }
}
