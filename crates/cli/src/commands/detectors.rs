//! `opsbro detectors list|state|run|history|wait-group` and `opsbro packs list`.

use std::time::Instant;

use opsbro_api::detectors::{DetectorState, GroupChange, HISTORY, RUN, STATE};
use opsbro_api::gossip::{MEMBERS, Member};

use crate::client::Client;
use crate::commands::gossip::{POLL, format_time};
use crate::commands::{secs, to_json};
use crate::error::CliError;
use crate::render;

/// What to show of the detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Definitions.
    List,
    /// Current results.
    State,
    /// Run now, then results.
    Run,
}

/// `detectors list|state|run [NAME]`.
pub async fn detectors(
    client: &Client,
    view: View,
    only: Option<String>,
    json: bool,
) -> Result<(), CliError> {
    let mut state: Vec<DetectorState> = match view {
        View::Run => client.post(RUN).await?,
        _ => client.get(STATE).await?,
    };
    if let Some(name) = &only {
        state.retain(|d| d.name == *name);
        if state.is_empty() {
            return Err(CliError::Negative(format!(
                "no detector named `{name}` (see `opsbro detectors list`)"
            )));
        }
    }
    if json {
        println!("{}", to_json(&state)?);
        return Ok(());
    }
    let colour = render::use_colour();
    let rows: Vec<Vec<String>> = state
        .iter()
        .map(|d| match view {
            View::List => vec![
                d.name.clone(),
                format!("{}s", d.interval_secs),
                d.groups.join(","),
                d.apply_if.clone(),
            ],
            _ => {
                let result = match (d.matched, &d.error) {
                    (_, Some(e)) => format!("{} {e}", render::state("error", colour)),
                    (Some(true), None) => render::state("ok", colour).replace("ok", "matched"),
                    (Some(false), None) => "-".to_owned(),
                    (None, None) => "pending".to_owned(),
                };
                vec![d.name.clone(), d.groups.join(","), result]
            }
        })
        .collect();
    let headers: &[&str] = match view {
        View::List => &["DETECTOR", "EVERY", "GROUPS", "IF"],
        _ => &["DETECTOR", "GROUPS", "RESULT"],
    };
    print!("{}", render::table(headers, &rows));
    if view != View::List {
        let mut groups: Vec<&str> = state
            .iter()
            .filter(|d| d.matched == Some(true))
            .flat_map(|d| d.groups.iter().map(String::as_str))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        println!(
            "detected groups: {}",
            if groups.is_empty() {
                "(none)".to_owned()
            } else {
                groups.join(", ")
            }
        );
    }
    Ok(())
}

/// `detectors history`.
pub async fn history(client: &Client, json: bool) -> Result<(), CliError> {
    let changes: Vec<GroupChange> = client.get(HISTORY).await?;
    if json {
        println!("{}", to_json(&changes)?);
        return Ok(());
    }
    let list = |groups: &[String]| {
        if groups.is_empty() {
            "-".to_owned()
        } else {
            groups.join(",")
        }
    };
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            vec![
                format_time(c.time_ms),
                list(&c.added),
                list(&c.removed),
                list(&c.groups),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(&["TIME (UTC)", "ADDED", "REMOVED", "GROUPS NOW"], &rows)
    );
    Ok(())
}

/// `detectors wait-group GROUP`: poll this node's gossiped groups.
pub async fn wait_group(client: &Client, group: &str, timeout: f64) -> Result<(), CliError> {
    let deadline = Instant::now() + secs(timeout);
    loop {
        let members: Vec<Member> = client.get(MEMBERS).await?;
        let groups = members
            .into_iter()
            .find(|m| m.is_self)
            .map(|m| m.groups)
            .unwrap_or_default();
        if groups.iter().any(|g| g == group) {
            println!("this node is in group {group}");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CliError::Negative(format!(
                "this node is still not in group {group} after {timeout}s (its groups: {})",
                if groups.is_empty() {
                    "none".to_owned()
                } else {
                    groups.join(", ")
                }
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}
