//! `opsbro kv get|put|delete|list|wait-exists|locate`.

use std::io::{Read, Write};
use std::time::Instant;

use base64::Engine as _;
use opsbro_api::kv::{Entry, Location, Written};

use crate::client::Client;
use crate::commands::gossip::encode;
use crate::commands::{secs, to_json};
use crate::error::CliError;
use crate::render;

/// A key as a URL path (each segment percent-encoded, `/` kept).
fn key_path(key: &str) -> String {
    format!(
        "/kv/{}",
        key.split('/').map(encode).collect::<Vec<_>>().join("/")
    )
}

/// `kv get`.
pub async fn get(client: &Client, key: &str, raw: bool, json: bool) -> Result<(), CliError> {
    let path = key_path(key);
    if raw {
        let bytes = client.get_bytes(&format!("{path}?raw")).await?;
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)
            .and_then(|()| out.flush())
            .map_err(|e| CliError::Other(e.into()))?;
        return Ok(());
    }
    let entry: Entry = client.get(&path).await?;
    if json {
        println!("{}", to_json(&entry)?);
        return Ok(());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&entry.value)
        .map_err(|e| CliError::Other(e.into()))?;
    println!("{}", String::from_utf8_lossy(&bytes));
    Ok(())
}

/// `kv put`.
pub async fn put(
    client: &Client,
    key: &str,
    value: &str,
    cas: Option<u64>,
    ttl: Option<String>,
) -> Result<(), CliError> {
    let bytes = if value == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| CliError::Other(e.into()))?;
        buf
    } else {
        value.as_bytes().to_vec()
    };
    let mut query = Vec::new();
    if let Some(c) = cas {
        query.push(format!("cas={c}"));
    }
    if let Some(t) = ttl {
        query.push(format!("ttl={}", encode(&t)));
    }
    let path = if query.is_empty() {
        key_path(key)
    } else {
        format!("{}?{}", key_path(key), query.join("&"))
    };
    let w: Written = client.put_bytes(&path, bytes).await?;
    println!("{} written (modify_index {})", w.key, w.modify_index);
    Ok(())
}

/// `kv delete`.
pub async fn delete(client: &Client, key: &str, cas: Option<u64>) -> Result<(), CliError> {
    let path = match cas {
        Some(c) => format!("{}?cas={c}", key_path(key)),
        None => key_path(key),
    };
    let w: Written = client.delete(&path).await?;
    println!("{} deleted (modify_index {})", w.key, w.modify_index);
    Ok(())
}

/// `kv list`.
pub async fn list(client: &Client, prefix: Option<String>, json: bool) -> Result<(), CliError> {
    let entries: Vec<Entry> = client
        .get(&format!(
            "/kv/?prefix={}",
            encode(prefix.as_deref().unwrap_or(""))
        ))
        .await?;
    if json {
        println!("{}", to_json(&entries)?);
        return Ok(());
    }
    for e in &entries {
        println!("{}", e.key);
    }
    Ok(())
}

/// `kv wait-exists`.
pub async fn wait_exists(client: &Client, key: &str, timeout: f64) -> Result<(), CliError> {
    let deadline = Instant::now() + secs(timeout);
    let path = key_path(key);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // A blocking read: answers as soon as the key is written.
        let wait = format!("{path}?index=0&wait={}ms", left.as_millis().max(1));
        match client.get::<Entry>(&wait).await {
            Ok(e) => {
                println!("{} exists (modify_index {})", e.key, e.modify_index);
                return Ok(());
            }
            Err(CliError::Api { status: 404, .. }) if Instant::now() < deadline => {}
            Err(CliError::Api { status: 404, .. }) => {
                return Err(CliError::Negative(format!(
                    "{key} does not exist after {timeout}s"
                )));
            }
            Err(e) => return Err(e),
        }
    }
}

/// `kv locate`.
pub async fn locate(client: &Client, key: &str, json: bool) -> Result<(), CliError> {
    let loc: Location = client.get(&format!("{}?locate", key_path(key))).await?;
    if json {
        println!("{}", to_json(&loc)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = loc
        .owners
        .iter()
        .enumerate()
        .map(|(i, o)| {
            vec![
                if i == 0 { "coordinator" } else { "replica" }.to_owned(),
                o.name.clone(),
                o.addr.to_string(),
                o.uuid.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(&["ROLE", "NODE", "ADDRESS", "UUID"], &rows)
    );
    Ok(())
}
