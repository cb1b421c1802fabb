//! `opsbro agent snapshot save|restore`: a copy of one node's data (see
//! `opsbro_agent::snapshot` for the format and the rules).

use std::path::{Path, PathBuf};
use std::time::Duration;

use opsbro_agent::snapshot::{AtomicFile, RestoreOptions, SnapshotError, Summary};

use crate::client::Client;
use crate::commands::gossip::format_time;
use crate::error::CliError;
use crate::render;

/// Longest silence of the agent while it streams a snapshot.
const STALL: Duration = Duration::from_secs(60);

fn cli_error(e: SnapshotError) -> CliError {
    match e {
        SnapshotError::Refused(why) => CliError::Usage(why),
        e @ SnapshotError::Format { .. } => CliError::Usage(e.to_string()),
        e => CliError::Other(e.into()),
    }
}

fn describe(s: &Summary) -> String {
    let entries: u64 = s.trees.iter().map(|(_, n)| n).sum();
    let trees: Vec<String> = s
        .trees
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(t, n)| format!("{t}: {n}"))
        .collect();
    format!(
        "node {} ({}), taken {} UTC by opsbro {}: {entries} entries ({}), files: {}, {}",
        s.meta.node,
        s.meta.uuid,
        format_time(s.meta.created_ms),
        s.meta.opsbro_version,
        if trees.is_empty() {
            "empty".to_owned()
        } else {
            trees.join(", ")
        },
        if s.files.is_empty() {
            "none".to_owned()
        } else {
            s.files.join(", ")
        },
        render::bytes(s.bytes)
    )
}

/// `agent snapshot save FILE`: stream `GET /agent/snapshot` into a temporary file beside FILE,
/// check it whole, rename it into place.
pub async fn save(client: &Client, file: &Path) -> Result<(), CliError> {
    let mut out = AtomicFile::create(file).map_err(cli_error)?;
    let mut response = client
        .get_stream(opsbro_api::routes::AGENT_SNAPSHOT)
        .await?;
    loop {
        match tokio::time::timeout(STALL, response.chunk()).await {
            Err(_) => {
                return Err(CliError::Other(anyhow::anyhow!(
                    "the agent sent nothing for {}s: no snapshot written",
                    STALL.as_secs()
                )));
            }
            Ok(Err(e)) => {
                return Err(CliError::Other(anyhow::anyhow!(
                    "the snapshot stream broke off ({e}; see the agent's log): no snapshot written"
                )));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => out.write(&chunk).map_err(cli_error)?,
        }
    }
    let summary = out.commit().map_err(cli_error)?;
    println!("saved {}: {}", file.display(), describe(&summary));
    Ok(())
}

/// The data dir `agent start` would use: `--data-dir`, else the configuration file's
/// `data_dir`, else the default for this user.
fn resolve_data_dir(
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
) -> Result<PathBuf, CliError> {
    let absolute = |d: PathBuf| {
        if d.is_absolute() {
            d
        } else {
            std::env::current_dir().map(|c| c.join(&d)).unwrap_or(d)
        }
    };
    if let Some(d) = data_dir {
        return Ok(absolute(d));
    }
    let config = config.or_else(|| {
        Path::new(opsbro_config::DEFAULT_CONFIG_PATH)
            .exists()
            .then(|| opsbro_config::DEFAULT_CONFIG_PATH.into())
    });
    if let Some(path) = config {
        let file =
            opsbro_config::Config::from_file(&path).map_err(|e| CliError::Usage(e.to_string()))?;
        if let Some(d) = file.data_dir {
            return Ok(absolute(d));
        }
    }
    Ok(opsbro_config::default_data_dir(
        &crate::commands::agent::host_facts(),
    ))
}

/// `agent snapshot restore FILE`: into the data dir of a stopped agent.
pub fn restore(
    file: &Path,
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    options: RestoreOptions,
) -> Result<(), CliError> {
    let dir = resolve_data_dir(data_dir, config)?;
    let restored = opsbro_agent::snapshot::restore(file, &dir, options).map_err(cli_error)?;
    for w in &restored.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "restored {} into {}: {}",
        file.display(),
        dir.display(),
        describe(&restored.summary)
    );
    if restored.uuid == restored.summary.meta.uuid {
        println!("node uuid: {} (the snapshot's)", restored.uuid);
    } else {
        println!("node uuid: {} (new)", restored.uuid);
    }
    println!(
        "start the agent on it (`opsbro agent start --data-dir {}`): the other owners of its keys hand it the writes made since the snapshot",
        dir.display()
    );
    Ok(())
}
