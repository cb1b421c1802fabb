//! Rule backends (file-rights, package-install, repository, system-user, get-url).
//! (Placeholder with the interface the engine uses; the backends land with their tests.)

use std::path::Path;
use std::time::Duration;

use super::types::{Info, Mode, Outcome, RuleState};

/// What a rule run needs.
pub struct RuleRun<'a> {
    /// The rule type.
    pub kind: &'a str,
    /// The matching environment's parameters.
    pub parameters: &'a serde_json::Value,
    /// Audit or enforce.
    pub mode: Mode,
    /// Prefix of the paths rules write (repository files).
    pub root: &'a Path,
    /// Longest one step may take.
    pub timeout: Duration,
    /// The distribution.
    pub distro: Option<&'a str>,
}

/// A command's result.
pub struct CommandOutput {
    /// Exit code.
    pub code: Option<i32>,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

/// Run one rule.
pub async fn run(run: RuleRun<'_>) -> Outcome {
    Outcome {
        state: RuleState::Error,
        infos: vec![Info::error(format!("no backend for {}", run.kind))],
    }
}

/// Static checks of a rule's parameters.
pub fn validate(_kind: &str, _parameters: &serde_json::Value) -> Result<(), String> {
    Ok(())
}

/// Run a command without a shell.
pub async fn run_command(
    _argv: &[&str],
    _env: &[(&str, &str)],
    _timeout: Duration,
) -> Result<CommandOutput, String> {
    Err("not yet".into())
}
