//! `opsbro manpages DIR` (hidden): the manual pages, generated from the command-line grammar
//! itself so they never drift from `--help`. Run once when a package is built (see
//! `packaging/build.sh`), never by the agent.

use std::path::Path;

use clap::CommandFactory;

use crate::args::Cli;
use crate::error::CliError;

/// Writes one roff page per visible command into `dir`: `opsbro.1`, `opsbro-agent.1`,
/// `opsbro-agent-start.1`, ... and prints how many.
pub fn write_all(dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", dir.display())))?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd, dir).map_err(|e| {
        CliError::Other(anyhow::anyhow!(
            "writing man pages into {}: {e}",
            dir.display()
        ))
    })?;
    let count = std::fs::read_dir(dir)
        .map_err(|e| CliError::Other(e.into()))?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
        .count();
    println!("{count} manual pages in {}", dir.display());
    Ok(())
}
