//! CLI errors and their exit codes (SPEC §13): 0 ok, 1 agent unreachable or runtime error,
//! 2 usage error or negative answer.

use std::process::ExitCode;

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No agent answered at the API address.
    #[error("cannot reach the agent at {addr}: is `opsbro agent start` running?")]
    Unreachable {
        /// host:port tried.
        addr: String,
    },
    /// The agent answered with an error.
    #[error("the agent at {addr} answered {status}: {message}")]
    Api {
        /// host:port.
        addr: String,
        /// HTTP status.
        status: u16,
        /// The agent's error text.
        message: String,
    },
    /// The answer is "no" (missing key, not ok, timeout waiting for a condition).
    #[error("{0}")]
    Negative(String),
    /// The command line or configuration is wrong.
    #[error("{0}")]
    Usage(String),
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
    /// Exit with this code, nothing to say (a command run by `opsbro lock` exited with it).
    #[error("")]
    Status(u8),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Negative(_) | CliError::Usage(_) => ExitCode::from(2),
            CliError::Api { status, .. } if (400..500).contains(status) && *status != 401 => {
                ExitCode::from(2)
            }
            CliError::Status(code) => ExitCode::from(*code),
            _ => ExitCode::from(1),
        }
    }
}
