//! `opsbro collectors list|show`.

use opsbro_api::collectors::{ALL, Collector, Collectors, ONE};

use crate::client::Client;
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
        if c.state != "ok" {
            println!(
                "collector.{name} ({}{})",
                c.state,
                c.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
            continue;
        }
        let mut lines = Vec::new();
        flatten(&format!("collector.{name}"), &c.data, &mut lines);
        for (path, value) in lines {
            println!("{path} = {value}");
        }
    }
    Ok(())
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
