//! One module per command group.

pub mod agent;
pub mod collectors;
pub mod detectors;
pub mod evaluator;
pub mod gossip;
