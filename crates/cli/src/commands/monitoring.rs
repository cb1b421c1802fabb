//! `opsbro monitoring state|history|handlers|wait-ok`.

use std::time::Instant;

use opsbro_api::monitoring::{
    HANDLERS, HISTORY, HandlerView, HistoryEntry, NodeChecks, STATE, STATE_NODE,
};

use crate::client::Client;
use crate::commands::gossip::{POLL, encode, format_time};
use crate::commands::{secs, to_json};
use crate::error::CliError;
use crate::render;

/// One line of output for a table cell.
fn one_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max - 1).collect::<String>())
    } else {
        line.to_owned()
    }
}

/// `monitoring state [NODE]`.
pub async fn state(client: &Client, node: Option<String>, json: bool) -> Result<(), CliError> {
    let answer: NodeChecks = match &node {
        Some(n) => {
            client
                .get(&STATE_NODE.replace("{node}", &encode(n)))
                .await?
        }
        None => client.get(STATE).await?,
    };
    if json {
        println!("{}", to_json(&answer)?);
        return Ok(());
    }
    let colour = render::use_colour();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for c in &answer.checks {
        *counts.entry(c.state.as_str()).or_default() += 1;
    }
    let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    println!(
        "{} ({}): {} checks{}{}",
        answer.node,
        answer.uuid,
        answer.checks.len(),
        if summary.is_empty() { "" } else { ": " },
        summary.join(", ")
    );
    if answer.checks.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answer
        .checks
        .iter()
        .map(|c| {
            let mut row = vec![c.name.clone(), render::state(&c.state, colour)];
            if answer.is_self {
                row.push(c.last_run_ms.map(format_time).unwrap_or_else(|| "-".into()));
                let attempts = if c.attempts > 0 {
                    format!(" [{} {}/{}]", c.last_result, c.attempts, c.attempts_needed)
                } else {
                    String::new()
                };
                row.push(format!("{}{attempts}", one_line(&c.output, 100)));
            }
            row
        })
        .collect();
    let headers: &[&str] = if answer.is_self {
        &["CHECK", "STATE", "LAST RUN (UTC)", "OUTPUT"]
    } else {
        &["CHECK", "STATE"]
    };
    print!("{}", render::table(headers, &rows));
    if !answer.is_self {
        println!(
            "(states as gossiped by {}; outputs are on that node)",
            answer.node
        );
    }
    Ok(())
}

/// `monitoring history`.
pub async fn history(client: &Client, limit: usize, json: bool) -> Result<(), CliError> {
    let entries: Vec<HistoryEntry> = client.get(&format!("{HISTORY}?limit={limit}")).await?;
    if json {
        println!("{}", to_json(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("no check changed state yet");
        return Ok(());
    }
    let colour = render::use_colour();
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                format_time(e.time_ms),
                e.check.clone(),
                format!(
                    "{} → {}",
                    render::state(&e.old_state, colour),
                    render::state(&e.state, colour)
                ),
                one_line(&e.output, 100),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(&["TIME (UTC)", "CHECK", "CHANGE", "OUTPUT"], &rows)
    );
    Ok(())
}

/// `monitoring handlers`.
pub async fn handlers(client: &Client, json: bool) -> Result<(), CliError> {
    let all: Vec<HandlerView> = client.get(HANDLERS).await?;
    if json {
        println!("{}", to_json(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        println!(
            "no handlers (add `handler:` objects to a pack, and list them in checks' `handlers`)"
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.kind.clone(),
                if h.enabled { "yes".into() } else { "no".into() },
                h.sent.to_string(),
                h.failed.to_string(),
                h.retried.to_string(),
                h.dropped.to_string(),
                one_line(h.last_error.as_deref().unwrap_or("-"), 80),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(
            &[
                "HANDLER",
                "TYPE",
                "ENABLED",
                "SENT",
                "FAILED",
                "RETRIED",
                "DROPPED",
                "LAST ERROR"
            ],
            &rows
        )
    );
    Ok(())
}

/// `monitoring wait-ok NAME`.
pub async fn wait_ok(client: &Client, name: &str, timeout: f64) -> Result<(), CliError> {
    let deadline = Instant::now() + secs(timeout);
    loop {
        let answer: NodeChecks = client.get(STATE).await?;
        let check = answer
            .checks
            .iter()
            .find(|c| c.name == name || c.display_name == name);
        if let Some(c) = check
            && c.state == "ok"
        {
            println!("{} is OK: {}", c.name, one_line(&c.output, 200));
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CliError::Negative(match check {
                Some(c) => format!(
                    "{} is still {} after {timeout}s: {}",
                    c.name,
                    c.state.to_uppercase(),
                    one_line(&c.output, 200)
                ),
                None => format!(
                    "no active check named `{name}` on this node (see `opsbro monitoring state`)"
                ),
            }));
        }
        tokio::time::sleep(POLL).await;
    }
}
