//! `opsbro agent reload` and `opsbro agent parameters show|get|set|add|remove`: agent.yml edited
//! as text (comments kept, see `opsbro_config::edit`), checked as the agent would read it, saved
//! atomically, then the running agent reloads it.

use std::path::Path;

use opsbro_api::{ReloadReport, routes};
use opsbro_config::edit::{self, Edit};

use crate::args::ParametersCommand;
use crate::client::Client;
use crate::commands::to_json;
use crate::error::CliError;

/// `opsbro agent reload`.
pub async fn reload(client: &Client, json: bool) -> Result<(), CliError> {
    let report: ReloadReport = client.post(routes::AGENT_RELOAD).await?;
    if json {
        println!("{}", to_json(&report)?);
    } else {
        print!("{}", report_text(&report));
    }
    if report.applied {
        Ok(())
    } else {
        Err(CliError::Other(anyhow::anyhow!(
            "the reload was refused: the agent runs on with its previous configuration"
        )))
    }
}

/// A reload report for a terminal.
pub fn report_text(r: &ReloadReport) -> String {
    let mut out = String::new();
    if r.applied {
        out.push_str("reloaded\n");
    }
    for line in &r.changes {
        out.push_str(&format!("  {line}\n"));
    }
    for line in &r.restart_needed {
        out.push_str(&format!("  needs a restart: {line}\n"));
    }
    for line in &r.warnings {
        out.push_str(&format!("  warning: {line}\n"));
    }
    for line in &r.errors {
        out.push_str(&format!("  error: {line}\n"));
    }
    out
}

fn read(path: &Path, must_exist: bool) -> Result<String, CliError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => Ok(String::new()),
        Err(e) => Err(CliError::Usage(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Write `text` to `path` through a temporary file in the same folder, keeping the mode.
fn write_atomic(path: &Path, text: &str) -> Result<(), CliError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("agent.yml"),
        std::process::id()
    ));
    let result = (|| {
        std::fs::write(&tmp, text)?;
        if let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError::Other(anyhow::anyhow!("cannot write {}: {e}", path.display()))
    })
}

/// `opsbro agent parameters ...`.
pub async fn parameters(client: &Client, command: ParametersCommand) -> Result<(), CliError> {
    let (name, change, path) = match command {
        ParametersCommand::Show { config } => {
            let text = read(&config, true)?;
            for (k, v) in edit::flatten(&text).map_err(|e| CliError::Usage(e.0))? {
                println!("{k}: {v}");
            }
            return Ok(());
        }
        ParametersCommand::Get { name, config } => {
            let text = read(&config, true)?;
            return match edit::get(&text, &name).map_err(|e| CliError::Usage(e.0))? {
                Some(v) => {
                    println!("{v}");
                    Ok(())
                }
                None => Err(CliError::Negative(format!(
                    "{} does not set `{name}` (the default applies)",
                    config.display()
                ))),
            };
        }
        ParametersCommand::Set {
            name,
            value,
            config,
        } => (name, Edit::Set(value), config),
        ParametersCommand::Add {
            name,
            value,
            config,
        } => (name, Edit::Add(value), config),
        ParametersCommand::Remove {
            name,
            value,
            config,
        } => (name, Edit::Remove(value), config),
    };
    let text = read(&path, false)?;
    let when = crate::commands::gossip::format_time(opsbro_agent::host::unix_ms());
    let new = edit::edit(&text, &name, &change, &when[..16]).map_err(|e| CliError::Usage(e.0))?;
    // Check the result as the agent will read it: a change that breaks the file is not saved.
    if let Err(errors) = opsbro_config::Config::from_yaml(&new, &path.display().to_string()) {
        return Err(CliError::Usage(format!(
            "not saved, the file would not load:\n{errors}"
        )));
    }
    write_atomic(&path, &new)?;
    let (what, value) = match &change {
        Edit::Set(v) => ("SET", v),
        Edit::Add(v) => ("ADD", v),
        Edit::Remove(v) => ("REMOVE", v),
    };
    println!(
        "OK: agent.{name} ({}) {what} {name} -> {value}",
        path.display()
    );
    match client.post::<ReloadReport>(routes::AGENT_RELOAD).await {
        Ok(report) => {
            print!("{}", report_text(&report));
            if !report.applied {
                return Err(CliError::Other(anyhow::anyhow!(
                    "saved, but the agent refused to reload it (see above)"
                )));
            }
        }
        Err(CliError::Unreachable { .. }) => {
            println!("the agent is not running: it reads the change when it starts");
        }
        Err(e) => return Err(e),
    }
    Ok(())
}
