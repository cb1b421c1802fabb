//! `opsbro services list|show|register|deregister|maintenance`, `opsbro agent maintenance`
//! and `opsbro monitoring ttl`.

use std::io::Read;
use std::path::Path;

use opsbro_api::catalog::{
    AGENT_MAINTENANCE, LOCAL, LocalService, MAINTENANCE, ONE, REGISTER, Registered, SERVICE,
    SERVICES, ServiceInstance, ServiceSummary,
};
use opsbro_api::monitoring::{TTL, TtlStatus, TtlUpdate};

use crate::args::{OnOff, TtlArg};
use crate::client::Client;
use crate::commands::gossip::encode;
use crate::commands::to_json;
use crate::error::CliError;
use crate::render;

/// `services list [--local]`.
pub async fn list(client: &Client, local: bool, json: bool) -> Result<(), CliError> {
    let colour = render::use_colour();
    if local {
        let services: Vec<LocalService> = client.get(LOCAL).await?;
        if json {
            println!("{}", to_json(&services)?);
            return Ok(());
        }
        if services.is_empty() {
            println!("no services declared on this node");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = services
            .iter()
            .map(|s| {
                let state = if s.maintenance.is_some() {
                    "maintenance".to_owned()
                } else if s.active {
                    render::state(&s.state, colour)
                } else {
                    format!("inactive (if_group {})", s.if_group)
                };
                vec![
                    s.name.clone(),
                    port(s.port),
                    s.tags.join(","),
                    state,
                    s.checks
                        .iter()
                        .map(|c| format!("{} {}", c.name, c.state))
                        .collect::<Vec<_>>()
                        .join(", "),
                    s.file.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            render::table(
                &["SERVICE", "PORT", "TAGS", "STATE", "CHECKS", "FILE"],
                &rows
            )
        );
        return Ok(());
    }
    let services: Vec<ServiceSummary> = client.get(SERVICES).await?;
    if json {
        println!("{}", to_json(&services)?);
        return Ok(());
    }
    if services.is_empty() {
        println!("no services in the cluster");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                format!("{}/{}", s.passing, s.instances),
                s.tags.join(","),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(&["SERVICE", "PASSING/INSTANCES", "TAGS"], &rows)
    );
    Ok(())
}

fn port(p: u16) -> String {
    if p == 0 { "-".into() } else { p.to_string() }
}

/// `services show NAME`.
pub async fn show(
    client: &Client,
    name: &str,
    passing: bool,
    tag: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
    let mut path = SERVICE.replace("{name}", &encode(name));
    let mut query = Vec::new();
    if passing {
        query.push("passing".to_owned());
    }
    if let Some(t) = tag {
        query.push(format!("tag={}", encode(t)));
    }
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let instances: Vec<ServiceInstance> = client.get(&path).await?;
    if json {
        println!("{}", to_json(&instances)?);
        return Ok(());
    }
    if instances.is_empty() {
        return Err(CliError::Negative(format!(
            "no {}instance of service {name}{}",
            if passing { "passing " } else { "" },
            tag.map(|t| format!(" with tag {t}")).unwrap_or_default()
        )));
    }
    let colour = render::use_colour();
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            let state = match (&i.node_maintenance, &i.maintenance) {
                (Some(r), _) => format!("maintenance (node: {r})"),
                (None, Some(r)) => format!("maintenance ({r})"),
                (None, None) => render::state(&i.state, colour),
            };
            vec![
                i.node.clone(),
                i.zone.clone(),
                i.address.to_string(),
                port(i.port),
                i.tags.join(","),
                state,
                if i.passing { "yes".into() } else { "no".into() },
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(
            &["NODE", "ZONE", "ADDRESS", "PORT", "TAGS", "STATE", "IN DNS"],
            &rows
        )
    );
    Ok(())
}

/// `services register FILE`.
pub async fn register(client: &Client, file: &Path, json: bool) -> Result<(), CliError> {
    let body = if file == Path::new("-") {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .map_err(|e| CliError::Usage(format!("cannot read stdin: {e}")))?;
        b
    } else {
        std::fs::read(file)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?
    };
    let answer: Registered = client
        .post_bytes(REGISTER, "application/yaml", body)
        .await?;
    if json {
        println!("{}", to_json(&answer)?);
        return Ok(());
    }
    println!("service {} registered ({})", answer.name, answer.file);
    for w in &answer.warnings {
        println!("  warning: {w}");
    }
    Ok(())
}

/// `services deregister NAME`.
pub async fn deregister(client: &Client, name: &str) -> Result<(), CliError> {
    let answer: Registered = client.delete(&ONE.replace("{name}", &encode(name))).await?;
    println!("service {} deregistered", answer.name);
    Ok(())
}

fn body(state: OnOff, reason: Option<String>) -> opsbro_api::catalog::Maintenance {
    opsbro_api::catalog::Maintenance {
        enable: state == OnOff::On,
        reason,
    }
}

/// `services maintenance NAME on|off`.
pub async fn service_maintenance(
    client: &Client,
    name: &str,
    state: OnOff,
    reason: Option<String>,
) -> Result<(), CliError> {
    let answer: opsbro_api::catalog::Maintenance = client
        .put_json(
            &MAINTENANCE.replace("{name}", &encode(name)),
            &body(state, reason),
        )
        .await?;
    match answer.reason {
        Some(r) if answer.enable => println!("service {name}: maintenance on ({r})"),
        _ => println!("service {name}: maintenance off"),
    }
    Ok(())
}

/// `agent maintenance [on|off]`.
pub async fn node_maintenance(
    client: &Client,
    state: Option<OnOff>,
    reason: Option<String>,
    json: bool,
) -> Result<(), CliError> {
    let answer: opsbro_api::catalog::Maintenance = match state {
        Some(state) => {
            client
                .put_json(AGENT_MAINTENANCE, &body(state, reason))
                .await?
        }
        None => client.get(AGENT_MAINTENANCE).await?,
    };
    if json {
        println!("{}", to_json(&answer)?);
        return Ok(());
    }
    match answer.reason {
        Some(r) if answer.enable => println!("maintenance on: {r}"),
        _ => println!("maintenance off"),
    }
    Ok(())
}

/// `monitoring ttl pass|warn|fail NAME`.
pub async fn ttl(
    client: &Client,
    status: TtlArg,
    name: &str,
    note: Option<String>,
) -> Result<(), CliError> {
    let status = match status {
        TtlArg::Pass => TtlStatus::Pass,
        TtlArg::Warn => TtlStatus::Warn,
        TtlArg::Fail => TtlStatus::Fail,
    };
    let path = TTL.replace("{*name}", name);
    let answer: serde_json::Value = client.put_json(&path, &TtlUpdate { status, note }).await?;
    println!(
        "{}: {}",
        answer["check"].as_str().unwrap_or(name),
        answer["state"].as_str().unwrap_or_default()
    );
    Ok(())
}
