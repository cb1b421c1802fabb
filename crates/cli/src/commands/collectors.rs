//! `opsbro collectors list|show|history|wait-ok|run`.

use std::time::Instant;

use opsbro_api::collectors::{ALL, Collector, CollectorChange, Collectors, HISTORY, ONE, RUN};

use crate::client::Client;
use crate::commands::gossip::{POLL, encode, format_time};
use crate::commands::secs;
use crate::error::CliError;
use crate::render;

/// `collectors list`.
pub async fn list(client: &Client, json: bool) -> Result<(), CliError> {
    let all: Collectors = client.get(ALL).await?;
    if json {
        println!("{}", crate::commands::to_json(&all)?);
        return Ok(());
    }
    let colour = render::use_colour();
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|(name, c)| {
            let last = c
                .last_run_ms
                .map(crate::commands::gossip::format_time)
                .unwrap_or_else(|| "-".into());
            vec![
                name.clone(),
                render::state(&c.state, colour),
                last,
                c.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(&["COLLECTOR", "STATE", "LAST RUN (UTC)", "MESSAGE"], &rows)
    );
    Ok(())
}

/// `collectors show [NAME]`.
pub async fn show(client: &Client, name: Option<String>, json: bool) -> Result<(), CliError> {
    let all: Collectors = match &name {
        Some(n) => {
            let one: Collector = client.get(&ONE.replace("{name}", n)).await?;
            std::iter::once((n.clone(), one)).collect()
        }
        None => client.get(ALL).await?,
    };
    if json {
        println!("{}", crate::commands::to_json(&all)?);
        return Ok(());
    }
    for (name, c) in &all {
        print_values(name, c);
    }
    Ok(())
}

/// Print one collector as `collector.<name>.<path> = value` lines (or its state and why).
fn print_values(name: &str, c: &Collector) {
    if c.state != "ok" {
        println!(
            "collector.{name} ({}{})",
            c.state,
            c.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        return;
    }
    let mut lines = Vec::new();
    flatten(&format!("collector.{name}"), &c.data, &mut lines);
    for (path, value) in lines {
        println!("{path} = {value}");
    }
}

/// `collectors history`.
pub async fn history(client: &Client, json: bool) -> Result<(), CliError> {
    let changes: Vec<CollectorChange> = client.get(HISTORY).await?;
    if json {
        println!("{}", crate::commands::to_json(&changes)?);
        return Ok(());
    }
    let colour = render::use_colour();
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            vec![
                format_time(c.time_ms),
                c.name.clone(),
                format!(
                    "{} → {}",
                    render::state(&c.old_state, colour),
                    render::state(&c.state, colour)
                ),
                c.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(&["TIME (UTC)", "COLLECTOR", "CHANGE", "MESSAGE"], &rows)
    );
    Ok(())
}

/// `collectors wait-ok NAME`: poll until its state is ok.
pub async fn wait_ok(client: &Client, name: &str, timeout: f64) -> Result<(), CliError> {
    let deadline = Instant::now() + secs(timeout);
    let path = ONE.replace("{name}", &encode(name));
    loop {
        let c: Collector = client.get(&path).await?;
        if c.state == "ok" {
            println!("collector {name} is ok");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CliError::Negative(format!(
                "collector {name} is still {} after {timeout}s{}",
                c.state,
                c.message.map(|m| format!(": {m}")).unwrap_or_default()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `collectors run NAME`: the agent runs it now; exit 2 unless the result is ok.
pub async fn run(client: &Client, name: &str, json: bool) -> Result<(), CliError> {
    let c: Collector = client.post(&RUN.replace("{name}", &encode(name))).await?;
    if json {
        println!("{}", crate::commands::to_json(&c)?);
    } else {
        print_values(name, &c);
    }
    if c.state == "ok" {
        Ok(())
    } else {
        Err(CliError::Negative(format!(
            "collector {name} is {}{}",
            c.state,
            c.message.map(|m| format!(": {m}")).unwrap_or_default()
        )))
    }
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}
