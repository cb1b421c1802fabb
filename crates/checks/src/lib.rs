//! The monitoring core: what a check result means, without running anything.
//!
//! * [`state`]: the states a check can be in ([`CheckState`]) and the [`Tracker`] that turns raw
//!   results into confirmed states with flap damping (`failures_before_critical`,
//!   `successes_before_ok`), reporting each confirmed change once.
//! * [`nagios`]: `$macro$` substitution in plugin command lines, the plugin output format (first
//!   line, long output, `|` performance data) and exit codes.
//! * [`notify`]: the notification context handlers render (`check`, `node`, `state`, ...) and the
//!   minijinja environments that render mail/slack text and shell commands.
//! * [`shell`]: commands built from templates whose values travel as positional arguments of
//!   `sh -c`, never as shell text ([`ShellCommand`]).
//!
//! The agent runs checks (rhai expressions on blocking threads, plugins as process groups) and
//! sends notifications; this crate does no IO, reads no clock and spawns nothing.

#![forbid(unsafe_code)]

pub mod nagios;
pub mod notify;
pub mod shell;
pub mod state;

pub use shell::ShellCommand;
pub use state::{CheckState, Damping, Tracker};
