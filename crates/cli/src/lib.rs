//! The `opsbro` command: argument grammar ([`args`]), a client for the agent's local API
//! ([`client`]), one module per command group ([`commands`]) and human output ([`render`]).
//!
//! The binary (`main.rs`) only parses, sets up logging and the runtime, dispatches and maps
//! [`error::CliError`] to exit codes. This crate must not hold agent logic: `agent start` hands a
//! resolved configuration to `opsbro-agent`.

#![forbid(unsafe_code)]

pub mod args;
pub mod client;
pub mod commands;
pub mod error;
pub mod render;
