//! `opsbro detectors list|state|run` and `opsbro packs list`.

use opsbro_api::detectors::{DetectorState, PACKS, Packs, RUN, STATE};

use crate::client::Client;
use crate::commands::to_json;
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

/// `packs list`.
pub async fn packs(client: &Client, json: bool) -> Result<(), CliError> {
    let packs: Packs = client.get(PACKS).await?;
    if json {
        println!("{}", to_json(&packs)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = packs
        .packs
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.source.clone(),
                p.detectors.to_string(),
                p.description.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(&["PACK", "SOURCE", "DETECTORS", "DESCRIPTION"], &rows)
    );
    if !packs.diagnostics.is_empty() {
        println!("problems:");
        for d in &packs.diagnostics {
            println!("  {d}");
        }
    }
    Ok(())
}

/// `packs show NAME`.
pub async fn show_pack(client: &Client, name: &str, json: bool) -> Result<(), CliError> {
    let packs: Packs = client.get(PACKS).await?;
    let Some(pack) = packs.packs.iter().find(|p| p.name == name) else {
        return Err(CliError::Negative(format!(
            "no pack named `{name}` (see `opsbro packs list`)"
        )));
    };
    let detectors: Vec<DetectorState> = client.get(STATE).await?;
    let mine: Vec<&DetectorState> = detectors.iter().filter(|d| d.pack == name).collect();
    if json {
        let v = serde_json::json!({ "pack": pack, "detectors": mine });
        println!("{}", to_json(&v)?);
        return Ok(());
    }
    print!(
        "{}",
        render::key_values(&[
            ("Pack", pack.name.clone()),
            ("Source", pack.source.clone()),
            ("Description", pack.description.clone()),
        ])
    );
    let rows: Vec<Vec<String>> = mine
        .iter()
        .map(|d| vec![d.name.clone(), d.groups.join(","), d.apply_if.clone()])
        .collect();
    print!("{}", render::table(&["DETECTOR", "GROUPS", "IF"], &rows));
    let problems: Vec<&String> = packs
        .diagnostics
        .iter()
        .filter(|d| d.contains(&format!("{name}/")))
        .collect();
    for p in problems {
        println!("problem: {p}");
    }
    Ok(())
}
